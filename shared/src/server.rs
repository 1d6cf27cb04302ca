//! One upstream MCP server inside an MCP config: how to reach it and the policies that guard it.
//!
//! Field names follow the Python gateway's `enkrypt_mcp_config.json` where it has one (`server_name`,
//! `config`, `tools`, `denied_tools`, `input_guardrails_policy`, ...) so that its users recognise them
//! and can import their files. The same type travels in the admin API, the database and the snapshot.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::rate_limit::RateLimit;

/// Detectors that run locally with no network.
pub const BUILTIN_DETECTORS: &[&str] = &["injection_attack", "pii", "keyword_detector", "sponge_attack"];
/// Detectors that need a remote model provider.
pub const REMOTE_DETECTORS: &[&str] = &["toxicity", "nsfw", "bias", "topic_detector", "policy_violation"];

/// A validation failure, naming the field so a person can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Whether a server, config or project name is usable as an identifier: `[A-Za-z0-9_-]{1,64}`.
/// Server names additionally must not contain `__`, so that `server__tool` splits unambiguously.
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// How the gateway reaches an upstream server.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Transport {
    /// A child process speaking MCP on stdin/stdout.
    Stdio {
        #[cfg_attr(feature = "openapi", schema(min_length = 1, pattern = "\\S"))]
        command: String,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
    },
    /// A streamable HTTP MCP endpoint.
    Http {
        #[cfg_attr(feature = "openapi", schema(pattern = "^https?://[^\\s/?#:@][^\\s]*$"))]
        url: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
}

/// Accepts `{"type": "stdio"|"http", ...}`, and also the Python gateway's untyped shapes
/// (`{command, args, env}` or `{url, headers, transport?}`), deciding by the fields present.
impl<'de> Deserialize<'de> for Transport {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            #[serde(rename = "type")]
            kind: Option<String>,
            command: Option<String>,
            #[serde(default)]
            args: Vec<String>,
            #[serde(default)]
            env: BTreeMap<String, String>,
            cwd: Option<String>,
            url: Option<String>,
            #[serde(default)]
            headers: BTreeMap<String, String>,
            /// Python gateway: `streamable_http` (kept for compatibility; `sse` is refused).
            transport: Option<String>,
        }
        use serde::de::Error;
        let raw = Raw::deserialize(d)?;
        let kind = match (raw.kind.as_deref(), &raw.command, &raw.url) {
            (Some("stdio"), _, _) | (None, Some(_), None) => "stdio",
            (Some("http" | "streamable_http" | "streamable-http"), _, _) | (None, None, Some(_)) => "http",
            (Some(other), _, _) => {
                return Err(D::Error::custom(format!("unknown transport type `{other}`; use `stdio` or `http`")));
            }
            (None, Some(_), Some(_)) => {
                return Err(D::Error::custom("give either `command` (stdio) or `url` (http), not both"));
            }
            (None, None, None) => return Err(D::Error::custom("a server needs `command` (stdio) or `url` (http)")),
        };
        if let Some(t) = raw.transport.as_deref()
            && !matches!(t, "streamable_http" | "streamable-http" | "http")
        {
            return Err(D::Error::custom(format!("transport `{t}` is not supported; use streamable HTTP")));
        }
        Ok(if kind == "stdio" {
            if raw.url.is_some() || !raw.headers.is_empty() {
                return Err(D::Error::custom("a stdio server takes no `url` or `headers`"));
            }
            Transport::Stdio { command: raw.command.unwrap_or_default(), args: raw.args, env: raw.env, cwd: raw.cwd }
        } else {
            if raw.command.is_some() || !raw.args.is_empty() || !raw.env.is_empty() || raw.cwd.is_some() {
                return Err(D::Error::custom("an http server takes no `command`, `args`, `env` or `cwd`"));
            }
            Transport::Http { url: raw.url.unwrap_or_default(), headers: raw.headers }
        })
    }
}

/// A tools allowlist: a list of names, or the Python gateway's map of name -> description.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ToolList(pub Vec<String>);

impl<'de> Deserialize<'de> for ToolList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            List(Vec<String>),
            Map(BTreeMap<String, serde_json::Value>),
        }
        Ok(ToolList(match Raw::deserialize(d)? {
            Raw::List(v) => v,
            Raw::Map(m) => m.into_keys().collect(),
        }))
    }
}

