//! A server's `oauth_config`, read from the Python gateway's field names (`enabled`,
//! `OAUTH_GRANT_TYPE`, `OAUTH_CLIENT_ID`, ...). Both planes parse it the same way: the admin API
//! refuses what the data plane could not use, and the data plane fetches tokens with it.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::server::FieldError;

/// Refresh this long before a token expires unless the config says otherwise (Python default).
pub const DEFAULT_EXPIRY_BUFFER_SECS: u64 = 300;

/// How the gateway obtains tokens for a server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Grant {
    /// The data plane fetches tokens itself with the client's own credentials.
    ClientCredentials,
    /// An admin authorizes once in a browser (PKCE S256, state against CSRF); the control plane
    /// exchanges the code, keeps the refresh token and renews the access token, which reaches the
    /// data plane in the snapshot.
    AuthorizationCode {
        authorization_url: String,
        /// Where the authorization server sends the browser back; derived from the admin API's own
        /// address when unset.
        redirect_uri: Option<String>,
    },
}

/// OAuth settings of one upstream server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OAuthConfig {
    pub grant: Grant,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub token_url: String,
    pub audience: Option<String>,
    pub scope: Option<String>,
    pub resource: Option<String>,
    /// Send the client credentials with HTTP Basic (default) instead of in the form body.
    pub use_basic_auth: bool,
    pub expiry_buffer_secs: u64,
    pub additional_params: BTreeMap<String, String>,
    pub custom_headers: BTreeMap<String, String>,
}

fn field<'a>(m: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    m.get(name).or_else(|| m.get(&name.to_ascii_lowercase())).filter(|v| !v.is_null())
}

fn string(m: &Map<String, Value>, name: &str, errs: &mut Vec<FieldError>) -> Option<String> {
    match field(m, name) {
        None => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.trim().to_string()),
        Some(_) => {
            errs.push(FieldError::new(format!("oauth_config.{name}"), "must be a string"));
            None
        }
    }
}

fn flag(m: &Map<String, Value>, name: &str, default: bool, errs: &mut Vec<FieldError>) -> bool {
    match field(m, name) {
        None => default,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
        Some(_) => {
            errs.push(FieldError::new(format!("oauth_config.{name}"), "must be true or false"));
            default
        }
    }
}

fn string_map(m: &Map<String, Value>, name: &str, errs: &mut Vec<FieldError>) -> BTreeMap<String, String> {
    match field(m, name) {
        None => BTreeMap::new(),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
            .collect(),
        Some(_) => {
            errs.push(FieldError::new(format!("oauth_config.{name}"), "must be an object"));
            BTreeMap::new()
        }
    }
}

/// Tokens and secrets must not travel in clear, except where an admin says so for local testing.
fn check_url(name: &str, url: &str, enforce_https: bool, errs: &mut Vec<FieldError>) {
    let field = format!("oauth_config.{name}");
    if url.starts_with("https://") && url.len() > "https://".len() {
        return;
    }
    if url.starts_with("http://") && url.len() > "http://".len() {
        if !enforce_https {
            return;
        }
        errs.push(FieldError::new(
            field,
            "must be https (secrets would travel in clear); set OAUTH_ENFORCE_HTTPS to false only for local testing",
        ));
        return;
    }
    errs.push(FieldError::new(field, "must be an http(s) URL"));
}

