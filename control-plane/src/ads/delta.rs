//! Incremental (delta) ADS: each response carries only the resources that changed for the proxy
//! and the names it should remove.
//!
//! Per type: wildcard or not, the explicitly subscribed names, and what the proxy has (name →
//! content hash, seeded from `initial_resource_versions` on reconnect). Versions of resources are
//! their content hashes; `system_version_info` is the snapshot generation.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_proto::DeltaDiscoveryRequest;
use tonic::Status;

use super::requests::Requests;

use super::response::{Budget, Delta, DeltaResource};
use super::session::Session;
use super::stream::{AdsStream, drive};
use crate::controller::Controller;
use crate::snapshot::{Snapshot, XdsType};
use mesh_proto::envoy::config::core::v3::Node;

#[derive(Debug)]
struct Pending {
    nonce: String,
    version: String,
    /// Names whose content the response carried, to forget if it is refused.
    updated: Vec<String>,
}

#[derive(Debug, Default)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the proxy holds: name → content hash.
    known: BTreeMap<String, u64>,
    pending: Option<Pending>,
    acked: bool,
    view_generation: u64,
    /// `known` is exactly the view at `view_generation`: no NACK or subscription change since,
    /// so the next push need look only at what the next snapshot changed.
    exact: bool,
}

impl Subscription {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

type Tx = super::Responses;

struct Stream {
    session: Option<Session>,
    subs: BTreeMap<XdsType, Subscription>,
    nonce: u64,
    tx: Tx,
    budget: Arc<Budget>,
}

/// Serves one stream until the proxy goes away.
pub(crate) async fn serve(
    controller: Arc<Controller>,
    budget: Arc<Budget>,
    requests: Requests<DeltaDiscoveryRequest>,
    tx: Tx,
    peer: Option<SocketAddr>,
) {
    let stream = Stream {
        session: None,
        subs: BTreeMap::new(),
        nonce: 0,
        tx,
        budget,
    };
    drive(controller, requests, stream, peer).await
}

impl AdsStream for Stream {
    type Request = DeltaDiscoveryRequest;
    const PROTOCOL: &'static str = "delta";

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn session_slot(&mut self) -> &mut Option<Session> {
        &mut self.session
    }

    async fn on_request(&mut self, request: DeltaDiscoveryRequest, snapshot: &Snapshot) -> bool {
        self.request(request, snapshot).await
    }

