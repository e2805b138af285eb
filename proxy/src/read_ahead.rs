//! A transport under TLS that reads ahead while bytes stream in.
//!
//! rustls asks its transport for at most 4 KiB more than it holds (`read_tls`), so a stream of
//! 16 KiB records costs about four `recvfrom` calls a record, each of which may send a window
//! update. [`ReadAhead`] passes small reads straight through (a request or a response of an
//! HTTP carriage costs nothing more), and once a read fills all that rustls asked for, the
//! next one takes up to [`AHEAD`] from the socket in one call and serves rustls from that until
//! it is drained. The buffer is freed when it drains while no stream is flowing, unless the
//! connection asked to keep it ([`ReadAhead::keep_buffer`]): a multiplexed connection streams
//! on and off all its life, and allocating (zeroed) 64 KiB each time it starts again cost more
//! than the rest of a read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much one read ahead takes from the socket at most.
pub const AHEAD: usize = 64 * 1024;

/// A read ahead that took at least this much keeps reading ahead: it got more than rustls
/// asks for at a time.
const STILL_STREAMING: usize = 16 * 1024;

/// `inner` with a read-ahead buffer; writes go straight to `inner`.
#[derive(Debug)]
pub struct ReadAhead<T> {
    inner: T,
    ahead: Ahead,
}

/// Bytes read ahead, `buf[start..end]` not yet handed out.
#[derive(Debug, Default)]
struct Ahead {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last read from the socket filled all it was given (or, reading ahead, at least
    /// [`STILL_STREAMING`]): more is probably waiting.
    streaming: bool,
    /// Keep `buf` when it drains (see [`ReadAhead::keep_buffer`]).
    keep: bool,
}

impl Ahead {
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Hands out what is buffered to `out`.
    fn take_into(&mut self, out: &mut ReadBuf<'_>) {
        let n = (self.end - self.start).min(out.remaining());
        out.put_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if !self.streaming && !self.keep {
                self.buf = Vec::new();
            }
        }
    }
}

impl<T> ReadAhead<T> {
    pub fn new(inner: T) -> ReadAhead<T> {
        ReadAhead {
            inner,
            ahead: Ahead::default(),
        }
    }

    /// Keeps the read-ahead buffer, once allocated, for the rest of the connection's life
    /// rather than freeing it each time it drains: for a connection that carries many streams
    /// (`mesh/mux`), at the cost of [`AHEAD`] bytes held while it is idle.
    pub fn keep_buffer(&mut self) {
        self.ahead.keep = true;
    }

    /// Whether bytes read ahead wait to be handed out.
    pub fn has_pending(&self) -> bool {
        !self.ahead.pending().is_empty()
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.ahead.pending().is_empty() {
            if !this.ahead.streaming || out.remaining() >= AHEAD {
                let asked = out.remaining();
                ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
                this.ahead.streaming = out.remaining() == 0 && asked < AHEAD;
                return Poll::Ready(Ok(()));
            }
            if this.ahead.buf.len() < AHEAD {
                this.ahead.buf = vec![0; AHEAD];
            }
            let mut fill = ReadBuf::new(&mut this.ahead.buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut fill))?;
            let n = fill.filled().len();
            this.ahead.streaming = n >= STILL_STREAMING;
            this.ahead.end = n;
            if n == 0 {
                this.ahead.buf = Vec::new();
                return Poll::Ready(Ok(()));
            }
        }
        this.ahead.take_into(out);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    /// rustls writes its records with a vectored write even when it holds one (a request or a
    /// response: one record); that one goes as a plain write, which the kernel takes for less
    /// (`send` against `writev`, which imports the vector and goes through the file layer:
    /// about 250 ns less a call for 200 bytes on loopback here).
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match bufs {
            [one] => Pin::new(&mut self.inner).poll_write(cx, one),
            _ => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads `total` bytes in reads of `step`, as rustls does.
    async fn read_in_steps<R: AsyncRead + Unpin>(r: &mut R, total: usize, step: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0; step];
        while got.len() < total {
            let n = r.read(&mut buf).await.expect("read");
            assert!(n > 0, "EOF after {} of {total} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[tokio::test]
    async fn a_stream_read_in_small_steps_arrives_whole_and_in_order() {
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut tx, rx) = tokio::io::duplex(AHEAD * 2);
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            tx.write_all(&sent).await.expect("write");
        });
        let mut r = ReadAhead::new(rx);
        let got = read_in_steps(&mut r, payload.len(), 4096).await;
        writer.await.expect("writer");
        assert_eq!(got, payload);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.expect("read to end");
        assert!(rest.is_empty());
    }

