//! The gateway as an MCP client of one upstream: receives its notifications and relays them.
//!
//! - `list_changed` (tools, prompts, resources): drop the discovery cache and tell client sessions.
//! - progress: recorded in arrival order by [`NotificationTap`] and forwarded by the call that
//!   asked for it, under the client's own token.
//! - log messages, sampling and elicitation: relayed to the session they can be attributed to
//!   (see [`super::callers`]); resource updates to the sessions subscribed.

// Logging and sampling: rmcp marks them deprecated for a future protocol version; clients speak
// today's, and the gateway relays them.
#![allow(deprecated)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rmcp::model::{
    ClientCapabilities, ClientConfig, ClientResult, CreateMessageRequest, CreateMessageRequestParams,
    CreateMessageResult, ElicitRequest, ElicitRequestParams, ElicitResult, Extensions, Implementation, JsonRpcMessage,
    LoggingMessageNotification, LoggingMessageNotificationParam, ProgressNotificationParam, ProgressToken,
    ResourceUpdatedNotification, ResourceUpdatedNotificationParam, ServerNotification, ServerRequest,
};
use rmcp::service::{
    NotificationContext, OriginatingRequestId, RequestContext, RxJsonRpcMessage, ServiceError, TxJsonRpcMessage,
};
use rmcp::transport::Transport;
use rmcp::{ClientHandler, ErrorData as McpError, Peer, RoleClient, RoleServer};
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use super::callers::Callers;

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

/// Where a call's progress goes to its client.
#[derive(Clone)]
pub enum ProgressSink {
    /// Through the client's session, which frames it on the call's event stream.
    Session(Peer<RoleServer>),
    /// Into the call's own response (a call answered without rmcp's session worker).
    Response(mpsc::Sender<ProgressNotificationParam>),
}

impl ProgressSink {
    /// Sends one notification to the client, under the client's own token.
    pub async fn forward(&self, client_token: &ProgressToken, mut note: ProgressNotificationParam) {
        note.progress_token = client_token.clone();
        match self {
            ProgressSink::Session(peer) => {
                let _ = peer.notify_progress(note).await;
            }
            ProgressSink::Response(response) => {
                let _ = response.send(note).await;
            }
        }
    }
}

/// One call's progress, forwarded to its client under the client's own token; closes the route
/// when dropped, however the call ends.
pub struct ProgressRoute<'a> {
    routes: &'a ProgressRoutes,
    upstream_token: ProgressToken,
    client: ProgressSink,
    client_token: ProgressToken,
    notes: mpsc::Receiver<ProgressNotificationParam>,
}

