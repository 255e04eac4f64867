//! Desired objects of a GlobalView: the querier Deployment and Service, and the
//! choice of ReceiveClusters it reads from.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, PodSpec, PodTemplateSpec, Probe, Service, ServicePort,
    ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{Selector, SelectorExt};
use kube::{Resource, ResourceExt};

use crate::crd::{ClusterMode, ClusterSpec, GlobalView, ReceiveCluster};
use crate::receive::{
    GRPC_PORT, HTTP_PORT, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME, MANAGER,
    REPLICA_LABEL, remote_write_url, store_endpoint,
};

pub fn querier_name(gv: &str) -> String {
    format!("{gv}-query")
}

/// In-cluster base URL of a GlobalView's querier HTTP API.
pub fn querier_url(gv: &str, ns: &str) -> String {
    format!("http://{}.{ns}.svc:{HTTP_PORT}", querier_name(gv))
}

pub fn selector_labels(gv: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), "orrery".to_string()),
        (LABEL_COMPONENT.to_string(), "query".to_string()),
        (LABEL_INSTANCE.to_string(), gv.to_string()),
    ])
}

fn labels(gv: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(gv);
    l.insert(LABEL_MANAGED_BY.to_string(), MANAGER.to_string());
    l
}

fn meta(gv: &GlobalView, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: gv.namespace(),
        labels: Some(labels(&gv.name_any())),
        owner_references: gv.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// Errors choosing ReceiveClusters.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("invalid receiveClusters.selector: {0}")]
    Selector(String),
}

/// The ReceiveClusters a GlobalView selects (by name, or by label selector; both
/// add up), sorted by name. With neither given, every ReceiveCluster of the namespace.
pub fn select_receive_clusters<'a>(
    gv: &GlobalView,
    candidates: &'a [ReceiveCluster],
) -> Result<Vec<&'a ReceiveCluster>, SelectError> {
    let sel = &gv.spec.receive_clusters;
    let selector = match &sel.selector {
        Some(ls) => {
            Some(Selector::try_from(ls.clone()).map_err(|e| SelectError::Selector(e.to_string()))?)
        }
        None => None,
    };
    let ns = gv.namespace();
    let everything = sel.names.is_empty() && selector.is_none();
    let mut out: Vec<&ReceiveCluster> = candidates
        .iter()
        .filter(|rc| rc.namespace() == ns)
        .filter(|rc| {
            everything
                || sel.names.contains(&rc.name_any())
                || selector.as_ref().is_some_and(|s| s.matches(rc.labels()))
        })
        .collect();
    out.sort_by_key(|rc| rc.name_any());
    Ok(out)
}

/// StoreAPI endpoint of a `mode: sidecar` cluster (None for other modes).
pub fn sidecar_endpoint(gv: &GlobalView, c: &ClusterSpec) -> Option<String> {
    if c.mode != ClusterMode::Sidecar {
        return None;
    }
    if let Some(ep) = c.sidecar.as_ref().and_then(|s| s.endpoint.clone()) {
        return Some(ep);
    }
    let p = c.prometheus_ref.as_ref()?;
    let ns = p.namespace.clone().or_else(|| gv.namespace())?;
    Some(crate::sidecar::default_endpoint(&p.name, &ns))
}

fn has_sidecars(gv: &GlobalView) -> bool {
    gv.spec
        .clusters
        .iter()
        .any(|c| c.mode == ClusterMode::Sidecar)
}

/// StoreAPI endpoints of the querier: `dns+` headless addresses of the selected
/// ReceiveClusters, then the sidecars of `mode: sidecar` clusters, then the static
/// ones, without duplicates.
pub fn querier_endpoints(gv: &GlobalView, selected: &[&ReceiveCluster]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for rc in selected {
        let ep = store_endpoint(&rc.name_any(), &rc.namespace().unwrap_or_default());
        if !out.contains(&ep) {
            out.push(ep);
        }
    }
    for ep in gv
        .spec
        .clusters
        .iter()
        .filter_map(|c| sidecar_endpoint(gv, c))
    {
        if !out.contains(&ep) {
            out.push(ep);
        }
    }
    for ep in &gv.spec.endpoints {
        if !out.contains(ep) {
            out.push(ep.clone());
        }
    }
    out
}

/// Replica labels of the querier: the receivers' own replica label, Prometheus
/// Operator's replica label when a cluster runs sidecars (its HA replicas differ only
/// by it), plus the user's.
pub fn replica_labels(gv: &GlobalView) -> Vec<String> {
    let mut out = vec![REPLICA_LABEL.to_string()];
    if has_sidecars(gv) {
        out.push(crate::sidecar::PROMETHEUS_REPLICA_LABEL.to_string());
    }
    for l in &gv.spec.replica_labels {
        if !out.contains(l) {
            out.push(l.clone());
        }
    }
    out
}

