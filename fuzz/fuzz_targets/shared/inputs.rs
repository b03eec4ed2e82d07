//! What both xDS fuzz targets feed their protocol machine: the config versions they switch
//! between, the parts of a request the two protocols share, and the checks on every response.

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};

use arbitrary::Arbitrary;
use cutover::snapshot::Snapshot;
use cutover::xds::{Mode, ResourceType};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc::Status;

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
        (
            "steps: [",
            "steps: [{ mirror: 50 }, { match: { header: { x-tester: \"1\" } } }, ",
        ),
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

/// The kind of stream: aggregated, or one of the per-type services.
#[derive(Debug, Arbitrary)]
pub enum StreamMode {
    Ads,
    Cds,
    Eds,
    Lds,
    Rds,
}

impl StreamMode {
    pub fn mode(self) -> Mode {
        match self {
            StreamMode::Ads => Mode::Aggregated,
            StreamMode::Cds => Mode::Single(ResourceType::Cluster),
            StreamMode::Eds => Mode::Single(ResourceType::Endpoint),
            StreamMode::Lds => Mode::Single(ResourceType::Listener),
            StreamMode::Rds => Mode::Single(ResourceType::Route),
        }
    }
}

#[derive(Debug, Arbitrary)]
pub enum TypeUrl {
    Served(u8),
    Empty,
    Garbage(String),
}

impl TypeUrl {
    pub fn text(self) -> String {
        match self {
            TypeUrl::Served(i) => ResourceType::ALL[usize::from(i) % 4].type_url().to_owned(),
            TypeUrl::Empty => String::new(),
            TypeUrl::Garbage(url) => url,
        }
    }
}

/// What a request repeats of the latest response of its type.
#[derive(Debug, Arbitrary)]
pub enum Echo {
    Latest,
    Empty,
    Garbage(String),
}

impl Echo {
    /// The text a request carries, given the latest response's (if any).
    pub fn text(self, latest: Option<&String>) -> String {
        match self {
            Echo::Latest => latest.cloned().unwrap_or_default(),
            Echo::Empty => String::new(),
            Echo::Garbage(s) => s,
        }
    }
}

/// A request's node, from an id and a cluster.
pub fn node(node: Option<(String, String)>) -> Option<Node> {
    node.map(|(id, cluster)| Node {
        id,
        cluster,
        ..Default::default()
    })
}

/// A NACK's `error_detail`, from its message.
pub fn nack(error: Option<String>) -> Option<Status> {
    error.map(|message| Status {
        code: 13,
        message,
        details: Vec::new(),
    })
}

/// What every response on a stream must be: a nonce never used before on it, and of its type
/// on a per-type stream.
#[derive(Default)]
pub struct Checks {
    nonces: BTreeSet<String>,
}

impl Checks {
    pub fn response(&mut self, mode: Mode, ty: ResourceType, nonce: &str) {
        assert!(
            self.nonces.insert(nonce.to_owned()),
            "nonce {nonce:?} sent twice"
        );
        if let Mode::Single(only) = mode {
            assert_eq!(ty, only, "a per-type stream answered another type");
        }
    }
}
