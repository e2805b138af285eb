//! The desired state of the mesh and the all-or-nothing changes to it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::parse::ResourceError;
use crate::resource::*;
use crate::vip::VipRange;

/// Every stored resource, by key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    resources: BTreeMap<Key, Resource>,
}

/// What an apply or delete did to one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub key: Key,
    pub action: Action,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    Deleted,
}

impl State {
    pub fn from_resources(resources: impl IntoIterator<Item = Resource>) -> State {
        State {
            resources: resources.into_iter().map(|r| (r.key(), r)).collect(),
        }
    }

    pub fn get(&self, key: &Key) -> Option<&Resource> {
        self.resources.get(key)
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// The resources of one kind, by namespace and name. Keys sort by kind first, so this
    /// visits only that kind (translation calls it per Service: it must not scan everything).
    pub fn list(&self, kind: Kind) -> impl Iterator<Item = &Resource> {
        let from = Key {
            kind,
            namespace: String::new(),
            name: String::new(),
        };
        self.resources
            .range(from..)
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(_, r)| r)
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.list(Kind::Service).filter_map(|r| match r {
            Resource::Service(s) => Some(s),
            _ => None,
        })
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.list(Kind::Workload).filter_map(|r| match r {
            Resource::Workload(w) => Some(w),
            _ => None,
        })
    }

    pub fn routes(&self) -> impl Iterator<Item = &HttpRoute> {
        self.list(Kind::HttpRoute).filter_map(|r| match r {
            Resource::HttpRoute(h) => Some(h),
            _ => None,
        })
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        match self
            .resources
            .get(&Key::new(Kind::Service, namespace, name))
        {
            Some(Resource::Service(s)) => Some(s),
            _ => None,
        }
    }

    /// Applies `documents` as one unit: either every document is valid (alone and together with
    /// the rest of the state) and the new state is returned, or nothing changes.
    pub fn apply(
        &self,
        documents: Vec<Resource>,
        vips: &VipRange,
    ) -> Result<(State, Vec<Change>), ResourceError> {
        let mut next = self.clone();
        let mut changes = Vec::new();
        let mut document_of = HashMap::new();
        for (i, mut resource) in documents.into_iter().enumerate() {
            let key = resource.key();
            if let Some(first) = document_of.insert(key.clone(), i + 1) {
                return Err(ResourceError::new(
                    i + 1,
                    Some(key.to_string()),
                    "metadata.name",
                    format!("the same resource is already in document {first}"),
                ));
            }
            if let Resource::Service(s) = &mut resource {
                next.assign_vip(i + 1, s, vips)?;
            }
            let action = match next.resources.get(&key) {
                None => Action::Created,
                Some(old) if *old == resource => Action::Unchanged,
                Some(_) => Action::Configured,
            };
            next.resources.insert(key.clone(), resource);
            changes.push(Change { key, action });
        }
        next.check_references(&document_of)?;
        Ok((next, changes))
    }

    /// Deletes one resource, unless others still refer to it.
    pub fn delete(&self, key: &Key) -> Result<(State, Change), ResourceError> {
        let mut next = self.clone();
        if next.resources.remove(key).is_none() {
            return Err(ResourceError::new(
                0,
                Some(key.to_string()),
                "metadata.name",
                "not found",
            ));
        }
        next.check_references(&HashMap::new()).map_err(|e| {
            let referrer = e.resource.clone().unwrap_or_default();
            ResourceError::new(
                0,
                Some(key.to_string()),
                "metadata.name",
                format!(
                    "cannot delete it: {referrer} refers to it ({}); delete or change that first",
                    e.field
                ),
            )
        })?;
        Ok((
            next,
            Change {
                key: key.clone(),
                action: Action::Deleted,
            },
        ))
    }

