//! Moving bytes both ways between two TCP sockets until both sides are done.
//!
//! Each direction ends on EOF by shutting down the write side of the other socket (half-close),
//! so a peer that finishes sending can still receive. The splice path moves data socket → pipe →
//! socket inside the kernel; the copy path reads into a buffer and writes it out, and is the
//! fallback when no pipe can be made.
//!
//! Splice is the default. [`RelayMode::Auto`] copies instead when the upstream is on this host
//! (the app behind the inbound side, anything on loopback): splice hands the receiver the very
//! pages the sender wrote, on the sender's core, and on some hosts a receiver on this host reads
//! them cold and pays more for that than the copy would have cost the proxy. Which wins depends
//! on the host, so `auto` is not the default: with one iperf3 stream through one sidecar
//! (`benches/l4-veth.sh`, both sides, and the shared harness's loopback case; figures in
//! benches/RESULTS.md) copy to loopback was about 20% ahead on one host, and on another splice
//! was 30-45% ahead on every side, with less than half the CPU per GB on loopback.

#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;

use crate::config::RelayMode;

/// Buffer size per direction of the copy paths (the plain fallback and the relays through TLS):
/// several 16 KiB TLS records per read and write instead of tokio's default 8 KiB.
const CHUNK: usize = 64 * 1024;

/// Capacity asked for each splice pipe: a larger pipe moves more per splice(2) call, so a bulk
/// transfer costs fewer syscalls and wakeups. The kernel allocates pipe pages only as data
/// fills them; when it refuses the size (`/proc/sys/fs/pipe-max-size`), the default stays.
const PIPE_SIZE: i32 = 1024 * 1024;

/// Relays both ways between `a` and `b` when one of them is a TLS stream (no splice possible);
/// returns the bytes moved a → b and b → a.
pub async fn copy_through_tls<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    crate::batch_copy::copy_both_ways(a, b, CHUNK).await
}

/// Counters that the relay adds to as bytes move (they may be shared, e.g. per direction).
#[derive(Debug, Clone, Copy)]
pub struct Counters<'a> {
    /// Bytes read from the downstream peer (the one that connected to the proxy).
    pub from_downstream: &'a AtomicU64,
    /// Bytes written to the downstream peer.
    pub to_downstream: &'a AtomicU64,
}

/// Bytes moved in each direction by one relay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    pub from_downstream: u64,
    pub to_downstream: u64,
}

/// Relays between `downstream` (the accepted connection) and `upstream` until both directions
/// have seen EOF, or one fails.
/// `prefix` holds bytes already read from `downstream` (by protocol detection); they are sent
/// upstream first.
pub async fn relay(
    downstream: TcpStream,
    mut upstream: TcpStream,
    prefix: &[u8],
    mode: RelayMode,
    counters: Counters<'_>,
) -> io::Result<Transferred> {
    if !prefix.is_empty() {
        tokio::io::AsyncWriteExt::write_all(&mut upstream, prefix).await?;
        counters
            .from_downstream
            .fetch_add(prefix.len() as u64, Ordering::Relaxed);
    }
    let mut moved = relay_sockets(downstream, upstream, mode, counters).await?;
    moved.from_downstream += prefix.len() as u64;
    Ok(moved)
}

async fn relay_sockets(
    downstream: TcpStream,
    upstream: TcpStream,
    mode: RelayMode,
    counters: Counters<'_>,
) -> io::Result<Transferred> {
    if settled(mode, &upstream) == RelayMode::Splice {
        match (Pipe::new(), Pipe::new()) {
            (Ok(up_pipe), Ok(down_pipe)) => {
                // Out of the runtime's registrations (see `splice_one_way`); the sockets stay
                // non-blocking.
                let down = OwnedFd::from(downstream.into_std()?);
                let up = OwnedFd::from(upstream.into_std()?);
                let (from, to) = tokio::try_join!(
                    splice_one_way(down.as_fd(), up.as_fd(), &up_pipe, counters.from_downstream),
                    splice_one_way(up.as_fd(), down.as_fd(), &down_pipe, counters.to_downstream),
                )?;
                return Ok(Transferred {
                    from_downstream: from,
                    to_downstream: to,
                });
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "no pipe for splice; copying through a buffer");
            }
        }
    }
    copy(downstream, upstream, counters).await
}

/// The relay `mode` asks for, with [`RelayMode::Auto`] settled by where `upstream` is: copy
/// to a socket on this host, splice to any other.
fn settled(mode: RelayMode, upstream: &TcpStream) -> RelayMode {
    match mode {
        RelayMode::Auto if crate::local_hop::on_this_host(upstream) => RelayMode::Copy,
        RelayMode::Auto => RelayMode::Splice,
        chosen => chosen,
    }
}

async fn copy(
    mut downstream: TcpStream,
    mut upstream: TcpStream,
    counters: Counters<'_>,
) -> io::Result<Transferred> {
    let (from, to) =
        tokio::io::copy_bidirectional_with_sizes(&mut downstream, &mut upstream, CHUNK, CHUNK)
            .await?;
    counters.from_downstream.fetch_add(from, Ordering::Relaxed);
    counters.to_downstream.fetch_add(to, Ordering::Relaxed);
    Ok(Transferred {
        from_downstream: from,
        to_downstream: to,
    })
}

