//! Resolves PeerAuthentication and AuthorizationPolicy resources into each sidecar workload's
//! inbound policy (`mesh.security.v1.WorkloadPolicy`), a pure function like the rest of the
//! translation.
//!
//! - mTLS mode: the most specific PeerAuthentication wins: one selecting the workload, else its
//!   namespace's (no selector), else the mesh-wide one (root namespace, no selector), else
//!   PERMISSIVE. `UNSET` defers to the next level. Two at the same level: the first by name.
//! - Authorization: every AuthorizationPolicy in the workload's namespace or the root namespace
//!   whose selector matches its labels (no selector: all).

use mesh_proto::mesh::security::v1 as pb;

use crate::resource::*;
use crate::state::State;

/// The xDS resource name of a workload's policy: `<namespace>/<name>`.
pub fn policy_name(workload: &Workload) -> String {
    format!("{}/{}", workload.metadata.namespace, workload.metadata.name)
}

fn selects(selector: Option<&WorkloadSelector>, workload: &Workload) -> bool {
    selector.is_none_or(|s| {
        s.match_labels
            .iter()
            .all(|(k, v)| workload.metadata.labels.get(k) == Some(v))
    })
}

/// Whether a resource in `namespace` with `selector` applies to `workload`, and how specifically
/// (2: selects it; 1: its namespace; 0: mesh-wide).
fn applies(
    namespace: &str,
    selector: Option<&WorkloadSelector>,
    workload: &Workload,
) -> Option<u8> {
    let own = namespace == workload.metadata.namespace;
    match (own, namespace == ROOT_NAMESPACE, selector) {
        (true, _, Some(_)) if selects(selector, workload) => Some(2),
        (true, _, None) => Some(1),
        (false, true, None) => Some(0),
        (false, true, Some(_)) if selects(selector, workload) => Some(0),
        _ => None,
    }
}

/// The mTLS mode in force for `workload`, and which resource set it.
fn mtls_mode(state: &State, workload: &Workload) -> (pb::MtlsMode, String) {
    let mut best: Option<(u8, &PeerAuthentication, MtlsMode)> = None;
    for pa in state.peer_authentications() {
        let mode = pa.spec.mtls.as_ref().map_or(MtlsMode::Unset, |m| m.mode);
        if mode == MtlsMode::Unset {
            continue;
        }
        let Some(level) = applies(&pa.metadata.namespace, pa.spec.selector.as_ref(), workload)
        else {
            continue;
        };
        // Iteration is by name, so the first at a level stays.
        if best.is_none_or(|(l, _, _)| level > l) {
            best = Some((level, pa, mode));
        }
    }
    match best {
        Some((_, pa, MtlsMode::Strict)) => (pb::MtlsMode::Strict, source(pa)),
        Some((_, pa, _)) => (pb::MtlsMode::Permissive, source(pa)),
        None => (pb::MtlsMode::Permissive, "default".to_string()),
    }
}

fn source(pa: &PeerAuthentication) -> String {
    format!(
        "PeerAuthentication {}/{}",
        pa.metadata.namespace, pa.metadata.name
    )
}

fn rule(r: &AuthzRule) -> pb::Rule {
    pb::Rule {
        from: r
            .from
            .iter()
            .map(|f| pb::Source {
                principals: f
                    .source
                    .principals
                    .iter()
                    .map(|p| p.strip_prefix("spiffe://").unwrap_or(p).to_string())
                    .collect(),
                namespaces: f.source.namespaces.clone(),
            })
            .collect(),
        to: r
            .to
            .iter()
            .map(|t| pb::Operation {
                ports: t
                    .operation
                    .ports
                    .iter()
                    .filter_map(|p| p.parse().ok())
                    .collect(),
                methods: t.operation.methods.clone(),
                paths: t.operation.paths.clone(),
            })
            .collect(),
    }
}

