//! End-to-end: automatic mutual TLS between sidecars (HTTP/2, HTTP/1.1, upgrades, TCP),
//! PeerAuthentication, AuthorizationPolicy, certificate rotation and the CA's checks, with the
//! real binaries in pods.
//!
//! Pods: `cp` (10.77.0.2, meshd), `a` (10.77.0.3, client, service account `client`), `b`
//! (10.77.0.4, app=web, service account `web`, HTTP app on 8080) and `x` (10.77.0.5, outside the
//! mesh: no init step, no sidecar). Service `web` is 10.96.0.20:80 (HTTP) and `web-tcp`
//! 10.96.0.21:81 (opaque TCP), both to b's 8080.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mesh_tests::fixtures::{eventually, promtool_check};
use mesh_tests::identity::mint;
use mesh_tests::{IpFamilies, Network, Pod, Process};

const SERVICES: &str = "
apiVersion: mesh.dev/v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80, targetPort: 8080, appProtocol: http}], selector: {app: web}, vip: 10.96.0.20}
---
apiVersion: mesh.dev/v1
kind: Service
metadata: {name: web-tcp}
spec: {ports: [{port: 81, targetPort: 8080, appProtocol: tcp}], selector: {app: web}, vip: 10.96.0.21}
";

const WEB: &str = "http://10.96.0.20/";
const WEB_TCP: &str = "http://10.96.0.21:81/";
const SETTLE: Duration = Duration::from_secs(15);

/// Fields drop in order: processes, then pods, then the network.
struct Scene {
    _sidecars: Vec<Process>,
    _apps: Vec<Process>,
    meshd: Option<Process>,
    a: Pod,
    b: Pod,
    x: Pod,
    cp: Pod,
    data_dir: PathBuf,
    net: Network,
}

fn scene(label: &str, meshd_args: &[&str]) -> anyhow::Result<Scene> {
    scene_with(label, meshd_args, &[])
}

/// [`scene`], with `a_args` added to the flags of a's sidecar.
fn scene_with(label: &str, meshd_args: &[&str], a_args: &[&str]) -> anyhow::Result<Scene> {
    let net = Network::new(label, IpFamilies::V4)?;
    let cp = net.pod("cp")?;
    let a = net.pod("a")?;
    let b = net.pod("b")?;
    let x = net.pod("x")?;
    let data_dir = net.log_dir.join("meshd-data");
    let meshd = cp.start_meshd(&data_dir, meshd_args)?;
    cp.apply(SERVICES, false)?;
    let apps = vec![b.start_app(&["http", "--listen", "0.0.0.0:8080", "--name", "b"])?];
    a.init_ok(&[])?;
    b.init_ok(&[])?;
    let sidecars = vec![
        a.start_meshed_sidecar_as(&cp, "app=client", "client", a_args)?,
        b.start_meshed_sidecar_as(&cp, "app=web", "web", &[])?,
    ];
    Ok(Scene {
        _sidecars: sidecars,
        _apps: apps,
        meshd: Some(meshd),
        a,
        b,
        x,
        cp,
        data_dir,
        net,
    })
}

