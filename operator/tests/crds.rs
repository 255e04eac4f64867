//! The CRDs: checked-in YAML (crds/ and the Helm chart's crds/) equals the generated
//! YAML; every schema is structural; the CEL rules are present.
//!
//! Regenerate the files with `ORRERY_UPDATE_CRDS=1 cargo test -p operator --test crds`.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use operator::crd::{all_crds_yaml, crd_file_name, crd_yaml, crds};
use operator::schema_check::{cel_rules, preserve_unknown_paths, structural_problems};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

const DIRS: [&str; 2] = ["crds", "charts/orrery/crds"];

#[test]
fn checked_in_crds_match_generated() {
    let update = std::env::var("ORRERY_UPDATE_CRDS").is_ok_and(|v| v == "1");
    for crd in crds() {
        let file = crd_file_name(&crd);
        let want = crd_yaml(&crd).unwrap();
        for dir in DIRS {
            let path = root().join(dir).join(&file);
            if update {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &want).unwrap();
            }
            let got = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; generate it with ORRERY_UPDATE_CRDS=1 cargo test -p operator --test crds",
                    path.display()
                )
            });
            assert!(
                got == want,
                "{} drifted from the Rust types; regenerate with ORRERY_UPDATE_CRDS=1 cargo test -p operator --test crds",
                path.display()
            );
        }
    }
    let names: Vec<String> = crds().iter().map(crd_file_name).collect();
    assert_eq!(
        names,
        [
            "orrery.dev_receiveclusters.yaml",
            "orrery.dev_globalviews.yaml"
        ]
    );
}

#[test]
fn yaml_parses_back_to_the_same_crd() {
    for crd in crds() {
        let text = crd_yaml(&crd).unwrap();
        let back: CustomResourceDefinition = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(back, crd);
    }
    let all = all_crds_yaml().unwrap();
    assert_eq!(
        all.matches("kind: CustomResourceDefinition").count(),
        2,
        "{all}"
    );
}

fn schema(crd: &CustomResourceDefinition) -> serde_json::Value {
    assert_eq!(crd.spec.versions.len(), 1);
    let v = &crd.spec.versions[0];
    serde_json::to_value(
        v.schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema"),
    )
    .unwrap()
}

#[test]
fn every_schema_is_structural() {
    for crd in crds() {
        let s = schema(&crd);
        let problems = structural_problems(&s);
        assert!(
            problems.is_empty(),
            "{}: {problems:#?}",
            crd.spec.names.kind
        );
        // Nothing in our own types needs unknown fields preserved.
        assert_eq!(
            preserve_unknown_paths(&s),
            Vec::<String>::new(),
            "{}",
            crd.spec.names.kind
        );
    }
}

