//! The ADS methods over gRPC: routes a request to [`sotw`](super::sotw) or
//! [`delta`](super::delta), hands it its [`requests`](super::requests), and sends the responses
//! the stream task framed ([`response`](super::response)).
//!
//! Why not tonic's generated server: its response encoder keeps one growing buffer per stream
//! and splits each message off it, so every stream holds on to an allocation as large as its
//! largest response for as long as it lives. A first sync of 1000 Services is about two
//! megabytes, and meshd serves a thousand streams: that was a gigabyte held by idle streams.
//! Here each response is a buffer of its own, freed once HTTP/2 has sent it.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready as ready_poll};

use bytes::Bytes;
use http_body::Frame;
use mesh_proto::{DeltaDiscoveryRequest, DiscoveryRequest};
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{self, HeaderMap, HeaderValue, header};
use tonic::metadata::GRPC_CONTENT_TYPE;
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};

use super::AdsService;
use super::requests::Requests;

/// The service's gRPC name, as in Envoy's protos.
const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// [`AdsService`] as a tonic-router service.
#[derive(Debug, Clone)]
pub struct AdsServer {
    ads: AdsService,
}

impl AdsServer {
    pub fn new(ads: AdsService) -> AdsServer {
        AdsServer { ads }
    }

    fn respond(&self, request: http::Request<Body>) -> http::Response<Body> {
        if let Some(encoding) = request.headers().get("grpc-encoding")
            && encoding != "identity"
        {
            return trailers_only(&Status::unimplemented(format!(
                "meshd does not accept compressed requests (grpc-encoding {encoding:?}): send them uncompressed"
            )));
        }
        let peer = remote_addr(&request);
        match request.uri().path() {
            SOTW_PATH => {
                let requests = Requests::<DiscoveryRequest>::new(request.into_body());
                streaming(|tx| self.ads.spawn_sotw(requests, tx, peer))
            }
            DELTA_PATH => {
                let requests = Requests::<DeltaDiscoveryRequest>::new(request.into_body());
                streaming(|tx| self.ads.spawn_delta(requests, tx, peer))
            }
            path => trailers_only(&Status::unimplemented(format!(
                "meshd does not serve {path}"
            ))),
        }
    }
}

impl NamedService for AdsServer {
    const NAME: &'static str = SERVICE;
}

impl Service<http::Request<Body>> for AdsServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        ready(Ok(self.respond(request)))
    }
}

/// The proxy's address, as tonic's `Request::remote_addr` finds it.
fn remote_addr<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}

/// The framed responses a stream task sends, or the status that ends the stream.
pub(crate) type Responses = mpsc::Sender<Result<Bytes, Status>>;

/// Starts a stream task with the sending half of its responses, and answers with the other.
fn streaming(spawn: impl FnOnce(Responses)) -> http::Response<Body> {
    let (tx, rx) = mpsc::channel(super::STREAM_BUFFER);
    spawn(tx);
    let mut response = http::Response::new(Body::new(ResponseBody { rx, done: false }));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
    response
}

/// An answer with no messages, only a status.
fn trailers_only(status: &Status) -> http::Response<Body> {
    let mut response = http::Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
    headers.extend(status_headers(status));
    response
}

fn status_headers(status: &Status) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if status.add_header(&mut headers).is_err() {
        // A message that cannot be a header value: the code alone.
        headers.clear();
        headers.insert(Status::GRPC_STATUS, HeaderValue::from(status.code() as i32));
    }
    headers
}

/// The response stream: the framed messages, then the status as trailers.
struct ResponseBody {
    rx: mpsc::Receiver<Result<Bytes, Status>>,
    done: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let status = match ready_poll!(this.rx.poll_recv(cx)) {
            Some(Ok(frame)) => return Poll::Ready(Some(Ok(Frame::data(frame)))),
            Some(Err(status)) => status,
            None => Status::new(Code::Ok, ""),
        };
        this.done = true;
        Poll::Ready(Some(Ok(Frame::trailers(status_headers(&status)))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_headers_carry_the_code_and_a_message_only_if_there_is_one() {
        let headers = status_headers(&Status::unavailable("meshd is stopping"));
        assert_eq!(headers.get(Status::GRPC_STATUS).expect("status"), "14");
        assert_eq!(
            headers.get(Status::GRPC_MESSAGE).expect("message"),
            "meshd%20is%20stopping"
        );
        let headers = status_headers(&Status::new(Code::Ok, ""));
        assert_eq!(headers.get(Status::GRPC_STATUS).expect("status"), "0");
        assert!(headers.get(Status::GRPC_MESSAGE).is_none());
    }
}
