//! Native histograms: the one data model the wire decoders, the chunk codecs, the TSDB
//! and the PromQL engine share, so a histogram is never converted between look-alike
//! types on its way from a remote-write request to a query answer.
//!
//! Two flavours exist, as in Prometheus: [`Histogram`] holds integer counts with the
//! buckets delta-encoded (what scrapes, remote write and `HISTOGRAM` chunks carry) and
//! [`FloatHistogram`] holds absolute float counts (what PromQL computes on, and what
//! `FLOAT_HISTOGRAM` chunks carry). [`Histogram::to_float`] converts one way; there is
//! deliberately no lossy way back.
//!
//! Validation follows Prometheus's `Validate` (model/histogram) with its error texts, and
//! in addition bounds the schema (Prometheus 3.5.3 does not, later versions do): a
//! client controls every field, so a schema of 10⁹ must be a clear 4xx, not a codec
//! that later computes `2^(2^-schema)`.

use std::fmt;

mod bounds;
mod equals;
mod float_ops;
pub mod pool;
pub use float_ops::{Bucket, HistogramOpError, exponential_bound, floats_match};

/// The schema of histograms with custom bucket boundaries (NHCB): bucket `i`'s upper
/// bound is `custom_values[i]`, the bucket after the last bound is `+Inf`.
pub const CUSTOM_BUCKETS_SCHEMA: i32 = -53;
/// Smallest exponential schema (bucket boundary ratio 2^16).
pub const EXPONENTIAL_SCHEMA_MIN: i32 = -4;
/// Largest exponential schema (bucket boundary ratio 2^(1/256)).
pub const EXPONENTIAL_SCHEMA_MAX: i32 = 8;

/// Whether `schema` is one Prometheus can store and compute on.
pub fn is_valid_schema(schema: i32) -> bool {
    schema == CUSTOM_BUCKETS_SCHEMA
        || (EXPONENTIAL_SCHEMA_MIN..=EXPONENTIAL_SCHEMA_MAX).contains(&schema)
}

/// A run of consecutive buckets. The first span's `offset` is the index of its first
/// bucket (may be negative); a later span's offset is the number of buckets skipped
/// since the previous span (never negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub offset: i32,
    pub length: u32,
}

/// What the writer knows about a counter reset at this sample (remote write's
/// `reset_hint`, the chunk header's flag bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum CounterResetHint {
    /// Nothing known: a reader compares with the previous sample.
    #[default]
    Unknown = 0,
    /// The counter was reset at this sample.
    CounterReset = 1,
    /// The counter was not reset since the previous sample.
    NotCounterReset = 2,
    /// A gauge histogram: resets are meaningless.
    Gauge = 3,
}

impl CounterResetHint {
    /// The remote-write enum value (`UNKNOWN`=0, `YES`=1, `NO`=2, `GAUGE`=3); unknown
    /// numbers map to `Unknown`, as proto3 readers treat unrecognised enum values.
    pub fn from_proto(v: i32) -> Self {
        match v {
            1 => Self::CounterReset,
            2 => Self::NotCounterReset,
            3 => Self::Gauge,
            _ => Self::Unknown,
        }
    }
}

/// A histogram with integer counts; bucket counts are delta-encoded (the first bucket of
/// a side is absolute, each next one is the difference to its predecessor).
#[derive(Debug, PartialEq, Default)]
pub struct Histogram {
    pub hint: CounterResetHint,
    pub schema: i32,
    pub zero_threshold: f64,
    pub zero_count: u64,
    pub count: u64,
    pub sum: f64,
    pub positive_spans: Vec<Span>,
    pub negative_spans: Vec<Span>,
    pub positive_buckets: Vec<i64>,
    pub negative_buckets: Vec<i64>,
    /// Upper bounds of the custom buckets; only for [`CUSTOM_BUCKETS_SCHEMA`].
    pub custom_values: Vec<f64>,
}

