//! A smoke run of the switch-latency benchmark (benches/switch_latency.rs), so that it cannot
//! rot, and a check of what it measures: both setups — cutover with an Envoy on ADS, and an
//! Envoy on its own file-based xDS — follow every switch with the right colour, nothing else is
//! ever answered between switches, and the logs give every step of every switch.

use std::time::Duration;

use cutover::testing::envoy_binary;
use cutover::testing::switch_latency::{COLOURS, Options, Side, run};

const SWITCHES: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_setups_follow_every_switch_with_the_right_colour_and_the_logs_time_each_step() {
    let Some(envoy) = envoy_binary() else { return };
    let options = Options {
        switches: SWITCHES,
        warmup: 0,
        rest_probes: 20,
        // Generous: the suite runs other tests beside it; the figures are not asserted.
        timeout: Duration::from_secs(10),
        ..Options::default()
    };
    let m = run(&envoy, &options).await;

    for side in Side::BOTH {
        let samples: Vec<_> = m.of(side).collect();
        assert_eq!(samples.len(), SWITCHES, "{side:?}: one sample per switch");
        for (i, s) in samples.iter().enumerate() {
            // blue at the start, then green, blue, green, ...
            assert_eq!(s.to, COLOURS[(i + 1) % 2], "{side:?}: switch {i}");
            assert!(
                !s.timed_out && s.latency_ms.is_some_and(|ms| ms > 0.0),
                "{side:?}: switch {i} to {} was not observed: {s:?}",
                s.to
            );
            assert!(
                s.rename_ms <= s.latency_ms.unwrap_or_default(),
                "{side:?}: the rename is part of the latency: {s:?}"
            );
            assert!(
                s.envoy_applied_ms.is_some(),
                "{side:?}: switch {i}: Envoy's log says when it took the routes: {s:?}"
            );
        }
        let pause = &m.pause_traffic[&side];
        assert!(pause.requests > 0, "{side:?}: traffic between switches");
        assert_eq!(
            pause.errors, 0,
            "{side:?}: every answer between switches has the colour the setup serves: {:?}",
            pause.error_samples
        );
        assert_eq!(m.probe_rtt_ms[&side].len(), 20);
    }

    assert_eq!(
        (m.status_in_sync, m.status_not_in_sync),
        (SWITCHES, 0),
        "cutover's /status shows the Envoy in sync after every switch"
    );
    for s in m.of(Side::A) {
        let steps = s.cutover.as_ref().expect("cutover's steps, from its log");
        let (Some(loaded), Some(push), Some(ack)) =
            (steps.loaded_ms, steps.rds_push_ms, steps.rds_ack_ms)
        else {
            panic!(
                "every step of the switch to {} in cutover's log: {steps:?}",
                s.to
            );
        };
        // "config published" is logged once the streams are woken, so it may follow the push.
        assert!(
            loaded >= 0.0 && push >= 0.0 && push <= ack,
            "pushed, then ACKed, after the save: {steps:?}"
        );
        assert_eq!(
            steps.pushed_types,
            ["rds"],
            "a switch changes the routes only"
        );
    }
}
