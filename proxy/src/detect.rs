//! Protocol detection: what a client speaks, from the first bytes it sends.
//!
//! HTTP/2 with prior knowledge starts with the connection preface; TLS with a handshake record
//! (0x16 0x03); HTTP/1.x with `METHOD SP target SP HTTP/1.x`. Anything else is opaque TCP. A
//! client that sends nothing within the timeout (a server-speaks-first protocol) is opaque too;
//! ports known to be opaque skip detection, so such protocols never wait.
//!
//! The bytes read to decide are returned, and whoever handles the connection replays them
//! ([`crate::io::Rewind`] for HTTP, written upstream first for L4).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The HTTP/2 connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Most bytes read before deciding.
const MAX_PREFIX: usize = 2048;

/// What a connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Tls,
    Opaque,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::Http1,
        Protocol::Http2,
        Protocol::Tls,
        Protocol::Opaque,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Tls => "tls",
            Protocol::Opaque => "opaque",
        }
    }
}

/// Classifies the first bytes of a connection; `None` when more bytes are needed to decide.
pub fn classify(bytes: &[u8]) -> Option<Protocol> {
    let first = *bytes.first()?;
    if H2_PREFACE.starts_with(&bytes[..bytes.len().min(H2_PREFACE.len())]) {
        return (bytes.len() >= H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    if first == 0x16 {
        return bytes.get(1).map(|b| {
            if *b == 0x03 {
                Protocol::Tls
            } else {
                Protocol::Opaque
            }
        });
    }
    http1(bytes)
}

/// `METHOD SP request-target SP HTTP/1.x CRLF`, decided as early as the bytes allow.
fn http1(bytes: &[u8]) -> Option<Protocol> {
    let space = bytes.iter().position(|b| *b == b' ');
    let method = &bytes[..space.unwrap_or(bytes.len())];
    // Methods are tokens; the registered ones are uppercase letters.
    if method.is_empty() || method.len() > 16 || !method.iter().all(u8::is_ascii_uppercase) {
        return Some(Protocol::Opaque);
    }
    let rest = &bytes[space? + 1..];
    let Some(end) = rest.iter().position(|b| *b == b'\n') else {
        let binary = rest.iter().any(|b| b.is_ascii_control() && *b != b'\r');
        return (binary || bytes.len() >= MAX_PREFIX).then_some(Protocol::Opaque);
    };
    let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
    let mut parts = line.rsplitn(2, |b| *b == b' ');
    let version = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let is_http = !target.is_empty() && (version == b"HTTP/1.1" || version == b"HTTP/1.0");
    Some(if is_http {
        Protocol::Http1
    } else {
        Protocol::Opaque
    })
}

/// Reads from `stream` until the protocol is known or `timeout` passes (then: opaque).
/// Returns the protocol and the bytes read, which the caller must replay.
pub async fn detect(
    stream: &mut TcpStream,
    timeout: Duration,
) -> std::io::Result<(Protocol, BytesMut)> {
    let mut prefix = BytesMut::with_capacity(MAX_PREFIX);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let read = match tokio::time::timeout_at(deadline, stream.read_buf(&mut prefix)).await {
            Ok(result) => result?,
            Err(_) => return Ok((classify(&prefix).unwrap_or(Protocol::Opaque), prefix)),
        };
        if read == 0 || prefix.len() >= MAX_PREFIX {
            return Ok((classify(&prefix).unwrap_or(Protocol::Opaque), prefix));
        }
        if let Some(p) = classify(&prefix) {
            return Ok((p, prefix));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_request_lines() {
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(
            classify(b"POST /api/v1?x=1 HTTP/1.0\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(b"GET / HTTP/1.1\n"), Some(Protocol::Http1));
        assert_eq!(
            classify(b"GET /partial"),
            None,
            "needs the rest of the line"
        );
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET / SSH-2.0\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"get / HTTP/1.1\r\n"), Some(Protocol::Opaque));
    }

    #[test]
    fn http2_preface_tls_and_opaque() {
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(
            classify(&H2_PREFACE[..10]),
            None,
            "a preface prefix needs more bytes"
        );
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
            Some(Protocol::Opaque),
            "a broken preface is neither h2 nor HTTP/1"
        );
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            Some(Protocol::Tls)
        );
        assert_eq!(classify(&[0x16]), None);
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2\r\n"), Some(Protocol::Opaque));
        assert_eq!(
            classify(b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
            Some(Protocol::Opaque),
            "postgres startup"
        );
        assert_eq!(classify(b""), None);
    }

    #[tokio::test]
    async fn detection_reads_split_request_lines_and_times_out_on_silence() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /a").await.expect("write");
            tokio::task::yield_now().await;
            s.write_all(b"bc HTTP/1.1\r\n\r\n").await.expect("write");
            let silent = TcpStream::connect(addr).await.expect("connect");
            (s, silent)
        });
        let (mut first, _) = listener.accept().await.expect("accept");
        let (protocol, prefix) = detect(&mut first, Duration::from_secs(5))
            .await
            .expect("detect");
        assert_eq!(protocol, Protocol::Http1);
        assert!(prefix.starts_with(b"GET /a"));
        let (mut silent, _) = listener.accept().await.expect("accept");
        let (protocol, prefix) = detect(&mut silent, Duration::from_millis(50))
            .await
            .expect("detect");
        assert_eq!((protocol, prefix.len()), (Protocol::Opaque, 0));
        drop(client.await);
    }
}
