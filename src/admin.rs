//! The admin HTTP API: the live dashboard at `GET /` with its event stream `GET /events` (see
//! [`crate::dashboard`]), `GET /status` (JSON, with the live figures), `GET /config` (the
//! resources being served), `GET /metrics` (Prometheus, per version too), `GET /telemetry`
//! (JSON), `GET /healthz`, `GET /readyz`, `POST /reload` and the rollout commands.
//!
//! Endpoints that change anything are refused unless the caller is on loopback or presents the
//! configured bearer token (`--admin-token`), like the seed's `/termination` that only localhost
//! may call. The API binds loopback by default.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use tokio::sync::{mpsc, oneshot, watch};

use crate::api::{CommandError, RolloutCommand, StatusReport, WaitAnswer, WaitError, WaitFor};
use crate::controller::CommandRequest;
use crate::dashboard::Feed;
use crate::metrics::{GroupFigures, VersionFigures};
use crate::render;
use crate::status::Status;

#[derive(Clone)]
pub struct AdminState {
    pub status: Arc<Status>,
    pub published: watch::Receiver<Option<Arc<crate::snapshot::Published>>>,
    /// Asks the controller to read the deployment file now.
    pub reload: mpsc::Sender<()>,
    /// Operator commands for rollouts.
    pub commands: mpsc::Sender<CommandRequest>,
    /// Bearer token that allows mutating calls from other hosts.
    pub token: Option<String>,
    pub telemetry: crate::telemetry::Telemetry,
    /// What the dashboard's event stream sends.
    pub dashboard: Feed,
}

pub fn router(state: AdminState) -> Router {
    let mutating = Router::new()
        .route("/reload", post(reload))
        .route("/rollouts/{service}/{command}", post(rollout_command))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_authorized,
        ));
    Router::new()
        .route("/status", get(status))
        .route("/config", get(config))
        .route("/metrics", get(metrics))
        .route("/telemetry", get(telemetry))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/wait/{what}", get(wait_for))
        .route("/wait-facts", get(wait_facts))
        .route("/figures/{service}/{version}", get(figures))
        .merge(mutating)
        .with_state(state.clone())
        .merge(crate::dashboard::router(state.dashboard))
}

/// Whether a caller may change anything: it is on loopback, or it presents the bearer token.
pub fn authorized(peer: IpAddr, authorization: Option<&str>, token: Option<&str>) -> bool {
    if peer.is_loopback() || peer.to_canonical().is_loopback() {
        return true;
    }
    match (token, authorization.and_then(|a| a.strip_prefix("Bearer "))) {
        (Some(expected), Some(given)) => {
            constant_time_eq(expected.as_bytes(), given.trim().as_bytes())
        }
        _ => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_authorized(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if authorized(peer.ip(), authorization, s.token.as_deref()) {
        next.run(request).await
    } else {
        tracing::warn!(%peer, path = %request.uri().path(), "refused a mutating admin call");
        (
            StatusCode::FORBIDDEN,
            "only loopback callers or a valid `Authorization: Bearer <token>` (--admin-token) may change anything\n",
        )
            .into_response()
    }
}

/// The status with the live figures.
async fn status(State(s): State<AdminState>) -> Json<StatusReport> {
    Json(s.status.live(&s.telemetry, std::time::Instant::now()).0)
}

/// What every Envoy reports, and which connected Envoys report nothing.
async fn telemetry(State(s): State<AdminState>) -> Json<crate::telemetry::TelemetryReport> {
    Json(s.status.live(&s.telemetry, std::time::Instant::now()).1)
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let (report, _) = s.status.live(&s.telemetry, std::time::Instant::now());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.status
            .metrics
            .encode_with(&version_figures(&report), &group_figures(&report)),
    )
        .into_response()
}

/// The per-group series of `/metrics`: the file's node groups (none without `groups:`).
fn group_figures(report: &StatusReport) -> Vec<GroupFigures> {
    report
        .groups
        .iter()
        .map(|(group, g)| GroupFigures {
            group: group.clone(),
            envoys: g.envoys as u64,
            in_sync: g.in_sync as u64,
        })
        .collect()
}

/// The per-version series of `/metrics`: only the versions each service of the current file
/// deploys or splits to, so the series are bounded by the file, whatever Envoys report (a
/// removed version still draining is in `/status`, not here).
fn version_figures(report: &StatusReport) -> Vec<VersionFigures> {
    let mut out = Vec::new();
    for (service, s) in &report.services {
        let Some(observed) = &s.observed else {
            continue;
        };
        let in_file: std::collections::BTreeSet<&String> =
            s.deployed.iter().chain(s.split.keys()).collect();
        for version in in_file {
            let Some(v) = observed.versions.get(version) else {
                continue;
            };
            out.push(VersionFigures {
                service: service.clone(),
                version: version.clone(),
                requests_per_second: v.requests_per_second,
                error_ratio: v.error_rate.map(|percent| percent / 100.0),
                p99_seconds: v.p99_ms.map(|ms| ms / 1000.0),
                in_flight: v.in_flight,
                healthy_endpoints: v.healthy,
                endpoints: v.endpoints,
                ejected_endpoints: v.ejected,
            });
        }
    }
    out
}

async fn reload(State(s): State<AdminState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(answer) = to_leader(&s, "/reload", "", &headers).await {
        return answer;
    }
    match s.reload.try_send(()) {
        Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {
            (StatusCode::ACCEPTED, "reload requested\n").into_response()
        }
        Err(mpsc::error::TrySendError::Closed(())) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the loader is not running\n",
        )
            .into_response(),
    }
}

