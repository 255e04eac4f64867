//! Desired objects of a ReceiveCluster, built by pure functions: the receiver
//! StatefulSet, its headless and remote-write Services, the hashring ConfigMap and
//! the PodDisruptionBudget.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::crd::{HashringAlgorithm, ReceiveCluster};

pub const GRPC_PORT: i32 = 10901;
pub const HTTP_PORT: i32 = 10902;
pub const REMOTE_WRITE_PORT: i32 = 19291;
/// Where the hashring ConfigMap is mounted (a directory mount, so updates arrive
/// without a restart; subPath mounts never update).
pub const HASHRING_DIR: &str = "/etc/orrery/hashring";
pub const HASHRING_KEY: &str = "hashrings.json";
pub const DATA_DIR: &str = "/var/orrery/data";
pub const DEFAULT_RETENTION: &str = "15d";
/// External label telling receiver replicas apart (dropped by the querier when merging).
pub const REPLICA_LABEL: &str = "receive_replica";
/// Labels on every object the operator creates.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "orrery-operator";
pub const RUN_AS: i64 = 10001;

/// Names of a ReceiveCluster's children.
pub fn statefulset_name(rc: &str) -> String {
    format!("{rc}-receive")
}
pub fn headless_service_name(rc: &str) -> String {
    format!("{rc}-receive-headless")
}
pub fn remote_write_service_name(rc: &str) -> String {
    format!("{rc}-receive")
}
pub fn hashring_configmap_name(rc: &str) -> String {
    format!("{rc}-hashring")
}

/// `dns+` StoreAPI address of a ReceiveCluster, for queriers.
pub fn store_endpoint(rc: &str, ns: &str) -> String {
    format!("dns+{}.{ns}.svc:{GRPC_PORT}", headless_service_name(rc))
}

/// The in-cluster remote-write URL of a ReceiveCluster.
pub fn remote_write_url(rc: &str, ns: &str) -> String {
    format!(
        "http://{}.{ns}.svc:{REMOTE_WRITE_PORT}/api/v1/receive",
        remote_write_service_name(rc)
    )
}

/// The hashring address of pod `pod` (`<pod>.<headless>.<ns>.svc:10901`).
pub fn pod_endpoint(pod: &str, rc: &str, ns: &str) -> String {
    format!("{pod}.{}.{ns}.svc:{GRPC_PORT}", headless_service_name(rc))
}

/// Selector labels of a ReceiveCluster's pods.
pub fn selector_labels(rc: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), "orrery".to_string()),
        (LABEL_COMPONENT.to_string(), "receive".to_string()),
        (LABEL_INSTANCE.to_string(), rc.to_string()),
    ])
}

/// Label selector string of a ReceiveCluster's pods (for list calls).
pub fn selector_string(rc: &str) -> String {
    selector_labels(rc)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn labels(rc: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(rc);
    l.insert(LABEL_MANAGED_BY.to_string(), MANAGER.to_string());
    l
}

/// Object metadata of a child: name, namespace, labels and the controller owner reference.
fn meta(rc: &ReceiveCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: rc.namespace(),
        labels: Some(labels(&rc.name_any())),
        owner_references: rc.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failure: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("http".to_string()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failure),
        timeout_seconds: Some(5),
        ..Default::default()
    }
}

fn port(name: &str, p: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: p,
        protocol: Some("TCP".to_string()),
        ..Default::default()
    }
}

fn service_port(name: &str, p: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port: p,
        target_port: Some(IntOrString::String(name.to_string())),
        protocol: Some("TCP".to_string()),
        ..Default::default()
    }
}

/// Container security context meeting Pod Security "restricted" (non-root, no privilege
/// escalation, all capabilities dropped, RuntimeDefault seccomp); without it a namespace
/// enforcing "restricted" refuses the pods and the workload just shows 0 ready.
pub fn restricted_container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Default::default()
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..Default::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_string(),
        ..Default::default()
    }
}

/// Pod security context ("restricted"), uid/gid [`RUN_AS`]. With `volume_group`, volumes
/// are group-owned by it, and re-chowned only when the root's owner is wrong
/// (`OnRootMismatch`: the default, `Always`, walks the whole TSDB on every start).
pub fn restricted_pod_security_context(volume_group: bool) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: volume_group.then_some(RUN_AS),
        fs_group_change_policy: volume_group.then(|| "OnRootMismatch".to_string()),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..Default::default()
    }
}

