//! The chunk a series appends to, in whichever of Prometheus's three sample encodings
//! its newest sample has, and the histogram half of appending.
//!
//! Float samples go to XOR chunks cut at [`super::MAX_SAMPLES_PER_CHUNK`] samples or at
//! the chunk range's end. Histogram samples go to HISTOGRAM or FLOAT_HISTOGRAM chunks
//! cut exactly as Prometheus 3.5.3's head cuts them (`histogramsAppendPreprocessor` and
//! `appendHistogram`): by size and predicted end time ([`HistogramCutter`]), when the
//! sample kind changes, and when the appender asks for a new chunk (a counter reset or a
//! layout it cannot recode to). A new chunk's counter-reset header is computed against
//! the previous histogram, as Prometheus passes the previous appender: so the chunks
//! and their headers are Prometheus's, and readers (ours, Prometheus's, Thanos's) see
//! the same resets.

use bytes::Bytes;
use storeapi::histogram::{FloatHistogram, Histogram};

use crate::chunk::histogram_cut::{self, HistogramCutter};
use crate::chunk::{
    Appended, Chunk, ChunkError, Encoding, FloatHistogramAppender, FloatHistogramIterator,
    HistogramAppender, HistogramIterator, XorChunk,
};
use chunkenc::histogram_layout::HISTOGRAM_INITIAL_CAPACITY;

/// An open XOR chunk.
#[derive(Debug)]
pub(crate) struct XorOpen {
    /// Exclusive end: the next multiple of the chunk range.
    pub end: i64,
    pub chunk: XorChunk,
    pub min_t: i64,
}

/// An open histogram chunk and the series' cutting state for it.
#[derive(Debug)]
pub(crate) struct HistOpen<A> {
    pub app: A,
    pub min_t: i64,
    pub cutter: HistogramCutter,
}

/// The open chunk of a series.
#[derive(Debug)]
pub(crate) enum OpenChunk {
    Xor(XorOpen),
    Hist(Box<HistOpen<HistogramAppender>>),
    FloatHist(Box<HistOpen<FloatHistogramAppender>>),
}

impl OpenChunk {
    pub fn encoding(&self) -> Encoding {
        match self {
            OpenChunk::Xor(_) => Encoding::Xor,
            OpenChunk::Hist(_) => Encoding::Histogram,
            OpenChunk::FloatHist(_) => Encoding::FloatHistogram,
        }
    }

    pub fn num_samples(&self) -> u16 {
        match self {
            OpenChunk::Xor(o) => o.chunk.num_samples(),
            OpenChunk::Hist(o) => o.app.num_samples(),
            OpenChunk::FloatHist(o) => o.app.num_samples(),
        }
    }

    pub fn min_t(&self) -> i64 {
        match self {
            OpenChunk::Xor(o) => o.min_t,
            OpenChunk::Hist(o) => o.min_t,
            OpenChunk::FloatHist(o) => o.min_t,
        }
    }

    /// Timestamp of the newest sample (meaningless when empty).
    pub fn last_t(&self) -> i64 {
        match self {
            OpenChunk::Xor(o) => o.chunk.last_t(),
            OpenChunk::Hist(o) => o.app.last_t(),
            OpenChunk::FloatHist(o) => o.app.last_t(),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            OpenChunk::Xor(o) => o.chunk.bytes(),
            OpenChunk::Hist(o) => o.app.bytes(),
            OpenChunk::FloatHist(o) => o.app.bytes(),
        }
    }

    /// Closes the chunk into a series' closed chunks (nothing when it holds no
    /// sample): its bytes copied once, into the list.
    pub fn close_into(self, closed: &mut super::ClosedChunks) {
        push_closed(
            closed,
            self.num_samples(),
            crate::chunk::ChunkView {
                min_time: self.min_t(),
                max_time: self.last_t(),
                encoding: self.encoding(),
                data: self.bytes(),
            },
        );
    }

