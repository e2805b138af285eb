//! Connections between two ends on this host, sent without pacing.
//!
//! A sidecar's hops to and from its own app, and any hop to a loopback address, never leave the
//! host: there is no link whose queue pacing could spare. Under a congestion control that paces
//! (BBR, often the host's default), Linux paces such a socket itself, with a timer per burst
//! whose work lands on whichever task the core is running, and on loopback that is the receiver
//! or the sidecar. One sidecar relaying one stream on loopback, side by side in the benchmark
//! harness with its hops on the host's BBR and not, lost 10-12% of its throughput to that
//! pacing (`benches/RESULTS.md`, "Before midnight, 2026-12-07"). So the sidecar gives each TCP connection whose two ends are on this host
//! a congestion control that does not pace (`cubic` unless told otherwise), and leaves every
//! other connection on the host's default.
//!
//! The choice is made once at startup ([`init`]) and read by every connection ([`tune`]), as
//! the host's own socket defaults are.

use std::ffi::OsString;
use std::net::IpAddr;
use std::sync::OnceLock;

use nix::sys::socket::{setsockopt, sockopt::TcpCongestion};
use tokio::net::TcpStream;

/// The longest name the kernel takes (`TCP_CA_NAME_MAX` less its terminating zero).
const NAME_MAX: usize = 15;

/// The congestion control used when none is given, where the kernel has it.
pub const DEFAULT: &str = "cubic";

/// A congestion control's name, as `TCP_CONGESTION` takes it (checked to be short ASCII).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Congestion(OsString);

/// A `--local-congestion` value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "congestion control `{0}` is not a name the kernel could have (1 to {NAME_MAX} of a-z, 0-9, _)"
    )]
    BadName(String),
    #[error(
        "congestion control `{name}` cannot be set on this host ({source}); see \
         /proc/sys/net/ipv4/tcp_allowed_congestion_control, or pass `system` to keep the host's"
    )]
    Unavailable {
        name: String,
        source: std::io::Error,
    },
}

impl Congestion {
    /// A name as given on the command line (`system` is handled by the caller).
    pub fn parse(name: &str) -> Result<Congestion, Error> {
        let valid = !name.is_empty()
            && name.len() <= NAME_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid {
            Ok(Congestion(OsString::from(name)))
        } else {
            Err(Error::BadName(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        // Always ASCII: `parse` let nothing else in.
        self.0.to_str().unwrap_or_default()
    }

    /// Whether this host lets the proxy set it: tried on a socket that is never connected.
    pub fn check(&self) -> Result<(), Error> {
        let unavailable = |source| Error::Unavailable {
            name: self.as_str().to_owned(),
            source,
        };
        let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .map_err(unavailable)?;
        setsockopt(&probe, TcpCongestion, &self.0).map_err(|e| unavailable(e.into()))
    }
}

static CHOSEN: OnceLock<Option<Congestion>> = OnceLock::new();

/// Sets, once, what [`tune`] gives local connections: `None` leaves them on the host's
/// default. Later calls change nothing.
pub fn init(congestion: Option<Congestion>) {
    let _ = CHOSEN.set(congestion);
}

/// The socket's peer is on this host: on loopback, or at the socket's own address (a pod's own
/// IP, which the kernel routes through loopback).
pub fn on_this_host(stream: &TcpStream) -> bool {
    match (stream.peer_addr(), stream.local_addr()) {
        (Ok(peer), Ok(local)) => same_host(peer.ip(), local.ip()),
        _ => false,
    }
}

/// `peer`, as seen from a socket bound to `local`, is on this host.
fn same_host(peer: IpAddr, local: IpAddr) -> bool {
    let peer = peer.to_canonical();
    peer.is_loopback() || peer == local.to_canonical()
}

/// Gives `stream` the chosen congestion control if both its ends are on this host.
pub fn tune(stream: &TcpStream) {
    if let Some(Some(congestion)) = CHOSEN.get() {
        tune_with(stream, congestion);
    }
}

/// [`tune`] with an explicit choice. A failure (the socket already closed, say) leaves the
/// connection on the host's default, which works, only slower.
pub fn tune_with(stream: &TcpStream, congestion: &Congestion) {
    if !on_this_host(stream) {
        return;
    }
    if let Err(e) = setsockopt(stream, TcpCongestion, &congestion.0) {
        tracing::debug!(error = %e, congestion = congestion.as_str(), "left on the host's congestion control");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::getsockopt;
    use tokio::net::TcpListener;

    fn algorithm(stream: &TcpStream) -> String {
        let name = getsockopt(stream, TcpCongestion).expect("TCP_CONGESTION");
        name.to_string_lossy().trim_end_matches('\0').to_owned()
    }

    #[test]
    fn names_are_checked_before_the_kernel_sees_them() {
        assert_eq!(
            Congestion::parse("cubic").expect("a good name").as_str(),
            "cubic"
        );
        for bad in ["", "Cubic", "cu bic", "a_name_too_long_x", "bbr\0"] {
            let e = Congestion::parse(bad).expect_err("a bad name").to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn a_name_the_kernel_lacks_is_refused_with_where_to_look() {
        let e = Congestion::parse("no_such_algo")
            .expect("a good name")
            .check()
            .expect_err("no such algorithm");
        assert!(
            e.to_string().contains("tcp_allowed_congestion_control"),
            "{e}"
        );
    }

    #[test]
    fn the_same_host_is_loopback_or_the_sockets_own_address() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(same_host(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(same_host(ip("127.0.0.6"), ip("10.0.0.4")));
        assert!(same_host(ip("::1"), ip("::1")));
        assert!(same_host(ip("::ffff:127.0.0.1"), ip("::ffff:10.0.0.4")));
        assert!(same_host(ip("10.0.0.4"), ip("10.0.0.4")));
        assert!(same_host(ip("::ffff:10.0.0.4"), ip("10.0.0.4")));
        assert!(!same_host(ip("10.0.0.5"), ip("10.0.0.4")));
        assert!(!same_host(ip("fd00::5"), ip("fd00::4")));
    }

    #[tokio::test]
    async fn a_loopback_connection_gets_the_chosen_algorithm_on_both_ends() {
        // Whichever of the two the host defaults to, the test asks for the other.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let wanted = if algorithm(&client) == "reno" {
            "cubic"
        } else {
            "reno"
        };
        let congestion = Congestion::parse(wanted).expect("a good name");
        congestion.check().expect("the kernel has reno and cubic");
        tune_with(&client, &congestion);
        tune_with(&server, &congestion);
        assert_eq!(algorithm(&client), wanted);
        assert_eq!(algorithm(&server), wanted);
    }
}
