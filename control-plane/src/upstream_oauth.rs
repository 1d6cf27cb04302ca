//! The authorization code grant for upstream servers (OAuth 2.1: PKCE with S256, state against CSRF).
//!
//! An admin starts it through the admin API, which answers with the authorization URL to open in a
//! browser. The authorization server sends the browser back to [`CALLBACK_PATH`] with a code and
//! the state; the state (kept only as a hash, single use, valid ten minutes) finds the pending
//! authorization and its PKCE verifier, and the code is exchanged for tokens. Tokens are stored
//! encrypted. The access token reaches data planes in the snapshot; the refresh token never leaves
//! the control plane, which renews the access token before it expires ([`spawn_refresher`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use shared::ServerSpec;
use shared::oauth::{Grant, OAuthConfig};
use shared::snapshot::IssuedToken;
use shared::token_endpoint::{self, GrantRequest, TokenAnswer, TokenError};
use sqlx::AnyConnection;
use utoipa::ToSchema;

use crate::api::configs;
use crate::error::ApiError;
use crate::secrets::SecretBox;
use crate::store::{Store, now, opt_time, time};

/// Purposes the sealed values are bound to.
pub const ACCESS_TOKEN: &str = "oauth-access-token";
const REFRESH_TOKEN: &str = "oauth-refresh-token";
const VERIFIER: &str = "oauth-pkce-verifier";
/// Where the authorization server sends the browser back (on the admin API's address).
pub const CALLBACK_PATH: &str = "/oauth/callback";
/// How long an admin has to complete an authorization in the browser.
const AUTHORIZATION_TTL: chrono::Duration = chrono::Duration::minutes(10);
/// Wait before retrying a renewal that failed for a reason that may pass.
const RETRY_AFTER: chrono::Duration = chrono::Duration::seconds(30);
/// Longest the renewal task sleeps without looking again.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// An authorization waiting for the admin's browser.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthorizationStarted {
    /// Open this in a browser and sign in; the authorization server then sends the browser back
    /// to `redirect_uri`, which completes the authorization.
    pub authorization_url: String,
    /// Must be registered with the authorization server for this client.
    pub redirect_uri: String,
    /// The authorization must be completed before this time.
    pub expires_at: DateTime<Utc>,
}

/// What the callback completed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Authorized {
    pub config: String,
    pub server: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub scope: Option<String>,
    /// Whether the authorization server gave a refresh token (without one, the authorization must
    /// be repeated when the access token expires).
    pub renewable: bool,
}

/// A server's OAuth state; tokens are never shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthStatus {
    pub config: String,
    pub server: String,
    /// `client_credentials` (the data plane fetches tokens itself) or `authorization_code`.
    pub grant: String,
    /// Whether an access token is held (authorization code grant).
    pub authorized: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub scope: Option<String>,
    /// Whether the control plane can renew the access token.
    pub renewable: bool,
    pub obtained_at: Option<DateTime<Utc>>,
    pub refreshed_at: Option<DateTime<Utc>>,
    /// Why the last renewal failed; cleared by the next success.
    pub last_error: Option<String>,
    /// An admin must (re)authorize: no token, or it expired and cannot be renewed.
    pub needs_authorization: bool,
}

/// A server with OAuth enabled, read from its config.
struct Target {
    config_id: String,
    config_name: String,
    server: String,
    oauth: OAuthConfig,
}

