//! The head: in-memory series, each with closed chunks and one open chunk, plus the
//! in-memory postings index.
//!
//! Float samples go to XOR chunks, cut at [`MAX_SAMPLES_PER_CHUNK`] samples or when a
//! sample crosses a multiple of the chunk range (the block duration), so no chunk ever
//! spans two blocks. Native histograms go to HISTOGRAM / FLOAT_HISTOGRAM chunks cut as
//! Prometheus's head cuts them (see `open_chunk`); a series may change kinds, each
//! change starting a new chunk.
//!
//! Writers are serialized by the caller (the database's commit lock); readers take the
//! index read lock and then each series' own mutex, briefly.

use hashbrown::HashTable;
use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;
use storeapi::{Labels, Matcher};

use crate::chunk::{
    Chunk, ChunkError, Encoding, FloatHistogramAppender, HistogramAppender, XorChunk,
};
use crate::metrics::{Metrics, RejectReason};
use crate::postings::{MemPostings, SeriesRef};
use storeapi::histogram::{FloatHistogram, Histogram, HistogramValue};

mod closed;
mod ooo;
mod open_chunk;
mod sorted;
mod symbols;
mod wire_keys;
use closed::ClosedChunks;
pub use ooo::{Value, encode_samples, merge_samples};
use open_chunk::{HistKind, LastValue, OpenChunk, XorOpen, append_histogram, encode_histograms};
use symbols::Symbols;
#[cfg(test)]
pub(crate) use wire_keys::ENTRY_OVERHEAD as WIRE_KEY_OVERHEAD;
pub(crate) use wire_keys::wire_hash;

/// Samples per chunk before a new one is cut (Prometheus's target).
pub const MAX_SAMPLES_PER_CHUNK: u16 = 120;

/// Appends the series key of `labels` (`name 0xff value 0xff …`) to `buf`; returns its
/// range in `buf`. Series are found by the xxhash64 of this key and compared by it.
pub fn labels_key(labels: &Labels, buf: &mut Vec<u8>) -> (u32, u32) {
    let start = buf.len();
    for l in labels.iter() {
        buf.extend_from_slice(l.name.as_bytes());
        buf.push(0xff);
        buf.extend_from_slice(l.value.as_bytes());
        buf.push(0xff);
    }
    (start as u32, buf.len() as u32)
}

/// Hash of a series key (in memory only; XXH3, see `symbols::str_hash`).
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// Hash of a label set (the hash of its series key).
pub fn labels_hash(labels: &Labels, scratch: &mut Vec<u8>) -> u64 {
    scratch.clear();
    labels_key(labels, scratch);
    key_hash(scratch)
}

/// Parses a series key (see [`labels_key`]) back into labels; `None` when it is empty or
/// malformed. `0xff` never occurs in UTF-8, so the split is unambiguous.
pub fn labels_from_key(key: &[u8]) -> Option<Labels> {
    if key.is_empty() || key.last() != Some(&0xff) {
        return None;
    }
    let mut parts = key[..key.len() - 1].split(|&b| b == 0xff);
    let mut out = Vec::new();
    while let Some(n) = parts.next() {
        let v = parts.next()?;
        out.push(storeapi::Label::new(
            std::str::from_utf8(n).ok()?,
            std::str::from_utf8(v).ok()?,
        ));
    }
    Some(Labels::from_sorted_unchecked(out))
}

/// Selections of at least this many series are gathered on two threads.
const PARALLEL_SELECT_MIN: usize = 8192;

/// `series` with chunks overlapping `[mint, maxt]`, sorted by series key (ordered as the
/// labels are, compared without parsing), with parsed labels and those chunks.
/// A closed chunk of `samples` (time-ordered), `None` when there are none.
fn encode_closed(samples: &[(i64, f64)]) -> Result<Option<Chunk>, ChunkError> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Ok(None);
    };
    let mut c = XorChunk::new();
    for &(t, v) in samples {
        c.append(t, v)?;
    }
    let mut bytes = c.into_bytes();
    bytes.shrink_to_fit();
    Ok(Some(Chunk {
        min_time: first.0,
        max_time: last.0,
        encoding: Encoding::Xor,
        data: Bytes::from(bytes),
    }))
}

/// Splits chunk `data` of `encoding` at `t`: the chunks of its samples before `t` are
/// pushed to `before`; its samples from `t` on are re-encoded, returned as the chunks
/// to close and the last one as an open chunk (`None` if there is none). A histogram
/// chunk after the split has its header computed against the last sample before it.
fn split_chunk(
    encoding: Encoding,
    data: &[u8],
    t: i64,
    chunk_range: i64,
    before: &mut Vec<Chunk>,
) -> Result<(Option<OpenChunk>, Vec<Chunk>), ChunkError> {
    fn hist<A: HistKind>(
        data: &[u8],
        t: i64,
        chunk_range: i64,
        before: &mut Vec<Chunk>,
    ) -> Result<(Option<OpenChunk>, Vec<Chunk>), ChunkError> {
        let samples = A::decode(data)?;
        let at = samples.partition_point(|s| s.0 < t);
        let (lo, hi) = samples.split_at(at);
        let (chunks, open) = encode_histograms::<A>(lo, None)?;
        before.extend(chunks);
        before.extend(open.and_then(|o| A::wrap(o).close()));
        let (rest, open) = encode_histograms::<A>(hi, lo.last())?;
        let open = open.map(|mut o| {
            o.cutter = crate::chunk::histogram_cut::HistogramCutter::new(o.min_t, chunk_range);
            A::wrap(o)
        });
        Ok((open, rest))
    }
    match encoding {
        Encoding::Xor => {
            let samples = crate::chunk::xor::decode_all(data)?;
            let (lo, hi): (Vec<_>, Vec<_>) = samples.into_iter().partition(|s| s.0 < t);
            before.extend(encode_closed(&lo)?);
            let Some(&(min_t, _)) = hi.first() else {
                return Ok((None, Vec::new()));
            };
            let mut chunk = XorChunk::new();
            for &(st, sv) in &hi {
                chunk.append(st, sv)?;
            }
            let end = min_t
                .div_euclid(chunk_range)
                .saturating_add(1)
                .saturating_mul(chunk_range);
            Ok((
                Some(OpenChunk::Xor(XorOpen { end, chunk, min_t })),
                Vec::new(),
            ))
        }
        Encoding::Histogram => hist::<HistogramAppender>(data, t, chunk_range, before),
        Encoding::FloatHistogram => hist::<FloatHistogramAppender>(data, t, chunk_range, before),
        e => Err(ChunkError::UnsupportedEncoding(e)),
    }
}

fn select_sorted(
    symbols: &Symbols,
    series: &[Arc<MemSeries>],
    mint: i64,
    maxt: i64,
) -> Vec<(Arc<MemSeries>, Labels, Vec<Chunk>)> {
    let mut sel: Vec<(&Arc<MemSeries>, Vec<Chunk>)> = series
        .iter()
        .filter_map(|s| {
            let c = s.chunks_with_ooo(mint, maxt);
            (!c.is_empty()).then_some((s, c))
        })
        .collect();
    let t = symbols.read();
    sel.sort_unstable_by(|a, b| symbols::cmp(&t, &a.0.key, &b.0.key));
    sel.into_iter()
        .map(|(s, c)| (s.clone(), symbols::labels(&t, &s.key), c))
        .collect()
}

/// Sorts series as their label sets are ordered.
fn sort_series(symbols: &Symbols, series: &mut [Arc<MemSeries>]) {
    let t = symbols.read();
    series.sort_unstable_by(|a, b| symbols::cmp(&t, &a.key, &b.key));
}

/// How a batch names a series: by label hash + labels, by hash + series key alone
/// (labels are parsed from the key only when the series is new), or by ref.
#[derive(Debug, Clone, Copy)]
pub enum SeriesKey<'a> {
    /// Hash, labels, and the range of the series key in the batch's key buffer.
    Labels(u64, &'a Labels, (u32, u32)),
    /// Hash and the range of the series key in the batch's key buffer.
    Key(u64, (u32, u32)),
    Ref(SeriesRef),
    /// A series found through the wire-key cache: index into the batch's list of them.
    /// Valid as found unless the head removed series since (see [`Head::resolve`]).
    Cached(u32),
}

/// A head selection sorted by labels, read series by series in place (see
/// [`LazySelect::iter_in_place`]), so a caller can stream the first series while later
/// ones are still unread.
#[derive(Debug, Default)]
pub struct LazySelect {
    series: Vec<Arc<MemSeries>>,
    mint: i64,
    maxt: i64,
    prefix_free: bool,
}

impl LazySelect {
    /// Matching series, including those without samples in range.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Whether no series' label set is a prefix of the next one's. Then adding the same
    /// labels to every series (external labels) keeps them sorted: only a prefix can
    /// change places with a longer set, when an added name sorts after the longer set's
    /// next label.
    pub fn prefix_free(&self) -> bool {
        self.prefix_free
    }
}

impl LazySelect {
    /// The series in label order, to be read in place (see [`SeriesInPlace`]): nothing
    /// is parsed or copied, so a caller can encode straight from the head.
    pub fn iter_in_place(&self) -> impl Iterator<Item = SeriesInPlace<'_>> {
        let (mint, maxt) = (self.mint, self.maxt);
        self.series.iter().map(move |s| SeriesInPlace {
            series: s,
            mint,
            maxt,
        })
    }
}

/// One selected series, read in place.
pub struct SeriesInPlace<'a> {
    series: &'a MemSeries,
    mint: i64,
    maxt: i64,
}

impl SeriesInPlace<'_> {
    /// Appends the series' text key (see [`labels_key`]) to `out`.
    pub fn write_key(&self, out: &mut Vec<u8>) {
        symbols::write_text(&self.series.symbols.read(), &self.series.key, out);
    }

    /// Locks the series and borrows its chunks overlapping the range. Appends to this
    /// series wait while the guard lives: keep it short, never across a blocking send.
    pub fn chunks(&self) -> SeriesChunks<'_> {
        SeriesChunks {
            data: self.series.lock(),
            mint: self.mint,
            maxt: self.maxt,
        }
    }
}

/// Buffers [`MemSeries::lend_for_block`] reuses from series to series.
#[derive(Debug, Default)]
pub(crate) struct BlockScratch {
    ids: Vec<u32>,
}

pub use crate::chunk::ChunkView;

/// One series' chunks overlapping a range, borrowed under the series' lock.
pub struct SeriesChunks<'a> {
    data: MutexGuard<'a, SeriesData>,
    mint: i64,
    maxt: i64,
}

impl SeriesChunks<'_> {
    /// The chunks overlapping the range, oldest first (the open one last).
    pub fn iter(&self) -> impl Iterator<Item = ChunkView<'_>> + Clone {
        let (mint, maxt) = (self.mint, self.maxt);
        let ooo = self.data.ooo_chunks(mint, maxt).map(|c| ChunkView {
            min_time: c.min_time,
            max_time: c.max_time,
            encoding: c.encoding,
            data: &c.data,
        });
        self.data.views(mint, maxt).chain(ooo)
    }
}

