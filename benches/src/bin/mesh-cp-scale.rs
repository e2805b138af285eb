//! `mesh-cp-scale`: the control-plane scale benchmark.
//!
//! Starts a real `meshd`, applies S Services, connects N simulated sidecars (each registers its
//! workload and subscribes as `mesh-proxy` does), waits until all are in sync, then applies a rule
//! change (an HTTPRoute on one Service that every sidecar routes to) several times and measures,
//! per change, the time from sending the apply until the last client has ACKed it, the bytes
//! pushed, and meshd's CPU time; plus meshd's peak RSS. meshd runs on CPU 1 (`--no-pin` to let
//! the kernel choose); `scripts/bench-control-plane.sh` runs the clients on CPU 0.
//!
//!     mesh-cp-scale --clients 100,1000 --services 1000

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use mesh_benches::ads_sim::{Fleet, Variant, run_client};
use mesh_benches::meshd::{Meshd, MeshdOptions};
use mesh_benches::proc_stats::ProcStats;

#[derive(Debug, Parser)]
#[command(name = "mesh-cp-scale", about = "meshd under N simulated sidecars")]
struct Args {
    /// Numbers of simulated sidecars, one run each.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    clients: Vec<usize>,
    /// Services in the mesh (every sidecar sees all of them).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// ADS variants, one run each.
    #[arg(long, value_delimiter = ',', default_value = "sotw,delta")]
    variant: Vec<Variant>,
    /// Rule changes measured per run.
    #[arg(long, default_value_t = 5)]
    changes: usize,
    /// The meshd binary [default: the meshd beside this program, as cargo builds them].
    #[arg(long)]
    meshd: Option<PathBuf>,
    /// First of the three loopback ports meshd uses.
    #[arg(long, default_value_t = 19600)]
    port_base: u16,
    /// Do not pin meshd to CPU 1.
    #[arg(long)]
    no_pin: bool,
    /// How long the initial sync and each change may take.
    #[arg(long, default_value = "120", value_parser = parse_secs)]
    timeout: Duration,
    /// Keep the clients connected this long after the last change, for a profiler to look at
    /// meshd with every client in sync (benches/meshd-heaptrack.sh).
    #[arg(long, default_value = "0", value_parser = parse_secs)]
    hold: Duration,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("`{s}` is not a number of seconds"))
}

/// One run's figures.
#[derive(Debug)]
struct Row {
    variant: Variant,
    clients: usize,
    services: usize,
    sync: Duration,
    sync_bytes: u64,
    /// Per change: apply → last ACK.
    change_ms: Vec<f64>,
    /// Per change: apply → median client's ACK.
    change_p50_ms: Vec<f64>,
    change_bytes: Vec<u64>,
    change_cpu_ms: Vec<f64>,
    /// CPU of this process (every simulated client) per change.
    clients_cpu_ms: Vec<f64>,
    meshd_confirms: String,
    rss_mib: f64,
    peak_rss_mib: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    check_fd_limit(args.clients.iter().copied().max().unwrap_or(0))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for &variant in &args.variant {
        for &clients in &args.clients {
            let row = runtime.block_on(run(&args, variant, clients))?;
            print_row(&row);
            rows.push(row);
        }
    }
    println!();
    print_table(&rows);
    Ok(())
}

/// Each client holds one connection, and meshd one per client: both need the open files.
fn check_fd_limit(clients: usize) -> anyhow::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    let needed = clients as u64 + 256;
    match soft {
        Some(soft) if soft < needed => bail!(
            "{clients} clients need about {needed} open files, but the limit is {soft}: run `ulimit -n {}` first (scripts/bench-control-plane.sh does)",
            needed * 2
        ),
        _ => Ok(()),
    }
}

