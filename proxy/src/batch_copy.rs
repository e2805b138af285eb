//! Copying both ways between two streams, each direction's buffer filled before it is written.
//!
//! tokio's `copy_bidirectional` writes after every read. Reading a TLS stream returns one
//! record's plaintext (at most 16 KiB) at a time, so the plaintext socket behind a sidecar got a
//! `sendto` (and its reader a wakeup) per record. Here a direction keeps reading while reads
//! return full records' worth and the buffer has room, then writes what it gathered at once.
//! Each direction ends on EOF by flushing and shutting down the other side's write half
//! (half-close), as tokio's does.
//!
//! A direction's buffer takes up to [`FIRST_SIZE`] at first and doubles up to the size asked
//! for only while reads keep filling it. Until it has grown, the direction holds no buffer while
//! idle: it takes one of this thread's few spare ones (or a new one) when the source becomes
//! readable and gives it back once what it held is written and the source has nothing more.
//! With 64 KiB a direction allocated and zeroed up front and held for the stream's life, every
//! open opaque stream between two sidecars held 136 kB of each sidecar's memory
//! (`benches/idle-connections.sh`). Freeing the buffer at each pause instead, with no spares,
//! cost a small message about 3k instructions more a side in `malloc` and `free`
//! (`PAIR_MODE=tcp benches/layers.sh`).

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A read of at least this much (a full TLS record's plaintext) suggests more is waiting, so
/// the buffer keeps filling; a shorter read means the source is drained for now.
const KEEP_FILLING: usize = 16 * 1024;

/// A direction's buffer at first: one TLS record's plaintext.
const FIRST_SIZE: usize = KEEP_FILLING;

/// How many idle buffers of [`FIRST_SIZE`] a thread keeps for the next direction that reads:
/// enough for the directions that are moving bytes at one moment, not for the idle ones (at
/// most 256 KiB a thread).
const SPARES: usize = 16;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of [`FIRST_SIZE`] bytes: a spare one, or a new one.
fn take_spare() -> Vec<u8> {
    SPARE
        .with(|spare| spare.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; FIRST_SIZE])
}

/// Keeps `buf` as a spare if it is a first-size one and the thread has room for it; frees it
/// otherwise.
fn give_back(buf: Vec<u8>) {
    if buf.len() != FIRST_SIZE {
        return;
    }
    SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARES {
            spare.push(buf);
        }
    });
}

