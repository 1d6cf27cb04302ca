//! A process with a bad setting stops before anything listens, with one message naming the setting.

use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `binary` with `env` in a fresh data dir; its exit status and everything it printed.
fn run(binary: &str, env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let dir = tempfile_dir();
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MCPGW_DATA_DIR", &dir)
        .env("MCPGW_CONTROL_LISTEN", "127.0.0.1:0")
        .env("MCPGW_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let out = cmd.output().expect("run");
    assert!(started.elapsed() < Duration::from_secs(20));
    let _ = std::fs::remove_dir_all(&dir);
    (out.status, format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mcpgw-startup-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A binary, the settings it is started with, and what it must say.
type Case = (&'static str, &'static [(&'static str, &'static str)], &'static str);

#[test]
fn a_bad_setting_stops_the_process_before_it_listens() {
    let cases: [Case; 8] = [
        (env!("CARGO_BIN_EXE_mcpgw"), &[("MCPGW_ADMIN_API_KEY", "")], "MCPGW_ADMIN_API_KEY must be at least 16"),
        (env!("CARGO_BIN_EXE_mcpgw"), &[("MCPGW_SECRETS_KEY", "short")], "MCPGW_SECRETS_KEY must be 32 bytes"),
        (env!("CARGO_BIN_EXE_mcpgw"), &[("MCPGW_MAX_SESSIONS", "0")], "MCPGW_MAX_SESSIONS must be a positive"),
        (
            env!("CARGO_BIN_EXE_mcpgw"),
            &[("MCPGW_GATEWAY_LISTEN", "nowhere")],
            "MCPGW_GATEWAY_LISTEN must be an address",
        ),
        (env!("CARGO_BIN_EXE_data-plane"), &[("MCPGW_MAX_REQUEST_BYTES", "0")], "MCPGW_MAX_REQUEST_BYTES must be"),
        (
            env!("CARGO_BIN_EXE_mcpgw"),
            &[("MCPGW_OAUTH_ISSUER", "https://login.example.com")],
            "MCPGW_PUBLIC_URL must be set with MCPGW_OAUTH_ISSUER",
        ),
        (
            env!("CARGO_BIN_EXE_data-plane"),
            &[("MCPGW_OAUTH_ISSUER", "http://login.example.com"), ("MCPGW_PUBLIC_URL", "https://mcp.example.com")],
            "MCPGW_OAUTH_ISSUER must be an https:// URL",
        ),
        (
            env!("CARGO_BIN_EXE_control-plane"),
            &[("MCPGW_ADMIN_API_KEY", "")],
            "MCPGW_ADMIN_API_KEY must be at least 16",
        ),
    ];
    for (binary, env, expected) in cases {
        let (status, output) = run(binary, env);
        assert!(!status.success(), "{env:?} started:\n{output}");
        assert!(output.contains(expected), "{env:?}: {output}");
        assert!(!output.contains("listening on"), "{env:?} listened before failing:\n{output}");
        assert_eq!(output.matches("must be").count(), 1, "{env:?}: one message:\n{output}");
    }
}
