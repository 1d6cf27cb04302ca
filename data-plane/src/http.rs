//! The HTTP listener: `/mcp` (streamable HTTP, authenticated before any MCP work), `/healthz`,
//! `/readyz` and `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use std::borrow::Cow;

use rmcp::model::InitializeRequestParams;

use crate::auth::{AuthError, Principal};
use crate::gateway::{GatewayService, Identity};
use crate::rate_limit::{self, Limited};
use crate::sealed_session::SealedStore;
use crate::session::{LimitReached, Owner, Refused, short_id};
use crate::state::Gateway;
use crate::telemetry::{self, Traced, Transport};

const SESSION_HEADER: &str = "mcp-session-id";
/// JSON-RPC error codes of the answers the gateway gives before MCP: the key, the session, the body.
pub(crate) const UNAUTHORIZED: i32 = -32001;
const PARSE_ERROR: i32 = -32700;
const INVALID_REQUEST: i32 = -32600;

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
    // Restores sessions opened on other replicas (or before a restart) from their sealed ids.
    mcp_config.session_store = Some(Arc::new(SealedStore(gateway.sessions.sealer().clone())));
    let factory_gateway = gateway.clone();
    let mcp = McpService(Arc::new(StreamableHttpService::new(
        move || Ok(Traced::new(GatewayService::new(factory_gateway.clone(), Identity::Http), Transport::Http)),
        gateway.sessions.clone(),
        mcp_config,
    )));
    let mcp = Router::new()
        .route_service("/mcp", mcp.clone())
        .route_service("/mcp/", mcp.clone())
        // A project's own endpoint (for OAuth users in several projects; keys of that project).
        .route_service("/mcp/{project}", mcp.clone())
        .route_service("/mcp/{project}/", mcp)
        .layer(from_fn_with_state(gateway.clone(), authenticate));
    Router::new()
        .route("/healthz", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(mcp)
        .merge(crate::oauth::routes(gateway.oauth.clone()))
        .with_state(gateway)
}

/// rmcp's streamable HTTP service, shared: routing clones the service for every request, and a
/// clone of rmcp's own copies its whole configuration.
#[derive(Clone)]
struct McpService(Arc<StreamableHttpService<Traced, crate::session::Sessions>>);

impl tower_service::Service<Request> for McpService {
    type Response = Response<http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>>;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { Ok(service.handle(request).await) })
    }
}

