//! Client HTTP/2 connections on the `h2` crate, each request's response awaited in the task
//! that sent it.
//!
//! hyper's HTTP/2 client spawns a task for every request to await its response, and hands the
//! request to the connection's task through a channel and the response back through a
//! oneshot: the spawn alone, which copies a future the size of hyper's connection-task enum
//! into each new task, was 3.3k instructions a request at full load over the mTLS pair
//! (`benches/instructions.sh 1000`, `PROFILE_TOP`). Here the caller opens the stream on the
//! shared connection and polls the response itself; only a request with a body to send spawns
//! a task, which streams it with the peer's flow control. The client side ran 41.9k
//! instructions a request at full load with this, against 49.9k with hyper's client.
//!
//! The settings are hyper's defaults (windows of 5 MB for the connection and 2 MB a stream,
//! 16 KB frames, a 1 MB send buffer, no push), so the traffic on the wire is unchanged, and a
//! PING checks every 10 s that the peer is still there ([`KeepAlive`]).

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Ping, PingPong};
use hyper::body::Body;
use hyper::header::CONTENT_LENGTH;
use hyper::{Method, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::AbortHandle;

use crate::http2_body::{RecvBody, SendBody, strip_connection_specific};

/// Errors of the streams and connections here.
pub type Error = h2::Error;

const CONN_WINDOW: u32 = 5 * 1024 * 1024;
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const MAX_FRAME: u32 = 16 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;

/// One HTTP/2 connection, shared: each clone sends on it.
#[derive(Debug, Clone)]
pub struct Sender {
    streams: SendRequest<Bytes>,
    /// Set when the connection has ended, or a request found it unusable.
    closed: Arc<AtomicBool>,
}

/// A request that could not be sent; `unsent` holds it when nothing of it went out.
#[derive(Debug)]
pub struct SendError<B> {
    pub error: Error,
    pub unsent: Option<Request<B>>,
}

/// How a connection checks that its peer is still there: a PING every `every`, and the
/// connection ends when its PONG has not come within `timeout` (its requests fail, and the
/// pool opens a new connection for the next). Without it a peer that vanished without closing
/// (its node gone) would hold the requests on its connection until TCP gave up, many minutes.
#[derive(Debug, Clone, Copy)]
pub struct KeepAlive {
    pub every: Duration,
    pub timeout: Duration,
}

impl KeepAlive {
    /// A ping every 10 s, answered within 3 s.
    pub const DEFAULT: KeepAlive = KeepAlive {
        every: Duration::from_secs(10),
        timeout: Duration::from_secs(3),
    };

    /// Pings the peer every `every` until a PONG is late (then `true`) or the connection has
    /// ended (`false`; `ended` is asked after each wait).
    pub async fn until_silent(self, mut pings: PingPong, ended: impl Fn() -> bool) -> bool {
        loop {
            tokio::time::sleep(self.every).await;
            if ended() {
                return false;
            }
            match tokio::time::timeout(self.timeout, pings.ping(Ping::opaque())).await {
                Ok(Ok(_pong)) => {}
                // The connection has ended.
                Ok(Err(_)) => return false,
                Err(_) => return true,
            }
        }
    }
}

/// Runs the HTTP/2 handshake on `io` to `addr` and drives the connection in a task of its own,
/// kept alive as `keep_alive` says.
pub async fn handshake<Io>(io: Io, addr: SocketAddr, keep_alive: KeepAlive) -> Result<Sender, Error>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (streams, mut connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    let pings = connection.ping_pong();
    let closed = Arc::new(AtomicBool::new(false));
    let ended = closed.clone();
    let driven = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%addr, error = %e, "HTTP/2 connection ended with an error");
        }
        ended.store(true, Ordering::Release);
    });
    if let Some(pings) = pings {
        // A task of its own, so that the connection's task, woken for every frame, polls no
        // timer.
        let watch = Watch {
            connection: driven.abort_handle(),
            closed: closed.clone(),
            addr,
        };
        tokio::spawn(watch.keep_alive(pings, keep_alive));
    }
    let streams = streams.ready().await?;
    Ok(Sender { streams, closed })
}

