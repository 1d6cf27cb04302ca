//! `mcpgw-bench`: the gateway's overhead against the direct path, on loopback, with real processes.
//!
//! Starts an rmcp echo upstream (streamable HTTP, and stdio), the `control-plane` and `data-plane`
//! binaries found next to this one, provisions a config through the admin API, then drives MCP
//! client sessions calling a tool with distinct arguments, alternating direct and gateway runs so
//! drift affects both; the http scenario also through data planes exporting every trace, and 1%
//! of them, to an OTLP endpoint that accepts everything. Also measures reload latency, key
//! verification, a 100,000-key snapshot and memory. Build everything first: `cargo build --release && target/release/mcpgw-bench`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rmcp::model::{CallToolRequestParams, CallToolResult, ContentBlock, ListToolsResult, PaginatedRequestParams, Tool};
use rmcp::service::{RequestContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ErrorData as McpError, RoleClient, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};

const ADMIN_KEY: &str = "bench-admin-key-0123456789abcdef0123456789abcdef";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("upstream-http") => return upstream(true),
        Some("upstream-stdio") => return upstream(false),
        Some("otlp-sink") => return otlp_sink(),
        _ => {}
    }
    let opts = Options::parse(&args[1..])?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(opts))
}

struct Options {
    seconds: f64,
    levels: Vec<usize>,
    json: bool,
    large: bool,
    /// Which call scenarios to run (all when empty).
    scenarios: Vec<String>,
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut o = Options { seconds: 3.0, levels: vec![1, 16, 64], json: false, large: true, scenarios: vec![] };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--seconds" => o.seconds = it.next().context("--seconds N")?.parse()?,
                "--levels" => {
                    o.levels =
                        it.next().context("--levels 1,16,64")?.split(',').map(str::parse).collect::<Result<_, _>>()?
                }
                "--scenarios" => {
                    o.scenarios = it
                        .next()
                        .context("--scenarios http,http-traced-100%,http-traced-1%,stdio,stdio-stdio,guardrails-1KiB,http-raw,stdio-raw,replicas")?
                        .split(',')
                        .map(String::from)
                        .collect()
                }
                "--json" => o.json = true,
                "--no-large" => o.large = false,
                "-h" | "--help" => {
                    println!(
                        "mcpgw-bench [--seconds 3] [--levels 1,16,64] [--scenarios http,http-traced-100%,http-traced-1%,stdio,stdio-stdio,guardrails-1KiB,http-raw,stdio-raw,replicas] [--json] [--no-large]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument `{other}` (see --help)"),
            }
        }
        Ok(o)
    }
}

// ---------------------------------------------------------------------------------------------
// The upstream: one `echo` tool, over streamable HTTP or stdio.

#[derive(Clone)]
struct Echo;

impl ServerHandler for Echo {
    fn get_info(&self) -> rmcp::model::ServerConfig {
        let caps = rmcp::model::ServerCapabilities::builder().enable_tools().build();
        rmcp::model::ServerConfig::new(caps)
    }

    async fn list_tools(
        &self,
        _r: Option<PaginatedRequestParams>,
        _c: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let schema = json!({"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]});
        let schema = Arc::new(schema.as_object().cloned().unwrap_or_default());
        Ok(ListToolsResult::with_all_items(vec![Tool::new("echo", "Echo the message back", schema)]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _c: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, McpError> {
        let message = request.arguments.as_ref().and_then(|a| a.get("message")).and_then(Value::as_str).unwrap_or("");
        Ok(CallToolResult::success(vec![ContentBlock::text(message.to_string())]).into())
    }
}

fn upstream(http: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        if http {
            use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
            use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            eprintln!("listening on http://{}", listener.local_addr()?);
            let service = StreamableHttpService::new(
                || Ok(Echo),
                Arc::new(LocalSessionManager::default()),
                StreamableHttpServerConfig::default(),
            );
            if std::env::var_os("BENCH_UPSTREAM_NODELAY").is_some() {
                let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                axum::serve(listener, axum::Router::new().route_service("/mcp", service)).await?;
            } else {
                axum::serve(listener, axum::Router::new().route_service("/mcp", service)).await?;
            }
        } else {
            Echo.serve(rmcp::transport::io::stdio()).await?.waiting().await?;
        }
        Ok(())
    })
}

/// An OTLP/HTTP endpoint that accepts every export (answers an empty `ExportTraceServiceResponse`)
/// and keeps nothing: what a collector costs the data plane, without a collector.
fn otlp_sink() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        eprintln!("listening on http://{}", listener.local_addr()?);
        let accept = axum::routing::post(|_body: axum::body::Bytes| async {
            ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
        });
        axum::serve(listener, axum::Router::new().route("/v1/traces", accept)).await?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// A child process killed on drop; `addr` is what it logged after `marker`.
struct Proc {
    child: Child,
    addr: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn start(mut cmd: Command, marker: &str) -> anyhow::Result<Proc> {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().context("spawn")?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let marker = marker.to_string();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && let Some(i) = line.find(&marker) {
                    let _ = tx.send(line[i + marker.len()..].trim().to_string());
                    sent = true;
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(60)).context("the process did not start")?;
        Ok(Proc { child, addr })
    }

    /// Peak and current resident memory in KiB (Linux).
    fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }
}

/// CPU time (user + system) process `pid` used so far, in microseconds (Linux, 100 ticks per second).
fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is first, utime 12th, stime 13th.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) * 10_000
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    if !path.exists() {
        bail!("{} not found: build the workspace first (`cargo build --release`)", path.display());
    }
    Ok(path)
}

