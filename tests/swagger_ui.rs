//! Swagger UI in a real browser (Debian's headless Chromium driven by playwright-core): refused
//! without credentials; with them, Authorize takes the Bearer key and "Try it out" lists users and
//! creates one. And the same browser, signed in, visiting pages of other sites that try to create a
//! user: nothing gets through. The screenshot is kept under `target/test-output/swagger/`.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use common::control_plane::{ADMIN_KEY, ControlPlane};
use serde_json::json;

/// Runs one of the scripts in tests/browser with `env`.
fn node(script: &str, env: &[(&str, &str)]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("tests/browser/node_modules/playwright-core").exists(),
        "run `npm ci --prefix tests/browser` first (bash .ci/run does)"
    );
    assert!(Path::new("/usr/bin/chromium").exists(), "install Debian's chromium first (bash .ci/run does)");
    Command::new("node")
        .arg(root.join("tests/browser").join(script))
        .envs(env.iter().copied())
        .output()
        .expect("run node")
}

fn emails(cp: &ControlPlane) -> Vec<String> {
    let users = cp.ok("GET", "/api/v1/users", None, 200);
    users["items"].as_array().unwrap().iter().map(|u| u["email"].as_str().unwrap().to_string()).collect()
}

#[test]
fn swagger_ui_authorizes_with_the_bearer_key_and_tries_a_route() {
    let cp = ControlPlane::start();
    cp.ok("POST", "/api/v1/users", Some(json!({"email": "browser@example.com"})), 201);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-output/swagger");
    std::fs::create_dir_all(&out).unwrap();
    let output = node("swagger.mjs", &[("BASE", &cp.base), ("ADMIN_KEY", ADMIN_KEY), ("OUT", out.to_str().unwrap())]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "browser test failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("swagger ok: status 200, authorization Bearer"), "{stdout}");
    assert!(stdout.contains("swagger create: status 201"), "{stdout}");
    assert!(out.join("swagger.png").exists());
    // The Swagger UI's own POST (JSON, from its own origin) went through the browser checks.
    assert_eq!(emails(&cp), ["browser@example.com", "swagger@example.com"]);
}

/// Serves `tests/browser/cross_site.html` on a loopback port of its own: another origin than the
/// control plane's (`127.0.0.1:<port>`, the same site) and, as `localhost:<port>`, another site.
fn serve_other_site() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let page = include_str!("browser/cross_site.html");
        for mut stream in listener.incoming().map_while(Result::ok) {
            // One request per connection; its head is all we need to have read.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    port
}

#[test]
fn pages_of_other_sites_cannot_change_anything_through_the_admins_browser() {
    let cp = ControlPlane::start();
    cp.ok("POST", "/api/v1/users", Some(json!({"email": "browser@example.com"})), 201);
    let revision = cp.db_revision();
    let port = serve_other_site();
    let attackers = format!("http://localhost:{port},http://127.0.0.1:{port}");
    let output = node("cross_site.mjs", &[("BASE", &cp.base), ("ADMIN_KEY", ADMIN_KEY), ("ATTACKERS", &attackers)]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "browser test failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("cross-site done"), "{stdout}");
    // Each page's form and no-cors fetch reached the control plane, signed in or not, and were
    // refused as coming from another site.
    for tag in ["anon0", "anon1", "signed0", "signed1"] {
        let refused = stdout.lines().filter(|l| l.starts_with(&format!("cross-site: {tag} POST 403"))).count();
        assert_eq!(refused, 2, "{tag}:\n{stdout}");
    }
    assert_eq!(emails(&cp), ["browser@example.com"], "a page of another site created a user");
    assert_eq!(cp.db_revision(), revision);
    assert!(cp.log_text().contains("refused a request from another web site"));
}