/// A non-blocking pipe used as the in-kernel buffer of one direction.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// What it holds at most: the most one splice call moves.
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let capacity = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE))
            .or_else(|_| fcntl(&write, FcntlArg::F_GETPIPE_SZ))
            .ok()
            .and_then(|c| usize::try_from(c).ok())
            .filter(|&c| c > 0)
            .unwrap_or(CHUNK);
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }
}

/// Moves `src` → `dst` until EOF on `src`, then half-closes `dst`. Returns the bytes moved.
///
/// A `TcpStream` is registered with the runtime for reading and writing at once, so a relay
/// waiting for room in `dst` was woken by every segment its peer sent into `src` (its window
/// opened by the relay's last read), for nothing: two wakeups of three on a bulk stream into a
/// slower reader (`benches/l4-wakeups.sh`). Here `src` is registered for reading only while
/// the pipe is empty; a direction that waits for room in `dst` drops that registration and
/// takes it again before its next read. `dst` is registered for writing (on a duplicate of its
/// descriptor, which the other direction registers for reading) only once it has been full:
/// a short stream never pays for it. A write is tried before any readiness, and so is the
/// first read after registering.
async fn splice_one_way(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    pipe: &Pipe,
    counter: &AtomicU64,
) -> io::Result<u64> {
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    let mut total = 0u64;
    let mut source = Source::Quiet(src);
    let mut room_watch: Option<AsyncFd<OwnedFd>> = None;
    loop {
        // Splices tried before any readiness let a stream between two fast peers run without
        // waiting: this gives the thread's other tasks their turn.
        tokio::task::consume_budget().await;
        // Just registered, the runtime knows nothing of `src` yet: try it at once. Registered
        // before, its readiness says whether a try is worth a system call.
        let mut try_now = matches!(source, Source::Quiet(_));
        let readable = source.listen()?;
        // The pipe is empty here, so EAGAIN can only mean that `src` has nothing to read.
        let n = loop {
            if std::mem::take(&mut try_now) {
                match splice(
                    readable.get_ref(),
                    None,
                    &pipe.write,
                    None,
                    pipe.capacity,
                    flags,
                ) {
                    Ok(n) => break n,
                    Err(Errno::EAGAIN) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let mut ready = readable.readable().await?;
            match ready.try_io(|fd| {
                splice(fd.get_ref(), None, &pipe.write, None, pipe.capacity, flags)
                    .map_err(io::Error::from)
            }) {
                Ok(n) => break n?,
                Err(_would_block) => continue,
            }
        };
        if n == 0 {
            shutdown_write(dst);
            return Ok(total);
        }
        source = Source::Listening(readable);
        let mut pending = n;
        while pending > 0 {
            // The pipe holds `pending` bytes, so EAGAIN can only mean that `dst` is full.
            let written = match splice(&pipe.read, None, dst, None, pending, flags) {
                Ok(written) => written,
                Err(Errno::EAGAIN) => {
                    source = source.quiet();
                    let watch = match room_watch {
                        Some(ref watch) => watch,
                        None => room_watch
                            .insert(register(dst.try_clone_to_owned()?, Interest::WRITABLE)?),
                    };
                    let mut room = watch.writable().await?;
                    match room.try_io(|fd| {
                        splice(&pipe.read, None, fd.get_ref(), None, pending, flags)
                            .map_err(io::Error::from)
                    }) {
                        Ok(written) => written?,
                        Err(_would_block) => continue,
                    }
                }
                Err(e) => return Err(e.into()),
            };
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            pending -= written;
        }
        total += n as u64;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Registers `fd` with the runtime for `interest` alone. tokio 1.54 deprecates the safe
/// `with_interest` for types whose descriptor could change under it; an `OwnedFd` or a
/// `BorrowedFd` is one descriptor, open for as long as the `AsyncFd` holds it, so the
/// deprecated call is sound here and keeps this module free of `unsafe`.
#[allow(deprecated)]
fn register<T: AsRawFd>(fd: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    AsyncFd::with_interest(fd, interest)
}

/// A splice direction's source: registered for reading, or not while the direction waits for
/// room in its destination.
enum Source<'a> {
    Listening(AsyncFd<BorrowedFd<'a>>),
    Quiet(BorrowedFd<'a>),
}

impl<'a> Source<'a> {
    /// The source registered for reading (registering it if it was quiet).
    fn listen(self) -> io::Result<AsyncFd<BorrowedFd<'a>>> {
        match self {
            Source::Listening(fd) => Ok(fd),
            Source::Quiet(fd) => register(fd, Interest::READABLE),
        }
    }

    /// The source without its read registration.
    fn quiet(self) -> Source<'a> {
        match self {
            Source::Listening(fd) => Source::Quiet(fd.into_inner()),
            quiet => quiet,
        }
    }
}

fn shutdown_write(socket: BorrowedFd<'_>) {
    // The peer may already be gone; the other direction then reports the error.
    let _ = socket2::SockRef::from(&socket).shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A listener whose first connection the relay joins to `upstream`, in `mode`: its address,
    /// and the relay's task, which checks the counters against what the relay returns.
    async fn relay_in_front_of(
        upstream: SocketAddr,
        mode: RelayMode,
    ) -> (SocketAddr, tokio::task::JoinHandle<Transferred>) {
        let front = TcpListener::bind("127.0.0.1:0").await.expect("bind front");
        let front_addr = front.local_addr().expect("front addr");
        let relay_task = tokio::spawn(async move {
            let (down, _) = front.accept().await.expect("accept front");
            let up = TcpStream::connect(upstream)
                .await
                .expect("connect upstream");
            let (a, b) = (AtomicU64::new(0), AtomicU64::new(0));
            let counters = Counters {
                from_downstream: &a,
                to_downstream: &b,
            };
            let t = relay(down, up, b"", mode, counters).await.expect("relay");
            assert_eq!(a.load(Ordering::Relaxed), t.from_downstream);
            assert_eq!(b.load(Ordering::Relaxed), t.to_downstream);
            t
        });
        (front_addr, relay_task)
    }

    /// A client writes `payload` and half-closes; an echo server behind the relay sends everything
    /// back and closes. Both halves must arrive intact in both relay modes.
    async fn echo_through_relay(mode: RelayMode, payload: Vec<u8>) -> (Vec<u8>, Transferred) {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let echo_addr = echo.local_addr().expect("echo addr");
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.expect("accept echo");
            let (mut r, mut w) = s.split();
            tokio::io::copy(&mut r, &mut w).await.expect("echo copy");
            w.shutdown().await.expect("echo shutdown");
        });
        let (front_addr, relay_task) = relay_in_front_of(echo_addr, mode).await;
        let client = TcpStream::connect(front_addr).await.expect("connect front");
        let (mut r, mut w) = client.into_split();
        let writer = tokio::spawn(async move {
            w.write_all(&payload).await.expect("write");
            w.shutdown().await.expect("half-close");
        });
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.expect("read back");
        writer.await.expect("writer");
        (back, relay_task.await.expect("relay task"))
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn splice_moves_both_directions_with_half_close() {
        let data = payload(3 * 1024 * 1024 + 17);
        let (back, t) = echo_through_relay(RelayMode::Splice, data.clone()).await;
        assert!(back == data, "echoed bytes differ");
        assert_eq!(t.from_downstream, data.len() as u64);
        assert_eq!(t.to_downstream, data.len() as u64);
    }

    #[tokio::test]
    async fn copy_moves_both_directions_with_half_close() {
        let data = payload(1024 * 1024 + 5);
        let (back, t) = echo_through_relay(RelayMode::Copy, data.clone()).await;
        assert!(back == data, "echoed bytes differ");
        assert_eq!(
            t,
            Transferred {
                from_downstream: data.len() as u64,
                to_downstream: data.len() as u64
            }
        );
    }

    #[tokio::test]
    async fn auto_copies_to_this_host_and_keeps_a_chosen_mode() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let upstream = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(settled(RelayMode::Auto, &upstream), RelayMode::Copy);
        assert_eq!(settled(RelayMode::Splice, &upstream), RelayMode::Splice);
        assert_eq!(settled(RelayMode::Copy, &upstream), RelayMode::Copy);
    }

    /// A reader that takes 4 KiB at a time, yielding between reads, behind the relay while the
    /// client writes 8 MiB as fast as it can: the relay finds the reader's socket full again
    /// and again, drops and retakes its source's read registration each time, and every byte
    /// arrives in order.
    #[tokio::test]
    async fn a_slow_reader_gets_every_byte_after_the_relay_waits_for_room() {
        let data = payload(8 * 1024 * 1024 + 3);
        let slow = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind slow reader");
        let slow_addr = slow.local_addr().expect("slow addr");
        let reader = tokio::spawn(async move {
            let (mut s, _) = slow.accept().await.expect("accept slow");
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = s.read(&mut buf).await.expect("slow read");
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&buf[..n]);
                tokio::task::yield_now().await;
            }
        });
        let (front_addr, relay_task) = relay_in_front_of(slow_addr, RelayMode::Splice).await;
        let mut client = TcpStream::connect(front_addr).await.expect("connect front");
        client.write_all(&data).await.expect("write");
        client.shutdown().await.expect("half-close");
        let got = reader.await.expect("reader");
        assert!(
            got == data,
            "the slow reader got {} bytes, not the same",
            got.len()
        );
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("read the close");
        assert!(rest.is_empty());
        let t = relay_task.await.expect("relay task");
        assert_eq!(t.from_downstream, data.len() as u64);
        assert_eq!(t.to_downstream, 0);
    }

    #[tokio::test]
    async fn empty_stream_just_closes() {
        let (back, t) = echo_through_relay(RelayMode::Splice, Vec::new()).await;
        assert!(back.is_empty());
        assert_eq!(t, Transferred::default());
    }
}
