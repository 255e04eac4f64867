//! What the integer and float histogram chunks share: the header's counter-reset
//! flags, the bucket layout written once by the first sample (`histogram_meta.go`),
//! and the bucket-index arithmetic that decides whether a new histogram fits a chunk's
//! layout and which empty buckets must be inserted where.

use crate::ChunkError;
use crate::bstream::{BitReader, BitWrite};
use crate::varbit::{put_varbit_int, put_varbit_uint, read_varbit_int, read_varbit_uint};
use storeapi::histogram::{CUSTOM_BUCKETS_SCHEMA, CounterResetHint, Span};

/// Bytes before the bit stream: sample count (2, big-endian) and the flags byte.
pub const HISTOGRAM_HEADER_SIZE: usize = 3;

/// Buffer of a new histogram chunk when nothing predicts its size (Prometheus's figure
/// for a new chunk's stream).
pub const HISTOGRAM_INITIAL_CAPACITY: usize = 128;

/// The counter-reset flags in the top two bits of a histogram chunk's third byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CounterResetHeader {
    /// Nothing known about the first sample against the previous chunk.
    Unknown = 0b0000_0000,
    /// The chunk starts with a counter reset.
    CounterReset = 0b1000_0000,
    /// The chunk continues the previous one without a reset.
    NotCounterReset = 0b0100_0000,
    /// A chunk of gauge histograms.
    Gauge = 0b1100_0000,
}

/// Mask of the counter-reset flags in the flags byte.
pub const COUNTER_RESET_HEADER_MASK: u8 = 0b1100_0000;

impl CounterResetHeader {
    /// The flags of a header byte (other bits ignored).
    pub fn from_byte(b: u8) -> Self {
        match b & COUNTER_RESET_HEADER_MASK {
            0b1000_0000 => Self::CounterReset,
            0b0100_0000 => Self::NotCounterReset,
            0b1100_0000 => Self::Gauge,
            _ => Self::Unknown,
        }
    }

    /// Prometheus's `CounterResetHintToHeader`.
    pub fn from_hint(h: CounterResetHint) -> Self {
        match h {
            CounterResetHint::CounterReset => Self::CounterReset,
            CounterResetHint::NotCounterReset => Self::NotCounterReset,
            CounterResetHint::Gauge => Self::Gauge,
            CounterResetHint::Unknown => Self::Unknown,
        }
    }
}

/// The hint a reader gives the `num_read`-th sample (1-based) of a chunk: gauge chunks
/// say gauge; the first sample of a counter chunk is Unknown whatever the header says
/// (the previous chunk may have been replaced, e.g. by compaction), later ones
/// NotCounterReset (a reset would have cut the chunk).
pub(crate) fn read_hint(header: CounterResetHeader, num_read: u16) -> CounterResetHint {
    if header == CounterResetHeader::Gauge {
        CounterResetHint::Gauge
    } else if num_read > 1 {
        CounterResetHint::NotCounterReset
    } else {
        CounterResetHint::Unknown
    }
}

/// Sets the flags bits of a chunk's header byte.
pub(crate) fn set_header(buf: &mut [u8], h: CounterResetHeader) {
    if let Some(b) = buf.get_mut(2) {
        *b = (*b & !COUNTER_RESET_HEADER_MASK) | h as u8;
    }
}

/// The sample count in a chunk's first two bytes.
pub(crate) fn header_count(data: &[u8]) -> Result<u16, ChunkError> {
    match data.get(..HISTOGRAM_HEADER_SIZE) {
        Some(h) => Ok(u16::from_be_bytes([h[0], h[1]])),
        None => Err(ChunkError::Corrupt(
            "histogram chunk shorter than its header",
        )),
    }
}

/// Bucket layout of every sample in one chunk.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Layout {
    pub schema: i32,
    pub zero_threshold: f64,
    pub positive_spans: Vec<Span>,
    pub negative_spans: Vec<Span>,
    pub custom_values: Vec<f64>,
}

