//! Upserting and removing Orrery's remote_write entry in configuration we do not own:
//! a Prometheus Operator `Prometheus` object (`spec.remoteWrite`, camelCase) and a plain
//! `prometheus.yml` (`remote_write`, snake_case). Entries are found by their stable
//! `name`; every other entry and every other key is left exactly as it was.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::yaml::{self, Yaml};

/// Tenant header the receiver reads (Thanos's default).
pub const TENANT_HEADER: &str = "THANOS-TENANT";

/// The label naming the source cluster on every series sent.
pub const CLUSTER_LABEL: &str = "cluster";

/// Our remote_write entry for one registered cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteWriteEntry {
    /// Stable name, `orrery-<globalview>-<cluster>`.
    pub name: String,
    pub url: String,
    pub headers: BTreeMap<String, String>,
    /// Value of the `cluster` label added to every series by a write relabel rule.
    pub cluster: String,
}

/// Stable name of our entry for a GlobalView's cluster.
pub fn entry_name(global_view: &str, cluster: &str) -> String {
    format!("orrery-{global_view}-{cluster}")
}

impl RemoteWriteEntry {
    pub fn new(global_view: &str, cluster: &str, url: &str, tenant: Option<&str>) -> Self {
        let mut headers = BTreeMap::new();
        if let Some(t) = tenant.filter(|t| !t.is_empty()) {
            headers.insert(TENANT_HEADER.to_string(), t.to_string());
        }
        RemoteWriteEntry {
            name: entry_name(global_view, cluster),
            url: url.to_string(),
            headers,
            cluster: cluster.to_string(),
        }
    }

    /// The entry in Prometheus Operator's `RemoteWriteSpec` shape.
    pub fn to_prometheus_cr(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("url".into(), json!(self.url));
        if !self.headers.is_empty() {
            m.insert("headers".into(), json!(self.headers));
        }
        m.insert(
            "writeRelabelConfigs".into(),
            json!([{"targetLabel": CLUSTER_LABEL, "replacement": self.cluster, "action": "replace"}]),
        );
        Value::Object(m)
    }

    /// The entry in prometheus.yml's `remote_write` shape.
    pub fn to_prometheus_yml(&self) -> Yaml {
        let mut m = vec![
            (Yaml::str("name"), Yaml::str(&self.name)),
            (Yaml::str("url"), Yaml::str(&self.url)),
        ];
        if !self.headers.is_empty() {
            m.push((
                Yaml::str("headers"),
                Yaml::Map(
                    self.headers
                        .iter()
                        .map(|(k, v)| (Yaml::str(k), Yaml::str(v)))
                        .collect(),
                ),
            ));
        }
        m.push((
            Yaml::str("write_relabel_configs"),
            Yaml::Seq(vec![Yaml::Map(vec![
                (Yaml::str("target_label"), Yaml::str(CLUSTER_LABEL)),
                (Yaml::str("replacement"), Yaml::str(&self.cluster)),
                (Yaml::str("action"), Yaml::str("replace")),
            ])]),
        ));
        Yaml::Map(m)
    }
}

/// Errors editing a configuration.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("{what} is not an object/mapping")]
    NotAnObject { what: &'static str },
    #[error("{what} is not a list")]
    NotAList { what: &'static str },
    #[error("prometheus.yml is not valid YAML: {0}")]
    Parse(String),
    #[error("cannot render prometheus.yml: {0}")]
    Render(String),
}

/// Upserts `entry` into `spec.remoteWrite` of a Prometheus object (the whole object as
/// JSON). Returns whether anything changed.
pub fn upsert_prometheus_cr(obj: &mut Value, entry: &RemoteWriteEntry) -> Result<bool, EditError> {
    let list = remote_write_list_cr(obj, true)?.ok_or(EditError::NotAList {
        what: "spec.remoteWrite",
    })?;
    let desired = entry.to_prometheus_cr();
    match list
        .iter_mut()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(entry.name.as_str()))
    {
        Some(existing) if *existing == desired => Ok(false),
        Some(existing) => {
            *existing = desired;
            Ok(true)
        }
        None => {
            list.push(desired);
            Ok(true)
        }
    }
}

