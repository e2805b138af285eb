//! The peer port (15008): where sidecars reach each other, over mutual TLS when they have
//! identities (see [`crate::tls`]).
//!
//! An outbound sidecar sends the HTTP requests for a meshed endpoint to that endpoint's sidecar:
//! HTTP/2 requests over one multiplexed HTTP/2 connection (ALPN `mesh/h2`); HTTP/1.1 requests
//! under load on streams of one `mesh/mux` connection (see [`crate::mux`]); protocol upgrades
//! (WebSocket) over pooled HTTP/1.1 connections (`mesh/h1`), where an upgraded connection stays
//! inside the mutual TLS; HTTP/1.1 requests over either, as that sidecar's `--peer-http1` says
//! (see [`crate::peer_carriage`]). Each request carries the app port it is for, the protocol the
//! client spoke and the Service it addressed (`x-mesh-hop`, see [`crate::hop`]); an HTTP/1.1
//! request carried in HTTP/2 has its `Host` as `:authority` (sidecars built before 2026-12-04
//! sent it as `x-mesh-orig-host`, still read). Here those markers are removed and the request
//! goes to the app on loopback in its original protocol, with the client's authority.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use mesh_proto::spiffe::SpiffeId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tracing::Instrument;

use bytes::BytesMut;

use crate::authz::{Attempt, Verdict};
use crate::body::StreamBody;
use crate::drain::Drain;
use crate::forward::Context;
use crate::hop::{self, HOP, Hop};
use crate::http::{
    ProxyBody, Via, join_upgraded, path_and_query, side_error, target_uri, wants_upgrade,
};
use crate::http1_server::{self, Heads};
use crate::http2_server;
use crate::metrics::{Direction, RefuseReason, inc};
use crate::mux;
use crate::read_ahead::ReadAhead;
use crate::routing::Routing;
use crate::tls::{Carriage, compact_heads, peer_identity};

// The mesh's own headers are `HeaderName`s made at compile time: a `&str` name is parsed (and
// lower-cased, checked) on every insert, get and remove, a few hundred instructions a header per
// request in callgrind's count (benches/instructions.sh).

/// The client's `Host`, as sidecars built before 2026-12-04 sent it for an HTTP/1.1 request
/// carried in HTTP/2 (they are read still; this build sends it as `:authority`).
pub(crate) const ORIG_HOST: HeaderName = HeaderName::from_static("x-mesh-orig-host");

/// The header that tells the app who called: `By=<this pod's identity>;URI=<the caller's>`
/// (Envoy's format). The mesh sets it on requests from an authenticated peer and removes it from
/// every other request, so the app can trust it.
pub const CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// An authenticated peer, and the `x-forwarded-client-cert` its requests get (made once per
/// connection).
#[derive(Debug)]
struct Caller {
    id: SpiffeId,
    client_cert: Option<HeaderValue>,
}

impl Caller {
    fn new(id: SpiffeId, ctx: &Context) -> Caller {
        let client_cert = ctx.tls.as_ref().and_then(|tls| {
            HeaderValue::from_str(&format!("By={};URI={id}", tls.identity().id())).ok()
        });
        Caller { id, client_cert }
    }
}