impl Layout {
    /// Becomes the layout of a chunk's first histogram, in its own vectors.
    pub(crate) fn assign(
        &mut self,
        schema: i32,
        zero_threshold: f64,
        positive_spans: &[Span],
        negative_spans: &[Span],
        custom_values: &[f64],
    ) {
        self.schema = schema;
        self.zero_threshold = zero_threshold;
        for (to, from) in [
            (&mut self.positive_spans, positive_spans),
            (&mut self.negative_spans, negative_spans),
        ] {
            to.clear();
            to.extend_from_slice(from);
        }
        self.custom_values.clear();
        self.custom_values.extend_from_slice(custom_values);
    }
}

/// Where a slice's bytes are: one of the regions an appender names for prefetching
/// (see [`crate::HistogramAppender::append_regions`]).
pub(crate) fn region<T>(v: &[T]) -> (*const u8, usize) {
    (v.as_ptr().cast(), std::mem::size_of_val(v))
}

/// The last byte of a chunk being written: where the next sample's bits go.
pub(crate) fn tail(buf: &[u8]) -> (*const u8, usize) {
    (buf.as_ptr().wrapping_add(buf.len().saturating_sub(1)), 1)
}

pub(crate) fn write_layout<W: BitWrite>(
    w: &mut W,
    schema: i32,
    zero_threshold: f64,
    positive: &[Span],
    negative: &[Span],
    custom_values: &[f64],
) {
    put_zero_threshold(w, zero_threshold);
    put_varbit_int(w, schema as i64);
    put_spans(w, positive);
    put_spans(w, negative);
    if schema == CUSTOM_BUCKETS_SCHEMA {
        put_varbit_uint(w, custom_values.len() as u64);
        for &v in custom_values {
            put_custom_bound(w, v);
        }
    }
}

/// Reads a layout; `bits_per_bucket` is the least a bucket costs in the first sample,
/// which bounds the span lengths a chunk of this size can really hold.
pub(crate) fn read_layout(
    r: &mut BitReader<'_>,
    bits_per_bucket: usize,
) -> Result<Layout, ChunkError> {
    let zero_threshold = read_zero_threshold(r)?;
    let schema = i32::try_from(read_varbit_int(r)?)
        .map_err(|_| ChunkError::Corrupt("histogram schema out of range"))?;
    let positive_spans = read_spans(r)?;
    let negative_spans = read_spans(r)?;
    let mut custom_values = Vec::new();
    if schema == CUSTOM_BUCKETS_SCHEMA {
        let n = read_varbit_uint(r)?;
        // Each bound takes at least five bits.
        if n > (r.remaining() / 5) as u64 {
            return Err(ChunkError::Corrupt(
                "more custom bounds than the chunk can hold",
            ));
        }
        custom_values.reserve(n as usize);
        for _ in 0..n {
            custom_values.push(read_custom_bound(r)?);
        }
    }
    let buckets = count_spans(&positive_spans) + count_spans(&negative_spans);
    if buckets.saturating_mul(bits_per_bucket as u64) > r.remaining() as u64 {
        return Err(ChunkError::Corrupt("more buckets than the chunk can hold"));
    }
    Ok(Layout {
        schema,
        zero_threshold,
        positive_spans,
        negative_spans,
        custom_values,
    })
}

/// Spans in chunk order: count, then per span its length and then its offset.
fn put_spans<W: BitWrite>(w: &mut W, spans: &[Span]) {
    put_varbit_uint(w, spans.len() as u64);
    for s in spans {
        put_varbit_uint(w, s.length as u64);
        put_varbit_int(w, s.offset as i64);
    }
}

fn read_spans(r: &mut BitReader<'_>) -> Result<Vec<Span>, ChunkError> {
    let n = read_varbit_uint(r)?;
    // A span takes at least two bits.
    if n > (r.remaining() / 2) as u64 {
        return Err(ChunkError::Corrupt("more spans than the chunk can hold"));
    }
    let mut spans = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let length = u32::try_from(read_varbit_uint(r)?)
            .map_err(|_| ChunkError::Corrupt("span length out of range"))?;
        let offset = i32::try_from(read_varbit_int(r)?)
            .map_err(|_| ChunkError::Corrupt("span offset out of range"))?;
        spans.push(Span { offset, length });
    }
    Ok(spans)
}

