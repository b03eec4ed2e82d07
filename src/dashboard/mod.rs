//! The live dashboard at the admin address's root `/`: one hand-written page (HTML, CSS and
//! JavaScript compiled into the binary, no build step, nothing fetched from elsewhere) fed by
//! server-sent events from `GET /events`.
//!
//! A sampler ([`Sampler::run`]) builds one frame a second, whoever watches: the status report with
//! its live figures ([`StatusReport::with_telemetry`]), the telemetry streams of
//! every Envoy, and one [`Point`] per version for the charts. The frame is serialized once and
//! shared by every open page, so a wall of dashboards costs no more than one.
//!
//! The last [`HISTORY`] points are kept here, in a bounded ring, rather than only in the
//! browser: a page opened during an incident shows the minutes before it at once, and a reload
//! loses nothing. The ring holds one point a second for the versions in the status (the file's
//! services, and versions Envoys still report while they drain), so it is bounded by the file.
//!
//! Reading is open, like every read of the admin API; the page changes nothing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{Stream, StreamExt as _, stream};
use serde::Serialize;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use crate::api::StatusReport;
use crate::status::Status;
use crate::telemetry::Telemetry;
use crate::telemetry::report::{Dropped, NodeTelemetry};

/// Points kept for the charts: five minutes at one a second.
pub const HISTORY: usize = 300;
/// How often a frame is made.
pub const PERIOD: Duration = Duration::from_secs(1);

const INDEX_HTML: &str = include_str!("index.html");
const DASHBOARD_CSS: &str = include_str!("dashboard.css");
const DASHBOARD_JS: &str = include_str!("dashboard.js");

/// The page allows nothing but its own script, style and event stream: no CDN can slip in,
/// and text from a NACK or a reload error can never run as code.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// One version's figures at one second, for the charts: requests per second, error rate in
/// percent and p99 latency in milliseconds, each over the 10 s before (a moving window, so the
/// lines are smooth and lag a change by up to 10 s); error rate and latency are `None` without
/// requests.
pub type Figures = [Option<f64>; 3];

/// The charts' figures at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Milliseconds since the Unix epoch.
    pub t: u64,
    /// By service, then version.
    pub v: BTreeMap<String, BTreeMap<String, Figures>>,
}

impl Point {
    /// The figures of every version the report observes (none without telemetry).
    pub fn of(report: &StatusReport, t: u64) -> Point {
        let v = report
            .services
            .iter()
            .filter_map(|(name, s)| {
                let observed = s.observed.as_ref()?;
                let versions = observed
                    .versions
                    .iter()
                    .map(|(v, o)| {
                        (
                            v.clone(),
                            [Some(o.requests_per_second), o.error_rate, o.p99_ms],
                        )
                    })
                    .collect();
                Some((name.clone(), versions))
            })
            .collect();
        Point { t, v }
    }
}

/// The last [`HISTORY`] points, oldest first.
#[derive(Debug, Default)]
pub struct History {
    points: VecDeque<Point>,
}

impl History {
    pub fn push(&mut self, point: Point) {
        if self.points.len() == HISTORY {
            self.points.pop_front();
        }
        self.points.push_back(point);
    }

    pub fn points(&self) -> impl Iterator<Item = &Point> {
        self.points.iter()
    }
}

/// What `/events` sends every second.
#[derive(Debug, Serialize)]
struct Frame<'a> {
    /// When the frame was made (RFC 3339): the page shows ages relative to it, not to the
    /// clock of the machine it runs on.
    at: String,
    status: &'a StatusReport,
    telemetry: TelemetrySummary<'a>,
    point: &'a Point,
}

/// The part of `/telemetry` the page shows besides the status: every Envoy's streams.
#[derive(Debug, Serialize)]
struct TelemetrySummary<'a> {
    nodes: &'a [NodeTelemetry],
    dropped: Dropped,
}

#[derive(Debug, Serialize)]
struct HistoryMessage<'a> {
    period_ms: u64,
    points: Vec<&'a Point>,
}

