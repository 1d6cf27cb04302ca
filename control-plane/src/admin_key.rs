//! Admin key bootstrap: `MCPGW_ADMIN_API_KEY` when set, otherwise a key generated at first start and
//! written once to `<data dir>/admin_apikey` (mode 0600). Only its argon2 hash is kept in the database.

use std::path::PathBuf;

use shared::api_key;
use sqlx::SqlitePool;

use crate::auth::AdminKey;
use crate::store::{get_meta, set_meta};

pub const HASH_META_KEY: &str = "admin_key_hash";
/// Shortest admin key accepted from the environment.
pub const MIN_ENV_KEY_LEN: usize = 16;

/// Where a generated admin key lives, and whether the key is managed by the environment instead.
pub struct AdminKeyFile {
    pub path: PathBuf,
    pub from_env: bool,
}

impl AdminKeyFile {
    /// Rewrites the key file after a rotation, so the file never holds a dead key.
    pub fn replace(&self, key: &str) -> std::io::Result<()> {
        shared::snapshot_file::write_bytes(&self.path, format!("{key}\n").as_bytes()).map_err(std::io::Error::other)
    }
}

/// Makes sure an admin key exists and returns the verifier for it.
pub async fn bootstrap(pool: &SqlitePool, file: &AdminKeyFile, env_key: Option<&str>) -> anyhow::Result<AdminKey> {
    let mut conn = pool.acquire().await?;
    let stored = get_meta(&mut conn, HASH_META_KEY).await?;
    match env_key {
        Some(key) => {
            anyhow::ensure!(
                key.len() >= MIN_ENV_KEY_LEN,
                "MCPGW_ADMIN_API_KEY must be at least {MIN_ENV_KEY_LEN} characters"
            );
            let unchanged = match &stored {
                Some(h) => {
                    let (k, h) = (key.to_string(), h.clone());
                    tokio::task::spawn_blocking(move || api_key::verify(&k, &h)).await?
                }
                None => false,
            };
            let hash = match stored {
                Some(h) if unchanged => h,
                _ => {
                    let h = api_key::hash(key)?;
                    set_meta(&mut conn, HASH_META_KEY, &h).await?;
                    h
                }
            };
            Ok(AdminKey::new(hash, Some(key)))
        }
        None => match stored {
            Some(hash) => Ok(AdminKey::new(hash, None)),
            None => {
                let key = api_key::generate_admin_key();
                let hash = api_key::hash(&key)?;
                file.replace(&key)?;
                set_meta(&mut conn, HASH_META_KEY, &hash).await?;
                tracing::warn!(path = %file.path.display(), "generated a new admin API key; read it from this file (mode 0600)");
                Ok(AdminKey::new(hash, Some(&key)))
            }
        },
    }
}
