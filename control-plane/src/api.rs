//! meshd's management API (HTTP/1.1, JSON), which `meshctl` speaks.
//!
//! | method | path | |
//! |---|---|---|
//! | POST | `/v1/apply` | body: YAML or JSON documents; all or nothing |
//! | GET | `/v1/resources/{kind}[?namespace=ns]` | list |
//! | GET, DELETE | `/v1/resources/{kind}/{namespace}/{name}` | one resource |
//! | GET | `/v1/history[?limit=n]` | revisions, newest first |
//! | GET | `/v1/proxies` | connected proxies and what each ACKed or NACKed |
//! | GET | `/v1/wait?generation=g&timeoutMs=t` | until every proxy synced `g` or NACKed it |
//! | POST | `/v1/tokens?namespace=ns&serviceAccount=sa[&ttlSeconds=n]` | a workload token for the CA |
//! | GET | `/v1/ca/bundle` | the trust bundle (PEM) |
//! | GET | `/ready`, `/metrics` | no token needed |
//!
//! With a token configured, `/v1/*` requires `Authorization: Bearer <token>`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;

use mesh_proto::spiffe::SpiffeId;

use crate::ca::Authority;
use crate::ca::token::TokenSigner;
use crate::controller::{ControlError, Controller};
use crate::registry::wait_outcome;
use crate::resource::{Key, Kind};

/// Largest accepted request body.
const MAX_BODY: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Api {
    controller: Arc<Controller>,
    token: Option<Arc<str>>,
    ca: Option<(Arc<TokenSigner>, Arc<Authority>)>,
}

/// A token `meshctl token create` printed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct IssuedToken {
    token: String,
    namespace: String,
    service_account: String,
    identity: String,
    /// Unix seconds.
    expires: u64,
}

/// Tokens live a day unless asked otherwise, at most a year.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(86_400);
const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 86_400);

impl Api {
    pub fn new(controller: Arc<Controller>, token: Option<String>) -> Api {
        Api {
            controller,
            token: token.map(Into::into),
            ca: None,
        }
    }

    /// Serves tokens and the trust bundle of this CA too.
    pub fn with_ca(mut self, tokens: Arc<TokenSigner>, authority: Arc<Authority>) -> Api {
        self.ca = Some((tokens, authority));
        self
    }

