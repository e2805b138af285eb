//! End-to-end: a gigabyte each way through both sidecars (HTTP/1.1 to the client's sidecar,
//! HTTP/2 over mutual TLS between the sidecars, HTTP/1.1 to the app), every byte checked, and
//! neither sidecar buffering a body whole.
//!
//! Pods: `cp` (meshd), `a` (client), `b` (the bulk server on 9090, Service `bulk` at
//! 10.96.0.30:80).

use mesh_tests::{IpFamilies, Network, Process};

const GIB: u64 = 1 << 30;

/// Peak resident memory of a process (VmHWM), in KiB.
fn peak_rss_kib(process: &Process) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", process.pid()))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/{}/status", process.pid()))
}

#[test]
fn a_gigabyte_streams_each_way_through_both_sidecars() -> anyhow::Result<()> {
    let net = Network::new("stream-1g", IpFamilies::V4)?;
    let cp = net.pod("cp")?;
    let a = net.pod("a")?;
    let b = net.pod("b")?;
    let _meshd = cp.start_meshd(&net.log_dir.join("meshd-data"), &[])?;
    cp.apply(
        "apiVersion: mesh.dev/v1\nkind: Service\nmetadata: {name: bulk}\nspec: {ports: [{port: 80, targetPort: 9090, appProtocol: http}], selector: {app: bulk}, vip: 10.96.0.30}\n",
        false,
    )?;
    let _app = b.start_app(&["bulk", "--listen", "0.0.0.0:9090"])?;
    a.init_ok(&[])?;
    b.init_ok(&[])?;
    let a_proxy = a.start_meshed_sidecar(&cp, "app=client")?;
    let b_proxy = b.start_meshed_sidecar(&cp, "app=bulk")?;

    // A small transfer first: the peak memory after it is the baseline.
    let run = |mode: &str, bytes: u64| -> anyhow::Result<String> {
        let out = a.run_app(&[
            mode,
            "--connect",
            "10.96.0.30:80",
            "--bytes",
            &bytes.to_string(),
        ])?;
        anyhow::ensure!(
            out.status.success(),
            "{mode} {bytes}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    assert_eq!(run("bulk-put", 1 << 20)?, format!("received {}", 1 << 20));
    assert_eq!(run("bulk-get", 1 << 20)?, format!("received {}", 1 << 20));
    let before = [peak_rss_kib(&a_proxy)?, peak_rss_kib(&b_proxy)?];

    assert_eq!(run("bulk-put", GIB)?, format!("received {GIB}"));
    assert_eq!(run("bulk-get", GIB)?, format!("received {GIB}"));

    // Streaming, not buffering: a sidecar that held a body would grow by a gigabyte. (The
    // benchmarks measure memory; this only tells streaming from buffering.)
    let after = [peak_rss_kib(&a_proxy)?, peak_rss_kib(&b_proxy)?];
    eprintln!("sidecar peak RSS (KiB) after 1 MiB: {before:?}, after 1 GiB each way: {after:?}");
    for (side, (b, a)) in ["a", "b"].iter().zip(before.iter().zip(after.iter())) {
        assert!(
            a.saturating_sub(*b) < 128 * 1024,
            "sidecar {side} grew from {b} KiB to {a} KiB over the transfers"
        );
    }
    Ok(())
}
