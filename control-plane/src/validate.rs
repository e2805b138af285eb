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
    }
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
