//! The MCP surface clients talk to: an rmcp `ServerHandler` that lists and calls only what the
//! caller's project may see, forwarding to upstreams and passing results through whole.
//!
//! Every request resolves the caller against the current catalog first; the allow/deny decision is
//! `ConfigView::tool_allowed`, shared by `tools/list` and `tools/call`.

// Logging, sampling and resource subscriptions: rmcp marks them deprecated for a future protocol
// version; clients speak today's, and the gateway relays them.
#![allow(deprecated)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rmcp::model::*;
use rmcp::service::{NotificationContext, PeerRequestOptions, RequestContext};
use rmcp::{ErrorData as McpError, Peer, RoleClient, RoleServer, ServerHandler, ServiceError};
use shared::server::ServerSpec;
use shared::snapshot::ToolNaming;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use crate::audit::AuditRecord;
use crate::auth::Principal;
use crate::catalog::ConfigView;
use crate::guard::remote::Stage;
use crate::guard::screen_remote;
use crate::meta_tools;
use crate::state::Gateway;
use crate::telemetry;
use crate::upstream::callers::ClientLink;
use crate::upstream::http_call::{CallEnd, HttpSession, NotSent};
use crate::upstream::relay::{ChangeEvent, ListKind, ProgressRoute, ProgressSink};
use crate::upstream::{Upstream, UpstreamError};

/// How a session proves who it is.
#[derive(Clone)]
pub enum Identity {
    /// Streamable HTTP: the middleware authenticated this request and attached a `Principal`.
    Http,
    /// stdio: one key for the whole process, checked against the current catalog per request.
    Key(Arc<str>),
}

/// One client session (for streamable HTTP, one MCP session; for stdio, the process).
pub struct Session {
    gateway: Arc<Gateway>,
    /// Upstreams private to this session (servers marked `per_session`); closed with it.
    private: Mutex<HashMap<(Uuid, String), Arc<Upstream>>>,
    /// Stops the notification relay when the session ends.
    relay: Mutex<Option<DropGuard>>,
    /// What upstreams' own messages (logs, sampling, elicitation, resource updates) reach it by.
    link: Arc<ClientLink>,
    /// Whether the session's handler serves requests without rmcp yet (see `direct`).
    direct: AtomicBool,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.gateway.metrics.active_sessions.fetch_sub(1, Ordering::Relaxed);
        let private: Vec<_> = self.private.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, u)| u).collect();
        if !private.is_empty()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move { join_all(private.iter().map(|u| u.retire(Duration::from_secs(5)))).await });
        }
    }
}

/// The client request a tool call serves: where its progress goes, and what server-to-client
/// requests of the upstream relate to.
pub(crate) struct CallOrigin<'a> {
    pub peer: &'a Peer<RoleServer>,
    pub request: RequestId,
    pub progress: Option<ProgressToken>,
    /// Set when the call is answered without rmcp: its progress goes into its own response.
    pub progress_into: Option<crate::direct::ProgressInto>,
}

impl CallOrigin<'_> {
    /// Where the call's progress goes to its client.
    fn progress_sink(&self) -> ProgressSink {
        match &self.progress_into {
            Some(response) => ProgressSink::Response(response.0.clone()),
            None => ProgressSink::Session(self.peer.clone()),
        }
    }
}

#[derive(Clone)]
pub struct GatewayService {
    pub(crate) gateway: Arc<Gateway>,
    identity: Identity,
    session: Arc<Session>,
}

