//! `mesh-proxy`: the sidecar binary. Parses flags, sets up logging and the runtime, runs the library.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use mesh_proxy::config::{ProxyConfig, RelayMode, parse_duration};

#[derive(Debug, Parser)]
#[command(name = "mesh-proxy", version, about)]
struct Args {
    /// Listener for the app's outbound connections (redirected by iptables).
    #[arg(long, default_value = "0.0.0.0:15001")]
    outbound_addr: SocketAddr,
    /// Listener for connections to the app (redirected by iptables).
    #[arg(long, default_value = "0.0.0.0:15006")]
    inbound_addr: SocketAddr,
    /// Admin endpoint: /live, /ready, /metrics, POST /shutdown.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// How long open connections may take to finish after SIGTERM or /shutdown.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Timeout of a connection attempt to the destination.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Worker threads (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// How plain TCP is relayed: splice (zero copy) or copy.
    #[arg(long, value_enum, default_value_t = RelayMode::Splice)]
    relay: RelayMode,
    /// Log filter, e.g. `info` or `mesh_proxy=debug`.
    #[arg(long, env = "MESH_LOG", default_value = "info")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log)
                .with_context(|| format!("invalid --log filter `{}`", args.log))?,
        )
        .with_writer(std::io::stderr)
        .init();

    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .context("cannot start the async runtime")?;

    let config = ProxyConfig {
        outbound_addr: args.outbound_addr,
        inbound_addr: args.inbound_addr,
        admin_addr: args.admin_addr,
        drain_timeout: args.drain_timeout,
        connect_timeout: args.connect_timeout,
        relay_mode: args.relay,
    };
    tracing::info!(threads, relay = ?config.relay_mode, "mesh-proxy starting");
    runtime
        .block_on(mesh_proxy::run(config))
        .context("mesh-proxy failed")
}
