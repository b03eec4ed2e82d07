//! The admin API's language: the types `GET /status` and `GET /wait/...` answer, the verbs of
//! `POST /rollouts/{service}/{command}` and `/wait/{what}`, and why a command is refused.
//!
//! The server builds these ([`crate::status`], [`crate::wait`], [`crate::admin`]) and `cutover
//! status`, `wait` and the rollout commands read the very same types ([`crate::cli::status`]),
//! so a field or a state is written down once. It depends on nothing else of cutover, and it
//! knows nothing of HTTP: [`crate::admin`] says which status each refusal is.
//!
//! States are enums spelled on the wire as they always were (a snapshot test in `status.rs`
//! pins the JSON of `/status`). Reading is lenient on purpose, for a `cutover status` of one
//! release talking to a cutover of another: every field has a default when it is missing, and
//! a state this release does not know reads as `Unknown` instead of failing the whole report.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A state as text on the wire: one table gives each variant its spelling, and `Display`,
/// `FromStr` and serde all follow it. Every such enum also has `Unknown`, the default: what a
/// missing field or a spelling of another release reads as (the server never sends it).
macro_rules! wire_state {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// Missing, or a state of another release: shown as unknown, never sent.
            #[default]
            Unknown,
        }

        impl $name {
            /// Every state the server sends.
            pub const ALL: &[$name] = &[$( $name::$variant, )+];

            /// Its spelling on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                    $name::Unknown => "unknown",
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = std::convert::Infallible;

            /// Never fails: what this release does not know is `Unknown`.
            fn from_str(text: &str) -> Result<$name, Self::Err> {
                Ok(match text {
                    $( $text => $name::$variant, )+
                    _ => $name::Unknown,
                })
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let Ok(state) = String::deserialize(d)?.parse();
                Ok(state)
            }
        }
    };
}

wire_state! {
    /// A service's strategy, as the file names it.
    pub enum Strategy {
        BlueGreen = "blue-green",
        RedBlack = "red-black",
        Canary = "canary",
        Shadow = "shadow",
    }
}

wire_state! {
    /// Whether an Envoy reports what it sees to cutover.
    pub enum TelemetryState {
        Reporting = "reporting",
        /// Its telemetry streams went silent: its figures are left out.
        Stale = "stale",
        /// Started from a bootstrap without the stats sink and load reports: its traffic is
        /// unknown, not zero.
        Absent = "none",
    }
}

wire_state! {
    /// Why an endpoint or a version gets no new requests.
    pub enum DrainReason {
        /// `drain: true` in the file: until the file changes.
        Marked = "marked",
        /// It left the file: removed from Envoy after the drain period.
        Removed = "removed",
    }
}

wire_state! {
    /// What a service's figures count: what its checks judge and its dashboard shows.
    pub enum Counts {
        /// HTTP requests: answered ones, 5xx as errors (Envoy's stats).
        Requests = "requests",
        /// gRPC calls: finished ones, those whose `grpc-status` is an error as errors (Envoy's
        /// load reports; a failed call's HTTP status is 200).
        Calls = "calls",
        /// Behind a TCP listener, connections: connect failures as errors, no latency.
        Connections = "connections",
    }
}

wire_state! {
    /// What a rollout moves.
    pub enum RolloutKind {
        /// A canary raised through its steps.
        Canary = "canary",
        /// A switch of the active version, watched for a window.
        Switch = "switch",
    }
}

wire_state! {
    /// Where a rollout is.
    pub enum RolloutState {
        Progressing = "progressing",
        /// Stopped by the operator: no step advances, no check runs.
        Paused = "paused",
        /// The canary gets everything, or the switch passed its window.
        Promoted = "promoted",
        /// The canary gets nothing, or the switch went back.
        RolledBack = "rolled_back",
    }
}

impl RolloutState {
    /// As a sentence says it: `rolled back`.
    pub const fn in_words(self) -> &'static str {
        match self {
            RolloutState::RolledBack => "rolled back",
            other => other.as_str(),
        }
    }
}

wire_state! {
    /// What a rollout check found.
    pub enum Verdict {
        Pass = "pass",
        /// Too little traffic to judge: neither passes nor fails.
        Wait = "wait",
        Fail = "fail",
    }
}

// --- GET /status -------------------------------------------------------------------------------

/// The outcome of the latest attempt to load the deployment file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReloadStatus {
    pub ok: bool,
    /// Every problem, one `file:line:column: message` per line, when `ok` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NackStatus {
    pub version: String,
    pub error: String,
    pub at: String,
}

