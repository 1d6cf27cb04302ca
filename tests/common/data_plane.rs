//! Starts the real `data-plane` binary next to a control plane, provisions projects through the
//! admin API, and connects real MCP clients (rmcp) to it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

use super::control_plane::ControlPlane;

pub struct DataPlane {
    pub child: Child,
    pub base: String,
    pub log: Arc<Mutex<String>>,
    pub audit_log: PathBuf,
}

/// The rmcp upstream fixture (built by `cargo test` as an example of this package).
pub fn fixture() -> String {
    example("upstream_fixture")
}

/// The upstream fixture serving streamable HTTP on a free loopback port (with `extra` arguments such
/// as `--tls CERT KEY`, and `env`), stopped when dropped, and the address it serves.
pub fn http_fixture(extra: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> (super::proc::Reaped, String) {
    let mut cmd = Command::new(fixture());
    cmd.args(["--http", "127.0.0.1:0"]).args(extra).stderr(Stdio::piped());
    for (name, value) in env {
        cmd.env(name, value);
    }
    let mut child = super::proc::Reaped(cmd.spawn().expect("spawn the upstream fixture"));
    let mut lines = BufReader::new(child.0.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("fixture log").unwrap();
        if let Some(a) = line.strip_prefix("listening on ") {
            break a.trim().to_string();
        }
    };
    // The rest of its log is read (and dropped), so that its writes never fail.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

/// An example of this package, built by `cargo test`.
pub fn example(name: &str) -> String {
    let exe = std::env::current_exe().expect("test exe");
    let debug_dir = exe.parent().and_then(|deps| deps.parent()).expect("target dir");
    let path = debug_dir.join("examples").join(name);
    assert!(path.exists(), "{} missing: run the tests with `cargo test` (it builds examples)", path.display());
    path.to_string_lossy().into_owned()
}

/// `@modelcontextprotocol/server-everything`, installed by `.ci/run` under tests/node.
pub fn everything() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node/node_modules/.bin/mcp-server-everything");
    assert!(path.exists(), "{} missing: run `npm ci --prefix tests/node`", path.display());
    path.to_string_lossy().into_owned()
}

pub fn node_bin(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node/node_modules/.bin").join(name);
    assert!(path.exists(), "{} missing: run `npm ci --prefix tests/node`", path.display());
    path.to_string_lossy().into_owned()
}

/// A stdio server entry running the fixture.
pub fn fixture_server(name: &str) -> Value {
    json!({"server_name": name, "config": {"command": fixture()}})
}

impl DataPlane {
    /// Starts a data plane that follows `cp`'s snapshot.
    pub fn start(cp: &ControlPlane, env: &[(&str, &str)]) -> Self {
        Self::start_in(cp.data_dir(), env)
    }

    /// Starts a data plane with data dir `dir` (its own, for one that pulls from a control plane).
    pub fn start_in(dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
        super::tls();
        let audit_log = dir.join(format!("audit-{}.jsonl", uuid::Uuid::new_v4()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_data-plane"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .env("MCPGW_DATA_DIR", dir)
            .env("MCPGW_GATEWAY_LISTEN", "127.0.0.1:0")
            .env("MCPGW_AUDIT_LOG", &audit_log)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn data-plane");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(i) = line.find("data plane listening on http") {
                        let _ = tx.send(line[i + "data plane listening on ".len()..].trim().to_string());
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let base = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("data plane did not start; log:\n{}", log.lock().unwrap()));
        DataPlane { child, base, log, audit_log }
    }

    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.base)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The audit log's records once `complete` holds for them (the log is written behind the
    /// calls, a few milliseconds later), or as they are after 5 s.
    pub fn audit_records(&self, complete: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
            let records: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            if complete(&records) || Instant::now() > deadline {
                return records;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the process ended, if it did within `limit`.
    pub fn exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// GET a plain endpoint (`/healthz`, `/readyz`, `/metrics`): status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        super::blocking(|| {
            let resp = reqwest::blocking::get(format!("{}{path}", self.base)).expect("request");
            (resp.status().as_u16(), resp.text().unwrap_or_default())
        })
    }

    /// Waits until `/readyz` reports at least `revision`.
    pub fn wait_for_revision(&self, revision: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, body) = self.get("/readyz");
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if v["revision"].as_u64().is_some_and(|r| r >= revision) {
                return;
            }
            assert!(Instant::now() < deadline, "data plane did not reach revision {revision}: {body}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the data plane serves the control plane's latest revision.
    pub fn sync(&self, cp: &ControlPlane) {
        self.wait_for_revision(cp.db_revision());
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        // SIGTERM first so the gateway stops its upstream process groups, then make sure.
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        if self.exit_within(Duration::from_secs(10)).is_some() {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates user `<tag>@example.com`, config `cfg-<tag>` with `servers`, project `proj-<tag>`, and a
/// key; returns the key's secret.
pub fn provision(cp: &ControlPlane, tag: &str, servers: Value) -> String {
    provision_with(cp, tag, json!({"name": format!("cfg-{tag}"), "servers": servers}))
}

/// Like [`provision`] with a whole config body (e.g. with `tool_naming`).
pub fn provision_with(cp: &ControlPlane, tag: &str, config: Value) -> String {
    let email = format!("{tag}@example.com");
    let name = config["name"].as_str().unwrap().to_string();
    cp.ok("POST", "/api/v1/users", Some(json!({"email": email})), 201);
    cp.ok("POST", "/api/v1/configs", Some(config), 201);
    cp.ok("POST", "/api/v1/projects", Some(json!({"name": format!("proj-{tag}"), "mcp_config": name})), 201);
    cp.ok("POST", &format!("/api/v1/projects/proj-{tag}/users"), Some(json!({"user": email})), 201);
    new_key(cp, tag)
}

/// Another key for project `proj-<tag>`; returns its secret.
pub fn new_key(cp: &ControlPlane, tag: &str) -> String {
    let created = cp.ok(
        "POST",
        "/api/v1/api-keys",
        Some(json!({"project": format!("proj-{tag}"), "user": format!("{tag}@example.com")})),
        201,
    );
    created["key"].as_str().unwrap().to_string()
}

pub type Client = RunningService<rmcp::RoleClient, ()>;

/// An rmcp client session to the gateway with `key`.
pub async fn connect(url: &str, key: &str) -> Result<Client, String> {
    super::tls();
    let config = StreamableHttpClientTransportConfig::with_uri(url).auth_header(key.to_string());
    let transport = StreamableHttpClientTransport::from_config(config);
    ().serve(transport).await.map_err(|e| e.to_string())
}

/// An rmcp client session straight to a stdio upstream (the direct path, for comparisons).
pub async fn connect_stdio(command: &str, args: &[&str]) -> Client {
    let mut cmd = tokio::process::Command::new(command);
    cmd.args(args);
    let transport = rmcp::transport::TokioChildProcess::new(cmd).expect("spawn upstream");
    ().serve(transport).await.expect("initialize upstream")
}

/// Calls `tool` with JSON `args`; the whole result as JSON, or the JSON-RPC error as `Err`.
pub async fn call(client: &Client, tool: &str, args: Value) -> Result<Value, String> {
    let mut params = rmcp::model::CallToolRequestParams::new(tool.to_string());
    params.arguments = args.as_object().cloned();
    client.call_tool(params).await.map(|r| serde_json::to_value(r).unwrap()).map_err(|e| e.to_string())
}

pub async fn tool_names(client: &Client) -> Vec<String> {
    client.list_all_tools().await.expect("tools/list").into_iter().map(|t| t.name.to_string()).collect()
}

/// The text of the first content item of a result.
pub fn text(result: &Value) -> String {
    result["content"][0]["text"].as_str().unwrap_or_default().to_string()
}

/// Blocking runtime for tests that mix the blocking admin client with async MCP clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Raw JSON-RPC POST to /mcp with optional headers; returns status and body text.
pub fn raw_post(url: &str, headers: &[(&str, &str)], body: &Value) -> (u16, String) {
    super::blocking(|| raw_post_blocking(url, headers, body))
}

fn raw_post_blocking(url: &str, headers: &[(&str, &str)], body: &Value) -> (u16, String) {
    super::tls();
    let client = reqwest::blocking::Client::new();
    let mut req = client
        .post(url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.body(body.to_string()).send().expect("request");
    (resp.status().as_u16(), resp.text().unwrap_or_default())
}

pub fn initialize_body() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}
    }})
}

