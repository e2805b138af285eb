//! The proxy's ADS client against a scripted ADS server over a real gRPC stream: it subscribes
//! to what it needs, ACKs good updates, NACKs a bad one with the reason and keeps its last good
//! routing table. (meshd validates everything it serves, so it never sends a bad update; this
//! server exists to send one.)

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_proto::envoy::config::cluster::v3::{Cluster, cluster};
use mesh_proto::envoy::config::core::v3::{Address, Node, SocketAddress, address, socket_address};
use mesh_proto::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use mesh_proto::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use mesh_proto::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use mesh_proto::google::protobuf::Any;
use mesh_proto::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, prost::Name, to_any, type_url,
};
use mesh_proxy::xds::Xds;
use mesh_proxy::xds::client::{XdsConfig, run};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

const STEP: Duration = Duration::from_secs(5);

/// One stream as the test sees it: the proxy's requests, and a way to respond.
type StreamEnds = (
    mpsc::Receiver<DiscoveryRequest>,
    mpsc::Sender<Result<DiscoveryResponse, Status>>,
);

/// Hands the test each stream's requests and lets it send responses.
#[derive(Clone)]
struct Scripted {
    streams: Arc<Mutex<Option<mpsc::Sender<StreamEnds>>>>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Scripted {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut incoming = request.into_inner();
        let (req_tx, req_rx) = mpsc::channel(16);
        let (resp_tx, resp_rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok(Some(r)) = incoming.message().await {
                if req_tx.send(r).await.is_err() {
                    break;
                }
            }
        });
        let streams = self.streams.lock().expect("lock").clone();
        if let Some(s) = streams {
            let _ = s.send((req_rx, resp_tx)).await;
        }
        Ok(Response::new(ReceiverStream::new(resp_rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("not used"))
    }
}

fn sock(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn listener(ip: &str) -> Any {
    let tcp = TcpProxy {
        stat_prefix: "db".into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("db".into())),
        ..Default::default()
    };
    to_any(
        type_url::LISTENER,
        &Listener {
            name: "db".into(),
            address: Some(sock(ip, 5432)),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.tcp_proxy".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(to_any(
                        &TcpProxy::type_url(),
                        &tcp,
                    ))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
}

fn response(ty: &str, version: &str, nonce: &str, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        resources,
        type_url: ty.into(),
        nonce: nonce.into(),
        ..Default::default()
    }
}

async fn recv(rx: &mut mpsc::Receiver<DiscoveryRequest>) -> DiscoveryRequest {
    tokio::time::timeout(STEP, rx.recv())
        .await
        .expect("a request in time")
        .expect("stream open")
}

/// Receives requests until one of `ty` arrives (others are returned too, for inspection).
async fn recv_type(rx: &mut mpsc::Receiver<DiscoveryRequest>, ty: &str) -> DiscoveryRequest {
    loop {
        let r = recv(rx).await;
        if r.type_url == ty {
            return r;
        }
    }
}

