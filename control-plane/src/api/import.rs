//! Import of the Python gateway's `enkrypt_mcp_config.json` (its 2.1 and 2.2 shapes), and export of
//! one config for backup and review.
//!
//! Import takes the file's content, never a server-side path. Planning is pure: the file is read
//! into users, configs, projects and keys in our model, noting every rename and everything that
//! cannot be carried over. Applying the plan runs in one transaction and matches what exists by
//! e-mail, name or key id, so importing the same file twice creates nothing the second time. A dry
//! run applies the plan and rolls it back, so it reports exactly what a real import would do.
//!
//! The file holds its client keys in plaintext. They are stored as argon2 hashes under an id
//! derived from the key ([`api_key::imported_key_id`]), so clients keep working with their keys.

use std::collections::{HashMap, HashSet};

use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use shared::ServerSpec;
use shared::api_key;
use shared::server::{BUILTIN_DETECTORS, REMOTE_DETECTORS};
use shared::snapshot::ToolNaming;
use sqlx::AnyConnection;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::configs::ServerRules;
use crate::api::{configs, users};
use crate::error::{ApiError, ReadErrors, WriteErrors};
use crate::json::JsonBody;
use crate::secrets::SecretBox;
use crate::store::{Store, now};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// Report what would be done without writing anything.
    pub dry_run: Option<bool>,
}

/// What an import did (or, on a dry run, would do).
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportReport {
    pub dry_run: bool,
    /// The config revision the import published; absent on a dry run or when nothing was new.
    pub revision: Option<u64>,
    /// What was (or would be) created.
    pub created: ImportCounts,
    /// One entry per thing found in the file, in the order it was handled.
    pub entries: Vec<ImportEntry>,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ImportCounts {
    pub users: usize,
    pub mcp_configs: usize,
    pub servers: usize,
    pub projects: usize,
    pub members: usize,
    pub api_keys: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImportAction {
    /// Created under the name it had.
    Created,
    /// Created under another name (the original is not a valid name here, or is taken in the file).
    Renamed,
    /// Already here (same e-mail, name or key); left as it is.
    Exists,
    /// Carried over with a change in meaning; `detail` says which.
    Mapped,
    /// Not carried over; `detail` says why.
    Skipped,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImportEntry {
    /// `user`, `mcp_config`, `server`, `project`, `member`, `api_key` or `setting`.
    pub kind: String,
    /// How the file names it (a key by the id it gets here, never by the key itself).
    pub source: String,
    pub action: ImportAction,
    /// What it is called here, when that differs from `source` or it exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ImportEntry {
    fn new(kind: &str, source: impl Into<String>, action: ImportAction) -> Self {
        Self { kind: kind.into(), source: source.into(), action, target: None, detail: None }
    }
    fn target(mut self, t: impl Into<String>) -> Self {
        self.target = Some(t.into());
        self
    }
    fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = Some(d.into());
        self
    }
}

/// A config as exported: secrets masked, in the Python gateway's shape so it reads the same.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigExport {
    pub exported_at: DateTime<Utc>,
    pub mcp_config_id: Uuid,
    pub mcp_config_name: String,
    pub description: String,
    pub tool_naming: ToolNaming,
    /// The servers, with environment values, header values and OAuth secrets replaced by `****`.
    pub mcp_config: Vec<ServerSpec>,
}

// ---- planning: the file in our model, without touching the database ----

struct PlanUser {
    source_id: String,
    email: String,
}

struct PlanConfig {
    source_id: String,
    name: String,
    servers: Vec<ServerSpec>,
}

struct PlanProject {
    name: String,
    config_source_id: Option<String>,
    member_source_ids: Vec<String>,
}

/// A client key from the file. Holds the plaintext only until it is hashed; never printed.
struct PlanKey {
    id: String,
    secret: String,
    project_index: usize,
    user_source_id: String,
    disabled: bool,
}

struct Plan {
    users: Vec<PlanUser>,
    configs: Vec<PlanConfig>,
    projects: Vec<PlanProject>,
    keys: Vec<PlanKey>,
    notes: Vec<ImportEntry>,
}

/// Fields of a Python server entry that have no meaning here (timestamps, the container sandbox).
const DROPPED_SERVER_FIELDS: &[&str] = &["created_at", "updated_at", "sandbox"];
/// Fields of our server model, under the names the Python gateway also uses.
const SERVER_FIELDS: &[&str] = &[
    "server_name",
    "name",
    "description",
    "config",
    "tools",
    "denied_tools",
    "input_guardrails_policy",
    "input_guardrails_config",
    "output_guardrails_policy",
    "output_guardrails_config",
    "enable_server_info_validation",
    "enable_tool_guardrails",
    "pinning",
    "oauth_config",
    "timeouts",
    "per_session",
    "allow_sampling",
    "allow_elicitation",
];

fn object<'a>(file: &'a Map<String, Value>, field: &str) -> Result<Option<&'a Map<String, Value>>, ApiError> {
    match file.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(ApiError::invalid(field, "must be an object keyed by id, as in enkrypt_mcp_config.json")),
    }
}

