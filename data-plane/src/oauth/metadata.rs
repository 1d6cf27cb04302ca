//! Protected resource metadata (RFC 9728): at `/.well-known/oauth-protected-resource` and at the
//! path-inserted form of each MCP endpoint (`.../mcp`, `.../mcp/<project>`).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::{Endpoint, OAuth};

const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The metadata routes; empty when OAuth is not configured.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(oauth: Option<Arc<OAuth>>) -> Router<S> {
    let Some(oauth) = oauth else { return Router::new() };
    Router::new()
        .route(WELL_KNOWN, get(document))
        .route(&format!("{WELL_KNOWN}/mcp"), get(document))
        .route(&format!("{WELL_KNOWN}/mcp/"), get(document))
        .route(&format!("{WELL_KNOWN}/mcp/{{project}}"), get(document))
        .route(&format!("{WELL_KNOWN}/mcp/{{project}}/"), get(document))
        .with_state(oauth)
}

async fn document(State(oauth): State<Arc<OAuth>>, request: Request) -> Response {
    let path = request.uri().path().strip_prefix(WELL_KNOWN).unwrap_or_default();
    let endpoint = if path.is_empty() || path == "/" { Endpoint::of("/mcp") } else { Endpoint::of(path) };
    let Some(endpoint) = endpoint else {
        let body = json!({"error": "not_found", "error_description": "no such MCP endpoint"});
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    };
    let mut response = axum::Json(oauth.metadata(&endpoint)).into_response();
    // Browser-based clients (the MCP Inspector) read it from another origin; it is public.
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    response
}
