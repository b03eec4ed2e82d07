//! The deployment file exactly as serde reads it, with the position of every value that a
//! validation message may need to point at. Unknown keys are rejected here.
//!
//! The same types describe the file's JSON Schema (`cutover schema`, `deploy.schema.json`): the
//! `///` comments on them are the help editors show, `deny_unknown_fields` becomes
//! `additionalProperties: false`, and a `Spanned<T>` is described as its `T`. The schema only
//! helps editors: validation ([`super::validate`]) stays the authority on what a file means.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde_saphyr::Spanned;

/// A cutover deployment file: the listeners Envoy serves and the services (and their versions)
/// they route to.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Deployment", title = "cutover deployment file")]
pub struct RawSpec {
    /// The ports Envoy listens on, each with its routes. At least one.
    #[serde(default)]
    #[schemars(with = "Vec<RawListener>")]
    pub listeners: Vec<Spanned<RawListener>>,
    /// Services by name: several versions of one application, and which of them gets traffic.
    /// Every version becomes an Envoy cluster named `<service>/<version>`.
    #[serde(default)]
    #[schemars(with = "Names<RawService>")]
    // Boxed: a save's reparse moves them (`super::incremental`).
    pub services: Entries<Box<Spanned<RawService>>>,
    /// Which Envoys get which listeners, tried in order: an Envoy belongs to the first group
    /// whose `match` fits its node, and gets that group's listeners and the services their
    /// routes name. An Envoy no group matches gets an empty config. Without `groups`, every
    /// Envoy gets every listener.
    #[schemars(with = "Option<Vec<RawGroup>>")]
    pub groups: Option<Spanned<Vec<Spanned<RawGroup>>>>,
    /// Which client certificate may be which Envoy, when cutover serves ADS with mutual TLS
    /// (`cutover serve --tls-client-ca`): a client's node id must be one its certificate's
    /// identity may use, or its streams are refused. Without `access`, the node id must equal
    /// one of the certificate's DNS or URI names. Not used without mutual TLS.
    #[schemars(with = "Option<Vec<RawAccessRule>>")]
    pub access: Option<Spanned<Vec<Spanned<RawAccessRule>>>>,
}

/// Who may connect as which Envoys: a pattern for the certificate's identity and one for the
/// node ids it may use. Patterns take `*` (any text) and `{name}` (one path segment, captured;
/// the node pattern can use what the identity pattern captured).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "AccessRule")]
pub struct RawAccessRule {
    /// A DNS or URI subject alternative name of the client certificate, e.g.
    /// `spiffe://corp.example/ns/{ns}/sa/{name}` or `*.edge.corp.example`.
    #[schemars(with = "String")]
    pub identity: Spanned<String>,
    /// The node ids that identity may use, e.g. `{name}.{ns}`, `edge-*` or `*`.
    #[schemars(with = "String")]
    pub node: Spanned<String>,
    /// The groups (of `groups`) its Envoys may fall in; any group when left out.
    #[schemars(with = "Option<Vec<Name>>")]
    pub groups: Option<Spanned<Vec<Spanned<String>>>>,
    /// Whose status it may read through CSDS: `own` (the Envoys whose node ids it may use, the
    /// default) or `all` (an operator's tool).
    #[schemars(with = "Option<RawCsdsScope>")]
    pub csds: Option<Spanned<RawCsdsScope>>,
}

/// Whose status a CSDS caller may read.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "CsdsScope")]
pub enum RawCsdsScope {
    /// The Envoys whose node ids the caller may use.
    Own,
    /// Every Envoy.
    All,
}

/// A group of Envoys: which nodes it takes and the listeners they get.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Group")]
pub struct RawGroup {
    /// Unique name, shown in status and logs.
    #[schemars(with = "Name")]
    pub name: Spanned<String>,
    /// The nodes of this group: every condition given must hold. `{ id: "*" }` takes every
    /// node not taken by a group before it.
    #[serde(rename = "match")]
    #[schemars(with = "RawNodeMatch")]
    pub matcher: Spanned<RawNodeMatch>,
    /// Names of listeners (of `listeners`) this group's Envoys get. At least one.
    #[schemars(with = "Vec<Name>")]
    pub listeners: Spanned<Vec<Spanned<String>>>,
}

/// Conditions on an Envoy's node (its bootstrap's `node`); at least one.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NodeMatch")]
pub struct RawNodeMatch {
    /// The node id, as a shell glob: `edge-*`, `sidecar-?`, `*`.
    #[schemars(with = "Option<String>")]
    pub id: Option<Spanned<String>>,
    /// The node cluster, exactly.
    #[schemars(with = "Option<String>")]
    pub cluster: Option<Spanned<String>>,
    /// Node metadata keys and their values, exactly (a number or boolean in the metadata
    /// matches its YAML form here: `replicas: 3`, `canary: true`).
    #[schemars(with = "Option<std::collections::BTreeMap<String, Scalar>>")]
    pub metadata: Option<Spanned<Entries<Spanned<Scalar>>>>,
}

