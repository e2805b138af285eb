//! End-to-end: meshd in its own pod, sidecars following it, routing changed with meshctl.
//!
//! Pods: `cp` (10.77.0.2, meshd), `a` (10.77.0.3, client), `b` (10.77.0.4, app=web version=v1)
//! and `c` (10.77.0.5, app=web version=v2). Service `web` (VIP 10.96.0.10:80 → 8080) selects
//! both; `web-v1` and `web-v2` select one version each.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use mesh_tests::fixtures::{eventually, promtool_check};
use mesh_tests::identity::mint;
use mesh_tests::{IpFamilies, Network, Pod, Process};

const SERVICES: &str = "
apiVersion: mesh.dev/v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80, targetPort: 8080, appProtocol: http}], selector: {app: web}, vip: 10.96.0.10}
---
apiVersion: mesh.dev/v1
kind: Service
metadata: {name: web-v1}
spec: {ports: [{port: 80, targetPort: 8080}], selector: {app: web, version: v1}}
---
apiVersion: mesh.dev/v1
kind: Service
metadata: {name: web-v2}
spec: {ports: [{port: 80, targetPort: 8080}], selector: {app: web, version: v2}}
---
apiVersion: mesh.dev/v1
kind: BackendPolicy
metadata: {name: web}
spec: {targetRef: {name: web}, loadBalancer: {algorithm: RoundRobin}}
";

const ALL_TO_V2: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web}
spec:
  parentRefs: [{name: web, port: 80}]
  rules: [{backendRefs: [{name: web-v2, port: 80}]}]
";

const URL: &str = "http://10.96.0.10/";
const SETTLE: Duration = Duration::from_secs(15);

/// Fields drop in order: processes, then pods, then the network.
struct Scene {
    sidecars: BTreeMap<String, Process>,
    _apps: Vec<Process>,
    meshd: Option<Process>,
    a: Pod,
    b: Pod,
    c: Pod,
    cp: Pod,
    data_dir: PathBuf,
    net: Network,
}

fn scene(label: &str) -> anyhow::Result<Scene> {
    let net = Network::new(label, IpFamilies::V4)?;
    let cp = net.pod("cp")?;
    let a = net.pod("a")?;
    let b = net.pod("b")?;
    let c = net.pod("c")?;
    let data_dir = net.log_dir.join("meshd-data");
    let meshd = cp.start_meshd(&data_dir, &["--workload-grace-ms", "1000"])?;
    let mut apps = Vec::new();
    for (pod, name) in [(&b, "b"), (&c, "c")] {
        apps.push(pod.start_app(&["http", "--listen", "0.0.0.0:8080", "--name", name])?);
    }
    let mut sidecars = BTreeMap::new();
    for (pod, labels) in [
        (&a, "app=client"),
        (&b, "app=web,version=v1"),
        (&c, "app=web,version=v2"),
    ] {
        pod.init_ok(&[])?;
        sidecars.insert(pod.role.clone(), pod.start_meshed_sidecar(&cp, labels)?);
    }
    let scene = Scene {
        sidecars,
        _apps: apps,
        meshd: Some(meshd),
        a,
        b,
        c,
        cp,
        data_dir,
        net,
    };
    // Every sidecar has registered before this apply, so --wait covers their endpoints too.
    apply(&scene.cp, &scene.net, SERVICES, true)?;
    Ok(scene)
}

/// `meshctl apply -f` of `yaml` (through a file); returns meshctl's output or its error text.
fn apply(cp: &Pod, _net: &Network, yaml: &str, wait: bool) -> anyhow::Result<String> {
    cp.apply(yaml, wait)
}

/// Curls `url` from `pod` `n` times (new connection each) and counts who answered.
fn who_answers(pod: &Pod, url: &str, n: usize) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let out = pod.curl(&[url])?;
        anyhow::ensure!(
            out.status.success(),
            "curl {url} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
        *counts.entry(body).or_insert(0) += 1;
    }
    Ok(counts)
}

