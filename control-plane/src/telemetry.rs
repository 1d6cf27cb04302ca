//! OpenTelemetry traces of the admin API, exported over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the same settings as the data plane; `service.name`
//! defaults to `mcpgw-control-plane`): a server span per request named `{method} {route}`, a
//! caller's `traceparent` as its parent, and a span per snapshot publication. Paths are recorded
//! as their route (`/api/v1/users/{user}`), never with the identifiers and e-mails they carry.

use std::sync::OnceLock;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderMap;
use actix_web::middleware::Next;
use opentelemetry::context::FutureExt as _;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanBuilder, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;
use shared::otel::{Counters, Otel, OtelError, Wanted};

static TRACER: OnceLock<SdkTracer> = OnceLock::new();
static SPANS: Counters = Counters::new();

/// Running trace export of the control plane.
pub struct Telemetry(Otel);

impl Telemetry {
    /// Starts export as the environment asks (inside a Tokio runtime); `None` when it asks for none.
    pub fn start() -> Result<Option<Telemetry>, OtelError> {
        if TRACER.get().is_some() {
            return Ok(None);
        }
        let wanted = Wanted { service: "mcpgw-control-plane", scope: "mcpgw.control_plane", spans: &SPANS, logs: None };
        let Some(mut otel) = Otel::start(wanted)? else { return Ok(None) };
        if let Some(tracer) = otel.tracer.take() {
            let _ = TRACER.set(tracer);
        }
        Ok(Some(Telemetry(otel)))
    }

    /// Sends what is queued (for at most a few seconds), then stops.
    pub async fn shutdown(self) {
        self.0.shutdown().await
    }
}

/// Checks the OTLP settings without starting anything.
pub fn check_settings() -> Result<(), OtelError> {
    shared::otel::check_settings(false)
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Middleware: a server span around each request (nothing when traces are off).
pub async fn trace_request(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let Some(tracer) = TRACER.get() else { return next.call(req).await };
    let parent = TraceContextPropagator::new().extract(&Headers(req.headers()));
    let method = req.method().to_string();
    let route = req.match_pattern();
    let mut attributes =
        vec![KeyValue::new("http.request.method", method.clone()), KeyValue::new("network.protocol.name", "http")];
    let name = match &route {
        Some(route) => {
            attributes.push(KeyValue::new("http.route", route.clone()));
            format!("{method} {route}")
        }
        None => method,
    };
    let builder = SpanBuilder::from_name(name).with_kind(SpanKind::Server).with_attributes(attributes);
    let cx = parent.with_span(tracer.build_with_context(builder, &parent));
    let result = next.call(req).with_context(cx.clone()).await;
    let span = cx.span();
    let status = match &result {
        Ok(response) => response.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
    // Refused requests (4xx) are the client's doing; only the server's failures are errors.
    if status.is_server_error() {
        span.set_attribute(KeyValue::new("error.type", status.as_u16().to_string()));
        span.set_status(Status::error(status.to_string()));
    }
    span.end();
    result
}

/// The requests whose changes the next publication carries (bounded: a publication links to at
/// most this many).
static COMMITTED: std::sync::Mutex<Vec<opentelemetry::trace::SpanContext>> = std::sync::Mutex::new(Vec::new());
const MAX_LINKS: usize = 32;

/// Notes that the current request committed a change, so that the publication links to it.
pub(crate) fn committed() {
    if TRACER.get().is_none() {
        return;
    }
    let cx = Context::current();
    let span = cx.span();
    let sc = span.span_context();
    if sc.is_valid() {
        let mut pending = COMMITTED.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() < MAX_LINKS {
            pending.push(sc.clone());
        }
    }
}

/// The span of one snapshot publication (linked to the requests that made its changes); nothing
/// when traces are off.
pub(crate) struct Publishing(Option<opentelemetry_sdk::trace::Span>);

impl Publishing {
    pub(crate) fn start() -> Publishing {
        let Some(tracer) = TRACER.get() else { return Publishing(None) };
        let links = std::mem::take(&mut *COMMITTED.lock().unwrap_or_else(|e| e.into_inner()));
        let links = links.into_iter().map(opentelemetry::trace::Link::with_context).collect();
        let builder = SpanBuilder::from_name("publish snapshot").with_kind(SpanKind::Internal).with_links(links);
        Publishing(Some(tracer.build_with_context(builder, &Context::new())))
    }

    /// Ends the span with the revision published, or why it failed.
    pub(crate) fn end(self, result: Result<u64, &anyhow::Error>) {
        let Some(mut span) = self.0 else { return };
        match result {
            Ok(revision) => span.set_attribute(KeyValue::new("mcpgw.revision", revision as i64)),
            Err(e) => {
                span.set_attribute(KeyValue::new("error.type", "publish_failed"));
                span.set_status(Status::error(e.to_string()));
            }
        }
        span.end();
    }
}
