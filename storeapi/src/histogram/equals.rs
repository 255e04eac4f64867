//! Integer histogram equality as Prometheus 3.5.3's `Histogram.Equals` defines it
//! (`FloatHistogram::equals` is beside the float arithmetic): what the head compares when a histogram arrives
//! with the timestamp of the series' last one (identical → an ignored duplicate,
//! different → "duplicate sample for timestamp"). The counter-reset hint is not compared,
//! floats are compared bit for bit (so a stale marker equals a stale marker), custom
//! bounds only for the custom-buckets schema, and spans by the layout they describe
//! (zero-length spans folded into the next span).

use super::{CUSTOM_BUCKETS_SCHEMA, Histogram, Span};

/// The spans with every run of zero-length spans folded into the span after it, and
/// trailing zero-length spans dropped: two span lists describe the same layout exactly
/// when these agree.
fn folded(spans: &[Span]) -> impl Iterator<Item = (i32, u32)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let mut offset = 0i32;
        while let Some(s) = spans.get(i) {
            i += 1;
            offset = offset.wrapping_add(s.offset);
            if s.length > 0 {
                return Some((offset, s.length));
            }
        }
        None
    })
}

fn spans_match(a: &[Span], b: &[Span]) -> bool {
    folded(a).eq(folded(b))
}

fn floats_match(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

impl Histogram {
    /// Prometheus's `Histogram.Equals` (see the module docs).
    pub fn equals(&self, o: &Histogram) -> bool {
        self.schema == o.schema
            && self.count == o.count
            && self.sum.to_bits() == o.sum.to_bits()
            && (self.schema != CUSTOM_BUCKETS_SCHEMA
                || floats_match(&self.custom_values, &o.custom_values))
            && self.zero_threshold == o.zero_threshold
            && self.zero_count == o.zero_count
            && spans_match(&self.negative_spans, &o.negative_spans)
            && self.negative_buckets == o.negative_buckets
            && spans_match(&self.positive_spans, &o.positive_spans)
            && self.positive_buckets == o.positive_buckets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::{CounterResetHint, FloatHistogram};

    fn sp(v: &[(i32, u32)]) -> Vec<Span> {
        v.iter()
            .map(|&(offset, length)| Span { offset, length })
            .collect()
    }

    #[test]
    fn zero_length_spans_fold_into_the_next() {
        assert!(spans_match(
            &sp(&[(0, 2), (3, 1)]),
            &sp(&[(0, 2), (1, 0), (2, 1)])
        ));
        assert!(spans_match(&sp(&[(0, 2)]), &sp(&[(0, 2), (5, 0)])));
        assert!(spans_match(&[], &sp(&[(3, 0)])));
        assert!(!spans_match(&sp(&[(0, 2), (3, 1)]), &sp(&[(0, 2), (2, 1)])));
        assert!(!spans_match(&sp(&[(0, 2)]), &sp(&[(0, 3)])));
    }

    #[test]
    fn hint_is_ignored_values_are_not() {
        let a = Histogram {
            count: 3,
            sum: 1.5,
            positive_spans: sp(&[(0, 2)]),
            positive_buckets: vec![1, 1],
            ..Default::default()
        };
        let mut b = a.clone();
        b.hint = CounterResetHint::CounterReset;
        assert!(a.equals(&b));
        b.positive_buckets = vec![1, 0];
        assert!(!a.equals(&b));
        let stale = Histogram {
            sum: f64::from_bits(crate::STALE_NAN_BITS),
            ..Default::default()
        };
        assert!(stale.equals(&stale.clone()), "bitwise: NaN equals itself");
        let f = a.to_float();
        let mut g = f.clone();
        g.hint = CounterResetHint::NotCounterReset;
        assert!(f.equals(&g));
        g.count = 4.0;
        assert!(!f.equals(&g));
    }

    #[test]
    fn custom_values_count_only_for_custom_schema() {
        let a = FloatHistogram {
            schema: CUSTOM_BUCKETS_SCHEMA,
            custom_values: vec![1.0, 2.0],
            ..Default::default()
        };
        let mut b = a.clone();
        b.custom_values = vec![1.0, 3.0];
        assert!(!a.equals(&b));
        let mut c = a.clone();
        c.schema = 0;
        let mut d = c.clone();
        d.custom_values.clear();
        assert!(c.equals(&d));
    }
}
