//! Projects: a team's boundary. A project has members (users), at most one MCP config, and API keys
//! that belong to one member each. Identified by id or by name.

use actix_web::{HttpResponse, delete, get, patch, post, put, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::RateLimit;
use sqlx::AnyConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::configs::{self, McpConfig};
use crate::api::users::{self, ForceQuery, User, UserList, UserRow};
use crate::error::{ActionErrors, ApiError, ListErrors, ReadErrors, WriteErrors};
use crate::json::JsonBody;
use crate::rate_limits;
use crate::store::{Page, PageQuery, Store, as_uuid, now, time};

#[derive(Debug, Serialize, ToSchema)]
pub struct Project {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    /// The MCP config the project's keys reach, if one is assigned.
    pub mcp_config: Option<ConfigRef>,
    pub member_count: i64,
    pub api_key_count: i64,
    /// Tool calls through all of the project's keys together (null: no project-wide limit).
    pub rate_limit: Option<RateLimit>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigRef {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectList {
    pub items: Vec<Project>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    /// Unique name: 1-64 letters, digits, `_` or `-`.
    #[serde(alias = "project_name")]
    #[schema(example = "payments-team", pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub description: String,
    /// MCP config (id or name) to assign right away.
    #[serde(default, alias = "mcp_config_name")]
    pub mcp_config: Option<String>,
    /// Tool calls through all of the project's keys together; none when absent or null.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    #[serde(alias = "new_name")]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub name: Option<String>,
    #[schema(max_length = 4096)]
    pub description: Option<String>,
    /// A new limit; `null` removes it, absent keeps it.
    #[serde(default, deserialize_with = "rate_limits::present")]
    #[schema(value_type = Option<RateLimit>)]
    pub rate_limit: Option<Option<RateLimit>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// User id or e-mail.
    #[serde(alias = "email", alias = "user_id")]
    pub user: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignConfig {
    /// MCP config id or name.
    #[serde(alias = "config_name", alias = "mcp_config")]
    pub config: String,
}

/// Groups whose members a project admits when they sign in with OAuth (the access token's group
/// claim, `MCPGW_OAUTH_GROUPS_CLAIM` on the data plane), with no mcpgw user or membership needed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuthGroups {
    /// Group claim values, each 1-256 characters without control characters; at most 100.
    #[schema(example = json!(["engineering"]))]
    pub groups: Vec<String>,
}

const MAX_OAUTH_GROUPS: usize = 100;

fn check_groups(groups: &[String]) -> Result<Vec<String>, ApiError> {
    if groups.len() > MAX_OAUTH_GROUPS {
        return Err(ApiError::invalid("groups", format!("at most {MAX_OAUTH_GROUPS} groups")));
    }
    let mut out: Vec<String> = Vec::with_capacity(groups.len());
    for (i, group) in groups.iter().enumerate() {
        if group.is_empty() || group.chars().count() > 256 || group.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                &format!("groups[{i}]"),
                "must be 1-256 characters without control characters",
            ));
        }
        if !out.contains(group) {
            out.push(group.clone());
        }
    }
    out.sort();
    Ok(out)
}

async fn load_groups(conn: &mut AnyConnection, project_id: &str) -> Result<Vec<String>, ApiError> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT group_name FROM project_oauth_groups WHERE project_id = $1 ORDER BY group_name")
            .bind(project_id)
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows.into_iter().map(|(g,)| g).collect())
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/oauth-groups", tag = "projects",
    params(("project" = String, Path, description = "Project id or name")),
    responses((status = 200, description = "The groups the project admits", body = OAuthGroups), ReadErrors))]
#[get("/projects/{project}/oauth-groups")]
pub async fn get_oauth_groups(store: web::Data<Store>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let mut conn = store.conn().await?;
    let project = resolve(&mut conn, &path).await?;
    Ok(HttpResponse::Ok().json(OAuthGroups { groups: load_groups(&mut conn, &project.id).await? }))
}

#[utoipa::path(put, path = "/api/v1/projects/{project}/oauth-groups", tag = "projects", request_body = OAuthGroups,
    params(("project" = String, Path, description = "Project id or name")),
    responses((status = 200, description = "The groups the project now admits (replacing the previous list)",
        body = OAuthGroups), WriteErrors))]
