//! The compiled routing table: which Service a virtual IP:port is, how its traffic splits over
//! clusters, and each cluster's endpoints. Built once per config update, read per connection
//! without locks (it sits behind an `ArcSwap`).
//!
//! The proxy is L4 here: a connection is routed by the Service's catch-all route (the rule that
//! matches every request), since per-request matches need the HTTP layer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use std::time::Duration;

use serde_json::{Value, json};

use crate::addr_map::{AddrMap, AddrSet};
use crate::balance::{self, Algorithm, Endpoint};
use crate::request_metrics::RouteStats;
use crate::route::{HeaderEdits, PathRewrite, Redirect, RequestMatch, RequestView};

/// One upstream cluster: its endpoints, picked round robin.
#[derive(Debug, Default)]
pub struct Cluster {
    pub name: String,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub algorithm: Algorithm,
    next: AtomicUsize,
}

impl Cluster {
    /// A cluster of endpoints with fresh state, balanced round robin.
    pub fn new(name: String, addrs: Vec<SocketAddr>) -> Cluster {
        let endpoints = addrs
            .into_iter()
            .map(|a| Arc::new(Endpoint::new(a)))
            .collect();
        Cluster::with(name, endpoints, Algorithm::RoundRobin)
    }

    pub fn with(name: String, endpoints: Vec<Arc<Endpoint>>, algorithm: Algorithm) -> Cluster {
        Cluster {
            name,
            endpoints,
            algorithm,
            next: AtomicUsize::new(0),
        }
    }

    /// An endpoint by the cluster's algorithm; `None` when the cluster has none.
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        balance::pick(&self.endpoints, self.algorithm, &self.next, random_u32()).cloned()
    }
}

/// How a Service's connections are handled.
#[derive(Debug)]
pub enum Action {
    /// Split over clusters by weight (weights > 0, total > 0).
    Forward {
        backends: Vec<(Arc<Cluster>, u32)>,
        total: u32,
    },
    /// The route answers without a backend (e.g. a rule with no backends): refuse.
    Reject { reason: String },
    /// The route answers with a redirect.
    Redirect(Redirect),
}

/// One route of a Service: which requests, and where they go.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    /// Index of the virtual host (in [`Service::vhosts`]) it belongs to.
    pub vhost: usize,
    pub matcher: RequestMatch,
    pub action: Action,
    /// Time allowed for the whole request (Gateway API `timeouts.request`).
    pub timeout: Option<Duration>,
    /// This route's request counters.
    pub stats: Arc<RouteStats>,
    /// Header changes (Gateway API header modifier filters).
    pub edits: HeaderEdits,
    /// Path rewrite on the way up (Gateway API URLRewrite).
    pub rewrite: Option<PathRewrite>,
    /// Host rewrite on the way up.
    pub host_rewrite: Option<hyper::header::HeaderValue>,
}

impl Route {
    /// A route for every request.
    pub fn catch_all(action: Action) -> Route {
        Route {
            name: "default".into(),
            vhost: 0,
            matcher: RequestMatch::any(),
            action,
            timeout: None,
            stats: Arc::default(),
            edits: HeaderEdits::default(),
            rewrite: None,
            host_rewrite: None,
        }
    }
}

/// A Service port, as seen by a connecting client: its routes in match order.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub routes: Vec<Route>,
    /// The domains of each virtual host (lowercase; `*`, `*.suffix`, `prefix*`, with or without
    /// a port).
    pub vhosts: Vec<Arc<Vec<String>>>,
    /// HTTP (routed per request) or opaque TCP (routed per connection, no protocol detection).
    pub http: bool,
    /// Whether a route matches on a header field (see [`crate::route::RequestMatch::reads_headers`]):
    /// then a request's whole map is restored before its route is found.
    pub matches_headers: bool,
}

/// Why a connection to a known Service could not be given an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoEndpoint {
    Rejected(String),
    Empty { cluster: String },
}

impl Service {
    /// The first route that matches the request.
    pub fn route(&self, req: &RequestView<'_>) -> Option<&Route> {
        let vhost = self.virtual_host(req.authority);
        self.routes
            .iter()
            .find(|r| r.vhost == vhost && r.matcher.matches(req))
    }

