//! A stream multiplexer for the connections between sidecars (ALPN `mesh/mux`): many byte
//! streams over one mutual-TLS connection, each one an HTTP/1.1 connection's worth of bytes
//! (the clients' HTTP/1.1 exchanges, written and parsed by [`crate::http1_client`] and
//! [`crate::http1_server`] as on `mesh/h1`).
//!
//! Why not HTTP/2 for this: both ends are this crate's, and under load the `h2` crate's
//! per-request machinery (HPACK, the stream state machine, its frame queues) was about half of
//! each sidecar's instructions a request (`benches/instructions.sh`, PROFILE_INCLUSIVE). Here a
//! request costs a frame header each way and the head it already had in HTTP/1.1, and streams
//! live as long as the pooled HTTP/1.1 connections they stand for, so no stream is opened per
//! request.
//!
//! Frames, each with an 8-byte header: the stream id (u32, big-endian), the kind (u8), flags
//! (u8), the payload's length (u16, big-endian).
//! - `DATA`: bytes of the stream. Flag `FIN` ends the sender's direction (the payload may be
//!   empty). The client opens a stream by sending its first `DATA` with an id above every id
//!   it used before; only the client opens streams.
//! - `WINDOW`: a 4-byte increment of the sender's window for the stream. Each direction of a
//!   stream may have at most [`WINDOW`] bytes sent and not yet read by the other side, so a
//!   slow reader holds up its own stream only, and the connection's reader never has to stop.
//! - `RESET`: the stream is abandoned both ways (a handle dropped before both directions ended,
//!   a stream refused beyond [`MAX_STREAMS`]).
//! - `GOAWAY` (stream 0): the server drains; the client opens no more streams on the session.
//!
//! A frame that breaks these rules (an unknown kind, data past a stream's end or its window)
//! ends the whole connection with an error naming it.

use std::collections::{BTreeMap, VecDeque};
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker, ready};

use bytes::{Buf, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::drain::Drain;

/// Bytes one direction of a stream may have in flight, unread by the other side.
pub const WINDOW: u32 = 128 * 1024;

/// Streams open at once on one session; the server refuses more, the client opens another
/// session. With [`WINDOW`], what one peer can make a sidecar hold for a connection is bounded
/// (256 streams × 128 KiB = 32 MiB at worst).
pub const MAX_STREAMS: usize = 256;

/// The largest payload of one frame (the length field is 16 bits).
const MAX_FRAME: usize = 32 * 1024;

/// The frames waiting for the connection above which writers wait.
const OUT_HIGH: usize = 512 * 1024;

/// The connection's read buffer: a frame's header and the largest payload, twice over.
const READ_SIZE: usize = 2 * (HEADER + MAX_FRAME);

const HEADER: usize = 8;

const DATA: u8 = 0;
const WINDOW_UPDATE: u8 = 1;
const RESET: u8 = 2;
const GOAWAY: u8 = 3;

const FIN: u8 = 1;

/// Which end of the connection a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens streams (the sidecar that sends requests).
    Client,
    /// Accepts them (the sidecar in front of the app).
    Server,
}

/// A session over one connection: open streams on it (client) or accept them (server).
#[derive(Debug)]
pub struct Session {
    shared: Arc<Shared>,
}

impl Clone for Session {
    fn clone(&self) -> Session {
        self.lock().handles += 1;
        Session {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut state = self.lock();
        state.handles -= 1;
        state.wake_driver();
    }
}

/// What a session's streams and its connection's driver share.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    role: Role,
    streams: BTreeMap<u32, Stream>,
    /// Frames the streams queued for the connection.
    out: Vec<u8>,
    /// The driver, when it waits for frames to write.
    driver: Option<Waker>,
    /// Writers waiting for `out` to go below [`OUT_HIGH`].
    blocked: Vec<Waker>,
    /// Streams the client opened that nobody accepted yet (server).
    accepted: VecDeque<u32>,
    acceptor: Option<Waker>,
    /// The client's next id; on the server, the lowest id a new stream may have.
    next_id: u32,
    /// The server sent `GOAWAY` (server), or received it (client).
    going_away: bool,
    /// The connection ended; every stream fails.
    closed: bool,
    /// Sessions and streams alive: a client's connection ends when none is left.
    handles: usize,
}