#[put("/projects/{project}/oauth-groups")]
pub async fn set_oauth_groups(
    store: web::Data<Store>,
    path: web::Path<String>,
    JsonBody(body): JsonBody<OAuthGroups>,
) -> Result<HttpResponse, ApiError> {
    let groups = check_groups(&body.groups)?;
    let mut w = store.begin_write().await?;
    let project = resolve(&mut w.tx, &path).await?;
    sqlx::query("DELETE FROM project_oauth_groups WHERE project_id = $1").bind(&project.id).execute(&mut *w.tx).await?;
    for group in &groups {
        sqlx::query("INSERT INTO project_oauth_groups (project_id, group_name) VALUES ($1, $2)")
            .bind(&project.id)
            .bind(group)
            .execute(&mut *w.tx)
            .await?;
    }
    w.commit("set_oauth_groups", "project", &project.id).await?;
    Ok(HttpResponse::Ok().json(OAuthGroups { groups }))
}

#[derive(sqlx::FromRow)]
pub(crate) struct ProjectRow {
    pub id: String,
    pub name: String,
    pub description: String,
    pub mcp_config_id: Option<String>,
    pub config_name: Option<String>,
    pub member_count: i64,
    pub api_key_count: i64,
    pub rate_limit: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<ProjectRow> for Project {
    fn from(r: ProjectRow) -> Self {
        let mcp_config = match (r.mcp_config_id, r.config_name) {
            (Some(id), Some(name)) => Some(ConfigRef { id: Uuid::parse_str(&id).unwrap_or_default(), name }),
            _ => None,
        };
        Project {
            id: Uuid::parse_str(&r.id).unwrap_or_default(),
            name: r.name,
            description: r.description,
            mcp_config,
            member_count: r.member_count,
            api_key_count: r.api_key_count,
            // Only this control plane writes the column; the snapshot refuses a value it cannot read.
            rate_limit: rate_limits::from_column(r.rate_limit.as_deref()).ok().flatten(),
            created_at: time(&r.created_at),
            updated_at: time(&r.updated_at),
        }
    }
}

macro_rules! project_select {
    () => {
        "SELECT p.id, p.name, p.description, p.mcp_config_id, c.name AS config_name, p.rate_limit, p.created_at, \
         p.updated_at, \
         (SELECT COUNT(*) FROM project_members m WHERE m.project_id = p.id) AS member_count, \
         (SELECT COUNT(*) FROM api_keys k WHERE k.project_id = p.id) AS api_key_count \
         FROM projects p LEFT JOIN mcp_configs c ON c.id = p.mcp_config_id "
    };
}

/// Looks a project up by id or name.
pub(crate) async fn resolve(conn: &mut AnyConnection, ident: &str) -> Result<ProjectRow, ApiError> {
    if let Some(id) = as_uuid(ident)
        && let Some(r) = sqlx::query_as::<_, ProjectRow>(concat!(project_select!(), "WHERE p.id = $1"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
    {
        return Ok(r);
    }
    sqlx::query_as::<_, ProjectRow>(concat!(project_select!(), "WHERE p.name = $1"))
        .bind(ident)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ApiError::not_found("project", ident))
}

/// Projects ordered by name; only those `member` belongs to when given.
pub(crate) async fn list(conn: &mut AnyConnection, page: &Page, member: Option<&str>) -> Result<ProjectList, ApiError> {
    let rows = sqlx::query_as::<_, ProjectRow>(concat!(
        project_select!(),
        "WHERE p.name > $1 AND ($4 IS NULL OR EXISTS (SELECT 1 FROM project_members m WHERE m.project_id = p.id AND m.user_id = $4)) \
         ORDER BY p.name LIMIT $2 OFFSET $3"
    ))
    .bind(&page.after)
    .bind(page.fetch_limit())
    .bind(page.offset)
    .bind(member)
    .fetch_all(conn)
    .await?;
    let (rows, next_cursor) = page.finish(rows, |r| &r.name);
    Ok(ProjectList { items: rows.into_iter().map(Project::from).collect(), next_cursor })
}

fn valid_name(name: &str) -> Result<(), ApiError> {
    if shared::server::is_valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid("name", "must be 1-64 characters of letters, digits, `_` or `-`"))
    }
}

fn valid_description(d: &str) -> Result<(), ApiError> {
    if d.len() > 4096 { Err(ApiError::invalid("description", "must be at most 4096 characters")) } else { Ok(()) }
}

