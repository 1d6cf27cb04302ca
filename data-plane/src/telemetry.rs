//! OpenTelemetry traces of MCP requests, and tool-call audit records as OTLP logs, exported over
//! OTLP/HTTP (protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the signal's own endpoint) is set,
//! and off otherwise.
//!
//! Spans follow the OpenTelemetry MCP semantic conventions: a server span per client request named
//! `{mcp.method.name} {target}`, children for authentication, the policy decision and each
//! guardrail stage, and a client span for the upstream call whose context travels on to the
//! upstream (`params._meta.traceparent`, and the `traceparent` header for HTTP upstreams). An
//! incoming `traceparent` (in `params._meta`, else the HTTP header) is the parent.
//!
//! Export never slows a call: finished spans go into a bounded queue that a background task sends
//! in batches; what does not fit, or cannot be sent, is dropped and counted. With export off every
//! hook is one atomic load.

// Logging and resource subscriptions: rmcp marks them deprecated for a future protocol version;
// clients speak today's, and the gateway relays them.
#![allow(deprecated)]

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use futures::stream::BoxStream;
use opentelemetry::context::FutureExt as _;
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, Severity};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanBuilder, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue, StringValue, Value};
use opentelemetry_sdk::logs::SdkLogger;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;
use reqwest::header::{HeaderName, HeaderValue};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientJsonRpcMessage, ClientRequest, CompleteRequestParams,
    CompleteResult, GetMeta as _, GetPromptRequestParams, GetPromptResponse, InitializeRequestParams, InitializeResult,
    JsonRpcMessage, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
    PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, RequestMetaObject, RequestParamsMeta as _,
    ServerConfig, SetLevelRequestParams, SubscribeRequestParams, UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use shared::otel::{Counters, Otel, OtelError, Wanted};
use std::sync::Arc;

use crate::auth::Principal;
use crate::gateway::GatewayService;
use crate::session::short_id;

const DEFAULT_SERVICE_NAME: &str = "mcpgw-data-plane";
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

static TRACER: OnceLock<SdkTracer> = OnceLock::new();
static AUDIT: OnceLock<SdkLogger> = OnceLock::new();

static SPANS: Counters = Counters::new();
static LOG_RECORDS: Counters = Counters::new();

/// Whether spans are being recorded (export configured).
pub(crate) fn enabled() -> bool {
    TRACER.get().is_some()
}

/// Whether tool-call audit records go out as OTLP logs.
pub(crate) fn audit_exported() -> bool {
    AUDIT.get().is_some()
}

/// Checks the OTLP settings without starting anything.
pub fn check_settings() -> Result<(), OtelError> {
    shared::otel::check_settings(true)
}

/// Running OTLP export of the data plane's traces and audit records.
pub struct Telemetry(Otel);

impl Telemetry {
    /// Starts export as the environment asks (inside a Tokio runtime); `None` when it asks for none.
    pub fn start() -> Result<Option<Telemetry>, OtelError> {
        if TRACER.get().is_some() || AUDIT.get().is_some() {
            return Ok(None);
        }
        let wanted = Wanted {
            service: DEFAULT_SERVICE_NAME,
            scope: "mcpgw",
            spans: &SPANS,
            logs: Some(("mcpgw.audit", &LOG_RECORDS)),
        };
        let Some(mut otel) = Otel::start(wanted)? else { return Ok(None) };
        if let Some(tracer) = otel.tracer.take() {
            let _ = TRACER.set(tracer);
        }
        if let Some(logger) = otel.logger.take() {
            let _ = AUDIT.set(logger);
        }
        Ok(Some(Telemetry(otel)))
    }

    /// Sends what is queued (for at most a few seconds), then stops.
    pub async fn shutdown(self) {
        self.0.shutdown().await
    }
}

/// The export counters, in the Prometheus text format.
pub(crate) fn render_metrics(out: &mut String) {
    SPANS.render(out, "mcpgw_otel_spans", "Spans");
    LOG_RECORDS.render(out, "mcpgw_otel_log_records", "Audit log records");
}

