//! The user-facing resources: `Service`, `Workload` and `HTTPRoute`, each an object with
//! `apiVersion`, `kind`, `metadata` and `spec`, as in Kubernetes.

mod httproute;
mod policy;
mod security;
mod service;
mod workload;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use httproute::*;
pub use policy::*;
pub use security::*;
pub use service::*;
pub use workload::*;

/// `apiVersion` of the mesh's own kinds.
pub const MESH_API_VERSION: &str = "mesh.dev/v1";
/// `apiVersion` of the Gateway API kinds.
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";
/// `apiVersion` of the security kinds; Istio's `security.istio.io/v1` is accepted too, so Istio
/// users' PeerAuthentication and AuthorizationPolicy files apply unchanged.
pub const SECURITY_API_VERSION: &str = "security.mesh.dev/v1";
pub const ISTIO_SECURITY_API_VERSION: &str = "security.istio.io/v1";
/// The root namespace: security resources here without a selector are mesh-wide.
pub const ROOT_NAMESPACE: &str = "mesh-system";

/// The kinds of resource meshd stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Service,
    Workload,
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
    BackendPolicy,
    PeerAuthentication,
    AuthorizationPolicy,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Service,
        Kind::Workload,
        Kind::HttpRoute,
        Kind::BackendPolicy,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Workload => "Workload",
            Kind::HttpRoute => "HTTPRoute",
            Kind::BackendPolicy => "BackendPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Workload | Kind::BackendPolicy => MESH_API_VERSION,
            Kind::HttpRoute => GATEWAY_API_VERSION,
            Kind::PeerAuthentication | Kind::AuthorizationPolicy => SECURITY_API_VERSION,
        }
    }

    /// Whether `api_version` is served for this kind.
    pub fn accepts_api_version(self, api_version: &str) -> bool {
        api_version == self.api_version()
            || (self.api_version() == SECURITY_API_VERSION
                && api_version == ISTIO_SECURITY_API_VERSION)
    }

    /// Parses a kind as users type it: `Service`, `services`, `svc`, `httproute`, ...
    pub fn from_user(s: &str) -> Option<Kind> {
        match s.to_ascii_lowercase().as_str() {
            "service" | "services" | "svc" => Some(Kind::Service),
            "workload" | "workloads" | "wl" => Some(Kind::Workload),
            "httproute" | "httproutes" | "route" | "routes" => Some(Kind::HttpRoute),
            "backendpolicy" | "backendpolicies" | "policy" | "policies" => {
                Some(Kind::BackendPolicy)
            }
            "peerauthentication" | "peerauthentications" | "pa" => Some(Kind::PeerAuthentication),
            "authorizationpolicy" | "authorizationpolicies" | "ap" => {
                Some(Kind::AuthorizationPolicy)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `metadata` of every resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

pub fn default_namespace() -> String {
    "default".to_string()
}

/// A resource: `apiVersion`, `kind`, `metadata` and a typed `spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Object<S> {
    pub api_version: String,
    pub kind: Kind,
    pub metadata: Metadata,
    pub spec: S,
}

pub type Service = Object<ServiceSpec>;
pub type Workload = Object<WorkloadSpec>;
pub type HttpRoute = Object<HttpRouteSpec>;
pub type BackendPolicy = Object<BackendPolicySpec>;
pub type PeerAuthentication = Object<PeerAuthenticationSpec>;
pub type AuthorizationPolicy = Object<AuthorizationPolicySpec>;

/// Any stored resource.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Resource {
    Service(Service),
    Workload(Workload),
    HttpRoute(HttpRoute),
    BackendPolicy(BackendPolicy),
    PeerAuthentication(PeerAuthentication),
    AuthorizationPolicy(AuthorizationPolicy),
}

impl Resource {
    pub fn metadata(&self) -> &Metadata {
        match self {
            Resource::Service(o) => &o.metadata,
            Resource::Workload(o) => &o.metadata,
            Resource::HttpRoute(o) => &o.metadata,
            Resource::BackendPolicy(o) => &o.metadata,
            Resource::PeerAuthentication(o) => &o.metadata,
            Resource::AuthorizationPolicy(o) => &o.metadata,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Resource::Service(_) => Kind::Service,
            Resource::Workload(_) => Kind::Workload,
            Resource::HttpRoute(_) => Kind::HttpRoute,
            Resource::BackendPolicy(_) => Kind::BackendPolicy,
            Resource::PeerAuthentication(_) => Kind::PeerAuthentication,
            Resource::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
        }
    }

    pub fn key(&self) -> Key {
        let m = self.metadata();
        Key::new(self.kind(), &m.namespace, &m.name)
    }
}

/// Identifies a resource: kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Key {
        Key {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The key as stored in the database: `Kind/namespace/name`.
    pub fn storage_key(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}
