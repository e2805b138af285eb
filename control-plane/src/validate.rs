//! Checks beyond the shape of the YAML: names, ports, values; and references between resources.

use std::collections::HashSet;

use crate::resource::*;

/// A failed check: the field path and what is wrong.
pub type FieldProblem = (String, String);

/// Checks one resource on its own.
pub fn check_resource(r: &Resource) -> Result<(), FieldProblem> {
    let m = r.metadata();
    dns_label("metadata.name", &m.name)?;
    dns_label("metadata.namespace", &m.namespace)?;
    match r {
        Resource::Service(s) => check_service(&s.spec),
        Resource::Workload(w) => check_workload(&w.spec),
        Resource::HttpRoute(h) => check_route(&h.spec),
        Resource::BackendPolicy(p) => match p.spec.target_ref.kind.as_deref() {
            None | Some("Service") => Ok(()),
            Some(other) => problem(
                "spec.targetRef.kind",
                format!("`{other}` is not supported (only Service)"),
            ),
        },
        Resource::PeerAuthentication(p) => check_peer_authentication(&p.spec),
        Resource::AuthorizationPolicy(a) => check_authorization(&a.spec),
    }
}

fn check_peer_authentication(spec: &PeerAuthenticationSpec) -> Result<(), FieldProblem> {
    match spec.mtls.as_ref().map(|m| m.mode) {
        Some(MtlsMode::Disable) => problem(
            "spec.mtls.mode",
            "DISABLE is not supported: sidecars always accept mutual TLS from the mesh (use PERMISSIVE to accept plaintext as well)",
        ),
        _ => Ok(()),
    }
}

/// A principal pattern: `*`, or a SPIFFE ID path with at most one `*`, at its start or end.
fn principal_ok(p: &str) -> bool {
    let p = p.strip_prefix("spiffe://").unwrap_or(p);
    let stars = p.matches('*').count();
    !p.is_empty()
        && (stars == 0 || (stars == 1 && (p.starts_with('*') || p.ends_with('*'))))
        && !p.contains(char::is_whitespace)
}

fn check_authorization(spec: &AuthorizationPolicySpec) -> Result<(), FieldProblem> {
    for (i, rule) in spec.rules.iter().enumerate() {
        for (j, from) in rule.from.iter().enumerate() {
            let f = format!("spec.rules[{i}].from[{j}].source");
            if from.source.principals.is_empty() && from.source.namespaces.is_empty() {
                return problem(f, "a source needs principals or namespaces");
            }
            for (k, p) in from.source.principals.iter().enumerate() {
                if !principal_ok(p) {
                    return problem(
                        format!("{f}.principals[{k}]"),
                        format!(
                            "`{p}` is not a principal (<trust-domain>/ns/<ns>/sa/<sa>, `*` only at its start or end)"
                        ),
                    );
                }
            }
            for (k, ns) in from.source.namespaces.iter().enumerate() {
                if ns != "*" {
                    dns_label(&format!("{f}.namespaces[{k}]"), ns)?;
                }
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let f = format!("spec.rules[{i}].to[{j}].operation");
            let op = &to.operation;
            if op.ports.is_empty() && op.methods.is_empty() && op.paths.is_empty() {
                return problem(f, "an operation needs ports, methods or paths");
            }
            for (k, port) in op.ports.iter().enumerate() {
                if !port.parse::<u16>().is_ok_and(|p| p > 0) {
                    return problem(
                        format!("{f}.ports[{k}]"),
                        format!("`{port}` is not a port (1-65535, as a string)"),
                    );
                }
            }
            for (k, m) in op.methods.iter().enumerate() {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                    return problem(
                        format!("{f}.methods[{k}]"),
                        format!("`{m}` is not an HTTP method (uppercase, e.g. GET)"),
                    );
                }
            }
            for (k, path) in op.paths.iter().enumerate() {
                let stars = path.matches('*').count();
                let shape = path.starts_with('/') || path.starts_with('*');
                if !shape
                    || stars > 1
                    || (stars == 1 && !(path.starts_with('*') || path.ends_with('*')))
                {
                    return problem(
                        format!("{f}.paths[{k}]"),
                        format!("`{path}` is not a path pattern (/exact, /prefix*, *suffix or *)"),
                    );
                }
            }
        }
    }
    Ok(())
}

