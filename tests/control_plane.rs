//! End-to-end tests of the control plane: the real binary on an ephemeral port, driven over HTTP.
//! Every test runs twice, on SQLite and on PostgreSQL (see `on_every_database!` at the end).

#[macro_use]
mod common;

use std::time::Duration;

use common::control_plane::{ADMIN_KEY, Backend, ControlPlane, backend, database_name, seed, tempdir::TempDir};
use common::postgres::Cluster;
use serde_json::{Value, json};

fn health_is_open_and_everything_else_needs_the_key() {
    let cp = ControlPlane::start();
    let r = cp.client.get(cp.url("/health")).send().unwrap();
    assert_eq!(r.status(), 200);
    let r = cp.client.get(cp.url("/api/v1/users")).send().unwrap();
    assert_eq!(r.status(), 401);
    // Not a Basic challenge: a browser neither prompts for nor replays Basic credentials on the API.
    assert_eq!(r.headers().get("www-authenticate").unwrap(), "Bearer realm=\"mcpgw admin\"");
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    // Every accepted way of presenting the key.
    for req in [
        cp.client.get(cp.url("/api/v1/users")).bearer_auth(ADMIN_KEY),
        cp.client.get(cp.url("/api/v1/users")).header("apikey", ADMIN_KEY),
    ] {
        assert_eq!(req.send().unwrap().status(), 200);
    }
    // HTTP Basic, which browsers attach to every request to the origin, opens the docs only.
    for (method, path) in [("GET", "/api/v1/users"), ("POST", "/api/v1/users"), ("POST", "/docs/")] {
        let r = cp
            .client
            .request(method.parse().unwrap(), cp.url(path))
            .basic_auth("admin", Some(ADMIN_KEY))
            .json(&json!({"email": "basic@example.com"}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} with Basic");
    }
    assert_eq!(cp.ok("GET", "/api/v1/users", None, 200)["items"], json!([]));
    // Docs and the OpenAPI document are guarded too, and ask a browser for Basic credentials.
    let docs = cp.client.get(cp.url("/docs/")).send().unwrap();
    assert_eq!(docs.status(), 401);
    assert!(docs.headers().get("www-authenticate").unwrap().to_str().unwrap().starts_with("Basic"));
    assert_eq!(cp.client.get(cp.url("/openapi.json")).send().unwrap().status(), 401);
    for path in ["/docs/", "/openapi.json"] {
        let r = cp.client.get(cp.url(path)).basic_auth("admin", Some(ADMIN_KEY)).send().unwrap();
        assert_eq!(r.status(), 200, "{path}");
        // Nothing of the control plane may be framed by another page (clickjacking).
        assert_eq!(r.headers().get("x-frame-options").unwrap(), "DENY");
        assert_eq!(r.headers().get("content-security-policy").unwrap(), "frame-ancestors 'none'");
    }
    let docs = cp.client.get(cp.url("/docs/")).basic_auth("admin", Some(ADMIN_KEY)).send().unwrap();
    assert!(docs.text().unwrap().contains("swagger"));
    // Unknown routes do not reveal themselves without a key, and are JSON 404s with one.
    assert_eq!(cp.client.get(cp.url("/api/v1/nope")).send().unwrap().status(), 401);
    let (status, body) = cp.call("GET", "/api/v1/nope", None);
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
}

/// What a web page of another site can make the admin's browser send: simple requests (forms,
/// `no-cors` fetches) with any Origin, reads started by includes and links. None gets through; curl,
/// the CLI and the control plane's own pages do.
fn requests_a_page_of_another_site_could_send_are_refused_and_change_nothing() {
    let cp = ControlPlane::start();
    let own = cp.base.clone();
    let before = cp.db_revision();
    let send = |method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>| {
        let mut r = cp.client.request(method.parse().unwrap(), cp.url(path)).bearer_auth(ADMIN_KEY);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            r = r.body(b.to_string());
        }
        let resp = r.send().unwrap();
        let status = resp.status().as_u16();
        let v: Value = resp.json().unwrap_or(Value::Null);
        (status, v)
    };
    let user = |n: u32| format!("{{\"email\": \"csrf{n}@example.com\"}}");
    let json_type = ("content-type", "application/json");
    // Bodies that are not declared JSON: 415 in the JSON error envelope.
    for (i, ct) in [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ]
    .into_iter()
    .enumerate()
    {
        let (status, v) = send("POST", "/api/v1/users", &[("content-type", ct)], Some(&user(i as u32)));
        assert_eq!((status, v["error"]["code"].as_str()), (415, Some("unsupported_media_type")), "{ct}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("application/json"), "{v}");
    }
    assert_eq!(send("POST", "/api/v1/users", &[], Some(&user(10))).0, 415, "a body without a type");
    assert_eq!(send("PUT", "/api/v1/projects/p/config", &[("content-type", "text/plain")], Some("{}")).0, 415);
    assert_eq!(send("PATCH", "/api/v1/users/u", &[("content-type", "text/plain")], Some("{}")).0, 415);
    assert_eq!(send("DELETE", "/api/v1/users/u", &[("content-type", "text/plain")], Some("{}")).0, 415);
    assert_eq!(send("POST", "/api/v1/admin-key/rotate", &[("content-type", "text/plain")], None).0, 415, "empty form");
    // Origins of other sites, whatever the method: 403, before the key is even looked at.
    for origin in ["http://evil.example", "http://localhost:1", "http://127.0.0.1:1", "https://127.0.0.1", "null"] {
        for (method, body) in [("POST", Some(user(20))), ("GET", None), ("DELETE", None), ("OPTIONS", None)] {
            let (status, v) = send(method, "/api/v1/users", &[("origin", origin), json_type], body.as_deref());
            assert_eq!((status, v["error"]["code"].as_str()), (403, Some("forbidden")), "{method} {origin}: {v}");
        }
    }
    let no_key = cp.client.get(cp.url("/docs/")).header("origin", "http://evil.example").send().unwrap();
    assert_eq!(no_key.status(), 403);
    assert!(no_key.headers().get("www-authenticate").is_none(), "no sign-in prompt for another site");
    // The browser says another site started it (an include, a frame, a link): 403, with no Origin.
    for site in ["cross-site", "same-site"] {
        assert_eq!(send("GET", "/api/v1/users", &[("sec-fetch-site", site)], None).0, 403, "{site}");
        assert_eq!(send("POST", "/api/v1/users", &[("sec-fetch-site", site), json_type], Some(&user(30))).0, 403);
        let docs = cp.client.get(cp.url("/docs/")).basic_auth("a", Some(ADMIN_KEY)).header("sec-fetch-site", site);
        assert_eq!(docs.send().unwrap().status(), 403, "/docs/ from {site}");
    }
    assert_eq!(cp.db_revision(), before, "a refused request changed something");
    assert_eq!(cp.ok("GET", "/api/v1/users", None, 200)["items"], json!([]));

    // Accepted: JSON with a charset, the control plane's own origin (as browsers without fetch
    // metadata tell it, and as a same-origin page behind a TLS proxy does), and no browser at all.
    let accepted: [&[(&str, &str)]; 5] = [
        &[("content-type", "application/json; charset=utf-8")],
        &[json_type, ("origin", &own)],
        &[json_type, ("origin", &own), ("sec-fetch-site", "same-origin")],
        &[json_type, ("origin", "https://admin.example.com"), ("sec-fetch-site", "same-origin")],
        &[json_type, ("sec-fetch-site", "none")],
    ];
    for (i, headers) in accepted.iter().enumerate() {
        let (status, v) = send("POST", "/api/v1/users", headers, Some(&user(40 + i as u32)));
        assert_eq!(status, 201, "{headers:?}: {v}");
    }
    assert_eq!(send("GET", "/api/v1/users", &[("origin", &own), ("sec-fetch-site", "same-origin")], None).0, 200);
    // A bodiless action needs no Content-Type (curl -X POST, the CLI): it reaches its handler.
    assert_eq!(send("POST", "/api/v1/api-keys/nope/rotate", &[], None).0, 404);
    assert_eq!(cp.ok("GET", "/api/v1/users", None, 200)["items"].as_array().unwrap().len(), 5);
    let log = cp.log_text();
    assert!(log.contains("refused a request from another web site"), "{log}");
}

fn admin_allowed_origins_replace_the_own_origin() {
    let cp = ControlPlane::start_with_env(&[(
        "MCPGW_ADMIN_ALLOWED_ORIGINS",
        "https://admin.example.com, http://localhost:3000",
    )]);
    let post = |origin: &str, site: Option<&str>, n: u32| {
        let mut r = cp
            .client
            .post(cp.url("/api/v1/users"))
            .bearer_auth(ADMIN_KEY)
            .header("origin", origin)
            .json(&json!({"email": format!("o{n}@example.com")}));
        if let Some(site) = site {
            r = r.header("sec-fetch-site", site);
        }
        r.send().unwrap().status().as_u16()
    };
    // The listed origins, as a reverse proxy's public address is, even if the browser calls it
    // another site.
    assert_eq!(post("https://admin.example.com", Some("cross-site"), 1), 201);
    assert_eq!(post("https://admin.example.com:443", None, 2), 201);
    assert_eq!(post("http://localhost:3000", Some("same-site"), 3), 201);
    // `self` is not listed, so the address the request went to is no longer enough.
    assert_eq!(post(&cp.base, None, 4), 403);
    assert_eq!(post(&cp.base, Some("same-origin"), 5), 403);
    assert_eq!(post("http://admin.example.com", None, 6), 403);
    assert_eq!(cp.ok("GET", "/api/v1/users", None, 200)["items"].as_array().unwrap().len(), 3);

    // A value that is not a list of origins stops the control plane before it listens.
    for bad in ["*", "admin.example.com", "https://admin.example.com/docs"] {
        let dir = TempDir::new("mcpgw-cp-origins");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_control-plane"))
            .env_clear()
            .env("MCPGW_DATA_DIR", dir.path())
            .env("MCPGW_CONTROL_LISTEN", "127.0.0.1:0")
            .env("MCPGW_ADMIN_API_KEY", ADMIN_KEY)
            .env("MCPGW_ADMIN_ALLOWED_ORIGINS", bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("MCPGW_ADMIN_ALLOWED_ORIGINS"), "{bad}: {err}");
    }
}

fn every_documented_operation_refuses_missing_and_wrong_keys() {
    let cp = ControlPlane::start();
    let doc = cp.ok("GET", "/openapi.json", None, 200);
    let paths = doc["paths"].as_object().unwrap();
    let mut checked = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            let open = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x.as_object().is_some_and(|o| o.is_empty())));
            let url = cp.url(&path.replace(['{', '}'], ""));
            let m: reqwest::Method = method.to_uppercase().parse().unwrap();
            let anonymous = cp.client.request(m.clone(), &url).json(&json!({})).send().unwrap().status();
            let wrong = cp.client.request(m, &url).bearer_auth("wrong-key").json(&json!({})).send().unwrap().status();
            if open {
                // Liveness, and the OAuth callback, which a single-use state admits (without one
                // it refuses).
                match path.as_str() {
                    "/health" => assert_eq!(anonymous, 200),
                    "/oauth/callback" => assert_eq!(anonymous, 400),
                    other => panic!("{other} is open"),
                }
            } else {
                assert_eq!(anonymous, 401, "{method} {path} without a key");
                assert_eq!(wrong, 401, "{method} {path} with a wrong key");
                checked += 1;
            }
        }
    }
    assert!(checked >= 38, "only {checked} operations checked");
}

