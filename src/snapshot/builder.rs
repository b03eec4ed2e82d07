//! Snapshots built from one save to the next, translating and encoding again only what changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;

use super::{Resource, ResourceType, Snapshot};
use crate::ids::ClusterId;
use crate::reconcile::{Plan, ServicePlan};
use crate::translate::{
    Resources, VersionInputs, fallback_cluster, listener_resources, version_resources,
};

/// Builds each config version's snapshot from its plan, keeping the encoded resources of every
/// service version whose inputs ([`VersionInputs`]) and the plan's PEM files are what they were
/// at the last build, and those of the aggregate clusters that are still there: a save that
/// changes one service translates and encodes that service's clusters, the listeners, their
/// routes and certificates, and nothing else.
///
/// What [`Builder::build`] returns is always [`Snapshot::new`]`(&`[`crate::translate::translate`]`(plan))`,
/// the same bytes and versions; only the work differs. Keeping a resource costs a comparison
/// of its inputs and a lookup, against translating and encoding it (about 3 µs for a cluster
/// and its endpoints, see docs/benchmarks.md).
#[derive(Debug, Default)]
pub struct Builder {
    /// The last plan built, with its snapshot.
    last: Option<(Arc<Plan>, Snapshot)>,
}

/// What one [`Builder::build`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Built {
    /// Resources translated and encoded.
    pub encoded: usize,
    /// Resources kept, encoded, from the last build.
    pub kept: usize,
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
        for (name, service) in &plan.services {
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
        }
        // What a listener sends depends on every service it routes to: built again each time.
        let mut out = Resources::default();
        for l in &plan.listeners {
            listener_resources(l, plan, &mut out);
        }
        for l in &out.listeners {
            let names_clusters = crate::translate::names_clusters(l);
            sets.encode(ResourceType::Listener, &l.name, l, names_clusters);
        }
        for r in &out.routes {
            sets.encode(ResourceType::Route, &r.name, r, false);
        }
        for s in &out.secrets {
            sets.encode(ResourceType::Secret, &s.name, s, false);
        }
        let built = sets.built;
        let snapshot = Snapshot::of_sets(sets.sets);
        self.last = Some((plan.clone(), snapshot.clone()));
        (snapshot, built)
    }
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
    sets: [BTreeMap<String, Resource>; ResourceType::COUNT],
    built: Built,
}

impl Sets {
    fn keep(&mut self, ty: ResourceType, r: Resource) {
        self.built.kept += 1;
        self.sets[ty.index()].insert(r.name.clone(), r);
    }

    fn encode(
        &mut self,
        ty: ResourceType,
        name: &str,
        message: &impl Message,
        names_clusters: bool,
    ) {
        self.built.encoded += 1;
        let r = super::encode(ty, name, message.encode_to_vec(), names_clusters);
        self.sets[ty.index()].insert(name.to_owned(), r);
    }
}

#[cfg(test)]
mod tests;