/// Quotes a label value for `--label k="v"`.
pub fn label_flag(k: &str, v: &str) -> String {
    format!(
        "--label={k}=\"{}\"",
        v.replace('\\', "\\\\").replace('"', "\\\"")
    )
}

/// Arguments of the receiver container.
pub fn receiver_args(rc: &ReceiveCluster) -> Vec<String> {
    let name = rc.name_any();
    let ns = rc.namespace().unwrap_or_default();
    let s = &rc.spec;
    let mut args = vec![
        "receive".to_string(),
        format!("--tsdb.path={DATA_DIR}"),
        format!(
            "--tsdb.retention={}",
            s.retention.as_deref().unwrap_or(DEFAULT_RETENTION)
        ),
        format!("--remote-write.address=0.0.0.0:{REMOTE_WRITE_PORT}"),
        format!("--grpc-address=0.0.0.0:{GRPC_PORT}"),
        format!("--http-address=0.0.0.0:{HTTP_PORT}"),
        format!("--receive.hashrings-file={HASHRING_DIR}/{HASHRING_KEY}"),
        format!(
            "--receive.hashrings-algorithm={}",
            s.hashring_algorithm.as_str()
        ),
        format!("--receive.replication-factor={}", s.replication_factor),
        format!(
            "--receive.local-endpoint=$(POD_NAME).{}.{ns}.svc:{GRPC_PORT}",
            headless_service_name(&name)
        ),
        label_flag(REPLICA_LABEL, "$(POD_NAME)"),
    ];
    for (k, v) in &s.external_labels {
        // The kubelet expands `$(VAR)` in args; `$$` is its escape for a literal `$`.
        args.push(label_flag(k, &v.replace('$', "$$")));
    }
    if s.grpc_tls.is_some() {
        args.extend(crate::tls::receiver_args());
    }
    args
}

/// `sizeLimit` of the emptyDir used without `spec.storage` (unless
/// `spec.emptyDirSizeLimit` says otherwise): a receiver past it is evicted alone,
/// instead of filling the node's disk until the kubelet evicts everything there.
pub const DEFAULT_EMPTY_DIR_SIZE_LIMIT: &str = "10Gi";

/// Requests for a receiver whose spec names no resources, so it is Burstable rather
/// than BestEffort (the first evicted under node pressure). No limits: a receiver
/// replaying its WAL may need much more for a while.
pub fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".to_string())),
            ("memory".to_string(), Quantity("256Mi".to_string())),
        ])),
        ..Default::default()
    }
}

/// Spreads a cluster's receivers over nodes (and zones) when the spec gives no
/// affinity: with every replica of a series on one node, losing that node loses the
/// write quorum. Preferred, not required, so small clusters still schedule.
pub fn default_affinity(name: &str) -> Affinity {
    let term = |key: &str, weight: i32| WeightedPodAffinityTerm {
        weight,
        pod_affinity_term: PodAffinityTerm {
            label_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(name)),
                ..Default::default()
            }),
            topology_key: key.to_string(),
            ..Default::default()
        },
    };
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                term("kubernetes.io/hostname", 100),
                term("topology.kubernetes.io/zone", 50),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The receiver StatefulSet.
