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
use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};
use mesh_proto::envoy::config::core::v3::{
    HeaderValueOption, header_value_option::HeaderAppendAction,
};
use mesh_proto::envoy::config::route::v3::{RedirectAction, redirect_action};
use mesh_proto::envoy::config::route::v3::{
    RouteConfiguration, RouteMatch, header_matcher, query_parameter_matcher, route, route_action,
    route_match,
};
use mesh_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use mesh_proto::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use mesh_proto::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use mesh_proto::google::protobuf::Any;
use mesh_proto::prost::{Message, Name};

use crate::addr_map::{AddrMap, AddrSet};
use crate::balance::{Algorithm, EndpointRegistry};
use crate::request_metrics::RequestRegistry;
use crate::route::{HeaderEdits, PathRewrite, Redirect};
use crate::route::{
    HeaderField, HeaderMatch, PathMatch, QueryMatch, RequestMatch, ValueMatch, full_regex,
};
use crate::routing::{self, Routing};

/// Backends by cluster name and weight.
pub type Backends = Vec<(String, u32)>;

/// One route as decoded: what it matches, where it goes (or why it refuses), its timeout.
#[derive(Clone, Debug)]
pub struct RouteDef {
    pub name: String,
    pub matcher: RequestMatch,
    pub backends: Result<Backends, String>,
    pub timeout: Option<Duration>,
    pub redirect: Option<Redirect>,
    pub edits: HeaderEdits,
    pub rewrite: Option<PathRewrite>,
    pub host_rewrite: Option<HeaderValue>,
    /// The virtual host it belongs to (its index), and that host's domains.
    pub vhost: usize,
    pub domains: Arc<Vec<String>>,
}

/// A route table in match order.
pub type RouteTable = Vec<RouteDef>;

/// What a listener sends its connections to.
#[derive(Clone, Debug)]
pub enum Target {
    /// Look up this route table (RDS).
    Route(String),
    /// A route table of its own (TCP proxy, or an inline route table).
    Table(RouteTable),
}

#[derive(Clone, Debug)]
pub struct ListenerDef {
    pub address: SocketAddr,
    pub target: Target,
    /// An HTTP connection manager (per-request routing) rather than a TCP proxy.
    pub http: bool,
}

/// A cluster as decoded: inline endpoints (STATIC) or none (EDS), and how to balance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterDef {
    pub inline: Option<Vec<SocketAddr>>,
    pub algorithm: Algorithm,
}

/// The identity meshd published for an endpoint's sidecar (empty when it published none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SidecarName {
    pub namespace: String,
    pub service_account: String,
}

impl SidecarName {
    /// From `ns/<namespace>/sa/<service-account>`; empty parts when it is not that.
    fn from_path(path: &str) -> SidecarName {
        match path.split('/').collect::<Vec<_>>().as_slice() {
            ["ns", namespace, "sa", account] => SidecarName {
                namespace: namespace.to_string(),
                service_account: account.to_string(),
            },
            _ => SidecarName::default(),
        }
    }
}

/// Everything received so far, by type and name.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    pub listeners: BTreeMap<String, ListenerDef>,
    pub routes: BTreeMap<String, RouteTable>,
    /// Clusters, with their inline endpoints for STATIC ones.
    pub clusters: BTreeMap<String, ClusterDef>,
    pub endpoints: BTreeMap<String, Vec<SocketAddr>>,
    /// Endpoint addresses that have a sidecar (EDS `mesh` metadata `sidecar: true`), with the
    /// sidecar's identity (`namespace`, `serviceAccount`).
    pub sidecars: BTreeMap<SocketAddr, SidecarName>,
}