    /// Keeps the VIP a Service already has, checks a given one, or allocates one.
    fn assign_vip(
        &self,
        document: usize,
        service: &mut Service,
        vips: &VipRange,
    ) -> Result<(), ResourceError> {
        let key = Key::new(
            Kind::Service,
            &service.metadata.namespace,
            &service.metadata.name,
        );
        let used: HashSet<IpAddr> = self
            .services()
            .filter(|s| Key::new(Kind::Service, &s.metadata.namespace, &s.metadata.name) != key)
            .filter_map(|s| s.spec.vip)
            .collect();
        let previous = self
            .service(&key.namespace, &key.name)
            .and_then(|s| s.spec.vip);
        match service.spec.vip {
            Some(vip) if used.contains(&vip) => Err(ResourceError::new(
                document,
                Some(key.to_string()),
                "spec.vip",
                format!("{vip} is already the VIP of another Service"),
            )),
            Some(_) => Ok(()),
            None => {
                let vip = previous.or_else(|| vips.allocate(&used)).ok_or_else(|| {
                    ResourceError::new(
                        document,
                        Some(key.to_string()),
                        "spec.vip",
                        "the VIP range is exhausted",
                    )
                })?;
                service.spec.vip = Some(vip);
                Ok(())
            }
        }
    }

    pub fn peer_authentications(&self) -> impl Iterator<Item = &PeerAuthentication> {
        self.list(Kind::PeerAuthentication).filter_map(|r| match r {
            Resource::PeerAuthentication(p) => Some(p),
            _ => None,
        })
    }

    pub fn authorization_policies(&self) -> impl Iterator<Item = &AuthorizationPolicy> {
        self.list(Kind::AuthorizationPolicy)
            .filter_map(|r| match r {
                Resource::AuthorizationPolicy(p) => Some(p),
                _ => None,
            })
    }

    pub fn policies(&self) -> impl Iterator<Item = &BackendPolicy> {
        self.list(Kind::BackendPolicy).filter_map(|r| match r {
            Resource::BackendPolicy(p) => Some(p),
            _ => None,
        })
    }

