//! The gateway as an MCP client of one upstream: receives its notifications and relays them.
//!
//! - `list_changed` (tools, prompts, resources): drop the discovery cache and tell client sessions.
//! - progress: map the token of the gateway's upstream request back to the client's own token and
//!   forward to the client session that made the call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{ClientCapabilities, ClientConfig, Implementation, ProgressNotificationParam, ProgressToken};
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

/// Calls in flight whose client asked for progress: the token the gateway's request to the
/// upstream carries (rmcp issues one per request) -> (client session, client's own token).
#[derive(Default)]
pub struct ProgressRoutes {
    routes: Mutex<HashMap<ProgressToken, Route>>,
    /// Routes closed more than `LINGER` ago are swept at most this often, not on every call (a
    /// sweep visits every route).
    last_sweep: Mutex<Option<Instant>>,
}

const SWEEP_EVERY: Duration = Duration::from_millis(500);

struct Route {
    client: Peer<RoleServer>,
    client_token: ProgressToken,
    /// When the call finished. rmcp hands notifications to the handler on their own tasks, so one
    /// sent just before the response can be handled just after it: keep the route briefly.
    closed_at: Option<Instant>,
    /// Highest progress forwarded: handler tasks may run out of order, and progress must increase.
    last: Option<f64>,
}

const LINGER: Duration = Duration::from_secs(2);

/// Closes a progress route when the call ends, however it ends.
pub struct ProgressRoute<'a> {
    routes: &'a ProgressRoutes,
    upstream_token: ProgressToken,
}

impl Drop for ProgressRoute<'_> {
    fn drop(&mut self) {
        if let Some(route) = self.routes.routes.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&self.upstream_token)
        {
            route.closed_at = Some(Instant::now());
        }
    }
}

impl ProgressRoutes {
    pub fn open(
        &self,
        upstream_token: ProgressToken,
        client: Peer<RoleServer>,
        client_token: ProgressToken,
    ) -> ProgressRoute<'_> {
        let now = Instant::now();
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut last_sweep = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
        if last_sweep.is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY) {
            routes.retain(|_, r| r.closed_at.is_none_or(|t| now.duration_since(t) < LINGER));
            *last_sweep = Some(now);
        }
        drop(last_sweep);
        routes.insert(upstream_token.clone(), Route { client, client_token, closed_at: None, last: None });
        ProgressRoute { routes: self, upstream_token }
    }

    /// Where to forward `progress` for `token`, if anywhere (stale or out-of-order values are not).
    fn advance(&self, token: &ProgressToken, progress: f64) -> Option<(Peer<RoleServer>, ProgressToken)> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let route = routes.get_mut(token).filter(|r| r.closed_at.is_none_or(|t| t.elapsed() < LINGER))?;
        if route.last.is_some_and(|last| progress <= last) {
            return None;
        }
        route.last = Some(progress);
        Some((route.client.clone(), route.client_token.clone()))
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
        if let Some((client, client_token)) = self.targets.progress.advance(&params.progress_token, params.progress) {
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
