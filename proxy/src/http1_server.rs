//! The server side of HTTP/1.1 on a client's connection (the app's, on the outbound side) or a
//! peer's (`mesh/h1`, on the inbound side), read and written in the connection's own future.
//!
//! hyper's server connection, used before, parses each request into buffers of its own, hands
//! its body over through a channel, and runs the service's future from a dispatcher that
//! keeps a state machine for reading and another for writing. Here one loop reads a request
//! head, answers it, writes the response head and body into the connection's one write buffer
//! (a small response goes out in one write), and reads the next.
//!
//! What it speaks itself (RFC 9112), which is what nearly every request is:
//! - requests in HTTP/1.1 or 1.0, one at a time, pipelined ones in order, with no body or a
//!   `content-length` body of at most [`MAX_WHOLE_BODY`] bytes, read whole with its head;
//! - responses framed by their `content-length`, by their body's exact size when known,
//!   chunked (to an HTTP/1.1 client, trailers included) or up to the close (to an HTTP/1.0 one);
//!   no body after `HEAD` or in a `1xx`, `204` or `304`;
//! - the connection is kept unless the request or the response says `close` (or is HTTP/1.0
//!   without `keep-alive`), the body is read to the close, the client has finished sending
//!   (half-close: it still gets its answer), or a drain has started;
//! - a head it cannot parse is answered `400` (`431` when too long) with the reason in
//!   `x-mesh-error` and the body, and the connection is closed;
//! - on a peer's `mesh/h1c` connection or `mesh/muxc` stream ([`Heads::Compact`]), the
//!   compact heads of [`crate::compact_head`] too: requests that come so are read, responses
//!   that fit go so.
//!
//! The rest (a chunked or larger request body, `Expect`, `Upgrade`, `CONNECT`) is rare and
//! needs a request body streamed while its response may already come, or the connection handed
//! over after a `101`: at the first such request the connection goes to hyper's server, with
//! what was read and not answered replayed ([`Rewind`]), for the rest of its life.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Incoming};
use hyper::header::{
    ACCEPT, ACCEPT_ENCODING, ACCEPT_LANGUAGE, AUTHORIZATION, CACHE_CONTROL, CONNECTION,
    CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST, ORIGIN, REFERER, TRANSFER_ENCODING, USER_AGENT,
};
use hyper::http::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::body::{StreamBody, Whole};
use crate::compact_head;
use crate::drain::Drain;
use crate::hop::HOP;
use crate::http::ProxyBody;
use crate::http1_client::{
    self, Connection, Encoder, FEW_FIELDS, FieldSpan, FramingFields, MAX_HEAD, MAX_HEADERS, Writer,
    field_spans, push_decimal,
};
use crate::io::Rewind;
use crate::raw_head::RawFields;

/// A request body of at most this many bytes (by its `content-length`) is read whole with its
/// head; a longer one hands the connection to hyper, which streams it.
pub const MAX_WHOLE_BODY: u64 = 64 * 1024;

/// Why a connection ended other than by a close between requests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the request: {0}")]
    Read(io::Error),
    #[error("the client closed the connection in the middle of a request")]
    Closed,
    #[error("writing the response: {0}")]
    Write(io::Error),
    #[error("the response's body: {0}")]
    ResponseBody(http1_client::Error),
    /// Answered `400` or `431` with this reason, and closed.
    #[error("refused the request: {0}")]
    Refused(String),
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

/// What heads a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heads {
    /// HTTP/1.1 text.
    Text,
    /// Also the compact form, where a request or a response fits it: with a peer sidecar whose
    /// handshake chose `mesh/h1c` or `mesh/muxc` (see [`crate::compact_head`]).
    Compact,
}

/// Serves HTTP/1.1 on `io`, whose first bytes (`read`) were read already, until the client
/// closes it, a request or response ends it, or `drain` starts. Each request is answered by
/// `answer`; `heads` says whether compact heads are read and written too.
pub async fn serve<I, A, F>(
    io: I,
    read: BytesMut,
    drain: Option<&Drain>,
    heads: Heads,
    answer: A,
) -> Result<(), Error>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    A: Fn(Request<StreamBody>) -> F,
    F: Future<Output = Response<ProxyBody>>,
{
    let mut conn = Connection::with_read(io, read);
    // Polled only while no request has begun (a drain closes idle connections at once, and
    // tells a busy one's client `connection: close` with its response).
    let drained = pin!(async move {
        match drain {
            Some(drain) => drain.started().await,
            None => std::future::pending().await,
        }
    });
    let mut idle = IdleWatch {
        started: drained,
        drain,
        registered: false,
    };
    loop {
        let parsed = match poll_fn(|cx| poll_next(&mut conn, &mut idle, heads, cx)).await {
            Next::Request(parsed) => parsed,
            Next::Closed => return Ok(()),
            Next::HandOff => return hand_off(conn, drain, &answer).await,
            Next::Refused(status, reason) => {
                refuse(&mut conn, status, &reason).await;
                return Err(Error::Refused(reason));
            }
            Next::Failed(e) => return Err(e),
        };
        let Parsed {
            request,
            keep_alive,
            head_request,
            version,
        } = parsed;
        let mut response = pin!(answer(request));
        let mut read_closed = false;
        let response = poll_fn(|cx| {
            if let Poll::Ready(response) = response.as_mut().poll(cx) {
                return Poll::Ready(Ok(response));
            }
            // Meanwhile: a client that resets the connection cancels its request; one that
            // closes its side (half-close) still gets the answer.
            read_ahead(&mut conn, &mut read_closed, cx).map(Err)
        })
        .await?;
        let keep_alive =
            keep_alive && !read_closed && !drain.is_some_and(|drain| drain.is_draining());
        let compact = match heads {
            Heads::Compact => encode_compact(&response, head_request, keep_alive, &mut conn.write),
            Heads::Text => None,
        };
        let (encoder, keep_alive) = match compact {
            Some(encoder) => (encoder, keep_alive),
            None => encode_head(
                &response,
                version,
                head_request,
                keep_alive,
                &mut conn.write,
            ),
        };
        let mut writer = Writer::new(response.into_body(), encoder);
        poll_fn(|cx| writer.poll_write(&mut conn, cx))
            .await
            .map_err(|e| match e {
                http1_client::Error::Write(e) => Error::Write(e),
                e => Error::ResponseBody(e),
            })?;
        if !keep_alive {
            let _ = conn.io.shutdown().await;
            return Ok(());
        }
    }
}

