//! Snapshots built from one save to the next, translating and encoding again only what changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use prost::Message;

use super::{ByType, Resource, ResourceType, Snapshot};
use crate::ids::ClusterId;
use crate::node::GroupId;
use crate::reconcile::{Plan, ServicePlan};
use crate::translate::{
    Resources, RouteInputs, VersionInputs, encoded_listener_routes, fallback_cluster,
    listed_routes, listener_and_certificates, route_configuration_encoded, version_resources,
};

/// Builds each config version's snapshot from its plan, keeping the encoded resources of every
/// service version whose inputs ([`VersionInputs`]) and the plan's PEM files are what they were
/// at the last build, and those of the aggregate clusters that are still there; a listener's
/// route configuration is assembled from the encoded Envoy routes under each listener route,
/// kept while its [`RouteInputs`] are the same. A save that changes one service translates and
/// encodes that service's clusters and routes, assembles the route configurations again, builds
/// the listeners and their certificates, and nothing else.
///
/// What [`Builder::build`] returns is always [`Snapshot::new`]`(&`[`crate::translate::translate`]`(plan))`,
/// the same bytes and versions; only the work differs. Keeping a resource costs a comparison
/// of its inputs and a lookup, against translating and encoding it (about 6 µs for a cluster
/// and its endpoints, see docs/benchmarks.md).
#[derive(Debug, Default)]
pub struct Builder {
    /// The last plan built, with its snapshot.
    last: Option<(Arc<Plan>, Snapshot)>,
    /// By listener of the last plan, by list and position of its listener routes (see
    /// [`listed_routes`]): the encoded Envoy routes under each.
    routes: HashMap<String, Vec<Vec<Bytes>>>,
    /// With node groups, what each service and listener of the last plan made.
    made: Option<Made>,
}

/// What one [`Builder::build`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Built {
    /// Resources translated and encoded.
    pub encoded: usize,
    /// Resources kept, encoded, from the last build.
    pub kept: usize,
    /// Listener routes whose encoded Envoy routes were kept from the last build (their route
    /// configuration is among `encoded`).
    pub routes_kept: usize,
}

impl Builder {
    /// The snapshot of `plan` (see [`Builder`]).
    pub fn build(&mut self, plan: &Arc<Plan>) -> (Snapshot, Built) {
        // A service's clusters read the PEM files (upstream TLS): when those change, nothing
        // is kept.
        let last = self
            .last
            .as_ref()
            .filter(|(p, _)| p.pem_files == plan.pem_files);
        let mut sets = Sets::default();
        // With node groups, what each service and listener made: a group's snapshot is the
        // part of the whole its own services and listeners made.
        let mut made = plan.node_groups.is_targeted().then(Made::default);
        for (name, service) in &plan.services {
            sets.record(made.is_some());
            let before = last.and_then(|(p, s)| Some((p.services.get(name)?, s)));
            for (version_name, version) in &service.versions {
                let id = ClusterId::new(name, version_name);
                let inputs = VersionInputs::of(service, version);
                if let Some(kept) =
                    before.and_then(|(b, s)| kept_version(b, version_name, inputs, s, &id))
                {
                    kept.into_iter().for_each(|(ty, r)| sets.keep(ty, r));
                    continue;
                }
                let (cluster, endpoints) = version_resources(&id, inputs, &plan.pem_files);
                sets.encode(ResourceType::Cluster, &cluster.name, &cluster, false);
                if let Some(e) = endpoints {
                    sets.encode(ResourceType::Endpoint, &e.cluster_name, &e, false);
                }
            }
            for fallback in service.fallbacks.keys() {
                // An aggregate cluster is its name and whether proxyless clients read it.
                let kept = before
                    .filter(|(b, _)| {
                        b.proxyless == service.proxyless && b.fallbacks.contains_key(fallback)
                    })
                    .and_then(|(_, s)| s.get(ResourceType::Cluster, &fallback.to_string()));
                match kept {
                    Some(r) => sets.keep(ResourceType::Cluster, r.clone()),
                    None => {
                        let c = fallback_cluster(fallback, service.proxyless);
                        sets.encode(ResourceType::Cluster, &c.name, &c, false);
                    }
                }
            }
            if let Some(m) = &mut made {
                m.services.insert(name.clone(), sets.recorded());
            }
        }
        // A listener and its certificates are a few resources, built again each time; its
        // routes keep the bytes of every listener route whose inputs did not change.
        let mut memo = HashMap::new();
        for l in &plan.listeners {
            sets.record(made.is_some());
            let mut out = Resources::default();
            listener_and_certificates(l, plan, &mut out);
            for l in &out.listeners {
                let names_clusters = crate::translate::names_clusters(l);
                sets.encode(ResourceType::Listener, &l.name, l, names_clusters);
            }
            for s in &out.secrets {
                sets.encode(ResourceType::Secret, &s.name, s, false);
            }
            let before = self.last.as_ref().and_then(|(p, _)| {
                let i = p.listeners.binary_search_by(|b| b.name.cmp(&l.name)).ok()?;
                Some((p, &p.listeners[i], self.routes.get(&l.name)?))
            });
            let mut lists: Vec<Vec<Bytes>> = Vec::new();
            let encoded = route_configuration_encoded(l, plan, |list, position, inputs| {
                let kept = before.and_then(|(p, b, memo)| {
                    let r = listed_routes(b, list)?.get(position)?;
                    (RouteInputs::of(b, r, p) == inputs)
                        .then(|| memo.get(list)?.get(position).cloned())
                        .flatten()
                });
                if kept.is_some() {
                    sets.built.routes_kept += 1;
                }
                let bytes = kept.unwrap_or_else(|| encoded_listener_routes(inputs));
                if lists.len() <= list {
                    lists.resize_with(list + 1, Vec::new);
                }
                lists[list].push(bytes.clone());
                bytes
            });
            if let Some((name, encoded)) = encoded {
                let r = super::encode(ResourceType::Route, &name, encoded, false);
                sets.add(ResourceType::Route, r);
                sets.built.encoded += 1;
                memo.insert(l.name.clone(), lists);
            }
            if let Some(m) = &mut made {
                m.listeners.insert(l.name.clone(), sets.recorded());
            }
        }
        self.routes = memo;
        let built = sets.built;
        let snapshot = Snapshot::of_sets(sets.sets);
        self.last = Some((plan.clone(), snapshot.clone()));
        self.made = made;
        (snapshot, built)
    }