/// Zero threshold: 0 → byte 0; a power of two 2^(e-1) with -242 ≤ e ≤ 11 → byte
/// e + 243 (the default 2^-128 is byte 116); anything else → 255 + the raw float.
fn put_zero_threshold<W: BitWrite>(w: &mut W, threshold: f64) {
    if threshold == 0.0 {
        w.write_byte(0);
        return;
    }
    let bits = threshold.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    // Go's math.Frexp gives fraction 0.5 exactly for positive powers of two; its
    // exponent is then the biased exponent − 1022 (subnormals fall far below −242).
    let power_of_two =
        threshold > 0.0 && biased != 0 && biased != 0x7ff && bits & ((1 << 52) - 1) == 0;
    let exp = biased - 1022;
    if !power_of_two || !(-242..=11).contains(&exp) {
        w.write_byte(255);
        w.write_bits(bits, 64);
        return;
    }
    w.write_byte((exp + 243) as u8);
}

fn read_zero_threshold(r: &mut BitReader<'_>) -> Result<f64, ChunkError> {
    match r.read_byte()? {
        0 => Ok(0.0),
        255 => Ok(f64::from_bits(r.read_bits(64)?)),
        // 0.5 · 2^(b−243) = 2^(b−244), always a normal float for b in 1..=254.
        b => Ok(f64::from_bits(((b as i64 - 244 + 1023) as u64) << 52)),
    }
}

/// A custom bound: bounds that are whole thousandths in [0, 33554.43] are written as
/// varbit_uint(x·1000 + 1), others as a `0` bit and the raw float.
fn put_custom_bound<W: BitWrite>(w: &mut W, f: f64) {
    let tf = f * 1000.0;
    if !(0.0..=33_554_430.0).contains(&tf) || !is_whole_when_multiplied(f) {
        w.write_bit(false);
        w.write_bits(f.to_bits(), 64);
        return;
    }
    put_varbit_uint(w, tf.round() as u64 + 1);
}

fn is_whole_when_multiplied(f: f64) -> bool {
    let i = (f * 1000.0).round() as u64;
    i as f64 / 1000.0 == f
}

fn read_custom_bound(r: &mut BitReader<'_>) -> Result<f64, ChunkError> {
    match read_varbit_uint(r)? {
        0 => Ok(f64::from_bits(r.read_bits(64)?)),
        n => Ok((n - 1) as f64 / 1000.0),
    }
}

/// Number of buckets the spans describe.
pub(crate) fn count_spans(spans: &[Span]) -> u64 {
    spans.iter().map(|s| s.length as u64).sum()
}

/// Walks the absolute bucket indices of a span list (Prometheus's `bucketIterator`,
/// zero-length spans included).
struct BucketIter<'a> {
    spans: &'a [Span],
    span: usize,
    bucket: i64,
    idx: i64,
}

impl<'a> BucketIter<'a> {
    fn new(spans: &'a [Span]) -> Self {
        let idx = -1 + spans.first().map_or(0, |s| s.offset as i64);
        BucketIter {
            spans,
            span: 0,
            bucket: -1,
            idx,
        }
    }

    fn next(&mut self) -> Option<i64> {
        let cur = self.spans.get(self.span)?;
        if self.bucket < cur.length as i64 - 1 {
            self.bucket += 1;
            self.idx += 1;
            return Some(self.idx);
        }
        while self.span + 1 < self.spans.len() {
            self.span += 1;
            let s = self.spans[self.span];
            self.idx += s.offset as i64 + 1;
            self.bucket = 0;
            if s.length == 0 {
                self.idx -= 1;
                continue;
            }
            return Some(self.idx);
        }
        None
    }
}

/// Empty buckets to insert: `num` of them before position `pos` of the existing
/// buckets; `bucket_idx` is the (last) absolute index concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Insert {
    pub pos: usize,
    pub num: usize,
    pub bucket_idx: i64,
}