fn text<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get(field).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// A valid name for `wanted` (letters, digits, `_`, `-`; at most 64), unique among `taken`.
fn fit_name(wanted: &str, fallback: &str, taken: &mut HashSet<String>) -> String {
    let mut base: String =
        wanted.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' }).collect();
    while base.contains("__") {
        base = base.replace("__", "_");
    }
    let base = base.trim_matches('-').chars().take(56).collect::<String>();
    let base = if base.is_empty() { fallback.to_string() } else { base };
    let mut name = base.clone();
    let mut n = 2;
    while !taken.insert(name.to_ascii_lowercase()) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// Reads a guardrail policy of either version into ours; detectors we cannot run are dropped and noted.
fn convert_policy(policy: &Value, remote_provider: bool, notes: &mut Vec<String>, which: &str) -> Value {
    let Some(p) = policy.as_object() else { return Value::Object(Map::new()) };
    let mut out = Map::new();
    out.insert("enabled".into(), Value::Bool(p.get("enabled").and_then(Value::as_bool).unwrap_or(false)));
    if let Some(name) = p.get("policy_name").or_else(|| p.get("guardrail_name")).and_then(Value::as_str) {
        out.insert("policy_name".into(), Value::String(name.into()));
    }
    let mut block = Vec::new();
    for d in p.get("block").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        if BUILTIN_DETECTORS.contains(&d) || (remote_provider && REMOTE_DETECTORS.contains(&d)) {
            block.push(Value::String(d.into()));
        } else if REMOTE_DETECTORS.contains(&d) {
            notes.push(format!("{which}: `{d}` needs a remote guardrail provider, which is not configured; dropped"));
        } else {
            notes.push(format!("{which}: unknown detector `{d}` dropped"));
        }
    }
    out.insert("block".into(), Value::Array(block));
    if let Some(extra) = p.get("additional_config").and_then(Value::as_object) {
        let mut additional = Map::new();
        for (k, v) in extra {
            match k.as_str() {
                "pii_redaction" | "keywords" | "patterns" => {
                    additional.insert(k.clone(), v.clone());
                }
                _ => notes.push(format!("{which}: `additional_config.{k}` is not supported; dropped")),
            }
        }
        out.insert("additional_config".into(), Value::Object(additional));
    }
    if let Some(fail_open) = p.get("fail_open") {
        out.insert("fail_open".into(), fail_open.clone());
    }
    Value::Object(out)
}

