//! Reports tool definitions an admin should review: those trusted on first use and those held back
//! because they differ from their approval. The report is a file next to the snapshot
//! (`observed/<replica>.json`, see `shared::pins`) that the control plane reads; it is rewritten in
//! the background, a moment after the set changes, never on a request's path.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use shared::pins::{Observations, ObservedStatus, ObservedTool};
use tokio::sync::Notify;
use uuid::Uuid;

type Key = (Uuid, String, String);

pub struct Observer {
    replica: String,
    dir: Option<PathBuf>,
    tools: Mutex<BTreeMap<Key, ObservedTool>>,
    changed: Notify,
}

impl Observer {
    /// An observer writing into `dir`; `None` keeps reports in memory only.
    pub fn new(replica: String, dir: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Observer { replica, dir, tools: Mutex::new(BTreeMap::new()), changed: Notify::new() })
    }

    /// Records what the pin check made of one tool: `Some` to report it, `None` when it is approved.
    pub fn report(&self, config_id: Uuid, server: &str, tool: &str, seen: Option<(ObservedStatus, &str, &Value)>) {
        let key = (config_id, server.to_string(), tool.to_string());
        let mut tools = self.tools.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match seen {
            None => tools.remove(&key).is_some(),
            Some((status, fingerprint, definition)) => {
                let same = tools.get(&key).is_some_and(|t| t.status == status && t.fingerprint == fingerprint);
                if !same {
                    tools.insert(
                        key,
                        ObservedTool {
                            config_id,
                            server: server.to_string(),
                            tool: tool.to_string(),
                            fingerprint: fingerprint.to_string(),
                            status,
                            definition: definition.clone(),
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

    /// Rewrites the report after each change (changes within a short window are written once).
    pub async fn run(self: Arc<Self>) {
        let Some(dir) = self.dir.clone() else { return };
        loop {
            self.changed.notified().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let report = self.current();
            let dir = dir.clone();
            match tokio::task::spawn_blocking(move || shared::pins::write_observations(&dir, &report)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the observed tool definitions for review"),
                Err(e) => tracing::warn!(error = %e, "observed tool definitions writer failed"),
            }
        }
    }
}
