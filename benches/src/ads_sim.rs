//! Simulated sidecars: xDS clients that subscribe as `mesh-proxy` does (CDS and LDS wildcard,
//! EDS and RDS for the names those name, the workload's policy), register a workload through
//! their node metadata, ACK every response, and record what arrived when.
//!
//! They decode only what a sidecar needs to know what to subscribe to (cluster and listener
//! names, the route table each listener names), so the measurement is of the control plane.
//! Both protocol variants: state of the world and incremental (delta).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use mesh_proto::envoy::config::cluster::v3::Cluster;
use mesh_proto::envoy::config::core::v3::Node;
use mesh_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use mesh_proto::envoy::config::listener::v3::{Listener, filter};
use mesh_proto::envoy::config::route::v3::RouteConfiguration;
use mesh_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use mesh_proto::google::protobuf::Any;
use mesh_proto::prost::Message;
use mesh_proto::{
    AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest, DeltaDiscoveryResponse,
    DiscoveryRequest, DiscoveryResponse, node_meta, type_url,
};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_stream::wrappers::UnboundedReceiverStream;

/// Which ADS variant the clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    Sotw,
    Delta,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Sotw => "sotw",
            Variant::Delta => "delta",
        }
    }
}

/// What every client reports, shared with the benchmark's driver.
#[derive(Debug)]
pub struct Fleet {
    pub clients: Vec<ClientState>,
    /// Woken whenever a client ACKs something or becomes synced.
    pub progress: Notify,
}

#[derive(Debug, Default)]
pub struct ClientState {
    /// Bytes of responses received (encoded protobuf).
    pub bytes: AtomicU64,
    pub responses: AtomicU64,
    /// Has ACKed every type it subscribes to, with every name it asked for present.
    pub synced: AtomicBool,
    /// Highest generation of a route-table (RDS) update this client ACKed.
    pub rds_generation: AtomicU64,
    /// When each RDS generation was ACKed.
    pub rds_acks: Mutex<Vec<(u64, Instant)>>,
    /// The stream failed (the error), if it did.
    pub failed: Mutex<Option<String>>,
}

impl Fleet {
    pub fn new(n: usize) -> Arc<Fleet> {
        Arc::new(Fleet {
            clients: (0..n).map(|_| ClientState::default()).collect(),
            progress: Notify::new(),
        })
    }

    pub fn synced(&self) -> usize {
        self.clients
            .iter()
            .filter(|c| c.synced.load(Ordering::Relaxed))
            .count()
    }

    pub fn bytes(&self) -> u64 {
        self.clients
            .iter()
            .map(|c| c.bytes.load(Ordering::Relaxed))
            .sum()
    }

    pub fn failures(&self) -> Vec<String> {
        self.clients
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let failed = c.failed.lock().ok()?.clone()?;
                Some(format!("client {i}: {failed}"))
            })
            .collect()
    }

    /// Clients that have ACKed a route update of `generation` or later.
    pub fn at_generation(&self, generation: u64) -> usize {
        self.clients
            .iter()
            .filter(|c| c.rds_generation.load(Ordering::Relaxed) >= generation)
            .count()
    }

    /// When each client first ACKed a route update of `generation` or later.
    pub fn ack_times(&self, generation: u64) -> Vec<Option<Instant>> {
        self.clients
            .iter()
            .map(|c| {
                c.rds_acks.lock().ok().and_then(|acks| {
                    acks.iter()
                        .find(|(g, _)| *g >= generation)
                        .map(|(_, at)| *at)
                })
            })
            .collect()
    }
}

/// The node metadata of simulated sidecar `i`: a pod of service `svc-<i mod services>`, with its
/// own address in 10.128.0.0/9 (outside meshd's VIP range).
pub fn node(i: usize, services: usize) -> Node {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 1)) + i as u32).to_string();
    let workload = format!("sim-{i}");
    let labels = BTreeMap::from([("app".to_string(), format!("svc-{}", i % services))]);
    let fields = [
        (node_meta::NAMESPACE, "default"),
        (node_meta::SERVICE_ACCOUNT, "default"),
        (node_meta::INSTANCE_IPS, ip.as_str()),
        (node_meta::WORKLOAD_NAME, workload.as_str()),
        (node_meta::PORTS, "8080"),
    ];
    Node {
        id: format!("sidecar~{ip}~{workload}"),
        cluster: "default".into(),
        metadata: Some(node_meta::build(&fields, &labels)),
        user_agent_name: "mesh-cp-scale".into(),
        ..Default::default()
    }
}

