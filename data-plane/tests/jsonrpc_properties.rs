//! Property tests of the gateway's HTTP/JSON-RPC request handling (the CI-sized twin of
//! `fuzz/fuzz_targets/jsonrpc.rs`), in process: whatever a client sends to `/mcp`, the gateway
//! answers with a status below 500 and keeps serving; without a valid key it is always 401.

use std::sync::LazyLock;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Harness {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    key: String,
    session: String,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let key = shared::api_key::generate();
    let (user, project, config) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let snapshot: shared::Snapshot = serde_json::from_value(json!({
        "format_version": 1, "revision": 1, "generated_at": "2026-01-01T00:00:00Z",
        "users": [{"id": user, "email": "a@example.com"}],
        "projects": [{"id": project, "name": "p", "mcp_config_id": config, "members": [user]}],
        "mcp_configs": [{"id": config, "name": "c", "servers": [
            // Nothing listens there: calls fail fast, as an upstream that is down.
            {"server_name": "down", "config": {"url": "http://127.0.0.1:9/mcp"}, "tools": ["echo"],
             "input_guardrails_policy": {"enabled": true, "block": ["injection_attack"]},
             "timeouts": {"connect_ms": 500, "discovery_ms": 500, "call_ms": 500}}
        ]}],
        "api_keys": [{"id": key.id, "project_id": project, "user_id": user,
            "hash": shared::api_key::hash(&key.secret).unwrap()}],
    }))
    .unwrap();
    let config = data_plane::Config::from_env();
    let router = rt.block_on(async { data_plane::in_process(config, snapshot).unwrap() });
    let mut h = Harness { rt, router, key: key.secret, session: String::new() };
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "p", "version": "1"}}});
    let (status, session) = h.post(init.to_string().into_bytes(), true, None);
    assert_eq!(status, StatusCode::OK);
    h.session = session.expect("a session id");
    h
});

impl Harness {
    /// Posts `body` to `/mcp`; the status and the session id the answer carries.
    fn post(&self, body: Vec<u8>, with_key: bool, session: Option<&str>) -> (StatusCode, Option<String>) {
        let (status, session, _) = self.exchange(body, with_key, session);
        (status, session)
    }