    /// The chunk as a closed one (`None` when it holds no sample).
    pub fn close(self) -> Option<Chunk> {
        if self.num_samples() == 0 {
            return None;
        }
        let (min_time, max_time, encoding) = (self.min_t(), self.last_t(), self.encoding());
        let mut bytes = match self {
            OpenChunk::Xor(o) => o.chunk.into_bytes(),
            OpenChunk::Hist(o) => o.app.into_bytes(),
            OpenChunk::FloatHist(o) => o.app.into_bytes(),
        };
        bytes.shrink_to_fit();
        Some(Chunk {
            min_time,
            max_time,
            encoding,
            data: Bytes::from(bytes),
        })
    }
}

/// The newest sample's value: what an append at the same timestamp is compared with, and
/// (for histograms) what a new chunk's counter-reset header is computed against.
#[derive(Debug, Default)]
pub(crate) enum LastValue {
    #[default]
    None,
    /// The float's bits.
    Float(u64),
    Hist(Box<Histogram>),
    FloatHist(Box<FloatHistogram>),
    /// The open histogram chunk's last sample, which its appender holds as it was given
    /// ([`HistogramAppender::last_is_as_given`]): no copy is kept. The head turns this
    /// into a copy ([`SeriesData::keep_last`](super::SeriesData)) before the open chunk
    /// goes.
    InOpenChunk,
}

/// What the head needs of either histogram appender, so one cutting routine serves both.
pub(crate) trait HistKind: Sized + std::fmt::Debug {
    type H: Clone + std::fmt::Debug;
    /// The encoding of this kind's chunks.
    const ENCODING: Encoding;
    /// An empty appender whose buffer starts with `bytes` reserved.
    fn new_appender(bytes: usize) -> Self;
    /// Starts the next chunk in this appender's allocations, `h` at `t` its first
    /// sample, after handing the current chunk's bytes to `take`
    /// ([`HistogramAppender::restart`]).
    fn restart(
        &mut self,
        t: i64,
        h: &Self::H,
        capacity: usize,
        take: impl FnOnce(&[u8]),
    ) -> Result<(), ChunkError>;
    fn append(
        &mut self,
        prev: Option<&Self>,
        t: i64,
        h: &Self::H,
    ) -> Result<Appended<Self>, ChunkError>;
    fn num_samples(&self) -> u16;
    fn num_bytes(&self) -> usize;
    fn last_t(&self) -> i64;
    fn open_mut(o: &mut OpenChunk) -> Option<&mut HistOpen<Self>>;
    fn open_ref(o: &OpenChunk) -> Option<&HistOpen<Self>>;
    fn wrap(o: HistOpen<Self>) -> OpenChunk;
    fn last_ref(l: &LastValue) -> Option<&Self::H>;
    fn last_mut(l: &mut LastValue) -> Option<&mut Self::H>;
    fn wrap_last(h: Self::H) -> LastValue;
    /// Records `h` as the series' last value, reusing the allocation when the last
    /// value is of this kind already.
    fn last_is_as_given(&self) -> bool;
    /// Records `h`, just appended to `open`, as the series' last value: nothing to copy
    /// when the appender holds it as given.
    fn set_last(l: &mut LastValue, open: &Option<OpenChunk>, h: &Self::H) {
        if open
            .as_ref()
            .and_then(Self::open_ref)
            .is_some_and(|o| o.app.last_is_as_given())
        {
            *l = LastValue::InOpenChunk;
            return;
        }
        match Self::last_mut(l) {
            Some(x) => x.clone_from(h),
            None => *l = Self::wrap_last(h.clone()),
        }
    }
    fn decode(data: &[u8]) -> Result<Vec<(i64, Self::H)>, ChunkError>;
}