    /// The virtual host for `authority` (`Host` or `:authority`): the first whose domains match
    /// it, with or without its port; when none does, the first (the connection's original
    /// destination chose this Service already).
    pub fn virtual_host(&self, authority: Option<&str>) -> usize {
        // One virtual host (the usual Service): it is the answer whatever the authority.
        let (Some(authority), true) = (authority, self.vhosts.len() > 1) else {
            return 0;
        };
        let host = match authority.rsplit_once(':') {
            Some((h, port))
                if !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && (!h.contains(':') || h.ends_with(']')) =>
            {
                h
            }
            _ => authority,
        };
        self.vhosts
            .iter()
            .position(|domains| {
                domains
                    .iter()
                    .any(|d| domain_matches(d, authority) || domain_matches(d, host))
            })
            .unwrap_or(0)
    }

    /// For a whole connection (L4): the endpoint chosen by the first route that matches every
    /// request.
    pub fn pick(&self, random: u32) -> Result<(Arc<Endpoint>, &str), NoEndpoint> {
        match self
            .routes
            .iter()
            .find(|r| r.vhost == 0 && r.matcher.is_catch_all())
        {
            Some(route) => route.action.pick(random),
            None => Err(NoEndpoint::Rejected(format!(
                "no route of {} matches every request",
                self.name
            ))),
        }
    }
}

impl Action {
    /// Chooses a cluster by weight (with `random` in `0..u32::MAX`) and an endpoint in it.
    pub fn pick(&self, random: u32) -> Result<(Arc<Endpoint>, &str), NoEndpoint> {
        match self {
            Action::Reject { reason } => Err(NoEndpoint::Rejected(reason.clone())),
            Action::Redirect(r) => Err(NoEndpoint::Rejected(format!(
                "the route answers with a {} redirect",
                r.status
            ))),
            Action::Forward { backends, total } => {
                let mut point = random % total;
                let cluster = backends
                    .iter()
                    .find(|(_, w)| {
                        if point < *w {
                            true
                        } else {
                            point -= w;
                            false
                        }
                    })
                    .map(|(c, _)| c)
                    .or_else(|| backends.last().map(|(c, _)| c))
                    .ok_or_else(|| NoEndpoint::Empty {
                        cluster: String::new(),
                    })?;
                cluster
                    .pick()
                    .map(|ep| (ep, cluster.name.as_str()))
                    .ok_or_else(|| NoEndpoint::Empty {
                        cluster: cluster.name.clone(),
                    })
            }
        }
    }
}

/// Every Service this proxy knows, by virtual address.
#[derive(Debug, Default)]
pub struct Routing {
    pub services: AddrMap<SocketAddr, Service>,
    /// Every endpoint port, by endpoint address: what a peer may ask this pod's sidecar for.
    pub endpoint_ports: AddrMap<std::net::IpAddr, AddrSet<u16>>,
    /// The first Service (cluster, by name) each endpoint belongs to: what inbound requests
    /// are counted under.
    pub endpoint_services: AddrMap<SocketAddr, String>,
    /// The identity of each endpoint address's sidecar, as meshd published it.
    pub sidecars: AddrMap<std::net::IpAddr, crate::xds::resources::SidecarName>,
    /// The names of the Services in `services`: what a peer's `x-mesh-service` may name.
    pub service_names: std::collections::HashSet<String>,
}

impl Routing {
    /// Whether some Service has `addr` as an endpoint.
    pub fn is_endpoint(&self, addr: SocketAddr) -> bool {
        self.endpoint_ports
            .get(&addr.ip())
            .is_some_and(|ports| ports.contains(&addr.port()))
    }

    pub fn service(&self, addr: &SocketAddr) -> Option<&Service> {
        self.services.get(addr)
    }

