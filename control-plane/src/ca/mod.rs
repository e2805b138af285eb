//! meshd as the mesh's certificate authority.
//!
//! On first start meshd makes a root (ECDSA P-256, 10 years) and keeps it in `<data-dir>/ca/`
//! with the key readable only by its owner; later starts load the same root. A user may instead
//! give a CA of their own (a root, or an intermediate with its chain) with `--ca-cert` and
//! `--ca-key`. Workload certificates are short-lived, carry exactly one URI SAN (the workload's
//! SPIFFE ID), and are good for TLS server and client authentication.

pub mod service;
pub mod token;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use mesh_proto::spiffe::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};

/// The shortest lifetime meshd issues: anything shorter cannot be renewed in time.
pub const MIN_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("cannot sign: {0}")]
    Sign(#[from] rcgen::Error),
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CaError + 'a {
    move |source| CaError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, why: impl Into<String>) -> CaError {
    CaError::Invalid {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// A CA the user provides instead of the generated root.
#[derive(Debug, Clone)]
pub struct UserCa {
    /// PEM: the signing certificate first, then its chain up to the root.
    pub cert: PathBuf,
    /// PEM: the signing certificate's private key.
    pub key: PathBuf,
    /// PEM: the trust anchors; the last certificate of `cert` when not given.
    pub bundle: Option<PathBuf>,
}

/// The mesh's CA: signs workload certificates under its trust domain.
pub struct Authority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// The signing certificate and its chain up to (not including) the root.
    chain: Vec<String>,
    /// Trust anchors.
    bundle: Vec<String>,
    default_ttl: Duration,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Splits a PEM file into its certificates (each as its own PEM block).
fn pem_certificates(path: &Path, text: &str) -> Result<Vec<String>, CaError> {
    let mut certs = Vec::new();
    let mut rest = text;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            return Err(invalid(path, "a certificate has no END line"));
        };
        let end = start + len + END.len();
        certs.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    if certs.is_empty() {
        return Err(invalid(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(io_error("read", path))
}

/// Writes `text` to `path` with `mode`, through a temporary file so a crash leaves no half file.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), CaError> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_error("create", &tmp))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_error("rename into place", path))
}

fn system_time(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // A failing system RNG leaves zeros; the serial then only loses its uniqueness.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

impl Authority {
    /// Loads the CA: the user's when given, else the root in `<data_dir>/ca/`, made on first use.
    pub fn open(
        data_dir: &Path,
        trust_domain: &str,
        user: Option<&UserCa>,
        default_ttl: Duration,
    ) -> Result<Authority, CaError> {
        SpiffeId::new(trust_domain, "ns", "sa")
            .map_err(|e| invalid(Path::new("--trust-domain"), e.to_string()))?;
        let dir = data_dir.join("ca");
        fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        let (chain, key_pem, key_path, bundle) = match user {
            Some(user) => {
                let chain = pem_certificates(&user.cert, &read(&user.cert)?)?;
                let bundle = match &user.bundle {
                    Some(path) => pem_certificates(path, &read(path)?)?,
                    None => chain.last().cloned().into_iter().collect(),
                };
                // The chain handed out stops before the trust anchor.
                let chain = chain
                    .into_iter()
                    .filter(|c| !bundle.contains(c))
                    .collect::<Vec<_>>();
                let chain = if chain.is_empty() {
                    bundle.clone()
                } else {
                    chain
                };
                (chain, read(&user.key)?, user.key.clone(), bundle)
            }
            None => {
                let (cert, key) = Self::own_root(&dir, trust_domain)?;
                (
                    vec![cert.clone()],
                    key,
                    dir.join("root-key.pem"),
                    vec![cert],
                )
            }
        };
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| invalid(&key_path, format!("not a usable private key: {e}")))?;
        let signing = chain.first().cloned().unwrap_or_default();
        let cert_path = user.map_or_else(|| dir.join("root-cert.pem"), |u| u.cert.clone());
        let (_, parsed) = x509_parser::pem::parse_x509_pem(signing.as_bytes())
            .map_err(|e| invalid(&cert_path, format!("bad PEM: {e}")))?;
        let x509 = parsed
            .parse_x509()
            .map_err(|e| invalid(&cert_path, format!("bad certificate: {e}")))?;
        if x509.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(invalid(
                &key_path,
                format!(
                    "the key does not belong to the certificate in {}",
                    cert_path.display()
                ),
            ));
        }
        if !x509.is_ca() {
            return Err(invalid(
                &cert_path,
                "the certificate is not a CA (basicConstraints)",
            ));
        }
        let issuer = Issuer::from_ca_cert_pem(&signing, key)
            .map_err(|e| invalid(&cert_path, format!("cannot sign with it: {e}")))?;
        // Proxies are given this file as their trust bundle.
        write_new(&dir.join("trust-bundle.pem"), &bundle.concat(), 0o644)?;
        Ok(Authority {
            trust_domain: trust_domain.to_string(),
            issuer,
            chain,
            bundle,
            default_ttl,
        })
    }

    /// The generated root: loaded if it exists, made and stored otherwise.
    fn own_root(dir: &Path, trust_domain: &str) -> Result<(String, String), CaError> {
        let cert_path = dir.join("root-cert.pem");
        let key_path = dir.join("root-key.pem");
        if key_path.exists() {
            return Ok((read(&cert_path)?, read(&key_path)?));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "meshd root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = system_time(now - Duration::from_secs(3600));
        params.not_after = system_time(now + Duration::from_secs(10 * 365 * 86_400));
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        // The key first: a certificate without its key would be useless on the next start.
        write_new(&key_path, &key.serialize_pem(), 0o600)?;
        write_new(&cert_path, &cert.pem(), 0o644)?;
        tracing::info!(path = %cert_path.display(), "made the mesh's root CA");
        Ok((cert.pem(), key.serialize_pem()))
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Trust anchors, PEM, one per entry.
    pub fn bundle(&self) -> &[String] {
        &self.bundle
    }

    pub fn default_ttl(&self) -> Duration {
        self.default_ttl
    }

    /// Signs a workload certificate for `id` over `public_key`, valid for `ttl` (at least
    /// [`MIN_TTL`]). Returns the leaf and the chain up to (not including) the root, PEM.
    pub fn issue_workload(
        &self,
        id: &SpiffeId,
        public_key: &impl PublicKeyData,
        ttl: Duration,
    ) -> Result<Vec<String>, CaError> {
        let uri = rcgen::string::Ia5String::try_from(id.to_string())?;
        self.issue(vec![SanType::URI(uri)], public_key, ttl)
    }

    /// Signs a server certificate for meshd itself: its SPIFFE ID and the DNS names clients use.
    pub fn issue_server(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        public_key: &impl PublicKeyData,
        ttl: Duration,
    ) -> Result<Vec<String>, CaError> {
        let mut sans = vec![SanType::URI(rcgen::string::Ia5String::try_from(
            id.to_string(),
        )?)];
        for name in dns_names {
            sans.push(SanType::DnsName(rcgen::string::Ia5String::try_from(
                name.as_str(),
            )?));
        }
        self.issue(sans, public_key, ttl)
    }

    fn issue(
        &self,
        sans: Vec<SanType>,
        public_key: &impl PublicKeyData,
        ttl: Duration,
    ) -> Result<Vec<String>, CaError> {
        let ttl = ttl.max(MIN_TTL);
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        // Empty subject: the identity is the URI SAN (marked critical for that reason).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        // A minute back, for peers whose clocks run a little behind.
        params.not_before = system_time(now - Duration::from_secs(60));
        params.not_after = system_time(now + ttl);
        params.serial_number = Some(random_serial());
        let leaf = params.signed_by(public_key, &self.issuer)?;
        let mut chain = vec![leaf.pem()];
        chain.extend(
            self.chain
                .iter()
                .filter(|c| !self.bundle.contains(c))
                .cloned(),
        );
        Ok(chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf_uris(pem: &str) -> Vec<String> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
        let cert = p.parse_x509().expect("x509");
        let san = cert
            .subject_alternative_name()
            .expect("san ext")
            .expect("san present");
        assert!(san.critical, "SAN is critical when the subject is empty");
        san.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn makes_a_root_once_and_keeps_it_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ttl = Duration::from_secs(3600);
        let a = Authority::open(dir.path(), "cluster.local", None, ttl).expect("first");
        let b = Authority::open(dir.path(), "cluster.local", None, ttl).expect("second");
        assert_eq!(a.bundle(), b.bundle(), "the same root after a restart");
        let mode = fs::metadata(dir.path().join("ca/root-key.pem"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn workload_certificates_carry_the_spiffe_id_and_lifetime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Authority::open(dir.path(), "cluster.local", None, Duration::from_secs(60))
            .expect("ca");
        let key = KeyPair::generate().expect("key");
        let id = SpiffeId::new("cluster.local", "shop", "web").expect("id");
        let chain = ca
            .issue_workload(&id, &key, Duration::from_secs(120))
            .expect("issued");
        assert_eq!(chain.len(), 1, "a root CA hands out the leaf only");
        assert_eq!(leaf_uris(&chain[0]), vec![id.to_string()]);
        let (_, p) = x509_parser::pem::parse_x509_pem(chain[0].as_bytes()).expect("pem");
        let cert = p.parse_x509().expect("x509");
        let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(life, 180, "120 s plus the minute of clock skew");
        assert!(!cert.is_ca());
    }

    #[test]
    fn a_user_intermediate_signs_and_its_chain_verifies_against_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = |cn: &str| {
            let mut p = CertificateParams::default();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            p.distinguished_name.push(DnType::CommonName, cn);
            p
        };
        let root_key = KeyPair::generate().expect("key");
        let root = ca("user root");
        let root_pem = root.self_signed(&root_key).expect("root").pem();
        let root_issuer = Issuer::new(root, root_key);
        let mid_key = KeyPair::generate().expect("key");
        let mid_pem = ca("user intermediate")
            .signed_by(&mid_key, &root_issuer)
            .expect("intermediate")
            .pem();
        let cert = dir.path().join("chain.pem");
        let key = dir.path().join("key.pem");
        fs::write(&cert, format!("{mid_pem}{root_pem}")).expect("write");
        fs::write(&key, mid_key.serialize_pem()).expect("write");
        let user = UserCa {
            cert,
            key,
            bundle: None,
        };
        let authority = Authority::open(
            dir.path(),
            "cluster.local",
            Some(&user),
            Duration::from_secs(600),
        )
        .expect("opens");
        assert_eq!(
            authority.bundle(),
            std::slice::from_ref(&root_pem),
            "the root is the trust anchor"
        );
        let leaf_key = KeyPair::generate().expect("key");
        let id = SpiffeId::new("cluster.local", "shop", "web").expect("id");
        let chain = authority
            .issue_workload(&id, &leaf_key, Duration::from_secs(600))
            .expect("issued");
        assert_eq!(chain.len(), 2, "leaf and intermediate");
        let der = |pem: &str| {
            let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
            rustls::pki_types::CertificateDer::from(p.contents)
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&root_pem)).expect("root");
        let leaf = der(&chain[0]);
        let end_entity = rustls::server::ParsedCertificate::try_from(&leaf).expect("parsed");
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &end_entity,
            &roots,
            &[der(&chain[1])],
            rustls::pki_types::UnixTime::now(),
            rustls::crypto::aws_lc_rs::default_provider()
                .signature_verification_algorithms
                .all,
        )
        .expect("the chain verifies against the user's root");
    }

    #[test]
    fn a_user_key_that_does_not_match_its_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ttl = Duration::from_secs(3600);
        Authority::open(dir.path(), "cluster.local", None, ttl).expect("root");
        let other = KeyPair::generate().expect("key");
        let key_path = dir.path().join("other-key.pem");
        fs::write(&key_path, other.serialize_pem()).expect("write");
        let user = UserCa {
            cert: dir.path().join("ca/root-cert.pem"),
            key: key_path,
            bundle: None,
        };
        let e = Authority::open(&dir.path().join("x"), "cluster.local", Some(&user), ttl)
            .expect_err("mismatch");
        assert!(e.to_string().contains("does not belong"), "{e}");
    }
}
