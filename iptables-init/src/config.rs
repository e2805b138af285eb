//! What the init step is asked to install, validated.

use std::fmt;
use std::str::FromStr;

use crate::cidr::Cidr;

/// The proxy's admin port; never redirected.
pub const ADMIN_PORT: u16 = 15000;
/// The port sidecars reach each other on (HTTP/2 between sidecars); never redirected.
pub const PEER_PORT: u16 = 15008;

/// Which inbound destination ports are redirected to the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboundPorts {
    /// Every TCP port (`*`), minus the excluded ones.
    All,
    /// Only these ports. Empty means inbound traffic is not captured at all.
    Only(Vec<u16>),
}

impl FromStr for InboundPorts {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "*" {
            return Ok(InboundPorts::All);
        }
        parse_ports(s).map(InboundPorts::Only)
    }
}

/// Whether ip6tables is programmed too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Ipv6Mode {
    /// Program ip6tables when the namespace has a global IPv6 address.
    Auto,
    On,
    Off,
}

/// A comma-separated list of ports, e.g. `22,8081`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

impl FromStr for PortList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_ports(s).map(PortList)
    }
}

/// A comma-separated list of CIDRs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<Cidr>);

impl FromStr for CidrList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Cidr::from_str)
            .collect::<Result<_, _>>()
            .map(CidrList)
    }
}

fn parse_ports(s: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let port = part
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{part}` is not a TCP port (1-65535)"))?;
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

/// The complete, validated description of the interception rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub proxy_uid: u32,
    pub proxy_gid: Option<u32>,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub include_inbound_ports: InboundPorts,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<Cidr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            proxy_uid: 1337,
            proxy_gid: None,
            outbound_port: 15001,
            inbound_port: 15006,
            include_inbound_ports: InboundPorts::All,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
        }
    }
}

impl fmt::Display for Ipv6Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ipv6Mode::Auto => "auto",
            Ipv6Mode::On => "on",
            Ipv6Mode::Off => "off",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_ports_star_or_list() {
        assert_eq!("*".parse(), Ok(InboundPorts::All));
        assert_eq!("80, 443,80".parse(), Ok(InboundPorts::Only(vec![80, 443])));
        assert_eq!("".parse(), Ok(InboundPorts::Only(vec![])));
    }

    #[test]
    fn bad_ports_are_named() {
        let err = "80,http".parse::<PortList>().err().unwrap_or_default();
        assert!(err.contains("`http`"), "{err}");
        assert!("0".parse::<PortList>().is_err());
        assert!("70000".parse::<PortList>().is_err());
    }

    #[test]
    fn cidr_lists() {
        let list: CidrList = "10.0.0.0/8,fd00::/8".parse().unwrap_or_default();
        assert_eq!(list.0.len(), 2);
        assert!("10.0.0.0/8,bogus".parse::<CidrList>().is_err());
    }
}
