//! Reading downsampled data (Thanos's 5m/1h blocks) through the StoreAPI.
//!
//! The querier asks stores for the aggregate that fits the PromQL function reading the
//! selection (Thanos's `aggrsFromFunc`): `min_*`/`max_*`/`sum_*`/`count_*` functions
//! the matching aggregate, `rate`/`increase`/`irate`/`resets` the counter, everything
//! else count and sum, read as their average. Raw chunks in the same answer are read as
//! they are (a store sends raw where it serves raw blocks).
//!
//! Two deliberate differences from Thanos's querier, both so that answers over
//! windows aligned to the downsampling resolution equal the raw answers:
//! - `count_over_time` sums the per-window counts (and counts raw samples as 1 each);
//!   Thanos counts the aggregated points, i.e. the number of windows. The engine is told
//!   through [`promql::SelectResult::counts`].
//! - Where one series has both raw and aggregated chunks over the same time (a store
//!   filling time whose raw blocks were deleted with coarser blocks), raw wins: aggregate
//!   samples inside the raw chunks' time span are dropped instead of being mixed in.
//!
//! Native histogram aggregates (count XOR, sum and counter histograms; no min or max)
//! are read the same way: the counter and the sum as histograms, the count as floats,
//! the average as the sum divided by the count (a gauge histogram, as Thanos's
//! `AverageChunkIterator`). A `min_*`/`max_*` selection gets nothing from them, as
//! PromQL ignores histograms there. Histogram counters need no reset handling: Orrery's
//! compactor keeps them monotonic, and a drop between chunks (Thanos restarts the
//! counter at each chunk) is a reset PromQL sees by itself.

use bytes::Bytes;
use storeapi::Sample;
use storeapi::histogram::{HistogramSample, HistogramValue};
use storeapi::wire::thanos::{Aggr, chunk::Encoding as ChunkEncoding};

use crate::histograms::is_histogram_encoding;

/// 5 minutes and 1 hour in milliseconds (Thanos's `ResLevel1`, `ResLevel2`).
pub const RES_5M: i64 = 5 * 60 * 1000;
pub const RES_1H: i64 = 60 * 60 * 1000;

/// Functions that need two samples in their range (Thanos's `promqlFuncRequiresTwoSamples`):
/// their selections are capped at half the range's resolution.
fn requires_two_samples(func: &str) -> bool {
    matches!(
        func,
        "rate"
            | "irate"
            | "increase"
            | "delta"
            | "idelta"
            | "deriv"
            | "predict_linear"
            | "holt_winters"
            | "double_exponential_smoothing"
    )
}

/// The aggregates to ask for when `func` reads the selection (Thanos's `aggrsFromFunc`).
pub fn aggrs_from_func(func: Option<&str>) -> Vec<Aggr> {
    let f = func.unwrap_or("");
    if f == "min" || f.starts_with("min_") {
        vec![Aggr::Min]
    } else if f == "max" || f.starts_with("max_") {
        vec![Aggr::Max]
    } else if f == "count" || f.starts_with("count_") {
        vec![Aggr::Count]
    } else if f.starts_with("sum_") {
        vec![Aggr::Sum]
    } else if matches!(
        f,
        "increase" | "rate" | "irate" | "resets" | "xincrease" | "xrate"
    ) {
        vec![Aggr::Counter]
    } else {
        vec![Aggr::Count, Aggr::Sum]
    }
}

/// The `max_resolution_window` of one selection: the request's, capped at half the range
/// for functions that need two samples in it (Thanos's `maxResolutionFromSelectHints`).
pub fn max_resolution_for(max_res: i64, range: i64, func: Option<&str>) -> i64 {
    if range > 0 && func.is_some_and(requires_two_samples) {
        max_res.min(range / 2)
    } else {
        max_res
    }
}

/// Thanos's dynamic lookback delta: a selection that may read 5m (1h) data looks back at
/// least 5m (1h), so instant selectors find the sparse aggregated points.
pub fn lookback_for(lookback: i64, max_res: i64) -> i64 {
    if max_res > RES_5M.max(lookback) {
        lookback.max(RES_1H)
    } else if max_res > lookback {
        lookback.max(RES_5M)
    } else {
        lookback
    }
}

/// How the samples of a downsampled chunk are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One aggregate's values (count, sum, min or max).
    Single(Aggr),
    /// Counter values with Thanos's counter-reset handling across chunks.
    Counter,
    /// `sum / count` per window.
    Average,
}

