//! WAL record payloads, encoded as Prometheus's `tsdb/record` encodes them. Every
//! payload starts with a type byte; integers are big-endian (`be64`) or varints
//! (`uvarint`, zig-zag `varint`) as noted, strings are `uvarint length, bytes`.
//!
//! - `1` series: repeated `be64 ref, uvarint n, n × (name, value)`;
//! - `2` samples: `be64 first ref, be64 first t`, then repeated
//!   `varint (ref - first ref), varint (t - first t), be64 value bits`;
//! - `3` tombstones: repeated `be64 ref, varint mint, varint maxt`;
//! - `4` exemplars: as samples, each followed by its labels (`uvarint n, n × (name, value)`);
//! - `5` mmap markers: repeated `be64 ref, be64 chunk ref`;
//! - `6` metadata: repeated `uvarint ref, byte type, uvarint n, n × (name, value)`;
//! - `7`-`10` integer / float histogram samples (standard and custom buckets).
//!
//! Histogram samples (types 7-10) are, as samples, `be64 first ref, be64 first t`, then
//! per sample `varint ref delta, varint t delta` and the histogram: hint byte, `varint`
//! schema, `be64` zero threshold, zero count and count (`uvarint` for integer
//! histograms, `be64` float bits for float ones), `be64` sum, positive then negative
//! spans (`uvarint n`, n × `varint offset, uvarint length`), positive then negative
//! buckets (`uvarint n`, n × `varint` delta or `be64` float), and for custom-bucket
//! schemas `uvarint n`, n × `be64` bound. Types 9 and 10 hold the custom-bucket (NHCB)
//! histograms of a batch, which types 7 and 8 leave out.
//!
//! Orrery's head stores float samples only: series and samples are applied; tombstones,
//! exemplars, metadata and mmap markers are decoded (so damage is found) and ignored;
//! histogram samples are decoded and handed to [`Visitor::histograms`], whose default
//! skips and counts them (see [`Skipped`]). Orrery writes series and samples records
//! only. Decoding checks every length and never panics on garbage.
//! Orrery's first format is decoded by [`legacy`].

use storeapi::histogram::{
    CUSTOM_BUCKETS_SCHEMA, CounterResetHint, FloatHistogram, Histogram, HistogramValue, Span,
};
use storeapi::{Label, Labels};

pub const TYPE_SERIES: u8 = 1;
pub const TYPE_SAMPLES: u8 = 2;
pub const TYPE_TOMBSTONES: u8 = 3;
pub const TYPE_EXEMPLARS: u8 = 4;
pub const TYPE_MMAP_MARKERS: u8 = 5;
pub const TYPE_METADATA: u8 = 6;
pub const TYPE_HISTOGRAMS: u8 = 7;
pub const TYPE_FLOAT_HISTOGRAMS: u8 = 8;
pub const TYPE_CUSTOM_HISTOGRAMS: u8 = 9;
pub const TYPE_CUSTOM_FLOAT_HISTOGRAMS: u8 = 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("truncated record")]
    Truncated,
    #[error("unknown record type {0}")]
    UnknownType(u8),
    #[error("invalid record: {0}")]
    Invalid(String),
}

/// Records Orrery's head cannot use, counted by [`Visitor::skipped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// Native histogram samples (types 7-10): Orrery's head has no histograms yet.
    Histograms,
    /// Tombstones (deletions through Prometheus's admin API): Orrery has no deletion.
    Tombstones,
    /// Exemplars, metadata and mmap markers: nothing in Orrery's head uses them.
    Other,
}

#[inline]
pub fn put_uvarint(buf: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        buf.push((x as u8) | 0x80);
        x >>= 7;
    }
    buf.push(x as u8);
}

#[inline]
pub fn put_varint(buf: &mut Vec<u8>, x: i64) {
    put_uvarint(buf, ((x as u64) << 1) ^ ((x >> 63) as u64));
}

/// Appends one series entry to a series record body.
pub fn put_series(buf: &mut Vec<u8>, r: u64, labels: &Labels) {
    buf.extend_from_slice(&r.to_be_bytes());
    put_labels(buf, labels);
}

/// Appends a label set as Prometheus's `EncodeLabels`: a count, then each name and
/// value with its length.
pub fn put_labels(buf: &mut Vec<u8>, labels: &Labels) {
    put_uvarint(buf, labels.len() as u64);
    for l in labels.iter() {
        put_uvarint(buf, l.name.len() as u64);
        buf.extend_from_slice(l.name.as_bytes());
        put_uvarint(buf, l.value.len() as u64);
        buf.extend_from_slice(l.value.as_bytes());
    }
}

/// Encodes samples into a samples record body (after its type byte): the first sample
/// sets the base ref and timestamp the others are stored relative to.
#[derive(Debug, Default, Clone, Copy)]
pub struct SamplesRecord {
    base: Option<(u64, i64)>,
}

impl SamplesRecord {
    #[inline]
    pub fn push(&mut self, buf: &mut Vec<u8>, r: u64, t: i64, v: f64) {
        let (br, bt) = *self.base.get_or_insert_with(|| {
            buf.extend_from_slice(&r.to_be_bytes());
            buf.extend_from_slice(&t.to_be_bytes());
            (r, t)
        });
        put_varint(buf, (r as i64).wrapping_sub(br as i64));
        put_varint(buf, t.wrapping_sub(bt));
        buf.extend_from_slice(&v.to_bits().to_be_bytes());
    }

