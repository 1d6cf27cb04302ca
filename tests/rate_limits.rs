//! Rate limits on one data plane, without Redis: the tightest of a tool's, a server's, a key's and a
//! project's limits refuses a call before it reaches the upstream, over HTTP (`429`) and over stdio
//! (a JSON-RPC error). Limits across replicas are in `replicas.rs`.

mod common;

use common::control_plane::ControlPlane;
use common::data_plane::*;
use serde_json::{Value, json};

fn call_status(session: &RawSession, tool: &str, n: u64) -> (u16, Value) {
    let body = json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                      "params": {"name": tool, "arguments": {"message": "m", "a": 1, "b": 2}}});
    session.send(&body.to_string())
}

#[test]
fn the_tightest_limit_refuses_first_and_names_itself() {
    let cp = ControlPlane::start();
    let server = json!({"server_name": "fx", "config": {"command": fixture()},
                        "rate_limit": {"calls_per_minute": 5},
                        "tool_rate_limits": {"echo": {"calls_per_minute": 2, "burst": 1}}});
    let key = provision(&cp, "tight", json!([server]));
    cp.wait_for_snapshot();
    let dp = DataPlane::start(&cp, &[]);
    let session = RawSession::open(&dp.mcp_url(), &key);
    let url = &session;

    // `echo` has room for 2 + 1 burst; the fourth is refused by the tool's limit.
    let statuses: Vec<u16> = (0..4).map(|n| call_status(url, "fx__echo", n).0).collect();
    assert_eq!(statuses, [200, 200, 200, 429], "{:?}", call_status(url, "fx__echo", 9));
    let (status, refusal) = call_status(url, "fx__echo", 10);
    assert_eq!(status, 429);
    assert_eq!(refusal["id"], 10, "{refusal}");
    assert_eq!(refusal["error"]["code"], -32029, "{refusal}");
    let message = refusal["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("tool fx__echo") && message.contains("2 calls per minute + 1 burst"), "{message}");
    // `add` is under the server's limit only: two more calls fill the server's 5.
    let statuses: Vec<u16> = (0..3).map(|n| call_status(url, "fx__add", 20 + n).0).collect();
    assert_eq!(statuses, [200, 200, 429]);
    let (_, refusal) = call_status(url, "fx__add", 30);
    assert!(refusal["error"]["message"].as_str().unwrap_or_default().contains("server fx"), "{refusal}");

    // A name no server answers to is the policy's to refuse, not a limit's.
    let (status, unknown) = call_status(url, "zz__nope", 40);
    assert_ne!(status, 429, "{unknown}");
    let metrics = dp.get("/metrics").1;
    assert!(metrics.contains("mcpgw_rate_limited_total{project=\"proj-tight\",limit=\"tool\"} 2"), "{metrics}");
    assert!(metrics.contains("mcpgw_rate_limited_total{project=\"proj-tight\",limit=\"server\"} 2"), "{metrics}");
    // The upstream saw exactly the admitted calls.
    let admitted = |l: &[Value]| l.iter().filter(|l| l["outcome"] == "success").count();
    let refused = |l: &[Value]| l.iter().filter(|l| l["event"] == "rate_limited").count();
    let audit = dp.audit_records(|l| admitted(l) >= 5 && refused(l) >= 4);
    assert_eq!(admitted(&audit), 5, "{audit:?}");
    assert_eq!(refused(&audit), 4, "{audit:?}");
}

#[test]
fn a_stdio_gateway_counts_its_calls_too() {
    let cp = ControlPlane::start();
    let key = provision(&cp, "local", json!([fixture_server("fx")]));
    let project_key = cp.ok("GET", "/api/v1/projects/proj-local", None, 200);
    assert!(project_key["rate_limit"].is_null());
    cp.ok("PATCH", "/api/v1/projects/proj-local", Some(json!({"rate_limit": {"calls_per_minute": 3}})), 200);
    cp.wait_for_snapshot();
    runtime().block_on(async {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_data-plane"));
        cmd.arg("stdio")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("MCPGW_DATA_DIR", cp.data_dir())
            .env("MCPGW_API_KEY", &key)
            .env("MCPGW_AUDIT_LOG", "off");
        let transport = rmcp::transport::TokioChildProcess::new(cmd).expect("spawn data-plane stdio");
        let client = rmcp::ServiceExt::serve((), transport).await.expect("initialize");
        let mut outcomes = Vec::new();
        for i in 0..5 {
            outcomes.push(call(&client, "fx__echo", json!({"message": format!("m{i}")})).await);
        }
        let _ = client.cancel().await;
        assert!(outcomes[..3].iter().all(Result::is_ok), "{outcomes:?}");
        for refused in &outcomes[3..] {
            let message = refused.as_ref().expect_err("over the project's limit");
            assert!(message.contains("rate limit of project proj-local"), "{message}");
        }
    });
}
