//! The head's inverted index: for every label pair the sorted list of series refs that
//! carry it ("postings"), plus the set-algebra that answers label matchers with
//! Prometheus semantics.
//!
//! Semantics (as Prometheus's `PostingsForMatchers`): an absent label has the value `""`,
//! so a matcher that matches `""` (e.g. `foo=""`, `foo!="bar"`, `foo=~"|x"`) also selects
//! series without `foo`. Regexes are fully anchored (see [`storeapi::Matcher`]).
//!
//! Label names and values are stored once per distinct string (interned as `Arc<str>`),
//! however many series share them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use storeapi::{Labels, MatchOp, Matcher};

/// A stable reference to a head series.
pub type SeriesRef = u64;

/// Interns label strings so each distinct name/value is stored once.
#[derive(Debug, Default)]
pub struct Symbols {
    set: HashSet<Arc<str>>,
}

impl Symbols {
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.set.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.set.insert(a.clone());
        a
    }

    /// Drops strings no longer used by any posting list.
    fn gc(&mut self) {
        self.set.retain(|a| Arc::strong_count(a) > 1);
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// Postings per label pair. Refs must be added in increasing order (the head hands out
/// refs from a counter), which keeps every list sorted without sorting.
#[derive(Debug, Default)]
pub struct MemPostings {
    by_name: HashMap<Arc<str>, HashMap<Arc<str>, Vec<SeriesRef>>>,
    all: Vec<SeriesRef>,
    symbols: Symbols,
}

impl MemPostings {
    pub fn new() -> Self {
        Self::default()
    }

    /// Indexes a new series. `r` must be greater than every ref added before.
    pub fn add(&mut self, r: SeriesRef, labels: &Labels) {
        for l in labels.iter() {
            let values = match self.by_name.get_mut(l.name.as_str()) {
                Some(v) => v,
                None => {
                    let n = self.symbols.intern(&l.name);
                    self.by_name.entry(n).or_default()
                }
            };
            match values.get_mut(l.value.as_str()) {
                Some(list) => insert_sorted(list, r),
                None => {
                    let v = self.symbols.intern(&l.value);
                    values.insert(v, vec![r]);
                }
            }
        }
        insert_sorted(&mut self.all, r);
    }

    /// Removes a set of series (the head's garbage collection).
    pub fn remove(&mut self, refs: &HashSet<SeriesRef>) {
        if refs.is_empty() {
            return;
        }
        self.all.retain(|r| !refs.contains(r));
        self.by_name.retain(|_, values| {
            values.retain(|_, list| {
                list.retain(|r| !refs.contains(r));
                !list.is_empty()
            });
            !values.is_empty()
        });
        self.symbols.gc();
    }

    /// All indexed series, sorted.
    pub fn all(&self) -> &[SeriesRef] {
        &self.all
    }

    pub fn num_series(&self) -> usize {
        self.all.len()
    }

    /// Number of distinct interned strings.
    pub fn num_symbols(&self) -> usize {
        self.symbols.len()
    }

    /// The sorted postings of one label pair.
    pub fn get(&self, name: &str, value: &str) -> &[SeriesRef] {
        self.by_name
            .get(name)
            .and_then(|vals| vals.get(value))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Sorted label names present in the index.
    pub fn label_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.by_name.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    /// Sorted values of `name` present in the index.
    /// Whether any indexed series has a label named `name`.
    pub fn has_label(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn label_values(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_name
            .get(name)
            .map(|vals| vals.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Union of the postings of the values of `name` for which `pred` holds.
    fn union_where(&self, name: &str, pred: impl Fn(&str) -> bool) -> Vec<SeriesRef> {
        let Some(values) = self.by_name.get(name) else {
            return Vec::new();
        };
        let lists: Vec<&[SeriesRef]> = values
            .iter()
            .filter(|(v, _)| pred(v))
            .map(|(_, l)| l.as_slice())
            .collect();
        union(&lists)
    }

    /// The series (sorted refs) selected by all `matchers`. No matchers selects all.
    pub fn select(&self, matchers: &[Matcher]) -> Vec<SeriesRef> {
        let mut result: Option<Vec<SeriesRef>> = None;
        // Matchers that do not match "" select among series that have the label.
        for m in matchers.iter().filter(|m| !m.matches_empty()) {
            let p = match m.op {
                MatchOp::Equal => self.get(&m.name, &m.value).to_vec(),
                _ => self.union_where(&m.name, |v| m.matches(v)),
            };
            result = Some(match result {
                None => p,
                Some(r) => intersect(&r, &p),
            });
            if result.as_ref().is_some_and(Vec::is_empty) {
                return Vec::new();
            }
        }
        // Matchers that match "" exclude series whose value of the label does not match.
        for m in matchers.iter().filter(|m| m.matches_empty()) {
            let excluded = match m.op {
                // `name!="v"` (v non-empty): exclude exactly name="v".
                MatchOp::NotEqual => self.get(&m.name, &m.value).to_vec(),
                _ => self.union_where(&m.name, |v| !m.matches(v)),
            };
            let base = result.take().unwrap_or_else(|| self.all.clone());
            result = Some(subtract(&base, &excluded));
        }
        result.unwrap_or_else(|| self.all.clone())
    }
}

fn insert_sorted(list: &mut Vec<SeriesRef>, r: SeriesRef) {
    match list.last() {
        Some(&last) if last >= r => {
            if let Err(i) = list.binary_search(&r) {
                list.insert(i, r);
            }
        }
        _ => list.push(r),
    }
}

/// Sorted, deduplicated union of sorted lists.
pub fn union(lists: &[&[SeriesRef]]) -> Vec<SeriesRef> {
    match lists.len() {
        0 => Vec::new(),
        1 => lists[0].to_vec(),
        _ => {
            let mut out: Vec<SeriesRef> = Vec::with_capacity(lists.iter().map(|l| l.len()).sum());
            for l in lists {
                out.extend_from_slice(l);
            }
            out.sort_unstable();
            out.dedup();
            out
        }
    }
}

/// Intersection of two sorted lists.
pub fn intersect(a: &[SeriesRef], b: &[SeriesRef]) -> Vec<SeriesRef> {
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// `a` minus `b`, both sorted.
pub fn subtract(a: &[SeriesRef], b: &[SeriesRef]) -> Vec<SeriesRef> {
    if b.is_empty() {
        return a.to_vec();
    }
    let mut out = Vec::with_capacity(a.len());
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if j < b.len() && b[j] == x {
            continue;
        }
        out.push(x);
    }
    out
}

/// Whether a label set satisfies all matchers (absent label = "").
pub fn labels_match(labels: &Labels, matchers: &[Matcher]) -> bool {
    matchers
        .iter()
        .all(|m| m.matches(labels.get(&m.name).unwrap_or("")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ls(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied()).unwrap()
    }

    fn m(op: MatchOp, n: &str, v: &str) -> Matcher {
        Matcher::new(op, n, v).unwrap()
    }

    fn index() -> (MemPostings, Vec<Labels>) {
        let series = vec![
            ls(&[("__name__", "up"), ("job", "a"), ("instance", "1")]),
            ls(&[("__name__", "up"), ("job", "b"), ("instance", "2")]),
            ls(&[("__name__", "up"), ("instance", "3")]),
            ls(&[("__name__", "http"), ("job", "a"), ("code", "200")]),
            ls(&[("__name__", "http"), ("job", "a"), ("code", "500")]),
        ];
        let mut p = MemPostings::new();
        for (i, s) in series.iter().enumerate() {
            p.add(i as u64, s);
        }
        (p, series)
    }

    #[test]
    fn matcher_semantics() {
        let (p, _) = index();
        use MatchOp::*;
        assert_eq!(p.select(&[m(Equal, "__name__", "up")]), vec![0, 1, 2]);
        assert_eq!(
            p.select(&[m(Equal, "__name__", "up"), m(Equal, "job", "")]),
            vec![2]
        );
        assert_eq!(
            p.select(&[m(Equal, "__name__", "up"), m(NotEqual, "job", "a")]),
            vec![1, 2]
        );
        assert_eq!(
            p.select(&[m(Equal, "__name__", "up"), m(NotEqual, "job", "")]),
            vec![0, 1]
        );
        assert_eq!(p.select(&[m(RegexMatch, "job", "a|b")]), vec![0, 1, 3, 4]);
        // Anchored: "a" does not match "ab"-like partials; ".*" matches absent labels too.
        assert_eq!(p.select(&[m(RegexMatch, "code", "2")]), Vec::<u64>::new());
        assert_eq!(
            p.select(&[m(Equal, "__name__", "up"), m(RegexMatch, "code", ".*")]),
            vec![0, 1, 2]
        );
        assert_eq!(
            p.select(&[m(Equal, "__name__", "http"), m(RegexNoMatch, "code", "5..")]),
            vec![3]
        );
        assert_eq!(
            p.select(&[m(RegexMatch, "job", "|b"), m(Equal, "__name__", "up")]),
            vec![1, 2]
        );
        assert_eq!(p.select(&[m(Equal, "nope", "x")]), Vec::<u64>::new());
        assert_eq!(p.select(&[]), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn remove_and_names() {
        let (mut p, _) = index();
        p.remove(&[3u64, 4].into_iter().collect());
        assert_eq!(p.label_names(), vec!["__name__", "instance", "job"]);
        assert_eq!(p.label_values("__name__"), vec!["up"]);
        assert_eq!(p.all(), &[0, 1, 2]);
        assert!(p.get("code", "200").is_empty());
    }

    proptest! {
        /// The index answers exactly as brute-force matching over the label sets.
        #[test]
        fn select_equals_brute_force(
            series in prop::collection::vec(
                prop::collection::btree_map("[abc]", "[xyz]{1,2}", 1..4), 1..30),
            ms in prop::collection::vec(
                (0usize..4, "[abcd]", "[xyz|.*]{0,3}"), 1..4),
        ) {
            let mut p = MemPostings::new();
            let labels: Vec<Labels> = series.iter()
                .map(|m| Labels::from_pairs(m.iter().map(|(k, v)| (k.clone(), v.clone()))).unwrap())
                .collect();
            for (i, l) in labels.iter().enumerate() {
                p.add(i as u64, l);
            }
            let ops = [MatchOp::Equal, MatchOp::NotEqual, MatchOp::RegexMatch, MatchOp::RegexNoMatch];
            let matchers: Vec<Matcher> = ms.iter()
                .filter_map(|(o, n, v)| Matcher::new(ops[*o], n.clone(), v.clone()).ok())
                .collect();
            let want: Vec<u64> = labels.iter().enumerate()
                .filter(|(_, l)| labels_match(l, &matchers))
                .map(|(i, _)| i as u64)
                .collect();
            prop_assert_eq!(p.select(&matchers), want);
        }
    }
}