/// Whether a counter histogram with spans `b` and buckets fits a chunk whose last
/// histogram had spans `a`: every populated bucket of `a` is still there and did not
/// decrease. Returns the forward inserts (new buckets of `b`, to add to the chunk) and
/// backward inserts (empty buckets of `a` missing from `b`, to add to `b`). `None`
/// means a counter reset. Integer flavour (`expandIntSpansAndBuckets`).
///
/// Insert runs are split at gaps in bucket indices and carry the index of their first
/// bucket, as in Prometheus after PR #16893. Prometheus 3.5.3 itself merged runs across
/// gaps and kept the wrong index in `bucket_idx`, which made it write invalid spans
/// (a later span with a negative offset) when empty buckets went missing in the same
/// append that brought new ones; everywhere else both give the same bytes.
pub(crate) fn expand_int_spans_and_buckets(
    a: &[Span],
    b: &[Span],
    a_buckets: &[i64],
    b_buckets: &[i64],
) -> Option<(Vec<Insert>, Vec<Insert>)> {
    expand_spans_and_buckets(a, b, a_buckets, b_buckets, |prev: i64, d| {
        prev.wrapping_add(d)
    })
}

/// The float flavour (`expandFloatSpansAndBuckets`): buckets are absolute counts.
pub(crate) fn expand_float_spans_and_buckets(
    a: &[Span],
    b: &[Span],
    a_buckets: &[f64],
    b_buckets: &[f64],
) -> Option<(Vec<Insert>, Vec<Insert>)> {
    expand_spans_and_buckets(a, b, a_buckets, b_buckets, |_prev: f64, x| x)
}

/// Adds bucket `idx` to the open insert run, closing the run first at a gap.
fn add_insert(inserts: &mut Vec<Insert>, inter: &mut Insert, idx: i64) {
    if inter.num == 0 {
        inter.bucket_idx = idx;
    } else if inter.bucket_idx + inter.num as i64 != idx {
        inserts.push(*inter);
        inter.num = 0;
        inter.bucket_idx = idx;
    }
    inter.num += 1;
}

/// One side of the walk over two span lists.
struct Side<'a, C, F> {
    it: BucketIter<'a>,
    next: Option<i64>,
    count: C,
    count_idx: usize,
    count_at: F,
    inter: Insert,
    inserts: Vec<Insert>,
}

impl<'a, C: Copy + Default, F: Fn(usize, C) -> C> Side<'a, C, F> {
    fn new(spans: &'a [Span], count_at: F) -> Self {
        let mut it = BucketIter::new(spans);
        let next = it.next();
        let count = if next.is_some() {
            count_at(0, C::default())
        } else {
            C::default()
        };
        Side {
            it,
            next,
            count,
            count_idx: 0,
            count_at,
            inter: Insert::default(),
            inserts: Vec::new(),
        }
    }

    fn advance(&mut self) {
        if self.inter.num > 0 {
            self.inserts.push(self.inter);
            self.inter.num = 0;
        }
        self.next = self.it.next();
        self.inter.pos += 1;
        self.count_idx += 1;
        if self.next.is_some() {
            self.count = (self.count_at)(self.count_idx, self.count);
        }
    }

    fn finish(mut self) -> Vec<Insert> {
        if self.inter.num > 0 {
            self.inserts.push(self.inter);
        }
        self.inserts
    }
}

/// Both flavours: `count(prev, bucket)` turns a bucket as stored (a delta or an
/// absolute count) into the bucket's count, given the previous bucket's count.
fn expand_spans_and_buckets<C: Copy + PartialOrd + Default>(
    a: &[Span],
    b: &[Span],
    a_buckets: &[C],
    b_buckets: &[C],
    count: impl Fn(C, C) -> C + Copy,
) -> Option<(Vec<Insert>, Vec<Insert>)> {
    if a == b && a_buckets.len() == b_buckets.len() {
        // The common case, a series keeping its buckets: nothing to insert, only the
        // check that no bucket went down (what the walk below finds with equal indices).
        let (mut ca, mut cb) = (C::default(), C::default());
        for (&x, &y) in a_buckets.iter().zip(b_buckets) {
            ca = count(ca, x);
            cb = count(cb, y);
            if ca > cb {
                return None;
            }
        }
        return Some((Vec::new(), Vec::new()));
    }
    let at = |v: &[C], i: usize| v.get(i).copied().unwrap_or_default();
    expand_walk(
        a,
        b,
        |i, prev| count(prev, at(a_buckets, i)),
        |i, prev| count(prev, at(b_buckets, i)),
    )
}