impl Mode {
    /// The mode for a request's `aggregates` (as [`aggrs_from_func`] builds them).
    pub fn from_aggregates(aggrs: &[i32]) -> Mode {
        match aggrs {
            [a] => match Aggr::try_from(*a) {
                Ok(Aggr::Counter) => Mode::Counter,
                Ok(a @ (Aggr::Count | Aggr::Sum | Aggr::Min | Aggr::Max)) => Mode::Single(a),
                _ => Mode::Average,
            },
            _ => Mode::Average,
        }
    }

    /// Whether values are counts of raw samples (see the module doc).
    pub fn counts(self) -> bool {
        self == Mode::Single(Aggr::Count)
    }
}

/// Index of an aggregate in `AggrChunk` field order (count, sum, min, max, counter).
fn slot(a: Aggr) -> usize {
    match a {
        Aggr::Count => 0,
        Aggr::Sum => 1,
        Aggr::Min => 2,
        Aggr::Max => 3,
        Aggr::Counter | Aggr::Raw => 4,
    }
}

/// A store's chunk as the decoder needs it: raw, or aggregate sub-chunks.
pub struct ChunkView<'a> {
    pub min_time: i64,
    pub max_time: i64,
    pub raw: Option<&'a (i32, Bytes)>,
    pub aggrs: &'a [Option<(i32, Bytes)>; 5],
}

fn xor_samples(enc: i32, data: &[u8], what: &str) -> Result<Vec<(i64, f64)>, String> {
    if enc != ChunkEncoding::Xor as i32 {
        return Err(format!("{what} chunk has encoding {enc}, not XOR"));
    }
    chunkenc::xor::decode_all(data).map_err(|e| format!("{what} chunk: {e}"))
}

/// The histograms of a HISTOGRAM or FLOAT_HISTOGRAM (sub-)chunk.
fn histogram_samples(enc: i32, data: &Bytes, what: &str) -> Result<Vec<HistogramSample>, String> {
    let encoding = if enc == ChunkEncoding::Histogram as i32 {
        chunkenc::Encoding::Histogram
    } else if enc == ChunkEncoding::FloatHistogram as i32 {
        chunkenc::Encoding::FloatHistogram
    } else {
        return Err(format!("{what} chunk has encoding {enc}, not a histogram"));
    };
    let c = chunkenc::Chunk {
        min_time: 0,
        max_time: 0,
        encoding,
        data: data.clone(),
    };
    c.iter_histograms()
        .map_err(|e| format!("{what} chunk: {e}"))?
        .map(|s| s.map_err(|e| format!("{what} chunk: {e}")))
        .collect()
}

/// Whether a downsampled chunk holds native histogram aggregates (a histogram sum or
/// counter among what was sent).
fn is_histogram_aggregate(c: &ChunkView<'_>) -> bool {
    c.aggrs[slot(Aggr::Sum)..]
        .iter()
        .flatten()
        .any(|(e, _)| is_histogram_encoding(*e))
}

fn histogram_aggregate(c: &ChunkView<'_>, a: Aggr) -> Result<Vec<HistogramSample>, String> {
    match &c.aggrs[slot(a)] {
        Some((enc, data)) => histogram_samples(*enc, data, a.as_str_name()),
        None => Err(format!(
            "store sent a downsampled histogram chunk [{}, {}] without the {} aggregate",
            c.min_time,
            c.max_time,
            a.as_str_name()
        )),
    }
}

/// What one chunk gives: float samples (values or counts) and histogram samples.
type Read = (Vec<(i64, f64)>, Vec<HistogramSample>);

/// The samples `mode` reads from a histogram aggregate chunk: floats (counts) or
/// histograms.
fn read_histogram_aggregate(c: &ChunkView<'_>, mode: Mode) -> Result<Read, String> {
    Ok(match mode {
        Mode::Single(Aggr::Count) => (aggregate(c, Aggr::Count)?, Vec::new()),
        Mode::Single(a @ Aggr::Sum) => (Vec::new(), histogram_aggregate(c, a)?),
        Mode::Counter => (Vec::new(), histogram_aggregate(c, Aggr::Counter)?),
        Mode::Average => {
            let (cnt, sum) = (
                aggregate(c, Aggr::Count)?,
                histogram_aggregate(c, Aggr::Sum)?,
            );
            if cnt.len() != sum.len() || cnt.iter().zip(&sum).any(|(a, b)| a.0 != b.t) {
                return Err("sum and count aggregates are not aligned".into());
            }
            let avg = cnt
                .iter()
                .zip(sum)
                .map(|(n, s)| {
                    let mut h = s.h.to_float();
                    h.div(n.1);
                    HistogramSample {
                        t: s.t,
                        h: HistogramValue::Float(Box::new(h)),
                    }
                })
                .collect();
            (Vec::new(), avg)
        }
        // Min, max (and raw): histograms have none; PromQL ignores them there.
        Mode::Single(_) => (Vec::new(), Vec::new()),
    })
}

