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
//! The congestion control has to be in place before the handshake. Set on an established
//! connection, it replaces the host's algorithm but not the pacing that BBR asked for when it
//! started the connection (Linux keeps the socket's "pacing needed" mark, and paces at the new
//! algorithm's rate): the timer stays, and on a core that falls behind it throttles the stream
//! (`benches/l4-receive-cpu.sh`; `benches/RESULTS.md`, "After midnight, 2026-12-08"). So the
//! listeners carry the local choice, which the connections they accept inherit, and outgoing
//! connections are made through [`connect`], which sets it before connecting; each connection
//! that then turns out to leave the host is given the host's default back ([`settle`]), which
//! starts that algorithm afresh, as the host would have.
//!
//! The choice is made once at startup ([`init`]) and read by every connection, as the host's
//! own socket defaults are.

use std::ffi::OsString;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::OnceLock;

use nix::sys::socket::{setsockopt, sockopt::TcpCongestion};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The longest name the kernel takes (`TCP_CA_NAME_MAX` less its terminating zero).
const NAME_MAX: usize = 15;

/// The congestion control used when none is given, where the kernel has it.
pub const DEFAULT: &str = "cubic";

/// Where the host's default congestion control is named.
const HOST_DEFAULT: &str = "/proc/sys/net/ipv4/tcp_congestion_control";

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
    Unavailable { name: String, source: io::Error },
    #[error(
        "cannot read the host's default congestion control from {HOST_DEFAULT} ({0}), which \
         connections that leave the host must keep; pass `system` to keep it for every connection"
    )]
    HostDefault(String),
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

    /// Sets it on `socket`. A failure (the connection already closed, say) leaves the socket
    /// on what it had, which works, only slower or paced.
    fn set_on(&self, socket: &impl AsFd) {
        if let Err(e) = setsockopt(socket, TcpCongestion, &self.0) {
            tracing::debug!(error = %e, congestion = self.as_str(), "congestion control not set");
        }
    }
}

/// The host's default congestion control, as [`HOST_DEFAULT`] names it.
pub fn host_default() -> Result<Congestion, Error> {
    let name =
        std::fs::read_to_string(HOST_DEFAULT).map_err(|e| Error::HostDefault(e.to_string()))?;
    Congestion::parse(name.trim()).map_err(|e| Error::HostDefault(e.to_string()))
}

/// What local connections get, and what the others are given back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub local: Congestion,
    pub host: Congestion,
}

impl Choice {
    /// `local` for connections on this host; `None` when it is the host's default already
    /// (nothing to do).
    pub fn new(local: Congestion, host: Congestion) -> Option<Choice> {
        (local != host).then_some(Choice { local, host })
    }
}

static CHOSEN: OnceLock<Option<Choice>> = OnceLock::new();

/// Sets, once, what local connections get: `None` leaves every connection on the host's
/// default. Later calls change nothing.
pub fn init(choice: Option<Choice>) {
    let _ = CHOSEN.set(choice);
}

fn chosen() -> Option<&'static Choice> {
    CHOSEN.get().and_then(Option::as_ref)
}

/// Gives `listener` the local choice, which the connections it accepts inherit from their
/// first packet; [`settle`] gives the host's back to those that come from elsewhere.
pub fn listen(listener: &TcpListener) {
    if let Some(choice) = chosen() {
        choice.local.set_on(listener);
    }
}

/// Connects to `addr` with the local choice in place before the handshake; [`settle`]d once
/// connected.
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(choice) = chosen() {
        choice.local.set_on(&socket);
    }
    let stream = socket.connect(addr).await?;
    settle(&stream);
    Ok(stream)
}

/// Gives a connection made through [`listen`] or [`connect`] what its ends call for: the
/// local choice if both are on this host (already in place, so this changes nothing), the
/// host's default otherwise.
pub fn settle(stream: &TcpStream) {
    if let Some(choice) = chosen() {
        settle_with(stream, choice);
    }
}

fn settle_with(stream: &TcpStream, choice: &Choice) {
    if on_this_host(stream) {
        choice.local.set_on(stream);
    } else {
        choice.host.set_on(stream);
    }
}

/// The socket's peer is on this host: either end on loopback, or the peer at the socket's own
/// address (a pod's own IP, which the kernel routes through loopback).
///
/// A socket whose own end is on loopback has its peer here too: Linux takes a loopback
/// destination only from the loopback device. That is the app's hop to its sidecar in a pod,
/// which the init step's REDIRECT sends to 127.0.0.1 from the pod's own IP.
pub fn on_this_host(stream: &TcpStream) -> bool {
    match (stream.peer_addr(), stream.local_addr()) {
        (Ok(peer), Ok(local)) => same_host(peer.ip(), local.ip()),
        _ => false,
    }
}

/// `peer`, as seen from a socket bound to `local`, is on this host.
fn same_host(peer: IpAddr, local: IpAddr) -> bool {
    let (peer, local) = (peer.to_canonical(), local.to_canonical());
    peer.is_loopback() || local.is_loopback() || peer == local
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
    fn the_same_host_is_either_end_on_loopback_or_the_sockets_own_address() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(same_host(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(same_host(ip("127.0.0.6"), ip("10.0.0.4")));
        assert!(same_host(ip("::1"), ip("::1")));
        assert!(same_host(ip("::ffff:127.0.0.1"), ip("::ffff:10.0.0.4")));
        assert!(same_host(ip("10.0.0.4"), ip("10.0.0.4")));
        assert!(same_host(ip("::ffff:10.0.0.4"), ip("10.0.0.4")));
        // An app's connection redirected to its sidecar: from the pod's IP to 127.0.0.1.
        assert!(same_host(ip("10.0.0.4"), ip("127.0.0.1")));
        assert!(same_host(ip("fd00::4"), ip("::1")));
        assert!(same_host(ip("10.0.0.4"), ip("::ffff:127.0.0.1")));
        assert!(!same_host(ip("10.0.0.5"), ip("10.0.0.4")));
        assert!(!same_host(ip("fd00::5"), ip("fd00::4")));
    }

    /// Whichever of reno and cubic the host does not default to.
    fn other_than_the_hosts() -> Choice {
        let host = host_default().expect("the host's default");
        let local = if host.as_str() == "reno" {
            "cubic"
        } else {
            "reno"
        };
        let local = Congestion::parse(local).expect("a good name");
        local.check().expect("the kernel has reno and cubic");
        Choice::new(local, host).expect("two algorithms")
    }

    #[tokio::test]
    async fn a_loopback_connection_has_the_choice_on_both_ends_from_the_start() {
        let choice = other_than_the_hosts();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        choice.local.set_on(&listener);
        let socket = TcpSocket::new_v4().expect("socket");
        choice.local.set_on(&socket);
        let client = socket
            .connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        // Accepted from the listener, before anything is set on the connection itself.
        assert_eq!(algorithm(&server), choice.local.as_str());
        settle_with(&client, &choice);
        settle_with(&server, &choice);
        assert_eq!(algorithm(&client), choice.local.as_str());
        assert_eq!(algorithm(&server), choice.local.as_str());
    }

    #[test]
    fn the_hosts_default_is_read_and_an_equal_choice_is_no_choice() {
        let host = host_default().expect("the host's default");
        assert!(Choice::new(host.clone(), host).is_none());
    }
}
