//! OTLP export both planes share: the standard `OTEL_*` settings, the resource, and a bounded queue
//! per signal that a background task sends in batches over OTLP/HTTP (protobuf) or gRPC. Export never
//! slows the caller: what does not fit in the queue, or cannot be sent, is dropped and counted.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use opentelemetry::logs::LoggerProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _, LogProcessor, SdkLogRecord, SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What one signal's export did: sent, or dropped and why.
pub struct Counters {
    exported: AtomicU64,
    queue_full: AtomicU64,
    export_failed: AtomicU64,
}

impl Counters {
    pub const fn new() -> Self {
        Counters { exported: AtomicU64::new(0), queue_full: AtomicU64::new(0), export_failed: AtomicU64::new(0) }
    }

    /// The counters in the Prometheus text format, as `{name}_exported_total` and
    /// `{name}_dropped_total{reason}`.
    pub fn render(&self, out: &mut String, name: &str, what: &str) {
        let _ = writeln!(out, "# HELP {name}_exported_total {what} sent to the OTLP endpoint.");
        let _ = writeln!(out, "# TYPE {name}_exported_total counter");
        let _ = writeln!(out, "{name}_exported_total {}", self.exported.load(Relaxed));
        let _ = writeln!(
            out,
            "# HELP {name}_dropped_total {what} dropped: the export queue was full, or the endpoint failed."
        );
        let _ = writeln!(out, "# TYPE {name}_dropped_total counter");
        let _ = writeln!(out, "{name}_dropped_total{{reason=\"queue_full\"}} {}", self.queue_full.load(Relaxed));
        let _ = writeln!(out, "{name}_dropped_total{{reason=\"export_failed\"}} {}", self.export_failed.load(Relaxed));
    }
}

impl Default for Counters {
    fn default() -> Self {
        Self::new()
    }
}

/// Why export cannot start as configured.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error(
        "{0}={1} is not supported: mcpgw exports OTLP as `http/protobuf` (a collector's port 4318) or `grpc` (port 4317)"
    )]
    Protocol(&'static str, String),
    #[error(
        "{0} must be an `http://` endpoint for `grpc`: OTLP over gRPC is sent without TLS; use `http/protobuf` for an `https://` collector"
    )]
    GrpcTls(&'static str),
    #[error("{0} must be a positive integer")]
    Number(&'static str),
    #[error("the OTLP {0} exporter: {1}")]
    Exporter(&'static str, String),
}

/// One OTLP signal and the standard variables that configure it.
#[derive(Clone, Copy)]
struct Signal {
    name: &'static str,
    endpoint: &'static str,
    protocol: &'static str,
    exporter: &'static str,
    queue: &'static str,
    batch: &'static str,
    delay: &'static str,
    timeout: &'static str,
    default_delay_ms: u64,
}

const TRACES: Signal = Signal {
    name: "trace",
    endpoint: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    protocol: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    exporter: "OTEL_TRACES_EXPORTER",
    queue: "OTEL_BSP_MAX_QUEUE_SIZE",
    batch: "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    delay: "OTEL_BSP_SCHEDULE_DELAY",
    timeout: "OTEL_BSP_EXPORT_TIMEOUT",
    default_delay_ms: 5000,
};

const LOGS: Signal = Signal {
    name: "log",
    endpoint: "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    protocol: "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
    exporter: "OTEL_LOGS_EXPORTER",
    queue: "OTEL_BLRP_MAX_QUEUE_SIZE",
    batch: "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE",
    delay: "OTEL_BLRP_SCHEDULE_DELAY",
    timeout: "OTEL_BLRP_EXPORT_TIMEOUT",
    default_delay_ms: 1000,
};

/// How a signal is sent to the collector.
#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    HttpProtobuf,
    Grpc,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::Grpc => "grpc",
        }
    }
}

/// A signal's batching: the bounded queue, batch size, delay and export timeout.
#[derive(Clone, Copy)]
struct ExportSettings {
    queue: usize,
    batch: usize,
    delay: Duration,
    timeout: Duration,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

fn env_number(name: &'static str, default: u64) -> Result<u64, OtelError> {
    match env(name) {
        None => Ok(default),
        Some(v) => v.parse().ok().filter(|n| *n > 0).ok_or(OtelError::Number(name)),
    }
}

impl Signal {
    /// Whether the environment asks for this signal to be exported.
    fn requested(&self) -> bool {
        let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || env(self.exporter).is_some_and(|v| v.eq_ignore_ascii_case("none"));
        !disabled && (env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() || env(self.endpoint).is_some())
    }

    fn check(&self) -> Result<(), OtelError> {
        if !self.requested() {
            return Ok(());
        }
        self.transport()?;
        self.settings().map(|_| ())
    }

