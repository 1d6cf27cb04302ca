//! The routes data planes on other hosts use, with their own credential (`MCPGW_DATA_PLANE_TOKEN`,
//! never the admin key): pull the snapshot (a long poll that answers as soon as a newer revision is
//! committed through any instance), and send the tool definitions they report for review.

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, HttpResponse, get, put, web};
use serde::Deserialize;
use shared::pins::Observations;
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::json::JsonBody;
use crate::publish::Publisher;
use crate::store::{Store, now};

/// Header that carries the revision of the snapshot a data-plane answer holds (or, with 204, the
/// newest this control plane has).
pub const REVISION_HEADER: &str = "x-mcpgw-revision";
/// Shortest data-plane token accepted.
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest a long poll waits.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The accepted data-plane tokens (several during a rotation), as SHA-256 fingerprints.
pub struct DataPlaneTokens(Vec<[u8; 32]>);

impl DataPlaneTokens {
    /// From `MCPGW_DATA_PLANE_TOKEN` (comma separated).
    pub fn parse(configured: Option<&str>) -> anyhow::Result<Self> {
        let mut tokens = Vec::new();
        for token in configured.unwrap_or_default().split(',').map(str::trim).filter(|t| !t.is_empty()) {
            anyhow::ensure!(
                token.len() >= MIN_TOKEN_LEN,
                "every MCPGW_DATA_PLANE_TOKEN must be at least {MIN_TOKEN_LEN} characters"
            );
            tokens.push(shared::api_key::fingerprint(token));
        }
        Ok(Self(tokens))
    }

    fn accepts(&self, presented: &str) -> bool {
        let fp = shared::api_key::fingerprint(presented);
        // Every configured token is compared, so the time taken says nothing about which matched.
        self.0.iter().fold(false, |hit, t| shared::api_key::fingerprints_equal(t, &fp) | hit)
    }
}

/// A request that presented a valid data-plane token.
pub struct DataPlane;

impl FromRequest for DataPlane {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let tokens = req.app_data::<web::Data<DataPlaneTokens>>();
        let presented = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        std::future::ready(match (tokens, presented) {
            (Some(tokens), Some(p)) if tokens.accepts(p) => Ok(DataPlane),
            (Some(tokens), _) if tokens.0.is_empty() => Err(ApiError::DataPlaneUnauthorized(
                "this control plane serves no data planes: set MCPGW_DATA_PLANE_TOKEN".into(),
            )),
            _ => Err(ApiError::DataPlaneUnauthorized(
                "a valid data-plane token is required (Authorization: Bearer <MCPGW_DATA_PLANE_TOKEN>)".into(),
            )),
        })
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SnapshotQuery {
    /// The revision the data plane has; the answer waits for a newer one.
    pub after: Option<u64>,
    /// Seconds to wait for a newer revision (0-60, default 25); then 204.
    pub wait: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/data-plane/snapshot", tag = "data-plane", params(SnapshotQuery),
    security(("data_plane_token" = [])),
    responses(
        (status = 200, description = "The snapshot document (newer than `after`)", content_type = "application/json"),
        (status = 204, description = "No newer revision within `wait` seconds"),
        (status = 401, description = "Missing or wrong data-plane token", body = crate::error::ErrorBody),
    ))]
#[get("/snapshot")]
pub async fn snapshot(
    _: DataPlane,
    publisher: web::Data<Arc<Publisher>>,
    query: web::Query<SnapshotQuery>,
) -> Result<HttpResponse, ApiError> {
    let wait = Duration::from_secs(query.wait.unwrap_or(25)).min(MAX_WAIT);
    let mut latest = publisher.subscribe();
    let newer = |built: &Option<Arc<crate::publish::Built>>| {
        built.as_ref().filter(|b| query.after.is_none_or(|after| b.revision > after)).cloned()
    };
    let found = tokio::time::timeout(wait, async {
        loop {
            if let Some(built) = newer(&latest.borrow_and_update()) {
                return Some(built);
            }
            if latest.changed().await.is_err() {
                return None;
            }
        }
    })
    .await
    .ok()
    .flatten();
    Ok(match found {
        Some(built) => HttpResponse::Ok()
            .content_type("application/json")
            .insert_header((REVISION_HEADER, built.revision.to_string()))
            .insert_header(("cache-control", "no-store"))
            .body(built.bytes.clone()),
        None => {
            let mut resp = HttpResponse::NoContent();
            if let Some(built) = latest.borrow().as_ref() {
                resp.insert_header((REVISION_HEADER, built.revision.to_string()));
            }
            resp.finish()
        }
    })
}

#[utoipa::path(put, path = "/api/v1/data-plane/observations", tag = "data-plane",
    request_body(content = Object, description = "The replica's whole report of tool definitions for review"),
    security(("data_plane_token" = [])),
    responses(
        (status = 204, description = "Stored; the pin review shows it"),
        (status = 401, description = "Missing or wrong data-plane token", body = crate::error::ErrorBody),
        (status = 422, description = "Not a report", body = crate::error::ErrorBody),
    ))]
#[put("/observations")]
pub async fn observations(
    _: DataPlane,
    store: web::Data<Store>,
    JsonBody(report): JsonBody<Observations>,
) -> Result<HttpResponse, ApiError> {
    let replica = report.replica.trim();
    if replica.is_empty() || replica.len() > 200 || replica.chars().any(char::is_control) {
        return Err(ApiError::invalid("replica", "must be 1-200 printable characters"));
    }
    let text = serde_json::to_string(&report).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut conn = store.conn().await?;
    sqlx::query(
        "INSERT INTO observations (replica, report, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT(replica) DO UPDATE SET report = excluded.report, updated_at = excluded.updated_at",
    )
    .bind(replica)
    .bind(text)
    .bind(now())
    .execute(&mut *conn)
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(snapshot).service(observations);
}