async fn name_taken(conn: &mut AnyConnection, name: &str, except: Option<&str>) -> Result<bool, ApiError> {
    let id: Option<String> =
        sqlx::query_scalar("SELECT id FROM projects WHERE name = $1").bind(name).fetch_optional(conn).await?;
    Ok(id.is_some_and(|id| Some(id.as_str()) != except))
}

#[utoipa::path(post, path = "/api/v1/projects", tag = "projects", request_body = CreateProject,
    responses((status = 201, description = "Created", body = Project), WriteErrors))]
#[post("/projects")]
pub async fn create_project(
    store: web::Data<Store>,
    JsonBody(body): JsonBody<CreateProject>,
) -> Result<HttpResponse, ApiError> {
    valid_name(&body.name)?;
    valid_description(&body.description)?;
    rate_limits::check(body.rate_limit.as_ref(), "rate_limit")?;
    let mut w = store.begin_write().await?;
    if name_taken(&mut w.tx, &body.name, None).await? {
        return Err(ApiError::Conflict(format!("a project named `{}` already exists", body.name)));
    }
    let config_id = match &body.mcp_config {
        Some(c) => Some(configs::resolve(&mut w.tx, c).await.map_err(|e| unknown_config_is_invalid(e, c))?.id),
        None => None,
    };
    let id = Uuid::new_v4().to_string();
    let ts = now();
    sqlx::query(
        "INSERT INTO projects (id, name, description, mcp_config_id, rate_limit, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&body.name)
    .bind(&body.description)
    .bind(config_id)
    .bind(rate_limits::to_column(body.rate_limit.as_ref())?)
    .bind(&ts)
    .bind(&ts)
    .execute(&mut *w.tx)
    .await?;
    let row = resolve(&mut w.tx, &id).await?;
    w.commit("create", "project", &id).await?;
    Ok(HttpResponse::Created().json(Project::from(row)))
}

/// A config named in a body (not in the path) that does not exist is an invalid field, not a 404.
fn unknown_config_is_invalid(e: ApiError, ident: &str) -> ApiError {
    match e {
        ApiError::NotFound(_) => ApiError::invalid("config", format!("MCP config `{ident}` does not exist")),
        other => other,
    }
}

#[utoipa::path(get, path = "/api/v1/projects", tag = "projects", params(PageQuery),
    responses((status = 200, description = "Projects ordered by name", body = ProjectList), ListErrors))]
#[get("/projects")]
pub async fn list_projects(store: web::Data<Store>, q: web::Query<PageQuery>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(list(&mut *store.conn().await?, &q.page()?, None).await?))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}", tag = "projects",
    params(("project" = String, Path, description = "Project id or name")),
    responses((status = 200, description = "The project", body = Project), ReadErrors))]
#[get("/projects/{project}")]
pub async fn get_project(store: web::Data<Store>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(Project::from(resolve(&mut *store.conn().await?, &path).await?)))
}

#[utoipa::path(patch, path = "/api/v1/projects/{project}", tag = "projects", request_body = UpdateProject,
    params(("project" = String, Path, description = "Project id or name")),
    responses((status = 200, description = "Updated", body = Project), WriteErrors))]
#[patch("/projects/{project}")]
pub async fn update_project(
    store: web::Data<Store>,
    path: web::Path<String>,
    JsonBody(body): JsonBody<UpdateProject>,
) -> Result<HttpResponse, ApiError> {
    let mut w = store.begin_write().await?;
    let row = resolve(&mut w.tx, &path).await?;
    let name = body.name.unwrap_or(row.name);
    let description = body.description.unwrap_or(row.description);
    let rate_limit = match body.rate_limit {
        Some(limit) => limit,
        None => rate_limits::from_column(row.rate_limit.as_deref())?,
    };
    valid_name(&name)?;
    valid_description(&description)?;
    rate_limits::check(rate_limit.as_ref(), "rate_limit")?;
    if name_taken(&mut w.tx, &name, Some(&row.id)).await? {
        return Err(ApiError::Conflict(format!("a project named `{name}` already exists")));
    }
    sqlx::query("UPDATE projects SET name = $1, description = $2, rate_limit = $3, updated_at = $4 WHERE id = $5")
        .bind(&name)
        .bind(&description)
        .bind(rate_limits::to_column(rate_limit.as_ref())?)
        .bind(now())
        .bind(&row.id)
        .execute(&mut *w.tx)
        .await?;
    let row = resolve(&mut w.tx, &row.id).await?;
    w.commit("update", "project", &row.id).await?;
    Ok(HttpResponse::Ok().json(Project::from(row)))
}