    /// Every HTTPRoute's parent and backend Services (and their ports), and every
    /// BackendPolicy's target Service, must exist.
    fn check_references(&self, document_of: &HashMap<Key, usize>) -> Result<(), ResourceError> {
        for policy in self.policies() {
            let ns = &policy.metadata.namespace;
            if self.service(ns, &policy.spec.target_ref.name).is_none() {
                let key = Key::new(Kind::BackendPolicy, ns, &policy.metadata.name);
                let document = document_of.get(&key).copied().unwrap_or(0);
                return Err(ResourceError::new(
                    document,
                    Some(key.to_string()),
                    "spec.targetRef.name",
                    format!(
                        "Service `{ns}/{}` does not exist",
                        policy.spec.target_ref.name
                    ),
                ));
            }
        }
        for route in self.routes() {
            let key = Key::new(
                Kind::HttpRoute,
                &route.metadata.namespace,
                &route.metadata.name,
            );
            let document = document_of.get(&key).copied().unwrap_or(0);
            let fail = |field: String, message: String| {
                Err(ResourceError::new(
                    document,
                    Some(key.to_string()),
                    field,
                    message,
                ))
            };
            for (i, p) in route.spec.parent_refs.iter().enumerate() {
                let ns = p.namespace.as_deref().unwrap_or(&route.metadata.namespace);
                match self.service(ns, &p.name) {
                    None => {
                        return fail(
                            format!("spec.parentRefs[{i}].name"),
                            format!("Service `{ns}/{}` does not exist", p.name),
                        );
                    }
                    Some(s) => {
                        if let Some(port) = p.port {
                            if !s.spec.ports.iter().any(|sp| sp.port == port) {
                                return fail(
                                    format!("spec.parentRefs[{i}].port"),
                                    format!("Service `{ns}/{}` has no port {port}", p.name),
                                );
                            }
                        }
                    }
                }
            }
            for (r, rule) in route.spec.rules.iter().enumerate() {
                for (b, backend) in rule.backend_refs.iter().enumerate() {
                    let field = format!("spec.rules[{r}].backendRefs[{b}]");
                    let ns = backend
                        .namespace
                        .as_deref()
                        .unwrap_or(&route.metadata.namespace);
                    let Some(s) = self.service(ns, &backend.name) else {
                        return fail(
                            format!("{field}.name"),
                            format!("Service `{ns}/{}` does not exist", backend.name),
                        );
                    };
                    let port = backend.port.unwrap_or(0);
                    if !s.spec.ports.iter().any(|sp| sp.port == port) {
                        return fail(
                            format!("{field}.port"),
                            format!("Service `{ns}/{}` has no port {port}", backend.name),
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_documents;

    fn docs(yaml: &str) -> Vec<Resource> {
        parse_documents(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    const SERVICES: &str = "
apiVersion: mesh.dev/v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}], selector: {app: web}}
---
apiVersion: mesh.dev/v1
kind: Service
metadata: {name: web-v2}
spec: {ports: [{port: 80}], selector: {app: web, version: v2}}
";

    const ROUTE: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split}
spec:
  parentRefs: [{name: web}]
  rules: [{backendRefs: [{name: web, port: 80, weight: 90}, {name: web-v2, port: 80, weight: 10}]}]
";

    #[test]
    fn apply_allocates_vips_and_reports_changes() {
        let (state, changes) = State::default()
            .apply(docs(SERVICES), &VipRange::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            changes.iter().map(|c| c.action).collect::<Vec<_>>(),
            vec![Action::Created, Action::Created]
        );
        let vips: Vec<_> = state
            .services()
            .filter_map(|s| s.spec.vip)
            .map(|v| v.to_string())
            .collect();
        assert_eq!(vips, vec!["10.96.0.1", "10.96.0.2"]);

        // Re-applying the same input keeps the VIPs and changes nothing.
        let (again, changes) = state
            .apply(docs(SERVICES), &VipRange::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            changes.iter().map(|c| c.action).collect::<Vec<_>>(),
            vec![Action::Unchanged, Action::Unchanged]
        );
        assert_eq!(again, state);
    }

    #[test]
    fn references_are_checked_and_a_bad_batch_changes_nothing() {
        let (state, _) = State::default()
            .apply(docs(SERVICES), &VipRange::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let bad = ROUTE.replace("name: web-v2, port: 80", "name: web-v3, port: 80");
        let err = state
            .apply(docs(&bad), &VipRange::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            err,
            "document 1 (HTTPRoute default/split): spec.rules[0].backendRefs[1].name: Service `default/web-v3` does not exist"
        );
        let bad_port = ROUTE.replace("name: web-v2, port: 80", "name: web-v2, port: 81");
        assert!(state.apply(docs(&bad_port), &VipRange::default()).is_err());

        // The route and the Service it needs can come in the same batch, in any order.
        let together = format!("{ROUTE}\n---\n{SERVICES}");
        assert!(
            State::default()
                .apply(docs(&together), &VipRange::default())
                .is_ok()
        );
    }

    #[test]
    fn a_referenced_service_cannot_be_deleted() {
        let all = format!("{SERVICES}\n---\n{ROUTE}");
        let (state, _) = State::default()
            .apply(docs(&all), &VipRange::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let err = state
            .delete(&Key::new(Kind::Service, "default", "web-v2"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            err,
            "Service default/web-v2: metadata.name: cannot delete it: HTTPRoute default/split refers to it (spec.rules[0].backendRefs[1].name); delete or change that first"
        );
        let (after, change) = state
            .delete(&Key::new(Kind::HttpRoute, "default", "split"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(change.action, Action::Deleted);
        assert_eq!(after.len(), 2);
    }

    #[test]
    fn duplicate_vips_and_duplicate_documents_are_refused() {
        let (state, _) = State::default()
            .apply(docs(SERVICES), &VipRange::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let clash = "apiVersion: mesh.dev/v1\nkind: Service\nmetadata: {name: other}\nspec: {ports: [{port: 80}], vip: 10.96.0.1}\n";
        let err = state
            .apply(docs(clash), &VipRange::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("spec.vip: 10.96.0.1 is already the VIP of another Service"),
            "{err}"
        );
        let twice = format!("{SERVICES}\n---\n{SERVICES}");
        let err = State::default()
            .apply(docs(&twice), &VipRange::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("already in document 1"), "{err}");
    }
}
