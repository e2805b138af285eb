//! Binding the proxy's listeners and accepting connections on them.

use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use crate::drain::Drain;
use crate::forward::{Context, handle};
use crate::metrics::Direction;

const BACKLOG: i32 = 1024;

/// Binds `addr`. When `addr` is the IPv4 wildcard, also binds the IPv6 wildcard on the same port
/// (IPv6-only, so that IPv4 connections keep arriving on the IPv4 socket) if this host has IPv6.
pub fn bind_all(addr: SocketAddr) -> io::Result<Vec<TcpListener>> {
    let mut listeners = vec![bind(addr, false)?];
    if addr.ip() == std::net::Ipv4Addr::UNSPECIFIED {
        match bind(
            SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), addr.port()),
            true,
        ) {
            Ok(l) => listeners.push(l),
            Err(e) => tracing::debug!(error = %e, port = addr.port(), "no IPv6 listener"),
        }
    }
    Ok(listeners)
}

/// Binds one non-blocking listening socket.
pub fn bind(addr: SocketAddr, only_v6: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if only_v6 {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Accepts connections until the drain starts; each connection runs as a drain-tracked task.
pub async fn accept_loop(
    listener: TcpListener,
    direction: Direction,
    ctx: Arc<Context>,
    drain: Drain,
) {
    loop {
        tokio::select! {
            _ = drain.started() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    ctx.first_connection.accepted();
                    crate::local_hop::settle(&stream);
                    drain.spawn_connection(handle(stream, peer, direction, ctx.clone()));
                }
                Err(e) => {
                    // Usually out of file descriptors: back off briefly instead of spinning.
                    tracing::warn!(dir = direction.as_str(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    tracing::debug!(dir = direction.as_str(), "listener closed for drain");
}

/// Accepts peer sidecars' HTTP/2 connections until the drain starts.
pub async fn accept_peers(listener: TcpListener, ctx: Arc<Context>, drain: Drain) {
    loop {
        tokio::select! {
            _ = drain.started() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    ctx.first_connection.accepted();
                    crate::local_hop::settle(&stream);
                    drain.spawn_connection(crate::peer::serve(stream, peer, ctx.clone(), drain.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}