impl Target {
    async fn load(
        conn: &mut AnyConnection,
        secrets: &SecretBox,
        config: &str,
        server: &str,
    ) -> Result<Target, ApiError> {
        let config = configs::load(conn, secrets, config).await?;
        let spec =
            config.servers.iter().find(|s| s.server_name == server).ok_or_else(|| {
                ApiError::NotFound(format!("config `{}` has no server named `{server}`", config.name))
            })?;
        let oauth = match spec.oauth_config.as_ref().map(OAuthConfig::from_map) {
            Some(Ok(Some(oauth))) => oauth,
            Some(Err(errs)) => {
                let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
                return Err(ApiError::Invalid(all.join("; ")));
            }
            None | Some(Ok(None)) => {
                return Err(ApiError::Conflict(format!("server `{server}` does not have OAuth enabled")));
            }
        };
        Ok(Target { config_id: config.id.to_string(), config_name: config.name, server: server.to_string(), oauth })
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7636: BASE64URL(SHA256(verifier)).
fn code_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn state_hash(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

/// Starts an authorization; `default_redirect` is the callback on the address the admin used.
pub async fn start(
    store: &Store,
    config: &str,
    server: &str,
    default_redirect: &str,
) -> Result<AuthorizationStarted, ApiError> {
    let mut w = store.begin_write().await?;
    let target = Target::load(&mut w.tx, &store.secrets, config, server).await?;
    let Grant::AuthorizationCode { authorization_url, redirect_uri } = &target.oauth.grant else {
        return Err(ApiError::Conflict(format!(
            "server `{server}` uses the client_credentials grant: the data plane fetches its tokens itself, \
             there is nothing to authorize"
        )));
    };
    let redirect_uri = redirect_uri.clone().unwrap_or_else(|| default_redirect.to_string());
    let (state, verifier) = (random_token(), random_token());
    let mut url = reqwest::Url::parse(authorization_url)
        .map_err(|e| ApiError::invalid("oauth_config.OAUTH_AUTHORIZATION_URL", e))?;
    {
        let oauth = &target.oauth;
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &oauth.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("state", &state)
            .append_pair("code_challenge", &code_challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        for (name, value) in [("scope", &oauth.scope), ("audience", &oauth.audience), ("resource", &oauth.resource)] {
            if let Some(v) = value {
                query.append_pair(name, v);
            }
        }
        for (name, value) in &oauth.additional_params {
            query.append_pair(name, value);
        }
    }
    let expires_at = Utc::now() + AUTHORIZATION_TTL;
    sqlx::query("DELETE FROM oauth_authorizations WHERE expires_at < $1").bind(now()).execute(&mut *w.tx).await?;
    sqlx::query(
        "INSERT INTO oauth_authorizations (state_hash, config_id, server, verifier, redirect_uri, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(state_hash(&state))
    .bind(&target.config_id)
    .bind(&target.server)
    .bind(store.secrets.seal(VERIFIER, verifier.as_bytes()))
    .bind(&redirect_uri)
    .bind(now())
    .bind(crate::store::format_time(expires_at))
    .execute(&mut *w.tx)
    .await?;
    w.commit_unpublished().await?;
    tracing::info!(config = %target.config_name, server = %target.server, "OAuth authorization started");
    Ok(AuthorizationStarted { authorization_url: url.into(), redirect_uri, expires_at })
}

/// Completes the authorization that `state` names by exchanging `code` for tokens.
pub async fn complete(store: &Store, http: &reqwest::Client, state: &str, code: &str) -> Result<Authorized, ApiError> {
    // The state is consumed first: it is single use even when the exchange fails.
    let mut w = store.begin_write().await?;
    let pending: Option<(String, String, String, String, String)> = sqlx::query_as(
        "DELETE FROM oauth_authorizations WHERE state_hash = $1 \
         RETURNING config_id, server, verifier, redirect_uri, expires_at",
    )
    .bind(state_hash(state))
    .fetch_optional(&mut *w.tx)
    .await?;
    w.commit_unpublished().await?;
    let Some((config_id, server, verifier, redirect_uri, expires_at)) = pending else {
        return Err(ApiError::BadRequest(
            "this authorization is unknown or was already used; start it again from the admin API".into(),
        ));
    };
    if time(&expires_at) < Utc::now() {
        return Err(ApiError::BadRequest(
            "this authorization expired (it must be completed within ten minutes); start it again".into(),
        ));
    }
    let verifier = store.secrets.open_string(VERIFIER, &verifier)?;
    let target = Target::load(&mut *store.conn().await?, &store.secrets, &config_id, &server).await?;
    let grant = GrantRequest::AuthorizationCode { code, redirect_uri: &redirect_uri, code_verifier: &verifier };
    let answer = token_endpoint::request(http, &target.oauth, grant).await.map_err(endpoint_error)?;
    let obtained = Utc::now();
    let expires_at = answer.expires_in.map(|s| obtained + chrono::Duration::seconds(s.min(i64::MAX as u64) as i64));
    let mut w = store.begin_write().await?;
    sqlx::query(
        "INSERT INTO oauth_tokens (config_id, server, access_token, refresh_token, expires_at, scope, obtained_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (config_id, server) DO UPDATE SET access_token = excluded.access_token, \
         refresh_token = excluded.refresh_token, expires_at = excluded.expires_at, scope = excluded.scope, \
         obtained_at = excluded.obtained_at, refreshed_at = NULL, last_error = NULL",
    )
    .bind(&target.config_id)
    .bind(&target.server)
    .bind(store.secrets.seal(ACCESS_TOKEN, answer.access_token.as_bytes()))
    .bind(answer.refresh_token.as_ref().map(|t| store.secrets.seal(REFRESH_TOKEN, t.as_bytes())))
    .bind(expires_at.map(crate::store::format_time))
    .bind(&answer.scope)
    .bind(crate::store::format_time(obtained))
    .execute(&mut *w.tx)
    .await?;
    w.commit_by(crate::store::actor::OAUTH_CALLBACK, "oauth_authorize", "mcp_config", &target.config_id).await?;
    tracing::info!(config = %target.config_name, server = %target.server, "OAuth authorization completed");
    Ok(Authorized {
        config: target.config_name,
        server: target.server,
        expires_at,
        scope: answer.scope,
        renewable: answer.refresh_token.is_some(),
    })
}

fn endpoint_error(e: TokenError) -> ApiError {
    ApiError::BadGateway(format!("the authorization server's token endpoint: {e}; start the authorization again"))
}

/// The OAuth state of one server.
pub async fn status(store: &Store, config: &str, server: &str) -> Result<OAuthStatus, ApiError> {
    let mut conn = store.conn().await?;
    let target = Target::load(&mut conn, &store.secrets, config, server).await?;
    let row: Option<TokenRow> = sqlx::query_as(
        "SELECT CASE WHEN refresh_token IS NULL THEN 0 ELSE 1 END, expires_at, scope, obtained_at, refreshed_at, last_error \
         FROM oauth_tokens WHERE config_id = $1 AND server = $2",
    )
    .bind(&target.config_id)
    .bind(&target.server)
    .fetch_optional(&mut *conn)
    .await?;
    let by_code = matches!(target.oauth.grant, Grant::AuthorizationCode { .. });
    let mut status = OAuthStatus {
        config: target.config_name,
        server: target.server,
        grant: if by_code { "authorization_code" } else { "client_credentials" }.into(),
        authorized: row.is_some(),
        expires_at: None,
        scope: None,
        renewable: false,
        obtained_at: None,
        refreshed_at: None,
        last_error: None,
        needs_authorization: by_code && row.is_none(),
    };
    if let Some((renewable, expires_at, scope, obtained_at, refreshed_at, last_error)) = row {
        let renewable = renewable != 0;
        status.expires_at = opt_time(&expires_at);
        status.needs_authorization = !renewable && status.expires_at.is_some_and(|t| t <= Utc::now());
        (status.renewable, status.scope, status.last_error) = (renewable, scope, last_error);
        (status.obtained_at, status.refreshed_at) = (Some(time(&obtained_at)), opt_time(&refreshed_at));
    }
    Ok(status)
}

type TokenRow = (i64, Option<String>, Option<String>, String, Option<String>, Option<String>);

/// Forgets a server's tokens (data planes stop using them with the next snapshot).
pub async fn forget(store: &Store, config: &str, server: &str) -> Result<(), ApiError> {
    let mut w = store.begin_write().await?;
    let target = Target::load(&mut w.tx, &store.secrets, config, server).await?;
    let removed = sqlx::query("DELETE FROM oauth_tokens WHERE config_id = $1 AND server = $2")
        .bind(&target.config_id)
        .bind(&target.server)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
    if removed == 0 {
        return Err(ApiError::NotFound(format!("server `{server}` holds no OAuth tokens")));
    }
    w.commit("oauth_forget", "mcp_config", &target.config_id).await?;
    Ok(())
}

/// Whether tokens obtained under `old` settings are still meant for `new` (same authorization
/// server and client); otherwise they are dropped when the server is replaced.
pub fn same_authority(old: &ServerSpec, new: &ServerSpec) -> bool {
    let parse = |s: &ServerSpec| s.oauth_config.as_ref().and_then(|m| OAuthConfig::from_map(m).ok().flatten());
    match (parse(old), parse(new)) {
        (Some(a), Some(b)) => a.grant == b.grant && a.client_id == b.client_id && a.token_url == b.token_url,
        _ => false,
    }
}

/// The access tokens every published snapshot carries, by config id.
pub async fn issued_tokens(
    conn: &mut AnyConnection,
    secrets: &SecretBox,
) -> anyhow::Result<HashMap<String, Vec<IssuedToken>>> {
    let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT config_id, server, access_token, expires_at FROM oauth_tokens ORDER BY config_id, server",
    )
    .fetch_all(conn)
    .await?;
    let mut by_config: HashMap<String, Vec<IssuedToken>> = HashMap::new();
    for (config_id, server, access_token, expires_at) in rows {
        let access_token = secrets.open_string(ACCESS_TOKEN, &access_token)?;
        by_config.entry(config_id).or_default().push(IssuedToken {
            server,
            access_token,
            expires_at: opt_time(&expires_at),
        });
    }
    Ok(by_config)
}

/// The HTTP client for token endpoints: no redirects (a token endpoint has no business sending
/// credentials elsewhere).
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?)
}

/// Names the renewal for [`Store::lead`]: one instance of a shared database renews at a time.
const RENEWAL_LEADER: i64 = 0x6d63_7067_7702;
/// How often an instance that does not renew looks whether the one that does is still there.
const FOLLOWER_RETRY: Duration = Duration::from_secs(5);

/// Renews access tokens before they expire, for as long as the control plane runs.
pub fn spawn_refresher(store: Arc<Store>, http: reqwest::Client) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut changes = store.subscribe();
        let mut retry_at: HashMap<(String, String), DateTime<Utc>> = HashMap::new();
        let mut leadership = None;
        loop {
            changes.mark_unchanged();
            if !store.lead(&mut leadership, RENEWAL_LEADER).await {
                tokio::time::sleep(FOLLOWER_RETRY).await;
                continue;
            }
            let wait = match renew_due(&store, &http, &mut retry_at).await {
                Ok(wait) => wait,
                Err(e) => {
                    tracing::error!(error = %e, "OAuth token renewal failed; will retry");
                    RETRY_AFTER.to_std().unwrap_or(MAX_SLEEP)
                }
            };
            // A change (new authorization, new settings) may bring a sooner deadline.
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                changed = changes.changed() => if changed.is_err() { return },
            }
        }
    })
}