impl HistKind for HistogramAppender {
    type H = Histogram;
    const ENCODING: Encoding = Encoding::Histogram;
    fn new_appender(bytes: usize) -> Self {
        HistogramAppender::with_capacity(bytes)
    }
    fn restart(
        &mut self,
        t: i64,
        h: &Histogram,
        capacity: usize,
        take: impl FnOnce(&[u8]),
    ) -> Result<(), ChunkError> {
        HistogramAppender::restart(self, t, h, capacity, take)
    }
    fn append(
        &mut self,
        prev: Option<&Self>,
        t: i64,
        h: &Histogram,
    ) -> Result<Appended<Self>, ChunkError> {
        HistogramAppender::append(self, prev, t, h)
    }
    fn last_is_as_given(&self) -> bool {
        HistogramAppender::last_is_as_given(self)
    }
    fn num_samples(&self) -> u16 {
        HistogramAppender::num_samples(self)
    }
    fn num_bytes(&self) -> usize {
        self.bytes().len()
    }
    fn last_t(&self) -> i64 {
        HistogramAppender::last_t(self)
    }
    fn open_mut(o: &mut OpenChunk) -> Option<&mut HistOpen<Self>> {
        match o {
            OpenChunk::Hist(h) => Some(h),
            _ => None,
        }
    }
    fn open_ref(o: &OpenChunk) -> Option<&HistOpen<Self>> {
        match o {
            OpenChunk::Hist(h) => Some(h),
            _ => None,
        }
    }
    fn wrap(o: HistOpen<Self>) -> OpenChunk {
        OpenChunk::Hist(Box::new(o))
    }
    fn last_ref(l: &LastValue) -> Option<&Histogram> {
        match l {
            LastValue::Hist(h) => Some(h),
            _ => None,
        }
    }
    fn last_mut(l: &mut LastValue) -> Option<&mut Histogram> {
        match l {
            LastValue::Hist(h) => Some(h),
            _ => None,
        }
    }
    fn wrap_last(h: Histogram) -> LastValue {
        LastValue::Hist(Box::new(h))
    }
    fn decode(data: &[u8]) -> Result<Vec<(i64, Histogram)>, ChunkError> {
        HistogramIterator::new(data)?.collect()
    }
}

impl HistKind for FloatHistogramAppender {
    type H = FloatHistogram;
    const ENCODING: Encoding = Encoding::FloatHistogram;
    fn new_appender(bytes: usize) -> Self {
        FloatHistogramAppender::with_capacity(bytes)
    }
    fn restart(
        &mut self,
        t: i64,
        h: &FloatHistogram,
        capacity: usize,
        take: impl FnOnce(&[u8]),
    ) -> Result<(), ChunkError> {
        FloatHistogramAppender::restart(self, t, h, capacity, take)
    }
    fn append(
        &mut self,
        prev: Option<&Self>,
        t: i64,
        h: &FloatHistogram,
    ) -> Result<Appended<Self>, ChunkError> {
        FloatHistogramAppender::append(self, prev, t, h)
    }
    fn last_is_as_given(&self) -> bool {
        FloatHistogramAppender::last_is_as_given(self)
    }
    fn num_samples(&self) -> u16 {
        FloatHistogramAppender::num_samples(self)
    }
    fn num_bytes(&self) -> usize {
        self.bytes().len()
    }
    fn last_t(&self) -> i64 {
        FloatHistogramAppender::last_t(self)
    }
    fn open_mut(o: &mut OpenChunk) -> Option<&mut HistOpen<Self>> {
        match o {
            OpenChunk::FloatHist(h) => Some(h),
            _ => None,
        }
    }
    fn open_ref(o: &OpenChunk) -> Option<&HistOpen<Self>> {
        match o {
            OpenChunk::FloatHist(h) => Some(h),
            _ => None,
        }
    }
    fn wrap(o: HistOpen<Self>) -> OpenChunk {
        OpenChunk::FloatHist(Box::new(o))
    }
    fn last_ref(l: &LastValue) -> Option<&FloatHistogram> {
        match l {
            LastValue::FloatHist(h) => Some(h),
            _ => None,
        }
    }
    fn last_mut(l: &mut LastValue) -> Option<&mut FloatHistogram> {
        match l {
            LastValue::FloatHist(h) => Some(h),
            _ => None,
        }
    }
    fn wrap_last(h: FloatHistogram) -> LastValue {
        LastValue::FloatHist(Box::new(h))
    }
    fn decode(data: &[u8]) -> Result<Vec<(i64, FloatHistogram)>, ChunkError> {
        FloatHistogramIterator::new(data)?.collect()
    }
}