/// A histogram with float counts; bucket counts are absolute.
#[derive(Debug, PartialEq, Default)]
pub struct FloatHistogram {
    pub hint: CounterResetHint,
    pub schema: i32,
    pub zero_threshold: f64,
    pub zero_count: f64,
    pub count: f64,
    pub sum: f64,
    pub positive_spans: Vec<Span>,
    pub negative_spans: Vec<Span>,
    pub positive_buckets: Vec<f64>,
    pub negative_buckets: Vec<f64>,
    /// Upper bounds of the custom buckets; only for [`CUSTOM_BUCKETS_SCHEMA`].
    pub custom_values: Vec<f64>,
}

/// `Clone` by hand for `clone_from`: the derived one allocates every vector anew, and
/// the head keeps each series' last histogram by `clone_from` on every append.
macro_rules! histogram_clone {
    ($t:ty) => {
        impl Clone for $t {
            fn clone(&self) -> Self {
                Self {
                    hint: self.hint,
                    schema: self.schema,
                    zero_threshold: self.zero_threshold,
                    zero_count: self.zero_count,
                    count: self.count,
                    sum: self.sum,
                    positive_spans: self.positive_spans.clone(),
                    negative_spans: self.negative_spans.clone(),
                    positive_buckets: self.positive_buckets.clone(),
                    negative_buckets: self.negative_buckets.clone(),
                    custom_values: self.custom_values.clone(),
                }
            }

            fn clone_from(&mut self, o: &Self) {
                self.hint = o.hint;
                self.schema = o.schema;
                self.zero_threshold = o.zero_threshold;
                self.zero_count = o.zero_count;
                self.count = o.count;
                self.sum = o.sum;
                self.positive_spans.clone_from(&o.positive_spans);
                self.negative_spans.clone_from(&o.negative_spans);
                self.positive_buckets.clone_from(&o.positive_buckets);
                self.negative_buckets.clone_from(&o.negative_buckets);
                self.custom_values.clone_from(&o.custom_values);
            }
        }
    };
}
histogram_clone!(Histogram);
histogram_clone!(FloatHistogram);

/// Why a histogram is not acceptable. The texts are Prometheus's, so a client sees the
/// message it would get from Prometheus's own receiver.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HistogramError {
    #[error(
        "histogram has an invalid schema, which must be between {EXPONENTIAL_SCHEMA_MIN} and {EXPONENTIAL_SCHEMA_MAX} for exponential buckets, or {CUSTOM_BUCKETS_SCHEMA} for custom buckets, got schema {0}"
    )]
    InvalidSchema(i32),
    #[error(
        "{side} side: span number {number} with offset {offset}: histogram has a span whose offset is negative"
    )]
    SpanNegativeOffset {
        side: Side,
        number: usize,
        offset: i32,
    },
    #[error(
        "{side} side: spans need {need} buckets, have {have} buckets: histogram spans specify different number of buckets than provided"
    )]
    SpansBucketsMismatch { side: Side, need: u64, have: usize },
    #[error(
        "{side} side: bucket number {number} has observation count of {count}: histogram has a bucket whose observation count is negative"
    )]
    NegativeBucketCount {
        side: Side,
        number: usize,
        count: f64,
    },
    #[error(
        "zero bucket has observation count of {0}: histogram has a bucket whose observation count is negative"
    )]
    NegativeZeroCount(f64),
    #[error("observation count is {0}: histogram's observation count is negative")]
    NegativeCount(f64),
    #[error(
        "{found} observations found in buckets, but the Count field is {count}: histogram's observation count should equal the number of observations found in the buckets (in absence of NaN)"
    )]
    CountMismatch { found: u64, count: u64 },
    #[error(
        "{found} observations found in buckets, but the Count field is {count}: histogram's observation count should be at least the number of observations found in the buckets"
    )]
    CountNotBigEnough { found: u64, count: u64 },
    #[error("histogram with exponential schema must not have custom bounds")]
    ExpSchemaCustomBounds,
    #[error("custom buckets: histogram custom bounds must not be NaN")]
    CustomBoundNaN,
    #[error(
        "custom buckets: previous bound is {prev} and current is {curr}: histogram custom bounds must be in strictly increasing order"
    )]
    CustomBoundsNotIncreasing { prev: f64, curr: f64 },
    #[error(
        "custom buckets: last +Inf bound must not be explicitly defined: histogram custom bounds must be finite"
    )]
    CustomBoundInfinite,
    #[error(
        "custom buckets: only {bounds} custom bounds defined which is insufficient to cover total span length of {span_length}: histogram custom bounds are too few"
    )]
    CustomBoundsTooFew { bounds: usize, span_length: u64 },
    #[error("custom buckets: must have zero count of 0")]
    CustomBucketsZeroCount,
    #[error("custom buckets: must have zero threshold of 0")]
    CustomBucketsZeroThreshold,
    #[error("custom buckets: must not have negative spans")]
    CustomBucketsNegativeSpans,
    #[error("custom buckets: must not have negative buckets")]
    CustomBucketsNegativeBuckets,
}

