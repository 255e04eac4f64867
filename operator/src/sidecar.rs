//! `mode: sidecar`: adding an `orrery sidecar` container to a Prometheus Operator
//! `Prometheus` (and taking it out again), and the headless Service through which the
//! querier reaches the sidecars.
//!
//! The container goes into `spec.containers`, which Prometheus Operator merges into
//! the pods it generates (a new name is appended). It mounts the data volume exactly as
//! Prometheus Operator mounts it into the `prometheus` container (`prometheus-<name>-db`
//! or the volume claim template's own name, at `/prometheus`, with the `prometheus-db`
//! sub-path whenever `spec.storage` is set and `disableMountSubPath` is not), so
//! `--tsdb.path=/prometheus` sees Prometheus's blocks. Shipping needs equal min and max
//! block durations: `spec.disableCompaction: true` makes Prometheus Operator pass both
//! as 2h (the flags themselves cannot go into `spec.additionalArgs`, Prometheus Operator
//! refuses arguments it manages). The `cluster` external label makes the sidecar's
//! series carry the cluster name, as the remote_write entry's relabel rule does.
//!
//! Everything we change that the user may also have set is recorded in an annotation,
//! so removal restores exactly what was there; the container is ours by its name plus
//! the owner annotation (one GlobalView cluster per Prometheus).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Map, Value, json};

use crate::crd::SecretKeySelector;
use crate::receive::{LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME, MANAGER};
use crate::remote_write::CLUSTER_LABEL;

/// Name of our container in the Prometheus pods.
pub const CONTAINER_NAME: &str = "orrery-sidecar";
/// Annotation on the Prometheus naming the GlobalView cluster that added the sidecar
/// (`orrery-<namespace>.<globalview>.<cluster>`, as the remote_write entry's name).
pub const OWNER_ANNOTATION: &str = "orrery.dev/sidecar-owner";
/// Annotation listing the fields we set that were not set before (comma-separated
/// among [`FIELD_DISABLE_COMPACTION`], [`FIELD_CLUSTER_LABEL`]); removal unsets them.
pub const SET_ANNOTATION: &str = "orrery.dev/sidecar-set";
pub const FIELD_DISABLE_COMPACTION: &str = "disableCompaction";
pub const FIELD_CLUSTER_LABEL: &str = "externalLabels.cluster";
/// StoreAPI (gRPC) and HTTP ports of the sidecar, Thanos's.
pub const GRPC_PORT: i32 = 10901;
pub const HTTP_PORT: i32 = 10902;
/// Where Prometheus Operator mounts the data volume (and `--storage.tsdb.path`).
pub const STORAGE_DIR: &str = "/prometheus";
/// The external label Prometheus Operator gives each replica (`replicaExternalLabelName`'s
/// default): the querier deduplicates HA pairs by it.
pub const PROMETHEUS_REPLICA_LABEL: &str = "prometheus_replica";

/// What to add to one Prometheus.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarInjection {
    /// `orrery-<namespace>.<globalview>.<cluster>`.
    pub owner: String,
    /// Value of the `cluster` external label.
    pub cluster: String,
    pub image: String,
    pub object_storage_config: Option<SecretKeySelector>,
    pub resources: Option<ResourceRequirements>,
    /// `--tsdb.local-read`.
    pub local_read: bool,
}

/// Why a Prometheus cannot take our sidecar.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("{what} is not an object")]
    NotAnObject { what: &'static str },
    #[error("spec.containers is not a list")]
    ContainersNotAList,
    #[error(
        "spec.thanos is set: Prometheus Operator already runs a Thanos sidecar there; remove spec.thanos or use mode remoteWrite"
    )]
    ThanosSidecarPresent,
    #[error(
        "the orrery sidecar there was added by {0}; a Prometheus takes the sidecar of one GlobalView cluster only"
    )]
    OwnedByOther(String),
    #[error(
        "spec.containers already has a container named {CONTAINER_NAME} that the operator did not add"
    )]
    ForeignContainer,
    #[error(
        "spec.externalLabels.cluster is {found:?}, not {want:?}: the sidecar's series would be labelled with another cluster"
    )]
    ClusterLabelConflict { found: String, want: String },
}

fn spec_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, SidecarError> {
    let root = obj
        .as_object_mut()
        .ok_or(SidecarError::NotAnObject { what: "Prometheus" })?;
    root.entry("spec").or_insert_with(|| json!({}));
    root.get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or(SidecarError::NotAnObject { what: "spec" })
}

fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

fn annotations_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, SidecarError> {
    let root = obj
        .as_object_mut()
        .ok_or(SidecarError::NotAnObject { what: "Prometheus" })?;
    let meta = root
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or(SidecarError::NotAnObject { what: "metadata" })?;
    match meta.get("annotations") {
        None | Some(Value::Null) => {
            meta.insert("annotations".into(), json!({}));
        }
        _ => {}
    }
    meta.get_mut("annotations")
        .and_then(Value::as_object_mut)
        .ok_or(SidecarError::NotAnObject {
            what: "metadata.annotations",
        })
}

/// The fields listed in [`SET_ANNOTATION`].
fn set_fields(obj: &Value) -> Vec<String> {
    annotation(obj, SET_ANNOTATION)
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Name of the data volume in the Prometheus pods, as Prometheus Operator names it.
pub fn data_volume_name(obj: &Value) -> String {
    obj.pointer("/spec/storage/volumeClaimTemplate/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .unwrap_or_else(|| {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            format!("prometheus-{name}-db")
        })
}

/// Sub-path of the data volume mount: Prometheus Operator uses `prometheus-db` whenever
/// `spec.storage` is set, unless `spec.storage.disableMountSubPath` is true.
pub fn data_sub_path(obj: &Value) -> Option<&'static str> {
    let storage = obj.pointer("/spec/storage").filter(|s| !s.is_null())?;
    let disabled = storage
        .get("disableMountSubPath")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    (!disabled).then_some("prometheus-db")
}

/// URL of Prometheus from inside its pod (its route prefix included).
pub fn prometheus_url(obj: &Value) -> String {
    let prefix = obj
        .pointer("/spec/routePrefix")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim_end_matches('/');
    let prefix = if prefix.is_empty() || prefix.starts_with('/') {
        prefix.to_string()
    } else {
        format!("/{prefix}")
    };
    format!("http://localhost:9090{prefix}")
}

