//! Merging blocks into one: the engine under Thanos-style compaction.
//!
//! Series of all inputs are streamed in label order (a k-way merge over each block's
//! sorted series) into [`BlockWriter`], so memory stays at one series per input plus
//! the writer's symbols and postings.
//!
//! - **Horizontal** (the inputs' time ranges are disjoint, or a series' chunks do not
//!   overlap): chunks are copied as they are, no re-encoding.
//! - **Vertical** (a series has overlapping chunks — RF>1 replicas after the replica
//!   label is dropped, out-of-order blocks, backfills): the samples are decoded, merged
//!   in time order, and a sample present in several inputs with the *same timestamp and
//!   the same value* is kept once (Thanos's default 1:1 deduplication, right for
//!   receive replication, which writes identical samples). Floats are the same when
//!   their bits are; native histograms (integer or float) when Prometheus's `Equals`
//!   says so. A series may change sample type over time (float, histogram, float
//!   histogram); the merged samples are re-encoded as Prometheus's compactor does
//!   ([`crate::chunk::SeriesEncoder`]: a new chunk per type change, every
//!   [`SAMPLES_PER_CHUNK`] samples, and where a histogram appender cuts). A histogram's
//!   counter-reset hint becomes `Unknown` where the merged stream moves to another
//!   chunk, as Prometheus's chain iterator does: "no reset since the previous sample"
//!   is only known within one chunk.
//!
//! With [`DedupFunc::Penalty`] (`--deduplication.func=penalty`, for HA Prometheus pairs
//! whose replicas scrape at slightly different times) the overlapping inputs are instead
//! treated as replicas of one stream and folded with the querier's penalty algorithm
//! ([`storeapi::dedup::merge_replicas_by`], the same function the querier's histogram
//! dedup uses): the result follows one replica and switches only to fill its gaps, hints
//! downgraded where it switches. As Thanos's compactor (`dedup.NewChunkSeriesMerger`),
//! counters get no reset adjustment: the stored samples stay raw values.
//!
//! With 1:1 deduplication, a timestamp carrying *different* values in two inputs (or a
//! float in one and a histogram in the other) is a [`MergeError::Conflict`]:
//! picking one silently (what Prometheus's chained merge does) would change query
//! answers depending on which replica won. The caller decides what to do — Orrery's
//! compactor marks one of the two blocks `no-compact` and compacts the rest.

use std::path::Path;

use storeapi::dedup::merge_replicas_by;
use storeapi::{HistogramValue, Labels};

use super::reader::SeriesIter;
use super::{Block, BlockDesc, BlockError, BlockMeta, BlockOptions, BlockStats, BlockWriter};
use crate::chunk::{Chunk, Encoding, SeriesEncoder};

/// Samples per re-encoded chunk (Prometheus's compactor's split, any sample type).
pub use crate::chunk::encode::SAMPLES_PER_CHUNK;

/// How overlapping samples of one series are deduplicated (`--deduplication.func`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DedupFunc {
    /// `""`: samples merged by time, identical samples (same timestamp and value bits)
    /// kept once, different values at one timestamp a [`MergeError::Conflict`].
    #[default]
    OneToOne,
    /// `penalty`: each input block is one replica; replicas folded with the penalty
    /// algorithm (no counter adjustment).
    Penalty,
}

/// Why blocks could not be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Block(#[from] BlockError),
    /// Two inputs hold different values for the same series and timestamp (boxed: the
    /// error travels through `Result`s on every merge path).
    #[error(transparent)]
    Conflict(Box<Conflict>),
    #[error("no blocks to merge")]
    Empty,
}

/// Two different samples of one series at one timestamp.
#[derive(Debug, thiserror::Error)]
#[error(
    "series {series}: inputs {} and {} disagree at t={t} ({a} vs {b})",
    blocks.0, blocks.1
)]
pub struct Conflict {
    pub series: String,
    pub t: i64,
    /// The two samples, as text (a float, or a histogram's count, sum, schema and
    /// number of buckets).
    pub a: String,
    pub b: String,
    /// Indices into the input slice (equal when one block contradicts itself).
    pub blocks: (usize, usize),
}

/// What a merge did.
#[derive(Debug, Clone)]
pub struct MergeReport {
    pub meta: BlockMeta,
    /// Series whose chunks overlapped and were merged sample by sample.
    pub vertical_series: u64,
    /// Samples dropped because another input had the identical sample (with penalty
    /// deduplication: samples of overlapping series not taken into the result).
    pub duplicate_samples: u64,
}

/// Merges `blocks` into one new block under `parent` covering the union of their
/// ranges. `opts` gives the output's ULID, `thanos` section and compaction level;
/// `sources` (union of the inputs' sources) and `parents` are filled here when `opts`
/// leaves them empty. On error no output directory is left behind.
pub fn merge_blocks(
    parent: &Path,
    blocks: &[&Block],
    opts: &BlockOptions,
) -> Result<MergeReport, MergeError> {
    merge_blocks_with(parent, blocks, opts, DedupFunc::OneToOne)
}