/// Replicas share this, so a session opened on one is continued by any (the `replicas` rows).
const SESSION_SECRET: &str = "mcpgw-bench-session-secret-0123456789abcdef";

fn data_plane(data_dir: &Path, snapshot: &Path) -> anyhow::Result<Proc> {
    data_plane_with(data_dir, snapshot, &[])
}

/// A data plane with extra environment (trace export).
fn data_plane_with(data_dir: &Path, snapshot: &Path, env: &[(&str, &str)]) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(sibling("data-plane")?);
    cmd.envs(env.iter().copied());
    cmd.env("MCPGW_DATA_DIR", data_dir)
        .env("MCPGW_SESSION_SECRET", SESSION_SECRET)
        .env("MCPGW_SNAPSHOT_PATH", snapshot)
        .env("MCPGW_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("MCPGW_MAX_SESSIONS_PER_KEY", "5000")
        .env("RUST_LOG", "warn,data_plane=info");
    Proc::start(cmd, "data plane listening on ")
}

// ---------------------------------------------------------------------------------------------
// Admin API and MCP clients.

struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(ADMIN_KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path}: {status} {body}");
        }
        Ok(body)
    }
}

type Client = RunningService<RoleClient, ()>;

async fn connect(url: &str, key: Option<&str>) -> anyhow::Result<Client> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_string());
    if let Some(k) = key {
        config = config.auth_header(k.to_string());
    }
    Ok(().serve(StreamableHttpClientTransport::from_config(config)).await?)
}

/// A session through a gateway of its own run over stdio (`data-plane stdio`), and that process's
/// id.
async fn connect_gateway_stdio(dir: &Path, snapshot: &Path, key: &str) -> anyhow::Result<(Client, u32)> {
    let mut cmd = tokio::process::Command::new(sibling("data-plane")?);
    cmd.arg("stdio")
        .env("MCPGW_API_KEY", key)
        .env("MCPGW_DATA_DIR", dir)
        .env("MCPGW_SNAPSHOT_PATH", snapshot)
        .env("MCPGW_AUDIT_LOG", dir.join(format!("audit-stdio-{}.jsonl", uuid::Uuid::new_v4())))
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null());
    let transport = rmcp::transport::TokioChildProcess::new(cmd)?;
    let pid = transport.id().context("the gateway process has no id")?;
    Ok((().serve(transport).await?, pid))
}

async fn connect_stdio(exe: &Path) -> anyhow::Result<Client> {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("upstream-stdio");
    Ok(().serve(rmcp::transport::TokioChildProcess::new(cmd)?).await?)
}

async fn call(client: &Client, tool: &str, message: String) -> anyhow::Result<()> {
    let mut params = CallToolRequestParams::new(tool.to_string());
    params.arguments = json!({ "message": message }).as_object().cloned();
    let result = client.call_tool(params).await?;
    if result.is_error == Some(true) {
        bail!("{tool} failed: {:?}", result.content);
    }
    Ok(())
}

/// Latencies in microseconds of every call made by `clients` in `seconds`.
async fn drive(clients: &[Arc<Client>], tool: &str, payload: usize, seconds: f64) -> anyhow::Result<Run> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks = clients.iter().enumerate().map(|(n, client)| {
        let client = client.clone();
        let tool = tool.to_string();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let pad = prose(payload);
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                call(&client, &tool, format!("{n}-{i}-{pad}")).await?;
                latencies.push(t.elapsed().as_micros() as u64);
                i += 1;
            }
            Ok::<_, anyhow::Error>(latencies)
        })
    });
    gather(tasks, started).await
}

/// The latencies of every task of a run, as one run that began at `started`.
async fn gather(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<anyhow::Result<Vec<u64>>>>,
    started: Instant,
) -> anyhow::Result<Run> {
    let mut all = Vec::new();
    for t in futures::future::join_all(tasks).await {
        all.extend(t??);
    }
    Ok(Run::new(all, started.elapsed()))
}

/// One session, 16 keep-alive connections, raw HTTP/1.1: a client that costs almost nothing, so the
/// rate shows what the gateway and the upstream can serve rather than what rmcp clients can send.
const RAW_CONNECTIONS: usize = 16;

async fn raw_comparison(
    opts: &Options,
    upstream: &Proc,
    upstream_url: &str,
    gateway: &Proc,
    gateway_url: &str,
    key: &str,
) -> anyhow::Result<Comparison> {
    let direct = RawSession::open(upstream_url, None).await?;
    let via = RawSession::open(gateway_url, Some(key)).await?;
    direct.drive("echo", 0.3).await?;
    via.drive("fast__echo", 0.3).await?;
    let half = opts.seconds / 2.0;
    let d1 = measured(upstream, direct.drive("echo", half)).await?;
    let g1 = measured(gateway, via.drive("fast__echo", half)).await?;
    let g2 = measured(gateway, via.drive("fast__echo", half)).await?;
    let d2 = measured(upstream, direct.drive("echo", half)).await?;
    Ok(Comparison::of("http-raw", RAW_CONNECTIONS, [d1, d2], [g1, g2], true))
}