/// The frames and the history, shared by the sampler and every open page. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Feed {
    /// The latest frame as JSON; empty before the first.
    frames: watch::Receiver<Arc<str>>,
    history: Arc<Mutex<History>>,
}

/// Makes the frames; see [`Sampler::run`].
#[derive(Debug)]
pub struct Sampler {
    frames: watch::Sender<Arc<str>>,
    history: Arc<Mutex<History>>,
    status: Arc<Status>,
    telemetry: Telemetry,
}

impl Feed {
    /// A feed of `status` and `telemetry`, and the sampler that must run for it to have frames.
    pub fn new(status: Arc<Status>, telemetry: Telemetry) -> (Feed, Sampler) {
        let (tx, rx) = watch::channel(Arc::from(""));
        let history = Arc::new(Mutex::new(History::default()));
        (
            Feed {
                frames: rx,
                history: history.clone(),
            },
            Sampler {
                frames: tx,
                history,
                status,
                telemetry,
            },
        )
    }

    fn history_json(&self) -> String {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let message = HistoryMessage {
            period_ms: u64::try_from(PERIOD.as_millis()).unwrap_or(u64::MAX),
            points: history.points().collect(),
        };
        // Plain data: serializing it cannot fail.
        serde_json::to_string(&message).unwrap_or_default()
    }
}

impl Sampler {
    /// One frame a second, until `closing` completes or every [`Feed`] is dropped. Returning
    /// drops the sender, which ends every open event stream: a server shutting down has no
    /// connection left open by a dashboard.
    pub async fn run(self, closing: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut closing = std::pin::pin!(closing);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = &mut closing => return,
            }
            let frame = self.sample(Instant::now(), SystemTime::now());
            if self.frames.send(frame).is_err() {
                return;
            }
        }
    }

    /// The frame at `now` (`wall` is the same moment on the wall clock); adds its point to the
    /// history.
    pub fn sample(&self, now: Instant, wall: SystemTime) -> Arc<str> {
        let (report, telemetry) = self.status.live(&self.telemetry, now);
        let t = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let point = Point::of(&report, t);
        let frame = Frame {
            at: humantime::format_rfc3339_millis(wall).to_string(),
            status: &report,
            telemetry: TelemetrySummary {
                nodes: &telemetry.nodes,
                dropped: telemetry.dropped,
            },
            point: &point,
        };
        let json = serde_json::to_string(&frame).unwrap_or_default();
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(point);
        Arc::from(json)
    }
}

