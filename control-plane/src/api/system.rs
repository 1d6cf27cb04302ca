//! System routes: liveness, consistency report, snapshot status, admin key rotation.

use std::sync::Arc;

use actix_web::{HttpResponse, get, post, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::admin_key::AdminKeyFile;
use crate::auth::AdminKey;
use crate::error::{ActionErrors, ApiError, ReadErrors};
use crate::publish::{PublishStatus, Publisher};
use crate::store::{Dialect, Store, current_revision, now};

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` while the database cannot be reached.
    pub status: String,
    pub version: String,
    pub database: DatabaseHealth,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DatabaseHealth {
    /// `sqlite` or `postgres`.
    pub kind: String,
    pub reachable: bool,
    /// Why it cannot be reached.
    pub error: Option<String>,
}

async fn database_health(store: &Store) -> DatabaseHealth {
    let error = store.ping().await.err();
    let kind = match store.dialect {
        Dialect::Sqlite => "sqlite",
        Dialect::Postgres => "postgres",
    };
    DatabaseHealth { kind: kind.into(), reachable: error.is_none(), error }
}

/// Health probe; the only route that needs no key. 503 while the database cannot be reached (the
/// control plane recovers by itself when it returns).
#[utoipa::path(get, path = "/health", tag = "system", security(()),
    responses((status = 200, description = "The control plane and its database are up", body = Health),
              (status = 503, description = "The database cannot be reached", body = Health)))]
#[get("/health")]
pub async fn health(store: web::Data<Store>) -> HttpResponse {
    let database = database_health(&store).await;
    let (status, mut resp) = if database.reachable {
        ("ok", HttpResponse::Ok())
    } else {
        ("unavailable", HttpResponse::ServiceUnavailable())
    };
    resp.json(Health { status: status.into(), version: env!("CARGO_PKG_VERSION").into(), database })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SystemHealth {
    /// `healthy`, or `degraded` when `issues` is not empty.
    pub status: String,
    pub counts: Counts,
    /// Problems an operator should fix (e.g. a failing snapshot publish).
    pub issues: Vec<String>,
    /// Things worth knowing that do not break anything (e.g. a project without a config).
    pub warnings: Vec<String>,
    pub snapshot: PublishStatus,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Counts {
    pub users: i64,
    pub projects: i64,
    pub mcp_configs: i64,
    pub servers: i64,
    pub api_keys: i64,
    pub disabled_api_keys: i64,
    pub expired_api_keys: i64,
}

#[utoipa::path(get, path = "/api/v1/system/health", tag = "system",
    responses((status = 200, description = "Counts and consistency report", body = SystemHealth), ReadErrors))]
#[get("/system/health")]
pub async fn system_health(
    store: web::Data<Store>,
    publisher: web::Data<Arc<Publisher>>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = store.conn().await?;
    let counts: Counts = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM users) AS users, (SELECT COUNT(*) FROM projects) AS projects, \
         (SELECT COUNT(*) FROM mcp_configs) AS mcp_configs, (SELECT COUNT(*) FROM servers) AS servers, \
         (SELECT COUNT(*) FROM api_keys) AS api_keys, (SELECT COUNT(*) FROM api_keys WHERE disabled <> 0) AS disabled_api_keys, \
         (SELECT COUNT(*) FROM api_keys WHERE expires_at IS NOT NULL AND expires_at <= $1) AS expired_api_keys",
    )
    .bind(now())
    .fetch_one(&mut *conn)
    .await?;
    let unconfigured: Vec<String> =
        sqlx::query_scalar("SELECT name FROM projects WHERE mcp_config_id IS NULL ORDER BY name LIMIT 50")
            .fetch_all(&mut *conn)
            .await?;
    // PostgreSQL enforces foreign keys on every statement; SQLite's can be switched off, so look.
    let integrity: Vec<String> = match store.dialect {
        Dialect::Sqlite => sqlx::query_scalar("PRAGMA foreign_key_check").fetch_all(&mut *conn).await?,
        Dialect::Postgres => Vec::new(),
    };
    let failed_renewals: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.name, t.server, t.last_error FROM oauth_tokens t JOIN mcp_configs c ON c.id = t.config_id \
         WHERE t.last_error IS NOT NULL ORDER BY c.name, t.server LIMIT 50",
    )
    .fetch_all(&mut *conn)
    .await?;
    let snapshot = publisher.status(current_revision(&mut conn).await?);

    let mut issues = Vec::new();
    if let Some(e) = &snapshot.last_error {
        issues.push(format!("snapshot publish is failing: {e}"));
    }
    if !integrity.is_empty() {
        issues.push(format!("database foreign-key check failed for tables: {}", integrity.join(", ")));
    }
    for (config, server, error) in failed_renewals {
        issues.push(format!("server `{server}` of config `{config}`: OAuth token renewal failed: {error}"));
    }
    let warnings =
        unconfigured.iter().map(|p| format!("project `{p}` has no MCP config; its keys reach no tools")).collect();
    let status = if issues.is_empty() { "healthy" } else { "degraded" };
    Ok(HttpResponse::Ok().json(SystemHealth { status: status.into(), counts, issues, warnings, snapshot }))
}

#[utoipa::path(get, path = "/api/v1/snapshot/status", tag = "system",
    responses((status = 200, description = "What is on disk for the data plane", body = PublishStatus), ReadErrors))]
#[get("/snapshot/status")]
pub async fn snapshot_status(
    store: web::Data<Store>,
    publisher: web::Data<Arc<Publisher>>,
) -> Result<HttpResponse, ApiError> {
    let revision = current_revision(&mut *store.conn().await?).await?;
    Ok(HttpResponse::Ok().json(publisher.status(revision)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NewAdminKey {
    /// The new admin key. Store it now: it is never shown again. The old key stops working at once.
    pub admin_api_key: String,
}

#[utoipa::path(post, path = "/api/v1/admin-key/rotate", tag = "system",
    responses((status = 200, description = "The new admin key, shown once", body = NewAdminKey), ActionErrors))]
#[post("/admin-key/rotate")]
pub async fn rotate_admin_key(
    store: web::Data<Store>,
    admin: web::Data<AdminKey>,
    file: web::Data<AdminKeyFile>,
) -> Result<HttpResponse, ApiError> {
    if file.from_env {
        return Err(ApiError::Conflict(
            "the admin key is set by MCPGW_ADMIN_API_KEY; change that variable and restart instead".into(),
        ));
    }
    let key = shared::api_key::generate_admin_key();
    let hashed = key.clone();
    let hash = tokio::task::spawn_blocking(move || shared::api_key::hash(&hashed))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut w = store.begin_write().await?;
    crate::store::set_meta(&mut w.tx, crate::admin_key::HASH_META_KEY, &hash).await?;
    file.replace(&key).map_err(|e| ApiError::Internal(format!("could not rewrite the admin key file: {e}")))?;
    w.commit("rotate", "admin_key", "admin").await?;
    admin.replace(hash, &key);
    Ok(HttpResponse::Ok().json(NewAdminKey { admin_api_key: key }))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(system_health).service(snapshot_status).service(rotate_admin_key);
}
