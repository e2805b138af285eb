//! A real `meshd` process for a benchmark: its own data directory and loopback ports, stopped
//! (and its directory removed) on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use std::process::{Child, Command};

use crate::http1;

/// A running meshd.
#[derive(Debug)]
pub struct Meshd {
    child: Child,
    pub pid: u32,
    /// Plaintext xDS.
    pub xds: SocketAddr,
    /// Management API.
    pub api: SocketAddr,
    data_dir: PathBuf,
}

/// How to start it.
#[derive(Debug, Clone)]
pub struct MeshdOptions {
    pub binary: PathBuf,
    /// First of three consecutive loopback ports: xDS, TLS xDS, API.
    pub port_base: u16,
    /// `taskset -c` CPU list, or none.
    pub cpus: Option<String>,
}

impl Meshd {
    pub async fn start(opts: &MeshdOptions) -> anyhow::Result<Meshd> {
        if !opts.binary.is_file() {
            bail!(
                "no meshd at {} (build it: cargo build --release -p mesh-control-plane, or pass --meshd)",
                opts.binary.display()
            );
        }
        let data_dir = std::env::temp_dir().join(format!(
            "mesh-cp-scale-{}-{}",
            std::process::id(),
            opts.port_base
        ));
        let _ = std::fs::remove_dir_all(&data_dir);
        let port = |i: u16| SocketAddr::from(([127, 0, 0, 1], opts.port_base + i));
        let (xds, tls, api) = (port(0), port(1), port(2));
        let mut command = match &opts.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(&opts.binary);
                c
            }
            None => Command::new(&opts.binary),
        };
        command
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--grpc-addr", &xds.to_string()])
            .args(["--grpc-tls-addr", &tls.to_string()])
            .args(["--api-addr", &api.to_string()])
            .args(["--log", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", opts.binary.display()))?;
        let pid = child.id();
        let mut meshd = Meshd {
            child,
            pid,
            xds,
            api,
            data_dir,
        };
        meshd.wait_ready(Duration::from_secs(20)).await?;
        Ok(meshd)
    }

    /// Waits for `/ready` on the API (a port that answers is the readiness signal).
    async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("meshd exited before it was ready ({status}); its log is above");
            }
            if let Ok(r) = http1::request(self.api, "GET", "/ready", "").await {
                if r.status == 200 {
                    return Ok(());
                }
            }
            if start.elapsed() > limit {
                bail!("meshd was not ready within {limit:?} at {}", self.api);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Applies YAML documents; returns the generation the apply produced.
    pub async fn apply(&self, yaml: &str) -> anyhow::Result<u64> {
        let reply = http1::request(self.api, "POST", "/v1/apply", yaml).await?;
        if reply.status != 200 {
            bail!("meshd refused the apply ({}): {}", reply.status, reply.body);
        }
        let body: serde_json::Value =
            serde_json::from_str(&reply.body).context("apply: the answer is not JSON")?;
        body["generation"]
            .as_u64()
            .context("apply: the answer has no generation")
    }

    /// Whether meshd itself reports every proxy in sync with `generation` (its `/v1/wait`).
    pub async fn wait_synced(&self, generation: u64, timeout: Duration) -> anyhow::Result<String> {
        let path = format!(
            "/v1/wait?generation={generation}&timeoutMs={}",
            timeout.as_millis()
        );
        let reply = http1::request(self.api, "GET", &path, "").await?;
        Ok(reply.body)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for Meshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