    /// The protocol the environment asks for (the signal's own setting first), `http/protobuf` by default.
    fn protocol(&self) -> Result<Protocol, OtelError> {
        let Some((name, p)) =
            [self.protocol, "OTEL_EXPORTER_OTLP_PROTOCOL"].into_iter().find_map(|n| Some((n, env(n)?)))
        else {
            return Ok(Protocol::HttpProtobuf);
        };
        match p.as_str() {
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "grpc" => Ok(Protocol::Grpc),
            _ => Err(OtelError::Protocol(name, p)),
        }
    }

    /// The protocol, checked against the endpoint: the gRPC client is built without TLS, so an
    /// endpoint it would reach over TLS (`https://`, or no scheme) is refused rather than failing
    /// every export later.
    fn transport(&self) -> Result<Protocol, OtelError> {
        let protocol = self.protocol()?;
        if protocol == Protocol::Grpc {
            let name = [self.endpoint, "OTEL_EXPORTER_OTLP_ENDPOINT"].into_iter().find(|n| env(n).is_some());
            if let Some(name) = name
                && !env(name).is_some_and(|e| e.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("http://")))
            {
                return Err(OtelError::GrpcTls(name));
            }
        }
        Ok(protocol)
    }

    fn settings(&self) -> Result<ExportSettings, OtelError> {
        let queue = env_number(self.queue, 2048)? as usize;
        Ok(ExportSettings {
            queue,
            batch: (env_number(self.batch, 512)? as usize).min(queue),
            delay: Duration::from_millis(env_number(self.delay, self.default_delay_ms)?),
            timeout: Duration::from_millis(env_number(self.timeout, 30000)?),
        })
    }
}

/// Checks the settings without starting anything (a bad one stops the process before it listens);
/// `logs` says whether this process exports logs at all.
pub fn check_settings(logs: bool) -> Result<(), OtelError> {
    TRACES.check()?;
    if logs { LOGS.check() } else { Ok(()) }
}

/// The resource: `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME`, with `service` as the default name.
fn resource(service: &'static str) -> Resource {
    let named = env("OTEL_SERVICE_NAME").is_some()
        || env("OTEL_RESOURCE_ATTRIBUTES")
            .is_some_and(|a| a.split(',').any(|kv| kv.trim().starts_with("service.name=")));
    let builder = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attribute(KeyValue::new("service.namespace", "mcpgw"));
    if named { builder.build() } else { builder.with_service_name(service).build() }
}

/// What a process exports, and where it counts what it sent and dropped.
pub struct Wanted {
    /// `service.name` unless the environment names one.
    pub service: &'static str,
    /// The tracer's instrumentation scope.
    pub scope: &'static str,
    pub spans: &'static Counters,
    /// Logs too (with this logger scope and counters), when the environment does not turn them off.
    pub logs: Option<(&'static str, &'static Counters)>,
}

/// Running OTLP export; [`Otel::shutdown`] sends what is queued.
pub struct Otel {
    pub tracer: Option<SdkTracer>,
    pub logger: Option<SdkLogger>,
    tracer_provider: Option<SdkTracerProvider>,
    logger_provider: Option<SdkLoggerProvider>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Otel {
    /// Starts export as the environment asks (inside a Tokio runtime); `None` when it asks for
    /// nothing. The sampler comes from `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`.
    pub fn start(wanted: Wanted) -> Result<Option<Otel>, OtelError> {
        check_settings(wanted.logs.is_some())?;
        let traces = TRACES.requested();
        let logs = wanted.logs.filter(|_| LOGS.requested());
        if !traces && logs.is_none() {
            return Ok(None);
        }
        let resource = resource(wanted.service);
        // The exporters' HTTPS client uses rustls with ring, as the rest of mcpgw.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let stop = CancellationToken::new();
        let mut otel = Otel {
            tracer: None,
            logger: None,
            tracer_provider: None,
            logger_provider: None,
            stop: stop.clone(),
            tasks: Vec::new(),
        };
        if traces {
            let settings = TRACES.settings()?;
            let protocol = TRACES.transport()?;
            let builder = opentelemetry_otlp::SpanExporter::builder();
            let mut exporter = match protocol {
                Protocol::HttpProtobuf => builder.with_http().build(),
                Protocol::Grpc => builder.with_tonic().build(),
            }
            .map_err(|e| OtelError::Exporter("trace", e.to_string()))?;
            exporter.set_resource(&resource);
            let (queue, spans) = mpsc::channel(settings.queue);
            let (stop, counters) = (stop.clone(), wanted.spans);
            otel.tasks.push(tokio::spawn(async move {
                let send = |batch: Vec<SpanData>| {
                    let exporter = &exporter;
                    async move { exporter.export(batch).await.map_err(|e| e.to_string()) }
                };
                export_loop(spans, settings, stop, TRACES, counters, send).await
            }));
            let provider = SdkTracerProvider::builder()
                .with_span_processor(SpanQueue { queue, counters: wanted.spans })
                .with_resource(resource.clone())
                .build();
            otel.tracer = Some(provider.tracer(wanted.scope));
            otel.tracer_provider = Some(provider);
            tracing::info!(protocol = protocol.as_str(), "exporting traces over OTLP");
        }
        if let Some((scope, counters)) = logs {
            let settings = LOGS.settings()?;
            let protocol = LOGS.transport()?;
            let builder = opentelemetry_otlp::LogExporter::builder();
            let mut exporter = match protocol {
                Protocol::HttpProtobuf => builder.with_http().build(),
                Protocol::Grpc => builder.with_tonic().build(),
            }
            .map_err(|e| OtelError::Exporter("log", e.to_string()))?;
            exporter.set_resource(&resource);
            let (queue, records) = mpsc::channel(settings.queue);
            otel.tasks.push(tokio::spawn(async move {
                let send = |batch: Vec<(SdkLogRecord, InstrumentationScope)>| {
                    let exporter = &exporter;
                    async move {
                        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
                            batch.iter().map(|(r, s)| (r, s)).collect();
                        exporter.export(LogBatch::new(&refs)).await.map_err(|e| e.to_string())
                    }
                };
                export_loop(records, settings, stop, LOGS, counters, send).await
            }));
            let provider = SdkLoggerProvider::builder()
                .with_log_processor(LogQueue { queue, counters })
                .with_resource(resource)
                .build();
            otel.logger = Some(provider.logger(scope));
            otel.logger_provider = Some(provider);
            tracing::info!(protocol = protocol.as_str(), "exporting logs over OTLP");
        }
        Ok(Some(otel))
    }

    /// Sends what is queued (for at most a few seconds), then stops.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            for task in self.tasks {
                let _ = task.await;
            }
        })
        .await;
        if let Some(p) = self.tracer_provider {
            let _ = p.shutdown();
        }
        if let Some(p) = self.logger_provider {
            let _ = p.shutdown();
        }
    }
}

