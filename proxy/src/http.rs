//! HTTP/1.1 proxying of outbound requests to a Service: each request is routed on its own
//! (path, headers, query, method), balanced over the chosen cluster's endpoints, and sent over a
//! pooled upstream connection. Bodies stream in both directions without being buffered whole.
//!
//! Every error the proxy itself produces says so: the response carries `x-mesh-error` with who
//! produced it and why, and the same text is logged.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::future::Either;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, LOCATION, TE, UPGRADE};
use hyper::http::uri::{self, Authority, PathAndQuery, Scheme};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::balance::Endpoint;
use crate::body::StreamBody;
use crate::config::PeerHttp1;
use crate::detect::Protocol;
use crate::forward::Context;
use crate::hop::HOP;
use crate::http1_server;
use crate::io::Rewind;
use crate::peer_carriage::{Http1Slot, Http1Slots, SlotBody};
use crate::peer_client::{MuxConnector, PeerConnector};
use crate::pool::{Pool, PoolError, PooledBody, TcpConnector, Version as PoolVersion};
use crate::request_metrics::RouteStats;
use crate::route::RequestView;
use crate::routing::{Action, NoEndpoint, Route, Routing, Service, random_u32};
use crate::tls::Carriage;

/// Response bodies: the upstream's, streamed, or a short one the proxy made.
pub use crate::body::ProxyBody;

/// The header that marks (and explains) a response the mesh produced itself.
pub const MESH_ERROR: HeaderName = HeaderName::from_static("x-mesh-error");

/// Whether a header is hop-by-hop (RFC 9110 section 7.6.1), never forwarded. (`te` is not
/// here: `te: trailers` is kept, the one TE value HTTP/2 allows, which gRPC requires.) Matched
/// on the name's text: against an array of names, each header's scan cost more than the rest of
/// the strip.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "trailer"
            | "upgrade"
    )
}

/// Pooled upstream connections, one pool per protocol: a request goes upstream in the protocol
/// the client spoke (HTTP/2 stays HTTP/2, which gRPC needs; HTTP/1.1 stays HTTP/1.1). Requests
/// to a peer sidecar go over its own pools of mutual-TLS connections when the proxy has an
/// identity (see [`PeerClients`]).
#[derive(Debug, Clone)]
pub struct HttpClients {
    http1: Pool<TcpConnector, StreamBody>,
    http2: Pool<TcpConnector, StreamBody>,
    peer: Option<PeerClients>,
}

/// Pooled mutual-TLS connections to peer sidecars: HTTP/2 (`mesh/h2`), multiplexed, and
/// HTTP/1.1 (`mesh/h1`), one request at a time, for upgrades and for the clients' HTTP/1.1
/// requests as `http1` says.
#[derive(Debug, Clone)]
struct PeerClients {
    http1: Pool<PeerConnector, StreamBody>,
    http2: Pool<PeerConnector, StreamBody>,
    /// HTTP/1.1 on streams of one connection per peer (`mesh/mux`).
    mux: Pool<MuxConnector, StreamBody>,
    http1_as: Http1Carriage,
}

/// What carries a client's HTTP/1.1 request to a peer (`--peer-http1`).
#[derive(Debug, Clone)]
enum Http1Carriage {
    Http1,
    Http2,
    Mux,
    /// `mesh/h1` while few of the clients' HTTP/1.1 requests to the peer are in flight,
    /// `mesh/mux` otherwise (see [`Http1Slots`]).
    Auto(Arc<Http1Slots>),
}

/// Where a request goes: straight to its destination, or through a peer sidecar over one of
/// its carriages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Direct,
    /// `mesh/h2` or `mesh/h1`, as the request's version says.
    Peer,
    /// `mesh/mux` (the request is HTTP/1.1).
    PeerMux,
}

/// How a request goes to a peer sidecar: in `version`, multiplexed on `mesh/mux` when `muxed`,
/// holding `slot` (it counts the request in flight) under `--peer-http1 auto`.
#[derive(Debug)]
pub struct PeerRoute {
    pub version: Version,
    pub muxed: bool,
    pub slot: Option<Http1Slot>,
}

