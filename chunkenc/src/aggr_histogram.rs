//! Downsampling native histograms into Thanos's `AggrChunk` (`downsample.go`:
//! `downsampleHistogramBatch`, `downsampleHistogramAggrBatch`, `histogramAggregator`).
//!
//! A histogram `AggrChunk` holds three aggregates per window: `count` (XOR: how many
//! histograms the window had), `sum` (FLOAT_HISTOGRAM, gauge: the histograms added up)
//! and `counter` (FLOAT_HISTOGRAM: the running counter with resets applied, the first
//! histogram setting it); `min` and `max` are absent. All histograms of a batch are
//! reduced to the batch's smallest schema first, so one chunk has one schema. Readers
//! tell a histogram `AggrChunk` from a float one by its counter's encoding.
//!
//! Where Orrery is more careful than Thanos (whose aggregator panics, or replaces a
//! sub-chunk and loses its earlier windows):
//! - A counter reset is judged between consecutive *original* histograms (hint first,
//!   then Prometheus's `DetectReset`), not between an original and a schema-reduced
//!   one, which Thanos would see as a reset whenever a batch mixes schemas.
//! - The counter runs on across the chunks of a series (Thanos restarts it at each
//!   chunk's first raw histogram). Without the first/last raw values float counters
//!   carry, a reader cannot tell a restart from a reset, so a reset anywhere in one
//!   chunk would make every reader over-count the next chunk boundary by the raw value
//!   there. Continued, the counter is monotonic within a block and `rate` needs no
//!   reset handling; Thanos reads it the same way.
//! - Histograms with custom buckets (NHCB) are aggregated when their bounds agree; a
//!   change of bounds (or between custom and exponential buckets) starts a new chunk
//!   and a new counter (Prometheus's `DetectReset` calls it a reset too).
//! - Where a sub-chunk's appender cannot take a window (a zero-threshold change in the
//!   gauge sum, a float rounding the counter appender reads as a reset), the `AggrChunk`
//!   ends before that window and the next one starts with it: every aggregate of a chunk
//!   always covers the same windows.

use storeapi::histogram::{CounterResetHint, FloatHistogram};

use super::aggr::{AggrChunk, AggrType, aggr_get, current_window, encode_aggr_parts};
use super::{
    Appended, ChunkError, Encoding, FloatHistogramAppender, FloatHistogramIterator, XorChunk,
};

/// One input point of the window aggregation: a raw histogram (count 1, the histogram
/// both the sum's and the counter's input), or one window of a finer `AggrChunk`.
#[derive(Debug, Clone)]
struct Point {
    t: i64,
    count: f64,
    sum: FloatHistogram,
    /// The counter input when it is not `sum` (aggregate input).
    counter: Option<FloatHistogram>,
}

impl Point {
    fn counter(&self) -> &FloatHistogram {
        self.counter.as_ref().unwrap_or(&self.sum)
    }
}

/// Whether two histograms can be added: both exponential, or both custom buckets with
/// the same bounds.
fn compatible(a: &FloatHistogram, b: &FloatHistogram) -> bool {
    a.uses_custom_buckets() == b.uses_custom_buckets()
        && (!a.uses_custom_buckets()
            || storeapi::histogram::floats_match(&a.custom_values, &b.custom_values))
}

fn is_dropped(h: &FloatHistogram) -> bool {
    // Thanos drops stale markers and any NaN sum before aggregating.
    h.sum.is_nan()
}

fn op_error(_: storeapi::histogram::HistogramOpError) -> ChunkError {
    ChunkError::BadHistogram("histograms of one downsampling batch cannot be added")
}

/// `h` at `schema` when that is coarser, else `h` itself (no copy).
fn at_schema(h: &FloatHistogram, schema: i32) -> std::borrow::Cow<'_, FloatHistogram> {
    if h.schema > schema {
        let mut r = h.clone();
        r.reduce_resolution(schema);
        std::borrow::Cow::Owned(r)
    } else {
        std::borrow::Cow::Borrowed(h)
    }
}

