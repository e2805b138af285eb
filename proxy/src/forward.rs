//! One accepted connection: where it goes (or why it is refused), then the relay.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::authz::{Attempt, MtlsMode, Verdict};
use crate::balance::Endpoint;
use crate::config::ProxyConfig;
use crate::detect::{Protocol, detect};
use crate::metrics::{Direction, Metrics, RefuseReason, TcpMetrics, inc};
use crate::orig_dst::original_dst;
use crate::peer_client::open_tcp;
use crate::relay::{Counters, relay};
use crate::routing::{NoEndpoint, random_u32};
use crate::tls::MeshTls;
use crate::xds::Xds;

/// What the proxy does with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Forward(SocketAddr),
    Refuse(RefuseReason),
}

/// Decides where a connection goes from its original destination (pure).
///
/// - Not redirected (no original destination, or it equals the listener's own address): refused,
///   since the proxy cannot know where the client meant to go, and a client dialing the proxy port
///   directly must not make the proxy dial itself.
/// - Inbound to one of the proxy's own ports: refused (loop).
/// - Inbound otherwise: to the app on the loopback address of the same family, same port.
/// - Outbound: to the original destination (passthrough; no control plane yet).
pub fn decide(
    direction: Direction,
    orig: io::Result<SocketAddr>,
    local: SocketAddr,
    own_ports: &[u16],
) -> Decision {
    let Ok(orig) = orig else {
        return Decision::Refuse(RefuseReason::NoOriginalDst);
    };
    if orig == local {
        return Decision::Refuse(RefuseReason::Loop);
    }
    let own_port = own_ports.contains(&orig.port());
    match direction {
        Direction::Inbound if own_port => Decision::Refuse(RefuseReason::Loop),
        Direction::Inbound => {
            let lo: IpAddr = match orig {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            };
            Decision::Forward(SocketAddr::new(lo, orig.port()))
        }
        Direction::Outbound if own_port && orig.ip().is_loopback() => {
            Decision::Refuse(RefuseReason::Loop)
        }
        Direction::Outbound => Decision::Forward(orig),
    }
}

/// What every connection handler shares.
#[derive(Debug)]
pub struct Context {
    pub config: ProxyConfig,
    pub metrics: Metrics,
    pub xds: Arc<Xds>,
    /// Pooled upstream HTTP connections.
    pub http: crate::http::HttpClients,
    /// Mutual TLS between sidecars, when the proxy has an identity.
    pub tls: Option<Arc<crate::tls::MeshTls>>,
    /// The end of startup, for giving its pages back ([`crate::resident`]).
    pub first_connection: crate::resident::FirstConnection,
}

/// Where an outbound connection goes.
enum Outbound {
    /// Not a Service: straight to the original destination.
    Passthrough(SocketAddr),
    /// An opaque Service port: to this endpoint, bytes as they are.
    Opaque(Arc<Endpoint>),
    /// An HTTP Service port: each request is routed on its own.
    Http,
}

/// Where an outbound connection to `orig` goes.
fn resolve_outbound(xds: &Xds, orig: SocketAddr) -> Result<Outbound, String> {
    let routing = xds.routing.load();
    let Some(service) = routing.service(&orig) else {
        return Ok(Outbound::Passthrough(orig));
    };
    if service.http {
        return Ok(Outbound::Http);
    }
    match service.pick(random_u32()) {
        Ok((endpoint, _cluster)) => Ok(Outbound::Opaque(endpoint)),
        Err(NoEndpoint::Empty { cluster }) => Err(format!(
            "service {} has no endpoints (cluster {cluster})",
            service.name
        )),
        Err(NoEndpoint::Rejected(reason)) => Err(format!("service {}: {reason}", service.name)),
    }
}

impl Context {
    /// A context for unit tests: default configuration, no control plane, no identity.
    #[cfg(test)]
    pub fn for_tests() -> Context {
        Context {
            config: ProxyConfig::default(),
            metrics: Metrics::default(),
            http: crate::http::HttpClients::new(
                std::time::Duration::from_secs(1),
                None,
                crate::config::PeerHttp1::Auto,
                4,
            ),
            xds: Arc::new(Xds::standalone()),
            tls: None,
            first_connection: Default::default(),
        }
    }

