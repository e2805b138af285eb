//! `mesh-iptables-init`: install (or remove) the mesh's interception rules in the current
//! network namespace, as a pod's init container does.

use clap::Parser;
use mesh_iptables_init::config::{CidrList, PortList};
use mesh_iptables_init::{Action, Backend, BackendChoice, Config, InboundPorts, Ipv6Mode};

#[derive(Debug, Parser)]
#[command(name = "mesh-iptables-init", version, about)]
struct Args {
    /// UID the sidecar runs as; its traffic is never redirected.
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    /// GID the sidecar runs as; its traffic is never redirected either.
    #[arg(long)]
    proxy_gid: Option<u32>,
    /// Port of the proxy's outbound listener.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Port of the proxy's inbound listener.
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// Inbound ports to redirect: `*` for all, or a comma-separated list (empty: none).
    #[arg(long, default_value = "*")]
    include_inbound_ports: InboundPorts,
    /// Inbound ports never redirected (comma-separated). The admin port 15000 and the peer port 15008 always are.
    #[arg(long, default_value = "")]
    exclude_inbound_ports: PortList,
    /// Outbound destination ports never redirected (comma-separated).
    #[arg(long, default_value = "")]
    exclude_outbound_ports: PortList,
    /// Outbound destination networks never redirected (comma-separated CIDRs, IPv4 or IPv6).
    #[arg(long, default_value = "")]
    exclude_outbound_cidrs: CidrList,
    /// Also program ip6tables: auto (when the namespace has a global IPv6 address), on, off.
    #[arg(long, value_enum, default_value_t = Ipv6Mode::Auto)]
    ipv6: Ipv6Mode,
    /// iptables backend: auto (the one already holding rules, else nft), nft, legacy.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Print the exact iptables-restore input for IPv4 and IPv6 and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Remove exactly the chains and jumps this tool adds.
    #[arg(long)]
    cleanup: bool,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("mesh-iptables-init: error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), mesh_iptables_init::InitError> {
    let config = Config {
        proxy_uid: args.proxy_uid,
        proxy_gid: args.proxy_gid,
        outbound_port: args.outbound_port,
        inbound_port: args.inbound_port,
        include_inbound_ports: args.include_inbound_ports,
        exclude_inbound_ports: args.exclude_inbound_ports.0,
        exclude_outbound_ports: args.exclude_outbound_ports.0,
        exclude_outbound_cidrs: args.exclude_outbound_cidrs.0,
    };
    let action = if args.cleanup {
        Action::Cleanup
    } else {
        Action::Apply
    };
    let backend = match (args.dry_run, Backend::resolve(args.backend)) {
        (_, Ok(b)) => b,
        // A dry run still shows the rules on a machine without iptables.
        (true, Err(_)) => Backend::Unsuffixed,
        (false, Err(e)) => return Err(e),
    };
    let plan = mesh_iptables_init::plan(&config, action, backend, args.ipv6, args.dry_run)?;
    if args.dry_run {
        print!("{}", plan.render());
        return Ok(());
    }
    mesh_iptables_init::apply_plan(&plan)?;
    let families: Vec<_> = plan.steps.iter().map(|s| s.family.label()).collect();
    let verb = if args.cleanup {
        "removed mesh rules"
    } else {
        "installed mesh rules"
    };
    println!(
        "mesh-iptables-init: {verb} ({}, backend {:?})",
        families.join(" + "),
        plan.backend
    );
    Ok(())
}
