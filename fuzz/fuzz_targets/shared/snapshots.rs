//! The config versions both xDS fuzz targets switch between.

use std::sync::{Arc, LazyLock};

use cutover::snapshot::Snapshot;

/// Config versions to switch between: every example, and edits of them that switch traffic,
/// move weights, drain and remove endpoints and versions (what a deploy does).
pub static SNAPSHOTS: LazyLock<Vec<Arc<Snapshot>>> = LazyLock::new(|| {
    let examples = [
        include_str!("../../../examples/basic.yaml"),
        include_str!("../../../examples/blue-green.yaml"),
        include_str!("../../../examples/red-black.yaml"),
        include_str!("../../../examples/canary.yaml"),
        include_str!("../../../examples/shadow.yaml"),
        include_str!("../../../examples/ab-testing.yaml"),
        include_str!("../../../examples/rolling.yaml"),
        include_str!("../../../examples/health.yaml"),
        include_str!("../../../examples/load-balancing.yaml"),
        include_str!("../../../examples/canary-rollout.yaml"),
        include_str!("../../../examples/blue-green-analysis.yaml"),
        include_str!("../../../examples/demo.yaml"),
    ];
    let edits = [
        ("active: blue", "active: green"),
        ("weight: 10 ", "weight: 100 "),
        ("weight: 10 ", "weight: 0 "),
        (", 127.0.0.1:8082]", "]"),
        ("127.0.0.1:8081", "127.0.0.1:9081"),
        ("drain: true", "drain: false"),
        ("prefix: /", "prefix: /v2"),
        // Rollout steps of every kind (what the runtime state serves comes from these too).
        ("steps: [", "steps: [{ mirror: 50 }, { match: { header: { x-tester: \"1\" } } }, "),
    ];
    let mut texts: Vec<String> = examples.iter().map(|t| t.to_string()).collect();
    for example in examples {
        for (from, to) in edits {
            if example.contains(from) {
                texts.push(example.replacen(from, to, 1));
            }
        }
    }
    texts
        .iter()
        .filter_map(|text| cutover::app::compile("example.yaml", text).ok())
        .map(Arc::new)
        .collect()
});

