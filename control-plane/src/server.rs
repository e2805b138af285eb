//! `meshd`: opens the store, serves ADS over gRPC and the management API, until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::TcpListenerStream;

use crate::ads::AdsService;
use crate::api::Api;
use crate::ca::service::CaService;
use crate::ca::token::TokenSigner;
use crate::ca::{Authority, CaError, UserCa};
use crate::controller::Controller;
use crate::store::{Store, StoreError};
use crate::vip::VipRange;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub grpc_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub vip_range: VipRange,
    pub workload_grace: Duration,
    pub api_token: Option<String>,
    /// The TLS port: xDS and the certificate service.
    pub grpc_tls_addr: SocketAddr,
    pub trust_domain: String,
    /// Lifetime of workload certificates (the longest a CSR may ask for).
    pub cert_ttl: Duration,
    /// A CA of the user's instead of the generated root.
    pub user_ca: Option<UserCa>,
    /// DNS names in meshd's own certificate (what sidecars verify it as).
    pub server_names: Vec<String>,
}

/// The namespace and service account meshd's own certificate names.
pub const MESHD_NAMESPACE: &str = "mesh-system";
pub const MESHD_SERVICE_ACCOUNT: &str = "meshd";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the API on {0} is reachable from other hosts: give it a token (--api-token or MESHD_API_TOKEN)"
    )]
    OpenApi(SocketAddr),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("certificate authority: {0}")]
    Ca(#[from] CaError),
    #[error("cannot install the signal handler: {0}")]
    Signal(#[source] std::io::Error),
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { what, addr, source })
}

/// Runs meshd until SIGTERM or SIGINT.
pub async fn run(config: ServerConfig) -> Result<(), ServerError> {
    if !config.api_addr.ip().is_loopback() && config.api_token.is_none() {
        return Err(ServerError::OpenApi(config.api_addr));
    }
    let store = Store::open(&config.data_dir)?;
    let controller = Controller::open(store, config.vip_range, config.workload_grace)?;
    controller.expire_unclaimed();
    let authority = Arc::new(Authority::open(
        &config.data_dir,
        &config.trust_domain,
        config.user_ca.as_ref(),
        config.cert_ttl,
    )?);
    let tokens = Arc::new(TokenSigner::open(&config.data_dir)?);
    let tls = server_tls(&authority, &config.server_names)?;
    let grpc = bind("xDS (gRPC)", config.grpc_addr).await?;
    let grpc_tls = bind("xDS and the CA (gRPC over TLS)", config.grpc_tls_addr).await?;
    let api = bind("the management API", config.api_addr).await?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(ServerError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServerError::Signal)?;

    let api_task = tokio::spawn(
        Api::new(controller.clone(), config.api_token.clone())
            .with_ca(tokens.clone(), authority.clone())
            .serve(api),
    );
    tracing::info!(
        grpc = %config.grpc_addr,
        grpc_tls = %config.grpc_tls_addr,
        trust_domain = %config.trust_domain,
        api = %config.api_addr,
        data_dir = %config.data_dir.display(),
        revision = controller.revision(),
        resources = controller.list(crate::resource::Kind::Service, None).len(),
        "meshd ready"
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let on_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // One service for both ports, so that their streams share subscriptions.
    let ads = AdsService::new(controller.clone());
    let plain = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(ads.clone().into_server())
        .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), on_stop(stopped.clone()));
    let secure = tonic::transport::Server::builder()
        .tls_config(tls)?
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(ads.into_server())
        .add_service(CaService::new(authority, tokens, controller.clone()).into_server())
        .serve_with_incoming_shutdown(TcpListenerStream::new(grpc_tls), on_stop(stopped));
    let servers = async { tokio::try_join!(plain, secure) };
    tokio::pin!(servers);
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
        _ = sigint.recv() => tracing::info!("SIGINT: stopping"),
        r = &mut servers => { r?; }
    }
    controller.stop();
    let _ = stop.send(true);
    servers.await?;
    api_task.abort();
    tracing::info!("meshd stopped");
    Ok(())
}

/// meshd's own TLS identity: a certificate from its CA naming `server_names` and meshd's SPIFFE
/// ID, made afresh at every start (valid a year).
fn server_tls(
    authority: &Authority,
    server_names: &[String],
) -> Result<tonic::transport::ServerTlsConfig, CaError> {
    let key = rcgen::KeyPair::generate()?;
    let id = mesh_proto::spiffe::SpiffeId::new(
        authority.trust_domain(),
        MESHD_NAMESPACE,
        MESHD_SERVICE_ACCOUNT,
    )
    .map_err(|e| CaError::Invalid {
        path: "--trust-domain".into(),
        why: e.to_string(),
    })?;
    let chain =
        authority.issue_server(&id, server_names, &key, Duration::from_secs(365 * 86_400))?;
    let identity = tonic::transport::Identity::from_pem(chain.concat(), key.serialize_pem());
    Ok(tonic::transport::ServerTlsConfig::new().identity(identity))
}
