//! `mesh.ca.v1.CertificateService`: signs a workload's CSR for the identity its token proves.

use std::sync::Arc;
use std::time::Duration;

use mesh_proto::mesh::ca::v1::certificate_service_server::{
    CertificateService, CertificateServiceServer,
};
use mesh_proto::mesh::ca::v1::{CreateCertificateRequest, CreateCertificateResponse};
use mesh_proto::spiffe::SpiffeId;
use rcgen::{CertificateSigningRequestParams, SanType};
use tonic::{Request, Response, Status};

use super::Authority;
use super::token::TokenSigner;
use crate::controller::Controller;

/// The certificate service meshd serves on its TLS port.
#[derive(Debug, Clone)]
pub struct CaService {
    authority: Arc<Authority>,
    tokens: Arc<TokenSigner>,
    controller: Arc<Controller>,
}

impl CaService {
    pub fn new(
        authority: Arc<Authority>,
        tokens: Arc<TokenSigner>,
        controller: Arc<Controller>,
    ) -> CaService {
        CaService {
            authority,
            tokens,
            controller,
        }
    }

    pub fn into_server(self) -> CertificateServiceServer<CaService> {
        CertificateServiceServer::new(self)
    }

    /// The identity the caller's token proves.
    fn caller(&self, request: &Request<CreateCertificateRequest>) -> Result<SpiffeId, Status> {
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("no `authorization: Bearer <token>` metadata")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization is not `Bearer <token>`"))?;
        let claims = self
            .tokens
            .verify(token.trim())
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        SpiffeId::new(
            self.authority.trust_domain(),
            &claims.namespace,
            &claims.service_account,
        )
        .map_err(|e| Status::permission_denied(e.to_string()))
    }

    fn sign(&self, request: Request<CreateCertificateRequest>) -> Result<Vec<String>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let csr = CertificateSigningRequestParams::from_pem(&request.csr_pem)
            .map_err(|e| Status::invalid_argument(format!("csr_pem is not a valid CSR: {e}")))?;
        let asked: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        if asked != [caller.to_string()] {
            return Err(Status::permission_denied(format!(
                "the CSR asks for {asked:?}, but the token proves only {caller}"
            )));
        }
        let ttl = match request.validity_seconds {
            n if n <= 0 => self.authority.default_ttl(),
            n => Duration::from_secs(n.unsigned_abs()).min(self.authority.default_ttl()),
        };
        self.authority
            .issue_workload(&caller, &csr.public_key, ttl)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

#[tonic::async_trait]
impl CertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<CreateCertificateRequest>,
    ) -> Result<Response<CreateCertificateResponse>, Status> {
        let peer = request.remote_addr();
        match self.sign(request) {
            Ok(chain) => {
                self.controller.metrics.certificate_issued(true);
                tracing::info!(?peer, "issued a workload certificate");
                Ok(Response::new(CreateCertificateResponse {
                    cert_chain_pem: chain,
                    trust_bundle_pem: self.authority.bundle().to_vec(),
                }))
            }
            Err(status) => {
                self.controller.metrics.certificate_issued(false);
                tracing::warn!(
                    ?peer,
                    reason = status.message(),
                    "refused a certificate request"
                );
                Err(status)
            }
        }
    }
}