/// One resource type of one Envoy: what it ACKed, has pending and last rejected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TypeReport {
    pub acked: Option<String>,
    pub pending: Option<String>,
    pub last_nack: Option<NackStatus>,
}

/// One connected xDS stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeReport {
    pub id: String,
    pub cluster: String,
    /// The node group whose config it gets (`all` when the file has no groups, `(no group)`
    /// when none matches); absent until it sent its first request.
    pub group: Option<String>,
    pub address: Option<String>,
    /// `ads`, or the single type a per-type stream carries.
    pub stream: String,
    /// Whether this Envoy reports what it sees to cutover (`Unknown` from a cutover before
    /// telemetry).
    pub telemetry: TelemetryState,
    pub connected_since: String,
    /// The config version this stream is converging to.
    pub config_version: Option<String>,
    /// Every subscribed type ACKed at `config_version`, nothing pending.
    pub in_sync: bool,
    /// By short type name (`cds`, `eds`, `lds`, `rds`).
    pub types: BTreeMap<String, TypeReport>,
}

/// A kept idle version of a red-black service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetiringReport {
    pub version: String,
    /// Still waiting for every connected Envoy to ACK the switch.
    pub awaiting_ack: bool,
    /// Seconds until the cluster is removed, once the grace period runs.
    pub retires_in_seconds: Option<f64>,
}

/// What the file asks of one service, and what cutover serves for it.
///
/// The controller fills the planned part; `observed` is added when the report is read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceReport {
    pub strategy: Strategy,
    /// What its figures count (`observed`, its rollout's checks).
    pub counts: Counts,
    /// Percent of answered requests per version.
    pub split: BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorReport>,
    pub rules: usize,
    /// Versions whose clusters are served (red-black services serve fewer than they list).
    pub deployed: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retiring: Vec<RetiringReport>,
    /// Every connected Envoy that holds the service (of a group whose config includes it) has
    /// ACKed its group's current config.
    pub synced: bool,
    /// An automated rollout or a switch being watched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutReport>,
    /// The rollouts before it (replaced by a new one or ended by the file), newest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub past_rollouts: Vec<PastRolloutReport>,
    /// Endpoints and versions draining now: no new requests, requests in flight finish.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<DrainReport>,
    /// What the Envoys report for each version; absent when no connected Envoy sends
    /// telemetry (then nothing is known, which is not the same as no traffic).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed: Option<ObservedReport>,
}

/// An endpoint or a whole version that gets no new requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DrainReport {
    pub version: String,
    /// `IP:PORT`; absent: the whole version left the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub reason: DrainReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_in_seconds: Option<f64>,
    /// Requests still in flight to it across the Envoys that report (load reports for an
    /// endpoint, the stats sink for a version); absent: unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u64>,
}

/// The live figures of one service, per version, from what the Envoys report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ObservedReport {
    /// Requests per second the whole service answered over the last 10 s (a mirror's copies
    /// not included).
    pub requests_per_second: f64,
    /// Every version deployed or reported, by name.
    pub versions: BTreeMap<String, ObservedVersion>,
}

/// One version's live figures. Rates, errors and latency are over the last 10 s; percentages
/// from 0 to 100.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ObservedVersion {
    /// Percent of the service's answered requests this version answered over the last 10 s
    /// (the observed split); absent when the service answered none, and for the service's
    /// mirror (its requests are copies).
    pub share_10s: Option<f64>,
    /// The same over the last minute.
    pub share_1m: Option<f64>,
    pub requests_per_second: f64,
    /// Percent of answered requests that were 5xx; absent without requests.
    pub error_rate: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Requests sent and not answered yet, now.
    pub in_flight: u64,
    /// Endpoints Envoy counts healthy, and all of them, summed over the Envoys.
    pub healthy: Option<u64>,
    pub endpoints: Option<u64>,
    /// Endpoints ejected by outlier detection now, summed over the Envoys.
    pub ejected: u64,
    /// Envoys whose stats sink reports this version.
    pub envoys: usize,
}

