//! The guard stages, in the order `crate::guard` documents: before the upstream, redaction and
//! the input detectors (local, then the remote provider on the redacted arguments); after it, the
//! output detectors (remote, then local with output redaction and restore), then the warnings.

use std::sync::Arc;

use guardrails::Finding;
use rmcp::model::{CallToolRequestParams, CallToolResponse, JsonObject};

use super::{CallFailure, ToolCall};
use crate::catalog::ServerGuards;
use crate::guard::remote::Stage;
use crate::guard::{Blocked, Screened, screen_remote};
use crate::telemetry;

/// The server's guardrail policy, unless none of it is enabled; a policy that did not compile
/// holds every call (fail closed).
pub(super) fn policy(call: &ToolCall<'_>) -> Result<Option<Arc<ServerGuards>>, CallFailure> {
    let Some(guards) = call.config.guards(&call.spec.server_name) else { return Ok(None) };
    if let Some(broken) = &guards.broken {
        return Err(CallFailure::Held(format!("the server's guardrail policy is invalid: {broken}")));
    }
    Ok(guards.any_enabled().then(|| guards.clone()))
}

/// What the input stage leaves for the output stage.
pub(super) struct Before {
    /// The arguments as the client sent them (before redaction).
    sent: Option<JsonObject>,
    screened: Screened,
}

/// Screens the arguments, and leaves in `request` what the upstream may see.
pub(super) async fn before(
    call: &ToolCall<'_>,
    guards: &ServerGuards,
    request: &mut CallToolRequestParams,
) -> Result<Before, CallFailure> {
    let sent = request.arguments.take();
    let mut stage = telemetry::Stage::start("guardrails input", || attributes("input", call));
    let mut screened =
        crate::guard::screen_input(guards, sent.clone()).map_err(|b| blocked(call, &mut stage, "input", b))?;
    if !guards.input_remote.is_empty() {
        // The provider sees the arguments as the upstream will (redacted), as one JSON text.
        let text = serde_json::to_string(&screened.arguments).unwrap_or_default();
        let remote = screen_remote(provider(call), &guards.input_remote, Stage::Input, server(call), call.tool, &text);
        let warnings = remote.await.map_err(|b| blocked(call, &mut stage, "input", b))?;
        screened.warnings.extend(warnings);
    }
    stage.guardrail(&screened.warnings, false);
    record_findings(call, "input", &screened.warnings, "warned");
    request.arguments = screened.arguments.take();
    Ok(Before { sent, screened })
}

/// Screens the upstream's result; warnings of both stages are attached to it.
pub(super) async fn after(
    call: &ToolCall<'_>,
    guards: &ServerGuards,
    before: Before,
    response: CallToolResponse,
) -> Result<CallToolResponse, CallFailure> {
    let CallToolResponse::Complete(mut result) = response else { return Ok(response) };
    let mut stage = telemetry::Stage::start("guardrails output", || attributes("output", call));
    let mut warnings = Vec::new();
    if !guards.output_remote.is_empty() {
        let text = crate::guard::result_text(&mut result);
        let remote =
            screen_remote(provider(call), &guards.output_remote, Stage::Output, server(call), call.tool, &text);
        warnings.extend(remote.await.map_err(|b| blocked(call, &mut stage, "output", b))?);
    }
    let Before { sent, screened } = before;
    let local = crate::guard::screen_output(guards, sent.as_ref(), &mut result, &screened.redactions)
        .map_err(|b| blocked(call, &mut stage, "output", b))?;
    warnings.extend(local);
    stage.guardrail(&warnings, false);
    record_findings(call, "output", &warnings, "warned");
    crate::guard::attach_warnings(&mut result, &screened.warnings, &warnings);
    Ok(CallToolResponse::Complete(result))
}

fn provider<'c>(call: &'c ToolCall<'_>) -> Option<&'c dyn crate::guard::remote::GuardrailProvider> {
    call.caller.catalog.remote.as_ref().map(|r| r.provider.as_ref())
}

fn server<'c>(call: &'c ToolCall<'_>) -> &'c str {
    &call.spec.server_name
}

fn blocked(call: &ToolCall<'_>, stage: &mut telemetry::Stage, name: &'static str, blocked: Blocked) -> CallFailure {
    stage.guardrail(&blocked.findings, true);
    record_findings(call, name, &blocked.findings, "blocked");
    CallFailure::Blocked(blocked)
}

/// Counts findings by detector (one event per detector and call, however many kinds it found)
/// and logs their kinds, never the text behind them.
fn record_findings(call: &ToolCall<'_>, stage: &'static str, findings: &[Finding], action: &'static str) {
    let detectors: std::collections::BTreeSet<&str> = findings.iter().map(|f| f.detector).collect();
    for detector in detectors {
        call.svc.gateway.metrics.record_guardrail(server(call), stage, detector, action);
    }
    if !findings.is_empty() {
        let kinds: Vec<&str> = findings.iter().map(|f| f.kind).collect();
        tracing::warn!(server = %server(call), stage, action, ?kinds, "guardrail findings");
    }
}

/// What a guardrail stage's span says before it ends: the stage and the server.
fn attributes(stage: &'static str, call: &ToolCall<'_>) -> Vec<opentelemetry::KeyValue> {
    vec![
        opentelemetry::KeyValue::new("mcpgw.guardrail.stage", stage),
        opentelemetry::KeyValue::new("mcpgw.server", call.spec.server_name.clone()),
    ]
}
