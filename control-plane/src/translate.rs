//! The desired state, translated to xDS (a pure function).
//!
//! For every port of every Service:
//! - a `Listener` named `<name>.<namespace>.svc:<port>` on `VIP:port`: an HTTP connection manager
//!   that loads the route table of the same name over ADS, or for opaque ports (`appProtocol`
//!   `tcp`/`opaque`) a TCP proxy to the port's cluster;
//! - a `RouteConfiguration` of the same name: one virtual host for the Service's names and VIP,
//!   the routes of every HTTPRoute attached to that port in Gateway API precedence order, and a
//!   final catch-all route to the Service itself unless a rule already matches everything;
//! - a `Cluster` of the same name (EDS over ADS, round robin);
//! - a `ClusterLoadAssignment`: the workloads whose labels match the selector, on the target port.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use mesh_proto::envoy::config::cluster::v3::{Cluster, cluster};
use mesh_proto::envoy::config::cluster::v3::{LoadBalancingPolicy, load_balancing_policy};
use mesh_proto::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, Locality, SocketAddress,
    TrafficDirection, address, config_source::ConfigSourceSpecifier, socket_address,
};
use mesh_proto::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use mesh_proto::envoy::config::core::v3::{Metadata, TypedExtensionConfig};
use mesh_proto::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use mesh_proto::envoy::config::listener::v3::{ApiListener, Filter, FilterChain, Listener, filter};
use mesh_proto::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, header_matcher,
    query_parameter_matcher, route, route_action, route_match, weighted_cluster::ClusterWeight,
};
use mesh_proto::envoy::config::route::v3::{RedirectAction, redirect_action};
use mesh_proto::envoy::extensions::filters::http::router::v3::Router;
use mesh_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::RouteSpecifier, http_filter,
};
use mesh_proto::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use mesh_proto::envoy::extensions::load_balancing_policies::least_request::v3::LeastRequest;
use mesh_proto::envoy::extensions::load_balancing_policies::round_robin::v3::RoundRobin;
use mesh_proto::envoy::r#type::matcher::v3::RegexMatchAndSubstitute;
use mesh_proto::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use mesh_proto::google::protobuf::Any;
use mesh_proto::google::protobuf::{Duration, UInt32Value};
use mesh_proto::google::protobuf::{Struct, Value, value};
use mesh_proto::{prost::Name, to_any, type_url};

use crate::resource::*;
use crate::snapshot::{Snapshot, XdsType};
use crate::state::State;
use crate::validate::parse_gateway_duration;

pub const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
pub const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";
const TCP_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// The xDS name of a Service port: `<name>.<namespace>.svc:<port>`.
pub fn port_name(namespace: &str, name: &str, port: u16) -> String {
    format!("{name}.{namespace}.svc:{port}")
}

/// Whether a Service port carries opaque TCP (no HTTP routing, no protocol detection).
pub fn is_opaque(port: &ServicePort) -> bool {
    matches!(port.app_protocol.as_deref(), Some("tcp" | "opaque" | "tls"))
}

