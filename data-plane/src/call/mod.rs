//! The tool-call pipeline. A call is one [`ToolCall`], fixed when it starts (caller, catalog
//! revision, server, upstream, deadline, origin), taken through its stages in order:
//!
//! authorize -> resolve -> integrity -> guard before -> upstream -> guard after -> record
//!
//! `tools/call` and `gateway_call_tools` both run it, so a batched call is checked, forwarded,
//! counted and audited exactly as a direct one.

mod authorize;
mod guard;
mod integrity;
mod record;
mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, CallToolResponse, ContentBlock, ProgressToken, RequestId, ResourceContents};
use rmcp::{ErrorData as McpError, Peer, RoleServer};
use shared::server::ServerSpec;
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;
use crate::catalog::ConfigView;
use crate::gateway::GatewayService;
use crate::upstream::relay::ProgressSink;
use crate::upstream::{Upstream, UpstreamError};

pub(crate) use authorize::{admit, allowed, refused, route};
pub(crate) use record::{CallSummary, call_outcome, record};
pub(crate) use upstream::upstream_meta;

/// The client request a tool call serves: where its progress goes, and what server-to-client
/// requests of the upstream relate to.
pub(crate) struct CallOrigin<'a> {
    pub peer: &'a Peer<RoleServer>,
    pub request: RequestId,
    pub progress: Option<ProgressToken>,
    /// Set when the call is answered without rmcp: its progress goes into its own response.
    pub progress_into: Option<crate::direct::ProgressInto>,
}

impl CallOrigin<'_> {
    /// Where the call's progress goes to its client.
    fn progress_sink(&self) -> ProgressSink {
        match &self.progress_into {
            Some(response) => ProgressSink::Response(response.0.clone()),
            None => ProgressSink::Session(self.peer.clone()),
        }
    }
}

/// One authorized tool call, as every stage after `authorize` sees it.
pub(crate) struct ToolCall<'a> {
    svc: &'a GatewayService,
    caller: &'a Principal,
    config: &'a ConfigView,
    spec: Arc<ServerSpec>,
    /// The tool's name at the upstream.
    tool: &'a str,
    /// Looked up once: the upstream the call is checked against is the one it is sent to.
    upstream: Arc<Upstream>,
    started: Instant,
    /// The tool's timeout counted from `started`: opening the upstream, checking its tools,
    /// sending and waiting all end there.
    deadline: tokio::time::Instant,
    timeout_ms: u64,
    origin: Option<&'a CallOrigin<'a>>,
    cancel: &'a CancellationToken,
}

impl<'a> ToolCall<'a> {
    /// The resolve stage: the upstream and the deadline of a call `authorize` admitted.
    #[allow(clippy::too_many_arguments)]
    pub fn resolve(
        svc: &'a GatewayService,
        caller: &'a Principal,
        config: &'a ConfigView,
        spec: Arc<ServerSpec>,
        tool: &'a str,
        origin: Option<&'a CallOrigin<'a>>,
        cancel: &'a CancellationToken,
        started: Instant,
    ) -> Self {
        let upstream = svc.upstream(config.id, &spec);
        let timeout_ms = spec.timeouts.tools.get(tool).copied().unwrap_or(spec.timeouts.call_ms);
        let deadline = tokio::time::Instant::from_std(started + Duration::from_millis(timeout_ms));
        ToolCall { svc, caller, config, spec, tool, upstream, started, deadline, timeout_ms, origin, cancel }
    }

    /// Runs the stages after resolve; whatever the outcome, the record stage counts and audits it.
    pub async fn run(&self, request: CallToolRequestParams) -> Result<CallToolResponse, CallFailure> {
        let recorder = record::Recorder::start(self, &request);
        let result = self.checked(request).await;
        recorder.finish(self, &result);
        result
    }

    async fn checked(&self, mut request: CallToolRequestParams) -> Result<CallToolResponse, CallFailure> {
        integrity::check(self).await?;
        let Some(guards) = guard::policy(self)? else { return upstream::forward(self, request).await };
        let screened = guard::before(self, &guards, &mut request).await?;
        let response = upstream::forward(self, request).await?;
        guard::after(self, &guards, screened, response).await
    }

    /// The failure of a call whose deadline passed.
    fn timed_out(&self) -> CallFailure {
        CallFailure::Upstream(UpstreamError::Timeout { server: self.spec.server_name.clone(), ms: self.timeout_ms })
    }
}

/// Why a call produced no upstream result.
#[derive(Debug)]
pub enum CallFailure {
    Upstream(UpstreamError),
    /// The upstream answered with a JSON-RPC error: passed through as is.
    Protocol(McpError),
    Cancelled,
    TooLarge {
        size: usize,
        limit: usize,
    },
    /// Refused by a guardrail policy.
    Blocked(crate::guard::Blocked),
    /// The tool (or its server) is held back by an integrity check.
    Held(String),
    /// Not a tool this caller can see.
    Unknown,
}

impl CallFailure {
    pub fn message(&self) -> String {
        match self {
            CallFailure::Upstream(e) => e.to_string(),
            CallFailure::Protocol(e) => e.message.to_string(),
            CallFailure::Cancelled => "cancelled by the client".into(),
            CallFailure::TooLarge { size, limit } => {
                format!("upstream response of {size} bytes exceeds the gateway's limit of {limit} bytes")
            }
            CallFailure::Blocked(b) => b.message(),
            CallFailure::Held(reason) => reason.clone(),
            CallFailure::Unknown => "unknown tool".into(),
        }
    }

    /// Outcome label for metrics, the audit log and `gateway_call_tools`.
    pub fn outcome(&self) -> &'static str {
        match self {
            CallFailure::Cancelled => "cancelled",
            CallFailure::Upstream(UpstreamError::Timeout { .. }) => "timeout",
            CallFailure::Blocked(_) | CallFailure::Held(_) => "blocked",
            CallFailure::Unknown => "denied",
            _ => "error",
        }
    }
}

/// Bytes of payload in a response (text, binary data, structured content), to enforce the cap.
fn response_size(response: &CallToolResponse) -> usize {
    let CallToolResponse::Complete(result) = response else { return 0 };
    let content: usize = result.content.iter().map(content_size).sum();
    content + result.structured_content.as_ref().map_or(0, json_size)
}

/// The length of `value` as JSON text, counted without building the text.
fn json_size(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

fn content_size(block: &ContentBlock) -> usize {
    match block {
        ContentBlock::Text(t) => t.text.len(),
        ContentBlock::Image(i) => i.data.len(),
        ContentBlock::Audio(a) => a.data.len(),
        ContentBlock::Resource(r) => match &r.resource {
            ResourceContents::TextResourceContents { text, .. } => text.len(),
            ResourceContents::BlobResourceContents { blob, .. } => blob.len(),
            _ => 0,
        },
        ContentBlock::ResourceLink(l) => l.uri.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_size_is_the_length_of_the_json_text() {
        let value = serde_json::json!({"message": "héllo \"quoted\"\n", "n": [1, 2.5, null], "nested": {"a": true}});
        assert_eq!(json_size(&value), serde_json::to_vec(&value).unwrap().len());
        assert_eq!(json_size(&serde_json::Map::new()), 2);
    }
}
