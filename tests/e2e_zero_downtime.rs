//! Zero downtime, proven with a real Envoy under steady load: not one failed request across
//! traffic switches, canary steps, new and removed versions, drained endpoints, a control-plane
//! restart and a stream of broken files.
//!
//! Every scenario runs twice, with Envoy speaking state-of-the-world and delta xDS
//! (`name::sotw`, `name::delta`).
//!
//! Each scenario runs a bounded load (a few workers, each capped in rate, count and time) through
//! Envoy while the deployment file changes again and again, then asserts that every response was
//! a 2xx, that no connection failed, and where the traffic ended up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use cutover::checkout_head;
use cutover::testing;
use cutover::testing::load::Load;
use cutover::testing::{Scenario, envoy_binary, in_both_xds_modes, version_of};

/// Sends `n` requests and returns who answered them.
async fn answers(listener: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let body = client
            .get(format!("http://{listener}/"))
            .send()
            .await
            .expect("request after the scenario")
            .text()
            .await
            .unwrap();
        *out.entry(version_of(&body).to_owned()).or_insert(0) += 1;
    }
    out
}

const TWO_VERSIONS: &str = concat!(
    checkout_head!("${listener}"),
    "      blue:  { endpoints: [${blue-1}, ${blue-2}] }
      green: { endpoints: [${green-1}, ${green-2}] }
    STRATEGY
",
);

fn two_versions(strategy: &str) -> String {
    TWO_VERSIONS.replace("STRATEGY", strategy)
}

/// Service `checkout` with the single version `version`, active, on `endpoints` (a YAML list's
/// items, placeholders allowed).
fn one_version(version: &str, endpoints: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    address: ${{listener}}\n    routes:\n      - match: {{ prefix: / }}\n        service: checkout\nservices:\n  checkout:\n    versions:\n      {version}:\n        endpoints: [{endpoints}]\n    active: {version}\n"
    )
}

macro_rules! envoy_or_return {
    () => {
        match envoy_binary() {
            Some(bin) => bin,
            None => return,
        }
    };
}