/// Runs simulated sidecar `i` until its stream ends; records a failure in its state.
/// `connecting` bounds how many clients open their connection at once (a thousand SYNs in the
/// same millisecond overflow the listen backlog, which no real rollout does).
pub async fn run_client(
    i: usize,
    xds: SocketAddr,
    services: usize,
    variant: Variant,
    fleet: Arc<Fleet>,
    connecting: Arc<Semaphore>,
) {
    let client = {
        let _permit = connecting.acquire().await;
        connect(xds).await
    };
    let result = match client {
        Err(e) => Err(e),
        Ok(client) => match variant {
            Variant::Sotw => sotw(i, client, services, &fleet).await,
            Variant::Delta => delta(i, client, services, &fleet).await,
        },
    };
    if let Err(e) = result {
        if let Some(state) = fleet.clients.get(i) {
            if let Ok(mut failed) = state.failed.lock() {
                *failed = Some(format!("{e:#}"));
            }
        }
        fleet.progress.notify_one();
    }
}

type Client = AggregatedDiscoveryServiceClient<tonic::transport::Channel>;

async fn connect(xds: SocketAddr) -> anyhow::Result<Client> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{xds}"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to meshd's xDS at {xds}"))?;
    Ok(AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 * 1024 * 1024))
}

/// The names a sidecar derives from clusters (EDS) and listeners (RDS).
#[derive(Debug, Default)]
struct Wants {
    clusters: BTreeMap<String, Option<String>>,
    listeners: BTreeMap<String, Option<String>>,
}

impl Wants {
    fn eds(&self) -> BTreeSet<String> {
        self.clusters.values().flatten().cloned().collect()
    }
    fn rds(&self) -> BTreeSet<String> {
        self.listeners.values().flatten().cloned().collect()
    }
}

/// The EDS name of a cluster (none for one with inline endpoints).
fn eds_name(any: &Any) -> anyhow::Result<(String, Option<String>)> {
    let c = Cluster::decode(any.value.as_slice()).context("undecodable Cluster")?;
    let eds = c.eds_cluster_config.as_ref().map(|e| {
        if e.service_name.is_empty() {
            c.name.clone()
        } else {
            e.service_name.clone()
        }
    });
    Ok((c.name, eds))
}

/// The route table a listener's HTTP connection manager names (none for TCP listeners).
fn rds_name(any: &Any) -> anyhow::Result<(String, Option<String>)> {
    let l = Listener::decode(any.value.as_slice()).context("undecodable Listener")?;
    let route = l
        .filter_chains
        .first()
        .and_then(|c| c.filters.first())
        .and_then(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(tc))
                if tc.type_url == type_url::HTTP_CONNECTION_MANAGER =>
            {
                HttpConnectionManager::decode(tc.value.as_slice()).ok()
            }
            _ => None,
        })
        .and_then(|hcm| match hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
            _ => None,
        });
    Ok((l.name, route))
}

fn policy_name(i: usize) -> String {
    format!("default/sim-{i}")
}

fn record_rds_ack(state: &ClientState, version: &str, fleet: &Fleet) {
    let Ok(generation) = version.parse::<u64>() else {
        return;
    };
    state
        .rds_generation
        .fetch_max(generation, Ordering::Relaxed);
    if let Ok(mut acks) = state.rds_acks.lock() {
        acks.push((generation, Instant::now()));
    }
    fleet.progress.notify_one();
}

