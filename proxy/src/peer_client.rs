//! The client side of connections between sidecars: TCP to the peer's sidecar port, then mutual
//! TLS that proves the peer is the identity meshd published for that address.
//!
//! [`PeerConnector`] feeds the connection pools (`mesh/h1` and `mesh/h2`), [`MuxConnector`] the
//! pool of streams multiplexed over one connection per peer (`mesh/mux`); [`open_tcp`] opens
//! one opaque stream (`mesh/tcp`) and sends the 2-byte target port first.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use mesh_proto::spiffe::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::addr_map::AddrMap;
use crate::mux::{self, MuxStream, WeakSession};
use crate::pool::{Connect, Connected};
use crate::read_ahead::ReadAhead;
use crate::tls::{Carriage, MeshTls};
use crate::xds::Xds;

/// A TLS connection to a peer sidecar.
#[derive(Debug)]
pub struct PeerStream(TlsStream<ReadAhead<TcpStream>>);

impl crate::http1_client::Io for PeerStream {
    /// Quiet when rustls holds nothing received (no plaintext to hand out, no close from the
    /// peer), nothing was read ahead, and nothing came on the socket.
    fn is_quiet(&mut self) -> bool {
        let (io, tls) = self.0.get_mut();
        let rustls_quiet = tls
            .process_new_packets()
            .is_ok_and(|state| state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed());
        rustls_quiet && !io.has_pending() && crate::http1_client::tcp_is_quiet(io.get_ref())
    }

