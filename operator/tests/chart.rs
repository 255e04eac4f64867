//! Checks on the Helm chart's RBAC template, read as text (there is no `helm` binary
//! here to render it): the operator's cluster-wide rights must not grow back.

use std::path::Path;

fn rbac() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/orrery/templates/rbac.yaml");
    std::fs::read_to_string(p).expect("charts/orrery/templates/rbac.yaml")
}

/// The ClusterRole document (everything before the first `---`).
fn cluster_role(text: &str) -> &str {
    let doc = text.split("\n---\n").next().unwrap_or_default();
    assert!(doc.contains("kind: ClusterRole\n"), "{doc}");
    doc
}

/// D16: no cluster-wide Secret access; Secrets are granted per namespace by a Role.
#[test]
fn no_cluster_wide_secret_rule() {
    let text = rbac();
    assert!(!cluster_role(&text).contains("secrets"));
    let roles: Vec<&str> = text
        .split("\n---\n")
        .filter(|d| d.contains("\"secrets\""))
        .collect();
    assert_eq!(roles.len(), 1);
    assert!(roles[0].contains("kind: Role\n"), "{}", roles[0]);
    assert!(text.contains("range .Values.rbac.remoteClusterSecretNamespaces"));
}

/// D16: `update` on ConfigMaps (editing users' prometheus.yml) only behind the
/// `rbac.prometheusTargets` switch, as values.yaml documents.
#[test]
fn configmap_update_only_with_prometheus_targets() {
    let text = rbac();
    let role = cluster_role(&text);
    let (always, gated) = role
        .split_once("{{- if .Values.rbac.prometheusTargets }}")
        .expect("the prometheusTargets block");
    let gated = gated.split("{{- end }}").next().unwrap_or_default();
    let configmap_rules = |s: &str| -> Vec<String> {
        s.split("  - apiGroups:")
            .filter(|r| r.contains("\"configmaps\""))
            .map(String::from)
            .collect()
    };
    for r in configmap_rules(always) {
        assert!(!r.contains("\"update\""), "ungated ConfigMap update: {r}");
    }
    assert!(
        configmap_rules(gated)
            .iter()
            .any(|r| r.contains("\"update\""))
    );
}
