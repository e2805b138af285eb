//! How the proxy reaches meshd: its address, and TLS when the address is `https://`.

use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// One of meshd's gRPC endpoints.
#[derive(Debug, Clone)]
pub struct MeshdEndpoint {
    /// `http://host:port` (plaintext xDS) or `https://host:port` (TLS: xDS and the CA).
    pub url: String,
    /// For `https://`: the trust bundle and the name meshd's certificate must carry.
    pub tls: Option<ClientTlsConfig>,
}

impl MeshdEndpoint {
    pub fn plaintext(url: &str) -> MeshdEndpoint {
        MeshdEndpoint {
            url: url.to_string(),
            tls: None,
        }
    }

    /// An `https://` endpoint verified against `bundle_pem`, as `server_name`.
    pub fn tls(url: &str, bundle_pem: &str, server_name: &str) -> MeshdEndpoint {
        let tls = ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(bundle_pem))
            .domain_name(server_name);
        MeshdEndpoint {
            url: url.to_string(),
            tls: Some(tls),
        }
    }

    /// A channel to it (not yet connected on return of an error-free build).
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        let mut endpoint = Endpoint::from_shared(self.url.clone())?
            .connect_timeout(Duration::from_secs(3))
            .http2_keep_alive_interval(Duration::from_secs(30));
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        endpoint.connect().await
    }
}