/// One in-memory series. Field order is fixed so that what an append touches (ref,
/// lock, last sample, open chunk state) shares the first cache lines.
#[derive(Debug)]
#[repr(C)]
pub struct MemSeries {
    pub sref: SeriesRef,
    /// The labels as symbol ids (see [`symbols`]): their only copy in the series, which
    /// [`MemSeries::labels`] reads back through the head's symbol table. Ids instead of
    /// text save ~150 bytes per series of the benchmark's 9 labels.
    key: Box<[u8]>,
    /// The xxhash64 of the series' text key (see [`labels_key`]).
    pub hash: u64,
    data: Mutex<SeriesData>,
    /// The table `key` refers to (given back its references on drop).
    symbols: Arc<Symbols>,
}

impl Drop for MemSeries {
    fn drop(&mut self) {
        self.symbols.release_key(&self.key);
    }
}

#[derive(Debug, Default)]
#[repr(C)]
pub(crate) struct SeriesData {
    /// Whether this series' record is in the WAL (written by the commit path).
    pub(crate) logged: bool,
    /// Timestamp of the newest sample (meaningless while `last` is `None`).
    last_t: i64,
    last: LastValue,
    open: Option<OpenChunk>,
    closed: ClosedChunks,
    /// Out-of-order samples (only with an out-of-order time window; see [`ooo`]).
    ooo: Option<Box<ooo::OooSeries>>,
}

/// Buffer of a series' first XOR chunk (Prometheus's figure).
const XOR_INITIAL_CAPACITY: usize = 128;

/// The buffer to start a series' next XOR chunk with, predicted from the chunk being
/// closed: its bytes per sample times the samples the next chunk will take (a whole
/// chunk range at the series' interval, at most [`MAX_SAMPLES_PER_CHUNK`]), plus an
/// eighth. A fixed 128 bytes is twice what a 2-minute chunk of a 10 s counter needs and
/// an eighth of a 120-sample gauge's (which then copies itself through four doublings);
/// at a million series the difference is hundreds of megabytes (issue #26).
fn next_xor_capacity(prev: &XorOpen, chunk_range: i64) -> usize {
    let n = i64::from(prev.chunk.num_samples());
    let span = prev.chunk.last_t().saturating_sub(prev.min_t);
    if n < 2 || span <= 0 {
        return XOR_INITIAL_CAPACITY;
    }
    let interval = (span / (n - 1)).max(1);
    let expected = (chunk_range / interval + 1).clamp(1, i64::from(MAX_SAMPLES_PER_CHUNK));
    let body = (prev.chunk.bytes().len() - chunkenc::xor::HEADER_SIZE) as i64;
    let predicted = body * expected / n;
    (chunkenc::xor::HEADER_SIZE as i64 + predicted + predicted / 8 + 8).clamp(16, 4096) as usize
}

/// What happened to one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleResult {
    Appended,
    /// Same timestamp and bit-identical value as the last sample: silently ignored.
    DuplicateIgnored,
    Rejected(RejectReason),
}

impl SeriesData {
    fn is_empty(&self) -> bool {
        self.closed.is_empty() && self.open.is_none() && self.ooo.is_none()
    }

    /// Whether in-order chunks remain.
    fn has_in_order(&self) -> bool {
        !self.closed.is_empty() || self.open.is_some()
    }

    /// Stores an out-of-order sample (the caller checked the window); `false` when it
    /// repeats a timestamp of the open out-of-order chunk (dropped, as Prometheus does).
    pub(crate) fn insert_ooo(&mut self, t: i64, v: f64, cap: usize) -> bool {
        self.ooo.get_or_insert_default().insert(t, v, cap)
    }

    /// Stores an out-of-order native histogram (see [`SeriesData::insert_ooo`]).
    pub(crate) fn insert_ooo_histogram(
        &mut self,
        t: i64,
        h: &HistogramValue,
        cap: usize,
    ) -> Result<bool, ChunkError> {
        let o = self.ooo.get_or_insert_default();
        let r = o.insert_histogram(t, h, cap);
        if o.is_empty() {
            self.ooo = None;
        }
        r
    }

    /// Out-of-order chunks overlapping `[mint, maxt]`.
    fn ooo_chunks(&self, mint: i64, maxt: i64) -> impl Iterator<Item = &Chunk> + Clone {
        self.ooo
            .iter()
            .flat_map(|o| o.chunks())
            .filter(move |c| c.max_time >= mint && c.min_time <= maxt)
    }

    /// Moves the out-of-order samples into their compacting state and returns them.
    pub(crate) fn begin_ooo_compaction(&mut self) -> Vec<Chunk> {
        self.ooo
            .as_mut()
            .map(|o| o.begin_compaction())
            .unwrap_or_default()
    }

    /// Drops the out-of-order samples a finished compaction wrote into blocks.
    pub(crate) fn end_ooo_compaction(&mut self) {
        if let Some(o) = self.ooo.as_mut() {
            o.end_compaction();
            if o.is_empty() {
                self.ooo = None;
            }
        }
    }

    /// Time range of the out-of-order samples held.
    fn ooo_range(&self) -> Option<(i64, i64)> {
        let o = self.ooo.as_ref()?;
        let min = o.chunks().map(|c| c.min_time).min()?;
        let max = o.chunks().map(|c| c.max_time).max()?;
        Some((min, max))
    }

    pub(crate) fn append(
        &mut self,
        t: i64,
        v: f64,
        min_valid: i64,
        chunk_range: i64,
    ) -> SampleResult {
        if t < min_valid {
            return SampleResult::Rejected(RejectReason::OutOfBounds);
        }
        if storeapi::is_stale_nan(v) {
            // A stale marker ends a histogram series as a histogram sample, as
            // Prometheus's appender turns it into one.
            let stale = match (&self.last, &self.open) {
                (LastValue::Hist(_), _) | (LastValue::InOpenChunk, Some(OpenChunk::Hist(_))) => {
                    Some(HistogramValue::Int(Box::new(Histogram {
                        sum: v,
                        ..Default::default()
                    })))
                }
                (LastValue::FloatHist(_), _)
                | (LastValue::InOpenChunk, Some(OpenChunk::FloatHist(_))) => {
                    Some(HistogramValue::Float(Box::new(FloatHistogram {
                        sum: v,
                        ..Default::default()
                    })))
                }
                _ => None,
            };
            if let Some(h) = stale {
                return self.append_histogram(t, &h, min_valid, chunk_range);
            }
        }
        if let Some(r) =
            self.check_order(t, |l| matches!(l, LastValue::Float(b) if *b == v.to_bits()))
        {
            return r;
        }
        let cut = match &self.open {
            Some(OpenChunk::Xor(o)) => o.chunk.num_samples() >= MAX_SAMPLES_PER_CHUNK || t >= o.end,
            _ => true,
        };
        if cut {
            let cap = match &self.open {
                Some(OpenChunk::Xor(o)) => next_xor_capacity(o, chunk_range),
                _ => XOR_INITIAL_CAPACITY,
            };
            self.close_open();
            let end = t
                .div_euclid(chunk_range)
                .saturating_add(1)
                .saturating_mul(chunk_range);
            self.open = Some(OpenChunk::Xor(XorOpen {
                chunk: XorChunk::with_capacity(cap),
                min_t: t,
                end,
            }));
        }
        if let Some(OpenChunk::Xor(o)) = self.open.as_mut()
            && o.chunk.append(t, v).is_err()
        {
            // Unreachable: chunks are cut far below the 65535-sample limit.
            return SampleResult::Rejected(RejectReason::OutOfBounds);
        }
        self.last_t = t;
        self.last = LastValue::Float(v.to_bits());
        SampleResult::Appended
    }

    /// The verdict on a sample at `t` against the newest one: `None` when it is newer;
    /// at the same timestamp an ignored duplicate when `same` says the value equals the
    /// last one, else a conflicting duplicate.
    fn check_order(&self, t: i64, same: impl FnOnce(&LastValue) -> bool) -> Option<SampleResult> {
        if matches!(self.last, LastValue::None) || t > self.last_t {
            return None;
        }
        Some(if t < self.last_t {
            SampleResult::Rejected(RejectReason::OutOfOrder)
        } else if same(&self.last) {
            SampleResult::DuplicateIgnored
        } else {
            SampleResult::Rejected(RejectReason::DuplicateTimestamp)
        })
    }

    /// Appends a native histogram sample (either flavour), cutting chunks as
    /// Prometheus's head does (see [`open_chunk`]).
    pub(crate) fn append_histogram(
        &mut self,
        t: i64,
        h: &HistogramValue,
        min_valid: i64,
        chunk_range: i64,
    ) -> SampleResult {
        if t < min_valid {
            return SampleResult::Rejected(RejectReason::OutOfBounds);
        }
        let open = &self.open;
        let same = |l: &LastValue| match (l, h, open) {
            (LastValue::Hist(a), HistogramValue::Int(b), _) => a.equals(b),
            (LastValue::FloatHist(a), HistogramValue::Float(b), _) => a.equals(b),
            (LastValue::InOpenChunk, HistogramValue::Int(b), Some(OpenChunk::Hist(o))) => {
                o.app.last_histogram().is_some_and(|a| a.equals(b))
            }
            (LastValue::InOpenChunk, HistogramValue::Float(b), Some(OpenChunk::FloatHist(o))) => {
                o.app.last_histogram().is_some_and(|a| a.equals(b))
            }
            _ => false,
        };
        if let Some(r) = self.check_order(t, same) {
            return r;
        }
        let (open, closed, last) = (&mut self.open, &mut self.closed, &mut self.last);
        let done = match h {
            HistogramValue::Int(h) => append_histogram::<HistogramAppender>(
                open,
                closed,
                last,
                self.last_t,
                t,
                h,
                chunk_range,
            )
            .map(|()| HistogramAppender::set_last(last, open, h)),
            HistogramValue::Float(h) => append_histogram::<FloatHistogramAppender>(
                open,
                closed,
                last,
                self.last_t,
                t,
                h,
                chunk_range,
            )
            .map(|()| FloatHistogramAppender::set_last(last, open, h)),
        };
        match done {
            Ok(()) => {
                self.last_t = t;
                SampleResult::Appended
            }
            Err(_) => SampleResult::Rejected(RejectReason::InvalidHistogram),
        }
    }

    /// Makes `t` a chunk boundary: a chunk holding samples on both sides of `t` (written
    /// while a flush picked its end: the end is read before the head is locked) is
    /// re-encoded as two, and an open chunk whose samples all lie before `t` is closed.
    /// After this no chunk straddles `t`, so a block ending at `t` takes whole chunks
    /// and truncating the head at `t` leaves none of the block's samples behind.
    fn split_at(&mut self, t: i64, chunk_range: i64) -> Result<(), ChunkError> {
        if self
            .closed
            .iter()
            .any(|c| c.min_time < t && c.max_time >= t)
        {
            let mut out = Vec::new();
            for c in self.closed.iter() {
                if c.min_time < t && c.max_time >= t {
                    let (open, rest) = split_chunk(c.encoding, c.data, t, chunk_range, &mut out)?;
                    out.extend(rest);
                    out.extend(open.and_then(OpenChunk::close));
                } else {
                    out.push(c.to_chunk());
                }
            }
            self.closed.set(&out);
        }
        if let Some(o) = &self.open {
            if o.last_t() < t {
                self.close_open();
            } else if o.min_t() < t {
                self.keep_last();
                let Some(o) = &self.open else { return Ok(()) };
                let mut before = Vec::new();
                let (mut open, rest) =
                    split_chunk(o.encoding(), o.bytes(), t, chunk_range, &mut before)?;
                for c in before.iter().chain(&rest) {
                    self.closed.push_chunk(c);
                }
                if let (Some(OpenChunk::Xor(new)), Some(OpenChunk::Xor(old))) =
                    (&mut open, &self.open)
                {
                    new.end = old.end;
                }
                self.open = open;
            }
        }
        Ok(())
    }

