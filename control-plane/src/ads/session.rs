//! One xDS stream's presence in meshd: its registry entry and the workload it registered, both
//! undone when the stream ends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_proto::envoy::config::core::v3::Node;

use crate::controller::Controller;
use crate::node::NodeInfo;
use crate::registry::{Nack, ProxyStatus, now_unix_ms};
use crate::resource::{Key, Kind};
use crate::snapshot::XdsType;

#[derive(Debug)]
pub(crate) struct Session {
    pub controller: Arc<Controller>,
    pub connection: u64,
    pub node_id: String,
    workload: Option<Key>,
}

impl Session {
    /// Registers the proxy (and its workload, when its node metadata names an address).
    pub fn start(
        controller: &Arc<Controller>,
        node: Option<&Node>,
        protocol: &'static str,
        peer: Option<SocketAddr>,
    ) -> Session {
        let info = NodeInfo::from_node(node);
        let connection = controller.registry.next_connection_id();
        let workload = info.workload();
        controller.registry.insert(ProxyStatus {
            connection,
            node_id: if info.id.is_empty() {
                format!("anonymous-{connection}")
            } else {
                info.id.clone()
            },
            namespace: info.namespace.clone(),
            workload: workload.as_ref().map(|w| w.metadata.name.clone()),
            address: info.address.or(peer.map(|p| p.ip())),
            protocol,
            connected_unix_ms: now_unix_ms(),
            types: BTreeMap::new(),
        });
        let key = workload.map(|w| {
            let key = Key::new(Kind::Workload, &w.metadata.namespace, &w.metadata.name);
            controller.register_workload(connection, w);
            key
        });
        tracing::info!(node = %info.id, connection, protocol, ?peer, "xDS stream opened");
        Session {
            controller: controller.clone(),
            connection,
            node_id: info.id,
            workload: key,
        }
    }

    /// A response of `ty` with `version` was sent.
    pub fn sent(&self, ty: XdsType, version: &str, wildcard: bool, subscribed: usize) {
        self.controller.registry.update(self.connection, ty, |t| {
            t.sent_version = Some(version.to_string());
            t.wildcard = wildcard;
            t.subscribed = subscribed;
        });
    }

    /// The proxy ACKed `version`, whose content is that of generation `synced`.
    pub fn acked(&self, ty: XdsType, version: &str, synced: u64) {
        self.controller.registry.update(self.connection, ty, |t| {
            t.acked_version = Some(version.to_string());
            t.synced_generation = t.synced_generation.max(synced);
            t.nack = None;
        });
    }

    /// The content the proxy has ACKed is still current at generation `synced`.
    pub fn still_synced(&self, ty: XdsType, synced: u64) {
        self.controller.registry.update(self.connection, ty, |t| {
            t.synced_generation = t.synced_generation.max(synced)
        });
    }

    pub fn nacked(&self, ty: XdsType, version: &str, message: &str) {
        self.controller.metrics.nacked(ty);
        tracing::warn!(node = %self.node_id, ty = ty.short(), version, message, "proxy NACKed an update; it keeps its last good config");
        self.controller.registry.update(self.connection, ty, |t| {
            t.nack = Some(Nack {
                version: version.to_string(),
                message: message.to_string(),
            });
        });
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.controller.registry.remove(self.connection);
        if let Some(key) = self.workload.take() {
            self.controller.workload_disconnected(self.connection, key);
        }
        tracing::info!(node = %self.node_id, connection = self.connection, "xDS stream closed");
    }
}
