//! Setting names and defaults both planes (and operators' scripts) agree on.

use std::path::{Path, PathBuf};

pub const ENV_DATA_DIR: &str = "MCPGW_DATA_DIR";
pub const ENV_ADMIN_API_KEY: &str = "MCPGW_ADMIN_API_KEY";
pub const ENV_CONTROL_LISTEN: &str = "MCPGW_CONTROL_LISTEN";
pub const ENV_GATEWAY_LISTEN: &str = "MCPGW_GATEWAY_LISTEN";
pub const ENV_SNAPSHOT_PATH: &str = "MCPGW_SNAPSHOT_PATH";
pub const ENV_API_KEY: &str = "MCPGW_API_KEY";
pub const ENV_LOG_FORMAT: &str = "MCPGW_LOG_FORMAT";
pub const ENV_SECRETS_KEY: &str = "MCPGW_SECRETS_KEY";
/// Executables (or directories of them) stdio servers may run; unset, any (see [`crate::stdio_commands`]).
pub const ENV_STDIO_COMMANDS: &str = "MCPGW_STDIO_COMMANDS";
/// The control plane's database (`sqlite://...` or `postgres://...`); unset, SQLite in the data dir.
pub const ENV_DATABASE_URL: &str = "MCPGW_DATABASE_URL";
/// The credential data planes present to pull the snapshot (comma separated on the control plane).
pub const ENV_DATA_PLANE_TOKEN: &str = "MCPGW_DATA_PLANE_TOKEN";
/// The control plane a data plane pulls its snapshot from.
pub const ENV_CONTROL_URL: &str = "MCPGW_CONTROL_URL";
/// Extra trust anchors (PEM) for the control plane's certificate.
pub const ENV_CONTROL_CA: &str = "MCPGW_CONTROL_CA";
/// Browser origins the admin API accepts requests from.
pub const ENV_ADMIN_ALLOWED_ORIGINS: &str = "MCPGW_ADMIN_ALLOWED_ORIGINS";
/// Issuers whose OAuth access tokens the data plane accepts from clients.
pub const ENV_OAUTH_ISSUER: &str = "MCPGW_OAUTH_ISSUER";
/// The gateway's external URL (OAuth resource identifiers, client configs).
pub const ENV_PUBLIC_URL: &str = "MCPGW_PUBLIC_URL";

pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DEFAULT_CONTROL_LISTEN: &str = "127.0.0.1:8001";
pub const DEFAULT_GATEWAY_LISTEN: &str = "127.0.0.1:8000";
pub const SNAPSHOT_FILE_NAME: &str = "snapshot.json";
pub const ADMIN_KEY_FILE_NAME: &str = "admin_apikey";
pub const DATABASE_FILE_NAME: &str = "mcpgw.db";
pub const SECRETS_KEY_FILE_NAME: &str = "secrets_key";

/// Where the snapshot lives when `MCPGW_SNAPSHOT_PATH` is not set.
pub fn default_snapshot_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SNAPSHOT_FILE_NAME)
}

/// A listen address is `host:port` that resolves (port 0 picks a free port).
#[derive(Debug, thiserror::Error)]
#[error("{name} must be an address to listen on as host:port (got `{value}`): {source}")]
pub struct BadListenAddress {
    name: &'static str,
    value: String,
    #[source]
    source: std::io::Error,
}

pub fn check_listen_address(name: &'static str, value: &str) -> Result<(), BadListenAddress> {
    let bad = |source| BadListenAddress { name, value: value.to_string(), source };
    let mut addrs = std::net::ToSocketAddrs::to_socket_addrs(value).map_err(bad)?;
    match addrs.next() {
        Some(_) => Ok(()),
        None => Err(bad(std::io::Error::other("it resolves to no address"))),
    }
}
