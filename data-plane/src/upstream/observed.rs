//! Reports tool definitions an admin should review: those trusted on first use and those held back
//! because they differ from their approval. The report is a file next to the snapshot
//! (`observed/<replica>.json`, see `shared::pins`) that a control plane on the same disk reads, and,
//! when the snapshot comes from a control plane over the network, is also sent there (retried until
//! it lands). It is rewritten in the background, a moment after the set changes, never on a
//! request's path.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use shared::pins::{Observations, ObservedStatus, ObservedTool};
use tokio::sync::Notify;

use crate::pull::ControlPlane;
use uuid::Uuid;

type Key = (Uuid, String, String);

pub struct Observer {
    replica: String,
    dir: Option<PathBuf>,
    control: Option<Arc<ControlPlane>>,
    tools: Mutex<BTreeMap<Key, ObservedTool>>,
    changed: Notify,
}

/// What the pin check made of one tool definition.
pub struct Seen<'a> {
    pub status: ObservedStatus,
    pub fingerprint: &'a str,
    /// For a held definition: the fingerprint it differs from.
    pub pinned: Option<&'a str>,
    pub definition: &'a Value,
}

impl Observer {
    /// An observer writing into `dir`; `None` keeps reports in memory only. What this replica
    /// reported before (under the same name) is read back, so trust on first use survives a restart.
    pub fn new(replica: String, dir: Option<PathBuf>, control: Option<Arc<ControlPlane>>) -> Arc<Self> {
        let previous: BTreeMap<Key, ObservedTool> = dir
            .as_deref()
            .and_then(|d| std::fs::read(shared::pins::observations_file(d, &replica)).ok())
            .and_then(|bytes| serde_json::from_slice::<Observations>(&bytes).ok())
            .map(|report| {
                report.tools.into_iter().map(|t| ((t.config_id, t.server.clone(), t.tool.clone()), t)).collect()
            })
            .unwrap_or_default();
        Arc::new(Observer { replica, dir, control, tools: Mutex::new(previous), changed: Notify::new() })
    }

    /// The fingerprint this replica trusted for a tool before: its first-seen definition, or the
    /// one a held definition was held against.
    pub fn trusted(&self, config_id: Uuid, server: &str, tool: &str) -> Option<String> {
        let tools = self.tools.lock().unwrap_or_else(|e| e.into_inner());
        let seen = tools.get(&(config_id, server.to_string(), tool.to_string()))?;
        match seen.status {
            ObservedStatus::FirstSeen => Some(seen.fingerprint.clone()),
            ObservedStatus::Held => seen.pinned.clone(),
        }
    }

    /// Records what the pin check made of one tool: `Some` to report it, `None` when it is approved.
    pub fn report(&self, config_id: Uuid, server: &str, tool: &str, seen: Option<Seen<'_>>) {
        let key = (config_id, server.to_string(), tool.to_string());
        let mut tools = self.tools.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match seen {
            None => tools.remove(&key).is_some(),
            Some(seen) => {
                let same =
                    tools.get(&key).is_some_and(|t| t.status == seen.status && t.fingerprint == seen.fingerprint);
                if !same {
                    let pinned_definition = tools.get(&key).and_then(|before| match before.status {
                        _ if seen.status != ObservedStatus::Held => None,
                        ObservedStatus::FirstSeen if Some(before.fingerprint.as_str()) == seen.pinned => {
                            Some(before.definition.clone())
                        }
                        ObservedStatus::Held if before.pinned.as_deref() == seen.pinned => {
                            before.pinned_definition.clone()
                        }
                        _ => None,
                    });
                    tools.insert(
                        key,
                        ObservedTool {
                            config_id,
                            server: server.to_string(),
                            tool: tool.to_string(),
                            fingerprint: seen.fingerprint.to_string(),
                            status: seen.status,
                            pinned: seen.pinned.map(str::to_string),
                            pinned_definition,
                            definition: seen.definition.clone(),
                            seen_at: Utc::now(),
                        },
                    );
                }
                !same
            }
        };
        if changed {
            self.changed.notify_one();
        }
    }

    /// What this replica reports now.
    pub fn current(&self) -> Observations {
        let tools = self.tools.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        Observations { replica: self.replica.clone(), updated_at: Utc::now(), tools }
    }

    /// Rewrites the report after each change (changes within a short window are written once). A
    /// control plane gets the report at start too (what was reported before this restart) and again
    /// until it has taken the latest.
    pub async fn run(self: Arc<Self>) {
        if self.dir.is_none() && self.control.is_none() {
            return;
        }
        let mut unsent = self.control.is_some();
        loop {
            if unsent {
                // Retry a report the control plane has not taken, sooner if the set changes.
                let _ = tokio::time::timeout(Duration::from_secs(2), self.changed.notified()).await;
            } else {
                self.changed.notified().await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let report = self.current();
            if let Some(dir) = self.dir.clone() {
                let report = report.clone();
                match tokio::task::spawn_blocking(move || shared::pins::write_observations(&dir, &report)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the observed tool definitions for review"),
                    Err(e) => tracing::warn!(error = %e, "observed tool definitions writer failed"),
                }
            }
            if let Some(control) = &self.control {
                let failed = control.report(&report).await.err();
                if let Some(e) = &failed
                    && !unsent
                {
                    tracing::warn!(error = %e, "cannot send the observed tool definitions to the control plane; retrying");
                }
                unsent = failed.is_some();
            }
        }
    }
}