/// What a connection's keep-alive ends when the peer stops answering.
struct Watch {
    connection: AbortHandle,
    closed: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl Watch {
    async fn keep_alive(self, pings: PingPong, keep_alive: KeepAlive) {
        let ended = || self.closed.load(Ordering::Acquire);
        if keep_alive.until_silent(pings, ended).await {
            tracing::warn!(
                addr = %self.addr,
                "no answer to an HTTP/2 PING within {:?}: closing the connection",
                keep_alive.timeout
            );
            self.closed.store(true, Ordering::Release);
            self.connection.abort();
        }
    }
}

impl Sender {
    /// The connection has ended (or refused a request): it takes no more.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends `req` (in absolute form: its scheme and authority become the pseudo-headers) and
    /// waits for the response's head. A body to send goes up from a task of its own.
    pub async fn send<B>(&mut self, req: Request<B>) -> Result<Response<RecvBody>, SendError<B>>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Err(error) = poll_fn(|cx| self.streams.poll_ready(cx)).await {
            self.closed.store(true, Ordering::Release);
            return Err(SendError {
                error,
                unsent: Some(req),
            });
        }
        let (parts, body) = req.into_parts();
        let mut head = Request::from_parts(parts, ());
        strip_connection_specific(head.headers_mut());
        if let Some(len) = body.size_hint().exact()
            && (len != 0 || has_payload_semantics(head.method()))
            && !head.headers().contains_key(CONTENT_LENGTH)
        {
            head.headers_mut().insert(CONTENT_LENGTH, len.into());
        }
        let end_of_stream = body.is_end_stream();
        let (response, upload) = match self.streams.send_request(head, end_of_stream) {
            Ok(sent) => sent,
            Err(error) => {
                // The connection went away between the check above and here: the next
                // request takes a new one.
                if error.is_go_away() || error.is_io() {
                    self.closed.store(true, Ordering::Release);
                }
                return Err(SendError {
                    error,
                    unsent: None,
                });
            }
        };
        if !end_of_stream {
            tokio::spawn(SendBody::new(body, upload));
        }
        let response = response.await.map_err(|error| SendError {
            error,
            unsent: None,
        })?;
        let (parts, recv) = response.into_parts();
        let body = RecvBody::new(recv, &parts.headers);
        Ok(Response::from_parts(parts, body))
    }
}

