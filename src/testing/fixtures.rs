//! The deployment files the tests share, as text and (for the protocol machines) compiled.

use std::sync::Arc;

use crate::app::{compile, compile_resources};
use crate::snapshot::Snapshot;

/// A deployment file's start, as a literal: one listener `public` at `$address` (a literal,
/// `"${listener}"` in a [`Scenario`](crate::testing::Scenario) template) routing everything to
/// service `checkout`, whose versions follow. For `concat!`.
#[macro_export]
macro_rules! checkout_head {
    ($address:literal) => {
        concat!(
            "listeners:\n",
            "  - name: public\n",
            "    address: ",
            $address,
            "\n",
            "    routes:\n",
            "      - match: { prefix: / }\n",
            "        service: checkout\n",
            "services:\n",
            "  checkout:\n",
            "    versions:\n",
        )
    };
}

/// One listener `public` on 127.0.0.1:10000 routing everything to service `checkout`, with
/// versions blue (127.0.0.1:8081) and green (127.0.0.1:8082), blue active: what most tests
/// that do not route real traffic serve. Tests edit it with `replace`, so its text is fixed:
///
/// ```yaml
/// listeners:
///   - name: public
///     address: 127.0.0.1:10000
///     routes:
///       - match: { prefix: / }
///         service: checkout
/// services:
///   checkout:
///     versions:
///       blue:  { endpoints: [127.0.0.1:8081] }
///       green: { endpoints: [127.0.0.1:8082] }
///     active: blue
/// ```
pub const DEPLOY: &str = concat!(
    checkout_head!("127.0.0.1:10000"),
    "      blue:  { endpoints: [127.0.0.1:8081] }\n",
    "      green: { endpoints: [127.0.0.1:8082] }\n",
    "    active: blue\n",
);

/// [`DEPLOY`]'s shape with `versions` (name, endpoint) of `checkout`, `active` getting the
/// traffic.
pub fn checkout(versions: &[(&str, &str)], active: &str) -> String {
    let mut text = String::from(checkout_head!("127.0.0.1:10000"));
    for (name, endpoint) in versions {
        text.push_str(&format!(
            "      {name}: {{ endpoints: [\"{endpoint}\"] }}\n"
        ));
    }
    text.push_str(&format!("    active: {active}\n"));
    text
}

/// [`checkout`] compiled: what cutover serves for it.
pub fn deployment(versions: &[(&str, &str)], active: &str) -> Arc<Snapshot> {
    Arc::new(compile("test.yaml", &checkout(versions, active)).expect("a valid deployment"))
}

/// [`deployment`] with blue (127.0.0.1:8081) and green (127.0.0.1:8082).
pub fn blue_green(active: &str) -> Arc<Snapshot> {
    deployment(
        &[("blue", "127.0.0.1:8081"), ("green", "127.0.0.1:8082")],
        active,
    )
}

/// [`deployment`] with blue (127.0.0.1:8081) alone.
pub fn only_blue() -> Arc<Snapshot> {
    deployment(&[("blue", "127.0.0.1:8081")], "blue")
}

/// [`deployment`] with green (127.0.0.1:8082) alone.
pub fn only_green() -> Arc<Snapshot> {
    deployment(&[("green", "127.0.0.1:8082")], "green")
}

/// [`blue_green`] (blue active) with blue's endpoint moved to 127.0.0.1:9999.
pub fn blue_moved() -> Arc<Snapshot> {
    deployment(
        &[("blue", "127.0.0.1:9999"), ("green", "127.0.0.1:8082")],
        "blue",
    )
}

/// [`blue_green`] (blue active) with green's endpoint moved to 127.0.0.1:9999.
pub fn green_moved() -> Arc<Snapshot> {
    deployment(
        &[("blue", "127.0.0.1:8081"), ("green", "127.0.0.1:9999")],
        "blue",
    )
}

/// [`deployment`] with blue, green and red (127.0.0.1:8083), blue active.
pub fn three_versions() -> Arc<Snapshot> {
    deployment(
        &[
            ("blue", "127.0.0.1:8081"),
            ("green", "127.0.0.1:8082"),
            ("red", "127.0.0.1:8083"),
        ],
        "blue",
    )
}

/// A service `checkout` whose one version `live` has `%ENDPOINTS%` (see [`rolling`]), behind an
/// end-to-end listener (`${listener}`): for tests that add, remove and drain endpoints.
pub const ROLLING: &str = concat!(
    "\n",
    checkout_head!("${listener}"),
    "      live:\n",
    "        endpoints: [%ENDPOINTS%]\n",
    "    active: live\n",
);

/// [`ROLLING`] with `endpoints` (placeholders such as `${live-1}, ${live-2}`).
pub fn rolling(endpoints: &str) -> String {
    ROLLING.replace("%ENDPOINTS%", endpoints)
}

/// An example file (`examples/NAME`) as text.
pub fn example(name: &str) -> String {
    let path = super::repo().join("examples").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `examples/basic.yaml` compiled, and the same with one cluster redefined (same name and
/// endpoints, another connect timeout: Envoy re-creates it, and it warms until its endpoints
/// come again); the name of that cluster.
pub fn a_cluster_redefined() -> (Arc<Snapshot>, Arc<Snapshot>, String) {
    let resources = compile_resources("t.yaml", &example("basic.yaml")).expect("basic.yaml");
    let mut changed = resources.clone();
    changed.clusters[0].connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
        seconds: 3,
        nanos: 0,
    });
    let name = changed.clusters[0].name.clone();
    (
        Arc::new(Snapshot::new(&resources)),
        Arc::new(Snapshot::new(&changed)),
        name,
    )
}

/// A TCP listener in front of `postgres`, whose versions are `versions` (name, endpoint),
/// compiled: what cutover serves for it.
pub fn tcp(versions: &[(&str, &str)], active: &str) -> Arc<Snapshot> {
    let mut text = String::from(
        "listeners:\n  - name: db\n    address: 127.0.0.1:15432\n    tcp: postgres\nservices:\n  postgres:\n    versions:\n",
    );
    for (name, endpoint) in versions {
        text.push_str(&format!("      {name}: {{ endpoints: [{endpoint}] }}\n"));
    }
    text.push_str(&format!("    active: {active}\n"));
    Arc::new(compile("test.yaml", &text).expect("a valid deployment"))
}
