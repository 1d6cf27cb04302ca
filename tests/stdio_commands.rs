//! `MCPGW_STDIO_COMMANDS` end to end: the admin API refuses a stdio server whose command is not
//! allowed on every path that creates or replaces servers, and a data plane given a snapshot with
//! one (written by a control plane without the setting) does not start it.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::control_plane::{ADMIN_KEY, ControlPlane, tempdir::TempDir};
use common::data_plane::{DataPlane, call, connect, fixture, fixture_server, provision, runtime, tool_names};
use serde_json::{Value, json};

fn executable(path: &Path) {
    std::fs::write(path, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn stdio(name: &str, command: &str) -> Value {
    json!({"server_name": name, "config": {"command": command, "args": ["-c", "id"]}})
}

fn assert_refused(cp: &ControlPlane, method: &str, path: &str, body: Value, server: &str) {
    let (status, v) = cp.call(method, path, Some(body));
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(status, 422, "{method} {path}: {v}");
    assert!(message.contains("MCPGW_STDIO_COMMANDS") && message.contains(server), "{method} {path}: {message}");
}

#[test]
fn the_admin_api_refuses_commands_the_setting_does_not_allow_on_every_path() {
    // One config stored while any command was allowed, to copy and edit later.
    let before = ControlPlane::start();
    before.ok("POST", "/api/v1/configs", Some(json!({"name": "old", "servers": [stdio("sh", "/bin/sh")]})), 201);
    let dir = before.stop();
    let tools = TempDir::new("mcpgw-allowed");
    let bin = tools.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    executable(&bin.join("mcp-tool"));
    // A link inside the allowed directory to a shell outside it is judged by where it leads.
    std::os::unix::fs::symlink("/bin/sh", bin.join("sneaky")).unwrap();
    let allowed = bin.to_str().unwrap().to_string();
    let cp = ControlPlane::start_full_env(dir, &[("MCPGW_STDIO_COMMANDS", &allowed)]);
    let configs = "/api/v1/configs";
    // What the setting allows: a file in the directory, by path or by name through the server's
    // PATH; HTTP servers are not affected.
    let tool = bin.join("mcp-tool");
    let ok = json!({"name": "new", "servers": [
        stdio("tool", tool.to_str().unwrap()),
        {"server_name": "byname", "config": {"command": "mcp-tool", "env": {"PATH": allowed}}},
        {"server_name": "web", "config": {"url": "https://mcp.example/mcp"}}
    ]});
    cp.ok("POST", configs, Some(ok), 201);
    let revision = cp.db_revision();

    assert_refused(&cp, "POST", configs, json!({"name": "c", "servers": [stdio("sh", "/bin/sh")]}), "sh");
    assert_refused(&cp, "POST", configs, json!({"name": "c", "servers": [stdio("byname", "sh")]}), "byname");
    let sneaky = bin.join("sneaky");
    assert_refused(
        &cp,
        "POST",
        configs,
        json!({"name": "c", "servers": [stdio("link", sneaky.to_str().unwrap())]}),
        "link",
    );
    let preload = json!({"server_name": "pre", "config": {"command": tool, "env": {"LD_PRELOAD": "/tmp/x.so"}}});
    assert_refused(&cp, "POST", configs, json!({"name": "c", "servers": [preload]}), "pre");
    assert_refused(&cp, "POST", "/api/v1/configs/old/copy", json!({"name": "old-copy"}), "sh");
    assert_refused(&cp, "PATCH", "/api/v1/configs/old", json!({"description": "x"}), "sh");
    assert_refused(&cp, "POST", "/api/v1/configs/new/servers", stdio("env", "/usr/bin/env"), "env");
    assert_refused(&cp, "PUT", "/api/v1/configs/new/servers/tool", stdio("tool", "/bin/bash"), "tool");
    assert_refused(&cp, "PUT", "/api/v1/configs/old/servers/sh", stdio("sh", "/bin/bash"), "sh");
    let file = json!({"users": {"u1": {"email": "imported@example.com"}},
        "mcp_configs": {"c1": {"mcp_config_name": "imported", "mcp_config": [stdio("sh", "/bin/sh")]}}});
    assert_refused(&cp, "POST", "/api/v1/import", file, "sh");
    assert_eq!(cp.db_revision(), revision, "a refused request changed something");
    assert_eq!(cp.ok("GET", "/api/v1/users", None, 200)["items"], json!([]), "the import left nothing behind");

    // A stored server the setting now refuses can be replaced by an allowed one.
    cp.ok("PUT", "/api/v1/configs/old/servers/sh", Some(stdio("sh", tool.to_str().unwrap())), 200);
    cp.ok("POST", "/api/v1/configs/old/copy", Some(json!({"name": "old-copy"})), 201);

    // A setting that names nothing usable stops the control plane before it listens.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .env_clear()
        .env("MCPGW_DATA_DIR", TempDir::new("mcpgw-cp-stdio").path())
        .env("MCPGW_CONTROL_LISTEN", "127.0.0.1:0")
        .env("MCPGW_ADMIN_API_KEY", ADMIN_KEY)
        .env("MCPGW_STDIO_COMMANDS", "/no/such/dir")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("MCPGW_STDIO_COMMANDS") && err.contains("/no/such/dir"), "{err}");
}

#[test]
fn the_data_plane_does_not_start_a_command_the_setting_does_not_allow() {
    // The control plane allows anything (or the snapshot was written by someone else).
    let cp = ControlPlane::start();
    let marker = cp.data_dir().join("ran");
    let shell = json!({"server_name": "sh", "config": {"command": "/bin/sh",
        "args": ["-c", format!("touch {}", marker.display())]}});
    let key = provision(&cp, "stdio", json!([fixture_server("fx"), shell]));
    let dp = DataPlane::start(&cp, &[("MCPGW_STDIO_COMMANDS", &fixture())]);
    dp.sync(&cp);
    runtime().block_on(async {
        let c = connect(&dp.mcp_url(), &key).await.unwrap();
        let names = tool_names(&c).await;
        assert!(names.contains(&"fx__echo".to_string()), "the allowed server serves: {names:?}");
        assert!(!names.iter().any(|n| n.starts_with("sh__")), "{names:?}");
        let discovered = call(&c, "gateway_discover_tools", json!({"server_name": "sh"})).await.unwrap();
        let text = discovered.to_string();
        assert!(text.contains("is not allowed by MCPGW_STDIO_COMMANDS"), "{text}");
        let echoed = call(&c, "fx__echo", json!({"message": "still here"})).await.unwrap();
        assert!(echoed.to_string().contains("still here"), "{echoed}");
    });
    assert!(!marker.exists(), "the refused command ran");
    assert!(dp.log_text().contains("stdio server not started"), "{}", dp.log_text());
}
