//! `meshd`: the mesh's control plane. Parses flags and runs [`mesh_control_plane::server`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mesh_control_plane::ca::UserCa;
use mesh_control_plane::server::{ServerConfig, run};
use mesh_control_plane::vip::VipRange;

/// jemalloc rather than glibc's malloc: after a thousand proxies' first syncs it gives the
/// freed memory back, where glibc kept a third more resident (benches/RESULTS.md). It is built
/// to give freed pages back at once (`JEMALLOC_SYS_WITH_MALLOC_CONF` in `.cargo/config.toml`).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Address of the TLS gRPC server: xDS and the certificate service (what sidecars with an
    /// identity use).
    #[arg(long, default_value = "0.0.0.0:15012")]
    grpc_tls_addr: SocketAddr,
    /// The trust domain of every identity meshd issues: spiffe://<trust-domain>/ns/../sa/..
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Lifetime of workload certificates, e.g. 24h, 30m, 2m (at least 1m).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    cert_ttl: Duration,
    /// Your own CA certificate (PEM; an intermediate followed by its chain, or a root) instead of
    /// the root meshd makes in its data directory. Needs --ca-key.
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// The private key of --ca-cert (PEM).
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Trust anchors for --ca-cert (PEM); the last certificate of --ca-cert when not given.
    #[arg(long, requires = "ca_cert")]
    ca_bundle: Option<PathBuf>,
    /// DNS names in meshd's TLS certificate, which sidecars check (--xds-server-name).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "meshd,meshd.mesh-system.svc"
    )]
    server_names: Vec<String>,
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
        grpc_tls_addr: args.grpc_tls_addr,
        trust_domain: args.trust_domain,
        cert_ttl: args.cert_ttl,
        user_ca: match (args.ca_cert, args.ca_key) {
            (Some(cert), Some(key)) => Some(UserCa {
                cert,
                key,
                bundle: args.ca_bundle,
            }),
            _ => None,
        },
        server_names: args.server_names,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(config)).context("meshd failed")
}

/// Parses `90s`, `2m`, `24h` (a bare number is seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 90s, 2m, 24h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use s, m or h)")),
    };
    if secs < 60 {
        return Err(format!("`{s}` is shorter than the shortest lifetime, 1m"));
    }
    Ok(Duration::from_secs(secs))
}
