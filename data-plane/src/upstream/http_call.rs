//! `tools/call` to a streamable-HTTP upstream on a pooled keep-alive connection, without rmcp's
//! client worker.
//!
//! rmcp opens and keeps the upstream's MCP session (initialize, its event stream, reconnection) and
//! stays the path for everything else. A call goes here on that session: one POST, on a connection
//! kept for the next call, with the answer (JSON, or an event stream with progress and notifications
//! before it) read to its end. When the session is gone (`404`), the call goes through rmcp, which
//! opens a new one.
//!
//! The connections are this crate's own (`connections`): kept alive, and driven by the call's task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper::http::{HeaderName, HeaderValue, Request, StatusCode, header};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use rmcp::ErrorData as McpError;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, CancelledNotification, CancelledNotificationParam, ClientJsonRpcMessage,
    ClientNotification, ClientResult, JsonRpcMessage, JsonRpcVersion2_0, NumberOrString, ProgressNotificationParam,
    ProgressToken, ServerJsonRpcMessage, ServerNotification, ServerRequest, ServerResult,
};
use rustls_platform_verifier::BuilderVerifierExt;

use super::connections::{Connections, PooledBody};
use super::quick_ack::QuickAckConnector;
use super::relay::RelayTargets;

/// The upstream session rmcp opened, and the headers it sends on it.
pub struct HttpSession {
    uri: Arc<str>,
    id: Arc<str>,
    bearer: Option<String>,
    /// Configured headers and `MCP-Protocol-Version`, as rmcp sends them.
    headers: HashMap<HeaderName, HeaderValue>,
}

/// The latest session rmcp used for an upstream: recorded from each message it posts.
#[derive(Default)]
pub struct SessionTap(Mutex<Option<Arc<HttpSession>>>);

impl SessionTap {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<HttpSession>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the session of a message rmcp posts (before trace headers are added).
    pub fn record(
        &self,
        uri: &Arc<str>,
        session: Option<&Arc<str>>,
        bearer: Option<&String>,
        headers: &HashMap<HeaderName, HeaderValue>,
    ) {
        let Some(id) = session else { return };
        let mut slot = self.slot();
        if slot.as_ref().is_some_and(|s| s.id == *id && s.uri == *uri && s.bearer.as_ref() == bearer) {
            return;
        }
        // Headers that describe one message (SEP-2243's `Mcp-Method`, `Mcp-Name`, `Mcp-Param-*`)
        // are not the session's.
        let headers = headers
            .iter()
            .filter(|(name, _)| !name.as_str().starts_with("mcp-") || name.as_str() == "mcp-protocol-version")
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        *slot = Some(Arc::new(HttpSession { uri: uri.clone(), id: id.clone(), bearer: bearer.cloned(), headers }));
    }

    pub fn current(&self) -> Option<Arc<HttpSession>> {
        self.slot().clone()
    }

    /// Forgets the session (a new connection opens another).
    pub fn clear(&self) {
        *self.slot() = None;
    }

    /// Forgets `session` (the upstream ended it); rmcp opens the next one.
    pub fn forget(&self, session: &Arc<HttpSession>) {
        let mut slot = self.slot();
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, session)) {
            *slot = None;
        }
    }
}

/// A call in flight here: its id on the upstream session, for cancelling it.
pub struct Sent {
    pub id: NumberOrString,
}

/// Why a call could not be made here: the caller sends it through rmcp instead.
#[derive(Debug)]
pub enum NotSent {
    /// The upstream no longer knows the session.
    SessionGone,
}

/// How a call made here ended.
#[derive(Debug)]
pub enum CallEnd {
    Answered(Box<ServerResult>),
    Refused(McpError),
    Failed(String),
    TooLarge(usize),
}

/// The pooled keep-alive client for upstream calls (HTTP and HTTPS).
#[derive(Clone)]
pub struct PooledHttp {
    connections: Arc<Connections>,
    next_id: Arc<AtomicU64>,
    /// The proxies rmcp's client goes through (`HTTPS_PROXY`, `NO_PROXY`, ...).
    proxies: Arc<Matcher>,
}

impl PooledHttp {
    /// A client that verifies upstreams' certificates as the HTTP client rmcp uses does: the
    /// platform's verifier and trust store (which on Linux also reads `SSL_CERT_FILE` and
    /// `SSL_CERT_DIR`), with the process's crypto provider.
    pub fn new() -> Result<Self, rustls::Error> {
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_platform_verifier()?
            .with_no_client_auth();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        // `https://` addresses reach the TLS layer above.
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(QuickAckConnector(connector));
        Ok(PooledHttp {
            connections: Connections::new(connector),
            next_id: Arc::new(AtomicU64::new(1)),
            proxies: Arc::new(Matcher::from_system()),
        })
    }

