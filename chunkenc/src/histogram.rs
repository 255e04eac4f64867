//! The integer histogram chunk (`HISTOGRAM`, encoding 2), byte for byte as
//! Prometheus 3.5.3's `chunkenc.HistogramChunk`.
//!
//! After the 3-byte header and the layout (see [`crate::histogram_layout`]), the first
//! sample holds t (varbit int), count and zero count (varbit uint), the sum (raw float
//! bits) and each delta-encoded bucket (varbit int); later samples hold the
//! delta-of-delta of t, count and zero count, the sum XORed with the previous sum, and
//! per bucket the delta-of-delta of its delta-encoded value. A stale marker writes
//! only t, zero count/zero-count dods and the sum.

use crate::ChunkError;
use crate::bstream::{BitReader, BitWrite, BitWriter};
use crate::histogram_layout::{
    COUNTER_RESET_HEADER_MASK, CounterResetHeader, HISTOGRAM_HEADER_SIZE,
    HISTOGRAM_INITIAL_CAPACITY, Insert, Layout, adjust_for_inserts, count_spans,
    expand_int_spans_and_buckets, expand_spans_both_ways, header_count, insert, read_hint,
    read_layout, region, set_header, tail, write_layout,
};
use crate::varbit::{
    NO_WINDOW, put_varbit_int, put_varbit_uint, read_varbit_int, read_varbit_uint, xor_read,
    xor_write,
};
use storeapi::histogram::{CUSTOM_BUCKETS_SCHEMA, CounterResetHint, Histogram, Span};
use storeapi::is_stale_nan;

/// What happened to an appended histogram.
#[derive(Debug)]
pub enum Appended<A> {
    /// Appended to this chunk as it was.
    InPlace,
    /// This chunk was re-encoded with a wider bucket layout (its bytes changed, earlier
    /// samples gained empty buckets) and the sample appended to it.
    Recoded,
    /// The sample does not fit this chunk; it starts the returned chunk, whose header
    /// says what is known about a counter reset. This chunk is unchanged.
    NewChunk(A),
}

/// Inserts and verdict of [`HistogramAppender::appendable`].
#[derive(Debug, Default)]
pub(crate) struct Appendable {
    pub forward: [Vec<Insert>; 2],
    pub backward: [Vec<Insert>; 2],
    pub ok: bool,
    pub header: Option<CounterResetHeader>,
}

/// Whether the bucket vectors match their spans; the codec relies on it to never
/// index out of range.
pub(crate) fn check_shape(spans: &[Span], buckets: usize) -> Result<(), ChunkError> {
    if count_spans(spans) != buckets as u64 {
        return Err(ChunkError::BadHistogram(
            "spans describe a different number of buckets than given",
        ));
    }
    Ok(())
}