/// Reads one Python server entry into our model. `Err` says why it cannot be carried over.
fn convert_server(
    entry: &Value,
    common_tool_guardrails: Option<bool>,
    remote_provider: bool,
    taken: &mut HashSet<String>,
) -> Result<(ServerSpec, Vec<ImportEntry>), String> {
    let raw = entry.as_object().ok_or("a server entry must be an object")?;
    let source = text(entry, "server_name").or_else(|| text(entry, "name")).ok_or("the server has no `server_name`")?;
    let mut notes = Vec::new();
    let mut out = Map::new();
    for (k, v) in raw {
        match k.as_str() {
            "server_name" | "name" => {}
            "input_guardrails_policy" | "input_guardrails_config" => {
                out.insert("input_guardrails_policy".into(), convert_policy(v, remote_provider, &mut notes, "input"));
            }
            "output_guardrails_policy" | "output_guardrails_config" => {
                out.insert("output_guardrails_policy".into(), convert_policy(v, remote_provider, &mut notes, "output"));
            }
            // 2.1: `tool_guardrails_policy`; 2.2: `server_tools_guardrails_config`. Both turn on the
            // registration scan of tool definitions.
            "tool_guardrails_policy" | "server_tools_guardrails_config" => {
                let on = v.get("enabled").and_then(Value::as_bool).unwrap_or(false);
                out.insert("enable_tool_guardrails".into(), Value::Bool(on));
                if on {
                    notes.push(format!("`{k}` mapped to the built-in tool-definition scan (enable_tool_guardrails)"));
                }
            }
            "denied_tools" => {
                // Entries are glob patterns or `{name, reason}`.
                let names: Vec<Value> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d.as_str().or_else(|| d.get("name").and_then(Value::as_str)))
                    .map(|n| Value::String(n.into()))
                    .collect();
                out.insert("denied_tools".into(), Value::Array(names));
            }
            f if DROPPED_SERVER_FIELDS.contains(&f) => {
                if f == "sandbox" && v.get("enabled").and_then(Value::as_bool) == Some(true) {
                    notes.push("`sandbox` is not supported: the server runs as a plain child process".into());
                }
            }
            f if SERVER_FIELDS.contains(&f) => {
                out.insert(k.clone(), v.clone());
            }
            f => notes.push(format!("unknown field `{f}` ignored")),
        }
    }
    if let Some(on) = common_tool_guardrails {
        out.insert("enable_tool_guardrails".into(), Value::Bool(on));
    }
    let name = fit_name(source, "server", taken);
    out.insert("server_name".into(), Value::String(name.clone()));
    let mut spec: ServerSpec = serde_json::from_value(Value::Object(out)).map_err(|e| e.to_string())?;
    if let Err(errs) = spec.validate_with(remote_provider) {
        return Err(errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "));
    }
    // A masked value (an exported config) has nothing stored behind it here.
    spec.keep_masked_secrets(None).map_err(|e| e.to_string())?;
    let mut entries: Vec<ImportEntry> = notes
        .into_iter()
        .map(|n| ImportEntry::new("server", source, ImportAction::Mapped).target(&name).detail(n))
        .collect();
    if name != source {
        entries.push(
            ImportEntry::new("server", source, ImportAction::Renamed)
                .target(&name)
                .detail("server names are letters, digits, `_` or `-` without `__`, unique in their config"),
        );
    }
    Ok((spec, entries))
}

