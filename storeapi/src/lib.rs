//! Shared data model (labels, matchers, samples) and the wire protocols (remote write,
//! Thanos StoreAPI).

pub mod dedup;
pub mod histogram;
pub mod labels;
pub mod matcher;
pub mod prefetch;
#[cfg(feature = "selectors")]
pub mod selectors;
#[cfg(feature = "wire")]
pub mod wire;

pub use compact_str::CompactString;
pub use histogram::{FloatHistogram, Histogram, HistogramSample, HistogramValue};
pub use labels::{Label, LabelError, Labels, METRIC_NAME};
pub use matcher::{MatchOp, Matcher, MatcherError};

/// Prometheus's stale marker: a NaN with this exact bit pattern ends a series.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether `v` is the stale marker (compared bit-exactly, not as a float).
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// One float sample: milliseconds since the epoch and a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub t: i64,
    pub v: f64,
}