/// The span processor: finished spans go into the bounded queue, never waiting for room.
#[derive(Debug)]
struct SpanQueue {
    queue: mpsc::Sender<SpanData>,
    counters: &'static Counters,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counters")
    }
}

impl SpanProcessor for SpanQueue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            self.counters.queue_full.fetch_add(1, Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The log processor: the same bounded queue for log records.
#[derive(Debug)]
struct LogQueue {
    queue: mpsc::Sender<(SdkLogRecord, InstrumentationScope)>,
    counters: &'static Counters,
}

impl LogProcessor for LogQueue {
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        if self.queue.try_send((record.clone(), scope.clone())).is_err() {
            self.counters.queue_full.fetch_add(1, Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
}

/// Sends queued items in batches: when a batch is full or `delay` after its first item.
async fn export_loop<T, F, Fut>(
    mut items: mpsc::Receiver<T>,
    settings: ExportSettings,
    stop: CancellationToken,
    signal: Signal,
    counters: &'static Counters,
    export: F,
) where
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let failing = AtomicBool::new(false);
    let send = async |batch: Vec<T>| {
        let n = batch.len() as u64;
        match tokio::time::timeout(settings.timeout, export(batch)).await {
            Ok(Ok(())) => {
                counters.exported.fetch_add(n, Relaxed);
                if failing.swap(false, Relaxed) {
                    tracing::info!(signal = signal.name, "OTLP export works again");
                }
            }
            failed => {
                counters.export_failed.fetch_add(n, Relaxed);
                // Once per failing streak, not once per batch.
                if !failing.swap(true, Relaxed) {
                    let error = match failed {
                        Ok(Err(e)) => e,
                        _ => format!("no answer within {} ms", settings.timeout.as_millis()),
                    };
                    tracing::warn!(
                        signal = signal.name,
                        %error,
                        "OTLP export failed; records are dropped (and counted) until it works"
                    );
                }
            }
        }
    };
    let mut batch = Vec::with_capacity(settings.batch);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            n = items.recv_many(&mut batch, settings.batch) => if n == 0 { break },
        }
        let deadline = tokio::time::sleep(settings.delay);
        tokio::pin!(deadline);
        while batch.len() < settings.batch {
            let room = settings.batch - batch.len();
            tokio::select! {
                _ = &mut deadline => break,
                _ = stop.cancelled() => break,
                n = items.recv_many(&mut batch, room) => if n == 0 { break },
            }
        }
        send(std::mem::replace(&mut batch, Vec::with_capacity(settings.batch))).await;
    }
    // Stopping: what is queued now, once.
    while let Ok(item) = items.try_recv() {
        batch.push(item);
        if batch.len() == settings.batch {
            send(std::mem::take(&mut batch)).await;
        }
    }
    if !batch.is_empty() {
        send(batch).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_render_both_reasons() {
        let c = super::Counters::new();
        c.queue_full.fetch_add(2, super::Relaxed);
        let mut out = String::new();
        c.render(&mut out, "x_spans", "Spans");
        assert!(out.contains("x_spans_exported_total 0\n"), "{out}");
        assert!(out.contains("x_spans_dropped_total{reason=\"queue_full\"} 2\n"), "{out}");
        assert!(out.contains("x_spans_dropped_total{reason=\"export_failed\"} 0\n"), "{out}");
    }
}