/// The whole file in our model. Fails only when the file is not one (wrong shape at the top), or
/// when it asks for a stdio command the installation does not allow (nothing of it is imported).
fn plan(file: &Map<String, Value>, rules: &ServerRules) -> Result<Plan, ApiError> {
    let remote_provider = rules.remote_provider;
    let (users_in, configs_in, projects_in, keys_in) =
        (object(file, "users")?, object(file, "mcp_configs")?, object(file, "projects")?, object(file, "apikeys")?);
    if users_in.is_none() && configs_in.is_none() && projects_in.is_none() && keys_in.is_none() {
        return Err(ApiError::invalid(
            "body",
            "not an enkrypt_mcp_config.json: it has none of `users`, `mcp_configs`, `projects`, `apikeys`",
        ));
    }
    let mut plan = Plan { users: vec![], configs: vec![], projects: vec![], keys: vec![], notes: vec![] };
    for field in ["admin_apikey", "enkrypt_config", "plugins", "common_mcp_gateway_config"] {
        if file.contains_key(field) {
            plan.notes.push(
                ImportEntry::new("setting", field, ImportAction::Skipped)
                    .detail("gateway-wide settings are not imported; mcpgw is configured with MCPGW_* variables"),
            );
        }
    }

    let mut emails = HashSet::new();
    for (id, user) in users_in.into_iter().flatten() {
        match text(user, "email") {
            Some(email) if users::valid_email(email).is_err() => plan
                .notes
                .push(ImportEntry::new("user", email, ImportAction::Skipped).detail("not a valid e-mail address")),
            Some(email) if emails.insert(email.to_ascii_lowercase()) => {
                plan.users.push(PlanUser { source_id: id.clone(), email: email.to_string() });
            }
            Some(email) => plan.notes.push(
                ImportEntry::new("user", email, ImportAction::Skipped)
                    .detail("the same e-mail appears twice in the file"),
            ),
            None => {
                plan.notes.push(ImportEntry::new("user", id, ImportAction::Skipped).detail("the user has no e-mail"))
            }
        }
    }

    let mut config_names = HashSet::new();
    for (id, config) in configs_in.into_iter().flatten() {
        let source = text(config, "mcp_config_name").unwrap_or(id);
        let name = fit_name(source, "imported", &mut config_names);
        if name != source {
            plan.notes.push(
                ImportEntry::new("mcp_config", source, ImportAction::Renamed)
                    .target(&name)
                    .detail("config names are 1-64 letters, digits, `_` or `-`, unique"),
            );
        }
        // 2.2 copies `common_overrides.server_tools_guardrails_config` onto every server.
        let common =
            config.pointer("/common_overrides/server_tools_guardrails_config/enabled").and_then(Value::as_bool);
        let mut server_names = HashSet::new();
        let mut servers = Vec::new();
        for entry in config.get("mcp_config").and_then(Value::as_array).into_iter().flatten() {
            let label = text(entry, "server_name").unwrap_or("(unnamed)").to_string();
            match convert_server(entry, common, remote_provider, &mut server_names) {
                Ok((spec, notes)) => {
                    rules.check_command(&spec)?;
                    plan.notes.extend(notes);
                    servers.push(spec);
                }
                Err(why) => plan
                    .notes
                    .push(ImportEntry::new("server", format!("{source}/{label}"), ImportAction::Skipped).detail(why)),
            }
        }
        if servers.len() > configs::MAX_SERVERS {
            return Err(ApiError::invalid(
                "mcp_configs",
                format!("config `{source}` has more than {} servers", configs::MAX_SERVERS),
            ));
        }
        plan.configs.push(PlanConfig { source_id: id.clone(), name, servers });
    }

    let mut project_names = HashSet::new();
    let mut project_index = HashMap::new();
    for (id, project) in projects_in.into_iter().flatten() {
        let source = text(project, "project_name").unwrap_or(id);
        let name = fit_name(source, "imported", &mut project_names);
        if name != source {
            plan.notes.push(
                ImportEntry::new("project", source, ImportAction::Renamed)
                    .target(&name)
                    .detail("project names are 1-64 letters, digits, `_` or `-`, unique"),
            );
        }
        let config_source_id = text(project, "mcp_config_id").map(str::to_string);
        let member_source_ids = project
            .get("users")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        project_index.insert(id.clone(), plan.projects.len());
        plan.projects.push(PlanProject { name, config_source_id, member_source_ids });
    }

    for (secret, meta) in keys_in.into_iter().flatten() {
        let Some(id) = api_key::lookup_id(secret).map(|id| id.into_owned()) else {
            plan.notes.push(ImportEntry::new("api_key", "(a key)", ImportAction::Skipped).detail(format!(
                "keys must be {}-{} characters; issue the client a new key",
                api_key::MIN_IMPORTED_KEY_LEN,
                api_key::MAX_IMPORTED_KEY_LEN
            )));
            continue;
        };
        let project = text(meta, "project_id").and_then(|p| project_index.get(p).copied());
        let user = text(meta, "user_id");
        match (project, user) {
            (Some(project_index), Some(user)) => plan.keys.push(PlanKey {
                id,
                secret: secret.clone(),
                project_index,
                user_source_id: user.to_string(),
                disabled: meta.get("disabled").and_then(Value::as_bool).unwrap_or(false),
            }),
            _ => plan.notes.push(
                ImportEntry::new("api_key", id, ImportAction::Skipped)
                    .detail("the key names no project or user of the file"),
            ),
        }
    }
    Ok(plan)
}