    /// Checks `attempt` against this workload's AuthorizationPolicies, and counts the decision.
    pub fn authorize(&self, attempt: &Attempt<'_>) -> Verdict {
        let verdict = self.xds.policy.load().check(attempt);
        self.metrics
            .authz_decision(attempt.http.is_some(), verdict == Verdict::Allow);
        verdict
    }
}

/// Whether a plaintext inbound connection to app port `port` may go on: not under STRICT, and
/// allowed by authorization (as a caller without identity).
fn admit_plaintext(ctx: &Context, port: u16) -> Result<(), (RefuseReason, String)> {
    let policy = ctx.xds.policy.load();
    if policy.mode == MtlsMode::Strict {
        return Err((
            RefuseReason::Plaintext,
            format!(
                "mutual TLS is required ({} says STRICT)",
                policy.mode_source
            ),
        ));
    }
    let attempt = Attempt {
        source: None,
        port,
        http: None,
    };
    match ctx.authorize(&attempt) {
        Verdict::Allow => Ok(()),
        Verdict::Deny(reason) => Err((RefuseReason::Denied, reason)),
    }
}

/// Handles one accepted connection to its end.
pub async fn handle(
    downstream: TcpStream,
    peer: SocketAddr,
    direction: Direction,
    ctx: Arc<Context>,
) {
    let metrics = ctx.metrics.tcp(direction);
    let local = match downstream.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection gone before it could be handled");
            return;
        }
    };
    let orig = match (direction, ctx.config.outbound_destination) {
        (Direction::Outbound, Some(fixed)) => Ok(fixed),
        _ => original_dst(&downstream),
    };
    let decision = decide(direction, orig, local, &ctx.config.own_ports());
    // An opaque connection to a Service endpoint counts as a request in flight while it lasts.
    let mut in_flight = None;
    // A meshed endpoint is reached through its sidecar, over mutual TLS.
    let mut via_peer = None;
    let target = match decision {
        Decision::Forward(orig) if direction == Direction::Outbound => {
            match resolve_outbound(&ctx.xds, orig) {
                Ok(Outbound::Passthrough(target)) => target,
                Ok(Outbound::Opaque(endpoint)) => {
                    in_flight = Some(endpoint.start());
                    if let (true, Some(tls)) = (endpoint.meshed(), &ctx.tls) {
                        via_peer = Some(tls.clone());
                    }
                    endpoint.addr
                }
                Ok(Outbound::Http) => {
                    return serve_http(downstream, peer, orig, direction, ctx.clone()).await;
                }
                Err(why) => {
                    inc(metrics.refused(RefuseReason::NoEndpoint));
                    tracing::warn!(%peer, dst = %orig, "mesh-proxy refused connection: {why}");
                    return;
                }
            }
        }
        Decision::Forward(target) => {
            // Inbound plaintext: from outside the mesh (sidecars come in on the peer port).
            if let Err(reason) = admit_plaintext(&ctx, target.port()) {
                inc(metrics.refused(reason.0));
                tracing::warn!(%peer, port = target.port(), "mesh-proxy inbound: refused plaintext: {}", reason.1);
                return;
            }
            target
        }
        Decision::Refuse(reason) => {
            inc(metrics.refused(reason));
            tracing::info!(
                dir = direction.as_str(),
                %peer,
                %local,
                reason = reason.as_str(),
                "mesh-proxy refused connection: its destination is the proxy itself or unknown"
            );
            return;
        }
    };
    let span = tracing::info_span!("conn", dir = direction.as_str(), %peer, dst = %target);
    async {
        let _in_flight = in_flight;
        inc(&metrics.opened);
        if let Some(tls) = via_peer {
            return to_peer_tcp(downstream, b"", target, &tls, &ctx, metrics).await;
        }
        let start = Instant::now();
        let upstream = match tokio::time::timeout(
            ctx.config.connect_timeout,
            crate::local_hop::connect(target),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return connect_failed(&downstream, metrics, &e.to_string()),
            Err(_) => return connect_failed(&downstream, metrics, "timed out"),
        };
        let _ = downstream.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let counters = Counters {
            from_downstream: &metrics.received_bytes,
            to_downstream: &metrics.sent_bytes,
        };
        let result = relay(downstream, upstream, b"", ctx.config.relay_mode, counters).await;
        inc(&metrics.closed);
        let duration_ms = start.elapsed().as_millis() as u64;
        match result {
            Ok(t) => tracing::debug!(
                bytes_in = t.from_downstream,
                bytes_out = t.to_downstream,
                duration_ms,
                "closed"
            ),
            Err(e) => tracing::debug!(error = %e, duration_ms, "closed with error"),
        }
    }
    .instrument(span)
    .await
}