/// Builds the snapshot for `state` plus the workloads that sidecars registered themselves.
pub fn translate(state: &State, registered: &[Workload], generation: u64) -> Snapshot {
    let mut snapshot = Snapshot::new(generation);
    // (workload, has a sidecar): registered workloads came from sidecars.
    let workloads = WorkloadIndex::new(
        state
            .workloads()
            .map(|w| (w, false))
            .chain(registered.iter().map(|w| (w, true)))
            .collect(),
    );
    // What the listeners and clusters name, for `/v1/wait` (see `Snapshot::referenced`).
    let (mut route_tables, mut endpoint_sets) = (BTreeSet::new(), BTreeSet::new());
    for service in state.services() {
        let Some(vip) = service.spec.vip else {
            continue;
        };
        for port in &service.spec.ports {
            let name = port_name(
                &service.metadata.namespace,
                &service.metadata.name,
                port.port,
            );
            let listener = listener(&name, SocketAddr::new(vip, port.port), is_opaque(port));
            snapshot.insert(
                XdsType::Listener,
                name.clone(),
                to_any(type_url::LISTENER, &listener),
            );
            if !is_opaque(port) {
                // For proxyless gRPC clients, which dial xds:///<name>.<ns>.svc.cluster.local:<port>.
                let target = api_listener_name(
                    &service.metadata.namespace,
                    &service.metadata.name,
                    port.port,
                );
                let api = api_listener(&target, &name);
                snapshot.insert(XdsType::Listener, target, to_any(type_url::LISTENER, &api));
            }
            if !is_opaque(port) {
                // Named by the listener above and by the API listener.
                route_tables.insert(name.clone());
                let routes = route_configuration(state, service, port, &name);
                snapshot.insert(
                    XdsType::Route,
                    name.clone(),
                    to_any(type_url::ROUTE, &routes),
                );
            }
            snapshot.insert(
                XdsType::Cluster,
                name.clone(),
                to_any(
                    type_url::CLUSTER,
                    &eds_cluster(&name, algorithm_of(state, service)),
                ),
            );
            // Named by the cluster above (its EDS service name is its own).
            endpoint_sets.insert(name.clone());
            let cla = load_assignment(&name, service, port, &workloads);
            snapshot.insert(XdsType::Endpoint, name, to_any(type_url::ENDPOINT, &cla));
        }
    }
    // Each sidecar's inbound security policy, under its workload's name.
    for workload in registered {
        let policy = crate::security::workload_policy(state, workload);
        snapshot.insert(
            XdsType::Policy,
            policy.name.clone(),
            to_any(type_url::WORKLOAD_POLICY, &policy),
        );
    }
    snapshot.set_referenced(XdsType::Route, route_tables);
    snapshot.set_referenced(XdsType::Endpoint, endpoint_sets);
    snapshot
}

