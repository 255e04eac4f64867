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
//! Out-of-order compaction moves everything present into `compacting`
//! ([`OooSeries::begin_compaction`]), still read by queries, writes it into blocks and
//! then drops it ([`OooSeries::end_compaction`]); samples arriving meanwhile start a new
//! open chunk.

use bytes::Bytes;

use crate::chunk::{Chunk, Encoding, XorChunk};

/// Out-of-order samples of one series.
#[derive(Debug, Default)]
pub(crate) struct OooSeries {
    /// The open chunk's samples, sorted by time, timestamps unique.
    open: Vec<(i64, f64)>,
    /// `open` encoded (re-encoded after each insert: at most `cap` ≤ 255 samples), so
    /// readers borrow it like any other chunk.
    open_chunk: Option<Chunk>,
    closed: Vec<Chunk>,
    /// Chunks being written into blocks by a running compaction.
    compacting: Vec<Chunk>,
}

impl OooSeries {
    pub(crate) fn is_empty(&self) -> bool {
        self.open.is_empty() && self.closed.is_empty() && self.compacting.is_empty()
    }

    /// Inserts a sample; `false` when the open chunk already has its timestamp (dropped).
    pub(crate) fn insert(&mut self, t: i64, v: f64, cap: usize) -> bool {
        let cap = cap.max(1);
        if self.open.len() >= cap {
            self.close_open();
        }
        match self.open.binary_search_by_key(&t, |&(x, _)| x) {
            Ok(_) => return false,
            Err(i) => self.open.insert(i, (t, v)),
        }
        self.open_chunk = Some(encode(&self.open));
        true
    }

    fn close_open(&mut self) {
        if let Some(c) = self.open_chunk.take() {
            self.closed.push(c);
        }
        self.open.clear();
    }

    /// Every chunk held, those being compacted included (they overlap each other).
    pub(crate) fn chunks(&self) -> impl Iterator<Item = &Chunk> + Clone {
        self.compacting
            .iter()
            .chain(&self.closed)
            .chain(self.open_chunk.as_ref())
    }

    /// Moves every sample held into `compacting` (see the module docs) and returns the
    /// chunks to write. Samples left in `compacting` by a failed compaction are included
    /// again.
    pub(crate) fn begin_compaction(&mut self) -> Vec<Chunk> {
        self.close_open();
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

/// The samples of possibly overlapping XOR chunks in `[mint, maxt]`, sorted by time, each
/// timestamp once (the first chunk given wins). Used to write out-of-order samples into
/// blocks and by readers that need one sample stream.
pub fn merge_chunks<'a>(
    chunks: impl IntoIterator<Item = &'a Chunk>,
    mint: i64,
    maxt: i64,
) -> Result<Vec<(i64, f64)>, crate::chunk::ChunkError> {
    let mut all: Vec<(i64, usize, f64)> = Vec::new();
    for (i, c) in chunks.into_iter().enumerate() {
        if c.encoding != Encoding::Xor || c.max_time < mint || c.min_time > maxt {
            continue;
        }
        crate::chunk::xor::for_each_sample(&c.data, |t, v| {
            if t >= mint && t <= maxt {
                all.push((t, i, v));
            }
            std::ops::ControlFlow::Continue(())
        })?;
    }
    all.sort_by_key(|&(t, i, _)| (t, i));
    all.dedup_by_key(|s| s.0);
    Ok(all.into_iter().map(|(t, _, v)| (t, v)).collect())
}

/// Encodes sorted samples into XOR chunks of at most `per_chunk` samples.
pub fn encode_chunks(samples: &[(i64, f64)], per_chunk: usize) -> Vec<Chunk> {
    samples.chunks(per_chunk.max(1)).map(encode).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(o: &OooSeries) -> Vec<(i64, f64)> {
        merge_chunks(o.chunks(), i64::MIN, i64::MAX).unwrap()
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
        let ts: Vec<i64> = merge_chunks(&taken, i64::MIN, i64::MAX)
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

    #[test]
    fn encode_chunks_splits_by_count() {
        let s: Vec<(i64, f64)> = (0..250).map(|t| (t, t as f64)).collect();
        let c = encode_chunks(&s, 120);
        assert_eq!(c.len(), 3);
        assert_eq!((c[2].min_time, c[2].max_time), (240, 249));
        assert_eq!(merge_chunks(&c, 0, 1000).unwrap(), s);
    }
}
