//! A pod: a network namespace on the test bridge, where the init step, the sidecar and an app run.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::binaries::binary;
use crate::cmd::{output, run, stdout};
use crate::process::{Process, wait_ready_line};

/// uid and gid the sidecar runs as (the init step exempts them).
pub const PROXY_UID: u32 = 1337;
/// How long a process may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A pod. Dropping it kills what still runs in it and deletes its namespace.
#[derive(Debug)]
pub struct Pod {
    pub ns: String,
    pub role: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    log_dir: PathBuf,
}

impl Pod {
    pub(crate) fn create(
        ns: String,
        role: String,
        ipv4: Ipv4Addr,
        ipv6: Option<Ipv6Addr>,
        log_dir: PathBuf,
    ) -> anyhow::Result<Pod> {
        run("ip", &["netns", "add", &ns])?;
        let pod = Pod {
            ns,
            role,
            ipv4,
            ipv6,
            log_dir,
        };
        run("ip", &["-n", &pod.ns, "link", "set", "lo", "up"])?;
        Ok(pod)
    }

    /// The pod's IPv6 address, or an error if the network is IPv4-only.
    pub fn ipv6(&self) -> anyhow::Result<Ipv6Addr> {
        self.ipv6
            .context("this pod has no IPv6 address (use IpFamilies::Dual)")
    }

    pub fn ip(&self) -> IpAddr {
        self.ipv4.into()
    }

