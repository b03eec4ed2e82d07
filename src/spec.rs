//! The deployment file: what serde reads (`raw`) and what is known to be consistent ([`Spec`]).
//!
//! [`parse_bytes`] (the file's bytes as read from disk) and [`parse`] (its text) are the only
//! ways to get a [`Spec`]: they read YAML, then validate the whole file and return *every*
//! problem at once, each with its `file:line:column`. Nothing downstream re-checks what is
//! validated here. Every file is held to the [`Limits`] on its size and on what it describes.
//! This module does no I/O: callers hand it the file's bytes (or text) and name.

mod address;
mod hosts;
mod incremental;
mod limits;
mod policy;
mod proxyless;
mod raw;
mod routes;
mod tcp;
mod tls;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::access::Access;
use crate::node::{GroupId, NodeGroups, Selector};

pub use address::{AddressError, EndpointAddress, HostPort};
pub use incremental::{Reparser, Reread};
pub use limits::{Limit, Limits, LimitsError};
pub use proxyless::GRPC_RETRY_ON;
/// The file as written, before validation: its JSON Schema is the file's (`cutover schema`).
pub use raw::RawSpec;
pub use tls::{PEM_FILE_BYTES, PemRead, load_pem_files, pem_paths};
pub use validate::{parse, parse_bytes, parse_bytes_with, parse_with};

/// A validated deployment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Listeners in file order (their order does not matter to Envoy; names are unique).
    pub listeners: Vec<Listener>,
    /// Services by name, sorted so that everything derived from them is deterministic.
    pub services: BTreeMap<String, Service>,
    /// Which Envoys get which listeners, in match order; empty: every Envoy gets everything
    /// (the one group [`crate::node::GroupId::all`]).
    pub groups: Vec<Group>,
    /// Which client certificate may be which Envoy (enforced with mutual TLS only).
    pub access: Access,
    /// The PEM files the listeners' `tls` names, by path as written: empty after [`parse`],
    /// filled and checked by [`load_pem_files`].
    pub pem_files: BTreeMap<String, Arc<str>>,
}

/// A group of Envoys (see [`crate::node`]): the nodes it takes and the listeners they get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub selector: Selector,
    /// Names of the file's listeners, in file order of the group, no duplicates.
    pub listeners: Vec<String>,
}

impl Spec {
    /// The file's groups as the xDS server matches nodes against them.
    pub fn node_groups(&self) -> NodeGroups {
        NodeGroups::new(
            self.groups
                .iter()
                .map(|g| (GroupId::named(&g.name), g.selector.clone()))
                .collect(),
        )
    }

    /// The services the routes of `listener` name.
    pub fn routed_by(&self, listener: &str) -> impl Iterator<Item = &str> {
        self.listeners
            .iter()
            .filter(move |l| l.name == listener)
            .flat_map(Listener::all_routes)
            .filter_map(Route::service)
    }

    /// The proxyless listeners (see [`ListenerKind::Proxyless`]) whose routes name `service`.
    pub fn proxyless_routing(&self, service: &str) -> impl Iterator<Item = &str> {
        self.listeners
            .iter()
            .filter(|l| l.kind == ListenerKind::Proxyless)
            .filter(move |l| l.routes.iter().any(|r| r.service() == Some(service)))
            .map(|l| l.name.as_str())
    }

    /// The TCP listeners (see [`ListenerKind::Tcp`]) in front of `service`.
    pub fn tcp_fronting(&self, service: &str) -> impl Iterator<Item = &str> {
        self.listeners
            .iter()
            .filter(|l| matches!(l.kind, ListenerKind::Tcp(_)))
            .filter(move |l| l.routes.iter().any(|r| r.service() == Some(service)))
            .map(|l| l.name.as_str())
    }

    /// The groups whose listeners route to `service` (none when the file has no groups).
    pub fn groups_routing(&self, service: &str) -> std::collections::BTreeSet<String> {
        self.groups
            .iter()
            .filter(|g| {
                g.listeners
                    .iter()
                    .any(|l| self.routed_by(l).any(|s| s == service))
            })
            .map(|g| g.name.clone())
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub kind: ListenerKind,
    /// Routes in match order: the first route whose match fits a request wins. With
    /// `hosts`, those of requests for any other host. A TCP listener has one, to its service
    /// (its match unused), so that what asks which services a listener leads to need not know
    /// the listener's kind.
    pub routes: Vec<Route>,
    /// Virtual hosts, by host name (Envoy listeners only).
    pub hosts: Vec<Host>,
    /// What answers the requests no route matches (Envoy listeners only).
    pub redirect: Option<Redirect>,
    /// TLS termination (Envoy listeners only).
    pub tls: Option<ListenerTls>,
}

impl Listener {
    /// Every route of the listener, of every host.
    pub fn all_routes(&self) -> impl Iterator<Item = &Route> {
        self.routes
            .iter()
            .chain(self.hosts.iter().flat_map(|h| &h.routes))
    }
}

/// A virtual host: the routes of requests for some host names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Lowercase; `*.example.com` for any name under the domain. Unique across the listener.
    pub names: Vec<String>,
    pub routes: Vec<Route>,
}

