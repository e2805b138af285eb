//! The proxies connected to meshd, and which configuration each has ACKed or NACKed.
//!
//! A proxy is *synced* at generation G when, for every type it subscribes to, it has ACKed a
//! response whose content equals that type's view at G. Proxies whose view did not change are
//! synced at G as soon as G exists, so waiting for "all synced at G" waits exactly for the
//! proxies an apply affected.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;

use crate::snapshot::XdsType;

/// A NACK: the version a proxy refused and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Nack {
    pub version: String,
    pub message: String,
}

/// Status of one resource type on one proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeStatus {
    /// Subscribed names; empty with `wildcard` set means "all".
    pub wildcard: bool,
    pub subscribed: usize,
    pub sent_version: Option<String>,
    pub acked_version: Option<String>,
    /// The generation this type is known to be in effect at on the proxy.
    pub synced_generation: u64,
    pub nack: Option<Nack>,
}

/// What meshd knows about one connected proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    pub connection: u64,
    pub node_id: String,
    pub namespace: String,
    pub workload: Option<String>,
    pub address: Option<IpAddr>,
    /// `sotw` or `delta`.
    pub protocol: &'static str,
    pub connected_unix_ms: u64,
    pub types: BTreeMap<&'static str, TypeStatus>,
}

impl ProxyStatus {
    /// The generation every subscribed type is synced at (0 before any subscription).
    pub fn synced_generation(&self) -> u64 {
        self.types
            .values()
            .map(|t| t.synced_generation)
            .min()
            .unwrap_or(0)
    }

    /// The NACK of a version at or after `generation`, if any.
    pub fn nack_since(&self, generation: u64) -> Option<&Nack> {
        self.types
            .values()
            .filter_map(|t| t.nack.as_ref())
            .find(|n| n.version.parse::<u64>().is_ok_and(|v| v >= generation))
    }
}

/// All connected proxies. Every change bumps a watch counter so waiters can re-check.
#[derive(Debug)]
pub struct Registry {
    proxies: Mutex<HashMap<u64, ProxyStatus>>,
    next: AtomicU64,
    changed: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            proxies: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            changed: watch::channel(0).0,
        }
    }
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Registry {
    pub fn next_connection_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ProxyStatus>> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.proxies.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn insert(&self, status: ProxyStatus) {
        self.lock().insert(status.connection, status);
        self.notify();
    }

    pub fn remove(&self, connection: u64) {
        self.lock().remove(&connection);
        self.notify();
    }

    /// Changes one type's status of one proxy.
    pub fn update(&self, connection: u64, ty: XdsType, f: impl FnOnce(&mut TypeStatus)) {
        if let Some(p) = self.lock().get_mut(&connection) {
            f(p.types.entry(ty.short()).or_default());
        }
        self.notify();
    }

    pub fn list(&self) -> Vec<ProxyStatus> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| {
            a.node_id
                .cmp(&b.node_id)
                .then(a.connection.cmp(&b.connection))
        });
        all
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// How many proxies have neither synced `generation` nor NACKed it: counted in place, so
    /// that a waiter re-checking on every ACK of a thousand proxies copies nothing.
    pub fn pending(&self, generation: u64) -> usize {
        self.lock()
            .values()
            .filter(|p| is_pending(p, generation))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Outcome of waiting for a generation.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitOutcome {
    pub generation: u64,
    pub synced: Vec<String>,
    pub nacked: Vec<(String, Nack)>,
    pub pending: Vec<String>,
}

impl WaitOutcome {
    pub fn done(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Classifies every proxy against `generation`.
pub fn wait_outcome(proxies: &[ProxyStatus], generation: u64) -> WaitOutcome {
    let mut out = WaitOutcome {
        generation,
        ..Default::default()
    };
    for p in proxies {
        if let Some(n) = p.nack_since(generation) {
            out.nacked.push((p.node_id.clone(), n.clone()));
        } else if is_pending(p, generation) {
            out.pending.push(p.node_id.clone());
        } else {
            out.synced.push(p.node_id.clone());
        }
    }
    out
}

fn is_pending(p: &ProxyStatus, generation: u64) -> bool {
    p.nack_since(generation).is_none() && p.synced_generation() < generation
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(id: &str, types: &[(XdsType, u64, Option<&str>)]) -> ProxyStatus {
        ProxyStatus {
            connection: 1,
            node_id: id.into(),
            namespace: "default".into(),
            workload: None,
            address: None,
            protocol: "sotw",
            connected_unix_ms: 0,
            types: types
                .iter()
                .map(|(t, g, nack)| {
                    (
                        t.short(),
                        TypeStatus {
                            synced_generation: *g,
                            nack: nack.map(|v| Nack {
                                version: v.into(),
                                message: "bad".into(),
                            }),
                            ..Default::default()
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn a_proxy_is_synced_when_its_slowest_type_is() {
        let p = proxy(
            "a",
            &[(XdsType::Cluster, 7, None), (XdsType::Route, 5, None)],
        );
        assert_eq!(p.synced_generation(), 5);
        let out = wait_outcome(std::slice::from_ref(&p), 5);
        assert_eq!(out.synced, vec!["a"]);
        let out = wait_outcome(&[p], 6);
        assert_eq!(out.pending, vec!["a"]);
    }

    #[test]
    fn nacks_of_the_awaited_generation_or_later_are_reported() {
        let p = proxy("b", &[(XdsType::Route, 3, Some("4"))]);
        let out = wait_outcome(std::slice::from_ref(&p), 4);
        assert_eq!(out.nacked.len(), 1);
        assert!(out.done());
        let out = wait_outcome(&[p], 5);
        assert_eq!(
            out.pending,
            vec!["b"],
            "an old NACK does not answer for a newer generation"
        );
    }

    #[test]
    fn pending_counts_what_the_outcome_lists_as_pending() {
        let registry = Registry::default();
        let proxies = [
            proxy("synced", &[(XdsType::Cluster, 5, None)]),
            proxy("behind", &[(XdsType::Cluster, 4, None)]),
            proxy("nacked", &[(XdsType::Cluster, 4, Some("5"))]),
        ];
        for (connection, mut p) in proxies.into_iter().enumerate() {
            p.connection = connection as u64;
            registry.insert(p);
        }
        for generation in [4, 5, 6] {
            let outcome = wait_outcome(&registry.list(), generation);
            assert_eq!(
                registry.pending(generation),
                outcome.pending.len(),
                "generation {generation}"
            );
        }
        assert_eq!(registry.pending(5), 1, "only the proxy still behind");
    }
}
