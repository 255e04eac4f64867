//! The head's inverted index: for every label pair the sorted list of series refs that
//! carry it ("postings"), plus the set-algebra that answers label matchers with
//! Prometheus semantics.
//!
//! Semantics (as Prometheus's `PostingsForMatchers`): an absent label has the value `""`,
//! so a matcher that matches `""` (e.g. `foo=""`, `foo!="bar"`, `foo=~"|x"`) also selects
//! series without `foo`. Regexes are fully anchored (see [`storeapi::Matcher`]).
//!
//! Label names and values are stored once per distinct string (interned as `Arc<str>`),
//! however many series share them. Each list is delta-encoded ([`PostingList`]): refs
//! come from a counter, so neighbours in a list are usually close and a ref costs one or
//! two bytes instead of eight. At a million series with ten label pairs each that is
//! the difference between ~120 and ~15 bytes per series (issue #26).

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

/// A sorted, duplicate-free list of series refs, stored as LEB128 varints of the gaps
/// between neighbours (the first against 0). Appending a ref above the last is O(1);
/// anything else rebuilds the list, which the head never needs in steady state (it adds
/// refs in counter order) and garbage collection does once per truncation anyway.
#[derive(Debug, Default, Clone)]
pub struct PostingList {
    bytes: Vec<u8>,
    /// The largest ref (meaningless while empty).
    last: SeriesRef,
    len: usize,
}

impl PostingList {
    /// A list of one ref.
    pub fn single(r: SeriesRef) -> Self {
        let mut l = PostingList::default();
        l.push(r);
        l
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `r`, which must be greater than every ref in the list.
    fn push(&mut self, r: SeriesRef) {
        debug_assert!(self.len == 0 || r > self.last);
        let mut gap = if self.len == 0 { r } else { r - self.last };
        while gap >= 0x80 {
            self.bytes.push(gap as u8 | 0x80);
            gap >>= 7;
        }
        self.bytes.push(gap as u8);
        self.last = r;
        self.len += 1;
    }

    /// Adds `r` wherever it belongs (a no-op when present).
    pub fn insert(&mut self, r: SeriesRef) {
        if self.len == 0 || r > self.last {
            self.push(r);
            return;
        }
        let mut v = self.to_vec();
        if let Err(i) = v.binary_search(&r) {
            v.insert(i, r);
            *self = v.into_iter().collect();
        }
    }

    /// Keeps the refs for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(SeriesRef) -> bool) {
        if self.iter().all(&mut keep) {
            return;
        }
        *self = self.iter().filter(|&r| keep(r)).collect();
    }

    /// The refs in increasing order.
    pub fn iter(&self) -> PostingIter<'_> {
        PostingIter {
            bytes: &self.bytes,
            prev: 0,
        }
    }

    pub fn to_vec(&self) -> Vec<SeriesRef> {
        let mut v = Vec::with_capacity(self.len);
        v.extend(self.iter());
        v
    }
}

/// Builds a list from refs in increasing order.
impl FromIterator<SeriesRef> for PostingList {
    fn from_iter<I: IntoIterator<Item = SeriesRef>>(refs: I) -> Self {
        let mut l = PostingList::default();
        for r in refs {
            l.push(r);
        }
        l.bytes.shrink_to_fit();
        l
    }
}

/// Decodes a [`PostingList`].
#[derive(Debug, Clone)]
pub struct PostingIter<'a> {
    bytes: &'a [u8],
    prev: SeriesRef,
}

impl Iterator for PostingIter<'_> {
    type Item = SeriesRef;

    #[inline]
    fn next(&mut self) -> Option<SeriesRef> {
        let mut gap = 0u64;
        let mut shift = 0;
        loop {
            let (&b, rest) = self.bytes.split_first()?;
            self.bytes = rest;
            gap |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                break;
            }
            shift += 7;
        }
        self.prev += gap;
        Some(self.prev)
    }
}

