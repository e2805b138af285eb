//! Incremental (delta) ADS: each response carries only the resources that changed for the proxy
//! and the names it should remove.
//!
//! Per type: wildcard or not, the explicitly subscribed names, and what the proxy has (name →
//! the entry whose content it holds, seeded from `initial_resource_versions` on reconnect).
//! Versions of resources are their content hashes; `system_version_info` is the snapshot
//! generation.
//!
//! What a proxy holds is a persistent map ([`Resources`]): when it holds every resource of a
//! type, as a sidecar does for most types, its map is the snapshot's own, shared, and costs
//! nothing per stream; otherwise it shares with the snapshot it was built from all but the
//! paths to what differs. (A map of its own per stream was 5 million entries at 1000 sidecars.)

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_proto::DeltaDiscoveryRequest;
use tonic::Status;

use super::names::{Coverage, NameSets, Names};
use super::requests::Requests;

use super::budget::{Budget, Place};
use super::response::{Delta, DeltaResource};
use super::session::Session;
use super::stream::{AdsStream, drive};
use crate::controller::Controller;
use crate::snapshot::{Entry, Resources, Snapshot, XdsType};
use mesh_proto::envoy::config::core::v3::Node;

#[derive(Debug)]
struct Pending {
    nonce: String,
    version: String,
    /// What the proxy held before the response: what it keeps if it refuses it.
    before: Resources,
}

#[derive(Debug, Default)]
struct Subscription {
    wildcard: bool,
    /// The explicitly subscribed names, shared with every stream that subscribes to the same.
    names: Names,
    /// What the proxy holds: name → the entry whose content it has (compared by hash).
    known: Resources,
    /// `known` is every resource of the type at `view_generation` (and then the snapshot's
    /// own map): an exact stream stays so while it wants every name that changes.
    whole: bool,
    pending: Option<Pending>,
    acked: bool,
    /// Some response of the type has been ACKed since the proxy subscribed to it.
    ever_acked: bool,
    view_generation: u64,
    /// `known` is exactly the view at `view_generation`: no NACK or subscription change since,
    /// so the next push need look only at what the next snapshot changed.
    exact: bool,
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
    requests: Requests<DeltaDiscoveryRequest>,
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

/// What a reconnecting proxy says it holds, by hash: the snapshot's entry when that is it,
/// otherwise a stand-in with no content that only records the hash.
fn held(current: Option<&Arc<Entry>>, hash: u64) -> Arc<Entry> {
    match current {
        Some(entry) if entry.hash == hash => entry.clone(),
        _ => Arc::new(Entry {
            any: Default::default(),
            hash,
        }),
    }
}

impl Stream {
    /// Whether the proxy's subscription to `ty` covers what it needs at `snapshot`: for route
    /// tables and endpoint sets, every one that the listeners or clusters name, when it
    /// subscribes to all listeners or clusters. A wildcard subscription covers everything; a
    /// proxy that subscribes to some listeners or clusters by name is not checked.
    fn complete(&mut self, ty: XdsType, snapshot: &Snapshot) -> bool {
        let Some(referencing) = ty.named_by() else {
            return true;
        };
        let holds_all = self.subs.get(&referencing).is_some_and(|s| s.wildcard);
        let (Some(referenced), Some(sub)) = (snapshot.referenced(ty), self.subs.get_mut(&ty))
        else {
            return true;
        };
        let names = (!sub.wildcard).then_some(&sub.names);
        sub.coverage.complete(referenced, names, holds_all)
    }

    /// The first sync lasts until every type subscribed to has been ACKed once.
    fn place(&self) -> Place {
        if self.subs.values().all(|s| s.ever_acked) {
            self.budget.place()
        } else {
            self.first_sync
        }
    }