/// Resets the downstream connection so the client sees the failure, and logs who failed and why.
fn connect_failed(downstream: &TcpStream, metrics: &TcpMetrics, why: &str) {
    inc(&metrics.connect_errors);
    inc(&metrics.closed);
    let _ = socket2::SockRef::from(downstream).set_linger(Some(std::time::Duration::ZERO));
    tracing::warn!(
        error = why,
        "mesh-proxy could not connect to the destination; resetting the client connection"
    );
}

/// An opaque stream to the meshed endpoint `target`: through its sidecar's peer port, over
/// mutual TLS (`mesh/tcp`), `prefix` (bytes already read from the client) first.
async fn to_peer_tcp(
    mut downstream: TcpStream,
    prefix: &[u8],
    target: SocketAddr,
    tls: &MeshTls,
    ctx: &Context,
    metrics: &TcpMetrics,
) {
    let peer = SocketAddr::new(target.ip(), ctx.config.peer_addr.port());
    let opened = open_tcp(
        tls,
        &ctx.xds,
        peer,
        target.port(),
        ctx.config.connect_timeout,
    )
    .await;
    let mut upstream = match opened {
        Ok(s) => s,
        Err(e) => return connect_failed(&downstream, metrics, &e.to_string()),
    };
    let _ = downstream.set_nodelay(true);
    if !prefix.is_empty() {
        if let Err(e) = upstream.write_all(prefix).await {
            inc(&metrics.closed);
            tracing::debug!(error = %e, "peer stream failed");
            return;
        }
    }
    match crate::relay::copy_through_tls(&mut downstream, &mut upstream).await {
        Ok((up, down)) => {
            metrics
                .received_bytes
                .fetch_add(up + prefix.len() as u64, Ordering::Relaxed);
            metrics.sent_bytes.fetch_add(down, Ordering::Relaxed);
            tracing::debug!(bytes_in = up, bytes_out = down, "closed (mTLS)");
        }
        Err(e) => tracing::debug!(error = %e, "closed with error (mTLS)"),
    }
    inc(&metrics.closed);
}