/// Reads what the client sends while its request is answered (kept for the next request, up
/// to a head's length); `Pending` unless the read fails.
fn read_ahead<I: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<I>,
    read_closed: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Error> {
    while !*read_closed && conn.read.len() < MAX_HEAD {
        match conn.poll_fill(cx) {
            Poll::Pending => break,
            Poll::Ready(Ok(0)) => *read_closed = true,
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Error::Read(e)),
        }
    }
    Poll::Pending
}

/// What the connection does next.
// Large (a request) beside small: boxed, every request would pay an allocation to save a
// move of a few hundred bytes.
#[allow(clippy::large_enum_variant)]
enum Next {
    Request(Parsed),
    /// Closed between requests, or a drain started while it was idle.
    Closed,
    /// A request this server does not speak itself: to hyper's.
    HandOff,
    Refused(StatusCode, String),
    Failed(Error),
}

/// Reads until the next request (its head, and its body when it goes whole) is in the buffer.
fn poll_next<I: AsyncRead + AsyncWrite + Unpin, F: Future<Output = ()>>(
    conn: &mut Connection<I>,
    idle: &mut IdleWatch<'_, F>,
    heads: Heads,
    cx: &mut Context<'_>,
) -> Poll<Next> {
    if conn.read.is_empty() && idle.drain_started(cx) {
        // Draining: an idle connection closes, but a request that has already arrived (on a
        // `mesh/mux` stream opened just before the peer read its GOAWAY, say) is served, with
        // `connection: close`.
        match conn.poll_fill(cx) {
            Poll::Ready(Ok(n)) if n > 0 => {}
            _ => return Poll::Ready(Next::Closed),
        }
    }
    loop {
        if let Some(&first) = conn.read.first() {
            let parsed = if heads == Heads::Compact && first == compact_head::MARKER {
                parse_compact(&mut conn.read)
            } else {
                parse_request(&mut conn.read)
            };
            match parsed {
                Ok(Parse::Request(parsed)) => return Poll::Ready(Next::Request(parsed)),
                Ok(Parse::HandOff) => return Poll::Ready(Next::HandOff),
                Ok(Parse::Partial) => {}
                Err((status, reason)) => return Poll::Ready(Next::Refused(status, reason)),
            }
        }
        match ready!(conn.poll_fill(cx)) {
            Ok(0) if conn.read.is_empty() => return Poll::Ready(Next::Closed),
            Ok(0) => return Poll::Ready(Next::Failed(Error::Closed)),
            Ok(_) => {}
            Err(e) => return Poll::Ready(Next::Failed(Error::Read(e))),
        }
    }
}

/// Whether a drain has started, asked each time the connection waits for a request.
///
/// The first ask polls the drain's signal, which keeps the task's waker to wake it when the
/// drain starts; later asks read the drain's flag only (polling the signal again took a lock
/// twice, about 190 instructions, at each request). The connection is polled by one task for
/// its whole life (its own, or its slot in a `mesh/mux` driver's set), so the waker kept is
/// the one to wake.
struct IdleWatch<'d, F> {
    started: Pin<&'d mut F>,
    drain: Option<&'d Drain>,
    registered: bool,
}

impl<F: Future<Output = ()>> IdleWatch<'_, F> {
    fn drain_started(&mut self, cx: &mut Context<'_>) -> bool {
        if self.registered {
            return self.drain.is_some_and(Drain::is_draining);
        }
        self.registered = true;
        self.started.as_mut().poll(cx).is_ready()
    }
}

/// A request read whole, and what its head says about the exchange.
struct Parsed {
    request: Request<StreamBody>,
    /// The client allows the connection to be kept after this exchange.
    keep_alive: bool,
    head_request: bool,
    version: Version,
}

#[allow(clippy::large_enum_variant)] // as `Next`
enum Parse {
    Request(Parsed),
    /// More bytes are needed: of the head, or of a body that goes whole.
    Partial,
    HandOff,
}

/// Why a request is refused: the status and the reason.
type Refusal = (StatusCode, String);