// ---- applying the plan ----

async fn user_id_by_email(conn: &mut AnyConnection, email: &str) -> Result<Option<String>, ApiError> {
    Ok(sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = lower($1)")
        .bind(email)
        .fetch_optional(conn)
        .await?)
}

async fn config_id_by_name(conn: &mut AnyConnection, name: &str) -> Result<Option<String>, ApiError> {
    Ok(sqlx::query_scalar("SELECT id FROM mcp_configs WHERE name = $1").bind(name).fetch_optional(conn).await?)
}

async fn project_id_by_name(conn: &mut AnyConnection, name: &str) -> Result<Option<String>, ApiError> {
    Ok(sqlx::query_scalar("SELECT id FROM projects WHERE name = $1").bind(name).fetch_optional(conn).await?)
}

async fn is_member(conn: &mut AnyConnection, project: &str, user: &str) -> Result<bool, ApiError> {
    let hit: Option<i64> = sqlx::query_scalar("SELECT 1 FROM project_members WHERE project_id = $1 AND user_id = $2")
        .bind(project)
        .bind(user)
        .fetch_optional(conn)
        .await?;
    Ok(hit.is_some())
}

async fn add_member(conn: &mut AnyConnection, project: &str, user: &str) -> Result<(), ApiError> {
    sqlx::query("INSERT INTO project_members (project_id, user_id, added_at) VALUES ($1, $2, $3)")
        .bind(project)
        .bind(user)
        .bind(now())
        .execute(conn)
        .await?;
    Ok(())
}