/// `stdio-raw`: the stdio scenario at 16 sessions with the near-free client on the gateway's side,
/// so that both sides' clients cost about the same (rmcp over pipes directly, raw HTTP/1.1 on kept
/// connections through the gateway) and the ratio shows what the gateway's stdio path costs.
async fn stdio_raw_comparison(
    opts: &Options,
    me: &Path,
    gateway: &Proc,
    gateway_url: &str,
    key: &str,
) -> anyhow::Result<Comparison> {
    let direct: Vec<Arc<Client>> = futures::future::try_join_all((0..RAW_CONNECTIONS).map(|_| connect_stdio(me)))
        .await?
        .into_iter()
        .map(Arc::new)
        .collect();
    let via = RawSession::open(gateway_url, Some(key)).await?;
    drive(&direct, "echo", 16, 0.3).await?;
    via.drive("stdio__echo", 0.3).await?;
    let half = opts.seconds / 2.0;
    let d1 = measured_in(&[], drive(&direct, "echo", 16, half)).await?;
    let g1 = measured(gateway, via.drive("stdio__echo", half)).await?;
    let g2 = measured(gateway, via.drive("stdio__echo", half)).await?;
    let d2 = measured_in(&[], drive(&direct, "echo", 16, half)).await?;
    for c in direct {
        if let Ok(c) = Arc::try_unwrap(c) {
            let _ = c.cancel().await;
        }
    }
    Ok(Comparison::of("stdio-raw", RAW_CONNECTIONS, [d1, d2], [g1, g2], false))
}

/// An MCP session driven by hand over HTTP/1.1 (hyper), answers read to their end.
struct RawSession {
    url: hyper::Uri,
    headers: Vec<(&'static str, String)>,
}

impl RawSession {
    async fn open(url: &str, key: Option<&str>) -> anyhow::Result<RawSession> {
        let mut headers = vec![
            ("content-type", "application/json".to_string()),
            ("accept", "application/json, text/event-stream".to_string()),
        ];
        if let Some(key) = key {
            headers.push(("authorization", format!("Bearer {key}")));
        }
        let http = reqwest::Client::new();
        let mut init = http.post(url).json(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench-raw", "version": "1"}}}));
        for (k, v) in &headers {
            init = init.header(*k, v);
        }
        let answer = init.send().await?;
        let id = answer.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
        let _ = answer.bytes().await?;
        let id = id.context("initialize gave no session id")?;
        headers.push(("mcp-session-id", id));
        headers.push(("mcp-protocol-version", "2025-06-18".to_string()));
        let mut initialized = http.post(url).body(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        for (k, v) in &headers {
            initialized = initialized.header(*k, v);
        }
        initialized.send().await?.error_for_status()?;
        Ok(RawSession { url: url.parse()?, headers })
    }

    /// Every connection calls `tool` with distinct arguments, one call at a time, for `seconds`.
    async fn drive(&self, tool: &str, seconds: f64) -> anyhow::Result<Run> {
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let started = Instant::now();
        let tasks = (0..RAW_CONNECTIONS).map(|n| {
            let (url, headers, tool) = (self.url.clone(), self.headers.clone(), tool.to_string());
            tokio::spawn(async move {
                let authority = url.authority().context("url authority")?.as_str().to_string();
                let stream = tokio::net::TcpStream::connect(&authority).await?;
                stream.set_nodelay(true)?;
                let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                let mut latencies = Vec::new();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    // Ids are unique in the session across its connections.
                    let id = (n as u64) << 40 | (i + 1);
                    let body = format!(
                        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{"message":"{n}-{i}"}}}}}}"#
                    );
                    let mut request = hyper::Request::post(url.clone()).header("host", &authority);
                    for (k, v) in &headers {
                        request = request.header(*k, v);
                    }
                    let request = request.body(http_body_util::Full::new(hyper::body::Bytes::from(body)))?;
                    let t = Instant::now();
                    let response = sender.send_request(request).await?;
                    anyhow::ensure!(response.status().is_success(), "call answered {}", response.status());
                    let answer = http_body_util::BodyExt::collect(response.into_body()).await?.to_bytes();
                    anyhow::ensure!(
                        memchr_result(&answer),
                        "no result in the answer: {}",
                        String::from_utf8_lossy(&answer[..answer.len().min(300)])
                    );
                    latencies.push(t.elapsed().as_micros() as u64);
                    i += 1;
                }
                Ok::<_, anyhow::Error>(latencies)
            })
        });
        gather(tasks, started).await
    }
}

/// Whether an answer (JSON or an SSE stream) carries a JSON-RPC result.
fn memchr_result(answer: &[u8]) -> bool {
    answer.windows(9).any(|w| w == b"\"result\":")
}

/// `bytes` of ordinary words: what a real argument looks like to the detectors.
fn prose(bytes: usize) -> String {
    const WORDS: [&str; 12] =
        ["the", "quarterly", "report", "shows", "steady", "growth", "in", "sales", "for", "the", "northern", "region"];
    let mut out = String::with_capacity(bytes + 16);
    for w in WORDS.iter().cycle() {
        if out.len() >= bytes {
            break;
        }
        out.push_str(w);
        out.push(' ');
    }
    out.truncate(bytes);
    out
}

#[derive(Clone, serde::Serialize)]
struct Run {
    calls: usize,
    calls_per_sec: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
}

impl Run {
    fn new(mut latencies: Vec<u64>, took: Duration) -> Run {
        latencies.sort_unstable();
        let q = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        Run {
            calls: latencies.len(),
            calls_per_sec: latencies.len() as f64 / took.as_secs_f64(),
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
        }
    }

