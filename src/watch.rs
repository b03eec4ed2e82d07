//! Watching the deployment file: which file-system events mean "read it again", and when the
//! file is complete enough to read.
//!
//! A save that is complete when it becomes visible is read at once: a rename into place (how
//! editors and `kubectl` save), a ConfigMap `..data` symlink swap, a file created under the
//! name, or the writer closing the file after an in-place write. A write that is still going on
//! (data written, file not closed yet) is waited for: until the writer closes it, or until
//! [`QUIET`] passes without another write (writers that keep the file open), at most
//! [`MAX_WAIT`]. Events about other files never delay a reload.
//!
//! The file's *directory* is watched, not the file: editors that write a temporary file and
//! rename it over the original, and Kubernetes ConfigMaps that swap a `..data` symlink, replace
//! the inode a file watch would follow. This module does not read or parse the file; the caller
//! does, and reloads only when the content changed.
//!
//! The waiting runs in a task of its own that reports complete changes on a channel, so
//! [`FileWatcher::changed`] is cancel-safe: a caller may drop it inside `select!` (another event
//! came first) without losing a write that was being waited for.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};

/// Reads the watched deployment file: only a regular file (a FIFO would block the controller
/// until someone writes to it, a device such as `/dev/zero` never ends), and bounded by
/// [`read_bounded`].
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    read_bounded(file)
}

/// Reads at most [`crate::spec::Limits`]' file size plus one byte, so that validation can say
/// the file is too large without cutover holding all of it. One-shot commands use it on any
/// file, so that `cutover validate <(generate)` and `/dev/stdin` work.
pub fn read_bounded(file: std::fs::File) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let max = crate::spec::Limits::current().file_bytes as u64;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads each PEM file a deployment file at `file` names (relative paths from its directory),
/// regular files only and at most [`crate::spec::PEM_FILE_BYTES`] and one byte each; what
/// each read gave, for [`crate::spec::load_pem_files`] to check.
pub fn read_pem_files(
    file: &Path,
    paths: &std::collections::BTreeSet<String>,
) -> crate::spec::PemRead {
    use std::io::Read as _;
    let dir = file.parent().unwrap_or(Path::new(""));
    paths
        .iter()
        .map(|p| {
            let path = dir.join(p);
            let read = || -> std::io::Result<Vec<u8>> {
                let file = std::fs::File::open(&path)?;
                if !file.metadata()?.is_file() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "not a regular file",
                    ));
                }
                let mut bytes = Vec::new();
                let max = crate::spec::PEM_FILE_BYTES as u64;
                file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
                Ok(bytes)
            };
            let result = read().map_err(|e| format!("cannot read {}: {e}", path.display()));
            (p.clone(), result)
        })
        .collect()
}

/// How often the PEM files the deployment file names are read again to see whether they
/// changed (a rotation), besides [`PemWatcher`]'s events: a safety net for changes file events
/// miss (a network file system, a watch that could not be set).
pub const PEM_POLL: Duration = Duration::from_secs(1);

/// Watches the directories of the PEM files a deployment file names, so that a rotation is read
/// within milliseconds of its last write instead of at the next [`PEM_POLL`]. Directories, not
/// files: a rotation renames new files into place, and a Kubernetes Secret volume swaps its
/// `..data` symlink, both of which replace what a file watch would follow. Any change in them is
/// only a reason to read the files again; the caller reloads only if their content changed.
pub struct PemWatcher {
    watcher: RecommendedWatcher,
    /// The files last asked for, and the directories watched for them.
    paths: std::collections::BTreeSet<String>,
    dirs: std::collections::BTreeSet<PathBuf>,
    changes: mpsc::Receiver<()>,
}

