//! One HTTP/1.1 client connection, written and read in the request's own future: the pool's
//! connections to the app behind a sidecar, to a peer's `mesh/h1` and to destinations outside
//! the mesh.
//!
//! hyper's client connection, used before, runs each connection in a task of its own: a request
//! goes to it through a channel and its response comes back through a oneshot, and its read
//! buffer is replaced as responses are split off it. Here [`send`] writes the request and reads
//! the response head on the caller's task, and the [`ResponseBody`] reads the body (and writes
//! what is left of the request's body, for an exchange in both directions at once) as it is
//! polled. An idle connection has no task: the pool looks whether it is still open when it
//! takes it ([`Connection::is_open`]).
//!
//! What it speaks (RFC 9112):
//! - requests in HTTP/1.1 (a proxy sends its own version), their body framed by the
//!   `content-length` they carry, or by the body's exact size when known, or chunked (trailers
//!   included);
//! - responses in HTTP/1.1 or 1.0; interim `1xx` responses are skipped; no body after a `HEAD`
//!   request or in a `204` or `304`; otherwise chunked (trailers become a trailers frame),
//!   `content-length`, or up to the connection's close;
//! - a connection is kept when both sides allow it (`connection: close`, an HTTP/1.0 response
//!   without `keep-alive`, a body read to the close, or bytes left after the response end it).
//!
//! Not here: protocol upgrades and `CONNECT` (the pool sends those on a hyper connection of
//! their own, whose upgraded stream hyper hands over).

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, DATE,
    ETAG, EXPECT, EXPIRES, HeaderMap, HeaderName, HeaderValue, LAST_MODIFIED, LOCATION, SERVER,
    SET_COOKIE, TRANSFER_ENCODING, VARY,
};
use hyper::{Method, Request, Response, StatusCode, Version};
use nix::sys::socket::{MsgFlags, recv};
use tokio::io::{AsyncRead, AsyncWrite, Interest};
use tokio::net::TcpStream;

use crate::compact_head;
use crate::raw_head::{RawFields, RequestFields};

/// A connection's byte stream: TCP, or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {
    /// Whether nothing (no byte, no end) has come in since the stream was last read to empty,
    /// told without reading through it: `false` when it cannot tell, and
    /// [`Connection::is_open`] then reads to find out. Polling a pooled connection's read to
    /// see that it is still open cost some 200 instructions a request over TCP and 500
    /// through TLS.
    fn is_quiet(&mut self) -> bool {
        false
    }

    /// Whether the other end speaks compact heads ([`crate::compact_head`]): a peer sidecar
    /// whose handshake chose `mesh/h1c`, or a stream of a `mesh/muxc` session. Requests that fit
    /// go so, and responses may come so.
    fn compact_heads(&self) -> bool {
        false
    }
}

impl Io for TcpStream {
    fn is_quiet(&mut self) -> bool {
        tcp_is_quiet(self)
    }
}

impl Io for tokio::io::DuplexStream {}

