//! Declarative state: one document names the users, MCP configs, projects, members and keys the
//! gateway should have. `plan` lists what applying it would change, `apply` makes every change in one
//! transaction and one revision (or none), `GET /state` exports the current state as such a document.
//!
//! Identity is by name: users by e-mail (case-insensitive), configs and projects by name, servers by
//! name within their config, keys by name within their project. A config is declared whole (its
//! server list is its servers, in order); everything else is only created or updated unless `prune`
//! asks to delete what the document does not name. Secrets sent back as `****` keep the stored value.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::api_key;
use shared::snapshot::{SnapshotConfig, ToolNaming, validate_config_servers};
use shared::{RateLimit, ServerSpec};
use sqlx::AnyConnection;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::configs::{self, ServerRules};
use crate::api::users::valid_email;
use crate::error::{ApiError, Problem, ReadErrors, WriteErrors};
use crate::json::JsonBody;
use crate::rate_limits;
use crate::secrets::SecretBox;
use crate::store::{Store, current_revision, format_time, now};

/// The whole document.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateDocument {
    /// Where editors find this schema (ignored).
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    #[serde(default)]
    pub users: Vec<StateUser>,
    #[serde(default)]
    pub configs: Vec<StateConfig>,
    #[serde(default)]
    pub projects: Vec<StateProject>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateUser {
    pub email: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// 1-64 letters, digits, `_` or `-`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tool_naming: ToolNaming,
    /// The config's servers, in order (the same entries as the admin API's).
    #[serde(default)]
    pub servers: Vec<ServerSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateProject {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Name of the MCP config the project uses (none: its keys reach no tools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_config: Option<String>,
    /// Tool calls through all of the project's keys together (absent: no project-wide limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// E-mails of the members.
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default)]
    pub keys: Vec<StateKey>,
}