/// A rollout as `/status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RolloutReport {
    pub kind: RolloutKind,
    /// The version under test.
    pub version: String,
    /// The version it is compared with and goes back to.
    pub baseline: String,
    pub state: RolloutState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A canary's share of requests now, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// A canary at a mirror step: the percent of requests copied to it (its answers are
    /// thrown away; `weight` is 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<f64>,
    /// A canary at a match step: the requests it gets, e.g. "requests with header x-tester: 1"
    /// (`weight` is 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matching: Option<String>,
    /// A canary's step (1-based) and the number of steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// A switch checked before it happens (`before_switch`): the baseline still gets the
    /// requests, the version under test only its preview traffic.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub before_switch: bool,
    /// The step's (or switch window's) time has not started: not every Envoy has it yet.
    pub awaiting_ack: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_ends_in_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_check_in_seconds: Option<f64>,
    /// With `progress_deadline`: when the current step rolls back if it has not ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_deadline_in_seconds: Option<f64>,
    /// The webhooks the rollout waits on before it goes on, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateReport>,
    /// Its last checks (at most 120), oldest first: what the dashboard charts against the
    /// limits.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckPointReport>,
    pub failed_checks: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_check: Option<CheckReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<ThresholdsReport>,
    /// What the operator should do next, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
    pub history: Vec<HistoryReport>,
}

/// One check of a rollout, for its chart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckPointReport {
    pub at: String,
    /// The canary's weight then, percent (a canary only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    pub requests: u64,
    /// Percent; `None` without requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    pub verdict: Verdict,
}

/// A rollout that is over: what it tried, how it ended, and every step with who did what.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PastRolloutReport {
    pub kind: RolloutKind,
    pub version: String,
    pub baseline: String,
    pub state: RolloutState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub started: String,
    pub history: Vec<HistoryReport>,
}

/// A rollout waiting on webhooks: `pre_rollout` (before the canary gets a request) or
/// `confirm` (before the next step or promotion).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GateReport {
    pub kind: String,
    /// What comes once they answer 2xx: a weight, or `promotion`.
    pub next: String,
    /// Why they last refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_ask_in_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckReport {
    pub at: String,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub requests: u64,
    pub errors: u64,
    /// Percent.
    pub error_rate: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Where the figures' window begins: 10 s before the check, or later, when every Envoy
    /// holding the service answered the step, switch or resume judged (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_from: Option<String>,
    /// How long that window was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<f64>,
    /// The baseline (a canary's stable) over the same window, when the analysis compares.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineReport>,
}

/// The baseline's figures beside a check's, with the statistical tests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BaselineReport {
    pub version: String,
    pub requests: u64,
    pub errors: u64,
    /// Percent.
    pub error_rate: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Two-proportion test: the chance of an error rate this much above the baseline's if both
    /// had the same (one-sided p-value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_rate_p_value: Option<f64>,
    /// Mann-Whitney test on the latency histograms: the chance of latencies ranked this much
    /// above the baseline's if both had the same distribution (one-sided p-value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p_value: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ThresholdsReport {
    /// Percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_p99_ms: Option<f64>,
    pub min_requests: u64,
    pub failure_limit: u32,
    /// With `max_error_rate`: this many errors fail a check at once, before `min_requests`,
    /// since no success could bring the error rate back under the limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fails_early_at_errors: Option<u64>,
    /// Percentage points above the baseline's error rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_error_rate_increase: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_p99_ratio: Option<f64>,
    /// Percent; with a comparison with the baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryReport {
    pub at: String,
    pub what: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MirrorReport {
    pub version: String,
    pub percent: f64,
}

/// The runtime state file: where it is and whether it can be used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StateFileReport {
    pub path: String,
    /// Read (or absent) and written without trouble.
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusReport {
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_file: Option<StateFileReport>,
    pub config_version: Option<String>,
    pub last_reload: Option<ReloadStatus>,
    pub services: BTreeMap<String, ServiceReport>,
    pub nodes: Vec<NodeReport>,
    /// Connected Envoys that send no telemetry at all: their traffic is not in the figures.
    pub nodes_without_telemetry: Vec<String>,
    /// Connected Envoys that no group of the file matches: they get an empty config.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes_without_group: Vec<String>,
    /// With node groups in the file: each group's config version (what its Envoys converge to;
    /// `config_version` above is then the whole config's) and how many of its Envoys hold it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, GroupReport>,
    /// Concurrent gRPC streams and their limit (`--max-streams`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streams: Option<StreamsReport>,
    /// Cluster mode (`serve --etcd`): this replica's part and what it knows of the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterReport>,
}

/// A replica in `/status` (cluster mode).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ClusterReport {
    /// This replica's name (`--replica`).
    pub replica: String,
    /// `leader`, `follower`, or `unknown` (etcd has not answered, or the lease was lost:
    /// serving the last record known, deciding nothing).
    pub role: String,
    /// The replica that leads, and where its admin API is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_admin: Option<String>,
    /// The etcd revision of the record served.
    pub revision: i64,
    /// Other replicas that publish what their Envoys hold, and how many Envoys they have.
    pub other_replicas: usize,
    pub other_envoys: usize,
    /// Where each other replica's admin API is, by name: `/wait` asks them what their Envoys
    /// hold and report.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub other_admins: BTreeMap<String, String>,
    /// What is wrong with etcd, if anything: nothing advances until it is fixed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_problem: Option<String>,
    /// A change the leader decided that etcd has not recorded yet (not applied anywhere).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unrecorded: Option<String>,
    /// Why this replica's copy of the file is not the one served, when it leads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_file: Option<String>,
}