/// Serves one connection from a peer sidecar: mutual TLS first when this proxy has an identity
/// (then ALPN says HTTP/1.1, HTTP/2 or one opaque stream), plaintext HTTP/2 otherwise.
pub async fn serve(stream: TcpStream, peer: SocketAddr, ctx: Arc<Context>, drain: Drain) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    inc(&ctx.metrics.tcp(Direction::Inbound).opened);
    let _ = stream.set_nodelay(true);
    let span = tracing::info_span!("peer", %peer);
    let counted = ctx.clone();
    async {
        let Some(tls) = ctx.tls.clone() else {
            // No identity: plaintext HTTP/2, which STRICT does not accept.
            let policy = ctx.xds.policy.load();
            if policy.mode == crate::authz::MtlsMode::Strict {
                inc(ctx.metrics.tcp(Direction::Inbound).refused(RefuseReason::Plaintext));
                tracing::warn!(
                    "mesh-proxy inbound: refused a plaintext peer: {} says STRICT, and this proxy has no identity",
                    policy.mode_source
                );
                return;
            }
            ctx.metrics.peer_connection(Carriage::Http2);
            serve_http(stream, Version::HTTP_2, Heads::Text, local, None, ctx, &drain).await;
            return;
        };
        let accepted =
            tokio::time::timeout(ctx.config.connect_timeout, tls.acceptor().accept(ReadAhead::new(stream))).await;
        let mut stream = match accepted {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                inc(ctx
                    .metrics
                    .tcp(Direction::Inbound)
                    .refused(RefuseReason::Tls));
                tracing::warn!(error = %e, "mesh-proxy inbound: refused a peer: mutual TLS failed");
                return;
            }
            Err(_) => {
                inc(ctx
                    .metrics
                    .tcp(Direction::Inbound)
                    .refused(RefuseReason::Tls));
                tracing::warn!("mesh-proxy inbound: refused a peer: no TLS handshake in time");
                return;
            }
        };
        let conn = stream.get_ref().1;
        let caller = peer_identity(conn);
        let carriage = Carriage::from_alpn(conn.alpn_protocol());
        // `mesh/h1c` and `mesh/muxc`: HTTP/1.1 with compact heads.
        let heads = if compact_heads(conn.alpn_protocol()) {
            Heads::Compact
        } else {
            Heads::Text
        };
        if let (Some(_), Some(carriage)) = (&caller, carriage) {
            ctx.metrics.peer_connection(carriage);
        }
        match (caller, carriage) {
            (Some(caller), Some(carriage @ (Carriage::Http1 | Carriage::Http2))) => {
                tracing::debug!(%caller, ?carriage, "peer authenticated");
                let caller = Some(Arc::new(Caller::new(caller, &ctx)));
                let version = if carriage == Carriage::Http2 {
                    Version::HTTP_2
                } else {
                    Version::HTTP_11
                };
                // Boxed, as on the outbound side: the opaque streams' task stays small.
                Box::pin(serve_http(stream, version, heads, local, caller, ctx, &drain)).await;
            }
            (Some(caller), Some(Carriage::Mux)) => {
                tracing::debug!(%caller, "peer authenticated (mesh/mux)");
                stream.get_mut().0.keep_buffer();
                let caller = Arc::new(Caller::new(caller, &ctx));
                Box::pin(serve_mux(stream, heads, local, caller, ctx, &drain)).await;
            }
            (Some(caller), Some(Carriage::Tcp)) => {
                tracing::debug!(%caller, "peer authenticated (TCP)");
                serve_tcp(stream, local, caller, ctx).await;
            }
            (caller, carriage) => {
                inc(ctx
                    .metrics
                    .tcp(Direction::Inbound)
                    .refused(RefuseReason::Tls));
                tracing::warn!(
                    ?caller,
                    ?carriage,
                    "mesh-proxy inbound: refused a peer without a SPIFFE ID or a mesh ALPN"
                );
            }
        }
    }
    .instrument(span)
    .await;
    inc(&counted.metrics.tcp(Direction::Inbound).closed);
}

/// HTTP/2 or HTTP/1.1 (`version`; `heads` says whether compact heads are read and written too)
/// from a peer: each request restored and sent to the app.
async fn serve_http<S>(
    stream: S,
    version: Version,
    heads: Heads,
    local: SocketAddr,
    caller: Option<Arc<Caller>>,
    ctx: Arc<Context>,
    drain: &Drain,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let loopback = loopback_of(local);
    let caller = caller.as_deref();
    let ctx = &*ctx;
    let answer = move |req: Request<StreamBody>| answer_peer(req, local, loopback, caller, ctx);
    // On drain: GOAWAY (HTTP/2) or `Connection: close` on the next response (HTTP/1.1), so the
    // peer opens its next requests elsewhere while these finish.
    if version == Version::HTTP_2 {
        let served = http2_server::serve(stream, drain, http2_server::KeepAlive::DEFAULT, |req| {
            answer(req.map(StreamBody::H2))
        });
        if let Err(e) = served.await {
            tracing::debug!(error = %e, "peer connection ended with an error");
        }
        return;
    }
    if let Err(e) = http1_server::serve(stream, BytesMut::new(), Some(drain), heads, answer).await {
        tracing::debug!(error = %e, "peer connection ended with an error");
    }
}