/// Arguments of the querier container.
pub fn querier_args(gv: &GlobalView, endpoints: &[String]) -> Vec<String> {
    let mut args = vec![
        "query".to_string(),
        format!("--http-address=0.0.0.0:{HTTP_PORT}"),
        format!("--grpc-address=0.0.0.0:{GRPC_PORT}"),
    ];
    match &gv.spec.grpc_client_tls {
        None => args.extend(endpoints.iter().map(|e| format!("--endpoint={e}"))),
        Some(_) => {
            args.extend(crate::tls::querier_client_args());
            let (dns, fixed): (Vec<String>, Vec<String>) = endpoints
                .iter()
                .cloned()
                .partition(|e| e.starts_with("dns+"));
            args.extend(fixed.iter().map(|e| format!("--endpoint={e}")));
            if !dns.is_empty() {
                args.push(format!(
                    "--endpoint.sd-config={}",
                    crate::tls::querier_sd_config(&dns)
                ));
            }
        }
    }
    args.extend(
        replica_labels(gv)
            .iter()
            .map(|l| format!("--query.replica-label={l}")),
    );
    args
}

fn probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("http".to_string()),
            ..Default::default()
        }),
        period_seconds: Some(5),
        timeout_seconds: Some(5),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

/// The querier Deployment.
pub fn querier_deployment(
    gv: &GlobalView,
    endpoints: &[String],
    default_image: &str,
) -> Deployment {
    let name = gv.name_any();
    Deployment {
        metadata: meta(gv, querier_name(&name)),
        spec: Some(DeploymentSpec {
            replicas: Some(gv.spec.replicas),
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
                    containers: vec![Container {
                        name: "query".to_string(),
                        image: Some(
                            gv.spec
                                .image
                                .clone()
                                .unwrap_or_else(|| default_image.to_string()),
                        ),
                        args: Some(querier_args(gv, endpoints)),
                        ports: Some(vec![
                            ContainerPort {
                                name: Some("grpc".to_string()),
                                container_port: GRPC_PORT,
                                ..Default::default()
                            },
                            ContainerPort {
                                name: Some("http".to_string()),
                                container_port: HTTP_PORT,
                                ..Default::default()
                            },
                        ]),
                        readiness_probe: Some(probe("/-/ready")),
                        liveness_probe: Some(probe("/-/healthy")),
                        resources: gv.spec.resources.clone(),
                        security_context: Some(
                            crate::receive::restricted_container_security_context(),
                        ),
                        volume_mounts: gv
                            .spec
                            .grpc_client_tls
                            .as_ref()
                            .map(|_| vec![crate::tls::mount()]),
                        ..Default::default()
                    }],
                    volumes: gv
                        .spec
                        .grpc_client_tls
                        .as_ref()
                        .map(|t| vec![crate::tls::volume(t)]),
                    security_context: Some(crate::receive::restricted_pod_security_context(false)),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The querier Service (HTTP API/UI and StoreAPI).
pub fn querier_service(gv: &GlobalView) -> Service {
    let name = gv.name_any();
    Service {
        metadata: meta(gv, querier_name(&name)),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(&name)),
            ports: Some(vec![
                ServicePort {
                    name: Some("http".to_string()),
                    port: HTTP_PORT,
                    target_port: Some(IntOrString::String("http".to_string())),
                    ..Default::default()
                },
                ServicePort {
                    name: Some("grpc".to_string()),
                    port: GRPC_PORT,
                    target_port: Some(IntOrString::String("grpc".to_string())),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The remote-write URL for a registered cluster: its override, else the first
/// selected ReceiveCluster's published URL (or the one we would publish).
pub fn cluster_remote_write_url(
    override_url: Option<&str>,
    selected: &[&ReceiveCluster],
) -> Option<String> {
    if let Some(u) = override_url.filter(|u| !u.is_empty()) {
        return Some(u.to_string());
    }
    let rc = selected.first()?;
    rc.status
        .as_ref()
        .and_then(|s| s.remote_write_url.clone())
        .or_else(|| {
            Some(remote_write_url(
                &rc.name_any(),
                &rc.namespace().unwrap_or_default(),
            ))
        })
}

/// PromQL giving the age in seconds of the newest `up` sample of `cluster`.
pub fn last_sample_age_query(cluster: &str) -> String {
    let escaped = cluster.replace('\\', "\\\\").replace('"', "\\\"");
    format!("time() - max(timestamp(up{{cluster=\"{escaped}\"}}))")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::{ClusterSpec, GlobalViewSpec, PrometheusRef, ReceiveClusterSelector};
    use crate::receive::tests::rc;

    pub(crate) fn gv() -> GlobalView {
        let mut gv = GlobalView::new(
            "global",
            GlobalViewSpec {
                receive_clusters: ReceiveClusterSelector::default(),
                endpoints: vec!["static.example:10901".into()],
                replica_labels: vec!["prometheus_replica".into()],
                image: None,
                replicas: 2,
                resources: None,
                clusters: vec![ClusterSpec {
                    name: "batcave".into(),
                    prometheus_ref: Some(PrometheusRef {
                        name: "batcave".into(),
                        namespace: Some("monitoring".into()),
                    }),
                    config_map_ref: None,
                    remote_cluster_secret_ref: None,
                    remote_write_url: None,
                    tenant: None,
                    mode: Default::default(),
                    sidecar: None,
                }],
                grpc_client_tls: None,
                paused: false,
            },
        );
        gv.metadata.namespace = Some("orrery".into());
        gv.metadata.uid = Some("uid-gv".into());
        gv.metadata.generation = Some(3);
        gv
    }

    fn named(name: &str, labels: &[(&str, &str)], ns: &str) -> ReceiveCluster {
        let mut r = rc(1, 1);
        r.metadata.name = Some(name.into());
        r.metadata.namespace = Some(ns.into());
        r.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        r
    }

    #[test]
    fn selection_by_name_selector_and_default() {
        let all = vec![
            named("b", &[("tier", "hot")], "orrery"),
            named("a", &[("tier", "cold")], "orrery"),
            named("c", &[("tier", "hot")], "elsewhere"),
        ];
        let mut g = gv();
        let names = |v: Vec<&ReceiveCluster>| v.iter().map(|r| r.name_any()).collect::<Vec<_>>();
        assert_eq!(
            names(select_receive_clusters(&g, &all).unwrap()),
            ["a", "b"]
        );
        g.spec.receive_clusters.names = vec!["a".into()];
        assert_eq!(names(select_receive_clusters(&g, &all).unwrap()), ["a"]);
        g.spec.receive_clusters.names.clear();
        g.spec.receive_clusters.selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("tier".into(), "hot".into())])),
            ..Default::default()
        });
        assert_eq!(names(select_receive_clusters(&g, &all).unwrap()), ["b"]);
        g.spec.receive_clusters.names = vec!["a".into()];
        assert_eq!(
            names(select_receive_clusters(&g, &all).unwrap()),
            ["a", "b"]
        );
    }

    #[test]
    fn endpoints_and_args() {
        let a = named("a", &[], "orrery");
        let b = named("b", &[], "orrery");
        let mut g = gv();
        g.spec
            .endpoints
            .push("dns+a-receive-headless.orrery.svc:10901".into());
        let eps = querier_endpoints(&g, &[&a, &b]);
        assert_eq!(
            eps,
            [
                "dns+a-receive-headless.orrery.svc:10901",
                "dns+b-receive-headless.orrery.svc:10901",
                "static.example:10901",
            ]
        );
        let d = querier_deployment(&g, &eps, "orrery:test");
        assert_eq!(d.metadata.name.as_deref(), Some("global-query"));
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("GlobalView", "uid-gv")
        );
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        let c = &spec.template.spec.unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("orrery:test"));
        assert_eq!(
            c.args.clone().unwrap(),
            [
                "query",
                "--http-address=0.0.0.0:10902",
                "--grpc-address=0.0.0.0:10901",
                "--endpoint=dns+a-receive-headless.orrery.svc:10901",
                "--endpoint=dns+b-receive-headless.orrery.svc:10901",
                "--endpoint=static.example:10901",
                "--query.replica-label=receive_replica",
                "--query.replica-label=prometheus_replica",
            ]
        );
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/-/ready")
        );
        let s = querier_service(&g);
        assert_eq!(s.metadata.name.as_deref(), Some("global-query"));
        assert_eq!(s.spec.unwrap().selector.unwrap(), selector_labels("global"));
        assert_eq!(
            querier_url("global", "orrery"),
            "http://global-query.orrery.svc:10902"
        );
    }

    #[test]
    fn sidecar_clusters_add_their_endpoint_and_the_replica_label() {
        let a = named("a", &[], "orrery");
        let mut g = gv();
        g.spec.replica_labels.clear();
        let mut side = g.spec.clusters[0].clone();
        side.name = "gotham".into();
        side.mode = ClusterMode::Sidecar;
        side.prometheus_ref = Some(PrometheusRef {
            name: "gotham".into(),
            namespace: None,
        });
        g.spec.clusters.push(side.clone());
        side.name = "far".into();
        side.sidecar = Some(crate::crd::SidecarSpec {
            endpoint: Some("far.example:10901".into()),
            ..Default::default()
        });
        g.spec.clusters.push(side);
        assert_eq!(
            querier_endpoints(&g, &[&a]),
            [
                "dns+a-receive-headless.orrery.svc:10901",
                "dns+gotham-orrery-sidecar.orrery.svc:10901",
                "far.example:10901",
                "static.example:10901",
            ]
        );
        assert_eq!(
            replica_labels(&g),
            ["receive_replica", "prometheus_replica"]
        );
        g.spec.clusters.truncate(1);
        assert_eq!(replica_labels(&g), ["receive_replica"]);
    }

    #[test]
    fn remote_write_url_choice() {
        let mut a = named("a", &[], "orrery");
        assert_eq!(
            cluster_remote_write_url(Some("http://x/api/v1/receive"), &[&a]).unwrap(),
            "http://x/api/v1/receive"
        );
        assert_eq!(
            cluster_remote_write_url(None, &[&a]).unwrap(),
            "http://a-receive.orrery.svc:19291/api/v1/receive"
        );
        a.status = Some(crate::crd::ReceiveClusterStatus {
            remote_write_url: Some("http://published/api/v1/receive".into()),
            ..Default::default()
        });
        assert_eq!(
            cluster_remote_write_url(Some(""), &[&a]).unwrap(),
            "http://published/api/v1/receive"
        );
        assert_eq!(cluster_remote_write_url(None, &[]), None);
    }

    #[test]
    fn sample_age_query_escapes() {
        assert_eq!(
            last_sample_age_query("bat\"cave"),
            "time() - max(timestamp(up{cluster=\"bat\\\"cave\"}))"
        );
    }

    /// D6: querier pods pass Pod Security "restricted" too.
    #[test]
    fn querier_pods_are_pod_security_restricted() {
        let dep = querier_deployment(&gv(), &[], "img");
        let pod = dep.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            pod.security_context.unwrap().seccomp_profile.unwrap().type_,
            "RuntimeDefault"
        );
        let csc = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(csc.capabilities.unwrap().drop.unwrap(), vec!["ALL"]);
        assert_eq!(csc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    }

    #[test]
    fn grpc_client_tls_verifies_each_receive_cluster_by_its_service_name() {
        use crate::crd::TlsSecretRef;
        let mut g = gv();
        g.spec.endpoints = vec![
            "static.example:10901".into(),
            "dns+stores.other.svc:10901".into(),
        ];
        g.spec.grpc_client_tls = Some(TlsSecretRef {
            secret_name: "querier-tls".into(),
        });
        let a = rc(1, 1);
        let eps = querier_endpoints(&g, &[&a]);
        let args = querier_args(&g, &eps);
        for want in [
            "--grpc-client-tls-secure",
            "--grpc-client-tls-cert=/etc/orrery/grpc-tls/tls.crt",
            "--grpc-client-tls-key=/etc/orrery/grpc-tls/tls.key",
            "--grpc-client-tls-ca=/etc/orrery/grpc-tls/ca.crt",
            "--endpoint=static.example:10901",
        ] {
            assert!(
                args.contains(&want.to_string()),
                "{want} missing from {args:?}"
            );
        }
        // dns+ names are not --endpoint flags (their pod IPs would be verified) but SD
        // entries verified as the Service name.
        assert!(
            !args.iter().any(|a| a.starts_with("--endpoint=dns+")),
            "{args:?}"
        );
        let sd = args
            .iter()
            .find_map(|a| a.strip_prefix("--endpoint.sd-config="))
            .expect("an SD config");
        let v: serde_json::Value = serde_json::from_str(sd).unwrap();
        let names: Vec<(&str, &str)> = v["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["address"].as_str().unwrap(),
                    e["client_config"]["server_name"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                (
                    "dns+main-receive-headless.orrery.svc:10901",
                    "main-receive-headless.orrery.svc"
                ),
                ("dns+stores.other.svc:10901", "stores.other.svc")
            ]
        );
        assert_eq!(
            v["endpoints"][0]["client_config"]["tls_config"]["cert_file"],
            "/etc/orrery/grpc-tls/tls.crt"
        );
        let d = querier_deployment(&g, &eps, "orrery:test");
        let pod = d.spec.unwrap().template.spec.unwrap();
        let vol = &pod.volumes.unwrap()[0];
        assert_eq!(
            vol.secret.as_ref().and_then(|s| s.secret_name.as_deref()),
            Some("querier-tls")
        );
        let m = &pod.containers[0].volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (m.name.as_str(), m.mount_path.as_str(), m.read_only),
            (vol.name.as_str(), "/etc/orrery/grpc-tls", Some(true))
        );
        assert!(
            m.sub_path.is_none(),
            "subPath mounts never see a renewed Secret"
        );
        // Without it: plain --endpoint flags, no volume.
        let plain = querier_args(&gv(), &eps);
        assert!(
            plain.contains(&"--endpoint=dns+main-receive-headless.orrery.svc:10901".to_string())
        );
        assert!(!plain.iter().any(|a| a.contains("tls")), "{plain:?}");
    }
}