/// `POST /rollouts/{service}/{promote|abort|pause|resume}`: 200 with what was done, or why
/// nothing was ([`command_refused`] says with which status).
async fn rollout_command(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    Path((service, command)): Path<(String, String)>,
) -> Response {
    // Who, for the rollout's history: the caller's address, and whether it showed the token;
    // as the replica that forwarded the call said it (it was authorized to make the call).
    let by = if let Some(by) = headers.get(FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        by.to_owned()
    } else if headers.contains_key(axum::http::header::AUTHORIZATION) && !peer.ip().is_loopback() {
        format!("the operator at {} (admin token)", peer.ip())
    } else {
        format!("the operator at {}", peer.ip())
    };
    let path = format!("/rollouts/{service}/{command}");
    if let Some(answer) = to_leader(&s, &path, &by, &headers).await {
        return answer;
    }
    match run_command(&s, &service, &command, by).await {
        Ok(done) => format!("{service}: {done}\n").into_response(),
        Err(e) => command_refused(&service, &e),
    }
}

/// Marks a call a follower forwarded to the leader, with who made it (never forwarded again).
const FORWARDED_FOR: &str = "x-cutover-forwarded-for";

/// How long a follower waits for the leader's answer to a forwarded call.
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Cluster mode, on a replica that does not lead: hands the call at `path` to the leader's
/// admin API (with this replica's token) and answers with the leader's answer. `None` where
/// the call is this replica's to make: one cutover alone, the leader, a call already forwarded.
async fn to_leader(
    s: &AdminState,
    path: &str,
    by: &str,
    headers: &axum::http::HeaderMap,
) -> Option<Response> {
    let (leader_admin, role) = s.status.leader_admin()?;
    if role == "leader" || headers.contains_key(FORWARDED_FOR) {
        return None;
    }
    let refused = |why: String| {
        let e = CommandError::NotLeading { why: Some(why) };
        (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
    };
    let Some(leader) = leader_admin else {
        return Some(refused("no replica leads right now".to_owned()));
    };
    let bearer = s.token.as_ref().map(|t| format!("Bearer {t}"));
    let mut forwarded = vec![(FORWARDED_FOR, by)];
    if let Some(b) = &bearer {
        forwarded.push(("authorization", b.as_str()));
    }
    let url = format!("{}{path}", leader.trim_end_matches('/'));
    let answer = crate::http_client::Client::new()
        .send(axum::http::Method::POST, &url, &forwarded, FORWARD_TIMEOUT)
        .await;
    Some(match answer {
        Ok(a) => (a.status, a.body).into_response(),
        Err(e) => refused(format!("{url}: {e}")),
    })
}

/// Hands the command to the controller and waits for its answer.
async fn run_command(
    s: &AdminState,
    service: &str,
    command: &str,
    by: String,
) -> Result<&'static str, CommandError> {
    let command = command.parse::<RolloutCommand>()?;
    let (reply, answer) = oneshot::channel();
    let request = CommandRequest {
        service: service.to_owned(),
        command,
        by,
        reply,
    };
    s.commands
        .send(request)
        .await
        .map_err(|_| CommandError::ControllerNotRunning)?;
    answer.await.map_err(|_| CommandError::ControllerStopped)?
}

