//! Pooled upstream connections, keyed by the address they go to.
//!
//! - An HTTP/1.1 pool holds idle connections ([`http1_client::Connection`]), one request at a
//!   time on each. A connection goes back to the pool once its response has been read to the end
//!   and both sides allow another exchange (a body dropped before its end closes it), and the
//!   most recently used one is taken first, if it still looks open.
//! - An HTTP/2 pool holds one connection per address, shared by every request to it. The first
//!   request to an address opens it, in a task of its own, and the requests that arrive while
//!   it connects wait for it instead of opening more.
//! - A request is sent again when its pooled connection was closing as it was taken: in
//!   HTTP/1.1 an idempotent request without a body that got not a byte of answer (RFC 9112
//!   §9.3.1), in HTTP/2 one the connection closed before it was sent. It goes on another pooled
//!   connection, and after [`MAX_REUSED_ATTEMPTS`] of those on a new one. A request that fails
//!   on a new connection is not sent again.
//! - A request for a protocol upgrade (or `CONNECT`) goes on a new connection of its own, with
//!   hyper's client, which hands the upgraded stream over once the upstream switches.
//! - A sweep drops the connections that are closed or were left unused through
//!   [`IDLE_SWEEPS`] sweeps; a task runs it every [`SWEEP_EVERY`], so a connection idle for
//!   60 to 90 s is closed (hyper-util's pool, used before, closed them after 90 s).
//!
//! hyper-util's legacy client did this before. It cost 13-15% of each sidecar's instructions per
//! request (`benches/instructions.sh`, PROFILE_TOP): hashing its string key one byte at a time,
//! its checkout, and a task per HTTP/1.1 request to put the connection back.

use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::addr_map::AddrMap;
use crate::body::BodyError;
use crate::http1_client::{self, Connection};
use crate::http2_body::RecvBody;
use crate::http2_client::{self, KeepAlive, SendError};
use crate::raw_head::RequestFields;

/// How often idle connections are looked at.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// How many sweeps an unused connection survives: the third closes it.
pub const IDLE_SWEEPS: u8 = 3;

/// How many pooled connections a request tries before it takes a new one.
const MAX_REUSED_ATTEMPTS: usize = 3;

/// A new connection to an upstream address.
#[derive(Debug)]
pub struct Connected<Io> {
    pub io: Io,
    /// The handshake chose HTTP/2 (ALPN `mesh/h2`), whatever the pool's version.
    pub http2: bool,
}

/// Opens connections for a pool.
pub trait Connect: Clone + Send + Sync + 'static {
    type Io: http1_client::Io;

    fn connect(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Connected<Self::Io>>> + Send;
}

/// Plain TCP (no delay), within a timeout.
#[derive(Debug, Clone)]
pub struct TcpConnector {
    timeout: Duration,
}

impl TcpConnector {
    pub fn new(timeout: Duration) -> TcpConnector {
        TcpConnector { timeout }
    }
}

impl Connect for TcpConnector {
    type Io = TcpStream;

    async fn connect(&self, addr: SocketAddr) -> io::Result<Connected<Self::Io>> {
        let tcp = match tokio::time::timeout(self.timeout, crate::local_hop::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(io::Error::new(e.kind(), format!("TCP to {addr}: {e}"))),
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("TCP to {addr} timed out after {:?}", self.timeout),
                ));
            }
        };
        let _ = tcp.set_nodelay(true);
        Ok(Connected {
            io: tcp,
            http2: false,
        })
    }
}

/// Why a request got no response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    #[error("{0}")]
    Connect(Arc<io::Error>),
    #[error("HTTP handshake: {0}")]
    Handshake(Arc<dyn std::error::Error + Send + Sync>),
    #[error("HTTP/1.1: {0}")]
    Http1(Arc<http1_client::Error>),
    /// On a connection of its own for a protocol upgrade (hyper's client).
    #[error("{0}")]
    Upgrade(Arc<hyper::Error>),
    #[error("HTTP/2: {0}")]
    Http2(Arc<http2_client::Error>),
}

