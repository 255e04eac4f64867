//! `--selector.relabel-config`: Prometheus relabel rules restricted to what Thanos allows
//! for block selection (`keep`, `drop`, `hashmod`), applied to a block's external labels
//! plus `__block_id` (Thanos's `LabelShardedMetaFilter`). Shards blocks over several
//! store gateways, and groups over several compactors; it lives here, next to
//! [`crate::discovery`], because both services select from the same discovery.

use std::collections::BTreeMap;
use std::path::Path;

use md5::{Digest, Md5};
use regex::Regex;
use serde::Deserialize;

/// Why a relabel config was refused.
#[derive(Debug, thiserror::Error)]
pub enum RelabelError {
    #[error("reading --selector.relabel-config-file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("relabel config is not valid YAML: {0}")]
    Yaml(String),
    #[error("relabel rule {index}: {reason}")]
    Rule { index: usize, reason: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    source_labels: Vec<String>,
    separator: Option<String>,
    regex: Option<String>,
    modulus: Option<u64>,
    target_label: Option<String>,
    replacement: Option<String>,
    action: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    Keep,
    Drop,
    HashMod,
}

/// One compiled rule.
#[derive(Debug, Clone)]
struct Rule {
    source: Vec<String>,
    separator: String,
    regex: Regex,
    modulus: u64,
    target: String,
    action: Action,
}

/// A compiled selector; the empty selector keeps every block.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    rules: Vec<Rule>,
}

/// The label the block's ULID is offered under (Thanos's `BlockIDLabel`).
pub const BLOCK_ID_LABEL: &str = "__block_id";

impl Selector {
    /// The selector of `--selector.relabel-config` (inline YAML, preferred) or
    /// `--selector.relabel-config-file`; neither keeps every block.
    pub fn from_flags(inline: Option<&str>, file: Option<&Path>) -> Result<Selector, RelabelError> {
        match (inline, file) {
            (Some(text), _) => Selector::parse(text),
            (None, Some(p)) => {
                let text = std::fs::read_to_string(p).map_err(|source| RelabelError::File {
                    path: p.display().to_string(),
                    source,
                })?;
                Selector::parse(&text)
            }
            (None, None) => Ok(Selector::default()),
        }
    }

    /// Parses a YAML list of relabel rules (empty text: keep everything).
    pub fn parse(text: &str) -> Result<Selector, RelabelError> {
        if text.trim().is_empty() {
            return Ok(Selector::default());
        }
        let raw: Vec<RawRule> =
            serde_saphyr::from_str(text).map_err(|e| RelabelError::Yaml(e.to_string()))?;
        let mut rules = Vec::with_capacity(raw.len());
        for (index, r) in raw.into_iter().enumerate() {
            let bad = |reason: String| RelabelError::Rule { index, reason };
            let action = match r
                .action
                .as_deref()
                .unwrap_or("replace")
                .to_ascii_lowercase()
                .as_str()
            {
                "keep" => Action::Keep,
                "drop" => Action::Drop,
                "hashmod" => Action::HashMod,
                other => {
                    return Err(bad(format!(
                        "action {other:?} is not allowed for block selection (keep, drop, hashmod)"
                    )));
                }
            };
            let pattern = r.regex.unwrap_or_else(|| "(.*)".into());
            // Anchored, as Prometheus compiles relabel regexes.
            let regex = Regex::new(&format!("^(?s:{pattern})$"))
                .map_err(|e| bad(format!("invalid regex {pattern:?}: {e}")))?;
            let modulus = r.modulus.unwrap_or(0);
            let target = r.target_label.unwrap_or_default();
            if action == Action::HashMod {
                if modulus == 0 {
                    return Err(bad("hashmod needs a modulus > 0".into()));
                }
                if target.is_empty() {
                    return Err(bad("hashmod needs a target_label".into()));
                }
            }
            if action != Action::HashMod && r.source_labels.is_empty() {
                return Err(bad("keep/drop need source_labels".into()));
            }
            let _ = r.replacement;
            rules.push(Rule {
                source: r.source_labels,
                separator: r.separator.unwrap_or_else(|| ";".into()),
                regex,
                modulus,
                target,
                action,
            });
        }
        Ok(Selector { rules })
    }

