//! The destination a redirected connection was really meant for.
//!
//! iptables REDIRECT rewrites the destination to the proxy's port; conntrack remembers the
//! original, which `SO_ORIGINAL_DST` (IPv4) and `IP6T_SO_ORIGINAL_DST` (IPv6) read back.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use nix::sys::socket::{SockaddrIn, SockaddrIn6, getsockopt, sockopt};
use tokio::net::TcpStream;

/// The original destination of `stream`, which must have been accepted on a redirected listener.
/// Fails with `NotFound` when the connection was not redirected and conntrack does not know it.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    match stream.local_addr()? {
        SocketAddr::V4(_) => {
            let raw = getsockopt(stream, sockopt::OriginalDst)?;
            Ok(SocketAddr::V4(SocketAddrV4::from(SockaddrIn::from(raw))))
        }
        SocketAddr::V6(local) => {
            // A v4-mapped connection on a dual-stack socket carries an IPv4 conntrack entry.
            if local.ip().to_ipv4_mapped().is_some() {
                let raw = getsockopt(stream, sockopt::OriginalDst)?;
                return Ok(SocketAddr::V4(SocketAddrV4::from(SockaddrIn::from(raw))));
            }
            let raw = getsockopt(stream, sockopt::Ip6tOriginalDst)?;
            Ok(SocketAddr::V6(SocketAddrV6::from(SockaddrIn6::from(raw))))
        }
    }
}
