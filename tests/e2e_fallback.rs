//! A canary with no healthy endpoint does not keep its share of the traffic: its requests fall
//! back to the stable version (Envoy's aggregate cluster `<service>/<canary>~<stable>`), so a
//! broken canary costs no failed requests, and gets its share back once healthy.

use cutover::checkout_head;
use cutover::testing::{Scenario, WAIT, envoy_binary, eventually};

const CANARY: &str = concat!(
    checkout_head!("${listener}"),
    "      v1: { endpoints: [${v1-1}, ${v1-2}] }
      v2: { endpoints: [${v2-1}] }
    strategy:
      canary: { stable: v1, canary: v2, weight: 50 }
    health_check: { path: /health, interval: 200ms, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1 }
",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_canary_falls_back_to_stable() {
    let Some(envoy) = envoy_binary() else { return };
    let s = Scenario::start(&envoy, &["v1-1", "v1-2", "v2-1"], CANARY).await;
    let v2 = s.upstream("v2-1").addr;

    let both = s.envoy.count_bodies(200, "/", &[]).await;
    assert!(
        both.get("v2-1").is_some_and(|n| *n > 50),
        "the canary serves its share: {both:?}"
    );

    s.upstream("v2-1").set_healthy(false);
    eventually(
        WAIT,
        "Envoy to see the canary fail its health check",
        async || {
            s.envoy
                .health_flags("checkout/v2", v2)
                .await
                .is_some_and(|f| f.contains("failed_active_hc"))
        },
    )
    .await;
    // Every request succeeds (count_bodies fails on any non-200), all from stable.
    let hits = s.upstream("v2-1").hits();
    let fallen_back = s.envoy.count_bodies(200, "/", &[]).await;
    assert_eq!(fallen_back.values().sum::<usize>(), 200);
    assert!(
        fallen_back.keys().all(|b| b.starts_with("v1-")),
        "stable took the canary's share: {fallen_back:?}"
    );
    assert_eq!(s.upstream("v2-1").hits(), hits);

    s.upstream("v2-1").set_healthy(true);
    eventually(WAIT, "the canary to be healthy again", async || {
        s.envoy
            .health_flags("checkout/v2", v2)
            .await
            .is_some_and(|f| f == "healthy")
    })
    .await;
    eventually(
        WAIT,
        "canary requests to reach the canary again",
        async || {
            s.envoy
                .count_bodies(20, "/", &[])
                .await
                .contains_key("v2-1")
        },
    )
    .await;
    let back = s.envoy.count_bodies(200, "/", &[]).await;
    assert!(
        back.get("v2-1").is_some_and(|n| *n > 50),
        "the canary has its share back: {back:?}"
    );
}

const RULE: &str = concat!(
    checkout_head!("${listener}"),
    "      a: { endpoints: [${a-1}] }
      b: { endpoints: [${b-1}] }
    active: a
    rules:
      - match: { header: { x-group: beta } }
        version: b
    health_check: { path: /health, interval: 200ms, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1 }
",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_whose_version_is_unhealthy_falls_back_to_the_default() {
    let Some(envoy) = envoy_binary() else { return };
    let s = Scenario::start(&envoy, &["a-1", "b-1"], RULE).await;
    let beta = [("x-group", "beta")];
    assert_eq!(
        s.envoy.count_bodies(20, "/", &beta).await.get("b-1"),
        Some(&20)
    );

    s.upstream("b-1").set_healthy(false);
    let b = s.upstream("b-1").addr;
    eventually(WAIT, "Envoy to see b fail its health check", async || {
        s.envoy
            .health_flags("checkout/b", b)
            .await
            .is_some_and(|f| f.contains("failed_active_hc"))
    })
    .await;
    // The group's requests all succeed, on the default version.
    assert_eq!(
        s.envoy.count_bodies(50, "/", &beta).await.get("a-1"),
        Some(&50)
    );
    assert_eq!(
        s.envoy.count_bodies(20, "/", &[]).await.get("a-1"),
        Some(&20)
    );
}
