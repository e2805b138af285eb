//! Decoding xDS resources into what the proxy honours, and compiling them into a [`Routing`].
//!
//! Honoured subset (see proto/README.md): Listener address + first filter (HTTP connection
//! manager with RDS or an inline route table, or TCP proxy with a cluster or weighted clusters);
//! RouteConfiguration: the first route of the first virtual host that matches every request;
//! Cluster: EDS or STATIC (inline load assignment); ClusterLoadAssignment: socket addresses of
//! all endpoints. Anything undecodable or outside the subset is refused with a NACK naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_proto::envoy::config::cluster::v3::{Cluster, cluster};
use mesh_proto::envoy::config::core::v3::{Address, address, socket_address};
use mesh_proto::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use mesh_proto::envoy::config::listener::v3::{Listener, filter};
use mesh_proto::envoy::config::route::v3::{RouteConfiguration, route, route_action, route_match};
use mesh_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use mesh_proto::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use mesh_proto::google::protobuf::Any;
use mesh_proto::prost::{Message, Name};

use crate::routing::{self, Routing};

/// Backends by cluster name and weight.
pub type Backends = Vec<(String, u32)>;

/// What a listener sends its connections to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Look up this route table (RDS).
    Route(String),
    /// Straight to these clusters (TCP proxy, or an inline route table already resolved).
    Backends(Backends),
    Reject(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerDef {
    pub address: SocketAddr,
    pub target: Target,
}

/// Everything received so far, by type and name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub listeners: BTreeMap<String, ListenerDef>,
    pub routes: BTreeMap<String, Target>,
    /// Clusters, with their inline endpoints for STATIC ones.
    pub clusters: BTreeMap<String, Option<Vec<SocketAddr>>>,
    pub endpoints: BTreeMap<String, Vec<SocketAddr>>,
}

fn decode<M: Message + Default + Name>(any: &Any) -> Result<M, String> {
    if any.type_url != M::type_url() {
        return Err(format!("expected {}, got {}", M::type_url(), any.type_url));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("cannot decode {}: {e}", M::full_name()))
}

fn socket_addr(addr: Option<&Address>) -> Result<SocketAddr, String> {
    match addr.and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(sa)) => {
            let ip: IpAddr = sa
                .address
                .parse()
                .map_err(|_| format!("`{}` is not an IP address", sa.address))?;
            let port = match sa.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => {
                    u16::try_from(p).map_err(|_| format!("port {p} out of range"))?
                }
                _ => return Err("only numeric ports are supported".into()),
            };
            Ok(SocketAddr::new(ip, port))
        }
        Some(_) => Err("only socket addresses are supported".into()),
        None => Err("no address".into()),
    }
}

/// Decodes a complete set of listeners (state of the world). API listeners (no socket, for
/// proxyless gRPC clients) are skipped: they are not for a sidecar.
pub fn listeners(anys: &[Any]) -> Result<BTreeMap<String, ListenerDef>, String> {
    let mut decoded = Vec::with_capacity(anys.len());
    for any in anys {
        let l: Listener = decode(any)?;
        if l.address.is_none() && l.api_listener.is_some() {
            continue;
        }
        decoded.push(l);
    }
    decoded
        .into_iter()
        .map(|l| {
            let address =
                socket_addr(l.address.as_ref()).map_err(|e| format!("listener {}: {e}", l.name))?;
            let target = listener_target(&l).map_err(|e| format!("listener {}: {e}", l.name))?;
            Ok((l.name, ListenerDef { address, target }))
        })
        .collect()
}

fn listener_target(l: &Listener) -> Result<Target, String> {
    let filter = l
        .filter_chains
        .first()
        .and_then(|c| c.filters.first())
        .ok_or("no filter chain with a filter")?;
    let Some(filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
        return Err(format!("filter {} has no typed config", filter.name));
    };
    if any.type_url == HttpConnectionManager::type_url() {
        let hcm: HttpConnectionManager = decode(any)?;
        return match hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => Ok(Target::Route(rds.route_config_name)),
            Some(RouteSpecifier::RouteConfig(rc)) => Ok(route_target(&rc)),
            _ => Err("HTTP connection manager without RDS or a route table".into()),
        };
    }
    if any.type_url == TcpProxy::type_url() {
        let tcp: TcpProxy = decode(any)?;
        return match tcp.cluster_specifier {
            Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => Ok(Target::Backends(vec![(c, 1)])),
            Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => Ok(Target::Backends(
                w.clusters.into_iter().map(|c| (c.name, c.weight)).collect(),
            )),
            None => Err("TCP proxy without a cluster".into()),
        };
    }
    Err(format!("unsupported filter config {}", any.type_url))
}

