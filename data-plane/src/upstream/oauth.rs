//! OAuth 2 tokens for upstream servers.
//!
//! Client credentials: tokens are fetched here and cached per (config, server, OAuth settings): a
//! changed secret gets a new token, and every project using the config shares the upstream and its
//! token. Callers that need a token at the same time share one fetch (a per-slot async lock). A
//! token is refreshed once it is within the configured buffer of its expiry.
//!
//! Authorization code: the control plane holds the refresh token and renews the access token; the
//! current one arrives in the snapshot and is installed here on every reload.
//!
//! HTTP upstreams ask for the token on every request ([`AuthorizedHttp`]), so a new token needs no
//! reconnect; stdio upstreams get it in their environment when they start and are restarted, once
//! idle, when it is due or has been replaced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::stream::BoxStream;
use reqwest::header::{HeaderName, HeaderValue};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use shared::oauth::{Grant, OAuthConfig};
use shared::snapshot::IssuedToken;
use shared::token_endpoint::{self, GrantRequest, TokenError};
use uuid::Uuid;

#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuthError {
    #[error(transparent)]
    Endpoint(#[from] TokenError),
    #[error(
        "OAuth authorization has not been completed for this server: an admin must authorize it \
         (POST /api/v1/configs/{{config}}/servers/{{server}}/oauth/authorize)"
    )]
    NotAuthorized,
    #[error(
        "the OAuth access token for this server expired and has not been renewed; check the control plane's OAuth status for the server"
    )]
    Expired,
}

#[derive(Clone)]
pub struct Token {
    pub access_token: Arc<str>,
    /// When to fetch a new one (expiry minus the buffer); `None` when the endpoint gave no expiry
    /// or the control plane renews it.
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

type Issued = HashMap<(Uuid, String), IssuedToken>;

pub struct TokenSource {
    http: reqwest::Client,
    slots: Mutex<HashMap<Slot, Arc<tokio::sync::Mutex<Option<Token>>>>>,
    /// Tokens obtained by the control plane (authorization code), from the current snapshot.
    issued: RwLock<Arc<Issued>>,
}

/// Slots kept before the map is cleared (each holds one token; a change of settings adds one).
const MAX_SLOTS: usize = 10_000;

impl TokenSource {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http, slots: Mutex::new(HashMap::new()), issued: RwLock::new(Arc::default()) }
    }

    /// Installs the tokens of a new snapshot.
    pub fn set_issued(&self, issued: Issued) {
        *self.issued.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(issued);
    }

    fn issued(&self, config_id: Uuid, server: &str) -> Option<IssuedToken> {
        let issued = self.issued.read().unwrap_or_else(|e| e.into_inner()).clone();
        issued.get(&(config_id, server.to_string())).cloned()
    }

    /// Whether a token a stdio server was started with has been replaced by the control plane.
    pub fn is_replaced(&self, config_id: Uuid, server: &str, token: &Token) -> bool {
        self.issued(config_id, server).is_some_and(|t| *t.access_token != *token.access_token)
    }

    /// A token that is not due for refresh, fetching one when needed.
    pub async fn token(&self, config_id: Uuid, server: &str, oauth: &OAuthConfig) -> Result<Token, OAuthError> {
        if let Grant::AuthorizationCode { .. } = oauth.grant {
            let issued = self.issued(config_id, server).ok_or(OAuthError::NotAuthorized)?;
            if issued.expires_at.is_some_and(|at| at <= Utc::now()) {
                return Err(OAuthError::Expired);
            }
            return Ok(Token { access_token: issued.access_token.as_str().into(), refresh_at: None });
        }
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
        let started = Instant::now();
        let answer = token_endpoint::request(&self.http, oauth, GrantRequest::ClientCredentials).await?;
        let refresh_at = answer.expires_in.map(|secs| {
            // Refresh `buffer` early, but never spend more than half a short token's life waiting.
            let buffer = oauth.expiry_buffer_secs.min(secs / 2);
            started + Duration::from_secs(secs - buffer)
        });
        let token = Token { access_token: answer.access_token.into(), refresh_at };
        *cached = Some(token.clone());
        Ok(token)
    }
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
    fn tokens_without_expiry_are_never_due() {
        let t = Token { access_token: "t".into(), refresh_at: None };
        assert!(!t.is_due());
        let t = Token { access_token: "t".into(), refresh_at: Some(Instant::now()) };
        assert!(t.is_due());
    }
}
