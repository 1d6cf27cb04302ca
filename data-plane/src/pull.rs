//! The snapshot from a control plane on another host (`MCPGW_CONTROL_URL`), instead of a file.
//!
//! A long poll: each request names the revision being served and the control plane answers as soon
//! as a newer one is committed (through any of its instances), or with 204 after a while. A
//! document is validated exactly like a file, installed, then kept on this host's disk (mode 0600)
//! so that a restart while no control plane answers serves the last good one. Any failure (network,
//! TLS, a refused token, a corrupt or older document) keeps the snapshot being served, is logged
//! once per distinct reason and shown in `/readyz`, and is retried with a capped backoff.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use shared::pins::Observations;
use shared::snapshot::Snapshot;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::state::Gateway;

/// How long the control plane may hold a request before answering "no newer revision".
const WAIT: Duration = Duration::from_secs(25);
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("the control plane refused the data-plane token (MCPGW_DATA_PLANE_TOKEN): {0}")]
    Unauthorized(String),
    #[error("the control plane answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("cannot reach the control plane: {0}")]
    Unreachable(String),
    #[error("the control plane sent a snapshot that is not valid: {0}")]
    Invalid(String),
    #[error(transparent)]
    Refused(#[from] crate::state::InstallError),
}

/// The authenticated channel to the control plane: snapshots one way, review reports the other.
pub struct ControlPlane {
    http: reqwest::Client,
    base: reqwest::Url,
    token: String,
}

impl ControlPlane {
    /// From the settings, when `MCPGW_CONTROL_URL` is set (validated by [`Config::validate`]).
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Arc<Self>>> {
        let Some(url) = config.control_url.as_deref() else { return Ok(None) };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base = reqwest::Url::parse(url.trim_end_matches('/'))?;
        let token = config.data_plane_token.clone().unwrap_or_default();
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(WAIT + Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &config.control_ca {
            let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", ca.display()))?;
            http = http.tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem)?);
        }
        Ok(Some(Arc::new(ControlPlane { http: http.build()?, base, token })))
    }

    pub fn url(&self) -> String {
        self.base.to_string()
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}/api/v1/data-plane/{path}", self.base.as_str().trim_end_matches('/'))
    }

    /// The next snapshot newer than `after` (None: nothing newer within `wait`).
    async fn next(&self, after: Option<u64>, wait: Duration) -> Result<Option<Vec<u8>>, PullError> {
        let mut url = format!("{}?wait={}", self.endpoint("snapshot"), wait.as_secs());
        if let Some(after) = after {
            url.push_str(&format!("&after={after}"));
        }
        let resp =
            self.http.get(url).bearer_auth(&self.token).send().await.map_err(|e| PullError::Unreachable(chain(&e)))?;
        match resp.status().as_u16() {
            204 => Ok(None),
            200 => {
                let bytes = resp.bytes().await.map_err(|e| PullError::Unreachable(chain(&e)))?;
                Ok(Some(bytes.to_vec()))
            }
            status => {
                let body = resp.text().await.unwrap_or_default();
                let message = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                    .unwrap_or_else(|| body.chars().take(200).collect());
                Err(if status == 401 {
                    PullError::Unauthorized(message)
                } else {
                    PullError::Status { status, body: message }
                })
            }
        }
    }

    /// Sends this replica's whole report of tool definitions awaiting review.
    pub async fn report(&self, report: &Observations) -> Result<(), PullError> {
        let resp = self
            .http
            .put(self.endpoint("observations"))
            .bearer_auth(&self.token)
            .json(report)
            .send()
            .await
            .map_err(|e| PullError::Unreachable(chain(&e)))?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            401 => Err(PullError::Unauthorized(resp.text().await.unwrap_or_default())),
            status => Err(PullError::Status { status, body: resp.text().await.unwrap_or_default() }),
        }
    }
}

/// An error and its causes on one line (a TLS failure is several layers down).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// Follows the control plane until the process ends; `cache` keeps the last good snapshot.
pub async fn follow(gateway: Arc<Gateway>, control: Arc<ControlPlane>, cache: PathBuf) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let after = gateway.is_ready().then(|| gateway.catalog().revision);
        // Until the control plane has answered (at start, after a failure), ask without waiting, so
        // that `/readyz` tells at once whether it answers.
        let wait = if gateway.control_plane_reachable() { WAIT } else { Duration::ZERO };
        let result = match control.next(after, wait).await {
            Ok(None) => Ok(()),
            Ok(Some(bytes)) => install(&gateway, bytes, &cache).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                if gateway.control_plane_answered() {
                    tracing::info!(url = %control.url(), "the control plane answers again; following its revisions");
                }
                backoff = MIN_BACKOFF;
            }
            Err(e) => {
                let reason = e.to_string();
                if gateway.control_plane_failed(&reason) {
                    let serving = gateway.catalog();
                    let age = serving.generated_at.map(|t| (Utc::now() - t).num_seconds());
                    tracing::error!(
                        url = %control.url(), %reason, revision = serving.revision, age_secs = age,
                        "cannot take a snapshot from the control plane; still serving the last good one"
                    );
                }
                if matches!(e, PullError::Invalid(_) | PullError::Refused(_)) {
                    gateway.record_reload_failure(reason);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn install(gateway: &Gateway, bytes: Vec<u8>, cache: &std::path::Path) -> Result<(), PullError> {
    let (catalog, bytes) = tokio::task::spawn_blocking(move || {
        Snapshot::from_json(&bytes).map(|s| (Catalog::build(s), bytes)).map_err(|e| PullError::Invalid(e.to_string()))
    })
    .await
    .map_err(|e| PullError::Invalid(e.to_string()))??;
    let revision = catalog.revision;
    if gateway.install(catalog)? {
        let path = cache.to_path_buf();
        match tokio::task::spawn_blocking(move || shared::snapshot_file::write_bytes(&path, &bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(revision, path = %cache.display(), error = %e, "cannot keep the snapshot on disk")
            }
            Err(e) => tracing::warn!(error = %e, "snapshot cache writer failed"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_chains_read_as_one_line_without_repeats() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("invalid peer certificate: UnknownIssuer")]
        struct Inner;
        assert_eq!(super::chain(&Outer(Inner)), "outer: invalid peer certificate: UnknownIssuer");
    }
}