/// Our container for the Prometheus `obj`.
pub fn container(obj: &Value, inj: &SidecarInjection) -> Value {
    let mut args = vec![
        json!("sidecar"),
        json!(format!("--prometheus.url={}", prometheus_url(obj))),
        json!(format!("--tsdb.path={STORAGE_DIR}")),
        json!(format!("--grpc-address=0.0.0.0:{GRPC_PORT}")),
        json!(format!("--http-address=0.0.0.0:{HTTP_PORT}")),
    ];
    if inj.local_read {
        args.push(json!("--tsdb.local-read"));
    }
    let mut c = Map::new();
    c.insert("name".into(), json!(CONTAINER_NAME));
    c.insert("image".into(), json!(inj.image));
    if let Some(sel) = &inj.object_storage_config {
        // Kubernetes expands $(VAR) in args: the YAML never shows in the object.
        args.push(json!("--objstore.config=$(OBJSTORE_CONFIG)"));
        c.insert(
            "env".into(),
            json!([{"name": "OBJSTORE_CONFIG",
                    "valueFrom": {"secretKeyRef": {"name": sel.name, "key": sel.key}}}]),
        );
    }
    c.insert("args".into(), Value::Array(args));
    c.insert(
        "ports".into(),
        json!([
            {"name": "orrery-grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "orrery-http", "containerPort": HTTP_PORT, "protocol": "TCP"},
        ]),
    );
    let mut mount = Map::new();
    mount.insert("name".into(), json!(data_volume_name(obj)));
    mount.insert("mountPath".into(), json!(STORAGE_DIR));
    if let Some(sub) = data_sub_path(obj) {
        mount.insert("subPath".into(), json!(sub));
    }
    c.insert("volumeMounts".into(), json!([Value::Object(mount)]));
    c.insert(
        "readinessProbe".into(),
        json!({"httpGet": {"path": "/-/ready", "port": "orrery-http"},
               "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3}),
    );
    if let Some(r) = &inj.resources
        && let Ok(v) = serde_json::to_value(r)
    {
        c.insert("resources".into(), v);
    }
    c.insert(
        "securityContext".into(),
        json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
               "capabilities": {"drop": ["ALL"]}}),
    );
    Value::Object(c)
}

/// Adds (or updates) our sidecar in a Prometheus object (the whole object as JSON).
/// Returns whether anything changed.
pub fn upsert_sidecar(obj: &mut Value, inj: &SidecarInjection) -> Result<bool, SidecarError> {
    let before = obj.clone();
    if obj.pointer("/spec/thanos").is_some_and(|t| !t.is_null()) {
        return Err(SidecarError::ThanosSidecarPresent);
    }
    let owner = annotation(obj, OWNER_ANNOTATION).map(String::from);
    match &owner {
        Some(o) if *o != inj.owner => return Err(SidecarError::OwnedByOther(o.clone())),
        None if has_container(obj) => return Err(SidecarError::ForeignContainer),
        _ => {}
    }
    let desired = container(obj, inj);
    let mut set = set_fields(obj);
    let spec = spec_mut(obj)?;

    match spec.get("externalLabels") {
        None | Some(Value::Null) => {
            spec.insert("externalLabels".into(), json!({}));
        }
        _ => {}
    }
    let labels = spec
        .get_mut("externalLabels")
        .and_then(Value::as_object_mut)
        .ok_or(SidecarError::NotAnObject {
            what: "spec.externalLabels",
        })?;
    match labels.get(CLUSTER_LABEL) {
        None => {
            labels.insert(CLUSTER_LABEL.into(), json!(inj.cluster));
            set.push(FIELD_CLUSTER_LABEL.into());
        }
        Some(Value::String(v)) if *v == inj.cluster => {}
        Some(other) => {
            return Err(SidecarError::ClusterLabelConflict {
                found: other
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| other.to_string()),
                want: inj.cluster.clone(),
            });
        }
    }

    if spec.get("disableCompaction").and_then(Value::as_bool) != Some(true) {
        spec.insert("disableCompaction".into(), json!(true));
        set.push(FIELD_DISABLE_COMPACTION.into());
    }

    match spec.get("containers") {
        None | Some(Value::Null) => {
            spec.insert("containers".into(), json!([]));
        }
        Some(Value::Array(_)) => {}
        Some(_) => return Err(SidecarError::ContainersNotAList),
    }
    let list = spec
        .get_mut("containers")
        .and_then(Value::as_array_mut)
        .ok_or(SidecarError::ContainersNotAList)?;
    match list.iter().position(is_ours) {
        Some(i) => {
            if let Some(slot) = list.get_mut(i) {
                *slot = desired;
            }
        }
        None => list.push(desired),
    }

    set.sort();
    set.dedup();
    let ann = annotations_mut(obj)?;
    ann.insert(OWNER_ANNOTATION.into(), json!(inj.owner));
    if set.is_empty() {
        ann.remove(SET_ANNOTATION);
    } else {
        ann.insert(SET_ANNOTATION.into(), json!(set.join(",")));
    }
    Ok(*obj != before)
}

fn is_ours(c: &Value) -> bool {
    c.get("name").and_then(Value::as_str) == Some(CONTAINER_NAME)
}

fn has_container(obj: &Value) -> bool {
    obj.pointer("/spec/containers")
        .and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(is_ours))
}

/// Whether the Prometheus holds our sidecar, added by `owner`.
pub fn has_sidecar(obj: &Value, owner: &str) -> bool {
    annotation(obj, OWNER_ANNOTATION) == Some(owner) && has_container(obj)
}

/// Takes the sidecar added by `owner` out again, unsetting the fields we set. A
/// Prometheus whose sidecar another cluster added (or none) is left alone. Returns
/// whether anything changed.
pub fn remove_sidecar(obj: &mut Value, owner: &str) -> Result<bool, SidecarError> {
    if annotation(obj, OWNER_ANNOTATION) != Some(owner) {
        return Ok(false);
    }
    let before = obj.clone();
    let set = set_fields(obj);
    let spec = spec_mut(obj)?;
    if let Some(list) = spec.get_mut("containers").and_then(Value::as_array_mut) {
        list.retain(|c| !is_ours(c));
        if list.is_empty() {
            spec.remove("containers");
        }
    }
    if set.iter().any(|f| f == FIELD_DISABLE_COMPACTION) {
        spec.remove("disableCompaction");
    }
    if set.iter().any(|f| f == FIELD_CLUSTER_LABEL)
        && let Some(labels) = spec
            .get_mut("externalLabels")
            .and_then(Value::as_object_mut)
    {
        labels.remove(CLUSTER_LABEL);
        if labels.is_empty() {
            spec.remove("externalLabels");
        }
    }
    let ann = annotations_mut(obj)?;
    ann.remove(OWNER_ANNOTATION);
    ann.remove(SET_ANNOTATION);
    if ann.is_empty()
        && let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut)
    {
        meta.remove("annotations");
    }
    Ok(*obj != before)
}