fn catch_all(name: &str, backends: Result<Backends, String>) -> RouteTable {
    vec![RouteDef {
        name: name.to_string(),
        matcher: RequestMatch::any(),
        backends,
        timeout: None,
        redirect: None,
        edits: HeaderEdits::default(),
        rewrite: None,
        host_rewrite: None,
        vhost: 0,
        domains: Arc::new(vec!["*".to_string()]),
    }]
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
            let (target, http) =
                listener_target(&l).map_err(|e| format!("listener {}: {e}", l.name))?;
            Ok((
                l.name,
                ListenerDef {
                    address,
                    target,
                    http,
                },
            ))
        })
        .collect()
}

fn listener_target(l: &Listener) -> Result<(Target, bool), String> {
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
            Some(RouteSpecifier::Rds(rds)) => Ok((Target::Route(rds.route_config_name), true)),
            Some(RouteSpecifier::RouteConfig(rc)) => {
                route_table(&rc).map(|t| (Target::Table(t), true))
            }
            _ => Err("HTTP connection manager without RDS or a route table".into()),
        };
    }
    if any.type_url == TcpProxy::type_url() {
        let tcp: TcpProxy = decode(any)?;
        return match tcp.cluster_specifier {
            Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => {
                Ok((Target::Table(catch_all(&l.name, Ok(vec![(c, 1)]))), false))
            }
            Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => Ok((
                Target::Table(catch_all(
                    &l.name,
                    Ok(w.clusters.into_iter().map(|c| (c.name, c.weight)).collect()),
                )),
                false,
            )),
            None => Err("TCP proxy without a cluster".into()),
        };
    }
    Err(format!("unsupported filter config {}", any.type_url))
}

/// Decodes a set of route tables.
pub fn routes(anys: &[Any]) -> Result<BTreeMap<String, RouteTable>, String> {
    anys.iter()
        .map(|any| {
            let rc: RouteConfiguration = decode(any)?;
            let table = route_table(&rc).map_err(|e| format!("route table {}: {e}", rc.name))?;
            Ok((rc.name, table))
        })
        .collect()
}

/// The routes of every virtual host, in order, each marked with its virtual host.
fn route_table(rc: &RouteConfiguration) -> Result<RouteTable, String> {
    let mut table = Vec::new();
    for (index, vh) in rc.virtual_hosts.iter().enumerate() {
        let domains = Arc::new(vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect());
        for mut def in virtual_host_routes(vh)? {
            def.vhost = index;
            def.domains = Arc::clone(&domains);
            table.push(def);
        }
    }
    Ok(table)
}

/// The routes of one virtual host, in order.
fn virtual_host_routes(
    vh: &mesh_proto::envoy::config::route::v3::VirtualHost,
) -> Result<RouteTable, String> {
    vh.routes
        .iter()
        .map(|r| {
            let name = if r.name.is_empty() {
                "unnamed".to_string()
            } else {
                r.name.clone()
            };
            let matcher =
                request_match(r.r#match.as_ref()).map_err(|e| format!("route {name}: {e}"))?;
            let edits = header_edits(r).map_err(|e| format!("route {name}: {e}"))?;
            let mut def = RouteDef {
                name: name.clone(),
                matcher,
                backends: Err(String::new()),
                timeout: None,
                redirect: None,
                edits,
                rewrite: None,
                host_rewrite: None,
                vhost: 0,
                domains: Arc::new(Vec::new()),
            };
            match &r.action {
                Some(route::Action::Route(a)) => {
                    def.backends = match &a.cluster_specifier {
                        Some(route_action::ClusterSpecifier::Cluster(c)) => {
                            Ok(vec![(c.clone(), 1)])
                        }
                        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => Ok(w
                            .clusters
                            .iter()
                            .map(|c| (c.name.clone(), c.weight.map_or(1, |v| v.value)))
                            .collect()),
                        _ => {
                            return Err(format!(
                                "route {name}: only cluster and weighted_clusters are supported"
                            ));
                        }
                    };
                    def.timeout = a.timeout.as_ref().and_then(|d| {
                        let t = Duration::new(
                            u64::try_from(d.seconds).ok()?,
                            u32::try_from(d.nanos).ok()?,
                        );
                        (!t.is_zero()).then_some(t)
                    });
                    def.rewrite = rewrite(a).map_err(|e| format!("route {name}: {e}"))?;
                    if let Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) =
                        &a.host_rewrite_specifier
                    {
                        def.host_rewrite = Some(
                            HeaderValue::from_str(h)
                                .map_err(|_| format!("route {name}: `{h}` is not a host"))?,
                        );
                    }
                }
                Some(route::Action::DirectResponse(d)) => {
                    def.backends = Err(format!("route {name} answers {} itself", d.status))
                }
                Some(route::Action::Redirect(ra)) => {
                    def.redirect = Some(redirect(ra).map_err(|e| format!("route {name}: {e}"))?)
                }
                _ => return Err(format!("route {name}: unsupported action")),
            }
            Ok(def)
        })
        .collect()
}