/// HTTP/1.1 on each stream of a `mesh/mux` connection from a peer (see [`crate::mux`]), as
/// on a `mesh/h1` connection of its own (`heads`: with compact heads on `mesh/muxc`, as on
/// `mesh/h1c`).
async fn serve_mux<S>(
    stream: S,
    heads: Heads,
    local: SocketAddr,
    caller: Arc<Caller>,
    ctx: Arc<Context>,
    drain: &Drain,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let loopback = loopback_of(local);
    let caller = Some(&*caller);
    let ctx = &*ctx;
    let answer = move |req: Request<StreamBody>| answer_peer(req, local, loopback, caller, ctx);
    let answer = &answer;
    let served = mux::serve(stream, drain, |stream| async move {
        let served = http1_server::serve(stream, BytesMut::new(), Some(drain), heads, answer);
        if let Err(e) = served.await {
            tracing::debug!(error = %e, "mesh/mux stream ended with an error");
        }
    });
    if let Err(e) = served.await {
        tracing::debug!(error = %e, "peer connection ended with an error");
    }
}

/// One request from a peer: its `x-mesh-hop` read and removed, the request restored and sent
/// to the app, and counted.
async fn answer_peer(
    mut req: Request<StreamBody>,
    local: SocketAddr,
    loopback: IpAddr,
    caller: Option<&Caller>,
    ctx: &Context,
) -> Response<ProxyBody> {
    let start = std::time::Instant::now();
    let value = req.headers_mut().remove(HOP);
    let hop = match &value {
        Some(value) => Hop::parse(value),
        None => hop::take_old(req.headers_mut()).ok_or_else(|| {
            format!("a request from a peer without {HOP} (nor the older x-mesh-target-port)")
        }),
    };
    let stats = inbound_stats(hop.as_ref().ok(), local.ip(), ctx);
    let response = match hop {
        Ok(hop) => to_app(req, hop, local.ip(), loopback, caller, ctx).await,
        Err(reason) => inbound_error(StatusCode::BAD_REQUEST, &reason),
    };
    stats.record(response.status().as_u16(), start.elapsed());
    response
}

/// One opaque stream from a peer: its first two bytes name the app port.
async fn serve_tcp<S>(mut stream: S, local: SocketAddr, caller: SpiffeId, ctx: Arc<Context>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut port = [0u8; 2];
    if let Err(e) = stream.read_exact(&mut port).await {
        tracing::debug!(error = %e, "peer stream ended before its target port");
        return;
    }
    let port = u16::from_be_bytes(port);
    if let Err(reason) = check_app_port(&ctx, local.ip(), port) {
        inc(ctx
            .metrics
            .tcp(Direction::Inbound)
            .refused(RefuseReason::NoEndpoint));
        tracing::warn!(%caller, "mesh-proxy inbound: refused a TCP stream: {reason}");
        return;
    }
    let attempt = Attempt {
        source: Some(&caller),
        port,
        http: None,
    };
    if let Verdict::Deny(reason) = ctx.authorize(&attempt) {
        inc(ctx
            .metrics
            .tcp(Direction::Inbound)
            .refused(RefuseReason::Denied));
        tracing::warn!(%caller, port, "mesh-proxy inbound: refused a TCP stream: {reason}");
        return;
    }
    let app = SocketAddr::new(loopback_of(local), port);
    let mut upstream = match crate::local_hop::connect(app).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%caller, %app, error = %e, "mesh-proxy inbound: cannot connect to the app");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let metrics = ctx.metrics.tcp(Direction::Inbound);
    match crate::relay::copy_through_tls(&mut stream, &mut upstream).await {
        Ok((from_peer, to_peer)) => {
            metrics
                .received_bytes
                .fetch_add(from_peer, std::sync::atomic::Ordering::Relaxed);
            metrics
                .sent_bytes
                .fetch_add(to_peer, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(%caller, %app, from_peer, to_peer, "TCP stream closed");
        }
        Err(e) => tracing::debug!(%caller, %app, error = %e, "TCP stream ended with an error"),
    }
}