fn socket_address(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: socket_address::Protocol::Tcp as i32,
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..Default::default()
        })),
    }
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn listener(name: &str, addr: SocketAddr, opaque: bool) -> Listener {
    let filter = if opaque {
        let tcp = TcpProxy {
            stat_prefix: name.to_string(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(name.to_string())),
            ..Default::default()
        };
        Filter {
            name: TCP_PROXY_FILTER.into(),
            config_type: Some(filter::ConfigType::TypedConfig(to_any(
                TCP_PROXY_TYPE,
                &tcp,
            ))),
        }
    } else {
        let hcm = http_connection_manager(name);
        Filter {
            name: HCM_FILTER.into(),
            config_type: Some(filter::ConfigType::TypedConfig(to_any(
                type_url::HTTP_CONNECTION_MANAGER,
                &hcm,
            ))),
        }
    };
    Listener {
        name: name.to_string(),
        address: Some(socket_address(addr)),
        filter_chains: vec![FilterChain {
            filters: vec![filter],
            ..Default::default()
        }],
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

/// The Listener name a proxyless gRPC client asks for: the host:port it dials.
pub fn api_listener_name(namespace: &str, name: &str, port: u16) -> String {
    format!("{name}.{namespace}.svc.cluster.local:{port}")
}

fn http_connection_manager(route_name: &str) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: route_name.to_string(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_name.to_string(),
        })),
        http_filters: vec![HttpFilter {
            name: ROUTER_FILTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(to_any(
                type_url::ROUTER,
                &Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A listener without a socket: the HTTP connection manager a proxyless client runs in-process.
fn api_listener(name: &str, route_name: &str) -> Listener {
    Listener {
        name: name.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(to_any(
                type_url::HTTP_CONNECTION_MANAGER,
                &http_connection_manager(route_name),
            )),
        }),
        ..Default::default()
    }
}

/// The balancing algorithm of `service`: its BackendPolicy's, or P2C peak-EWMA.
fn algorithm_of(state: &State, service: &Service) -> Algorithm {
    state
        .policies()
        .find(|p| {
            p.metadata.namespace == service.metadata.namespace
                && p.spec.target_ref.name == service.metadata.name
        })
        .map(|p| p.spec.load_balancer.algorithm)
        .unwrap_or_default()
}

/// `load_balancing_policy` for least-request, falling back to round robin for clients that do
/// not know it (a client takes the first policy it supports; gRPC rejects `lb_policy:
/// LEAST_REQUEST` outright, so the legacy field always says ROUND_ROBIN).
fn least_request_policy() -> LoadBalancingPolicy {
    let policy = |name: &str, any: Any| load_balancing_policy::Policy {
        typed_extension_config: Some(TypedExtensionConfig {
            name: name.to_string(),
            typed_config: Some(any),
        }),
    };
    LoadBalancingPolicy {
        policies: vec![
            policy(
                "envoy.load_balancing_policies.least_request",
                to_any(&LeastRequest::type_url(), &LeastRequest::default()),
            ),
            policy(
                "envoy.load_balancing_policies.round_robin",
                to_any(&RoundRobin::type_url(), &RoundRobin::default()),
            ),
        ],
    }
}

/// An EDS cluster. Peak-EWMA has no Envoy equivalent: other clients get least-request, and
/// mesh-proxy reads `lb: peak_ewma` in the cluster's `mesh` metadata.
fn eds_cluster(name: &str, algorithm: Algorithm) -> Cluster {
    let lb_policy = cluster::LbPolicy::RoundRobin;
    let load_balancing_policy = (algorithm != Algorithm::RoundRobin).then(least_request_policy);
    let metadata = (algorithm == Algorithm::PeakEwma).then(|| Metadata {
        filter_metadata: std::collections::HashMap::from([(
            "mesh".to_string(),
            Struct {
                fields: std::collections::BTreeMap::from([(
                    "lb".to_string(),
                    Value {
                        kind: Some(value::Kind::StringValue("peak_ewma".into())),
                    },
                )])
                .into_iter()
                .collect(),
            },
        )]),
        ..Default::default()
    });
    Cluster {
        metadata,
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(Duration {
            seconds: 5,
            nanos: 0,
        }),
        lb_policy: lb_policy as i32,
        load_balancing_policy,
        ..Default::default()
    }
}

/// `filter_metadata.mesh.<key>: value`.
fn mesh_metadata(key: &str, v: Value) -> Metadata {
    Metadata {
        filter_metadata: std::collections::HashMap::from([(
            "mesh".to_string(),
            Struct {
                fields: std::iter::once((key.to_string(), v)).collect(),
            },
        )]),
        ..Default::default()
    }
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(value::Kind::StringValue(s.to_string())),
    }
}

/// `mesh.sidecar: "ns/<namespace>/sa/<service-account>"`: the endpoint has a sidecar, whose
/// identity is that path of a SPIFFE ID in the mesh's trust domain. (One field: a protobuf
/// `Struct` with more would encode its map in a different order each time, and every snapshot
/// would look changed.)
fn sidecar_metadata(w: &Workload) -> Metadata {
    mesh_metadata(
        "sidecar",
        string_value(&format!(
            "ns/{}/sa/{}",
            w.metadata.namespace, w.spec.service_account
        )),
    )
}

fn selects(selector: &std::collections::BTreeMap<String, String>, workload: &Workload) -> bool {
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| workload.metadata.labels.get(k) == Some(v))
}

/// Workloads (and whether each has a sidecar) indexed by namespace and label, so that finding a
/// Service's endpoints looks only at workloads that carry one of its selector's labels.
struct WorkloadIndex<'a> {
    all: Vec<(&'a Workload, bool)>,
    by_label: HashMap<(&'a str, &'a str, &'a str), Vec<usize>>,
}

impl<'a> WorkloadIndex<'a> {
    fn new(all: Vec<(&'a Workload, bool)>) -> WorkloadIndex<'a> {
        let mut by_label: HashMap<_, Vec<usize>> = HashMap::new();
        for (i, (w, _)) in all.iter().enumerate() {
            for (k, v) in &w.metadata.labels {
                by_label
                    .entry((w.metadata.namespace.as_str(), k.as_str(), v.as_str()))
                    .or_default()
                    .push(i);
            }
        }
        WorkloadIndex { all, by_label }
    }

    /// The workloads in `service`'s namespace that its selector selects.
    fn selected<'s>(
        &'s self,
        service: &'s Service,
    ) -> impl Iterator<Item = &'s (&'a Workload, bool)> + 's {
        let candidates = service
            .spec
            .selector
            .iter()
            .next()
            .and_then(|(k, v)| {
                self.by_label
                    .get(&(service.metadata.namespace.as_str(), k.as_str(), v.as_str()))
            })
            .map_or(&[][..], Vec::as_slice);
        candidates
            .iter()
            .filter_map(|&i| self.all.get(i))
            .filter(|(w, _)| selects(&service.spec.selector, w))
    }
}

