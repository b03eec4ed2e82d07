//! End to end with a real Envoy: each deployment strategy and traffic policy of the deployment
//! file, checked by counting where real requests land; the strategy switches (blue-green,
//! canary, red-black) with Envoy speaking state-of-the-world and delta xDS (`name::sotw`,
//! `name::delta`). See `support` for the harness.
//!
//! Random splits (canary weights, mirror percentages, random-looking load balancers) are checked
//! against [`binomial_band`]: the count's binomial mean ± 5 standard deviations, which a correct
//! implementation leaves with a probability below 10⁻⁶ per assertion.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use cutover::checkout_head;
use cutover::testing::fixtures::rolling;
use cutover::testing::{Scenario, WAIT, envoy_binary, in_both_xds_modes, version_of, wait_for};

/// Where a count of successes out of `n` independent trials of probability `p` lies but for a
/// chance below 10⁻⁶: mean ± 5 standard deviations (normal approximation), clamped to `0..=n`.
fn binomial_band(n: usize, p: f64) -> RangeInclusive<usize> {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    let within = |x: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "clamped to 0..=n first"
        )]
        let x = x.clamp(0.0, n as f64) as usize;
        x
    };
    let low = within((mean - 5.0 * sd).floor());
    let high = within((mean + 5.0 * sd).ceil());
    low..=high
}

/// Counts per upstream added up per version (`blue-1` and `blue-2` are `blue`).
fn by_version(counts: &BTreeMap<String, usize>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (body, n) in counts {
        *out.entry(version_of(body).to_owned()).or_insert(0) += n;
    }
    out
}