/// Thanos's `histogramAggregator` generalised to [`Point`]s; one per series and run of
/// addable histograms, carried from batch to batch.
///
/// Thanos keeps the counter as the first value plus every later delta (plus the whole
/// value after a reset). That equals the value of the latest input plus, for every
/// reset so far, the input just before it; kept that way, an input costs no histogram
/// arithmetic unless it resets, and the counter is built once per window.
struct Aggregator {
    schema: i32,
    total: usize,
    count: f64,
    sum: Option<FloatHistogram>,
    /// The inputs just before each reset so far, added up (at `schema`).
    offset: Option<FloatHistogram>,
    /// The latest counter input as it came (for reset detection)...
    last: Option<FloatHistogram>,
    /// ...and at `schema`, when that differs.
    last_reduced: Option<FloatHistogram>,
}

impl Aggregator {
    fn new(schema: i32) -> Self {
        Aggregator {
            schema,
            total: 0,
            count: 0.0,
            sum: None,
            offset: None,
            last: None,
            last_reduced: None,
        }
    }

    fn reset(&mut self) {
        self.count = 0.0;
        self.sum = None;
    }

    /// Lowers the schema to `schema` if it is smaller (the running state with it).
    fn lower_schema(&mut self, schema: i32) {
        if schema < self.schema {
            self.schema = schema;
            for h in [&mut self.offset, &mut self.sum, &mut self.last_reduced]
                .into_iter()
                .flatten()
            {
                h.reduce_resolution(schema);
            }
            if self.last_reduced.is_none()
                && let Some(l) = &self.last
                && l.schema > schema
            {
                self.last_reduced = Some(at_schema(l, schema).into_owned());
            }
        }
    }

    /// The latest counter input at `schema`.
    fn last_value(&self) -> Option<&FloatHistogram> {
        self.last_reduced.as_ref().or(self.last.as_ref())
    }

    fn add(&mut self, p: Point) -> Result<(), ChunkError> {
        let sum = at_schema(&p.sum, self.schema);
        match &mut self.sum {
            None => self.sum = Some(sum.into_owned()),
            Some(s) => s.add(&sum).map_err(op_error)?,
        }
        if let Some(s) = &mut self.sum {
            // A gauge: sums of consecutive windows go up and down.
            s.hint = CounterResetHint::Gauge;
        }
        let counter = p.counter.unwrap_or(p.sum);
        if let Some(prev) = &self.last
            && counter.hint != CounterResetHint::Gauge
            && counter.detect_reset(prev)
        {
            let prev_value = self.last_reduced.as_ref().unwrap_or(prev);
            match &mut self.offset {
                None => self.offset = Some(prev_value.clone()),
                Some(o) => o.add(prev_value).map_err(op_error)?,
            }
        }
        self.last_reduced =
            (counter.schema > self.schema).then(|| at_schema(&counter, self.schema).into_owned());
        self.last = Some(counter);
        self.count += p.count;
        self.total += 1;
        Ok(())
    }

    /// The running counter: the latest input plus the offset of the resets.
    fn counter(&self) -> Result<Option<FloatHistogram>, ChunkError> {
        let Some(last) = self.last_value() else {
            return Ok(None);
        };
        let mut c = last.clone();
        if let Some(o) = &self.offset {
            c.add(o).map_err(op_error)?;
        }
        Ok(Some(c))
    }
}

/// The three sub-chunks of the `AggrChunk` being built.
struct Builder {
    gauge: bool,
    count: XorChunk,
    sum: FloatHistogramAppender,
    counter: FloatHistogramAppender,
    min_time: i64,
    max_time: i64,
    windows: usize,
}

impl Builder {
    fn new(gauge: bool) -> Self {
        Builder {
            gauge,
            count: XorChunk::new(),
            sum: FloatHistogramAppender::new(),
            counter: FloatHistogramAppender::new(),
            min_time: i64::MAX,
            max_time: i64::MIN,
            windows: 0,
        }
    }