/// Decodes a set of route tables.
pub fn routes(anys: &[Any]) -> Result<BTreeMap<String, Target>, String> {
    anys.iter()
        .map(|any| {
            let rc: RouteConfiguration = decode(any)?;
            let target = route_target(&rc);
            Ok((rc.name, target))
        })
        .collect()
}

/// The action of the first route that matches every request.
fn route_target(rc: &RouteConfiguration) -> Target {
    let catch_all = rc.virtual_hosts.first().and_then(|vh| {
        vh.routes.iter().find(|r| {
            r.r#match.as_ref().is_some_and(|m| {
                matches!(&m.path_specifier, Some(route_match::PathSpecifier::Prefix(p)) if p == "/" || p.is_empty())
                    && m.headers.is_empty()
                    && m.query_parameters.is_empty()
            })
        })
    });
    let Some(route) = catch_all else {
        return Target::Reject(format!(
            "route table {} has no route that matches every request",
            rc.name
        ));
    };
    match &route.action {
        Some(route::Action::Route(a)) => match &a.cluster_specifier {
            Some(route_action::ClusterSpecifier::Cluster(c)) => {
                Target::Backends(vec![(c.clone(), 1)])
            }
            Some(route_action::ClusterSpecifier::WeightedClusters(w)) => Target::Backends(
                w.clusters
                    .iter()
                    .map(|c| (c.name.clone(), c.weight.map_or(1, |v| v.value)))
                    .collect(),
            ),
            _ => Target::Reject(format!(
                "route {} of {} names no cluster",
                route.name, rc.name
            )),
        },
        Some(route::Action::DirectResponse(d)) => {
            Target::Reject(format!("route {} answers {} itself", route.name, d.status))
        }
        _ => Target::Reject(format!(
            "route {} of {} has an unsupported action",
            route.name, rc.name
        )),
    }
}

/// Decodes a set of clusters.
pub fn clusters(anys: &[Any]) -> Result<BTreeMap<String, Option<Vec<SocketAddr>>>, String> {
    anys.iter()
        .map(|any| {
            let c: Cluster = decode(any)?;
            let kind = match c.cluster_discovery_type {
                Some(cluster::ClusterDiscoveryType::Type(t)) => t,
                None => cluster::DiscoveryType::Static as i32,
                Some(_) => {
                    return Err(format!(
                        "cluster {}: custom cluster types are not supported",
                        c.name
                    ));
                }
            };
            let inline = if kind == cluster::DiscoveryType::Eds as i32 {
                None
            } else if kind == cluster::DiscoveryType::Static as i32 {
                let cla = c
                    .load_assignment
                    .as_ref()
                    .ok_or_else(|| format!("cluster {}: STATIC without load_assignment", c.name))?;
                Some(endpoint_addrs(cla).map_err(|e| format!("cluster {}: {e}", c.name))?)
            } else {
                return Err(format!(
                    "cluster {}: only EDS and STATIC clusters are supported",
                    c.name
                ));
            };
            Ok((c.name, inline))
        })
        .collect()
}

/// Decodes a set of load assignments.
pub fn endpoints(anys: &[Any]) -> Result<BTreeMap<String, Vec<SocketAddr>>, String> {
    anys.iter()
        .map(|any| {
            let cla: ClusterLoadAssignment = decode(any)?;
            let addrs = endpoint_addrs(&cla)
                .map_err(|e| format!("endpoints of {}: {e}", cla.cluster_name))?;
            Ok((cla.cluster_name, addrs))
        })
        .collect()
}

fn endpoint_addrs(cla: &ClusterLoadAssignment) -> Result<Vec<SocketAddr>, String> {
    cla.endpoints
        .iter()
        .flat_map(|l| l.lb_endpoints.iter())
        .map(|e| match &e.host_identifier {
            Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => socket_addr(ep.address.as_ref()),
            _ => Err("only endpoint addresses are supported".into()),
        })
        .collect()
}

