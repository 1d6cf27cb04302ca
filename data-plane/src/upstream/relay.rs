//! The gateway as an MCP client of one upstream: receives its notifications and relays them.
//!
//! - `list_changed` (tools, prompts, resources): drop the discovery cache and tell client sessions.
//! - progress: upstream progress tokens are gateway-issued; map them back to the client's own token
//!   and forward to the client session that made the call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rmcp::model::{
    ClientCapabilities, ClientConfig, Implementation, NumberOrString, ProgressNotificationParam, ProgressToken,
};
use rmcp::service::NotificationContext;
use rmcp::{ClientHandler, Peer, RoleClient, RoleServer};
use tokio::sync::broadcast;
use uuid::Uuid;

/// What changed upstream (or through a reload), for sessions to pass on to their clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
}

#[derive(Debug, Clone, Copy)]
pub enum ChangeEvent {
    /// An upstream of this config announced a change.
    Upstream { config_id: Uuid, kind: ListKind },
    /// A new snapshot was installed: sessions compare their config with the new one.
    Reloaded,
}

/// Calls in flight that asked for progress: gateway token -> (client session, client's token).
#[derive(Default)]
pub struct ProgressRoutes {
    next: AtomicU64,
    routes: Mutex<HashMap<u64, (Peer<RoleServer>, ProgressToken)>>,
}

/// Removes a progress route when the call ends, however it ends.
pub struct ProgressRoute<'a> {
    routes: &'a ProgressRoutes,
    id: u64,
    pub token: ProgressToken,
}

impl Drop for ProgressRoute<'_> {
    fn drop(&mut self) {
        self.routes.routes.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

impl ProgressRoutes {
    pub fn open(&self, client: Peer<RoleServer>, client_token: ProgressToken) -> ProgressRoute<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).insert(id, (client, client_token));
        ProgressRoute { routes: self, id, token: ProgressToken(NumberOrString::String(format!("mcpgw-{id}").into())) }
    }

    fn lookup(&self, token: &ProgressToken) -> Option<(Peer<RoleServer>, ProgressToken)> {
        let NumberOrString::String(s) = &token.0 else { return None };
        let id: u64 = s.strip_prefix("mcpgw-")?.parse().ok()?;
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }
}

/// State an upstream's notifications act on, shared with its `Upstream`.
pub struct RelayTargets {
    pub config_id: Uuid,
    pub server: String,
    pub progress: ProgressRoutes,
    pub events: broadcast::Sender<ChangeEvent>,
    /// Called when the upstream's tool list changed (drops the discovery cache).
    pub tools_changed: Box<dyn Fn() + Send + Sync>,
}

pub struct UpstreamClient {
    pub targets: Arc<RelayTargets>,
}

impl UpstreamClient {
    fn announce(&self, kind: ListKind) {
        let _ = self.targets.events.send(ChangeEvent::Upstream { config_id: self.targets.config_id, kind });
    }
}

impl ClientHandler for UpstreamClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(ClientCapabilities::default(), Implementation::new("mcpgw", env!("CARGO_PKG_VERSION")))
    }

    async fn on_progress(&self, params: ProgressNotificationParam, _context: NotificationContext<RoleClient>) {
        if let Some((client, client_token)) = self.targets.progress.lookup(&params.progress_token) {
            let mut forwarded = params;
            forwarded.progress_token = client_token;
            let _ = client.notify_progress(forwarded).await;
        }
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        tracing::info!(server = %self.targets.server, "upstream tool list changed");
        (self.targets.tools_changed)();
        self.announce(ListKind::Tools);
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.announce(ListKind::Prompts);
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.announce(ListKind::Resources);
    }
}