/// `mesh-test-app tally` from `pod`: `count` requests to `addr` (new connection each), counted by
/// who answered (`hello from X` → X).
fn tally(pod: &Pod, addr: &str, count: usize) -> anyhow::Result<BTreeMap<String, usize>> {
    let out = pod.run_app(&["tally", "--connect", addr, "--count", &count.to_string()])?;
    anyhow::ensure!(
        out.status.success(),
        "tally failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (n, body) = l.split_once(' ')?;
            Some((
                body.strip_prefix("hello from ")?.to_string(),
                n.parse().ok()?,
            ))
        })
        .collect())
}

fn only(from: &str, n: usize) -> BTreeMap<String, usize> {
    BTreeMap::from([(format!("hello from {from}"), n)])
}

#[test]
fn a_service_vip_balances_over_its_endpoints_and_routes_follow_apply() -> anyhow::Result<()> {
    let s = scene("cp-route")?;
    let both = who_answers(&s.a, URL, 20)?;
    assert_eq!(
        both,
        BTreeMap::from([("hello from b".into(), 10), ("hello from c".into(), 10)]),
        "round robin over b and c"
    );

    let text = apply(&s.cp, &s.net, ALL_TO_V2, true)?;
    assert!(text.contains("httproute/web created"), "{text}");
    assert!(text.contains("3 proxies in sync with generation"), "{text}");
    eprintln!("apply --wait: {}", text.trim());
    assert_eq!(
        who_answers(&s.a, URL, 20)?,
        only("c", 20),
        "the next requests follow the route"
    );

    // A route naming a Service that does not exist is refused whole; traffic stays as it was.
    let bad = ALL_TO_V2.replace("name: web-v2, port: 80", "name: web-v9, port: 80");
    let err = apply(&s.cp, &s.net, &bad, true)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("spec.rules[0].backendRefs[0].name: Service `default/web-v9` does not exist"),
        "{err}"
    );
    assert_eq!(who_answers(&s.a, URL, 10)?, only("c", 10));

    // A 90/10 split over 1000 connections (the chance of leaving 5%..15% is below 1e-6).
    let split = ALL_TO_V2.replace(
        "[{name: web-v2, port: 80}]",
        "[{name: web-v1, port: 80, weight: 90}, {name: web-v2, port: 80, weight: 10}]",
    );
    apply(&s.cp, &s.net, &split, true)?;
    let counts = tally(&s.a, "10.96.0.10:80", 1000)?;
    let (v1, v2) = (
        counts.get("b").copied().unwrap_or(0),
        counts.get("c").copied().unwrap_or(0),
    );
    assert_eq!(v1 + v2, 1000, "{counts:?}");
    assert!((50..=150).contains(&v2), "v2 got {v2} of 1000: {counts:?}");
    eprintln!("90/10 split over 1000 connections: v1 {v1}, v2 {v2}");

    // Back to the Service itself once the route is deleted.
    let out = s.cp.meshctl(&["delete", "httproute", "web"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(SETTLE, "traffic reaches b again", || {
        Ok(who_answers(&s.a, URL, 4)?.contains_key("hello from b"))
    })?;
    Ok(())
}

#[test]
fn traffic_survives_a_meshd_restart_and_state_is_kept() -> anyhow::Result<()> {
    let mut s = scene("cp-restart")?;
    apply(&s.cp, &s.net, ALL_TO_V2, true)?;

    // meshd is killed: sidecars keep their last good config.
    drop(s.meshd.take());
    assert_eq!(
        who_answers(&s.a, URL, 10)?,
        only("c", 10),
        "traffic flows while meshd is down"
    );

    s.meshd = Some(s.cp.start_meshd(&s.data_dir, &["--workload-grace-ms", "1000"])?);
    let out = s.cp.meshctl(&["get", "httproutes"])?;
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("web"),
        "the route survived the restart:\n{listing}"
    );
    eventually(SETTLE, "all three sidecars reconnected", || {
        let out = s.cp.meshctl(&["proxies"])?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().count() == 4)
    })?;
    assert_eq!(who_answers(&s.a, URL, 10)?, only("c", 10));
    // And a change after the restart reaches the reconnected sidecars.
    let out = s.cp.meshctl(&["delete", "httproute", "web"])?;
    assert!(out.status.success());
    eventually(SETTLE, "the delete reached pod a", || {
        Ok(who_answers(&s.a, URL, 4)?.contains_key("hello from b"))
    })?;
    Ok(())
}

