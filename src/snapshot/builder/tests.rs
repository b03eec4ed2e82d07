use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::node::GroupId;
use crate::reconcile::{Event, Previous, RuntimeState, Timestamp, plan};
use crate::spec::Spec;
use crate::testing::fixtures::example;
use crate::testing::fleet::{Edits, deployment};
use crate::translate::{translate, translate_group};

/// `text` as `serve` loads it, with the PEM files it names read from `examples/` (`swap`: the
/// content of one certificate file given for another, as after a rotation).
fn load(name: &str, text: &str, swap: bool) -> Spec {
    let spec = crate::spec::parse(name, text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let dir = crate::testing::repo().join("examples");
    let mut read = crate::watch::read_pem_files(&dir.join(name), &crate::spec::pem_paths(&spec));
    if swap {
        let other = std::fs::read(dir.join("certs/wildcard.pem")).unwrap();
        read.insert("certs/shop.pem".to_owned(), Ok(other));
    }
    let now = std::time::SystemTime::now();
    crate::spec::load_pem_files(spec, name, &read, now)
        .unwrap()
        .0
}

/// A service whose clusters read a PEM file (upstream TLS with a CA).
const UPSTREAM_TLS: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:10000
    routes: [{ match: { prefix: / }, service: api }]
services:
  api:
    versions:
      blue: { endpoints: [127.0.0.1:9001] }
      green: { endpoints: [127.0.0.1:9002] }
    active: blue
    tls: { sni: shop.example.com, ca: certs/shop.pem }
";

/// Files that share service names and differ in what each part of the plan reads: the
/// examples, generated files with each edit, a service proxyless or not, node groups that share
/// a listener, and upstream TLS whose CA file changes.
fn pool() -> Vec<Spec> {
    let mut specs = Vec::new();
    for entry in std::fs::read_dir(crate::testing::repo().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            specs.push(load(&name, &example(&name), false));
        }
    }
    let proxyless = example("proxyless.yaml");
    let not_proxyless = proxyless.replace("proxyless: true", "address: 127.0.0.1:10001");
    assert_ne!(proxyless, not_proxyless);
    specs.push(load("not-proxyless.yaml", &not_proxyless, false));
    // A group of two listeners, one of them another group's too.
    let groups = example("node-groups.yaml");
    let shared = groups.replace("listeners: [public]", "listeners: [public, outbound]");
    assert_ne!(groups, shared);
    specs.push(load("shared-listener.yaml", &shared, false));
    specs.push(load("tls.yaml", UPSTREAM_TLS, false));
    specs.push(load("tls.yaml", UPSTREAM_TLS, true));
    specs.push(load(
        "gen.yaml",
        &deployment(6, 2, &Edits::default()),
        false,
    ));
    for (_, edits) in Edits::series() {
        specs.push(load("gen.yaml", &deployment(6, 2, &edits), false));
    }
    specs
}