/// A redirect for every request a listener's routes do not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirect {
    /// To the same host and path over HTTPS (301).
    Https,
}

/// TLS termination on a listener: certificates chosen by SNI, sent to Envoy over SDS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// In file order. Server names are unique across them; at most one has none (the default).
    pub certificates: Vec<TlsCertificate>,
    pub min_version: TlsVersion,
    /// The CA client certificates must be signed by (mutual TLS), if any.
    pub client_ca: Option<FileRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCertificate {
    pub cert: FileRef,
    pub key: FileRef,
    /// Exact names and `*.` wildcards, lowercase; empty: the default certificate.
    pub server_names: Vec<String>,
}

impl TlsCertificate {
    /// What the certificate is called in Envoy (an SDS secret name): its listener and first
    /// server name, so that it keeps its name when its files move or the list is reordered,
    /// and new content under the name is a rotation, not a listener change.
    pub fn secret_name(&self, listener: &str) -> String {
        let first = self.server_names.first().map_or("default", String::as_str);
        format!("{listener}/{first}")
    }
}

/// The oldest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// A file the deployment file names, and where it names it (for messages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// As written: relative paths are relative to the deployment file's directory.
    pub path: String,
    pub line: u64,
    pub column: u64,
}

/// Who serves a listener's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Envoy, on this address.
    Envoy(SocketAddr),
    /// gRPC's own xDS clients (gRFC A27): the listener's name is the `xds:///` target they
    /// dial, and the services it routes to use only what those clients implement (checked by
    /// validation).
    Proxyless,
    /// Envoy, on this address, as a TCP proxy to the one service its only route names (see
    /// [`crate::translate`]'s `tcp`), which uses only what a TCP proxy can (checked by
    /// validation).
    Tcp(SocketAddr),
}

impl ListenerKind {
    pub fn address(self) -> Option<SocketAddr> {
        match self {
            ListenerKind::Envoy(a) | ListenerKind::Tcp(a) => Some(a),
            ListenerKind::Proxyless => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub matcher: PathMatch,
    pub target: RouteTarget,
    /// Headers added to and removed from requests and responses.
    pub headers: HeaderEdits,
}

impl Route {
    /// The service that answers, if one does.
    pub fn service(&self) -> Option<&str> {
        match &self.target {
            RouteTarget::Service { name, .. } => Some(name),
            RouteTarget::Respond { .. } => None,
        }
    }
}

/// Who answers a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// A service, by its strategy, rules and preview.
    Service { name: String, rewrite: Rewrite },
    /// Envoy itself.
    Respond { status: u16, body: String },
}

/// A path prefix and host rewrite on the way to a service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rewrite {
    pub prefix: Option<String>,
    pub host: Option<String>,
}

/// Headers set on and removed from requests and responses, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderEdits {
    pub request_add: Vec<(String, String)>,
    pub request_remove: Vec<String>,
    pub response_add: Vec<(String, String)>,
    pub response_remove: Vec<String>,
}

/// How a route matches the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Versions by name; each becomes one Envoy cluster named `service/version`.
    pub versions: BTreeMap<String, Version>,
    pub strategy: Strategy,
    /// A version that receives a copy of (a share of) the requests; its responses are discarded.
    pub mirror: Option<Mirror>,
    /// User groups sent to a chosen version, tried in order before the strategy applies.
    pub rules: Vec<Rule>,
    pub policy: Policy,
    /// Told of every step, promotion and rollback of the service's rollout.
    pub notify: Vec<Webhook>,
}

impl Service {
    /// The version requests go to when nothing else applies: the active version, the primary,
    /// or a canary's stable version.
    pub fn default_version(&self) -> &str {
        match &self.strategy {
            Strategy::BlueGreen { active, .. } | Strategy::RedBlack { active, .. } => active,
            Strategy::Shadow { primary } => primary,
            Strategy::Canary { stable, .. } => stable,
        }
    }

