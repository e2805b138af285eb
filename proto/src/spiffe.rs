//! SPIFFE workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! meshd issues certificates for them and sidecars verify their peers against them, so both
//! parse and print them here, one way.

use std::fmt;
use std::str::FromStr;

/// The identity of a workload: who it is, whatever pod or address it runs at.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
    /// The whole ID, made once: compared and printed per request.
    uri: String,
}

/// Why a string is not a mesh SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{value}` is not a mesh identity (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>): {why}"
)]
pub struct SpiffeIdError {
    value: String,
    why: &'static str,
}

/// A DNS-label-like name part: lowercase letters, digits, `-`, `.`, `_`; not empty.
fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_')
        })
}

impl SpiffeId {
    /// The identity of `service_account` in `namespace` within `trust_domain`; each part must be
    /// a lowercase DNS-like name.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeIdError> {
        let id = SpiffeId {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            uri: format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"),
        };
        for (part, why) in [
            (trust_domain, "bad trust domain"),
            (namespace, "bad namespace"),
            (service_account, "bad service account"),
        ] {
            if !valid_part(part) {
                return Err(SpiffeIdError {
                    value: id.to_string(),
                    why,
                });
            }
        }
        Ok(id)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The ID without its scheme, `<trust-domain>/ns/<namespace>/sa/<service-account>`: how
    /// Istio's AuthorizationPolicy names principals.
    pub fn principal(&self) -> &str {
        &self.uri["spiffe://".len()..]
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<SpiffeId, SpiffeIdError> {
        let err = |why| SpiffeIdError {
            value: s.to_string(),
            why,
        };
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or(err("no spiffe:// scheme"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => SpiffeId::new(td, ns, sa).map_err(|e| err(e.why)),
            _ => Err(err("the path is not /ns/<namespace>/sa/<service-account>")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_same() {
        let s = "spiffe://cluster.local/ns/shop/sa/web";
        let id: SpiffeId = s.parse().expect("valid");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "web");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.to_string(), s);
        assert_eq!(id.principal(), "cluster.local/ns/shop/sa/web");
    }

    #[test]
    fn refuses_what_is_not_a_mesh_identity() {
        for bad in [
            "https://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/c",
            "spiffe://cluster.local/ns/A/sa/b",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe:///ns/a/sa/b",
        ] {
            let e = bad.parse::<SpiffeId>().expect_err(bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