/// Postings per label pair. Refs must be added in increasing order (the head hands out
/// refs from a counter), which keeps every list sorted without sorting.
#[derive(Debug, Default)]
pub struct MemPostings {
    by_name: HashMap<Arc<str>, HashMap<Arc<str>, PostingList>>,
    all: PostingList,
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
                Some(list) => list.insert(r),
                None => {
                    let v = self.symbols.intern(&l.value);
                    values.insert(v, PostingList::single(r));
                }
            }
        }
        self.all.insert(r);
    }

    /// Removes a set of series (the head's garbage collection).
    pub fn remove(&mut self, refs: &HashSet<SeriesRef>) {
        if refs.is_empty() {
            return;
        }
        self.all.retain(|r| !refs.contains(&r));
        self.by_name.retain(|_, values| {
            values.retain(|_, list| {
                list.retain(|r| !refs.contains(&r));
                !list.is_empty()
            });
            !values.is_empty()
        });
        self.symbols.gc();
    }

    /// All indexed series, sorted.
    pub fn all(&self) -> Vec<SeriesRef> {
        self.all.to_vec()
    }

    pub fn num_series(&self) -> usize {
        self.all.len()
    }

    /// Number of distinct interned strings.
    pub fn num_symbols(&self) -> usize {
        self.symbols.len()
    }

    /// The sorted postings of one label pair.
    pub fn get(&self, name: &str, value: &str) -> Vec<SeriesRef> {
        self.by_name
            .get(name)
            .and_then(|vals| vals.get(value))
            .map(PostingList::to_vec)
            .unwrap_or_default()
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
        let lists: Vec<&PostingList> = values
            .iter()
            .filter(|(v, _)| pred(v))
            .map(|(_, l)| l)
            .collect();
        match lists.as_slice() {
            [] => Vec::new(),
            [one] => one.to_vec(),
            _ => {
                let mut out: Vec<SeriesRef> =
                    Vec::with_capacity(lists.iter().map(|l| l.len()).sum());
                for l in lists {
                    out.extend(l.iter());
                }
                out.sort_unstable();
                out.dedup();
                out
            }
        }
    }

    /// The series (sorted refs) selected by all `matchers`. No matchers selects all.
    pub fn select(&self, matchers: &[Matcher]) -> Vec<SeriesRef> {
        let mut result: Option<Vec<SeriesRef>> = None;
        // Matchers that do not match "" select among series that have the label.
        for m in matchers.iter().filter(|m| !m.matches_empty()) {
            let p = match m.op {
                MatchOp::Equal => self.get(&m.name, &m.value),
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
                MatchOp::NotEqual => self.get(&m.name, &m.value),
                _ => self.union_where(&m.name, |v| !m.matches(v)),
            };
            let base = result.take().unwrap_or_else(|| self.all.to_vec());
            result = Some(subtract(&base, &excluded));
        }
        result.unwrap_or_else(|| self.all.to_vec())
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
        assert_eq!(p.all(), vec![0, 1, 2]);
        assert!(p.get("code", "200").is_empty());
    }

    #[test]
    fn posting_lists_take_a_byte_per_close_ref() {
        let l: PostingList = (1_000_000..1_010_000).collect();
        assert_eq!(l.len(), 10_000);
        // 3 bytes for the first ref, then one byte per gap.
        assert_eq!(l.bytes.len(), 3 + 9_999);
        assert_eq!(l.to_vec(), (1_000_000..1_010_000).collect::<Vec<_>>());
        let far = PostingList::from_iter([0, u64::MAX]);
        assert_eq!(far.to_vec(), vec![0, u64::MAX]);
    }

    proptest! {
        /// A posting list holds exactly the set of refs inserted, sorted, whatever the
        /// order of insertion, and `retain` removes exactly what it is told.
        #[test]
        fn posting_list_is_a_sorted_set(
            refs in prop::collection::vec(prop_oneof![0u64..300, any::<u64>()], 0..200),
            drop_mod in 1u64..5,
        ) {
            let mut l = PostingList::default();
            let mut want = std::collections::BTreeSet::new();
            for &r in &refs {
                l.insert(r);
                want.insert(r);
            }
            prop_assert_eq!(l.len(), want.len());
            prop_assert_eq!(l.to_vec(), want.iter().copied().collect::<Vec<_>>());
            l.retain(|r| r % drop_mod != 0);
            want.retain(|r| r % drop_mod != 0);
            prop_assert_eq!(l.len(), want.len());
            prop_assert_eq!(l.iter().collect::<Vec<_>>(), want.into_iter().collect::<Vec<_>>());
        }

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
