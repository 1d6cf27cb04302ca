//! The upstream stage: the call sent to its server and its answer awaited, within the call's
//! deadline, with cancellation, progress relayed in order before the answer, and the size cap.
//! An HTTP(S) upstream's calls go on the gateway's pooled connections; others through rmcp.

use std::sync::Arc;

use rmcp::ServiceError;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CancelledNotificationParam, ClientRequest,
    ProgressNotificationParam, ProgressToken, RequestMetaObject, ServerResult,
};
use rmcp::service::PeerRequestOptions;

use super::{CallFailure, ToolCall, response_size};
use crate::telemetry;
use crate::upstream::UpstreamError;
use crate::upstream::http_call::{CallEnd, HttpSession, NotSent};
use crate::upstream::relay::ProgressRoute;

/// Forwards the call to its upstream, in a client span whose context the upstream gets.
pub(super) async fn forward(
    call: &ToolCall<'_>,
    mut request: CallToolRequestParams,
) -> Result<CallToolResponse, CallFailure> {
    let span = telemetry::UpstreamCall::start(&call.spec, telemetry::Target::Tool(call.tool), &mut request.meta);
    let result = untraced(call, request).await;
    span.end(match &result {
        Ok(CallToolResponse::Complete(r)) if r.is_error == Some(true) => Some("tool_error"),
        Ok(_) => None,
        Err(failure) => Some(failure.outcome()),
    });
    result
}

async fn untraced(call: &ToolCall<'_>, mut request: CallToolRequestParams) -> Result<CallToolResponse, CallFailure> {
    let upstream = &call.upstream;
    let conn = tokio::time::timeout_at(call.deadline, upstream.acquire())
        .await
        .map_err(|_| call.timed_out())?
        .map_err(CallFailure::Upstream)?;
    request.name = call.tool.to_string().into();
    request.meta = upstream_meta(request.meta.take());
    let _in_flight = call.origin.map(|o| upstream.callers().enter(call.svc.link(), o.request.clone()));
    if let Some(session) = upstream.http_session() {
        match pooled(call, &session, &mut request).await {
            Ok(result) => return result,
            // The upstream ended its session: rmcp opens a new one for this call.
            Err(NotSent::SessionGone) => {
                upstream.http_session_gone(&session);
                request.meta = upstream_meta(request.meta.take());
            }
        }
    }
    let failed = |e| CallFailure::Upstream(UpstreamError::failed(&call.spec.server_name, e));
    let handle = conn
        .peer
        .send_request_with_option(
            ClientRequest::CallToolRequest(CallToolRequest::new(request)),
            PeerRequestOptions::no_options(),
        )
        .await
        .map_err(failed)?;
    // rmcp gives every outgoing request its own progress token; route that one back.
    let mut route = call.origin.and_then(|o| {
        let token = o.progress.clone()?;
        Some(upstream.progress().open(handle.progress_token.clone(), o.progress_sink(), token))
    });
    let (peer, id) = (handle.peer.clone(), handle.id.clone());
    let response = tokio::time::timeout_at(call.deadline, handle.await_response());
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
            _ = call.cancel.cancelled() => {
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
            let reason = Some(format!("gateway timeout ({} ms)", call.timeout_ms));
            let _ = peer.notify_cancelled(CancelledNotificationParam::new(Some(id), reason)).await;
            return Err(call.timed_out());
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
    within_cap(call, response)
}

/// [`untraced`] for an HTTP(S) upstream: the call goes on a pooled connection of the gateway's
/// own, on the session rmcp opened, with the same deadline, cancellation, progress and size cap.
async fn pooled(
    call: &ToolCall<'_>,
    session: &Arc<HttpSession>,
    request: &mut CallToolRequestParams,
) -> Result<Result<CallToolResponse, CallFailure>, NotSent> {
    let upstream = &call.upstream;
    let pooled = upstream.pooled();
    let sent = pooled.next_call();
    let wants = call.origin.and_then(|o| Some((o.progress.clone()?, o)));
    let upstream_token = wants.as_ref().map(|_| ProgressToken(sent.id.clone()));
    if let Some(token) = &upstream_token {
        request.meta.get_or_insert_with(Default::default).set_progress_token(token.clone());
    }
    // A channel only when the client asked for progress (its sender's drop would wake this task).
    let (notes_in, mut notes) = match &wants {
        Some(_) => {
            let (notes_in, notes) = tokio::sync::mpsc::channel(256);
            (Some(notes_in), Some(notes))
        }
        None => (None, None),
    };
    let mut on_progress = move |note| {
        // Progress is advisory: a client that does not keep up loses some.
        if let Some(notes_in) = &notes_in {
            let _ = notes_in.try_send(note);
        }
    };
    let sink = wants.map(|(client_token, o)| (o.progress_sink(), client_token));
    let forward = async |note| {
        if let Some((sink, client_token)) = &sink {
            sink.forward(client_token, note).await;
        }
    };
    let limit = call.svc.gateway.config.max_response_bytes;
    let sending =
        pooled.call_tool(session, &sent, request, upstream_token.as_ref(), &mut on_progress, upstream.targets(), limit);
    let sending = tokio::time::timeout_at(call.deadline, sending);
    tokio::pin!(sending);
    let outcome = loop {
        tokio::select! {
            biased;
            Some(note) = next_note(&mut notes) => forward(note).await,
            r = &mut sending => break r,
            _ = call.cancel.cancelled() => {
                pooled.cancel(session.clone(), &sent, "cancelled by the client".into());
                return Ok(Err(CallFailure::Cancelled));
            }
        }
    };
    // What the upstream reported before answering reaches the client before the answer.
    while let Some(note) = notes.as_mut().and_then(|notes| notes.try_recv().ok()) {
        forward(note).await;
    }
    let failed =
        |reason: String| CallFailure::Upstream(UpstreamError::Failed { server: call.spec.server_name.clone(), reason });
    let response = match outcome {
        Err(_) => {
            pooled.cancel(session.clone(), &sent, format!("gateway timeout ({} ms)", call.timeout_ms));
            return Ok(Err(call.timed_out()));
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
    Ok(within_cap(call, response))
}

/// `response`, unless its payload is over `MCPGW_MAX_RESPONSE_BYTES`.
fn within_cap(call: &ToolCall<'_>, response: CallToolResponse) -> Result<CallToolResponse, CallFailure> {
    let (size, limit) = (response_size(&response), call.svc.gateway.config.max_response_bytes);
    if size > limit {
        return Err(CallFailure::TooLarge { size, limit });
    }
    Ok(response)
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

/// `_meta` for the upstream request: the client's own keys, minus protocol bookkeeping that
/// describes the client's connection and its progress token (the gateway sets its own).
pub(crate) fn upstream_meta(client: Option<RequestMetaObject>) -> Option<RequestMetaObject> {
    let mut meta = client.unwrap_or_default();
    meta.0.retain(|k, _| !k.starts_with("io.modelcontextprotocol/") && k != "progressToken");
    (!meta.0.is_empty()).then_some(meta)
}

/// The next progress notification of a call, or never when its client did not ask for progress.
async fn next_progress(route: &mut Option<ProgressRoute<'_>>) -> Option<ProgressNotificationParam> {
    match route {
        Some(route) => route.next().await,
        None => std::future::pending().await,
    }
}

/// The next progress note of a pooled call, or never when its client did not ask for progress.
async fn next_note(
    notes: &mut Option<tokio::sync::mpsc::Receiver<ProgressNotificationParam>>,
) -> Option<ProgressNotificationParam> {
    match notes {
        Some(notes) => notes.recv().await,
        None => std::future::pending().await,
    }
}