/// Whether nothing has come in on `stream` since it was last read to empty. tokio keeps the
/// socket's readiness: when no event has set it, nothing came and no system call is made;
/// when one has, a peek (which takes nothing) tells whether bytes or the end are waiting.
pub(crate) fn tcp_is_quiet(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let peeked = stream.try_io(Interest::READABLE, || {
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        recv(stream.as_raw_fd(), &mut byte, flags).map_err(io::Error::from)
    });
    matches!(peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// At most this many header fields in a response head (hyper's default too).
pub(crate) const MAX_HEADERS: usize = 100;

/// A response head (or a chunk-size line, or trailers) longer than this is refused.
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// Room made in the read buffer before a connection's first read; doubled, up to
/// [`MAX_READ_SIZE`], each time a read fills it (a large body then takes fewer reads).
const READ_SIZE: usize = 8 * 1024;

const MAX_READ_SIZE: usize = 64 * 1024;

/// The request's body is gathered up to this many bytes before they are written.
const WRITE_BATCH: usize = 16 * 1024;

/// Why an exchange failed. Each names the part of the exchange it failed in.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the request: {0}")]
    Write(io::Error),
    #[error("reading the response: {0}")]
    Read(io::Error),
    #[error("the upstream closed the connection {0}")]
    Closed(&'static str),
    #[error("invalid response head: {0}")]
    Head(httparse::Error),
    #[error("the response head is longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    #[error("invalid response head from the peer sidecar: {0}")]
    Compact(compact_head::Error),
    #[error("invalid response: {0}")]
    Response(&'static str),
    #[error("invalid chunked response body: {0}")]
    Chunked(&'static str),
    #[error("the request cannot be sent: {0}")]
    Request(&'static str),
    #[error("reading the request's body: {0}")]
    RequestBody(Box<dyn std::error::Error + Send + Sync>),
}

/// Why [`send`] got no response, and the request when it was not sent and may go again.
#[derive(Debug)]
pub struct SendError<B> {
    pub error: Error,
    /// Set when the connection was used before, the request has no body and is idempotent,
    /// and not a byte of its response came: the upstream closed the connection as it was taken
    /// (RFC 9112 §9.3.1), and another connection may take the request.
    pub unsent: Option<Request<B>>,
}

/// An open HTTP/1.1 connection, between exchanges. Boxed once when made (`Box<Connection<dyn
/// Io>>`): the pool and the response body move only the pointer.
pub struct Connection<I: ?Sized = dyn Io> {
    pub(crate) read: BytesMut,
    /// The room the next read gets.
    read_size: usize,
    pub(crate) write: Vec<u8>,
    written: usize,
    /// The other end speaks compact heads ([`Io::compact_heads`]): responses may come so.
    compact: bool,
    /// Requests that fit go in a compact head: until one goes as text, after which the other
    /// sidecar's server may have handed the connection to hyper's, which reads text only.
    send_compact: bool,
    pub(crate) io: I,
}

impl<I: ?Sized> std::fmt::Debug for Connection<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("buffered", &self.read.len())
            .finish()
    }
}

impl Connection {
    /// A connection over `io`.
    pub fn new<I: Io>(io: I) -> Box<Connection> {
        Box::new(Connection {
            read: BytesMut::new(),
            read_size: READ_SIZE,
            write: Vec::new(),
            written: 0,
            compact: io.compact_heads(),
            send_compact: io.compact_heads(),
            io,
        })
    }
}

impl<I> Connection<I> {
    /// A connection over `io` whose first bytes (`read`) were read already; not boxed (the
    /// server side, [`crate::http1_server`], keeps it in its connection's future).
    pub(crate) fn with_read(io: I, read: BytesMut) -> Connection<I> {
        Connection {
            read,
            read_size: READ_SIZE,
            write: Vec::new(),
            written: 0,
            compact: false,
            send_compact: false,
            io,
        }
    }

    /// What was read and not taken, and the stream.
    pub(crate) fn into_parts(self) -> (BytesMut, I) {
        (self.read, self.io)
    }
}

impl<I: Io + ?Sized> Connection<I> {
    /// Whether the connection can take a request: the upstream has neither closed it nor sent
    /// anything unasked. Asks the stream whether anything came ([`Io::is_quiet`]); when it
    /// cannot tell, reads without waiting (a closed connection reads its end at once).
    pub fn is_open(&mut self) -> bool {
        if self.read.is_empty() && self.io.is_quiet() {
            return true;
        }
        self.poll_idle()
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + ?Sized> Connection<I> {
    /// [`Connection::is_open`] by a read that does not wait.
    fn poll_idle(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.poll_fill(&mut cx) {
            Poll::Pending => self.read.is_empty(),
            Poll::Ready(_) => false,
        }
    }

    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < self.read_size / 4 {
            self.read.reserve(self.read_size);
        }
        let room = self.read.capacity() - self.read.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.read
        ))?;
        if n == room && self.read_size < MAX_READ_SIZE {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Writes what is buffered, then flushes (TLS keeps what it was given until then).
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.write.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.write[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.write.clear();
        self.written = 0;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Reads until a final response head is in the buffer, and parses it.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
        raw: bool,
    ) -> Poll<Result<Head, Error>> {
        loop {
            if let Some(&first) = self.read.first() {
                let head = if self.compact && first == compact_head::MARKER {
                    parse_compact(&mut self.read, head_request, raw)?
                } else {
                    parse_head(&mut self.read, head_request, raw)?
                };
                if let Some(head) = head {
                    return Poll::Ready(Ok(head));
                }
            }
            if ready!(self.poll_fill(cx)).map_err(Error::Read)? == 0 {
                return Poll::Ready(Err(Error::Closed(if self.read.is_empty() {
                    "before it answered"
                } else {
                    "in the middle of the response head"
                })));
            }
        }
    }
}

/// Sends `req` on `conn` and reads its response's head; `reused` says whether the connection
/// served an exchange before. The request must be in origin form (or absolute form, for a
/// proxy) with its Host header, and its hop-by-hop headers already dealt with.
pub async fn send<B>(
    mut conn: Box<Connection>,
    req: Request<B>,
    reused: bool,
) -> Result<Response<ResponseBody<B>>, SendError<B>>
where
    B: Body<Data = Bytes> + RequestFields + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let unsent = |error| SendError {
        error,
        unsent: None,
    };
    let head_request = req.method() == Method::HEAD;
    let raw = req.body().read_by_our_server();
    let compact = conn
        .send_compact
        .then(|| encode_compact(&req, &mut conn.write))
        .flatten();
    conn.send_compact = compact.is_some();
    let framing = match compact {
        Some(framing) => framing,
        None => encode_head(&req, &mut conn.write).map_err(unsent)?,
    };
    let (parts, body) = req.into_parts();
    let retryable = reused && framing.encoder.is_none() && is_idempotent(&parts.method);
    let mut writer = Writer::new(body, framing.encoder);
    // The upstream may answer and close before it has read the whole request (an early error,
    // say): a write that fails on the connection leaves its answer to be read.
    let mut write_failed = None;
    let head = poll_fn(|cx| {
        if write_failed.is_none() && !writer.is_done() {
            // Pending is fine: the response may come before the request's body has all gone.
            match writer.poll_write(&mut conn, cx) {
                Poll::Ready(Err(Error::Write(e))) => write_failed = Some(e),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                _ => {}
            }
        }
        match conn.poll_head(cx, head_request, raw) {
            // Nothing came: the failed write is what went wrong.
            Poll::Ready(Err(e @ (Error::Closed(_) | Error::Read(_)))) if conn.read.is_empty() => {
                Poll::Ready(Err(write_failed.take().map_or(e, Error::Write)))
            }
            polled => polled,
        }
    })
    .await;
    let head = match head {
        Ok(head) => head,
        Err(error) => {
            let nothing_came = conn.read.is_empty()
                && matches!(error, Error::Closed(_) | Error::Read(_) | Error::Write(_));
            let unsent = (retryable && nothing_came)
                .then(|| writer.take_body())
                .flatten()
                .map(|body| Request::from_parts(parts, body));
            return Err(SendError { error, unsent });
        }
    };
    let keep_alive = head.keep_alive && !framing.close && write_failed.is_none();
    let (headers, kept) = match head.fields {
        Fields::Map(headers) => (headers, None),
        Fields::Raw(raw) => (HeaderMap::new(), Some(raw)),
    };
    let mut response = Response::new(ResponseBody {
        conn: Some(conn),
        decoder: head.decoder,
        keep_alive,
        writer: (write_failed.is_none() && !writer.is_done()).then(|| Box::new(writer)),
        kept,
    });
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = headers;
    Ok(response)
}

/// RFC 9110 §9.2.2.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// How the request's head says its body is framed.
struct Framing {
    /// `None`: no body.
    encoder: Option<Encoder>,
    /// The request asked for the connection to close after this exchange.
    close: bool,
}

/// How a body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoder {
    /// This many bytes are still to come.
    Length(u64),
    Chunked,
    /// As it comes, up to the connection's close (a response to an HTTP/1.0 client whose
    /// length is not known).
    ToClose,
}

/// Writes the request line and header section into `out`, with the framing header the body
/// needs when the request has none.
fn encode_head<B: Body + RequestFields>(
    req: &Request<B>,
    out: &mut Vec<u8>,
) -> Result<Framing, Error> {
    let method = req.method();
    if method == Method::CONNECT {
        return Err(Error::Request("CONNECT goes on a connection of its own"));
    }
    let headers = req.headers();
    let mut seen = FramingFields::default();
    for (name, value) in headers {
        seen.see(name, value.as_bytes());
    }
    let chunked_by_header = seen.chunked.is_some();
    // The framing header to add, when the request has none.
    let (encoder, added): (_, Option<FramingHeader>) = if let Some(chunked) = seen.chunked {
        if !chunked {
            return Err(Error::Request(
                "its transfer-encoding does not end in chunked",
            ));
        }
        (Some(Encoder::Chunked), None)
    } else if let Some(length) = seen.length {
        match length {
            Some(0) => (None, None),
            Some(n) => (Some(Encoder::Length(n)), None),
            None => return Err(Error::Request("its content-length is not one number")),
        }
    } else if req.body().is_end_stream() {
        let says_empty = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
        (None, says_empty.then_some(FramingHeader::Length(0)))
    } else if let Some(n) = req.body().size_hint().exact() {
        let encoder = (n > 0).then_some(Encoder::Length(n));
        (encoder, Some(FramingHeader::Length(n)))
    } else {
        (Some(Encoder::Chunked), Some(FramingHeader::Chunked))
    };
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    let uri = req.uri();
    match (uri.scheme(), uri.authority(), uri.path_and_query()) {
        (None, None, Some(path)) => out.extend_from_slice(path.as_str().as_bytes()),
        (None, None, None) => out.push(b'/'),
        _ => out.extend_from_slice(uri.to_string().as_bytes()),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        // A message with transfer-encoding must not carry content-length (RFC 9112 §6.2).
        if chunked_by_header && name == CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // The fields the sidecar did not act on, as they came (see `crate::raw_head`).
    if let Some(kept) = req.body().kept() {
        out.extend_from_slice(kept);
    }
    match added {
        Some(FramingHeader::Length(n)) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Some(FramingHeader::Chunked) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        None => {}
    }
    out.extend_from_slice(b"\r\n");
    Ok(Framing {
        encoder,
        close: seen.close,
    })
}

/// Writes the request's head in the compact form ([`crate::compact_head`]) when it fits: in
/// origin form, with no field that the other sidecar's server leaves to hyper (`expect`) or
/// that is not plain (`transfer-encoding`, `upgrade`, `connection`...: every field of the map
/// but `content-length` goes as it came), and a body of known length that that server reads
/// whole. `None` (nothing written) otherwise.
fn encode_compact<B: Body + RequestFields>(req: &Request<B>, out: &mut Vec<u8>) -> Option<Framing> {
    let method = req.method();
    let uri = req.uri();
    if method == Method::CONNECT || uri.scheme().is_some() || uri.authority().is_some() {
        return None;
    }
    let headers = req.headers();
    let mut seen = FramingFields::default();
    for (name, value) in headers {
        if *name == CONTENT_LENGTH {
            seen.see(name, value.as_bytes());
        } else if *name == EXPECT || !crate::raw_head::goes_as_it_came(name.as_str().as_bytes()) {
            return None;
        }
    }
    let body = req.body();
    let length = match seen.length {
        Some(n) => n?,
        None if body.is_end_stream() => 0,
        None => body.size_hint().exact()?,
    };
    if length > crate::http1_server::MAX_WHOLE_BODY {
        return None;
    }
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let map_lines = |out: &mut Vec<u8>| {
        for (name, value) in headers {
            if *name != CONTENT_LENGTH {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    };
    let kept = body.kept().unwrap_or_default();
    let method = method.as_str().as_bytes();
    compact_head::encode_request(
        out,
        method,
        target.as_bytes(),
        false,
        length,
        map_lines,
        kept,
    )
    .then_some(Framing {
        encoder: (length > 0).then_some(Encoder::Length(length)),
        close: false,
    })
}

/// A framing header the request did not have.
enum FramingHeader {
    Length(u64),
    Chunked,
}

/// What a message's framing fields say, gathered as its fields go by (one pass, no lookups).
#[derive(Debug, Default)]
pub(crate) struct FramingFields {
    /// With `transfer-encoding`: whether its last coding is chunked.
    pub(crate) chunked: Option<bool>,
    /// With `content-length`: the length, if every field and list member says the same number.
    pub(crate) length: Option<Option<u64>>,
    /// `connection: close`.
    pub(crate) close: bool,
    /// `connection: keep-alive`.
    pub(crate) keep_alive: bool,
}

impl FramingFields {
    pub(crate) fn see(&mut self, name: &HeaderName, value: &[u8]) {
        if *name == CONTENT_LENGTH {
            for part in value.split(|&b| b == b',') {
                let n = parse_decimal(part.trim_ascii());
                self.length = match self.length {
                    None => Some(n),
                    Some(m) if m == n => Some(n),
                    Some(_) => Some(None),
                };
            }
        } else if *name == TRANSFER_ENCODING {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            self.chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if *name == CONNECTION {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
}

/// A name most responses carry, matched on its bytes: `HeaderName::from_bytes` cost about 290
/// instructions a name in callgrind's count (`benches/instructions.sh`), this a few dozen.
fn common_name(bytes: &[u8]) -> Option<HeaderName> {
    let candidates: &[(&[u8], HeaderName)] = match bytes.len() {
        4 => &[(b"date", DATE), (b"etag", ETAG), (b"vary", VARY)],
        6 => &[(b"server", SERVER)],
        7 => &[(b"expires", EXPIRES)],
        8 => &[(b"location", LOCATION)],
        10 => &[(b"connection", CONNECTION), (b"set-cookie", SET_COOKIE)],
        12 => &[(b"content-type", CONTENT_TYPE)],
        13 => &[
            (b"cache-control", CACHE_CONTROL),
            (b"last-modified", LAST_MODIFIED),
            (b"accept-ranges", ACCEPT_RANGES),
        ],
        14 => &[(b"content-length", CONTENT_LENGTH)],
        16 => &[(b"content-encoding", CONTENT_ENCODING)],
        17 => &[(b"transfer-encoding", TRANSFER_ENCODING)],
        _ => return None,
    };
    // httparse has checked that the name is a token: no byte of one becomes a lower-case
    // letter or '-' by setting 0x20 unless it is that letter in either case (or '-').
    candidates
        .iter()
        .find(|(lower, _)| bytes.iter().zip(*lower).all(|(b, l)| b | 0x20 == *l))
        .map(|(_, name)| name.clone())
}

fn header_name(bytes: &[u8]) -> Result<HeaderName, Error> {
    match common_name(bytes) {
        Some(name) => Ok(name),
        None => HeaderName::from_bytes(bytes)
            .map_err(|_| Error::Response("a header name that is not a token")),
    }
}

/// Appends `n` in decimal, without `fmt` or an allocation (`to_string` was both, once a
/// response on the server side).
pub(crate) fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// Writes a message's body (the head is already in the connection's write buffer): the
/// request's here, the response's in [`crate::http1_server`].
pub(crate) struct Writer<B> {
    body: Option<B>,
    encoder: Option<Encoder>,
    /// Trailers for the end of a chunked body.
    trailers: Option<HeaderMap>,
    /// Whether the head and the body have all been written and flushed.
    flushed: bool,
}

impl<B> std::fmt::Debug for Writer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("encoder", &self.encoder)
            .field("flushed", &self.flushed)
            .finish()
    }
}

impl<B> Writer<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub(crate) fn new(body: B, encoder: Option<Encoder>) -> Writer<B> {
        Writer {
            body: Some(body),
            encoder,
            trailers: None,
            flushed: false,
        }
    }

    fn is_done(&self) -> bool {
        self.flushed
    }

    /// The body, if none of it was read.
    fn take_body(&mut self) -> Option<B> {
        self.encoder.is_none().then(|| self.body.take()).flatten()
    }

    /// Gathers the body's frames into the write buffer while they are ready, writes them, and
    /// is ready once the whole request has been flushed.
    pub(crate) fn poll_write<I: AsyncRead + AsyncWrite + Unpin + ?Sized>(
        &mut self,
        conn: &mut Connection<I>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        loop {
            let mut waiting = false;
            while self.encoder.is_some() && conn.write.len() - conn.written < WRITE_BATCH {
                let Some(body) = self.body.as_mut() else {
                    break;
                };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => {
                        waiting = true;
                        break;
                    }
                    Poll::Ready(Some(Ok(frame))) => self.encode(frame, &mut conn.write)?,
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(Error::RequestBody(e.into())));
                    }
                    Poll::Ready(None) => self.finish(&mut conn.write)?,
                }
            }
            ready!(conn.poll_flush(cx)).map_err(Error::Write)?;
            if self.encoder.is_none() {
                self.flushed = true;
                return Poll::Ready(Ok(()));
            }
            if waiting {
                return Poll::Pending;
            }
        }
    }

    fn encode(&mut self, frame: Frame<Bytes>, out: &mut Vec<u8>) -> Result<(), Error> {
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                // Trailers: carried by a chunked body; a body of known length has no place
                // for them, and they are dropped (as hyper does).
                if let Ok(trailers) = frame.into_trailers() {
                    self.trailers = Some(trailers);
                }
                return Ok(());
            }
        };
        match &mut self.encoder {
            Some(Encoder::Length(left)) => {
                let len = data.len() as u64;
                if len > *left {
                    return Err(Error::Request("its body is longer than its content-length"));
                }
                *left -= len;
                out.extend_from_slice(&data);
                if *left == 0 {
                    self.body = None;
                    self.encoder = None;
                }
            }
            Some(Encoder::ToClose) => out.extend_from_slice(&data),
            Some(Encoder::Chunked) if !data.is_empty() => {
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
        Ok(())
    }

    /// The body has ended: the chunked body's last chunk and trailers.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        self.body = None;
        match self.encoder.take() {
            Some(Encoder::Length(left)) if left > 0 => Err(Error::Request(
                "its body is shorter than its content-length",
            )),
            Some(Encoder::Chunked) => {
                out.extend_from_slice(b"0\r\n");
                for (name, value) in self.trailers.iter().flatten() {
                    out.extend_from_slice(name.as_str().as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(value.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"\r\n");
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// A parsed final response head.
#[derive(Debug)]
struct Head {
    status: StatusCode,
    version: Version,
    fields: Fields,
    decoder: Decoder,
    keep_alive: bool,
}

/// A response head's header fields: parsed into a map, or kept as they came (see
/// [`crate::raw_head`]).
#[derive(Debug)]
enum Fields {
    Map(HeaderMap),
    Raw(RawFields),
}

/// Parses the response head at the start of `buf`, skipping interim (1xx) responses; `None`
/// while it is incomplete. The head's bytes leave the buffer; the header values share them.
/// With `raw`, its fields are kept as they came where they can be ([`RawFields::of`]).
fn parse_head(buf: &mut BytesMut, head_request: bool, raw: bool) -> Result<Option<Head>, Error> {
    loop {
        // Left uninitialised: httparse writes each field before it is read (filling all 100
        // with empty fields first was a loop that every response paid for).
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut fields) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(Error::HeadTooLong);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(Error::Head(e)),
        };
        let code = parsed.code.unwrap_or_default();
        let status = StatusCode::from_u16(code).map_err(|_| Error::Response("bad status code"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(Error::Response(
                "101 Switching Protocols to a request without Upgrade",
            ));
        }
        if status.is_informational() {
            buf.advance(len);
            continue;
        }
        let version = if parsed.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Where each field is in the head, so that the head can be split off the buffer and
        // the values made from it without a copy.
        let base = buf.as_ptr() as usize;
        let count = parsed.headers.len();
        let (mut few, mut many) = ([(0u32, 0u32, 0u32, 0u32); FEW_FIELDS], Vec::new());
        let spans = field_spans(&mut few, &mut many, count);
        for (span, field) in spans.iter_mut().zip(parsed.headers.iter()) {
            let name = field.name.as_ptr() as usize - base;
            let value = field.value.as_ptr() as usize - base;
            // Below MAX_HEAD: the head is shorter than that (httparse stops at the buffer's end).
            *span = (
                name as u32,
                (name + field.name.len()) as u32,
                value as u32,
                (value + field.value.len()) as u32,
            );
        }
        let head = buf.split_to(len).freeze();
        let (fields, seen) = match raw.then(|| RawFields::of(&head, spans)).flatten() {
            Some((raw, seen)) => (Fields::Raw(raw), seen),
            None => {
                let (headers, seen) = header_map(&head, spans)?;
                (Fields::Map(headers), seen)
            }
        };
        let (decoder, delimited) = response_decoder(status, &seen, head_request)?;
        let keep_alive = delimited
            && match version {
                Version::HTTP_10 => seen.keep_alive,
                _ => !seen.close,
            };
        return Ok(Some(Head {
            status,
            version,
            fields,
            decoder,
            keep_alive,
        }));
    }
}

/// Reads the compact response head ([`crate::compact_head`]) at the start of `buf`; `None`
/// while it is incomplete. With `raw`, its fields stay as they came, else they go into a map.
fn parse_compact(buf: &mut BytesMut, head_request: bool, raw: bool) -> Result<Option<Head>, Error> {
    let Some(head) = compact_head::decode(buf, MAX_HEAD).map_err(Error::Compact)? else {
        return Ok(None);
    };
    let fields = if raw {
        Fields::Raw(head.fields)
    } else {
        Fields::Map(head.fields.header_map())
    };
    let decoder = match head.length {
        _ if head_request => Decoder::Done,
        0 => Decoder::Done,
        n => Decoder::Length(n),
    };
    Ok(Some(Head {
        status: head.status,
        version: Version::HTTP_11,
        fields,
        decoder,
        keep_alive: head.keep_alive,
    }))
}

/// The fields of `head` at `spans` as a map, and what its framing fields say.
fn header_map(head: &Bytes, spans: &[FieldSpan]) -> Result<(HeaderMap, FramingFields), Error> {
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut seen = FramingFields::default();
    for &(ns, ne, vs, ve) in spans {
        let name = header_name(&head[ns as usize..ne as usize])?;
        let (vs, ve) = (vs as usize, ve as usize);
        seen.see(&name, &head[vs..ve]);
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| Error::Response("a header value with a control character"))?;
        headers.append(name, value);
    }
    Ok((headers, seen))
}

/// Where a field is in a head: its name's start and end, its value's start and end.
pub(crate) type FieldSpan = (u32, u32, u32, u32);

/// Most heads have at most this many fields: their spans go on the stack, zeroed (zeroing room
/// for [`MAX_HEADERS`], 1.6 KB, was a `memset` in every parse).
pub(crate) const FEW_FIELDS: usize = 20;

/// Room for `count` spans: `few` when they fit, else `many`, grown for them.
pub(crate) fn field_spans<'a>(
    few: &'a mut [FieldSpan; FEW_FIELDS],
    many: &'a mut Vec<FieldSpan>,
    count: usize,
) -> &'a mut [FieldSpan] {
    if count <= FEW_FIELDS {
        &mut few[..count]
    } else {
        many.resize(count, (0, 0, 0, 0));
        many
    }
}

/// How the response's body is framed (RFC 9112 §6.3), and whether its end is marked (a body
/// read to the close ends the connection).
fn response_decoder(
    status: StatusCode,
    seen: &FramingFields,
    head_request: bool,
) -> Result<(Decoder, bool), Error> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Decoder::Done, true));
    }
    match (seen.chunked, seen.length) {
        (Some(true), _) => Ok((Decoder::Chunked(Chunk::Size), true)),
        (Some(false), _) => Ok((Decoder::ToClose, false)),
        (None, Some(Some(0))) => Ok((Decoder::Done, true)),
        (None, Some(Some(n))) => Ok((Decoder::Length(n), true)),
        (None, Some(None)) => Err(Error::Response("a content-length that is not one number")),
        (None, None) => Ok((Decoder::ToClose, false)),
    }
}