fn authorization_code(m: &Map<String, Value>, enforce_https: bool, errs: &mut Vec<FieldError>) -> Grant {
    let authorization_url = string(m, "OAUTH_AUTHORIZATION_URL", errs);
    match &authorization_url {
        None => errs.push(FieldError::new(
            "oauth_config.OAUTH_AUTHORIZATION_URL",
            "is required for the authorization_code grant",
        )),
        Some(u) => check_url("OAUTH_AUTHORIZATION_URL", u, enforce_https, errs),
    }
    let redirect_uri = string(m, "OAUTH_REDIRECT_URI", errs);
    if let Some(u) = &redirect_uri {
        // Where the browser goes back to: the admin's own network, so plain http is allowed.
        check_url("OAUTH_REDIRECT_URI", u, false, errs);
    }
    if !flag(m, "OAUTH_USE_PKCE", true, errs) {
        errs.push(FieldError::new(
            "oauth_config.OAUTH_USE_PKCE",
            "PKCE is always used with authorization_code (OAuth 2.1); remove the setting or set it to true",
        ));
    }
    if let Some(method) = string(m, "OAUTH_CODE_CHALLENGE_METHOD", errs)
        && method != "S256"
    {
        errs.push(FieldError::new(
            "oauth_config.OAUTH_CODE_CHALLENGE_METHOD",
            format!("`{method}` is not supported; the gateway uses S256"),
        ));
    }
    Grant::AuthorizationCode { authorization_url: authorization_url.unwrap_or_default(), redirect_uri }
}

