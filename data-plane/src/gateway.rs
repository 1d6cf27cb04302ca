//! The MCP surface clients talk to: an rmcp `ServerHandler` that lists and calls only what the
//! caller's project may see, forwarding to upstreams and passing results through whole.
//!
//! Every request resolves the caller against the current catalog first; the allow/deny decision is
//! `ConfigView::tool_allowed`, shared by `tools/list` and `tools/call`. A tool call runs the
//! pipeline in `crate::call`.

// Logging, sampling and resource subscriptions: rmcp marks them deprecated for a future protocol
// version; clients speak today's, and the gateway relays them.
#![allow(deprecated)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rmcp::model::*;
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData as McpError, Peer, RoleClient, RoleServer, ServerHandler, ServiceError};
use shared::server::ServerSpec;
use shared::snapshot::ToolNaming;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use crate::auth::Principal;
use crate::call::{self, CallFailure, CallOrigin, CallSummary, ToolCall, upstream_meta};
use crate::catalog::ConfigView;
use crate::meta_tools;
use crate::state::Gateway;
use crate::telemetry;
use crate::upstream::callers::ClientLink;
use crate::upstream::relay::{ChangeEvent, ListKind};
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

    /// What upstreams' own messages reach this session by.
    pub(crate) fn link(&self) -> &Arc<ClientLink> {
        &self.session.link
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
            call::record(self, &p, summary);
            return Ok(CallToolResponse::Complete(result));
        }
        let Some((spec, tool)) = call::route(&config, &name) else { return Err(unknown_tool(&name)) };
        // Over HTTP the listener counted the call before MCP (to answer 429); stdio counts here.
        if matches!(self.identity, Identity::Key(_))
            && let Err(limited) = call::admit(self, &p, &config, spec, tool).await
        {
            let data = serde_json::json!({"limit": limited.kind, "retry_after_secs": limited.retry_after_secs});
            let code = rmcp::model::ErrorCode(crate::rate_limit::ERROR_CODE);
            return Err(McpError::new(code, limited.to_string(), Some(data)));
        }
        let progress =
            context.meta.get_progress_token().or_else(|| request.meta.as_ref().and_then(|m| m.get_progress_token()));
        self.session.link.attach(&context.peer);
        let progress_into = context.extensions.get::<crate::direct::ProgressInto>().cloned();
        let origin = CallOrigin { peer: &context.peer, request: context.id.clone(), progress, progress_into };
        let call = ToolCall::resolve(self, &p, &config, spec.clone(), tool, Some(&origin), &context.ct, started);
        let result = call.run(request).await;
        // The request's server span describes this call (a batch's span stays the batch's).
        telemetry::record_call(&p, &spec.server_name, call::call_outcome(&result));
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