/// An Envoy listener (one port), or the target of proxyless gRPC clients (`proxyless: true`);
/// either way with one route configuration of the same name.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Listener")]
pub struct RawListener {
    /// Unique name; also the name of its Envoy RouteConfiguration and its stat prefix. With
    /// `proxyless: true`, the target gRPC clients dial: `xds:///<name>`.
    #[schemars(with = "Name")]
    pub name: Spanned<String>,
    /// IP:PORT Envoy listens on, e.g. `127.0.0.1:10000` or `[::1]:10000`. Required unless
    /// `proxyless: true`.
    #[schemars(with = "Option<Address>")]
    pub address: Option<Spanned<String>>,
    /// `true`: no port, but an xDS API listener for gRPC's own xDS clients, which dial
    /// `xds:///<name>` (see the README, "Proxyless gRPC clients"). Not with `address`.
    /// Default: false.
    #[schemars(with = "Option<bool>")]
    pub proxyless: Option<Spanned<bool>>,
    /// Routes in match order: the first route whose match fits a request wins. With `hosts`,
    /// the routes of requests for any other host (without them, those get 404). At least one
    /// unless `hosts` or `redirect` is given.
    #[serde(default)]
    #[schemars(with = "Vec<RawRoute>")]
    pub routes: Vec<Spanned<RawRoute>>,
    /// Virtual hosts: routes for requests by their host name (the `Host` or `:authority`
    /// header, its port ignored). Not with `proxyless: true`.
    #[serde(default)]
    #[schemars(with = "Vec<RawHost>")]
    pub hosts: Vec<Spanned<RawHost>>,
    /// `https`: answer every request the routes do not match with a redirect (301) to the
    /// same host and path over HTTPS. For a plain listener in front of an HTTPS one.
    #[schemars(with = "Option<String>")]
    pub redirect: Option<Spanned<String>>,
    /// Terminate TLS (HTTPS) on this listener with the certificates given, chosen by the name
    /// the client asks for (SNI). Envoy gets them through SDS on its ADS stream and gets them
    /// again when the files change, without draining the listener. Not with `proxyless: true`.
    #[schemars(with = "Option<RawListenerTls>")]
    pub tls: Option<Spanned<RawListenerTls>>,
    /// A TCP proxy in front of this service (a key of `services`) instead of HTTP routes: each
    /// connection to `address` goes to a version of the service by its strategy, and stays
    /// there until it closes (a switch or a canary step moves only new connections). Not with
    /// `routes`, `hosts`, `redirect`, `tls` or `proxyless`.
    #[schemars(with = "Option<String>")]
    pub tcp: Option<Spanned<String>>,
}

/// A virtual host: the routes of requests for some host names.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Host")]
pub struct RawHost {
    /// Host names: `shop.example.com`, or `*.example.com` for any name under it. At least one;
    /// no name on two hosts of a listener.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub names: Vec<Spanned<String>>,
    /// Routes in match order, as a listener's. At least one.
    #[serde(default)]
    #[schemars(with = "Vec<RawRoute>")]
    pub routes: Vec<Spanned<RawRoute>>,
}

/// TLS termination on a listener (Envoy's `DownstreamTlsContext`, secrets over SDS).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ListenerTls")]
pub struct RawListenerTls {
    /// One or more certificates. A client's SNI picks the one whose `server_names` has the
    /// name (exact names before wildcards); the one without `server_names` answers every other
    /// client (without it, those connections are closed).
    #[serde(default)]
    #[schemars(with = "Vec<RawCertificate>")]
    pub certificates: Vec<Spanned<RawCertificate>>,
    /// The oldest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    #[schemars(with = "Option<Scalar>")]
    pub min_version: Option<Spanned<Scalar>>,
    /// PEM file of the CA that signs client certificates: with it, every client must present
    /// one (mutual TLS). Relative paths are relative to the deployment file's directory.
    #[schemars(with = "Option<String>")]
    pub client_ca: Option<Spanned<String>>,
}

/// One certificate, its key and the names it answers.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Certificate")]
pub struct RawCertificate {
    /// PEM file of the certificate chain, leaf first. Relative paths are relative to the
    /// deployment file's directory. Read again whenever it changes (rotation).
    #[schemars(with = "String")]
    pub cert: Spanned<String>,
    /// PEM file of the certificate's private key (PKCS#8, RSA or EC).
    #[schemars(with = "String")]
    pub key: Spanned<String>,
    /// The names (SNI) this certificate answers: `shop.example.com`, or `*.example.com` for
    /// one label under it. None: the default certificate.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub server_names: Vec<Spanned<String>>,
}

/// A path match and the service that answers it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Route")]
pub struct RawRoute {
    /// Exactly one of `prefix` or `path`, e.g. `{ prefix: / }`.
    #[serde(rename = "match")]
    #[schemars(with = "RawMatch")]
    pub matcher: Spanned<RawMatch>,
    /// The service (a key of `services`) whose strategy, rules and preview answer this path.
    /// Exactly one of `service` or `respond`.
    #[schemars(with = "Option<String>")]
    pub service: Option<Spanned<String>>,
    /// Envoy answers itself, e.g. a maintenance page: `{ status: 503, body: "Back soon" }`.
    #[schemars(with = "Option<RawRespond>")]
    pub respond: Option<Spanned<RawRespond>>,
    /// Rewrite the path prefix (the route's `prefix` becomes this) and the `Host` header on
    /// the way to the service.
    #[schemars(with = "Option<RawRewrite>")]
    pub rewrite: Option<Spanned<RawRewrite>>,
    /// Headers added to or removed from the request on its way to the service.
    #[schemars(with = "Option<RawHeaderEdits>")]
    pub request_headers: Option<Spanned<RawHeaderEdits>>,
    /// Headers added to or removed from the response on its way to the client.
    #[schemars(with = "Option<RawHeaderEdits>")]
    pub response_headers: Option<Spanned<RawHeaderEdits>>,
}

