//! End-to-end: traffic between two pods through both sidecars, as transparent L4.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

use mesh_tests::binaries::binary;
use mesh_tests::fixtures::{MeshedPair, eventually, meshed_pair};
use mesh_tests::{IpFamilies, Pod};

const OUT_OPENED: &str = "mesh_tcp_connections_opened_total{direction=\"outbound\"}";
const OUT_CLOSED: &str = "mesh_tcp_connections_closed_total{direction=\"outbound\"}";
const IN_OPENED: &str = "mesh_tcp_connections_opened_total{direction=\"inbound\"}";
const IN_CLOSED: &str = "mesh_tcp_connections_closed_total{direction=\"inbound\"}";
const SETTLE: Duration = Duration::from_secs(10);

/// A connection an app in a pod holds open through the sidecars (`mesh-test-app hold`, to an
/// echo server) until [`Held::finish`].
struct Held {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Held {
    /// Connects from `pod` to `target`; returns once the app says it is connected.
    fn open(pod: &Pod, target: &str) -> anyhow::Result<Held> {
        let mut child = pod
            .command(binary("mesh-test-app")?)
            .args(["hold", "--connect", target])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        assert_eq!(
            lines.next().transpose()?.as_deref(),
            Some("ready connected")
        );
        Ok(Held { child, lines })
    }