/// Where the reading of a response body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoder {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunk),
    /// Everything up to the connection's close.
    ToClose,
    Done,
}

/// Where the reading of a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// In a chunk's data, this many bytes still to come.
    Data(u64),
    /// Before the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section.
    Trailers,
}

/// A response's body, read from its connection as it is polled. Once read to its end, the
/// connection can be taken back ([`ResponseBody::take_reusable`]).
pub struct ResponseBody<B> {
    conn: Option<Box<Connection>>,
    decoder: Decoder,
    keep_alive: bool,
    /// What is left of the request's body, when the response came before it had all gone.
    writer: Option<Box<Writer<B>>>,
    /// The response's fields as they came, in place of its map ([`RawFields::of`]).
    kept: Option<RawFields>,
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("decoder", &self.decoder)
            .field("keep_alive", &self.keep_alive)
            .field("writing", &self.writer.is_some())
            .finish()
    }
}

impl<B> ResponseBody<B> {
    /// The response's fields, when they were kept as they came in place of its map.
    pub fn kept(&self) -> Option<&RawFields> {
        self.kept.as_ref()
    }

    pub fn take_kept(&mut self) -> Option<RawFields> {
        self.kept.take()
    }

    /// The connection, once the body has been read to its end, if it can take another request:
    /// both sides allow it, the request has all been written and nothing follows the response.
    pub fn take_reusable(&mut self) -> Option<Box<Connection>> {
        let reusable = self.decoder == Decoder::Done
            && self.keep_alive
            && self.writer.is_none()
            && self.conn.as_ref().is_some_and(|c| c.read.is_empty());
        if reusable { self.conn.take() } else { None }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if this.decoder == Decoder::Done {
            return Poll::Ready(None);
        }
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(writer) = this.writer.as_mut() {
            match writer.poll_write(conn, cx) {
                Poll::Ready(Ok(())) => this.writer = None,
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => {}
            }
        }
        let polled = poll_body(conn, &mut this.decoder, cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            this.conn = None;
            this.decoder = Decoder::Done;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.decoder == Decoder::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// The body's next frame, read as `decoder` says.
fn poll_body(
    conn: &mut Connection,
    decoder: &mut Decoder,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
    loop {
        match decoder {
            Decoder::Done => return Poll::Ready(None),
            Decoder::Length(left) if !conn.read.is_empty() => {
                let n = conn
                    .read
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                if *left == 0 {
                    *decoder = Decoder::Done;
                }
                return Poll::Ready(Some(Ok(Frame::data(conn.read.split_to(n).freeze()))));
            }
            Decoder::ToClose if !conn.read.is_empty() => {
                return Poll::Ready(Some(Ok(Frame::data(conn.read.split().freeze()))));
            }
            Decoder::Chunked(chunk) => match decode_chunked(&mut conn.read, chunk) {
                Ok(Some(frame)) => {
                    if frame.is_trailers() {
                        *decoder = Decoder::Done;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) if *chunk == Chunk::Trailers && chunked_done(&conn.read) => {
                    conn.read.advance(2);
                    *decoder = Decoder::Done;
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            },
            _ => {}
        }
        let n = match ready!(conn.poll_fill(cx)) {
            Ok(n) => n,
            Err(e) => return Poll::Ready(Some(Err(Error::Read(e)))),
        };
        if n == 0 {
            if *decoder == Decoder::ToClose {
                *decoder = Decoder::Done;
                return Poll::Ready(None);
            }
            return Poll::Ready(Some(Err(Error::Closed("before the response's body ended"))));
        }
    }
}

/// The trailer section is empty: the body ends with this CRLF.
fn chunked_done(buf: &[u8]) -> bool {
    buf.starts_with(b"\r\n")
}

/// Decodes what `buf` holds of a chunked body: a data frame, trailers, or `None` when more
/// bytes are needed (or the body ends with an empty trailer section, see [`chunked_done`]).
fn decode_chunked(buf: &mut BytesMut, chunk: &mut Chunk) -> Result<Option<Frame<Bytes>>, Error> {
    loop {
        match *chunk {
            Chunk::Size => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((len, size))) => {
                    buf.advance(len);
                    *chunk = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                    return Err(Error::Chunked("a chunk-size line without its end"));
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(_) => return Err(Error::Chunked("a chunk-size line that is not hexadecimal")),
            },
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let left = left - n as u64;
                *chunk = if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                };
                return Ok(Some(Frame::data(buf.split_to(n).freeze())));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Error::Chunked("a chunk's data not followed by CRLF"));
                }
                buf.advance(2);
                *chunk = Chunk::Size;
            }
            Chunk::Trailers => {
                if buf.len() < 2 || chunked_done(buf) {
                    return Ok(None);
                }
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let (len, trailers) = match httparse::parse_headers(buf, &mut fields) {
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut trailers = HeaderMap::with_capacity(fields.len());
                        for field in fields {
                            let name =
                                HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| {
                                    Error::Chunked("a trailer name that is not a token")
                                })?;
                            let value = HeaderValue::from_bytes(field.value).map_err(|_| {
                                Error::Chunked("a trailer value with a control character")
                            })?;
                            trailers.append(name, value);
                        }
                        (len, trailers)
                    }
                    Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                        return Err(Error::Chunked("a trailer section without its end"));
                    }
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(_) => return Err(Error::Chunked("an invalid trailer section")),
                };
                buf.advance(len);
                return Ok(Some(Frame::trailers(trailers)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use std::convert::Infallible;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A pooled TCP connection tells, without reading, that bytes or its end came: then (and
    /// only then) the pool reads it to see whether it is still open.
    #[tokio::test]
    async fn a_tcp_stream_is_quiet_until_a_byte_or_its_end_comes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("an address");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (mut server, _) = listener.accept().await.expect("accept");
        assert!(tcp_is_quiet(&client));
        server.write_all(b"x").await.expect("write");
        client.readable().await.expect("readable");
        assert!(!tcp_is_quiet(&client));
        // A peek takes nothing: still there.
        assert!(!tcp_is_quiet(&client));
        let mut byte = [0u8; 1];
        assert_eq!(client.try_read(&mut byte).expect("the byte"), 1);
        assert!(tcp_is_quiet(&client));
        drop(server);
        client.readable().await.expect("readable at the end");
        assert!(!tcp_is_quiet(&client));
        let mut conn = Connection::new(client);
        assert!(!conn.is_open());
    }

    /// A connection whose upstream end the test holds.
    fn connection() -> (Box<Connection>, DuplexStream) {
        let (client, server) = tokio::io::duplex(256 * 1024);
        (Connection::new(client), server)
    }

    fn get(path: &str) -> Request<Empty<Bytes>> {
        Request::get(path)
            .header("host", "example")
            .body(Empty::new())
            .expect("request")
    }

    /// A GET as our HTTP/1.1 server reads it: its body says so, with the `kept` fields.
    fn from_our_server(path: &str, kept: Option<&'static str>) -> Request<crate::body::StreamBody> {
        let kept = kept.unwrap_or_default().as_bytes();
        let body = crate::body::StreamBody::Whole(crate::body::Whole::joined(kept, b""));
        Request::get(path)
            .header("host", "example")
            .body(body)
            .expect("request")
    }

    /// What the client has written so far (the test's upstream end reads it without waiting).
    async fn written(server: &mut DuplexStream) -> String {
        String::from_utf8(written_bytes(server).await).expect("text")
    }

    /// What the client has written so far, as bytes.
    async fn written_bytes(server: &mut DuplexStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        loop {
            tokio::select! {
                biased;
                n = server.read(&mut buf) => match n.expect("read") {
                    0 => break,
                    n => out.extend_from_slice(&buf[..n]),
                },
                () = std::future::ready(()) => break,
            }
        }
        out
    }

    /// Sends `req` and expects a response head.
    async fn responded<B>(
        conn: Box<Connection>,
        req: Request<B>,
        reused: bool,
    ) -> Response<ResponseBody<B>>
    where
        B: Body<Data = Bytes> + RequestFields + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        send(conn, req, reused)
            .await
            .map_err(|e| e.error)
            .expect("a response head")
    }

    /// Sends `req` after the upstream queued `answer`; the response and its whole body.
    async fn exchange<B>(
        conn: Box<Connection>,
        server: &mut DuplexStream,
        req: Request<B>,
        answer: &[u8],
    ) -> (Response<ResponseBody<B>>, http_body_util::Collected<Bytes>)
    where
        B: Body<Data = Bytes> + RequestFields + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        server.write_all(answer).await.expect("answer");
        let resp = responded(conn, req, false).await;
        let (parts, mut body) = resp.into_parts();
        let collected = (&mut body).collect().await.expect("body");
        (Response::from_parts(parts, body), collected)
    }