pub fn statefulset(rc: &ReceiveCluster, default_image: &str) -> StatefulSet {
    let name = rc.name_any();
    let s = &rc.spec;
    let mut volumes = vec![Volume {
        name: "hashring".to_string(),
        config_map: Some(ConfigMapVolumeSource {
            name: hashring_configmap_name(&name),
            ..Default::default()
        }),
        ..Default::default()
    }];
    if let Some(t) = &s.grpc_tls {
        volumes.push(crate::tls::volume(t));
    }
    let claims = match &s.storage {
        Some(st) => Some(vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".to_string()),
                labels: Some(selector_labels(&name)),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".to_string()]),
                storage_class_name: st.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity(st.size.clone()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        None => {
            volumes.push(Volume {
                name: "data".to_string(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(Quantity(
                        s.empty_dir_size_limit
                            .clone()
                            .unwrap_or_else(|| DEFAULT_EMPTY_DIR_SIZE_LIMIT.to_string()),
                    )),
                    ..Default::default()
                }),
                ..Default::default()
            });
            None
        }
    };
    let container = Container {
        name: "receive".to_string(),
        image: Some(s.image.clone().unwrap_or_else(|| default_image.to_string())),
        args: Some(receiver_args(rc)),
        env: Some(vec![
            env_field("POD_NAME", "metadata.name"),
            env_field("POD_NAMESPACE", "metadata.namespace"),
        ]),
        ports: Some(vec![
            port("grpc", GRPC_PORT),
            port("http", HTTP_PORT),
            port("remote-write", REMOTE_WRITE_PORT),
        ]),
        readiness_probe: Some(http_probe("/-/ready", 5, 3)),
        liveness_probe: Some(http_probe("/-/healthy", 10, 6)),
        resources: Some(s.resources.clone().unwrap_or_else(default_resources)),
        volume_mounts: Some(
            [
                VolumeMount {
                    name: "data".to_string(),
                    mount_path: DATA_DIR.to_string(),
                    ..Default::default()
                },
                VolumeMount {
                    name: "hashring".to_string(),
                    mount_path: HASHRING_DIR.to_string(),
                    read_only: Some(true),
                    ..Default::default()
                },
            ]
            .into_iter()
            .chain(s.grpc_tls.as_ref().map(|_| crate::tls::mount()))
            .collect(),
        ),
        security_context: Some(restricted_container_security_context()),
        ..Default::default()
    };
    StatefulSet {
        metadata: meta(rc, statefulset_name(&name)),
        spec: Some(StatefulSetSpec {
            replicas: Some(s.replicas),
            service_name: Some(headless_service_name(&name)),
            pod_management_policy: Some("Parallel".to_string()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&name)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    node_selector: s.node_selector.clone(),
                    tolerations: s.tolerations.clone(),
                    affinity: Some(
                        s.affinity
                            .clone()
                            .unwrap_or_else(|| default_affinity(&name)),
                    ),
                    // Time to flush the head block on shutdown.
                    termination_grace_period_seconds: Some(120),
                    security_context: Some(restricted_pod_security_context(true)),
                    ..Default::default()
                }),
            },
            volume_claim_templates: claims,
            ..Default::default()
        }),
        status: None,
    }
}

/// Headless Service giving each pod a DNS name (also what queriers resolve with `dns+`).
/// Not-ready pods are published so peers resolve while the ring settles.
pub fn headless_service(rc: &ReceiveCluster) -> Service {
    let name = rc.name_any();
    Service {
        metadata: meta(rc, headless_service_name(&name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![
                service_port("grpc", GRPC_PORT),
                service_port("http", HTTP_PORT),
                service_port("remote-write", REMOTE_WRITE_PORT),
            ]),
            ..Default::default()
        }),
        status: None,
    }
}

/// ClusterIP Service Prometheus servers remote-write to (load-balanced over Ready pods).
pub fn remote_write_service(rc: &ReceiveCluster) -> Service {
    let name = rc.name_any();
    Service {
        metadata: meta(rc, remote_write_service_name(&name)),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(&name)),
            ports: Some(vec![
                service_port("remote-write", REMOTE_WRITE_PORT),
                service_port("http", HTTP_PORT),
            ]),
            ..Default::default()
        }),
        status: None,
    }
}

