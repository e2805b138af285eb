//! The sidecar's workload identity: a key made in memory (never written anywhere), a
//! certificate for `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` from meshd's CA,
//! and its renewal.
//!
//! The certificate is requested at start-up (the proxy is not ready until it has one) and renewed
//! at 50-60% of its lifetime, with jittered exponential retries while the CA cannot be reached.
//! Until a new certificate is in place the old one stays in use; new TLS handshakes pick up the
//! new one, and established connections are not touched.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use mesh_proto::mesh::ca::v1::CreateCertificateRequest;
use mesh_proto::mesh::ca::v1::certificate_service_client::CertificateServiceClient;
use mesh_proto::spiffe::SpiffeId;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PublicKeyData, SanType};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::meshd::MeshdEndpoint;
use crate::routing::random_u32;

const MIN_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("trust bundle {path}: {why}")]
    Bundle { path: String, why: String },
    #[error("cannot read the CA token from {path}: {source}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach meshd's CA at {server}: {source}")]
    Connect {
        server: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("meshd's CA refused the certificate request: {} ({:?})", .0.message(), .0.code())]
    Refused(tonic::Status),
    #[error("cannot make the key or CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("the CA's answer is unusable: {0}")]
    BadAnswer(String),
}

/// Where the token proving this workload's identity comes from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// Read at every request, so a token replaced on disk is picked up.
    File(PathBuf),
    Value(String),
}

impl TokenSource {
    fn read(&self) -> Result<String, IdentityError> {
        match self {
            TokenSource::Value(v) => Ok(v.trim().to_string()),
            TokenSource::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_string())
                .map_err(|source| IdentityError::Token {
                    path: path.clone(),
                    source,
                }),
        }
    }
}

/// What the proxy needs to get and keep its identity.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub id: SpiffeId,
    pub ca: MeshdEndpoint,
    pub token: TokenSource,
    /// Lifetime to ask for; zero leaves it to the CA.
    pub requested_ttl: Duration,
    /// The trust bundle (PEM) and where it came from.
    pub bundle_pem: String,
    pub bundle_path: String,
}

/// The current certificate and what it is verified against.
#[derive(Debug)]
pub struct Identity {
    id: SpiffeId,
    roots: Arc<RootCertStore>,
    current: ArcSwapOption<CertifiedKey>,
    /// Unix seconds at which the current certificate expires (0: none yet).
    expires: AtomicU64,
    renewals: AtomicU64,
    failures: AtomicU64,
    ready: watch::Sender<bool>,
}

/// Parses PEM certificates into DER.
pub fn pem_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let out = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM certificate: {e}"))?;
    if out.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(out)
}

