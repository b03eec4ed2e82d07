//! The reconcile core: what is served is [`plan`]`(&Spec, &RuntimeState, now)`, a pure function
//! of the file (desired state), the runtime state (drains, retirements) and the time.
//!
//! ```text
//! file ─► Spec ─────────────┐
//!                           ├─► plan(&Spec, &RuntimeState, now) ─► Plan ─► translate(&Plan)
//! events ─► RuntimeState ───┘
//! ```
//!
//! A [`Plan`] is typed and complete: every cluster with why it exists ([`Role`]) and its
//! endpoints with their health, every route with its target and weights. It knows nothing of
//! Envoy's message shapes; [`crate::translate`] is the only code that builds those. Drains and
//! red-black retirement are rules here that shape the plan (see [`state`]); nothing patches built
//! resources afterwards. No I/O and no clock: the controller ([`crate::controller`]) feeds events
//! and the time in.

pub mod compare;
pub mod rollout;
mod routes;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

pub use state::{Event, Previous, RuntimeState, Timestamp};

use crate::ids::{ClusterId, ClusterRef, FallbackId};
use crate::node::{GroupId, NodeGroups};
use crate::spec::{
    Condition, Endpoint, EndpointAddress, HashOn, Host, ListenerKind, ListenerTls, LoadBalancing,
    Percent, Policy, Redirect, Retries, Route, Service, Spec, Strategy, Version,
};

/// Everything cutover serves, decided; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Sorted by name.
    pub listeners: Vec<ListenerPlan>,
    /// By service name: the file's services, and services removed from the file whose versions
    /// are still draining.
    pub services: BTreeMap<String, ServicePlan>,
    /// What each node group gets: the one group `all` with everything when the file has no
    /// groups; else the file's groups and [`GroupId::unmatched`] (nothing).
    pub groups: BTreeMap<GroupId, GroupPlan>,
    /// How a node finds its group among `groups`.
    pub node_groups: NodeGroups,
    /// The PEM files the listeners' TLS names, by path as written (see [`Spec::pem_files`]).
    pub pem_files: BTreeMap<String, Arc<str>>,
}

/// The listeners and services of one node group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupPlan {
    /// Names of listeners of [`Plan::listeners`], sorted.
    pub listeners: Vec<String>,
    /// Names of services of [`Plan::services`]: those the listeners route to, and those still
    /// draining that they routed to.
    pub services: BTreeSet<String>,
}