/// Renews every token that is due; returns how long until the next one is.
async fn renew_due(
    store: &Store,
    http: &reqwest::Client,
    retry_at: &mut HashMap<(String, String), DateTime<Utc>>,
) -> Result<Duration, ApiError> {
    let rows: Vec<(String, String, String, String, String)> = sqlx::query_as(
        "SELECT config_id, server, refresh_token, expires_at, COALESCE(refreshed_at, obtained_at) FROM oauth_tokens \
         WHERE refresh_token IS NOT NULL AND expires_at IS NOT NULL",
    )
    .fetch_all(&mut *store.conn().await?)
    .await?;
    let mut next = MAX_SLEEP;
    let now = Utc::now();
    for (config_id, server, refresh_token, expires_at, issued_at) in rows {
        let key = (config_id.clone(), server.clone());
        let target = match Target::load(&mut *store.conn().await?, &store.secrets, &config_id, &server).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(%server, error = %e, "cannot renew the OAuth token of a server whose settings are unusable");
                continue;
            }
        };
        let (expires_at, issued_at) = (time(&expires_at), time(&issued_at));
        // Renew `buffer` early, but never before half of a short token's life.
        let life = (expires_at - issued_at).max(chrono::Duration::zero());
        let buffer = chrono::Duration::seconds(target.oauth.expiry_buffer_secs as i64).min(life / 2);
        let due = (expires_at - buffer).max(retry_at.get(&key).copied().unwrap_or(now));
        if due > now {
            next = next.min((due - now).to_std().unwrap_or_default());
            continue;
        }
        let refresh_token = store.secrets.open_string(REFRESH_TOKEN, &refresh_token)?;
        let grant = GrantRequest::RefreshToken { refresh_token: &refresh_token };
        match token_endpoint::request(http, &target.oauth, grant).await {
            Ok(answer) => {
                retry_at.remove(&key);
                save_renewed(store, &target, &answer).await?;
                tracing::info!(config = %target.config_name, server = %target.server, "OAuth access token renewed");
            }
            Err(e) => {
                let invalid = e.is_invalid_grant();
                let message = if invalid {
                    format!("{e}: the refresh token is no longer accepted; an admin must authorize again")
                } else {
                    format!("{e}; retrying")
                };
                tracing::warn!(config = %target.config_name, server = %target.server, error = %message, "OAuth token renewal failed");
                let mut w = store.begin_write().await?;
                sqlx::query(
                    "UPDATE oauth_tokens SET last_error = $1, \
                     refresh_token = CASE WHEN $2 THEN NULL ELSE refresh_token END \
                     WHERE config_id = $3 AND server = $4",
                )
                .bind(&message)
                .bind(invalid)
                .bind(&config_id)
                .bind(&server)
                .execute(&mut *w.tx)
                .await?;
                w.commit_unpublished().await?;
                if !invalid {
                    retry_at.insert(key, Utc::now() + RETRY_AFTER);
                    next = next.min(RETRY_AFTER.to_std().unwrap_or(MAX_SLEEP));
                }
            }
        }
    }
    Ok(next)
}

