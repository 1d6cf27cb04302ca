//! mcpgw control plane: the admin REST API over SQLite that manages users, projects, MCP configs and
//! API keys, and publishes a versioned snapshot for the data plane after every committed change.
//!
//! Request path: [`browser`] (refuses what another web site's page could send) -> [`auth`] (admin
//! key) -> [`api`] handlers -> [`store`] (one write transaction that bumps the revision and audits)
//! -> [`publish`] (atomic snapshot file). It never speaks MCP.

pub mod admin_key;
pub mod api;
pub mod app;
pub mod auth;
pub mod browser;
pub mod error;
pub mod json;
pub mod openapi;
pub mod publish;
pub(crate) mod rate_limits;
pub mod secrets;
pub mod store;
mod telemetry;
pub mod upstream_oauth;

pub use app::{Settings, cli_main, serve};