impl PoolError {
    /// No connection could be made (nothing was sent).
    pub fn is_connect(&self) -> bool {
        matches!(self, PoolError::Connect(_) | PoolError::Handshake(_))
    }
}

/// Which protocol a pool's connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.1, unless the handshake chose HTTP/2 (an older sidecar without `mesh/h1`).
    Http1,
    Http2,
}

/// Connections to upstream addresses, of one [`Version`], for requests with bodies of type `B`.
#[derive(Debug)]
pub struct Pool<C, B> {
    inner: Arc<Inner<C>>,
    body: PhantomData<fn(B)>,
}

impl<C, B> Clone for Pool<C, B> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
            body: PhantomData,
        }
    }
}

#[derive(Debug)]
struct Inner<C> {
    connector: C,
    version: Version,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// HTTP/1.1 pools: idle connections by address, the most recent last.
    idle: AddrMap<SocketAddr, Vec<Idle>>,
    /// HTTP/2 pools (and HTTP/1.1 pools' connections that came up in HTTP/2).
    shared: AddrMap<SocketAddr, Shared>,
    sweeping: bool,
}

#[derive(Debug)]
struct Idle {
    conn: Box<Connection>,
    sweeps: u8,
}

#[derive(Debug)]
enum Shared {
    Ready {
        sender: http2_client::Sender,
        sweeps: u8,
    },
    /// Being opened; these requests wait for it.
    Connecting(Vec<oneshot::Sender<Result<http2_client::Sender, PoolError>>>),
}

/// A connection taken from the pool or just made.
enum Taken {
    Http1(Box<Connection>),
    Http2(http2_client::Sender),
}

