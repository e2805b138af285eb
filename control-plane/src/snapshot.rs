//! A complete, immutable set of xDS resources, as served to every proxy at one moment.

use std::collections::BTreeMap;
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
    resources: BTreeMap<XdsType, BTreeMap<String, Arc<Entry>>>,
}

impl Snapshot {
    pub fn new(generation: u64) -> Snapshot {
        Snapshot {
            generation,
            created: std::time::Instant::now(),
            resources: BTreeMap::new(),
        }
    }

    pub fn insert(&mut self, ty: XdsType, name: String, any: Any) {
        self.resources
            .entry(ty)
            .or_default()
            .insert(name, Arc::new(Entry::new(any)));
    }

    pub fn of_type(&self, ty: XdsType) -> impl Iterator<Item = (&String, &Arc<Entry>)> {
        self.resources.get(&ty).into_iter().flatten()
    }

    pub fn get(&self, ty: XdsType, name: &str) -> Option<&Arc<Entry>> {
        self.resources.get(&ty).and_then(|m| m.get(name))
    }

    /// The resources of `ty` selected by `names` (`None`: all), with a fingerprint of the set.
    pub fn view(
        &self,
        ty: XdsType,
        names: Option<&std::collections::BTreeSet<String>>,
    ) -> (Vec<(&String, &Arc<Entry>)>, u64) {
        let selected: Vec<_> = self
            .of_type(ty)
            .filter(|(n, _)| names.is_none_or(|set| set.contains(*n)))
            .collect();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (name, entry) in &selected {
            name.hash(&mut h);
            entry.hash.hash(&mut h);
        }
        (selected, h.finish())
    }

    pub fn names(&self, ty: XdsType) -> Vec<String> {
        self.of_type(ty).map(|(n, _)| n.clone()).collect()
    }

    /// Same resources (by name and content) as `other`, whatever the generations.
    pub fn same_content(&self, other: &Snapshot) -> bool {
        XdsType::ALL.iter().all(|t| {
            let a: Vec<_> = self.of_type(*t).map(|(n, e)| (n, e.hash)).collect();
            let b: Vec<_> = other.of_type(*t).map(|(n, e)| (n, e.hash)).collect();
            a == b
        })
    }
}
