//! Controllers: `reconcile(obj, ctx) -> Result<Action>` plus `error_policy`, for
//! ReceiveCluster and GlobalView.

pub mod global_view;
pub mod receive;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::metrics::Metrics;
use crate::probe::Probe;
use crate::receive::MANAGER;

/// A resource of ours whose status carries `conditions` (ReceiveCluster, GlobalView).
pub trait StatusConditions:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
{
    type Status: Clone + Default + PartialEq + Serialize;
    fn status(&self) -> Option<&Self::Status>;
    fn conditions_mut(status: &mut Self::Status) -> &mut Vec<Condition>;
}

impl StatusConditions for crate::crd::ReceiveCluster {
    type Status = crate::crd::ReceiveClusterStatus;
    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
    fn conditions_mut(status: &mut Self::Status) -> &mut Vec<Condition> {
        &mut status.conditions
    }
}

impl StatusConditions for crate::crd::GlobalView {
    type Status = crate::crd::GlobalViewStatus;
    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
    fn conditions_mut(status: &mut Self::Status) -> &mut Vec<Condition> {
        &mut status.conditions
    }
}

/// Shows a failed reconcile on the object itself (`Ready=False`, reason
/// `ReconcileError`, plus a Warning Event), not only in the operator's log. Best effort:
/// a failure here is logged. An unchanged status is not written again.
pub async fn report_failure<K: StatusConditions>(obj: &K, ctx: &Context, err: &Error) {
    let (Some(ns), name) = (obj.namespace(), obj.name_any()) else {
        return;
    };
    let mut status = obj.status().cloned().unwrap_or_default();
    let conditions = K::conditions_mut(&mut status);
    let ready = condition(
        conditions,
        "Ready",
        false,
        "ReconcileError",
        err.to_string(),
        obj.meta().generation,
        &now(),
    );
    conditions.retain(|c| c.type_ != "Ready");
    conditions.insert(0, ready);
    if obj.status() != Some(&status) {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = Patch::Apply(serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        }));
        if let Err(e) = api.patch_status(&name, &apply_params(), &patch).await {
            tracing::warn!(%ns, %name, error = %e, "could not write the error into status");
        }
    }
    ctx.publish_event(
        obj,
        EventType::Warning,
        "ReconcileError",
        "Reconcile",
        err.to_string(),
    )
    .await;
}

/// Shared state of the controllers.
pub struct Context {
    pub client: Client,
    /// Image for receivers and queriers whose spec names none.
    pub default_image: String,
    pub metrics: Arc<Metrics>,
    pub probe: Arc<dyn Probe>,
    /// Consecutive failures per object key, for the error policy's backoff.
    pub failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// Publishes Kubernetes Events (events.k8s.io/v1) on important transitions.
    pub recorder: Recorder,
}

impl Context {
    pub fn new(
        client: Client,
        default_image: String,
        metrics: Arc<Metrics>,
        probe: Arc<dyn Probe>,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.to_string(),
            instance: std::env::var("POD_NAME").ok().filter(|n| !n.is_empty()),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            default_image,
            metrics,
            probe,
            failures: Default::default(),
        }
    }

    /// Publishes an Event about `obj`; a failure is logged, never fatal to a reconcile.
    pub async fn publish_event<K>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) where
        K: Resource<DynamicType = ()>,
    {
        let ev = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(reason, error = %e, "could not publish event");
        }
    }

    /// Records a failure of `key`, returning how many happened in a row before it.
    pub fn record_failure(&self, key: &str) -> u32 {
        match self.failures.lock() {
            Ok(mut m) => {
                let n = m.entry(key.to_string()).or_insert(0);
                let before = *n;
                *n = n.saturating_add(1);
                before
            }
            Err(_) => 0,
        }
    }

    /// How many failures of `key` happened in a row.
    pub fn failures_of(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .map(|m| m.get(key).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Forgets the failures of `key` after a success.
    pub fn record_success(&self, key: &str) {
        if let Ok(mut m) = self.failures.lock() {
            m.remove(key);
        }
    }
}

/// Errors of a reconciliation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("editing remote_write of {target}: {source}")]
    Edit {
        target: String,
        source: crate::remote_write::EditError,
    },
    #[error("adding the orrery sidecar to {target}: {source}")]
    Sidecar {
        target: String,
        source: crate::sidecar::SidecarError,
    },
    #[error("{0} still conflicts after {1} attempts")]
    Conflict(String, u32),
    #[error("invalid object: {0}")]
    Invalid(String),
    #[error("serialization: {0}")]
    Json(#[from] serde_json::Error),
    #[error("remote-cluster secret {secret}: {reason}")]
    RemoteCluster { secret: String, reason: String },
    #[error(
        "{target} is in namespace {target_ns}, not {source_ns}, and does not opt in: annotate it {annotation}={source_ns} (or \"*\")"
    )]
    TargetNotAllowed {
        target: String,
        target_ns: String,
        source_ns: String,
        annotation: &'static str,
    },
    #[error("cleanup incomplete: {0}")]
    Cleanup(String),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("StatefulSet {0} still exists after an orphaning delete; will retry")]
    Recreate(String),
}

