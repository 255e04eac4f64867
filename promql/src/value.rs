//! Query results.

use storeapi::{Labels, Sample};

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
}

/// A finished query: its value and any warnings (e.g. partial responses from stores).
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    pub value: Value,
    pub warnings: Vec<String>,
    /// Prometheus info-level annotations ("PromQL info: ...").
    pub infos: Vec<String>,
}