impl PemWatcher {
    /// Starts a watcher on no directory; its waiting task runs on the current tokio runtime.
    pub fn new() -> notify::Result<PemWatcher> {
        let (tx, events) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |e| {
            let _ = tx.send(e);
        })?;
        let (changes_tx, changes) = mpsc::channel(1);
        tokio::spawn(wait_for_pem_changes(events, changes_tx));
        Ok(PemWatcher {
            watcher,
            paths: std::collections::BTreeSet::new(),
            dirs: std::collections::BTreeSet::new(),
            changes,
        })
    }

    /// Watches the directories of `paths` (as the deployment file at `file` names them, in
    /// order, without repeats) and no other. A directory that cannot be watched is left to the poll, with a warning.
    pub fn watch<'a>(&mut self, file: &Path, paths: impl Iterator<Item = &'a String> + Clone) {
        // Called after every event of the controller: nothing to do (nor to allocate) unless
        // the set of files changed.
        if paths.clone().eq(self.paths.iter()) {
            return;
        }
        self.paths = paths.cloned().collect();
        let base = file.parent().unwrap_or(Path::new(""));
        let dirs: std::collections::BTreeSet<PathBuf> = self
            .paths
            .iter()
            .filter_map(|p| base.join(p).parent().map(Path::to_path_buf))
            .map(|d| {
                if d.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    d
                }
            })
            .collect();
        for gone in self.dirs.difference(&dirs) {
            let _ = self.watcher.unwatch(gone);
        }
        let mut watched = std::collections::BTreeSet::new();
        for dir in dirs {
            if self.dirs.contains(&dir) {
                watched.insert(dir);
                continue;
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir);
                }
                Err(err) => tracing::warn!(
                    dir = %dir.display(), %err,
                    "cannot watch a certificate directory; its files are read every second instead"
                ),
            }
        }
        self.dirs = watched;
    }

    /// Waits until something changed in a watched directory and then stayed quiet for
    /// [`QUIET`] (a rotation writes the certificate and the key one after the other), at most
    /// [`MAX_WAIT`] after the first change. Cancel-safe.
    pub async fn changed(&mut self) {
        if self.changes.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

/// Whether an event may mean new content: anything but a read (cutover reading the files).
fn is_write(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

async fn wait_for_pem_changes(
    mut events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    changes: mpsc::Sender<()>,
) {
    loop {
        // An error (an overflowed queue) may hide a change: read the files to be sure.
        loop {
            match events.recv().await {
                None => return,
                Some(Ok(e)) if !is_write(&e) => {}
                Some(_) => break,
            }
        }
        let deadline = Instant::now() + MAX_WAIT;
        let mut quiet_until = (Instant::now() + QUIET).min(deadline);
        loop {
            match timeout_at(quiet_until, events.recv()).await {
                Err(_elapsed) => break,
                Ok(None) => return,
                Ok(Some(Ok(e))) if !is_write(&e) => {}
                Ok(Some(_)) => quiet_until = (Instant::now() + QUIET).min(deadline),
            }
        }
        // Full: a change is already waiting to be taken, and the files will be read then.
        if let Err(mpsc::error::TrySendError::Closed(())) = changes.try_send(()) {
            return;
        }
    }
}

/// After an in-place write that is not closed: quiet time before the file is read anyway (a
/// writer that keeps the file open). Complete saves do not wait for it.
pub const QUIET: Duration = Duration::from_millis(50);
/// Upper bound on the wait while writes keep arriving (a file being written in many steps).
pub const MAX_WAIT: Duration = Duration::from_millis(500);

/// What an event says about the watched file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Not about the file (or only a read).
    None,
    /// The file is being written in place: more may follow.
    Partial,
    /// A new complete version is visible: renamed or created into place, a symlink swapped, or
    /// a write finished (the writer closed the file).
    Complete,
}

/// Classifies one event in the watched directory for the file named `file_name`.
pub fn classify(event: &notify::Event, file_name: &OsStr) -> Change {
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    let names = || event.paths.iter().filter_map(|p| p.file_name());
    let the_file = names().any(|name| name == file_name);
    // A ConfigMap volume's `..data` symlink and its timestamped directories.
    let config_map = names().any(|name| name.as_encoded_bytes().starts_with(b".."));
    if !the_file && !config_map {
        return Change::None;
    }
    match event.kind {
        // A file created under the name is written next; its close completes it. A ConfigMap's
        // entries appear complete.
        EventKind::Create(_) if the_file => Change::Partial,
        EventKind::Create(_)
        | EventKind::Modify(ModifyKind::Name(_))
        | EventKind::Access(AccessKind::Close(AccessMode::Write)) => Change::Complete,
        EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any | EventKind::Other => {
            Change::Partial
        }
        EventKind::Access(_) => Change::None,
    }
}

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

/// Watches one file through its directory.
#[derive(Debug)]
pub struct FileWatcher {
    // Dropping the watcher stops it (and so the task, whose event channel closes).
    _watcher: RecommendedWatcher,
    changes: mpsc::Receiver<Result<Instant, WatchError>>,
}

impl FileWatcher {
    /// Starts watching; the waiting task runs on the current tokio runtime.
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
        // One change waiting to be taken is enough: the caller reads the file as it is then.
        let (changes_tx, changes) = mpsc::channel(1);
        tokio::spawn(wait_for_changes(events, file_name, changes_tx));
        Ok(FileWatcher {
            _watcher: watcher,
            changes,
        })
    }

    /// Waits until the file may have a new complete content (see the module docs). Returns
    /// when the first event of that change arrived (for save-to-ACK latency). Cancel-safe.
    pub async fn changed(&mut self) -> Result<Instant, WatchError> {
        self.changes.recv().await.unwrap_or(Err(WatchError::Closed))
    }
}

