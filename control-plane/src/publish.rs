//! Snapshot publishing: after every committed change (here, or through another instance of the same
//! database), read the whole configuration in one consistent read transaction, keep it in memory for
//! data planes that pull it over the network, and write it atomically to the snapshot file. Bursts
//! coalesce (the task always publishes the latest revision); a failed write is retried and reported
//! in the status.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use shared::pins::ToolPin;
use shared::snapshot::{
    FORMAT_VERSION, Snapshot, SnapshotApiKey, SnapshotConfig, SnapshotProject, SnapshotSettings, SnapshotUser,
    ToolNaming,
};
use sqlx::AnyConnection;
use tokio::sync::watch;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::secrets::SecretBox;
use crate::store::{Store, current_revision, opt_time};

/// What the last publish did.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct PublishStatus {
    /// Revision of the snapshot on disk (null before the first publish).
    pub revision: Option<u64>,
    /// Latest committed revision in the database.
    pub db_revision: u64,
    /// SHA-256 (hex) of the snapshot file's bytes.
    pub sha256: Option<String>,
    pub path: String,
    pub published_at: Option<DateTime<Utc>>,
    /// The last publish failure, cleared by the next success.
    pub last_error: Option<String>,
    /// Whether the file on disk holds the latest committed revision.
    pub up_to_date: bool,
}

pub struct Publisher {
    path: PathBuf,
    /// Installation-wide settings every snapshot carries.
    settings: SnapshotSettings,
    status: Mutex<PublishStatus>,
    /// The newest snapshot built, as the bytes of the file (served to data planes).
    latest: watch::Sender<Option<Arc<Built>>>,
}

/// One built snapshot.
pub struct Built {
    pub revision: u64,
    pub bytes: Vec<u8>,
}

impl Publisher {
    pub fn new(path: PathBuf, settings: SnapshotSettings) -> Arc<Self> {
        let status = PublishStatus { path: path.display().to_string(), ..Default::default() };
        let (latest, _) = watch::channel(None);
        Arc::new(Self { path, settings, status: Mutex::new(status), latest })
    }

    /// Follows the newest built snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Built>>> {
        self.latest.subscribe()
    }

    /// Where the snapshot is published.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn status(&self, db_revision: u64) -> PublishStatus {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        s.db_revision = db_revision;
        s.up_to_date = s.revision == Some(db_revision);
        s
    }

    /// Publishes once now (covering a crash between commit and publish), then after every commit.
    pub fn spawn(self: &Arc<Self>, store: Arc<Store>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut committed = store.subscribe();
            loop {
                committed.mark_unchanged();
                let ok = this.publish_once(&store).await;
                if ok {
                    if committed.changed().await.is_err() {
                        return;
                    }
                } else {
                    // Retry failed publishes, sooner if another change arrives.
                    let _ = tokio::time::timeout(Duration::from_millis(500), committed.changed()).await;
                }
            }
        })
    }

    async fn publish_once(&self, store: &Store) -> bool {
        let span = crate::telemetry::Publishing::start();
        let result = async {
            let mut tx = store.begin_consistent_read().await?;
            let snapshot = build(&mut tx, &store.secrets, &self.settings).await?;
            tx.rollback().await?;
            snapshot.validate()?;
            let built = Arc::new(Built { revision: snapshot.revision, bytes: serde_json::to_vec_pretty(&snapshot)? });
            self.latest.send_replace(Some(built.clone()));
            let path = self.path.clone();
            let written = built.clone();
            tokio::task::spawn_blocking(move || shared::snapshot_file::write_bytes(&path, &written.bytes)).await??;
            Ok::<_, anyhow::Error>((snapshot.revision, hex::encode(Sha256::digest(&built.bytes))))
        }
        .await;
        span.end(result.as_ref().map(|(revision, _)| *revision));
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok((revision, sha)) => {
                tracing::info!(revision, path = %self.path.display(), "snapshot published");
                status.revision = Some(revision);
                status.sha256 = Some(sha);
                status.published_at = Some(Utc::now());
                status.last_error = None;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), "snapshot publish failed; will retry");
                status.last_error = Some(e.to_string());
                false
            }
        }
    }
}