    /// Asks the CPU to start loading the bytes the next append to this series reads
    /// first: its open chunk's header and last byte, or a histogram appender's struct
    /// and the last histogram's box. At a million series those bytes are never in cache
    /// when a sample arrives (one per series every scrape interval), and waiting for
    /// them was 15% of the receiver's CPU (issue #26); a commit calls this ahead of its
    /// appends (see [`LockWindow`]), so the misses overlap instead of queueing.
    fn prefetch_for_append(&self) {
        match &self.open {
            Some(OpenChunk::Xor(o)) => {
                let b = o.chunk.bytes();
                prefetch(b.as_ptr());
                prefetch(b.as_ptr().wrapping_add(b.len().saturating_sub(1)));
            }
            Some(OpenChunk::Hist(h)) => prefetch_value(&**h),
            Some(OpenChunk::FloatHist(h)) => prefetch_value(&**h),
            None => {}
        }
        match &self.last {
            LastValue::Hist(h) => prefetch_value(&**h),
            LastValue::FloatHist(h) => prefetch_value(&**h),
            LastValue::None | LastValue::Float(_) | LastValue::InOpenChunk => {}
        }
    }

    /// The last step of [`LockWindow::advance`] for a histogram series: the open
    /// chunk's and the last histogram's vectors, whose addresses the step before brought
    /// into the cache.
    fn prefetch_histogram_state(&self) {
        match &self.open {
            Some(OpenChunk::Hist(h)) => prefetch_regions(h.app.append_regions()),
            Some(OpenChunk::FloatHist(h)) => prefetch_regions(h.app.append_regions()),
            _ => {}
        }
        match &self.last {
            LastValue::Hist(h) => prefetch_regions(int_vectors(h)),
            LastValue::FloatHist(h) => prefetch_regions(float_vectors(h)),
            LastValue::None | LastValue::Float(_) | LastValue::InOpenChunk => {}
        }
    }

    /// Copies the last histogram out of the open chunk's appender when that is where it
    /// is kept ([`LastValue::InOpenChunk`]): called before the open chunk goes, since a
    /// later sample's chunk header is computed against it.
    fn keep_last(&mut self) {
        if !matches!(self.last, LastValue::InOpenChunk) {
            return;
        }
        self.last = match &self.open {
            Some(OpenChunk::Hist(o)) => o
                .app
                .last_histogram()
                .map_or(LastValue::None, |h| LastValue::Hist(Box::new(h))),
            Some(OpenChunk::FloatHist(o)) => o
                .app
                .last_histogram()
                .map_or(LastValue::None, |h| LastValue::FloatHist(Box::new(h))),
            // Unreachable: `InOpenChunk` is only set with a histogram chunk open.
            Some(OpenChunk::Xor(_)) | None => LastValue::None,
        };
    }

    fn close_open(&mut self) {
        self.keep_last();
        if let Some(o) = self.open.take() {
            o.close_into(&mut self.closed);
        }
    }

    fn first_time(&self) -> Option<i64> {
        self.closed
            .min_time()
            .or(self.open.as_ref().map(|o| o.min_t()))
    }

    /// Chunks overlapping `[mint, maxt]`, copied.
    fn chunks(&self, mint: i64, maxt: i64, out: &mut Vec<Chunk>) {
        out.extend(self.views(mint, maxt).map(|c| c.to_chunk()));
    }

    /// The in-order chunks overlapping `[mint, maxt]`, borrowed: closed ones oldest
    /// first, then the open one (when it holds samples).
    fn views(&self, mint: i64, maxt: i64) -> impl Iterator<Item = ChunkView<'_>> + Clone {
        let open = self
            .open
            .as_ref()
            .filter(|o| o.num_samples() > 0)
            .map(|o| ChunkView {
                min_time: o.min_t(),
                max_time: o.last_t(),
                encoding: o.encoding(),
                data: o.bytes(),
            });
        self.closed
            .iter()
            .chain(open)
            .filter(move |c| c.max_time >= mint && c.min_time <= maxt)
    }

    /// Drops chunks that end before `cut`; returns whether data remains.
    fn truncate(&mut self, cut: i64) -> bool {
        self.closed.retain(|c| c.max_time >= cut);
        if let Some(o) = &self.open
            && o.last_t() < cut
        {
            self.keep_last();
            self.open = None;
        }
        !self.is_empty()
    }
}

impl MemSeries {
    /// The series' labels (parsed from its key).
    pub fn labels(&self) -> Labels {
        symbols::labels(&self.symbols.read(), &self.key)
    }

    /// Writes the labels as a WAL series record encodes them (Prometheus's
    /// `EncodeLabels`) straight from the symbol table: no `Labels` is built (a WAL
    /// checkpoint writes every series of the head).
    pub(crate) fn put_labels_record(&self, buf: &mut Vec<u8>) {
        let t = self.symbols.read();
        let n = symbols::ids(&self.key).count() / 2;
        crate::wal::record::put_uvarint(buf, n as u64);
        for id in symbols::ids(&self.key) {
            let s = t.get(id).as_bytes();
            crate::wal::record::put_uvarint(buf, s.len() as u64);
            buf.extend_from_slice(s);
        }
    }

    /// Whether any in-order chunk overlaps `[mint, maxt]`.
    pub(crate) fn has_chunks_in(&self, mint: i64, maxt: i64) -> bool {
        self.lock().views(mint, maxt).next().is_some()
    }

