//! Declarative state end to end: `mcpgw plan` / `mcpgw apply` / `mcpgw export` against the real
//! control plane (on SQLite and on PostgreSQL), and a real MCP client through the keys apply creates.

#[macro_use]
mod common;

use std::path::Path;

use common::control_plane::{ControlPlane, tempdir::TempDir};
use common::data_plane::{DataPlane, call, connect, fixture};
use serde_json::{Value, json};

/// Runs `mcpgw` against `cp`; exit code, stdout, stderr.
fn mcpgw(cp: &ControlPlane, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mcpgw"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MCPGW_ADMIN_URL", &cp.base)
        .env("MCPGW_ADMIN_API_KEY", &cp.admin_key)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run mcpgw");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The tenants of a small team, as YAML, with its server's secret left to the environment.
fn document() -> Value {
    json!({
        "users": [{"email": "alice@example.com"}, {"email": "bob@example.com"}],
        "configs": [{
            "name": "default",
            "description": "tools for the demo team",
            "servers": [{
                "server_name": "up",
                "config": {"command": fixture(), "env": {"API_TOKEN": "${STATE_TEST_TOKEN}"}},
                "input_guardrails_policy": {"enabled": true, "block": ["injection_attack"]}
            }]
        }],
        "projects": [{
            "name": "demo",
            "mcp_config": "default",
            "members": ["alice@example.com", "bob@example.com"],
            "keys": [{"name": "laptop", "user": "alice@example.com"}, {"name": "ci", "user": "bob@example.com"}]
        }]
    })
}

fn write_yaml(dir: &Path, name: &str, doc: &Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, serde_norway::to_string(doc).unwrap()).unwrap();
    path.to_string_lossy().into_owned()
}

const TOKEN_ENV: (&str, &str) = ("STATE_TEST_TOKEN", "token-from-the-environment");

/// The admin audit log's rows, as `action resource revision`.
fn audit_rows(cp: &ControlPlane) -> Vec<String> {
    cp.sql("SELECT action || ' ' || resource || ' ' || revision FROM audit_log ORDER BY id")
}

fn apply_creates_everything_once_and_a_client_calls_through_its_key() {
    let cp = ControlPlane::start();
    let tmp = TempDir::new("mcpgw-state");
    let file = write_yaml(tmp.path(), "state.yaml", &document());

    // A variable the environment lacks is an error that says where it is used, and nothing is sent.
    let (code, _, err) = mcpgw(&cp, &["plan", "-f", &file], &[]);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("/configs/0/servers/0/config/env/API_TOKEN") && err.contains("STATE_TEST_TOKEN"), "{err}");

    let (code, out, err) = mcpgw(&cp, &["plan", "-f", &file], &[TOKEN_ENV]);
    assert_eq!(code, 0, "{err}");
    for line in
        ["create user alice@example.com", "create config default", "create project demo", "create key demo/laptop"]
    {
        assert!(out.contains(line), "{line} missing in:\n{out}");
    }
    assert_eq!(cp.db_revision(), 0, "plan writes nothing");

    let keys_out = tmp.path().join("keys.json");
    let keys_arg = keys_out.to_string_lossy().into_owned();
    let (code, out, err) = mcpgw(&cp, &["apply", "-f", &file, "--keys-out", &keys_arg], &[TOKEN_ENV]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("applied 8 changes"), "{out}");
    assert!(!out.contains("mcpgw_"), "keys go to the file, not the terminal: {out}");
    // One change for the admin API, the snapshot and the audit log.
    assert_eq!(cp.db_revision(), 1);
    assert_eq!(audit_rows(&cp), ["apply state 1"]);
    let snapshot = cp.wait_for_snapshot();
    assert_eq!(snapshot["revision"], 1);
    assert_eq!(snapshot["api_keys"].as_array().unwrap().len(), 2);
    let server = &snapshot["mcp_configs"][0]["servers"][0];
    assert_eq!(server["config"]["env"]["API_TOKEN"], "token-from-the-environment");
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&keys_out).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let keys: Vec<Value> = serde_json::from_slice(&std::fs::read(&keys_out).unwrap()).unwrap();
    assert_eq!(keys.len(), 2);
    let laptop = keys.iter().find(|k| k["name"] == "laptop").unwrap();
    assert_eq!(laptop["project"], "demo");
    let key = laptop["key"].as_str().unwrap().to_string();

    // A real MCP client calls through the key apply created.
    let dp = DataPlane::start(&cp, &[]);
    dp.sync(&cp);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = connect(&dp.mcp_url(), &key).await.expect("connect");
        let result = call(&client, "up__echo", json!({"message": "declared"})).await.expect("call");
        assert!(result.to_string().contains("declared"), "{result}");
        let _ = client.cancel().await;
    });

    // Applied again: nothing to do, no new revision, existing keys neither shown nor rotated.
    let (code, out, err) = mcpgw(&cp, &["apply", "-f", &file], &[TOKEN_ENV]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nothing to do"), "{out}");
    assert!(!out.contains("mcpgw_"), "{out}");
    assert_eq!(cp.db_revision(), 1);

    // One edited field is a plan of exactly that change.
    let mut edited = document();
    edited["configs"][0]["description"] = json!("tools for the demo team, v2");
    let edited_file = write_yaml(tmp.path(), "edited.yaml", &edited);
    let (code, out, err) = mcpgw(&cp, &["--json", "plan", "-f", &edited_file], &[TOKEN_ENV]);
    assert_eq!(code, 0, "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        plan["changes"],
        json!([{"action": "update", "kind": "config", "name": "default", "fields": ["description"]}])
    );
    // A changed secret is a change of its server.
    let (_, out, _) = mcpgw(&cp, &["--json", "plan", "-f", &file], &[("STATE_TEST_TOKEN", "another")]);
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["changes"][0]["fields"], json!(["servers/up"]), "{plan}");
}