fn load_assignment(
    name: &str,
    service: &Service,
    port: &ServicePort,
    workloads: &WorkloadIndex<'_>,
) -> ClusterLoadAssignment {
    // By address; an address with a sidecar counts as meshed, with its sidecar's identity.
    let mut addrs: BTreeMap<SocketAddr, Option<&Workload>> = BTreeMap::new();
    for (w, sidecar) in workloads.selected(service) {
        let entry = addrs
            .entry(SocketAddr::new(w.spec.address, port.target()))
            .or_default();
        if *sidecar {
            *entry = Some(w);
        }
    }
    let lb_endpoints = addrs
        .into_iter()
        .map(|(addr, sidecar)| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(socket_address(addr)),
                ..Default::default()
            })),
            // Endpoints with a sidecar are reached through it (HTTP/2, mutual TLS); its identity
            // is what the client side verifies.
            metadata: sidecar.map(sidecar_metadata),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            // gRPC requires a locality and ignores localities without a weight.
            locality: Some(Locality::default()),
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// One HTTPRoute match with its rule, for precedence sorting.
struct Candidate<'a> {
    route: &'a HttpRoute,
    rule: &'a HttpRouteRule,
    matched: HttpRouteMatch,
}

/// Gateway API precedence: exact path, then longest prefix, then method, then most headers, then
/// most query parameters; ties go to the route that sorts first by namespace/name.
fn precedence(c: &Candidate<'_>) -> impl Ord + use<> {
    let (exact, prefix_len) = match &c.matched.path {
        Some(p) if p.kind == PathMatchType::Exact => (true, p.value.len()),
        Some(p) if p.kind == PathMatchType::PathPrefix => (false, p.value.len()),
        Some(_) => (false, 0),
        None => (false, 1),
    };
    (
        Reverse(exact),
        Reverse(prefix_len),
        Reverse(c.matched.method.is_some()),
        Reverse(c.matched.headers.len()),
        Reverse(c.matched.query_params.len()),
        c.route.metadata.namespace.clone(),
        c.route.metadata.name.clone(),
    )
}

fn route_configuration(
    state: &State,
    service: &Service,
    port: &ServicePort,
    name: &str,
) -> RouteConfiguration {
    let ns = &service.metadata.namespace;
    let mut candidates = Vec::new();
    for route in state.routes() {
        let attached = route.spec.parent_refs.iter().any(|p| {
            p.name == service.metadata.name
                && p.namespace.as_deref().unwrap_or(&route.metadata.namespace) == ns
                && p.port.is_none_or(|pp| pp == port.port)
        });
        if !attached {
            continue;
        }
        for rule in &route.spec.rules {
            let matches = if rule.matches.is_empty() {
                vec![HttpRouteMatch::default()]
            } else {
                rule.matches.clone()
            };
            candidates.extend(matches.into_iter().map(|matched| Candidate {
                route,
                rule,
                matched,
            }));
        }
    }
    candidates.sort_by_key(precedence);
    let has_catch_all = candidates.iter().any(|c| c.matched.is_catch_all());
    let mut routes: Vec<Route> = candidates
        .iter()
        .map(|c| {
            let mut route = Route {
                name: format!("{}/{}", c.route.metadata.namespace, c.route.metadata.name),
                r#match: Some(route_match(&c.matched)),
                action: Some(rule_action(c.rule, &c.route.metadata.namespace)),
                ..Default::default()
            };
            apply_filters(&mut route, c.rule);
            route
        })
        .collect();
    if !has_catch_all {
        routes.push(Route {
            name: "default".into(),
            r#match: Some(route_match(&HttpRouteMatch::default())),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(name.to_string())),
                ..Default::default()
            })),
            ..Default::default()
        });
    }
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_string(),
            domains: domains(service, port.port),
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn domains(service: &Service, port: u16) -> Vec<String> {
    let (n, ns) = (&service.metadata.name, &service.metadata.namespace);
    let mut hosts = vec![
        n.clone(),
        format!("{n}.{ns}"),
        format!("{n}.{ns}.svc"),
        format!("{n}.{ns}.svc.cluster.local"),
    ];
    if let Some(vip) = service.spec.vip {
        hosts.push(match vip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        });
    }
    let with_port: Vec<String> = hosts.iter().map(|h| format!("{h}:{port}")).collect();
    hosts.extend(with_port);
    hosts
}