    /// Two runs of the same kind as one (calls add up; percentiles averaged).
    fn merge(a: &Run, b: &Run) -> Run {
        let avg = |x: u64, y: u64| (x + y) / 2;
        Run {
            calls: a.calls + b.calls,
            calls_per_sec: (a.calls_per_sec + b.calls_per_sec) / 2.0,
            p50_us: avg(a.p50_us, b.p50_us),
            p90_us: avg(a.p90_us, b.p90_us),
            p99_us: avg(a.p99_us, b.p99_us),
        }
    }
}

#[derive(serde::Serialize)]
struct Comparison {
    scenario: String,
    sessions: usize,
    direct: Run,
    gateway: Run,
    p50_overhead_us: i64,
    p99_overhead_us: i64,
    throughput_ratio: f64,
    /// CPU the data plane spent per gateway call.
    gateway_cpu_us_per_call: f64,
    /// CPU the HTTP upstream spent per direct call (not measured for stdio, where each direct
    /// session has its own process).
    upstream_cpu_us_per_call: Option<f64>,
    /// CPU the benchmark's own clients spent per direct call.
    client_cpu_us_per_call: f64,
    /// CPU the benchmark's own clients spent per gateway call (always over HTTP: for stdio, this
    /// is what the clients alone cost before the gateway does anything).
    client_cpu_us_per_gateway_call: f64,
}

/// A run, with the CPU time its server and this process (the clients) spent during it.
struct Measured {
    run: Run,
    server_cpu_us: u64,
    client_cpu_us: u64,
}

async fn measured(server: &Proc, run: impl Future<Output = anyhow::Result<Run>>) -> anyhow::Result<Measured> {
    measured_in(&[server.child.id()], run).await
}

/// [`measured`] with the server's CPU summed over the processes `servers`.
async fn measured_in(servers: &[u32], run: impl Future<Output = anyhow::Result<Run>>) -> anyhow::Result<Measured> {
    let server_cpu = || servers.iter().map(|&pid| cpu_us(pid)).sum::<u64>();
    let (server_before, own_before) = (server_cpu(), cpu_us(std::process::id()));
    let run = run.await?;
    Ok(Measured {
        run,
        server_cpu_us: server_cpu() - server_before,
        client_cpu_us: cpu_us(std::process::id()) - own_before,
    })
}

impl Comparison {
    /// Two direct and two gateway runs of a scenario; `upstream_measured` when the direct runs'
    /// server is the measured upstream process.
    fn of(
        scenario: &str,
        sessions: usize,
        direct: [Measured; 2],
        gateway: [Measured; 2],
        upstream_measured: bool,
    ) -> Comparison {
        let (direct_run, gateway_run) =
            (Run::merge(&direct[0].run, &direct[1].run), Run::merge(&gateway[0].run, &gateway[1].run));
        let per_call = |cpu: u64, run: &Run| cpu as f64 / run.calls.max(1) as f64;
        let server = |m: &[Measured; 2]| m[0].server_cpu_us + m[1].server_cpu_us;
        let client = |m: &[Measured; 2]| m[0].client_cpu_us + m[1].client_cpu_us;
        Comparison {
            scenario: scenario.to_string(),
            sessions,
            p50_overhead_us: gateway_run.p50_us as i64 - direct_run.p50_us as i64,
            p99_overhead_us: gateway_run.p99_us as i64 - direct_run.p99_us as i64,
            throughput_ratio: gateway_run.calls_per_sec / direct_run.calls_per_sec,
            gateway_cpu_us_per_call: per_call(server(&gateway), &gateway_run),
            upstream_cpu_us_per_call: upstream_measured.then(|| per_call(server(&direct), &direct_run)),
            client_cpu_us_per_call: per_call(client(&direct), &direct_run),
            client_cpu_us_per_gateway_call: per_call(client(&gateway), &gateway_run),
            direct: direct_run,
            gateway: gateway_run,
        }
    }
}

// ---------------------------------------------------------------------------------------------

