//! The record stage: every call, whatever its outcome, counted in the metrics and written to the
//! audit log.

use std::time::Instant;

use rmcp::model::{CallToolRequestParams, CallToolResponse, JsonObject};

use super::{CallFailure, ToolCall, json_size, response_size};
use crate::audit::AuditRecord;
use crate::auth::Principal;
use crate::gateway::GatewayService;
use crate::telemetry;

/// What the record stage keeps of a request before it is sent on.
pub(super) struct Recorder {
    request_bytes: usize,
    /// The arguments, when the audit log records them.
    arguments: Option<JsonObject>,
}

impl Recorder {
    pub fn start(call: &ToolCall<'_>, request: &CallToolRequestParams) -> Self {
        let audit = &call.svc.gateway.audit;
        let request_bytes = if audit.is_enabled() { request.arguments.as_ref().map_or(0, json_size) } else { 0 };
        let arguments = if audit.is_enabled() && audit.include_arguments { request.arguments.clone() } else { None };
        Recorder { request_bytes, arguments }
    }

    pub fn finish(self, call: &ToolCall<'_>, result: &Result<CallToolResponse, CallFailure>) {
        let summary = CallSummary {
            server: &call.spec.server_name,
            tool: call.tool,
            outcome: call_outcome(result),
            started: call.started,
            request_bytes: self.request_bytes,
            arguments: self.arguments,
            response_bytes: result.as_ref().map_or(0, response_size),
        };
        record(call.svc, call.caller, summary);
    }
}

/// How a tool call ended, as metrics, audit and traces name it.
pub(crate) fn call_outcome(result: &Result<CallToolResponse, CallFailure>) -> &'static str {
    match result {
        Ok(CallToolResponse::Complete(c)) if c.is_error == Some(true) => "error",
        Ok(_) => "success",
        Err(failure) => failure.outcome(),
    }
}

/// What the metrics and the audit log record about one call.
pub(crate) struct CallSummary<'a> {
    pub server: &'a str,
    pub tool: &'a str,
    pub outcome: &'static str,
    pub started: Instant,
    pub request_bytes: usize,
    /// The arguments, when the audit log records them.
    pub arguments: Option<JsonObject>,
    pub response_bytes: usize,
}

/// Counts a finished call (a tool's, or one of the gateway's own tools) and audits it.
pub(crate) fn record(svc: &GatewayService, p: &Principal, call: CallSummary<'_>) {
    let CallSummary { server, tool, outcome, started, request_bytes, arguments, response_bytes } = call;
    let took = started.elapsed();
    let gateway = &svc.gateway;
    gateway.metrics.record_call(&p.project_name, server, tool, outcome, took);
    if let Some((trace, span)) = telemetry::sampled_ids() {
        gateway.metrics.record_call_exemplar(took, trace, span);
    }
    let audit = &gateway.audit;
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