    /// Whether calls to `url` can go here: `http://` and `https://` addresses that rmcp's client
    /// reaches directly (one it reaches through a proxy stays on it).
    pub fn serves(&self, url: &str) -> bool {
        let scheme = |s: &str| url.get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s));
        // An address with user info (`user:password@`) stays on rmcp's client, which sends it as
        // Basic credentials.
        let plain = |uri: &hyper::Uri| uri.authority().is_some_and(|a| !a.as_str().contains('@'));
        (scheme("http://") || scheme("https://"))
            && url.parse::<hyper::Uri>().is_ok_and(|uri| plain(&uri) && self.proxies.intercept(&uri).is_none())
    }

    pub fn next_call(&self) -> Sent {
        Sent { id: NumberOrString::String(format!("mcpgw-{}", self.next_id.fetch_add(1, Ordering::Relaxed)).into()) }
    }

    /// Posts `params` as a `tools/call` with id `sent.id` on `session`; progress the upstream reports
    /// under `progress` goes to `on_progress` (in order, before the answer), other notifications to
    /// `targets`. Answers larger than `max_bytes` are refused.
    #[allow(clippy::too_many_arguments)]
    pub async fn call_tool(
        &self,
        session: &HttpSession,
        sent: &Sent,
        params: &CallToolRequestParams,
        progress: Option<&ProgressToken>,
        on_progress: &mut (dyn FnMut(ProgressNotificationParam) + Send),
        targets: &RelayTargets,
        max_bytes: usize,
    ) -> Result<CallEnd, NotSent> {
        #[derive(serde::Serialize)]
        struct Call<'a> {
            jsonrpc: &'static str,
            id: &'a NumberOrString,
            method: &'static str,
            params: &'a CallToolRequestParams,
        }
        let call = Call { jsonrpc: "2.0", id: &sent.id, method: "tools/call", params };
        let body = match serde_json::to_vec(&call) {
            Ok(body) => body,
            Err(e) => return Ok(CallEnd::Failed(format!("the call could not be encoded: {e}"))),
        };
        let headers = crate::telemetry::with_meta_trace_headers(params.meta.as_ref(), session.headers.clone());
        let response = match self.connections.send(post(session, headers, body)).await {
            Ok(response) => response,
            Err(e) => return Ok(CallEnd::Failed(error_chain(&e))),
        };
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(NotSent::SessionGone);
        }
        let content_type =
            response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        let announced = response.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
        let body = response.into_body();
        if essence == "text/event-stream" && status.is_success() {
            let events = Events { session, id: &sent.id, progress, targets, max_bytes };
            return Ok(self.read_events(body, events, on_progress).await);
        }
        let bytes = match Limited::new(body, max_bytes).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                // Its size when the upstream said it; otherwise all that is known is "more".
                return Ok(CallEnd::TooLarge(announced.unwrap_or(max_bytes.saturating_add(1))));
            }
            Err(e) => return Ok(CallEnd::Failed(format!("reading the answer: {e}"))),
        };
        if essence == "application/json" {
            if let Some(end) = tool_answer(&bytes, &sent.id) {
                return Ok(end);
            }
            if let Ok(message) = serde_json::from_slice::<ServerJsonRpcMessage>(&bytes)
                && let Some(end) = ending(message, &sent.id)
            {
                return Ok(end);
            }
            if status.is_success() {
                return Ok(CallEnd::Failed("the answer is not a JSON-RPC response to the call".into()));
            }
        }
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
        Ok(CallEnd::Failed(format!("HTTP {status}: {text}")))
    }

    /// Tells the upstream that call `sent` is cancelled (on its own, without waiting).
    pub fn cancel(&self, session: Arc<HttpSession>, sent: &Sent, reason: String) {
        let params = CancelledNotificationParam::new(Some(sent.id.clone()), Some(reason));
        let note = ClientJsonRpcMessage::notification(ClientNotification::CancelledNotification(
            CancelledNotification::new(params),
        ));
        self.post_aside(&session, &note);
    }

    /// Posts `message` on `session` on its own task (the upstream's answer is read and dropped).
    fn post_aside(&self, session: &HttpSession, message: &ClientJsonRpcMessage) {
        let Ok(body) = serde_json::to_vec(message) else { return };
        let request = post(session, session.headers.clone(), body);
        let connections = self.connections.clone();
        tokio::spawn(async move {
            if let Ok(response) = connections.send(request).await {
                // Read to the end, so the connection goes back to the pool.
                let _ = Limited::new(response.into_body(), 64 * 1024).collect().await;
            }
        });
    }

    /// Reads an answer sent as server-sent events to its end.
    async fn read_events(
        &self,
        body: PooledBody,
        call: Events<'_>,
        on_progress: &mut (dyn FnMut(ProgressNotificationParam) + Send),
    ) -> CallEnd {
        let mut events = std::pin::pin!(sse_stream::SseStream::new(body));
        let mut end = None;
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => return end.unwrap_or_else(|| CallEnd::Failed(format!("reading the answer: {e}"))),
            };
            let Some(data) = event.data.filter(|d| !d.trim().is_empty()) else { continue };
            if data.len() > call.max_bytes {
                return CallEnd::TooLarge(data.len());
            }
            if end.is_some() {
                continue; // read to the end, for the connection's sake
            }
            if let Some(answer) = tool_answer(data.as_bytes(), call.id) {
                end = Some(answer);
                continue;
            }
            let Ok(message) = serde_json::from_str::<ServerJsonRpcMessage>(&data) else { continue };
            match message {
                JsonRpcMessage::Notification(n) => match n.notification {
                    ServerNotification::ProgressNotification(p) if Some(&p.params.progress_token) == call.progress => {
                        on_progress(p.params)
                    }
                    other => call.targets.deliver(&other),
                },
                JsonRpcMessage::Request(r) => {
                    let answer = match own_answer(&r.request) {
                        Ok(result) => ClientJsonRpcMessage::response(result, r.id),
                        Err(error) => ClientJsonRpcMessage::error(error, Some(r.id)),
                    };
                    self.post_aside(call.session, &answer);
                }
                other => end = ending(other, call.id),
            }
        }
        end.unwrap_or_else(|| CallEnd::Failed("the upstream closed its answer without answering".into()))
    }
}