/// Applies the plan inside `conn`'s transaction. `hashes` holds the argon2 hash of every key to
/// create (absent on a dry run, where nothing is kept anyway).
async fn apply(
    conn: &mut AnyConnection,
    secrets: &SecretBox,
    plan: &Plan,
    hashes: &HashMap<String, String>,
    created: &mut ImportCounts,
    entries: &mut Vec<ImportEntry>,
) -> Result<(), ApiError> {
    let ts = now();
    let mut users: HashMap<&str, (String, &str)> = HashMap::new();
    for u in &plan.users {
        let id = match user_id_by_email(conn, &u.email).await? {
            Some(id) => {
                entries.push(ImportEntry::new("user", &u.email, ImportAction::Exists));
                id
            }
            None => {
                let id = Uuid::new_v4().to_string();
                sqlx::query("INSERT INTO users (id, email, created_at, updated_at) VALUES ($1, $2, $3, $4)")
                    .bind(&id)
                    .bind(&u.email)
                    .bind(&ts)
                    .bind(&ts)
                    .execute(&mut *conn)
                    .await?;
                created.users += 1;
                entries.push(ImportEntry::new("user", &u.email, ImportAction::Created));
                id
            }
        };
        users.insert(u.source_id.as_str(), (id, u.email.as_str()));
    }

    let mut config_ids: HashMap<&str, String> = HashMap::new();
    for c in &plan.configs {
        let id = match config_id_by_name(conn, &c.name).await? {
            Some(id) => {
                entries.push(
                    ImportEntry::new("mcp_config", &c.name, ImportAction::Exists)
                        .detail("kept as it is; its servers were not changed"),
                );
                id
            }
            None => {
                let id = Uuid::new_v4().to_string();
                sqlx::query(
                    "INSERT INTO mcp_configs (id, name, description, tool_naming, created_at, updated_at) \
                     VALUES ($1, $2, '', 'prefixed', $3, $4)",
                )
                .bind(&id)
                .bind(&c.name)
                .bind(&ts)
                .bind(&ts)
                .execute(&mut *conn)
                .await?;
                for spec in &c.servers {
                    configs::insert_server(conn, secrets, &id, spec).await?;
                }
                created.mcp_configs += 1;
                created.servers += c.servers.len();
                entries.push(
                    ImportEntry::new("mcp_config", &c.name, ImportAction::Created)
                        .detail(format!("{} server(s)", c.servers.len())),
                );
                id
            }
        };
        config_ids.insert(c.source_id.as_str(), id);
    }

    let mut project_ids = Vec::with_capacity(plan.projects.len());
    for p in &plan.projects {
        let id = match project_id_by_name(conn, &p.name).await? {
            Some(id) => {
                entries.push(ImportEntry::new("project", &p.name, ImportAction::Exists));
                id
            }
            None => {
                let config = p.config_source_id.as_deref().and_then(|c| config_ids.get(c));
                if let (Some(source), None) = (&p.config_source_id, config) {
                    entries.push(
                        ImportEntry::new("project", &p.name, ImportAction::Mapped)
                            .detail(format!("its config `{source}` is not in the file; created without one")),
                    );
                }
                let id = Uuid::new_v4().to_string();
                sqlx::query(
                    "INSERT INTO projects (id, name, description, mcp_config_id, created_at, updated_at) \
                     VALUES ($1, $2, '', $3, $4, $5)",
                )
                .bind(&id)
                .bind(&p.name)
                .bind(config)
                .bind(&ts)
                .bind(&ts)
                .execute(&mut *conn)
                .await?;
                created.projects += 1;
                entries.push(ImportEntry::new("project", &p.name, ImportAction::Created));
                id
            }
        };
        for member in &p.member_source_ids {
            let Some((user_id, email)) = users.get(member.as_str()) else {
                entries.push(
                    ImportEntry::new("member", format!("{}/{member}", p.name), ImportAction::Skipped)
                        .detail("no such user in the file"),
                );
                continue;
            };
            if !is_member(conn, &id, user_id).await? {
                add_member(conn, &id, user_id).await?;
                created.members += 1;
                entries.push(ImportEntry::new("member", format!("{}/{email}", p.name), ImportAction::Created));
            }
        }
        project_ids.push(id);
    }

    for k in &plan.keys {
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM api_keys WHERE id = $1").bind(&k.id).fetch_optional(&mut *conn).await?;
        if exists.is_some() {
            entries.push(ImportEntry::new("api_key", &k.id, ImportAction::Exists));
            continue;
        }
        let Some((user_id, email)) = users.get(k.user_source_id.as_str()) else {
            entries.push(ImportEntry::new("api_key", &k.id, ImportAction::Skipped).detail("its user was not imported"));
            continue;
        };
        let project_id = &project_ids[k.project_index];
        let project_name = &plan.projects[k.project_index].name;
        let mut entry =
            ImportEntry::new("api_key", &k.id, ImportAction::Created).target(format!("{email} in {project_name}"));
        if !is_member(conn, project_id, user_id).await? {
            // A key exists only for a member of its project; the file did not list them as one.
            add_member(conn, project_id, user_id).await?;
            created.members += 1;
            entry = entry.detail("its user was added to the project, which a key requires");
        }
        let hash = hashes.get(&k.id).map(String::as_str).unwrap_or("dry-run");
        sqlx::query(
            "INSERT INTO api_keys (id, project_id, user_id, name, hash, created_at, disabled, disabled_at) \
             VALUES ($1, $2, $3, 'imported', $4, $5, $6, $7)",
        )
        .bind(&k.id)
        .bind(project_id)
        .bind(user_id)
        .bind(hash)
        .bind(&ts)
        .bind(i64::from(k.disabled))
        .bind(k.disabled.then_some(&ts))
        .execute(&mut *conn)
        .await?;
        created.api_keys += 1;
        entries.push(entry);
    }
    Ok(())
}

