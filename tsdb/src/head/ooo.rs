//! A series' out-of-order samples: what `--tsdb.out-of-order.time-window` lets in
//! (Prometheus's OOO head).
//!
//! Samples older than the series' newest one (or below the head's appendable window)
//! but not older than the head's newest timestamp minus the window go here instead of
//! being refused. As in Prometheus they are collected, in time order, in a small "open"
//! chunk of at most `cap` samples (`--tsdb.out-of-order.cap-max`); a full open chunk is
//! closed and a new one started, so closed chunks may overlap each other and the
//! series' in-order chunks. Readers union them (the querier merges overlapping chunks of
//! one store, keeping each timestamp once).
//!
//! A sample whose timestamp is already in the open chunk is dropped silently, whatever
//! its value (Prometheus's rule: only the open chunk is checked, so a repeat of a sample
//! in a closed chunk is stored twice and read once).
//!
//! Native histograms (either flavour) have an open chunk of their own, encoded as
//! Prometheus's histogram chunks (cut where the flavour changes or the appender cuts);
//! a timestamp already in either open chunk is a repeat.
//!
//! Out-of-order compaction moves everything present into `compacting`
//! ([`OooSeries::begin_compaction`]), still read by queries, writes it into blocks and
//! then drops it ([`OooSeries::end_compaction`]); samples arriving meanwhile start a new
//! open chunk.

use bytes::Bytes;
use storeapi::histogram::HistogramValue;

use crate::chunk::{Chunk, ChunkError, Encoding, SeriesEncoder, XorChunk};

/// Out-of-order samples of one series.
#[derive(Debug, Default)]
pub(crate) struct OooSeries {
    /// The open chunk's samples, sorted by time, timestamps unique.
    open: Vec<(i64, f64)>,
    /// `open` encoded (re-encoded after each insert: at most `cap` ≤ 255 samples), so
    /// readers borrow it like any other chunk.
    open_chunk: Option<Chunk>,
    /// Open native histogram samples, sorted by time, timestamps unique.
    hist_open: Vec<(i64, HistogramValue)>,
    /// `hist_open` encoded (one chunk per run of one flavour, or more where the appender
    /// cuts).
    hist_open_chunks: Vec<Chunk>,
    closed: Vec<Chunk>,
    /// Chunks being written into blocks by a running compaction.
    compacting: Vec<Chunk>,
}

impl OooSeries {
    pub(crate) fn is_empty(&self) -> bool {
        self.open.is_empty()
            && self.hist_open.is_empty()
            && self.closed.is_empty()
            && self.compacting.is_empty()
    }

    /// Whether either open chunk has a sample at `t`.
    fn has_open(&self, t: i64) -> bool {
        self.open.binary_search_by_key(&t, |&(x, _)| x).is_ok()
            || self.hist_open.binary_search_by_key(&t, |(x, _)| *x).is_ok()
    }

    /// Inserts a sample; `false` when an open chunk already has its timestamp (dropped).
    pub(crate) fn insert(&mut self, t: i64, v: f64, cap: usize) -> bool {
        if self.open.len() >= cap.max(1) {
            self.close_open();
        }
        if self.has_open(t) {
            return false;
        }
        let i = self.open.partition_point(|&(x, _)| x < t);
        self.open.insert(i, (t, v));
        self.open_chunk = Some(encode(&self.open));
        true
    }

    /// Inserts a native histogram sample; `Ok(false)` when an open chunk already has its
    /// timestamp (dropped). An error (a histogram the chunk encoding cannot hold) leaves
    /// nothing behind.
    pub(crate) fn insert_histogram(
        &mut self,
        t: i64,
        h: &HistogramValue,
        cap: usize,
    ) -> Result<bool, ChunkError> {
        if self.hist_open.len() >= cap.max(1) {
            self.close_hist_open();
        }
        if self.has_open(t) {
            return Ok(false);
        }
        let i = self.hist_open.partition_point(|(x, _)| *x < t);
        self.hist_open.insert(i, (t, h.clone()));
        let mut enc = SeriesEncoder::new();
        let encoded = self
            .hist_open
            .iter()
            .try_for_each(|(t, h)| append_histogram(&mut enc, *t, h))
            .map(|()| enc.finish());
        match encoded {
            Ok(chunks) => {
                self.hist_open_chunks = chunks;
                Ok(true)
            }
            Err(e) => {
                self.hist_open.remove(i);
                Err(e)
            }
        }
    }