/// A response Envoy gives itself.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Respond")]
pub struct RawRespond {
    /// HTTP status, 200 to 599.
    #[schemars(with = "u16")]
    pub status: Spanned<u32>,
    /// The body, as text (at most 4 KiB). Default: none.
    #[schemars(with = "Option<String>")]
    pub body: Option<Spanned<String>>,
}

/// A path prefix and host rewrite.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Rewrite")]
pub struct RawRewrite {
    /// Replaces the route's `prefix` (a `prefix` route only), e.g. `/api/` → `/`.
    #[schemars(with = "Option<Path>")]
    pub prefix: Option<Spanned<String>>,
    /// The `Host` header the service gets.
    #[schemars(with = "Option<String>")]
    pub host: Option<Spanned<String>>,
}

/// Headers to add (or replace) and to remove.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "HeaderEdits")]
pub struct RawHeaderEdits {
    /// Set these headers (replacing a value already there), e.g. `{ x-served-by: edge }`.
    #[serde(default)]
    #[schemars(with = "Entries<Scalar>")]
    pub add: Entries<Spanned<Scalar>>,
    /// Remove these headers.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub remove: Vec<Spanned<String>>,
}

/// How a route matches the request path: exactly one of `prefix` or `path`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RouteMatch")]
pub struct RawMatch {
    /// Matches every path that starts with this one, e.g. `/` or `/api`.
    #[schemars(with = "Option<Path>")]
    pub prefix: Option<Spanned<String>>,
    /// Matches exactly this path, e.g. `/healthz`.
    #[schemars(with = "Option<Path>")]
    pub path: Option<Spanned<String>>,
}

/// A service: several versions of one application, which of them gets traffic, and its traffic
/// policy. Give either `active` or `strategy`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Service")]
// The larger optional parts are boxed: most services leave them out, and a running cutover
// keeps every service as read (`super::incremental`).
pub struct RawService {
    /// Versions by name; each becomes the Envoy cluster `<service>/<version>`.
    #[schemars(with = "Names<RawVersion>")]
    pub versions: Spanned<Entries<Spanned<RawVersion>>>,
    /// The version that gets all traffic (blue-green). Shorthand for
    /// `strategy: { blue-green: { active: ... } }`.
    #[schemars(with = "Option<String>")]
    pub active: Option<Spanned<String>>,
    /// Which versions get traffic: `blue-green`, `red-black`, `canary` or `shadow`.
    #[schemars(with = "Option<RawStrategy>")]
    pub strategy: Option<Box<Spanned<RawStrategy>>>,
    /// A version that gets a copy of (a share of) the requests; its responses are discarded.
    /// Not with the `shadow` strategy, which has its own mirror.
    #[schemars(with = "Option<RawMirror>")]
    pub mirror: Option<Box<Spanned<RawMirror>>>,
    /// User groups sent to a chosen version (A/B testing), tried in order before the strategy.
    #[serde(default)]
    #[schemars(with = "Vec<RawRule>")]
    pub rules: Vec<Spanned<RawRule>>,
    /// How Envoy spreads requests over a version's endpoints. Default: `round_robin`.
    #[schemars(with = "Option<RawLoadBalancing>")]
    pub load_balancing: Option<Spanned<RawLoadBalancing>>,
    /// Passive health checking: endpoints that fail are ejected for a while. On by default.
    #[schemars(with = "Option<RawOutlierDetection>")]
    pub outlier_detection: Option<Box<Spanned<RawOutlierDetection>>>,
    /// Active health checks Envoy sends to every endpoint (HTTP `path` or `tcp: true`).
    #[schemars(with = "Option<RawHealthCheck>")]
    pub health_check: Option<Box<Spanned<RawHealthCheck>>>,
    /// New endpoints get a growing share of requests during this window (round robin and least
    /// request only). Default: none.
    #[schemars(with = "Option<DurationText>")]
    pub slow_start: Option<Spanned<String>>,
    /// Timeout of a whole request (Envoy's `RouteAction.timeout`). Default: Envoy's 15s.
    #[schemars(with = "Option<DurationText>")]
    pub timeout: Option<Spanned<String>>,
    /// Timeout of a new connection to an endpoint. Default: 1s.
    #[schemars(with = "Option<DurationText>")]
    pub connect_timeout: Option<Spanned<String>>,
    /// Retries of failed requests. Default: 2 attempts on connect-failure, refused-stream and
    /// reset-before-request (safe for any method), each on another endpoint.
    #[schemars(with = "Option<RawRetries>")]
    pub retries: Option<Box<Spanned<RawRetries>>>,
    /// How Envoy speaks to the endpoints: `http1` (default), `http2`, or `grpc` (HTTP/2;
    /// gRPC clients reach it through any listener).
    #[schemars(with = "Option<RawProtocol>")]
    pub protocol: Option<Spanned<RawProtocol>>,
    /// `true`: WebSocket upgrades on this service's routes are passed through (HTTP/1.1
    /// `Upgrade: websocket`); the connection stays with the version it opened on. Default: false.
    #[schemars(with = "Option<bool>")]
    pub websocket: Option<Spanned<bool>>,
    /// Speak TLS to the endpoints, verifying them against `ca` (without it, not verified)
    /// and sending `sni` as the server name.
    #[schemars(with = "Option<RawUpstreamTls>")]
    pub tls: Option<Box<Spanned<RawUpstreamTls>>>,
    /// Below this share of available endpoints Envoy ignores health and spreads requests over
    /// all of them (panic mode). Default: 0 (never).
    #[schemars(with = "Option<Percentage>")]
    pub panic_threshold: Option<Spanned<Scalar>>,
}

