//! The GlobalView controller: applies the querier Deployment and Service wired to the
//! selected ReceiveClusters, writes our remote_write entry into each registered
//! cluster's Prometheus (a Prometheus Operator CR or a prometheus.yml ConfigMap),
//! measures whether data flows, and removes the entries again on deletion.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event, finalizer};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::{Context, Error, apply, apply_params, condition, edit_with_retry, now, report_failure};
use crate::crd::{
    ClusterMode, ClusterSpec, ClusterStatus, ConfigMapRef, GlobalView, GlobalViewStatus,
    PrometheusRef, ReceiveCluster, RemoteClusterSecretRef,
};
use crate::probe::{
    RELOAD_FOLLOW_ATTEMPTS, RELOAD_FOLLOW_INTERVAL, config_names_any, reload_until_loaded,
};
use crate::query::{
    cluster_remote_write_url, querier_deployment, querier_endpoints, querier_service, querier_url,
    select_receive_clusters,
};
use crate::remote_cluster::RemoteCluster;
use crate::remote_write::{
    EntryId, RemoteWriteEntry, remove_from_prometheus_cr, remove_from_prometheus_yml,
    upsert_prometheus_cr, upsert_prometheus_yml,
};
use crate::sidecar::{SidecarInjection, remove_sidecar, sidecar_service, upsert_sidecar};

pub const CONTROLLER: &str = "globalview";
/// Finalizer that removes our remote_write entries before a GlobalView goes away.
pub const FINALIZER: &str = "orrery.dev/remote-write-cleanup";
/// Annotation on a Prometheus CR or ConfigMap in another namespace that lets GlobalViews
/// of the listed namespaces (comma-separated, or `*`) edit it. Without it the operator
/// only edits targets in the GlobalView's own namespace: it acts with its own, wide
/// rights, so it must not let a tenant reach what the tenant could not edit itself.
pub const ALLOW_FROM_ANNOTATION: &str = "orrery.dev/allow-globalviews-from";
/// Annotation on a GlobalView that drops the finalizer without touching any target
/// (the escape when a target can never be cleaned).
pub const SKIP_CLEANUP_ANNOTATION: &str = "orrery.dev/skip-cleanup";
/// Deletion attempts after which cleanup gives up on targets that keep failing with
/// errors that might clear (timeouts, 5xx, conflicts); with the error policy's
/// backoff this is about two and a half minutes.
pub const MAX_CLEANUP_ATTEMPTS: u32 = 5;
/// A cluster whose newest sample is older than this is not flowing.
pub const MAX_SAMPLE_AGE_SECS: f64 = 300.0;

/// The Prometheus Operator's `Prometheus` kind.
pub fn prometheus_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "Prometheus"),
        "prometheuses",
    )
}

fn key(gv: &GlobalView) -> String {
    format!(
        "{CONTROLLER}/{}/{}",
        gv.namespace().unwrap_or_default(),
        gv.name_any()
    )
}

