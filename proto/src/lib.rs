//! Wire types of the mesh.
//!
//! xDS v3 uses Envoy's own message types and services from the `envoy-types` crate, so `meshd`
//! can serve unmodified xDS clients and `mesh-proxy` can follow any xDS server. This crate
//! re-exports them under short paths and names the type URLs the mesh uses.
//!
//! The mesh's own services (`proto/mesh/...`) are compiled at build time by protox, without a
//! system `protoc`: [`mesh::ca::v1`] is the certificate-signing service.

pub use envoy_types::pb::envoy;
pub use envoy_types::pb::google;
pub use prost;

pub mod spiffe;
pub use tonic;

pub use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
};

/// The mesh's own protocols.
pub mod mesh {
    pub mod ca {
        #[allow(missing_docs, clippy::all, clippy::pedantic)]
        pub mod v1 {
            tonic::include_proto!("mesh.ca.v1");
        }
    }
    pub mod security {
        #[allow(missing_docs, clippy::all, clippy::pedantic)]
        pub mod v1 {
            tonic::include_proto!("mesh.security.v1");
        }
    }
}

/// Type URLs of the xDS resources the mesh serves and consumes.
pub mod type_url {
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    pub const HTTP_CONNECTION_MANAGER: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    pub const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
    /// The mesh's own type: one workload's inbound security policy.
    pub const WORKLOAD_POLICY: &str = "type.googleapis.com/mesh.security.v1.WorkloadPolicy";

    /// The order in which updates are pushed: clusters before their endpoints, listeners before
    /// their routes (the xDS "make before break" order).
    pub const PUSH_ORDER: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];

    /// Types whose empty subscription means "everything" (wildcard) in state-of-the-world.
    pub fn is_wildcard_type(type_url: &str) -> bool {
        type_url == LISTENER || type_url == CLUSTER
    }
}

/// Packs a message into a `google.protobuf.Any` with the given type URL.
pub fn to_any<M: prost::Message>(type_url: &str, message: &M) -> google::protobuf::Any {
    google::protobuf::Any {
        type_url: type_url.to_string(),
        value: message.encode_to_vec(),
    }
}

/// Node metadata the mesh's sidecars send and meshd reads (Istio's key names where they exist).
pub mod node_meta {
    use std::collections::BTreeMap;

    use crate::google::protobuf::{Struct, Value, value::Kind};

    pub const NAMESPACE: &str = "NAMESPACE";
    pub const SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";
    pub const LABELS: &str = "LABELS";
    /// Comma-separated pod addresses.
    pub const INSTANCE_IPS: &str = "INSTANCE_IPS";
    pub const WORKLOAD_NAME: &str = "WORKLOAD_NAME";
    /// Comma-separated ports the app listens on.
    pub const PORTS: &str = "PORTS";

    fn string(s: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(s.to_string())),
        }
    }

    /// String fields plus a `LABELS` struct.
    pub fn build(fields: &[(&str, &str)], labels: &BTreeMap<String, String>) -> Struct {
        let mut s = Struct::default();
        for (k, v) in fields {
            s.fields.insert((*k).to_string(), string(v));
        }
        let labels = Struct {
            fields: labels.iter().map(|(k, v)| (k.clone(), string(v))).collect(),
        };
        s.fields.insert(
            LABELS.to_string(),
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::mesh::ca::v1::{CreateCertificateRequest, CreateCertificateResponse};
    use prost::Message;

    #[test]
    fn own_protos_are_compiled_and_round_trip() {
        let req = CreateCertificateRequest {
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
            validity_seconds: 3600,
        };
        let back = CreateCertificateRequest::decode(req.encode_to_vec().as_slice())
            .map_err(|e| e.to_string());
        assert_eq!(back, Ok(req));
        // The service's client and server are generated too.
        let _ = super::mesh::ca::v1::certificate_service_client::CertificateServiceClient::<
            tonic::transport::Channel,
        >::new;
        assert_eq!(CreateCertificateResponse::default().cert_chain_pem.len(), 0);
    }
}
