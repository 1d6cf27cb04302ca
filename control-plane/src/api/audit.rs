//! The admin audit log: one row per committed change (who, what, which resource, which revision),
//! newest first, filtered by resource, actor, action and time.

use actix_web::{HttpResponse, get, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ListErrors};
use crate::store::{PageQuery, Store, format_time, time};

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// When the change was committed.
    pub at: DateTime<Utc>,
    /// Who made it: `admin` (the admin key), `oauth_callback` (an authorization server's redirect
    /// completing an authorization an admin started) or `control_plane` (token renewal).
    #[schema(example = "admin")]
    pub actor: String,
    #[schema(example = "create")]
    pub action: String,
    /// `user`, `project`, `mcp_config`, `api_key`, `admin_key`, `import` or `state`.
    #[schema(example = "user")]
    pub resource: String,
    /// The resource's id (or, for `state` and `import`, what the change covered).
    pub resource_id: String,
    /// The configuration revision the change produced.
    pub revision: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    /// Newest first.
    pub items: Vec<AuditEntry>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Filters and pagination of the audit log. Every filter is an exact match.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only changes to this kind of resource (`user`, `project`, `mcp_config`, `api_key`, ...).
    pub resource: Option<String>,
    /// Only changes to the resource with this id.
    pub resource_id: Option<String>,
    /// Only changes made by this actor (`admin`, `oauth_callback`, `control_plane`).
    pub actor: Option<String>,
    /// Only this action (`create`, `update`, `delete`, `rotate`, ...).
    pub action: Option<String>,
    /// Only changes at or after this time (RFC 3339).
    #[param(example = "2026-01-01T00:00:00Z")]
    pub since: Option<String>,
    /// Only changes before this time (RFC 3339).
    pub until: Option<String>,
    /// Maximum number of items (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[A-Za-z0-9_-]*$")]
    pub cursor: Option<String>,
    /// Number of items to skip (alternative to `cursor`).
    #[param(minimum = 0)]
    pub offset: Option<u32>,
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: String,
    actor: String,
    action: String,
    resource: String,
    resource_id: String,
    revision: i64,
    /// The cursor's sort key.
    #[sqlx(skip)]
    key: String,
}

/// A time filter, as the stored (sortable) text.
fn time_filter(field: &str, value: &Option<String>) -> Result<Option<String>, ApiError> {
    value
        .as_deref()
        .map(|v| {
            DateTime::parse_from_rfc3339(v.trim())
                .map(|t| format_time(t.with_timezone(&Utc)))
                .map_err(|_| ApiError::invalid(field, format!("`{v}` is not an RFC 3339 time (2026-01-31T12:00:00Z)")))
        })
        .transpose()
}

fn text_filter(field: &str, value: &Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if v.len() > 256 => Err(ApiError::invalid(field, "is longer than 256 bytes")),
        other => Ok(other.clone()),
    }
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "system", params(AuditQuery),
    responses((status = 200, description = "Committed changes, newest first", body = AuditList), ListErrors))]
#[get("/audit")]
pub async fn list_audit(store: web::Data<Store>, q: web::Query<AuditQuery>) -> Result<HttpResponse, ApiError> {
    let page = PageQuery { limit: q.limit, cursor: q.cursor.clone(), offset: q.offset }.page()?;
    let before: Option<i64> = match page.after.as_str() {
        "" => None,
        id => Some(id.parse().map_err(|_| ApiError::invalid("cursor", "is not a cursor this API returned"))?),
    };
    let since = time_filter("since", &q.since)?;
    let until = time_filter("until", &q.until)?;
    if let (Some(s), Some(u)) = (&since, &until)
        && s > u
    {
        return Err(ApiError::invalid("until", "is before `since`"));
    }
    // One statement for every combination of filters: a filter left out is bound as NULL.
    let mut rows = sqlx::query_as::<_, AuditRow>(
        "SELECT id, at, actor, action, resource, resource_id, revision FROM audit_log \
         WHERE ($1 IS NULL OR resource = $1) AND ($2 IS NULL OR resource_id = $2) AND ($3 IS NULL OR actor = $3) \
         AND ($4 IS NULL OR action = $4) AND ($5 IS NULL OR at >= $5) AND ($6 IS NULL OR at < $6) \
         AND ($7 IS NULL OR id < $7) ORDER BY id DESC LIMIT $8 OFFSET $9",
    )
    .bind(text_filter("resource", &q.resource)?)
    .bind(text_filter("resource_id", &q.resource_id)?)
    .bind(text_filter("actor", &q.actor)?)
    .bind(text_filter("action", &q.action)?)
    .bind(since)
    .bind(until)
    .bind(before)
    .bind(page.fetch_limit())
    .bind(page.offset)
    .fetch_all(&mut *store.conn().await?)
    .await?;
    for r in &mut rows {
        r.key = r.id.to_string();
    }
    let (rows, next_cursor) = page.finish(rows, |r| &r.key);
    let items = rows
        .into_iter()
        .map(|r| AuditEntry {
            id: r.id,
            at: time(&r.at),
            actor: r.actor,
            action: r.action,
            resource: r.resource,
            resource_id: r.resource_id,
            revision: r.revision.max(0) as u64,
        })
        .collect();
    Ok(HttpResponse::Ok().json(AuditList { items, next_cursor }))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(list_audit);
}
