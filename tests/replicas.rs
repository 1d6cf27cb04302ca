//! Data-plane replicas behind a load balancer that knows nothing of MCP: sessions that any replica
//! continues (sealed ids), refused for anyone but the key that opened them, and rate limits that
//! hold across replicas through a real Redis (and per replica while it is down).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::control_plane::ControlPlane;
use common::control_plane::tempdir::TempDir;
use common::data_plane::*;
use common::proc::{Reaped, free_port, start_nginx, wait_for_port};
use rmcp::model::ProtocolVersion;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientLifecycleMode, ClientServiceExt};
use serde_json::{Value, json};

const TOKEN: &str = "replicas-test-data-plane-token-0123456789";
const SECRET: &str = "replicas-test-session-secret-0123456789abcdef";

/// Debian's `redis-server` on a free loopback port, persisting nothing.
fn start_redis() -> (Reaped, u16) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server missing: `.ci/run` installs Debian's redis-server");
    wait_for_port(port, "redis-server");
    (Reaped(child), port)
}

/// nginx on loopback, plain round robin over `replicas` (ports), streams unbuffered. A replica
/// that refuses connections is skipped; a request it already received is not sent again.
fn start_round_robin(replicas: &[u16], dir: &Path) -> (Reaped, u16) {
    let port = free_port();
    let servers: String =
        replicas.iter().map(|p| format!("        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n")).collect();
    let http = format!(
        r#"    upstream replicas {{
{servers}    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
            proxy_next_upstream error timeout;
        }}
    }}"#
    );
    (start_nginx(dir, port, &http), port)
}

/// A replica with a data dir of its own on a fixed port, pulling from the control plane.
fn replica(cp: &ControlPlane, dir: &Path, port: u16, name: &str, extra: &[(&str, &str)]) -> DataPlane {
    std::fs::create_dir_all(dir).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut env = vec![
        ("MCPGW_CONTROL_URL", cp.base.as_str()),
        ("MCPGW_DATA_PLANE_TOKEN", TOKEN),
        ("MCPGW_REPLICA_ID", name),
        ("MCPGW_GATEWAY_LISTEN", listen.as_str()),
    ];
    env.extend_from_slice(extra);
    let dp = DataPlane::start_in(dir, &env);
    dp.wait_for_revision(cp.db_revision());
    dp
}

/// One JSON-RPC POST: status, the session id the answer names, and the messages it carries.
fn post(
    url: &str,
    key: &str,
    session: Option<&str>,
    body: &Value,
) -> (u16, Option<String>, Vec<Value>, Option<String>) {
    common::blocking(|| {
        common::tls();
        let mut req = reqwest::blocking::Client::new()
            .post(url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .header("Authorization", format!("Bearer {key}"));
        if let Some(id) = session {
            req = req.header("Mcp-Session-Id", id).header("MCP-Protocol-Version", "2025-06-18");
        }
        let resp = req.body(body.to_string()).send().expect("request");
        let status = resp.status().as_u16();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (id, retry_after) = (header("mcp-session-id"), header("retry-after"));
        let text = resp.text().unwrap_or_default();
        let mut messages: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|l| serde_json::from_str(l.trim()).ok())
            .collect();
        if messages.is_empty() {
            messages.extend(serde_json::from_str::<Value>(&text).ok());
        }
        (status, id, messages, retry_after)
    })
}

/// Opens a session on `url` (initialize, then initialized) and returns its id.
fn open_session(url: &str, key: &str) -> String {
    let (status, id, _, _) = post(url, key, None, &initialize_body());
    assert_eq!(status, 200, "initialize");
    let id = id.expect("a session id");
    let (status, _, _, _) =
        post(url, key, Some(&id), &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    assert_eq!(status, 202, "initialized");
    id
}

fn echo(n: u64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
           "params": {"name": "fx__echo", "arguments": {"message": message}}})
}

fn echoed(messages: &[Value]) -> Option<String> {
    messages.iter().find(|m| m.get("result").is_some()).map(|m| text(&m["result"]))
}