    pub fn is_empty(&self) -> bool {
        self.base.is_none()
    }
}

/// Encodes exemplars into an exemplars record body (type 4, after its type byte), as
/// Prometheus's `EncodeExemplars`: base ref and timestamp from the first, then per
/// exemplar ref and time deltas, the value's bits and the labels.
/// (The samples record's layout plus each exemplar's labels.)
#[derive(Debug, Default, Clone, Copy)]
pub struct ExemplarsRecord(SamplesRecord);

impl ExemplarsRecord {
    pub fn push(&mut self, buf: &mut Vec<u8>, r: u64, t: i64, v: f64, labels: &Labels) {
        self.0.push(buf, r, t, v);
        put_labels(buf, labels);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Callbacks for [`decode`] and [`legacy::decode`].
pub trait Visitor {
    fn series(&mut self, r: u64, labels: Labels);
    fn sample(&mut self, r: u64, t: i64, v: f64);
    /// One XOR chunk (checkpoints of Orrery's first format).
    fn chunk(&mut self, r: u64, min_t: i64, max_t: i64, data: &[u8]);
    /// A record whose contents Orrery does not keep.
    fn skipped(&mut self, _what: Skipped) {}
    /// One exemplar of an exemplars record (type 4). The default drops it (counted as a
    /// skipped record per record, as before).
    fn exemplar(&mut self, _r: u64, _t: i64, _v: f64, _labels: Labels) {}
    /// The samples of one histogram record (types 7-10). The default is for callers
    /// that cannot store histograms: the record is counted as skipped.
    fn histograms(&mut self, samples: Vec<RefHistogramSample>) {
        let _ = samples;
        self.skipped(Skipped::Histograms);
    }
}

/// One histogram sample of a WAL record.
#[derive(Debug, Clone, PartialEq)]
pub struct RefHistogramSample {
    pub r: u64,
    pub t: i64,
    pub h: HistogramValue,
}

fn hint_byte(h: CounterResetHint) -> u8 {
    h as u8
}

fn put_spans(buf: &mut Vec<u8>, spans: &[Span]) {
    put_uvarint(buf, spans.len() as u64);
    for s in spans {
        put_varint(buf, s.offset as i64);
        put_uvarint(buf, s.length as u64);
    }
}

/// About the bytes [`put_histogram`] writes for `h` (an upper bound for its layout
/// with three-byte bucket deltas).
fn histogram_size_hint(h: &HistogramValue) -> usize {
    let (spans, buckets, custom) = match h {
        HistogramValue::Int(h) => (
            h.positive_spans.len() + h.negative_spans.len(),
            (h.positive_buckets.len() + h.negative_buckets.len()) * 3,
            h.custom_values.len(),
        ),
        HistogramValue::Float(h) => (
            h.positive_spans.len() + h.negative_spans.len(),
            (h.positive_buckets.len() + h.negative_buckets.len()) * 8,
            h.custom_values.len(),
        ),
    };
    // ref and time deltas, hint, schema, zero threshold/count, count, sum, lengths.
    64 + spans * 8 + buckets + custom * 8
}

fn put_histogram(buf: &mut Vec<u8>, h: &HistogramValue) {
    let be = |buf: &mut Vec<u8>, v: f64| buf.extend_from_slice(&v.to_bits().to_be_bytes());
    match h {
        HistogramValue::Int(h) => {
            buf.push(hint_byte(h.hint));
            put_varint(buf, h.schema as i64);
            be(buf, h.zero_threshold);
            put_uvarint(buf, h.zero_count);
            put_uvarint(buf, h.count);
            be(buf, h.sum);
            put_spans(buf, &h.positive_spans);
            put_spans(buf, &h.negative_spans);
            for side in [&h.positive_buckets, &h.negative_buckets] {
                put_uvarint(buf, side.len() as u64);
                for &b in side.iter() {
                    put_varint(buf, b);
                }
            }
            if h.schema == CUSTOM_BUCKETS_SCHEMA {
                put_uvarint(buf, h.custom_values.len() as u64);
                for &v in &h.custom_values {
                    be(buf, v);
                }
            }
        }
        HistogramValue::Float(h) => {
            buf.push(hint_byte(h.hint));
            put_varint(buf, h.schema as i64);
            be(buf, h.zero_threshold);
            be(buf, h.zero_count);
            be(buf, h.count);
            be(buf, h.sum);
            put_spans(buf, &h.positive_spans);
            put_spans(buf, &h.negative_spans);
            for side in [&h.positive_buckets, &h.negative_buckets] {
                put_uvarint(buf, side.len() as u64);
                for &b in side.iter() {
                    be(buf, b);
                }
            }
            if h.schema == CUSTOM_BUCKETS_SCHEMA {
                put_uvarint(buf, h.custom_values.len() as u64);
                for &v in &h.custom_values {
                    be(buf, v);
                }
            }
        }
    }
}

fn is_custom(h: &HistogramValue) -> bool {
    match h {
        HistogramValue::Int(h) => h.schema == CUSTOM_BUCKETS_SCHEMA,
        HistogramValue::Float(h) => h.schema == CUSTOM_BUCKETS_SCHEMA,
    }
}

/// Encodes one flavour's histogram samples as Prometheus's encoder does: a record of
/// type 7 (integer) or 8 (float) with the exponential-schema samples, whose base ref
/// and time are the first sample's even when that one has custom buckets, and a record
/// of type 9 or 10 with the custom-bucket samples (based on the first of those). A
/// record with nothing to hold is returned empty (not written). All samples must be of
/// the flavour `float` says.
pub fn encode_histogram_samples(samples: &[RefHistogramSample], float: bool) -> (Vec<u8>, Vec<u8>) {
    let refs: Vec<(u64, i64, &HistogramValue)> = samples.iter().map(|s| (s.r, s.t, &s.h)).collect();
    encode_histogram_refs(&refs, float)
}

/// A histogram sample of a record: series ref, timestamp, histogram.
pub type HistogramRef<'h> = (u64, i64, &'h HistogramValue);

/// The record types of one flavour: (exponential schemas, custom buckets).
fn histogram_record_types(float: bool) -> (u8, u8) {
    if float {
        (TYPE_FLOAT_HISTOGRAMS, TYPE_CUSTOM_FLOAT_HISTOGRAMS)
    } else {
        (TYPE_HISTOGRAMS, TYPE_CUSTOM_HISTOGRAMS)
    }
}

/// The records of [`encode_histogram_samples`], each given to `put` as (whether it is
/// the custom-bucket record, its type, its base, the samples): a record is only given
/// when it holds a sample. One pass finds both bases, stopping once it has them.
fn histogram_records<'h, I>(
    samples: I,
    float: bool,
    mut put: impl FnMut(bool, u8, (u64, i64), I::IntoIter),
) where
    I: IntoIterator<Item = HistogramRef<'h>> + Clone,
{
    let (std_type, custom_type) = histogram_record_types(float);
    let Some(first) = samples.clone().into_iter().next() else {
        return;
    };
    let (mut any_std, mut first_custom) = (false, None);
    for s in samples.clone() {
        if is_custom(s.2) {
            first_custom.get_or_insert(s);
        } else {
            any_std = true;
        }
        if any_std && first_custom.is_some() {
            break;
        }
    }
    if any_std {
        put(
            false,
            std_type,
            (first.0, first.1),
            samples.clone().into_iter(),
        );
    }
    if let Some(base) = first_custom {
        put(true, custom_type, (base.0, base.1), samples.into_iter());
    }
}