/// The URI SANs of a certificate.
pub fn uri_sans(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// The one SPIFFE ID a certificate carries, if it carries exactly one.
pub fn spiffe_id(der: &[u8]) -> Option<SpiffeId> {
    match uri_sans(der).as_slice() {
        [one] => one.parse().ok(),
        _ => None,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Identity {
    /// An identity without a certificate yet, verifying peers against `bundle_pem`.
    pub fn new(
        id: SpiffeId,
        bundle_path: &str,
        bundle_pem: &str,
    ) -> Result<Identity, IdentityError> {
        let bundle_error = |why: String| IdentityError::Bundle {
            path: bundle_path.to_string(),
            why,
        };
        let mut roots = RootCertStore::empty();
        for cert in pem_certificates(bundle_pem).map_err(bundle_error)? {
            roots
                .add(cert)
                .map_err(|e| bundle_error(format!("not a usable trust anchor: {e}")))?;
        }
        Ok(Identity {
            id,
            roots: Arc::new(roots),
            current: ArcSwapOption::empty(),
            expires: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            ready: watch::channel(false).0,
        })
    }

    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// The certificate and key new handshakes use.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }

    /// Whether a certificate is in place.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Returns once a certificate is in place.
    pub async fn wait_ready(&self) {
        // The sender lives in `self`, so the wait cannot end in an error.
        let _ = self.ready.subscribe().wait_for(|ready| *ready).await;
    }

    /// Unix seconds at which the current certificate expires (0: none).
    pub fn expires(&self) -> u64 {
        self.expires.load(Ordering::Relaxed)
    }

    /// Certificates received, and requests that failed.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.renewals.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }

    /// Prometheus text: certificates received, failed requests, and the current expiry.
    pub fn render(&self) -> String {
        let (issued, failed) = self.counts();
        format!(
            "# HELP mesh_identity_certificates_total Workload certificates received from meshd's CA.\n# TYPE mesh_identity_certificates_total counter\nmesh_identity_certificates_total {issued}\n# HELP mesh_identity_certificate_failures_total Certificate requests that failed.\n# TYPE mesh_identity_certificate_failures_total counter\nmesh_identity_certificate_failures_total {failed}\n# HELP mesh_identity_certificate_expiry_timestamp_seconds When the current certificate expires (Unix seconds; 0: none yet).\n# TYPE mesh_identity_certificate_expiry_timestamp_seconds gauge\nmesh_identity_certificate_expiry_timestamp_seconds {}\n",
            self.expires()
        )
    }

    pub(crate) fn install(&self, key: CertifiedKey, expires: u64) {
        self.current.store(Some(Arc::new(key)));
        self.expires.store(expires, Ordering::Relaxed);
        self.renewals.fetch_add(1, Ordering::Relaxed);
        self.ready.send_replace(true);
    }
}

/// Gets the first certificate, then renews it for as long as the proxy runs.
pub async fn run(config: IdentityConfig, identity: Arc<Identity>) {
    let mut retry = MIN_RETRY;
    loop {
        match request(&config, &identity).await {
            Ok((key, not_after)) => {
                let now = unix_now();
                let lifetime = not_after.saturating_sub(now);
                identity.install(key, not_after);
                retry = MIN_RETRY;
                // Renew at 50% of the remaining lifetime, plus up to 10% of jitter so that many
                // sidecars started together do not renew together.
                let jitter = u64::from(random_u32() % 1000);
                let wait_ms = lifetime * 500 + lifetime * 100 * jitter / 1000;
                tracing::info!(
                    id = %identity.id,
                    expires_in_s = lifetime,
                    renew_in_ms = wait_ms,
                    "workload certificate in place"
                );
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            }
            Err(e) => {
                identity.failures.fetch_add(1, Ordering::Relaxed);
                let wait = retry + Duration::from_millis(u64::from(random_u32()) % 500);
                let left = identity.expires().saturating_sub(unix_now());
                tracing::warn!(
                    error = %e,
                    retry_in_ms = wait.as_millis() as u64,
                    current_expires_in_s = left,
                    "cannot get a workload certificate; keeping the current one and retrying"
                );
                tokio::time::sleep(wait).await;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

/// One certificate request: a new key, a CSR for our SPIFFE ID, the CA's chain checked.
async fn request(
    config: &IdentityConfig,
    identity: &Identity,
) -> Result<(CertifiedKey, u64), IdentityError> {
    let token = config.token.read()?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(rcgen::string::Ia5String::try_from(
        identity.id.to_string(),
    )?)];
    let csr_pem = params.serialize_request(&key)?.pem()?;
    let channel = config
        .ca
        .connect()
        .await
        .map_err(|source| IdentityError::Connect {
            server: config.ca.url.clone(),
            source,
        })?;
    let mut request = tonic::Request::new(CreateCertificateRequest {
        csr_pem,
        validity_seconds: config.requested_ttl.as_secs() as i64,
    });
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| IdentityError::BadAnswer("the token is not a valid header value".into()))?;
    request.metadata_mut().insert("authorization", bearer);
    let answer = CertificateServiceClient::new(channel)
        .create_certificate(request)
        .await
        .map_err(IdentityError::Refused)?
        .into_inner();
    let chain =
        pem_certificates(&answer.cert_chain_pem.concat()).map_err(IdentityError::BadAnswer)?;
    check_chain(identity, &key, &chain)?;
    let not_after = x509_parser::parse_x509_certificate(&chain[0])
        .map(|(_, c)| c.validity().not_after.timestamp().max(0) as u64)
        .map_err(|e| IdentityError::BadAnswer(format!("bad leaf: {e}")))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)
        .map_err(|e| IdentityError::BadAnswer(format!("unusable key: {e}")))?;
    Ok((CertifiedKey::new(chain, signer), not_after))
}

/// The leaf names exactly our identity, holds our key, and chains to the trust bundle.
fn check_chain(
    identity: &Identity,
    key: &KeyPair,
    chain: &[CertificateDer<'static>],
) -> Result<(), IdentityError> {
    let leaf = &chain[0];
    if spiffe_id(leaf).as_ref() != Some(&identity.id) {
        return Err(IdentityError::BadAnswer(format!(
            "the certificate names {:?}, not {}",
            uri_sans(leaf),
            identity.id
        )));
    }
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| IdentityError::BadAnswer(format!("bad leaf: {e}")))?;
    if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(IdentityError::BadAnswer(
            "the certificate is not for our key".into(),
        ));
    }
    let end_entity = rustls::server::ParsedCertificate::try_from(leaf)
        .map_err(|e| IdentityError::BadAnswer(e.to_string()))?;
    let algorithms =
        rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &end_entity,
        &identity.roots,
        &chain[1..],
        UnixTime::now(),
        algorithms.all,
    )
    .map_err(|e| {
        IdentityError::BadAnswer(format!(
            "the chain does not verify against the trust bundle: {e}"
        ))
    })
}