impl PeerRoute {
    fn of(version: Version) -> PeerRoute {
        PeerRoute {
            version,
            muxed: false,
            slot: None,
        }
    }

    fn muxed() -> PeerRoute {
        PeerRoute {
            version: Version::HTTP_11,
            muxed: true,
            slot: None,
        }
    }
}

impl HttpClients {
    /// `peer_http1_slots`: under `PeerHttp1::Auto`, below how many of the clients' HTTP/1.1
    /// requests in flight to a peer the next goes on `mesh/h1`.
    pub fn new(
        connect_timeout: Duration,
        peer: Option<PeerConnector>,
        peer_http1: PeerHttp1,
        peer_http1_slots: usize,
    ) -> HttpClients {
        let connector = TcpConnector::new(connect_timeout);
        let peer = peer.map(|connector| PeerClients {
            http1: Pool::new(connector.clone().over(Carriage::Http1), PoolVersion::Http1),
            mux: Pool::new(MuxConnector::new(connector.clone()), PoolVersion::Http1),
            http2: Pool::new(connector.over(Carriage::Http2), PoolVersion::Http2),
            http1_as: match peer_http1 {
                PeerHttp1::Http1 => Http1Carriage::Http1,
                PeerHttp1::Http2 => Http1Carriage::Http2,
                PeerHttp1::Mux => Http1Carriage::Mux,
                PeerHttp1::Auto => Http1Carriage::Auto(Http1Slots::new(peer_http1_slots)),
            },
        });
        HttpClients {
            http1: Pool::new(connector.clone(), PoolVersion::Http1),
            http2: Pool::new(connector, PoolVersion::Http2),
            peer,
        }
    }

    /// How a request of `version` goes to the sidecar at `peer`, or not at all when it cannot
    /// go through it (an `upgrade` needs HTTP/1.1 end to end, which only `mesh/h1` carries, and
    /// plaintext peers speak only HTTP/2: without an identity it goes directly to the app).
    /// `now`: when the request came in, for the carriage's hold (see [`Http1Slots::take_at`]).
    pub fn peer_route(
        &self,
        version: Version,
        upgrade: bool,
        peer: IpAddr,
        now: Instant,
    ) -> Option<PeerRoute> {
        let Some(clients) = &self.peer else {
            return (!upgrade).then(|| PeerRoute::of(Version::HTTP_2));
        };
        if upgrade {
            return Some(PeerRoute::of(Version::HTTP_11));
        }
        if version == Version::HTTP_2 {
            return Some(PeerRoute::of(Version::HTTP_2));
        }
        Some(match &clients.http1_as {
            Http1Carriage::Http1 => PeerRoute::of(Version::HTTP_11),
            Http1Carriage::Http2 => PeerRoute::of(Version::HTTP_2),
            Http1Carriage::Mux => PeerRoute::muxed(),
            Http1Carriage::Auto(slots) => {
                let slot = slots.take_at(peer, now);
                PeerRoute {
                    version: Version::HTTP_11,
                    muxed: !slot.on_http1(),
                    slot: Some(slot),
                }
            }
        })
    }

