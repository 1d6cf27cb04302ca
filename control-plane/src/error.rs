//! The control plane's one error type, mapped once to an HTTP status and a JSON body
//! `{"error": {"code", "message"}}`. Handlers return `ApiError`; nothing else builds error responses.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::{RefOr, Response, ResponseBuilder, content::ContentBuilder};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("a valid admin API key is required (Authorization: Bearer <key>, or apikey: <key>)")]
    Unauthorized,
    /// A data-plane route without a valid data-plane token.
    #[error("{0}")]
    DataPlaneUnauthorized(String),
    /// The Swagger UI's pages, which a browser may open with HTTP Basic (see [`crate::auth`]).
    #[error(
        "a valid admin API key is required (HTTP Basic with any user name and the key as password, or Authorization: Bearer <key>)"
    )]
    DocsUnauthorized,
    /// A request a page of another web site could have made (see [`crate::browser`]).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error(
        "the request body must be JSON sent with `Content-Type: application/json` (curl: -H 'Content-Type: application/json', or --json)"
    )]
    UnsupportedMediaType,
    #[error("{0}")]
    Invalid(String),
    /// A document with problems, each at its JSON pointer (all of them, not only the first).
    #[error("the document has {} problem(s); see `problems`", .0.len())]
    InvalidDocument(Vec<Problem>),
    /// A server the control plane called on the admin's behalf (an OAuth token endpoint) failed.
    #[error("{0}")]
    BadGateway(String),
    /// The database cannot be reached (it is down, restarting or out of connections).
    #[error("the database is unavailable ({0}); retry shortly")]
    Unavailable(String),
    #[error("internal error; the details are in the control plane's log")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized | ApiError::DocsUnauthorized | ApiError::DataPlaneUnauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Invalid(_) | ApiError::InvalidDocument(_) => "invalid_field",
            ApiError::BadGateway(_) => "bad_gateway",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn not_found(kind: &str, ident: &str) -> Self {
        ApiError::NotFound(format!("{kind} `{ident}` does not exist"))
    }

    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        ApiError::Invalid(format!("{field}: {message}"))
    }
}

/// The JSON error envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: bad_request, unauthorized, forbidden, not_found, conflict,
    /// payload_too_large, unsupported_media_type, invalid_field, bad_gateway, unavailable, internal.
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
    /// For a document: every problem, at its JSON pointer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

/// One problem of a document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// RFC 6901 JSON pointer into the document (`/projects/0/mcp_config`).
    pub pointer: String,
    pub message: String,
}

impl From<crate::secrets::SecretError> for ApiError {
    fn from(e: crate::secrets::SecretError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::DocsUnauthorized | ApiError::DataPlaneUnauthorized(_) => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid(_) | ApiError::InvalidDocument(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(detail) = self {
            tracing::error!(%detail, "internal error");
        }
        let problems = if let ApiError::InvalidDocument(p) = self { p.clone() } else { Vec::new() };
        let body = ErrorBody { error: ErrorDetail { code: self.code().into(), message: self.to_string(), problems } };
        let mut resp = HttpResponse::build(self.status_code());
        match self {
            // Lets a browser prompt for the key (Basic auth, key as password) on /docs.
            ApiError::DocsUnauthorized => {
                resp.insert_header(("WWW-Authenticate", "Basic realm=\"mcpgw admin\", charset=\"UTF-8\""));
            }
            // Not Basic: a browser must neither prompt for nor replay cached Basic credentials here.
            ApiError::Unauthorized => {
                resp.insert_header(("WWW-Authenticate", "Bearer realm=\"mcpgw admin\""));
            }
            ApiError::DataPlaneUnauthorized(_) => {
                resp.insert_header(("WWW-Authenticate", "Bearer realm=\"mcpgw data plane\""));
            }
            _ => {}
        }
        resp.json(body)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            if db.is_unique_violation() {
                return ApiError::Conflict("a resource with that name already exists".into());
            }
            if db.is_foreign_key_violation() {
                return ApiError::Conflict("the resource is still referenced by another resource".into());
            }
            // PostgreSQL: connection exceptions (08...) and a server shutting down or starting (57P..).
            if db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) {
                return ApiError::Unavailable(db.message().to_string());
            }
        }
        match e {
            sqlx::Error::PoolTimedOut => ApiError::Unavailable("no database connection within 3 s".into()),
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
                ApiError::Unavailable(e.to_string())
            }
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        ApiError::Internal(format!("stored JSON is unreadable: {e}"))
    }
}

/// Error responses for the OpenAPI document, grouped by what a route can fail with.
fn error_response(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody"))).build(),
        )
        .build()
        .into()
}

fn responses(codes: &[u16]) -> BTreeMap<String, RefOr<Response>> {
    codes
        .iter()
        .map(|c| {
            let d = match c {
                400 => "Malformed JSON or query string",
                401 => "Missing or wrong admin API key",
                403 => "Refused: sent by a page of another web site (Origin, Sec-Fetch-Site)",
                404 => "Unknown resource",
                409 => "Conflict: duplicate name, or the resource is in use",
                413 => "Request body over 1 MiB",
                415 => "The body is not sent as Content-Type: application/json",
                422 => "Invalid field values",
                502 => "The upstream's OAuth token endpoint failed or refused the request",
                503 => "The database is unavailable; retry shortly",
                _ => "Error",
            };
            (c.to_string(), error_response(d))
        })
        .collect()
}

/// Errors of a read of one resource.
pub struct ReadErrors;
impl utoipa::IntoResponses for ReadErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses(&[400, 401, 403, 404, 503])
    }
}

/// Errors of a listing.
pub struct ListErrors;
impl utoipa::IntoResponses for ListErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses(&[400, 401, 403, 404, 422, 503])
    }
}

/// Errors of a change with a JSON body.
pub struct WriteErrors;
impl utoipa::IntoResponses for WriteErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses(&[400, 401, 403, 404, 409, 413, 415, 422, 503])
    }
}

/// Errors of starting an OAuth authorization with an upstream's authorization server.
pub struct OAuthErrors;
impl utoipa::IntoResponses for OAuthErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses(&[400, 401, 403, 404, 409, 415, 422, 502, 503])
    }
}

/// Errors of the open OAuth callback (no admin key, no browser checks: see its handler).
pub struct CallbackErrors;
impl utoipa::IntoResponses for CallbackErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses(&[400, 404, 409, 422, 502, 503])
    }
}

/// Errors of a change without a body (delete, enable, rotate).
pub struct ActionErrors;
impl utoipa::IntoResponses for ActionErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses(&[400, 401, 403, 404, 409, 415, 503])
    }
}
