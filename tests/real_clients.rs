//! Real MCP clients nobody on this team wrote, through the gateway: the Python `mcp` SDK (streamable
//! HTTP, and stdio against `data-plane stdio`) and the TypeScript SDK via the MCP Inspector CLI,
//! against `@modelcontextprotocol/server-everything`. Each must see what it sees talking to the
//! upstream directly.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::control_plane::ControlPlane;
use common::data_plane::*;
use serde_json::{Value, json};

fn python_client(args: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/mcp_client.py");
    let out = Command::new("python3").arg(script).args(args).output().expect("run python3");
    assert!(
        out.status.success(),
        "python client failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("python client output")
}

fn inspector(target: &[&str], args: &[&str]) -> Value {
    let out = Command::new(node_bin("mcp-inspector"))
        .arg("--cli")
        .args(target)
        .args(args)
        .output()
        .expect("run the MCP Inspector CLI");
    assert!(
        out.status.success(),
        "inspector failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("inspector output is not JSON: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Tools as the upstream names them: the gateway's `everything__` prefix and meta-tools removed.
///
/// Two known differences are taken out, both documented in the README:
/// - `get-roots-list`: server-everything only offers it to clients that declare the roots
///   capability; the gateway's shared upstream sessions do not relay server-to-client requests
///   (roots, sampling, elicitation), so it does not declare it.
/// - `execution` (`taskSupport`, from the 2025-11-25 tasks draft): the MCP 2026-07-28 model the
///   gateway speaks moved tasks into an extension, and the field is not carried.
fn upstream_view(tools: &Value) -> Vec<Value> {
    let mut out: Vec<Value> = tools
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| {
            let name = t["name"].as_str()?;
            let bare = name.strip_prefix("everything__").unwrap_or(name);
            if name.starts_with("gateway_") || bare == "get-roots-list" {
                return None;
            }
            let mut t = t.clone();
            t.as_object_mut()?.remove("execution");
            t["name"] = json!(bare);
            Some(t)
        })
        .collect();
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    out
}

const RESOURCE: &str = "demo://resource/static/document/architecture.md";

#[test]
fn python_sdk_over_streamable_http_sees_the_direct_view() {
    let cp = ControlPlane::start();
    let key = provision(
        &cp,
        "py",
        json!([{"server_name": "everything", "config": {"command": everything(), "args": ["stdio"]}}]),
    );
    let dp = DataPlane::start(&cp, &[]);
    dp.sync(&cp);

    let gw_resource = format!("mcpgw://everything/{RESOURCE}");
    let through = python_client(&[
        "--url",
        &dp.mcp_url(),
        "--key",
        &key,
        "--call",
        "everything__get-sum",
        "--arguments",
        r#"{"a": 2, "b": 40}"#,
        "--read",
        &gw_resource,
        "--prompt",
        "everything__args-prompt",
        "--prompt-arguments",
        r#"{"city": "Lisbon"}"#,
    ]);
    let everything_bin = everything();
    let direct = python_client(&[
        "--call",
        "get-sum",
        "--arguments",
        r#"{"a": 2, "b": 40}"#,
        "--read",
        RESOURCE,
        "--prompt",
        "args-prompt",
        "--prompt-arguments",
        r#"{"city": "Lisbon"}"#,
        "--stdio",
        &everything_bin,
        "stdio",
    ]);
    assert_eq!(upstream_view(&through["tools"]), upstream_view(&direct["tools"]));
    assert!(through["tools"].as_array().unwrap().len() > 5);
    assert_eq!(through["call"], direct["call"]);
    assert!(through["call"].to_string().contains("42"), "{}", through["call"]);
    let mut resource = through["resource"].clone();
    resource["contents"][0]["uri"] = json!(RESOURCE);
    assert_eq!(resource, direct["resource"]);
    assert_eq!(through["prompt"], direct["prompt"]);
    assert!(through["prompt"].to_string().contains("Lisbon"));

    // Without a key the SDK gets nowhere.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/mcp_client.py");
    let out = Command::new("python3").args([script, "--url", &dp.mcp_url()]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing API key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_sdk_drives_the_stdio_mode() {
    let cp = ControlPlane::start();
    let key = provision(
        &cp,
        "pystdio",
        json!([{"server_name": "everything", "config": {"command": everything(), "args": ["stdio"]}}, fixture_server("fx")]),
    );
    cp.wait_for_snapshot();
    let data_dir = cp.data_dir().to_string_lossy().into_owned();
    let key_env = format!("MCPGW_API_KEY={key}");
    let dir_env = format!("MCPGW_DATA_DIR={data_dir}");
    let out = python_client(&[
        "--call",
        "everything__echo",
        "--arguments",
        r#"{"message": "over stdio"}"#,
        "--read",
        "mcpgw://fx/fixture://docs/readme",
        "--prompt",
        "fx__greet",
        "--prompt-arguments",
        r#"{"topic": "pipes"}"#,
        "--stdio",
        "env",
        &key_env,
        &dir_env,
        "MCPGW_AUDIT_LOG=off",
        env!("CARGO_BIN_EXE_data-plane"),
        "stdio",
    ]);
    assert_eq!(out["call"]["content"][0]["text"], "Echo: over stdio");
    assert_eq!(out["resource"]["contents"][0]["text"], "the fixture readme");
    assert!(out["prompt"].to_string().contains("pipes"));
    let names: Vec<&str> = out["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"fx__echo") && names.contains(&"everything__echo"), "{names:?}");

    // A bad key: the stdio gateway refuses to start, with a clear message.
    let bad = Command::new(env!("CARGO_BIN_EXE_data-plane"))
        .arg("stdio")
        .env("MCPGW_API_KEY", "mcpgw_nope")
        .env("MCPGW_DATA_DIR", &data_dir)
        .env("MCPGW_AUDIT_LOG", "off")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("invalid API key"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn inspector_cli_through_the_gateway_matches_the_direct_view() {
    let cp = ControlPlane::start();
    let key = provision(
        &cp,
        "insp",
        json!([{"server_name": "everything", "config": {"command": everything(), "args": ["stdio"]}}]),
    );
    let dp = DataPlane::start(&cp, &[]);
    dp.sync(&cp);
    let url = dp.mcp_url();
    let header = format!("Authorization: Bearer {key}");
    let gw = [url.as_str(), "--transport", "http", "--header", header.as_str()];
    let everything_bin = everything();
    let direct = [everything_bin.as_str(), "stdio"];

    let tools_gw = inspector(&gw, &["--method", "tools/list"]);
    let tools_direct = inspector(&direct, &["--method", "tools/list"]);
    assert_eq!(upstream_view(&tools_gw["tools"]), upstream_view(&tools_direct["tools"]));

    let call_gw =
        inspector(&gw, &["--method", "tools/call", "--tool-name", "everything__echo", "--tool-arg", "message=hi"]);
    let call_direct =
        inspector(&direct, &["--method", "tools/call", "--tool-name", "echo", "--tool-arg", "message=hi"]);
    assert_eq!(call_gw["content"], call_direct["content"]);
    assert_eq!(call_gw["content"][0]["text"], "Echo: hi");

    let gw_uri = format!("mcpgw://everything/{RESOURCE}");
    let read_gw = inspector(&gw, &["--method", "resources/read", "--uri", &gw_uri]);
    let read_direct = inspector(&direct, &["--method", "resources/read", "--uri", RESOURCE]);
    assert_eq!(read_gw["contents"][0]["text"], read_direct["contents"][0]["text"]);
    assert!(read_gw["contents"][0]["text"].as_str().unwrap().len() > 10);

    let prompt_gw = inspector(&gw, &["--method", "prompts/get", "--prompt-name", "everything__simple-prompt"]);
    let prompt_direct = inspector(&direct, &["--method", "prompts/get", "--prompt-name", "simple-prompt"]);
    assert_eq!(prompt_gw["messages"], prompt_direct["messages"]);

    // A wrong key is refused before any MCP work.
    let wrong = Command::new(node_bin("mcp-inspector"))
        .args([
            "--cli",
            &url,
            "--transport",
            "http",
            "--header",
            "Authorization: Bearer mcpgw_x",
            "--method",
            "tools/list",
        ])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
}

#[test]
fn server_everything_over_streamable_http_upstream() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut upstream = Command::new(everything())
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server-everything did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let cp = ControlPlane::start();
    let key = provision(
        &cp,
        "evhttp",
        json!([{"server_name": "everything", "config": {"type": "http", "url": format!("http://127.0.0.1:{port}/mcp")}}]),
    );
    let dp = DataPlane::start(&cp, &[]);
    dp.sync(&cp);
    let out = python_client(&[
        "--url",
        &dp.mcp_url(),
        "--key",
        &key,
        "--call",
        "everything__echo",
        "--arguments",
        r#"{"message": "via http upstream"}"#,
        "--read",
        &format!("mcpgw://everything/{RESOURCE}"),
    ]);
    assert_eq!(out["call"]["content"][0]["text"], "Echo: via http upstream");
    assert!(out["resource"]["contents"][0]["text"].as_str().unwrap().len() > 10);
    let _ = upstream.kill();
    let _ = upstream.wait();
}