fn prune_deletes_exactly_what_the_document_no_longer_names() {
    let cp = ControlPlane::start();
    let tmp = TempDir::new("mcpgw-state-prune");
    let file = write_yaml(tmp.path(), "state.yaml", &document());
    assert_eq!(mcpgw(&cp, &["apply", "-f", &file], &[TOKEN_ENV]).0, 0);
    // Something made by hand outside the document.
    cp.ok("POST", "/api/v1/users", Some(json!({"email": "carol@example.com"})), 201);

    let mut smaller = document();
    smaller["users"] = json!([{"email": "alice@example.com"}]);
    smaller["projects"][0]["members"] = json!(["alice@example.com"]);
    smaller["projects"][0]["keys"] = json!([{"name": "laptop", "user": "alice@example.com"}]);
    let smaller_file = write_yaml(tmp.path(), "smaller.yaml", &smaller);

    // Without prune nothing is deleted.
    let (code, out, _) = mcpgw(&cp, &["--json", "plan", "-f", &smaller_file], &[TOKEN_ENV]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["changes"], json!([]));

    let (code, out, err) = mcpgw(&cp, &["--json", "plan", "--prune", "-f", &smaller_file], &[TOKEN_ENV]);
    assert_eq!(code, 0, "{err}");
    let mut deleted: Vec<String> = serde_json::from_str::<Value>(&out).unwrap()["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!("{} {} {}", c["action"].as_str().unwrap(), c["kind"].as_str().unwrap(), c["name"].as_str().unwrap())
        })
        .collect();
    deleted.sort();
    assert_eq!(
        deleted,
        [
            "delete key demo/ci",
            "delete member demo/bob@example.com",
            "delete user bob@example.com",
            "delete user carol@example.com"
        ]
    );
    let before = cp.db_revision();
    let (code, out, err) = mcpgw(&cp, &["apply", "--prune", "-f", &smaller_file], &[TOKEN_ENV]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("applied 4 changes"), "{out}");
    assert_eq!(cp.db_revision(), before + 1);
    let users = cp.ok("GET", "/api/v1/users", None, 200);
    let emails: Vec<&str> = users["items"].as_array().unwrap().iter().map(|u| u["email"].as_str().unwrap()).collect();
    assert_eq!(emails, ["alice@example.com"]);
    let keys = cp.ok("GET", "/api/v1/api-keys", None, 200);
    let names: Vec<&str> = keys["items"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["laptop"]);
    assert_eq!(cp.ok("GET", "/api/v1/configs", None, 200)["items"].as_array().unwrap().len(), 1);
}

