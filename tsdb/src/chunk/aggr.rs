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
//! the same order), so our 5m blocks equal Thanos's byte for byte.

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

/// Encodes the sub-chunks (`None` = absent) in Thanos's layout. Sub-chunks are XOR.
pub fn encode_aggr_chunk(parts: [Option<&[u8]>; 5]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        match p {
            None => put_uvarint(&mut out, 0),
            Some(b) => {
                put_uvarint(&mut out, b.len() as u64);
                out.push(super::Encoding::Xor as u8);
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
fn target_chunk_count(mint: i64, maxt: i64, in_res: i64, out_res: i64, count: usize) -> usize {
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
    let batch_size = data.len() / num_chunks + 1;
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
}