    /// Lends `f` the labels, as ids of the head's string table (name and value of each
    /// label in turn; see [`Head::symbol_strings`]), and the in-order chunks overlapping
    /// `[mint, maxt]` (what [`Head::iter_sorted`] copies out for a block), under the
    /// series lock. The ids need no table lock: they are the series' own key.
    pub(crate) fn lend_for_block<R>(
        &self,
        mint: i64,
        maxt: i64,
        scratch: &mut BlockScratch,
        f: impl FnOnce(&[u32], &[ChunkView<'_>]) -> R,
    ) -> R {
        let d = self.lock();
        scratch.ids.clear();
        scratch.ids.extend(symbols::ids(&self.key));
        let chunks: Vec<ChunkView<'_>> = d.views(mint, maxt).collect();
        f(&scratch.ids, &chunks)
    }

    /// Calls `f` with each in-order chunk (closed ones oldest first, then the open
    /// one), borrowed under the series lock: what [`MemSeries::chunks`] copies out.
    pub(crate) fn for_each_chunk(&self, f: impl FnMut(ChunkView<'_>)) {
        self.lock().views(i64::MIN, i64::MAX).for_each(f);
    }

    /// A series with no labels and no samples, for tests of what holds series.
    #[cfg(test)]
    pub(crate) fn bare(sref: u64) -> Arc<MemSeries> {
        Arc::new(MemSeries {
            sref,
            key: Box::new([]),
            hash: 0,
            data: Mutex::new(SeriesData::default()),
            symbols: Arc::new(Symbols::default()),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SeriesData> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the series unless another thread holds it (see [`LockWindow`]).
    fn try_lock(&self) -> Option<MutexGuard<'_, SeriesData>> {
        match self.data.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// The second step of [`prefetch_ahead`]: the key and the chunks' first lines.
    fn prefetch_parts(&self) {
        prefetch(self.key.as_ptr());
        let Ok(d) = self.data.try_lock() else { return };
        prefetch(d.closed.as_ptr());
        if let Some(OpenChunk::Xor(o)) = &d.open {
            prefetch(o.chunk.bytes().as_ptr());
        }
    }

    /// In-order chunks overlapping `[mint, maxt]`, oldest first (what the head's
    /// blocks and WAL checkpoints are written from; out-of-order samples have their own
    /// blocks and log).
    pub fn chunks(&self, mint: i64, maxt: i64) -> Vec<Chunk> {
        let mut out = Vec::new();
        self.lock().chunks(mint, maxt, &mut out);
        out
    }

    /// What a query reads: the in-order chunks overlapping `[mint, maxt]`, oldest
    /// first, then the out-of-order ones (which may overlap them).
    pub fn chunks_with_ooo(&self, mint: i64, maxt: i64) -> Vec<Chunk> {
        let d = self.lock();
        let mut out = Vec::new();
        d.chunks(mint, maxt, &mut out);
        out.extend(d.ooo_chunks(mint, maxt).cloned());
        out
    }
}

/// Hash of a series ref in [`Index::series`] (refs come from a counter: mix them).
#[inline]
fn ref_hash(r: SeriesRef) -> u64 {
    (r ^ (r >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The head's series, findable by ref and by labels. Both tables hold one pointer per
/// series: the ref and the key hash live in the series itself, and series whose keys
/// share a hash simply sit in the table side by side (memory per series is the head's
/// cost at a million series, issue #26).
#[derive(Debug, Default)]
struct Index {
    series: HashTable<Arc<MemSeries>>,
    by_hash: HashTable<Arc<MemSeries>>,
    postings: MemPostings,
    /// The label order of the last block cut (see [`sorted`]); a mutex so a cut can
    /// take it under the read lock, while creating and dropping series (write lock)
    /// update it without waiting.
    sorted: Mutex<sorted::SortCache>,
}

impl Index {
    /// The series whose text key (see [`labels_key`]) is `key`, hashing to `hash`.
    #[inline]
    fn find(&self, hash: u64, key: &[u8], t: &symbols::Table) -> Option<&Arc<MemSeries>> {
        self.by_hash.find(hash, |s| {
            s.hash == hash && symbols::key_eq_text(t, &s.key, key)
        })
    }

    #[inline]
    fn get(&self, r: SeriesRef) -> Option<&Arc<MemSeries>> {
        self.series.find(ref_hash(r), |s| s.sref == r)
    }

    fn contains(&self, r: SeriesRef) -> bool {
        self.get(r).is_some()
    }

    fn len(&self) -> usize {
        self.series.len()
    }

    fn values(&self) -> impl Iterator<Item = &Arc<MemSeries>> {
        self.series.iter()
    }

    fn insert(&mut self, s: Arc<MemSeries>, labels: &Labels) {
        self.sorted
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .added(&s);
        self.postings.add(s.sref, labels);
        self.by_hash.insert_unique(s.hash, s.clone(), |x| x.hash);
        self.series
            .insert_unique(ref_hash(s.sref), s, |x| ref_hash(x.sref));
    }

    /// Removes series `r` from both tables (not from the postings).
    fn remove(&mut self, r: SeriesRef) -> Option<Arc<MemSeries>> {
        let s = self
            .series
            .find_entry(ref_hash(r), |s| s.sref == r)
            .ok()?
            .remove()
            .0;
        if let Ok(e) = self.by_hash.find_entry(s.hash, |x| x.sref == r) {
            e.remove();
        }
        Some(s)
    }
}

/// The head block.
#[derive(Debug)]
pub struct Head {
    index: RwLock<Index>,
    next_ref: AtomicU64,
    min_time: AtomicI64,
    max_time: AtomicI64,
    min_valid_time: AtomicI64,
    /// Time range of the out-of-order samples held (`MAX`/`MIN` when none): a bound,
    /// recomputed after each out-of-order compaction.
    ooo_min: AtomicI64,
    ooo_max: AtomicI64,
    /// Bumped (under the index write lock) whenever series are removed, so that a batch
    /// resolved before taking the commit lock knows to resolve again.
    epoch: AtomicU64,
    chunk_range: i64,
    metrics: Metrics,
    /// The series' label strings (taken after `index` when both are held).
    symbols: Arc<Symbols>,
    /// Clients' label encodings to series (see [`wire_keys`]).
    wire_keys: wire_keys::WireKeys,
    /// See [`Head::id`].
    id: u64,
}

impl Head {
    pub fn new(chunk_range: i64, metrics: Metrics) -> Head {
        Head {
            index: RwLock::new(Index::default()),
            next_ref: AtomicU64::new(1),
            min_time: AtomicI64::new(i64::MAX),
            max_time: AtomicI64::new(i64::MIN),
            min_valid_time: AtomicI64::new(i64::MIN),
            ooo_min: AtomicI64::new(i64::MAX),
            ooo_max: AtomicI64::new(i64::MIN),
            epoch: AtomicU64::new(0),
            chunk_range: chunk_range.max(1),
            metrics,
            symbols: Arc::default(),
            wire_keys: wire_keys::WireKeys::new(0),
            id: {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed)
            },
        }
    }

    /// Turns on the wire-key cache, holding at most about `limit` bytes.
    pub(crate) fn set_wire_key_limit(&mut self, limit: usize) {
        self.wire_keys = wire_keys::WireKeys::new(limit);
    }

    /// The series clients' label encodings were last seen naming (appending to `out`
    /// in order; `None` for those the cache does not know); the epoch all of them are
    /// valid in.
    pub(crate) fn wire_key_series_many<'k>(
        &self,
        keys: impl ExactSizeIterator<Item = (u64, &'k [u8])> + Clone,
        tag: u64,
        out: &mut Vec<Option<Arc<MemSeries>>>,
    ) -> u64 {
        let epoch = self.epoch();
        if self.wire_keys.enabled() {
            self.wire_keys.get_many(keys, epoch, tag, out);
        } else {
            out.extend(std::iter::repeat_n(None, keys.len()));
        }
        epoch
    }

    /// Remembers client label encodings for resolved series. Callers hold the commit
    /// lock (so the epoch is the one the series were resolved in).
    pub(crate) fn remember_wire_keys<'k>(
        &self,
        tag: u64,
        entries: impl IntoIterator<Item = (u64, &'k [u8], &'k Arc<MemSeries>)>,
    ) {
        self.wire_keys.insert_all(self.epoch(), tag, entries);
    }

    /// This head's number, unique in the process (a series found in one head is never
    /// taken for another's).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Whether a batch should be looked up in the wire-key cache (see
    /// `WireKeys::worth_asking`).
    pub(crate) fn wire_keys_worth_asking(&self) -> bool {
        self.wire_keys.worth_asking()
    }

    /// Entries in the wire-key cache and the bytes they are counted as.
    pub fn wire_key_usage(&self) -> (usize, usize) {
        self.wire_keys.usage()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn chunk_range(&self) -> i64 {
        self.chunk_range
    }

    /// Smallest sample timestamp in the head (`i64::MAX` when empty).
    pub fn min_time(&self) -> i64 {
        self.min_time.load(Ordering::Acquire)
    }

    /// Largest sample timestamp in the head (`i64::MIN` when empty).
    pub fn max_time(&self) -> i64 {
        self.max_time.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.max_time() == i64::MIN
    }

    /// The oldest timestamp an appender accepts now: the newer of the head's lower bound
    /// (set by compaction) and `min(max_time, cap) - chunk_range/2` (Prometheus's
    /// appendable window; `cap` keeps a future sample from moving it past the present).
    /// `None` on an empty head: the window then starts at the batch's first sample
    /// ([`Head::window_from`]), as Prometheus's `initAppender` does.
    pub fn appendable_min(&self, cap: i64) -> Option<i64> {
        let mt = self.max_time();
        (mt != i64::MIN).then(|| self.window_from(mt.min(cap)))
    }

    /// The appendable window's start for a head whose newest timestamp is `reference`.
    pub fn window_from(&self, reference: i64) -> i64 {
        self.min_valid_time
            .load(Ordering::Acquire)
            .max(reference.saturating_sub(self.chunk_range / 2))
    }

    /// The lower bound set by compaction (samples older than this are in blocks).
    pub fn min_valid_time(&self) -> i64 {
        self.min_valid_time.load(Ordering::Acquire)
    }

    pub fn set_min_valid_time(&self, t: i64) {
        self.min_valid_time.fetch_max(t, Ordering::AcqRel);
    }

    pub(crate) fn note_times(&self, mint: i64, maxt: i64) {
        if mint <= maxt {
            self.min_time.fetch_min(mint, Ordering::AcqRel);
            self.max_time.fetch_max(maxt, Ordering::AcqRel);
        }
    }

    pub(crate) fn note_ooo_time(&self, t: i64) {
        self.ooo_min.fetch_min(t, Ordering::AcqRel);
        self.ooo_max.fetch_max(t, Ordering::AcqRel);
    }

    /// Oldest out-of-order sample held (`i64::MAX` when none).
    pub fn ooo_min_time(&self) -> i64 {
        self.ooo_min.load(Ordering::Acquire)
    }

    /// The time range of everything the head holds, out-of-order samples included;
    /// `None` when it holds nothing. What queries are checked against.
    pub fn data_range(&self) -> Option<(i64, i64)> {
        let (omin, omax) = (
            self.ooo_min.load(Ordering::Acquire),
            self.ooo_max.load(Ordering::Acquire),
        );
        let (imin, imax) = (self.min_time(), self.max_time());
        let lo = imin.min(omin);
        let hi = if imax == i64::MIN {
            omax
        } else {
            imax.max(omax)
        };
        (lo <= hi && hi != i64::MIN).then_some((lo, hi))
    }

    /// Whether nothing the head holds lies in `[mint, maxt]`.
    fn misses(&self, mint: i64, maxt: i64) -> bool {
        self.data_range()
            .is_none_or(|(lo, hi)| maxt < lo || mint > hi)
    }

    /// Series holding out-of-order samples.
    pub(crate) fn ooo_series(&self) -> Vec<Arc<MemSeries>> {
        let idx = self.read();
        let mut v: Vec<Arc<MemSeries>> = idx
            .values()
            .filter(|s| s.lock().ooo.is_some())
            .cloned()
            .collect();
        drop(idx);
        sort_series(&self.symbols, &mut v);
        v
    }

    /// Recomputes the out-of-order time range from the series (after a compaction
    /// dropped samples). Callers hold the commit lock.
    pub(crate) fn recompute_ooo_range(&self) {
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for s in self.read().values() {
            if let Some((a, b)) = s.lock().ooo_range() {
                lo = lo.min(a);
                hi = hi.max(b);
            }
        }
        self.ooo_min.store(lo, Ordering::Release);
        self.ooo_max.store(hi, Ordering::Release);
    }

    pub fn num_series(&self) -> usize {
        self.read().len()
    }

    /// Label strings held by the head's series (each once).
    pub fn num_symbols(&self) -> usize {
        self.symbols.read().len()
    }

    pub fn get(&self, r: SeriesRef) -> Option<Arc<MemSeries>> {
        self.read().get(r).cloned()
    }

    /// Changes whenever series are removed from the head (see [`Head::resolve`]).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Resolves batch keys to series under one read lock (`None` for unknown ones).
    /// Without the commit lock held, a resolved series may be removed by a concurrent
    /// truncation: compare [`Head::epoch`] before and after taking the commit lock.
    ///
    /// Series found through the wire-key cache (`cached`) are taken as found, or, with
    /// `verify`, only while the head still holds them: a series removed since is looked
    /// up again (and created when missing) by [`Head::create_missing`].
    pub(crate) fn resolve<'c>(
        &self,
        keys: &[SeriesKey<'_>],
        keybuf: &[u8],
        cached: &'c [Arc<MemSeries>],
        verify: bool,
        out: &mut Vec<Option<Found<'c>>>,
    ) {
        let idx = self.read();
        let t = self.symbols.read();
        // Two passes: the first finds each key's candidate by hash alone and touches
        // its key, so the cache misses of a whole batch (the series struct, then its
        // key) overlap instead of each waiting on the one before; the second checks
        // the labels, falling back to a full lookup on a hash collision.
        let start = out.len();
        out.extend(keys.iter().map(|k| {
            match k {
                SeriesKey::Labels(h, ..) | SeriesKey::Key(h, _) => idx
                    .by_hash
                    .find(*h, |s| s.hash == *h)
                    .inspect(|s| {
                        std::hint::black_box(s.key.first());
                    })
                    .cloned()
                    .map(Cow::Owned),
                SeriesKey::Ref(r) => idx.get(*r).cloned().map(Cow::Owned),
                SeriesKey::Cached(i) => cached.get(*i as usize).and_then(|s| {
                    let kept = !verify || idx.get(s.sref).is_some_and(|x| Arc::ptr_eq(x, s));
                    kept.then_some(Cow::Borrowed(s))
                }),
            }
        }));
        for (slot, k) in out[start..].iter_mut().zip(keys) {
            let (SeriesKey::Labels(h, _, (a, b)) | SeriesKey::Key(h, (a, b))) = k else {
                continue;
            };
            let text = &keybuf[*a as usize..*b as usize];
            if slot
                .as_ref()
                .is_some_and(|s| !symbols::key_eq_text(&t, &s.key, text))
            {
                *slot = idx.find(*h, text, &t).cloned().map(Cow::Owned);
            }
        }
    }

    /// Finds or creates a series. Creation must be serialized with other writers.
    fn get_or_create(
        &self,
        hash: u64,
        labels: &Labels,
        key: &[u8],
        want_ref: Option<SeriesRef>,
        idx: &mut Index,
    ) -> (Arc<MemSeries>, bool) {
        if let Some(s) = idx.find(hash, key, &self.symbols.read()) {
            return (s.clone(), false);
        }
        let r = match want_ref {
            Some(r) if r != 0 && !idx.contains(r) => {
                self.next_ref.fetch_max(r + 1, Ordering::AcqRel);
                r
            }
            _ => self.next_ref.fetch_add(1, Ordering::AcqRel),
        };
        let mut ids = Vec::with_capacity(labels.len() * 4);
        self.symbols.encode_key(key, &mut ids);
        let s = Arc::new(MemSeries {
            sref: r,
            hash,
            key: ids.into(),
            data: Mutex::new(SeriesData::default()),
            symbols: self.symbols.clone(),
        });
        idx.insert(s.clone(), labels);
        self.metrics.head_series_created.inc();
        self.metrics.head_series.inc();
        (s, true)
    }

    /// Creates the series missing from `resolved` (label keys only); returns how many.
    pub(crate) fn create_missing(
        &self,
        keys: &[SeriesKey<'_>],
        keybuf: &[u8],
        cached: &[Arc<MemSeries>],
        resolved: &mut [Option<Found<'_>>],
    ) -> u64 {
        if resolved.iter().all(Option::is_some) {
            return 0;
        }
        let mut idx = self.write();
        let mut n = 0;
        for (slot, k) in resolved.iter_mut().zip(keys) {
            if slot.is_some() {
                continue;
            }
            match k {
                SeriesKey::Labels(h, l, (a, b)) if !l.is_empty() => {
                    let key = &keybuf[*a as usize..*b as usize];
                    let (s, created) = self.get_or_create(*h, l, key, None, &mut idx);
                    n += created as u64;
                    *slot = Some(Cow::Owned(s));
                }
                SeriesKey::Key(h, (a, b)) => {
                    let key = &keybuf[*a as usize..*b as usize];
                    let found = idx.find(*h, key, &self.symbols.read()).cloned();
                    if let Some(s) = found {
                        *slot = Some(Cow::Owned(s));
                    } else if let Some(l) = labels_from_key(key) {
                        let (s, created) = self.get_or_create(*h, &l, key, None, &mut idx);
                        n += created as u64;
                        *slot = Some(Cow::Owned(s));
                    }
                }
                // Found in the wire-key cache but removed from the head since: by its
                // labels (another batch may have created the series again), or anew.
                SeriesKey::Cached(i) => {
                    let Some(old) = cached.get(*i as usize) else {
                        continue;
                    };
                    // Read through the series' own table (a series of another head
                    // names its labels in that head's table).
                    let (text, labels) = {
                        let t = old.symbols.read();
                        let mut text = Vec::new();
                        symbols::write_text(&t, &old.key, &mut text);
                        (text, symbols::labels(&t, &old.key))
                    };
                    let found = idx.find(old.hash, &text, &self.symbols.read()).cloned();
                    if let Some(s) = found {
                        *slot = Some(Cow::Owned(s));
                    } else if !labels.is_empty() {
                        let (s, created) =
                            self.get_or_create(old.hash, &labels, &text, None, &mut idx);
                        n += created as u64;
                        *slot = Some(Cow::Owned(s));
                    }
                }
                _ => {}
            }
        }
        n
    }

    /// Replay: finds or creates the series of a WAL series record, keeping the WAL's ref
    /// when it is free (so later records that use it stay valid).
    /// The series with these labels, created when missing (a series that so far has
    /// only exemplars, as Prometheus's `AppendExemplar` creates it). `None` for an empty
    /// label set.
    pub(crate) fn series_for(
        &self,
        labels: &Labels,
        scratch: &mut Vec<u8>,
    ) -> Option<Arc<MemSeries>> {
        if labels.is_empty() {
            return None;
        }
        let h = labels_hash(labels, scratch);
        let found = self.read().find(h, scratch, &self.symbols.read()).cloned();
        if found.is_some() {
            return found;
        }
        let mut idx = self.write();
        Some(self.get_or_create(h, labels, scratch, None, &mut idx).0)
    }

    /// The existing series with these labels.
    pub(crate) fn find_series(
        &self,
        labels: &Labels,
        scratch: &mut Vec<u8>,
    ) -> Option<Arc<MemSeries>> {
        let h = labels_hash(labels, scratch);
        self.read().find(h, scratch, &self.symbols.read()).cloned()
    }

    pub(crate) fn replay_series(
        &self,
        wal_ref: SeriesRef,
        labels: &Labels,
        scratch: &mut Vec<u8>,
    ) -> Arc<MemSeries> {
        let h = labels_hash(labels, scratch);
        let mut idx = self.write();
        let (s, _) = self.get_or_create(h, labels, scratch, Some(wal_ref), &mut idx);
        self.next_ref
            .fetch_max(wal_ref.saturating_add(1), Ordering::AcqRel);
        s.lock().logged = true;
        s
    }

    /// Appends one sample to a series (writer path; the caller serializes writers).
    #[inline]
    pub(crate) fn append_locked(
        &self,
        data: &mut SeriesData,
        t: i64,
        v: f64,
        min_valid: i64,
    ) -> SampleResult {
        data.append(t, v, min_valid, self.chunk_range)
    }

    /// Series matching `matchers`, sorted by labels, with their chunks overlapping
    /// `[mint, maxt]`; series without such chunks are left out.
    pub fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<(Labels, Vec<Chunk>)> {
        if self.misses(mint, maxt) {
            return Vec::new();
        }
        let series: Vec<Arc<MemSeries>> = {
            let idx = self.read();
            idx.postings
                .select(matchers)
                .iter()
                .filter_map(|r| idx.get(*r).cloned())
                .collect()
        };
        // Large selections are split in two halves, each gathered, sorted and parsed on
        // its own thread, then merged (the caller usually waits on nothing else).
        let parts = if series.len() >= PARALLEL_SELECT_MIN
            && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1)
        {
            let mid = series.len() / 2;
            let (a, b) = series.split_at(mid);
            std::thread::scope(|sc| {
                let hb = sc.spawn(|| select_sorted(&self.symbols, b, mint, maxt));
                let ra = select_sorted(&self.symbols, a, mint, maxt);
                hb.join().map(|rb| (ra, rb))
            })
            .ok()
        } else {
            None
        };
        let Some((a, b)) = parts else {
            return select_sorted(&self.symbols, &series, mint, maxt)
                .into_iter()
                .map(|(_, l, c)| (l, c))
                .collect();
        };
        let mut out = Vec::with_capacity(a.len() + b.len());
        let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
        let t = self.symbols.read();
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if symbols::cmp(&t, &x.0.key, &y.0.key).is_le() => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, _) => b.next(),
            };
            match next {
                Some((_, l, c)) => out.push((l, c)),
                None => break,
            }
        }
        out
    }

    /// Whether any head series has a label named `name`.
    pub fn has_label(&self, name: &str) -> bool {
        self.read().postings.has_label(name)
    }

    /// Series matching `matchers`, sorted by labels but not yet read: see [`LazySelect`].
    pub fn select_lazy(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> LazySelect {
        let mut series = self.matching_series(matchers, mint, maxt);
        sort_series(&self.symbols, &mut series);
        let prefix_free = series.windows(2).all(|w| !w[1].key.starts_with(&w[0].key));
        LazySelect {
            series,
            mint,
            maxt,
            prefix_free,
        }
    }

    /// Every series with chunks overlapping `[mint, maxt]`, sorted by labels, with those
    /// chunks; produced lazily, one series at a time (block writing streams it, so
    /// compaction never holds every series' labels and chunks at once).
    pub fn iter_sorted(&self, mint: i64, maxt: i64) -> impl Iterator<Item = (Labels, Vec<Chunk>)> {
        self.sorted_for_block(mint, maxt)
            .into_series()
            .into_iter()
            .filter_map(move |s| {
                let c = s.chunks(mint, maxt);
                (!c.is_empty()).then(|| (s.labels(), c))
            })
    }

    /// The text of ids of the head's string table (as [`MemSeries::lend_for_block`]
    /// lends them), in the order given, under one read of the table. An id no live
    /// series names has no text (empty).
    pub(crate) fn symbol_strings(&self, ids: &[u32]) -> Vec<String> {
        let t = self.symbols.read();
        ids.iter().map(|&id| t.get(id).to_string()).collect()
    }

    /// Every series, sorted by labels, when the head has data in `[mint, maxt]` (none
    /// otherwise): what a block of that range is written from, series by series (a
    /// series without chunks there is skipped by the writer). [`Head::iter_sorted`]
    /// copies them out; [`MemSeries::lend_for_block`] lends them. The order is kept
    /// for the next cut when the result is dropped (see [`sorted`]).
    pub(crate) fn sorted_for_block(&self, mint: i64, maxt: i64) -> ForBlock<'_> {
        if self.misses(mint, maxt) {
            return ForBlock {
                head: self,
                series: Vec::new(),
                lent: false,
            };
        }
        let (taken, all) = {
            let idx = self.read();
            let taken = idx.sorted.lock().unwrap_or_else(|e| e.into_inner()).take();
            let all: sorted::Sorted = match taken {
                sorted::Taken::Full { .. } => idx.values().map(|s| (s.sref, s.clone())).collect(),
                sorted::Taken::Merge(..) => Vec::new(),
            };
            (taken, all)
        };
        let t = self.symbols.read();
        let (series, lent) = match taken {
            sorted::Taken::Merge(base, added) => (sorted::merge(&t, base, added), true),
            sorted::Taken::Full { lend } => {
                let mut v = all;
                sorted::sort(&t, &mut v);
                (v, lend)
            }
        };
        ForBlock {
            head: self,
            series,
            lent,
        }
    }

    /// Series (sorted by labels) matching `matchers` that have samples in `[mint, maxt]`.
    fn matching_series(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<Arc<MemSeries>> {
        if self.misses(mint, maxt) {
            return Vec::new();
        }
        let idx = self.read();
        idx.postings
            .select(matchers)
            .iter()
            .filter_map(|r| idx.get(*r).cloned())
            .collect()
    }

    /// Sorted label names of series matching `matchers` with data in `[mint, maxt]`.
    pub fn label_names(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<String> {
        if self.misses(mint, maxt) {
            return Vec::new();
        }
        if matchers.is_empty() {
            return self.read().postings.label_names();
        }
        let mut names: Vec<String> = self
            .matching_series(matchers, mint, maxt)
            .iter()
            .flat_map(|s| {
                s.labels()
                    .into_vec()
                    .into_iter()
                    .map(|l| String::from(l.name))
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        names.sort();
        names
    }

    /// Sorted values of `name` among series matching `matchers` with data in `[mint, maxt]`.
    pub fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Vec<String> {
        if self.misses(mint, maxt) {
            return Vec::new();
        }
        if matchers.is_empty() {
            return self.read().postings.label_values(name);
        }
        let mut values: Vec<String> = self
            .matching_series(matchers, mint, maxt)
            .iter()
            .filter_map(|s| s.labels().get(name).map(str::to_string))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        values.sort();
        values
    }

    /// Makes `t` a chunk boundary in every series (see [`SeriesData::split_at`]), so
    /// samples appended from now on start new chunks at or after `t` and no chunk holds
    /// samples on both sides (used before cutting a block at a boundary that is not a
    /// multiple of the chunk range). Callers hold the commit lock.
    pub(crate) fn split_chunks_at(&self, t: i64) -> Result<(), ChunkError> {
        let idx = self.read();
        for s in idx.values() {
            s.lock().split_at(t, self.chunk_range)?;
        }
        Ok(())
    }

    /// All series, by ref (for checkpoints).
    pub(crate) fn all_series(&self) -> Vec<Arc<MemSeries>> {
        // Sorted by a copy of the ref: comparing through the pointers would miss the
        // cache on most of a million series' structs, a score of times each.
        let mut v: Vec<(SeriesRef, Arc<MemSeries>)> =
            self.read().values().map(|s| (s.sref, s.clone())).collect();
        v.sort_unstable_by_key(|(r, _)| *r);
        v.into_iter().map(|(_, s)| s).collect()
    }

    /// Drops all data older than `cut` and series left without data; recomputes the
    /// head's time range. Callers serialize this with writers.
    pub(crate) fn truncate(&self, cut: i64) -> usize {
        self.set_min_valid_time(cut);
        let mut idx = self.write();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        // Its entries may name series removed below; they would also keep them alive.
        self.wire_keys.clear();
        let mut removed = HashSet::new();
        let mut mint = i64::MAX;
        let mut maxt = i64::MIN;
        {
            // Two more cursors over the table walk ahead of this one (see `prefetch_ahead`).
            let mut far = idx.values().skip(AHEAD);
            let mut near = idx.values().skip(AHEAD / 2);
            for s in idx.values() {
                if let Some(f) = far.next() {
                    prefetch_value(&**f);
                }
                if let Some(n) = near.next() {
                    n.prefetch_parts();
                }
                let mut d = s.lock();
                if d.truncate(cut) {
                    if let Some(f) = d.first_time() {
                        mint = mint.min(f);
                    }
                    if d.has_in_order() {
                        maxt = maxt.max(d.last_t);
                    }
                } else {
                    removed.insert(s.sref);
                }
            }
        }
        for r in &removed {
            idx.remove(*r);
        }
        idx.postings.remove(&removed);
        idx.sorted
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .removed(&removed);
        // Strings of removed series no reader holds any more are freed now; a series a
        // reader still holds frees its own when the reader drops it.
        self.symbols.collect();
        self.min_time.store(mint, Ordering::Release);
        self.max_time.store(maxt, Ordering::Release);
        let n = removed.len();
        self.metrics.head_series_removed.inc_by(n as u64);
        self.metrics.head_series.set(idx.len() as i64);
        n
    }
}

/// The head's series in label order for a block cut; gives the order back to the head
/// when dropped, for the next cut.
pub(crate) struct ForBlock<'h> {
    head: &'h Head,
    series: sorted::Sorted,
    lent: bool,
}

impl ForBlock<'_> {
    pub fn iter(&self) -> impl Iterator<Item = &Arc<MemSeries>> {
        self.series.iter().map(|(_, s)| s)
    }

    /// Calls `f` with each series in order, prefetching those ahead (see
    /// [`prefetch_ahead`]).
    pub fn try_for_each<E>(&self, mut f: impl FnMut(&MemSeries) -> Result<(), E>) -> Result<(), E> {
        let at = |k: usize| self.series.get(k).map(|(_, s)| &**s);
        for (i, (_, s)) in self.series.iter().enumerate() {
            prefetch_ahead(at, i);
            f(s)?;
        }
        Ok(())
    }

    /// The series (the order is still given back when this is dropped).
    fn into_series(self) -> Vec<Arc<MemSeries>> {
        self.iter().cloned().collect()
    }
}

impl Drop for ForBlock<'_> {
    fn drop(&mut self) {
        if self.lent {
            let v = std::mem::take(&mut self.series);
            self.head
                .read()
                .sorted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .give_back(v);
        }
    }
}

/// In a pass over many series (a block cut, a truncation: a million series in random
/// memory order), prefetches the series' struct [`AHEAD`] places ahead and, once that has
/// arrived, the key and chunks of the series half as far ahead, so the pass waits on
/// few of their cache misses instead of each in turn (issue #26).
pub(crate) fn prefetch_ahead<'s>(at: impl Fn(usize) -> Option<&'s MemSeries>, i: usize) {
    if let Some(s) = at(i + AHEAD) {
        prefetch_value(s);
    }
    if let Some(s) = at(i + AHEAD / 2) {
        s.prefetch_parts();
    }
}

/// Series locks a commit takes ahead of its appends, [`WINDOW`] series ahead, and the
/// prefetches they make possible: in request order the series are in random memory
/// order, and their lines are never in cache when a sample arrives.
///
/// Per series `i` of the pass ([`LockWindow::advance`]): the series' struct is fetched
/// [`AHEAD`] places ahead; [`WINDOW`] places ahead the series is locked (when no one
/// else holds it) and its open chunk's first and last lines, or a histogram appender's
/// struct, are fetched; a histogram series' vectors, whose addresses that step brought
/// in, a quarter of [`AHEAD`] ahead (issue #20). The pass waits on few misses, and what
/// it prefetched is still in the cache when it gets there (a request's 2,000 series'
/// lines do not all fit in L2).
///
/// The lock taken ahead is the one the append then uses. Before, each prefetch step
/// took and released the lock once more to read the addresses safely: two or three
/// lock/unlock pairs per series, each a pair of atomic read-modify-writes (issue #26).
///
/// Never waits while it holds a lock: a series the window could not lock is locked at
/// its turn, by [`LockWindow::lock`], which first releases every lock the window holds.
/// So the window adds no lock-order cycle with any other holder of series locks.
pub(crate) struct LockWindow<'s> {
    ring: [Option<MutexGuard<'s, SeriesData>>; WINDOW],
}

/// How far ahead [`LockWindow`] locks.
const WINDOW: usize = AHEAD / 2;

impl<'s> LockWindow<'s> {
    pub(crate) fn new() -> Self {
        LockWindow {
            ring: std::array::from_fn(|_| None),
        }
    }

    /// The step for the pass's series `i` (`at(k)`: the `k`th series, `is_hist(k)`:
    /// whether its samples are histograms). Returns series `i`'s lock when the window
    /// holds it.
    pub(crate) fn advance(
        &mut self,
        at: impl Fn(usize) -> Option<&'s MemSeries>,
        is_hist: impl Fn(usize) -> bool,
        i: usize,
    ) -> Option<MutexGuard<'s, SeriesData>> {
        // Series `i`'s slot is series `i + WINDOW`'s next.
        let mine = self.ring[i % WINDOW].take();
        if let Some(s) = at(i + AHEAD) {
            prefetch_arc_inner(s);
        }
        if let Some(g) = at(i + WINDOW).and_then(MemSeries::try_lock) {
            g.prefetch_for_append();
            self.ring[i % WINDOW] = Some(g);
        }
        if is_hist(i + AHEAD / 4)
            && let Some(g) = &self.ring[(i + AHEAD / 4) % WINDOW]
        {
            g.prefetch_histogram_state();
        }
        mine
    }

    /// Locks `s`, whose lock the window does not hold, waiting if another thread holds
    /// it: first without waiting, then after releasing every lock the window holds.
    pub(crate) fn lock(&mut self, s: &'s MemSeries) -> MutexGuard<'s, SeriesData> {
        if let Some(g) = s.try_lock() {
            return g;
        }
        self.ring.iter_mut().for_each(|g| *g = None);
        s.lock()
    }
}

/// For a commit's pass: prefetches the incoming histograms of the series [`AHEAD`]` / 2`
/// places ahead (their boxes) and [`AHEAD`]` / 4` ahead (their vectors, whose addresses
/// the first step fetched). A request's decoded histograms no longer fit the cache by
/// the time the pass reaches them, the series' own state having passed through it.
pub(crate) fn prefetch_incoming_ahead<'h>(
    hists_of: impl Fn(usize) -> Option<&'h [storeapi::histogram::HistogramSample]>,
    i: usize,
) {
    for x in hists_of(i + AHEAD / 2).unwrap_or_default() {
        prefetch_histogram_box(&x.h);
    }
    for x in hists_of(i + AHEAD / 4).unwrap_or_default() {
        prefetch_histogram_vectors(&x.h);
    }
}

/// The first step of prefetching a histogram: its box.
#[inline(always)]
fn prefetch_histogram_box(h: &HistogramValue) {
    match h {
        HistogramValue::Int(h) => prefetch_value(&**h),
        HistogramValue::Float(h) => prefetch_value(&**h),
    }
}

/// The second step of prefetching a histogram: its spans and buckets (the box must be
/// in the cache already, or this waits for it).
#[inline(always)]
fn prefetch_histogram_vectors(h: &HistogramValue) {
    match h {
        HistogramValue::Int(h) => prefetch_regions(int_vectors(h)),
        HistogramValue::Float(h) => prefetch_regions(float_vectors(h)),
    }
}

/// A histogram's spans and buckets, as regions for [`prefetch_regions`].
fn int_vectors(h: &Histogram) -> [(*const u8, usize); 4] {
    [
        region(&h.positive_spans),
        region(&h.positive_buckets),
        region(&h.negative_spans),
        region(&h.negative_buckets),
    ]
}

/// [`int_vectors`] of a float histogram.
fn float_vectors(h: &FloatHistogram) -> [(*const u8, usize); 4] {
    [
        region(&h.positive_spans),
        region(&h.positive_buckets),
        region(&h.negative_spans),
        region(&h.negative_buckets),
    ]
}

/// Prefetches every line of each `(address, length)` region.
#[inline(always)]
fn prefetch_regions<const N: usize>(regions: [(*const u8, usize); N]) {
    for (p, len) in regions {
        if len > 0 {
            prefetch_bytes(p, len);
        }
    }
}

/// A slice as a region for [`prefetch_regions`].
fn region<T>(v: &[T]) -> (*const u8, usize) {
    (v.as_ptr().cast(), std::mem::size_of_val(v))
}

/// Prefetches every line of the allocation a series lives in, its reference counts
/// (two words before it, which clones write) included.
#[inline(always)]
fn prefetch_arc_inner(s: &MemSeries) {
    let p: *const u8 = (s as *const MemSeries).cast();
    prefetch_bytes(
        p.wrapping_sub(ARC_COUNTS),
        ARC_COUNTS + std::mem::size_of::<MemSeries>(),
    );
}

/// Bytes of an `Arc`'s reference counts, before the value.
const ARC_COUNTS: usize = 2 * std::mem::size_of::<usize>();

/// Something holding a head series (or nothing), for [`SeriesHandles`].
pub(crate) trait SeriesHandle {
    fn series(&self) -> Option<&MemSeries>;
}

impl SeriesHandle for Arc<MemSeries> {
    fn series(&self) -> Option<&MemSeries> {
        Some(self)
    }
}

/// A batch's handle on a series it resolved: borrowed from the batch's own list of
/// series found through the wire-key cache, or owned (looked up in the head's index, or
/// created). A borrowed handle takes no reference count: the batch holds one already,
/// and taking and giving back another was two locked instructions per sample, each
/// waiting for the stores before it (issue #26).
pub(crate) type Found<'c> = Cow<'c, Arc<MemSeries>>;

/// Only owned handles are given back when the batch's handles are dropped.
impl SeriesHandle for Option<Found<'_>> {
    fn series(&self) -> Option<&MemSeries> {
        match self {
            Some(Cow::Owned(s)) => Some(s),
            Some(Cow::Borrowed(_)) | None => None,
        }
    }
}

/// A batch's series handles, whose reference counts are all prefetched before they are
/// dropped. Dropping an `Arc` is a locked decrement, which waits for its cache line; a
/// commit's handles, dropped one after another once the commit had moved on from their
/// series, were a cache miss each with nothing overlapping them (one vector's drop was
/// 1.3% of the receiver's CPU at 50k series, issue #26). Prefetched first, the misses
/// overlap and the decrements find their lines in the cache.
#[derive(Debug)]
pub(crate) struct SeriesHandles<T: SeriesHandle>(pub(crate) Vec<T>);

impl<T: SeriesHandle> Drop for SeriesHandles<T> {
    fn drop(&mut self) {
        for s in self.0.iter().filter_map(SeriesHandle::series) {
            prefetch(
                (s as *const MemSeries)
                    .cast::<u8>()
                    .wrapping_sub(ARC_COUNTS),
            );
        }
        // The vector and its handles are dropped after this.
    }
}

impl<T: SeriesHandle> std::ops::Deref for SeriesHandles<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.0
    }
}

impl<T: SeriesHandle> std::ops::DerefMut for SeriesHandles<T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.0
    }
}

