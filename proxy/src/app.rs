//! The proxy process: bind, serve, and drain on SIGTERM, SIGINT or `POST /shutdown`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};

use crate::admin;
use crate::config::ProxyConfig;
use crate::drain::Drain;
use crate::forward::Context;
use crate::identity::Identity;
use crate::listener::{accept_loop, bind, bind_all};
use crate::metrics::{Direction, Metrics};
use crate::peer_client::PeerConnector;
use crate::tls::MeshTls;
use crate::xds::Xds;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "cannot listen on {addr} for {what}: {source} (is another proxy running, or the port taken?)"
    )]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot install the signal handler: {0}")]
    Signal(#[source] io::Error),
}

fn bind_error(what: &'static str, addr: SocketAddr) -> impl FnOnce(io::Error) -> ProxyError {
    move |source| ProxyError::Bind { what, addr, source }
}

/// How long a ready proxy that has no connection yet keeps its startup pages.
const RELEASE_WITHOUT_CONNECTION: std::time::Duration = std::time::Duration::from_secs(10);

/// Once the proxy is ready (configuration and certificate in place) and its first connection
/// arrives, or a while after ready without one, gives back the pages of code and read-only data
/// that startup ran; what runs from then on maps back.
async fn release_startup_pages(ctx: Arc<Context>) {
    ctx.xds.wait_ready().await;
    if let Some(tls) = &ctx.tls {
        tls.identity().wait_ready().await;
    }
    let _ = tokio::time::timeout(RELEASE_WITHOUT_CONNECTION, ctx.first_connection.wait()).await;
    match crate::resident::release() {
        Ok(released) => tracing::info!(
            mappings = released.mappings,
            kib = released.bytes >> 10,
            "startup pages released; what runs next maps back from the page cache"
        ),
        Err(error) => tracing::warn!(
            %error,
            "cannot release the startup pages (is /proc mounted?); they stay resident"
        ),
    }
}

/// Runs the proxy until it has drained after a shutdown signal.
pub async fn run(config: ProxyConfig) -> Result<(), ProxyError> {
    // Before the listeners take connections, which inherit it from them.
    crate::local_hop::init(config.local_congestion.clone());
    let outbound =
        bind_all(config.outbound_addr).map_err(bind_error("outbound", config.outbound_addr))?;
    let inbound =
        bind_all(config.inbound_addr).map_err(bind_error("inbound", config.inbound_addr))?;
    let admin_listener =
        bind(config.admin_addr, false).map_err(bind_error("admin", config.admin_addr))?;
    let peer = bind_all(config.peer_addr).map_err(bind_error("peer sidecars", config.peer_addr))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(ProxyError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ProxyError::Signal)?;
    for listener in outbound.iter().chain(&inbound).chain(&peer) {
        crate::local_hop::listen(listener);
    }
    let drain = Drain::new();
    let drain_timeout = config.drain_timeout;
    let xds = match &config.xds {
        Some(x) => {
            let xds = Arc::new(Xds::following(x.server.clone()));
            tokio::spawn(crate::xds::client::run(x.clone(), xds.clone()));
            xds
        }
        None => Arc::new(Xds::standalone()),
    };
    let tls = match &config.identity {
        Some(wanted) => {
            let identity = Arc::new(Identity::new(
                wanted.id.clone(),
                &wanted.bundle_path,
                &wanted.bundle_pem,
            )?);
            let tls = Arc::new(MeshTls::new(identity.clone())?);
            tokio::spawn(crate::identity::run(wanted.clone(), identity));
            Some(tls)
        }
        None => None,
    };
    let peer_connector = tls
        .as_ref()
        .map(|tls| PeerConnector::new(tls.clone(), xds.clone(), config.connect_timeout));
    let http = crate::http::HttpClients::new(
        config.connect_timeout,
        peer_connector,
        config.peer_http1,
        config.peer_http1_slots,
    );
    let ctx = Arc::new(Context {
        config,
        metrics: Metrics::default(),
        http,
        xds,
        tls,
        first_connection: Default::default(),
    });
    for (listeners, direction) in [
        (outbound, Direction::Outbound),
        (inbound, Direction::Inbound),
    ] {
        for listener in listeners {
            tokio::spawn(accept_loop(listener, direction, ctx.clone(), drain.clone()));
        }
    }
    for listener in peer {
        tokio::spawn(crate::listener::accept_peers(
            listener,
            ctx.clone(),
            drain.clone(),
        ));
    }
    tokio::spawn(admin::serve(admin_listener, ctx.clone(), drain.clone()));
    if ctx.config.release_startup_pages {
        tokio::spawn(release_startup_pages(ctx.clone()));
    }
    tracing::info!(
        outbound = %ctx.config.outbound_addr,
        inbound = %ctx.config.inbound_addr,
        admin = %ctx.config.admin_addr,
        "mesh-proxy ready"
    );

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM received"),
        _ = sigint.recv() => tracing::info!("SIGINT received"),
        _ = drain.started() => tracing::info!("shutdown requested on the admin endpoint"),
    }
    drain.start();
    tracing::info!(
        open_connections = drain.open_connections(),
        timeout_ms = drain_timeout.as_millis() as u64,
        "draining: no new connections, waiting for open ones"
    );
    if drain.wait_connections(drain_timeout).await {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!(
            open_connections = drain.open_connections(),
            "drain timeout reached; closing the remaining connections"
        );
    }
    Ok(())
}
