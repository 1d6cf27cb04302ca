//! MCP authorization for clients: the gateway as an OAuth 2.1 protected resource.
//!
//! Clients that follow the MCP authorization specification find the authorization servers in the
//! protected resource metadata (RFC 9728) the gateway serves, sign the user in there, and send the
//! access token as `Authorization: Bearer`. The gateway checks the token locally (a JWT signed by a
//! key of a configured issuer, for this resource), maps the user claim to an mcpgw user by e-mail
//! and admits the user to a project they are a member of. API keys keep working beside it.

mod introspect;
mod jwks;
mod metadata;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::Value;

use crate::auth::{AuthError, Principal, key_from_headers};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::state::Gateway;
use token::TokenError;

pub(crate) use metadata::routes;

/// The OAuth settings in force (`MCPGW_OAUTH_*`, `MCPGW_PUBLIC_URL`).
pub(crate) struct OAuth {
    /// The gateway's canonical external URL, without a trailing slash.
    public_url: String,
    issuers: Vec<Arc<jwks::Issuer>>,
    /// Configured audiences; empty: the resource URLs the gateway derives from `public_url`.
    audiences: Vec<String>,
    user_claim: String,
    groups_claim: String,
    scopes: Vec<String>,
    /// Opaque tokens are introspected with these client credentials, when configured.
    introspector: Option<introspect::Introspector>,
}

/// Why a bearer token does not admit its holder.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// `401` with `error="invalid_token"`.
    #[error(transparent)]
    InvalidToken(#[from] TokenError),
    /// `403` with `error="insufficient_scope"`.
    #[error("the access token lacks the scope this gateway requires ({0})")]
    InsufficientScope(String),
    /// `403`: a valid token for someone mcpgw does not admit (here).
    #[error("{0}")]
    Forbidden(String),
    /// `401` with `error="invalid_token"`: an API key that does not admit its holder.
    #[error(transparent)]
    InvalidKey(AuthError),
}

impl Refusal {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::InvalidToken(_) => "oauth_invalid_token",
            Refusal::InsufficientScope(_) => "oauth_insufficient_scope",
            Refusal::Forbidden(_) => "oauth_not_member",
            Refusal::InvalidKey(e) => e.reason(),
        }
    }
}

/// The MCP endpoint a request is for: `/mcp` (and `/mcp/`), or `/mcp/<project>` (and with `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// The project segment as sent (percent-encoded): what resource URLs are made of.
    raw_project: Option<String>,
    /// The project's name, decoded.
    pub(crate) project: Option<String>,
}

impl Endpoint {
    pub fn of(path: &str) -> Option<Endpoint> {
        let rest = path.strip_prefix("/mcp")?;
        if rest.is_empty() || rest == "/" {
            return Some(Endpoint { raw_project: None, project: None });
        }
        let segment = rest.strip_prefix('/')?;
        let segment = segment.strip_suffix('/').unwrap_or(segment);
        if segment.is_empty() || segment.contains('/') {
            return None;
        }
        let project = percent_decode(segment)?;
        Some(Endpoint { raw_project: Some(segment.to_owned()), project: Some(project) })
    }

