//! Tool pins: an admin's approval of a tool definition (rug-pull protection). The review lists what
//! data planes observed and how it differs from what was approved; approving publishes the pin to
//! every data plane through the snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::{HttpResponse, delete, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::pins::{Change, Observations, ObservedStatus, changes, fingerprint, observations_dir, read_observations};
use sqlx::AnyConnection;
use utoipa::ToSchema;

use crate::api::configs::{McpConfig, load};
use crate::error::{ActionErrors, ApiError, ReadErrors, WriteErrors};
use crate::json::JsonBody;
use crate::publish::Publisher;
use crate::store::{Store, now, time};

/// An approved tool definition.
#[derive(Debug, Serialize, ToSchema)]
pub struct Pin {
    pub server: String,
    pub tool: String,
    pub fingerprint: String,
    /// The approved definition, as the upstream gave it.
    pub definition: Value,
    pub approved_at: DateTime<Utc>,
}

/// A definition a data plane reported that differs from the approved one (or has none yet).
#[derive(Debug, Serialize, ToSchema)]
pub struct PendingPin {
    pub server: String,
    pub tool: String,
    pub fingerprint: String,
    /// `held` (hidden from clients until approved) or `first_seen` (trusted on first use by a data
    /// plane, not yet approved).
    pub status: ObservedStatus,
    pub definition: Value,
    /// The fingerprint approved now, if any.
    pub approved_fingerprint: Option<String>,
    /// What differs from the approved definition (empty when nothing is approved yet).
    pub changes: Vec<Change>,
    /// Data plane replicas that reported it.
    pub seen_by: Vec<String>,
    pub last_seen_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PinReview {
    pub approved: Vec<Pin>,
    /// Definitions waiting for an admin, held ones first.
    pub pending: Vec<PendingPin>,
}

/// Approves one definition: either a fingerprint a data plane reported (see the review), or a
/// definition given here.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovePin {
    pub server: String,
    pub tool: String,
    /// A fingerprint from the review's `pending` list.
    pub fingerprint: Option<String>,
    /// A whole tool definition (MCP `Tool` JSON); its `name` must be `tool`.
    #[schema(value_type = Option<Object>)]
    pub definition: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovedPin {
    pub pin: Pin,
    /// What differs from the definition approved before (empty for a first approval).
    pub changes: Vec<Change>,
}

#[derive(sqlx::FromRow)]
struct PinRow {
    server: String,
    tool: String,
    fingerprint: String,
    definition: String,
    approved_at: String,
}

impl PinRow {
    fn into_pin(self) -> Pin {
        Pin {
            definition: serde_json::from_str(&self.definition).unwrap_or(Value::Null),
            server: self.server,
            tool: self.tool,
            fingerprint: self.fingerprint,
            approved_at: time(&self.approved_at),
        }
    }
}

async fn approved(conn: &mut AnyConnection, config: &McpConfig) -> Result<Vec<Pin>, ApiError> {
    let rows = sqlx::query_as::<_, PinRow>(
        "SELECT server, tool, fingerprint, definition, approved_at FROM tool_pins WHERE config_id = $1 ORDER BY server, tool",
    )
    .bind(config.id.to_string())
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(PinRow::into_pin)
        .filter(|p| config.servers.iter().any(|s| s.server_name == p.server))
        .collect())
}

/// Every replica's report: files of data planes next to this control plane, and reports sent over
/// the network by data planes that pull the snapshot (kept in the database, seen by every instance).
async fn reports(conn: &mut AnyConnection, publisher: &Publisher) -> Result<Vec<Observations>, ApiError> {
    let mut reports = read_observations(&observations_dir(publisher.path()));
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT report FROM observations ORDER BY replica").fetch_all(conn).await?;
    reports.extend(stored.iter().filter_map(|r| serde_json::from_str::<Observations>(r).ok()));
    Ok(reports)
}

/// What the data planes reported for `config`, merged across replicas, minus what is approved.
fn pending(reports: &[Observations], config: &McpConfig, approved: &[Pin]) -> Vec<PendingPin> {
    let mut merged: BTreeMap<(String, String, String), PendingPin> = BTreeMap::new();
    for report in reports.iter().cloned() {
        for seen in report.tools.into_iter().filter(|t| t.config_id == config.id) {
            if !config.servers.iter().any(|s| s.server_name == seen.server) {
                continue;
            }
            let current = approved.iter().find(|p| p.server == seen.server && p.tool == seen.tool);
            if current.is_some_and(|p| p.fingerprint == seen.fingerprint) {
                continue;
            }
            let key = (seen.server.clone(), seen.tool.clone(), seen.fingerprint.clone());
            let entry = merged.entry(key).or_insert_with(|| PendingPin {
                // Against the approved pin, else the definition trusted on first use.
                changes: current
                    .map(|p| &p.definition)
                    .or(seen.pinned_definition.as_ref())
                    .map(|before| changes(before, &seen.definition))
                    .unwrap_or_default(),
                approved_fingerprint: current.map(|p| p.fingerprint.clone()),
                server: seen.server,
                tool: seen.tool,
                fingerprint: seen.fingerprint,
                status: seen.status,
                definition: seen.definition,
                seen_by: Vec::new(),
                last_seen_at: seen.seen_at,
            });
            if seen.status == ObservedStatus::Held {
                entry.status = ObservedStatus::Held;
            }
            entry.last_seen_at = entry.last_seen_at.max(seen.seen_at);
            entry.seen_by.push(report.replica.clone());
        }
    }
    let mut out: Vec<PendingPin> = merged.into_values().collect();
    out.sort_by_key(|p| (p.status != ObservedStatus::Held, p.server.clone(), p.tool.clone()));
    out
}