    /// A vectored write of one slice goes as a plain write; of several, as it came: either
    /// way the bytes arrive in order, and the count says how many were taken.
    #[tokio::test]
    async fn vectored_writes_of_one_slice_or_several_arrive_in_order() {
        let (tx, mut rx) = tokio::io::duplex(1024);
        let mut w = ReadAhead::new(tx);
        let one = [io::IoSlice::new(b"one record")];
        assert_eq!(w.write_vectored(&one).await.expect("write"), 10);
        let several = [io::IoSlice::new(b", two"), io::IoSlice::new(b", three")];
        assert_eq!(w.write_vectored(&several).await.expect("write"), 12);
        drop(w);
        let mut got = Vec::new();
        rx.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"one record, two, three");
    }

    #[tokio::test]
    async fn reads_ahead_once_a_read_fills_and_frees_the_buffer_when_drained() {
        let (mut tx, rx) = tokio::io::duplex(AHEAD * 4);
        tx.write_all(&vec![7; 3 * 4096]).await.expect("write");
        let mut r = ReadAhead::new(rx);
        let mut buf = vec![0; 4096];
        assert_eq!(r.read(&mut buf).await.expect("read"), 4096);
        assert!(
            r.ahead.streaming,
            "a read that fills its buffer means more is waiting"
        );
        assert!(
            r.ahead.buf.is_empty(),
            "the first read goes straight through"
        );
        assert_eq!(r.read(&mut buf).await.expect("read"), 4096);
        assert_eq!(
            r.ahead.pending().len(),
            4096,
            "the second read took all 3 x 4 KiB"
        );
        assert_eq!(r.read(&mut buf).await.expect("read"), 4096);
        assert!(!r.ahead.streaming);
        assert!(
            r.ahead.buf.is_empty(),
            "drained while nothing streams: freed"
        );
        tx.write_all(b"small").await.expect("write");
        assert_eq!(r.read(&mut buf).await.expect("read"), 5);
        assert!(r.ahead.buf.is_empty(), "small reads go straight through");
    }

    #[tokio::test]
    async fn a_kept_buffer_survives_draining_and_is_reused() {
        let (mut tx, rx) = tokio::io::duplex(AHEAD * 4);
        let mut r = ReadAhead::new(rx);
        r.keep_buffer();
        let mut buf = vec![0; 4096];
        for round in 0..3u8 {
            tx.write_all(&vec![round; 3 * 4096]).await.expect("write");
            for _ in 0..3 {
                assert_eq!(r.read(&mut buf).await.expect("read"), 4096);
                assert!(
                    buf.iter().all(|&b| b == round),
                    "round {round}: stale bytes"
                );
            }
            assert!(r.ahead.pending().is_empty());
            assert!(!r.ahead.streaming);
            assert_eq!(
                r.ahead.buf.len(),
                AHEAD,
                "round {round}: drained while nothing streams, but kept"
            );
        }
    }

    #[tokio::test]
    async fn eof_while_reading_ahead_is_eof() {
        let (mut tx, rx) = tokio::io::duplex(AHEAD);
        tx.write_all(&[1; 10]).await.expect("write");
        let mut r = ReadAhead::new(rx);
        let mut buf = [0; 10];
        r.read_exact(&mut buf).await.expect("read");
        assert!(r.ahead.streaming);
        drop(tx);
        assert_eq!(r.read(&mut buf).await.expect("read"), 0);
        assert!(r.ahead.buf.is_empty());
    }
}