    /// The endpoint's path: `/mcp` or `/mcp/<project>`.
    fn path(&self) -> String {
        match &self.raw_project {
            Some(p) => format!("/mcp/{p}"),
            None => "/mcp".into(),
        }
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `url` may be used without TLS: only on the loopback interface (tests, local trials).
fn loopback(url: &reqwest::Url) -> bool {
    match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// An `https://` URL (or `http://` on loopback) without query or fragment.
fn check_url(name: &str, value: &str) -> anyhow::Result<()> {
    let url = reqwest::Url::parse(value).map_err(|e| anyhow::anyhow!("{name}: `{value}` {e}"))?;
    anyhow::ensure!(
        url.scheme() == "https" || (url.scheme() == "http" && loopback(&url)),
        "{name} must be an https:// URL (http:// only on loopback), got `{value}`"
    );
    anyhow::ensure!(
        url.query().is_none() && url.fragment().is_none() && url.username().is_empty(),
        "{name} must have no query, fragment or user info (got `{value}`)"
    );
    Ok(())
}

/// Checks the OAuth settings (called from `Config::validate`).
pub(crate) fn validate(config: &Config) -> anyhow::Result<()> {
    let issuers: Vec<&String> = config.oauth_issuers.iter().filter(|i| !i.trim().is_empty()).collect();
    if issuers.is_empty() {
        anyhow::ensure!(
            config.oauth_audiences.iter().all(|a| a.trim().is_empty())
                && config.oauth_scopes().is_empty()
                && config.oauth_client_id.is_none(),
            "MCPGW_OAUTH_AUDIENCE, MCPGW_OAUTH_SCOPES or MCPGW_OAUTH_CLIENT_ID is set but MCPGW_OAUTH_ISSUER is not"
        );
        return Ok(());
    }
    let public = config.public_url.as_deref().filter(|u| !u.trim().is_empty()).ok_or_else(|| {
        anyhow::anyhow!("MCPGW_PUBLIC_URL must be set with MCPGW_OAUTH_ISSUER: clients need the gateway's external URL")
    })?;
    check_url("MCPGW_PUBLIC_URL", public)?;
    for issuer in issuers {
        check_url("MCPGW_OAUTH_ISSUER", issuer)?;
    }
    anyhow::ensure!(!config.oauth_user_claim.trim().is_empty(), "MCPGW_OAUTH_USER_CLAIM must not be empty");
    anyhow::ensure!(
        config.oauth_client_id.is_some() == config.oauth_client_secret.is_some(),
        "MCPGW_OAUTH_CLIENT_ID and MCPGW_OAUTH_CLIENT_SECRET must be set together (token introspection)"
    );
    for scope in &config.oauth_scopes() {
        anyhow::ensure!(
            !scope.is_empty() && scope.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'),
            "MCPGW_OAUTH_SCOPES: `{scope}` is not a valid scope"
        );
    }
    Ok(())
}

impl OAuth {
    /// The OAuth settings, or `None` when no issuer is configured (API keys only).
    pub fn from_config(config: &Config) -> anyhow::Result<Option<OAuth>> {
        let issuers: Vec<String> =
            config.oauth_issuers.iter().map(|i| i.trim().to_owned()).filter(|i| !i.is_empty()).collect();
        if issuers.is_empty() {
            return Ok(None);
        }
        validate(config)?;
        // The identity provider is reached over HTTPS with rustls and ring, as upstreams are.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            // Key material comes only from the URLs the issuer's metadata names.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the HTTP client for the identity provider")?;
        let public_url = config.public_url.as_deref().unwrap_or_default().trim().trim_end_matches('/').to_owned();
        Ok(Some(OAuth {
            public_url,
            issuers: issuers.into_iter().map(|url| Arc::new(jwks::Issuer::new(url, http.clone()))).collect(),
            audiences: config.oauth_audiences.iter().map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()).collect(),
            user_claim: config.oauth_user_claim.trim().to_owned(),
            groups_claim: config.oauth_groups_claim.trim().to_owned(),
            scopes: config.oauth_scopes(),
            introspector: match (&config.oauth_client_id, &config.oauth_client_secret) {
                (Some(id), Some(secret)) => Some(introspect::Introspector::new(id.clone(), secret.clone())),
                _ => None,
            },
        }))
    }

    /// Fetches every issuer's keys now, then again every few minutes.
    pub(crate) async fn keep_keys_fresh(self: Arc<Self>) {
        loop {
            for issuer in &self.issuers {
                if let Err(e) = issuer.refresh().await {
                    tracing::warn!(issuer = %issuer.url, error = %e, "cannot fetch the issuer's keys; retrying when a token needs them");
                }
            }
            tokio::time::sleep(jwks::REFRESH_EVERY).await;
        }
    }

    /// The resource identifier of an endpoint (RFC 8707): the URL clients reach it at.
    fn resource(&self, endpoint: &Endpoint) -> String {
        format!("{}{}", self.public_url, endpoint.path())
    }

    fn metadata_url(&self, endpoint: &Endpoint) -> String {
        format!("{}/.well-known/oauth-protected-resource{}", self.public_url, endpoint.path())
    }

    /// Audiences a token for `endpoint` may carry: the configured ones, or else the endpoint's
    /// resource, the gateway's `/mcp` resource and its public URL.
    fn audiences(&self, endpoint: &Endpoint) -> Vec<String> {
        if !self.audiences.is_empty() {
            return self.audiences.clone();
        }
        let mut out = vec![self.public_url.clone(), format!("{}/mcp", self.public_url)];
        if endpoint.raw_project.is_some() {
            out.push(self.resource(endpoint));
        }
        out
    }

    /// The `WWW-Authenticate` value for a refusal on `endpoint` (RFC 6750, RFC 9728).
    pub(crate) fn challenge(&self, endpoint: &Endpoint, refusal: Option<&Refusal>) -> HeaderValue {
        let mut parts = Vec::new();
        match refusal {
            Some(Refusal::InvalidToken(_)) | Some(Refusal::InvalidKey(_)) => {
                parts.push("error=\"invalid_token\"".to_owned());
                parts.push(format!("error_description=\"{}\"", refusal.map(|r| r.to_string()).unwrap_or_default()));
            }
            Some(Refusal::InsufficientScope(_)) => parts.push("error=\"insufficient_scope\"".to_owned()),
            Some(Refusal::Forbidden(_)) | None => {}
        }
        if !self.scopes.is_empty() {
            parts.push(format!("scope=\"{}\"", self.scopes.join(" ")));
        }
        parts.push(format!("resource_metadata=\"{}\"", self.metadata_url(endpoint)));
        let value = format!("Bearer {}", parts.join(", "));
        // Every part is built from validated settings and fixed messages.
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
    }

    /// The protected resource metadata of `endpoint`.
    fn metadata(&self, endpoint: &Endpoint) -> Value {
        let mut doc = serde_json::json!({
            "resource": self.resource(endpoint),
            "authorization_servers": self.issuers.iter().map(|i| i.url.clone()).collect::<Vec<_>>(),
            "bearer_methods_supported": ["header"],
            "resource_name": "mcpgw",
        });
        if !self.scopes.is_empty() {
            doc["scopes_supported"] = serde_json::json!(self.scopes);
        }
        doc
    }

    /// Checks `token` and resolves its holder to a principal for `endpoint` in `catalog`.
    pub(crate) async fn authenticate(
        &self,
        catalog: &Arc<Catalog>,
        token: &str,
        endpoint: &Endpoint,
    ) -> Result<Principal, Refusal> {
        let header = token::peek(token)?;
        let issuer = self.issuers.iter().find(|i| i.url == header.issuer).ok_or(TokenError::UnknownIssuer)?;
        let keys = issuer.keys_for(header.kid.as_deref()).await;
        if keys.is_empty() {
            return Err(if header.kid.is_some() { TokenError::UnknownKey } else { TokenError::KeysUnavailable }.into());
        }
        let audiences = self.audiences(endpoint);
        let mut outcome = Err(TokenError::UnknownKey);
        for key in keys.iter().filter(|k| k.algorithms.contains(&header.alg)).take(8) {
            outcome = token::verify(token, &header, key, &issuer.url, &audiences);
            if !matches!(outcome, Err(TokenError::BadSignature)) {
                break;
            }
        }
        if outcome == Err(TokenError::UnknownKey) {
            // Keys with this kid exist but none allows the token's algorithm.
            outcome = Err(TokenError::BadAlgorithm);
        }
        let claims = outcome?;
        self.admit(catalog, &issuer.url, &claims, endpoint)
    }

    /// Whether opaque tokens are introspected (client credentials configured).
    pub(crate) fn introspects(&self) -> bool {
        self.introspector.is_some()
    }

    /// Checks an opaque `token` at the issuers' introspection endpoints, in order, and resolves its
    /// holder as for a JWT.
    pub(crate) async fn authenticate_opaque(
        &self,
        catalog: &Arc<Catalog>,
        token: &str,
        endpoint: &Endpoint,
    ) -> Result<Principal, Refusal> {
        let introspector = self.introspector.as_ref().ok_or(TokenError::Malformed)?;
        if token.len() > 4096 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Malformed.into());
        }
        let audiences = self.audiences(endpoint);
        let mut refusal = TokenError::Inactive;
        for issuer in &self.issuers {
            match introspector.check(issuer, token, &audiences).await {
                Ok(claims) => return self.admit(catalog, &issuer.url, &claims, endpoint),
                Err(e) => refusal = e,
            }
        }
        Err(refusal.into())
    }

