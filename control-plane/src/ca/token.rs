//! Bearer tokens that prove a workload's namespace and service account to the CA.
//!
//! `mesh1.<namespace>.<service-account>.<expiry>.<mac>`: the names base64url-encoded, the expiry
//! in Unix seconds, the MAC an HMAC-SHA256 over everything before it, keyed by a secret that
//! lives only in meshd's data directory (`ca/token-key`, mode 0600). Only meshd can make or check
//! one; `meshctl token create` asks it for one through the management API.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use super::{CaError, io_error, write_new};

const PREFIX: &str = "mesh1";

/// What a valid token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub namespace: String,
    pub service_account: String,
    /// Unix seconds.
    pub expires: u64,
}

/// Why a token is refused (said to the caller as is: none of it is secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed (expected mesh1.<ns>.<sa>.<expiry>.<mac>)")]
    Malformed,
    #[error("the token's signature does not verify (not made by this meshd, or altered)")]
    BadSignature,
    #[error(
        "the token expired at {0} (Unix seconds); create a new one with `meshctl token create`"
    )]
    Expired(u64),
}

/// Makes and checks tokens with meshd's secret.
pub struct TokenSigner {
    key: hmac::Key,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenSigner {
    /// Loads the secret from `<data_dir>/ca/token-key`, making it on first use.
    pub fn open(data_dir: &Path) -> Result<TokenSigner, CaError> {
        let path = data_dir.join("ca").join("token-key");
        let secret = match std::fs::read_to_string(&path) {
            Ok(text) => B64
                .decode(text.trim())
                .map_err(|e| super::invalid(&path, format!("not base64: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = vec![0u8; 32];
                aws_lc_rs::rand::fill(&mut secret)
                    .map_err(|_| super::invalid(&path, "the system RNG failed"))?;
                write_new(&path, &B64.encode(&secret), 0o600)?;
                secret
            }
            Err(e) => return Err(io_error("read", &path)(e)),
        };
        Ok(TokenSigner::from_secret(&secret))
    }

    pub fn from_secret(secret: &[u8]) -> TokenSigner {
        TokenSigner {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// A token for `namespace`/`service_account`, valid for `ttl`.
    pub fn create(&self, namespace: &str, service_account: &str, ttl: Duration) -> (String, u64) {
        let expires = unix_now().saturating_add(ttl.as_secs());
        let body = format!(
            "{PREFIX}.{}.{}.{expires}",
            B64.encode(namespace),
            B64.encode(service_account)
        );
        let mac = hmac::sign(&self.key, body.as_bytes());
        (format!("{body}.{}", B64.encode(mac.as_ref())), expires)
    }

    /// What `token` proves, if it is ours, unaltered and not expired.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let (body, mac) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mac = B64.decode(mac).map_err(|_| TokenError::Malformed)?;
        let parts: Vec<&str> = body.split('.').collect();
        let [PREFIX, ns, sa, expires] = parts.as_slice() else {
            return Err(TokenError::Malformed);
        };
        hmac::verify(&self.key, body.as_bytes(), &mac).map_err(|_| TokenError::BadSignature)?;
        let text = |s: &str| {
            B64.decode(s)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(TokenError::Malformed)
        };
        let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
        if expires <= unix_now() {
            return Err(TokenError::Expired(expires));
        }
        Ok(Claims {
            namespace: text(ns)?,
            service_account: text(sa)?,
            expires,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_proves_what_it_was_made_for() {
        let signer = TokenSigner::from_secret(b"0123456789abcdef0123456789abcdef");
        let (token, _) = signer.create("shop", "web", Duration::from_secs(60));
        let claims = signer.verify(&token).expect("valid");
        assert_eq!(
            (claims.namespace.as_str(), claims.service_account.as_str()),
            ("shop", "web")
        );
    }

    #[test]
    fn altered_foreign_and_expired_tokens_are_refused() {
        let signer = TokenSigner::from_secret(b"0123456789abcdef0123456789abcdef");
        let other = TokenSigner::from_secret(b"another secret of thirty-two b..");
        let (token, _) = signer.create("shop", "web", Duration::from_secs(60));
        assert_eq!(other.verify(&token), Err(TokenError::BadSignature));
        // The same MAC over another service account.
        let (_, mac) = token.rsplit_once('.').expect("mac");
        let forged = format!(
            "mesh1.{}.{}.{}.{mac}",
            B64.encode("shop"),
            B64.encode("admin"),
            u64::MAX
        );
        assert_eq!(signer.verify(&forged), Err(TokenError::BadSignature));
        let (expired, _) = signer.create("shop", "web", Duration::ZERO);
        assert!(matches!(
            signer.verify(&expired),
            Err(TokenError::Expired(_))
        ));
        assert_eq!(signer.verify("garbage"), Err(TokenError::Malformed));
    }
}