/// Appends one record body: the type, the base ref and time, then each sample of the
/// record's kind (`custom` or not; `samples` may hold both).
fn put_histogram_record<'h>(
    out: &mut Vec<u8>,
    custom: bool,
    typ: u8,
    (base_r, base_t): (u64, i64),
    samples: impl Iterator<Item = HistogramRef<'h>>,
) {
    out.push(typ);
    out.extend_from_slice(&base_r.to_be_bytes());
    out.extend_from_slice(&base_t.to_be_bytes());
    for (r, t, h) in samples.filter(|s| is_custom(s.2) == custom) {
        put_varint(out, (r as i64).wrapping_sub(base_r as i64));
        put_varint(out, t.wrapping_sub(base_t));
        put_histogram(out, h);
    }
}

/// [`encode_histogram_samples`] over borrowed samples.
pub fn encode_histogram_refs(samples: &[HistogramRef<'_>], float: bool) -> (Vec<u8>, Vec<u8>) {
    if samples.is_empty() {
        return (vec![histogram_record_types(float).0], Vec::new());
    }
    let mut recs = (Vec::new(), Vec::new());
    histogram_records(samples.iter().copied(), float, |custom, typ, base, list| {
        let out = if custom { &mut recs.1 } else { &mut recs.0 };
        // Sized once from the first histogram (records are transient buffers).
        out.reserve(17 + samples.len() * histogram_size_hint(samples[0].2));
        put_histogram_record(out, custom, typ, base, list);
    });
    recs
}

/// The records of [`encode_histogram_samples`], each framed (see [`super::start_frame`])
/// and appended to `frames`, a commit's WAL bytes: no record is built apart and copied in
/// (a 2,000-histogram record is over 100 KB).
pub fn put_histogram_frames<'h, I>(frames: &mut Vec<u8>, samples: I, float: bool)
where
    I: IntoIterator<Item = HistogramRef<'h>> + Clone,
    I::IntoIter: ExactSizeIterator,
{
    let Some(first) = samples.clone().into_iter().next() else {
        return;
    };
    let n = samples.clone().into_iter().len();
    histogram_records(samples, float, |custom, typ, base, list| {
        frames.reserve(super::FRAME_HEADER + 17 + n * histogram_size_hint(first.2));
        let at = super::start_frame(frames);
        put_histogram_record(frames, custom, typ, base, list);
        super::finish_frame(frames, at);
    });
}

pub(crate) struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn uvarint(&mut self) -> Result<u64, RecordError> {
        let mut x = 0u64;
        let mut s = 0u32;
        for k in 0..10 {
            let &b = self.b.get(self.i).ok_or(RecordError::Truncated)?;
            self.i += 1;
            if b < 0x80 {
                if k == 9 && b > 1 {
                    return Err(RecordError::Invalid("varint overflow".into()));
                }
                return Ok(x | ((b as u64) << s));
            }
            x |= ((b & 0x7f) as u64) << s;
            s += 7;
        }
        Err(RecordError::Invalid("varint overflow".into()))
    }

    fn varint(&mut self) -> Result<i64, RecordError> {
        let ux = self.uvarint()?;
        Ok(((ux >> 1) as i64) ^ -((ux & 1) as i64))
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self.i.checked_add(n).ok_or(RecordError::Truncated)?;
        let s = self.b.get(self.i..end).ok_or(RecordError::Truncated)?;
        self.i = end;
        Ok(s)
    }

    fn string(&mut self) -> Result<storeapi::CompactString, RecordError> {
        let n = self.uvarint()?;
        let n = usize::try_from(n).map_err(|_| RecordError::Truncated)?;
        let s = self.bytes(n)?;
        std::str::from_utf8(s)
            .map(storeapi::CompactString::new)
            .map_err(|_| RecordError::Invalid("label not UTF-8".into()))
    }

    fn done(&self) -> bool {
        self.i >= self.b.len()
    }
}