    /// The principal for verified `claims`: required scopes, the user by e-mail, the project.
    fn admit(
        &self,
        catalog: &Arc<Catalog>,
        issuer: &str,
        claims: &serde_json::Map<String, Value>,
        endpoint: &Endpoint,
    ) -> Result<Principal, Refusal> {
        let missing = missing_scopes(&self.scopes, &token::scopes(claims));
        if !missing.is_empty() {
            return Err(Refusal::InsufficientScope(missing.join(" ")));
        }
        let subject = claims.get("sub").and_then(Value::as_str).unwrap_or_default();
        let email = claims.get(&self.user_claim).and_then(Value::as_str).filter(|e| !e.is_empty());
        let user = email.and_then(|e| catalog.user_by_email(e));
        let groups: Vec<&str> = match claims.get(&self.groups_claim) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(one)) => vec![one.as_str()],
            _ => Vec::new(),
        };
        // The projects this token reaches: the user's memberships, then those admitting a group.
        let mut reachable: Vec<(&Arc<crate::catalog::ProjectRecord>, Option<&str>)> =
            user.into_iter().flat_map(|u| catalog.projects_of(u)).map(|p| (p, None)).collect();
        for group in &groups {
            for project in catalog.projects_admitting(group) {
                if !reachable.iter().any(|(p, _)| p.id == project.id) {
                    reachable.push((project, Some(group)));
                }
            }
        }
        let who = match (email, user) {
            (Some(email), _) => email.to_owned(),
            (None, _) if reachable.is_empty() => {
                return Err(Refusal::Forbidden(format!(
                    "the access token has no `{}` claim to identify the user by",
                    self.user_claim
                )));
            }
            (None, _) => format!("subject {subject}"),
        };
        if user.is_none() && reachable.is_empty() {
            return Err(Refusal::Forbidden(format!("{who} is not a user of this gateway")));
        }
        let (project, group) = match &endpoint.project {
            Some(name) => reachable
                .iter()
                .find(|(p, _)| *p.name == **name)
                .copied()
                .ok_or_else(|| Refusal::Forbidden(format!("{who} is not a member of project `{name}`")))?,
            None => match reachable.as_slice() {
                [only] => *only,
                [] => return Err(Refusal::Forbidden(format!("{who} is not a member of any project"))),
                several => {
                    let mut names: Vec<&str> = several.iter().map(|(p, _)| &*p.name).collect();
                    names.sort_unstable();
                    return Err(Refusal::Forbidden(format!(
                        "{who} is a member of several projects ({}): connect to /mcp/<project>",
                        names.join(", ")
                    )));
                }
            },
        };
        Ok(Principal {
            catalog: catalog.clone(),
            key_id: "oauth".into(),
            credential: format!("{issuer}#{subject}").into(),
            // Someone admitted by a group alone has no mcpgw user: a stable id of their own.
            user_id: user.unwrap_or_else(|| derived_user_id(issuer, subject)),
            project_id: project.id,
            project_name: project.name.clone(),
            config: project.config.clone(),
            oauth_group: group.map(Arc::from),
            oauth: true,
            // No key: only the project's limit applies to a signed-in user.
            key_rate_limit: None,
            project_rate_limit: project.rate_limit,
        })
    }
}