#[test]
fn shape_scope_status_columns_and_cel_rules() {
    let [rc, gv]: [CustomResourceDefinition; 2] = crds().try_into().unwrap();
    for crd in [&rc, &gv] {
        assert_eq!(crd.spec.group, "orrery.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage);
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let cols: Vec<&str> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(cols.contains(&"Ready") && cols.contains(&"Age"), "{cols:?}");
    }
    let rc_rules = cel_rules(&schema(&rc));
    assert!(
        rc_rules.contains(&(
            ".spec".to_string(),
            "self.replicas >= self.replicationFactor".to_string()
        )),
        "{rc_rules:?}"
    );
    let gv_rules = cel_rules(&schema(&gv));
    assert!(
        gv_rules.contains(&(
            ".spec.clusters[]".to_string(),
            "has(self.prometheusRef) != has(self.configMapRef)".to_string()
        )),
        "{gv_rules:?}"
    );
    let s = schema(&rc);
    assert_eq!(
        s.pointer("/properties/spec/properties/hashringAlgorithm/enum"),
        Some(&serde_json::json!(["ketama", "hashmod"]))
    );
    assert_eq!(
        s.pointer("/properties/spec/required"),
        Some(&serde_json::json!(["replicas"]))
    );
}

#[test]
fn kind_e2e_manifests_fit_the_types() {
    let text = std::fs::read_to_string(root().join("e2e/kind/manifests/orrery.yaml")).unwrap();
    let mut kinds = Vec::new();
    for doc in text.split("\n---\n") {
        let v: serde_json::Value = serde_saphyr::from_str(doc).unwrap();
        let kind = v["kind"].as_str().unwrap().to_string();
        match kind.as_str() {
            "ReceiveCluster" => {
                let rc: operator::crd::ReceiveCluster = serde_json::from_value(v).unwrap();
                // The CEL rule the apiserver enforces.
                assert!(rc.spec.replicas >= rc.spec.replication_factor);
            }
            "GlobalView" => {
                let gv: operator::crd::GlobalView = serde_json::from_value(v).unwrap();
                let names: Vec<&str> = gv.spec.clusters.iter().map(|c| c.name.as_str()).collect();
                assert_eq!(names, ["batcave", "batcomputer"]);
                assert!(
                    gv.spec
                        .clusters
                        .iter()
                        .all(|c| c.prometheus_ref.is_some() != c.config_map_ref.is_some())
                );
            }
            _ => {}
        }
        kinds.push(kind);
    }
    assert_eq!(kinds, ["Namespace", "ReceiveCluster", "GlobalView"]);
}

/// D12, D15, D17, D20: inputs the pods or the API server would refuse are refused by
/// the CRD (the rules are evaluated by the API server; here we check they are there).
#[test]
fn crds_refuse_inputs_the_pods_would_refuse() {
    let [rc, gv]: [CustomResourceDefinition; 2] = crds().try_into().unwrap();
    let rc_rules = cel_rules(&schema(&rc));
    let has = |rules: &[(String, String)], path: &str, needle: &str| {
        rules.iter().any(|(p, r)| p == path && r.contains(needle))
    };
    // D12: object names that fit every child name; label names; no newline in values.
    assert!(
        has(&rc_rules, "", "self.metadata.name.size() <= 44"),
        "{rc_rules:?}"
    );
    assert!(
        has(&rc_rules, ".spec.externalLabels", "k != 'receive_replica'"),
        "{rc_rules:?}"
    );
    assert!(
        has(
            &rc_rules,
            ".spec.externalLabels",
            "!self[k].contains('\\n')"
        ),
        "{rc_rules:?}"
    );
    let gv_rules = cel_rules(&schema(&gv));
    assert!(
        has(&gv_rules, "", "self.metadata.name.size() <= 50"),
        "{gv_rules:?}"
    );
    // D17: a remote cluster needs an explicit remoteWriteURL.
    assert!(
        has(&gv_rules, ".spec.clusters[]", "has(self.remoteWriteURL)"),
        "{gv_rules:?}"
    );
    let s = schema(&gv);
    // D15: cluster names are unique (list-map keyed by name).
    assert_eq!(
        s.pointer("/properties/spec/properties/clusters/x-kubernetes-list-type"),
        Some(&serde_json::json!("map"))
    );
    assert_eq!(
        s.pointer("/properties/spec/properties/clusters/x-kubernetes-list-map-keys"),
        Some(&serde_json::json!(["name"]))
    );
    // D20: reloadURL can only be a Prometheus reload endpoint.
    let pattern = s
        .pointer("/properties/spec/properties/clusters/items/properties/configMapRef/properties/reloadURL/pattern")
        .and_then(|p| p.as_str())
        .expect("reloadURL pattern");
    assert!(pattern.ends_with("/-/reload$"), "{pattern}");
    // D1: no kubeconfig field any more.
    assert!(
        s.pointer("/properties/spec/properties/clusters/items/properties/kubeconfigSecretRef")
            .is_none()
    );
}

/// D13: storage cannot be added or removed, nor its class changed, on an existing
/// ReceiveCluster (transition rules: the API server evaluates them on updates only, with
/// `oldSelf`; evaluating them needs an API server, here we check they are in place on the
/// right fields).
#[test]
fn crds_refuse_storage_changes_that_would_empty_the_volumes() {
    let [rc, _gv]: [CustomResourceDefinition; 2] = crds().try_into().unwrap();
    let rules = cel_rules(&schema(&rc));
    let has = |path: &str, needle: &str| rules.iter().any(|(p, r)| p == path && r.contains(needle));
    assert!(
        has(".spec", "has(oldSelf.storage) == has(self.storage)"),
        "{rules:?}"
    );
    assert!(
        has(".spec.storage", "oldSelf.storageClassName"),
        "{rules:?}"
    );
    // The new optional field is in the schema.
    assert!(
        schema(&rc)
            .pointer("/properties/spec/properties/emptyDirSizeLimit")
            .is_some()
    );
}