#[derive(Debug, serde::Deserialize)]
struct FiguresQuery {
    /// `requests`, `calls` or `connections`.
    counted: String,
    /// Milliseconds since the epoch: only what happened since is counted.
    since: u64,
}

/// `GET /figures/{service}/{version}?counted=requests&since=MS`: what this replica's Envoys
/// reported of the version over a rollout check's window (cluster mode: the leader adds every
/// replica's to its own).
async fn figures(
    State(s): State<AdminState>,
    Path((service, version)): Path<(String, String)>,
    Query(q): Query<FiguresQuery>,
) -> Response {
    use crate::controller::Observer as _;
    let Some(counted) = crate::reconcile::rollout::Counted::parse(&q.counted) else {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "counted={:?}: write requests, calls or connections\n",
                q.counted
            ),
        )
            .into_response();
    };
    let since = crate::reconcile::Timestamp::from_millis(q.since);
    let (figures, latency) = crate::controller::TelemetryObserver(s.telemetry.clone())
        .figures(&service, &version, counted, since);
    Json(crate::controller::ReplicaFigures { figures, latency }).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct WaitQuery {
    service: String,
    /// A version or an endpoint (as the file writes it); the whole service without it.
    target: Option<String>,
}

/// `GET /wait/{drained|healthy}?service=S[&target=T]`: whether it is so now, and if not what
/// is still awaited (`cutover wait` asks until it is), or why it cannot say
/// ([`wait_refused`] says with which status). In cluster mode, judged from what the Envoys on
/// every replica answered and reported.
async fn wait_for(
    State(s): State<AdminState>,
    Path(what): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Response {
    match wait_answer(&s, &what, &q).await {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => wait_refused(&e),
    }
}

/// How long `/wait` waits for another replica's facts.
const WAIT_FACTS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

async fn wait_answer(s: &AdminState, what: &str, q: &WaitQuery) -> Result<WaitAnswer, WaitError> {
    let what = what.parse::<WaitFor>()?;
    let plan = s.status.plan().ok_or(WaitError::NotLoaded)?;
    let mut facts = local_facts(s, &plan, &q.service);
    let http = crate::http_client::Client::new();
    let asked = s.status.other_admins().into_iter().map(|(name, admin)| {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("service", &q.service)
            .finish();
        let url = format!("{}/wait-facts?{query}", admin.trim_end_matches('/'));
        let http = &http;
        async move {
            let got = http
                .send(axum::http::Method::GET, &url, &[], WAIT_FACTS_TIMEOUT)
                .await
                .map_err(|e| e.to_string())
                .and_then(|a| {
                    if a.status.is_success() {
                        serde_json::from_slice::<crate::wait::Facts>(&a.body)
                            .map_err(|e| e.to_string())
                    } else {
                        Err(format!("answered {}", a.status))
                    }
                });
            (name, url, got)
        }
    });
    for (i, (name, url, got)) in futures::future::join_all(asked)
        .await
        .into_iter()
        .enumerate()
    {
        match got {
            Ok(theirs) => facts.merge(theirs.from_replica(i + 1)),
            Err(e) => {
                tracing::warn!(%url, "a wait cannot count replica {name}'s Envoys: {e}");
                facts.unheard.push(name);
            }
        }
    }
    let target = q.target.as_deref();
    match what {
        WaitFor::Drained => crate::wait::drained(&plan, &q.service, target, &facts),
        WaitFor::Healthy => crate::wait::healthy(&plan, &q.service, target, &facts),
    }
}

#[derive(Debug, serde::Deserialize)]
struct FactsQuery {
    service: String,
}

/// `GET /wait-facts?service=S`: what this replica's Envoys that hold S answered and reported,
/// for another replica's `/wait` (503 before a valid file is loaded).
async fn wait_facts(State(s): State<AdminState>, Query(q): Query<FactsQuery>) -> Response {
    match s.status.plan() {
        Some(plan) => Json(local_facts(&s, &plan, &q.service)).into_response(),
        None => wait_refused(&WaitError::NotLoaded),
    }
}

/// What this replica's own Envoys that hold `service` answered, and what they reported about
/// it, on this replica's wall clock.
fn local_facts(s: &AdminState, plan: &crate::reconcile::Plan, service: &str) -> crate::wait::Facts {
    use crate::wait::{Facts, LoadReport, Seen, StatsReport};
    let now = (std::time::Instant::now(), std::time::SystemTime::now());
    let load = s
        .telemetry
        .in_flight(now.0)
        .nodes
        .into_iter()
        .filter(|(_, n)| n.load_reporting)
        .map(|(node, n)| {
            let report = LoadReport {
                reported_at: n.reported_at.map(|t| Seen::local(t, now)),
                endpoints: n
                    .endpoints
                    .into_iter()
                    .filter(|e| e.service == service)
                    .collect(),
            };
            (node, report)
        })
        .collect();
    let versions = plan.services.get(service).map(|p| p.versions.keys());
    let stats = versions
        .into_iter()
        .flatten()
        .map(|version| {
            let id = crate::ids::ClusterId::new(service, version);
            let reports = s
                .telemetry
                .health(&id, now.0)
                .into_iter()
                .map(|h| StatsReport {
                    node: h.node,
                    reported_at: Seen::local(h.reported_at, now),
                    healthy: h.healthy,
                    total: h.total,
                    in_flight: h.in_flight,
                })
                .collect();
            (version.clone(), reports)
        })
        .collect();
    Facts {
        envoys: s.status.wait_envoys(service, now),
        load,
        stats,
        unheard: Vec::new(),
    }
}

// Refusals: the one place where what an operator asked and did not get becomes an HTTP
// status. An unknown service (or wait target) is 404, a command that does not apply now 409,
// bad input 400, no controller (or no config yet, for a wait) 503.

/// A rollout command that was not done; what the controller answered follows `SERVICE: `, as
/// what it did does.
fn command_refused(service: &str, e: &CommandError) -> Response {
    let (status, from_controller) = match e {
        CommandError::UnknownCommand(_) => (StatusCode::BAD_REQUEST, false),
        CommandError::UnknownService(_) => (StatusCode::NOT_FOUND, true),
        CommandError::NoRollout(_) | CommandError::NotNow { .. } | CommandError::NotLoaded => {
            (StatusCode::CONFLICT, true)
        }
        CommandError::ControllerNotRunning
        | CommandError::ControllerStopped
        | CommandError::NotLeading { .. } => (StatusCode::SERVICE_UNAVAILABLE, false),
    };
    let body = if from_controller {
        format!("{service}: {e}\n")
    } else {
        format!("{e}\n")
    };
    (status, body).into_response()
}

/// A wait that cannot be answered.
fn wait_refused(e: &WaitError) -> Response {
    let status = match e {
        // A name's requests in flight cannot be told apart: ask for something else.
        WaitError::UnknownWait(_) | WaitError::ByName(_) => StatusCode::BAD_REQUEST,
        WaitError::UnknownService(_)
        | WaitError::UnknownTarget { .. }
        | WaitError::NoEndpoint(_) => StatusCode::NOT_FOUND,
        WaitError::NotLoaded => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, format!("{e}\n")).into_response()
}

async fn config(State(s): State<AdminState>) -> Response {
    let published = s.published.borrow().clone();
    match published {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no valid config loaded yet\n",
        )
            .into_response(),
        Some(p) => match render::published_json(&p) {
            Ok(v) => Json(v).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        },
    }
}