/// `GET /` (the page), its script and style, and `GET /events`.
pub fn router(feed: Feed) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/dashboard.css",
            get(|| async { page(DASHBOARD_CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/dashboard.js",
            get(|| async { page(DASHBOARD_JS, "text/javascript; charset=utf-8") }),
        )
        .route("/events", get(events))
        .with_state(feed)
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, content_type),
            // Asked again after an upgrade of cutover, so page and events always match.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

/// Server-sent events: first `history` (the ring), then the latest frame and every new one as
/// a plain message.
async fn events(State(feed): State<Feed>) -> Sse<impl Stream<Item = Result<Event, axum::Error>>> {
    let history = Event::default().event("history").data(feed.history_json());
    let frames = WatchStream::new(feed.frames.clone())
        .filter(|frame| std::future::ready(!frame.is_empty()))
        .map(|frame| Ok(Event::default().data(&*frame)));
    Sse::new(stream::once(async { Ok(history) }).chain(frames)).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ObservedReport, ObservedVersion, ServiceReport};

    fn report(rps: f64) -> StatusReport {
        let observed = ObservedReport {
            requests_per_second: rps,
            versions: BTreeMap::from([(
                "v1".to_owned(),
                ObservedVersion {
                    requests_per_second: rps,
                    error_rate: Some(1.5),
                    ..Default::default()
                },
            )]),
        };
        StatusReport {
            file: "deploy.yaml".into(),
            state_file: None,
            config_version: None,
            last_reload: None,
            services: BTreeMap::from([
                (
                    "checkout".to_owned(),
                    ServiceReport {
                        observed: Some(observed),
                        ..Default::default()
                    },
                ),
                // No telemetry: no point, rather than a line at zero.
                ("quiet".to_owned(), ServiceReport::default()),
            ]),
            nodes: Vec::new(),
            nodes_without_telemetry: Vec::new(),
            nodes_without_group: Vec::new(),
            groups: Default::default(),
            streams: None,
            cluster: None,
        }
    }

    #[test]
    fn a_point_holds_every_observed_version_and_nothing_unknown() {
        let p = Point::of(&report(4.0), 7);
        assert_eq!(p.t, 7);
        assert_eq!(p.v["checkout"]["v1"], [Some(4.0), Some(1.5), None]);
        assert!(!p.v.contains_key("quiet"));
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"t":7,"v":{"checkout":{"v1":[4.0,1.5,null]}}}"#
        );
    }

    fn feed() -> (Feed, Sampler) {
        let status = Arc::new(Status::new(
            "deploy.yaml".into(),
            Arc::new(crate::xds::clients::Clients::new(Default::default())),
            watch::channel(None).1,
            Default::default(),
        ));
        Feed::new(status, Telemetry::default())
    }

    async fn get(feed: &Feed, path: &str) -> axum::response::Response {
        use tower::ServiceExt as _;
        let request = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        router(feed.clone()).oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn the_page_and_its_assets_come_from_the_binary_and_may_load_nothing_else() {
        let (feed, _sampler) = feed();
        for (path, content_type, needle) in [
            ("/", "text/html; charset=utf-8", "src=\"dashboard.js\""),
            (
                "/dashboard.js",
                "text/javascript; charset=utf-8",
                "new EventSource('events')",
            ),
            ("/dashboard.css", "text/css; charset=utf-8", ".service"),
        ] {
            let response = get(&feed, path).await;
            assert_eq!(response.status(), 200, "{path}");
            let headers = response.headers();
            assert_eq!(headers[header::CONTENT_TYPE], content_type, "{path}");
            let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(csp.starts_with("default-src 'none'"), "{path}: {csp}");
            use http_body_util::BodyExt as _;
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let text = String::from_utf8(body.to_vec()).unwrap();
            assert!(text.contains(needle), "{path}");
            // Nothing from another host: no URL with a scheme in the page or its assets (the
            // SVG namespace is a name, never fetched).
            let text = text.replace("'http://www.w3.org/2000/svg'", "");
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn events_send_the_history_then_every_frame() {
        use http_body_util::BodyExt as _;
        let (feed, sampler) = feed();
        let now = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        // Two samples before the page connects: both are in its history.
        sampler.frames.send(sampler.sample(now, wall)).unwrap();
        sampler
            .frames
            .send(sampler.sample(now, wall + PERIOD))
            .unwrap();
        let response = get(&feed, "/events").await;
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        let mut body = response.into_body();
        let mut next = async || {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("an event within 5 s")
                .expect("the stream goes on")
                .unwrap();
            String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
        };
        let history = next().await;
        assert!(history.starts_with("event: history\ndata: {"), "{history}");
        assert!(
            history.contains(r#""points":[{"t":1800000000000,"v":{}},{"t":1800000001000,"v":{}}]"#),
            "{history}"
        );
        let latest = next().await;
        assert!(
            latest.starts_with("data: {\"at\":\"2027-01-15T08:00:01.000Z\""),
            "{latest}"
        );
        assert!(
            latest.contains(r#""status":{"file":"deploy.yaml""#),
            "{latest}"
        );
        // A new frame reaches an open page.
        sampler
            .frames
            .send(sampler.sample(now, wall + 2 * PERIOD))
            .unwrap();
        let newer = next().await;
        assert!(newer.contains("08:00:02.000Z"), "{newer}");
    }

    #[test]
    fn history_keeps_the_last_five_minutes() {
        let mut h = History::default();
        for t in 0..(HISTORY as u64 + 25) {
            h.push(Point::of(&report(1.0), t));
        }
        let kept: Vec<u64> = h.points().map(|p| p.t).collect();
        assert_eq!(kept.len(), HISTORY);
        assert_eq!(kept[0], 25);
        assert_eq!(*kept.last().unwrap(), HISTORY as u64 + 24);
    }
}
