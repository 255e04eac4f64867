//! Thanos's downsampled chunk, `AggrChunk` (`pkg/compact/downsample/aggr.go`), and the
//! raw → aggregate downsampling of float samples (`downsample.go`, `DownsampleRaw`).
//!
//! Byte layout (chunk encoding byte 0xFF in the segment file): five entries in the fixed
//! order count, sum, min, max, counter; each is `uvarint L`, then — when `L > 0` — one
//! encoding byte (1 = XOR) and the `L` bytes of that sub-chunk. `L = 0` marks an absent
//! aggregate (no encoding byte). Thanos's reader requires at least one byte after every
//! length prefix, so the counter (never absent for floats) always comes last.
//!
//! Window timestamps are the last millisecond of each window, `t - t % r + r - 1`,
//! capped at the batch's last raw timestamp. The counter sub-chunk additionally holds the
//! batch's first raw sample before the first window and repeats the last raw value at
//! the last window's timestamp, so readers can detect counter resets across chunks.
//! Aggregates are kept here exactly as Thanos computes them (same float operations in
//! the same order), so our 5m blocks equal Thanos's byte for byte. Native histograms
//! are downsampled in [`crate::aggr_histogram`].

use super::{ChunkError, XorChunk};

/// One encoded `AggrChunk` with its first and last window timestamps; written to a
/// segment with encoding byte [`CHUNK_ENC_AGGR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggrChunk {
    pub min_time: i64,
    pub max_time: i64,
    pub data: bytes::Bytes,
}

/// The encoding byte of an `AggrChunk` in a chunk segment.
pub const CHUNK_ENC_AGGR: u8 = 0xFF;
/// 5 minutes, Thanos's `ResLevel1`.
pub const RES_5M: i64 = 5 * 60 * 1000;
/// 1 hour, Thanos's `ResLevel2`.
pub const RES_1H: i64 = 60 * 60 * 1000;

/// The five aggregates in their on-disk order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AggrType {
    Count = 0,
    Sum = 1,
    Min = 2,
    Max = 3,
    Counter = 4,
}

/// Encodes XOR sub-chunks (`None` = absent) in Thanos's layout.
pub fn encode_aggr_chunk(parts: [Option<&[u8]>; 5]) -> Vec<u8> {
    encode_aggr_parts(parts.map(|p| p.map(|b| (super::Encoding::Xor as u8, b))))
}

/// Encodes sub-chunks given with their encoding bytes (`None` = absent) in Thanos's
/// layout: XOR for floats, FLOAT_HISTOGRAM for a histogram chunk's sum and counter.
pub fn encode_aggr_parts(parts: [Option<(u8, &[u8])>; 5]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        match p {
            None => put_uvarint(&mut out, 0),
            Some((enc, b)) => {
                put_uvarint(&mut out, b.len() as u64);
                out.push(enc);
                out.extend_from_slice(b);
            }
        }
    }
    out
}

/// The sub-chunk of aggregate `t` in an encoded `AggrChunk`: `Ok(None)` when absent,
/// `(encoding byte, bytes)` otherwise. Mirrors Thanos's `AggrChunk.Get`, including its
/// length check.
pub fn aggr_get(data: &[u8], t: AggrType) -> Result<Option<(u8, &[u8])>, ChunkError> {
    let mut b = data;
    for i in 0..=t as u8 {
        let (l, n) = uvarint(b).ok_or(ChunkError::Corrupt("aggr chunk: bad length"))?;
        let l = usize::try_from(l).map_err(|_| ChunkError::Corrupt("aggr chunk: bad length"))?;
        if b.len() - n < l.saturating_add(1) {
            return Err(ChunkError::Corrupt("aggr chunk: invalid size"));
        }
        b = &b[n..];
        if l == 0 {
            if i == t as u8 {
                return Ok(None);
            }
            continue;
        }
        let x = &b[..l + 1];
        b = &b[l + 1..];
        if i == t as u8 {
            return Ok(Some((x[0], &x[1..])));
        }
    }
    Ok(None)
}

/// The samples of aggregate `t` (XOR sub-chunks only).
pub fn aggr_samples(data: &[u8], t: AggrType) -> Result<Option<Vec<(i64, f64)>>, ChunkError> {
    match aggr_get(data, t)? {
        None => Ok(None),
        Some((1, b)) => super::xor::decode_all(b).map(Some),
        Some(_) => Err(ChunkError::Corrupt("aggr chunk: sub-chunk is not XOR")),
    }
}