impl GatewayService {
    pub fn new(gateway: Arc<Gateway>, identity: Identity) -> Self {
        gateway.metrics.active_sessions.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session {
            gateway: gateway.clone(),
            private: Default::default(),
            relay: Mutex::new(None),
            link: ClientLink::new(),
            direct: AtomicBool::new(false),
        });
        GatewayService { gateway, identity, session }
    }

    /// Where a client's resource URI leads; an unknown URI (or a key without a config) is
    /// "resource not found".
    async fn resource_route(&self, extensions: &Extensions, exposed: &str) -> Result<ResourceRoute, McpError> {
        let p = self.principal(extensions).await?;
        let unknown = || McpError::resource_not_found(format!("unknown resource: {exposed}"), None);
        let config = p.config.ok_or_else(unknown)?;
        let (spec, uri) = self.route_resource(&config, exposed).await.ok_or_else(unknown)?;
        let upstream = self.upstream(config.id, &spec);
        Ok(ResourceRoute { config, spec, upstream, uri })
    }

    async fn principal(&self, extensions: &Extensions) -> Result<Principal, McpError> {
        match &self.identity {
            Identity::Http => extensions
                .get::<axum::http::request::Parts>()
                .and_then(|parts| parts.extensions.get::<Principal>())
                .cloned()
                .ok_or_else(|| McpError::invalid_request("not authenticated", None)),
            Identity::Key(key) => self
                .gateway
                .authenticate(Some(key))
                .await
                .map_err(|e| McpError::invalid_request(format!("authentication failed: {e}"), None)),
        }
    }

    /// Lets requests on this (HTTP) session be answered without rmcp's session worker, once its
    /// handshake is done; `extensions` are those of a request on it.
    fn offer_direct(&self, extensions: &Extensions, peer: &Peer<RoleServer>) {
        if !matches!(self.identity, Identity::Http) || self.session.direct.load(Ordering::Relaxed) {
            return;
        }
        let id = extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.headers.get("mcp-session-id"))
            .and_then(|v| v.to_str().ok());
        if let Some(id) = id
            && peer.peer_info().is_some()
            && self.gateway.sessions.attach_direct(id, crate::direct::Direct::new(self.clone(), peer.clone()))
        {
            self.session.direct.store(true, Ordering::Relaxed);
        }
    }

    /// The upstream serving `spec` for this caller: shared, or this session's own.
    pub(crate) fn upstream(&self, config_id: Uuid, spec: &Arc<ServerSpec>) -> Arc<Upstream> {
        if !spec.per_session {
            return self.gateway.pool.get(config_id, spec);
        }
        let mut private = self.session.private.lock().unwrap_or_else(|e| e.into_inner());
        let key = (config_id, spec.server_name.clone());
        match private.get(&key) {
            Some(u) if *u.spec == **spec => u.clone(),
            _ => {
                let fresh = self.gateway.pool.private(config_id, spec);
                fresh.callers().set_owner(&self.session.link);
                if let Some(old) = private.insert(key, fresh.clone()) {
                    tokio::spawn(async move { old.retire(Duration::from_secs(60)).await });
                }
                fresh
            }
        }
    }

    /// The tools `spec` exposes, under upstream names (filtered by the allow/deny lists).
    pub(crate) async fn allowed_tools(
        &self,
        config: &ConfigView,
        spec: &Arc<ServerSpec>,
    ) -> Result<Vec<Tool>, UpstreamError> {
        let found = self.discovery(config, spec).await?;
        Ok(found.tools.iter().filter(|t| config.tool_allowed(&spec.server_name, &t.name)).cloned().collect())
    }

    /// `spec`'s tools after the integrity checks (before the allow/deny lists).
    pub(crate) async fn discovery(
        &self,
        config: &ConfigView,
        spec: &Arc<ServerSpec>,
    ) -> Result<Arc<crate::upstream::Discovery>, UpstreamError> {
        let ttl = self.gateway.catalog().tool_cache_ttl;
        self.upstream(config.id, spec).tools(ttl, &config.pins(&spec.server_name)).await
    }

    /// A tool call with every check: integrity (the tool is listed, clean and matches its pin),
    /// input guardrails, the upstream call, output guardrails. `tool` has passed `ConfigView::tool_allowed`.
    pub(crate) async fn guarded_call(
        &self,
        config: &ConfigView,
        spec: &Arc<ServerSpec>,
        mut request: CallToolRequestParams,
        tool: &str,
        origin: Option<&CallOrigin<'_>>,
        cancel: &CancellationToken,
    ) -> Result<CallToolResponse, CallFailure> {
        let found = self.discovery(config, spec).await.map_err(CallFailure::Upstream)?;
        if let Some(reason) = &found.server_blocked {
            return Err(CallFailure::Held(format!(
                "server `{}` is blocked: its description looks poisoned ({reason})",
                spec.server_name
            )));
        }
        if !found.is_visible(tool) {
            return Err(match found.hidden.iter().find(|(name, _)| name == tool) {
                Some((_, reason)) => CallFailure::Held(format!("tool `{tool}` is held back: {reason}")),
                None => CallFailure::Unknown,
            });
        }
        let guards = config.guards(&spec.server_name).cloned();
        let Some(guards) = guards.filter(|g| g.broken.is_none() && g.any_enabled()) else {
            if let Some(broken) = config.guards(&spec.server_name).and_then(|g| g.broken.clone()) {
                return Err(CallFailure::Held(format!("the server's guardrail policy is invalid: {broken}")));
            }
            return self.forward_call(config, spec, request, tool, origin, cancel).await;
        };
        let sent = request.arguments.take();
        let mut input_stage = telemetry::Stage::start("guardrails input", || guard_attributes("input", spec));
        let screened = crate::guard::screen_input(&guards, sent.clone()).map_err(|b| {
            input_stage.guardrail(&b.findings, true);
            self.blocked(spec, "input", b)
        })?;
        let catalog = self.gateway.catalog();
        let provider = catalog.remote.as_ref().map(|r| r.provider.as_ref());
        let mut input_warnings = screened.warnings;
        if !guards.input_remote.is_empty() {
            // The provider sees the arguments as the upstream will (redacted), as one JSON text.
            let text = serde_json::to_string(&screened.arguments).unwrap_or_default();
            let server = &spec.server_name;
            let remote = screen_remote(provider, &guards.input_remote, Stage::Input, server, tool, &text).await;
            input_warnings.extend(remote.map_err(|b| {
                input_stage.guardrail(&b.findings, true);
                self.blocked(spec, "input", b)
            })?);
        }
        input_stage.guardrail(&input_warnings, false);
        self.record_findings(spec, "input", &input_warnings, "warned");
        request.arguments = screened.arguments;
        let response = self.forward_call(config, spec, request, tool, origin, cancel).await?;
        let CallToolResponse::Complete(mut result) = response else { return Ok(response) };
        let mut output_stage = telemetry::Stage::start("guardrails output", || guard_attributes("output", spec));
        let mut output_warnings = Vec::new();
        if !guards.output_remote.is_empty() {
            let text = crate::guard::result_text(&mut result);
            let server = &spec.server_name;
            let remote = screen_remote(provider, &guards.output_remote, Stage::Output, server, tool, &text).await;
            output_warnings.extend(remote.map_err(|b| {
                output_stage.guardrail(&b.findings, true);
                self.blocked(spec, "output", b)
            })?);
        }
        let output =
            crate::guard::screen_output(&guards, sent.as_ref(), &mut result, &screened.redactions).map_err(|b| {
                output_stage.guardrail(&b.findings, true);
                self.blocked(spec, "output", b)
            })?;
        output_warnings.extend(output);
        output_stage.guardrail(&output_warnings, false);
        self.record_findings(spec, "output", &output_warnings, "warned");
        crate::guard::attach_warnings(&mut result, &input_warnings, &output_warnings);
        Ok(CallToolResponse::Complete(result))
    }

    /// [`Self::guarded_call`] for a call admitted by policy and rate limits, counted in the metrics and
    /// written to the audit log. Direct and batched calls both come through here, so they are recorded
    /// alike.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn recorded_call(
        &self,
        p: &Principal,
        config: &ConfigView,
        spec: &Arc<ServerSpec>,
        request: CallToolRequestParams,
        tool: &str,
        origin: Option<&CallOrigin<'_>>,
        cancel: &CancellationToken,
        started: Instant,
    ) -> Result<CallToolResponse, CallFailure> {
        let audit = &self.gateway.audit;
        let request_bytes = if audit.is_enabled() { request.arguments.as_ref().map_or(0, json_size) } else { 0 };
        let arguments = if audit.is_enabled() && audit.include_arguments { request.arguments.clone() } else { None };
        let result = self.guarded_call(config, spec, request, tool, origin, cancel).await;
        let outcome = call_outcome(&result);
        let bytes = result.as_ref().map_or(0, response_size);
        let summary = CallSummary {
            server: &spec.server_name,
            tool,
            outcome,
            started,
            request_bytes,
            arguments,
            response_bytes: bytes,
        };
        self.audit(p, summary);
        result
    }

    fn blocked(&self, spec: &ServerSpec, stage: &'static str, blocked: crate::guard::Blocked) -> CallFailure {
        self.record_findings(spec, stage, &blocked.findings, "blocked");
        CallFailure::Blocked(blocked)
    }

    fn record_findings(
        &self,
        spec: &ServerSpec,
        stage: &'static str,
        findings: &[guardrails::Finding],
        action: &'static str,
    ) {
        // One event per detector and call, however many kinds it found.
        let detectors: std::collections::BTreeSet<&str> = findings.iter().map(|f| f.detector).collect();
        for detector in detectors {
            self.gateway.metrics.record_guardrail(&spec.server_name, stage, detector, action);
        }
        if !findings.is_empty() {
            let kinds: Vec<&str> = findings.iter().map(|f| f.kind).collect();
            tracing::warn!(server = %spec.server_name, stage, action, ?kinds, "guardrail findings");
        }
    }

    /// Forwards one tool call to its upstream (a client span, whose context the upstream gets).
    pub(crate) async fn forward_call(
        &self,
        config: &ConfigView,
        spec: &Arc<ServerSpec>,
        mut request: CallToolRequestParams,
        tool: &str,
        origin: Option<&CallOrigin<'_>>,
        cancel: &CancellationToken,
    ) -> Result<CallToolResponse, CallFailure> {
        let span = telemetry::UpstreamCall::start(spec, telemetry::Target::Tool(tool), &mut request.meta);
        let result = self.forward_untraced(config, spec, request, tool, origin, cancel).await;
        span.end(match &result {
            Ok(CallToolResponse::Complete(r)) if r.is_error == Some(true) => Some("tool_error"),
            Ok(_) => None,
            Err(failure) => Some(failure.outcome()),
        });
        result
    }

    /// Forwards one tool call to its upstream, with timeout, cancellation and progress relay.
    async fn forward_untraced(
        &self,
        config: &ConfigView,
        spec: &Arc<ServerSpec>,
        mut request: CallToolRequestParams,
        tool: &str,
        origin: Option<&CallOrigin<'_>>,
        cancel: &CancellationToken,
    ) -> Result<CallToolResponse, CallFailure> {
        let upstream = self.upstream(config.id, spec);
        let conn = upstream.acquire().await.map_err(CallFailure::Upstream)?;
        request.name = tool.to_string().into();
        request.meta = upstream_meta(request.meta.take());
        let failed = |e| CallFailure::Upstream(UpstreamError::failed(&spec.server_name, e));
        let _in_flight = origin.map(|o| upstream.callers().enter(&self.session.link, o.request.clone()));
        if let Some(session) = upstream.http_session() {
            match self.call_pooled(&upstream, &session, &mut request, tool, origin, cancel).await {
                Ok(result) => return result,
                // The upstream ended its session: rmcp opens a new one for this call.
                Err(NotSent::SessionGone) => {
                    upstream.http_session_gone(&session);
                    request.meta = upstream_meta(request.meta.take());
                }
            }
        }
        let handle = conn
            .peer
            .send_request_with_option(
                ClientRequest::CallToolRequest(CallToolRequest::new(request)),
                PeerRequestOptions::no_options(),
            )
            .await
            .map_err(failed)?;
        // rmcp gives every outgoing request its own progress token; route that one back.
        let mut route = origin.and_then(|o| {
            let token = o.progress.clone()?;
            Some(upstream.progress().open(handle.progress_token.clone(), o.progress_sink(), token))
        });
        let (peer, id) = (handle.peer.clone(), handle.id.clone());
        let ms = call_timeout_ms(spec, tool);
        let response = tokio::time::timeout(Duration::from_millis(ms), handle.await_response());
        tokio::pin!(response);
        let outcome = loop {
            tokio::select! {
                biased;
                Some(note) = next_progress(&mut route) => {
                    if let Some(route) = &route {
                        route.forward(note).await;
                    }
                }
                r = &mut response => break r,
                _ = cancel.cancelled() => {
                    let _ = peer.notify_cancelled(CancelledNotificationParam::new(Some(id), Some("cancelled by the client".into()))).await;
                    return Err(CallFailure::Cancelled);
                }
            }
        };
        // What the upstream reported before answering reaches the client before the answer.
        if let Some(route) = &mut route {
            route.drain().await;
        }
        let response = match outcome {
            Err(_) => {
                let reason = Some(format!("gateway timeout ({ms} ms)"));
                let _ = peer.notify_cancelled(CancelledNotificationParam::new(Some(id), reason)).await;
                return Err(CallFailure::Upstream(UpstreamError::Timeout { server: spec.server_name.clone(), ms }));
            }
            Ok(Err(ServiceError::McpError(e))) => {
                return Err(match crate::upstream::stdio::too_large(&e) {
                    Some((size, limit)) => CallFailure::TooLarge { size, limit },
                    None => CallFailure::Protocol(e),
                });
            }
            Ok(Err(e)) => return Err(failed(e)),
            Ok(Ok(result)) => tool_response(result).ok_or_else(|| failed(ServiceError::UnexpectedResponse))?,
        };
        self.within_cap(response)
    }

    /// `response`, unless its payload is over `MCPGW_MAX_RESPONSE_BYTES`.
    fn within_cap(&self, response: CallToolResponse) -> Result<CallToolResponse, CallFailure> {
        let (size, limit) = (response_size(&response), self.gateway.config.max_response_bytes);
        if size > limit {
            return Err(CallFailure::TooLarge { size, limit });
        }
        Ok(response)
    }

    /// [`Self::forward_untraced`] for a plain-HTTP upstream: the call goes on a pooled connection
    /// of the gateway's own, on the session rmcp opened, with the same timeout, cancellation,
    /// progress and size cap.
    async fn call_pooled(
        &self,
        upstream: &Upstream,
        session: &Arc<HttpSession>,
        request: &mut CallToolRequestParams,
        tool: &str,
        origin: Option<&CallOrigin<'_>>,
        cancel: &CancellationToken,
    ) -> Result<Result<CallToolResponse, CallFailure>, NotSent> {
        let spec = &upstream.spec;
        let pooled = upstream.pooled();
        let sent = pooled.next_call();
        let wants = origin.and_then(|o| Some((o.progress.clone()?, o)));
        let upstream_token = wants.as_ref().map(|_| ProgressToken(sent.id.clone()));
        if let Some(token) = &upstream_token {
            request.meta.get_or_insert_with(Default::default).set_progress_token(token.clone());
        }
        let (notes_in, mut notes) = tokio::sync::mpsc::channel(256);
        let mut on_progress = move |note| {
            // Progress is advisory: a client that does not keep up loses some.
            let _ = notes_in.try_send(note);
        };
        let sink = wants.map(|(client_token, o)| (o.progress_sink(), client_token));
        let forward = async |note| {
            if let Some((sink, client_token)) = &sink {
                sink.forward(client_token, note).await;
            }
        };
        let ms = call_timeout_ms(spec, tool);
        let limit = self.gateway.config.max_response_bytes;
        let call = pooled.call_tool(
            session,
            &sent,
            request,
            upstream_token.as_ref(),
            &mut on_progress,
            upstream.targets(),
            limit,
        );
        let call = tokio::time::timeout(Duration::from_millis(ms), call);
        tokio::pin!(call);
        let outcome = loop {
            tokio::select! {
                biased;
                Some(note) = notes.recv() => forward(note).await,
                r = &mut call => break r,
                _ = cancel.cancelled() => {
                    pooled.cancel(session.clone(), &sent, "cancelled by the client".into());
                    return Ok(Err(CallFailure::Cancelled));
                }
            }
        };
        // What the upstream reported before answering reaches the client before the answer.
        while let Ok(note) = notes.try_recv() {
            forward(note).await;
        }
        let failed =
            |reason: String| CallFailure::Upstream(UpstreamError::Failed { server: spec.server_name.clone(), reason });
        let response = match outcome {
            Err(_) => {
                pooled.cancel(session.clone(), &sent, format!("gateway timeout ({ms} ms)"));
                return Ok(Err(CallFailure::Upstream(UpstreamError::Timeout { server: spec.server_name.clone(), ms })));
            }
            Ok(Err(not_sent)) => return Err(not_sent),
            Ok(Ok(CallEnd::Answered(result))) => match tool_response(*result) {
                Some(response) => response,
                None => return Ok(Err(failed("the answer is not a tool call result".into()))),
            },
            Ok(Ok(CallEnd::Refused(e))) => return Ok(Err(CallFailure::Protocol(e))),
            Ok(Ok(CallEnd::Failed(reason))) => return Ok(Err(failed(reason))),
            Ok(Ok(CallEnd::TooLarge(size))) => return Ok(Err(CallFailure::TooLarge { size, limit })),
        };
        Ok(self.within_cap(response))
    }

    /// Each server's complete listing of one kind, in config order: `None` where the server does not
    /// offer that capability, cannot be reached or does not answer within its discovery timeout.
    async fn list_each<T, Fut>(
        &self,
        config: &ConfigView,
        offers: fn(&ServerCapabilities) -> bool,
        list: impl Fn(Peer<RoleClient>) -> Fut,
    ) -> Vec<Option<Vec<T>>>
    where
        Fut: Future<Output = Result<Vec<T>, ServiceError>>,
    {
        let list = &list;
        join_all(config.servers.iter().map(|spec| async move {
            let upstream = self.upstream(config.id, spec);
            let conn = upstream.acquire().await.ok()?;
            if conn.peer.peer_info().is_some_and(|i| !offers(&i.capabilities)) {
                return None;
            }
            let ms = Duration::from_millis(spec.timeouts.discovery_ms);
            tokio::time::timeout(ms, list(conn.peer.clone())).await.ok()?.ok()
        }))
        .await
    }

    async fn list_prompts_of(&self, config: &ConfigView) -> Vec<Option<Vec<Prompt>>> {
        self.list_each(config, |c| c.prompts.is_some(), |peer| async move { peer.list_all_prompts().await }).await
    }

    async fn list_resources_of(&self, config: &ConfigView) -> Vec<Option<Vec<Resource>>> {
        self.list_each(config, |c| c.resources.is_some(), |peer| async move { peer.list_all_resources().await }).await
    }

    async fn list_templates_of(&self, config: &ConfigView) -> Vec<Option<Vec<ResourceTemplate>>> {
        let list = |peer: Peer<RoleClient>| async move { peer.list_all_resource_templates().await };
        self.list_each(config, |c| c.resources.is_some(), list).await
    }

    /// A prompt's server and upstream name, from the name the client knows it by. With bare names
    /// and several servers, the first server that lists it (as `prompts/list` shows them all).
    async fn route_prompt(&self, config: &ConfigView, name: &str) -> Option<(Arc<ServerSpec>, String)> {
        let spec = match (config.naming, config.servers.as_slice()) {
            (ToolNaming::Prefixed, _) => {
                return config.split_prefixed(name).map(|(s, n)| (s.clone(), n.to_string()));
            }
            (ToolNaming::Bare, [only]) => only.clone(),
            (ToolNaming::Bare, servers) => {
                let lists = self.list_prompts_of(config).await;
                let lists_it = |l: &Option<Vec<Prompt>>| l.iter().flatten().any(|p| p.name == name);
                servers.iter().zip(&lists).find(|(_, l)| lists_it(l))?.0.clone()
            }
        };
        Some((spec, name.to_string()))
    }

    /// A resource's server and upstream URI, from the URI the client knows it by. With bare names
    /// and several servers, the first server that lists the URI, else the first whose resource
    /// templates name or match it.
    async fn route_resource(&self, config: &ConfigView, uri: &str) -> Option<(Arc<ServerSpec>, String)> {
        let spec = match (config.naming, config.servers.as_slice()) {
            (ToolNaming::Prefixed, _) => {
                return config.split_uri(uri).map(|(s, u)| (s.clone(), u.to_string()));
            }
            (ToolNaming::Bare, [only]) => only.clone(),
            (ToolNaming::Bare, servers) => {
                let (resources, templates) =
                    futures::join!(self.list_resources_of(config), self.list_templates_of(config));
                let listed = |l: &Option<Vec<Resource>>| l.iter().flatten().any(|r| r.uri == uri);
                let named = |l: &Option<Vec<ResourceTemplate>>| l.iter().flatten().any(|t| t.uri_template == uri);
                let matched = |l: &Option<Vec<ResourceTemplate>>| {
                    l.iter().flatten().any(|t| crate::catalog::Glob::uri_template(&t.uri_template).matches(uri))
                };
                let found = servers.iter().zip(&resources).find(|(_, l)| listed(l)).map(|(s, _)| s);
                let found = found.or_else(|| servers.iter().zip(&templates).find(|(_, l)| named(l)).map(|(s, _)| s));
                found.or_else(|| servers.iter().zip(&templates).find(|(_, l)| matched(l)).map(|(s, _)| s))?.clone()
            }
        };
        Some((spec, uri.to_string()))
    }

    fn start_relay(&self, peer: Peer<RoleServer>, project_id: Uuid) {
        let token = CancellationToken::new();
        let mut slot = self.session.relay.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return;
        }
        *slot = Some(token.clone().drop_guard());
        let gateway = self.gateway.clone();
        let mut events = gateway.events.subscribe();
        tokio::spawn(async move {
            let config_of = |g: &Gateway| g.catalog().project(project_id).and_then(|p| p.config.clone());
            let mut current = config_of(&gateway);
            loop {
                let event = tokio::select! {
                    _ = token.cancelled() => return,
                    e = events.recv() => e,
                };
                let kinds: Vec<ListKind> = match event {
                    Ok(ChangeEvent::Upstream { config_id, kind }) => {
                        if current.as_ref().is_some_and(|c| c.id == config_id) { vec![kind] } else { vec![] }
                    }
                    Ok(ChangeEvent::Reloaded) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let next = config_of(&gateway);
                        let same = match (&current, &next) {
                            (Some(a), Some(b)) => a.id == b.id && a.same_as(b),
                            (None, None) => true,
                            _ => false,
                        };
                        current = next;
                        if same { vec![] } else { vec![ListKind::Tools, ListKind::Prompts, ListKind::Resources] }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                for kind in kinds {
                    let sent = match kind {
                        ListKind::Tools => peer.notify_tool_list_changed().await,
                        ListKind::Prompts => peer.notify_prompt_list_changed().await,
                        ListKind::Resources => peer.notify_resource_list_changed().await,
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            }
        });
    }

    fn audit(&self, p: &Principal, call: CallSummary<'_>) {
        let CallSummary { server, tool, outcome, started, request_bytes, arguments, response_bytes } = call;
        let took = started.elapsed();
        self.gateway.metrics.record_call(&p.project_name, server, tool, outcome, took);
        if let Some((trace, span)) = telemetry::sampled_ids() {
            self.gateway.metrics.record_call_exemplar(took, trace, span);
        }
        let audit = &self.gateway.audit;
        if !audit.is_enabled() {
            return;
        }
        audit.record(AuditRecord {
            time: chrono::Utc::now(),
            key_id: p.key_id.to_string(),
            project: p.project_name.to_string(),
            user_id: p.user_id.to_string(),
            server: server.to_string(),
            tool: tool.to_string(),
            outcome,
            duration_ms: took.as_secs_f64() * 1000.0,
            request_bytes,
            response_bytes,
            arguments: arguments.map(serde_json::Value::Object),
        });
    }
}

/// How a tool call ended, as metrics, audit and traces name it.
fn call_outcome(result: &Result<CallToolResponse, CallFailure>) -> &'static str {
    match result {
        Ok(CallToolResponse::Complete(c)) if c.is_error == Some(true) => "error",
        Ok(_) => "success",
        Err(failure) => failure.outcome(),
    }
}

