//! A small HTTP/1.1 client for meshd's API (what `meshctl` uses).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{0}` is not a meshd address (expected http://host:port)")]
    BadServer(String),
    #[error(
        "cannot reach meshd at {server}: {source} (is meshd running? set --server or MESH_SERVER)"
    )]
    Connect {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("request to meshd failed: {0}")]
    Http(String),
}

#[derive(Debug, Clone)]
pub struct ApiClient {
    authority: String,
    token: Option<String>,
}

impl ApiClient {
    /// `server` is `http://host:port` (or just `host:port`).
    pub fn new(server: &str, token: Option<String>) -> Result<ApiClient, ClientError> {
        let authority = server
            .strip_prefix("http://")
            .unwrap_or(server)
            .trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || server.starts_with("https://") {
            return Err(ClientError::BadServer(server.to_string()));
        }
        Ok(ApiClient {
            authority: authority.to_string(),
            token,
        })
    }

    /// Sends one request and returns the status and body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|source| ClientError::Connect {
                server: self.authority.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let headers = req.headers_mut();
        headers.insert(
            HOST,
            HeaderValue::from_str(&self.authority).map_err(|e| ClientError::Http(e.to_string()))?,
        );
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|e| ClientError::Http(e.to_string()))?;
            headers.insert(AUTHORIZATION, value);
        }
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }
}
