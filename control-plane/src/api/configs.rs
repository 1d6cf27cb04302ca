//! MCP configs and their servers: which upstream MCP servers a project's keys reach, and the policies
//! that guard each one. Identified by id or name; servers by name within their config.

use actix_web::{HttpResponse, delete, get, patch, post, put, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::snapshot::{SnapshotConfig, ToolNaming, validate_config_servers};
use shared::stdio_commands::StdioCommands;
use shared::{ServerSpec, Transport};
use sqlx::AnyConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{ActionErrors, ApiError, ListErrors, ReadErrors, WriteErrors};
use crate::json::JsonBody;
use crate::secrets::SecretBox;
use crate::store::{PageQuery, Store, as_uuid, now, time};

/// Most servers one config may hold.
pub const MAX_SERVERS: usize = 256;

/// What this installation accepts in a server beyond the server's own validity.
#[derive(Debug, Default)]
pub struct ServerRules {
    /// A remote guardrail provider is configured, so the detectors that need one are accepted.
    pub remote_provider: bool,
    /// `MCPGW_STDIO_COMMANDS`.
    pub stdio_commands: StdioCommands,
}

impl ServerRules {
    /// Refuses a stdio server whose command the installation does not allow.
    pub fn check_command(&self, spec: &ServerSpec) -> Result<(), ApiError> {
        if let Transport::Stdio { command, env, cwd, .. } = &spec.config
            && let Err(refused) = self.stdio_commands.admit(command, env, cwd.as_deref())
        {
            return Err(ApiError::Invalid(format!("server `{}`: {refused}", spec.server_name)));
        }
        Ok(())
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct McpConfig {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub tool_naming: ToolNaming,
    /// Upstream servers, in order.
    pub servers: Vec<ServerSpec>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct McpConfigSummary {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub tool_naming: ToolNaming,
    pub server_count: i64,
    /// Number of projects using this config.
    pub project_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct McpConfigList {
    pub items: Vec<McpConfigSummary>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServerList {
    /// Every server of the config, in order.
    pub items: Vec<ServerSpec>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConfig {
    /// Unique name: 1-64 letters, digits, `_` or `-`.
    #[serde(alias = "config_name", alias = "mcp_config_name")]
    #[schema(example = "default", pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub description: String,
    /// `prefixed` (`<server>__<tool>`, default) or `bare` (names as the upstream gives them).
    #[serde(default)]
    pub tool_naming: ToolNaming,
    /// Servers to create with the config.
    #[serde(default, alias = "mcp_config")]
    pub servers: Vec<ServerSpec>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    #[serde(alias = "new_name")]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub name: Option<String>,
    #[schema(max_length = 4096)]
    pub description: Option<String>,
    pub tool_naming: Option<ToolNaming>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyConfig {
    /// Name of the new config.
    #[serde(alias = "target_config")]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub name: String,
}

#[derive(sqlx::FromRow)]
pub(crate) struct ConfigRow {
    pub id: String,
    pub name: String,
    pub description: String,
    pub tool_naming: String,
    pub created_at: String,
    pub updated_at: String,
}

fn naming(s: &str) -> ToolNaming {
    if s == "bare" { ToolNaming::Bare } else { ToolNaming::Prefixed }
}

fn naming_str(n: ToolNaming) -> &'static str {
    match n {
        ToolNaming::Bare => "bare",
        ToolNaming::Prefixed => "prefixed",
    }
}

/// Looks a config up by id or name.
pub(crate) async fn resolve(conn: &mut AnyConnection, ident: &str) -> Result<ConfigRow, ApiError> {
    if let Some(id) = as_uuid(ident)
        && let Some(r) = sqlx::query_as::<_, ConfigRow>(
            "SELECT id, name, description, tool_naming, created_at, updated_at FROM mcp_configs WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
    {
        return Ok(r);
    }
    sqlx::query_as::<_, ConfigRow>(
        "SELECT id, name, description, tool_naming, created_at, updated_at FROM mcp_configs WHERE name = $1",
    )
    .bind(ident)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| ApiError::not_found("MCP config", ident))
}

/// The servers of a config, in order.
pub(crate) async fn servers(
    conn: &mut AnyConnection,
    secrets: &SecretBox,
    config_id: &str,
) -> Result<Vec<ServerSpec>, ApiError> {
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT spec, sealed FROM servers WHERE config_id = $1 ORDER BY position")
            .bind(config_id)
            .fetch_all(conn)
            .await?;
    rows.iter().map(|(spec, sealed)| Ok(secrets.open_spec(spec, sealed.as_deref())?)).collect()
}

/// A whole config with its servers.
pub(crate) async fn load(
    conn: &mut AnyConnection,
    secrets: &SecretBox,
    config_id: &str,
) -> Result<McpConfig, ApiError> {
    let row = resolve(&mut *conn, config_id).await?;
    let servers = servers(conn, secrets, &row.id).await?;
    Ok(McpConfig {
        id: Uuid::parse_str(&row.id).unwrap_or_default(),
        name: row.name,
        description: row.description,
        tool_naming: naming(&row.tool_naming),
        servers,
        created_at: time(&row.created_at),
        updated_at: time(&row.updated_at),
    })
}

/// Every check the data plane will make on this config, made before anything is stored.
fn validate(
    name: &str,
    description: &str,
    tool_naming: ToolNaming,
    servers: &[ServerSpec],
    rules: &ServerRules,
) -> Result<(), ApiError> {
    if description.len() > 4096 {
        return Err(ApiError::invalid("description", "must be at most 4096 characters"));
    }
    if servers.len() > MAX_SERVERS {
        return Err(ApiError::invalid("servers", format!("a config holds at most {MAX_SERVERS} servers")));
    }
    for s in servers {
        if let Err(errs) = s.validate_with(rules.remote_provider) {
            let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            return Err(ApiError::Invalid(format!("server `{}`: {}", s.server_name, all.join("; "))));
        }
        rules.check_command(s)?;
    }
    let config = SnapshotConfig {
        id: Uuid::nil(),
        name: name.to_string(),
        tool_naming,
        servers: servers.to_vec(),
        pins: vec![],
        oauth_tokens: vec![],
    };
    validate_config_servers(&config).map_err(|e| {
        if e.field == "servers" && e.message.starts_with("duplicate") {
            ApiError::Conflict(e.message)
        } else {
            ApiError::invalid(&e.field, e.message)
        }
    })
}

async fn name_taken(conn: &mut AnyConnection, name: &str, except: Option<&str>) -> Result<bool, ApiError> {
    let id: Option<String> =
        sqlx::query_scalar("SELECT id FROM mcp_configs WHERE name = $1").bind(name).fetch_optional(conn).await?;
    Ok(id.is_some_and(|id| Some(id.as_str()) != except))
}

pub(crate) async fn insert_server(
    conn: &mut AnyConnection,
    secrets: &SecretBox,
    config_id: &str,
    spec: &ServerSpec,
) -> Result<(), ApiError> {
    let ts = now();
    let (stored, sealed) = secrets.seal_spec(spec)?;
    sqlx::query(
        "INSERT INTO servers (config_id, name, position, spec, sealed, created_at, updated_at) \
         VALUES ($1, $2, (SELECT COALESCE(MAX(position), 0) + 1 FROM servers WHERE config_id = $1), $3, $4, $5, $5)",
    )
    .bind(config_id)
    .bind(&spec.server_name)
    .bind(stored)
    .bind(sealed)
    .bind(&ts)
    .execute(conn)
    .await?;
    Ok(())
}

async fn touch(conn: &mut AnyConnection, config_id: &str) -> Result<(), ApiError> {
    sqlx::query("UPDATE mcp_configs SET updated_at = $1 WHERE id = $2")
        .bind(now())
        .bind(config_id)
        .execute(conn)
        .await?;
    Ok(())
}

async fn create(
    conn: &mut AnyConnection,
    secrets: &SecretBox,
    body: &CreateConfig,
    rules: &ServerRules,
) -> Result<String, ApiError> {
    validate(&body.name, &body.description, body.tool_naming, &body.servers, rules)?;
    if name_taken(&mut *conn, &body.name, None).await? {
        return Err(ApiError::Conflict(format!("an MCP config named `{}` already exists", body.name)));
    }
    let id = Uuid::new_v4().to_string();
    let ts = now();
    sqlx::query("INSERT INTO mcp_configs (id, name, description, tool_naming, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&id)
        .bind(&body.name)
        .bind(&body.description)
        .bind(naming_str(body.tool_naming))
        .bind(&ts)
        .bind(&ts)
        .execute(&mut *conn)
        .await?;
    for s in &body.servers {
        insert_server(&mut *conn, secrets, &id, s).await?;
    }
    Ok(id)
}

#[utoipa::path(post, path = "/api/v1/configs", tag = "configs", request_body = CreateConfig,
    responses((status = 201, description = "Created", body = McpConfig), WriteErrors))]
#[post("/configs")]
pub async fn create_config(
    store: web::Data<Store>,
    rules: web::Data<ServerRules>,
    JsonBody(mut body): JsonBody<CreateConfig>,
) -> Result<HttpResponse, ApiError> {
    for spec in &mut body.servers {
        spec.keep_masked_secrets(None).map_err(masked_secret)?;
    }
    let mut w = store.begin_write().await?;
    let id = create(&mut w.tx, &store.secrets, &body, &rules).await?;
    let config = load(&mut w.tx, &store.secrets, &id).await?;
    w.commit("create", "mcp_config", &id).await?;
    Ok(HttpResponse::Created().json(shown(config)))
}

#[utoipa::path(get, path = "/api/v1/configs", tag = "configs", params(PageQuery),
    responses((status = 200, description = "Configs ordered by name", body = McpConfigList), ListErrors))]
#[get("/configs")]
pub async fn list_configs(store: web::Data<Store>, q: web::Query<PageQuery>) -> Result<HttpResponse, ApiError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        id: String,
        name: String,
        description: String,
        tool_naming: String,
        server_count: i64,
        project_count: i64,
        created_at: String,
        updated_at: String,
    }
    let page = q.page()?;
    let rows = sqlx::query_as::<_, Row>(
        "SELECT c.id, c.name, c.description, c.tool_naming, c.created_at, c.updated_at, \
         (SELECT COUNT(*) FROM servers s WHERE s.config_id = c.id) AS server_count, \
         (SELECT COUNT(*) FROM projects p WHERE p.mcp_config_id = c.id) AS project_count \
         FROM mcp_configs c WHERE c.name > $1 ORDER BY c.name LIMIT $2 OFFSET $3",
    )
    .bind(&page.after)
    .bind(page.fetch_limit())
    .bind(page.offset)
    .fetch_all(&mut *store.conn().await?)
    .await?;
    let (rows, next_cursor) = page.finish(rows, |r| &r.name);
    let items = rows
        .into_iter()
        .map(|r| McpConfigSummary {
            id: Uuid::parse_str(&r.id).unwrap_or_default(),
            name: r.name,
            description: r.description,
            tool_naming: naming(&r.tool_naming),
            server_count: r.server_count,
            project_count: r.project_count,
            created_at: time(&r.created_at),
            updated_at: time(&r.updated_at),
        })
        .collect();
    Ok(HttpResponse::Ok().json(McpConfigList { items, next_cursor }))
}

#[utoipa::path(get, path = "/api/v1/configs/{config}", tag = "configs",
    params(("config" = String, Path, description = "Config id or name")),
    responses((status = 200, description = "The config with its servers", body = McpConfig), ReadErrors))]