/// A tool call's audit record as an OTLP log record (with the trace it belongs to, when there is
/// one); nothing when audit export is off.
pub(crate) fn export_audit(record: &crate::audit::AuditRecord) {
    let Some(logger) = AUDIT.get() else { return };
    let mut log = logger.create_log_record();
    log.set_event_name("mcpgw.tool_call");
    log.set_timestamp(record.time.into());
    log.set_observed_timestamp(SystemTime::now());
    let (severity, text) = match record.outcome {
        "success" => (Severity::Info, "INFO"),
        _ => (Severity::Warn, "WARN"),
    };
    log.set_severity_number(severity);
    log.set_severity_text(text);
    log.set_body(AnyValue::from(format!("tools/call {}/{}: {}", record.server, record.tool, record.outcome)));
    log.add_attribute("mcpgw.key_id", record.key_id.clone());
    log.add_attribute("mcpgw.project", record.project.clone());
    log.add_attribute("mcpgw.user_id", record.user_id.clone());
    log.add_attribute("mcpgw.server", record.server.clone());
    log.add_attribute("gen_ai.tool.name", record.tool.clone());
    log.add_attribute("mcpgw.outcome", record.outcome);
    log.add_attribute("mcpgw.duration_ms", record.duration_ms);
    log.add_attribute("mcpgw.request_bytes", record.request_bytes as i64);
    log.add_attribute("mcpgw.response_bytes", record.response_bytes as i64);
    // Present only with MCPGW_AUDIT_ARGUMENTS on.
    if let Some(arguments) = &record.arguments {
        log.add_attribute("mcpgw.arguments", arguments.to_string());
    }
    let cx = Context::current();
    let span = cx.span();
    let sc = span.span_context();
    if sc.is_valid() {
        log.set_trace_context(sc.trace_id(), sc.span_id(), Some(sc.trace_flags()));
    }
    logger.emit(log);
}

/// W3C trace context read from two optional values.
struct Carrier<'a>(Option<&'a str>, Option<&'a str>);

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.0,
            TRACESTATE => self.1,
            _ => None,
        }
    }
    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// W3C trace context written into a request's `_meta`.
struct MetaInjector<'a>(&'a mut RequestMetaObject);

impl Injector for MetaInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.0.set_traceparent(value),
            TRACESTATE => self.0.set_tracestate(value),
            _ => {}
        }
    }
}

/// When authentication of an HTTP request started and ended (for its span).
#[derive(Clone, Copy)]
pub(crate) struct AuthTiming {
    start: SystemTime,
    end: SystemTime,
}

/// The start of authentication, when spans are recorded.
pub(crate) fn authentication_started() -> Option<SystemTime> {
    enabled().then(SystemTime::now)
}

/// Keeps the authentication's timing with the request, for the server span.
pub(crate) fn authenticated(extensions: &mut axum::http::Extensions, started: Option<SystemTime>) {
    if let Some(start) = started {
        extensions.insert(AuthTiming { start, end: SystemTime::now() });
    }
}

/// How a session reaches the gateway, for `network.transport`.
#[derive(Clone, Copy)]
pub enum Transport {
    Http,
    Stdio,
}

/// The gateway's MCP handler with a server span around each request, and the
/// `mcp.server.operation.duration` metric.
#[derive(Clone)]
pub struct Traced {
    inner: GatewayService,
    transport: Transport,
}

impl Traced {
    pub fn new(inner: GatewayService, transport: Transport) -> Self {
        Traced { inner, transport }
    }
}

/// A request's server span, open while the gateway works on it.
struct Open {
    cx: Context,
    note: Arc<CallNote>,
}

