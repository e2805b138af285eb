//! The ADS client: one state-of-the-world stream carrying CDS and LDS (wildcard), and EDS and
//! RDS for the names those need (an RDS or EDS response may carry only the resources that
//! changed; they are merged into those held). Each response is decoded whole; a bad one is
//! NACKed with the reason and the proxy stays on its last good configuration. A good one is ACKed and the
//! routing table is rebuilt and swapped in atomically. When the stream breaks, the client
//! reconnects with jittered exponential backoff and resubscribes; the last good configuration
//! stays in force meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::envoy::config::core::v3::Node;
use mesh_proto::google::protobuf::Any;
use mesh_proto::google::rpc::Status as RpcStatus;
use mesh_proto::{AggregatedDiscoveryServiceClient, DiscoveryRequest, DiscoveryResponse, type_url};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::Xds;
use super::resources::{self, Resources};
use crate::routing::random_u32;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// `http://host:port` (plaintext) or `https://host:port` (TLS) of the control plane.
    pub server: String,
    /// For `https://`: the trust bundle and the name meshd's certificate carries.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    pub node: Node,
    /// This workload's inbound policy resource, `<namespace>/<workload>`; none for a proxy that
    /// registers no workload.
    pub policy_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the stream closed")]
    Closed,
}

/// Per-type client state within and across streams.
#[derive(Debug, Default)]
struct TypeTrack {
    /// Version of the last ACKed response (sent again on reconnect).
    version: String,
    /// Nonce of the last response of the stream.
    nonce: String,
    /// Names subscribed (EDS/RDS only).
    names: BTreeSet<String>,
    received: bool,
}

#[derive(Debug, Default)]
struct Tracks {
    cds: TypeTrack,
    eds: TypeTrack,
    lds: TypeTrack,
    rds: TypeTrack,
    policy: TypeTrack,
}

impl Tracks {
    fn get(&mut self, url: &str) -> Option<(&mut TypeTrack, &'static str)> {
        match url {
            type_url::CLUSTER => Some((&mut self.cds, "CDS")),
            type_url::ENDPOINT => Some((&mut self.eds, "EDS")),
            type_url::LISTENER => Some((&mut self.lds, "LDS")),
            type_url::ROUTE => Some((&mut self.rds, "RDS")),
            type_url::WORKLOAD_POLICY => Some((&mut self.policy, "POLICY")),
            _ => None,
        }
    }
}

/// The route tables and endpoint sets held, as received: a state-of-the-world RDS or EDS
/// response may carry only the resources that changed (only LDS and CDS responses are complete),
/// so each is merged into what is held, and what is no longer subscribed is dropped.
#[derive(Debug, Default)]
struct Held {
    routes: BTreeMap<String, Any>,
    endpoints: BTreeMap<String, Any>,
}