fn full_lifecycle_of_every_resource() {
    let cp = ControlPlane::start();
    // Users.
    let user = cp.ok("POST", "/api/v1/users", Some(json!({"email": "Alice@Example.com"})), 201);
    let uid = user["id"].as_str().unwrap().to_string();
    assert_eq!(cp.ok("GET", &format!("/api/v1/users/{uid}"), None, 200)["email"], "Alice@Example.com");
    assert_eq!(cp.ok("GET", "/api/v1/users/alice@example.com", None, 200)["id"], uid.as_str());
    cp.ok("PATCH", "/api/v1/users/alice@example.com", Some(json!({"email": "alice@corp.example"})), 200);
    assert_eq!(cp.ok("GET", "/api/v1/users", None, 200)["items"][0]["email"], "alice@corp.example");

    // Configs and servers.
    let cfg = cp.ok(
        "POST",
        "/api/v1/configs",
        Some(json!({"name": "default", "description": "tools", "servers": [
            {"server_name": "echo", "config": {"command": "npx", "args": ["-y", "echo"]}, "tools": ["echo"]}
        ]})),
        201,
    );
    assert_eq!(cfg["servers"][0]["config"]["type"], "stdio");
    cp.ok("POST", "/api/v1/configs/default/servers", Some(json!({
        "server_name": "remote", "config": {"url": "https://mcp.example.com/mcp", "headers": {"X-Team": "a"}},
        "denied_tools": ["delete_*"], "input_guardrails_policy": {"enabled": true, "block": ["injection_attack", "pii"]}
    })), 201);
    let servers = cp.ok("GET", "/api/v1/configs/default/servers", None, 200);
    let names: Vec<&str> =
        servers["items"].as_array().unwrap().iter().map(|s| s["server_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["echo", "remote"]);
    let mut remote = cp.ok("GET", "/api/v1/configs/default/servers/remote", None, 200);
    remote["description"] = json!("Remote tools");
    cp.ok("PUT", "/api/v1/configs/default/servers/remote", Some(remote), 200);
    assert_eq!(cp.ok("GET", "/api/v1/configs/default/servers/remote", None, 200)["description"], "Remote tools");
    let copy = cp.ok("POST", "/api/v1/configs/default/copy", Some(json!({"name": "default-copy"})), 201);
    assert_eq!(copy["servers"].as_array().unwrap().len(), 2);
    cp.ok("DELETE", "/api/v1/configs/default-copy/servers/remote", None, 204);
    cp.ok("PATCH", "/api/v1/configs/default-copy", Some(json!({"name": "small"})), 200);
    assert_eq!(cp.ok("GET", "/api/v1/configs/small", None, 200)["servers"].as_array().unwrap().len(), 1);
    assert_eq!(cp.ok("GET", "/api/v1/configs", None, 200)["items"].as_array().unwrap().len(), 2);

    // Projects, members, config assignment.
    let project = cp.ok("POST", "/api/v1/projects", Some(json!({"name": "payments"})), 201);
    let pid = project["id"].as_str().unwrap().to_string();
    assert!(project["mcp_config"].is_null());
    cp.ok("GET", "/api/v1/projects/payments/config", None, 404);
    cp.ok("PUT", "/api/v1/projects/payments/config", Some(json!({"config": "default"})), 200);
    assert_eq!(cp.ok("GET", &format!("/api/v1/projects/{pid}/config"), None, 200)["name"], "default");
    cp.ok("DELETE", "/api/v1/configs/default", None, 409);
    cp.ok("POST", "/api/v1/projects/payments/users", Some(json!({"user": "alice@corp.example"})), 201);
    cp.ok("POST", "/api/v1/projects/payments/users", Some(json!({"user": "alice@corp.example"})), 409);
    assert_eq!(cp.ok("GET", "/api/v1/projects/payments/users", None, 200)["items"][0]["id"], uid.as_str());
    assert_eq!(cp.ok("GET", &format!("/api/v1/users/{uid}/projects"), None, 200)["items"][0]["name"], "payments");
    cp.ok("PATCH", "/api/v1/projects/payments", Some(json!({"description": "Payments team"})), 200);

    // API keys.
    let created =
        cp.ok("POST", "/api/v1/api-keys", Some(json!({"project": "payments", "user": uid, "name": "laptop"})), 201);
    let key_id = created["id"].as_str().unwrap().to_string();
    let secret = created["key"].as_str().unwrap().to_string();
    assert!(secret.starts_with("mcpgw_") && secret.contains(&key_id));
    let listed = cp.ok("GET", "/api/v1/api-keys?project=payments", None, 200);
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert!(listed["items"][0].get("key").is_none() && listed["items"][0].get("hash").is_none());
    assert_eq!(cp.ok("POST", &format!("/api/v1/api-keys/{key_id}/disable"), None, 200)["disabled"], true);
    assert_eq!(cp.ok("POST", &format!("/api/v1/api-keys/{key_id}/enable"), None, 200)["disabled"], false);
    let rotated = cp.ok("POST", &format!("/api/v1/api-keys/{key_id}/rotate"), None, 200);
    assert_ne!(rotated["key"], created["key"]);
    assert_eq!(rotated["id"], key_id.as_str());
    assert!(rotated["rotated_at"].is_string());

    // Deletes refuse while in use, cascade with force.
    cp.ok("DELETE", &format!("/api/v1/users/{uid}"), None, 409);
    cp.ok("DELETE", "/api/v1/projects/payments/users/alice@corp.example", None, 409);
    cp.ok("DELETE", "/api/v1/projects/payments", None, 409);
    cp.ok("DELETE", &format!("/api/v1/api-keys/{key_id}"), None, 204);
    cp.ok("GET", &format!("/api/v1/api-keys/{key_id}"), None, 404);
    cp.ok("DELETE", "/api/v1/projects/payments/users/alice@corp.example", None, 204);
    cp.ok("DELETE", "/api/v1/projects/payments/config", None, 204);
    cp.ok("DELETE", "/api/v1/configs/default", None, 204);
    cp.ok("DELETE", "/api/v1/projects/payments", None, 204);
    cp.ok("DELETE", &format!("/api/v1/users/{uid}"), None, 204);
    cp.ok("GET", &format!("/api/v1/users/{uid}"), None, 404);

    // Force cascades.
    let (email, project, _) = seed(&cp, "bob");
    cp.ok("POST", "/api/v1/api-keys", Some(json!({"project": project, "user": email})), 201);
    cp.ok("DELETE", &format!("/api/v1/users/{email}?force=true"), None, 204);
    assert_eq!(cp.ok("GET", "/api/v1/api-keys", None, 200)["items"].as_array().unwrap().len(), 0);

    let health = cp.ok("GET", "/api/v1/system/health", None, 200);
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["counts"]["users"], 0);
}

fn api_key_needs_membership_and_future_expiry() {
    let cp = ControlPlane::start();
    let (email, project, _) = seed(&cp, "carol");
    cp.ok("POST", "/api/v1/users", Some(json!({"email": "outsider@example.com"})), 201);
    let (status, body) =
        cp.call("POST", "/api/v1/api-keys", Some(json!({"project": project, "user": "outsider@example.com"})));
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("not a member"));
    cp.ok(
        "POST",
        "/api/v1/api-keys",
        Some(json!({"project": project, "user": email, "expires_at": "2001-01-01T00:00:00Z"})),
        422,
    );
    cp.ok("POST", "/api/v1/api-keys", Some(json!({"project": "nope", "user": email})), 422);
    let k = cp.ok(
        "POST",
        "/api/v1/api-keys",
        Some(json!({"project": project, "user": email, "expires_at": "2999-01-01T00:00:00Z"})),
        201,
    );
    assert_eq!(k["expired"], false);
}