/// The buffer to start a series' next histogram chunk with: the size of the chunk being
/// cut plus an eighth. Histogram chunks are cut by size (about a kilobyte, Prometheus's
/// target), so the next one takes about as much; grown from 128 bytes it was copied
/// through six reallocations, 2% of the receiver's CPU at 10k series (issue #20).
fn next_hist_capacity(prev_bytes: usize) -> usize {
    (prev_bytes + prev_bytes / 8 + 16).clamp(HISTOGRAM_INITIAL_CAPACITY, 16 * 1024)
}

/// Copies a chunk of `samples` samples into a series' closed chunks, unless it holds
/// none.
fn push_closed(closed: &mut super::ClosedChunks, samples: u16, chunk: crate::chunk::ChunkView) {
    if samples > 0 {
        closed.push(chunk);
    }
}

/// An appender whose last sample is `h` at `t`: the previous appender Prometheus still
/// holds when the series has no open chunk (it was closed at a block boundary, or the
/// series' chunks were truncated), so a new chunk's header is computed as there.
fn appender_ending_with<A: HistKind>(t: i64, h: &A::H) -> Option<A> {
    let mut a = A::new_appender(HISTOGRAM_INITIAL_CAPACITY);
    match a.append(None, t, h) {
        Ok(Appended::InPlace) => Some(a),
        _ => None,
    }
}

/// Appends histogram `h` at `t` (already checked to be newer than the series' last
/// sample `last` at `last_t`) to the series' open chunk, cutting chunks as Prometheus
/// does; a closed chunk goes to `closed`. On an error (a histogram whose buckets do not
/// match its spans) nothing changed.
pub(crate) fn append_histogram<A: HistKind>(
    open: &mut Option<OpenChunk>,
    closed: &mut super::ClosedChunks,
    last: &LastValue,
    last_t: i64,
    t: i64,
    h: &A::H,
    chunk_range: i64,
) -> Result<(), ChunkError> {
    if let Some(o) = open.as_mut().and_then(A::open_mut) {
        let view = histogram_cut::OpenChunk {
            min_time: o.min_t,
            max_time: o.app.last_t(),
            num_samples: o.app.num_samples(),
            num_bytes: o.app.num_bytes(),
        };
        // `should_cut` resets the cutter for the new chunk when it says yes: keep the
        // current state until the sample is known to fit.
        let mut cutter = o.cutter;
        if !cutter.should_cut(t, view, chunk_range) {
            let appended = o.app.append(None, t, h)?;
            o.cutter = cutter;
            match appended {
                Appended::InPlace | Appended::Recoded => {}
                Appended::NewChunk(n) => {
                    // A counter reset or a layout the chunk cannot take: Prometheus moves
                    // the cut point but keeps the computed-end-time flag.
                    o.cutter.appender_cut(t, chunk_range);
                    let cutter = o.cutter;
                    let old = std::mem::replace(
                        o,
                        HistOpen {
                            app: n,
                            min_t: t,
                            cutter,
                        },
                    );
                    A::wrap(old).close_into(closed);
                }
            }
            return Ok(());
        }
        // The sample starts the series' next chunk, in the open one's allocations (its
        // appender is the previous one Prometheus computes the header against).
        let capacity = next_hist_capacity(o.app.num_bytes());
        let (min_t, app) = (o.min_t, &mut o.app);
        // The closure sees the old chunk through `data` only; what it needs of the
        // appender (sample count, last time) is read before.
        let (n, last_t) = (app.num_samples(), app.last_t());
        app.restart(t, h, capacity, |data| {
            let chunk = crate::chunk::ChunkView {
                min_time: min_t,
                max_time: last_t,
                encoding: A::ENCODING,
                data,
            };
            push_closed(closed, n, chunk)
        })?;
        o.min_t = t;
        o.cutter = HistogramCutter::new(t, chunk_range);
        return Ok(());
    }
    // The sample starts a new chunk: the previous appender is the open chunk's when it is
    // of this kind (Prometheus's type assertion on `s.app`), or, with no open chunk, one
    // rebuilt from the last histogram of this kind.
    let capacity = open
        .as_ref()
        .and_then(A::open_ref)
        .map_or(HISTOGRAM_INITIAL_CAPACITY, |o| {
            next_hist_capacity(o.app.num_bytes())
        });
    let mut fresh = HistOpen {
        app: A::new_appender(capacity),
        min_t: t,
        cutter: HistogramCutter::new(t, chunk_range),
    };
    let rebuilt: Option<A> = match (open.is_none(), A::last_ref(last)) {
        (true, Some(p)) => appender_ending_with::<A>(last_t, p),
        _ => None,
    };
    let prev = open
        .as_ref()
        .and_then(A::open_ref)
        .map(|o| &o.app)
        .or(rebuilt.as_ref());
    match fresh.app.append(prev, t, h)? {
        Appended::InPlace | Appended::Recoded => {}
        // An empty chunk always takes its first sample.
        Appended::NewChunk(n) => fresh.app = n,
    }
    if let Some(o) = open.take() {
        o.close_into(closed);
    }
    *open = Some(A::wrap(fresh));
    Ok(())
}