/// Bit-exact comparison of custom bounds (`FloatBucketsMatch`).
pub(crate) fn float_buckets_match(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// An integer histogram chunk being built, with the encoder state Prometheus's
/// `HistogramAppender` keeps.
#[derive(Debug, Clone)]
pub struct HistogramAppender {
    w: BitWriter,
    layout: Layout,
    t: i64,
    cnt: u64,
    z_cnt: u64,
    t_delta: i64,
    cnt_delta: i64,
    z_cnt_delta: i64,
    /// The last sample's buckets as stored (deltas between neighbours) and each one's
    /// change since the sample before (what the next sample's delta-of-deltas are taken
    /// against), for both sides, in one allocation: `[positive | negative]` last, then
    /// `[positive | negative]` change. An append reads and writes all of them; as four
    /// vectors they were four allocations, four likely cache misses and more lines
    /// (issue #20).
    buckets: Vec<i64>,
    /// How many of each half of `buckets` are positive buckets.
    np: usize,
    sum: f64,
    leading: u8,
    trailing: u8,
    /// See [`Self::last_is_as_given`].
    last_as_given: bool,
}

/// The counter-reset header of a new chunk whose first sample is `h`: from its hint, or
/// computed against `prev`, the previous chunk's appender (`None`, Unknown, without one).
fn first_header(prev: Option<&HistogramAppender>, h: &Histogram) -> Option<CounterResetHeader> {
    match h.hint {
        CounterResetHint::Gauge => Some(CounterResetHeader::Gauge),
        CounterResetHint::CounterReset => Some(CounterResetHeader::CounterReset),
        _ => prev.map(|p| {
            p.appendable(h)
                .header
                .unwrap_or(CounterResetHeader::NotCounterReset)
        }),
    }
}

impl Default for HistogramAppender {
    fn default() -> Self {
        Self::new()
    }
}

impl HistogramAppender {
    /// An empty chunk (header Unknown).
    pub fn new() -> Self {
        Self::with_capacity(HISTOGRAM_INITIAL_CAPACITY)
    }

    /// An empty chunk whose buffer starts with `bytes` reserved (e.g. the size of the
    /// series' previous chunk: a chunk grown from [`HISTOGRAM_INITIAL_CAPACITY`] bytes
    /// to the kilobyte where it is cut is copied through six reallocations).
    pub fn with_capacity(bytes: usize) -> Self {
        Self::empty_in(
            BitWriter::with_header(HISTOGRAM_HEADER_SIZE, bytes),
            Layout::default(),
            Vec::new(),
        )
    }

    /// An empty chunk written to `w` (holding just the header), with `layout` and
    /// `buckets` as room for the first sample's.
    fn empty_in(w: BitWriter, layout: Layout, buckets: Vec<i64>) -> Self {
        HistogramAppender {
            w,
            layout,
            t: 0,
            cnt: 0,
            z_cnt: 0,
            t_delta: 0,
            cnt_delta: 0,
            z_cnt_delta: 0,
            buckets,
            np: 0,
            sum: 0.0,
            leading: NO_WINDOW,
            trailing: 0,
            last_as_given: false,
        }
    }

    /// Reopens an encoded chunk for appending, with the state Prometheus's
    /// `HistogramChunk.Appender()` restores by decoding it. As there, a chunk of one
    /// sample reopens with an all-zero XOR window for the sum (not "no window").
    pub fn from_bytes(data: &[u8]) -> Result<Self, ChunkError> {
        let mut it = HistogramIterator::new(data)?;
        while it.step_raw()? {}
        let mut a = Self::new();
        if it.total == 0 {
            if let Some(h) = data.get(..HISTOGRAM_HEADER_SIZE) {
                a.w.buf.copy_from_slice(h);
            }
            return Ok(a);
        }
        a.w = BitWriter::resume(data, it.r.pos());
        a.layout = it.layout;
        a.t = it.t;
        a.cnt = it.cnt;
        a.z_cnt = it.z_cnt;
        a.t_delta = it.t_delta;
        a.cnt_delta = it.cnt_delta;
        a.z_cnt_delta = it.z_cnt_delta;
        a.np = it.p_buckets.len();
        a.buckets = [it.p_buckets, it.n_buckets, it.p_delta, it.n_delta].concat();
        a.sum = it.sum;
        a.leading = it.leading;
        a.trailing = it.trailing;
        Ok(a)
    }

    /// The encoded chunk, as stored on disk.
    pub fn bytes(&self) -> &[u8] {
        &self.w.buf
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.w.buf
    }

    /// Whether the last sample was stored as its histogram was given to `append`: not
    /// widened with empty buckets (a layout change the chunk absorbed), not a stale
    /// marker. Then [`Self::last_histogram`] is that histogram (its reset hint aside),
    /// and a caller need not keep a copy of it (issue #20: the head's copy of every
    /// series' last histogram was a third of the memory an append touched).
    pub fn last_is_as_given(&self) -> bool {
        self.last_as_given
    }

    /// The last sample as this appender holds it (`None` when empty). The reset hint is
    /// the one a chunk's first sample reads with: `Gauge` in a gauge chunk and unknown
    /// otherwise (a gauge chunk holds only gauge histograms, and no reader of a previous
    /// histogram looks at the hint otherwise).
    pub fn last_histogram(&self) -> Option<Histogram> {
        if self.num_samples() == 0 {
            return None;
        }
        Some(histogram_of(
            &self.layout,
            read_hint(self.header(), 1),
            [self.z_cnt, self.cnt],
            self.sum,
            self.p_last(),
            self.n_last(),
        ))
    }

    /// The memory an append reads or writes outside the appender itself, each region a
    /// separate allocation and so a likely cache miss: the chunk's first bytes (its
    /// sample count) and its last byte, the layout's spans and the bucket state. A
    /// caller appending to many series in turn prefetches these a few series ahead.
    pub fn append_regions(&self) -> [(*const u8, usize); 5] {
        [
            region(&self.w.buf[..self.w.buf.len().min(2)]),
            tail(&self.w.buf),
            region(&self.layout.positive_spans),
            region(&self.layout.negative_spans),
            region(&self.buckets),
        ]
    }

    pub fn num_samples(&self) -> u16 {
        u16::from_be_bytes([self.w.buf[0], self.w.buf[1]])
    }

    /// The last sample's positive buckets (see `buckets`).
    fn p_last(&self) -> &[i64] {
        &self.buckets[..self.np]
    }

    /// The last sample's negative buckets.
    fn n_last(&self) -> &[i64] {
        &self.buckets[self.np..self.buckets.len() / 2]
    }

    /// The counter-reset header.
    pub fn header(&self) -> CounterResetHeader {
        CounterResetHeader::from_byte(self.w.buf[2])
    }

    /// Timestamp of the last sample (meaningless when empty).
    pub fn last_t(&self) -> i64 {
        self.t
    }

    fn set_header(&mut self, h: CounterResetHeader) {
        set_header(&mut self.w.buf, h);
    }

    /// Appends `h` at `t` (after the last sample; the caller checks the order), as
    /// Prometheus's `AppendHistogram` with `appendOnly=false`: in place, by recoding
    /// this chunk to a wider layout, or by starting a new chunk. `prev` is the appender
    /// of the chunk before this one when this one was just cut, so an empty chunk's
    /// header is computed against that chunk's last histogram.
    pub fn append(
        &mut self,
        prev: Option<&HistogramAppender>,
        t: i64,
        h: &Histogram,
    ) -> Result<Appended<Self>, ChunkError> {
        check_shape(&h.positive_spans, h.positive_buckets.len())?;
        check_shape(&h.negative_spans, h.negative_buckets.len())?;
        // Whether the sample is stored as given (not widened with empty buckets): then
        // the appender's state is that histogram (see `last_histogram`).
        let mut as_given = true;
        if self.num_samples() == 0 {
            self.append_raw(t, h, as_given)?;
            if let Some(hdr) = first_header(prev, h) {
                self.set_header(hdr);
            }
            return Ok(Appended::InPlace);
        }
        if h.hint != CounterResetHint::Gauge {
            let ap = self.appendable(h);
            let hdr = ap.header.unwrap_or(CounterResetHeader::NotCounterReset);
            if !ap.ok || hdr != CounterResetHeader::NotCounterReset {
                let mut n = Self::new();
                n.set_header(hdr);
                n.append_raw(t, h, as_given)?;
                return Ok(Appended::NewChunk(n));
            }
            let [fp, fnn] = &ap.forward;
            let [bp, bn] = &ap.backward;
            let mut widened;
            let mut h = h;
            if !bp.is_empty() || !bn.is_empty() {
                widened = h.clone();
                if fp.is_empty() && fnn.is_empty() {
                    widened.positive_spans = self.layout.positive_spans.clone();
                    widened.negative_spans = self.layout.negative_spans.clone();
                } else {
                    widened.positive_spans = adjust_for_inserts(&widened.positive_spans, bp);
                    widened.negative_spans = adjust_for_inserts(&widened.negative_spans, bn);
                }
                widen(&mut widened, bp, bn)?;
                h = &widened;
                as_given = false;
            }
            if !fp.is_empty() || !fnn.is_empty() {
                let mut n = self.recode(fp, fnn, &h.positive_spans, &h.negative_spans)?;
                n.append_raw(t, h, as_given)?;
                *self = n;
                return Ok(Appended::Recoded);
            }
            self.append_raw(t, h, as_given)?;
            return Ok(Appended::InPlace);
        }
        let Some((fwd, bwd, merged)) = self.appendable_gauge(h) else {
            let mut n = Self::new();
            n.set_header(CounterResetHeader::Gauge);
            n.append_raw(t, h, as_given)?;
            return Ok(Appended::NewChunk(n));
        };
        let mut widened;
        let mut h = h;
        if !bwd[0].is_empty() || !bwd[1].is_empty() {
            widened = h.clone();
            let [mp, mn] = merged;
            widened.positive_spans = mp;
            widened.negative_spans = mn;
            widen(&mut widened, &bwd[0], &bwd[1])?;
            h = &widened;
            as_given = false;
        }
        if !fwd[0].is_empty() || !fwd[1].is_empty() {
            let mut n = self.recode(&fwd[0], &fwd[1], &h.positive_spans, &h.negative_spans)?;
            n.append_raw(t, h, as_given)?;
            *self = n;
            return Ok(Appended::Recoded);
        }
        self.append_raw(t, h, as_given)?;
        Ok(Appended::InPlace)
    }

    /// Starts the series' next chunk in this appender, with `h` at `t` its first sample:
    /// the chunk a fresh appender would make from `append(Some(&self), t, h)`, header
    /// included, but in this one's buffer and vectors (a chunk cut that allocated them
    /// anew and freed the old ones was a fifth of the receiver's malloc time, issue
    /// #20). The buffer is sized for `capacity` bytes (see [`BitWriter::restart`]).
    /// `take` is handed the current chunk's bytes before they are cleared. On an error
    /// (buckets that do not match their spans) nothing changed and `take` was not
    /// called.
    pub fn restart(
        &mut self,
        t: i64,
        h: &Histogram,
        capacity: usize,
        take: impl FnOnce(&[u8]),
    ) -> Result<(), ChunkError> {
        check_shape(&h.positive_spans, h.positive_buckets.len())?;
        check_shape(&h.negative_spans, h.negative_buckets.len())?;
        let header = first_header(Some(self), h);
        take(self.bytes());
        let mut w = std::mem::take(&mut self.w);
        w.restart(HISTOGRAM_HEADER_SIZE, capacity);
        let layout = std::mem::take(&mut self.layout);
        let buckets = std::mem::take(&mut self.buckets);
        *self = Self::empty_in(w, layout, buckets);
        // The shapes were checked and the chunk is empty: this cannot fail.
        self.append_raw(t, h, true)?;
        if let Some(hdr) = header {
            self.set_header(hdr);
        }
        Ok(())
    }

    /// Prometheus's `appendable`: whether a counter histogram fits this chunk, and if
    /// not, what header its new chunk gets (`None` here stands for NotCounterReset).
    pub(crate) fn appendable(&self, h: &Histogram) -> Appendable {
        use CounterResetHeader::*;
        let mut out = Appendable::default();
        if self.num_samples() > 0 && self.header() == Gauge {
            return out;
        }
        if h.hint == CounterResetHint::CounterReset {
            out.header = Some(CounterReset);
            return out;
        }
        if is_stale_nan(h.sum) {
            out.ok = true;
            return out;
        }
        if is_stale_nan(self.sum) {
            out.header = Some(Unknown);
            return out;
        }
        if h.count < self.cnt {
            out.header = Some(CounterReset);
            return out;
        }
        if h.schema != self.layout.schema || h.zero_threshold != self.layout.zero_threshold {
            out.header = Some(Unknown);
            return out;
        }
        if h.schema == CUSTOM_BUCKETS_SCHEMA
            && !float_buckets_match(&h.custom_values, &self.layout.custom_values)
        {
            out.header = Some(CounterReset);
            return out;
        }
        if h.zero_count < self.z_cnt {
            out.header = Some(CounterReset);
            return out;
        }
        let Some((fp, bp)) = expand_int_spans_and_buckets(
            &self.layout.positive_spans,
            &h.positive_spans,
            self.p_last(),
            &h.positive_buckets,
        ) else {
            out.header = Some(CounterReset);
            return out;
        };
        let Some((fnn, bn)) = expand_int_spans_and_buckets(
            &self.layout.negative_spans,
            &h.negative_spans,
            self.n_last(),
            &h.negative_buckets,
        ) else {
            out.header = Some(CounterReset);
            return out;
        };
        out.forward = [fp, fnn];
        out.backward = [bp, bn];
        out.ok = true;
        out
    }

    /// Prometheus's `appendableGauge`: `None` when a new gauge chunk is needed, else
    /// forward and backward inserts and the merged spans per side.
    #[allow(clippy::type_complexity)]
    fn appendable_gauge(
        &self,
        h: &Histogram,
    ) -> Option<([Vec<Insert>; 2], [Vec<Insert>; 2], [Vec<Span>; 2])> {
        if self.num_samples() > 0 && self.header() != CounterResetHeader::Gauge {
            return None;
        }
        if is_stale_nan(h.sum) {
            return Some(Default::default());
        }
        if is_stale_nan(self.sum)
            || h.schema != self.layout.schema
            || h.zero_threshold != self.layout.zero_threshold
            || (h.schema == CUSTOM_BUCKETS_SCHEMA
                && !float_buckets_match(&h.custom_values, &self.layout.custom_values))
        {
            return None;
        }
        let (fp, bp, mp) = expand_spans_both_ways(&self.layout.positive_spans, &h.positive_spans);
        let (fnn, bn, mn) = expand_spans_both_ways(&self.layout.negative_spans, &h.negative_spans);
        Some(([fp, fnn], [bp, bn], [mp, mn]))
    }

    /// Re-encodes every sample with `forward` empty buckets inserted and the new spans,
    /// keeping the header (Prometheus's `recode`).
    fn recode(
        &self,
        fp: &[Insert],
        fnn: &[Insert],
        p_spans: &[Span],
        n_spans: &[Span],
    ) -> Result<Self, ChunkError> {
        let mut n = Self::new();
        for s in HistogramIterator::new(self.bytes())? {
            let (t, mut old) = s?;
            if !old.is_stale() {
                old.positive_spans = p_spans.to_vec();
                old.negative_spans = n_spans.to_vec();
                if !fp.is_empty() {
                    old.positive_buckets = insert(&old.positive_buckets, fp, true)
                        .ok_or(ChunkError::BadHistogram("bucket inserts do not fit"))?;
                }
                if !fnn.is_empty() {
                    old.negative_buckets = insert(&old.negative_buckets, fnn, true)
                        .ok_or(ChunkError::BadHistogram("bucket inserts do not fit"))?;
                }
            }
            n.append_raw(t, &old, false)?;
        }
        let b = self.w.buf[2] & COUNTER_RESET_HEADER_MASK;
        n.set_header(CounterResetHeader::from_byte(b));
        Ok(n)
    }

    /// Writes one sample (`appendHistogram`). `h` must already have this chunk's layout.
    /// `as_given`: whether `h` is the histogram as the caller of `append` gave it (see
    /// [`Self::last_is_as_given`]; a stale marker never is, its layout is not written).
    fn append_raw(&mut self, t: i64, h: &Histogram, as_given: bool) -> Result<(), ChunkError> {
        let num = self.num_samples();
        if num == u16::MAX {
            return Err(ChunkError::Full);
        }
        let stale;
        let h = if is_stale_nan(h.sum) {
            stale = Histogram {
                sum: h.sum,
                ..Default::default()
            };
            &stale
        } else {
            h
        };
        let (mut t_delta, mut cnt_delta, mut z_cnt_delta) = (0i64, 0i64, 0i64);
        if num == 0 {
            check_shape(&h.positive_spans, h.positive_buckets.len())?;
            check_shape(&h.negative_spans, h.negative_buckets.len())?;
            let w = &mut self.w.sink();
            write_layout(
                w,
                h.schema,
                h.zero_threshold,
                &h.positive_spans,
                &h.negative_spans,
                &h.custom_values,
            );
            self.layout.assign(
                h.schema,
                h.zero_threshold,
                &h.positive_spans,
                &h.negative_spans,
                &h.custom_values,
            );
            let both = h.positive_buckets.iter().chain(&h.negative_buckets);
            self.np = h.positive_buckets.len();
            self.buckets.clear();
            self.buckets.extend(both.clone());
            self.buckets.resize(2 * self.buckets.len(), 0);
            put_varbit_int(w, t);
            put_varbit_uint(w, h.count);
            put_varbit_uint(w, h.zero_count);
            w.write_bits(h.sum.to_bits(), 64);
            for &b in both {
                put_varbit_int(w, b);
            }
        } else {
            if !is_stale_nan(h.sum)
                && (h.positive_buckets.len() != self.np
                    || h.negative_buckets.len() != self.n_last().len())
            {
                return Err(ChunkError::BadHistogram(
                    "histogram buckets do not match the chunk's layout",
                ));
            }
            t_delta = t.wrapping_sub(self.t);
            cnt_delta = (h.count as i64).wrapping_sub(self.cnt as i64);
            z_cnt_delta = (h.zero_count as i64).wrapping_sub(self.z_cnt as i64);
            let t_dod = t_delta.wrapping_sub(self.t_delta);
            let (mut cnt_dod, mut z_cnt_dod) = (
                cnt_delta.wrapping_sub(self.cnt_delta),
                z_cnt_delta.wrapping_sub(self.z_cnt_delta),
            );
            if is_stale_nan(h.sum) {
                cnt_dod = 0;
                z_cnt_dod = 0;
            }
            let w = &mut self.w.sink();
            put_varbit_int(w, t_dod);
            put_varbit_int(w, cnt_dod);
            put_varbit_int(w, z_cnt_dod);
            xor_write(w, h.sum, self.sum, &mut self.leading, &mut self.trailing);
            // Positive buckets, then negative ones (a stale marker has none).
            let half = self.buckets.len() / 2;
            let (lasts, deltas) = self.buckets.split_at_mut(half);
            let (p_lasts, n_lasts) = lasts.split_at_mut(self.np);
            let (p_deltas, n_deltas) = deltas.split_at_mut(self.np);
            for (side, lasts, deltas) in [
                (&h.positive_buckets, p_lasts, p_deltas),
                (&h.negative_buckets, n_lasts, n_deltas),
            ] {
                for ((b, last), delta) in side.iter().zip(lasts).zip(deltas) {
                    let d = b.wrapping_sub(*last);
                    put_varbit_int(w, d.wrapping_sub(*delta));
                    *delta = d;
                    *last = *b;
                }
            }
        }
        let [a, b] = (num + 1).to_be_bytes();
        self.w.buf[0] = a;
        self.w.buf[1] = b;
        self.t = t;
        self.cnt = h.count;
        self.z_cnt = h.zero_count;
        self.t_delta = t_delta;
        self.cnt_delta = cnt_delta;
        self.z_cnt_delta = z_cnt_delta;
        self.sum = h.sum;
        self.last_as_given = as_given && !is_stale_nan(h.sum);
        Ok(())
    }
}

/// The histogram of a chunk's `layout` with these counts (`[zero_count, count]`), sum
/// and (delta-encoded) buckets: what the iterator reads and the appender last wrote.
fn histogram_of(
    layout: &Layout,
    hint: CounterResetHint,
    [zero_count, count]: [u64; 2],
    sum: f64,
    positive_buckets: &[i64],
    negative_buckets: &[i64],
) -> Histogram {
    Histogram {
        hint,
        schema: layout.schema,
        zero_threshold: layout.zero_threshold,
        zero_count,
        count,
        sum,
        positive_spans: layout.positive_spans.clone(),
        negative_spans: layout.negative_spans.clone(),
        positive_buckets: positive_buckets.to_vec(),
        negative_buckets: negative_buckets.to_vec(),
        custom_values: layout.custom_values.clone(),
    }
}

/// Adds backward-insert empty buckets to a histogram (`recodeHistogram`).
fn widen(h: &mut Histogram, bp: &[Insert], bn: &[Insert]) -> Result<(), ChunkError> {
    const MISFIT: ChunkError = ChunkError::BadHistogram("bucket inserts do not fit");
    if !bp.is_empty() {
        h.positive_buckets = insert(&h.positive_buckets, bp, true).ok_or(MISFIT)?;
    }
    if !bn.is_empty() {
        h.negative_buckets = insert(&h.negative_buckets, bn, true).ok_or(MISFIT)?;
    }
    check_shape(&h.positive_spans, h.positive_buckets.len())?;
    check_shape(&h.negative_spans, h.negative_buckets.len())
}

/// Decodes an integer histogram chunk. Corrupt or truncated input yields one error and
/// then ends; it never panics, and no allocation exceeds what the bytes can describe.
#[derive(Debug, Clone)]
pub struct HistogramIterator<'a> {
    r: BitReader<'a>,
    total: u16,
    read: u16,
    header: CounterResetHeader,
    layout: Layout,
    t: i64,
    cnt: u64,
    z_cnt: u64,
    t_delta: i64,
    cnt_delta: i64,
    z_cnt_delta: i64,
    p_buckets: Vec<i64>,
    n_buckets: Vec<i64>,
    p_delta: Vec<i64>,
    n_delta: Vec<i64>,
    sum: f64,
    leading: u8,
    trailing: u8,
    failed: bool,
}