#[get("/configs/{config}")]
pub async fn get_config(store: web::Data<Store>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(shown(load(&mut *store.conn().await?, &store.secrets, &path).await?)))
}

#[utoipa::path(patch, path = "/api/v1/configs/{config}", tag = "configs", request_body = UpdateConfig,
    params(("config" = String, Path, description = "Config id or name")),
    responses((status = 200, description = "Updated", body = McpConfig), WriteErrors))]
#[patch("/configs/{config}")]
pub async fn update_config(
    store: web::Data<Store>,
    rules: web::Data<ServerRules>,
    path: web::Path<String>,
    JsonBody(body): JsonBody<UpdateConfig>,
) -> Result<HttpResponse, ApiError> {
    let mut w = store.begin_write().await?;
    let current = load(&mut w.tx, &store.secrets, &path).await?;
    let id = current.id.to_string();
    let name = body.name.unwrap_or(current.name);
    let description = body.description.unwrap_or(current.description);
    let tool_naming = body.tool_naming.unwrap_or(current.tool_naming);
    validate(&name, &description, tool_naming, &current.servers, &rules)?;
    if name_taken(&mut w.tx, &name, Some(&id)).await? {
        return Err(ApiError::Conflict(format!("an MCP config named `{name}` already exists")));
    }
    sqlx::query("UPDATE mcp_configs SET name = $1, description = $2, tool_naming = $3, updated_at = $4 WHERE id = $5")
        .bind(&name)
        .bind(&description)
        .bind(naming_str(tool_naming))
        .bind(now())
        .bind(&id)
        .execute(&mut *w.tx)
        .await?;
    let config = load(&mut w.tx, &store.secrets, &id).await?;
    w.commit("update", "mcp_config", &id).await?;
    Ok(HttpResponse::Ok().json(shown(config)))
}