/// Extra options of a guardrail policy. Unknown options are kept (imported policies keep their meaning).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AdditionalConfig {
    /// Replace PII in arguments by placeholders before the upstream sees them; restore them in results.
    #[serde(default)]
    pub pii_redaction: bool,
    /// Keywords for `keyword_detector` (matched case-insensitively).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    /// Regular expressions for `keyword_detector`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// An input or output guardrail policy.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailPolicy {
    #[serde(default)]
    pub enabled: bool,
    /// Name of a remote policy (Python gateway: `policy_name` / `guardrail_name`).
    #[serde(default, alias = "guardrail_name", skip_serializing_if = "Option::is_none")]
    pub policy_name: Option<String>,
    /// Detectors whose findings refuse the call; the others only warn.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<BuiltinDetector>))]
    pub block: Vec<String>,
    #[serde(default)]
    pub additional_config: AdditionalConfig,
    /// On a guardrail error or timeout, let the call through instead of refusing it.
    #[serde(default)]
    pub fail_open: bool,
}

/// A detector name accepted in `block` (documentation only: policies store plain strings).
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[schema(as = BuiltinDetector)]
#[allow(dead_code)]
#[allow(non_camel_case_types)]
enum BuiltinDetector {
    injection_attack,
    pii,
    keyword_detector,
    sponge_attack,
}

/// Rug-pull protection mode for a server's tool definitions.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinningMode {
    Off,
    #[default]
    TrustOnFirstUse,
    Strict,
}

/// Timeouts in milliseconds.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default = "default_connect_ms")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3_600_000))]
    pub connect_ms: u64,
    #[serde(default = "default_discovery_ms")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3_600_000))]
    pub discovery_ms: u64,
    #[serde(default = "default_call_ms")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3_600_000))]
    pub call_ms: u64,
    /// Per-tool override of `call_ms`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tools: BTreeMap<String, u64>,
}

fn default_connect_ms() -> u64 {
    10_000
}
fn default_discovery_ms() -> u64 {
    30_000
}
fn default_call_ms() -> u64 {
    60_000
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_ms: default_connect_ms(),
            discovery_ms: default_discovery_ms(),
            call_ms: default_call_ms(),
            tools: BTreeMap::new(),
        }
    }
}

/// Largest timeout accepted (one hour): bigger values are almost always a unit mistake.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// One upstream server of an MCP config.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    #[serde(alias = "name")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^(?!.*__)[A-Za-z0-9_-]{1,64}$"))]
    pub server_name: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    pub description: String,
    /// Transport: `{type: stdio, command, args, env, cwd}` or `{type: http, url, headers}`.
    pub config: Transport,
    /// Allowlist of upstream tool names; empty means every discovered tool.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub tools: ToolList,
    /// Glob patterns (`*`, `?`) of tool names that are never exposed, applied after the allowlist.
    #[serde(default)]
    pub denied_tools: Vec<String>,
    #[serde(default, alias = "input_guardrails_config")]
    pub input_guardrails_policy: GuardrailPolicy,
    #[serde(default, alias = "output_guardrails_config")]
    pub output_guardrails_policy: GuardrailPolicy,
    /// Scan the server's self-description for poisoning before exposing it.
    #[serde(default)]
    pub enable_server_info_validation: bool,
    /// Scan every tool definition for poisoning before exposing it.
    #[serde(default)]
    pub enable_tool_guardrails: bool,
    #[serde(default)]
    pub pinning: PinningMode,
    /// OAuth settings for reaching the upstream (Python gateway field names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub oauth_config: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Give each client session its own upstream process (for servers that keep per-session state).
    #[serde(default)]
    pub per_session: bool,
    /// Let this server ask the calling client's model for a completion (MCP sampling). Off by
    /// default: a server that can sample can steer the client's model.
    #[serde(default)]
    pub allow_sampling: bool,
    /// Let this server ask the calling client's user for input (MCP elicitation). Off by default.
    #[serde(default)]
    pub allow_elicitation: bool,
    /// Tool calls to this server, from every project that uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Per-tool limits (upstream tool names), applied besides `rate_limit`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tool_rate_limits: BTreeMap<String, RateLimit>,
}

/// What replaces a secret wherever settings are shown.
pub const SECRET_MASK: &str = "****";

