//! Property tests of bearer-token handling with OAuth configured, in process: whatever credential a
//! client sends (arbitrary text, JWT-shaped text naming the configured issuer or another, forged
//! headers), on whichever MCP endpoint, the answer is a refusal below 500 with a challenge, never an
//! admission; the project's API key keeps working on its own endpoint.

use std::sync::LazyLock;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use serde_json::json;
use tower::ServiceExt;

/// Nothing listens there: key fetches fail at once, as for a provider that is down.
const ISSUER: &str = "http://127.0.0.1:9";

struct Harness {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    key: String,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let key = shared::api_key::generate();
    let (user, project) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let snapshot: shared::Snapshot = serde_json::from_value(json!({
        "format_version": 1, "revision": 1, "generated_at": "2026-01-01T00:00:00Z",
        "users": [{"id": user, "email": "a@example.com"}],
        "projects": [{"id": project, "name": "p", "mcp_config_id": null, "members": [user]}],
        "mcp_configs": [],
        "api_keys": [{"id": key.id, "project_id": project, "user_id": user,
            "hash": shared::api_key::hash(&key.secret).unwrap()}],
    }))
    .unwrap();
    let mut config = data_plane::Config::from_env();
    config.oauth_issuers = vec![ISSUER.into()];
    config.public_url = Some("http://127.0.0.1:8000".into());
    let router = rt.block_on(async { data_plane::in_process(config, snapshot).unwrap() });
    Harness { rt, router, key: key.secret }
});

impl Harness {
    fn initialize(&self, path: &str, authorization: &str) -> (StatusCode, Option<String>) {
        let body = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "p", "version": "1"}}});
        let req = Request::post(path)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("authorization", authorization)
            .body(Body::from(body.to_string()))
            .unwrap();
        self.rt.block_on(async {
            let resp = self.router.clone().oneshot(req).await.unwrap();
            let challenge = resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(String::from);
            (resp.status(), challenge)
        })
    }
}

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Credentials a client might send: text, JWT-shaped text with any header and claims, or a
/// well-formed JWT of the configured issuer with a forged signature.
fn arb_credential() -> impl Strategy<Value = String> {
    let alg = prop_oneof![
        prop::sample::select(vec!["RS256", "ES256", "HS256", "none", "EdDSA"]).prop_map(String::from),
        "[A-Z0-9]{0,6}",
    ];
    let iss = prop_oneof![Just(ISSUER.to_string()), "[ -~]{0,20}"];
    prop_oneof![
        "[!-~]{1,300}",
        "eyJ[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,80}",
        (alg, proptest::option::of("[ -~]{0,12}"), iss, any::<i64>(), "[A-Za-z0-9_-]{0,90}").prop_map(
            |(alg, kid, iss, exp, sig)| {
                let header = json!({"alg": alg, "kid": kid});
                let claims = json!({"iss": iss, "sub": "a", "aud": "http://127.0.0.1:8000/mcp", "exp": exp,
                                    "email": "a@example.com"});
                format!("{}.{}.{sig}", b64(&header), b64(&claims))
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_forged_credential_is_admitted(credential in arb_credential(),
                                        path in prop_oneof![Just("/mcp"), Just("/mcp/"), Just("/mcp/p"), Just("/mcp/x/")]) {
        let (status, challenge) = HARNESS.initialize(path, &format!("Bearer {credential}"));
        prop_assert!(matches!(status.as_u16(), 401 | 403), "{status} for {credential:?}");
        if status == StatusCode::UNAUTHORIZED {
            let challenge = challenge.unwrap_or_default();
            prop_assert!(challenge.contains("resource_metadata=\"http://127.0.0.1:8000/.well-known/oauth-protected-resource/mcp"), "{challenge}");
        }
    }
}

#[test]
fn the_api_key_still_works_on_its_project_endpoint() {
    let h = &*HARNESS;
    assert_eq!(h.initialize("/mcp/p", &format!("Bearer {}", h.key)).0, StatusCode::OK);
    assert_eq!(h.initialize("/mcp/x", &format!("Bearer {}", h.key)).0, StatusCode::UNAUTHORIZED);
}
