//! The float histogram chunk (`FLOAT_HISTOGRAM`, encoding 3), byte for byte as
//! Prometheus 3.5.3's `chunkenc.FloatHistogramChunk`.
//!
//! Same header and layout as the integer chunk. The first sample holds t (varbit int)
//! and count, zero count, sum and every absolute bucket as raw float bits; later
//! samples hold the delta-of-delta of t and every other field XORed against its own
//! previous value, each field with its own leading/trailing-zero window.

use crate::ChunkError;
use crate::bstream::{BitReader, BitWrite, BitWriter};
use crate::histogram::{Appended, check_shape, float_buckets_match};
use crate::histogram_layout::{
    CounterResetHeader, HISTOGRAM_HEADER_SIZE, HISTOGRAM_INITIAL_CAPACITY, Insert, Layout,
    adjust_for_inserts, count_spans, expand_float_spans_and_buckets, expand_spans_both_ways,
    header_count, insert, read_hint, read_layout, region, set_header, tail, write_layout,
};
use crate::varbit::{NO_WINDOW, put_varbit_int, read_varbit_int, xor_read, xor_write};
use storeapi::histogram::{CUSTOM_BUCKETS_SCHEMA, CounterResetHint, FloatHistogram, Span};
use storeapi::is_stale_nan;

/// One XOR-compressed field: its last value and window.
#[derive(Debug, Clone, Copy, PartialEq)]
struct XorValue {
    value: f64,
    leading: u8,
    trailing: u8,
}

impl XorValue {
    const FRESH: XorValue = XorValue {
        value: 0.0,
        leading: NO_WINDOW,
        trailing: 0,
    };
    const READER: XorValue = XorValue {
        value: 0.0,
        leading: 0,
        trailing: 0,
    };
}

/// Verdict of [`FloatHistogramAppender::appendable`].
#[derive(Debug, Default)]
struct Appendable {
    forward: [Vec<Insert>; 2],
    backward: [Vec<Insert>; 2],
    ok: bool,
    counter_reset: bool,
}

/// A float histogram chunk being built, with Prometheus's `FloatHistogramAppender`
/// state.
#[derive(Debug, Clone)]
pub struct FloatHistogramAppender {
    w: BitWriter,
    layout: Layout,
    t: i64,
    t_delta: i64,
    sum: XorValue,
    cnt: XorValue,
    z_cnt: XorValue,
    p_buckets: Vec<XorValue>,
    n_buckets: Vec<XorValue>,
    /// See [`Self::last_is_as_given`].
    last_as_given: bool,
}

/// The counter-reset header of a new chunk whose first sample is `h`: from its hint, or
/// computed against `prev`, the previous chunk's appender (`None`, Unknown, without one).
fn first_header(
    prev: Option<&FloatHistogramAppender>,
    h: &FloatHistogram,
) -> Option<CounterResetHeader> {
    match h.hint {
        CounterResetHint::Gauge => Some(CounterResetHeader::Gauge),
        CounterResetHint::CounterReset => Some(CounterResetHeader::CounterReset),
        _ if prev.is_some_and(|p| p.appendable(h).counter_reset) => {
            Some(CounterResetHeader::CounterReset)
        }
        _ => prev.map(|_| CounterResetHeader::NotCounterReset),
    }
}

impl Default for FloatHistogramAppender {
    fn default() -> Self {
        Self::new()
    }
}