/// The general walk of [`expand_spans_and_buckets`] over both layouts.
fn expand_walk<C: Copy + PartialOrd + Default>(
    a: &[Span],
    b: &[Span],
    a_count_at: impl Fn(usize, C) -> C,
    b_count_at: impl Fn(usize, C) -> C,
) -> Option<(Vec<Insert>, Vec<Insert>)> {
    let zero = C::default();
    let mut sa = Side::new(a, a_count_at);
    let mut sb = Side::new(b, b_count_at);
    loop {
        match (sa.next, sb.next) {
            (Some(ai), Some(bi)) if ai == bi => {
                if sa.count > sb.count {
                    return None;
                }
                sa.advance();
                sb.advance();
            }
            (Some(ai), bn) if bn.is_none_or(|bi| ai < bi) => {
                // b misses a bucket of a: fine only if it is empty in a.
                if sa.count != zero {
                    return None;
                }
                add_insert(&mut sb.inserts, &mut sb.inter, ai);
                sa.advance();
            }
            (_, Some(bi)) => {
                // a misses a bucket of b: insert it into the chunk.
                add_insert(&mut sa.inserts, &mut sa.inter, bi);
                sb.advance();
            }
            (None, None) => return Some((sa.finish(), sb.finish())),
            // Every other case is matched above.
            _ => return None,
        }
    }
}

/// For gauge histograms: inserts both ways and the merged spans (`expandSpansBothWays`).
pub(crate) fn expand_spans_both_ways(
    a: &[Span],
    b: &[Span],
) -> (Vec<Insert>, Vec<Insert>, Vec<Span>) {
    let mut ai = BucketIter::new(a);
    let mut bi = BucketIter::new(b);
    let mut f_inserts = Vec::new();
    let mut b_inserts = Vec::new();
    let mut merged = SpanBuilder::default();
    let mut f_inter = Insert::default();
    let mut b_inter = Insert::default();
    let mut av = ai.next();
    let mut bv = bi.next();
    loop {
        match (av, bv) {
            (Some(x), Some(y)) if x == y => {
                if f_inter.num > 0 {
                    f_inserts.push(f_inter);
                    f_inter.num = 0;
                }
                if b_inter.num > 0 {
                    b_inserts.push(b_inter);
                    b_inter.num = 0;
                }
                merged.add(x);
                av = ai.next();
                bv = bi.next();
                f_inter.pos += 1;
                b_inter.pos += 1;
            }
            (Some(x), Some(y)) if x < y => {
                b_inter.num += 1;
                if f_inter.num > 0 {
                    f_inserts.push(f_inter);
                    f_inter.num = 0;
                }
                merged.add(x);
                f_inter.pos += 1;
                av = ai.next();
            }
            (Some(_), Some(y)) => {
                f_inter.num += 1;
                if b_inter.num > 0 {
                    b_inserts.push(b_inter);
                    b_inter.num = 0;
                }
                merged.add(y);
                b_inter.pos += 1;
                bv = bi.next();
            }
            (Some(x), None) => {
                b_inter.num += 1;
                merged.add(x);
                av = ai.next();
            }
            (None, Some(y)) => {
                f_inter.num += 1;
                merged.add(y);
                bv = bi.next();
            }
            (None, None) => {
                if f_inter.num > 0 {
                    f_inserts.push(f_inter);
                }
                if b_inter.num > 0 {
                    b_inserts.push(b_inter);
                }
                return (f_inserts, b_inserts, merged.spans);
            }
        }
    }
}

/// Builds spans from ascending bucket indices (the `addBucket` closures).
#[derive(Default)]
struct SpanBuilder {
    spans: Vec<Span>,
    last: i64,
}

impl SpanBuilder {
    fn add(&mut self, b: i64) {
        let mut offset = b - self.last - 1;
        match self.spans.last_mut() {
            Some(s) if offset == 0 => s.length += 1,
            _ => {
                if self.spans.is_empty() {
                    offset += 1;
                }
                self.spans.push(Span {
                    offset: offset as i32,
                    length: 1,
                });
            }
        }
        self.last = b;
    }
}