impl Error {
    /// A condition `reason` (CamelCase) for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => "Forbidden",
            Error::Kube(kube::Error::Api(s)) if s.is_not_found() => "NotFound",
            Error::Kube(_) => "ApiError",
            Error::Edit {
                source: crate::remote_write::EditError::Unsupported(_),
                ..
            } => "ConfigNotEditable",
            Error::Edit { .. } => "EditFailed",
            Error::Sidecar { .. } => "SidecarNotApplicable",
            Error::Conflict(..) => "Conflict",
            Error::Invalid(_) | Error::Json(_) => "Invalid",
            Error::RemoteCluster { .. } => "RemoteClusterSecretInvalid",
            Error::TargetNotAllowed { .. } => "TargetNotAllowed",
            Error::Finalizer(_) | Error::Cleanup(_) => "CleanupFailed",
            Error::Recreate(_) => "RecreatePending",
        }
    }

    /// Whether retrying cannot help without someone changing something: a missing
    /// object or Secret, a refusal (403), an unparsable file, a refused target. Cleanup
    /// gives up on these at once instead of holding the finalizer.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Kube(kube::Error::Api(s)) => s.code == 403 || s.code == 401 || s.is_not_found(),
            Error::Edit { .. }
            | Error::Sidecar { .. }
            | Error::Invalid(_)
            | Error::Json(_)
            | Error::RemoteCluster { .. }
            | Error::TargetNotAllowed { .. } => true,
            _ => false,
        }
    }
}

/// Server-side apply parameters with Orrery's field manager.
pub fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// Server-side applies `obj` (it must carry its name).
pub async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K, Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or_else(|| Error::Invalid("desired object without a name".into()))?;
    Ok(api
        .patch(&name, &apply_params(), &Patch::Apply(obj))
        .await?)
}

/// Whether an API error is the refusal to change an immutable StatefulSet field
/// (`volumeClaimTemplates`, `selector`, `serviceName`, `podManagementPolicy`, ...):
/// 422 Invalid with "spec: Forbidden: updates to statefulset spec for fields other than ...".
pub fn is_immutable_field_change(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(s) => {
            s.code == 422
                && s.message.contains("Forbidden")
                && s.message.contains("updates to statefulset spec")
        }
        _ => false,
    }
}

/// Polls for the old StatefulSet to be gone after an orphaning delete: this many times…
pub const RECREATE_WAIT_POLLS: u32 = 60;
/// …this far apart.
pub const RECREATE_WAIT_INTERVAL: Duration = Duration::from_millis(500);

/// Server-side applies a StatefulSet. When the API server refuses because an immutable
/// field changed, deletes the StatefulSet with `propagationPolicy: Orphan` (its pods and
/// PVCs stay; the new StatefulSet adopts the pods through the same selector labels),
/// waits for it to be gone and applies again. Returns the applied object and whether it
/// was re-created.
pub async fn apply_statefulset(
    api: &Api<StatefulSet>,
    sts: &StatefulSet,
) -> Result<(StatefulSet, bool), Error> {
    let name = sts
        .metadata
        .name
        .clone()
        .ok_or_else(|| Error::Invalid("desired StatefulSet without a name".into()))?;
    let err = match api.patch(&name, &apply_params(), &Patch::Apply(sts)).await {
        Ok(applied) => return Ok((applied, false)),
        Err(e) if is_immutable_field_change(&e) => e,
        Err(e) => return Err(e.into()),
    };
    tracing::info!(name, error = %err, "immutable StatefulSet field changed; re-creating it, orphaning pods and PVCs");
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        ..Default::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    let mut gone = false;
    for _ in 0..RECREATE_WAIT_POLLS {
        if api.get_opt(&name).await?.is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(RECREATE_WAIT_INTERVAL).await;
    }
    if !gone {
        return Err(Error::Recreate(name));
    }
    Ok((apply(api, sts).await?, true))
}