/// The builder's snapshot is the one built from scratch: the same resources, versions and
/// bytes.
fn assert_same(built: &Snapshot, fresh: &Snapshot, step: usize) {
    assert_eq!(built, fresh, "step {step}");
    for ty in ResourceType::ALL {
        for (name, r) in fresh.resources(ty) {
            let b = built.get(ty, name).unwrap();
            assert_eq!(b.encoded, r.encoded, "step {step}: {ty} {name}");
            assert_eq!(
                b.names_clusters, r.names_clusters,
                "step {step}: {ty} {name}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any history of files, drains, answers and time gives, at every step, what translating
    /// and encoding the whole plan gives, and for each node group what translating and
    /// encoding the group's part gives.
    #[test]
    fn every_build_equals_a_build_from_scratch(
        steps in proptest::collection::vec((0usize..64, 0u8..3, 0u64..40), 1..24)
    ) {
        let specs = pool();
        let mut builder = Builder::default();
        let mut state = RuntimeState::default();
        let mut now = Timestamp::now();
        let mut current: Option<&Spec> = None;
        for (step, (file, event, seconds)) in steps.into_iter().enumerate() {
            let spec = &specs[file % specs.len()];
            now = now + Duration::from_secs(seconds);
            match (event, current) {
                (0, _) | (_, None) => {
                    let previous = current.map_or(Previous::Start, Previous::File);
                    let drain_period = Duration::from_secs(30);
                    state.reduce(spec, Event::FileLoaded { previous, drain_period }, now);
                    current = Some(spec);
                }
                (1, Some(spec)) => {
                    let services = spec.services.keys().cloned().collect();
                    state.reduce(spec, Event::Answered { services: &services }, now);
                }
                (_, Some(spec)) => state.reduce(spec, Event::Tick, now),
            }
            let plan = Arc::new(plan(current.unwrap(), &state, now));
            let (groups, _) = builder.build_groups(&plan);
            if plan.node_groups.is_targeted() {
                let everything = Snapshot::new(&translate(&plan));
                prop_assert_eq!(groups.len(), plan.groups.len());
                for (id, g) in &plan.groups {
                    let resources = translate_group(&plan, g);
                    assert_same(&groups[id], &everything.select(&resources), step);
                    assert_same(&groups[id], &Snapshot::new(&resources), step);
                }
            } else {
                prop_assert_eq!(groups.len(), 1);
                assert_same(&groups[&GroupId::all()], &Snapshot::new(&translate(&plan)), step);
            }
        }
    }
}

/// A save that changes one service encodes that service's changed resources, the listener
/// and its routes, and keeps the bytes of everything else.
#[test]
fn a_one_service_save_encodes_what_changed_and_shares_the_rest() {
    let build = |builder: &mut Builder, edits: &Edits| {
        let spec = crate::spec::parse("gen.yaml", &deployment(100, 3, edits)).unwrap();
        let plan = Arc::new(plan(&spec, &RuntimeState::default(), Timestamp::now()));
        let (snapshot, built) = builder.build(&plan);
        assert_same(&snapshot, &Snapshot::new(&translate(&plan)), 0);
        (snapshot, built)
    };
    let mut builder = Builder::default();
    let (first, built) = build(&mut builder, &Edits::default());
    // 100 services of two versions (a cluster and its endpoints each), s0's canary fallback,
    // one listener with its routes.
    assert_eq!(
        built,
        Built {
            encoded: 403,
            kept: 0,
            routes_kept: 0
        }
    );

    let weight = Edits {
        weight: true,
        ..Edits::default()
    };
    let (second, built) = build(&mut builder, &weight);
    assert_eq!(
        built,
        Built {
            encoded: 2,
            kept: 401,
            routes_kept: 99
        },
        "a weight: s0's routes"
    );
    for ty in [ResourceType::Cluster, ResourceType::Endpoint] {
        for (name, r) in second.resources(ty) {
            let before = first.get(ty, name).unwrap();
            assert_eq!(r.encoded.as_ptr(), before.encoded.as_ptr(), "{ty} {name}");
        }
    }

    let endpoint = Edits {
        endpoint: true,
        ..weight
    };
    let (third, built) = build(&mut builder, &endpoint);
    // s2/blue's cluster and load assignment, the listener and the routes.
    assert_eq!(
        built,
        Built {
            encoded: 4,
            kept: 399,
            routes_kept: 100
        },
        "an endpoint"
    );
    assert_ne!(
        third.get(ResourceType::Endpoint, "s2/blue"),
        second.get(ResourceType::Endpoint, "s2/blue")
    );

    let (_, built) = build(&mut builder, &endpoint);
    assert_eq!(
        built,
        Built {
            encoded: 2,
            kept: 401,
            routes_kept: 100
        },
        "the same file again"
    );
}

/// Upstream TLS reads the CA file: a rotated CA encodes every cluster again.
#[test]
fn a_changed_pem_file_encodes_the_clusters_again() {
    let mut builder = Builder::default();
    let mut versions = Vec::new();
    for swap in [false, true, true] {
        let spec = load("tls.yaml", UPSTREAM_TLS, swap);
        let plan = Arc::new(plan(&spec, &RuntimeState::default(), Timestamp::now()));
        let (snapshot, built) = builder.build(&plan);
        assert_same(&snapshot, &Snapshot::new(&translate(&plan)), 0);
        versions.push((
            snapshot.type_version(ResourceType::Cluster).to_owned(),
            built,
        ));
    }
    assert_ne!(versions[0].0, versions[1].0, "the CA is in the clusters");
    assert_eq!(
        versions[1].1,
        Built {
            encoded: 6,
            kept: 0,
            routes_kept: 1
        }
    );
    assert_eq!(
        versions[2].1,
        Built {
            encoded: 2,
            kept: 4,
            routes_kept: 1
        }
    );
}