fn a_document_with_ten_errors_reports_all_ten_and_changes_nothing() {
    let cp = ControlPlane::start();
    let bad = json!({
        "users": [{"email": "not-an-email"}, {"email": "dup@example.com"}, {"email": "DUP@example.com"}],
        "configs": [
            {"name": "bad name!", "servers": []},
            {"name": "ok", "servers": [{"server_name": "s", "config": {"command": "x", "url": "http://both"}}]}
        ],
        "projects": [{
            "name": "p",
            "mcp_config": "missing",
            "members": ["ghost@example.com"],
            "keys": [
                {"name": "k", "user": "dup@example.com"},
                {"name": "old", "user": "dup@example.com", "expires_at": "2001-01-01T00:00:00Z"}
            ]
        }],
        "extra": true
    });
    let (status, answer) = cp.call("POST", "/api/v1/state/apply", Some(bad.clone()));
    assert_eq!(status, 422, "{answer}");
    let problems = answer["error"]["problems"].as_array().unwrap();
    let pointers: Vec<&str> = problems.iter().map(|p| p["pointer"].as_str().unwrap()).collect();
    for expected in [
        "/extra",
        "/users/0/email",
        "/users/2/email",
        "/configs/0/name",
        "/configs/1/servers/0",
        "/projects/0/mcp_config",
        "/projects/0/members/0",
        "/projects/0/keys/0/user",
        "/projects/0/keys/1/user",
        "/projects/0/keys/1/expires_at",
    ] {
        assert!(pointers.iter().any(|p| p.starts_with(expected)), "no problem at {expected}: {pointers:?}");
    }
    assert!(problems.len() >= 10, "{problems:?}");
    assert_eq!(cp.db_revision(), 0, "nothing was written");
    assert_eq!(cp.ok("GET", "/api/v1/users", None, 200)["items"], json!([]));

    // The CLI says the same, one pointer per line, with the exit code for invalid input.
    let tmp = TempDir::new("mcpgw-state-bad");
    let file = write_yaml(tmp.path(), "bad.yaml", &bad);
    let (code, _, err) = mcpgw(&cp, &["apply", "-f", &file], &[]);
    assert_eq!(code, 7, "{err}");
    assert!(err.lines().filter(|l| l.trim_start().starts_with('/')).count() >= 10, "{err}");
}

fn a_plan_made_before_a_concurrent_edit_is_refused() {
    let cp = ControlPlane::start();
    let tmp = TempDir::new("mcpgw-state-race");
    let file = write_yaml(tmp.path(), "state.yaml", &document());
    let (_, out, _) = mcpgw(&cp, &["--json", "plan", "-f", &file], &[TOKEN_ENV]);
    let revision = serde_json::from_str::<Value>(&out).unwrap()["revision"].as_u64().unwrap().to_string();
    cp.ok("POST", "/api/v1/users", Some(json!({"email": "meanwhile@example.com"})), 201);
    let (code, _, err) = mcpgw(&cp, &["apply", "-f", &file, "--expected-revision", &revision], &[TOKEN_ENV]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("changed since the plan"), "{err}");
    assert_eq!(cp.db_revision(), 1, "only the concurrent edit landed");
    let (status, _) = cp.call("POST", &format!("/api/v1/state/apply?expected_revision={revision}"), Some(json!({})));
    assert_eq!(status, 409);
}

