//! `cutover demo-certs DIR`: the certificates the demo runs on, made on the spot (rcgen), so
//! that nothing secret ships in the repository and the demo shows the setup people deploy: the
//! xDS port over mutual TLS (cutover sends Envoy TLS keys over SDS only on a connection nobody
//! else can read) and the front Envoy serving HTTPS.
//!
//! Files already there are kept (a `docker compose up` after a `down` serves the same ones);
//! with any of them missing, all are made again under a new CA.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use cutover::pki::Ca;

/// `cutover demo-certs`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Where to write the certificates (created if missing).
    pub dir: PathBuf,
}

/// What the demo uses: the CA every other certificate is signed by, cutover's xDS server
/// certificate, the front Envoy's client certificate (its node id as DNS name), and the front
/// listener's HTTPS certificate (`demo.pem`, which examples/demo.yaml names as `certs/demo.pem`).
pub const FILES: [&str; 7] = [
    "ca.pem",
    "cutover.pem",
    "cutover-key.pem",
    "front.pem",
    "front-key.pem",
    "demo.pem",
    "demo-key.pem",
];

/// The names cutover's xDS certificate carries: its compose service, and loopback for `cutover
/// demo` and a host that reaches the published port.
const CUTOVER_NAMES: [&str; 3] = ["cutover", "localhost", "127.0.0.1"];
/// The front Envoy's node id (envoy/front.yaml), which its client certificate must name.
const FRONT_NODE: &str = "front";
/// The names the front listener's HTTPS certificate carries.
const HTTPS_NAMES: [&str; 3] = ["localhost", "shop.localhost", "127.0.0.1"];

/// Writes the demo's certificates into `dir` unless they are all there; what it did, in words.
pub fn ensure(dir: &Path) -> anyhow::Result<String> {
    if FILES.iter().all(|f| dir.join(f).is_file()) {
        return Ok(format!("certificates already in {}", dir.display()));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca = Ca::new("cutover demo CA")?;
    let pairs = [
        ("cutover", ca.server(&CUTOVER_NAMES)?),
        ("front", ca.client(&[FRONT_NODE])?),
        ("demo", ca.server(&HTTPS_NAMES)?),
    ];
    write(&dir.join("ca.pem"), &ca.pem)?;
    for (stem, pair) in &pairs {
        // Keys first, so that a certificate is never there without its key.
        write(&dir.join(format!("{stem}-key.pem")), &pair.key)?;
        write(&dir.join(format!("{stem}.pem")), &pair.cert)?;
    }
    Ok(format!(
        "wrote a new CA and the certificates of cutover ({}), Envoy's node {FRONT_NODE} and HTTPS ({}) to {}",
        CUTOVER_NAMES.join(", "),
        HTTPS_NAMES.join(", "),
        dir.display()
    ))
}

/// Every file readable by all: the containers that read them (Envoy's image runs as its own
/// user) share nothing else with the one that writes them. These are a demo's keys, made on the
/// spot; never do this with real ones.
fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file is made once, signed by the CA, and kept by a second run.
    #[test]
    fn makes_every_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure(dir.path()).unwrap();
        assert!(first.starts_with("wrote"), "{first}");
        let ca = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        let second = ensure(dir.path()).unwrap();
        assert!(second.starts_with("certificates already"), "{second}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
            ca
        );
        std::fs::remove_file(dir.path().join("demo-key.pem")).unwrap();
        ensure(dir.path()).unwrap();
        assert_ne!(
            std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
            ca
        );
        for f in FILES {
            assert!(dir.path().join(f).is_file(), "{f}");
        }
    }
}
