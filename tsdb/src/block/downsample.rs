//! Downsampling a whole block, as Thanos's `downsample.Downsample`: every series of a
//! raw (or 5m) block becomes a series of `AggrChunk`s (chunk encoding 0xFF) at a
//! coarser resolution, written as a new block with the input's time range, labels and
//! compaction lineage (level, sources, parents), `thanos.downsample.resolution` set to
//! the new resolution and `thanos.source` to `compactor`.
//!
//! Series are streamed one at a time from the input (in label order) into
//! [`BlockWriter`]: memory is one series' samples plus the writer's symbols and
//! postings, whatever the block size.
//!
//! Float series get Thanos's float `AggrChunk`s; native histogram series (HISTOGRAM and
//! FLOAT_HISTOGRAM chunks) get histogram `AggrChunk`s (count, sum and counter; see
//! `chunkenc::aggr_histogram`). A series that changes between floats and histograms is
//! downsampled run by run, as Thanos cuts at such a change.

use std::path::Path;

use storeapi::Labels;

use super::reader::SeriesIter;
use super::{Block, BlockError, BlockMeta, BlockOptions, BlockWriter, ThanosMeta};
use crate::chunk::aggr::{self, AggrChunk, RES_5M};
use crate::chunk::aggr_histogram::{
    downsample_histogram_aggr, downsample_raw_histograms, is_histogram_aggr,
};
use crate::chunk::{Chunk, Encoding};
use storeapi::histogram::FloatHistogram;

/// Writes the downsampled version of `block` at `resolution` (ms; coarser than the
/// block's own) under `parent` and returns its meta; the block directory is
/// `parent/<meta.ulid>`. On error nothing is left under `parent`.
pub fn downsample_block(
    parent: &Path,
    block: &Block,
    resolution: i64,
) -> Result<BlockMeta, BlockError> {
    let m = block.meta();
    let in_res = m.thanos.as_ref().map_or(0, |t| t.downsample.resolution);
    if resolution <= in_res {
        return Err(BlockError::Invalid(format!(
            "target resolution {resolution} not lower than the block's {in_res}"
        )));
    }
    let mut thanos = m
        .thanos
        .clone()
        .unwrap_or_else(|| ThanosMeta::new(Default::default(), "compactor"));
    thanos.downsample.resolution = resolution;
    thanos.source = "compactor".into();
    // Upload details (`files`, `segment_files`, `upload_time`) describe the input's
    // files, not ours; `index_stats` is measured anew by the writer.
    thanos.extra.clear();
    let opts = BlockOptions {
        thanos: Some(thanos),
        compaction_level: m.compaction.level,
        sources: if m.compaction.sources.is_empty() {
            vec![m.ulid]
        } else {
            m.compaction.sources.clone()
        },
        parents: m.compaction.parents.clone(),
        ..Default::default()
    };
    let mut it = DownsampleIter {
        series: block.series_iter()?,
        in_res,
        out_res: resolution,
        error: None,
    };
    let written = BlockWriter::write(parent, m.min_time, m.max_time, &mut it, &opts);
    match (written, it.error) {
        (Ok(meta), None) => Ok(meta),
        (Ok(meta), Some(e)) => {
            // The writer saw a truncated stream; what it published is incomplete.
            let _ = super::delete_block(&super::block_dir(parent, meta.ulid));
            Err(e)
        }
        (Err(_), Some(e)) | (Err(e), None) => Err(e),
    }
}

/// The input's series, downsampled; stops at the first error (kept in `error`).
struct DownsampleIter<'a> {
    series: SeriesIter<'a>,
    in_res: i64,
    out_res: i64,
    error: Option<BlockError>,
}