    /// The end of a connection to a peer whose handshake chose compact response heads.
    struct CompactPeer(DuplexStream);

    impl AsyncRead for CompactPeer {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CompactPeer {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl Io for CompactPeer {
        fn compact_heads(&self) -> bool {
            true
        }
    }

    /// From a peer that speaks compact heads: a compact head gives the status, the fields as
    /// they came (or a map, for a request not read by our server) and the body it frames,
    /// and the connection goes on to a response in text; a broken one is an error that names
    /// the peer; on a connection that did not choose them, the marker is no head at all.
    #[tokio::test]
    async fn a_compact_head_from_a_peer_reads_as_its_text_would() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let conn = Connection::new(CompactPeer(client));
        let fields = RawFields::for_test("content-type: text/plain\r\nx-a: 1\r\n", Some(5));
        let mut answer = Vec::new();
        assert!(compact_head::encode(
            StatusCode::CREATED,
            &fields,
            5,
            true,
            &mut answer
        ));
        answer.extend_from_slice(b"hello");
        let (mut resp, body) =
            exchange(conn, &mut server, from_our_server("/a", None), &answer).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert!(resp.headers().is_empty());
        let kept = resp.body().kept().expect("the fields as they came");
        assert_eq!(kept.lines(), b"content-type: text/plain\r\nx-a: 1\r\n");
        assert_eq!(kept.length(), Some(5));
        assert_eq!(&body.to_bytes()[..], b"hello");
        let conn = resp.body_mut().take_reusable().expect("kept alive");
        // The request went in a compact head too.
        let sent = written_bytes(&mut server).await;
        let layout = compact_head::request_layout(&sent, MAX_HEAD, 0)
            .expect("a compact request")
            .expect("all of it");
        let part = |(start, end): (usize, usize)| &sent[start..end];
        assert_eq!(part(layout.method), b"GET");
        assert_eq!(part(layout.target), b"/a");
        assert_eq!(part(layout.map), b"host: example\r\n");
        assert_eq!(layout.end, sent.len());