    /// Sends `req` to `addr`, through a peer sidecar's port as `via` says
    /// ([`HttpClients::peer_route`] chose it). The request is as [`upstream_request`] makes it;
    /// `upgrade`: it asks to switch protocols ([`wants_upgrade`], which the caller has read).
    ///
    /// Not an `async fn`: its five pools' futures are the variants of one enum ([`Either`]),
    /// laid over each other, where an `async fn` awaiting each in its own arm kept room for
    /// more than two of them (`std::mem::size_of_val` of the future tells), and every move of
    /// the request's future, which holds this one, copied that room.
    pub fn send(
        &self,
        req: Request<StreamBody>,
        addr: SocketAddr,
        via: Via,
        upgrade: bool,
    ) -> impl Future<Output = Result<Response<PooledBody<StreamBody>>, PoolError>> + '_ {
        let http2 = req.version() == Version::HTTP_2;
        match (&self.peer, via) {
            (Some(peer), Via::PeerMux) => Either::Left(peer.mux.send(req, addr, upgrade)),
            (Some(peer), Via::Peer) if http2 => Either::Right(Either::Left(Either::Left(
                peer.http2.send(req, addr, upgrade),
            ))),
            (Some(peer), Via::Peer) => Either::Right(Either::Left(Either::Right(
                peer.http1.send(req, addr, upgrade),
            ))),
            _ if http2 => Either::Right(Either::Right(Either::Left(
                self.http2.send(req, addr, upgrade),
            ))),
            _ => Either::Right(Either::Right(Either::Right(
                self.http1.send(req, addr, upgrade),
            ))),
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2 (`protocol`) on a client connection whose destination is the
/// Service at `vip`; `read` is what protocol detection read of it.
pub async fn serve_outbound(
    io: TcpStream,
    read: BytesMut,
    vip: SocketAddr,
    ctx: Arc<Context>,
    protocol: Protocol,
) {
    if protocol == Protocol::Http2 {
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let response = route_request(req.map(StreamBody::Hyper), vip, ctx.clone());
            async move { Ok::<_, Infallible>(response.await) }
        });
        let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(Rewind::new(read, io)), service)
            .await;
        if let Err(e) = served {
            tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
        }
        return;
    }
    let answer = |req| route_request(req, vip, ctx.clone());
    if let Err(e) = http1_server::serve(io, read, None, http1_server::Heads::Text, answer).await {
        tracing::debug!(error = %e, "HTTP/1.1 connection ended with an error");
    }
}

/// A response the outbound side made itself (see [`side_error`]).
pub fn mesh_error(status: StatusCode, reason: &str) -> Response<ProxyBody> {
    side_error("outbound", status, reason)
}

/// A response the proxy made itself: `mesh-proxy <side>: <reason>` in `x-mesh-error`, in the
/// body, and in the log.
pub fn side_error(side: &str, status: StatusCode, reason: &str) -> Response<ProxyBody> {
    let text = format!("mesh-proxy {side}: {reason}");
    tracing::warn!(status = status.as_u16(), "{text}");
    let mut resp = Response::new(ProxyBody::new(
        Full::new(Bytes::from(format!("{text}\n"))).map_err(|never| match never {}),
    ));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&text) {
        resp.headers_mut().insert(MESH_ERROR, v);
    }
    resp
}

/// One request from the app to the Service at `vip`: routed, forwarded (or answered here),
/// and recorded in its route's counters (`none` when no route matched).
///
/// The routing is decided in a plain function ([`dispatch`]) rather than in a level of
/// `async fn` of its own: each `async fn` keeps its arguments (here the request) beside its
/// other state for as long as it runs, and its future is built and then copied into its
/// caller's, so every level made the request's future larger and its start slower.
async fn route_request(
    mut req: Request<StreamBody>,
    vip: SocketAddr,
    ctx: Arc<Context>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let routing = ctx.xds.routing.load_full();
    let (response, stats) = match dispatch(&mut req, vip, &routing, &ctx) {
        Dispatch::Answered(response, stats) => (response, stats),
        Dispatch::Forward(route, service) => (
            forward(req, route, service, &ctx, start).await,
            Some(route.stats.clone()),
        ),
    };
    let stats = stats.unwrap_or_else(|| ctx.xds.requests.stats(&vip.to_string(), "none"));
    stats.record(response.status().as_u16(), start.elapsed());
    response
}

/// What [`dispatch`] decided for a request.
enum Dispatch<'a> {
    /// Answered here (no Service, no route, a redirect), with the counters it counts in.
    Answered(Response<ProxyBody>, Option<Arc<RouteStats>>),
    /// To forward by this route of this Service. The request stays with the caller: moved in
    /// and out, it was copied twice.
    Forward(&'a Route, &'a Service),
}

