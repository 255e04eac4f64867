//! The float histogram chunk (`FLOAT_HISTOGRAM`, encoding 3), byte for byte as
//! Prometheus 3.5.3's `chunkenc.FloatHistogramChunk`.
//!
//! Same header and layout as the integer chunk. The first sample holds t (varbit int)
//! and count, zero count, sum and every absolute bucket as raw float bits; later
//! samples hold the delta-of-delta of t and every other field XORed against its own
//! previous value, each field with its own leading/trailing-zero window.

use crate::ChunkError;
use crate::bstream::{BitReader, BitWriter};
use crate::histogram::{Appended, check_shape, float_buckets_match};
use crate::histogram_layout::{
    CounterResetHeader, HISTOGRAM_HEADER_SIZE, Insert, Layout, adjust_for_inserts, count_spans,
    expand_float_spans_and_buckets, expand_spans_both_ways, header_count, insert, read_hint,
    read_layout, set_header, write_layout,
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
}

impl Default for FloatHistogramAppender {
    fn default() -> Self {
        Self::new()
    }
}

impl FloatHistogramAppender {
    /// An empty chunk (header Unknown).
    pub fn new() -> Self {
        FloatHistogramAppender {
            w: BitWriter::with_header(HISTOGRAM_HEADER_SIZE, 128),
            layout: Layout::default(),
            t: 0,
            t_delta: 0,
            sum: XorValue::FRESH,
            cnt: XorValue::FRESH,
            z_cnt: XorValue::FRESH,
            p_buckets: Vec::new(),
            n_buckets: Vec::new(),
        }
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
        if self.num_samples() == 0 {
            self.append_raw(t, h)?;
            if h.hint == CounterResetHint::Gauge {
                self.set_header(CounterResetHeader::Gauge);
            } else if h.hint == CounterResetHint::CounterReset {
                self.set_header(CounterResetHeader::CounterReset);
            } else if let Some(p) = prev {
                self.set_header(if p.appendable(h).counter_reset {
                    CounterResetHeader::CounterReset
                } else {
                    CounterResetHeader::NotCounterReset
                });
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
                n.append_raw(t, h)?;
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
            }
            if !fp.is_empty() || !fnn.is_empty() {
                let mut n = self.recode(fp, fnn, &h.positive_spans, &h.negative_spans)?;
                n.append_raw(t, h)?;
                *self = n;
                return Ok(Appended::Recoded);
            }
            self.append_raw(t, h)?;
            return Ok(Appended::InPlace);
        }
        let Some((fwd, bwd, merged)) = self.appendable_gauge(h) else {
            let mut n = Self::new();
            n.set_header(CounterResetHeader::Gauge);
            n.append_raw(t, h)?;
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
        }
        if !fwd[0].is_empty() || !fwd[1].is_empty() {
            let mut n = self.recode(&fwd[0], &fwd[1], &h.positive_spans, &h.negative_spans)?;
            n.append_raw(t, h)?;
            *self = n;
            return Ok(Appended::Recoded);
        }
        self.append_raw(t, h)?;
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
            n.append_raw(t, &old)?;
        }
        n.set_header(self.header());
        Ok(n)
    }

    /// Writes one sample (`appendFloatHistogram`); `h` must have this chunk's layout.
    fn append_raw(&mut self, t: i64, h: &FloatHistogram) -> Result<(), ChunkError> {
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
            write_layout(
                &mut self.w,
                h.schema,
                h.zero_threshold,
                &h.positive_spans,
                &h.negative_spans,
                &h.custom_values,
            );
            self.layout = Layout {
                schema: h.schema,
                zero_threshold: h.zero_threshold,
                positive_spans: h.positive_spans.clone(),
                negative_spans: h.negative_spans.clone(),
                custom_values: h.custom_values.clone(),
            };
            let fresh = |v: &f64| XorValue {
                value: *v,
                ..XorValue::FRESH
            };
            self.p_buckets = h.positive_buckets.iter().map(fresh).collect();
            self.n_buckets = h.negative_buckets.iter().map(fresh).collect();
            put_varbit_int(&mut self.w, t);
            self.w.write_bits(h.count.to_bits(), 64);
            self.w.write_bits(h.zero_count.to_bits(), 64);
            self.w.write_bits(h.sum.to_bits(), 64);
            self.cnt.value = h.count;
            self.z_cnt.value = h.zero_count;
            self.sum.value = h.sum;
            for b in h.positive_buckets.iter().chain(&h.negative_buckets) {
                self.w.write_bits(b.to_bits(), 64);
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
            put_varbit_int(&mut self.w, t_delta.wrapping_sub(self.t_delta));
            let w = &mut self.w;
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
        Ok(())
    }
}

fn write_xor_value(w: &mut BitWriter, field: &mut XorValue, v: f64) {
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
        FloatHistogram {
            hint: read_hint(self.header, self.read),
            schema: self.layout.schema,
            zero_threshold: self.layout.zero_threshold,
            zero_count: self.z_cnt.value,
            count: self.cnt.value,
            sum: self.sum.value,
            positive_spans: self.layout.positive_spans.clone(),
            negative_spans: self.layout.negative_spans.clone(),
            positive_buckets: self.p_buckets.iter().map(|x| x.value).collect(),
            negative_buckets: self.n_buckets.iter().map(|x| x.value).collect(),
            custom_values: self.layout.custom_values.clone(),
        }
    }
}

impl Iterator for FloatHistogramIterator<'_> {
    type Item = Result<(i64, FloatHistogram), ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.step_raw() {
            Ok(true) => Some(Ok((self.t, self.current()))),
            Ok(false) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
