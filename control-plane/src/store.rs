//! Database access shared by every resource: opening the database (SQLite, the embedded default, or
//! PostgreSQL), migrations, the serialized write transaction that bumps the revision and writes the
//! audit row, following revisions committed by other instances, identifier resolution and
//! pagination. Resource-specific SQL lives with its resource; it is written once for both databases
//! (numbered `$N` parameters, integer flags, `lower()` for case-insensitive e-mail).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Transaction};
use tokio::sync::{Mutex, MutexGuard, watch};
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::secrets::SecretBox;

/// Which database engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Where the control plane keeps its state: `MCPGW_DATABASE_URL`, or the SQLite file in the data dir.
#[derive(Debug, Clone)]
pub struct Database {
    url: String,
    pub dialect: Dialect,
    /// The SQLite file, when there is one (its permissions are restricted).
    file: Option<PathBuf>,
}

impl Database {
    /// The embedded default: a SQLite file.
    pub fn sqlite_file(path: &Path) -> Self {
        let encoded: String = url::form_urlencoded::byte_serialize(path.to_string_lossy().as_bytes()).collect();
        // `form_urlencoded` writes spaces as `+`, which SQLite's URL parser would keep literally.
        let encoded = encoded.replace('+', "%20").replace("%2F", "/");
        Database { url: format!("sqlite://{encoded}?mode=rwc"), dialect: Dialect::Sqlite, file: Some(path.into()) }
    }

    /// A `sqlite://` or `postgres://` URL.
    pub fn from_url(url: &str) -> anyhow::Result<Self> {
        let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase()).unwrap_or_default();
        let dialect = match scheme.as_str() {
            "sqlite" => Dialect::Sqlite,
            "postgres" | "postgresql" => Dialect::Postgres,
            _ => {
                anyhow::bail!("MCPGW_DATABASE_URL must start with sqlite:// or postgres:// (got `{}`)", redact_url(url))
            }
        };
        let file = (dialect == Dialect::Sqlite).then(|| {
            let rest = url.split_once(':').map(|(_, r)| r).unwrap_or_default().trim_start_matches("//");
            PathBuf::from(rest.split('?').next().unwrap_or_default())
        });
        Ok(Database { url: url.to_string(), dialect, file })
    }

    /// The URL without its password, for messages.
    pub fn display(&self) -> String {
        redact_url(&self.url)
    }
}

/// `postgres://user:secret@host/db` -> `postgres://user:****@host/db`.
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("****"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Serializes writers across control-plane instances (PostgreSQL advisory lock key, "mcpgw" + 1).
const WRITER_LOCK: i64 = 0x6d63_7067_7701;
/// Channel on which committed revisions are announced to every instance.
const REVISION_CHANNEL: &str = "mcpgw_revision";
/// How long a request waits for a database connection before it is answered 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Store {
    pub pool: AnyPool,
    pub dialect: Dialect,
    database: Database,
    /// One writer at a time in this process (SQLite allows only one, and queuing here beats
    /// "database is locked"); on PostgreSQL an advisory lock extends this to every instance.
    writer: Mutex<()>,
    /// Latest committed revision, here or (PostgreSQL) by another instance; the publisher watches it.
    committed: watch::Sender<u64>,
    /// Encrypts the secrets kept in the database.
    pub secrets: SecretBox,
    /// Audit rows older than this are deleted (`MCPGW_AUDIT_RETENTION_DAYS`); `None` keeps them all.
    audit_retention: Option<chrono::Duration>,
}

/// Who made a change, as the audit log records it.
pub mod actor {
    /// A request with the admin key.
    pub const ADMIN: &str = "admin";
    /// An authorization server's redirect completing an authorization an admin started.
    pub const OAUTH_CALLBACK: &str = "oauth_callback";
    /// The control plane on its own (renewing upstream OAuth tokens).
    pub const CONTROL_PLANE: &str = "control_plane";
}

/// A write transaction. Dropping it without [`WriteTx::commit`] rolls everything back.
pub struct WriteTx<'a> {
    _writer: MutexGuard<'a, ()>,
    pub tx: Transaction<'static, sqlx::Any>,
    store: &'a Store,
}