/// Finds the request's route in `routing`: the answer when there is nothing to forward.
fn dispatch<'a>(
    req: &mut Request<StreamBody>,
    vip: SocketAddr,
    routing: &'a Routing,
    ctx: &Context,
) -> Dispatch<'a> {
    let Some(service) = routing.service(&vip) else {
        return Dispatch::Answered(
            mesh_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("no Service at {vip} any more"),
            ),
            None,
        );
    };
    // Its routes look at fields that may have been kept out of the map (see `crate::raw_head`).
    if service.matches_headers {
        crate::raw_head::restore_request(req);
    }
    // HTTP/2 carries it as `:authority` (the URI's), HTTP/1.1 as Host.
    let authority = match req.uri().authority() {
        Some(authority) => Some(authority.as_str()),
        None => req.headers().get(HOST).and_then(|h| h.to_str().ok()),
    };
    let view = RequestView {
        method: req.method(),
        authority,
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let Some(route) = service.route(&view) else {
        let reason = format!(
            "no route of {} matches {} {}",
            service.name,
            req.method(),
            req.uri().path()
        );
        let stats = ctx.xds.requests.stats(&service.name, "none");
        return Dispatch::Answered(mesh_error(StatusCode::NOT_FOUND, &reason), Some(stats));
    };
    if let Action::Redirect(redirect) = &route.action {
        let authority = authority.map_or_else(|| vip.to_string(), str::to_string);
        let location = redirect.location(
            &authority,
            req.uri().path(),
            req.uri().query(),
            route.matcher.path_prefix(),
        );
        return Dispatch::Answered(
            redirect_response(redirect.status, &location, route),
            Some(route.stats.clone()),
        );
    }
    Dispatch::Forward(route, service)
}

/// A redirect the route answers with itself (not an error: no `x-mesh-error`).
fn redirect_response(status: u16, location: &str, route: &Route) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::new(
        Full::new(Bytes::new()).map_err(|never| match never {}),
    ));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
    match HeaderValue::from_str(location) {
        Ok(v) => {
            resp.headers_mut().insert(LOCATION, v);
        }
        Err(_) => {
            return mesh_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the redirect target {location:?} is not a valid header"),
            );
        }
    }
    route.edits.apply_response(resp.headers_mut());
    resp
}

/// Sends the request to an endpoint of the route's backends, within the route's timeout;
/// `start` is when it came in (the balancer's latency counts from there).
async fn forward(
    mut req: Request<StreamBody>,
    route: &Route,
    service: &Service,
    ctx: &Context,
    start: Instant,
) -> Response<ProxyBody> {
    // An Upgrade (e.g. WebSocket): keep its headers, and join both sides after a 101.
    let upgrade = wants_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (picked, cluster) = match route.action.pick(random_u32()) {
        Ok(picked) => picked,
        Err(NoEndpoint::Empty { cluster }) => {
            let reason = format!(
                "no endpoints in {cluster} (route {} of {})",
                route.name, service.name
            );
            return mesh_error(StatusCode::SERVICE_UNAVAILABLE, &reason);
        }
        Err(NoEndpoint::Rejected(reason)) => {
            return mesh_error(StatusCode::INTERNAL_SERVER_ERROR, &reason);
        }
    };
    let endpoint = picked.addr;
    // In flight until the response head arrives; its latency feeds the balancer.
    let in_flight = picked.start_at(start);
    // URLRewrite and header modifier filters, on the way up.
    let path = route.rewrite.as_ref().map(|r| {
        let path = r.apply(req.uri().path(), route.matcher.path_prefix());
        req.uri()
            .query()
            .map_or_else(|| path.clone(), |q| format!("{path}?{q}"))
    });
    if route.edits.edits_request() {
        crate::raw_head::restore_request(&mut req);
        route.edits.apply_request(req.headers_mut());
    }
    if let Some(host) = &route.host_rewrite {
        req.headers_mut().insert(HOST, host.clone());
    }
    // A meshed endpoint is reached through its sidecar's peer port.
    let (peer, via, slot) = match picked
        .meshed()
        .then(|| {
            ctx.http
                .peer_route(req.version(), upgrade.is_some(), endpoint.ip(), start)
        })
        .flatten()
    {
        Some(route) => {
            let hop = PeerHop {
                port: ctx.config.peer_addr.port(),
                version: route.version,
                service: Some(&service.name),
                endpoint: &picked,
            };
            let via = if route.muxed { Via::PeerMux } else { Via::Peer };
            (Some(hop), via, route.slot)
        }
        None => (None, Via::Direct, None),
    };
    let addr = upstream_addr(endpoint, peer);
    if let Err(reason) =
        upstream_request(&mut req, endpoint, upgrade.is_some(), path.as_deref(), peer)
    {
        return mesh_error(StatusCode::BAD_REQUEST, &reason);
    }
    // The send is made in the arm that awaits it: one future held across the `await` would
    // take room of its own beside the timeout's copy of it.
    let result = match route.timeout {
        Some(limit) => {
            match tokio::time::timeout(limit, ctx.http.send(req, addr, via, upgrade.is_some()))
                .await
            {
                Ok(r) => r,
                Err(_) => {
                    let reason = format!(
                        "{endpoint} ({cluster}) did not answer within the route timeout {limit:?}"
                    );
                    return mesh_error(StatusCode::GATEWAY_TIMEOUT, &reason);
                }
            }
        }
        None => ctx.http.send(req, addr, via, upgrade.is_some()).await,
    };
    match result {
        Ok(mut resp) => {
            in_flight.answered();
            match upgrade {
                Some(downstream) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    join_upgraded(downstream, hyper::upgrade::on(&mut resp), endpoint);
                }
                _ => strip_hop_by_hop(resp.headers_mut()),
            }
            let mut kept = resp.body_mut().take_kept();
            if route.edits.edits_response() {
                crate::raw_head::restore_into(resp.headers_mut(), kept.take());
                route.edits.apply_response(resp.headers_mut());
            }
            match slot {
                Some(slot) => {
                    resp.map(|body| ProxyBody::with_kept(SlotBody::new(body, slot), kept))
                }
                None => resp.map(|body| ProxyBody::with_kept(body, kept)),
            }
        }
        Err(e) => {
            let why = if e.is_connect() {
                "cannot connect to"
            } else {
                "request failed to"
            };
            mesh_error(
                StatusCode::BAD_GATEWAY,
                &format!("{why} {endpoint} ({cluster}): {e}"),
            )
        }
    }
}