async fn wait_for_changes(
    mut events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    file_name: OsString,
    changes: mpsc::Sender<Result<Instant, WatchError>>,
) {
    loop {
        let change = next_change(&mut events, &file_name).await;
        let closed = change.is_err();
        match changes.try_send(change) {
            // Full: a change is already waiting to be taken, and the file will be read then.
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
        if closed {
            return;
        }
    }
}

async fn next_change(
    events: &mut mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    file_name: &OsStr,
) -> Result<Instant, WatchError> {
    let first = loop {
        match events.recv().await {
            None => return Err(WatchError::Closed),
            Some(Ok(e)) => match classify(&e, file_name) {
                Change::None => {}
                Change::Complete => return Ok(Instant::now()),
                Change::Partial => break Instant::now(),
            },
            Some(Err(err)) => {
                // An overflowed queue may have hidden a change: read the file to be sure.
                tracing::warn!(%err, "file watcher error; reloading to be safe");
                return Ok(Instant::now());
            }
        }
    };
    let deadline = first + MAX_WAIT;
    let mut quiet_until = (Instant::now() + QUIET).min(deadline);
    loop {
        match timeout_at(quiet_until, events.recv()).await {
            Err(_elapsed) => return Ok(first),
            Ok(None) => return Err(WatchError::Closed),
            Ok(Some(Ok(e))) => match classify(&e, file_name) {
                Change::None => {}
                Change::Complete => return Ok(first),
                Change::Partial => quiet_until = (Instant::now() + QUIET).min(deadline),
            },
            Ok(Some(Err(_))) => return Ok(first),
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
    fn classifies_events() {
        use notify::event::AccessMode;
        let name = OsStr::new("deploy.yaml");
        let c = |kind, path| classify(&event(kind, path), name);
        let data = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        // In place: partial until the writer closes the file.
        assert_eq!(c(data, "/etc/cutover/deploy.yaml"), Change::Partial);
        assert_eq!(c(closed, "/etc/cutover/deploy.yaml"), Change::Complete);
        // Renamed into place, or a ConfigMap swap: complete at once. Created: written next.
        assert_eq!(c(renamed, "/d/deploy.yaml"), Change::Complete);
        assert_eq!(
            c(EventKind::Create(CreateKind::File), "/d/deploy.yaml"),
            Change::Partial
        );
        assert_eq!(c(renamed, "/d/..data"), Change::Complete);
        assert_eq!(
            c(
                EventKind::Create(CreateKind::Folder),
                "/d/..2026_11_22_01_02_03.123"
            ),
            Change::Complete
        );
        assert_eq!(
            c(
                EventKind::Remove(notify::event::RemoveKind::File),
                "/d/deploy.yaml"
            ),
            Change::Partial
        );
        // Other files, and reads, are not changes.
        assert_eq!(c(data, "/d/other.yaml"), Change::None);
        assert_eq!(c(closed, "/d/.deploy.yaml.swp"), Change::None);
        assert_eq!(
            c(EventKind::Access(AccessKind::Any), "/d/deploy.yaml"),
            Change::None
        );
        assert_eq!(
            c(
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                "/d/deploy.yaml"
            ),
            Change::None
        );
    }

    #[test]
    fn only_a_regular_file_is_read_and_at_most_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("deploy.yaml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // Opening a FIFO for reading blocks until a writer comes: open it non-blocking first is
        // not portable, so a writer is made to exist; what matters is that it is refused.
        let writer = std::thread::spawn({
            let fifo = fifo.clone();
            move || drop(std::fs::OpenOptions::new().write(true).open(fifo))
        });
        let err = read_file(&fifo).unwrap_err();
        assert_eq!(err.to_string(), "not a regular file");
        writer.join().unwrap();
        assert_eq!(
            read_file(Path::new("/dev/zero")).unwrap_err().to_string(),
            "not a regular file"
        );
        let big = dir.path().join("big.yaml");
        let limit = crate::spec::Limits::current().file_bytes;
        std::fs::write(&big, vec![b'#'; limit + 100]).unwrap();
        assert_eq!(read_file(&big).unwrap().len(), limit + 1);
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

    /// Whether `w` sees a change within `within`.
    async fn changed(w: &mut PemWatcher, within: Duration) -> bool {
        tokio::time::timeout(within, w.changed()).await.is_ok()
    }

    /// A rotation (new files renamed into place, as cert-manager and a Secret volume do) in a
    /// watched directory is seen, once both files are written; reading the files is not a
    /// change; a directory no longer named is no longer watched.
    #[tokio::test]
    async fn the_pem_watcher_sees_a_rotation_and_not_a_read() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let file = dir.path().join("deploy.yaml");
        std::fs::write(dir.path().join("certs.pem"), "a").unwrap();
        std::fs::write(other.path().join("ca.pem"), "a").unwrap();
        let mut w = PemWatcher::new().unwrap();
        let names = |paths: &[&str]| -> std::collections::BTreeSet<String> {
            paths.iter().map(|p| (*p).to_owned()).collect()
        };
        let ca = other.path().join("ca.pem").display().to_string();
        w.watch(&file, names(&["certs.pem", &ca]).iter());

        let _ = std::fs::read(dir.path().join("certs.pem")).unwrap();
        assert!(!changed(&mut w, Duration::from_millis(300)).await, "a read");

        for (name, text) in [("key.pem", "k2"), ("certs.pem", "c2")] {
            let tmp = dir.path().join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, dir.path().join(name)).unwrap();
        }
        let rotated = Instant::now();
        assert!(changed(&mut w, Duration::from_secs(5)).await, "a rotation");
        eprintln!("rotation seen {:?} after its last write", rotated.elapsed());
        // One change for both files (they came within QUIET of each other).
        assert!(!changed(&mut w, Duration::from_millis(300)).await);

        std::fs::write(other.path().join("ca.pem"), "b").unwrap();
        assert!(
            changed(&mut w, Duration::from_secs(5)).await,
            "the CA's directory"
        );
        w.watch(&file, names(&["certs.pem"]).iter());
        std::fs::write(other.path().join("ca.pem"), "c").unwrap();
        assert!(
            !changed(&mut w, Duration::from_millis(300)).await,
            "a directory no longer named"
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
    async fn an_in_place_write_in_several_steps_is_read_when_closed() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deploy.yaml");
        std::fs::write(&file, "old").unwrap();
        let mut w = FileWatcher::new(&file).unwrap();
        let writer = std::thread::spawn({
            let file = file.clone();
            move || {
                let mut f = std::fs::File::create(&file).unwrap();
                f.write_all(b"first half, ").unwrap();
                std::thread::sleep(Duration::from_millis(20));
                f.write_all(b"second half").unwrap();
                // Closed here.
            }
        });
        expect_change(&mut w).await;
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "first half, second half"
        );
        writer.join().unwrap();
    }

    #[tokio::test]
    async fn a_complete_save_is_seen_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deploy.yaml");
        std::fs::write(&file, "a").unwrap();
        let mut w = FileWatcher::new(&file).unwrap();
        let tmp = dir.path().join(".deploy.yaml.tmp");
        std::fs::write(&tmp, "b").unwrap();
        let saved = Instant::now();
        std::fs::rename(&tmp, &file).unwrap();
        expect_change(&mut w).await;
        assert!(
            saved.elapsed() < QUIET,
            "a rename is complete: no debounce ({:?})",
            saved.elapsed()
        );
    }

    /// The caller waits for the file inside `select!` with other events (deadlines, ACKs): one
    /// of those firing while an unfinished write is being waited for must not lose the write.
    #[tokio::test]
    async fn a_write_waited_for_survives_the_caller_giving_up_on_changed() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deploy.yaml");
        std::fs::write(&file, "old").unwrap();
        let mut w = FileWatcher::new(&file).unwrap();
        // A writer that keeps the file open: only the quiet period completes the change.
        let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all(b"new").unwrap();
        let started = Instant::now();
        let mut seen = false;
        while started.elapsed() < Duration::from_secs(5) {
            tokio::select! {
                r = w.changed() => { r.unwrap(); seen = true; break; }
                // Something else wakes the caller every 10 ms, well inside the quiet period.
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        assert!(seen, "the in-place write was lost");
        drop(f);
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
