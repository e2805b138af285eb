//! The peer port (15008): where sidecars reach each other with HTTP/2.
//!
//! An outbound sidecar sends the HTTP requests for a meshed endpoint over one multiplexed HTTP/2
//! connection to that endpoint's sidecar, whatever protocol its clients spoke. Each request
//! carries the app port it is for (`x-mesh-target-port`), and an HTTP/1.1 request also its
//! original protocol (`x-mesh-orig-proto: HTTP/1.1`) and `Host` (`x-mesh-orig-host`). Here those
//! markers are removed and the request goes to the app on loopback in its original protocol.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::HOST;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::forward::Context;
use crate::http::{ProxyBody, side_error};
use crate::metrics::{Direction, inc};

/// The app port a request between sidecars is for.
pub const TARGET_PORT: &str = "x-mesh-target-port";
/// Set when the client spoke HTTP/1.1 (the value is the protocol).
pub const ORIG_PROTO: &str = "x-mesh-orig-proto";
/// The client's `Host`, for an HTTP/1.1 request.
pub const ORIG_HOST: &str = "x-mesh-orig-host";

/// Serves one HTTP/2 connection from a peer sidecar.
pub async fn serve(stream: TcpStream, peer: SocketAddr, ctx: Arc<Context>) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let metrics = ctx.metrics.tcp(Direction::Inbound);
    inc(&metrics.opened);
    let _ = stream.set_nodelay(true);
    let loopback: IpAddr = match local {
        SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
    };
    let span = tracing::info_span!("peer", %peer);
    let service = {
        let ctx = ctx.clone();
        hyper::service::service_fn(move |req| {
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(to_app(req, local.ip(), loopback, &ctx).await) }
        })
    };
    async {
        if let Err(e) = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            tracing::debug!(error = %e, "peer connection ended with an error");
        }
    }
    .instrument(span)
    .await;
    inc(&metrics.closed);
}

fn inbound_error(status: StatusCode, reason: &str) -> Response<ProxyBody> {
    side_error("inbound", status, reason)
}

/// Restores a peer's request and sends it to the app on loopback.
async fn to_app(
    req: Request<Incoming>,
    pod_ip: IpAddr,
    loopback: IpAddr,
    ctx: &Context,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    let port = parts
        .headers
        .remove(TARGET_PORT)
        .and_then(|v| v.to_str().ok().and_then(|p| p.parse::<u16>().ok()));
    let Some(port) = port else {
        return inbound_error(
            StatusCode::BAD_REQUEST,
            "a request from a peer without x-mesh-target-port",
        );
    };
    // Only ports a Service exposes on this pod: the peer port is no way into loopback-only services.
    let exposed = ctx
        .xds
        .routing
        .load()
        .is_endpoint(SocketAddr::new(pod_ip, port));
    if ctx.config.own_ports().contains(&port) || !exposed {
        let reason = format!("port {port} of {pod_ip} is no endpoint of any Service");
        return inbound_error(StatusCode::FORBIDDEN, &reason);
    }
    let http1 = parts.headers.remove(ORIG_PROTO).is_some();
    if let Some(host) = parts.headers.remove(ORIG_HOST) {
        parts.headers.insert(HOST, host);
    }
    let app = SocketAddr::new(loopback, port);
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = match Uri::builder()
        .scheme("http")
        .authority(app.to_string())
        .path_and_query(path)
        .build()
    {
        Ok(uri) => uri,
        Err(e) => {
            return inbound_error(StatusCode::BAD_REQUEST, &format!("bad request target: {e}"));
        }
    };
    parts.version = if http1 {
        Version::HTTP_11
    } else {
        Version::HTTP_2
    };
    let request = Request::from_parts(parts, body);
    match ctx
        .http
        .for_version(request.version())
        .request(request)
        .await
    {
        Ok(resp) => resp.map(BodyExt::boxed),
        Err(e) => inbound_error(
            StatusCode::BAD_GATEWAY,
            &format!("the app at {app} failed: {e}"),
        ),
    }
}
