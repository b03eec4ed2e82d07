//! Reads generated deployment files of 100 and 1,000 services (what `benches/file_scale`
//! reads) with several YAML parsers; prints the median time of RUNS runs of each and its
//! throughput. serde-saphyr into cutover's raw structs (with every value's position) is what
//! cutover does; the others read the same text into a generic tree, without positions.

use std::time::{Duration, Instant};

use cutover::testing::fleet::{Edits, deployment};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut()) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    println!("| services | file | parser | median | MB/s |");
    println!("|---:|---:|---|---:|---:|");
    for services in [100, 1000] {
        let text = deployment(services, 3, &Edits::default());
        let json = serde_json::to_string(
            &serde_saphyr::from_str::<serde_json::Value>(&text).expect("valid YAML"),
        )
        .unwrap();
        let parsers: Vec<(&str, Box<dyn FnMut()>)> = vec![
            (
                "serde-saphyr → cutover's raw structs, with positions (cutover today)",
                Box::new(|| {
                    let raw: cutover::spec::RawSpec = serde_saphyr::from_str(&text).unwrap();
                    std::hint::black_box(raw);
                }),
            ),
            (
                "serde-saphyr → serde_json::Value",
                Box::new(|| {
                    let v: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
                    std::hint::black_box(v);
                }),
            ),
            (
                "serde_yaml 0.9 (libyaml, unmaintained) → serde_yaml::Value",
                Box::new(|| {
                    let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
                    std::hint::black_box(v);
                }),
            ),
            (
                "yaml-rust2 → its tree",
                Box::new(|| {
                    let v = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
                    std::hint::black_box(v);
                }),
            ),
            (
                "saphyr → its tree",
                Box::new(|| {
                    use saphyr::LoadableYamlNode as _;
                    let v = saphyr::Yaml::load_from_str(&text).unwrap();
                    std::hint::black_box(v);
                }),
            ),
            (
                "saphyr → its tree with positions (MarkedYaml)",
                Box::new(|| {
                    use saphyr::LoadableYamlNode as _;
                    let v = saphyr::MarkedYaml::load_from_str(&text).unwrap();
                    std::hint::black_box(v);
                }),
            ),
            (
                "serde_json, the same content as JSON (a floor, not an option)",
                Box::new(|| {
                    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
                    std::hint::black_box(v);
                }),
            ),
        ];
        for (name, mut parse) in parsers {
            let took = time(runs, &mut parse);
            let mbps = text.len() as f64 / took.as_secs_f64() / 1e6;
            println!(
                "| {services} | {} KiB | {name} | {:.1} ms | {mbps:.1} |",
                text.len() / 1024,
                took.as_secs_f64() * 1000.0
            );
        }
    }
}