/// The inbound policy of a sidecar's workload.
pub fn workload_policy(state: &State, workload: &Workload) -> pb::WorkloadPolicy {
    let (mode, mtls_source) = mtls_mode(state, workload);
    let authorizations = state
        .authorization_policies()
        .filter(|ap| applies(&ap.metadata.namespace, ap.spec.selector.as_ref(), workload).is_some())
        .map(|ap| pb::Authorization {
            name: format!("{}/{}", ap.metadata.namespace, ap.metadata.name),
            action: match ap.spec.action {
                AuthzAction::Allow => pb::Action::Allow,
                AuthzAction::Deny => pb::Action::Deny,
            } as i32,
            rules: ap.spec.rules.iter().map(rule).collect(),
        })
        .collect();
    pb::WorkloadPolicy {
        name: policy_name(workload),
        mtls_mode: mode as i32,
        mtls_source,
        authorizations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_documents;

    fn state(yaml: &str) -> State {
        State::from_resources(parse_documents(yaml).unwrap_or_else(|e| panic!("{e}")))
    }

    fn workload(ns: &str, labels: &[(&str, &str)]) -> Workload {
        let labels: String = labels.iter().map(|(k, v)| format!("{k}: {v}, ")).collect();
        let yaml = format!(
            "apiVersion: mesh.dev/v1\nkind: Workload\nmetadata: {{name: w, namespace: {ns}, labels: {{{labels}}}}}\nspec: {{address: 10.0.0.9}}\n"
        );
        match parse_documents(&yaml)
            .unwrap_or_else(|e| panic!("{e}"))
            .remove(0)
        {
            Resource::Workload(w) => w,
            other => panic!("{other:?}"),
        }
    }

    const PA: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n";

    #[test]
    fn the_most_specific_peer_authentication_wins() {
        let s = state(&format!(
            "{PA}metadata: {{name: mesh, namespace: mesh-system}}\nspec: {{mtls: {{mode: STRICT}}}}\n---\n{PA}metadata: {{name: loose, namespace: shop}}\nspec: {{mtls: {{mode: PERMISSIVE}}}}\n---\n{PA}metadata: {{name: db, namespace: shop}}\nspec: {{selector: {{matchLabels: {{app: db}}}}, mtls: {{mode: STRICT}}}}\n"
        ));
        let db = workload_policy(&s, &workload("shop", &[("app", "db")]));
        assert_eq!(db.mtls_mode, pb::MtlsMode::Strict as i32);
        assert_eq!(db.mtls_source, "PeerAuthentication shop/db");
        let web = workload_policy(&s, &workload("shop", &[("app", "web")]));
        assert_eq!(web.mtls_mode, pb::MtlsMode::Permissive as i32);
        let other = workload_policy(&s, &workload("other", &[]));
        assert_eq!(other.mtls_source, "PeerAuthentication mesh-system/mesh");
        assert_eq!(other.mtls_mode, pb::MtlsMode::Strict as i32);
        assert_eq!(
            workload_policy(&State::default(), &workload("x", &[])).mtls_source,
            "default"
        );
    }

    #[test]
    fn authorization_policies_apply_by_namespace_and_selector() {
        let ap = "apiVersion: security.mesh.dev/v1\nkind: AuthorizationPolicy\n";
        let s = state(&format!(
            "{ap}metadata: {{name: only-web, namespace: shop}}\nspec: {{selector: {{matchLabels: {{app: web}}}}, rules: [{{from: [{{source: {{principals: [\"spiffe://cluster.local/ns/shop/sa/client\"]}}}}]}}]}}\n---\n{ap}metadata: {{name: no-admin, namespace: mesh-system}}\nspec: {{action: DENY, rules: [{{to: [{{operation: {{paths: [\"/admin*\"]}}}}]}}]}}\n"
        ));
        let web = workload_policy(&s, &workload("shop", &[("app", "web")]));
        let names: Vec<&str> = web.authorizations.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["mesh-system/no-admin", "shop/only-web"]);
        assert_eq!(
            web.authorizations[1].rules[0].from[0].principals,
            ["cluster.local/ns/shop/sa/client"],
            "principals travel without the scheme"
        );
        let db = workload_policy(&s, &workload("shop", &[("app", "db")]));
        assert_eq!(db.authorizations.len(), 1, "only the mesh-wide DENY");
    }
}