impl ProgressRoute<'_> {
    /// The next notification recorded for this call.
    pub async fn next(&mut self) -> Option<ProgressNotificationParam> {
        self.notes.recv().await
    }

    /// Sends one notification to the client.
    pub async fn forward(&self, note: ProgressNotificationParam) {
        self.client.forward(&self.client_token, note).await;
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
        client: ProgressSink,
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

/// An upstream transport that acts on notifications as they are read, before rmcp dispatches
/// them (its handlers run on their own tasks, possibly after the response they preceded): progress
/// is recorded for its call, and log messages are attributed while their call is still in flight.
pub struct NotificationTap<T> {
    pub inner: T,
    pub targets: Arc<RelayTargets>,
}

impl<T: Transport<RoleClient>> Transport<RoleClient> for NotificationTap<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        let message = self.inner.receive().await;
        if let Some(JsonRpcMessage::Notification(n)) = &message {
            match &n.notification {
                ServerNotification::ProgressNotification(progress) => self.targets.progress.record(&progress.params),
                // List changes reach rmcp's client handler, which acts on them.
                other => self.targets.relay_own(other),
            }
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
    pub callers: Callers,
    pub events: broadcast::Sender<ChangeEvent>,
    /// Called when the upstream's tool list changed (drops the discovery cache).
    pub tools_changed: Box<dyn Fn() + Send + Sync>,
    /// Sends relayed notifications to clients in the order they were read, off the read loop.
    outbox: OnceLock<mpsc::Sender<(Peer<RoleServer>, ServerNotification)>>,
}

/// Relayed notifications waiting for a slow client, per upstream; beyond that they are dropped.
const OUTBOX_CAPACITY: usize = 1024;

impl RelayTargets {
    pub fn new(
        config_id: Uuid,
        server: String,
        events: broadcast::Sender<ChangeEvent>,
        tools_changed: Box<dyn Fn() + Send + Sync>,
    ) -> Self {
        RelayTargets {
            config_id,
            server,
            progress: ProgressRoutes::default(),
            callers: Callers::default(),
            events,
            tools_changed,
            outbox: OnceLock::new(),
        }
    }

    fn send(&self, peer: Peer<RoleServer>, notification: ServerNotification) {
        let outbox = self.outbox.get_or_init(|| {
            let (tx, mut rx) = mpsc::channel::<(Peer<RoleServer>, ServerNotification)>(OUTBOX_CAPACITY);
            tokio::spawn(async move {
                while let Some((peer, notification)) = rx.recv().await {
                    let _ = peer.send_notification(notification).await;
                }
            });
            tx
        });
        if outbox.try_send((peer, notification)).is_err() {
            tracing::debug!(server = %self.server, "a client is not keeping up; a notification was dropped");
        }
    }

    /// Acts on a notification an upstream sent within a call's answer that did not pass through
    /// rmcp (see `http_call`), as the tap and the client handler do for the others.
    pub fn deliver(&self, notification: &ServerNotification) {
        match notification {
            ServerNotification::ToolListChangedNotification(_) => self.list_changed(ListKind::Tools),
            ServerNotification::PromptListChangedNotification(_) => self.list_changed(ListKind::Prompts),
            ServerNotification::ResourceListChangedNotification(_) => self.list_changed(ListKind::Resources),
            other => self.relay_own(other),
        }
    }

    /// Relays a message the upstream sent of its own accord (a log message, a resource update) to
    /// the session it can be attributed to.
    fn relay_own(&self, notification: &ServerNotification) {
        match notification {
            ServerNotification::LoggingMessageNotification(log) => self.relay_log(&log.params),
            ServerNotification::ResourceUpdatedNotification(update) => self.relay_resource_update(&update.params),
            _ => {}
        }
    }

    /// The upstream's list of `kind` changed: its tool cache goes, and the sessions are told.
    fn list_changed(&self, kind: ListKind) {
        if kind == ListKind::Tools {
            (self.tools_changed)();
        }
        let _ = self.events.send(ChangeEvent::Upstream { config_id: self.config_id, kind });
    }

    fn relay_log(&self, params: &LoggingMessageNotificationParam) {
        let Some(caller) = self.callers.attributable() else {
            tracing::debug!(server = %self.server, "a log message no single session can be told for; not relayed");
            return;
        };
        if let Some(peer) = caller.link.peer()
            && caller.link.wants_log(params.level)
        {
            let notification = LoggingMessageNotification::new(params.clone());
            self.send(peer.clone(), ServerNotification::LoggingMessageNotification(notification));
        }
    }

    fn relay_resource_update(&self, params: &ResourceUpdatedNotificationParam) {
        for (link, shown_as) in self.callers.subscribers(&params.uri) {
            if let Some(peer) = link.peer() {
                let mut update = params.clone();
                update.uri = shown_as;
                let notification = ResourceUpdatedNotification::new(update);
                self.send(peer.clone(), ServerNotification::ResourceUpdatedNotification(notification));
            }
        }
    }

    /// The client a server-to-client request belongs to, if it can be told and it can answer.
    fn requester(
        &self,
        what: &str,
        can: impl Fn(&ClientCapabilities) -> bool,
    ) -> Result<(Peer<RoleServer>, Extensions), McpError> {
        let refuse = |why: String| {
            tracing::info!(server = %self.server, "{what} request refused: {why}");
            Err(McpError::invalid_request(format!("{what} is not available through the gateway here: {why}"), None))
        };
        let Some(caller) = self.callers.attributable() else {
            return refuse("no single client session can be told for it".into());
        };
        let Some(peer) = caller.link.peer().cloned() else { return refuse("the client session is gone".into()) };
        if !peer.peer_info().is_some_and(|info| can(&info.capabilities)) {
            return refuse("the client did not declare the capability".into());
        }
        let mut extensions = Extensions::new();
        if let Some(request) = caller.request {
            // The client's request in flight: the server request rides that request's stream.
            extensions.insert(OriginatingRequestId(request));
        }
        Ok((peer, extensions))
    }
}

pub struct UpstreamClient {
    pub targets: Arc<RelayTargets>,
    /// What the server's config lets it ask of clients; only these are declared to it.
    pub allow_sampling: bool,
    pub allow_elicitation: bool,
}

fn relay_failure(e: ServiceError) -> McpError {
    match e {
        ServiceError::McpError(e) => e,
        other => McpError::internal_error(format!("the client did not answer: {other}"), None),
    }
}

pub(super) fn not_allowed(what: &str) -> McpError {
    McpError::invalid_request(format!("{what} is not enabled for this server (allow_{what} in its config)"), None)
}

impl ClientHandler for UpstreamClient {
    fn get_info(&self) -> ClientConfig {
        // Server-to-client requests are relayed to the client the call came from, which is
        // checked for the capability then. Servers learn only what their config allows, so a
        // shared upstream offers every client the same tools.
        let mut capabilities = ClientCapabilities::default();
        if self.allow_sampling {
            capabilities.sampling = ClientCapabilities::builder().enable_sampling().build().sampling;
        }
        if self.allow_elicitation {
            capabilities.elicitation = ClientCapabilities::builder().enable_elicitation().build().elicitation;
        }
        ClientConfig::new(capabilities, Implementation::new("mcpgw", env!("CARGO_PKG_VERSION")))
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, McpError> {
        if !self.allow_sampling {
            return Err(not_allowed("sampling"));
        }
        let (peer, extensions) = self.targets.requester("sampling", |c| c.sampling.is_some())?;
        let mut request = CreateMessageRequest::new(params);
        request.extensions = extensions;
        match peer.send_request(ServerRequest::CreateMessageRequest(request)).await.map_err(relay_failure)? {
            ClientResult::CreateMessageResult(result) => Ok(*result),
            _ => Err(McpError::internal_error("the client answered sampling with something else", None)),
        }
    }

    async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, McpError> {
        if !self.allow_elicitation {
            return Err(not_allowed("elicitation"));
        }
        let (peer, extensions) = self.targets.requester("elicitation", |c| c.elicitation.is_some())?;
        let mut request = ElicitRequest::new(params);
        request.extensions = extensions;
        match peer.send_request(ServerRequest::ElicitRequest(request)).await.map_err(relay_failure)? {
            ClientResult::ElicitResult(result) => Ok(result),
            _ => Err(McpError::internal_error("the client answered elicitation with something else", None)),
        }
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        tracing::info!(server = %self.targets.server, "upstream tool list changed");
        self.targets.list_changed(ListKind::Tools);
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.targets.list_changed(ListKind::Prompts);
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.targets.list_changed(ListKind::Resources);
    }
}