#[test]
fn a_sidecar_that_leaves_takes_its_endpoint_with_it() -> anyhow::Result<()> {
    let mut s = scene("cp-leave")?;
    let c_proxy = s
        .sidecars
        .remove("c")
        .ok_or_else(|| anyhow::anyhow!("no sidecar c"))?;
    c_proxy.terminate()?;
    // After the grace period meshd removes c's workload and pushes the new endpoints.
    eventually(SETTLE, "pod a's sidecar sees one endpoint for web", || {
        let dump = s.a.admin("/config_dump")?;
        Ok(dump.contains("\"service\": \"web.default.svc:80\"")
            && !dump.contains(&format!("{}:8080", s.c.ipv4)))
    })?;
    assert_eq!(who_answers(&s.a, URL, 10)?, only("b", 10));
    assert!(s.b.admin("/ready").is_ok(), "pod b's sidecar is unaffected");
    Ok(())
}

const BY_HEADER: &str = "
apiVersion: mesh.dev/v1
kind: Service
metadata: {name: nowhere}
spec: {ports: [{port: 80, targetPort: 8080}], selector: {app: nothing-matches}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web}
spec:
  parentRefs: [{name: web, port: 80}]
  rules:
  - matches: [{headers: [{name: x-canary, value: '1'}]}]
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /empty}}]
    backendRefs: [{name: nowhere, port: 80}]
  - backendRefs: [{name: web-v1, port: 80}]
";

#[test]
fn requests_are_routed_one_by_one_and_mesh_errors_say_why() -> anyhow::Result<()> {
    let s = scene("cp-l7")?;
    apply(&s.cp, &s.net, BY_HEADER, true)?;
    assert_eq!(who_answers(&s.a, URL, 10)?, only("b", 10));
    let canary = |n| -> anyhow::Result<BTreeMap<String, usize>> {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let out = s.a.curl(&["-H", "x-canary: 1", URL])?;
            *counts
                .entry(String::from_utf8_lossy(&out.stdout).trim().to_string())
                .or_insert(0) += 1;
        }
        Ok(counts)
    };
    assert_eq!(
        canary(10)?,
        only("c", 10),
        "the header sends requests to v2"
    );

    // Two requests on one keep-alive connection go to different versions.
    let opened_before =
        s.a.metric("mesh_tcp_connections_opened_total{direction=\"outbound\"}")?;
    let out =
        s.a.curl(&["-H", "x-canary: 1", URL, "--next", "-sS", URL])?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from c\nhello from b\n"
    );
    let opened =
        s.a.metric("mesh_tcp_connections_opened_total{direction=\"outbound\"}")? - opened_before;
    assert_eq!(opened, 1, "both requests shared one client connection");

    // A route whose Service has no endpoints: the proxy answers itself, and says so.
    let out = s.a.curl(&["-i", &format!("{URL}empty/x")])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.contains("x-mesh-error: mesh-proxy outbound: no endpoints in nowhere.default.svc:80"),
        "{text}"
    );

    // Every request above is counted on its route: 10 + 10 + 2 answered, 1 refused by the mesh.
    let series = |class: &str| {
        format!(
            "mesh_requests_total{{direction=\"outbound\",service=\"web.default.svc:80\",route=\"default/web\",code_class=\"{class}\"}}"
        )
    };
    assert_eq!(s.a.metric(&series("2xx"))?, 22);
    assert_eq!(s.a.metric(&series("5xx"))?, 1);
    let count = "mesh_request_duration_seconds_count{direction=\"outbound\",service=\"web.default.svc:80\",route=\"default/web\"}";
    assert_eq!(s.a.metric(count)?, 23);
    Ok(())
}