async fn run(opts: Options) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("mcpgw-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = Cleanup(dir.clone());
    let snapshot = dir.join("snapshot.json");

    let upstream = Proc::start(
        {
            let mut c = Command::new(&me);
            c.arg("upstream-http");
            c
        },
        "listening on ",
    )?;
    let upstream_url = format!("{}/mcp", upstream.addr);
    // The same echo server with TCP_NODELAY, so a client that keeps its connection (http-raw) is
    // not held 40 ms by delayed ACKs: the fast upstream that scenario measures against.
    let fast = Proc::start(
        {
            let mut c = Command::new(&me);
            c.arg("upstream-http").env("BENCH_UPSTREAM_NODELAY", "1");
            c
        },
        "listening on ",
    )?;
    let fast_url = format!("{}/mcp", fast.addr);
    let control = Proc::start(
        {
            let mut c = Command::new(sibling("control-plane")?);
            c.env("MCPGW_DATA_DIR", &dir)
                .env("MCPGW_CONTROL_LISTEN", "127.0.0.1:0")
                .env("MCPGW_ADMIN_API_KEY", ADMIN_KEY)
                .env("RUST_LOG", "info");
            c
        },
        "control plane listening on ",
    )?;
    let admin = Admin { base: control.addr.clone(), http: reqwest::Client::new() };
    let guarded = json!({"enabled": true, "block": ["injection_attack", "pii", "keyword_detector", "sponge_attack"]});
    let servers = json!([
        {"server_name": "http", "config": {"url": upstream_url}},
        {"server_name": "stdio", "config": {"command": me.to_string_lossy(), "args": ["upstream-stdio"]}},
        {"server_name": "guarded", "config": {"url": upstream_url},
         "input_guardrails_policy": guarded, "output_guardrails_policy": guarded},
        {"server_name": "reload", "config": {"url": upstream_url}},
        {"server_name": "fast", "config": {"url": fast_url}},
    ]);
    use reqwest::Method;
    admin.call(Method::POST, "/api/v1/users", Some(json!({"email": "bench@example.com"}))).await?;
    admin.call(Method::POST, "/api/v1/configs", Some(json!({"name": "bench", "servers": servers}))).await?;
    admin.call(Method::POST, "/api/v1/projects", Some(json!({"name": "bench", "mcp_config": "bench"}))).await?;
    admin.call(Method::POST, "/api/v1/projects/bench/users", Some(json!({"user": "bench@example.com"}))).await?;
    let new_key = || async {
        let k = admin
            .call(Method::POST, "/api/v1/api-keys", Some(json!({"project": "bench", "user": "bench@example.com"})))
            .await?;
        Ok::<_, anyhow::Error>(k["key"].as_str().context("key")?.to_string())
    };
    let key = new_key().await?;
    let gateway = data_plane(&dir, &snapshot)?;
    let gateway_url = format!("{}/mcp", gateway.addr);
    wait_ready(&gateway.addr, None).await?;

    // The http scenario again through data planes exporting every trace, and 1% of them, to an
    // OTLP endpoint that accepts everything.
    let wanted = |scenario: &str| opts.scenarios.is_empty() || opts.scenarios.iter().any(|s| s == scenario);
    let traced = if wanted("http-traced-100%") || wanted("http-traced-1%") {
        let sink = Proc::start(
            {
                let mut c = Command::new(&me);
                c.arg("otlp-sink");
                c
            },
            "listening on ",
        )?;
        let traced = |ratio: &str, audit: &str| {
            let env = [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.addr.as_str()),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", ratio),
                ("OTEL_BSP_SCHEDULE_DELAY", "1000"),
                // Traces alone: the audit log goes to its file as in the other scenarios.
                ("OTEL_LOGS_EXPORTER", "none"),
                ("MCPGW_AUDIT_LOG", audit),
            ];
            data_plane_with(&dir, &snapshot, &env)
        };
        let all = traced("1.0", &dir.join("audit-traced-all.jsonl").to_string_lossy())?;
        let some = traced("0.01", &dir.join("audit-traced-some.jsonl").to_string_lossy())?;
        wait_ready(&all.addr, None).await?;
        wait_ready(&some.addr, None).await?;
        Some((sink, all, some))
    } else {
        None
    };
    let mut comparisons = Vec::new();
    let scenarios: [(&str, &str, usize); 6] = [
        ("http", "http__echo", 16),
        ("http-traced-100%", "http__echo", 16),
        ("http-traced-1%", "http__echo", 16),
        ("stdio", "stdio__echo", 16),
        ("stdio-stdio", "stdio__echo", 16),
        ("guardrails-1KiB", "guarded__echo", 1024),
    ];
    for (scenario, tool, payload) in scenarios {
        if !wanted(scenario) {
            continue;
        }
        let gateway = match (scenario, &traced) {
            ("http-traced-100%", Some((_, all, _))) => all,
            ("http-traced-1%", Some((_, _, some))) => some,
            _ => &gateway,
        };
        let gateway_url = format!("{}/mcp", gateway.addr);
        for &n in &opts.levels {
            let direct: Vec<Arc<Client>> = if scenario.starts_with("stdio") {
                futures::future::try_join_all((0..n).map(|_| connect_stdio(&me)))
                    .await?
                    .into_iter()
                    .map(Arc::new)
                    .collect()
            } else {
                futures::future::try_join_all((0..n).map(|_| connect(&upstream_url, None)))
                    .await?
                    .into_iter()
                    .map(Arc::new)
                    .collect()
            };
            // `stdio-stdio`: each session starts a gateway over stdio, as a desktop client does.
            let (via, gateways): (Vec<Arc<Client>>, Vec<u32>) = if scenario == "stdio-stdio" {
                futures::future::try_join_all((0..n).map(|_| connect_gateway_stdio(&dir, &snapshot, &key)))
                    .await?
                    .into_iter()
                    .map(|(client, pid)| (Arc::new(client), pid))
                    .unzip()
            } else {
                let clients = futures::future::try_join_all((0..n).map(|_| connect(&gateway_url, Some(&key)))).await?;
                (clients.into_iter().map(Arc::new).collect(), vec![gateway.child.id()])
            };
            // Warm up both paths, then alternate.
            drive(&direct, "echo", payload, 0.3).await?;
            drive(&via, tool, payload, 0.3).await?;
            let half = opts.seconds / 2.0;
            let d1 = measured(&upstream, drive(&direct, "echo", payload, half)).await?;
            let g1 = measured_in(&gateways, drive(&via, tool, payload, half)).await?;
            let g2 = measured_in(&gateways, drive(&via, tool, payload, half)).await?;
            let d2 = measured(&upstream, drive(&direct, "echo", payload, half)).await?;
            // The stdio upstream of a direct run is one process per session, not `upstream`.
            comparisons.push(Comparison::of(scenario, n, [d1, d2], [g1, g2], !scenario.starts_with("stdio")));
            for c in direct.into_iter().chain(via) {
                if let Ok(c) = Arc::try_unwrap(c) {
                    let _ = c.cancel().await;
                }
            }
        }
    }
    drop(traced);
    if wanted("http-raw") {
        comparisons.push(raw_comparison(&opts, &fast, &fast_url, &gateway, &gateway_url, &key).await?);
    }
    if wanted("stdio-raw") {
        comparisons.push(stdio_raw_comparison(&opts, &me, &gateway, &gateway_url, &key).await?);
    }
    let (peak_rss_kib, _) = gateway.memory_kib();
    let replicas = if opts.scenarios.is_empty() || opts.scenarios.iter().any(|s| s == "replicas") {
        replica_rows(&opts, &dir, &snapshot, &gateway, &key).await?
    } else {
        Vec::new()
    };

    // Reload latency: admin change committed -> first call served under the new config.
    let poller = connect(&gateway_url, Some(&key)).await?;
    let mut reload = Vec::new();
    for i in 0..50 {
        let deny = i % 2 == 0;
        let spec = json!({"server_name": "reload", "config": {"url": upstream_url}, "denied_tools": if deny { json!(["echo"]) } else { json!([]) }});
        admin.call(Method::PUT, "/api/v1/configs/bench/servers/reload", Some(spec)).await?;
        let committed = Instant::now();
        loop {
            let refused = call(&poller, "reload__echo", "r".into()).await.is_err();
            if refused == deny {
                break;
            }
            if committed.elapsed() > Duration::from_secs(10) {
                bail!("change {i} not served after 10 s");
            }
        }
        reload.push(committed.elapsed().as_micros() as u64);
    }
    let reload = Run::new(reload, Duration::from_secs(1));

    // Key verification: the first request with a new key pays argon2 once; later ones do not.
    // Five new keys, as one first request is a single, noisy sample.
    let mut fresh = Vec::new();
    for _ in 0..5 {
        fresh.push(new_key().await?);
    }
    let revision = admin.call(Method::GET, "/api/v1/snapshot/status", None).await?["db_revision"].as_u64().unwrap_or(0);
    wait_ready(&gateway.addr, Some(revision)).await?;
    let http = reqwest::Client::new();
    let initialize = async |key: &str| {
        let t = Instant::now();
        let resp = http
            .post(&gateway_url)
            .bearer_auth(key)
            .header("Accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}}))
            .send()
            .await?;
        let status = resp.status();
        let _ = resp.bytes().await;
        if !status.is_success() {
            bail!("initialize with a new key answered {status}");
        }
        Ok(t.elapsed().as_micros() as u64)
    };
    let (mut first_times, mut later_times) = (Vec::new(), Vec::new());
    for key in &fresh {
        first_times.push(initialize(key).await?);
        for _ in 0..20 {
            later_times.push(initialize(key).await?);
        }
    }
    let first_key = Run::new(first_times, Duration::from_secs(1));
    let later_key = Run::new(later_times, Duration::from_secs(1));
    // (The p99 of five first requests is the largest of them.)

    // Memory: an idle data plane, then with 1,000 open sessions.
    let idle_plane = data_plane(&dir, &snapshot)?;
    wait_ready(&idle_plane.addr, None).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, idle_rss_kib) = idle_plane.memory_kib();
    let idle_url = format!("{}/mcp", idle_plane.addr);
    let mut sessions = Vec::new();
    for chunk in 0..10 {
        let _ = chunk;
        sessions.extend(futures::future::try_join_all((0..100).map(|_| connect(&idle_url, Some(&key)))).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, sessions_rss_kib) = idle_plane.memory_kib();
    for s in sessions {
        let _ = s.cancel().await;
    }
    drop(idle_plane);

    let large = if opts.large { Some(large_snapshot(&dir).await?) } else { None };
    drop(gateway);
    drop(control);
    drop(upstream);

    let report = json!({
        "machine": machine(),
        "seconds_per_run": opts.seconds,
        "comparisons": comparisons,
        "replicas": replicas,
        "data_plane_peak_rss_kib": peak_rss_kib,
        "reload_latency_us": {"p50": reload.p50_us, "p99": reload.p99_us, "changes": reload.calls},
        "key_verification_us": {"first_p50": first_key.p50_us, "first_max": first_key.p99_us, "keys": first_key.calls, "later_p50": later_key.p50_us, "later_p99": later_key.p99_us},
        "idle_rss_kib": idle_rss_kib,
        "rss_with_1000_sessions_kib": sessions_rss_kib,
        "large_snapshot": large,
    });
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report, &comparisons);
    }
    Ok(())
}

