//! The client side of connections between sidecars: TCP to the peer's sidecar port, then mutual
//! TLS that proves the peer is the identity meshd published for that address.
//!
//! [`PeerConnector`] feeds the connection pools (`mesh/h1` and `mesh/h2`); [`open_tcp`] opens
//! one opaque stream (`mesh/tcp`) and sends the 2-byte target port first.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use mesh_proto::spiffe::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::pool::{Connect, Connected};
use crate::read_ahead::ReadAhead;
use crate::tls::{Carriage, MeshTls};
use crate::xds::Xds;

/// A TLS connection to a peer sidecar.
#[derive(Debug)]
pub struct PeerStream(TlsStream<ReadAhead<TcpStream>>);

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

impl PeerStream {
    /// The handshake chose `mesh/h2`.
    pub fn is_http2(&self) -> bool {
        Carriage::from_alpn(self.0.get_ref().1.alpn_protocol()) == Some(Carriage::Http2)
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

/// Connects the pools of connections to peer sidecars, over `carriage` (`mesh/h1` or `mesh/h2`).
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

impl Connect for PeerConnector {
    type Io = PeerStream;

    async fn connect(&self, addr: SocketAddr) -> io::Result<Connected<Self::Io>> {
        let stream = connect(&self.tls, &self.xds, addr, self.carriage, self.timeout).await?;
        Ok(Connected {
            http2: stream.is_http2(),
            io: stream,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{Pool, Version as PoolVersion};
    use crate::tls::testing::{id, identity, older_sidecar, root_ca};
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::{Request, Response, Version};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpListener;

    /// Serves every connection on `listener` over the carriage its handshake chose; each
    /// response says the version the request arrived in.
    fn serve(listener: TcpListener, server: MeshTls) {
        let acceptor = server.acceptor().clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let carriage = Carriage::from_alpn(tls.get_ref().1.alpn_protocol());
                    let answer = hyper::service::service_fn(|req: Request<_>| async move {
                        let version = format!("{:?}", req.version());
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            version,
                        ))))
                    });
                    let io = TokioIo::new(tls);
                    let _ = if carriage == Some(Carriage::Http1) {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, answer)
                            .await
                    } else {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, answer)
                            .await
                    };
                });
            }
        });
    }

    /// What [`connect`] does, minus the lookup of the peer's identity in xDS.
    #[derive(Clone)]
    struct Connector(Arc<MeshTls>);

    impl Connect for Connector {
        type Io = PeerStream;

        async fn connect(&self, addr: SocketAddr) -> io::Result<Connected<Self::Io>> {
            let tcp = TcpStream::connect(addr).await?;
            let stream = PeerStream(
                self.0
                    .connect(tcp, addr.ip(), &id("web"), Carriage::Http1)
                    .await?,
            );
            Ok(Connected {
                http2: stream.is_http2(),
                io: stream,
            })
        }
    }

    /// The `mesh/h1` pool as the sidecar builds it: against a sidecar of this build the request
    /// goes in HTTP/1.1; against one built before `mesh/h1` the handshake lands on `mesh/h2`,
    /// and the same pool speaks HTTP/2 on that connection, and reuses it.
    #[tokio::test]
    async fn the_http1_pool_speaks_http2_to_a_sidecar_without_mesh_h1() {
        let (root_pem, issuer) = root_ca();
        let client_tls =
            Arc::new(MeshTls::new(identity(&root_pem, &issuer, "client")).expect("tls"));
        let current = MeshTls::new(identity(&root_pem, &issuer, "web")).expect("tls");
        let older = older_sidecar(identity(&root_pem, &issuer, "web"));
        for (server, arrives_in) in [(current, "HTTP/1.1"), (older, "HTTP/2.0")] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            serve(listener, server);
            let pool = Pool::new(Connector(client_tls.clone()), PoolVersion::Http1);
            for _ in 0..2 {
                let req = Request::get("/")
                    .header(hyper::header::HOST, "web")
                    .version(Version::HTTP_11)
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                let resp = pool.send(req, addr).await.expect("response");
                assert!(resp.status().is_success(), "{}", resp.status());
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                assert_eq!(body, arrives_in.as_bytes(), "the server's version");
            }
            assert_eq!(pool.pooled(), 1, "one connection, reused ({arrives_in})");
        }
    }
}
