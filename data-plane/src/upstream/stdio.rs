//! A stdio upstream's process and the JSON-RPC line transport over its pipes.
//!
//! rmcp's line transport drops a message longer than its limit and carries on, so the request it
//! answered would wait for its timeout. Here the limit is the gateway's response limit, and the
//! child's stdout passes through `BoundedLines`, which watches line lengths as bytes go by (nothing is
//! buffered): when a line is too long, the transport discards it as before, and right after it
//! `BoundedLines` hands the transport an error response for the same request id (read from the
//! line's first or last bytes), so the call fails at once with the size error and the process
//! stays in use.

use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};

use process_wrap::tokio::{ChildWrapper, CommandWrap};
use rmcp::RoleClient;
use rmcp::model::ErrorCode;
use rmcp::transport::Transport;
use rmcp::transport::async_rw::AsyncRwTransport;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};

/// How long a closing child may take to exit before it is terminated.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(3);
/// Bytes kept of each line's start and of an oversized line's end, to find its id.
const EDGE: usize = 256;
/// `error.data.mcpgw` of the answer that stands in for an oversized message.
const TOO_LARGE: &str = "response_too_large";

pub(super) struct ChildTransport {
    child: Option<Box<dyn ChildWrapper>>,
    transport: AsyncRwTransport<RoleClient, BoundedLines<ChildStdout>, ChildStdin>,
}

impl ChildTransport {
    /// Starts `command` with piped stdio; messages over `limit` bytes fail their request.
    pub fn spawn(mut command: CommandWrap, limit: usize) -> std::io::Result<(Self, Option<ChildStderr>)> {
        command.command_mut().stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn()?;
        let stdin = child.inner_mut().stdin().take().ok_or_else(|| std::io::Error::other("no stdin pipe"))?;
        let stdout = child.inner_mut().stdout().take().ok_or_else(|| std::io::Error::other("no stdout pipe"))?;
        let stderr = child.inner_mut().stderr().take();
        let transport =
            AsyncRwTransport::new_client(BoundedLines::new(stdout, limit), stdin).with_max_line_length(limit);
        Ok((ChildTransport { child: Some(child), transport }, stderr))
    }
}

impl Drop for ChildTransport {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            // The process group goes with it (npx -> node).
            rt.spawn(async move {
                let _ = Box::into_pin(child.kill()).await;
            });
        }
    }
}

impl Transport<RoleClient> for ChildTransport {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: rmcp::service::TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.transport.send(item)
    }

    fn receive(&mut self) -> impl Future<Output = Option<rmcp::service::RxJsonRpcMessage<RoleClient>>> + Send {
        self.transport.receive()
    }

    /// Closes stdin and lets the server exit by itself, then stops it.
    async fn close(&mut self) -> Result<(), Self::Error> {
        self.transport.close().await?;
        if let Some(mut child) = self.child.take()
            && tokio::time::timeout(EXIT_GRACE, child.wait()).await.is_err()
        {
            Box::into_pin(child.kill()).await?;
        }
        Ok(())
    }
}

/// The size of an oversized upstream message and the limit, from the error that stands in for it.
pub(crate) fn too_large(error: &rmcp::ErrorData) -> Option<(usize, usize)> {
    let data = error.data.as_ref()?;
    if data.get("mcpgw")? != TOO_LARGE {
        return None;
    }
    Some((data.get("size")?.as_u64()? as usize, data.get("limit")?.as_u64()? as usize))
}

/// Passes bytes through unchanged and, after a line longer than `limit` (newline included), adds
/// an error line answering the same request.
pub(super) struct BoundedLines<R> {
    inner: R,
    limit: usize,
    /// Length of the current line so far.
    len: usize,
    head: Vec<u8>,
    /// The last `EDGE` bytes of the current line.
    tail: Vec<u8>,
    /// Read and not yet handed out (from `taken` on).
    out: Vec<u8>,
    taken: usize,
}

impl<R> BoundedLines<R> {
    fn new(inner: R, limit: usize) -> Self {
        BoundedLines { inner, limit, len: 0, head: Vec::new(), tail: Vec::new(), out: Vec::new(), taken: 0 }
    }

