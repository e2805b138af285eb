//! Certificates minted straight from meshd's root key (in its data directory), for clients that
//! play a sidecar or an impostor in tests; real sidecars get theirs from meshd's CA.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate and key for `uri` (e.g. `spiffe://cluster.local/ns/x/sa/y`), written to
/// `<dir>/<file_stem>-cert.pem` and `-key.pem`. Signed by meshd's root in `meshd_data_dir` when
/// `signed_by_mesh`, else by a throwaway CA of the same name (an impostor).
pub fn mint(
    meshd_data_dir: &Path,
    uri: &str,
    signed_by_mesh: bool,
    dir: &Path,
    file_stem: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let ca_dir = meshd_data_dir.join("ca");
    let (ca_cert, ca_key) = if signed_by_mesh {
        (
            std::fs::read_to_string(ca_dir.join("root-cert.pem")).context("meshd's root")?,
            KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("root-key.pem"))?)?,
        )
    } else {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        (params.self_signed(&key)?.pem(), key)
    };
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + Duration::from_secs(3600)).into();
    let cert = params.signed_by(&key, &issuer)?;
    let cert_path = dir.join(format!("{file_stem}-cert.pem"));
    let key_path = dir.join(format!("{file_stem}-key.pem"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok((cert_path, key_path))
}