fn problem(field: impl Into<String>, message: impl Into<String>) -> Result<(), FieldProblem> {
    Err((field.into(), message.into()))
}

fn dns_label(field: &str, value: &str) -> Result<(), FieldProblem> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        problem(
            field,
            format!(
                "`{value}` is not a valid name (lowercase letters, digits and '-', at most 63)"
            ),
        )
    }
}

fn check_service(spec: &ServiceSpec) -> Result<(), FieldProblem> {
    if spec.ports.is_empty() {
        return problem("spec.ports", "a Service needs at least one port");
    }
    let mut seen = HashSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        if p.port == 0 {
            return problem(format!("{f}.port"), "`0` is not a port (1-65535)");
        }
        if p.target_port == Some(0) {
            return problem(format!("{f}.targetPort"), "`0` is not a port (1-65535)");
        }
        if !seen.insert(p.port) {
            return problem(
                format!("{f}.port"),
                format!("port {} is listed twice", p.port),
            );
        }
        if let Some(proto) = &p.app_protocol {
            if !APP_PROTOCOLS.contains(&proto.as_str()) {
                return problem(
                    format!("{f}.appProtocol"),
                    format!(
                        "`{proto}` is not known (use one of {})",
                        APP_PROTOCOLS.join(", ")
                    ),
                );
            }
        }
    }
    Ok(())
}

fn check_workload(spec: &WorkloadSpec) -> Result<(), FieldProblem> {
    dns_label("spec.serviceAccount", &spec.service_account)?;
    for (i, p) in spec.ports.iter().enumerate() {
        if p.port == 0 {
            return problem(
                format!("spec.ports[{i}].port"),
                "`0` is not a port (1-65535)",
            );
        }
    }
    Ok(())
}

fn check_route(spec: &HttpRouteSpec) -> Result<(), FieldProblem> {
    if spec.parent_refs.is_empty() {
        return problem(
            "spec.parentRefs",
            "an HTTPRoute needs at least one parent Service",
        );
    }
    for (i, p) in spec.parent_refs.iter().enumerate() {
        service_ref(
            &format!("spec.parentRefs[{i}]"),
            p.group.as_deref(),
            p.kind.as_deref(),
        )?;
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let f = format!("spec.rules[{i}]");
        for (j, m) in rule.matches.iter().enumerate() {
            check_match(&format!("{f}.matches[{j}]"), m)?;
        }
        for (j, b) in rule.backend_refs.iter().enumerate() {
            let bf = format!("{f}.backendRefs[{j}]");
            service_ref(&bf, b.group.as_deref(), b.kind.as_deref())?;
            if b.port.is_none() {
                return problem(format!("{bf}.port"), "required for a Service backend");
            }
            if b.weight > 1_000_000 {
                return problem(
                    format!("{bf}.weight"),
                    format!("`{}` is above the maximum 1000000", b.weight),
                );
            }
        }
        check_filters(&f, rule)?;
        if let Some(t) = &rule.timeouts {
            for (name, value) in [
                ("request", &t.request),
                ("backendRequest", &t.backend_request),
            ] {
                if let Some(v) = value {
                    parse_gateway_duration(v).map_err(|e| (format!("{f}.timeouts.{name}"), e))?;
                }
            }
        }
    }
    Ok(())
}