    /// Whether the block `id` with these external labels is kept. `ignore` names labels
    /// left out of the rules' input: the compactor passes its dedup replica labels, as
    /// Thanos does, so a `hashmod` over the external labels never sends two replicas of
    /// one stream (which it then merges into one group) to different compactors.
    pub fn keeps_block(
        &self,
        id: impl std::fmt::Display,
        labels: &BTreeMap<String, String>,
        ignore: &[String],
    ) -> bool {
        if self.rules.is_empty() {
            return true;
        }
        let mut l: BTreeMap<String, String> = labels
            .iter()
            .filter(|(k, _)| !ignore.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        l.insert(BLOCK_ID_LABEL.into(), id.to_string());
        self.keeps(&l)
    }

    /// Whether a block with these labels (external labels and `__block_id`) is kept.
    pub fn keeps(&self, labels: &BTreeMap<String, String>) -> bool {
        if self.rules.is_empty() {
            return true;
        }
        let mut ls = labels.clone();
        for r in &self.rules {
            let value = r
                .source
                .iter()
                .map(|n| ls.get(n).map(String::as_str).unwrap_or(""))
                .collect::<Vec<_>>()
                .join(&r.separator);
            match r.action {
                Action::Keep => {
                    if !r.regex.is_match(&value) {
                        return false;
                    }
                }
                Action::Drop => {
                    if r.regex.is_match(&value) {
                        return false;
                    }
                }
                Action::HashMod => {
                    // Prometheus: the last 8 bytes of the MD5 sum, big-endian, mod m.
                    let sum = Md5::digest(value.as_bytes());
                    let mut tail = [0u8; 8];
                    tail.copy_from_slice(&sum[8..16]);
                    let h = u64::from_be_bytes(tail) % r.modulus;
                    ls.insert(r.target.clone(), h.to_string());
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn keep_drop_and_hashmod_shard_blocks() {
        let s = Selector::parse(
            "- action: keep\n  source_labels: [tenant_id]\n  regex: 'a|b'\n- action: drop\n  source_labels: [__block_id]\n  regex: '01X.*'\n",
        )
        .unwrap();
        assert!(s.keeps(&labels(&[("tenant_id", "a"), ("__block_id", "01A")])));
        assert!(!s.keeps(&labels(&[("tenant_id", "c"), ("__block_id", "01A")])));
        assert!(!s.keeps(&labels(&[("tenant_id", "b"), ("__block_id", "01XYZ")])));

        let shard = |i: u64| {
            Selector::parse(&format!(
                "- action: hashmod\n  source_labels: [__block_id]\n  modulus: 3\n  target_label: shard\n- action: keep\n  source_labels: [shard]\n  regex: '{i}'\n"
            ))
            .unwrap()
        };
        let shards = [shard(0), shard(1), shard(2)];
        for id in ["01A", "01B", "01C", "01D", "01E", "01F"] {
            let l = labels(&[("__block_id", id)]);
            assert_eq!(shards.iter().filter(|s| s.keeps(&l)).count(), 1, "{id}");
        }
        assert!(Selector::parse("- action: replace\n  source_labels: [a]\n").is_err());
        assert!(Selector::parse("").unwrap().keeps(&labels(&[])));
    }

    #[test]
    fn keeps_block_offers_the_id_and_hides_replica_labels() {
        let s = Selector::parse(
            "- action: hashmod\n  source_labels: [tenant, replica]\n  modulus: 2\n  target_label: shard\n- action: keep\n  source_labels: [shard]\n  regex: '0'\n",
        )
        .unwrap();
        // With the replica label ignored, both replicas of a tenant land on one shard.
        for t in ["a", "b", "c", "d", "e", "f"] {
            let r0 = labels(&[("tenant", t), ("replica", "0")]);
            let r1 = labels(&[("tenant", t), ("replica", "1")]);
            let ignore = ["replica".to_string()];
            assert_eq!(
                s.keeps_block("01A", &r0, &ignore),
                s.keeps_block("01B", &r1, &ignore),
                "{t}"
            );
        }
        // Without it, the replicas of some tenant would be split over the shards.
        assert!(["a", "b", "c", "d", "e", "f"].iter().any(|t| {
            s.keeps_block("01A", &labels(&[("tenant", t), ("replica", "0")]), &[])
                != s.keeps_block("01B", &labels(&[("tenant", t), ("replica", "1")]), &[])
        }));
        let by_id =
            Selector::parse("- action: keep\n  source_labels: [__block_id]\n  regex: '01A'\n")
                .unwrap();
        assert!(by_id.keeps_block("01A", &labels(&[]), &[]));
        assert!(!by_id.keeps_block("01B", &labels(&[]), &[]));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("relabel.yml");
        std::fs::write(
            &f,
            "- action: drop\n  source_labels: [tenant]\n  regex: 'a'\n",
        )
        .unwrap();
        let s = Selector::from_flags(None, Some(&f)).unwrap();
        assert!(!s.keeps_block("01A", &labels(&[("tenant", "a")]), &[]));
        assert!(s.keeps_block("01A", &labels(&[("tenant", "b")]), &[]));
        let missing = Selector::from_flags(None, Some(&dir.path().join("nope"))).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
        assert!(
            Selector::from_flags(None, None)
                .unwrap()
                .keeps(&labels(&[]))
        );
    }
}