    /// Like `post`, with the answer's body.
    fn exchange(&self, body: Vec<u8>, with_key: bool, session: Option<&str>) -> (StatusCode, Option<String>, Vec<u8>) {
        let mut req = Request::post("/mcp")
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if with_key {
            req = req.header("authorization", format!("Bearer {}", self.key));
        }
        if let Some(s) = session {
            req = req.header("mcp-session-id", s).header("mcp-protocol-version", "2025-06-18");
        }
        let req = req.body(Body::from(body)).unwrap();
        self.rt.block_on(async {
            let resp = self.router.clone().oneshot(req).await.unwrap();
            let session = resp.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(String::from);
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap_or_default();
            (status, session, body.to_vec())
        })
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        prop_oneof![Just("down__echo".to_string()), Just("gateway_call_tools".to_string()), ".{0,16}"]
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("name".to_string()),
                    Just("arguments".to_string()),
                    Just("uri".to_string()),
                    Just("_meta".to_string()),
                    Just("cursor".to_string()),
                    "[a-z]{1,8}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_request() -> impl Strategy<Value = Value> {
    let method = prop_oneof![
        Just("tools/list"),
        Just("tools/call"),
        Just("resources/list"),
        Just("resources/read"),
        Just("resources/templates/list"),
        Just("prompts/list"),
        Just("prompts/get"),
        Just("ping"),
        Just("initialize"),
        Just("completion/complete"),
        Just("logging/setLevel"),
        Just("notifications/cancelled"),
        Just("nonsense/method"),
    ];
    let id = prop_oneof![Just(Value::Null), any::<i64>().prop_map(Value::from), "[a-z0-9]{0,8}".prop_map(Value::from)];
    // Mostly well-formed parameters (so requests get past parsing into the gateway), some arbitrary.
    let name = prop_oneof![
        Just("down__echo".to_string()),
        Just("down__Echo".to_string()),
        Just("gateway_list_servers".to_string()),
        Just("gateway_call_tools".to_string()),
        Just("gateway_discover_tools".to_string()),
        ".{0,16}"
    ];
    let args = prop::collection::btree_map("[a-z_]{1,10}", arb_json(), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()));
    let shaped = (name, args, ".{0,24}").prop_map(
        |(name, arguments, uri)| json!({"name": name, "arguments": arguments, "uri": format!("mcpgw://down/{uri}")}),
    );
    let params = prop_oneof![3 => shaped, 1 => arb_json()];
    (method, id, params, prop::bool::weighted(0.9)).prop_map(|(method, id, params, with_id)| {
        let mut req = json!({"jsonrpc": "2.0", "method": method, "params": params});
        if with_id {
            req["id"] = id;
        }
        req
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_get_an_answer_below_500(body in prop::collection::vec(any::<u8>(), 0..512), in_session in any::<bool>()) {
        let h = &*HARNESS;
        let session = in_session.then_some(h.session.as_str());
        let (status, _) = h.post(body, true, session);
        prop_assert!(status.as_u16() < 500, "{status}");
    }

    #[test]
    fn a_body_that_is_not_one_json_rpc_message_is_a_400_json_rpc_error(
        body in prop_oneof![
            // Not JSON at all.
            "[^\\[{]{1,64}".prop_map(String::into_bytes),
            // A batch.
            prop::collection::vec(arb_request(), 1..4).prop_map(|b| Value::from(b).to_string().into_bytes()),
            // Nested deeper than any parser should follow.
            (129usize..100_000).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()),
            (129usize..100_000).prop_map(|depth| format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth)).into_bytes()),
            // JSON, but no JSON-RPC message.
            arb_json().prop_filter("not a request", |v| v.get("method").is_none() && v.get("id").is_none())
                .prop_map(|v| v.to_string().into_bytes()),
        ],
        in_session in any::<bool>(),
    ) {
        let h = &*HARNESS;
        let session = in_session.then_some(h.session.as_str());
        let (status, _, answer) = h.exchange(body.clone(), true, session);
        prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&answer));
        let answer: Value = serde_json::from_slice(&answer).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let code = answer["error"]["code"].as_i64();
        prop_assert!(code == Some(-32700) || code == Some(-32600), "{}", answer);
        prop_assert_eq!(&answer["jsonrpc"], "2.0");
        if body.first() == Some(&b'[') && serde_json::from_slice::<Value>(&body).is_ok() {
            prop_assert!(answer["error"]["message"].as_str().unwrap_or_default().contains("batches"), "{}", answer);
        }
    }

    #[test]
    fn any_json_rpc_request_gets_an_answer_below_500(req in arb_request(), in_session in any::<bool>()) {
        let h = &*HARNESS;
        let session = in_session.then_some(h.session.as_str());
        let (status, _) = h.post(req.to_string().into_bytes(), true, session);
        prop_assert!(status.as_u16() < 500, "{status} for {req}");
    }

    #[test]
    fn without_a_key_everything_is_401(req in arb_request()) {
        let h = &*HARNESS;
        let (status, _) = h.post(req.to_string().into_bytes(), false, Some(&h.session));
        prop_assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}

#[test]
fn a_body_not_sent_as_json_is_415_with_a_json_rpc_error() {
    let h = &*HARNESS;
    let req = Request::post("/mcp")
        .header("host", "127.0.0.1")
        .header("content-type", "text/plain")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", format!("Bearer {}", h.key))
        .body(Body::from(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string()))
        .unwrap();
    let (status, body) = h.rt.block_on(async {
        let resp = h.router.clone().oneshot(req).await.unwrap();
        (resp.status(), axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap())
    });
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], -32600, "{v}");
}

#[test]
fn the_gateway_still_serves_after_the_properties() {
    let h = &*HARNESS;
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string().into_bytes();
    assert_eq!(h.post(ping, true, Some(&h.session)).0, StatusCode::OK);
}

/// An upstream that keeps failing to connect backs off, but no request waits out the backoff: each
/// answers within about its connect timeout (500 ms here), however many failures came before.
#[test]
fn a_down_upstream_never_holds_a_request_beyond_its_connect_timeout() {
    let h = &*HARNESS;
    for (i, method) in
        ["prompts/list", "resources/templates/list", "resources/list", "tools/list"].iter().cycle().take(16).enumerate()
    {
        let req = json!({"jsonrpc": "2.0", "id": 1000 + i, "method": method, "params": {}});
        let started = std::time::Instant::now();
        let (status, _) = h.post(req.to_string().into_bytes(), true, Some(&h.session));
        let took = started.elapsed();
        assert!(status.as_u16() < 500, "{method}: {status}");
        assert!(took < std::time::Duration::from_millis(1500), "{method} #{i} took {took:?}");
    }
}
