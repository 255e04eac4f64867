//! `--selector.relabel-config`: Prometheus relabel rules restricted to what Thanos allows
//! for block selection (`keep`, `drop`, `hashmod`), applied to a block's external labels
//! plus `__block_id`. Used to shard blocks over several gateways.

use std::collections::BTreeMap;

use md5::{Digest, Md5};
use regex::Regex;
use serde::Deserialize;

/// Why a relabel config was refused.
#[derive(Debug, thiserror::Error)]
pub enum RelabelError {
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
#[derive(Debug)]
struct Rule {
    source: Vec<String>,
    separator: String,
    regex: Regex,
    modulus: u64,
    target: String,
    action: Action,
}

/// A compiled selector; the empty selector keeps every block.
#[derive(Debug, Default)]
pub struct Selector {
    rules: Vec<Rule>,
}

impl Selector {
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
}
