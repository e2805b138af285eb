//! Scenes that many tests start from.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::network::{IpFamilies, Network};
use crate::pod::Pod;
use crate::process::Process;

/// Two meshed pods, `a` (10.77.0.2, client) and `b` (10.77.0.3, server), each with the init
/// step applied and a ready sidecar. Fields drop in order: sidecars, then pods, then network.
#[derive(Debug)]
pub struct MeshedPair {
    pub a_proxy: Process,
    pub b_proxy: Process,
    pub a: Pod,
    pub b: Pod,
    pub net: Network,
}

/// Makes a [`MeshedPair`]; `a_init` and `b_init` are extra flags for each pod's init step.
pub fn meshed_pair(
    label: &str,
    families: IpFamilies,
    a_init: &[&str],
    b_init: &[&str],
) -> anyhow::Result<MeshedPair> {
    let net = Network::new(label, families)?;
    let a = net.pod("a")?;
    let b = net.pod("b")?;
    a.init_ok(a_init)?;
    b.init_ok(b_init)?;
    let a_proxy = a.start_sidecar(&[])?;
    let b_proxy = b.start_sidecar(&[])?;
    Ok(MeshedPair {
        a_proxy,
        b_proxy,
        a,
        b,
        net,
    })
}

/// Retries `check` until it returns `Ok(true)` or `timeout` passes; for values that settle
/// asynchronously (a counter updated when a connection finishes).
pub fn eventually(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not reached within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fails unless `promtool check metrics` accepts `metrics` (written to `dir` for it to read).
pub fn promtool_check(metrics: &str, dir: &std::path::Path, name: &str) -> anyhow::Result<()> {
    let file = dir.join(format!("{name}-metrics.txt"));
    std::fs::write(&file, metrics)?;
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", file.display()))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