/// What the metrics and the audit log record about one tool call.
struct CallSummary<'a> {
    server: &'a str,
    tool: &'a str,
    outcome: &'static str,
    started: Instant,
    request_bytes: usize,
    /// The arguments, when the audit log records them.
    arguments: Option<JsonObject>,
    response_bytes: usize,
}

/// Why a forwarded call produced no upstream result.
#[derive(Debug)]
pub enum CallFailure {
    Upstream(UpstreamError),
    /// The upstream answered with a JSON-RPC error: passed through as is.
    Protocol(McpError),
    Cancelled,
    TooLarge {
        size: usize,
        limit: usize,
    },
    /// Refused by a guardrail policy.
    Blocked(crate::guard::Blocked),
    /// The tool (or its server) is held back by an integrity check.
    Held(String),
    /// Not a tool this caller can see.
    Unknown,
}

impl CallFailure {
    pub fn message(&self) -> String {
        match self {
            CallFailure::Upstream(e) => e.to_string(),
            CallFailure::Protocol(e) => e.message.to_string(),
            CallFailure::Cancelled => "cancelled by the client".into(),
            CallFailure::TooLarge { size, limit } => {
                format!("upstream response of {size} bytes exceeds the gateway's limit of {limit} bytes")
            }
            CallFailure::Blocked(b) => b.message(),
            CallFailure::Held(reason) => reason.clone(),
            CallFailure::Unknown => "unknown tool".into(),
        }
    }

