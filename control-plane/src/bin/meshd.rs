//! `meshd`: the mesh's control plane. Parses flags and runs [`mesh_control_plane::server`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mesh_control_plane::server::{ServerConfig, run};
use mesh_control_plane::vip::VipRange;

#[derive(Debug, Parser)]
#[command(
    name = "meshd",
    version,
    about = "The mesh's control plane: xDS v3 (ADS) for the sidecars, and the management API"
)]
struct Args {
    /// Address of the xDS (gRPC) server the sidecars connect to.
    #[arg(long, default_value = "0.0.0.0:15010")]
    grpc_addr: SocketAddr,
    /// Address of the management API (meshctl). Needs --api-token unless it is loopback.
    #[arg(long, default_value = "127.0.0.1:15080")]
    api_addr: SocketAddr,
    /// Where the embedded database lives; kept across restarts.
    #[arg(long, default_value = "/var/lib/meshd")]
    data_dir: PathBuf,
    /// IPv4 range Service VIPs are allocated from.
    #[arg(long, default_value = "10.96.0.0/16")]
    vip_range: VipRange,
    /// How long a disconnected sidecar's workload stays before it is removed (ms).
    #[arg(long, default_value_t = 10_000)]
    workload_grace_ms: u64,
    /// Bearer token the management API requires.
    #[arg(long, env = "MESHD_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Log filter, e.g. `info` or `mesh_control_plane=debug`.
    #[arg(long, env = "MESH_LOG", default_value = "info")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log)
                .with_context(|| format!("invalid --log `{}`", args.log))?,
        )
        .with_writer(std::io::stderr)
        .init();
    let config = ServerConfig {
        grpc_addr: args.grpc_addr,
        api_addr: args.api_addr,
        data_dir: args.data_dir,
        vip_range: args.vip_range,
        workload_grace: Duration::from_millis(args.workload_grace_ms),
        api_token: args.api_token,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(config)).context("meshd failed")
}
