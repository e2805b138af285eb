//! Micro-benchmarks of the proxy's per-request and per-connection hot paths:
//! protocol detection, route matching on a table of 1000 routes, the load balancer's pick, and
//! header rewriting. The route table is the real one: 1000 HTTPRoutes in meshd's YAML, through
//! meshd's translation to xDS, decoded and compiled by the proxy as it does for a live config.
//!
//!     cargo bench -p mesh-benches --bench hot_paths

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use criterion::{Criterion, criterion_group, criterion_main};
use hyper::Method;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use mesh_control_plane::parse::parse_documents;
use mesh_control_plane::snapshot::XdsType;
use mesh_control_plane::state::State;
use mesh_control_plane::translate::translate;
use mesh_control_plane::vip::VipRange;
use mesh_proxy::balance::{Algorithm, Endpoint, EndpointRegistry, pick};
use mesh_proxy::detect::classify;
use mesh_proxy::request_metrics::RequestRegistry;
use mesh_proxy::route::{HeaderEdits, RequestView};
use mesh_proxy::routing::Routing;
use mesh_proxy::xds::resources::{self, Resources};

const ROUTES: usize = 1000;

fn detection(c: &mut Criterion) {
    let mut g = c.benchmark_group("detect");
    let http1 = b"GET /api/v1/users?id=42 HTTP/1.1\r\nHost: web\r\n\r\n".as_slice();
    let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice();
    let tls = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc].as_slice();
    let opaque = b"\x00\x00\x00\x2a binary protocol frame".as_slice();
    for (name, bytes) in [
        ("http1", http1),
        ("h2", h2),
        ("tls", tls),
        ("opaque", opaque),
    ] {
        g.bench_function(name, |b| b.iter(|| classify(black_box(bytes))));
    }
    g.finish();
}

/// meshd's YAML for one Service `web` with `ROUTES` HTTPRoutes on it (each a path prefix and a
/// header), two backend Services, and workloads for all.
fn mesh_yaml() -> String {
    let mut docs = vec![];
    for (name, ip) in [
        ("web", "10.1.0.1"),
        ("web-v1", "10.1.0.2"),
        ("web-v2", "10.1.0.3"),
    ] {
        docs.push(format!(
            "apiVersion: mesh.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{port: 80, targetPort: 8080}}], selector: {{app: {name}}}}}\n"
        ));
        for i in 0..3 {
            docs.push(format!(
                "apiVersion: mesh.dev/v1\nkind: Workload\nmetadata: {{name: {name}-{i}, labels: {{app: {name}}}}}\nspec: {{address: {ip}{i}}}\n"
            ));
        }
    }
    for i in 0..ROUTES {
        docs.push(format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i:04}}}\nspec:\n  parentRefs: [{{name: web, port: 80}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /api/r{i}}}, headers: [{{name: x-tenant, value: t{i}}}]}}]\n    backendRefs: [{{name: web-v1, port: 80, weight: 90}}, {{name: web-v2, port: 80, weight: 10}}]\n"
        ));
    }
    docs.join("---\n")
}

/// The proxy's compiled routing for `mesh_yaml`, and the VIP of `web`.
fn routing() -> (Routing, SocketAddr) {
    let documents = parse_documents(&mesh_yaml()).expect("the benchmark's YAML parses");
    let (state, _) = State::default()
        .apply(documents, &VipRange::default())
        .expect("the benchmark's resources are valid");
    let snapshot = translate(&state, &[], 1);
    let anys = |ty| {
        snapshot
            .of_type(ty)
            .map(|(_, e)| e.any.clone())
            .collect::<Vec<_>>()
    };
    let r = Resources {
        listeners: resources::listeners(&anys(XdsType::Listener)).expect("listeners"),
        routes: resources::routes(&anys(XdsType::Route)).expect("routes"),
        clusters: resources::clusters(&anys(XdsType::Cluster)).expect("clusters"),
        endpoints: resources::endpoints(&anys(XdsType::Endpoint)).expect("endpoints"),
        sidecars: Default::default(),
    };
    let routing = r.compile(&RequestRegistry::default(), &EndpointRegistry::default());
    let vip = state
        .services()
        .find(|s| s.metadata.name == "web")
        .and_then(|s| s.spec.vip)
        .expect("web has a VIP");
    (routing, SocketAddr::new(vip, 80))
}

fn route_matching(c: &mut Criterion) {
    let (routing, vip) = routing();
    let service = routing.service(&vip).expect("web is in the routing table");
    let mut g = c.benchmark_group("route_1000");
    for (name, path, tenant) in [
        ("first", "/api/r0/items", "t0"),
        ("middle", "/api/r500/items", "t500"),
        ("last", "/api/r999/items", "t999"),
        ("none_matches", "/other", "t1"),
    ] {
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", HeaderValue::from_static(tenant));
        headers.insert("user-agent", HeaderValue::from_static("curl/8"));
        let view = RequestView {
            method: &Method::GET,
            authority: Some("web"),
            path,
            query: Some("id=42"),
            headers: &headers,
        };
        let found = service.route(&view).map(|r| r.name.clone());
        assert!(
            name == "none_matches" || found.is_some_and(|n| n.contains(&tenant[1..])),
            "{name}: the request must match its own route"
        );
        g.bench_function(name, |b| {
            b.iter(|| service.route(black_box(&view)).is_some())
        });
    }
    g.finish();
}

fn balancing(c: &mut Criterion) {
    let endpoints: Vec<Arc<Endpoint>> = (0..16)
        .map(|i| Arc::new(Endpoint::new(SocketAddr::from(([10, 0, 0, i], 8080)))))
        .collect();
    let rr = AtomicUsize::new(0);
    let mut g = c.benchmark_group("balance_16_endpoints");
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::LeastRequest,
        Algorithm::PeakEwma,
    ] {
        let mut random = 0x9e37_79b9u32;
        g.bench_function(algorithm.as_str(), |b| {
            b.iter(|| {
                random = random.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                pick(black_box(&endpoints), algorithm, &rr, random).map(|e| e.addr)
            })
        });
    }
    g.finish();
}

fn header_rewriting(c: &mut Criterion) {
    let edits = HeaderEdits {
        request_set: vec![
            (
                HeaderName::from_static("x-route"),
                HeaderValue::from_static("canary"),
                false,
            ),
            (
                HeaderName::from_static("x-added"),
                HeaderValue::from_static("1"),
                true,
            ),
        ],
        request_remove: vec![HeaderName::from_static("x-internal")],
        response_set: vec![],
        response_remove: vec![],
    };
    let mut base = HeaderMap::new();
    for (k, v) in [
        ("host", "web"),
        ("user-agent", "curl/8"),
        ("accept", "*/*"),
        ("x-internal", "secret"),
        ("x-request-id", "3f1e2d"),
    ] {
        base.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    c.bench_function("header_edits/request_set_add_remove", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |h| edits.apply_request(black_box(h)),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(
    benches,
    detection,
    route_matching,
    balancing,
    header_rewriting
);
criterion_main!(benches);
