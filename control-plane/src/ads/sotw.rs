//! State-of-the-world ADS: every response of a type carries the complete set the proxy asked for.
//!
//! Per type: the subscription (names, or wildcard for LDS/CDS when none are given, or `*`), the
//! last response sent (nonce, version, content fingerprint) and whether it was ACKed. A request
//! whose nonce is not the latest of its type is stale and ignored. A new snapshot is pushed only
//! to types whose view changed, in the order CDS, EDS, LDS, RDS.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_proto::DiscoveryRequest;
use tonic::Status;

use super::requests::Requests;

use super::budget::{Budget, Place};
use super::names::{Coverage, NameSets, Names, same_names};
use super::response::Sotw;
use super::session::Session;
use super::stream::{AdsStream, drive};
use crate::controller::Controller;
use crate::snapshot::{Entry, Snapshot, XdsType};
use mesh_proto::envoy::config::core::v3::Node;

#[derive(Debug)]
struct Sent {
    nonce: String,
    version: String,
    /// Of the whole view, when the response carried all of it.
    fingerprint: Option<u64>,
}

#[derive(Debug, Default)]
struct Subscription {
    /// `None`: everything of the type. Shared with every stream that asks for the same names.
    names: Option<Names>,
    sent: Option<Sent>,
    acked: bool,
    /// Some response of the type has been ACKed since the proxy subscribed to it.
    ever_acked: bool,
    /// Latest generation whose view equals the content last sent.
    view_generation: u64,
    /// Whether the names cover what the listeners or clusters refer to (RDS and EDS).
    coverage: Coverage,
}

type Tx = super::Responses;

struct Stream {
    session: Option<Session>,
    subs: BTreeMap<XdsType, Subscription>,
    nonce: u64,
    tx: Tx,
    name_sets: Arc<NameSets>,
    budget: Arc<Budget>,
    /// Where the first sync's responses wait for budget (see [`super::budget`]).
    first_sync: Place,
}

/// Serves one stream until the proxy goes away.
pub(crate) async fn serve(
    controller: Arc<Controller>,
    name_sets: Arc<NameSets>,
    budget: Arc<Budget>,
    requests: Requests<DiscoveryRequest>,
    tx: Tx,
    peer: Option<SocketAddr>,
) {
    let stream = Stream {
        session: None,
        subs: BTreeMap::new(),
        nonce: 0,
        tx,
        name_sets,
        first_sync: budget.place(),
        budget,
    };
    drive(controller, requests, stream, peer).await
}

impl AdsStream for Stream {
    type Request = DiscoveryRequest;
    const PROTOCOL: &'static str = "sotw";

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn session_slot(&mut self) -> &mut Option<Session> {
        &mut self.session
    }

