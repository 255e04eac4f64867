//! Arithmetic on [`FloatHistogram`]s with Prometheus's semantics (`model/histogram`
//! `float_histogram.go`): addition and subtraction across schemas (the result takes the
//! smaller, coarser schema) and zero thresholds (the result takes a zero bucket wide
//! enough for both), scaling, compaction, counter-reset detection, data equality, and
//! bucket iteration with boundaries.
//!
//! Internally a side's buckets are handled as a sorted list of `(index, count)` pairs:
//! merging two layouts, reducing a schema and dropping empty buckets are then plain list
//! operations, and spans are rebuilt once at the end. The rebuilt layout may differ from
//! Prometheus's in where empty buckets sit, never in which buckets exist or their counts;
//! [`FloatHistogram::equals`] and [`FloatHistogram::compact`] are insensitive to that.

use super::{CUSTOM_BUCKETS_SCHEMA, FloatHistogram, Span};
use crate::histogram::CounterResetHint;

/// Why two histograms cannot be combined. Texts are Prometheus's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HistogramOpError {
    #[error(
        "cannot apply this operation on histograms with a mix of exponential and custom bucket schemas"
    )]
    IncompatibleSchema,
    #[error(
        "cannot apply this operation on custom buckets histograms with different custom bounds"
    )]
    IncompatibleBounds,
}

/// One bucket with its boundaries, as Prometheus's `Bucket[float64]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub lower: f64,
    pub upper: f64,
    pub lower_inclusive: bool,
    pub upper_inclusive: bool,
    pub count: f64,
    /// Bucket index within its side (meaningless for the zero bucket).
    pub index: i32,
}

/// A side's buckets as `(index, count)` in ascending index order.
fn indexed(spans: &[Span], buckets: &[f64]) -> Vec<(i32, f64)> {
    let mut out = Vec::with_capacity(buckets.len());
    let mut idx: i32 = 0;
    let mut b = buckets.iter();
    for (n, s) in spans.iter().enumerate() {
        idx = if n == 0 {
            s.offset
        } else {
            idx.saturating_add(s.offset)
        };
        for _ in 0..s.length {
            match b.next() {
                Some(c) => out.push((idx, *c)),
                None => return out,
            }
            idx = idx.saturating_add(1);
        }
    }
    out
}

/// Spans and buckets for `(index, count)` pairs in ascending index order.
fn from_indexed(pairs: &[(i32, f64)]) -> (Vec<Span>, Vec<f64>) {
    let mut spans: Vec<Span> = Vec::new();
    let mut buckets = Vec::with_capacity(pairs.len());
    let mut next: Option<i32> = None;
    for &(idx, c) in pairs {
        match next {
            Some(n) if n == idx => {
                if let Some(last) = spans.last_mut() {
                    last.length += 1;
                }
            }
            Some(n) => spans.push(Span {
                offset: idx - n,
                length: 1,
            }),
            None => spans.push(Span {
                offset: idx,
                length: 1,
            }),
        }
        buckets.push(c);
        next = Some(idx + 1);
    }
    (spans, buckets)
}

/// The index in `target` schema of bucket `idx` in `origin` schema (`origin >= target`).
fn target_idx(idx: i32, origin: i32, target: i32) -> i32 {
    ((idx - 1) >> (origin - target)) + 1
}

/// Merges buckets of a side into the coarser `target` schema.
fn reduce(pairs: Vec<(i32, f64)>, origin: i32, target: i32) -> Vec<(i32, f64)> {
    if origin <= target {
        return pairs;
    }
    let mut out: Vec<(i32, f64)> = Vec::with_capacity(pairs.len());
    for (idx, c) in pairs {
        let t = target_idx(idx, origin, target);
        match out.last_mut() {
            Some(last) if last.0 == t => last.1 += c,
            _ => out.push((t, c)),
        }
    }
    out
}

