//! The integrity stage: the tool is listed by its server, passed the poisoning scans and matches
//! its pin, under the caller's revision of the approvals.

use super::{CallFailure, ToolCall};

pub(super) async fn check(call: &ToolCall<'_>) -> Result<(), CallFailure> {
    let (ttl, pins) = (call.caller.catalog.tool_cache_ttl, call.config.pins(&call.spec.server_name));
    let found = tokio::time::timeout_at(call.deadline, call.upstream.tools(ttl, &pins))
        .await
        .map_err(|_| call.timed_out())?
        .map_err(CallFailure::Upstream)?;
    if let Some(reason) = &found.server_blocked {
        return Err(CallFailure::Held(format!(
            "server `{}` is blocked: its description looks poisoned ({reason})",
            call.spec.server_name
        )));
    }
    if found.is_visible(call.tool) {
        return Ok(());
    }
    Err(match found.hidden.iter().find(|(name, _)| name == call.tool) {
        Some((_, reason)) => CallFailure::Held(format!("tool `{}` is held back: {reason}", call.tool)),
        None => CallFailure::Unknown,
    })
}