fn export_then_apply_changes_nothing() {
    let cp = ControlPlane::start();
    let tmp = TempDir::new("mcpgw-state-export");
    let mut doc = document();
    doc["configs"].as_array_mut().unwrap().push(json!({
        "name": "remote",
        "tool_naming": "bare",
        "servers": [{"server_name": "api", "config": {"url": "https://api.example/mcp", "headers": {"X-Api-Key": "header-secret-1"}}}]
    }));
    let file = write_yaml(tmp.path(), "state.yaml", &doc);
    assert_eq!(mcpgw(&cp, &["apply", "-f", &file], &[TOKEN_ENV]).0, 0);
    // A key without a name (made by hand) stays out of the document and out of reach of apply.
    cp.ok("POST", "/api/v1/api-keys", Some(json!({"project": "demo", "user": "bob@example.com"})), 201);

    let exported = tmp.path().join("exported.yaml");
    let exported_arg = exported.to_string_lossy().into_owned();
    let (code, _, err) = mcpgw(&cp, &["export", "-o", &exported_arg], &[]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&exported).unwrap();
    assert!(!text.contains("header-secret-1") && !text.contains("token-from-the-environment"), "{text}");
    assert!(text.contains("****"), "{text}");
    let (code, out, err) = mcpgw(&cp, &["plan", "-f", &exported_arg], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("no changes"), "{out}");
    let before = cp.db_revision();
    let (code, out, _) = mcpgw(&cp, &["apply", "-f", &exported_arg], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(cp.db_revision(), before);
    // The masked secrets were kept.
    let snapshot = cp.wait_for_snapshot();
    let remote = snapshot["mcp_configs"].as_array().unwrap().iter().find(|c| c["name"] == "remote").unwrap().clone();
    assert_eq!(remote["servers"][0]["config"]["headers"]["X-Api-Key"], "header-secret-1");

    // The schema editors use is served and committed.
    let (status, schema) = cp.call("GET", "/api/v1/schema/state", None);
    assert_eq!(status, 200);
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/mcpgw-state.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(schema, committed);
}

fn rate_limits_are_declared_planned_applied_and_exported() {
    let cp = ControlPlane::start();
    let tmp = TempDir::new("mcpgw-state-limits");
    let project_limit = json!({"calls_per_minute": 600, "burst": 60});
    let key_limit = json!({"calls_per_minute": 60});
    let server_limit = json!({"calls_per_minute": 100});
    let tool_limits = json!({"echo": {"calls_per_minute": 10, "burst": 2}});
    let mut doc = document();
    doc["projects"][0]["rate_limit"] = project_limit.clone();
    doc["projects"][0]["keys"][0]["rate_limit"] = key_limit.clone();
    doc["configs"][0]["servers"][0]["rate_limit"] = server_limit.clone();
    doc["configs"][0]["servers"][0]["tool_rate_limits"] = tool_limits.clone();
    let file = write_yaml(tmp.path(), "state.yaml", &doc);
    let (code, _, err) = mcpgw(&cp, &["apply", "-f", &file], &[TOKEN_ENV]);
    assert_eq!(code, 0, "{err}");
    let snapshot = cp.wait_for_snapshot();
    assert_eq!(snapshot["projects"][0]["rate_limit"], project_limit);
    let key_of = |snapshot: &Value, name: &str| {
        snapshot["api_keys"].as_array().unwrap().iter().find(|k| k["name"] == name).unwrap()["rate_limit"].clone()
    };
    assert_eq!(key_of(&snapshot, "laptop"), key_limit);
    assert_eq!(key_of(&snapshot, "ci"), Value::Null);
    let server = &snapshot["mcp_configs"][0]["servers"][0];
    assert_eq!((&server["rate_limit"], &server["tool_rate_limits"]), (&server_limit, &tool_limits));

    // Changed limits are updates of exactly that field, of the project and of the existing key.
    let mut changed = doc.clone();
    changed["projects"][0]["rate_limit"] = json!({"calls_per_minute": 300});
    changed["projects"][0]["keys"][0]["rate_limit"] = json!({"calls_per_minute": 30, "burst": 3});
    let changed_file = write_yaml(tmp.path(), "changed.yaml", &changed);
    let (code, out, err) = mcpgw(&cp, &["--json", "plan", "-f", &changed_file], &[TOKEN_ENV]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["changes"],
        json!([
            {"action": "update", "kind": "project", "name": "demo", "fields": ["rate_limit"]},
            {"action": "update", "kind": "key", "name": "demo/laptop", "fields": ["rate_limit"]}
        ])
    );
    let (code, out, _) = mcpgw(&cp, &["plan", "-f", &changed_file], &[TOKEN_ENV]);
    assert_eq!(code, 0);
    assert!(out.contains("update key demo/laptop (rate_limit)"), "{out}");
    let before = cp.db_revision();
    let (code, out, err) = mcpgw(&cp, &["apply", "-f", &changed_file], &[TOKEN_ENV]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("mcpgw_"), "an existing key is never shown: {out}");
    assert_eq!(cp.db_revision(), before + 1);
    let snapshot = cp.wait_for_snapshot();
    assert_eq!(snapshot["projects"][0]["rate_limit"], json!({"calls_per_minute": 300}));
    assert_eq!(key_of(&snapshot, "laptop"), json!({"calls_per_minute": 30, "burst": 3}));
    let keys = cp.ok("GET", "/api/v1/api-keys", None, 200);
    let laptop = keys["items"].as_array().unwrap().iter().find(|k| k["name"] == "laptop").unwrap();
    assert_eq!(laptop["rate_limit"], json!({"calls_per_minute": 30, "burst": 3}));

    // Exported with the limits, and applied back: nothing to do.
    let exported = tmp.path().join("exported.json");
    let exported_arg = exported.to_string_lossy().into_owned();
    assert_eq!(mcpgw(&cp, &["export", "-o", &exported_arg], &[]).0, 0);
    let text: Value = serde_json::from_str(&std::fs::read_to_string(&exported).unwrap()).unwrap();
    assert_eq!(text["projects"][0]["rate_limit"], json!({"calls_per_minute": 300}));
    let laptop = text["projects"][0]["keys"].as_array().unwrap().iter().find(|k| k["name"] == "laptop").unwrap();
    assert_eq!(laptop["rate_limit"], json!({"calls_per_minute": 30, "burst": 3}));
    assert_eq!(text["configs"][0]["servers"][0]["tool_rate_limits"], tool_limits);
    let (code, out, err) = mcpgw(&cp, &["plan", "-f", &exported_arg], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("no changes"), "{out}");

    // Out-of-range limits are problems at their pointers, and nothing is written.
    let mut bad = changed.clone();
    bad["projects"][0]["rate_limit"] = json!({"calls_per_minute": 0});
    bad["projects"][0]["keys"][1]["rate_limit"] = json!({"calls_per_minute": 5, "burst": 1_000_001});
    bad["configs"][0]["servers"][0]["tool_rate_limits"] = json!({"echo": {"calls_per_minute": 0}});
    let before = cp.db_revision();
    let (status, answer) = cp.call("POST", "/api/v1/state/apply", Some(bad));
    assert_eq!(status, 422, "{answer}");
    let pointers: Vec<&str> =
        answer["error"]["problems"].as_array().unwrap().iter().map(|p| p["pointer"].as_str().unwrap()).collect();
    for expected in [
        "/projects/0/rate_limit/calls_per_minute",
        "/projects/0/keys/1/rate_limit/burst",
        "/configs/0/servers/0/tool_rate_limits/echo/calls_per_minute",
    ] {
        assert!(pointers.contains(&expected), "no problem at {expected}: {pointers:?}");
    }
    assert_eq!(cp.db_revision(), before);

    // Back to the first limits: two changes; then left out of the document, every limit is removed.
    let (code, out, err) = mcpgw(&cp, &["--json", "apply", "-f", &file], &[TOKEN_ENV]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["changes"].as_array().unwrap().len(), 2, "{out}");
    let (code, _, err) = mcpgw(&cp, &["apply", "-f", &write_yaml(tmp.path(), "plain.yaml", &document())], &[TOKEN_ENV]);
    assert_eq!(code, 0, "{err}");
    let snapshot = cp.wait_for_snapshot();
    assert_eq!(snapshot["projects"][0]["rate_limit"], Value::Null);
    assert_eq!(key_of(&snapshot, "laptop"), Value::Null);
    assert_eq!(snapshot["mcp_configs"][0]["servers"][0]["rate_limit"], Value::Null);
}

on_every_database!(
    apply_creates_everything_once_and_a_client_calls_through_its_key,
    prune_deletes_exactly_what_the_document_no_longer_names,
    a_document_with_ten_errors_reports_all_ten_and_changes_nothing,
    a_plan_made_before_a_concurrent_edit_is_refused,
    export_then_apply_changes_nothing,
    rate_limits_are_declared_planned_applied_and_exported,
);
