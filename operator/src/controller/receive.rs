//! The ReceiveCluster controller: applies the receiver StatefulSet, Services, PDB and
//! the hashring ConfigMap (from Ready pods), then reports status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{
    Context, Error, apply, apply_params, apply_statefulset, condition, now, report_failure,
};
use crate::crd::{ReceiveCluster, ReceiveClusterStatus};
use crate::receive::{
    HASHRING_KEY, all_endpoints, hashring_configmap, hashring_configmap_name, headless_service,
    next_hashring, parse_hashring_endpoints, pod_disruption_budget, ready_endpoints,
    remote_write_service, remote_write_url, selector_string, statefulset,
};

pub const CONTROLLER: &str = "receivecluster";

/// What [`resize_claims`] did.
#[derive(Debug, Default, PartialEq)]
pub struct Resized {
    pub resized: Vec<String>,
    /// `name: reason` of each claim whose resize the API server refused (a shrink,
    /// a StorageClass without `allowVolumeExpansion`, …).
    pub failed: Vec<String>,
}

/// Sets `spec.resources.requests.storage` of the existing `data-<sts>-<ordinal>`
/// claims to `size`. Kubernetes never applies a changed `volumeClaimTemplates` to
/// existing claims, so without this a size change only reaches new replicas. Missing
/// claims and claims already at `size` are skipped.
pub async fn resize_claims(
    api: &Api<PersistentVolumeClaim>,
    sts: &str,
    replicas: i32,
    size: &str,
) -> Resized {
    let mut out = Resized::default();
    for i in 0..replicas.max(0) {
        let name = format!("data-{sts}-{i}");
        let pvc = match api.get_opt(&name).await {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                out.failed.push(format!("{name}: {e}"));
                continue;
            }
        };
        let current = pvc
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.as_str());
        if current == Some(size) {
            continue;
        }
        let patch = Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": size}}}}));
        match api.patch(&name, &PatchParams::default(), &patch).await {
            Ok(_) => out.resized.push(name),
            Err(kube::Error::Api(s)) => out.failed.push(format!("{name}: {}", s.message)),
            Err(e) => out.failed.push(format!("{name}: {e}")),
        }
    }
    out
}

/// Reconciles one ReceiveCluster.
pub async fn reconcile(rc: Arc<ReceiveCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let res = reconcile_inner(&rc, &ctx).await;
    ctx.metrics
        .observe(CONTROLLER, start.elapsed(), res.is_err());
    match &res {
        Ok(_) => ctx.record_success(&key(&rc)),
        Err(e) => report_failure(&*rc, &ctx, e).await,
    }
    res
}

fn key(rc: &ReceiveCluster) -> String {
    format!(
        "{CONTROLLER}/{}/{}",
        rc.namespace().unwrap_or_default(),
        rc.name_any()
    )
}

/// Requeues with a backoff that grows with consecutive failures.
pub fn error_policy(rc: Arc<ReceiveCluster>, err: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.record_failure(&key(&rc));
    super::error_policy_action(CONTROLLER, &rc.name_any(), err, failures)
}

