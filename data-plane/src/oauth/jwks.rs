//! An issuer's signing keys: its metadata discovered once (RFC 8414, or OpenID Connect Discovery),
//! its JWKS fetched at start, on a schedule and when a token names a key not seen yet, never more
//! often than `MIN_REFETCH` and never on a request's path otherwise.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::token::VerifyingKey;

/// Unknown `kid`s cause at most one fetch per issuer this often (a stream of forged kids cannot
/// turn into a stream of requests to the identity provider).
const MIN_REFETCH: Duration = Duration::from_secs(5);
/// Keys are fetched again this often, so keys the issuer withdraws stop being accepted.
pub(super) const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// Largest metadata or JWKS document read.
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

#[derive(Default)]
struct Keys {
    jwks_uri: Option<String>,
    /// The issuer's RFC 7662 endpoint, when its metadata names one.
    introspection: Option<String>,
    keys: Vec<Arc<VerifyingKey>>,
}

pub struct Issuer {
    pub url: String,
    http: reqwest::Client,
    keys: RwLock<Arc<Keys>>,
    last_fetch: Mutex<Option<Instant>>,
    /// One fetch at a time; requests that wanted one wait for it and read its result.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("no metadata for issuer {0} (tried RFC 8414 and OpenID Connect discovery)")]
    NoMetadata(String),
    #[error("the JWKS at {0} has no usable signing key")]
    NoKeys(String),
}

impl Issuer {
    pub fn new(url: String, http: reqwest::Client) -> Self {
        Issuer {
            url,
            http,
            keys: RwLock::default(),
            last_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    pub(super) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn current(&self) -> Arc<Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keys that may verify a token with `kid` (all keys when the token names none).
    fn matching(&self, kid: Option<&str>) -> Vec<Arc<VerifyingKey>> {
        let keys = self.current();
        keys.keys.iter().filter(|k| kid.is_none() || k.kid.as_deref() == kid).cloned().collect()
    }

    /// The keys for `kid`; an unknown one is looked for in a fresh JWKS, at most every `MIN_REFETCH`.
    pub async fn keys_for(&self, kid: Option<&str>) -> Vec<Arc<VerifyingKey>> {
        let found = self.matching(kid);
        if !found.is_empty() {
            return found;
        }
        let before = *self.last_fetch.lock().unwrap_or_else(|e| e.into_inner());
        let _one = self.fetching.lock().await;
        let last = *self.last_fetch.lock().unwrap_or_else(|e| e.into_inner());
        // Someone else fetched while this request waited: use that result.
        let fresh = last != before;
        if !fresh
            && last.is_none_or(|t| t.elapsed() >= MIN_REFETCH)
            && let Err(e) = self.fetch_locked().await
        {
            tracing::warn!(issuer = %self.url, error = %e, "cannot fetch the issuer's keys");
        }
        self.matching(kid)
    }

    /// Fetches the keys now (at start and on the schedule).
    pub async fn refresh(&self) -> Result<usize, FetchError> {
        let _one = self.fetching.lock().await;
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> Result<usize, FetchError> {
        *self.last_fetch.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let current = self.current();
        let (jwks_uri, introspection) = match &current.jwks_uri {
            Some(uri) => (uri.clone(), current.introspection.clone()),
            None => self.discover().await?,
        };
        let document = self.get_json(&jwks_uri).await?;
        let keys: Vec<Arc<VerifyingKey>> = document
            .get("keys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(super::token::verifying_key)
            .map(Arc::new)
            .collect();
        if keys.is_empty() {
            return Err(FetchError::NoKeys(jwks_uri));
        }
        let count = keys.len();
        let keys = Keys { jwks_uri: Some(jwks_uri), introspection, keys };
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        tracing::info!(issuer = %self.url, keys = count, "fetched the issuer's signing keys");
        Ok(count)
    }

    /// The issuer's introspection endpoint, once its metadata is known (looked for as for an
    /// unknown key).
    pub async fn introspection_endpoint(&self) -> Option<String> {
        if self.current().jwks_uri.is_none() {
            self.keys_for(None).await;
        }
        self.current().introspection.clone()
    }

    /// The `jwks_uri` and `introspection_endpoint` from the issuer's metadata, whose `issuer` must be
    /// exactly the configured one.
    async fn discover(&self) -> Result<(String, Option<String>), FetchError> {
        let mut last = FetchError::NoMetadata(self.url.clone());
        for url in metadata_urls(&self.url) {
            match self.get_json(&url).await {
                Ok(doc) => {
                    if doc.get("issuer").and_then(Value::as_str) != Some(self.url.as_str()) {
                        last = FetchError::Http { url, reason: "its `issuer` is not the configured issuer".into() };
                        continue;
                    }
                    match doc.get("jwks_uri").and_then(Value::as_str) {
                        Some(uri) => {
                            let introspection = doc.get("introspection_endpoint").and_then(Value::as_str);
                            return Ok((uri.to_owned(), introspection.map(str::to_owned)));
                        }
                        None => last = FetchError::Http { url, reason: "no `jwks_uri`".into() },
                    }
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn get_json(&self, url: &str) -> Result<Value, FetchError> {
        let fail = |reason: String| FetchError::Http { url: url.to_owned(), reason };
        let response = self.http.get(url).send().await.map_err(|e| fail(e.to_string()))?;
        if !response.status().is_success() {
            return Err(fail(format!("HTTP {}", response.status())));
        }
        if response.content_length().is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64) {
            return Err(fail("document too large".into()));
        }
        let body = response.bytes().await.map_err(|e| fail(e.to_string()))?;
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(fail("document too large".into()));
        }
        serde_json::from_slice(&body).map_err(|e| fail(format!("not JSON: {e}")))
    }
}

/// Where an issuer's metadata may be: RFC 8414's path-inserted form, then OpenID Connect's
/// appended form, then its path-inserted variant.
fn metadata_urls(issuer: &str) -> Vec<String> {
    let Ok(url) = reqwest::Url::parse(issuer) else { return Vec::new() };
    let origin = url.origin().ascii_serialization();
    let path = url.path().trim_end_matches('/');
    vec![
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/')),
        format!("{origin}/.well-known/openid-configuration{path}"),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn metadata_locations() {
        assert_eq!(
            super::metadata_urls("https://login.example.com/tenant/v2.0"),
            [
                "https://login.example.com/.well-known/oauth-authorization-server/tenant/v2.0",
                "https://login.example.com/tenant/v2.0/.well-known/openid-configuration",
                "https://login.example.com/.well-known/openid-configuration/tenant/v2.0",
            ]
        );
        assert_eq!(
            super::metadata_urls("https://idp.example/")[0],
            "https://idp.example/.well-known/oauth-authorization-server"
        );
    }
}
