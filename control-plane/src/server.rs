//! `meshd`: opens the store, serves ADS over gRPC and the management API, until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::TcpListenerStream;

use crate::ads::AdsService;
use crate::api::Api;
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
}

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
    let grpc = bind("xDS (gRPC)", config.grpc_addr).await?;
    let api = bind("the management API", config.api_addr).await?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(ServerError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServerError::Signal)?;

    let api_task = tokio::spawn(Api::new(controller.clone(), config.api_token.clone()).serve(api));
    tracing::info!(
        grpc = %config.grpc_addr,
        api = %config.api_addr,
        data_dir = %config.data_dir.display(),
        revision = controller.revision(),
        resources = controller.list(crate::resource::Kind::Service, None).len(),
        "meshd ready"
    );
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
            _ = sigint.recv() => tracing::info!("SIGINT: stopping"),
        }
    };
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(AdsService::new(controller).into_server())
        .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), shutdown)
        .await?;
    api_task.abort();
    tracing::info!("meshd stopped");
    Ok(())
}