/// Removes the entry named `name` from `spec.remoteWrite`. Returns whether it was there.
pub fn remove_from_prometheus_cr(obj: &mut Value, name: &str) -> Result<bool, EditError> {
    let Some(list) = remote_write_list_cr(obj, false)? else {
        return Ok(false);
    };
    let before = list.len();
    list.retain(|e| e.get("name").and_then(Value::as_str) != Some(name));
    Ok(list.len() != before)
}

/// Whether `spec.remoteWrite` holds exactly our desired entry.
pub fn prometheus_cr_has(obj: &Value, entry: &RemoteWriteEntry) -> bool {
    let desired = entry.to_prometheus_cr();
    obj.pointer("/spec/remoteWrite")
        .and_then(Value::as_array)
        .is_some_and(|l| l.contains(&desired))
}

fn remote_write_list_cr(
    obj: &mut Value,
    create: bool,
) -> Result<Option<&mut Vec<Value>>, EditError> {
    let root = obj
        .as_object_mut()
        .ok_or(EditError::NotAnObject { what: "Prometheus" })?;
    if !root.contains_key("spec") {
        if !create {
            return Ok(None);
        }
        root.insert("spec".into(), json!({}));
    }
    let spec = root
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or(EditError::NotAnObject { what: "spec" })?;
    match spec.get("remoteWrite") {
        None | Some(Value::Null) => {
            if !create {
                return Ok(None);
            }
            spec.insert("remoteWrite".into(), json!([]));
        }
        Some(Value::Array(_)) => {}
        Some(_) => {
            return Err(EditError::NotAList {
                what: "spec.remoteWrite",
            });
        }
    }
    Ok(spec.get_mut("remoteWrite").and_then(Value::as_array_mut))
}

/// Upserts `entry` into the top-level `remote_write` list of a prometheus.yml.
/// Returns the new text, or `None` when the file already holds exactly our entry
/// (the file is then left byte-for-byte alone).
pub fn upsert_prometheus_yml(
    text: &str,
    entry: &RemoteWriteEntry,
) -> Result<Option<String>, EditError> {
    let mut doc = yaml::parse(text).map_err(|e| EditError::Parse(e.to_string()))?;
    if doc == Yaml::Null {
        doc = Yaml::Map(Vec::new());
    }
    if !matches!(doc, Yaml::Map(_)) {
        return Err(EditError::NotAnObject {
            what: "prometheus.yml",
        });
    }
    if matches!(doc.get("remote_write"), None | Some(Yaml::Null)) {
        doc.set("remote_write", Yaml::Seq(Vec::new()));
    }
    let Some(Yaml::Seq(list)) = doc.get_mut("remote_write") else {
        return Err(EditError::NotAList {
            what: "remote_write",
        });
    };
    let desired = entry.to_prometheus_yml();
    match list
        .iter_mut()
        .find(|e| e.get("name").and_then(Yaml::as_str) == Some(entry.name.as_str()))
    {
        Some(existing) if *existing == desired => return Ok(None),
        Some(existing) => *existing = desired,
        None => list.push(desired),
    }
    yaml::render(&doc)
        .map(Some)
        .map_err(|e| EditError::Render(e.to_string()))
}

/// Removes the `remote_write` entry named `name`; drops an emptied `remote_write` key.
/// Returns the new text, or `None` when there was no such entry.
pub fn remove_from_prometheus_yml(text: &str, name: &str) -> Result<Option<String>, EditError> {
    let mut doc = yaml::parse(text).map_err(|e| EditError::Parse(e.to_string()))?;
    let Some(Yaml::Seq(list)) = doc.get_mut("remote_write") else {
        return Ok(None);
    };
    let before = list.len();
    list.retain(|e| e.get("name").and_then(Yaml::as_str) != Some(name));
    if list.len() == before {
        return Ok(None);
    }
    if list.is_empty() {
        doc.remove("remote_write");
    }
    yaml::render(&doc)
        .map(Some)
        .map_err(|e| EditError::Render(e.to_string()))
}

/// Whether a prometheus.yml holds exactly our desired entry.
pub fn prometheus_yml_has(text: &str, entry: &RemoteWriteEntry) -> bool {
    let Ok(doc) = yaml::parse(text) else {
        return false;
    };
    let desired = entry.to_prometheus_yml();
    matches!(doc.get("remote_write"), Some(Yaml::Seq(l)) if l.contains(&desired))
}

