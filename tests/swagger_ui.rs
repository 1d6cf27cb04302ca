//! Swagger UI in a real browser (Debian's headless Chromium driven by playwright-core): refused
//! without credentials; with them, Authorize takes the Bearer key and "Try it out" lists users.
//! The screenshot is kept under `target/test-output/swagger/`.

mod common;

use std::path::Path;
use std::process::Command;

use common::control_plane::{ADMIN_KEY, ControlPlane};
use serde_json::json;

#[test]
fn swagger_ui_authorizes_with_the_bearer_key_and_tries_a_route() {
    let cp = ControlPlane::start();
    cp.ok("POST", "/api/v1/users", Some(json!({"email": "browser@example.com"})), 201);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("target/test-output/swagger");
    std::fs::create_dir_all(&out).unwrap();
    let script = root.join("tests/browser/swagger.mjs");
    assert!(
        root.join("tests/browser/node_modules/playwright-core").exists(),
        "run `npm ci --prefix tests/browser` first (bash .ci/run does)"
    );
    assert!(Path::new("/usr/bin/chromium").exists(), "install Debian's chromium first (bash .ci/run does)");
    let output = Command::new("node")
        .arg(&script)
        .env("BASE", &cp.base)
        .env("ADMIN_KEY", ADMIN_KEY)
        .env("OUT", &out)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "browser test failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("swagger ok: status 200, authorization Bearer"), "{stdout}");
    assert!(out.join("swagger.png").exists());
}