/// [`merge_blocks`] with the given deduplication of overlapping samples.
pub fn merge_blocks_with(
    parent: &Path,
    blocks: &[&Block],
    opts: &BlockOptions,
    dedup: DedupFunc,
) -> Result<MergeReport, MergeError> {
    if blocks.is_empty() {
        return Err(MergeError::Empty);
    }
    let mint = blocks.iter().map(|b| b.meta().min_time).min().unwrap_or(0);
    let maxt = blocks.iter().map(|b| b.meta().max_time).max().unwrap_or(0);
    let mut opts = opts.clone();
    if opts.sources.is_empty() {
        let mut s: Vec<_> = blocks
            .iter()
            .flat_map(|b| b.meta().compaction.sources.iter().copied())
            .collect();
        s.sort();
        s.dedup();
        opts.sources = s;
    }
    if opts.parents.is_empty() {
        opts.parents = blocks
            .iter()
            .map(|b| BlockDesc {
                ulid: b.meta().ulid,
                min_time: b.meta().min_time,
                max_time: b.meta().max_time,
            })
            .collect();
    }
    let mut iters = Vec::with_capacity(blocks.len());
    for b in blocks {
        iters.push(b.series_iter()?.peekable());
    }
    let mut merge = MergeIter {
        iters,
        dedup,
        error: None,
        vertical_series: 0,
        duplicate_samples: 0,
    };
    let written = BlockWriter::write(parent, mint, maxt, &mut merge, &opts);
    match (written, merge.error) {
        (Ok(meta), None) => Ok(MergeReport {
            meta,
            vertical_series: merge.vertical_series,
            duplicate_samples: merge.duplicate_samples,
        }),
        (Ok(meta), Some(e)) => {
            // The writer saw a truncated stream; the block it published is incomplete.
            let _ = super::delete_block(&super::block_dir(parent, meta.ulid));
            Err(e)
        }
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(e.into()),
    }
}

struct MergeIter<'a> {
    iters: Vec<std::iter::Peekable<SeriesIter<'a>>>,
    dedup: DedupFunc,
    error: Option<MergeError>,
    vertical_series: u64,
    duplicate_samples: u64,
}

impl Iterator for MergeIter<'_> {
    type Item = (Labels, Vec<Chunk>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.error.is_some() {
            return None;
        }
        match self.step() {
            Ok(x) => x,
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}

impl MergeIter<'_> {
    fn step(&mut self) -> Result<Option<(Labels, Vec<Chunk>)>, MergeError> {
        // Smallest label set among the inputs' next series.
        let mut min: Option<Labels> = None;
        for it in &mut self.iters {
            match it.peek() {
                None => {}
                Some(Err(_)) => {
                    if let Some(Err(e)) = it.next() {
                        return Err(e.into());
                    }
                }
                Some(Ok((l, _))) if min.as_ref().is_none_or(|m| l < m) => {
                    min = Some(l.clone());
                }
                Some(Ok(_)) => {}
            }
        }
        let Some(labels) = min else {
            return Ok(None);
        };
        let mut parts: Vec<(usize, Chunk)> = Vec::new();
        for (i, it) in self.iters.iter_mut().enumerate() {
            if matches!(it.peek(), Some(Ok((l, _))) if *l == labels)
                && let Some(Ok((_, cs))) = it.next()
            {
                parts.extend(cs.into_iter().map(|c| (i, c)));
            }
        }
        parts.sort_by_key(|(_, c)| (c.min_time, c.max_time));
        let overlapping = parts.windows(2).any(|w| w[1].1.min_time <= w[0].1.max_time);
        if !overlapping {
            return Ok(Some((labels, parts.into_iter().map(|(_, c)| c).collect())));
        }
        self.vertical_series += 1;
        let chunks = self.merge_samples(&labels, &parts)?;
        Ok(Some((labels, chunks)))
    }

    /// Decodes overlapping chunks, merges their samples by time keeping identical
    /// duplicates once (or folds them as replicas with `penalty`), and re-encodes.
    fn merge_samples(
        &mut self,
        labels: &Labels,
        parts: &[(usize, Chunk)],
    ) -> Result<Vec<Chunk>, MergeError> {
        // (sample, input block, chunk index in `parts`): the chunk is the source whose
        // change makes a counter-reset hint unreliable, as Prometheus's chain iterator
        // over the overlapping chunks treats it.
        let mut samples: Vec<(MergeSample, usize, usize)> = Vec::new();
        for (k, (i, c)) in parts.iter().enumerate() {
            decode_chunk(c, labels, |s| samples.push((s, *i, k)))?;
        }
        if self.dedup == DedupFunc::Penalty {
            return self.penalty_merge(samples);
        }
        // Stable: on equal timestamps the earlier chunk's sample comes first and is kept.
        samples.sort_by_key(|(s, _, _)| s.t);
        let mut enc = SeriesEncoder::new();
        let mut prev: Option<(MergeSample, usize, usize)> = None;
        for (mut s, i, k) in samples {
            if let Some((p, pi, pk)) = &prev {
                if p.t == s.t {
                    if p.v.same(&s.v) {
                        self.duplicate_samples += 1;
                        continue;
                    }
                    return Err(MergeError::Conflict(Box::new(Conflict {
                        series: labels.to_string(),
                        t: s.t,
                        a: p.v.to_string(),
                        b: s.v.to_string(),
                        blocks: ((*pi).min(i), (*pi).max(i)),
                    })));
                }
                if *pk != k {
                    s.v.forget_counter_reset_hint();
                }
            }
            s.encode(&mut enc).map_err(BlockError::from)?;
            prev = Some((s, i, k));
        }
        Ok(enc.finish())
    }
}

