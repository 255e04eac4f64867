//! The storage trait the engine reads series through.

use std::future::Future;
use storeapi::histogram::HistogramSample;
use storeapi::{Labels, Matcher, Sample};

/// What the engine knows about a selection, so a store can prune and push down.
/// Times are milliseconds since the epoch, both ends inclusive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SelectHints {
    pub start: i64,
    pub end: i64,
    /// Evaluation step of the query (0 for an instant query).
    pub step: i64,
    /// The function the selection feeds, if any (e.g. "rate").
    pub func: Option<String>,
    /// Range of a range selector in milliseconds (0 for an instant selector).
    pub range: i64,
    /// Grouping of an enclosing aggregation: `by` (true) or `without` (false) these labels.
    pub by: bool,
    pub grouping: Vec<String>,
}

/// One series as the store returns it: labels, its float samples and its native-histogram
/// samples, each in time order, restricted to `[hints.start, hints.end]` (a store may
/// return a little more). A timestamp has at most one sample across both lists.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageSeries {
    pub labels: Labels,
    pub samples: Vec<Sample>,
    pub histograms: Vec<HistogramSample>,
}

impl StorageSeries {
    /// A series of floats only.
    pub fn floats(labels: Labels, samples: Vec<Sample>) -> Self {
        StorageSeries {
            labels,
            samples,
            histograms: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StorageError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

/// A source of series. Results are sorted by labels and carry no duplicate label sets.
pub trait Storage: Send + Sync {
    fn select(
        &self,
        hints: SelectHints,
        matchers: Vec<Matcher>,
    ) -> impl Future<Output = Result<SelectResult, StorageError>> + Send;
}

/// The outcome of a select: the series and any warnings (partial responses).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SelectResult {
    pub series: Vec<StorageSeries>,
    pub warnings: Vec<String>,
    /// The storage guarantees `series` strictly ordered by labels (so unique); the engine
    /// then skips its own check.
    pub sorted: bool,
    /// Sample values are counts of raw samples (a `count_over_time` selection answered
    /// from downsampled data: each 5m/1h window's count, each raw sample as 1), so
    /// `count_over_time` sums them instead of counting points. Only set for selections
    /// whose hints name `count_over_time`.
    pub counts: bool,
}

/// An in-memory store for tests and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    series: Vec<StorageSeries>,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds samples to the series with `labels` (created if new), keeping time order.
    pub fn add(&mut self, labels: Labels, samples: impl IntoIterator<Item = Sample>) {
        let idx = match self.series.binary_search_by(|s| s.labels.cmp(&labels)) {
            Ok(i) => i,
            Err(i) => {
                self.series
                    .insert(i, StorageSeries::floats(labels, Vec::new()));
                i
            }
        };
        let series = &mut self.series[idx];
        let s = &mut series.samples;
        s.extend(samples);
        s.sort_by_key(|x| x.t);
        s.dedup_by_key(|x| x.t);
        if !series.histograms.is_empty() {
            let floats = &series.samples;
            series
                .histograms
                .retain(|h| floats.binary_search_by_key(&h.t, |x| x.t).is_err());
        }
    }

    /// Adds histogram samples to the series with `labels` (created if new), keeping time
    /// order; a histogram replaces a float at the same timestamp and vice versa the
    /// later call wins, as one timestamp holds one sample.
    pub fn add_histograms(
        &mut self,
        labels: Labels,
        samples: impl IntoIterator<Item = HistogramSample>,
    ) {
        let idx = match self.series.binary_search_by(|s| s.labels.cmp(&labels)) {
            Ok(i) => i,
            Err(i) => {
                self.series
                    .insert(i, StorageSeries::floats(labels, Vec::new()));
                i
            }
        };
        let s = &mut self.series[idx];
        for h in samples {
            s.samples.retain(|x| x.t != h.t);
            s.histograms.retain(|x| x.t != h.t);
            s.histograms.push(h);
        }
        s.histograms.sort_by_key(|x| x.t);
    }

    /// Removes every series.
    pub fn clear(&mut self) {
        self.series.clear();
    }
}

impl Storage for MemStorage {
    async fn select(
        &self,
        hints: SelectHints,
        matchers: Vec<Matcher>,
    ) -> Result<SelectResult, StorageError> {
        let series = self
            .series
            .iter()
            .filter(|s| {
                matchers
                    .iter()
                    .all(|m| m.matches(s.labels.get(&m.name).unwrap_or("")))
            })
            .filter_map(|s| {
                let samples: Vec<Sample> = s
                    .samples
                    .iter()
                    .filter(|x| x.t >= hints.start && x.t <= hints.end)
                    .copied()
                    .collect();
                let histograms: Vec<HistogramSample> = s
                    .histograms
                    .iter()
                    .filter(|x| x.t >= hints.start && x.t <= hints.end)
                    .cloned()
                    .collect();
                (!samples.is_empty() || !histograms.is_empty()).then(|| StorageSeries {
                    labels: s.labels.clone(),
                    samples,
                    histograms,
                })
            })
            .collect();
        Ok(SelectResult {
            series,
            warnings: Vec::new(),
            sorted: false,
            counts: false,
        })
    }
}
