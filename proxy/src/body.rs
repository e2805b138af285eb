//! The bodies the proxy receives, whichever protocol brought them: hyper's (HTTP/1.1, and
//! HTTP/2 from the apps) or an `h2` stream's (HTTP/2 between sidecars, see
//! [`crate::http2_server`] and [`crate::http2_client`]), or one read whole with its head by
//! [`crate::http1_server`]. Requests go upstream and responses
//! go back with one of these, so that each pool and each connection handles one body type.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::http2_body::RecvBody;
use crate::raw_head::RawFields;

/// Why a body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Http1(#[from] hyper::Error),
    #[error(transparent)]
    Http2(#[from] h2::Error),
    /// From an upstream's HTTP/1.1 connection ([`crate::http1_client`]).
    #[error(transparent)]
    Upstream(#[from] crate::http1_client::Error),
}

/// A body received from a client, a peer or an upstream.
#[derive(Debug)]
pub enum StreamBody {
    /// Read by hyper.
    Hyper(Incoming),
    /// Read off an `h2` stream.
    H2(RecvBody),
    /// Read whole with its head by our HTTP/1.1 server ([`crate::http1_server`]).
    Whole(Whole),
}

/// A request body read whole by our HTTP/1.1 server, with the fields of its head that were
/// kept as they came ([`crate::raw_head`]): `bytes[..kept]` are those field lines, and
/// `bytes[body..]` the body not yet taken.
///
/// The fields are carried here rather than in the request's extensions, whose first insert
/// allocated a table and a box that its drop freed (about 600 instructions a request), and in
/// one buffer with the body, which keeps this body within a word of hyper's: every move of a
/// request copies it.
#[derive(Debug)]
pub struct Whole {
    bytes: Bytes,
    /// Below `MAX_HEAD` and `body` below that plus `MAX_WHOLE_BODY` (http1_server's limits).
    kept: u32,
    body: u32,
}

impl Whole {
    /// `bytes` holding the kept field lines in its first `kept` bytes and the body from `body`
    /// on (both within `bytes`, and `kept` at most `body`).
    pub fn new(bytes: Bytes, kept: usize, body: usize) -> Whole {
        debug_assert!(kept <= body && body <= bytes.len());
        Whole {
            bytes,
            kept: kept as u32,
            body: body as u32,
        }
    }

    /// The kept field lines and the body from two buffers: joined (a copy of both), which
    /// only a request whose kept fields are not the last of its head and that has a body needs.
    pub fn joined(kept: &[u8], body: &[u8]) -> Whole {
        let mut bytes = BytesMut::with_capacity(kept.len() + body.len());
        bytes.extend_from_slice(kept);
        bytes.extend_from_slice(body);
        Whole::new(bytes.freeze(), kept.len(), kept.len())
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.body as usize
    }

    fn take_body(&mut self) -> Option<Bytes> {
        if self.remaining() == 0 {
            return None;
        }
        let body = self.bytes.slice(self.body as usize..);
        self.body = self.bytes.len() as u32;
        Some(body)
    }
}

impl From<Incoming> for StreamBody {
    fn from(body: Incoming) -> StreamBody {
        StreamBody::Hyper(body)
    }
}

impl From<RecvBody> for StreamBody {
    fn from(body: RecvBody) -> StreamBody {
        StreamBody::H2(body)
    }
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            StreamBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(BodyError::Http1),
            StreamBody::H2(body) => Pin::new(body).poll_frame(cx).map_err(BodyError::Http2),
            StreamBody::Whole(whole) => Poll::Ready(whole.take_body().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            StreamBody::Hyper(body) => body.is_end_stream(),
            StreamBody::H2(body) => body.is_end_stream(),
            StreamBody::Whole(whole) => whole.remaining() == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            StreamBody::Hyper(body) => body.size_hint(),
            StreamBody::H2(body) => body.size_hint(),
            StreamBody::Whole(whole) => SizeHint::with_exact(whole.remaining() as u64),
        }
    }
}

impl crate::raw_head::RequestFields for StreamBody {
    fn read_by_our_server(&self) -> bool {
        matches!(self, StreamBody::Whole(_))
    }

    fn kept(&self) -> Option<&[u8]> {
        match self {
            StreamBody::Whole(whole) if whole.kept > 0 => Some(&whole.bytes[..whole.kept as usize]),
            _ => None,
        }
    }

    fn take_kept(&mut self) -> Option<Bytes> {
        match self {
            StreamBody::Whole(whole) if whole.kept > 0 => {
                let kept = whole.bytes.slice(..whole.kept as usize);
                whole.kept = 0;
                Some(kept)
            }
            _ => None,
        }
    }
}

/// A response body as the sidecar answers with it (from upstream, or made here), with the
/// response's header fields when our HTTP/1.1 client kept them as they came ([`RawFields`], in
/// place of its map): for our HTTP/1.1 server to write, and for anything else that writes or
/// reads the response to put back into the map first ([`crate::raw_head::restore_into`]).
///
/// One box holds the body and the fields: in the response's extensions the fields cost a table
/// and a box more, allocated at the insert and freed at the drop (about 600 instructions a
/// response), and beside the box they made every move of a response longer.
pub struct ProxyBody(Box<dyn KeptBody + Send>);

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyBody")
            .field("kept", &self.kept())
            .finish()
    }
}

/// A body that says which header fields of its response were kept as they came.
trait KeptBody: Body<Data = Bytes, Error = BodyError> + Unpin {
    fn kept(&self) -> Option<&RawFields>;
    fn take_kept(&mut self) -> Option<RawFields>;
}

struct WithKept<B> {
    body: B,
    kept: Option<RawFields>,
}

impl<B> Body for WithKept<B>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> KeptBody for WithKept<B>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    fn kept(&self) -> Option<&RawFields> {
        self.kept.as_ref()
    }

    fn take_kept(&mut self) -> Option<RawFields> {
        self.kept.take()
    }
}

impl ProxyBody {
    pub fn new<B>(body: B) -> ProxyBody
    where
        B: Body<Data = Bytes, Error = BodyError> + Send + Unpin + 'static,
    {
        ProxyBody::with_kept(body, None)
    }

    /// `body`, for a response whose fields are `kept` (when `Some`) instead of in its map.
    pub fn with_kept<B>(body: B, kept: Option<RawFields>) -> ProxyBody
    where
        B: Body<Data = Bytes, Error = BodyError> + Send + Unpin + 'static,
    {
        ProxyBody(Box::new(WithKept { body, kept }))
    }

    pub fn kept(&self) -> Option<&RawFields> {
        self.0.kept()
    }
}

impl crate::raw_head::ResponseFields for ProxyBody {
    fn take_kept(&mut self) -> Option<RawFields> {
        self.0.take_kept()
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut *self.get_mut().0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests and responses move their bodies about by value (into hyper's HTTP/1.1
    /// connections among others): a larger body than hyper's own cost each request two
    /// out-of-line copies there (callgrind, `benches/instructions.sh`). A [`Whole`] body holds
    /// two offsets beside its buffer, one word more than hyper's; with its kept fields in a
    /// second buffer (72 bytes) each side's copies cost about 120 instructions a request more.
    #[test]
    fn a_body_of_any_kind_is_at_most_a_word_larger_than_hypers() {
        assert!(
            std::mem::size_of::<StreamBody>() <= std::mem::size_of::<Incoming>() + 8,
            "StreamBody is {} bytes, hyper's Incoming {}",
            std::mem::size_of::<StreamBody>(),
            std::mem::size_of::<Incoming>()
        );
    }
}
