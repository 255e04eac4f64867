//! Exemplar storage: one bounded ring buffer shared by all series of a TSDB, with a
//! per-series index, as Prometheus's circular exemplar storage (`tsdb/exemplar.go`).
//!
//! Why a ring and not per-series buffers: memory is bounded by one number
//! (`--tsdb.max-exemplars`) however many series send exemplars, and the oldest exemplars
//! (in order of arrival) are the ones forgotten. Each slot links to the next slot of
//! the same series, so a series' exemplars are read oldest first without a scan.
//!
//! Validation is Prometheus's, so the same exemplars are kept and refused:
//! - the label set (names and values, empty values dropped) has at most
//!   [`MAX_LABEL_SET_RUNES`] characters (OpenMetrics);
//! - an exemplar equal to the series' newest one is a duplicate (accepted, not stored);
//! - an exemplar older than the series' newest one, or at the same time with a smaller
//!   value, or the same time and value with a smaller label hash, is out of order.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use storeapi::{Labels, Matcher};

/// Most characters (Unicode scalar values) of an exemplar's label names and values
/// together (OpenMetrics 1.0; Prometheus `exemplar.ExemplarMaxLabelSetLength`).
pub const MAX_LABEL_SET_RUNES: usize = 128;

/// One exemplar: a labelled value at a time, attached to a series.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    /// Sorted, no empty values.
    pub labels: Labels,
    pub value: f64,
    /// Milliseconds since the epoch; 0 means the sender gave no timestamp (Prometheus's
    /// `HasTs == false`), which makes the timestamp irrelevant for duplicate detection.
    pub t: i64,
}

impl Exemplar {
    /// Prometheus's `Exemplar.Equals`: same labels and value, and same timestamp unless
    /// neither has one.
    fn same_as(&self, o: &Exemplar) -> bool {
        if self.labels != o.labels {
            return false;
        }
        if (self.t != 0 || o.t != 0) && self.t != o.t {
            return false;
        }
        self.value == o.value
    }
}

/// Why an exemplar was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExemplarError {
    #[error("exemplar storage is disabled (--tsdb.max-exemplars=0)")]
    Disabled,
    #[error(
        "exemplar label set of {runes} characters is over the limit of {MAX_LABEL_SET_RUNES} (names and values)"
    )]
    LabelLength { runes: usize },
    #[error("out of order exemplar (t={t}, the series' newest is t={newest})")]
    OutOfOrder { t: i64, newest: i64 },
}

impl ExemplarError {
    /// A short reason for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ExemplarError::Disabled => "disabled",
            ExemplarError::LabelLength { .. } => "label_length",
            ExemplarError::OutOfOrder { .. } => "out_of_order",
        }
    }
}

/// What [`ExemplarStorage::add`] did with a valid exemplar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Stored,
    /// Equal to the series' newest exemplar: nothing changed (a resent batch).
    Duplicate,
}

/// The exemplars of one series in a time range, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesExemplars {
    pub series: Labels,
    pub exemplars: Vec<Exemplar>,
}

/// Counts for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExemplarStats {
    pub capacity: usize,
    pub stored: usize,
    pub series: usize,
}