in_both_xds_modes! {
    async fn fifty_blue_green_flips_under_load(xds: Protocol) {
        let envoy = envoy_or_return!();
        let s = Scenario::start_in(
            &envoy,
            &["blue-1", "blue-2", "green-1", "green-2"],
            &two_versions("active: blue"),
            &[],
            xds,
        )
        .await;
        let load = Load::start(s.listener);
        for i in 0..50 {
            let colour = if i % 2 == 0 { "green" } else { "blue" };
            let text = s.render(&two_versions(&format!("active: {colour}")));
            // Editors save both ways: write-then-rename and in place.
            if i % 3 == 0 {
                s.file.write_in_place(&text);
            } else {
                s.file.write_renamed(&text);
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        // The last flip (i = 49) went to blue.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let outcome = load.stop().await;
        outcome.assert_no_failures("50 flips");
        assert_eq!(
            answers(s.listener, 40).await,
            BTreeMap::from([("blue".to_owned(), 40)])
        );
        let versions = |v: &str| {
            outcome
                .by_body
                .keys()
                .filter(|b| version_of(b) == v)
                .count()
        };
        assert!(
            versions("blue") == 2 && versions("green") == 2,
            "traffic went to both colours: {:?}",
            outcome.by_body
        );
    }
}

in_both_xds_modes! {
    async fn canary_steps_up_and_back_under_load(xds: Protocol) {
        let envoy = envoy_or_return!();
        let canary = |w: u32| {
            two_versions(&format!(
                "strategy:\n      canary: {{ stable: blue, canary: green, weight: {w} }}"
            ))
        };
        let s = Scenario::start_in(
            &envoy,
            &["blue-1", "blue-2", "green-1", "green-2"],
            &canary(0),
            &[],
            xds,
        )
        .await;
        let load = Load::start(s.listener);
        for w in [5, 25, 50, 100, 50, 25, 5, 0] {
            s.apply(&canary(w)).await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let outcome = load.stop().await;
        outcome.assert_no_failures("canary 0 → 100 → 0");
        assert_eq!(
            answers(s.listener, 40).await,
            BTreeMap::from([("blue".to_owned(), 40)])
        );
    }
}

in_both_xds_modes! {
    async fn a_new_version_and_the_switch_to_it_in_one_edit(xds: Protocol) {
        let envoy = envoy_or_return!();
        let names = ["v1", "v2", "v3", "v4", "v5", "v6"];
        // Each edit adds a version nobody has seen and moves all traffic to it at once: the hardest
        // case for ordering (the route must not arrive before the cluster and its endpoints).
        let deployment = |i: usize| one_version(names[i], &format!("${{{}}}", names[i]));
        let s = Scenario::start_in(&envoy, &names, &deployment(0), &[], xds).await;
        let load = Load::start(s.listener);
        for i in 1..names.len() {
            s.apply(&deployment(i)).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let outcome = load.stop().await;
        outcome.assert_no_failures("new version and switch in one edit");
        assert_eq!(
            answers(s.listener, 20).await,
            BTreeMap::from([("v6".to_owned(), 20)])
        );
        for v in &names[1..] {
            assert!(
                outcome.by_body.get(*v).is_some_and(|n| *n > 0),
                "{v} got no traffic: {:?}",
                outcome.by_body
            );
        }
    }
}

in_both_xds_modes! {
    async fn removing_a_version_in_the_edit_that_moves_its_traffic(xds: Protocol) {
        let envoy = envoy_or_return!();
        let only = |v: &str| one_version(v, &format!("${{{v}-1}}, ${{{v}-2}}"));
        let s = Scenario::start_in(
            &envoy,
            &["blue-1", "blue-2", "green-1", "green-2"],
            &two_versions("active: blue"),
            &[],
            xds,
        )
        .await;
        let load = Load::start(s.listener);
        // blue+green → green alone (blue removed while its traffic moves) → both → blue alone ...
        for step in [
            only("green"),
            two_versions("active: green"),
            only("blue"),
            two_versions("active: blue"),
            only("green"),
        ] {
            s.apply(&step).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let outcome = load.stop().await;
        outcome.assert_no_failures("remove a version while moving its traffic");
        assert_eq!(
            answers(s.listener, 20).await,
            BTreeMap::from([("green".to_owned(), 20)])
        );
    }
}

in_both_xds_modes! {
    async fn draining_and_removing_endpoints_of_the_active_version(xds: Protocol) {
        let envoy = envoy_or_return!();
        let endpoints = |list: &str| one_version("live", list);
        let s = Scenario::start_in(
            &envoy,
            &["live-1", "live-2", "live-3", "live-4"],
            &endpoints("${live-1}, ${live-2}, ${live-3}"),
            &[],
            xds,
        )
        .await;
        let load = Load::start(s.listener);
        // A rolling replacement of live-1 by live-4: drain, remove, add the replacement...
        s.apply(&endpoints(
            "{ address: \"${live-1}\", drain: true }, ${live-2}, ${live-3}",
        ))
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.apply(&endpoints("${live-2}, ${live-3}, ${live-4}")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // ...and one removed straight from the file, which cutover drains by itself.
        s.apply(&endpoints("${live-3}, ${live-4}")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let hits_before = s.upstream("live-1").hits() + s.upstream("live-2").hits();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let outcome = load.stop().await;
        outcome.assert_no_failures("drain and remove endpoints");
        assert_eq!(
            s.upstream("live-1").hits() + s.upstream("live-2").hits(),
            hits_before,
            "drained and removed endpoints got new requests"
        );
        let last = answers(s.listener, 40).await;
        assert_eq!(last.values().sum::<usize>(), 40);
        assert!(last.keys().all(|k| k == "live"), "{last:?}");
        assert!(s.upstream("live-4").hits() > 0, "the replacement serves");
    }
}

in_both_xds_modes! {
    async fn killing_and_restarting_cutover_mid_load(xds: Protocol) {
        let envoy = envoy_or_return!();
        let mut s = Scenario::start_in(
            &envoy,
            &["blue-1", "blue-2", "green-1", "green-2"],
            &two_versions("active: blue"),
            &[],
            xds,
        )
        .await;
        let cluster_modified = s.envoy.stat("cluster_manager.cluster_modified").await;
        let load = Load::start(s.listener);
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.cutover.kill();
        // The control plane is gone: Envoy keeps serving what it has.
        tokio::time::sleep(Duration::from_millis(800)).await;
        s.cutover.restart().await;
        s.cutover.wait_in_sync(testing::NODE).await;
        // And a switch after the restart still works, under the same load.
        s.apply(&two_versions("active: green")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let outcome = load.stop().await;
        outcome.assert_no_failures("kill and restart cutover");
        assert_eq!(
            answers(s.listener, 20).await,
            BTreeMap::from([("green".to_owned(), 20)])
        );
        assert_eq!(
            s.envoy.stat("cluster_manager.cluster_modified").await,
            cluster_modified,
            "the restart made Envoy modify clusters"
        );
    }
}

in_both_xds_modes! {
    async fn twenty_broken_files_mid_load(xds: Protocol) {
        let envoy = envoy_or_return!();
        let good = two_versions("active: blue");
        let s = Scenario::start_in(
            &envoy,
            &["blue-1", "blue-2", "green-1", "green-2"],
            &good,
            &[],
            xds,
        )
        .await;
        let version = s.cutover.status().await.config_version;
        let good_text = s.render(&good);
        let switch = s.render(&two_versions("active: green"));
        let broken: Vec<String> = vec![
            good_text.replace("active: blue", "active: gren"),
            good_text.replace("listeners:", "listeners: ["),
            good_text.replace("services:", "servces:"),
            switch[..switch.len() / 2].to_owned(),
            switch[..switch.len() - 7].to_owned(),
            String::new(),
            "\u{0}\u{1}binary".to_owned(),
            good_text.replace("prefix: /", "prefix: nope"),
            good_text.replace("blue:  { endpoints:", "blue:  { endpoint:"),
            switch.replace(
                "green: { endpoints: [",
                "green: { endpoints: [127.0.0.1:0, ",
            ),
        ];
        let load = Load::start(s.listener);
        for i in 0..20 {
            let text = &broken[i % broken.len()];
            if i % 2 == 0 {
                s.file.write_in_place(text);
            } else {
                s.file.write_renamed(text);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let status = s.cutover.status().await;
        assert!(
            status.last_reload.is_some_and(|r| !r.ok),
            "the last broken file is reported"
        );
        assert_eq!(status.config_version, version, "no broken file was served");
        let outcome = load.stop().await;
        outcome.assert_no_failures("20 broken files");
        assert!(
            outcome.by_body.keys().all(|b| version_of(b) == "blue"),
            "{:?}",
            outcome.by_body
        );
        // A good file after all that is applied.
        s.write(&two_versions("active: green"));
        testing::wait_for(
            testing::WAIT,
            "traffic on green after a good file",
            async || match answers(s.listener, 1)
                .await
                .keys()
                .next()
                .map(String::as_str)
            {
                Some("green") => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .await;
        assert_eq!(
            answers(s.listener, 20).await,
            BTreeMap::from([("green".to_owned(), 20)])
        );
    }
}