/// Whether an `oauth_config` field holds a secret (client secret, tokens, passwords, keys, and the
/// free-form headers and parameters, which often carry credentials).
pub fn is_secret_oauth_field(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    n.contains("SECRET")
        || n.contains("PASSWORD")
        || n.ends_with("_KEY")
        || (n.contains("TOKEN") && !n.contains("URL") && !n.contains("EXPIRY"))
        || n.contains("CUSTOM_HEADERS")
        || n.contains("ADDITIONAL_PARAMS")
}

impl ServerSpec {
    /// A copy for display and export: environment values, header values and OAuth secrets are
    /// replaced by [`SECRET_MASK`]; names and everything else stay, so the shape can be reviewed.
    pub fn with_secrets_masked(&self) -> ServerSpec {
        let mut spec = self.clone();
        spec.take_secrets();
        spec
    }

    /// Replaces every secret (environment values, header values, OAuth secrets) by [`SECRET_MASK`]
    /// and returns them by place (`env:NAME`, `headers:NAME`, `oauth:FIELD`), so they can be
    /// stored apart (sealed) and put back with [`ServerSpec::restore_secrets`].
    pub fn take_secrets(&mut self) -> BTreeMap<String, serde_json::Value> {
        let mut taken = BTreeMap::new();
        let mut take = |kind: &str, m: &mut BTreeMap<String, String>| {
            for (k, v) in m.iter_mut() {
                let value = std::mem::replace(v, SECRET_MASK.to_string());
                taken.insert(format!("{kind}:{k}"), serde_json::Value::String(value));
            }
        };
        let (kind, values) = self.config.secret_values_mut();
        take(kind, values);
        if let Some(oauth) = self.oauth_config.as_mut() {
            for (k, v) in oauth.iter_mut() {
                if is_secret_oauth_field(k) && !v.is_boolean() && !v.is_null() {
                    let value = std::mem::replace(v, serde_json::Value::String(SECRET_MASK.into()));
                    taken.insert(format!("oauth:{k}"), value);
                }
            }
        }
        taken
    }

    /// Puts back secrets taken by [`ServerSpec::take_secrets`]; places that no longer exist are
    /// ignored.
    pub fn restore_secrets(&mut self, secrets: BTreeMap<String, serde_json::Value>) {
        for (place, value) in secrets {
            let Some((kind, name)) = place.split_once(':') else { continue };
            match (kind, &mut self.config, value) {
                ("env", Transport::Stdio { env: m, .. }, serde_json::Value::String(v))
                | ("headers", Transport::Http { headers: m, .. }, serde_json::Value::String(v)) => {
                    if let Some(slot) = m.get_mut(name) {
                        *slot = v;
                    }
                }
                ("oauth", _, v) => {
                    if let Some(slot) = self.oauth_config.as_mut().and_then(|o| o.get_mut(name)) {
                        *slot = v;
                    }
                }
                _ => {}
            }
        }
    }

    /// Puts back the stored value of every secret sent as [`SECRET_MASK`] (environment and header
    /// values, OAuth secrets), so a server read from the admin API, which shows them masked, can be
    /// edited and sent back. A mask with nothing stored behind it (a new name, another transport) is
    /// an error: it would otherwise be stored as the value.
    pub fn keep_masked_secrets(&mut self, stored: Option<&ServerSpec>) -> Result<(), FieldError> {
        let (kind, values) = self.config.secret_values_mut();
        let previous = stored.map(|s| s.config.secret_values()).filter(|(k, _)| *k == kind).map(|(_, m)| m);
        for (name, value) in values.iter_mut() {
            if value == SECRET_MASK {
                match previous.and_then(|p| p.get(name)).filter(|p| *p != SECRET_MASK) {
                    Some(old) => value.clone_from(old),
                    None => return Err(nothing_stored(format!("config.{kind}.{name}"))),
                }
            }
        }
        let Some(oauth) = self.oauth_config.as_mut() else { return Ok(()) };
        let previous = stored.and_then(|s| s.oauth_config.as_ref());
        for (k, v) in oauth.iter_mut() {
            if v.as_str() == Some(SECRET_MASK) {
                match previous.and_then(|p| p.get(k)).filter(|p| p.as_str() != Some(SECRET_MASK)) {
                    Some(old) => *v = old.clone(),
                    None => return Err(nothing_stored(format!("oauth_config.{k}"))),
                }
            }
        }
        Ok(())
    }

