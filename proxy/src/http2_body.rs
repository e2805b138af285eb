//! A body on an HTTP/2 stream (`h2` crate), in either direction: [`RecvBody`] reads one off a
//! stream and gives what it read back to the peer's flow-control window; [`SendBody`] writes one
//! onto a stream as the peer's window allows. The client ([`crate::http2_client`]) receives
//! responses and sends requests with them, the server ([`crate::http2_server`]) the other way
//! round.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{CONNECTION, CONTENT_LENGTH, HeaderMap, HeaderName, TE};

/// Whether a header names a connection's own state, which HTTP/2 forbids (RFC 9113 section
/// 8.2.2); `te` apart. Matched on the name's text (cheaper than a scan of an array of names).
fn is_connection_specific(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    )
}

/// Removes what HTTP/2 forbids: the connection-specific headers, those `Connection` names, and
/// any `TE` but `trailers`.
pub fn strip_connection_specific(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over their few headers costs less than a lookup for
    // each name (`h2` looks each one up again before it sends, and would refuse the message).
    let any = headers
        .iter()
        .any(|(name, value)| is_connection_specific(name) || (name == TE && value != "trailers"));
    if !any {
        return;
    }
    if headers.get(TE).is_some_and(|te| te != "trailers") {
        headers.remove(TE);
    }
    if let Some(named) = headers.get(CONNECTION)
        && let Ok(named) = named.to_str()
    {
        let named: Vec<HeaderName> = named
            .split(',')
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    let specific: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_connection_specific(n))
        .cloned()
        .collect();
    for name in specific {
        headers.remove(name);
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// A body read off an HTTP/2 stream (a response's, or a request's); what is read is given back
/// to the peer's window.
#[derive(Debug)]
pub struct RecvBody {
    recv: RecvStream,
    data: Data,
}

/// Where a body's data stands. (One field for what would be two: it keeps [`RecvBody`] at
/// 32 bytes, and the [`crate::body::StreamBody`] that holds it as small as hyper's body, which
/// the upstream connections move about by value.)
#[derive(Debug, Clone, Copy)]
enum Data {
    /// Still to come: this many bytes, as `content-length` said, less what was read.
    Left(u64),
    /// Still to come, of a length not given.
    Unknown,
    /// Read: trailers may follow.
    Done,
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let me = &mut *self;
        if !matches!(me.data, Data::Done) {
            match ready!(me.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = me.recv.flow_control().release_capacity(data.len());
                    if let Data::Left(left) = &mut me.data {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // RST_STREAM with NO_ERROR: the peer answered before reading all of the
                // request (RFC 9113 section 8.1); the body ends there.
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => me.data = Data::Done,
            }
        }
        match ready!(me.recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Err(e) if e.reason() == Some(Reason::NO_ERROR) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.recv.is_end_stream() {
            return SizeHint::with_exact(0);
        }
        match self.data {
            Data::Left(left) => SizeHint::with_exact(left),
            Data::Unknown => SizeHint::default(),
            Data::Done => SizeHint::with_exact(0),
        }
    }
}

impl RecvBody {
    /// The body on `recv`, of the length `headers`' `content-length` says (for the size hint).
    pub fn new(recv: RecvStream, headers: &HeaderMap) -> RecvBody {
        RecvBody {
            recv,
            data: content_length(headers).map_or(Data::Unknown, Data::Left),
        }
    }
}

/// Writes a body (a request's, or a response's) onto its HTTP/2 stream as the peer's flow
/// control allows; it ends when the body has been sent, the peer reset the stream, or the
/// body failed (then the stream is reset with CANCEL).
#[derive(Debug)]
pub struct SendBody<B> {
    body: B,
    stream: SendStream<Bytes>,
    /// A chunk read from the body that waits for send capacity, and whether it is the last.
    waiting: Option<(Bytes, bool)>,
}

impl<B> SendBody<B> {
    pub fn new(body: B, stream: SendStream<Bytes>) -> SendBody<B> {
        SendBody {
            body,
            stream,
            waiting: None,
        }
    }
}

impl<B> Future for SendBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match ready!(self.as_mut().pump(cx)) {
            Ok(()) => {}
            Err(e) => {
                tracing::debug!(error = %e, "body not sent in full");
                self.stream.send_reset(Reason::CANCEL);
            }
        }
        Poll::Ready(())
    }
}

impl<B> SendBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Sends what the body has until it ends, the peer resets the stream, or the body fails.
    fn pump(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Box<dyn std::error::Error + Send + Sync>>> {
        let me = self.get_mut();
        loop {
            // Woken as well when the peer resets the stream, whatever else is awaited.
            if let Poll::Ready(reason) = me.stream.poll_reset(cx) {
                let reason = reason?;
                return Poll::Ready(Err(format!("the peer reset the stream: {reason:?}").into()));
            }
            if let Some(&(_, last)) = me.waiting.as_ref() {
                while me.stream.capacity() == 0 {
                    match ready!(me.stream.poll_capacity(cx)) {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Poll::Ready(Err(e.into())),
                        None => return Poll::Ready(Err("the stream closed while sending".into())),
                    }
                }
                if let Some((data, _)) = me.waiting.take() {
                    me.stream.send_data(data, last)?;
                }
                if last {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // The next frame is read before any capacity is reserved, so that a body that
            // sends nothing for a while holds none of the connection's window.
            match ready!(Pin::new(&mut me.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let last = me.body.is_end_stream();
                        if data.is_empty() {
                            me.stream.send_data(data, last)?;
                            if last {
                                return Poll::Ready(Ok(()));
                            }
                        } else {
                            // A small claim: h2 raises it to what is buffered on send_data.
                            me.stream.reserve_capacity(1);
                            me.waiting = Some((data, last));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            me.stream.reserve_capacity(0);
                            me.stream.send_trailers(trailers)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Err(e.into())),
                None => {
                    me.stream.send_data(Bytes::new(), true)?;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::TRANSFER_ENCODING;

    #[test]
    fn connection_specific_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, "x-private, keep-alive".parse().expect("value"));
        headers.insert("x-private", "1".parse().expect("value"));
        headers.insert("keep-alive", "timeout=5".parse().expect("value"));
        headers.insert(TE, "gzip".parse().expect("value"));
        headers.insert("x-kept", "1".parse().expect("value"));
        strip_connection_specific(&mut headers);
        assert_eq!(
            headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["x-kept"]
        );
        let mut grpc = HeaderMap::new();
        grpc.insert(TE, "trailers".parse().expect("value"));
        strip_connection_specific(&mut grpc);
        assert_eq!(grpc[TE], "trailers");
    }

    #[test]
    fn each_connection_specific_header_alone_is_found_and_removed() {
        let alone = [
            (CONNECTION, "close"),
            (HeaderName::from_static("keep-alive"), "timeout=5"),
            (HeaderName::from_static("proxy-connection"), "keep-alive"),
            (TRANSFER_ENCODING, "chunked"),
            (hyper::header::UPGRADE, "websocket"),
            (TE, "gzip"),
        ];
        for (name, value) in alone {
            let mut headers = HeaderMap::new();
            headers.insert(name.clone(), value.parse().expect("value"));
            headers.insert("x-kept", "1".parse().expect("value"));
            strip_connection_specific(&mut headers);
            assert_eq!(
                headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
                ["x-kept"],
                "{name}: {value} is removed"
            );
        }
    }
}