async fn sotw(i: usize, mut client: Client, services: usize, fleet: &Fleet) -> anyhow::Result<()> {
    let state = fleet.clients.get(i).context("no such client")?;
    let (tx, rx) = mpsc::unbounded_channel();
    let ask = |url: &str, names: Vec<String>, version: &str, nonce: &str, node: Option<Node>| {
        DiscoveryRequest {
            node,
            type_url: url.into(),
            resource_names: names,
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    };
    let _ = tx.send(ask(
        type_url::CLUSTER,
        vec![],
        "",
        "",
        Some(node(i, services)),
    ));
    let _ = tx.send(ask(type_url::LISTENER, vec![], "", "", None));
    let _ = tx.send(ask(
        type_url::WORKLOAD_POLICY,
        vec![policy_name(i)],
        "",
        "",
        None,
    ));
    let mut stream = client
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut wants = Wants::default();
    let (mut eds_subscribed, mut rds_subscribed) = (BTreeSet::new(), BTreeSet::new());
    let (mut eds_held, mut rds_held) = (BTreeSet::<String>::new(), BTreeSet::<String>::new());
    // Per type: the names subscribed when the last ACKed response came, and how many it held.
    let mut complete: BTreeMap<String, bool> = BTreeMap::new();
    while let Some(resp) = stream.message().await? {
        let resp: DiscoveryResponse = resp;
        state
            .bytes
            .fetch_add(resp.encoded_len() as u64, Ordering::Relaxed);
        state.responses.fetch_add(1, Ordering::Relaxed);
        let names: Vec<String> = match resp.type_url.as_str() {
            type_url::CLUSTER => {
                wants.clusters = resp
                    .resources
                    .iter()
                    .map(eds_name)
                    .collect::<Result<_, _>>()?;
                vec![]
            }
            type_url::LISTENER => {
                wants.listeners = resp
                    .resources
                    .iter()
                    .map(rds_name)
                    .collect::<Result<_, _>>()?;
                vec![]
            }
            type_url::ENDPOINT => eds_subscribed.iter().cloned().collect(),
            type_url::ROUTE => rds_subscribed.iter().cloned().collect(),
            _ => vec![policy_name(i)],
        };
        let _ = tx.send(ask(
            &resp.type_url,
            names,
            &resp.version_info,
            &resp.nonce,
            None,
        ));
        // RDS and EDS responses may carry only what changed: hold the names received. Held
        // names only grow, so a type once complete stays so until its subscription changes.
        let was_complete = complete.get(&resp.type_url).copied().unwrap_or(false);
        let full = match resp.type_url.as_str() {
            type_url::ENDPOINT => {
                for any in &resp.resources {
                    let cla = ClusterLoadAssignment::decode(any.value.as_slice())
                        .context("undecodable ClusterLoadAssignment")?;
                    eds_held.insert(cla.cluster_name);
                }
                was_complete || eds_subscribed.iter().all(|n| eds_held.contains(n))
            }
            type_url::ROUTE => {
                for any in &resp.resources {
                    let rc = RouteConfiguration::decode(any.value.as_slice())
                        .context("undecodable RouteConfiguration")?;
                    rds_held.insert(rc.name);
                }
                was_complete || rds_subscribed.iter().all(|n| rds_held.contains(n))
            }
            _ => true,
        };
        complete.insert(resp.type_url.clone(), full);
        if resp.type_url == type_url::ROUTE {
            record_rds_ack(state, &resp.version_info, fleet);
        }
        // Follow the names, as the sidecar does after CDS and LDS (only they change them).
        if names_follow(&resp.type_url) {
            for (url, wanted, subscribed) in [
                (type_url::ENDPOINT, wants.eds(), &mut eds_subscribed),
                (type_url::ROUTE, wants.rds(), &mut rds_subscribed),
            ] {
                if *subscribed != wanted {
                    *subscribed = wanted;
                    complete.insert(url.to_string(), subscribed.is_empty());
                    let _ = tx.send(ask(url, subscribed.iter().cloned().collect(), "", "", None));
                }
            }
        }
        mark_synced(state, &complete, fleet);
    }
    anyhow::bail!("meshd closed the stream")
}

/// Whether a response of `url` can change the names the sidecar subscribes to (the clusters'
/// endpoint sets and the listeners' route tables).
fn names_follow(url: &str) -> bool {
    url == type_url::CLUSTER || url == type_url::LISTENER
}

fn mark_synced(state: &ClientState, complete: &BTreeMap<String, bool>, fleet: &Fleet) {
    let all = [
        type_url::CLUSTER,
        type_url::LISTENER,
        type_url::ENDPOINT,
        type_url::ROUTE,
        type_url::WORKLOAD_POLICY,
    ]
    .iter()
    .all(|t| complete.get(*t).copied().unwrap_or(false));
    if all != state.synced.swap(all, Ordering::Relaxed) {
        fleet.progress.notify_one();
    }
}

async fn delta(i: usize, mut client: Client, services: usize, fleet: &Fleet) -> anyhow::Result<()> {
    let state = fleet.clients.get(i).context("no such client")?;
    let (tx, rx) = mpsc::unbounded_channel();
    let subscribe = |url: &str, names: Vec<String>, node: Option<Node>| DeltaDiscoveryRequest {
        node,
        type_url: url.into(),
        resource_names_subscribe: names,
        ..Default::default()
    };
    let _ = tx.send(subscribe(
        type_url::CLUSTER,
        vec![],
        Some(node(i, services)),
    ));
    let _ = tx.send(subscribe(type_url::LISTENER, vec![], None));
    let _ = tx.send(subscribe(
        type_url::WORKLOAD_POLICY,
        vec![policy_name(i)],
        None,
    ));
    let mut stream = client
        .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut wants = Wants::default();
    let (mut eds_subscribed, mut rds_subscribed) = (BTreeSet::new(), BTreeSet::new());
    // Names held per type.
    let mut held: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut answered: BTreeSet<String> = BTreeSet::new();
    // Per type: whether the proxy holds all it subscribed to.
    let mut complete: BTreeMap<String, bool> = BTreeMap::new();
    while let Some(resp) = stream.message().await? {
        let resp: DeltaDiscoveryResponse = resp;
        state
            .bytes
            .fetch_add(resp.encoded_len() as u64, Ordering::Relaxed);
        state.responses.fetch_add(1, Ordering::Relaxed);
        let names = held.entry(resp.type_url.clone()).or_default();
        for r in &resp.resources {
            names.insert(r.name.clone());
            let Some(any) = &r.resource else { continue };
            match resp.type_url.as_str() {
                type_url::CLUSTER => {
                    let (name, eds) = eds_name(any)?;
                    wants.clusters.insert(name, eds);
                }
                type_url::LISTENER => {
                    let (name, rds) = rds_name(any)?;
                    wants.listeners.insert(name, rds);
                }
                _ => {}
            }
        }
        for gone in &resp.removed_resources {
            names.remove(gone);
            match resp.type_url.as_str() {
                type_url::CLUSTER => drop(wants.clusters.remove(gone)),
                type_url::LISTENER => drop(wants.listeners.remove(gone)),
                _ => {}
            }
        }
        let _ = tx.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        });
        answered.insert(resp.type_url.clone());
        if resp.type_url == type_url::ROUTE {
            record_rds_ack(state, &resp.system_version_info, fleet);
        }
        // Which types to check again for completeness: this response's, if it could have
        // made it incomplete or complete, and those whose subscription changes below.
        let mut check: Vec<&str> = Vec::new();
        if !complete.get(&resp.type_url).copied().unwrap_or(false)
            || !resp.removed_resources.is_empty()
        {
            check.push(resp.type_url.as_str());
        }
        if names_follow(&resp.type_url) {
            for (url, wanted, subscribed) in [
                (type_url::ENDPOINT, wants.eds(), &mut eds_subscribed),
                (type_url::ROUTE, wants.rds(), &mut rds_subscribed),
            ] {
                if *subscribed != wanted {
                    let add: Vec<String> = wanted.difference(subscribed).cloned().collect();
                    let drop_: Vec<String> = subscribed.difference(&wanted).cloned().collect();
                    *subscribed = wanted;
                    check.push(url);
                    let _ = tx.send(DeltaDiscoveryRequest {
                        type_url: url.into(),
                        resource_names_subscribe: add,
                        resource_names_unsubscribe: drop_,
                        ..Default::default()
                    });
                }
            }
        }
        for t in check {
            let subscribed = match t {
                type_url::ENDPOINT => Some(&eds_subscribed),
                type_url::ROUTE => Some(&rds_subscribed),
                _ => None,
            };
            let ok = match subscribed {
                None => answered.contains(t),
                Some(subscribed) => {
                    subscribed.is_empty()
                        || (answered.contains(t)
                            && held
                                .get(t)
                                .is_some_and(|h| subscribed.iter().all(|n| h.contains(n))))
                }
            };
            complete.insert(t.to_string(), ok);
        }
        mark_synced(state, &complete, fleet);
    }
    anyhow::bail!("meshd closed the stream")
}