/// The protocol Envoy speaks to a service's endpoints.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "Protocol")]
pub enum RawProtocol {
    Http1,
    Http2,
    Grpc,
}

/// TLS from Envoy to a service's endpoints.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "UpstreamTls")]
pub struct RawUpstreamTls {
    /// The server name sent (SNI) and, with `ca`, the name the certificate must carry.
    #[schemars(with = "Option<String>")]
    pub sni: Option<Spanned<String>>,
    /// PEM file of the CA the endpoints' certificates must be signed by. Relative paths are
    /// relative to the deployment file's directory.
    #[schemars(with = "Option<String>")]
    pub ca: Option<Spanned<String>>,
}

/// Which versions of a service get traffic: exactly one of the strategies.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[schemars(rename = "Strategy")]
pub enum RawStrategy {
    /// One version gets all traffic; the others stay warm for an instant switch or rollback.
    BlueGreen(RawBlueGreen),
    /// Only the active version is deployed; after a switch the previous one is kept for `grace`
    /// once every Envoy ACKed the switch, then removed.
    RedBlack(RawRedBlack),
    /// `weight` percent of requests go to `canary`, the rest to `stable`.
    Canary(Box<RawCanary>),
    /// `primary` answers; `mirror` gets a copy of `percent` of the requests.
    Shadow(RawShadow),
}

/// Blue-green: one version gets all traffic, the others stay warm.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "BlueGreen")]
pub struct RawBlueGreen {
    /// The version that gets all traffic.
    #[schemars(with = "String")]
    pub active: Spanned<String>,
    /// Lets requests carrying `<header>: <version>` reach an idle version before a switch.
    #[schemars(with = "Option<RawPreview>")]
    pub preview: Option<Spanned<RawPreview>>,
    /// After a switch of `active`, watch the new version for `window`; if it fails the
    /// analysis, switch back to the previous version. Default: no analysis.
    #[schemars(with = "Option<RawAnalysis>")]
    pub analysis: Option<Spanned<RawAnalysis>>,
    /// Told of every step, promotion and rollback of the rollout: an HTTP POST with a JSON
    /// body per event, in order; the answer changes nothing. Needs a rollout: `analysis`.
    #[serde(default)]
    #[schemars(with = "Vec<RawWebhook>")]
    pub notify: Vec<Spanned<RawWebhook>>,
}

/// Red-black: blue-green whose previous version is removed after a grace period.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RedBlack")]
pub struct RawRedBlack {
    /// The version that gets all traffic; the only one deployed in steady state.
    #[schemars(with = "String")]
    pub active: Spanned<String>,
    /// How long the previous version stays after every Envoy ACKed a switch. Default: 5m.
    #[schemars(with = "Option<DurationText>")]
    pub grace: Option<Spanned<String>>,
    /// After a switch of `active`, watch the new version for `window`; if it fails the
    /// analysis, switch back to the previous version (kept until the window ends). Default: no
    /// analysis.
    #[schemars(with = "Option<RawAnalysis>")]
    pub analysis: Option<Spanned<RawAnalysis>>,
    /// Told of every step, promotion and rollback of the rollout: an HTTP POST with a JSON
    /// body per event, in order; the answer changes nothing. Needs a rollout: `analysis`.
    #[serde(default)]
    #[schemars(with = "Vec<RawWebhook>")]
    pub notify: Vec<Spanned<RawWebhook>>,
}

/// Preview routes to the idle versions of a blue-green service.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Preview")]
pub struct RawPreview {
    /// The request header naming the version to reach. Default: `x-cutover-preview`.
    #[schemars(with = "Option<String>")]
    pub header: Option<Spanned<String>>,
}

/// Canary: a share of requests goes to the canary, the rest to the stable version.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Canary")]
pub struct RawCanary {
    /// The version that gets the rest of the requests.
    #[schemars(with = "String")]
    pub stable: Spanned<String>,
    /// The version being tried; not the stable one.
    #[schemars(with = "String")]
    pub canary: Spanned<String>,
    /// Percent of requests that go to the canary, 0 to 100 (e.g. `10`, `0.5` or `"25%"`): a
    /// manual canary. Give either `weight` or `steps`.
    #[schemars(with = "Option<Percentage>")]
    pub weight: Option<Spanned<Scalar>>,
    /// An automated rollout: the canary's weights in turn, each held for `interval` (or the
    /// step's own `pause`) once every Envoy has it and while the analysis passes, e.g.
    /// `[5, 25, 50, 100]` or `[{ weight: 5, pause: 2m }, 50, 100]`; before the weights, mirror
    /// steps (`{ mirror: 50 }`) and match steps (`{ match: { header: { x-tester: "1" } } }`).
    /// After the last step the canary gets all requests (promoted). Give either `weight` or
    /// `steps`.
    #[schemars(with = "Option<Vec<RawStep>>")]
    pub steps: Option<Spanned<Vec<Spanned<RawStep>>>>,
    /// Time at each step of `steps` unless the step says otherwise. Default: 1m.
    #[schemars(with = "Option<DurationText>")]
    pub interval: Option<Spanned<String>>,
    /// Checks of the canary's figures during `steps`; a failed analysis rolls back at once.
    /// Default: no analysis (steps advance on time alone).
    #[schemars(with = "Option<RawAnalysis>")]
    pub analysis: Option<Spanned<RawAnalysis>>,
    /// Keeps each user on the version they first got, with a cookie Envoy sets.
    #[schemars(with = "Option<RawSticky>")]
    pub sticky: Option<Spanned<RawSticky>>,
    /// Told of every step, promotion and rollback of the rollout: an HTTP POST with a JSON
    /// body per event, in order; the answer changes nothing. Needs a rollout: `steps`.
    #[serde(default)]
    #[schemars(with = "Vec<RawWebhook>")]
    pub notify: Vec<Spanned<RawWebhook>>,
    /// Asked before every step and before promotion (HTTP POST, JSON body with `next`): the
    /// rollout holds its step until each answers 2xx, asking again every `interval` of the
    /// analysis (10 s without one): a manual approval. Needs `steps`.
    #[serde(default)]
    #[schemars(with = "Vec<RawWebhook>")]
    pub confirm: Vec<Spanned<RawWebhook>>,
    /// Asked once before the canary gets any request (a smoke test of the canary): if one does
    /// not answer 2xx in time, the rollout fails without having moved a request. Needs `steps`.
    #[serde(default)]
    #[schemars(with = "Vec<RawWebhook>")]
    pub pre_rollout: Vec<Spanned<RawWebhook>>,
}

