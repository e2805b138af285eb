//! The bodies the proxy receives, whichever protocol brought them: hyper's (HTTP/1.1, and
//! HTTP/2 from the apps) or an `h2` stream's (HTTP/2 between sidecars, see
//! [`crate::http2_server`] and [`crate::http2_client`]), or one read whole with its head by
//! [`crate::http1_server`]. Requests go upstream and responses
//! go back with one of these, so that each pool and each connection handles one body type.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::http2_body::RecvBody;

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
    /// Read whole with its head ([`crate::http1_server`]): `None` once taken, or when empty.
    Whole(Option<Bytes>),
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
            StreamBody::Whole(body) => Poll::Ready(body.take().map(|data| Ok(Frame::data(data)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            StreamBody::Hyper(body) => body.is_end_stream(),
            StreamBody::H2(body) => body.is_end_stream(),
            StreamBody::Whole(body) => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            StreamBody::Hyper(body) => body.size_hint(),
            StreamBody::H2(body) => body.size_hint(),
            StreamBody::Whole(body) => {
                SizeHint::with_exact(body.as_ref().map_or(0, |data| data.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests and responses move their bodies about by value (into hyper's HTTP/1.1
    /// connections among others): a larger body than hyper's own cost each request two
    /// out-of-line copies there (callgrind, `benches/instructions.sh`).
    #[test]
    fn a_body_of_either_kind_is_no_larger_than_hypers() {
        assert!(
            std::mem::size_of::<StreamBody>() <= std::mem::size_of::<Incoming>(),
            "StreamBody is {} bytes, hyper's Incoming {}",
            std::mem::size_of::<StreamBody>(),
            std::mem::size_of::<Incoming>()
        );
    }
}
