//! The snapshot: everything the data plane needs, and nothing it does not.
//!
//! Published by the control plane after every committed change, loaded and hot-reloaded by the data
//! plane. [`Snapshot::validate`] is the gate a new snapshot must pass before the data plane swaps it in.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::rate_limit::RateLimit;
use crate::server::{FieldError, ServerSpec, is_valid_name};

/// Version of the document layout; a data plane refuses formats it does not know.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot format_version {0} is not supported (expected {FORMAT_VERSION})")]
    UnsupportedFormat(u32),
    #[error("invalid snapshot: {0}")]
    Invalid(String),
    #[error("snapshot is not valid JSON for this format: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("snapshot I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub format_version: u32,
    /// Monotonically increasing; a data plane never goes back to a lower one.
    pub revision: u64,
    pub generated_at: DateTime<Utc>,
    pub projects: Vec<SnapshotProject>,
    pub users: Vec<SnapshotUser>,
    pub mcp_configs: Vec<SnapshotConfig>,
    pub api_keys: Vec<SnapshotApiKey>,
    #[serde(default)]
    pub settings: SnapshotSettings,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotProject {
    pub id: Uuid,
    pub name: String,
    pub mcp_config_id: Option<Uuid>,
    /// Ids of the users who are members of the project.
    pub members: Vec<Uuid>,
    /// Tool calls of all the project's keys together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// OAuth group claim values whose holders the project admits without a membership.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oauth_groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotUser {
    pub id: Uuid,
    pub email: String,
}

/// How a config's tools, prompts and resource URIs are named to clients.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolNaming {
    /// `<server>__<tool>`: collision-free across servers.
    #[default]
    Prefixed,
    /// Names exactly as the upstream gives them; the control plane refuses configs that could collide.
    Bare,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotConfig {
    pub id: Uuid,
    pub name: String,
    #[serde(default)]
    pub tool_naming: ToolNaming,
    /// In the order the admin gave them.
    pub servers: Vec<ServerSpec>,
    /// Tool definitions an admin approved (rug-pull protection).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pins: Vec<crate::pins::ToolPin>,
    /// Access tokens the control plane obtained for servers using the authorization code grant.
    /// Their refresh tokens stay in the control plane.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oauth_tokens: Vec<IssuedToken>,
}

/// An upstream access token obtained by the control plane.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedToken {
    pub server: String,
    pub access_token: String,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken").field("server", &self.server).field("expires_at", &self.expires_at).finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotApiKey {
    /// Public id, also embedded in the key itself.
    pub id: String,
    pub project_id: Uuid,
    pub user_id: Uuid,
    #[serde(default)]
    pub name: Option<String>,
    /// argon2id PHC hash of the whole key.
    pub hash: String,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub disabled: bool,
    /// Tool calls made with this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

impl SnapshotApiKey {
    /// Whether the key may authenticate at `now` (not disabled, not expired).
    pub fn is_usable_at(&self, now: DateTime<Utc>) -> bool {
        !self.disabled && self.expires_at.is_none_or(|exp| now < exp)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSettings {
    /// How long discovered tool lists are cached by the data plane.
    #[serde(default = "default_tool_cache_ttl_secs")]
    pub tool_cache_ttl_secs: u64,
    /// Where detectors that need a model (toxicity, nsfw, ...) are sent; none means they are refused
    /// by the admin API. Its credential never travels in the snapshot: each data plane reads it from
    /// its own environment (`MCPGW_GUARDRAIL_API_KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardrail_provider: Option<GuardrailProvider>,
}

/// A remote guardrail provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardrailProvider {
    pub kind: ProviderKind,
    /// Webhook: the URL that receives each request. Enkrypt: the API base URL.
    pub url: String,
    #[serde(default = "default_provider_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests in flight to the provider at once, per data plane.
    #[serde(default = "default_provider_concurrency")]
    pub max_concurrency: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// mcpgw's JSON webhook contract (see the README).
    Webhook,
    /// The Enkrypt AI guardrails detect API.
    Enkrypt,
}

fn default_provider_timeout_ms() -> u64 {
    3000
}

fn default_provider_concurrency() -> usize {
    16
}

fn default_tool_cache_ttl_secs() -> u64 {
    300
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        Self { tool_cache_ttl_secs: default_tool_cache_ttl_secs(), guardrail_provider: None }
    }
}

