//! Connections to upstream MCP servers.
//!
//! An [`Upstream`] is one server of one config: a lazily opened MCP client session (a child process
//! for stdio servers, a streamable HTTP session otherwise), reopened with backoff when it dies, closed
//! when idle, plus that server's tool-discovery cache. The [`pool`] shares them per (config, server).

pub mod callers;
mod connections;
pub(crate) mod http_call;
pub mod oauth;
pub mod observed;
pub mod pool;
mod quick_ack;
pub mod relay;
pub(crate) mod stdio;
mod transport;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::Tool;
use rmcp::service::RunningService;
use rmcp::{Peer, RoleClient, ServiceError};
use shared::oauth::OAuthConfig;
use shared::pins::ObservedStatus;
use shared::server::{PinningMode, ServerSpec};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::catalog::ServerPins;
use crate::metrics::Metrics;
use callers::Callers;
use http_call::SessionTap;
use observed::{Observer, Seen};
use relay::{ChangeEvent, ProgressRoutes, RelayTargets, UpstreamClient};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not start upstream `{server}`: {reason}")]
    Connect { server: String, reason: String },
    #[error("upstream `{server}` did not answer within {ms} ms")]
    Timeout { server: String, ms: u64 },
    #[error("upstream `{server}` failed: {reason}")]
    Failed { server: String, reason: String },
    #[error("upstream `{server}` is being replaced by a configuration change; retry")]
    Retired { server: String },
}

impl UpstreamError {
    pub fn failed(server: &str, e: ServiceError) -> Self {
        UpstreamError::Failed { server: server.to_string(), reason: e.to_string() }
    }
}

/// Process-wide knobs every upstream connection uses.
pub struct UpstreamSettings {
    pub http: reqwest::Client,
    pub max_response_bytes: usize,
    /// `MCPGW_STDIO_COMMANDS`, checked again before every start (the snapshot may not be ours).
    pub stdio_commands: shared::stdio_commands::StdioCommands,
    pub metrics: Arc<Metrics>,
    pub events: broadcast::Sender<ChangeEvent>,
    /// Where definitions awaiting an admin's review are reported.
    pub observer: Arc<Observer>,
    /// OAuth tokens for upstreams that need them.
    pub tokens: Arc<oauth::TokenSource>,
    /// Tool calls to HTTP(S) upstreams, on kept-alive connections.
    pub pooled: http_call::PooledHttp,
}

type Session = RunningService<RoleClient, UpstreamClient>;

struct Connection {
    session: Option<Session>,
    /// Consecutive failed or short-lived connections; drives the reconnect backoff.
    failures: u32,
    /// No new attempt before this (the backoff after `failures`).
    retry_at: Option<Instant>,
    opened_at: Option<Instant>,
    ever_opened: bool,
    /// The OAuth token a stdio server was started with; it is restarted, once idle, when it is due.
    started_with: Option<oauth::Token>,
    /// Decrements the process gauge when the child goes away.
    _process: Option<ProcessGauge>,
}

struct ProcessGauge(Arc<Metrics>);

impl Drop for ProcessGauge {
    fn drop(&mut self) {
        self.0.upstream_processes.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The last tool listing and what the integrity checks made of it under a set of approvals.
struct CachedTools {
    at: Instant,
    listed: Arc<Vec<Tool>>,
    info: Option<Arc<rmcp::model::ServerPeerInfo>>,
    approved: Arc<ServerPins>,
    found: Arc<Discovery>,
}

type ToolCache = Mutex<Option<CachedTools>>;

/// One discovery of an upstream's tools and what the integrity checks made of it.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Tools that passed the poisoning scan and match their pins (the allowlist is applied later,
    /// per config, by `ConfigView::tool_allowed`).
    pub tools: Vec<Tool>,
    visible: HashSet<String>,
    /// Tools held back, with the reason (kinds of findings, or a pin mismatch).
    pub hidden: Vec<(String, String)>,
    /// Why the whole server is blocked (its self-description looked poisoned).
    pub server_blocked: Option<String>,
}

impl Discovery {
    pub fn is_visible(&self, tool: &str) -> bool {
        self.visible.contains(tool)
    }
}

pub struct Upstream {
    pub config_id: Uuid,
    pub spec: Arc<ServerSpec>,
    settings: Arc<UpstreamSettings>,
    connection: tokio::sync::Mutex<Connection>,
    targets: Arc<RelayTargets>,
    tools: Arc<ToolCache>,
    /// One discovery at a time; concurrent callers wait for it and share its result.
    discovery: tokio::sync::Mutex<()>,
    in_flight: AtomicUsize,
    last_used: Mutex<Instant>,
    retired: std::sync::atomic::AtomicBool,
    /// Trust-on-first-use pins: tool name -> fingerprint of the first definition seen.
    pins: Mutex<HashMap<String, String>>,
    /// The server's OAuth settings, parsed once.
    oauth: std::sync::OnceLock<Result<Option<OAuthConfig>, String>>,
    /// The MCP session rmcp holds with an HTTP(S) upstream, for calls on pooled connections.
    session_tap: Arc<SessionTap>,
}

/// A connection that stays open for as long as the guard lives (idle reaping skips it).
pub struct InUse<'a> {
    upstream: &'a Upstream,
    pub peer: Peer<RoleClient>,
}