impl MergeIter<'_> {
    /// Splits samples into one replica per input block and folds them with the penalty
    /// algorithm ([`storeapi::dedup::merge_replicas_by`], shared with the querier's
    /// dedup of float and histogram samples; no counter adjustment).
    fn penalty_merge(
        &mut self,
        samples: Vec<(MergeSample, usize, usize)>,
    ) -> Result<Vec<Chunk>, MergeError> {
        let total = samples.len();
        let mut replicas: Vec<Vec<MergeSample>> = Vec::new();
        replicas.resize_with(self.iters.len(), Vec::new);
        for (s, i, _) in samples {
            if let Some(r) = replicas.get_mut(i) {
                r.push(s);
            }
        }
        for r in &mut replicas {
            // One block's chunks do not overlap; sorting (stable) guards the fold's
            // assumption of time order all the same.
            r.sort_by_key(|s| s.t);
            r.dedup_by_key(|s| s.t);
        }
        let merged =
            merge_replicas_by(replicas, |s| s.t, true, |s| s.v.forget_counter_reset_hint());
        self.duplicate_samples += (total - merged.len()) as u64;
        let mut enc = SeriesEncoder::new();
        for s in &merged {
            s.encode(&mut enc).map_err(BlockError::from)?;
        }
        Ok(enc.finish())
    }
}

/// A decoded sample of a series whose chunks are merged: a series may change type over
/// time, so any of Prometheus's three sample kinds.
#[derive(Debug, Clone)]
struct MergeSample {
    t: i64,
    v: MergeValue,
}

#[derive(Debug, Clone)]
enum MergeValue {
    Float(f64),
    Hist(HistogramValue),
}

impl MergeValue {
    /// Whether two samples at one timestamp are the same sample: floats by bits (stale
    /// markers included), histograms by Prometheus's `Equals` (which ignores the
    /// counter-reset hint), different kinds never.
    fn same(&self, o: &MergeValue) -> bool {
        match (self, o) {
            (MergeValue::Float(a), MergeValue::Float(b)) => a.to_bits() == b.to_bits(),
            (
                MergeValue::Hist(HistogramValue::Int(a)),
                MergeValue::Hist(HistogramValue::Int(b)),
            ) => a.equals(b),
            (
                MergeValue::Hist(HistogramValue::Float(a)),
                MergeValue::Hist(HistogramValue::Float(b)),
            ) => a.equals(b),
            _ => false,
        }
    }

    fn forget_counter_reset_hint(&mut self) {
        if let MergeValue::Hist(h) = self {
            h.forget_counter_reset_hint();
        }
    }
}

impl std::fmt::Display for MergeValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MergeValue::Float(v) => write!(f, "{v}"),
            MergeValue::Hist(HistogramValue::Int(h)) => write!(
                f,
                "histogram{{count={}, sum={}, schema={}, buckets={}}}",
                h.count,
                h.sum,
                h.schema,
                h.num_buckets()
            ),
            MergeValue::Hist(HistogramValue::Float(h)) => write!(
                f,
                "float histogram{{count={}, sum={}, schema={}, buckets={}}}",
                h.count,
                h.sum,
                h.schema,
                h.num_buckets()
            ),
        }
    }
}

impl MergeSample {
    fn encode(&self, enc: &mut SeriesEncoder) -> Result<(), crate::chunk::ChunkError> {
        match &self.v {
            MergeValue::Float(v) => enc.append_float(self.t, *v),
            MergeValue::Hist(HistogramValue::Int(h)) => enc.append_histogram(self.t, h),
            MergeValue::Hist(HistogramValue::Float(h)) => enc.append_float_histogram(self.t, h),
        }
    }
}

/// Decodes the samples of one raw chunk of any of the three sample encodings.
fn decode_chunk(
    c: &Chunk,
    labels: &Labels,
    mut f: impl FnMut(MergeSample),
) -> Result<(), MergeError> {
    match c.encoding {
        Encoding::Xor => {
            for s in c.iter().map_err(BlockError::from)? {
                let (t, v) = s.map_err(BlockError::from)?;
                f(MergeSample {
                    t,
                    v: MergeValue::Float(v),
                });
            }
        }
        Encoding::Histogram | Encoding::FloatHistogram => {
            for s in c.iter_histograms().map_err(BlockError::from)? {
                let s = s.map_err(BlockError::from)?;
                f(MergeSample {
                    t: s.t,
                    v: MergeValue::Hist(s.h),
                });
            }
        }
        Encoding::Aggr => {
            return Err(BlockError::Unsupported(format!(
                "vertical merge of overlapping downsampled (Aggr) chunks of {labels}"
            ))
            .into());
        }
    }
    Ok(())
}

/// Timestamps of a raw chunk's samples (XOR, HISTOGRAM or FLOAT_HISTOGRAM).
fn decode_times(c: &Chunk, out: &mut Vec<i64>) -> Result<(), BlockError> {
    Ok(c.times(out)?)
}