/// A key, by name within its project. Apply creates it when missing; of an existing one it changes
/// only the rate limit, and never shows or rotates it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateKey {
    pub name: String,
    /// E-mail of the member holding it.
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Tool calls with this key (absent: no limit of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApplyQuery {
    /// Also delete users, configs, projects, members and keys the document does not name.
    pub prune: Option<bool>,
    /// Refuse (409) unless the state is still at this revision (the one the plan showed).
    pub expected_revision: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeAction {
    Create,
    Update,
    Delete,
}

/// One change a document makes.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Change {
    pub action: ChangeAction,
    /// `user`, `config`, `project`, `member` or `key`.
    pub kind: String,
    /// The e-mail or name; `project/e-mail` for a member, `project/name` for a key.
    pub name: String,
    /// For an update: the fields that change (`servers/<name>` for a server added, changed or removed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Plan {
    /// The revision the plan was made at (pass it as `expected_revision`).
    pub revision: u64,
    pub changes: Vec<Change>,
}

/// A key apply created; shown only here.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    pub name: String,
    pub project: String,
    pub id: String,
    pub key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Applied {
    /// The new revision, or the unchanged one when there was nothing to do.
    pub revision: u64,
    pub changes: Vec<Change>,
    pub created_keys: Vec<CreatedKey>,
}

// ---- what is stored now ----

struct CurrentKey {
    id: String,
    name: Option<String>,
    user_email: String,
    expires_at: Option<String>,
    rate_limit: Option<RateLimit>,
}

struct CurrentProject {
    id: String,
    description: String,
    config: Option<String>,
    /// Lower-case e-mail -> (user id, e-mail).
    members: BTreeMap<String, (String, String)>,
    keys: Vec<CurrentKey>,
    rate_limit: Option<RateLimit>,
}

struct CurrentConfig {
    id: String,
    description: String,
    tool_naming: ToolNaming,
    servers: Vec<ServerSpec>,
}

struct Current {
    revision: u64,
    /// Lower-case e-mail -> (id, e-mail as stored).
    users: BTreeMap<String, (String, String)>,
    configs: BTreeMap<String, CurrentConfig>,
    projects: BTreeMap<String, CurrentProject>,
}

async fn current(conn: &mut AnyConnection, secrets: &SecretBox) -> Result<Current, ApiError> {
    let revision = current_revision(&mut *conn).await?;
    let users: Vec<(String, String)> = sqlx::query_as("SELECT id, email FROM users").fetch_all(&mut *conn).await?;
    let users: BTreeMap<String, (String, String)> =
        users.into_iter().map(|(id, email)| (email.to_lowercase(), (id, email))).collect();
    let by_id: HashMap<&str, &str> = users.values().map(|(id, email)| (id.as_str(), email.as_str())).collect();

    let rows: Vec<(String, String, String, String)> =
        sqlx::query_as("SELECT id, name, description, tool_naming FROM mcp_configs").fetch_all(&mut *conn).await?;
    let mut configs = BTreeMap::new();
    let mut config_names = HashMap::new();
    for (id, name, description, naming) in rows {
        let servers = configs::servers(&mut *conn, secrets, &id).await?;
        let tool_naming = if naming == "bare" { ToolNaming::Bare } else { ToolNaming::Prefixed };
        config_names.insert(id.clone(), name.clone());
        configs.insert(name, CurrentConfig { id, description, tool_naming, servers });
    }

    #[derive(sqlx::FromRow)]
    struct ProjectRow {
        id: String,
        name: String,
        description: String,
        mcp_config_id: Option<String>,
        rate_limit: Option<String>,
    }
    let rows: Vec<ProjectRow> = sqlx::query_as("SELECT id, name, description, mcp_config_id, rate_limit FROM projects")
        .fetch_all(&mut *conn)
        .await?;
    let members: Vec<(String, String)> =
        sqlx::query_as("SELECT project_id, user_id FROM project_members").fetch_all(&mut *conn).await?;
    #[derive(sqlx::FromRow)]
    struct KeyRow {
        id: String,
        project_id: String,
        name: Option<String>,
        user_id: String,
        expires_at: Option<String>,
        rate_limit: Option<String>,
    }
    let keys: Vec<KeyRow> =
        sqlx::query_as("SELECT id, project_id, name, user_id, expires_at, rate_limit FROM api_keys ORDER BY id")
            .fetch_all(&mut *conn)
            .await?;
    let mut projects = BTreeMap::new();
    let mut project_names = HashMap::new();
    for ProjectRow { id, name, description, mcp_config_id, rate_limit } in rows {
        let config = mcp_config_id.and_then(|c| config_names.get(&c).cloned());
        let rate_limit = rate_limits::from_column(rate_limit.as_deref())?;
        project_names.insert(id.clone(), name.clone());
        let (members, keys) = (BTreeMap::new(), Vec::new());
        projects.insert(name, CurrentProject { id, description, config, members, keys, rate_limit });
    }
    for (project_id, user_id) in members {
        if let (Some(p), Some(email)) = (project_names.get(&project_id), by_id.get(user_id.as_str()))
            && let Some(project) = projects.get_mut(p)
        {
            project.members.insert(email.to_lowercase(), (user_id.clone(), email.to_string()));
        }
    }
    for k in keys {
        if let (Some(p), Some(email)) = (project_names.get(&k.project_id), by_id.get(k.user_id.as_str()))
            && let Some(project) = projects.get_mut(p)
        {
            let user_email = email.to_string();
            let rate_limit = rate_limits::from_column(k.rate_limit.as_deref())?;
            project.keys.push(CurrentKey { id: k.id, name: k.name, user_email, expires_at: k.expires_at, rate_limit });
        }
    }
    Ok(Current { revision, users, configs, projects })
}

// ---- reading and checking a document ----

/// Parses the document, reporting every problem with a JSON pointer; `****` secrets of servers that
/// exist are filled in from the stored ones.
fn parse(doc: Value, current: &Current, rules: &ServerRules, prune: bool) -> Result<StateDocument, ApiError> {
    let mut problems = Vec::new();
    let mut add = |pointer: String, message: String| problems.push(Problem { pointer, message });
    let Value::Object(mut top) = doc else {
        return Err(ApiError::InvalidDocument(vec![Problem {
            pointer: String::new(),
            message: "the document must be an object with `users`, `configs` and `projects`".into(),
        }]));
    };
    for key in top.keys() {
        if !matches!(key.as_str(), "users" | "configs" | "projects" | "$schema") {
            add(format!("/{}", escape(key)), "unknown field (expected users, configs, projects)".into());
        }
    }
    let list = |top: &mut serde_json::Map<String, Value>, field: &str, add: &mut dyn FnMut(String, String)| match top
        .remove(field)
    {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            add(format!("/{field}"), "must be a list".into());
            Vec::new()
        }
    };
    let mut doc = StateDocument::default();

    let mut emails = BTreeSet::new();
    for (i, item) in list(&mut top, "users", &mut add).into_iter().enumerate() {
        match serde_json::from_value::<StateUser>(item) {
            Err(e) => add(format!("/users/{i}"), e.to_string()),
            Ok(mut u) => match valid_email(&u.email) {
                Err(e) => add(format!("/users/{i}/email"), e.to_string()),
                Ok(email) if !emails.insert(email.to_lowercase()) => {
                    add(format!("/users/{i}/email"), format!("`{email}` is listed twice"))
                }
                Ok(email) => {
                    u.email = email;
                    doc.users.push(u);
                }
            },
        }
    }

    let mut config_names = BTreeSet::new();
    for (i, item) in list(&mut top, "configs", &mut add).into_iter().enumerate() {
        let at = format!("/configs/{i}");
        let Value::Object(mut fields) = item else {
            add(at, "must be an object".into());
            continue;
        };
        let servers = match fields.remove("servers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items,
            Some(_) => {
                add(format!("{at}/servers"), "must be a list".into());
                Vec::new()
            }
        };
        let mut config = match serde_json::from_value::<StateConfig>(Value::Object(fields)) {
            Ok(c) => c,
            Err(e) => {
                add(at, e.to_string());
                continue;
            }
        };
        if !shared::server::is_valid_name(&config.name) {
            add(format!("{at}/name"), "must be 1-64 characters of letters, digits, `_` or `-`".into());
        } else if !config_names.insert(config.name.clone()) {
            add(format!("{at}/name"), format!("`{}` is listed twice", config.name));
        }
        if config.description.len() > 4096 {
            add(format!("{at}/description"), "must be at most 4096 characters".into());
        }
        if servers.len() > configs::MAX_SERVERS {
            add(format!("{at}/servers"), format!("a config holds at most {} servers", configs::MAX_SERVERS));
        }
        let stored = current.configs.get(&config.name);
        let mut usable = true;
        for (j, item) in servers.into_iter().enumerate() {
            let at = format!("{at}/servers/{j}");
            let mut spec = match serde_json::from_value::<ServerSpec>(item) {
                Ok(s) => s,
                Err(e) => {
                    add(at, e.to_string());
                    usable = false;
                    continue;
                }
            };
            let previous = stored.and_then(|c| c.servers.iter().find(|s| s.server_name == spec.server_name));
            if let Err(e) = spec.keep_masked_secrets(previous) {
                add(format!("{at}/{}", e.field.replace('.', "/")), e.message);
                usable = false;
            }
            if let Err(errors) = spec.validate_with(rules.remote_provider) {
                for e in errors {
                    add(format!("{at}/{}", e.field.replace('.', "/")), e.message);
                }
                usable = false;
            }
            if let Err(e) = rules.check_command(&spec) {
                add(format!("{at}/config/command"), e.to_string());
                usable = false;
            }
            config.servers.push(spec);
        }
        if usable {
            let whole = SnapshotConfig {
                id: Uuid::nil(),
                name: config.name.clone(),
                tool_naming: config.tool_naming,
                servers: config.servers.clone(),
                pins: vec![],
                oauth_tokens: vec![],
            };
            if let Err(e) = validate_config_servers(&whole) {
                add(format!("{at}/{}", e.field.replace('.', "/")), e.message);
            }
        }
        doc.configs.push(config);
    }

    // What a project may refer to: what the document names, and (unless pruned away) what exists.
    let known_config = |name: &str| config_names.contains(name) || (!prune && current.configs.contains_key(name));
    let known_user = |email: &str| {
        emails.contains(&email.to_lowercase()) || (!prune && current.users.contains_key(&email.to_lowercase()))
    };
    let mut project_names = BTreeSet::new();
    for (i, item) in list(&mut top, "projects", &mut add).into_iter().enumerate() {
        let at = format!("/projects/{i}");
        let project = match serde_json::from_value::<StateProject>(item) {
            Ok(p) => p,
            Err(e) => {
                add(at, e.to_string());
                continue;
            }
        };
        if !shared::server::is_valid_name(&project.name) {
            add(format!("{at}/name"), "must be 1-64 characters of letters, digits, `_` or `-`".into());
        } else if !project_names.insert(project.name.clone()) {
            add(format!("{at}/name"), format!("`{}` is listed twice", project.name));
        }
        if project.description.len() > 4096 {
            add(format!("{at}/description"), "must be at most 4096 characters".into());
        }
        for e in project.rate_limit.iter().flat_map(|l| l.problems("rate_limit")) {
            add(format!("{at}/{}", e.field.replace('.', "/")), e.message);
        }
        if let Some(config) = &project.mcp_config
            && !known_config(config)
        {
            add(format!("{at}/mcp_config"), format!("no config named `{config}` in the document or the gateway"));
        }
        let stored = current.projects.get(&project.name);
        let mut members = BTreeSet::new();
        for (j, email) in project.members.iter().enumerate() {
            if !known_user(email) {
                add(format!("{at}/members/{j}"), format!("no user `{email}` in the document or the gateway"));
            } else if !members.insert(email.to_lowercase()) {
                add(format!("{at}/members/{j}"), format!("`{email}` is listed twice"));
            }
        }
        // A key's holder must be a member once the document is applied.
        let member_after = |email: &str| {
            let email = email.to_lowercase();
            members.contains(&email) || (!prune && stored.is_some_and(|p| p.members.contains_key(&email)))
        };
        let mut key_names = BTreeSet::new();
        for (j, key) in project.keys.iter().enumerate() {
            let at = format!("{at}/keys/{j}");
            if key.name.trim().is_empty() || key.name.len() > 128 || key.name.chars().any(char::is_control) {
                add(format!("{at}/name"), "must be 1-128 printable characters".into());
            } else if !key_names.insert(key.name.clone()) {
                add(format!("{at}/name"), format!("`{}` is listed twice", key.name));
            }
            for e in key.rate_limit.iter().flat_map(|l| l.problems("rate_limit")) {
                add(format!("{at}/{}", e.field.replace('.', "/")), e.message);
            }
            if !member_after(&key.user) {
                add(format!("{at}/user"), format!("`{}` is not a member of `{}`", key.user, project.name));
            }
            let existing = stored.and_then(|p| p.keys.iter().find(|k| k.name.as_deref() == Some(key.name.as_str())));
            match existing {
                Some(k) if !k.user_email.eq_ignore_ascii_case(&key.user) => add(
                    format!("{at}/user"),
                    format!(
                        "key `{}` exists and belongs to `{}`; keys are never moved (rename it)",
                        key.name, k.user_email
                    ),
                ),
                None if key.expires_at.is_some_and(|e| e <= Utc::now()) => {
                    add(format!("{at}/expires_at"), "must be in the future".into())
                }
                _ => {}
            }
        }
        doc.projects.push(project);
    }
    if problems.is_empty() { Ok(doc) } else { Err(ApiError::InvalidDocument(problems)) }
}

