//! The proxy's settings, as given by flags.

use std::net::SocketAddr;
use std::time::Duration;

/// How plain L4 bytes are moved between two sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RelayMode {
    /// splice(2) through a pipe: the payload never enters user space. The default.
    Splice,
    /// Copy when the upstream is on this host (the app behind the inbound side, anything on
    /// loopback), splice otherwise: splice hands the receiver the pages the sender wrote on
    /// another core, which a receiver on the proxy's own host may then read cold, while a copy
    /// hands it pages warm in the proxy's cache. Faster on some hosts, slower on others (see
    /// `crate::relay`).
    Auto,
    /// read/write through a user-space buffer.
    Copy,
}

/// How a client's HTTP/1.1 requests travel to a peer sidecar. (HTTP/2 requests, gRPC among
/// them, always go over the peer's multiplexed HTTP/2 connection, and protocol upgrades such as
/// WebSocket always over `mesh/h1`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerHttp1 {
    /// As HTTP/1.1, over pooled mutual-TLS connections that carry one request at a time
    /// (`mesh/h1`), as Istio's sidecars do.
    Http1,
    /// In HTTP/2, multiplexed with the other requests to that peer (`mesh/h2`), as Linkerd's
    /// proxies do.
    Http2,
    /// As HTTP/1.1 on streams multiplexed over one connection per peer (`mesh/mux`, see
    /// [`crate::mux`]).
    Mux,
    /// As HTTP/1.1 while fewer than `peer_http1_slots` of the clients' HTTP/1.1 requests to that
    /// peer are in flight (on either carriage), on `mesh/mux` beyond that and for a short hold
    /// after ([`crate::peer_carriage`]).
    Auto,
}

/// Everything the proxy needs to start.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub outbound_addr: SocketAddr,
    pub inbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Where peer sidecars connect with HTTP/2 (the init step never redirects this port).
    pub peer_addr: SocketAddr,
    /// How long open connections may take to finish once a drain starts.
    pub drain_timeout: Duration,
    /// Timeout of a connection attempt to the destination.
    pub connect_timeout: Duration,
    pub relay_mode: RelayMode,
    pub peer_http1: PeerHttp1,
    /// Under [`PeerHttp1::Auto`], how many requests at once per peer go on `mesh/h1`.
    pub peer_http1_slots: usize,
    /// How long to wait for a client's first bytes on an HTTP port before treating the
    /// connection as opaque TCP (opaque ports skip detection).
    pub detect_timeout: Duration,
    /// The control plane to follow; none means passthrough only.
    pub xds: Option<crate::xds::client::XdsConfig>,
    /// Every outbound connection goes to this destination, as if the app had dialled it: for a
    /// sidecar without the init step's redirect (an egress point, the benchmarks).
    pub outbound_destination: Option<SocketAddr>,
    /// The workload identity to get from meshd's CA; none means no mutual TLS.
    pub identity: Option<crate::identity::IdentityConfig>,
    /// The congestion control for connections whose two ends are on this host, and the host's
    /// default for the others ([`crate::local_hop`]); none leaves every connection on the
    /// host's default.
    pub local_congestion: Option<crate::local_hop::Choice>,
    /// Once ready, give back the pages of code and read-only data that only startup ran
    /// ([`crate::resident`]).
    pub release_startup_pages: bool,
}

impl ProxyConfig {
    /// Ports this proxy listens on; a connection whose original destination is one of these on
    /// this pod would loop back into the proxy.
    pub fn own_ports(&self) -> [u16; 4] {
        [
            self.outbound_addr.port(),
            self.inbound_addr.port(),
            self.admin_addr.port(),
            self.peer_addr.port(),
        ]
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            outbound_addr: SocketAddr::from(([0, 0, 0, 0], 15001)),
            inbound_addr: SocketAddr::from(([0, 0, 0, 0], 15006)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 15000)),
            peer_addr: SocketAddr::from(([0, 0, 0, 0], 15008)),
            drain_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            relay_mode: RelayMode::Splice,
            peer_http1: PeerHttp1::Auto,
            peer_http1_slots: 4,
            detect_timeout: Duration::from_secs(1),
            xds: None,
            outbound_destination: None,
            identity: None,
            local_congestion: None,
            release_startup_pages: true,
        }
    }
}

/// Parses a duration such as `500ms`, `30s`, `2m` or `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (expected e.g. 500ms, 30s, 2m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m or h)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("s").is_err());
    }
}
