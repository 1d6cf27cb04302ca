//! Starts the real `control-plane` binary on an ephemeral port with a temporary data dir, on the
//! database the running test asks for (see [`on`]): SQLite in the data dir, or a PostgreSQL database
//! of its own in the shared test cluster.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";
/// The secrets key of control planes on PostgreSQL (where none is generated).
pub const SECRETS_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The database the control planes of a test run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

thread_local! {
    static BACKEND: std::cell::Cell<Backend> = const { std::cell::Cell::new(Backend::Sqlite) };
}

/// Runs `test` with its control planes on `backend`.
pub fn on(backend: Backend, test: fn()) {
    BACKEND.with(|b| b.set(backend));
    test();
}

/// The database the running test's control planes use.
pub fn backend() -> Backend {
    BACKEND.with(|b| b.get())
}

/// The PostgreSQL database of a control plane with data dir `dir` (the same across restarts).
pub fn database_name(dir: &Path) -> String {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

pub struct ControlPlane {
    pub child: Child,
    pub base: String,
    pub dir: tempdir::TempDir,
    pub admin_key: String,
    /// Everything the process logged so far.
    pub log: Arc<Mutex<String>>,
    pub client: reqwest::blocking::Client,
}

/// A temporary directory removed on drop (kept small: no extra dependency).
pub mod tempdir {
    use std::path::{Path, PathBuf};

    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(prefix: &str) -> Self {
            let p = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&p).expect("create temp dir");
            TempDir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl ControlPlane {
    /// Starts with a known admin key from the environment.
    pub fn start() -> Self {
        Self::start_with(tempdir::TempDir::new("mcpgw-cp"), Some(ADMIN_KEY))
    }

    /// Starts on `dir`; with `admin_key` None, the key is generated and read back from the key file.
    pub fn start_with(dir: tempdir::TempDir, admin_key: Option<&str>) -> Self {
        Self::start_full(dir, admin_key, &[])
    }

    /// Starts with extra environment variables (e.g. a guardrail provider).
    pub fn start_with_env(env: &[(&str, &str)]) -> Self {
        Self::start_full(tempdir::TempDir::new("mcpgw-cp"), Some(ADMIN_KEY), env)
    }

    /// Starts on an existing `dir` with extra environment variables.
    pub fn start_full_env(dir: tempdir::TempDir, env: &[(&str, &str)]) -> Self {
        Self::start_full(dir, Some(ADMIN_KEY), env)
    }

    fn start_full(dir: tempdir::TempDir, admin_key: Option<&str>, env: &[(&str, &str)]) -> Self {
        super::tls();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_control-plane"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("MCPGW_DATA_DIR", dir.path())
            .env("MCPGW_CONTROL_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(k) = admin_key {
            cmd.env("MCPGW_ADMIN_API_KEY", k);
        }
        let named = |name: &str| env.iter().any(|(k, _)| *k == name);
        if backend() == Backend::Postgres && !named("MCPGW_DATABASE_URL") {
            cmd.env("MCPGW_DATABASE_URL", super::postgres::Cluster::shared().database(&database_name(dir.path())));
            if !named("MCPGW_SECRETS_KEY") {
                cmd.env("MCPGW_SECRETS_KEY", SECRETS_KEY);
            }
        }
        let mut child = cmd.spawn().expect("spawn control-plane");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(i) = line.find("control plane listening on http") {
                        let addr = line[i + "control plane listening on ".len()..].trim().to_string();
                        let _ = tx.send(addr);
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let base = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("control plane did not start; log:\n{}", log.lock().unwrap()));
        let admin_key = match admin_key {
            Some(k) => k.to_string(),
            None => {
                std::fs::read_to_string(dir.path().join("admin_apikey")).expect("admin key file").trim().to_string()
            }
        };
        // Idle connections are dropped before the server's keep-alive ends them, so a request never
        // races the server closing the connection it was sent on.
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        ControlPlane { child, base, dir, admin_key, log, client }
    }

    /// Talks HTTPS to this control plane, trusting the certificates in `ca_pem`.
    pub fn trust(&mut self, ca_pem: &[u8]) {
        let ca = reqwest::Certificate::from_pem_bundle(ca_pem).unwrap();
        self.client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(2))
            .tls_certs_merge(ca)
            .build()
            .unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn snapshot_path(&self) -> PathBuf {
        self.dir.path().join("snapshot.json")
    }

    /// Sends a request with the admin key; returns status and JSON body (Null when empty).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        super::blocking(|| self.call_blocking(method, path, body))
    }

    fn call_blocking(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let req = self
            .client
            .request(method.parse().unwrap(), self.url(path))
            .header("Authorization", format!("Bearer {}", self.admin_key));
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let resp = req.send().expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Like [`call`], asserting the status.
    pub fn ok(&self, method: &str, path: &str, body: Option<Value>, expect: u16) -> Value {
        let (status, v) = self.call(method, path, body);
        assert_eq!(status, expect, "{method} {path} -> {status}: {v}");
        v
    }

    pub fn db_revision(&self) -> u64 {
        self.ok("GET", "/api/v1/snapshot/status", None, 200)["db_revision"].as_u64().unwrap()
    }

    /// Waits until the snapshot file holds the latest committed revision and returns it.
    pub fn wait_for_snapshot(&self) -> Value {
        let want = self.db_revision();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(bytes) = std::fs::read(self.snapshot_path())
                && let Ok(v) = serde_json::from_slice::<Value>(&bytes)
                && v["revision"].as_u64() == Some(want)
            {
                return v;
            }
            assert!(Instant::now() < deadline, "snapshot did not reach revision {want}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Rows of a query run on this control plane's database behind its back, one line each.
    pub fn sql(&self, query: &str) -> Vec<String> {
        let text = if backend() == Backend::Postgres {
            super::postgres::Cluster::shared().psql(&database_name(self.dir.path()), query)
        } else {
            let script = "import sqlite3, sys\n\
                db = sqlite3.connect(sys.argv[1])\n\
                for row in db.execute(sys.argv[2]): print('|'.join(str(c) for c in row))\n\
                db.commit()\n";
            let out = Command::new("python3")
                .args(["-c", script, self.dir.path().join("mcpgw.db").to_str().unwrap(), query])
                .output()
                .expect("python3 runs");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        text.lines().map(str::to_string).collect()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn stop(mut self) -> tempdir::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempdir::TempDir::new("mcpgw-cp-moved"))
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a user, a project with that member, a config with one server, and returns their names.
pub fn seed(cp: &ControlPlane, tag: &str) -> (String, String, String) {
    let email = format!("{tag}@example.com");
    let project = format!("proj-{tag}");
    let config = format!("cfg-{tag}");
    cp.ok("POST", "/api/v1/users", Some(serde_json::json!({"email": email})), 201);
    cp.ok(
        "POST",
        "/api/v1/configs",
        Some(serde_json::json!({"name": config, "servers": [
            {"server_name": "echo", "config": {"command": "echo-server", "args": ["--stdio"]}}
        ]})),
        201,
    );
    cp.ok("POST", "/api/v1/projects", Some(serde_json::json!({"name": project, "mcp_config": config})), 201);
    cp.ok("POST", &format!("/api/v1/projects/{project}/users"), Some(serde_json::json!({"user": email})), 201);
    (email, project, config)
}