/// Thanos's `currentWindow`: the last millisecond of `t`'s window of width `r`.
pub fn current_window(t: i64, r: i64) -> i64 {
    t - (t % r) + r - 1
}

/// Thanos's `targetChunkCount` (raw input assumed at 1-minute resolution): enough
/// chunks that each holds at most ~140 windows.
pub(crate) fn target_chunk_count(
    mint: i64,
    maxt: i64,
    in_res: i64,
    out_res: i64,
    count: usize,
) -> usize {
    let max_samples = ((maxt - mint) / out_res) as f64;
    let fullness = (count as f64 / ((maxt - mint) as f64 / in_res as f64)).min(1.0);
    let exp = (max_samples * fullness) as i64 + 1;
    let mut x: i64 = 1;
    while exp / x > 140 {
        x += 1;
    }
    x as usize
}

#[derive(Default)]
struct FloatAggregator {
    total: usize,
    count: usize,
    sum: f64,
    min: f64,
    max: f64,
    counter: f64,
    last: f64,
}

impl FloatAggregator {
    fn reset(&mut self) {
        self.count = 0;
        self.sum = 0.0;
        self.min = f64::MAX;
        self.max = -f64::MAX;
    }

    fn add(&mut self, v: f64) {
        if self.total > 0 {
            if v < self.last {
                self.counter += v;
            } else {
                self.counter += v - self.last;
            }
        } else {
            self.counter = v;
        }
        self.last = v;
        self.sum += v;
        self.count += 1;
        self.total += 1;
        if v < self.min {
            self.min = v;
        }
        if v > self.max {
            self.max = v;
        }
    }
}

/// Downsamples raw float samples (time-ordered) to `resolution`, as Thanos's
/// `DownsampleRaw`: NaN samples (including stale markers) are dropped; the result is
/// one `AggrChunk` per batch (chunk min/max time = first/last window timestamp).
pub fn downsample_raw(data: &[(i64, f64)], resolution: i64) -> Result<Vec<AggrChunk>, ChunkError> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let (mint, maxt) = (data[0].0, data[data.len() - 1].0);
    let num_chunks = target_chunk_count(mint, maxt, 60_000, resolution, data.len());
    downsample_raw_loop(data, resolution, num_chunks)
}

/// Thanos's `downsampleRawLoop`: batches of `len / num_chunks + 1` samples, each
/// extended to the end of its last window.
fn downsample_raw_loop(
    data: &[(i64, f64)],
    resolution: i64,
    num_chunks: usize,
) -> Result<Vec<AggrChunk>, ChunkError> {
    let batch_size = data.len() / num_chunks.max(1) + 1;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let mut j = batch_size.min(rest.len());
        let cur_w = current_window(rest[j - 1].0, resolution);
        while j < rest.len() && rest[j].0 <= cur_w {
            j += 1;
        }
        let batch: Vec<(i64, f64)> = rest[..j]
            .iter()
            .copied()
            .filter(|s| !s.1.is_nan())
            .collect();
        rest = &rest[j..];
        if batch.is_empty() {
            continue;
        }
        out.push(downsample_float_batch(&batch, resolution)?);
    }
    Ok(out)
}

fn downsample_float_batch(batch: &[(i64, f64)], resolution: i64) -> Result<AggrChunk, ChunkError> {
    let mut apps: [XorChunk; 5] = Default::default();
    let (mut mint, mut maxt) = (i64::MAX, i64::MIN);
    apps[AggrType::Counter as usize].append(batch[0].0, batch[0].1)?;
    let last_t = batch[batch.len() - 1].0;
    let mut a = FloatAggregator::default();
    let mut next_t: i64 = -1;
    let mut add =
        |t: i64, a: &FloatAggregator, apps: &mut [XorChunk; 5]| -> Result<(), ChunkError> {
            mint = mint.min(t);
            maxt = maxt.max(t);
            apps[AggrType::Sum as usize].append(t, a.sum)?;
            apps[AggrType::Min as usize].append(t, a.min)?;
            apps[AggrType::Max as usize].append(t, a.max)?;
            apps[AggrType::Count as usize].append(t, a.count as f64)?;
            apps[AggrType::Counter as usize].append(t, a.counter)?;
            Ok(())
        };
    for &(t, v) in batch {
        if t > next_t {
            if next_t != -1 {
                add(next_t, &a, &mut apps)?;
            }
            a.reset();
            next_t = current_window(t, resolution).min(last_t);
        }
        a.add(v);
    }
    if a.count > 0 {
        add(next_t, &a, &mut apps)?;
    }
    apps[AggrType::Counter as usize].append(next_t, batch[batch.len() - 1].1)?;
    let data = encode_aggr_chunk([
        Some(apps[0].bytes()),
        Some(apps[1].bytes()),
        Some(apps[2].bytes()),
        Some(apps[3].bytes()),
        Some(apps[4].bytes()),
    ]);
    Ok(AggrChunk {
        min_time: mint,
        max_time: maxt,
        data: bytes::Bytes::from(data),
    })
}