    /// Versions that get requests: they answer (the strategy), get copies (the mirror) or a
    /// rule's group.
    pub fn receiving_versions(&self) -> std::collections::BTreeSet<&str> {
        let mut out: std::collections::BTreeSet<&str> =
            self.strategy.serving_versions().into_iter().collect();
        out.extend(self.mirror.iter().map(|m| m.version.as_str()));
        out.extend(self.rules.iter().map(|r| r.version.as_str()));
        out
    }
}

/// Which versions of a service get traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// One version gets all traffic (a cluster swap); the others stay warm for rollback.
    BlueGreen {
        active: String,
        preview: Option<Preview>,
        /// Watches a new active version after a switch; switches back if it fails.
        analysis: Option<Analysis>,
    },
    /// Only the active version is deployed; after a switch the previous one is kept for
    /// rollback until every Envoy answered the switch and `grace` passed (see
    /// [`crate::reconcile::state`]).
    RedBlack {
        active: String,
        grace: Duration,
        analysis: Option<Analysis>,
    },
    /// `weight` of the requests go to `canary`, the rest to `stable`. With a `rollout`, the
    /// weight changes over time (see [`crate::reconcile::rollout`]) and `weight` is the first
    /// step's (0 when it is a mirror or match step).
    Canary {
        stable: String,
        canary: String,
        weight: Percent,
        sticky: Option<Sticky>,
        rollout: Option<Rollout>,
    },
    /// `primary` answers; the service's mirror gets copies.
    Shadow { primary: String },
}

impl Strategy {
    /// The versions that receive (answered) traffic, in a stable order.
    pub fn serving_versions(&self) -> Vec<&str> {
        match self {
            Strategy::BlueGreen { active, .. } | Strategy::RedBlack { active, .. } => {
                vec![active.as_str()]
            }
            Strategy::Canary {
                stable,
                canary,
                weight,
                ..
            } => match weight.ppm() {
                0 => vec![stable.as_str()],
                Percent::MILLION => vec![canary.as_str()],
                _ => vec![stable.as_str(), canary.as_str()],
            },
            Strategy::Shadow { primary } => vec![primary.as_str()],
        }
    }

    pub fn preview(&self) -> Option<&Preview> {
        match self {
            Strategy::BlueGreen { preview, .. } => preview.as_ref(),
            _ => None,
        }
    }

    /// The analysis of an automated rollout or of a switch, if the file asks for one.
    pub fn analysis(&self) -> Option<&Analysis> {
        match self {
            Strategy::BlueGreen { analysis, .. } | Strategy::RedBlack { analysis, .. } => {
                analysis.as_ref()
            }
            Strategy::Canary { rollout, .. } => rollout.as_ref()?.analysis.as_ref(),
            Strategy::Shadow { .. } => None,
        }
    }
}

/// An automated canary rollout: the canary's weights in turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// Mirror and match steps first, then strictly increasing weights; each held for its
    /// pause once every Envoy has it.
    pub steps: Vec<Step>,
    /// The time at a step that has no pause of its own (also for a weight no step has, after
    /// the steps were edited).
    pub interval: Duration,
    pub analysis: Option<Analysis>,
    /// Asked before each step and before promotion; the step holds until all answer 2xx.
    pub confirm: Vec<Webhook>,
    /// Asked once before the canary gets a request; a failure fails the rollout.
    pub pre_rollout: Vec<Webhook>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub kind: StepKind,
    pub pause: Duration,
}

/// What the canary gets during a step. Mirror and match steps come before the weights: the
/// canary is judged on copies, then on a chosen group, before any other user sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// This share of every request; users get its answers.
    Weight(Percent),
    /// A copy of this share of the requests; its answers are thrown away (stable answers).
    Mirror(Percent),
    /// Only the requests meeting every condition (e.g. internal testers); users get its answers.
    Match(Vec<Condition>),
}

impl StepKind {
    /// The canary's share of the users' requests during the step: 0 before the weights.
    pub fn weight_ppm(&self) -> u32 {
        match self {
            StepKind::Weight(w) => w.ppm(),
            StepKind::Mirror(_) | StepKind::Match(_) => 0,
        }
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepKind::Weight(w) => write!(f, "{w}"),
            StepKind::Mirror(p) => write!(f, "a mirror of {p}"),
            StepKind::Match(conditions) => {
                f.write_str("requests with ")?;
                for (i, c) in conditions.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" and ")?;
                    }
                    write!(f, "{c}")?;
                }
                Ok(())
            }
        }
    }
}