/// An outbound connection to an HTTP Service port: detect the protocol, then route HTTP/1.1
/// requests one by one; anything else goes through as bytes by the catch-all route.
async fn serve_http(
    mut downstream: TcpStream,
    peer: SocketAddr,
    vip: SocketAddr,
    direction: Direction,
    ctx: Arc<Context>,
) {
    let span = tracing::info_span!("conn", dir = "outbound", %peer, service = %vip);
    let metrics = ctx.metrics.tcp(direction);
    async {
        inc(&metrics.opened);
        let (protocol, prefix) = match detect(&mut downstream, ctx.config.detect_timeout).await {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(error = %e, "connection failed during protocol detection");
                inc(&metrics.closed);
                return;
            }
        };
        tracing::debug!(protocol = protocol.as_str(), "detected");
        ctx.metrics.detected(protocol);
        let _ = downstream.set_nodelay(true);
        if matches!(protocol, Protocol::Http1 | Protocol::Http2) {
            // Boxed: inline, the HTTP server's state would make every connection's task as
            // large, the opaque ones' too (their first stream through the mTLS pair ran 15-20%
            // slower with the HTTP/1.1 server's state inline; see benches/RESULTS.md).
            Box::pin(crate::http::serve_outbound(
                downstream,
                prefix,
                vip,
                ctx.clone(),
                protocol,
            ))
            .await;
            inc(&metrics.closed);
            return;
        }
        let picked = {
            let routing = ctx.xds.routing.load();
            routing
                .service(&vip)
                .and_then(|s| s.pick(random_u32()).ok())
                .map(|(endpoint, _)| endpoint)
        };
        let Some(endpoint) = picked else {
            inc(metrics.refused(RefuseReason::NoEndpoint));
            inc(&metrics.closed);
            tracing::warn!(
                "mesh-proxy refused connection: no endpoint for {vip} ({} traffic)",
                protocol.as_str()
            );
            return;
        };
        let _in_flight = endpoint.start();
        if let (true, Some(tls)) = (endpoint.meshed(), &ctx.tls) {
            return to_peer_tcp(downstream, &prefix, endpoint.addr, tls, &ctx, metrics).await;
        }
        let upstream = match tokio::time::timeout(
            ctx.config.connect_timeout,
            crate::local_hop::connect(endpoint.addr),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return connect_failed(&downstream, metrics, &e.to_string()),
            Err(_) => return connect_failed(&downstream, metrics, "timed out"),
        };
        let _ = upstream.set_nodelay(true);
        let counters = Counters {
            from_downstream: &metrics.received_bytes,
            to_downstream: &metrics.sent_bytes,
        };
        if let Err(e) = relay(
            downstream,
            upstream,
            &prefix,
            ctx.config.relay_mode,
            counters,
        )
        .await
        {
            tracing::debug!(error = %e, "closed with error");
        }
        inc(&metrics.closed);
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: [u16; 3] = [15001, 15006, 15000];

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn outbound_passes_through_to_the_original_destination() {
        let d = decide(
            Direction::Outbound,
            Ok(addr("10.0.0.3:8080")),
            addr("10.0.0.2:15001"),
            &OWN,
        );
        assert_eq!(d, Decision::Forward(addr("10.0.0.3:8080")));
    }

    #[test]
    fn inbound_goes_to_the_app_on_loopback_of_the_same_family() {
        let d = decide(
            Direction::Inbound,
            Ok(addr("10.0.0.3:8080")),
            addr("10.0.0.3:15006"),
            &OWN,
        );
        assert_eq!(d, Decision::Forward(addr("127.0.0.1:8080")));
        let d = decide(
            Direction::Inbound,
            Ok(addr("[fd00::3]:8080")),
            addr("[fd00::3]:15006"),
            &OWN,
        );
        assert_eq!(d, Decision::Forward(addr("[::1]:8080")));
    }

    #[test]
    fn direct_connections_to_the_proxy_are_refused() {
        let local = addr("127.0.0.1:15001");
        assert_eq!(
            decide(Direction::Outbound, Ok(local), local, &OWN),
            Decision::Refuse(RefuseReason::Loop)
        );
        let not_found = Err(io::ErrorKind::NotFound.into());
        assert_eq!(
            decide(Direction::Outbound, not_found, local, &OWN),
            Decision::Refuse(RefuseReason::NoOriginalDst)
        );
        // A remote client that dialled the inbound port itself was redirected onto it.
        let d = decide(
            Direction::Inbound,
            Ok(addr("10.0.0.3:15006")),
            addr("10.0.0.3:15006"),
            &OWN,
        );
        assert_eq!(d, Decision::Refuse(RefuseReason::Loop));
        let d = decide(
            Direction::Inbound,
            Ok(addr("10.0.0.3:15001")),
            addr("10.0.0.3:15006"),
            &OWN,
        );
        assert_eq!(d, Decision::Refuse(RefuseReason::Loop));
    }
}