/// One step of a rollout: a weight, or `{ weight | mirror | match, pause }`.
#[derive(Debug, JsonSchema)]
#[schemars(rename = "Step", untagged)]
pub enum RawStep {
    /// The canary's percent of requests during this step.
    #[schemars(with = "Percentage")]
    Weight(Scalar),
    /// A weight, a mirror or a match step, with its own time if given.
    #[schemars(with = "RawStepMap")]
    WithPause(Box<RawStepMap>),
}

/// A rollout step: exactly one of `weight`, `mirror` or `match`, and its own time if given.
/// Mirror and match steps come before the first weight.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "StepMap")]
pub struct RawStepMap {
    /// The canary's percent of requests during this step.
    #[schemars(with = "Option<Percentage>")]
    pub weight: Option<Spanned<Scalar>>,
    /// The canary gets a copy of this percent of the requests and its answers are thrown away
    /// (stable answers every user); its own figures are judged.
    #[schemars(with = "Option<Percentage>")]
    pub mirror: Option<Spanned<Scalar>>,
    /// Only requests meeting every condition go to the canary (e.g. internal testers with a
    /// header); everyone else stays on stable.
    #[serde(rename = "match")]
    #[schemars(with = "Option<RawRuleMatch>")]
    pub matcher: Option<Spanned<RawRuleMatch>>,
    /// How long this step lasts once every Envoy has it. Default: the `interval`.
    #[schemars(with = "Option<DurationText>")]
    pub pause: Option<Spanned<String>>,
}

