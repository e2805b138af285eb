//! Server HTTP/2 connections on the `h2` crate, every stream answered inside the connection's
//! own task.
//!
//! hyper's HTTP/2 server spawns a task for each stream and, for a response with a body, pipes
//! the body through a state machine of its own: on the server-side sidecar of the mTLS pair that
//! was a task allocation a request (an aligned one, which glibc serves slowly), the copies of the
//! stream's future into and out of it, and a `HeaderMap` grown for the `content-length` it checks
//! for (`benches/instructions.sh 1000`, `PROFILE_TOP`). Here the connection's task accepts the
//! streams and polls their answers itself, in a [`FuturesUnordered`], and a response's body goes
//! out through [`SendBody`] in the same future that waited for the response.
//!
//! So the streams of one connection share one task: on a runtime of several threads they do not
//! run in parallel. That is the sidecars' case between each other (one connection from each
//! peer), where the work of a stream is small beside the connection's own (TLS, framing, HPACK),
//! which hyper also does in one task; the upstream connections the answers wait on have tasks of
//! their own.
//!
//! A panic while one stream is answered ends that stream only (`catch_unwind`): it is reset, and
//! the connection's other streams go on, as they did in hyper's tasks.
//!
//! The settings are hyper's server defaults (windows of 1 MB for the connection and a stream,
//! 16 KB frames, at most 200 concurrent streams, a 400 KB send buffer), so the traffic on the wire
//! is what it was. Unlike hyper's server, no `date` header is added to a response without one.
//!
//! The server checks that its peer is still there as the client does ([`KeepAlive`]): a PING
//! every 10 s from a task of its own, and a connection whose PONG does not come in time is
//! closed, dropping the answers still in progress on it (and with them their requests upstream),
//! instead of holding them until TCP gives up on a peer that vanished without closing.

use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::task::Poll;

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::{PingPong, Reason, RecvStream};
use hyper::body::Body;
use hyper::header::CONTENT_LENGTH;
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use crate::drain::Drain;
use crate::http2_body::{RecvBody, SendBody, strip_connection_specific};
pub use crate::http2_client::KeepAlive;

