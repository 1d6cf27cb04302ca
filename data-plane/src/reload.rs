//! Hot reload: watch the snapshot file, validate a new version fully, then swap it in.
//!
//! The directory is watched, not the file: the control plane (like most editors) replaces the file
//! by renaming a temporary one over it, which a watch on the old inode would miss. A slow poll of the
//! file's metadata backs the watcher up on file systems that deliver no events (some network and
//! container mounts).
//!
//! Each version of the file (its modification time, size and inode) is read once: reading the file
//! is itself a watched event (an open), and an invalid file left in place is reported and counted
//! once, not on every event, until it changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use shared::snapshot::Snapshot;
use tokio::sync::mpsc;

use crate::catalog::Catalog;
use crate::state::Gateway;

/// Events arrive in bursts (create, modify, rename); wait this long for the burst to end.
const SETTLE: Duration = Duration::from_millis(15);
const POLL: Duration = Duration::from_secs(2);

/// Loads the snapshot if it exists. A missing file is not an error: the gateway serves nothing
/// (every key is refused, `/readyz` says not ready) until the control plane publishes one.
pub async fn load(gateway: &Gateway, path: &Path) {
    match read(path).await {
        Ok(Some(catalog)) => install(gateway, catalog),
        Ok(None) => {
            tracing::warn!(path = %path.display(), "no snapshot yet; waiting for the control plane to publish one")
        }
        Err(reason) => {
            tracing::error!(path = %path.display(), %reason, "snapshot refused");
            gateway.record_reload_failure(reason);
        }
    }
}

async fn read(path: &Path) -> Result<Option<Catalog>, String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || match std::fs::read(&path) {
        Ok(bytes) => Snapshot::from_json(&bytes).map(|s| Some(Catalog::build(s))).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    })
    .await
    .map_err(|e| e.to_string())?
}

fn install(gateway: &Gateway, catalog: Catalog) {
    if let Err(e) = gateway.install(catalog) {
        tracing::warn!(reason = %e, "snapshot refused");
        gateway.record_reload_failure(e.to_string());
    }
}

/// Watches `path` until the process ends, reloading on every change.
pub async fn watch(gateway: Arc<Gateway>, path: PathBuf) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let file_name = path.file_name().map(|n| n.to_os_string());
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).map(Path::to_path_buf).unwrap_or_else(|| ".".into());

    let poke = tx.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, notify::EventKind::Access(_))
            && event.paths.iter().any(|p| p.file_name().map(|n| n.to_os_string()) == file_name)
        {
            let _ = poke.send(());
        }
    });
    let _watcher = match watcher {
        Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the snapshot directory; polling only");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "file watching unavailable; polling only");
            None
        }
    };

    // Anything published between the initial load and the watch starting would be missed: look once.
    let _ = tx.send(());
    let poll_path = path.clone();
    tokio::spawn(async move {
        let mut last = stamp(&poll_path);
        loop {
            tokio::time::sleep(POLL).await;
            let now = stamp(&poll_path);
            if now != last {
                last = now;
                if tx.send(()).is_err() {
                    return;
                }
            }
        }
    });

    let mut handled = None;
    while rx.recv().await.is_some() {
        tokio::time::sleep(SETTLE).await;
        while rx.try_recv().is_ok() {}
        let version = stamp(&path);
        if version.is_some() && version == handled {
            continue;
        }
        handled = version;
        match read(&path).await {
            Ok(Some(catalog)) => install(&gateway, catalog),
            Ok(None) => {}
            Err(reason) => {
                tracing::error!(path = %path.display(), %reason, "new snapshot is invalid; still serving the last good one");
                gateway.record_reload_failure(reason);
            }
        }
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some((meta.modified().ok()?, meta.len(), inode))
}
