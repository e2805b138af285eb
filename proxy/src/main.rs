//! `mesh-proxy`: the sidecar binary. Parses flags, sets up logging and the runtime, runs the library.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use mesh_proto::envoy::config::core::v3::Node;
use mesh_proto::node_meta;
use mesh_proto::spiffe::SpiffeId;
use mesh_proxy::config::{PeerHttp1, ProxyConfig, RelayMode, parse_duration};
use mesh_proxy::identity::{IdentityConfig, TokenSource};
use mesh_proxy::local_hop::{self, Choice, Congestion};
use mesh_proxy::meshd::MeshdEndpoint;
use mesh_proxy::xds::client::XdsConfig;

#[derive(Debug, Parser)]
#[command(name = "mesh-proxy", version, about)]
struct Args {
    /// Listener for the app's outbound connections (redirected by iptables).
    #[arg(long, default_value = "0.0.0.0:15001")]
    outbound_addr: SocketAddr,
    /// Listener for connections to the app (redirected by iptables).
    #[arg(long, default_value = "0.0.0.0:15006")]
    inbound_addr: SocketAddr,
    /// Where peer sidecars connect with HTTP/2.
    #[arg(long, default_value = "0.0.0.0:15008")]
    peer_addr: SocketAddr,
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
    /// How plain TCP is relayed: `splice` (zero copy), `copy`, or `auto`: copy to an upstream
    /// on this host and splice to any other.
    #[arg(long, value_enum, default_value_t = RelayMode::Splice)]
    relay: RelayMode,
    /// The TCP congestion control for connections whose two ends are on this host (to and from
    /// the app, anything on loopback), which pacing cannot help: `system` keeps the host's
    /// default for them too. Default: `cubic`, where the host has it.
    #[arg(long, env = "MESH_LOCAL_CONGESTION")]
    local_congestion: Option<String>,
    /// How HTTP/1.1 requests go to a peer sidecar: `auto` as HTTP/1.1 on mTLS connections of
    /// their own while fewer than --peer-http1-slots of them to that peer are in flight, and on
    /// streams multiplexed over one connection (`mesh/mux`) beyond (and for 20 ms after a
    /// request last found that many); `http1` always on connections of their own, `mux` always
    /// multiplexed, `http2` always multiplexed in HTTP/2. (HTTP/2 requests always go as HTTP/2,
    /// upgrades such as WebSocket as HTTP/1.1 on a connection of their own.)
    #[arg(long, value_enum, env = "MESH_PEER_HTTP1", default_value_t = PeerHttp1::Auto)]
    peer_http1: PeerHttp1,
    /// Under --peer-http1 auto: below how many HTTP/1.1 requests in flight to a peer sidecar the
    /// next goes as HTTP/1.1 (at least 1; also the most HTTP/1.1 connections to one peer).
    #[arg(long, env = "MESH_PEER_HTTP1_SLOTS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    peer_http1_slots: u16,
    /// The control plane to follow (xDS ADS), e.g. `http://10.0.0.1:15010`. Without it the
    /// proxy passes every connection through to its original destination.
    #[arg(long, env = "MESH_XDS_ADDRESS")]
    xds_address: Option<String>,
    /// Node id sent to the control plane (default: `sidecar~<pod ip>~<workload name>`).
    #[arg(long, env = "MESH_NODE_ID")]
    node_id: Option<String>,
    /// The pod's namespace.
    #[arg(long, env = "MESH_NAMESPACE", default_value = "default")]
    namespace: String,
    /// The pod's service account.
    #[arg(long, env = "MESH_SERVICE_ACCOUNT", default_value = "default")]
    service_account: String,
    /// The pod's name, under which it registers as a Workload.
    #[arg(long, env = "MESH_WORKLOAD_NAME")]
    workload_name: Option<String>,
    /// The pod's labels, `key=value,key=value` (what Service selectors match).
    #[arg(long, env = "MESH_LABELS", default_value = "")]
    labels: String,
    /// The pod's IP address(es), comma-separated; registers the pod as a Workload.
    #[arg(long, env = "MESH_POD_IP")]
    pod_ip: Option<String>,
    /// Ports the app listens on, comma-separated.
    #[arg(long, env = "MESH_APP_PORTS", default_value = "")]
    app_ports: String,
    /// How long to wait for a client's first bytes on an HTTP Service port before treating the
    /// connection as opaque TCP (ports with appProtocol tcp skip detection).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    detect_timeout: Duration,
    /// The mesh's trust bundle (PEM; `meshctl ca bundle`, or meshd's `<data-dir>/ca/trust-bundle.pem`):
    /// what meshd and peer sidecars are verified against.
    #[arg(long, env = "MESH_TRUST_BUNDLE")]
    trust_bundle: Option<std::path::PathBuf>,
    /// The name meshd's TLS certificate carries (for `https://` addresses).
    #[arg(long, env = "MESH_XDS_SERVER_NAME", default_value = "meshd")]
    xds_server_name: String,
    /// meshd's certificate service, `https://host:15012` (default: --xds-address when that is
    /// https).
    #[arg(long, env = "MESH_CA_ADDRESS")]
    ca_address: Option<String>,
    /// A file holding the token (`meshctl token create`) that proves this pod's namespace and
    /// service account to the CA. With a token the proxy gets an identity and speaks mutual TLS
    /// to other sidecars.
    #[arg(long, env = "MESH_CA_TOKEN_FILE")]
    ca_token_file: Option<std::path::PathBuf>,
    /// The token itself (prefer --ca-token-file: arguments are visible to other users).
    #[arg(
        long,
        env = "MESH_CA_TOKEN",
        hide_env_values = true,
        conflicts_with = "ca_token_file"
    )]
    ca_token: Option<String>,
    /// The mesh's trust domain (the host part of SPIFFE IDs).
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Certificate lifetime to ask the CA for (0: the CA's default).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    cert_ttl: Duration,
    /// Send every outbound connection to this address (a Service VIP:port, say) as if the app had
    /// dialled it, instead of reading the redirected destination: for running without the init
    /// step, as an egress point or in the benchmarks.
    #[arg(long)]
    outbound_destination: Option<SocketAddr>,
    /// Keep the code and read-only data that only startup ran resident, instead of giving their
    /// pages back at the first connection after the proxy is ready, or 10 s after ready without
    /// one (see the `resident` module).
    #[arg(long)]
    keep_startup_pages: bool,
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
        peer_addr: args.peer_addr,
        drain_timeout: args.drain_timeout,
        connect_timeout: args.connect_timeout,
        relay_mode: args.relay,
        peer_http1: args.peer_http1,
        peer_http1_slots: usize::from(args.peer_http1_slots),
        detect_timeout: args.detect_timeout,
        xds: xds_config(&args)?,
        identity: identity_config(&args)?,
        outbound_destination: args.outbound_destination,
        local_congestion: local_congestion(&args)?,
        release_startup_pages: !args.keep_startup_pages,
    };
    tracing::info!(
        threads,
        relay = ?config.relay_mode,
        local_congestion = config
            .local_congestion
            .as_ref()
            .map_or("system", |c| c.local.as_str()),
        peer_http1 = ?config.peer_http1,
        "mesh-proxy starting"
    );
    runtime
        .block_on(mesh_proxy::run(config))
        .context("mesh-proxy failed")
}