    /// Sends `ping` on the held connection, checks that it comes back, and lets the app exit.
    fn finish(mut self) -> anyhow::Result<()> {
        self.child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdin"))?
            .write_all(b"go\n")?;
        assert_eq!(
            self.lines.next().transpose()?.as_deref(),
            Some("echoed ping")
        );
        assert!(self.child.wait()?.success());
        Ok(())
    }
}

fn body(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn curl_ok(pod: &Pod, url: &str) -> anyhow::Result<String> {
    let out = pod.curl(&["-g", url])?;
    anyhow::ensure!(
        out.status.success(),
        "curl {url} from {} failed: {}",
        pod.role,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(body(&out))
}

fn counts(pair: &MeshedPair) -> anyhow::Result<(u64, u64, u64)> {
    Ok((
        pair.a.metric(OUT_OPENED)?,
        pair.b.metric(IN_OPENED)?,
        pair.b.metric(OUT_OPENED)?,
    ))
}

#[test]
fn curl_reaches_the_peer_app_through_both_sidecars() -> anyhow::Result<()> {
    let pair = meshed_pair("curl", IpFamilies::V4, &[], &[])?;
    let _app = pair
        .b
        .start_app(&["http", "--listen", "0.0.0.0:8080", "--name", "b"])?;

    let text = curl_ok(&pair.a, &format!("http://{}:8080/", pair.b.ipv4))?;
    assert_eq!(text, "hello from b\n");

    assert_eq!(
        pair.a.metric(OUT_OPENED)?,
        1,
        "pod a's outbound sidecar carried the request"
    );
    assert_eq!(
        pair.b.metric(IN_OPENED)?,
        1,
        "pod b's inbound sidecar carried the request"
    );
    eventually(SETTLE, "both connections closed", || {
        Ok(pair.a.metric(OUT_CLOSED)? == 1 && pair.b.metric(IN_CLOSED)? == 1)
    })?;
    // The app's response is exactly this long; both sidecars must have carried every byte of it,
    // and the same request bytes.
    let response_len = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\nx-served-by: b\r\nx-seen-path: /\r\n\r\nhello from b\n".len();
    assert_eq!(
        pair.a
            .metric("mesh_tcp_sent_bytes_total{direction=\"outbound\"}")?,
        response_len as u64
    );
    assert_eq!(
        pair.b
            .metric("mesh_tcp_sent_bytes_total{direction=\"inbound\"}")?,
        response_len as u64
    );
    let request_a = pair
        .a
        .metric("mesh_tcp_received_bytes_total{direction=\"outbound\"}")?;
    let request_b = pair
        .b
        .metric("mesh_tcp_received_bytes_total{direction=\"inbound\"}")?;
    assert!(
        request_a > 0 && request_a == request_b,
        "request bytes: a {request_a}, b {request_b}"
    );
    Ok(())
}

#[test]
fn a_large_stream_arrives_intact_both_ways_with_half_close() -> anyhow::Result<()> {
    const BYTES: u64 = 100 * 1024 * 1024;
    let pair = meshed_pair("large", IpFamilies::V4, &[], &[])?;
    let _echo = pair.b.start_app(&["echo", "--listen", "0.0.0.0:9000"])?;

    // The sender half-closes after 100 MiB; the echo server only finishes after seeing that EOF,
    // and the sender checks every byte that comes back against the pattern it sent.
    let out = pair.a.run_app(&[
        "send",
        "--connect",
        &format!("{}:9000", pair.b.ipv4),
        "--bytes",
        &BYTES.to_string(),
    ])?;
    assert!(
        out.status.success(),
        "send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        body(&out).contains(&format!("received={BYTES} ")),
        "{}",
        body(&out)
    );

    eventually(SETTLE, "connections closed", || {
        Ok(pair.a.metric(OUT_CLOSED)? == 1 && pair.b.metric(IN_CLOSED)? == 1)
    })?;
    for (pod, dir) in [(&pair.a, "outbound"), (&pair.b, "inbound")] {
        assert_eq!(
            pod.metric(&format!(
                "mesh_tcp_received_bytes_total{{direction=\"{dir}\"}}"
            ))?,
            BYTES
        );
        assert_eq!(
            pod.metric(&format!("mesh_tcp_sent_bytes_total{{direction=\"{dir}\"}}"))?,
            BYTES
        );
    }
    Ok(())
}

#[test]
fn localhost_traffic_and_excluded_ports_and_cidrs_bypass_the_proxy() -> anyhow::Result<()> {
    // Pod c (10.77.0.4) is not meshed and is excluded by CIDR on pod a.
    let pair = meshed_pair(
        "bypass",
        IpFamilies::V4,
        &[
            "--exclude-outbound-ports",
            "9091",
            "--exclude-outbound-cidrs",
            "10.77.0.4/32",
        ],
        &["--exclude-inbound-ports", "9090"],
    )?;
    let c = pair.net.pod("c")?;
    let b_ip = pair.b.ipv4;
    let _b_app = pair.b.start_app(&[
        "http",
        "--listen",
        "0.0.0.0:8080",
        "--listen",
        "0.0.0.0:9090",
        "--listen",
        "0.0.0.0:9091",
        "--name",
        "b",
    ])?;
    let _c_app = c.start_app(&["http", "--listen", "0.0.0.0:8080", "--name", "c"])?;

    curl_ok(&pair.a, &format!("http://{b_ip}:8080/"))?;
    assert_eq!(counts(&pair)?, (1, 1, 0), "a->b:8080 crosses both sidecars");

    curl_ok(&pair.a, &format!("http://{b_ip}:9090/"))?;
    assert_eq!(
        counts(&pair)?,
        (2, 1, 0),
        "b's excluded inbound port 9090 skips b's sidecar"
    );

    curl_ok(&pair.a, &format!("http://{b_ip}:9091/"))?;
    assert_eq!(
        counts(&pair)?,
        (2, 2, 0),
        "a's excluded outbound port 9091 skips a's sidecar"
    );

    assert_eq!(
        curl_ok(&pair.a, &format!("http://{}:8080/", c.ipv4))?,
        "hello from c\n"
    );
    assert_eq!(
        counts(&pair)?,
        (2, 2, 0),
        "a's excluded CIDR skips a's sidecar"
    );

    assert_eq!(
        curl_ok(&pair.b, "http://127.0.0.1:8080/")?,
        "hello from b\n"
    );
    assert_eq!(
        curl_ok(&pair.b, &format!("http://{b_ip}:8080/"))?,
        "hello from b\n"
    );
    assert_eq!(
        counts(&pair)?,
        (2, 2, 0),
        "b's own localhost traffic is not intercepted"
    );
    Ok(())
}

#[test]
fn connecting_to_the_proxy_ports_directly_does_not_loop() -> anyhow::Result<()> {
    let pair = meshed_pair("loop", IpFamilies::V4, &[], &[])?;
    let _app = pair
        .b
        .start_app(&["http", "--listen", "0.0.0.0:8080", "--name", "b"])?;
    let refused = |pod: &Pod, dir: &str| -> anyhow::Result<u64> {
        Ok(pod.metric(&format!(
            "mesh_tcp_connections_refused_total{{direction=\"{dir}\",reason=\"loop\"}}"
        ))? + pod.metric(&format!(
            "mesh_tcp_connections_refused_total{{direction=\"{dir}\",reason=\"no_original_dst\"}}"
        ))?)
    };

    // Inside pod a, straight to the outbound port (on loopback and on the pod address).
    for url in [
        "http://127.0.0.1:15001/".to_string(),
        format!("http://{}:15001/", pair.a.ipv4),
    ] {
        let out = pair.a.curl(&[&url])?;
        assert!(!out.status.success(), "{url} must not be served");
    }
    assert_eq!(refused(&pair.a, "outbound")?, 2);
    assert_eq!(pair.a.metric(OUT_OPENED)?, 0, "nothing was forwarded");

    // From pod a to pod b's inbound port: a forwards it, b refuses to dial itself.
    let out = pair.a.curl(&[&format!("http://{}:15006/", pair.b.ipv4)])?;
    assert!(!out.status.success());
    assert_eq!(refused(&pair.b, "inbound")?, 1);
    assert_eq!(pair.b.metric(IN_OPENED)?, 0);

    // The proxies still work afterwards.
    assert_eq!(
        curl_ok(&pair.a, &format!("http://{}:8080/", pair.b.ipv4))?,
        "hello from b\n"
    );
    Ok(())
}

#[test]
fn ipv6_pods_work_the_same() -> anyhow::Result<()> {
    let pair = meshed_pair("ipv6", IpFamilies::Dual, &[], &[])?;
    assert!(
        pair.a
            .nat_rules(true)?
            .contains("-A OUTPUT -p tcp -j MESH_OUTPUT"),
        "ip6tables programmed"
    );
    let _app = pair
        .b
        .start_app(&["http", "--listen", "[::]:8080", "--name", "b"])?;
    let _echo = pair.b.start_app(&["echo", "--listen", "[::]:9000"])?;
    let b6 = pair.b.ipv6()?;

    assert_eq!(
        curl_ok(&pair.a, &format!("http://[{b6}]:8080/"))?,
        "hello from b\n"
    );
    assert_eq!(counts(&pair)?, (1, 1, 0));

    const BYTES: u64 = 20 * 1024 * 1024;
    let out = pair.a.run_app(&[
        "send",
        "--connect",
        &format!("[{b6}]:9000"),
        "--bytes",
        &BYTES.to_string(),
    ])?;
    assert!(
        out.status.success(),
        "send over IPv6 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(counts(&pair)?, (2, 2, 0));

    // IPv4 keeps working on the same dual-stack pods.
    assert_eq!(
        curl_ok(&pair.a, &format!("http://{}:8080/", pair.b.ipv4))?,
        "hello from b\n"
    );
    Ok(())
}

#[test]
fn shutdown_drains_open_connections_and_refuses_new_ones() -> anyhow::Result<()> {
    let mut pair = meshed_pair("drain", IpFamilies::V4, &[], &[])?;
    let _echo = pair.b.start_app(&["echo", "--listen", "0.0.0.0:9000"])?;
    let _http = pair
        .b
        .start_app(&["http", "--listen", "0.0.0.0:8080", "--name", "b"])?;

    // A connection that stays open until we say so.
    let hold = Held::open(&pair.a, &format!("{}:9000", pair.b.ipv4))?;
    eventually(SETTLE, "the held connection reached pod b", || {
        Ok(pair.b.metric(IN_OPENED)? == 1)
    })?;

    let out = pair.a.output(
        "curl",
        &["-sSf", "-X", "POST", "http://127.0.0.1:15000/shutdown"],
    )?;
    assert!(out.status.success());
    let ready = pair.a.output(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:15000/ready",
        ],
    )?;
    assert_eq!(body(&ready), "503", "not ready while draining");
    let out = pair.a.curl(&[&format!("http://{}:8080/", pair.b.ipv4)])?;
    assert!(
        !out.status.success(),
        "no new outbound connections while draining"
    );
    assert!(
        pair.a_proxy.is_running(),
        "the proxy waits for the open connection"
    );

    // Finish the held connection: it still works, and then the proxy exits cleanly.
    hold.finish()?;
    let status = pair.a_proxy.wait_exit(SETTLE)?;
    assert!(status.success(), "drained proxy exits 0, got {status}");

    // SIGTERM on an idle proxy exits promptly too.
    pair.b_proxy.terminate()?;
    assert!(pair.b_proxy.wait_exit(SETTLE)?.success());
    Ok(())
}

/// One established TCP connection of a process in a pod, as `ss` shows it.
#[derive(Debug)]
struct Socket {
    local: String,
    peer: String,
    congestion: String,
}

/// The established TCP connections of `program` in `pod`, with the congestion control each
/// runs (`ss -tinp`: a line per socket, then an indented line of its state that names it).
fn sockets_of(pod: &Pod, program: &str) -> anyhow::Result<Vec<Socket>> {
    let names = pod.run(
        "cat",
        &["/proc/sys/net/ipv4/tcp_available_congestion_control"],
    )?;
    let names: Vec<&str> = names.split_whitespace().collect();
    let text = pod.run("ss", &["-tinpH", "state", "established"])?;
    let owner = format!("((\"{program}\"");
    let mut sockets = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with(char::is_whitespace) {
            continue;
        }
        let info = lines
            .next_if(|l| l.starts_with(char::is_whitespace))
            .unwrap_or("");
        if !line.contains(&owner) {
            continue;
        }
        // Recv-Q, Send-Q, local address, peer address, process.
        let columns: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(peer)) = (columns.get(2), columns.get(3)) else {
            anyhow::bail!("cannot read the addresses in `ss` line {line:?}");
        };
        let congestion = info
            .split_whitespace()
            .find(|t| names.contains(t))
            .unwrap_or("none named");
        sockets.push(Socket {
            local: local.to_string(),
            peer: peer.to_string(),
            congestion: congestion.to_string(),
        });
    }
    Ok(sockets)
}

#[test]
fn hops_inside_a_pod_get_the_local_congestion_control_and_hops_between_pods_the_hosts()
-> anyhow::Result<()> {
    congestion_per_hop("cc", IpFamilies::V4, false)
}

#[test]
fn over_ipv6_too_hops_inside_a_pod_get_the_local_congestion_control() -> anyhow::Result<()> {
    congestion_per_hop("cc6", IpFamilies::Dual, true)
}

/// Two meshed pods, an app in pod a holding a connection to pod b's app through both sidecars
/// (over IPv6 if `v6`), and `ss` in each pod: the hop between the pods runs the host's
/// congestion control, each sidecar's hop to its own app the local choice (the app's
/// connection that the init step redirects to the sidecar on one side, the sidecar's to the
/// app on the other).
fn congestion_per_hop(label: &str, families: IpFamilies, v6: bool) -> anyhow::Result<()> {
    let net = mesh_tests::Network::new(label, families)?;
    let a = net.pod("a")?;
    let b = net.pod("b")?;
    let host = a.run("cat", &["/proc/sys/net/ipv4/tcp_congestion_control"])?;
    let host = host.trim().to_string();
    // A choice that differs from the host's, so that each socket tells which it was given.
    let local = if host == "reno" { "cubic" } else { "reno" };
    a.init_ok(&[])?;
    b.init_ok(&[])?;
    let _a_proxy = a.start_sidecar(&["--local-congestion", local])?;
    let _b_proxy = b.start_sidecar(&["--local-congestion", local])?;
    let (listen, a_ip, b_ip) = if v6 {
        (
            "[::]:9000",
            format!("[{}]", a.ipv6()?),
            format!("[{}]", b.ipv6()?),
        )
    } else {
        ("0.0.0.0:9000", a.ipv4.to_string(), b.ipv4.to_string())
    };
    let _echo = b.start_app(&["echo", "--listen", listen])?;

    let hold = Held::open(&a, &format!("{b_ip}:9000"))?;
    // Each sidecar holds two connections: one with its own app, one with the other pod.
    let mut seen = (Vec::new(), Vec::new());
    eventually(SETTLE, "both sidecars hold two connections", || {
        seen = (sockets_of(&a, "mesh-proxy")?, sockets_of(&b, "mesh-proxy")?);
        Ok(seen.0.len() == 2 && seen.1.len() == 2)
    })
    .map_err(|e| anyhow::anyhow!("{e}: {seen:?}"))?;

    let to_b = format!("{b_ip}:9000");
    let from_a = format!("{a_ip}:");
    check_hops("a", &seen.0, |s| s.peer == to_b, &host, local);
    check_hops("b", &seen.1, |s| s.peer.starts_with(&from_a), &host, local);

    hold.finish()?;
    Ok(())
}

/// Of a sidecar's two connections, the one with the other pod (`between`) runs the host's
/// congestion control, the one with its own app `local`.
fn check_hops(
    pod: &str,
    sockets: &[Socket],
    between: impl Fn(&Socket) -> bool,
    host: &str,
    local: &str,
) {
    let (out, inside): (Vec<&Socket>, Vec<&Socket>) = sockets.iter().partition(|s| between(s));
    assert_eq!(
        (out.len(), inside.len()),
        (1, 1),
        "pod {pod}: one connection with the other pod, one with its app: {sockets:?}"
    );
    assert_eq!(
        out[0].congestion, host,
        "pod {pod}: the hop between pods keeps the host's default: {sockets:?}"
    );
    assert_eq!(
        inside[0].congestion, local,
        "pod {pod}: the hop to its own app ({} to {}) gets the local choice: {sockets:?}",
        inside[0].peer, inside[0].local
    );
}