/// Reconciles one GlobalView (behind its finalizer).
pub async fn reconcile(gv: Arc<GlobalView>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let ns = gv
        .namespace()
        .ok_or_else(|| Error::Invalid("GlobalView without a namespace".into()))?;
    let api: Api<GlobalView> = Api::namespaced(ctx.client.clone(), &ns);
    let k = key(&gv);
    let inner = ctx.clone();
    let gv_for_report = gv.clone();
    let res = finalizer(&api, FINALIZER, gv, move |event| async move {
        match event {
            Event::Apply(gv) => apply_view(&gv, &inner).await,
            Event::Cleanup(gv) => cleanup(&gv, &inner).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(e.to_string()));
    ctx.metrics
        .observe(CONTROLLER, start.elapsed(), res.is_err());
    match &res {
        Ok(_) => ctx.record_success(&k),
        // Cleanup reports its own failures (Events naming each entry).
        Err(e) if gv_for_report.metadata.deletion_timestamp.is_none() => {
            report_failure(&*gv_for_report, &ctx, e).await
        }
        Err(_) => {}
    }
    res
}

pub fn error_policy(gv: Arc<GlobalView>, err: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.record_failure(&key(&gv));
    super::error_policy_action(CONTROLLER, &gv.name_any(), err, failures)
}

/// Where one cluster's entry (or sidecar) lives, and which of the two it is: a
/// change of either undoes the old one.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub prometheus_ref: Option<PrometheusRef>,
    pub config_map_ref: Option<ConfigMapRef>,
    pub remote_cluster_secret_ref: Option<RemoteClusterSecretRef>,
    pub mode: ClusterMode,
}

impl Target {
    pub fn of_spec(c: &ClusterSpec) -> Self {
        Target {
            prometheus_ref: c.prometheus_ref.clone(),
            config_map_ref: c.config_map_ref.clone(),
            remote_cluster_secret_ref: c.remote_cluster_secret_ref.clone(),
            mode: c.mode,
        }
    }
    pub fn of_status(c: &ClusterStatus) -> Self {
        Target {
            prometheus_ref: c.prometheus_ref.clone(),
            config_map_ref: c.config_map_ref.clone(),
            remote_cluster_secret_ref: c.remote_cluster_secret_ref.clone(),
            mode: c.mode,
        }
    }
    /// The namespace of a target in this cluster (`None` for a remote cluster, whose
    /// access is governed by the token in the remote-cluster Secret, not by our rights).
    fn local_namespace<'a>(&'a self, default_ns: &'a str) -> Option<&'a str> {
        if self.remote_cluster_secret_ref.is_some() {
            return None;
        }
        match (&self.prometheus_ref, &self.config_map_ref) {
            (Some(p), _) => Some(p.namespace.as_deref().unwrap_or(default_ns)),
            (None, Some(c)) => Some(c.namespace.as_deref().unwrap_or(default_ns)),
            (None, None) => None,
        }
    }
    fn reload_url(&self) -> Option<&str> {
        self.config_map_ref.as_ref()?.reload_url.as_deref()
    }
    fn describe(&self, default_ns: &str) -> String {
        match (&self.prometheus_ref, &self.config_map_ref) {
            (Some(p), _) => format!(
                "Prometheus {}/{}",
                p.namespace.as_deref().unwrap_or(default_ns),
                p.name
            ),
            (None, Some(c)) => format!(
                "ConfigMap {}/{} key {}",
                c.namespace.as_deref().unwrap_or(default_ns),
                c.name,
                c.key
            ),
            (None, None) => "nothing".to_string(),
        }
    }
}

async fn apply_view(gv: &GlobalView, ctx: &Context) -> Result<Action, Error> {
    let ns = gv.namespace().unwrap_or_default();
    let name = gv.name_any();
    if gv.spec.paused {
        return Ok(Action::requeue(Duration::from_secs(300)));
    }
    let client = ctx.client.clone();
    let rcs: Api<ReceiveCluster> = Api::namespaced(client.clone(), &ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let gvs: Api<GlobalView> = Api::namespaced(client, &ns);

    let candidates = rcs.list(&ListParams::default()).await?.items;
    let selected =
        select_receive_clusters(gv, &candidates).map_err(|e| Error::Invalid(e.to_string()))?;
    let endpoints = querier_endpoints(gv, &selected);
    let dep = apply(
        &deps,
        &querier_deployment(gv, &endpoints, &ctx.default_image),
    )
    .await?;
    apply(&svcs, &querier_service(gv)).await?;

    let previous = gv.status.clone().unwrap_or_default();
    // Entries of clusters that left the spec, or moved to another target. One whose
    // removal fails stays in status as `pendingRemoval` (retried on every reconcile and
    // by cleanup); dropping it would orphan the entry for good.
    let mut pending = Vec::new();
    for old in &previous.clusters {
        let current = gv.spec.clusters.iter().find(|c| c.name == old.name);
        let old_target = Target::of_status(old);
        if current.map(Target::of_spec).as_ref() == Some(&old_target)
            || (old_target.prometheus_ref.is_none() && old_target.config_map_ref.is_none())
        {
            continue;
        }
        let entry = EntryId::new(&ns, &name, &old.name);
        match remove_from_target(ctx, &ns, &old_target, &entry).await {
            Ok(_) => {
                tracing::info!(%ns, gv = %name, cluster = %old.name, mode = ?old_target.mode, "removed stale remote_write entry or sidecar")
            }
            Err(e) => {
                tracing::warn!(%ns, gv = %name, cluster = %old.name, error = %e, "removing stale remote_write entry failed; will retry");
                let mut st = old.clone();
                st.pending_removal = true;
                st.conditions = vec![condition(
                    &old.conditions,
                    configured_condition(old_target.mode),
                    true,
                    "PendingRemoval",
                    format!(
                        "removing {} from {} failed: {e}",
                        entry.name,
                        old_target.describe(&ns)
                    ),
                    gv.metadata.generation,
                    &now(),
                )];
                pending.push(st);
            }
        }
    }

    let base = querier_url(&name, &ns);
    let now = now();
    let mut clusters = Vec::new();
    for c in &gv.spec.clusters {
        let prev = previous.clusters.iter().find(|p| p.name == c.name);
        clusters.push(sync_cluster(ctx, gv, &ns, c, &selected, &base, prev, &now).await);
    }

    let ready_replicas = dep
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let conditions = view_conditions(
        &previous.conditions,
        gv.metadata.generation,
        gv.spec.replicas,
        ready_replicas,
        &clusters,
        &now,
    );
    clusters.extend(pending);
    let status = GlobalViewStatus {
        observed_generation: gv.metadata.generation,
        ready_replicas,
        endpoints,
        conditions,
        clusters,
    };
    // Every status change is a watch event that starts another reconcile; an identical
    // status is not written at all (and holds no clock-derived value that would differ).
    if gv.status.as_ref() != Some(&status) {
        gvs.patch_status(
            &name,
            &apply_params(),
            &Patch::Apply(json!({
                "apiVersion": "orrery.dev/v1alpha1",
                "kind": "GlobalView",
                "status": status,
            })),
        )
        .await?;
    }
    Ok(Action::requeue(Duration::from_secs(60)))
}

#[allow(clippy::too_many_arguments)]
async fn sync_cluster(
    ctx: &Context,
    gv: &GlobalView,
    ns: &str,
    c: &ClusterSpec,
    selected: &[&ReceiveCluster],
    querier: &str,
    prev: Option<&ClusterStatus>,
    now: &Time,
) -> ClusterStatus {
    let generation = gv.metadata.generation;
    let prev_conditions = prev.map(|p| p.conditions.clone()).unwrap_or_default();
    let target = Target::of_spec(c);
    let mut st = ClusterStatus {
        name: c.name.clone(),
        prometheus_ref: c.prometheus_ref.clone(),
        config_map_ref: c.config_map_ref.clone(),
        remote_cluster_secret_ref: c.remote_cluster_secret_ref.clone(),
        mode: c.mode,
        ..Default::default()
    };
    let remote_write_url = cluster_remote_write_url(c.remote_write_url.as_deref(), selected);
    let configured = match (c.mode, remote_write_url) {
        (ClusterMode::Sidecar, _) => {
            let inj = sidecar_injection(gv, ns, c, &ctx.default_image);
            let res = upsert_sidecar_into(ctx, ns, &target, &inj).await;
            if let Ok(true) = res {
                ctx.metrics.remote_write_patches.inc();
                tracing::info!(%ns, gv = %gv.name_any(), cluster = %c.name, target = %target.describe(ns), "orrery sidecar added");
            }
            res
        }
        (ClusterMode::RemoteWrite, None) => Err(Error::Invalid(
            "no remoteWriteURL and no ReceiveCluster selected".to_string(),
        )),
        (ClusterMode::RemoteWrite, Some(url)) => {
            let entry =
                RemoteWriteEntry::new(ns, &gv.name_any(), &c.name, &url, c.tenant.as_deref());
            let res = upsert_entry(ctx, ns, &target, &entry).await;
            if let Ok(true) = res {
                ctx.metrics.remote_write_patches.inc();
                tracing::info!(%ns, gv = %gv.name_any(), cluster = %c.name, target = %target.describe(ns), "remote_write entry written");
            }
            res
        }
    };
    match c.mode {
        ClusterMode::RemoteWrite => st.remote_write_configured = configured.is_ok(),
        ClusterMode::Sidecar => st.sidecar_configured = configured.is_ok(),
    }
    // A prometheus.yml the operator refuses to edit (or cannot parse), or a Prometheus
    // that cannot take the sidecar, is the user's to fix: say so on the GlobalView as an
    // Event too, not only in the condition.
    if let Err(e @ (Error::Edit { .. } | Error::Sidecar { .. })) = &configured {
        let action = match c.mode {
            ClusterMode::RemoteWrite => "AddRemoteWrite",
            ClusterMode::Sidecar => "AddSidecar",
        };
        ctx.publish_event(gv, EventType::Warning, e.reason(), action, e.to_string())
            .await;
    }
    let age = match ctx.probe.last_sample_age(querier, &c.name).await {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(cluster = %c.name, error = %e, "querier not answering yet");
            None
        }
    };
    let flowing = age.is_some_and(|a| a <= MAX_SAMPLE_AGE_SECS);
    // A plain Prometheus only sees the edited file after the kubelet syncs the mounted
    // ConfigMap; ask it to reload until data flows.
    // Right after a change, reload and keep reloading (in the background, bounded)
    // until the loaded configuration shows the entry.
    let mut reload_note = String::new();
    if let (Ok(changed), Some(cm)) = (&configured, &c.config_map_ref)
        && let Some(url) = cm.reload_url.as_deref().filter(|_| *changed || !flowing)
    {
        let names = vec![EntryId::new(ns, &gv.name_any(), &c.name).name];
        let res = if *changed {
            follow_reload(ctx, url, names, true).await
        } else {
            ctx.probe.reload(url).await
        };
        if let Err(e) = res {
            reload_note = format!("; reload failed: {e}");
        }
    }
    // No age, timestamp or other clock-derived value goes into status: each status
    // change triggers a reconcile, so a value that changes by itself would make the
    // controller reconcile (and probe every Prometheus) back to back.
    let owner = EntryId::new(ns, &gv.name_any(), &c.name).name;
    st.conditions = vec![
        condition(
            &prev_conditions,
            configured_condition(c.mode),
            configured.is_ok(),
            match (&configured, c.mode) {
                (Ok(_), ClusterMode::RemoteWrite) => "EntryPresent",
                (Ok(_), ClusterMode::Sidecar) => "SidecarPresent",
                (Err(e), _) => e.reason(),
            },
            match (&configured, c.mode) {
                (Ok(_), ClusterMode::RemoteWrite) => {
                    format!("entry {owner} in {}{reload_note}", target.describe(ns))
                }
                (Ok(_), ClusterMode::Sidecar) => format!(
                    "container {} in {} (owner {owner}); querier endpoint {}",
                    crate::sidecar::CONTAINER_NAME,
                    target.describe(ns),
                    crate::query::sidecar_endpoint(gv, c).unwrap_or_default()
                ),
                (Err(e), _) => e.to_string(),
            },
            generation,
            now,
        ),
        condition(
            &prev_conditions,
            "DataFlowing",
            flowing,
            if flowing {
                "RecentSamples"
            } else {
                "NoRecentSamples"
            },
            match age {
                Some(_) if flowing => format!(
                    "the querier has samples of this cluster from the last {MAX_SAMPLE_AGE_SECS}s"
                ),
                Some(_) => format!(
                    "the newest sample of this cluster is older than {MAX_SAMPLE_AGE_SECS}s"
                ),
                None => "no samples of this cluster seen by the querier".to_string(),
            },
            generation,
            now,
        ),
    ];
    st
}

/// Renders an age in seconds as `12s` / `3m4s`.
pub fn format_age(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{}h{}m", s / 3600, (s % 3600) / 60)
    }
}