impl OAuthConfig {
    /// The settings when OAuth is enabled, `None` when it is off, or every problem at once.
    pub fn from_map(m: &Map<String, Value>) -> Result<Option<Self>, Vec<FieldError>> {
        let mut errs = Vec::new();
        if !flag(m, "enabled", false, &mut errs) {
            return if errs.is_empty() { Ok(None) } else { Err(errs) };
        }
        let client_id = string(m, "OAUTH_CLIENT_ID", &mut errs);
        if client_id.is_none() {
            errs.push(FieldError::new("oauth_config.OAUTH_CLIENT_ID", "is required when OAuth is enabled"));
        }
        let enforce_https = flag(m, "OAUTH_ENFORCE_HTTPS", true, &mut errs);
        let token_url = string(m, "OAUTH_TOKEN_URL", &mut errs);
        match &token_url {
            None => errs.push(FieldError::new("oauth_config.OAUTH_TOKEN_URL", "is required when OAuth is enabled")),
            Some(u) => check_url("OAUTH_TOKEN_URL", u, enforce_https, &mut errs),
        }
        let grant = match string(m, "OAUTH_GRANT_TYPE", &mut errs).as_deref() {
            None | Some("client_credentials") => Grant::ClientCredentials,
            Some("authorization_code") => authorization_code(m, enforce_https, &mut errs),
            Some(other) => {
                errs.push(FieldError::new(
                    "oauth_config.OAUTH_GRANT_TYPE",
                    format!("`{other}` is not supported; use `client_credentials` or `authorization_code`"),
                ));
                Grant::ClientCredentials
            }
        };
        let expiry_buffer_secs = match field(m, "OAUTH_TOKEN_EXPIRY_BUFFER") {
            None => DEFAULT_EXPIRY_BUFFER_SECS,
            Some(v) => match v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())) {
                Some(n) if n <= 86_400 => n,
                _ => {
                    errs.push(FieldError::new("oauth_config.OAUTH_TOKEN_EXPIRY_BUFFER", "must be 0-86400 seconds"));
                    DEFAULT_EXPIRY_BUFFER_SECS
                }
            },
        };
        let config = OAuthConfig {
            grant,
            client_id: client_id.unwrap_or_default(),
            client_secret: string(m, "OAUTH_CLIENT_SECRET", &mut errs),
            token_url: token_url.unwrap_or_default(),
            audience: string(m, "OAUTH_AUDIENCE", &mut errs),
            scope: string(m, "OAUTH_SCOPE", &mut errs),
            resource: string(m, "OAUTH_RESOURCE", &mut errs),
            use_basic_auth: flag(m, "OAUTH_USE_BASIC_AUTH", true, &mut errs),
            expiry_buffer_secs,
            additional_params: string_map(m, "OAUTH_ADDITIONAL_PARAMS", &mut errs),
            custom_headers: string_map(m, "OAUTH_CUSTOM_HEADERS", &mut errs),
        };
        if errs.is_empty() { Ok(Some(config)) } else { Err(errs) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Option<OAuthConfig>, Vec<FieldError>> {
        OAuthConfig::from_map(v.as_object().unwrap())
    }

    #[test]
    fn disabled_or_absent_means_no_oauth() {
        assert_eq!(parse(json!({})).unwrap(), None);
        assert_eq!(parse(json!({"enabled": false, "OAUTH_CLIENT_ID": "x"})).unwrap(), None);
    }

    #[test]
    fn python_field_names_are_read() {
        let c = parse(json!({
            "enabled": true, "OAUTH_GRANT_TYPE": "client_credentials", "OAUTH_CLIENT_ID": "id",
            "OAUTH_CLIENT_SECRET": "s", "OAUTH_TOKEN_URL": "https://auth.example/token", "OAUTH_SCOPE": "read write",
            "OAUTH_AUDIENCE": "api", "OAUTH_USE_BASIC_AUTH": false, "OAUTH_TOKEN_EXPIRY_BUFFER": 60,
            "OAUTH_ADDITIONAL_PARAMS": {"tenant": "t1"}, "OAUTH_CUSTOM_HEADERS": {"X-Org": "o"}
        }))
        .unwrap()
        .unwrap();
        assert_eq!((c.client_id.as_str(), c.client_secret.as_deref()), ("id", Some("s")));
        assert_eq!((c.scope.as_deref(), c.audience.as_deref()), (Some("read write"), Some("api")));
        assert!(!c.use_basic_auth);
        assert_eq!(c.expiry_buffer_secs, 60);
        assert_eq!(c.additional_params["tenant"], "t1");
        assert_eq!(c.custom_headers["X-Org"], "o");
    }

    #[test]
    fn authorization_code_needs_its_endpoint_and_always_uses_pkce() {
        let base = json!({"enabled": true, "OAUTH_GRANT_TYPE": "authorization_code", "OAUTH_CLIENT_ID": "id",
            "OAUTH_TOKEN_URL": "https://auth.example/token"});
        let errs = parse(base.clone()).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].to_string().contains("OAUTH_AUTHORIZATION_URL"));
        let mut ok = base.clone();
        ok["OAUTH_AUTHORIZATION_URL"] = json!("https://auth.example/authorize");
        ok["OAUTH_CODE_CHALLENGE_METHOD"] = json!("S256");
        let c = parse(ok.clone()).unwrap().unwrap();
        assert_eq!(
            c.grant,
            Grant::AuthorizationCode { authorization_url: "https://auth.example/authorize".into(), redirect_uri: None }
        );
        let mut plain = ok;
        plain["OAUTH_USE_PKCE"] = json!(false);
        plain["OAUTH_CODE_CHALLENGE_METHOD"] = json!("plain");
        plain["OAUTH_AUTHORIZATION_URL"] = json!("http://auth.example/authorize");
        let text: Vec<String> = parse(plain).unwrap_err().iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        for field in ["OAUTH_USE_PKCE", "OAUTH_CODE_CHALLENGE_METHOD", "OAUTH_AUTHORIZATION_URL"] {
            assert!(text.iter().any(|t| t.contains(field)), "{field}: {text:?}");
        }
    }

    #[test]
    fn what_cannot_work_is_refused_with_every_reason() {
        let errs = parse(json!({"enabled": true, "OAUTH_GRANT_TYPE": "password"})).unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 3, "{text:?}");
        assert!(text.iter().any(|t| t.contains("OAUTH_GRANT_TYPE")));
        let plain = json!({"enabled": true, "OAUTH_CLIENT_ID": "id", "OAUTH_TOKEN_URL": "http://auth.local/token"});
        assert!(parse(plain.clone()).unwrap_err()[0].message.contains("must be https"));
        let mut allowed = plain;
        allowed["OAUTH_ENFORCE_HTTPS"] = json!(false);
        assert!(parse(allowed).unwrap().is_some());
    }
}