fn services_yaml(services: usize) -> String {
    (0..services)
        .map(|i| {
            format!(
                "apiVersion: mesh.dev/v1\nkind: Service\nmetadata: {{name: svc-{i}}}\nspec: {{ports: [{{port: 80, targetPort: 8080}}], selector: {{app: svc-{i}}}}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The rule change: svc-0 splits between itself and svc-1, with weights that differ per change.
fn route_yaml(change: usize) -> String {
    let canary = 1 + change % 49;
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: svc-0-split}}\nspec:\n  parentRefs: [{{name: svc-0, port: 80}}]\n  rules:\n  - backendRefs:\n    - {{name: svc-0, port: 80, weight: {}}}\n    - {{name: svc-1, port: 80, weight: {canary}}}\n",
        100 - canary
    )
}

/// `--meshd`, or the meshd in the directory this program runs from.
fn meshd_binary(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.meshd {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let dir = exe
        .parent()
        .context("this program's path has no directory")?;
    Ok(dir.join("meshd"))
}

async fn run(args: &Args, variant: Variant, clients: usize) -> anyhow::Result<Row> {
    println!(
        "\n== {} clients ({}), {} services",
        clients,
        variant.as_str(),
        args.services
    );
    let meshd = Meshd::start(&MeshdOptions {
        binary: meshd_binary(args)?,
        port_base: args.port_base,
        cpus: (!args.no_pin).then(|| "1".to_string()),
    })
    .await?;
    meshd
        .apply(&services_yaml(args.services))
        .await
        .context("applying the services")?;
    let fleet = Fleet::new(clients);
    let start = Instant::now();
    let connecting = Arc::new(tokio::sync::Semaphore::new(64));
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            tokio::spawn(run_client(
                i,
                meshd.xds,
                args.services,
                variant,
                fleet.clone(),
                connecting.clone(),
            ))
        })
        .collect();
    wait_for(
        &fleet,
        args.timeout,
        "initial sync",
        || fleet.synced() == clients,
        || {
            format!(
                "{}/{clients} in sync, {:.1} MB received",
                fleet.synced(),
                fleet.bytes() as f64 / 1e6
            )
        },
    )
    .await?;
    let sync = start.elapsed();
    let sync_bytes = fleet.bytes();
    println!(
        "  all {clients} in sync after {:.2} s ({:.1} MB pushed)",
        sync.as_secs_f64(),
        sync_bytes as f64 / 1e6
    );
    let mut row = Row {
        variant,
        clients,
        services: args.services,
        sync,
        sync_bytes,
        change_ms: vec![],
        change_p50_ms: vec![],
        change_bytes: vec![],
        change_cpu_ms: vec![],
        clients_cpu_ms: vec![],
        meshd_confirms: String::new(),
        rss_mib: 0.0,
        peak_rss_mib: 0.0,
    };
    for change in 0..args.changes {
        let before = ProcStats::read(meshd.pid)?;
        let ours_before = ProcStats::read(std::process::id())?;
        let bytes_before = fleet.bytes();
        let t0 = Instant::now();
        let generation = meshd.apply(&route_yaml(change)).await?;
        wait_for(
            &fleet,
            args.timeout,
            "the rule change",
            || fleet.at_generation(generation) == clients,
            || {
                format!(
                    "{}/{clients} ACKed generation {generation}",
                    fleet.at_generation(generation)
                )
            },
        )
        .await?;
        let mut times: Vec<f64> = fleet
            .ack_times(generation)
            .into_iter()
            .map(|t| t.map_or(f64::NAN, |t| t.duration_since(t0).as_secs_f64() * 1e3))
            .collect();
        times.sort_by(f64::total_cmp);
        let after = ProcStats::read(meshd.pid)?;
        let ours = (ProcStats::read(std::process::id())?.cpu - ours_before.cpu).as_secs_f64() * 1e3;
        let last = times.last().copied().unwrap_or(f64::NAN);
        let p50 = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
        let bytes = fleet.bytes() - bytes_before;
        let cpu = (after.cpu - before.cpu).as_secs_f64() * 1e3;
        println!(
            "  change {}: generation {generation} ACKed by all {clients} in {last:.1} ms (median client {p50:.1} ms), {:.2} MB pushed, meshd CPU {cpu:.0} ms, the clients' CPU {ours:.0} ms",
            change + 1,
            bytes as f64 / 1e6
        );
        row.change_ms.push(last);
        row.change_p50_ms.push(p50);
        row.change_bytes.push(bytes);
        row.change_cpu_ms.push(cpu);
        row.clients_cpu_ms.push(ours);
        if change + 1 == args.changes {
            // meshd's own view (what `meshctl apply --wait` reads), asked once it is all done.
            let answer = meshd
                .wait_synced(generation, Duration::from_secs(5))
                .await?;
            let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
            let count = |k: &str| v[k].as_array().map_or(0, Vec::len);
            row.meshd_confirms = format!(
                "{} synced, {} pending, {} NACKed",
                count("synced"),
                count("pending"),
                count("nacked")
            );
            println!("  meshd's /v1/wait: {}", row.meshd_confirms);
        }
    }
    let end = ProcStats::read(meshd.pid)?;
    row.rss_mib = end.rss_kib as f64 / 1024.0;
    row.peak_rss_mib = end.peak_rss_kib as f64 / 1024.0;
    println!(
        "  meshd RSS {:.1} MiB now, {:.1} MiB peak; data dir {}",
        row.rss_mib,
        row.peak_rss_mib,
        meshd.data_dir().display()
    );
    if !args.hold.is_zero() {
        println!(
            "  holding the {clients} clients connected for {} s",
            args.hold.as_secs()
        );
        tokio::time::sleep(args.hold).await;
    }
    for t in tasks {
        t.abort();
    }
    drop(meshd);
    Ok(row)
}

