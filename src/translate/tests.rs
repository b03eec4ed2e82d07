use crate::app::compile;
use crate::render;
use crate::snapshot::ResourceType;
use crate::snapshot::Snapshot;
use crate::testing::fixtures::example;

/// What Envoy receives for each example file, so a reviewer sees every change to it. A new
/// example is snapshotted by being added to `examples/`.
#[test]
fn rendered_examples() {
    insta::glob!("../../examples", "*.yaml", |path| {
        let name = path.file_name().unwrap().to_string_lossy();
        let text = std::fs::read_to_string(path).unwrap();
        // As `serve` loads it: with the PEM files it names (examples/edge.yaml).
        let spec = crate::spec::parse(&name, &text).unwrap();
        let read = crate::watch::read_pem_files(path, &crate::spec::pem_paths(&spec));
        let (spec, _) =
            crate::spec::load_pem_files(spec, &name, &read, std::time::SystemTime::now()).unwrap();
        let snapshot = crate::app::fresh_snapshot(&spec);
        let rendered = render::yaml(&render::snapshot_json(&snapshot).unwrap()).unwrap();
        insta::assert_snapshot!(rendered);
    });
}

/// The names of `snapshot`'s resources of `ty`, sorted.
fn names_of(snapshot: &Snapshot, ty: ResourceType) -> Vec<String> {
    snapshot.resources(ty).keys().cloned().collect()
}

#[test]
fn same_file_same_bytes_and_versions() {
    let text = example("basic.yaml");
    let a = compile("a.yaml", &text).unwrap();
    let b = compile("elsewhere/b.yaml", &text).unwrap();
    assert_eq!(a, b);
    // Content hashes, not counters or timestamps: pinned so that a change of encoding or
    // hashing, which would make every Envoy re-apply its config after an upgrade, is noticed.
    assert_eq!(a.version, "d073f844c150fdd7");
}

#[test]
fn formatting_and_key_order_do_not_change_versions() {
    let text = example("basic.yaml");
    let reordered = "\
services:
  checkout:
    active: blue
    versions:
      green: {endpoints: ['127.0.0.1:8083']}
      blue:
        endpoints:
          - 127.0.0.1:8081
          - 127.0.0.1:8082
listeners:
- name: public
  routes: [{service: checkout, match: {prefix: /}}]
  address: 127.0.0.1:10000
";
    assert_eq!(
        compile("a", &text).unwrap(),
        compile("b", reordered).unwrap()
    );
}

#[test]
fn a_switch_changes_only_the_routes() {
    let text = example("basic.yaml");
    let blue = compile("a", &text).unwrap();
    let green = compile("a", &text.replace("active: blue", "active: green")).unwrap();
    assert_ne!(blue.version, green.version);
    let changed = |ty: ResourceType| blue.type_version(ty) != green.type_version(ty);
    assert!(!changed(ResourceType::Cluster));
    assert!(!changed(ResourceType::Endpoint));
    assert!(!changed(ResourceType::Listener));
    assert!(changed(ResourceType::Route));
}

#[test]
fn every_version_is_a_cluster_with_its_endpoints() {
    let snapshot: Snapshot = compile("a", &example("basic.yaml")).unwrap();
    let names = |ty| names_of(&snapshot, ty);
    assert_eq!(
        names(ResourceType::Cluster),
        ["checkout/blue", "checkout/green"]
    );
    assert_eq!(
        names(ResourceType::Endpoint),
        ["checkout/blue", "checkout/green"]
    );
    assert_eq!(names(ResourceType::Listener), ["public"]);
    assert_eq!(names(ResourceType::Route), ["public"]);
}

/// A version with a name among its endpoints is a STRICT_DNS cluster carrying its endpoints
/// (drains and weights included); it has no EDS resource, and an IP-only version keeps its EDS.
#[test]
fn a_version_with_names_is_a_dns_cluster_with_its_endpoints_inline() {
    let text = example("basic.yaml").replace(
        "green: { endpoints: [127.0.0.1:8083] }",
        "green: { endpoints: [green:8080, { address: 127.0.0.1:8083, weight: 2 }, { address: green-old:8080, drain: true }] }",
    );
    assert!(text.contains("green:8080"), "basic.yaml changed: {text}");
    let snapshot = compile("a", &text).unwrap();
    let json = render::snapshot_json(&snapshot).unwrap();
    let green = json["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "checkout/green")
        .unwrap();
    assert_eq!(
        green,
        &serde_json::json!({
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": "checkout/green",
            "type": "STRICT_DNS",
            "dns_lookup_family": "V4_PREFERRED",
            "connect_timeout": "1s",
            "common_lb_config": {
                "healthy_panic_threshold": {},
                "update_merge_window": "0s"
            },
            "outlier_detection": green["outlier_detection"].clone(),
            "load_assignment": {
                "cluster_name": "checkout/green",
                "endpoints": [{ "lb_endpoints": [
                    { "endpoint": { "address": { "socket_address": { "address": "green", "port_value": 8080 } } } },
                    { "endpoint": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 8083 } } },
                      "load_balancing_weight": 2 },
                    { "endpoint": { "address": { "socket_address": { "address": "green-old", "port_value": 8080 } } },
                      "health_status": "DRAINING" }
                ]}]
            }
        })
    );
    let names = |ty| names_of(&snapshot, ty);
    assert_eq!(
        names(ResourceType::Cluster),
        ["checkout/blue", "checkout/green"]
    );
    assert_eq!(names(ResourceType::Endpoint), ["checkout/blue"]);
}