/// Which side of the zero bucket an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Positive,
    Negative,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Positive => "positive",
            Side::Negative => "negative",
        })
    }
}

/// Spans against a bucket count, as Prometheus's `checkHistogramSpans`; custom-bucket
/// histograms also forbid a negative first offset and need enough bounds.
fn check_spans(
    side: Side,
    spans: &[Span],
    buckets: usize,
    custom: bool,
) -> Result<u64, HistogramError> {
    let mut need = 0u64;
    let mut total_length = 0u64;
    for (n, s) in spans.iter().enumerate() {
        if (n > 0 || custom) && s.offset < 0 {
            return Err(HistogramError::SpanNegativeOffset {
                side,
                number: n + 1,
                offset: s.offset,
            });
        }
        need += u64::from(s.length);
        total_length += u64::from(s.length) + s.offset.max(0) as u64;
    }
    if need != buckets as u64 {
        return Err(HistogramError::SpansBucketsMismatch {
            side,
            need,
            have: buckets,
        });
    }
    Ok(total_length)
}

fn check_custom_bounds(h_bounds: &[f64], span_length: u64) -> Result<(), HistogramError> {
    let mut prev = f64::NEG_INFINITY;
    for (i, &curr) in h_bounds.iter().enumerate() {
        if curr.is_nan() {
            return Err(HistogramError::CustomBoundNaN);
        }
        if i > 0 && curr <= prev {
            return Err(HistogramError::CustomBoundsNotIncreasing { prev, curr });
        }
        prev = curr;
    }
    if prev == f64::INFINITY {
        return Err(HistogramError::CustomBoundInfinite);
    }
    if (h_bounds.len() as u64 + 1) < span_length {
        return Err(HistogramError::CustomBoundsTooFew {
            bounds: h_bounds.len(),
            span_length,
        });
    }
    Ok(())
}

/// The checks both flavours share: schema, spans, custom bounds, zero bucket. Returns
/// nothing; bucket counts are checked per flavour.
#[allow(clippy::too_many_arguments)]
fn check_layout(
    schema: i32,
    positive_spans: &[Span],
    positive_buckets: usize,
    negative_spans: &[Span],
    negative_buckets: usize,
    custom_values: &[f64],
    zero_count_is_zero: bool,
    zero_threshold: f64,
) -> Result<(), HistogramError> {
    if schema == CUSTOM_BUCKETS_SCHEMA {
        let length = check_spans(Side::Positive, positive_spans, positive_buckets, true)?;
        check_custom_bounds(custom_values, length)?;
        if !zero_count_is_zero {
            return Err(HistogramError::CustomBucketsZeroCount);
        }
        if zero_threshold != 0.0 {
            return Err(HistogramError::CustomBucketsZeroThreshold);
        }
        if !negative_spans.is_empty() {
            return Err(HistogramError::CustomBucketsNegativeSpans);
        }
        if negative_buckets > 0 {
            return Err(HistogramError::CustomBucketsNegativeBuckets);
        }
        Ok(())
    } else if is_valid_schema(schema) {
        check_spans(Side::Positive, positive_spans, positive_buckets, false)?;
        check_spans(Side::Negative, negative_spans, negative_buckets, false)?;
        if !custom_values.is_empty() {
            return Err(HistogramError::ExpSchemaCustomBounds);
        }
        Ok(())
    } else {
        Err(HistogramError::InvalidSchema(schema))
    }
}