impl Rollout {
    /// Where `current` is in the steps, if they have it (they may have been edited since).
    pub fn position(&self, current: &StepKind) -> Option<usize> {
        self.steps.iter().position(|s| &s.kind == current)
    }

    /// The time at the step `current`, or the default time if no step is it (the steps were
    /// edited since).
    pub fn pause_at(&self, current: &StepKind, default: Duration) -> Duration {
        self.position(current)
            .map_or(default, |i| self.steps[i].pause)
    }

    /// The step after `current`: the next one in the list; when the list no longer has
    /// `current` (edited), the first weight above its weight (0%: the first step).
    pub fn next_step(&self, current: &StepKind) -> Option<&StepKind> {
        if let Some(i) = self.position(current) {
            return self.steps.get(i + 1).map(|s| &s.kind);
        }
        let weight = current.weight_ppm();
        if *current == StepKind::Weight(Percent::ZERO) {
            return self.steps.first().map(|s| &s.kind);
        }
        self.steps
            .iter()
            .map(|s| &s.kind)
            .find(|k| matches!(k, StepKind::Weight(w) if w.ppm() > weight))
    }
}

/// Checks of a version's figures (and webhooks) during a rollout or after a switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// Time between checks.
    pub interval: Duration,
    pub max_error_rate: Option<Percent>,
    pub max_p99_latency: Option<Duration>,
    /// Fewer requests in a check's figures: the check waits.
    pub min_requests: u64,
    /// Failed checks that roll back.
    pub failure_limit: u32,
    /// Waiting for traffic longer than this fails.
    pub max_wait: Option<Duration>,
    /// Blue-green and red-black: how long the new version is watched after a switch.
    pub window: Duration,
    /// Blue-green with a preview route: how long the new version's preview traffic is watched
    /// before the switch.
    pub before_switch: Option<Duration>,
    /// Canary only: limits relative to stable's figures in the same window.
    pub baseline: Option<BaselineLimits>,
    /// A step not ended this long after it began rolls back.
    pub progress_deadline: Option<Duration>,
    pub webhooks: Vec<Webhook>,
}

/// A canary judged against stable: each limit fails a check only when the difference is over
/// it *and* its statistical test finds the canary worse at `confidence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaselineLimits {
    /// Percentage points above stable's error rate.
    pub max_error_rate_increase: Option<Percent>,
    /// Canary p99 over stable p99, in thousandths (1500 is 1.5 times).
    pub max_p99_ratio_milli: Option<u32>,
    pub confidence: Percent,
}

impl BaselineLimits {
    /// The largest p-value that counts as "the canary is worse".
    pub fn significance(&self) -> f64 {
        1.0 - self.confidence.as_f64() / 100.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    pub timeout: Duration,
    pub format: WebhookFormat,
}

/// What a webhook is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebhookFormat {
    /// The JSON description of the check or event.
    #[default]
    Json,
    /// `{"text": ...}`, one line for a chat channel (Slack, Mattermost incoming webhooks).
    Slack,
}

/// Requests carrying `header: <version>` go to that version, so it can be tried before a switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    pub header: String,
}

/// Keeps each user on the version they first got, with a cookie set by Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sticky {
    pub cookie: String,
    pub ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub version: String,
    pub percent: Percent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Every condition must hold.
    pub conditions: Vec<Condition>,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    Header {
        name: String,
        value: String,
    },
    Cookie {
        name: String,
        value: String,
    },
    Query {
        name: String,
        value: String,
    },
    Prefix(String),
    /// cutover's own, for sticky canaries: the request's bucket is below `below` of
    /// [`BUCKETS`]. A bucket is the first three hex digits of a random id: the sticky cookie's
    /// value, or the `x-request-id` Envoy gives a request that has no cookie yet.
    Bucket {
        from: BucketFrom,
        below: u16,
    },
}

/// How many sticky buckets users are spread over: a canary's share is exact to 1/4096.
pub const BUCKETS: u16 = 4096;

