//! API keys: how MCP clients authenticate to the data plane. A key belongs to one member of one
//! project. Its secret is returned exactly once (at creation or rotation); only an argon2 hash is
//! stored, and keys are addressed by their public id, never by the secret.

use actix_web::{HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::{RateLimit, api_key};
use sqlx::AnyConnection;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::{projects, users};
use crate::error::{ActionErrors, ApiError, ListErrors, ReadErrors, WriteErrors};
use crate::json::JsonBody;
use crate::rate_limits;
use crate::store::{PageQuery, Store, now, opt_time, time};

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKey {
    /// Public id; also embedded in the key itself (`mcpgw_<id>_<secret>`).
    pub id: String,
    pub name: Option<String>,
    pub project_id: Uuid,
    pub project_name: String,
    pub user_id: Uuid,
    pub user_email: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// True once `expires_at` has passed.
    pub expired: bool,
    pub disabled: bool,
    pub disabled_at: Option<DateTime<Utc>>,
    /// When the secret was last rotated.
    pub rotated_at: Option<DateTime<Utc>>,
    /// Tool calls with this key (null: only the project's and servers' limits apply).
    pub rate_limit: Option<RateLimit>,
}

/// A key together with its secret: returned only by create and rotate.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyWithSecret {
    #[serde(flatten)]
    pub api_key: ApiKey,
    /// The secret key. Store it now: it is never shown again.
    pub key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub items: Vec<ApiKey>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// Project id or name.
    #[serde(alias = "project_name", alias = "project_id")]
    pub project: String,
    /// User id or e-mail; must be a member of the project.
    #[serde(alias = "email", alias = "user_id")]
    pub user: String,
    /// A label, e.g. the machine or client using the key.
    #[schema(min_length = 1, max_length = 128)]
    pub name: Option<String>,
    /// When the key stops working (RFC 3339, in the future).
    pub expires_at: Option<DateTime<Utc>>,
    /// Tool calls with this key; none when absent or null.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApiKey {
    /// A new limit; `null` removes it, absent keeps it.
    #[serde(default, deserialize_with = "rate_limits::present")]
    #[schema(value_type = Option<RateLimit>)]
    pub rate_limit: Option<Option<RateLimit>>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeyFilter {
    /// Only keys of this project (id or name).
    pub project: Option<String>,
    /// Only keys of this user (id or e-mail).
    pub user: Option<String>,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: String,
    name: Option<String>,
    project_id: String,
    project_name: String,
    user_id: String,
    user_email: String,
    created_at: String,
    expires_at: Option<String>,
    /// 0 or 1 (an integer on every database).
    disabled: i64,
    disabled_at: Option<String>,
    rotated_at: Option<String>,
    rate_limit: Option<String>,
}

impl From<KeyRow> for ApiKey {
    fn from(r: KeyRow) -> Self {
        let expires_at = opt_time(&r.expires_at);
        ApiKey {
            id: r.id,
            name: r.name,
            project_id: Uuid::parse_str(&r.project_id).unwrap_or_default(),
            project_name: r.project_name,
            user_id: Uuid::parse_str(&r.user_id).unwrap_or_default(),
            user_email: r.user_email,
            created_at: time(&r.created_at),
            expired: expires_at.is_some_and(|e| e <= Utc::now()),
            expires_at,
            disabled: r.disabled != 0,
            disabled_at: opt_time(&r.disabled_at),
            rotated_at: opt_time(&r.rotated_at),
            // Only this control plane writes the column; the snapshot refuses a value it cannot read.
            rate_limit: rate_limits::from_column(r.rate_limit.as_deref()).ok().flatten(),
        }
    }
}

macro_rules! key_select {
    () => {
        "SELECT k.id, k.name, k.project_id, p.name AS project_name, k.user_id, u.email AS user_email, k.created_at, \
         k.expires_at, k.disabled, k.disabled_at, k.rotated_at, k.rate_limit \
         FROM api_keys k JOIN projects p ON p.id = k.project_id JOIN users u ON u.id = k.user_id "
    };
}

async fn fetch(conn: &mut AnyConnection, id: &str) -> Result<ApiKey, ApiError> {
    sqlx::query_as::<_, KeyRow>(concat!(key_select!(), "WHERE k.id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .map(ApiKey::from)
        .ok_or_else(|| ApiError::not_found("API key", id))
}

/// A fresh key and its argon2 hash, computed off the async workers (hashing is slow by design).
async fn new_secret(id: Option<String>) -> Result<(api_key::NewKey, String), ApiError> {
    tokio::task::spawn_blocking(move || {
        let key = match id {
            Some(id) => api_key::generate_for(&id),
            None => api_key::generate(),
        };
        let hash = api_key::hash(&key.secret).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok((key, hash))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}

fn body_ref(e: ApiError, field: &str) -> ApiError {
    match e {
        ApiError::NotFound(m) => ApiError::invalid(field, m),
        other => other,
    }
}

#[utoipa::path(post, path = "/api/v1/api-keys", tag = "api-keys", request_body = CreateApiKey,
    responses((status = 201, description = "Created; the only response that shows the secret", body = ApiKeyWithSecret), WriteErrors))]
#[post("/api-keys")]
pub async fn create_key(
    store: web::Data<Store>,
    JsonBody(body): JsonBody<CreateApiKey>,
) -> Result<HttpResponse, ApiError> {
    if let Some(name) = &body.name
        && (name.is_empty() || name.len() > 128)
    {
        return Err(ApiError::invalid("name", "must be 1-128 characters"));
    }
    if body.expires_at.is_some_and(|e| e <= Utc::now()) {
        return Err(ApiError::invalid("expires_at", "must be in the future"));
    }
    rate_limits::check(body.rate_limit.as_ref(), "rate_limit")?;
    let (key, hash) = new_secret(None).await?;
    let mut w = store.begin_write().await?;
    let project = projects::resolve(&mut w.tx, &body.project).await.map_err(|e| body_ref(e, "project"))?;
    let user = users::resolve(&mut w.tx, &body.user).await.map_err(|e| body_ref(e, "user"))?;
    let member: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM project_members WHERE project_id = $1 AND user_id = $2")
            .bind(&project.id)
            .bind(&user.id)
            .fetch_optional(&mut *w.tx)
            .await?;
    if member.is_none() {
        return Err(ApiError::invalid(
            "user",
            format!(
                "`{}` is not a member of project `{}`; add them with POST /api/v1/projects/{}/users",
                user.email, project.name, project.name
            ),
        ));
    }
    sqlx::query(
        "INSERT INTO api_keys (id, project_id, user_id, name, hash, created_at, expires_at, rate_limit) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&key.id)
    .bind(&project.id)
    .bind(&user.id)
    .bind(&body.name)
    .bind(&hash)
    .bind(now())
    .bind(body.expires_at.map(|e| e.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)))
    .bind(rate_limits::to_column(body.rate_limit.as_ref())?)
    .execute(&mut *w.tx)
    .await?;
    let api_key = fetch(&mut w.tx, &key.id).await?;
    w.commit("create", "api_key", &key.id).await?;
    Ok(HttpResponse::Created().json(ApiKeyWithSecret { api_key, key: key.secret }))
}

#[utoipa::path(get, path = "/api/v1/api-keys", tag = "api-keys", params(KeyFilter, PageQuery),
    responses((status = 200, description = "Keys ordered by id; never secrets or hashes", body = ApiKeyList), ListErrors))]
#[get("/api-keys")]
pub async fn list_keys(
    store: web::Data<Store>,
    filter: web::Query<KeyFilter>,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = q.page()?;
    let mut conn = store.conn().await?;
    let project = match &filter.project {
        Some(p) => Some(projects::resolve(&mut conn, p).await?.id),
        None => None,
    };
    let user = match &filter.user {
        Some(u) => Some(users::resolve(&mut conn, u).await?.id),
        None => None,
    };
    let rows = sqlx::query_as::<_, KeyRow>(concat!(
        key_select!(),
        "WHERE k.id > $1 AND ($4 IS NULL OR k.project_id = $4) AND ($5 IS NULL OR k.user_id = $5) ORDER BY k.id LIMIT $2 OFFSET $3"
    ))
    .bind(&page.after)
    .bind(page.fetch_limit())
    .bind(page.offset)
    .bind(project)
    .bind(user)
    .fetch_all(&mut *conn)
    .await?;
    let (rows, next_cursor) = page.finish(rows, |r| &r.id);
    Ok(HttpResponse::Ok().json(ApiKeyList { items: rows.into_iter().map(ApiKey::from).collect(), next_cursor }))
}

#[utoipa::path(get, path = "/api/v1/api-keys/{key_id}", tag = "api-keys",
    params(("key_id" = String, Path, description = "Public key id")),
    responses((status = 200, description = "The key (no secret)", body = ApiKey), ReadErrors))]