#[test]
fn a_server_speaks_first_protocol_on_an_opaque_port_answers_at_once() -> anyhow::Result<()> {
    let net = Network::new("cp-banner", IpFamilies::V4)?;
    let cp = net.pod("cp")?;
    let a = net.pod("a")?;
    let d = net.pod("d")?;
    let _meshd = cp.start_meshd(&net.log_dir.join("meshd-data"), &[])?;
    let _banner = d.start_app(&[
        "banner",
        "--listen",
        "0.0.0.0:2525",
        "--text",
        "220 smtp.example ready",
    ])?;
    d.init_ok(&[])?;
    a.init_ok(&[])?;
    let _d_proxy = d.start_meshed_sidecar(&cp, "app=smtp")?;
    // A detection timeout of an hour: if the opaque port were detected, the silent client
    // below would wait that long, and fail on its own 10 s bound.
    let _a_proxy =
        a.start_meshed_sidecar_as(&cp, "app=client", "default", &["--detect-timeout", "1h"])?;
    let smtp = "apiVersion: mesh.dev/v1\nkind: Service\nmetadata: {name: smtp}\nspec: {ports: [{port: 25, targetPort: 2525, appProtocol: tcp}], selector: {app: smtp}, vip: 10.96.0.25}\n";
    apply(&cp, &net, smtp, true)?;
    let out = a.run_app(&["read-line", "--connect", "10.96.0.25:25"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "220 smtp.example ready"
    );
    Ok(())
}

#[test]
fn an_upgraded_connection_echoes_through_the_mesh_and_metrics_pass_promtool() -> anyhow::Result<()>
{
    let s = scene("cp-upgrade")?;
    let _ws =
        s.b.start_app(&["upgrade-echo", "--listen", "0.0.0.0:8090"])?;
    let ws = "apiVersion: mesh.dev/v1\nkind: Service\nmetadata: {name: ws}\nspec: {ports: [{port: 80, targetPort: 8090, appProtocol: http}], selector: {app: web, version: v1}, vip: 10.96.0.80}\n";
    apply(&s.cp, &s.net, ws, true)?;
    let out = s.a.run_app(&[
        "upgrade-client",
        "--connect",
        "10.96.0.80:80",
        "--message",
        "hello over an upgrade",
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "echoed hello over an upgrade"
    );
    // The upgrade went through b's sidecar over mutual TLS, as HTTP/1.1 (mesh/h1).
    assert!(s.b.metric("mesh_peer_connections_total{carriage=\"mesh/h1\"}")? >= 1);

    // The sidecar's metrics, after HTTP traffic, are valid Prometheus exposition.
    who_answers(&s.a, URL, 3)?;
    let metrics = s.a.admin("/metrics")?;
    assert!(
        metrics.contains("mesh_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(s.a.metric("mesh_protocol_detections_total{protocol=\"http1\"}")? >= 3);
    promtool_check(&metrics, &s.net.log_dir, "a")
}

#[test]
fn grpc_unary_streaming_and_error_statuses_cross_both_sidecars() -> anyhow::Result<()> {
    let s = scene("cp-grpc")?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/xds-clients/grpc_app.py");
    let _server =
        s.b.start_program("python3", &[script, "server", "0.0.0.0:50051"])?;
    let grpc = "apiVersion: mesh.dev/v1\nkind: Service\nmetadata: {name: echo}\nspec: {ports: [{port: 50051, appProtocol: grpc}], selector: {app: web, version: v1}, vip: 10.96.0.51}\n";
    apply(&s.cp, &s.net, grpc, true)?;
    let out =
        s.a.output("python3", &[script, "client", "10.96.0.51:50051"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text,
        "unary echo:hi\nstream 0,1,2\nstatus INVALID_ARGUMENT nope\n"
    );
    // The calls went through pod a's sidecar as HTTP/2 requests on the echo route.
    let ok = s.a.metric("mesh_requests_total{direction=\"outbound\",service=\"echo.default.svc:50051\",route=\"default\",code_class=\"2xx\"}")?;
    assert_eq!(ok, 3, "gRPC answers 200 and carries its status in trailers");
    Ok(())
}

const FILTERS: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web}
spec:
  parentRefs: [{name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-from-mesh, value: 'yes'}]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-route, value: api}], remove: [x-served-by]}
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: Exact, value: /whole}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /replaced}}
    backendRefs: [{name: web-v1, port: 80}]
";

