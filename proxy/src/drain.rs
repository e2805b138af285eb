//! Graceful shutdown: stop accepting, let open connections finish, give up after a timeout.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared handle: listeners watch it to stop accepting; connections are spawned through it so
/// the drain can wait for them.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    signal: CancellationToken,
    /// Set before `signal` fires: read on every request, where the token's own check takes a
    /// lock.
    draining: Arc<AtomicBool>,
    connections: TaskTracker,
}

impl Drain {
    pub fn new() -> Drain {
        Drain::default()
    }

    /// Starts the drain (idempotent).
    pub fn start(&self) {
        self.draining.store(true, Ordering::Release);
        self.signal.cancel();
    }

    /// Whether the drain has started: once [`Drain::started`] wakes a task, this is `true`
    /// for it.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Resolves once the drain has started.
    pub async fn started(&self) {
        self.signal.cancelled().await
    }

    /// Spawns a connection task that the drain waits for.
    pub fn spawn_connection<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.connections.spawn(fut);
    }

    /// Number of connection tasks still running.
    pub fn open_connections(&self) -> usize {
        self.connections.len()
    }

    /// Waits for every connection to finish, at most `timeout`. Returns whether all finished.
    pub async fn wait_connections(&self, timeout: Duration) -> bool {
        self.connections.close();
        tokio::time::timeout(timeout, self.connections.wait())
            .await
            .is_ok()
    }
}