/// Parses the request at the start of `buf`. Its bytes leave the buffer only when the whole
/// request is there and this server answers it; the header values share them.
fn parse_request(buf: &mut BytesMut) -> Result<Parse, Refusal> {
    // Left uninitialised: httparse writes each field before it is read.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_request_with_uninit_headers(&mut parsed, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("the request head is longer than {MAX_HEAD} bytes"),
            ));
        }
        Ok(httparse::Status::Partial) => return Ok(Parse::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("the request has more than {MAX_HEADERS} header fields"),
            ));
        }
        Err(e) => {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("invalid HTTP/1.1 request head: {e}"),
            ));
        }
    };
    let method = parsed.method.unwrap_or_default();
    if method == "CONNECT" {
        return Ok(Parse::HandOff);
    }
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Where each field is in the head (so that the head can be split off the buffer and the
    // values made from it without a copy), and what the framing fields say.
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        // Below MAX_HEAD: the head is shorter than that.
        (start as u32, (start + s.len()) as u32)
    };
    let count = parsed.headers.len();
    let (mut few, mut many) = ([(0u32, 0u32, 0u32, 0u32); FEW_FIELDS], Vec::new());
    let spans = field_spans(&mut few, &mut many, count);
    let mut framing = FramingFields::default();
    let mut speaks_itself = true;
    for (slot, field) in spans.iter_mut().zip(parsed.headers.iter()) {
        let name = field.name.as_bytes();
        let (ns, ne) = span(name);
        let (vs, ve) = span(field.value);
        *slot = (ns, ne, vs, ve);
        if let Some(framing_name) = framing_name(name) {
            framing.see(&framing_name, field.value);
        }
        speaks_itself &=
            !(name.eq_ignore_ascii_case(b"upgrade") || name.eq_ignore_ascii_case(b"expect"));
    }
    if !speaks_itself || framing.chunked.is_some() {
        return Ok(Parse::HandOff);
    }
    let body_len = match framing.length {
        None => 0,
        Some(Some(n)) if n > MAX_WHOLE_BODY => return Ok(Parse::HandOff),
        Some(Some(n)) => n as usize,
        Some(None) => {
            return Err((
                StatusCode::BAD_REQUEST,
                "the request's content-length is not one number".to_string(),
            ));
        }
    };
    if buf.len() < len + body_len {
        return Ok(Parse::Partial);
    }
    let method = span(method.as_bytes());
    let target = span(parsed.path.unwrap_or_default().as_bytes());
    // Head and body in one buffer: the body's part of it goes with the kept fields (`Whole`).
    let message = buf.split_to(len + body_len).freeze();
    let head = message.slice(..len);
    let method = Method::from_bytes(&head[method.0 as usize..method.1 as usize])
        .map_err(|_| (StatusCode::BAD_REQUEST, "invalid method".to_string()))?;
    let target = head.slice(target.0 as usize..target.1 as usize);
    let uri = Uri::from_maybe_shared(target.clone()).map_err(|e| {
        let target = String::from_utf8_lossy(&target);
        (
            StatusCode::BAD_REQUEST,
            format!("invalid request target {target:?}: {e}"),
        )
    })?;
    // The fields the sidecar acts on go into the map; the rest stay as they came.
    let (mapped, kept) = RawFields::split_request(&head, spans);
    let headers = header_map(&head, &spans[..mapped])?;
    let head_request = method == Method::HEAD;
    let keep_alive = !framing.close && (version == Version::HTTP_11 || framing.keep_alive);
    // Its body says that it came from here: its response comes back here, and the response's
    // fields may stay as they arrived upstream.
    let mut request = Request::new(StreamBody::Whole(whole(&message, len, kept)));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Parse::Request(Parsed {
        request,
        keep_alive,
        head_request,
        version,
    }))
}

/// Reads the compact request ([`crate::compact_head`]) at the start of `buf`, once all of it
/// (head and body) is there. Its bytes leave the buffer; the values, the kept lines and the
/// body share them.
fn parse_compact(buf: &mut BytesMut) -> Result<Parse, Refusal> {
    let refused = |e: compact_head::Error| {
        let status = match e {
            compact_head::Error::TooLong(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            compact_head::Error::BodyTooLong(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, e.to_string())
    };
    let layout = match compact_head::request_layout(buf, MAX_HEAD, MAX_WHOLE_BODY) {
        Ok(Some(layout)) => layout,
        Ok(None) => return Ok(Parse::Partial),
        Err(e) => return Err(refused(e)),
    };
    let message = buf.split_to(layout.end).freeze();
    let part = |(start, end): (usize, usize)| &message[start..end];
    let method = Method::from_bytes(part(layout.method))
        .ok()
        .filter(|m| *m != Method::CONNECT)
        .ok_or_else(|| refused(compact_head::Error::Target))?;
    let target = message.slice(layout.target.0..layout.target.1);
    let uri = Uri::from_maybe_shared(target).map_err(|_| refused(compact_head::Error::Target))?;
    // The map's fields: where each is in the message. Anything the server leaves to hyper or
    // that frames the body has no place among them.
    let (mut few, mut many) = ([(0u32, 0u32, 0u32, 0u32); FEW_FIELDS], Vec::new());
    let mut count = 0;
    let base = message.as_ptr() as usize;
    let map_start = layout.map.0;
    compact_head::each_field(part(layout.map), |name, (vs, ve)| {
        if !crate::raw_head::goes_as_it_came(name) || name.eq_ignore_ascii_case(b"expect") {
            return Err(compact_head::Error::Field);
        }
        let ns = name.as_ptr() as usize - base;
        // Below MAX_HEAD: the head is no longer than that.
        let span = (
            ns as u32,
            (ns + name.len()) as u32,
            (map_start + vs) as u32,
            (map_start + ve) as u32,
        );
        match few.get_mut(count) {
            Some(slot) => *slot = span,
            None => {
                if many.is_empty() {
                    many.extend_from_slice(&few);
                }
                many.push(span);
            }
        }
        count += 1;
        Ok(())
    })
    .map_err(refused)?;
    // The kept fields: none the sidecar acts on (`x-forwarded-client-cert` among them would
    // reach the app unchecked).
    compact_head::each_field(part(layout.kept), |name, _| {
        if crate::raw_head::in_request_map(name) {
            Err(compact_head::Error::Field)
        } else {
            Ok(())
        }
    })
    .map_err(refused)?;
    let spans = if count <= FEW_FIELDS {
        &few[..count]
    } else {
        &many[..]
    };
    let headers = header_map(&message, spans)?;
    let head_request = method == Method::HEAD;
    let kept_len = layout.kept.1 - layout.kept.0;
    let whole = Whole::new(message.slice(layout.kept.0..), kept_len, kept_len);
    let mut request = Request::new(StreamBody::Whole(whole));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Ok(Parse::Request(Parsed {
        request,
        keep_alive: !layout.close,
        head_request,
        version: Version::HTTP_11,
    }))
}

/// The body of `message` (after its head of `head_len` bytes) with the head's `kept` field
/// lines, in one buffer: a slice of `message` from the kept lines on when they are the head's
/// last (they end where the empty line that ends the head starts, as they do when the map's
/// fields come first), else a copy of both, where the body is not empty.
fn whole(message: &Bytes, head_len: usize, kept: Option<Bytes>) -> Whole {
    let Some(kept) = kept else {
        return Whole::new(message.clone(), 0, head_len);
    };
    if message.len() == head_len {
        return Whole::new(kept.clone(), kept.len(), kept.len());
    }
    let base = message.as_ptr() as usize;
    let last = (kept.as_ptr() as usize)
        .checked_sub(base)
        .filter(|start| start + kept.len() + 2 == head_len);
    match last {
        Some(start) => Whole::new(message.slice(start..), kept.len(), head_len - start),
        None => Whole::joined(&kept, &message[head_len..]),
    }
}

/// Room in a request's map for the fields the sidecar adds to it (the hop field on the way to
/// a peer, `x-forwarded-client-cert` on the way in): a map made for only the fields it came
/// with grew (reallocated and rehashed) at the first insert.
const ADDED_FIELDS: usize = 2;

/// The header fields at `spans` (name and value, start and end) in `head`.
fn header_map(head: &Bytes, spans: &[FieldSpan]) -> Result<HeaderMap, Refusal> {
    let mut headers = HeaderMap::with_capacity(spans.len() + ADDED_FIELDS);
    for &(ns, ne, vs, ve) in spans {
        let name = &head[ns as usize..ne as usize];
        let name = match common_name(name) {
            Some(name) => name,
            None => HeaderName::from_bytes(name).map_err(|_| {
                let name = String::from_utf8_lossy(name);
                (
                    StatusCode::BAD_REQUEST,
                    format!("invalid header name {name:?}"),
                )
            })?,
        };
        let value =
            HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize)).map_err(|_| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("the value of {name} has a control character"),
                )
            })?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// The framing field `name` is (`content-length`, `transfer-encoding` or `connection`).