    /// Appends one window; `Ok(false)` when a sub-chunk cannot take it (nothing
    /// changed: the caller finishes this chunk and starts another).
    fn try_add(
        &mut self,
        t: i64,
        count: f64,
        sum: &FloatHistogram,
        counter: &FloatHistogram,
    ) -> Result<bool, ChunkError> {
        let mut counter = counter.clone();
        counter.hint = if self.gauge {
            CounterResetHint::Gauge
        } else if self.windows == 0 {
            CounterResetHint::Unknown
        } else {
            // Monotonic by construction.
            CounterResetHint::NotCounterReset
        };
        let before = (self.windows > 0).then(|| self.counter.clone());
        if let Appended::NewChunk(_) = self.counter.append(None, t, &counter)? {
            return Ok(false);
        }
        if let Appended::NewChunk(_) = self.sum.append(None, t, sum)? {
            if let Some(b) = before {
                self.counter = b;
            }
            return Ok(false);
        }
        self.count.append(t, count)?;
        self.min_time = self.min_time.min(t);
        self.max_time = self.max_time.max(t);
        self.windows += 1;
        Ok(true)
    }

    fn finish(self) -> Option<AggrChunk> {
        (self.windows > 0).then(|| AggrChunk {
            min_time: self.min_time,
            max_time: self.max_time,
            data: bytes::Bytes::from(encode_aggr_parts([
                Some((Encoding::Xor as u8, self.count.bytes())),
                Some((Encoding::FloatHistogram as u8, self.sum.bytes())),
                None,
                None,
                Some((Encoding::FloatHistogram as u8, self.counter.bytes())),
            ])),
        })
    }
}

/// Aggregates time-ordered `points` (one batch) into windows of `resolution`, the last
/// window's timestamp capped at the last point's (Thanos's `downsampleBatch`), and
/// appends the resulting chunk(s) to `out`.
fn aggregate_batch(
    points: Vec<Point>,
    resolution: i64,
    carried: &mut Option<Aggregator>,
    out: &mut Vec<AggrChunk>,
) -> Result<(), ChunkError> {
    let Some(last) = points.last() else {
        return Ok(());
    };
    let schema = points
        .iter()
        .flat_map(|p| [p.sum.schema, p.counter().schema])
        .min()
        .unwrap_or(0);
    let gauge = points[0].counter().hint == CounterResetHint::Gauge;
    let last_t = last.t;
    let a = carried.get_or_insert_with(|| Aggregator::new(schema));
    a.lower_schema(schema);
    let mut b = Builder::new(gauge);
    let mut add = |t: i64, a: &Aggregator, b: &mut Builder| -> Result<(), ChunkError> {
        let (Some(sum), Some(counter)) = (&a.sum, a.counter()?) else {
            return Ok(());
        };
        if !b.try_add(t, a.count, sum, &counter)? {
            let full = std::mem::replace(b, Builder::new(gauge));
            out.extend(full.finish());
            if !b.try_add(t, a.count, sum, &counter)? {
                return Err(ChunkError::BadHistogram(
                    "a downsampled histogram does not fit an empty chunk",
                ));
            }
        }
        Ok(())
    };
    let mut next_t: i64 = -1;
    for p in points {
        if p.t > next_t {
            if next_t != -1 {
                add(next_t, a, &mut b)?;
            }
            a.reset();
            next_t = current_window(p.t, resolution).min(last_t);
        }
        a.add(p)?;
    }
    if next_t != -1 {
        add(next_t, a, &mut b)?;
    }
    out.extend(b.finish());
    Ok(())
}

/// Splits a batch where histograms stop being addable (custom bounds change) and
/// aggregates each part.
fn aggregate_compatible_runs(
    mut batch: Vec<Point>,
    resolution: i64,
    carried: &mut Option<Aggregator>,
    out: &mut Vec<AggrChunk>,
) -> Result<(), ChunkError> {
    let addable =
        |a: &Point, b: &Point| compatible(a.counter(), b.counter()) && compatible(&a.sum, &b.sum);
    if let (Some(a), Some(p)) = (carried.as_ref(), batch.first())
        && a.last.as_ref().is_some_and(|l| !compatible(l, p.counter()))
    {
        *carried = None;
    }
    while !batch.is_empty() {
        let n = (1..batch.len())
            .find(|&i| !addable(&batch[i], &batch[i - 1]))
            .unwrap_or(batch.len());
        let rest = batch.split_off(n);
        aggregate_batch(batch, resolution, carried, out)?;
        if !rest.is_empty() {
            *carried = None;
        }
        batch = rest;
    }
    Ok(())
}