/// The http scenario through nginx (round robin, as a plain load balancer) over one replica and
/// over three, with the same sessions: how throughput scales with replicas on this host. Skipped
/// (with a note) where nginx is not installed.
async fn replica_rows(
    opts: &Options,
    dir: &Path,
    snapshot: &Path,
    first: &Proc,
    key: &str,
) -> anyhow::Result<Vec<Value>> {
    let Some(nginx) = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().map(PathBuf::from).find(|p| p.exists()) else {
        eprintln!("replicas: nginx not found, rows skipped");
        return Ok(Vec::new());
    };
    let mut others = Vec::new();
    for i in 1..3 {
        let replica_dir = dir.join(format!("replica-{i}"));
        std::fs::create_dir_all(&replica_dir)?;
        let replica = data_plane(&replica_dir, snapshot)?;
        wait_ready(&replica.addr, None).await?;
        others.push(replica);
    }
    let strip = |addr: &str| addr.trim_start_matches("http://").to_string();
    let one = Balancer::start(&nginx, &dir.join("lb-1"), &[strip(&first.addr)])?;
    let all: Vec<String> = std::iter::once(first).chain(&others).map(|p| strip(&p.addr)).collect();
    let three = Balancer::start(&nginx, &dir.join("lb-3"), &all)?;
    let mut rows = Vec::new();
    for &n in &opts.levels {
        let mut runs = Vec::new();
        for lb in [&one, &three] {
            let url = format!("http://127.0.0.1:{}/mcp", lb.port);
            let clients: Vec<Arc<Client>> = futures::future::try_join_all((0..n).map(|_| connect(&url, Some(key))))
                .await?
                .into_iter()
                .map(Arc::new)
                .collect();
            drive(&clients, "http__echo", 16, 0.3).await?;
            runs.push((clients, Vec::new()));
        }
        // Alternate: one, three, three, one.
        for i in [0, 1, 1, 0] {
            let run = drive(&runs[i].0, "http__echo", 16, opts.seconds / 2.0).await?;
            runs[i].1.push(run);
        }
        let [one_run, three_run] = [&runs[0].1, &runs[1].1].map(|r| Run::merge(&r[0], &r[1]));
        rows.push(json!({
            "sessions": n,
            "one": {"calls_per_sec": one_run.calls_per_sec, "p50_us": one_run.p50_us, "p99_us": one_run.p99_us},
            "three": {"calls_per_sec": three_run.calls_per_sec, "p50_us": three_run.p50_us, "p99_us": three_run.p99_us},
            "scaling": three_run.calls_per_sec / one_run.calls_per_sec,
        }));
        for (clients, _) in runs {
            for c in clients {
                if let Ok(c) = Arc::try_unwrap(c) {
                    let _ = c.cancel().await;
                }
            }
        }
    }
    Ok(rows)
}