impl<C, B> Pool<C, B>
where
    C: Connect,
    B: Body<Data = Bytes> + RequestFields + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(connector: C, version: Version) -> Pool<C, B> {
        Pool {
            inner: Arc::new(Inner {
                connector,
                version,
                state: Mutex::new(State {
                    idle: AddrMap::default(),
                    shared: AddrMap::default(),
                    sweeping: false,
                }),
            }),
            body: PhantomData,
        }
    }

    /// Sends `req` to `addr`. An HTTP/1.1 request must be in origin form with a Host header; an
    /// HTTP/2 one in absolute form (its scheme and authority become the pseudo-headers). A
    /// request for a protocol upgrade (or `CONNECT`) goes on a new HTTP/1.1 connection of its
    /// own, which hyper's client drives and hands over once switched: `upgrade` says the
    /// request asks for one (the caller has looked: [`crate::http::wants_upgrade`]).
    pub async fn send(
        &self,
        mut req: Request<B>,
        addr: SocketAddr,
        upgrade: bool,
    ) -> Result<Response<PooledBody<B>>, PoolError> {
        if self.inner.version == Version::Http1 && (upgrade || req.method() == Method::CONNECT) {
            // hyper's client writes the map only.
            crate::raw_head::restore_request(&mut req);
            // Boxed: rare, and its future would otherwise be part of every request's.
            return Box::pin(self.send_upgrade(req, addr)).await;
        }
        if self.inner.version != Version::Http1 {
            // HTTP/2 carries the fields kept as they came in the map (see `crate::raw_head`).
            crate::raw_head::restore_request(&mut req);
        }
        // A pooled connection can still look open when the request finds it closing: after a
        // few such, the request takes a new connection, and a failure there is the answer.
        let mut reused_attempts = 0;
        loop {
            let reuse = reused_attempts < MAX_REUSED_ATTEMPTS;
            let (taken, reused) = self.take(addr, reuse).await?;
            reused_attempts += usize::from(reused);
            match taken {
                Taken::Http1(conn) => match http1_client::send(conn, req, reused).await {
                    Ok(resp) => {
                        return Ok(resp.map(|body| PooledBody::http1(body, &self.inner, addr)));
                    }
                    Err(http1_client::SendError {
                        unsent: Some(unsent),
                        error,
                    }) => {
                        tracing::debug!(%addr, %error, "pooled connection closed, sending again");
                        req = unsent;
                    }
                    Err(e) => return Err(PoolError::Http1(Arc::new(e.error))),
                },
                Taken::Http2(mut sender) => {
                    absolute_form(&mut req, addr);
                    match sender.send(req).await {
                        Ok(resp) => return Ok(resp.map(PooledBody::http2)),
                        Err(SendError {
                            unsent: Some(unsent),
                            error,
                        }) if reused => {
                            tracing::debug!(%addr, %error, "pooled connection closed, sending again");
                            req = unsent;
                        }
                        Err(e) => return Err(PoolError::Http2(Arc::new(e.error))),
                    }
                }
            }
        }
    }

    /// A request for a protocol upgrade, on a new connection that is not pooled: once it
    /// switches, the connection is the upgraded stream's.
    async fn send_upgrade(
        &self,
        mut req: Request<B>,
        addr: SocketAddr,
    ) -> Result<Response<PooledBody<B>>, PoolError> {
        let connected = self
            .inner
            .connector
            .connect(addr)
            .await
            .map_err(|e| PoolError::Connect(Arc::new(e)))?;
        if connected.http2 {
            // An older sidecar without `mesh/h1`: no upgrade there, the request goes as it is.
            let mut sender = handshake_http2(connected.io, addr).await?;
            absolute_form(&mut req, addr);
            return match sender.send(req).await {
                Ok(resp) => Ok(resp.map(PooledBody::http2)),
                Err(e) => Err(PoolError::Http2(Arc::new(e.error))),
            };
        }
        let (mut sender, conn) = http1::handshake(TokioIo::new(connected.io))
            .await
            .map_err(|e| PoolError::Handshake(Arc::new(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream connection for an upgrade ended with an error");
            }
        });
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| PoolError::Upgrade(Arc::new(e)))?;
        Ok(resp.map(PooledBody::hyper))
    }

    /// A connection to `addr` (a new one unless `reuse`), and whether it was used before.
    async fn take(&self, addr: SocketAddr, reuse: bool) -> Result<(Taken, bool), PoolError> {
        let waiting = {
            let mut state = self.inner.lock();
            if reuse
                && self.inner.version == Version::Http1
                && let Some(conn) = state.take_idle(addr)
            {
                return Ok((Taken::Http1(conn), true));
            }
            match state.shared.get_mut(&addr) {
                Some(Shared::Ready { sender, sweeps }) if reuse && !sender.is_closed() => {
                    *sweeps = 0;
                    return Ok((Taken::Http2(sender.clone()), true));
                }
                Some(Shared::Connecting(waiters)) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    Some(rx)
                }
                _ if self.inner.version == Version::Http2 => {
                    let (tx, rx) = oneshot::channel();
                    state.shared.insert(addr, Shared::Connecting(vec![tx]));
                    state.start_sweeping(&self.inner);
                    tokio::spawn(connect_shared(self.inner.clone(), addr));
                    Some(rx)
                }
                _ => None,
            }
        };
        match waiting {
            Some(rx) => {
                let sender = rx.await.map_err(|_| {
                    PoolError::Connect(Arc::new(io::Error::other(format!(
                        "the connection to {addr} was dropped while it was being made"
                    ))))
                })??;
                Ok((Taken::Http2(sender), false))
            }
            // Boxed: connecting (TCP, maybe TLS, the HTTP handshake) is a large future, and most
            // requests do not connect; inline, every request's future would carry its size.
            None => Ok((Box::pin(self.inner.connect_http1(addr)).await?, false)),
        }
    }

    /// What the sweeper does every [`SWEEP_EVERY`], for the tests.
    #[cfg(test)]
    fn sweep(&self) {
        self.inner.lock().sweep();
    }

    /// Idle HTTP/1.1 connections and shared HTTP/2 ones, over all addresses.
    #[cfg(test)]
    pub(crate) fn pooled(&self) -> usize {
        let state = self.inner.lock();
        state.idle.values().map(Vec::len).sum::<usize>()
            + state
                .shared
                .values()
                .filter(|s| matches!(s, Shared::Ready { .. }))
                .count()
    }
}