impl Held {
    /// What would be held after `anys` of `url` arrived, with `subscribed` names: the held
    /// resources of that type, in name order.
    fn merged(
        &self,
        url: &str,
        anys: &[Any],
        subscribed: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, Any>, String> {
        let held = if url == type_url::ROUTE {
            &self.routes
        } else {
            &self.endpoints
        };
        let mut next: BTreeMap<String, Any> = held
            .iter()
            .filter(|(name, _)| subscribed.contains(*name))
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect();
        for any in anys {
            next.insert(resources::resource_name(url, any)?, any.clone());
        }
        Ok(next)
    }
}

/// Follows the control plane forever.
pub async fn run(config: XdsConfig, xds: Arc<Xds>) {
    let mut resources = Resources::default();
    let mut tracks = Tracks::default();
    let mut held = Held::default();
    let mut backoff = MIN_BACKOFF;
    loop {
        let mut got_response = false;
        let result = session(
            &config,
            &xds,
            &mut resources,
            &mut tracks,
            &mut held,
            &mut got_response,
        )
        .await;
        xds.set_connected(false);
        if got_response {
            backoff = MIN_BACKOFF;
        }
        let err = result
            .err()
            .map_or_else(|| "closed".to_string(), |e| e.to_string());
        // Full jitter: anywhere between half and all of the backoff.
        let delay = backoff / 2 + backoff.mul_f64(f64::from(random_u32() % 1000) / 2000.0);
        tracing::warn!(server = %config.server, error = %err, retry_in_ms = delay.as_millis() as u64,
            "xDS stream to the control plane is down; keeping the last good config");
        tokio::time::sleep(delay).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn request(
    url: &str,
    track: &TypeTrack,
    node: Option<&Node>,
    error: Option<String>,
) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: track.version.clone(),
        node: node.cloned(),
        resource_names: track.names.iter().cloned().collect(),
        type_url: url.to_string(),
        response_nonce: track.nonce.clone(),
        error_detail: error.map(|message| RpcStatus {
            code: 3, // INVALID_ARGUMENT
            message,
            details: vec![],
        }),
        ..Default::default()
    }
}

async fn session(
    config: &XdsConfig,
    xds: &Xds,
    resources: &mut Resources,
    tracks: &mut Tracks,
    held: &mut Held,
    got_response: &mut bool,
) -> Result<(), SessionError> {
    let channel = crate::meshd::MeshdEndpoint {
        url: config.server.clone(),
        tls: config.tls.clone(),
    }
    .connect()
    .await?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::unbounded_channel();
    // A new stream: nonces of the old one mean nothing; versions tell the server what we hold.
    for (url, with_node) in [(type_url::CLUSTER, true), (type_url::LISTENER, false)] {
        if let Some((track, _)) = tracks.get(url) {
            track.nonce.clear();
            let _ = tx.send(request(url, track, with_node.then_some(&config.node), None));
        }
    }
    if let Some(name) = &config.policy_name {
        tracks.policy.names = std::iter::once(name.clone()).collect();
    }
    for url in [
        type_url::ENDPOINT,
        type_url::ROUTE,
        type_url::WORKLOAD_POLICY,
    ] {
        if let Some((track, _)) = tracks.get(url) {
            track.nonce.clear();
            if !track.names.is_empty() {
                let _ = tx.send(request(url, track, None, None));
            }
        }
    }
    let mut stream = client
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    xds.set_connected(true);
    tracing::info!(server = %config.server, "xDS stream open");
    while let Some(response) = stream.message().await? {
        *got_response = true;
        on_response(response, config, xds, resources, tracks, held, &tx);
    }
    Err(SessionError::Closed)
}

fn on_response(
    response: DiscoveryResponse,
    config: &XdsConfig,
    xds: &Xds,
    resources: &mut Resources,
    tracks: &mut Tracks,
    held: &mut Held,
    tx: &mpsc::UnboundedSender<DiscoveryRequest>,
) {
    let url = response.type_url.clone();
    let Some((track, short)) = tracks.get(&url) else {
        tracing::debug!(type_url = %url, "ignoring a response of a type the proxy does not use");
        return;
    };
    track.nonce = response.nonce.clone();
    if url == type_url::WORKLOAD_POLICY {
        let name = config.policy_name.as_deref().unwrap_or_default();
        let decoded = resources::workload_policy(&response.resources, name);
        let applied = decoded.map(|policy| xds.policy.store(Arc::new(policy)));
        if settle(applied, &response, &url, track, short, xds, tx) {
            let _ = tx.send(request(&url, track, None, None));
        }
        mark_ready(resources, tracks, xds);
        return;
    }
    let mut next = resources.clone();
    let merged = match url.as_str() {
        type_url::ENDPOINT | type_url::ROUTE => {
            match held.merged(&url, &response.resources, &track.names) {
                Ok(m) => Some(m),
                Err(e) => {
                    settle(Err(e), &response, &url, track, short, xds, tx);
                    return;
                }
            }
        }
        _ => None,
    };
    let all: Vec<Any> = merged.iter().flat_map(|m| m.values().cloned()).collect();
    let decoded = match url.as_str() {
        type_url::CLUSTER => resources::clusters(&response.resources).map(|c| next.clusters = c),
        type_url::ENDPOINT => resources::endpoints(&all).map(|e| {
            next.endpoints = e;
            next.sidecars = resources::sidecar_endpoints(&all);
        }),
        type_url::LISTENER => resources::listeners(&response.resources).map(|l| next.listeners = l),
        _ => resources::routes(&all).map(|r| next.routes = r),
    };
    let applied = decoded.map(|()| {
        match (url.as_str(), merged) {
            (type_url::ROUTE, Some(m)) => held.routes = m,
            (type_url::ENDPOINT, Some(m)) => held.endpoints = m,
            _ => {}
        }
        *resources = next;
        xds.routing
            .store(Arc::new(resources.compile(&xds.requests, &xds.endpoints)));
    });
    if settle(applied, &response, &url, track, short, xds, tx) {
        // Subscribe to what the update names before ACKing it, so that the control plane hears
        // of the new RDS or EDS names first: an ACK of LDS or CDS then means the routes and
        // endpoints they need are on their way, and `meshctl apply --wait` does not return in
        // between.
        follow_names(resources, tracks, tx);
        if let Some((track, _)) = tracks.get(&url) {
            let _ = tx.send(request(&url, track, None, None));
        }
    }
    mark_ready(resources, tracks, xds);
}

/// Records an applied update (the caller ACKs it) or NACKs a refused one; true when applied.
fn settle(
    applied: Result<(), String>,
    response: &DiscoveryResponse,
    url: &str,
    track: &mut TypeTrack,
    short: &'static str,
    xds: &Xds,
    tx: &mpsc::UnboundedSender<DiscoveryRequest>,
) -> bool {
    if let Err(message) = applied {
        tracing::warn!(ty = short, version = %response.version_info, error = %message, "refusing an xDS update (NACK); keeping the last good config");
        xds.update_type(short, |t| {
            t.last_nack = Some(format!("version {}: {message}", response.version_info))
        });
        let _ = tx.send(request(url, track, None, Some(message)));
        return false;
    }
    track.version = response.version_info.clone();
    track.received = true;
    xds.update_type(short, |t| {
        t.acked_version = Some(response.version_info.clone())
    });
    tracing::debug!(ty = short, version = %response.version_info, count = response.resources.len(), "applied xDS update");
    true
}

/// Ready once every type the configuration needs has arrived.
fn mark_ready(resources: &Resources, tracks: &Tracks, xds: &Xds) {
    if !xds.is_ready() && complete(resources, tracks) {
        xds.set_ready();
        tracing::info!(
            services = resources.listeners.len(),
            "first configuration from the control plane in force; ready"
        );
    }
}

/// Subscribes EDS and RDS to exactly the names the clusters and listeners need.
fn follow_names(
    resources: &Resources,
    tracks: &mut Tracks,
    tx: &mpsc::UnboundedSender<DiscoveryRequest>,
) {
    for (url, wanted) in [
        (type_url::ENDPOINT, resources.eds_names()),
        (type_url::ROUTE, resources.route_names()),
    ] {
        if let Some((track, _)) = tracks.get(url) {
            if track.names != wanted {
                track.names = wanted;
                let _ = tx.send(request(url, track, None, None));
            }
        }
    }
}

/// Every type the configuration needs has arrived at least once.
fn complete(resources: &Resources, tracks: &Tracks) -> bool {
    tracks.cds.received
        && tracks.lds.received
        && (resources.eds_names().is_empty() || tracks.eds.received)
        && (resources.route_names().is_empty() || tracks.rds.received)
        && (tracks.policy.names.is_empty() || tracks.policy.received)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::envoy::config::route::v3::RouteConfiguration;
    use mesh_proto::to_any;

    fn table(name: &str, vhost: &str) -> Any {
        let rc = RouteConfiguration {
            name: name.into(),
            virtual_hosts: vec![mesh_proto::envoy::config::route::v3::VirtualHost {
                name: vhost.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        to_any(type_url::ROUTE, &rc)
    }

    #[test]
    fn partial_rds_responses_merge_into_what_is_held_and_unsubscribed_tables_go() {
        let mut held = Held::default();
        let both: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        held.routes = held
            .merged(
                type_url::ROUTE,
                &[table("a", "a1"), table("b", "b1")],
                &both,
            )
            .expect("first response");
        // Only `b` changed: `a` stays as it was.
        let next = held
            .merged(type_url::ROUTE, &[table("b", "b2")], &both)
            .expect("partial response");
        assert_eq!(next.get("a"), Some(&table("a", "a1")));
        assert_eq!(next.get("b"), Some(&table("b", "b2")));
        // `a` is no longer subscribed (its listener went): dropped.
        let only_b: BTreeSet<String> = ["b".to_string()].into();
        let next = held
            .merged(type_url::ROUTE, &[], &only_b)
            .expect("empty response");
        assert_eq!(next.keys().collect::<Vec<_>>(), vec!["b"]);
        // An undecodable resource refuses the whole response.
        let bad = Any {
            type_url: type_url::ROUTE.into(),
            value: vec![0xff, 0xff],
        };
        assert!(held.merged(type_url::ROUTE, &[bad], &both).is_err());
    }
}