fn header_list(
    options: &[HeaderValueOption],
) -> Result<Vec<(HeaderName, HeaderValue, bool)>, String> {
    options
        .iter()
        .map(|o| {
            let h = o
                .header
                .as_ref()
                .ok_or("a header option without a header")?;
            let name = HeaderName::try_from(h.key.as_str())
                .map_err(|_| format!("`{}` is not a header name", h.key))?;
            let value = HeaderValue::from_str(&h.value)
                .map_err(|_| format!("header {} has an invalid value", h.key))?;
            let append = match o.append_action {
                a if a == HeaderAppendAction::AppendIfExistsOrAdd as i32 => true,
                a if a == HeaderAppendAction::OverwriteIfExistsOrAdd as i32 => false,
                _ => {
                    return Err(format!(
                        "header {}: only append and overwrite actions are supported",
                        h.key
                    ));
                }
            };
            Ok((name, value, append))
        })
        .collect()
}

fn header_names(names: &[String]) -> Result<Vec<HeaderName>, String> {
    names
        .iter()
        .map(|n| {
            HeaderName::try_from(n.as_str()).map_err(|_| format!("`{n}` is not a header name"))
        })
        .collect()
}

fn header_edits(r: &mesh_proto::envoy::config::route::v3::Route) -> Result<HeaderEdits, String> {
    Ok(HeaderEdits {
        request_set: header_list(&r.request_headers_to_add)?,
        request_remove: header_names(&r.request_headers_to_remove)?,
        response_set: header_list(&r.response_headers_to_add)?,
        response_remove: header_names(&r.response_headers_to_remove)?,
    })
}

/// A route action's path rewrite: a prefix, or a whole-path regex (`^/.*$`) substitution.
fn rewrite(
    a: &mesh_proto::envoy::config::route::v3::RouteAction,
) -> Result<Option<PathRewrite>, String> {
    if !a.prefix_rewrite.is_empty() {
        return Ok(Some(PathRewrite::Prefix(a.prefix_rewrite.clone())));
    }
    match &a.regex_rewrite {
        None => Ok(None),
        Some(r)
            if r.pattern
                .as_ref()
                .is_some_and(|p| p.regex == "^/.*$" || p.regex == ".*") =>
        {
            Ok(Some(PathRewrite::Full(r.substitution.clone())))
        }
        Some(_) => Err("only whole-path regex rewrites (`^/.*$`) are supported".into()),
    }
}

