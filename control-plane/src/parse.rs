//! Reading resources from YAML or JSON (one or many `---`-separated documents).
//!
//! Every error names the document (1-based), the resource when its kind and name are known, the
//! field path (`spec.rules[0].backendRefs[1].weight`) and what is wrong with the value.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use crate::resource::{Kind, Metadata, Object, Resource};

/// A problem with one field of one document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct ResourceError {
    /// 1-based position in the applied input; 0 when the error is not about one document.
    pub document: usize,
    /// `HTTPRoute default/web` when known.
    pub resource: Option<String>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ResourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.document > 0 {
            write!(f, "document {}", self.document)?;
            if let Some(r) = &self.resource {
                write!(f, " ({r})")?;
            }
            write!(f, ": ")?;
        } else if let Some(r) = &self.resource {
            write!(f, "{r}: ")?;
        }
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl ResourceError {
    pub fn new(
        document: usize,
        resource: Option<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ResourceError {
            document,
            resource,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parses every document of `input`; empty documents are skipped.
pub fn parse_documents(input: &str) -> Result<Vec<Resource>, ResourceError> {
    let mut resources = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(input).enumerate() {
        let number = i + 1;
        let value = <Value as serde::Deserialize>::deserialize(document).map_err(|e| {
            ResourceError::new(
                number,
                None,
                "(document)",
                format!("not valid YAML or JSON: {e}"),
            )
        })?;
        if value.is_null() {
            continue;
        }
        resources.push(parse_value(number, value)?);
    }
    if resources.is_empty() {
        return Err(ResourceError::new(0, None, "(input)", "no resources found"));
    }
    Ok(resources)
}

/// Parses one document, already read as a YAML value.
pub fn parse_value(number: usize, value: Value) -> Result<Resource, ResourceError> {
    let err = |field: &str, msg: String| ResourceError::new(number, None, field, msg);
    let Value::Mapping(map) = &value else {
        return Err(err(
            "(document)",
            "expected an object with apiVersion, kind, metadata and spec".into(),
        ));
    };
    let kind_text = match map.get("kind") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(err(
                "kind",
                format!("expected a string, got {}", short(other)),
            ));
        }
        None => {
            return Err(err(
                "kind",
                "missing (one of Service, Workload, HTTPRoute, BackendPolicy, PeerAuthentication, AuthorizationPolicy)".into(),
            ));
        }
    };
    let kind = match kind_text.as_str() {
        "Service" => Kind::Service,
        "Workload" => Kind::Workload,
        "HTTPRoute" => Kind::HttpRoute,
        "BackendPolicy" => Kind::BackendPolicy,
        "PeerAuthentication" => Kind::PeerAuthentication,
        "AuthorizationPolicy" => Kind::AuthorizationPolicy,
        other => {
            return Err(err(
                "kind",
                format!(
                    "unknown kind `{other}` (expected Service, Workload, HTTPRoute, BackendPolicy, PeerAuthentication or AuthorizationPolicy)"
                ),
            ));
        }
    };
    match map.get("apiVersion") {
        Some(Value::String(v)) if kind.accepts_api_version(v) => {}
        Some(other) => {
            return Err(err(
                "apiVersion",
                format!(
                    "`{}` is not served for {kind} (use {})",
                    short(other),
                    kind.api_version()
                ),
            ));
        }
        None => {
            return Err(err(
                "apiVersion",
                format!("missing (use {})", kind.api_version()),
            ));
        }
    }
    let resource = match kind {
        Kind::Service => Resource::Service(typed(number, value)?),
        Kind::Workload => Resource::Workload(typed(number, value)?),
        Kind::HttpRoute => Resource::HttpRoute(typed(number, value)?),
        Kind::BackendPolicy => Resource::BackendPolicy(typed(number, value)?),
        Kind::PeerAuthentication => Resource::PeerAuthentication(typed(number, value)?),
        Kind::AuthorizationPolicy => Resource::AuthorizationPolicy(typed(number, value)?),
    };
    crate::validate::check_resource(&resource).map_err(|(field, message)| {
        ResourceError::new(number, Some(resource.key().to_string()), field, message)
    })?;
    Ok(resource)
}

fn typed<S: DeserializeOwned>(number: usize, value: Value) -> Result<Object<S>, ResourceError> {
    let name = match &value {
        Value::Mapping(m) => {
            let kind = m
                .get("kind")
                .and_then(Value::as_str)
                .and_then(Kind::from_user);
            kind.and_then(|k| resource_label(k, m.get("metadata")))
        }
        _ => None,
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        ResourceError::new(
            number,
            name,
            if field == "." {
                "(document)".into()
            } else {
                field
            },
            e.into_inner().to_string(),
        )
    })
}

