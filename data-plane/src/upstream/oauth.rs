//! OAuth 2 client-credentials tokens for upstream servers.
//!
//! Tokens are cached per (config, server, OAuth settings): a changed secret gets a new token, and
//! every project using the config shares the upstream and its token. Callers that need a token at
//! the same time share one fetch (a per-slot async lock). A token is refreshed once it is within
//! the configured buffer of its expiry; fetches retry with backoff on network errors and 5xx, and
//! fail at once when the endpoint refuses the client. HTTP upstreams ask for the token on every
//! request ([`AuthorizedHttp`]), so a refresh needs no reconnect; stdio upstreams get it in their
//! environment when they start and are restarted, once idle, when it is due.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::stream::BoxStream;
use reqwest::header::{HeaderName, HeaderValue};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use shared::oauth::OAuthConfig;
use uuid::Uuid;

/// How long one token request may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per fetch (network errors and 5xx only).
const ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuthError {
    #[error("the OAuth token endpoint refused the client ({0})")]
    Refused(String),
    #[error("the OAuth token endpoint could not be reached: {0}")]
    Unreachable(String),
    #[error("the OAuth token endpoint answered without a usable bearer token")]
    BadAnswer,
}

#[derive(Clone)]
pub struct Token {
    pub access_token: Arc<str>,
    /// When to fetch a new one (expiry minus the buffer); `None` when the endpoint gave no expiry.
    pub refresh_at: Option<Instant>,
}

impl Token {
    pub fn is_due(&self) -> bool {
        self.refresh_at.is_some_and(|t| Instant::now() >= t)
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Slot {
    config_id: Uuid,
    server: String,
    oauth: OAuthConfig,
}

pub struct TokenSource {
    http: reqwest::Client,
    slots: Mutex<HashMap<Slot, Arc<tokio::sync::Mutex<Option<Token>>>>>,
}

/// Slots kept before the map is cleared (each holds one token; a change of settings adds one).
const MAX_SLOTS: usize = 10_000;

impl TokenSource {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http, slots: Mutex::new(HashMap::new()) }
    }

    /// A token that is not due for refresh, fetching one when needed.
    pub async fn token(&self, config_id: Uuid, server: &str, oauth: &OAuthConfig) -> Result<Token, OAuthError> {
        let key = Slot { config_id, server: server.to_string(), oauth: oauth.clone() };
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            if slots.len() >= MAX_SLOTS && !slots.contains_key(&key) {
                slots.clear();
            }
            slots.entry(key).or_default().clone()
        };
        let mut cached = slot.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| !t.is_due()) {
            return Ok(token.clone());
        }
        let token = self.fetch(oauth).await?;
        *cached = Some(token.clone());
        Ok(token)
    }

    async fn fetch(&self, oauth: &OAuthConfig) -> Result<Token, OAuthError> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            match self.fetch_once(oauth).await {
                Err(OAuthError::Unreachable(reason)) if attempt < ATTEMPTS => {
                    tracing::warn!(attempt, %reason, "OAuth token fetch failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn fetch_once(&self, oauth: &OAuthConfig) -> Result<Token, OAuthError> {
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        for (name, value) in [("scope", &oauth.scope), ("audience", &oauth.audience), ("resource", &oauth.resource)] {
            if let Some(v) = value {
                form.push((name, v));
            }
        }
        form.extend(oauth.additional_params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut req = self.http.post(&oauth.token_url).timeout(FETCH_TIMEOUT).header("Accept", "application/json");
        if oauth.use_basic_auth {
            // RFC 6749 2.3.1: both parts form-encoded before Basic.
            let enc = |s: &str| form_encode(s);
            let pair = format!("{}:{}", enc(&oauth.client_id), enc(oauth.client_secret.as_deref().unwrap_or("")));
            let basic = base64::engine::general_purpose::STANDARD.encode(pair);
            req = req.header("Authorization", format!("Basic {basic}"));
        } else {
            form.push(("client_id", &oauth.client_id));
            if let Some(secret) = &oauth.client_secret {
                form.push(("client_secret", secret));
            }
        }
        for (name, value) in &oauth.custom_headers {
            req = req.header(name.as_str(), value.as_str());
        }
        let started = Instant::now();
        let resp = req.form(&form).send().await.map_err(|e| OAuthError::Unreachable(e.without_url().to_string()))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        if status.is_server_error() {
            return Err(OAuthError::Unreachable(format!("HTTP {status}")));
        }
        if !status.is_success() {
            // The endpoint's error code (invalid_client, ...) only: descriptions may echo input.
            let code = body["error"].as_str().unwrap_or("no error code");
            return Err(OAuthError::Refused(format!("HTTP {}, {code}", status.as_u16())));
        }
        let access_token = body["access_token"].as_str().filter(|t| !t.is_empty()).ok_or(OAuthError::BadAnswer)?;
        let token_type = body["token_type"].as_str().unwrap_or("Bearer");
        if !token_type.eq_ignore_ascii_case("bearer") {
            return Err(OAuthError::BadAnswer);
        }
        let refresh_at = body["expires_in"].as_u64().map(|secs| {
            // Refresh `buffer` early, but never spend more than half a short token's life waiting.
            let buffer = oauth.expiry_buffer_secs.min(secs / 2);
            started + Duration::from_secs(secs - buffer)
        });
        Ok(Token { access_token: access_token.into(), refresh_at })
    }
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => (b as char).to_string(),
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The reqwest client of an HTTP upstream that asks the [`TokenSource`] for the bearer token on
/// every request, so a refreshed token is used without reconnecting.
#[derive(Clone)]
pub struct AuthorizedHttp {
    pub inner: reqwest::Client,
    pub tokens: Arc<TokenSource>,
    pub config_id: Uuid,
    pub server: String,
    pub oauth: OAuthConfig,
}

type HttpError = StreamableHttpError<reqwest::Error>;

impl AuthorizedHttp {
    async fn bearer(&self) -> Result<Option<String>, HttpError> {
        let token = self.tokens.token(self.config_id, &self.server, &self.oauth).await.map_err(|e| {
            StreamableHttpError::UnexpectedServerResponse(std::borrow::Cow::Owned(format!("upstream OAuth: {e}")))
        })?;
        Ok(Some(token.access_token.to_string()))
    }
}

impl StreamableHttpClient for AuthorizedHttp {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, HttpError> {
        let auth = self.bearer().await?;
        self.inner.post_message(uri, message, session_id, auth, custom_headers).await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, HttpError> {
        let auth = self.bearer().await?;
        self.inner.post_message_with_response_limits(uri, message, session_id, auth, custom_headers, limits).await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), HttpError> {
        let auth = self.bearer().await?;
        self.inner.delete_session(uri, session_id, auth, custom_headers).await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<sse_stream::Sse, SseError>>, HttpError> {
        let auth = self.bearer().await?;
        self.inner.get_stream(uri, session_id, last_event_id, auth, custom_headers).await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<sse_stream::Sse, SseError>>, HttpError> {
        let auth = self.bearer().await?;
        self.inner
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
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
    fn tokens_without_expiry_are_never_due() {
        let t = Token { access_token: "t".into(), refresh_at: None };
        assert!(!t.is_due());
        let t = Token { access_token: "t".into(), refresh_at: Some(Instant::now()) };
        assert!(t.is_due());
    }
}
