//! Counters of the proxy, rendered in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::detect::Protocol;
use crate::tls::Carriage;

/// What connections from peer sidecars carry, in the order of [`Metrics::peers`].
const CARRIAGES: [Carriage; 4] = [
    Carriage::Http1,
    Carriage::Http2,
    Carriage::Tcp,
    Carriage::Mux,
];

/// Which listener a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the app in this pod to somewhere else.
    Outbound,
    /// From somewhere else to the app in this pod.
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Why the proxy closed a connection without forwarding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    /// The destination is the proxy itself: forwarding would loop.
    Loop,
    /// The connection was not redirected by iptables, so its destination is unknown.
    NoOriginalDst,
    /// The destination is a Service with no endpoint to send the connection to.
    NoEndpoint,
    /// A peer failed mutual TLS, or proved no mesh identity.
    Tls,
    /// Plaintext from outside the mesh where PeerAuthentication says STRICT.
    Plaintext,
    /// An AuthorizationPolicy denied it.
    Denied,
}

impl RefuseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::Loop => "loop",
            RefuseReason::NoOriginalDst => "no_original_dst",
            RefuseReason::NoEndpoint => "no_endpoint",
            RefuseReason::Tls => "tls",
            RefuseReason::Plaintext => "plaintext",
            RefuseReason::Denied => "denied",
        }
    }
}

/// TCP counters of one direction.
#[derive(Debug, Default)]
pub struct TcpMetrics {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    /// Bytes received from the downstream peer.
    pub received_bytes: AtomicU64,
    /// Bytes sent to the downstream peer.
    pub sent_bytes: AtomicU64,
    pub connect_errors: AtomicU64,
    refused_loop: AtomicU64,
    refused_no_orig_dst: AtomicU64,
    refused_tls: AtomicU64,
    refused_plaintext: AtomicU64,
    refused_denied: AtomicU64,
    refused_no_endpoint: AtomicU64,
}

impl TcpMetrics {
    pub fn refused(&self, reason: RefuseReason) -> &AtomicU64 {
        match reason {
            RefuseReason::Loop => &self.refused_loop,
            RefuseReason::NoOriginalDst => &self.refused_no_orig_dst,
            RefuseReason::NoEndpoint => &self.refused_no_endpoint,
            RefuseReason::Tls => &self.refused_tls,
            RefuseReason::Plaintext => &self.refused_plaintext,
            RefuseReason::Denied => &self.refused_denied,
        }
    }
}

/// All of the proxy's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    pub outbound: TcpMetrics,
    pub inbound: TcpMetrics,
    /// Inbound authorization decisions: `[protocol][allowed]`, protocol 0 = TCP, 1 = HTTP.
    authz: [[AtomicU64; 2]; 2],
    /// Protocol detection outcomes, by [`Protocol::ALL`] index.
    detected: [AtomicU64; 4],
    /// Connections accepted from peer sidecars, by [`CARRIAGES`] index.
    peers: [AtomicU64; 4],
}

/// Adds one to a counter.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Selects one counter of a [`TcpMetrics`].
type CounterField = fn(&TcpMetrics) -> &AtomicU64;

const DIRECTIONS: [Direction; 2] = [Direction::Inbound, Direction::Outbound];

impl Metrics {
    /// Counts one protocol detection outcome.
    pub fn detected(&self, protocol: Protocol) {
        let i = Protocol::ALL
            .iter()
            .position(|p| *p == protocol)
            .unwrap_or(3);
        inc(&self.detected[i]);
    }

    /// Counts one connection from a peer sidecar, which carries `carriage`.
    pub fn peer_connection(&self, carriage: Carriage) {
        let i = CARRIAGES.iter().position(|c| *c == carriage).unwrap_or(0);
        inc(&self.peers[i]);
    }

    /// Counts one authorization decision on an HTTP request (`http`) or a TCP connection.
    pub fn authz_decision(&self, http: bool, allowed: bool) {
        inc(&self.authz[usize::from(http)][usize::from(allowed)]);
    }

