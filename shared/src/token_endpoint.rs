//! Requests to an upstream's OAuth token endpoint (RFC 6749 section 3.2), shared by the data plane
//! (client credentials) and the control plane (authorization code and refresh token).
//!
//! Network errors and 5xx are retried with backoff; a refusal (4xx) is final. Only the endpoint's
//! error code is kept from a refusal: descriptions may echo what was sent.

use std::time::Duration;

use base64::Engine;

use crate::oauth::OAuthConfig;

/// How long one token request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per request (network errors and 5xx only).
const ATTEMPTS: u32 = 3;

/// What is exchanged for a token.
pub enum GrantRequest<'a> {
    ClientCredentials,
    AuthorizationCode { code: &'a str, redirect_uri: &'a str, code_verifier: &'a str },
    RefreshToken { refresh_token: &'a str },
}

/// A successful token answer.
#[derive(Clone)]
pub struct TokenAnswer {
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// Seconds the access token lives, when the endpoint says.
    pub expires_in: Option<u64>,
    pub scope: Option<String>,
}

impl std::fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAnswer").field("expires_in", &self.expires_in).field("scope", &self.scope).finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the OAuth token endpoint refused the request (HTTP {status}, {code})")]
    Refused { status: u16, code: String },
    #[error("the OAuth token endpoint could not be reached: {0}")]
    Unreachable(String),
    #[error("the OAuth token endpoint answered without a usable bearer token")]
    BadAnswer,
}

impl TokenError {
    /// The grant (code or refresh token) is no longer valid: only a new authorization helps.
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, TokenError::Refused { code, .. } if code == "invalid_grant")
    }
}

/// Asks the token endpoint of `oauth` for a token, retrying what may pass on a second try.
pub async fn request(
    http: &reqwest::Client,
    oauth: &OAuthConfig,
    grant: GrantRequest<'_>,
) -> Result<TokenAnswer, TokenError> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match request_once(http, oauth, &grant).await {
            Err(TokenError::Unreachable(reason)) if attempt < ATTEMPTS => {
                tracing::warn!(attempt, %reason, "OAuth token request failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn request_once(
    http: &reqwest::Client,
    oauth: &OAuthConfig,
    grant: &GrantRequest<'_>,
) -> Result<TokenAnswer, TokenError> {
    let mut form: Vec<(&str, &str)> = Vec::new();
    match grant {
        GrantRequest::ClientCredentials => {
            form.push(("grant_type", "client_credentials"));
            for (name, value) in [("scope", &oauth.scope), ("audience", &oauth.audience)] {
                if let Some(v) = value {
                    form.push((name, v));
                }
            }
        }
        GrantRequest::AuthorizationCode { code, redirect_uri, code_verifier } => {
            form.extend([
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", code_verifier),
            ]);
        }
        GrantRequest::RefreshToken { refresh_token } => {
            form.extend([("grant_type", "refresh_token"), ("refresh_token", refresh_token)]);
        }
    }
    if let Some(resource) = &oauth.resource {
        form.push(("resource", resource));
    }
    form.extend(oauth.additional_params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut req = http.post(&oauth.token_url).timeout(REQUEST_TIMEOUT).header("Accept", "application/json");
    match &oauth.client_secret {
        Some(secret) if oauth.use_basic_auth => {
            // RFC 6749 2.3.1: both parts form-encoded before Basic.
            let pair = format!("{}:{}", form_encode(&oauth.client_id), form_encode(secret));
            let basic = base64::engine::general_purpose::STANDARD.encode(pair);
            req = req.header("Authorization", format!("Basic {basic}"));
        }
        secret => {
            // A public client (no secret) identifies itself in the body.
            form.push(("client_id", &oauth.client_id));
            if let Some(secret) = secret {
                form.push(("client_secret", secret));
            }
        }
    }
    for (name, value) in &oauth.custom_headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let resp = req.form(&form).send().await.map_err(|e| TokenError::Unreachable(e.without_url().to_string()))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if status.is_server_error() {
        return Err(TokenError::Unreachable(format!("HTTP {status}")));
    }
    if !status.is_success() {
        let code = body["error"].as_str().unwrap_or("no error code").chars().take(64).collect();
        return Err(TokenError::Refused { status: status.as_u16(), code });
    }
    let access_token = body["access_token"].as_str().filter(|t| !t.is_empty()).ok_or(TokenError::BadAnswer)?;
    let token_type = body["token_type"].as_str().unwrap_or("Bearer");
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::BadAnswer);
    }
    let text = |name: &str| body[name].as_str().filter(|s| !s.is_empty()).map(str::to_string);
    Ok(TokenAnswer {
        access_token: access_token.to_string(),
        refresh_token: text("refresh_token"),
        // Some endpoints send the number as a string.
        expires_in: body["expires_in"].as_u64().or_else(|| body["expires_in"].as_str().and_then(|s| s.parse().ok())),
        scope: text("scope"),
    })
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => (b as char).to_string(),
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_form_encoded_before_basic() {
        assert_eq!(form_encode("a b:c/d"), "a+b%3Ac%2Fd");
        assert_eq!(form_encode("plain-ID_1.x"), "plain-ID_1.x");
    }

    #[test]
    fn only_invalid_grant_calls_for_a_new_authorization() {
        assert!(TokenError::Refused { status: 400, code: "invalid_grant".into() }.is_invalid_grant());
        assert!(!TokenError::Refused { status: 401, code: "invalid_client".into() }.is_invalid_grant());
        assert!(!TokenError::Unreachable("x".into()).is_invalid_grant());
    }
}