fn bad_input_gets_the_right_error_and_changes_nothing() {
    let cp = ControlPlane::start();
    seed(&cp, "dave");
    let before_rev = cp.db_revision();
    let before = cp.wait_for_snapshot();
    let raw = |method: &str, path: &str, body: Vec<u8>| {
        let r = cp
            .client
            .request(method.parse().unwrap(), cp.url(path))
            .bearer_auth(ADMIN_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().unwrap_or(Value::Null);
        assert!(v["error"]["code"].is_string() && v["error"]["message"].is_string(), "{method} {path}: {v}");
        status
    };
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        ("POST", "/api/v1/users", b"{\"email\": ".to_vec(), 400),
        ("POST", "/api/v1/users", b"".to_vec(), 400),
        ("POST", "/api/v1/users", b"[1,2".to_vec(), 400),
        ("POST", "/api/v1/users", br#"{"email": 42}"#.to_vec(), 422),
        ("POST", "/api/v1/users", br#"{"email": "a@b.co", "admin": true}"#.to_vec(), 422),
        ("POST", "/api/v1/users", br#"{"email": "not-an-email"}"#.to_vec(), 422),
        ("POST", "/api/v1/users", br#"{"email": "dave@example.com"}"#.to_vec(), 409),
        ("POST", "/api/v1/users", br#"{"email": "DAVE@example.com"}"#.to_vec(), 409),
        ("POST", "/api/v1/users", format!("{{\"email\": \"{}@x.com\"}}", "a".repeat(2 * 1024 * 1024)).into_bytes(), 413),
        ("POST", "/api/v1/projects", br#"{"name": "proj-dave"}"#.to_vec(), 409),
        ("POST", "/api/v1/projects", br#"{"name": "has space"}"#.to_vec(), 422),
        ("POST", "/api/v1/projects", br#"{"name": "p2", "mcp_config": "missing"}"#.to_vec(), 422),
        ("PATCH", "/api/v1/projects/missing", br#"{"name": "x"}"#.to_vec(), 404),
        ("POST", "/api/v1/configs", br#"{"name": "cfg-dave"}"#.to_vec(), 409),
        ("POST", "/api/v1/configs", br#"{"name": "c2", "servers": [{"server_name": "s", "config": {"type": "stdio", "command": ""}}]}"#.to_vec(), 422),
        ("POST", "/api/v1/configs", br#"{"name": "c2", "servers": [{"server_name": "s", "config": {"url": "ftp://x"}}]}"#.to_vec(), 422),
        ("POST", "/api/v1/configs", br#"{"name": "c2", "servers": [{"server_name": "a__b", "config": {"command": "x"}}]}"#.to_vec(), 422),
        ("POST", "/api/v1/configs", br#"{"name": "c2", "servers": [{"server_name": "s", "config": {"command": "x"}, "input_guardrails_policy": {"block": ["telepathy"]}}]}"#.to_vec(), 422),
        ("POST", "/api/v1/configs", br#"{"name": "c2", "tool_naming": "bare", "servers": [{"server_name": "a", "config": {"command": "x"}}, {"server_name": "b", "config": {"command": "y"}}]}"#.to_vec(), 422),
        ("POST", "/api/v1/configs/cfg-dave/servers", br#"{"server_name": "echo", "config": {"command": "x"}}"#.to_vec(), 409),
        ("PUT", "/api/v1/configs/cfg-dave/servers/nope", br#"{"server_name": "nope", "config": {"command": "x"}}"#.to_vec(), 404),
        ("PUT", "/api/v1/projects/proj-dave/config", br#"{"config": "missing"}"#.to_vec(), 422),
        ("POST", "/api/v1/api-keys", br#"{"project": "proj-dave"}"#.to_vec(), 422),
        ("GET", "/api/v1/users?limit=0", vec![], 422),
        ("GET", "/api/v1/users?limit=abc", vec![], 400),
        ("GET", "/api/v1/users?cursor=%%%", vec![], 422),
        ("DELETE", "/api/v1/users/nobody@example.com", vec![], 404),
        ("GET", "/api/v1/api-keys/doesnotexist", vec![], 404),
        ("POST", "/api/v1/api-keys/doesnotexist/rotate", vec![], 404),
        ("DELETE", "/api/v1/configs/cfg-dave", vec![], 409),
    ];
    for (method, path, body, want) in cases {
        let got = raw(method, path, body);
        assert_eq!(got, want, "{method} {path}");
    }
    assert_eq!(cp.db_revision(), before_rev, "a refused request changed the database");
    let mut after = cp.wait_for_snapshot();
    let mut before = before;
    before["generated_at"] = Value::Null;
    after["generated_at"] = Value::Null;
    assert_eq!(before, after);
}

fn fifty_concurrent_creates_lose_nothing() {
    let cp = ControlPlane::start();
    let base = cp.base.clone();
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let base = base.clone();
            std::thread::spawn(move || {
                let c = reqwest::blocking::Client::new();
                let u = c
                    .post(format!("{base}/api/v1/users"))
                    .bearer_auth(ADMIN_KEY)
                    .json(&json!({"email": format!("u{i}@example.com")}))
                    .send()
                    .unwrap();
                let p = c
                    .post(format!("{base}/api/v1/projects"))
                    .bearer_auth(ADMIN_KEY)
                    .json(&json!({"name": format!("p{i}")}))
                    .send()
                    .unwrap();
                (u.status().as_u16(), p.status().as_u16())
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), (201, 201));
    }
    let users = cp.ok("GET", "/api/v1/users?limit=1000", None, 200);
    assert_eq!(users["items"].as_array().unwrap().len(), 50);
    // Pagination walks the same 50 in stable order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/projects?limit=7&cursor={c}"),
            None => "/api/v1/projects?limit=7".to_string(),
        };
        let page = cp.ok("GET", &path, None, 200);
        seen.extend(page["items"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted);
    assert_eq!(seen.len(), 50);
    let offset = cp.ok("GET", "/api/v1/projects?limit=5&offset=45", None, 200);
    assert_eq!(offset["items"].as_array().unwrap().len(), 5);
    let snap = cp.wait_for_snapshot();
    assert_eq!(snap["users"].as_array().unwrap().len(), 50);
    assert_eq!(snap["projects"].as_array().unwrap().len(), 50);
}

fn snapshot_follows_every_change_and_is_never_half_written() {
    let cp = ControlPlane::start();
    let path = cp.snapshot_path();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(bytes) = std::fs::read(&path) {
                    shared::Snapshot::from_json(&bytes).expect("a reader saw an invalid snapshot");
                    reads += 1;
                }
            }
            reads
        })
    };
    let (email, project, config) = seed(&cp, "erin");
    let snap = cp.wait_for_snapshot();
    assert_eq!(snap["users"][0]["email"], email.as_str());
    assert_eq!(snap["projects"][0]["name"], project.as_str());
    assert_eq!(snap["mcp_configs"][0]["name"], config.as_str());
    assert_eq!(snap["projects"][0]["mcp_config_id"], snap["mcp_configs"][0]["id"]);
    let key = cp.ok("POST", "/api/v1/api-keys", Some(json!({"project": project, "user": email})), 201);
    let snap = cp.wait_for_snapshot();
    let k = &snap["api_keys"][0];
    assert_eq!(k["id"], key["id"]);
    assert!(k["hash"].as_str().unwrap().starts_with("$argon2"));
    assert!(!std::fs::read_to_string(&path).unwrap().contains(key["key"].as_str().unwrap()));
    assert!(shared::api_key::verify(key["key"].as_str().unwrap(), k["hash"].as_str().unwrap()));
    cp.ok("POST", &format!("/api/v1/api-keys/{}/disable", key["id"].as_str().unwrap()), None, 200);
    assert_eq!(cp.wait_for_snapshot()["api_keys"][0]["disabled"], true);
    for i in 0..30 {
        cp.ok("PATCH", &format!("/api/v1/projects/{project}"), Some(json!({"description": format!("rev {i}")})), 200);
    }
    cp.wait_for_snapshot();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // The publisher records its status just after the file is renamed into place.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let status = loop {
        let status = cp.ok("GET", "/api/v1/snapshot/status", None, 200);
        if status["up_to_date"] == true || std::time::Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status["up_to_date"], true, "{status}");
    assert_eq!(status["sha256"].as_str().unwrap().len(), 64);
}

fn secrets_appear_only_once_and_never_in_logs() {
    let cp = ControlPlane::start();
    let (email, project, _) = seed(&cp, "frank");
    let created = cp.ok("POST", "/api/v1/api-keys", Some(json!({"project": project, "user": email})), 201);
    let secret = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    let secret_part = secret.rsplit('_').next().unwrap().to_string();
    let mut seen = Vec::new();
    for path in [
        "/api/v1/api-keys".to_string(),
        format!("/api/v1/api-keys/{id}"),
        format!("/api/v1/api-keys?user={email}"),
        format!("/api/v1/users/{email}"),
        format!("/api/v1/projects/{project}"),
        "/api/v1/system/health".to_string(),
        "/api/v1/snapshot/status".to_string(),
    ] {
        seen.push(cp.ok("GET", &path, None, 200).to_string());
    }
    seen.push(cp.ok("POST", &format!("/api/v1/api-keys/{id}/disable"), None, 200).to_string());
    for body in &seen {
        assert!(!body.contains(&secret_part), "secret leaked in {body}");
    }
    // A secret pasted into a URL by mistake finds nothing and is not logged.
    cp.ok("GET", &format!("/api/v1/api-keys/{secret}"), None, 404);
    let rotated = cp.ok("POST", &format!("/api/v1/api-keys/{id}/rotate"), None, 200);
    let new_part = rotated["key"].as_str().unwrap().rsplit('_').next().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(200));
    let log = cp.log_text();
    assert!(log.contains("request"), "the access log is empty: {log}");
    for s in [&secret_part, &new_part, &ADMIN_KEY.to_string()] {
        assert!(!log.contains(s.as_str()), "a secret appeared in the log");
    }
    assert!(!contains(&database_bytes(cp.data_dir()), &secret_part), "a secret is stored in the database");
}

fn generated_admin_key_survives_restart_and_rotation_kills_the_old_one() {
    let dir = TempDir::new("mcpgw-cp-gen");
    let cp = ControlPlane::start_with(dir, None);
    let key = cp.admin_key.clone();
    assert_eq!(key.len(), 256);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cp.data_dir().join("admin_apikey")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(!cp.log_text().contains(&key));
    seed(&cp, "gina");
    let revision = cp.db_revision();
    cp.wait_for_snapshot();
    let dir = cp.stop();
    // As if the process had died between a commit and its publish: the next start publishes.
    std::fs::remove_file(dir.path().join("snapshot.json")).unwrap();
    // Restart on the same data: the key and the data are still there.
    let mut cp = ControlPlane::start_with(dir, None);
    assert_eq!(cp.admin_key, key);
    assert_eq!(cp.ok("GET", "/api/v1/users", None, 200)["items"][0]["email"], "gina@example.com");
    let snap = cp.wait_for_snapshot();
    assert_eq!(snap["revision"].as_u64(), Some(revision));
    assert_eq!(snap["users"].as_array().unwrap().len(), 1);
    let new = cp.ok("POST", "/api/v1/admin-key/rotate", None, 200)["admin_api_key"].as_str().unwrap().to_string();
    assert_ne!(new, key);
    let r = cp.client.get(cp.url("/api/v1/users")).bearer_auth(&key).send().unwrap();
    assert_eq!(r.status(), 401);
    cp.admin_key = new.clone();
    cp.ok("GET", "/api/v1/users", None, 200);
    assert_eq!(std::fs::read_to_string(cp.data_dir().join("admin_apikey")).unwrap().trim(), new);
}

fn admin_key_from_the_environment_cannot_be_rotated_over_the_api() {
    let cp = ControlPlane::start();
    cp.ok("POST", "/api/v1/admin-key/rotate", None, 409);
    assert!(!cp.data_dir().join("admin_apikey").exists());
}

/// Runs the `mcpgw` CLI against `cp`; (exit code, stdout, stderr).
fn cli(cp: &ControlPlane, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mcpgw"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MCPGW_ADMIN_URL", &cp.base)
        .env("MCPGW_ADMIN_API_KEY", &cp.admin_key)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run mcpgw");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn the_cli_drives_the_admin_api_with_exit_codes_a_script_can_rely_on() {
    let cp = ControlPlane::start();
    let ok = |args: &[&str]| {
        let (code, out, err) = cli(&cp, args, &[], None);
        assert_eq!(code, 0, "mcpgw {args:?} failed: {err}");
        out
    };
    let fails = |args: &[&str], env: &[(&str, &str)], expected: i32| {
        let (code, out, err) = cli(&cp, args, env, None);
        assert_eq!(code, expected, "mcpgw {args:?}: stdout {out} stderr {err}");
        assert!(err.starts_with("error: "), "{err}");
        err
    };

    // Provisioning, as a CI script would do it.
    assert!(ok(&["users", "create", "cli@example.com"]).contains("email: cli@example.com"));
    let servers = r#"[{"server_name": "fx", "config": {"command": "fixture", "env": {"TOKEN": "cli-secret-1"}}}]"#;
    let (code, _, err) = cli(&cp, &["configs", "create", "cli-config", "--servers", "-"], &[], Some(servers));
    assert_eq!(code, 0, "{err}");
    ok(&["projects", "create", "cli-project", "--config", "cli-config"]);
    assert!(ok(&["members", "add", "cli-project", "cli@example.com"]).contains("is a member"));
    let (code, key, note) = cli(
        &cp,
        &["keys", "create", "--project", "cli-project", "--user", "cli@example.com", "--name", "ci"],
        &[],
        None,
    );
    assert_eq!(code, 0, "{note}");
    let key = key.trim().to_string();
    assert!(shared_key_shape(&key), "stdout is the key alone: {key:?}");
    assert!(note.contains("never shown again") && !note.contains(&key), "{note}");
    let key_id = key.split('_').nth(1).unwrap().to_string();

    // Lists: a table for people, JSON for scripts.
    let table = ok(&["projects", "list"]);
    assert!(table.starts_with("NAME") && table.contains("cli-project") && table.contains("cli-config"), "{table}");
    let listed: Value = serde_json::from_str(&ok(&["keys", "list", "--project", "cli-project", "--json"])).unwrap();
    assert_eq!(listed["items"][0]["id"], key_id.as_str());
    assert!(!ok(&["keys", "list", "--json"]).contains(&key), "a listing shows a secret");
    let export = ok(&["configs", "export", "cli-config"]);
    assert!(export.contains("\"TOKEN\": \"****\"") && !export.contains("cli-secret-1"), "{export}");
    let status: Value = serde_json::from_str(&ok(&["snapshot", "--json"])).unwrap();
    assert!(status["db_revision"].as_u64().unwrap() >= 4, "{status}");

    // Client configuration for the key, checked against the control plane first.
    let config: Value = serde_json::from_str(&ok(&[
        "client-config",
        "--key",
        &key,
        "--client",
        "cursor",
        "--gateway-url",
        "https://gw.example/mcp",
    ]))
    .unwrap();
    assert_eq!(config["mcpServers"]["mcpgw"]["url"], "https://gw.example/mcp");
    assert_eq!(config["mcpServers"]["mcpgw"]["headers"]["Authorization"], format!("Bearer {key}"));
    let all = ok(&["client-config", "--key", &key]);
    assert!(all.contains("mcp-remote") && all.contains("Claude Desktop") && all.contains("Cursor"), "{all}");
    ok(&["keys", "disable", &key_id]);
    assert!(fails(&["client-config", "--key", &key], &[], 7).contains("disabled"));
    let unknown = format!("mcpgw_{}_{}", "a".repeat(16), "b".repeat(40));
    fails(&["client-config", "--key", &unknown], &[], 5);

    // Import from a file, dry run first.
    let file = cp.data_dir().join("enkrypt_mcp_config.json");
    std::fs::write(
        &file,
        json!({"users": {"u1": {"email": "cli-import@example.com"}}, "projects": {"p1": {"project_name": "cli imported", "users": ["u1"]}}})
            .to_string(),
    )
    .unwrap();
    let dry = ok(&["import", file.to_str().unwrap(), "--dry-run"]);
    assert!(dry.contains("dry run, nothing written") && dry.contains("cli-imported"), "{dry}");
    assert_eq!(cli(&cp, &["projects", "get", "cli-imported"], &[], None).0, 5);
    assert!(ok(&["import", file.to_str().unwrap()]).contains("created 1 user(s)"));
    ok(&["projects", "get", "cli-imported"]);

    // OAuth: a server without it has nothing to authorize; one with the authorization code grant
    // gets the URL to open.
    assert!(fails(&["servers", "authorize", "cli-config", "fx"], &[], 6).contains("does not have OAuth enabled"));
    let server = json!({"server_name": "api", "config": {"url": "https://api.example/mcp"}, "oauth_config": {
        "enabled": true, "OAUTH_GRANT_TYPE": "authorization_code", "OAUTH_CLIENT_ID": "cid",
        "OAUTH_TOKEN_URL": "https://auth.example/token", "OAUTH_AUTHORIZATION_URL": "https://auth.example/authorize"}});
    let (code, _, err) = cli(&cp, &["servers", "add", "cli-config", "-"], &[], Some(&server.to_string()));
    assert_eq!(code, 0, "{err}");
    let started = ok(&["servers", "authorize", "cli-config", "api"]);
    assert!(started.contains("https://auth.example/authorize?response_type=code"), "{started}");
    assert!(started.contains("code_challenge_method=S256"), "{started}");
    let status: Value = serde_json::from_str(&ok(&["servers", "oauth-status", "cli-config", "api", "--json"])).unwrap();
    assert_eq!(
        (status["grant"].as_str(), status["needs_authorization"].as_bool()),
        (Some("authorization_code"), Some(true))
    );
    fails(&["servers", "forget-tokens", "cli-config", "api"], &[], 5);

    // Exit codes: usage 2, unreachable 3, bad admin key 4, unknown 5, conflict 6, invalid 7.
    assert_eq!(cli(&cp, &["users", "frobnicate"], &[], None).0, 2);
    fails(&["users", "list"], &[("MCPGW_ADMIN_URL", "http://127.0.0.1:9")], 3);
    fails(&["users", "list"], &[("MCPGW_ADMIN_API_KEY", "wrong")], 4);
    assert!(fails(&["projects", "get", "no-such-project"], &[], 5).contains("no-such-project"));
    assert!(fails(&["users", "create", "cli@example.com"], &[], 6).contains("already"));
    fails(&["users", "create", "not-an-email"], &[], 7);
    fails(&["projects", "delete", "cli-project"], &[], 6);
    assert!(ok(&["projects", "delete", "cli-project", "--force"]).contains("deleted"));
    // Path segments are encoded: a name cannot walk to another route.
    fails(&["users", "get", "../projects"], &[], 5);
}

fn shared_key_shape(key: &str) -> bool {
    let parts: Vec<&str> = key.split('_').collect();
    parts.len() == 3 && parts[0] == "mcpgw" && parts[1].len() == 16 && parts[2].len() == 40
}

fn oauth_client_secrets_are_never_shown_and_survive_a_round_trip() {
    let cp = ControlPlane::start();
    let oauth = json!({"enabled": true, "OAUTH_CLIENT_ID": "cid", "OAUTH_CLIENT_SECRET": "oauth-secret-42",
        "OAUTH_TOKEN_URL": "https://auth.example/token"});
    let created = cp.ok(
        "POST",
        "/api/v1/configs",
        Some(json!({"name": "oauth-cfg", "servers": [{"server_name": "api", "config": {"url": "https://api.example/mcp"}, "oauth_config": oauth}]})),
        201,
    );
    let mut seen = vec![created.to_string()];
    for path in
        ["/api/v1/configs/oauth-cfg", "/api/v1/configs/oauth-cfg/servers", "/api/v1/configs/oauth-cfg/servers/api"]
    {
        seen.push(cp.ok("GET", path, None, 200).to_string());
    }
    cp.ok("POST", "/api/v1/projects", Some(json!({"name": "oauth-proj", "mcp_config": "oauth-cfg"})), 201);
    seen.push(cp.ok("GET", "/api/v1/projects/oauth-proj/config", None, 200).to_string());
    for body in &seen {
        assert!(!body.contains("oauth-secret-42") && body.contains("\"OAUTH_CLIENT_SECRET\":\"****\""), "{body}");
        assert!(body.contains("https://auth.example/token"), "{body}");
    }

    // What was read can be sent back: the masked secret keeps the stored one (the snapshot has it).
    let mut server = cp.ok("GET", "/api/v1/configs/oauth-cfg/servers/api", None, 200);
    server["description"] = json!("edited");
    let replaced = cp.ok("PUT", "/api/v1/configs/oauth-cfg/servers/api", Some(server.clone()), 200);
    assert_eq!(replaced["oauth_config"]["OAUTH_CLIENT_SECRET"], "****");
    let snapshot = cp.wait_for_snapshot().to_string();
    assert!(snapshot.contains("oauth-secret-42") && snapshot.contains("edited"), "the data plane needs the secret");

    // A mask with nothing stored behind it is refused, not stored.
    server["server_name"] = json!("api2");
    let (status, body) = cp.call("POST", "/api/v1/configs/oauth-cfg/servers", Some(server));
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("OAUTH_CLIENT_SECRET"), "{body}");
}

/// What the database of the control plane with data dir `dir` holds, as one byte string: on SQLite
/// every file (main file, WAL, shared memory), on PostgreSQL a dump of its database.
fn database_bytes(dir: &std::path::Path) -> Vec<u8> {
    if backend() == Backend::Postgres {
        return Cluster::shared().dump(&database_name(dir));
    }
    let mut all = Vec::new();
    for name in ["mcpgw.db", "mcpgw.db-wal", "mcpgw.db-shm"] {
        all.extend(std::fs::read(dir.join(name)).unwrap_or_default());
    }
    all
}

/// Runs one SQL statement on the (stopped) control plane's database, behind its back.
fn run_sql(dir: &std::path::Path, sql: &str) {
    if backend() == Backend::Postgres {
        Cluster::shared().psql(&database_name(dir), sql);
        return;
    }
    let script = "import sqlite3, sys\n\
        db = sqlite3.connect(sys.argv[1])\n\
        db.execute(sys.argv[2])\n\
        db.commit()\n\
        db.close()\n";
    let status = std::process::Command::new("python3")
        .args(["-c", script, dir.join("mcpgw.db").to_str().unwrap(), sql])
        .status()
        .expect("python3 runs");
    assert!(status.success());
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn stored_secrets_are_encrypted_at_rest_and_need_their_key() {
    let cp = ControlPlane::start();
    let servers = json!([
        {"server_name": "local", "config": {"command": "echo", "env": {"API_TOKEN": "env-secret-77"}}},
        {"server_name": "remote", "config": {"url": "https://api.example/mcp", "headers": {"X-Api-Key": "header-secret-55"}},
         "oauth_config": {"enabled": true, "OAUTH_CLIENT_ID": "cid", "OAUTH_CLIENT_SECRET": "oauth-secret-88",
                          "OAUTH_TOKEN_URL": "https://auth.example/token"}}
    ]);
    cp.ok("POST", "/api/v1/configs", Some(json!({"name": "sealed", "servers": servers})), 201);
    let snapshot = cp.wait_for_snapshot().to_string();
    for secret in ["env-secret-77", "header-secret-55", "oauth-secret-88"] {
        assert!(snapshot.contains(secret), "the data plane gets {secret}");
    }
    let dir = cp.data_dir().to_path_buf();
    let stored = database_bytes(&dir);
    assert!(contains(&stored, "api.example"), "the database was read");
    for secret in ["env-secret-77", "header-secret-55", "oauth-secret-88"] {
        assert!(!contains(&stored, secret), "{secret} is stored in clear");
    }
    #[cfg(unix)]
    if backend() == Backend::Sqlite {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("secrets_key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A row written in clear (as before encryption) is sealed at the next start and reads the same.
    let dir = cp.stop();
    let legacy =
        json!({"server_name": "local", "config": {"command": "echo", "env": {"API_TOKEN": "legacy-secret-99"}}});
    let legacy = legacy.to_string().replace('\'', "''");
    run_sql(dir.path(), &format!("UPDATE servers SET spec = '{legacy}', sealed = NULL WHERE name = 'local'"));
    assert!(contains(&database_bytes(dir.path()), "legacy-secret-99"), "the clear row is in place");
    let cp = ControlPlane::start_with(dir, Some(ADMIN_KEY));
    // A change republishes what the database holds (the file on disk may still be the old one).
    cp.ok("PATCH", "/api/v1/configs/sealed", Some(json!({"description": "reread"})), 200);
    assert_eq!(published_server(&cp, "sealed", "local")["config"]["env"]["API_TOKEN"], "legacy-secret-99");
    let stored = database_bytes(cp.data_dir());
    assert!(!contains(&stored, "legacy-secret-99"), "the clear row was sealed and nothing of it is left");
    let remote = published_server(&cp, "sealed", "remote");
    assert_eq!(remote["config"]["headers"]["X-Api-Key"], "header-secret-55");

    // With another key, the control plane refuses to start instead of serving unreadable secrets.
    let dir = cp.stop();
    let start = |secrets_key: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_control-plane"));
        cmd.env_clear()
            .env("MCPGW_DATA_DIR", dir.path())
            .env("MCPGW_CONTROL_LISTEN", "127.0.0.1:0")
            .env("MCPGW_ADMIN_API_KEY", ADMIN_KEY);
        if let Some(key) = secrets_key {
            cmd.env("MCPGW_SECRETS_KEY", key);
        }
        if backend() == Backend::Postgres {
            cmd.env("MCPGW_DATABASE_URL", Cluster::shared().url(&database_name(dir.path())));
        }
        cmd.output().unwrap()
    };
    let out = start(Some(&"0".repeat(64)));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be decrypted with this key") && err.contains("MCPGW_SECRETS_KEY"), "{err}");
    if backend() == Backend::Postgres {
        // Instances of one database must share the key: none is generated, and the start says so.
        let out = start(None);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("MCPGW_SECRETS_KEY is required with a PostgreSQL database"), "{err}");
        return;
    }
    // The right key from the environment works as well as the key file.
    let key = std::fs::read_to_string(dir.path().join("secrets_key")).unwrap();
    std::fs::remove_file(dir.path().join("secrets_key")).unwrap();
    let cp = ControlPlane::start_full_env(dir, &[("MCPGW_SECRETS_KEY", key.trim())]);
    cp.ok(
        "PATCH",
        "/api/v1/configs/sealed",
        Some(json!({"description": "reread with the key from the environment"})),
        200,
    );
    assert_eq!(published_server(&cp, "sealed", "local")["config"]["env"]["API_TOKEN"], "legacy-secret-99");
}

/// A server as the latest snapshot carries it to the data planes (secrets in clear).
fn published_server(cp: &ControlPlane, config: &str, server: &str) -> Value {
    let snapshot = cp.wait_for_snapshot();
    let config = snapshot["mcp_configs"].as_array().unwrap().iter().find(|c| c["name"] == config).unwrap().clone();
    config["servers"].as_array().unwrap().iter().find(|s| s["server_name"] == server).unwrap().clone()
}

fn env_and_header_values_are_never_shown_and_survive_a_round_trip() {
    let cp = ControlPlane::start();
    let secrets = ["env-secret-11", "env-secret-12", "header-secret-13"];
    let servers = json!([
        {"server_name": "local", "config": {"command": "echo", "env": {"API_TOKEN": "env-secret-11", "DB_PASSWORD": "env-secret-12"}}},
        {"server_name": "remote", "config": {"url": "https://api.example/mcp", "headers": {"X-Api-Key": "header-secret-13"}}}
    ]);
    let mut answers = vec![cp.ok("POST", "/api/v1/configs", Some(json!({"name": "masked", "servers": servers})), 201)];
    let added = json!({"server_name": "more", "config": {"command": "echo", "env": {"TOKEN": "env-secret-14"}}});
    answers.push(cp.ok("POST", "/api/v1/configs/masked/servers", Some(added), 201));
    for path in [
        "/api/v1/configs/masked",
        "/api/v1/configs/masked/servers",
        "/api/v1/configs/masked/servers/local",
        "/api/v1/configs/masked/servers/remote",
        "/api/v1/configs/masked/export",
    ] {
        answers.push(cp.ok("GET", path, None, 200));
    }
    answers.push(cp.ok("PATCH", "/api/v1/configs/masked", Some(json!({"description": "d"})), 200));
    answers.push(cp.ok("POST", "/api/v1/configs/masked/copy", Some(json!({"name": "masked-copy"})), 201));
    cp.ok("POST", "/api/v1/projects", Some(json!({"name": "masked-proj", "mcp_config": "masked"})), 201);
    answers.push(cp.ok("GET", "/api/v1/projects/masked-proj/config", None, 200));

    // Read, edit one field, send back: every stored value stays; a new value is taken as given.
    let mut local = cp.ok("GET", "/api/v1/configs/masked/servers/local", None, 200);
    assert_eq!(local["config"]["env"], json!({"API_TOKEN": "****", "DB_PASSWORD": "****"}));
    local["description"] = json!("edited");
    local["config"]["env"]["DB_PASSWORD"] = json!("env-secret-15");
    local["config"]["env"]["MODE"] = json!("fast");
    answers.push(cp.ok("PUT", "/api/v1/configs/masked/servers/local", Some(local.clone()), 200));
    let mut remote = cp.ok("GET", "/api/v1/configs/masked/servers/remote", None, 200);
    remote["server_name"] = json!("renamed");
    answers.push(cp.ok("PUT", "/api/v1/configs/masked/servers/remote", Some(remote.clone()), 200));
    for answer in &answers {
        let text = answer.to_string();
        for secret in secrets.iter().chain(&["env-secret-14", "env-secret-15"]) {
            assert!(!text.contains(secret), "{secret} shown: {text}");
        }
        assert!(text.contains("****"), "{text}");
    }
    let local = published_server(&cp, "masked", "local");
    assert_eq!(local["description"], "edited");
    assert_eq!(
        local["config"]["env"],
        json!({"API_TOKEN": "env-secret-11", "DB_PASSWORD": "env-secret-15", "MODE": "fast"})
    );
    assert_eq!(published_server(&cp, "masked", "renamed")["config"]["headers"]["X-Api-Key"], "header-secret-13");
    assert_eq!(published_server(&cp, "masked-copy", "local")["config"]["env"]["API_TOKEN"], "env-secret-11");

    // A mask for a name with nothing stored behind it is refused, and nothing changes.
    let before = cp.db_revision();
    let mut local = cp.ok("GET", "/api/v1/configs/masked/servers/local", None, 200);
    local["config"]["env"]["NEW_TOKEN"] = json!("****");
    let (status, body) = cp.call("PUT", "/api/v1/configs/masked/servers/local", Some(local.clone()));
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("config.env.NEW_TOKEN"), "{body}");
    local["server_name"] = json!("copied");
    assert_eq!(
        cp.call("POST", "/api/v1/configs/masked/servers", Some(local)).0,
        422,
        "a new server has nothing stored"
    );
    let http_mask =
        json!({"server_name": "h", "config": {"url": "https://h.example/mcp", "headers": {"Authorization": "****"}}});
    assert_eq!(cp.call("POST", "/api/v1/configs", Some(json!({"name": "c2", "servers": [http_mask]}))).0, 422);
    // Another transport keeps nothing of the old one's values.
    let switched =
        json!({"server_name": "local", "config": {"url": "https://h.example/mcp", "headers": {"API_TOKEN": "****"}}});
    assert_eq!(cp.call("PUT", "/api/v1/configs/masked/servers/local", Some(switched)).0, 422);
    assert_eq!(cp.db_revision(), before);
}

/// The snapshot entry named `name` among `items` (projects by name, keys by id).
fn entry<'a>(items: &'a Value, field: &str, name: &str) -> &'a Value {
    items.as_array().unwrap().iter().find(|e| e[field] == name).unwrap_or_else(|| panic!("no {name} in {items}"))
}

/// A refused limit is a 422 that names the field, and changes nothing.
fn refused(cp: &ControlPlane, method: &str, path: &str, body: Value, field: &str) {
    let before = cp.db_revision();
    let (status, answer) = cp.call(method, path, Some(body.clone()));
    assert_eq!((status, answer["error"]["code"].as_str()), (422, Some("invalid_field")), "{body}: {answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains(field), "{body}: `{field}` not named in {message}");
    assert_eq!(cp.db_revision(), before, "{body} changed something");
}

fn rate_limits_of_projects_and_keys_are_kept_changed_cleared_and_published() {
    let cp = ControlPlane::start();
    let (email, project, _) = seed(&cp, "rl");

    // Projects: set at creation, shown by get and list, published.
    let created = cp.ok(
        "POST",
        "/api/v1/projects",
        Some(json!({"name": "limited", "rate_limit": {"calls_per_minute": 120, "burst": 10}})),
        201,
    );
    let limit = json!({"calls_per_minute": 120, "burst": 10});
    assert_eq!(created["rate_limit"], limit);
    assert_eq!(cp.ok("GET", "/api/v1/projects/limited", None, 200)["rate_limit"], limit);
    let listed = cp.ok("GET", "/api/v1/projects", None, 200);
    assert_eq!(entry(&listed["items"], "name", "limited")["rate_limit"], limit);
    assert_eq!(entry(&listed["items"], "name", &project)["rate_limit"], Value::Null, "none unless set");
    let snapshot = cp.wait_for_snapshot();
    assert_eq!(entry(&snapshot["projects"], "name", "limited")["rate_limit"], limit);
    assert_eq!(entry(&snapshot["projects"], "name", &project)["rate_limit"], Value::Null);

    // An update that does not name the limit keeps it; one that does replaces it.
    let updated = cp.ok("PATCH", "/api/v1/projects/limited", Some(json!({"description": "d"})), 200);
    assert_eq!(updated["rate_limit"], limit);
    let updated =
        cp.ok("PATCH", "/api/v1/projects/limited", Some(json!({"rate_limit": {"calls_per_minute": 30}})), 200);
    assert_eq!(updated["rate_limit"], json!({"calls_per_minute": 30}));
    let snapshot = cp.wait_for_snapshot();
    assert_eq!(entry(&snapshot["projects"], "name", "limited")["rate_limit"], json!({"calls_per_minute": 30}));

    // Out of range, of the wrong shape or with unknown fields: 422, and the stored limit stays.
    let bad = [
        (json!({"rate_limit": {"calls_per_minute": 0}}), "rate_limit.calls_per_minute"),
        (json!({"rate_limit": {"calls_per_minute": 1_000_001}}), "rate_limit.calls_per_minute"),
        (json!({"rate_limit": {"calls_per_minute": 5, "burst": 1_000_001}}), "rate_limit.burst"),
        (json!({"rate_limit": {"calls_per_minute": -1}}), "expected u32"),
        (json!({"rate_limit": {"calls_per_minute": 5, "per_hour": 100}}), "per_hour"),
        (json!({"rate_limit": {"burst": 5}}), "calls_per_minute"),
        (json!({"rate_limit": "60/min"}), "RateLimit"),
        (json!({"rate_limits": {"calls_per_minute": 5}}), "rate_limits"),
    ];
    for (body, field) in &bad {
        refused(&cp, "PATCH", "/api/v1/projects/limited", body.clone(), field);
        let mut create = body.clone();
        create["name"] = json!("never");
        refused(&cp, "POST", "/api/v1/projects", create, field);
    }
    assert_eq!(cp.call("GET", "/api/v1/projects/never", None).0, 404);
    assert_eq!(cp.ok("GET", "/api/v1/projects/limited", None, 200)["rate_limit"], json!({"calls_per_minute": 30}));

    // `null` removes the limit, from the answer and from the snapshot.
    let cleared = cp.ok("PATCH", "/api/v1/projects/limited", Some(json!({"rate_limit": null})), 200);
    assert_eq!(cleared["rate_limit"], Value::Null);
    assert_eq!(cp.ok("GET", "/api/v1/projects/limited", None, 200)["rate_limit"], Value::Null);
    let snapshot = cp.wait_for_snapshot();
    assert_eq!(entry(&snapshot["projects"], "name", "limited")["rate_limit"], Value::Null);

    // Keys: the same, through create and the key's own update.
    let key_limit = json!({"calls_per_minute": 60, "burst": 5});
    let created = cp.ok(
        "POST",
        "/api/v1/api-keys",
        Some(json!({"project": project, "user": email, "name": "limited", "rate_limit": key_limit})),
        201,
    );
    assert_eq!(created["rate_limit"], key_limit);
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/api-keys/{id}");
    let plain = cp.ok("POST", "/api/v1/api-keys", Some(json!({"project": project, "user": email})), 201);
    assert_eq!(plain["rate_limit"], Value::Null);
    assert_eq!(cp.ok("GET", &path, None, 200)["rate_limit"], key_limit);
    let listed = cp.ok("GET", &format!("/api/v1/api-keys?project={project}"), None, 200);
    assert_eq!(entry(&listed["items"], "id", &id)["rate_limit"], key_limit);
    let snapshot = cp.wait_for_snapshot();
    assert_eq!(entry(&snapshot["api_keys"], "id", &id)["rate_limit"], key_limit);
    assert_eq!(entry(&snapshot["api_keys"], "id", plain["id"].as_str().unwrap())["rate_limit"], Value::Null);

    let before = cp.db_revision();
    assert_eq!(cp.ok("PATCH", &path, Some(json!({})), 200)["rate_limit"], key_limit, "nothing named, nothing changed");
    assert_eq!(cp.db_revision(), before);
    let updated = cp.ok("PATCH", &path, Some(json!({"rate_limit": {"calls_per_minute": 10, "burst": 2}})), 200);
    assert_eq!(updated["rate_limit"], json!({"calls_per_minute": 10, "burst": 2}));
    assert!(updated.get("key").is_none(), "an update never shows the secret: {updated}");
    let snapshot = cp.wait_for_snapshot();
    assert_eq!(entry(&snapshot["api_keys"], "id", &id)["rate_limit"], json!({"calls_per_minute": 10, "burst": 2}));

    let keys_before = cp.ok("GET", "/api/v1/api-keys", None, 200)["items"].as_array().unwrap().len();
    for (body, field) in &bad {
        refused(&cp, "PATCH", &path, body.clone(), field);
        let mut create = body.clone();
        create["project"] = json!(project);
        create["user"] = json!(email);
        refused(&cp, "POST", "/api/v1/api-keys", create, field);
    }
    assert_eq!(cp.ok("GET", "/api/v1/api-keys", None, 200)["items"].as_array().unwrap().len(), keys_before);
    assert_eq!(cp.ok("GET", &path, None, 200)["rate_limit"], json!({"calls_per_minute": 10, "burst": 2}));
    refused(&cp, "PATCH", &path, json!({"name": "renamed"}), "name");
    assert_eq!(cp.call("PATCH", "/api/v1/api-keys/nope", Some(json!({"rate_limit": null}))).0, 404);

    let cleared = cp.ok("PATCH", &path, Some(json!({"rate_limit": null})), 200);
    assert_eq!(cleared["rate_limit"], Value::Null);
    let snapshot = cp.wait_for_snapshot();
    assert_eq!(entry(&snapshot["api_keys"], "id", &id)["rate_limit"], Value::Null);
    // A limit survives the key's other changes.
    cp.ok("PATCH", &path, Some(json!({"rate_limit": {"calls_per_minute": 7}})), 200);
    cp.ok("POST", &format!("{path}/rotate"), None, 200);
    cp.ok("POST", &format!("{path}/disable"), None, 200);
    assert_eq!(cp.ok("GET", &path, None, 200)["rate_limit"], json!({"calls_per_minute": 7}));
}

fn server_rate_limits_travel_with_the_server_into_the_snapshot() {
    let cp = ControlPlane::start();
    let server = json!({
        "server_name": "echo",
        "config": {"command": "echo-server"},
        "rate_limit": {"calls_per_minute": 100, "burst": 20},
        "tool_rate_limits": {"echo": {"calls_per_minute": 5}, "slow_tool": {"calls_per_minute": 1, "burst": 1}}
    });
    cp.ok("POST", "/api/v1/configs", Some(json!({"name": "limited", "servers": [server]})), 201);
    let shown = cp.ok("GET", "/api/v1/configs/limited/servers/echo", None, 200);
    assert_eq!(shown["rate_limit"], server["rate_limit"]);
    assert_eq!(shown["tool_rate_limits"], server["tool_rate_limits"]);
    let published = published_server(&cp, "limited", "echo");
    assert_eq!(published["rate_limit"], server["rate_limit"]);
    assert_eq!(published["tool_rate_limits"], server["tool_rate_limits"]);

    let mut changed = shown.clone();
    changed["tool_rate_limits"] = json!({"echo": {"calls_per_minute": 50}});
    changed.as_object_mut().unwrap().remove("rate_limit");
    cp.ok("PUT", "/api/v1/configs/limited/servers/echo", Some(changed), 200);
    let published = published_server(&cp, "limited", "echo");
    assert_eq!(published["rate_limit"], Value::Null);
    assert_eq!(published["tool_rate_limits"], json!({"echo": {"calls_per_minute": 50}}));

    let with = |field: &str, value: Value| {
        let mut s = json!({"server_name": "other", "config": {"command": "echo-server"}});
        s[field] = value;
        s
    };
    for (s, field) in [
        (with("rate_limit", json!({"calls_per_minute": 0})), "rate_limit.calls_per_minute"),
        (with("tool_rate_limits", json!({"echo": {"calls_per_minute": 0}})), "tool_rate_limits.echo.calls_per_minute"),
        (with("rate_limit", json!({"calls_per_minute": 5, "burst": 2_000_000})), "rate_limit.burst"),
        (with("rate_limit", json!({"calls_per_minute": 5, "window": 60})), "window"),
    ] {
        refused(&cp, "POST", "/api/v1/configs", json!({"name": "never", "servers": [s.clone()]}), field);
        refused(&cp, "POST", "/api/v1/configs/limited/servers", s.clone(), field);
        let mut replacement = s;
        replacement["server_name"] = json!("echo");
        refused(&cp, "PUT", "/api/v1/configs/limited/servers/echo", replacement, field);
    }
    assert_eq!(cp.call("GET", "/api/v1/configs/never", None).0, 404);
    assert_eq!(published_server(&cp, "limited", "echo")["tool_rate_limits"], json!({"echo": {"calls_per_minute": 50}}));
}

/// The audit log of changes: every commit is a row with its actor, filters narrow it, pages follow
/// one another without gaps or repeats, bad filters are refused, the CLI shows it, and rows older
/// than `MCPGW_AUDIT_RETENTION_DAYS` are deleted.
fn audit_log_is_queryable_paginated_and_kept_for_its_retention() {
    let cp = ControlPlane::start_with_env(&[("MCPGW_AUDIT_RETENTION_DAYS", "30")]);
    let start = cp.ok("GET", "/api/v1/audit", None, 200);
    assert_eq!(start["items"], json!([]), "{start}");
    let (email, project, _config) = seed(&cp, "audit");
    let user = cp.ok("GET", &format!("/api/v1/users/{email}"), None, 200);
    let user_id = user["id"].as_str().unwrap().to_string();
    for i in 0..5 {
        cp.ok("POST", "/api/v1/users", Some(json!({"email": format!("a{i}@example.com")})), 201);
    }
    cp.ok("PATCH", &format!("/api/v1/users/{email}"), Some(json!({"email": "renamed@example.com"})), 200);

    // Everything, newest first, each with the revision it made.
    let all = cp.ok("GET", "/api/v1/audit?limit=1000", None, 200);
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 10, "{all}");
    assert!(all["next_cursor"].is_null());
    let revisions: Vec<u64> = items.iter().map(|i| i["revision"].as_u64().unwrap()).collect();
    assert_eq!(revisions, (1..=10).rev().collect::<Vec<u64>>());
    assert_eq!(items[0]["action"], "update");
    assert_eq!(items[0]["resource"], "user");
    assert_eq!(items[0]["resource_id"], user_id.as_str());
    assert!(items.iter().all(|i| i["actor"] == "admin"), "{all}");
    assert!(items[0]["at"].as_str().unwrap().ends_with('Z'));

    // Filters: by resource, by resource id, by actor and action, by time.
    let users = cp.ok("GET", "/api/v1/audit?resource=user", None, 200);
    assert_eq!(users["items"].as_array().unwrap().len(), 7, "{users}");
    let one = cp.ok("GET", &format!("/api/v1/audit?resource=user&resource_id={user_id}"), None, 200);
    let actions: Vec<&str> = one["items"].as_array().unwrap().iter().map(|i| i["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["update", "create"]);
    let projects = cp.ok("GET", "/api/v1/audit?resource=project&action=add_member&actor=admin", None, 200);
    assert_eq!(projects["items"].as_array().unwrap().len(), 1, "{projects}");
    assert_eq!(cp.ok("GET", "/api/v1/audit?actor=control_plane", None, 200)["items"], json!([]));
    let sixth = items[4]["at"].as_str().unwrap().to_string();
    let since = cp.ok("GET", &format!("/api/v1/audit?since={}", sixth.replace('+', "%2B")), None, 200);
    assert_eq!(since["items"].as_array().unwrap().len(), 5, "{since}");
    let until = cp.ok("GET", &format!("/api/v1/audit?until={sixth}"), None, 200);
    assert_eq!(until["items"].as_array().unwrap().len(), 5, "{until}");
    assert_eq!(cp.ok("GET", "/api/v1/audit?until=2000-01-01T00:00:00Z", None, 200)["items"], json!([]));

    // Pages of three: every row once, in order.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = cp.ok("GET", &format!("/api/v1/audit?limit=3{cursor}"), None, 200);
        seen.extend(page["items"].as_array().unwrap().iter().map(|i| i["revision"].as_u64().unwrap()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, revisions);
    let offset = cp.ok("GET", "/api/v1/audit?limit=2&offset=8", None, 200);
    assert_eq!(offset["items"][0]["revision"], 2);

    // Bad filters: a clear 4xx, never a 500.
    for (query, status) in [
        ("since=yesterday", 422),
        ("until=2026-13-01T00:00:00Z", 422),
        ("since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z", 422),
        ("limit=0", 422),
        ("limit=5000", 422),
        ("cursor=%25%25", 422),
        ("cursor=bm90LWFuLWlk", 422),
        ("limit=x", 400),
        ("nope=1", 400),
    ] {
        let (got, body) = cp.call("GET", &format!("/api/v1/audit?{query}"), None);
        assert_eq!(got, status, "{query}: {body}");
        assert!(body["error"]["message"].is_string(), "{query}: {body}");
    }
    let long = "r".repeat(300);
    assert_eq!(cp.call("GET", &format!("/api/v1/audit?resource={long}"), None).0, 422);

    // The CLI: a table of the newest rows, or every matching row as JSON.
    let (code, out, err) = cli(&cp, &["audit", "--limit", "2"], &[], None);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("AT") && lines[0].contains("RESOURCE_ID"), "{out}");
    assert!(lines[1].contains("update") && lines[1].contains(&user_id), "{out}");
    let (code, out, err) = cli(&cp, &["audit", "--resource", "project", "--all", "--json"], &[], None);
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{out}");
    let project_id = cp.ok("GET", &format!("/api/v1/projects/{project}"), None, 200)["id"].clone();
    assert!(listed["items"].as_array().unwrap().iter().all(|i| i["resource_id"] == project_id), "{out}");
    let (code, _, err) = cli(&cp, &["audit", "--since", "nope"], &[], None);
    assert_eq!(code, 7, "{err}");

    // Retention: rows older than 30 days go with the next change; newer ones stay.
    cp.sql("UPDATE audit_log SET at = '2000-01-01T00:00:00.000000Z' WHERE revision <= 3");
    assert_eq!(cp.ok("GET", "/api/v1/audit?limit=1000", None, 200)["items"].as_array().unwrap().len(), 10);
    cp.ok("POST", "/api/v1/users", Some(json!({"email": "after@example.com"})), 201);
    let kept = cp.ok("GET", "/api/v1/audit?limit=1000", None, 200);
    let kept: Vec<u64> = kept["items"].as_array().unwrap().iter().map(|i| i["revision"].as_u64().unwrap()).collect();
    assert_eq!(kept, (4..=11).rev().collect::<Vec<u64>>());
}

on_every_database!(
    health_is_open_and_everything_else_needs_the_key,
    requests_a_page_of_another_site_could_send_are_refused_and_change_nothing,
    admin_allowed_origins_replace_the_own_origin,
    every_documented_operation_refuses_missing_and_wrong_keys,
    full_lifecycle_of_every_resource,
    api_key_needs_membership_and_future_expiry,
    bad_input_gets_the_right_error_and_changes_nothing,
    fifty_concurrent_creates_lose_nothing,
    snapshot_follows_every_change_and_is_never_half_written,
    secrets_appear_only_once_and_never_in_logs,
    generated_admin_key_survives_restart_and_rotation_kills_the_old_one,
    admin_key_from_the_environment_cannot_be_rotated_over_the_api,
    the_cli_drives_the_admin_api_with_exit_codes_a_script_can_rely_on,
    oauth_client_secrets_are_never_shown_and_survive_a_round_trip,
    stored_secrets_are_encrypted_at_rest_and_need_their_key,
    env_and_header_values_are_never_shown_and_survive_a_round_trip,
    rate_limits_of_projects_and_keys_are_kept_changed_cleared_and_published,
    server_rate_limits_travel_with_the_server_into_the_snapshot,
    audit_log_is_queryable_paginated_and_kept_for_its_retention,
);