#[get("/api-keys/{key_id}")]
pub async fn get_key(store: web::Data<Store>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(fetch(&mut *store.conn().await?, &path).await?))
}

#[utoipa::path(patch, path = "/api/v1/api-keys/{key_id}", tag = "api-keys", request_body = UpdateApiKey,
    params(("key_id" = String, Path, description = "Public key id")),
    responses((status = 200, description = "Updated (no secret)", body = ApiKey), WriteErrors))]
#[patch("/api-keys/{key_id}")]
pub async fn update_key(
    store: web::Data<Store>,
    path: web::Path<String>,
    JsonBody(body): JsonBody<UpdateApiKey>,
) -> Result<HttpResponse, ApiError> {
    let Some(rate_limit) = body.rate_limit else {
        // Nothing asked to change: no new revision.
        return Ok(HttpResponse::Ok().json(fetch(&mut *store.conn().await?, &path).await?));
    };
    rate_limits::check(rate_limit.as_ref(), "rate_limit")?;
    let mut w = store.begin_write().await?;
    let key = fetch(&mut w.tx, &path).await?;
    sqlx::query("UPDATE api_keys SET rate_limit = $1 WHERE id = $2")
        .bind(rate_limits::to_column(rate_limit.as_ref())?)
        .bind(&key.id)
        .execute(&mut *w.tx)
        .await?;
    let key = fetch(&mut w.tx, &key.id).await?;
    w.commit("update", "api_key", &key.id).await?;
    Ok(HttpResponse::Ok().json(key))
}

