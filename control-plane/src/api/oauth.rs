//! OAuth of upstream servers that use the authorization code grant: an admin starts the
//! authorization, the authorization server's redirect completes it at the open callback, and the
//! admin can read its state or forget the tokens. See [`crate::upstream_oauth`].

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::{ActionErrors, ApiError, CallbackErrors, OAuthErrors, ReadErrors};
use crate::store::Store;
use crate::upstream_oauth::{self, AuthorizationStarted, Authorized, CALLBACK_PATH, OAuthStatus};

/// The HTTP client the control plane calls token endpoints with.
pub struct TokenHttp(pub reqwest::Client);

#[utoipa::path(post, path = "/api/v1/configs/{config}/servers/{server}/oauth/authorize", tag = "servers",
    params(("config" = String, Path, description = "Config id or name"), ("server" = String, Path, description = "Server name")),
    responses((status = 201, description = "Open `authorization_url` in a browser within ten minutes; the redirect to \
        `redirect_uri` completes the authorization", body = AuthorizationStarted), OAuthErrors))]
#[post("/configs/{config}/servers/{server}/oauth/authorize")]
pub async fn authorize(
    req: HttpRequest,
    store: web::Data<Store>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (config, server) = path.into_inner();
    // Unless the server's config names one, the callback is on the address the admin used.
    let default_redirect = {
        let info = req.connection_info();
        format!("{}://{}{CALLBACK_PATH}", info.scheme(), info.host())
    };
    let started = upstream_oauth::start(&store, &config, &server, &default_redirect).await?;
    Ok(HttpResponse::Created().insert_header(header::CacheControl(vec![header::CacheDirective::NoStore])).json(started))
}

#[utoipa::path(get, path = "/api/v1/configs/{config}/servers/{server}/oauth", tag = "servers",
    params(("config" = String, Path, description = "Config id or name"), ("server" = String, Path, description = "Server name")),
    responses((status = 200, description = "The server's OAuth state (tokens are never shown)", body = OAuthStatus), ReadErrors,
        (status = 409, description = "The server does not have OAuth enabled", body = crate::error::ErrorBody)))]
#[get("/configs/{config}/servers/{server}/oauth")]
pub async fn oauth_status(
    store: web::Data<Store>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (config, server) = path.into_inner();
    Ok(HttpResponse::Ok().json(upstream_oauth::status(&store, &config, &server).await?))
}

#[utoipa::path(delete, path = "/api/v1/configs/{config}/servers/{server}/oauth", tag = "servers",
    params(("config" = String, Path, description = "Config id or name"), ("server" = String, Path, description = "Server name")),
    responses((status = 204, description = "Tokens forgotten; data planes stop using them with the next snapshot"), ActionErrors))]
#[delete("/configs/{config}/servers/{server}/oauth")]
pub async fn forget_tokens(
    store: web::Data<Store>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (config, server) = path.into_inner();
    upstream_oauth::forget(&store, &config, &server).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// What the authorization server adds to the redirect URI.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    /// Set instead of `code` when the authorization was refused (RFC 6749 4.1.2.1).
    pub error: Option<String>,
}

/// Where the authorization server sends the admin's browser back. It needs no admin key (a
/// redirect cannot carry one) and skips the browser checks of the admin API (the redirect comes
/// from the authorization server's site): the single-use state, bound to an authorization an admin
/// started and unknown to other sites, is what admits it. It only completes that authorization, and
/// its page runs nothing and cannot be framed.
#[utoipa::path(get, path = "/oauth/callback", tag = "servers", security(()), params(CallbackQuery),
    responses((status = 200, description = "Authorized (an HTML page for browsers)", body = Authorized), CallbackErrors))]
#[get("/oauth/callback")]
pub async fn callback(
    req: HttpRequest,
    store: web::Data<Store>,
    http: web::Data<TokenHttp>,
    query: web::Query<CallbackQuery>,
) -> HttpResponse {
    let result = match (&query.code, &query.state, &query.error) {
        (_, _, Some(error)) => {
            let error: String = error.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
            Err(ApiError::BadRequest(format!("the authorization server refused the authorization ({error})")))
        }
        (Some(code), Some(state), None) => upstream_oauth::complete(&store, &http.0, state, code).await,
        _ => Err(ApiError::BadRequest("the callback needs `code` and `state` from the authorization server".into())),
    };
    let wants_html =
        req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/html"));
    let mut resp = match &result {
        Ok(done) if wants_html => HttpResponse::Ok().content_type("text/html; charset=utf-8").body(page(
            "Authorized",
            &format!(
                "Server <b>{}</b> of config <b>{}</b> is authorized. You can close this window.",
                escape(&done.server),
                escape(&done.config)
            ),
        )),
        Ok(done) => HttpResponse::Ok().json(done),
        Err(e) if wants_html => {
            let status = actix_web::ResponseError::status_code(e);
            HttpResponse::build(status)
                .content_type("text/html; charset=utf-8")
                .body(page("Authorization failed", &escape(&e.to_string())))
        }
        Err(e) => actix_web::ResponseError::error_response(e),
    };
    // The URL carried a code: keep it out of caches and referrers; the page runs nothing.
    let headers = resp.headers_mut();
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("no-referrer"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    resp
}

fn page(title: &str, message: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>mcpgw: {title}</title>\
         <h1>{title}</h1><p>{message}</p></html>"
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(authorize).service(oauth_status).service(forget_tokens);
}