/// The headless Service selecting the pods of Prometheus `prometheus`.
pub fn service_name(prometheus: &str) -> String {
    format!("{prometheus}-orrery-sidecar")
}

/// The querier's `--endpoint` for the sidecars of Prometheus `prometheus` in `ns`:
/// `dns+` so that every pod (each HA replica) is queried.
pub fn default_endpoint(prometheus: &str, ns: &str) -> String {
    format!("dns+{}.{ns}.svc:{GRPC_PORT}", service_name(prometheus))
}

/// Headless Service over the sidecars' gRPC port of the pods Prometheus Operator
/// runs for `prometheus` (they carry `app.kubernetes.io/name: prometheus` and
/// `prometheus: <name>`). Not owned by the GlobalView: it may sit in another namespace
/// or cluster; the controller deletes it when the sidecar is removed.
pub fn sidecar_service(prometheus: &str, ns: &str) -> Service {
    let labels = BTreeMap::from([
        (LABEL_NAME.to_string(), "orrery".to_string()),
        (LABEL_COMPONENT.to_string(), "sidecar".to_string()),
        (LABEL_INSTANCE.to_string(), prometheus.to_string()),
        (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
    ]);
    Service {
        metadata: ObjectMeta {
            name: Some(service_name(prometheus)),
            namespace: Some(ns.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            selector: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/name".to_string(),
                    "prometheus".to_string(),
                ),
                ("prometheus".to_string(), prometheus.to_string()),
            ])),
            ports: Some(vec![ServicePort {
                name: Some("grpc".to_string()),
                port: GRPC_PORT,
                target_port: Some(IntOrString::Int(GRPC_PORT)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inj() -> SidecarInjection {
        SidecarInjection {
            owner: "orrery-orrery.global.batcave".into(),
            cluster: "batcave".into(),
            image: "orrery:test".into(),
            object_storage_config: Some(SecretKeySelector {
                name: "bucket".into(),
                key: "objstore.yml".into(),
            }),
            resources: None,
            local_read: false,
        }
    }

    fn prom() -> Value {
        json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus",
               "metadata": {"name": "batcave", "namespace": "monitoring"},
               "spec": {"replicas": 2,
                        "containers": [{"name": "prometheus", "env": [{"name": "A", "value": "1"}]}]}})
    }

    #[test]
    fn container_matches_prometheus_operator_conventions() {
        let c = container(&prom(), &inj());
        assert_eq!(
            c["args"],
            json!([
                "sidecar",
                "--prometheus.url=http://localhost:9090",
                "--tsdb.path=/prometheus",
                "--grpc-address=0.0.0.0:10901",
                "--http-address=0.0.0.0:10902",
                "--objstore.config=$(OBJSTORE_CONFIG)"
            ])
        );
        assert_eq!(
            c["env"][0]["valueFrom"]["secretKeyRef"],
            json!({"name": "bucket", "key": "objstore.yml"})
        );
        // emptyDir (no spec.storage): no sub-path.
        assert_eq!(
            c["volumeMounts"],
            json!([{"name": "prometheus-batcave-db", "mountPath": "/prometheus"}])
        );
        let mut p = prom();
        p["spec"]["storage"] = json!({"volumeClaimTemplate": {"spec": {}}});
        p["spec"]["routePrefix"] = json!("/prom/");
        let c = container(&p, &inj());
        assert_eq!(
            c["volumeMounts"],
            json!([{"name": "prometheus-batcave-db", "mountPath": "/prometheus", "subPath": "prometheus-db"}])
        );
        assert_eq!(c["args"][1], "--prometheus.url=http://localhost:9090/prom");
        p["spec"]["storage"] = json!({"disableMountSubPath": true,
            "volumeClaimTemplate": {"metadata": {"name": "data"}, "spec": {}}});
        let c = container(&p, &inj());
        assert_eq!(
            c["volumeMounts"],
            json!([{"name": "data", "mountPath": "/prometheus"}])
        );
        let mut no_bucket = inj();
        no_bucket.object_storage_config = None;
        let c = container(&prom(), &no_bucket);
        assert!(c.get("env").is_none());
        assert_eq!(c["args"].as_array().unwrap().len(), 5);
        // `localRead`: the sidecar reads the mounted data volume.
        let mut local = inj();
        local.local_read = true;
        let c = container(&prom(), &local);
        assert_eq!(c["args"][5], "--tsdb.local-read", "{}", c["args"]);
        assert_eq!(c["volumeMounts"][0]["mountPath"], "/prometheus");
    }

    #[test]
    fn upsert_is_idempotent_and_remove_restores_the_object() {
        let original = prom();
        let mut p = original.clone();
        assert!(upsert_sidecar(&mut p, &inj()).unwrap());
        let containers = p["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2);
        assert_eq!(containers[0], original["spec"]["containers"][0]);
        assert_eq!(containers[1], container(&original, &inj()));
        assert_eq!(p["spec"]["disableCompaction"], true);
        assert_eq!(p["spec"]["externalLabels"], json!({"cluster": "batcave"}));
        assert_eq!(
            p["metadata"]["annotations"][OWNER_ANNOTATION],
            "orrery-orrery.global.batcave"
        );
        assert_eq!(
            p["metadata"]["annotations"][SET_ANNOTATION],
            "disableCompaction,externalLabels.cluster"
        );
        assert!(has_sidecar(&p, &inj().owner));
        assert!(!upsert_sidecar(&mut p, &inj()).unwrap());
        // A new image replaces the container in place.
        let mut newer = inj();
        newer.image = "orrery:v2".into();
        assert!(upsert_sidecar(&mut p, &newer).unwrap());
        assert_eq!(p["spec"]["containers"][1]["image"], "orrery:v2");
        assert_eq!(p["spec"]["containers"].as_array().unwrap().len(), 2);
        // Not ours: nothing removed.
        assert!(!remove_sidecar(&mut p, "orrery-x.y.z").unwrap());
        assert!(remove_sidecar(&mut p, &inj().owner).unwrap());
        assert_eq!(p, original);
        assert!(!remove_sidecar(&mut p, &inj().owner).unwrap());
    }

    #[test]
    fn fields_the_user_set_are_kept_on_removal() {
        let mut original = prom();
        original["spec"]["disableCompaction"] = json!(true);
        original["spec"]["externalLabels"] = json!({"cluster": "batcave", "region": "eu"});
        original["metadata"]["annotations"] = json!({"team": "a"});
        let mut p = original.clone();
        assert!(upsert_sidecar(&mut p, &inj()).unwrap());
        assert!(p["metadata"]["annotations"].get(SET_ANNOTATION).is_none());
        assert!(remove_sidecar(&mut p, &inj().owner).unwrap());
        assert_eq!(p, original);
    }

    #[test]
    fn refusals() {
        let mut p = prom();
        p["spec"]["thanos"] = json!({"image": "thanos"});
        assert!(matches!(
            upsert_sidecar(&mut p, &inj()),
            Err(SidecarError::ThanosSidecarPresent)
        ));
        let mut p = prom();
        p["spec"]["externalLabels"] = json!({"cluster": "gotham"});
        let before = p.clone();
        let err = upsert_sidecar(&mut p, &inj()).unwrap_err();
        assert!(err.to_string().contains("\"gotham\""), "{err}");
        assert_eq!(p, before, "a refused edit leaves the object as it was");
        let mut p = prom();
        p["spec"]["containers"] = json!([{"name": CONTAINER_NAME}]);
        assert!(matches!(
            upsert_sidecar(&mut p, &inj()),
            Err(SidecarError::ForeignContainer)
        ));
        let mut p = prom();
        upsert_sidecar(&mut p, &inj()).unwrap();
        let mut other = inj();
        other.owner = "orrery-team-b.global.batcave".into();
        let err = upsert_sidecar(&mut p, &other).unwrap_err();
        assert!(
            err.to_string().contains("orrery-orrery.global.batcave"),
            "{err}"
        );
    }

    #[test]
    fn service_selects_the_prometheus_pods() {
        let s = sidecar_service("batcave", "monitoring");
        assert_eq!(s.metadata.name.as_deref(), Some("batcave-orrery-sidecar"));
        let spec = s.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.selector.unwrap()["prometheus"], "batcave");
        assert_eq!(spec.ports.unwrap()[0].port, 10901);
        assert_eq!(
            default_endpoint("batcave", "monitoring"),
            "dns+batcave-orrery-sidecar.monitoring.svc:10901"
        );
    }
}
