//! `mesh-test-app`: the apps that run inside test pods and the demo.
//!
//! - `http`: answers every HTTP/1.x request with `hello from NAME`.
//! - `echo`: sends back every byte it receives; half-closes after the client does.
//! - `send`: sends N pattern bytes, half-closes, and checks that the echo is the same N bytes.
//!
//! Servers print `ready ADDR` on stdout once they listen, which is the harness's readiness signal.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use mesh_tests::pattern::Pattern;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Parser)]
#[command(name = "mesh-test-app", about)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// HTTP/1.x server answering `hello from NAME`.
    Http {
        #[arg(long)]
        listen: Vec<SocketAddr>,
        #[arg(long)]
        name: String,
        /// Wait this long before each response (a slow endpoint).
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Report the Host each request arrived with (`x-seen-host`). Off by default, so that
        /// the responses of benches/instructions.sh's backend stay the same.
        #[arg(long)]
        report_host: bool,
    },
    /// TCP echo server.
    Echo {
        #[arg(long)]
        listen: Vec<SocketAddr>,
    },
    /// Sends pattern bytes to an echo server and verifies what comes back.
    Send {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// A server-speaks-first protocol: sends `TEXT` and a newline as soon as a client connects.
    Banner {
        #[arg(long)]
        listen: Vec<SocketAddr>,
        #[arg(long)]
        text: String,
    },
    /// Connects, sends nothing, and prints the first line the server sends (10 s at most).
    ReadLine {
        #[arg(long)]
        connect: SocketAddr,
    },
    /// Answers `Upgrade: echo` requests with 101 and then echoes every byte (what a WebSocket
    /// server does at the HTTP level).
    UpgradeEcho {
        #[arg(long)]
        listen: Vec<SocketAddr>,
    },
    /// Asks for `Upgrade: echo`, expects 101, sends `message` and prints `echoed MESSAGE`.
    UpgradeClient {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        message: String,
    },
    /// Sends `count` HTTP/1.1 GETs, each on a new connection, and prints how many answers each
    /// body got, one `COUNT BODY` line per body, most frequent first.
    Tally {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 100)]
        count: usize,
    },
    /// A client of a sidecar's peer port, as a peer sidecar (or an impostor) would be: mutual TLS
    /// with `cert`/`key` and ALPN `alpn`, then the 2-byte `port`, then `message`, then the end of
    /// its stream; prints what comes back until the stream ends. Fails if the handshake fails.
    MtlsTcp {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value = "mesh/tcp")]
        alpn: String,
        #[arg(long)]
        cert: std::path::PathBuf,
        #[arg(long)]
        key: std::path::PathBuf,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "")]
        message: String,
    },
    /// HTTP/1.1 bulk server: `PUT /upload` (with content-length) checks every byte against the
    /// pattern and answers `received N`; `GET /download?bytes=N` streams N pattern bytes.
    Bulk {
        #[arg(long)]
        listen: Vec<SocketAddr>,
    },
    /// `PUT /upload` of `bytes` pattern bytes to a bulk server; prints its answer.
    BulkPut {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        bytes: u64,
    },
    /// `GET /download?bytes=N` from a bulk server, checking every byte; prints `received N`.
    BulkGet {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        bytes: u64,
    },
    /// Connects to an echo server, prints `ready connected`, waits for a line on stdin, then
    /// sends `ping` and checks that it comes back (keeps a connection open on demand).
    Hold {
        #[arg(long)]
        connect: SocketAddr,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Args::parse().mode {
        Mode::Http {
            listen,
            name,
            delay_ms,
            report_host,
        } => {
            serve(listen, move |s| {
                http(s, name.clone(), delay_ms, report_host)
            })
            .await
        }
        Mode::Echo { listen } => serve(listen, echo).await,
        Mode::Send {
            connect,
            bytes,
            seed,
        } => send(connect, bytes, seed).await,
        Mode::Hold { connect } => hold(connect).await,
        Mode::Tally { connect, count } => tally(connect, count).await,
        Mode::Banner { listen, text } => serve(listen, move |s| banner(s, text.clone())).await,
        Mode::ReadLine { connect } => read_line(connect).await,
        Mode::Bulk { listen } => serve(listen, bulk).await,
        Mode::BulkPut { connect, bytes } => bulk_put(connect, bytes).await,
        Mode::BulkGet { connect, bytes } => bulk_get(connect, bytes).await,
        Mode::MtlsTcp {
            connect,
            alpn,
            cert,
            key,
            port,
            message,
        } => mtls_tcp(connect, &alpn, &cert, &key, port, &message).await,
        Mode::UpgradeEcho { listen } => serve(listen, upgrade_echo).await,
        Mode::UpgradeClient { connect, message } => upgrade_client(connect, message).await,
    }
}

