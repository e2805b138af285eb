//! A stream's requests, decoded from the HTTP/2 body one gRPC message at a time.
//!
//! Why not tonic's `Streaming`: its decode buffer grows to the largest request the stream has
//! seen and keeps that allocation for as long as the stream lives. ACKs repeat every subscribed
//! name (tens of kilobytes with 1000 Services), so each of a thousand idle streams held about
//! 60 KB. Here a buffer that grew past [`KEEP`] is let go once it holds no partial message.

use std::marker::PhantomData;

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use mesh_proto::prost::Message;
use tonic::Status;
use tonic::body::Body;

use super::response::HEADER_LEN;

/// The largest request a proxy may send (tonic's default): a subscription to every resource of
/// a large mesh is well under it.
pub(crate) const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// A buffer up to this size is kept between requests; a larger one is freed.
const KEEP: usize = 8 * 1024;

pub(crate) struct Requests<T> {
    body: Body,
    buf: BytesMut,
    message: PhantomData<fn() -> T>,
}

impl<T: Message + Default> Requests<T> {
    pub(crate) fn new(body: Body) -> Requests<T> {
        Requests {
            body,
            buf: BytesMut::new(),
            message: PhantomData,
        }
    }

    /// The next request; `None` when the proxy has closed its side of the stream.
    pub(crate) async fn message(&mut self) -> Result<Option<T>, Status> {
        loop {
            if let Some(message) = self.buffered()? {
                return Ok(Some(message));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.buf.extend_from_slice(data);
                    }
                }
                Some(Err(status)) => return Err(status),
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    return Err(Status::invalid_argument(format!(
                        "the request stream ended inside a message ({} bytes of it)",
                        self.buf.len()
                    )));
                }
            }
        }
    }

    /// A whole message at the front of the buffer, decoded and taken off it.
    fn buffered(&mut self) -> Result<Option<T>, Status> {
        let Some(header) = self.buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        if header[0] != 0 {
            return Err(Status::unimplemented(
                "a compressed request: meshd accepts uncompressed requests only",
            ));
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > MAX_REQUEST_BYTES {
            return Err(Status::out_of_range(format!(
                "a request of {len} bytes is over meshd's limit of {MAX_REQUEST_BYTES}"
            )));
        }
        let Some(body) = self.buf.get(HEADER_LEN..HEADER_LEN + len) else {
            self.buf.reserve(HEADER_LEN + len - self.buf.len());
            return Ok(None);
        };
        let message = T::decode(body).map_err(|e| {
            Status::invalid_argument(format!("a request that is not a valid message: {e}"))
        })?;
        self.buf.advance(HEADER_LEN + len);
        if self.buf.is_empty() && self.buf.capacity() > KEEP {
            self.buf = BytesMut::new();
        }
        Ok(Some(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use mesh_proto::DiscoveryRequest;
    use tokio_stream::iter;

    fn framed(message: &DiscoveryRequest) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut frame = vec![0];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    fn body_of(chunks: Vec<Vec<u8>>) -> Body {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, Status>(http_body::Frame::data(Bytes::from(c))));
        Body::new(StreamBody::new(iter(frames)))
    }

    fn request(names: usize) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: "t".into(),
            resource_names: (0..names).map(|i| format!("resource-{i}")).collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn messages_split_across_chunks_and_sharing_one_are_decoded() {
        let (big, small) = (request(3000), request(1));
        let mut bytes = framed(&big);
        bytes.extend(framed(&small));
        bytes.extend(framed(&small));
        // Chunks that cut headers and messages anywhere.
        let chunks: Vec<Vec<u8>> = bytes.chunks(7001).map(<[u8]>::to_vec).collect();
        let mut requests = Requests::<DiscoveryRequest>::new(body_of(chunks));
        assert_eq!(requests.message().await.expect("decodes"), Some(big));
        assert_eq!(
            requests.message().await.expect("decodes"),
            Some(small.clone())
        );
        assert_eq!(requests.message().await.expect("decodes"), Some(small));
        assert!(
            requests.buf.capacity() <= KEEP,
            "the large buffer is not kept once empty: {}",
            requests.buf.capacity()
        );
        assert_eq!(requests.message().await.expect("ends"), None);
    }

    #[tokio::test]
    async fn a_cut_off_compressed_or_oversized_request_is_an_error_that_says_so() {
        let mut cut = framed(&request(10));
        cut.truncate(cut.len() - 3);
        let status = Requests::<DiscoveryRequest>::new(body_of(vec![cut]))
            .message()
            .await
            .expect_err("cut off");
        assert!(
            status.message().contains("ended inside a message"),
            "{status:?}"
        );

        let mut compressed = framed(&request(1));
        compressed[0] = 1;
        let status = Requests::<DiscoveryRequest>::new(body_of(vec![compressed]))
            .message()
            .await
            .expect_err("compressed");
        assert_eq!(status.code(), tonic::Code::Unimplemented);

        let mut huge = vec![0];
        huge.extend_from_slice(&(MAX_REQUEST_BYTES as u32 + 1).to_be_bytes());
        let status = Requests::<DiscoveryRequest>::new(body_of(vec![huge]))
            .message()
            .await
            .expect_err("oversized");
        assert_eq!(status.code(), tonic::Code::OutOfRange);
    }
}
