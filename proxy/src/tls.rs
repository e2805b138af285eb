//! Mutual TLS between sidecars (rustls, aws-lc-rs, TLS 1.3 only).
//!
//! Both sides present their current workload certificate. The server side (the peer port)
//! requires a client certificate that chains to the trust bundle; the client side checks that the
//! server's certificate chains to the bundle and names exactly the SPIFFE ID meshd published for
//! that endpoint. ALPN says what the connection carries ([`Carriage`]): `mesh/h2` (HTTP/2
//! between sidecars), `mesh/h1` (HTTP/1.1; `mesh/h1c` with compact heads), `mesh/mux`
//! (HTTP/1.1 on multiplexed streams; `mesh/muxc` with compact heads) or `mesh/tcp` (one opaque
//! TCP stream, preceded by its 2-byte target port). Sessions are resumed from a shared
//! in-memory cache.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use mesh_proto::spiffe::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, ResolvesClientCert, Resumption};
use rustls::crypto::aws_lc_rs::cipher_suite;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, Error, ServerConfig, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::identity::{Identity, spiffe_id, uri_sans};
use crate::read_ahead::ReadAhead;

/// What a connection between sidecars carries (its ALPN protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Carriage {
    /// HTTP/1.1, one request at a time per connection, for clients that spoke HTTP/1.1.
    Http1,
    /// HTTP/2, the requests of many client connections multiplexed.
    Http2,
    /// One opaque TCP stream; the first two bytes are the target port (big-endian).
    Tcp,
    /// Streams multiplexed by [`crate::mux`], each carrying HTTP/1.1 as `mesh/h1` does.
    Mux,
}

impl Carriage {
    pub const fn alpn(self) -> &'static [u8] {
        match self {
            Carriage::Http1 => b"mesh/h1",
            Carriage::Http2 => b"mesh/h2",
            Carriage::Tcp => b"mesh/tcp",
            Carriage::Mux => b"mesh/mux",
        }
    }

    /// The ALPN protocols a client offers for this carriage, in order. `mesh/h1` also offers
    /// `mesh/h2`: a sidecar built before `mesh/h1` existed picks that, and the client then
    /// speaks HTTP/2 on the connection (the request says it was HTTP/1.1), so an upgrade of one
    /// side does not break traffic to the other.
    pub const fn offers(self) -> &'static [Carriage] {
        match self {
            Carriage::Http1 => &[Carriage::Http1, Carriage::Http2],
            Carriage::Http2 => &[Carriage::Http2],
            Carriage::Tcp => &[Carriage::Tcp],
            // A sidecar built before `mesh/mux` picks one of the others; the client then
            // speaks HTTP/1.1 (or HTTP/2) on that connection alone.
            Carriage::Mux => &[Carriage::Mux, Carriage::Http1, Carriage::Http2],
        }
    }

    pub fn from_alpn(alpn: Option<&[u8]>) -> Option<Carriage> {
        match alpn {
            Some(b"mesh/h1" | COMPACT_HEADS) => Some(Carriage::Http1),
            Some(b"mesh/h2") => Some(Carriage::Http2),
            Some(b"mesh/tcp") => Some(Carriage::Tcp),
            Some(b"mesh/mux" | COMPACT_MUX) => Some(Carriage::Mux),
            _ => None,
        }
    }
}

/// `mesh/h1` whose requests and responses may go with a compact head ([`crate::compact_head`]):
/// offered before `mesh/h1`, which a sidecar built before it picks instead. It carries HTTP/1.1
/// as `mesh/h1` does ([`Carriage::Http1`], counted as `mesh/h1`).
pub const COMPACT_HEADS: &[u8] = b"mesh/h1c";

/// `mesh/mux` whose streams' requests and responses may go with a compact head, as on
/// [`COMPACT_HEADS`]: offered before `mesh/mux`, which a sidecar built before it picks instead.
/// It carries what `mesh/mux` does ([`Carriage::Mux`], counted as `mesh/mux`).
pub const COMPACT_MUX: &[u8] = b"mesh/muxc";

/// Whether the handshake chose [`COMPACT_HEADS`] or [`COMPACT_MUX`].
pub fn compact_heads(alpn: Option<&[u8]>) -> bool {
    matches!(alpn, Some(COMPACT_HEADS | COMPACT_MUX))
}