    /// Queues `bytes` to be handed out, each oversized line followed by its stand-in answer.
    fn process(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (chunk, ends) = match bytes.iter().position(|b| *b == b'\n') {
                Some(i) => (&bytes[..=i], true),
                None => (bytes, false),
            };
            bytes = &bytes[chunk.len()..];
            self.out.extend_from_slice(chunk);
            if self.head.len() < EDGE {
                let take = (EDGE - self.head.len()).min(chunk.len());
                self.head.extend_from_slice(&chunk[..take]);
            }
            self.len += chunk.len();
            self.tail.extend_from_slice(&chunk[chunk.len().saturating_sub(EDGE)..]);
            let excess = self.tail.len().saturating_sub(EDGE);
            self.tail.drain(..excess);
            if ends {
                if self.len > self.limit {
                    let answer = self.stand_in();
                    self.out.extend_from_slice(&answer);
                }
                self.len = 0;
                self.head.clear();
                self.tail.clear();
            }
        }
    }

    /// The error answer for the oversized line just ended (empty when its id cannot be found).
    fn stand_in(&self) -> Vec<u8> {
        let size = self.len.saturating_sub(1);
        let Some(id) = request_id(&self.head, &self.tail) else {
            tracing::warn!(size, "an upstream message over the size limit answered no request that can be found");
            return Vec::new();
        };
        let message = format!("upstream response of {size} bytes exceeds the gateway's limit of {} bytes", self.limit);
        let answer = json!({"jsonrpc": "2.0", "id": id, "error": {
            "code": ErrorCode::INTERNAL_ERROR.0, "message": message,
            "data": {"mcpgw": TOO_LARGE, "size": size, "limit": self.limit}}});
        let mut line = answer.to_string().into_bytes();
        line.push(b'\n');
        line
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for BoundedLines<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.taken < this.out.len() {
                let n = (this.out.len() - this.taken).min(buf.remaining());
                buf.put_slice(&this.out[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.out.len() {
                    this.out.clear();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut scratch = [0u8; 32 * 1024];
            let mut read = ReadBuf::new(&mut scratch);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.process(read.filled());
        }
    }
}

/// The top-level `id` of a JSON-RPC message from its first bytes (`{"jsonrpc":"2.0","id":5,...`)
/// or its last (`...,"id":5}`): serialisers put it at one end or the other.
fn request_id(head: &[u8], tail: &[u8]) -> Option<Value> {
    id_in_head(head).or_else(|| id_in_tail(tail))
}

fn id_in_head(head: &[u8]) -> Option<Value> {
    let text = String::from_utf8_lossy(head);
    let mut s = text.trim_start().strip_prefix('{')?;
    // Members at the top level, up to the first one whose value does not end inside `head`.
    loop {
        s = s.trim_start();
        let (key, rest) = json_string(s)?;
        let rest = rest.trim_start().strip_prefix(':')?.trim_start();
        let (value, rest) = scalar(rest)?;
        if key == "id" {
            return Some(value);
        }
        s = rest.trim_start().strip_prefix(',')?;
    }
}

fn id_in_tail(tail: &[u8]) -> Option<Value> {
    let text = String::from_utf8_lossy(tail);
    let s = text.trim_end().strip_suffix('}')?.trim_end();
    // The last member's value, then its key.
    let value_start = if let Some(body) = s.strip_suffix('"') {
        let mut i = body.len();
        loop {
            let q = body[..i].rfind('"')?;
            let backslashes = body[..q].chars().rev().take_while(|c| *c == '\\').count();
            if backslashes % 2 == 0 {
                break q;
            }
            i = q;
        }
    } else {
        s.rfind(|c: char| !(c.is_ascii_digit() || c == '-' || c == '.' || c == 'e' || c == 'E' || c == '+'))? + 1
    };
    let (value, rest) = scalar(&s[value_start..])?;
    if !rest.is_empty() {
        return None;
    }
    let before = s[..value_start].trim_end().strip_suffix(':')?.trim_end().strip_suffix("\"id\"")?;
    let before = before.trim_end();
    (before.ends_with(',') || before.ends_with('{')).then_some(value)
}

/// A JSON string at the start of `s`: its value and what follows.
fn json_string(s: &str) -> Option<(String, &str)> {
    let mut de = serde_json::Deserializer::from_str(s).into_iter::<String>();
    let value = de.next()?.ok()?;
    Some((value, &s[de.byte_offset()..]))
}

/// A JSON string or number at the start of `s` (what an id can be): its value and what follows.
fn scalar(s: &str) -> Option<(Value, &str)> {
    if s.starts_with('"') {
        let (v, rest) = json_string(s)?;
        return Some((Value::String(v), rest));
    }
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '-' || c == '.' || c == 'e' || c == 'E' || c == '+'))
        .unwrap_or(s.len());
    let n: serde_json::Number = s[..end].parse().ok()?;
    Some((Value::Number(n), &s[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn ids_are_found_at_either_end() {
        assert_eq!(
            id_in_head(br#"{"jsonrpc":"2.0","id":5,"result":{"content":[{"type":"text","text":"xxxx"#),
            Some(json!(5))
        );
        assert_eq!(id_in_head(br#" { "id" : "a\"b", "result""#), Some(json!("a\"b")));
        assert_eq!(id_in_head(br#"{"result":{"content":[{"id":9"#), None, "a nested id is not the request's");
        assert_eq!(id_in_tail(br#"xxxx"}]},"jsonrpc":"2.0","id":17}"#), Some(json!(17)));
        assert_eq!(id_in_tail(br#"x"},"id":"r-1"}  "#), Some(json!("r-1")));
        assert_eq!(id_in_tail(br#"x","meta":{"id":3}}"#), None, "a nested id is not the request's");
    }

    #[tokio::test]
    async fn an_oversized_line_is_followed_by_an_error_for_its_request() {
        let big = format!("{{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{{\"text\":\"{}\"}}}}\n", "x".repeat(100));
        let small = "{\"jsonrpc\":\"2.0\",\"id\":4,\"result\":{}}\n";
        let input = format!("{small}{big}{small}{big}");
        let mut reader = BoundedLines::new(input.as_bytes(), 64);
        let mut out = String::new();
        reader.read_to_string(&mut out).await.unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 6, "{out}");
        assert_eq!(lines[0], small.trim_end());
        assert_eq!(lines[1], big.trim_end(), "bytes pass through unchanged");
        let stand_in: Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(stand_in["id"], 3);
        let error: rmcp::ErrorData = serde_json::from_value(stand_in["error"].clone()).unwrap();
        assert_eq!(too_large(&error), Some((big.len() - 1, 64)));
        assert!(error.message.contains("exceeds the gateway's limit of 64 bytes"));
        assert_eq!(lines[3], small.trim_end());
        assert_eq!(serde_json::from_str::<Value>(lines[5]).unwrap()["id"], 3);
    }
}
