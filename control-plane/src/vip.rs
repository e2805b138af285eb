//! Virtual IPs for Services, allocated from a configurable IPv4 range.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// An IPv4 range such as `10.96.0.0/16`; the network and broadcast addresses are never handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipRange {
    base: u32,
    prefix: u8,
}

impl VipRange {
    fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => (u32::from(v4) as u64).wrapping_sub(self.base as u64) < self.size(),
            IpAddr::V6(_) => false,
        }
    }

    /// The lowest address of the range that is not in `used`.
    pub fn allocate(&self, used: &HashSet<IpAddr>) -> Option<IpAddr> {
        (1..self.size().saturating_sub(1))
            .map(|offset| IpAddr::V4(Ipv4Addr::from(self.base + offset as u32)))
            .find(|ip| !used.contains(ip))
    }
}

impl FromStr for VipRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not an IPv4 range (e.g. 10.96.0.0/16, prefix 8-30)");
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(VipRange {
            base: u32::from(addr) & mask,
            prefix,
        })
    }
}

impl Default for VipRange {
    fn default() -> Self {
        VipRange {
            base: u32::from(Ipv4Addr::new(10, 96, 0, 0)),
            prefix: 16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_lowest_free_address_skipping_network_and_broadcast() {
        let range: VipRange = "10.96.0.0/30".parse().unwrap_or_default();
        let mut used = HashSet::new();
        let first = range.allocate(&used);
        assert_eq!(
            first,
            Some(
                "10.96.0.1"
                    .parse()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            )
        );
        used.extend(first);
        assert_eq!(
            range.allocate(&used).map(|i| i.to_string()),
            Some("10.96.0.2".into())
        );
        used.insert(
            "10.96.0.2"
                .parse()
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        );
        assert_eq!(
            range.allocate(&used),
            None,
            "a /30 has two usable addresses"
        );
        assert!(
            range.contains(
                "10.96.0.3"
                    .parse()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            )
        );
        assert!("10.96.0.0/31".parse::<VipRange>().is_err());
    }
}
