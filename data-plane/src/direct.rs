//! Requests answered on their own task, with `application/json`, without rmcp's session worker.
//!
//! rmcp runs each streamable-HTTP session as a worker: a request travels to it over a channel,
//! the handler runs on a task of its own, and the answer travels back to be framed as server-sent
//! events. For a request that sends nothing but its answer, that is most of what the gateway spends
//! on it. Such a request is handed here to the same handler (the session's own `GatewayService`,
//! traced, with the session's peer) through rmcp's own dispatch, and its answer is the JSON body,
//! which the transport allows. Everything the handler does (policy, rate limits, guardrails, pins,
//! timeouts, size caps, audit, metrics, spans) is what it does for a request rmcp delivers.
//!
//! Served here, on a session of this replica whose handshake is done, when the headers need nothing
//! rmcp judges (no `Origin`, an allowed `Host`, a client that accepts JSON and SSE, no per-request
//! protocol headers or metadata):
//! - `tools/list`;
//! - `tools/call` of a server that may not send requests of its own to the client (sampling,
//!   elicitation), and not a gateway meta-tool. Its progress, if the client asked for it, turns
//!   the response into an event stream: the progress in order, then the answer.
//!
//! Everything else goes to rmcp. A `notifications/cancelled` for a call served here cancels it
//! ([`Direct::cancel`]) and then goes to rmcp as well.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::{FutureExt, StreamExt};
use rmcp::model::{
    CallToolRequest, CallToolRequestMethod, CallToolRequestParams, ClientJsonRpcMessage, ClientRequest, GetMeta,
    JsonRpcRequest, JsonRpcVersion2_0, ProgressNotification, ProgressNotificationParam, ProtocolVersion, RequestId,
    ServerJsonRpcMessage, ServerNotification,
};
use rmcp::service::RequestContext;
use rmcp::{Peer, RoleServer, Service};
use shared::snapshot::ToolNaming;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;
use crate::gateway::GatewayService;
use crate::meta_tools;
use crate::state::Gateway;
use crate::telemetry::{Traced, Transport};

/// A session's handler and peer, for the requests it answers without rmcp.
pub struct Direct {
    service: GatewayService,
    peer: Peer<RoleServer>,
    /// Calls served here and not yet answered, by request id: what `notifications/cancelled` finds.
    in_flight: Mutex<HashMap<RequestId, CancellationToken>>,
}

/// Unregisters a call when it ends, however it ends.
struct Registered<'a> {
    direct: &'a Direct,
    id: RequestId,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.direct.calls().remove(&self.id);
    }
}

impl Direct {
    pub fn new(service: GatewayService, peer: Peer<RoleServer>) -> Arc<Self> {
        Arc::new(Direct { service, peer, in_flight: Mutex::default() })
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, CancellationToken>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cancels call `id` if it is one served here (as rmcp does for the calls it runs).
    pub fn cancel(&self, id: &RequestId) {
        if let Some(token) = self.calls().remove(id) {
            token.cancel();
        }
    }

    /// Answers `request` here if it is one of those this module serves; otherwise gives it back.
    pub async fn serve(
        self: Arc<Self>,
        request: Request,
        body: &Bytes,
        gateway: &Gateway,
    ) -> Result<Response, Request> {
        if !headers_need_no_rmcp(request.headers(), &gateway.config.allowed_hosts) {
            return Err(request);
        }
        let Some(mut message) = parse_request(body) else { return Err(request) };
        let principal = request.extensions().get::<Principal>();
        if !principal.is_some_and(|p| served_here(&message.request, p)) {
            return Err(request);
        }
        let (parts, _) = request.into_parts();
        let id = message.id.clone();
        let mut context = RequestContext::new(id.clone(), self.peer.clone());
        std::mem::swap(&mut context.meta, message.request.get_meta_mut());
        context.extensions.insert(parts);
        // Only a request with a progress token gets progress; without one the answer is all there is.
        let progress = asks_for_progress(&context, &message.request).then(|| mpsc::channel(PROGRESS_CAPACITY));
        let notes = progress.map(|(into, notes)| {
            context.extensions.insert(ProgressInto(into));
            notes
        });
        let token = CancellationToken::new();
        context.ct = token.clone();
        // Registered before it runs, so that a cancellation sent right after it is not missed.
        self.calls().insert(id.clone(), token);
        let call = async move {
            let _registered = Registered { direct: &self, id: id.clone() };
            let traced = Traced::new(self.service.clone(), Transport::Http);
            match traced.handle_request(message.request, context).await {
                Ok(result) => ServerJsonRpcMessage::response(result, id),
                Err(error) => ServerJsonRpcMessage::error(error, Some(id)),
            }
        };
        let mut answer = Detached(Some(Box::pin(AssertUnwindSafe(call).catch_unwind())));
        let Some(mut notes) = notes else { return Ok(json(answer.await)) };
        // Progress comes before the answer: an answer alone is JSON, anything before it makes
        // the response an event stream, in the order the call sent it.
        let first = tokio::select! {
            biased;
            Some(note) = notes.recv() => note,
            answer = &mut answer => match notes.try_recv() {
                Ok(note) => {
                    let answered = Detached(Some(Box::pin(std::future::ready(answer))));
                    return Ok(event_stream(note, notes, answered));
                }
                Err(_) => return Ok(json(answer)),
            },
        };
        Ok(event_stream(first, notes, answer))
    }
}

/// A call run on the request's own task (no hand-over to another task when it is answered at
/// once). If the request goes away first (the client disconnected), the rest of the call moves
/// to a task of its own: it still completes, is audited, and its upstream is not left with an
/// orphaned request.
struct Detached(Option<Pin<Box<dyn Future<Output = Answer> + Send>>>);

impl Future for Detached {
    type Output = Answer;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        let Some(call) = self.0.as_mut() else { return Poll::Pending };
        let answer = std::task::ready!(call.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(answer)
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(call) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(call);
        }
    }
}

