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
//!   the same value bits* is kept once (Thanos's default 1:1 deduplication, right for
//!   receive replication, which writes identical samples). The result is re-encoded in
//!   XOR chunks of at most [`SAMPLES_PER_CHUNK`] samples.
//!
//! With [`DedupFunc::Penalty`] (`--deduplication.func=penalty`, for HA Prometheus pairs
//! whose replicas scrape at slightly different times) the overlapping inputs are instead
//! treated as replicas of one stream and folded with the querier's penalty algorithm
//! ([`storeapi::dedup::penalty_dedup`]): the result follows one replica and switches
//! only to fill its gaps. As Thanos's compactor (`dedup.NewChunkSeriesMerger`), counters
//! get no reset adjustment: the stored samples stay raw values.
//!
//! With 1:1 deduplication, a timestamp carrying *different* values in two inputs is a
//! [`MergeError::Conflict`]:
//! picking one silently (what Prometheus's chained merge does) would change query
//! answers depending on which replica won. The caller decides what to do — Orrery's
//! compactor marks one of the two blocks `no-compact` and compacts the rest.

use std::path::Path;

use bytes::Bytes;
use storeapi::dedup::penalty_dedup;
use storeapi::{Labels, Sample};

use super::reader::SeriesIter;
use super::{Block, BlockDesc, BlockError, BlockMeta, BlockOptions, BlockStats, BlockWriter};
use crate::chunk::{Chunk, Encoding, XorChunk};

/// Samples per re-encoded chunk (Prometheus's target for XOR chunks).
pub const SAMPLES_PER_CHUNK: usize = 120;

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
    /// Two inputs hold different values for the same series and timestamp. `blocks`
    /// are indices into the input slice (equal when one block contradicts itself).
    #[error(
        "series {series}: inputs {} and {} disagree at t={t} ({a} vs {b})",
        blocks.0, blocks.1
    )]
    Conflict {
        series: String,
        t: i64,
        a: f64,
        b: f64,
        blocks: (usize, usize),
    },
    #[error("no blocks to merge")]
    Empty,
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
    /// duplicates once, and re-encodes.
    fn merge_samples(
        &mut self,
        labels: &Labels,
        parts: &[(usize, Chunk)],
    ) -> Result<Vec<Chunk>, MergeError> {
        let mut samples: Vec<(i64, f64, usize)> = Vec::new();
        for (i, c) in parts {
            if c.encoding != Encoding::Xor {
                return Err(BlockError::Unsupported(format!(
                    "vertical merge of overlapping {:?} chunks of {labels}",
                    c.encoding
                ))
                .into());
            }
            for s in c.iter().map_err(BlockError::from)? {
                let (t, v) = s.map_err(BlockError::from)?;
                samples.push((t, v, *i));
            }
        }
        if self.dedup == DedupFunc::Penalty {
            return self.penalty_merge(samples);
        }
        samples.sort_by_key(|s| s.0);
        let mut out = Vec::new();
        let mut x = XorChunk::new();
        let mut lo = i64::MAX;
        let mut prev: Option<(i64, f64, usize)> = None;
        for (t, v, i) in samples {
            if let Some((pt, pv, pi)) = prev
                && pt == t
            {
                if pv.to_bits() == v.to_bits() {
                    self.duplicate_samples += 1;
                    continue;
                }
                return Err(MergeError::Conflict {
                    series: labels.to_string(),
                    t,
                    a: pv,
                    b: v,
                    blocks: (pi.min(i), pi.max(i)),
                });
            }
            if x.num_samples() as usize >= SAMPLES_PER_CHUNK {
                out.push(finish_chunk(std::mem::take(&mut x), lo));
            }
            if x.num_samples() == 0 {
                lo = t;
            }
            x.append(t, v).map_err(BlockError::from)?;
            prev = Some((t, v, i));
        }
        if x.num_samples() > 0 {
            out.push(finish_chunk(x, lo));
        }
        Ok(out)
    }
}

impl MergeIter<'_> {
    /// Splits `(t, v, input)` samples into one replica per input block and folds them
    /// with the penalty algorithm.
    fn penalty_merge(&mut self, samples: Vec<(i64, f64, usize)>) -> Result<Vec<Chunk>, MergeError> {
        let total = samples.len();
        let mut replicas: Vec<Vec<Sample>> = vec![Vec::new(); self.iters.len()];
        for (t, v, i) in samples {
            if let Some(r) = replicas.get_mut(i) {
                r.push(Sample { t, v });
            }
        }
        replicas.retain(|r| !r.is_empty());
        for r in &mut replicas {
            // One block's chunks do not overlap; sorting (stable) guards the fold's
            // assumption of time order all the same.
            r.sort_by_key(|s| s.t);
            r.dedup_by_key(|s| s.t);
        }
        let merged = penalty_dedup(replicas, false);
        self.duplicate_samples += (total - merged.len()) as u64;
        encode_xor(merged.iter().map(|s| (s.t, s.v)))
    }
}

/// Re-encodes samples (time order, unique timestamps) into XOR chunks of at most
/// [`SAMPLES_PER_CHUNK`] samples.
fn encode_xor(samples: impl Iterator<Item = (i64, f64)>) -> Result<Vec<Chunk>, MergeError> {
    let mut out = Vec::new();
    let mut x = XorChunk::new();
    let mut lo = i64::MAX;
    for (t, v) in samples {
        if x.num_samples() as usize >= SAMPLES_PER_CHUNK {
            out.push(finish_chunk(std::mem::take(&mut x), lo));
        }
        if x.num_samples() == 0 {
            lo = t;
        }
        x.append(t, v).map_err(BlockError::from)?;
    }
    if x.num_samples() > 0 {
        out.push(finish_chunk(x, lo));
    }
    Ok(out)
}

fn finish_chunk(x: XorChunk, min_time: i64) -> Chunk {
    let max_time = x.last_t();
    Chunk {
        min_time,
        max_time,
        encoding: Encoding::Xor,
        data: Bytes::from(x.into_bytes()),
    }
}

/// Re-reads a block completely and checks it is self-consistent: every series sorted
/// and non-empty, chunks in order, non-overlapping, inside the block's range, each
/// chunk decodable with as many samples as its header says (XOR), downsampled (Aggr)
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
            if c.encoding == Encoding::Xor {
                let mut n = 0usize;
                for s in c.iter()? {
                    let (t, _) = s?;
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
/// the counter holds the windows plus its first and last raw samples.
fn verify_aggr(c: &Chunk, labels: &Labels) -> Result<(), BlockError> {
    use crate::chunk::aggr::{AggrType, aggr_samples};
    let bad = |what: String| BlockError::Corrupt(format!("aggr chunk of {labels}: {what}"));
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
    use storeapi::Label;

    fn labels(name: &str, replica: &str) -> Labels {
        Labels::from_sorted_unchecked(vec![
            Label::new("__name__", name),
            Label::new("job", replica),
        ])
    }

    fn xor_chunks(samples: &[(i64, f64)]) -> Vec<Chunk> {
        let mut out = Vec::new();
        for part in samples.chunks(SAMPLES_PER_CHUNK) {
            let mut x = XorChunk::new();
            for &(t, v) in part {
                x.append(t, v).unwrap();
            }
            out.push(finish_chunk(x, part[0].0));
        }
        out
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
            Err(MergeError::Conflict { t, blocks, .. }) => {
                assert_eq!(t, 2);
                assert_eq!(blocks, (0, 1));
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
}