/// One node group in `/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct GroupReport {
    pub config_version: String,
    /// Connected Envoys in the group.
    pub envoys: usize,
    /// Those that hold `config_version`.
    pub in_sync: usize,
}

/// The xDS and telemetry streams open, against `--max-streams`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct StreamsReport {
    pub open: usize,
    pub limit: usize,
}

// --- GET /wait/{what} --------------------------------------------------------------------------

/// What `cutover wait` waits for: the `{what}` of `GET /wait/{what}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum WaitFor {
    // Plain comments: clap would show doc comments in `cutover wait --help`, which says this
    // in the argument's own help.
    // The endpoints are draining, every Envoy ACKed that, and none reports a request in flight
    // to them.
    Drained,
    // They get requests again and every Envoy counts the version's serving endpoints healthy.
    Healthy,
}

impl WaitFor {
    pub const fn as_str(self) -> &'static str {
        match self {
            WaitFor::Drained => "drained",
            WaitFor::Healthy => "healthy",
        }
    }
}

impl fmt::Display for WaitFor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WaitFor {
    type Err = WaitError;

    fn from_str(text: &str) -> Result<WaitFor, WaitError> {
        match text {
            "drained" => Ok(WaitFor::Drained),
            "healthy" => Ok(WaitFor::Healthy),
            other => Err(WaitError::UnknownWait(other.to_owned())),
        }
    }
}

/// `GET /wait/{what}`: whether it is so now, and if not, what is still awaited, in words.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WaitAnswer {
    pub done: bool,
    pub waiting_for: Vec<String>,
}

impl WaitAnswer {
    /// Done once nothing is awaited.
    pub fn of(waiting_for: Vec<String>) -> WaitAnswer {
        WaitAnswer {
            done: waiting_for.is_empty(),
            waiting_for,
        }
    }
}

/// Why `GET /wait/{what}` cannot say: the text is the answer's body, and [`crate::admin`]
/// gives each its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("cannot wait for \"{0}\": use /wait/drained or /wait/healthy")]
    UnknownWait(String),
    #[error("no valid config loaded yet")]
    NotLoaded,
    #[error("no service \"{0}\" is served")]
    UnknownService(String),
    #[error(
        "\"{target}\" is neither a version nor an endpoint of service \"{service}\" (its versions: {})",
        versions.join(", ")
    )]
    UnknownTarget {
        service: String,
        target: String,
        versions: Vec<String>,
    },
    #[error("service \"{0}\" has no endpoint")]
    NoEndpoint(String),
    /// Envoy reports requests in flight per resolved IP address.
    #[error(
        "{0} is a name: Envoy reports requests in flight per resolved IP address, so they cannot be told apart; wait on the version instead"
    )]
    ByName(String),
}

// --- POST /rollouts/{service}/{command} --------------------------------------------------------

/// An operator's command for a service's rollout (`cutover promote|abort|pause|resume
/// SERVICE`), the `{command}` of `POST /rollouts/{service}/{command}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RolloutCommand {
    /// The canary gets everything now; a switch is accepted.
    Promote,
    /// Roll back now.
    Abort,
    Pause,
    /// Continue a paused rollout from where it is (its step's time starts again), or start a
    /// rolled-back one again from its first step.
    Resume,
}

impl RolloutCommand {
    pub const ALL: [RolloutCommand; 4] = [
        RolloutCommand::Promote,
        RolloutCommand::Abort,
        RolloutCommand::Pause,
        RolloutCommand::Resume,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            RolloutCommand::Promote => "promote",
            RolloutCommand::Abort => "abort",
            RolloutCommand::Pause => "pause",
            RolloutCommand::Resume => "resume",
        }
    }
}

impl fmt::Display for RolloutCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RolloutCommand {
    type Err = CommandError;

    fn from_str(text: &str) -> Result<RolloutCommand, CommandError> {
        RolloutCommand::ALL
            .into_iter()
            .find(|c| c.as_str() == text)
            .ok_or_else(|| CommandError::UnknownCommand(text.to_owned()))
    }
}

