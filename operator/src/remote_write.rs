//! Upserting and removing Orrery's remote_write entry in configuration we do not own:
//! a Prometheus Operator `Prometheus` object (`spec.remoteWrite`, camelCase) and a plain
//! `prometheus.yml` (`remote_write`, snake_case). Entries are found by their stable
//! `name`; every other entry and every other key is left exactly as it was.

use std::collections::BTreeMap;
use std::ops::Range;

use serde_json::{Map, Value, json};

use crate::yaml::{self, Yaml};
use crate::yml_text;

/// Tenant header the receiver reads (Thanos's default).
pub const TENANT_HEADER: &str = "THANOS-TENANT";

/// The label naming the source cluster on every series sent.
pub const CLUSTER_LABEL: &str = "cluster";

/// Who an entry belongs to: the stable name it is found by, plus the name that
/// operator versions before namespaced names wrote (recognised and migrated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryId {
    /// `orrery-<namespace>.<globalview>.<cluster>`.
    pub name: String,
    /// `orrery-<globalview>-<cluster>`: not unique across namespaces, and `-` may sit
    /// inside either part, so an entry with this name is only taken as ours when it
    /// does not label its series with another cluster.
    pub legacy_name: String,
    pub cluster: String,
}

impl EntryId {
    pub fn new(namespace: &str, global_view: &str, cluster: &str) -> Self {
        EntryId {
            name: entry_name(namespace, global_view, cluster),
            legacy_name: legacy_entry_name(global_view, cluster),
            cluster: cluster.to_string(),
        }
    }

    /// Whether a prometheus.yml list item is ours (current or legacy name).
    fn matches_yml(&self, item: &Yaml) -> bool {
        match item.get("name").and_then(Yaml::as_str) {
            Some(n) if n == self.name => true,
            Some(n) if n == self.legacy_name => {
                let relabels = match item.get("write_relabel_configs") {
                    Some(Yaml::Seq(l)) => l.as_slice(),
                    _ => &[],
                };
                !relabels.iter().any(|r| {
                    r.get("target_label").and_then(Yaml::as_str) == Some(CLUSTER_LABEL)
                        && r.get("replacement").and_then(Yaml::as_str) != Some(&self.cluster)
                })
            }
            _ => false,
        }
    }

    /// Whether a `spec.remoteWrite` item of a Prometheus object is ours.
    fn matches_cr(&self, item: &Value) -> bool {
        match item.get("name").and_then(Value::as_str) {
            Some(n) if n == self.name => true,
            Some(n) if n == self.legacy_name => {
                let relabels = item
                    .get("writeRelabelConfigs")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                !relabels.iter().any(|r| {
                    r.get("targetLabel").and_then(Value::as_str) == Some(CLUSTER_LABEL)
                        && r.get("replacement").and_then(Value::as_str)
                            != Some(self.cluster.as_str())
                })
            }
            _ => false,
        }
    }
}

/// Our remote_write entry for one registered cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteWriteEntry {
    /// Stable name, `orrery-<namespace>.<globalview>.<cluster>`.
    pub name: String,
    pub url: String,
    pub headers: BTreeMap<String, String>,
    /// Value of the `cluster` label added to every series by a write relabel rule.
    pub cluster: String,
    /// The GlobalView's namespace and name (for [`Self::id`]).
    pub namespace: String,
    pub global_view: String,
}

/// Stable name of our entry for a GlobalView's cluster. The namespace is part of it:
/// two same-named GlobalViews in different namespaces may register the same target.
/// `.` cannot occur in a namespace, a GlobalView name or a cluster name (the CRD
/// restricts the latter two to `[-a-z0-9]`), so the name is unambiguous.
pub fn entry_name(namespace: &str, global_view: &str, cluster: &str) -> String {
    format!("orrery-{namespace}.{global_view}.{cluster}")
}

/// The name operator versions before namespaced names gave an entry.
pub fn legacy_entry_name(global_view: &str, cluster: &str) -> String {
    format!("orrery-{global_view}-{cluster}")
}

impl RemoteWriteEntry {
    pub fn new(
        namespace: &str,
        global_view: &str,
        cluster: &str,
        url: &str,
        tenant: Option<&str>,
    ) -> Self {
        let mut headers = BTreeMap::new();
        if let Some(t) = tenant.filter(|t| !t.is_empty()) {
            headers.insert(TENANT_HEADER.to_string(), t.to_string());
        }
        RemoteWriteEntry {
            name: entry_name(namespace, global_view, cluster),
            url: url.to_string(),
            headers,
            cluster: cluster.to_string(),
            namespace: namespace.to_string(),
            global_view: global_view.to_string(),
        }
    }

