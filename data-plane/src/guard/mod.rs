//! Guardrails on one tool call, in the order that keeps data safe:
//! redaction -> input detectors -> (upstream call) -> output detectors -> output redaction -> restore.
//! The call pipeline's guard stages (`crate::call`) run them in that order.
//!
//! A blocked input never leaves the gateway. Findings are reported by detector and kind, never with
//! the text that triggered them.

pub mod remote;

use guardrails::{Finding, Redactions, Verdict};
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, MetaObject, ResourceContents};
use serde_json::{Value, json};

use crate::catalog::{RemoteChecks, ServerGuards};
use remote::{DetectRequest, GuardrailProvider, Stage};

/// Detector name of findings about the provider itself (it could not answer).
pub const PROVIDER_UNAVAILABLE: Finding = Finding { detector: "guardrail_provider", kind: "unavailable" };

/// Asks the remote provider about `text` for the detectors `checks` names. Findings in the policy's
/// `block` (every remote detector there is) refuse the call. A provider error refuses it too, unless
/// the policy fails open: then it proceeds with a warning.
pub async fn screen_remote(
    provider: Option<&dyn GuardrailProvider>,
    checks: &RemoteChecks,
    stage: Stage,
    server: &str,
    tool: &str,
    text: &str,
) -> Result<Vec<Finding>, Blocked> {
    if checks.is_empty() {
        return Ok(Vec::new());
    }
    let label = match stage {
        Stage::Input => "input",
        Stage::Output => "output",
    };
    let answer = match provider {
        None => Err(remote::ProviderError::NotConfigured),
        Some(provider) => {
            let request = DetectRequest {
                stage,
                server,
                tool,
                detectors: &checks.detectors,
                policy_name: checks.policy_name.as_deref(),
                text,
            };
            provider.detect(&request).await
        }
    };
    match answer {
        // Remote detectors run only when named in `block`: every finding blocks.
        Ok(findings) if findings.is_empty() => Ok(Vec::new()),
        Ok(findings) => Err(Blocked { stage: label, findings, unavailable: None }),
        Err(e) if checks.fail_open => {
            tracing::warn!(server, stage = label, error = %e, "guardrail provider failed; the policy fails open");
            Ok(vec![PROVIDER_UNAVAILABLE])
        }
        Err(e) => {
            tracing::warn!(server, stage = label, error = %e, "guardrail provider failed; refusing the call");
            Err(Blocked { stage: label, findings: vec![PROVIDER_UNAVAILABLE], unavailable: Some(e.to_string()) })
        }
    }
}

/// Everything of a result a client reads as text, for a remote check.
pub fn result_text(result: &mut CallToolResult) -> String {
    let mut out = String::new();
    for_each_text(result, &mut |text| {
        out.push_str(text);
        out.push('\n');
        None
    });
    if let Some(structured) = &result.structured_content {
        out.push_str(&structured.to_string());
    }
    out
}

/// Why a call was refused.
#[derive(Debug)]
pub struct Blocked {
    pub stage: &'static str,
    pub findings: Vec<Finding>,
    /// Set when the guardrails could not run and the policy fails closed.
    pub unavailable: Option<String>,
}

impl Blocked {
    pub fn message(&self) -> String {
        if let Some(reason) = &self.unavailable {
            return format!(
                "refused by the gateway: the {} guardrails could not run ({reason}) and the policy fails closed",
                self.stage
            );
        }
        let mut detectors: Vec<&str> = self.findings.iter().map(|f| f.detector).collect();
        detectors.dedup();
        let mut kinds: Vec<&str> = self.findings.iter().map(|f| f.kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        format!("blocked by the gateway's {} guardrails: {} ({})", self.stage, detectors.join(", "), kinds.join(", "))
    }
}

/// Arguments ready for the upstream, and what to do with the result.
pub struct Screened {
    pub arguments: Option<JsonObject>,
    pub redactions: Redactions,
    pub warnings: Vec<Finding>,
}

pub fn screen_input(guards: &ServerGuards, arguments: Option<JsonObject>) -> Result<Screened, Blocked> {
    let policy = &guards.input;
    let mut redactions = Redactions::default();
    if !policy.enabled {
        return Ok(Screened { arguments, redactions, warnings: Vec::new() });
    }
    let mut value = Value::Object(arguments.unwrap_or_default());
    if policy.redact_pii {
        redactions.redact_value(&mut value);
    }
    let verdict = policy.scan_value(&value);
    let blocking = verdict.blocking(policy);
    if !blocking.is_empty() {
        let findings = verdict.findings.iter().filter(|f| blocking.contains(&f.detector)).copied().collect();
        return Err(Blocked { stage: "input", findings, unavailable: None });
    }
    let arguments = match value {
        Value::Object(map) => Some(map),
        _ => None,
    };
    Ok(Screened { arguments, redactions, warnings: verdict.warnings(policy) })
}

/// Checks and cleans a result in place. `sent` is what the client sent (before redaction).
pub fn screen_output(
    guards: &ServerGuards,
    sent: Option<&JsonObject>,
    result: &mut CallToolResult,
    redactions: &Redactions,
) -> Result<Vec<Finding>, Blocked> {
    let policy = &guards.output;
    let mut warnings = Vec::new();
    if policy.enabled {
        let mut verdict = Verdict::default();
        for_each_text(result, &mut |text| {
            policy.scan_text(text, &mut verdict);
            None
        });
        if let Some(structured) = &result.structured_content {
            verdict.findings.extend(policy.scan_value(structured).findings);
        }
        let blocking = verdict.blocking(policy);
        if !blocking.is_empty() {
            let findings = verdict.findings.iter().filter(|f| blocking.contains(&f.detector)).copied().collect();
            return Err(Blocked { stage: "output", findings, unavailable: None });
        }
        warnings = verdict.warnings(policy);
        if policy.redact_pii {
            let sent = sent.cloned().map(Value::Object).unwrap_or(Value::Null);
            let mut added = Redactions::keeping_pii_of(&sent);
            for_each_text(result, &mut |text| added.redact_text(text));
            if let Some(structured) = &mut result.structured_content {
                added.redact_value(structured);
            }
        }
    }
    if !redactions.is_empty() {
        for_each_text(result, &mut |text| redactions.restore_text(text));
        if let Some(structured) = &mut result.structured_content {
            redactions.restore_value(structured);
        }
    }
    Ok(warnings)
}

/// Visits every text a client will read; `f` may return a replacement.
fn for_each_text(result: &mut CallToolResult, f: &mut impl FnMut(&str) -> Option<String>) {
    for block in &mut result.content {
        match block {
            ContentBlock::Text(t) => {
                if let Some(new) = f(&t.text) {
                    t.text = new;
                }
            }
            ContentBlock::Resource(r) => {
                if let ResourceContents::TextResourceContents { text, .. } = &mut r.resource
                    && let Some(new) = f(text)
                {
                    *text = new;
                }
            }
            _ => {}
        }
    }
}

/// Adds non-blocking findings to the result's `_meta`, where clients and agents can see them.
pub fn attach_warnings(result: &mut CallToolResult, input: &[Finding], output: &[Finding]) {
    if input.is_empty() && output.is_empty() {
        return;
    }
    let meta = result.meta.get_or_insert_with(MetaObject::default);
    meta.0.insert("mcpgw/guardrails".into(), json!({"input_warnings": input, "output_warnings": output}));
}