impl Iterator for DownsampleIter<'_> {
    type Item = (Labels, Vec<Chunk>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.error.is_some() {
            return None;
        }
        let r = self.series.next()?.and_then(|(labels, chunks)| {
            let out = downsample_series(&labels, &chunks, self.in_res, self.out_res)?;
            Ok((labels, out))
        });
        match r {
            Ok(x) => Some(x),
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}

/// The samples of a run of raw chunks of one kind.
enum Run {
    Floats(Vec<(i64, f64)>),
    Histograms(Vec<(i64, FloatHistogram)>),
}

impl Run {
    fn downsample(self, resolution: i64) -> Result<Vec<AggrChunk>, BlockError> {
        Ok(match self {
            Run::Floats(s) => aggr::downsample_raw(&s, resolution)?,
            Run::Histograms(h) => downsample_raw_histograms(h, resolution)?,
        })
    }

    fn is_empty(&self) -> bool {
        match self {
            Run::Floats(s) => s.is_empty(),
            Run::Histograms(h) => h.is_empty(),
        }
    }
}

/// Raw chunks → `AggrChunk`s at `resolution`, one run per stretch of float or histogram
/// chunks (Thanos's `cutNewChunk`). Stale markers and samples going back in time within
/// a chunk are dropped (Thanos's `expand*ChunkIterator`).
fn downsample_raw_chunks(
    labels: &Labels,
    chunks: &[&Chunk],
    resolution: i64,
) -> Result<Vec<AggrChunk>, BlockError> {
    let mut out = Vec::new();
    let mut run: Option<Run> = None;
    for c in chunks {
        let histogram = match c.encoding {
            Encoding::Xor => false,
            Encoding::Histogram | Encoding::FloatHistogram => true,
            e => {
                return Err(BlockError::Corrupt(format!(
                    "series {labels}: {e:?} chunk among raw chunks"
                )));
            }
        };
        if run
            .as_ref()
            .is_some_and(|r| matches!(r, Run::Histograms(_)) != histogram)
            && let Some(r) = run.take()
        {
            out.extend(r.downsample(resolution)?);
        }
        let r = run.get_or_insert_with(|| {
            if histogram {
                Run::Histograms(Vec::new())
            } else {
                Run::Floats(Vec::new())
            }
        });
        match r {
            Run::Floats(all) => aggr::expand_samples(crate::chunk::xor::decode_all(&c.data)?, all),
            Run::Histograms(all) => {
                let mut last_t = 0i64;
                for s in c.iter_histograms()? {
                    let s = s?;
                    let h = s.h.to_float();
                    if !storeapi::is_stale_nan(h.sum) && s.t >= last_t {
                        last_t = s.t;
                        all.push((s.t, h));
                    }
                }
            }
        }
    }
    if let Some(r) = run.filter(|r| !r.is_empty()) {
        out.extend(r.downsample(resolution)?);
    }
    Ok(out)
}

/// `AggrChunk`s at `in_res` → `out_res`, one run per stretch of float or histogram
/// aggregates (Thanos's `downsampleAggr` per `isHistogramAggrChunk` run).
fn downsample_aggr_chunks(
    chunks: &[AggrChunk],
    in_res: i64,
    out_res: i64,
) -> Result<Vec<AggrChunk>, BlockError> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=chunks.len() {
        let kind = |k: usize| is_histogram_aggr(&chunks[k].data);
        if i == chunks.len() || kind(i) != kind(i - 1) {
            let part = &chunks[start..i];
            out.extend(if kind(start) {
                downsample_histogram_aggr(part, in_res, out_res)?
            } else {
                aggr::downsample_aggr(part, in_res, out_res)?
            });
            start = i;
        }
    }
    Ok(out)
}