    pub fn id(&self) -> EntryId {
        EntryId::new(&self.namespace, &self.global_view, &self.cluster)
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

    /// The entry as block-list item text at column `indent`, lines joined by `eol`,
    /// without a final line break. Every string is double-quoted (JSON string syntax
    /// is valid YAML), so no value is ever re-read as a number, boolean or null.
    pub fn block_text(&self, indent: usize, eol: &str) -> String {
        let pad = " ".repeat(indent);
        let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
        let mut out = vec![
            format!("{pad}- name: {}", q(&self.name)),
            format!("{pad}  url: {}", q(&self.url)),
        ];
        if !self.headers.is_empty() {
            out.push(format!("{pad}  headers:"));
            for (k, v) in &self.headers {
                out.push(format!("{pad}    {}: {}", q(k), q(v)));
            }
        }
        out.push(format!("{pad}  write_relabel_configs:"));
        out.push(format!("{pad}    - target_label: {}", q(CLUSTER_LABEL)));
        out.push(format!("{pad}      replacement: {}", q(&self.cluster)));
        out.push(format!("{pad}      action: \"replace\""));
        out.join(eol)
    }

    /// The entry as one flow mapping (for a `remote_write: [...]` list).
    pub fn flow_text(&self) -> String {
        let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
        let mut parts = vec![
            format!("name: {}", q(&self.name)),
            format!("url: {}", q(&self.url)),
        ];
        if !self.headers.is_empty() {
            let h: Vec<String> = self
                .headers
                .iter()
                .map(|(k, v)| format!("{}: {}", q(k), q(v)))
                .collect();
            parts.push(format!("headers: {{{}}}", h.join(", ")));
        }
        parts.push(format!(
            "write_relabel_configs: [{{target_label: {}, replacement: {}, action: \"replace\"}}]",
            q(CLUSTER_LABEL),
            q(&self.cluster)
        ));
        format!("{{{}}}", parts.join(", "))
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
    /// The file's shape is one the byte-preserving editor does not handle; it is left
    /// alone rather than rewritten.
    #[error("prometheus.yml left unchanged, it cannot be edited safely: {0}")]
    Unsupported(String),
}

/// Upserts `entry` into `spec.remoteWrite` of a Prometheus object (the whole object as
/// JSON), replacing an entry of ours under the legacy name in place. Returns whether
/// anything changed.
pub fn upsert_prometheus_cr(obj: &mut Value, entry: &RemoteWriteEntry) -> Result<bool, EditError> {
    let list = remote_write_list_cr(obj, true)?.ok_or(EditError::NotAList {
        what: "spec.remoteWrite",
    })?;
    let id = entry.id();
    let desired = entry.to_prometheus_cr();
    let ours: Vec<usize> = (0..list.len())
        .filter(|&i| id.matches_cr(&list[i]))
        .collect();
    match ours.as_slice() {
        [] => {
            list.push(desired);
            Ok(true)
        }
        [i] if list[*i] == desired => Ok(false),
        [first, rest @ ..] => {
            list[*first] = desired;
            for i in rest.iter().rev() {
                list.remove(*i);
            }
            Ok(true)
        }
    }
}

/// Removes our entry (current or legacy name) from `spec.remoteWrite`. Returns whether
/// it was there.
pub fn remove_from_prometheus_cr(obj: &mut Value, id: &EntryId) -> Result<bool, EditError> {
    let Some(list) = remote_write_list_cr(obj, false)? else {
        return Ok(false);
    };
    let before = list.len();
    list.retain(|e| !id.matches_cr(e));
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

/// The parsed file and its top-level `remote_write` list (None: absent or null).
fn parse_yml(text: &str) -> Result<(Yaml, Option<Vec<Yaml>>), EditError> {
    let doc = yaml::parse(text).map_err(|e| EditError::Parse(e.to_string()))?;
    let list = match &doc {
        Yaml::Null => None,
        Yaml::Map(_) => match doc.get("remote_write") {
            None | Some(Yaml::Null) => None,
            Some(Yaml::Seq(l)) => Some(l.clone()),
            Some(_) => {
                return Err(EditError::NotAList {
                    what: "remote_write",
                });
            }
        },
        _ => {
            return Err(EditError::NotAnObject {
                what: "prometheus.yml",
            });
        }
    };
    Ok((doc, list))
}

/// `doc` with its top-level `remote_write` set to `value` (None: key removed).
fn with_remote_write(doc: &Yaml, value: Option<Yaml>) -> Yaml {
    let mut d = match doc {
        Yaml::Map(_) => doc.clone(),
        _ => Yaml::Map(Vec::new()),
    };
    match value {
        Some(v) => d.set("remote_write", v),
        None => {
            d.remove("remote_write");
        }
    }
    d
}

/// Byte edits, applied back to front.
fn apply_edits(text: &str, mut edits: Vec<(Range<usize>, String)>) -> String {
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = text.to_string();
    for (r, s) in edits {
        out.replace_range(r, &s);
    }
    out
}

/// Accepts an edited text only when it parses to exactly the intended configuration:
/// the last line of defence against a shape the scanner misjudged.
fn verified(new: String, expected: &Yaml) -> Result<String, EditError> {
    let got = yaml::parse(&new)
        .map_err(|e| EditError::Unsupported(format!("the edited file would not parse ({e})")))?;
    let empty = |y: &Yaml| matches!(y, Yaml::Null) || matches!(y, Yaml::Map(m) if m.is_empty());
    if got == *expected || (empty(&got) && empty(expected)) {
        Ok(new)
    } else {
        Err(EditError::Unsupported(
            "the edited file would not read back as the intended configuration".into(),
        ))
    }
}

fn unsupported(u: yml_text::Unsupported) -> EditError {
    EditError::Unsupported(u.0)
}

/// Upserts `entry` into the top-level `remote_write` list of a prometheus.yml, editing
/// the text: only our own list item is inserted or replaced (an entry of ours under
/// the legacy name is replaced in place), every other byte stays as it was. A missing
/// `remote_write` key is added at the end of the file, marked so that removing the
/// entry removes the key as well. Returns the new text, or `None` when the file already
/// holds exactly our entry. Shapes that cannot be edited safely are refused with
/// [`EditError::Unsupported`].
pub fn upsert_prometheus_yml(
    text: &str,
    entry: &RemoteWriteEntry,
) -> Result<Option<String>, EditError> {
    let (doc, list) = parse_yml(text)?;
    let id = entry.id();
    let desired = entry.to_prometheus_yml();
    let current = list.clone().unwrap_or_default();
    let ours: Vec<usize> = (0..current.len())
        .filter(|&i| id.matches_yml(&current[i]))
        .collect();
    if let [i] = ours.as_slice()
        && current[*i] == desired
    {
        return Ok(None);
    }
    let mut expected_list = current.clone();
    match ours.as_slice() {
        [] => expected_list.push(desired.clone()),
        [first, rest @ ..] => {
            expected_list[*first] = desired.clone();
            for i in rest.iter().rev() {
                expected_list.remove(*i);
            }
        }
    }
    let eol = yml_text::line_break(text);
    let lines = yml_text::lines(text);
    let layout = yml_text::locate(text, &lines).map_err(unsupported)?;
    let mut edits = Vec::new();
    match layout {
        yml_text::Layout::Absent => {
            if list.is_some() || doc.get("remote_write").is_some() {
                return Err(EditError::Unsupported(
                    "remote_write is not written as a plain top-level key".into(),
                ));
            }
            let block = format!(
                "remote_write: {}{eol}{}",
                yml_text::CREATED_MARKER,
                entry.block_text(2, eol)
            );
            match lines.last() {
                None => edits.push((0..text.len(), format!("{block}{eol}"))),
                Some(l) => edits.push((l.end..l.end, format!("{eol}{block}"))),
            }
        }
        yml_text::Layout::Block {
            key_line,
            indent,
            items,
            ..
        } => {
            if items.len() != current.len() {
                return Err(EditError::Unsupported(format!(
                    "remote_write has {} entries but {} list items were found in the text",
                    current.len(),
                    items.len()
                )));
            }
            let k = indent.unwrap_or(2);
            match ours.as_slice() {
                [] => {
                    let at = items
                        .last()
                        .map(|it| it.bytes.end)
                        .unwrap_or(lines[key_line].end);
                    edits.push((at..at, format!("{eol}{}", entry.block_text(k, eol))));
                }
                [first, rest @ ..] => {
                    edits.push((items[*first].bytes.clone(), entry.block_text(k, eol)));
                    for &i in rest {
                        let it = &items[i];
                        edits.push((lines[it.first_line - 1].end..it.bytes.end, String::new()));
                    }
                }
            }
        }
        yml_text::Layout::Flow { brackets } => {
            if current.len() > usize::from(!ours.is_empty()) || ours.len() > 1 {
                return Err(EditError::Unsupported(
                    "remote_write is a one-line flow list holding other entries; write it as a \
                     block list (one `- ` item per entry) to let the operator add its own"
                        .into(),
                ));
            }
            edits.push((brackets, format!("[{}]", entry.flow_text())));
        }
    }
    let new = apply_edits(text, edits);
    verified(
        new,
        &with_remote_write(&doc, Some(Yaml::Seq(expected_list))),
    )
    .map(Some)
}

/// Removes our `remote_write` entry (current or legacy name) from the text, leaving
/// every other byte: the item's lines go, comments and other entries stay. A key the
/// operator added goes with its last entry, so add → remove returns the original bytes.
/// Returns the new text, or `None` when there was no such entry.
pub fn remove_from_prometheus_yml(text: &str, id: &EntryId) -> Result<Option<String>, EditError> {
    let (doc, list) = parse_yml(text)?;
    let Some(current) = list else {
        return Ok(None);
    };
    let ours: Vec<usize> = (0..current.len())
        .filter(|&i| id.matches_yml(&current[i]))
        .collect();
    if ours.is_empty() {
        return Ok(None);
    }
    let remaining: Vec<Yaml> = current
        .iter()
        .enumerate()
        .filter(|(i, _)| !ours.contains(i))
        .map(|(_, y)| y.clone())
        .collect();
    let lines = yml_text::lines(text);
    let layout = yml_text::locate(text, &lines).map_err(unsupported)?;
    let mut edits = Vec::new();
    let expected = match layout {
        yml_text::Layout::Absent => {
            return Err(EditError::Unsupported(
                "remote_write is not written as a plain top-level key".into(),
            ));
        }
        yml_text::Layout::Block {
            key_line,
            created_by_us,
            items,
            ..
        } => {
            if items.len() != current.len() {
                return Err(EditError::Unsupported(format!(
                    "remote_write has {} entries but {} list items were found in the text",
                    current.len(),
                    items.len()
                )));
            }
            if remaining.is_empty() && created_by_us {
                // The whole key block we added, with the line break before it (or,
                // at the start of the file, the one after it).
                let end = items.iter().map(|it| it.bytes.end).max().unwrap_or(0);
                let range = if key_line > 0 {
                    lines[key_line - 1].end..end
                } else {
                    let after = lines
                        .iter()
                        .find(|l| l.end == end)
                        .map(|l| l.next)
                        .unwrap_or(end);
                    0..after
                };
                edits.push((range, String::new()));
                with_remote_write(&doc, None)
            } else {
                for &i in &ours {
                    let it = &items[i];
                    edits.push((lines[it.first_line - 1].end..it.bytes.end, String::new()));
                }
                with_remote_write(
                    &doc,
                    Some(if remaining.is_empty() {
                        Yaml::Null
                    } else {
                        Yaml::Seq(remaining)
                    }),
                )
            }
        }
        yml_text::Layout::Flow { brackets } => {
            if !remaining.is_empty() {
                return Err(EditError::Unsupported(
                    "remote_write is a one-line flow list holding other entries too".into(),
                ));
            }
            edits.push((brackets, "[]".to_string()));
            with_remote_write(&doc, Some(Yaml::Seq(Vec::new())))
        }
    };
    verified(apply_edits(text, edits), &expected).map(Some)
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
pub fn remove_from_file(path: &std::path::Path, id: &EntryId) -> Result<bool, FileEditError> {
    let text = std::fs::read_to_string(path)?;
    match remove_from_prometheus_yml(&text, id)? {
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
            "orrery",
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
        assert_eq!(entry_name("ns", "gv", "batcave"), "orrery-ns.gv.batcave");
        assert_eq!(entry().name, "orrery-orrery.global.batcave");
        assert_eq!(entry().id().legacy_name, "orrery-global-batcave");
    }

    #[test]
    fn cr_upsert_adds_once_and_keeps_user_entries() {
        let mut obj = prom_cr();
        let user_entries = obj["spec"]["remoteWrite"].clone();
        assert!(upsert_prometheus_cr(&mut obj, &entry()).unwrap());
        let list = obj["spec"]["remoteWrite"].as_array().unwrap().clone();
        assert_eq!(list.len(), 3);
        assert_eq!(&list[..2], user_entries.as_array().unwrap().as_slice());
        assert_eq!(list[2]["name"], "orrery-orrery.global.batcave");
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
        assert!(remove_from_prometheus_cr(&mut obj, &entry().id()).unwrap());
        assert_eq!(obj, original);
        assert!(!remove_from_prometheus_cr(&mut obj, &entry().id()).unwrap());
        let mut none = json!({"spec": {}});
        assert!(!remove_from_prometheus_cr(&mut none, &EntryId::new("a", "b", "x")).unwrap());
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
            Some(&Yaml::str("orrery-orrery.global.batcave"))
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
        let back = remove_from_prometheus_yml(&out, &entry().id())
            .unwrap()
            .unwrap();
        assert_eq!(yaml::parse(&back).unwrap(), yaml::parse(text).unwrap());
        assert!(!back.contains("remote_write"), "{back}");
        assert_eq!(
            remove_from_prometheus_yml(&back, &entry().id()).unwrap(),
            None
        );
    }

    #[test]
    fn yml_remove_keeps_user_entries() {
        let out = upsert_prometheus_yml(YML, &entry()).unwrap().unwrap();
        let back = remove_from_prometheus_yml(&out, &entry().id())
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
        assert!(remove_from_file(&p, &entry().id()).unwrap());
        assert!(!remove_from_file(&p, &entry().id()).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Lengths of the common prefix and (non-overlapping) common suffix of two texts.
    fn common(a: &str, b: &str) -> (usize, usize) {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        let p = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        let max = a.len().min(b.len()) - p;
        let s = a
            .iter()
            .rev()
            .zip(b.iter().rev())
            .take(max)
            .take_while(|(x, y)| x == y)
            .count();
        (p, s)
    }

    /// add → update → remove on `original`: every byte outside our entry is kept at
    /// each step, the update touches only the bytes the add inserted, and the removal
    /// gives back the original bytes exactly.
    fn assert_round_trip(original: &str) {
        let e1 = entry();
        let mut e2 = entry();
        e2.url = "http://moved.orrery.svc:19291/api/v1/receive".into();
        e2.headers.clear();
        let before = yaml::parse(original).unwrap();

        let added = upsert_prometheus_yml(original, &e1)
            .unwrap_or_else(|e| panic!("add failed: {e}\n{original}"))
            .expect("add changed nothing");
        let (p, s) = common(original, &added);
        assert_eq!(
            p + s,
            original.len(),
            "bytes outside the entry changed:\n--- before\n{original}\n--- after\n{added}"
        );
        let inserted = &added[p..added.len() - s];
        assert!(inserted.contains(&e1.name), "{inserted:?}");
        assert!(prometheus_yml_has(&added, &e1), "{added}");
        assert_eq!(upsert_prometheus_yml(&added, &e1).unwrap(), None, "{added}");
        // Everything but remote_write reads back the same.
        let after = yaml::parse(&added).unwrap();
        if let Yaml::Map(m) = &before {
            for (k, v) in m {
                if k.as_str() != Some("remote_write") {
                    assert_eq!(after.get(k.as_str().unwrap()), Some(v));
                }
            }
        }

        let updated = upsert_prometheus_yml(&added, &e2).unwrap().expect("update");
        let (p2, s2) = common(&added, &updated);
        assert!(
            p2 >= p && s2 >= s,
            "the update touched bytes outside our entry:\n{added}\n---\n{updated}"
        );
        assert!(prometheus_yml_has(&updated, &e2) && !prometheus_yml_has(&updated, &e1));
        assert_eq!(upsert_prometheus_yml(&updated, &e2).unwrap(), None);

        let removed = remove_from_prometheus_yml(&updated, &e2.id())
            .unwrap()
            .expect("remove");
        assert_eq!(
            removed, original,
            "removal did not restore the original bytes"
        );
        assert_eq!(
            remove_from_prometheus_yml(&removed, &e2.id()).unwrap(),
            None
        );
    }

    /// The review's D10 case: comments, an anchor with an alias, spellings that a
    /// re-render would change (`1.10`, `on`, `yes`, `0o17`, `~`), quoting styles, flow
    /// collections, a block scalar, user entries before, comments after.
    const REAL_WORLD: &str = "# my config — managed by team A\n\
global:\n  scrape_interval: 15s   # keep in sync with the dashboard\n  external_labels: {v: 1.10, on_call: on, zone: 'eu-1', 'quoted': \"x\"}\n\
x-common: &common\n  honor_labels: yes\n  sample_limit: 0o17\n\
scrape_configs:\n  - job_name: prometheus\n    <<: *common\n    static_configs:\n      - targets: ['127.0.0.1:9090']\n    relabel_configs:\n      - source_labels: [__address__]\n        regex: '(.*):\\d+'\n        replacement: $1\n        target_label: host\n  - job_name: script\n    metric_relabel_configs:\n      - regex: |\n          multi\n          line\n        action: drop\n\n\
remote_write:   # sinks\n  - name: user-sink\n    url: http://sink:9201/write\n    queue_config: {max_shards: 2}\n  - {url: 'http://flow:1/w'}\n  # - url: http://disabled/w\n\n\
# alerting after remote_write\nalerting:\n  alertmanagers: []\n";

    #[test]
    fn yml_edits_keep_every_other_byte() {
        for original in [
            REAL_WORLD,
            YML,
            // No remote_write key, with and without a final line break.
            "global:\n  scrape_interval: 1s\n",
            "global:\n  scrape_interval: 1s",
            "global:\n  scrape_interval: 1s\n\n# trailing comment\n",
            // Empty and comment-only files.
            "",
            "# nothing yet\n",
            // Empty lists.
            "remote_write: []\nglobal: {}\n",
            "remote_write: [] # none yet\n",
            "global: {}\nremote_write:\n# - url: http://old/w\nrule_files: []\n",
            // Items at the key's column (what a re-render writes), keys after.
            "remote_write:\n- name: a\n  url: http://a/w\nscrape_configs:\n- job_name: x\n",
            // CRLF line breaks.
            "global:\r\n  scrape_interval: 1s\r\nremote_write:\r\n  - url: http://a/w\r\n",
            "global:\r\n  scrape_interval: 1s\r\n",
            // Document start marker, quoted key, deep items.
            "---\n\"remote_write\":\n    -   url: http://a/w\n        name: a\nglobal: {}\n",
        ] {
            assert_round_trip(original);
        }
    }

    #[test]
    fn yml_edit_into_real_world_file_appends_after_the_users_entries() {
        let out = upsert_prometheus_yml(REAL_WORLD, &entry())
            .unwrap()
            .unwrap();
        let marker = "queue_config: {max_shards: 2}\n  - {url: 'http://flow:1/w'}\n  - name: \"orrery-orrery.global.batcave\"\n";
        assert!(out.contains(marker), "{out}");
        assert!(
            out.contains("  # - url: http://disabled/w\n\n# alerting"),
            "{out}"
        );
        let doc = yaml::parse(&out).unwrap();
        let Some(Yaml::Seq(list)) = doc.get("remote_write") else {
            panic!()
        };
        assert_eq!(list.len(), 3);
        assert_eq!(list[2], entry().to_prometheus_yml());
    }

    #[test]
    fn yml_values_that_would_be_respelled_stay_strings() {
        let e = RemoteWriteEntry::new("ns", "gv", "1-10", "http://r/w", Some("on"));
        let mut e2 = e.clone();
        e2.cluster = "1.10".into();
        e2.headers.insert("X".into(), "yes\n\"q\"".into());
        for e in [e, e2] {
            let out = upsert_prometheus_yml("a: 1\n", &e).unwrap().unwrap();
            assert!(prometheus_yml_has(&out, &e), "{out}");
            let flow = upsert_prometheus_yml("remote_write: []\n", &e)
                .unwrap()
                .unwrap();
            assert!(prometheus_yml_has(&flow, &e), "{flow}");
        }
    }

    #[test]
    fn yml_shapes_that_cannot_be_edited_safely_are_refused_untouched() {
        for bad in [
            "remote_write: &rw\n  - url: http://a/w\n",
            "remote_write: *rw\n",
            "remote_write: ~\n",
            "remote_write: !!seq\n  - url: a\n",
            "remote_write: [{url: 'http://a/w'}]\n",
            "remote_write: [\n  {url: 'http://a/w'}]\n",
            "{global: {}, remote_write: []}\n",
            "global: {}\n---\nglobal: {}\n",
            "remote_write:\n  - url: a\n\tname: b\n",
        ] {
            match upsert_prometheus_yml(bad, &entry()) {
                Err(EditError::Unsupported(_)) | Err(EditError::Parse(_)) => {}
                other => panic!("{bad:?} was not refused: {other:?}"),
            }
        }
        // A flow list holding our entry and another cannot lose ours by text edit.
        let ours = entry().flow_text();
        let mixed = format!("remote_write: [{ours}, {{url: 'http://a/w'}}]\n");
        assert!(matches!(
            remove_from_prometheus_yml(&mixed, &entry().id()),
            Err(EditError::Unsupported(_))
        ));
        // The refusal names the reason.
        let err = upsert_prometheus_yml("remote_write: ~\n", &entry()).unwrap_err();
        assert!(err.to_string().contains("cannot be edited safely"), "{err}");
    }

    #[test]
    fn legacy_entries_are_migrated_in_place_and_removed() {
        let legacy = "global: {}\nremote_write:\n- name: user\n  url: http://u/w\n- name: orrery-global-batcave\n  url: http://old/api/v1/receive\n  write_relabel_configs:\n  - target_label: cluster\n    replacement: batcave\n    action: replace\n- name: last\n  url: http://l/w\n";
        let out = upsert_prometheus_yml(legacy, &entry()).unwrap().unwrap();
        let doc = yaml::parse(&out).unwrap();
        let Some(Yaml::Seq(list)) = doc.get("remote_write") else {
            panic!()
        };
        let names: Vec<_> = list
            .iter()
            .map(|e| e.get("name").and_then(Yaml::as_str).unwrap())
            .collect();
        assert_eq!(
            names,
            ["user", "orrery-orrery.global.batcave", "last"],
            "{out}"
        );
        assert!(out.starts_with("global: {}\nremote_write:\n- name: user\n  url: http://u/w\n"));
        assert!(out.ends_with("- name: last\n  url: http://l/w\n"));
        let gone = remove_from_prometheus_yml(legacy, &entry().id())
            .unwrap()
            .unwrap();
        assert!(!gone.contains("orrery-global-batcave"), "{gone}");
        // A legacy-named entry labelling another cluster (`orrery-global-batcave` is
        // also GlobalView `global-batcave`'s… no: GlobalView `global`, cluster
        // `batcave`, or GlobalView `global-bat`, cluster `cave`) is not ours.
        let other = RemoteWriteEntry::new("orrery", "global-bat", "cave", "http://x/w", None);
        assert_eq!(
            remove_from_prometheus_yml(legacy, &other.id()).unwrap(),
            None
        );
        // Same for the Prometheus CR.
        let mut obj = json!({"spec": {"remoteWrite": [
            {"name": "orrery-global-batcave", "url": "http://old",
             "writeRelabelConfigs": [{"targetLabel": "cluster", "replacement": "batcave", "action": "replace"}]},
            {"name": "user", "url": "http://u"}]}});
        assert!(!remove_from_prometheus_cr(&mut obj.clone(), &other.id()).unwrap());
        assert!(upsert_prometheus_cr(&mut obj, &entry()).unwrap());
        let list = obj["spec"]["remoteWrite"].as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0], entry().to_prometheus_cr());
    }

    #[test]
    fn same_named_global_views_in_two_namespaces_keep_separate_entries() {
        let a = RemoteWriteEntry::new("team-a", "global", "batcave", "http://a/w", None);
        let b = RemoteWriteEntry::new("team-b", "global", "batcave", "http://b/w", None);
        let one = upsert_prometheus_yml(YML, &a).unwrap().unwrap();
        let two = upsert_prometheus_yml(&one, &b).unwrap().unwrap();
        assert!(prometheus_yml_has(&two, &a) && prometheus_yml_has(&two, &b));
        let back = remove_from_prometheus_yml(&two, &a.id()).unwrap().unwrap();
        assert!(!prometheus_yml_has(&back, &a) && prometheus_yml_has(&back, &b));
        let mut obj = prom_cr();
        upsert_prometheus_cr(&mut obj, &a).unwrap();
        upsert_prometheus_cr(&mut obj, &b).unwrap();
        assert!(prometheus_cr_has(&obj, &a) && prometheus_cr_has(&obj, &b));
    }
}
