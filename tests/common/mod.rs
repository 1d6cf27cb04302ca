//! Helpers shared by the end-to-end tests: start the real binaries and talk to them.
#![allow(dead_code)]

/// Runs each named test once per database: `sqlite::<name>` and `postgres::<name>` (the tests are
/// plain functions; their control planes use the database of [`control_plane::backend`]).
#[allow(unused_macros)]
macro_rules! on_every_database {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::common::control_plane::{on, Backend};
            $( #[test] fn $name() { on(Backend::Sqlite, super::$name) } )*
        }
        mod postgres {
            use super::common::control_plane::{on, Backend};
            $( #[test] fn $name() { on(Backend::Postgres, super::$name) } )*
        }
    };
}

pub mod certs;
pub mod control_plane;
pub mod data_plane;
pub mod postgres;
pub mod proc;

/// Runs blocking test I/O (the blocking HTTP client) also from inside an async test body.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    if tokio::runtime::Handle::try_current().is_ok() { tokio::task::block_in_place(f) } else { f() }
}

/// reqwest is built with rustls and no default crypto provider (the gateway installs ring at start);
/// test processes do the same before building any HTTP client.
pub fn tls() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