/// Reads the whole configuration (call inside one transaction for a consistent view).
pub async fn build(
    conn: &mut AnyConnection,
    secrets: &SecretBox,
    settings: &SnapshotSettings,
) -> anyhow::Result<Snapshot> {
    let revision = current_revision(&mut *conn).await?;
    let uuid = |s: &str| Uuid::parse_str(s).map_err(|e| anyhow::anyhow!("stored id `{s}` is not a UUID: {e}"));

    let users: Vec<(String, String)> =
        sqlx::query_as("SELECT id, email FROM users ORDER BY id").fetch_all(&mut *conn).await?;
    let users = users
        .into_iter()
        .map(|(id, email)| Ok(SnapshotUser { id: uuid(&id)?, email }))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let configs: Vec<(String, String, String)> =
        sqlx::query_as("SELECT id, name, tool_naming FROM mcp_configs ORDER BY name").fetch_all(&mut *conn).await?;
    let servers: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT config_id, spec, sealed FROM servers ORDER BY config_id, position")
            .fetch_all(&mut *conn)
            .await?;
    let mut servers_by_config: HashMap<String, Vec<shared::ServerSpec>> = HashMap::new();
    for (config_id, spec, sealed) in servers {
        servers_by_config.entry(config_id).or_default().push(secrets.open_spec(&spec, sealed.as_deref())?);
    }
    let mut tokens_by_config = crate::upstream_oauth::issued_tokens(&mut *conn, secrets).await?;
    let pins: Vec<(String, String, String, String)> =
        sqlx::query_as("SELECT config_id, server, tool, fingerprint FROM tool_pins ORDER BY config_id, server, tool")
            .fetch_all(&mut *conn)
            .await?;
    let mut pins_by_config: HashMap<String, Vec<ToolPin>> = HashMap::new();
    for (config_id, server, tool, fingerprint) in pins {
        pins_by_config.entry(config_id).or_default().push(ToolPin { server, tool, fingerprint });
    }
    let mut mcp_configs = Vec::with_capacity(configs.len());
    for (id, name, naming) in configs {
        let specs = servers_by_config.remove(&id).unwrap_or_default();
        let tool_naming = if naming == "bare" { ToolNaming::Bare } else { ToolNaming::Prefixed };
        let mut pins = pins_by_config.remove(&id).unwrap_or_default();
        pins.retain(|p| specs.iter().any(|s| s.server_name == p.server));
        let oauth_tokens = tokens_by_config.remove(&id).unwrap_or_default();
        mcp_configs.push(SnapshotConfig { id: uuid(&id)?, name, tool_naming, servers: specs, pins, oauth_tokens });
    }

    let projects: Vec<(String, String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT id, name, mcp_config_id, rate_limit FROM projects ORDER BY name")
            .fetch_all(&mut *conn)
            .await?;
    let members: Vec<(String, String)> =
        sqlx::query_as("SELECT project_id, user_id FROM project_members ORDER BY project_id, user_id")
            .fetch_all(&mut *conn)
            .await?;
    let mut members_by_project: HashMap<String, Vec<Uuid>> = HashMap::new();
    for (project_id, user_id) in members {
        members_by_project.entry(project_id).or_default().push(uuid(&user_id)?);
    }
    let groups: Vec<(String, String)> =
        sqlx::query_as("SELECT project_id, group_name FROM project_oauth_groups ORDER BY project_id, group_name")
            .fetch_all(&mut *conn)
            .await?;
    let mut groups_by_project: HashMap<String, Vec<String>> = HashMap::new();
    for (project_id, group) in groups {
        groups_by_project.entry(project_id).or_default().push(group);
    }
    let mut snapshot_projects = Vec::with_capacity(projects.len());
    for (id, name, config, rate_limit) in projects {
        let project_members = members_by_project.remove(&id).unwrap_or_default();
        snapshot_projects.push(SnapshotProject {
            id: uuid(&id)?,
            name,
            mcp_config_id: config.as_deref().map(uuid).transpose()?,
            members: project_members,
            rate_limit: stored_limit(rate_limit.as_deref(), "project", &id)?,
            oauth_groups: groups_by_project.remove(&id).unwrap_or_default(),
        });
    }

    #[derive(sqlx::FromRow)]
    struct KeyRow {
        id: String,
        project_id: String,
        user_id: String,
        name: Option<String>,
        hash: String,
        expires_at: Option<String>,
        disabled: i64,
        rate_limit: Option<String>,
    }
    let keys: Vec<KeyRow> = sqlx::query_as(
        "SELECT id, project_id, user_id, name, hash, expires_at, disabled, rate_limit FROM api_keys ORDER BY id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let api_keys = keys
        .into_iter()
        .map(|k| {
            Ok(SnapshotApiKey {
                rate_limit: stored_limit(k.rate_limit.as_deref(), "API key", &k.id)?,
                expires_at: opt_time(&k.expires_at),
                id: k.id,
                project_id: uuid(&k.project_id)?,
                user_id: uuid(&k.user_id)?,
                name: k.name,
                hash: k.hash,
                disabled: k.disabled != 0,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    Ok(Snapshot {
        format_version: FORMAT_VERSION,
        revision,
        generated_at: Utc::now(),
        projects: snapshot_projects,
        users,
        mcp_configs,
        api_keys,
        settings: settings.clone(),
    })
}

/// A stored limit; an unreadable one fails the publish rather than lift the limit.
fn stored_limit(text: Option<&str>, kind: &str, id: &str) -> anyhow::Result<Option<shared::RateLimit>> {
    crate::rate_limits::from_column(text)
        .map_err(|e| anyhow::anyhow!("stored rate limit of {kind} `{id}` is unreadable: {e}"))
}