/// Waits (on the clients' progress signal) until `done`, printing `status` each second.
async fn wait_for(
    fleet: &Arc<Fleet>,
    limit: Duration,
    what: &str,
    done: impl Fn() -> bool,
    status: impl Fn() -> String,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last_print = Instant::now();
    while !done() {
        let failures = fleet.failures();
        if !failures.is_empty() {
            bail!(
                "{what}: {} clients failed, e.g. {}",
                failures.len(),
                failures[0]
            );
        }
        if start.elapsed() > limit {
            bail!("{what} did not finish within {limit:?}: {}", status());
        }
        if last_print.elapsed() > Duration::from_secs(1) {
            println!("  ... {}", status());
            last_print = Instant::now();
        }
        let _ = tokio::time::timeout(Duration::from_millis(250), fleet.progress.notified()).await;
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

fn print_row(r: &Row) {
    println!(
        "  => change ACKed by all: median {:.1} ms, max {:.1} ms",
        median(&r.change_ms),
        r.change_ms.iter().copied().fold(f64::NAN, f64::max)
    );
}

fn print_table(rows: &[Row]) {
    println!(
        "| variant | clients | services | initial sync s | initial MB pushed | change → all ACKed ms, median (max) | median client ms | MB pushed per change | meshd CPU ms per change | clients' CPU ms per change | meshd RSS MiB (peak) | meshd's /v1/wait |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let bytes: Vec<f64> = r.change_bytes.iter().map(|&b| b as f64 / 1e6).collect();
        println!(
            "| {} | {} | {} | {:.2} | {:.1} | {:.1} ({:.1}) | {:.1} | {:.2} | {:.0} | {:.0} | {:.1} ({:.1}) | {} |",
            r.variant.as_str(),
            r.clients,
            r.services,
            r.sync.as_secs_f64(),
            r.sync_bytes as f64 / 1e6,
            median(&r.change_ms),
            r.change_ms.iter().copied().fold(f64::NAN, f64::max),
            median(&r.change_p50_ms),
            median(&bytes),
            median(&r.change_cpu_ms),
            median(&r.clients_cpu_ms),
            r.rss_mib,
            r.peak_rss_mib,
            r.meshd_confirms
        );
    }
}