#[tokio::test]
async fn good_updates_are_acked_and_a_bad_one_is_nacked_keeping_the_last_good_config() {
    let (streams_tx, mut streams_rx) = mpsc::channel(4);
    let server = Scripted {
        streams: Arc::new(Mutex::new(Some(streams_tx))),
    };
    let listener_socket = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener_socket.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(server))
            .serve_with_incoming(TcpListenerStream::new(listener_socket)),
    );

    let xds = Arc::new(Xds::following(format!("http://{addr}")));
    let config = XdsConfig {
        server: format!("http://{addr}"),
        tls: None,
        policy_name: None,
        node: Node {
            id: "test-proxy".into(),
            ..Default::default()
        },
    };
    tokio::spawn(run(config, xds.clone()));
    let (mut requests, responses) = tokio::time::timeout(STEP, streams_rx.recv())
        .await
        .expect("stream in time")
        .expect("a stream");

    // The first request carries the node; CDS and LDS are wildcard subscriptions.
    let first = recv(&mut requests).await;
    assert_eq!(
        first.node.as_ref().map(|n| n.id.as_str()),
        Some("test-proxy")
    );
    assert_eq!(first.type_url, type_url::CLUSTER);
    assert!(first.resource_names.is_empty());
    assert!(!xds.is_ready());

    let eds_cluster = Cluster {
        name: "db".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        ..Default::default()
    };
    responses
        .send(Ok(response(
            type_url::CLUSTER,
            "1",
            "n1",
            vec![to_any(type_url::CLUSTER, &eds_cluster)],
        )))
        .await
        .expect("send");
    // An EDS subscription for exactly the cluster it needs, then the ACK of CDS: in that order,
    // so that the control plane knows what is still to come when it sees the ACK.
    // (The other types' first requests may come in between.)
    let (mut order, mut eds, mut ack) = (Vec::new(), None, None);
    while eds.is_none() || ack.is_none() {
        let r = recv(&mut requests).await;
        if r.type_url == type_url::ENDPOINT && !r.resource_names.is_empty() {
            order.push("EDS subscription");
            eds = Some(r);
        } else if r.type_url == type_url::CLUSTER && r.response_nonce == "n1" {
            order.push("CDS ACK");
            ack = Some(r);
        }
    }
    assert_eq!(order, ["EDS subscription", "CDS ACK"]);
    let (eds, ack) = (eds.expect("EDS"), ack.expect("ACK"));
    assert_eq!(eds.resource_names, vec!["db"]);
    assert_eq!(
        (
            ack.version_info.as_str(),
            ack.response_nonce.as_str(),
            ack.error_detail.is_none()
        ),
        ("1", "n1", true)
    );

    let cla = ClusterLoadAssignment {
        cluster_name: "db".into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(sock("10.0.0.7", 5432)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    responses
        .send(Ok(response(
            type_url::ENDPOINT,
            "1",
            "n2",
            vec![to_any(type_url::ENDPOINT, &cla)],
        )))
        .await
        .expect("send");
    responses
        .send(Ok(response(
            type_url::LISTENER,
            "1",
            "n3",
            vec![listener("10.96.0.5")],
        )))
        .await
        .expect("send");
    let lds_ack = recv_type(&mut requests, type_url::LISTENER).await;
    assert_eq!(lds_ack.response_nonce, "n3");
    assert!(lds_ack.error_detail.is_none());

    let vip: SocketAddr = "10.96.0.5:5432".parse().expect("addr");
    let picked = xds
        .routing
        .load()
        .service(&vip)
        .and_then(|s| s.pick(0).ok())
        .map(|(ep, _)| ep.addr.to_string());
    assert_eq!(picked.as_deref(), Some("10.0.0.7:5432"));
    assert!(xds.is_ready(), "ready once CDS, EDS and LDS are in");

    // A listener with an address that is no IP: refused, with the reason, and nothing changes.
    responses
        .send(Ok(response(
            type_url::LISTENER,
            "2",
            "n4",
            vec![listener("not-an-ip")],
        )))
        .await
        .expect("send");
    let nack = recv_type(&mut requests, type_url::LISTENER).await;
    assert_eq!(nack.response_nonce, "n4");
    assert_eq!(
        nack.version_info, "1",
        "the NACK names the version still in force"
    );
    let message = nack.error_detail.map(|e| e.message).unwrap_or_default();
    assert_eq!(message, "listener db: `not-an-ip` is not an IP address");
    let still = xds
        .routing
        .load()
        .service(&vip)
        .and_then(|s| s.pick(0).ok())
        .map(|(ep, _)| ep.addr.to_string());
    assert_eq!(
        still.as_deref(),
        Some("10.0.0.7:5432"),
        "the last good config stays in force"
    );
    let dump = xds.dump().to_string();
    assert!(
        dump.contains("not-an-ip"),
        "config_dump shows the NACK: {dump}"
    );

    // The server goes away: the client reconnects, resubscribes with the versions it holds,
    // and keeps routing meanwhile.
    drop(responses);
    drop(requests);
    let (mut requests, _responses) =
        tokio::time::timeout(Duration::from_secs(15), streams_rx.recv())
            .await
            .expect("reconnect in time")
            .expect("a stream");
    let again = recv_type(&mut requests, type_url::LISTENER).await;
    assert_eq!(
        (again.version_info.as_str(), again.response_nonce.as_str()),
        ("1", "")
    );
    assert!(xds.routing.load().service(&vip).is_some());
}
