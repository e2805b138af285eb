//! A complete, immutable set of xDS resources, as served to every proxy at one moment.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use mesh_proto::google::protobuf::Any;
use mesh_proto::type_url;

/// The resource types meshd serves: Envoy's four, and the mesh's workload security policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum XdsType {
    Cluster,
    Endpoint,
    Listener,
    Route,
    Policy,
}

impl XdsType {
    /// In push order: clusters before endpoints, listeners before routes; policies last.
    pub const ALL: [XdsType; 5] = [
        XdsType::Cluster,
        XdsType::Endpoint,
        XdsType::Listener,
        XdsType::Route,
        XdsType::Policy,
    ];

    pub fn url(self) -> &'static str {
        match self {
            XdsType::Cluster => type_url::CLUSTER,
            XdsType::Endpoint => type_url::ENDPOINT,
            XdsType::Listener => type_url::LISTENER,
            XdsType::Route => type_url::ROUTE,
            XdsType::Policy => type_url::WORKLOAD_POLICY,
        }
    }

    pub fn from_url(url: &str) -> Option<XdsType> {
        XdsType::ALL.into_iter().find(|t| t.url() == url)
    }

    /// Whether an empty state-of-the-world subscription means "all" (LDS and CDS).
    pub fn wildcard_by_default(self) -> bool {
        matches!(self, XdsType::Cluster | XdsType::Listener)
    }

    /// The type whose resources name those of this one: listeners name route tables, clusters
    /// name endpoint sets.
    pub fn named_by(self) -> Option<XdsType> {
        match self {
            XdsType::Route => Some(XdsType::Listener),
            XdsType::Endpoint => Some(XdsType::Cluster),
            _ => None,
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            XdsType::Cluster => "CDS",
            XdsType::Endpoint => "EDS",
            XdsType::Listener => "LDS",
            XdsType::Route => "RDS",
            XdsType::Policy => "POLICY",
        }
    }
}

/// One resource, encoded once, with a content hash for change detection.
#[derive(Debug, PartialEq)]
pub struct Entry {
    pub any: Any,
    pub hash: u64,
}

impl Entry {
    pub fn new(any: Any) -> Entry {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        any.value.hash(&mut h);
        Entry {
            any,
            hash: h.finish(),
        }
    }
}

/// Every resource by type and name, plus the generation it was built at.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    /// When it was built, to measure how long pushes take.
    pub created: std::time::Instant,
    resources: BTreeMap<XdsType, Resources>,
    /// What differs from the snapshot before it, so that a stream that holds that one can find
    /// what to push without comparing everything it subscribes to (see [`Snapshot::diff_from`]).
    changes: Option<Changes>,
    /// The route tables the listeners name and the endpoint sets the clusters name: what a
    /// proxy that holds every listener and cluster must subscribe to before it has all of its
    /// configuration. Shared with the snapshot before when unchanged, so that streams can tell
    /// by pointer that it did not change.
    referenced: BTreeMap<XdsType, Arc<BTreeSet<String>>>,
}

/// The resources of one type by name: a persistent map, so that a snapshot shares with the one
/// before it not only the unchanged resources but the map's structure, and costs only the
/// paths to what changed. Streams that are slow to read their responses each hold the snapshot
/// they are sending from, so a thousand snapshots can be alive at once: with copied maps of
/// 5000 names each, that was hundreds of megabytes.
pub type Resources = imbl::OrdMap<String, Arc<Entry>>;

/// The names whose content changed (added, altered or removed) since generation `from`.
#[derive(Debug)]
struct Changes {
    from: u64,
    by_type: BTreeMap<XdsType, Vec<String>>,
}

impl Snapshot {
    pub fn new(generation: u64) -> Snapshot {
        Snapshot {
            generation,
            created: std::time::Instant::now(),
            resources: BTreeMap::new(),
            changes: None,
            referenced: BTreeMap::new(),
        }
    }

    /// Records that resources of `ty` (route tables or endpoint sets) named `names` are named
    /// by the snapshot's listeners or clusters.
    pub fn set_referenced(&mut self, ty: XdsType, names: BTreeSet<String>) {
        self.referenced.insert(ty, Arc::new(names));
    }

    /// The names of `ty` that the snapshot's listeners (for route tables) or clusters (for
    /// endpoint sets) name; `None` for the other types.
    pub fn referenced(&self, ty: XdsType) -> Option<&Arc<BTreeSet<String>>> {
        self.referenced.get(&ty)
    }

    /// Records what differs from `previous` (the snapshot this one replaces), per type, and
    /// shares with it every resource whose content did not change: a snapshot then holds only
    /// what changed, however many older snapshots streams still hold.
    pub fn diff_from(&mut self, previous: &Snapshot) {
        let mut by_type = BTreeMap::new();
        for ty in XdsType::ALL {
            let empty = Resources::new();
            let old = previous.resources.get(&ty).unwrap_or(&empty);
            let new = self.resources.remove(&ty).unwrap_or_default();
            // Start from the previous map and apply the differences, so that what did not
            // change is shared.
            let mut merged = old.clone();
            let mut names = Vec::new();
            for (name, entry) in &new {
                if old.get(name).is_none_or(|o| o.hash != entry.hash) {
                    merged.insert(name.clone(), entry.clone());
                    names.push(name.clone());
                }
            }
            for name in old.keys().filter(|n| !new.contains_key(*n)) {
                merged.remove(name);
                names.push(name.clone());
            }
            if !merged.is_empty() {
                self.resources.insert(ty, merged);
            }
            by_type.insert(ty, names);
        }
        self.changes = Some(Changes {
            from: previous.generation,
            by_type,
        });
        for (ty, names) in &mut self.referenced {
            if let Some(old) = previous.referenced.get(ty).filter(|old| *old == names) {
                *names = old.clone();
            }
        }
    }