impl Traced {
    /// Starts the server span of a request (nothing when spans are not recorded). Attributes are
    /// built only for spans the sampler keeps.
    fn begin(
        &self,
        method: &'static str,
        target: Option<(&'static str, &str)>,
        extra: impl FnOnce() -> Vec<KeyValue>,
        context: &RequestContext<RoleServer>,
    ) -> Option<Open> {
        let tracer = TRACER.get()?;
        let parts = context.extensions.get::<axum::http::request::Parts>();
        let header = |name: &str| parts.and_then(|p| p.headers.get(name)).and_then(|v| v.to_str().ok());
        // The client's context: `params._meta` as MCP clients send it, else the HTTP headers.
        let parent = match context.meta.get_traceparent() {
            Some(tp) => TraceContextPropagator::new().extract(&Carrier(Some(tp), context.meta.get_tracestate())),
            None => TraceContextPropagator::new().extract(&Carrier(header(TRACEPARENT), header(TRACESTATE))),
        };
        let auth = parts.and_then(|p| p.extensions.get::<AuthTiming>()).copied();
        let name = match target {
            Some((_, target)) => format!("{method} {target}"),
            None => method.to_string(),
        };
        let mut builder = SpanBuilder::from_name(name).with_kind(SpanKind::Server);
        if let Some(auth) = auth {
            builder = builder.with_start_time(auth.start);
        }
        let mut span = tracer.build_with_context(builder, &parent);
        let recording = span.is_recording();
        if recording {
            let mut attributes = extra();
            attributes.push(KeyValue::new("mcp.method.name", method));
            attributes.push(KeyValue::new("jsonrpc.request.id", context.id.to_string()));
            match self.transport {
                Transport::Http => {
                    attributes.push(KeyValue::new("network.transport", "tcp"));
                    attributes.push(KeyValue::new("network.protocol.name", "http"));
                }
                Transport::Stdio => attributes.push(KeyValue::new("network.transport", "pipe")),
            }
            if let Some((key, target)) = target {
                attributes.push(KeyValue::new(key, target.to_string()));
            }
            if method == "tools/call" {
                attributes.push(KeyValue::new("gen_ai.operation.name", "execute_tool"));
            }
            if let Some(version) = context.protocol_version() {
                attributes.push(KeyValue::new("mcp.protocol.version", version.to_string()));
            }
            // Session ids are never exported whole: the same short form as the logs.
            if let Some(session) = header("mcp-session-id") {
                attributes.push(KeyValue::new("mcp.session.id", short_id(session)));
            }
            if let Some(p) = parts.and_then(|p| p.extensions.get::<Principal>()) {
                attributes.push(KeyValue::new("mcpgw.project", p.project_name.to_string()));
                attributes.push(KeyValue::new("mcpgw.key_id", p.key_id.to_string()));
            }
            span.set_attributes(attributes);
        }
        let note = Arc::new(CallNote::default());
        let cx = parent.with_span(span).with_value(note.clone());
        if let Some(auth) = auth.filter(|_| recording) {
            let span = SpanBuilder::from_name("authenticate")
                .with_kind(SpanKind::Internal)
                .with_start_time(auth.start)
                .with_attributes([KeyValue::new("mcpgw.outcome", "success")]);
            tracer.build_with_context(span, &cx).end_with_timestamp(auth.end);
        }
        Some(Open { cx, note })
    }

    /// Runs one request of `method` inside its server span, and records its duration.
    async fn run<T, F>(
        &self,
        method: &'static str,
        target: Option<(&'static str, &str)>,
        extra: impl FnOnce() -> Vec<KeyValue>,
        context: RequestContext<RoleServer>,
        call: impl FnOnce(RequestContext<RoleServer>) -> F,
        tool_error: impl FnOnce(&T) -> bool,
    ) -> Result<T, McpError>
    where
        F: Future<Output = Result<T, McpError>>,
    {
        let started = Instant::now();
        let open = if enabled() { self.begin(method, target, extra, &context) } else { None };
        let Some(Open { cx, note }) = open else {
            let result = call(context).await;
            self.inner.gateway.metrics.record_operation(method, started.elapsed());
            return result;
        };
        let result = call(context).with_context(cx.clone()).await;
        let span = cx.span();
        match &result {
            _ if !span.is_recording() => {}
            Err(e) => {
                let code = e.code.0.to_string();
                span.set_attribute(KeyValue::new("rpc.response.status_code", code.clone()));
                span.set_attribute(KeyValue::new("error.type", code));
                span.set_status(Status::error(e.message.to_string()));
            }
            Ok(r) if tool_error(r) => {
                // The gateway's own refusals (blocked, timeout, ...) say more than "the tool failed".
                let refused = *note.0.lock().unwrap_or_else(|e| e.into_inner());
                span.set_attribute(KeyValue::new("error.type", refused.unwrap_or("tool_error")));
                span.set_status(Status::error("the tool call failed"));
            }
            Ok(_) => {}
        }
        let sc = span.span_context();
        if sc.is_sampled() {
            let (trace, id) = (sc.trace_id().to_string(), sc.span_id().to_string());
            self.inner.gateway.metrics.record_operation_exemplar(method, started.elapsed(), trace, id);
        }
        span.end();
        self.inner.gateway.metrics.record_operation(method, started.elapsed());
        result
    }
}

fn no_attributes() -> Vec<KeyValue> {
    Vec::new()
}

fn never<T>(_: &T) -> bool {
    false
}

fn resource_uri(uri: &str) -> impl FnOnce() -> Vec<KeyValue> + '_ {
    move || vec![KeyValue::new("mcp.resource.uri", uri.to_string())]
}

impl ServerHandler for Traced {
    fn get_info(&self) -> ServerConfig {
        self.inner.get_info()
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        self.inner.on_initialized(context).await
    }