/// A JSON pointer segment (RFC 6901).
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

// ---- the difference ----

fn change(action: ChangeAction, kind: &str, name: impl Into<String>, fields: Vec<String>) -> Change {
    Change { action, kind: kind.into(), name: name.into(), fields }
}

/// What applying `doc` to `current` changes, in the order it is done.
fn diff(doc: &StateDocument, current: &Current, prune: bool) -> Vec<Change> {
    use ChangeAction::*;
    let mut out = Vec::new();
    for u in &doc.users {
        if !current.users.contains_key(&u.email.to_lowercase()) {
            out.push(change(Create, "user", &u.email, vec![]));
        }
    }
    for c in &doc.configs {
        match current.configs.get(&c.name) {
            None => out.push(change(Create, "config", &c.name, vec![])),
            Some(stored) => {
                let mut fields = Vec::new();
                if stored.description != c.description {
                    fields.push("description".into());
                }
                if stored.tool_naming != c.tool_naming {
                    fields.push("tool_naming".into());
                }
                for s in &c.servers {
                    if stored.servers.iter().find(|p| p.server_name == s.server_name) != Some(s) {
                        fields.push(format!("servers/{}", s.server_name));
                    }
                }
                for s in &stored.servers {
                    if !c.servers.iter().any(|n| n.server_name == s.server_name) {
                        fields.push(format!("servers/{}", s.server_name));
                    }
                }
                let order = |servers: &[ServerSpec]| servers.iter().map(|s| s.server_name.clone()).collect::<Vec<_>>();
                if fields.is_empty() && order(&stored.servers) != order(&c.servers) {
                    fields.push("servers (order)".into());
                }
                if !fields.is_empty() {
                    out.push(change(Update, "config", &c.name, fields));
                }
            }
        }
    }
    for p in &doc.projects {
        let stored = current.projects.get(&p.name);
        match stored {
            None => out.push(change(Create, "project", &p.name, vec![])),
            Some(s) => {
                let mut fields = Vec::new();
                if s.description != p.description {
                    fields.push("description".into());
                }
                if s.config != p.mcp_config {
                    fields.push("mcp_config".into());
                }
                if s.rate_limit != p.rate_limit {
                    fields.push("rate_limit".into());
                }
                if !fields.is_empty() {
                    out.push(change(Update, "project", &p.name, fields));
                }
            }
        }
        for m in &p.members {
            if !stored.is_some_and(|s| s.members.contains_key(&m.to_lowercase())) {
                out.push(change(Create, "member", format!("{}/{m}", p.name), vec![]));
            }
        }
        for k in &p.keys {
            match stored_key(stored, &k.name) {
                None => out.push(change(Create, "key", format!("{}/{}", p.name, k.name), vec![])),
                Some(e) if e.rate_limit != k.rate_limit => {
                    out.push(change(Update, "key", format!("{}/{}", p.name, k.name), vec!["rate_limit".into()]))
                }
                Some(_) => {}
            }
        }
    }
    if !prune {
        return out;
    }
    let in_doc = |name: &str| doc.projects.iter().find(|p| p.name == name);
    for (name, stored) in &current.projects {
        let Some(p) = in_doc(name) else { continue };
        for k in &stored.keys {
            if !k.name.as_deref().is_some_and(|n| p.keys.iter().any(|d| d.name == n)) {
                out.push(change(Delete, "key", format!("{name}/{}", k.name.as_deref().unwrap_or(&k.id)), vec![]));
            }
        }
        for (lower, (_, email)) in &stored.members {
            if !p.members.iter().any(|m| m.to_lowercase() == *lower) {
                out.push(change(Delete, "member", format!("{name}/{email}"), vec![]));
            }
        }
    }
    for name in current.projects.keys() {
        if in_doc(name).is_none() {
            out.push(change(Delete, "project", name, vec![]));
        }
    }
    for name in current.configs.keys() {
        if !doc.configs.iter().any(|c| &c.name == name) {
            out.push(change(Delete, "config", name, vec![]));
        }
    }
    for (lower, (_, email)) in &current.users {
        if !doc.users.iter().any(|u| u.email.to_lowercase() == *lower) {
            out.push(change(Delete, "user", email, vec![]));
        }
    }
    out
}