fn resource_label(kind: Kind, metadata: Option<&Value>) -> Option<String> {
    let m: Metadata = serde_yaml_ng::from_value(metadata?.clone()).ok()?;
    Some(format!("{kind} {}/{}", m.namespace, m.name))
}

fn short(v: &Value) -> String {
    let text = serde_yaml_ng::to_string(v).unwrap_or_default();
    let text = text.trim();
    if text.len() > 60 {
        format!("{}...", &text[..57])
    } else {
        text.to_string()
    }
}

/// Re-reads a stored resource (JSON written by meshd itself).
pub fn from_stored(bytes: &[u8]) -> Result<Resource, ResourceError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ResourceError::new(0, None, "(stored)", format!("unreadable: {e}")))?;
    parse_value(0, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = r#"
apiVersion: mesh.dev/v1
kind: Service
metadata: {name: web}
spec:
  ports: [{port: 80, targetPort: 8080, appProtocol: http}]
  selector: {app: web}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: default}
spec:
  parentRefs: [{name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-canary, value: "1"}], method: GET}]
    backendRefs: [{name: web, port: 80, weight: 90}]
    timeouts: {request: 2s}
---
"#;

    #[test]
    fn parses_several_documents_and_skips_empty_ones() {
        let resources = parse_documents(ROUTE).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resources.len(), 2);
        assert_eq!(resources[0].key().to_string(), "Service default/web");
        let Resource::HttpRoute(route) = &resources[1] else {
            panic!("not a route")
        };
        let m = &route.spec.rules[0].matches[0];
        assert_eq!(m.path.as_ref().map(|p| p.value.as_str()), Some("/api"));
        assert_eq!(route.spec.rules[0].backend_refs[0].weight, 90);
    }

    #[test]
    fn json_is_accepted() {
        let json = r#"{"apiVersion":"mesh.dev/v1","kind":"Workload","metadata":{"name":"w","labels":{"app":"web"}},"spec":{"address":"10.0.0.5"}}"#;
        let r = parse_documents(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r[0].key().to_string(), "Workload default/w");
    }

    fn error_of(input: &str) -> String {
        match parse_documents(input) {
            Ok(_) => panic!("accepted: {input}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn errors_name_document_resource_field_and_value() {
        let bad_weight = ROUTE.replace("weight: 90", "weight: -3");
        let e = error_of(&bad_weight);
        assert!(
            e.starts_with(
                "document 2 (HTTPRoute default/split): spec.rules[0].backendRefs[0].weight:"
            ),
            "{e}"
        );
        assert!(e.contains("-3"), "{e}");

        let unknown = ROUTE.replace("targetPort: 8080", "targetPrt: 8080");
        let e = error_of(&unknown);
        assert!(
            e.starts_with(
                "document 1 (Service default/web): spec.ports[0].targetPrt: unknown field"
            ),
            "{e}"
        );

        assert!(error_of("kind: Gadget\n").contains("unknown kind `Gadget`"));
        let e = error_of("apiVersion: v9\nkind: Service\n");
        assert!(e.contains("apiVersion: `v9` is not served"), "{e}");
        assert_eq!(error_of("---\n"), "(input): no resources found");
    }
}