impl Reader<'_> {
    fn be64(&mut self) -> Result<u64, RecordError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn labels(&mut self, max: usize) -> Result<Labels, RecordError> {
        let n = self.uvarint()?;
        if n > max as u64 {
            return Err(RecordError::Truncated);
        }
        let mut ls = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let name = self.string()?;
            let value = self.string()?;
            ls.push(Label { name, value });
        }
        Labels::from_sorted_checked(ls).map_err(|e| RecordError::Invalid(e.to_string()))
    }

    /// A count of items that each take at least `min_bytes`, bounded by what is left.
    fn count(&mut self, min_bytes: usize) -> Result<usize, RecordError> {
        let n = self.uvarint()?;
        let left = (self.b.len() - self.i.min(self.b.len())) / min_bytes.max(1);
        if n > left as u64 {
            return Err(RecordError::Truncated);
        }
        Ok(n as usize)
    }

    fn f64(&mut self) -> Result<f64, RecordError> {
        Ok(f64::from_bits(self.be64()?))
    }

    fn spans(&mut self) -> Result<Vec<Span>, RecordError> {
        let n = self.count(2)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let offset = i32::try_from(self.varint()?)
                .map_err(|_| RecordError::Invalid("span offset out of range".into()))?;
            let length = u32::try_from(self.uvarint()?)
                .map_err(|_| RecordError::Invalid("span length out of range".into()))?;
            out.push(Span { offset, length });
        }
        Ok(out)
    }

    fn custom_values(&mut self, schema: i32) -> Result<Vec<f64>, RecordError> {
        if schema != CUSTOM_BUCKETS_SCHEMA {
            return Ok(Vec::new());
        }
        let n = self.count(8)?;
        (0..n).map(|_| self.f64()).collect()
    }

    fn schema(&mut self) -> Result<i32, RecordError> {
        i32::try_from(self.varint()?)
            .map_err(|_| RecordError::Invalid("schema out of range".into()))
    }

    fn histogram(&mut self) -> Result<Histogram, RecordError> {
        let hint = CounterResetHint::from_proto(self.bytes(1)?[0] as i32);
        let schema = self.schema()?;
        let zero_threshold = self.f64()?;
        let zero_count = self.uvarint()?;
        let count = self.uvarint()?;
        let sum = self.f64()?;
        let positive_spans = self.spans()?;
        let negative_spans = self.spans()?;
        let n = self.count(1)?;
        let positive_buckets = (0..n).map(|_| self.varint()).collect::<Result<_, _>>()?;
        let n = self.count(1)?;
        let negative_buckets = (0..n).map(|_| self.varint()).collect::<Result<_, _>>()?;
        let custom_values = self.custom_values(schema)?;
        Ok(Histogram {
            hint,
            schema,
            zero_threshold,
            zero_count,
            count,
            sum,
            positive_spans,
            negative_spans,
            positive_buckets,
            negative_buckets,
            custom_values,
        })
    }

    fn float_histogram(&mut self) -> Result<FloatHistogram, RecordError> {
        let hint = CounterResetHint::from_proto(self.bytes(1)?[0] as i32);
        let schema = self.schema()?;
        let zero_threshold = self.f64()?;
        let zero_count = self.f64()?;
        let count = self.f64()?;
        let sum = self.f64()?;
        let positive_spans = self.spans()?;
        let negative_spans = self.spans()?;
        let n = self.count(8)?;
        let positive_buckets = (0..n).map(|_| self.f64()).collect::<Result<_, _>>()?;
        let n = self.count(8)?;
        let negative_buckets = (0..n).map(|_| self.f64()).collect::<Result<_, _>>()?;
        let custom_values = self.custom_values(schema)?;
        Ok(FloatHistogram {
            hint,
            schema,
            zero_threshold,
            zero_count,
            count,
            sum,
            positive_spans,
            negative_spans,
            positive_buckets,
            negative_buckets,
            custom_values,
        })
    }

    fn skip_string(&mut self) -> Result<(), RecordError> {
        let n = usize::try_from(self.uvarint()?).map_err(|_| RecordError::Truncated)?;
        self.bytes(n).map(|_| ())
    }
}

