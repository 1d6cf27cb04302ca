//! Admin API resources, one module each: DTOs, validation, SQL and handlers.

pub mod api_keys;
pub mod audit;
pub mod configs;
pub mod data_plane;
pub mod import;
pub mod oauth;
pub mod pins;
pub mod projects;
pub mod state;
pub mod system;
pub mod users;