/// A use counted by `acquire` before its session is there; uncounted if it never gets it.
struct Entered<'a>(&'a Upstream);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.upstream.in_flight.fetch_sub(1, Ordering::AcqRel);
        *self.upstream.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

impl Upstream {
    pub fn new(config_id: Uuid, spec: Arc<ServerSpec>, settings: Arc<UpstreamSettings>) -> Arc<Self> {
        let tools: Arc<ToolCache> = Arc::new(Mutex::new(None));
        let cache = tools.clone();
        let targets = Arc::new(RelayTargets::new(
            config_id,
            spec.server_name.clone(),
            settings.events.clone(),
            Box::new(move || *cache.lock().unwrap_or_else(|e| e.into_inner()) = None),
        ));
        Arc::new(Upstream {
            config_id,
            spec,
            settings,
            connection: tokio::sync::Mutex::new(Connection {
                session: None,
                failures: 0,
                retry_at: None,
                opened_at: None,
                ever_opened: false,
                started_with: None,
                _process: None,
            }),
            targets,
            tools,
            discovery: tokio::sync::Mutex::new(()),
            in_flight: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
            retired: Default::default(),
            pins: Mutex::new(HashMap::new()),
            oauth: std::sync::OnceLock::new(),
            session_tap: Arc::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.server_name
    }

    pub fn progress(&self) -> &ProgressRoutes {
        &self.targets.progress
    }

    /// The client sessions this upstream's own messages may be relayed to.
    pub fn callers(&self) -> &Callers {
        &self.targets.callers
    }

    /// What the upstream's notifications act on.
    pub fn targets(&self) -> &RelayTargets {
        &self.targets
    }

    /// The upstream's MCP session, when tool calls can go on a pooled connection (an HTTP(S)
    /// upstream without OAuth or proxy, once rmcp has opened the session); otherwise calls go through rmcp.
    pub fn http_session(&self) -> Option<Arc<http_call::HttpSession>> {
        self.session_tap.current()
    }

    /// Forgets `session` after the upstream ended it; rmcp opens the next one.
    pub fn http_session_gone(&self, session: &Arc<http_call::HttpSession>) {
        self.session_tap.forget(session);
    }

    pub fn pooled(&self) -> &http_call::PooledHttp {
        &self.settings.pooled
    }

    /// A live session to the upstream, opening (or reopening) it when needed.
    /// Cancel-safe: a caller that gives up while the session is being opened (its deadline passed)
    /// leaves no use counted.
    pub async fn acquire(&self) -> Result<InUse<'_>, UpstreamError> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let entered = Entered(self);
        let peer = self.peer().await?;
        std::mem::forget(entered);
        Ok(InUse { upstream: self, peer })
    }

    async fn peer(&self) -> Result<Peer<RoleClient>, UpstreamError> {
        if self.retired.load(Ordering::Acquire) {
            return Err(UpstreamError::Retired { server: self.name().to_string() });
        }
        let mut conn = self.connection.lock().await;
        let stale_token = conn
            .started_with
            .as_ref()
            .is_some_and(|t| t.is_due() || self.settings.tokens.is_replaced(self.config_id, &self.spec.server_name, t));
        if stale_token && self.in_flight.load(Ordering::Acquire) <= 1 {
            // A stdio server's token is in its environment: restart it with the current one while
            // nothing else is using it.
            tracing::info!(server = %self.name(), "restarting upstream with a refreshed OAuth token");
            conn.session = None;
            conn._process = None;
            conn.started_with = None;
            self.session_tap.clear();
        }
        if let Some(session) = &conn.session {
            if !session.is_closed() && !session.peer().is_transport_closed() {
                return Ok(session.peer().clone());
            }
            // It died (process exit, session lost): note whether it lived long enough to count as
            // healthy, then reopen below.
            let short_lived = conn.opened_at.is_some_and(|t| t.elapsed() < Duration::from_secs(10));
            conn.failures = if short_lived { conn.failures + 1 } else { 0 };
            conn.retry_at = (conn.failures > 0).then(|| Instant::now() + backoff(conn.failures));
            conn.session = None;
            conn._process = None;
            self.session_tap.clear();
            tracing::warn!(server = %self.name(), "upstream connection lost; reconnecting");
        }
        let connect_ms = self.spec.timeouts.connect_ms;
        if let Some(at) = conn.retry_at {
            let wait = at.saturating_duration_since(Instant::now());
            // A short wait is worth it; a long one would hold every caller (they queue on this
            // lock) for longer than any of them may take: they fail at once instead.
            if wait > Duration::from_millis(connect_ms) {
                return Err(UpstreamError::Connect {
                    server: self.name().to_string(),
                    reason: format!(
                        "it failed {} time(s) in a row; the next attempt is in {} ms",
                        conn.failures,
                        wait.as_millis()
                    ),
                });
            }
            tokio::time::sleep(wait).await;
        }
        let auth = self.authorize().await?;
        let token = auth.as_ref().map(|a| a.token.clone());
        let opened = tokio::time::timeout(
            Duration::from_millis(connect_ms),
            transport::open(
                &self.spec,
                &self.settings,
                UpstreamClient {
                    targets: self.targets.clone(),
                    allow_sampling: self.spec.allow_sampling,
                    allow_elicitation: self.spec.allow_elicitation,
                },
                auth,
                &self.session_tap,
            ),
        )
        .await;
        let (session, is_process) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(reason)) => {
                conn.failures += 1;
                conn.retry_at = Some(Instant::now() + backoff(conn.failures));
                return Err(UpstreamError::Connect { server: self.name().to_string(), reason });
            }
            Err(_) => {
                conn.failures += 1;
                conn.retry_at = Some(Instant::now() + backoff(conn.failures));
                return Err(UpstreamError::Timeout { server: self.name().to_string(), ms: connect_ms });
            }
        };
        if conn.ever_opened {
            self.settings.metrics.upstream_restarts.fetch_add(1, Ordering::Relaxed);
        }
        if is_process {
            self.settings.metrics.upstream_processes.fetch_add(1, Ordering::Relaxed);
            conn._process = Some(ProcessGauge(self.settings.metrics.clone()));
            conn.started_with = token;
        }
        conn.ever_opened = true;
        conn.opened_at = Some(Instant::now());
        conn.retry_at = None;
        let peer = session.peer().clone();
        conn.session = Some(session);
        // A new session may serve a different tool list.
        *self.tools.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(peer)
    }

    /// The OAuth token for a new connection, when the server's config enables OAuth. A failed
    /// fetch fails the connection: the server is never called without its token.
    async fn authorize(&self) -> Result<Option<transport::UpstreamAuth<'_>>, UpstreamError> {
        let Some(map) = &self.spec.oauth_config else { return Ok(None) };
        let connect_error = |reason: String| UpstreamError::Connect { server: self.name().to_string(), reason };
        let Some(oauth) = self
            .oauth
            .get_or_init(|| {
                OAuthConfig::from_map(map)
                    .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))
            })
            .as_ref()
            .map_err(|e| connect_error(format!("invalid oauth_config: {e}")))?
        else {
            return Ok(None);
        };
        let token = self
            .settings
            .tokens
            .token(self.config_id, self.name(), oauth)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        Ok(Some(transport::UpstreamAuth { config_id: self.config_id, oauth, token }))
    }

    /// The upstream's tools after the integrity checks under `approved` pins, from the cache while
    /// it is fresh.
    pub async fn tools(&self, ttl: Duration, approved: &Arc<ServerPins>) -> Result<Arc<Discovery>, UpstreamError> {
        if let Some(found) = self.cached_tools(ttl, approved) {
            return Ok(found);
        }
        let _one_at_a_time = self.discovery.lock().await;
        if let Some(found) = self.cached_tools(ttl, approved) {
            return Ok(found);
        }
        let ms = self.spec.timeouts.discovery_ms;
        let (listed, info) = tokio::time::timeout(Duration::from_millis(ms), async {
            let mut retried = false;
            loop {
                let conn = self.acquire().await?;
                match conn.peer.list_all_tools().await {
                    // Listing is idempotent: if the session died under us, reopen once and retry.
                    Err(ServiceError::TransportClosed | ServiceError::TransportSend(_)) if !retried => retried = true,
                    other => {
                        let info = conn.peer.peer_info();
                        return other.map(|t| (t, info)).map_err(|e| UpstreamError::failed(self.name(), e));
                    }
                }
            }
        })
        .await
        .map_err(|_| UpstreamError::Timeout { server: self.name().to_string(), ms })??;
        let found = Arc::new(self.check_integrity(&listed, info.as_deref(), approved));
        *self.tools.lock().unwrap_or_else(|e| e.into_inner()) = Some(CachedTools {
            at: Instant::now(),
            listed: Arc::new(listed),
            info,
            approved: approved.clone(),
            found: found.clone(),
        });
        Ok(found)
    }

    /// Applies the poisoning scans and pins the server's settings ask for.
    fn check_integrity(
        &self,
        listed: &[Tool],
        info: Option<&rmcp::model::ServerPeerInfo>,
        approved: &ServerPins,
    ) -> Discovery {
        let spec = &self.spec;
        let mut found = Discovery::default();
        if spec.enable_server_info_validation {
            let mut findings = Vec::new();
            if let Some(info) = info {
                let texts = [
                    info.instructions.as_deref(),
                    info.server_info.as_ref().and_then(|i| i.title.as_deref()),
                    info.server_info.as_ref().and_then(|i| i.description.as_deref()),
                ];
                for text in texts.into_iter().flatten() {
                    guardrails::integrity::scan_text(text, &mut findings);
                }
            }
            if !findings.is_empty() {
                let reason = kinds(&findings);
                tracing::warn!(server = %spec.server_name, %reason, "server description looks poisoned; blocking the whole server");
                self.settings.metrics.record_guardrail(
                    &spec.server_name,
                    "integrity",
                    "tool_poisoning",
                    "server_blocked",
                );
                found.server_blocked = Some(reason);
                return found;
            }
        }
        let mut first_seen = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        let observer = &self.settings.observer;
        for tool in listed {
            let json = serde_json::to_value(tool).unwrap_or_default();
            let name = tool.name.to_string();
            if spec.enable_tool_guardrails {
                let findings = guardrails::integrity::scan_tool(&json);
                if !findings.is_empty() {
                    let reason = format!("tool_poisoning: {}", kinds(&findings));
                    tracing::warn!(server = %spec.server_name, tool = %name, %reason, "tool hidden");
                    self.settings.metrics.record_guardrail(&spec.server_name, "integrity", "tool_poisoning", "hidden");
                    found.hidden.push((name, reason));
                    continue;
                }
            }
            if spec.pinning != PinningMode::Off {
                let fingerprint = guardrails::integrity::fingerprint(&json);
                // An admin's approval wins over what this process trusted on first use.
                let expected = match approved.get(&name) {
                    Some(pin) => {
                        first_seen.insert(name.clone(), pin.clone());
                        Some(pin.clone())
                    }
                    None if spec.pinning == PinningMode::TrustOnFirstUse => Some(
                        first_seen
                            .entry(name.clone())
                            // Trusted before this connection (or this process) existed: that still holds.
                            .or_insert_with(|| {
                                observer
                                    .trusted(self.config_id, &spec.server_name, &name)
                                    .unwrap_or_else(|| fingerprint.clone())
                            })
                            .clone(),
                    ),
                    None => None,
                };
                if expected.as_deref() != Some(fingerprint.as_str()) {
                    let reason = match &expected {
                        None => "not approved yet (strict pinning); an admin can approve it".to_string(),
                        Some(pinned) => format!(
                            "definition changed since it was pinned (pinned {}, now {}); an admin can review and approve it",
                            short(pinned),
                            short(&fingerprint)
                        ),
                    };
                    tracing::warn!(server = %spec.server_name, tool = %name, %reason, "tool hidden");
                    self.settings.metrics.record_guardrail(&spec.server_name, "integrity", "pinning", "hidden");
                    let seen = Seen {
                        status: ObservedStatus::Held,
                        fingerprint: &fingerprint,
                        pinned: expected.as_deref(),
                        definition: &json,
                    };
                    observer.report(self.config_id, &spec.server_name, &name, Some(seen));
                    found.hidden.push((name, reason));
                    continue;
                }
                let seen = (!approved.contains_key(&name)).then_some(Seen {
                    status: ObservedStatus::FirstSeen,
                    fingerprint: &fingerprint,
                    pinned: None,
                    definition: &json,
                });
                observer.report(self.config_id, &spec.server_name, &name, seen);
            }
            found.visible.insert(name);
            found.tools.push(tool.clone());
        }
        found
    }

    fn cached_tools(&self, ttl: Duration, approved: &Arc<ServerPins>) -> Option<Arc<Discovery>> {
        let mut cache = self.tools.lock().unwrap_or_else(|e| e.into_inner());
        let cached = cache.as_mut().filter(|c| c.at.elapsed() < ttl)?;
        if !Arc::ptr_eq(&cached.approved, approved) {
            // A reload brought a new set of approvals: re-check the same listing, no new discovery.
            if *cached.approved != **approved {
                let (listed, info) = (cached.listed.clone(), cached.info.clone());
                cached.found = Arc::new(self.check_integrity(&listed, info.as_deref(), approved));
            }
            cached.approved = approved.clone();
        }
        Some(cached.found.clone())
    }

    /// (age of the cached tool list, number of tools), if any.
    pub fn cache_status(&self) -> Option<(Duration, usize)> {
        let cache = self.tools.lock().unwrap_or_else(|e| e.into_inner());
        cache.as_ref().map(|c| (c.at.elapsed(), c.found.tools.len()))
    }

    pub fn clear_cache(&self) {
        *self.tools.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Whether a session is open right now.
    pub async fn is_connected(&self) -> bool {
        self.connection.lock().await.session.as_ref().is_some_and(|s| !s.is_closed())
    }

    /// Closes the session if it has been unused for `idle` and nothing is in flight.
    pub async fn close_if_idle(&self, idle: Duration) {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return;
        }
        let last = *self.last_used.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() < idle {
            return;
        }
        let mut conn = self.connection.lock().await;
        if self.in_flight.load(Ordering::Acquire) == 0
            && let Some(session) = conn.session.take()
        {
            tracing::info!(server = %self.name(), "closing idle upstream connection");
            self.session_tap.clear();
            conn._process = None;
            conn.failures = 0;
            conn.retry_at = None;
            drop(conn);
            shut_down(session).await;
        }
    }

    /// Stops taking new work, waits (bounded) for calls in flight, then closes the session and, for a
    /// stdio server, kills its whole process group.
    pub async fn retire(&self, grace: Duration) {
        self.retired.store(true, Ordering::Release);
        let deadline = Instant::now() + grace;
        while self.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut conn = self.connection.lock().await;
        conn._process = None;
        self.session_tap.clear();
        if let Some(session) = conn.session.take() {
            drop(conn);
            shut_down(session).await;
        }
    }
}