/// The stored key of that name in the stored project, if both exist.
fn stored_key<'a>(project: Option<&'a CurrentProject>, name: &str) -> Option<&'a CurrentKey> {
    project.and_then(|p| p.keys.iter().find(|k| k.name.as_deref() == Some(name)))
}

// ---- making the changes ----

/// Writes every change of `doc` inside the caller's transaction.
async fn execute(
    conn: &mut AnyConnection,
    secrets: &SecretBox,
    doc: &StateDocument,
    current: &Current,
    prune: bool,
    hashes: &HashMap<(String, String), (String, String, String)>,
) -> Result<Vec<CreatedKey>, ApiError> {
    let ts = now();
    let mut user_ids: HashMap<String, String> =
        current.users.iter().map(|(lower, (id, _))| (lower.clone(), id.clone())).collect();
    for u in &doc.users {
        if let std::collections::hash_map::Entry::Vacant(slot) = user_ids.entry(u.email.to_lowercase()) {
            let id = Uuid::new_v4().to_string();
            sqlx::query("INSERT INTO users (id, email, created_at, updated_at) VALUES ($1, $2, $3, $3)")
                .bind(&id)
                .bind(&u.email)
                .bind(&ts)
                .execute(&mut *conn)
                .await?;
            slot.insert(id);
        }
    }

    let mut config_ids: HashMap<String, String> =
        current.configs.iter().map(|(name, c)| (name.clone(), c.id.clone())).collect();
    for c in &doc.configs {
        let naming = if c.tool_naming == ToolNaming::Bare { "bare" } else { "prefixed" };
        match current.configs.get(&c.name) {
            None => {
                let id = Uuid::new_v4().to_string();
                sqlx::query(
                    "INSERT INTO mcp_configs (id, name, description, tool_naming, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $5)",
                )
                .bind(&id)
                .bind(&c.name)
                .bind(&c.description)
                .bind(naming)
                .bind(&ts)
                .execute(&mut *conn)
                .await?;
                for s in &c.servers {
                    configs::insert_server(&mut *conn, secrets, &id, s).await?;
                }
                config_ids.insert(c.name.clone(), id);
            }
            Some(stored) => {
                let unchanged = stored.description == c.description
                    && stored.tool_naming == c.tool_naming
                    && stored.servers == c.servers;
                if unchanged {
                    continue;
                }
                sqlx::query("UPDATE mcp_configs SET description = $1, tool_naming = $2, updated_at = $3 WHERE id = $4")
                    .bind(&c.description)
                    .bind(naming)
                    .bind(&ts)
                    .bind(&stored.id)
                    .execute(&mut *conn)
                    .await?;
                replace_servers(&mut *conn, secrets, &stored.id, &stored.servers, &c.servers).await?;
            }
        }
    }

    let mut created_keys = Vec::new();
    for p in &doc.projects {
        let config_id = p.mcp_config.as_ref().and_then(|c| config_ids.get(c)).cloned();
        let stored = current.projects.get(&p.name);
        let project_id = match stored {
            None => {
                let id = Uuid::new_v4().to_string();
                sqlx::query(
                    "INSERT INTO projects (id, name, description, mcp_config_id, created_at, updated_at, rate_limit) \
                     VALUES ($1, $2, $3, $4, $5, $5, $6)",
                )
                .bind(&id)
                .bind(&p.name)
                .bind(&p.description)
                .bind(&config_id)
                .bind(&ts)
                .bind(rate_limits::to_column(p.rate_limit.as_ref())?)
                .execute(&mut *conn)
                .await?;
                id
            }
            Some(s) => {
                if s.description != p.description || s.config != p.mcp_config || s.rate_limit != p.rate_limit {
                    sqlx::query(
                        "UPDATE projects SET description = $1, mcp_config_id = $2, rate_limit = $3, updated_at = $4 \
                         WHERE id = $5",
                    )
                    .bind(&p.description)
                    .bind(&config_id)
                    .bind(rate_limits::to_column(p.rate_limit.as_ref())?)
                    .bind(&ts)
                    .bind(&s.id)
                    .execute(&mut *conn)
                    .await?;
                }
                s.id.clone()
            }
        };
        for m in &p.members {
            let lower = m.to_lowercase();
            if stored.is_some_and(|s| s.members.contains_key(&lower)) {
                continue;
            }
            let user_id = user_ids.get(&lower).ok_or_else(|| ApiError::Internal(format!("user {m} vanished")))?;
            sqlx::query("INSERT INTO project_members (project_id, user_id, added_at) VALUES ($1, $2, $3)")
                .bind(&project_id)
                .bind(user_id)
                .bind(&ts)
                .execute(&mut *conn)
                .await?;
        }
        for k in &p.keys {
            if let Some(e) = stored_key(stored, &k.name) {
                if e.rate_limit != k.rate_limit {
                    sqlx::query("UPDATE api_keys SET rate_limit = $1 WHERE id = $2")
                        .bind(rate_limits::to_column(k.rate_limit.as_ref())?)
                        .bind(&e.id)
                        .execute(&mut *conn)
                        .await?;
                }
                continue;
            }
            let (id, secret, hash) = hashes
                .get(&(p.name.clone(), k.name.clone()))
                .ok_or_else(|| ApiError::Conflict("the state changed while applying; plan again".into()))?;
            let user_id =
                user_ids.get(&k.user.to_lowercase()).ok_or_else(|| ApiError::Internal("key holder vanished".into()))?;
            sqlx::query(
                "INSERT INTO api_keys (id, project_id, user_id, name, hash, created_at, expires_at, rate_limit) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(id)
            .bind(&project_id)
            .bind(user_id)
            .bind(&k.name)
            .bind(hash)
            .bind(&ts)
            .bind(k.expires_at.map(format_time))
            .bind(rate_limits::to_column(k.rate_limit.as_ref())?)
            .execute(&mut *conn)
            .await?;
            created_keys.push(CreatedKey {
                name: k.name.clone(),
                project: p.name.clone(),
                id: id.clone(),
                key: secret.clone(),
            });
        }
    }

    if prune {
        prune_absent(conn, doc, current).await?;
    }
    Ok(created_keys)
}

/// Brings a config's servers to `wanted`: unchanged rows stay (with their tokens), changed ones are
/// rewritten (tokens dropped when the authority changes), missing ones added, others removed; then the
/// order is the document's.
async fn replace_servers(
    conn: &mut AnyConnection,
    secrets: &SecretBox,
    config_id: &str,
    stored: &[ServerSpec],
    wanted: &[ServerSpec],
) -> Result<(), ApiError> {
    for s in stored {
        if !wanted.iter().any(|w| w.server_name == s.server_name) {
            for sql in [
                "DELETE FROM servers WHERE config_id = $1 AND name = $2",
                "DELETE FROM tool_pins WHERE config_id = $1 AND server = $2",
            ] {
                sqlx::query(sql).bind(config_id).bind(&s.server_name).execute(&mut *conn).await?;
            }
        }
    }
    for w in wanted {
        match stored.iter().find(|s| s.server_name == w.server_name) {
            None => configs::insert_server(&mut *conn, secrets, config_id, w).await?,
            Some(s) if s == w => {}
            Some(s) => {
                let (spec, sealed) = secrets.seal_spec(w)?;
                sqlx::query(
                    "UPDATE servers SET spec = $1, sealed = $2, updated_at = $3 WHERE config_id = $4 AND name = $5",
                )
                .bind(spec)
                .bind(sealed)
                .bind(now())
                .bind(config_id)
                .bind(&w.server_name)
                .execute(&mut *conn)
                .await?;
                if !crate::upstream_oauth::same_authority(s, w) {
                    sqlx::query("DELETE FROM oauth_tokens WHERE config_id = $1 AND server = $2")
                        .bind(config_id)
                        .bind(&w.server_name)
                        .execute(&mut *conn)
                        .await?;
                }
            }
        }
    }
    for (position, w) in wanted.iter().enumerate() {
        sqlx::query("UPDATE servers SET position = $1 WHERE config_id = $2 AND name = $3")
            .bind(position as i64 + 1)
            .bind(config_id)
            .bind(&w.server_name)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// With `prune`: deletes keys, members, projects, configs and users the document does not name.
async fn prune_absent(conn: &mut AnyConnection, doc: &StateDocument, current: &Current) -> Result<(), ApiError> {
    for (name, stored) in &current.projects {
        match doc.projects.iter().find(|p| &p.name == name) {
            None => {
                sqlx::query("DELETE FROM api_keys WHERE project_id = $1").bind(&stored.id).execute(&mut *conn).await?;
                sqlx::query("DELETE FROM projects WHERE id = $1").bind(&stored.id).execute(&mut *conn).await?;
            }
            Some(p) => {
                for k in &stored.keys {
                    if !k.name.as_deref().is_some_and(|n| p.keys.iter().any(|d| d.name == n)) {
                        sqlx::query("DELETE FROM api_keys WHERE id = $1").bind(&k.id).execute(&mut *conn).await?;
                    }
                }
                for (lower, (user_id, _)) in &stored.members {
                    if !p.members.iter().any(|m| m.to_lowercase() == *lower) {
                        for sql in [
                            "DELETE FROM api_keys WHERE project_id = $1 AND user_id = $2",
                            "DELETE FROM project_members WHERE project_id = $1 AND user_id = $2",
                        ] {
                            sqlx::query(sql).bind(&stored.id).bind(user_id).execute(&mut *conn).await?;
                        }
                    }
                }
            }
        }
    }
    for (name, stored) in &current.configs {
        if !doc.configs.iter().any(|c| &c.name == name) {
            sqlx::query("DELETE FROM mcp_configs WHERE id = $1").bind(&stored.id).execute(&mut *conn).await?;
        }
    }
    for (lower, (id, _)) in &current.users {
        if !doc.users.iter().any(|u| u.email.to_lowercase() == *lower) {
            for sql in [
                "DELETE FROM api_keys WHERE user_id = $1",
                "DELETE FROM project_members WHERE user_id = $1",
                "DELETE FROM users WHERE id = $1",
            ] {
                sqlx::query(sql).bind(id).execute(&mut *conn).await?;
            }
        }
    }
    Ok(())
}

/// New keys of `changes`, generated and argon2-hashed before the write lock is taken.
async fn new_keys(changes: &[Change]) -> Result<HashMap<(String, String), (String, String, String)>, ApiError> {
    let wanted: Vec<(String, String)> = changes
        .iter()
        .filter(|c| c.kind == "key" && c.action == ChangeAction::Create)
        .filter_map(|c| c.name.split_once('/').map(|(p, k)| (p.to_string(), k.to_string())))
        .collect();
    tokio::task::spawn_blocking(move || {
        wanted
            .into_iter()
            .map(|name| {
                let key = api_key::generate();
                let hash = api_key::hash(&key.secret).map_err(|e| ApiError::Internal(e.to_string()))?;
                Ok((name, (key.id, key.secret, hash)))
            })
            .collect()
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}

// ---- routes ----

#[utoipa::path(post, path = "/api/v1/state/plan", tag = "state", params(ApplyQuery),
    request_body(content = StateDocument, description = "The desired state"),
    responses((status = 200, description = "What applying the document would change; nothing is written", body = Plan), WriteErrors))]
#[post("/state/plan")]
pub async fn plan(
    store: web::Data<Store>,
    rules: web::Data<ServerRules>,
    q: web::Query<ApplyQuery>,
    JsonBody(doc): JsonBody<Value>,
) -> Result<HttpResponse, ApiError> {
    let prune = q.prune.unwrap_or(false);
    let mut tx = store.begin_consistent_read().await?;
    let current = current(&mut tx, &store.secrets).await?;
    let doc = parse(doc, &current, &rules, prune)?;
    Ok(HttpResponse::Ok().json(Plan { revision: current.revision, changes: diff(&doc, &current, prune) }))
}

#[utoipa::path(post, path = "/api/v1/state/apply", tag = "state", params(ApplyQuery),
    request_body(content = StateDocument, description = "The desired state"),
    responses((status = 200, description = "Applied in one revision (created keys are shown only here)", body = Applied), WriteErrors))]
#[post("/state/apply")]
pub async fn apply(
    store: web::Data<Store>,
    rules: web::Data<ServerRules>,
    q: web::Query<ApplyQuery>,
    JsonBody(doc): JsonBody<Value>,
) -> Result<HttpResponse, ApiError> {
    let prune = q.prune.unwrap_or(false);
    let before = {
        let mut tx = store.begin_consistent_read().await?;
        current(&mut tx, &store.secrets).await?
    };
    let planned = diff(&parse(doc.clone(), &before, &rules, prune)?, &before, prune);
    let hashes = new_keys(&planned).await?;
    let mut w = store.begin_write().await?;
    // Checked again under the write lock: the state is what the document is compared with.
    let current = current(&mut w.tx, &store.secrets).await?;
    if let Some(expected) = q.expected_revision
        && expected != current.revision
    {
        return Err(ApiError::Conflict(format!(
            "the state is at revision {}, not {expected}: it changed since the plan; plan again",
            current.revision
        )));
    }
    let doc = parse(doc, &current, &rules, prune)?;
    let changes = diff(&doc, &current, prune);
    if changes.is_empty() {
        return Ok(HttpResponse::Ok().json(Applied { revision: current.revision, changes, created_keys: vec![] }));
    }
    let created_keys = execute(&mut w.tx, &store.secrets, &doc, &current, prune, &hashes).await?;
    let revision = w.commit("apply", "state", &format!("{} changes", changes.len())).await?;
    Ok(HttpResponse::Ok().json(Applied { revision, changes, created_keys }))
}

#[utoipa::path(get, path = "/api/v1/state", tag = "state",
    responses((status = 200, description = "The current state as a document (secrets masked as `****`; keys without a name are left out)", body = StateDocument), ReadErrors))]