/// See [`prefetch_ahead`]: far enough for a miss to resolve, near enough for the lines
/// to still be in cache.
const AHEAD: usize = 16;

pub(crate) use storeapi::prefetch::{prefetch, prefetch_bytes, prefetch_value};

#[cfg(test)]
mod tests {
    use super::*;

    /// Handles dropped through `SeriesHandles` (with gaps, borrowed and owned) give back
    /// every reference they held, and only those.
    #[test]
    fn series_handles_release_what_they_hold() {
        let all: Vec<Arc<MemSeries>> = (0..40).map(MemSeries::bare).collect();
        let some: SeriesHandles<Option<Found<'_>>> = SeriesHandles(
            all.iter()
                .enumerate()
                .map(|(i, s)| match i % 3 {
                    0 => None,
                    1 => Some(Cow::Owned(s.clone())),
                    _ => Some(Cow::Borrowed(s)),
                })
                .collect(),
        );
        let mut each = SeriesHandles(all.iter().chain(&all[..5]).cloned().collect());
        each.push(all[7].clone());
        // Held by `all`, by `some` when owned (1 modulo 3), and once or twice by `each`.
        assert_eq!(Arc::strong_count(&all[0]), 3);
        assert_eq!(Arc::strong_count(&all[1]), 4);
        assert_eq!(Arc::strong_count(&all[2]), 3);
        assert_eq!(Arc::strong_count(&all[7]), 4);
        assert_eq!(Arc::strong_count(&all[8]), 2);
        assert_eq!(Arc::strong_count(&all[9]), 2);
        drop(some);
        assert_eq!(Arc::strong_count(&all[1]), 3);
        assert_eq!(Arc::strong_count(&all[2]), 3);
        assert_eq!(Arc::strong_count(&all[7]), 3);
        assert_eq!(Arc::strong_count(&all[8]), 2);
        drop(each);
        assert!(all.iter().all(|s| Arc::strong_count(s) == 1));
    }

    /// A pass through a lock window gets every series' lock once at its turn: a series
    /// named again within the window (its lock held ahead for the earlier turn) is
    /// locked at its own turn, and appends land on the right series.
    #[test]
    fn lock_window_gives_each_turn_its_series() {
        let all: Vec<Arc<MemSeries>> = (0..40).map(MemSeries::bare).collect();
        // Repeats nearer (every tenth turn repeats the third before it) and farther
        // (40 apart) than the window.
        let mut order: Vec<usize> = Vec::new();
        for i in 0..60 {
            order.push(if i % 10 == 5 {
                order[i - 3]
            } else {
                (i * 7) % 40
            });
        }
        let pass: Vec<Option<&MemSeries>> = order.iter().map(|&k| Some(&*all[k])).collect();
        let mut window = LockWindow::new();
        let mut from_window = 0;
        for (i, s) in pass.iter().enumerate() {
            let s = s.unwrap();
            let held = window.advance(|k| pass.get(k).copied().flatten(), |_| false, i);
            from_window += held.is_some() as usize;
            let mut d = held.unwrap_or_else(|| window.lock(s));
            assert_eq!(
                d.append(i as i64, s.sref as f64, i64::MIN, 1 << 40),
                SampleResult::Appended
            );
        }
        drop(window);
        for s in &all {
            let want: Vec<(i64, f64)> = order
                .iter()
                .enumerate()
                .filter(|&(_, &k)| k as u64 == s.sref)
                .map(|(i, _)| (i as i64, s.sref as f64))
                .collect();
            let got: Vec<(i64, f64)> = s
                .chunks(i64::MIN, i64::MAX)
                .iter()
                .flat_map(|c| decode_all(&c.data).unwrap())
                .collect();
            assert_eq!(got, want, "series {}", s.sref);
            assert!(s.try_lock().is_some(), "series {} left locked", s.sref);
        }
        // Most turns found their lock taken ahead (only the first few and repeats
        // within the window did not).
        assert!(
            from_window > 30,
            "{from_window} of 60 turns from the window"
        );
    }

    /// A series another thread holds is waited for with no other lock held: that
    /// thread can take a series the window had locked ahead, so no cycle can form.
    #[test]
    fn lock_window_waits_holding_nothing() {
        let all: Vec<Arc<MemSeries>> = (0..20).map(MemSeries::bare).collect();
        let pass: Vec<Option<&MemSeries>> = all.iter().map(|s| Some(&**s)).collect();
        let (busy, later) = (10usize, 13usize);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|sc| {
            let other = sc.spawn(|| {
                let held = all[busy].lock();
                tx.send(()).unwrap();
                // The pass is waiting for `busy` by then, with `later` locked ahead
                // before it began to wait.
                std::thread::sleep(std::time::Duration::from_millis(200));
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                let mut got = false;
                while !got && std::time::Instant::now() < deadline {
                    got = all[later].try_lock().is_some();
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                drop(held);
                got
            });
            rx.recv().unwrap();
            let mut window = LockWindow::new();
            for (i, s) in pass.iter().enumerate() {
                let s = s.unwrap();
                let g = window.advance(|k| pass.get(k).copied().flatten(), |_| false, i);
                let mut d = g.unwrap_or_else(|| window.lock(s));
                d.append(1, 1.0, i64::MIN, 1 << 40);
            }
            assert!(
                other.join().unwrap(),
                "a series locked ahead stayed locked while waiting"
            );
        });
        assert!(all.iter().all(|s| s.chunks(i64::MIN, i64::MAX).len() == 1));
    }

    /// The head's per-series struct is a million times its size at a million series:
    /// growing it is a decision, not an accident (issue #26; `tests/head_memory.rs`
    /// measures the whole series).
    #[test]
    fn series_struct_stays_small() {
        // 184: the symbol table's pointer (8 bytes) buys ~150 bytes of label text.
        assert!(std::mem::size_of::<MemSeries>() <= 184);
        assert!(std::mem::size_of::<Option<OpenChunk>>() <= 72);
    }
    use crate::chunk::xor::decode_all;

    #[test]
    fn chunks_cut_at_120_and_block_boundaries() {
        let mut d = SeriesData::default();
        let range = 7_200_000;
        // 300 samples at 15s starting 1h before a boundary: cut at 120, 240 and at 2h.
        let start = range - 3_600_000;
        for i in 0..300 {
            assert_eq!(
                d.append(start + i * 15_000, i as f64, i64::MIN, range),
                SampleResult::Appended
            );
        }
        let mut chunks = vec![];
        d.chunks(i64::MIN, i64::MAX, &mut chunks);
        let sizes: Vec<usize> = chunks.iter().map(|c| c.num_samples()).collect();
        assert_eq!(sizes, vec![120, 120, 60]);
        // Crossing t=range: 240 samples → 3600s/15 = 240 before the boundary.
        assert_eq!(chunks[1].max_time, range - 15_000);
        assert_eq!(chunks[2].min_time, range);
        let all: Vec<(i64, f64)> = chunks
            .iter()
            .flat_map(|c| decode_all(&c.data).unwrap())
            .collect();
        assert_eq!(all.len(), 300);
    }

    #[test]
    fn rejections() {
        let mut d = SeriesData::default();
        assert_eq!(d.append(100, 1.0, 50, 1000), SampleResult::Appended);
        assert_eq!(
            d.append(40, 1.0, 50, 1000),
            SampleResult::Rejected(RejectReason::OutOfBounds)
        );
        assert_eq!(
            d.append(90, 1.0, 50, 1000),
            SampleResult::Rejected(RejectReason::OutOfOrder)
        );
        assert_eq!(d.append(100, 1.0, 50, 1000), SampleResult::DuplicateIgnored);
        assert_eq!(
            d.append(100, 2.0, 50, 1000),
            SampleResult::Rejected(RejectReason::DuplicateTimestamp)
        );
        assert_eq!(d.append(101, 2.0, 50, 1000), SampleResult::Appended);
    }

    #[test]
    fn series_key_parses_back_into_labels() {
        let l = Labels::from_pairs([("__name__", "up"), ("job", "a b"), ("zz", "ü\u{0}y")]);
        let l = l.unwrap();
        let mut buf = Vec::new();
        labels_key(&l, &mut buf);
        assert_eq!(labels_from_key(&buf), Some(l));
        assert_eq!(labels_from_key(b""), None);
        assert_eq!(labels_from_key(b"a\xffb"), None);
        assert_eq!(labels_from_key(b"a\xff"), None);
        assert_eq!(labels_from_key(b"a\xffb\xffc\xff"), None);
        assert_eq!(labels_from_key(&[0xc3, 0xff, b'x', 0xff]), None);
    }

    #[test]
    fn labels_record_and_borrowed_chunks_equal_their_copying_forms() {
        let h = Head::new(7_200_000, Metrics::default());
        let mut buf = Vec::new();
        let l =
            Labels::from_pairs([("__name__", "up"), ("job", "a b"), ("zz", "ü\u{0}y")]).unwrap();
        let s = h.replay_series(0, &l, &mut buf);
        {
            let mut d = s.lock();
            for i in 0..300 {
                assert_eq!(
                    h.append_locked(&mut d, i * 15_000, i as f64, i64::MIN),
                    SampleResult::Appended
                );
            }
        }
        let (mut direct, mut via) = (Vec::new(), Vec::new());
        s.put_labels_record(&mut direct);
        crate::wal::record::put_labels(&mut via, &l);
        assert_eq!(direct, via);
        let copied = s.chunks(i64::MIN, i64::MAX);
        let mut borrowed = Vec::new();
        s.for_each_chunk(|c| borrowed.push((c.min_time, c.max_time, c.encoding, c.data.to_vec())));
        assert_eq!(copied.len(), 3, "two closed chunks and the open one");
        let want: Vec<_> = copied
            .iter()
            .map(|c| (c.min_time, c.max_time, c.encoding, c.data.to_vec()))
            .collect();
        assert_eq!(borrowed, want);
    }

    #[test]
    fn truncation_frees_the_strings_of_removed_series_once_unread() {
        let h = Head::new(1000, Metrics::default());
        let mut buf = Vec::new();
        let a = Labels::from_pairs([("__name__", "up"), ("job", "a")]).unwrap();
        let b = Labels::from_pairs([("__name__", "up"), ("job", "b")]).unwrap();
        for (l, t) in [(&a, 10), (&b, 5000)] {
            let s = h.replay_series(0, l, &mut buf);
            let mut d = s.lock();
            assert_eq!(
                h.append_locked(&mut d, t, 1.0, i64::MIN),
                SampleResult::Appended
            );
        }
        assert_eq!(h.num_symbols(), 5);
        // A reader holds `a` across the truncation that removes it.
        let held = h.find_series(&a, &mut buf).unwrap();
        assert_eq!(h.truncate(1000), 1);
        assert_eq!(h.num_symbols(), 5, "a held series keeps its strings");
        assert_eq!(held.labels(), a);
        drop(held);
        assert_eq!(h.num_symbols(), 4, "\"a\" freed with the last reader");
        // A new series reuses the freed id and reads back its own labels.
        let c = Labels::from_pairs([("__name__", "up"), ("job", "c")]).unwrap();
        assert_eq!(h.replay_series(0, &c, &mut buf).labels(), c);
        assert_eq!(h.find_series(&b, &mut buf).unwrap().labels(), b);
        assert!(h.find_series(&a, &mut buf).is_none());
    }

    #[test]
    fn truncation_changes_the_epoch() {
        let h = Head::new(1000, Metrics::default());
        let e = h.epoch();
        h.truncate(0);
        assert_ne!(h.epoch(), e);
    }

    #[test]
    fn series_sort_in_label_set_order() {
        let sets = [
            vec![("a", "1")],
            vec![("a", "1"), ("b", "2")],
            vec![("a", "10")],
            vec![("a", "1"), ("ab", "0")],
            vec![("ab", "0")],
            vec![("a", "2")],
            vec![("__name__", "x"), ("a", "1")],
            vec![("a", "1\u{e9}")],
            vec![("a", "1\u{0}")],
        ];
        let h = Head::new(1000, Metrics::default());
        let mut buf = Vec::new();
        // Interned in reverse order, so ids do not follow string order.
        let mut want: Vec<Labels> = sets
            .iter()
            .rev()
            .map(|p| Labels::from_pairs(p.iter().copied()).unwrap())
            .collect();
        let mut series: Vec<_> = want
            .iter()
            .map(|l| h.replay_series(0, l, &mut buf))
            .collect();
        want.sort();
        sort_series(&h.symbols, &mut series);
        let got: Vec<Labels> = series.iter().map(|s| s.labels()).collect();
        assert_eq!(got, want);
    }

    proptest::proptest! {
        /// Label sets sharing long prefixes, names that are prefixes of others: the
        /// head's sort orders them as labels do.
        #[test]
        fn sort_orders_as_labels(sets in proptest::collection::vec(
            proptest::collection::btree_map(
                proptest::sample::select(vec!["a", "ab", "a_", "b", "code", "code_class"]),
                "[a-c\\-/]{0,12}",
                1..4,
            ),
            1..60,
        )) {
            let h = Head::new(1000, Metrics::default());
            let mut buf = Vec::new();
            let mut series = Vec::new();
            let mut want = Vec::new();
            for set in sets {
                let mut pairs = vec![("__name__".to_string(), "metric_with_a_long_name".to_string())];
                pairs.extend(set.into_iter().map(|(k, v)| (k.to_string(), v)));
                let l = Labels::from_pairs(pairs).unwrap();
                if want.contains(&l) {
                    continue;
                }
                series.push(h.replay_series(0, &l, &mut buf));
                want.push(l);
            }
            want.sort();
            sort_series(&h.symbols, &mut series);
            let got: Vec<Labels> = series.iter().map(|s| s.labels()).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn split_at_leaves_no_chunk_across_the_boundary() {
        let h = Head::new(1000, Metrics::default());
        let mut buf = Vec::new();
        let l = Labels::from_pairs([("n", "x")]).unwrap();
        let s = h.replay_series(0, &l, &mut buf);
        {
            let mut d = s.lock();
            // A closed chunk 0..=199 (cut at the 1000 ms chunk range: 0..999 holds
            // 0,5,...,995), then an open one from 1000 on.
            for t in (0..1300).step_by(5) {
                assert_eq!(
                    h.append_locked(&mut d, t, t as f64, i64::MIN),
                    SampleResult::Appended
                );
            }
            h.note_times(0, 1295);
        }
        h.split_chunks_at(500).unwrap();
        h.split_chunks_at(1100).unwrap();
        let chunks = s.chunks(i64::MIN, i64::MAX);
        for c in &chunks {
            for b in [500, 1100] {
                assert!(
                    c.max_time < b || c.min_time >= b,
                    "chunk [{}, {}] straddles {b}",
                    c.min_time,
                    c.max_time
                );
            }
        }
        let all: Vec<(i64, f64)> = chunks
            .iter()
            .flat_map(|c| crate::chunk::xor::decode_all(&c.data).unwrap())
            .collect();
        let want: Vec<(i64, f64)> = (0..1300).step_by(5).map(|t| (t, t as f64)).collect();
        assert_eq!(all, want);
        // Appends go on after the split, into the open chunk that starts at 1100.
        let mut d = s.lock();
        assert_eq!(
            h.append_locked(&mut d, 1300, 1.0, i64::MIN),
            SampleResult::Appended
        );
        assert_eq!(d.open.as_ref().map(|o| o.min_t()), Some(1100));
    }

    /// The label order kept from cut to cut equals a fresh sort of the head's series
    /// while series are created and dropped between cuts, and when series are dropped
    /// while a cut holds the order (which then is rebuilt).
    #[test]
    fn kept_block_order_equals_a_fresh_sort_as_series_come_and_go() {
        let h = Head::new(100, Metrics::default());
        let mut buf = Vec::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            rng = rng
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (rng >> 33) % n
        };
        let append = |s: &Arc<MemSeries>, t: i64| {
            let mut d = s.lock();
            h.append_locked(&mut d, t, 1.0, i64::MIN);
            drop(d);
            h.note_times(t, t);
        };
        let fresh = |h: &Head| {
            let mut v: Vec<Labels> = h.all_series().iter().map(|s| s.labels()).collect();
            v.sort();
            v
        };
        let ordered = |b: &ForBlock<'_>| b.iter().map(|s| s.labels()).collect::<Vec<_>>();
        let mut merged_cuts = 0;
        for round in 0..40i64 {
            let t = round * 100;
            for _ in 0..next(30) {
                let l = Labels::from_pairs([
                    ("__name__", format!("m{}", next(8))),
                    ("i", format!("{}", next(200))),
                ])
                .unwrap();
                append(&h.replay_series(0, &l, &mut buf), t);
            }
            // About half of the series get a sample: the others leave at the next cut.
            for s in h.all_series() {
                if next(2) == 0 {
                    append(&s, t);
                }
            }
            let b = h.sorted_for_block(i64::MIN, i64::MAX);
            merged_cuts += usize::from(b.lent && round > 0);
            assert_eq!(ordered(&b), fresh(&h), "round {round}");
            if round % 7 == 3 {
                // Series come and go while the order is lent.
                let l =
                    Labels::from_pairs([("__name__", "late"), ("r", &round.to_string())]).unwrap();
                append(&h.replay_series(0, &l, &mut buf), t);
                h.truncate(t);
                drop(b);
            } else {
                drop(b);
                h.truncate(t);
            }
        }
        assert!(merged_cuts > 20, "the kept order was used: {merged_cuts}");
    }

    #[test]
    fn iter_sorted_streams_series_in_label_order() {
        let h = Head::new(1000, Metrics::default());
        let mut buf = Vec::new();
        for name in ["b", "a", "ab", "a_"] {
            let l = Labels::from_pairs([("n", name), ("x", "1")]).unwrap();
            let s = h.replay_series(0, &l, &mut buf);
            let mut d = s.lock();
            assert_eq!(
                h.append_locked(&mut d, 10, 1.0, i64::MIN),
                SampleResult::Appended
            );
            drop(d);
            h.note_times(10, 10);
        }
        let names: Vec<String> = h
            .iter_sorted(0, 100)
            .map(|(l, _)| l.get("n").unwrap().to_string())
            .collect();
        assert_eq!(names, vec!["a", "a_", "ab", "b"]);
        assert_eq!(h.iter_sorted(200, 300).count(), 0);
    }

    #[test]
    fn lent_block_series_equal_the_copied_ones() {
        let h = Head::new(1000, Metrics::default());
        let mut buf = Vec::new();
        // Series with chunks in and out of the range, one with none in it.
        for (k, name) in ["b", "a", "ab", "a_", "late"].into_iter().enumerate() {
            let l = Labels::from_pairs([("n", name), ("x", "1"), ("zz", "ü")]).unwrap();
            let s = h.replay_series(0, &l, &mut buf);
            let mut d = s.lock();
            let from = if name == "late" { 5000 } else { k as i64 * 10 };
            for t in (from..from + 2500).step_by(100) {
                assert_eq!(
                    h.append_locked(&mut d, t, t as f64, i64::MIN),
                    SampleResult::Appended
                );
            }
            drop(d);
            h.note_times(from, from + 2500);
        }
        for (mint, maxt) in [(0, 999), (1000, 1999), (0, i64::MAX), (9000, 9999)] {
            let copied: Vec<(Vec<(String, String)>, Vec<(i64, i64, Vec<u8>)>)> = h
                .iter_sorted(mint, maxt)
                .map(|(l, cs)| {
                    (
                        l.iter()
                            .map(|x| (x.name.to_string(), x.value.to_string()))
                            .collect(),
                        cs.iter()
                            .map(|c| (c.min_time, c.max_time, c.data.to_vec()))
                            .collect(),
                    )
                })
                .collect();
            let mut scratch = BlockScratch::default();
            let lent: Vec<_> = h
                .sorted_for_block(mint, maxt)
                .iter()
                .map(|s| {
                    s.lend_for_block(mint, maxt, &mut scratch, |ids, cs| {
                        let text = h.symbol_strings(ids);
                        (
                            text.chunks_exact(2)
                                .map(|p| (p[0].clone(), p[1].clone()))
                                .collect(),
                            cs.iter()
                                .map(|c| (c.min_time, c.max_time, c.data.to_vec()))
                                .collect(),
                        )
                    })
                })
                // The writer skips a series lent without chunks in the range.
                .filter(
                    |(_, cs): &(Vec<(String, String)>, Vec<(i64, i64, Vec<u8>)>)| !cs.is_empty(),
                )
                .collect();
            assert_eq!(lent, copied, "[{mint}, {maxt}]");
            if mint == 0 && maxt == 999 {
                assert_eq!(lent.len(), 4, "the late series has nothing there");
            }
        }
    }

    #[test]
    fn large_select_is_sorted_and_complete() {
        let h = Head::new(1000, Metrics::default());
        let mut buf = Vec::new();
        let n = PARALLEL_SELECT_MIN + 1001;
        // Created in an order unrelated to label order; every 7th has no sample in range.
        for i in 0..n {
            let k = (i * 7919) % n;
            let l = Labels::from_pairs([
                ("__name__", "m".to_string()),
                ("i", format!("{k}")),
                ("j", format!("{}", k % 13)),
            ])
            .unwrap();
            let s = h.replay_series(0, &l, &mut buf);
            let mut d = s.lock();
            let t = if k.is_multiple_of(7) { 500 } else { 10 };
            assert_eq!(
                h.append_locked(&mut d, t, 1.0, i64::MIN),
                SampleResult::Appended
            );
            drop(d);
            h.note_times(t, t);
        }
        let m = [Matcher::new(storeapi::MatchOp::Equal, "__name__", "m").unwrap()];
        let got = h.select(&m, 0, 100);
        assert_eq!(got.len(), (0..n).filter(|k| !k.is_multiple_of(7)).count());
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(got.iter().all(|(_, c)| c.len() == 1));
    }
}