#[test]
fn redirects_rewrites_and_header_filters() -> anyhow::Result<()> {
    let s = scene("cp-filters")?;
    apply(&s.cp, &s.net, FILTERS, true)?;
    let head = |path: &str| -> anyhow::Result<String> {
        let out = s.a.curl(&["-i", &format!("http://10.96.0.10{path}")])?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).to_ascii_lowercase())
    };
    let redirect = head("/old/page?x=1")?;
    assert!(redirect.starts_with("http/1.1 301"), "{redirect}");
    assert!(
        redirect.contains("location: http://10.96.0.10/new/page?x=1\r\n"),
        "{redirect}"
    );
    assert!(!redirect.contains("x-mesh-error"), "a redirect is no error");

    let api = head("/api/users?id=7")?;
    assert!(api.starts_with("http/1.1 200"), "{api}");
    assert!(
        api.contains("x-seen-path: /users?id=7\r\n"),
        "the prefix was rewritten:\n{api}"
    );
    assert!(
        api.contains("x-seen-x-from-mesh: yes\r\n"),
        "the request header was set:\n{api}"
    );
    assert!(
        api.contains("x-route: api\r\n"),
        "the response header was added:\n{api}"
    );
    assert!(
        !api.contains("x-served-by"),
        "the response header was removed:\n{api}"
    );

    let whole = head("/whole")?;
    assert!(whole.contains("x-seen-path: /replaced\r\n"), "{whole}");
    // Other paths are untouched.
    assert!(head("/other")?.contains("x-seen-path: /other\r\n"));
    Ok(())
}

#[test]
fn peak_ewma_balancing_moves_load_off_a_slow_endpoint() -> anyhow::Result<()> {
    let s = scene("cp-ewma")?;
    // The same Service port on b (answers after 100 ms) and c (at once); no BackendPolicy, so
    // the default P2C peak-EWMA balances it.
    let _slow = s.b.start_app(&[
        "http",
        "--listen",
        "0.0.0.0:8081",
        "--name",
        "slow",
        "--delay-ms",
        "100",
    ])?;
    let _fast =
        s.c.start_app(&["http", "--listen", "0.0.0.0:8081", "--name", "fast"])?;
    let svc = "apiVersion: mesh.dev/v1\nkind: Service\nmetadata: {name: lb}\nspec: {ports: [{port: 80, targetPort: 8081, appProtocol: http}], selector: {app: web}, vip: 10.96.0.81}\n";
    apply(&s.cp, &s.net, svc, true)?;
    let counts = tally(&s.a, "10.96.0.81:80", 100)?;
    eprintln!("peak-EWMA over 100 requests: {counts:?}");
    let slow = counts.get("slow").copied().unwrap_or(0);
    assert_eq!(
        slow + counts.get("fast").copied().unwrap_or(0),
        100,
        "{counts:?}"
    );
    // Each endpoint is tried once; after one slow answer the slow endpoint loses every
    // comparison for the seconds this test lasts (its latency decays over 10 s).
    assert!(slow <= 5, "the slow endpoint got {slow} of 100: {counts:?}");
    let dump = s.a.admin("/config_dump")?;
    assert!(dump.contains("\"algorithm\": \"peak_ewma\""), "{dump}");
    Ok(())
}

/// `mesh-proxy --peer-http1-slots`' default: below this many HTTP/1.1 requests in flight to a
/// peer the next goes on `mesh/h1`; so also the most `mesh/h1` connections to one peer.
const HTTP1_SLOTS: u64 = 4;