/// In front of rmcp: resolves the caller, admits a session only to the credential that opened it,
/// binds new sessions (within the limits), and turns rmcp's plain-text refusals into JSON-RPC errors.
async fn authenticate(State(gateway): State<Arc<Gateway>>, request: Request, next: Next) -> Response {
    let auth_started = telemetry::authentication_started();
    let principal = match crate::oauth::caller(&gateway, request.uri(), request.headers()).await {
        Ok(principal) => principal,
        Err(refusal) => return refusal,
    };
    let owner = Owner::of(&principal);
    let session = request.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut direct = None;
    if let Some(id) = &session {
        match gateway.sessions.admit(id, &owner) {
            Ok(handler) => direct = handler,
            Err(refused) => {
                match refused {
                    Refused::Foreign => refuse_foreign(&gateway, &principal, id),
                    Refused::Limit(limit) => {
                        gateway.metrics.record_session_refusal(limit.reason());
                        return too_many_sessions(limit);
                    }
                    Refused::Unknown => {}
                }
                return session_not_found();
            }
        }
    }
    let method = request.method().clone();
    let sent_json = request.headers().get(header::CONTENT_TYPE).is_some_and(is_json);
    // A POST body is read here so that one rmcp cannot parse can be answered precisely.
    let (mut request, body) = if method == Method::POST {
        let (parts, body) = request.into_parts();
        match axum::body::to_bytes(body, gateway.config.max_request_bytes).await {
            Ok(bytes) => (Request::from_parts(parts, Body::from(bytes.clone())), Some(bytes)),
            Err(_) => {
                let message = format!("request body exceeds {} bytes", gateway.config.max_request_bytes);
                return jsonrpc_error(StatusCode::PAYLOAD_TOO_LARGE, INVALID_REQUEST, &message);
            }
        }
    } else {
        (request, None)
    };
    let message = body.as_deref().and_then(|b| serde_json::from_slice::<Peek>(b).ok());
    if let Some(Peek { method: Some(method), id, params }) = &message
        && method == "tools/call"
        && let Err(limited) = admit_call(&gateway, &principal, params.as_ref()).await
    {
        return rate_limited(&gateway, &principal, id.clone(), limited);
    }
    request.extensions_mut().insert(principal.clone());
    telemetry::authenticated(request.extensions_mut(), auth_started);
    if let (Some(direct), Some(message), Some(body)) = (direct, &message, &body) {
        if message.method.as_deref() == Some("notifications/cancelled")
            && let Some(id) = message.params.as_ref().and_then(|p| p.request_id.clone())
            && let Ok(id) = serde_json::from_value(id)
        {
            direct.cancel(&id);
        } else if message.id.is_some() && sent_json {
            request = match direct.serve(request, body, &gateway).await {
                Ok(answered) => return answered,
                Err(request) => request,
            };
        }
    }
    let opening = match (&session, &message, &body) {
        (None, Some(Peek { method: Some(m), .. }), Some(body)) if m == "initialize" => initialize_params(body),
        _ => None,
    };
    let mut response = match opening {
        // The new session's id seals who opened it and how, so any replica can continue it.
        Some(params) => crate::session::opening(owner.clone(), params, next.run(request)).await,
        None => next.run(request).await,
    };
    if session.is_none()
        && let Some(id) = response.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned)
    {
        if let Err(limit) = gateway.sessions.register(&id, owner) {
            gateway.sessions.end(&id);
            gateway.metrics.record_session_refusal(limit.reason());
            return too_many_sessions(limit);
        }
        tracing::debug!(session = %short_id(&id), key_id = %principal.key_id, "session opened");
    }
    // Session termination is complete when rmcp answers; clients (the Python SDK among them)
    // expect 200 or 204 and warn on rmcp's 202.
    if method == Method::DELETE && response.status() == StatusCode::ACCEPTED {
        *response.status_mut() = StatusCode::OK;
        // Ended for good: its id must not open it again here.
        if let Some(id) = &session {
            gateway.sessions.end(id);
        }
    }
    if response.status().is_client_error() && !response.headers().contains_key(header::CONTENT_TYPE) {
        return as_jsonrpc_error(response, sent_json.then_some(body).flatten()).await;
    }
    response
}

/// What the gateway reads of a request body before rmcp does: enough to route and limit it.
#[derive(serde::Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(borrow, default)]
    params: Option<PeekParams<'a>>,
}

#[derive(serde::Deserialize)]
struct PeekParams<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    /// Of `notifications/cancelled`.
    #[serde(default, rename = "requestId")]
    request_id: Option<serde_json::Value>,
}

fn initialize_params(body: &[u8]) -> Option<InitializeRequestParams> {
    #[derive(serde::Deserialize)]
    struct Initialize {
        params: InitializeRequestParams,
    }
    serde_json::from_slice::<Initialize>(body).ok().map(|i| i.params)
}

/// Counts a `tools/call` under the limits that apply to it. Calls the policy will refuse anyway
/// (unknown or denied tools) are left to it and not counted.
async fn admit_call(gateway: &Gateway, principal: &Principal, params: Option<&PeekParams<'_>>) -> Result<(), Limited> {
    let (Some(config), Some(name)) = (&principal.config, params.and_then(|p| p.name.as_deref())) else {
        return Ok(());
    };
    let Some((spec, tool)) = config.route_tool(name) else { return Ok(()) };
    if !config.tool_allowed(&spec.server_name, tool) {
        return Ok(());
    }
    let limits = rate_limit::applicable(principal, config, spec, tool);
    gateway.rate_limiter.admit(&limits, &gateway.metrics).await
}