    /// A JSON view for `/config_dump`.
    pub fn dump(&self) -> Value {
        let mut services: Vec<(&SocketAddr, &Service)> = self.services.iter().collect();
        services.sort_by_key(|(a, _)| **a);
        Value::Array(
            services
                .into_iter()
                .map(|(addr, s)| {
                    let routes: Vec<Value> = s
                        .routes
                        .iter()
                        .map(|r| {
                            let action = match &r.action {
                                Action::Reject { reason } => json!({ "reject": reason }),
                                Action::Redirect(r) => json!({ "redirect": format!("{r:?}") }),
                                Action::Forward { backends, .. } => json!(backends
                                    .iter()
                                    .map(|(c, w)| json!({
                                        "cluster": c.name,
                                        "weight": w,
                                        "algorithm": c.algorithm.as_str(),
                                        "endpoints": c.endpoints.iter().map(|e| json!({
                                            "address": e.addr.to_string(),
                                            "inFlight": e.in_flight(),
                                            "latencyMs": e.latency_nanos() / 1e6,
                                        })).collect::<Vec<_>>(),
                                    }))
                                    .collect::<Vec<_>>()),
                            };
                            json!({ "route": r.name, "match": format!("{:?}", r.matcher.path), "backends": action })
                        })
                        .collect();
                    json!({ "address": addr.to_string(), "service": s.name, "http": s.http, "routes": routes })
                })
                .collect(),
        )
    }
}

/// A fast, non-cryptographic random number per call (SplitMix64 over a thread-local state).
pub fn random_u32() -> u32 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0x9E37_79B9, |d| d.as_nanos() as u64)
        );
    }
    STATE.with(|s| {
        let mut z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 32) as u32
    })
}

/// Whether a virtual host domain (lowercase) matches `host` (compared case-insensitively).
fn domain_matches(domain: &str, host: &str) -> bool {
    if domain == "*" {
        return true;
    }
    if let Some(suffix) = domain.strip_prefix('*') {
        return host.len() > suffix.len()
            && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix);
    }
    if let Some(prefix) = domain.strip_suffix('*') {
        return host.len() > prefix.len() && host[..prefix.len()].eq_ignore_ascii_case(prefix);
    }
    domain.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn round_robin_within_a_cluster() {
        let c = Cluster::new("c".into(), vec![addr("10.0.0.1:80"), addr("10.0.0.2:80")]);
        let picks: Vec<_> = (0..4)
            .filter_map(|_| c.pick().map(|e| e.addr))
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            picks,
            vec!["10.0.0.1:80", "10.0.0.2:80", "10.0.0.1:80", "10.0.0.2:80"]
        );
        assert!(Cluster::new("e".into(), vec![]).pick().is_none());
    }

    #[test]
    fn weighted_split_follows_the_weights() {
        let v1 = Arc::new(Cluster::new("v1".into(), vec![addr("10.0.0.1:80")]));
        let v2 = Arc::new(Cluster::new("v2".into(), vec![addr("10.0.0.2:80")]));
        let s = Service {
            name: "web".into(),
            vhosts: vec![],
            routes: vec![Route::catch_all(Action::Forward {
                backends: vec![(v1, 90), (v2, 10)],
                total: 100,
            })],
            http: false,
            matches_headers: false,
        };
        assert_eq!(s.pick(0).map(|(_, c)| c), Ok("v1"));
        assert_eq!(s.pick(89).map(|(_, c)| c), Ok("v1"));
        assert_eq!(s.pick(90).map(|(_, c)| c), Ok("v2"));
        let n = 20_000;
        let to_v2 = (0..n)
            .filter(|_| {
                s.pick(random_u32())
                    .map(|(_, c)| c == "v2")
                    .unwrap_or(false)
            })
            .count();
        let share = to_v2 as f64 / n as f64;
        assert!((0.08..0.12).contains(&share), "v2 share {share}");
    }

    #[test]
    fn empty_clusters_and_rejections_are_reported() {
        let empty = Arc::new(Cluster::new("empty".into(), vec![]));
        let s = Service {
            name: "s".into(),
            vhosts: vec![],
            routes: vec![Route::catch_all(Action::Forward {
                backends: vec![(empty, 1)],
                total: 1,
            })],
            http: false,
            matches_headers: false,
        };
        assert_eq!(
            s.pick(0).map(|(e, c)| (e.addr, c)),
            Err(NoEndpoint::Empty {
                cluster: "empty".into()
            })
        );
        let r = Service {
            name: "r".into(),
            vhosts: vec![],
            routes: vec![Route::catch_all(Action::Reject {
                reason: "no backends".into(),
            })],
            http: false,
            matches_headers: false,
        };
        assert_eq!(
            r.pick(0).map(|(e, c)| (e.addr, c)),
            Err(NoEndpoint::Rejected("no backends".into()))
        );
    }
}
