//! The ADS server over a real gRPC connection, driven by a tonic client the way a proxy would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_control_plane::ads::AdsService;
use mesh_control_plane::controller::Controller;
use mesh_control_plane::node::metadata;
use mesh_control_plane::registry::wait_outcome;
use mesh_control_plane::store::Store;
use mesh_control_plane::vip::VipRange;
use mesh_proto::envoy::config::core::v3::Node;
use mesh_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use mesh_proto::google::rpc::Status as RpcStatus;
use mesh_proto::prost::Message;
use mesh_proto::{
    AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
    type_url,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Streaming;

const SERVICES: &str = "
apiVersion: mesh.dev/v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80, targetPort: 8080}], selector: {app: web}}
";
const STEP: Duration = Duration::from_secs(5);

struct Fixture {
    controller: Arc<Controller>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start(grace: Duration) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let controller = Controller::open(store, VipRange::default(), grace).expect("controller");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = AdsService::new(controller.clone()).into_server();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Fixture {
        controller,
        addr,
        _dir: dir,
    }
}

fn node(id: &str, ip: &str) -> Node {
    let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
    Node {
        id: id.into(),
        metadata: Some(metadata(
            &[("NAMESPACE", "default"), ("INSTANCE_IPS", ip)],
            &labels,
        )),
        ..Default::default()
    }
}

async fn next(stream: &mut Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(STEP, stream.message())
        .await
        .expect("a response within the step timeout")
        .expect("stream ok")
        .expect("stream open")
}

fn request(
    ty: &str,
    names: &[&str],
    version: &str,
    nonce: &str,
    node: Option<Node>,
) -> DiscoveryRequest {
    DiscoveryRequest {
        node,
        type_url: ty.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

/// A state-of-the-world stream to the fixture's meshd: where to send requests, and the responses.
async fn open_sotw(f: &Fixture) -> (mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>) {
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", f.addr))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(8);
    let responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    (tx, responses)
}

/// ACKs `resp` (of type `ty`, subscribed to `names`).
async fn ack(
    tx: &mpsc::Sender<DiscoveryRequest>,
    ty: &str,
    names: &[&str],
    resp: &DiscoveryResponse,
) {
    tx.send(request(ty, names, &resp.version_info, &resp.nonce, None))
        .await
        .expect("ack");
}

/// Waits (on the registry's change signal) until every proxy has synced `generation` or NACKed it.
async fn wait_done(f: &Fixture, generation: u64) {
    let mut changes = f.controller.registry.subscribe();
    while !wait_outcome(&f.controller.registry.list(), generation).done() {
        tokio::time::timeout(STEP, changes.changed())
            .await
            .expect("synced in time")
            .expect("registry alive");
    }
}

fn endpoint_count(resp: &DiscoveryResponse) -> usize {
    resp.resources
        .iter()
        .map(|a| {
            ClusterLoadAssignment::decode(a.value.as_slice())
                .expect("CLA")
                .endpoints
                .iter()
                .map(|l| l.lb_endpoints.len())
                .sum::<usize>()
        })
        .sum()
}

#[tokio::test]
async fn state_of_the_world_ack_push_and_nack() {
    let f = start(Duration::from_secs(60)).await;
    f.controller.apply(SERVICES).expect("apply");
    let (tx, mut responses) = open_sotw(&f).await;

    // CDS wildcard, with the node that registers workload 10.0.0.3.
    tx.send(request(
        type_url::CLUSTER,
        &[],
        "",
        "",
        Some(node("sidecar-b", "10.0.0.3")),
    ))
    .await
    .expect("send");
    let cds = next(&mut responses).await;
    assert_eq!(cds.type_url, type_url::CLUSTER);
    assert_eq!(cds.resources.len(), 1);
    ack(&tx, type_url::CLUSTER, &[], &cds).await;

    // EDS by name: the sidecar's own registration is an endpoint of `web`.
    tx.send(request(
        type_url::ENDPOINT,
        &["web.default.svc:80"],
        "",
        "",
        None,
    ))
    .await
    .expect("send");
    let eds = next(&mut responses).await;
    assert_eq!(eds.type_url, type_url::ENDPOINT);
    assert_eq!(endpoint_count(&eds), 1);
    ack(&tx, type_url::ENDPOINT, &["web.default.svc:80"], &eds).await;

    // A new Service changes CDS only; EDS of the subscribed cluster is unchanged and not resent.
    let outcome = f
        .controller
        .apply("apiVersion: mesh.dev/v1\nkind: Service\nmetadata: {name: db}\nspec: {ports: [{port: 5432, appProtocol: tcp}], selector: {app: db}}\n")
        .expect("apply db");
    let push = next(&mut responses).await;
    assert_eq!(push.type_url, type_url::CLUSTER);
    assert_eq!(push.resources.len(), 2);
    assert_eq!(push.version_info, outcome.generation.to_string());

    // A stale nonce is ignored; then the proxy NACKs the push.
    tx.send(request(
        type_url::CLUSTER,
        &[],
        &cds.version_info,
        &cds.nonce,
        None,
    ))
    .await
    .expect("stale");
    let mut nack = request(type_url::CLUSTER, &[], &cds.version_info, &push.nonce, None);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "cluster db: unsupported".into(),
        details: vec![],
    });
    tx.send(nack).await.expect("nack");

    let mut changes = f.controller.registry.subscribe();
    loop {
        let result = wait_outcome(&f.controller.registry.list(), outcome.generation);
        if let Some((node, n)) = result.nacked.first() {
            assert_eq!(node, "sidecar-b");
            assert_eq!(n.message, "cluster db: unsupported");
            assert_eq!(n.version, outcome.generation.to_string());
            break;
        }
        tokio::time::timeout(STEP, changes.changed())
            .await
            .expect("registry changes")
            .expect("registry alive");
    }
    let proxies = f.controller.registry.list();
    assert_eq!(
        proxies[0].types["CDS"].acked_version.as_deref(),
        Some(cds.version_info.as_str()),
        "still on the last good CDS"
    );
}