    fn create_token(&self, query: &str) -> Response<Full<Bytes>> {
        let Some((tokens, authority)) = &self.ca else {
            return error(StatusCode::NOT_FOUND, "this meshd runs without a CA");
        };
        let (Some(namespace), Some(service_account)) =
            (param(query, "namespace"), param(query, "serviceAccount"))
        else {
            return error(
                StatusCode::BAD_REQUEST,
                "query parameters `namespace` and `serviceAccount` are required",
            );
        };
        let ttl = match param(query, "ttlSeconds").map(|t| t.parse::<u64>()) {
            None => DEFAULT_TOKEN_TTL,
            Some(Ok(secs)) if secs > 0 && secs <= MAX_TOKEN_TTL.as_secs() => {
                Duration::from_secs(secs)
            }
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "ttlSeconds must be a number from 1 to {}",
                        MAX_TOKEN_TTL.as_secs()
                    ),
                );
            }
        };
        let identity = match SpiffeId::new(authority.trust_domain(), &namespace, &service_account) {
            Ok(id) => id,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let (token, expires) = tokens.create(&namespace, &service_account, ttl);
        json(
            StatusCode::OK,
            &IssuedToken {
                token,
                namespace,
                service_account,
                identity: identity.to_string(),
                expires,
            },
        )
    }

    /// Serves the API on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "API accept failed");
                    continue;
                }
            };
            let api = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(api.handle(req).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(error = %e, "API connection error");
                }
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let method = req.method().clone();
        if path.starts_with("/v1/") && !self.authorized(&req) {
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (meshctl --token or MESH_TOKEN)",
            );
        }
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["ready"]) => text(StatusCode::OK, "ready\n".into()),
            (&Method::GET, ["metrics"]) => {
                let c = &self.controller;
                text(
                    StatusCode::OK,
                    c.metrics
                        .render(c.registry.len(), c.snapshot().generation, c.revision()),
                )
            }
            (&Method::POST, ["v1", "apply"]) => match read_body(req).await {
                Ok(body) => {
                    let controller = self.controller.clone();
                    blocking(move || controller.apply(&body)).await
                }
                Err(resp) => resp,
            },
            (&Method::GET, ["v1", "resources", kind]) => {
                let Some(kind) = Kind::from_user(kind) else {
                    return unknown_kind(kind);
                };
                let namespace = param(&query, "namespace");
                json(
                    StatusCode::OK,
                    &self.controller.list(kind, namespace.as_deref()),
                )
            }
            (&Method::GET, ["v1", "resources", kind, ns, name]) => {
                let Some(kind) = Kind::from_user(kind) else {
                    return unknown_kind(kind);
                };
                match self.controller.get(&Key::new(kind, ns, name)) {
                    Some(r) => json(StatusCode::OK, &r),
                    None => error(
                        StatusCode::NOT_FOUND,
                        &format!("{kind} {ns}/{name} not found"),
                    ),
                }
            }
            (&Method::DELETE, ["v1", "resources", kind, ns, name]) => {
                let Some(kind) = Kind::from_user(kind) else {
                    return unknown_kind(kind);
                };
                let key = Key::new(kind, ns, name);
                let controller = self.controller.clone();
                blocking(move || controller.delete(&key)).await
            }
            (&Method::GET, ["v1", "history"]) => {
                let limit = param(&query, "limit")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(50);
                match self.controller.history(limit) {
                    Ok(h) => json(StatusCode::OK, &h),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                }
            }
            (&Method::GET, ["v1", "proxies"]) => {
                json(StatusCode::OK, &self.controller.registry.list())
            }
            (&Method::GET, ["v1", "wait"]) => self.wait(&query).await,
            (&Method::POST, ["v1", "tokens"]) => self.create_token(&query),
            (&Method::GET, ["v1", "ca", "bundle"]) => match &self.ca {
                Some((_, authority)) => text(StatusCode::OK, authority.bundle().concat()),
                None => error(StatusCode::NOT_FOUND, "this meshd runs without a CA"),
            },
            _ => error(
                StatusCode::NOT_FOUND,
                &format!("no route for {method} {path}"),
            ),
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        req.headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| given.as_bytes() == token.as_bytes())
    }

    /// Waits until every connected proxy has synced `generation` or NACKed it, or the timeout.
    async fn wait(&self, query: &str) -> Response<Full<Bytes>> {
        let Some(generation) = param(query, "generation").and_then(|g| g.parse::<u64>().ok())
        else {
            return error(
                StatusCode::BAD_REQUEST,
                "query parameter `generation` (a number) is required",
            );
        };
        let timeout = param(query, "timeoutMs")
            .and_then(|t| t.parse().ok())
            .unwrap_or(10_000);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout);
        let mut changes = self.controller.registry.subscribe();
        let registry = &self.controller.registry;
        loop {
            changes.borrow_and_update();
            // Counted in place on every change; the full outcome is built once, at the end.
            if registry.pending(generation) == 0 {
                break;
            }
            if !matches!(
                tokio::time::timeout_at(deadline, changes.changed()).await,
                Ok(Ok(()))
            ) {
                break;
            }
        }
        json(StatusCode::OK, &wait_outcome(&registry.list(), generation))
    }
}

async fn read_body(req: Request<Incoming>) -> Result<String, Response<Full<Bytes>>> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the request body (at most 8 MiB): {e}"),
            )
        })?
        .to_bytes();
    String::from_utf8(bytes.to_vec())
        .map_err(|_| error(StatusCode::BAD_REQUEST, "the body is not UTF-8"))
}

/// Runs a store-touching controller call off the async workers.
async fn blocking<T: Serialize + Send + 'static>(
    f: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Response<Full<Bytes>> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => json(StatusCode::OK, &v),
        Ok(Err(ControlError::Invalid(e))) => {
            let status = if e.message == "not found" {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            json(
                status,
                &serde_json::json!({ "error": e.to_string(), "details": e }),
            )
        }
        Ok(Err(e @ ControlError::Store(_))) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the request failed: {e}"),
        ),
    }
}

fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

fn unknown_kind(kind: &str) -> Response<Full<Bytes>> {
    error(
        StatusCode::NOT_FOUND,
        &format!("unknown kind `{kind}` (services, workloads, httproutes)"),
    )
}

fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => with_type(status, body.into(), "application/json"),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the response: {e}"),
        ),
    }
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": message }).to_string();
    with_type(status, body.into(), "application/json")
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(status, body.into(), "text/plain; charset=utf-8")
}

fn with_type(status: StatusCode, body: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