/// One stream's state, both directions.
#[derive(Debug)]
struct Stream {
    /// Received and not yet read.
    recv: BytesMut,
    recv_fin: bool,
    /// Read since the last `WINDOW` frame this side sent.
    unacked: u32,
    reader: Option<Waker>,
    /// What may still be sent before the other side's next `WINDOW`.
    send_window: u32,
    sent_fin: bool,
    writer: Option<Waker>,
    reset: bool,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            recv: BytesMut::new(),
            recv_fin: false,
            unacked: 0,
            reader: None,
            send_window: WINDOW,
            sent_fin: false,
            writer: None,
            reset: false,
        }
    }

    fn wake(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }
}

/// A frame the other side sent that breaks the protocol.
fn protocol_error(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("mesh/mux: {what}"))
}

fn push_header(out: &mut Vec<u8>, id: u32, kind: u8, flags: u8, len: usize) {
    debug_assert!(len <= usize::from(u16::MAX));
    let mut header = [0u8; HEADER];
    header[..4].copy_from_slice(&id.to_be_bytes());
    header[4] = kind;
    header[5] = flags;
    header[6..].copy_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&header);
}

impl State {
    fn wake_driver(&mut self) {
        if let Some(w) = self.driver.take() {
            w.wake();
        }
    }

    /// The connection ended: every stream and waiter learns it.
    fn close(&mut self) {
        self.closed = true;
        for stream in self.streams.values_mut() {
            stream.wake();
        }
        for w in self.blocked.drain(..) {
            w.wake();
        }
        if let Some(w) = self.acceptor.take() {
            w.wake();
        }
    }

    fn on_frame(&mut self, id: u32, kind: u8, flags: u8, payload: &[u8]) -> io::Result<()> {
        match kind {
            DATA => self.on_data(id, flags & FIN != 0, payload),
            WINDOW_UPDATE => self.on_window(id, payload),
            RESET => {
                if let Some(stream) = self.streams.get_mut(&id) {
                    stream.reset = true;
                    stream.wake();
                }
                Ok(())
            }
            GOAWAY if self.role == Role::Client => {
                self.going_away = true;
                Ok(())
            }
            _ => Err(protocol_error(format!(
                "a frame of unknown kind {kind} (stream {id})"
            ))),
        }
    }

    fn on_data(&mut self, id: u32, fin: bool, payload: &[u8]) -> io::Result<()> {
        if !self.streams.contains_key(&id) {
            // A new stream from the client; anything else is for a stream this side has
            // dropped (its RESET is on the way), and is ignored.
            if self.role == Role::Client || id < self.next_id {
                return Ok(());
            }
            self.next_id = id
                .checked_add(1)
                .ok_or_else(|| protocol_error("stream ids exhausted".into()))?;
            // Streams the client opened before it read a GOAWAY are still served.
            if self.streams.len() >= MAX_STREAMS {
                push_header(&mut self.out, id, RESET, 0, 0);
                return Ok(());
            }
            self.streams.insert(id, Stream::new());
            self.accepted.push_back(id);
            if let Some(w) = self.acceptor.take() {
                w.wake();
            }
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if stream.recv_fin {
            return Err(protocol_error(format!("data after the end of stream {id}")));
        }
        if stream.reset {
            return Ok(());
        }
        let held = stream.recv.len() + stream.unacked as usize + payload.len();
        if held > WINDOW as usize {
            return Err(protocol_error(format!(
                "stream {id} sent {held} bytes past a window of {WINDOW}"
            )));
        }
        stream.recv.extend_from_slice(payload);
        stream.recv_fin = fin;
        if let Some(w) = stream.reader.take() {
            w.wake();
        }
        Ok(())
    }

    fn on_window(&mut self, id: u32, payload: &[u8]) -> io::Result<()> {
        let increment: [u8; 4] = payload
            .try_into()
            .map_err(|_| protocol_error(format!("a WINDOW frame of {} bytes", payload.len())))?;
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.send_window = stream
                .send_window
                .checked_add(u32::from_be_bytes(increment))
                .filter(|w| *w <= 2 * WINDOW)
                .ok_or_else(|| {
                    protocol_error(format!("stream {id}'s window grew past its size"))
                })?;
            if let Some(w) = stream.writer.take() {
                w.wake();
            }
        }
        Ok(())
    }
}

