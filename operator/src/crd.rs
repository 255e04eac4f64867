//! The custom resources `ReceiveCluster` and `GlobalView` (group `orrery.dev`,
//! version `v1alpha1`), derived from these Rust types.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// API group of Orrery's resources.
pub const GROUP: &str = "orrery.dev";

/// A set of `orrery receive` pods (router + ingestor) forming one hashring.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "orrery.dev",
    version = "v1alpha1",
    kind = "ReceiveCluster",
    namespaced,
    status = "ReceiveClusterStatus",
    shortname = "rcv",
    category = "orrery",
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"RF","type":"integer","jsonPath":".spec.replicationFactor"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Remote-Write","type":"string","priority":1,"jsonPath":".status.remoteWriteURL"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // `<name>-receive-headless` must be a DNS-1035 label (<= 63) and the StatefulSet name
    // `<name>-receive` at most 52 (its pods' controller-revision-hash label adds 11).
    validation = Rule::new("self.metadata.name.size() <= 44 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("name must start with a letter, hold only a-z, 0-9 and '-', and be at most 44 characters (children are named <name>-receive-headless)")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.replicas >= self.replicationFactor").message("replicas must be >= replicationFactor"))]
#[x_kube(validation = Rule::new("has(oldSelf.storage) == has(self.storage)").message("storage cannot be added to or removed from an existing ReceiveCluster: the receivers would restart on empty volumes and the old data would no longer be read; create a new ReceiveCluster instead"))]
pub struct ReceiveClusterSpec {
    /// Number of receiver pods.
    #[schemars(range(min = 1))]
    pub replicas: i32,
    /// How many receivers store each series (1, 3, 5 …); replicas must be at least this.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1))]
    pub replication_factor: i32,
    /// Container image holding the `orrery` binary; the operator's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// How long blocks are kept (`--tsdb.retention`), e.g. `15d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h|d|w|y)$"))]
    pub retention: Option<String>,
    /// Persistent volume per pod; an emptyDir when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// `sizeLimit` of the emptyDir used when `storage` is unset (default `10Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir_size_limit: Option<String>,
    /// Compute resources of the receiver container (default: requests of 100m CPU
    /// and 256Mi memory, no limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Labels added to every block this cluster writes (`--label`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[a-zA-Z_][a-zA-Z0-9_]*$') && k != 'receive_replica')").message("externalLabels keys must be Prometheus label names ([a-zA-Z_][a-zA-Z0-9_]*) other than receive_replica"))]
    #[x_kube(validation = Rule::new("self.all(k, !self[k].contains('\\n'))").message("externalLabels values must not contain a newline"))]
    pub external_labels: BTreeMap<String, String>,
    /// How series are spread over the hashring.
    #[serde(default)]
    pub hashring_algorithm: HashringAlgorithm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// mTLS on the receivers' gRPC port: StoreAPI reads and replication between
    /// receivers need a client certificate from the Secret's CA, and receivers forward
    /// to each other with the Secret's certificate. The certificate must name
    /// `*.<name>-receive-headless.<namespace>.svc` (peers dial pods by name) and
    /// `<name>-receive-headless.<namespace>.svc` (what queriers verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_tls: Option<TlsSecretRef>,
    /// When true the operator leaves the children alone.
    #[serde(default)]
    pub paused: bool,
}

/// A Secret in the resource's namespace holding `tls.crt`, `tls.key` and `ca.crt`
/// (cert-manager's layout). Mounted as a directory, never with subPath, so a renewed
/// certificate or CA reaches running pods, which reload the files on change.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSecretRef {
    /// Secret name (a DNS subdomain).
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        length(max = 253)
    )]
    pub secret_name: String,
}

fn default_one() -> i32 {
    1
}

/// Volume claim for each receiver pod. A larger `size` is applied to the existing
/// claims too (their StorageClass must allow volume expansion); the StorageClass
/// cannot change (existing volumes would not move).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.storageClassName) ? self.storageClassName : '') == (has(oldSelf.storageClassName) ? oldSelf.storageClassName : '')").message("storageClassName cannot change: existing volumes would not move to the new class"))]
pub struct StorageSpec {
    /// Requested size, e.g. `10Gi`.
    pub size: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// Hashring algorithm passed to `--receive.hashrings-algorithm`.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum HashringAlgorithm {
    #[default]
    Ketama,
    Hashmod,
}