impl FloatHistogramAppender {
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
            [Vec::new(), Vec::new()],
        )
    }

    /// An empty chunk written to `w` (holding just the header), with `layout` and
    /// `buckets` (positive, negative) as room for the first sample's.
    fn empty_in(w: BitWriter, layout: Layout, buckets: [Vec<XorValue>; 2]) -> Self {
        let [p_buckets, n_buckets] = buckets;
        FloatHistogramAppender {
            w,
            layout,
            t: 0,
            t_delta: 0,
            sum: XorValue::FRESH,
            cnt: XorValue::FRESH,
            z_cnt: XorValue::FRESH,
            p_buckets,
            n_buckets,
            last_as_given: false,
        }
    }

    /// [`HistogramAppender::restart`](crate::HistogramAppender::restart) for float
    /// histograms: the series' next chunk, `h` at `t` its first sample, in this
    /// appender's allocations; `take` gets the current chunk's bytes first. On an error
    /// nothing changed and `take` was not called.
    pub fn restart(
        &mut self,
        t: i64,
        h: &FloatHistogram,
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
        let buckets = [
            std::mem::take(&mut self.p_buckets),
            std::mem::take(&mut self.n_buckets),
        ];
        *self = Self::empty_in(w, layout, buckets);
        // The shapes were checked and the chunk is empty: this cannot fail.
        self.append_raw(t, h, true)?;
        if let Some(hdr) = header {
            self.set_header(hdr);
        }
        Ok(())
    }

    /// Reopens an encoded chunk for appending (state restored by decoding it, as
    /// Prometheus's `FloatHistogramChunk.Appender()` does).
    pub fn from_bytes(data: &[u8]) -> Result<Self, ChunkError> {
        let mut it = FloatHistogramIterator::new(data)?;
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
        a.t_delta = it.t_delta;
        a.sum = it.sum;
        a.cnt = it.cnt;
        a.z_cnt = it.z_cnt;
        a.p_buckets = it.p_buckets;
        a.n_buckets = it.n_buckets;
        Ok(a)
    }

    /// The encoded chunk, as stored on disk.
    pub fn bytes(&self) -> &[u8] {
        &self.w.buf
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.w.buf
    }

    /// See [`crate::HistogramAppender::last_is_as_given`].
    pub fn last_is_as_given(&self) -> bool {
        self.last_as_given
    }

    /// See [`crate::HistogramAppender::last_histogram`].
    pub fn last_histogram(&self) -> Option<FloatHistogram> {
        if self.num_samples() == 0 {
            return None;
        }
        Some(float_histogram_of(
            &self.layout,
            read_hint(self.header(), 1),
            [self.z_cnt.value, self.cnt.value, self.sum.value],
            &self.p_buckets,
            &self.n_buckets,
        ))
    }

    /// See [`crate::HistogramAppender::append_regions`].
    pub fn append_regions(&self) -> [(*const u8, usize); 6] {
        [
            region(&self.w.buf[..self.w.buf.len().min(2)]),
            tail(&self.w.buf),
            region(&self.layout.positive_spans),
            region(&self.layout.negative_spans),
            region(&self.p_buckets),
            region(&self.n_buckets),
        ]
    }

    pub fn num_samples(&self) -> u16 {
        u16::from_be_bytes([self.w.buf[0], self.w.buf[1]])
    }

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

    /// Appends `h` at `t` as Prometheus's `AppendFloatHistogram` with
    /// `appendOnly=false`; see [`crate::HistogramAppender::append`].
    pub fn append(
        &mut self,
        prev: Option<&FloatHistogramAppender>,
        t: i64,
        h: &FloatHistogram,
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
            if !ap.ok || ap.counter_reset {
                let mut n = Self::new();
                if ap.counter_reset {
                    n.set_header(CounterResetHeader::CounterReset);
                }
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

    /// Prometheus's float `appendable`.
    fn appendable(&self, h: &FloatHistogram) -> Appendable {
        let mut out = Appendable::default();
        if self.num_samples() > 0 && self.header() == CounterResetHeader::Gauge {
            return out;
        }
        if h.hint == CounterResetHint::CounterReset {
            out.counter_reset = true;
            return out;
        }
        if is_stale_nan(h.sum) {
            out.ok = true;
            return out;
        }
        if is_stale_nan(self.sum.value) {
            return out;
        }
        if h.count < self.cnt.value {
            out.counter_reset = true;
            return out;
        }
        if h.schema != self.layout.schema || h.zero_threshold != self.layout.zero_threshold {
            return out;
        }
        if h.schema == CUSTOM_BUCKETS_SCHEMA
            && !float_buckets_match(&h.custom_values, &self.layout.custom_values)
        {
            out.counter_reset = true;
            return out;
        }
        if h.zero_count < self.z_cnt.value {
            out.counter_reset = true;
            return out;
        }
        let pa: Vec<f64> = self.p_buckets.iter().map(|x| x.value).collect();
        let Some((fp, bp)) = expand_float_spans_and_buckets(
            &self.layout.positive_spans,
            &h.positive_spans,
            &pa,
            &h.positive_buckets,
        ) else {
            out.counter_reset = true;
            return out;
        };
        let na: Vec<f64> = self.n_buckets.iter().map(|x| x.value).collect();
        let Some((fnn, bn)) = expand_float_spans_and_buckets(
            &self.layout.negative_spans,
            &h.negative_spans,
            &na,
            &h.negative_buckets,
        ) else {
            out.counter_reset = true;
            return out;
        };
        out.forward = [fp, fnn];
        out.backward = [bp, bn];
        out.ok = true;
        out
    }

    #[allow(clippy::type_complexity)]
    fn appendable_gauge(
        &self,
        h: &FloatHistogram,
    ) -> Option<([Vec<Insert>; 2], [Vec<Insert>; 2], [Vec<Span>; 2])> {
        if self.num_samples() > 0 && self.header() != CounterResetHeader::Gauge {
            return None;
        }
        if is_stale_nan(h.sum) {
            return Some(Default::default());
        }
        if is_stale_nan(self.sum.value)
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

    fn recode(
        &self,
        fp: &[Insert],
        fnn: &[Insert],
        p_spans: &[Span],
        n_spans: &[Span],
    ) -> Result<Self, ChunkError> {
        const MISFIT: ChunkError = ChunkError::BadHistogram("bucket inserts do not fit");
        let mut n = Self::new();
        for s in FloatHistogramIterator::new(self.bytes())? {
            let (t, mut old) = s?;
            if !old.is_stale() {
                old.positive_spans = p_spans.to_vec();
                old.negative_spans = n_spans.to_vec();
                if !fp.is_empty() {
                    old.positive_buckets =
                        insert(&old.positive_buckets, fp, false).ok_or(MISFIT)?;
                }
                if !fnn.is_empty() {
                    old.negative_buckets =
                        insert(&old.negative_buckets, fnn, false).ok_or(MISFIT)?;
                }
            }
            n.append_raw(t, &old, false)?;
        }
        n.set_header(self.header());
        Ok(n)
    }

    /// Writes one sample (`appendFloatHistogram`); `h` must have this chunk's layout.
    /// `as_given`: whether `h` is the histogram as the caller of `append` gave it (see
    /// [`Self::last_is_as_given`]; a stale marker never is, its layout is not written).
    fn append_raw(&mut self, t: i64, h: &FloatHistogram, as_given: bool) -> Result<(), ChunkError> {
        let num = self.num_samples();
        if num == u16::MAX {
            return Err(ChunkError::Full);
        }
        let stale;
        let h = if is_stale_nan(h.sum) {
            stale = FloatHistogram {
                sum: h.sum,
                ..Default::default()
            };
            &stale
        } else {
            h
        };
        let mut t_delta = 0i64;
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
            let fresh = |v: &f64| XorValue {
                value: *v,
                ..XorValue::FRESH
            };
            for (to, from) in [
                (&mut self.p_buckets, &h.positive_buckets),
                (&mut self.n_buckets, &h.negative_buckets),
            ] {
                to.clear();
                to.extend(from.iter().map(fresh));
            }
            put_varbit_int(w, t);
            w.write_bits(h.count.to_bits(), 64);
            w.write_bits(h.zero_count.to_bits(), 64);
            w.write_bits(h.sum.to_bits(), 64);
            self.cnt.value = h.count;
            self.z_cnt.value = h.zero_count;
            self.sum.value = h.sum;
            for b in h.positive_buckets.iter().chain(&h.negative_buckets) {
                w.write_bits(b.to_bits(), 64);
            }
        } else {
            if !is_stale_nan(h.sum)
                && (h.positive_buckets.len() != self.p_buckets.len()
                    || h.negative_buckets.len() != self.n_buckets.len())
            {
                return Err(ChunkError::BadHistogram(
                    "histogram buckets do not match the chunk's layout",
                ));
            }
            t_delta = t.wrapping_sub(self.t);
            let w = &mut self.w.sink();
            put_varbit_int(w, t_delta.wrapping_sub(self.t_delta));
            for (field, v) in [
                (&mut self.cnt, h.count),
                (&mut self.z_cnt, h.zero_count),
                (&mut self.sum, h.sum),
            ] {
                write_xor_value(w, field, v);
            }
            for (field, v) in self.p_buckets.iter_mut().zip(&h.positive_buckets) {
                write_xor_value(w, field, *v);
            }
            for (field, v) in self.n_buckets.iter_mut().zip(&h.negative_buckets) {
                write_xor_value(w, field, *v);
            }
        }
        let [a, b] = (num + 1).to_be_bytes();
        self.w.buf[0] = a;
        self.w.buf[1] = b;
        self.t = t;
        self.t_delta = t_delta;
        self.last_as_given = as_given && !is_stale_nan(h.sum);
        Ok(())
    }
}

/// The float histogram of a chunk's `layout` with these values (`[zero_count, count,
/// sum]`) and buckets: what the iterator reads and the appender last wrote.
fn float_histogram_of(
    layout: &Layout,
    hint: CounterResetHint,
    [zero_count, count, sum]: [f64; 3],
    positive_buckets: &[XorValue],
    negative_buckets: &[XorValue],
) -> FloatHistogram {
    FloatHistogram {
        hint,
        schema: layout.schema,
        zero_threshold: layout.zero_threshold,
        zero_count,
        count,
        sum,
        positive_spans: layout.positive_spans.clone(),
        negative_spans: layout.negative_spans.clone(),
        positive_buckets: positive_buckets.iter().map(|b| b.value).collect(),
        negative_buckets: negative_buckets.iter().map(|b| b.value).collect(),
        custom_values: layout.custom_values.clone(),
    }
}

fn write_xor_value<W: BitWrite>(w: &mut W, field: &mut XorValue, v: f64) {
    xor_write(w, v, field.value, &mut field.leading, &mut field.trailing);
    field.value = v;
}

fn widen(h: &mut FloatHistogram, bp: &[Insert], bn: &[Insert]) -> Result<(), ChunkError> {
    const MISFIT: ChunkError = ChunkError::BadHistogram("bucket inserts do not fit");
    if !bp.is_empty() {
        h.positive_buckets = insert(&h.positive_buckets, bp, false).ok_or(MISFIT)?;
    }
    if !bn.is_empty() {
        h.negative_buckets = insert(&h.negative_buckets, bn, false).ok_or(MISFIT)?;
    }
    check_shape(&h.positive_spans, h.positive_buckets.len())?;
    check_shape(&h.negative_spans, h.negative_buckets.len())
}

/// Decodes a float histogram chunk; corrupt input yields one error, never a panic.
#[derive(Debug, Clone)]
pub struct FloatHistogramIterator<'a> {
    r: BitReader<'a>,
    total: u16,
    read: u16,
    header: CounterResetHeader,
    layout: Layout,
    t: i64,
    t_delta: i64,
    sum: XorValue,
    cnt: XorValue,
    z_cnt: XorValue,
    p_buckets: Vec<XorValue>,
    n_buckets: Vec<XorValue>,
    failed: bool,
}