        // Not read by our server: the fields come as a map.
        let (mut resp, body) = exchange(conn, &mut server, get("/b"), &answer).await;
        assert_eq!(resp.headers()["x-a"], "1");
        assert_eq!(resp.headers()[CONTENT_LENGTH], "5");
        assert_eq!(&body.to_bytes()[..], b"hello");
        let conn = resp.body_mut().take_reusable().expect("kept alive");

        // Text on the same connection.
        let text = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-c: 3\r\n\r\nok";
        let (mut resp, body) = exchange(conn, &mut server, get("/c"), text).await;
        assert_eq!(resp.headers()["x-c"], "3");
        assert_eq!(&body.to_bytes()[..], b"ok");
        let conn = resp.body_mut().take_reusable().expect("kept alive");

        let mut broken = Vec::new();
        let bad = RawFields::for_test("x-a: 1\n", Some(0));
        assert!(compact_head::encode(
            StatusCode::OK,
            &bad,
            0,
            true,
            &mut broken
        ));
        server.write_all(&broken).await.expect("answer");
        let e = send(conn, get("/d"), false)
            .await
            .expect_err("refused")
            .error;
        assert!(
            matches!(e, Error::Compact(compact_head::Error::Lines)),
            "{e}"
        );
        assert!(e.to_string().contains("peer sidecar"), "{e}");

