//! The gateway's request handling, in process: any body sent to `/mcp` with a valid key gets an
//! answer below 500.
#![no_main]

use std::sync::LazyLock;

use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct Harness {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    key: String,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let key = shared::api_key::generate();
    let (user, project, config) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let snapshot = format!(
        r#"{{"format_version": 1, "revision": 1, "generated_at": "2026-01-01T00:00:00Z",
        "users": [{{"id": "{user}", "email": "a@example.com"}}],
        "projects": [{{"id": "{project}", "name": "p", "mcp_config_id": "{config}", "members": ["{user}"]}}],
        "mcp_configs": [{{"id": "{config}", "name": "c", "servers": [{{"server_name": "down",
            "config": {{"url": "http://127.0.0.1:9/mcp"}}, "timeouts": {{"connect_ms": 200, "discovery_ms": 200, "call_ms": 200}}}}]}}],
        "api_keys": [{{"id": "{}", "project_id": "{project}", "user_id": "{user}", "hash": "{}"}}]}}"#,
        key.id,
        shared::api_key::hash(&key.secret).expect("hash")
    );
    let snapshot = shared::Snapshot::from_json(snapshot.as_bytes()).expect("snapshot");
    let router = rt.block_on(async {
        data_plane::in_process(data_plane::Config::from_env(), snapshot).expect("gateway")
    });
    Harness { rt, router, key: key.secret }
});

fuzz_target!(|data: &[u8]| {
    let h = &*HARNESS;
    let req = Request::post("/mcp")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", format!("Bearer {}", h.key))
        .body(Body::from(data.to_vec()))
        .expect("request");
    let status = h.rt.block_on(async { h.router.clone().oneshot(req).await.expect("infallible").status() });
    assert!(status.as_u16() < 500, "{status}");
});