/// Whether the client asks to switch protocols (`Connection: upgrade` and an `Upgrade` header).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Once both sides have switched protocols, moves bytes between them until both are done.
pub fn join_upgraded(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    endpoint: SocketAddr,
) {
    tokio::spawn(async move {
        match tokio::try_join!(downstream, upstream) {
            Ok((down, up)) => {
                let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                    tracing::debug!(%endpoint, error = %e, "upgraded connection ended with an error");
                }
            }
            Err(e) => {
                tracing::warn!(%endpoint, error = %e, "mesh-proxy: protocol upgrade failed")
            }
        }
    });
}

/// How a request for a meshed endpoint goes: to its sidecar's peer `port`, in `version`,
/// naming the Service it was addressed to.
#[derive(Clone, Copy, Debug)]
struct PeerHop<'a> {
    port: u16,
    version: Version,
    service: Option<&'a str>,
    /// The endpoint behind that sidecar, which keeps the `x-mesh-hop` values sent to it.
    endpoint: &'a Endpoint,
}

/// Makes `req` the request as sent to `endpoint` (or its sidecar, `peer`): the client's
/// authority kept, hop-by-hop headers removed (except the upgrade headers of an upgrade
/// request). Its URI is what the pool needs: origin form in HTTP/1.1, absolute in HTTP/2 (see
/// [`target_uri`]). In place: taken apart and put back together, the request was copied
/// (`memcpy`, some 50 instructions a copy) five times.
fn upstream_request<B>(
    req: &mut Request<B>,
    endpoint: SocketAddr,
    upgrade: bool,
    rewritten: Option<&str>,
    peer: Option<PeerHop<'_>>,
) -> Result<(), String> {
    let addr = upstream_addr(endpoint, peer);
    let path = match rewritten {
        Some(path) => PathAndQuery::try_from(path)
            .map_err(|e| format!("cannot build the upstream URI for {path}: {e}"))?,
        // The client's path and query as they are (shared, not parsed again).
        None => path_and_query(req.uri()),
    };
    // Looked up only for an upgrade: every other request would pay for a lookup it never uses.
    let upgrade_to = upgrade
        .then(|| req.headers().get(UPGRADE).cloned())
        .flatten();
    strip_hop_by_hop(req.headers_mut());
    let version = match peer {
        // To the peer sidecar, with what it needs to restore the request (see
        // [`crate::hop`]). An HTTP/1.1 request says so on either carriage: the peer restores it
        // when it comes in HTTP/2, as chosen here or on a `mesh/h1` connection to a sidecar
        // that answered `mesh/h2` (one built before `mesh/h1`, see `Carriage::offers`), where
        // Host goes as is.
        Some(hop) => {
            let http1 = req.version() != Version::HTTP_2;
            req.headers_mut()
                .insert(HOP, hop.endpoint.hop_value(hop.service, http1));
            hop.version
        }
        None if req.version() != Version::HTTP_2 => Version::HTTP_11,
        None => Version::HTTP_2,
    };
    *req.version_mut() = version;
    // The client's URI, taken out (leaving "/") so that it can be read beside the fields.
    let uri = std::mem::take(req.uri_mut());
    *req.uri_mut() = target_uri(version, &uri, req.headers_mut(), addr, path)?;
    if let Some(protocol) = upgrade_to {
        let headers = req.headers_mut();
        headers.insert(UPGRADE, protocol);
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    Ok(())
}

/// Where a request for `endpoint` goes: the endpoint, or its sidecar's peer port.
fn upstream_addr(endpoint: SocketAddr, peer: Option<PeerHop<'_>>) -> SocketAddr {
    match peer {
        Some(hop) => SocketAddr::new(endpoint.ip(), hop.port),
        None => endpoint,
    }
}

/// The URI a request of `version` (its URI `uri`, its fields `headers`) goes upstream to `addr`
/// with, keeping the client's
/// authority as Linkerd and Envoy do (the app sees the Host or `:authority` the client sent):
/// - HTTP/2: absolute, with the request's authority: its URI's (it came in HTTP/2), else its
///   Host header's, which moves into `:authority` (a Host that is not a valid authority stays a
///   header), else `addr`'s;
/// - HTTP/1.1: origin form, with the Host header, else the URI's authority as Host (it came in
///   HTTP/2), else `addr`'s.
pub(crate) fn target_uri(
    version: Version,
    uri: &Uri,
    headers: &mut HeaderMap,
    addr: SocketAddr,
    path: PathAndQuery,
) -> Result<Uri, String> {
    if version == Version::HTTP_2 {
        let authority = match uri.authority() {
            Some(authority) => authority.clone(),
            None => match host_authority(headers) {
                Some(authority) => {
                    headers.remove(HOST);
                    authority
                }
                None => Authority::from_maybe_shared(Bytes::from(authority_of(addr)))
                    .map_err(|e| format!("cannot write the authority for {addr}: {e}"))?,
            },
        };
        // From its parts: the builder parses the scheme and copies the authority again.
        let mut uri = uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(authority);
        uri.path_and_query = Some(path);
        return Uri::from_parts(uri).map_err(|e| format!("cannot build the upstream URI: {e}"));
    }
    if !headers.contains_key(HOST) {
        let host = match uri.authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()),
            None => HeaderValue::try_from(authority_of(addr)),
        }
        .map_err(|e| format!("cannot write the Host header for {addr}: {e}"))?;
        headers.insert(HOST, host);
    }
    Ok(Uri::from(path))
}

