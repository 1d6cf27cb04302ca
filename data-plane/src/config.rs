//! Data-plane settings: flags, then `MCPGW_*` variables, then defaults.

use std::path::PathBuf;
use std::time::Duration;

use shared::settings as names;

const MAX_SESSION_LIFETIME_SECS: u64 = 30 * 86_400;

/// Settings of the MCP gateway.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address of the MCP endpoint; port 0 picks a free port (the bound address is logged).
    #[arg(long, env = names::ENV_GATEWAY_LISTEN, default_value = names::DEFAULT_GATEWAY_LISTEN)]
    pub listen: String,
    /// Directory holding the snapshot (and the audit log unless one is given).
    #[arg(long, env = names::ENV_DATA_DIR, default_value = names::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Snapshot to load and watch [default: <data dir>/snapshot.json]; with a control URL, where
    /// the last good snapshot from the network is kept.
    #[arg(long, env = names::ENV_SNAPSHOT_PATH)]
    pub snapshot_path: Option<PathBuf>,
    /// Control plane to pull the snapshot from over HTTP(S) (e.g. `https://control.internal:8001`)
    /// instead of watching the file; it also receives this replica's tool definitions for review.
    #[arg(long, env = names::ENV_CONTROL_URL)]
    pub control_url: Option<String>,
    /// Token presented to the control plane (one of those in its MCPGW_DATA_PLANE_TOKEN).
    #[arg(long, env = names::ENV_DATA_PLANE_TOKEN, hide_env_values = true)]
    pub data_plane_token: Option<String>,
    /// PEM certificates trusted for the control plane besides the system's roots.
    #[arg(long, env = names::ENV_CONTROL_CA)]
    pub control_ca: Option<PathBuf>,
    /// PEM certificate chain: serve MCP over HTTPS (with MCPGW_TLS_KEY).
    #[arg(long, env = shared::tls::ENV_TLS_CERT)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of MCPGW_TLS_CERT.
    #[arg(long, env = shared::tls::ENV_TLS_KEY)]
    pub tls_key: Option<PathBuf>,
    /// `Host` values accepted on /mcp (DNS-rebinding protection), comma separated; `*` accepts any.
    #[arg(long, env = "MCPGW_ALLOWED_HOSTS", value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
    pub allowed_hosts: Vec<String>,
    /// Browser `Origin` values accepted on /mcp, comma separated (e.g. `https://app.example.com:443`,
    /// `http://localhost:*` for any port); loopback origins by default, as for `Host`. Requests that
    /// carry any other Origin are refused; requests without one are not affected. Empty: none.
    #[arg(
        long,
        env = "MCPGW_ALLOWED_ORIGINS",
        value_delimiter = ',',
        default_value = "http://localhost:*,http://127.0.0.1:*,http://[::1]:*,https://localhost:*,https://127.0.0.1:*,https://[::1]:*"
    )]
    pub allowed_origins: Vec<String>,
    /// Largest accepted MCP request body in bytes (bigger ones get HTTP 413).
    #[arg(long, env = "MCPGW_MAX_REQUEST_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_request_bytes: usize,
    /// Largest accepted upstream response in bytes (bigger ones are an error, not an out-of-memory).
    #[arg(long, env = "MCPGW_MAX_RESPONSE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_response_bytes: usize,
    /// Open MCP sessions one API key may hold at once; more are refused with HTTP 429.
    #[arg(long, env = "MCPGW_MAX_SESSIONS_PER_KEY", default_value_t = 200)]
    pub max_sessions_per_key: usize,
    /// Open MCP sessions the gateway holds at once; more are refused with HTTP 503.
    #[arg(long, env = "MCPGW_MAX_SESSIONS", default_value_t = 10_000)]
    pub max_sessions: usize,
    /// Secret the replicas of one deployment share (at least 32 characters): session ids sealed with
    /// it can be continued on any of them. Unset, each process seals with a random key of its own.
    #[arg(long, env = "MCPGW_SESSION_SECRET", hide_env_values = true)]
    pub session_secret: Option<String>,
    /// Seconds a session id stays valid after `initialize` (at most 30 days); then the client opens
    /// a new session.
    #[arg(long, env = "MCPGW_SESSION_LIFETIME_SECS", default_value_t = 86_400)]
    pub session_lifetime_secs: u64,
    /// Redis holding what the replicas share: rate-limit counters (e.g. `redis://redis:6379/0`).
    /// Unset, each replica counts alone.
    #[arg(long, env = "MCPGW_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Seconds an upstream connection (a stdio process) may sit unused before it is stopped.
    #[arg(long, env = "MCPGW_UPSTREAM_IDLE_SECS", default_value_t = 300)]
    pub upstream_idle_secs: u64,
    /// Audit log of tool calls (JSON lines): a file path, `-` for stderr, or `off`
    /// [default: <data dir>/audit.jsonl].
    #[arg(long, env = "MCPGW_AUDIT_LOG")]
    pub audit_log: Option<String>,
    /// Name of this replica in the tool definitions it reports for review
    /// [default: <host name>-<port>, or <host name>-stdio].
    #[arg(long, env = "MCPGW_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Credential for the remote guardrail provider the snapshot names (never part of the snapshot).
    #[arg(long, env = "MCPGW_GUARDRAIL_API_KEY", hide_env_values = true)]
    pub guardrail_api_key: Option<String>,
    /// Also record tool-call arguments in the audit log (they may hold personal data).
    #[arg(long, env = "MCPGW_AUDIT_ARGUMENTS", default_value_t = false)]
    pub audit_arguments: bool,
    /// Executables, or directories of them, that stdio servers may run, comma separated (absolute
    /// paths, or names looked up in PATH); unset, any. Other servers are not started.
    #[arg(long, env = names::ENV_STDIO_COMMANDS)]
    pub stdio_commands: Option<String>,
    /// OAuth 2.1 / OpenID Connect issuers whose access tokens sign users in, comma separated
    /// (e.g. `https://login.example.com`); unset, API keys only. Needs MCPGW_PUBLIC_URL.
    #[arg(long = "oauth-issuer", env = names::ENV_OAUTH_ISSUER, value_delimiter = ',')]
    pub oauth_issuers: Vec<String>,
    /// The gateway's canonical external URL (e.g. `https://mcp.example.com`): resource identifiers
    /// and metadata URLs are made of it.
    #[arg(long, env = names::ENV_PUBLIC_URL)]
    pub public_url: Option<String>,
    /// Audiences an access token must name one of, comma separated [default: the resource URL of
    /// the endpoint, `<public url>/mcp` or the public URL].
    #[arg(long = "oauth-audience", env = "MCPGW_OAUTH_AUDIENCE", value_delimiter = ',')]
    pub oauth_audiences: Vec<String>,
    /// Access-token claim holding the user's e-mail, matched case-insensitively to mcpgw users.
    #[arg(long, env = "MCPGW_OAUTH_USER_CLAIM", default_value = "email")]
    pub oauth_user_claim: String,
    /// Access-token claim holding the user's groups (a list or one string), for projects that admit
    /// groups.
    #[arg(long, env = "MCPGW_OAUTH_GROUPS_CLAIM", default_value = "groups")]
    pub oauth_groups_claim: String,
    /// Scopes advertised to clients and required in every access token, space or comma separated.
    #[arg(long, env = "MCPGW_OAUTH_SCOPES", value_delimiter = ',')]
    pub oauth_scopes: Vec<String>,
    /// The gateway's client id at the issuer, for introspecting opaque (non-JWT) access tokens
    /// (RFC 7662); unset, only JWT access tokens are accepted.
    #[arg(long, env = "MCPGW_OAUTH_CLIENT_ID")]
    pub oauth_client_id: Option<String>,
    /// The secret of MCPGW_OAUTH_CLIENT_ID.
    #[arg(long, env = "MCPGW_OAUTH_CLIENT_SECRET", hide_env_values = true)]
    pub oauth_client_secret: Option<String>,
}