/// Upserts our entry into a prometheus.yml on disk; returns whether the file changed.
pub fn upsert_file(
    path: &std::path::Path,
    entry: &RemoteWriteEntry,
) -> Result<bool, FileEditError> {
    let text = std::fs::read_to_string(path)?;
    match upsert_prometheus_yml(&text, entry)? {
        Some(new) => {
            std::fs::write(path, new)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Removes our entry from a prometheus.yml on disk; returns whether the file changed.
pub fn remove_from_file(path: &std::path::Path, name: &str) -> Result<bool, FileEditError> {
    let text = std::fs::read_to_string(path)?;
    match remove_from_prometheus_yml(&text, name)? {
        Some(new) => {
            std::fs::write(path, new)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Errors editing a prometheus.yml file.
#[derive(Debug, thiserror::Error)]
pub enum FileEditError {
    #[error("prometheus.yml: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Edit(#[from] EditError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> RemoteWriteEntry {
        RemoteWriteEntry::new(
            "global",
            "batcave",
            "http://rc.orrery.svc:19291/api/v1/receive",
            Some("team-a"),
        )
    }

    fn prom_cr() -> Value {
        json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "Prometheus",
            "metadata": {"name": "batcave", "namespace": "monitoring", "resourceVersion": "42"},
            "spec": {
                "replicas": 2,
                "remoteWrite": [
                    {"name": "user-a", "url": "http://elsewhere/api/v1/write", "queueConfig": {"maxShards": 3}},
                    {"url": "http://unnamed/write"}
                ]
            }
        })
    }

    #[test]
    fn entry_name_is_stable() {
        assert_eq!(entry_name("gv", "batcave"), "orrery-gv-batcave");
        assert_eq!(entry().name, "orrery-global-batcave");
    }

    #[test]
    fn cr_upsert_adds_once_and_keeps_user_entries() {
        let mut obj = prom_cr();
        let user_entries = obj["spec"]["remoteWrite"].clone();
        assert!(upsert_prometheus_cr(&mut obj, &entry()).unwrap());
        let list = obj["spec"]["remoteWrite"].as_array().unwrap().clone();
        assert_eq!(list.len(), 3);
        assert_eq!(&list[..2], user_entries.as_array().unwrap().as_slice());
        assert_eq!(list[2]["name"], "orrery-global-batcave");
        assert_eq!(list[2]["url"], "http://rc.orrery.svc:19291/api/v1/receive");
        assert_eq!(list[2]["headers"]["THANOS-TENANT"], "team-a");
        assert_eq!(list[2]["writeRelabelConfigs"][0]["targetLabel"], "cluster");
        assert_eq!(list[2]["writeRelabelConfigs"][0]["replacement"], "batcave");
        assert!(prometheus_cr_has(&obj, &entry()));
        // Idempotent.
        let snapshot = obj.clone();
        assert!(!upsert_prometheus_cr(&mut obj, &entry()).unwrap());
        assert_eq!(obj, snapshot);
        // Everything but remoteWrite untouched.
        assert_eq!(obj["spec"]["replicas"], 2);
        assert_eq!(obj["metadata"]["resourceVersion"], "42");
    }

    #[test]
    fn cr_upsert_updates_changed_url_in_place() {
        let mut obj = prom_cr();
        upsert_prometheus_cr(&mut obj, &entry()).unwrap();
        let mut e2 = entry();
        e2.url = "http://other:19291/api/v1/receive".into();
        assert!(upsert_prometheus_cr(&mut obj, &e2).unwrap());
        let list = obj["spec"]["remoteWrite"].as_array().unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[2]["url"], "http://other:19291/api/v1/receive");
        assert!(!prometheus_cr_has(&obj, &entry()));
    }

    #[test]
    fn cr_upsert_creates_missing_list_and_spec() {
        let mut obj = json!({"metadata": {"name": "p"}});
        assert!(upsert_prometheus_cr(&mut obj, &entry()).unwrap());
        assert_eq!(obj["spec"]["remoteWrite"].as_array().unwrap().len(), 1);
        let mut obj = json!({"spec": {"remoteWrite": null}});
        assert!(upsert_prometheus_cr(&mut obj, &entry()).unwrap());
        let mut bad = json!({"spec": {"remoteWrite": "x"}});
        assert!(upsert_prometheus_cr(&mut bad, &entry()).is_err());
    }

    #[test]
    fn cr_remove_only_ours() {
        let mut obj = prom_cr();
        let original = obj.clone();
        upsert_prometheus_cr(&mut obj, &entry()).unwrap();
        assert!(remove_from_prometheus_cr(&mut obj, &entry().name).unwrap());
        assert_eq!(obj, original);
        assert!(!remove_from_prometheus_cr(&mut obj, &entry().name).unwrap());
        let mut none = json!({"spec": {}});
        assert!(!remove_from_prometheus_cr(&mut none, "x").unwrap());
        assert_eq!(none, json!({"spec": {}}));
    }

    const YML: &str = "# my config\nglobal:\n  scrape_interval: 5s\n  external_labels:\n    region: eu\nscrape_configs:\n  - job_name: prometheus\n    static_configs:\n      - targets: ['127.0.0.1:9090']\n    relabel_configs:\n      - source_labels: [__address__]\n        regex: '(.*):\\d+'\n        replacement: '$1'\n        target_label: host\nremote_write:\n  - name: user-sink\n    url: http://sink:9201/write\n    queue_config:\n      max_shards: 2\n";

    #[test]
    fn yml_upsert_keeps_user_config() {
        let out = upsert_prometheus_yml(YML, &entry()).unwrap().unwrap();
        let before = yaml::parse(YML).unwrap();
        let after = yaml::parse(&out).unwrap();
        for key in ["global", "scrape_configs"] {
            assert_eq!(before.get(key), after.get(key), "{key} changed:\n{out}");
        }
        let Some(Yaml::Seq(list)) = after.get("remote_write") else {
            panic!("no remote_write in\n{out}")
        };
        assert_eq!(list.len(), 2);
        assert_eq!(
            Some(&list[0]),
            match before.get("remote_write") {
                Some(Yaml::Seq(l)) => l.first(),
                _ => None,
            }
        );
        assert_eq!(
            list[1].get("name"),
            Some(&Yaml::str("orrery-global-batcave"))
        );
        assert_eq!(
            list[1].get("headers").and_then(|h| h.get("THANOS-TENANT")),
            Some(&Yaml::str("team-a"))
        );
        assert!(prometheus_yml_has(&out, &entry()));
        // Idempotent: the second upsert changes nothing.
        assert_eq!(upsert_prometheus_yml(&out, &entry()).unwrap(), None);
    }

    #[test]
    fn yml_upsert_into_config_without_remote_write_then_remove() {
        let text = "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: self\n    static_configs:\n      - targets: ['127.0.0.1:9090']\n";
        let out = upsert_prometheus_yml(text, &entry()).unwrap().unwrap();
        assert!(prometheus_yml_has(&out, &entry()));
        let back = remove_from_prometheus_yml(&out, &entry().name)
            .unwrap()
            .unwrap();
        assert_eq!(yaml::parse(&back).unwrap(), yaml::parse(text).unwrap());
        assert!(!back.contains("remote_write"), "{back}");
        assert_eq!(
            remove_from_prometheus_yml(&back, &entry().name).unwrap(),
            None
        );
    }

    #[test]
    fn yml_remove_keeps_user_entries() {
        let out = upsert_prometheus_yml(YML, &entry()).unwrap().unwrap();
        let back = remove_from_prometheus_yml(&out, &entry().name)
            .unwrap()
            .unwrap();
        assert_eq!(yaml::parse(&back).unwrap(), yaml::parse(YML).unwrap());
    }

    #[test]
    fn yml_upsert_empty_file_and_errors() {
        let out = upsert_prometheus_yml("", &entry()).unwrap().unwrap();
        assert!(prometheus_yml_has(&out, &entry()));
        assert!(upsert_prometheus_yml("- a\n- b\n", &entry()).is_err());
        assert!(upsert_prometheus_yml("remote_write: 3\n", &entry()).is_err());
        assert!(upsert_prometheus_yml("a: [\n", &entry()).is_err());
    }

    #[test]
    fn file_edit_round_trip() {
        let dir = std::env::temp_dir().join(format!("orrery-op-rw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("prometheus.yml");
        std::fs::write(&p, YML).unwrap();
        assert!(upsert_file(&p, &entry()).unwrap());
        assert!(!upsert_file(&p, &entry()).unwrap());
        assert!(remove_from_file(&p, &entry().name).unwrap());
        assert!(!remove_from_file(&p, &entry().name).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