#[derive(Debug)]
struct Slot {
    exemplar: Exemplar,
    series: Arc<Labels>,
    /// The next (newer) slot of the same series.
    next: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
struct SeriesEntry {
    oldest: usize,
    newest: usize,
}

#[derive(Debug, Default)]
struct Ring {
    slots: Vec<Option<Slot>>,
    next: usize,
    index: HashMap<Arc<Labels>, SeriesEntry>,
}

/// The exemplars of one TSDB (one tenant). Cheap to share (`&self` everywhere).
#[derive(Debug)]
pub struct ExemplarStorage {
    ring: RwLock<Ring>,
}

/// Prometheus's `labels.Hash()` (the default `stringlabels` build): xxHash64 of the
/// labels' packed form, each string prefixed by its length (one byte below 255, else
/// 255 and three little-endian bytes). Only used to order exemplars that share a
/// timestamp and value, the way Prometheus does.
pub fn prometheus_labels_hash(labels: &Labels) -> u64 {
    let mut buf = Vec::with_capacity(64);
    let mut put = |s: &str| {
        let n = s.len();
        if n < 255 {
            buf.push(n as u8);
        } else {
            buf.extend_from_slice(&[255, n as u8, (n >> 8) as u8, (n >> 16) as u8]);
        }
        buf.extend_from_slice(s.as_bytes());
    };
    for l in labels.iter() {
        put(&l.name);
        put(&l.value);
    }
    xxhash_rust::xxh64::xxh64(&buf, 0)
}

fn label_set_runes(labels: &Labels) -> usize {
    labels
        .iter()
        .map(|l| l.name.chars().count() + l.value.chars().count())
        .sum()
}

impl ExemplarStorage {
    /// A ring of `capacity` exemplars; 0 disables storage (every add is `Disabled`).
    pub fn new(capacity: usize) -> Self {
        let mut slots = Vec::new();
        slots.resize_with(capacity, || None);
        ExemplarStorage {
            ring: RwLock::new(Ring {
                slots,
                next: 0,
                index: HashMap::new(),
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Ring> {
        self.ring.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Ring> {
        self.ring.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn enabled(&self) -> bool {
        !self.read().slots.is_empty()
    }

    pub fn stats(&self) -> ExemplarStats {
        let r = self.read();
        let stored = if r.slots.get(r.next).is_some_and(Option::is_some) {
            r.slots.len()
        } else {
            r.next
        };
        ExemplarStats {
            capacity: r.slots.len(),
            stored,
            series: r.index.len(),
        }
    }

    /// Validates `e` for `series` and stores it, evicting the oldest exemplar of the
    /// ring when it is full.
    pub fn add(&self, series: &Labels, e: Exemplar) -> Result<Added, ExemplarError> {
        let mut r = self.write();
        if r.slots.is_empty() {
            return Err(ExemplarError::Disabled);
        }
        let runes = label_set_runes(&e.labels);
        if runes > MAX_LABEL_SET_RUNES {
            return Err(ExemplarError::LabelLength { runes });
        }
        let entry = r.index.get(series).copied();
        if let Some(entry) = entry
            && let Some(Some(newest)) = r.slots.get(entry.newest)
        {
            let n = &newest.exemplar;
            if n.same_as(&e) {
                return Ok(Added::Duplicate);
            }
            let out_of_order = e.t < n.t
                || (e.t == n.t && e.value < n.value)
                || (e.t == n.t
                    && e.value == n.value
                    && prometheus_labels_hash(&e.labels) < prometheus_labels_hash(&n.labels));
            if out_of_order {
                return Err(ExemplarError::OutOfOrder {
                    t: e.t,
                    newest: n.t,
                });
            }
        }
        let at = r.next;
        let len = r.slots.len();
        // Evict the slot we are about to overwrite.
        if let Some(old) = r.slots.get_mut(at).and_then(Option::take) {
            match old.next {
                None => {
                    r.index.remove(&old.series);
                }
                Some(n) => {
                    if let Some(s) = r.index.get_mut(&old.series) {
                        s.oldest = n;
                    }
                }
            }
        }
        let key = match r.index.get_key_value(series) {
            Some((k, _)) => k.clone(),
            None => Arc::new(series.clone()),
        };
        match r.index.get(&key).copied() {
            Some(s) => {
                if let Some(Some(prev)) = r.slots.get_mut(s.newest) {
                    prev.next = Some(at);
                }
                if let Some(s) = r.index.get_mut(&key) {
                    s.newest = at;
                }
            }
            None => {
                r.index.insert(
                    key.clone(),
                    SeriesEntry {
                        oldest: at,
                        newest: at,
                    },
                );
            }
        }
        if let Some(slot) = r.slots.get_mut(at) {
            *slot = Some(Slot {
                exemplar: e,
                series: key,
                next: None,
            });
        }
        r.next = (at + 1) % len;
        Ok(Added::Stored)
    }

    /// The exemplars in `[start, end]` of every series matching some matcher set, sorted
    /// by series labels (Prometheus's `Select`).
    pub fn select(&self, start: i64, end: i64, sets: &[Vec<Matcher>]) -> Vec<SeriesExemplars> {
        let r = self.read();
        let mut out = Vec::new();
        for (series, entry) in &r.index {
            let (Some(Some(oldest)), Some(Some(newest))) =
                (r.slots.get(entry.oldest), r.slots.get(entry.newest))
            else {
                continue;
            };
            if oldest.exemplar.t > end || newest.exemplar.t < start {
                continue;
            }
            let matches = sets.iter().any(|ms| {
                ms.iter()
                    .all(|m| m.matches(series.get(&m.name).unwrap_or("")))
            });
            if !matches {
                continue;
            }
            let mut exemplars = Vec::new();
            let mut cur = Some(entry.oldest);
            // Bounded by the ring size even if links were ever wrong.
            let mut steps = 0usize;
            while let Some(i) = cur {
                let Some(Some(slot)) = r.slots.get(i) else {
                    break;
                };
                if slot.exemplar.t > end || steps > r.slots.len() {
                    break;
                }
                if slot.exemplar.t >= start {
                    exemplars.push(slot.exemplar.clone());
                }
                cur = slot.next;
                steps += 1;
            }
            if !exemplars.is_empty() {
                out.push(SeriesExemplars {
                    series: (**series).clone(),
                    exemplars,
                });
            }
        }
        out.sort_by(|a, b| a.series.cmp(&b.series));
        out
    }

    /// Every stored exemplar, oldest (in order of arrival) first: for snapshots and tests.
    pub fn iterate(&self, mut f: impl FnMut(&Labels, &Exemplar)) {
        let r = self.read();
        let len = r.slots.len();
        for i in 0..len {
            if let Some(Some(slot)) = r.slots.get((r.next + i) % len) {
                f(&slot.series, &slot.exemplar);
            }
        }
    }
}

/// Shared handle, as tenants hold it.
pub type SharedExemplars = Arc<ExemplarStorage>;

#[cfg(test)]
mod tests {
    use super::*;
    use storeapi::MatchOp;

    fn ls(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied()).unwrap()
    }

    fn ex(trace: &str, v: f64, t: i64) -> Exemplar {
        Exemplar {
            labels: ls(&[("trace_id", trace)]),
            value: v,
            t,
        }
    }

    fn all() -> Vec<Vec<Matcher>> {
        vec![vec![
            Matcher::new(MatchOp::RegexMatch, "__name__", ".+").unwrap(),
        ]]
    }

    #[test]
    fn disabled_storage_refuses() {
        let s = ExemplarStorage::new(0);
        let a = ls(&[("__name__", "a")]);
        assert_eq!(s.add(&a, ex("x", 1.0, 1)), Err(ExemplarError::Disabled));
        assert!(!s.enabled());
    }

    #[test]
    fn validation_matches_prometheus() {
        let s = ExemplarStorage::new(10);
        let a = ls(&[("__name__", "a")]);
        assert_eq!(s.add(&a, ex("x", 1.0, 100)), Ok(Added::Stored));
        // Same exemplar again: duplicate, not stored twice.
        assert_eq!(s.add(&a, ex("x", 1.0, 100)), Ok(Added::Duplicate));
        // Older: out of order.
        assert_eq!(
            s.add(&a, ex("y", 1.0, 99)),
            Err(ExemplarError::OutOfOrder { t: 99, newest: 100 })
        );
        // Same time, smaller value: out of order; bigger value: fine (histogram buckets).
        assert!(matches!(
            s.add(&a, ex("y", 0.5, 100)),
            Err(ExemplarError::OutOfOrder { .. })
        ));
        assert_eq!(s.add(&a, ex("y", 2.0, 100)), Ok(Added::Stored));
        // 128 characters are fine, 129 are not; characters, not bytes.
        let v127: String = "é".repeat(127);
        let ok = Exemplar {
            labels: ls(&[("t", &v127)]),
            value: 1.0,
            t: 200,
        };
        assert_eq!(s.add(&a, ok), Ok(Added::Stored));
        let v128: String = "é".repeat(128);
        let long = Exemplar {
            labels: ls(&[("t", &v128)]),
            value: 1.0,
            t: 300,
        };
        assert_eq!(
            s.add(&a, long),
            Err(ExemplarError::LabelLength { runes: 129 })
        );
        // Other series are independent.
        let b = ls(&[("__name__", "b")]);
        assert_eq!(s.add(&b, ex("z", 1.0, 1)), Ok(Added::Stored));
        assert_eq!(s.stats().stored, 4);
        assert_eq!(s.stats().series, 2);
    }

    #[test]
    fn same_time_and_value_ordered_by_label_hash() {
        let s = ExemplarStorage::new(10);
        let a = ls(&[("__name__", "a")]);
        let (x, y) = (ex("x", 1.0, 5), ex("y", 1.0, 5));
        let (lo, hi) = if prometheus_labels_hash(&x.labels) < prometheus_labels_hash(&y.labels) {
            (x, y)
        } else {
            (y, x)
        };
        assert_eq!(s.add(&a, hi.clone()), Ok(Added::Stored));
        assert!(matches!(
            s.add(&a, lo),
            Err(ExemplarError::OutOfOrder { .. })
        ));
    }

    #[test]
    fn prometheus_hash_of_known_labels() {
        // stringlabels packs {a="b"} as 01 'a' 01 'b'.
        let h = prometheus_labels_hash(&ls(&[("a", "b")]));
        assert_eq!(h, xxhash_rust::xxh64::xxh64(&[1, b'a', 1, b'b'], 0));
        let long = "v".repeat(300);
        let h = prometheus_labels_hash(&ls(&[("a", &long)]));
        let mut want = vec![1, b'a', 255, 44, 1, 0];
        want.extend_from_slice(long.as_bytes());
        assert_eq!(h, xxhash_rust::xxh64::xxh64(&want, 0));
    }

    #[test]
    fn ring_evicts_oldest_and_keeps_series_chains() {
        let s = ExemplarStorage::new(3);
        let a = ls(&[("__name__", "a")]);
        let b = ls(&[("__name__", "b")]);
        s.add(&a, ex("a1", 1.0, 1)).unwrap();
        s.add(&b, ex("b1", 1.0, 2)).unwrap();
        s.add(&a, ex("a2", 1.0, 3)).unwrap();
        s.add(&b, ex("b2", 1.0, 4)).unwrap(); // evicts a1
        s.add(&b, ex("b3", 1.0, 5)).unwrap(); // evicts b1
        let got = s.select(i64::MIN, i64::MAX, &all());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].series, a);
        assert_eq!(got[0].exemplars, vec![ex("a2", 1.0, 3)]);
        assert_eq!(got[1].series, b);
        assert_eq!(got[1].exemplars, vec![ex("b2", 1.0, 4), ex("b3", 1.0, 5)]);
        s.add(&b, ex("b4", 1.0, 6)).unwrap(); // evicts a2: series a is gone
        let got = s.select(i64::MIN, i64::MAX, &all());
        assert_eq!(got.len(), 1);
        assert_eq!(s.stats().series, 1);
        assert_eq!(s.stats().stored, 3);
        let mut order = Vec::new();
        s.iterate(|_, e| order.push(e.t));
        assert_eq!(order, vec![4, 5, 6]);
    }

    #[test]
    fn select_by_time_and_matchers() {
        let s = ExemplarStorage::new(100);
        let a = ls(&[("__name__", "req"), ("job", "x")]);
        let b = ls(&[("__name__", "req"), ("job", "y")]);
        for t in 1..=10 {
            s.add(&a, ex("t", t as f64, t * 10)).unwrap();
            s.add(&b, ex("t", t as f64, t * 10)).unwrap();
        }
        let x = vec![vec![Matcher::new(MatchOp::Equal, "job", "x").unwrap()]];
        let got = s.select(25, 50, &x);
        assert_eq!(got.len(), 1);
        let ts: Vec<i64> = got[0].exemplars.iter().map(|e| e.t).collect();
        assert_eq!(ts, vec![30, 40, 50]);
        // Two sets: union; no match: nothing.
        let both = vec![
            x[0].clone(),
            vec![Matcher::new(MatchOp::Equal, "job", "y").unwrap()],
        ];
        assert_eq!(s.select(0, 100, &both).len(), 2);
        let none = vec![vec![Matcher::new(MatchOp::Equal, "job", "z").unwrap()]];
        assert!(s.select(0, 100, &none).is_empty());
        assert!(s.select(101, 200, &all()).is_empty());
    }

    #[test]
    fn untimed_exemplars_are_duplicates_whatever_the_time() {
        // Timestamp 0 = "no timestamp": an identical value and labels is a duplicate.
        let s = ExemplarStorage::new(4);
        let a = ls(&[("__name__", "a")]);
        assert_eq!(s.add(&a, ex("x", 1.0, 0)), Ok(Added::Stored));
        assert_eq!(s.add(&a, ex("x", 1.0, 0)), Ok(Added::Duplicate));
    }
}