fn redirect(ra: &RedirectAction) -> Result<Redirect, String> {
    use redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier};
    let scheme = match &ra.scheme_rewrite_specifier {
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s.clone()),
        Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".into()),
        _ => None,
    };
    let path = match &ra.path_rewrite_specifier {
        None => None,
        Some(PathRewriteSpecifier::PathRedirect(p)) => Some(PathRewrite::Full(p.clone())),
        Some(PathRewriteSpecifier::PrefixRewrite(p)) => Some(PathRewrite::Prefix(p.clone())),
        Some(_) => return Err("regex redirects are not supported".into()),
    };
    let status = match RedirectResponseCode::try_from(ra.response_code) {
        Ok(RedirectResponseCode::MovedPermanently) => 301,
        Ok(RedirectResponseCode::Found) => 302,
        Ok(RedirectResponseCode::SeeOther) => 303,
        Ok(RedirectResponseCode::TemporaryRedirect) => 307,
        Ok(RedirectResponseCode::PermanentRedirect) => 308,
        Err(_) => return Err(format!("unknown redirect code {}", ra.response_code)),
    };
    Ok(Redirect {
        scheme,
        host: (!ra.host_redirect.is_empty()).then(|| ra.host_redirect.clone()),
        port: u16::try_from(ra.port_redirect).ok().filter(|p| *p != 0),
        path,
        status,
    })
}

fn value_match(m: &StringMatcher) -> Result<ValueMatch, String> {
    if m.ignore_case {
        return Err("ignore_case is not supported".into());
    }
    match &m.match_pattern {
        Some(MatchPattern::Exact(v)) => Ok(ValueMatch::Exact(v.clone())),
        Some(MatchPattern::Prefix(v)) => Ok(ValueMatch::Prefix(v.clone())),
        Some(MatchPattern::SafeRegex(r)) => full_regex(&r.regex).map(ValueMatch::Regex),
        _ => Err("only exact, prefix and safe_regex string matches are supported".into()),
    }
}

