//! Shared upstreams, one per (config, server), reconciled with each new catalog.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::server::ServerSpec;
use uuid::Uuid;

use super::{Upstream, UpstreamSettings};
use crate::catalog::Catalog;

/// How long a retired upstream waits for its calls in flight before it is closed anyway.
const RETIRE_GRACE: Duration = Duration::from_secs(60);

pub struct UpstreamPool {
    settings: Arc<UpstreamSettings>,
    upstreams: Mutex<HashMap<(Uuid, String), Arc<Upstream>>>,
}

impl UpstreamPool {
    pub fn new(settings: Arc<UpstreamSettings>) -> Self {
        UpstreamPool { settings, upstreams: Mutex::new(HashMap::new()) }
    }

    pub fn settings(&self) -> &Arc<UpstreamSettings> {
        &self.settings
    }

    /// The shared upstream for `spec` in `config_id`, created on first use. A spec that differs
    /// from the pooled one (a reload raced this call) replaces it.
    pub fn get(&self, config_id: Uuid, spec: &Arc<ServerSpec>) -> Arc<Upstream> {
        let mut upstreams = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        let key = (config_id, spec.server_name.clone());
        if let Some(existing) = upstreams.get(&key)
            && (Arc::ptr_eq(&existing.spec, spec) || *existing.spec == **spec)
        {
            return existing.clone();
        }
        let fresh = Upstream::new(config_id, spec.clone(), self.settings.clone());
        if let Some(old) = upstreams.insert(key, fresh.clone()) {
            tokio::spawn(async move { old.retire(RETIRE_GRACE).await });
        }
        fresh
    }

    /// A private upstream for one client session (servers marked `per_session`); it is closed when
    /// the session drops it.
    pub fn private(&self, config_id: Uuid, spec: &Arc<ServerSpec>) -> Arc<Upstream> {
        Upstream::new(config_id, spec.clone(), self.settings.clone())
    }

    /// Keeps upstreams whose server is unchanged in `catalog`; retires the rest (their processes end
    /// once calls in flight finish).
    pub fn reconcile(&self, catalog: &Catalog) {
        let mut upstreams = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        let stale: Vec<(Uuid, String)> = upstreams
            .iter()
            .filter(|((config_id, server), upstream)| {
                let current = catalog.config(*config_id).and_then(|c| c.server(server));
                current.is_none_or(|spec| **spec != *upstream.spec)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some(old) = upstreams.remove(&key) {
                tracing::info!(server = %key.1, config = %key.0, "upstream removed or changed; retiring it");
                tokio::spawn(async move { old.retire(RETIRE_GRACE).await });
            }
        }
    }

    /// Every pooled upstream (for status and cache meta-tools, and idle reaping).
    pub fn all(&self) -> Vec<Arc<Upstream>> {
        self.upstreams.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Closes connections that have been idle for `idle`, every `idle / 4` (at least once a second).
    pub async fn reap_idle(self: Arc<Self>, idle: Duration) {
        let period = (idle / 4).max(Duration::from_secs(1));
        loop {
            tokio::time::sleep(period).await;
            for upstream in self.all() {
                upstream.close_if_idle(idle).await;
            }
        }
    }

    /// Closes everything (shutdown).
    pub async fn shutdown(&self) {
        let all: Vec<Arc<Upstream>> =
            self.upstreams.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, u)| u).collect();
        futures::future::join_all(all.iter().map(|u| u.retire(Duration::from_secs(5)))).await;
    }
}