#[get("/state")]
pub async fn export(store: web::Data<Store>) -> Result<HttpResponse, ApiError> {
    let mut tx = store.begin_consistent_read().await?;
    let current = current(&mut tx, &store.secrets).await?;
    let doc = StateDocument {
        schema: None,
        users: current.users.values().map(|(_, email)| StateUser { email: email.clone() }).collect(),
        configs: current
            .configs
            .iter()
            .map(|(name, c)| StateConfig {
                name: name.clone(),
                description: c.description.clone(),
                tool_naming: c.tool_naming,
                servers: c.servers.iter().map(ServerSpec::with_secrets_masked).collect(),
            })
            .collect(),
        projects: current
            .projects
            .iter()
            .map(|(name, p)| StateProject {
                name: name.clone(),
                description: p.description.clone(),
                mcp_config: p.config.clone(),
                members: p.members.values().map(|(_, email)| email.clone()).collect(),
                rate_limit: p.rate_limit,
                keys: p
                    .keys
                    .iter()
                    .filter_map(|k| {
                        Some(StateKey {
                            name: k.name.clone()?,
                            user: k.user_email.clone(),
                            expires_at: k.expires_at.as_deref().map(crate::store::time),
                            rate_limit: k.rate_limit,
                        })
                    })
                    .collect(),
            })
            .collect(),
    };
    Ok(HttpResponse::Ok().json(doc))
}

