//! The gateway as an MCP client of one upstream: receives its notifications and relays them.
//!
//! - `list_changed` (tools, prompts, resources): drop the discovery cache and tell client sessions.
//! - progress: recorded in arrival order by [`ProgressRecorder`] and forwarded by the call that
//!   asked for it, under the client's own token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{
    ClientCapabilities, ClientConfig, Implementation, JsonRpcMessage, ProgressNotificationParam, ProgressToken,
    ServerNotification,
};
use rmcp::service::{NotificationContext, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::{ClientHandler, Peer, RoleClient, RoleServer};
use tokio::sync::{broadcast, mpsc};
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
/// upstream carries (rmcp issues one per request) -> the channel the call forwards from.
///
/// Progress is recorded by the upstream transport as each message is read, so everything an
/// upstream reported before its response is in the call's channel by the time the response is
/// seen, and the call forwards it all before answering its client (on streamable HTTP, a
/// notification sent after the response would find the client's stream closed).
#[derive(Default)]
pub struct ProgressRoutes {
    table: Mutex<RouteTable>,
}

#[derive(Default)]
struct RouteTable {
    routes: HashMap<ProgressToken, Route>,
    /// Notifications for a token with no route yet: rmcp reveals a request's token only once the
    /// request is on its way, and a fast upstream can report progress before the route is open.
    early: HashMap<ProgressToken, Early>,
    early_len: usize,
    /// Unclaimed early notifications are swept at most this often (a sweep visits every entry).
    last_sweep: Option<Instant>,
}

struct Early {
    since: Instant,
    notes: Vec<ProgressNotificationParam>,
}

struct Route {
    notes: mpsc::Sender<ProgressNotificationParam>,
    /// Highest progress recorded: progress must increase, whatever the upstream sends.
    last: Option<f64>,
}

impl Route {
    fn push(&mut self, note: ProgressNotificationParam) {
        if self.last.is_none_or(|last| note.progress > last) {
            self.last = Some(note.progress);
            // A full channel means a client not keeping up: progress is advisory, drop it.
            let _ = self.notes.try_send(note);
        }
    }
}

const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// How long an early notification waits for its route.
const LINGER: Duration = Duration::from_secs(2);
/// Early notifications held at most, across all tokens (most are for calls whose client did not
/// ask for progress, and are never claimed).
const MAX_EARLY: usize = 1024;
/// Notifications one call may have waiting to be forwarded.
const ROUTE_CAPACITY: usize = 256;

/// One call's progress, forwarded to its client under the client's own token; closes the route
/// when dropped, however the call ends.
pub struct ProgressRoute<'a> {
    routes: &'a ProgressRoutes,
    upstream_token: ProgressToken,
    client: Peer<RoleServer>,
    client_token: ProgressToken,
    notes: mpsc::Receiver<ProgressNotificationParam>,
}

impl ProgressRoute<'_> {
    /// The next notification recorded for this call.
    pub async fn next(&mut self) -> Option<ProgressNotificationParam> {
        self.notes.recv().await
    }

    /// Sends one notification to the client.
    pub async fn forward(&self, mut note: ProgressNotificationParam) {
        note.progress_token = self.client_token.clone();
        let _ = self.client.notify_progress(note).await;
    }

    /// Forwards everything recorded so far.
    pub async fn drain(&mut self) {
        while let Ok(note) = self.notes.try_recv() {
            self.forward(note).await;
        }
    }
}

impl Drop for ProgressRoute<'_> {
    fn drop(&mut self) {
        self.routes.lock().routes.remove(&self.upstream_token);
    }
}

impl RouteTable {
    fn sweep(&mut self, now: Instant) {
        if self.last_sweep.is_some_and(|t| now.duration_since(t) < SWEEP_EVERY) {
            return;
        }
        self.early.retain(|_, e| now.duration_since(e.since) < LINGER);
        self.early_len = self.early.values().map(|e| e.notes.len()).sum();
        self.last_sweep = Some(now);
    }
}

impl ProgressRoutes {
    fn lock(&self) -> std::sync::MutexGuard<'_, RouteTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes the progress of the upstream request `upstream_token` to `client`.
    pub fn open(
        &self,
        upstream_token: ProgressToken,
        client: Peer<RoleServer>,
        client_token: ProgressToken,
    ) -> ProgressRoute<'_> {
        let (sender, notes) = mpsc::channel(ROUTE_CAPACITY);
        let mut route = Route { notes: sender, last: None };
        let mut table = self.lock();
        table.sweep(Instant::now());
        if let Some(early) = table.early.remove(&upstream_token) {
            table.early_len -= early.notes.len();
            early.notes.into_iter().for_each(|note| route.push(note));
        }
        table.routes.insert(upstream_token.clone(), route);
        ProgressRoute { routes: self, upstream_token, client, client_token, notes }
    }

    /// Records a notification from the upstream, in the order the upstream sent it.
    pub fn record(&self, note: &ProgressNotificationParam) {
        let mut table = self.lock();
        if let Some(route) = table.routes.get_mut(&note.progress_token) {
            route.push(note.clone());
            return;
        }
        let now = Instant::now();
        table.sweep(now);
        if table.early_len < MAX_EARLY {
            table.early_len += 1;
            let early = table.early.entry(note.progress_token.clone()).or_insert(Early { since: now, notes: vec![] });
            early.notes.push(note.clone());
        }
    }
}

/// An upstream transport that records progress notifications as they are read, before rmcp
/// dispatches them (its handlers run on their own tasks, possibly after the response).
pub struct ProgressRecorder<T> {
    pub inner: T,
    pub targets: Arc<RelayTargets>,
}

impl<T: Transport<RoleClient>> Transport<RoleClient> for ProgressRecorder<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        let message = self.inner.receive().await;
        if let Some(JsonRpcMessage::Notification(n)) = &message
            && let ServerNotification::ProgressNotification(progress) = &n.notification
        {
            self.targets.progress.record(&progress.params);
        }
        message
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
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