fn framing_name(name: &[u8]) -> Option<HeaderName> {
    match name.len() {
        14 if name.eq_ignore_ascii_case(b"content-length") => Some(CONTENT_LENGTH),
        17 if name.eq_ignore_ascii_case(b"transfer-encoding") => Some(TRANSFER_ENCODING),
        10 if name.eq_ignore_ascii_case(b"connection") => Some(CONNECTION),
        _ => None,
    }
}

/// A name many requests carry, matched on its bytes (`HeaderName::from_bytes` costs several
/// times as much; see [`http1_client`]'s own list for responses).
fn common_name(bytes: &[u8]) -> Option<HeaderName> {
    let candidates: &[(&[u8], HeaderName)] = match bytes.len() {
        4 => &[(b"host", HOST)],
        6 => &[
            (b"accept", ACCEPT),
            (b"cookie", COOKIE),
            (b"origin", ORIGIN),
        ],
        7 => &[(b"referer", REFERER)],
        10 => &[
            (b"user-agent", USER_AGENT),
            (b"x-mesh-hop", HOP),
            (b"connection", CONNECTION),
        ],
        12 => &[(b"content-type", CONTENT_TYPE)],
        13 => &[
            (b"authorization", AUTHORIZATION),
            (b"cache-control", CACHE_CONTROL),
        ],
        14 => &[(b"content-length", CONTENT_LENGTH)],
        15 => &[
            (b"accept-encoding", ACCEPT_ENCODING),
            (b"accept-language", ACCEPT_LANGUAGE),
        ],
        _ => return None,
    };
    // httparse has checked that the name is a token: no byte of one becomes a lower-case
    // letter or '-' by setting 0x20 unless it is that letter in either case (or '-').
    candidates
        .iter()
        .find(|(lower, _)| bytes.iter().zip(*lower).all(|(b, l)| b | 0x20 == *l))
        .map(|(_, name)| name.clone())
}

/// Writes the status line and header section of `response` into `out`, with the framing it
/// needs; returns how its body goes (`None`: no body) and whether the connection is kept.
fn encode_head(
    response: &Response<ProxyBody>,
    version: Version,
    head_request: bool,
    keep_alive: bool,
    out: &mut Vec<u8>,
) -> (Option<Encoder>, bool) {
    let status = response.status();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut framing = FramingFields::default();
    // The response's own framing fields, written back as they are when it has no body.
    let mut length = None;
    let mut coding = None;
    let raw = response.body().kept();
    if let Some(raw) = raw {
        // Kept as they came upstream, without framing or hop-by-hop fields.
        out.extend_from_slice(raw.lines());
        framing.length = raw.length().map(Some);
    }
    for (name, value) in response.headers() {
        if *name == CONTENT_LENGTH || *name == TRANSFER_ENCODING || *name == CONNECTION {
            framing.see(name, value.as_bytes());
            if *name == CONTENT_LENGTH {
                length.get_or_insert(value.as_bytes());
                continue;
            }
            if *name == TRANSFER_ENCODING {
                coding.get_or_insert(value);
                continue;
            }
        }
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let body = response.body();
    let http11 = version == Version::HTTP_11;
    let encoder = if bodiless {
        if let Some(n) = raw.and_then(RawFields::length) {
            write_length(out, n);
        } else if let Some(length) = length {
            write_field(out, b"content-length", length);
        }
        if let Some(coding) = coding.filter(|_| http11) {
            write_field(out, b"transfer-encoding", coding.as_bytes());
        }
        None
    } else if framing.chunked.is_none()
        && let Some(Some(n)) = framing.length
    {
        write_length(out, n);
        (n > 0).then_some(Encoder::Length(n))
    } else if framing.chunked.is_none() && body.is_end_stream() {
        write_field(out, b"content-length", b"0");
        None
    } else if let Some(n) = body
        .size_hint()
        .exact()
        .filter(|_| framing.chunked.is_none())
    {
        write_length(out, n);
        (n > 0).then_some(Encoder::Length(n))
    } else if http11 {
        write_field(out, b"transfer-encoding", b"chunked");
        Some(Encoder::Chunked)
    } else {
        Some(Encoder::ToClose)
    };
    let keep_alive = keep_alive && !framing.close && encoder != Some(Encoder::ToClose);
    if !keep_alive && !framing.close {
        write_field(out, b"connection", b"close");
    } else if keep_alive && !http11 {
        write_field(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    (encoder, keep_alive)
}

/// Writes the head of `response` in the compact form ([`crate::compact_head`]) when it fits:
/// its fields are all kept as they came (none in its map) and its body's length is known.
/// Returns how its body goes, or `None` when the head is left to [`encode_head`].
fn encode_compact(
    response: &Response<ProxyBody>,
    head_request: bool,
    keep_alive: bool,
    out: &mut Vec<u8>,
) -> Option<Option<Encoder>> {
    if head_request || !response.headers().is_empty() {
        return None;
    }
    let body = response.body();
    let fields = body.kept()?;
    let length = fields.length().or_else(|| body.size_hint().exact())?;
    compact_head::encode(response.status(), fields, length, keep_alive, out)
        .then_some((length > 0).then_some(Encoder::Length(length)))
}

fn write_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Answers a request that cannot be parsed with `status` and the reason, and closes.
async fn refuse<I: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<I>,
    status: StatusCode,
    reason: &str,
) {
    tracing::debug!(status = status.as_u16(), "refused a request: {reason}");
    let text = format!("mesh-proxy: {reason}");
    let body = format!("{text}\n");
    conn.write.clear();
    conn.write.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or_default(),
            body.len()
        )
        .as_bytes(),
    );
    if HeaderValue::from_str(&text).is_ok() {
        write_field(&mut conn.write, b"x-mesh-error", text.as_bytes());
    }
    conn.write.extend_from_slice(b"connection: close\r\n\r\n");
    conn.write.extend_from_slice(body.as_bytes());
    if poll_fn(|cx| conn.poll_flush(cx)).await.is_ok() {
        let _ = conn.io.shutdown().await;
    }
}

