//! The admin endpoint (`127.0.0.1:15000` by default): `/live`, `/ready`, `/metrics`, `/shutdown`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::drain::Drain;
use crate::forward::Context;

/// Serves admin requests until the process exits (admin stays up during a drain).
pub async fn serve(listener: TcpListener, ctx: Arc<Context>, drain: Drain) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                continue;
            }
        };
        let (ctx, drain) = (ctx.clone(), drain.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = respond(req.method(), req.uri().path(), &ctx, &drain);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// The response to one admin request.
pub fn respond(method: &Method, path: &str, ctx: &Context, drain: &Drain) -> Response<Full<Bytes>> {
    match (method, path) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n".into()),
        (&Method::GET, "/ready") => ready(ctx, drain),
        (&Method::GET, "/config_dump") => {
            let body = serde_json::to_string_pretty(&ctx.xds.dump()).unwrap_or_default();
            let mut r = text(StatusCode::OK, body);
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        (&Method::GET, "/metrics") => {
            let mut body = ctx.metrics.render();
            body.push_str(&crate::request_metrics::render(&[
                ("outbound", &ctx.xds.requests),
                ("inbound", &ctx.xds.inbound_requests),
            ]));
            if let Some(tls) = &ctx.tls {
                body.push_str(&tls.identity().render());
            }
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::POST, "/shutdown") => {
            drain.start();
            text(StatusCode::OK, "draining\n".into())
        }
        (_, "/live" | "/ready" | "/metrics" | "/config_dump") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into())
        }
        (_, "/shutdown") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try GET /live, /ready, /metrics, /config_dump or POST /shutdown\n".into(),
        ),
    }
}

/// `/ready`: 200 when serving; otherwise 503 with every unmet condition, one per line, so the
/// answer names all that is missing whatever order the conditions are met in.
fn ready(ctx: &Context, drain: &Drain) -> Response<Full<Bytes>> {
    let mut missing = String::new();
    if drain.is_draining() {
        missing.push_str("draining\n");
    }
    if !ctx.xds.is_ready() {
        missing.push_str("waiting for the first configuration from the control plane\n");
    }
    if ctx
        .tls
        .as_ref()
        .is_some_and(|tls| !tls.identity().is_ready())
    {
        missing.push_str("no workload certificate from meshd's CA yet\n");
    }
    if missing.is_empty() {
        text(StatusCode::OK, "ready\n".into())
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, missing)
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn ctx() -> Context {
        Context::for_tests()
    }

    #[test]
    fn ready_until_shutdown_is_posted() {
        let (ctx, drain) = (ctx(), Drain::new());
        assert_eq!(
            respond(&Method::GET, "/ready", &ctx, &drain).status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&Method::GET, "/shutdown", &ctx, &drain).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert!(!drain.is_draining());
        assert_eq!(
            respond(&Method::POST, "/shutdown", &ctx, &drain).status(),
            StatusCode::OK
        );
        assert!(drain.is_draining());
        assert_eq!(
            respond(&Method::GET, "/ready", &ctx, &drain).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            respond(&Method::GET, "/live", &ctx, &drain).status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn not_ready_names_every_unmet_condition() {
        let mut ctx = ctx();
        ctx.xds = std::sync::Arc::new(crate::xds::Xds::following("https://meshd:15012".into()));
        let drain = Drain::new();
        drain.start();
        let r = respond(&Method::GET, "/ready", &ctx, &drain);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = r.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(
            body,
            "draining\nwaiting for the first configuration from the control plane\n"
        );
    }

    #[test]
    fn metrics_and_unknown_paths() {
        let (ctx, drain) = (ctx(), Drain::new());
        let r = respond(&Method::GET, "/metrics", &ctx, &drain);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            respond(&Method::GET, "/nope", &ctx, &drain).status(),
            StatusCode::NOT_FOUND
        );
    }
}
