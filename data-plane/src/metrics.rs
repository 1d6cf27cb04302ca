//! Prometheus metrics, rendered in the text exposition format at `/metrics`.
//!
//! Counters are plain atomics or small labelled maps; recording a call takes one short lock.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the call latency histogram.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];

/// Upper bounds (seconds) of `mcp_server_operation_duration_seconds`, as the MCP semantic
/// conventions recommend.
const OPERATION_BUCKETS: [f64; 14] = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// One histogram of `mcp_server_operation_duration_seconds` (cumulative buckets).
#[derive(Default)]
struct Histogram {
    buckets: [u64; OPERATION_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// A sampled request a histogram bucket points to (OpenMetrics exemplar).
#[derive(Clone)]
struct Exemplar {
    trace_id: String,
    span_id: String,
    seconds: f64,
    at: f64,
}

impl Exemplar {
    fn new(trace_id: String, span_id: String, took: Duration) -> Self {
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        Exemplar { trace_id, span_id, seconds: took.as_secs_f64(), at }
    }

    fn suffix(&self) -> String {
        format!(" # {{trace_id=\"{}\",span_id=\"{}\"}} {} {:.3}", self.trace_id, self.span_id, self.seconds, self.at)
    }
}

/// The bucket of `bounds` a value falls in (`bounds.len()` for `+Inf`).
fn bucket_of(bounds: &[f64], secs: f64) -> usize {
    bounds.iter().position(|b| secs <= *b).unwrap_or(bounds.len())
}

/// The bucket a `le` label value names.
fn bucket_named(bounds: &[f64], le: &str) -> Option<usize> {
    if le == "+Inf" {
        return Some(bounds.len());
    }
    bounds.iter().position(|b| b.to_string() == le)
}

/// (project, server, tool, outcome)
type CallLabels = (String, String, String, &'static str);
/// (server, stage, detector, action)
type GuardrailLabels = (String, &'static str, String, &'static str);

#[derive(Default)]
pub struct Metrics {
    calls: Mutex<BTreeMap<CallLabels, u64>>,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    auth_failures: Mutex<BTreeMap<&'static str, u64>>,
    session_refusals: Mutex<BTreeMap<&'static str, u64>>,
    guardrails: Mutex<BTreeMap<GuardrailLabels, u64>>,
    /// (project, limit kind)
    rate_limited: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Calls counted by this replica alone because Redis did not answer.
    pub rate_limit_fallbacks: AtomicU64,
    /// By MCP method (a small, fixed set of names).
    operations: Mutex<BTreeMap<String, Histogram>>,
    /// The latest sampled call per bucket of the tool-call histogram, and per method and bucket of
    /// the operation histogram.
    call_exemplars: Mutex<BTreeMap<usize, Exemplar>>,
    operation_exemplars: Mutex<BTreeMap<(String, usize), Exemplar>>,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    pub snapshot_revision: AtomicU64,
    pub upstream_processes: AtomicI64,
    pub upstream_restarts: AtomicU64,
    pub active_sessions: AtomicI64,
}

impl Metrics {
    pub fn record_call(&self, project: &str, server: &str, tool: &str, outcome: &'static str, took: Duration) {
        {
            let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            *calls.entry((project.to_string(), server.to_string(), tool.to_string(), outcome)).or_default() += 1;
        }
        let secs = took.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.latency_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_micros.fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// A guardrail or integrity event: stage `input`, `output` or `integrity`; action `blocked`,
    /// `warned`, `redacted`, `hidden` or `server_blocked`.
    pub fn record_guardrail(&self, server: &str, stage: &'static str, detector: &str, action: &'static str) {
        let mut map = self.guardrails.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((server.to_string(), stage, detector.to_string(), action)).or_default() += 1;
    }

    /// One MCP request served (any method), for `mcp_server_operation_duration_seconds`.
    pub fn record_operation(&self, method: &str, took: Duration) {
        let secs = took.as_secs_f64();
        let mut map = self.operations.lock().unwrap_or_else(|e| e.into_inner());
        let h = match map.get_mut(method) {
            Some(h) => h,
            None => map.entry(method.to_string()).or_default(),
        };
        for (i, bound) in OPERATION_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// A sampled tool call's trace, as the exemplar of its latency bucket.
    pub fn record_call_exemplar(&self, took: Duration, trace_id: String, span_id: String) {
        let bucket = bucket_of(&BUCKETS, took.as_secs_f64());
        self.call_exemplars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(bucket, Exemplar::new(trace_id, span_id, took));
    }

    /// A sampled request's trace, as the exemplar of its method's duration bucket.
    pub fn record_operation_exemplar(&self, method: &str, took: Duration, trace_id: String, span_id: String) {
        let bucket = bucket_of(&OPERATION_BUCKETS, took.as_secs_f64());
        let exemplar = Exemplar::new(trace_id, span_id, took);
        self.operation_exemplars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((method.to_string(), bucket), exemplar);
    }

    /// The metrics in the OpenMetrics text format (what Prometheus asks for to get exemplars): the
    /// same series, counter families named without `_total`, exemplars with the trace ids of
    /// sampled requests on the latency buckets, and the closing `# EOF`.
    pub fn render_openmetrics(&self) -> String {
        let text = self.render();
        let counters: std::collections::HashSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")?.strip_suffix("_total"))
            .collect();
        let calls = self.call_exemplars.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let operations = self.operation_exemplars.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out = String::with_capacity(text.len() + 1024);
        for line in text.lines() {
            let meta = line
                .strip_prefix("# TYPE ")
                .map(|r| ("# TYPE ", r))
                .or(line.strip_prefix("# HELP ").map(|r| ("# HELP ", r)));
            if let Some((kind, rest)) = meta {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                match name.strip_suffix("_total").filter(|family| counters.contains(family)) {
                    Some(family) => {
                        let _ = writeln!(out, "{kind}{family} {tail}");
                    }
                    None => {
                        let _ = writeln!(out, "{line}");
                    }
                }
                continue;
            }
            let le = |l: &str| l.split("le=\"").nth(1).and_then(|r| r.split('"').next()).map(str::to_string);
            let exemplar = if line.starts_with("mcpgw_tool_call_duration_seconds_bucket{") {
                le(line).and_then(|le| bucket_named(&BUCKETS, &le)).and_then(|b| calls.get(&b))
            } else if let Some(rest) =
                line.strip_prefix("mcp_server_operation_duration_seconds_bucket{mcp_method_name=\"")
            {
                let method = rest.split('"').next().unwrap_or_default().to_string();
                le(line).and_then(|le| bucket_named(&OPERATION_BUCKETS, &le)).and_then(|b| operations.get(&(method, b)))
            } else {
                None
            };
            match exemplar {
                Some(e) => {
                    let _ = writeln!(out, "{line}{}", e.suffix());
                }
                None => {
                    let _ = writeln!(out, "{line}");
                }
            }
        }
        out.push_str("# EOF\n");
        out
    }

    pub fn record_auth_failure(&self, reason: &'static str) {
        *self.auth_failures.lock().unwrap_or_else(|e| e.into_inner()).entry(reason).or_default() += 1;
    }

    /// A new session refused for a limit (`per_key_limit`, `total_limit`).
    pub fn record_session_refusal(&self, reason: &'static str) {
        *self.session_refusals.lock().unwrap_or_else(|e| e.into_inner()).entry(reason).or_default() += 1;
    }

    /// A tool call refused by a rate limit of kind `limit` (`project`, `key`, `server`, `tool`).
    pub fn record_rate_limited(&self, project: &str, limit: &'static str) {
        let mut map = self.rate_limited.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((project.to_string(), limit)).or_default() += 1;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ =
            writeln!(out, "# HELP mcpgw_rate_limited_total Tool calls refused by a rate limit, by project and limit.");
        let _ = writeln!(out, "# TYPE mcpgw_rate_limited_total counter");
        for ((project, limit), n) in self.rate_limited.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "mcpgw_rate_limited_total{{project=\"{}\",limit=\"{limit}\"}} {n}", escape(project));
        }
        let _ = writeln!(out, "# HELP mcpgw_tool_calls_total Tool calls by project, server, tool and outcome.");
        let _ = writeln!(out, "# TYPE mcpgw_tool_calls_total counter");
        for ((project, server, tool, outcome), n) in self.calls.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(
                out,
                "mcpgw_tool_calls_total{{project=\"{}\",server=\"{}\",tool=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape(project),
                escape(server),
                escape(tool)
            );
        }
        let _ = writeln!(out, "# HELP mcpgw_tool_call_duration_seconds Tool call latency through the gateway.");
        let _ = writeln!(out, "# TYPE mcpgw_tool_call_duration_seconds histogram");
        for (i, bound) in BUCKETS.iter().enumerate() {
            let n = self.latency_buckets[i].load(Relaxed);
            let _ = writeln!(out, "mcpgw_tool_call_duration_seconds_bucket{{le=\"{bound}\"}} {n}");
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(out, "mcpgw_tool_call_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.latency_sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "mcpgw_tool_call_duration_seconds_sum {sum}");
        let _ = writeln!(out, "mcpgw_tool_call_duration_seconds_count {count}");
        let _ = writeln!(
            out,
            "# HELP mcp_server_operation_duration_seconds MCP requests served, by method (OpenTelemetry's mcp.server.operation.duration)."
        );
        let _ = writeln!(out, "# TYPE mcp_server_operation_duration_seconds histogram");
        for (method, h) in self.operations.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let method = escape(method);
            for (i, bound) in OPERATION_BUCKETS.iter().enumerate() {
                let n = h.buckets[i];
                let _ = writeln!(
                    out,
                    "mcp_server_operation_duration_seconds_bucket{{mcp_method_name=\"{method}\",le=\"{bound}\"}} {n}"
                );
            }
            let count = h.count;
            let _ = writeln!(
                out,
                "mcp_server_operation_duration_seconds_bucket{{mcp_method_name=\"{method}\",le=\"+Inf\"}} {count}"
            );
            let _ =
                writeln!(out, "mcp_server_operation_duration_seconds_sum{{mcp_method_name=\"{method}\"}} {}", h.sum);
            let _ =
                writeln!(out, "mcp_server_operation_duration_seconds_count{{mcp_method_name=\"{method}\"}} {count}");
        }
        let _ = writeln!(out, "# HELP mcpgw_auth_failures_total Refused client requests by reason.");
        let _ = writeln!(out, "# TYPE mcpgw_auth_failures_total counter");
        for (reason, n) in self.auth_failures.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "mcpgw_auth_failures_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP mcpgw_sessions_refused_total New MCP sessions refused by limit.");
        let _ = writeln!(out, "# TYPE mcpgw_sessions_refused_total counter");
        for (reason, n) in self.session_refusals.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "mcpgw_sessions_refused_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP mcpgw_guardrail_events_total Guardrail and tool-integrity findings by server, stage, detector and action."
        );
        let _ = writeln!(out, "# TYPE mcpgw_guardrail_events_total counter");
        for ((server, stage, detector, action), n) in self.guardrails.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(
                out,
                "mcpgw_guardrail_events_total{{server=\"{}\",stage=\"{stage}\",detector=\"{}\",action=\"{action}\"}} {n}",
                escape(server),
                escape(detector)
            );
        }
        let scalars: [(&str, &str, &str, i64); 7] = [
            (
                "mcpgw_rate_limit_fallbacks_total",
                "counter",
                "Rate-limit checks this replica counted alone because Redis did not answer.",
                self.rate_limit_fallbacks.load(Relaxed) as i64,
            ),
            ("mcpgw_reloads_total", "counter", "Snapshots loaded.", self.reloads.load(Relaxed) as i64),
            (
                "mcpgw_reload_failures_total",
                "counter",
                "Snapshots refused (invalid or older); the last good one kept serving.",
                self.reload_failures.load(Relaxed) as i64,
            ),
            (
                "mcpgw_snapshot_revision",
                "gauge",
                "Revision of the snapshot being served.",
                self.snapshot_revision.load(Relaxed) as i64,
            ),
            (
                "mcpgw_upstream_processes",
                "gauge",
                "Running upstream stdio processes.",
                self.upstream_processes.load(Relaxed),
            ),
            (
                "mcpgw_upstream_restarts_total",
                "counter",
                "Upstream connections re-established after a failure.",
                self.upstream_restarts.load(Relaxed) as i64,
            ),
            ("mcpgw_active_sessions", "gauge", "Open MCP client sessions.", self.active_sessions.load(Relaxed)),
        ];
        for (name, kind, help, value) in scalars {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        crate::telemetry::render_metrics(&mut out);
        out
    }
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_counters_and_histogram() {
        let m = super::Metrics::default();
        m.record_call("p", "s", "t\"x", "success", std::time::Duration::from_millis(3));
        m.record_auth_failure("invalid");
        let text = m.render();
        assert!(text.contains(r#"mcpgw_tool_calls_total{project="p",server="s",tool="t\"x",outcome="success"} 1"#));
        assert!(text.contains(r#"mcpgw_tool_call_duration_seconds_bucket{le="0.005"} 1"#));
        assert!(text.contains(r#"mcpgw_tool_call_duration_seconds_bucket{le="0.0025"} 0"#));
        assert!(text.contains(r#"mcpgw_auth_failures_total{reason="invalid"} 1"#));
    }

    #[test]
    fn openmetrics_names_counter_families_and_carries_exemplars() {
        let m = super::Metrics::default();
        let took = std::time::Duration::from_millis(3);
        m.record_call("p", "s", "t", "success", took);
        m.record_call_exemplar(took, "0af7651916cd43dd8448eb211c80319c".into(), "b7ad6b7169203331".into());
        m.record_operation("tools/call", took);
        m.record_operation_exemplar(
            "tools/call",
            took,
            "0af7651916cd43dd8448eb211c80319c".into(),
            "00f067aa0ba902b7".into(),
        );
        let text = m.render_openmetrics();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.last(), Some(&"# EOF"));
        assert!(lines.contains(&"# TYPE mcpgw_tool_calls counter"), "{text}");
        assert!(lines.contains(&"# TYPE mcpgw_tool_call_duration_seconds histogram"));
        assert!(lines.contains(&r#"mcpgw_tool_calls_total{project="p",server="s",tool="t",outcome="success"} 1"#));
        let bucket = lines.iter().find(|l| l.starts_with(r#"mcpgw_tool_call_duration_seconds_bucket{le="0.005"} 1 # {trace_id="0af7651916cd43dd8448eb211c80319c",span_id="b7ad6b7169203331"} 0.003 "#));
        assert!(bucket.is_some(), "{text}");
        // Only the bucket the value fell in.
        assert!(lines.contains(&r#"mcpgw_tool_call_duration_seconds_bucket{le="0.01"} 1"#));
        assert!(text.contains(r#"mcp_server_operation_duration_seconds_bucket{mcp_method_name="tools/call",le="0.01"} 1 # {trace_id="0af7651916cd43dd8448eb211c80319c",span_id="00f067aa0ba902b7"}"#), "{text}");
        // The classic format carries no exemplars.
        assert!(!m.render().contains("trace_id"));
    }

    #[test]
    fn renders_the_operation_duration_by_method() {
        let m = super::Metrics::default();
        m.record_operation("tools/call", std::time::Duration::from_millis(30));
        m.record_operation("tools/call", std::time::Duration::from_millis(3));
        m.record_operation("initialize", std::time::Duration::from_secs(2));
        let text = m.render();
        let line = |l: &str| text.lines().any(|x| x == l);
        assert!(
            line(r#"mcp_server_operation_duration_seconds_bucket{mcp_method_name="tools/call",le="0.01"} 1"#),
            "{text}"
        );
        assert!(line(r#"mcp_server_operation_duration_seconds_bucket{mcp_method_name="tools/call",le="0.05"} 2"#));
        assert!(line(r#"mcp_server_operation_duration_seconds_bucket{mcp_method_name="tools/call",le="+Inf"} 2"#));
        assert!(line(r#"mcp_server_operation_duration_seconds_count{mcp_method_name="initialize"} 1"#));
        assert!(line(r#"mcp_server_operation_duration_seconds_bucket{mcp_method_name="initialize",le="1"} 0"#));
        assert!(line(r#"mcpgw_otel_spans_dropped_total{reason="queue_full"} 0"#));
    }
}