    async fn on_snapshot(&mut self, snapshot: &Snapshot) -> bool {
        for ty in XdsType::ALL {
            if self.subs.contains_key(&ty) && !self.push(ty, snapshot, false).await {
                return false;
            }
        }
        true
    }
}

/// A resource's version: its content hash.
fn version_of(hash: u64) -> String {
    format!("{hash:016x}")
}

impl Stream {
    async fn request(&mut self, request: DeltaDiscoveryRequest, snapshot: &Snapshot) -> bool {
        let Some(ty) = XdsType::from_url(&request.type_url) else {
            tracing::debug!(type_url = %request.type_url, "delta request for a type meshd does not serve; ignored");
            return true;
        };
        let first = !self.subs.contains_key(&ty);
        let sub = self.subs.entry(ty).or_default();
        if first {
            sub.wildcard = request.resource_names_subscribe.is_empty()
                || request.resource_names_subscribe.iter().any(|n| n == "*");
            sub.known = request
                .initial_resource_versions
                .iter()
                .filter_map(|(name, v)| u64::from_str_radix(v, 16).ok().map(|h| (name.clone(), h)))
                .collect();
        }
        if !request.response_nonce.is_empty() {
            match sub.pending.take() {
                Some(p) if p.nonce == request.response_nonce => {
                    if let Some(session) = self.session.as_ref() {
                        match &request.error_detail {
                            Some(error) => {
                                // The proxy kept its old versions: resend these next time.
                                for name in &p.updated {
                                    sub.known.remove(name);
                                }
                                sub.exact = false;
                                session.nacked(ty, &p.version, &error.message);
                            }
                            None => {
                                sub.acked = true;
                                session.acked(ty, &p.version, sub.view_generation);
                            }
                        }
                    }
                }
                other => {
                    sub.pending = other;
                    tracing::debug!(ty = ty.short(), nonce = %request.response_nonce, "stale delta nonce");
                }
            }
        }
        let mut changed = false;
        for name in &request.resource_names_subscribe {
            if name == "*" {
                changed |= !sub.wildcard;
                sub.wildcard = true;
            } else {
                changed |= sub.names.insert(name.clone());
            }
        }
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                changed |= sub.wildcard;
                sub.wildcard = false;
            } else {
                changed |= sub.names.remove(name);
                sub.known.remove(name);
            }
        }
        if first || changed {
            sub.exact = false;
            return self.push(ty, snapshot, first).await;
        }
        true
    }

    /// Sends what changed for `ty`; with `force`, sends a response even when nothing did.
    async fn push(&mut self, ty: XdsType, snapshot: &Snapshot, force: bool) -> bool {
        let Some(sub) = self.subs.get_mut(&ty) else {
            return true;
        };
        // A stream at the previous snapshot looks only at the names that changed since.
        let changed = (!force && sub.exact)
            .then(|| snapshot.changed_since(ty, sub.view_generation))
            .flatten();
        sub.exact = true;
        let wanted: BTreeMap<&String, _> = match changed {
            Some(names) => names
                .iter()
                .filter(|n| sub.wants(n))
                .filter_map(|n| snapshot.get(ty, n).map(|e| (n, e)))
                .collect(),
            None => snapshot.of_type(ty).filter(|(n, _)| sub.wants(n)).collect(),
        };
        let updated: Vec<(&String, u64, DeltaResource<'_>)> = wanted
            .iter()
            .filter(|(name, entry)| sub.known.get(name.as_str()) != Some(&entry.hash))
            .map(|(name, entry)| {
                let resource = DeltaResource {
                    name: name.as_str(),
                    version: version_of(entry.hash),
                    any: &entry.any,
                };
                (*name, entry.hash, resource)
            })
            .collect();
        // Gone from the snapshot, or explicitly subscribed but absent: tell the proxy.
        let mut removed: Vec<String> = match changed {
            Some(names) => names
                .iter()
                .filter(|n| sub.known.contains_key(*n) && !wanted.contains_key(n))
                .cloned()
                .collect(),
            None => sub
                .known
                .keys()
                .filter(|n| !wanted.contains_key(n))
                .cloned()
                .collect(),
        };
        if force {
            let absent: Vec<String> = sub
                .names
                .iter()
                .filter(|n| !wanted.contains_key(n) && !removed.contains(n))
                .cloned()
                .collect();
            removed.extend(absent);
        }
        if updated.is_empty() && removed.is_empty() && !force {
            sub.view_generation = snapshot.generation;
            if sub.acked {
                if let Some(session) = self.session.as_ref() {
                    session.still_synced(ty, snapshot.generation);
                }
            }
            return true;
        }
        for (name, hash, _) in &updated {
            sub.known.insert((*name).clone(), *hash);
        }
        for name in &removed {
            sub.known.remove(name);
        }
        self.nonce += 1;
        let version = snapshot.generation.to_string();
        let nonce = self.nonce.to_string();
        sub.pending = Some(Pending {
            nonce: nonce.clone(),
            version: version.clone(),
            updated: updated.iter().map(|(name, _, _)| (*name).clone()).collect(),
        });
        sub.acked = false;
        sub.view_generation = snapshot.generation;
        let (wildcard, subscribed) = (sub.wildcard, sub.known.len());
        let resources: Vec<DeltaResource<'_>> = updated.into_iter().map(|(_, _, r)| r).collect();
        let response = Delta {
            system_version_info: &version,
            type_url: ty.url(),
            nonce: &nonce,
            resources: &resources,
            removed_resources: &removed,
        }
        .encode(&self.budget)
        .await
        .map_err(|e| Status::resource_exhausted(e.to_string()));
        if let Some(session) = self.session.as_ref() {
            session.sent(ty, &version, wildcard, subscribed);
            session
                .controller
                .metrics
                .pushed(ty, snapshot.created.elapsed());
        }
        self.tx.send(response).await.is_ok()
    }
}
