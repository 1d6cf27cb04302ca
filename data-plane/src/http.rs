//! The HTTP listener: `/mcp` (streamable HTTP, authenticated before any MCP work), `/healthz`,
//! `/readyz` and `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::auth::key_from_headers;
use crate::gateway::{GatewayService, Identity};
use crate::state::Gateway;

/// How long a finished response can still be resumed by a client that lost it.
const RESUMABLE_FOR: std::time::Duration = std::time::Duration::from_secs(10);

pub fn router(gateway: Arc<Gateway>, shutdown: CancellationToken) -> Router {
    let config = &gateway.config;
    let mut mcp_config = StreamableHttpServerConfig::default()
        .with_cancellation_token(shutdown)
        .with_max_request_body_bytes(config.max_request_bytes);
    mcp_config = if config.allowed_hosts.iter().any(|h| h == "*") {
        mcp_config.disable_allowed_hosts()
    } else {
        mcp_config.with_allowed_hosts(config.allowed_hosts.clone())
    };
    let origins: Vec<String> = config.allowed_origins.iter().filter(|o| !o.trim().is_empty()).cloned().collect();
    // An empty list trusts no browser origin: any request that carries one is refused.
    mcp_config = mcp_config.with_allowed_origins(origins).enforce_origin_validation();
    let factory_gateway = gateway.clone();
    let mut sessions = LocalSessionManager::default();
    // rmcp keeps every finished response of a session for late resumption and scans them all on
    // each session event; its 60 s default made a busy session's calls slower the longer it ran
    // and held a minute of responses in memory. Clients retry after 3 s.
    sessions.session_config.completed_cache_ttl = RESUMABLE_FOR;
    let mcp = StreamableHttpService::new(
        move || Ok(GatewayService::new(factory_gateway.clone(), Identity::Http)),
        Arc::new(sessions),
        mcp_config,
    );
    let mcp = Router::new()
        .route_service("/mcp", mcp.clone())
        .route_service("/mcp/", mcp)
        .layer(from_fn_with_state(gateway.clone(), authenticate));
    Router::new()
        .route("/healthz", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(mcp)
        .with_state(gateway)
}

/// Resolves the caller before rmcp sees the request; refusals are HTTP 401 with a JSON-RPC body.
async fn authenticate(State(gateway): State<Arc<Gateway>>, mut request: Request, next: Next) -> Response {
    match gateway.authenticate(key_from_headers(request.headers())).await {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            let ends_session = request.method() == axum::http::Method::DELETE;
            let mut response = next.run(request).await;
            // Session termination is complete when rmcp answers; clients (the Python SDK among
            // them) expect 200 or 204 and warn on rmcp's 202.
            if ends_session && response.status() == StatusCode::ACCEPTED {
                *response.status_mut() = StatusCode::OK;
            }
            response
        }
        Err(e) => {
            let body = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32001, "message": e.to_string()}});
            (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer realm=\"mcpgw\"")], axum::Json(body))
                .into_response()
        }
    }
}

async fn readyz(State(gateway): State<Arc<Gateway>>) -> Response {
    let catalog = gateway.catalog();
    let status = gateway.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let ready = status.loaded_at.is_some();
    let body = json!({
        "ready": ready,
        "revision": catalog.revision,
        "generated_at": catalog.generated_at,
        "loaded_at": status.loaded_at,
        "last_error": status.last_error,
        "last_error_at": status.last_error_at,
    });
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body)).into_response()
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], gateway.metrics.render()).into_response()
}