/// Serves the rest of the connection with hyper's server, from the request it could not
/// answer itself (still in the read buffer) on.
async fn hand_off<I, A, F>(
    conn: Connection<I>,
    drain: Option<&Drain>,
    answer: &A,
) -> Result<(), Error>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    A: Fn(Request<StreamBody>) -> F,
    F: Future<Output = Response<ProxyBody>>,
{
    tracing::debug!("the connection goes on in hyper's HTTP/1.1 server");
    let (read, io) = conn.into_parts();
    let service = hyper::service::service_fn(|req: Request<Incoming>| {
        let response = answer(req.map(StreamBody::Hyper));
        async move { Ok::<_, Infallible>(response.await) }
    });
    // half_close: a client may finish sending and still wait for the response.
    let served = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(TokioIo::new(Rewind::new(read, io)), service)
        .with_upgrades();
    let mut served = pin!(served);
    let Some(drain) = drain else {
        return Ok(served.await?);
    };
    tokio::select! {
        r = served.as_mut() => Ok(r?),
        () = drain.started() => {
            served.as_mut().graceful_shutdown();
            Ok(served.await?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody as FrameStream};
    use tokio::io::{AsyncReadExt, DuplexStream};

    use crate::body::BodyError;

    /// Answers each request with its method, target, `host` and body, in a body of known
    /// length; `/unknown` with a body of unknown length; `/empty` with none; `/no-content`
    /// with a 204.
    async fn echo(req: Request<StreamBody>) -> Response<ProxyBody> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let host = parts
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-");
        let text = format!(
            "{} {} {:?} {host} {}",
            parts.method,
            parts.uri,
            parts.version,
            String::from_utf8_lossy(&body)
        );
        let path = parts.uri.path();
        let mut response = match path {
            "/unknown" => {
                let frames = futures_util::stream::iter(vec![
                    Ok::<_, BodyError>(hyper::body::Frame::data(Bytes::from("part one, "))),
                    Ok(hyper::body::Frame::data(Bytes::from(text))),
                ]);
                Response::new(FrameStream::new(frames).boxed())
            }
            "/empty" => Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed()),
            _ => Response::new(Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed()),
        };
        if path == "/no-content" {
            *response.status_mut() = StatusCode::NO_CONTENT;
        }
        response.map(ProxyBody::new)
    }

    /// A server on one end of a pipe, serving with [`echo`]; the client's end.
    fn served(drain: Option<Drain>) -> (DuplexStream, tokio::task::JoinHandle<Result<(), Error>>) {
        let (client, server) = tokio::io::duplex(256 * 1024);
        let task = tokio::spawn(async move {
            serve(server, BytesMut::new(), drain.as_ref(), Heads::Text, echo).await
        });
        (client, task)
    }

    /// Reads one response (head and a body framed by `content-length` or chunked), as text.
    async fn response(client: &mut DuplexStream) -> String {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            assert_eq!(
                client.read(&mut byte).await.expect("the pipe"),
                1,
                "closed in the head: {got:?}"
            );
            got.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
        if let Some(length) = head.split("content-length: ").nth(1) {
            let n: usize = length
                .split("\r\n")
                .next()
                .and_then(|n| n.parse().ok())
                .expect("a content-length");
            let mut body = vec![0u8; n];
            client.read_exact(&mut body).await.expect("the pipe");
            got.extend_from_slice(&body);
        } else if head.contains("transfer-encoding: chunked") {
            while !got.ends_with(b"\r\n0\r\n\r\n") {
                assert_eq!(client.read(&mut byte).await.expect("the pipe"), 1);
                got.push(byte[0]);
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    async fn rest(client: &mut DuplexStream) -> String {
        let mut got = String::new();
        client.read_to_string(&mut got).await.expect("the pipe");
        got
    }

    #[tokio::test]
    async fn requests_are_answered_in_order_on_one_connection() {
        let (mut client, task) = served(None);
        // Two pipelined in one write, then a third with a body.
        client
            .write_all(
                b"GET /a HTTP/1.1\r\nHost: one\r\n\r\nGET /b?x=1 HTTP/1.1\r\nhost: two\r\n\r\n",
            )
            .await
            .expect("the pipe");
        let a = response(&mut client).await;
        assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
        assert!(a.ends_with("GET /a HTTP/1.1 one "), "{a}");
        assert!(!a.contains("connection"), "{a}");
        let b = response(&mut client).await;
        assert!(b.ends_with("GET /b?x=1 HTTP/1.1 two "), "{b}");
        // The body comes in a write of its own, after the head.
        client
            .write_all(b"POST /c HTTP/1.1\r\nHost: three\r\nContent-Length: 5\r\n\r\n")
            .await
            .expect("the pipe");
        client.write_all(b"hello").await.expect("the pipe");
        let c = response(&mut client).await;
        assert!(c.ends_with("POST /c HTTP/1.1 three hello"), "{c}");
        client.shutdown().await.expect("the pipe");
        assert_eq!(rest(&mut client).await, "");
        task.await.expect("the server's task").expect("served");
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_is_chunked_to_http11_and_read_to_the_close_in_http10() {
        let (mut client, _task) = served(None);
        client
            .write_all(b"GET /unknown HTTP/1.1\r\n\r\n")
            .await
            .expect("the pipe");
        let chunked = response(&mut client).await;
        assert!(
            chunked.contains("transfer-encoding: chunked\r\n"),
            "{chunked}"
        );
        assert!(chunked.contains("\r\na\r\npart one, \r\n"), "{chunked}");
        client
            .write_all(b"GET /unknown HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .expect("the pipe");
        let to_close = rest(&mut client).await;
        assert!(to_close.contains("connection: close\r\n"), "{to_close}");
        assert!(!to_close.contains("transfer-encoding"), "{to_close}");
        assert!(
            to_close.ends_with("\r\n\r\npart one, GET /unknown HTTP/1.0 - "),
            "{to_close}"
        );
    }

    #[tokio::test]
    async fn http10_keeps_the_connection_only_when_asked() {
        let (mut client, _task) = served(None);
        client
            .write_all(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .expect("the pipe");
        let kept = response(&mut client).await;
        assert!(kept.contains("connection: keep-alive\r\n"), "{kept}");
        client
            .write_all(b"GET /b HTTP/1.0\r\n\r\n")
            .await
            .expect("the pipe");
        let closed = rest(&mut client).await;
        assert!(closed.contains("connection: close\r\n"), "{closed}");
        assert!(closed.ends_with("GET /b HTTP/1.0 - "), "{closed}");
    }

    #[tokio::test]
    async fn connection_close_is_answered_and_the_connection_closed() {
        let (mut client, task) = served(None);
        client
            .write_all(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\n\r\n")
            .await
            .expect("the pipe");
        let got = rest(&mut client).await;
        assert!(got.contains("connection: close\r\n"), "{got}");
        assert!(!got.contains("never"), "{got}");
        task.await.expect("the server's task").expect("served");
    }

    #[tokio::test]
    async fn no_body_goes_after_head_or_in_204_and_an_empty_body_says_its_length() {
        let (mut client, _task) = served(None);
        client
            .write_all(b"HEAD /a HTTP/1.1\r\n\r\n")
            .await
            .expect("the pipe");
        client
            .write_all(b"GET /no-content HTTP/1.1\r\n\r\n")
            .await
            .expect("the pipe");
        client
            .write_all(b"GET /empty HTTP/1.1\r\nConnection: close\r\n\r\n")
            .await
            .expect("the pipe");
        let got = rest(&mut client).await;
        let responses: Vec<&str> = got.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(responses.len(), 3, "{got}");
        // HEAD: no body, and no length but the one the response says itself.
        assert!(responses[0].starts_with("200 OK\r\n\r\n"), "{got}");
        assert!(responses[1].starts_with("204 No Content\r\n\r\n"), "{got}");
        assert!(responses[2].contains("content-length: 0\r\n"), "{got}");
        assert!(responses[2].ends_with("\r\n\r\n"), "{got}");
    }

    #[test]
    fn fields_kept_as_they_came_are_written_as_they_are_with_the_length_they_had() {
        let raw = |body: &'static str, length| {
            let body = Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed();
            let kept = RawFields::for_test("Server: up\r\nX-A: 1\r\n", length);
            Response::new(ProxyBody::with_kept(body, Some(kept)))
        };
        let head = |response: &Response<ProxyBody>, head_request| {
            let mut out = Vec::new();
            let (encoder, keep) =
                encode_head(response, Version::HTTP_11, head_request, true, &mut out);
            (String::from_utf8(out).expect("text"), encoder, keep)
        };
        let (text, encoder, keep) = head(&raw("hello", Some(5)), false);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nServer: up\r\nX-A: 1\r\ncontent-length: 5\r\n\r\n"
        );
        assert_eq!((encoder, keep), (Some(Encoder::Length(5)), true));
        // After HEAD: no body, and the length the upstream said.
        let (text, encoder, _) = head(&raw("", Some(5)), true);
        assert!(
            text.ends_with("X-A: 1\r\ncontent-length: 5\r\n\r\n"),
            "{text}"
        );
        assert_eq!(encoder, None);
        // Without a length: the body's own size frames it.
        let (text, encoder, _) = head(&raw("abc", None), false);
        assert!(
            text.ends_with("X-A: 1\r\ncontent-length: 3\r\n\r\n"),
            "{text}"
        );
        assert_eq!(encoder, Some(Encoder::Length(3)));
    }

    /// To a peer that speaks compact heads (`mesh/h1c`): a response whose fields are all
    /// kept and whose length is known goes compact; one with fields in its map, and one to a
    /// HEAD request, go as text on the same connection; the connection goes on after each.
    #[tokio::test]
    async fn a_response_that_fits_goes_in_a_compact_head_and_others_as_text() {
        let answer = |req: Request<StreamBody>| async move {
            let kept = RawFields::for_test("content-type: text/plain\r\nx-a: 1\r\n", Some(5));
            let body = Full::new(Bytes::from_static(b"hello")).map_err(|e| match e {});
            let mut response = Response::new(ProxyBody::with_kept(body.boxed(), Some(kept)));
            if req.uri().path() == "/map" {
                response
                    .headers_mut()
                    .insert("x-b", HeaderValue::from_static("2"));
            }
            response
        };
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let _task = tokio::spawn(async move {
            serve(server, BytesMut::new(), None, Heads::Compact, answer).await
        });
        client
            .write_all(b"GET /kept HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .expect("the pipe");
        let mut got = BytesMut::new();
        let head = loop {
            if let Some(head) = compact_head::decode(&mut got, MAX_HEAD).expect("a compact head") {
                break head;
            }
            assert!(
                client.read_buf(&mut got).await.expect("the pipe") > 0,
                "closed"
            );
        };
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(
            head.fields.lines(),
            b"content-type: text/plain\r\nx-a: 1\r\n"
        );
        assert_eq!((head.length, head.keep_alive), (5, true));
        while got.len() < 5 {
            assert!(
                client.read_buf(&mut got).await.expect("the pipe") > 0,
                "closed"
            );
        }
        assert_eq!(&got[..], b"hello");

        client
            .write_all(b"GET /map HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .expect("the pipe");
        let text = response(&mut client).await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.contains("x-a: 1\r\n") && text.contains("x-b: 2\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nhello"), "{text}");

        client
            .write_all(b"HEAD /kept HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .expect("the pipe");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(client.read(&mut byte).await.expect("the pipe"), 1, "closed");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("content-length: 5\r\n"), "{head}");
    }

    /// From a peer that speaks compact heads: a compact request reads as its text would
    /// (method, target, the map's fields, the kept ones, the body), and the connection goes
    /// on to a text request; one that carries a field the sidecar acts on among its kept
    /// lines, or `expect` in its map, is refused.
    #[tokio::test]
    async fn a_compact_request_reads_as_its_text_would() {
        let answer = |req: Request<StreamBody>| async move {
            use crate::raw_head::RequestFields;
            let (parts, body) = req.into_parts();
            let kept = body.kept().map(|k| String::from_utf8_lossy(k).into_owned());
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = format!(
                "{} {} host={:?} hop={:?} kept={kept:?} body={:?}",
                parts.method,
                parts.uri,
                parts.headers.get(HOST),
                parts.headers.get(HOP),
                String::from_utf8_lossy(&body),
            );
            let body = Full::new(Bytes::from(text)).map_err(|e| match e {});
            Response::new(ProxyBody::new(body.boxed()))
        };
        let compact = |method: &[u8], map: &'static [u8], kept: &[u8], body: &[u8]| {
            let mut out = Vec::new();
            let map_lines = |out: &mut Vec<u8>| out.extend_from_slice(map);
            let len = body.len() as u64;
            assert!(compact_head::encode_request(
                &mut out, method, b"/p?q", false, len, map_lines, kept
            ));
            out.extend_from_slice(body);
            out
        };
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let _task = tokio::spawn(async move {
            serve(server, BytesMut::new(), None, Heads::Compact, answer).await
        });
        let request = compact(
            b"POST",
            b"host: web\r\nx-mesh-hop: 80 h1\r\n",
            b"accept: */*\r\n",
            b"hi",
        );
        client.write_all(&request).await.expect("the pipe");
        let got = response(&mut client).await;
        assert!(
            got.ends_with("POST /p?q host=Some(\"web\") hop=Some(\"80 h1\") kept=Some(\"accept: */*\\r\\n\") body=\"hi\""),
            "{got}"
        );
        client
            .write_all(b"GET /t HTTP/1.1\r\nhost: text\r\n\r\n")
            .await
            .expect("the pipe");
        let got = response(&mut client).await;
        assert!(
            got.ends_with("GET /t host=Some(\"text\") hop=None kept=None body=\"\""),
            "{got}"
        );

        for (map, kept) in [
            (
                &b"host: web\r\n"[..],
                &b"x-forwarded-client-cert: By=x\r\n"[..],
            ),
            (b"host: web\r\n", b"Host: other\r\n"),
            (b"host: web\r\n", b"x-mesh-hop: 81 h1\r\n"),
            (b"expect: 100-continue\r\n", b""),
            (b"transfer-encoding: chunked\r\n", b""),
            (b"host web\r\n", b""),
        ] {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let task = tokio::spawn(async move {
                serve(server, BytesMut::new(), None, Heads::Compact, answer).await
            });
            client
                .write_all(&compact(b"GET", map, kept, b""))
                .await
                .expect("the pipe");
            let got = rest(&mut client).await;
            assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
            assert!(got.contains("compact head"), "{got}");
            assert!(matches!(
                task.await.expect("the task"),
                Err(Error::Refused(_))
            ));
        }
    }

    #[tokio::test]
    async fn requests_it_answers_itself_say_their_responses_come_back_here() {
        let answer = |req: Request<StreamBody>| async move {
            let marked = crate::raw_head::RequestFields::read_by_our_server(req.body());
            let body = Full::new(Bytes::from(marked.to_string()));
            Response::new(ProxyBody::new(body.map_err(|e| match e {}).boxed()))
        };
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let _task =
            tokio::spawn(
                async move { serve(server, BytesMut::new(), None, Heads::Text, answer).await },
            );
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .expect("the pipe");
        assert!(response(&mut client).await.ends_with("\r\n\r\ntrue"));
    }

    #[tokio::test]
    async fn a_client_that_closes_its_side_still_gets_its_answer() {
        let (mut client, task) = served(None);
        client
            .write_all(b"GET /a HTTP/1.1\r\n\r\n")
            .await
            .expect("the pipe");
        client.shutdown().await.expect("the pipe");
        let got = rest(&mut client).await;
        assert!(got.ends_with("GET /a HTTP/1.1 - "), "{got}");
        task.await.expect("the server's task").expect("served");
    }

    #[tokio::test]
    async fn a_bad_head_is_refused_with_its_reason() {
        for (request, status, reason) in [
            (
                &b"GET /a HTTP/1.1\r\nbad header\r\n\r\n"[..],
                "400 Bad Request",
                "invalid HTTP/1.1 request head",
            ),
            (
                b"POST /a HTTP/1.1\r\ncontent-length: 1, 2\r\n\r\n",
                "400 Bad Request",
                "content-length is not one number",
            ),
            (
                b"GET /a HTTP/1.1\r\nx: \x01\r\n\r\n",
                "400 Bad Request",
                "invalid HTTP/1.1 request head",
            ),
        ] {
            let (mut client, task) = served(None);
            client.write_all(request).await.expect("the pipe");
            let got = rest(&mut client).await;
            assert!(got.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{got}");
            assert!(got.contains("x-mesh-error: mesh-proxy: "), "{got}");
            assert!(got.contains(reason), "{got}");
            assert!(matches!(
                task.await.expect("the server's task"),
                Err(Error::Refused(_))
            ));
        }
        let (mut client, _task) = served(None);
        let long = format!("GET /a HTTP/1.1\r\nx: {}\r\n", "y".repeat(MAX_HEAD));
        client.write_all(long.as_bytes()).await.expect("the pipe");
        let got = rest(&mut client).await;
        assert!(
            got.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{got}"
        );
    }

    #[tokio::test]
    async fn what_it_does_not_speak_goes_on_in_hypers_server() {
        let (mut client, task) = served(None);
        // First one it answers itself, then a chunked body, then one after that (hyper's).
        client
            .write_all(b"GET /a HTTP/1.1\r\n\r\n")
            .await
            .expect("the pipe");
        let first = response(&mut client).await;
        assert!(first.ends_with("GET /a HTTP/1.1 - "), "{first}");
        client
            .write_all(
                b"POST /b HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            )
            .await
            .expect("the pipe");
        let chunked = response(&mut client).await;
        assert!(chunked.ends_with("POST /b HTTP/1.1 - abc"), "{chunked}");
        // Expect: 100-continue is answered by hyper once the body is wanted.
        client
            .write_all(b"PUT /c HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n")
            .await
            .expect("the pipe");
        let mut interim = [0u8; 25];
        client.read_exact(&mut interim).await.expect("the pipe");
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        client.write_all(b"ok").await.expect("the pipe");
        let put = response(&mut client).await;
        assert!(put.ends_with("PUT /c HTTP/1.1 - ok"), "{put}");
        // A body longer than what goes whole.
        let big = "z".repeat(MAX_WHOLE_BODY as usize + 1);
        client
            .write_all(
                format!(
                    "POST /d HTTP/1.1\r\ncontent-length: {}\r\n\r\n{big}",
                    big.len()
                )
                .as_bytes(),
            )
            .await
            .expect("the pipe");
        let long = response(&mut client).await;
        assert!(
            long.ends_with(&format!("POST /d HTTP/1.1 - {big}")),
            "{}",
            long.len()
        );
        client.shutdown().await.expect("the pipe");
        assert_eq!(rest(&mut client).await, "");
        task.await.expect("the server's task").expect("served");
    }

    #[test]
    fn heads_with_few_fields_and_with_many_are_read_whole() {
        for count in [0, FEW_FIELDS, FEW_FIELDS + 1, MAX_HEADERS] {
            let mut head = String::from("GET /a HTTP/1.1\r\n");
            for i in 0..count {
                head.push_str(&format!("x-field-{i}: value {i}\r\n"));
            }
            head.push_str("\r\n");
            let mut buf = BytesMut::from(head.as_bytes());
            let Ok(Parse::Request(mut parsed)) = parse_request(&mut buf) else {
                panic!("{count} fields: not parsed");
            };
            // The fields the sidecar does not act on are kept as they came: the whole map back.
            crate::raw_head::restore_request(&mut parsed.request);
            let headers = parsed.request.headers();
            assert_eq!(headers.len(), count, "{count} fields");
            if count > 0 {
                let last = format!("x-field-{}", count - 1);
                assert_eq!(headers[last.as_str()], format!("value {}", count - 1));
            }
            assert!(buf.is_empty());
        }
    }

    /// The kept fields and the body share one buffer whether the kept fields end the head or
    /// not, and whether there is a body or not; the next request stays in the read buffer.
    #[tokio::test]
    async fn a_requests_kept_fields_and_body_come_whole_whatever_their_order() {
        use crate::raw_head::RequestFields;
        let heads = [
            (
                "POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nx-app: 1\r\n\r\nhello",
                "hello",
            ),
            (
                "POST /a HTTP/1.1\r\nx-app: 1\r\ncontent-length: 5\r\nhost: a\r\n\r\nhello",
                "hello",
            ),
            ("GET /a HTTP/1.1\r\nx-app: 1\r\nhost: a\r\n\r\n", ""),
            ("GET /a HTTP/1.1\r\nhost: a\r\nx-app: 1\r\n\r\n", ""),
        ];
        for (message, body) in heads {
            let mut buf = BytesMut::from(format!("{message}GET /next").as_bytes());
            let Ok(Parse::Request(parsed)) = parse_request(&mut buf) else {
                panic!("{message:?}: not parsed");
            };
            let request = parsed.request;
            assert_eq!(
                request.body().kept(),
                Some(&b"x-app: 1\r\n"[..]),
                "{message:?}"
            );
            assert_eq!(request.body().size_hint().exact(), Some(body.len() as u64));
            let read = request.into_body().collect().await.expect("the body");
            assert_eq!(read.to_bytes(), body.as_bytes(), "{message:?}");
            assert_eq!(&buf[..], b"GET /next");
        }
    }

    #[tokio::test]
    async fn a_drain_closes_an_idle_connection_and_tells_a_busy_one() {
        let drain = Drain::new();
        let (mut client, task) = served(Some(drain.clone()));
        client
            .write_all(b"GET /a HTTP/1.1\r\n\r\n")
            .await
            .expect("the pipe");
        let first = response(&mut client).await;
        assert!(!first.contains("connection: close"), "{first}");
        drain.start();
        // Idle when the drain started: closed without a word.
        assert_eq!(rest(&mut client).await, "");
        task.await.expect("the server's task").expect("served");

        // A drain that started before the first request: closed at once.
        let drain = Drain::new();
        drain.start();
        let (mut client, task) = served(Some(drain));
        assert_eq!(rest(&mut client).await, "");
        task.await.expect("the server's task").expect("served");

        // A request already read when the drain is seen is answered, with `connection: close`.
        let (mut client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move {
            let drain = Drain::new();
            drain.start();
            let read = BytesMut::from(&b"GET /b HTTP/1.1\r\n\r\n"[..]);
            serve(server, read, Some(&drain), Heads::Text, echo).await
        });
        let busy = rest(&mut client).await;
        assert!(busy.contains("connection: close\r\n"), "{busy}");
        assert!(busy.ends_with("GET /b HTTP/1.1 - "), "{busy}");
        task.await.expect("the server's task").expect("served");
    }
}