async fn serve<F, Fut>(addrs: Vec<SocketAddr>, handler: F) -> anyhow::Result<()>
where
    F: Fn(TcpStream) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    if addrs.is_empty() {
        bail!("give at least one --listen address");
    }
    let mut listeners = Vec::new();
    for addr in &addrs {
        listeners.push(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
        );
    }
    for addr in &addrs {
        println!("ready {addr}");
    }
    let mut tasks = Vec::new();
    for listener in listeners {
        let handler = handler.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let (stream, peer) = listener.accept().await.context("accept failed")?;
                let handler = handler.clone();
                tokio::spawn(async move {
                    if let Err(e) = handler(stream).await {
                        eprintln!("connection from {peer}: {e:#}");
                    }
                });
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn http(
    mut stream: TcpStream,
    name: String,
    delay_ms: u64,
    report_host: bool,
) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            // Report what arrived: the request target, the Host when asked, x-from-mesh when a
            // route set it, and the caller the mesh authenticated (x-forwarded-client-cert).
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let target = head.split(' ').nth(1).unwrap_or("?").to_string();
            let seen = |name: &str, reported: &str| {
                head.lines()
                    .find_map(|l| {
                        l.split_once(':')
                            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.trim().to_string())
                    })
                    .map(|v| format!("{reported}: {v}\r\n"))
                    .unwrap_or_default()
            };
            let from_mesh = format!(
                "{}{}{}",
                if report_host {
                    seen("host", "x-seen-host")
                } else {
                    String::new()
                },
                seen("x-from-mesh", "x-seen-x-from-mesh"),
                seen("x-forwarded-client-cert", "x-seen-client-cert")
            );
            if delay_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            }
            let body = format!("hello from {name}\n");
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-served-by: {name}\r\nx-seen-path: {target}\r\n{from_mesh}\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).await?;
            buf.drain(..end + 4);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn echo(mut stream: TcpStream) -> anyhow::Result<()> {
    let (mut r, mut w) = stream.split();
    tokio::io::copy(&mut r, &mut w).await?;
    w.shutdown().await?;
    Ok(())
}

async fn send(addr: SocketAddr, bytes: u64, seed: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut pattern = Pattern::new(seed);
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            pattern.fill(&mut buf[..n]);
            w.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        w.shutdown().await?;
        anyhow::Ok(())
    });
    let mut expected = Pattern::new(seed);
    let (mut buf, mut want) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut received = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        expected.fill(&mut want[..n]);
        if buf[..n] != want[..n] {
            bail!(
                "echo differs from what was sent within bytes {received}..{}",
                received + n as u64
            );
        }
        received += n as u64;
    }
    writer.await??;
    let secs = start.elapsed().as_secs_f64();
    println!("sent={bytes} received={received} seconds={secs:.2}");
    if received != bytes {
        bail!("sent {bytes} bytes but {received} came back");
    }
    Ok(())
}

async fn hold(addr: SocketAddr) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    println!("ready connected");
    let mut line = String::new();
    tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await?;
    stream.write_all(b"ping\n").await?;
    stream.shutdown().await?;
    let mut back = String::new();
    stream.read_to_string(&mut back).await?;
    if back != "ping\n" {
        bail!("expected the echo `ping`, got {back:?}");
    }
    println!("echoed ping");
    Ok(())
}

