//! The client side of connections between sidecars: TCP to the peer's sidecar port, then mutual
//! TLS that proves the peer is the identity meshd published for that address.
//!
//! [`PeerConnector`] feeds the pooled HTTP clients (`mesh/h1` and `mesh/h2`); [`open_tcp`] opens
//! one opaque stream (`mesh/tcp`) and sends the 2-byte target port first.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use mesh_proto::spiffe::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::tls::{Carriage, MeshTls};
use crate::xds::Xds;

/// A TLS connection to a peer sidecar.
#[derive(Debug)]
pub struct PeerStream(TlsStream<TcpStream>);

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connection for PeerStream {
    fn connected(&self) -> Connected {
        let alpn = self.0.get_ref().1.alpn_protocol();
        if Carriage::from_alpn(alpn) == Some(Carriage::Http2) {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

/// The identity meshd published for the sidecar at `ip`.
fn expected_peer(tls: &MeshTls, xds: &Xds, ip: IpAddr) -> io::Result<SpiffeId> {
    let routing = xds.routing.load();
    let name = routing
        .sidecars
        .get(&ip)
        .ok_or_else(|| io::Error::other(format!("meshd published no sidecar identity for {ip}")))?;
    tls.peer_id(&name.namespace, &name.service_account)
        .ok_or_else(|| {
            io::Error::other(format!(
                "meshd published no usable identity for {ip} (namespace {:?}, service account {:?})",
                name.namespace, name.service_account
            ))
        })
}

/// TCP to `addr`, then the mTLS handshake for `carriage`.
async fn connect(
    tls: &MeshTls,
    xds: &Xds,
    addr: SocketAddr,
    carriage: Carriage,
    timeout: Duration,
) -> io::Result<PeerStream> {
    let expected = expected_peer(tls, xds, addr.ip())?;
    let handshake = async {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        tls.connect(tcp, addr.ip(), &expected, carriage).await
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(stream)) => Ok(PeerStream(stream)),
        Ok(Err(e)) => Err(io::Error::new(
            e.kind(),
            format!("mTLS to {addr} ({expected}): {e}"),
        )),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("mTLS to {addr} ({expected}) timed out"),
        )),
    }
}

/// Opens one opaque TCP stream to app port `port` through the sidecar at `peer`.
pub async fn open_tcp(
    tls: &MeshTls,
    xds: &Xds,
    peer: SocketAddr,
    port: u16,
    timeout: Duration,
) -> io::Result<PeerStream> {
    let mut stream = connect(tls, xds, peer, Carriage::Tcp, timeout).await?;
    stream.write_all(&port.to_be_bytes()).await?;
    Ok(stream)
}

/// Connects a pooled HTTP client to peer sidecars, over `carriage` (`mesh/h1` or `mesh/h2`).
#[derive(Debug, Clone)]
pub struct PeerConnector {
    tls: Arc<MeshTls>,
    xds: Arc<Xds>,
    timeout: Duration,
    carriage: Carriage,
}

impl PeerConnector {
    /// Connects over `mesh/h2`; see [`PeerConnector::over`].
    pub fn new(tls: Arc<MeshTls>, xds: Arc<Xds>, timeout: Duration) -> PeerConnector {
        PeerConnector {
            tls,
            xds,
            timeout,
            carriage: Carriage::Http2,
        }
    }

    /// The same connector for connections that carry `carriage`.
    pub fn over(self, carriage: Carriage) -> PeerConnector {
        PeerConnector { carriage, ..self }
    }
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<PeerStream>>> + Send>>;

impl tower_service::Service<Uri> for PeerConnector {
    type Response = TokioIo<PeerStream>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        let this = self.clone();
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| io::Error::other(format!("{uri} has no peer address")))?;
            let stream = connect(&this.tls, &this.xds, addr, this.carriage, this.timeout).await?;
            Ok(TokioIo::new(stream))
        })
    }
}