    async fn ping(&self, context: RequestContext<RoleServer>) -> Result<(), McpError> {
        self.run("ping", None, no_attributes, context, |c| self.inner.ping(c), never).await
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        let version = request.protocol_version.to_string();
        let extra = || vec![KeyValue::new("mcp.protocol.version", version)];
        self.run("initialize", None, extra, context, |c| self.inner.initialize(request, c), never).await
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        self.run("tools/list", None, no_attributes, context, |c| self.inner.list_tools(request, c), never).await
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let name = request.name.to_string();
        let target = Some(("gen_ai.tool.name", name.as_str()));
        let failed = |r: &CallToolResponse| matches!(r, CallToolResponse::Complete(c) if c.is_error == Some(true));
        self.run("tools/call", target, no_attributes, context, |c| self.inner.call_tool(request, c), failed).await
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        self.run("prompts/list", None, no_attributes, context, |c| self.inner.list_prompts(request, c), never).await
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let name = request.name.clone();
        let target = Some(("gen_ai.prompt.name", name.as_str()));
        self.run("prompts/get", target, no_attributes, context, |c| self.inner.get_prompt(request, c), never).await
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let call = |c| self.inner.list_resources(request, c);
        self.run("resources/list", None, no_attributes, context, call, never).await
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let call = |c| self.inner.list_resource_templates(request, c);
        self.run("resources/templates/list", None, no_attributes, context, call, never).await
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri = request.uri.clone();
        let call = |c| self.inner.read_resource(request, c);
        self.run("resources/read", None, resource_uri(&uri), context, call, never).await
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.run("logging/setLevel", None, no_attributes, context, |c| self.inner.set_level(request, c), never).await
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        self.run("completion/complete", None, no_attributes, context, |c| self.inner.complete(request, c), never).await
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let uri = request.uri.clone();
        let call = |c| self.inner.subscribe(request, c);
        self.run("resources/subscribe", None, resource_uri(&uri), context, call, never).await
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let uri = request.uri.clone();
        let call = |c| self.inner.unsubscribe(request, c);
        self.run("resources/unsubscribe", None, resource_uri(&uri), context, call, never).await
    }
}

/// How the gateway itself ended a tool call, when it refused or failed it (kept in the request's
/// context: an SDK span cannot be read back).
#[derive(Default)]
struct CallNote(std::sync::Mutex<Option<&'static str>>);

/// The trace and span ids of the current request, when its trace is sampled (for exemplars).
pub(crate) fn sampled_ids() -> Option<(String, String)> {
    if !enabled() {
        return None;
    }
    let cx = Context::current();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_sampled().then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// Records who made a tool call and how it ended on the request's server span.
pub(crate) fn record_call(principal: &Principal, server: &str, outcome: &'static str) {
    if !enabled() {
        return;
    }
    let cx = Context::current();
    let span = cx.span();
    if !span.is_recording() {
        return;
    }
    span.set_attribute(KeyValue::new("mcpgw.server", server.to_string()));
    span.set_attribute(KeyValue::new("mcpgw.outcome", outcome));
    span.set_attribute(KeyValue::new("mcpgw.project", principal.project_name.to_string()));
    if !matches!(outcome, "success" | "error")
        && let Some(note) = cx.get::<Arc<CallNote>>()
    {
        *note.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
    }
}

/// A child span of the current request for one step of the gateway's own work (the policy
/// decision, a guardrail stage); nothing when spans are not recorded.
pub(crate) struct Stage {
    span: Option<opentelemetry_sdk::trace::Span>,
}

impl Stage {
    pub(crate) fn start(name: &'static str, attributes: impl FnOnce() -> Vec<KeyValue>) -> Stage {
        let Some(tracer) = TRACER.get() else { return Stage { span: None } };
        let mut span =
            tracer.build_with_context(SpanBuilder::from_name(name).with_kind(SpanKind::Internal), &Context::current());
        if !span.is_recording() {
            return Stage { span: None };
        }
        span.set_attributes(attributes());
        Stage { span: Some(span) }
    }

    /// Ends the span with the detectors that found something (names only, never what they
    /// matched) and what was done: `passed`, `warned` or `blocked`.
    pub(crate) fn guardrail(&mut self, findings: &[guardrails::Finding], blocked: bool) {
        let Some(mut span) = self.span.take() else { return };
        let detectors: std::collections::BTreeSet<&str> = findings.iter().map(|f| f.detector).collect();
        let action = if blocked {
            "blocked"
        } else if detectors.is_empty() {
            "passed"
        } else {
            "warned"
        };
        let names: Vec<StringValue> = detectors.into_iter().map(|d| StringValue::from(d.to_string())).collect();
        span.set_attribute(KeyValue::new("mcpgw.guardrail.detectors", Value::Array(names.into())));
        span.set_attribute(KeyValue::new("mcpgw.guardrail.action", action));
        if blocked {
            span.set_attribute(KeyValue::new("error.type", "blocked"));
            span.set_status(Status::error("blocked by the gateway's guardrails"));
        }
        span.end();
    }

    /// Ends the span with a decision (`allowed`, `denied`, `held`).
    pub(crate) fn decision(&mut self, decision: &'static str) {
        let Some(mut span) = self.span.take() else { return };
        span.set_attribute(KeyValue::new("mcpgw.decision", decision));
        if decision != "allowed" {
            span.set_attribute(KeyValue::new("error.type", decision));
            span.set_status(Status::error(format!("the call was {decision}")));
        }
        span.end();
    }
}

/// What a request to an upstream is about, under the upstream's names.
#[derive(Clone, Copy)]
pub(crate) enum Target<'a> {
    Tool(&'a str),
    Prompt(&'a str),
    Resource(&'a str),
}

/// The client span of a request to an upstream; its context goes to the upstream in `_meta`.
pub(crate) struct UpstreamCall {
    span: Option<opentelemetry_sdk::trace::Span>,
}

impl UpstreamCall {
    /// Starts the span and writes its context into `meta` (also when the sampler drops it: the
    /// upstream then learns the trace is not sampled).
    pub(crate) fn start(
        spec: &shared::server::ServerSpec,
        target: Target<'_>,
        meta: &mut Option<RequestMetaObject>,
    ) -> UpstreamCall {
        let Some(tracer) = TRACER.get() else { return UpstreamCall { span: None } };
        let (method, name) = match target {
            Target::Tool(tool) => ("tools/call", format!("tools/call {tool}")),
            Target::Prompt(prompt) => ("prompts/get", format!("prompts/get {prompt}")),
            // A URI is no span name (too many of them): it is an attribute.
            Target::Resource(_) => ("resources/read", "resources/read".to_string()),
        };
        let builder = SpanBuilder::from_name(name).with_kind(SpanKind::Client);
        let parent = Context::current();
        let mut span = tracer.build_with_context(builder, &parent);
        let cx = parent.with_remote_span_context(span.span_context().clone());
        TraceContextPropagator::new().inject_context(&cx, &mut MetaInjector(meta.get_or_insert_with(Default::default)));
        if !span.is_recording() {
            return UpstreamCall { span: None };
        }
        let mut attributes =
            vec![KeyValue::new("mcp.method.name", method), KeyValue::new("mcpgw.server", spec.server_name.clone())];
        match target {
            Target::Tool(tool) => {
                attributes.push(KeyValue::new("gen_ai.tool.name", tool.to_string()));
                attributes.push(KeyValue::new("gen_ai.operation.name", "execute_tool"));
            }
            Target::Prompt(prompt) => attributes.push(KeyValue::new("gen_ai.prompt.name", prompt.to_string())),
            Target::Resource(uri) => attributes.push(KeyValue::new("mcp.resource.uri", uri.to_string())),
        }
        match &spec.config {
            shared::server::Transport::Http { url, .. } => {
                attributes.push(KeyValue::new("network.transport", "tcp"));
                attributes.push(KeyValue::new("network.protocol.name", "http"));
                if let Ok(u) = reqwest::Url::parse(url) {
                    if let Some(host) = u.host_str() {
                        attributes.push(KeyValue::new("server.address", host.to_string()));
                    }
                    if let Some(port) = u.port_or_known_default() {
                        attributes.push(KeyValue::new("server.port", i64::from(port)));
                    }
                }
            }
            shared::server::Transport::Stdio { .. } => attributes.push(KeyValue::new("network.transport", "pipe")),
        }
        span.set_attributes(attributes);
        UpstreamCall { span: Some(span) }
    }

    /// Ends the span; `error` is the failure's class when the call failed.
    pub(crate) fn end(mut self, error: Option<&'static str>) {
        let Some(mut span) = self.span.take() else { return };
        if let Some(kind) = error {
            span.set_attribute(KeyValue::new("error.type", kind));
            span.set_status(Status::error(format!("upstream call failed: {kind}")));
        }
        span.end();
    }
}

/// An HTTP client for upstreams that sends the context of each request (as the gateway wrote it
/// into `params._meta`) in the `traceparent`/`tracestate` headers too.
#[derive(Clone)]
pub(crate) struct TraceHeaders<C>(pub C, pub Option<Arc<crate::upstream::http_call::SessionTap>>);

/// The trace context an outgoing message carries in `_meta`.
fn outgoing_context(message: &ClientJsonRpcMessage) -> Option<(String, Option<String>)> {
    let JsonRpcMessage::Request(r) = message else { return None };
    let typed = match &r.request {
        ClientRequest::CallToolRequest(c) => c.params.meta(),
        ClientRequest::GetPromptRequest(c) => c.params.meta(),
        ClientRequest::ReadResourceRequest(c) => c.params.meta(),
        _ => None,
    };
    let meta = typed.filter(|m| m.get_traceparent().is_some()).unwrap_or_else(|| r.request.get_meta());
    context_of(meta)
}

/// The trace context `meta` carries: `traceparent` and `tracestate`.
fn context_of(meta: &RequestMetaObject) -> Option<(String, Option<String>)> {
    meta.get_traceparent().map(|tp| (tp.to_string(), meta.get_tracestate().map(str::to_string)))
}

fn with_trace_headers(
    message: &ClientJsonRpcMessage,
    headers: HashMap<HeaderName, HeaderValue>,
) -> HashMap<HeaderName, HeaderValue> {
    with_context_headers(outgoing_context(message), headers)
}

/// The trace context a call's `params._meta` carries, as headers too.
pub(crate) fn with_meta_trace_headers(
    meta: Option<&RequestMetaObject>,
    headers: HashMap<HeaderName, HeaderValue>,
) -> HashMap<HeaderName, HeaderValue> {
    with_context_headers(meta.and_then(context_of), headers)
}

fn with_context_headers(
    context: Option<(String, Option<String>)>,
    mut headers: HashMap<HeaderName, HeaderValue>,
) -> HashMap<HeaderName, HeaderValue> {
    if let Some((tp, ts)) = context {
        if let Ok(v) = HeaderValue::from_str(&tp) {
            headers.insert(HeaderName::from_static(TRACEPARENT), v);
        }
        if let Some(v) = ts.and_then(|ts| HeaderValue::from_str(&ts).ok()) {
            headers.insert(HeaderName::from_static(TRACESTATE), v);
        }
    }
    headers
}

impl<C: StreamableHttpClient + Sync> StreamableHttpClient for TraceHeaders<C> {
    type Error = C::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        if let Some(tap) = &self.1 {
            tap.record(&uri, session_id.as_ref(), auth_header.as_ref(), &custom_headers);
        }
        let headers = with_trace_headers(&message, custom_headers);
        self.0.post_message(uri, message, session_id, auth_header, headers).await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        if let Some(tap) = &self.1 {
            tap.record(&uri, session_id.as_ref(), auth_header.as_ref(), &custom_headers);
        }
        let headers = with_trace_headers(&message, custom_headers);
        self.0.post_message_with_response_limits(uri, message, session_id, auth_header, headers, limits).await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        self.0.delete_session(uri, session_id, auth_header, custom_headers).await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<sse_stream::Sse, SseError>>, StreamableHttpError<Self::Error>> {
        self.0.get_stream(uri, session_id, last_event_id, auth_header, custom_headers).await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<sse_stream::Sse, SseError>>, StreamableHttpError<Self::Error>> {
        self.0
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}