/// `[(name, count)]` as a map, for comparing with what the harness counted.
fn counts<const N: usize>(pairs: [(&str, usize); N]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// Saves `template` and sends requests one after another until `after` of them were answered by
/// `to`; every body, in order. Panics on any failed request (a switch must not lose any), and
/// after [`WAIT`] or 10 000 requests.
async fn switch(s: &Scenario, template: &str, to: &str, after: usize) -> Vec<String> {
    s.write(template);
    let started = Instant::now();
    let mut bodies = Vec::new();
    let mut seen = 0;
    while seen < after {
        assert!(
            started.elapsed() < WAIT && bodies.len() < 10_000,
            "traffic did not move to {to} within {WAIT:?} ({} requests)",
            bodies.len()
        );
        let body = s
            .envoy
            .get("/")
            .await
            .unwrap_or_else(|e| panic!("request {} during the switch: {e}", bodies.len() + 1));
        if seen > 0 || version_of(&body) == to {
            seen += 1;
        }
        bodies.push(body);
    }
    bodies
}

/// Panics unless `bodies` (in order) are some from `from`, then only from `to`.
fn assert_switched_at_once(bodies: &[String], from: &str, to: &str) {
    let first = bodies
        .iter()
        .position(|b| version_of(b) == to)
        .unwrap_or_else(|| panic!("no response from {to}"));
    let versions: Vec<&str> = bodies.iter().map(|b| version_of(b)).collect();
    assert!(
        versions[..first].iter().all(|v| *v == from),
        "before the first {to} response only {from} answers: {versions:?}"
    );
    assert!(
        versions[first..].iter().all(|v| *v == to),
        "after the first {to} response (#{}) only {to} answers: {versions:?}",
        first + 1
    );
}

/// Sends batches of 10 requests (whatever their status) until one batch does not reach upstream
/// `name` at all. Envoy applies a change of endpoint health (a drain, an ejection, a failed
/// health check) to its load balancer at once, unless another one came less than its
/// `update_merge_window` (1 s) before: then it holds it back for the rest of the window, while
/// `/clusters` and the EDS ACK already show it.
async fn wait_until_unused(s: &Scenario, name: &str) {
    let upstream = s.upstream(name);
    wait_for(
        WAIT,
        &format!("{name} to get no more requests"),
        async || {
            let before = upstream.hits();
            s.envoy.replies(10, "/", &[]).await;
            match upstream.hits() - before {
                0 => Ok(()),
                n => Err(format!("{n} of 10 requests reached it")),
            }
        },
    )
    .await;
}

/// Sends batches of 10 requests until one reaches upstream `name`; see [`wait_until_unused`].
async fn wait_until_used(s: &Scenario, name: &str) {
    let upstream = s.upstream(name);
    wait_for(WAIT, &format!("{name} to get requests again"), async || {
        let before = upstream.hits();
        s.envoy.replies(10, "/", &[]).await;
        match upstream.hits() - before {
            0 => Err("none of 10 requests reached it".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
}

/// The bands quoted in the comments below.
#[test]
fn binomial_bands() {
    assert_eq!(binomial_band(2000, 0.10), 132..=268);
    assert_eq!(binomial_band(800, 0.25), 138..=262);
    assert_eq!(binomial_band(400, 0.5), 150..=250);
    assert_eq!(binomial_band(400, 0.75), 256..=344);
    assert_eq!(binomial_band(300, 1.0 / 3.0), 59..=141);
    assert_eq!(binomial_band(10, 0.5), 0..=10);
}

// ---------------------------------------------------------------------------------------------
// Blue-green

const BLUE_GREEN: &str = concat!(
    "\n",
    checkout_head!("${listener}"),
    "      blue:  { endpoints: [${blue-1}, ${blue-2}] }
      green: { endpoints: [${green-1}] }
    strategy:
      blue-green:
        active: %ACTIVE%
        preview: { header: x-cutover-preview }
",
);

in_both_xds_modes! {
    async fn blue_green_switches_all_traffic_at_once_and_previews_the_idle_colour(xds: Protocol) {
        let Some(envoy_bin) = envoy_binary() else {
            return;
        };
        let blue = BLUE_GREEN.replace("%ACTIVE%", "blue");
        let green = BLUE_GREEN.replace("%ACTIVE%", "green");
        let s = Scenario::start_in(
            &envoy_bin,
            &["blue-1", "blue-2", "green-1"],
            &blue,
            &[],
            xds,
        )
        .await;

        // All traffic to the active colour, spread over both of its endpoints.
        let before = s.hits();
        let seen = s.envoy.count_bodies(100, "/", &[]).await;
        assert_eq!(by_version(&seen), counts([("blue", 100)]), "{seen:?}");
        assert_eq!(seen.len(), 2, "both blue endpoints serve: {seen:?}");
        assert_eq!(s.hits_since(&before)["green-1"], 0);

        // The preview header reaches the idle colour; plain requests, and previews of the active
        // colour or of no colour at all, do not.
        let preview = |v: &'static str| [("x-cutover-preview", v)];
        let seen = s.envoy.count_bodies(50, "/", &preview("green")).await;
        assert_eq!(seen, counts([("green-1", 50)]));
        for headers in [&[][..], &preview("blue"), &preview("purple")] {
            let seen = s.envoy.count_bodies(50, "/", headers).await;
            assert_eq!(by_version(&seen), counts([("blue", 50)]), "{headers:?}");
        }

        // The switch: after the first green answer, only green answers, and nothing fails.
        let bodies = switch(&s, &green, "green", 100).await;
        assert_switched_at_once(&bodies, "blue", "green");
        let seen = s.envoy.count_bodies(100, "/", &[]).await;
        assert_eq!(seen, counts([("green-1", 100)]));
        // Now blue is the idle colour, and previewable.
        let seen = s.envoy.count_bodies(50, "/", &preview("blue")).await;
        assert_eq!(by_version(&seen), counts([("blue", 50)]), "{seen:?}");
        let seen = s.envoy.count_bodies(50, "/", &preview("green")).await;
        assert_eq!(seen, counts([("green-1", 50)]));

        // The rollback is the same one-word edit back.
        let bodies = switch(&s, &blue, "blue", 100).await;
        assert_switched_at_once(&bodies, "green", "blue");
        let seen = s.envoy.count_bodies(100, "/", &[]).await;
        assert_eq!(by_version(&seen), counts([("blue", 100)]), "{seen:?}");
    }
}

/// Blue only; then one edit adds green and makes it active.
const BLUE_THEN_GREEN: [&str; 2] = [
    "
listeners:
  - name: public
    address: ${listener}
    routes:
      - match: { prefix: / }
        service: checkout
services:
  checkout:
    versions:
      blue: { endpoints: [${blue-1}] }
    active: blue
",
    "
listeners:
  - name: public
    address: ${listener}
    routes:
      - match: { prefix: / }
        service: checkout
services:
  checkout:
    versions:
      blue:  { endpoints: [${blue-1}] }
      green: { endpoints: [${green-1}] }
    active: green
",
];

in_both_xds_modes! {
    async fn blue_green_switches_to_a_version_added_in_the_same_edit(xds: Protocol) {
        let Some(envoy_bin) = envoy_binary() else {
            return;
        };
        let [before, after] = BLUE_THEN_GREEN;
        let s = Scenario::start_in(&envoy_bin, &["blue-1", "green-1"], before, &[], xds)
            .await;
        assert_eq!(s.envoy.dynamic_clusters().await, ["checkout/blue"]);

        // Envoy gets the new cluster, subscribes to its endpoints, and only then the routes move.
        let bodies = switch(&s, after, "green", 50).await;
        assert_switched_at_once(&bodies, "blue", "green");
        assert_eq!(
            s.envoy.dynamic_clusters().await,
            ["checkout/blue", "checkout/green"]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Canary

const CANARY: &str = concat!(
    "\n",
    checkout_head!("${listener}"),
    "      v1: { endpoints: [${v1-1}, ${v1-2}] }
      v2: { endpoints: [${v2-1}] }
    strategy:
      canary:
        stable: v1
        canary: v2
        weight: %WEIGHT%
        sticky: { cookie: cutover-checkout, ttl: 1h }
",
);

in_both_xds_modes! {
    async fn canary_gets_its_weight_and_sticky_users_follow_the_steps(xds: Protocol) {
        let Some(envoy_bin) = envoy_binary() else {
            return;
        };
        let s = Scenario::start_in(
            &envoy_bin,
            &["v1-1", "v1-2", "v2-1"],
            &CANARY.replace("%WEIGHT%", "10"),
            &[],
            xds,
        )
        .await;

        // 10%: 2000 first visits, binomial(2000, 0.1): mean 200, sd 13.4, band 132..=268.
        const N: usize = 2000;
        let before = s.hits();
        let replies = s.envoy.replies(N, "/", &[]).await;
        let mut sides = BTreeMap::new();
        // Each first visit is a new user: their cookie and the version that answered.
        let mut users: Vec<(String, String)> = Vec::new();
        for r in &replies {
            assert_eq!(r.status, 200, "{r:?}");
            let version = version_of(&r.body);
            *sides.entry(version.to_owned()).or_insert(0) += 1;
            // A first visit gets its bucket for good: the request's random id.
            let set_cookie = r.header_values("set-cookie");
            let [cookie] = set_cookie.as_slice() else {
                panic!("one Set-Cookie on a first visit, got {set_cookie:?}");
            };
            let (pair, attributes) = cookie.split_once("; ").unwrap_or_default();
            assert_eq!(attributes, "Path=/; Max-Age=3600; HttpOnly", "{cookie}");
            assert_eq!(
                version,
                expected_side(pair, 10),
                "a first visit goes by its bucket: {pair}"
            );
            users.push((pair.to_owned(), version.to_owned()));
        }
        let band = binomial_band(N, 0.10);
        let canary = sides.get("v2").copied().unwrap_or(0);
        assert!(
            band.contains(&canary),
            "{canary} of {N} requests reached the canary; expected 10%, within {band:?}: {sides:?}"
        );
        assert_eq!(sides.values().sum::<usize>(), N, "{sides:?}");
        assert_eq!(
            by_version(&s.hits_since(&before)),
            sides,
            "the upstreams counted what Envoy answered"
        );

        // Returning users keep their side, also among other cookies, and get no new cookie.
        for (pair, version) in users.iter().take(100) {
            let among_others = format!("theme=dark; {pair}; lang=en");
            for cookie in [pair, &among_others] {
                let r = &s.envoy.replies(1, "/", &[("cookie", cookie)]).await[0];
                assert_eq!(version_of(&r.body), version, "with {cookie}");
                assert!(r.header_values("set-cookie").is_empty(), "{r:?}");
            }
        }

        // Raising the weight moves exactly the buckets it must: the user split follows the
        // step, and nobody on the canary moves back.
        let population = &users[..400];
        for weight in [50, 100] {
            s.apply(&CANARY.replace("%WEIGHT%", &weight.to_string())).await;
            let mut on_canary = 0;
            for (pair, first) in population {
                let r = &s.envoy.replies(1, "/", &[("cookie", pair)]).await[0];
                let now = version_of(&r.body);
                assert_eq!(now, expected_side(pair, weight), "{pair} at {weight}%");
                assert!(
                    !(first == "v2" && now == "v1"),
                    "{pair} moved back to stable at {weight}%"
                );
                on_canary += usize::from(now == "v2");
            }
            if weight < 100 {
                let band = binomial_band(population.len(), f64::from(weight) / 100.0);
                assert!(
                    band.contains(&on_canary),
                    "{on_canary} of {} returning users on the canary at {weight}%, expected within {band:?}",
                    population.len()
                );
            } else {
                assert_eq!(on_canary, population.len());
            }
        }

        // 0% and 100% are exact, for new users too.
        for (weight, only) in [("0", "v1"), ("100", "v2")] {
            s.apply(&CANARY.replace("%WEIGHT%", weight)).await;
            let seen = s.envoy.count_bodies(500, "/", &[]).await;
            assert_eq!(
                by_version(&seen),
                counts([(only, 500)]),
                "weight {weight}: {seen:?}"
            );
        }
    }
}

/// The version a user with the sticky cookie `pair` (`name=<request id>`) gets at `weight`
/// percent: the canary when the id's first three hex digits are below the weight's share of
/// 4096 (rounded).
fn expected_side(pair: &str, weight: u32) -> &'static str {
    let id = pair.split_once('=').map(|(_, v)| v).unwrap_or_default();
    let bucket = u32::from_str_radix(id.get(..3).unwrap_or("fff"), 16)
        .unwrap_or_else(|e| panic!("the sticky cookie {pair} holds no bucket: {e}"));
    let below = (weight * 4096 + 50) / 100;
    if bucket < below { "v2" } else { "v1" }
}

// ---------------------------------------------------------------------------------------------
// Shadow and mirror

const SHADOW: &str = concat!(
    "\n",
    checkout_head!("${listener}"),
    "      v1: { endpoints: [${v1-1}] }
      v2: { endpoints: [${v2-1}] }
    strategy: { shadow: { primary: v1, mirror: v2, percent: %PERCENT% } }
",
);

/// The same split as `SHADOW`, written as blue-green with a service-level mirror.
const MIRROR: &str = concat!(
    "\n",
    checkout_head!("${listener}"),
    "      v1: { endpoints: [${v1-1}] }
      v2: { endpoints: [${v2-1}] }
    active: v1
    mirror: { version: v2, percent: %PERCENT% }
",
);

/// Sends `n` requests, all of which must be answered by the primary `v1-1`, then waits for the
/// mirror's count to settle (copies are sent asynchronously and may still be on their way when
/// the client has its answers); the number of copies the mirror `v2-1` received.
async fn mirrored_copies(s: &Scenario, n: usize) -> usize {
    // Copies of earlier requests (the start's probes) may still be on their way: count from a
    // settled mirror.
    let start = settled_mirror_hits(s).await;
    let before = s.hits();
    let seen = s.envoy.count_bodies(n, "/", &[]).await;
    assert_eq!(seen, counts([("v1-1", n)]), "every answer is the primary's");
    assert_eq!(s.hits_since(&before)["v1-1"], n);
    settled_mirror_hits(s).await - start
}

/// The mirror `v2-1`'s request count once it has settled.
async fn settled_mirror_hits(s: &Scenario) -> usize {
    // Settled: Envoy has no request to the mirror in flight and the count did not move for
    // 300 ms.
    let mirror = s.upstream("v2-1");
    let mut last = (mirror.hits(), Instant::now());
    wait_for(WAIT, "the mirror's request count to settle", async || {
        let stats = s.envoy.stats().await;
        let in_flight = ["upstream_rq_active", "upstream_rq_pending_active"]
            .iter()
            .map(|stat| stats.get(&format!("cluster.checkout/v2.{stat}")).copied())
            .sum::<Option<u64>>();
        let hits = mirror.hits();
        if hits != last.0 {
            last = (hits, Instant::now());
        }
        if in_flight == Some(0) && last.1.elapsed() >= Duration::from_millis(300) {
            Ok(())
        } else {
            Err(format!("{hits} copies, {in_flight:?} in flight"))
        }
    })
    .await;
    mirror.hits()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_copies_its_share_to_the_mirror_and_answers_from_the_primary() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let s = Scenario::start(
        &envoy_bin,
        &["v1-1", "v2-1"],
        &SHADOW.replace("%PERCENT%", "100"),
    )
    .await;

    // 100%: every request is copied, and the copies say they are shadows.
    let copies = mirrored_copies(&s, 300).await;
    assert_eq!(copies, 300, "at 100% every request is mirrored");
    let shadow_host = format!("{}-shadow:{}", s.listener.ip(), s.listener.port());
    let hosts = s.upstream("v2-1").hosts();
    assert!(
        hosts.iter().all(|h| *h == shadow_host),
        "every copy has Host {shadow_host}: {:?}",
        BTreeSet::from_iter(&hosts)
    );
    let primary_hosts = s.upstream("v1-1").hosts();
    assert!(
        primary_hosts.iter().all(|h| *h == s.listener.to_string()),
        "the primary sees the client's Host: {:?}",
        BTreeSet::from_iter(&primary_hosts)
    );

    // 25%, as a shadow strategy and as a mirror added to blue-green: 800 requests,
    // binomial(800, 0.25): mean 200, sd 12.2, band 138..=262.
    const N: usize = 800;
    let band = binomial_band(N, 0.25);
    for template in [SHADOW, MIRROR] {
        s.apply(&template.replace("%PERCENT%", "25")).await;
        let copies = mirrored_copies(&s, N).await;
        assert!(
            band.contains(&copies),
            "{copies} of {N} requests mirrored; expected 25%, within {band:?}"
        );
    }
    let hosts = s.upstream("v2-1").hosts();
    assert!(
        hosts.iter().all(|h| *h == shadow_host),
        "every copy has Host {shadow_host}: {:?}",
        BTreeSet::from_iter(&hosts)
    );
}

// ---------------------------------------------------------------------------------------------
// A/B rules

const AB: &str = concat!(
    "\n",
    checkout_head!("${listener}"),
    "      a: { endpoints: [${a-1}] }
      b: { endpoints: [${b-1}] }
      c: { endpoints: [${c-1}] }
    %STRATEGY%
    rules:
      - match: { header: { x-group: beta } }
        version: b
      - match: { cookie: { group: beta } }
        version: b
      - match: { query: { variant: b } }
        version: b
      - match: { prefix: /new }
        version: b
",
);

/// Request headers, as [`testing::Envoy::send`] takes them.
type Headers<'a> = &'a [(&'a str, &'a str)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_rules_pick_the_version_and_everyone_else_follows_the_strategy() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let s = Scenario::start(
        &envoy_bin,
        &["a-1", "b-1", "c-1"],
        &AB.replace("%STRATEGY%", "active: a"),
    )
    .await;

    // (path, request headers, where all 20 requests must go)
    let cases: [(&str, Headers, &str); 13] = [
        ("/", &[], "a-1"),
        ("/", &[("x-group", "beta")], "b-1"),
        ("/", &[("x-group", "alpha")], "a-1"),
        ("/", &[("cookie", "group=beta")], "b-1"),
        ("/", &[("cookie", "theme=dark; group=beta; lang=en")], "b-1"),
        ("/", &[("cookie", "group=betamax")], "a-1"),
        ("/", &[("cookie", "subgroup=beta")], "a-1"),
        ("/?variant=b", &[], "b-1"),
        ("/?lang=en&variant=b", &[], "b-1"),
        ("/?variant=a", &[], "a-1"),
        ("/new", &[], "b-1"),
        ("/new/cart", &[], "b-1"),
        ("/old", &[], "a-1"),
    ];
    for (path, headers, expected) in cases {
        let seen = s.envoy.count_bodies(20, path, headers).await;
        assert_eq!(seen, counts([(expected, 20)]), "GET {path} {headers:?}");
    }

    // Under a 50% canary of c, plain requests split between a and c while the rules still send
    // their groups to b. 400 requests, binomial(400, 0.5): mean 200, sd 10, band 150..=250.
    s.apply(&AB.replace(
        "%STRATEGY%",
        "strategy: { canary: { stable: a, canary: c, weight: 50 } }",
    ))
    .await;
    let seen = s.envoy.count_bodies(400, "/", &[]).await;
    let band = binomial_band(400, 0.5);
    assert_eq!(seen.get("b-1"), None, "{seen:?}");
    let c = seen.get("c-1").copied().unwrap_or(0);
    assert!(
        band.contains(&c),
        "{c} of 400 to the canary, expected within {band:?}: {seen:?}"
    );
    for (path, headers) in [
        ("/", &[("x-group", "beta")][..]),
        ("/", &[("cookie", "group=beta")]),
        ("/?variant=b", &[]),
        ("/new", &[]),
    ] {
        let seen = s.envoy.count_bodies(50, path, headers).await;
        assert_eq!(seen, counts([("b-1", 50)]), "GET {path} {headers:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Rolling: draining endpoints

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_endpoints_get_no_new_requests_and_can_be_removed() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    // An endpoint removed from the file drains for the drain period before Envoy drops it.
    let s = Scenario::start_with_args(
        &envoy_bin,
        &["live-1", "live-2", "live-3"],
        &rolling("${live-1}, ${live-2}, ${live-3}"),
        &["--drain-period", "1s"],
    )
    .await;
    let live_1 = s.upstream("live-1").addr;
    let seen = s.envoy.count_bodies(90, "/", &[]).await;
    assert_eq!(seen.len(), 3, "all three endpoints serve: {seen:?}");

    // live-1 drains: not one new request reaches it, the other two get them all.
    s.apply(&rolling(
        "{ address: ${live-1}, drain: true }, ${live-2}, ${live-3}",
    ))
    .await;
    wait_until_unused(&s, "live-1").await;
    let before = s.hits();
    let seen = s.envoy.count_bodies(200, "/", &[]).await;
    let hits = s.hits_since(&before);
    assert_eq!(
        hits["live-1"], 0,
        "the draining endpoint got requests: {hits:?}"
    );
    assert_eq!(hits["live-2"] + hits["live-3"], 200, "{hits:?}");
    assert!(hits["live-2"] > 0 && hits["live-3"] > 0, "{hits:?}");
    assert_eq!(seen.get("live-1"), None);

    // Removed from the file while requests flow: Envoy drops it after the drain period, no
    // request fails, and it gets none.
    let traffic = s.envoy.background_traffic();
    s.apply(&rolling("${live-2}, ${live-3}")).await;
    wait_for(
        Duration::from_secs(10),
        "Envoy to drop the removed endpoint",
        async || match s.envoy.health_flags("checkout/live", live_1).await {
            None => Ok(()),
            Some(flags) => Err(format!("live-1 is still there: {flags}")),
        },
    )
    .await;
    let seen = s.envoy.count_bodies(200, "/", &[]).await;
    traffic.stop_all_answered("the endpoint's removal").await;
    assert_eq!(seen.values().sum::<usize>(), 200);
    assert_eq!(s.hits_since(&before)["live-1"], 0);

    // Two of three draining: the third takes everything. (Envoy 1.40 leaves DRAINING endpoints
    // out of load balancing and out of the panic-threshold arithmetic altogether, so this holds
    // for any `panic_threshold`; the health-check test shows the threshold at work.)
    s.apply(&rolling(
        "{ address: ${live-1}, drain: true }, { address: ${live-2}, drain: true }, ${live-3}",
    ))
    .await;
    wait_until_unused(&s, "live-2").await;
    let before = s.hits();
    let seen = s.envoy.count_bodies(200, "/", &[]).await;
    assert_eq!(seen, counts([("live-3", 200)]));
    assert_eq!(
        s.hits_since(&before),
        counts([("live-1", 0), ("live-2", 0), ("live-3", 200)])
    );
}

// ---------------------------------------------------------------------------------------------
// Load balancing

const BALANCED: &str = concat!(
    "\n",
    checkout_head!("${listener}"),
    "      v1:
        endpoints: [%ENDPOINTS%]
    active: v1
    load_balancing: %LB%
",
);

fn balanced(lb: &str, endpoints: &str) -> String {
    BALANCED
        .replace("%LB%", lb)
        .replace("%ENDPOINTS%", endpoints)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_keeps_each_key_on_one_endpoint() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let s = Scenario::start(
        &envoy_bin,
        &["v1-1", "v1-2", "v1-3"],
        &balanced(
            "{ ring_hash: { header: x-user } }",
            "${v1-1}, ${v1-2}, ${v1-3}",
        ),
    )
    .await;

    // 12 keys × 20 requests: each key always on one endpoint.
    let mut used = BTreeSet::new();
    for key in 0..12 {
        let user = format!("user-{key}");
        let seen = s.envoy.count_bodies(20, "/", &[("x-user", &user)]).await;
        assert_eq!(seen.len(), 1, "{user} was served by {seen:?}");
        used.extend(seen.into_keys());
    }
    // The keys are spread: all 12 on one of three endpoints has a chance of 3 · 3⁻¹² ≈ 6·10⁻⁶.
    assert!(used.len() >= 2, "every key hashed to {used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_weights_split_round_robin_traffic() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let s = Scenario::start(
        &envoy_bin,
        &["v1-1", "v1-2"],
        &balanced(
            "round_robin",
            "{ address: ${v1-1}, weight: 3 }, { address: ${v1-2}, weight: 1 }",
        ),
    )
    .await;

    // 3:1 over 400 requests. Envoy's weighted round robin is close to exact; the band is the
    // binomial(400, 0.75) one all the same: mean 300, sd 8.7, band 256..=344.
    let before = s.hits();
    let seen = s.envoy.count_bodies(400, "/", &[]).await;
    let band = binomial_band(400, 0.75);
    let heavy = seen.get("v1-1").copied().unwrap_or(0);
    assert!(
        band.contains(&heavy),
        "weight 3 got {heavy} of 400, expected within {band:?}: {seen:?}"
    );
    assert_eq!(seen.values().sum::<usize>(), 400);
    assert_eq!(s.hits_since(&before), seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_uses_every_endpoint() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let s = Scenario::start(
        &envoy_bin,
        &["v1-1", "v1-2", "v1-3"],
        &balanced("least_request", "${v1-1}, ${v1-2}, ${v1-3}"),
    )
    .await;

    // Equally fast endpoints: at least as even as picking at random, so each one's count of 300
    // lies in the binomial(300, 1/3) band: mean 100, sd 8.2, band 59..=141.
    let seen = s.envoy.count_bodies(300, "/", &[]).await;
    let band = binomial_band(300, 1.0 / 3.0);
    for name in ["v1-1", "v1-2", "v1-3"] {
        let n = seen.get(name).copied().unwrap_or(0);
        assert!(
            band.contains(&n),
            "{name} got {n} of 300, expected within {band:?}: {seen:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Health: outlier detection and active health checks

const HEALTH: &str = concat!(
    "\n",
    checkout_head!("${listener}"),
    "      v1: { endpoints: [${v1-1}, ${v1-2}, ${v1-3}] }
    active: v1
    %POLICY%
",
);

/// Waits until Envoy's `/clusters` shows `flag` among the health flags of `name`'s endpoint.
async fn wait_for_flag(s: &Scenario, name: &str, flag: &str) {
    let addr = s.upstream(name).addr;
    wait_for(
        WAIT,
        &format!("{name} ({addr}) to be {flag}"),
        async || match s.envoy.health_flags("checkout/v1", addr).await {
            // `healthy`, or flags such as `/failed_active_hc/pending_active_hc`.
            Some(flags) if flags.split('/').any(|f| f == flag) => Ok(()),
            other => Err(format!("health_flags {other:?}")),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_an_endpoint_that_answers_500() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let s = Scenario::start(
        &envoy_bin,
        &["v1-1", "v1-2", "v1-3"],
        &HEALTH.replace(
            "%POLICY%",
            "outlier_detection: { consecutive_5xx: 5, interval: 1s, base_ejection_time: 30s }",
        ),
    )
    .await;

    s.upstream("v1-1").set_status(500);
    // Requests until Envoy ejects it; round robin sends it every third one.
    let mut errors = 0;
    let addr = s.upstream("v1-1").addr;
    wait_for(WAIT, "v1-1 to be ejected", async || {
        for _ in 0..3 {
            let reply = s.envoy.send("/", &[]).await?;
            if reply.status == 500 {
                errors += 1;
            }
        }
        match s.envoy.health_flags("checkout/v1", addr).await {
            Some(flags) if flags.contains("failed_outlier_check") => Ok(()),
            other => Err(format!("health_flags {other:?} after {errors} errors")),
        }
    })
    .await;
    assert!(
        errors >= 5,
        "ejected after {errors} errors, before 5 in a row"
    );

    // Ejected: it gets nothing, the other two answer every request.
    wait_until_unused(&s, "v1-1").await;
    let before = s.hits();
    let seen = s.envoy.count_bodies(200, "/", &[]).await;
    let hits = s.hits_since(&before);
    assert_eq!(hits["v1-1"], 0, "{hits:?}");
    assert!(hits["v1-2"] > 0 && hits["v1-3"] > 0, "{hits:?}");
    assert_eq!(seen.values().sum::<usize>(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_check_takes_failing_endpoints_out_and_back() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let s = Scenario::start(
        &envoy_bin,
        &["v1-1", "v1-2", "v1-3"],
        &HEALTH.replace(
            "%POLICY%",
            "health_check: { path: /health, interval: 500ms, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1 }",
        ),
    )
    .await;
    for name in ["v1-1", "v1-2", "v1-3"] {
        wait_for_flag(&s, name, "healthy").await;
    }

    // One failing endpoint gets nothing; the other two share the requests.
    s.upstream("v1-1").set_healthy(false);
    wait_for_flag(&s, "v1-1", "failed_active_hc").await;
    wait_until_unused(&s, "v1-1").await;
    let before = s.hits();
    let checks = s.upstream("v1-1").health_checks();
    let seen = s.envoy.count_bodies(200, "/", &[]).await;
    let hits = s.hits_since(&before);
    assert_eq!(hits["v1-1"], 0, "{hits:?}");
    assert!(hits["v1-2"] > 0 && hits["v1-3"] > 0, "{hits:?}");
    assert_eq!(seen.values().sum::<usize>(), 200);

    // Two of three failing: a third of the endpoints is healthy, under Envoy's default panic
    // threshold of 50%, which would spread requests over all three again, failing ones
    // included. cutover's default of 0 keeps them on the healthy one.
    s.upstream("v1-2").set_healthy(false);
    wait_for_flag(&s, "v1-2", "failed_active_hc").await;
    wait_until_unused(&s, "v1-2").await;
    let before = s.hits();
    let seen = s.envoy.count_bodies(200, "/", &[]).await;
    assert_eq!(seen, counts([("v1-3", 200)]));
    assert_eq!(
        s.hits_since(&before),
        counts([("v1-1", 0), ("v1-2", 0), ("v1-3", 200)])
    );

    // Healthy again: back in the rotation.
    for name in ["v1-1", "v1-2"] {
        s.upstream(name).set_healthy(true);
    }
    for name in ["v1-1", "v1-2"] {
        wait_for_flag(&s, name, "healthy").await;
    }
    assert!(
        s.upstream("v1-1").health_checks() > checks,
        "Envoy kept checking the failing endpoint"
    );
    wait_until_used(&s, "v1-1").await;
    wait_until_used(&s, "v1-2").await;
    let seen = s.envoy.count_bodies(90, "/", &[]).await;
    assert_eq!(seen.len(), 3, "all three serve again: {seen:?}");
}

// ---------------------------------------------------------------------------------------------
// Red-black

const RED_BLACK: &str = concat!(
    "\n",
    checkout_head!("${listener}"),
    "      red:   { endpoints: [${red-1}] }
      black: { endpoints: [${black-1}] }
    strategy: { red-black: { active: %ACTIVE%, grace: 1s } }
",
);

in_both_xds_modes! {
    async fn red_black_retires_the_old_version_after_the_grace_period(xds: Protocol) {
        let Some(envoy_bin) = envoy_binary() else {
            return;
        };
        let s = Scenario::start_in(
            &envoy_bin,
            &["red-1", "black-1"],
            &RED_BLACK.replace("%ACTIVE%", "red"),
            &[],
            xds,
        )
        .await;
        // In steady state only the active version is deployed.
        assert_eq!(s.envoy.dynamic_clusters().await, ["checkout/red"]);
        let seen = s.envoy.count_bodies(50, "/", &[]).await;
        assert_eq!(seen, counts([("red-1", 50)]));

        // The switch re-creates black before routing to it.
        let traffic = s.envoy.background_traffic();
        s.write(&RED_BLACK.replace("%ACTIVE%", "black"));
        wait_for(WAIT, "traffic to move to black", async || {
            let body = s.envoy.get("/").await?;
            if body == "black-1" {
                Ok(())
            } else {
                Err(format!("answered by {body}"))
            }
        })
        .await;
        let switched = Instant::now();
        // Right after the switch the old version is still there, for an instant rollback.
        let clusters = s.envoy.dynamic_clusters().await;
        assert!(
            clusters.contains(&"checkout/red".to_owned()),
            "checkout/red is kept during the grace period: {clusters:?}"
        );
        // After it, the old version is retired.
        wait_for(
            Duration::from_secs(10),
            "checkout/red to be removed from Envoy",
            async || {
                let clusters = s.envoy.dynamic_clusters().await;
                if clusters.contains(&"checkout/red".to_owned()) {
                    Err(format!("{clusters:?}"))
                } else {
                    Ok(())
                }
            },
        )
        .await;
        let retired_after = switched.elapsed();
        // The grace period (1 s) runs from Envoy's ACK of the switch, which precedes the first
        // answer from black by at most a poll or two.
        assert!(
            retired_after >= Duration::from_millis(800),
            "checkout/red was removed {retired_after:?} after the switch, before the 1 s grace"
        );
        assert_eq!(s.envoy.dynamic_clusters().await, ["checkout/black"]);

        let seen = s.envoy.count_bodies(50, "/", &[]).await;
        assert_eq!(seen, counts([("black-1", 50)]));
        let outcomes = traffic.stop().await;
        let bodies: Vec<String> = outcomes
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.unwrap_or_else(|e| panic!("background request {} failed: {e}", i + 1)))
            .collect();
        assert_switched_at_once(&bodies, "red", "black");
    }
}