/// Downsamples one series' raw histograms (time-ordered; integer ones converted to
/// float) to `resolution`, as Thanos's `DownsampleRaw` for histograms: batches sized as
/// for floats (at most ~140 windows each), extended to whole windows; NaN sums (stale
/// markers) dropped.
pub fn downsample_raw_histograms(
    data: Vec<(i64, FloatHistogram)>,
    resolution: i64,
) -> Result<Vec<AggrChunk>, ChunkError> {
    let (Some(first), Some(last)) = (data.first(), data.last()) else {
        return Ok(Vec::new());
    };
    let num_chunks =
        super::aggr::target_chunk_count(first.0, last.0, 60_000, resolution, data.len());
    let batch_size = data.len() / num_chunks.max(1) + 1;
    let mut out = Vec::new();
    let mut carried = None;
    let mut rest = data.into_iter().peekable();
    let mut batch: Vec<Point> = Vec::with_capacity(batch_size + 16);
    while rest.peek().is_some() {
        batch.clear();
        let mut taken = 0usize;
        let mut last_t = 0i64;
        while taken < batch_size
            && let Some((t, h)) = rest.next()
        {
            taken += 1;
            last_t = t;
            if !is_dropped(&h) {
                batch.push(Point {
                    t,
                    count: 1.0,
                    sum: h,
                    counter: None,
                });
            }
        }
        // The rest of the last sample's window belongs to this batch too.
        let cur_w = current_window(last_t, resolution);
        while let Some((t, h)) = rest.next_if(|(t, _)| *t <= cur_w) {
            if !is_dropped(&h) {
                batch.push(Point {
                    t,
                    count: 1.0,
                    sum: h,
                    counter: None,
                });
            }
        }
        aggregate_compatible_runs(
            std::mem::take(&mut batch),
            resolution,
            &mut carried,
            &mut out,
        )?;
    }
    Ok(out)
}

/// Whether an encoded `AggrChunk` holds histogram aggregates (its counter, or else its
/// sum, is a histogram sub-chunk), as Thanos's `isHistogramAggrChunk`.
pub fn is_histogram_aggr(data: &[u8]) -> bool {
    let hist = |t| {
        matches!(aggr_get(data, t), Ok(Some((e, _)))
            if e == Encoding::FloatHistogram as u8 || e == Encoding::Histogram as u8)
    };
    hist(AggrType::Counter) || hist(AggrType::Sum)
}

/// The float histograms of a histogram sub-chunk, stale ones and any going back in time
/// dropped (Thanos's `expandFloatHistogramChunkIterator`).
pub fn aggr_histograms(
    data: &[u8],
    t: AggrType,
) -> Result<Option<Vec<(i64, FloatHistogram)>>, ChunkError> {
    let Some((enc, b)) = aggr_get(data, t)? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    let mut last_t = i64::MIN;
    match Encoding::from_byte(enc) {
        Some(Encoding::FloatHistogram) => {
            for s in FloatHistogramIterator::new(b)? {
                let (t, h) = s?;
                if !is_dropped(&h) && t >= last_t {
                    last_t = t;
                    out.push((t, h));
                }
            }
        }
        Some(Encoding::Histogram) => {
            for s in super::HistogramIterator::new(b)? {
                let (t, h) = s?;
                let h = h.to_float();
                if !is_dropped(&h) && t >= last_t {
                    last_t = t;
                    out.push((t, h));
                }
            }
        }
        _ => {
            return Err(ChunkError::Corrupt(
                "aggr chunk: sub-chunk is not a histogram",
            ));
        }
    }
    Ok(Some(out))
}