    fn close_open(&mut self) {
        if let Some(c) = self.open_chunk.take() {
            self.closed.push(c);
        }
        self.open.clear();
    }

    fn close_hist_open(&mut self) {
        self.closed.append(&mut self.hist_open_chunks);
        self.hist_open.clear();
    }

    /// Every chunk held, those being compacted included (they overlap each other).
    pub(crate) fn chunks(&self) -> impl Iterator<Item = &Chunk> + Clone {
        self.compacting
            .iter()
            .chain(&self.closed)
            .chain(self.open_chunk.as_ref())
            .chain(&self.hist_open_chunks)
    }

    /// Moves every sample held into `compacting` (see the module docs) and returns the
    /// chunks to write. Samples left in `compacting` by a failed compaction are included
    /// again.
    pub(crate) fn begin_compaction(&mut self) -> Vec<Chunk> {
        self.close_open();
        self.close_hist_open();
        self.compacting.append(&mut self.closed);
        self.compacting.clone()
    }

    /// Drops what [`OooSeries::begin_compaction`] returned: it is in blocks now.
    pub(crate) fn end_compaction(&mut self) {
        self.compacting.clear();
    }
}

/// Encodes sorted samples with unique timestamps as one XOR chunk.
fn encode(samples: &[(i64, f64)]) -> Chunk {
    let mut c = XorChunk::with_capacity(samples.len() * 2 + 16);
    for &(t, v) in samples {
        // Cannot fail: at most 255 samples, times strictly increasing.
        let _ = c.append(t, v);
    }
    Chunk {
        min_time: samples.first().map_or(0, |s| s.0),
        max_time: samples.last().map_or(0, |s| s.0),
        encoding: Encoding::Xor,
        data: Bytes::from(c.into_bytes()),
    }
}

/// One sample of either kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Float(f64),
    Histogram(HistogramValue),
}

/// The samples of possibly overlapping chunks of any encoding (XOR and both histogram
/// flavours) in `[mint, maxt]`, sorted by time, each timestamp once (the first
/// chunk given wins).
pub fn merge_samples<'a>(
    chunks: impl IntoIterator<Item = &'a Chunk>,
    mint: i64,
    maxt: i64,
) -> Result<Vec<(i64, Value)>, ChunkError> {
    let mut all: Vec<(i64, usize, Value)> = Vec::new();
    for (i, c) in chunks.into_iter().enumerate() {
        if c.max_time < mint || c.min_time > maxt {
            continue;
        }
        if c.encoding == Encoding::Xor {
            crate::chunk::xor::for_each_sample(&c.data, |t, v| {
                if t >= mint && t <= maxt {
                    all.push((t, i, Value::Float(v)));
                }
                std::ops::ControlFlow::Continue(())
            })?;
            continue;
        }
        for x in c.iter_histograms()? {
            let x = x?;
            if x.t >= mint && x.t <= maxt {
                all.push((x.t, i, Value::Histogram(x.h)));
            }
        }
    }
    all.sort_by_key(|s| (s.0, s.1));
    all.dedup_by_key(|s| s.0);
    Ok(all.into_iter().map(|(t, _, v)| (t, v)).collect())
}

/// Encodes sorted samples of any kind (unique timestamps) as Prometheus's compactor
/// writes a series ([`SeriesEncoder`]: a new chunk where the type changes, every 120
/// samples, and where a histogram appender cuts).
pub fn encode_samples(samples: &[(i64, Value)]) -> Result<Vec<Chunk>, ChunkError> {
    let mut enc = SeriesEncoder::new();
    for (t, v) in samples {
        match v {
            Value::Float(f) => enc.append_float(*t, *f)?,
            Value::Histogram(h) => append_histogram(&mut enc, *t, h)?,
        }
    }
    Ok(enc.finish())
}