fn check_filters(field: &str, rule: &HttpRouteRule) -> Result<(), FieldProblem> {
    let mut redirect = false;
    let mut rewrite = false;
    for (i, f) in rule.filters.iter().enumerate() {
        let ff = format!("{field}.filters[{i}]");
        let set = [
            (
                "requestHeaderModifier",
                f.request_header_modifier.is_some(),
                FilterType::RequestHeaderModifier,
            ),
            (
                "responseHeaderModifier",
                f.response_header_modifier.is_some(),
                FilterType::ResponseHeaderModifier,
            ),
            (
                "requestRedirect",
                f.request_redirect.is_some(),
                FilterType::RequestRedirect,
            ),
            (
                "urlRewrite",
                f.url_rewrite.is_some(),
                FilterType::UrlRewrite,
            ),
        ];
        for (name, present, kind) in set {
            if present != (f.kind == kind) {
                let why = if present {
                    "is set but the filter's type is another"
                } else {
                    "is required by the filter's type"
                };
                return problem(format!("{ff}.{name}"), why);
            }
        }
        for m in [&f.request_header_modifier, &f.response_header_modifier]
            .into_iter()
            .flatten()
        {
            for (j, h) in m.set.iter().chain(&m.add).enumerate() {
                if h.name.is_empty()
                    || !h
                        .name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
                {
                    return problem(
                        format!("{ff}.headers[{j}].name"),
                        format!("`{}` is not a header name", h.name),
                    );
                }
            }
        }
        let path = f
            .request_redirect
            .as_ref()
            .and_then(|r| r.path.as_ref())
            .or(f.url_rewrite.as_ref().and_then(|r| r.path.as_ref()));
        if let Some(p) = path {
            let (ok, which) = match p.kind {
                PathModifierType::ReplaceFullPath => (
                    p.replace_full_path
                        .as_deref()
                        .is_some_and(|v| v.starts_with('/')),
                    "replaceFullPath",
                ),
                PathModifierType::ReplacePrefixMatch => (
                    p.replace_prefix_match
                        .as_deref()
                        .is_some_and(|v| v.starts_with('/')),
                    "replacePrefixMatch",
                ),
            };
            if !ok {
                return problem(
                    format!("{ff}.path.{which}"),
                    "required, and must start with '/'",
                );
            }
            let prefix_matches = !rule.matches.is_empty()
                && rule.matches.iter().all(|m| {
                    m.path
                        .as_ref()
                        .is_some_and(|p| p.kind == PathMatchType::PathPrefix)
                });
            if p.kind == PathModifierType::ReplacePrefixMatch && !prefix_matches {
                return problem(
                    format!("{ff}.path"),
                    "ReplacePrefixMatch needs every match of the rule to be a PathPrefix",
                );
            }
        }
        if let Some(r) = &f.request_redirect {
            if r.status_code != 301 && r.status_code != 302 {
                return problem(
                    format!("{ff}.requestRedirect.statusCode"),
                    format!("`{}` is not 301 or 302", r.status_code),
                );
            }
            if let Some(s) = &r.scheme {
                if s != "http" && s != "https" {
                    return problem(
                        format!("{ff}.requestRedirect.scheme"),
                        format!("`{s}` is not http or https"),
                    );
                }
            }
            redirect = true;
        }
        rewrite |= f.url_rewrite.is_some();
    }
    if redirect && rewrite {
        return problem(
            format!("{field}.filters"),
            "a rule cannot both redirect and rewrite",
        );
    }
    Ok(())
}

fn service_ref(field: &str, group: Option<&str>, kind: Option<&str>) -> Result<(), FieldProblem> {
    if !matches!(group, None | Some("") | Some("core")) {
        return problem(
            format!("{field}.group"),
            format!(
                "`{}` is not supported (use the core group)",
                group.unwrap_or("")
            ),
        );
    }
    if !matches!(kind, None | Some("Service")) {
        return problem(
            format!("{field}.kind"),
            format!("`{}` is not supported (only Service)", kind.unwrap_or("")),
        );
    }
    Ok(())
}