impl<C: Connect> Inner<C> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new connection for an HTTP/1.1 pool; one whose handshake chose HTTP/2 is shared.
    async fn connect_http1(self: &Arc<Self>, addr: SocketAddr) -> Result<Taken, PoolError> {
        let connected = self
            .connector
            .connect(addr)
            .await
            .map_err(|e| PoolError::Connect(Arc::new(e)))?;
        if connected.http2 {
            let sender = handshake_http2(connected.io, addr).await?;
            let mut state = self.lock();
            state.shared.insert(
                addr,
                Shared::Ready {
                    sender: sender.clone(),
                    sweeps: 0,
                },
            );
            state.start_sweeping(self);
            return Ok(Taken::Http2(sender));
        }
        Ok(Taken::Http1(Connection::new(connected.io)))
    }
}

impl State {
    /// The most recently used idle connection to `addr` that is still open.
    fn take_idle(&mut self, addr: SocketAddr) -> Option<Box<Connection>> {
        let idle = self.idle.get_mut(&addr)?;
        while let Some(mut entry) = idle.pop() {
            if entry.conn.is_open() {
                return Some(entry.conn);
            }
        }
        None
    }

    fn sweep(&mut self) {
        self.idle.retain(|_, idle| {
            idle.retain_mut(|entry| {
                entry.sweeps += 1;
                entry.sweeps < IDLE_SWEEPS && entry.conn.is_open()
            });
            !idle.is_empty()
        });
        self.shared.retain(|_, shared| match shared {
            Shared::Ready { sender, sweeps } => {
                *sweeps += 1;
                *sweeps < IDLE_SWEEPS && !sender.is_closed()
            }
            Shared::Connecting(_) => true,
        });
    }

    /// Starts the pool's sweeper, once: it ends when the pool is dropped.
    fn start_sweeping<C: Send + Sync + 'static>(&mut self, inner: &Arc<Inner<C>>) {
        if std::mem::replace(&mut self.sweeping, true) {
            return;
        }
        let inner: Weak<Inner<C>> = Arc::downgrade(inner);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                inner
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .sweep();
            }
        });
    }
}

/// Opens the shared HTTP/2 connection to `addr` and hands it to the requests waiting for it.
async fn connect_shared<C: Connect>(inner: Arc<Inner<C>>, addr: SocketAddr) {
    let made = match inner.connector.connect(addr).await {
        Ok(connected) => handshake_http2(connected.io, addr).await,
        Err(e) => Err(PoolError::Connect(Arc::new(e))),
    };
    let waiters = {
        let mut state = inner.lock();
        let waiters = match state.shared.remove(&addr) {
            Some(Shared::Connecting(waiters)) => waiters,
            _ => Vec::new(),
        };
        if let Ok(sender) = &made {
            state.shared.insert(
                addr,
                Shared::Ready {
                    sender: sender.clone(),
                    sweeps: 0,
                },
            );
        }
        waiters
    };
    for waiter in waiters {
        let _ = waiter.send(made.clone());
    }
}

async fn handshake_http2<Io>(io: Io, addr: SocketAddr) -> Result<http2_client::Sender, PoolError>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    http2_client::handshake(io, addr, KeepAlive::DEFAULT)
        .await
        .map_err(|e| PoolError::Handshake(Arc::new(e)))
}

