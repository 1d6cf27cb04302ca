//! The scaled shape with real processes on loopback: PostgreSQL, control-plane instances sharing it,
//! and data planes with data dirs of their own that pull the snapshot over TLS with a data-plane
//! token. Also what a data plane does when the control plane is gone, untrusted or wrong, and what a
//! control plane does when its database goes away.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::certs::{Certs, certs};
use common::control_plane::{ControlPlane, SECRETS_KEY, tempdir::TempDir};
use common::data_plane::{DataPlane, fixture_server, provision};
use common::postgres::Cluster;
use serde_json::{Value, json};

const TOKEN_OLD: &str = "dp-token-old-0123456789abcdef";
const TOKEN_NEW: &str = "dp-token-new-0123456789abcdef";

/// A control-plane instance on `database_url` serving HTTPS with `certs` (on `listen`, or a free port).
fn control_plane(dir: TempDir, database_url: &str, certs: &Certs) -> ControlPlane {
    control_plane_at(dir, database_url, certs, "127.0.0.1:0")
}

fn control_plane_at(dir: TempDir, database_url: &str, certs: &Certs, listen: &str) -> ControlPlane {
    let tokens = format!("{TOKEN_OLD},{TOKEN_NEW}");
    let mut cp = ControlPlane::start_full_env(
        dir,
        &[
            ("MCPGW_DATABASE_URL", database_url),
            ("MCPGW_SECRETS_KEY", SECRETS_KEY),
            ("MCPGW_DATA_PLANE_TOKEN", &tokens),
            ("MCPGW_TLS_CERT", certs.cert.to_str().unwrap()),
            ("MCPGW_TLS_KEY", certs.key.to_str().unwrap()),
            ("MCPGW_CONTROL_LISTEN", listen),
        ],
    );
    assert!(cp.base.starts_with("https://"), "{}", cp.base);
    cp.trust(&certs.ca_pem);
    cp
}

/// A data plane with a data dir of its own, pulling from `control_url`.
fn data_plane(dir: &Path, control_url: &str, token: &str, ca: Option<&Path>, replica: &str) -> DataPlane {
    let mut env = vec![
        ("MCPGW_CONTROL_URL", control_url.to_string()),
        ("MCPGW_DATA_PLANE_TOKEN", token.to_string()),
        ("MCPGW_REPLICA_ID", replica.to_string()),
    ];
    if let Some(ca) = ca {
        env.push(("MCPGW_CONTROL_CA", ca.display().to_string()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    DataPlane::start_in(dir, &env)
}

fn readyz(dp: &DataPlane) -> Value {
    serde_json::from_str(&dp.get("/readyz").1).unwrap_or(Value::Null)
}

/// Waits until `check` holds for `/readyz`, for at most `within`; returns how long it took.
fn wait_ready(dp: &DataPlane, within: Duration, check: impl Fn(&Value) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let ready = readyz(dp);
        if check(&ready) {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "data plane never got there: {ready}\n{}", dp.log_text());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The Python MCP SDK calls the fixture's `echo` through `dp` with `key`.
fn python_echo(dp: &DataPlane, key: &str, message: &str) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/mcp_client.py");
    let arguments = json!({ "message": message }).to_string();
    let out = Command::new("python3")
        .args([script, "--url", &dp.mcp_url(), "--key", key, "--call", "up__echo", "--arguments", &arguments])
        .output()
        .expect("run python3");
    assert!(out.status.success(), "python client failed: {}\n{}", String::from_utf8_lossy(&out.stderr), dp.log_text());
    serde_json::from_slice(&out.stdout).expect("python client output")
}

/// The HTTP status of an MCP `initialize` with `key` (401 once the key is refused).
fn initialize_status(dp: &DataPlane, key: &str) -> u16 {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}}});
    reqwest::blocking::Client::new()
        .post(dp.mcp_url())
        .header("Authorization", format!("Bearer {key}"))
        .header("Accept", "application/json, text/event-stream")
        .json(&body)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// Every `snapshot loaded` revision a data plane logged, in order.