#[utoipa::path(delete, path = "/api/v1/projects/{project}", tag = "projects",
    params(("project" = String, Path, description = "Project id or name"), ForceQuery),
    responses((status = 204, description = "Deleted (with its memberships)"), ActionErrors))]
#[delete("/projects/{project}")]
pub async fn delete_project(
    store: web::Data<Store>,
    path: web::Path<String>,
    q: web::Query<ForceQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut w = store.begin_write().await?;
    let row = resolve(&mut w.tx, &path).await?;
    if row.api_key_count > 0 && !q.force.unwrap_or(false) {
        return Err(ApiError::Conflict(format!(
            "project `{}` has {} API key(s); delete them first or pass ?force=true",
            row.name, row.api_key_count
        )));
    }
    sqlx::query("DELETE FROM api_keys WHERE project_id = $1").bind(&row.id).execute(&mut *w.tx).await?;
    sqlx::query("DELETE FROM projects WHERE id = $1").bind(&row.id).execute(&mut *w.tx).await?;
    w.commit("delete", "project", &row.id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/users", tag = "projects",
    params(("project" = String, Path, description = "Project id or name"), PageQuery),
    responses((status = 200, description = "Members ordered by e-mail", body = UserList), ListErrors))]
#[get("/projects/{project}/users")]
pub async fn list_members(
    store: web::Data<Store>,
    path: web::Path<String>,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = q.page()?;
    let mut conn = store.conn().await?;
    let project = resolve(&mut conn, &path).await?;
    let rows = sqlx::query_as::<_, UserRow>(
        "SELECT u.id, u.email, u.created_at, u.updated_at FROM users u JOIN project_members m ON m.user_id = u.id \
         WHERE m.project_id = $1 AND lower(u.email) > lower($2) ORDER BY lower(u.email) LIMIT $3 OFFSET $4",
    )
    .bind(&project.id)
    .bind(&page.after)
    .bind(page.fetch_limit())
    .bind(page.offset)
    .fetch_all(&mut *conn)
    .await?;
    let (rows, next_cursor) = page.finish(rows, |r| &r.email);
    Ok(HttpResponse::Ok().json(UserList { items: rows.into_iter().map(User::from).collect(), next_cursor }))
}

#[utoipa::path(post, path = "/api/v1/projects/{project}/users", tag = "projects", request_body = AddMember,
    params(("project" = String, Path, description = "Project id or name")),
    responses((status = 201, description = "Added; returns the member", body = User), WriteErrors))]
#[post("/projects/{project}/users")]
pub async fn add_member(
    store: web::Data<Store>,
    path: web::Path<String>,
    JsonBody(body): JsonBody<AddMember>,
) -> Result<HttpResponse, ApiError> {
    let mut w = store.begin_write().await?;
    let project = resolve(&mut w.tx, &path).await?;
    let user = users::resolve(&mut w.tx, &body.user).await.map_err(|e| match e {
        ApiError::NotFound(_) => ApiError::invalid("user", format!("user `{}` does not exist", body.user)),
        other => other,
    })?;
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM project_members WHERE project_id = $1 AND user_id = $2")
            .bind(&project.id)
            .bind(&user.id)
            .fetch_optional(&mut *w.tx)
            .await?;
    if exists.is_some() {
        return Err(ApiError::Conflict(format!("`{}` is already a member of `{}`", user.email, project.name)));
    }
    sqlx::query("INSERT INTO project_members (project_id, user_id, added_at) VALUES ($1, $2, $3)")
        .bind(&project.id)
        .bind(&user.id)
        .bind(now())
        .execute(&mut *w.tx)
        .await?;
    w.commit("add_member", "project", &project.id).await?;
    Ok(HttpResponse::Created().json(User::from(user)))
}

#[utoipa::path(delete, path = "/api/v1/projects/{project}/users/{user}", tag = "projects",
    params(("project" = String, Path, description = "Project id or name"), ("user" = String, Path, description = "User id or e-mail"), ForceQuery),
    responses((status = 204, description = "Removed"), ActionErrors))]