    /// Outcome label for metrics, the audit log and `gateway_call_tools`.
    pub fn outcome(&self) -> &'static str {
        match self {
            CallFailure::Cancelled => "cancelled",
            CallFailure::Upstream(UpstreamError::Timeout { .. }) => "timeout",
            CallFailure::Blocked(_) | CallFailure::Held(_) => "blocked",
            CallFailure::Unknown => "denied",
            _ => "error",
        }
    }
}

/// What a guardrail stage's span says before it ends: the stage and the server.
fn guard_attributes(stage: &'static str, spec: &ServerSpec) -> Vec<opentelemetry::KeyValue> {
    vec![
        opentelemetry::KeyValue::new("mcpgw.guardrail.stage", stage),
        opentelemetry::KeyValue::new("mcpgw.server", spec.server_name.clone()),
    ]
}

/// `_meta` for the upstream request: the client's own keys, minus protocol bookkeeping that
/// describes the client's connection and its progress token (rmcp sets the gateway's own).
/// How long a call of `tool` may take (its own timeout, else the server's).
fn call_timeout_ms(spec: &ServerSpec, tool: &str) -> u64 {
    spec.timeouts.tools.get(tool).copied().unwrap_or(spec.timeouts.call_ms)
}

/// A tool call's answer, if `result` is one.
fn tool_response(result: ServerResult) -> Option<CallToolResponse> {
    match result {
        ServerResult::CallToolResult(r) => Some(CallToolResponse::Complete(r)),
        ServerResult::InputRequiredResult(r) => Some(CallToolResponse::InputRequired(r)),
        ServerResult::CreateTaskResult(r) => Some(CallToolResponse::Task(r)),
        _ => None,
    }
}

