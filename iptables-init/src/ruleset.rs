//! The `iptables-restore` input that installs or removes the mesh's rules (pure functions).
//!
//! Chains (nat table):
//! - `MESH_INBOUND` (from PREROUTING): which inbound ports go to the proxy (never the admin port
//!   15000 or the peer port 15008, where sidecars reach each other).
//! - `MESH_IN_REDIRECT`: REDIRECT to the inbound port.
//! - `MESH_OUTPUT` (from OUTPUT): which outbound connections go to the proxy; the proxy's own
//!   uid/gid and loopback traffic return early.
//! - `MESH_REDIRECT`: REDIRECT to the outbound port.
//!
//! Both renderings run under `--noflush` as one transaction: declaring an existing user chain
//! flushes it, and jumps from built-in chains are deleted exactly as `iptables-save` printed them,
//! so applying twice gives the same rules and a failure changes nothing.

use std::fmt::Write;

use crate::backend::Family;
use crate::config::{ADMIN_PORT, Config, InboundPorts, PEER_PORT};
use crate::saved::SavedNat;

pub const INBOUND: &str = "MESH_INBOUND";
pub const IN_REDIRECT: &str = "MESH_IN_REDIRECT";
pub const OUTPUT: &str = "MESH_OUTPUT";
pub const REDIRECT: &str = "MESH_REDIRECT";
pub const CHAINS: [&str; 4] = [INBOUND, IN_REDIRECT, OUTPUT, REDIRECT];

/// Input that replaces whatever mesh rules `saved` holds with the ones `config` describes.
pub fn render_apply(config: &Config, family: Family, saved: &SavedNat) -> String {
    let mut out = String::from("*nat\n");
    for chain in CHAINS {
        line(&mut out, format_args!(":{chain} - [0:0]"));
    }
    for jump in &saved.jumps {
        line(&mut out, format_args!("-D {jump}"));
    }
    for chain in saved
        .chains
        .iter()
        .filter(|c| !CHAINS.contains(&c.as_str()))
    {
        line(&mut out, format_args!(":{chain} - [0:0]"));
        line(&mut out, format_args!("-X {chain}"));
    }

    line(
        &mut out,
        format_args!(
            "-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            config.inbound_port
        ),
    );
    line(
        &mut out,
        format_args!(
            "-A {REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            config.outbound_port
        ),
    );

    let captures_inbound = inbound_rules(&mut out, config);
    outbound_rules(&mut out, config, family);

    if captures_inbound {
        line(&mut out, format_args!("-A PREROUTING -p tcp -j {INBOUND}"));
    }
    line(&mut out, format_args!("-A OUTPUT -p tcp -j {OUTPUT}"));
    out.push_str("COMMIT\n");
    out
}

