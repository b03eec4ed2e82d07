//! The deployment files the tests share, as text and (for the protocol machines) compiled.

use std::sync::Arc;

use crate::app::compile;
use crate::snapshot::Snapshot;

/// One listener `public` on 127.0.0.1:10000 routing everything to service `checkout`, with
/// versions blue (127.0.0.1:8081) and green (127.0.0.1:8082), blue active: what most tests
/// that do not route real traffic serve. Tests edit it with `replace`, so its text is fixed.
pub const DEPLOY: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:10000
    routes:
      - match: { prefix: / }
        service: checkout
services:
  checkout:
    versions:
      blue:  { endpoints: [127.0.0.1:8081] }
      green: { endpoints: [127.0.0.1:8082] }
    active: blue
";

/// [`DEPLOY`]'s shape with `versions` (name, endpoint) of `checkout`, `active` getting the
/// traffic.
pub fn checkout(versions: &[(&str, &str)], active: &str) -> String {
    let mut text = String::from(
        "listeners:\n  - name: public\n    address: 127.0.0.1:10000\n    routes:\n      - match: { prefix: / }\n        service: checkout\nservices:\n  checkout:\n    versions:\n",
    );
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
pub const ROLLING: &str = "
listeners:
  - name: public
    address: ${listener}
    routes:
      - match: { prefix: / }
        service: checkout
services:
  checkout:
    versions:
      live:
        endpoints: [%ENDPOINTS%]
    active: live
";

/// [`ROLLING`] with `endpoints` (placeholders such as `${live-1}, ${live-2}`).
pub fn rolling(endpoints: &str) -> String {
    ROLLING.replace("%ENDPOINTS%", endpoints)
}
