//! SQLite access shared by every resource: opening the database (WAL, foreign keys, migrations),
//! the single-writer transaction that bumps the revision and writes the audit row, identifier
//! resolution (id or unique name), and pagination. Resource-specific SQL lives with its resource.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{SqliteConnection, SqlitePool, Transaction};
use tokio::sync::{Mutex, MutexGuard, watch};
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::secrets::SecretBox;

pub struct Store {
    pub pool: SqlitePool,
    /// One writer at a time: SQLite allows only one, and queuing here beats "database is locked".
    writer: Mutex<()>,
    /// Latest committed revision; the publisher watches it.
    committed: watch::Sender<u64>,
    /// Encrypts the secrets kept in the database.
    pub secrets: SecretBox,
}

/// A write transaction. Dropping it without [`WriteTx::commit`] rolls everything back.
pub struct WriteTx<'a> {
    _writer: MutexGuard<'a, ()>,
    pub tx: Transaction<'static, sqlx::Sqlite>,
    store: &'a Store,
}

impl Store {
    pub async fn open(path: &Path, secrets: SecretBox) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // Deleted and overwritten content (old secrets, revoked tokens) is zeroed, not left behind.
            .pragma("secure_delete", "on")
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
        sqlx::migrate!("../migrations").run(&pool).await?;
        restrict_permissions(path);
        secrets.seal_stored(&pool).await?;
        let revision = current_revision(&mut *pool.acquire().await?).await?;
        let (committed, _) = watch::channel(revision);
        Ok(Self { pool, writer: Mutex::new(()), committed, secrets })
    }

    pub async fn begin_write(&self) -> Result<WriteTx<'_>, ApiError> {
        let guard = self.writer.lock().await;
        let tx = self.pool.begin().await?;
        Ok(WriteTx { _writer: guard, tx, store: self })
    }

    /// Subscribes to committed revisions.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    pub async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Sqlite>, ApiError> {
        Ok(self.pool.acquire().await?)
    }
}

impl WriteTx<'_> {
    /// Bumps the revision, records the audit row, commits, and tells the publisher.
    /// Commits state the snapshot does not carry (no revision, nothing to publish).
    pub async fn commit_unpublished(self) -> Result<(), ApiError> {
        self.tx.commit().await?;
        Ok(())
    }

    pub async fn commit(mut self, action: &str, resource: &str, resource_id: &str) -> Result<u64, ApiError> {
        let revision: i64 = sqlx::query_scalar(
            "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision' RETURNING CAST(value AS INTEGER)",
        )
        .fetch_one(&mut *self.tx)
        .await?;
        sqlx::query("INSERT INTO audit_log (at, action, resource, resource_id, revision) VALUES (?, ?, ?, ?, ?)")
            .bind(now())
            .bind(action)
            .bind(resource)
            .bind(resource_id)
            .bind(revision)
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await?;
        let revision = revision as u64;
        self.store.committed.send_replace(revision);
        tracing::info!(action, resource, resource_id, revision, "committed");
        Ok(revision)
    }
}

pub async fn current_revision(conn: &mut SqliteConnection) -> Result<u64, sqlx::Error> {
    let v: i64 =
        sqlx::query_scalar("SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'revision'").fetch_one(conn).await?;
    Ok(v as u64)
}

pub async fn get_meta(conn: &mut SqliteConnection, key: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT value FROM meta WHERE key = ?").bind(key).fetch_optional(conn).await
}

pub async fn set_meta(conn: &mut SqliteConnection, key: &str, value: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
        .bind(key)
        .bind(value)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for p in [path.to_path_buf(), path.with_extension("db-wal"), path.with_extension("db-shm")] {
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600));
    }
}
#[cfg(not(unix))]
fn restrict_permissions(_: &Path) {}

/// Current time as stored in the database.
pub fn now() -> String {
    format_time(Utc::now())
}

/// A time as stored in the database (sortable as text).
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A stored time, read back. Stored times are always written by [`now`]; a corrupt one reads as epoch.
pub fn time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).unwrap_or_default()
}

pub fn opt_time(s: &Option<String>) -> Option<DateTime<Utc>> {
    s.as_deref().map(time)
}

/// Pagination of lists: `limit` (1-1000, default 100) plus either the opaque `cursor` returned by the
/// previous page or an `offset`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Maximum number of items (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[A-Za-z0-9_-]*$")]
    pub cursor: Option<String>,
    /// Number of items to skip (alternative to `cursor`).
    #[param(minimum = 0)]
    pub offset: Option<u32>,
}

pub struct Page {
    /// Sort keys strictly greater than this one.
    pub after: String,
    pub limit: i64,
    pub offset: i64,
}

impl PageQuery {
    pub fn page(&self) -> Result<Page, ApiError> {
        let limit = self.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
        }
        let after = match &self.cursor {
            None => String::new(),
            Some(c) => base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|_| ApiError::invalid("cursor", "is not a cursor this API returned"))?,
        };
        Ok(Page { after, limit: i64::from(limit), offset: i64::from(self.offset.unwrap_or(0)) })
    }
}

impl Page {
    /// Fetch one more than the limit; this trims the extra item and returns the next cursor.
    pub fn finish<T>(&self, mut items: Vec<T>, sort_key: impl Fn(&T) -> &str) -> (Vec<T>, Option<String>) {
        if items.len() as i64 > self.limit {
            items.truncate(self.limit as usize);
            let next = items.last().map(|i| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sort_key(i)));
            (items, next)
        } else {
            (items, None)
        }
    }

    /// The LIMIT to pass to SQL (one extra row tells whether there is a next page).
    pub fn fetch_limit(&self) -> i64 {
        self.limit + 1
    }
}

/// Whether an identifier from a path is a UUID (then it is looked up as an id first).
pub fn as_uuid(ident: &str) -> Option<String> {
    uuid::Uuid::from_str(ident).ok().map(|u| u.to_string())
}
