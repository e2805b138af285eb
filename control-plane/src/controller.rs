//! meshd's core: the desired state (stored), the workloads sidecars registered (in memory), and
//! the xDS snapshot built from both, broadcast to every ADS stream.
//!
//! Every change goes through one lock: validate against the current state, write to the store,
//! swap in the new state, rebuild the snapshot. A rejected change leaves everything as it was.
//! A snapshot whose content equals the current one does not bump the generation, so proxies
//! are pushed only real changes; streams read the newest snapshot when they get to it, which
//! coalesces bursts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::parse::{ResourceError, parse_documents};
use crate::registry::{Registry, now_unix_ms};
use crate::resource::{Key, Kind, Resource, Workload};
use crate::snapshot::Snapshot;
use crate::state::{Action, Change, State};
use crate::store::{Revision, Store, StoreError};
use crate::translate::translate;
use crate::vip::VipRange;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Invalid(#[from] ResourceError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// What an apply or delete did.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The stored revision after the change (unchanged when nothing changed).
    pub revision: u64,
    /// The snapshot generation that carries the change; wait for proxies to sync to it.
    pub generation: u64,
    pub changes: Vec<Change>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    revision: u64,
    /// Sidecar-registered workloads and the connection that registered each.
    registered: BTreeMap<Key, (Workload, u64)>,
}

#[derive(Debug)]
pub struct Controller {
    store: Store,
    vips: VipRange,
    grace: Duration,
    inner: Mutex<Inner>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// Set when meshd stops: open xDS streams end so the servers can finish.
    stopping: watch::Sender<bool>,
    pub registry: Registry,
    pub metrics: Metrics,
}