    /// The snapshot of every node group of `plan` ([`Plan::groups`]; the one group
    /// [`GroupId::all`] when the file has none): each the part of the whole snapshot that the
    /// group's services and listeners made, sharing its bytes. The same as selecting what
    /// [`crate::translate::translate_group`] gives, without translating anything again.
    pub fn build_groups(&mut self, plan: &Arc<Plan>) -> (BTreeMap<GroupId, Snapshot>, Built) {
        let (everything, built) = self.build(plan);
        let Some(made) = &self.made else {
            return (BTreeMap::from([(GroupId::all(), everything)]), built);
        };
        let groups = plan
            .groups
            .iter()
            .map(|(id, g)| {
                let services = g.services.iter().filter_map(|s| made.services.get(s));
                let listeners = g.listeners.iter().filter_map(|l| made.listeners.get(l));
                let names = services.chain(listeners).flatten();
                (id.clone(), everything.select_names(names))
            })
            .collect();
        (groups, built)
    }
}

/// The resources each service and listener of a plan made, by name.
#[derive(Debug, Default)]
struct Made {
    services: HashMap<String, Vec<(ResourceType, String)>>,
    listeners: HashMap<String, Vec<(ResourceType, String)>>,
}

/// A version's encoded resources from the last build, if its inputs are the same.
fn kept_version(
    before: &ServicePlan,
    version: &str,
    inputs: VersionInputs<'_>,
    last: &Snapshot,
    id: &ClusterId,
) -> Option<Vec<(ResourceType, Resource)>> {
    let v = before.versions.get(version)?;
    if VersionInputs::of(before, v) != inputs {
        return None;
    }
    let name = id.to_string();
    let mut kept = vec![(
        ResourceType::Cluster,
        last.get(ResourceType::Cluster, &name)?.clone(),
    )];
    if inputs.discovery == crate::reconcile::Discovery::Eds {
        kept.push((
            ResourceType::Endpoint,
            last.get(ResourceType::Endpoint, &name)?.clone(),
        ));
    }
    Some(kept)
}

#[derive(Default)]
struct Sets {
    sets: ByType<BTreeMap<String, Resource>>,
    built: Built,
    /// The names added since [`Sets::record`], when recording.
    recording: Option<Vec<(ResourceType, String)>>,
}

impl Sets {
    /// Starts recording the names added (or not, `on` false).
    fn record(&mut self, on: bool) {
        self.recording = on.then(Vec::new);
    }

    /// The names added since [`Sets::record`].
    fn recorded(&mut self) -> Vec<(ResourceType, String)> {
        self.recording.take().unwrap_or_default()
    }

    fn add(&mut self, ty: ResourceType, r: Resource) {
        if let Some(names) = &mut self.recording {
            names.push((ty, r.name.clone()));
        }
        self.sets[ty].insert(r.name.clone(), r);
    }

    fn keep(&mut self, ty: ResourceType, r: Resource) {
        self.built.kept += 1;
        self.add(ty, r);
    }

    fn encode(
        &mut self,
        ty: ResourceType,
        name: &str,
        message: &impl Message,
        names_clusters: bool,
    ) {
        self.built.encoded += 1;
        self.add(
            ty,
            super::encode(ty, name, message.encode_to_vec(), names_clusters),
        );
    }
}

#[cfg(test)]
mod tests;