/// One call's answer being read: what it is matched and relayed by.
struct Events<'a> {
    session: &'a HttpSession,
    id: &'a NumberOrString,
    progress: Option<&'a ProgressToken>,
    targets: &'a RelayTargets,
    max_bytes: usize,
}

/// The gateway's answer to a request an upstream makes within a call on a pooled connection: as
/// its rmcp client answers them for a server that may not sample or elicit (the only servers whose
/// calls go there).
fn own_answer(request: &ServerRequest) -> Result<ClientResult, McpError> {
    match request {
        ServerRequest::PingRequest(_) => Ok(ClientResult::empty(())),
        ServerRequest::ListRootsRequest(_) => Ok(ClientResult::ListRootsResult(Default::default())),
        ServerRequest::CreateMessageRequest(_) => Err(super::relay::not_allowed("sampling")),
        ServerRequest::ElicitRequest(_) => Err(super::relay::not_allowed("elicitation")),
        _ => Err(McpError::new(rmcp::model::ErrorCode::METHOD_NOT_FOUND, "method not found", None)),
    }
}

fn post(session: &HttpSession, headers: HashMap<HeaderName, HeaderValue>, body: Vec<u8>) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(Bytes::from(body)));
    *request.method_mut() = hyper::http::Method::POST;
    if let Ok(uri) = session.uri.parse() {
        *request.uri_mut() = uri;
    }
    let h = request.headers_mut();
    for (name, value) in headers {
        h.insert(name, value);
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::ACCEPT, HeaderValue::from_static("application/json, text/event-stream"));
    if let Ok(id) = HeaderValue::from_str(&session.id) {
        h.insert("mcp-session-id", id);
    }
    if let Some(bearer) = &session.bearer
        && let Ok(value) = HeaderValue::from_str(&format!("Bearer {bearer}"))
    {
        h.insert(header::AUTHORIZATION, value);
    }
    request
}