async fn tally(addr: SocketAddr, count: usize) -> anyhow::Result<()> {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..count {
        let response = tokio::time::timeout(std::time::Duration::from_secs(10), get_once(addr))
            .await
            .map_err(|_| anyhow::anyhow!("request {i}: no complete response within 10 s"))?
            .with_context(|| format!("request {i}"))?;
        if !response.starts_with("HTTP/1.1 200") {
            bail!("request {i}: unexpected response {response:?}");
        }
        let body = response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or("")
            .trim()
            .to_string();
        *counts.entry(body).or_default() += 1;
    }
    let mut sorted: Vec<_> = counts.into_iter().collect();
    sorted.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    for (body, n) in sorted {
        println!("{n} {body}");
    }
    Ok(())
}

/// One GET on a new connection; the request half-closes the connection, so the response ends
/// with the server's close.
async fn get_once(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream
        .write_all(format!("GET / HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
        .await?;
    stream.shutdown().await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

async fn banner(mut stream: TcpStream, text: String) -> anyhow::Result<()> {
    stream.write_all(format!("{text}\r\n").as_bytes()).await?;
    // Wait for the client to go away.
    let mut sink = [0u8; 256];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

async fn read_line(addr: SocketAddr) -> anyhow::Result<()> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stream);
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        reader.read_line(&mut line),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no line from {addr} within 10 s"))??;
    println!("{}", line.trim_end());
    Ok(())
}

/// Reads up to and including the blank line that ends an HTTP head.
async fn read_head(stream: &mut TcpStream) -> anyhow::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            bail!("connection closed inside the HTTP head");
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

async fn upgrade_echo(mut stream: TcpStream) -> anyhow::Result<()> {
    let head = read_head(&mut stream).await?.to_ascii_lowercase();
    if !head.contains("upgrade: echo") {
        stream
            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await?;
        return Ok(());
    }
    stream
        .write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .await?;
    let (mut r, mut w) = stream.split();
    tokio::io::copy(&mut r, &mut w).await?;
    w.shutdown().await?;
    Ok(())
}

async fn upgrade_client(addr: SocketAddr, message: String) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream
        .write_all(
            format!(
                "GET /ws HTTP/1.1\r\nhost: {addr}\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let head = tokio::time::timeout(std::time::Duration::from_secs(10), read_head(&mut stream))
        .await
        .map_err(|_| anyhow::anyhow!("no response head within 10 s"))??;
    if !head.starts_with("HTTP/1.1 101") {
        bail!("expected 101 Switching Protocols, got: {head}");
    }
    stream.write_all(message.as_bytes()).await?;
    stream.shutdown().await?;
    let mut back = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_string(&mut back),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no echo within 10 s"))??;
    println!("echoed {back}");
    Ok(())
}

/// Accepts any server certificate: this client tests the server's checks, not its own.
#[derive(Debug)]
struct AnyServer(rustls::crypto::WebPkiSupportedAlgorithms);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

async fn mtls_tcp(
    addr: SocketAddr,
    alpn: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
    port: u16,
    message: &str,
) -> anyhow::Result<()> {
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read {}", key.display()))?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyServer(
            provider.signature_verification_algorithms,
        )))
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![alpn.as_bytes().to_vec()];
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .context("TLS handshake failed")?;
    tls.write_all(&port.to_be_bytes()).await?;
    tls.write_all(message.as_bytes()).await?;
    // Done sending: the server sees the end of the request stream, as from a closing client.
    tls.shutdown().await?;
    let mut got = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tls.read_to_end(&mut got),
    );
    match read.await {
        Ok(Ok(_)) => {}
        // The server's refusal can arrive as an alert or a reset after the handshake.
        Ok(Err(e)) => eprintln!("stream ended: {e}"),
        Err(_) => bail!("no end of stream from {addr} within 10 s"),
    }
    print!("{}", String::from_utf8_lossy(&got));
    Ok(())
}