impl Controller {
    /// Loads the stored state and builds the first snapshot (generation 1).
    pub fn open(
        store: Store,
        vips: VipRange,
        grace: Duration,
    ) -> Result<Arc<Controller>, StoreError> {
        let (state, revision) = store.load()?;
        // Registrations from before a restart count until their sidecars reconnect or the
        // grace period ends (connection 0 = not connected).
        let registered: BTreeMap<Key, (Workload, u64)> = store
            .registered()?
            .into_iter()
            .filter_map(|r| match r {
                Resource::Workload(w) => Some((
                    Key::new(Kind::Workload, &w.metadata.namespace, &w.metadata.name),
                    (w, 0),
                )),
                _ => None,
            })
            .collect();
        let workloads: Vec<Workload> = registered.values().map(|(w, _)| w.clone()).collect();
        let first = translate(&state, &workloads, 1);
        Ok(Arc::new(Controller {
            store,
            vips,
            grace,
            inner: Mutex::new(Inner {
                state,
                revision,
                registered,
            }),
            snapshot: watch::channel(Arc::new(first)).0,
            stopping: watch::channel(false).0,
            registry: Registry::default(),
            metrics: Metrics::default(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Ends every open xDS stream (meshd is stopping); proxies reconnect to the next meshd.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once [`Controller::stop`] was called.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stopping.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }

    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    /// Rebuilds the snapshot; bumps the generation only if the content changed.
    fn rebuild(&self, inner: &Inner) -> u64 {
        let current = self.snapshot();
        let registered: Vec<Workload> = inner.registered.values().map(|(w, _)| w.clone()).collect();
        let mut next = translate(&inner.state, &registered, current.generation + 1);
        next.diff_from(&current);
        if next.unchanged() {
            return current.generation;
        }
        let generation = next.generation;
        self.snapshot.send_replace(Arc::new(next));
        generation
    }

    /// Applies every document of `text` (YAML or JSON), all or nothing.
    pub fn apply(&self, text: &str) -> Result<Outcome, ControlError> {
        let documents = parse_documents(text)?;
        let mut inner = self.lock();
        let (next, changes) = inner.state.apply(documents, &self.vips)?;
        let upserts: Vec<&Resource> = changes
            .iter()
            .filter(|c| matches!(c.action, Action::Created | Action::Configured))
            .filter_map(|c| next.get(&c.key))
            .collect();
        if upserts.is_empty() {
            return Ok(Outcome {
                revision: inner.revision,
                generation: self.snapshot().generation,
                changes,
            });
        }
        let revision = inner.revision + 1;
        let record = Revision {
            revision,
            time_unix_ms: now_unix_ms(),
            changes: changes.clone(),
        };
        self.store.commit(&record, &upserts, &[])?;
        inner.state = next;
        inner.revision = revision;
        let generation = self.rebuild(&inner);
        Ok(Outcome {
            revision,
            generation,
            changes,
        })
    }

    /// Deletes one resource (refused while others refer to it).
    pub fn delete(&self, key: &Key) -> Result<Outcome, ControlError> {
        let mut inner = self.lock();
        let (next, change) = inner.state.delete(key)?;
        let revision = inner.revision + 1;
        let record = Revision {
            revision,
            time_unix_ms: now_unix_ms(),
            changes: vec![change.clone()],
        };
        self.store.commit(&record, &[], std::slice::from_ref(key))?;
        inner.state = next;
        inner.revision = revision;
        let generation = self.rebuild(&inner);
        Ok(Outcome {
            revision,
            generation,
            changes: vec![change],
        })
    }

    pub fn get(&self, key: &Key) -> Option<Resource> {
        let inner = self.lock();
        inner.state.get(key).cloned().or_else(|| {
            inner
                .registered
                .get(key)
                .map(|(w, _)| Resource::Workload(w.clone()))
        })
    }

    /// Resources of one kind (registered workloads included), optionally in one namespace.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<Resource> {
        let inner = self.lock();
        let mut out: Vec<Resource> = inner.state.list(kind).cloned().collect();
        if kind == Kind::Workload {
            out.extend(
                inner
                    .registered
                    .values()
                    .map(|(w, _)| Resource::Workload(w.clone())),
            );
        }
        out.retain(|r| namespace.is_none_or(|ns| r.metadata().namespace == ns));
        out.sort_by_key(Resource::key);
        out
    }

    pub fn history(&self, limit: usize) -> Result<Vec<Revision>, StoreError> {
        self.store.history(limit)
    }

    /// A sidecar connected with this workload; it replaces an earlier registration of the same name.
    pub fn register_workload(&self, connection: u64, workload: Workload) {
        let key = Key::new(
            Kind::Workload,
            &workload.metadata.namespace,
            &workload.metadata.name,
        );
        let mut inner = self.lock();
        if let Err(e) = self
            .store
            .put_registered(&key, Some(&Resource::Workload(workload.clone())))
        {
            tracing::warn!(workload = %key, error = %e, "cannot record the registration; it will not survive a restart");
        }
        inner.registered.insert(key, (workload, connection));
        self.rebuild(&inner);
    }

    /// After a restart: forgets the registrations whose sidecars have not reconnected within
    /// the grace period.
    pub fn expire_unclaimed(self: &Arc<Self>) {
        let keys: Vec<Key> = self
            .lock()
            .registered
            .iter()
            .filter(|(_, (_, c))| *c == 0)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.workload_disconnected(0, key);
        }
    }

    /// The sidecar's stream ended: its workload goes away after the grace period, unless the
    /// sidecar has reconnected by then.
    pub fn workload_disconnected(self: &Arc<Self>, connection: u64, key: Key) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(this.grace).await;
            let mut inner = this.lock();
            if inner
                .registered
                .get(&key)
                .is_some_and(|(_, c)| *c == connection)
            {
                inner.registered.remove(&key);
                if let Err(e) = this.store.put_registered(&key, None) {
                    tracing::warn!(workload = %key, error = %e, "cannot forget the registration in the store");
                }
                this.rebuild(&inner);
                tracing::info!(workload = %key, "removed the workload of a disconnected sidecar");
            }
        });
    }
}