/// Whether a body of length 0 is worth a `content-length: 0` (as hyper decides it).
fn has_payload_semantics(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::Frame;
    use hyper::body::Incoming;
    use hyper::header::HeaderMap;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::{TcpListener, TcpStream};

    /// How long a test waits before it fails instead of hanging.
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

    /// An HTTP/2 server that answers each request with its method, its path, the request body
    /// it read, and a trailer that says how many bytes that was.
    async fn echo_server() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let answer = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let head = format!("{} {} ", req.method(), req.uri().path());
                        let body = req.into_body().collect().await?.to_bytes();
                        let mut trailers = HeaderMap::new();
                        trailers.insert("x-read", body.len().into());
                        let frames = vec![
                            Ok::<_, hyper::Error>(Frame::data(Bytes::from(head))),
                            Ok(Frame::data(body)),
                            Ok(Frame::trailers(trailers)),
                        ];
                        Ok::<_, hyper::Error>(Response::new(StreamBody::new(tokio_stream::iter(
                            frames,
                        ))))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), answer)
                        .await;
                });
            }
        });
        addr
    }

    async fn sender(addr: SocketAddr) -> Sender {
        sender_keeping_alive(addr, KeepAlive::DEFAULT).await
    }

    async fn sender_keeping_alive(addr: SocketAddr, keep_alive: KeepAlive) -> Sender {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        handshake(tcp, addr, keep_alive).await.expect("handshake")
    }

    /// Pings every 10 ms; a pong may take 2 s (a loaded CI machine stalls a test for a while).
    const QUICK: KeepAlive = KeepAlive {
        every: Duration::from_millis(10),
        timeout: Duration::from_secs(2),
    };

    #[tokio::test]
    async fn a_peer_that_answers_pings_keeps_its_connection() {
        let addr = echo_server().await;
        let mut sender = sender_keeping_alive(addr, QUICK).await;
        // Requests one after another through many ping rounds.
        let start = std::time::Instant::now();
        while start.elapsed() < 20 * QUICK.every {
            let req = Request::get(format!("http://{addr}/"))
                .body(http_body_util::Empty::<Bytes>::new())
                .expect("request");
            let resp = sender.send(req).await.expect("response");
            resp.into_body().collect().await.expect("body");
        }
        assert!(!sender.is_closed());
    }

    #[tokio::test]
    async fn a_peer_that_stops_answering_pings_loses_its_connection_and_its_requests_fail() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (handshaken, held) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            // Handshake, then never poll the connection again: no frame is answered.
            let conn = h2::server::handshake(tcp).await.expect("server handshake");
            let _ = handshaken.send(conn);
        });
        let mut sender = sender_keeping_alive(addr, QUICK).await;
        let _conn = held.await.expect("the server's connection");
        // Its requests wait for the pong's timeout (2 s), and no longer.
        let req = Request::get(format!("http://{addr}/"))
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let failed = tokio::time::timeout(LIMIT, sender.send(req))
            .await
            .expect("the request fails instead of waiting");
        assert!(failed.is_err(), "no answer can come");
        assert!(sender.is_closed());
    }

    #[tokio::test]
    async fn a_request_body_larger_than_a_stream_window_goes_up_whole_with_the_trailers_back() {
        let addr = echo_server().await;
        let mut sender = sender(addr).await;
        // Larger than the server's default stream window (64 KiB less one), in several frames.
        let body = Bytes::from(vec![b'x'; 300 * 1024]);
        let req = Request::post(format!("http://{addr}/upload"))
            .body(Full::new(body.clone()))
            .expect("request");
        let exchange = async {
            let resp = sender.send(req).await.expect("response");
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.expect("body")
        };
        let collected = tokio::time::timeout(LIMIT, exchange)
            .await
            .expect("the upload and its answer within the limit");
        let trailers = collected.trailers().cloned().expect("trailers");
        let got = collected.to_bytes();
        assert_eq!(&got[..13], b"POST /upload ");
        assert_eq!(got.len() - 13, body.len());
        assert_eq!(trailers["x-read"], body.len().to_string().as_str());
    }

    #[tokio::test]
    async fn concurrent_requests_share_the_connection_and_each_gets_its_own_answer() {
        let addr = echo_server().await;
        let sender = sender(addr).await;
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..50 {
            let mut sender = sender.clone();
            requests.spawn(async move {
                let req = Request::get(format!("http://{addr}/r{i}"))
                    .body(http_body_util::Empty::<Bytes>::new())
                    .expect("request");
                let resp = sender.send(req).await.expect("response");
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                (i, String::from_utf8_lossy(&body).into_owned())
            });
        }
        for (i, answer) in requests.join_all().await {
            assert_eq!(answer, format!("GET /r{i} "));
        }
    }

    #[tokio::test]
    async fn a_connection_whose_server_went_away_is_closed_and_gives_the_request_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut conn = h2::server::handshake(tcp).await.expect("server handshake");
            // Settle the handshake, then go away with no stream accepted.
            conn.graceful_shutdown();
            while conn.accept().await.is_some() {}
        });
        let mut sender = sender(addr).await;
        server.await.expect("server");
        // The connection's task sees the GOAWAY and the close; the flag follows.
        let closed = async {
            while !sender.is_closed() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(LIMIT, closed)
            .await
            .expect("the connection's end noticed");
        let req = Request::get(format!("http://{addr}/"))
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let e = sender.send(req).await.expect_err("a closed connection");
        assert!(e.unsent.is_some(), "nothing was sent: {}", e.error);
    }
}