/// The request in `body`, if it is one. A tool call, the common case, is read straight into its
/// type; anything else goes through rmcp's general parse, which buffers the message and tries
/// each kind of message, then each kind of request, in turn.
fn parse_request(body: &[u8]) -> Option<JsonRpcRequest<ClientRequest>> {
    /// A tools/call request, read without buffering any part of it; `result` and `error` are read
    /// only to refuse a message that mixes shapes, as the general parse does.
    #[derive(serde::Deserialize)]
    struct ToolCall {
        jsonrpc: JsonRpcVersion2_0,
        id: RequestId,
        method: CallToolRequestMethod,
        params: CallToolRequestParams,
        result: Option<serde::de::IgnoredAny>,
        error: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<ToolCall>(body) {
        Ok(mut call) if call.result.is_none() && call.error.is_none() => {
            // Where rmcp's parse puts `params._meta`: in the request's extensions.
            let meta = call.params.meta.take();
            let mut request = CallToolRequest::new(call.params);
            request.method = call.method;
            if let Some(meta) = meta {
                request.extensions.insert(meta);
            }
            Some(JsonRpcRequest {
                jsonrpc: call.jsonrpc,
                id: call.id,
                request: ClientRequest::CallToolRequest(request),
            })
        }
        _ => match serde_json::from_slice::<ClientJsonRpcMessage>(body) {
            Ok(ClientJsonRpcMessage::Request(request)) => Some(request),
            _ => None,
        },
    }
}

/// Where a call answered here sends its progress (a request extension the handler finds).
#[derive(Clone)]
pub struct ProgressInto(pub mpsc::Sender<ProgressNotificationParam>);

/// Progress one call may have waiting to be written to its client.
const PROGRESS_CAPACITY: usize = 64;

/// A call's answer, or the panic that ended it.
type Answer = std::thread::Result<ServerJsonRpcMessage>;

fn json(answer: Answer) -> Response {
    let Some(body) = encoded(answer) else {
        return crate::http::jsonrpc_error(StatusCode::INTERNAL_SERVER_ERROR, -32603, "internal error");
    };
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn encoded(answer: Answer) -> Option<Vec<u8>> {
    let message = answer.inspect_err(|_| tracing::error!("a request handler panicked")).ok()?;
    serde_json::to_vec(&message).inspect_err(|e| tracing::error!(error = %e, "an answer could not be encoded")).ok()
}

/// The response as server-sent events: `first`, the progress after it, then the answer. The
/// call goes on as the response is written, so its progress is sent as it comes.
fn event_stream(
    first: ProgressNotificationParam,
    mut notes: mpsc::Receiver<ProgressNotificationParam>,
    mut call: Detached,
) -> Response {
    let progress = |note: ProgressNotificationParam| {
        let notification = ServerNotification::ProgressNotification(ProgressNotification::new(note));
        serde_json::to_vec(&ServerJsonRpcMessage::notification(notification)).ok()
    };
    let mut answer = None;
    let mut answered = false;
    let rest = futures::stream::poll_fn(move |cx| {
        if answered {
            return Poll::Ready(None);
        }
        if answer.is_none()
            && let Poll::Ready(done) = call.poll_unpin(cx)
        {
            answer = Some(done);
        }
        match answer.take() {
            // What the call reported before its answer goes first.
            Some(done) => match notes.try_recv() {
                Ok(note) => {
                    answer = Some(done);
                    Poll::Ready(Some(progress(note)))
                }
                Err(_) => {
                    answered = true;
                    Poll::Ready(Some(encoded(done)))
                }
            },
            None => match notes.poll_recv(cx) {
                Poll::Ready(Some(note)) => Poll::Ready(Some(progress(note))),
                // Still running; its answer wakes this stream.
                _ => Poll::Pending,
            },
        }
    });
    let events = futures::stream::once(async move { progress(first) })
        .chain(rest)
        .filter_map(|event| async move { event })
        .map(|json| {
            let mut event = Vec::with_capacity(json.len() + 8);
            event.extend_from_slice(b"data: ");
            event.extend_from_slice(&json);
            event.extend_from_slice(b"\n\n");
            Ok::<_, std::convert::Infallible>(Bytes::from(event))
        });
    let mut response = Response::new(Body::from_stream(events));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Whether the client gave `request` a progress token (in `_meta`, which the context holds, or in
/// a tool call's parameters).
fn asks_for_progress(context: &RequestContext<RoleServer>, request: &ClientRequest) -> bool {
    context.meta.get_progress_token().is_some()
        || matches!(request, ClientRequest::CallToolRequest(call)
            if call.params.meta.as_ref().is_some_and(|m| m.get_progress_token().is_some()))
}

/// Whether the request and its target are ones this module serves (see the module's comment).
fn served_here(request: &ClientRequest, principal: &Principal) -> bool {
    // Per-request protocol metadata is rmcp's to validate.
    if request.get_meta().keys().any(|k| k.starts_with("io.modelcontextprotocol/")) {
        return false;
    }
    match request {
        ClientRequest::ListToolsRequest(_) => true,
        ClientRequest::CallToolRequest(call) => {
            let Some(config) = &principal.config else { return true };
            let name = call.params.name.as_ref();
            if config.naming == ToolNaming::Prefixed && meta_tools::is_meta_tool(name) {
                return false;
            }
            // A server that may ask the client something needs the call's own event stream.
            config.route_tool(name).is_none_or(|(spec, _)| !spec.allow_sampling && !spec.allow_elicitation)
        }
        _ => false,
    }
}

/// Whether rmcp would take these headers without a word: otherwise rmcp answers the request.
fn headers_need_no_rmcp(headers: &HeaderMap, allowed_hosts: &[String]) -> bool {
    if headers.contains_key(header::ORIGIN) {
        return false;
    }
    // Per-request protocol headers (SEP-2243's `Mcp-Method`, `Mcp-Param-*`, ...) are rmcp's to check.
    if headers.keys().any(|name| {
        let name = name.as_str();
        name.starts_with("mcp-") && name != "mcp-session-id" && name != "mcp-protocol-version"
    }) {
        return false;
    }
    let (mut json, mut sse) = (false, false);
    for value in headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()) {
        for entry in value.split(',') {
            let mut parameters = entry.split(';');
            let essence = parameters.next().unwrap_or_default().trim();
            // Any parameter at all (a quality, say) is rmcp's to weigh.
            if parameters.next().is_some() {
                return false;
            }
            json |= essence.eq_ignore_ascii_case("application/json");
            sse |= essence.eq_ignore_ascii_case("text/event-stream");
        }
    }
    json && sse && host_allowed(headers, allowed_hosts) && session_version(headers)
}

/// `Host` against `MCPGW_ALLOWED_HOSTS` (`*`: any), compared as rmcp compares them.
fn host_allowed(headers: &HeaderMap, allowed_hosts: &[String]) -> bool {
    if allowed_hosts.iter().any(|h| h == "*") {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    let Ok(host) = axum::http::uri::Authority::try_from(host) else { return false };
    let normal = |h: &str| h.trim_matches(['[', ']']).to_ascii_lowercase();
    allowed_hosts.iter().any(|allowed| match axum::http::uri::Authority::try_from(allowed.trim()) {
        Ok(a) => normal(a.host()) == normal(host.host()) && a.port_u16().is_none_or(|p| host.port_u16() == Some(p)),
        Err(_) => normal(allowed.trim()) == normal(host.host()),
    })
}

/// No `MCP-Protocol-Version` header, or a known version of those with sessions (later ones have
/// per-request rules rmcp applies).
fn session_version(headers: &HeaderMap) -> bool {
    let Some(version) = headers.get("mcp-protocol-version") else { return true };
    let Ok(version) = version.to_str() else { return false };
    version < ProtocolVersion::STANDARD_HEADERS.as_str()
        && ProtocolVersion::KNOWN_VERSIONS.iter().any(|known| known.as_str() == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_calls_parse_as_the_general_parse_reads_them() {
        let general = |body: &str| match serde_json::from_slice::<ClientJsonRpcMessage>(body.as_bytes()) {
            Ok(ClientJsonRpcMessage::Request(request)) => Some(request),
            _ => None,
        };
        let same = |body: &str| {
            let (fast, general) = (parse_request(body.as_bytes()), general(body));
            assert_eq!(format!("{fast:?}"), format!("{general:?}"), "{body}");
            // Extensions print no contents: compare the request's `_meta` on its own.
            let meta = |r: &Option<JsonRpcRequest<ClientRequest>>| r.as_ref().map(|r| r.request.get_meta().clone());
            assert_eq!(meta(&fast), meta(&general), "{body}");
            fast
        };
        let call = same(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"fx__echo","arguments":{"message":"hi"},"_meta":{"progressToken":"t","k":1}}}"#,
        )
        .expect("a tool call");
        assert!(matches!(call.request, ClientRequest::CallToolRequest(_)));
        assert_eq!(
            call.request.get_meta().get_progress_token(),
            Some(rmcp::model::ProgressToken(rmcp::model::NumberOrString::String("t".into())))
        );
        same(r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"x"}}"#).expect("a tool call");
        same(r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"x","_meta":null},"extra":[1]}"#)
            .expect("a tool call");
        // A `_meta` that is not an object, or a call with no params, is what rmcp makes of it.
        same(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":5}}"#);
        same(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#);
        // Other requests take the general parse.
        assert!(matches!(
            same(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).map(|r| r.request),
            Some(ClientRequest::ListToolsRequest(_))
        ));
        // A call without a name is what rmcp makes of it (a custom request).
        same(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#);
        // Refused alike: a message of two shapes, a wrong version, not a request.
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"},"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"},"error":{"code":1,"message":"m"}}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"tools/call","params":{"name":"x"}}"#,
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x"}}"#,
        ] {
            assert!(same(body).is_none(), "{body}");
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    const PLAIN: [(&str, &str); 3] = [
        ("host", "127.0.0.1:8080"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2025-06-18"),
    ];

    fn loopback() -> Vec<String> {
        ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec()
    }

    #[test]
    fn only_requests_rmcp_would_take_as_they_are_are_answered_here() {
        assert!(headers_need_no_rmcp(&headers(&PLAIN), &loopback()));
        assert!(headers_need_no_rmcp(&headers(&[("host", "[::1]:9"), PLAIN[1]]), &loopback()), "no version header");
        let with = |extra: (&'static str, &'static str)| {
            let mut pairs = PLAIN.to_vec();
            pairs.push(extra);
            headers_need_no_rmcp(&headers(&pairs), &loopback())
        };
        assert!(!with(("origin", "http://localhost:3000")), "origins are rmcp's to check");
        assert!(!with(("mcp-method", "tools/call")), "per-request protocol headers are rmcp's");
        let replaced = |name: &'static str, value: &'static str| {
            let mut map = headers(&PLAIN);
            map.insert(name, HeaderValue::from_static(value));
            headers_need_no_rmcp(&map, &loopback())
        };
        assert!(!replaced("host", "evil.example:8080"), "a host not allowed");
        assert!(!replaced("accept", "application/json"), "a client that does not take SSE");
        assert!(!replaced("accept", "application/json, text/event-stream;q=0"), "weights are rmcp's to weigh");
        assert!(!replaced("mcp-protocol-version", "2026-07-28"), "a version without sessions");
        assert!(!replaced("mcp-protocol-version", "1999-01-01"), "an unknown version");
        let any_host = vec!["*".to_string()];
        let mut map = headers(&PLAIN);
        map.insert("host", HeaderValue::from_static("mcp.example.com"));
        assert!(headers_need_no_rmcp(&map, &any_host));
        assert!(headers_need_no_rmcp(&map, &["MCP.example.com:443".into(), "mcp.example.com".into()]));
        assert!(!headers_need_no_rmcp(&map, &["mcp.example.com:8443".into()]), "a port must match when given");
    }
}