/// HTTP/2 needs the scheme and authority: an HTTP/1.1 request in origin form (on a connection
/// that came up in HTTP/2) gets them from the address.
fn absolute_form<B>(req: &mut Request<B>, addr: SocketAddr) {
    if req.uri().scheme().is_some() {
        return;
    }
    let path = crate::http::path_and_query(req.uri());
    if let Ok(uri) = Uri::builder()
        .scheme("http")
        .authority(crate::http::authority_of(addr))
        .path_and_query(path)
        .build()
    {
        *req.uri_mut() = uri;
    }
}

/// A response body from a pool; an HTTP/1.1 one gives its connection back at its end, when the
/// connection can take another request.
#[derive(Debug)]
pub struct PooledBody<B> {
    inner: Upstream<B>,
    back: Option<GiveBack>,
}

/// Which connection a response body comes from.
#[derive(Debug)]
enum Upstream<B> {
    Http1(http1_client::ResponseBody<B>),
    Http2(RecvBody),
    /// The response to an upgrade request.
    Hyper(Incoming),
}

struct GiveBack {
    pool: Arc<dyn Returns>,
    addr: SocketAddr,
}

impl std::fmt::Debug for GiveBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GiveBack")
            .field("addr", &self.addr)
            .finish()
    }
}

/// A pool that takes HTTP/1.1 connections back (whatever its connector).
trait Returns: Send + Sync {
    fn take_back(&self, addr: SocketAddr, conn: Box<Connection>);
}

impl<C: Connect> Returns for Inner<C> {
    fn take_back(&self, addr: SocketAddr, conn: Box<Connection>) {
        let mut state = self.lock();
        state
            .idle
            .entry(addr)
            .or_default()
            .push(Idle { conn, sweeps: 0 });
    }
}

impl<B> PooledBody<B> {
    /// The response's fields, when our HTTP/1.1 client kept them as they came in place of its
    /// map ([`http1_client::ResponseBody::kept`]).
    pub fn take_kept(&mut self) -> Option<crate::raw_head::RawFields> {
        match &mut self.inner {
            Upstream::Http1(body) => body.take_kept(),
            Upstream::Http2(_) | Upstream::Hyper(_) => None,
        }
    }
}

impl<B> PooledBody<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn http2(inner: RecvBody) -> PooledBody<B> {
        PooledBody {
            inner: Upstream::Http2(inner),
            back: None,
        }
    }

    fn hyper(inner: Incoming) -> PooledBody<B> {
        PooledBody {
            inner: Upstream::Hyper(inner),
            back: None,
        }
    }

    fn http1<C: Connect>(
        inner: http1_client::ResponseBody<B>,
        pool: &Arc<Inner<C>>,
        addr: SocketAddr,
    ) -> PooledBody<B> {
        let mut body = PooledBody {
            inner: Upstream::Http1(inner),
            back: Some(GiveBack {
                pool: pool.clone(),
                addr,
            }),
        };
        body.give_back_at_end();
        body
    }

    /// Gives the connection back once the body has been read to its end.
    fn give_back_at_end(&mut self) {
        if let Upstream::Http1(body) = &mut self.inner
            && body.is_end_stream()
            && let Some(back) = self.back.take()
            && let Some(conn) = body.take_reusable()
        {
            back.pool.take_back(back.addr, conn);
        }
    }
}