        let (conn, mut server) = connection();
        server.write_all(&answer).await.expect("answer");
        let e = send(conn, get("/e"), false)
            .await
            .expect_err("refused")
            .error;
        assert!(matches!(e, Error::Head(_)), "{e}");
    }

    /// To a peer that speaks compact heads, what the form cannot carry goes as text: a body
    /// of unknown length, `expect`, an absolute target, and every request after one in text;
    /// a body with a length goes compact.
    #[tokio::test]
    async fn a_request_the_compact_form_cannot_carry_goes_as_text() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let unknown = || {
            let chunks =
                stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"ab")))]);
            StreamBody::new(chunks)
        };
        let unknown_post = || {
            Request::post("/unknown")
                .header("host", "example")
                .body(unknown())
                .expect("request")
        };
        let requests = [
            Request::post("/unknown")
                .header("host", "example")
                .body(unknown()),
            Request::post("/expect")
                .header("host", "example")
                .header("expect", "100-continue")
                .header("content-length", "2")
                .body(unknown()),
            Request::get("http://example/absolute").body(unknown()),
        ];
        for req in requests {
            let req = req.expect("request");
            let path = req.uri().path().to_string();
            let (client, mut server) = tokio::io::duplex(64 * 1024);
            let conn = Connection::new(CompactPeer(client));
            let (resp, _) = exchange(conn, &mut server, req, ok).await;
            assert_eq!(resp.status(), StatusCode::OK);
            let sent = written(&mut server).await;
            assert!(
                sent.starts_with("POST ") || sent.starts_with("GET "),
                "{path}: {sent}"
            );
        }
        // After a request in text, the rest go in text (the other sidecar may have handed the
        // connection to hyper's server).
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let conn = Connection::new(CompactPeer(client));
        let (mut resp, _) = exchange(conn, &mut server, unknown_post(), ok).await;
        let conn = resp.body_mut().take_reusable().expect("kept alive");
        assert!(
            written(&mut server)
                .await
                .starts_with("POST /unknown HTTP/1.1\r\n")
        );
        let (_, _) = exchange(conn, &mut server, get("/after"), ok).await;
        assert!(
            written(&mut server)
                .await
                .starts_with("GET /after HTTP/1.1\r\n")
        );

        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let conn = Connection::new(CompactPeer(client));
        let req = Request::post("/known")
            .header("host", "example")
            .header("content-length", "2")
            .body(Full::new(Bytes::from_static(b"ab")))
            .expect("request");
        let (resp, _) = exchange(conn, &mut server, req, ok).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let sent = written_bytes(&mut server).await;
        let layout = compact_head::request_layout(&sent, MAX_HEAD, 2)
            .expect("a compact request")
            .expect("all of it");
        assert_eq!(&sent[layout.map.0..layout.map.1], b"host: example\r\n");
        assert_eq!(&sent[layout.kept.1..], b"ab");
    }

    #[test]
    fn decimals_are_written_as_fmt_writes_them() {
        for n in [0, 7, 10, 1234, 99_999, u64::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[tokio::test]
    async fn a_response_of_known_length_is_read_and_its_connection_taken_back() {
        let (conn, mut server) = connection();
        // Names in any case, the common ones and others; a length repeated in a list.
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nX-A: 1\r\nSERVER: t\r\n\r\nhello";
        let (mut resp, body) = exchange(conn, &mut server, get("/path?q"), answer).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-a"], "1");
        assert_eq!(resp.headers()[SERVER], "t");
        assert_eq!(resp.headers()[CONTENT_LENGTH], "5, 5");
        assert_eq!(&body.to_bytes()[..], b"hello");
        assert_eq!(
            written(&mut server).await,
            "GET /path?q HTTP/1.1\r\nhost: example\r\n\r\n"
        );
        let conn = resp.body_mut().take_reusable().expect("kept");
        // The next exchange on it.
        let answer = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        let (mut resp, body) = exchange(conn, &mut server, get("/next"), answer).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert!(body.to_bytes().is_empty());
        assert!(resp.body_mut().take_reusable().is_some());
    }

    #[tokio::test]
    async fn a_request_whose_response_is_written_raw_gets_its_fields_as_they_came() {
        let answer = b"HTTP/1.1 200 OK\r\nSERVER: t\r\nContent-Length: 5\r\n\
                       Connection: close\r\nX-A: 1\r\n\r\nhello";
        let req = from_our_server("/", None);
        let (conn, mut server) = connection();
        let (mut resp, body) = exchange(conn, &mut server, req, answer).await;
        assert!(resp.headers().is_empty(), "{:?}", resp.headers());
        let raw = resp.body().kept().expect("kept fields");
        assert_eq!(raw.lines(), b"SERVER: t\r\nX-A: 1\r\n");
        assert_eq!(raw.length(), Some(5));
        assert_eq!(&body.to_bytes()[..], b"hello");
        // The framing and the close were read all the same.
        assert!(resp.body_mut().take_reusable().is_none());
        // Without the mark, or with a field a proxy rewrites, the fields come as a map.
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n\
                        2\r\nhi\r\n0\r\n\r\n";
        for (marked, answer) in [(false, &answer[..]), (true, &chunked[..])] {
            let (conn, mut server) = connection();
            fn kept<B>(resp: Response<ResponseBody<B>>) -> Response<bool> {
                resp.map(|body| body.kept().is_some())
            }
            let resp = if marked {
                let req = from_our_server("/", None);
                kept(exchange(conn, &mut server, req, answer).await.0)
            } else {
                kept(exchange(conn, &mut server, get("/"), answer).await.0)
            };
            assert!(!resp.body());
            assert_eq!(resp.headers()["x-a"], "1");
        }
    }

    #[tokio::test]
    async fn a_requests_fields_kept_as_they_came_are_written_after_its_map() {
        let req = from_our_server("/", Some("User-Agent: t\r\nx-app: 1\r\n"));
        let (conn, mut server) = connection();
        let answer = b"HTTP/1.1 204 No Content\r\n\r\n";
        let _ = exchange(conn, &mut server, req, answer).await;
        assert_eq!(
            written(&mut server).await,
            "GET / HTTP/1.1\r\nhost: example\r\nUser-Agent: t\r\nx-app: 1\r\n\r\n"
        );
    }

    #[test]
    fn common_names_are_matched_in_any_case_and_nothing_else_is() {
        for name in [
            DATE,
            ETAG,
            VARY,
            SERVER,
            EXPIRES,
            LOCATION,
            CONNECTION,
            SET_COOKIE,
            CONTENT_TYPE,
            CACHE_CONTROL,
            LAST_MODIFIED,
            ACCEPT_RANGES,
            CONTENT_LENGTH,
            CONTENT_ENCODING,
            TRANSFER_ENCODING,
        ] {
            let lower = name.as_str();
            let upper = lower.to_ascii_uppercase();
            assert_eq!(common_name(lower.as_bytes()), Some(name.clone()), "{lower}");
            assert_eq!(common_name(upper.as_bytes()), Some(name.clone()), "{upper}");
        }
        for other in [
            "content-lengti",
            "content_length",
            "x-request-id",
            "dat",
            "DATES",
        ] {
            assert_eq!(common_name(other.as_bytes()), None, "{other}");
            let parsed = header_name(other.as_bytes()).expect("a token");
            assert_eq!(parsed.as_str(), other.to_ascii_lowercase());
        }
    }

    #[tokio::test]
    async fn a_large_body_is_read_whole_in_reads_that_grow() {
        let (conn, mut server) = connection();
        let size = 1024 * 1024;
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
        let upstream = tokio::spawn(async move {
            server.write_all(head.as_bytes()).await.expect("head");
            server.write_all(&body).await.expect("body");
            (server, body)
        });
        let resp = responded(conn, get("/"), false).await;
        let mut got = resp.into_body();
        let all = (&mut got).collect().await.expect("body").to_bytes();
        let (_server, sent) = upstream.await.expect("upstream");
        assert!(all[..] == sent[..], "the body arrived changed");
        let conn = got.take_reusable().expect("kept");
        assert_eq!(conn.read_size, MAX_READ_SIZE);
    }

    #[tokio::test]
    async fn a_chunked_response_is_decoded_with_its_trailers() {
        let (conn, mut server) = connection();
        let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
            5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\n\r\n";
        let (mut resp, body) = exchange(conn, &mut server, get("/"), answer).await;
        assert_eq!(body.trailers().expect("trailers")["x-checksum"], "abc");
        assert_eq!(&body.to_bytes()[..], b"hello world");
        let conn = resp.body_mut().take_reusable().expect("kept");
        // Without trailers, split across reads.
        server
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nab")
            .await
            .expect("write");
        let resp = responded(conn, get("/"), true).await;
        let mut body = resp.into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "ab");
        server.write_all(b"c\r\n0\r\n\r\n").await.expect("write");
        let rest = (&mut body).collect().await.expect("rest");
        assert!(rest.trailers().is_none());
        assert_eq!(&rest.to_bytes()[..], b"c");
        assert!(body.take_reusable().is_some());
    }

    #[tokio::test]
    async fn a_response_without_a_length_is_read_to_the_close_and_its_connection_not_kept() {
        let (conn, mut server) = connection();
        server
            .write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
            .await
            .expect("write");
        let resp = responded(conn, get("/"), false).await;
        drop(server);
        let mut body = resp.into_body();
        let all = (&mut body).collect().await.expect("body");
        assert_eq!(&all.to_bytes()[..], b"until the end");
        assert!(body.take_reusable().is_none());
    }

    #[tokio::test]
    async fn no_body_is_read_after_head_or_in_204_and_304() {
        for (method, answer) in [
            (
                Method::HEAD,
                &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"[..],
            ),
            (Method::GET, b"HTTP/1.1 204 No Content\r\n\r\n"),
            (
                Method::GET,
                b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
            ),
        ] {
            let (conn, mut server) = connection();
            let mut req = get("/");
            *req.method_mut() = method.clone();
            let (mut resp, body) = exchange(conn, &mut server, req, answer).await;
            assert!(body.to_bytes().is_empty(), "{method} {:?}", resp.status());
            assert!(resp.body().is_end_stream());
            assert!(
                resp.body_mut().take_reusable().is_some(),
                "{method} {:?}",
                resp.status()
            );
        }
    }

    #[tokio::test]
    async fn interim_responses_are_skipped() {
        let (conn, mut server) = connection();
        let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
            HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok";
        let (resp, body) = exchange(conn, &mut server, get("/"), answer).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert!(!resp.headers().contains_key("link"));
        assert_eq!(&body.to_bytes()[..], b"ok");
    }

    #[tokio::test]
    async fn a_connection_is_kept_only_when_both_sides_allow_it() {
        let cases: [(&str, &[u8], bool); 5] = [
            ("", b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", true),
            (
                "",
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                false,
            ),
            ("", b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false),
            (
                "",
                b"HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n",
                true,
            ),
            (
                "close",
                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                false,
            ),
        ];
        for (request_connection, answer, kept) in cases {
            let (conn, mut server) = connection();
            let mut req = get("/");
            if !request_connection.is_empty() {
                req.headers_mut().insert(
                    CONNECTION,
                    HeaderValue::from_str(request_connection).expect("value"),
                );
            }
            let (mut resp, _) = exchange(conn, &mut server, req, answer).await;
            let answer = String::from_utf8_lossy(answer);
            assert_eq!(resp.body_mut().take_reusable().is_some(), kept, "{answer}");
        }
        // Bytes after the response's end: not the answer to anything, so not kept either.
        let (conn, mut server) = connection();
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n";
        let (mut resp, _) = exchange(conn, &mut server, get("/"), answer).await;
        assert!(resp.body_mut().take_reusable().is_none());
    }

    #[tokio::test]
    async fn a_request_body_goes_by_its_length_when_known_and_chunked_otherwise() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let (conn, mut server) = connection();
        let req = Request::post("/up")
            .header("host", "h")
            .body(Full::new(Bytes::from_static(b"data")))
            .expect("request");
        exchange(conn, &mut server, req, ok).await;
        assert_eq!(
            written(&mut server).await,
            "POST /up HTTP/1.1\r\nhost: h\r\ncontent-length: 4\r\n\r\ndata"
        );

        let (conn, mut server) = connection();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-t", HeaderValue::from_static("1"));
        let frames = stream::iter([
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"hello "))),
            Ok(Frame::data(Bytes::from_static(b"world"))),
            Ok(Frame::trailers(trailers)),
        ]);
        let req = Request::post("/up")
            .header("host", "h")
            .body(StreamBody::new(frames))
            .expect("request");
        exchange(conn, &mut server, req, ok).await;
        assert_eq!(
            written(&mut server).await,
            "POST /up HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n\
             6\r\nhello \r\n5\r\nworld\r\n0\r\nx-t: 1\r\n\r\n"
        );

        // Transfer-encoding wins over content-length, which is not sent beside it.
        let (conn, mut server) = connection();
        let frames = stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"abc")))]);
        let req = Request::post("/up")
            .header("host", "h")
            .header("content-length", "3")
            .header("transfer-encoding", "chunked")
            .body(StreamBody::new(frames))
            .expect("request");
        exchange(conn, &mut server, req, ok).await;
        assert_eq!(
            written(&mut server).await,
            "POST /up HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n\
             3\r\nabc\r\n0\r\n\r\n"
        );

        // An empty POST says so.
        let (conn, mut server) = connection();
        let req = Request::post("/")
            .header("host", "h")
            .body(Empty::<Bytes>::new());
        exchange(conn, &mut server, req.expect("request"), ok).await;
        assert!(written(&mut server).await.contains("content-length: 0\r\n"));
    }

    #[tokio::test]
    async fn a_body_longer_than_its_content_length_is_refused() {
        let (conn, _server) = connection();
        let req = Request::post("/")
            .header("host", "h")
            .header("content-length", "2")
            .body(Full::new(Bytes::from_static(b"three")))
            .expect("request");
        let e = send(conn, req, false).await.expect_err("refused").error;
        assert!(
            e.to_string().contains("longer than its content-length"),
            "{e}"
        );
    }

    /// Both directions at once: the upstream answers before the request's body has all come,
    /// and the rest of it is written as the response's body is read.
    #[tokio::test]
    async fn the_request_body_keeps_going_after_the_response_came() {
        let (conn, mut server) = connection();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let frames = stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
                .map(|d| d.map(|d| Ok::<_, Infallible>(Frame::data(d))))
        });
        let req = Request::post("/talk")
            .header("host", "h")
            .body(StreamBody::new(frames))
            .expect("request");
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
            .await
            .expect("write");
        let resp = responded(conn, req, false).await;
        assert_eq!(
            written(&mut server).await,
            "POST /talk HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let mut body = resp.into_body();
        tx.send(Bytes::from_static(b"up")).expect("send");
        server.write_all(b"down").await.expect("write");
        let frame = body.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().expect("data"), "down");
        assert_eq!(written(&mut server).await, "2\r\nup\r\n");
        assert!(body.is_end_stream());
        // The request's body never ended: the connection is not kept.
        assert!(body.take_reusable().is_none());
    }

    #[tokio::test]
    async fn a_bad_response_is_an_error_that_names_the_problem() {
        let cases: [(&[u8], &str); 5] = [
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: ten\r\n\r\n",
                "content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                "content-length",
            ),
            (b"hello\r\n\r\n", "invalid response head"),
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
            (
                b"HTTP/1.1 200",
                "closed the connection in the middle of the response head",
            ),
        ];
        for (answer, says) in cases {
            let (conn, mut server) = connection();
            server.write_all(answer).await.expect("write");
            drop(server);
            let e = send(conn, get("/"), false)
                .await
                .expect_err("refused")
                .error;
            assert!(
                e.to_string().contains(says),
                "{e} for {:?}",
                String::from_utf8_lossy(answer)
            );
        }
        let (conn, mut server) = connection();
        let long = format!("HTTP/1.1 200 OK\r\nx: {}\r\n", "a".repeat(MAX_HEAD));
        server.write_all(long.as_bytes()).await.expect("write");
        let e = send(conn, get("/"), false)
            .await
            .expect_err("refused")
            .error;
        assert!(matches!(e, Error::HeadTooLong), "{e}");
        // Errors in the body come as the body's.
        for (answer, says) in [
            (
                &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"[..],
                "chunk-size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
                "before the response's body ended",
            ),
        ] {
            let (conn, mut server) = connection();
            server.write_all(answer).await.expect("write");
            drop(server);
            let resp = responded(conn, get("/"), false).await;
            let e = resp.into_body().collect().await.expect_err("body refused");
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    /// RFC 9112 §9.3.1: a request may go again on another connection when the one it was sent
    /// on had served a request before, closed without a byte of answer, and the request is
    /// idempotent without a body.
    #[tokio::test]
    async fn only_an_idempotent_request_without_body_on_a_reused_connection_is_handed_back() {
        let post = || {
            Request::post("/")
                .header("host", "h")
                .body(Empty::<Bytes>::new())
                .expect("request")
        };
        for (req, reused, handed_back) in [
            (get("/"), true, true),
            (get("/"), false, false),
            (post(), true, false),
        ] {
            let method = req.method().clone();
            let (conn, server) = connection();
            drop(server);
            let e = send(conn, req, reused).await.expect_err("closed");
            assert!(
                matches!(e.error, Error::Closed(_) | Error::Write(_)),
                "{}",
                e.error
            );
            assert_eq!(e.unsent.is_some(), handed_back, "{method} reused: {reused}");
        }
    }

    #[tokio::test]
    async fn an_idle_connection_is_open_until_the_upstream_closes_it_or_speaks_unasked() {
        let (mut conn, mut server) = connection();
        assert!(conn.is_open());
        assert!(conn.is_open(), "looking does not change it");
        server.write_all(b"HTTP/1.1 408").await.expect("write");
        assert!(!conn.is_open());
        let (mut conn, server) = connection();
        drop(server);
        assert!(!conn.is_open());
    }
}