/// `curl -i URL` (plus `extra`) from `pod`: the status line, headers and body, or curl's error.
fn call(pod: &Pod, url: &str, extra: &[&str]) -> anyhow::Result<Result<String, String>> {
    let mut args = vec!["-i"];
    args.extend_from_slice(extra);
    args.push(url);
    let out = pod.curl(&args)?;
    Ok(if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

fn served(pod: &Pod, url: &str) -> anyhow::Result<String> {
    let response = call(pod, url, &[])?.map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("hello from b\n"),
        "{response}"
    );
    Ok(response)
}

#[test]
fn no_plaintext_crosses_the_wire_between_meshed_pods() -> anyhow::Result<()> {
    let s = scene("sec-wire", &[])?;
    let capture = s.net.capture("tcp")?;
    for url in [WEB, WEB_TCP, WEB] {
        served(&s.a, url)?;
    }
    let packets = capture.finish()?;
    // Between a and b only the peer port is used, and nothing of the HTTP exchange is readable.
    assert!(packets.contains("10.77.0.4.15008"), "{packets}");
    assert!(!packets.contains("10.77.0.4.8080"), "{packets}");
    for plaintext in ["hello from b", "GET / HTTP", "x-mesh-hop"] {
        assert!(
            !packets.contains(plaintext),
            "`{plaintext}` on the wire:\n{packets}"
        );
    }
    // The HTTP side was carried over the peer's HTTP/2, and the client's certificate verified.
    let metrics = s.b.admin("/metrics")?;
    assert!(
        metrics.contains("mesh_identity_certificates_total 1"),
        "{metrics}"
    );
    Ok(())
}

#[test]
fn http1_between_sidecars_and_upgraded_connections_stay_inside_mutual_tls() -> anyhow::Result<()> {
    // a carries its clients' HTTP/1.1 as HTTP/1.1 (mesh/h1) instead of in HTTP/2 (mesh/h2).
    let s = scene_with("sec-h1", &[], &["--peer-http1", "http1"])?;
    let _echo =
        s.b.start_app(&["upgrade-echo", "--listen", "0.0.0.0:8090"])?;
    let ws = "apiVersion: mesh.dev/v1\nkind: Service\nmetadata: {name: ws}\nspec: {ports: [{port: 80, targetPort: 8090, appProtocol: http}], selector: {app: web}, vip: 10.96.0.22}\n";
    let strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default}\nspec: {mtls: {mode: STRICT}}\n";
    s.cp.apply(&format!("{ws}---\n{strict}"), true)?;
    let capture = s.net.capture("tcp")?;
    served(&s.a, WEB)?;
    let out = s.a.run_app(&[
        "upgrade-client",
        "--connect",
        "10.96.0.22:80",
        "--message",
        "hello over an upgrade",
    ])?;
    let packets = capture.finish()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "echoed hello over an upgrade"
    );
    // Both went to b's peer port, in mutual TLS (STRICT would refuse anything else), and
    // nothing of either exchange is readable on the wire.
    assert!(packets.contains("10.77.0.4.15008"), "{packets}");
    assert!(!packets.contains("10.77.0.4.8090"), "{packets}");
    for plaintext in ["hello over an upgrade", "GET / HTTP", "hello from b"] {
        assert!(
            !packets.contains(plaintext),
            "`{plaintext}` on the wire:\n{packets}"
        );
    }
    let h1 =
        s.b.metric("mesh_peer_connections_total{carriage=\"mesh/h1\"}")?;
    let h2 =
        s.b.metric("mesh_peer_connections_total{carriage=\"mesh/h2\"}")?;
    assert!(h1 >= 1, "mesh/h1 connections: {h1}");
    assert_eq!(h2, 0, "nothing went in HTTP/2");
    Ok(())
}

#[test]
fn http1_multiplexed_between_sidecars_stays_inside_mutual_tls_on_one_connection()
-> anyhow::Result<()> {
    // a carries every HTTP/1.1 request on streams of one mesh/mux connection.
    let s = scene_with("sec-mux", &[], &["--peer-http1", "mux"])?;
    let strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default}\nspec: {mtls: {mode: STRICT}}\n";
    s.cp.apply(strict, true)?;
    let capture = s.net.capture("tcp")?;
    for _ in 0..5 {
        served(&s.a, WEB)?;
    }
    let packets = capture.finish()?;
    assert!(packets.contains("10.77.0.4.15008"), "{packets}");
    for plaintext in ["GET / HTTP", "hello from b"] {
        assert!(
            !packets.contains(plaintext),
            "`{plaintext}` on the wire:\n{packets}"
        );
    }
    let carried = |alpn: &str| {
        s.b.metric(&format!(
            "mesh_peer_connections_total{{carriage=\"{alpn}\"}}"
        ))
    };
    assert_eq!(
        (
            carried("mesh/mux")?,
            carried("mesh/h1")?,
            carried("mesh/h2")?
        ),
        (1, 0, 0),
        "one mesh/mux connection carried the 5 requests"
    );
    Ok(())
}