impl<B> Body for PooledBody<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match &mut this.inner {
            Upstream::Http1(body) => {
                let polled = Pin::new(body).poll_frame(cx).map_err(BodyError::Upstream);
                if polled.is_ready() {
                    this.give_back_at_end();
                }
                polled
            }
            Upstream::Http2(body) => Pin::new(body).poll_frame(cx).map_err(BodyError::Http2),
            Upstream::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(BodyError::Http1),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Upstream::Http1(body) => body.is_end_stream(),
            Upstream::Http2(body) => body.is_end_stream(),
            Upstream::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Upstream::Http1(body) => body.size_hint(),
            Upstream::Http2(body) => body.size_hint(),
            Upstream::Hyper(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioExecutor;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::TcpListener;

    /// A backend that counts the connections it accepted and answers each request with the
    /// number of its connection; `close_after_first` closes each connection after one answer.
    async fn backend(http2: bool, close_after_first: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(async move {
                    let answer =
                        hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                            let mut resp = Response::new(http_body_util::Full::new(Bytes::from(
                                n.to_string(),
                            )));
                            if close_after_first {
                                resp.headers_mut().insert(
                                    hyper::header::CONNECTION,
                                    hyper::header::HeaderValue::from_static("close"),
                                );
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        });
                    let io = TokioIo::new(tcp);
                    let _ = if http2 {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, answer)
                            .await
                    } else {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, answer)
                            .await
                    };
                });
            }
        });
        (addr, accepted)
    }

    fn get(addr: SocketAddr, http2: bool) -> Request<Empty<Bytes>> {
        let builder = if http2 {
            Request::get(format!("http://{addr}/")).version(hyper::Version::HTTP_2)
        } else {
            Request::get("/").header(hyper::header::HOST, addr.to_string())
        };
        builder.body(Empty::new()).expect("request")
    }

    /// Sends a request and reads its body: the number of the backend's connection it took.
    async fn connection_of(pool: &Pool<TcpConnector, Empty<Bytes>>, addr: SocketAddr) -> String {
        let http2 = pool.inner.version == Version::Http2;
        let resp = pool
            .send(get(addr, http2), addr, false)
            .await
            .expect("response");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    fn pool(version: Version) -> Pool<TcpConnector, Empty<Bytes>> {
        Pool::new(TcpConnector::new(Duration::from_secs(5)), version)
    }

    #[tokio::test]
    async fn an_http1_connection_is_reused_once_its_response_has_ended() {
        let (addr, accepted) = backend(false, false).await;
        let pool = pool(Version::Http1);
        for _ in 0..3 {
            assert_eq!(connection_of(&pool, addr).await, "1");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.pooled(), 1);
    }

    #[tokio::test]
    async fn an_http1_response_read_in_part_does_not_give_its_connection_back() {
        let (addr, accepted) = backend(false, false).await;
        let pool = pool(Version::Http1);
        let resp = pool
            .send(get(addr, false), addr, false)
            .await
            .expect("response");
        drop(resp);
        assert_eq!(pool.pooled(), 0, "a body dropped before its end");
        assert_eq!(connection_of(&pool, addr).await, "2");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_is_not_taken() {
        let (addr, accepted) = backend(false, true).await;
        let pool = pool(Version::Http1);
        assert_eq!(connection_of(&pool, addr).await, "1");
        assert_eq!(connection_of(&pool, addr).await, "2");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// Connections in memory: the server's end of each goes to the test, which answers (or
    /// closes) it when it chooses.
    #[derive(Clone)]
    struct MemoryConnector {
        servers: tokio::sync::mpsc::UnboundedSender<tokio::io::DuplexStream>,
    }

    impl Connect for MemoryConnector {
        type Io = tokio::io::DuplexStream;

        async fn connect(&self, _addr: SocketAddr) -> io::Result<Connected<Self::Io>> {
            let (client, server) = tokio::io::duplex(64 * 1024);
            self.servers
                .send(server)
                .map_err(|_| io::Error::other("the test is gone"))?;
            Ok(Connected {
                io: client,
                http2: false,
            })
        }
    }

    /// Reads one request head off a connection's server end.
    async fn read_head(server: &mut tokio::io::DuplexStream) {
        use tokio::io::AsyncReadExt;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = server.read(&mut buf).await.expect("read");
            assert!(n > 0, "the client closed before its request");
            head.extend_from_slice(&buf[..n]);
        }
    }

    /// Takes the next connection's server end, reads one request head off it and answers `ok`
    /// (keeping the connection open); returns that end.
    async fn answer_one(
        servers: &mut tokio::sync::mpsc::UnboundedReceiver<tokio::io::DuplexStream>,
    ) -> tokio::io::DuplexStream {
        use tokio::io::AsyncWriteExt;
        let mut server = servers.recv().await.expect("a connection");
        read_head(&mut server).await;
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .expect("write");
        server
    }

    /// The race the resend is for: the backend closes an idle pooled connection (its keep-alive
    /// timeout, say) as the pool takes it for a request, so that the connection looked open
    /// when taken and the request finds it closing. Without a byte of answer on a connection
    /// used before, a GET goes again on a new connection (RFC 9112 §9.3.1).
    #[tokio::test]
    async fn a_request_that_finds_its_pooled_connection_closing_is_sent_again_on_a_new_one() {
        let (servers, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        let pool = Pool::new(MemoryConnector { servers }, Version::Http1);
        let addr: SocketAddr = "127.0.0.1:80".parse().expect("addr");
        let (first, mut server) = tokio::join!(
            pool.send(get(addr, false), addr, false),
            answer_one(&mut accepted)
        );
        let body = first.expect("first response").into_body().collect().await;
        assert_eq!(&body.expect("first body").to_bytes()[..], b"ok");
        assert_eq!(pool.pooled(), 1, "the first connection is back in the pool");
        // The backend reads the next request and closes without an answer; then a new
        // connection answers it.
        let backend = tokio::spawn(async move {
            read_head(&mut server).await;
            drop(server);
            answer_one(&mut accepted).await
        });
        let second = tokio::time::timeout(
            Duration::from_secs(10),
            pool.send(get(addr, false), addr, false),
        )
        .await
        .expect("an answer within 10 s");
        let body = second
            .expect("the request sent again on a new connection")
            .into_body()
            .collect()
            .await;
        assert_eq!(&body.expect("second body").to_bytes()[..], b"ok");
        drop(backend.await.expect("the second connection answered"));
    }

    #[tokio::test]
    async fn concurrent_http2_requests_to_a_new_address_share_one_connection() {
        let (addr, accepted) = backend(true, false).await;
        let pool = pool(Version::Http2);
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let pool = pool.clone();
            requests.spawn(async move { connection_of(&pool, addr).await });
        }
        let answers = requests.join_all().await;
        assert!(answers.iter().all(|a| a == "1"), "{answers:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.pooled(), 1);
    }

    #[tokio::test]
    async fn unused_connections_go_at_the_third_sweep_and_used_ones_stay() {
        let (addr1, _) = backend(false, false).await;
        let (addr2, _) = backend(true, false).await;
        let http1 = pool(Version::Http1);
        let http2 = pool(Version::Http2);
        connection_of(&http1, addr1).await;
        connection_of(&http2, addr2).await;
        for _ in 1..IDLE_SWEEPS {
            http1.sweep();
            http2.sweep();
        }
        assert_eq!((http1.pooled(), http2.pooled()), (1, 1));
        // Used again: the count starts over.
        connection_of(&http1, addr1).await;
        connection_of(&http2, addr2).await;
        for _ in 1..IDLE_SWEEPS {
            http1.sweep();
            http2.sweep();
        }
        assert_eq!((http1.pooled(), http2.pooled()), (1, 1));
        http1.sweep();
        http2.sweep();
        assert_eq!((http1.pooled(), http2.pooled()), (0, 0));
    }

    #[tokio::test]
    async fn an_address_that_refuses_is_a_connect_error_naming_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        for version in [Version::Http1, Version::Http2] {
            let pool = pool(version);
            let http2 = version == Version::Http2;
            let e = pool
                .send(get(addr, http2), addr, false)
                .await
                .expect_err("refused");
            assert!(e.is_connect(), "{e:?}");
            assert!(e.to_string().contains(&addr.to_string()), "{e}");
        }
    }
}