async fn reconcile_inner(rc: &ReceiveCluster, ctx: &Context) -> Result<Action, Error> {
    let ns = rc
        .namespace()
        .ok_or_else(|| Error::Invalid("ReceiveCluster without a namespace".into()))?;
    let name = rc.name_any();
    // Being deleted: the garbage collector removes the children; re-applying them
    // (foreground deletion keeps the object around meanwhile) would only fight it.
    if rc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if rc.spec.paused {
        tracing::info!(%ns, %name, "paused; leaving children alone");
        return Ok(Action::requeue(Duration::from_secs(300)));
    }
    let client = ctx.client.clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let stss: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let rcs: Api<ReceiveCluster> = Api::namespaced(client, &ns);

    // The hashring: Ready pods (see `next_hashring` for the policy). Written before
    // the StatefulSet so the pods' ConfigMap volume exists when they start.
    let pod_list = pods
        .list(&ListParams::default().labels(&selector_string(&name)))
        .await?;
    let ready = ready_endpoints(&pod_list.items, &name, &ns);
    let previous = cms
        .get_opt(&hashring_configmap_name(&name))
        .await?
        .and_then(|cm| cm.data)
        .and_then(|d| {
            d.get(HASHRING_KEY)
                .and_then(|j| parse_hashring_endpoints(j))
        });
    let all = all_endpoints(&name, &ns, rc.spec.replicas);
    let ring = next_hashring(
        previous.as_deref(),
        &ready,
        &all,
        rc.spec.replication_factor,
    );
    if previous.as_deref() != Some(ring.as_slice()) {
        tracing::info!(%ns, %name, members = ring.len(), "hashring changed");
    }
    apply(&cms, &hashring_configmap(rc, &ring)).await?;
    apply(&svcs, &headless_service(rc)).await?;
    apply(&svcs, &remote_write_service(rc)).await?;
    let (sts, recreated) = apply_statefulset(&stss, &statefulset(rc, &ctx.default_image)).await?;
    if recreated {
        // A new template reaches only claims created from now on: resize the existing
        // ones ourselves and say which could not be resized.
        let mut note = format!(
            "StatefulSet {} re-created for a change of an immutable field; pods and PVCs were kept",
            sts.name_any()
        );
        let mut event_type = EventType::Normal;
        if let Some(st) = &rc.spec.storage {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
            let r = resize_claims(&pvcs, &sts.name_any(), rc.spec.replicas, &st.size).await;
            if !r.resized.is_empty() {
                note.push_str(&format!(
                    "; resized to {}: {}",
                    st.size,
                    r.resized.join(", ")
                ));
            }
            if !r.failed.is_empty() {
                event_type = EventType::Warning;
                note.push_str(&format!(
                    "; NOT resized (they keep their old size): {}",
                    r.failed.join("; ")
                ));
            }
        }
        ctx.publish_event(rc, event_type, "StatefulSetRecreated", "Recreate", note)
            .await;
    }
    apply(&pdbs, &pod_disruption_budget(rc)).await?;

    let ready_replicas = sts
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let previous_conditions = rc
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let status = ReceiveClusterStatus {
        observed_generation: rc.metadata.generation,
        ready_replicas,
        hashring_endpoints: ring.clone(),
        remote_write_url: Some(remote_write_url(&name, &ns)),
        conditions: conditions(
            &previous_conditions,
            rc.metadata.generation,
            rc.spec.replicas,
            rc.spec.replication_factor,
            ready_replicas,
            ring.len(),
            &now(),
        ),
    };
    rcs.patch_status(
        &name,
        &apply_params(),
        &Patch::Apply(json!({
            "apiVersion": "orrery.dev/v1alpha1",
            "kind": "ReceiveCluster",
            "status": status,
        })),
    )
    .await?;
    Ok(if ready_replicas < rc.spec.replicas {
        Action::requeue(Duration::from_secs(15))
    } else {
        Action::requeue(Duration::from_secs(300))
    })
}

/// `Ready` (all replicas ready and a full ring), `Progressing` (rolling out),
/// `Degraded` (fewer ready receivers than the replication factor: writes fail).
pub fn conditions(
    previous: &[Condition],
    generation: Option<i64>,
    replicas: i32,
    rf: i32,
    ready: i32,
    ring_len: usize,
    now: &Time,
) -> Vec<Condition> {
    let ring_ok = ring_len >= usize::try_from(rf.max(1)).unwrap_or(1);
    let all_ready = ready >= replicas && ring_ok;
    let degraded = ready < rf;
    vec![
        condition(
            previous,
            "Ready",
            all_ready,
            if all_ready {
                "AllReplicasReady"
            } else {
                "ReplicasNotReady"
            },
            format!("{ready}/{replicas} receivers ready, {ring_len} in the hashring"),
            generation,
            now,
        ),
        condition(
            previous,
            "Progressing",
            ready < replicas,
            if ready < replicas {
                "RollingOut"
            } else {
                "Stable"
            },
            format!("{ready}/{replicas} receivers ready"),
            generation,
            now,
        ),
        condition(
            previous,
            "Degraded",
            degraded,
            if degraded {
                "BelowReplicationFactor"
            } else {
                "QuorumAvailable"
            },
            format!("{ready} ready receivers for replication factor {rf}"),
            generation,
            now,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_follow_readiness() {
        let t = now();
        let cs = conditions(&[], Some(4), 3, 3, 1, 3, &t);
        let get =
            |cs: &[Condition], ty: &str| cs.iter().find(|c| c.type_ == ty).unwrap().status.clone();
        assert_eq!(get(&cs, "Ready"), "False");
        assert_eq!(get(&cs, "Progressing"), "True");
        assert_eq!(get(&cs, "Degraded"), "True");
        assert!(cs.iter().all(|c| c.observed_generation == Some(4)));
        let cs = conditions(&cs, Some(4), 3, 3, 3, 3, &t);
        assert_eq!(get(&cs, "Ready"), "True");
        assert_eq!(get(&cs, "Progressing"), "False");
        assert_eq!(get(&cs, "Degraded"), "False");
        let cs = conditions(&cs, Some(5), 3, 1, 2, 2, &t);
        assert_eq!(get(&cs, "Ready"), "False");
        assert_eq!(get(&cs, "Degraded"), "False");
    }
}