/// The congestion control for local connections: as given (and then it must work here), or
/// the default where the host has it; `None` when local connections keep the host's default.
fn local_congestion(args: &Args) -> anyhow::Result<Option<Choice>> {
    match args.local_congestion.as_deref() {
        Some("system") => Ok(None),
        Some(name) => {
            let congestion = Congestion::parse(name).context("--local-congestion")?;
            congestion.check().context("--local-congestion")?;
            let host = local_hop::host_default().context("--local-congestion")?;
            Ok(Choice::new(congestion, host))
        }
        None => {
            let chosen = Congestion::parse(local_hop::DEFAULT).and_then(|congestion| {
                congestion.check()?;
                Ok(Choice::new(congestion, local_hop::host_default()?))
            });
            match chosen {
                Ok(choice) => Ok(choice),
                Err(e) => {
                    tracing::warn!("local connections keep the host's congestion control: {e}");
                    Ok(None)
                }
            }
        }
    }
}

/// The control plane settings and the node this proxy presents to it.
fn xds_config(args: &Args) -> anyhow::Result<Option<XdsConfig>> {
    let Some(server) = &args.xds_address else {
        return Ok(None);
    };
    let tls = if server.starts_with("https://") {
        Some(meshd_endpoint(args, server)?.tls)
    } else if server.starts_with("http://") {
        None
    } else {
        anyhow::bail!(
            "--xds-address `{server}` must look like http://host:15010 or https://host:15012"
        );
    };
    let mut labels = BTreeMap::new();
    for pair in args
        .labels
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--labels: `{pair}` is not key=value"))?;
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    let pod_ip = args.pod_ip.clone().unwrap_or_default();
    let workload = args.workload_name.clone().unwrap_or_default();
    let mut fields = vec![
        (node_meta::NAMESPACE, args.namespace.as_str()),
        (node_meta::SERVICE_ACCOUNT, args.service_account.as_str()),
    ];
    for (key, value) in [
        (node_meta::INSTANCE_IPS, &pod_ip),
        (node_meta::WORKLOAD_NAME, &workload),
        (node_meta::PORTS, &args.app_ports),
    ] {
        if !value.is_empty() {
            fields.push((key, value.as_str()));
        }
    }
    let id = args
        .node_id
        .clone()
        .unwrap_or_else(|| format!("sidecar~{pod_ip}~{workload}"));
    // A registered workload gets its inbound policy under its name.
    let policy_name = (!pod_ip.is_empty() && !workload.is_empty())
        .then(|| format!("{}/{workload}", args.namespace));
    Ok(Some(XdsConfig {
        server: server.clone(),
        tls: tls.flatten(),
        policy_name,
        node: Node {
            id,
            cluster: args.namespace.clone(),
            metadata: Some(node_meta::build(&fields, &labels)),
            user_agent_name: "mesh-proxy".into(),
            ..Default::default()
        },
    }))
}

