//! Admin key bootstrap: `MCPGW_ADMIN_API_KEY` when set, otherwise a key generated at first start and
//! written once to `<data dir>/admin_apikey` (mode 0600). Only its argon2 hash is kept in the database.

use std::path::PathBuf;
use std::sync::Arc;

use actix_web::web;
use shared::api_key;
use sqlx::AnyPool;

use crate::auth::AdminKey;
use crate::store::{Store, get_meta, set_meta};

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
pub async fn bootstrap(pool: &AnyPool, file: &AdminKeyFile, env_key: Option<&str>) -> anyhow::Result<AdminKey> {
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
                // Instances starting together on one new database: the first one's key counts.
                let inserted = sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT(key) DO NOTHING")
                    .bind(HASH_META_KEY)
                    .bind(&hash)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                if inserted == 0 {
                    // This key was never accepted anywhere: leave no file that suggests otherwise.
                    let _ = std::fs::remove_file(&file.path);
                    let hash = get_meta(&mut conn, HASH_META_KEY).await?.unwrap_or(hash);
                    tracing::info!(
                        "another control-plane instance generated the admin API key; read it from its data dir"
                    );
                    return Ok(AdminKey::new(hash, None));
                }
                tracing::warn!(path = %file.path.display(), "generated a new admin API key; read it from this file (mode 0600)");
                Ok(AdminKey::new(hash, Some(&key)))
            }
        },
    }
}

/// Follows the stored hash on every revision (another instance may rotate the key), so a rotated
/// key stops working on every instance, not only on the one that rotated it.
pub fn spawn_follower(store: Arc<Store>, admin: web::Data<AdminKey>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut revisions = store.subscribe();
        while revisions.changed().await.is_ok() {
            match store.conn().await {
                Ok(mut conn) => {
                    if let Ok(Some(hash)) = get_meta(&mut conn, HASH_META_KEY).await {
                        admin.follow_stored(hash);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the admin key hash"),
            }
        }
    })
}
