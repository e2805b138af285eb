//! An IPv4 or IPv6 network in CIDR notation, as given to `--exclude-outbound-cidrs`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A network address with a prefix length that is valid for its family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("`{s}` is not an IP address or CIDR (expected e.g. 10.0.0.0/8 or fd00::/8)")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_families_and_bare_addresses() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().map(|c| c.to_string()),
            Ok("10.0.0.0/8".into())
        );
        assert_eq!(
            "fd00::/8".parse::<Cidr>().map(|c| c.to_string()),
            Ok("fd00::/8".into())
        );
        assert_eq!("10.1.2.3".parse::<Cidr>().map(|c| c.prefix()), Ok(32));
        assert_eq!("::1".parse::<Cidr>().map(|c| c.prefix()), Ok(128));
    }

    #[test]
    fn rejects_bad_prefixes_and_addresses() {
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("fd00::/129".parse::<Cidr>().is_err());
        assert!("10.0.0/8".parse::<Cidr>().is_err());
        let err = "nonsense/8".parse::<Cidr>().err().unwrap_or_default();
        assert!(err.contains("nonsense"), "{err}");
    }
}
