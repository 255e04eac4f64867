//! Label sets: sorted by name, names unique, values non-empty.

use std::fmt;

use compact_str::CompactString;

/// The label that holds a series' metric name.
pub const METRIC_NAME: &str = "__name__";

/// One label pair. Names and values up to 24 bytes (nearly all of them) are stored
/// inline: building, cloning and dropping a label set allocates only its `Vec`, which
/// dominates the cost of the read path (decode, merge, evaluate) at 10⁵ series.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    pub name: CompactString,
    pub value: CompactString,
}

impl Label {
    pub fn new(name: impl Into<CompactString>, value: impl Into<CompactString>) -> Self {
        Label {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// Why a label set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("label set is empty")]
    Empty,
    #[error("invalid label name {0:?}")]
    InvalidName(String),
    #[error("empty value for label {0:?}")]
    EmptyValue(String),
    #[error("duplicate label name {0:?}")]
    Duplicate(String),
    #[error("labels are not sorted by name: {0:?} after {1:?}")]
    Unsorted(String, String),
}

/// A label set sorted by name. Comparison is lexicographic over (name, value) pairs,
/// which is Prometheus's `labels.Compare` order.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(Vec<Label>);

/// Whether `name` is a valid Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`).
pub fn is_valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `a == b`, with loads instead of a `memcmp` call up to 32 bytes: label strings are
/// short, and on the ingest path a call per label cost more than the compare (issue #26).
#[inline(always)]
pub fn short_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let w8 = |x: &[u8], at: usize| {
        x.get(at..at + 8)
            .map_or(0, |w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
    };
    let w4 = |x: &[u8], at: usize| {
        x.get(at..at + 4)
            .map_or(0, |w| u32::from_le_bytes(w.try_into().unwrap_or([0; 4])))
    };
    let w16 = |x: &[u8], at: usize| {
        x.get(at..at + 16)
            .map_or(0, |w| u128::from_le_bytes(w.try_into().unwrap_or([0; 16])))
    };
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => (w4(a, 0) ^ w4(b, 0)) | (w4(a, n - 4) ^ w4(b, n - 4)) == 0,
        8..=16 => (w8(a, 0) ^ w8(b, 0)) | (w8(a, n - 8) ^ w8(b, n - 8)) == 0,
        17..=32 => (w16(a, 0) ^ w16(b, 0)) | (w16(a, n - 16) ^ w16(b, n - 16)) == 0,
        _ => a == b,
    }
}

impl Labels {
    /// An empty label set (valid only as an intermediate, e.g. after PromQL drops names).
    pub fn empty() -> Self {
        Labels(Vec::new())
    }

    /// Sorts `labels` by name; refuses duplicates. Empty values are dropped, as
    /// Prometheus treats `foo=""` as the absence of `foo`.
    pub fn from_unsorted(mut labels: Vec<Label>) -> Result<Self, LabelError> {
        labels.retain(|l| !l.value.is_empty());
        labels.sort();
        for w in labels.windows(2) {
            if w[0].name == w[1].name {
                return Err(LabelError::Duplicate(w[0].name.to_string()));
            }
        }
        Ok(Labels(labels))
    }

    /// Wraps pairs that must already be sorted, unique and non-empty (as a remote-write
    /// client must send them); checks names too.
    pub fn from_sorted_checked(labels: Vec<Label>) -> Result<Self, LabelError> {
        if labels.is_empty() {
            return Err(LabelError::Empty);
        }
        for (i, l) in labels.iter().enumerate() {
            if !is_valid_label_name(&l.name) {
                return Err(LabelError::InvalidName(l.name.to_string()));
            }
            if l.value.is_empty() {
                return Err(LabelError::EmptyValue(l.name.to_string()));
            }
            if i > 0 {
                let prev = &labels[i - 1].name;
                if *prev == l.name {
                    return Err(LabelError::Duplicate(l.name.to_string()));
                }
                if *prev > l.name {
                    return Err(LabelError::Unsorted(l.name.to_string(), prev.to_string()));
                }
            }
        }
        Ok(Labels(labels))
    }

    /// Builds from `(name, value)` pairs in any order (test and literal convenience).
    pub fn from_pairs<N: Into<CompactString>, V: Into<CompactString>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Result<Self, LabelError> {
        Self::from_unsorted(pairs.into_iter().map(|(n, v)| Label::new(n, v)).collect())
    }

    /// Wraps already sorted, unique pairs without checking (internal fast path).
    pub fn from_sorted_unchecked(labels: Vec<Label>) -> Self {
        debug_assert!(labels.windows(2).all(|w| w[0].name < w[1].name));
        Labels(labels)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|l| l.name.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].value.as_str())
    }

    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Label> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[Label] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<Label> {
        self.0
    }

    /// Sets `name` to `value` (removing it when `value` is empty), keeping the order.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.0.binary_search_by(|l| l.name.as_str().cmp(name)) {
            Ok(i) if value.is_empty() => {
                self.0.remove(i);
            }
            Ok(i) => self.0[i].value = value.into(),
            Err(_) if value.is_empty() => {}
            Err(i) => self.0.insert(i, Label::new(name, value)),
        }
    }

    /// Removes `name` if present.
    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.0.binary_search_by(|l| l.name.as_str().cmp(name)) {
            self.0.remove(i);
        }
    }

    /// Keeps only labels for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&Label) -> bool) {
        self.0.retain(|l| keep(l));
    }

    /// Adds `ext` labels; on a name clash the external label wins (Thanos's rule).
    pub fn extend_external(&mut self, ext: &Labels) {
        for l in ext.iter() {
            self.set(&l.name, &l.value);
        }
    }
}

impl fmt::Display for Labels {
    /// Prometheus's `{a="b", c="d"}` form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, l) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}={:?}", l.name, l.value)?;
        }
        f.write_str("}")
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = &'a Label;
    type IntoIter = std::slice::Iter<'a, Label>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_compares_agree_with_slices() {
        let words: Vec<Vec<u8>> = (0..=40)
            .flat_map(|n| {
                let base: Vec<u8> = (0..n as u8).map(|i| b'a' + i).collect();
                let mut out = vec![base.clone()];
                for at in 0..n {
                    let mut v = base.clone();
                    v[at] = b'Z';
                    out.push(v);
                }
                out
            })
            .collect();
        for a in &words {
            for b in &words {
                assert_eq!(short_eq(a, b), a == b, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn sorts_and_drops_empty_values() {
        let l = Labels::from_pairs([("b", "2"), ("a", "1"), ("c", "")]).unwrap();
        assert_eq!(l.to_string(), r#"{a="1", b="2"}"#);
    }

    #[test]
    fn refuses_duplicates_and_bad_names() {
        assert_eq!(
            Labels::from_pairs([("a", "1"), ("a", "2")]),
            Err(LabelError::Duplicate("a".into()))
        );
        let bad = vec![Label::new("1x", "v")];
        assert_eq!(
            Labels::from_sorted_checked(bad),
            Err(LabelError::InvalidName("1x".into()))
        );
        let unsorted = vec![Label::new("b", "v"), Label::new("a", "v")];
        assert!(matches!(
            Labels::from_sorted_checked(unsorted),
            Err(LabelError::Unsorted(..))
        ));
    }

    #[test]
    fn external_labels_win() {
        let mut l = Labels::from_pairs([("a", "1"), ("z", "9")]).unwrap();
        l.extend_external(&Labels::from_pairs([("a", "ext"), ("m", "5")]).unwrap());
        assert_eq!(l.to_string(), r#"{a="ext", m="5", z="9"}"#);
    }
}
