//! What a web browser may send to the admin API. Any web page can make the admin's browser send
//! requests here, and some of them (form posts, `no-cors` fetches) arrive without a CORS preflight,
//! so every request a page of another origin could have started is refused, before authentication
//! and whatever its method:
//! - one the browser marks as coming from another site (`Sec-Fetch-Site: cross-site` or
//!   `same-site`), unless its `Origin` is allowed, and one carrying an `Origin` that is not allowed:
//!   `403`. Reads are refused too: a response can leak to the page in ways CORS does not foresee
//!   (script and style includes, frames, timing), and no admin workflow needs them;
//! - a changing request (POST, PUT, PATCH, DELETE) with a body that is not `application/json`, the
//!   one type a page of another origin cannot send without a preflight: `415`.
//!
//! Requests without browser headers (curl, the CLI, scripts) pass. No CORS headers are ever sent, so
//! the allowed origins are the addresses the control plane itself is reached under (its own, a
//! reverse proxy's), not other web applications. This module must not look at credentials: that is
//! [`crate::auth`].

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, ResponseError, web};
use shared::settings::ENV_ADMIN_ALLOWED_ORIGINS;

use crate::error::ApiError;

/// The setting's word for the control plane's own origin.
pub const OWN_ORIGIN: &str = "self";

/// `MCPGW_ADMIN_ALLOWED_ORIGINS`: the origins browser requests may come from.
#[derive(Debug, Clone)]
pub struct AllowedOrigins {
    /// The origin the request was addressed to: what the browser reports as `same-origin`, or
    /// (browsers without fetch metadata) `http://` and the request's `Host`.
    own: bool,
    listed: Vec<url::Origin>,
}

impl Default for AllowedOrigins {
    fn default() -> Self {
        Self { own: true, listed: vec![] }
    }
}

impl AllowedOrigins {
    /// From a comma-separated list of `self` and origins (`https://admin.example.com`, a port when
    /// it is not the scheme's default); empty allows no browser origin at all.
    pub fn parse(value: &str) -> anyhow::Result<Self> {
        let mut allowed = Self { own: false, listed: vec![] };
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry.eq_ignore_ascii_case(OWN_ORIGIN) {
                allowed.own = true;
                continue;
            }
            let origin = parse_origin(entry).ok_or_else(|| {
                anyhow::anyhow!(
                    "{ENV_ADMIN_ALLOWED_ORIGINS}: `{entry}` is not an origin (`{OWN_ORIGIN}` or scheme://host[:port], \
                     http or https, without a path)"
                )
            })?;
            allowed.listed.push(origin);
        }
        Ok(allowed)
    }

    /// Whether a request with these headers may have come from an allowed page, or from no page.
    fn admits(&self, origin: Option<&str>, fetch_site: Option<&str>, host: Option<&str>) -> bool {
        let other_site =
            fetch_site.is_some_and(|s| s.eq_ignore_ascii_case("cross-site") || s.eq_ignore_ascii_case("same-site"));
        let Some(origin) = origin else { return !other_site };
        // `null` (sandboxed frames, local files, some redirects) and anything unreadable: no.
        let Some(origin) = parse_origin(origin) else { return false };
        if self.listed.contains(&origin) {
            return true;
        }
        self.own
            && !other_site
            && (fetch_site.is_some_and(|s| s.eq_ignore_ascii_case("same-origin"))
                || host.and_then(|h| parse_origin(&format!("http://{h}"))) == Some(origin))
    }
}

/// A serialised origin, normalised (case, default port); `None` unless it is exactly one.
fn parse_origin(s: &str) -> Option<url::Origin> {
    let url = url::Url::parse(s).ok()?;
    let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
    let plain = url.username().is_empty() && url.password().is_none();
    let origin = url.origin();
    (matches!(url.scheme(), "http" | "https") && bare && plain && origin.is_tuple()).then_some(origin)
}

fn changes_state(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

/// A body, or a declared type (a form sends one even when empty), that is not JSON.
fn has_other_body(req: &ServiceRequest) -> bool {
    let headers = req.headers();
    let declared = headers.contains_key(header::CONTENT_TYPE);
    let sized = headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.to_str().ok().and_then(|n| n.trim().parse::<u64>().ok()) != Some(0));
    let streamed = headers.contains_key(header::TRANSFER_ENCODING);
    if !(declared || sized || streamed) {
        return false;
    }
    let json = matches!(req.mime_type(), Ok(Some(m))
        if m.type_() == actix_web::mime::APPLICATION && m.subtype() == actix_web::mime::JSON && m.suffix().is_none());
    !json
}

/// Middleware refusing what a page of another origin could have sent (see the module comment).
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let refusal = {
        let headers = req.headers();
        let text = |name: header::HeaderName| headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}"));
        let (origin, fetch_site) = (text(header::ORIGIN), text(header::HeaderName::from_static("sec-fetch-site")));
        let admitted = match req.app_data::<web::Data<AllowedOrigins>>() {
            Some(allowed) => allowed.admits(origin, fetch_site, text(header::HOST)),
            None => AllowedOrigins::default().admits(origin, fetch_site, text(header::HOST)),
        };
        if !admitted {
            tracing::warn!(
                method = %req.method(),
                origin = origin.map(printable).unwrap_or_default(),
                sec_fetch_site = fetch_site.map(printable).unwrap_or_default(),
                "refused a request from another web site"
            );
            Some(ApiError::Forbidden(format!(
                "this request comes from a web page of another site (Origin, Sec-Fetch-Site), and the admin API \
                 takes browser requests only from its own origin or those in {ENV_ADMIN_ALLOWED_ORIGINS}"
            )))
        } else if changes_state(req.method()) && has_other_body(&req) {
            Some(ApiError::UnsupportedMediaType)
        } else {
            None
        }
    };
    match refusal {
        Some(e) => Ok(req.into_response(e.error_response())),
        None => Ok(next.call(req).await?.map_into_boxed_body()),
    }
}

