//! End-to-end tests of streamable-HTTP sessions through the real binaries: a session belongs to the
//! key that opened it, keys hold a bounded number of them, their ids stay out of the logs; and the
//! snapshot watcher reports an invalid file once.

mod common;

use std::time::{Duration, Instant};

use common::control_plane::ControlPlane;
use common::data_plane::*;
use serde_json::{Value, json};

/// One raw HTTP exchange with `/mcp`: status, headers, body text.
fn mcp(
    dp: &DataPlane,
    method: &str,
    key: &str,
    session: Option<&str>,
    body: Option<&Value>,
) -> (u16, reqwest::header::HeaderMap, String) {
    common::tls();
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let mut req = client
        .request(method.parse().unwrap(), dp.mcp_url())
        .header("Accept", "application/json, text/event-stream")
        .header("Authorization", format!("Bearer {key}"));
    if let Some(id) = session {
        req = req.header("Mcp-Session-Id", id).header("MCP-Protocol-Version", "2025-06-18");
    }
    if let Some(body) = body {
        req = req.header("Content-Type", "application/json").body(body.to_string());
    }
    match req.send() {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            // A GET stream stays open: read what arrives within the timeout.
            let text = resp.text().unwrap_or_default();
            (status, headers, text)
        }
        Err(e) => panic!("{method} /mcp: {e}"),
    }
}

/// Opens a session with `key`; its id.
fn open_session(dp: &DataPlane, key: &str) -> String {
    let (status, headers, text) = mcp(dp, "POST", key, None, Some(&initialize_body()));
    assert_eq!(status, 200, "{text}");
    let id = headers["mcp-session-id"].to_str().unwrap().to_string();
    let (status, _, _) =
        mcp(dp, "POST", key, Some(&id), Some(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})));
    assert_eq!(status, 202);
    id
}

fn list_tools(dp: &DataPlane, key: &str, session: &str) -> (u16, String) {
    let (status, _, text) =
        mcp(dp, "POST", key, Some(session), Some(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"})));
    (status, text)
}

fn metric(dp: &DataPlane, line_start: &str) -> u64 {
    let (_, text) = dp.get("/metrics");
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn key_id(key: &str) -> &str {
    key.split('_').nth(1).unwrap()
}

#[test]
fn a_session_answers_only_the_key_that_opened_it() {
    let cp = ControlPlane::start();
    let a = provision(&cp, "owner-a", json!([fixture_server("fx")]));
    let a_second = new_key(&cp, "owner-a");
    let b = provision(&cp, "owner-b", json!([fixture_server("fx")]));
    let dp = DataPlane::start(&cp, &[]);
    dp.sync(&cp);

    let session = open_session(&dp, &a);
    let (status, text) = list_tools(&dp, &a, &session);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("fx__echo"), "{text}");

    // Another project's key, and another key of the same project: as for an unknown session.
    let (_, _, unknown) =
        mcp(&dp, "POST", &b, Some("no-such-session"), Some(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})));
    for other in [&b, &a_second] {
        let (status, text) = list_tools(&dp, other, &session);
        assert_eq!(status, 404, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let u: Value = serde_json::from_str(&unknown).unwrap();
        assert_eq!(v, u, "a foreign session must look exactly like an unknown one");
        let (status, _, text) = mcp(&dp, "GET", other, Some(&session), None);
        assert_eq!(status, 404, "GET stream on a foreign session: {text}");
        let (status, _, text) = mcp(&dp, "DELETE", other, Some(&session), None);
        assert_eq!(status, 404, "DELETE of a foreign session: {text}");
    }
    assert_eq!(metric(&dp, "mcpgw_auth_failures_total{reason=\"session_owner\"}"), 6);

    // Nothing of that reached the owner's session.
    let (status, text) = list_tools(&dp, &a, &session);
    assert_eq!(status, 200, "the owner's session survives: {text}");

    // Refusals are audited under a short name; the session id itself is in no log.
    std::thread::sleep(Duration::from_millis(300));
    let audit = std::fs::read_to_string(&dp.audit_log).unwrap_or_default();
    let refusals: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "session_refused")
        .collect();
    assert_eq!(refusals.len(), 6, "{audit}");
    assert!(refusals.iter().any(|r| r["key_id"] == key_id(&b) && r["project"] == "proj-owner-b"), "{refusals:?}");
    assert!(refusals.iter().all(|r| r["session"].as_str().is_some_and(|s| s.len() == 12)), "{refusals:?}");
    assert!(!audit.contains(&session), "the audit log carries the session id");
    assert!(!dp.log_text().contains(&session), "the log carries the session id:\n{}", dp.log_text());

    // Rotating the key ends its sessions: the new secret cannot continue them.
    let rotated = cp.ok("POST", &format!("/api/v1/api-keys/{}/rotate", key_id(&a)), None, 200)["key"]
        .as_str()
        .unwrap()
        .to_string();
    dp.sync(&cp);
    let (status, text) = list_tools(&dp, &rotated, &session);
    assert_eq!(status, 404, "a rotated key's session is over: {text}");
    let fresh = open_session(&dp, &rotated);
    assert_eq!(list_tools(&dp, &rotated, &fresh).0, 200);

    // Disabling a key ends its sessions: enabling it again does not bring them back.
    let b_session = open_session(&dp, &b);
    cp.ok("POST", &format!("/api/v1/api-keys/{}/disable", key_id(&b)), None, 200);
    dp.sync(&cp);
    cp.ok("POST", &format!("/api/v1/api-keys/{}/enable", key_id(&b)), None, 200);
    dp.sync(&cp);
    let (status, text) = list_tools(&dp, &b, &b_session);
    assert_eq!(status, 404, "a disabled key's session is over: {text}");

    // The owner ends its own session.
    let (status, _, _) = mcp(&dp, "DELETE", &rotated, Some(&fresh), None);
    assert_eq!(status, 200);
    assert_eq!(list_tools(&dp, &rotated, &fresh).0, 404);
}