/// Sums delta-encoded buckets, failing on a negative absolute count or an overflow.
fn sum_delta_buckets(side: Side, deltas: &[i64]) -> Result<u64, HistogramError> {
    let mut last = 0i64;
    let mut total = 0u64;
    for (i, d) in deltas.iter().enumerate() {
        let c = last.checked_add(*d).filter(|c| *c >= 0).ok_or(
            HistogramError::NegativeBucketCount {
                side,
                number: i + 1,
                count: last as f64 + *d as f64,
            },
        )?;
        total = total.saturating_add(c as u64);
        last = c;
    }
    Ok(total)
}

impl Histogram {
    /// Whether this is the stale marker (a histogram whose sum is the StaleNaN pattern).
    pub fn is_stale(&self) -> bool {
        crate::is_stale_nan(self.sum)
    }

    /// Prometheus's `Histogram.Validate`, plus the schema range.
    pub fn validate(&self) -> Result<(), HistogramError> {
        check_layout(
            self.schema,
            &self.positive_spans,
            self.positive_buckets.len(),
            &self.negative_spans,
            self.negative_buckets.len(),
            &self.custom_values,
            self.zero_count == 0,
            self.zero_threshold,
        )?;
        let n = sum_delta_buckets(Side::Negative, &self.negative_buckets)?;
        let p = sum_delta_buckets(Side::Positive, &self.positive_buckets)?;
        let found = n.saturating_add(p).saturating_add(self.zero_count);
        if self.sum.is_nan() {
            if found > self.count {
                return Err(HistogramError::CountNotBigEnough {
                    found,
                    count: self.count,
                });
            }
        } else if found != self.count {
            return Err(HistogramError::CountMismatch {
                found,
                count: self.count,
            });
        }
        Ok(())
    }

    /// The same histogram with absolute float counts.
    pub fn to_float(&self) -> FloatHistogram {
        fn absolute(deltas: &[i64]) -> Vec<f64> {
            let mut last = 0i64;
            deltas
                .iter()
                .map(|d| {
                    last = last.wrapping_add(*d);
                    last as f64
                })
                .collect()
        }
        FloatHistogram {
            hint: self.hint,
            schema: self.schema,
            zero_threshold: self.zero_threshold,
            zero_count: self.zero_count as f64,
            count: self.count as f64,
            sum: self.sum,
            positive_spans: self.positive_spans.clone(),
            negative_spans: self.negative_spans.clone(),
            positive_buckets: absolute(&self.positive_buckets),
            negative_buckets: absolute(&self.negative_buckets),
            custom_values: self.custom_values.clone(),
        }
    }

    /// Number of bucket values on both sides (what a bucket limit bounds).
    pub fn num_buckets(&self) -> usize {
        self.positive_buckets.len() + self.negative_buckets.len()
    }
}

impl FloatHistogram {
    /// Whether this is the stale marker (a histogram whose sum is the StaleNaN pattern).
    pub fn is_stale(&self) -> bool {
        crate::is_stale_nan(self.sum)
    }