impl Store {
    pub async fn open(database: Database, secrets: SecretBox) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let options = AnyConnectOptions::from_str(&database.url)
            .map_err(|e| anyhow::anyhow!("MCPGW_DATABASE_URL `{}`: {e}", database.display()))?;
        let dialect = database.dialect;
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // Deleted and overwritten content (old secrets, revoked tokens) is zeroed, not left behind.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                             PRAGMA secure_delete = ON; PRAGMA busy_timeout = 10000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the database {}: {e}", database.display()))?;
        // On PostgreSQL the migrator holds an advisory lock: instances starting together migrate once.
        match dialect {
            Dialect::Sqlite => sqlx::migrate!("../migrations/sqlite").run(&pool).await?,
            Dialect::Postgres => sqlx::migrate!("../migrations/postgres").run(&pool).await?,
        }
        if let Some(file) = &database.file {
            restrict_permissions(file);
        }
        secrets.seal_stored(&pool, dialect).await?;
        let revision = current_revision(&mut *pool.acquire().await?).await?;
        let (committed, _) = watch::channel(revision);
        Ok(Self { pool, dialect, database, writer: Mutex::new(()), committed, secrets, audit_retention: None })
    }

    /// Deletes audit rows older than `days` at every change and every hour.
    pub fn with_audit_retention(mut self, days: Option<u32>) -> Self {
        self.audit_retention = days.map(|d| chrono::Duration::days(i64::from(d)));
        self
    }

    /// The oldest time an audit row may have, when there is a retention.
    fn audit_cutoff(&self) -> Option<String> {
        self.audit_retention.map(|r| format_time(Utc::now() - r))
    }

    /// Deletes the audit rows past the retention every hour (changes also delete them as they commit,
    /// but a control plane nobody changes must not keep them either). Harmless on several instances.
    pub fn spawn_audit_pruner(self: &std::sync::Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        self.audit_retention?;
        let store = self.clone();
        Some(tokio::spawn(async move {
            loop {
                if let Some(cutoff) = store.audit_cutoff() {
                    let deleted =
                        sqlx::query("DELETE FROM audit_log WHERE at < $1").bind(&cutoff).execute(&store.pool).await;
                    match deleted {
                        Ok(r) if r.rows_affected() > 0 => {
                            tracing::info!(rows = r.rows_affected(), "deleted audit rows past the retention")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "could not delete audit rows past the retention"),
                    }
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }))
    }

    pub async fn begin_write(&self) -> Result<WriteTx<'_>, ApiError> {
        let guard = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        if self.dialect == Dialect::Postgres {
            // Held until commit or rollback: writes through any instance happen one after another,
            // so revisions follow commit order without gaps.
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(WRITER_LOCK).execute(&mut *tx).await?;
        }
        Ok(WriteTx { _writer: guard, tx, store: self })
    }

    /// A read-only transaction that sees one consistent state for all its statements.
    pub async fn begin_consistent_read(&self) -> Result<Transaction<'static, sqlx::Any>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        }
        Ok(tx)
    }

    /// Whether this instance may do work that must happen on one instance at a time (`key` names the
    /// work). On PostgreSQL, a session advisory lock held on `held`, a connection of its own: when the
    /// holder dies its connection closes, the lock is released, and another instance takes over at
    /// its next try. On SQLite this process is the only one.
    pub async fn lead(&self, held: &mut Option<AnyConnection>, key: i64) -> bool {
        if self.dialect == Dialect::Sqlite {
            return true;
        }
        if let Some(conn) = held {
            if conn.ping().await.is_ok() {
                return true;
            }
            *held = None;
        }
        let Ok(conn) = self.pool.acquire().await else { return false };
        let mut conn = conn.detach();
        match sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut conn).await {
            Ok(true) => {
                *held = Some(conn);
                true
            }
            _ => false,
        }
    }

    /// The database, without its password.
    pub fn database_display(&self) -> String {
        self.database.display()
    }

    /// Subscribes to committed revisions.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// Records a revision committed here or elsewhere; revisions only move forward.
    fn saw_revision(&self, revision: u64) {
        self.committed.send_if_modified(|current| {
            let newer = revision > *current;
            if newer {
                *current = revision;
            }
            newer
        });
    }

    pub async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, ApiError> {
        Ok(self.pool.acquire().await?)
    }

    /// Whether the database answers now (for the health routes); the error says why not.
    pub async fn ping(&self) -> Result<(), String> {
        let check = async {
            let mut conn = self.pool.acquire().await?;
            conn.ping().await
        };
        match tokio::time::timeout(ACQUIRE_TIMEOUT, check).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} s", ACQUIRE_TIMEOUT.as_secs())),
        }
    }

    /// Follows revisions committed through other instances of the same PostgreSQL database: a
    /// notification on commit, and a slow poll that covers a lost notification connection. On
    /// SQLite this process is the only writer and there is nothing to follow.
    pub fn spawn_follower(self: &std::sync::Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        if self.dialect != Dialect::Postgres {
            return None;
        }
        let store = self.clone();
        Some(tokio::spawn(async move {
            let poll = {
                let store = store.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        if let Ok(mut conn) = store.pool.acquire().await
                            && let Ok(revision) = current_revision(&mut conn).await
                        {
                            store.saw_revision(revision);
                        }
                    }
                })
            };
            let _poll = AbortOnDrop(poll);
            loop {
                if let Err(e) = store.listen().await {
                    tracing::warn!(error = %e, "lost the revision notifications of other instances; reconnecting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }))
    }

    async fn listen(&self) -> Result<(), sqlx::Error> {
        let mut listener = sqlx::postgres::PgListener::connect(&self.database.url).await?;
        listener.listen(REVISION_CHANNEL).await?;
        // Anything committed while not listening.
        self.saw_revision(current_revision(&mut *self.pool.acquire().await?).await?);
        loop {
            let note = listener.recv().await?;
            if let Ok(revision) = note.payload().parse() {
                self.saw_revision(revision);
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl WriteTx<'_> {
    /// Commits state the snapshot does not carry (no revision, nothing to publish).
    pub async fn commit_unpublished(self) -> Result<(), ApiError> {
        self.tx.commit().await?;
        Ok(())
    }

    /// [`WriteTx::commit_by`] for a change made with the admin key.
    pub async fn commit(self, action: &str, resource: &str, resource_id: &str) -> Result<u64, ApiError> {
        self.commit_by(actor::ADMIN, action, resource, resource_id).await
    }

    /// Bumps the revision, records the audit row (deleting rows past the retention), commits, and
    /// tells the publisher (and, on PostgreSQL, every other instance).
    pub async fn commit_by(
        mut self,
        actor: &str,
        action: &str,
        resource: &str,
        resource_id: &str,
    ) -> Result<u64, ApiError> {
        let revision: i64 = sqlx::query_scalar(
            "UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT) WHERE key = 'revision' RETURNING CAST(value AS BIGINT)",
        )
        .fetch_one(&mut *self.tx)
        .await?;
        if let Some(cutoff) = self.store.audit_cutoff() {
            sqlx::query("DELETE FROM audit_log WHERE at < $1").bind(cutoff).execute(&mut *self.tx).await?;
        }
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, resource, resource_id, revision) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(now())
        .bind(actor)
        .bind(action)
        .bind(resource)
        .bind(resource_id)
        .bind(revision)
        .execute(&mut *self.tx)
        .await?;
        if self.store.dialect == Dialect::Postgres {
            // Delivered when (and only if) the transaction commits.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(REVISION_CHANNEL)
                .bind(revision.to_string())
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        crate::telemetry::committed();
        let revision = revision as u64;
        self.store.saw_revision(revision);
        tracing::info!(actor, action, resource, resource_id, revision, "committed");
        Ok(revision)
    }
}

pub async fn current_revision(conn: &mut AnyConnection) -> Result<u64, sqlx::Error> {
    let v: i64 =
        sqlx::query_scalar("SELECT CAST(value AS BIGINT) FROM meta WHERE key = 'revision'").fetch_one(conn).await?;
    Ok(v as u64)
}

pub async fn get_meta(conn: &mut AnyConnection, key: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT value FROM meta WHERE key = $1").bind(key).fetch_optional(conn).await
}

pub async fn set_meta(conn: &mut AnyConnection, key: &str, value: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
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