#[test]
fn keys_hold_a_bounded_number_of_sessions() {
    let cp = ControlPlane::start();
    let a = provision(&cp, "cap-a", json!([fixture_server("fx")]));
    let b = provision(&cp, "cap-b", json!([fixture_server("fx")]));
    let c = new_key(&cp, "cap-b");
    let dp = DataPlane::start(&cp, &[("MCPGW_MAX_SESSIONS_PER_KEY", "3"), ("MCPGW_MAX_SESSIONS", "5")]);
    dp.sync(&cp);

    let held: Vec<String> = (0..3).map(|_| open_session(&dp, &a)).collect();
    let (status, headers, text) = mcp(&dp, "POST", &a, None, Some(&initialize_body()));
    assert_eq!(status, 429, "{text}");
    assert!(headers.contains_key("retry-after"));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("3 open sessions"), "{v}");
    assert_eq!(metric(&dp, "mcpgw_sessions_refused_total{reason=\"per_key_limit\"}"), 1);
    for id in &held {
        assert_eq!(list_tools(&dp, &a, id).0, 200, "sessions under the limit keep working");
    }

    // Another key is not affected, up to the gateway-wide limit.
    open_session(&dp, &b);
    open_session(&dp, &b);
    let (status, headers, text) = mcp(&dp, "POST", &c, None, Some(&initialize_body()));
    assert_eq!(status, 503, "{text}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(metric(&dp, "mcpgw_sessions_refused_total{reason=\"total_limit\"}"), 1);

    // Closing one frees its place.
    assert_eq!(mcp(&dp, "DELETE", &a, Some(&held[0]), None).0, 200);
    let again = open_session(&dp, &a);
    assert_eq!(list_tools(&dp, &a, &again).0, 200);
}

#[test]
fn an_invalid_snapshot_is_reported_once_while_it_stays() {
    let cp = ControlPlane::start();
    provision(&cp, "storm", json!([fixture_server("fx")]));
    let dp = DataPlane::start(&cp, &[]);
    dp.sync(&cp);
    let before = metric(&dp, "mcpgw_reload_failures_total");
    let path = cp.snapshot_path();
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, b"{\"format_version\": 1, \"revision\": \"not a number\"}").unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let failures = metric(&dp, "mcpgw_reload_failures_total") - before;
    let logged = dp.log_text().matches("new snapshot is invalid").count();
    assert_eq!(failures, 1, "one invalid file, one failure");
    assert_eq!(logged, 1, "one invalid file, one log line:\n{}", dp.log_text());

    // The next real change is read again.
    std::fs::write(&path, &good).unwrap();
    cp.ok("POST", "/api/v1/users", Some(json!({"email": "after-storm@example.com"})), 201);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ready_at(&dp, cp.db_revision()) {
        assert!(Instant::now() < deadline, "{}", dp.get("/readyz").1);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ready_at(dp: &DataPlane, revision: u64) -> bool {
    let v: Value = serde_json::from_str(&dp.get("/readyz").1).unwrap_or(Value::Null);
    v["revision"].as_u64().is_some_and(|r| r >= revision)
}