impl Snapshot {
    /// An empty snapshot at revision 0 (what a data plane serves before any publish).
    pub fn empty() -> Self {
        Self {
            format_version: FORMAT_VERSION,
            revision: 0,
            generated_at: Utc::now(),
            projects: vec![],
            users: vec![],
            mcp_configs: vec![],
            api_keys: vec![],
            settings: SnapshotSettings::default(),
        }
    }

    /// Parses and fully validates a snapshot document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let snap: Snapshot = serde_json::from_slice(bytes)?;
        snap.validate()?;
        Ok(snap)
    }

    /// Checks that every reference resolves and every entry is well formed, so the data plane can
    /// index it without further checks.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        if self.format_version != FORMAT_VERSION {
            return Err(SnapshotError::UnsupportedFormat(self.format_version));
        }
        let invalid = |m: String| Err(SnapshotError::Invalid(m));

        let mut user_ids = HashSet::new();
        for u in &self.users {
            if !user_ids.insert(u.id) {
                return invalid(format!("duplicate user id {}", u.id));
            }
        }
        let mut config_ids = HashSet::new();
        let mut config_names = HashSet::new();
        for c in &self.mcp_configs {
            if !config_ids.insert(c.id) || !config_names.insert(c.name.as_str()) {
                return invalid(format!("duplicate mcp config {} ({})", c.id, c.name));
            }
            validate_config_servers(c).map_err(|e| SnapshotError::Invalid(format!("mcp config `{}`: {e}", c.name)))?;
            let mut with_token = HashSet::new();
            for t in &c.oauth_tokens {
                if !c.servers.iter().any(|s| s.server_name == t.server) || !with_token.insert(t.server.as_str()) {
                    return invalid(format!(
                        "mcp config `{}`: unknown or repeated OAuth token server `{}`",
                        c.name, t.server
                    ));
                }
            }
        }
        let mut members: HashMap<Uuid, HashSet<Uuid>> = HashMap::new();
        let mut project_names = HashSet::new();
        for p in &self.projects {
            if members.contains_key(&p.id) || !project_names.insert(p.name.as_str()) {
                return invalid(format!("duplicate project {} ({})", p.id, p.name));
            }
            if let Some(c) = p.mcp_config_id
                && !config_ids.contains(&c)
            {
                return invalid(format!("project `{}` uses unknown mcp config {c}", p.name));
            }
            if let Some(u) = p.members.iter().find(|u| !user_ids.contains(u)) {
                return invalid(format!("project `{}` has unknown member {u}", p.name));
            }
            if let Some(e) = p.rate_limit.iter().flat_map(|l| l.problems("rate_limit")).next() {
                return invalid(format!("project `{}`: {e}", p.name));
            }
            members.insert(p.id, p.members.iter().copied().collect());
        }
        let mut key_ids = HashSet::new();
        for k in &self.api_keys {
            if !key_ids.insert(k.id.as_str()) {
                return invalid(format!("duplicate api key id {}", k.id));
            }
            if !crate::api_key::is_valid_hash(&k.hash) {
                return invalid(format!("api key {} has no valid argon2 hash", k.id));
            }
            if let Some(e) = k.rate_limit.iter().flat_map(|l| l.problems("rate_limit")).next() {
                return invalid(format!("api key {}: {e}", k.id));
            }
            match members.get(&k.project_id) {
                None => return invalid(format!("api key {} belongs to unknown project {}", k.id, k.project_id)),
                Some(m) if !m.contains(&k.user_id) => {
                    return invalid(format!("api key {}: user {} is not a member of its project", k.id, k.user_id));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// Server-level checks of one config: each entry valid, names unique, and (for bare naming) no two
/// servers able to expose the same tool name.
pub fn validate_config_servers(c: &SnapshotConfig) -> Result<(), FieldError> {
    if !is_valid_name(&c.name) {
        return Err(FieldError::new("name", "must be 1-64 characters of letters, digits, `_` or `-`"));
    }
    let mut names = HashSet::new();
    for s in &c.servers {
        if let Err(errs) = s.validate() {
            let first = &errs[0];
            return Err(FieldError::new(format!("servers.{}.{}", s.server_name, first.field), first.message.clone()));
        }
        if !names.insert(s.server_name.as_str()) {
            return Err(FieldError::new("servers", format!("duplicate server name `{}`", s.server_name)));
        }
    }
    if c.tool_naming == ToolNaming::Bare {
        check_bare_naming(&c.servers)?;
    }
    Ok(())
}

/// With bare names, tools of different servers could collide. We only accept configs where that is
/// impossible: a single server, or servers whose explicit allowlists are disjoint.
pub fn check_bare_naming(servers: &[ServerSpec]) -> Result<(), FieldError> {
    if servers.len() <= 1 {
        return Ok(());
    }
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for s in servers {
        if s.tools.0.is_empty() {
            return Err(FieldError::new(
                "tool_naming",
                format!(
                    "bare names with several servers need an explicit `tools` allowlist on each; server `{}` has none, so its tools could collide",
                    s.server_name
                ),
            ));
        }
        for t in &s.tools.0 {
            if let Some(other) = seen.insert(t.as_str(), s.server_name.as_str()) {
                return Err(FieldError::new(
                    "tool_naming",
                    format!(
                        "tool `{t}` is allowed on both `{other}` and `{}`; with bare names they would collide",
                        s.server_name
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub fn sample() -> Snapshot {
        let user = Uuid::new_v4();
        let project = Uuid::new_v4();
        let config = Uuid::new_v4();
        let key = crate::api_key::generate();
        Snapshot {
            revision: 7,
            users: vec![SnapshotUser { id: user, email: "a@example.com".into() }],
            mcp_configs: vec![SnapshotConfig {
                id: config,
                name: "cfg".into(),
                tool_naming: ToolNaming::Prefixed,
                servers: vec![
                    serde_json::from_value(json!({"server_name": "echo", "config": {"command": "echo"}})).unwrap(),
                ],
                pins: vec![],
                oauth_tokens: vec![],
            }],
            projects: vec![SnapshotProject {
                id: project,
                name: "p".into(),
                mcp_config_id: Some(config),
                members: vec![user],
                rate_limit: None,
                oauth_groups: vec![],
            }],
            api_keys: vec![SnapshotApiKey {
                id: key.id.clone(),
                project_id: project,
                user_id: user,
                name: None,
                hash: crate::api_key::hash(&key.secret).unwrap(),
                expires_at: None,
                disabled: false,
                rate_limit: None,
            }],
            ..Snapshot::empty()
        }
    }

    #[test]
    fn valid_snapshot_round_trips() {
        let s = sample();
        s.validate().unwrap();
        let bytes = serde_json::to_vec(&s).unwrap();
        assert_eq!(Snapshot::from_json(&bytes).unwrap(), s);
    }

    #[test]
    fn dangling_references_are_refused() {
        let mut s = sample();
        s.projects[0].mcp_config_id = Some(Uuid::new_v4());
        assert!(s.validate().is_err());

        let mut s = sample();
        s.projects[0].members.clear();
        assert!(s.validate().unwrap_err().to_string().contains("not a member"));

        let mut s = sample();
        s.api_keys[0].hash = "plaintext".into();
        assert!(s.validate().is_err());

        let mut s = sample();
        s.users.push(s.users[0].clone());
        assert!(s.validate().is_err());
    }

    #[test]
    fn unknown_format_is_refused() {
        let mut s = sample();
        s.format_version = 99;
        assert!(matches!(s.validate(), Err(SnapshotError::UnsupportedFormat(99))));
        assert!(Snapshot::from_json(b"{\"revision\": 1}").is_err());
        assert!(Snapshot::from_json(b"not json").is_err());
    }

    #[test]
    fn key_usability() {
        let mut k = sample().api_keys.remove(0);
        let now = Utc::now();
        assert!(k.is_usable_at(now));
        k.expires_at = Some(now - chrono::Duration::seconds(1));
        assert!(!k.is_usable_at(now));
        k.expires_at = None;
        k.disabled = true;
        assert!(!k.is_usable_at(now));
    }

    fn server(name: &str, tools: &[&str]) -> ServerSpec {
        serde_json::from_value(json!({"server_name": name, "config": {"command": "x"}, "tools": tools})).unwrap()
    }

    #[test]
    fn bare_naming_needs_disjoint_allowlists() {
        assert!(check_bare_naming(&[server("a", &[])]).is_ok());
        assert!(check_bare_naming(&[server("a", &["x"]), server("b", &["y"])]).is_ok());
        assert!(check_bare_naming(&[server("a", &["x"]), server("b", &[])]).is_err());
        assert!(check_bare_naming(&[server("a", &["x"]), server("b", &["x"])]).is_err());
    }

    #[test]
    fn duplicate_server_names_are_refused() {
        let mut s = sample();
        let dup = s.mcp_configs[0].servers[0].clone();
        s.mcp_configs[0].servers.push(dup);
        assert!(s.validate().unwrap_err().to_string().contains("duplicate server"));
    }
}