impl HashringAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            HashringAlgorithm::Ketama => "ketama",
            HashringAlgorithm::Hashmod => "hashmod",
        }
    }
}

/// Observed state of a ReceiveCluster.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReceiveClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub ready_replicas: i32,
    /// Endpoints currently in the hashring (Ready pods only).
    #[serde(default)]
    pub hashring_endpoints: Vec<String>,
    /// In-cluster URL Prometheus servers remote-write to.
    #[serde(
        default,
        rename = "remoteWriteURL",
        skip_serializing_if = "Option::is_none"
    )]
    pub remote_write_url: Option<String>,
    /// `Ready`, `Progressing`, `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A querier over selected ReceiveClusters, plus the Prometheus servers that write to them.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "orrery.dev",
    version = "v1alpha1",
    kind = "GlobalView",
    namespaced,
    status = "GlobalViewStatus",
    shortname = "gv",
    category = "orrery",
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Clusters","type":"string","jsonPath":".spec.clusters[*].name"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // The querier Service `<name>-query` is a DNS-1035 label.
    validation = Rule::new("self.metadata.name.size() <= 50 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("name must start with a letter, hold only a-z, 0-9 and '-', and be at most 50 characters")
)]
#[serde(rename_all = "camelCase")]
pub struct GlobalViewSpec {
    /// Which ReceiveClusters (same namespace) the querier reads from.
    #[serde(default)]
    pub receive_clusters: ReceiveClusterSelector,
    /// Extra static StoreAPI endpoints (`host:port`, `dns+host:port`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// Labels that tell replicas apart, dropped when merging (`--query.replica-label`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replica_labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Querier pods.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1))]
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Prometheus servers to wire to the receivers; names are unique (each one is the
    /// `cluster` label and part of the remote_write entry's name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub clusters: Vec<ClusterSpec>,
    /// The client certificate (and CA) the querier dials StoreAPI endpoints with;
    /// needed to read ReceiveClusters that set `grpcTls`. Each selected ReceiveCluster
    /// is verified as `<name>-receive-headless.<namespace>.svc`; static `endpoints` as
    /// the host they name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_client_tls: Option<TlsSecretRef>,
    #[serde(default)]
    pub paused: bool,
}

/// ReceiveClusters by name and/or label selector.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReceiveClusterSelector {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// One Prometheus server to register.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.prometheusRef) != has(self.configMapRef)").message("set exactly one of prometheusRef or configMapRef"))]
#[x_kube(validation = Rule::new("!has(self.remoteClusterSecretRef) || has(self.remoteWriteURL) || (has(self.mode) && self.mode == 'sidecar')").message("a cluster in another Kubernetes cluster needs remoteWriteURL (the in-cluster receiver Service name does not resolve there)"))]
#[x_kube(validation = Rule::new("!has(self.mode) || self.mode != 'sidecar' || has(self.prometheusRef)").message("mode sidecar needs prometheusRef: the sidecar container is added to a Prometheus Operator Prometheus"))]
#[x_kube(validation = Rule::new("!has(self.mode) || self.mode != 'sidecar' || !has(self.remoteClusterSecretRef) || (has(self.sidecar) && has(self.sidecar.endpoint))").message("a sidecar in another Kubernetes cluster needs sidecar.endpoint (the in-cluster Service name does not resolve from the querier)"))]
pub struct ClusterSpec {
    /// Cluster name; also the `cluster` label of its series.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 40))]
    pub name: String,
    /// A Prometheus Operator `monitoring.coreos.com/v1` Prometheus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_ref: Option<PrometheusRef>,
    /// A plain Prometheus whose prometheus.yml lives in a ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapRef>,
    /// Credentials for a Prometheus in another Kubernetes cluster: a Secret in the
    /// GlobalView's namespace with the keys `server` (https URL), `token` and optionally
    /// `ca.crt` (PEM). Deliberately not a kubeconfig: a kubeconfig can name exec plugins
    /// and local files (`tokenFile`), which would run inside, or read from, the operator pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_cluster_secret_ref: Option<RemoteClusterSecretRef>,
    /// Receiver URL as reachable from that Prometheus; the first selected
    /// ReceiveCluster's `status.remoteWriteURL` when unset.
    #[serde(
        default,
        rename = "remoteWriteURL",
        skip_serializing_if = "Option::is_none"
    )]
    pub remote_write_url: Option<String>,
    /// Sent as the `THANOS-TENANT` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// How the cluster's data reaches the querier: `remoteWrite` (default; our entry
    /// in its remote_write) or `sidecar` (an `orrery sidecar` container added to the
    /// Prometheus Operator `Prometheus`, which the querier reaches over gRPC).
    #[serde(default)]
    pub mode: ClusterMode,
    /// Options of `mode: sidecar`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarSpec>,
}