    /// Checks every field; returns all problems at once so a person can fix them in one go.
    /// Detectors that need a remote provider are accepted here (a data plane without a provider
    /// refuses the calls they guard); the admin API checks with [`ServerSpec::validate_with`].
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        self.validate_with(true)
    }

    /// [`ServerSpec::validate`], refusing remote detectors unless `remote_provider` is configured.
    pub fn validate_with(&self, remote_provider: bool) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        if let Some(oauth) = &self.oauth_config
            && let Err(problems) = crate::oauth::OAuthConfig::from_map(oauth)
        {
            errs.extend(problems);
        }
        if !is_valid_name(&self.server_name) || self.server_name.contains("__") {
            errs.push(FieldError::new(
                "server_name",
                "must be 1-64 characters of letters, digits, `_` or `-`, without `__`",
            ));
        }
        if self.description.len() > 4096 {
            errs.push(FieldError::new("description", "must be at most 4096 characters"));
        }
        match &self.config {
            Transport::Stdio { command, env, .. } => {
                if command.trim().is_empty() {
                    errs.push(FieldError::new("config.command", "a stdio server needs a command"));
                }
                for k in env.keys() {
                    if k.is_empty() || k.contains('=') || k.contains('\0') {
                        errs.push(FieldError::new("config.env", format!("invalid variable name `{k}`")));
                    }
                }
            }
            Transport::Http { url, headers } => {
                if !is_http_url(url) {
                    errs.push(FieldError::new(
                        "config.url",
                        "an http server needs an http:// or https:// URL with a host",
                    ));
                }
                for k in headers.keys() {
                    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                        errs.push(FieldError::new("config.headers", format!("invalid header name `{k}`")));
                    }
                }
            }
        }
        for t in &self.tools.0 {
            if t.is_empty() || t.len() > 128 {
                errs.push(FieldError::new("tools", "tool names must be 1-128 characters"));
            }
        }
        for p in &self.denied_tools {
            if p.is_empty() {
                errs.push(FieldError::new("denied_tools", "patterns must not be empty"));
            }
        }
        validate_policy("input_guardrails_policy", &self.input_guardrails_policy, remote_provider, &mut errs);
        validate_policy("output_guardrails_policy", &self.output_guardrails_policy, remote_provider, &mut errs);
        let t = &self.timeouts;
        for (name, v) in [("connect_ms", t.connect_ms), ("discovery_ms", t.discovery_ms), ("call_ms", t.call_ms)]
            .into_iter()
            .chain(t.tools.iter().map(|(k, v)| (k.as_str(), *v)))
        {
            if v == 0 || v > MAX_TIMEOUT_MS {
                errs.push(FieldError::new(
                    format!("timeouts.{name}"),
                    format!("must be between 1 and {MAX_TIMEOUT_MS} ms"),
                ));
            }
        }
        if let Some(limit) = &self.rate_limit {
            errs.extend(limit.problems("rate_limit"));
        }
        for (tool, limit) in &self.tool_rate_limits {
            if tool.is_empty() || tool.len() > 128 {
                errs.push(FieldError::new("tool_rate_limits", "tool names must be 1-128 characters"));
            }
            errs.extend(limit.problems(&format!("tool_rate_limits.{tool}")));
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }
}

fn nothing_stored(field: String) -> FieldError {
    FieldError::new(field, format!("`{SECRET_MASK}` stands for a stored secret, and none is stored; send the secret"))
}

impl Transport {
    /// The values shown masked: a stdio server's environment, an HTTP server's headers.
    fn secret_values(&self) -> (&'static str, &BTreeMap<String, String>) {
        match self {
            Transport::Stdio { env, .. } => ("env", env),
            Transport::Http { headers, .. } => ("headers", headers),
        }
    }

    fn secret_values_mut(&mut self) -> (&'static str, &mut BTreeMap<String, String>) {
        match self {
            Transport::Stdio { env, .. } => ("env", env),
            Transport::Http { headers, .. } => ("headers", headers),
        }
    }
}