/// meshd's TLS endpoint at `url`, verified against --trust-bundle.
fn meshd_endpoint(args: &Args, url: &str) -> anyhow::Result<MeshdEndpoint> {
    let Some(bundle) = &args.trust_bundle else {
        anyhow::bail!(
            "`{url}` is TLS: give the trust bundle with --trust-bundle (e.g. `meshctl ca bundle > bundle.pem`)"
        );
    };
    let pem = std::fs::read_to_string(bundle)
        .with_context(|| format!("cannot read --trust-bundle {}", bundle.display()))?;
    Ok(MeshdEndpoint::tls(url, &pem, &args.xds_server_name))
}

/// The identity to get from meshd's CA, when a token is given.
fn identity_config(args: &Args) -> anyhow::Result<Option<IdentityConfig>> {
    let token = match (&args.ca_token_file, &args.ca_token) {
        (Some(path), _) => TokenSource::File(path.clone()),
        (None, Some(token)) => TokenSource::Value(token.clone()),
        (None, None) => return Ok(None),
    };
    let ca = args
        .ca_address
        .clone()
        .or_else(|| {
            args.xds_address
                .clone()
                .filter(|a| a.starts_with("https://"))
        })
        .context(
            "a CA token was given but no CA: set --ca-address https://<meshd>:15012 (or an https --xds-address)",
        )?;
    if !ca.starts_with("https://") {
        anyhow::bail!("--ca-address `{ca}` must be meshd's TLS port, https://host:15012");
    }
    let endpoint = meshd_endpoint(args, &ca)?;
    let id = SpiffeId::new(&args.trust_domain, &args.namespace, &args.service_account)
        .context("--trust-domain, --namespace and --service-account do not make an identity")?;
    let bundle_path = args
        .trust_bundle
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let bundle_pem = std::fs::read_to_string(&bundle_path)
        .with_context(|| format!("cannot read --trust-bundle {bundle_path}"))?;
    Ok(Some(IdentityConfig {
        id,
        ca: endpoint,
        token,
        requested_ttl: args.cert_ttl,
        bundle_pem,
        bundle_path,
    }))
}