#[utoipa::path(get, path = "/api/v1/configs/{config}/pins", tag = "pins",
    params(("config" = String, Path, description = "Config id or name")),
    responses((status = 200, description = "Approved definitions, and those waiting for review with what changed", body = PinReview), ReadErrors))]
#[get("/configs/{config}/pins")]
pub async fn review_pins(
    store: web::Data<Store>,
    publisher: web::Data<Arc<Publisher>>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = store.conn().await?;
    let config = load(&mut conn, &store.secrets, &path).await?;
    let approved = approved(&mut conn, &config).await?;
    let pending = pending(&reports(&mut conn, &publisher).await?, &config, &approved);
    Ok(HttpResponse::Ok().json(PinReview { approved, pending }))
}

#[utoipa::path(post, path = "/api/v1/configs/{config}/pins", tag = "pins", request_body = ApprovePin,
    params(("config" = String, Path, description = "Config id or name")),
    responses((status = 201, description = "Approved; data planes serve the tool within a second", body = ApprovedPin), WriteErrors))]
#[post("/configs/{config}/pins")]
pub async fn approve_pin(
    store: web::Data<Store>,
    publisher: web::Data<Arc<Publisher>>,
    path: web::Path<String>,
    JsonBody(body): JsonBody<ApprovePin>,
) -> Result<HttpResponse, ApiError> {
    let mut w = store.begin_write().await?;
    let config = load(&mut w.tx, &store.secrets, &path).await?;
    if !config.servers.iter().any(|s| s.server_name == body.server) {
        return Err(ApiError::NotFound(format!("config `{}` has no server named `{}`", config.name, body.server)));
    }
    let approved_now = approved(&mut w.tx, &config).await?;
    let definition = match (&body.fingerprint, body.definition) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(ApiError::Invalid("give exactly one of `fingerprint` and `definition`".into()));
        }
        (None, Some(definition)) => {
            if definition.get("name").and_then(Value::as_str) != Some(body.tool.as_str()) {
                return Err(ApiError::invalid("definition.name", format!("must be the tool's name `{}`", body.tool)));
            }
            definition
        }
        (Some(wanted), None) => pending(&reports(&mut w.tx, &publisher).await?, &config, &approved_now)
            .into_iter()
            .find(|p| p.server == body.server && p.tool == body.tool && &p.fingerprint == wanted)
            .map(|p| p.definition)
            .ok_or_else(|| {
                ApiError::invalid(
                    "fingerprint",
                    "no data plane reported that definition for this tool; see GET .../pins for pending ones",
                )
            })?,
    };
    let previous = approved_now.into_iter().find(|p| p.server == body.server && p.tool == body.tool);
    let pin = Pin {
        server: body.server,
        tool: body.tool,
        fingerprint: fingerprint(&definition),
        definition,
        approved_at: Utc::now(),
    };
    let config_id = config.id.to_string();
    sqlx::query(
        "INSERT INTO tool_pins (config_id, server, tool, fingerprint, definition, approved_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (config_id, server, tool) DO UPDATE SET fingerprint = excluded.fingerprint, \
         definition = excluded.definition, approved_at = excluded.approved_at",
    )
    .bind(&config_id)
    .bind(&pin.server)
    .bind(&pin.tool)
    .bind(&pin.fingerprint)
    .bind(serde_json::to_string(&pin.definition)?)
    .bind(now())
    .execute(&mut *w.tx)
    .await?;
    w.commit("approve_pin", "mcp_config", &config_id).await?;
    let changes = previous.map(|p| changes(&p.definition, &pin.definition)).unwrap_or_default();
    Ok(HttpResponse::Created().json(ApprovedPin { pin, changes }))
}

#[utoipa::path(delete, path = "/api/v1/configs/{config}/pins/{server}/{tool}", tag = "pins",
    params(("config" = String, Path, description = "Config id or name"), ("server" = String, Path, description = "Server name"),
        ("tool" = String, Path, description = "Tool name as the upstream gives it")),
    responses((status = 204, description = "Approval withdrawn (a strict server stops serving the tool)"), ActionErrors))]
#[delete("/configs/{config}/pins/{server}/{tool}")]
pub async fn revoke_pin(
    store: web::Data<Store>,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (config, server, tool) = path.into_inner();
    let mut w = store.begin_write().await?;
    let config = load(&mut w.tx, &store.secrets, &config).await?;
    let config_id = config.id.to_string();
    let removed = sqlx::query("DELETE FROM tool_pins WHERE config_id = $1 AND server = $2 AND tool = $3")
        .bind(&config_id)
        .bind(&server)
        .bind(&tool)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
    if removed == 0 {
        return Err(ApiError::NotFound(format!(
            "config `{}` has no approved definition of `{tool}` on server `{server}`",
            config.name
        )));
    }
    w.commit("revoke_pin", "mcp_config", &config_id).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(review_pins).service(approve_pin).service(revoke_pin);
}