fn string_matcher(kind: ValueMatchType, value: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(match kind {
            ValueMatchType::Exact => MatchPattern::Exact(value.to_string()),
            ValueMatchType::RegularExpression => MatchPattern::SafeRegex(RegexMatcher {
                regex: value.to_string(),
                ..Default::default()
            }),
        }),
        ignore_case: false,
    }
}

fn route_match(m: &HttpRouteMatch) -> RouteMatch {
    let path = match &m.path {
        None => route_match::PathSpecifier::Prefix("/".into()),
        Some(p) => match p.kind {
            PathMatchType::Exact => route_match::PathSpecifier::Path(p.value.clone()),
            // Gateway API prefixes match whole path segments.
            PathMatchType::PathPrefix if p.value == "/" => {
                route_match::PathSpecifier::Prefix("/".into())
            }
            PathMatchType::PathPrefix => route_match::PathSpecifier::PathSeparatedPrefix(
                p.value.trim_end_matches('/').to_string(),
            ),
            PathMatchType::RegularExpression => {
                route_match::PathSpecifier::SafeRegex(RegexMatcher {
                    regex: p.value.clone(),
                    ..Default::default()
                })
            }
        },
    };
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .map(|h| HeaderMatcher {
            name: h.name.to_ascii_lowercase(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                string_matcher(h.kind, &h.value),
            )),
            ..Default::default()
        })
        .collect();
    if let Some(method) = m.method {
        let text = serde_json::to_value(method)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        headers.push(HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                string_matcher(ValueMatchType::Exact, &text),
            )),
            ..Default::default()
        });
    }
    let query_parameters = m
        .query_params
        .iter()
        .map(|q| QueryParameterMatcher {
            name: q.name.clone(),
            query_parameter_match_specifier: Some(
                query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(string_matcher(
                    q.kind, &q.value,
                )),
            ),
        })
        .collect();
    RouteMatch {
        path_specifier: Some(path),
        headers,
        query_parameters,
        ..Default::default()
    }
}