impl Plan {
    /// The groups whose config includes `service`: only their Envoys hold it, so only their
    /// answers gate its retirements, drains and rollouts.
    pub fn holders(&self, service: &str) -> impl Iterator<Item = &GroupId> {
        self.groups
            .iter()
            .filter(move |(_, g)| g.services.contains(service))
            .map(|(id, _)| id)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerPlan {
    pub name: String,
    pub kind: ListenerKind,
    /// Path matches and the service answering each, in match order.
    pub routes: Vec<Route>,
    /// Virtual hosts, each with its routes, before `routes` (any other host).
    pub hosts: Vec<Host>,
    pub redirect: Option<Redirect>,
    /// TLS termination, its certificates' content in [`Plan::pem_files`].
    pub tls: Option<ListenerTls>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServicePlan {
    /// Whether the file has this service (else only draining versions are left).
    pub in_file: bool,
    /// Versions that have a cluster in Envoy, by version name.
    pub versions: BTreeMap<String, VersionPlan>,
    /// Aggregate clusters, and whether routes use each or it only lingers.
    pub fallbacks: BTreeMap<FallbackId, Presence>,
    /// The service's routes in match order, tried under each listener route that names it.
    pub routes: Vec<RoutePlan>,
    /// What every route of the service carries.
    pub route_policy: RoutePolicy,
    /// Intended share of answered requests per version, in parts per million.
    pub split: BTreeMap<String, u32>,
    /// gRPC's own xDS clients route to it (a proxyless listener names it): its endpoints and
    /// aggregate clusters take the shapes those clients accept as well as Envoy.
    pub proxyless: bool,
}

impl ServicePlan {
    /// A service removed from the file, of which something still drains.
    fn lingering() -> ServicePlan {
        ServicePlan {
            in_file: false,
            versions: BTreeMap::new(),
            fallbacks: BTreeMap::new(),
            routes: Vec::new(),
            route_policy: RoutePolicy::default(),
            split: BTreeMap::new(),
            proxyless: false,
        }
    }
}

/// Why a version has a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It answers requests, gets a mirror's copies or a rule's group.
    Serving,
    /// Kept warm for an instant switch or rollback (blue-green's idle colour, a canary at 0%).
    Idle,
    /// A red-black service's previous version, kept for rollback until its deadline (`None`:
    /// waiting for every Envoy holding the service to answer the switch).
    Retiring { deadline: Option<Timestamp> },
    /// Removed from the file; kept so requests in flight finish.
    Removed { until: Timestamp },
}

#[derive(Debug, Clone, PartialEq)]
pub struct VersionPlan {
    pub role: Role,
    /// Cluster settings (load balancing, health checks, outlier detection, timeouts).
    pub policy: Policy,
    /// How Envoy learns the endpoints below.
    pub discovery: Discovery,
    /// The file's endpoints in file order, then those draining after leaving it, by address.
    pub endpoints: Vec<EndpointPlan>,
}

/// How Envoy learns a version's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    /// Every endpoint is an IP address: the endpoints are a resource of their own (EDS), so a
    /// drain or a new endpoint changes only them and the cluster stays as it is.
    Eds,
    /// Some endpoint is a DNS name: Envoy resolves the names itself (a DNS cluster, each address
    /// a name has being an endpoint), and the endpoints are part of the cluster's definition:
    /// any change to them redefines the cluster, which Envoy warms (resolves the names, runs
    /// the first health checks) before it replaces the previous definition.
    Dns,
}

impl Discovery {
    /// The discovery a version with these endpoints needs.
    pub fn of(endpoints: &[EndpointPlan]) -> Discovery {
        if endpoints.iter().any(|e| e.address.is_name()) {
            Discovery::Dns
        } else {
            Discovery::Eds
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPlan {
    pub address: EndpointAddress,
    pub weight: Option<u32>,
    pub health: Health,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Gets requests (Envoy's health checks and outlier detection still apply).
    Active,
    /// `drain: true` in the file: no new requests.
    Draining,
    /// Left the file: draining until it is removed.
    Removed { until: Timestamp },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Routed,
    Lingering { until: Timestamp },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    /// Besides the listener route's path match; all must hold.
    pub conditions: Vec<Condition>,
    pub target: Target,
    /// Answers through this route give the user their sticky bucket (a first visit).
    pub set_cookie: Option<StickyCookie>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    One(ClusterRef),
    Weighted(Vec<WeightedTarget>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedTarget {
    pub cluster: ClusterRef,
    /// Parts per million.
    pub weight: u32,
}

/// The sticky cookie a first visit gets: its value is the request's id, whose first three
/// hex digits are the user's bucket for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyCookie {
    pub name: String,
    pub ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoutePolicy {
    pub timeout: Option<Duration>,
    pub retries: Option<Retries>,
    pub hash: Option<HashOn>,
    pub mirror: Option<(ClusterId, Percent)>,
    /// WebSocket upgrades pass through.
    pub websocket: bool,
}

/// The plan for `spec` given `state` at `now`. Pure and deterministic.
pub fn plan(spec: &Spec, state: &RuntimeState, now: Timestamp) -> Plan {
    let mut services: BTreeMap<String, ServicePlan> = BTreeMap::new();
    for (name, service) in &spec.services {
        let service = &*state.effective(name, service);
        let receiving = service.receiving_versions();
        let mut versions = BTreeMap::new();
        for (version_name, version) in &service.versions {
            let id = ClusterId::new(name, version_name);
            let Some(role) = role(spec, state, &id, service, &receiving, now) else {
                continue;
            };
            let endpoints = endpoints(&version.endpoints, state.draining.get(&id), now);
            versions.insert(
                version_name.clone(),
                VersionPlan {
                    role,
                    policy: service.policy.clone(),
                    discovery: Discovery::of(&endpoints),
                    endpoints,
                },
            );
        }
        let fallbacks = fallbacks(name, service)
            .into_iter()
            .map(|f| (f, Presence::Routed))
            .collect();
        let routes = routes::service_routes(name, service, |v| versions.contains_key(v));
        services.insert(
            name.clone(),
            ServicePlan {
                in_file: true,
                versions,
                fallbacks,
                routes,
                route_policy: route_policy(name, service),
                split: split(&service.strategy),
                proxyless: spec.proxyless_routing(name).next().is_some(),
            },
        );
    }
    for (id, removed) in &state.removed {
        if removed.until <= now {
            continue;
        }
        let service = services
            .entry(id.service.clone())
            .or_insert_with(ServicePlan::lingering);
        if service.versions.contains_key(&id.version) {
            continue;
        }
        let endpoints = endpoints(&removed.endpoints, state.draining.get(id), now);
        service.versions.insert(
            id.version.clone(),
            VersionPlan {
                role: Role::Removed {
                    until: removed.until,
                },
                policy: removed.policy.clone(),
                discovery: Discovery::of(&endpoints),
                endpoints,
            },
        );
    }
    for (f, until) in &state.fallbacks {
        if *until <= now {
            continue;
        }
        services
            .entry(f.service.clone())
            .or_insert_with(ServicePlan::lingering)
            .fallbacks
            .entry(f.clone())
            .or_insert(Presence::Lingering { until: *until });
    }
    let mut listeners: Vec<ListenerPlan> = spec
        .listeners
        .iter()
        .map(|l| ListenerPlan {
            name: l.name.clone(),
            kind: l.kind,
            routes: l.routes.clone(),
            hosts: l.hosts.clone(),
            redirect: l.redirect,
            tls: l.tls.clone(),
        })
        .collect();
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    let groups = group_plans(spec, state, &services, now);
    Plan {
        listeners,
        services,
        groups,
        node_groups: spec.node_groups(),
        pem_files: spec.pem_files.clone(),
    }
}

/// What each group gets (see [`Plan::groups`]). A group gets the services its listeners route
/// to, and versions that left the file where they were routed when they left; a service
/// removed from the file with no record of where it was routed (a runtime state written before
/// the file had groups) drains in every group, which is safe if not minimal.
fn group_plans(
    spec: &Spec,
    state: &RuntimeState,
    services: &BTreeMap<String, ServicePlan>,
    now: Timestamp,
) -> BTreeMap<GroupId, GroupPlan> {
    if spec.groups.is_empty() {
        let mut listeners: Vec<String> = spec.listeners.iter().map(|l| l.name.clone()).collect();
        listeners.sort();
        let services = services.keys().cloned().collect();
        return BTreeMap::from([(
            GroupId::all(),
            GroupPlan {
                listeners,
                services,
            },
        )]);
    }
    let mut out: BTreeMap<GroupId, GroupPlan> = BTreeMap::new();
    for g in &spec.groups {
        let mut listeners = g.listeners.clone();
        listeners.sort();
        let services = g
            .listeners
            .iter()
            .flat_map(|l| spec.routed_by(l))
            .map(str::to_owned)
            .collect();
        out.insert(
            GroupId::named(&g.name),
            GroupPlan {
                listeners,
                services,
            },
        );
    }
    for (name, service) in services {
        let mut recorded: BTreeSet<&str> = BTreeSet::new();
        let mut unrecorded = false;
        for (id, r) in &state.removed {
            if id.service == *name && r.until > now {
                recorded.extend(r.groups.iter().map(String::as_str));
                unrecorded |= r.groups.is_empty();
            }
        }
        let everywhere = !service.in_file && (unrecorded || recorded.is_empty());
        for (id, g) in &mut out {
            if everywhere || recorded.contains(id.as_str()) {
                g.services.insert(name.clone());
            }
        }
    }
    out.insert(GroupId::unmatched(), GroupPlan::default());
    out
}

/// Why a version of the file has a cluster, or `None` if it has none (a retired red-black
/// version).
fn role(
    spec: &Spec,
    state: &RuntimeState,
    id: &ClusterId,
    service: &Service,
    receiving: &std::collections::BTreeSet<&str>,
    now: Timestamp,
) -> Option<Role> {
    if receiving.contains(id.version.as_str()) {
        return Some(Role::Serving);
    }
    if !matches!(service.strategy, Strategy::RedBlack { .. }) {
        return Some(Role::Idle);
    }
    let retiring = state.retiring.get(id)?;
    if state::watched_switch_from(&state.rollouts, id) {
        return Some(Role::Retiring { deadline: None });
    }
    let deadline = state::grace(spec, &id.service).and_then(|g| retiring.deadline(g));
    match deadline {
        Some(t) if t <= now => None,
        deadline => Some(Role::Retiring { deadline }),
    }
}

/// The file's endpoints, then those that left it and still drain.
fn endpoints(
    file: &[Endpoint],
    draining: Option<&BTreeMap<EndpointAddress, state::DrainingEndpoint>>,
    now: Timestamp,
) -> Vec<EndpointPlan> {
    let mut out: Vec<EndpointPlan> = file
        .iter()
        .map(|e| EndpointPlan {
            address: e.address.clone(),
            weight: e.weight,
            health: if e.drain {
                Health::Draining
            } else {
                Health::Active
            },
        })
        .collect();
    let Some(draining) = draining.filter(|d| !d.is_empty()) else {
        return out;
    };
    let in_file: std::collections::BTreeSet<&EndpointAddress> =
        file.iter().map(|e| &e.address).collect();
    for (address, d) in draining {
        if d.until > now && !in_file.contains(address) {
            out.push(EndpointPlan {
                address: address.clone(),
                weight: d.weight,
                health: Health::Removed { until: d.until },
            });
        }
    }
    out
}

/// The versions of `spec` that have a cluster given `state` (every version but retired
/// red-black ones), with their definition.
pub(crate) fn deployed_versions<'a>(
    spec: &'a Spec,
    state: &'a RuntimeState,
    now: Timestamp,
) -> impl Iterator<Item = (ClusterId, &'a Version, &'a Policy)> + 'a {
    spec.services.iter().flat_map(move |(name, service)| {
        let served = state.effective(name, service);
        let receiving = served.receiving_versions();
        service
            .versions
            .iter()
            .filter_map(|(v, version)| {
                let id = ClusterId::new(name, v);
                role(spec, state, &id, &served, &receiving, now)
                    .map(|_| (id, version, &service.policy))
            })
            .collect::<Vec<_>>()
    })
}

/// Traffic sent to a version *besides* the service's default (a split canary's share, an A/B
/// rule's group) falls back to the default version when that version has no healthy endpoint,
/// rather than keep its share and fail it: one aggregate cluster per such version, sorted.
pub(crate) fn fallbacks(name: &str, service: &Service) -> Vec<FallbackId> {
    let default = service.default_version();
    let mut versions: Vec<&str> = Vec::new();
    if let Strategy::Canary { canary, weight, .. } = &service.strategy
        && weight.ppm() > 0
        && weight.ppm() < Percent::MILLION
    {
        versions.push(canary);
    }
    versions.extend(
        service
            .rules
            .iter()
            .map(|r| r.version.as_str())
            .filter(|v| *v != default),
    );
    versions.sort_unstable();
    versions.dedup();
    versions
        .into_iter()
        .map(|v| FallbackId {
            service: name.to_owned(),
            version: v.to_owned(),
            fallback: default.to_owned(),
        })
        .collect()
}

fn route_policy(name: &str, service: &Service) -> RoutePolicy {
    let policy = &service.policy;
    RoutePolicy {
        timeout: policy.timeout,
        retries: (policy.retries.attempts > 0 && !policy.retries.on.is_empty())
            .then(|| policy.retries.clone()),
        hash: match &policy.load_balancing {
            LoadBalancing::RingHash(on) | LoadBalancing::Maglev(on) => Some(on.clone()),
            _ => None,
        },
        mirror: service
            .mirror
            .as_ref()
            .map(|m| (ClusterId::new(name, &m.version), m.percent)),
        websocket: policy.websocket,
    }
}

/// Intended share of answered requests per version (parts per million).
fn split(strategy: &Strategy) -> BTreeMap<String, u32> {
    match strategy {
        Strategy::Canary {
            stable,
            canary,
            weight,
            ..
        } => BTreeMap::from([
            (stable.clone(), Percent::MILLION - weight.ppm()),
            (canary.clone(), weight.ppm()),
        ]),
        other => other
            .serving_versions()
            .into_iter()
            .map(|v| (v.to_owned(), Percent::MILLION))
            .collect(),
    }
}

#[cfg(test)]
mod tests;
