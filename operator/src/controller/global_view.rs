//! The GlobalView controller: applies the querier Deployment and Service wired to the
//! selected ReceiveClusters, writes our remote_write entry into each registered
//! cluster's Prometheus (a Prometheus Operator CR or a prometheus.yml ConfigMap),
//! measures whether data flows, and removes the entries again on deletion.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::{Context, Error, apply, apply_params, condition, edit_with_retry, now};
use crate::crd::{
    ClusterSpec, ClusterStatus, ConfigMapRef, GlobalView, GlobalViewStatus, PrometheusRef,
    ReceiveCluster, SecretKeyRef,
};
use crate::query::{
    cluster_remote_write_url, querier_deployment, querier_endpoints, querier_service, querier_url,
    select_receive_clusters,
};
use crate::remote_write::{
    RemoteWriteEntry, entry_name, remove_from_prometheus_cr, remove_from_prometheus_yml,
    upsert_prometheus_cr, upsert_prometheus_yml,
};

pub const CONTROLLER: &str = "globalview";
/// Finalizer that removes our remote_write entries before a GlobalView goes away.
pub const FINALIZER: &str = "orrery.dev/remote-write-cleanup";
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
    if res.is_ok() {
        ctx.record_success(&k);
    }
    res
}

pub fn error_policy(gv: Arc<GlobalView>, err: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.record_failure(&key(&gv));
    super::error_policy_action(CONTROLLER, &gv.name_any(), err, failures)
}

/// Where one cluster's entry lives.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub prometheus_ref: Option<PrometheusRef>,
    pub config_map_ref: Option<ConfigMapRef>,
    pub kubeconfig_secret_ref: Option<SecretKeyRef>,
}