    async fn on_request(&mut self, request: DiscoveryRequest, snapshot: &Snapshot) -> bool {
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

impl Stream {
    fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// Whether the proxy's subscription to `ty` covers what it needs at `snapshot`: for route
    /// tables and endpoint sets, every one that the listeners or clusters name, when it
    /// subscribes to all listeners or clusters (as sidecars and Envoy do). A proxy that
    /// subscribes to some listeners or clusters by name is not checked.
    fn complete(&mut self, ty: XdsType, snapshot: &Snapshot) -> bool {
        let Some(referencing) = ty.named_by() else {
            return true;
        };
        let holds_all = self
            .subs
            .get(&referencing)
            .is_some_and(|s| s.names.is_none());
        let (Some(referenced), Some(sub)) = (snapshot.referenced(ty), self.subs.get_mut(&ty))
        else {
            return true;
        };
        sub.coverage
            .complete(referenced, sub.names.as_ref(), holds_all)
    }

    /// The first sync lasts until every type subscribed to has been ACKed once.
    fn place(&self) -> Place {
        if self.subs.values().all(|s| s.ever_acked) {
            self.budget.place()
        } else {
            self.first_sync
        }
    }

    /// Handles one request; returns false when the stream is over.
    async fn request(&mut self, request: DiscoveryRequest, snapshot: &Snapshot) -> bool {
        let Some(ty) = XdsType::from_url(&request.type_url) else {
            tracing::debug!(type_url = %request.type_url, "request for a type meshd does not serve; ignored");
            return true;
        };
        // Of the names the ACKed response was for, before this request changes them.
        let complete = self.complete(ty, snapshot);
        let sub = self.subs.entry(ty).or_default();
        if !request.response_nonce.is_empty() {
            let Some(sent) = sub
                .sent
                .as_ref()
                .filter(|s| s.nonce == request.response_nonce)
            else {
                tracing::debug!(ty = ty.short(), nonce = %request.response_nonce, "stale nonce; ignored");
                return true;
            };
            if let Some(session) = self.session.as_ref() {
                match &request.error_detail {
                    Some(error) => session.nacked(ty, &sent.version, &error.message),
                    None => {
                        sub.acked = true;
                        sub.ever_acked = true;
                        // An ACK of route tables or endpoint sets that leave out some the
                        // proxy's listeners or clusters name does not make it synced.
                        let synced = if complete { sub.view_generation } else { 0 };
                        session.acked(ty, &sent.version, synced);
                    }
                }
            }
        }
        // Every ACK repeats the names: compare them before building anything.
        let asked = &request.resource_names;
        let changed_subscription = match &sub.names {
            Some(held) => is_wildcard(ty, asked) || !same_names(held, asked),
            None => !is_wildcard(ty, asked),
        };
        if changed_subscription {
            sub.names = (!is_wildcard(ty, asked))
                .then(|| self.name_sets.intern(asked.iter().cloned().collect()));
        }
        if request.response_nonce.is_empty() || changed_subscription {
            return self.push(ty, snapshot, true).await;
        }
        true
    }

    /// Sends the view of `ty` if it changed (or always, with `force`).
    ///
    /// A stream that holds the previous snapshot looks only at the names that snapshot changed:
    /// nothing it subscribes to changed, nothing is sent; route tables and endpoint sets that
    /// changed are sent alone (state of the world lets RDS and EDS responses carry a subset; only
    /// LDS and CDS must be complete). Otherwise the whole view is compared and sent.
    async fn push(&mut self, ty: XdsType, snapshot: &Snapshot, force: bool) -> bool {
        let Some(sub) = self.subs.get_mut(&ty) else {
            return true;
        };
        let changed = (!force && sub.sent.is_some())
            .then(|| snapshot.changed_since(ty, sub.view_generation))
            .flatten();
        if let Some(changed) = changed {
            let touched: Vec<&String> = changed
                .iter()
                .filter(|n| sub.names.as_ref().is_none_or(|set| set.contains(*n)))
                .collect();
            if touched.is_empty() {
                self.unchanged(ty, snapshot);
                return true;
            }
            let present: Vec<(&String, &Arc<Entry>)> = touched
                .iter()
                .filter_map(|n| snapshot.get(ty, n).map(|e| (*n, e)))
                .collect();
            if partial_allowed(ty) && present.len() == touched.len() {
                let resources = present.iter().map(|(_, e)| *e);
                return self.send(ty, snapshot, resources, None).await;
            }
        }
        let names = sub.names.clone();
        let fingerprint = snapshot.fingerprint(ty, names.as_deref());
        if !force
            && sub
                .sent
                .as_ref()
                .is_some_and(|s| s.fingerprint == Some(fingerprint))
        {
            self.unchanged(ty, snapshot);
            return true;
        }
        let view = snapshot.view(ty, names.as_deref()).map(|(_, e)| e);
        self.send(ty, snapshot, view, Some(fingerprint)).await
    }

    /// Nothing of `ty` that the proxy holds changed in `snapshot`.
    fn unchanged(&mut self, ty: XdsType, snapshot: &Snapshot) {
        let generation = snapshot.generation;
        let complete = self.complete(ty, snapshot);
        let Some(sub) = self.subs.get_mut(&ty) else {
            return;
        };
        sub.view_generation = generation;
        if sub.acked && complete {
            if let Some(session) = self.session.as_ref() {
                session.still_synced(ty, generation);
            }
        }
    }

    /// Sends `resources` of `ty` at `snapshot`'s generation; `fingerprint` is that of the whole
    /// view when they are all of it.
    async fn send<'s>(
        &mut self,
        ty: XdsType,
        snapshot: &'s Snapshot,
        resources: impl Iterator<Item = &'s Arc<Entry>> + Clone + Send,
        fingerprint: Option<u64>,
    ) -> bool {
        let place = self.place();
        let Some(sub) = self.subs.get_mut(&ty) else {
            return true;
        };
        self.nonce += 1;
        let version = snapshot.generation.to_string();
        let nonce = self.nonce.to_string();
        let subscribed = sub
            .names
            .as_ref()
            .map_or_else(|| resources.clone().count(), |n| n.len());
        let response = Sotw {
            version_info: &version,
            type_url: ty.url(),
            nonce: &nonce,
            resources: resources.map(|e| &e.any),
        }
        .encode(&self.budget, place)
        .await;
        sub.sent = Some(Sent {
            nonce,
            version: version.clone(),
            fingerprint,
        });
        sub.acked = false;
        sub.view_generation = snapshot.generation;
        let wildcard = sub.names.is_none();
        if let Some(session) = self.session() {
            session.sent(ty, &version, wildcard, subscribed);
            session
                .controller
                .metrics
                .pushed(ty, snapshot.created.elapsed());
        }
        let response = response.map_err(|e| Status::resource_exhausted(e.to_string()));
        self.tx.send(response).await.is_ok()
    }
}

/// Whether a state-of-the-world response of `ty` may carry only some of the subscribed
/// resources (the xDS protocol requires complete sets for LDS and CDS only).
fn partial_allowed(ty: XdsType) -> bool {
    matches!(ty, XdsType::Route | XdsType::Endpoint)
}

/// Whether a request's names subscribe to all of the type.
fn is_wildcard(ty: XdsType, names: &[String]) -> bool {
    (names.is_empty() && ty.wildcard_by_default()) || names.iter().any(|n| n == "*")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_rules() {
        assert!(is_wildcard(XdsType::Listener, &[]));
        assert!(!is_wildcard(XdsType::Route, &[]), "RDS needs names");
        assert!(is_wildcard(XdsType::Route, &["*".into()]));
        assert!(!is_wildcard(XdsType::Endpoint, &["a".into()]));
    }
}