fn header_options(set: &[NamedValue], add: &[NamedValue]) -> Vec<HeaderValueOption> {
    let option = |h: &NamedValue, action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: h.name.to_ascii_lowercase(),
            value: h.value.clone(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    set.iter()
        .map(|h| option(h, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .chain(
            add.iter()
                .map(|h| option(h, HeaderAppendAction::AppendIfExistsOrAdd)),
        )
        .collect()
}

/// Gateway API filters as Envoy route fields: header modifiers, a redirect (which replaces the
/// forwarding action), and a URL rewrite (on the forwarding action).
fn apply_filters(route: &mut Route, rule: &HttpRouteRule) {
    for f in &rule.filters {
        if let Some(m) = &f.request_header_modifier {
            route
                .request_headers_to_add
                .extend(header_options(&m.set, &m.add));
            route
                .request_headers_to_remove
                .extend(m.remove.iter().map(|h| h.to_ascii_lowercase()));
        }
        if let Some(m) = &f.response_header_modifier {
            route
                .response_headers_to_add
                .extend(header_options(&m.set, &m.add));
            route
                .response_headers_to_remove
                .extend(m.remove.iter().map(|h| h.to_ascii_lowercase()));
        }
        if let Some(r) = &f.request_redirect {
            let path = r.path.as_ref().map(|p| match p.kind {
                PathModifierType::ReplaceFullPath => {
                    redirect_action::PathRewriteSpecifier::PathRedirect(
                        p.replace_full_path.clone().unwrap_or_default(),
                    )
                }
                PathModifierType::ReplacePrefixMatch => {
                    redirect_action::PathRewriteSpecifier::PrefixRewrite(
                        p.replace_prefix_match.clone().unwrap_or_default(),
                    )
                }
            });
            route.action = Some(route::Action::Redirect(RedirectAction {
                scheme_rewrite_specifier: r
                    .scheme
                    .clone()
                    .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
                host_redirect: r.hostname.clone().unwrap_or_default(),
                port_redirect: u32::from(r.port.unwrap_or(0)),
                path_rewrite_specifier: path,
                response_code: if r.status_code == 301 {
                    redirect_action::RedirectResponseCode::MovedPermanently as i32
                } else {
                    redirect_action::RedirectResponseCode::Found as i32
                },
                ..Default::default()
            }));
        }
        if let (Some(w), Some(route::Action::Route(action))) =
            (&f.url_rewrite, route.action.as_mut())
        {
            if let Some(host) = &w.hostname {
                action.host_rewrite_specifier = Some(
                    route_action::HostRewriteSpecifier::HostRewriteLiteral(host.clone()),
                );
            }
            match w.path.as_ref().map(|p| (p.kind, p)) {
                Some((PathModifierType::ReplacePrefixMatch, p)) => {
                    action.prefix_rewrite = p.replace_prefix_match.clone().unwrap_or_default();
                }
                Some((PathModifierType::ReplaceFullPath, p)) => {
                    action.regex_rewrite = Some(RegexMatchAndSubstitute {
                        pattern: Some(RegexMatcher {
                            regex: "^/.*$".into(),
                            ..Default::default()
                        }),
                        substitution: p.replace_full_path.clone().unwrap_or_default(),
                    });
                }
                None => {}
            }
        }
    }
}

fn rule_action(rule: &HttpRouteRule, route_ns: &str) -> route::Action {
    let backends: Vec<(String, u32)> = rule
        .backend_refs
        .iter()
        .filter(|b| b.weight > 0)
        .map(|b| {
            (
                port_name(
                    b.namespace.as_deref().unwrap_or(route_ns),
                    &b.name,
                    b.port.unwrap_or(0),
                ),
                b.weight,
            )
        })
        .collect();
    let cluster_specifier = match backends.as_slice() {
        // Gateway API: a rule without usable backends answers 500.
        [] => {
            return route::Action::DirectResponse(DirectResponseAction {
                status: 500,
                ..Default::default()
            });
        }
        [(one, _)] => route_action::ClusterSpecifier::Cluster(one.clone()),
        many => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .map(|(name, weight)| ClusterWeight {
                    name: name.clone(),
                    weight: Some(UInt32Value { value: *weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    let timeout = rule
        .timeouts
        .as_ref()
        .and_then(|t| t.request.as_deref())
        .and_then(|d| parse_gateway_duration(d).ok())
        .map(|ms| Duration {
            seconds: (ms / 1000) as i64,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        });
    route::Action::Route(RouteAction {
        cluster_specifier: Some(cluster_specifier),
        timeout,
        ..Default::default()
    })
}

/// The type URL a message type declares (for tests and callers that decode).
pub fn declared_type_url<M: Name>() -> String {
    M::type_url()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_documents;
    use crate::vip::VipRange;
    use mesh_proto::prost::Message;

    const STATE: &str = "
apiVersion: mesh.dev/v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80, targetPort: 8080}, {port: 6379, appProtocol: tcp}], selector: {app: web}}
---
apiVersion: mesh.dev/v1
kind: Service
metadata: {name: web-v2}
spec: {ports: [{port: 80, targetPort: 8080}], selector: {app: web, version: v2}}
---
apiVersion: mesh.dev/v1
kind: Workload
metadata: {name: b, labels: {app: web, version: v1}}
spec: {address: 10.0.0.3}
---
apiVersion: mesh.dev/v1
kind: Workload
metadata: {name: c, labels: {app: web, version: v2}}
spec: {address: 10.0.0.4}
";

    fn state(extra: &str) -> State {
        let docs =
            parse_documents(&format!("{STATE}\n---\n{extra}")).unwrap_or_else(|e| panic!("{e}"));
        State::default()
            .apply(docs, &VipRange::default())
            .unwrap_or_else(|e| panic!("{e}"))
            .0
    }

    fn decode<M: Message + Default>(s: &Snapshot, ty: XdsType, name: &str) -> M {
        let entry = s
            .get(ty, name)
            .unwrap_or_else(|| panic!("no {ty:?} {name}"));
        M::decode(entry.any.value.as_slice()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_service_port_gets_listener_cluster_and_endpoints() {
        let s = translate(&state(""), &[], 1);
        assert_eq!(
            s.names(XdsType::Listener),
            vec![
                "web-v2.default.svc.cluster.local:80",
                "web-v2.default.svc:80",
                "web.default.svc.cluster.local:80",
                "web.default.svc:6379",
                "web.default.svc:80",
            ],
            "socket listeners, and api listeners for proxyless gRPC on HTTP ports"
        );
        let api: Listener = decode(&s, XdsType::Listener, "web.default.svc.cluster.local:80");
        assert!(api.address.is_none());
        let hcm = api
            .api_listener
            .and_then(|a| a.api_listener)
            .map(|any| any.type_url);
        assert_eq!(hcm.as_deref(), Some(type_url::HTTP_CONNECTION_MANAGER));
        assert_eq!(
            s.names(XdsType::Route),
            vec!["web-v2.default.svc:80", "web.default.svc:80"],
            "no routes for opaque ports"
        );
        let l: Listener = decode(&s, XdsType::Listener, "web.default.svc:80");
        let Some(address::Address::SocketAddress(sa)) = l.address.and_then(|a| a.address) else {
            panic!("no address")
        };
        assert_eq!(
            (sa.address.as_str(), sa.port_specifier),
            (
                "10.96.0.1",
                Some(socket_address::PortSpecifier::PortValue(80))
            )
        );
        let opaque: Listener = decode(&s, XdsType::Listener, "web.default.svc:6379");
        assert_eq!(opaque.filter_chains[0].filters[0].name, TCP_PROXY_FILTER);

        let cla: ClusterLoadAssignment = decode(&s, XdsType::Endpoint, "web.default.svc:80");
        let addrs: Vec<String> = cla.endpoints[0]
            .lb_endpoints
            .iter()
            .filter_map(|e| match &e.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                    match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
                        Some(address::Address::SocketAddress(sa)) => {
                            Some(format!("{}:{:?}", sa.address, sa.port_specifier))
                        }
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            addrs,
            vec![
                "10.0.0.3:Some(PortValue(8080))",
                "10.0.0.4:Some(PortValue(8080))"
            ]
        );
        let v2: ClusterLoadAssignment = decode(&s, XdsType::Endpoint, "web-v2.default.svc:80");
        assert_eq!(
            v2.endpoints[0].lb_endpoints.len(),
            1,
            "selector picks only v2"
        );
    }

    #[test]
    fn registered_workloads_count_as_endpoints() {
        let extra = parse_documents("apiVersion: mesh.dev/v1\nkind: Workload\nmetadata: {name: d, labels: {app: web, version: v2}}\nspec: {address: 10.0.0.9}\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let Some(Resource::Workload(w)) = extra.into_iter().next() else {
            panic!("no workload")
        };
        let s = translate(&state(""), &[w], 1);
        let v2: ClusterLoadAssignment = decode(&s, XdsType::Endpoint, "web-v2.default.svc:80");
        assert_eq!(v2.endpoints[0].lb_endpoints.len(), 2);
    }

    #[test]
    fn routes_follow_gateway_precedence_and_end_with_a_catch_all() {
        let route = "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: Exact, value: /api/health}}, {headers: [{name: X-Canary, value: '1'}]}]
    backendRefs: [{name: web, port: 80, weight: 90}, {name: web-v2, port: 80, weight: 10}]
    timeouts: {request: 1500ms}
";
        let s = translate(&state(route), &[], 1);
        let rc: RouteConfiguration = decode(&s, XdsType::Route, "web.default.svc:80");
        let routes = &rc.virtual_hosts[0].routes;
        let paths: Vec<_> = routes
            .iter()
            .map(|r| r.r#match.as_ref().and_then(|m| m.path_specifier.clone()))
            .collect();
        assert_eq!(
            paths,
            vec![
                Some(route_match::PathSpecifier::Path("/api/health".into())),
                Some(route_match::PathSpecifier::PathSeparatedPrefix(
                    "/api".into()
                )),
                Some(route_match::PathSpecifier::Prefix("/".into())),
                Some(route_match::PathSpecifier::Prefix("/".into())),
            ]
        );
        assert_eq!(
            routes[2]
                .r#match
                .as_ref()
                .map(|m| m.headers[0].name.as_str()),
            Some("x-canary")
        );
        assert_eq!(
            routes[3].name, "default",
            "implicit route to the service itself comes last"
        );
        let Some(route::Action::Route(action)) = &routes[0].action else {
            panic!("no action")
        };
        assert_eq!(
            action.timeout,
            Some(Duration {
                seconds: 1,
                nanos: 500_000_000
            })
        );
        let Some(route_action::ClusterSpecifier::WeightedClusters(wc)) = &action.cluster_specifier
        else {
            panic!("not weighted")
        };
        let weights: Vec<_> = wc
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c.weight.map(|w| w.value)))
            .collect();
        assert_eq!(
            weights,
            vec![
                ("web.default.svc:80", Some(90)),
                ("web-v2.default.svc:80", Some(10))
            ]
        );
        assert!(
            rc.virtual_hosts[0]
                .domains
                .contains(&"web.default.svc.cluster.local:80".to_string())
        );
        assert!(
            rc.virtual_hosts[0]
                .domains
                .contains(&"10.96.0.1".to_string())
        );
        // The other Service is untouched by this route.
        let other: RouteConfiguration = decode(&s, XdsType::Route, "web-v2.default.svc:80");
        assert_eq!(other.virtual_hosts[0].routes.len(), 1);
    }

    #[test]
    fn a_user_catch_all_replaces_the_implicit_default() {
        let route = "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: all-to-v2}
spec:
  parentRefs: [{name: web}]
  rules: [{backendRefs: [{name: web-v2, port: 80}]}]
";
        let s = translate(&state(route), &[], 1);
        let rc: RouteConfiguration = decode(&s, XdsType::Route, "web.default.svc:80");
        assert_eq!(rc.virtual_hosts[0].routes.len(), 1);
        let Some(route::Action::Route(a)) = &rc.virtual_hosts[0].routes[0].action else {
            panic!("no action")
        };
        assert_eq!(
            a.cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster(
                "web-v2.default.svc:80".into()
            ))
        );
    }

    #[test]
    fn type_urls_match_the_messages() {
        assert_eq!(declared_type_url::<Listener>(), type_url::LISTENER);
        assert_eq!(declared_type_url::<RouteConfiguration>(), type_url::ROUTE);
        assert_eq!(declared_type_url::<Cluster>(), type_url::CLUSTER);
        assert_eq!(
            declared_type_url::<ClusterLoadAssignment>(),
            type_url::ENDPOINT
        );
        assert_eq!(
            declared_type_url::<HttpConnectionManager>(),
            type_url::HTTP_CONNECTION_MANAGER
        );
        assert_eq!(declared_type_url::<TcpProxy>(), TCP_PROXY_TYPE);
        assert_eq!(declared_type_url::<Router>(), type_url::ROUTER);
    }

    #[test]
    fn clusters_balance_by_policy_with_peak_ewma_as_the_default() {
        let policy = "apiVersion: mesh.dev/v1\nkind: BackendPolicy\nmetadata: {name: rr}\nspec: {targetRef: {name: web-v2}, loadBalancer: {algorithm: RoundRobin}}\n";
        let s = translate(&state(policy), &[], 1);
        let default: Cluster = decode(&s, XdsType::Cluster, "web.default.svc:80");
        assert_eq!(
            default.lb_policy,
            cluster::LbPolicy::RoundRobin as i32,
            "the legacy field every client knows"
        );
        let policies = default
            .load_balancing_policy
            .as_ref()
            .map(|p| p.policies.len());
        assert_eq!(
            policies,
            Some(2),
            "least-request, then round robin as the fallback"
        );
        let lb = default
            .metadata
            .as_ref()
            .and_then(|m| m.filter_metadata.get("mesh"))
            .and_then(|s| s.fields.get("lb"));
        assert_eq!(
            lb.and_then(|v| v.kind.clone()),
            Some(value::Kind::StringValue("peak_ewma".into()))
        );
        let rr: Cluster = decode(&s, XdsType::Cluster, "web-v2.default.svc:80");
        assert_eq!(rr.lb_policy, cluster::LbPolicy::RoundRobin as i32);
        assert!(rr.metadata.is_none() && rr.load_balancing_policy.is_none());
    }
}
