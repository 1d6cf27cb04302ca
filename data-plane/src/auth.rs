//! Client authentication: API key -> principal (key, user, project, config).
//!
//! argon2 runs once per (key secret, stored hash); the verdict is cached in memory under the key's
//! SHA-256 fingerprint, so later requests pay a hash-map lookup. A reload that leaves a key's hash
//! unchanged keeps its verdict; a rotated key has a new hash and is verified afresh. Disabled,
//! expired and deleted keys are checked against the current catalog on every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use shared::{RateLimit, api_key};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::catalog::{Catalog, ConfigView};

/// Who is calling, resolved against one catalog revision.
#[derive(Clone)]
pub struct Principal {
    /// The revision this caller was resolved against: a request takes every rule from it, so a
    /// reload landing halfway through cannot change them.
    pub catalog: Arc<Catalog>,
    pub key_id: Arc<str>,
    /// The key's stored hash: what a session opened with this key is bound to.
    pub credential: Arc<str>,
    pub user_id: Uuid,
    pub project_id: Uuid,
    pub project_name: Arc<str>,
    /// The project's MCP config; `None` when the project has none assigned (no tools at all).
    pub config: Option<Arc<ConfigView>>,
    /// Limits on the calls of this key, and of its whole project.
    pub key_rate_limit: Option<RateLimit>,
    pub project_rate_limit: Option<RateLimit>,
    /// Signed in with an OAuth access token: `key_id` is `oauth` and `credential` names the
    /// issuer and subject.
    pub oauth: bool,
    /// Admitted to the project by this OAuth group, not by a membership.
    pub oauth_group: Option<Arc<str>>,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("key_id", &self.key_id)
            .field("project", &self.project_name)
            .field("revision", &self.catalog.revision)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send `Authorization: Bearer <key>` or `apikey: <key>`")]
    Missing,
    #[error("invalid API key")]
    Invalid,
    #[error("API key is disabled")]
    Disabled,
    #[error("API key has expired")]
    Expired,
}

impl AuthError {
    /// Metric label.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid => "invalid",
            AuthError::Disabled => "disabled",
            AuthError::Expired => "expired",
        }
    }
}

/// Cached outcome of checking one secret against one stored hash.
struct Verdict {
    hash: Arc<str>,
    valid: bool,
}

/// Bound on remembered verdicts; past it the cache starts over (entries are cheap to rebuild).
const MAX_CACHED_VERDICTS: usize = 200_000;

pub struct Authenticator {
    verdicts: Mutex<HashMap<[u8; 32], Verdict>>,
    /// argon2 is memory- and CPU-hungry: bound how many run at once so a burst of bad keys cannot
    /// starve the machine.
    hashing: Semaphore,
}

impl Default for Authenticator {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Authenticator { verdicts: Mutex::new(HashMap::new()), hashing: Semaphore::new(cpus) }
    }
}

impl Authenticator {
    pub async fn authenticate(&self, catalog: &Arc<Catalog>, key: &str) -> Result<Principal, AuthError> {
        let id = api_key::lookup_id(key).ok_or(AuthError::Invalid)?;
        let record = catalog.key(&id).ok_or(AuthError::Invalid)?;
        let fingerprint = api_key::fingerprint(key);

        let cached = self.cached(&fingerprint, &record.hash);
        let valid = match cached {
            Some(valid) => valid,
            None => {
                let valid = self.verify(key, &record.hash).await;
                self.remember(fingerprint, record.hash.clone(), valid);
                valid
            }
        };
        if !valid {
            return Err(AuthError::Invalid);
        }
        if record.disabled {
            return Err(AuthError::Disabled);
        }
        if record.expires_at.is_some_and(|t| t <= Utc::now()) {
            return Err(AuthError::Expired);
        }
        let project = catalog.project(record.project_id).ok_or(AuthError::Invalid)?;
        Ok(Principal {
            catalog: catalog.clone(),
            key_id: record.id.clone(),
            credential: record.hash.clone(),
            user_id: record.user_id,
            project_id: project.id,
            project_name: project.name.clone(),
            config: project.config.clone(),
            key_rate_limit: record.rate_limit,
            project_rate_limit: project.rate_limit,
            oauth: false,
            oauth_group: None,
        })
    }