/// The windows of histogram `AggrChunk`s as points: count, sum and counter must be
/// present and share their timestamps.
fn aggr_points(chunks: &[AggrChunk]) -> Result<Vec<Point>, ChunkError> {
    let mut out: Vec<Point> = Vec::new();
    for c in chunks {
        let (Some(count), Some(sum), Some(counter)) = (
            super::aggr::aggr_samples(&c.data, AggrType::Count)?,
            aggr_histograms(&c.data, AggrType::Sum)?,
            aggr_histograms(&c.data, AggrType::Counter)?,
        ) else {
            return Err(ChunkError::Corrupt(
                "histogram aggr chunk without count, sum or counter",
            ));
        };
        if count.len() != sum.len()
            || count.len() != counter.len()
            || count
                .iter()
                .zip(&sum)
                .zip(&counter)
                .any(|((a, b), c)| a.0 != b.0 || a.0 != c.0)
        {
            return Err(ChunkError::Corrupt(
                "histogram aggr chunk: count, sum and counter windows differ",
            ));
        }
        for ((c, s), k) in count.into_iter().zip(sum).zip(counter) {
            if out.last().is_some_and(|p| p.t >= c.0) {
                // Going back in time (overlapping input): skipped, as Thanos does.
                continue;
            }
            out.push(Point {
                t: c.0,
                count: c.1,
                sum: s.1,
                counter: Some(k.1),
            });
        }
    }
    Ok(out)
}