impl<'a> FloatHistogramIterator<'a> {
    pub fn new(data: &'a [u8]) -> Result<Self, ChunkError> {
        let total = header_count(data)?;
        Ok(FloatHistogramIterator {
            r: BitReader::new(data, HISTOGRAM_HEADER_SIZE * 8),
            total,
            read: 0,
            header: CounterResetHeader::from_byte(data[2]),
            layout: Layout::default(),
            t: 0,
            t_delta: 0,
            sum: XorValue::READER,
            cnt: XorValue::READER,
            z_cnt: XorValue::READER,
            p_buckets: Vec::new(),
            n_buckets: Vec::new(),
            failed: false,
        })
    }

    pub fn num_samples(&self) -> u16 {
        self.total
    }

    pub fn header(&self) -> CounterResetHeader {
        self.header
    }

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
            // A bucket costs 64 bits in the first sample.
            self.layout = read_layout(r, 64)?;
            let np = count_spans(&self.layout.positive_spans) as usize;
            let nn = count_spans(&self.layout.negative_spans) as usize;
            self.p_buckets = vec![XorValue::READER; np];
            self.n_buckets = vec![XorValue::READER; nn];
            self.t = read_varbit_int(r)?;
            self.cnt.value = f64::from_bits(r.read_bits(64)?);
            self.z_cnt.value = f64::from_bits(r.read_bits(64)?);
            self.sum.value = f64::from_bits(r.read_bits(64)?);
            for b in self.p_buckets.iter_mut().chain(self.n_buckets.iter_mut()) {
                b.value = f64::from_bits(r.read_bits(64)?);
            }
        } else {
            self.t_delta = self.t_delta.wrapping_add(read_varbit_int(r)?);
            self.t = self.t.wrapping_add(self.t_delta);
            for f in [&mut self.cnt, &mut self.z_cnt, &mut self.sum] {
                xor_read(r, &mut f.value, &mut f.leading, &mut f.trailing)?;
            }
            if !is_stale_nan(self.sum.value) {
                for f in self.p_buckets.iter_mut().chain(self.n_buckets.iter_mut()) {
                    xor_read(r, &mut f.value, &mut f.leading, &mut f.trailing)?;
                }
            }
        }
        self.read += 1;
        Ok(true)
    }

    fn current(&self) -> FloatHistogram {
        if is_stale_nan(self.sum.value) {
            return FloatHistogram {
                sum: self.sum.value,
                ..Default::default()
            };
        }
        float_histogram_of(
            &self.layout,
            read_hint(self.header, self.read),
            [self.z_cnt.value, self.cnt.value, self.sum.value],
            &self.p_buckets,
            &self.n_buckets,
        )
    }
}