    /// Prometheus's `FloatHistogram.Validate`, plus the schema range. Unlike the integer
    /// flavour, the count need not equal the buckets' sum.
    pub fn validate(&self) -> Result<(), HistogramError> {
        check_layout(
            self.schema,
            &self.positive_spans,
            self.positive_buckets.len(),
            &self.negative_spans,
            self.negative_buckets.len(),
            &self.custom_values,
            self.zero_count == 0.0,
            self.zero_threshold,
        )?;
        for (side, buckets) in [
            (Side::Negative, &self.negative_buckets),
            (Side::Positive, &self.positive_buckets),
        ] {
            if let Some((i, c)) = buckets.iter().enumerate().find(|(_, c)| **c < 0.0) {
                return Err(HistogramError::NegativeBucketCount {
                    side,
                    number: i + 1,
                    count: *c,
                });
            }
        }
        if self.zero_count < 0.0 {
            return Err(HistogramError::NegativeZeroCount(self.zero_count));
        }
        if self.count < 0.0 {
            return Err(HistogramError::NegativeCount(self.count));
        }
        Ok(())
    }

    /// Number of bucket values on both sides (what a bucket limit bounds).
    pub fn num_buckets(&self) -> usize {
        self.positive_buckets.len() + self.negative_buckets.len()
    }
}

/// One histogram sample of either flavour, as a series holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum HistogramValue {
    Int(Box<Histogram>),
    Float(Box<FloatHistogram>),
}

impl HistogramValue {
    /// The float view PromQL computes on.
    pub fn to_float(&self) -> FloatHistogram {
        match self {
            HistogramValue::Int(h) => h.to_float(),
            HistogramValue::Float(h) => (**h).clone(),
        }
    }

    pub fn validate(&self) -> Result<(), HistogramError> {
        match self {
            HistogramValue::Int(h) => h.validate(),
            HistogramValue::Float(h) => h.validate(),
        }
    }

    pub fn hint(&self) -> CounterResetHint {
        match self {
            HistogramValue::Int(h) => h.hint,
            HistogramValue::Float(h) => h.hint,
        }
    }

    /// Sets a counter histogram's hint to `Unknown` (gauges keep theirs): what a
    /// sample's hint must become when the sample before it came from another chunk or
    /// replica, since `NotCounterReset`/`CounterReset` only speak of the previous sample
    /// of the same chunk (Prometheus's merge iterators do the same).
    pub fn forget_counter_reset_hint(&mut self) {
        let hint = match self {
            HistogramValue::Int(h) => &mut h.hint,
            HistogramValue::Float(h) => &mut h.hint,
        };
        if *hint != CounterResetHint::Gauge {
            *hint = CounterResetHint::Unknown;
        }
    }
}

