//! Opaque access tokens, asked about at the issuer's introspection endpoint (RFC 7662) with the
//! gateway's own client credentials. Answers are cached under the token's SHA-256 (never the token)
//! until the token expires, at most `MAX_CACHED`; tokens the issuer calls inactive for
//! `INACTIVE_CACHED`, so a client retrying a dead token does not turn into requests to the issuer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::jwks::Issuer;
use super::token::TokenError;

/// An active token is asked about again after this long even if it lives longer (a revocation
/// counts within it).
const MAX_CACHED: Duration = Duration::from_secs(300);
const INACTIVE_CACHED: Duration = Duration::from_secs(30);
const MAX_ENTRIES: usize = 100_000;
/// Introspection requests in flight at once.
const CONCURRENCY: usize = 16;
const LEEWAY_SECS: i64 = 30;

struct Cached {
    until: Instant,
    answer: Result<Arc<Map<String, Value>>, TokenError>,
}

pub struct Introspector {
    client_id: String,
    client_secret: String,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    in_flight: Semaphore,
}

impl Introspector {
    pub fn new(client_id: String, client_secret: String) -> Self {
        Introspector { client_id, client_secret, cache: Mutex::default(), in_flight: Semaphore::new(CONCURRENCY) }
    }

    /// The claims of `token` if `issuer` says it is active and meant for one of `audiences`.
    pub async fn check(
        &self,
        issuer: &Issuer,
        token: &str,
        audiences: &[String],
    ) -> Result<Arc<Map<String, Value>>, TokenError> {
        let mut hasher = Sha256::new();
        hasher.update(issuer.url.as_bytes());
        hasher.update([0]);
        hasher.update(token.as_bytes());
        let fingerprint: [u8; 32] = hasher.finalize().into();
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.get(&fingerprint).filter(|c| c.until > Instant::now()).map(|c| c.answer.clone())
        };
        let answer = match cached {
            Some(answer) => answer,
            None => {
                let endpoint = issuer.introspection_endpoint().await.ok_or(TokenError::KeysUnavailable)?;
                let (answer, lifetime) = self.ask(issuer, &endpoint, token).await?;
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= MAX_ENTRIES {
                    cache.clear();
                }
                cache.insert(fingerprint, Cached { until: Instant::now() + lifetime, answer: answer.clone() });
                answer
            }
        };
        let claims = answer?;
        // Checked on every use: a cached answer for another endpoint's resource stays refused there.
        if !audience_matches(&claims, audiences) {
            return Err(TokenError::WrongAudience);
        }
        Ok(claims)
    }

    /// One introspection request: the verdict and how long it may be kept. A failure to reach the
    /// issuer is not kept.
    async fn ask(
        &self,
        issuer: &Issuer,
        endpoint: &str,
        token: &str,
    ) -> Result<(Result<Arc<Map<String, Value>>, TokenError>, Duration), TokenError> {
        let _permit = self.in_flight.acquire().await.map_err(|_| TokenError::KeysUnavailable)?;
        let response = issuer
            .http()
            .post(endpoint)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(issuer = %issuer.url, error = %e, "token introspection failed");
                TokenError::KeysUnavailable
            })?;
        if !response.status().is_success() {
            tracing::warn!(issuer = %issuer.url, status = %response.status(), "token introspection refused");
            return Err(TokenError::KeysUnavailable);
        }
        let body: Map<String, Value> = response.json().await.map_err(|_| TokenError::KeysUnavailable)?;
        Ok(match validate(body, &issuer.url) {
            Ok((claims, expires_in)) => (Ok(Arc::new(claims)), expires_in.min(MAX_CACHED)),
            Err(e) => (Err(e), INACTIVE_CACHED),
        })
    }
}

/// Checks an introspection answer: active, an unexpired bearer token of `issuer` with a subject.
/// Returns the claims and how long the token still lives.
fn validate(body: Map<String, Value>, issuer: &str) -> Result<(Map<String, Value>, Duration), TokenError> {
    if body.get("active") != Some(&Value::Bool(true)) {
        return Err(TokenError::Inactive);
    }
    if body.get("iss").is_some_and(|i| i.as_str() != Some(issuer)) {
        return Err(TokenError::UnknownIssuer);
    }
    // A sender-constrained token (DPoP, mTLS) would need a proof this gateway does not check.
    let bearer = body.get("token_type").and_then(Value::as_str).is_none_or(|t| t.eq_ignore_ascii_case("bearer"));
    if !bearer || body.contains_key("cnf") {
        return Err(TokenError::Inactive);
    }
    let now = chrono::Utc::now().timestamp();
    let exp = body.get("exp").and_then(Value::as_i64).ok_or(TokenError::MissingClaim("exp"))?;
    if exp + LEEWAY_SECS <= now {
        return Err(TokenError::Expired);
    }
    if body.get("nbf").and_then(Value::as_i64).is_some_and(|nbf| nbf - LEEWAY_SECS > now) {
        return Err(TokenError::NotYetValid);
    }
    if body.get("sub").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(TokenError::MissingClaim("sub"));
    }
    let lives = Duration::from_secs(u64::try_from(exp - now).unwrap_or(0).max(1));
    Ok((body, lives))
}

fn audience_matches(claims: &Map<String, Value>, audiences: &[String]) -> bool {
    match claims.get("aud") {
        Some(Value::String(aud)) => audiences.contains(aud),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(|a| audiences.iter().any(|x| x == a)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn introspection_answers_are_checked() {
        let now = chrono::Utc::now().timestamp();
        let good = json!({"active": true, "iss": "https://idp", "sub": "u", "exp": now + 100, "aud": "https://gw/mcp", "token_type": "Bearer"});
        let (claims, lives) = validate(answer(good.clone()), "https://idp").unwrap();
        assert!(lives <= Duration::from_secs(100) && lives >= Duration::from_secs(90));
        assert!(audience_matches(&claims, &["https://gw/mcp".into()]));
        assert!(!audience_matches(&claims, &["https://gw/mcp/other".into()]));
        let with = |k: &str, v: Value| {
            let mut a = answer(good.clone());
            a.insert(k.into(), v);
            validate(a, "https://idp").map(|_| ())
        };
        assert_eq!(with("active", json!(false)), Err(TokenError::Inactive));
        assert_eq!(with("active", json!("true")), Err(TokenError::Inactive));
        assert_eq!(with("iss", json!("https://evil")), Err(TokenError::UnknownIssuer));
        assert_eq!(with("exp", json!(now - 100)), Err(TokenError::Expired));
        assert_eq!(with("exp", json!("soon")), Err(TokenError::MissingClaim("exp")));
        assert_eq!(with("nbf", json!(now + 600)), Err(TokenError::NotYetValid));
        assert_eq!(with("sub", json!("")), Err(TokenError::MissingClaim("sub")));
        assert_eq!(with("token_type", json!("refresh_token")), Err(TokenError::Inactive));
        assert_eq!(with("cnf", json!({"jkt": "x"})), Err(TokenError::Inactive));
        assert_eq!(validate(answer(json!({"active": false})), "https://idp").map(|_| ()), Err(TokenError::Inactive));
    }
}