/// The spans of `spans` with the backward inserts' buckets added (`adjustForInserts`).
pub(crate) fn adjust_for_inserts(spans: &[Span], inserts: &[Insert]) -> Vec<Span> {
    let Some(first) = inserts.first() else {
        return spans.to_vec();
    };
    let mut it = BucketIter::new(spans);
    let mut merged = SpanBuilder::default();
    let mut i = 0usize;
    let mut insert_idx = first.bucket_idx;
    let mut insert_num = first.num;
    let consume = |i: &mut usize, insert_idx: &mut i64, insert_num: &mut usize| {
        *insert_num = insert_num.saturating_sub(1);
        if *insert_num == 0 {
            *i += 1;
            if let Some(ins) = inserts.get(*i) {
                *insert_idx = ins.bucket_idx;
                *insert_num = ins.num;
            }
        } else {
            *insert_idx += 1;
        }
    };
    let mut bucket = it.next();
    while let Some(b) = bucket {
        if i < inserts.len() && insert_idx < b {
            merged.add(insert_idx);
            consume(&mut i, &mut insert_idx, &mut insert_num);
        } else {
            merged.add(b);
            bucket = it.next();
        }
    }
    while i < inserts.len() {
        merged.add(insert_idx);
        consume(&mut i, &mut insert_idx, &mut insert_num);
    }
    merged.spans
}

/// A bucket value type: integer deltas or absolute floats.
pub(crate) trait BucketValue:
    Copy + Default + std::ops::Add<Output = Self> + std::ops::Neg<Output = Self>
{
}
impl BucketValue for i64 {}
impl BucketValue for f64 {}