/// `429` for a call over a rate limit, with the JSON-RPC error for its request.
fn rate_limited(gateway: &Gateway, principal: &Principal, id: Option<serde_json::Value>, limited: Limited) -> Response {
    gateway.metrics.record_rate_limited(&principal.project_name, limited.kind);
    tracing::info!(project = %principal.project_name, key_id = %principal.key_id, limit = limited.kind, "tool call rate limited");
    gateway.audit.record_rate_limited(principal, &limited);
    let message = limited.to_string();
    let body = json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": rate_limit::ERROR_CODE, "message": message, "data": {"limit": limited.kind, "retry_after_secs": limited.retry_after_secs}},
    });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(limited.retry_after_secs));
    response
}

fn refuse_foreign(gateway: &Gateway, principal: &Principal, id: &str) {
    gateway.metrics.record_auth_failure("session_owner");
    tracing::warn!(session = %short_id(id), key_id = %principal.key_id, "request on another credential's session refused");
    gateway.audit.record_session_refusal(crate::audit::SessionRefusal {
        time: chrono::Utc::now(),
        event: "session_refused",
        key_id: principal.key_id.to_string(),
        project: principal.project_name.to_string(),
        user_id: principal.user_id.to_string(),
        session: short_id(id),
        reason: "the session belongs to another credential",
    });
}

fn is_json(value: &HeaderValue) -> bool {
    value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

pub(crate) fn jsonrpc_error(status: StatusCode, code: i32, message: &str) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

pub(crate) fn unauthorized(e: AuthError) -> Response {
    let mut response = jsonrpc_error(StatusCode::UNAUTHORIZED, UNAUTHORIZED, &e.to_string());
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"mcpgw\""));
    response
}

/// The answer for an unknown, ended or someone else's session: the same in every case.
fn session_not_found() -> Response {
    jsonrpc_error(StatusCode::NOT_FOUND, INVALID_REQUEST, "session not found: start a new one with `initialize`")
}

fn too_many_sessions(limit: LimitReached) -> Response {
    let status = match limit {
        LimitReached::PerKey(_) => StatusCode::TOO_MANY_REQUESTS,
        LimitReached::Total(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut response = jsonrpc_error(status, INVALID_REQUEST, &limit.to_string());
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    response
}

/// rmcp answers what it refuses in plain text; clients get a JSON-RPC error with the same status.
/// A JSON body rmcp could not take is a parse error or an invalid request (`400`), not the `415`
/// rmcp gives it; `415` stays for a body that is not sent as JSON.
async fn as_jsonrpc_error(response: Response, json_body: Option<Bytes>) -> Response {
    let status = response.status();
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    match json_body {
        Some(body) if status == StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            let (code, message) = unreadable(&body, &text);
            jsonrpc_error(StatusCode::BAD_REQUEST, code, &message)
        }
        _ => jsonrpc_error(status, INVALID_REQUEST, text.trim()),
    }
}

/// Why a body sent as JSON is not one JSON-RPC message.
fn unreadable(body: &[u8], rmcp_says: &str) -> (i32, String) {
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        let message = "JSON-RPC batches are not supported: the MCP versions this gateway serves (2025-06-18 and later) \
                       send one message per request";
        return (INVALID_REQUEST, message.into());
    }
    match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        Err(e) if e.is_syntax() || e.is_eof() => (PARSE_ERROR, format!("parse error: {e}")),
        Err(e) => (INVALID_REQUEST, format!("invalid request: {e}")),
        Ok(_) => (INVALID_REQUEST, format!("invalid request: not a JSON-RPC message ({})", rmcp_says.trim())),
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
        // How old the configuration being served is (it may be kept while no control plane answers).
        "snapshot_age_secs": catalog.generated_at.map(|t| (chrono::Utc::now() - t).num_seconds()),
        "loaded_at": status.loaded_at,
        "last_error": status.last_error,
        "last_error_at": status.last_error_at,
        "source": if status.control_plane.is_some() { "control_plane" } else { "file" },
        "control_plane": status.control_plane,
    });
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body)).into_response()
}

/// Prometheus' text format, or OpenMetrics (with exemplars) when the scraper asks for it.
async fn metrics(State(gateway): State<Arc<Gateway>>, headers: axum::http::HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if accept.contains("application/openmetrics-text") {
        let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
        return ([(header::CONTENT_TYPE, content_type)], gateway.metrics.render_openmetrics()).into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], gateway.metrics.render()).into_response()
}
