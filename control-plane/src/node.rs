//! What a connecting sidecar says about itself in the xDS `Node`, and the Workload it registers.
//!
//! Metadata keys (Istio's names where they exist): `NAMESPACE`, `SERVICE_ACCOUNT`, `LABELS`
//! (a struct of strings), `INSTANCE_IPS` (comma-separated), `WORKLOAD_NAME`, `PORTS`
//! (comma-separated). A node without `INSTANCE_IPS` (e.g. a plain Envoy) registers no workload.

use std::collections::BTreeMap;
use std::net::IpAddr;

use mesh_proto::envoy::config::core::v3::Node;
use mesh_proto::google::protobuf::{Struct, value::Kind as ValueKind};
use mesh_proto::node_meta;

use crate::resource::{
    Kind, Metadata, Object, Workload, WorkloadPort, WorkloadSpec, default_namespace,
    default_service_account,
};

/// The parts of a `Node` meshd uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub address: Option<IpAddr>,
    pub workload_name: Option<String>,
    pub ports: Vec<u16>,
}

fn string(s: &Struct, key: &str) -> Option<String> {
    match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(ValueKind::StringValue(v)) if !v.is_empty() => Some(v.clone()),
        _ => None,
    }
}

impl NodeInfo {
    pub fn from_node(node: Option<&Node>) -> NodeInfo {
        let empty = Struct::default();
        let meta = node.and_then(|n| n.metadata.as_ref()).unwrap_or(&empty);
        let labels = match meta
            .fields
            .get(node_meta::LABELS)
            .and_then(|v| v.kind.as_ref())
        {
            Some(ValueKind::StructValue(s)) => s
                .fields
                .iter()
                .filter_map(|(k, v)| match &v.kind {
                    Some(ValueKind::StringValue(s)) => Some((k.clone(), s.clone())),
                    _ => None,
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        let address = string(meta, node_meta::INSTANCE_IPS)
            .and_then(|ips| ips.split(',').find_map(|ip| ip.trim().parse().ok()));
        let ports = string(meta, node_meta::PORTS)
            .map(|p| p.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_default();
        NodeInfo {
            id: node.map(|n| n.id.clone()).unwrap_or_default(),
            namespace: string(meta, node_meta::NAMESPACE).unwrap_or_else(default_namespace),
            service_account: string(meta, node_meta::SERVICE_ACCOUNT)
                .unwrap_or_else(default_service_account),
            labels,
            address,
            workload_name: string(meta, node_meta::WORKLOAD_NAME),
            ports,
        }
    }

    /// The Workload this sidecar stands for, when it gave an address.
    pub fn workload(&self) -> Option<Workload> {
        let address = self.address?;
        let name = self
            .workload_name
            .clone()
            .unwrap_or_else(|| sanitize(&self.id));
        Some(Object {
            api_version: Kind::Workload.api_version().to_string(),
            kind: Kind::Workload,
            metadata: Metadata {
                name,
                namespace: self.namespace.clone(),
                labels: self.labels.clone(),
            },
            spec: WorkloadSpec {
                address,
                service_account: self.service_account.clone(),
                ports: self
                    .ports
                    .iter()
                    .map(|p| WorkloadPort {
                        port: *p,
                        name: None,
                    })
                    .collect(),
            },
        })
    }
}

/// A node id made into a resource name (lowercase, `-` for anything else).
fn sanitize(id: &str) -> String {
    let s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches('-');
    if s.is_empty() {
        "unnamed".into()
    } else {
        s.chars().take(63).collect()
    }
}

pub use mesh_proto::node_meta::build as metadata;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_metadata_becomes_a_workload() {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let node = Node {
            id: "sidecar~10.0.0.3~Web_B".into(),
            metadata: Some(metadata(
                &[
                    ("NAMESPACE", "shop"),
                    ("INSTANCE_IPS", "10.0.0.3,fd00::3"),
                    ("PORTS", "8080, 9090"),
                ],
                &labels,
            )),
            ..Default::default()
        };
        let info = NodeInfo::from_node(Some(&node));
        let w = info.workload().unwrap_or_else(|| panic!("no workload"));
        assert_eq!(w.metadata.name, "sidecar-10-0-0-3-web-b");
        assert_eq!(w.metadata.namespace, "shop");
        assert_eq!(w.metadata.labels, labels);
        assert_eq!(w.spec.address.to_string(), "10.0.0.3");
        assert_eq!(w.spec.service_account, "default");
        assert_eq!(
            w.spec.ports.iter().map(|p| p.port).collect::<Vec<_>>(),
            vec![8080, 9090]
        );
        assert!(crate::validate::check_resource(&crate::resource::Resource::Workload(w)).is_ok());
    }

    #[test]
    fn a_node_without_address_registers_nothing() {
        assert_eq!(NodeInfo::from_node(None).workload(), None);
    }
}