impl Config {
    /// From the environment and defaults only (for the all-in-one binary and tests).
    pub fn from_env() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            c: Config,
        }
        <Only as clap::Parser>::parse_from(["data-plane"]).c
    }

    /// Checks every setting that can be checked before starting (see the control plane's twin).
    pub fn validate(&self) -> anyhow::Result<()> {
        names::check_listen_address(names::ENV_GATEWAY_LISTEN, &self.listen)?;
        crate::telemetry::check_settings()?;
        let positive = [
            ("MCPGW_MAX_REQUEST_BYTES", self.max_request_bytes),
            ("MCPGW_MAX_RESPONSE_BYTES", self.max_response_bytes),
            ("MCPGW_MAX_SESSIONS_PER_KEY", self.max_sessions_per_key),
            ("MCPGW_MAX_SESSIONS", self.max_sessions),
            ("MCPGW_SESSION_LIFETIME_SECS", self.session_lifetime_secs as usize),
        ];
        for (name, value) in positive {
            anyhow::ensure!(value > 0, "{name} must be a positive number");
        }
        anyhow::ensure!(
            self.allowed_hosts.iter().any(|h| !h.trim().is_empty()),
            "MCPGW_ALLOWED_HOSTS is empty: no request could reach the gateway (use `*` for any host)"
        );
        anyhow::ensure!(
            self.session_lifetime_secs <= MAX_SESSION_LIFETIME_SECS,
            "MCPGW_SESSION_LIFETIME_SECS must be at most {MAX_SESSION_LIFETIME_SECS} (30 days)"
        );
        if let Some(secret) = &self.session_secret {
            anyhow::ensure!(
                secret.chars().count() >= crate::sealed_session::MIN_SECRET_LEN,
                "MCPGW_SESSION_SECRET must be at least {} characters (e.g. `openssl rand -base64 32`)",
                crate::sealed_session::MIN_SECRET_LEN
            );
        }
        if let Some(url) = &self.redis_url {
            crate::rate_limit::check_redis_url(url)?;
        }
        shared::stdio_commands::StdioCommands::parse(self.stdio_commands.as_deref())?;
        shared::tls::server_config(self.tls_cert.as_deref(), self.tls_key.as_deref())?;
        if let Some(url) = self.control_url.as_deref() {
            let parsed =
                reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("{}: `{url}` {e}", names::ENV_CONTROL_URL))?;
            anyhow::ensure!(
                matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some(),
                "{} must be an http:// or https:// URL of the control plane (got `{url}`)",
                names::ENV_CONTROL_URL
            );
            anyhow::ensure!(
                self.data_plane_token.as_deref().is_some_and(|t| !t.trim().is_empty()),
                "{} is set but {} is not: the control plane serves its snapshot only to that token",
                names::ENV_CONTROL_URL,
                names::ENV_DATA_PLANE_TOKEN
            );
        }
        if let Some(ca) = &self.control_ca {
            shared::tls::certificates(ca)?;
        }
        crate::oauth::validate(self)
    }

    /// The required OAuth scopes, each once (the setting may separate them by spaces or commas).
    pub fn oauth_scopes(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for scope in self.oauth_scopes.iter().flat_map(|s| s.split_ascii_whitespace()) {
            if !out.iter().any(|s| s == scope) {
                out.push(scope.to_string());
            }
        }
        out
    }

    pub fn snapshot_path(&self) -> PathBuf {
        self.snapshot_path.clone().unwrap_or_else(|| names::default_snapshot_path(&self.data_dir))
    }

    /// This replica's name: the configured one, else host name and port.
    pub fn replica_id(&self, port: Option<u16>) -> String {
        if let Some(id) = &self.replica_id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "data-plane".into());
        match port {
            Some(port) => format!("{host}-{port}"),
            None => format!("{host}-stdio"),
        }
    }

    pub fn session_lifetime(&self) -> Duration {
        Duration::from_secs(self.session_lifetime_secs.min(MAX_SESSION_LIFETIME_SECS))
    }

    pub fn upstream_idle(&self) -> Duration {
        Duration::from_secs(self.upstream_idle_secs.max(1))
    }

    /// Where audit lines go; `None` when switched off.
    pub fn audit_target(&self) -> Option<String> {
        match self.audit_log.as_deref() {
            Some("off") | Some("") => None,
            Some(other) => Some(other.to_string()),
            None => Some(self.data_dir.join("audit.jsonl").to_string_lossy().into_owned()),
        }
    }
}