const BULK_SEED: u64 = 1234;

/// Writes `bytes` pattern bytes.
async fn write_pattern(w: &mut (impl AsyncWriteExt + Unpin), bytes: u64) -> anyhow::Result<()> {
    let mut pattern = Pattern::new(BULK_SEED);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        pattern.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

/// Reads exactly `bytes` bytes (after `already`, bytes read with the head), checking each
/// against the pattern.
async fn read_pattern(
    r: &mut (impl AsyncReadExt + Unpin),
    already: &[u8],
    bytes: u64,
) -> anyhow::Result<u64> {
    let mut expected = Pattern::new(BULK_SEED);
    let mut want = vec![0u8; 64 * 1024];
    let mut check = |got: &[u8], at: u64| -> anyhow::Result<()> {
        for chunk in got.chunks(want.len()) {
            expected.fill(&mut want[..chunk.len()]);
            anyhow::ensure!(
                chunk == &want[..chunk.len()],
                "byte mismatch near offset {at}"
            );
        }
        Ok(())
    };
    let first = already.len().min(bytes as usize);
    check(&already[..first], 0)?;
    let mut received = first as u64;
    let mut buf = vec![0u8; 64 * 1024];
    while received < bytes {
        let want_now = (bytes - received).min(buf.len() as u64) as usize;
        let n = r.read(&mut buf[..want_now]).await?;
        if n == 0 {
            bail!("stream ended after {received} of {bytes} bytes");
        }
        check(&buf[..n], received)?;
        received += n as u64;
    }
    Ok(received)
}

/// Reads an HTTP head; returns it and whatever body bytes came with it.
async fn read_head_and_rest(stream: &mut TcpStream) -> anyhow::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Ok(Some((head, buf[end + 4..].to_vec())));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                bail!("connection closed inside the HTTP head")
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn content_length(head: &str) -> Option<u64> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())
            .flatten()
    })
}

async fn bulk(mut stream: TcpStream) -> anyhow::Result<()> {
    while let Some((head, rest)) = read_head_and_rest(&mut stream).await? {
        let target = head.split(' ').nth(1).unwrap_or("/").to_string();
        if head.starts_with("PUT /upload") {
            let n = content_length(&head).context("PUT /upload needs content-length")?;
            let got = read_pattern(&mut stream, &rest, n).await?;
            let body = format!("received {got}\n");
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).await?;
        } else if let Some(n) = target
            .strip_prefix("/download?bytes=")
            .and_then(|n| n.parse::<u64>().ok())
        {
            let response = format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n");
            stream.write_all(response.as_bytes()).await?;
            write_pattern(&mut stream, n).await?;
        } else {
            stream
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .await?;
        }
    }
    Ok(())
}

async fn bulk_put(addr: SocketAddr, bytes: u64) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let head = format!("PUT /upload HTTP/1.1\r\nhost: bulk\r\ncontent-length: {bytes}\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    write_pattern(&mut stream, bytes).await?;
    let (head, rest) = read_head_and_rest(&mut stream)
        .await?
        .context("no response to the upload")?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "upload refused: {head}");
    let n = content_length(&head).unwrap_or(0) as usize;
    let mut body = rest;
    while body.len() < n {
        let mut chunk = [0u8; 256];
        let got = stream.read(&mut chunk).await?;
        anyhow::ensure!(got > 0, "response body cut short");
        body.extend_from_slice(&chunk[..got]);
    }
    print!("{}", String::from_utf8_lossy(&body));
    Ok(())
}

async fn bulk_get(addr: SocketAddr, bytes: u64) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let head = format!("GET /download?bytes={bytes} HTTP/1.1\r\nhost: bulk\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    let (head, rest) = read_head_and_rest(&mut stream)
        .await?
        .context("no response to the download")?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "download refused: {head}");
    let got = read_pattern(&mut stream, &rest, bytes).await?;
    println!("received {got}");
    Ok(())
}
