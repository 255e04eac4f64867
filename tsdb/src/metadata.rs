//! Metric metadata (type, help, unit) per metric family, as remote-write clients send it,
//! for the metadata API.
//!
//! Prometheus answers `/api/v1/metadata` from its scrape targets' caches: per family, the
//! set of distinct (type, help, unit) its targets expose. A receiver has no targets, so it
//! keeps what senders report: per family a few distinct entries, newest last. Bounded
//! (families, entries per family, bytes per string) because a client controls all of it.

use std::collections::HashMap;
use std::sync::RwLock;

/// One metadata entry. `kind` is Prometheus's type name (`counter`, `gauge`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Meta {
    pub kind: String,
    pub help: String,
    pub unit: String,
}

/// Limits of one tenant's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataLimits {
    /// Families kept; entries for new families beyond it are refused.
    pub max_families: usize,
    /// Distinct entries kept per family; the oldest is forgotten for a new one.
    pub max_per_family: usize,
    /// Longest family name, help or unit (bytes).
    pub max_string_bytes: usize,
}

impl Default for MetadataLimits {
    fn default() -> Self {
        MetadataLimits {
            max_families: 100_000,
            max_per_family: 8,
            max_string_bytes: 16 << 10,
        }
    }
}

/// Why an entry was not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata without a metric family name")]
    NoFamily,
    #[error("metadata string of {len} bytes is over the limit of {limit}")]
    TooLong { len: usize, limit: usize },
    #[error("metadata for {limit} metric families is kept already (the limit)")]
    TooManyFamilies { limit: usize },
}

/// One tenant's metadata.
#[derive(Debug)]
pub struct MetadataStore {
    limits: MetadataLimits,
    families: RwLock<HashMap<String, Vec<Meta>>>,
}

impl MetadataStore {
    pub fn new(limits: MetadataLimits) -> Self {
        MetadataStore {
            limits,
            families: RwLock::new(HashMap::new()),
        }
    }

    /// Records that `family` has metadata `m` (a no-op when it is known already).
    pub fn update(&self, family: &str, m: Meta) -> Result<(), MetadataError> {
        if family.is_empty() {
            return Err(MetadataError::NoFamily);
        }
        let limit = self.limits.max_string_bytes;
        for s in [family, &m.kind, &m.help, &m.unit] {
            if s.len() > limit {
                return Err(MetadataError::TooLong {
                    len: s.len(),
                    limit,
                });
            }
        }
        {
            let r = self.families.read().unwrap_or_else(|p| p.into_inner());
            if r.get(family).is_some_and(|v| v.last() == Some(&m)) {
                return Ok(());
            }
        }
        let mut w = self.families.write().unwrap_or_else(|p| p.into_inner());
        let n = w.len();
        let entries = match w.get_mut(family) {
            Some(e) => e,
            None => {
                if n >= self.limits.max_families {
                    return Err(MetadataError::TooManyFamilies {
                        limit: self.limits.max_families,
                    });
                }
                w.entry(family.to_string()).or_default()
            }
        };
        // Newest last: a known entry moves to the end, a new one evicts the oldest.
        entries.retain(|e| e != &m);
        entries.push(m);
        if entries.len() > self.limits.max_per_family {
            let extra = entries.len() - self.limits.max_per_family;
            entries.drain(..extra);
        }
        Ok(())
    }

    /// Families and their entries: one family (`metric`, when given) or all, at most
    /// `limit` families (negative: all) and `limit_per_metric` entries each (≤ 0: all),
    /// sorted by family name so a limit picks the same families every time.
    pub fn list(
        &self,
        metric: Option<&str>,
        limit: i64,
        limit_per_metric: i64,
    ) -> Vec<(String, Vec<Meta>)> {
        let r = self.families.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, Vec<Meta>)> = match metric {
            Some(m) => r
                .get(m)
                .map(|v| vec![(m.to_string(), v.clone())])
                .unwrap_or_default(),
            None => r.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        drop(r);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        if limit >= 0 {
            out.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        if limit_per_metric > 0 {
            let n = usize::try_from(limit_per_metric).unwrap_or(usize::MAX);
            for (_, v) in &mut out {
                v.truncate(n);
            }
        }
        out
    }

    pub fn families(&self) -> usize {
        self.families
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kind: &str, help: &str) -> Meta {
        Meta {
            kind: kind.into(),
            help: help.into(),
            unit: String::new(),
        }
    }

    #[test]
    fn keeps_distinct_entries_bounded() {
        let s = MetadataStore::new(MetadataLimits {
            max_families: 2,
            max_per_family: 2,
            max_string_bytes: 10,
        });
        s.update("a", meta("counter", "one")).unwrap();
        s.update("a", meta("counter", "one")).unwrap();
        assert_eq!(
            s.list(None, -1, -1),
            vec![("a".into(), vec![meta("counter", "one")])]
        );
        s.update("a", meta("counter", "two")).unwrap();
        s.update("a", meta("counter", "three")).unwrap();
        assert_eq!(
            s.list(Some("a"), -1, -1)[0].1,
            vec![meta("counter", "two"), meta("counter", "three")]
        );
        s.update("b", meta("gauge", "")).unwrap();
        assert_eq!(
            s.update("c", meta("gauge", "")),
            Err(MetadataError::TooManyFamilies { limit: 2 })
        );
        assert_eq!(
            s.update("b", meta("gauge", "01234567890")),
            Err(MetadataError::TooLong { len: 11, limit: 10 })
        );
        assert_eq!(
            s.update("", meta("gauge", "")),
            Err(MetadataError::NoFamily)
        );
        // Limits: families by name, entries per family.
        let l = s.list(None, 1, 1);
        assert_eq!(l, vec![("a".into(), vec![meta("counter", "two")])]);
        assert_eq!(s.list(None, 0, -1), vec![]);
        assert_eq!(s.list(Some("zzz"), -1, -1), vec![]);
        assert_eq!(s.families(), 2);
    }
}