/// Re-encodes time-ordered histogram samples as chunks of kind `A` (cutting where the
/// appender asks), the first one's header computed against `prev`. Used where the head
/// splits a chunk at a block boundary.
pub(crate) fn encode_histograms<A: HistKind>(
    samples: &[(i64, A::H)],
    prev: Option<&(i64, A::H)>,
) -> Result<(Vec<Chunk>, Option<HistOpen<A>>), ChunkError> {
    let mut out = Vec::new();
    let Some(&(first_t, _)) = samples.first() else {
        return Ok((out, None));
    };
    let rebuilt = prev.and_then(|(pt, ph)| appender_ending_with::<A>(*pt, ph));
    let mut cur = HistOpen {
        app: A::new_appender(HISTOGRAM_INITIAL_CAPACITY),
        min_t: first_t,
        cutter: HistogramCutter::new(first_t, i64::MAX),
    };
    let mut first = true;
    for (t, h) in samples {
        let p = if first { rebuilt.as_ref() } else { None };
        first = false;
        if let Appended::NewChunk(n) = cur.app.append(p, *t, h)? {
            let old = std::mem::replace(
                &mut cur,
                HistOpen {
                    app: n,
                    min_t: *t,
                    cutter: HistogramCutter::new(*t, i64::MAX),
                },
            );
            out.extend(A::wrap(old).close());
        }
    }
    Ok((out, Some(cur)))
}

#[cfg(test)]
mod tests {
    use super::super::{SampleResult, SeriesData};
    use crate::chunk::{CounterResetHeader, Encoding, HistogramIterator};
    use crate::metrics::RejectReason;
    use storeapi::histogram::{CounterResetHint, FloatHistogram, Histogram, HistogramValue, Span};

    const RANGE: i64 = 7_200_000;

    /// A histogram with `n` populated positive buckets (schema 0), counts growing with `k`.
    fn hist(k: u64, n: u32) -> Histogram {
        // Cumulative per bucket, with irregular increments so the chunk does not
        // compress to nothing.
        let counts: Vec<u64> = (0..n as u64)
            .map(|b| (1..=k).map(|j| 1 + (j * 31 + b * 17).pow(2) % 13).sum())
            .collect();
        let mut prev = 0i64;
        let deltas = counts
            .iter()
            .map(|&c| {
                let d = c as i64 - prev;
                prev = c as i64;
                d
            })
            .collect();
        Histogram {
            schema: 0,
            zero_threshold: 1e-128,
            count: counts.iter().sum(),
            sum: k as f64 * 1.5,
            positive_spans: vec![Span {
                offset: 0,
                length: n,
            }],
            positive_buckets: deltas,
            ..Default::default()
        }
    }