impl<'a> HistogramIterator<'a> {
    /// Starts decoding `data` (header included).
    pub fn new(data: &'a [u8]) -> Result<Self, ChunkError> {
        let total = header_count(data)?;
        Ok(HistogramIterator {
            r: BitReader::new(data, HISTOGRAM_HEADER_SIZE * 8),
            total,
            read: 0,
            header: CounterResetHeader::from_byte(data[2]),
            layout: Layout::default(),
            t: 0,
            cnt: 0,
            z_cnt: 0,
            t_delta: 0,
            cnt_delta: 0,
            z_cnt_delta: 0,
            p_buckets: Vec::new(),
            n_buckets: Vec::new(),
            p_delta: Vec::new(),
            n_delta: Vec::new(),
            sum: 0.0,
            leading: 0,
            trailing: 0,
            failed: false,
        })
    }

    /// The sample count from the header.
    pub fn num_samples(&self) -> u16 {
        self.total
    }

    /// The chunk's counter-reset header.
    pub fn header(&self) -> CounterResetHeader {
        self.header
    }

    /// Decodes the next sample into the state; `false` at the end.
    /// Decodes the next sample (every field, so damage is found) and gives only its
    /// timestamp: what a block verification needs, without building the histogram.
    pub fn next_time(&mut self) -> Option<Result<i64, ChunkError>> {
        if self.failed {
            return None;
        }
        match self.step_raw() {
            Ok(true) => Some(Ok(self.t)),
            Ok(false) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }

    fn step_raw(&mut self) -> Result<bool, ChunkError> {
        if self.read >= self.total {
            return Ok(false);
        }
        let r = &mut self.r;
        if self.read == 0 {
            // A bucket costs at least one bit in the first sample.
            self.layout = read_layout(r, 1)?;
            let np = count_spans(&self.layout.positive_spans) as usize;
            let nn = count_spans(&self.layout.negative_spans) as usize;
            self.p_buckets = vec![0; np];
            self.p_delta = vec![0; np];
            self.n_buckets = vec![0; nn];
            self.n_delta = vec![0; nn];
            self.t = read_varbit_int(r)?;
            self.cnt = read_varbit_uint(r)?;
            self.z_cnt = read_varbit_uint(r)?;
            self.sum = f64::from_bits(r.read_bits(64)?);
            for b in self.p_buckets.iter_mut().chain(self.n_buckets.iter_mut()) {
                *b = read_varbit_int(r)?;
            }
        } else {
            self.t_delta = self.t_delta.wrapping_add(read_varbit_int(r)?);
            self.t = self.t.wrapping_add(self.t_delta);
            self.cnt_delta = self.cnt_delta.wrapping_add(read_varbit_int(r)?);
            self.cnt = (self.cnt as i64).wrapping_add(self.cnt_delta) as u64;
            self.z_cnt_delta = self.z_cnt_delta.wrapping_add(read_varbit_int(r)?);
            self.z_cnt = (self.z_cnt as i64).wrapping_add(self.z_cnt_delta) as u64;
            xor_read(r, &mut self.sum, &mut self.leading, &mut self.trailing)?;
            if !is_stale_nan(self.sum) {
                for (b, d) in self
                    .p_buckets
                    .iter_mut()
                    .zip(self.p_delta.iter_mut())
                    .chain(self.n_buckets.iter_mut().zip(self.n_delta.iter_mut()))
                {
                    *d = d.wrapping_add(read_varbit_int(r)?);
                    *b = b.wrapping_add(*d);
                }
            }
        }
        self.read += 1;
        Ok(true)
    }

    /// The current sample as Prometheus's `AtHistogram` gives it.
    fn current(&self) -> Histogram {
        if is_stale_nan(self.sum) {
            return Histogram {
                sum: self.sum,
                ..Default::default()
            };
        }
        histogram_of(
            &self.layout,
            read_hint(self.header, self.read),
            [self.z_cnt, self.cnt],
            self.sum,
            &self.p_buckets,
            &self.n_buckets,
        )
    }
}

impl Iterator for HistogramIterator<'_> {
    type Item = Result<(i64, Histogram), ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        let t = self.next_time()?;
        Some(t.map(|t| (t, self.current())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram_testutil::{append_all_int, hist, pack};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use storeapi::STALE_NAN_BITS;

    fn m(v: &[(i32, u64)]) -> BTreeMap<i32, u64> {
        v.iter().copied().collect()
    }

    fn decode(data: &[u8]) -> Vec<(i64, Histogram)> {
        HistogramIterator::new(data)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    fn stale() -> Histogram {
        Histogram {
            sum: f64::from_bits(STALE_NAN_BITS),
            ..Default::default()
        }
    }

    fn with_hint(mut h: Histogram, hint: CounterResetHint) -> Histogram {
        h.hint = hint;
        h
    }

    #[test]
    fn hand_checked_bytes_of_a_two_sample_chunk() {
        // Bits derived by hand from Prometheus 3.5.3 histogram.go / histogram_meta.go /
        // varbit.go: zero threshold 2^-128 is byte 116; schema 0 is `0`; one positive span
        // (`10 001`) of length 2 (`10 010`) at offset 0 (`0`); no negative spans (`0`);
        // t=1000 is `11110` + 12 bits; count 3 `10 011`; zero count `0`; sum 2.5 raw; buckets
        // (deltas 1, 1) `10 001` twice.
        let h1 = hist(0, 0, &m(&[(0, 1), (1, 2)]), &m(&[]), 2.5);
        let mut a = HistogramAppender::new();
        assert!(matches!(
            a.append(None, 1000, &h1).unwrap(),
            Appended::InPlace
        ));
        let first = "01110100 0 10001 10010 0 0 11110 001111101000 10011 0 \
                     0100000000000100000000000000000000000000000000000000000000000000 \
                     10001 10001";
        let mut want = vec![0, 1, 0];
        want.extend(pack(first));
        assert_eq!(a.bytes(), &want[..]);
        // Sample 2 at t=2000: t dod 1000; count dod +1 (`10 001`); zero count dod `0`; sum
        // 4.0 XOR 2.5 = 0x0014000000000000: 11 leading, 50 trailing zeros → `1 1 01011
        // 000011 101`; bucket dods 0 (`0`) and +1 (`10 001`).
        let h2 = hist(0, 0, &m(&[(0, 1), (1, 3)]), &m(&[]), 4.0);
        assert!(matches!(
            a.append(None, 2000, &h2).unwrap(),
            Appended::InPlace
        ));
        let second = "11110 001111101000 10001 0 11 01011 000011 101 0 10001";
        let mut want = vec![0, 2, 0];
        want.extend(pack(&format!("{first} {second}")));
        assert_eq!(a.bytes(), &want[..]);
        let got = decode(a.bytes());
        assert_eq!(got[0], (1000, h1));
        assert_eq!(
            got[1],
            (2000, with_hint(h2, CounterResetHint::NotCounterReset))
        );
    }

    #[test]
    fn round_trip_with_negative_buckets_and_custom_buckets() {
        let mut samples = Vec::new();
        for i in 0..50u64 {
            samples.push((
                i as i64 * 15_000,
                hist(
                    3,
                    i,
                    &m(&[(-2, i), (0, 2 * i), (1, i * i), (7, 3 * i)]),
                    &m(&[(-1, i), (4, 1)]),
                    i as f64 * 0.1,
                ),
            ));
        }
        let chunks = append_all_int(&samples);
        assert_eq!(chunks.len(), 1);
        let got = decode(&chunks[0]);
        assert_eq!(got.len(), 50);
        for (i, ((t, h), (wt, wh))) in got.iter().zip(&samples).enumerate() {
            let hint = if i == 0 {
                CounterResetHint::Unknown
            } else {
                CounterResetHint::NotCounterReset
            };
            assert_eq!((*t, h), (*wt, &with_hint(wh.clone(), hint)), "sample {i}");
        }
        // NHCB: schema -53 with its bounds in the layout.
        let nh = hist(-53, 0, &m(&[(0, 1), (3, 4)]), &m(&[]), 1.0);
        let chunks = append_all_int(&[(5, nh.clone())]);
        assert_eq!(decode(&chunks[0]), vec![(5, nh)]);
    }

    #[test]
    fn new_bucket_mid_chunk_recodes_earlier_samples() {
        let h1 = hist(0, 1, &m(&[(0, 1), (1, 1)]), &m(&[]), 1.0);
        let h2 = hist(0, 1, &m(&[(0, 2), (1, 1)]), &m(&[]), 2.0);
        let h3 = hist(0, 1, &m(&[(0, 2), (1, 1), (5, 3)]), &m(&[(2, 1)]), 3.0);
        let mut a = HistogramAppender::new();
        a.append(None, 1, &h1).unwrap();
        a.append(None, 2, &h2).unwrap();
        assert!(matches!(a.append(None, 3, &h3).unwrap(), Appended::Recoded));
        let got = decode(a.bytes());
        assert_eq!(got.len(), 3);
        // Earlier samples are widened with empty buckets; their counts are unchanged.
        let widened = |h: &Histogram| {
            let mut p: BTreeMap<i32, u64> = m(&[(0, 0), (1, 0), (5, 0)]);
            let mut n: BTreeMap<i32, u64> = m(&[(2, 0)]);
            let f = h.to_float();
            let mut idx = vec![];
            let mut base = -1;
            for s in &h.positive_spans {
                base += s.offset + 1;
                for k in 0..s.length as i32 {
                    idx.push(base + k);
                }
                base += s.length as i32 - 1;
            }
            for (i, c) in idx.iter().zip(&f.positive_buckets) {
                p.insert(*i, *c as u64);
            }
            let _ = &mut n;
            hist(0, h.zero_count, &p, &n, h.sum)
        };
        assert_eq!(got[0].1, widened(&h1));
        assert_eq!(
            got[1].1,
            with_hint(widened(&h2), CounterResetHint::NotCounterReset)
        );
        assert_eq!(
            got[2].1,
            with_hint(h3.clone(), CounterResetHint::NotCounterReset)
        );
        // The recoded chunk is what appending the widened samples from scratch gives.
        let fresh = append_all_int(&[(1, widened(&h1)), (2, widened(&h2)), (3, h3)]);
        assert_eq!(fresh, vec![a.bytes().to_vec()]);
    }

    #[test]
    fn missing_empty_bucket_widens_the_new_sample() {
        let h1 = hist(0, 0, &m(&[(0, 1), (1, 0), (2, 1)]), &m(&[]), 1.0);
        let h2 = hist(0, 0, &m(&[(0, 2), (2, 1)]), &m(&[]), 2.0);
        let mut a = HistogramAppender::new();
        a.append(None, 1, &h1).unwrap();
        assert!(matches!(a.append(None, 2, &h2).unwrap(), Appended::InPlace));
        let got = decode(a.bytes());
        let want = hist(0, 0, &m(&[(0, 2), (1, 0), (2, 1)]), &m(&[]), 2.0);
        assert_eq!(got[1].1, with_hint(want, CounterResetHint::NotCounterReset));
    }

    /// The header of the chunk `h2` starts after `h1`, or None if appended in place.
    fn cut_header(h1: &Histogram, h2: &Histogram) -> Option<CounterResetHeader> {
        let mut a = HistogramAppender::new();
        a.append(None, 1, h1).unwrap();
        match a.append(None, 2, h2).unwrap() {
            Appended::NewChunk(n) => {
                assert_eq!(a.num_samples(), 1, "old chunk untouched");
                assert_eq!(decode(n.bytes()).len(), 1);
                Some(n.header())
            }
            _ => None,
        }
    }

    #[test]
    fn every_cut_reason_and_its_header() {
        use CounterResetHeader::*;
        let base = hist(0, 2, &m(&[(0, 3), (1, 4)]), &m(&[]), 5.0);
        let grown = hist(0, 3, &m(&[(0, 4), (1, 4)]), &m(&[]), 6.0);
        assert_eq!(cut_header(&base, &grown), None);
        // Count decreased.
        assert_eq!(
            cut_header(&base, &hist(0, 2, &m(&[(0, 3), (1, 3)]), &m(&[]), 5.0)),
            Some(CounterReset)
        );
        // Zero count decreased (count not).
        assert_eq!(
            cut_header(&base, &hist(0, 1, &m(&[(0, 4), (1, 4)]), &m(&[]), 5.0)),
            Some(CounterReset)
        );
        // A bucket decreased while the count grew.
        assert_eq!(
            cut_header(&base, &hist(0, 2, &m(&[(0, 2), (1, 9)]), &m(&[]), 5.0)),
            Some(CounterReset)
        );
        // A populated bucket vanished.
        assert_eq!(
            cut_header(&base, &hist(0, 2, &m(&[(1, 9)]), &m(&[]), 5.0)),
            Some(CounterReset)
        );
        // Explicit reset hint.
        assert_eq!(
            cut_header(
                &base,
                &with_hint(grown.clone(), CounterResetHint::CounterReset)
            ),
            Some(CounterReset)
        );
        // Schema change and zero threshold change: Unknown.
        let mut s = grown.clone();
        s.schema = 1;
        assert_eq!(cut_header(&base, &s), Some(Unknown));
        let mut z = grown.clone();
        z.zero_threshold = 0.5;
        assert_eq!(cut_header(&base, &z), Some(Unknown));
        // Custom bounds changed: CounterReset.
        let nh = hist(-53, 0, &m(&[(0, 1)]), &m(&[]), 1.0);
        let mut nh2 = hist(-53, 0, &m(&[(0, 2)]), &m(&[]), 1.0);
        assert_eq!(cut_header(&nh, &nh2), None);
        nh2.custom_values[0] = 0.3;
        assert_eq!(cut_header(&nh, &nh2), Some(CounterReset));
        // Gauge into a counter chunk, and a counter into a gauge chunk.
        assert_eq!(
            cut_header(&base, &with_hint(grown.clone(), CounterResetHint::Gauge)),
            Some(Gauge)
        );
        assert_eq!(
            cut_header(&with_hint(base.clone(), CounterResetHint::Gauge), &grown),
            Some(NotCounterReset)
        );
        // Gauge chunks take decreases, but not a schema change.
        let g = |h: &Histogram| with_hint(h.clone(), CounterResetHint::Gauge);
        assert_eq!(cut_header(&g(&grown), &g(&base)), None);
        assert_eq!(cut_header(&g(&base), &g(&s)), Some(Gauge));
    }

    /// A histogram whose buckets do not match its spans is refused before anything
    /// changes: the chunk is not handed out, and appends go on in it.
    #[test]
    fn a_refused_restart_changes_nothing() {
        let h1 = hist(0, 0, &m(&[(0, 1), (1, 2)]), &m(&[]), 1.0);
        let mut a = HistogramAppender::new();
        a.append(None, 1000, &h1).expect("append");
        let before = a.bytes().to_vec();
        let mut bad = hist(0, 0, &m(&[(0, 2), (1, 3)]), &m(&[]), 2.0);
        bad.positive_buckets.push(1);
        let mut taken = false;
        assert!(a.restart(2000, &bad, 64, |_| taken = true).is_err());
        assert!(!taken);
        assert_eq!(a.bytes(), &before[..]);
        let mut f = crate::FloatHistogramAppender::new();
        f.append(None, 1000, &h1.to_float()).expect("append");
        let before = f.bytes().to_vec();
        let mut fbad = bad.to_float();
        fbad.positive_buckets.push(1.0);
        assert!(f.restart(2000, &fbad, 64, |_| taken = true).is_err());
        assert!(!taken);
        assert_eq!(f.bytes(), &before[..]);
        let h2 = hist(0, 0, &m(&[(0, 2), (1, 3)]), &m(&[]), 2.0);
        assert!(matches!(a.append(None, 2000, &h2), Ok(Appended::InPlace)));
    }

    #[test]
    fn stale_markers() {
        let h1 = hist(0, 0, &m(&[(0, 1)]), &m(&[]), 1.0);
        let mut a = HistogramAppender::new();
        a.append(None, 1, &h1).unwrap();
        assert!(matches!(
            a.append(None, 2, &stale()).unwrap(),
            Appended::InPlace
        ));
        assert!(matches!(
            a.append(None, 3, &stale()).unwrap(),
            Appended::InPlace
        ));
        let got = decode(a.bytes());
        assert_eq!(got.len(), 3);
        assert!(got[1].1.is_stale() && got[2].1.is_stale());
        // Exactly `{sum: StaleNaN}`: no layout, no counts.
        let bare = Histogram {
            sum: 0.0,
            ..got[1].1.clone()
        };
        assert_eq!(bare, Histogram::default());
        // A real sample after a stale one starts a new chunk with Unknown.
        match a.append(None, 4, &h1).unwrap() {
            Appended::NewChunk(n) => assert_eq!(n.header(), CounterResetHeader::Unknown),
            other => panic!("expected a new chunk, got {other:?}"),
        }
        // A chunk may start with a stale marker.
        let chunks = append_all_int(&[(1, stale()), (2, stale())]);
        let got = decode(&chunks[0]);
        assert_eq!(
            got.iter()
                .map(|s| (s.0, s.1.is_stale()))
                .collect::<Vec<_>>(),
            vec![(1, true), (2, true)]
        );
    }

    #[test]
    fn hints_on_read() {
        let h1 = hist(0, 0, &m(&[(0, 1)]), &m(&[]), 1.0);
        let h2 = hist(0, 0, &m(&[(0, 2)]), &m(&[]), 1.0);
        let h3 = hist(0, 0, &m(&[(0, 3)]), &m(&[]), 1.0);
        // Counter chunk with a CounterReset header: first Unknown, then NotCounterReset.
        let chunks = append_all_int(&[
            (1, with_hint(h1.clone(), CounterResetHint::CounterReset)),
            (2, h2.clone()),
            (3, h3.clone()),
        ]);
        assert_eq!(chunks.len(), 1);
        let it = HistogramIterator::new(&chunks[0]).unwrap();
        assert_eq!(it.header(), CounterResetHeader::CounterReset);
        let hints: Vec<_> = decode(&chunks[0]).iter().map(|s| s.1.hint).collect();
        use CounterResetHint::*;
        assert_eq!(hints, vec![Unknown, NotCounterReset, NotCounterReset]);
        let g: Vec<_> = [h3, h1, h2]
            .into_iter()
            .enumerate()
            .map(|(i, h)| (i as i64, with_hint(h, Gauge)))
            .collect();
        let chunks = append_all_int(&g);
        assert_eq!(chunks.len(), 1);
        let hints: Vec<_> = decode(&chunks[0]).iter().map(|s| s.1.hint).collect();
        assert_eq!(hints, vec![Gauge, Gauge, Gauge]);
    }

    #[test]
    fn new_chunk_header_is_computed_against_the_previous_chunk() {
        let h1 = hist(0, 0, &m(&[(0, 5)]), &m(&[]), 1.0);
        let up = hist(0, 0, &m(&[(0, 6)]), &m(&[]), 1.0);
        let down = hist(0, 0, &m(&[(0, 1)]), &m(&[]), 1.0);
        let mut prev = HistogramAppender::new();
        prev.append(None, 1, &h1).unwrap();
        for (h, want) in [
            (up, CounterResetHeader::NotCounterReset),
            (down, CounterResetHeader::CounterReset),
        ] {
            let mut n = HistogramAppender::new();
            n.append(Some(&prev), 2, &h).unwrap();
            assert_eq!(n.header(), want);
        }
        // Reopened from bytes, the previous chunk gives the same answer.
        let reopened = HistogramAppender::from_bytes(prev.bytes()).unwrap();
        assert!(reopened.appendable(&h1).ok);
    }

    #[test]
    fn reopening_continues_bit_exactly() {
        let s: Vec<_> = (0..20u64)
            .map(|i| {
                (
                    i as i64 * 1000,
                    hist(
                        0,
                        i,
                        &m(&[(0, i), (3, 2 * i)]),
                        &m(&[(1, 3 * i), (2, i)]),
                        i as f64,
                    ),
                )
            })
            .collect();
        let all = append_all_int(&s);
        let mut a = HistogramAppender::new();
        for (t, h) in &s[..7] {
            a.append(None, *t, h).unwrap();
        }
        let mut b = HistogramAppender::from_bytes(a.bytes()).unwrap();
        for (t, h) in &s[7..] {
            b.append(None, *t, h).unwrap();
        }
        assert_eq!(vec![b.into_bytes()], all);
    }

    #[test]
    fn truncated_and_corrupt_chunks_error_without_panicking() {
        let s: Vec<_> = (0..30u64)
            .map(|i| {
                (
                    i as i64 * 1000,
                    hist(
                        2,
                        i,
                        &m(&[(0, i), (3, 2 * i), (9, i)]),
                        &m(&[(1, i)]),
                        i as f64 * 1.7,
                    ),
                )
            })
            .collect();
        let full = append_all_int(&s).remove(0);
        for cut in 0..full.len() {
            let data = &full[..cut];
            match HistogramIterator::new(data) {
                Err(_) => assert!(cut < 3),
                Ok(it) => {
                    let r: Result<Vec<_>, _> = it.collect();
                    assert!(r.is_err(), "truncated at {cut} must fail");
                }
            }
        }
        // Flipped bits anywhere: never a panic.
        for i in 3..full.len() {
            for bit in 0..8 {
                let mut d = full.clone();
                d[i] ^= 1 << bit;
                let _ = HistogramIterator::new(&d).map(|it| it.count());
                let _ = HistogramAppender::from_bytes(&d);
            }
        }
    }

    #[test]
    fn mismatched_spans_and_buckets_are_refused() {
        let mut h = hist(0, 0, &m(&[(0, 1)]), &m(&[]), 1.0);
        h.positive_buckets.push(1);
        let mut a = HistogramAppender::new();
        assert!(matches!(
            a.append(None, 1, &h),
            Err(ChunkError::BadHistogram(_))
        ));
        assert_eq!(a.num_samples(), 0);
    }

    /// A sequence of cumulative histograms with buckets appearing, empty buckets going
    /// missing, resets, schema changes and stale markers.
    fn sequence() -> impl Strategy<Value = Vec<(i64, Histogram)>> {
        proptest::collection::vec((0u8..20, -3i32..6, 0u64..4, 1i64..5000), 1..120).prop_map(
            |ops| {
                let mut pos: BTreeMap<i32, u64> = BTreeMap::new();
                let mut neg: BTreeMap<i32, u64> = BTreeMap::new();
                let (mut zero, mut schema, mut t, mut sum) = (0u64, 0i32, 0i64, 0.0f64);
                let mut out = Vec::new();
                for (op, idx, inc, dt) in ops {
                    t += dt;
                    match op {
                        0 => {
                            pos.clear();
                            neg.clear();
                            zero = 0;
                            sum = 0.0;
                        }
                        1 => schema = (schema + 1) % 3,
                        2 => {
                            out.push((t, stale()));
                            continue;
                        }
                        3 => {
                            pos.retain(|_, c| *c > 0);
                        }
                        4..=9 => *pos.entry(idx).or_insert(0) += inc,
                        10..=12 => *neg.entry(idx).or_insert(0) += inc,
                        13 => zero += inc,
                        _ => {
                            for c in pos.values_mut() {
                                *c += inc;
                            }
                        }
                    }
                    sum += inc as f64 * 0.37;
                    out.push((t, hist(schema, zero, &pos, &neg, sum)));
                }
                out
            },
        )
    }

    proptest! {
        #[test]
        fn append_then_decode_round_trips(s in sequence()) {
            let chunks = append_all_int(&s);
            let mut decoded = Vec::new();
            for c in &chunks {
                decoded.extend(decode(c));
            }
            prop_assert_eq!(decoded.len(), s.len());
            for ((t, h), (wt, wh)) in decoded.iter().zip(&s) {
                prop_assert_eq!(t, wt);
                prop_assert_eq!(h.count, wh.count);
                prop_assert_eq!(h.zero_count, wh.zero_count);
                prop_assert_eq!(h.sum.to_bits(), wh.sum.to_bits());
                prop_assert_eq!(h.schema, wh.schema);
                // Same absolute counts per bucket index (widening only adds empty ones).
                let nonzero = |h: &Histogram| {
                    let f = h.to_float();
                    let mut v = Vec::new();
                    let mut i = -1i64;
                    let mut b = f.positive_buckets.iter();
                    for sp in &h.positive_spans {
                        i += sp.offset as i64 + 1;
                        for k in 0..sp.length as i64 {
                            let c = *b.next().unwrap();
                            if c != 0.0 { v.push((i + k, c)); }
                        }
                        i += sp.length as i64 - 1;
                    }
                    v
                };
                prop_assert_eq!(nonzero(h), nonzero(wh));
            }
            // Re-appending each chunk's decoded samples reproduces its bytes exactly.
            for c in &chunks {
                let again = append_all_int(&decode(c));
                prop_assert_eq!(again.len(), 1);
                let mut again = again.into_iter().next().unwrap();
                // The header of a cut chunk depends on its predecessor, not on its samples.
                again[2] = c[2];
                prop_assert_eq!(&again, c);
            }
        }

        /// A chunk started by `restart`, in an appender's own allocations, is the
        /// chunk a fresh appender makes with the old one as `prev`: the same bytes,
        /// header included, the same closed chunk handed out, and the same appends
        /// after it. Both flavours, cut every `every` samples, over sequences that
        /// change layouts, reset and go stale.
        #[test]
        fn restarting_in_place_makes_the_chunks_a_fresh_appender_makes(
            s in sequence(),
            every in 1usize..6,
        ) {
            let (mut fresh, mut kept) = (HistogramAppender::new(), HistogramAppender::new());
            let (mut fresh_out, mut kept_out) = (Vec::new(), Vec::new());
            let floats: Vec<(i64, storeapi::histogram::FloatHistogram)> =
                s.iter().map(|(t, h)| (*t, h.to_float())).collect();
            let (mut ffresh, mut fkept) =
                (crate::FloatHistogramAppender::new(), crate::FloatHistogramAppender::new());
            let (mut ffresh_out, mut fkept_out) = (Vec::new(), Vec::new());
            for (i, ((t, h), (_, f))) in s.iter().zip(&floats).enumerate() {
                if i > 0 && i % every == 0 {
                    let mut n = HistogramAppender::with_capacity(64);
                    let r = n.append(Some(&fresh), *t, h).expect("append");
                    prop_assert!(matches!(r, Appended::InPlace));
                    fresh_out.push(std::mem::replace(&mut fresh, n).into_bytes());
                    kept.restart(*t, h, 64, |b| kept_out.push(b.to_vec())).expect("restart");
                    let mut n = crate::FloatHistogramAppender::with_capacity(64);
                    let r = n.append(Some(&ffresh), *t, f).expect("append");
                    prop_assert!(matches!(r, Appended::InPlace));
                    ffresh_out.push(std::mem::replace(&mut ffresh, n).into_bytes());
                    fkept.restart(*t, f, 64, |b| fkept_out.push(b.to_vec())).expect("restart");
                } else {
                    for (a, out) in [(&mut fresh, &mut fresh_out), (&mut kept, &mut kept_out)] {
                        if let Appended::NewChunk(n) = a.append(None, *t, h).expect("append") {
                            out.push(std::mem::replace(a, n).into_bytes());
                        }
                    }
                    for (a, out) in [(&mut ffresh, &mut ffresh_out), (&mut fkept, &mut fkept_out)] {
                        if let Appended::NewChunk(n) = a.append(None, *t, f).expect("append") {
                            out.push(std::mem::replace(a, n).into_bytes());
                        }
                    }
                }
                prop_assert_eq!(fresh.bytes(), kept.bytes());
                prop_assert_eq!(fresh.last_is_as_given(), kept.last_is_as_given());
                prop_assert_eq!(ffresh.bytes(), fkept.bytes());
                prop_assert_eq!(ffresh.last_is_as_given(), fkept.last_is_as_given());
            }
            prop_assert_eq!(&fresh_out, &kept_out);
            prop_assert_eq!(&ffresh_out, &fkept_out);
        }

        /// What the head relies on to keep no copy of a series' last histogram: when
        /// an appender says its last sample is as given, that sample reads back from it
        /// with the given layout and counts; a widened sample or a stale marker never
        /// says so. Both flavours, over sequences that change layouts, reset and go stale.
        #[test]
        fn the_last_histogram_reads_back_when_stored_as_given(s in sequence()) {
            fn same_data(a: &Histogram, b: &Histogram) -> bool {
                a.schema == b.schema
                    && a.zero_threshold == b.zero_threshold
                    && a.zero_count == b.zero_count
                    && a.count == b.count
                    && a.sum.to_bits() == b.sum.to_bits()
                    && a.positive_spans == b.positive_spans
                    && a.negative_spans == b.negative_spans
                    && a.positive_buckets == b.positive_buckets
                    && a.negative_buckets == b.negative_buckets
                    && a.custom_values == b.custom_values
            }
            let mut cur = HistogramAppender::new();
            let mut fcur = crate::FloatHistogramAppender::new();
            for (t, h) in &s {
                let first = cur.num_samples() == 0;
                let cut = match cur.append(None, *t, h).expect("append") {
                    Appended::NewChunk(n) => {
                        cur = n;
                        true
                    }
                    Appended::InPlace | Appended::Recoded => first,
                };
                let fh = h.to_float();
                if let Appended::NewChunk(n) = fcur.append(None, *t, &fh).expect("append") {
                    fcur = n;
                }
                let stale = is_stale_nan(h.sum);
                prop_assert!(!(stale && cur.last_is_as_given()));
                prop_assert!(!(stale && fcur.last_is_as_given()));
                let back = cur.last_histogram().expect("a sample was appended");
                // A chunk's first sample is never widened.
                prop_assert!(!cut || stale || cur.last_is_as_given());
                if cur.last_is_as_given() {
                    prop_assert!(same_data(&back, h), "{back:?} != {h:?}");
                    prop_assert!(back.equals(h));
                } else if !stale {
                    // Widened: the same counts with empty buckets added.
                    prop_assert!(!same_data(&back, h));
                }
                prop_assert_eq!(fcur.last_is_as_given(), cur.last_is_as_given());
                if fcur.last_is_as_given() {
                    let fback = fcur.last_histogram().expect("a sample was appended");
                    prop_assert!(fback.equals(&fh), "{fback:?} != {fh:?}");
                    prop_assert_eq!(&fback.positive_spans, &fh.positive_spans);
                    prop_assert_eq!(&fback.negative_spans, &fh.negative_spans);
                }
            }
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(it) = HistogramIterator::new(&data) {
                let _ = it.take(70_000).count();
            }
        }
    }
}