/// Decodes one Prometheus record payload into `v`'s callbacks.
pub fn decode(payload: &[u8], v: &mut impl Visitor) -> Result<(), RecordError> {
    let (&typ, body) = payload.split_first().ok_or(RecordError::Truncated)?;
    let mut r = Reader { b: body, i: 0 };
    match typ {
        TYPE_SERIES => {
            while !r.done() {
                let sref = r.be64()?;
                let labels = r.labels(body.len())?;
                v.series(sref, labels);
            }
        }
        TYPE_SAMPLES => {
            if r.done() {
                return Ok(());
            }
            let bref = r.be64()?;
            let bt = r.be64()? as i64;
            while !r.done() {
                let dref = r.varint()?;
                let dt = r.varint()?;
                let val = f64::from_bits(r.be64()?);
                v.sample(
                    (bref as i64).wrapping_add(dref) as u64,
                    bt.wrapping_add(dt),
                    val,
                );
            }
        }
        TYPE_TOMBSTONES => {
            while !r.done() {
                r.be64()?;
                r.varint()?;
                r.varint()?;
            }
            v.skipped(Skipped::Tombstones);
        }
        TYPE_EXEMPLARS => {
            let mut parsed = Vec::new();
            if !r.done() {
                let bref = r.be64()?;
                let bt = r.be64()? as i64;
                while !r.done() {
                    let dref = r.varint()?;
                    let dt = r.varint()?;
                    let val = f64::from_bits(r.be64()?);
                    let labels = r.labels(body.len())?;
                    parsed.push((
                        (bref as i64).wrapping_add(dref) as u64,
                        bt.wrapping_add(dt),
                        val,
                        labels,
                    ));
                }
            }
            // Only a record that parsed whole is applied.
            for (r, t, val, labels) in parsed {
                v.exemplar(r, t, val, labels);
            }
            v.skipped(Skipped::Other);
        }
        TYPE_MMAP_MARKERS => {
            while !r.done() {
                r.be64()?;
                r.be64()?;
            }
            v.skipped(Skipped::Other);
        }
        TYPE_METADATA => {
            while !r.done() {
                r.uvarint()?;
                r.bytes(1)?;
                let n = r.uvarint()?;
                if n > body.len() as u64 {
                    return Err(RecordError::Truncated);
                }
                for _ in 0..n {
                    r.skip_string()?;
                    r.skip_string()?;
                }
            }
            v.skipped(Skipped::Other);
        }
        TYPE_HISTOGRAMS
        | TYPE_FLOAT_HISTOGRAMS
        | TYPE_CUSTOM_HISTOGRAMS
        | TYPE_CUSTOM_FLOAT_HISTOGRAMS => {
            let float = matches!(typ, TYPE_FLOAT_HISTOGRAMS | TYPE_CUSTOM_FLOAT_HISTOGRAMS);
            let mut out = Vec::new();
            if !r.done() {
                let bref = r.be64()?;
                let bt = r.be64()? as i64;
                while !r.done() {
                    let dref = r.varint()?;
                    let dt = r.varint()?;
                    let h = if float {
                        HistogramValue::Float(Box::new(r.float_histogram()?))
                    } else {
                        HistogramValue::Int(Box::new(r.histogram()?))
                    };
                    out.push(RefHistogramSample {
                        r: (bref as i64).wrapping_add(dref) as u64,
                        t: bt.wrapping_add(dt),
                        h,
                    });
                }
            }
            v.histograms(out);
        }
        t => return Err(RecordError::UnknownType(t)),
    }
    Ok(())
}

/// A visitor that collects everything (tests, tools).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Collect {
    pub series: Vec<(u64, Labels)>,
    /// `(ref, t, value bits)`.
    pub samples: Vec<(u64, i64, u64)>,
    pub chunks: Vec<(u64, i64, i64, Vec<u8>)>,
    pub skipped: Vec<Skipped>,
    pub histograms: Vec<RefHistogramSample>,
}

impl Visitor for Collect {
    fn series(&mut self, r: u64, labels: Labels) {
        self.series.push((r, labels));
    }
    fn sample(&mut self, r: u64, t: i64, v: f64) {
        self.samples.push((r, t, v.to_bits()));
    }
    fn chunk(&mut self, r: u64, min_t: i64, max_t: i64, data: &[u8]) {
        self.chunks.push((r, min_t, max_t, data.to_vec()));
    }
    fn skipped(&mut self, what: Skipped) {
        self.skipped.push(what);
    }
    fn histograms(&mut self, samples: Vec<RefHistogramSample>) {
        self.histograms.extend(samples);
    }
}

/// Orrery's first record format (read once, to migrate): like Prometheus's types 1 and 2
/// but with uvarint refs, per-series sample groups and little-endian values, plus
/// whole-chunk checkpoint records under type 3.
pub mod legacy {
    use super::{Label, Labels, Reader, RecordError, Visitor};

    pub const TYPE_SERIES: u8 = 1;
    pub const TYPE_SAMPLES: u8 = 2;
    pub const TYPE_CHUNKS: u8 = 3;