#[test]
fn strict_refuses_plaintext_from_outside_the_mesh_and_permissive_serves_it() -> anyhow::Result<()> {
    let s = scene("sec-strict", &[])?;
    // PERMISSIVE by default: the outsider reaches b's app through b's sidecar.
    served(&s.x, "http://10.77.0.4:8080/")?;
    let strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default}\nspec: {mtls: {mode: STRICT}}\n";
    s.cp.apply(strict, true)?;
    let refused = call(&s.x, "http://10.77.0.4:8080/", &[])?;
    assert!(
        refused.is_err(),
        "plaintext served under STRICT: {refused:?}"
    );
    assert!(
        s.b.metric(
            "mesh_tcp_connections_refused_total{direction=\"inbound\",reason=\"plaintext\"}"
        )? >= 1
    );
    // Meshed callers are unaffected.
    served(&s.a, WEB)?;
    served(&s.a, WEB_TCP)?;
    let permissive = strict.replace("STRICT", "PERMISSIVE");
    s.cp.apply(&permissive, true)?;
    served(&s.x, "http://10.77.0.4:8080/")?;
    let dump = s.b.admin("/config_dump")?;
    assert!(
        dump.contains("\"mtlsSource\": \"PeerAuthentication default/default\""),
        "{dump}"
    );
    Ok(())
}

#[test]
fn authorization_policies_decide_by_identity_method_and_path() -> anyhow::Result<()> {
    let s = scene("sec-authz", &[])?;
    // A third meshed pod with an identity the policy does not name.
    let c = s.net.pod("c")?;
    c.init_ok(&[])?;
    let _c_proxy = c.start_meshed_sidecar_as(&s.cp, "app=intruder", "intruder", &[])?;
    let policies = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-clients}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/client"]}}]
    to: [{operation: {methods: ["GET"]}}]
---
apiVersion: security.mesh.dev/v1
kind: AuthorizationPolicy
metadata: {name: no-admin}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
"#;
    s.cp.apply(policies, true)?;
    served(&s.a, WEB)?;
    let denied = |pod: &Pod, url: &str, extra: &[&str], why: &str| -> anyhow::Result<()> {
        let response = call(pod, url, extra)?.map_err(anyhow::Error::msg)?;
        anyhow::ensure!(response.starts_with("HTTP/1.1 403"), "{response}");
        anyhow::ensure!(response.contains(why), "expected `{why}` in:\n{response}");
        Ok(())
    };
    denied(
        &s.a,
        WEB,
        &["-X", "POST"],
        "no ALLOW rule matches (AuthorizationPolicy default/web-clients)",
    )?;
    denied(
        &s.a,
        "http://10.96.0.20/admin/users",
        &[],
        "denied by AuthorizationPolicy default/no-admin",
    )?;
    denied(
        &c,
        WEB,
        &[],
        "from spiffe://cluster.local/ns/default/sa/intruder",
    )?;
    // Over opaque TCP the GET-only rule cannot match, so even the client is refused there.
    let tcp = call(&s.a, WEB_TCP, &[])?;
    assert!(tcp.is_err(), "{tcp:?}");
    // A certificate the mesh's CA signed for another identity, straight to the peer port.
    let (cert, key) = mint(
        &s.data_dir,
        "spiffe://cluster.local/ns/default/sa/stranger",
        true,
        &s.net.log_dir,
        "stranger",
    )?;
    let out = s.x.run_app(&[
        "mtls-tcp",
        "--connect",
        "10.77.0.4:15008",
        "--cert",
        &cert.display().to_string(),
        "--key",
        &key.display().to_string(),
        "--port",
        "8080",
        "--message",
        "GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n",
    ])?;
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hello"));
    let deny = "mesh_authz_decisions_total{protocol=\"http\",decision=\"deny\"}";
    assert!(s.b.metric(deny)? >= 3);
    assert!(s.b.metric("mesh_authz_decisions_total{protocol=\"tcp\",decision=\"deny\"}")? >= 2);
    assert!(s.b.metric("mesh_authz_decisions_total{protocol=\"http\",decision=\"allow\"}")? >= 1);
    // The inbound side counts the requests it answered, under the Service the client called.
    let inbound = |class: &str| {
        s.b.metric(&format!(
            "mesh_requests_total{{direction=\"inbound\",service=\"web.default.svc:80\",route=\"inbound\",code_class=\"{class}\"}}"
        ))
    };
    assert!(inbound("4xx")? >= 3);
    assert!(inbound("2xx")? >= 1);
    promtool_check(&s.b.admin("/metrics")?, &s.net.log_dir, "b")?;
    Ok(())
}