/// argon2 hashes of the keys not stored yet, computed before the write lock is taken.
async fn hash_new_keys(store: &Store, keys: &[PlanKey]) -> Result<HashMap<String, String>, ApiError> {
    let mut conn = store.conn().await?;
    let mut todo = Vec::new();
    for k in keys {
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM api_keys WHERE id = $1").bind(&k.id).fetch_optional(&mut *conn).await?;
        if exists.is_none() {
            todo.push((k.id.clone(), k.secret.clone()));
        }
    }
    drop(conn);
    tokio::task::spawn_blocking(move || {
        todo.into_iter()
            .map(|(id, secret)| api_key::hash(&secret).map(|h| (id, h)).map_err(|e| ApiError::Internal(e.to_string())))
            .collect()
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}

#[utoipa::path(post, path = "/api/v1/import", tag = "system", params(ImportQuery),
    request_body(content = Object, description = "The content of an enkrypt_mcp_config.json (2.1 or 2.2)"),
    responses((status = 200, description = "What was imported (or, with dry_run, would be)", body = ImportReport), WriteErrors))]
#[post("/import")]
pub async fn import(
    store: web::Data<Store>,
    rules: web::Data<ServerRules>,
    q: web::Query<ImportQuery>,
    JsonBody(file): JsonBody<Map<String, Value>>,
) -> Result<HttpResponse, ApiError> {
    let dry_run = q.dry_run.unwrap_or(false);
    let plan = plan(&file, &rules)?;
    drop(file);
    let hashes = if dry_run { HashMap::new() } else { hash_new_keys(&store, &plan.keys).await? };
    let mut created = ImportCounts::default();
    let mut entries = plan.notes.clone();
    let mut w = store.begin_write().await?;
    apply(&mut w.tx, &store.secrets, &plan, &hashes, &mut created, &mut entries).await?;
    let changed = created.users + created.mcp_configs + created.projects + created.members + created.api_keys > 0;
    // Dropping the transaction rolls it back: a dry run leaves no trace.
    let revision =
        if dry_run || !changed { None } else { Some(w.commit("import", "import", "enkrypt_mcp_config").await?) };
    Ok(HttpResponse::Ok().json(ImportReport { dry_run, revision, created, entries }))
}

#[utoipa::path(get, path = "/api/v1/configs/{config}/export", tag = "configs",
    params(("config" = String, Path, description = "Config id or name")),
    responses((status = 200, description = "The config with its secrets masked", body = ConfigExport), ReadErrors))]