fn append_histogram(enc: &mut SeriesEncoder, t: i64, h: &HistogramValue) -> Result<(), ChunkError> {
    match h {
        HistogramValue::Int(h) => enc.append_histogram(t, h),
        HistogramValue::Float(h) => enc.append_float_histogram(t, h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The float samples held, merged.
    fn all(o: &OooSeries) -> Vec<(i64, f64)> {
        floats(&merge_samples(o.chunks(), i64::MIN, i64::MAX).unwrap())
    }

    fn floats(v: &[(i64, Value)]) -> Vec<(i64, f64)> {
        v.iter()
            .filter_map(|(t, v)| match v {
                Value::Float(f) => Some((*t, *f)),
                Value::Histogram(_) => None,
            })
            .collect()
    }

    #[test]
    fn keeps_samples_sorted_and_drops_repeats_in_the_open_chunk() {
        let mut o = OooSeries::default();
        assert!(o.insert(30, 3.0, 32));
        assert!(o.insert(10, 1.0, 32));
        assert!(o.insert(20, 2.0, 32));
        assert!(!o.insert(20, 9.0, 32), "a repeated timestamp is dropped");
        assert_eq!(all(&o), vec![(10, 1.0), (20, 2.0), (30, 3.0)]);
    }

    #[test]
    fn full_open_chunk_is_closed_and_readers_union_overlaps() {
        let mut o = OooSeries::default();
        for t in [50, 40, 30] {
            assert!(o.insert(t, t as f64, 3));
        }
        // The open chunk is full: this one starts a new one, overlapping the first.
        assert!(o.insert(35, 35.0, 3));
        // A repeat of a closed chunk's sample is stored again (only the open chunk is
        // checked) but read once.
        assert!(o.insert(40, 40.0, 3));
        assert_eq!(o.closed.len(), 1);
        assert_eq!(
            all(&o),
            vec![(30, 30.0), (35, 35.0), (40, 40.0), (50, 50.0)]
        );
    }

    #[test]
    fn compaction_moves_everything_and_new_samples_stay() {
        let mut o = OooSeries::default();
        for t in [5, 3, 1] {
            o.insert(t, 0.0, 2);
        }
        let taken = o.begin_compaction();
        let ts: Vec<i64> = merge_samples(&taken, i64::MIN, i64::MAX)
            .unwrap()
            .iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(ts, vec![1, 3, 5]);
        o.insert(2, 0.0, 2);
        // Still readable while compacting.
        assert_eq!(all(&o).len(), 4);
        o.end_compaction();
        assert_eq!(all(&o), vec![(2, 0.0)]);
        assert!(!o.is_empty());
    }

    fn hist(count: u64) -> HistogramValue {
        use storeapi::histogram::{Histogram, Span};
        HistogramValue::Int(Box::new(Histogram {
            count,
            sum: count as f64,
            schema: 0,
            positive_spans: vec![Span {
                offset: 0,
                length: 1,
            }],
            positive_buckets: vec![count as i64],
            ..Default::default()
        }))
    }

    #[test]
    fn histograms_and_floats_share_the_repeat_rule_and_read_back_merged() {
        let mut o = OooSeries::default();
        for t in [40, 10, 30] {
            assert!(o.insert_histogram(t, &hist(t as u64), 2).unwrap());
        }
        assert!(
            !o.insert_histogram(30, &hist(99), 2).unwrap(),
            "repeat in the open chunk"
        );
        assert!(
            !o.insert(30, 1.0, 2),
            "a float at a histogram's timestamp is a repeat too"
        );
        assert!(o.insert(20, 2.0, 2));
        let got = merge_samples(o.chunks(), i64::MIN, i64::MAX).unwrap();
        let ts: Vec<i64> = got.iter().map(|s| s.0).collect();
        assert_eq!(ts, vec![10, 20, 30, 40]);
        assert_eq!(got[1].1, Value::Float(2.0));
        match &got[3].1 {
            Value::Histogram(HistogramValue::Int(h)) => assert_eq!(h.count, 40),
            other => panic!("{other:?}"),
        }
        // Re-encoded as blocks are written: the same samples.
        let chunks = encode_samples(&got).unwrap();
        assert_eq!(merge_samples(&chunks, i64::MIN, i64::MAX).unwrap(), got);
    }

    #[test]
    fn encode_samples_cuts_every_120_and_reads_back() {
        let s: Vec<(i64, Value)> = (0..250).map(|t| (t, Value::Float(t as f64))).collect();
        let c = encode_samples(&s).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!((c[2].min_time, c[2].max_time), (240, 249));
        assert_eq!(merge_samples(&c, 0, 1000).unwrap(), s);
    }
}
