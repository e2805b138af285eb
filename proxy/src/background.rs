//! The background runtime: a thread of its own with a clock, for every timer the sidecar sets
//! and for the work off the request path (following meshd, renewing the certificate, the admin
//! endpoint), as linkerd2-proxy runs its control and admin tasks on a thread of their own.
//!
//! The runtime that serves connections has no time driver. With one, each time that runtime
//! parks and wakes (twice a request per sidecar at 1000 req/s) the driver reads the clock,
//! locks and walks its timer wheel and computes the next deadline, whether or not any timer is
//! due: about 1.1k instructions a request per sidecar in callgrind's count
//! (`benches/instructions.sh 1000`, benches/RESULTS.md). Here the timers live in this
//! runtime's wheel instead: a `Sleep` made through [`sleep`], [`timeout`], [`timeout_at`] or
//! [`interval`] registers with it wherever it is polled, and when one fires, this thread wakes
//! the task that awaits it. The request path sets no timer unless a route has a timeout; the
//! connection-level timeouts (detection, handshakes, connects) are set once a connection.
//!
//! Anything that needs tokio's clock implicitly (tonic's channel to meshd, its keep-alive and
//! connect timeout) must run here: [`spawn`] it. `tokio::time` called directly on the serving
//! runtime panics, which clippy's `disallowed-methods` (`proxy/clippy.toml`) keeps out of this
//! crate.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, Sleep, Timeout};

static RUNTIME: OnceLock<Handle> = OnceLock::new();

/// Starts the background thread, if it is not running yet. The binary calls this before it
/// serves; a library user (the tests) gets it at the first timer.
pub fn start() -> std::io::Result<&'static Handle> {
    if let Some(handle) = RUNTIME.get() {
        return Ok(handle);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("mesh-background")
        .build()?;
    let handle = runtime.handle().clone();
    let (started, wait) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("mesh-background".into())
        .spawn(move || {
            // Only one thread gets its handle in: a second caller's runtime ends here.
            let ours = RUNTIME.get_or_init(|| handle.clone());
            let _ = started.send(ours.clone());
            if ours.id() == handle.id() {
                runtime.block_on(std::future::pending::<()>());
            }
        })?;
    wait.recv()
        .map_err(|_| std::io::Error::other("the background thread ended before it started"))?;
    RUNTIME
        .get()
        .ok_or_else(|| std::io::Error::other("the background runtime is not set"))
}

fn handle() -> &'static Handle {
    match start() {
        Ok(handle) => handle,
        // Only at the first timer of a process that did not call `start`, and only when the
        // system cannot start a thread: nothing can run without timers.
        Err(e) => panic!("cannot start the mesh-background thread: {e}"),
    }
}

/// Makes the background runtime the current one until the guard drops: what is made then
/// (a listener, a timer) registers with it.
pub fn enter() -> tokio::runtime::EnterGuard<'static> {
    handle().enter()
}

/// Runs `future` on the background runtime.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    handle().spawn(future)
}

/// `tokio::time::sleep` on the background clock.
#[allow(clippy::disallowed_methods)] // the one place that may
pub fn sleep(duration: Duration) -> Sleep {
    let _clock = enter();
    tokio::time::sleep(duration)
}

/// `tokio::time::timeout` on the background clock.
#[allow(clippy::disallowed_methods)]
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    let _clock = enter();
    tokio::time::timeout(duration, future)
}

/// `tokio::time::timeout_at` on the background clock.
#[allow(clippy::disallowed_methods)]
pub fn timeout_at<F: Future>(deadline: Instant, future: F) -> Timeout<F> {
    let _clock = enter();
    tokio::time::timeout_at(deadline, future)
}

/// `tokio::time::interval` on the background clock.
#[allow(clippy::disallowed_methods)]
pub fn interval(period: Duration) -> Interval {
    let _clock = enter();
    tokio::time::interval(period)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime without a clock: what the sidecar serves on.
    fn serving_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("a runtime")
    }

    #[test]
    fn timers_fire_on_a_runtime_without_a_clock() {
        serving_runtime().block_on(async {
            let started = Instant::now();
            sleep(Duration::from_millis(20)).await;
            assert!(started.elapsed() >= Duration::from_millis(20));
            let never = std::future::pending::<()>();
            assert!(timeout(Duration::from_millis(10), never).await.is_err());
            let ready = timeout_at(Instant::now() + Duration::from_secs(5), async { 7 });
            assert_eq!(ready.await.ok(), Some(7));
            let mut every = interval(Duration::from_millis(5));
            every.tick().await;
            every.tick().await;
        });
    }

    #[test]
    fn a_task_that_needs_the_clock_runs_in_the_background() {
        #[allow(clippy::disallowed_methods)]
        let task = spawn(async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            "slept"
        });
        let done = serving_runtime().block_on(task).expect("the task ran");
        assert_eq!(done, "slept");
    }

    #[test]
    fn starting_twice_gives_the_same_runtime() {
        let first = start().expect("started").id();
        let second = start().expect("started").id();
        assert_eq!(first, second);
    }
}