impl Target {
    pub fn of_spec(c: &ClusterSpec) -> Self {
        Target {
            prometheus_ref: c.prometheus_ref.clone(),
            config_map_ref: c.config_map_ref.clone(),
            kubeconfig_secret_ref: c.kubeconfig_secret_ref.clone(),
        }
    }
    pub fn of_status(c: &ClusterStatus) -> Self {
        Target {
            prometheus_ref: c.prometheus_ref.clone(),
            config_map_ref: c.config_map_ref.clone(),
            kubeconfig_secret_ref: c.kubeconfig_secret_ref.clone(),
        }
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
    // Entries of clusters that left the spec, or moved to another target.
    for old in &previous.clusters {
        let current = gv.spec.clusters.iter().find(|c| c.name == old.name);
        let old_target = Target::of_status(old);
        if current.map(Target::of_spec).as_ref() != Some(&old_target)
            && (old_target.prometheus_ref.is_some() || old_target.config_map_ref.is_some())
        {
            let entry = entry_name(&name, &old.name);
            match remove_entry(ctx, &ns, &old_target, &entry).await {
                Ok(_) => {
                    tracing::info!(%ns, gv = %name, cluster = %old.name, "removed stale remote_write entry")
                }
                Err(e) => {
                    tracing::warn!(%ns, gv = %name, cluster = %old.name, error = %e, "removing stale remote_write entry failed")
                }
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
    let status = GlobalViewStatus {
        observed_generation: gv.metadata.generation,
        ready_replicas,
        endpoints,
        conditions: view_conditions(
            &previous.conditions,
            gv.metadata.generation,
            gv.spec.replicas,
            ready_replicas,
            &clusters,
            &now,
        ),
        clusters,
    };
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
        kubeconfig_secret_ref: c.kubeconfig_secret_ref.clone(),
        ..Default::default()
    };
    let configured = match cluster_remote_write_url(c.remote_write_url.as_deref(), selected) {
        None => Err("no remoteWriteURL and no ReceiveCluster selected".to_string()),
        Some(url) => {
            let entry = RemoteWriteEntry::new(&gv.name_any(), &c.name, &url, c.tenant.as_deref());
            match upsert_entry(ctx, ns, &target, &entry).await {
                Ok(changed) => {
                    if changed {
                        ctx.metrics.remote_write_patches.inc();
                        tracing::info!(%ns, gv = %gv.name_any(), cluster = %c.name, target = %target.describe(ns), "remote_write entry written");
                    }
                    Ok(changed)
                }
                Err(e) => Err(e.to_string()),
            }
        }
    };
    st.remote_write_configured = configured.is_ok();
    let age = match ctx.probe.last_sample_age(querier, &c.name).await {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(cluster = %c.name, error = %e, "querier not answering yet");
            None
        }
    };
    st.last_sample_age = age.map(format_age);
    let flowing = age.is_some_and(|a| a <= MAX_SAMPLE_AGE_SECS);
    // A plain Prometheus only sees the edited file after the kubelet syncs the mounted
    // ConfigMap; ask it to reload until data flows.
    let mut reload_note = String::new();
    if let (Ok(_), Some(cm)) = (&configured, &c.config_map_ref)
        && let Some(url) = cm.reload_url.as_deref().filter(|_| !flowing)
        && let Err(e) = ctx.probe.reload(url).await
    {
        reload_note = format!("; reload failed: {e}");
    }
    st.conditions = vec![
        condition(
            &prev_conditions,
            "RemoteWriteConfigured",
            configured.is_ok(),
            if configured.is_ok() {
                "EntryPresent"
            } else {
                "EditFailed"
            },
            match &configured {
                Ok(_) => format!(
                    "entry {} in {}{reload_note}",
                    entry_name(&gv.name_any(), &c.name),
                    target.describe(ns)
                ),
                Err(e) => e.clone(),
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
                Some(a) => format!("newest sample is {} old", format_age(a)),
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
        .filter(|c| !c.remote_write_configured)
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

async fn cleanup(gv: &GlobalView, ctx: &Context) -> Result<Action, Error> {
    let ns = gv.namespace().unwrap_or_default();
    let name = gv.name_any();
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
    for (cluster, target) in targets {
        if target.prometheus_ref.is_none() && target.config_map_ref.is_none() {
            continue;
        }
        let removed = remove_entry(ctx, &ns, &target, &entry_name(&name, &cluster)).await?;
        if removed {
            ctx.metrics.remote_write_patches.inc();
            tracing::info!(%ns, gv = %name, %cluster, "remote_write entry removed");
        }
    }
    Ok(Action::await_change())
}

/// The client for a cluster's target: ours, or one built from a kubeconfig Secret.
async fn target_client(ctx: &Context, ns: &str, target: &Target) -> Result<Client, Error> {
    let Some(r) = &target.kubeconfig_secret_ref else {
        return Ok(ctx.client.clone());
    };
    let secret_name = format!("{ns}/{}", r.name);
    let fail = |reason: String| Error::Kubeconfig {
        secret: secret_name.clone(),
        reason,
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let s = secrets.get(&r.name).await?;
    let bytes = s
        .data
        .and_then(|d| d.get(&r.key).cloned())
        .ok_or_else(|| fail(format!("no key {:?}", r.key)))?;
    let text = String::from_utf8(bytes.0).map_err(|e| fail(e.to_string()))?;
    let kc = kube::config::Kubeconfig::from_yaml(&text).map_err(|e| fail(e.to_string()))?;
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

/// Removes our entry from a target; a missing target counts as removed.
pub async fn remove_entry(
    ctx: &Context,
    ns: &str,
    target: &Target,
    name: &str,
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
            remove_from_prometheus_cr(&mut obj.data, name).map_err(|source| Error::Edit {
                target: what.clone(),
                source,
            })
        })
        .await
    } else if let Some(c) = &target.config_map_ref {
        let api: Api<ConfigMap> = Api::namespaced(client, c.namespace.as_deref().unwrap_or(ns));
        edit_with_retry(&api, &c.name, |cm| {
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
