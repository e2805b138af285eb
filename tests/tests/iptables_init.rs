//! End-to-end: `mesh-iptables-init` in real network namespaces.

use std::process::Command;

use mesh_tests::binaries::binary;
use mesh_tests::{IpFamilies, Network};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn apply_is_idempotent_and_cleanup_restores_the_rules_as_they_were() -> anyhow::Result<()> {
    let net = Network::new("ipt-idem", IpFamilies::V4)?;
    let pod = net.pod("p")?;
    // A foreign rule that must survive both apply and cleanup.
    pod.run(
        "iptables",
        &["-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "RETURN"],
    )?;
    let before = pod.nat_rules(false)?;

    pod.init_ok(&["--exclude-inbound-ports", "22"])?;
    let once = pod.nat_rules(false)?;
    for expected in [
        "-A PREROUTING -p tcp -j MESH_INBOUND",
        "-A OUTPUT -p tcp -j MESH_OUTPUT",
        "-A MESH_INBOUND -p tcp -m tcp --dport 15000 -j RETURN",
        "-A MESH_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
        "-A MESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A MESH_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A MESH_OUTPUT -o lo -j RETURN",
        "-A MESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A OUTPUT -p udp -j RETURN",
    ] {
        assert!(once.contains(expected), "missing `{expected}` in:\n{once}");
    }
    pod.init_ok(&["--exclude-inbound-ports", "22"])?;
    assert_eq!(
        pod.nat_rules(false)?,
        once,
        "applying twice leaves the same rules"
    );

    // Re-applying with other flags replaces the rules rather than adding to them.
    pod.init_ok(&[])?;
    let replaced = pod.nat_rules(false)?;
    assert!(!replaced.contains("--dport 22"));
    assert_eq!(replaced.matches("-j MESH_INBOUND").count(), 1);

    pod.init_ok(&["--cleanup"])?;
    assert_eq!(
        pod.nat_rules(false)?,
        before,
        "cleanup removes exactly what was added"
    );
    pod.init_ok(&["--cleanup"])?;
    assert_eq!(
        pod.nat_rules(false)?,
        before,
        "cleanup with nothing to remove is a no-op"
    );
    Ok(())
}

#[test]
fn ipv6_is_programmed_when_the_pod_has_ipv6() -> anyhow::Result<()> {
    let net = Network::new("ipt-v6", IpFamilies::Dual)?;
    let dual = net.pod("dual")?;
    let v6_before = dual.nat_rules(true)?;
    dual.init_ok(&["--exclude-outbound-cidrs", "10.96.0.0/12,fd00:96::/64"])?;
    let v4 = dual.nat_rules(false)?;
    let v6 = dual.nat_rules(true)?;
    assert!(
        v4.contains("-A MESH_OUTPUT -d 10.96.0.0/12 -j RETURN") && !v4.contains("fd00:96"),
        "{v4}"
    );
    assert!(
        v6.contains("-A MESH_OUTPUT -d fd00:96::/64 -j RETURN") && !v6.contains("10.96"),
        "{v6}"
    );
    assert!(v6.contains("-A OUTPUT -p tcp -j MESH_OUTPUT"));
    dual.init_ok(&["--cleanup"])?;
    assert_eq!(dual.nat_rules(true)?, v6_before);

    let off = net.pod("off")?;
    off.init_ok(&["--ipv6", "off"])?;
    assert!(
        !off.nat_rules(true)?.contains("MESH_"),
        "--ipv6 off leaves ip6tables alone"
    );
    Ok(())
}

#[test]
fn dry_run_prints_both_families_and_changes_nothing() -> anyhow::Result<()> {
    let net = Network::new("ipt-dry", IpFamilies::V4)?;
    let pod = net.pod("p")?;
    let before = pod.nat_rules(false)?;
    let out = pod.init(&["--dry-run", "--ipv6", "on", "--outbound-port", "16001"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("# IPv4 (") && text.contains("# IPv6 ("),
        "{text}"
    );
    assert_eq!(
        text.matches("-A MESH_REDIRECT -p tcp -j REDIRECT --to-ports 16001")
            .count(),
        2
    );
    assert_eq!(pod.nat_rules(false)?, before);
    assert!(!pod.nat_rules(true)?.contains("MESH_"));
    Ok(())
}

#[test]
fn without_net_admin_it_fails_clearly_and_changes_nothing() -> anyhow::Result<()> {
    let net = Network::new("ipt-perm", IpFamilies::V4)?;
    let pod = net.pod("p")?;
    let before = pod.nat_rules(false)?;
    let out = pod
        .command_as(1337, binary("mesh-iptables-init")?)
        .output()?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("NET_ADMIN"), "{}", stderr(&out));
    assert_eq!(pod.nat_rules(false)?, before);
    Ok(())
}

#[test]
fn missing_iptables_and_bad_flags_are_reported() -> anyhow::Result<()> {
    let out = Command::new(binary("mesh-iptables-init")?)
        .env("PATH", "/nonexistent")
        .output()?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("apt-get install -y iptables"),
        "{}",
        stderr(&out)
    );

    let out = Command::new(binary("mesh-iptables-init")?)
        .args(["--dry-run", "--exclude-outbound-cidrs", "10.0.0.0/33"])
        .output()?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("10.0.0.0/33"), "{}", stderr(&out));
    Ok(())
}

#[test]
fn auto_detection_follows_the_backend_that_already_holds_rules() -> anyhow::Result<()> {
    let net = Network::new("ipt-legacy", IpFamilies::V4)?;
    let pod = net.pod("p")?;
    if pod
        .output(
            "iptables-legacy",
            &["-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "RETURN"],
        )?
        .status
        .code()
        != Some(0)
    {
        // Kernels without x_tables cannot hold legacy rules; nothing to follow there.
        eprintln!("skipping: this kernel has no legacy x_tables");
        return Ok(());
    }
    let out = pod.init(&[])?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("backend Legacy"));
    let legacy = pod.run("iptables-legacy-save", &["-t", "nat"])?;
    assert!(
        legacy.contains("-A OUTPUT -p tcp -j MESH_OUTPUT"),
        "{legacy}"
    );
    assert!(
        !pod.run("iptables-nft-save", &["-t", "nat"])?
            .contains("MESH_"),
        "nothing in nft"
    );

    pod.init_ok(&["--cleanup"])?;
    assert!(
        !pod.run("iptables-legacy-save", &["-t", "nat"])?
            .contains("MESH_")
    );
    Ok(())
}