/// Inserts empty buckets into `input` (`insert`): with `deltas`, the first bucket
/// inserted before a position gets `-previous absolute` and the bucket after it is
/// rebased, so absolute counts stay the same. Several inserts may share a position.
/// Returns `None` if an insert lies beyond `input` (Prometheus panics).
pub(crate) fn insert<V: BucketValue>(
    input: &[V],
    inserts: &[Insert],
    deltas: bool,
) -> Option<Vec<V>> {
    let extra: usize = inserts.iter().map(|i| i.num).sum();
    let mut out = Vec::with_capacity(input.len() + extra);
    let mut v = V::default();
    let mut ii = 0usize;
    for (i, &d) in input.iter().enumerate() {
        if inserts.get(ii).is_none_or(|ins| ins.pos != i) {
            out.push(d);
            v = v + d;
            continue;
        }
        let mut first = true;
        while let Some(ins) = inserts.get(ii).filter(|ins| ins.pos == i) {
            if deltas && first {
                out.push(-v);
                first = false;
            } else {
                out.push(V::default());
            }
            for _ in 1..ins.num {
                out.push(V::default());
            }
            ii += 1;
        }
        out.push(if deltas { d + v } else { d });
        v = v + d;
    }
    while let Some(ins) = inserts.get(ii) {
        if ins.pos < input.len() {
            return None;
        }
        out.push(if deltas { -v } else { V::default() });
        for _ in 1..ins.num {
            out.push(V::default());
        }
        ii += 1;
        v = V::default();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bstream::BitWriter;

    fn sp(v: &[(i32, u32)]) -> Vec<Span> {
        v.iter()
            .map(|&(offset, length)| Span { offset, length })
            .collect()
    }

    #[test]
    fn zero_threshold_byte_rule() {
        let cases: &[(f64, Vec<u8>)] = &[
            (0.0, vec![0]),
            (2f64.powi(-128), vec![116]),
            (1.0, vec![244]),
            (1024.0, vec![254]),
            (2f64.powi(-243), vec![1]),
        ];
        for (v, want) in cases {
            let mut w = BitWriter::with_header(0, 0);
            put_zero_threshold(&mut w, *v);
            assert_eq!(&w.buf, want, "threshold {v}");
            let mut r = BitReader::new(&w.buf, 0);
            assert_eq!(read_zero_threshold(&mut r).unwrap(), *v);
        }
        // Not a power of two, too big, too small, negative: 255 + raw bits.
        for v in [0.001, 2048.0, 2f64.powi(-244), -1.0] {
            let mut w = BitWriter::with_header(0, 0);
            put_zero_threshold(&mut w, v);
            assert_eq!(w.buf.len(), 9);
            assert_eq!(w.buf[0], 255);
            let mut r = BitReader::new(&w.buf, 0);
            assert_eq!(read_zero_threshold(&mut r).unwrap(), v);
        }
    }

    #[test]
    fn custom_bounds_thousandths_rule() {
        for (v, bits) in [
            (0.1, 13usize),
            (0.0, 5),
            (33554.0, 32),
            (0.0001, 65),
            (-1.0, 65),
            (1e9, 65),
        ] {
            let mut w = BitWriter::with_header(0, 0);
            put_custom_bound(&mut w, v);
            assert_eq!(w.bit_len(), bits, "bound {v}");
            let mut r = BitReader::new(&w.buf, 0);
            assert_eq!(read_custom_bound(&mut r).unwrap(), v);
        }
    }

    #[test]
    fn layout_round_trip_with_chunk_span_order() {
        let mut w = BitWriter::with_header(0, 0);
        let pos = sp(&[(-2, 3), (4, 1)]);
        write_layout(
            &mut w,
            CUSTOM_BUCKETS_SCHEMA,
            0.0,
            &pos,
            &[],
            &[0.5, 1.0, 7.25],
        );
        // Pad so the bucket bound check sees room for four buckets.
        w.write_bits(0, 8);
        let mut r = BitReader::new(&w.buf, 0);
        let l = read_layout(&mut r, 1).unwrap();
        assert_eq!(l.schema, CUSTOM_BUCKETS_SCHEMA);
        assert_eq!(l.positive_spans, pos);
        assert_eq!(l.custom_values, vec![0.5, 1.0, 7.25]);
        // Span order: count 1 (`10 001`), then length 3 (`10 011`) before offset -2 (`10 110`).
        let mut w = BitWriter::with_header(0, 0);
        put_spans(&mut w, &sp(&[(-2, 3)]));
        assert_eq!(w.bit_len(), 15);
        assert_eq!(w.buf, vec![0b1000_1100, 0b1110_1100]);
    }

    #[test]
    fn layout_with_absurd_counts_is_rejected_without_allocating() {
        let mut w = BitWriter::with_header(0, 0);
        w.write_byte(0);
        put_varbit_int(&mut w, 0);
        put_varbit_uint(&mut w, u64::MAX); // span count
        let mut r = BitReader::new(&w.buf, 0);
        assert!(read_layout(&mut r, 1).is_err());
        let mut w = BitWriter::with_header(0, 0);
        w.write_byte(0);
        put_varbit_int(&mut w, 0);
        put_spans(&mut w, &sp(&[(0, u32::MAX)]));
        put_spans(&mut w, &[]);
        let mut r = BitReader::new(&w.buf, 0);
        assert!(read_layout(&mut r, 1).is_err());
    }

    #[test]
    fn forward_and_backward_inserts() {
        // Chunk has buckets 0,1 and 3; new histogram has 0, 2, 3, 4 with bucket 1 empty.
        let a = sp(&[(0, 2), (1, 1)]);
        let b = sp(&[(0, 1), (1, 3)]);
        let (fwd, bwd) = expand_int_spans_and_buckets(&a, &b, &[1, -1, 2], &[2, 0, 0, 1]).unwrap();
        assert_eq!(
            fwd,
            vec![
                Insert {
                    pos: 2,
                    num: 1,
                    bucket_idx: 2
                },
                Insert {
                    pos: 3,
                    num: 1,
                    bucket_idx: 4
                }
            ]
        );

        assert_eq!(
            bwd,
            vec![Insert {
                pos: 1,
                num: 1,
                bucket_idx: 1
            }]
        );
        // Runs split at gaps and keep their first index: a has empty 0 and 4, b has 5.
        let (fwd2, bwd2) =
            expand_int_spans_and_buckets(&sp(&[(0, 1), (3, 1)]), &sp(&[(5, 1)]), &[0, 0], &[1])
                .unwrap();
        assert_eq!(
            bwd2,
            vec![
                Insert {
                    pos: 0,
                    num: 1,
                    bucket_idx: 0
                },
                Insert {
                    pos: 0,
                    num: 1,
                    bucket_idx: 4
                }
            ]
        );
        assert_eq!(
            fwd2,
            vec![Insert {
                pos: 2,
                num: 1,
                bucket_idx: 5
            }]
        );
        assert_eq!(
            adjust_for_inserts(&sp(&[(5, 1)]), &bwd2),
            sp(&[(0, 1), (3, 2)])
        );
        assert_eq!(insert(&[1i64], &bwd2, true).unwrap(), vec![0, 0, 1]);
        // A populated bucket vanishing is a reset.
        assert!(expand_int_spans_and_buckets(&a, &b, &[1, 0, 1], &[2, 0, 0, 1]).is_none());
        // A decrease is a reset.
        assert!(expand_int_spans_and_buckets(&a, &a, &[3, -3, 2], &[2, -2, 2]).is_none());
    }

    #[test]
    fn insert_keeps_absolute_counts() {
        // Absolute 1,0,2 as deltas 1,-1,2; insert one bucket before pos 2 and one at the end.
        let ins = [
            Insert {
                pos: 2,
                num: 1,
                bucket_idx: 2,
            },
            Insert {
                pos: 3,
                num: 1,
                bucket_idx: 4,
            },
        ];
        let out = insert(&[1i64, -1, 2], &ins, true).unwrap();
        assert_eq!(out, vec![1, -1, 0, 2, -2]);
        let out = insert(&[1.0f64, 0.0, 2.0], &ins, false).unwrap();
        assert_eq!(out, vec![1.0, 0.0, 0.0, 2.0, 0.0]);
        assert!(
            insert(
                &[1i64, 2],
                &[
                    Insert {
                        pos: 1,
                        num: 1,
                        bucket_idx: 0
                    },
                    Insert {
                        pos: 0,
                        num: 1,
                        bucket_idx: 0
                    }
                ],
                true
            )
            .is_none()
        );
    }

    #[test]
    fn spans_both_ways_merge() {
        let (f, b, m) = expand_spans_both_ways(&sp(&[(0, 2)]), &sp(&[(1, 2)]));
        assert_eq!(m, sp(&[(0, 3)]));
        assert_eq!(
            f,
            vec![Insert {
                pos: 2,
                num: 1,
                bucket_idx: 0
            }]
        );
        assert_eq!(
            b,
            vec![Insert {
                pos: 0,
                num: 1,
                bucket_idx: 0
            }]
        );
        assert_eq!(
            adjust_for_inserts(
                &sp(&[(1, 1)]),
                &[Insert {
                    pos: 0,
                    num: 1,
                    bucket_idx: 0
                }]
            ),
            sp(&[(0, 2)])
        );
    }

    #[test]
    fn same_layout_shortcut_equals_the_walk() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..2000 {
            let spans = vec![
                Span {
                    offset: next(5) as i32 - 2,
                    length: next(4) as u32,
                },
                Span {
                    offset: next(3) as i32,
                    length: 1 + next(3) as u32,
                },
            ];
            let n = count_spans(&spans) as usize;
            let a: Vec<i64> = (0..n).map(|_| next(7) as i64 - 3).collect();
            let b: Vec<i64> = (0..n).map(|_| next(7) as i64 - 3).collect();
            let d = |v: &[i64], i: usize| v.get(i).copied().unwrap_or(0);
            let walk = expand_walk(
                &spans,
                &spans,
                |i, p: i64| p.wrapping_add(d(&a, i)),
                |i, p: i64| p.wrapping_add(d(&b, i)),
            );
            let fast = expand_int_spans_and_buckets(&spans, &spans, &a, &b);
            assert_eq!(fast.is_some(), walk.is_some(), "{spans:?} {a:?} {b:?}");
            if let (Some(f), Some(w)) = (fast, walk) {
                assert!(f.0.is_empty() && f.1.is_empty());
                assert_eq!((f.0.len(), f.1.len()), (w.0.len(), w.1.len()));
            }
        }
    }
}