/// The Host header as a URI authority, when it is one.
fn host_authority(headers: &HeaderMap) -> Option<Authority> {
    Authority::try_from(headers.get(HOST)?.as_bytes()).ok()
}

/// `addr` as a URI authority (`ip:port`, `[ip]:port`). IPv4 is written without `fmt`:
/// `SocketAddr::to_string` cost 1.6k instructions a request in callgrind's count
/// (benches/instructions.sh), and each side ran 1.0-1.4k fewer with this.
pub(crate) fn authority_of(addr: SocketAddr) -> String {
    let SocketAddr::V4(v4) = addr else {
        return addr.to_string();
    };
    // Bytes, then one check: a `char` pushed at a time cost ~100 instructions a number.
    let mut s = Vec::with_capacity(21);
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            s.push(b'.');
        }
        let (digits, start) = decimal(octet.into());
        s.extend_from_slice(&digits[start..]);
    }
    s.push(b':');
    let (digits, start) = decimal(v4.port());
    s.extend_from_slice(&digits[start..]);
    String::from_utf8(s).unwrap_or_else(|_| addr.to_string())
}

/// `n`'s decimal digits: `digits[start..]` of the pair returned.
pub(crate) fn decimal(mut n: u16) -> ([u8; 5], usize) {
    let mut digits = [0u8; 5];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    (digits, start)
}

