//! Admin authentication: which requests carry the admin key.
//!
//! Accepts `Authorization: Bearer <key>` and the Python gateway's `apikey: <key>` header everywhere.
//! HTTP Basic with the key as password is accepted only to read the Swagger UI's pages and the
//! OpenAPI document, so that a browser can open `/docs`: a browser replays Basic credentials on every
//! request to the origin, whichever page starts it, so the API itself never takes them (Swagger UI
//! sends the key it is given under Authorize as a Bearer token). The argon2 check of a presented key runs
//! once; afterwards the key's SHA-256 fingerprint is compared in constant time. Wrong keys presented
//! before any right one pay argon2, one at a time, so a flood cannot take every core.

use std::sync::Mutex;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::HeaderMap;
use actix_web::middleware::Next;
use actix_web::{ResponseError, web};
use base64::Engine;
use shared::api_key;

use crate::error::ApiError;

/// The installation's admin key, as far as this process knows it.
pub struct AdminKey {
    state: Mutex<KeyState>,
    /// Serialises argon2 checks of unverified keys.
    slow_path: tokio::sync::Mutex<()>,
}

struct KeyState {
    hash: String,
    /// Fingerprint of the key once it has been verified (or was known in plaintext).
    verified: Option<[u8; 32]>,
}

impl AdminKey {
    /// From the stored hash and, when this process knows it (environment or just generated), the key.
    pub fn new(hash: String, known_key: Option<&str>) -> Self {
        let verified = known_key.map(api_key::fingerprint);
        Self { state: Mutex::new(KeyState { hash, verified }), slow_path: tokio::sync::Mutex::new(()) }
    }

    /// Replaces the key (after a rotation has been committed).
    pub fn replace(&self, hash: String, key: &str) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *st = KeyState { hash, verified: Some(api_key::fingerprint(key)) };
    }

    /// Takes the hash stored now (another instance of the same database may have rotated the key):
    /// a changed hash forgets the verified key, so the old key stops working here too.
    pub fn follow_stored(&self, hash: String) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.hash != hash {
            *st = KeyState { hash, verified: None };
        }
    }

    /// Whether `presented` is the admin key.
    pub async fn check(&self, presented: &str) -> bool {
        let fp = api_key::fingerprint(presented);
        let hash = {
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = &st.verified {
                return api_key::fingerprints_equal(v, &fp);
            }
            st.hash.clone()
        };
        let _one_at_a_time = self.slow_path.lock().await;
        // Another request may have verified the key while we waited.
        if let Some(v) = &self.state.lock().unwrap_or_else(|p| p.into_inner()).verified {
            return api_key::fingerprints_equal(v, &fp);
        }
        let key = presented.to_string();
        let ok = tokio::task::spawn_blocking(move || api_key::verify(&key, &hash)).await.unwrap_or(false);
        if ok {
            self.state.lock().unwrap_or_else(|p| p.into_inner()).verified = Some(fp);
        }
        ok
    }
}

/// Whether a request reads the Swagger UI or the OpenAPI document, where HTTP Basic is accepted.
pub fn reads_docs(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && (path == "/docs" || path.starts_with("/docs/") || path == "/openapi.json")
}

/// The key a request presents, from any of the accepted places (HTTP Basic only if `basic`).
pub fn presented_key(headers: &HeaderMap, basic: bool) -> Option<String> {
    if let Some(v) = headers.get("apikey").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_string());
    }
    let auth = headers.get(actix_web::http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = auth.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_string());
    }
    if basic && scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_user, password) = text.split_once(':')?;
        return Some(password.to_string());
    }
    None
}

/// Middleware guarding every route it wraps.
pub async fn require_admin(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let admin = req.app_data::<web::Data<AdminKey>>().cloned();
    let docs = reads_docs(req.method(), req.path());
    let allowed = match (admin, presented_key(req.headers(), docs)) {
        (Some(admin), Some(key)) if !key.is_empty() => admin.check(&key).await,
        _ => false,
    };
    if !allowed {
        let refusal = if docs { ApiError::DocsUnauthorized } else { ApiError::Unauthorized };
        return Ok(req.into_response(refusal.error_response()));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HeaderName::from_static(name), HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn key_is_found_in_every_accepted_place() {
        for docs in [false, true] {
            assert_eq!(presented_key(&headers("authorization", "Bearer k1"), docs).as_deref(), Some("k1"));
            assert_eq!(presented_key(&headers("authorization", "bearer  k1 "), docs).as_deref(), Some("k1"));
            assert_eq!(presented_key(&headers("apikey", "k2"), docs).as_deref(), Some("k2"));
            assert_eq!(presented_key(&headers("authorization", "Digest x"), docs), None);
            assert_eq!(presented_key(&HeaderMap::new(), docs), None);
        }
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("admin:k3"));
        assert_eq!(presented_key(&headers("authorization", &basic), true).as_deref(), Some("k3"));
        assert_eq!(presented_key(&headers("authorization", &basic), false), None);
    }

    #[test]
    fn basic_is_for_reading_the_docs_only() {
        for path in ["/docs", "/docs/", "/docs/swagger-ui.css", "/openapi.json"] {
            assert!(reads_docs(&Method::GET, path), "{path}");
            assert!(reads_docs(&Method::HEAD, path), "{path}");
            assert!(!reads_docs(&Method::POST, path), "{path}");
        }
        for path in ["/api/v1/users", "/docsx", "/api/v1/docs/", "/openapi.json/x"] {
            assert!(!reads_docs(&Method::GET, path), "{path}");
        }
    }

    #[tokio::test]
    async fn verifies_once_then_compares_fingerprints() {
        let key = api_key::generate_admin_key();
        let admin = AdminKey::new(api_key::hash(&key).unwrap(), None);
        assert!(!admin.check("wrong").await);
        assert!(admin.check(&key).await);
        assert!(admin.state.lock().unwrap().verified.is_some());
        assert!(admin.check(&key).await);
        assert!(!admin.check("wrong").await);
        let new = api_key::generate_admin_key();
        admin.replace(api_key::hash(&new).unwrap(), &new);
        assert!(!admin.check(&key).await);
        assert!(admin.check(&new).await);
    }
}