impl<'de> Deserialize<'de> for RawStep {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawStep;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a step: a percentage, or { weight: 25, pause: 2m }, { mirror: 50 } or { match: { header: { x-tester: \"1\" } } }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawStep, E> {
                Ok(RawStep::Weight(Scalar(v.to_owned())))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawStep, E> {
                Ok(RawStep::Weight(Scalar(v.to_string())))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawStep, E> {
                Ok(RawStep::Weight(Scalar(v.to_string())))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RawStep, E> {
                Ok(RawStep::Weight(Scalar(v.to_string())))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawStep, A::Error> {
                RawStepMap::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|m| RawStep::WithPause(Box::new(m)))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Checks of a version's figures, as Envoy reports them to cutover (requests, errors,
/// latency), and optional webhooks. Each check reads the last 10 s of figures.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Analysis")]
pub struct RawAnalysis {
    /// Time between checks. Default: 10s.
    #[schemars(with = "Option<DurationText>")]
    pub interval: Option<Spanned<String>>,
    /// A check fails above this share of failed requests (5xx, resets, connect failures,
    /// timeouts), e.g. `1%`. Default: not checked.
    #[schemars(with = "Option<Percentage>")]
    pub max_error_rate: Option<Spanned<Scalar>>,
    /// A check fails above this 99th percentile of upstream latency, e.g. `500ms`. Default: not
    /// checked.
    #[schemars(with = "Option<DurationText>")]
    pub max_p99_latency: Option<Spanned<String>>,
    /// Fewer requests than this in a check's figures: the check waits (neither passes nor
    /// fails). Default: 20.
    #[schemars(with = "Option<u64>")]
    pub min_requests: Option<Spanned<u64>>,
    /// Failed checks that roll back. Default: 2.
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub failure_limit: Option<Spanned<u32>>,
    /// Waiting for traffic longer than this fails the analysis. Default: wait as long as it
    /// takes.
    #[schemars(with = "Option<DurationText>")]
    pub max_wait: Option<Spanned<String>>,
    /// Blue-green and red-black only: how long after a switch the new version is watched.
    /// Default: 1m.
    #[schemars(with = "Option<DurationText>")]
    pub window: Option<Spanned<String>>,
    /// Blue-green with `preview` only: before switching to a new `active` version, watch its
    /// preview traffic (requests carrying the preview header) for this long; the switch happens
    /// only once the checks pass, and a failed analysis leaves the old version active. Default:
    /// switch at once.
    #[schemars(with = "Option<DurationText>")]
    pub before_switch: Option<Spanned<String>>,
    /// A rollout whose step (or switch window) has not ended this long after it began rolls
    /// back, saying what it waited for (an Envoy that never answers, checks that keep
    /// waiting); a pause does not count. Longer than every step's time. Default: no deadline.
    #[schemars(with = "Option<DurationText>")]
    pub progress_deadline: Option<Spanned<String>>,
    /// Canary only: a check fails when the canary's error rate is more than this many
    /// percentage points above stable's in the same window, from the same Envoys, and a
    /// two-proportion test finds it higher at `confidence`. E.g. `1%`. Default: not compared.
    #[schemars(with = "Option<Percentage>")]
    pub max_error_rate_increase: Option<Spanned<Scalar>>,
    /// Canary only: a check fails when the canary's p99 latency is more than this many times
    /// stable's in the same window, and a Mann-Whitney rank test on both latency histograms
    /// finds the canary slower at `confidence`. E.g. `1.5`. Default: not compared.
    #[schemars(with = "Option<f64>")]
    pub max_p99_ratio: Option<Spanned<Scalar>>,
    /// How sure the comparisons with stable must be before they fail a check, e.g. `99%`.
    /// Default: 95%.
    #[schemars(with = "Option<Percentage>")]
    pub confidence: Option<Spanned<Scalar>>,
    /// Asked at every check (HTTP POST with a JSON body describing the rollout); a check
    /// passes only if every webhook answers 2xx in time.
    #[serde(default)]
    #[schemars(with = "Vec<RawWebhook>")]
    pub webhooks: Vec<Spanned<RawWebhook>>,
}

/// A webhook cutover calls.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Webhook")]
pub struct RawWebhook {
    /// An `http://` URL.
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    /// How long to wait for the answer. Default: 5s.
    #[schemars(with = "Option<DurationText>")]
    pub timeout: Option<Spanned<String>>,
    /// `notify` only: `json` (the event with the rollout, default) or `slack`, a `text`
    /// payload that Slack and Mattermost incoming webhooks post to a channel.
    #[schemars(with = "Option<WebhookFormat>")]
    pub format: Option<Spanned<String>>,
}

/// What a `notify` webhook is sent.
#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code, reason = "only its schema is used")]
pub enum WebhookFormat {
    Json,
    Slack,
}

/// Sticky canary users: a cookie naming the version that answered.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Sticky")]
pub struct RawSticky {
    /// The cookie's name. Default: `cutover-<service>`.
    #[schemars(with = "Option<String>")]
    pub cookie: Option<Spanned<String>>,
    /// The cookie's lifetime (`Max-Age`). Default: 24h.
    #[schemars(with = "Option<DurationText>")]
    pub ttl: Option<Spanned<String>>,
}

/// Shadow: one version answers, another gets copies of the requests.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Shadow")]
pub struct RawShadow {
    /// The version that answers.
    #[schemars(with = "String")]
    pub primary: Spanned<String>,
    /// The version that gets copies; its responses are discarded.
    #[schemars(with = "String")]
    pub mirror: Spanned<String>,
    /// Percent of requests copied to the mirror. Default: 100.
    #[schemars(with = "Option<Percentage>")]
    pub percent: Option<Spanned<Scalar>>,
}

/// A mirror added to any strategy but `shadow`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Mirror")]
pub struct RawMirror {
    /// The version that gets copies; it must not also answer requests.
    #[schemars(with = "String")]
    pub version: Spanned<String>,
    /// Percent of requests copied. Default: 100.
    #[schemars(with = "Option<Percentage>")]
    pub percent: Option<Spanned<Scalar>>,
}

/// A user group sent to one version.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Rule")]
pub struct RawRule {
    /// The conditions, all of which must hold; at least one.
    #[serde(rename = "match")]
    #[schemars(with = "RawRuleMatch")]
    pub matcher: Spanned<RawRuleMatch>,
    /// The version matching requests go to.
    #[schemars(with = "String")]
    pub version: Spanned<String>,
}

/// Conditions of a rule; every one must hold.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RuleMatch")]
pub struct RawRuleMatch {
    /// Request headers that must have exactly these values, e.g. `{ x-beta: "1" }`.
    #[serde(default)]
    #[schemars(with = "Entries<Scalar>")]
    pub header: Entries<Spanned<Scalar>>,
    /// Cookies that must have exactly these values, e.g. `{ group: beta }`.
    #[serde(default)]
    #[schemars(with = "Entries<Scalar>")]
    pub cookie: Entries<Spanned<Scalar>>,
    /// Query parameters that must have exactly these values, e.g. `{ beta: "1" }`.
    #[serde(default)]
    #[schemars(with = "Entries<Scalar>")]
    pub query: Entries<Spanned<Scalar>>,
    /// A path prefix, inside the path of the listener route.
    #[schemars(with = "Option<Path>")]
    pub prefix: Option<Spanned<String>>,
}

/// How Envoy spreads requests over a version's endpoints.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "LoadBalancing")]
pub enum RawLoadBalancing {
    /// Weighted round robin (the default).
    RoundRobin,
    /// The endpoint with the fewest active requests, of two picked at random.
    LeastRequest,
    /// A random endpoint.
    Random,
    /// Consistent hashing (ring hash) on a header, a cookie or the client's IP.
    RingHash(RawHashOn),
    /// Consistent hashing (Maglev) on a header, a cookie or the client's IP.
    Maglev(RawHashOn),
}

/// What a hash-based load balancer hashes: `{ header: name }`, `{ cookie: name }` or
/// `source_ip`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "HashOn")]
pub enum RawHashOn {
    /// A request header's value.
    Header(String),
    /// A cookie's value.
    Cookie(String),
    /// The client's IP address.
    SourceIp,
}

/// Passive health checking (Envoy's `outlier_detection`), on by default.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "OutlierDetection")]
pub struct RawOutlierDetection {
    /// `false` turns outlier detection off. Default: true.
    pub enabled: Option<bool>,
    /// Consecutive 5xx responses that eject an endpoint. Default: 5.
    #[schemars(with = "Option<u32>")]
    pub consecutive_5xx: Option<Spanned<u32>>,
    /// Consecutive gateway errors (502, 503, 504) that eject an endpoint. Default: off.
    #[schemars(with = "Option<u32>")]
    pub consecutive_gateway_errors: Option<Spanned<u32>>,
    /// Time between ejection sweeps. Default: 10s.
    #[schemars(with = "Option<DurationText>")]
    pub interval: Option<Spanned<String>>,
    /// How long an endpoint is ejected, times the number of its ejections. Default: 30s.
    #[schemars(with = "Option<DurationText>")]
    pub base_ejection_time: Option<Spanned<String>>,
    /// At most this percent of a version's endpoints are ejected at once. Default: 50.
    #[schemars(with = "Option<u32>", range(max = 100))]
    pub max_ejection_percent: Option<Spanned<u32>>,
    /// Eject endpoints whose success rate is far below the others'. Default: off.
    #[schemars(with = "Option<RawSuccessRate>")]
    pub success_rate: Option<Spanned<RawSuccessRate>>,
    /// Eject endpoints whose failure percentage is above a threshold. Default: off.
    #[schemars(with = "Option<RawFailurePercentage>")]
    pub failure_percentage: Option<Spanned<RawFailurePercentage>>,
}

/// Success-rate outlier detection.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "SuccessRate")]
pub struct RawSuccessRate {
    /// Endpoints needed with enough requests for the check to run. Default: 5.
    pub minimum_hosts: Option<u32>,
    /// Requests an endpoint needs in an interval to be checked. Default: 100.
    pub request_volume: Option<u32>,
    /// Ejects endpoints below the mean success rate minus this many standard deviations.
    /// Default: 1.9.
    #[schemars(with = "Option<f64>")]
    pub stdev_factor: Option<Spanned<Scalar>>,
}

/// Failure-percentage outlier detection.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "FailurePercentage")]
pub struct RawFailurePercentage {
    /// Failure percentage (0 to 100) above which an endpoint is ejected. Default: 85.
    #[schemars(with = "Option<u32>", range(max = 100))]
    pub threshold: Option<Spanned<u32>>,
    /// Endpoints needed with enough requests for the check to run. Default: 5.
    pub minimum_hosts: Option<u32>,
    /// Requests an endpoint needs in an interval to be checked. Default: 50.
    pub request_volume: Option<u32>,
}

/// Active health checks: an HTTP `path` or `tcp: true`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "HealthCheck")]
pub struct RawHealthCheck {
    /// HTTP health check: the path Envoy requests, e.g. `/health`; healthy on a 200.
    #[schemars(with = "Option<Path>")]
    pub path: Option<Spanned<String>>,
    /// `true`: the check is a TCP connect.
    pub tcp: Option<bool>,
    /// `true`: the check is gRPC's health service (`grpc.health.v1.Health/Check`, healthy on
    /// `SERVING`); for `protocol: grpc` services.
    #[schemars(with = "Option<bool>")]
    pub grpc: Option<Spanned<bool>>,
    /// Time between checks, also for versions with no traffic. Default: 5s.
    #[schemars(with = "Option<DurationText>")]
    pub interval: Option<Spanned<String>>,
    /// Time to wait for a check's answer. Default: 2s.
    #[schemars(with = "Option<DurationText>")]
    pub timeout: Option<Spanned<String>>,
    /// Failed checks before an endpoint is unhealthy. Default: 3.
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub unhealthy_threshold: Option<Spanned<u32>>,
    /// Passed checks before an endpoint is healthy again. Default: 2.
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub healthy_threshold: Option<Spanned<u32>>,
    /// New endpoints get no requests until their first check passed. Default: true.
    pub wait_for_first_check: Option<bool>,
}

/// Retries of failed requests, each on another endpoint than the one that failed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Retries")]
pub struct RawRetries {
    /// Retries per request; 0 turns retries off. Default: 2.
    #[schemars(with = "Option<u32>")]
    pub attempts: Option<Spanned<u32>>,
    /// Envoy `retry_on` conditions, e.g. `connect-failure`, `refused-stream`,
    /// `reset-before-request`, `5xx`, `gateway-error`. Default: the first three.
    #[schemars(with = "Option<Vec<String>>")]
    pub on: Option<Vec<Spanned<String>>>,
    /// Timeout of each try. Default: none.
    #[schemars(with = "Option<DurationText>")]
    pub per_try_timeout: Option<Spanned<String>>,
}

/// One version of a service: an Envoy cluster and its endpoints.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Version")]
pub struct RawVersion {
    /// The endpoints of this version: `IP:PORT` or `HOST:PORT`, or `{ address, weight, drain }`.
    /// A version with a `HOST` is a DNS cluster: Envoy resolves the names itself. A version that
    /// gets traffic needs at least one endpoint that is not draining.
    #[serde(default)]
    #[schemars(with = "Vec<RawEndpoint>")]
    pub endpoints: Vec<Spanned<RawEndpoint>>,
}

/// An endpoint: `127.0.0.1:8081`, `blue:8080`, or
/// `{ address: 127.0.0.1:8081, weight: 2, drain: true }`.
#[derive(Debug)]
pub struct RawEndpoint {
    pub address: String,
    pub weight: Option<u32>,
    pub drain: bool,
}

/// An endpoint with options.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "EndpointOptions")]
struct RawEndpointMap {
    /// IP:PORT or HOST:PORT of the endpoint, e.g. `127.0.0.1:8081` or `blue:8080`; Envoy
    /// resolves a HOST with DNS.
    #[schemars(with = "EndpointAddress")]
    address: String,
    /// Relative load-balancing weight (weighted round robin), at least 1. Default: 1.
    #[schemars(range(min = 1))]
    weight: Option<u32>,
    /// `true`: no new requests (Envoy `DRAINING`); requests in flight finish. Default: false.
    #[serde(default)]
    drain: bool,
}

impl<'de> Deserialize<'de> for RawEndpoint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawEndpoint;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "an endpoint: IP:PORT or HOST:PORT, or { address: IP:PORT, weight: N, drain: true }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawEndpoint, E> {
                Ok(RawEndpoint {
                    address: v.to_owned(),
                    weight: None,
                    drain: false,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawEndpoint, A::Error> {
                let m =
                    RawEndpointMap::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RawEndpoint {
                    address: m.address,
                    weight: m.weight,
                    drain: m.drain,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A scalar written as a number or a string (`10`, `0.5`, `"10%"`, `"1"`), kept as its text so
/// that validation can parse it and point at it.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A YAML mapping kept in file order with the position of every key, so that duplicate and
/// invalid names can be reported where they are written.
#[derive(Debug)]
pub struct Entries<V>(pub Vec<(Spanned<String>, V)>);

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping of names to values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(Entries(Vec::new()))
            }
        }
        deserializer.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

// JSON Schema of the types above whose `Deserialize` is written by hand, and of the text formats
// that validation parses. Editors use these for completion and help only.

impl JsonSchema for RawEndpoint {
    fn schema_name() -> Cow<'static, str> {
        "Endpoint".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An endpoint: `IP:PORT` or `HOST:PORT`, or `{ address: IP:PORT, weight: N, drain: true }`.",
            "anyOf": [
                generator.subschema_for::<EndpointAddress>(),
                generator.subschema_for::<RawEndpointMap>(),
            ]
        })
    }
}

impl JsonSchema for Scalar {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Scalar".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["string", "number", "boolean"] })
    }
}

impl<V: JsonSchema> JsonSchema for Entries<V> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        format!("Map_of_{}", V::schema_name()).into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "additionalProperties": generator.subschema_for::<V>(),
        })
    }
}

/// The schema of a mapping whose keys are names (services, versions).
struct Names<V>(std::marker::PhantomData<V>);

impl<V: JsonSchema> JsonSchema for Names<V> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        format!("Names_of_{}", V::schema_name()).into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "propertyNames": generator.subschema_for::<Name>(),
            "additionalProperties": generator.subschema_for::<V>(),
        })
    }
}