/// The tool result answering call `id`, if `text` is one. Read straight into its type: the
/// general parse buffers the message and tries each kind of message, then each kind of result
/// (a tool result is the sixteenth), in turn. Anything else is left to it.
fn tool_answer(text: &[u8], id: &NumberOrString) -> Option<CallEnd> {
    /// `method` and `error` are read only to leave a message that mixes shapes to the general
    /// parse, which refuses it.
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "jsonrpc")]
        _version: JsonRpcVersion2_0,
        id: NumberOrString,
        result: CallToolResult,
        method: Option<serde::de::IgnoredAny>,
        error: Option<serde::de::IgnoredAny>,
    }
    let answer = serde_json::from_slice::<Answer>(text).ok()?;
    if answer.id != *id || answer.method.is_some() || answer.error.is_some() {
        return None;
    }
    Some(CallEnd::Answered(Box::new(ServerResult::CallToolResult(answer.result))))
}

fn ending(message: ServerJsonRpcMessage, id: &NumberOrString) -> Option<CallEnd> {
    match message {
        JsonRpcMessage::Response(r) if r.id == *id => Some(CallEnd::Answered(Box::new(r.result))),
        JsonRpcMessage::Error(e) if e.id.as_ref().is_none_or(|i| i == id) => Some(CallEnd::Refused(e.error)),
        _ => None,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;

    fn general(text: &str, id: &NumberOrString) -> Option<CallEnd> {
        ending(serde_json::from_str::<ServerJsonRpcMessage>(text).ok()?, id)
    }

    fn answered(end: Option<CallEnd>) -> Option<String> {
        match end? {
            CallEnd::Answered(result) => Some(format!("{result:?}")),
            _ => None,
        }
    }

    #[test]
    fn tool_answers_read_as_the_general_parse_reads_them() {
        let id = NumberOrString::Number(3);
        for text in [
            r#"{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"hi"}]}}"#,
            r#"{"jsonrpc":"2.0","id":3,"result":{"content":[],"structuredContent":{"a":[1,null]},"isError":true,"_meta":{"k":"v"}}}"#,
            r#"{"jsonrpc":"2.0","id":3,"result":{"resultType":"complete","content":[{"type":"text","text":"x"}]}}"#,
        ] {
            let fast = answered(tool_answer(text.as_bytes(), &id));
            assert!(fast.is_some(), "{text}");
            assert_eq!(fast, answered(general(text, &id)), "{text}");
        }
        // Left to the general parse: another call's answer, other kinds of result, mixed shapes.
        for text in [
            r#"{"jsonrpc":"2.0","id":4,"result":{"content":[]}}"#,
            r#"{"jsonrpc":"2.0","id":3,"result":{"task":{"taskId":"t","status":"working","createdAt":"2026-01-01T00:00:00Z","lastUpdatedAt":"2026-01-01T00:00:00Z","ttl":null}}}"#,
            r#"{"jsonrpc":"2.0","id":3,"result":{"content":[]},"error":{"code":1,"message":"m"}}"#,
            r#"{"jsonrpc":"2.0","id":3,"result":{"content":[]},"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32602,"message":"bad"}}"#,
        ] {
            assert!(tool_answer(text.as_bytes(), &id).is_none(), "{text}");
        }
    }

    /// The pooled client refuses an upstream whose certificate it cannot verify (the TLS server
    /// here answers every request, so a client that skipped verification would get an answer).
    #[tokio::test]
    async fn untrusted_upstream_certificates_are_refused() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(tls) = acceptor.accept(tcp).await else { continue };
                let answer = hyper::service::service_fn(|_| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"{}"))))
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), answer));
            }
        });
        let request = Request::get(format!("https://localhost:{port}/")).body(Full::default()).unwrap();
        let Err(refused) = PooledHttp::new().unwrap().connections.send(request).await else {
            panic!("an untrusted upstream was called");
        };
        let reason = error_chain(&refused);
        assert!(reason.contains("certificate"), "{reason}");
    }

    #[test]
    fn upstreams_behind_a_proxy_or_with_user_info_stay_on_rmcps_client() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut pooled = PooledHttp::new().unwrap();
        pooled.proxies = Arc::new(Matcher::builder().https("http://proxy.internal:3128").no("localhost").build());
        assert!(!pooled.serves("https://mcp.example.com/mcp"));
        assert!(pooled.serves("https://localhost:8443/mcp"));
        assert!(pooled.serves("http://mcp.example.com/mcp"));
        assert!(!pooled.serves("ftp://mcp.example.com/mcp"));
        assert!(!pooled.serves("https://user:secret@mcp.example.com/mcp"));
        pooled.proxies = Arc::new(Matcher::builder().build());
        assert!(pooled.serves("HTTPS://mcp.example.com/mcp"));
    }
}
