//! The gateway's shared state: the current catalog (swapped whole on reload) and the long-lived
//! services around it (authentication cache, upstream pool, metrics, audit log).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use crate::audit::AuditLog;
use crate::auth::{AuthError, Authenticator, Principal};
use crate::catalog::{Catalog, Remote};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::rate_limit::RateLimiter;
use crate::sealed_session::Sealer;
use crate::session::{Limits, Sessions};
use crate::upstream::pool::UpstreamPool;
use crate::upstream::relay::ChangeEvent;
use shared::snapshot::GuardrailProvider as ProviderSettings;

/// What `/readyz` reports about snapshot loading.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReloadStatus {
    pub loaded_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// With `MCPGW_CONTROL_URL`: whether the control plane answers.
    pub control_plane: Option<ControlPlaneStatus>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ControlPlaneStatus {
    pub url: String,
    pub reachable: bool,
    pub last_answer_at: Option<DateTime<Utc>>,
    /// Why the last request failed, while it fails.
    pub error: Option<String>,
    pub failing_since: Option<DateTime<Utc>>,
}

pub struct Gateway {
    pub config: Config,
    catalog: RwLock<Arc<Catalog>>,
    pub auth: Authenticator,
    pub pool: Arc<UpstreamPool>,
    pub metrics: Arc<Metrics>,
    pub audit: AuditLog,
    pub events: broadcast::Sender<ChangeEvent>,
    /// Streamable-HTTP sessions and who opened them.
    pub sessions: Arc<Sessions>,
    pub rate_limiter: RateLimiter,
    pub status: Mutex<ReloadStatus>,
    /// Sign-in with OAuth access tokens, when an issuer is configured.
    pub oauth: Option<Arc<crate::oauth::OAuth>>,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("snapshot revision {offered} is older than the one being served ({current}); keeping {current}")]
    Older { offered: u64, current: u64 },
}

impl Gateway {
    pub fn new(
        config: Config,
        pool: Arc<UpstreamPool>,
        metrics: Arc<Metrics>,
        audit: AuditLog,
        events: broadcast::Sender<ChangeEvent>,
    ) -> Self {
        let limits = Limits { per_key: config.max_sessions_per_key, total: config.max_sessions };
        let sealer = Arc::new(Sealer::new(config.session_secret.as_deref(), config.session_lifetime()));
        Gateway {
            sessions: Arc::new(Sessions::new(limits, sealer)),
            rate_limiter: match config.redis_url.as_deref().map(RateLimiter::with_redis) {
                None => RateLimiter::local(),
                Some(Ok(shared)) => shared,
                // Settings were checked at start; a URL refused only now still leaves limits in place.
                Some(Err(e)) => {
                    tracing::error!(error = %e, "rate limits are counted by this replica alone");
                    RateLimiter::local()
                }
            },
            config,
            catalog: RwLock::new(Arc::new(Catalog::empty())),
            auth: Authenticator::default(),
            pool,
            metrics,
            audit,
            events,
            status: Mutex::new(ReloadStatus::default()),
            oauth: None,
        }
    }

    pub fn with_oauth(mut self, oauth: Option<Arc<crate::oauth::OAuth>>) -> Self {
        self.oauth = oauth;
        self
    }

    /// The catalog being served; callers keep the `Arc` for the whole request so a reload never
    /// changes the rules halfway through it.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_ready(&self) -> bool {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).loaded_at.is_some()
    }

    /// Swaps in a newer catalog. An equal revision is a no-op; a lower one is refused.
    pub fn install(&self, mut next: Catalog) -> Result<bool, InstallError> {
        next.remote = self.remote_for(next.provider_settings.as_ref());
        let next = Arc::new(next);
        {
            let mut current = self.catalog.write().unwrap_or_else(|e| e.into_inner());
            let loaded = self.is_ready();
            if loaded && next.revision < current.revision {
                return Err(InstallError::Older { offered: next.revision, current: current.revision });
            }
            if loaded && next.revision == current.revision {
                return Ok(false);
            }
            *current = next.clone();
        }
        self.metrics.snapshot_revision.store(next.revision, Ordering::Relaxed);
        self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
        self.status.lock().unwrap_or_else(|e| e.into_inner()).loaded_at = Some(Utc::now());
        self.pool.settings().tokens.set_issued(next.oauth_tokens.clone());
        self.pool.reconcile(&next);
        self.sessions.end_revoked(&next);
        // Sessions compare their config with the new one and tell their clients if it changed.
        let _ = self.events.send(ChangeEvent::Reloaded);
        tracing::info!(revision = next.revision, keys = next.key_count(), "snapshot loaded");
        Ok(true)
    }

    /// The remote guardrail provider for `settings`: the current one when they are unchanged (its
    /// connections stay warm), a new one otherwise.
    fn remote_for(&self, settings: Option<&ProviderSettings>) -> Option<Remote> {
        let settings = settings?;
        if let Some(current) = self.catalog().remote.as_ref().filter(|r| &r.settings == settings) {
            return Some(current.clone());
        }
        match crate::guard::remote::from_settings(settings, self.config.guardrail_api_key.clone()) {
            Ok(provider) => Some(Remote { settings: settings.clone(), provider }),
            Err(e) => {
                // Calls that need it fail closed (or open, per policy) with "no provider".
                tracing::error!(error = %e, "cannot set up the remote guardrail provider");
                None
            }
        }
    }

    /// Starts reporting the control plane at `url` in `/readyz` (unreachable until it answers).
    pub fn follow_control_plane(&self, url: String) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.control_plane = Some(ControlPlaneStatus { url, ..Default::default() });
    }

    pub fn control_plane_reachable(&self) -> bool {
        let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.control_plane.as_ref().is_some_and(|cp| cp.reachable)
    }

    /// Records an answer; true when the control plane was failing before (worth a log line).
    pub fn control_plane_answered(&self) -> bool {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let Some(cp) = status.control_plane.as_mut() else { return false };
        let recovered = cp.error.is_some();
        (cp.reachable, cp.error, cp.failing_since, cp.last_answer_at) = (true, None, None, Some(Utc::now()));
        recovered
    }

    /// Records a failure; true when its reason is new (worth a log line).
    pub fn control_plane_failed(&self, reason: &str) -> bool {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let Some(cp) = status.control_plane.as_mut() else { return true };
        let new = cp.error.as_deref() != Some(reason);
        cp.reachable = false;
        cp.failing_since.get_or_insert_with(Utc::now);
        cp.error = Some(reason.to_string());
        new
    }

    pub fn record_reload_failure(&self, reason: String) {
        self.metrics.reload_failures.fetch_add(1, Ordering::Relaxed);
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.last_error = Some(reason);
        status.last_error_at = Some(Utc::now());
    }

    /// Authenticates `key` against the current catalog, counting failures.
    pub async fn authenticate(&self, key: Option<&str>) -> Result<Principal, AuthError> {
        let result = match key {
            None => Err(AuthError::Missing),
            Some(key) => self.auth.authenticate(&self.catalog(), key).await,
        };
        if let Err(e) = &result {
            self.metrics.record_auth_failure(e.reason());
        }
        result
    }
}