fn aggregate(c: &ChunkView<'_>, a: Aggr) -> Result<Vec<(i64, f64)>, String> {
    match &c.aggrs[slot(a)] {
        Some((enc, data)) => xor_samples(*enc, data, a.as_str_name()),
        None => Err(format!(
            "store sent a downsampled chunk [{}, {}] without the {} aggregate",
            c.min_time,
            c.max_time,
            a.as_str_name()
        )),
    }
}

/// The float and histogram samples of one series from one store whose chunks include
/// aggregates, read per `mode`, in time order and trimmed to `[mint, maxt]`.
pub fn decode_series(
    chunks: &mut [ChunkView<'_>],
    mint: i64,
    maxt: i64,
    mode: Mode,
) -> Result<(Vec<Sample>, Vec<HistogramSample>), String> {
    chunks.sort_by_key(|c| (c.min_time, c.max_time));
    // Raw wins where both exist: the time span of the raw chunks.
    let raw_span =
        chunks
            .iter()
            .filter(|c| c.raw.is_some())
            .fold(None, |s: Option<(i64, i64)>, c| {
                Some(s.map_or((c.min_time, c.max_time), |(a, b)| {
                    (a.min(c.min_time), b.max(c.max_time))
                }))
            });
    let outside_raw = |t: i64| raw_span.is_none_or(|(a, b)| t < a || t > b);
    let mut runs: Vec<Vec<(i64, f64)>> = Vec::with_capacity(chunks.len());
    let mut hist_runs: Vec<Vec<HistogramSample>> = Vec::new();
    for c in chunks.iter() {
        let run = match c.raw {
            Some((enc, data)) if is_histogram_encoding(*enc) => {
                // Raw histograms count 1 each as histograms (the engine's counting).
                hist_runs.push(histogram_samples(*enc, data, "raw")?);
                continue;
            }
            None if is_histogram_aggregate(c) => {
                let (mut f, mut h) = read_histogram_aggregate(c, mode)?;
                f.retain(|x| outside_raw(x.0));
                h.retain(|x| outside_raw(x.t));
                runs.push(f);
                hist_runs.push(h);
                continue;
            }
            Some((enc, data)) => {
                let mut s = xor_samples(*enc, data, "raw")?;
                if mode.counts() {
                    for x in &mut s {
                        if !storeapi::is_stale_nan(x.1) {
                            x.1 = 1.0;
                        }
                    }
                }
                s
            }
            None => {
                let mut s = match mode {
                    Mode::Single(a) => aggregate(c, a)?,
                    Mode::Counter => aggregate(c, Aggr::Counter)?,
                    Mode::Average => {
                        let (cnt, sum) = (aggregate(c, Aggr::Count)?, aggregate(c, Aggr::Sum)?);
                        if cnt.len() != sum.len() || cnt.iter().zip(&sum).any(|(a, b)| a.0 != b.0) {
                            return Err("sum and count aggregates are not aligned".into());
                        }
                        cnt.iter()
                            .zip(&sum)
                            .map(|(c, s)| (c.0, s.1 / c.1))
                            .collect()
                    }
                };
                s.retain(|x| outside_raw(x.0));
                s
            }
        };
        runs.push(run);
    }
    let mut out: Vec<Sample> = if mode == Mode::Counter {
        apply_counter_resets(&runs)
    } else {
        let mut all: Vec<Sample> = runs
            .into_iter()
            .flatten()
            .map(|(t, v)| Sample { t, v })
            .collect();
        all.sort_by_key(|s| s.t);
        all.dedup_by_key(|s| s.t);
        all
    };
    out.retain(|s| s.t >= mint && s.t <= maxt);
    hist_runs.retain(|r| !r.is_empty());
    let mut hists = if hist_runs.len() > 1 {
        // Time-ordered runs: a chain gives each timestamp once, hints unknown where the
        // chunk changes.
        hist_runs.sort_by_key(|r| r[0].t);
        crate::histograms::chain(hist_runs)
    } else {
        hist_runs.pop().unwrap_or_default()
    };
    hists.retain(|s| s.t >= mint && s.t <= maxt);
    Ok((out, hists))
}

/// Thanos's `ApplyCounterResetsSeriesIterator` over time-ordered runs (raw counter
/// samples, or counter aggregates: the batch's first raw sample, then the counter per
/// window, then the batch's last raw value again at the last window's timestamp). The
/// result is monotonic (resets applied), so `rate`/`increase` over it are continuous
/// across chunk boundaries; NaNs (stale markers) are dropped.
pub fn apply_counter_resets(runs: &[Vec<(i64, f64)>]) -> Vec<Sample> {
    let mut out = Vec::new();
    let (mut last_t, mut last_v, mut total) = (i64::MIN, 0.0f64, 0.0f64);
    let mut started = false;
    for &(t, v) in runs.iter().flatten() {
        if v.is_nan() {
            continue;
        }
        if !started {
            started = true;
            (last_t, last_v, total) = (t, v, v);
            out.push(Sample { t, v });
            continue;
        }
        if t > last_t {
            total += if v >= last_v { v - last_v } else { v };
            (last_t, last_v) = (t, v);
            out.push(Sample { t, v: total });
        } else if t == last_t {
            // The true last raw value: the next run's first sample is compared with it.
            last_v = v;
        }
        // Earlier: an overlap going back in time, skipped.
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chunkenc::XorChunk;
    use chunkenc::aggr::{AggrType, RES_5M as TSDB_5M, aggr_get, downsample_raw};

    #[test]
    fn aggregates_from_functions_as_thanos() {
        assert_eq!(aggrs_from_func(Some("max_over_time")), vec![Aggr::Max]);
        assert_eq!(aggrs_from_func(Some("min_over_time")), vec![Aggr::Min]);
        assert_eq!(aggrs_from_func(Some("count_over_time")), vec![Aggr::Count]);
        assert_eq!(aggrs_from_func(Some("sum_over_time")), vec![Aggr::Sum]);
        assert_eq!(aggrs_from_func(Some("rate")), vec![Aggr::Counter]);
        assert_eq!(aggrs_from_func(Some("increase")), vec![Aggr::Counter]);
        for f in [None, Some("avg_over_time"), Some("abs"), Some("sum")] {
            assert_eq!(aggrs_from_func(f), vec![Aggr::Count, Aggr::Sum], "{f:?}");
        }
        assert_eq!(
            max_resolution_for(RES_1H, 20 * 60_000, Some("rate")),
            600_000
        );
        assert_eq!(
            max_resolution_for(RES_1H, 20 * 60_000, Some("max_over_time")),
            RES_1H
        );
        assert_eq!(lookback_for(300_000, 0), 300_000);
        assert_eq!(lookback_for(300_000, RES_5M), 300_000);
        assert_eq!(lookback_for(300_000, RES_1H), RES_1H);
        assert_eq!(lookback_for(60_000, RES_5M), RES_5M);
    }

    type Owned = (i64, i64, Option<(i32, Bytes)>, [Option<(i32, Bytes)>; 5]);

    /// An `AggrChunk` as a store sends it: every aggregate it holds, with its StoreAPI
    /// encoding (the stored encoding byte minus one).
    fn as_sent(c: chunkenc::aggr::AggrChunk) -> Owned {
        let a = [
            AggrType::Count,
            AggrType::Sum,
            AggrType::Min,
            AggrType::Max,
            AggrType::Counter,
        ]
        .map(|t| {
            let (e, d) = aggr_get(&c.data, t).ok().flatten()?;
            Some((i32::from(e) - 1, c.data.slice_ref(d)))
        });
        (c.min_time, c.max_time, None, a)
    }

    /// The chunks of `samples` downsampled to 5m, as a store sends them (all aggregates).
    fn downsampled(samples: &[(i64, f64)]) -> Vec<Owned> {
        downsample_raw(samples, TSDB_5M)
            .unwrap()
            .into_iter()
            .map(as_sent)
            .collect()
    }

    fn raw_chunk(samples: &[(i64, f64)]) -> Owned {
        let mut c = XorChunk::new();
        for &(t, v) in samples {
            c.append(t, v).unwrap();
        }
        (
            samples[0].0,
            samples[samples.len() - 1].0,
            Some((0, Bytes::from(c.into_bytes()))),
            Default::default(),
        )
    }

    fn views(chunks: &[Owned]) -> Vec<ChunkView<'_>> {
        chunks
            .iter()
            .map(|c| ChunkView {
                min_time: c.0,
                max_time: c.1,
                raw: c.2.as_ref(),
                aggrs: &c.3,
            })
            .collect()
    }

    fn decode(chunks: &[Owned], mint: i64, maxt: i64, mode: Mode) -> Vec<Sample> {
        decode_series(&mut views(chunks), mint, maxt, mode)
            .unwrap()
            .0
    }

    /// A gauge-like series at 1m with an offset, 40h (several aggregate chunks).
    fn series() -> Vec<(i64, f64)> {
        (0..2400)
            .map(|i| (7_000 + i * 60_000, ((i * 37) % 101) as f64 - 20.0))
            .collect()
    }

    #[test]
    fn single_aggregates_equal_a_direct_window_computation() {
        let s = series();
        let ch = downsampled(&s);
        assert!(ch.len() > 1);
        let all = (i64::MIN, i64::MAX);
        let max = decode(&ch, all.0, all.1, Mode::Single(Aggr::Max));
        let count = decode(&ch, all.0, all.1, Mode::Single(Aggr::Count));
        let sum = decode(&ch, all.0, all.1, Mode::Single(Aggr::Sum));
        let avg = decode(&ch, all.0, all.1, Mode::Average);
        assert_eq!(max.len(), count.len());
        for (i, w) in max.iter().enumerate() {
            let win: Vec<f64> = s
                .iter()
                .filter(|x| x.0 / RES_5M == w.t / RES_5M)
                .map(|x| x.1)
                .collect();
            assert_eq!(w.v, win.iter().cloned().fold(f64::MIN, f64::max));
            assert_eq!(count[i].v, win.len() as f64);
            let want: f64 = win.iter().sum();
            assert!((sum[i].v - want).abs() < 1e-9);
            assert!((avg[i].v - want / win.len() as f64).abs() < 1e-9);
        }
        assert_eq!(count.iter().map(|x| x.v).sum::<f64>(), s.len() as f64);
        // Trimmed to the range.
        let part = decode(&ch, RES_5M, 3 * RES_5M, Mode::Single(Aggr::Max));
        assert_eq!(
            part.iter().map(|x| x.t).collect::<Vec<_>>(),
            vec![2 * RES_5M - 1, 3 * RES_5M - 1]
        );
    }

    #[test]
    fn counter_increase_survives_resets_within_and_between_chunks() {
        // A counter at 1m with resets, over 40h so several chunks are cut.
        let mut s = Vec::new();
        let mut v = 0.0;
        let mut true_increase = 0.0;
        for i in 0..2400i64 {
            let step = (i % 5) as f64;
            if i % 700 == 350 {
                v = 1.0; // reset: the increase since the previous sample is 1
                true_increase += 1.0;
            } else if i > 0 {
                v += step;
                true_increase += step;
            }
            s.push((7_000 + i * 60_000, v));
        }
        let ch = downsampled(&s);
        assert!(ch.len() > 2, "{} chunks", ch.len());
        let out = decode(&ch, i64::MIN, i64::MAX, Mode::Counter);
        assert!(out.windows(2).all(|w| w[0].t < w[1].t && w[0].v <= w[1].v));
        let first = out[0];
        assert_eq!((first.t, first.v), s[0]);
        let got = out[out.len() - 1].v - first.v;
        assert!(
            (got - true_increase).abs() < 1e-9,
            "{got} vs {true_increase}"
        );
        // Raw chunks through the same path give the same totals at the raw samples.
        let raw = decode(
            &[raw_chunk(&s[..1200]), raw_chunk(&s[1200..])],
            i64::MIN,
            i64::MAX,
            Mode::Counter,
        );
        assert_eq!(raw.len(), s.len());
        assert!((raw[raw.len() - 1].v - raw[0].v - true_increase).abs() < 1e-9);
    }

    #[test]
    fn raw_wins_where_raw_and_aggregates_overlap_and_counts_count_raw_samples() {
        let s = series();
        let mut chunks = downsampled(&s);
        // Raw for the last 2h only (as if the raw block of that time was kept).
        let cut = s.len() - 480;
        chunks.push(raw_chunk(&s[cut..]));
        let out = decode(&chunks, i64::MIN, i64::MAX, Mode::Single(Aggr::Count));
        let raw_from = s[cut].0;
        // Before the raw span: window counts; inside: one per raw sample.
        assert!(out.iter().filter(|x| x.t >= raw_from).all(|x| x.v == 1.0));
        assert_eq!(out.iter().filter(|x| x.t >= raw_from).count(), 480);
        let total: f64 = out.iter().map(|x| x.v).sum();
        // The window straddling the raw start loses its aggregated part: at most one
        // window's samples (5 at 1m) are missing, never double counted.
        assert!(
            total <= s.len() as f64 && total >= s.len() as f64 - 5.0,
            "{total}"
        );
    }

    #[test]
    fn missing_aggregate_is_an_error() {
        let s = series();
        let mut ch = downsampled(&s);
        ch[0].3[2] = None;
        let e = decode_series(&mut views(&ch), 0, i64::MAX, Mode::Single(Aggr::Min)).unwrap_err();
        assert!(e.contains("MIN"), "{e}");
    }

    /// A counter histogram every minute for 40h (several chunks), reset once: the
    /// 5m histogram aggregates as a store sends them, with the raw histograms.
    fn histogram_chunks() -> (Vec<Owned>, Vec<storeapi::histogram::FloatHistogram>) {
        use chunkenc::aggr_histogram::downsample_raw_histograms;
        use storeapi::histogram::{FloatHistogram, Span};
        let mut raw = Vec::new();
        let mut b = [0.0f64; 2];
        for i in 0..2400i64 {
            if i == 1000 {
                b = [0.0; 2];
            }
            b[0] += (i % 3) as f64;
            b[1] += 1.0;
            let h = FloatHistogram {
                schema: 1,
                count: b[0] + b[1],
                sum: b[1] * 2.0,
                positive_spans: vec![Span {
                    offset: 0,
                    length: 2,
                }],
                positive_buckets: b.to_vec(),
                ..Default::default()
            };
            raw.push((7_000 + i * 60_000, h));
        }
        let chunks = downsample_raw_histograms(raw.clone(), TSDB_5M)
            .unwrap()
            .into_iter()
            .map(as_sent)
            .collect();
        (chunks, raw.into_iter().map(|x| x.1).collect())
    }

    fn decode_h(chunks: &[Owned], mode: Mode) -> (Vec<Sample>, Vec<HistogramSample>) {
        decode_series(&mut views(chunks), i64::MIN, i64::MAX, mode).unwrap()
    }

    #[test]
    fn histogram_aggregates_are_read_per_mode() {
        let (ch, raw) = histogram_chunks();
        assert!(ch.len() > 1);
        let (counts, none) = decode_h(&ch, Mode::Single(Aggr::Count));
        assert!(none.is_empty());
        assert_eq!(counts.iter().map(|x| x.v).sum::<f64>(), raw.len() as f64);
        let (f, sums) = decode_h(&ch, Mode::Single(Aggr::Sum));
        assert!(f.is_empty());
        assert_eq!(sums.len(), counts.len());
        let total: f64 = sums.iter().map(|s| s.h.to_float().count).sum();
        let want: f64 = raw.iter().map(|h| h.count).sum();
        assert!((total - want).abs() < 1e-6, "{total} vs {want}");
        let (_, avg) = decode_h(&ch, Mode::Average);
        for ((a, s), n) in avg.iter().zip(&sums).zip(&counts) {
            let (a, s) = (a.h.to_float(), s.h.to_float());
            assert_eq!(a.hint, storeapi::histogram::CounterResetHint::Gauge);
            assert!((a.count - s.count / n.v).abs() < 1e-9);
        }
        // The counter: monotonic, its growth the raw increase with the reset applied.
        let (_, ctr) = decode_h(&ch, Mode::Counter);
        assert_eq!(ctr.len(), counts.len());
        let c: Vec<f64> = ctr.iter().map(|s| s.h.to_float().count).collect();
        assert!(c.windows(2).all(|w| w[0] <= w[1]));
        let end = raw[999].count + raw[raw.len() - 1].count;
        assert!(
            (c[c.len() - 1] - end).abs() < 1e-9,
            "{} vs {end}",
            c[c.len() - 1]
        );
        // Histograms have no min or max: nothing, not an error.
        for a in [Aggr::Min, Aggr::Max] {
            let (f, h) = decode_h(&ch, Mode::Single(a));
            assert!(f.is_empty() && h.is_empty());
        }
    }
}
