//! Rollout webhooks, in-process: every check asks them (HTTP POST with a JSON description of
//! the rollout) and passes only if each answers 2xx in time. No Envoy is needed: with none
//! connected every weight is answered at once, and `min_requests: 0` lets a check judge without
//! traffic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover::api::{RolloutReport, RolloutState};
use cutover::app;
use cutover::checkout_head;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// A webhook on loopback that answers `status` after `delay` and keeps every body it got.
async fn webhook(status: u16, delay: Duration) -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    webhook_answering(Arc::new(AtomicU16::new(status)), delay).await
}

/// [`webhook`], answering whatever `status` holds at the time.
async fn webhook_answering(
    status: Arc<AtomicU16>,
    delay: Duration,
) -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let bodies = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (bodies, status) = (bodies.clone(), status.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (bodies, status) = (bodies.clone(), status.load(Ordering::SeqCst));
                    async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        if let Ok(v) = serde_json::from_slice(&body) {
                            bodies.lock().unwrap().push(v);
                        }
                        tokio::time::sleep(delay).await;
                        Ok::<_, hyper::Error>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"ok")))
                                .unwrap(),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn deployment(hook: SocketAddr, timeout: &str) -> String {
    format!(
        "{head}      v1: {{ endpoints: [127.0.0.1:8081] }}
      v2: {{ endpoints: [127.0.0.1:8082] }}
    strategy:
      canary:
        stable: v1
        canary: v2
        steps: [50, 100]
        interval: 1s
        analysis:
          interval: 1s
          min_requests: 0
          failure_limit: 1
          webhooks: [ {{ url: \"http://{hook}/check\", timeout: {timeout} }} ]
",
        head = checkout_head!("127.0.0.1:10000"),
    )
}

async fn serve(dir: &tempfile::TempDir, text: &str) -> app::Server {
    cutover::testing::serve(dir.path(), text).await
}

async fn wait_state(server: &app::Server, state: RolloutState) -> RolloutReport {
    for _ in 0..200 {
        let report = server.status.report();
        if let Some(r) = report.services["checkout"].rollout.clone()
            && r.state == state
        {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the rollout never got {state}: {:?}",
        server.status.report().services["checkout"].rollout
    );
}

#[tokio::test]
async fn a_webhook_that_answers_2xx_lets_every_step_pass() {
    let (hook, seen) = webhook(200, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir, &deployment(hook, "2s")).await;
    let r = wait_state(&server, RolloutState::Promoted).await;
    assert_eq!(r.weight, Some(100.0));
    let seen = seen.lock().unwrap();
    assert!(seen.len() >= 2, "asked at every check: {seen:?}");
    assert_eq!(seen[0]["service"], "checkout");
    assert_eq!(seen[0]["version"], "v2");
    assert_eq!(seen[0]["rollout"]["kind"], "canary");
    assert_eq!(seen[0]["figures"]["requests"], 0);
}

#[tokio::test]
async fn a_webhook_that_refuses_rolls_back() {
    let (hook, _) = webhook(503, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir, &deployment(hook, "2s")).await;
    let r = wait_state(&server, RolloutState::RolledBack).await;
    assert_eq!(
        r.reason.as_deref(),
        Some(format!("webhook http://{hook}/check answered 503").as_str())
    );
    assert_eq!(r.weight, Some(0.0));
}

#[tokio::test]
async fn a_webhook_that_does_not_answer_in_time_rolls_back() {
    let (hook, _) = webhook(200, Duration::from_secs(5)).await;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir, &deployment(hook, "300ms")).await;
    let r = wait_state(&server, RolloutState::RolledBack).await;
    assert_eq!(
        r.reason.as_deref(),
        Some(format!("webhook http://{hook}/check did not answer within 300ms").as_str())
    );
}

#[tokio::test]
async fn a_webhook_nobody_listens_on_rolls_back_saying_so() {
    // A port nothing listens on: bind one, then free it.
    let hook = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir, &deployment(hook, "2s")).await;
    let r = wait_state(&server, RolloutState::RolledBack).await;
    // The words of the system's own error, as a connection of this test's gets it.
    let refused = std::net::TcpStream::connect(hook).unwrap_err();
    assert_eq!(
        r.reason.as_deref(),
        Some(format!("webhook http://{hook}/check: cannot connect: {refused}").as_str())
    );
}

#[tokio::test]
async fn notify_webhooks_are_told_every_event_in_order_and_a_failing_one_changes_nothing() {
    let (check, _) = webhook(200, Duration::ZERO).await;
    let (told, events) = webhook(200, Duration::ZERO).await;
    // A notify webhook that refuses everything: logged, the rollout goes on.
    let (refusing, refused) = webhook(500, Duration::ZERO).await;
    // A chat channel's incoming webhook: one line of text per event.
    let (chat, lines) = webhook(200, Duration::ZERO).await;
    let text = deployment(check, "2s").replace(
        "        analysis:\n",
        &format!(
            "        notify: [ {{ url: \"http://{told}/events\" }}, {{ url: \"http://{refusing}/events\" }}, {{ url: \"http://{chat}/hooks/x\", format: slack }} ]\n        analysis:\n"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir, &text).await;
    wait_state(&server, RolloutState::Promoted).await;
    // Told off the controller's loop: the last event may still be on its way.
    let mut what = Vec::new();
    for _ in 0..100 {
        what = events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>();
        if what.last().is_some_and(|w| w.starts_with("promoted")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(what.len(), 3, "{what:?}");
    assert_eq!(what[0], "started: v2 at 50%");
    assert!(what[1].starts_with("v2 50% → 100%"), "{what:?}");
    assert_eq!(what[2], "promoted (every step passed)");
    let first = events.lock().unwrap()[0].clone();
    assert_eq!(first["service"], "checkout");
    assert_eq!(first["version"], "v2");
    assert_eq!(first["rollout"]["kind"], "canary");
    assert!(first["at"].is_string(), "{first}");
    assert_eq!(
        refused.lock().unwrap().len(),
        3,
        "each event is told to every webhook"
    );
    // The chat webhook is told each event after the other two.
    for _ in 0..100 {
        if lines.lock().unwrap().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines: Vec<Value> = lines.lock().unwrap().clone();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(
        lines[0],
        serde_json::json!({ "text": "cutover: checkout (canary v2): started: v2 at 50%" })
    );
    assert_eq!(
        lines[2],
        serde_json::json!({ "text": "cutover: checkout (canary v2): promoted (every step passed)" })
    );
}

/// Waits until `what` holds of the rollout; returns it.
async fn wait_until(
    server: &app::Server,
    what: &str,
    holds: impl Fn(&RolloutReport) -> bool,
) -> RolloutReport {
    for _ in 0..200 {
        if let Some(r) = server.status.report().services["checkout"].rollout.clone()
            && holds(&r)
        {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{what}: {:?}",
        server.status.report().services["checkout"].rollout
    );
}

#[tokio::test]
async fn a_confirm_webhook_holds_each_step_until_it_answers_2xx() {
    let (check, _) = webhook(200, Duration::ZERO).await;
    let approval = Arc::new(AtomicU16::new(403));
    let (confirm, asked) = webhook_answering(approval.clone(), Duration::ZERO).await;
    let text = deployment(check, "2s").replace(
        "        analysis:\n",
        &format!(
            "        confirm: [ {{ url: \"http://{confirm}/approve\" }} ]\n        analysis:\n"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir, &text).await;
    let held = wait_until(&server, "the step held by a refusing confirm", |r| {
        r.gate.as_ref().is_some_and(|g| g.refused.is_some())
    })
    .await;
    let gate = held.gate.clone().unwrap();
    assert_eq!(
        (gate.kind.as_str(), gate.next.as_str()),
        ("confirm", "100%")
    );
    assert_eq!(
        gate.refused.as_deref(),
        Some(format!("webhook http://{confirm}/approve answered 403").as_str())
    );
    // Asked again every analysis interval, and the step holds meanwhile.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = server.status.report().services["checkout"]
        .rollout
        .clone()
        .unwrap();
    assert_eq!(
        (r.state, r.weight),
        (RolloutState::Progressing, Some(50.0)),
        "{r:?}"
    );
    assert!(asked.lock().unwrap().len() >= 3, "asked again");

    // Approved: the next step, then promotion (asked again before it).
    approval.store(200, Ordering::SeqCst);
    let r = wait_state(&server, RolloutState::Promoted).await;
    assert_eq!(r.weight, Some(100.0));
    let asked = asked.lock().unwrap().clone();
    let last = asked.last().unwrap();
    assert_eq!(
        (last["gate"].as_str(), last["next"].as_str()),
        (Some("confirm"), Some("promotion"))
    );
    assert_eq!(last["version"], "v2");
    assert!(asked.iter().any(|b| b["next"] == "100%"), "{asked:?}");
}

#[tokio::test]
async fn a_pre_rollout_webhook_gates_the_first_request_to_the_canary() {
    let (check, _) = webhook(200, Duration::ZERO).await;
    let with_smoke_test = |smoke: SocketAddr| {
        deployment(check, "2s").replace(
            "        analysis:\n",
            &format!(
                "        pre_rollout: [ {{ url: \"http://{smoke}/smoke\" }} ]\n        analysis:\n"
            ),
        )
    };
    // Refused: the rollout fails and the canary never had a request.
    let (smoke, _) = webhook(500, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir, &with_smoke_test(smoke)).await;
    let r = wait_state(&server, RolloutState::RolledBack).await;
    assert_eq!(
        r.reason.as_deref(),
        Some(format!("pre_rollout: webhook http://{smoke}/smoke answered 500").as_str())
    );
    let history: Vec<&str> = r.history.iter().map(|h| h.what.as_str()).collect();
    assert_eq!(
        history[0],
        "started: asking the pre_rollout webhooks before v2 gets a request"
    );
    assert!(!history.iter().any(|h| h.contains("50%")), "{history:?}");
    assert_eq!(r.weight, Some(0.0));

    // Passed: the first step, and on to promotion.
    let (smoke, asked) = webhook(200, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir, &with_smoke_test(smoke)).await;
    let r = wait_state(&server, RolloutState::Promoted).await;
    assert!(
        r.history
            .iter()
            .any(|h| h.what == "pre_rollout webhooks passed: v2 at 50%"),
        "{r:?}"
    );
    let asked = asked.lock().unwrap();
    assert_eq!(asked.len(), 1, "asked once");
    assert_eq!(
        (asked[0]["gate"].as_str(), asked[0]["next"].as_str()),
        (Some("pre_rollout"), Some("50%"))
    );
}