/// `Ready`: querier replicas ready and every cluster configured and flowing;
/// `Progressing`: querier rolling out; `Degraded`: some cluster not configured.
pub fn view_conditions(
    previous: &[Condition],
    generation: Option<i64>,
    replicas: i32,
    ready: i32,
    clusters: &[ClusterStatus],
    now: &Time,
) -> Vec<Condition> {
    let is_true = |c: &ClusterStatus, ty: &str| {
        c.conditions
            .iter()
            .any(|x| x.type_ == ty && x.status == "True")
    };
    let unconfigured: Vec<&str> = clusters
        .iter()
        .filter(|c| !c.remote_write_configured && !c.sidecar_configured)
        .map(|c| c.name.as_str())
        .collect();
    let not_flowing: Vec<&str> = clusters
        .iter()
        .filter(|c| !is_true(c, "DataFlowing"))
        .map(|c| c.name.as_str())
        .collect();
    let all_ready = ready >= replicas && unconfigured.is_empty() && not_flowing.is_empty();
    vec![
        condition(
            previous,
            "Ready",
            all_ready,
            if all_ready {
                "AllClustersFlowing"
            } else {
                "NotReady"
            },
            format!(
                "{ready}/{replicas} queriers ready; not flowing: [{}]",
                not_flowing.join(",")
            ),
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
            format!("{ready}/{replicas} queriers ready"),
            generation,
            now,
        ),
        condition(
            previous,
            "Degraded",
            !unconfigured.is_empty(),
            if unconfigured.is_empty() {
                "AllConfigured"
            } else {
                "RemoteWriteNotConfigured"
            },
            format!("not configured: [{}]", unconfigured.join(",")),
            generation,
            now,
        ),
    ]
}