/// Child processes of `pid` (direct children), from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) {
                // Field 4 (after the parenthesised name) is the parent pid.
                if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r)
                    && rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid)
                {
                    out.push(child);
                }
            }
        }
    }
    out
}

/// A hand-driven MCP session over raw HTTP, for requests no SDK would send (duplicate JSON keys,
/// odd names): `initialize`, then any body as a string, answers parsed from JSON or SSE.
pub struct RawSession {
    url: String,
    key: String,
    session: Option<String>,
    client: reqwest::blocking::Client,
}

impl RawSession {
    pub fn open(url: &str, key: &str) -> Self {
        super::tls();
        super::blocking(|| {
            let client = reqwest::blocking::Client::new();
            let mut s = RawSession { url: url.to_string(), key: key.to_string(), session: None, client };
            let resp = s.request(&initialize_body().to_string());
            s.session = resp.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
            assert_eq!(resp.status().as_u16(), 200, "initialize");
            let _ = s.request(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string());
            s
        })
    }

    fn request(&self, body: &str) -> reqwest::blocking::Response {
        self.request_with(body, &[])
    }

    fn request_with(&self, body: &str, headers: &[(&str, &str)]) -> reqwest::blocking::Response {
        self.post(body, headers).send().expect("request")
    }

    /// A POST of `body` on the session, with extra HTTP `headers`.
    fn post(&self, body: &str, headers: &[(&str, &str)]) -> reqwest::blocking::RequestBuilder {
        let mut req = self
            .client
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .header("Authorization", format!("Bearer {}", self.key));
        if let Some(id) = &self.session {
            req = req.header("Mcp-Session-Id", id).header("MCP-Protocol-Version", "2025-06-18");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(body.to_string())
    }

    /// Sends `body` and hangs up after `after`, before the answer comes.
    pub fn abandon(&self, body: &str, after: std::time::Duration) {
        super::blocking(|| {
            let sent = self.post(body, &[]).timeout(after).send();
            assert!(sent.is_err_and(|e| e.is_timeout()), "the answer came before the client hung up");
        })
    }

    /// The session id (for checking that it appears nowhere).
    pub fn session_id(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// Sends `body` with extra HTTP headers; the HTTP status and the JSON-RPC answer (if any).
    pub fn send_with(&self, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        super::blocking(|| {
            let resp = self.request_with(body, headers);
            let status = resp.status().as_u16();
            let text = resp.text().unwrap_or_default();
            let answer = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
                .chain(serde_json::from_str::<Value>(&text).ok())
                .find(|m| m.get("id").is_some())
                .unwrap_or(Value::Null);
            (status, answer)
        })
    }

    /// Sends `body` verbatim; the HTTP status and the JSON-RPC answer (if any).
    pub fn send(&self, body: &str) -> (u16, Value) {
        let (status, messages) = self.exchange(body);
        (status, messages.into_iter().find(|m| m.get("id").is_some()).unwrap_or(Value::Null))
    }

    /// Sends `body` verbatim; the HTTP status and every JSON-RPC message of the answer, in the
    /// order the gateway sent them.
    pub fn exchange(&self, body: &str) -> (u16, Vec<Value>) {
        let (status, _, messages) = self.exchange_typed(body);
        (status, messages)
    }

    /// [`Self::exchange`], with the answer's `Content-Type`.
    pub fn exchange_typed(&self, body: &str) -> (u16, String, Vec<Value>) {
        super::blocking(|| {
            let resp = self.request(body);
            let status = resp.status().as_u16();
            let content_type =
                resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let text = resp.text().unwrap_or_default();
            let mut messages: Vec<Value> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .collect();
            if messages.is_empty() {
                messages.extend(serde_json::from_str::<Value>(&text).ok());
            }
            (status, content_type, messages)
        })
    }
}