/// A header value fit for a log line: visible ASCII, bounded.
fn printable(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_graphic()).take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    const HOST: Option<&str> = Some("127.0.0.1:8001");

    #[test]
    fn own_origin_by_fetch_metadata_or_host() {
        let own = AllowedOrigins::default();
        // No browser headers: curl, the CLI.
        assert!(own.admits(None, None, HOST));
        // Typed into the address bar, or a same-origin page (no Origin on same-origin GETs).
        assert!(own.admits(None, Some("none"), HOST));
        assert!(own.admits(None, Some("same-origin"), HOST));
        // Origin naming the host the request went to, with or without fetch metadata, in any case.
        assert!(own.admits(Some("http://127.0.0.1:8001"), None, HOST));
        assert!(own.admits(Some("HTTP://127.0.0.1:8001"), Some("same-origin"), HOST));
        assert!(own.admits(Some("http://admin.example"), None, Some("admin.example:80")));
        // Behind a TLS proxy the browser's origin is https://<public name>; the browser vouches.
        assert!(own.admits(Some("https://admin.example"), Some("same-origin"), Some("10.0.0.5:8001")));
        assert!(!own.admits(Some("https://admin.example"), None, Some("10.0.0.5:8001")));
    }

    #[test]
    fn other_sites_are_refused() {
        let own = AllowedOrigins::default();
        for (origin, site) in [
            (Some("http://evil.example"), None),
            (Some("http://evil.example"), Some("cross-site")),
            (Some("http://127.0.0.1:9999"), Some("same-site")),
            (Some("http://127.0.0.1:9999"), None),
            (Some("https://127.0.0.1:8001"), None),
            (Some("null"), None),
            (Some("null"), Some("same-origin")),
            (Some("http://127.0.0.1:8001/path"), None),
            (Some("\u{0}"), None),
            // No Origin, but the browser says another site started it (includes, frames, links).
            (None, Some("cross-site")),
            (None, Some("same-site")),
            // A browser saying another site started it is believed over a matching Host.
            (Some("http://127.0.0.1:8001"), Some("cross-site")),
        ] {
            assert!(!own.admits(origin, site, HOST), "{origin:?} {site:?}");
        }
    }

    #[test]
    fn the_list_replaces_the_default() {
        let proxy = AllowedOrigins::parse("https://Admin.Example:443, http://localhost:3000").unwrap();
        assert!(proxy.admits(Some("https://admin.example"), Some("cross-site"), HOST));
        assert!(proxy.admits(Some("http://localhost:3000"), None, HOST));
        assert!(!proxy.admits(Some("http://127.0.0.1:8001"), Some("same-origin"), HOST), "self is not listed");
        assert!(proxy.admits(None, None, HOST));
        let both = AllowedOrigins::parse("self,https://admin.example").unwrap();
        assert!(both.admits(Some("http://127.0.0.1:8001"), None, HOST));
        let none = AllowedOrigins::parse("").unwrap();
        assert!(!none.admits(Some("http://127.0.0.1:8001"), Some("same-origin"), HOST));
        assert!(none.admits(None, None, HOST));
        for bad in ["null", "*", "admin.example", "ftp://admin.example", "https://admin.example/x", "https://u@h"] {
            let e = AllowedOrigins::parse(bad).unwrap_err().to_string();
            assert!(e.contains("MCPGW_ADMIN_ALLOWED_ORIGINS") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn bodies_must_be_declared_json() {
        let with = |ct: Option<&str>, len: Option<&str>| {
            let mut r = TestRequest::post();
            if let Some(ct) = ct {
                r = r.insert_header((header::CONTENT_TYPE, ct));
            }
            if let Some(len) = len {
                r = r.insert_header((header::CONTENT_LENGTH, len));
            }
            has_other_body(&r.to_srv_request())
        };
        assert!(!with(None, None), "no body (curl -X POST, the CLI's actions)");
        assert!(!with(None, Some("0")));
        assert!(!with(Some("application/json"), Some("2")));
        assert!(!with(Some("Application/JSON; charset=utf-8"), Some("2")));
        assert!(with(None, Some("2")), "a body without a type");
        for ct in ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data"]
        {
            assert!(with(Some(ct), Some("2")), "{ct}");
            assert!(with(Some(ct), Some("0")), "{ct}: an empty form is still a form");
        }
        assert!(with(Some("application/merge-patch+json"), Some("2")));
        assert!(with(Some("application/jsonx"), Some("2")));
        let unreadable = TestRequest::post()
            .insert_header((header::CONTENT_TYPE, header::HeaderValue::from_bytes(b"application/json\xff").unwrap()))
            .to_srv_request();
        assert!(has_other_body(&unreadable));
        assert!(changes_state(&Method::DELETE) && !changes_state(&Method::GET) && !changes_state(&Method::OPTIONS));
    }
}