/// Re-reads a block completely and checks it is self-consistent: every series sorted
/// and non-empty, chunks in order, non-overlapping, inside the block's range, each
/// chunk decodable with as many samples as its header says (XOR and both histogram
/// encodings), downsampled (Aggr)
/// chunks with consistent aggregates, and the totals equal
/// `meta.json`'s stats. What the compactor runs on a block before uploading it.
pub fn verify_block(dir: &Path) -> Result<BlockStats, BlockError> {
    let b = Block::open(dir)?;
    let m = b.meta();
    let mut stats = BlockStats::default();
    let mut last: Option<Labels> = None;
    for s in b.series_iter()? {
        let (labels, chunks) = s?;
        if let Some(l) = &last
            && labels <= *l
        {
            return Err(BlockError::Corrupt(format!(
                "series out of order: {labels} after {l}"
            )));
        }
        let mut prev_max = i64::MIN;
        for c in &chunks {
            if c.min_time < m.min_time || c.max_time >= m.max_time || c.min_time <= prev_max {
                return Err(BlockError::Corrupt(format!(
                    "chunk [{}, {}] of {labels} out of order or outside [{}, {})",
                    c.min_time, c.max_time, m.min_time, m.max_time
                )));
            }
            prev_max = c.max_time;
            if c.encoding != Encoding::Aggr {
                let mut n = 0usize;
                let mut times = Vec::new();
                decode_times(c, &mut times)?;
                for t in times {
                    if t < c.min_time || t > c.max_time {
                        return Err(BlockError::Corrupt(format!(
                            "sample at {t} outside its chunk [{}, {}] in {labels}",
                            c.min_time, c.max_time
                        )));
                    }
                    n += 1;
                }
                if n != c.num_samples() {
                    return Err(BlockError::Corrupt(format!(
                        "chunk of {labels}: header says {} samples, decoded {n}",
                        c.num_samples()
                    )));
                }
            }
            if c.encoding == Encoding::Aggr {
                verify_aggr(c, &labels)?;
            }
            stats.num_chunks += 1;
            stats.num_samples += c.num_samples() as u64;
        }
        stats.num_series += 1;
        last = Some(labels);
    }
    if stats.num_samples != m.stats.num_samples
        || stats.num_series != m.stats.num_series
        || stats.num_chunks != m.stats.num_chunks
    {
        return Err(BlockError::Corrupt(format!(
            "block {}: meta.json stats {:?} but the data holds {stats:?}",
            m.ulid, m.stats
        )));
    }
    Ok(stats)
}