/// Number of windows in an encoded `AggrChunk`: the sample count of its count
/// sub-chunk (0 when absent or unreadable), as Thanos's `AggrChunk.NumSamples`. What
/// block stats (`numSamples`) count for downsampled chunks.
pub fn aggr_num_samples(data: &[u8]) -> usize {
    match aggr_get(data, AggrType::Count) {
        Ok(Some((_, b))) if b.len() >= 2 => u16::from_be_bytes([b[0], b[1]]) as usize,
        _ => 0,
    }
}

/// Thanos's `expandXorChunkIterator`: appends `samples` to `out`, dropping stale
/// markers and any sample that goes back in time (the running bound starts at 0, so
/// negative timestamps are dropped too, as in Thanos).
pub fn expand_samples(samples: impl IntoIterator<Item = (i64, f64)>, out: &mut Vec<(i64, f64)>) {
    let mut last_t = 0i64;
    for (t, v) in samples {
        if v.to_bits() == storeapi::STALE_NAN_BITS {
            continue;
        }
        if t >= last_t {
            out.push((t, v));
            last_t = t;
        }
    }
}

/// Thanos's `downsampleBatch`: aggregates time-ordered `data` into windows of
/// `resolution`, calling `add(window timestamp, aggregator)` at the end of each window.
/// The last window's timestamp is capped at the last sample's, so consecutive batches
/// never overlap. Returns the last window timestamp (-1 for no data).
fn downsample_batch(
    data: &[(i64, f64)],
    resolution: i64,
    mut add: impl FnMut(i64, &FloatAggregator) -> Result<(), ChunkError>,
) -> Result<i64, ChunkError> {
    let Some(&(last_t, _)) = data.last() else {
        return Ok(-1);
    };
    let mut a = FloatAggregator::default();
    let mut next_t: i64 = -1;
    for &(t, v) in data {
        if t > next_t {
            if next_t != -1 {
                add(next_t, &a)?;
            }
            a.reset();
            next_t = current_window(t, resolution).min(last_t);
        }
        a.add(v);
    }
    if a.total > 0 {
        add(next_t, &a)?;
    }
    Ok(next_t)
}

/// Downsamples a series' time-ordered `AggrChunk`s of resolution `in_res` to `out_res`,
/// as Thanos's `downsampleAggr`: the input chunks are grouped into batches along chunk
/// boundaries (never splitting a chunk, so each output chunk's counter still starts
/// with a true raw value and ends with the true last raw value), and each batch becomes
/// one output chunk. Count is the sum of counts, sum the sum of sums, min/max the
/// min/max; the counter is re-aggregated after applying counter resets across the
/// batch's chunks (Thanos's `ApplyCounterResetsSeriesIterator`).
pub fn downsample_aggr(
    chunks: &[AggrChunk],
    in_res: i64,
    out_res: i64,
) -> Result<Vec<AggrChunk>, ChunkError> {
    downsample_aggr_loop(chunks, out_res, aggr_target_chunks(chunks, in_res, out_res))
}

/// Thanos's `targetChunkCount` for a series' `AggrChunk`s (the windows they hold over
/// their span); shared by the float and the histogram aggregates.
pub(crate) fn aggr_target_chunks(chunks: &[AggrChunk], in_res: i64, out_res: i64) -> usize {
    match (chunks.first(), chunks.last()) {
        (Some(first), Some(last)) => {
            let num_samples: usize = chunks.iter().map(|c| aggr_num_samples(&c.data)).sum();
            target_chunk_count(first.min_time, last.max_time, in_res, out_res, num_samples)
        }
        _ => 1,
    }
}