/// Ready once a valid deployment file has been loaded. A replica that lost etcd is still
/// ready (it serves the last record it has) and says so.
async fn readyz(State(s): State<AdminState>) -> Response {
    if s.status.ready() {
        match s.status.cluster_trouble() {
            Some(why) => format!(
                "ready: serving the last record this replica has; nothing advances (no step, \
                 retirement or drain end) until etcd answers: {why}\n"
            )
            .into_response(),
            None => "ready\n".into_response(),
        }
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no valid config loaded yet\n",
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn only_loopback_or_the_token_may_mutate() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lo6: IpAddr = "::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let other: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(authorized(lo, None, None));
        assert!(authorized(lo6, None, Some("t")));
        assert!(authorized(mapped, None, None));
        assert!(!authorized(other, None, None));
        assert!(
            !authorized(other, Some("Bearer t"), None),
            "no token configured"
        );
        assert!(!authorized(other, Some("Bearer wrong"), Some("t")));
        assert!(
            !authorized(other, Some("t"), Some("t")),
            "not a bearer token"
        );
        assert!(authorized(other, Some("Bearer t"), Some("t")));
    }

    #[test]
    fn per_version_series_are_only_the_versions_of_the_file() {
        use crate::api::{ObservedReport, ObservedVersion, ServiceReport};
        let figures = |rps: f64| ObservedVersion {
            requests_per_second: rps,
            error_rate: Some(2.5),
            p99_ms: Some(41.0),
            ..Default::default()
        };
        let service = |observed: Option<ObservedReport>| ServiceReport {
            deployed: vec!["v1".into()],
            split: BTreeMap::from([("v1".into(), 100.0)]),
            observed,
            ..Default::default()
        };
        let report = StatusReport {
            file: "deploy.yaml".into(),
            state_file: None,
            config_version: None,
            last_reload: None,
            services: BTreeMap::from([
                (
                    "checkout".to_owned(),
                    service(Some(ObservedReport {
                        requests_per_second: 3.0,
                        // `gone` left the file and drains: Envoys still report it.
                        versions: BTreeMap::from([
                            ("v1".to_owned(), figures(2.0)),
                            ("gone".to_owned(), figures(1.0)),
                        ]),
                    })),
                ),
                // No Envoy reports on it: no series rather than zeros.
                ("quiet".to_owned(), service(None)),
            ]),
            nodes: Vec::new(),
            nodes_without_telemetry: Vec::new(),
            nodes_without_group: Vec::new(),
            groups: Default::default(),
            streams: None,
            cluster: None,
        };
        let out = version_figures(&report);
        assert_eq!(out.len(), 1, "{out:?}");
        let v1 = &out[0];
        assert_eq!(
            (v1.service.as_str(), v1.version.as_str()),
            ("checkout", "v1")
        );
        assert_eq!(v1.error_ratio, Some(0.025));
        assert_eq!(v1.p99_seconds, Some(0.041));
    }

    /// The middleware on a real router, with the peer address a socket would give.
    #[tokio::test]
    async fn reload_is_refused_to_other_hosts_without_the_token() {
        use axum::body::Body;
        use tower::ServiceExt as _;

        let Fixture {
            state,
            reloads: mut requests,
            commands: mut rollout_requests,
            ..
        } = fixture(Some("s3cret"));
        let call = |peer: &str, token: Option<&str>| {
            let mut req = axum::http::Request::post("/reload");
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let mut req = req.body(Body::empty()).unwrap();
            req.extensions_mut()
                .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
            router(state.clone()).oneshot(req)
        };
        assert_eq!(call("192.0.2.7:5000", None).await.unwrap().status(), 403);
        assert_eq!(
            call("192.0.2.7:5000", Some("nope")).await.unwrap().status(),
            403
        );
        assert!(
            requests.try_recv().is_err(),
            "a refused call must not reload"
        );
        assert_eq!(
            call("192.0.2.7:5000", Some("s3cret"))
                .await
                .unwrap()
                .status(),
            202
        );
        assert!(requests.try_recv().is_ok());
        assert_eq!(call("127.0.0.1:5000", None).await.unwrap().status(), 202);
        // Rollout commands are refused the same way, before anything reaches the controller.
        let rollout = |peer: &str, token: Option<&str>| {
            let mut req = axum::http::Request::post("/rollouts/checkout/abort");
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let mut req = req.body(Body::empty()).unwrap();
            req.extensions_mut()
                .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
            router(state.clone()).oneshot(req)
        };
        assert_eq!(rollout("192.0.2.7:5000", None).await.unwrap().status(), 403);
        assert_eq!(
            rollout("192.0.2.7:5000", Some("nope"))
                .await
                .unwrap()
                .status(),
            403
        );
        assert!(
            rollout_requests.try_recv().is_err(),
            "a refused command must not reach the controller"
        );
        // With the token, or from loopback, the command reaches the controller, which answers.
        for (peer, token) in [("192.0.2.7:5000", Some("s3cret")), ("[::1]:5000", None)] {
            let answered = tokio::spawn(rollout(peer, token));
            let request = rollout_requests.recv().await.expect("the command arrives");
            assert_eq!(request.service, "checkout");
            assert_eq!(request.command, RolloutCommand::Abort);
            let _ = request.reply.send(Ok("rolled back"));
            let response = answered.await.unwrap().unwrap();
            assert_eq!(response.status(), 200, "{peer} {token:?}");
        }
        // Reading is open to all.
        let mut get = axum::http::Request::get("/healthz")
            .body(Body::empty())
            .unwrap();
        get.extensions_mut()
            .insert(ConnectInfo("192.0.2.7:5000".parse::<SocketAddr>().unwrap()));
        assert_eq!(
            router(state.clone()).oneshot(get).await.unwrap().status(),
            200
        );
    }

    type Req = axum::http::Request<axum::body::Body>;

    /// An admin API whose controller and loader the test plays.
    struct Fixture {
        state: AdminState,
        /// What reaches the loader and the controller.
        reloads: mpsc::Receiver<()>,
        commands: mpsc::Receiver<CommandRequest>,
        /// To give it a plan.
        status: Arc<Status>,
    }

    fn fixture(token: Option<&str>) -> Fixture {
        let (reload, reloads) = mpsc::channel(1);
        let (commands, requests) = mpsc::channel::<CommandRequest>(4);
        let status = Arc::new(Status::new(
            "deploy.yaml".into(),
            Arc::new(crate::xds::clients::Clients::new(Default::default())),
            watch::channel(None).1,
            Default::default(),
        ));
        let telemetry = crate::telemetry::Telemetry::default();
        let state = AdminState {
            status: status.clone(),
            published: watch::channel(None).1,
            reload,
            commands,
            token: token.map(str::to_owned),
            telemetry: telemetry.clone(),
            dashboard: Feed::new(status.clone(), telemetry).0,
        };
        Fixture {
            state,
            reloads,
            commands: requests,
            status,
        }
    }

    /// The fixture's router called from loopback, what reaches the controller, and the status
    /// model.
    fn loopback() -> (
        impl Fn(Req) -> tower::util::Oneshot<Router, Req>,
        mpsc::Receiver<CommandRequest>,
        Arc<Status>,
    ) {
        let Fixture {
            state,
            commands,
            status,
            ..
        } = fixture(None);
        let call = move |mut req: Req| {
            use tower::ServiceExt as _;
            req.extensions_mut()
                .insert(ConnectInfo("127.0.0.1:5000".parse::<SocketAddr>().unwrap()));
            router(state.clone()).oneshot(req)
        };
        (call, commands, status)
    }

    async fn answer(response: Response) -> (u16, String) {
        use http_body_util::BodyExt as _;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn post(path: &str) -> Req {
        axum::http::Request::post(path)
            .body(axum::body::Body::empty())
            .unwrap()
    }

    fn get(path: &str) -> Req {
        axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn each_refused_command_has_its_status_and_says_why() {
        let (call, mut requests, _) = loopback();
        // Bad input never reaches the controller.
        assert_eq!(
            answer(call(post("/rollouts/checkout/promte")).await.unwrap()).await,
            (
                400,
                "unknown command \"promte\": use promote, abort, pause or resume\n".to_owned()
            )
        );
        assert!(requests.try_recv().is_err());
        let cases = [
            (
                "nope",
                Err(CommandError::UnknownService("nope".into())),
                404,
                "nope: no service \"nope\" in the deployment file\n",
            ),
            (
                "plain",
                Err(CommandError::NoRollout("plain".into())),
                409,
                "plain: service \"plain\" has no rollout (a canary with `steps`, or a switch with an `analysis`)\n",
            ),
            (
                "checkout",
                Err(CommandError::NotNow {
                    command: RolloutCommand::Pause,
                    state: crate::api::RolloutState::RolledBack,
                }),
                409,
                "checkout: cannot pause a rollout that is rolled back\n",
            ),
            (
                "checkout",
                Err(CommandError::NotLoaded),
                409,
                "checkout: no valid deployment file is loaded yet\n",
            ),
            ("checkout", Ok("paused"), 200, "checkout: paused\n"),
        ];
        for (service, reply, status, body) in cases {
            let answered = tokio::spawn(call(post(&format!("/rollouts/{service}/pause"))));
            let request = requests.recv().await.expect("the command arrives");
            assert_eq!(
                (request.service.as_str(), request.command),
                (service, RolloutCommand::Pause)
            );
            let _ = request.reply.send(reply);
            let response = answered.await.unwrap().unwrap();
            assert_eq!(answer(response).await, (status, body.to_owned()));
        }
        // The controller went away before it answered, or is not there at all.
        let answered = tokio::spawn(call(post("/rollouts/checkout/abort")));
        drop(requests.recv().await.expect("the command arrives"));
        assert_eq!(
            answer(answered.await.unwrap().unwrap()).await,
            (503, "the controller stopped\n".to_owned())
        );
        drop(requests);
        assert_eq!(
            answer(call(post("/rollouts/checkout/abort")).await.unwrap()).await,
            (503, "the controller is not running\n".to_owned())
        );
    }

    #[tokio::test]
    async fn each_refused_wait_has_its_status_and_says_why() {
        let (call, _requests, status) = loopback();
        let ask = async |path: &str| answer(call(get(path)).await.unwrap()).await;
        assert_eq!(
            ask("/wait/drained?service=s").await,
            (503, "no valid config loaded yet\n".to_owned())
        );
        let text = "\
listeners:
  - name: l
    address: 127.0.0.1:10000
    routes:
      - { match: { prefix: /named }, service: named }
      - { match: { prefix: / }, service: s }
services:
  s:
    versions:
      v1: { endpoints: [127.0.0.1:8081] }
    active: v1
  named:
    versions:
      v1: { endpoints: [backend.internal:8080] }
    active: v1
";
        let spec = crate::spec::parse("t.yaml", text).unwrap();
        let plan = crate::app::compile_plan("t.yaml", text).unwrap();
        status.set_served(crate::status::Served {
            spec: Arc::new(spec),
            plan: Arc::new(plan),
            state: Default::default(),
        });
        let cases = [
            (
                "/wait/drain?service=s",
                400,
                "cannot wait for \"drain\": use /wait/drained or /wait/healthy\n",
            ),
            (
                "/wait/drained?service=nope",
                404,
                "no service \"nope\" is served\n",
            ),
            (
                "/wait/healthy?service=s&target=v9",
                404,
                "\"v9\" is neither a version nor an endpoint of service \"s\" (its versions: v1)\n",
            ),
            (
                "/wait/drained?service=named&target=v1",
                400,
                "backend.internal:8080 is a name: Envoy reports requests in flight per resolved IP address, so they cannot be told apart; wait on the version instead\n",
            ),
        ];
        for (path, code, body) in cases {
            assert_eq!(ask(path).await, (code, body.to_owned()), "{path}");
        }
        // And an answer when there is one: with no Envoy, nothing holds the endpoint.
        let (code, body) = ask("/wait/healthy?service=s").await;
        assert_eq!(code, 200, "{body}");
        let answer: WaitAnswer = serde_json::from_str(&body).unwrap();
        assert!(answer.done, "{answer:?}");
    }
}
