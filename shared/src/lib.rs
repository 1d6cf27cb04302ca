//! The contract between the mcpgw control plane and data plane.
//!
//! The planes share nothing at run time but the snapshot (a file, or a document pulled over HTTP).
//! This crate owns its types and their
//! validation ([`snapshot`], [`server`]), the atomic file I/O ([`snapshot_file`]), the API-key format
//! and hashing ([`api_key`]), and the settings both planes apply alike ([`settings`],
//! [`stdio_commands`]). It must not know about SQL or MCP, and knows HTTP only behind the
//! `token-endpoint` feature: the one request both planes make, to upstreams' OAuth token endpoints.
//! Behind `tls`, the listeners' certificate loading ([`tls`]); behind `otel`, OTLP export ([`otel`]).

pub mod api_key;
pub mod oauth;
#[cfg(feature = "otel")]
pub mod otel;
pub mod pins;
pub mod rate_limit;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod server;
pub mod settings;
pub mod snapshot;
pub mod snapshot_file;
pub mod stdio_commands;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "token-endpoint")]
pub mod token_endpoint;

pub use rate_limit::RateLimit;
pub use server::{ServerSpec, Transport};
pub use snapshot::{Snapshot, SnapshotError};