    fn cached(&self, fingerprint: &[u8; 32], hash: &Arc<str>) -> Option<bool> {
        let verdicts = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        verdicts.get(fingerprint).filter(|v| v.hash == *hash).map(|v| v.valid)
    }

    fn remember(&self, fingerprint: [u8; 32], hash: Arc<str>, valid: bool) {
        let mut verdicts = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        if verdicts.len() >= MAX_CACHED_VERDICTS {
            verdicts.clear();
        }
        verdicts.insert(fingerprint, Verdict { hash, valid });
    }

    async fn verify(&self, key: &str, hash: &Arc<str>) -> bool {
        let Ok(_permit) = self.hashing.acquire().await else { return false };
        let (key, hash) = (key.to_string(), hash.clone());
        tokio::task::spawn_blocking(move || api_key::verify(&key, &hash)).await.unwrap_or(false)
    }

    /// Number of remembered verdicts.
    #[cfg(test)]
    fn cached_verdicts(&self) -> usize {
        self.verdicts.lock().map(|v| v.len()).unwrap_or(0)
    }
}

/// The key from `Authorization: Bearer <key>` or the Python gateway's `apikey: <key>` header.
pub fn key_from_headers(headers: &axum::http::HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = value.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty());
    }
    headers.get("apikey").and_then(|v| v.to_str().ok()).map(str::trim).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::snapshot::{Snapshot, SnapshotApiKey, SnapshotProject, SnapshotUser};

    fn catalog_with(key: &api_key::NewKey, disabled: bool) -> Arc<Catalog> {
        let mut s = Snapshot::empty();
        s.revision = 1;
        let (user, project) = (Uuid::new_v4(), Uuid::new_v4());
        s.users.push(SnapshotUser { id: user, email: "a@example.com".into() });
        s.projects.push(SnapshotProject {
            id: project,
            name: "p".into(),
            mcp_config_id: None,
            members: vec![user],
            rate_limit: None,
            oauth_groups: vec![],
        });
        s.api_keys.push(SnapshotApiKey {
            id: key.id.clone(),
            project_id: project,
            user_id: user,
            name: None,
            hash: api_key::hash(&key.secret).unwrap(),
            expires_at: None,
            disabled,
            rate_limit: None,
        });
        s.validate().unwrap();
        Arc::new(Catalog::build(s))
    }

    #[tokio::test]
    async fn verifies_once_then_serves_from_cache() {
        let key = api_key::generate();
        let catalog = catalog_with(&key, false);
        let auth = Authenticator::default();
        let p = auth.authenticate(&catalog, &key.secret).await.unwrap();
        assert_eq!(&*p.key_id, key.id.as_str());
        assert_eq!(auth.cached_verdicts(), 1);
        // A second check is served from the cache: make the stored verdict the only way to pass.
        auth.authenticate(&catalog, &key.secret).await.unwrap();
        assert_eq!(auth.cached_verdicts(), 1);

        let wrong = api_key::generate_for(&key.id);
        assert_eq!(auth.authenticate(&catalog, &wrong.secret).await.unwrap_err(), AuthError::Invalid);
        assert_eq!(auth.cached_verdicts(), 2, "a wrong secret is remembered too");
        assert_eq!(auth.authenticate(&catalog, "mcpgw_nope").await.unwrap_err(), AuthError::Invalid);

        let disabled = catalog_with(&key, true);
        // New hash in the new catalog: verified afresh, then refused as disabled.
        assert_eq!(auth.authenticate(&disabled, &key.secret).await.unwrap_err(), AuthError::Disabled);
    }

    #[test]
    fn header_forms() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(key_from_headers(&h), None);
        h.insert("apikey", "k1".parse().unwrap());
        assert_eq!(key_from_headers(&h), Some("k1"));
        h.insert("authorization", "Bearer k2".parse().unwrap());
        assert_eq!(key_from_headers(&h), Some("k2"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(key_from_headers(&h), None);
    }
}