impl Session {
    pub fn new(role: Role) -> Session {
        Session {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    role,
                    streams: BTreeMap::new(),
                    out: Vec::new(),
                    driver: None,
                    blocked: Vec::new(),
                    accepted: VecDeque::new(),
                    acceptor: None,
                    next_id: 1,
                    going_away: false,
                    closed: false,
                    handles: 1,
                }),
            }),
        }
    }

    /// A client session over `io`, and the future that drives its connection (spawn it); the
    /// connection ends when it fails, the server closes it, or the session and all its streams
    /// are dropped.
    pub fn client<S>(
        io: S,
    ) -> (
        Session,
        impl Future<Output = io::Result<()>> + Send + 'static,
    )
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let session = Session::new(Role::Client);
        let mut driver = Driver::new(io, session.shared.clone());
        (session, poll_fn(move |cx| driver.poll(cx)))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// A new stream (client), or none when the connection has ended, the server is draining,
    /// or [`MAX_STREAMS`] are open.
    pub fn open(&self) -> Option<MuxStream> {
        let mut state = self.lock();
        if state.closed || state.going_away || state.streams.len() >= MAX_STREAMS {
            return None;
        }
        let id = state.next_id;
        state.next_id = id.checked_add(1)?;
        state.streams.insert(id, Stream::new());
        state.handles += 1;
        Some(MuxStream {
            shared: self.shared.clone(),
            id,
        })
    }

    /// Whether new streams can still be opened on this session.
    pub fn is_usable(&self) -> bool {
        let state = self.lock();
        !state.closed && !state.going_away
    }

    /// The next stream the client opened (server); `None` once the connection has ended.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Option<MuxStream>> {
        let mut state = self.lock();
        if let Some(id) = state.accepted.pop_front() {
            state.handles += 1;
            return Poll::Ready(Some(MuxStream {
                shared: self.shared.clone(),
                id,
            }));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        state.acceptor = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Tells the client to open no more streams here (server).
    pub fn go_away(&self) {
        let mut state = self.lock();
        if !state.going_away {
            state.going_away = true;
            push_header(&mut state.out, 0, GOAWAY, 0, 0);
            state.wake_driver();
        }
    }

    /// A weak handle, for a map of sessions that should not keep one alive.
    pub fn downgrade(&self) -> WeakSession {
        WeakSession(Arc::downgrade(&self.shared))
    }
}

/// A [`Session`] that is not kept alive by this handle.
#[derive(Debug, Clone, Default)]
pub struct WeakSession(Weak<Shared>);

impl WeakSession {
    /// Whether something still holds the session (its connection may have ended).
    pub fn is_alive(&self) -> bool {
        self.0.strong_count() > 0
    }