/// Attempts of a read-modify-write before giving up on conflicts.
pub const MAX_CONFLICT_RETRIES: u32 = 5;

/// Read-modify-write of an object we do not own: GET, `edit` (returns whether it
/// changed anything), then PUT with the read `resourceVersion`; on 409 Conflict start
/// over. Returns whether a write happened.
pub async fn edit_with_retry<K, F>(api: &Api<K>, name: &str, mut edit: F) -> Result<bool, Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
    F: FnMut(&mut K) -> Result<bool, Error>,
{
    for attempt in 1..=MAX_CONFLICT_RETRIES {
        let mut obj = api.get(name).await?;
        if !edit(&mut obj)? {
            return Ok(false);
        }
        let pp = PostParams {
            field_manager: Some(MANAGER.to_string()),
            ..Default::default()
        };
        match api.replace(name, &pp, &obj).await {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(s)) if s.is_conflict() => {
                tracing::debug!(name, attempt, "conflict writing object; re-reading");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Conflict(name.to_string(), MAX_CONFLICT_RETRIES))
}

/// Requeue delay after a failure: grows with consecutive failures of one object
/// (kube-runtime's scheduler dedups; we keep it simple and bounded).
pub fn backoff(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << failures.min(6));
    Duration::from_secs(secs.min(300))
}

/// Shared error policy: log, count, requeue with backoff.
pub fn error_policy_action(kind: &str, name: &str, err: &Error, failures: u32) -> Action {
    tracing::warn!(kind, name, error = %err, "reconcile failed");
    Action::requeue(backoff(failures))
}

/// Builds a condition, keeping `lastTransitionTime` from `previous` when the status
/// did not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Current time as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_keeps_transition_time() {
        let t0 = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let t1 = now();
        let c0 = condition(&[], "Ready", false, "Waiting", "x".into(), Some(1), &t0);
        assert_eq!(c0.last_transition_time, t0);
        let same = condition(
            std::slice::from_ref(&c0),
            "Ready",
            false,
            "Waiting",
            "y".into(),
            Some(2),
            &t1,
        );
        assert_eq!(same.last_transition_time, t0);
        assert_eq!(same.observed_generation, Some(2));
        let flipped = condition(&[c0], "Ready", true, "Ready", "z".into(), Some(2), &t1);
        assert_eq!(flipped.last_transition_time, t1);
        assert_eq!(flipped.status, "True");
    }

    #[test]
    fn immutable_field_change_is_only_the_statefulset_spec_refusal() {
        let api = |code: u16, reason: &str, message: &str| {
            kube::Error::Api(
                kube::core::Status::failure(message, reason)
                    .with_code(code)
                    .boxed(),
            )
        };
        let immutable = "StatefulSet.apps \"main-receive\" is invalid: spec: Forbidden: updates to \
             statefulset spec for fields other than 'replicas', 'ordinals', 'template', \
             'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' \
             are forbidden";
        assert!(is_immutable_field_change(&api(422, "Invalid", immutable)));
        // Other validation errors, other codes and non-API errors are real failures.
        assert!(!is_immutable_field_change(&api(
            422,
            "Invalid",
            "StatefulSet.apps \"main-receive\" is invalid: spec.replicas: Invalid value: -1"
        )));
        assert!(!is_immutable_field_change(&api(
            403,
            "Forbidden",
            immutable
        )));
        assert!(!is_immutable_field_change(&api(
            409,
            "Conflict",
            "the object has been modified"
        )));
        assert!(!is_immutable_field_change(
            &kube::Error::LinesCodecMaxLineLengthExceeded
        ));
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(5));
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(30), Duration::from_secs(300));
    }
}