    /// Decodes one payload of the first format into `v`'s callbacks.
    pub fn decode(payload: &[u8], v: &mut impl Visitor) -> Result<(), RecordError> {
        let (&typ, body) = payload.split_first().ok_or(RecordError::Truncated)?;
        let mut r = Reader { b: body, i: 0 };
        match typ {
            TYPE_SERIES => {
                while !r.done() {
                    let sref = r.uvarint()?;
                    let n = r.uvarint()?;
                    if n > body.len() as u64 {
                        return Err(RecordError::Truncated);
                    }
                    let mut ls = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        let name = r.string()?;
                        let value = r.string()?;
                        ls.push(Label { name, value });
                    }
                    let labels = Labels::from_sorted_checked(ls)
                        .map_err(|e| RecordError::Invalid(e.to_string()))?;
                    v.series(sref, labels);
                }
                Ok(())
            }
            TYPE_SAMPLES => {
                while !r.done() {
                    let sref = r.uvarint()?;
                    let n = r.uvarint()?;
                    if n > body.len() as u64 {
                        return Err(RecordError::Truncated);
                    }
                    let mut t = 0i64;
                    for _ in 0..n {
                        t = t.wrapping_add(r.varint()?);
                        let vb = r.bytes(8)?;
                        let mut a = [0u8; 8];
                        a.copy_from_slice(vb);
                        v.sample(sref, t, f64::from_bits(u64::from_le_bytes(a)));
                    }
                }
                Ok(())
            }
            TYPE_CHUNKS => {
                while !r.done() {
                    let sref = r.uvarint()?;
                    let n = r.uvarint()?;
                    if n > body.len() as u64 {
                        return Err(RecordError::Truncated);
                    }
                    for _ in 0..n {
                        let min_t = r.varint()?;
                        let max_t = r.varint()?;
                        let len =
                            usize::try_from(r.uvarint()?).map_err(|_| RecordError::Truncated)?;
                        let data = r.bytes(len)?;
                        v.chunk(sref, min_t, max_t, data);
                    }
                }
                Ok(())
            }
            t => Err(RecordError::UnknownType(t)),
        }
    }

    /// A series record of the first format (tests of the migration).
    #[cfg(test)]
    pub fn series_record(entries: &[(u64, &Labels)]) -> Vec<u8> {
        let mut b = vec![TYPE_SERIES];
        for (r, l) in entries {
            super::put_uvarint(&mut b, *r);
            super::put_uvarint(&mut b, l.len() as u64);
            for x in l.iter() {
                super::put_uvarint(&mut b, x.name.len() as u64);
                b.extend_from_slice(x.name.as_bytes());
                super::put_uvarint(&mut b, x.value.len() as u64);
                b.extend_from_slice(x.value.as_bytes());
            }
        }
        b
    }

    /// A samples record of the first format with one group (tests of the migration).
    #[cfg(test)]
    pub fn samples_record(r: u64, samples: &[(i64, f64)]) -> Vec<u8> {
        let mut b = vec![TYPE_SAMPLES];
        super::put_uvarint(&mut b, r);
        super::put_uvarint(&mut b, samples.len() as u64);
        let mut prev = 0i64;
        for &(t, v) in samples {
            super::put_varint(&mut b, t.wrapping_sub(prev));
            b.extend_from_slice(&v.to_bits().to_le_bytes());
            prev = t;
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit's framed records are the records `encode_histogram_samples` returns,
    /// each framed, the empty ones left out: for batches of one kind, of both kinds in
    /// either order, and none.
    #[test]
    fn framed_histogram_records_equal_the_records_framed() {
        let batches = [
            vec![],
            vec![int_sample(3, 7), int_sample(9, 8)],
            vec![nhcb_sample(4, 900)],
            vec![
                nhcb_sample(4, 900),
                int_sample(10, 1000),
                nhcb_sample(2, 1100),
            ],
            vec![int_sample(10, 1000), nhcb_sample(4, 900), int_sample(1, 5)],
        ];
        for batch in &batches {
            let (std, custom) = encode_histogram_samples(batch, false);
            let mut want = vec![0xEE];
            for rec in [std, custom] {
                if rec.len() > 1 {
                    let at = super::super::start_frame(&mut want);
                    want.extend_from_slice(&rec);
                    super::super::finish_frame(&mut want, at);
                }
            }
            let mut got = vec![0xEE];
            put_histogram_frames(&mut got, batch.iter().map(|s| (s.r, s.t, &s.h)), false);
            assert_eq!(got, want, "batch of {}", batch.len());
        }
    }

    #[test]
    fn varints_read_back_at_every_width_after_other_bytes() {
        let mut values: Vec<i64> = vec![0, 1, -1, 63, -64, 64, i64::MAX, i64::MIN];
        values.extend((0..64).map(|k| 1i64 << k));
        values.extend((0..64).map(|k| (1i64 << k).wrapping_neg()));
        let mut buf = vec![0xAB];
        for &v in &values {
            put_varint(&mut buf, v);
            put_uvarint(&mut buf, v as u64);
        }
        let mut r = Reader { b: &buf, i: 1 };
        for &v in &values {
            let z = r.uvarint().unwrap();
            assert_eq!(((z >> 1) as i64) ^ -((z & 1) as i64), v);
            assert_eq!(r.uvarint().unwrap(), v as u64);
        }
        assert_eq!(r.i, buf.len());
        assert_eq!(buf[0], 0xAB);
    }

    fn samples_record(samples: &[(u64, i64, f64)]) -> Vec<u8> {
        let mut buf = vec![TYPE_SAMPLES];
        let mut rec = SamplesRecord::default();
        for &(r, t, v) in samples {
            rec.push(&mut buf, r, t, v);
        }
        buf
    }

    #[test]
    fn series_and_samples_round_trip() {
        let l = Labels::from_pairs([("__name__", "up"), ("job", "x")]).unwrap();
        let mut buf = vec![TYPE_SERIES];
        put_series(&mut buf, 7, &l);
        put_series(&mut buf, 300, &l);
        let mut c = Collect::default();
        decode(&buf, &mut c).unwrap();
        assert_eq!(c.series, vec![(7, l.clone()), (300, l)]);

        let buf = samples_record(&[(5, -5, 1.0), (5, 100, f64::NAN), (1 << 40, i64::MAX, -0.0)]);
        let mut c = Collect::default();
        decode(&buf, &mut c).unwrap();
        assert_eq!(
            c.samples,
            vec![
                (5, -5, 1.0f64.to_bits()),
                (5, 100, f64::NAN.to_bits()),
                (1 << 40, i64::MAX, (-0.0f64).to_bits())
            ]
        );
    }

    /// Bytes as Prometheus's encoder writes them (`record.Encoder.Samples` for refs 10
    /// and 12 at t=1000 and 1015): base ref and time big-endian, zig-zag deltas, BE bits.
    #[test]
    fn samples_bytes_are_prometheus_layout() {
        let buf = samples_record(&[(10, 1000, 1.5), (12, 1015, 2.0)]);
        let mut want = vec![2u8];
        want.extend_from_slice(&10u64.to_be_bytes());
        want.extend_from_slice(&1000i64.to_be_bytes());
        want.extend_from_slice(&[0, 0]);
        want.extend_from_slice(&1.5f64.to_bits().to_be_bytes());
        want.extend_from_slice(&[4, 30]);
        want.extend_from_slice(&2.0f64.to_bits().to_be_bytes());
        assert_eq!(buf, want);
    }

    #[test]
    fn other_prometheus_records_are_decoded_and_counted() {
        let mut tomb = vec![TYPE_TOMBSTONES];
        tomb.extend_from_slice(&3u64.to_be_bytes());
        put_varint(&mut tomb, -5);
        put_varint(&mut tomb, 50);
        let mut meta = vec![TYPE_METADATA];
        put_uvarint(&mut meta, 3);
        meta.push(1);
        put_uvarint(&mut meta, 2);
        for s in ["UNIT", "seconds", "HELP", "h"] {
            put_uvarint(&mut meta, s.len() as u64);
            meta.extend_from_slice(s.as_bytes());
        }
        let mut mm = vec![TYPE_MMAP_MARKERS];
        mm.extend_from_slice(&[0; 16]);
        // Histogram records: the default visitor counts them as skipped (Collect keeps
        // them, see `histogram_records_*`).
        let (hist, _) = encode_histogram_samples(&[int_sample(3, 7)], false);
        struct Default_(Vec<Skipped>);
        impl Visitor for Default_ {
            fn series(&mut self, _: u64, _: Labels) {}
            fn sample(&mut self, _: u64, _: i64, _: f64) {}
            fn chunk(&mut self, _: u64, _: i64, _: i64, _: &[u8]) {}
            fn skipped(&mut self, what: Skipped) {
                self.0.push(what);
            }
        }
        let mut d = Default_(vec![]);
        decode(&hist, &mut d).unwrap();
        decode(&[TYPE_FLOAT_HISTOGRAMS], &mut d).unwrap();
        assert_eq!(d.0, vec![Skipped::Histograms, Skipped::Histograms]);
        let mut c = Collect::default();
        for r in [&tomb, &meta, &mm] {
            decode(r, &mut c).unwrap();
        }
        assert_eq!(
            c.skipped,
            vec![Skipped::Tombstones, Skipped::Other, Skipped::Other]
        );
        assert!(decode(&tomb[..tomb.len() - 1], &mut c).is_err());
    }

    fn int_sample(r: u64, t: i64) -> RefHistogramSample {
        RefHistogramSample {
            r,
            t,
            h: HistogramValue::Int(Box::new(Histogram {
                hint: CounterResetHint::NotCounterReset,
                schema: 3,
                zero_threshold: 2f64.powi(-128),
                zero_count: 1,
                count: 5,
                sum: 2.5,
                positive_spans: vec![Span {
                    offset: -1,
                    length: 2,
                }],
                positive_buckets: vec![1, 2],
                ..Default::default()
            })),
        }
    }

    fn nhcb_sample(r: u64, t: i64) -> RefHistogramSample {
        RefHistogramSample {
            r,
            t,
            h: HistogramValue::Int(Box::new(Histogram {
                schema: CUSTOM_BUCKETS_SCHEMA,
                count: 3,
                sum: 1.0,
                positive_spans: vec![Span {
                    offset: 0,
                    length: 2,
                }],
                positive_buckets: vec![1, 1],
                custom_values: vec![0.5],
                ..Default::default()
            })),
        }
    }

    /// Bytes built by hand from Prometheus 3.5.3's `EncodeHistogram`: hint byte, zig-zag
    /// schema, BE zero threshold, uvarint zero count and count, BE sum, spans as
    /// (varint offset, uvarint length), buckets as varints, custom bounds only for -53.
    #[test]
    fn histogram_records_have_prometheus_bytes() {
        let be = |v: f64| v.to_bits().to_be_bytes();
        let (rec, custom) = encode_histogram_samples(&[int_sample(10, 1000)], false);
        assert!(custom.is_empty());
        let mut want = vec![TYPE_HISTOGRAMS];
        want.extend_from_slice(&10u64.to_be_bytes());
        want.extend_from_slice(&1000i64.to_be_bytes());
        want.extend_from_slice(&[0, 0, 2, 6]);
        want.extend_from_slice(&be(2f64.powi(-128)));
        want.extend_from_slice(&[1, 5]);
        want.extend_from_slice(&be(2.5));
        want.extend_from_slice(&[1, 1, 2, 0, 2, 2, 4, 0]);
        assert_eq!(rec, want);

        // A batch with an NHCB sample: type 7 keeps the first sample as its base and
        // leaves the NHCB one out; type 9 holds it, based on itself.
        let (rec, custom) =
            encode_histogram_samples(&[nhcb_sample(4, 900), int_sample(10, 1000)], false);
        assert_eq!(&rec[1..9], &4u64.to_be_bytes());
        // ref delta 6 and time delta 100 as zig-zag varints.
        assert_eq!(&rec[17..20], &[12, 0xc8, 0x01]);
        let mut want = vec![TYPE_CUSTOM_HISTOGRAMS];
        want.extend_from_slice(&4u64.to_be_bytes());
        want.extend_from_slice(&900i64.to_be_bytes());
        want.extend_from_slice(&[0, 0, 0, 105]);
        want.extend_from_slice(&be(0.0));
        want.extend_from_slice(&[0, 3]);
        want.extend_from_slice(&be(1.0));
        want.extend_from_slice(&[1, 0, 2, 0, 2, 2, 2, 0, 1]);
        want.extend_from_slice(&be(0.5));
        assert_eq!(custom, want);
        // Only NHCB samples: no type 7 record at all.
        let (rec, _) = encode_histogram_samples(&[nhcb_sample(4, 900)], false);
        assert!(rec.is_empty());
    }

    #[test]
    fn histogram_records_round_trip() {
        let f = RefHistogramSample {
            r: 1 << 40,
            t: -5,
            h: HistogramValue::Float(Box::new(FloatHistogram {
                hint: CounterResetHint::Gauge,
                schema: -2,
                zero_threshold: 0.001,
                zero_count: 0.5,
                count: 7.25,
                sum: f64::NAN,
                positive_spans: vec![Span {
                    offset: 2,
                    length: 1,
                }],
                negative_spans: vec![
                    Span {
                        offset: -3,
                        length: 2,
                    },
                    Span {
                        offset: 1,
                        length: 1,
                    },
                ],
                positive_buckets: vec![1.0],
                negative_buckets: vec![2.0, 0.0, 4.25],
                ..Default::default()
            })),
        };
        let mut nf = nhcb_sample(2, 3);
        if let HistogramValue::Int(h) = &nf.h {
            nf.h = HistogramValue::Float(Box::new(h.to_float()));
        }
        let ints = vec![int_sample(1, 10), nhcb_sample(2, 20), int_sample(3, 30)];
        let floats = vec![f.clone(), nf.clone()];
        let mut c = Collect::default();
        for (batch, float) in [(&ints, false), (&floats, true)] {
            let (a, b) = encode_histogram_samples(batch, float);
            for rec in [a, b] {
                if !rec.is_empty() {
                    decode(&rec, &mut c).unwrap();
                }
            }
        }
        let key = |s: &RefHistogramSample| format!("{s:?}");
        let mut got: Vec<String> = c.histograms.iter().map(key).collect();
        let mut want: Vec<String> = ints.iter().chain(&floats).map(key).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        assert!(c.skipped.is_empty());
        // Truncated anywhere: an error, never a panic.
        let (rec, _) = encode_histogram_samples(&[f], true);
        for cut in 1..rec.len() {
            if cut == 1 || cut == 17 {
                continue; // type byte alone, or with the bases: no samples, valid
            }
            assert!(
                decode(&rec[..cut], &mut Collect::default()).is_err(),
                "cut {cut}"
            );
        }
    }

    proptest::proptest! {
        /// Any series and samples records decode to exactly what was encoded.
        #[test]
        fn records_round_trip(
            series in proptest::collection::vec(
                (proptest::prelude::any::<u64>(),
                 proptest::collection::btree_map("[a-z_][a-z0-9_]{0,8}", "\\PC{1,12}", 1..6)),
                0..20),
            samples in proptest::collection::vec(
                (proptest::prelude::any::<u64>(), proptest::prelude::any::<i64>(), proptest::prelude::any::<u64>()),
                0..60),
        ) {
            let mut buf = vec![TYPE_SERIES];
            let mut want_series = vec![];
            for (r, m) in &series {
                let l = Labels::from_pairs(m.iter().map(|(k, v)| (k.clone(), v.clone()))).unwrap();
                put_series(&mut buf, *r, &l);
                want_series.push((*r, l));
            }
            let mut c = Collect::default();
            decode(&buf, &mut c).unwrap();
            proptest::prop_assert_eq!(c.series, want_series);

            let s: Vec<(u64, i64, f64)> = samples.iter().map(|&(r, t, v)| (r, t, f64::from_bits(v))).collect();
            let buf = samples_record(&s);
            let mut c = Collect::default();
            decode(&buf, &mut c).unwrap();
            proptest::prop_assert_eq!(c.samples, samples);
        }

        /// Truncated or bit-flipped records never panic.
        #[test]
        fn damaged_records_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode(&data, &mut Collect::default());
            let _ = legacy::decode(&data, &mut Collect::default());
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for p in [
            &[][..],
            &[99],
            &[1, 0, 0, 0, 0, 0, 0, 0, 1, 5, 200],
            &[2, 1, 0xff, 0xff, 0xff],
            &[2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        ] {
            assert!(decode(p, &mut Collect::default()).is_err(), "{p:?}");
        }
        for p in [
            &[][..],
            &[9],
            &[1, 5, 200],
            &[2, 1, 0xff, 0xff, 0xff],
            &[3, 1, 1, 0, 0, 200],
        ] {
            assert!(legacy::decode(p, &mut Collect::default()).is_err(), "{p:?}");
        }
    }
}