    async fn request(&mut self, request: DeltaDiscoveryRequest, snapshot: &Snapshot) -> bool {
        let Some(ty) = XdsType::from_url(&request.type_url) else {
            tracing::debug!(type_url = %request.type_url, "delta request for a type meshd does not serve; ignored");
            return true;
        };
        let first = !self.subs.contains_key(&ty);
        // Of the names the ACKed response was for, before this request changes them.
        let complete = self.complete(ty, snapshot);
        let sub = self.subs.entry(ty).or_default();
        if first {
            sub.wildcard = request.resource_names_subscribe.is_empty()
                || request.resource_names_subscribe.iter().any(|n| n == "*");
            sub.known = request
                .initial_resource_versions
                .iter()
                .filter_map(|(name, v)| {
                    let hash = u64::from_str_radix(v, 16).ok()?;
                    Some((name.clone(), held(snapshot.get(ty, name), hash)))
                })
                .collect();
        }
        if !request.response_nonce.is_empty() {
            match sub.pending.take() {
                Some(p) if p.nonce == request.response_nonce => {
                    let session = self.session.as_ref();
                    match &request.error_detail {
                        Some(error) => {
                            // The proxy kept what it held: the next push compares with it.
                            sub.known = p.before;
                            sub.exact = false;
                            sub.whole = false;
                            if let Some(session) = session {
                                session.nacked(ty, &p.version, &error.message);
                            }
                        }
                        None => {
                            sub.acked = true;
                            sub.ever_acked = true;
                            // Route tables or endpoint sets that leave out some that the
                            // proxy's listeners or clusters name do not make it synced.
                            let synced = if complete { sub.view_generation } else { 0 };
                            if let Some(session) = session {
                                session.acked(ty, &p.version, synced);
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
        // The names change rarely (ACKs repeat none): copy the shared set only when they do.
        let mut names: Option<BTreeSet<String>> = None;
        for name in &request.resource_names_subscribe {
            if name == "*" {
                changed |= !sub.wildcard;
                sub.wildcard = true;
            } else if !sub.names.contains(name) {
                changed = true;
                names
                    .get_or_insert_with(|| (*sub.names).clone())
                    .insert(name.clone());
            }
        }
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                changed |= sub.wildcard;
                sub.wildcard = false;
            } else {
                let set = names.get_or_insert_with(|| (*sub.names).clone());
                changed |= set.remove(name);
                sub.known.remove(name);
                sub.whole = false;
            }
        }
        if let Some(names) = names {
            sub.names = self.name_sets.intern(names);
        }
        if first || changed {
            sub.exact = false;
            return self.push(ty, snapshot, first).await;
        }
        true
    }

    /// Sends what changed for `ty`; with `force`, sends a response even when nothing did.
    ///
    /// Nothing is collected per resource: the resources to send and the names to remove are
    /// walked lazily (to size the response, then to encode it), against what the proxy held
    /// before, so that a thousand first syncs waiting for budget hold no lists.
    async fn push(&mut self, ty: XdsType, snapshot: &Snapshot, force: bool) -> bool {
        let Some(sub) = self.subs.get(&ty) else {
            return true;
        };
        // A stream at the previous snapshot looks only at the names that changed since.
        let changed = (!force && sub.exact)
            .then(|| snapshot.changed_since(ty, sub.view_generation))
            .flatten();
        let view = View {
            ty,
            snapshot,
            wildcard: sub.wildcard,
            names: sub.names.clone(),
            before: sub.known.clone(),
        };
        // Whether, after this push, the proxy holds every resource of the type: then its map is
        // the snapshot's own. Known from the whole view, or for a stream that held every
        // resource of the previous snapshot, from whether it wants every name that changed.
        let whole = match changed {
            Some(names) => sub.whole && names.iter().all(|n| view.wants(n) || view.absent(n)),
            None => view.wildcard || snapshot.of_type(ty).all(|(n, _)| view.wants(n)),
        };
        match changed {
            Some(names) => {
                let updated = names.iter().filter_map(|n| view.update(n));
                let removed = names.iter().filter(|n| view.removes(n));
                self.send(ty, &view, whole, force, updated, removed).await
            }
            None => {
                let updated = snapshot
                    .of_type(ty)
                    .filter(|(n, e)| view.wants(n) && view.differs(n, e));
                // Held but no longer wanted or gone; and on the first response, the names
                // subscribed to that do not exist, so that the proxy stops waiting for them.
                let gone = view
                    .before
                    .iter()
                    .map(|(n, _)| n)
                    .filter(|n| view.removes(n));
                let v = &view;
                let absent = v
                    .names
                    .iter()
                    .filter(move |n| force && v.absent(n) && !v.before.contains_key(*n));
                self.send(ty, &view, whole, force, updated, gone.chain(absent))
                    .await
            }
        }
    }

    /// Records what the proxy will hold and sends `updated` and `removed`, unless there is
    /// nothing to send (and no `force`).
    async fn send<'a, U, R>(
        &mut self,
        ty: XdsType,
        view: &View<'a>,
        whole: bool,
        force: bool,
        updated: U,
        removed: R,
    ) -> bool
    where
        U: Iterator<Item = (&'a String, &'a Arc<Entry>)> + Clone,
        R: Iterator<Item = &'a String> + Clone,
    {
        let place = self.place();
        let complete = self.complete(ty, view.snapshot);
        let Some(sub) = self.subs.get_mut(&ty) else {
            return true;
        };
        let snapshot = view.snapshot;
        sub.exact = true;
        sub.whole = whole;
        if whole {
            sub.known = snapshot.resources(ty);
        } else {
            for (name, entry) in updated.clone() {
                sub.known.insert(name.clone(), entry.clone());
            }
            for name in removed.clone() {
                sub.known.remove(name);
            }
        }
        if !force && updated.clone().next().is_none() && removed.clone().next().is_none() {
            sub.view_generation = snapshot.generation;
            if sub.acked && complete {
                if let Some(session) = self.session.as_ref() {
                    session.still_synced(ty, snapshot.generation);
                }
            }
            return true;
        }
        self.nonce += 1;
        let version = snapshot.generation.to_string();
        let nonce = self.nonce.to_string();
        sub.pending = Some(Pending {
            nonce: nonce.clone(),
            version: version.clone(),
            before: view.before.clone(),
        });
        sub.acked = false;
        sub.view_generation = snapshot.generation;
        let (wildcard, subscribed) = (sub.wildcard, sub.known.len());
        let resources = updated.map(|(name, entry)| DeltaResource {
            name,
            hash: entry.hash,
            any: &entry.any,
        });
        let response = Delta {
            system_version_info: &version,
            type_url: ty.url(),
            nonce: &nonce,
            resources,
            removed_resources: removed,
        }
        .encode(&self.budget, place)
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

/// What one push compares: the snapshot, the subscription, and what the proxy held before.
struct View<'a> {
    ty: XdsType,
    snapshot: &'a Snapshot,
    wildcard: bool,
    names: Names,
    before: Resources,
}

impl View<'_> {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Not in the snapshot.
    fn absent(&self, name: &str) -> bool {
        self.snapshot.get(self.ty, name).is_none()
    }

    /// Whether the proxy does not hold `entry`'s content for `name`.
    fn differs(&self, name: &str, entry: &Entry) -> bool {
        self.before.get(name).map(|e| e.hash) != Some(entry.hash)
    }

    /// The entry to send for `name`, if the proxy wants it and does not hold it.
    fn update<'s>(&'s self, name: &'s String) -> Option<(&'s String, &'s Arc<Entry>)> {
        let entry = self.snapshot.get(self.ty, name)?;
        (self.wants(name) && self.differs(name, entry)).then_some((name, entry))
    }

    /// Whether the proxy holds `name` and must be told to drop it.
    fn removes(&self, name: &str) -> bool {
        self.before.contains_key(name) && (!self.wants(name) || self.absent(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::DeltaDiscoveryResponse;
    use mesh_proto::google::protobuf::Any;
    use mesh_proto::prost::Message;
    use tokio::sync::mpsc;

    fn snapshot(generation: u64, ty: XdsType, resources: &[(&str, u8)]) -> Snapshot {
        let mut s = Snapshot::new(generation);
        for (name, v) in resources {
            let any = Any {
                type_url: ty.url().into(),
                value: vec![*v],
            };
            s.insert(ty, (*name).into(), any);
        }
        s
    }

    fn stream() -> (Stream, mpsc::Receiver<Result<bytes::Bytes, Status>>) {
        let (tx, rx) = mpsc::channel(16);
        let stream = Stream {
            session: None,
            subs: BTreeMap::new(),
            nonce: 0,
            tx,
            name_sets: Arc::default(),
            budget: Arc::new(Budget::new(1 << 20)),
            first_sync: Place::default(),
        };
        (stream, rx)
    }

    /// The names of the next response (gRPC-framed).
    fn sent(rx: &mut mpsc::Receiver<Result<bytes::Bytes, Status>>) -> Vec<String> {
        let frame = rx.try_recv().expect("a response").expect("not an error");
        let response = DeltaDiscoveryResponse::decode(&frame[5..]).expect("decodes");
        response.resources.into_iter().map(|r| r.name).collect()
    }

    fn request(ty: XdsType, subscribe: &[&str]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: ty.url().into(),
            resource_names_subscribe: subscribe.iter().map(|n| (*n).into()).collect(),
            ..Default::default()
        }
    }

    /// A request that ACKs the response with `nonce`.
    fn ack(ty: XdsType, nonce: u64) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: ty.url().into(),
            response_nonce: nonce.to_string(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn endpoint_sets_are_synced_only_once_they_cover_what_the_clusters_name() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = crate::store::Store::open(dir.path()).expect("a store");
        let controller =
            Controller::open(store, Default::default(), std::time::Duration::from_secs(1))
                .expect("a controller");
        let (mut stream, mut rx) = stream();
        stream.session = Some(Session::start(&controller, None, "delta", None));
        let synced = |ty: XdsType| {
            controller.registry.list()[0]
                .types
                .get(ty.short())
                .map_or(0, |t| t.synced_generation)
        };
        // The clusters (all of them) name the endpoint sets a and b.
        let mut snap = snapshot(7, XdsType::Cluster, &[("a", 1), ("b", 1)]);
        for name in ["a", "b"] {
            let any = Any {
                type_url: XdsType::Endpoint.url().into(),
                value: vec![1],
            };
            snap.insert(XdsType::Endpoint, name.into(), any);
        }
        snap.set_referenced(XdsType::Endpoint, ["a", "b"].map(String::from).into());

        assert!(stream.request(request(XdsType::Cluster, &[]), &snap).await);
        assert_eq!(sent(&mut rx), ["a", "b"]);
        assert!(stream.request(ack(XdsType::Cluster, 1), &snap).await);
        assert_eq!(synced(XdsType::Cluster), 7);

        // The proxy subscribes to a only and ACKs it: it still lacks b.
        assert!(
            stream
                .request(request(XdsType::Endpoint, &["a"]), &snap)
                .await
        );
        assert_eq!(sent(&mut rx), ["a"]);
        assert!(stream.request(ack(XdsType::Endpoint, 2), &snap).await);
        assert_eq!(synced(XdsType::Endpoint), 0, "b is missing");

        // Once it subscribes to b too and ACKs that, it has all it needs.
        assert!(
            stream
                .request(request(XdsType::Endpoint, &["b"]), &snap)
                .await
        );
        assert_eq!(sent(&mut rx), ["b"]);
        assert!(stream.request(ack(XdsType::Endpoint, 3), &snap).await);
        assert_eq!(synced(XdsType::Endpoint), 7);
    }

    #[tokio::test]
    async fn a_proxy_that_holds_every_resource_shares_the_snapshots_map() {
        let ty = XdsType::Cluster;
        let (mut stream, mut rx) = stream();
        let first = snapshot(1, ty, &[("a", 1), ("b", 1)]);
        assert!(stream.request(request(ty, &[]), &first).await);
        assert_eq!(sent(&mut rx), ["a", "b"]);
        let sub = &stream.subs[&ty];
        assert!(sub.whole && sub.known.ptr_eq(&first.resources(ty)));

        // b changes, c is added: only they are sent, and the map is the new snapshot's.
        let mut second = snapshot(2, ty, &[("a", 1), ("b", 2), ("c", 1)]);
        second.diff_from(&first);
        assert!(stream.on_snapshot(&second).await);
        assert_eq!(sent(&mut rx), ["b", "c"]);
        let sub = &stream.subs[&ty];
        assert!(sub.whole && sub.known.ptr_eq(&second.resources(ty)));

        // The proxy refuses them: it holds what it held, and the next push sends them again.
        let mut nack = request(ty, &[]);
        nack.response_nonce = "2".into();
        nack.error_detail = Some(mesh_proto::google::rpc::Status {
            code: 3,
            message: "cluster c: unsupported".into(),
            details: vec![],
        });
        assert!(stream.request(nack, &second).await);
        assert!(rx.try_recv().is_err(), "a NACK is not answered at once");
        assert!(stream.subs[&ty].known.ptr_eq(&first.resources(ty)));
        let mut third = snapshot(3, ty, &[("a", 1), ("b", 2), ("c", 1)]);
        third.diff_from(&second);
        assert!(stream.on_snapshot(&third).await);
        assert_eq!(sent(&mut rx), ["b", "c"]);
    }

    #[tokio::test]
    async fn a_proxy_that_holds_some_resources_keeps_its_own_map() {
        let ty = XdsType::Endpoint;
        let (mut stream, mut rx) = stream();
        let first = snapshot(1, ty, &[("a", 1), ("b", 1)]);
        assert!(stream.request(request(ty, &["a"]), &first).await);
        assert_eq!(sent(&mut rx), ["a"]);
        let sub = &stream.subs[&ty];
        assert!(!sub.whole);
        assert_eq!(sub.known.keys().collect::<Vec<_>>(), ["a"]);

        // b changes (not wanted), a changes: only a is sent.
        let mut second = snapshot(2, ty, &[("a", 2), ("b", 2)]);
        second.diff_from(&first);
        assert!(stream.on_snapshot(&second).await);
        assert_eq!(sent(&mut rx), ["a"]);
        let sub = &stream.subs[&ty];
        assert_eq!(
            sub.known.get("a").map(|e| e.hash),
            second.get(ty, "a").map(|e| e.hash)
        );
        assert!(!sub.known.contains_key("b"));

        // Subscribing to b as well makes it whole: b is sent, and the map is shared.
        assert!(stream.request(request(ty, &["b"]), &second).await);
        assert_eq!(sent(&mut rx), ["b"]);
        let sub = &stream.subs[&ty];
        assert!(sub.whole && sub.known.ptr_eq(&second.resources(ty)));
    }
}