/// The counters a peer's request is recorded in (route `inbound`): those of the Service its
/// `x-mesh-hop` names, if meshd published that Service; else those of the Service its target
/// port is an endpoint of (`unknown` without a readable `x-mesh-hop`). A peer cannot make up
/// new series: a name no Service has is not counted under.
fn inbound_stats(
    hop: Option<&Hop<'_>>,
    pod_ip: IpAddr,
    ctx: &Context,
) -> Arc<crate::request_metrics::RouteStats> {
    let registry = &ctx.xds.inbound_requests;
    let named = hop.and_then(|h| h.service);
    // The usual case, one lookup: a name counted before (so checked then).
    if let Some(stats) = named.and_then(|service| registry.existing(service, "inbound")) {
        return stats;
    }
    let port = hop.map(|h| h.port);
    let routing = ctx.xds.routing.load();
    registry.stats(inbound_service(named, port, pod_ip, &routing), "inbound")
}

/// The Service a peer's request is counted under: the one it names if meshd published it, else
/// the one (`pod_ip`, `port`) is an endpoint of, else `unknown`.
fn inbound_service<'a>(
    named: Option<&'a str>,
    port: Option<u16>,
    pod_ip: IpAddr,
    routing: &'a Routing,
) -> &'a str {
    if let Some(service) = named.filter(|s| routing.service_names.contains(*s)) {
        return service;
    }
    port.and_then(|p| routing.endpoint_services.get(&SocketAddr::new(pod_ip, p)))
        .map_or("unknown", String::as_str)
}

fn loopback_of(local: SocketAddr) -> IpAddr {
    match local {
        SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
    }
}

/// Only ports a Service exposes on this pod: the peer port is no way into loopback-only services.
fn check_app_port(ctx: &Context, pod_ip: IpAddr, port: u16) -> Result<(), String> {
    let exposed = ctx
        .xds
        .routing
        .load()
        .is_endpoint(SocketAddr::new(pod_ip, port));
    if ctx.config.own_ports().contains(&port) || !exposed {
        return Err(format!(
            "port {port} of {pod_ip} is no endpoint of any Service"
        ));
    }
    Ok(())
}

fn inbound_error(status: StatusCode, reason: &str) -> Response<ProxyBody> {
    side_error("inbound", status, reason)
}

