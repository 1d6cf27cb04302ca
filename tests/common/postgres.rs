//! A throwaway PostgreSQL cluster for the tests: `initdb` into a temporary directory (as the
//! `postgres` user when the tests run as root, which PostgreSQL refuses to run as), started on a
//! free loopback port. One shared cluster per test process, with a database per control plane;
//! tests that stop and start the server get a cluster of their own. A watchdog stops the shared
//! cluster and removes its directory when the test process exits, however it exits.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Cluster {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// Whether commands run as the `postgres` user (the tests run as root).
    as_postgres: bool,
    /// Stopped and removed on drop (the shared cluster is left to its watchdog).
    owned: bool,
}

/// The directory of Debian's PostgreSQL programs (or PATH's).
fn bin_dir() -> PathBuf {
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> =
            entries.flatten().map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect();
        versions.sort();
        if let Some(newest) = versions.pop() {
            return newest;
        }
    }
    PathBuf::new()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Cluster {
    /// The cluster shared by the tests of this process.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            let mut cluster = Cluster::init();
            cluster.owned = false;
            cluster.start();
            cluster.watch_for_exit();
            cluster
        })
    }

    /// A cluster of its own, stopped and removed when dropped.
    pub fn dedicated() -> Cluster {
        let cluster = Cluster::init();
        cluster.start();
        cluster
    }

    fn init() -> Cluster {
        let dir = std::env::temp_dir().join(format!("mcpgw-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let as_postgres = is_root();
        let cluster = Cluster { port: free_port(), dir, bin: bin_dir(), as_postgres, owned: true };
        if as_postgres {
            let ok = Command::new("chown").args(["-R", "postgres:"]).arg(&cluster.dir).status().unwrap().success();
            assert!(ok, "chown of the PostgreSQL test directory failed");
        }
        let data = cluster.data_dir();
        let out = cluster
            .command("initdb")
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("initdb (install Debian's postgresql package)");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        cluster
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Starts the server and waits until it takes connections.
    pub fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
            self.port,
            self.dir.display()
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-o", &options, "-l"])
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start failed: {}", String::from_utf8_lossy(&out.stderr));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "PostgreSQL did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server at once (as a crash or a lost network would).
    pub fn stop(&self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Stops the shared cluster once this test process is gone.
    #[expect(clippy::zombie_processes, reason = "the watchdog outlives this process on purpose")]
    fn watch_for_exit(&self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = if self.as_postgres {
            format!("runuser -u postgres -- {} -D {} -m immediate stop", pg_ctl.display(), self.data_dir().display())
        } else {
            format!("{} -D {} -m immediate stop", pg_ctl.display(), self.data_dir().display())
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            dir = self.dir.display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the PostgreSQL watchdog");
    }

    /// Runs SQL as the superuser in `database`.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", database])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "psql `{sql}` failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates `name` unless it exists; returns its URL.
    pub fn database(&self, name: &str) -> String {
        let exists = self.psql("postgres", &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"));
        if exists.trim() != "1" {
            self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        }
        self.url(name)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Everything `database` holds, as SQL text (to look for what must not be stored in the clear).
    pub fn dump(&self, database: &str) -> Vec<u8> {
        let out = Command::new(self.bin.join("pg_dump"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", database])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_dump failed: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned {
            self.stop();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