/// The ALPN protocols of `carriages`, in order, `mesh/h1` preceded by [`COMPACT_HEADS`] and
/// `mesh/mux` by [`COMPACT_MUX`] when `compact`.
fn alpn_protocols(carriages: &[Carriage], compact: bool) -> Vec<Vec<u8>> {
    let mut protocols = Vec::with_capacity(carriages.len() + 2);
    for carriage in carriages {
        match carriage {
            Carriage::Http1 if compact => protocols.push(COMPACT_HEADS.to_vec()),
            Carriage::Mux if compact => protocols.push(COMPACT_MUX.to_vec()),
            _ => {}
        }
        protocols.push(carriage.alpn().to_vec());
    }
    protocols
}

/// Hands every handshake the identity's current certificate.
#[derive(Debug)]
struct CurrentCertificate(Arc<Identity>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current()
    }
}

impl ResolvesClientCert for CurrentCertificate {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.current()
    }

    fn has_certs(&self) -> bool {
        self.0.is_ready()
    }
}

/// Accepts a server certificate that chains to the trust bundle and names `expected`.
#[derive(Debug)]
struct ExpectedPeer {
    expected: SpiffeId,
    roots: Arc<rustls::RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ExpectedPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        match spiffe_id(end_entity) {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            _ => Err(Error::General(format!(
                "the peer is {:?}, not {} as meshd published",
                uri_sans(end_entity),
                self.expected
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The TLS 1.3 cipher suites between sidecars, the preferred first. AES-128-GCM leads, as in
/// BoringSSL (Envoy, hence Istio) and Go: 10 AES rounds a block against AES-256's 14. On the
/// dev VM (AES-NI, no AVX-512) the gain was small: AES-GCM went from 36.9% to 35.2% of the
/// sidecars' samples in `benches/profile.sh 8 '' perf tcp`. rustls servers follow the client's
/// order.
const CIPHER_SUITES: &[rustls::SupportedCipherSuite] = &[
    cipher_suite::TLS13_AES_128_GCM_SHA256,
    cipher_suite::TLS13_AES_256_GCM_SHA384,
    cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
];

/// The sidecar's TLS: one server config for the peer port, client configs per expected peer.
pub struct MeshTls {
    identity: Arc<Identity>,
    provider: Arc<CryptoProvider>,
    acceptor: TlsAcceptor,
    sessions: Arc<ClientSessionMemoryCache>,
    clients: Mutex<HashMap<(SpiffeId, Carriage), Arc<ClientConfig>>>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("identity", self.identity.id())
            .finish_non_exhaustive()
    }
}

impl MeshTls {
    /// Serves every carriage, the server's preference first: `mesh/h1` when the client offers it
    /// (see [`Carriage::offers`]), with compact heads when it offers those.
    pub fn new(identity: Arc<Identity>) -> Result<MeshTls, Error> {
        MeshTls::serving(
            identity,
            // The server's order decides: `mesh/mux` first for a client that offers it.
            &[
                Carriage::Mux,
                Carriage::Http1,
                Carriage::Http2,
                Carriage::Tcp,
            ],
            true,
        )
    }

    /// Serves `carriages` only, in that order of preference; [`COMPACT_HEADS`] and
    /// [`COMPACT_MUX`] too when `compact`.
    fn serving(
        identity: Arc<Identity>,
        carriages: &[Carriage],
        compact: bool,
    ) -> Result<MeshTls, Error> {
        let provider = Arc::new(CryptoProvider {
            cipher_suites: CIPHER_SUITES.to_vec(),
            ..rustls::crypto::aws_lc_rs::default_provider()
        });
        let verifier =
            WebPkiClientVerifier::builder_with_provider(identity.roots(), provider.clone())
                .build()
                .map_err(|e| Error::General(format!("client verifier: {e}")))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(CurrentCertificate(identity.clone())));
        server.alpn_protocols = alpn_protocols(carriages, compact);
        Ok(MeshTls {
            identity,
            provider,
            acceptor: TlsAcceptor::from(Arc::new(server)),
            sessions: Arc::new(ClientSessionMemoryCache::new(1024)),
            clients: Mutex::new(HashMap::new()),
        })
    }

    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// The SPIFFE ID of `namespace`/`service_account` in our trust domain.
    pub fn peer_id(&self, namespace: &str, service_account: &str) -> Option<SpiffeId> {
        SpiffeId::new(
            self.identity.id().trust_domain(),
            namespace,
            service_account,
        )
        .ok()
    }

    fn client_config(
        &self,
        expected: &SpiffeId,
        carriage: Carriage,
    ) -> Result<Arc<ClientConfig>, Error> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(config) = clients.get(&(expected.clone(), carriage)) {
            return Ok(config.clone());
        }
        let verifier = ExpectedPeer {
            expected: expected.clone(),
            roots: self.identity.roots(),
            algorithms: self.provider.signature_verification_algorithms,
        };
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(CurrentCertificate(self.identity.clone())));
        config.alpn_protocols = alpn_protocols(carriage.offers(), true);
        config.resumption = Resumption::store(self.sessions.clone());
        let config = Arc::new(config);
        clients.insert((expected.clone(), carriage), config.clone());
        Ok(config)
    }

    /// The client side of a handshake with the sidecar at `ip`, which must be `expected`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        ip: IpAddr,
        expected: &SpiffeId,
        carriage: Carriage,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<ReadAhead<TcpStream>>> {
        let config = self
            .client_config(expected, carriage)
            .map_err(std::io::Error::other)?;
        let mut stream = TlsConnector::from(config)
            .connect(ServerName::IpAddress(ip.into()), ReadAhead::new(tcp))
            .await?;
        let (transport, conn) = stream.get_mut();
        if Carriage::from_alpn(conn.alpn_protocol()) == Some(Carriage::Mux) {
            transport.keep_buffer();
        }
        Ok(stream)
    }
}

/// The SPIFFE ID the peer proved in a finished handshake.
pub fn peer_identity(conn: &rustls::CommonState) -> Option<SpiffeId> {
    conn.peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|leaf| spiffe_id(leaf))
}