/// PodDisruptionBudget allowing ⌊RF/2⌋ receivers down at once, so a write quorum survives.
/// With RF=1 there is no quorum to protect and ⌊1/2⌋ = 0 would block every voluntary
/// eviction (`kubectl drain`, managed node upgrades), so it allows one: RF=1 has no
/// availability guarantee.
pub fn pod_disruption_budget(rc: &ReceiveCluster) -> PodDisruptionBudget {
    let name = rc.name_any();
    PodDisruptionBudget {
        metadata: meta(rc, statefulset_name(&name)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int((rc.spec.replication_factor / 2).max(1))),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// One entry of the Thanos hashring file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HashringConfig {
    pub hashring: String,
    pub algorithm: String,
    pub endpoints: Vec<String>,
}

/// Hashring endpoints of the Ready, non-terminating pods of a ReceiveCluster, ordered
/// by pod ordinal.
pub fn ready_endpoints(pods: &[Pod], rc: &str, ns: &str) -> Vec<String> {
    let sts = statefulset_name(rc);
    let mut named: Vec<(u64, String)> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| {
            let name = p.metadata.name.clone()?;
            let ordinal = name.strip_prefix(&sts)?.strip_prefix('-')?.parse().ok()?;
            Some((ordinal, name))
        })
        .collect();
    named.sort();
    named.dedup();
    named
        .into_iter()
        .map(|(_, n)| pod_endpoint(&n, rc, ns))
        .collect()
}

/// Endpoints of every desired pod (ordinals 0..replicas).
pub fn all_endpoints(rc: &str, ns: &str, replicas: i32) -> Vec<String> {
    (0..replicas.max(0))
        .map(|i| pod_endpoint(&format!("{}-{i}", statefulset_name(rc)), rc, ns))
        .collect()
}

/// Chooses the hashring members. Ready pods when at least RF of them are ready (a
/// ketama ring with fewer members than RF cannot place series); otherwise the previous
/// ring; on first start, all desired pods, so receivers can become ready at all.
pub fn next_hashring(
    previous: Option<&[String]>,
    ready: &[String],
    all: &[String],
    replication_factor: i32,
) -> Vec<String> {
    let rf = usize::try_from(replication_factor.max(1)).unwrap_or(1);
    if ready.len() >= rf {
        return ready.to_vec();
    }
    match previous {
        Some(p) if !p.is_empty() => p.to_vec(),
        _ => all.to_vec(),
    }
}

/// The hashring file (Thanos JSON format) for `endpoints`.
pub fn hashring_json(endpoints: &[String], algorithm: HashringAlgorithm) -> String {
    let rings = vec![HashringConfig {
        hashring: "default".to_string(),
        algorithm: algorithm.as_str().to_string(),
        endpoints: endpoints.to_vec(),
    }];
    serde_json::to_string_pretty(&rings).unwrap_or_else(|_| "[]".to_string())
}

/// Endpoints listed in an existing hashring file, if it parses.
pub fn parse_hashring_endpoints(json: &str) -> Option<Vec<String>> {
    let rings: Vec<HashringConfig> = serde_json::from_str(json).ok()?;
    Some(rings.into_iter().flat_map(|r| r.endpoints).collect())
}