    fn compact_heads(&self) -> bool {
        crate::tls::compact_heads(self.0.get_ref().1.alpn_protocol())
    }
}

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
        self.carriage() == Some(Carriage::Http2)
    }

    /// What the handshake chose.
    pub fn carriage(&self) -> Option<Carriage> {
        Carriage::from_alpn(self.0.get_ref().1.alpn_protocol())
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
        let tcp = crate::local_hop::connect(addr).await?;
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

/// A connection of the `mesh/mux` pool: a stream of the peer's session or, to a sidecar built
/// before `mesh/mux`, a connection of its own.
#[derive(Debug)]
pub enum PeerIo {
    /// A stream of a `mesh/mux` session; `true` when the session is `mesh/muxc` (compact heads).
    Muxed(MuxStream, bool),
    Direct(Box<PeerStream>),
}

impl crate::http1_client::Io for PeerIo {
    fn is_quiet(&mut self) -> bool {
        match self {
            PeerIo::Muxed(..) => false,
            PeerIo::Direct(stream) => stream.is_quiet(),
        }
    }

    fn compact_heads(&self) -> bool {
        match self {
            PeerIo::Muxed(_, compact) => *compact,
            PeerIo::Direct(stream) => stream.compact_heads(),
        }
    }
}

impl AsyncRead for PeerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerIo::Muxed(s, _) => Pin::new(s).poll_read(cx, buf),
            PeerIo::Direct(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerIo::Muxed(s, _) => Pin::new(s).poll_write(cx, buf),
            PeerIo::Direct(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerIo::Muxed(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            PeerIo::Direct(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PeerIo::Muxed(s, _) => s.is_write_vectored(),
            PeerIo::Direct(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerIo::Muxed(s, _) => Pin::new(s).poll_flush(cx),
            PeerIo::Direct(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerIo::Muxed(s, _) => Pin::new(s).poll_shutdown(cx),
            PeerIo::Direct(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Each peer's `mesh/mux` session, behind a lock held while one is made, so the requests
/// that arrive meanwhile wait for it instead of making more.
type Sessions = Mutex<AddrMap<SocketAddr, Arc<tokio::sync::Mutex<MuxSlot>>>>;

/// A peer's `mesh/mux` session, and whether it speaks compact heads (`mesh/muxc`).
#[derive(Debug, Default)]
struct MuxSlot {
    session: WeakSession,
    compact: bool,
}

/// Connects the `mesh/mux` pool: each new "connection" is a new stream on the peer's session;
/// the first makes the session (one mTLS connection), the rest share it until it ends, the
/// peer drains it, or it holds [`mux::MAX_STREAMS`]. The pool keeps idle streams as it keeps
/// idle connections, so a stream serves many requests.
#[derive(Debug, Clone)]
pub struct MuxConnector {
    peer: PeerConnector,
    sessions: Arc<Sessions>,
}

impl MuxConnector {
    pub fn new(peer: PeerConnector) -> MuxConnector {
        MuxConnector {
            peer: peer.over(Carriage::Mux),
            sessions: Arc::default(),
        }
    }

    /// The lock of `addr`'s session. Entries of peers without a session go when the map has
    /// grown past twice its size at the last sweep.
    fn session_of(&self, addr: SocketAddr) -> Arc<tokio::sync::Mutex<MuxSlot>> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = sessions.get(&addr) {
            return slot.clone();
        }
        if sessions.len() >= 64 && sessions.len().is_power_of_two() {
            sessions.retain(|_, slot| {
                Arc::strong_count(slot) > 1 || slot.try_lock().is_ok_and(|s| s.session.is_alive())
            });
        }
        sessions.entry(addr).or_default().clone()
    }
}

impl Connect for MuxConnector {
    type Io = PeerIo;

    async fn connect(&self, addr: SocketAddr) -> io::Result<Connected<Self::Io>> {
        let slot = self.session_of(addr);
        let mut session = slot.lock().await;
        if let Some(stream) = session.session.upgrade().and_then(|s| s.open()) {
            return Ok(Connected {
                http2: false,
                io: PeerIo::Muxed(stream, session.compact),
            });
        }
        let peer = &self.peer;
        let stream = connect(&peer.tls, &peer.xds, addr, Carriage::Mux, peer.timeout).await?;
        if stream.carriage() != Some(Carriage::Mux) {
            // A sidecar built before `mesh/mux`.
            return Ok(Connected {
                http2: stream.is_http2(),
                io: PeerIo::Direct(Box::new(stream)),
            });
        }
        let compact = crate::http1_client::Io::compact_heads(&stream);
        let (new, driver) = mux::Session::client(stream);
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(%addr, error = %e, "mesh/mux connection ended with an error");
            }
        });
        *session = MuxSlot {
            session: new.downgrade(),
            compact,
        };
        let stream = new.open().ok_or_else(|| {
            io::Error::other(format!("mesh/mux to {addr}: no stream on a new session"))
        })?;
        Ok(Connected {
            http2: false,
            io: PeerIo::Muxed(stream, compact),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{ProxyBody, StreamBody};
    use crate::compact_head;
    use crate::drain::Drain;
    use crate::http1_client::Io;
    use crate::http1_server::{self, Heads};
    use crate::pool::{Pool, Version as PoolVersion};
    use crate::raw_head::RawFields;
    use crate::routing::Routing;
    use crate::tls::testing::{
        id, identity, older_sidecar, root_ca, sidecar_without_compact_heads,
    };
    use crate::xds::resources::SidecarName;
    use bytes::{Bytes, BytesMut};
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

    /// `GET /` with `Host: web` in HTTP/1.1 through `pool` to `addr`: the body of its
    /// response, which must be a success.
    async fn get<C: Connect>(pool: &Pool<C, Empty<Bytes>>, addr: SocketAddr) -> Bytes {
        let req = Request::get("/")
            .header(hyper::header::HOST, "web")
            .version(Version::HTTP_11)
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = pool.send(req, addr, false).await.expect("response");
        assert!(resp.status().is_success(), "{}", resp.status());
        resp.into_body().collect().await.expect("body").to_bytes()
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

    /// The `mesh/h1` pool as the sidecar builds it: against a sidecar with `mesh/h1` the request
    /// goes in HTTP/1.1; against one built before `mesh/h1` the handshake lands on `mesh/h2`,
    /// and the same pool speaks HTTP/2 on that connection, and reuses it. (hyper's servers
    /// stand in for the sidecar's, so the sidecar serves no compact heads.)
    #[tokio::test]
    async fn the_http1_pool_speaks_http2_to_a_sidecar_without_mesh_h1() {
        let (root_pem, issuer) = root_ca();
        let client_tls =
            Arc::new(MeshTls::new(identity(&root_pem, &issuer, "client")).expect("tls"));
        let current = sidecar_without_compact_heads(identity(&root_pem, &issuer, "web"));
        let older = older_sidecar(identity(&root_pem, &issuer, "web"));
        for (server, arrives_in) in [(current, "HTTP/1.1"), (older, "HTTP/2.0")] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            serve(listener, server);
            let pool = Pool::new(Connector(client_tls.clone()), PoolVersion::Http1);
            for _ in 0..2 {
                let body = get(&pool, addr).await;
                assert_eq!(body, arrives_in.as_bytes(), "the server's version");
            }
            assert_eq!(pool.pooled(), 1, "one connection, reused ({arrives_in})");
        }
    }

    /// A stream that adds the first byte read from it to `first`: [`compact_head::MARKER`]
    /// when the peer's first head came compact.
    struct FirstByte {
        inner: MuxStream,
        seen: bool,
        first: Arc<Mutex<Vec<u8>>>,
    }

    impl AsyncRead for FirstByte {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut TaskContext<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let before = buf.filled().len();
            let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
            if let (false, Some(&byte)) = (this.seen, buf.filled().get(before)) {
                this.seen = true;
                this.first.lock().expect("lock").push(byte);
            }
            polled
        }
    }

    impl AsyncWrite for FirstByte {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut TaskContext<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
        }
    }

    /// Serves `mesh/mux` sessions on `listener` as the sidecar does: our HTTP/1.1 server on
    /// each stream, with compact heads when the handshake chose `mesh/muxc`. Each response has
    /// only kept fields and a known length, so it goes compact whenever the session allows.
    /// `first` gets the first byte of each stream's first request.
    fn serve_mux_sessions(listener: TcpListener, server: MeshTls, first: Arc<Mutex<Vec<u8>>>) {
        let acceptor = server.acceptor().clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, first) = (acceptor.clone(), first.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let heads = if crate::tls::compact_heads(tls.get_ref().1.alpn_protocol()) {
                        Heads::Compact
                    } else {
                        Heads::Text
                    };
                    let answer = |_req: Request<StreamBody>| async {
                        let kept = RawFields::for_test("x-served-by: web\r\n", Some(2));
                        let body = Full::new(Bytes::from_static(b"ok")).map_err(|e| match e {});
                        Response::new(ProxyBody::with_kept(body.boxed(), Some(kept)))
                    };
                    let drain = Drain::new();
                    let _ = mux::serve(tls, &drain, |stream| {
                        let stream = FirstByte {
                            inner: stream,
                            seen: false,
                            first: first.clone(),
                        };
                        async move {
                            let served =
                                http1_server::serve(stream, BytesMut::new(), None, heads, answer);
                            let _ = served.await;
                        }
                    })
                    .await;
                });
            }
        });
    }

    /// The `mesh/mux` pool as the sidecar builds it: against a sidecar of this build the
    /// session is `mesh/muxc` and requests and responses cross its streams in compact heads;
    /// against one built before compact heads it is `mesh/mux`, in text. Each connect after
    /// the first opens a stream on the same session, with the same heads.
    #[tokio::test]
    async fn the_mux_pool_speaks_compact_heads_on_a_mesh_muxc_session() {
        let (root_pem, issuer) = root_ca();
        let client_tls =
            Arc::new(MeshTls::new(identity(&root_pem, &issuer, "client")).expect("tls"));
        let current = MeshTls::new(identity(&root_pem, &issuer, "web")).expect("server");
        let no_compact = sidecar_without_compact_heads(identity(&root_pem, &issuer, "web"));
        for (server, compact) in [(current, true), (no_compact, false)] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let first = Arc::new(Mutex::new(Vec::new()));
            serve_mux_sessions(listener, server, first.clone());
            let xds = Arc::new(Xds::standalone());
            let mut routing = Routing::default();
            routing.sidecars.insert(
                addr.ip(),
                SidecarName {
                    namespace: "default".into(),
                    service_account: "web".into(),
                },
            );
            xds.routing.store(Arc::new(routing));
            let peer = PeerConnector::new(client_tls.clone(), xds, Duration::from_secs(5));
            let connector = MuxConnector::new(peer);
            for _ in 0..2 {
                let connected = connector.connect(addr).await.expect("connect");
                assert!(
                    matches!(connected.io, PeerIo::Muxed(..)),
                    "a mesh/mux stream"
                );
                assert_eq!(connected.io.compact_heads(), compact, "compact: {compact}");
            }
            let pool = Pool::new(connector, PoolVersion::Http1);
            for _ in 0..2 {
                assert_eq!(get(&pool, addr).await, "ok", "compact: {compact}");
            }
            let marker = compact_head::MARKER;
            let expected = if compact { marker } else { b'G' };
            let seen = first.lock().expect("lock").clone();
            assert!(
                !seen.is_empty() && seen.iter().all(|&b| b == expected),
                "first bytes of the requests {seen:?}, compact: {compact}"
            );
        }
    }
}