fn check_match(field: &str, m: &HttpRouteMatch) -> Result<(), FieldProblem> {
    if let Some(p) = &m.path {
        match p.kind {
            PathMatchType::Exact | PathMatchType::PathPrefix if !p.value.starts_with('/') => {
                return problem(
                    format!("{field}.path.value"),
                    format!("`{}` must start with '/'", p.value),
                );
            }
            PathMatchType::RegularExpression => regex_ok(&format!("{field}.path.value"), &p.value)?,
            _ => {}
        }
    }
    for (kind, list) in [("headers", &m.headers), ("queryParams", &m.query_params)] {
        for (i, h) in list.iter().enumerate() {
            let f = format!("{field}.{kind}[{i}]");
            if h.name.is_empty() || !h.name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return problem(
                    format!("{f}.name"),
                    format!("`{}` is not a valid name", h.name),
                );
            }
            if h.kind == ValueMatchType::RegularExpression {
                regex_ok(&format!("{f}.value"), &h.value)?;
            }
        }
    }
    Ok(())
}

fn regex_ok(field: &str, pattern: &str) -> Result<(), FieldProblem> {
    regex::Regex::new(pattern).map(|_| ()).map_err(|e| {
        (
            field.to_string(),
            format!("`{pattern}` is not a valid regular expression: {e}"),
        )
    })
}

/// Parses a Gateway API duration (`1h`, `10s`, `500ms`, `1m30s`) into milliseconds.
pub fn parse_gateway_duration(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a duration (e.g. 10s, 500ms, 1m30s)");
    let mut total = 0u64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1000, 1)
        } else {
            return Err(bad());
        };
        total += n * unit_ms;
        rest = &rest[len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_durations() {
        assert_eq!(parse_gateway_duration("10s"), Ok(10_000));
        assert_eq!(parse_gateway_duration("1m30s"), Ok(90_000));
        assert_eq!(parse_gateway_duration("250ms"), Ok(250));
        assert_eq!(parse_gateway_duration("1h"), Ok(3_600_000));
        assert!(parse_gateway_duration("10").is_err());
        assert!(parse_gateway_duration("fast").is_err());
        assert!(parse_gateway_duration("").is_err());
    }

    #[test]
    fn names_must_be_dns_labels() {
        assert!(dns_label("f", "web-v1").is_ok());
        assert!(dns_label("f", "Web").is_err());
        assert!(dns_label("f", "-web").is_err());
        assert!(dns_label("f", "").is_err());
    }
}

#[cfg(test)]
mod filter_tests {
    use crate::parse::parse_documents;

    fn error_of(rule: &str) -> String {
        let doc = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  parentRefs: [{{name: web}}]\n  rules:\n  - {rule}\n"
        );
        parse_documents(&doc)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn filters_are_checked() {
        let e = error_of(
            "{matches: [{path: {type: Exact, value: /a}}], filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]}",
        );
        assert!(e.ends_with("spec.rules[0].filters[0].path: ReplacePrefixMatch needs every match of the rule to be a PathPrefix"), "{e}");
        let e = error_of("{filters: [{type: RequestRedirect, urlRewrite: {hostname: x}}]}");
        assert!(
            e.contains(
                "spec.rules[0].filters[0].requestRedirect: is required by the filter's type"
            ),
            "{e}"
        );
        let e =
            error_of("{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 307}}]}");
        assert!(
            e.contains("requestRedirect.statusCode: `307` is not 301 or 302"),
            "{e}"
        );
        let e = error_of(
            "{filters: [{type: RequestRedirect, requestRedirect: {}}, {type: URLRewrite, urlRewrite: {hostname: x}}]}",
        );
        assert!(e.contains("a rule cannot both redirect and rewrite"), "{e}");
        assert_eq!(
            error_of(
                "{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: b}]}}]}"
            ),
            ""
        );
    }
}
