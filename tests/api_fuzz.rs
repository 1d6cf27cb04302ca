//! Fuzzes the admin API with schemathesis against the committed `openapi.json`: every operation, in
//! the examples, coverage, fuzzing and stateful phases, bounded to fit CI and seeded to be repeatable.
//! It must find no 5xx, no response outside the documented schema, no undocumented status code.

mod common;

use std::path::Path;
use std::process::Command;

use common::control_plane::{ADMIN_KEY, ControlPlane};

#[test]
fn schemathesis_finds_no_server_errors_or_undocumented_responses() {
    let cp = ControlPlane::start();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Run in the control plane's temporary dir so schemathesis' caches stay out of the tree.
    let output = Command::new("schemathesis")
        .current_dir(cp.data_dir())
        .args(["run", root.join("openapi.json").to_str().unwrap(), "--url", &cp.base])
        .args(["-H", &format!("Authorization: Bearer {ADMIN_KEY}")])
        .args(["--max-examples", "40", "--seed", "20261124", "--phases", "examples,coverage,fuzzing,stateful"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .expect("run schemathesis (pip install -r tests/requirements.txt; bash .ci/run does)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors = || cp.log_text().lines().filter(|l| l.contains("ERROR")).collect::<Vec<_>>().join("\n");
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{stdout}\n{stderr}\ncontrol plane errors:\n{}",
        errors()
    );
    assert!(stdout.contains(" passed") && !stdout.contains("❌"), "{stdout}");
    // The process survived the whole run and still answers.
    cp.ok("GET", "/api/v1/system/health", None, 200);
}