/// Restores a peer's request (its `x-mesh-hop` already taken off as `hop`) and sends it to the
/// app on loopback.
async fn to_app(
    mut req: Request<StreamBody>,
    hop: Hop<'_>,
    pod_ip: IpAddr,
    loopback: IpAddr,
    caller: Option<&Caller>,
    ctx: &Context,
) -> Response<ProxyBody> {
    // An Upgrade (over `mesh/h1` only): its headers go on to the app, and after a 101 the two
    // upgraded connections are joined.
    let upgrade = (req.version() != Version::HTTP_2 && wants_upgrade(req.headers()))
        .then(|| hyper::upgrade::on(&mut req));
    let port = hop.port;
    if let Err(reason) = check_app_port(ctx, pod_ip, port) {
        return inbound_error(StatusCode::FORBIDDEN, &reason);
    }
    let attempt = Attempt {
        source: caller.map(|c| &c.id),
        port,
        http: Some((req.method().as_str(), req.uri().path())),
    };
    if let Verdict::Deny(reason) = ctx.authorize(&attempt) {
        let who = caller.map(|c| &c.id).map_or_else(
            || "a caller without identity".to_string(),
            |c| c.to_string(),
        );
        return inbound_error(
            StatusCode::FORBIDDEN,
            &format!("{} {} from {who}: {reason}", req.method(), req.uri().path()),
        );
    }
    // The request is restored in place: taken apart and put back together, it was copied
    // three times. `x-forwarded-client-cert` is set for an authenticated caller, removed from
    // any other request.
    let headers = req.headers_mut();
    match caller.and_then(|c| c.client_cert.clone()) {
        Some(value) => headers.insert(CLIENT_CERT, value),
        None => headers.remove(CLIENT_CERT),
    };
    if let Some(host) = headers.remove(ORIG_HOST) {
        headers.insert(HOST, host);
    }
    let http1 = hop.http1 || req.version() != Version::HTTP_2;
    let app = SocketAddr::new(loopback, port);
    let version = if http1 {
        Version::HTTP_11
    } else {
        Version::HTTP_2
    };
    *req.version_mut() = version;
    // The peer's URI, taken out (leaving "/") so that it can be read beside the fields.
    let uri = std::mem::take(req.uri_mut());
    let path = path_and_query(&uri);
    *req.uri_mut() = match target_uri(version, &uri, req.headers_mut(), app, path) {
        Ok(uri) => uri,
        Err(e) => {
            return inbound_error(StatusCode::BAD_REQUEST, &format!("bad request target: {e}"));
        }
    };
    match ctx
        .http
        .send(req, app, Via::Direct, upgrade.is_some())
        .await
    {
        Ok(mut resp) => {
            if let Some(from_peer) =
                upgrade.filter(|_| resp.status() == StatusCode::SWITCHING_PROTOCOLS)
            {
                join_upgraded(from_peer, hyper::upgrade::on(&mut resp), app);
            }
            let kept = resp.body_mut().take_kept();
            resp.map(|body| ProxyBody::with_kept(body, kept))
        }
        Err(e) => inbound_error(
            StatusCode::BAD_GATEWAY,
            &format!("the app at {app} failed: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;

    /// What the peer side answers to one HTTP/1.1 request from a peer carrying `hop` (as
    /// `x-mesh-hop`, when given): its status and `x-mesh-error`.
    async fn answer_to(hop: Option<&'static str>) -> (StatusCode, String) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let local: SocketAddr = ([10, 0, 0, 4], 15008).into();
        let drain = Drain::new();
        let server = tokio::spawn(async move {
            serve_http(
                theirs,
                Version::HTTP_11,
                Heads::Text,
                local,
                None,
                Arc::new(Context::for_tests()),
                &drain,
            )
            .await;
        });
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(ours))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = Request::builder().uri("/").header(HOST, "web");
        if let Some(hop) = hop {
            req = req.header(HOP, hop);
        }
        let resp = send
            .send_request(req.body(Empty::<Bytes>::new()).expect("request"))
            .await
            .expect("response");
        let error = resp
            .headers()
            .get(crate::http::MESH_ERROR)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        drop(send);
        server.abort();
        (resp.status(), error)
    }

    /// A request from a peer without a readable `x-mesh-hop` is refused with a 400 that names
    /// the header and what is wrong with it; a readable one goes on to the port check.
    #[tokio::test]
    async fn a_peer_request_without_a_readable_hop_is_refused_naming_it() {
        let (status, error) = answer_to(None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(error.contains("without x-mesh-hop"), "{error}");
        let (status, error) = answer_to(Some("http h1")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            error.contains("x-mesh-hop \"http h1\": the app port \"http\""),
            "{error}"
        );
        // Readable: refused further on, since no Service has port 8080 of this pod.
        let (status, error) = answer_to(Some("8080 h1 web")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{error}");
        assert!(error.contains("port 8080"), "{error}");
    }

    /// A peer can name only a Service meshd published: any other name is counted under the
    /// Service of the endpoint it reached, so a caller cannot add series to `/metrics`.
    #[test]
    fn requests_are_counted_under_a_published_service_only() {
        let pod: IpAddr = [10, 0, 0, 4].into();
        let mut routing = Routing::default();
        routing.service_names.insert("web.default.svc:80".into());
        routing.service_names.insert("api.default.svc:80".into());
        routing
            .endpoint_services
            .insert(SocketAddr::new(pod, 8080), "web.default.svc:80".into());
        let count = |named, port| inbound_service(named, port, pod, &routing);
        assert_eq!(
            count(Some("api.default.svc:80"), Some(8080)),
            "api.default.svc:80"
        );
        assert_eq!(count(Some("made-up"), Some(8080)), "web.default.svc:80");
        assert_eq!(count(None, Some(8080)), "web.default.svc:80");
        assert_eq!(count(Some("made-up"), Some(9999)), "unknown");
        assert_eq!(count(None, None), "unknown");
    }
}