/// Adds (or subtracts, `sign` = -1) `b` into `a`; both in ascending index order.
fn merge(a: &[(i32, f64)], b: &[(i32, f64)], sign: f64) -> Vec<(i32, f64)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                out.push((x.0, x.1 + sign * y.1));
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.0 < y.0 => {
                out.push(*x);
                i += 1;
            }
            (Some(x), None) => {
                out.push(*x);
                i += 1;
            }
            (_, Some(y)) => {
                out.push((y.0, sign * y.1));
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

/// The upper bound of exponential bucket `idx` in `schema`, as Prometheus's
/// `getBoundExponential` (the last finite bucket ends at `f64::MAX`). For schemas above
/// 0 the fraction is Prometheus's own value (see [`super::bounds`]), not `exp2`'s.
pub fn exponential_bound(idx: i32, schema: i32) -> f64 {
    if schema < 0 {
        let exp = i64::from(idx) << (-schema);
        if exp == 1024 {
            return f64::MAX;
        }
        return ldexp(1.0, exp);
    }
    let schema = schema.min(8);
    let frac_idx = (i64::from(idx) & ((1i64 << schema) - 1)) as u32;
    let frac = super::bounds::fraction(schema as u32, frac_idx);
    let exp = (i64::from(idx) >> schema) + 1;
    if frac == 0.5 && exp == 1025 {
        return f64::MAX;
    }
    ldexp(frac, exp)
}

/// `frac * 2^exp`, saturating to 0 or infinity like Go's `math.Ldexp`.
fn ldexp(frac: f64, exp: i64) -> f64 {
    if exp > 2100 {
        return f64::INFINITY * frac.signum();
    }
    if exp < -2200 {
        return 0.0;
    }
    // Two steps keep intermediate powers representable.
    let half = exp / 2;
    frac * 2f64.powi(half as i32) * 2f64.powi((exp - half) as i32)
}

/// Upper bound of bucket `idx` for a schema (custom bounds: `custom[idx]`, `+Inf` past
/// the last, `-Inf` before the first).
fn bound(idx: i32, schema: i32, custom: &[f64]) -> f64 {
    if schema == CUSTOM_BUCKETS_SCHEMA {
        if idx < 0 {
            return f64::NEG_INFINITY;
        }
        return custom.get(idx as usize).copied().unwrap_or(f64::INFINITY);
    }
    exponential_bound(idx, schema)
}

impl FloatHistogram {
    /// Whether the histogram has custom bucket boundaries (NHCB).
    pub fn uses_custom_buckets(&self) -> bool {
        self.schema == CUSTOM_BUCKETS_SCHEMA
    }

    /// Scales every count and the sum by `factor`.
    pub fn mul(&mut self, factor: f64) {
        self.zero_count *= factor;
        self.count *= factor;
        self.sum *= factor;
        self.positive_buckets.iter_mut().for_each(|b| *b *= factor);
        self.negative_buckets.iter_mut().for_each(|b| *b *= factor);
    }

    /// Divides every count and the sum by `scalar`; division by zero drops all buckets
    /// (and makes the counts infinite or NaN), as Prometheus does.
    pub fn div(&mut self, scalar: f64) {
        self.zero_count /= scalar;
        self.count /= scalar;
        self.sum /= scalar;
        if scalar == 0.0 {
            self.positive_buckets.clear();
            self.negative_buckets.clear();
            self.positive_spans.clear();
            self.negative_spans.clear();
            return;
        }
        self.positive_buckets.iter_mut().for_each(|b| *b /= scalar);
        self.negative_buckets.iter_mut().for_each(|b| *b /= scalar);
    }

    /// Adds `other` into `self` (see the module docs for schema and zero-bucket rules).
    pub fn add(&mut self, other: &FloatHistogram) -> Result<(), HistogramOpError> {
        self.combine(other, 1.0)
    }

    /// Subtracts `other` from `self`.
    pub fn sub(&mut self, other: &FloatHistogram) -> Result<(), HistogramOpError> {
        self.combine(other, -1.0)
    }

    fn combine(&mut self, other: &FloatHistogram, sign: f64) -> Result<(), HistogramOpError> {
        if self.uses_custom_buckets() != other.uses_custom_buckets() {
            return Err(HistogramOpError::IncompatibleSchema);
        }
        if self.uses_custom_buckets() && !floats_match(&self.custom_values, &other.custom_values) {
            return Err(HistogramOpError::IncompatibleBounds);
        }
        if sign > 0.0 {
            self.hint = match (self.hint, other.hint) {
                (a, b) if a == b => a,
                (CounterResetHint::Gauge, _) | (_, CounterResetHint::Gauge) => {
                    CounterResetHint::Gauge
                }
                _ => CounterResetHint::Unknown,
            };
        }
        self.count += sign * other.count;
        self.sum += sign * other.sum;
        if self.same_layout(other) {
            // The common case (consecutive samples of a series, its running sums): the
            // buckets line up one to one, as Prometheus's `addBuckets` finds them.
            self.zero_count += sign * other.zero_count;
            for (a, b) in self
                .positive_buckets
                .iter_mut()
                .zip(&other.positive_buckets)
            {
                *a += sign * b;
            }
            for (a, b) in self
                .negative_buckets
                .iter_mut()
                .zip(&other.negative_buckets)
            {
                *a += sign * b;
            }
            return Ok(());
        }
        self.combine_general(other, sign);
        Ok(())
    }

    /// Adds `sign * other` bucket by bucket after reconciling schemas and zero buckets
    /// (`self` and `other` already checked compatible; count and sum already added).
    fn combine_general(&mut self, other: &FloatHistogram, sign: f64) {
        if self.uses_custom_buckets() {
            let a = indexed(&self.positive_spans, &self.positive_buckets);
            let b = indexed(&other.positive_spans, &other.positive_buckets);
            (self.positive_spans, self.positive_buckets) = from_indexed(&merge(&a, &b, sign));
            return;
        }
        let other_zero = self.reconcile_zero_buckets(other);
        self.zero_count += sign * other_zero;
        let target = self.schema.min(other.schema);
        let threshold = self.zero_threshold;
        for positive in [true, false] {
            let (sa, ba, sb, bb) = if positive {
                (
                    &self.positive_spans,
                    &self.positive_buckets,
                    &other.positive_spans,
                    &other.positive_buckets,
                )
            } else {
                (
                    &self.negative_spans,
                    &self.negative_buckets,
                    &other.negative_spans,
                    &other.negative_buckets,
                )
            };
            let a = reduce(indexed(sa, ba), self.schema, target);
            // Buckets of `other` inside the (widened) zero bucket are already counted in
            // its zero count.
            let b: Vec<(i32, f64)> = reduce(indexed(sb, bb), other.schema, target)
                .into_iter()
                .skip_while(|(i, _)| threshold != 0.0 && exponential_bound(*i, target) <= threshold)
                .collect();
            let (s, bk) = from_indexed(&merge(&a, &b, sign));
            if positive {
                self.positive_spans = s;
                self.positive_buckets = bk;
            } else {
                self.negative_spans = s;
                self.negative_buckets = bk;
            }
        }
        self.schema = target;
    }

    /// Whether `other` has exactly `self`'s buckets (schema, zero threshold, spans and,
    /// for custom buckets, bounds; both sides) with none inside the zero bucket: then
    /// adding is bucket by bucket, and gives what the general path gives.
    fn same_layout(&self, other: &FloatHistogram) -> bool {
        if self.schema != other.schema
            || self.zero_threshold.to_bits() != other.zero_threshold.to_bits()
            || self.positive_spans != other.positive_spans
            || self.negative_spans != other.negative_spans
            || self.positive_buckets.len() != other.positive_buckets.len()
            || self.negative_buckets.len() != other.negative_buckets.len()
        {
            return false;
        }
        if self.uses_custom_buckets() {
            return floats_match(&self.custom_values, &other.custom_values);
        }
        if self.zero_threshold == 0.0 {
            return true;
        }
        // The bucket nearest zero on each side is the first one: it decides whether any
        // bucket lies inside the zero bucket.
        let outside = |spans: &[Span]| {
            spans
                .first()
                .is_none_or(|s| exponential_bound(s.offset, self.schema) > self.zero_threshold)
        };
        outside(&self.positive_spans) && outside(&self.negative_spans)
    }

    /// Widens `self`'s zero bucket until it covers `other`'s and sits on a boundary not
    /// inside a populated bucket of either; returns `other`'s zero count for that width.
    fn reconcile_zero_buckets(&mut self, other: &FloatHistogram) -> f64 {
        let mut other_count = other.zero_count;
        let mut other_threshold = other.zero_threshold;
        // Each round only widens; a threshold is bounded by the largest bucket bound.
        for _ in 0..10_000 {
            if other_threshold == self.zero_threshold {
                break;
            }
            if self.zero_threshold > other_threshold {
                (other_count, other_threshold) =
                    other.zero_count_for_larger_threshold(self.zero_threshold);
            }
            if other_threshold > self.zero_threshold {
                let (c, t) = self.zero_count_for_larger_threshold(other_threshold);
                self.zero_count = c;
                self.zero_threshold = t;
                self.trim_buckets_in_zero_bucket();
            }
        }
        other_count
    }

    /// The zero count for a zero threshold of at least `larger`, and the threshold itself
    /// (moved up to a bucket's upper bound when `larger` falls in a populated bucket).
    fn zero_count_for_larger_threshold(&self, larger: f64) -> (f64, f64) {
        if larger <= self.zero_threshold {
            return (self.zero_count, self.zero_threshold.max(larger));
        }
        let mut larger = larger;
        'outer: loop {
            let mut count = self.zero_count;
            for b in self.side_buckets(true) {
                if b.lower >= larger {
                    break;
                }
                count += b.count;
                if b.upper > larger {
                    if b.count != 0.0 {
                        larger = b.upper;
                    }
                    break;
                }
            }
            for b in self.side_buckets(false) {
                if b.upper <= -larger {
                    break;
                }
                count += b.count;
                if b.lower < -larger {
                    if b.count != 0.0 {
                        larger = -b.lower;
                        continue 'outer;
                    }
                    break;
                }
            }
            return (count, larger);
        }
    }

    /// Drops buckets lying inside the zero bucket (their counts are in the zero count).
    fn trim_buckets_in_zero_bucket(&mut self) {
        let t = self.zero_threshold;
        let schema = self.schema;
        for positive in [true, false] {
            let (spans, buckets) = if positive {
                (&mut self.positive_spans, &mut self.positive_buckets)
            } else {
                (&mut self.negative_spans, &mut self.negative_buckets)
            };
            let pairs: Vec<(i32, f64)> = indexed(spans, buckets)
                .into_iter()
                .filter(|(i, _)| exponential_bound(*i, schema) > t)
                .filter(|(_, c)| *c != 0.0)
                .collect();
            (*spans, *buckets) = from_indexed(&pairs);
        }
    }

    /// Removes empty buckets and merges adjacent spans (Prometheus's `Compact(0)`).
    pub fn compact(&mut self) {
        for positive in [true, false] {
            let (spans, buckets) = if positive {
                (&mut self.positive_spans, &mut self.positive_buckets)
            } else {
                (&mut self.negative_spans, &mut self.negative_buckets)
            };
            let pairs: Vec<(i32, f64)> = indexed(spans, buckets)
                .into_iter()
                .filter(|(_, c)| *c != 0.0)
                .collect();
            (*spans, *buckets) = from_indexed(&pairs);
        }
    }

    /// Merges buckets into the coarser `target` schema (no-op for custom buckets or when
    /// `target` is not smaller).
    pub fn reduce_resolution(&mut self, target: i32) {
        if self.uses_custom_buckets() || target >= self.schema {
            return;
        }
        let p = reduce(
            indexed(&self.positive_spans, &self.positive_buckets),
            self.schema,
            target,
        );
        let n = reduce(
            indexed(&self.negative_spans, &self.negative_buckets),
            self.schema,
            target,
        );
        (self.positive_spans, self.positive_buckets) = from_indexed(&p);
        (self.negative_spans, self.negative_buckets) = from_indexed(&n);
        self.schema = target;
    }

    /// Whether `self` follows `previous` only after a counter reset (Prometheus's
    /// `DetectReset`): a smaller count, a lost or shrunk populated bucket, a finer schema,
    /// a narrower zero bucket, or changed custom bounds. The hint decides when it is
    /// `CounterReset` or `NotCounterReset`.
    pub fn detect_reset(&self, previous: &FloatHistogram) -> bool {
        match self.hint {
            CounterResetHint::CounterReset => return true,
            CounterResetHint::NotCounterReset => return false,
            _ => {}
        }
        if self.count < previous.count {
            return true;
        }
        if self.uses_custom_buckets() != previous.uses_custom_buckets()
            || (self.uses_custom_buckets()
                && !floats_match(&self.custom_values, &previous.custom_values))
        {
            return true;
        }
        if self.schema > previous.schema || self.zero_threshold < previous.zero_threshold {
            return true;
        }
        let (prev_zero, threshold) = if self.uses_custom_buckets() {
            (previous.zero_count, self.zero_threshold)
        } else {
            previous.zero_count_for_larger_threshold(self.zero_threshold)
        };
        if threshold != self.zero_threshold || self.zero_count < prev_zero {
            return true;
        }
        for positive in [true, false] {
            let (cs, cb, ps, pb) = if positive {
                (
                    &self.positive_spans,
                    &self.positive_buckets,
                    &previous.positive_spans,
                    &previous.positive_buckets,
                )
            } else {
                (
                    &self.negative_spans,
                    &self.negative_buckets,
                    &previous.negative_spans,
                    &previous.negative_buckets,
                )
            };
            let skip = |pairs: Vec<(i32, f64)>| -> Vec<(i32, f64)> {
                if self.uses_custom_buckets() || self.zero_threshold == 0.0 {
                    return pairs;
                }
                pairs
                    .into_iter()
                    .skip_while(|(i, _)| exponential_bound(*i, self.schema) <= self.zero_threshold)
                    .collect()
            };
            let curr = skip(indexed(cs, cb));
            let prev = skip(reduce(indexed(ps, pb), previous.schema, self.schema));
            let mut j = 0;
            for (idx, pc) in prev {
                while j < curr.len() && curr[j].0 < idx {
                    j += 1;
                }
                match curr.get(j) {
                    Some((ci, cc)) if *ci == idx => {
                        if *cc < pc {
                            return true;
                        }
                    }
                    _ => {
                        if pc != 0.0 {
                            return true;
                        }
                    }
                }
            }
        }
        false
    }

    /// Data equality as Prometheus's `Equals`: same schema, zero bucket, custom bounds
    /// and the same buckets (empty ones included) with bit-identical counts; spans may
    /// differ in how they describe that layout. The reset hint is ignored.
    pub fn equals(&self, other: &FloatHistogram) -> bool {
        if self.schema != other.schema
            || self.count.to_bits() != other.count.to_bits()
            || self.sum.to_bits() != other.sum.to_bits()
        {
            return false;
        }
        if self.uses_custom_buckets() && !floats_match(&self.custom_values, &other.custom_values) {
            return false;
        }
        if self.zero_threshold != other.zero_threshold
            || self.zero_count.to_bits() != other.zero_count.to_bits()
        {
            return false;
        }
        let same = |a: Vec<(i32, f64)>, b: Vec<(i32, f64)>| {
            a.len() == b.len()
                && a.iter()
                    .zip(b.iter())
                    .all(|(x, y)| x.0 == y.0 && x.1.to_bits() == y.1.to_bits())
        };
        same(
            indexed(&self.positive_spans, &self.positive_buckets),
            indexed(&other.positive_spans, &other.positive_buckets),
        ) && same(
            indexed(&self.negative_spans, &self.negative_buckets),
            indexed(&other.negative_spans, &other.negative_buckets),
        )
    }

    /// The buckets of one side with their boundaries, from the zero bucket outwards
    /// (ascending for the positive side, descending values for the negative side).
    pub fn side_buckets(&self, positive: bool) -> Vec<Bucket> {
        let (spans, buckets) = if positive {
            (&self.positive_spans, &self.positive_buckets)
        } else {
            (&self.negative_spans, &self.negative_buckets)
        };
        let custom = self.uses_custom_buckets();
        indexed(spans, buckets)
            .into_iter()
            .map(|(idx, count)| {
                let hi = bound(idx, self.schema, &self.custom_values);
                let lo = bound(idx - 1, self.schema, &self.custom_values);
                let (lower, upper) = if positive { (lo, hi) } else { (-hi, -lo) };
                Bucket {
                    lower,
                    upper,
                    lower_inclusive: if custom { idx == 0 } else { lower < 0.0 },
                    upper_inclusive: if custom { true } else { upper > 0.0 },
                    count,
                    index: idx,
                }
            })
            .collect()
    }

    /// Every bucket in ascending order of value, as Prometheus's `AllBucketIterator`:
    /// negative buckets, the zero bucket (only when populated), positive buckets; a
    /// bucket overlapping the zero bucket has its inner bound moved to the threshold.
    pub fn all_buckets(&self) -> Vec<Bucket> {
        let mut out = self.side_buckets(false);
        out.reverse();
        let negatives = out.len();
        out.extend(self.side_buckets(true));
        let t = self.zero_threshold;
        for b in &mut out {
            if b.upper < 0.0 && b.upper > -t {
                b.upper = -t;
            } else if b.lower > 0.0 && b.lower < t {
                b.lower = t;
            }
        }
        if self.zero_count > 0.0 {
            let at = negatives;
            out.insert(
                at,
                Bucket {
                    lower: -self.zero_threshold,
                    upper: self.zero_threshold,
                    lower_inclusive: true,
                    upper_inclusive: true,
                    count: self.zero_count,
                    index: 0,
                },
            );
        }
        out
    }
}