/// Certificates and sidecar TLS set-ups for the tests of this crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa,
        Issuer, KeyPair, KeyUsagePurpose, SanType,
    };
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    pub(crate) fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "default", sa).expect("id")
    }

    /// A fresh root CA: its PEM (the trust bundle) and the issuer of the leaves.
    pub(crate) fn root_ca() -> (String, Issuer<'static, KeyPair>) {
        let root_key = KeyPair::generate().expect("key");
        let mut root = CertificateParams::default();
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let root_pem = root.self_signed(&root_key).expect("root").pem();
        (root_pem, Issuer::new(root, root_key))
    }

    /// An identity holding a certificate for `sa` from `issuer`.
    pub(crate) fn identity(
        root_pem: &str,
        issuer: &Issuer<'_, KeyPair>,
        sa: &str,
    ) -> Arc<Identity> {
        let identity = Identity::new(id(sa), "test", root_pem).expect("bundle");
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id(sa).to_string().try_into().expect("uri"))];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, issuer).expect("signed");
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der).expect("signer");
        identity.install(
            CertifiedKey::new(vec![cert.der().clone()], signer),
            u64::MAX,
        );
        Arc::new(identity)
    }

    /// The TLS of a sidecar built before `mesh/h1` existed: it served `mesh/h2` and `mesh/tcp`.
    pub(crate) fn older_sidecar(identity: Arc<Identity>) -> MeshTls {
        MeshTls::serving(identity, &[Carriage::Http2, Carriage::Tcp], false).expect("server")
    }

    /// A sidecar built before [`COMPACT_HEADS`] and [`COMPACT_MUX`] (it served `mesh/h1`,
    /// `mesh/mux` and the others).
    pub(crate) fn sidecar_without_compact_heads(identity: Arc<Identity>) -> MeshTls {
        let carriages = [
            Carriage::Mux,
            Carriage::Http1,
            Carriage::Http2,
            Carriage::Tcp,
        ];
        MeshTls::serving(identity, &carriages, false).expect("server")
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn clients_accept_only_the_published_identity_and_resume_sessions() {
        let (root_pem, issuer) = root_ca();
        let server = MeshTls::new(identity(&root_pem, &issuer, "web")).expect("server");
        let client = MeshTls::new(identity(&root_pem, &issuer, "client")).expect("client");

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = server.acceptor().clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let caller = peer_identity(tls.get_ref().1).map(|c| c.to_string());
                        let _ = tls.write_all(caller.unwrap_or_default().as_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        let connect = |expected: SpiffeId| {
            let client = &client;
            async move {
                let tcp = TcpStream::connect(addr).await.expect("tcp");
                client
                    .connect(tcp, addr.ip(), &expected, Carriage::Http2)
                    .await
            }
        };

        // Not the identity meshd published for this address: refused in the handshake.
        let wrong = connect(id("db")).await.expect_err("must fail");
        assert!(
            wrong
                .to_string()
                .contains("not spiffe://cluster.local/ns/default/sa/db"),
            "{wrong}"
        );

        for round in 0..2 {
            let mut tls = connect(id("web")).await.expect("handshake");
            let (_, conn) = tls.get_ref();
            assert_eq!(conn.alpn_protocol(), Some(&b"mesh/h2"[..]));
            assert_eq!(peer_identity(conn), Some(id("web")));
            assert_eq!(
                conn.negotiated_cipher_suite().map(|c| c.suite()),
                Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
                "sidecars prefer AES-128-GCM"
            );
            let kind = conn.handshake_kind();
            let mut seen = String::new();
            tls.read_to_string(&mut seen).await.expect("read");
            assert_eq!(
                seen, "spiffe://cluster.local/ns/default/sa/client",
                "the server saw the client"
            );
            let expected = if round == 0 {
                rustls::HandshakeKind::Full
            } else {
                rustls::HandshakeKind::Resumed
            };
            assert_eq!(kind, Some(expected), "round {round}");
        }
    }

    /// The carriage each client offer lands on, and whether with compact heads,
    /// against a server of this build, one built before compact heads and one built before
    /// `mesh/h1` (it served `mesh/h2` and `mesh/tcp` only).
    #[tokio::test]
    async fn http1_falls_back_to_http2_on_a_sidecar_without_mesh_h1() {
        let (root_pem, issuer) = root_ca();
        let client = MeshTls::new(identity(&root_pem, &issuer, "client")).expect("client");
        let current = MeshTls::new(identity(&root_pem, &issuer, "web")).expect("server");
        let no_compact = sidecar_without_compact_heads(identity(&root_pem, &issuer, "web"));
        let older = older_sidecar(identity(&root_pem, &issuer, "web"));

        for (server, carriage, lands_on, compact) in [
            (&current, Carriage::Http1, Carriage::Http1, true),
            (&current, Carriage::Http2, Carriage::Http2, false),
            (&current, Carriage::Tcp, Carriage::Tcp, false),
            (&current, Carriage::Mux, Carriage::Mux, true),
            (&no_compact, Carriage::Http1, Carriage::Http1, false),
            (&no_compact, Carriage::Mux, Carriage::Mux, false),
            (&older, Carriage::Http1, Carriage::Http2, false),
            (&older, Carriage::Mux, Carriage::Http2, false),
            (&older, Carriage::Http2, Carriage::Http2, false),
            (&older, Carriage::Tcp, Carriage::Tcp, false),
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let acceptor = server.acceptor().clone();
            let accepted = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.expect("accept");
                let tls = acceptor.accept(tcp).await.expect("server handshake");
                let alpn = tls.get_ref().1.alpn_protocol();
                (Carriage::from_alpn(alpn), compact_heads(alpn))
            });
            let tcp = TcpStream::connect(addr).await.expect("tcp");
            let tls = client
                .connect(tcp, addr.ip(), &id("web"), carriage)
                .await
                .expect("client handshake");
            let alpn = tls.get_ref().1.alpn_protocol();
            let client_sees = (Carriage::from_alpn(alpn), compact_heads(alpn));
            let server_sees = accepted.await.expect("server task");
            assert_eq!(
                client_sees,
                (Some(lands_on), compact),
                "client offered {carriage:?}"
            );
            assert_eq!(
                server_sees,
                (Some(lands_on), compact),
                "client offered {carriage:?}"
            );
        }
    }
}