fn loaded_revisions(dp: &DataPlane) -> Vec<u64> {
    dp.log_text()
        .lines()
        .filter(|l| l.contains("snapshot loaded"))
        .filter_map(|l| l.split("revision=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn control_planes_on_postgres_feed_data_planes_on_other_hosts_over_tls() {
    let tmp = TempDir::new("mcpgw-scale");
    let certs = certs(tmp.path());
    let cluster = Cluster::shared();
    let database = format!("scale_{}", uuid::Uuid::new_v4().simple());
    let url = cluster.database(&database);
    // Each instance names its connections, so the test can tell whose lock is whose.
    let (url_a, url_b) = (format!("{url}?application_name=cp-a"), format!("{url}?application_name=cp-b"));
    let a = control_plane(TempDir::new("mcpgw-cp-a"), &url_a, &certs);
    let b = control_plane(TempDir::new("mcpgw-cp-b"), &url_b, &certs);

    let dirs: Vec<TempDir> = (0..3).map(|i| TempDir::new(&format!("mcpgw-dp-{i}"))).collect();
    let sources = [(&a, TOKEN_OLD), (&b, TOKEN_NEW), (&a, TOKEN_NEW)];
    let mut dps: Vec<DataPlane> = dirs
        .iter()
        .zip(sources)
        .enumerate()
        .map(|(i, (dir, (cp, token)))| {
            data_plane(dir.path(), &cp.base, token, Some(&certs.ca), &format!("replica-{i}"))
        })
        .collect();

    // Provisioning through either instance; every data plane serves it.
    provision(&a, "scale", json!([fixture_server("up")]));
    let created =
        b.ok("POST", "/api/v1/api-keys", Some(json!({"project": "proj-scale", "user": "scale@example.com"})), 201);
    let (key, id) = (created["key"].as_str().unwrap().to_string(), created["id"].as_str().unwrap().to_string());
    let revision = b.db_revision();
    assert_eq!(revision, a.db_revision(), "both instances read one database");
    for dp in &dps {
        wait_ready(dp, Duration::from_secs(5), |r| r["revision"].as_u64() == Some(revision));
        let answer = python_echo(dp, &key, "hello from every replica");
        assert!(answer["call"].to_string().contains("hello from every replica"), "{answer}");
    }
    // No data plane needed a shared file: each keeps its own copy, private.
    for dir in &dirs {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("snapshot.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // What the replicas saw reaches the review through the network, on any instance.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let review = b.ok("GET", "/api/v1/configs/cfg-scale/pins", None, 200);
        let echo = review["pending"].as_array().unwrap().iter().find(|p| p["tool"] == "echo").cloned();
        let seen_by = echo.map(|e| e["seen_by"].clone()).unwrap_or_default();
        if (0..3).all(|i| seen_by.as_array().is_some_and(|s| s.contains(&json!(format!("replica-{i}"))))) {
            break;
        }
        assert!(Instant::now() < deadline, "reports did not arrive: {review}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A key disabled through one instance is refused by every data plane within a second.
    for dp in &dps {
        assert_eq!(initialize_status(dp, &key), 200);
    }
    let disabled_at = Instant::now();
    a.ok("POST", &format!("/api/v1/api-keys/{id}/disable"), None, 200);
    let mut refused_after = Vec::new();
    for dp in &dps {
        loop {
            if initialize_status(dp, &key) == 401 {
                refused_after.push(disabled_at.elapsed());
                break;
            }
            assert!(disabled_at.elapsed() < Duration::from_secs(5), "the disabled key still works");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let slowest = refused_after.iter().max().unwrap();
    eprintln!("disabled key refused by all data planes after {refused_after:?}");
    assert!(*slowest < Duration::from_secs(1), "took {slowest:?}");

    // 200 concurrent admin writes over both instances: all land, revisions strictly increase
    // without gaps in commit order, and data planes only ever move forward.
    let before = a.db_revision();
    std::thread::scope(|s| {
        for t in 0..8 {
            let cp = if t % 2 == 0 { &a } else { &b };
            s.spawn(move || {
                for i in 0..25 {
                    cp.ok("POST", "/api/v1/users", Some(json!({"email": format!("w{t}-{i}@example.com")})), 201);
                }
            });
        }
    });
    let after = b.db_revision();
    assert_eq!(after, before + 200, "every write landed with its own revision");
    let revisions: Vec<u64> = cluster
        .psql(&database, "SELECT revision FROM audit_log ORDER BY id")
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(revisions, (1..=after).collect::<Vec<u64>>(), "revisions in commit order, without gaps or reuse");
    let users = a.ok("GET", "/api/v1/users?limit=1000", None, 200);
    assert_eq!(users["items"].as_array().unwrap().len(), 201);
    for dp in &dps {
        wait_ready(dp, Duration::from_secs(5), |r| r["revision"].as_u64() == Some(after));
        let seen = loaded_revisions(dp);
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "revisions went backwards: {seen:?}");
        assert_eq!(seen.last(), Some(&after));
    }

    // How long a committed change takes to be served by every data plane, over 30 changes made
    // through either instance.
    let mut lags = Vec::new();
    for i in 0..30 {
        let cp = if i % 2 == 0 { &a } else { &b };
        let committed = Instant::now();
        cp.ok("POST", "/api/v1/users", Some(json!({"email": format!("lag-{i}@example.com")})), 201);
        let revision = cp.db_revision();
        for dp in &dps {
            wait_ready(dp, Duration::from_secs(5), |r| r["revision"].as_u64() >= Some(revision));
        }
        lags.push(committed.elapsed());
    }
    lags.sort();
    eprintln!("change served by all three data planes: p50 {:?}, max {:?}", lags[lags.len() / 2], lags.last().unwrap());
    assert!(*lags.last().unwrap() < Duration::from_secs(1), "{lags:?}");

    // Token renewal runs on exactly one instance, and moves when that one dies.
    let leaders = renewal_leaders(cluster, &database);
    assert_eq!(leaders.len(), 1, "{leaders:?}");

    // A fresh key for the rest; then every control plane goes away: the data planes keep serving.
    let key = common::data_plane::new_key(&b, "scale");
    let revision = b.db_revision();
    for dp in &dps {
        wait_ready(dp, Duration::from_secs(5), |r| r["revision"].as_u64() == Some(revision));
    }
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(10);
    while renewal_leaders(cluster, &database) != ["cp-a"] {
        assert!(Instant::now() < deadline, "instance A did not take over the renewal");
        std::thread::sleep(Duration::from_millis(100));
    }
    let a_base = a.base.clone();
    let a_dir = a.stop();
    for dp in &dps {
        let answer = python_echo(dp, &key, "no control plane");
        assert!(answer["call"].to_string().contains("no control plane"), "{answer}");
        wait_ready(dp, Duration::from_secs(10), |r| r["control_plane"]["reachable"] == false);
    }

    // A data plane restarted while no control plane runs serves its last good snapshot.
    drop(dps.remove(0));
    let restarted = data_plane(dirs[0].path(), &a_base, TOKEN_OLD, Some(&certs.ca), "replica-0");
    let ready = readyz(&restarted);
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["revision"].as_u64(), Some(revision), "{ready}");
    assert!(ready["snapshot_age_secs"].as_i64().is_some(), "{ready}");
    let answer = python_echo(&restarted, &key, "from the disk copy");
    assert!(answer["call"].to_string().contains("from the disk copy"), "{answer}");
    wait_ready(&restarted, Duration::from_secs(10), |r| {
        r["control_plane"]["reachable"] == false && r["control_plane"]["error"].as_str().is_some()
    });
    dps.insert(0, restarted);

    // Instance A is back at the address its data planes were given: changes flow again.
    let a = restart_at(a_dir, &url_a, &certs, &a_base);
    a.ok("POST", "/api/v1/users", Some(json!({"email": "back@example.com"})), 201);
    let revision = a.db_revision();
    for (i, dp) in dps.iter().enumerate() {
        if i == 1 {
            continue; // it follows instance B, which stays down
        }
        wait_ready(dp, Duration::from_secs(10), |r| r["revision"].as_u64() == Some(revision));
    }
}

/// The instances (application names) holding the control plane's renewal lock (`RENEWAL_LEADER` in
/// upstream_oauth.rs), as PostgreSQL sees them.
fn renewal_leaders(cluster: &Cluster, database: &str) -> Vec<String> {
    let sql = format!(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.classid = {} AND l.objid = {} AND a.datname = '{database}'",
        0x6d63_u32, 0x7067_7702_u32
    );
    cluster.psql("postgres", &sql).lines().map(str::to_string).collect()
}

/// Starts a control-plane instance again at its old address `base`, where its data planes look.
fn restart_at(dir: TempDir, database_url: &str, certs: &Certs, base: &str) -> ControlPlane {
    let port = base.rsplit(':').next().unwrap();
    control_plane_at(dir, database_url, certs, &format!("127.0.0.1:{port}"))
}

/// A stand-in for a broken control plane: answers every request with `body` (status 200).
fn broken_control_plane(body: Vec<u8>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    base
}

#[test]
fn a_data_plane_keeps_its_last_good_snapshot_when_the_control_plane_is_wrong_or_untrusted() {
    let tmp = TempDir::new("mcpgw-untrusted");
    let certs = certs(tmp.path());
    let other = TempDir::new("mcpgw-other-ca");
    let untrusted = self::certs(other.path());
    // A control plane on SQLite serves data planes too.
    let tokens = format!("{TOKEN_OLD},{TOKEN_NEW}");
    let mut cp = ControlPlane::start_full_env(
        TempDir::new("mcpgw-cp-tls"),
        &[
            ("MCPGW_DATA_PLANE_TOKEN", &tokens),
            ("MCPGW_TLS_CERT", certs.cert.to_str().unwrap()),
            ("MCPGW_TLS_KEY", certs.key.to_str().unwrap()),
        ],
    );
    cp.trust(&certs.ca_pem);
    let key = provision(&cp, "keep", json!([fixture_server("up")]));
    let revision = cp.db_revision();
    let dir = TempDir::new("mcpgw-dp-keep");
    let dp = data_plane(dir.path(), &cp.base, TOKEN_NEW, Some(&certs.ca), "keeper");
    wait_ready(&dp, Duration::from_secs(5), |r| r["revision"].as_u64() == Some(revision));
    drop(dp);
    // Restarted with nothing new to fetch, it says at once that the control plane answers.
    let dp = data_plane(dir.path(), &cp.base, TOKEN_NEW, Some(&certs.ca), "keeper");
    wait_ready(&dp, Duration::from_secs(2), |r| {
        r["source"] == "control_plane" && r["control_plane"]["reachable"] == true
    });
    drop(dp);

    // The snapshot route takes the data-plane token and nothing else (not the admin key).
    let client = reqwest::blocking::Client::builder()
        .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&certs.ca_pem).unwrap())
        .build()
        .unwrap();
    for auth in [None, Some("wrong-token-0123456789abcdef"), Some(cp.admin_key.as_str())] {
        let mut req = client.get(cp.url("/api/v1/data-plane/snapshot?wait=0"));
        if let Some(token) = auth {
            req = req.bearer_auth(token);
        }
        let resp = req.send().unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        let body: Value = resp.json().unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }
    let resp = client.get(cp.url("/api/v1/data-plane/snapshot?wait=0")).bearer_auth(TOKEN_OLD).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["x-mcpgw-revision"].to_str().unwrap(), revision.to_string());
    // The admin key, in turn, is no data-plane credential and the token opens no admin route.
    let (status, _) = {
        let resp = client.get(cp.url("/api/v1/users")).bearer_auth(TOKEN_OLD).send().unwrap();
        (resp.status().as_u16(), ())
    };
    assert_eq!(status, 401);

    // A change the data plane will not see while the channel is broken.
    cp.ok("POST", "/api/v1/users", Some(json!({"email": "unseen@example.com"})), 201);
    let cases: Vec<(&str, String, &str, Option<&Path>, &str)> = vec![
        (
            "wrong token",
            cp.base.clone(),
            "wrong-token-0123456789abcdef",
            Some(&certs.ca),
            "refused the data-plane token",
        ),
        ("untrusted certificate", cp.base.clone(), TOKEN_NEW, Some(&untrusted.ca), "certificate"),
        ("no trust anchor", cp.base.clone(), TOKEN_NEW, None, "certificate"),
        ("garbage", broken_control_plane(b"{\"not\": \"a snapshot\"".to_vec()), TOKEN_NEW, None, "not valid"),
        ("older revision", broken_control_plane(older_snapshot(dir.path(), revision)), TOKEN_NEW, None, "older"),
    ];
    for (case, url, token, ca, reason) in cases {
        let dp = data_plane(dir.path(), &url, token, ca, "keeper");
        wait_ready(&dp, Duration::from_secs(10), |r| {
            r["control_plane"]["error"].as_str().is_some_and(|e| e.contains(reason))
        });
        let ready = readyz(&dp);
        assert_eq!(ready["ready"], true, "{case}: {ready}");
        assert_eq!(ready["revision"].as_u64(), Some(revision), "{case}: kept the last good snapshot: {ready}");
        assert!(dp.log_text().contains(reason), "{case}: the log says why:\n{}", dp.log_text());
        assert_eq!(initialize_status(&dp, &key), 200, "{case}: still serving");
        let secrets_in_log = dp.log_text().contains(token) && token != TOKEN_NEW;
        assert!(!secrets_in_log && !dp.log_text().contains(TOKEN_NEW), "{case}: a token was logged");
    }

    // The data plane's own listener serves HTTPS with the same two settings.
    let tls_dir = TempDir::new("mcpgw-dp-tls");
    let tls_dp = DataPlane::start_in(
        tls_dir.path(),
        &[
            ("MCPGW_CONTROL_URL", &cp.base),
            ("MCPGW_DATA_PLANE_TOKEN", TOKEN_NEW),
            ("MCPGW_CONTROL_CA", certs.ca.to_str().unwrap()),
            ("MCPGW_TLS_CERT", certs.cert.to_str().unwrap()),
            ("MCPGW_TLS_KEY", certs.key.to_str().unwrap()),
        ],
    );
    assert!(tls_dp.base.starts_with("https://"), "{}", tls_dp.base);
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.get(format!("{}/readyz", tls_dp.base)).send().unwrap().status().as_u16() != 200 {
        assert!(Instant::now() < deadline, "the HTTPS data plane never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let plain = reqwest::blocking::get(format!("{}/readyz", tls_dp.base.replacen("https", "http", 1)));
    assert!(plain.map(|r| r.status().as_u16() >= 400).unwrap_or(true), "plain HTTP is not served");
    drop(tls_dp);

    // A data plane that names a control plane but no token does not start, and says why.
    let out = Command::new(env!("CARGO_BIN_EXE_data-plane"))
        .env_clear()
        .env("MCPGW_DATA_DIR", dir.path())
        .env("MCPGW_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("MCPGW_CONTROL_URL", &cp.base)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MCPGW_DATA_PLANE_TOKEN"), "{err}");
}

/// The data plane's kept snapshot with its revision lowered below `current`.
fn older_snapshot(dir: &Path, current: u64) -> Vec<u8> {
    let mut doc: Value = serde_json::from_slice(&std::fs::read(dir.join("snapshot.json")).unwrap()).unwrap();
    doc["revision"] = json!(current - 1);
    serde_json::to_vec(&doc).unwrap()
}

#[test]
fn a_control_plane_whose_database_goes_away_answers_503_and_recovers() {
    let cluster = Cluster::dedicated();
    let url = cluster.database("lost");
    let cp = ControlPlane::start_full_env(
        TempDir::new("mcpgw-cp-lost"),
        &[("MCPGW_DATABASE_URL", &url), ("MCPGW_SECRETS_KEY", SECRETS_KEY)],
    );
    cp.ok("POST", "/api/v1/users", Some(json!({"email": "before@example.com"})), 201);
    let (status, answer) = health(&cp);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["database"]["reachable"], true);

    cluster.stop();
    for (method, path, body) in [
        ("GET", "/api/v1/users", None),
        ("POST", "/api/v1/users", Some(json!({"email": "during@example.com"}))),
        ("GET", "/api/v1/system/health", None),
    ] {
        let started = Instant::now();
        let (status, answer) = cp.call(method, path, body);
        assert_eq!(status, 503, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["code"], "unavailable", "{answer}");
        assert!(started.elapsed() < Duration::from_secs(10), "{method} {path} hung for {:?}", started.elapsed());
    }
    let (status, answer) = health(&cp);
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["database"]["reachable"], false, "{answer}");
    assert!(answer["database"]["error"].as_str().is_some(), "{answer}");

    cluster.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = cp.call("POST", "/api/v1/users", Some(json!({"email": "after@example.com"})));
        if status == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "the control plane did not recover: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(health(&cp).0, 200);
    let users = cp.ok("GET", "/api/v1/users", None, 200);
    let emails: Vec<&str> = users["items"].as_array().unwrap().iter().map(|u| u["email"].as_str().unwrap()).collect();
    assert_eq!(emails, ["after@example.com", "before@example.com"], "nothing lost, nothing half-written");
}

fn health(cp: &ControlPlane) -> (u16, Value) {
    let resp = reqwest::blocking::get(cp.url("/health")).unwrap();
    (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
}