/// Checks a downsampled chunk: every aggregate decodes, count/sum/min/max (those
/// present) have one sample per window, window timestamps inside the chunk's range;
/// a float counter holds the windows plus its first and last raw samples, a histogram
/// chunk's sum and counter one histogram per window.
fn verify_aggr(c: &Chunk, labels: &Labels) -> Result<(), BlockError> {
    use crate::chunk::aggr::{AggrType, aggr_samples};
    use crate::chunk::aggr_histogram::{aggr_histograms, is_histogram_aggr};
    let bad = |what: String| BlockError::Corrupt(format!("aggr chunk of {labels}: {what}"));
    if is_histogram_aggr(&c.data) {
        let count = aggr_samples(&c.data, AggrType::Count)?
            .ok_or_else(|| bad("histogram aggregates without a count".into()))?;
        for at in [AggrType::Sum, AggrType::Counter] {
            let h = aggr_histograms(&c.data, at)?
                .ok_or_else(|| bad(format!("histogram aggregates without {at:?}")))?;
            if h.len() != count.len() || h.iter().zip(&count).any(|(a, b)| a.0 != b.0) {
                return Err(bad(format!("{at:?} windows differ from count's")));
            }
        }
        for at in [AggrType::Min, AggrType::Max] {
            if crate::chunk::aggr::aggr_get(&c.data, at)?.is_some() {
                return Err(bad(format!("histogram aggregates with {at:?}")));
            }
        }
        if let Some(&(t, _)) = count
            .iter()
            .find(|(t, _)| *t < c.min_time || *t > c.max_time)
        {
            return Err(bad(format!(
                "window {t} outside [{}, {}]",
                c.min_time, c.max_time
            )));
        }
        return Ok(());
    }
    let count = aggr_samples(&c.data, AggrType::Count)?;
    let windows = count.as_ref().map(Vec::len);
    for at in [AggrType::Count, AggrType::Sum, AggrType::Min, AggrType::Max] {
        let Some(s) = aggr_samples(&c.data, at)? else {
            continue;
        };
        if windows.is_some_and(|n| n != s.len()) {
            return Err(bad(format!(
                "{at:?} has {} windows, count {windows:?}",
                s.len()
            )));
        }
        if let Some(&(t, _)) = s.iter().find(|(t, _)| *t < c.min_time || *t > c.max_time) {
            return Err(bad(format!(
                "{at:?} window {t} outside [{}, {}]",
                c.min_time, c.max_time
            )));
        }
    }
    if let (Some(ctr), Some(n)) = (aggr_samples(&c.data, AggrType::Counter)?, windows)
        && ctr.len() != n + 2
    {
        return Err(bad(format!(
            "counter has {} samples for {n} windows",
            ctr.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockOptions, BlockWriter};
    use storeapi::dedup::penalty_dedup;
    use storeapi::{Label, Sample};

    fn labels(name: &str, replica: &str) -> Labels {
        Labels::from_sorted_unchecked(vec![
            Label::new("__name__", name),
            Label::new("job", replica),
        ])
    }

    fn xor_chunks(samples: &[(i64, f64)]) -> Vec<Chunk> {
        let mut e = SeriesEncoder::new();
        for &(t, v) in samples {
            e.append_float(t, v).unwrap();
        }
        e.finish()
    }

    fn write(dir: &Path, mint: i64, maxt: i64, series: Vec<(Labels, Vec<(i64, f64)>)>) -> Block {
        let meta = BlockWriter::write(
            dir,
            mint,
            maxt,
            series.into_iter().map(|(l, s)| (l, xor_chunks(&s))),
            &BlockOptions::default(),
        )
        .unwrap();
        Block::open(&dir.join(meta.ulid.to_string())).unwrap()
    }

    fn read_all(b: &Block) -> Vec<(Labels, Vec<(i64, f64)>)> {
        b.series_iter()
            .unwrap()
            .map(|s| {
                let (l, cs) = s.unwrap();
                let mut v = Vec::new();
                for c in cs {
                    v.extend(c.iter().unwrap().map(|x| x.unwrap()));
                }
                (l, v)
            })
            .collect()
    }

    fn samples(from: i64, to: i64, step: i64, f: impl Fn(i64) -> f64) -> Vec<(i64, f64)> {
        (from..to)
            .step_by(step as usize)
            .map(|t| (t, f(t)))
            .collect()
    }

    #[test]
    fn horizontal_merge_concatenates_and_keeps_meta_lineage() {
        let d = tempfile::tempdir().unwrap();
        let a = write(
            d.path(),
            0,
            1000,
            vec![(labels("up", "a"), samples(0, 1000, 10, |t| t as f64))],
        );
        let b = write(
            d.path(),
            1000,
            2000,
            vec![
                (labels("up", "a"), samples(1000, 2000, 10, |t| t as f64)),
                (labels("up", "b"), samples(1000, 2000, 10, |_| 1.0)),
            ],
        );
        let out = tempfile::tempdir().unwrap();
        let opts = BlockOptions {
            compaction_level: 2,
            ..Default::default()
        };
        let r = merge_blocks(out.path(), &[&a, &b], &opts).unwrap();
        assert_eq!(r.vertical_series, 0);
        assert_eq!((r.meta.min_time, r.meta.max_time), (0, 2000));
        assert_eq!(r.meta.compaction.level, 2);
        let mut want_sources = vec![a.meta().ulid, b.meta().ulid];
        want_sources.sort();
        assert_eq!(r.meta.compaction.sources, want_sources);
        assert_eq!(r.meta.compaction.parents.len(), 2);
        let dir = out.path().join(r.meta.ulid.to_string());
        let st = verify_block(&dir).unwrap();
        assert_eq!(st.num_samples, 300);
        let got = read_all(&Block::open(&dir).unwrap());
        assert_eq!(got[0].0, labels("up", "a"));
        assert_eq!(got[0].1, samples(0, 2000, 10, |t| t as f64));
        assert_eq!(got[1].1, samples(1000, 2000, 10, |_| 1.0));
    }

    #[test]
    fn vertical_merge_keeps_identical_samples_once() {
        let d = tempfile::tempdir().unwrap();
        // Two replicas with the same samples, one with a gap, plus an out-of-order
        // block holding a few extra samples.
        let full = samples(0, 5000, 15, |t| (t / 7) as f64);
        let gap: Vec<_> = full
            .iter()
            .copied()
            .filter(|s| !(1000..2000).contains(&s.0))
            .collect();
        let a = write(d.path(), 0, 5000, vec![(labels("x", "j"), full.clone())]);
        let b = write(d.path(), 0, 5000, vec![(labels("x", "j"), gap)]);
        let extra = vec![(1, 42.0), (2, 43.0)];
        let c = write(d.path(), 0, 10, vec![(labels("x", "j"), extra.clone())]);
        let out = tempfile::tempdir().unwrap();
        let r = merge_blocks(out.path(), &[&a, &b, &c], &BlockOptions::default()).unwrap();
        assert_eq!(r.vertical_series, 1);
        let mut want = full.clone();
        want.extend(extra);
        want.sort_by_key(|s| s.0);
        assert_eq!(r.duplicate_samples as usize, full.len() - 67);
        let dir = out.path().join(r.meta.ulid.to_string());
        verify_block(&dir).unwrap();
        let got = read_all(&Block::open(&dir).unwrap());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, want);
    }

    #[test]
    fn conflicting_values_are_an_error_and_leave_nothing() {
        let d = tempfile::tempdir().unwrap();
        let a = write(
            d.path(),
            0,
            100,
            vec![(labels("x", "j"), vec![(1, 1.0), (2, 2.0)])],
        );
        let b = write(d.path(), 0, 100, vec![(labels("x", "j"), vec![(2, 3.0)])]);
        let out = tempfile::tempdir().unwrap();
        match merge_blocks(out.path(), &[&a, &b], &BlockOptions::default()) {
            Err(MergeError::Conflict(c)) => {
                assert_eq!(c.t, 2);
                assert_eq!(c.blocks, (0, 1));
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    }

    /// HA pair: replica b scrapes 15 s apart like a but with jitter of up to ±3 s and
    /// misses two minutes; values differ slightly between replicas.
    fn ha_pair() -> [Vec<(i64, f64)>; 2] {
        let a: Vec<(i64, f64)> = (0..400).map(|k| (k * 15_000, k as f64)).collect();
        let b: Vec<(i64, f64)> = (0..400)
            .filter(|k| !(100..108).contains(k))
            .map(|k| {
                let jitter = ((k * 7919) % 6001) - 3000;
                (k * 15_000 + 5000 + jitter, k as f64 + 0.25)
            })
            .collect();
        [a, b]
    }

    #[test]
    fn penalty_merge_of_jittered_replicas_equals_the_querier_dedup() {
        let d = tempfile::tempdir().unwrap();
        let [ra, rb] = ha_pair();
        // The gap is in the first replica here, so the result must switch to b and back.
        let ra: Vec<_> = ra
            .into_iter()
            .filter(|s| !(3_000_000..3_120_000).contains(&s.0))
            .collect();
        let a = write(d.path(), 0, 7_000_000, vec![(labels("x", "j"), ra.clone())]);
        let b = write(d.path(), 0, 7_000_000, vec![(labels("x", "j"), rb.clone())]);
        let out = tempfile::tempdir().unwrap();
        let r = merge_blocks_with(
            out.path(),
            &[&a, &b],
            &BlockOptions::default(),
            DedupFunc::Penalty,
        )
        .unwrap();
        let dir = out.path().join(r.meta.ulid.to_string());
        verify_block(&dir).unwrap();
        let got = read_all(&Block::open(&dir).unwrap());
        assert_eq!(got.len(), 1, "one series");
        // The querier's dedup of the same two replicas (non-counter).
        let to_samples =
            |v: &[(i64, f64)]| v.iter().map(|&(t, v)| Sample { t, v }).collect::<Vec<_>>();
        let want: Vec<(i64, f64)> = penalty_dedup(vec![to_samples(&ra), to_samples(&rb)], false)
            .into_iter()
            .map(|s| (s.t, s.v))
            .collect();
        assert_eq!(got[0].1, want);
        assert_eq!(
            r.duplicate_samples as usize,
            ra.len() + rb.len() - want.len()
        );
        // It is one replica's cadence, with b's samples filling a's gap only.
        assert!(want.len() < ra.len() + 10, "{} samples", want.len());
        assert!(want.iter().any(|s| s.1.fract() == 0.25));
        assert!(want.iter().any(|s| (3_000_000..3_120_000).contains(&s.0)));
        for w in want.windows(2) {
            assert!(w[1].0 - w[0].0 <= 35_000, "gap left at {}", w[0].0);
        }
    }

    #[test]
    fn one_to_one_merge_of_jittered_replicas_keeps_both_timestamps() {
        let d = tempfile::tempdir().unwrap();
        let [ra, rb] = ha_pair();
        let a = write(d.path(), 0, 7_000_000, vec![(labels("x", "j"), ra.clone())]);
        let b = write(d.path(), 0, 7_000_000, vec![(labels("x", "j"), rb.clone())]);
        let out = tempfile::tempdir().unwrap();
        let r = merge_blocks(out.path(), &[&a, &b], &BlockOptions::default()).unwrap();
        let got = read_all(&Block::open(&out.path().join(r.meta.ulid.to_string())).unwrap());
        let mut want = ra.clone();
        want.extend(rb);
        want.sort_by_key(|s| s.0);
        assert_eq!(got[0].1, want);
        assert_eq!(r.duplicate_samples, 0);
    }

    #[test]
    fn stale_markers_dedup_by_bits() {
        let d = tempfile::tempdir().unwrap();
        let stale = f64::from_bits(0x7ff0000000000002);
        let s = vec![(1, 1.0), (2, stale)];
        let a = write(d.path(), 0, 100, vec![(labels("x", "j"), s.clone())]);
        let b = write(d.path(), 0, 100, vec![(labels("x", "j"), s)]);
        let out = tempfile::tempdir().unwrap();
        let r = merge_blocks(out.path(), &[&a, &b], &BlockOptions::default()).unwrap();
        assert_eq!(r.meta.stats.num_samples, 2);
    }

    // --- native histograms ---

    /// A sample of any kind for the histogram tests: a float, or an integer or float
    /// histogram with `count` observations spread over two buckets (a counter).
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Kind {
        F(f64),
        H(u64),
        FH(u64),
    }

    fn int_hist(count: u64) -> storeapi::Histogram {
        use storeapi::histogram::Span;
        // Two buckets holding half the observations each (both never decrease as
        // `count` grows, so a growing count is a counter without resets).
        let (b1, b2) = (count / 2, count - count / 2);
        storeapi::Histogram {
            schema: 1,
            zero_threshold: 1e-128,
            count,
            sum: count as f64 * 0.75,
            positive_spans: vec![Span {
                offset: 1,
                length: 2,
            }],
            positive_buckets: vec![b1 as i64, b2 as i64 - b1 as i64],
            ..Default::default()
        }
    }

    fn kind_chunks(samples: &[(i64, Kind)]) -> Vec<Chunk> {
        let mut e = SeriesEncoder::new();
        for &(t, k) in samples {
            match k {
                Kind::F(v) => e.append_float(t, v).unwrap(),
                Kind::H(c) => e.append_histogram(t, &int_hist(c)).unwrap(),
                Kind::FH(c) => e
                    .append_float_histogram(t, &int_hist(c).to_float())
                    .unwrap(),
            }
        }
        e.finish()
    }

    fn write_kinds(dir: &Path, mint: i64, maxt: i64, samples: &[(i64, Kind)]) -> Block {
        let meta = BlockWriter::write(
            dir,
            mint,
            maxt,
            [(labels("h", "j"), kind_chunks(samples))],
            &BlockOptions::default(),
        )
        .unwrap();
        Block::open(&dir.join(meta.ulid.to_string())).unwrap()
    }

    /// The merged block's one series as `(t, Kind)` (hints left out: checked apart),
    /// with its chunks' encodings.
    fn read_kinds(b: &Block) -> (Vec<(i64, Kind)>, Vec<Encoding>) {
        let series: Vec<_> = b.series_iter().unwrap().map(|s| s.unwrap()).collect();
        assert_eq!(series.len(), 1);
        let mut out = Vec::new();
        let mut encs = Vec::new();
        for c in &series[0].1 {
            encs.push(c.encoding);
            match c.encoding {
                Encoding::Xor => {
                    out.extend(c.iter().unwrap().map(|s| {
                        let (t, v) = s.unwrap();
                        (t, Kind::F(v))
                    }));
                }
                _ => {
                    for s in c.iter_histograms().unwrap() {
                        let s = s.unwrap();
                        let k = match &s.h {
                            HistogramValue::Int(h) => {
                                assert!(h.equals(&int_hist(h.count)), "{h:?}");
                                Kind::H(h.count)
                            }
                            HistogramValue::Float(h) => {
                                assert!(h.equals(&int_hist(h.count as u64).to_float()), "{h:?}");
                                Kind::FH(h.count as u64)
                            }
                        };
                        out.push((s.t, k));
                    }
                }
            }
        }
        (out, encs)
    }

    fn merged(out: &Path, r: &MergeReport) -> Block {
        let dir = out.join(r.meta.ulid.to_string());
        verify_block(&dir).unwrap();
        Block::open(&dir).unwrap()
    }

    #[test]
    fn identical_histograms_of_two_replicas_are_kept_once() {
        let d = tempfile::tempdir().unwrap();
        let full: Vec<(i64, Kind)> = (0..300)
            .map(|k| (k * 15_000, Kind::H(k as u64 * 3)))
            .collect();
        let gap: Vec<_> = full
            .iter()
            .copied()
            .filter(|s| !(1_000_000..2_000_000).contains(&s.0))
            .collect();
        let a = write_kinds(d.path(), 0, 5_000_000, &full);
        let b = write_kinds(d.path(), 0, 5_000_000, &gap);
        let out = tempfile::tempdir().unwrap();
        let r = merge_blocks(out.path(), &[&a, &b], &BlockOptions::default()).unwrap();
        assert_eq!(r.vertical_series, 1);
        assert_eq!(r.duplicate_samples as usize, gap.len());
        let (got, encs) = read_kinds(&merged(out.path(), &r));
        assert_eq!(got, full);
        assert!(encs.iter().all(|e| *e == Encoding::Histogram), "{encs:?}");
        // Cut every 120 samples, as Prometheus's compactor cuts merged histograms.
        assert_eq!(encs.len(), 3);
        assert_eq!(r.meta.stats.num_samples, 300);
    }

    #[test]
    fn different_histograms_at_one_timestamp_are_a_conflict() {
        let d = tempfile::tempdir().unwrap();
        let a = write_kinds(d.path(), 0, 100, &[(1, Kind::H(4)), (2, Kind::H(8))]);
        let b = write_kinds(d.path(), 0, 100, &[(2, Kind::H(12))]);
        let out = tempfile::tempdir().unwrap();
        match merge_blocks(out.path(), &[&a, &b], &BlockOptions::default()) {
            Err(MergeError::Conflict(c)) => {
                let Conflict {
                    t, blocks, a, b, ..
                } = *c;
                assert_eq!((t, blocks), (2, (0, 1)));
                assert!(a.contains("count=8") && b.contains("count=12"), "{a} / {b}");
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
        // A float histogram and an integer histogram of the same counts differ too.
        let c = write_kinds(d.path(), 0, 100, &[(2, Kind::FH(8))]);
        assert!(matches!(
            merge_blocks(out.path(), &[&a, &c], &BlockOptions::default()),
            Err(MergeError::Conflict(c)) if c.t == 2
        ));
        // And float histograms compare by value.
        let e = write_kinds(d.path(), 0, 100, &[(1, Kind::FH(4)), (2, Kind::FH(8))]);
        let f = write_kinds(d.path(), 0, 100, &[(2, Kind::FH(8)), (3, Kind::FH(9))]);
        let r = merge_blocks(out.path(), &[&e, &f], &BlockOptions::default()).unwrap();
        let (got, _) = read_kinds(&merged(out.path(), &r));
        assert_eq!(got, [(1, Kind::FH(4)), (2, Kind::FH(8)), (3, Kind::FH(9))]);
    }

    #[test]
    fn a_series_changing_type_merges_into_chunks_of_each_encoding() {
        let d = tempfile::tempdir().unwrap();
        // Floats, then integer histograms, then float histograms, then floats again.
        let full: Vec<(i64, Kind)> = (0..400)
            .map(|k| {
                let t = k * 10_000;
                let kind = match k {
                    0..100 => Kind::F(k as f64),
                    100..200 => Kind::H(k as u64),
                    200..300 => Kind::FH(k as u64),
                    _ => Kind::F(-(k as f64)),
                };
                (t, kind)
            })
            .collect();
        // Replica b misses every third sample, including type boundaries.
        let sparse: Vec<_> = full.iter().copied().step_by(3).collect();
        let a = write_kinds(d.path(), 0, 4_000_000, &sparse);
        let b = write_kinds(d.path(), 0, 4_000_000, &full);
        let out = tempfile::tempdir().unwrap();
        let r = merge_blocks(out.path(), &[&a, &b], &BlockOptions::default()).unwrap();
        let (got, encs) = read_kinds(&merged(out.path(), &r));
        assert_eq!(got, full);
        assert_eq!(
            encs,
            [
                Encoding::Xor,
                Encoding::Histogram,
                Encoding::FloatHistogram,
                Encoding::Xor
            ]
        );
    }

    #[test]
    fn counter_resets_survive_a_merge_and_hints_are_downgraded_at_chunk_switches() {
        use crate::chunk::{CounterResetHeader, HistogramAppender};
        use storeapi::histogram::CounterResetHint;
        let d = tempfile::tempdir().unwrap();
        // A counter reset at k = 50; replica a holds everything before 60, b after 40.
        let all: Vec<(i64, Kind)> = (0..100)
            .map(|k| {
                (
                    k * 1000,
                    Kind::H(if k < 50 { 100 + k } else { k - 50 } as u64),
                )
            })
            .collect();
        let a = write_kinds(d.path(), 0, 100_000, &all[..60]);
        let b = write_kinds(d.path(), 0, 100_000, &all[40..]);
        let out = tempfile::tempdir().unwrap();
        let r = merge_blocks(out.path(), &[&a, &b], &BlockOptions::default()).unwrap();
        let blk = merged(out.path(), &r);
        let (got, _) = read_kinds(&blk);
        assert_eq!(got, all);
        let series: Vec<_> = blk.series_iter().unwrap().map(|s| s.unwrap()).collect();
        let chunks = &series[0].1;
        assert_eq!(chunks.len(), 2, "cut at the reset");
        assert_eq!(chunks[1].min_time, 50_000);
        let header = |c: &Chunk| HistogramAppender::from_bytes(&c.data).unwrap().header();
        assert_eq!(header(&chunks[0]), CounterResetHeader::Unknown);
        assert_eq!(header(&chunks[1]), CounterResetHeader::CounterReset);
        let hints: Vec<_> = chunks[1]
            .iter_histograms()
            .unwrap()
            .map(|s| s.unwrap().h.hint())
            .take(2)
            .collect();
        // As Prometheus's reader: a chunk's first sample reads `Unknown` whatever the
        // header (the previous chunk may be gone), so PromQL compares it with the
        // sample before; the rest of the chunk `NotCounterReset`.
        assert_eq!(
            hints,
            [CounterResetHint::Unknown, CounterResetHint::NotCounterReset]
        );
    }

    #[test]
    fn penalty_merge_of_histogram_replicas_equals_the_querier_dedup() {
        use storeapi::HistogramSample;
        let d = tempfile::tempdir().unwrap();
        let [ra, rb] = ha_pair();
        // A gap in the first replica, so the result must switch to b and back.
        let ra: Vec<_> = ra
            .into_iter()
            .filter(|s| !(3_000_000..3_120_000).contains(&s.0))
            .collect();
        // Histograms whose count is the float value's integer part (b's values differ).
        let to_kinds = |v: &[(i64, f64)], off: u64| -> Vec<(i64, Kind)> {
            v.iter()
                .map(|&(t, x)| (t, Kind::H(x as u64 * 4 + off)))
                .collect()
        };
        let ka = to_kinds(&ra, 0);
        let kb = to_kinds(&rb, 1);
        let a = write_kinds(d.path(), 0, 7_000_000, &ka);
        let b = write_kinds(d.path(), 0, 7_000_000, &kb);
        let out = tempfile::tempdir().unwrap();
        let r = merge_blocks_with(
            out.path(),
            &[&a, &b],
            &BlockOptions::default(),
            DedupFunc::Penalty,
        )
        .unwrap();
        let blk = merged(out.path(), &r);
        let (got, _) = read_kinds(&blk);
        // The querier's dedup of the same replicas, samples as a store sends them.
        let decode = |blk: &Block| -> Vec<HistogramSample> {
            let (_, cs) = blk.series_iter().unwrap().next().unwrap().unwrap();
            cs.iter()
                .flat_map(|c| c.iter_histograms().unwrap().map(|s| s.unwrap()))
                .collect()
        };
        let want = merge_replicas_by(
            vec![decode(&a), decode(&b)],
            |s| s.t,
            true,
            |s| s.h.forget_counter_reset_hint(),
        );
        let want_kinds: Vec<(i64, Kind)> = want
            .iter()
            .map(|s| match &s.h {
                HistogramValue::Int(h) => (s.t, Kind::H(h.count)),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, want_kinds);
        assert!(got.len() < ka.len() + 10, "{} samples", got.len());
        assert!(
            got.iter().any(|s| matches!(s.1, Kind::H(c) if c % 4 == 1)),
            "b fills a's gap"
        );
        assert_eq!(
            r.duplicate_samples as usize,
            ka.len() + kb.len() - got.len()
        );
        // Counts never drop, so no chunk of the result starts with a counter reset.
        use crate::chunk::{CounterResetHeader, HistogramAppender};
        let (_, cs) = blk.series_iter().unwrap().next().unwrap().unwrap();
        for c in &cs {
            let h = HistogramAppender::from_bytes(&c.data).unwrap().header();
            assert_ne!(
                h,
                CounterResetHeader::CounterReset,
                "chunk at {}",
                c.min_time
            );
        }
    }
}