/// Input chunks per output chunk (Thanos's `downsampleAggrLoop`): `len / num_chunks`,
/// at least one (Thanos would fail on zero).
pub(crate) fn aggr_batch_size(len: usize, num_chunks: usize) -> usize {
    (len / num_chunks.max(1)).max(1)
}

/// Thanos's `downsampleAggrLoop`: whole input chunks per output chunk, never split.
fn downsample_aggr_loop(
    chunks: &[AggrChunk],
    resolution: i64,
    num_chunks: usize,
) -> Result<Vec<AggrChunk>, ChunkError> {
    let mut out = Vec::with_capacity(num_chunks);
    let mut buf = Vec::new();
    for part in chunks.chunks(aggr_batch_size(chunks.len(), num_chunks)) {
        out.push(downsample_float_aggr_batch(part, &mut buf, resolution)?);
    }
    Ok(out)
}

/// Thanos's `ApplyCounterResetsSeriesIterator` over the counter sub-chunks of `chunks`,
/// expanded into `(t, cumulative counter)` samples. Returns the true last raw value
/// (the repeated-timestamp sample at the end of each counter sub-chunk).
fn apply_counter_resets(
    chunks: &[AggrChunk],
    out: &mut Vec<(i64, f64)>,
) -> Result<f64, ChunkError> {
    let (mut total, mut last_t, mut last_v, mut total_v) = (0usize, 0i64, 0.0f64, 0.0f64);
    let mut emitted = Vec::new();
    for c in chunks {
        let Some(samples) = aggr_samples(&c.data, AggrType::Counter)? else {
            continue;
        };
        for (t, v) in samples {
            if v.is_nan() {
                continue;
            }
            if total == 0 {
                total = 1;
                (last_t, last_v, total_v) = (t, v, v);
                emitted.push((t, total_v));
                continue;
            }
            if t > last_t {
                if v >= last_v {
                    total_v += v - last_v;
                } else {
                    total_v += v;
                }
                (last_t, last_v) = (t, v);
                total += 1;
                emitted.push((t, total_v));
            } else if t == last_t {
                // The true last raw value of the chunk: used to detect a reset against
                // the next chunk's first raw value.
                last_v = v;
            }
        }
    }
    out.clear();
    expand_samples(emitted, out);
    Ok(last_v)
}

