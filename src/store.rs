//! The runtime state file: [`RuntimeState`] on disk, so that a restarted cutover keeps serving
//! what was draining or retiring until the original deadlines.
//!
//! Written atomically: a temporary file in the same directory, `fsync`, rename over the state
//! file, `fsync` of the directory, so a crash leaves either the old or the new state, never half
//! of one. The file carries a format number; a file this cutover cannot use (corrupt, or written
//! by a newer release) is reported and set aside, never a reason not to serve.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::reconcile::RuntimeState;

/// The format this release writes and reads.
pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot write the runtime state file {path}: {source}; cutover keeps serving, but a \
         restart will not know what was draining or retiring (make the directory writable or \
         choose another place with --state)"
    )]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What reading the state file found.
#[derive(Debug)]
pub enum Loaded {
    /// No file: the first start.
    Missing,
    Ok(RuntimeState),
    /// A file that cannot be used, with why and where it was moved to.
    Unusable(String),
}

#[derive(Serialize)]
struct OnDiskRef<'a> {
    format: u32,
    written_by: &'static str,
    state: &'a RuntimeState,
}

#[derive(Deserialize)]
struct OnDisk {
    format: u32,
    #[serde(default)]
    state: serde_json::Value,
}

/// The state file at one path.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: PathBuf) -> StateFile {
        StateFile { path }
    }

    /// `<deployment file>.state.json`, next to the deployment file.
    pub fn beside(deployment_file: &Path) -> StateFile {
        let mut name = deployment_file
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".state.json");
        StateFile::new(deployment_file.with_file_name(name))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the state, changing nothing: `Ok(None)` if there is no file.
    pub fn read(&self) -> Result<Option<RuntimeState>, String> {
        let text = match fs::read(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(format!("cannot read it: {err}")),
        };
        parse(&text).map(Some)
    }

    /// Reads the state. A file that cannot be used is moved aside to `<path>.unusable` (so the
    /// next write does not destroy what someone may want to look at) and reported.
    pub fn load(&self) -> Loaded {
        match self.read() {
            Ok(None) => Loaded::Missing,
            Ok(Some(state)) => Loaded::Ok(state),
            Err(reason) if !self.path.exists() => Loaded::Unusable(reason),
            Err(reason) => {
                let aside = self.aside();
                let moved = match fs::rename(&self.path, &aside) {
                    Ok(()) => format!("; moved to {}", aside.display()),
                    Err(_) => String::new(),
                };
                Loaded::Unusable(format!("{reason}{moved}"))
            }
        }
    }

    fn aside(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".unusable");
        PathBuf::from(name)
    }

    /// Writes `state` atomically (see the module docs).
    pub fn save(&self, state: &RuntimeState) -> Result<(), StoreError> {
        let err = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let body = serde_json::to_vec_pretty(&OnDiskRef {
            format: FORMAT,
            written_by: concat!("cutover ", env!("CARGO_PKG_VERSION")),
            state,
        })
        .expect("the runtime state serializes");
        let mut tmp_name = self.path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(&body).map_err(err)?;
        f.write_all(b"\n").map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(err)?;
        // The rename is durable once the directory entry is.
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        Ok(())
    }
}

fn parse(bytes: &[u8]) -> Result<RuntimeState, String> {
    let on_disk: OnDisk =
        serde_json::from_slice(bytes).map_err(|e| format!("it is not a state file: {e}"))?;
    if on_disk.format > FORMAT {
        return Err(format!(
            "it has format {}, written by a newer cutover; this one reads format {FORMAT}",
            on_disk.format
        ));
    }
    serde_json::from_value(on_disk.state).map_err(|e| format!("its state is invalid: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_unusable_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::beside(&dir.path().join("deploy.yaml"));
        assert_eq!(file.path(), dir.path().join("deploy.yaml.state.json"));
        assert!(matches!(file.load(), Loaded::Missing));

        let mut state = RuntimeState::default();
        state.fallbacks.insert(
            crate::ids::FallbackId {
                service: "s".into(),
                version: "v2".into(),
                fallback: "v1".into(),
            },
            crate::reconcile::Timestamp::from_millis(1_800_000_000_000),
        );
        file.save(&state).unwrap();
        let text = fs::read_to_string(file.path()).unwrap();
        assert!(text.contains("\"format\": 1"), "{text}");
        assert!(
            text.contains("\"s/v2~v1\": \"2027-01-15T08:00:00.000Z\""),
            "{text}"
        );
        match file.load() {
            Loaded::Ok(loaded) => assert_eq!(loaded, state),
            other => panic!("{other:?}"),
        }

        for (bad, expected) in [
            ("{ not json", "it is not a state file"),
            (
                "{\"format\": 2, \"state\": {}}",
                "format 2, written by a newer cutover",
            ),
            (
                "{\"format\": 1, \"state\": {\"removed\": 3}}",
                "its state is invalid",
            ),
        ] {
            fs::write(file.path(), bad).unwrap();
            match file.load() {
                Loaded::Unusable(reason) => {
                    assert!(reason.contains(expected), "{reason}");
                    assert!(reason.contains(".unusable"), "{reason}");
                }
                other => panic!("{bad}: {other:?}"),
            }
            assert!(!file.path().exists(), "moved aside");
            assert_eq!(fs::read_to_string(file.aside()).unwrap(), bad);
        }
    }

    #[test]
    fn an_unwritable_place_is_an_error_that_says_what_to_do() {
        // A path under a regular file cannot be written, even as root.
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("plain"), "").unwrap();
        let file = StateFile::new(dir.path().join("plain/deploy.yaml.state.json"));
        let err = file.save(&RuntimeState::default()).unwrap_err().to_string();
        assert!(err.contains("plain/deploy.yaml.state.json"), "{err}");
        assert!(err.contains("--state"), "{err}");
    }
}