#[utoipa::path(delete, path = "/api/v1/configs/{config}", tag = "configs",
    params(("config" = String, Path, description = "Config id or name")),
    responses((status = 204, description = "Deleted with its servers"), ActionErrors))]
#[delete("/configs/{config}")]
pub async fn delete_config(store: web::Data<Store>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let mut w = store.begin_write().await?;
    let row = resolve(&mut w.tx, &path).await?;
    let users: Vec<String> = sqlx::query_scalar("SELECT name FROM projects WHERE mcp_config_id = $1 ORDER BY name")
        .bind(&row.id)
        .fetch_all(&mut *w.tx)
        .await?;
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!(
            "MCP config `{}` is used by project(s) {}; assign them another config first",
            row.name,
            users.join(", ")
        )));
    }
    sqlx::query("DELETE FROM mcp_configs WHERE id = $1").bind(&row.id).execute(&mut *w.tx).await?;
    w.commit("delete", "mcp_config", &row.id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(post, path = "/api/v1/configs/{config}/copy", tag = "configs", request_body = CopyConfig,
    params(("config" = String, Path, description = "Config id or name to copy")),
    responses((status = 201, description = "The copy", body = McpConfig), WriteErrors))]
#[post("/configs/{config}/copy")]
pub async fn copy_config(
    store: web::Data<Store>,
    rules: web::Data<ServerRules>,
    path: web::Path<String>,
    JsonBody(body): JsonBody<CopyConfig>,
) -> Result<HttpResponse, ApiError> {
    let mut w = store.begin_write().await?;
    let source = load(&mut w.tx, &store.secrets, &path).await?;
    let copy = CreateConfig {
        name: body.name,
        description: source.description,
        tool_naming: source.tool_naming,
        servers: source.servers,
    };
    let id = create(&mut w.tx, &store.secrets, &copy, &rules).await?;
    let config = load(&mut w.tx, &store.secrets, &id).await?;
    w.commit("copy", "mcp_config", &id).await?;
    Ok(HttpResponse::Created().json(shown(config)))
}