fn validate_policy(field: &str, p: &GuardrailPolicy, remote_provider: bool, errs: &mut Vec<FieldError>) {
    for d in &p.block {
        if REMOTE_DETECTORS.contains(&d.as_str()) {
            if remote_provider {
                continue;
            }
            errs.push(FieldError::new(
                format!("{field}.block"),
                format!("detector `{d}` needs a remote guardrail provider, and none is configured"),
            ));
        } else if !BUILTIN_DETECTORS.contains(&d.as_str()) {
            errs.push(FieldError::new(
                format!("{field}.block"),
                format!(
                    "unknown detector `{d}`; known: {}, and with a remote provider {}",
                    BUILTIN_DETECTORS.join(", "),
                    REMOTE_DETECTORS.join(", ")
                ),
            ));
        }
    }
    for pat in &p.additional_config.patterns {
        if let Err(e) = regex::Regex::new(pat) {
            errs.push(FieldError::new(
                format!("{field}.additional_config.patterns"),
                format!("invalid regex `{pat}`: {e}"),
            ));
        }
    }
}

/// A minimal, dependency-free check for `http(s)://host[...]`.
pub fn is_http_url(url: &str) -> bool {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(rest) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty() && !host.starts_with(':') && !url.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_hides_secrets_and_keeps_the_shape() {
        let spec: ServerSpec = serde_json::from_value(serde_json::json!({
            "server_name": "s",
            "config": {"command": "run", "args": ["--port", "1"], "env": {"API_TOKEN": "t0p"}},
            "oauth_config": {"enabled": true, "OAUTH_CLIENT_ID": "id", "OAUTH_CLIENT_SECRET": "s3cret",
                "OAUTH_TOKEN_URL": "https://auth.example/token", "OAUTH_TOKEN_EXPIRY_BUFFER": 300,
                "OAUTH_CUSTOM_HEADERS": {"X-Api-Key": "k"}}
        }))
        .unwrap();
        let shown = serde_json::to_string(&spec.with_secrets_masked()).unwrap();
        for secret in ["t0p", "s3cret", "X-Api-Key\":\"k"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        for kept in ["API_TOKEN", "--port", "OAUTH_CLIENT_ID\":\"id", "https://auth.example/token", "300"] {
            assert!(shown.contains(kept), "{kept} lost: {shown}");
        }
    }
    use serde_json::json;

    #[test]
    fn secrets_taken_apart_come_back_in_place() {
        let original: ServerSpec = serde_json::from_value(serde_json::json!({
            "server_name": "s", "config": {"command": "x", "env": {"TOKEN": "t0p", "MODE": "fast"}},
            "oauth_config": {"enabled": true, "OAUTH_CLIENT_ID": "id", "OAUTH_CLIENT_SECRET": "s3cret"}
        }))
        .unwrap();
        let mut spec = original.clone();
        let secrets = spec.take_secrets();
        assert_eq!(spec, original.with_secrets_masked());
        assert_eq!(secrets.len(), 3, "{secrets:?}");
        assert_eq!(secrets["oauth:OAUTH_CLIENT_SECRET"], "s3cret");
        let stored = serde_json::to_string(&spec).unwrap();
        assert!(!stored.contains("t0p") && !stored.contains("s3cret"), "{stored}");
        spec.restore_secrets(secrets);
        assert_eq!(spec, original);
    }

    #[test]
    fn masked_values_sent_back_keep_the_stored_ones() {
        let stored = parse(json!({"server_name": "s", "config": {"command": "x", "env": {"TOKEN": "t0p"}},
            "oauth_config": {"enabled": true, "OAUTH_CLIENT_ID": "id", "OAUTH_CLIENT_SECRET": "s3cret"}}))
        .unwrap();
        let mut edited = stored.with_secrets_masked();
        edited.description = "edited".into();
        if let Transport::Stdio { env, .. } = &mut edited.config {
            env.insert("MODE".into(), "fast".into());
        }
        edited.keep_masked_secrets(Some(&stored)).unwrap();
        let Transport::Stdio { env, .. } = &edited.config else { unreachable!() };
        assert_eq!((env["TOKEN"].as_str(), env["MODE"].as_str()), ("t0p", "fast"));
        assert_eq!(edited.oauth_config.as_ref().unwrap()["OAUTH_CLIENT_SECRET"], "s3cret");

        // A mask for a name with nothing stored, with no stored server, or across transports.
        let new_name =
            parse(json!({"server_name": "s", "config": {"command": "x", "env": {"OTHER": "****"}}})).unwrap();
        let e = new_name.clone().keep_masked_secrets(Some(&stored)).unwrap_err();
        assert_eq!(e.field, "config.env.OTHER");
        assert!(new_name.clone().keep_masked_secrets(None).is_err());
        let http =
            parse(json!({"server_name": "s", "config": {"url": "https://h.example", "headers": {"TOKEN": "****"}}}))
                .unwrap();
        assert_eq!(http.clone().keep_masked_secrets(Some(&stored)).unwrap_err().field, "config.headers.TOKEN");
    }

    fn parse(v: serde_json::Value) -> Result<ServerSpec, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn stdio_server_in_python_shape() {
        let s = parse(json!({
            "server_name": "echo", "description": "Echo",
            "config": {"command": "python", "args": ["echo.py"], "env": {"A": "1"}},
            "tools": {"echo": "Echo a message"},
            "input_guardrails_policy": {"enabled": true, "policy_name": "p", "block": ["pii"],
                "additional_config": {"pii_redaction": true}}
        }))
        .unwrap();
        assert!(matches!(&s.config, Transport::Stdio { command, .. } if command == "python"));
        assert_eq!(s.tools.0, vec!["echo"]);
        assert!(s.input_guardrails_policy.additional_config.pii_redaction);
        s.validate().unwrap();
    }

    #[test]
    fn http_server_typed_and_untyped() {
        let typed =
            parse(json!({"server_name": "a", "config": {"type": "http", "url": "https://x.example/mcp"}})).unwrap();
        let untyped = parse(
            json!({"server_name": "a", "config": {"url": "https://x.example/mcp", "transport": "streamable_http"}}),
        )
        .unwrap();
        assert_eq!(typed.config, untyped.config);
        typed.validate().unwrap();
    }

    #[test]
    fn serialised_form_round_trips() {
        let s = parse(json!({"server_name": "a", "config": {"command": "x"}})).unwrap();
        let back: ServerSpec = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(s, back);
    }

    #[test]
    fn ambiguous_or_unknown_transports_are_refused() {
        assert!(parse(json!({"server_name": "a", "config": {"command": "x", "url": "http://h"}})).is_err());
        assert!(parse(json!({"server_name": "a", "config": {}})).is_err());
        assert!(parse(json!({"server_name": "a", "config": {"type": "carrier-pigeon"}})).is_err());
        assert!(parse(json!({"server_name": "a", "config": {"url": "http://h", "transport": "sse"}})).is_err());
        assert!(parse(json!({"server_name": "a", "config": {"command": "x", "bogus": 1}})).is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(parse(json!({"server_name": "a", "config": {"command": "x"}, "toolz": []})).is_err());
    }

    #[test]
    fn validation_reports_each_problem() {
        let s = parse(json!({
            "server_name": "bad name", "config": {"type": "stdio", "command": " "},
            "input_guardrails_policy": {"block": ["nope", "toxicity"]},
            "timeouts": {"call_ms": 0}
        }))
        .unwrap();
        let errs = s.validate_with(false).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"server_name"));
        assert!(fields.contains(&"config.command"));
        assert!(fields.contains(&"input_guardrails_policy.block"));
        assert!(fields.contains(&"timeouts.call_ms"));
        assert!(errs.iter().any(|e| e.message.contains("remote guardrail provider")));
        // With a provider, `toxicity` is fine and `nope` is still unknown.
        let errs = s.validate_with(true).unwrap_err();
        assert!(!errs.iter().any(|e| e.message.contains("remote guardrail provider")));
        assert!(errs.iter().any(|e| e.message.contains("unknown detector `nope`")));
    }

    #[test]
    fn names_and_urls() {
        assert!(is_valid_name("github-tools_2"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name(&"a".repeat(65)));
        assert!(!is_valid_name("a/b"));
        let dunder = parse(json!({"server_name": "a__b", "config": {"command": "x"}})).unwrap();
        assert!(dunder.validate().is_err());
        assert!(is_http_url("http://127.0.0.1:9/mcp"));
        assert!(!is_http_url("ftp://h"));
        assert!(!is_http_url("http://"));
        assert!(!is_http_url("https:// h"));
    }

    #[test]
    fn bad_regex_is_reported() {
        let s = parse(json!({"server_name": "a", "config": {"command": "x"},
            "output_guardrails_policy": {"additional_config": {"patterns": ["("]}}}))
        .unwrap();
        assert!(s.validate().is_err());
    }
}