/// Input that removes every mesh chain and jump in `saved`; `None` when there is nothing to remove.
pub fn render_cleanup(saved: &SavedNat) -> Option<String> {
    if saved.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for chain in &saved.chains {
        line(&mut out, format_args!(":{chain} - [0:0]"));
    }
    for jump in &saved.jumps {
        line(&mut out, format_args!("-D {jump}"));
    }
    for chain in &saved.chains {
        line(&mut out, format_args!("-X {chain}"));
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// Writes MESH_INBOUND; returns whether any inbound port is captured.
fn inbound_rules(out: &mut String, config: &Config) -> bool {
    let mut excluded = vec![ADMIN_PORT, PEER_PORT];
    for port in &config.exclude_inbound_ports {
        if !excluded.contains(port) {
            excluded.push(*port);
        }
    }
    match &config.include_inbound_ports {
        InboundPorts::Only(ports) if ports.is_empty() => false,
        InboundPorts::Only(ports) => {
            for port in ports.iter().filter(|p| !excluded.contains(p)) {
                line(
                    out,
                    format_args!("-A {INBOUND} -p tcp --dport {port} -j {IN_REDIRECT}"),
                );
            }
            true
        }
        InboundPorts::All => {
            for port in &excluded {
                line(
                    out,
                    format_args!("-A {INBOUND} -p tcp --dport {port} -j RETURN"),
                );
            }
            line(out, format_args!("-A {INBOUND} -p tcp -j {IN_REDIRECT}"));
            true
        }
    }
}

fn outbound_rules(out: &mut String, config: &Config, family: Family) {
    line(
        out,
        format_args!(
            "-A {OUTPUT} -m owner --uid-owner {} -j RETURN",
            config.proxy_uid
        ),
    );
    if let Some(gid) = config.proxy_gid {
        line(
            out,
            format_args!("-A {OUTPUT} -m owner --gid-owner {gid} -j RETURN"),
        );
    }
    // The app's own localhost traffic (and calls to its own pod address) stays local.
    line(out, format_args!("-A {OUTPUT} -o lo -j RETURN"));
    let v4 = family == Family::V4;
    for cidr in config
        .exclude_outbound_cidrs
        .iter()
        .filter(|c| c.is_ipv4() == v4)
    {
        line(out, format_args!("-A {OUTPUT} -d {cidr} -j RETURN"));
    }
    for port in &config.exclude_outbound_ports {
        line(
            out,
            format_args!("-A {OUTPUT} -p tcp --dport {port} -j RETURN"),
        );
    }
    line(out, format_args!("-A {OUTPUT} -p tcp -j {REDIRECT}"));
}

fn line(out: &mut String, args: std::fmt::Arguments<'_>) {
    // Writing to a String cannot fail.
    let _ = out.write_fmt(args);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<&str> {
        s.lines().collect()
    }

    #[test]
    fn default_config_on_a_clean_table() {
        let text = render_apply(&Config::default(), Family::V4, &SavedNat::default());
        assert_eq!(
            lines(&text),
            vec![
                "*nat",
                ":MESH_INBOUND - [0:0]",
                ":MESH_IN_REDIRECT - [0:0]",
                ":MESH_OUTPUT - [0:0]",
                ":MESH_REDIRECT - [0:0]",
                "-A MESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
                "-A MESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
                "-A MESH_INBOUND -p tcp --dport 15000 -j RETURN",
                "-A MESH_INBOUND -p tcp --dport 15008 -j RETURN",
                "-A MESH_INBOUND -p tcp -j MESH_IN_REDIRECT",
                "-A MESH_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-A MESH_OUTPUT -o lo -j RETURN",
                "-A MESH_OUTPUT -p tcp -j MESH_REDIRECT",
                "-A PREROUTING -p tcp -j MESH_INBOUND",
                "-A OUTPUT -p tcp -j MESH_OUTPUT",
                "COMMIT",
            ]
        );
    }

    #[test]
    fn exclusions_gid_and_cidrs_by_family() {
        let config = Config {
            proxy_gid: Some(1338),
            exclude_inbound_ports: vec![22, 15000],
            exclude_outbound_ports: vec![5432],
            exclude_outbound_cidrs: vec![
                "10.96.0.0/12".parse().unwrap_or_else(|e| panic!("{e}")),
                "fd00:10::/64".parse().unwrap_or_else(|e| panic!("{e}")),
            ],
            ..Config::default()
        };
        let v4 = render_apply(&config, Family::V4, &SavedNat::default());
        let v6 = render_apply(&config, Family::V6, &SavedNat::default());
        assert!(v4.contains("-A MESH_INBOUND -p tcp --dport 22 -j RETURN\n"));
        assert_eq!(
            v4.matches("--dport 15000").count(),
            1,
            "admin port excluded once:\n{v4}"
        );
        assert!(v4.contains("-A MESH_OUTPUT -m owner --gid-owner 1338 -j RETURN\n"));
        assert!(v4.contains("-A MESH_OUTPUT -p tcp --dport 5432 -j RETURN\n"));
        assert!(v4.contains("-A MESH_OUTPUT -d 10.96.0.0/12 -j RETURN\n"));
        assert!(!v4.contains("fd00:10::"));
        assert!(v6.contains("-A MESH_OUTPUT -d fd00:10::/64 -j RETURN\n"));
        assert!(!v6.contains("10.96.0.0"));
        // Exclusions come before the catch-all redirect.
        let ret = v4.find("--dport 5432 -j RETURN").unwrap_or(usize::MAX);
        let redirect = v4
            .find("-A MESH_OUTPUT -p tcp -j MESH_REDIRECT")
            .unwrap_or(0);
        assert!(ret < redirect);
    }

    #[test]
    fn include_list_redirects_only_those_ports() {
        let config = Config {
            include_inbound_ports: InboundPorts::Only(vec![8080, 15000, 9090]),
            exclude_inbound_ports: vec![9090],
            ..Config::default()
        };
        let text = render_apply(&config, Family::V4, &SavedNat::default());
        let inbound: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("-A MESH_INBOUND"))
            .collect();
        assert_eq!(
            inbound,
            vec!["-A MESH_INBOUND -p tcp --dport 8080 -j MESH_IN_REDIRECT"]
        );
    }

    #[test]
    fn empty_include_list_captures_no_inbound() {
        let config = Config {
            include_inbound_ports: InboundPorts::Only(vec![]),
            ..Config::default()
        };
        let text = render_apply(&config, Family::V4, &SavedNat::default());
        assert!(!text.contains("PREROUTING"));
        assert!(text.contains("-A OUTPUT -p tcp -j MESH_OUTPUT"));
    }

    #[test]
    fn reapply_replaces_existing_jumps_instead_of_duplicating() {
        let saved = SavedNat {
            chains: vec!["MESH_INBOUND".into(), "MESH_OLD".into()],
            jumps: vec![
                "PREROUTING -p tcp -j MESH_INBOUND".into(),
                "OUTPUT -p tcp -j MESH_OUTPUT".into(),
            ],
        };
        let text = render_apply(&Config::default(), Family::V4, &saved);
        assert!(text.contains("-D PREROUTING -p tcp -j MESH_INBOUND\n"));
        assert!(text.contains("-D OUTPUT -p tcp -j MESH_OUTPUT\n"));
        assert!(text.contains(":MESH_OLD - [0:0]\n-X MESH_OLD\n"));
        assert_eq!(text.matches("-A PREROUTING").count(), 1);
        // Deletions come before the additions of the same rule.
        assert!(text.find("-D OUTPUT").unwrap_or(usize::MAX) < text.find("-A OUTPUT").unwrap_or(0));
    }

    #[test]
    fn cleanup_removes_exactly_what_is_there() {
        assert_eq!(render_cleanup(&SavedNat::default()), None);
        let saved = SavedNat {
            chains: vec!["MESH_INBOUND".into(), "MESH_IN_REDIRECT".into()],
            jumps: vec!["PREROUTING -p tcp -j MESH_INBOUND".into()],
        };
        assert_eq!(
            render_cleanup(&saved).as_deref().map(lines),
            Some(vec![
                "*nat",
                ":MESH_INBOUND - [0:0]",
                ":MESH_IN_REDIRECT - [0:0]",
                "-D PREROUTING -p tcp -j MESH_INBOUND",
                "-X MESH_INBOUND",
                "-X MESH_IN_REDIRECT",
                "COMMIT",
            ])
        );
    }
}