/// Bit-wise equality of two float lists (Prometheus's `FloatBucketsMatch`).
pub fn floats_match(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fh(schema: i32, spans: &[(i32, u32)], buckets: &[f64]) -> FloatHistogram {
        FloatHistogram {
            schema,
            count: buckets.iter().sum(),
            sum: 10.0,
            positive_spans: spans
                .iter()
                .map(|(o, l)| Span {
                    offset: *o,
                    length: *l,
                })
                .collect(),
            positive_buckets: buckets.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn bounds_match_prometheus() {
        assert_eq!(exponential_bound(0, 0), 1.0);
        assert_eq!(exponential_bound(1, 0), 2.0);
        assert_eq!(exponential_bound(-1, 0), 0.5);
        // Prometheus takes these fractions from a fixed table whose entries may sit one
        // ulp from the computed power (see `exponential_bound`).
        assert!((exponential_bound(1, 1) - 2f64.sqrt()).abs() < 1e-15);
        assert_eq!(exponential_bound(2, 1), 2.0);
        assert_eq!(exponential_bound(1, -1), 4.0);
        assert_eq!(exponential_bound(1024, 0), f64::MAX);
        assert_eq!(exponential_bound(1025, 0), f64::INFINITY);
    }

    #[test]
    fn add_reduces_to_common_schema() {
        // Schema 1 buckets 1,2 (bounds (1,√2], (√2,2]) merge into schema 0 bucket 1.
        let mut a = fh(0, &[(0, 2)], &[1.0, 2.0]);
        let b = fh(1, &[(1, 2)], &[3.0, 4.0]);
        a.add(&b).unwrap();
        assert_eq!(a.schema, 0);
        assert_eq!(
            a.positive_spans,
            vec![Span {
                offset: 0,
                length: 2
            }]
        );
        assert_eq!(a.positive_buckets, vec![1.0, 9.0]);
        assert_eq!((a.count, a.sum), (10.0, 20.0));
        a.sub(&b).unwrap();
        assert_eq!(a.positive_buckets, vec![1.0, 2.0]);
    }

    #[test]
    fn add_widens_zero_bucket() {
        let mut a = fh(0, &[(0, 2)], &[1.0, 2.0]);
        a.zero_threshold = 0.001;
        let mut b = fh(0, &[(0, 2)], &[1.0, 1.0]);
        b.zero_threshold = 1.0;
        b.zero_count = 5.0;
        a.add(&b).unwrap();
        // a's bucket 0 ((0.5, 1]) moves into the zero bucket.
        assert_eq!(a.zero_threshold, 1.0);
        assert_eq!(a.zero_count, 6.0);
        assert_eq!(
            a.positive_spans,
            vec![Span {
                offset: 1,
                length: 1
            }]
        );
        assert_eq!(a.positive_buckets, vec![3.0]);
    }

    #[test]
    fn custom_buckets_must_match() {
        let mut a = fh(CUSTOM_BUCKETS_SCHEMA, &[(0, 2)], &[1.0, 2.0]);
        a.custom_values = vec![1.0];
        let mut b = a.clone();
        b.custom_values = vec![2.0];
        assert_eq!(a.add(&b), Err(HistogramOpError::IncompatibleBounds));
        assert_eq!(
            a.add(&fh(0, &[], &[])),
            Err(HistogramOpError::IncompatibleSchema)
        );
        let c = a.clone();
        a.add(&c).unwrap();
        assert_eq!(a.positive_buckets, vec![2.0, 4.0]);
        let b = a.side_buckets(true);
        assert_eq!((b[0].lower, b[0].upper), (f64::NEG_INFINITY, 1.0));
        assert_eq!((b[1].lower, b[1].upper), (1.0, f64::INFINITY));
    }

    #[test]
    fn compact_and_equals() {
        let mut a = fh(0, &[(0, 3), (2, 1)], &[0.0, 1.0, 0.0, 2.0]);
        let b = fh(0, &[(1, 1), (3, 1)], &[1.0, 2.0]);
        assert!(!a.equals(&b), "empty buckets count for equality");
        a.compact();
        assert_eq!(a.positive_spans, b.positive_spans);
        assert!(a.equals(&b));
        let split = fh(0, &[(1, 1), (0, 0), (3, 1)], &[1.0, 2.0]);
        assert!(split.equals(&b), "different spans, same layout");
    }

    #[test]
    fn resets() {
        let prev = fh(0, &[(0, 2)], &[1.0, 2.0]);
        let grown = fh(0, &[(0, 3)], &[1.0, 2.0, 1.0]);
        assert!(!grown.detect_reset(&prev));
        let lost = fh(0, &[(1, 2)], &[3.0, 1.0]);
        assert!(lost.detect_reset(&prev), "bucket 0 vanished");
        let coarser = fh(-1, &[(0, 2)], &[1.0, 4.0]);
        assert!(!coarser.detect_reset(&prev));
        let mut hinted = grown.clone();
        hinted.hint = CounterResetHint::CounterReset;
        assert!(hinted.detect_reset(&prev));
    }

    #[test]
    fn same_layout_fast_path_equals_the_general_merge() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for case in 0..500 {
            let schema = next(5) as i32 - 1;
            let spans = vec![
                Span {
                    offset: next(6) as i32 - 3,
                    length: 1 + next(4) as u32,
                },
                Span {
                    offset: next(3) as i32,
                    length: next(3) as u32,
                },
            ];
            let n = spans.iter().map(|s| s.length as usize).sum::<usize>();
            let mk = |next: &mut dyn FnMut(u64) -> u64| FloatHistogram {
                schema,
                zero_threshold: [0.0, 0.001, 0.9][case % 3],
                zero_count: next(10) as f64,
                count: 100.0,
                sum: next(1000) as f64,
                positive_spans: spans.clone(),
                positive_buckets: (0..n).map(|_| next(50) as f64).collect(),
                negative_spans: spans[..1].to_vec(),
                negative_buckets: (0..spans[0].length).map(|_| next(50) as f64).collect(),
                ..Default::default()
            };
            let (a, b) = (mk(&mut next), mk(&mut next));
            for sign in [1.0, -1.0] {
                let mut fast = a.clone();
                fast.combine(&b, sign).unwrap();
                let mut general = a.clone();
                general.count += sign * b.count;
                general.sum += sign * b.sum;
                general.combine_general(&b, sign);
                let key = |h: &FloatHistogram| {
                    let mut v: Vec<(i32, bool, u64)> = [true, false]
                        .iter()
                        .flat_map(|&p| {
                            h.side_buckets(p)
                                .into_iter()
                                .map(move |x| (x.index, p, x.count.to_bits()))
                        })
                        .filter(|x| f64::from_bits(x.2) != 0.0)
                        .collect();
                    v.sort();
                    (
                        v,
                        h.zero_count.to_bits(),
                        h.zero_threshold.to_bits(),
                        h.count.to_bits(),
                    )
                };
                assert_eq!(
                    key(&fast),
                    key(&general),
                    "case {case} sign {sign}: {a:?} {b:?}"
                );
            }
        }
    }
}