    fn int(h: Histogram) -> HistogramValue {
        HistogramValue::Int(Box::new(h))
    }

    fn chunks(d: &SeriesData) -> Vec<crate::chunk::Chunk> {
        let mut out = Vec::new();
        d.chunks(i64::MIN, i64::MAX, &mut out);
        out
    }

    fn decode(c: &crate::chunk::Chunk) -> Vec<(i64, Histogram)> {
        HistogramIterator::new(&c.data)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    #[test]
    fn histogram_chunks_are_cut_by_size_and_keep_every_sample() {
        let mut d = SeriesData::default();
        let want: Vec<(i64, Histogram)> = (1..=400u64)
            .map(|k| (k as i64 * 15_000, hist(k, 20)))
            .collect();
        for (t, h) in &want {
            assert_eq!(
                d.append_histogram(*t, &int(h.clone()), i64::MIN, RANGE),
                SampleResult::Appended
            );
        }
        let cs = chunks(&d);
        assert!(
            cs.len() > 2,
            "400 wide histograms need several chunks, got {}",
            cs.len()
        );
        let mut got = Vec::new();
        for (i, c) in cs.iter().enumerate() {
            assert_eq!(c.encoding, Encoding::Histogram);
            let s = decode(c);
            assert_eq!((c.min_time, c.max_time), (s[0].0, s.last().unwrap().0));
            if i + 1 < cs.len() {
                // Closed for size: at least 10 samples, never past twice the 1 KiB target.
                assert!(s.len() >= 10, "chunk {i} has {} samples", s.len());
                assert!(
                    c.data.len() <= 2 * 1024 + 256,
                    "chunk {i} is {} bytes",
                    c.data.len()
                );
            }
            let hdr = HistogramIterator::new(&c.data).unwrap().header();
            // The first chunk knows no predecessor; later ones were compared with it.
            let expect = if i == 0 {
                CounterResetHeader::Unknown
            } else {
                CounterResetHeader::NotCounterReset
            };
            assert_eq!(hdr, expect, "chunk {i}");
            got.extend(s);
        }
        let strip = |v: &[(i64, Histogram)]| -> Vec<(i64, u64, Vec<i64>)> {
            v.iter()
                .map(|(t, h)| (*t, h.count, h.positive_buckets.clone()))
                .collect()
        };
        assert_eq!(strip(&got), strip(&want));
    }

    #[test]
    fn a_counter_reset_starts_a_chunk_headed_counter_reset() {
        let mut d = SeriesData::default();
        for (t, k) in [(1000, 5), (2000, 6), (3000, 2), (4000, 3)] {
            assert_eq!(
                d.append_histogram(t, &int(hist(k, 3)), i64::MIN, RANGE),
                SampleResult::Appended
            );
        }
        let cs = chunks(&d);
        assert_eq!(cs.len(), 2);
        assert_eq!((cs[1].min_time, cs[1].max_time), (3000, 4000));
        assert_eq!(
            HistogramIterator::new(&cs[1].data).unwrap().header(),
            CounterResetHeader::CounterReset
        );
    }

    #[test]
    fn kinds_change_chunks_and_duplicates_follow_prometheus() {
        let mut d = SeriesData::default();
        assert_eq!(d.append(1000, 1.0, i64::MIN, RANGE), SampleResult::Appended);
        assert_eq!(
            d.append_histogram(2000, &int(hist(1, 2)), i64::MIN, RANGE),
            SampleResult::Appended
        );
        // Same timestamp: an equal histogram (hint aside) is ignored, another one conflicts,
        // and so does a float.
        let mut same = hist(1, 2);
        same.hint = CounterResetHint::NotCounterReset;
        assert_eq!(
            d.append_histogram(2000, &int(same), i64::MIN, RANGE),
            SampleResult::DuplicateIgnored
        );
        assert_eq!(
            d.append_histogram(2000, &int(hist(2, 2)), i64::MIN, RANGE),
            SampleResult::Rejected(RejectReason::DuplicateTimestamp)
        );
        assert_eq!(
            d.append(2000, 1.0, i64::MIN, RANGE),
            SampleResult::Rejected(RejectReason::DuplicateTimestamp)
        );
        assert_eq!(
            d.append_histogram(1500, &int(hist(1, 2)), i64::MIN, RANGE),
            SampleResult::Rejected(RejectReason::OutOfOrder)
        );
        let fh = FloatHistogram {
            count: 2.0,
            sum: 1.0,
            schema: 0,
            zero_threshold: 1e-128,
            positive_spans: vec![Span {
                offset: 0,
                length: 1,
            }],
            positive_buckets: vec![2.0],
            ..Default::default()
        };
        assert_eq!(
            d.append_histogram(3000, &HistogramValue::Float(Box::new(fh)), i64::MIN, RANGE),
            SampleResult::Appended
        );
        assert_eq!(d.append(4000, 2.0, i64::MIN, RANGE), SampleResult::Appended);
        let enc: Vec<Encoding> = chunks(&d).iter().map(|c| c.encoding).collect();
        assert_eq!(
            enc,
            [
                Encoding::Xor,
                Encoding::Histogram,
                Encoding::FloatHistogram,
                Encoding::Xor
            ]
        );
        // A bad histogram (buckets not matching spans) is refused and changes nothing.
        let mut bad = hist(3, 2);
        bad.positive_buckets.push(1);
        assert_eq!(
            d.append_histogram(5000, &int(bad), i64::MIN, RANGE),
            SampleResult::Rejected(RejectReason::InvalidHistogram)
        );
        assert_eq!(chunks(&d).len(), 4);
    }

    #[test]
    fn a_float_stale_marker_ends_a_histogram_series_as_a_histogram() {
        let mut d = SeriesData::default();
        d.append_histogram(1000, &int(hist(1, 2)), i64::MIN, RANGE);
        let stale = f64::from_bits(storeapi::STALE_NAN_BITS);
        assert_eq!(
            d.append(2000, stale, i64::MIN, RANGE),
            SampleResult::Appended
        );
        let cs = chunks(&d);
        assert_eq!(
            cs.len(),
            1,
            "the stale marker goes into the histogram chunk"
        );
        let s = decode(&cs[0]);
        assert_eq!(s.len(), 2);
        assert!(storeapi::is_stale_nan(s[1].1.sum));
        // A repeated stale marker is an ignored duplicate.
        assert_eq!(
            d.append(2000, stale, i64::MIN, RANGE),
            SampleResult::DuplicateIgnored
        );
    }

    #[test]
    fn after_truncation_a_new_chunk_is_headed_against_the_last_histogram() {
        let mut d = SeriesData::default();
        d.append_histogram(1000, &int(hist(5, 2)), i64::MIN, RANGE);
        assert!(!d.truncate(2000), "all chunks dropped");
        d.append_histogram(3000, &int(hist(6, 2)), i64::MIN, RANGE);
        let cs = chunks(&d);
        assert_eq!(
            HistogramIterator::new(&cs[0].data).unwrap().header(),
            CounterResetHeader::NotCounterReset
        );
        // After a decrease it says counter reset, as Prometheus's previous appender would.
        d.truncate(4000);
        d.append_histogram(5000, &int(hist(1, 2)), i64::MIN, RANGE);
        let cs = chunks(&d);
        assert_eq!(
            HistogramIterator::new(&cs[0].data).unwrap().header(),
            CounterResetHeader::CounterReset
        );
    }

    /// The head keeps no copy of a series' last histogram while its open chunk's
    /// appender holds it as given, and duplicates are still judged against what the
    /// client sent, as Prometheus's `lastHistogramValue` is: a sample widened into the
    /// chunk's layout is kept as a copy, so its exact repeat stays an ignored duplicate.
    #[test]
    fn the_last_histogram_is_the_appenders_unless_widened() {
        use super::super::LastValue;
        use storeapi::histogram::Span;
        let mut d = SeriesData::default();
        let a = hist(3, 3);
        assert_eq!(
            d.append_histogram(1000, &int(a.clone()), i64::MIN, RANGE),
            SampleResult::Appended
        );
        assert!(matches!(d.last, LastValue::InOpenChunk));
        assert_eq!(
            d.append_histogram(1000, &int(a.clone()), i64::MIN, RANGE),
            SampleResult::DuplicateIgnored
        );
        let mut other = a.clone();
        other.sum += 1.0;
        assert_eq!(
            d.append_histogram(1000, &int(other), i64::MIN, RANGE),
            SampleResult::Rejected(RejectReason::DuplicateTimestamp)
        );
        // Buckets 0..3 with bucket 1 empty, then a histogram without bucket 1: the chunk
        // takes it widened back to three buckets.
        let layout = |counts: &[i64], spans: Vec<Span>| {
            let mut prev = 0;
            Histogram {
                schema: 0,
                zero_threshold: 1e-128,
                count: counts.iter().sum::<i64>() as u64,
                sum: 10.0,
                positive_spans: spans,
                positive_buckets: counts
                    .iter()
                    .map(|&c| {
                        let d = c - prev;
                        prev = c;
                        d
                    })
                    .collect(),
                ..Default::default()
            }
        };
        let mut d = SeriesData::default();
        let full = layout(
            &[2, 0, 3],
            vec![Span {
                offset: 0,
                length: 3,
            }],
        );
        let gap = layout(
            &[3, 4],
            vec![
                Span {
                    offset: 0,
                    length: 1,
                },
                Span {
                    offset: 1,
                    length: 1,
                },
            ],
        );
        d.append_histogram(1000, &int(full), i64::MIN, RANGE);
        assert_eq!(
            d.append_histogram(2000, &int(gap.clone()), i64::MIN, RANGE),
            SampleResult::Appended
        );
        assert_eq!(chunks(&d).len(), 1, "widened into the open chunk");
        assert!(
            matches!(&d.last, LastValue::Hist(h) if h.positive_buckets == gap.positive_buckets)
        );
        assert_eq!(
            d.append_histogram(2000, &int(gap), i64::MIN, RANGE),
            SampleResult::DuplicateIgnored
        );
        let next = layout(
            &[4, 0, 5],
            vec![Span {
                offset: 0,
                length: 3,
            }],
        );
        d.append_histogram(3000, &int(next.clone()), i64::MIN, RANGE);
        assert!(matches!(d.last, LastValue::InOpenChunk));
        // When the open chunk goes, the last histogram is copied out of it.
        d.split_at(3500, RANGE).unwrap();
        assert!(matches!(&d.last, LastValue::Hist(h) if h.equals(&next)));
        assert_eq!(
            d.append_histogram(3000, &int(next), i64::MIN, RANGE),
            SampleResult::DuplicateIgnored
        );
    }

    #[test]
    fn split_at_cuts_histogram_chunks_without_losing_samples() {
        let mut d = SeriesData::default();
        for k in 1..=30u64 {
            d.append_histogram(k as i64 * 1000, &int(hist(k, 4)), i64::MIN, RANGE);
        }
        d.split_at(15_500, RANGE).unwrap();
        let cs = chunks(&d);
        assert!(
            cs.iter()
                .all(|c| c.max_time < 15_500 || c.min_time >= 15_500)
        );
        let got: Vec<(i64, u64)> = cs
            .iter()
            .flat_map(|c| decode(c))
            .map(|(t, h)| (t, h.count))
            .collect();
        let want: Vec<(i64, u64)> = (1..=30u64)
            .map(|k| (k as i64 * 1000, hist(k, 4).count))
            .collect();
        assert_eq!(got, want);
        let after = cs.iter().find(|c| c.min_time >= 15_500).unwrap();
        assert_eq!(
            HistogramIterator::new(&after.data).unwrap().header(),
            CounterResetHeader::NotCounterReset
        );
        // The open chunk keeps taking samples after the split.
        assert_eq!(
            d.append_histogram(31_000, &int(hist(31, 4)), i64::MIN, RANGE),
            SampleResult::Appended
        );
    }
}