/// A histogram sample: milliseconds since the epoch and a histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSample {
    pub t: i64,
    pub h: HistogramValue,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int_hist() -> Histogram {
        // Buckets 0,1 and 3 with counts 2, 1, 3 (deltas 2, -1, 2); zero bucket 1.
        Histogram {
            schema: 0,
            zero_threshold: 1e-128,
            zero_count: 1,
            count: 7,
            sum: 12.5,
            positive_spans: vec![
                Span {
                    offset: 0,
                    length: 2,
                },
                Span {
                    offset: 1,
                    length: 1,
                },
            ],
            positive_buckets: vec![2, -1, 2],
            ..Default::default()
        }
    }

    #[test]
    fn valid_integer_histogram_converts_to_absolute_counts() {
        let h = int_hist();
        assert_eq!(h.validate(), Ok(()));
        let f = h.to_float();
        assert_eq!(f.positive_buckets, vec![2.0, 1.0, 3.0]);
        assert_eq!((f.count, f.zero_count, f.sum), (7.0, 1.0, 12.5));
        assert_eq!(f.validate(), Ok(()));
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let mut h = int_hist();
        h.count = 8;
        assert_eq!(
            h.validate(),
            Err(HistogramError::CountMismatch { found: 7, count: 8 })
        );
        h.sum = f64::NAN;
        assert_eq!(
            h.validate(),
            Ok(()),
            "a NaN sum allows more observations than buckets"
        );
        h.count = 6;
        assert_eq!(
            h.validate(),
            Err(HistogramError::CountNotBigEnough { found: 7, count: 6 })
        );

        let mut h = int_hist();
        h.positive_buckets.push(1);
        assert!(matches!(
            h.validate(),
            Err(HistogramError::SpansBucketsMismatch {
                need: 3,
                have: 4,
                ..
            })
        ));

        let mut h = int_hist();
        h.positive_buckets = vec![2, -3, 2];
        assert!(matches!(
            h.validate(),
            Err(HistogramError::NegativeBucketCount { number: 2, .. })
        ));

        let mut h = int_hist();
        h.positive_spans[1].offset = -1;
        let e = h.validate().unwrap_err();
        assert!(
            e.to_string().contains("span number 2 with offset -1"),
            "{e}"
        );

        let mut h = int_hist();
        h.schema = 1_000_000;
        assert_eq!(h.validate(), Err(HistogramError::InvalidSchema(1_000_000)));
        h.schema = 9;
        assert_eq!(h.validate(), Err(HistogramError::InvalidSchema(9)));

        let mut h = int_hist();
        h.positive_buckets = vec![i64::MAX, i64::MAX, 0];
        assert!(matches!(
            h.validate(),
            Err(HistogramError::NegativeBucketCount { number: 2, .. })
        ));
    }

    #[test]
    fn custom_bucket_rules() {
        let nhcb = Histogram {
            schema: CUSTOM_BUCKETS_SCHEMA,
            count: 3,
            sum: 1.0,
            positive_spans: vec![Span {
                offset: 0,
                length: 3,
            }],
            positive_buckets: vec![1, 0, 0],
            custom_values: vec![0.1, 1.0],
            ..Default::default()
        };
        assert_eq!(
            nhcb.validate(),
            Ok(()),
            "two bounds cover three buckets (+Inf last)"
        );
        let mut h = nhcb.clone();
        h.custom_values = vec![0.1];
        assert!(matches!(
            h.validate(),
            Err(HistogramError::CustomBoundsTooFew {
                bounds: 1,
                span_length: 3
            })
        ));
        let mut h = nhcb.clone();
        h.custom_values = vec![1.0, 0.1];
        assert!(matches!(
            h.validate(),
            Err(HistogramError::CustomBoundsNotIncreasing { .. })
        ));
        let mut h = nhcb.clone();
        h.custom_values = vec![0.1, f64::INFINITY];
        assert_eq!(h.validate(), Err(HistogramError::CustomBoundInfinite));
        let mut h = nhcb.clone();
        h.zero_threshold = 0.5;
        assert_eq!(
            h.validate(),
            Err(HistogramError::CustomBucketsZeroThreshold)
        );
        let mut h = nhcb.clone();
        h.schema = 0;
        assert_eq!(h.validate(), Err(HistogramError::ExpSchemaCustomBounds));
    }

    #[test]
    fn float_histogram_rejects_negative_counts() {
        let mut f = int_hist().to_float();
        f.positive_buckets[2] = -1.0;
        assert!(matches!(
            f.validate(),
            Err(HistogramError::NegativeBucketCount { number: 3, .. })
        ));
        let mut f = int_hist().to_float();
        f.count = -1.0;
        assert_eq!(f.validate(), Err(HistogramError::NegativeCount(-1.0)));
    }

    #[test]
    fn clone_from_reuses_the_vectors_and_copies_every_field() {
        let a = int_hist();
        let mut b = a.clone();
        b.sum += 1.0;
        b.positive_buckets.reserve(64);
        let before = b.positive_buckets.as_ptr();
        b.clone_from(&a);
        assert_eq!(a, b);
        assert_eq!(b.positive_buckets.as_ptr(), before, "allocation reused");
        let f = a.to_float();
        let mut g = FloatHistogram::default();
        g.clone_from(&f);
        assert_eq!(f, g);
    }
}