/// Downsamples a series' time-ordered histogram `AggrChunk`s of resolution `in_res` to
/// `out_res` (Thanos's `downsampleAggr` for histograms): batches along input chunk
/// boundaries, counts added, sums added, the counter re-aggregated with resets detected
/// between consecutive counter values (across input chunks too).
pub fn downsample_histogram_aggr(
    chunks: &[AggrChunk],
    in_res: i64,
    out_res: i64,
) -> Result<Vec<AggrChunk>, ChunkError> {
    let mut out = Vec::new();
    let mut carried = None;
    let num_chunks = super::aggr::aggr_target_chunks(chunks, in_res, out_res);
    let batch = super::aggr::aggr_batch_size(chunks.len(), num_chunks);
    for part in chunks.chunks(batch) {
        let points = aggr_points(part)?;
        aggregate_compatible_runs(points, out_res, &mut carried, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggr::{RES_1H, RES_5M};
    use std::collections::BTreeMap;
    use storeapi::histogram::{CUSTOM_BUCKETS_SCHEMA, Span};

    const T0: i64 = 1_699_920_000_000;

    /// A histogram with one positive span of `buckets` from index 0 and a zero bucket.
    fn fh(schema: i32, zero: f64, buckets: &[f64], hint: CounterResetHint) -> FloatHistogram {
        FloatHistogram {
            hint,
            schema,
            zero_threshold: 0.001,
            zero_count: zero,
            count: zero + buckets.iter().sum::<f64>(),
            sum: buckets.iter().enumerate().map(|(i, b)| b * i as f64).sum(),
            positive_spans: vec![Span {
                offset: 0,
                length: buckets.len() as u32,
            }],
            positive_buckets: buckets.to_vec(),
            custom_values: if schema == CUSTOM_BUCKETS_SCHEMA {
                (1..=buckets.len()).map(|i| i as f64 * 10.0).collect()
            } else {
                Vec::new()
            },
            ..Default::default()
        }
    }

    /// Count of observations ≤ `le` (zero bucket included), read from the buckets'
    /// bounds: comparable across schemas at the coarser schema's bounds.
    fn cum(h: &FloatHistogram, le: f64) -> f64 {
        h.zero_count
            + h.side_buckets(true)
                .iter()
                .filter(|b| b.upper <= le)
                .map(|b| b.count)
                .sum::<f64>()
    }

    /// The windows of a list of `AggrChunk`s: t → (count, sum, counter).
    fn windows(chunks: &[AggrChunk]) -> BTreeMap<i64, (f64, FloatHistogram, FloatHistogram)> {
        let mut out = BTreeMap::new();
        for c in chunks {
            assert!(is_histogram_aggr(&c.data));
            assert_eq!(aggr_get(&c.data, AggrType::Min).unwrap(), None);
            assert_eq!(aggr_get(&c.data, AggrType::Max).unwrap(), None);
            let n = crate::aggr::aggr_samples(&c.data, AggrType::Count)
                .unwrap()
                .unwrap();
            let s = aggr_histograms(&c.data, AggrType::Sum).unwrap().unwrap();
            let k = aggr_histograms(&c.data, AggrType::Counter)
                .unwrap()
                .unwrap();
            assert_eq!((n.len(), s.len()), (k.len(), k.len()));
            assert_eq!((c.min_time, c.max_time), (n[0].0, n[n.len() - 1].0));
            for i in 0..n.len() {
                assert!(
                    out.insert(n[i].0, (n[i].1, s[i].1.clone(), k[i].1.clone()))
                        .is_none()
                );
            }
        }
        out
    }

    /// Raw counter histograms every 30 s for `hours`, resetting at sample `reset_at`.
    fn counter_series(
        hours: i64,
        reset_at: usize,
        schema: impl Fn(usize) -> i32,
    ) -> Vec<(i64, FloatHistogram)> {
        let mut b = [0.0f64; 4];
        let mut zero = 0.0;
        (0..(hours * 120) as usize)
            .map(|i| {
                if i == reset_at {
                    b = [0.0; 4];
                    zero = 0.0;
                }
                zero += (i % 2) as f64;
                for (k, x) in b.iter_mut().enumerate() {
                    *x += ((i * 7 + k * 3) % 5) as f64;
                }
                let hint = if i == reset_at {
                    CounterResetHint::CounterReset
                } else {
                    CounterResetHint::Unknown
                };
                (
                    T0 + 1_000 + i as i64 * 30_000,
                    fh(schema(i), zero, &b, hint),
                )
            })
            .collect()
    }

    /// The reference: per window of `r`, the raw histograms' count of samples, sum of
    /// `count`, sum of `cum(·, le)`, and the counter (resets applied) at its last sample.
    fn direct(
        raw: &[(i64, FloatHistogram)],
        r: i64,
        le: f64,
    ) -> BTreeMap<i64, (f64, f64, f64, f64, f64)> {
        let mut out: BTreeMap<i64, (f64, f64, f64, f64, f64)> = BTreeMap::new();
        let (mut base_n, mut base_le) = (0.0, 0.0);
        let mut prev: Option<&FloatHistogram> = None;
        for (t, h) in raw {
            if let Some(p) = prev
                && h.count < p.count
            {
                base_n += p.count;
                base_le += cum(p, le);
            }
            prev = Some(h);
            let e = out.entry(t / r).or_default();
            e.0 += 1.0;
            e.1 += h.count;
            e.2 += cum(h, le);
            e.3 = base_n + h.count;
            e.4 = base_le + cum(h, le);
        }
        out
    }

    fn check(chunks: &[AggrChunk], raw: &[(i64, FloatHistogram)], r: i64, le: f64) {
        let got = windows(chunks);
        let counters: BTreeMap<i64, (f64, f64)> = got
            .iter()
            .map(|(t, (_, _, k))| (*t, (k.count, cum(k, le))))
            .collect();
        let want = direct(raw, r, le);
        assert_eq!(got.len(), want.len());
        for ((t, (n, s, _)), (w, e)) in got.iter().zip(&want) {
            let k = counters[t];
            assert_eq!(t / r, *w, "window of {t}");
            assert_eq!(*n, e.0, "count at {t}");
            assert_eq!(s.hint, CounterResetHint::Gauge);
            assert!(
                (s.count - e.1).abs() < 1e-9,
                "sum count at {t}: {} vs {}",
                s.count,
                e.1
            );
            assert!((cum(s, le) - e.2).abs() < 1e-9, "sum ≤{le} at {t}");
            assert!(
                (k.0 - e.3).abs() < 1e-9,
                "counter at {t}: {} vs {}",
                k.0,
                e.3
            );
            assert!((k.1 - e.4).abs() < 1e-9, "counter ≤{le} at {t}");
        }
    }

    #[test]
    fn raw_counter_histograms_to_5m_and_1h_equal_a_direct_computation() {
        let raw = counter_series(30, 1_000, |_| 3);
        let five = downsample_raw_histograms(raw.clone(), RES_5M).unwrap();
        assert!(five.len() > 1, "several chunks: {}", five.len());
        check(&five, &raw, RES_5M, 1.5);
        let hour = downsample_histogram_aggr(&five, RES_5M, RES_1H).unwrap();
        check(&hour, &raw, RES_1H, 1.5);
        // The counter never goes down within a chunk (resets applied), and the chunks
        // are time-ordered without overlap.
        for c in &five {
            let k = aggr_histograms(&c.data, AggrType::Counter)
                .unwrap()
                .unwrap();
            assert!(k.windows(2).all(|w| w[1].1.count >= w[0].1.count));
        }
        assert!(five.windows(2).all(|w| w[0].max_time < w[1].min_time));
    }

    #[test]
    fn mixed_schemas_are_reduced_and_a_schema_increase_is_a_reset() {
        // Schema 3, reduced to 1 mid-way (as Prometheus does when buckets grow), with no
        // reset: the counter must not jump. Then back to 3: that is a reset.
        let mut raw = counter_series(2, usize::MAX, |_| 3);
        for (_, h) in raw.iter_mut().skip(100) {
            // The same observations at a coarser schema.
            h.reduce_resolution(1);
        }
        let bump = raw.len() - 20;
        for (i, (_, h)) in raw.iter_mut().enumerate().skip(bump) {
            // Smaller counts and a finer schema: a reset by both rules.
            *h = fh(
                3,
                0.0,
                &[i as f64, 1.0, 1.0, 1.0],
                CounterResetHint::Unknown,
            );
        }
        let five = downsample_raw_histograms(raw.clone(), RES_5M).unwrap();
        for c in &five {
            let k = aggr_histograms(&c.data, AggrType::Counter)
                .unwrap()
                .unwrap();
            assert!(k.iter().all(|(_, h)| h.schema == 1), "one schema per batch");
        }
        // Bounds of schema 1 are bounds of schema 3 too: compare at one of them.
        check(&five, &raw, RES_5M, 2.0);
    }

    #[test]
    fn custom_bucket_bounds_changing_start_a_new_chunk() {
        let mut raw = counter_series(1, usize::MAX, |_| CUSTOM_BUCKETS_SCHEMA);
        let n = raw.len();
        for (t, h) in raw.iter_mut().skip(n / 2) {
            h.custom_values = vec![1.0, 2.0, 3.0, 4.0];
            // New bounds: a reset, Prometheus's `DetectReset` says so too.
            assert!(*t > 0);
        }
        let five = downsample_raw_histograms(raw.clone(), RES_5M).unwrap();
        let split = five
            .iter()
            .filter(|c| {
                let k = aggr_histograms(&c.data, AggrType::Counter)
                    .unwrap()
                    .unwrap();
                k[0].1.custom_values == vec![1.0, 2.0, 3.0, 4.0]
            })
            .count();
        assert!(split >= 1 && split < five.len());
        // Counts per window are still every raw histogram once.
        let got: f64 = windows(&five).values().map(|w| w.0).sum();
        assert_eq!(got, n as f64);
    }

    #[test]
    fn gauge_histograms_stay_gauges_and_stale_markers_are_dropped() {
        let mut raw: Vec<(i64, FloatHistogram)> = (0..240)
            .map(|i| {
                let v = ((i * 13) % 7) as f64;
                (
                    T0 + i * 30_000,
                    fh(0, 1.0, &[v, 1.0], CounterResetHint::Gauge),
                )
            })
            .collect();
        raw[17].1.sum = f64::from_bits(storeapi::STALE_NAN_BITS);
        let five = downsample_raw_histograms(raw.clone(), RES_5M).unwrap();
        let w = windows(&five);
        assert_eq!(w.values().map(|x| x.0).sum::<f64>(), 239.0);
        for (_, _, k) in w.values() {
            assert_eq!(k.hint, CounterResetHint::Gauge);
        }
        for c in &five {
            let (_, b) = aggr_get(&c.data, AggrType::Counter).unwrap().unwrap();
            assert_eq!(
                crate::FloatHistogramIterator::new(b).unwrap().header(),
                crate::CounterResetHeader::Gauge
            );
        }
    }
}