/// Thanos's `downsampleFloatAggrBatch`: one output `AggrChunk` from a batch of input
/// chunks. Aggregates absent from every input stay absent.
fn downsample_float_aggr_batch(
    chunks: &[AggrChunk],
    buf: &mut Vec<(i64, f64)>,
    resolution: i64,
) -> Result<AggrChunk, ChunkError> {
    let (mut mint, mut maxt) = (i64::MAX, i64::MIN);
    let mut parts: [Option<XorChunk>; 5] = Default::default();
    type Pick = fn(&FloatAggregator) -> f64;
    let generic: [(AggrType, Pick); 4] = [
        // The count of a window is the sum of the input counts.
        (AggrType::Count, |a: &FloatAggregator| a.sum),
        (AggrType::Sum, |a: &FloatAggregator| a.sum),
        (AggrType::Min, |a: &FloatAggregator| a.min),
        (AggrType::Max, |a: &FloatAggregator| a.max),
    ];
    for (at, pick) in generic {
        buf.clear();
        for c in chunks {
            if let Some(s) = aggr_samples(&c.data, at)? {
                // Expanded per chunk, as Thanos's `genericAggregate`.
                expand_samples(s, buf);
            }
        }
        if buf.is_empty() {
            continue;
        }
        let mut x = XorChunk::new();
        downsample_batch(buf, resolution, |t, a| {
            mint = mint.min(t);
            maxt = maxt.max(t);
            x.append(t, pick(a))
        })?;
        parts[at as usize] = Some(x);
    }
    let last_raw = apply_counter_resets(chunks, buf)?;
    if let Some(&first) = buf.first() {
        let mut x = XorChunk::new();
        // The first raw value, then the windows, then the last raw value at the last
        // window's timestamp: what lets readers see resets across chunks.
        x.append(first.0, first.1)?;
        let last_t = downsample_batch(buf, resolution, |t, a| {
            mint = mint.min(t);
            maxt = maxt.max(t);
            x.append(t, a.counter)
        })?;
        x.append(last_t, last_raw)?;
        parts[AggrType::Counter as usize] = Some(x);
    }
    if mint > maxt {
        return Err(ChunkError::Corrupt(
            "aggr chunks without samples cannot be downsampled",
        ));
    }
    let data = encode_aggr_chunk(std::array::from_fn(|i| {
        parts[i].as_ref().map(XorChunk::bytes)
    }));
    Ok(AggrChunk {
        min_time: mint,
        max_time: maxt,
        data: bytes::Bytes::from(data),
    })
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut x = 0u64;
    let mut s = 0u32;
    for (i, &c) in b.iter().enumerate().take(10) {
        if c < 0x80 {
            return Some((x | (u64::from(c) << s), i + 1));
        }
        x |= u64::from(c & 0x7f) << s;
        s += 7;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_thanos() {
        // Absent aggregates are a single zero length byte, present ones len|enc|bytes.
        let enc = encode_aggr_chunk([Some(&[9, 9]), None, None, None, Some(&[7])]);
        assert_eq!(enc, vec![2, 1, 9, 9, 0, 0, 0, 1, 1, 7]);
        assert_eq!(
            aggr_get(&enc, AggrType::Count).unwrap(),
            Some((1, &[9u8, 9][..]))
        );
        assert_eq!(aggr_get(&enc, AggrType::Sum).unwrap(), None);
        assert_eq!(
            aggr_get(&enc, AggrType::Counter).unwrap(),
            Some((1, &[7u8][..]))
        );
        // Truncated: Thanos's "invalid size".
        assert!(aggr_get(&enc[..9], AggrType::Counter).is_err());
        assert!(aggr_get(&[], AggrType::Count).is_err());
    }

    /// An independent, straightforward computation of the 5m aggregates of one window.
    fn reference(samples: &[(i64, f64)], r: i64) -> Vec<(i64, f64, f64, f64, f64)> {
        let mut w: std::collections::BTreeMap<i64, Vec<f64>> = Default::default();
        for &(t, v) in samples {
            if !v.is_nan() {
                w.entry(t / r).or_default().push(v);
            }
        }
        w.into_iter()
            .map(|(k, vs)| {
                let s: f64 = vs.iter().sum();
                let mn = vs.iter().cloned().fold(f64::INFINITY, f64::min);
                let mx = vs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                (k, vs.len() as f64, s, mn, mx)
            })
            .collect()
    }

    #[test]
    fn raw_to_5m_aggregates_equal_a_direct_computation() {
        // 15s scrape over 30h (several chunks) with a gap, NaNs, and a counter reset.
        let mut s = Vec::new();
        let mut c = 0.0;
        for i in 0..7200i64 {
            let t = 1_700_000_000_000 + i * 15_000;
            if (800..830).contains(&i) {
                continue;
            }
            c += (i % 7) as f64;
            if i == 5000 {
                c = 3.0;
            }
            let v = if i % 301 == 0 { f64::NAN } else { c };
            s.push((t, v));
        }
        let chunks = downsample_raw(&s, RES_5M).unwrap();
        assert!(chunks.len() > 1, "{} chunks", chunks.len());
        let mut got = Vec::new();
        let mut counter_raw_first = Vec::new();
        for ch in &chunks {
            let count = aggr_samples(&ch.data, AggrType::Count).unwrap().unwrap();
            let sum = aggr_samples(&ch.data, AggrType::Sum).unwrap().unwrap();
            let min = aggr_samples(&ch.data, AggrType::Min).unwrap().unwrap();
            let max = aggr_samples(&ch.data, AggrType::Max).unwrap().unwrap();
            let ctr = aggr_samples(&ch.data, AggrType::Counter).unwrap().unwrap();
            assert_eq!(
                ctr.len(),
                count.len() + 2,
                "counter has first + repeated last raw"
            );
            assert_eq!(ctr[ctr.len() - 1].0, ctr[ctr.len() - 2].0);
            counter_raw_first.push(ctr[0]);
            assert_eq!(
                (ch.min_time, ch.max_time),
                (count[0].0, count[count.len() - 1].0)
            );
            for i in 0..count.len() {
                let t = count[i].0;
                assert!(
                    t % RES_5M == RES_5M - 1 || i == count.len() - 1,
                    "window end {t}"
                );
                got.push(((t / RES_5M), count[i].1, sum[i].1, min[i].1, max[i].1));
            }
        }
        let want = reference(&s, RES_5M);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.0, w.0);
            assert_eq!(g.1, w.1, "count at window {}", w.0);
            assert!(
                (g.2 - w.2).abs() <= 1e-9 * w.2.abs().max(1.0),
                "sum {g:?} {w:?}"
            );
            assert_eq!((g.3, g.4), (w.3, w.4), "min/max at window {}", w.0);
        }
        // The first chunk's counter starts with the first non-NaN raw sample.
        let first = s.iter().find(|x| !x.1.is_nan()).unwrap();
        assert_eq!(counter_raw_first[0], *first);
    }

    fn xor(samples: &[(i64, f64)]) -> Vec<u8> {
        let mut x = XorChunk::new();
        for &(t, v) in samples {
            x.append(t, v).unwrap();
        }
        x.into_bytes()
    }

    /// An `AggrChunk` from per-aggregate samples (`None`: absent), with the chunk range
    /// `[mint, maxt]`.
    fn mk(parts: [Option<Vec<(i64, f64)>>; 5], mint: i64, maxt: i64) -> AggrChunk {
        let enc: Vec<Option<Vec<u8>>> = parts.iter().map(|p| p.as_deref().map(xor)).collect();
        AggrChunk {
            min_time: mint,
            max_time: maxt,
            data: bytes::Bytes::from(encode_aggr_chunk(std::array::from_fn(|i| {
                enc[i].as_deref()
            }))),
        }
    }

    fn get(c: &AggrChunk, t: AggrType) -> Option<Vec<(i64, f64)>> {
        aggr_samples(&c.data, t).unwrap()
    }

    fn counters(cs: &[AggrChunk]) -> Vec<(i64, f64)> {
        cs.iter()
            .flat_map(|c| get(c, AggrType::Counter).unwrap())
            .collect()
    }

    fn counter_iterate(cs: &[AggrChunk]) -> Vec<(i64, f64)> {
        let mut out = Vec::new();
        apply_counter_resets(cs, &mut out).unwrap();
        out
    }

    #[test]
    fn expand_drops_stale_markers_and_samples_back_in_time() {
        let stale = f64::from_bits(storeapi::STALE_NAN_BITS);
        let mut out = Vec::new();
        expand_samples(
            [
                (-5, 9.0),
                (10, 1.0),
                (20, stale),
                (5, 2.0),
                (30, f64::NAN),
                (30, 3.0),
            ],
            &mut out,
        );
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], (10, 1.0));
        assert!(
            out[1].0 == 30 && out[1].1.is_nan(),
            "plain NaN is kept here"
        );
        assert_eq!(out[2], (30, 3.0));
    }

    /// Thanos's `TestDownsampleCounterBoundaryReset`: resets exactly at chunk boundaries
    /// are only seen because each chunk keeps its first and last raw values.
    #[test]
    fn counter_resets_at_chunk_boundaries_survive_two_levels() {
        let raw: Vec<(i64, f64)> = [
            (10, 1.0),
            (20, 3.0),
            (30, 5.0),
            (50, 1.0),
            (60, 8.0),
            (70, 10.0),
            (120, 1.0),
            (130, 18.0),
            (140, 20.0),
            (160, 21.0),
            (170, 38.0),
            (180, 40.0),
        ]
        .to_vec();
        let level1 = downsample_raw_loop(&raw, 50, raw.len() + 1).unwrap();
        assert_eq!(level1.len(), 4);
        assert_eq!(
            counters(&level1),
            [
                (10, 1.0),
                (30, 5.0),
                (30, 5.0),
                (50, 1.0),
                (70, 10.0),
                (70, 10.0),
                (120, 1.0),
                (140, 20.0),
                (140, 20.0),
                (160, 21.0),
                (180, 40.0),
                (180, 40.0)
            ]
        );
        assert_eq!(
            counter_iterate(&level1),
            [
                (10, 1.0),
                (30, 5.0),
                (50, 6.0),
                (70, 15.0),
                (120, 16.0),
                (140, 35.0),
                (160, 36.0),
                (180, 55.0)
            ]
        );
        let level2 = downsample_aggr_loop(&level1, 100, 2).unwrap();
        assert_eq!(level2.len(), 2);
        assert_eq!(
            counters(&level2),
            [
                (10, 1.0),
                (70, 15.0),
                (70, 10.0),
                (120, 1.0),
                (180, 40.0),
                (180, 40.0)
            ]
        );
        assert_eq!(
            counter_iterate(&level2),
            [(10, 1.0), (70, 15.0), (120, 16.0), (180, 55.0)]
        );
    }

    /// Thanos's "realistic ResLevel1 (5m) downsampled chunks with from counter resets"
    /// case of `TestDownsample`: one 5m chunk (a reset in the middle) to 1h.
    #[test]
    fn realistic_5m_chunk_to_1h_matches_thanos() {
        let ts = [
            1587690299999,
            1587690599999,
            1587690899999,
            1587691199999,
            1587691499999,
            1587691799999,
            1587692099999,
            1587692399999,
            1587692699999,
            1587692999999,
            1587693299999,
            1587693590791i64,
        ];
        let z = |vs: [f64; 12]| -> Vec<(i64, f64)> { ts.iter().copied().zip(vs).collect() };
        let count = z([20., 20., 20., 20., 20., 20., 20., 20., 16., 20., 20., 20.]);
        let sum = z([
            9.276972e+06,
            9.359861e+06,
            9.447457e+06,
            9.542732e+06,
            9.630379e+06,
            9.715631e+06,
            9.799808e+06,
            9.888117e+06,
            2.98928e+06,
            81592.,
            163711.,
            255746.,
        ]);
        let min = z([
            461968., 466070., 470131., 474913., 479625., 483709., 488036., 492223., 75., 2261.,
            6210., 10464.,
        ]);
        let max = z([
            465870., 469951., 474726., 479368., 483566., 487787., 492065., 496245., 496544., 6010.,
            10242., 14956.,
        ]);
        let mut counter = vec![(1587690005791, 461968.)];
        counter.extend(z([
            465870., 469951., 474726., 479368., 483566., 487787., 492065., 496245., 498647.,
            502554., 506786., 511500.,
        ]));
        counter.push((1587693590791, 14956.));
        let c = mk(
            [Some(count), Some(sum), Some(min), Some(max), Some(counter)],
            ts[0],
            ts[11],
        );
        let out = downsample_aggr(&[c], RES_5M, RES_1H).unwrap();
        assert_eq!(out.len(), 1);
        let t = 1587693590791;
        assert_eq!(get(&out[0], AggrType::Count).unwrap(), [(t, 236.)]);
        assert_eq!(get(&out[0], AggrType::Sum).unwrap(), [(t, 8.0151286e+07)]);
        assert_eq!(get(&out[0], AggrType::Min).unwrap(), [(t, 75.)]);
        assert_eq!(get(&out[0], AggrType::Max).unwrap(), [(t, 496544.)]);
        assert_eq!(
            get(&out[0], AggrType::Counter).unwrap(),
            [(1587690005791, 461968.), (t, 511500.), (t, 14956.)]
        );
        assert_eq!((out[0].min_time, out[0].max_time), (t, t));
        assert_eq!(aggr_num_samples(&out[0].data), 1);
    }

    /// Thanos's "downsampling four, 120 sample chunks for 2x resolution": counter-only
    /// inputs stay counter-only, merged into one chunk.
    #[test]
    fn counter_only_chunks_stay_counter_only() {
        let chunks: Vec<AggrChunk> = (0..4i64)
            .map(|k| {
                let s: Vec<(i64, f64)> = (0..120)
                    .map(|i| (k * 120 + i, (k * 120 + i) as f64))
                    .collect();
                mk([None, None, None, None, Some(s)], k * 120, k * 120 + 119)
            })
            .collect();
        let out = downsample_aggr(&chunks, 1, 2).unwrap();
        assert_eq!(out.len(), 1);
        for at in [AggrType::Count, AggrType::Sum, AggrType::Min, AggrType::Max] {
            assert_eq!(get(&out[0], at), None);
        }
        let mut want = vec![(0, 0.0)];
        want.extend((0..480).step_by(2).map(|i| (i + 1, (i + 1) as f64)));
        want.push((479, 479.0));
        assert_eq!(get(&out[0], AggrType::Counter).unwrap(), want);
    }

    /// 5m → 1h over 8 days (two 1h chunks) of 15s raw data with resets, gaps and NaNs, checked against
    /// a direct computation over the raw samples: count/sum/min/max per hour, and per
    /// output chunk the counter (first raw value plus the increase since, resets
    /// removed) at each hour.
    #[test]
    fn raw_to_5m_to_1h_equals_a_direct_computation() {
        let mut s = Vec::new();
        let mut c = 100.0;
        for i in 0..46_080i64 {
            if (3000..3400).contains(&i) {
                continue;
            }
            c += ((i * 7919) % 11) as f64 / 4.0;
            if i % 4001 == 0 {
                c = (i % 5) as f64;
            }
            let v = if i % 777 == 0 {
                f64::from_bits(storeapi::STALE_NAN_BITS)
            } else {
                c
            };
            s.push((1_700_000_000_000 + i * 15_000, v));
        }
        let m5 = downsample_raw(&s, RES_5M).unwrap();
        let h1 = downsample_aggr(&m5, RES_5M, RES_1H).unwrap();
        assert!(h1.len() > 1 && h1.len() < m5.len(), "{} chunks", h1.len());
        let want = reference(&s, RES_1H);
        // An hour can be split between two output chunks (batches follow the 5m
        // chunks' boundaries, as in Thanos): merge such halves before comparing.
        let mut got: std::collections::BTreeMap<i64, (f64, f64, f64, f64)> = Default::default();
        for (ci, ch) in h1.iter().enumerate() {
            let count = get(ch, AggrType::Count).unwrap();
            let sum = get(ch, AggrType::Sum).unwrap();
            let min = get(ch, AggrType::Min).unwrap();
            let max = get(ch, AggrType::Max).unwrap();
            for i in 0..count.len() {
                let e = got
                    .entry(count[i].0 / RES_1H)
                    .or_insert((0.0, 0.0, f64::MAX, f64::MIN));
                e.0 += count[i].1;
                e.1 += sum[i].1;
                e.2 = e.2.min(min[i].1);
                e.3 = e.3.max(max[i].1);
            }
            // Counter: the raw samples this chunk covers run from its first counter
            // sample to its last (both true raw samples).
            let ctr = get(ch, AggrType::Counter).unwrap();
            let (first, last) = (ctr[0], ctr[ctr.len() - 1]);
            let raw: Vec<(i64, f64)> = s
                .iter()
                .copied()
                .filter(|x| !x.1.is_nan() && x.0 >= first.0 && x.0 <= last.0)
                .collect();
            assert_eq!(raw[0], first, "chunk {ci} starts with its first raw sample");
            assert_eq!(
                raw[raw.len() - 1].1,
                last.1,
                "chunk {ci} ends with its last raw value"
            );
            let mut acc = raw[0].1;
            let mut at_window = std::collections::BTreeMap::new();
            for w in raw.windows(2) {
                acc += if w[1].1 >= w[0].1 {
                    w[1].1 - w[0].1
                } else {
                    w[1].1
                };
                at_window.insert(w[1].0 / RES_1H, acc);
            }
            at_window.entry(raw[0].0 / RES_1H).or_insert(raw[0].1);
            let windows = &ctr[1..ctr.len() - 1];
            assert_eq!(windows.len(), at_window.len(), "chunk {ci}");
            for (&(t, v), (&k, &w)) in windows.iter().zip(&at_window) {
                assert_eq!(t / RES_1H, k);
                assert!(
                    (v - w).abs() <= 1e-9 * w.abs().max(1.0),
                    "counter at {t}: {v} vs {w}"
                );
            }
        }
        assert_eq!(got.len(), want.len());
        for ((k, g), w) in got.iter().zip(&want) {
            let g = (*k, g.0, g.1, g.2, g.3);
            assert_eq!((g.0, g.1), (w.0, w.1), "count");
            assert!(
                (g.2 - w.2).abs() <= 1e-9 * w.2.abs().max(1.0),
                "sum {g:?} {w:?}"
            );
            assert_eq!((g.3, g.4), (w.3, w.4), "min/max at hour {}", w.0);
        }
    }
}