/// The request target's path and query, `/` when it has none (an absolute-form URI without a
/// path, or an authority-form one).
pub(crate) fn path_and_query(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// Removes hop-by-hop headers, including those the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over their few headers costs less than a lookup for
    // each hop-by-hop name.
    let any = headers
        .iter()
        .any(|(name, value)| is_hop_by_hop(name) || (name == TE && value != "trailers"));
    if !any {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    let hop_by_hop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for name in named.into_iter().chain(hop_by_hop) {
        headers.remove(name);
    }
    if headers.get(TE).is_some_and(|v| v != "trailers") {
        headers.remove(TE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_those_connection_names() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        let names = |h: &HeaderMap| h.keys().map(|k| k.as_str().to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(&h),
            vec!["x-kept", "te"],
            "te: trailers passes (gRPC needs it)"
        );
        h.insert("te", HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), vec!["x-kept"], "any other te goes");
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "trailer",
            "upgrade",
            "Upgrade",
        ] {
            h.insert(name, HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h);
            assert_eq!(names(&h), vec!["x-kept"], "{name} alone goes too");
        }
    }

    #[test]
    fn authorities_are_written_as_socket_addresses_display_them() {
        for addr in [
            "0.0.0.0:0",
            "10.0.0.7:4143",
            "127.0.0.1:19000",
            "255.255.255.255:65535",
            "1.20.100.9:80",
            "[::1]:8080",
            "[fd00::7:1]:15006",
        ] {
            let addr: SocketAddr = addr.parse().expect("an address");
            assert_eq!(authority_of(addr), addr.to_string());
        }
    }

    #[test]
    fn without_an_identity_upgrades_go_directly_and_the_rest_in_http2() {
        let peer: IpAddr = [10, 0, 0, 7].into();
        for mode in [PeerHttp1::Http1, PeerHttp1::Http2, PeerHttp1::Auto] {
            let clients = HttpClients::new(Duration::from_secs(1), None, mode, 4);
            assert!(
                clients
                    .peer_route(Version::HTTP_11, true, peer, Instant::now())
                    .is_none()
            );
            let route = clients.peer_route(Version::HTTP_11, false, peer, Instant::now());
            assert_eq!(
                route.map(|r| (r.version, r.slot.is_some())),
                Some((Version::HTTP_2, false)),
                "plaintext peers speak only HTTP/2, whatever --peer-http1 {mode:?} says"
            );
            let route = clients.peer_route(Version::HTTP_2, false, peer, Instant::now());
            assert_eq!(route.map(|r| r.version), Some(Version::HTTP_2));
        }
    }

    #[test]
    fn mesh_errors_say_who_and_why() {
        let r = mesh_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no endpoints in web (route default of web)",
        );
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            r.headers().get(MESH_ERROR).and_then(|v| v.to_str().ok()),
            Some("mesh-proxy outbound: no endpoints in web (route default of web)")
        );
    }

    /// An HTTP/1.1 request to a peer says so whichever carriage it takes, so that a sidecar
    /// that answers `mesh/h1` with `mesh/h2` (built before `mesh/h1`) restores it; in HTTP/2 the
    /// Host travels as `:authority`, in HTTP/1.1 as itself.
    #[test]
    fn http1_requests_to_a_peer_say_they_were_http1_on_either_carriage() {
        let endpoint: SocketAddr = ([10, 0, 0, 7], 8080).into();
        let picked = Endpoint::new(endpoint);
        for (hop_version, host, uri) in [
            (Version::HTTP_11, Some("web"), "/users?id=1"),
            (Version::HTTP_2, None, "http://web/users?id=1"),
        ] {
            let req = Request::builder()
                .version(Version::HTTP_11)
                .uri("/users?id=1")
                .header(HOST, "web")
                .header(CONNECTION, "keep-alive")
                .body(())
                .expect("request");
            let hop = PeerHop {
                port: 4143,
                version: hop_version,
                service: Some("web.default"),
                endpoint: &picked,
            };
            let mut up = req;
            upstream_request(&mut up, endpoint, false, None, Some(hop)).expect("upstream");
            let header = |name: &str| up.headers().get(name).and_then(|v| v.to_str().ok());
            assert_eq!(up.version(), hop_version);
            assert_eq!(up.uri().to_string(), uri, "origin form in HTTP/1.1 only");
            assert_eq!(
                header(HOP.as_str()),
                Some("8080 h1 web.default"),
                "{hop_version:?}"
            );
            assert_eq!(header("host"), host, "{hop_version:?}");
            assert_eq!(header("x-mesh-orig-host"), None, "{hop_version:?}");
            assert_eq!(header("connection"), None);
        }
        // An HTTP/2 request stays HTTP/2, keeps its authority and says nothing of HTTP/1.1.
        let req = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://web.default.svc:80/")
            .body(())
            .expect("request");
        let hop = PeerHop {
            port: 4143,
            version: Version::HTTP_2,
            service: None,
            endpoint: &picked,
        };
        let mut up = req;
        upstream_request(&mut up, endpoint, false, None, Some(hop)).expect("upstream");
        assert_eq!(up.version(), Version::HTTP_2);
        assert_eq!(up.uri().to_string(), "http://web.default.svc:80/");
        assert_eq!(
            up.headers().get(HOP).and_then(|v| v.to_str().ok()),
            Some("8080 h2")
        );
    }

    /// Whichever protocols the two hops speak, the upstream sees the authority the client
    /// sent; only a request without one gets the address's.
    #[test]
    fn the_clients_authority_is_kept_across_protocols() {
        let addr: SocketAddr = ([127, 0, 0, 1], 8080).into();
        let target = |version_in, uri: &str, host: Option<&str>, version_out| {
            let mut req = Request::builder().version(version_in).uri(uri);
            if let Some(host) = host {
                req = req.header(HOST, host);
            }
            let (mut parts, ()) = req.body(()).expect("request").into_parts();
            parts.version = version_out;
            let path = path_and_query(&parts.uri);
            let uri = target_uri(parts.version, &parts.uri, &mut parts.headers, addr, path)
                .expect("target");
            let host = parts
                .headers
                .get(HOST)
                .map(|h| h.to_str().expect("ascii").to_string());
            (uri.to_string(), host)
        };
        let (h1, h2) = (Version::HTTP_11, Version::HTTP_2);
        let some = |s: &str| Some(s.to_string());
        // HTTP/1.1 in, HTTP/2 out: Host becomes :authority.
        assert_eq!(
            target(h1, "/a?b=1", Some("web:80"), h2),
            ("http://web:80/a?b=1".into(), None)
        );
        // HTTP/2 in, HTTP/1.1 out: :authority becomes Host.
        assert_eq!(
            target(h2, "http://web:80/a", None, h1),
            ("/a".into(), some("web:80"))
        );
        // HTTP/2 both ways, HTTP/1.1 both ways: as they are.
        assert_eq!(
            target(h2, "http://web/a", None, h2),
            ("http://web/a".into(), None)
        );
        assert_eq!(
            target(h1, "/a", Some("web"), h1),
            ("/a".into(), some("web"))
        );
        // No authority at all: the address's.
        assert_eq!(
            target(h1, "/a", None, h2),
            ("http://127.0.0.1:8080/a".into(), None)
        );
        assert_eq!(
            target(h1, "/a", None, h1),
            ("/a".into(), some("127.0.0.1:8080"))
        );
        // A Host that is no authority stays a header; :authority is the address's.
        assert_eq!(
            target(h1, "/a", Some("bad host"), h2),
            ("http://127.0.0.1:8080/a".into(), some("bad host"))
        );
    }
}