#[get("/configs/{config}/export")]
pub async fn export_config(store: web::Data<Store>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let mut conn = store.conn().await?;
    let row = configs::resolve(&mut conn, &path).await?;
    let config = configs::load(&mut conn, &store.secrets, &row.id).await?;
    Ok(HttpResponse::Ok().json(ConfigExport {
        exported_at: Utc::now(),
        mcp_config_id: config.id,
        mcp_config_name: config.name,
        description: config.description,
        tool_naming: config.tool_naming,
        mcp_config: config.servers.iter().map(ServerSpec::with_secrets_masked).collect(),
    }))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(import).service(export_config);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shared::server::is_valid_name;

    fn file() -> Map<String, Value> {
        json!({
            "admin_apikey": "x",
            "users": {"u1": {"email": "alice@example.com"}, "u2": {"email": "ALICE@example.com"}, "u3": {},
                      "u4": {"email": "not an address"}},
            "mcp_configs": {"c1": {
                "mcp_config_name": "My Config",
                "common_overrides": {"server_tools_guardrails_config": {"enabled": true}},
                "mcp_config": [
                    {"server_name": "echo server", "config": {"command": "python", "args": ["echo.py"]},
                     "tools": {}, "denied_tools": [{"name": "rm_*", "reason": "no"}, "drop"],
                     "input_guardrails_policy": {"enabled": true, "policy_name": "p",
                        "additional_config": {"pii_redaction": true, "relevancy": true},
                        "block": ["injection_attack", "toxicity", "made_up"]},
                     "created_at": "2025-01-01", "sandbox": {"enabled": true}},
                    {"server_name": "remote", "config": {"url": "https://example.com/sse", "transport": "sse"}}
                ]
            }},
            "projects": {"p1": {"project_name": "team a", "mcp_config_id": "c1", "users": ["u1"]}},
            "apikeys": {
                "Zq3v0v6dM1mS9k2n4QeYtPzq-8rJbLwX_c1uVgH7aKfE0dTs": {"project_id": "p1", "user_id": "u1"},
                "short": {"project_id": "p1", "user_id": "u1"},
                "Zq3v0v6dM1mS9k2n4QeYtPzq-8rJbLwX_c1uVgH7aKfE0dTt": {"project_id": "nope", "user_id": "u1"}
            }
        })
        .as_object()
        .cloned()
        .unwrap()
    }

    #[test]
    fn the_plan_maps_renames_and_skips_with_reasons() {
        let plan = plan(&file(), &ServerRules::default()).unwrap();
        assert_eq!(plan.users.len(), 1);
        assert_eq!(plan.configs.len(), 1);
        assert_eq!(plan.configs[0].name, "My-Config");
        let servers = &plan.configs[0].servers;
        assert_eq!(servers.len(), 1, "the SSE server is skipped");
        let s = &servers[0];
        assert_eq!(s.server_name, "echo-server");
        assert_eq!(s.denied_tools, ["rm_*", "drop"]);
        assert!(s.enable_tool_guardrails, "common override applied");
        assert_eq!(s.input_guardrails_policy.block, ["injection_attack"]);
        assert!(s.input_guardrails_policy.additional_config.pii_redaction);
        assert!(s.input_guardrails_policy.additional_config.other.is_empty());
        assert_eq!(plan.projects[0].name, "team-a");
        assert_eq!(plan.keys.len(), 1);
        let notes = serde_json::to_string(&plan.notes).unwrap();
        for expected in [
            "admin_apikey",
            "same e-mail",
            "no e-mail",
            "not a valid e-mail",
            "`toxicity` needs a remote guardrail provider",
            "unknown detector `made_up`",
            "additional_config.relevancy",
            "sandbox",
            "transport `sse` is not supported",
            "keys must be",
            "names no project",
        ] {
            assert!(notes.contains(expected), "missing `{expected}` in {notes}");
        }
        assert!(!notes.contains("Zq3v0v6dM1mS9k2n4"), "a key leaked into the report: {notes}");
    }

    #[test]
    fn remote_detectors_are_kept_when_a_provider_is_configured() {
        let plan = plan(&file(), &ServerRules { remote_provider: true, ..ServerRules::default() }).unwrap();
        assert_eq!(plan.configs[0].servers[0].input_guardrails_policy.block, ["injection_attack", "toxicity"]);
    }

    #[test]
    fn a_file_of_another_kind_is_refused() {
        let not_ours = json!({"servers": []}).as_object().cloned().unwrap();
        assert!(plan(&not_ours, &ServerRules::default()).is_err());
        let wrong = json!({"users": []}).as_object().cloned().unwrap();
        assert!(plan(&wrong, &ServerRules::default()).is_err());
    }

    #[test]
    fn names_are_made_valid_and_unique() {
        let mut taken = HashSet::new();
        assert_eq!(fit_name("a b", "x", &mut taken), "a-b");
        assert_eq!(fit_name("a/b", "x", &mut taken), "a-b-2");
        assert_eq!(fit_name("a__b", "x", &mut taken), "a_b");
        assert_eq!(fit_name("!!!", "x", &mut taken), "x");
        assert!(is_valid_name(&fit_name(&"z".repeat(100), "x", &mut taken)));
    }
}