#[utoipa::path(get, path = "/api/v1/configs/{config}/servers", tag = "servers",
    params(("config" = String, Path, description = "Config id or name")),
    responses((status = 200, description = "The config's servers, in order", body = ServerList), ReadErrors))]
#[get("/configs/{config}/servers")]
pub async fn list_servers(store: web::Data<Store>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let config = load(&mut *store.conn().await?, &store.secrets, &path).await?;
    Ok(HttpResponse::Ok().json(ServerList { items: shown(config).servers }))
}

#[utoipa::path(post, path = "/api/v1/configs/{config}/servers", tag = "servers", request_body = ServerSpec,
    params(("config" = String, Path, description = "Config id or name")),
    responses((status = 201, description = "Added at the end of the list", body = ServerSpec), WriteErrors))]
#[post("/configs/{config}/servers")]
pub async fn add_server(
    store: web::Data<Store>,
    rules: web::Data<ServerRules>,
    path: web::Path<String>,
    JsonBody(mut spec): JsonBody<ServerSpec>,
) -> Result<HttpResponse, ApiError> {
    spec.keep_masked_secrets(None).map_err(masked_secret)?;
    let mut w = store.begin_write().await?;
    let config = load(&mut w.tx, &store.secrets, &path).await?;
    if config.servers.iter().any(|s| s.server_name == spec.server_name) {
        return Err(ApiError::Conflict(format!(
            "config `{}` already has a server named `{}`",
            config.name, spec.server_name
        )));
    }
    let mut servers = config.servers;
    servers.push(spec.clone());
    validate(&config.name, &config.description, config.tool_naming, &servers, &rules)?;
    let id = config.id.to_string();
    insert_server(&mut w.tx, &store.secrets, &id, &spec).await?;
    touch(&mut w.tx, &id).await?;
    w.commit("add_server", "mcp_config", &id).await?;
    Ok(HttpResponse::Created().json(spec.with_secrets_masked()))
}

/// A config as the admin API shows it: environment values, header values and OAuth secrets masked
/// (sent back as they are shown, they keep the stored values).
pub(crate) fn shown(mut config: McpConfig) -> McpConfig {
    config.servers = config.servers.iter().map(ServerSpec::with_secrets_masked).collect();
    config
}

fn masked_secret(e: shared::server::FieldError) -> ApiError {
    ApiError::invalid(&e.field, e.message)
}

/// The server named `name` in `config`, or 404.
fn find<'a>(config: &'a McpConfig, name: &str) -> Result<&'a ServerSpec, ApiError> {
    config
        .servers
        .iter()
        .find(|s| s.server_name == name)
        .ok_or_else(|| ApiError::NotFound(format!("config `{}` has no server named `{name}`", config.name)))
}