#[delete("/projects/{project}/users/{user}")]
pub async fn remove_member(
    store: web::Data<Store>,
    path: web::Path<(String, String)>,
    q: web::Query<ForceQuery>,
) -> Result<HttpResponse, ApiError> {
    let (project, user) = path.into_inner();
    let mut w = store.begin_write().await?;
    let project = resolve(&mut w.tx, &project).await?;
    let user = users::resolve(&mut w.tx, &user).await?;
    let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE project_id = $1 AND user_id = $2")
        .bind(&project.id)
        .bind(&user.id)
        .fetch_one(&mut *w.tx)
        .await?;
    if keys > 0 && !q.force.unwrap_or(false) {
        return Err(ApiError::Conflict(format!(
            "`{}` holds {keys} API key(s) in `{}`; delete them first or pass ?force=true",
            user.email, project.name
        )));
    }
    sqlx::query("DELETE FROM api_keys WHERE project_id = $1 AND user_id = $2")
        .bind(&project.id)
        .bind(&user.id)
        .execute(&mut *w.tx)
        .await?;
    let removed = sqlx::query("DELETE FROM project_members WHERE project_id = $1 AND user_id = $2")
        .bind(&project.id)
        .bind(&user.id)
        .execute(&mut *w.tx)
        .await?;
    if removed.rows_affected() == 0 {
        return Err(ApiError::NotFound(format!("`{}` is not a member of `{}`", user.email, project.name)));
    }
    w.commit("remove_member", "project", &project.id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(put, path = "/api/v1/projects/{project}/config", tag = "projects", request_body = AssignConfig,
    params(("project" = String, Path, description = "Project id or name")),
    responses((status = 200, description = "Assigned; returns the project", body = Project), WriteErrors))]
#[put("/projects/{project}/config")]
pub async fn assign_config(
    store: web::Data<Store>,
    path: web::Path<String>,
    JsonBody(body): JsonBody<AssignConfig>,
) -> Result<HttpResponse, ApiError> {
    let mut w = store.begin_write().await?;
    let project = resolve(&mut w.tx, &path).await?;
    let config =
        configs::resolve(&mut w.tx, &body.config).await.map_err(|e| unknown_config_is_invalid(e, &body.config))?;
    sqlx::query("UPDATE projects SET mcp_config_id = $1, updated_at = $2 WHERE id = $3")
        .bind(&config.id)
        .bind(now())
        .bind(&project.id)
        .execute(&mut *w.tx)
        .await?;
    let row = resolve(&mut w.tx, &project.id).await?;
    w.commit("assign_config", "project", &project.id).await?;
    Ok(HttpResponse::Ok().json(Project::from(row)))
}

#[utoipa::path(delete, path = "/api/v1/projects/{project}/config", tag = "projects",
    params(("project" = String, Path, description = "Project id or name")),
    responses((status = 204, description = "Unassigned (idempotent)"), ActionErrors))]
#[delete("/projects/{project}/config")]
pub async fn unassign_config(store: web::Data<Store>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let mut w = store.begin_write().await?;
    let project = resolve(&mut w.tx, &path).await?;
    if project.mcp_config_id.is_none() {
        return Ok(HttpResponse::NoContent().finish());
    }
    sqlx::query("UPDATE projects SET mcp_config_id = NULL, updated_at = $1 WHERE id = $2")
        .bind(now())
        .bind(&project.id)
        .execute(&mut *w.tx)
        .await?;
    w.commit("unassign_config", "project", &project.id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/config", tag = "projects",
    params(("project" = String, Path, description = "Project id or name")),
    responses((status = 200, description = "The project's MCP config", body = McpConfig), ReadErrors))]
#[get("/projects/{project}/config")]
pub async fn get_project_config(store: web::Data<Store>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let mut conn = store.conn().await?;
    let project = resolve(&mut conn, &path).await?;
    let Some(config_id) = project.mcp_config_id else {
        return Err(ApiError::NotFound(format!("project `{}` has no MCP config assigned", project.name)));
    };
    Ok(HttpResponse::Ok().json(configs::shown(configs::load(&mut conn, &store.secrets, &config_id).await?)))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(create_project)
        .service(list_projects)
        .service(get_project)
        .service(update_project)
        .service(delete_project)
        .service(list_members)
        .service(add_member)
        .service(remove_member)
        .service(assign_config)
        .service(unassign_config)
        .service(get_project_config)
        .service(get_oauth_groups)
        .service(set_oauth_groups);
}