const CONN_WINDOW: u32 = 1024 * 1024;
const STREAM_WINDOW: u32 = 1024 * 1024;
const MAX_FRAME: u32 = 16 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;
const MAX_CONCURRENT_STREAMS: u32 = 200;
/// Streams this side may reset for the peer's errors before the connection is closed (hyper's
/// figure): a bound on what a misbehaving peer costs.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Serves HTTP/2 on `io` until the peer closes the connection (or stops answering the PINGs
/// of `keep_alive`), each request answered by `answer`. Once `drain` starts, the peer is sent a
/// GOAWAY and the streams it opened before finish.
pub async fn serve<Io, A, F, B>(
    io: Io,
    drain: &Drain,
    keep_alive: KeepAlive,
    answer: A,
) -> Result<(), h2::Error>
where
    Io: AsyncRead + AsyncWrite + Unpin,
    A: Fn(Request<RecvBody>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + crate::raw_head::ResponseFields + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .handshake::<_, Bytes>(io)
        .await?;
    // Told by the keep-alive's task when a PONG is late; `None` once that task has ended.
    let mut silent = conn.ping_pong().map(|pings| {
        let (tell, told) = oneshot::channel();
        tokio::spawn(keep_alive_watch(pings, keep_alive, tell));
        told
    });
    let answer = &answer;
    let mut streams = FuturesUnordered::new();
    let mut drained = pin!(drain.started());
    let mut draining = false;
    poll_fn(|cx| {
        loop {
            if let Some(told) = silent.as_mut()
                && let Poll::Ready(told) = Pin::new(told).poll(cx)
            {
                silent = None;
                if told.is_ok() {
                    tracing::warn!(
                        "no answer to an HTTP/2 PING within {:?}: closing the peer's connection",
                        keep_alive.timeout
                    );
                    return Poll::Ready(Ok(()));
                }
            }
            if !draining && drained.as_mut().poll(cx).is_ready() {
                draining = true;
                conn.graceful_shutdown();
            }
            // The streams first: what their answers queue is written by the connection's poll
            // below, in this same pass.
            while let Poll::Ready(Some(answered)) = streams.poll_next_unpin(cx) {
                let answered: std::thread::Result<()> = answered;
                if answered.is_err() {
                    tracing::error!(
                        "answering a peer's HTTP/2 stream panicked: the stream was reset"
                    );
                }
            }
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    // A panic in it ends there: the stream is reset (its `SendResponse`
                    // dropped unanswered), and the connection and its other streams go on, as
                    // they did when hyper gave each stream a task of its own. (Wrapped as it is
                    // pushed: an `async` wrapper would copy the stream's large future once more.)
                    streams.push(AssertUnwindSafe(stream(req, respond, answer)).catch_unwind());
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                // The connection has closed (after a GOAWAY, once its streams were done).
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// Tells `silent` when the peer has not answered a PING of `keep_alive` in time; ends with the
/// connection (when `silent`'s receiver is gone, or a PING can no longer be sent).
async fn keep_alive_watch(pings: PingPong, keep_alive: KeepAlive, silent: oneshot::Sender<()>) {
    if keep_alive.until_silent(pings, || silent.is_closed()).await {
        let _ = silent.send(());
    }
}

/// One stream: its request answered, unless the peer resets the stream first, and the answer
/// sent back, body and all.
async fn stream<A, F, B>(req: Request<RecvStream>, mut respond: SendResponse<Bytes>, answer: &A)
where
    A: Fn(Request<RecvBody>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + crate::raw_head::ResponseFields + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, recv) = req.into_parts();
    let body = RecvBody::new(recv, &parts.headers);
    let mut answered = pin!(answer(Request::from_parts(parts, body)));
    let response = poll_fn(|cx| {
        if let Poll::Ready(response) = answered.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        // Reset by the peer (it gave up on the request): the answer is dropped, and with it
        // the request upstream.
        match respond.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    let Some(response) = response else {
        tracing::debug!("the peer reset the stream before its answer");
        return;
    };
    let (mut head, mut body) = response.into_parts();
    // Fields kept as they came are for an HTTP/1.1 server; h2 needs them in the map.
    crate::raw_head::restore_into(&mut head.headers, body.take_kept());
    strip_connection_specific(&mut head.headers);
    let end_of_stream = body.is_end_stream();
    // A body of known length says so, as hyper's server did (not an empty one: a 204 or 304
    // has no `content-length: 0`). Looked up before it is inserted: an entry would grow a map
    // that is full, as the one hyper parses an HTTP/1.1 response into often is.
    if !end_of_stream
        && let Some(len) = body.size_hint().exact()
        && !head.headers.contains_key(CONTENT_LENGTH)
    {
        head.headers.insert(CONTENT_LENGTH, len.into());
    }
    match respond.send_response(Response::from_parts(head, ()), end_of_stream) {
        Ok(_) if end_of_stream => {}
        Ok(send) => SendBody::new(body, send).await,
        Err(e) => {
            tracing::debug!(error = %e, "the answer's head could not be sent");
            respond.send_reset(Reason::INTERNAL_ERROR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http2_client::{self, KeepAlive, Sender};
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::StatusCode;
    use hyper::header::{CONNECTION, HeaderValue, TRANSFER_ENCODING};
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Notify;

    /// How long a test waits before it fails instead of hanging.
    const LIMIT: Duration = Duration::from_secs(10);

    /// A server on a loopback port whose connections are answered by `answer`, drained by
    /// `drain`.
    async fn server<A, F, B>(answer: A, drain: Drain) -> SocketAddr
    where
        A: Fn(Request<RecvBody>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send,
        B: Body<Data = Bytes> + crate::raw_head::ResponseFields + Unpin + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        server_pinging(KeepAlive::DEFAULT, answer, drain).await
    }

    /// As [`server`], its connections kept alive as `keep_alive` says.
    async fn server_pinging<A, F, B>(keep_alive: KeepAlive, answer: A, drain: Drain) -> SocketAddr
    where
        A: Fn(Request<RecvBody>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send,
        B: Body<Data = Bytes> + crate::raw_head::ResponseFields + Unpin + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (answer, drain) = (answer.clone(), drain.clone());
                tokio::spawn(async move {
                    let _ = serve(tcp, &drain, keep_alive, answer).await;
                });
            }
        });
        addr
    }

    async fn client(addr: SocketAddr) -> Sender {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        http2_client::handshake(tcp, addr, KeepAlive::DEFAULT)
            .await
            .expect("handshake")
    }

    fn get(addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
        Request::get(format!("http://{addr}{path}"))
            .body(Empty::new())
            .expect("request")
    }

    /// Echoes the request's body back, with the headers an HTTP/1.1 upstream might send.
    async fn echo(req: Request<RecvBody>) -> Response<Full<Bytes>> {
        let body = req
            .into_body()
            .collect()
            .await
            .expect("request body")
            .to_bytes();
        let mut resp = Response::new(Full::new(body));
        let headers = resp.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        resp
    }

    #[tokio::test]
    async fn a_body_larger_than_the_windows_goes_both_ways_whole() {
        let addr = server(echo, Drain::new()).await;
        let mut sender = client(addr).await;
        // Larger than the server's 1 MB windows and the client's 2 MB stream window.
        let body = Bytes::from(vec![b'x'; 3 * 1024 * 1024 + 17]);
        let req = Request::post(format!("http://{addr}/echo"))
            .body(Full::new(body.clone()))
            .expect("request");
        let exchange = async {
            let resp = sender.send(req).await.expect("response");
            let length = resp.headers().get(CONTENT_LENGTH).cloned();
            let specific = resp.headers().contains_key(CONNECTION)
                || resp.headers().contains_key(TRANSFER_ENCODING);
            let got = resp.into_body().collect().await.expect("body").to_bytes();
            (length, specific, got)
        };
        let (length, specific, got) = tokio::time::timeout(LIMIT, exchange)
            .await
            .expect("the exchange within the limit");
        assert_eq!(got.len(), body.len());
        assert!(got == body, "the body came back changed");
        assert_eq!(length, Some(body.len().into()), "a known length is sent");
        assert!(
            !specific,
            "connection-specific headers are not sent in HTTP/2"
        );
    }

    #[tokio::test]
    async fn a_panic_answering_one_stream_resets_it_and_spares_the_connection() {
        let addr = server(
            |req: Request<RecvBody>| async move {
                assert!(req.uri().path() != "/panic", "a bug in answering");
                Response::new(Full::new(Bytes::from_static(b"fine")))
            },
            Drain::new(),
        )
        .await;
        let mut sender = client(addr).await;
        let exchange = async {
            let failed = sender.send(get(addr, "/panic")).await;
            let resp = sender.send(get(addr, "/after")).await.expect("response");
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            (failed.is_err(), body)
        };
        let (failed, body) = tokio::time::timeout(LIMIT, exchange)
            .await
            .expect("both answered within the limit");
        assert!(failed, "the stream whose answer panicked is reset");
        assert_eq!(
            &body[..],
            b"fine",
            "the next stream on the same connection is answered"
        );
    }

    #[tokio::test]
    async fn an_empty_answer_ends_with_its_head_and_has_no_length() {
        let addr = server(
            |_req| async {
                let mut resp = Response::new(Empty::<Bytes>::new());
                *resp.status_mut() = StatusCode::NO_CONTENT;
                resp
            },
            Drain::new(),
        )
        .await;
        let mut sender = client(addr).await;
        let resp = sender.send(get(addr, "/")).await.expect("response");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert!(!resp.headers().contains_key(CONTENT_LENGTH));
        assert!(resp.body().is_end_stream(), "END_STREAM on the head");
    }

    #[tokio::test]
    async fn many_streams_at_once_each_get_their_own_answer() {
        let addr = server(
            |req: Request<RecvBody>| async move {
                // Answered out of order: the later paths wait less.
                let n: u64 = req.uri().path()[2..].parse().expect("a number");
                tokio::time::sleep(Duration::from_millis(50 - n)).await;
                Response::new(Full::new(Bytes::from(req.uri().path().to_string())))
            },
            Drain::new(),
        )
        .await;
        let sender = client(addr).await;
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..50 {
            let mut sender = sender.clone();
            requests.spawn(async move {
                let resp = sender
                    .send(get(addr, &format!("/r{i}")))
                    .await
                    .expect("response");
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                (i, String::from_utf8_lossy(&body).into_owned())
            });
        }
        let answers = tokio::time::timeout(LIMIT, requests.join_all())
            .await
            .expect("all answered within the limit");
        for (i, answer) in answers {
            assert_eq!(answer, format!("/r{i}"));
        }
    }

    /// Set when dropped: tells a test that an answer was given up.
    struct Dropped(Arc<Notify>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.notify_one();
        }
    }

    #[tokio::test]
    async fn a_stream_the_peer_resets_drops_its_answer() {
        let dropped = Arc::new(Notify::new());
        let started = Arc::new(Notify::new());
        let (on_drop, on_start) = (dropped.clone(), started.clone());
        let addr = server(
            move |_req| {
                let guard = Dropped(on_drop.clone());
                let started = on_start.clone();
                async move {
                    let _guard = guard;
                    started.notify_one();
                    std::future::pending::<()>().await;
                    Response::new(Empty::<Bytes>::new())
                }
            },
            Drain::new(),
        )
        .await;
        // The h2 client itself, to reset the stream by dropping its response future.
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (streams, conn) = h2::client::handshake(tcp).await.expect("handshake");
        tokio::spawn(conn);
        let mut streams = streams.ready().await.expect("ready");
        let (response, _send) = streams
            .send_request(
                Request::get(format!("http://{addr}/"))
                    .body(())
                    .expect("request"),
                true,
            )
            .expect("sent");
        tokio::time::timeout(LIMIT, started.notified())
            .await
            .expect("the answer started");
        drop(response);
        drop(_send);
        tokio::time::timeout(LIMIT, dropped.notified())
            .await
            .expect("the answer is dropped once the peer resets the stream");
    }

    /// Pings every 20 ms, each answered within 200 ms.
    const QUICK_PINGS: KeepAlive = KeepAlive {
        every: Duration::from_millis(20),
        timeout: Duration::from_millis(200),
    };

    #[tokio::test]
    async fn a_peer_that_answers_pings_keeps_its_connection_through_many_rounds() {
        // The answer takes 25 ping rounds; the client's connection answers each PING.
        let addr = server_pinging(
            QUICK_PINGS,
            |_req| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                Response::new(Full::new(Bytes::from_static(b"still here")))
            },
            Drain::new(),
        )
        .await;
        let mut sender = client(addr).await;
        let exchange = async {
            let resp = sender.send(get(addr, "/")).await.expect("response");
            resp.into_body().collect().await.expect("body").to_bytes()
        };
        let body = tokio::time::timeout(LIMIT, exchange)
            .await
            .expect("answered within the limit");
        assert_eq!(&body[..], b"still here");
        assert!(!sender.is_closed(), "the connection is still open");
    }

    #[tokio::test]
    async fn a_peer_that_stops_answering_pings_loses_its_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = server_pinging(
            QUICK_PINGS,
            |_req| async { Response::new(Empty::<Bytes>::new()) },
            Drain::new(),
        )
        .await;
        // A peer that sends the preface and its SETTINGS, then never answers anything.
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .expect("preface");
        let read_to_end = async {
            let mut got = Vec::new();
            tcp.read_to_end(&mut got).await.map(|_| got)
        };
        let got = tokio::time::timeout(LIMIT, read_to_end)
            .await
            .expect("the server closes the connection within the limit")
            .unwrap_or_default();
        // Frames: 3 bytes of length, 1 of type (6 is PING), 1 of flags, 4 of stream id.
        let mut at = 0;
        let mut pinged = false;
        while at + 9 <= got.len() {
            let len = usize::from(got[at]) << 16
                | usize::from(got[at + 1]) << 8
                | usize::from(got[at + 2]);
            pinged |= got[at + 3] == 6 && got[at + 4] & 1 == 0;
            at += 9 + len;
        }
        assert!(pinged, "the server sent a PING before it closed: {got:?}");
    }

    #[tokio::test]
    async fn a_drain_lets_the_open_stream_finish_and_takes_no_more() {
        let drain = Drain::new();
        let release = Arc::new(Notify::new());
        let started = Arc::new(Notify::new());
        let (wait, on_start) = (release.clone(), started.clone());
        let addr = server(
            move |req: Request<RecvBody>| {
                let (wait, started) = (wait.clone(), on_start.clone());
                async move {
                    if req.uri().path() == "/first" {
                        started.notify_one();
                        wait.notified().await;
                    }
                    Response::new(Full::new(Bytes::from_static(b"finished")))
                }
            },
            drain.clone(),
        )
        .await;
        let mut sender = client(addr).await;
        let mut first = sender.clone();
        let open = tokio::spawn(async move {
            let resp = first.send(get(addr, "/first")).await.expect("response");
            resp.into_body().collect().await.expect("body").to_bytes()
        });
        tokio::time::timeout(LIMIT, started.notified())
            .await
            .expect("the first stream is being answered");
        drain.start();
        // Once the GOAWAY reaches the client its next request is refused, unsent (those sent
        // before it arrived are answered).
        let refused = async {
            loop {
                if let Err(e) = sender.send(get(addr, "/next")).await {
                    return e;
                }
            }
        };
        let refused = tokio::time::timeout(LIMIT, refused)
            .await
            .expect("the drain's GOAWAY within the limit");
        assert!(
            refused.error.is_go_away() || refused.unsent.is_some(),
            "{}",
            refused.error
        );
        release.notify_one();
        let body = tokio::time::timeout(LIMIT, open)
            .await
            .expect("the open stream finishes")
            .expect("its task");
        assert_eq!(&body[..], b"finished");
    }
}