/// A UUID (version 8) derived from the issuer and subject, for users admitted by a group.
fn derived_user_id(issuer: &str, subject: &str) -> uuid::Uuid {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{issuer}#{subject}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(bytes)
}

/// Whether `credential` is one of the gateway's keys (API keys win over opaque tokens): anything in
/// the `mcpgw_` format, so a wrong key is never sent to the issuer, or an imported key it holds.
fn is_known_key(catalog: &Catalog, credential: &str) -> bool {
    credential.starts_with(shared::api_key::KEY_PREFIX)
        || shared::api_key::lookup_id(credential).is_some_and(|id| catalog.key(&id).is_some())
}

/// The answer to a refused access token: `401` or `403`, with the challenge that says why.
fn refused_token(oauth: &OAuth, endpoint: &Endpoint, refusal: &Refusal) -> Response {
    let status = match refusal {
        Refusal::InvalidToken(_) | Refusal::InvalidKey(_) => StatusCode::UNAUTHORIZED,
        Refusal::InsufficientScope(_) | Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
    };
    let mut response = crate::http::jsonrpc_error(status, crate::http::UNAUTHORIZED, &refusal.to_string());
    if !matches!(refusal, Refusal::Forbidden(_)) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, oauth.challenge(endpoint, Some(refusal)));
    }
    response
}