#[utoipa::path(get, path = "/api/v1/schema/state", tag = "state",
    responses((status = 200, description = "JSON Schema (2020-12) of the state document", content_type = "application/schema+json", body = Object), ReadErrors))]
#[get("/schema/state")]
pub async fn document_schema() -> HttpResponse {
    HttpResponse::Ok().content_type("application/schema+json").body(schema_json())
}

/// The JSON Schema of [`StateDocument`], from the same definitions as the OpenAPI document (as
/// committed in `deploy/mcpgw-state.schema.json`).
pub fn schema_json() -> String {
    const REF: &str = "#/components/schemas/";
    let openapi = crate::openapi::document();
    let all: BTreeMap<String, Value> = openapi
        .components
        .iter()
        .flat_map(|c| c.schemas.iter())
        .map(|(name, schema)| (name.clone(), serde_json::to_value(schema).unwrap_or(Value::Null)))
        .collect();
    // Only the definitions the document reaches.
    let mut defs = serde_json::Map::new();
    let mut todo = vec!["StateDocument".to_string()];
    while let Some(name) = todo.pop() {
        if defs.contains_key(&name) {
            continue;
        }
        let Some(schema) = all.get(&name) else { continue };
        let text = schema.to_string();
        for part in text.split(REF).skip(1) {
            todo.push(part.split('"').next().unwrap_or_default().to_string());
        }
        defs.insert(name, schema.clone());
    }
    let schema = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "mcpgw state document",
        "$ref": "#/$defs/StateDocument",
        "$defs": defs,
    });
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default().replace(REF, "#/$defs/");
    text.push('\n');
    text
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(plan).service(apply).service(export).service(document_schema);
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_state_schema_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/mcpgw-state.schema.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == super::schema_json(),
            "deploy/mcpgw-state.schema.json is stale; regenerate it with \
             `cargo run -p mcpgw --bin control-plane -- state-schema > deploy/mcpgw-state.schema.json`"
        );
    }

    #[test]
    fn the_schema_describes_the_document_and_its_server_entries() {
        let schema: serde_json::Value = serde_json::from_str(&super::schema_json()).unwrap();
        let defs = schema["$defs"].as_object().unwrap();
        for name in ["StateDocument", "StateConfig", "StateProject", "StateKey", "StateUser", "ServerSpec"] {
            assert!(defs.contains_key(name), "{name} missing");
        }
        assert!(!super::schema_json().contains("#/components/"), "every reference points into $defs");
    }
}