/// Why an operator's rollout command was not done, from the reducer up to the admin API: the
/// text is the answer's body (after `SERVICE: ` when the controller answered), and
/// [`crate::admin`] gives each its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Bad input.
    #[error("unknown command \"{0}\": use promote, abort, pause or resume")]
    UnknownCommand(String),
    #[error("no service \"{0}\" in the deployment file")]
    UnknownService(String),
    #[error(
        "service \"{0}\" has no rollout (a canary with `steps`, or a switch with an `analysis`)"
    )]
    NoRollout(String),
    /// The rollout is in a state the command does not apply to.
    #[error("cannot {command} a rollout that is {}", state.in_words())]
    NotNow {
        command: RolloutCommand,
        state: RolloutState,
    },
    #[error("no valid deployment file is loaded yet")]
    NotLoaded,
    /// Cluster mode: this replica does not lead, and the command could not reach the leader.
    #[error(
        "this replica does not lead the cluster and could not hand the command to the leader{}; \
         try again in a few seconds (GET /status says who leads)",
        why.as_deref().map(|w| format!(" ({w})")).unwrap_or_default()
    )]
    NotLeading { why: Option<String> },
    /// The command could not be handed to the controller.
    #[error("the controller is not running")]
    ControllerNotRunning,
    /// The controller went away before it answered.
    #[error("the controller stopped")]
    ControllerStopped,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_as_written_and_an_unknown_one_reads_as_unknown() {
        fn round_trip<T>(all: &[T])
        where
            T: Copy + fmt::Display + FromStr + Serialize + serde::de::DeserializeOwned,
            T: PartialEq + fmt::Debug,
            <T as FromStr>::Err: fmt::Debug,
        {
            for state in all {
                let json = serde_json::to_string(state).unwrap();
                assert_eq!(json, format!("\"{state}\""));
                assert_eq!(serde_json::from_str::<T>(&json).unwrap(), *state);
                assert_eq!(state.to_string().parse::<T>().unwrap(), *state);
            }
        }
        round_trip(Strategy::ALL);
        round_trip(TelemetryState::ALL);
        round_trip(DrainReason::ALL);
        round_trip(RolloutKind::ALL);
        round_trip(RolloutState::ALL);
        round_trip(Verdict::ALL);
        assert_eq!(
            serde_json::from_str::<RolloutState>("\"rolling_sideways\"").unwrap(),
            RolloutState::Unknown
        );
        assert_eq!(TelemetryState::Absent.to_string(), "none");
        assert_eq!(Strategy::RedBlack.to_string(), "red-black");
        assert_eq!(RolloutState::RolledBack.in_words(), "rolled back");
    }

    #[test]
    fn a_report_of_another_release_reads_with_defaults() {
        let report: StatusReport = serde_json::from_str(
            r#"{"config_version": "abc", "future_field": 1,
                "services": {"s": {"strategy": "zigzag", "rollout": {"state": "paused"}}},
                "nodes": [{"id": "x"}]}"#,
        )
        .unwrap();
        assert_eq!(report.config_version.as_deref(), Some("abc"));
        let s = &report.services["s"];
        assert_eq!(s.strategy, Strategy::Unknown);
        let rollout = s.rollout.as_ref().unwrap();
        assert_eq!(
            (rollout.state, rollout.kind),
            (RolloutState::Paused, RolloutKind::Unknown)
        );
        assert_eq!(report.nodes[0].telemetry, TelemetryState::Unknown);
    }

    #[test]
    fn verbs_parse_as_they_print_and_say_what_is_known() {
        for c in RolloutCommand::ALL {
            assert_eq!(c.to_string().parse::<RolloutCommand>(), Ok(c));
        }
        assert_eq!(
            "promte".parse::<RolloutCommand>().unwrap_err().to_string(),
            "unknown command \"promte\": use promote, abort, pause or resume"
        );
        for w in [WaitFor::Drained, WaitFor::Healthy] {
            assert_eq!(w.to_string().parse::<WaitFor>(), Ok(w));
            // `cutover wait` takes the same spelling as `/wait/{what}`.
            let value = clap::ValueEnum::to_possible_value(&w).unwrap();
            assert_eq!(value.get_name(), w.as_str());
        }
        assert_eq!(
            "drain".parse::<WaitFor>().unwrap_err().to_string(),
            "cannot wait for \"drain\": use /wait/drained or /wait/healthy"
        );
        assert_eq!(
            CommandError::NotNow {
                command: RolloutCommand::Pause,
                state: RolloutState::RolledBack
            }
            .to_string(),
            "cannot pause a rollout that is rolled back"
        );
    }
}