/// Removes our entries before the GlobalView goes away. Best effort, with an end: a
/// target that can never be cleaned (missing Secret or object, 403, unparsable file,
/// a refused target) is given up at once; one that fails otherwise is retried for
/// [`MAX_CLEANUP_ATTEMPTS`] reconciles; the `orrery.dev/skip-cleanup: "true"`
/// annotation skips cleanup entirely. Every entry left behind is named in a Warning
/// Event, so nothing is lost silently, and the finalizer (and the namespace's deletion)
/// never wedges.
async fn cleanup(gv: &GlobalView, ctx: &Context) -> Result<Action, Error> {
    let ns = gv.namespace().unwrap_or_default();
    let name = gv.name_any();
    if gv
        .annotations()
        .get(SKIP_CLEANUP_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        tracing::warn!(%ns, gv = %name, "cleanup skipped by annotation");
        ctx.publish_event(
            gv,
            EventType::Warning,
            "CleanupSkipped",
            "RemoveRemoteWrite",
            format!("{SKIP_CLEANUP_ANNOTATION}=true: remote_write entries were left in place"),
        )
        .await;
        return Ok(Action::await_change());
    }
    let mut targets: Vec<(String, Target)> = gv
        .spec
        .clusters
        .iter()
        .map(|c| (c.name.clone(), Target::of_spec(c)))
        .collect();
    for c in gv.status.iter().flat_map(|s| s.clusters.iter()) {
        let t = (c.name.clone(), Target::of_status(c));
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    let mut abandoned = Vec::new();
    let mut failed = Vec::new();
    for (cluster, target) in targets {
        if target.prometheus_ref.is_none() && target.config_map_ref.is_none() {
            continue;
        }
        let entry = EntryId::new(&ns, &name, &cluster);
        match remove_from_target(ctx, &ns, &target, &entry).await {
            Ok(true) => {
                ctx.metrics.remote_write_patches.inc();
                tracing::info!(%ns, gv = %name, %cluster, mode = ?target.mode, "remote_write entry or sidecar removed");
            }
            Ok(false) => {}
            Err(e) => {
                let line = format!("{} in {}: {e}", entry.name, target.describe(&ns));
                if e.is_permanent() {
                    abandoned.push(line);
                } else {
                    failed.push(line);
                }
            }
        }
    }
    let attempts = ctx.failures_of(&key(gv)).saturating_add(1);
    if !failed.is_empty() && attempts < MAX_CLEANUP_ATTEMPTS {
        let msg = failed.join("; ");
        ctx.publish_event(
            gv,
            EventType::Warning,
            "CleanupRetrying",
            "RemoveRemoteWrite",
            format!("attempt {attempts}/{MAX_CLEANUP_ATTEMPTS}: {msg}"),
        )
        .await;
        return Err(Error::Cleanup(msg));
    }
    abandoned.extend(failed);
    if !abandoned.is_empty() {
        tracing::warn!(%ns, gv = %name, left = ?abandoned, "cleanup gave up; remote_write entries left behind");
        ctx.publish_event(
            gv,
            EventType::Warning,
            "CleanupAbandoned",
            "RemoveRemoteWrite",
            format!("left behind, remove by hand: {}", abandoned.join("; ")),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// Whether a target object in another namespace lets GlobalViews of `source_ns` edit it.
pub fn allows_globalviews_from(
    annotations: Option<&BTreeMap<String, String>>,
    source_ns: &str,
) -> bool {
    annotations
        .and_then(|a| a.get(ALLOW_FROM_ANNOTATION))
        .is_some_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|n| n == "*" || n == source_ns)
        })
}

/// Refuses to edit `meta`'s object when it sits in another namespace than the
/// GlobalView and has not opted in (checked on the object just read, before any write).
fn check_allowed(meta: &kube::api::ObjectMeta, target: &Target, ns: &str) -> Result<(), Error> {
    let Some(target_ns) = target.local_namespace(ns) else {
        return Ok(());
    };
    if target_ns == ns || allows_globalviews_from(meta.annotations.as_ref(), ns) {
        return Ok(());
    }
    Err(Error::TargetNotAllowed {
        target: target.describe(ns),
        target_ns: target_ns.to_string(),
        source_ns: ns.to_string(),
        annotation: ALLOW_FROM_ANNOTATION,
    })
}

/// The client for a cluster's target: ours, or one built from a remote-cluster Secret
/// in the GlobalView's namespace (see [`crate::remote_cluster`]).
async fn target_client(ctx: &Context, ns: &str, target: &Target) -> Result<Client, Error> {
    let Some(r) = &target.remote_cluster_secret_ref else {
        return Ok(ctx.client.clone());
    };
    let secret_name = format!("{ns}/{}", r.name);
    let fail = |reason: String| Error::RemoteCluster {
        secret: secret_name.clone(),
        reason,
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let s = match secrets.get(&r.name).await {
        Ok(s) => s,
        Err(kube::Error::Api(st)) if st.is_not_found() => {
            return Err(fail("not found".into()));
        }
        Err(kube::Error::Api(st)) if st.code == 403 => {
            return Err(fail(format!(
                "the operator may not read it (403; see the chart's rbac.remoteClusterSecretNamespaces): {}",
                st.message
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let data = s.data.unwrap_or_default();
    let remote = RemoteCluster::from_secret_data(&data).map_err(|e| fail(e.to_string()))?;
    let kc = remote.kubeconfig().map_err(|e| fail(e.to_string()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| fail(e.to_string()))?;
    Client::try_from(cfg).map_err(|e| fail(e.to_string()))
}

/// Writes our entry into a cluster's target; returns whether anything changed.
pub async fn upsert_entry(
    ctx: &Context,
    ns: &str,
    target: &Target,
    entry: &RemoteWriteEntry,
) -> Result<bool, Error> {
    let client = target_client(ctx, ns, target).await?;
    let what = target.describe(ns);
    if let Some(p) = &target.prometheus_ref {
        let api: Api<DynamicObject> = Api::namespaced_with(
            client,
            p.namespace.as_deref().unwrap_or(ns),
            &prometheus_resource(),
        );
        return edit_with_retry(&api, &p.name, |obj| {
            check_allowed(&obj.metadata, target, ns)?;
            upsert_prometheus_cr(&mut obj.data, entry).map_err(|source| Error::Edit {
                target: what.clone(),
                source,
            })
        })
        .await;
    }
    if let Some(c) = &target.config_map_ref {
        let api: Api<ConfigMap> = Api::namespaced(client, c.namespace.as_deref().unwrap_or(ns));
        return edit_with_retry(&api, &c.name, |cm| {
            check_allowed(&cm.metadata, target, ns)?;
            let data = cm.data.get_or_insert_with(Default::default);
            let text = data.get(&c.key).cloned().unwrap_or_default();
            match upsert_prometheus_yml(&text, entry).map_err(|source| Error::Edit {
                target: what.clone(),
                source,
            })? {
                Some(new) => {
                    data.insert(c.key.clone(), new);
                    Ok(true)
                }
                None => Ok(false),
            }
        })
        .await;
    }
    Err(Error::Invalid(
        "cluster has neither prometheusRef nor configMapRef".into(),
    ))
}

/// The cluster condition saying the target is set up, per mode.
fn configured_condition(mode: ClusterMode) -> &'static str {
    match mode {
        ClusterMode::RemoteWrite => "RemoteWriteConfigured",
        ClusterMode::Sidecar => "SidecarConfigured",
    }
}

/// What `mode: sidecar` adds to a cluster's Prometheus.
pub fn sidecar_injection(
    gv: &GlobalView,
    ns: &str,
    c: &ClusterSpec,
    default_image: &str,
) -> SidecarInjection {
    let opts = c.sidecar.clone().unwrap_or_default();
    SidecarInjection {
        owner: EntryId::new(ns, &gv.name_any(), &c.name).name,
        cluster: c.name.clone(),
        image: opts
            .image
            .or_else(|| gv.spec.image.clone())
            .unwrap_or_else(|| default_image.to_string()),
        object_storage_config: opts.object_storage_config,
        resources: opts.resources,
        local_read: opts.local_read,
    }
}

/// Adds our sidecar to the cluster's Prometheus object, then applies the headless
/// Service the querier reaches the sidecars through (next to the Prometheus). Returns
/// whether the Prometheus changed.
pub async fn upsert_sidecar_into(
    ctx: &Context,
    ns: &str,
    target: &Target,
    inj: &SidecarInjection,
) -> Result<bool, Error> {
    let Some(p) = &target.prometheus_ref else {
        return Err(Error::Invalid("mode sidecar needs prometheusRef".into()));
    };
    let client = target_client(ctx, ns, target).await?;
    let what = target.describe(ns);
    let prom_ns = p.namespace.as_deref().unwrap_or(ns);
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), prom_ns, &prometheus_resource());
    let changed = edit_with_retry(&api, &p.name, |obj| {
        check_allowed(&obj.metadata, target, ns)?;
        let mut whole = serde_json::to_value(&*obj)?;
        let changed = upsert_sidecar(&mut whole, inj).map_err(|source| Error::Sidecar {
            target: what.clone(),
            source,
        })?;
        if changed {
            *obj = serde_json::from_value(whole)?;
        }
        Ok(changed)
    })
    .await?;
    let svcs: Api<Service> = Api::namespaced(client, prom_ns);
    apply(&svcs, &sidecar_service(&p.name, prom_ns)).await?;
    Ok(changed)
}

/// Takes our sidecar out of the cluster's Prometheus (when this cluster added it) and
/// deletes the headless Service; a missing Prometheus or Service counts as removed.
pub async fn remove_sidecar_from(
    ctx: &Context,
    ns: &str,
    target: &Target,
    owner: &EntryId,
) -> Result<bool, Error> {
    let Some(p) = &target.prometheus_ref else {
        return Ok(false);
    };
    let client = target_client(ctx, ns, target).await?;
    let what = target.describe(ns);
    let prom_ns = p.namespace.as_deref().unwrap_or(ns);
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), prom_ns, &prometheus_resource());
    let removed = match edit_with_retry(&api, &p.name, |obj| {
        check_allowed(&obj.metadata, target, ns)?;
        let mut whole = serde_json::to_value(&*obj)?;
        let changed = remove_sidecar(&mut whole, &owner.name).map_err(|source| Error::Sidecar {
            target: what.clone(),
            source,
        })?;
        if changed {
            *obj = serde_json::from_value(whole)?;
        }
        Ok(changed)
    })
    .await
    {
        Err(Error::Kube(kube::Error::Api(s))) if s.is_not_found() => false,
        other => other?,
    };
    let svcs: Api<Service> = Api::namespaced(client, prom_ns);
    match svcs
        .delete(&crate::sidecar::service_name(&p.name), &Default::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    Ok(removed)
}

/// Undoes what a cluster's mode set up in its target.
pub async fn remove_from_target(
    ctx: &Context,
    ns: &str,
    target: &Target,
    entry: &EntryId,
) -> Result<bool, Error> {
    match target.mode {
        ClusterMode::RemoteWrite => remove_and_reload(ctx, ns, target, entry).await,
        ClusterMode::Sidecar => remove_sidecar_from(ctx, ns, target, entry).await,
    }
}

/// Removes our entry and, when that changed a prometheus.yml ConfigMap with a
/// `reloadURL`, asks Prometheus to reload: without it a Prometheus keeps writing to
/// the receivers until its next restart. A failed reload is logged, not fatal (the
/// entry is gone from the file either way).
pub async fn remove_and_reload(
    ctx: &Context,
    ns: &str,
    target: &Target,
    name: &EntryId,
) -> Result<bool, Error> {
    let removed = remove_entry(ctx, ns, target, name).await?;
    if removed
        && let Some(url) = target.reload_url()
        && let Err(e) = follow_reload(
            ctx,
            url,
            vec![name.name.clone(), name.legacy_name.clone()],
            false,
        )
        .await
    {
        tracing::warn!(%ns, entry = %name.name, error = %e, "reload after removing a remote_write entry failed");
    }
    Ok(removed)
}

/// Reloads a Prometheus after we edited its ConfigMap and checks the configuration it
/// loaded. The kubelet syncs a mounted ConfigMap only after a minute or more, so when
/// the edit is not visible yet a background task keeps reloading (every
/// [`RELOAD_FOLLOW_INTERVAL`], at most [`RELOAD_FOLLOW_ATTEMPTS`] reloads in all) until
/// it is: without that, a removed entry would keep receiving writes until Prometheus
/// restarts. The task lives in this process only; a restarted operator re-reloads on
/// its next reconcile of a GlobalView that still exists. Returns the first reload's
/// outcome.
async fn follow_reload(
    ctx: &Context,
    url: &str,
    names: Vec<String>,
    want_present: bool,
) -> Result<(), crate::probe::ProbeError> {
    let first = ctx.probe.reload(url).await;
    let seen = first.is_ok()
        && matches!(
            ctx.probe.loaded_config(url).await.map(|t| config_names_any(&t, &names)),
            Ok(Ok(present)) if present == want_present
        );
    if !seen {
        let probe = ctx.probe.clone();
        let url = url.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(RELOAD_FOLLOW_INTERVAL).await;
            let (seen, n) = reload_until_loaded(
                &*probe,
                &url,
                &names,
                want_present,
                RELOAD_FOLLOW_ATTEMPTS - 1,
                RELOAD_FOLLOW_INTERVAL,
            )
            .await;
            if seen {
                tracing::info!(%url, reloads = n + 1, "Prometheus loaded the edited configuration");
            } else {
                tracing::warn!(%url, reloads = n + 1, "Prometheus still runs the old configuration after repeated reloads (is the ConfigMap mounted, is --web.enable-lifecycle set?)");
            }
        });
    }
    first
}

/// Removes our entry from a target; a missing target counts as removed.
pub async fn remove_entry(
    ctx: &Context,
    ns: &str,
    target: &Target,
    name: &EntryId,
) -> Result<bool, Error> {
    let client = target_client(ctx, ns, target).await?;
    let what = target.describe(ns);
    let res = if let Some(p) = &target.prometheus_ref {
        let api: Api<DynamicObject> = Api::namespaced_with(
            client,
            p.namespace.as_deref().unwrap_or(ns),
            &prometheus_resource(),
        );
        edit_with_retry(&api, &p.name, |obj| {
            check_allowed(&obj.metadata, target, ns)?;
            remove_from_prometheus_cr(&mut obj.data, name).map_err(|source| Error::Edit {
                target: what.clone(),
                source,
            })
        })
        .await
    } else if let Some(c) = &target.config_map_ref {
        let api: Api<ConfigMap> = Api::namespaced(client, c.namespace.as_deref().unwrap_or(ns));
        edit_with_retry(&api, &c.name, |cm| {
            check_allowed(&cm.metadata, target, ns)?;
            let Some(data) = cm.data.as_mut() else {
                return Ok(false);
            };
            let Some(text) = data.get(&c.key) else {
                return Ok(false);
            };
            match remove_from_prometheus_yml(text, name).map_err(|source| Error::Edit {
                target: what.clone(),
                source,
            })? {
                Some(new) => {
                    data.insert(c.key.clone(), new);
                    Ok(true)
                }
                None => Ok(false),
            }
        })
        .await
    } else {
        Ok(false)
    };
    match res {
        Err(Error::Kube(kube::Error::Api(s))) if s.is_not_found() => Ok(false),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_render() {
        assert_eq!(format_age(4.4), "4s");
        assert_eq!(format_age(125.0), "2m5s");
        assert_eq!(format_age(7300.0), "2h1m");
        assert_eq!(format_age(-1.0), "0s");
    }

    #[test]
    fn view_conditions_need_flow() {
        let t = now();
        let flowing = |name: &str, ok: bool| ClusterStatus {
            name: name.into(),
            remote_write_configured: true,
            conditions: vec![condition(
                &[],
                "DataFlowing",
                ok,
                "r",
                String::new(),
                None,
                &t,
            )],
            ..Default::default()
        };
        let get =
            |cs: &[Condition], ty: &str| cs.iter().find(|c| c.type_ == ty).unwrap().status.clone();
        let cs = view_conditions(
            &[],
            Some(1),
            1,
            1,
            &[flowing("a", true), flowing("b", false)],
            &t,
        );
        assert_eq!(get(&cs, "Ready"), "False");
        assert!(cs[0].message.contains("[b]"), "{}", cs[0].message);
        assert_eq!(get(&cs, "Degraded"), "False");
        let cs = view_conditions(
            &cs,
            Some(1),
            1,
            1,
            &[flowing("a", true), flowing("b", true)],
            &t,
        );
        assert_eq!(get(&cs, "Ready"), "True");
        let mut bad = flowing("c", false);
        bad.remote_write_configured = false;
        let cs = view_conditions(&cs, Some(2), 2, 1, &[bad], &t);
        assert_eq!(get(&cs, "Degraded"), "True");
        assert_eq!(get(&cs, "Progressing"), "True");
    }
}