fn upstream_meta(client: Option<RequestMetaObject>) -> Option<RequestMetaObject> {
    let mut meta = client.unwrap_or_default();
    meta.0.retain(|k, _| !k.starts_with("io.modelcontextprotocol/") && k != "progressToken");
    (!meta.0.is_empty()).then_some(meta)
}

/// Bytes of payload in a response (text, binary data, structured content), to enforce the cap.
fn response_size(response: &CallToolResponse) -> usize {
    let CallToolResponse::Complete(result) = response else { return 0 };
    let content: usize = result.content.iter().map(content_size).sum();
    content + result.structured_content.as_ref().map_or(0, json_size)
}

/// The length of `value` as JSON text, counted without building the text.
fn json_size(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

fn content_size(block: &ContentBlock) -> usize {
    match block {
        ContentBlock::Text(t) => t.text.len(),
        ContentBlock::Image(i) => i.data.len(),
        ContentBlock::Audio(a) => a.data.len(),
        ContentBlock::Resource(r) => match &r.resource {
            ResourceContents::TextResourceContents { text, .. } => text.len(),
            ResourceContents::BlobResourceContents { blob, .. } => blob.len(),
            _ => 0,
        },
        ContentBlock::ResourceLink(l) => l.uri.len(),
        _ => 0,
    }
}

fn unknown_tool(name: &str) -> McpError {
    McpError::invalid_params(format!("unknown tool: {name}"), None)
}

fn call_error(message: String) -> CallToolResponse {
    CallToolResponse::Complete(CallToolResult::error(vec![ContentBlock::text(message)]))
}

impl ServerHandler for GatewayService {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_resources()
            .enable_resources_list_changed()
            .enable_resources_subscribe()
            .enable_logging()
            .enable_completions()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("mcpgw", env!("CARGO_PKG_VERSION")).with_title("mcpgw MCP gateway"))
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        self.session.link.attach(&context.peer);
        self.offer_direct(&context.extensions, &context.peer);
        if let Ok(p) = self.principal(&context.extensions).await {
            self.start_relay(context.peer.clone(), p.project_id);
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let p = self.principal(&context.extensions).await?;
        self.offer_direct(&context.extensions, &context.peer);
        let Some(config) = p.config else { return Ok(ListToolsResult::with_all_items(vec![])) };
        let mut tools = Vec::new();
        if config.naming == ToolNaming::Prefixed {
            tools.extend(meta_tools::definitions());
        }
        let discovered = join_all(config.servers.iter().map(|s| self.allowed_tools(&config, s))).await;
        let mut seen = std::collections::HashSet::new();
        for (spec, result) in config.servers.iter().zip(discovered) {
            match result {
                Ok(list) => {
                    for mut tool in list {
                        tool.name = config.exposed_name(&spec.server_name, &tool.name).into();
                        if seen.insert(tool.name.clone()) {
                            tools.push(tool);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(server = %spec.server_name, error = %e, "tool discovery failed; its tools are left out")
                }
            }
        }
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let started = Instant::now();
        let p = self.principal(&context.extensions).await?;
        self.offer_direct(&context.extensions, &context.peer);
        let name = request.name.to_string();
        let Some(config) = p.config.clone() else { return Err(unknown_tool(&name)) };
        if config.naming == ToolNaming::Prefixed && meta_tools::is_meta_tool(&name) {
            self.session.link.attach(&context.peer);
            let origin =
                CallOrigin { peer: &context.peer, request: context.id.clone(), progress: None, progress_into: None };
            let arguments = request.arguments.unwrap_or_default();
            let result = meta_tools::call(self, &p, &config, &name, arguments, &origin, &context.ct).await;
            let outcome = if result.is_error == Some(true) { "error" } else { "success" };
            let summary = CallSummary {
                server: "gateway",
                tool: &name,
                outcome,
                started,
                request_bytes: 0,
                arguments: None,
                response_bytes: 0,
            };
            self.audit(&p, summary);
            return Ok(CallToolResponse::Complete(result));
        }
        let mut policy = telemetry::Stage::start("policy", Vec::new);
        let Some((spec, tool)) = config.route_tool(&name) else {
            policy.decision("denied");
            return Err(unknown_tool(&name));
        };
        if !config.tool_allowed(&spec.server_name, tool) {
            policy.decision("denied");
            return Err(unknown_tool(&name));
        }
        policy.decision("allowed");
        let (spec, tool) = (spec.clone(), tool.to_string());
        // Over HTTP the listener counted the call before MCP (to answer 429); stdio counts here.
        if matches!(self.identity, Identity::Key(_)) {
            let limits = crate::rate_limit::applicable(&p, &config, &spec, &tool);
            if let Err(limited) = self.gateway.rate_limiter.admit(&limits, &self.gateway.metrics).await {
                self.gateway.metrics.record_rate_limited(&p.project_name, limited.kind);
                self.gateway.audit.record_rate_limited(&p, &limited);
                let data = serde_json::json!({"limit": limited.kind, "retry_after_secs": limited.retry_after_secs});
                let code = rmcp::model::ErrorCode(crate::rate_limit::ERROR_CODE);
                return Err(McpError::new(code, limited.to_string(), Some(data)));
            }
        }
        let progress =
            context.meta.get_progress_token().or_else(|| request.meta.as_ref().and_then(|m| m.get_progress_token()));
        self.session.link.attach(&context.peer);
        let progress_into = context.extensions.get::<crate::direct::ProgressInto>().cloned();
        let origin = CallOrigin { peer: &context.peer, request: context.id.clone(), progress, progress_into };
        let result = self.recorded_call(&p, &config, &spec, request, &tool, Some(&origin), &context.ct, started).await;
        // The request's server span describes this call (a batch's span stays the batch's).
        telemetry::record_call(&p, &spec.server_name, call_outcome(&result));
        match result {
            Ok(response) => Ok(response),
            Err(CallFailure::Protocol(e)) => Err(e),
            Err(CallFailure::Cancelled) => Err(McpError::internal_error("request cancelled", None)),
            Err(CallFailure::Unknown) => Err(unknown_tool(&name)),
            Err(failure) => Ok(call_error(failure.message())),
        }
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let p = self.principal(&context.extensions).await?;
        let Some(config) = p.config else { return Ok(ListPromptsResult::with_all_items(vec![])) };
        let lists = self.list_prompts_of(&config).await;
        let mut prompts = Vec::new();
        for (spec, list) in config.servers.iter().zip(lists) {
            for mut prompt in list.unwrap_or_default() {
                prompt.name = config.exposed_name(&spec.server_name, &prompt.name);
                prompts.push(prompt);
            }
        }
        Ok(ListPromptsResult::with_all_items(prompts))
    }

    async fn get_prompt(
        &self,
        mut request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let p = self.principal(&context.extensions).await?;
        let unknown = || McpError::invalid_params(format!("unknown prompt: {}", request.name), None);
        let Some(config) = p.config else { return Err(unknown()) };
        let (spec, name) = self.route_prompt(&config, &request.name).await.ok_or_else(unknown)?;
        let upstream = self.upstream(config.id, &spec);
        let conn = upstream.acquire().await.map_err(|e| McpError::internal_error(e.to_string(), None))?;
        request.name = name;
        request.meta = upstream_meta(request.meta.take());
        let span = telemetry::UpstreamCall::start(&spec, telemetry::Target::Prompt(&request.name), &mut request.meta);
        let ms = spec.timeouts.call_ms;
        let answer = tokio::time::timeout(Duration::from_millis(ms), conn.peer.get_prompt_once(request)).await;
        let answer = upstream_answer(&spec, ms, answer);
        span.end(answer.as_ref().err().map(|_| "error"));
        answer
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let p = self.principal(&context.extensions).await?;
        let Some(config) = p.config else { return Ok(ListResourcesResult::with_all_items(vec![])) };
        let lists = self.list_resources_of(&config).await;
        let mut resources = Vec::new();
        for (spec, list) in config.servers.iter().zip(lists) {
            for mut resource in list.unwrap_or_default() {
                resource.uri = config.exposed_uri(&spec.server_name, &resource.uri);
                resources.push(resource);
            }
        }
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let p = self.principal(&context.extensions).await?;
        let Some(config) = p.config else { return Ok(ListResourceTemplatesResult::with_all_items(vec![])) };
        let lists = self.list_templates_of(&config).await;
        let mut templates = Vec::new();
        for (spec, list) in config.servers.iter().zip(lists) {
            for mut template in list.unwrap_or_default() {
                template.uri_template = config.exposed_uri(&spec.server_name, &template.uri_template);
                templates.push(template);
            }
        }
        Ok(ListResourceTemplatesResult::with_all_items(templates))
    }

    async fn read_resource(
        &self,
        mut request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let ResourceRoute { config, spec, upstream, uri } =
            self.resource_route(&context.extensions, &request.uri).await?;
        let conn = upstream.acquire().await.map_err(|e| McpError::internal_error(e.to_string(), None))?;
        request.uri = uri;
        request.meta = upstream_meta(request.meta.take());
        let span = telemetry::UpstreamCall::start(&spec, telemetry::Target::Resource(&request.uri), &mut request.meta);
        let ms = spec.timeouts.call_ms;
        let answer = tokio::time::timeout(Duration::from_millis(ms), conn.peer.read_resource_once(request)).await;
        let answer = upstream_answer(&spec, ms, answer);
        span.end(answer.as_ref().err().map(|_| "error"));
        let response = answer?;
        Ok(match response {
            ReadResourceResponse::Complete(mut result) => {
                for contents in &mut result.contents {
                    if let ResourceContents::TextResourceContents { uri, .. }
                    | ResourceContents::BlobResourceContents { uri, .. } = contents
                    {
                        *uri = config.exposed_uri(&spec.server_name, uri);
                    }
                }
                ReadResourceResponse::Complete(result)
            }
            other => other,
        })
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let p = self.principal(&context.extensions).await?;
        self.session.link.attach(&context.peer);
        self.session.link.set_log_level(request.level);
        let Some(config) = p.config else { return Ok(()) };
        // Upstreams send at the level asked; the gateway filters again per session, so a shared
        // upstream's level (the last one set) never makes a client see more than it asked for.
        let config = &config;
        join_all(config.servers.iter().map(|spec| async move {
            let upstream = self.upstream(config.id, spec);
            let Ok(conn) = upstream.acquire().await else { return };
            if conn.peer.peer_info().is_some_and(|i| i.capabilities.logging.is_some()) {
                let ms = Duration::from_millis(spec.timeouts.call_ms);
                let params = SetLevelRequestParams::new(request.level);
                let _ = tokio::time::timeout(ms, conn.peer.set_level(params)).await;
            }
        }))
        .await;
        Ok(())
    }

    async fn complete(
        &self,
        mut request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        let p = self.principal(&context.extensions).await?;
        let Some(config) = p.config else { return Ok(CompleteResult::default()) };
        let (spec, upstream_ref) = match &request.r#ref {
            Reference::Prompt(prompt) => self.route_prompt(&config, &prompt.name).await.map(|(spec, name)| {
                let mut prompt = prompt.clone();
                prompt.name = name;
                (spec, Reference::Prompt(prompt))
            }),
            Reference::Resource(template) => self
                .route_resource(&config, &template.uri)
                .await
                .map(|(spec, uri)| (spec, Reference::Resource(ResourceTemplateReference::new(uri)))),
            _ => None,
        }
        .ok_or_else(|| McpError::invalid_params("unknown prompt or resource template", None))?;
        let upstream = self.upstream(config.id, &spec);
        let conn = upstream.acquire().await.map_err(|e| McpError::internal_error(e.to_string(), None))?;
        if conn.peer.peer_info().is_some_and(|i| i.capabilities.completions.is_none()) {
            return Ok(CompleteResult::default());
        }
        request.r#ref = upstream_ref;
        request.meta = upstream_meta(request.meta.take());
        let ms = spec.timeouts.call_ms;
        upstream_answer(&spec, ms, tokio::time::timeout(Duration::from_millis(ms), conn.peer.complete(request)).await)
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let exposed = request.uri.clone();
        let ResourceRoute { spec, upstream, uri, .. } = self.resource_route(&context.extensions, &exposed).await?;
        self.session.link.attach(&context.peer);
        let conn = upstream.acquire().await.map_err(|e| McpError::internal_error(e.to_string(), None))?;
        let subscribable = conn.peer.peer_info().and_then(|i| i.capabilities.resources.as_ref()?.subscribe);
        if subscribable != Some(true) {
            return Err(McpError::invalid_request(
                format!("server `{}` does not offer resource subscriptions", spec.server_name),
                None,
            ));
        }
        if !upstream.callers().subscribe(&uri, &self.session.link, exposed.clone()) {
            return Ok(());
        }
        let ms = spec.timeouts.call_ms;
        let params = SubscribeRequestParams::new(uri.clone());
        let answer = tokio::time::timeout(Duration::from_millis(ms), conn.peer.subscribe(params)).await;
        let answer = upstream_answer(&spec, ms, answer);
        if answer.is_err() {
            upstream.callers().unsubscribe(&uri, &self.session.link);
        }
        answer
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let ResourceRoute { spec, upstream, uri, .. } = self.resource_route(&context.extensions, &request.uri).await?;
        if !upstream.callers().unsubscribe(&uri, &self.session.link) {
            return Ok(());
        }
        let conn = upstream.acquire().await.map_err(|e| McpError::internal_error(e.to_string(), None))?;
        let ms = spec.timeouts.call_ms;
        let params = UnsubscribeRequestParams::new(uri);
        upstream_answer(&spec, ms, tokio::time::timeout(Duration::from_millis(ms), conn.peer.unsubscribe(params)).await)
    }
}

/// The config, server and upstream behind a client's resource URI, and the URI the upstream knows.
struct ResourceRoute {
    config: Arc<ConfigView>,
    spec: Arc<ServerSpec>,
    upstream: Arc<Upstream>,
    uri: String,
}

/// An upstream's answer to a request passed on, with a timeout turned into a clear error.
fn upstream_answer<T>(
    spec: &ServerSpec,
    ms: u64,
    answer: Result<Result<T, ServiceError>, tokio::time::error::Elapsed>,
) -> Result<T, McpError> {
    match answer {
        Err(_) => Err(McpError::internal_error(
            format!("upstream `{}` did not answer within {ms} ms", spec.server_name),
            None,
        )),
        Ok(Err(ServiceError::McpError(e))) => Err(e),
        Ok(Err(e)) => Err(McpError::internal_error(UpstreamError::failed(&spec.server_name, e).to_string(), None)),
        Ok(Ok(answer)) => Ok(answer),
    }
}

/// The next progress notification of a call, or never when its client did not ask for progress.
async fn next_progress(route: &mut Option<ProgressRoute<'_>>) -> Option<ProgressNotificationParam> {
    match route {
        Some(route) => route.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_size_is_the_length_of_the_json_text() {
        let value = serde_json::json!({"message": "héllo \"quoted\"\n", "n": [1, 2.5, null], "nested": {"a": true}});
        assert_eq!(json_size(&value), serde_json::to_vec(&value).unwrap().len());
        assert_eq!(json_size(&serde_json::Map::new()), 2);
    }
}