/// The first 12 characters of a fingerprint, for messages. By characters: an approved pin is
/// whatever the snapshot says, and a byte index could fall inside a character.
fn short(fingerprint: &str) -> &str {
    fingerprint.char_indices().nth(12).map_or(fingerprint, |(end, _)| &fingerprint[..end])
}

fn kinds(findings: &[guardrails::Finding]) -> String {
    let mut kinds: Vec<&str> = findings.iter().map(|f| f.kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds.join(", ")
}

/// Cancels the client session; dropping the transport kills a child process group.
async fn shut_down(session: Session) {
    let _ = tokio::time::timeout(Duration::from_secs(5), session.cancel()).await;
}

/// The wait after `failures` consecutive failures: 0.25 s, 0.5 s, 1 s ... capped at 30 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << failures.saturating_sub(1).min(7))).min(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Arc<UpstreamSettings> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        Arc::new(UpstreamSettings {
            tokens: Arc::new(oauth::TokenSource::new(http.clone())),
            http,
            max_response_bytes: 1 << 20,
            stdio_commands: shared::stdio_commands::StdioCommands::parse(None).unwrap(),
            metrics: Arc::new(Metrics::default()),
            events: broadcast::channel(4).0,
            observer: Observer::new("test".into(), None, None),
            pooled: http_call::PooledHttp::new().unwrap(),
        })
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_while_the_session_opens_leaves_no_use_counted() {
        // Accepts connections (the kernel does) and never answers the handshake.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", silent.local_addr().unwrap());
        let spec: ServerSpec =
            serde_json::from_value(serde_json::json!({"server_name": "s", "config": {"type": "http", "url": url}}))
                .unwrap();
        let upstream = Upstream::new(Uuid::nil(), Arc::new(spec), settings());
        let gave_up = tokio::time::timeout(Duration::from_millis(200), upstream.acquire()).await;
        assert!(gave_up.is_err(), "the handshake cannot have finished");
        assert_eq!(upstream.in_flight.load(Ordering::Acquire), 0);
    }

    #[test]
    fn fingerprints_shorten_by_characters() {
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
        assert_eq!(short(""), "");
        // Multibyte characters around the cut: byte 12 falls inside `é`.
        assert_eq!(short("0123456789aé€xyz"), "0123456789aé");
        assert_eq!(short("ééééééééééééé"), "éééééééééééé");
    }
}