/// Defines a schema-only type for a text format that validation parses.
macro_rules! text_schema {
    ($(#[$doc:meta])* $name:ident => $schema:tt) => {
        $(#[$doc])*
        struct $name;

        impl JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }

            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

text_schema! {
    /// A listener, service or version name, as `Validator::check_name` accepts it: 1 to 64 of
    /// these characters, and nothing a YAML reader may take for a number, boolean or null
    /// (`validate::yaml_non_string`), which an editor cannot tell from a quoted key.
    Name => {
        "type": "string",
        "pattern": "^[A-Za-z0-9._-]{1,64}$",
        "not": {
            "pattern": "^(?:[-+]?(?:0[xXoObB][0-9a-fA-F_]+|(?:[0-9][0-9_]*(?:\\.[0-9_]*)?|\\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?|\\.(?:[iI][nN][fF]|[nN][aA][nN]))|[tT][rR][uU][eE]|[fF][aA][lL][sS][eE]|[yY](?:[eE][sS])?|[nN][oO]?|[oO](?:[nN]|[fF][fF])|[nN][uU][lL][lL]|~)$",
        },
    }
}

text_schema! {
    /// `IP:PORT`; validation parses it as a `SocketAddr`.
    Address => {
        "type": "string",
        "examples": ["127.0.0.1:8081", "[::1]:8081"],
    }
}

text_schema! {
    /// `IP:PORT` or `HOST:PORT`; validation parses it as a `spec::EndpointAddress`.
    EndpointAddress => {
        "type": "string",
        "examples": ["127.0.0.1:8081", "[::1]:8081", "blue:8080"],
    }
}

text_schema! {
    /// A URL path; validation requires the leading `/`.
    Path => {
        "type": "string",
        "pattern": "^/",
    }
}

text_schema! {
    /// A duration as `humantime` parses it.
    DurationText => {
        "type": "string",
        "examples": ["500ms", "5s", "2m", "1h"],
    }
}

text_schema! {
    /// A percentage as `Percent::parse` reads it; the string form is checked loosely here and
    /// exactly by validation.
    Percentage => {
        "anyOf": [
            { "type": "number", "minimum": 0, "maximum": 100 },
            { "type": "string", "pattern": "^\\s*[0-9]*\\.?[0-9]*\\s*%?\\s*$" },
        ],
    }
}