    /// The names of `ty` that changed since `generation`, when this snapshot knows (it was built
    /// right after that generation); an empty slice means the type did not change at all.
    pub fn changed_since(&self, ty: XdsType, generation: u64) -> Option<&[String]> {
        let changes = self.changes.as_ref().filter(|c| c.from == generation)?;
        Some(changes.by_type.get(&ty).map_or(&[][..], Vec::as_slice))
    }

    /// Whether [`Snapshot::diff_from`] found nothing changed: the same resources by name and
    /// content, whatever the generations.
    pub fn unchanged(&self) -> bool {
        self.changes
            .as_ref()
            .is_some_and(|c| c.by_type.values().all(Vec::is_empty))
    }

    pub fn insert(&mut self, ty: XdsType, name: String, any: Any) {
        self.resources
            .entry(ty)
            .or_default()
            .insert(name, Arc::new(Entry::new(any)));
    }

    pub fn of_type(&self, ty: XdsType) -> impl Iterator<Item = (&String, &Arc<Entry>)> + Clone {
        self.resources.get(&ty).into_iter().flat_map(|m| m.iter())
    }

    /// All resources of `ty`, as a map that shares its structure with this snapshot's (O(1)).
    pub fn resources(&self, ty: XdsType) -> Resources {
        self.resources.get(&ty).cloned().unwrap_or_default()
    }

    pub fn get(&self, ty: XdsType, name: &str) -> Option<&Arc<Entry>> {
        self.resources.get(&ty).and_then(|m| m.get(name))
    }

    /// The resources of `ty` selected by `names` (`None`: all), in name order. The iterator can
    /// be cloned, to size a response before encoding it without collecting anything.
    pub fn view<'a>(
        &'a self,
        ty: XdsType,
        names: Option<&'a std::collections::BTreeSet<String>>,
    ) -> impl Iterator<Item = (&'a String, &'a Arc<Entry>)> + Clone + 'a {
        self.of_type(ty)
            .filter(move |(n, _)| names.is_none_or(|set| set.contains(*n)))
    }

    /// A fingerprint of [`Snapshot::view`]: names and contents.
    pub fn fingerprint(
        &self,
        ty: XdsType,
        names: Option<&std::collections::BTreeSet<String>>,
    ) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (name, entry) in self.view(ty, names) {
            name.hash(&mut h);
            entry.hash.hash(&mut h);
        }
        h.finish()
    }

    pub fn names(&self, ty: XdsType) -> Vec<String> {
        self.of_type(ty).map(|(n, _)| n.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(v: u8) -> Any {
        Any {
            type_url: type_url::ROUTE.into(),
            value: vec![v],
        }
    }

    #[test]
    fn a_snapshot_knows_what_changed_since_the_one_before() {
        let mut old = Snapshot::new(1);
        old.insert(XdsType::Route, "a".into(), any(1));
        old.insert(XdsType::Route, "b".into(), any(1));
        old.insert(XdsType::Route, "gone".into(), any(1));
        old.insert(XdsType::Cluster, "c".into(), any(1));
        let mut new = Snapshot::new(2);
        new.insert(XdsType::Route, "a".into(), any(1));
        new.insert(XdsType::Route, "b".into(), any(2));
        new.insert(XdsType::Route, "added".into(), any(1));
        new.insert(XdsType::Cluster, "c".into(), any(1));
        new.diff_from(&old);
        assert_eq!(
            new.changed_since(XdsType::Route, 1),
            Some(&["added".to_string(), "b".to_string(), "gone".to_string()][..])
        );
        assert_eq!(new.changed_since(XdsType::Cluster, 1), Some(&[][..]));
        assert!(!new.unchanged());
        let mut same = Snapshot::new(3);
        same.insert(XdsType::Route, "a".into(), any(1));
        same.insert(XdsType::Route, "b".into(), any(2));
        same.insert(XdsType::Route, "added".into(), any(1));
        same.insert(XdsType::Cluster, "c".into(), any(1));
        same.diff_from(&new);
        assert!(
            same.unchanged(),
            "the same resources under another generation"
        );
        assert!(
            Arc::ptr_eq(
                new.get(XdsType::Route, "a").expect("a"),
                old.get(XdsType::Route, "a").expect("a")
            ),
            "an unchanged resource is shared with the older snapshot"
        );
        assert!(
            new.resources[&XdsType::Cluster].ptr_eq(&old.resources[&XdsType::Cluster]),
            "a type with no change shares the whole map with the older snapshot"
        );
        assert_eq!(
            new.changed_since(XdsType::Route, 0),
            None,
            "only the generation it was built after"
        );
    }
}