#[test]
fn http1_requests_ride_pooled_http1_connections_up_to_the_slots_and_the_rest_one_mux_connection()
-> anyhow::Result<()> {
    let s = scene("cp-carriage")?;
    let _slow = s.b.start_app(&[
        "http",
        "--listen",
        "0.0.0.0:8081",
        "--name",
        "slow",
        "--delay-ms",
        "2000",
        "--report-host",
    ])?;
    let services = "apiVersion: mesh.dev/v1\nkind: Service\nmetadata: {name: only-v1}\nspec: {ports: [{port: 80, targetPort: 8080, appProtocol: http}], selector: {app: web, version: v1}, vip: 10.96.0.11}\n---\napiVersion: mesh.dev/v1\nkind: Service\nmetadata: {name: slow}\nspec: {ports: [{port: 80, targetPort: 8081, appProtocol: http}], selector: {app: web, version: v1}, vip: 10.96.0.12}\n";
    apply(&s.cp, &s.net, services, true)?;
    let carried = |alpn: &str| {
        s.b.metric(&format!(
            "mesh_peer_connections_total{{carriage=\"{alpn}\"}}"
        ))
    };
    // 20 requests one after another, each on a new client connection: none other is in flight,
    // so one pooled HTTP/1.1 connection between the sidecars carries them all.
    for _ in 0..20 {
        let out =
            s.a.curl(&["-i", "-H", "host: only-v1.default", "http://10.96.0.11/x"])?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "the client still speaks HTTP/1.1:\n{text}"
        );
        assert!(
            text.contains("x-seen-path: /x\r\n") && text.ends_with("hello from b\n"),
            "{text}"
        );
    }
    assert_eq!(
        (
            carried("mesh/h1")?,
            carried("mesh/mux")?,
            carried("mesh/h2")?
        ),
        (1, 0, 0),
        "one mesh/h1 connection carried the 20 requests"
    );
    // Two more at once than there are slots, to an endpoint that answers after 2 s: the first
    // HTTP1_SLOTS on mesh/h1 (the idle connection and new ones), the others, which find that
    // many in flight, on streams of one mesh/mux connection. On either the app sees the Host
    // the client sent.
    let answers: Vec<anyhow::Result<std::process::Output>> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..HTTP1_SLOTS + 2)
            .map(|_| {
                scope.spawn(|| {
                    s.a.curl(&["-i", "-H", "host: slow.default", "http://10.96.0.12/"])
                })
            })
            .collect();
        calls
            .into_iter()
            .map(|c| {
                c.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("curl thread panicked")))
            })
            .collect()
    });
    for answer in answers {
        let out = answer?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("x-seen-host: slow.default\r\n") && text.ends_with("hello from slow\n"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        (
            carried("mesh/h1")?,
            carried("mesh/mux")?,
            carried("mesh/h2")?
        ),
        (HTTP1_SLOTS, 1, 0),
        "at most {HTTP1_SLOTS} mesh/h1 connections, and one mesh/mux for the rest"
    );
    Ok(())
}

#[test]
fn the_peer_port_takes_only_mesh_identities_and_only_ports_a_service_exposes() -> anyhow::Result<()>
{
    let s = scene("cp-peer")?;
    // A loopback-only service in pod b that no Service exposes.
    let _private =
        s.b.start_app(&["http", "--listen", "127.0.0.1:9999", "--name", "private"])?;
    let peer_port = format!("{}:15008", s.b.ipv4);
    // Plaintext HTTP/2, as a sidecar without an identity would speak: refused.
    let plain =
        s.a.curl(&["--http2-prior-knowledge", &format!("http://{peer_port}/")])?;
    assert!(
        !plain.status.success(),
        "plaintext reached the peer port: {}",
        String::from_utf8_lossy(&plain.stdout)
    );
    let get = "GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n";
    let call = |signed_by_mesh: bool, port: u16| -> anyhow::Result<String> {
        let stem = format!("client-{signed_by_mesh}");
        let (cert, key) = mint(
            &s.data_dir,
            "spiffe://cluster.local/ns/default/sa/default",
            signed_by_mesh,
            &s.net.log_dir,
            &stem,
        )?;
        let out = s.a.run_app(&[
            "mtls-tcp",
            "--connect",
            &peer_port,
            "--cert",
            &cert.display().to_string(),
            "--key",
            &key.display().to_string(),
            "--port",
            &port.to_string(),
            "--message",
            get,
        ])?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    };
    // A certificate from the mesh's CA: served on a Service's port, nothing on a private one.
    let served = call(true, 8080)?;
    assert!(served.contains("hello from b"), "{served}");
    let private = call(true, 9999)?;
    assert!(!private.contains("hello"), "{private}");
    let log = s.sidecars["b"].log_text();
    assert!(
        log.contains("port 9999 of 10.77.0.4 is no endpoint of any Service"),
        "{log}"
    );
    // The same identity from another CA: refused in the handshake.
    let impostor = call(false, 8080)?;
    assert!(!impostor.contains("hello"), "{impostor}");
    Ok(())
}