/// Where a request's sticky bucket is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BucketFrom {
    /// The sticky cookie of a returning user.
    Cookie(String),
    /// The id Envoy generates for every request (a random UUID): a first visit.
    RequestId,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Header { name, value } => write!(f, "header {name}: {value}"),
            Condition::Cookie { name, value } => write!(f, "cookie {name}={value}"),
            Condition::Query { name, value } => write!(f, "query {name}={value}"),
            Condition::Prefix(p) => write!(f, "path prefix {p}"),
            Condition::Bucket { from, below } => {
                let from = match from {
                    BucketFrom::Cookie(name) => format!("cookie {name}"),
                    BucketFrom::RequestId => "x-request-id".to_owned(),
                };
                if *below >= BUCKETS {
                    return write!(f, "any sticky bucket ({from})");
                }
                let share = f64::from(*below) * 100.0 / f64::from(BUCKETS);
                write!(
                    f,
                    "sticky bucket ({from}) below {below} of {BUCKETS} ({share:.1}%)"
                )
            }
        }
    }
}

/// A share of requests in parts per million, so that 0.5% is exact and hashing is stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Percent(u32);

impl Percent {
    pub const MILLION: u32 = 1_000_000;
    pub const ZERO: Percent = Percent(0);

    pub fn from_ppm(ppm: u32) -> Option<Percent> {
        (ppm <= Self::MILLION).then_some(Percent(ppm))
    }

    /// Parses `10`, `0.5`, `10%` or `0.5%` (a percentage from 0 to 100, at most 4 decimals).
    pub fn parse(text: &str) -> Option<Percent> {
        let t = text.trim().trim_end_matches('%').trim();
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        if int.is_empty() && frac.is_empty() || frac.len() > 4 {
            return None;
        }
        if !int.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let int: u32 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let frac: u32 = format!("{frac:0<4}").parse().ok()?;
        Self::from_ppm(int.checked_mul(10_000)?.checked_add(frac)?)
    }

    pub fn ppm(self) -> u32 {
        self.0
    }

    /// As a fraction from 0 to 100.
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.as_f64())
    }
}

/// How Envoy spreads requests over a version's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum LoadBalancing {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
    RingHash(HashOn),
    Maglev(HashOn),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashOn {
    Header(String),
    Cookie(String),
    SourceIp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutlierDetection {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: Option<u32>,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub success_rate: Option<SuccessRate>,
    pub failure_percentage: Option<FailurePercentage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuccessRate {
    pub minimum_hosts: u32,
    pub request_volume: u32,
    /// Envoy's unit: the factor times 1000.
    pub stdev_factor_milli: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailurePercentage {
    pub threshold: u32,
    pub minimum_hosts: u32,
    pub request_volume: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// `None` means a TCP connect check, or gRPC's with `grpc`.
    pub path: Option<String>,
    /// gRPC's health service (`protocol: grpc` services).
    #[serde(default)]
    pub grpc: bool,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub wait_for_first_check: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retries {
    pub attempts: u32,
    pub on: Vec<String>,
    pub per_try_timeout: Option<Duration>,
}

/// Per-service traffic policy; every field has the default documented in the README.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub load_balancing: LoadBalancing,
    pub outlier_detection: Option<OutlierDetection>,
    pub health_check: Option<HealthCheck>,
    pub slow_start: Option<Duration>,
    pub timeout: Option<Duration>,
    pub connect_timeout: Duration,
    pub retries: Retries,
    pub panic_threshold: Percent,
    // Defaults: what a policy stored before these keys existed meant.
    #[serde(default)]
    pub protocol: Protocol,
    /// WebSocket upgrades pass through the service's routes.
    #[serde(default)]
    pub websocket: bool,
    /// TLS to the endpoints.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
}

/// The protocol Envoy speaks to a service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http1,
    Http2,
    /// HTTP/2, with gRPC's health checks and status codes.
    Grpc,
}

/// TLS from Envoy to a service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamTls {
    /// Sent as SNI; with `ca`, the name the endpoints' certificate must carry.
    pub sni: Option<String>,
    /// Verified against this CA (its content in [`Spec::pem_files`]); `None`: not verified.
    pub ca: Option<FileRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// An IP address, or a name Envoy resolves (the version becomes a DNS cluster).
    pub address: EndpointAddress,
    /// Relative load-balancing weight (weighted round robin); `None` is Envoy's default of 1.
    pub weight: Option<u32>,
    /// Sent as `DRAINING`: no new requests, in-flight ones finish.
    pub drain: bool,
}

impl Spec {
    /// The Envoy cluster name of one version of a service: stable and readable.
    pub fn cluster_name(service: &str, version: &str) -> String {
        format!("{service}/{version}")
    }
}

/// One problem in a deployment file, at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

/// Everything wrong with a deployment file; displays one `file:line:column: message` per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: {}", self.file, p.line, p.column, p.message)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod input_tests;
#[cfg(test)]
mod tests;