/// Copies `a` → `b` and `b` → `a` through buffers of up to `size` bytes until both directions
/// have seen EOF; returns the bytes moved each way. An error in either direction ends both.
pub async fn copy_both_ways<A, B>(a: &mut A, b: &mut B, size: usize) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = OneWay::new(size);
    let mut b_to_a = OneWay::new(size);
    poll_fn(|cx| {
        let there = a_to_b.poll(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let back = b_to_a.poll(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        match (there, back) {
            (Poll::Ready(there), Poll::Ready(back)) => Poll::Ready(Ok((there, back))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// One direction: `buf[start..end]` read and not yet written.
struct OneWay {
    /// None while the direction is idle, until it has streamed; else at least `room` long.
    buf: Option<Vec<u8>>,
    start: usize,
    end: usize,
    /// How much `buf` may hold now: [`FIRST_SIZE`], doubled while reads fill it, up to `max`.
    room: usize,
    max: usize,
    moved: u64,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading and writing; `flush` once something was written since the last flush.
    Copying {
        flush: bool,
    },
    /// The source said EOF; what is buffered is written, then the sink flushed and shut down.
    Closing,
    Done,
}

impl OneWay {
    fn new(size: usize) -> OneWay {
        OneWay {
            buf: None,
            start: 0,
            end: 0,
            room: FIRST_SIZE.min(size),
            max: size,
            moved: 0,
            state: State::Copying { flush: false },
        }
    }

    /// Reads into `buf` while reads are ready and return at least [`KEEP_FILLING`], up to
    /// `room`, which grows when a read fills it; `Ok(true)` when the source has nothing more
    /// for now (its waker is registered).
    fn fill<R: AsyncRead + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        mut source: Pin<&mut R>,
    ) -> io::Result<bool> {
        while self.state != State::Closing && self.end < self.room {
            let buf = self.buf.get_or_insert_with(take_spare);
            let mut free = ReadBuf::new(&mut buf[self.end..self.room]);
            match source.as_mut().poll_read(cx, &mut free) {
                Poll::Pending => return Ok(true),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(())) => {
                    let n = free.filled().len();
                    if n == 0 {
                        self.state = State::Closing;
                    }
                    self.end += n;
                    self.moved += n as u64;
                    if n < KEEP_FILLING {
                        break;
                    }
                    if self.end == self.room && self.room < self.max {
                        self.room = (self.room * 2).min(self.max);
                        buf.resize(self.room, 0);
                    }
                }
            }
        }
        Ok(false)
    }

    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut source: Pin<&mut R>,
        mut sink: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.state == State::Done {
                return Poll::Ready(Ok(self.moved));
            }
            let source_idle = self.fill(cx, source.as_mut())?;
            if let Some(buf) = self.buf.as_ref().filter(|_| self.start < self.end) {
                let n = ready!(sink.as_mut().poll_write(cx, &buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the other side took no bytes",
                    )));
                }
                self.start += n;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                if let State::Copying { flush } = &mut self.state {
                    *flush = true;
                }
                continue;
            }
            match self.state {
                State::Closing => {
                    ready!(sink.as_mut().poll_flush(cx))?;
                    ready!(sink.as_mut().poll_shutdown(cx))?;
                    self.state = State::Done;
                    if let Some(buf) = self.buf.take() {
                        give_back(buf);
                    }
                }
                State::Copying { flush } if source_idle => {
                    if flush {
                        ready!(sink.as_mut().poll_flush(cx))?;
                        self.state = State::Copying { flush: false };
                    }
                    // Idle: nothing held until the source has more, unless the direction
                    // has streamed (its buffer grew), which pauses often and briefly.
                    if let Some(buf) = self.buf.take_if(|_| self.room == FIRST_SIZE.min(self.max)) {
                        give_back(buf);
                    }
                    return Poll::Pending;
                }
                // A short read was written out; read on.
                State::Copying { .. } | State::Done => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn payload(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    /// `left` ⇄ relay ⇄ `right`: sends `there` from the left and `back` from the right, each
    /// side shutting down after sending; returns what each side received and the relay's counts.
    async fn through_relay(there: Vec<u8>, back: Vec<u8>) -> (Vec<u8>, Vec<u8>, (u64, u64)) {
        let (mut left, mut relay_a) = duplex(8 * 1024);
        let (mut relay_b, mut right) = duplex(24 * 1024);
        let relay = tokio::spawn(async move {
            copy_both_ways(&mut relay_a, &mut relay_b, 64 * 1024)
                .await
                .expect("relay")
        });
        let right_side = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(&mut right);
            let send = async {
                w.write_all(&back).await.expect("right write");
                w.shutdown().await.expect("right shutdown");
            };
            let mut got = Vec::new();
            let recv = r.read_to_end(&mut got);
            let (_, read) = tokio::join!(send, recv);
            read.expect("right read");
            got
        });
        let (mut r, mut w) = tokio::io::split(&mut left);
        let send = async {
            w.write_all(&there).await.expect("left write");
            w.shutdown().await.expect("left shutdown");
        };
        let mut got_left = Vec::new();
        let recv = r.read_to_end(&mut got_left);
        let (_, read) = tokio::join!(send, recv);
        read.expect("left read");
        let got_right = right_side.await.expect("right side");
        let counts = relay.await.expect("relay task");
        (got_left, got_right, counts)
    }

    #[tokio::test]
    async fn moves_both_ways_whole_and_in_order_then_closes_each_half() {
        let there = payload(1_000_003, 1);
        let back = payload(333_331, 2);
        let (at_left, at_right, counts) = through_relay(there.clone(), back.clone()).await;
        assert_eq!(at_right, there);
        assert_eq!(at_left, back);
        assert_eq!(counts, (there.len() as u64, back.len() as u64));
    }

    #[tokio::test]
    async fn one_way_empty_still_ends() {
        let there = payload(70_000, 3);
        let (at_left, at_right, counts) = through_relay(there.clone(), Vec::new()).await;
        assert_eq!(at_right, there);
        assert!(at_left.is_empty());
        assert_eq!(counts, (70_000, 0));
        let (at_left, at_right, counts) = through_relay(Vec::new(), Vec::new()).await;
        assert!(at_left.is_empty() && at_right.is_empty());
        assert_eq!(counts, (0, 0));
    }

    /// A source that hands out 16 KiB at a time, as a TLS stream does: the relay gathers them
    /// and writes the whole buffer at once.
    #[tokio::test]
    async fn gathers_records_before_writing() {
        struct Records(Vec<u8>);
        impl AsyncRead for Records {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                let n = self.0.len().min(KEEP_FILLING).min(buf.remaining());
                buf.put_slice(&self.0[..n]);
                self.0.drain(..n);
                Poll::Ready(Ok(()))
            }
        }
        #[derive(Default)]
        struct Writes(Vec<usize>);
        impl AsyncWrite for Writes {
            fn poll_write(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                self.0.push(buf.len());
                Poll::Ready(Ok(buf.len()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let mut one_way = OneWay::new(64 * 1024);
        let mut source = Records(payload(5 * KEEP_FILLING + 100, 4));
        let mut sink = Writes::default();
        let moved = poll_fn(|cx| one_way.poll(cx, Pin::new(&mut source), Pin::new(&mut sink)))
            .await
            .expect("copy");
        assert_eq!(moved, 5 * KEEP_FILLING as u64 + 100);
        assert_eq!(sink.0, vec![64 * 1024, KEEP_FILLING + 100]);
        assert_eq!(one_way.room, 64 * 1024, "grown to the size asked for");
    }

    /// Polls `one_way` once: it moves what is there and returns once the source has nothing
    /// more (or the sink takes no more).
    async fn poll_once<R, W>(one_way: &mut OneWay, source: &mut R, sink: &mut W)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        poll_fn(|cx| {
            Poll::Ready(
                match one_way.poll(cx, Pin::new(&mut *source), Pin::new(&mut *sink)) {
                    Poll::Ready(Err(e)) => Err(e),
                    _ => Ok(()),
                },
            )
        })
        .await
        .expect("relay");
    }

    /// Messages shorter than a record leave the buffer at its first size, and an idle
    /// direction holds none.
    #[tokio::test]
    async fn small_messages_leave_the_buffer_small_and_an_idle_one_holds_none() {
        let (mut app, mut source) = duplex(1024);
        let (mut sink, mut peer) = duplex(1024);
        let mut one_way = OneWay::new(64 * 1024);
        assert!(one_way.buf.is_none());
        for i in 0..3u8 {
            let message = [b'a' + i; 100];
            app.write_all(&message).await.expect("write");
            poll_once(&mut one_way, &mut source, &mut sink).await;
            assert!(one_way.buf.is_none(), "idle, so nothing held");
            let mut got = [0u8; 100];
            peer.read_exact(&mut got).await.expect("read");
            assert_eq!(got, message);
        }
        assert_eq!(one_way.room, FIRST_SIZE);
        let spares = SPARE.with(|spare| spare.borrow().len());
        assert!(spares >= 1, "the buffer went back to the thread's spares");
    }

    /// A direction that streamed keeps its grown buffer through a pause.
    #[tokio::test]
    async fn a_streaming_direction_keeps_its_buffer_when_it_pauses() {
        let (mut app, mut source) = duplex(256 * 1024);
        let (mut sink, mut peer) = duplex(256 * 1024);
        let mut one_way = OneWay::new(64 * 1024);
        let sent = payload(100_000, 5);
        app.write_all(&sent).await.expect("write");
        poll_once(&mut one_way, &mut source, &mut sink).await;
        let mut got = vec![0u8; sent.len()];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(got, sent);
        assert_eq!(one_way.room, 64 * 1024);
        assert_eq!(one_way.buf.as_ref().map(Vec::len), Some(64 * 1024), "kept");
        assert_eq!(one_way.start, one_way.end, "all written");
    }
}