/// nginx on a free loopback port, round robin over `servers` (host:port), streams unbuffered.
struct Balancer {
    _proc: Child,
    port: u16,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self._proc.kill();
        let _ = self._proc.wait();
    }
}

impl Balancer {
    fn start(nginx: &Path, dir: &Path, servers: &[String]) -> anyhow::Result<Balancer> {
        std::fs::create_dir_all(dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let upstreams: String = servers.iter().map(|s| format!("server {s};")).collect();
        let d = dir.display();
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
             upstream replicas {{ {upstreams} keepalive 64; }}\n\
             server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://replicas; proxy_http_version 1.1;\n\
             proxy_set_header Host $http_host; proxy_set_header Connection \"\"; proxy_buffering off;\n\
             proxy_request_buffering off; proxy_read_timeout 300s; }} }} }}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let proc = Command::new(nginx)
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start nginx")?;
        let balancer = Balancer { _proc: proc, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not start: {}", std::fs::read_to_string(dir.join("error.log")).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(balancer)
    }
}

/// 10,000 projects and 100,000 keys: publish (serialise, write, fsync, rename) and data-plane load.
async fn large_snapshot(dir: &Path) -> anyhow::Result<Value> {
    let big_dir = dir.join("large");
    std::fs::create_dir_all(&big_dir)?;
    let path = big_dir.join("snapshot.json");
    // One real argon2 hash shared by all keys: hashing 100,000 secrets would take the benchmark's
    // whole budget, and the loader treats every hash the same.
    let hash = shared::api_key::hash(&shared::api_key::generate().secret)?;
    let config = uuid::Uuid::new_v4();
    let users: Vec<Value> =
        (0..10_000).map(|i| json!({"id": uuid::Uuid::new_v4(), "email": format!("u{i}@example.com")})).collect();
    let projects: Vec<Value> = users
        .iter()
        .enumerate()
        .map(|(i, u)| json!({"id": uuid::Uuid::new_v4(), "name": format!("p{i}"), "mcp_config_id": config, "members": [u["id"]]}))
        .collect();
    let keys: Vec<Value> = (0..100_000)
        .map(|i| {
            let p = &projects[i % projects.len()];
            json!({"id": shared::api_key::new_key_id(), "project_id": p["id"], "user_id": p["members"][0], "hash": hash})
        })
        .collect();
    let snapshot: shared::Snapshot = serde_json::from_value(json!({
        "format_version": 1, "revision": 1, "generated_at": chrono::Utc::now(),
        "users": users, "projects": projects, "api_keys": keys,
        "mcp_configs": [{"id": config, "name": "c", "servers": [{"server_name": "s", "config": {"command": "true"}}]}],
    }))?;
    let t = Instant::now();
    shared::snapshot_file::write(&path, &snapshot)?;
    let publish_ms = t.elapsed().as_secs_f64() * 1e3;
    let size_mib = std::fs::metadata(&path)?.len() as f64 / (1024.0 * 1024.0);
    let t = Instant::now();
    let plane = data_plane(&big_dir, &path)?;
    wait_ready(&plane.addr, Some(1)).await?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (peak, rss) = plane.memory_kib();
    Ok(json!({"projects": 10_000, "keys": 100_000, "file_mib": size_mib, "publish_ms": publish_ms,
        "load_ms": load_ms, "rss_kib": rss, "peak_rss_kib": peak}))
}

async fn wait_ready(addr: &str, revision: Option<u64>) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(resp) = http.get(format!("{addr}/readyz")).send().await
            && resp.status().is_success()
        {
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if revision.is_none_or(|r| body["revision"].as_u64().unwrap_or(0) >= r) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{addr} not ready");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{} x {cpu}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

fn print_table(report: &Value, comparisons: &[Comparison]) {
    println!(
        "mcpgw benchmark on {} ({} s per run, alternating direct/gateway)",
        report["machine"].as_str().unwrap_or(""),
        report["seconds_per_run"]
    );
    println!();
    println!(
        "{:<16} {:>8} | {:>10} {:>8} {:>8} {:>8} | {:>10} {:>8} {:>8} {:>8} | {:>9} {:>9} {:>6} | {:>8} {:>8} {:>8} {:>8}",
        "scenario",
        "sessions",
        "direct/s",
        "p50 us",
        "p90 us",
        "p99 us",
        "gateway/s",
        "p50 us",
        "p90 us",
        "p99 us",
        "+p50 us",
        "+p99 us",
        "ratio",
        "gw cpu",
        "up cpu",
        "cl cpu",
        "gcl cpu"
    );
    for c in comparisons {
        println!(
            "{:<16} {:>8} | {:>10.0} {:>8} {:>8} {:>8} | {:>10.0} {:>8} {:>8} {:>8} | {:>9} {:>9} {:>6.2} | {:>8.0} {:>8} {:>8.0} {:>8.0}",
            c.scenario,
            c.sessions,
            c.direct.calls_per_sec,
            c.direct.p50_us,
            c.direct.p90_us,
            c.direct.p99_us,
            c.gateway.calls_per_sec,
            c.gateway.p50_us,
            c.gateway.p90_us,
            c.gateway.p99_us,
            c.p50_overhead_us,
            c.p99_overhead_us,
            c.throughput_ratio,
            c.gateway_cpu_us_per_call,
            c.upstream_cpu_us_per_call.map(|u| format!("{u:.0}")).unwrap_or_else(|| "-".into()),
            c.client_cpu_us_per_call,
            c.client_cpu_us_per_gateway_call
        );
    }
    println!(
        "(CPU microseconds per call: gw = the data plane per gateway call; up = the HTTP upstream and cl = the clients per direct call; gcl = the clients per gateway call)"
    );
    if let Some(rows) = report["replicas"].as_array().filter(|r| !r.is_empty()) {
        println!();
        println!("http through nginx round robin: 1 replica vs 3 replicas (sessions continued by any replica)");
        println!(
            "{:>8} | {:>10} {:>8} {:>8} | {:>10} {:>8} {:>8} | {:>7}",
            "sessions", "1 rep/s", "p50 us", "p99 us", "3 rep/s", "p50 us", "p99 us", "scaling"
        );
        for r in rows {
            println!(
                "{:>8} | {:>10.0} {:>8} {:>8} | {:>10.0} {:>8} {:>8} | {:>7.2}",
                r["sessions"].as_u64().unwrap_or(0),
                r["one"]["calls_per_sec"].as_f64().unwrap_or(0.0),
                r["one"]["p50_us"].as_u64().unwrap_or(0),
                r["one"]["p99_us"].as_u64().unwrap_or(0),
                r["three"]["calls_per_sec"].as_f64().unwrap_or(0.0),
                r["three"]["p50_us"].as_u64().unwrap_or(0),
                r["three"]["p99_us"].as_u64().unwrap_or(0),
                r["scaling"].as_f64().unwrap_or(0.0)
            );
        }
    }
    println!();
    println!("data plane peak RSS under load:   {:.1} MiB", kib_to_mib(&report["data_plane_peak_rss_kib"]));
    let r = &report["reload_latency_us"];
    println!(
        "reload latency (admin change -> first call on the new config, {} changes): p50 {:.1} ms, p99 {:.1} ms",
        r["changes"],
        us_to_ms(&r["p50"]),
        us_to_ms(&r["p99"])
    );
    let k = &report["key_verification_us"];
    println!(
        "key verification: first request with a new key p50 {:.1} ms, max {:.1} ms ({} keys); later requests p50 {:.2} ms, p99 {:.2} ms",
        us_to_ms(&k["first_p50"]),
        us_to_ms(&k["first_max"]),
        k["keys"],
        us_to_ms(&k["later_p50"]),
        us_to_ms(&k["later_p99"])
    );
    println!(
        "idle data plane RSS: {:.1} MiB; with 1,000 open sessions: {:.1} MiB",
        kib_to_mib(&report["idle_rss_kib"]),
        kib_to_mib(&report["rss_with_1000_sessions_kib"])
    );
    if let Some(l) = report["large_snapshot"].as_object() {
        println!(
            "snapshot of 10,000 projects and 100,000 keys ({:.1} MiB): publish {:.0} ms, data-plane start to ready {:.0} ms, RSS {:.1} MiB (peak {:.1} MiB)",
            l["file_mib"].as_f64().unwrap_or(0.0),
            l["publish_ms"].as_f64().unwrap_or(0.0),
            l["load_ms"].as_f64().unwrap_or(0.0),
            kib_to_mib(&l["rss_kib"]),
            kib_to_mib(&l["peak_rss_kib"])
        );
    }
}

fn kib_to_mib(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0) / 1024.0
}

fn us_to_ms(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0) / 1000.0
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