    /// A command that runs `program` inside the pod as root.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns))
            .arg("--")
            .arg(program);
        cmd
    }

    /// A command that runs `program` inside the pod as `uid`/`gid`.
    pub fn command_as(&self, uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns))
            .arg(format!("--setuid={uid}"))
            .arg(format!("--setgid={uid}"))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs a command in the pod and returns its output whatever its exit status.
    pub fn output(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        output(self.command(program).args(args))
    }

    /// Runs a command in the pod; fails unless it exits 0.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self.output(program, args)?;
        if !out.status.success() {
            bail!(
                "in pod {}: `{program} {}` failed ({}): {}{}",
                self.role,
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(stdout(&out))
    }

    /// Runs `mesh-iptables-init ARGS` in the pod as root.
    pub fn init(&self, args: &[&str]) -> anyhow::Result<Output> {
        output(self.command(binary("mesh-iptables-init")?).args(args))
    }

    /// Runs `mesh-iptables-init ARGS` and fails unless it succeeds.
    pub fn init_ok(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = self.init(args)?;
        if !out.status.success() {
            bail!(
                "mesh-iptables-init {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts the sidecar as uid 1337 and waits until its admin `/ready` answers 200.
    pub fn start_sidecar(&self, args: &[&str]) -> anyhow::Result<Process> {
        let mut process = self.spawn_sidecar(args)?;
        self.wait_http_ok("http://127.0.0.1:15000/ready", &mut process)?;
        Ok(process)
    }

    /// Starts `mesh-proxy ARGS` like [`Pod::start_sidecar`], without waiting for it to be ready.
    pub fn spawn_sidecar(&self, args: &[&str]) -> anyhow::Result<Process> {
        let (log, path) = self.log_file("proxy")?;
        let child = self
            .command_as(PROXY_UID, binary("mesh-proxy")?)
            .args(["--threads", "1", "--drain-timeout", "10s"])
            .args(args)
            .env("MESH_LOG", "info,mesh_proxy=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("cannot start mesh-proxy")?;
        Ok(Process::new(
            format!("{}/mesh-proxy", self.role),
            child,
            path,
        ))
    }

    /// Starts `mesh-test-app ARGS` as root and waits for it to print `ready`.
    pub fn start_app(&self, args: &[&str]) -> anyhow::Result<Process> {
        self.start_program(binary("mesh-test-app")?, args)
    }

    /// Starts `program ARGS` as root and waits for it to print a line starting with `ready`.
    pub fn start_program(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
    ) -> anyhow::Result<Process> {
        let (log, path) = self.log_file("app")?;
        let mut child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.try_clone()?))
            .spawn()
            .context("cannot start mesh-test-app")?;
        let ready = wait_ready_line(&mut child, &log, READY_TIMEOUT);
        let process = Process::new(
            format!("{}/mesh-test-app {}", self.role, args.join(" ")),
            child,
            path,
        );
        ready.with_context(|| format!("app in pod {}: {}", self.role, process.log_text()))?;
        Ok(process)
    }

    /// Starts a sidecar that follows the meshd running in pod `cp` over TLS (port 15012), with
    /// the identity `spiffe://cluster.local/ns/default/sa/<service_account>` from meshd's CA (a
    /// token from `meshctl token create`), registering this pod with `labels`.
    pub fn start_meshed_sidecar_as(
        &self,
        cp: &Pod,
        labels: &str,
        service_account: &str,
        extra: &[&str],
    ) -> anyhow::Result<Process> {
        let token = cp.run(
            binary("meshctl")?.to_str().context("binary path")?,
            &[
                "token",
                "create",
                "-n",
                "default",
                "--service-account",
                service_account,
            ],
        )?;
        let mut args = self.meshed_sidecar_args(cp, labels, service_account, &token)?;
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.start_sidecar(&args)
    }

    /// The flags of a sidecar following the meshd in pod `cp` over TLS, with `token` (given to
    /// it in a file only it can read) for `service_account`'s certificate.
    pub fn meshed_sidecar_args(
        &self,
        cp: &Pod,
        labels: &str,
        service_account: &str,
        token: &str,
    ) -> anyhow::Result<Vec<String>> {
        let mut ips = self.ipv4.to_string();
        if let Some(v6) = self.ipv6 {
            ips.push_str(&format!(",{v6}"));
        }
        let bundle = cp.run(
            binary("meshctl")?.to_str().context("binary path")?,
            &["ca", "bundle"],
        )?;
        let token_file = self.secret_file("ca-token", token, PROXY_UID)?;
        let bundle_file =
            self.secret_file("trust-bundle.pem", &format!("{bundle}\n"), PROXY_UID)?;
        Ok(vec![
            "--xds-address".to_string(),
            format!("https://{}:15012", cp.ipv4),
            "--trust-bundle".to_string(),
            bundle_file.display().to_string(),
            "--ca-token-file".to_string(),
            token_file.display().to_string(),
            "--service-account".to_string(),
            service_account.to_string(),
            "--pod-ip".to_string(),
            ips,
            "--workload-name".to_string(),
            self.role.clone(),
            "--labels".to_string(),
            labels.to_string(),
        ])
    }

    /// [`Pod::start_meshed_sidecar_as`] with the service account `default`.
    pub fn start_meshed_sidecar(&self, cp: &Pod, labels: &str) -> anyhow::Result<Process> {
        self.start_meshed_sidecar_as(cp, labels, "default", &[])
    }

    /// Writes `text` to a file of this pod's that only `uid` may read.
    pub fn secret_file(&self, name: &str, text: &str, uid: u32) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.log_dir.join(format!("{}-{name}", self.role));
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        std::os::unix::fs::chown(&path, Some(uid), Some(uid))
            .with_context(|| format!("cannot chown {}", path.display()))?;
        Ok(path)
    }

    /// Starts meshd in this pod (xDS on `0.0.0.0:15010`, API on `127.0.0.1:15080`), keeping its
    /// state in `data_dir`, and waits until its API answers `/ready`.
    pub fn start_meshd(
        &self,
        data_dir: &std::path::Path,
        args: &[&str],
    ) -> anyhow::Result<Process> {
        let (log, path) = self.log_file("meshd")?;
        let child = self
            .command(binary("meshd")?)
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--grpc-addr",
                "0.0.0.0:15010",
                "--api-addr",
                "127.0.0.1:15080",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("cannot start meshd")?;
        let mut process = Process::new(format!("{}/meshd", self.role), child, path);
        self.wait_http_ok("http://127.0.0.1:15080/ready", &mut process)?;
        Ok(process)
    }

    /// Runs `meshctl ARGS` in this pod (where meshd's API is on loopback).
    pub fn meshctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        output(self.command(binary("meshctl")?).args(args))
    }

    /// `meshctl apply -f` of `yaml` (with `--wait` when `wait`) in this pod, where meshd runs;
    /// fails unless meshctl succeeds, and returns what it printed.
    pub fn apply(&self, yaml: &str, wait: bool) -> anyhow::Result<String> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.log_dir.join(format!("apply-{}-{n}.yaml", self.role));
        std::fs::write(&path, yaml)?;
        let path = path.to_string_lossy().into_owned();
        let mut args = vec!["apply", "-f", path.as_str()];
        if wait {
            args.push("--wait");
        }
        let out = self.meshctl(&args)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::ensure!(out.status.success(), "meshctl apply failed: {text}");
        Ok(text)
    }

    /// Runs `mesh-test-app ARGS` to completion (e.g. `send`).
    pub fn run_app(&self, args: &[&str]) -> anyhow::Result<Output> {
        output(self.command(binary("mesh-test-app")?).args(args))
    }

    /// `curl -sS --max-time 10 ARGS` in the pod.
    pub fn curl(&self, args: &[&str]) -> anyhow::Result<Output> {
        output(
            self.command("curl")
                .args(["-sS", "--max-time", "10"])
                .args(args),
        )
    }

    /// GET on the sidecar's admin endpoint.
    pub fn admin(&self, path: &str) -> anyhow::Result<String> {
        self.run(
            "curl",
            &[
                "-sSf",
                "--max-time",
                "5",
                &format!("http://127.0.0.1:15000{path}"),
            ],
        )
    }

    /// The value of one metric series, e.g. `mesh_tcp_connections_opened_total{direction="outbound"}`.
    pub fn metric(&self, series: &str) -> anyhow::Result<u64> {
        let text = self.admin("/metrics")?;
        parse_metric(&text, series).with_context(|| format!("no series `{series}` in:\n{text}"))
    }

    /// `iptables-save -t nat` (or ip6tables) without comments and counters, for comparisons.
    pub fn nat_rules(&self, v6: bool) -> anyhow::Result<String> {
        let text = self.run(
            if v6 {
                "ip6tables-save"
            } else {
                "iptables-save"
            },
            &["-t", "nat"],
        )?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.find(" [") {
                Some(i) if l.starts_with(':') => &l[..i],
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// Polls `url` from inside the pod until it answers 2xx; fails early if `process` exits.
    fn wait_http_ok(&self, url: &str, process: &mut Process) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let out = self.output("curl", &["-sf", "--max-time", "1", url])?;
            if out.status.success() {
                return Ok(());
            }
            if !process.is_running() {
                bail!(
                    "{} exited before it was ready; log:\n{}",
                    process.name,
                    process.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready at {url} within {READY_TIMEOUT:?}; log:\n{}",
                    process.name,
                    process.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_file(&self, what: &str) -> anyhow::Result<(std::fs::File, PathBuf)> {
        let path = self
            .log_dir
            .join(format!("{}-{what}-{}.log", self.role, unique()));
        let file = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok((file, path))
    }
}

fn unique() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Finds `series value` in a Prometheus text exposition.
pub fn parse_metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Ok(out) = run("ip", &["netns", "pids", &self.ns]) {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = run("kill", &["-KILL", pid]);
            }
        }
        let _ = run("ip", &["netns", "del", &self.ns]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lookup_is_exact() {
        let text = "a{d=\"x\"} 3\na{d=\"xy\"} 4\n";
        assert_eq!(parse_metric(text, "a{d=\"x\"}"), Some(3));
        assert_eq!(parse_metric(text, "a{d=\"xy\"}"), Some(4));
        assert_eq!(parse_metric(text, "a{d=\"z\"}"), None);
    }
}
