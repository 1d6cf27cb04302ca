//! Atomic snapshot file I/O: write to a temporary file in the same directory, fsync, rename over the
//! target, fsync the directory. A reader sees the old file or the new one, never a half-written one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::snapshot::{Snapshot, SnapshotError};

/// Writes `snapshot` to `path` atomically with mode 0600.
pub fn write(path: &Path, snapshot: &Snapshot) -> Result<(), SnapshotError> {
    let bytes = serde_json::to_vec_pretty(snapshot)?;
    write_bytes(path, &bytes)
}

/// Atomically replaces `path` with `bytes` (mode 0600), creating the parent directory if needed.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("snapshot.json");
    let tmp = dir.join(format!(".{file_name}.{}.tmp", hex::encode(rand::random::<[u8; 8]>())));
    let result = (|| {
        let mut f = create_private(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // Persist the rename itself; not all platforms allow opening a directory, so best effort.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok::<_, std::io::Error>(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    Ok(result?)
}

/// Reads and fully validates the snapshot at `path`.
pub fn read(path: &Path) -> Result<Snapshot, SnapshotError> {
    Snapshot::from_json(&fs::read(path)?)
}

#[cfg(unix)]
fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests::sample;

    #[test]
    fn write_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/snapshot.json");
        let snap = sample();
        write(&path, &snap).unwrap();
        assert_eq!(read(&path).unwrap(), snap);
        // No temporary files left behind.
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.json");
        write(&path, &sample()).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn concurrent_readers_never_see_a_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.json");
        let mut snap = sample();
        write(&path, &snap).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    read(&path).expect("reader saw an invalid snapshot");
                    reads += 1;
                }
                reads
            })
        };
        for rev in 0..200 {
            snap.revision = rev;
            write(&path, &snap).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    }

    #[test]
    fn invalid_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.json");
        fs::write(&path, b"{").unwrap();
        assert!(read(&path).is_err());
        assert!(read(&dir.path().join("missing.json")).is_err());
    }
}