    /// The session, while its connection is open.
    pub fn upgrade(&self) -> Option<Session> {
        let shared = self.0.upgrade()?;
        {
            let mut state = shared.lock();
            if state.closed {
                return None;
            }
            state.handles += 1;
        }
        Some(Session { shared })
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serves a server session over `io`: each stream the client opens is handed to
/// `serve_stream`, and its future runs in this one (as [`crate::http2_server`] does with its
/// streams). Once `drain` starts, the client is told to open no more streams; the open ones
/// finish as their own protocol lets them. Ends when the client closes the connection.
pub async fn serve<S, F, Fut>(io: S, drain: &Drain, mut serve_stream: F) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(MuxStream) -> Fut,
    Fut: Future<Output = ()>,
{
    let session = Session::new(Role::Server);
    let mut driver = Driver::new(io, session.shared.clone());
    let mut streams = FuturesUnordered::new();
    let mut drained = pin!(drain.started());
    let mut draining = false;
    poll_fn(|cx| {
        if !draining && drained.as_mut().poll(cx).is_ready() {
            draining = true;
            session.go_away();
        }
        if let Poll::Ready(result) = driver.poll(cx) {
            return Poll::Ready(result);
        }
        while let Poll::Ready(Some(stream)) = session.poll_accept(cx) {
            streams.push(serve_stream(stream));
        }
        while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
        // What the streams wrote goes out in this same pass.
        driver.poll(cx)
    })
    .await
}

/// The waker the driver reads the connection with: it wakes the connection's task and
/// remembers that the connection did, so that the driver reads only then. The task is woken far
/// more often by its streams (data, FIN and window updates to write, a stream served on the
/// server) than by frames coming in, and each read attempt through TLS costs some 500
/// instructions to find nothing (`benches/instructions.sh` with `--peer-http1 mux`).
struct ReadWake {
    /// The connection woke the task since the driver last read it to the end.
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ReadWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Moves frames between the connection and the session's streams.
struct Driver<S> {
    io: S,
    shared: Arc<Shared>,
    read_wake: Arc<ReadWake>,
    /// `read_wake` as a [`Waker`], made once.
    read_waker: Waker,
    /// Zeroed once, when made: a TLS stream initializes every byte of the room a read offers
    /// (`ReadBuf::initialize_unfilled`), which over uninitialized room (a `BytesMut`'s spare
    /// capacity) would be a `memset` at every read. `read[start..end]` is what has come and is
    /// not yet dispatched.
    read: Box<[u8]>,
    start: usize,
    end: usize,
    write: Vec<u8>,
    written: usize,
    /// Written and not yet flushed.
    unflushed: bool,
    /// Nothing uses the session any more: the connection is being closed.
    closing: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Driver<S> {
    fn new(io: S, shared: Arc<Shared>) -> Driver<S> {
        // Fired: nothing has been read yet.
        let read_wake = Arc::new(ReadWake {
            fired: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Driver {
            io,
            shared,
            read_waker: Waker::from(read_wake.clone()),
            read_wake,
            read: vec![0; READ_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            write: Vec::new(),
            written: 0,
            unflushed: false,
            closing: false,
        }
    }

    /// Reads and dispatches what has come, then writes what the streams queued. Ready when the
    /// connection has ended (or, on the client, when nothing uses the session any more).
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closing {
            return Pin::new(&mut self.io).poll_shutdown(cx);
        }
        let shared = self.shared.clone();
        let result = self.poll_with(cx, &shared);
        let mut state = shared.lock();
        if result.is_ready() {
            state.close();
            return result;
        }
        // Checked under the lock the last handle drops under, which then wakes the driver.
        if state.handles == 0 {
            state.close();
            drop(state);
            self.closing = true;
            return Pin::new(&mut self.io).poll_shutdown(cx);
        }
        Poll::Pending
    }

    fn poll_with(&mut self, cx: &mut Context<'_>, shared: &Shared) -> Poll<io::Result<()>> {
        self.read_wake.task.register(cx.waker());
        // Read to the end (Pending, which leaves `read_waker` with the connection) only when
        // the connection woke us since the last time.
        if self.read_wake.fired.swap(false, Ordering::AcqRel)
            && let Poll::Ready(ended) = self.poll_read_all(shared)
        {
            return Poll::Ready(ended);
        }
        self.poll_write_all(cx, shared)
    }

    /// Reads and dispatches until the connection has nothing more (Pending); Ready when it
    /// ended or failed.
    fn poll_read_all(&mut self, shared: &Shared) -> Poll<io::Result<()>> {
        // A clone (a count's increment): `dispatch` below borrows all of `self`.
        let waker = self.read_waker.clone();
        let mut rcx = Context::from_waker(&waker);
        loop {
            if self.read.len() - self.end < READ_SIZE / 4 && self.start > 0 {
                // Room for the rest of the frame begun at `start`: after a dispatch less than
                // one frame is left, under half the buffer, so the move frees at least that.
                self.read.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let mut room = ReadBuf::new(&mut self.read[self.end..]);
            match Pin::new(&mut self.io).poll_read(&mut rcx, &mut room) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if room.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    self.end += room.filled().len();
                    self.dispatch(shared)?;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes what the streams queued, and flushes it; Pending when all is written (or the
    /// connection cannot take more now).
    fn poll_write_all(&mut self, cx: &mut Context<'_>, shared: &Shared) -> Poll<io::Result<()>> {
        loop {
            if self.written == self.write.len() {
                self.write.clear();
                self.written = 0;
                let mut state = shared.lock();
                let was_blocked = state.out.len() >= OUT_HIGH;
                std::mem::swap(&mut state.out, &mut self.write);
                if was_blocked {
                    for w in state.blocked.drain(..) {
                        w.wake();
                    }
                }
                if self.write.is_empty() {
                    state.driver = Some(cx.waker().clone());
                    break;
                }
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.write[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
            self.unflushed = true;
        }
        if self.unflushed {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Pending
    }

    /// Hands every whole frame read to its stream.
    fn dispatch(&mut self, shared: &Shared) -> io::Result<()> {
        let mut state = shared.lock();
        while self.end - self.start >= HEADER {
            let header = &self.read[self.start..self.start + HEADER];
            let id = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
            let (kind, flags) = (header[4], header[5]);
            let len = usize::from(u16::from_be_bytes([header[6], header[7]]));
            if len > MAX_FRAME {
                return Err(protocol_error(format!(
                    "a frame of {len} bytes (stream {id}), past the largest, {MAX_FRAME}"
                )));
            }
            let payload = self.start + HEADER..self.start + HEADER + len;
            if payload.end > self.end {
                break;
            }
            state.on_frame(id, kind, flags, &self.read[payload.clone()])?;
            self.start = payload.end;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(())
    }
}

/// One stream of a session: an [`AsyncRead`] + [`AsyncWrite`] byte stream, as a connection of
/// its own would be. Dropped before both directions ended, it resets the stream.
#[derive(Debug)]
pub struct MuxStream {
    shared: Arc<Shared>,
    id: u32,
}

fn reset_error(id: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        format!("mesh/mux: the peer reset stream {id}"),
    )
}

fn closed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "mesh/mux: the connection to the peer sidecar ended",
    )
}

impl MuxStream {
    fn write_slices(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        if state.closed {
            return Poll::Ready(Err(closed_error()));
        }
        let Some(stream) = state.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(reset_error(self.id)));
        };
        if stream.reset {
            return Poll::Ready(Err(reset_error(self.id)));
        }
        if stream.sent_fin {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "mesh/mux: a write after shutdown",
            )));
        }
        if state.out.len() >= OUT_HIGH {
            state.blocked.push(cx.waker().clone());
            return Poll::Pending;
        }
        let allowed = total.min(stream.send_window as usize);
        if allowed == 0 {
            stream.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut written = 0;
        let mut frame_left = 0;
        for buf in bufs {
            let mut buf: &[u8] = buf;
            while !buf.is_empty() && written < allowed {
                if frame_left == 0 {
                    frame_left = (allowed - written).min(MAX_FRAME);
                    push_header(&mut state.out, self.id, DATA, 0, frame_left);
                }
                let n = buf.len().min(frame_left);
                state.out.extend_from_slice(&buf[..n]);
                buf = &buf[n..];
                frame_left -= n;
                written += n;
            }
        }
        stream.send_window -= written as u32;
        state.wake_driver();
        Poll::Ready(Ok(written))
    }
}

impl AsyncRead for MuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let id = self.id;
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        let Some(stream) = state.streams.get_mut(&id) else {
            return Poll::Ready(Err(reset_error(id)));
        };
        if !stream.recv.is_empty() {
            let n = stream.recv.len().min(buf.remaining());
            buf.put_slice(&stream.recv[..n]);
            stream.recv.advance(n);
            stream.unacked += n as u32;
            if stream.unacked >= WINDOW / 2 && !stream.recv_fin {
                let increment = std::mem::take(&mut stream.unacked);
                push_header(&mut state.out, id, WINDOW_UPDATE, 0, 4);
                state.out.extend_from_slice(&increment.to_be_bytes());
                state.wake_driver();
            }
            return Poll::Ready(Ok(()));
        }
        if stream.recv_fin {
            return Poll::Ready(Ok(()));
        }
        if stream.reset {
            return Poll::Ready(Err(reset_error(id)));
        }
        if state.closed {
            return Poll::Ready(Err(closed_error()));
        }
        match &mut stream.reader {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_slices(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.write_slices(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// The frames are the session's once written; its driver writes and flushes them.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        if let Some(stream) = state.streams.get_mut(&self.id)
            && !stream.sent_fin
            && !stream.reset
            && !state.closed
        {
            stream.sent_fin = true;
            push_header(&mut state.out, self.id, DATA, FIN, 0);
            state.wake_driver();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.handles -= 1;
        if let Some(stream) = state.streams.remove(&self.id)
            && !stream.reset
            && !state.closed
            && !(stream.sent_fin && stream.recv_fin)
        {
            push_header(&mut state.out, self.id, RESET, 0, 0);
        }
        // Also when nothing was queued: the driver ends once nothing uses the session.
        state.wake_driver();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    /// A client session and a server that echoes every stream back, upper-cased, until the
    /// client's end; over an in-memory pipe.
    fn echo_pair(drain: Drain) -> Session {
        echo_pair_over(drain, 64 * 1024)
    }

    /// [`echo_pair`] over a pipe that holds `pipe` bytes at a time.
    fn echo_pair_over(drain: Drain, pipe: usize) -> Session {
        let (client_io, server_io) = duplex(pipe);
        let (session, driver) = Session::client(client_io);
        tokio::spawn(driver);
        tokio::spawn(async move {
            let _ = serve(server_io, &drain, |mut stream: MuxStream| async move {
                let mut all = Vec::new();
                if stream.read_to_end(&mut all).await.is_ok() {
                    all.make_ascii_uppercase();
                    let _ = stream.write_all(&all).await;
                    let _ = stream.shutdown().await;
                }
            })
            .await;
        });
        session
    }

    async fn round_trip(session: &Session, body: Vec<u8>) -> Vec<u8> {
        let mut stream = session.open().expect("a stream");
        let (mut read, mut write) = tokio::io::split(&mut stream);
        let send = async {
            write.write_all(&body).await.expect("write");
            write.shutdown().await.expect("shutdown");
        };
        let mut back = Vec::new();
        let receive = read.read_to_end(&mut back);
        let (_, received) = tokio::join!(send, receive);
        received.expect("read");
        back
    }

    #[tokio::test]
    async fn many_streams_cross_one_connection_each_with_its_own_bytes() {
        let session = echo_pair(Drain::new());
        let rounds = (0..50u8).map(|i| {
            let session = session.clone();
            async move {
                let body = vec![b'a' + i % 26; 100 + usize::from(i) * 37];
                let back = round_trip(&session, body.clone()).await;
                assert_eq!(back, body.to_ascii_uppercase(), "stream {i}");
            }
        });
        futures_util::future::join_all(rounds).await;
    }

    /// A pipe's end that counts the reads tried on it.
    struct CountingReads {
        io: tokio::io::DuplexStream,
        reads: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl AsyncRead for CountingReads {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountingReads {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn the_driver_reads_the_connection_only_when_it_woke_the_driver() {
        let (client_io, mut server_io) = duplex(64 * 1024);
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = CountingReads {
            io: client_io,
            reads: reads.clone(),
        };
        let (session, driver) = Session::client(counted);
        tokio::spawn(driver);
        // The other end takes the frames and sends nothing back.
        const WRITES: usize = 20;
        let taken = tokio::spawn(async move {
            let mut want = WRITES * (HEADER + 1);
            let mut buf = vec![0; 4096];
            while want > 0 {
                let n = server_io.read(&mut buf).await.expect("read");
                assert!(n > 0, "the client closed early");
                want = want.saturating_sub(n);
            }
            server_io
        });
        let mut stream = session.open().expect("a stream");
        for _ in 0..WRITES {
            // Each write wakes the driver to send a frame of its own.
            stream.write_all(b"x").await.expect("write");
            tokio::task::yield_now().await;
        }
        let _server_io = taken.await.expect("the other end");
        let reads = reads.load(Ordering::Relaxed);
        assert!(
            reads <= 2,
            "{reads} reads of a connection that sent nothing, for {WRITES} wakeups to write"
        );
    }

    #[tokio::test]
    async fn frames_split_over_many_reads_arrive_whole() {
        // 7 bytes at a time: no read holds a whole frame header.
        let session = echo_pair_over(Drain::new(), 7);
        let rounds = (0..4u8).map(|i| {
            let session = session.clone();
            async move {
                let body = vec![b'k' + i; 3 * MAX_FRAME + 5];
                let back = round_trip(&session, body.clone()).await;
                assert_eq!(back, body.to_ascii_uppercase(), "stream {i}");
            }
        });
        futures_util::future::join_all(rounds).await;
    }

    #[tokio::test]
    async fn a_body_larger_than_the_window_crosses_by_window_updates() {
        let session = echo_pair(Drain::new());
        let body: Vec<u8> = (0..5 * WINDOW as usize)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        let back = round_trip(&session, body.clone()).await;
        assert_eq!(back.len(), body.len());
        assert_eq!(back, body.to_ascii_uppercase());
    }

    #[tokio::test]
    async fn a_stream_nobody_reads_does_not_hold_up_the_others() {
        let (client_io, server_io) = duplex(64 * 1024);
        let (session, driver) = Session::client(client_io);
        tokio::spawn(driver);
        // The server reads nothing of the first stream and echoes the second.
        tokio::spawn(async move {
            let drain = Drain::new();
            let _ = serve(server_io, &drain, |mut stream: MuxStream| async move {
                if stream.id == 1 {
                    std::future::pending::<()>().await;
                }
                let mut all = Vec::new();
                if stream.read_to_end(&mut all).await.is_ok() {
                    let _ = stream.write_all(&all).await;
                    let _ = stream.shutdown().await;
                }
            })
            .await;
        });
        let mut stalled = session.open().expect("a stream");
        // Fills its window: the writes stop there instead of filling the connection.
        let filled = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            stalled.write_all(&vec![0u8; 2 * WINDOW as usize]),
        )
        .await;
        assert!(filled.is_err(), "writes past the window wait for it");
        let back = round_trip(&session, b"still moving".to_vec()).await;
        assert_eq!(back, b"still moving");
    }

    #[tokio::test]
    async fn a_dropped_stream_resets_the_other_end() {
        let (client_io, server_io) = duplex(64 * 1024);
        let (session, driver) = Session::client(client_io);
        tokio::spawn(driver);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        tokio::spawn(async move {
            let drain = Drain::new();
            let _ = serve(server_io, &drain, |mut stream: MuxStream| {
                let tx = tx.lock().expect("lock").take();
                async move {
                    let mut buf = [0u8; 16];
                    let first = stream.read(&mut buf).await;
                    let then = stream.read(&mut buf).await;
                    if let Some(tx) = tx {
                        let _ = tx.send((first.map_err(|e| e.kind()), then.map_err(|e| e.kind())));
                    }
                }
            })
            .await;
        });
        let mut stream = session.open().expect("a stream");
        stream.write_all(b"hello").await.expect("write");
        drop(stream);
        let (first, then) = rx.await.expect("the server's reads");
        assert_eq!(first, Ok(5));
        assert_eq!(then, Err(io::ErrorKind::ConnectionReset));
    }

    #[tokio::test]
    async fn a_draining_server_takes_no_new_streams_and_finishes_the_open_ones() {
        let drain = Drain::new();
        let session = echo_pair(drain.clone());
        let mut open = session.open().expect("a stream");
        open.write_all(b"before").await.expect("write");
        drain.start();
        // GOAWAY arrives: the session takes no more streams.
        poll_fn(|cx| {
            if session.is_usable() {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        assert!(session.open().is_none());
        open.shutdown().await.expect("shutdown");
        let mut back = Vec::new();
        open.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, b"BEFORE");
    }

    /// The error a server ends with after reading `bytes` from its client.
    async fn server_error_after(bytes: &[u8]) -> String {
        let (mut client_io, server_io) = duplex(1024);
        let served = tokio::spawn(async move {
            let drain = Drain::new();
            serve(server_io, &drain, |_stream| async {}).await
        });
        client_io.write_all(bytes).await.expect("write");
        let err = served.await.expect("join").expect_err("a protocol error");
        err.to_string()
    }

    #[tokio::test]
    async fn a_frame_of_an_unknown_kind_ends_the_connection_with_an_error_naming_it() {
        let err = server_error_after(&[0, 0, 0, 1, 9, 0, 0, 0]).await;
        assert!(err.contains("unknown kind 9"), "{err}");
    }

    #[tokio::test]
    async fn a_frame_longer_than_the_largest_ends_the_connection_with_an_error_naming_it() {
        // A DATA frame (kind 0) on stream 1 announcing 65,535 bytes.
        let err = server_error_after(&[0, 0, 0, 1, 0, 0, 0xff, 0xff]).await;
        assert!(err.contains("a frame of 65535 bytes"), "{err}");
    }
}