#[test]
fn a_session_opened_on_one_replica_is_continued_by_another_and_only_for_its_key() {
    let cp = ControlPlane::start_with_env(&[("MCPGW_DATA_PLANE_TOKEN", TOKEN)]);
    let key = provision(&cp, "alice", json!([fixture_server("fx")]));
    let other_project = provision(&cp, "bob", json!([fixture_server("fx")]));
    let same_project = new_key(&cp, "alice");
    let root = TempDir::new("mcpgw-replicas");
    let secret = [("MCPGW_SESSION_SECRET", SECRET)];
    let a = replica(&cp, &root.path().join("a"), free_port(), "a", &secret);
    let b = replica(&cp, &root.path().join("b"), free_port(), "b", &secret);
    let other_secret = [("MCPGW_SESSION_SECRET", "another-deployment-secret-0123456789abcdef")];
    let c = replica(&cp, &root.path().join("c"), free_port(), "c", &other_secret);
    let short = [("MCPGW_SESSION_SECRET", SECRET), ("MCPGW_SESSION_LIFETIME_SECS", "1")];
    let d = replica(&cp, &root.path().join("d"), free_port(), "d", &short);

    let id = open_session(&a.mcp_url(), &key);
    assert_eq!(echoed(&post(&a.mcp_url(), &key, Some(&id), &echo(1, "on a")).2).as_deref(), Some("on a"));
    // B never saw the session: it takes it over from the id alone, no new initialize.
    let (status, _, messages, _) = post(&b.mcp_url(), &key, Some(&id), &echo(2, "on b"));
    assert_eq!((status, echoed(&messages).as_deref()), (200, Some("on b")), "{messages:?}");
    assert!(b.log_text().contains("session taken over"), "{}", b.log_text());
    // And A goes on serving it too.
    assert_eq!(echoed(&post(&a.mcp_url(), &key, Some(&id), &echo(3, "a again")).2).as_deref(), Some("a again"));

    // Another project's key, or another key of the same project, on a replica that has not seen
    // the session yet: the same 404 as for an unknown session, counted and audited.
    for (who, k) in [("another project's key", &other_project), ("another key of the project", &same_project)] {
        let fresh = replica(&cp, &root.path().join(format!("fresh-{}", who.len())), free_port(), "fresh", &secret);
        let (status, _, messages, _) = post(&fresh.mcp_url(), k, Some(&id), &echo(4, "stolen"));
        assert_eq!(status, 404, "{who}: {messages:?}");
        assert!(fresh.get("/metrics").1.contains("mcpgw_auth_failures_total{reason=\"session_owner\"} 1"), "{who}");
        // The refusal did not spoil the session for its owner on that replica.
        assert_eq!(status_of(&post(&fresh.mcp_url(), &key, Some(&id), &echo(5, "owner"))), 200, "{who}");
    }

    // Another deployment's secret, forged and altered ids: unknown sessions.
    assert_eq!(status_of(&post(&c.mcp_url(), &key, Some(&id), &echo(6, "x"))), 404);
    let body = id.strip_prefix("v1.").expect("a sealed id");
    let mut altered = body.as_bytes().to_vec();
    let i = altered.len() / 2;
    altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
    let altered = format!("v1.{}", String::from_utf8(altered).unwrap());
    let forged = format!("v1.{}", "A".repeat(body.len()));
    for bad in [altered.as_str(), forged.as_str(), "v1.", &uuid::Uuid::new_v4().to_string()] {
        assert_eq!(status_of(&post(&b.mcp_url(), &key, Some(bad), &echo(7, "x"))), 404, "{bad}");
    }

    // An expired id: D seals for one second.
    let short_lived = open_session(&d.mcp_url(), &key);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(status_of(&post(&a.mcp_url(), &key, Some(&short_lived), &echo(8, "late"))), 404, "expired");

    // DELETE ends it where it is sent; that replica does not bring it back from its id.
    let (status, _, _, _) = delete(&b.mcp_url(), &key, &id);
    assert_eq!(status, 200);
    assert_eq!(status_of(&post(&b.mcp_url(), &key, Some(&id), &echo(9, "after delete"))), 404);
}

fn status_of(answer: &(u16, Option<String>, Vec<Value>, Option<String>)) -> u16 {
    answer.0
}

fn delete(url: &str, key: &str, session: &str) -> (u16, Option<String>, Vec<Value>, Option<String>) {
    common::blocking(|| {
        let resp = reqwest::blocking::Client::new()
            .delete(url)
            .header("Authorization", format!("Bearer {key}"))
            .header("Mcp-Session-Id", session)
            .header("MCP-Protocol-Version", "2025-06-18")
            .send()
            .expect("request");
        (resp.status().as_u16(), None, Vec::new(), None)
    })
}