/// How a registered cluster feeds the global view.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum ClusterMode {
    /// Prometheus pushes to the receivers (for sites the querier cannot reach).
    #[default]
    RemoteWrite,
    /// The querier reads Prometheus through an `orrery sidecar` next to it.
    Sidecar,
}

impl ClusterMode {
    pub fn is_remote_write(&self) -> bool {
        *self == ClusterMode::RemoteWrite
    }
}

/// The `orrery sidecar` container added to a Prometheus in `mode: sidecar`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Image with the `orrery` binary; the GlobalView's, else the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Thanos objstore YAML in a Secret of the Prometheus's namespace (passed as
    /// `--objstore.config`); without it the sidecar serves queries but ships no blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_storage_config: Option<SecretKeySelector>,
    /// StoreAPI address of the sidecars as the querier reaches them; default
    /// `dns+<prometheus>-orrery-sidecar.<namespace>.svc:10901` (the headless Service
    /// the operator creates next to the Prometheus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Serve queries from Prometheus's data volume (`--tsdb.local-read`: its blocks and
    /// its WAL, followed) instead of its remote-read API: faster queries and no query
    /// load on Prometheus, for about one head's worth of memory in the sidecar.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local_read: bool,
}

/// A key of a Secret in the Prometheus's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    pub name: String,
    pub key: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusRef {
    pub name: String,
    /// Defaults to the GlobalView's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Key holding prometheus.yml.
    #[serde(default = "default_config_key")]
    pub key: String,
    /// Where to POST `/-/reload` after the edit, e.g. `http://prometheus.monitoring.svc:9090/-/reload`.
    /// Only `http://host[:port]/-/reload`: the operator POSTs it from its own pod.
    #[serde(default, rename = "reloadURL", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^http://[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?/-/reload$"
    ))]
    pub reload_url: Option<String>,
}

fn default_config_key() -> String {
    "prometheus.yml".to_string()
}

/// A remote-cluster Secret (keys `server`, `token`, `ca.crt`) in the GlobalView's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RemoteClusterSecretRef {
    pub name: String,
}

/// Observed state of a GlobalView.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GlobalViewStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub ready_replicas: i32,
    /// StoreAPI endpoints the querier was given.
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub clusters: Vec<ClusterStatus>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Per-cluster state in a GlobalView's status.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub name: String,
    /// Our remote_write entry is present in that Prometheus's configuration.
    #[serde(default)]
    pub remote_write_configured: bool,
    /// The mode the target was configured in (so a switch undoes the old one).
    #[serde(default, skip_serializing_if = "ClusterMode::is_remote_write")]
    pub mode: ClusterMode,
    /// `mode: sidecar`: our sidecar container is in that Prometheus's spec.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sidecar_configured: bool,
    /// The cluster left the spec (or its target changed) and removing our entry from
    /// the old target failed; retried on every reconcile and on deletion.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_removal: bool,
    /// `RemoteWriteConfigured` (or `SidecarConfigured`), `DataFlowing`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The target our entry was written to (so it can be removed when the cluster
    /// leaves the spec or its target changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_ref: Option<PrometheusRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_cluster_secret_ref: Option<RemoteClusterSecretRef>,
}

/// All CRDs of the operator, in a stable order.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![ReceiveCluster::crd(), GlobalView::crd()]
}

/// File name under `crds/` for a CRD (`orrery.dev_receiveclusters.yaml`).
pub fn crd_file_name(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// One CRD as YAML.
pub fn crd_yaml(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(crd)
}

/// Every CRD as one multi-document YAML stream (what `orrery operator crds` prints).
pub fn all_crds_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&crd_yaml(&crd)?);
    }
    Ok(out)
}