/// One series' chunks at `in_res` → `AggrChunk`s at `out_res`.
pub fn downsample_series(
    labels: &Labels,
    chunks: &[Chunk],
    in_res: i64,
    out_res: i64,
) -> Result<Vec<Chunk>, BlockError> {
    if chunks.windows(2).any(|w| w[0].max_time >= w[1].min_time) {
        return Err(BlockError::Corrupt(format!(
            "series {labels}: chunks overlap or are out of order"
        )));
    }
    let out = if in_res == 0 {
        downsample_raw_chunks(labels, &chunks.iter().collect::<Vec<_>>(), out_res)?
    } else {
        // Thanos's repair of downsampled blocks holding raw chunks (older Thanos bugs):
        // empty ones are skipped, others downsampled to 5m first.
        let mut fixed: Vec<AggrChunk> = Vec::with_capacity(chunks.len());
        for c in chunks {
            match c.encoding {
                Encoding::Aggr => fixed.push(AggrChunk {
                    min_time: c.min_time,
                    max_time: c.max_time,
                    data: c.data.clone(),
                }),
                _ if c.num_samples() == 0 => {
                    tracing::warn!(series = %labels, "skipping an empty raw chunk in a downsampled block");
                }
                _ => fixed.extend(downsample_raw_chunks(labels, &[c], RES_5M)?),
            }
        }
        downsample_aggr_chunks(&fixed, in_res, out_res)?
    };
    Ok(out
        .into_iter()
        .map(|a| Chunk {
            min_time: a.min_time,
            max_time: a.max_time,
            encoding: Encoding::Aggr,
            data: a.data,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockOptions, BlockWriter, verify_block};
    use crate::chunk::XorChunk;
    use crate::chunk::aggr::{AggrType, RES_1H, aggr_samples};
    use std::collections::BTreeMap;
    use storeapi::Label;

    fn xor_chunks(samples: &[(i64, f64)]) -> Vec<Chunk> {
        samples
            .chunks(120)
            .map(|p| {
                let mut x = XorChunk::new();
                for &(t, v) in p {
                    x.append(t, v).unwrap();
                }
                Chunk {
                    min_time: p[0].0,
                    max_time: p[p.len() - 1].0,
                    encoding: Encoding::Xor,
                    data: bytes::Bytes::from(x.into_bytes()),
                }
            })
            .collect()
    }

    fn series(i: usize) -> Labels {
        Labels::from_sorted_unchecked(vec![
            Label::new("__name__", "x"),
            Label::new("i", i.to_string()),
        ])
    }

    /// Per window (t / r): count, sum, min, max of the non-NaN samples.
    fn direct(s: &[(i64, f64)], r: i64) -> BTreeMap<i64, (f64, f64, f64, f64)> {
        let mut m: BTreeMap<i64, (f64, f64, f64, f64)> = BTreeMap::new();
        for &(t, v) in s.iter().filter(|x| !x.1.is_nan()) {
            let e = m.entry(t / r).or_insert((0.0, 0.0, f64::MAX, f64::MIN));
            e.0 += 1.0;
            e.1 += v;
            e.2 = e.2.min(v);
            e.3 = e.3.max(v);
        }
        m
    }

    fn read_aggr(b: &Block, r: i64) -> BTreeMap<String, BTreeMap<i64, (f64, f64, f64, f64)>> {
        let mut out = BTreeMap::new();
        for s in b.series_iter().unwrap() {
            let (l, cs) = s.unwrap();
            let m: &mut BTreeMap<i64, (f64, f64, f64, f64)> = out.entry(l.to_string()).or_default();
            for c in cs {
                assert_eq!(c.encoding, Encoding::Aggr);
                let g = |t| aggr_samples(&c.data, t).unwrap().unwrap();
                let (n, s, lo, hi) = (
                    g(AggrType::Count),
                    g(AggrType::Sum),
                    g(AggrType::Min),
                    g(AggrType::Max),
                );
                for i in 0..n.len() {
                    let e = m
                        .entry(n[i].0 / r)
                        .or_insert((0.0, 0.0, f64::MAX, f64::MIN));
                    e.0 += n[i].1;
                    e.1 += s[i].1;
                    e.2 = e.2.min(lo[i].1);
                    e.3 = e.3.max(hi[i].1);
                }
            }
        }
        out
    }

    fn close(a: &BTreeMap<i64, (f64, f64, f64, f64)>, b: &BTreeMap<i64, (f64, f64, f64, f64)>) {
        assert_eq!(a.len(), b.len());
        for ((ka, x), (kb, y)) in a.iter().zip(b) {
            assert_eq!((ka, x.0, x.2, x.3), (kb, y.0, y.2, y.3));
            assert!((x.1 - y.1).abs() <= 1e-9 * y.1.abs().max(1.0));
        }
    }

    #[test]
    fn raw_block_to_5m_to_1h_keeps_meta_lineage_and_aggregates() {
        let d = tempfile::tempdir().unwrap();
        let t0 = 1_700_006_400_000i64;
        let span = 12 * 24 * RES_1H;
        let data: Vec<Vec<(i64, f64)>> = (0..3)
            .map(|i| {
                (0..span / 60_000)
                    .filter(|k| i != 2 || k % 3 != 0)
                    .map(|k| {
                        (
                            t0 + k * 60_000 + i as i64,
                            ((k * 37 + i as i64) % 101) as f64 / 4.0,
                        )
                    })
                    .collect()
            })
            .collect();
        let mut th = ThanosMeta::new(BTreeMap::from([("tenant".into(), "a".into())]), "receive");
        th.extra.insert("upload_time".into(), "x".into());
        let src = [
            super::super::Ulid::with_time(1),
            super::super::Ulid::with_time(2),
        ];
        let opts = BlockOptions {
            thanos: Some(th),
            compaction_level: 3,
            sources: src.to_vec(),
            ..Default::default()
        };
        let meta = BlockWriter::write(
            d.path(),
            t0,
            t0 + span,
            data.iter()
                .enumerate()
                .map(|(i, s)| (series(i), xor_chunks(s))),
            &opts,
        )
        .unwrap();
        let raw = Block::open(&d.path().join(meta.ulid.to_string())).unwrap();
        let out = tempfile::tempdir().unwrap();
        let m5 = downsample_block(out.path(), &raw, RES_5M).unwrap();
        let dir5 = out.path().join(m5.ulid.to_string());
        let st = verify_block(&dir5).unwrap();
        assert_eq!((m5.min_time, m5.max_time), (t0, t0 + span));
        assert_eq!(m5.compaction.level, 3);
        assert_eq!(m5.compaction.sources, src);
        let t = m5.thanos.as_ref().unwrap();
        assert_eq!(
            (t.downsample.resolution, t.source.as_str()),
            (RES_5M, "compactor")
        );
        assert_eq!(t.labels["tenant"], "a");
        assert!(t.extra.is_empty());
        assert_eq!(st.num_series, 3);
        let windows: usize = data.iter().map(|s| direct(s, RES_5M).len()).sum();
        assert_eq!(m5.stats.num_samples as usize, windows);
        let b5 = Block::open(&dir5).unwrap();
        let got = read_aggr(&b5, RES_5M);
        for (i, s) in data.iter().enumerate() {
            close(&got[&series(i).to_string()], &direct(s, RES_5M));
        }
        // 5m → 1h, and refusing to go the wrong way.
        assert!(downsample_block(out.path(), &b5, RES_5M).is_err());
        let m1 = downsample_block(out.path(), &b5, RES_1H).unwrap();
        let dir1 = out.path().join(m1.ulid.to_string());
        verify_block(&dir1).unwrap();
        assert_eq!(m1.thanos.as_ref().unwrap().downsample.resolution, RES_1H);
        assert_eq!(m1.compaction.sources, src);
        let got = read_aggr(&Block::open(&dir1).unwrap(), RES_1H);
        for (i, s) in data.iter().enumerate() {
            close(&got[&series(i).to_string()], &direct(s, RES_1H));
        }
    }

    /// A histogram counter with `n` samples every minute from `t0`.
    fn histograms(t0: i64, n: i64) -> Vec<(i64, storeapi::histogram::Histogram)> {
        use storeapi::histogram::{Histogram, Span};
        (0..n)
            .map(|k| {
                let b = [k + 1, 2 * k + 1, 1];
                let count: i64 = b.iter().sum();
                let h = Histogram {
                    schema: 2,
                    zero_threshold: 0.001,
                    count: count as u64,
                    sum: k as f64,
                    positive_spans: vec![Span {
                        offset: -1,
                        length: 3,
                    }],
                    // Delta-encoded buckets.
                    positive_buckets: vec![b[0], b[1] - b[0], b[2] - b[1]],
                    ..Default::default()
                };
                (t0 + k * 60_000, h)
            })
            .collect()
    }

    #[test]
    fn histogram_series_and_type_changes_are_downsampled_to_5m_and_1h() {
        use crate::chunk::SeriesEncoder;
        use crate::chunk::aggr_histogram::{aggr_histograms, is_histogram_aggr};
        let d = tempfile::tempdir().unwrap();
        let t0 = 1_700_006_400_000i64;
        let span = 11 * 24 * RES_1H;
        let n = span / 60_000;
        // Series 0: histograms only; series 1: floats for a day, then histograms.
        let mut e = SeriesEncoder::new();
        for (t, h) in histograms(t0, n) {
            e.append_histogram(t, &h).unwrap();
        }
        let only = e.finish();
        let mut e = SeriesEncoder::new();
        for k in 0..24 * 60 {
            e.append_float(t0 + k * 60_000, k as f64).unwrap();
        }
        for (t, h) in histograms(t0 + 24 * RES_1H, n - 24 * 60) {
            e.append_histogram(t, &h).unwrap();
        }
        let mixed = e.finish();
        let meta = BlockWriter::write(
            d.path(),
            t0,
            t0 + span,
            [(series(0), only), (series(1), mixed)],
            &BlockOptions::default(),
        )
        .unwrap();
        let b = Block::open(&d.path().join(meta.ulid.to_string())).unwrap();
        let out = tempfile::tempdir().unwrap();
        let m5 = downsample_block(out.path(), &b, RES_5M).unwrap();
        let dir5 = out.path().join(m5.ulid.to_string());
        verify_block(&dir5).unwrap();
        let b5 = Block::open(&dir5).unwrap();
        let m1 = downsample_block(out.path(), &b5, RES_1H).unwrap();
        let dir1 = out.path().join(m1.ulid.to_string());
        verify_block(&dir1).unwrap();
        for (dir, r) in [(&dir5, RES_5M), (&dir1, RES_1H)] {
            let blk = Block::open(dir).unwrap();
            let got: Vec<(Labels, Vec<Chunk>)> =
                blk.series_iter().unwrap().map(Result::unwrap).collect();
            assert_eq!(got.len(), 2);
            for (l, cs) in &got {
                let (mut floats, mut hists, mut last_counter) = (0.0, 0.0, 0.0);
                for c in cs {
                    assert_eq!(c.encoding, Encoding::Aggr);
                    let n = aggr_samples(&c.data, AggrType::Count).unwrap().unwrap();
                    if is_histogram_aggr(&c.data) {
                        hists += n.iter().map(|x| x.1).sum::<f64>();
                        let k = aggr_histograms(&c.data, AggrType::Counter)
                            .unwrap()
                            .unwrap();
                        assert!(k.iter().all(|(t, _)| t % r == r - 1 || *t == c.max_time));
                        last_counter = k.last().unwrap().1.count;
                    } else {
                        floats += n.iter().map(|x| x.1).sum::<f64>();
                    }
                }
                let (want_f, want_h) = if *l == series(0) {
                    (0.0, n as f64)
                } else {
                    (24.0 * 60.0, (n - 24 * 60) as f64)
                };
                assert_eq!((floats, hists), (want_f, want_h), "{l} at {r}");
                // The last histogram's count: 3k + 3 at k = its index.
                let k_last = if *l == series(0) {
                    n - 1
                } else {
                    n - 24 * 60 - 1
                };
                assert_eq!(last_counter, (3 * k_last + 3) as f64, "{l} at {r}");
            }
        }
    }
}
