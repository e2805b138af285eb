//! A test network: a bridge in its own namespace, and pods attached to it.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;

use crate::cmd::run;
use crate::pod::Pod;

/// Prefix of every namespace the harness makes: `mt<pid>n<counter>-<role>`.
const PREFIX: &str = "mt";

/// The bridge's addresses, the pods' default gateway.
const GATEWAY_V4: &str = "10.77.0.1";
const GATEWAY_V6: &str = "fd77::1";

/// Which address families the pods get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpFamilies {
    V4,
    /// IPv4 and IPv6 (dual stack).
    Dual,
}

/// The bridge namespace; pods are made through it. Dropping it removes the bridge namespace
/// (pods remove their own namespaces when dropped).
#[derive(Debug)]
pub struct Network {
    pub name: String,
    bridge_ns: String,
    families: IpFamilies,
    next_host: AtomicU32,
    pub log_dir: PathBuf,
}

impl Network {
    /// Makes a new, empty network. `label` shows up in log paths only.
    pub fn new(label: &str, families: IpFamilies) -> anyhow::Result<Network> {
        require_root_tools()?;
        sweep_stale();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{PREFIX}{}n{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let log_dir = std::env::temp_dir()
            .join("mesh-tests")
            .join(format!("{name}-{label}"));
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("cannot create {}", log_dir.display()))?;
        let bridge_ns = format!("{name}-br");
        let network = Network {
            name,
            bridge_ns,
            families,
            next_host: AtomicU32::new(2),
            log_dir,
        };
        run("ip", &["netns", "add", &network.bridge_ns])?;
        run("ip", &["-n", &network.bridge_ns, "link", "set", "lo", "up"])?;
        run(
            "ip",
            &[
                "-n",
                &network.bridge_ns,
                "link",
                "add",
                "br0",
                "type",
                "bridge",
            ],
        )?;
        run(
            "ip",
            &["-n", &network.bridge_ns, "link", "set", "br0", "up"],
        )?;
        // The bridge is every pod's gateway, so connections to Service VIPs have a route (they
        // are redirected to the sidecar before they would leave the pod).
        run(
            "ip",
            &[
                "-n",
                &network.bridge_ns,
                "addr",
                "add",
                &format!("{GATEWAY_V4}/24"),
                "dev",
                "br0",
            ],
        )?;
        if families == IpFamilies::Dual {
            run(
                "ip",
                &[
                    "-n",
                    &network.bridge_ns,
                    "-6",
                    "addr",
                    "add",
                    &format!("{GATEWAY_V6}/64"),
                    "dev",
                    "br0",
                    "nodad",
                ],
            )?;
        }
        Ok(network)
    }

    /// Adds a pod: a namespace with `eth0` on the bridge, the next free address(es), and lo up.
    pub fn pod(&self, role: &str) -> anyhow::Result<Pod> {
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        let host8 = u8::try_from(host).context("too many pods in one network")?;
        let ipv4 = Ipv4Addr::new(10, 77, 0, host8);
        let ipv6 = (self.families == IpFamilies::Dual)
            .then(|| Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, host as u16));
        let ns = format!("{}-{role}", self.name);
        let pod = Pod::create(ns, role.to_string(), ipv4, ipv6, self.log_dir.clone())?;
        let port = format!("v{host}");
        run(
            "ip",
            &[
                "-n",
                &self.bridge_ns,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &pod.ns,
            ],
        )?;
        run(
            "ip",
            &[
                "-n",
                &self.bridge_ns,
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ],
        )?;
        run(
            "ip",
            &[
                "-n",
                &pod.ns,
                "addr",
                "add",
                &format!("{ipv4}/24"),
                "dev",
                "eth0",
            ],
        )?;
        if let Some(v6) = ipv6 {
            run(
                "ip",
                &[
                    "-n",
                    &pod.ns,
                    "-6",
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            )?;
        }
        run("ip", &["-n", &pod.ns, "link", "set", "eth0", "up"])?;
        run(
            "ip",
            &["-n", &pod.ns, "route", "add", "default", "via", GATEWAY_V4],
        )?;
        if ipv6.is_some() {
            run(
                "ip",
                &[
                    "-n", &pod.ns, "-6", "route", "add", "default", "via", GATEWAY_V6,
                ],
            )?;
        }
        Ok(pod)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.bridge_ns]);
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
    }
}

fn require_root_tools() -> anyhow::Result<()> {
    for tool in ["ip", "nsenter", "iptables-save", "curl"] {
        if !crate::cmd::output(
            std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]),
        )?
        .status
        .success()
        {
            anyhow::bail!(
                "`{tool}` is missing: run scripts/test.sh, which installs iptables, iproute2 and curl"
            );
        }
    }
    if !nix_is_root() {
        anyhow::bail!("end-to-end tests make network namespaces and must run as root");
    }
    Ok(())
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Deletes namespaces left by test processes that are gone (e.g. killed by a timeout).
fn sweep_stale() {
    crate::binaries::sweep_stale_copies();
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if pid.is_empty() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // Kill whatever still runs inside before removing the namespace.
        if let Ok(out) = run("ip", &["netns", "pids", &name]) {
            for p in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = run("kill", &["-KILL", p]);
            }
        }
        let _ = run("ip", &["netns", "del", &name]);
    }
}

/// A packet capture on every port of the bridge (all traffic between pods crosses them).
#[derive(Debug)]
pub struct Capture {
    process: crate::process::Process,
    file: PathBuf,
}

impl Network {
    /// Starts `tcpdump` on the bridge with `filter`, and returns once it is capturing (its file
    /// header is written when the capture is live).
    pub fn capture(&self, filter: &str) -> anyhow::Result<Capture> {
        let file = self.log_dir.join(format!("capture-{}.pcap", self.name));
        let log_path = self.log_dir.join(format!("capture-{}.log", self.name));
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = std::process::Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.bridge_ns,
            "tcpdump",
            "-i",
            "any",
            "--immediate-mode",
            "-U",
            "-nn",
            "-w",
        ])
        .arg(&file)
        .arg(filter)
        .stdout(std::process::Stdio::from(log.try_clone()?))
        .stderr(std::process::Stdio::from(log));
        let child = cmd
            .spawn()
            .context("cannot start tcpdump (apt-get install -y tcpdump)")?;
        let mut process = crate::process::Process::new("tcpdump".into(), child, log_path);
        crate::fixtures::eventually(
            std::time::Duration::from_secs(10),
            "tcpdump capturing",
            || {
                anyhow::ensure!(
                    process.is_running(),
                    "tcpdump exited: {}",
                    process.log_text()
                );
                Ok(std::fs::metadata(&file).is_ok_and(|m| m.len() >= 24))
            },
        )?;
        Ok(Capture { process, file })
    }
}

impl Capture {
    /// Stops the capture and returns every packet, headers and payload as text (`tcpdump -A`).
    pub fn finish(mut self) -> anyhow::Result<String> {
        self.process.terminate()?;
        self.process.wait_exit(std::time::Duration::from_secs(10))?;
        let out = std::process::Command::new("tcpdump")
            .args(["-nn", "-A", "-r"])
            .arg(&self.file)
            .output()
            .context("cannot run tcpdump -r")?;
        anyhow::ensure!(
            out.status.success(),
            "tcpdump -r failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