/// The hashring ConfigMap.
pub fn hashring_configmap(rc: &ReceiveCluster, endpoints: &[String]) -> ConfigMap {
    let name = rc.name_any();
    ConfigMap {
        metadata: meta(rc, hashring_configmap_name(&name)),
        data: Some(BTreeMap::from([(
            HASHRING_KEY.to_string(),
            hashring_json(endpoints, rc.spec.hashring_algorithm),
        )])),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::{ReceiveClusterSpec, StorageSpec};
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    pub(crate) fn rc(replicas: i32, rf: i32) -> ReceiveCluster {
        let mut rc = ReceiveCluster::new(
            "main",
            ReceiveClusterSpec {
                replicas,
                replication_factor: rf,
                image: None,
                retention: Some("30d".into()),
                storage: Some(StorageSpec {
                    size: "10Gi".into(),
                    storage_class_name: Some("fast".into()),
                }),
                empty_dir_size_limit: None,
                resources: None,
                external_labels: BTreeMap::from([("region".into(), "eu".into())]),
                hashring_algorithm: HashringAlgorithm::Ketama,
                node_selector: None,
                tolerations: None,
                affinity: None,
                grpc_tls: None,
                paused: false,
            },
        );
        rc.metadata.namespace = Some("orrery".into());
        rc.metadata.uid = Some("uid-1".into());
        rc.metadata.generation = Some(1);
        rc
    }

    fn pod(name: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn statefulset_args_and_shape() {
        let sts = statefulset(&rc(3, 3), "orrery:test");
        assert_eq!(sts.metadata.name.as_deref(), Some("main-receive"));
        assert_eq!(sts.metadata.namespace.as_deref(), Some("orrery"));
        let owner = &sts.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "ReceiveCluster");
        assert_eq!(owner.api_version, "orrery.dev/v1alpha1");
        assert_eq!(owner.uid, "uid-1");
        assert_eq!(owner.controller, Some(true));
        let spec = sts.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("main-receive-headless"));
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("orrery:test"));
        let args = c.args.clone().unwrap();
        for want in [
            "receive",
            "--tsdb.path=/var/orrery/data",
            "--tsdb.retention=30d",
            "--remote-write.address=0.0.0.0:19291",
            "--grpc-address=0.0.0.0:10901",
            "--http-address=0.0.0.0:10902",
            "--receive.hashrings-file=/etc/orrery/hashring/hashrings.json",
            "--receive.hashrings-algorithm=ketama",
            "--receive.replication-factor=3",
            "--receive.local-endpoint=$(POD_NAME).main-receive-headless.orrery.svc:10901",
            "--label=receive_replica=\"$(POD_NAME)\"",
            "--label=region=\"eu\"",
        ] {
            assert!(args.iter().any(|a| a == want), "missing {want} in {args:?}");
        }
        let env = c.env.as_ref().unwrap();
        assert_eq!(env[0].name, "POD_NAME");
        assert_eq!(
            env[0]
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.name"
        );
        let ready = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(ready.path.as_deref(), Some("/-/ready"));
        assert_eq!(ready.port, IntOrString::String("http".into()));
        let mounts = c.volume_mounts.as_ref().unwrap();
        let hr = mounts.iter().find(|m| m.name == "hashring").unwrap();
        assert_eq!(hr.mount_path, HASHRING_DIR);
        assert!(hr.sub_path.is_none(), "subPath mounts never refresh");
        let vol = pod.volumes.unwrap();
        assert_eq!(
            vol.iter()
                .find(|v| v.name == "hashring")
                .unwrap()
                .config_map
                .as_ref()
                .unwrap()
                .name,
            "main-hashring"
        );
        assert!(
            vol.iter().all(|v| v.name != "data"),
            "data comes from the claim"
        );
        let claim = &spec.volume_claim_templates.unwrap()[0];
        assert_eq!(claim.metadata.name.as_deref(), Some("data"));
        let cs = claim.spec.as_ref().unwrap();
        assert_eq!(cs.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            cs.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"],
            Quantity("10Gi".into())
        );
        let sel = spec.selector.match_labels.unwrap();
        let tmpl_labels = spec.template.metadata.unwrap().labels.unwrap();
        for (k, v) in &sel {
            assert_eq!(tmpl_labels.get(k), Some(v));
        }
    }

    #[test]
    fn statefulset_without_storage_uses_empty_dir_and_spec_image() {
        let mut r = rc(1, 1);
        r.spec.storage = None;
        r.spec.image = Some("mine:1".into());
        r.spec.retention = None;
        r.spec.hashring_algorithm = HashringAlgorithm::Hashmod;
        let sts = statefulset(&r, "orrery:test");
        let spec = sts.spec.unwrap();
        assert!(spec.volume_claim_templates.is_none());
        let pod = spec.template.spec.unwrap();
        assert!(
            pod.volumes
                .unwrap()
                .iter()
                .any(|v| v.name == "data" && v.empty_dir.is_some())
        );
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("mine:1"));
        let args = c.args.clone().unwrap();
        assert!(args.contains(&"--tsdb.retention=15d".to_string()));
        assert!(args.contains(&"--receive.hashrings-algorithm=hashmod".to_string()));
    }

    #[test]
    fn label_flag_escapes_quotes() {
        assert_eq!(label_flag("a", "x\"y"), "--label=a=\"x\\\"y\"");
    }

    #[test]
    fn services() {
        let r = rc(3, 1);
        let h = headless_service(&r);
        assert_eq!(h.metadata.name.as_deref(), Some("main-receive-headless"));
        let hs = h.spec.unwrap();
        assert_eq!(hs.cluster_ip.as_deref(), Some("None"));
        assert_eq!(hs.publish_not_ready_addresses, Some(true));
        assert_eq!(hs.selector.unwrap(), selector_labels("main"));
        let ports: Vec<i32> = hs.ports.unwrap().iter().map(|p| p.port).collect();
        assert_eq!(ports, [10901, 10902, 19291]);
        let w = remote_write_service(&r);
        assert_eq!(w.metadata.name.as_deref(), Some("main-receive"));
        let ws = w.spec.unwrap();
        assert!(ws.cluster_ip.is_none());
        assert_eq!(ws.ports.unwrap()[0].port, 19291);
        assert_eq!(
            remote_write_url("main", "orrery"),
            "http://main-receive.orrery.svc:19291/api/v1/receive"
        );
        assert_eq!(
            store_endpoint("main", "orrery"),
            "dns+main-receive-headless.orrery.svc:10901"
        );
    }

    #[test]
    fn pdb_allows_floor_half_rf() {
        // RF=1: one may go (D8); 0 would block every node drain.
        for (rf, want) in [(1, 1), (2, 1), (3, 1), (5, 2)] {
            let p = pod_disruption_budget(&rc(5, rf));
            let spec = p.spec.unwrap();
            assert_eq!(
                spec.max_unavailable,
                Some(IntOrString::Int(want)),
                "rf={rf}"
            );
            assert_eq!(
                spec.selector.unwrap().match_labels.unwrap(),
                selector_labels("main")
            );
        }
    }

    #[test]
    fn hashring_from_ready_pods_only() {
        let pods = vec![
            pod("main-receive-10", true),
            pod("main-receive-2", true),
            pod("main-receive-1", false),
            pod("main-receive-0", true),
            pod("other-0", true),
        ];
        let mut terminating = pod("main-receive-3", true);
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let mut all = pods.clone();
        all.push(terminating);
        let eps = ready_endpoints(&all, "main", "orrery");
        assert_eq!(
            eps,
            [
                "main-receive-0.main-receive-headless.orrery.svc:10901",
                "main-receive-2.main-receive-headless.orrery.svc:10901",
                "main-receive-10.main-receive-headless.orrery.svc:10901",
            ]
        );
        let json = hashring_json(&eps, HashringAlgorithm::Ketama);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{
                "hashring": "default",
                "algorithm": "ketama",
                "endpoints": eps,
            }])
        );
        assert_eq!(parse_hashring_endpoints(&json), Some(eps.clone()));
        let cm = hashring_configmap(&rc(3, 1), &eps);
        assert_eq!(cm.metadata.name.as_deref(), Some("main-hashring"));
        assert_eq!(cm.data.unwrap()[HASHRING_KEY], json);
    }

    #[test]
    fn next_hashring_policy() {
        let all = all_endpoints("main", "orrery", 3);
        assert_eq!(all.len(), 3);
        assert_eq!(
            all[2],
            "main-receive-2.main-receive-headless.orrery.svc:10901"
        );
        let ready = vec![all[0].clone(), all[1].clone()];
        // Enough ready members: exactly the ready set.
        assert_eq!(next_hashring(None, &ready, &all, 2), ready);
        // Too few for RF, nothing before: bootstrap with all desired pods.
        assert_eq!(next_hashring(None, &ready, &all, 3), all);
        assert_eq!(next_hashring(Some(&[]), &[], &all, 1), all);
        // Too few for RF with a previous ring: keep it.
        let prev = vec![all[1].clone(), all[2].clone()];
        assert_eq!(next_hashring(Some(&prev), &ready[..1], &all, 2), prev);
    }

    /// D6: Pod Security "restricted" needs drop ALL and RuntimeDefault seccomp.
    #[test]
    fn receiver_pods_are_pod_security_restricted() {
        let sts = statefulset(&rc(3, 1), "img");
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        // D21: no full re-chown of the TSDB volume on every start.
        assert_eq!(
            psc.fs_group_change_policy.as_deref(),
            Some("OnRootMismatch")
        );
        let csc = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(csc.capabilities.unwrap().drop.unwrap(), vec!["ALL"]);
        assert_eq!(csc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        assert_eq!(csc.allow_privilege_escalation, Some(false));
        assert_eq!(csc.run_as_non_root, Some(true));
    }

    /// D12: a `$(X)` in an external label value reaches the receiver literally.
    #[test]
    fn external_label_dollar_is_escaped_for_the_kubelet() {
        let mut r = rc(3, 1);
        r.spec
            .external_labels
            .insert("team".into(), "a$(X)b".into());
        let args = receiver_args(&r);
        assert!(
            args.contains(&"--label=team=\"a$$(X)b\"".to_string()),
            "{args:?}"
        );
        // Our own replica label is still expanded by the kubelet.
        assert!(
            args.contains(&"--label=receive_replica=\"$(POD_NAME)\"".to_string()),
            "{args:?}"
        );
    }

    /// D23: without user settings the pods get requests (Burstable), a preferred
    /// spread over nodes and zones, and a bounded emptyDir; user settings win.
    #[test]
    fn statefulset_defaults_spread_request_and_bound_the_empty_dir() {
        let mut r = rc(3, 3);
        r.spec.storage = None;
        let sts = statefulset(&r, "img");
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let res = pod.containers[0].resources.clone().unwrap();
        assert_eq!(res.requests.unwrap()["memory"], Quantity("256Mi".into()));
        assert!(res.limits.is_none());
        let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
        let terms = anti
            .preferred_during_scheduling_ignored_during_execution
            .unwrap();
        assert_eq!(
            terms[0].pod_affinity_term.topology_key,
            "kubernetes.io/hostname"
        );
        assert_eq!(
            terms[0]
                .pod_affinity_term
                .label_selector
                .as_ref()
                .unwrap()
                .match_labels,
            Some(selector_labels("main"))
        );
        assert_eq!(
            terms[1].pod_affinity_term.topology_key,
            "topology.kubernetes.io/zone"
        );
        let data = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "data")
            .unwrap();
        assert_eq!(
            data.empty_dir.unwrap().size_limit,
            Some(Quantity(DEFAULT_EMPTY_DIR_SIZE_LIMIT.into()))
        );
        r.spec.empty_dir_size_limit = Some("1Gi".into());
        r.spec.affinity = Some(Affinity::default());
        let pod = statefulset(&r, "img").spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.affinity, Some(Affinity::default()));
        let data = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "data")
            .unwrap();
        assert_eq!(
            data.empty_dir.unwrap().size_limit,
            Some(Quantity("1Gi".into()))
        );
    }

    #[test]
    fn grpc_tls_mounts_the_secret_and_requires_client_certificates() {
        use crate::crd::TlsSecretRef;
        let mut r = rc(3, 3);
        r.spec.grpc_tls = Some(TlsSecretRef {
            secret_name: "main-receive-tls".into(),
        });
        let args = receiver_args(&r);
        for want in [
            "--grpc-server-tls-cert=/etc/orrery/grpc-tls/tls.crt",
            "--grpc-server-tls-key=/etc/orrery/grpc-tls/tls.key",
            // A client CA: StoreAPI readers and replicating peers need certificates.
            "--grpc-server-tls-client-ca=/etc/orrery/grpc-tls/ca.crt",
            "--remote-write.client-tls-secure",
            "--remote-write.client-tls-cert=/etc/orrery/grpc-tls/tls.crt",
            "--remote-write.client-tls-key=/etc/orrery/grpc-tls/tls.key",
            "--remote-write.client-tls-ca=/etc/orrery/grpc-tls/ca.crt",
        ] {
            assert!(
                args.contains(&want.to_string()),
                "{want} missing from {args:?}"
            );
        }
        let sts = statefulset(&r, "orrery:test");
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let vol = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.secret.is_some())
            .expect("a Secret volume");
        assert_eq!(
            vol.secret.and_then(|s| s.secret_name).as_deref(),
            Some("main-receive-tls")
        );
        let m = pod.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == vol.name)
            .expect("the Secret is mounted")
            .clone();
        assert_eq!(m.mount_path, "/etc/orrery/grpc-tls");
        assert_eq!(m.read_only, Some(true));
        assert!(
            m.sub_path.is_none(),
            "subPath mounts never see a renewed Secret"
        );
        // Without it: no TLS flag, no Secret.
        assert!(!receiver_args(&rc(3, 3)).iter().any(|a| a.contains("tls")));
    }
}