async fn save_renewed(store: &Store, target: &Target, answer: &TokenAnswer) -> Result<(), ApiError> {
    let renewed = Utc::now();
    let expires_at = answer.expires_in.map(|s| renewed + chrono::Duration::seconds(s.min(i64::MAX as u64) as i64));
    let mut w = store.begin_write().await?;
    // A rotated refresh token replaces the old one; otherwise the old one stays valid.
    sqlx::query(
        "UPDATE oauth_tokens SET access_token = $1, refresh_token = COALESCE($2, refresh_token), expires_at = $3, \
         scope = COALESCE($4, scope), refreshed_at = $5, last_error = NULL WHERE config_id = $6 AND server = $7",
    )
    .bind(store.secrets.seal(ACCESS_TOKEN, answer.access_token.as_bytes()))
    .bind(answer.refresh_token.as_ref().map(|t| store.secrets.seal(REFRESH_TOKEN, t.as_bytes())))
    .bind(expires_at.map(crate::store::format_time))
    .bind(&answer.scope)
    .bind(crate::store::format_time(renewed))
    .bind(&target.config_id)
    .bind(&target.server)
    .execute(&mut *w.tx)
    .await?;
    w.commit_by(crate::store::actor::CONTROL_PLANE, "oauth_renew", "mcp_config", &target.config_id).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_unpadded_base64url_of_sha256() {
        // Expected value computed independently:
        // printf %s VERIFIER | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d =
        let verifier = "dBjftJeZ4CVP-mJ92IgP5eD_-5tL3V6OKJf5ZBsEjXk";
        assert_eq!(code_challenge(verifier), "g1fcHphu_1hYEMAL7hi_XsZRflOa-BTd2GJv_WrWFco");
    }

    #[test]
    fn states_and_verifiers_are_long_and_unique() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        // 43 characters: within RFC 7636's 43-128 for verifiers, 256 bits for states.
        assert_eq!(a.len(), 43);
        assert_ne!(state_hash(&a), a);
    }
}