// The deprecated header match forms are still sent by older control planes; honour them.
#[allow(deprecated)]
fn request_match(m: Option<&RouteMatch>) -> Result<RequestMatch, String> {
    let Some(m) = m else {
        return Ok(RequestMatch::any());
    };
    let path = match &m.path_specifier {
        None => PathMatch::Any,
        Some(route_match::PathSpecifier::Prefix(p)) if p.is_empty() || p == "/" => PathMatch::Any,
        Some(route_match::PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(route_match::PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        Some(route_match::PathSpecifier::PathSeparatedPrefix(p)) => PathMatch::Segments(p.clone()),
        Some(route_match::PathSpecifier::SafeRegex(r)) => PathMatch::Regex(full_regex(&r.regex)?),
        Some(_) => return Err("unsupported path match".into()),
    };
    let headers = m
        .headers
        .iter()
        .map(|h| {
            let field = match h.name.as_str() {
                ":method" => HeaderField::Method,
                ":authority" | "host" => HeaderField::Authority,
                n if n.starts_with(':') => {
                    return Err(format!("header match on {n} is not supported"));
                }
                n => HeaderField::Header(
                    HeaderName::try_from(n).map_err(|_| format!("`{n}` is not a header name"))?,
                ),
            };
            let value = match &h.header_match_specifier {
                Some(header_matcher::HeaderMatchSpecifier::StringMatch(sm)) => value_match(sm)?,
                Some(header_matcher::HeaderMatchSpecifier::ExactMatch(v)) => {
                    ValueMatch::Exact(v.clone())
                }
                Some(header_matcher::HeaderMatchSpecifier::PrefixMatch(v)) => {
                    ValueMatch::Prefix(v.clone())
                }
                Some(header_matcher::HeaderMatchSpecifier::SafeRegexMatch(r)) => {
                    ValueMatch::Regex(full_regex(&r.regex)?)
                }
                Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true)) | None => {
                    ValueMatch::Present
                }
                Some(_) => return Err(format!("unsupported match on header {}", h.name)),
            };
            Ok(HeaderMatch {
                field,
                value,
                invert: h.invert_match,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let query = m
        .query_parameters
        .iter()
        .map(|q| {
            let value = match &q.query_parameter_match_specifier {
                Some(query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(sm)) => {
                    value_match(sm)?
                }
                Some(query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true))
                | None => ValueMatch::Present,
                Some(_) => return Err(format!("unsupported match on query parameter {}", q.name)),
            };
            Ok(QueryMatch {
                name: q.name.clone(),
                value,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(RequestMatch {
        path,
        headers,
        query,
    })
}

/// Decodes a set of clusters.
pub fn clusters(anys: &[Any]) -> Result<BTreeMap<String, ClusterDef>, String> {
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
            let algorithm = algorithm(&c)?;
            Ok((c.name, ClusterDef { inline, algorithm }))
        })
        .collect()
}

/// The balancing algorithm, from (in order): the cluster's `mesh` metadata `lb` (`peak_ewma`,
/// `least_request`, `round_robin`), the first policy of `load_balancing_policy` that is
/// least-request or round robin, or `lb_policy` (`ROUND_ROBIN`, `LEAST_REQUEST`).
fn algorithm(c: &Cluster) -> Result<Algorithm, String> {
    let mesh_lb = c
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get("mesh"))
        .and_then(|s| s.fields.get("lb"))
        .and_then(|v| match &v.kind {
            Some(mesh_proto::google::protobuf::value::Kind::StringValue(s)) => Some(s.as_str()),
            _ => None,
        });
    match mesh_lb {
        Some("peak_ewma") => return Ok(Algorithm::PeakEwma),
        Some("least_request") => return Ok(Algorithm::LeastRequest),
        Some("round_robin") => return Ok(Algorithm::RoundRobin),
        _ => {}
    }
    if let Some(policy) = &c.load_balancing_policy {
        let known = policy.policies.iter().find_map(|p| {
            let url = &p
                .typed_extension_config
                .as_ref()?
                .typed_config
                .as_ref()?
                .type_url;
            if url.ends_with(".least_request.v3.LeastRequest") {
                Some(Algorithm::LeastRequest)
            } else if url.ends_with(".round_robin.v3.RoundRobin") {
                Some(Algorithm::RoundRobin)
            } else {
                None
            }
        });
        return known.ok_or_else(|| {
            format!(
                "cluster {}: no supported policy in load_balancing_policy",
                c.name
            )
        });
    }
    match cluster::LbPolicy::try_from(c.lb_policy) {
        Ok(cluster::LbPolicy::RoundRobin) => Ok(Algorithm::RoundRobin),
        Ok(cluster::LbPolicy::LeastRequest) => Ok(Algorithm::LeastRequest),
        _ => Err(format!(
            "cluster {}: lb_policy {} is not supported (ROUND_ROBIN or LEAST_REQUEST)",
            c.name, c.lb_policy
        )),
    }
}

/// This workload's inbound policy from a policy response: the resource named `name`, or the
/// default (PERMISSIVE, no rules) when meshd has none for it.
pub fn workload_policy(anys: &[Any], name: &str) -> Result<crate::authz::InboundPolicy, String> {
    use mesh_proto::mesh::security::v1::WorkloadPolicy;
    for any in anys {
        if any.type_url != mesh_proto::type_url::WORKLOAD_POLICY {
            return Err(format!(
                "expected {}, got {}",
                mesh_proto::type_url::WORKLOAD_POLICY,
                any.type_url
            ));
        }
        let policy = WorkloadPolicy::decode(any.value.as_slice())
            .map_err(|e| format!("cannot decode a WorkloadPolicy: {e}"))?;
        if policy.name == name {
            return crate::authz::InboundPolicy::compile(&policy)
                .map_err(|e| format!("policy {name}: {e}"));
        }
    }
    Ok(crate::authz::InboundPolicy::default())
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

/// The endpoint addresses marked as having a sidecar in a set of load assignments, with the
/// sidecar's identity.
/// The name of a route table (RDS) or endpoint set (EDS) resource.
pub fn resource_name(type_url: &str, any: &Any) -> Result<String, String> {
    if type_url == mesh_proto::type_url::ROUTE {
        decode::<RouteConfiguration>(any).map(|r| r.name)
    } else {
        decode::<ClusterLoadAssignment>(any).map(|c| c.cluster_name)
    }
}

pub fn sidecar_endpoints(anys: &[Any]) -> BTreeMap<SocketAddr, SidecarName> {
    let mut out = BTreeMap::new();
    for any in anys {
        let Ok(cla) = decode::<ClusterLoadAssignment>(any) else {
            continue;
        };
        for e in cla.endpoints.iter().flat_map(|l| l.lb_endpoints.iter()) {
            let mesh = e
                .metadata
                .as_ref()
                .and_then(|m| m.filter_metadata.get("mesh"));
            use mesh_proto::google::protobuf::value::Kind;
            // `true`, or the path of the sidecar's SPIFFE ID: `ns/<namespace>/sa/<account>`.
            let (sidecar, name) = match mesh.and_then(|s| s.fields.get("sidecar")).map(|v| &v.kind)
            {
                Some(Some(Kind::BoolValue(b))) => (*b, SidecarName::default()),
                Some(Some(Kind::StringValue(path))) => (true, SidecarName::from_path(path)),
                _ => (false, SidecarName::default()),
            };
            if let (true, Some(lb_endpoint::HostIdentifier::Endpoint(ep))) =
                (sidecar, &e.host_identifier)
            {
                if let Ok(addr) = socket_addr(ep.address.as_ref()) {
                    out.insert(addr, name);
                }
            }
        }
    }
    out
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
            .filter(|(_, def)| def.inline.is_none())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Builds the routing table from what has arrived. Missing pieces (a route table or an
    /// endpoint set not received yet) give a Service that refuses or a cluster without endpoints.
    pub fn compile(
        &self,
        requests: &RequestRegistry,
        endpoint_state: &EndpointRegistry,
    ) -> Routing {
        let mut live = std::collections::HashSet::new();
        let clusters: BTreeMap<&String, Arc<routing::Cluster>> = self
            .clusters
            .iter()
            .map(|(name, def)| {
                let addrs = def
                    .inline
                    .clone()
                    .or_else(|| self.endpoints.get(name).cloned())
                    .unwrap_or_default();
                let endpoints = addrs
                    .into_iter()
                    .map(|addr| {
                        live.insert((name.clone(), addr));
                        let endpoint = endpoint_state.endpoint(name, addr);
                        endpoint.set_meshed(self.sidecars.contains_key(&addr));
                        endpoint
                    })
                    .collect();
                (
                    name,
                    Arc::new(routing::Cluster::with(
                        name.clone(),
                        endpoints,
                        def.algorithm,
                    )),
                )
            })
            .collect();
        endpoint_state.retain(&live);
        let mut endpoint_ports: AddrMap<std::net::IpAddr, AddrSet<u16>> = AddrMap::default();
        for (_, addr) in &live {
            endpoint_ports
                .entry(addr.ip())
                .or_default()
                .insert(addr.port());
        }
        let mut services = AddrMap::default();
        for (name, l) in &self.listeners {
            let table = match &l.target {
                Target::Route(r) => match self.routes.get(r) {
                    Some(table) => table.clone(),
                    None => catch_all(name, Err(format!("route table {r} not received"))),
                },
                Target::Table(table) => table.clone(),
            };
            let mut vhosts: Vec<Arc<Vec<String>>> = Vec::new();
            let routes: Vec<routing::Route> = table
                .into_iter()
                .map(|def| {
                    let action = match (def.redirect, def.backends) {
                        (Some(redirect), _) => routing::Action::Redirect(redirect),
                        (None, Err(reason)) => routing::Action::Reject { reason },
                        (None, Ok(backends)) => {
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
                                    reason: format!(
                                        "route {} has no backend with a weight",
                                        def.name
                                    ),
                                }
                            } else {
                                routing::Action::Forward {
                                    backends: resolved,
                                    total,
                                }
                            }
                        }
                    };
                    let stats = requests.stats(name, &def.name);
                    if vhosts.len() <= def.vhost {
                        vhosts.resize(def.vhost + 1, Arc::new(Vec::new()));
                    }
                    vhosts[def.vhost] = Arc::clone(&def.domains);
                    routing::Route {
                        vhost: def.vhost,
                        name: def.name,
                        matcher: def.matcher,
                        action,
                        timeout: def.timeout,
                        stats,
                        edits: def.edits,
                        rewrite: def.rewrite,
                        host_rewrite: def.host_rewrite,
                    }
                })
                .collect();
            services.insert(
                l.address,
                routing::Service {
                    name: name.clone(),
                    matches_headers: routes.iter().any(|r| r.matcher.reads_headers()),
                    routes,
                    vhosts,
                    http: l.http,
                },
            );
        }
        let sidecars = self
            .sidecars
            .iter()
            .map(|(addr, name)| (addr.ip(), name.clone()))
            .collect();
        let mut endpoint_services = AddrMap::default();
        for (name, cluster) in &clusters {
            for endpoint in &cluster.endpoints {
                endpoint_services
                    .entry(endpoint.addr)
                    .or_insert_with(|| (*name).clone());
            }
        }
        let service_names = services
            .values()
            .map(|s: &routing::Service| s.name.clone())
            .collect();
        Routing {
            services,
            endpoint_ports,
            endpoint_services,
            sidecars,
            service_names,
        }
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
                http: true,
            },
        );
        r.listeners.insert(
            "lonely".into(),
            ListenerDef {
                address: "10.96.0.9:80".parse().unwrap_or_else(|e| panic!("{e}")),
                target: Target::Route("missing".into()),
                http: true,
            },
        );
        r.routes.insert(
            "web".into(),
            catch_all("web", Ok(vec![("v1".into(), 90), ("v2".into(), 10)])),
        );
        r.clusters.insert("v1".into(), ClusterDef::default());
        r.clusters.insert("v2".into(), ClusterDef::default());
        r.endpoints = endpoints(&[cla("v1", &[("10.0.0.3", 8080)])]).unwrap_or_default();
        assert_eq!(
            r.route_names(),
            BTreeSet::from(["missing".to_string(), "web".to_string()])
        );
        assert_eq!(r.eds_names().len(), 2);
        let routing = r.compile(&RequestRegistry::default(), &EndpointRegistry::default());
        let web = routing
            .service(&"10.96.0.1:80".parse().unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|| panic!("no web"));
        assert_eq!(
            web.pick(5)
                .map(|(a, c)| (a.addr.to_string(), c.to_string())),
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

    /// Resources with one HTTP listener `web` at 10.96.0.1:80 whose routes are `rc`.
    fn http_listener_with(rc: &RouteConfiguration) -> (Resources, SocketAddr) {
        let mut r = Resources::default();
        let vip: SocketAddr = "10.96.0.1:80".parse().unwrap_or_else(|e| panic!("{e}"));
        r.listeners.insert(
            "web".into(),
            ListenerDef {
                address: vip,
                target: Target::Route("web".into()),
                http: true,
            },
        );
        r.routes = routes(&[to_any(type_url::ROUTE, rc)]).unwrap_or_else(|e| panic!("{e}"));
        (r, vip)
    }

    #[test]
    fn virtual_hosts_are_chosen_by_host_then_the_first_by_destination() {
        use mesh_proto::envoy::config::route::v3::{Route, RouteAction, VirtualHost};
        let vhost = |domains: &[&str], cluster: &str| VirtualHost {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes: vec![Route {
                name: cluster.into(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        cluster.into(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        };
        let rc = RouteConfiguration {
            name: "web".into(),
            virtual_hosts: vec![
                vhost(&["web", "web.default.svc:80", "10.96.0.1"], "v1"),
                vhost(&["Admin.Example", "*.internal"], "v2"),
            ],
            ..Default::default()
        };
        let (r, vip) = http_listener_with(&rc);
        let routing = r.compile(&RequestRegistry::default(), &EndpointRegistry::default());
        let service = routing
            .service(&vip)
            .unwrap_or_else(|| panic!("no service"));
        let headers = hyper::HeaderMap::new();
        let pick = |authority: Option<&str>| {
            let view = crate::route::RequestView {
                method: &hyper::Method::GET,
                authority,
                path: "/",
                query: None,
                headers: &headers,
            };
            service.route(&view).map(|route| route.name.clone())
        };
        assert_eq!(pick(Some("web")).as_deref(), Some("v1"));
        assert_eq!(pick(Some("web.default.svc:80")).as_deref(), Some("v1"));
        assert_eq!(
            pick(Some("admin.example:8080")).as_deref(),
            Some("v2"),
            "port and case"
        );
        assert_eq!(
            pick(Some("db.internal")).as_deref(),
            Some("v2"),
            "suffix wildcard"
        );
        assert_eq!(
            pick(Some("elsewhere")).as_deref(),
            Some("v1"),
            "no match: the first"
        );
        assert_eq!(pick(None).as_deref(), Some("v1"));
    }

    #[test]
    fn route_tables_decode_matches_and_route_per_request() {
        use mesh_proto::envoy::config::route::v3::{
            HeaderMatcher, Route, RouteAction, VirtualHost,
        };
        let route = |name: &str, headers: Vec<HeaderMatcher>, cluster: &str| Route {
            name: name.into(),
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                headers,
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.into())),
                ..Default::default()
            })),
            ..Default::default()
        };
        let canary = HeaderMatcher {
            name: "x-canary".into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                StringMatcher {
                    match_pattern: Some(MatchPattern::Exact("1".into())),
                    ignore_case: false,
                },
            )),
            ..Default::default()
        };
        let rc = RouteConfiguration {
            name: "web".into(),
            virtual_hosts: vec![VirtualHost {
                routes: vec![
                    route("canary", vec![canary], "v2"),
                    route("default", vec![], "v1"),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let (mut r, vip) = http_listener_with(&rc);
        r.clusters.insert("v1".into(), ClusterDef::default());
        r.clusters.insert("v2".into(), ClusterDef::default());
        r.endpoints = endpoints(&[
            cla("v1", &[("10.0.0.3", 8080)]),
            cla("v2", &[("10.0.0.4", 8080)]),
        ])
        .unwrap_or_default();
        let routing = r.compile(&RequestRegistry::default(), &EndpointRegistry::default());
        let service = routing
            .service(&vip)
            .unwrap_or_else(|| panic!("no service"));
        let mut headers = hyper::HeaderMap::new();
        let pick = |headers: &hyper::HeaderMap| {
            let view = crate::route::RequestView {
                method: &hyper::Method::GET,
                authority: None,
                path: "/",
                query: None,
                headers,
            };
            service.route(&view).map(|route| route.name.clone())
        };
        assert_eq!(pick(&headers).as_deref(), Some("default"));
        headers.insert("x-canary", hyper::header::HeaderValue::from_static("1"));
        assert_eq!(pick(&headers).as_deref(), Some("canary"));
        assert_eq!(
            service.pick(0).map(|(ep, _)| ep.addr.to_string()),
            Ok("10.0.0.3:8080".into()),
            "L4 uses the catch-all route"
        );

        let mut bad = rc.clone();
        bad.virtual_hosts[0].routes[0].r#match = Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::SafeRegex(
                mesh_proto::envoy::r#type::matcher::v3::RegexMatcher {
                    regex: "([".into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        });
        let err = routes(&[to_any(type_url::ROUTE, &bad)])
            .err()
            .unwrap_or_default();
        assert!(
            err.starts_with("route table web: route canary: invalid regular expression `([`"),
            "{err}"
        );
    }
}