#[utoipa::path(delete, path = "/api/v1/api-keys/{key_id}", tag = "api-keys",
    params(("key_id" = String, Path, description = "Public key id")),
    responses((status = 204, description = "Deleted"), ActionErrors))]
#[delete("/api-keys/{key_id}")]
pub async fn delete_key(store: web::Data<Store>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let mut w = store.begin_write().await?;
    let key = fetch(&mut w.tx, &path).await?;
    sqlx::query("DELETE FROM api_keys WHERE id = $1").bind(&key.id).execute(&mut *w.tx).await?;
    w.commit("delete", "api_key", &key.id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(post, path = "/api/v1/api-keys/{key_id}/rotate", tag = "api-keys",
    params(("key_id" = String, Path, description = "Public key id")),
    responses((status = 200, description = "New secret, shown once; the old secret stops working", body = ApiKeyWithSecret), ActionErrors))]
#[post("/api-keys/{key_id}/rotate")]
pub async fn rotate_key(store: web::Data<Store>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = fetch(&mut *store.conn().await?, &path).await?.id;
    let (key, hash) = new_secret(Some(id.clone())).await?;
    let mut w = store.begin_write().await?;
    let done = sqlx::query("UPDATE api_keys SET hash = $1, rotated_at = $2 WHERE id = $3")
        .bind(&hash)
        .bind(now())
        .bind(&id)
        .execute(&mut *w.tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("API key", &id));
    }
    let api_key = fetch(&mut w.tx, &id).await?;
    w.commit("rotate", "api_key", &id).await?;
    Ok(HttpResponse::Ok().json(ApiKeyWithSecret { api_key, key: key.secret }))
}

async fn set_disabled(store: &Store, id: &str, disabled: bool) -> Result<HttpResponse, ApiError> {
    let mut w = store.begin_write().await?;
    let key = fetch(&mut w.tx, id).await?;
    if key.disabled != disabled {
        sqlx::query("UPDATE api_keys SET disabled = $1, disabled_at = $2 WHERE id = $3")
            .bind(i64::from(disabled))
            .bind(disabled.then(now))
            .bind(&key.id)
            .execute(&mut *w.tx)
            .await?;
        let key = fetch(&mut w.tx, id).await?;
        w.commit(if disabled { "disable" } else { "enable" }, "api_key", &key.id).await?;
        return Ok(HttpResponse::Ok().json(key));
    }
    Ok(HttpResponse::Ok().json(key))
}

#[utoipa::path(post, path = "/api/v1/api-keys/{key_id}/disable", tag = "api-keys",
    params(("key_id" = String, Path, description = "Public key id")),
    responses((status = 200, description = "Disabled (idempotent)", body = ApiKey), ActionErrors))]
#[post("/api-keys/{key_id}/disable")]
pub async fn disable_key(store: web::Data<Store>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    set_disabled(&store, &path, true).await
}

#[utoipa::path(post, path = "/api/v1/api-keys/{key_id}/enable", tag = "api-keys",
    params(("key_id" = String, Path, description = "Public key id")),
    responses((status = 200, description = "Enabled (idempotent)", body = ApiKey), ActionErrors))]
#[post("/api-keys/{key_id}/enable")]
pub async fn enable_key(store: web::Data<Store>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    set_disabled(&store, &path, false).await
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(create_key)
        .service(list_keys)
        .service(get_key)
        .service(update_key)
        .service(delete_key)
        .service(rotate_key)
        .service(disable_key)
        .service(enable_key);
}