#[tokio::test]
async fn wait_sees_unaffected_proxies_as_synced_at_once() {
    let f = start(Duration::from_secs(60)).await;
    f.controller.apply(SERVICES).expect("apply");
    let (tx, mut responses) = open_sotw(&f).await;
    tx.send(request(
        type_url::ENDPOINT,
        &["web.default.svc:80"],
        "",
        "",
        Some(node("only-eds", "10.0.0.7")),
    ))
    .await
    .expect("send");
    let eds = next(&mut responses).await;
    ack(&tx, type_url::ENDPOINT, &["web.default.svc:80"], &eds).await;

    // A change elsewhere (a new Service) does not touch this proxy's view: synced without a push.
    let outcome = f
        .controller
        .apply("apiVersion: mesh.dev/v1\nkind: Service\nmetadata: {name: other}\nspec: {ports: [{port: 80}], selector: {app: other}}\n")
        .expect("apply");
    wait_done(&f, outcome.generation).await;
    assert_eq!(
        wait_outcome(&f.controller.registry.list(), outcome.generation).synced,
        vec!["only-eds"]
    );
}

#[tokio::test]
async fn delta_sends_changes_and_removals_and_workloads_leave_after_grace() {
    let f = start(Duration::from_millis(200)).await;
    f.controller
        .apply(&format!("{SERVICES}---\napiVersion: mesh.dev/v1\nkind: Service\nmetadata: {{name: db}}\nspec: {{ports: [{{port: 5432}}], selector: {{app: db}}}}\n"))
        .expect("apply");
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", f.addr))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(8);
    let mut responses = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    tx.send(DeltaDiscoveryRequest {
        node: Some(node("delta-1", "10.0.0.9")),
        type_url: type_url::CLUSTER.into(),
        ..Default::default()
    })
    .await
    .expect("send");
    let first = tokio::time::timeout(STEP, responses.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("open");
    let mut names: Vec<_> = first.resources.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    assert_eq!(names, vec!["db.default.svc:5432", "web.default.svc:80"]);
    tx.send(DeltaDiscoveryRequest {
        type_url: type_url::CLUSTER.into(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await
    .expect("ack");

    f.controller
        .delete(&mesh_control_plane::resource::Key::new(
            mesh_control_plane::resource::Kind::Service,
            "default",
            "db",
        ))
        .expect("delete");
    let removal = tokio::time::timeout(STEP, responses.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("open");
    assert!(removal.resources.is_empty(), "nothing else changed");
    assert_eq!(removal.removed_resources, vec!["db.default.svc:5432"]);

    // The stream ends: the registered workload goes away once the grace period has passed.
    let mut snapshots = f.controller.subscribe();
    let registered = |c: &Controller| {
        c.list(mesh_control_plane::resource::Kind::Workload, None)
            .len()
    };
    assert_eq!(registered(&f.controller), 1);
    drop(tx);
    drop(responses);
    while registered(&f.controller) > 0 {
        tokio::time::timeout(STEP, snapshots.changed())
            .await
            .expect("removed after grace")
            .expect("alive");
    }
}

/// State of the world: a route change sends only the route table that changed (RDS may carry a
/// subset; LDS and CDS stay complete), and unrelated tables are not resent.
#[tokio::test]
async fn state_of_the_world_rds_pushes_only_the_changed_route_table() {
    let f = start(Duration::from_secs(60)).await;
    f.controller
        .apply(&format!(
            "{SERVICES}---\napiVersion: mesh.dev/v1\nkind: Service\nmetadata: {{name: api}}\nspec: {{ports: [{{port: 80, targetPort: 8080}}], selector: {{app: api}}}}\n"
        ))
        .expect("apply");
    let (tx, mut responses) = open_sotw(&f).await;
    let names = ["api.default.svc:80", "web.default.svc:80"];
    tx.send(request(
        type_url::ROUTE,
        &names,
        "",
        "",
        Some(node("sidecar-r", "10.0.0.9")),
    ))
    .await
    .expect("subscribe");
    let rds = next(&mut responses).await;
    assert_eq!(rds.resources.len(), 2, "the first response has every table");
    ack(&tx, type_url::ROUTE, &names, &rds).await;

    let outcome = f
        .controller
        .apply("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web-to-api}\nspec:\n  parentRefs: [{name: web, port: 80}]\n  rules:\n  - backendRefs: [{name: api, port: 80}]\n")
        .expect("apply route");
    let push = next(&mut responses).await;
    assert_eq!(push.type_url, type_url::ROUTE);
    assert_eq!(push.version_info, outcome.generation.to_string());
    let pushed: Vec<String> = push
        .resources
        .iter()
        .map(|a| {
            mesh_proto::envoy::config::route::v3::RouteConfiguration::decode(a.value.as_slice())
                .expect("route configuration")
                .name
        })
        .collect();
    assert_eq!(pushed, vec!["web.default.svc:80".to_string()]);
    ack(&tx, type_url::ROUTE, &names, &push).await;

    // A change that touches no route table (a new opaque Service) pushes no RDS at all, and the
    // proxy counts as synced with it.
    let outcome = f
        .controller
        .apply("apiVersion: mesh.dev/v1\nkind: Service\nmetadata: {name: db}\nspec: {ports: [{port: 5432, appProtocol: tcp}], selector: {app: db}}\n")
        .expect("apply db");
    wait_done(&f, outcome.generation).await;
    assert_eq!(
        wait_outcome(&f.controller.registry.list(), outcome.generation).synced,
        vec!["sidecar-r"],
        "synced with a change it does not subscribe to"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), responses.message())
            .await
            .is_err(),
        "nothing is pushed for a change outside the subscription"
    );
}

#[tokio::test]
async fn a_method_meshd_does_not_serve_gets_unimplemented_naming_it() {
    let f = start(Duration::from_secs(60)).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", f.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/FetchNothing",
    );
    let status = grpc
        .unary::<DiscoveryRequest, DiscoveryResponse, _>(
            tonic::Request::new(DiscoveryRequest::default()),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("not served");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    assert!(status.message().contains("FetchNothing"), "{status:?}");
}