/// The Python SDK making `calls` sequential tool calls on one session, reporting progress on stderr.
fn python_caller(url: &str, key: &str, calls: usize) -> (Child, Arc<AtomicUsize>, Arc<Mutex<String>>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/steady_caller.py");
    let mut child = Command::new("python3")
        .args([
            script,
            "--url",
            url,
            "--key",
            key,
            "--tool",
            "fx__echo",
            "--calls",
            &calls.to_string(),
            "--pause-ms",
            "5",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    let done = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    {
        let (done, log) = (done.clone(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("done ").and_then(|n| n.trim().parse().ok()) {
                    done.store(n, Ordering::Relaxed);
                } else {
                    log.lock().unwrap().push_str(&format!("{line}\n"));
                }
            }
        });
    }
    (child, done, log)
}

fn calls_in_audit(dp_audit: &Path, key: &str) -> usize {
    let key_id = key.split('_').nth(1).unwrap_or_default();
    std::fs::read_to_string(dp_audit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["key_id"] == key_id && r["tool"] == "echo" && r["outcome"] == "success")
        .count()
}

#[test]
fn sessions_survive_a_killed_and_a_restarted_replica_behind_round_robin() {
    const CALLS: usize = 1000;
    let cp = ControlPlane::start_with_env(&[("MCPGW_DATA_PLANE_TOKEN", TOKEN)]);
    let python_key = provision(&cp, "steady", json!([fixture_server("fx")]));
    let rmcp_key = new_key(&cp, "steady");
    let (_redis, redis_port) = start_redis();
    let redis_url = format!("redis://127.0.0.1:{redis_port}/0");
    let env = [("MCPGW_SESSION_SECRET", SECRET), ("MCPGW_REDIS_URL", redis_url.as_str())];
    let root = TempDir::new("mcpgw-replicas");
    let ports = [free_port(), free_port(), free_port()];
    let dirs: Vec<PathBuf> = (0..3).map(|i| root.path().join(format!("replica-{i}"))).collect();
    let mut replicas: Vec<DataPlane> =
        (0..3).map(|i| replica(&cp, &dirs[i], ports[i], &format!("replica-{i}"), &env)).collect();
    let (_nginx, lb_port) = start_round_robin(&ports, &root.path().join("nginx"));
    let url = format!("http://127.0.0.1:{lb_port}/mcp");

    // Admin changes stream in the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let changes = {
        let (stop, cp_base) = (stop.clone(), cp.base.clone());
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let created = client
                    .post(format!("{cp_base}/api/v1/users"))
                    .bearer_auth(common::control_plane::ADMIN_KEY)
                    .json(&json!({"email": format!("churn-{n}@example.com")}))
                    .send()
                    .is_ok_and(|r| r.status().as_u16() == 201);
                n += usize::from(created);
                std::thread::sleep(Duration::from_millis(150));
            }
            n
        })
    };

    let (python, python_done, python_log) = python_caller(&url, &python_key, CALLS);
    // An rmcp client speaking 2026-07-28 (stateless: any replica answers any request).
    let rmcp_done = Arc::new(AtomicUsize::new(0));
    let rmcp = {
        let (url, key, done) = (url.clone(), rmcp_key.clone(), rmcp_done.clone());
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let config = StreamableHttpClientTransportConfig::with_uri(url.as_str()).auth_header(key.clone());
                let transport = StreamableHttpClientTransport::from_config(config);
                let lifecycle =
                    ClientLifecycleMode::Discover { preferred_versions: vec![ProtocolVersion::V_2026_07_28] };
                let client =
                    ().serve_with_lifecycle(transport, lifecycle).await.expect("rmcp connects through the balancer");
                let version = client.peer_info().map(|i| i.protocol_version.to_string()).unwrap_or_default();
                let mut failures = Vec::new();
                for i in 0..CALLS {
                    let message = format!("rmcp {i}");
                    match call(&client, "fx__echo", json!({"message": message})).await {
                        Ok(r) if text(&r) == message => {}
                        other => failures.push(format!("call {i}: {other:?}")),
                    }
                    done.store(i + 1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let _ = client.cancel().await;
                (version, failures)
            })
        })
    };

    let wait_until = |progress: &AtomicUsize, at: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while progress.load(Ordering::Relaxed) < at {
            let log = || python_log.lock().unwrap().clone();
            assert!(Instant::now() < deadline, "no progress past {}:\n{}", progress.load(Ordering::Relaxed), log());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // A quarter of the way: one replica dies without warning.
    wait_until(&python_done, CALLS / 4);
    replicas[1].child.kill().unwrap();
    replicas[1].child.wait().unwrap();
    // Half way: another is stopped and started again (a rolling upgrade), on the same port.
    wait_until(&python_done, CALLS / 2);
    let stopped = Command::new("kill").args(["-TERM", &replicas[2].pid().to_string()]).status().unwrap();
    assert!(stopped.success());
    replicas[2].child.wait().unwrap();
    replicas[2] = replica(&cp, &dirs[2], ports[2], "replica-2", &env);

    let out = python.wait_with_output().expect("python client");
    stop.store(true, Ordering::Relaxed);
    let admin_changes = changes.join().unwrap();
    let (version, rmcp_failures) = rmcp.join().unwrap();
    let stderr = python_log.lock().unwrap().clone();
    assert!(out.status.success(), "python client failed:\n{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("python client report");

    // One call per client may have been in flight on the killed replica; nothing else fails, and
    // nobody had to initialize again.
    assert_eq!(report["initializations"], 1, "{report}");
    assert!(report["failed"].as_u64().unwrap() <= 1, "python: {report}\n{stderr}");
    assert_eq!(report["succeeded"].as_u64().unwrap() + report["failed"].as_u64().unwrap(), CALLS as u64);
    assert!(rmcp_failures.len() <= 1, "rmcp: {rmcp_failures:?}");
    assert_eq!(version, "2026-07-28", "the rmcp client negotiated");
    assert!(admin_changes >= 5, "only {admin_changes} admin changes during the run");

    // The Python session was served by every replica, including the one started after it opened.
    let served: Vec<usize> = (0..3).map(|i| calls_in_audit(&replicas[i].audit_log, &python_key)).collect::<Vec<_>>();
    assert!(served.iter().all(|n| *n > 0), "python calls per replica: {served:?}");
    assert!(replicas[2].log_text().contains("session taken over"), "the restarted replica took the session over");
    println!(
        "python calls per replica: {served:?} (replica 1 killed, replica 2 restarted); python failed {}, rmcp failed {}; \
         {admin_changes} admin changes",
        report["failed"],
        rmcp_failures.len()
    );
}

/// Sends `calls` tool calls on session `id` with `key`, round robin over `urls`, three at a time:
/// the answers' statuses, and the `Retry-After` and error message of each refusal.
fn hammer(urls: &[String], key: &str, id: &str, calls: usize) -> Vec<(u16, Option<String>, String)> {
    let per_thread = calls / urls.len();
    let threads: Vec<_> = urls
        .iter()
        .enumerate()
        .map(|(t, url)| {
            let (url, key, id) = (url.clone(), key.to_string(), id.to_string());
            std::thread::spawn(move || {
                (0..per_thread)
                    .map(|i| {
                        let n = (t * per_thread + i) as u64 + 10;
                        let (status, _, messages, retry_after) = post(&url, &key, Some(&id), &echo(n, "limited"));
                        let error = messages.iter().find_map(|m| m["error"]["message"].as_str()).unwrap_or_default();
                        (status, retry_after, error.to_string())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
}

fn metric(dp: &DataPlane, line_start: &str) -> u64 {
    dp.get("/metrics")
        .1
        .lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_rate_limit_holds_across_replicas_and_per_replica_while_redis_is_down() {
    let cp = ControlPlane::start_with_env(&[("MCPGW_DATA_PLANE_TOKEN", TOKEN)]);
    provision(&cp, "limited", json!([fixture_server("fx")]));
    let limited_key = |per_minute: u32| {
        let body = json!({"project": "proj-limited", "user": "limited@example.com",
                          "rate_limit": {"calls_per_minute": per_minute}});
        cp.ok("POST", "/api/v1/api-keys", Some(body), 201)["key"].as_str().unwrap().to_string()
    };
    let key = limited_key(60);
    let (mut redis, redis_port) = start_redis();
    let redis_url = format!("redis://127.0.0.1:{redis_port}/0");
    let env = [("MCPGW_SESSION_SECRET", SECRET), ("MCPGW_REDIS_URL", redis_url.as_str())];
    let root = TempDir::new("mcpgw-limits");
    let replicas: Vec<DataPlane> =
        (0..3).map(|i| replica(&cp, &root.path().join(format!("r{i}")), free_port(), &format!("r{i}"), &env)).collect();
    let urls: Vec<String> = replicas.iter().map(DataPlane::mcp_url).collect();

    // 300 calls as fast as three clients can send them, spread over the replicas, on one session.
    let id = open_session(&urls[0], &key);
    let answers = hammer(&urls, &key, &id, 300);
    let admitted = answers.iter().filter(|(s, _, _)| *s == 200).count();
    let refused: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    assert!((55..=60).contains(&admitted), "{admitted} admitted across the replicas (limit 60 per minute)");
    assert_eq!(admitted + refused.len(), 300, "every other call is a 429: {answers:?}");
    let mut wait = 0;
    for (_, retry_after, message) in &refused {
        let secs: u64 = retry_after.as_deref().and_then(|v| v.parse().ok()).expect("Retry-After on every 429");
        assert!((1..=61).contains(&secs), "Retry-After {secs}");
        assert!(message.contains("rate limit of API key") && message.contains("60 calls per minute"), "{message}");
        wait = wait.max(secs);
    }
    let counted: u64 =
        replicas.iter().map(|dp| metric(dp, "mcpgw_rate_limited_total{project=\"proj-limited\",limit=\"key\"} ")).sum();
    assert_eq!(counted, refused.len() as u64, "the refusals are counted");
    // Each replica's log, once it holds what its metrics count (it is written behind the calls).
    let limited = |l: &[Value]| l.iter().filter(|r| r["event"] == "rate_limited").count();
    let succeeded = |l: &[Value]| l.iter().filter(|r| r["tool"] == "echo" && r["outcome"] == "success").count();
    let logs: Vec<Vec<Value>> = replicas
        .iter()
        .map(|dp| {
            let refusals = metric(dp, "mcpgw_rate_limited_total{project=\"proj-limited\",limit=\"key\"} ") as usize;
            let successes = metric(
                dp,
                "mcpgw_tool_calls_total{project=\"proj-limited\",server=\"fx\",tool=\"echo\",outcome=\"success\"} ",
            ) as usize;
            dp.audit_records(|l| limited(l) >= refusals && succeeded(l) >= successes)
        })
        .collect();
    let audited: usize = logs.iter().map(|l| limited(l)).sum();
    assert_eq!(audited, refused.len(), "and audited");
    let reached: usize = replicas.iter().map(|dp| calls_in_audit(&dp.audit_log, &key)).sum();
    assert_eq!(reached, admitted, "refused calls never reached the upstream");

    println!("limit 60/min over 3 replicas with Redis: {admitted} of 300 admitted, longest Retry-After {wait} s");
    // When Retry-After says, the key is admitted again.
    std::thread::sleep(Duration::from_secs(wait));
    let (status, _, messages, _) = post(&urls[1], &key, Some(&id), &echo(1000, "again"));
    assert_eq!((status, echoed(&messages).as_deref()), (200, Some("again")), "after {wait} s");

    // Redis goes away: calls go on, each replica counting alone, and says so.
    let _ = redis.0.kill();
    let _ = redis.0.wait();
    let key = limited_key(10);
    for dp in &replicas {
        dp.wait_for_revision(cp.db_revision());
    }
    let id = open_session(&urls[2], &key);
    let answers = hammer(&urls, &key, &id, 45);
    assert!(answers.iter().all(|(s, _, _)| *s == 200 || *s == 429), "no outage: {answers:?}");
    let admitted = answers.iter().filter(|(s, _, _)| *s == 200).count();
    assert!(
        (11..=30).contains(&admitted),
        "{admitted} admitted: each replica holds its own 10, no more, none without limit"
    );
    let fallbacks: u64 = replicas.iter().map(|dp| metric(dp, "mcpgw_rate_limit_fallbacks_total ")).sum();
    assert!(fallbacks > 0, "the fallback is counted");
    println!("limit 10/min over 3 replicas, Redis down: {admitted} of 45 admitted");
    assert!(replicas.iter().any(|dp| dp.log_text().contains("Redis does not answer")), "the fallback is logged");
}