#[utoipa::path(get, path = "/api/v1/configs/{config}/servers/{server}", tag = "servers",
    params(("config" = String, Path, description = "Config id or name"), ("server" = String, Path, description = "Server name")),
    responses((status = 200, description = "The server", body = ServerSpec), ReadErrors))]
#[get("/configs/{config}/servers/{server}")]
pub async fn get_server(store: web::Data<Store>, path: web::Path<(String, String)>) -> Result<HttpResponse, ApiError> {
    let (config, server) = path.into_inner();
    let config = load(&mut *store.conn().await?, &store.secrets, &config).await?;
    Ok(HttpResponse::Ok().json(find(&config, &server)?.with_secrets_masked()))
}

#[utoipa::path(put, path = "/api/v1/configs/{config}/servers/{server}", tag = "servers", request_body = ServerSpec,
    params(("config" = String, Path, description = "Config id or name"), ("server" = String, Path, description = "Server name")),
    responses((status = 200, description = "Replaced (a different `server_name` renames it)", body = ServerSpec), WriteErrors))]
#[put("/configs/{config}/servers/{server}")]
pub async fn replace_server(
    store: web::Data<Store>,
    rules: web::Data<ServerRules>,
    path: web::Path<(String, String)>,
    JsonBody(mut spec): JsonBody<ServerSpec>,
) -> Result<HttpResponse, ApiError> {
    let (config, server) = path.into_inner();
    let mut w = store.begin_write().await?;
    let config = load(&mut w.tx, &store.secrets, &config).await?;
    let previous = find(&config, &server)?.clone();
    spec.keep_masked_secrets(Some(&previous)).map_err(masked_secret)?;
    if spec.server_name != server && config.servers.iter().any(|s| s.server_name == spec.server_name) {
        return Err(ApiError::Conflict(format!(
            "config `{}` already has a server named `{}`",
            config.name, spec.server_name
        )));
    }
    let servers: Vec<ServerSpec> =
        config.servers.iter().map(|s| if s.server_name == server { spec.clone() } else { s.clone() }).collect();
    validate(&config.name, &config.description, config.tool_naming, &servers, &rules)?;
    let id = config.id.to_string();
    let (stored, sealed) = store.secrets.seal_spec(&spec)?;
    sqlx::query(
        "UPDATE servers SET name = $1, spec = $2, sealed = $3, updated_at = $4 WHERE config_id = $5 AND name = $6",
    )
    .bind(&spec.server_name)
    .bind(stored)
    .bind(sealed)
    .bind(now())
    .bind(&id)
    .bind(&server)
    .execute(&mut *w.tx)
    .await?;
    if !crate::upstream_oauth::same_authority(&previous, &spec) {
        // Tokens from another authorization server or client are of no use to this one.
        sqlx::query("DELETE FROM oauth_tokens WHERE config_id = $1 AND server = $2")
            .bind(&id)
            .bind(&spec.server_name)
            .execute(&mut *w.tx)
            .await?;
    }
    // Approvals follow a renamed server.
    sqlx::query("UPDATE tool_pins SET server = $1 WHERE config_id = $2 AND server = $3")
        .bind(&spec.server_name)
        .bind(&id)
        .bind(&server)
        .execute(&mut *w.tx)
        .await?;
    touch(&mut w.tx, &id).await?;
    w.commit("replace_server", "mcp_config", &id).await?;
    Ok(HttpResponse::Ok().json(spec.with_secrets_masked()))
}

#[utoipa::path(delete, path = "/api/v1/configs/{config}/servers/{server}", tag = "servers",
    params(("config" = String, Path, description = "Config id or name"), ("server" = String, Path, description = "Server name")),
    responses((status = 204, description = "Removed"), ActionErrors))]
#[delete("/configs/{config}/servers/{server}")]
pub async fn delete_server(
    store: web::Data<Store>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (config, server) = path.into_inner();
    let mut w = store.begin_write().await?;
    let config = load(&mut w.tx, &store.secrets, &config).await?;
    find(&config, &server)?;
    let id = config.id.to_string();
    for table in [
        "DELETE FROM servers WHERE config_id = $1 AND name = $2",
        "DELETE FROM tool_pins WHERE config_id = $1 AND server = $2",
    ] {
        sqlx::query(table).bind(&id).bind(&server).execute(&mut *w.tx).await?;
    }
    touch(&mut w.tx, &id).await?;
    w.commit("delete_server", "mcp_config", &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(create_config)
        .service(list_configs)
        .service(get_config)
        .service(update_config)
        .service(delete_config)
        .service(copy_config)
        .service(list_servers)
        .service(add_server)
        .service(get_server)
        .service(replace_server)
        .service(delete_server);
}