#[test]
fn the_app_sees_the_authenticated_caller_and_not_a_forged_header() -> anyhow::Result<()> {
    let s = scene("sec-xfcc", &[])?;
    let response = call(
        &s.a,
        WEB,
        &[
            "-H",
            "x-forwarded-client-cert: By=me;URI=spiffe://cluster.local/ns/default/sa/admin",
        ],
    )?
    .map_err(anyhow::Error::msg)?;
    // The test app reports the header it received as x-seen-client-cert.
    assert!(
        response.contains(
            "x-seen-client-cert: By=spiffe://cluster.local/ns/default/sa/web;URI=spiffe://cluster.local/ns/default/sa/client"
        ),
        "{response}"
    );
    Ok(())
}

#[test]
fn certificates_rotate_under_a_steady_request_stream() -> anyhow::Result<()> {
    // Two-minute certificates: each sidecar renews after 60-72 s.
    let s = scene("sec-rotate", &["--cert-ttl", "2m"])?;
    let certificates = |pod: &Pod| pod.metric("mesh_identity_certificates_total");
    let first_expiry =
        s.b.metric("mesh_identity_certificate_expiry_timestamp_seconds")?;
    let start = Instant::now();
    let mut requests = 0;
    // Until both sidecars hold their third certificate (two rotations each).
    while certificates(&s.a)? < 3 || certificates(&s.b)? < 3 {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(240),
            "no two rotations within 240 s (a: {}, b: {})",
            certificates(&s.a)?,
            certificates(&s.b)?
        );
        for url in [WEB, WEB_TCP] {
            served(&s.a, url).map_err(|e| {
                anyhow::anyhow!("request {requests} failed after {:?}: {e}", start.elapsed())
            })?;
            requests += 1;
        }
    }
    let expiry =
        s.b.metric("mesh_identity_certificate_expiry_timestamp_seconds")?;
    assert!(expiry > first_expiry, "{expiry} <= {first_expiry}");
    assert_eq!(s.a.metric("mesh_identity_certificate_failures_total")?, 0);
    eprintln!("{requests} requests across two rotations, none failed");
    Ok(())
}

#[test]
fn the_ca_refuses_bad_tokens_and_forged_identities_and_keeps_its_root() -> anyhow::Result<()> {
    let mut s = scene("sec-ca", &[])?;
    let d = s.net.pod("d")?;
    let meshctl = |args: &[&str]| -> anyhow::Result<String> {
        let out = s.cp.meshctl(args)?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    // A token that meshd did not make.
    let bad =
        d.meshed_sidecar_args(&s.cp, "app=d", "client", "mesh1.Zm9v.YmFy.99999999999.AAAA")?;
    let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
    let proxy = d.spawn_sidecar(&bad)?;
    eventually(SETTLE, "the CA refuses the token", || {
        Ok(proxy.log_text().contains("signature does not verify"))
    })?;
    let ready = d.output("curl", &["-s", "http://127.0.0.1:15000/ready"])?;
    assert!(
        String::from_utf8_lossy(&ready.stdout).contains("no workload certificate"),
        "{}",
        proxy.log_text()
    );
    drop(proxy);
    // A valid token for `client`, used to ask for `admin`.
    let token = meshctl(&[
        "token",
        "create",
        "-n",
        "default",
        "--service-account",
        "client",
    ])?;
    let forged = d.meshed_sidecar_args(&s.cp, "app=d", "admin", &token)?;
    let forged: Vec<&str> = forged.iter().map(String::as_str).collect();
    let proxy = d.spawn_sidecar(&forged)?;
    eventually(SETTLE, "the CA refuses the forged identity", || {
        Ok(proxy
            .log_text()
            .contains("but the token proves only spiffe://cluster.local/ns/default/sa/client"))
    })?;
    drop(proxy);
    let metrics =
        s.cp.run("curl", &["-sS", "http://127.0.0.1:15080/metrics"])?;
    assert!(
        metrics.contains("meshd_ca_requests_total{outcome=\"refused\"}"),
        "{metrics}"
    );

    // A restart keeps the root: the bundle is the same, and a sidecar certified after the
    // restart and one certified before trust each other.
    let bundle = meshctl(&["ca", "bundle"])?;
    if let Some(mut meshd) = s.meshd.take() {
        meshd.terminate()?;
        meshd.wait_exit(SETTLE)?;
    }
    s.meshd = Some(s.cp.start_meshd(&s.data_dir, &[])?);
    assert_eq!(meshctl(&["ca", "bundle"])?, bundle);
    d.init_ok(&[])?;
    let _d_proxy = d.start_meshed_sidecar_as(&s.cp, "app=d", "d", &[])?;
    served(&d, WEB)?;
    Ok(())
}
