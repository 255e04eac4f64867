//! Query results.

use std::sync::Arc;
use storeapi::histogram::FloatHistogram;
use storeapi::{Labels, Sample};

/// A native-histogram point: milliseconds since the epoch and the histogram PromQL
/// computes on (shared: selectors, windows and results pass the same one around).
#[derive(Debug, Clone, PartialEq)]
pub struct HPoint {
    pub t: i64,
    pub h: Arc<FloatHistogram>,
}

/// A result series that holds native histograms: float and histogram points, each list
/// in time order (Prometheus's `Series{Floats, Histograms}`).
#[derive(Debug, Clone, PartialEq)]
pub struct HistSeries {
    pub labels: Labels,
    pub floats: Vec<Sample>,
    pub histograms: Vec<HPoint>,
}

/// The value of an expression, as the HTTP API reports it (`resultType`).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(Sample),
    String {
        t: i64,
        v: String,
    },
    /// One sample per series at the evaluation time.
    Vector(Vec<(Labels, Sample)>),
    /// Samples per series over a range (range queries, range selectors).
    Matrix(Vec<(Labels, Vec<Sample>)>),
    /// An instant vector with at least one histogram element; each series holds exactly
    /// one point (a float or a histogram). Float-only vectors stay [`Value::Vector`], so
    /// readers of floats see no change.
    HistVector(Vec<HistSeries>),
    /// A matrix with at least one histogram point.
    HistMatrix(Vec<HistSeries>),
}

/// A finished query: its value and any warnings (e.g. partial responses from stores).
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    pub value: Value,
    pub warnings: Vec<String>,
    /// Prometheus info-level annotations ("PromQL info: ...").
    pub infos: Vec<String>,
    /// What the evaluation cost, for the API's `stats` parameter.
    pub stats: QueryStats,
}

/// Prometheus's query statistics (`data.stats` of the HTTP API with `stats=…`), counted
/// where Prometheus counts them so the numbers are comparable: every sample a selector
/// yields at a step, every sample inside a range function's window at a step, every
/// sample of a range vector returned as such; the peak is the most samples held at once.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueryStats {
    pub total_queryable_samples: u64,
    pub peak_samples: u64,
    /// Evaluating the expression (after the series were selected).
    pub inner_eval_seconds: f64,
    /// Sorting the result.
    pub result_sort_seconds: f64,
}