impl Iterator for FloatHistogramIterator<'_> {
    type Item = Result<(i64, FloatHistogram), ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        let t = self.next_time()?;
        Some(t.map(|t| (t, self.current())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram_testutil::{append_all_float, hist, pack};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use storeapi::STALE_NAN_BITS;

    fn m(v: &[(i32, u64)]) -> BTreeMap<i32, u64> {
        v.iter().copied().collect()
    }

    fn fh(pos: &[(i32, u64)], sum: f64) -> FloatHistogram {
        hist(0, 1, &m(pos), &m(&[]), sum).to_float()
    }

    fn decode(data: &[u8]) -> Vec<(i64, FloatHistogram)> {
        FloatHistogramIterator::new(data)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    fn with_hint(mut h: FloatHistogram, hint: CounterResetHint) -> FloatHistogram {
        h.hint = hint;
        h
    }

    #[test]
    fn hand_checked_bytes_of_a_two_sample_chunk() {
        // Derived by hand from float_histogram.go: zero threshold 0 is byte 0, schema `0`,
        // no spans `0` `0`; t=5 is `110 000101`; count 1.0, zero count 1.0, sum 2.0 raw.
        let h1 = FloatHistogram {
            count: 1.0,
            zero_count: 1.0,
            sum: 2.0,
            ..Default::default()
        };
        let mut a = FloatHistogramAppender::new();
        a.append(None, 5, &h1).unwrap();
        let one = format!("{:064b}", 1.0f64.to_bits());
        let two = format!("{:064b}", 2.0f64.to_bits());
        let first = format!("00000000 0 0 0 110000101 {one} {one} {two}");
        let mut want = vec![0, 1, 0];
        want.extend(pack(&first));
        assert_eq!(a.bytes(), &want[..]);
        // t=10: dod 5; count 2.0 XOR 1.0 = 0x7ff0…: 1 leading, 52 trailing → `1 1 00001
        // 001011` + 11 ones; zero count and sum unchanged → `0` each.
        let h2 = FloatHistogram {
            count: 2.0,
            ..h1.clone()
        };
        a.append(None, 10, &h2).unwrap();
        let mut want = vec![0, 2, 0];
        want.extend(pack(&format!(
            "{first} 110000101 11 00001 001011 11111111111 0 0"
        )));
        assert_eq!(a.bytes(), &want[..]);
        assert_eq!(
            decode(a.bytes()),
            vec![
                (5, h1),
                (10, with_hint(h2, CounterResetHint::NotCounterReset))
            ]
        );
    }

    #[test]
    fn round_trip_recode_and_backward_widening() {
        let h1 = fh(&[(0, 1), (1, 0), (2, 1)], 1.0);
        let h2 = fh(&[(0, 2), (2, 1)], 2.0); // empty bucket 1 missing: widened
        let h3 = fh(&[(0, 2), (2, 1), (6, 4)], 3.0); // new bucket 6: recode
        let mut a = FloatHistogramAppender::new();
        a.append(None, 1, &h1).unwrap();
        assert!(matches!(a.append(None, 2, &h2).unwrap(), Appended::InPlace));
        assert!(matches!(a.append(None, 3, &h3).unwrap(), Appended::Recoded));
        let got = decode(a.bytes());
        let w = |pos: &[(i32, u64)], sum| fh(pos, sum);
        assert_eq!(got[0].1, w(&[(0, 1), (1, 0), (2, 1), (6, 0)], 1.0));
        assert_eq!(
            got[1].1,
            with_hint(
                w(&[(0, 2), (1, 0), (2, 1), (6, 0)], 2.0),
                CounterResetHint::NotCounterReset
            )
        );
        assert_eq!(
            got[2].1,
            with_hint(
                w(&[(0, 2), (1, 0), (2, 1), (6, 4)], 3.0),
                CounterResetHint::NotCounterReset
            )
        );
    }

    #[test]
    fn gauge_chunks_widen_both_ways_and_keep_gauge_hints() {
        let g = |pos: &[(i32, u64)], sum| with_hint(fh(pos, sum), CounterResetHint::Gauge);
        let s = vec![
            (1, g(&[(0, 5), (1, 5)], 9.0)),
            (2, g(&[(1, 1), (3, 2)], 1.0)),
            (3, g(&[(0, 1)], 0.5)),
        ];
        let chunks = append_all_float(&s);
        assert_eq!(chunks.len(), 1);
        assert_eq!(
            FloatHistogramIterator::new(&chunks[0]).unwrap().header(),
            CounterResetHeader::Gauge
        );
        let got = decode(&chunks[0]);
        assert_eq!(got[2].1, g(&[(0, 1), (1, 0), (3, 0)], 0.5));
        assert!(got.iter().all(|x| x.1.hint == CounterResetHint::Gauge));
    }

    #[test]
    fn cut_headers_and_previous_chunk() {
        let base = fh(&[(0, 3)], 1.0);
        let cut = |h2: &FloatHistogram| {
            let mut a = FloatHistogramAppender::new();
            a.append(None, 1, &base).unwrap();
            match a.append(None, 2, h2).unwrap() {
                Appended::NewChunk(n) => Some(n.header()),
                _ => None,
            }
        };
        assert_eq!(cut(&fh(&[(0, 4)], 1.0)), None);
        assert_eq!(
            cut(&fh(&[(0, 2)], 1.0)),
            Some(CounterResetHeader::CounterReset)
        );
        let mut s = fh(&[(0, 4)], 1.0);
        s.schema = 2;
        // The float appender leaves a schema-change chunk's header Unknown.
        assert_eq!(cut(&s), Some(CounterResetHeader::Unknown));
        let mut prev = FloatHistogramAppender::new();
        prev.append(None, 1, &base).unwrap();
        let mut n = FloatHistogramAppender::new();
        n.append(Some(&prev), 2, &s).unwrap();
        // …but a chunk started after a previous one says NotCounterReset for it.
        assert_eq!(n.header(), CounterResetHeader::NotCounterReset);
        let mut n = FloatHistogramAppender::new();
        n.append(Some(&prev), 2, &fh(&[(0, 1)], 1.0)).unwrap();
        assert_eq!(n.header(), CounterResetHeader::CounterReset);
    }

    #[test]
    fn stale_markers_and_corrupt_input() {
        let st = FloatHistogram {
            sum: f64::from_bits(STALE_NAN_BITS),
            ..Default::default()
        };
        let s: Vec<_> = (0..20u64)
            .map(|i| (i as i64, fh(&[(0, i), (2, i * 3), (-4, 1)], i as f64 / 3.0)))
            .chain([(20, st.clone()), (21, st.clone())])
            .collect();
        let chunks = append_all_float(&s);
        assert_eq!(chunks.len(), 1);
        let got = decode(&chunks[0]);
        assert!(got[20].1.is_stale() && got[21].1.is_stale());
        assert!(got[20].1.positive_buckets.is_empty());
        let full = &chunks[0];
        for cut in 0..full.len() {
            if let Ok(it) = FloatHistogramIterator::new(&full[..cut]) {
                assert!(it.collect::<Result<Vec<_>, _>>().is_err(), "cut at {cut}");
            }
        }
        for i in 3..full.len() {
            let mut d = full.clone();
            d[i] ^= 0x55;
            let _ = FloatHistogramIterator::new(&d).map(|it| it.count());
            let _ = FloatHistogramAppender::from_bytes(&d);
        }
    }

    #[test]
    fn reopening_continues_bit_exactly() {
        let s: Vec<_> = (0..15u64)
            .map(|i| (i as i64 * 10, fh(&[(0, i), (1, i / 2)], i as f64 * 0.3)))
            .collect();
        let all = append_all_float(&s);
        let mut a = FloatHistogramAppender::new();
        for (t, h) in &s[..4] {
            a.append(None, *t, h).unwrap();
        }
        let mut b = FloatHistogramAppender::from_bytes(a.bytes()).unwrap();
        for (t, h) in &s[4..] {
            b.append(None, *t, h).unwrap();
        }
        assert_eq!(vec![b.into_bytes()], all);
    }

    proptest! {
        #[test]
        fn append_decode_and_reappend_bytes(
            ops in proptest::collection::vec((0u8..12, -3i32..6, 0u64..4, 1i64..3000), 1..100),
            gauge in any::<bool>(),
        ) {
            let mut pos: BTreeMap<i32, u64> = BTreeMap::new();
            let (mut t, mut sum) = (0i64, 0.0);
            let mut s = Vec::new();
            for (op, idx, inc, dt) in ops {
                t += dt;
                match op {
                    0 => pos.clear(),
                    1 => pos.retain(|_, c| *c > 0),
                    2 if gauge => { pos.remove(&idx); }
                    _ => *pos.entry(idx).or_insert(0) += inc,
                }
                sum += inc as f64 * 0.7;
                let mut h = hist(0, 0, &pos, &BTreeMap::new(), sum).to_float();
                if gauge { h.hint = CounterResetHint::Gauge; }
                s.push((t, h));
            }
            let chunks = append_all_float(&s);
            let mut n = 0;
            for c in &chunks {
                let d = decode(c);
                for (t, h) in &d {
                    let (wt, wh) = &s[n];
                    prop_assert_eq!(t, wt);
                    prop_assert_eq!(h.count, wh.count);
                    prop_assert_eq!(h.sum, wh.sum);
                    n += 1;
                }
                let mut again = append_all_float(&d);
                prop_assert_eq!(again.len(), 1);
                let again = again.remove(0);
                prop_assert_eq!(&again[3..], &c[3..]);
            }
            prop_assert_eq!(n, s.len());
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(it) = FloatHistogramIterator::new(&data) {
                let _ = it.take(70_000).count();
            }
        }
    }
}