impl Resources {
    /// Route table names the listeners need (for the RDS subscription).
    pub fn route_names(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .filter_map(|l| match &l.target {
                Target::Route(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    /// EDS cluster names (for the EDS subscription).
    pub fn eds_names(&self) -> BTreeSet<String> {
        self.clusters
            .iter()
            .filter(|(_, inline)| inline.is_none())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Builds the routing table from what has arrived. Missing pieces (a route table or an
    /// endpoint set not received yet) give a Service that refuses or a cluster without endpoints.
    pub fn compile(&self) -> Routing {
        let clusters: BTreeMap<&String, Arc<routing::Cluster>> = self
            .clusters
            .iter()
            .map(|(name, inline)| {
                let eps = inline
                    .clone()
                    .or_else(|| self.endpoints.get(name).cloned())
                    .unwrap_or_default();
                (name, Arc::new(routing::Cluster::new(name.clone(), eps)))
            })
            .collect();
        let mut services = std::collections::HashMap::new();
        for (name, l) in &self.listeners {
            let target = match &l.target {
                Target::Route(r) => self
                    .routes
                    .get(r)
                    .cloned()
                    .unwrap_or_else(|| Target::Reject(format!("route table {r} not received"))),
                other => other.clone(),
            };
            let action = match target {
                Target::Reject(reason) => routing::Action::Reject { reason },
                Target::Route(r) => routing::Action::Reject {
                    reason: format!("route table {r} points to another route table"),
                },
                Target::Backends(backends) => {
                    let resolved: Vec<(Arc<routing::Cluster>, u32)> = backends
                        .iter()
                        .filter(|(_, w)| *w > 0)
                        .map(|(c, w)| {
                            let cluster = clusters.get(c).cloned().unwrap_or_else(|| {
                                Arc::new(routing::Cluster::new(c.clone(), vec![]))
                            });
                            (cluster, *w)
                        })
                        .collect();
                    let total = resolved.iter().map(|(_, w)| *w).sum();
                    if total == 0 {
                        routing::Action::Reject {
                            reason: format!("{name} has no backend with a weight"),
                        }
                    } else {
                        routing::Action::Forward {
                            backends: resolved,
                            total,
                        }
                    }
                }
            };
            services.insert(
                l.address,
                routing::Service {
                    name: name.clone(),
                    action,
                },
            );
        }
        Routing { services }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::envoy::config::core::v3::SocketAddress;
    use mesh_proto::envoy::config::endpoint::v3::{Endpoint, LbEndpoint, LocalityLbEndpoints};
    use mesh_proto::to_any;
    use mesh_proto::type_url;

    fn sock(ip: &str, port: u32) -> Address {
        Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }
    }

    fn cla(name: &str, addrs: &[(&str, u32)]) -> Any {
        to_any(
            type_url::ENDPOINT,
            &ClusterLoadAssignment {
                cluster_name: name.into(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: addrs
                        .iter()
                        .map(|(ip, port)| LbEndpoint {
                            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(
                                Endpoint {
                                    address: Some(sock(ip, *port)),
                                    ..Default::default()
                                },
                            )),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
    }

    #[test]
    fn endpoints_decode_and_bad_ones_are_named() {
        let ok =
            endpoints(&[cla("web", &[("10.0.0.3", 8080), ("fd00::3", 8080)])]).unwrap_or_default();
        assert_eq!(
            ok["web"]
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            vec!["10.0.0.3:8080", "[fd00::3]:8080"]
        );
        let err = endpoints(&[cla("web", &[("not-an-ip", 80)])])
            .err()
            .unwrap_or_default();
        assert_eq!(err, "endpoints of web: `not-an-ip` is not an IP address");
        let err = endpoints(&[to_any(type_url::CLUSTER, &Cluster::default())])
            .err()
            .unwrap_or_default();
        assert!(
            err.starts_with(
                "expected type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            ),
            "{err}"
        );
    }

    #[test]
    fn compile_resolves_routes_clusters_and_endpoints() {
        let mut r = Resources::default();
        r.listeners.insert(
            "web".into(),
            ListenerDef {
                address: "10.96.0.1:80".parse().unwrap_or_else(|e| panic!("{e}")),
                target: Target::Route("web".into()),
            },
        );
        r.listeners.insert(
            "lonely".into(),
            ListenerDef {
                address: "10.96.0.9:80".parse().unwrap_or_else(|e| panic!("{e}")),
                target: Target::Route("missing".into()),
            },
        );
        r.routes.insert(
            "web".into(),
            Target::Backends(vec![("v1".into(), 90), ("v2".into(), 10)]),
        );
        r.clusters.insert("v1".into(), None);
        r.clusters.insert("v2".into(), None);
        r.endpoints = endpoints(&[cla("v1", &[("10.0.0.3", 8080)])]).unwrap_or_default();
        assert_eq!(
            r.route_names(),
            BTreeSet::from(["missing".to_string(), "web".to_string()])
        );
        assert_eq!(r.eds_names().len(), 2);
        let routing = r.compile();
        let web = routing
            .service(&"10.96.0.1:80".parse().unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|| panic!("no web"));
        assert_eq!(
            web.pick(5).map(|(a, c)| (a.to_string(), c.to_string())),
            Ok(("10.0.0.3:8080".into(), "v1".into()))
        );
        assert_eq!(
            web.pick(95).map(|(_, c)| c.to_string()),
            Err(routing::NoEndpoint::Empty {
                cluster: "v2".into()
            })
        );
        let lonely = routing
            .service(&"10.96.0.9:80".parse().unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|| panic!("no lonely"));
        assert!(matches!(
            lonely.pick(0),
            Err(routing::NoEndpoint::Rejected(_))
        ));
    }
}