/// The required scopes a token does not grant. A scope required in URI form
/// (`api://<app>/mcp.tools`, as Entra ID clients request it) is also granted by its last segment,
/// which is how Entra ID writes it in `scp`.
fn missing_scopes<'a>(required: &'a [String], granted: &std::collections::HashSet<&str>) -> Vec<&'a str> {
    required
        .iter()
        .map(String::as_str)
        .filter(|s| !granted.contains(s) && !s.rsplit_once('/').is_some_and(|(_, short)| granted.contains(short)))
        .collect()
}

/// Who is calling an MCP endpoint: an API key, or (when an issuer is configured) an OAuth access
/// token. A refusal is the whole answer to send.
pub(crate) async fn caller(gateway: &Gateway, uri: &Uri, headers: &HeaderMap) -> Result<Principal, Response> {
    let endpoint = Endpoint::of(uri.path()).unwrap_or(Endpoint { raw_project: None, project: None });
    let oauth = gateway.oauth.as_deref();
    // RFC 6750 allows tokens in the query string; they end up in logs and histories, so never here.
    if uri.query().is_some_and(|q| q.split('&').any(|p| p.split('=').next() == Some("access_token"))) {
        gateway.metrics.record_auth_failure("token_in_query");
        let message = "access tokens are accepted only in the Authorization header, never in the URL";
        let mut response = crate::http::jsonrpc_error(StatusCode::BAD_REQUEST, crate::http::UNAUTHORIZED, message);
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_request\""));
        return Err(response);
    }
    let credential = key_from_headers(headers);
    if let (Some(oauth), Some(token)) = (oauth, credential)
        && token::looks_like_jwt(token)
    {
        return oauth.authenticate(&gateway.catalog(), token, &endpoint).await.map_err(|refusal| {
            gateway.metrics.record_auth_failure(refusal.reason());
            tracing::info!(reason = %refusal, "access token refused");
            refused_token(oauth, &endpoint, &refusal)
        });
    }
    // Not a JWT and not one of the gateway's keys: with introspection configured, an opaque token.
    if let (Some(oauth), Some(token)) = (oauth, credential)
        && oauth.introspects()
        && !is_known_key(&gateway.catalog(), token)
    {
        return oauth.authenticate_opaque(&gateway.catalog(), token, &endpoint).await.map_err(|refusal| {
            gateway.metrics.record_auth_failure(refusal.reason());
            tracing::info!(reason = %refusal, "access token refused");
            refused_token(oauth, &endpoint, &refusal)
        });
    }
    let refused = |e: AuthError| {
        let mut response = crate::http::unauthorized(e);
        if let Some(oauth) = oauth {
            let challenge = match e {
                AuthError::Missing => oauth.challenge(&endpoint, None),
                _ => oauth.challenge(&endpoint, Some(&Refusal::InvalidKey(e))),
            };
            response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    };
    match gateway.authenticate(credential).await {
        // A key for another project is as unknown here as a wrong key.
        Ok(p) if endpoint.project.as_deref().is_some_and(|name| name != &*p.project_name) => {
            gateway.metrics.record_auth_failure("other_project");
            Err(refused(AuthError::Invalid))
        }
        Ok(p) => Ok(p),
        Err(e) => Err(refused(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_required() {
        let required = ["mcp:tools".to_string(), "api://app/mcp.read".to_string()];
        let granted = std::collections::HashSet::from(["mcp:tools", "mcp.read"]);
        assert!(missing_scopes(&required, &granted).is_empty());
        let granted = std::collections::HashSet::from(["mcp", "app/mcp.read"]);
        assert_eq!(missing_scopes(&required, &granted), ["mcp:tools", "api://app/mcp.read"]);
    }

    #[test]
    fn endpoints() {
        let plain = Endpoint { raw_project: None, project: None };
        assert_eq!(Endpoint::of("/mcp"), Some(plain.clone()));
        assert_eq!(Endpoint::of("/mcp/"), Some(plain));
        let demo = Endpoint::of("/mcp/demo/").unwrap();
        assert_eq!(demo.project.as_deref(), Some("demo"));
        assert_eq!(demo.path(), "/mcp/demo");
        assert_eq!(Endpoint::of("/mcp/my%20team").unwrap().project.as_deref(), Some("my team"));
        for bad in ["/mcpx", "/mcp/a/b", "/mcp//", "/mcp/%zz", "/other"] {
            assert_eq!(Endpoint::of(bad), None, "{bad}");
        }
    }

    fn config(vars: &[(&str, &str)]) -> Config {
        let mut c = Config::from_env();
        for (k, v) in vars {
            match *k {
                "issuer" => c.oauth_issuers = vec![v.to_string()],
                "public" => c.public_url = Some(v.to_string()),
                "scopes" => c.oauth_scopes = vec![v.to_string()],
                _ => unreachable!(),
            }
        }
        c
    }

    #[test]
    fn settings_are_checked() {
        assert!(validate(&config(&[])).is_ok());
        assert!(validate(&config(&[("issuer", "https://idp.example")])).is_err(), "public URL required");
        assert!(validate(&config(&[("issuer", "https://idp.example"), ("public", "https://mcp.example")])).is_ok());
        assert!(validate(&config(&[("issuer", "http://idp.example"), ("public", "https://mcp.example")])).is_err());
        assert!(validate(&config(&[("issuer", "http://127.0.0.1:9"), ("public", "http://localhost:8000")])).is_ok());
        assert!(validate(&config(&[("issuer", "https://i.example"), ("public", "https://m.example?x=1")])).is_err());
        assert!(validate(&config(&[("scopes", "mcp")])).is_err(), "scopes without an issuer");
        let quoted = [("issuer", "https://i.example"), ("public", "https://m.example"), ("scopes", "a\"b")];
        assert!(validate(&config(&quoted)).is_err());
    }

    #[test]
    fn challenges_and_metadata() {
        let c =
            config(&[("issuer", "https://idp.example"), ("public", "https://mcp.example/"), ("scopes", "mcp:tools")]);
        let oauth = OAuth::from_config(&c).unwrap().unwrap();
        let demo = Endpoint::of("/mcp/demo").unwrap();
        assert_eq!(
            oauth.challenge(&demo, None),
            "Bearer scope=\"mcp:tools\", resource_metadata=\"https://mcp.example/.well-known/oauth-protected-resource/mcp/demo\""
        );
        let expired = Refusal::InvalidToken(TokenError::Expired);
        let value = oauth.challenge(&demo, Some(&expired));
        assert!(
            value
                .to_str()
                .unwrap()
                .starts_with("Bearer error=\"invalid_token\", error_description=\"the access token has expired\"")
        );
        let doc = oauth.metadata(&demo);
        assert_eq!(doc["resource"], "https://mcp.example/mcp/demo");
        assert_eq!(doc["authorization_servers"][0], "https://idp.example");
        assert_eq!(doc["scopes_supported"][0], "mcp:tools");
        assert_eq!(
            oauth.audiences(&demo),
            ["https://mcp.example", "https://mcp.example/mcp", "https://mcp.example/mcp/demo"]
        );
    }
}