    pub fn tcp(&self, direction: Direction) -> &TcpMetrics {
        match direction {
            Direction::Outbound => &self.outbound,
            Direction::Inbound => &self.inbound,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let counters: [(&str, &str, CounterField); 5] = [
            (
                "mesh_tcp_connections_opened_total",
                "TCP connections forwarded by the proxy.",
                |m| &m.opened,
            ),
            (
                "mesh_tcp_connections_closed_total",
                "TCP connections the proxy finished forwarding.",
                |m| &m.closed,
            ),
            (
                "mesh_tcp_received_bytes_total",
                "Bytes received from the downstream peer.",
                |m| &m.received_bytes,
            ),
            (
                "mesh_tcp_sent_bytes_total",
                "Bytes sent to the downstream peer.",
                |m| &m.sent_bytes,
            ),
            (
                "mesh_tcp_connect_errors_total",
                "Failed connection attempts to the destination.",
                |m| &m.connect_errors,
            ),
        ];
        for (name, help, get) in counters {
            header(&mut out, name, help);
            for d in DIRECTIONS {
                let v = get(self.tcp(d)).load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{direction=\"{}\"}} {v}", d.as_str());
            }
        }
        let name = "mesh_tcp_connections_refused_total";
        header(
            &mut out,
            name,
            "Connections closed without forwarding, by reason.",
        );
        for d in DIRECTIONS {
            for r in [
                RefuseReason::Loop,
                RefuseReason::NoOriginalDst,
                RefuseReason::NoEndpoint,
                RefuseReason::Tls,
                RefuseReason::Plaintext,
                RefuseReason::Denied,
            ] {
                let v = self.tcp(d).refused(r).load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{name}{{direction=\"{}\",reason=\"{}\"}} {v}",
                    d.as_str(),
                    r.as_str()
                );
            }
        }
        let name = "mesh_protocol_detections_total";
        header(
            &mut out,
            name,
            "Outbound connections to HTTP Service ports, by the protocol detected (opaque: not HTTP, or nothing sent in time).",
        );
        for (i, protocol) in Protocol::ALL.iter().enumerate() {
            let v = self.detected[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{protocol=\"{}\"}} {v}", protocol.as_str());
        }
        let name = "mesh_peer_connections_total";
        header(
            &mut out,
            name,
            "Connections accepted from peer sidecars, by what they carry (their ALPN; a plaintext peer speaks mesh/h2).",
        );
        for (i, carriage) in CARRIAGES.iter().enumerate() {
            let v = self.peers[i].load(Ordering::Relaxed);
            let alpn = String::from_utf8_lossy(carriage.alpn());
            let _ = writeln!(out, "{name}{{carriage=\"{alpn}\"}} {v}");
        }
        let name = "mesh_authz_decisions_total";
        header(
            &mut out,
            name,
            "Inbound authorization decisions (AuthorizationPolicy), by protocol and decision.",
        );
        for (p, protocol) in ["tcp", "http"].iter().enumerate() {
            for (a, decision) in ["deny", "allow"].iter().enumerate() {
                let v = self.authz[p][a].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{name}{{protocol=\"{protocol}\",decision=\"{decision}\"}} {v}"
                );
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_counter_with_direction_labels() {
        let m = Metrics::default();
        inc(&m.outbound.opened);
        m.inbound.received_bytes.fetch_add(42, Ordering::Relaxed);
        inc(m.inbound.refused(RefuseReason::Loop));
        m.peer_connection(Carriage::Http1);
        let text = m.render();
        assert!(text.contains("mesh_peer_connections_total{carriage=\"mesh/h1\"} 1\n"));
        assert!(text.contains("mesh_peer_connections_total{carriage=\"mesh/h2\"} 0\n"));
        assert!(text.contains("mesh_tcp_connections_opened_total{direction=\"outbound\"} 1\n"));
        assert!(text.contains("mesh_tcp_connections_opened_total{direction=\"inbound\"} 0\n"));
        assert!(text.contains("mesh_tcp_received_bytes_total{direction=\"inbound\"} 42\n"));
        assert!(text.contains(
            "mesh_tcp_connections_refused_total{direction=\"inbound\",reason=\"loop\"} 1\n"
        ));
        assert!(text.contains("# TYPE mesh_tcp_sent_bytes_total counter\n"));
        assert!(text.contains("mesh_tcp_connections_closed_total{direction=\"inbound\"} 0\n"));
    }
}
