//! Watching the deployment file: which file-system events mean "read it again", and a short
//! debounce so that one save is one reload.
//!
//! The file's *directory* is watched, not the file: editors that write a temporary file and
//! rename it over the original, and Kubernetes ConfigMaps that swap a `..data` symlink, replace
//! the inode a file watch would follow. This module does not read or parse the file; the caller
//! does, and reloads only when the content changed.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};

/// Quiet time after the last relevant event before the file is read. Editors finish a save in a
/// few syscalls well within this.
pub const QUIET: Duration = Duration::from_millis(5);
/// Upper bound on the wait while events keep arriving (a file being written in many steps).
pub const MAX_WAIT: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {dir}: {source}; check that the directory exists and is readable")]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("the file watcher stopped")]
    Closed,
}

/// Whether an event in the watched directory may have changed the file named `file_name`.
///
/// Reads are ignored; any creation, modification, rename or removal of the file itself, or of a
/// `..`-prefixed entry (the ConfigMap `..data` symlink and its timestamped directories), counts.
pub fn is_relevant(event: &notify::Event, file_name: &OsStr) -> bool {
    let kind_matters = matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
    );
    kind_matters
        && event.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|name| name == file_name || name.as_encoded_bytes().starts_with(b".."))
        })
}

/// Watches one file through its directory.
#[derive(Debug)]
pub struct FileWatcher {
    // Dropping the watcher stops it.
    _watcher: RecommendedWatcher,
    events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    file_name: OsString,
}

impl FileWatcher {
    pub fn new(path: &Path) -> Result<FileWatcher, WatchError> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = path.file_name().map(OsStr::to_owned).unwrap_or_default();
        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |e| {
            let _ = tx.send(e);
        })
        .map_err(|source| WatchError::Watch {
            dir: dir.clone(),
            source,
        })?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Watch {
                dir: dir.clone(),
                source,
            })?;
        Ok(FileWatcher {
            _watcher: watcher,
            events,
            file_name,
        })
    }

    /// Waits for a relevant event, then until events have been quiet for [`QUIET`] (at most
    /// [`MAX_WAIT`]). Returns when the first event arrived (for save-to-ACK latency).
    pub async fn changed(&mut self) -> Result<Instant, WatchError> {
        let first = loop {
            match self.events.recv().await {
                None => return Err(WatchError::Closed),
                Some(Ok(e)) if is_relevant(&e, &self.file_name) => break Instant::now(),
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    // An overflowed queue may have hidden a change: read the file to be sure.
                    tracing::warn!(%err, "file watcher error; reloading to be safe");
                    break Instant::now();
                }
            }
        };
        let deadline = Instant::now() + MAX_WAIT;
        loop {
            let quiet_until = (Instant::now() + QUIET).min(deadline);
            match timeout_at(quiet_until, self.events.recv()).await {
                Err(_elapsed) => return Ok(first),
                Ok(None) => return Err(WatchError::Closed),
                Ok(Some(_)) if Instant::now() >= deadline => return Ok(first),
                Ok(Some(_)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, CreateKind, DataChange, ModifyKind, RenameMode};

    use super::*;

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn relevant_events() {
        let name = OsStr::new("deploy.yaml");
        let data = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert!(is_relevant(&event(data, "/etc/cutover/deploy.yaml"), name));
        assert!(is_relevant(
            &event(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "/d/deploy.yaml"
            ),
            name
        ));
        assert!(is_relevant(
            &event(EventKind::Create(CreateKind::File), "/d/..data"),
            name
        ));
        assert!(is_relevant(
            &event(
                EventKind::Create(CreateKind::Folder),
                "/d/..2026_11_22_01_02_03.123"
            ),
            name
        ));
        assert!(!is_relevant(&event(data, "/d/other.yaml"), name));
        assert!(!is_relevant(&event(data, "/d/.deploy.yaml.swp"), name));
        assert!(!is_relevant(
            &event(EventKind::Access(AccessKind::Any), "/d/deploy.yaml"),
            name
        ));
    }

    async fn expect_change(w: &mut FileWatcher) {
        tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .expect("a change within 5 s")
            .expect("watcher alive");
    }

    async fn expect_quiet(w: &mut FileWatcher) {
        assert!(
            tokio::time::timeout(Duration::from_millis(200), w.changed())
                .await
                .is_err(),
            "no change expected"
        );
    }

    #[tokio::test]
    async fn sees_rename_in_place_write_and_symlink_swap() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deploy.yaml");
        std::fs::write(&file, "a").unwrap();
        let mut w = FileWatcher::new(&file).unwrap();

        // An unrelated file in the same directory is not a change.
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        expect_quiet(&mut w).await;

        // Write-then-rename, as editors save.
        let tmp = dir.path().join(".deploy.yaml.tmp");
        std::fs::write(&tmp, "b").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        expect_change(&mut w).await;

        // In-place write.
        std::fs::write(&file, "c").unwrap();
        expect_change(&mut w).await;
    }

    #[tokio::test]
    async fn sees_configmap_symlink_swap() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/deploy.yaml"), "a").unwrap();
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/deploy.yaml", d.join("deploy.yaml")).unwrap();
        let mut w = FileWatcher::new(&d.join("deploy.yaml")).unwrap();

        // How the kubelet updates a ConfigMap volume.
        std::fs::create_dir(d.join("..v2")).unwrap();
        std::fs::write(d.join("..v2/deploy.yaml"), "b").unwrap();
        std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        expect_change(&mut w).await;
        assert_eq!(std::fs::read_to_string(d.join("deploy.yaml")).unwrap(), "b");
    }
}
