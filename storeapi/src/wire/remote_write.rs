//! Remote-write 1.0 bodies: a fast decoder that walks the protobuf bytes of a (snappy-
//! decompressed) `prometheus.WriteRequest` and borrows label names and values from the
//! buffer (float samples, native histograms, exemplars, metadata), and an encoder for
//! clients, tests and benchmarks.
//!
//! The decoder never allocates per label: [`WriteRequestReader::next_series`] fills a
//! caller-owned [`SeriesView`] whose vectors are reused from one series to the next. Every
//! read is bounds-checked; malformed input is an error, never a panic.

pub use super::proto_reader::DecodeError;
use super::proto_reader::{Cursor, WT_I64, WT_LEN, WT_VARINT};
pub use super::rw_histogram::{DEFAULT_MAX_HISTOGRAM_BUCKETS, DecodeLimits, decode_histogram};
use crate::histogram::HistogramSample;
use crate::{Labels, Sample};

/// One label borrowed from the request buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelRef<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

/// One decoded exemplar; its labels are `SeriesView::exemplar_labels[labels.0..labels.1]`
/// (one shared vector per series, so exemplars cost no allocation each).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExemplarRef {
    pub labels: (usize, usize),
    pub value: f64,
    pub t: i64,
}

/// A metric type of remote-write metadata. Numbers are the same in remote write 1.0
/// (`MetricMetadata.MetricType`, 0 = `UNKNOWN`) and 2.0 (`Metadata.MetricType`, 0 =
/// `METRIC_TYPE_UNSPECIFIED`); numbers neither knows read as `Unknown`, as proto3 does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricType {
    #[default]
    Unknown,
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
}

impl MetricType {
    pub fn from_proto(v: u64) -> Self {
        match v {
            1 => Self::Counter,
            2 => Self::Gauge,
            3 => Self::Histogram,
            4 => Self::GaugeHistogram,
            5 => Self::Summary,
            6 => Self::Info,
            7 => Self::StateSet,
            _ => Self::Unknown,
        }
    }

    pub fn to_proto(self) -> u64 {
        self as u64
    }

    /// The metric family a series named `name` with metadata of this type belongs to
    /// (remote write 2.0 carries no family name): the name without the suffix a
    /// histogram's or summary's series add (`_bucket`, `_sum`, `_count`, `_gsum`,
    /// `_gcount`), so a histogram is one family as Prometheus lists it. Other types keep
    /// the name (a counter keeps `_total`: Prometheus lists `foo_total` for text and
    /// protobuf targets, `foo` for OpenMetrics ones, and 2.0 does not say which).
    pub fn family_of(self, name: &str) -> &str {
        let suffixes: &[&str] = match self {
            Self::Histogram | Self::Summary => &["_bucket", "_sum", "_count"],
            Self::GaugeHistogram => &["_bucket", "_gsum", "_gcount"],
            _ => &[],
        };
        suffixes
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name)
    }

    /// The name Prometheus's metadata API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
            Self::GaugeHistogram => "gaugehistogram",
            Self::Summary => "summary",
            Self::Info => "info",
            Self::StateSet => "stateset",
        }
    }
}

/// Metric metadata borrowed from the request: `WriteRequest.metadata` in 1.0 (with the
/// family name), `TimeSeries.metadata` in 2.0 (no family name: the series' `__name__`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetadataRef<'a> {
    pub kind: MetricType,
    pub family: &'a str,
    pub help: &'a str,
    pub unit: &'a str,
}

impl MetadataRef<'_> {
    /// Whether the sender filled anything in (Prometheus 3.5.3 sends remote write 2.0
    /// series with all-zero metadata unless `metadata-wal-records` is enabled).
    pub fn is_empty(&self) -> bool {
        self.kind == MetricType::Unknown && self.help.is_empty() && self.unit.is_empty()
    }
}

/// One decoded series. Labels are in the order the client sent them (not validated).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SeriesView<'a> {
    pub labels: Vec<LabelRef<'a>>,
    pub samples: Vec<Sample>,
    /// Native histogram samples (not validated: see [`HistogramValue::validate`]).
    ///
    /// [`HistogramValue::validate`]: crate::histogram::HistogramValue::validate
    pub histograms: Vec<HistogramSample>,
    /// Each histogram's message as sent (same index as `histograms`), for forwarding.
    pub histogram_msgs: Vec<&'a [u8]>,
    pub exemplars: Vec<ExemplarRef>,
    /// The labels of all `exemplars`, back to back.
    pub exemplar_labels: Vec<LabelRef<'a>>,
    /// Remote write 2.0 only: the series' metadata (`None` in 1.0 and when absent).
    pub metadata: Option<MetadataRef<'a>>,
    /// Remote write 2.0 only: rc.3's `TimeSeries.created_timestamp` (field 6), or the
    /// first non-zero rc.4 `Sample.start_timestamp` (field 3); 0 = unset.
    pub start_timestamp: i64,
    /// The series' whole `TimeSeries` message as sent, so a router can forward it without
    /// re-encoding (remote write 1.0 only; a 2.0 message is not a 1.0 series).
    pub raw: &'a [u8],
    /// Scratch of the decoder (empty between calls): each label's message, name and
    /// value bytes, checked as UTF-8 together once the series is read.
    label_parts: Vec<(&'a [u8], &'a [u8], &'a [u8])>,
    /// See [`Self::keep_labels`].
    keep_labels: bool,
    /// Where the current series' labels start in `labels`.
    labels_start: usize,
    /// See [`Self::defer_labels`].
    defer_labels: bool,
    /// Deferred: the series' label fields, back to back as sent (`None` until
    /// [`Self::parse_labels`] has put them into `labels`, or when they were not
    /// adjacent and so were parsed at once).
    labels_wire: Option<&'a [u8]>,
}

impl<'a> SeriesView<'a> {
    /// Decodes one `TimeSeries` message (e.g. a forwarded series) into `self`.
    pub fn decode(&mut self, raw: &'a [u8]) -> Result<(), DecodeError> {
        self.decode_with(raw, &DecodeLimits::default())
    }

    /// [`Self::decode`] under explicit limits.
    pub fn decode_with(&mut self, raw: &'a [u8], limits: &DecodeLimits) -> Result<(), DecodeError> {
        self.clear();
        self.raw = raw;
        decode_series(raw, self, limits)
    }

    /// From now on the labels of earlier series stay in `labels` (the next series'
    /// labels are appended; [`Self::series_labels`] are the current series' own), so a
    /// caller collecting the labels of a whole request keeps them without copying each
    /// series' labels out (the copy was ~5% of the receiver's CPU, issue #26). The caller
    /// removes a series' labels it does not keep with [`Self::drop_series_labels`].
    pub fn keep_labels(&mut self) {
        self.keep_labels = true;
    }

    /// From now on a series' labels are not parsed while it is decoded: a caller that
    /// knows the series by its label fields as sent ([`Self::wire_labels`]) need not
    /// parse them at all, and calls [`Self::parse_labels`] otherwise. (Parsing and
    /// checking them was the largest part of decoding, issue #26.)
    pub fn defer_labels(&mut self) {
        self.defer_labels = true;
    }

    /// The current series' label fields exactly as the client sent them (tags, lengths
    /// and `Label` messages, back to back), while they are not parsed yet. The same
    /// bytes always mean the same labels; the same labels may come as other bytes.
    pub fn wire_labels(&self) -> Option<&'a [u8]> {
        self.labels_wire
    }

    /// Parses deferred labels into `labels` (see [`Self::defer_labels`]); nothing to do
    /// when they are parsed already. Errors as decoding would have.
    pub fn parse_labels(&mut self) -> Result<(), DecodeError> {
        let Some(wire) = self.labels_wire.take() else {
            return Ok(());
        };
        parse_wire_labels(wire, &mut self.labels)
    }

    /// The current series' labels.
    pub fn series_labels(&self) -> &[LabelRef<'a>] {
        self.labels.get(self.labels_start..).unwrap_or_default()
    }

    /// Where the current series' labels start in `labels`.
    pub fn labels_start(&self) -> usize {
        self.labels_start
    }

    /// Removes the current series' labels from `labels`.
    pub fn drop_series_labels(&mut self) {
        self.labels.truncate(self.labels_start);
    }

    /// The labels of one of this series' exemplars.
    pub fn exemplar_labels_of(&self, e: &ExemplarRef) -> &[LabelRef<'a>] {
        self.exemplar_labels
            .get(e.labels.0..e.labels.1)
            .unwrap_or_default()
    }

    pub(crate) fn clear(&mut self) {
        self.raw = &[];
        if self.keep_labels {
            self.labels_start = self.labels.len();
        } else {
            self.labels.clear();
        }
        self.samples.clear();
        self.histograms.clear();
        self.histogram_msgs.clear();
        self.exemplars.clear();
        self.exemplar_labels.clear();
        self.label_parts.clear();
        self.metadata = None;
        self.start_timestamp = 0;
        self.labels_wire = None;
    }
}

/// Streams the series of an uncompressed `prometheus.WriteRequest` body.
pub struct WriteRequestReader<'a> {
    cur: Cursor<'a>,
    limits: DecodeLimits,
    metadata: Vec<MetadataRef<'a>>,
}

impl<'a> WriteRequestReader<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        Self::with_limits(body, DecodeLimits::default())
    }

    pub fn with_limits(body: &'a [u8], limits: DecodeLimits) -> Self {
        WriteRequestReader {
            cur: Cursor::new(body),
            limits,
            metadata: Vec::new(),
        }
    }

    /// Bytes of the body read so far: with the series read, what a caller sizes its
    /// per-series vectors from.
    pub fn consumed(&self) -> usize {
        self.cur.pos
    }

    /// Decodes the next series into `out` (cleared first). Returns `Ok(false)` at the end.
    /// Metadata met on the way is kept (see [`Self::metadata`]); unknown fields are skipped.
    pub fn next_series(&mut self, out: &mut SeriesView<'a>) -> Result<bool, DecodeError> {
        out.clear();
        while !self.cur.done() {
            let (field, wt) = self.cur.tag()?;
            match field {
                1 => {
                    self.cur.expect(field, wt, WT_LEN)?;
                    let ts = self.cur.bytes("timeseries")?;
                    out.decode_with(ts, &self.limits)?;
                    return Ok(true);
                }
                // A forwarded `thanos.WriteRequest` has its replica number (a varint) in
                // field 3: only the length-delimited form is 1.0 metadata.
                3 if wt == WT_LEN => {
                    let m = decode_metadata(self.cur.bytes("metadata")?)?;
                    self.metadata.push(m);
                }
                _ => self.cur.skip(field, wt)?,
            }
        }
        Ok(false)
    }

    /// `WriteRequest.metadata` entries read so far (all of them once `next_series` has
    /// returned `Ok(false)`).
    pub fn metadata(&self) -> &[MetadataRef<'a>] {
        &self.metadata
    }
}

fn utf8<'a>(b: &'a [u8], what: &'static str) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(b).map_err(|_| DecodeError::Utf8(what))
}

/// `prometheus.MetricMetadata`: type 1, metric_family_name 2, help 4, unit 5.
fn decode_metadata(buf: &[u8]) -> Result<MetadataRef<'_>, DecodeError> {
    let mut c = Cursor::new(buf);
    let mut m = MetadataRef::default();
    while !c.done() {
        let (field, wt) = c.tag()?;
        match field {
            1 => {
                c.expect(field, wt, WT_VARINT)?;
                m.kind = MetricType::from_proto(c.varint()?);
            }
            2 => {
                c.expect(field, wt, WT_LEN)?;
                m.family = utf8(c.bytes("metric family name")?, "metric family name")?;
            }
            4 => {
                c.expect(field, wt, WT_LEN)?;
                m.help = utf8(c.bytes("help")?, "help")?;
            }
            5 => {
                c.expect(field, wt, WT_LEN)?;
                m.unit = utf8(c.bytes("unit")?, "unit")?;
            }
            _ => c.skip(field, wt)?,
        }
    }
    Ok(m)
}

/// `prometheus.Exemplar`: labels 1, value 2, timestamp 3.
fn decode_exemplar<'a>(buf: &'a [u8], out: &mut SeriesView<'a>) -> Result<(), DecodeError> {
    let mut c = Cursor::new(buf);
    let start = out.exemplar_labels.len();
    let mut e = ExemplarRef {
        labels: (start, start),
        value: 0.0,
        t: 0,
    };
    while !c.done() {
        let (field, wt) = c.tag()?;
        match field {
            1 => {
                c.expect(field, wt, WT_LEN)?;
                let l = decode_label(c.bytes("exemplar label")?)?;
                out.exemplar_labels.push(l);
            }
            2 => {
                c.expect(field, wt, WT_I64)?;
                e.value = f64::from_bits(c.fixed64()?);
            }
            3 => {
                c.expect(field, wt, WT_VARINT)?;
                e.t = c.varint()? as i64;
            }
            _ => c.skip(field, wt)?,
        }
    }
    e.labels.1 = out.exemplar_labels.len();
    out.exemplars.push(e);
    Ok(())
}

fn decode_series<'a>(
    buf: &'a [u8],
    out: &mut SeriesView<'a>,
    limits: &DecodeLimits,
) -> Result<(), DecodeError> {
    let mut c = Cursor::new(buf);
    // Deferred labels: where their run of fields starts and ends, and whether anything
    // came between them.
    let mut wire: Option<(usize, usize)> = None;
    let mut apart = false;
    while !c.done() {
        let at = c.pos;
        let (field, wt) = c.tag()?;
        match field {
            1 if out.defer_labels => {
                c.expect(field, wt, WT_LEN)?;
                c.bytes("label")?;
                c.skip_label_run();
                match &mut wire {
                    None => wire = Some((at, c.pos)),
                    Some((_, end)) if *end == at => *end = c.pos,
                    Some(_) => apart = true,
                }
            }
            1 => {
                c.expect(field, wt, WT_LEN)?;
                let l = c.bytes("label")?;
                let (name, value) = label_parts(l)?;
                out.label_parts.push((l, name, value));
            }
            2 => {
                c.expect(field, wt, WT_LEN)?;
                let s = c.bytes("sample")?;
                out.samples.push(decode_sample(s)?);
            }
            3 => {
                c.expect(field, wt, WT_LEN)?;
                decode_exemplar(c.bytes("exemplar")?, out)?;
            }
            4 => {
                c.expect(field, wt, WT_LEN)?;
                let h = c.bytes("histogram")?;
                out.histograms.push(decode_histogram(h, limits)?);
                out.histogram_msgs.push(h);
            }
            _ => c.skip(field, wt)?,
        }
    }
    if out.defer_labels {
        if !apart {
            out.labels_wire = wire.and_then(|(a, b)| buf.get(a..b));
            return Ok(());
        }
        // Labels with other fields between them: parsed now, in order.
        let mut c = Cursor::new(buf);
        while !c.done() {
            let (field, wt) = c.tag()?;
            if field == 1 {
                let l = c.bytes("label")?;
                let (name, value) = label_parts(l)?;
                out.label_parts.push((l, name, value));
            } else {
                c.skip(field, wt)?;
            }
        }
    }
    let parts = std::mem::take(&mut out.label_parts);
    let r = labels_from_parts(buf, &parts, &mut out.labels);
    out.label_parts = parts;
    out.label_parts.clear();
    r
}

/// Parses label fields as [`SeriesView::wire_labels`] gives them (a series' labels as
/// sent, back to back), appending to `out`; errors as decoding the series would have.
pub fn parse_wire_labels<'a>(
    wire: &'a [u8],
    out: &mut Vec<LabelRef<'a>>,
) -> Result<(), DecodeError> {
    // What clients send (strings under 128 bytes, valid UTF-8): the whole run is one
    // valid string, checked once, and each label is read out of it in place.
    if let Ok(whole) = std::str::from_utf8(wire) {
        let start = out.len();
        let mut c = Cursor::new(wire);
        let mut ok = true;
        while !c.done() {
            let (field, wt) = c.tag()?;
            c.expect(field, wt, WT_LEN)?;
            let (name, value) = label_parts(c.bytes("label")?)?;
            match (str_within(whole, name), str_within(whole, value)) {
                (Some(name), Some(value)) => out.push(LabelRef { name, value }),
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            return Ok(());
        }
        out.truncate(start);
    }
    parse_wire_labels_with(wire, &mut Vec::new(), out)
}

fn parse_wire_labels_with<'a>(
    wire: &'a [u8],
    parts: &mut Vec<(&'a [u8], &'a [u8], &'a [u8])>,
    out: &mut Vec<LabelRef<'a>>,
) -> Result<(), DecodeError> {
    parts.clear();
    let mut c = Cursor::new(wire);
    while !c.done() {
        let (field, wt) = c.tag()?;
        c.expect(field, wt, WT_LEN)?;
        let l = c.bytes("label")?;
        let (name, value) = label_parts(l)?;
        parts.push((l, name, value));
    }
    let r = labels_from_parts(wire, parts, out);
    parts.clear();
    r
}

/// Turns a series' label parts into labels. One UTF-8 check covers the span from the
/// first label message to the last: a client sends a series' labels back to back, and
/// with strings under 128 bytes the framing between them is ASCII, so every string
/// starts and ends on a character boundary of the checked span. Anything else (labels
/// apart, a long string, invalid bytes) takes the check per label. (One check per
/// label was ~3.4% of the receiver's CPU at a million series, issue #26.)
fn labels_from_parts<'a>(
    buf: &'a [u8],
    parts: &[(&'a [u8], &'a [u8], &'a [u8])],
    out: &mut Vec<LabelRef<'a>>,
) -> Result<(), DecodeError> {
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return Ok(());
    };
    let offset = |s: &[u8]| (s.as_ptr() as usize).checked_sub(buf.as_ptr() as usize);
    let span = offset(first.0)
        .zip(offset(last.0).and_then(|o| o.checked_add(last.0.len())))
        .and_then(|(lo, hi)| buf.get(lo..hi));
    if let Some(bytes) = span
        && let Ok(whole) = std::str::from_utf8(bytes)
    {
        let start = out.len();
        for &(_, name, value) in parts {
            match (str_within(whole, name), str_within(whole, value)) {
                (Some(name), Some(value)) => out.push(LabelRef { name, value }),
                _ => {
                    out.truncate(start);
                    break;
                }
            }
        }
        if out.len() - start == parts.len() {
            return Ok(());
        }
    }
    for &(msg, name, value) in parts {
        out.push(label_from_parts(msg, name, value)?);
    }
    Ok(())
}

#[inline]
pub(crate) fn decode_label(buf: &[u8]) -> Result<LabelRef<'_>, DecodeError> {
    let (name, value) = label_parts(buf)?;
    label_from_parts(buf, name, value)
}

/// The name and value bytes of a `Label` message (not checked as UTF-8).
#[inline]
fn label_parts(buf: &[u8]) -> Result<(&[u8], &[u8]), DecodeError> {
    // What every client sends for strings under 128 bytes: name (field 1) then value
    // (field 2), each with a one-byte length, and nothing else. Read so without the
    // general field loop (the loop was ~4% of the receiver's CPU at a million series,
    // issue #26); the loop below gives the same answer for these bytes.
    if let [0x0a, name_len, rest @ ..] = buf
        && *name_len < 0x80
        && let Some((name, [0x12, value_len, value @ ..])) =
            rest.split_at_checked(*name_len as usize)
        && *value_len < 0x80
        && value.len() == *value_len as usize
    {
        return Ok((name, value));
    }
    label_fields(buf)
}

/// [`label_parts`] for any encoding: fields in any order, repeated (the last wins),
/// unknown ones skipped.
fn label_fields(buf: &[u8]) -> Result<(&[u8], &[u8]), DecodeError> {
    let mut c = Cursor::new(buf);
    let mut name: &[u8] = &[];
    let mut value: &[u8] = &[];
    while !c.done() {
        let (field, wt) = c.tag()?;
        match field {
            1 => {
                c.expect(field, wt, WT_LEN)?;
                name = c.bytes("label name")?;
            }
            2 => {
                c.expect(field, wt, WT_LEN)?;
                value = c.bytes("label value")?;
            }
            _ => c.skip(field, wt)?,
        }
    }
    Ok((name, value))
}

/// `s`, a slice of the bytes `whole` was checked from, as part of `whole`: `None` unless
/// it lies inside and on character boundaries.
#[inline]
fn str_within<'a>(whole: &'a str, s: &[u8]) -> Option<&'a str> {
    if s.is_empty() {
        return Some("");
    }
    let start = (s.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    whole.get(start..start.checked_add(s.len())?)
}

/// A label from its message's name and value bytes.
#[inline]
fn label_from_parts<'a>(
    buf: &'a [u8],
    name: &'a [u8],
    value: &'a [u8],
) -> Result<LabelRef<'a>, DecodeError> {
    // One UTF-8 check for the whole label message instead of one per string: the
    // framing bytes are ASCII whenever both strings are shorter than 128 bytes, and then
    // the strings start and end on character boundaries, so slicing needs no second
    // check. Anything else (a long string, invalid bytes) takes the precise path.
    // (Two short checks per label were ~8% of the receiver's ingest CPU, issue #26.)
    if let Ok(whole) = std::str::from_utf8(buf)
        && let (Some(name), Some(value)) = (str_within(whole, name), str_within(whole, value))
    {
        return Ok(LabelRef { name, value });
    }
    Ok(LabelRef {
        name: std::str::from_utf8(name).map_err(|_| DecodeError::Utf8("name"))?,
        value: std::str::from_utf8(value).map_err(|_| DecodeError::Utf8("value"))?,
    })
}

#[inline]
fn decode_sample(buf: &[u8]) -> Result<Sample, DecodeError> {
    // Fast path: the exact layout every Prometheus writes (value then timestamp).
    if buf.len() >= 10 && buf[0] == 0x09 && buf[9] == 0x10 {
        let mut c = Cursor { buf, pos: 10 };
        let mut a = [0u8; 8];
        a.copy_from_slice(&buf[1..9]);
        let v = f64::from_bits(u64::from_le_bytes(a));
        let t = c.varint()? as i64;
        if c.done() {
            return Ok(Sample { t, v });
        }
    }
    let mut c = Cursor::new(buf);
    let mut s = Sample { t: 0, v: 0.0 };
    while !c.done() {
        let (field, wt) = c.tag()?;
        match field {
            1 => {
                c.expect(field, wt, WT_I64)?;
                s.v = f64::from_bits(c.fixed64()?);
            }
            2 => {
                c.expect(field, wt, WT_VARINT)?;
                s.t = c.varint()? as i64;
            }
            _ => c.skip(field, wt)?,
        }
    }
    Ok(s)
}

/// Decompresses a snappy block-format body, refusing (before allocating) one whose
/// declared decompressed length exceeds `limit` bytes.
pub fn snappy_decompress(body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let size = snap::raw::decompress_len(body).map_err(|e| DecodeError::Snappy(e.to_string()))?;
    if size > limit {
        return Err(DecodeError::TooLarge { size, limit });
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| DecodeError::Snappy(e.to_string()))
}

/// Snappy block-format compression (what remote-write clients send).
pub fn snappy_compress(data: &[u8]) -> Vec<u8> {
    // Compression of an in-memory buffer only fails for inputs over ~4 GiB.
    snap::raw::Encoder::new()
        .compress_vec(data)
        .unwrap_or_default()
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn varint_len(v: u64) -> usize {
    ((64 - (v | 1).leading_zeros() as usize) + 6) / 7
}

pub(crate) fn put_len_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    put_varint(out, u64::from(field << 3 | 2));
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// Encodes a `prometheus.WriteRequest` (uncompressed protobuf) from model series.
pub fn encode_write_request<'s>(
    series: impl IntoIterator<Item = (&'s Labels, &'s [Sample])>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ts = Vec::new();
    let mut label = Vec::new();
    for (labels, samples) in series {
        ts.clear();
        for l in labels.iter() {
            label.clear();
            if !l.name.is_empty() {
                put_len_field(&mut label, 1, l.name.as_bytes());
            }
            if !l.value.is_empty() {
                put_len_field(&mut label, 2, l.value.as_bytes());
            }
            put_len_field(&mut ts, 1, &label);
        }
        for s in samples {
            let t = s.t as u64;
            let mut len = 0;
            if s.v.to_bits() != 0 {
                len += 9;
            }
            if t != 0 {
                len += 1 + varint_len(t);
            }
            ts.push(2 << 3 | 2);
            put_varint(&mut ts, len as u64);
            if s.v.to_bits() != 0 {
                ts.push(1 << 3 | 1);
                ts.extend_from_slice(&s.v.to_bits().to_le_bytes());
            }
            if t != 0 {
                ts.push(2 << 3);
                put_varint(&mut ts, t);
            }
        }
        put_len_field(&mut out, 1, &ts);
    }
    out
}

/// Field of `thanos.WriteRequest` under which Orrery forwards the client's metric
/// metadata (`prometheus.MetricMetadata` messages) between receivers. Thanos's message
/// has no such field (Thanos drops metadata at the router), so this number is Orrery's
/// extension: a Thanos receiver skips it as an unknown field, an Orrery one stores it.
pub const FORWARDED_METADATA_FIELD: u32 = 1000;

/// The parts of a `thanos.WriteRequest` (a forwarded write between receivers): its
/// series as raw `TimeSeries` messages, the tenant, the 1-based replica number (0 = not
/// replicated yet) and the raw `MetricMetadata` messages of [`FORWARDED_METADATA_FIELD`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ForwardedParts<'a> {
    pub series: Vec<&'a [u8]>,
    pub tenant: &'a str,
    pub replica: i64,
    pub metadata: Vec<&'a [u8]>,
}

/// The raw `MetricMetadata` messages (field 3) of an uncompressed
/// `prometheus.WriteRequest`, without decoding them or its series.
pub fn raw_metadata(body: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    let mut c = Cursor::new(body);
    let mut out = Vec::new();
    while !c.done() {
        let (field, wt) = c.tag()?;
        if field == 3 {
            c.expect(field, wt, WT_LEN)?;
            out.push(c.bytes("metadata")?);
        } else {
            c.skip(field, wt)?;
        }
    }
    Ok(out)
}

/// Splits a `thanos.WriteRequest` without decoding its series.
pub fn split_forwarded(body: &[u8]) -> Result<ForwardedParts<'_>, DecodeError> {
    let mut c = Cursor::new(body);
    let mut out = ForwardedParts::default();
    while !c.done() {
        let (field, wt) = c.tag()?;
        match field {
            1 => {
                c.expect(field, wt, WT_LEN)?;
                out.series.push(c.bytes("timeseries")?);
            }
            2 => {
                c.expect(field, wt, WT_LEN)?;
                out.tenant = std::str::from_utf8(c.bytes("tenant")?)
                    .map_err(|_| DecodeError::Utf8("tenant"))?;
            }
            3 => {
                c.expect(field, wt, WT_VARINT)?;
                out.replica = c.varint()? as i64;
            }
            FORWARDED_METADATA_FIELD => {
                c.expect(field, wt, WT_LEN)?;
                out.metadata.push(c.bytes("metadata")?);
            }
            _ => c.skip(field, wt)?,
        }
    }
    Ok(out)
}

/// Encodes raw `TimeSeries` messages as a `prometheus.WriteRequest` (field 1 each).
pub fn encode_raw_series<B: AsRef<[u8]>>(series: &[B]) -> Vec<u8> {
    let len = series.iter().map(|s| s.as_ref().len() + 6).sum();
    let mut out = Vec::with_capacity(len);
    for s in series {
        put_len_field(&mut out, 1, s.as_ref());
    }
    out
}

/// Encodes raw `TimeSeries` messages (field 1 each) and raw `MetricMetadata` messages
/// (field 3 each) as a `prometheus.WriteRequest`.
pub fn encode_raw_request<B: AsRef<[u8]>, M: AsRef<[u8]>>(series: &[B], metadata: &[M]) -> Vec<u8> {
    let mut out = encode_raw_series(series);
    for m in metadata {
        put_len_field(&mut out, 3, m.as_ref());
    }
    out
}

/// Encodes a `thanos.WriteRequest` from raw `TimeSeries` messages and raw
/// `MetricMetadata` messages (the inverse of [`split_forwarded`]).
pub fn encode_forwarded<B: AsRef<[u8]>, M: AsRef<[u8]>>(
    series: &[B],
    metadata: &[M],
    tenant: &str,
    replica: i64,
) -> Vec<u8> {
    let mut out = encode_raw_series(series);
    if !tenant.is_empty() {
        put_len_field(&mut out, 2, tenant.as_bytes());
    }
    if replica != 0 {
        out.push(3 << 3);
        put_varint(&mut out, replica as u64);
    }
    for m in metadata {
        put_len_field(&mut out, FORWARDED_METADATA_FIELD, m.as_ref());
    }
    out
}

/// [`encode_write_request`] then snappy block compression: a ready remote-write body.
pub fn encode_write_request_snappy<'s>(
    series: impl IntoIterator<Item = (&'s Labels, &'s [Sample])>,
) -> Vec<u8> {
    snappy_compress(&encode_write_request(series))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::prometheus;

    /// A `Label` message from raw parts: (field number, wire type, payload).
    fn label_fields_msg(fields: &[(u8, u8, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for &(f, wt, p) in fields {
            b.push(f << 3 | wt);
            if wt == 2 {
                let mut n = p.len();
                while n >= 0x80 {
                    b.push((n as u8) | 0x80);
                    n >>= 7;
                }
                b.push(n as u8);
            }
            b.extend_from_slice(p);
        }
        b
    }

    #[test]
    fn label_fast_path_reads_what_the_field_loop_reads() {
        let long = "v".repeat(200);
        let cases: Vec<Vec<u8>> = vec![
            label_fields_msg(&[(1, 2, b"job"), (2, 2, b"api")]),
            label_fields_msg(&[(1, 2, b""), (2, 2, b"")]),
            label_fields_msg(&[(1, 2, b"job")]),
            label_fields_msg(&[(2, 2, b"api")]),
            label_fields_msg(&[(2, 2, b"api"), (1, 2, b"job")]),
            label_fields_msg(&[(1, 2, b"job"), (2, 2, b"api"), (2, 2, b"web")]),
            label_fields_msg(&[(1, 2, b"job"), (2, 2, long.as_bytes())]),
            label_fields_msg(&[(1, 2, long.as_bytes()), (2, 2, b"x")]),
            label_fields_msg(&[(1, 2, b"job"), (2, 2, b"api"), (3, 0, &[7])]),
            label_fields_msg(&[(1, 2, b"job"), (3, 2, b"?"), (2, 2, b"api")]),
            Vec::new(),
        ];
        for b in &cases {
            assert_eq!(label_parts(b).ok(), label_fields(b).ok(), "{b:?}");
            assert!(label_parts(b).is_ok(), "{b:?}");
        }
        assert_eq!(label_parts(&cases[0]).unwrap(), (&b"job"[..], &b"api"[..]));
        // Cut short, or a length past the end: errors on both paths, never a slice
        // read past the message.
        let whole = &cases[0];
        for cut in 1..whole.len() {
            let b = &whole[..cut];
            assert_eq!(label_parts(b).is_err(), label_fields(b).is_err(), "{b:?}");
            if let Ok((n, v)) = label_parts(b) {
                assert_eq!((n, v), label_fields(b).unwrap());
            }
        }
        let mut past = whole.clone();
        past[6] += 1;
        assert!(label_parts(&past).is_err());
        // Wrong wire types take the loop and fail there.
        let b = label_fields_msg(&[(1, 0, &[1]), (2, 2, b"api")]);
        assert!(label_parts(&b).is_err() && label_fields(&b).is_err());
    }

    #[test]
    fn forwarded_requests_round_trip_through_prost() {
        use crate::wire::thanos;
        let l1 = Labels::from_pairs([("__name__", "up"), ("job", "a")]).unwrap();
        let l2 = Labels::from_pairs([("__name__", "up"), ("job", "b")]).unwrap();
        let s = [Sample { t: 5, v: 1.5 }];
        let body = encode_write_request([(&l1, &s[..]), (&l2, &s[..])]);
        let mut r = WriteRequestReader::new(&body);
        let mut v = SeriesView::default();
        let mut raws = Vec::new();
        while r.next_series(&mut v).unwrap() {
            raws.push(v.raw.to_vec());
        }
        assert_eq!(raws.len(), 2);
        assert_eq!(
            encode_raw_series(&raws),
            body,
            "raw spans cover the series exactly"
        );

        let meta = [crate::wire::prompb::MetricMetadata {
            r#type: 1,
            metric_family_name: "up".into(),
            help: "Up.".into(),
            unit: String::new(),
        }
        .encode_to_vec()];
        let fwd = encode_forwarded(&raws, &meta, "team-a", 2);
        // Thanos's message skips the metadata field; ours splits it back out.
        assert_eq!(split_forwarded(&fwd).unwrap().metadata, vec![&meta[0][..]]);
        let req = thanos::WriteRequest::decode(&fwd[..]).unwrap();
        assert_eq!(req.tenant, "team-a");
        assert_eq!(req.replica, 2);
        assert_eq!(req.timeseries.len(), 2);
        assert_eq!(req.timeseries[1].labels[1].value, "b");
        assert_eq!(req.timeseries[0].samples[0].value, 1.5);
        let enc = req.encode_to_vec();
        let parts = split_forwarded(&enc).unwrap();
        assert_eq!(parts.tenant, "team-a");
        assert_eq!(parts.replica, 2);
        assert_eq!(
            parts.series,
            raws.iter().map(|r| &r[..]).collect::<Vec<_>>()
        );
        assert!(parts.metadata.is_empty(), "prost dropped the unknown field");
        // A request with metadata, framed for the local write path: the reader sees
        // the series and the metadata.
        let local = encode_raw_request(&raws, &meta);
        assert_eq!(raw_metadata(&local).unwrap(), vec![&meta[0][..]]);
        let decoded = prometheus::WriteRequest::decode(&local[..]).unwrap();
        assert_eq!(decoded.metadata[0].metric_family_name, "up");
        assert_eq!(decoded.timeseries.len(), 2);
        // A forwarded request body is also a valid prometheus.WriteRequest for our reader.
        let mut r = WriteRequestReader::new(&fwd);
        let mut n = 0;
        while r.next_series(&mut v).unwrap() {
            n += 1;
        }
        assert_eq!(n, 2);
        assert!(split_forwarded(&[0x0a, 0x05, 0x01]).is_err());
        assert!(
            split_forwarded(&[0x1a, 0x01, 0x00]).is_err(),
            "replica must be a varint"
        );
    }
    use proptest::prelude::*;
    use prost::Message;

    fn label_msg(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        if !name.is_empty() {
            put_len_field(&mut m, 1, name);
        }
        if !value.is_empty() {
            put_len_field(&mut m, 2, value);
        }
        m
    }

    /// The one-check fast path and the per-string path agree: every shape decodes to
    /// its strings, and invalid UTF-8 is an error naming the string.
    #[test]
    fn labels_decode_with_one_utf8_check_or_two() {
        let long = "ü".repeat(100); // 200 bytes: a two-byte length varint
        for (n, v) in [
            ("job", "api"),
            ("job", ""),
            ("", "x"),
            ("name", long.as_str()),
            ("grüße", "ünïcödé"),
        ] {
            let m = label_msg(n.as_bytes(), v.as_bytes());
            let l = decode_label(&m).unwrap();
            assert_eq!((l.name, l.value), (n, v));
        }
        let bad = label_msg(b"job", b"a\xffb");
        assert!(matches!(
            decode_label(&bad),
            Err(DecodeError::Utf8("value"))
        ));
        let bad = label_msg(b"j\xc3", b"ok");
        assert!(matches!(decode_label(&bad), Err(DecodeError::Utf8("name"))));
    }

    /// A series' labels checked as UTF-8 in one span or, when that span does not
    /// qualify, label by label: the same labels either way, and invalid bytes anywhere
    /// are an error naming the string.
    #[test]
    fn series_labels_decode_with_one_utf8_check_or_one_per_label() {
        let long = "ü".repeat(100);
        let sample = {
            let mut m = Vec::new();
            put_len_field(
                &mut m,
                2,
                &[0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xef, 0x7f],
            );
            m
        };
        let series = |labels: &[(&[u8], &[u8])], sample_at: usize| {
            let mut m = Vec::new();
            for (i, (n, v)) in labels.iter().enumerate() {
                if i == sample_at {
                    m.extend_from_slice(&sample);
                }
                put_len_field(&mut m, 1, &label_msg(n, v));
            }
            m
        };
        let cases: [&[(&str, &str)]; 4] = [
            &[("__name__", "up"), ("job", "api"), ("zone", "")],
            &[("__name__", "grüße"), ("job", "ünïcödé")],
            &[("__name__", "x"), ("long", long.as_str()), ("z", "1")],
            &[("a", "1")],
        ];
        for labels in cases {
            let raw: Vec<(&[u8], &[u8])> = labels
                .iter()
                .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
                .collect();
            // Labels back to back, then split by a sample carrying non-ASCII bytes.
            for sample_at in [usize::MAX, 1] {
                let m = series(&raw, sample_at);
                let mut v = SeriesView::default();
                v.decode(&m).unwrap();
                let got: Vec<(&str, &str)> = v.labels.iter().map(|l| (l.name, l.value)).collect();
                assert_eq!(got, labels, "sample at {sample_at}");
                assert!(v.label_parts.is_empty());
                // Deferred: adjacent labels wait as sent; apart ones are parsed at once.
                let mut d = SeriesView::default();
                d.defer_labels();
                d.decode(&m).unwrap();
                if sample_at >= labels.len() {
                    assert_eq!(d.wire_labels(), Some(&m[..]));
                    assert!(d.labels.is_empty());
                } else {
                    assert_eq!(d.wire_labels(), None);
                }
                d.parse_labels().unwrap();
                assert_eq!(d.wire_labels(), None);
                let got: Vec<(&str, &str)> = d.labels.iter().map(|l| (l.name, l.value)).collect();
                assert_eq!(got, labels, "deferred, sample at {sample_at}");
            }
        }
        for (bad, what) in [
            (
                &[(&b"a"[..], &b"1"[..]), (b"b", b"x\xffy"), (b"c", b"3")][..],
                "value",
            ),
            (&[(&b"a\xc3"[..], &b"1"[..]), (b"b", b"2")][..], "name"),
        ] {
            for sample_at in [usize::MAX, 1] {
                let mut v = SeriesView::default();
                let e = v.decode(&series(bad, sample_at)).unwrap_err();
                assert!(matches!(e, DecodeError::Utf8(w) if w == what), "{e:?}");
                let mut d = SeriesView::default();
                d.defer_labels();
                let e = d
                    .decode(&series(bad, sample_at))
                    .and_then(|()| d.parse_labels())
                    .unwrap_err();
                assert!(
                    matches!(e, DecodeError::Utf8(w) if w == what),
                    "deferred: {e:?}"
                );
            }
        }
    }

    fn decode_all(
        buf: &[u8],
    ) -> Result<Vec<(Vec<(String, String)>, Vec<Sample>, usize)>, DecodeError> {
        decode_all_with(buf, false)
    }

    /// [`decode_all`] with labels deferred, then parsed series by series.
    fn decode_all_deferred(
        buf: &[u8],
    ) -> Result<Vec<(Vec<(String, String)>, Vec<Sample>, usize)>, DecodeError> {
        decode_all_with(buf, true)
    }

    fn decode_all_with(
        buf: &[u8],
        defer: bool,
    ) -> Result<Vec<(Vec<(String, String)>, Vec<Sample>, usize)>, DecodeError> {
        let mut r = WriteRequestReader::new(buf);
        let mut v = SeriesView::default();
        if defer {
            v.defer_labels();
        }
        let mut out = Vec::new();
        while r.next_series(&mut v)? {
            v.parse_labels()?;
            out.push((
                v.labels
                    .iter()
                    .map(|l| (l.name.to_string(), l.value.to_string()))
                    .collect(),
                v.samples.clone(),
                v.histograms.len(),
            ));
        }
        Ok(out)
    }

    fn via_prost(buf: &[u8]) -> Option<Vec<(Vec<(String, String)>, Vec<Sample>, usize)>> {
        let req = prometheus::WriteRequest::decode(buf).ok()?;
        Some(
            req.timeseries
                .into_iter()
                .map(|ts| {
                    (
                        ts.labels
                            .into_iter()
                            .map(|l| (l.name.into(), l.value.into()))
                            .collect(),
                        ts.samples
                            .into_iter()
                            .map(|s| Sample {
                                t: s.timestamp,
                                v: s.value,
                            })
                            .collect(),
                        ts.histograms.len(),
                    )
                })
                .collect(),
        )
    }

    fn same(
        a: &[(Vec<(String, String)>, Vec<Sample>, usize)],
        b: &[(Vec<(String, String)>, Vec<Sample>, usize)],
    ) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.0 == y.0
                    && x.2 == y.2
                    && x.1.len() == y.1.len()
                    && x.1
                        .iter()
                        .zip(&y.1)
                        .all(|(p, q)| p.t == q.t && p.v.to_bits() == q.v.to_bits())
            })
    }

    #[test]
    fn decodes_prost_encoded_request_with_metadata_and_histograms() {
        use crate::wire::prompb;
        let req = prometheus::WriteRequest {
            timeseries: vec![prompb::TimeSeries {
                labels: vec![
                    crate::wire::thanos::Label {
                        name: "__name__".into(),
                        value: "up".into(),
                    },
                    crate::wire::thanos::Label {
                        name: "job".into(),
                        value: "p".into(),
                    },
                ],
                samples: vec![
                    prompb::Sample {
                        value: 1.0,
                        timestamp: 1000,
                    },
                    prompb::Sample {
                        value: f64::from_bits(crate::STALE_NAN_BITS),
                        timestamp: -5,
                    },
                ],
                exemplars: vec![],
                histograms: vec![prompb::Histogram::default()],
            }],
            metadata: vec![prompb::MetricMetadata {
                r#type: 1,
                metric_family_name: "up".into(),
                help: "h".into(),
                unit: String::new(),
            }],
        };
        let buf = req.encode_to_vec();
        let got = decode_all(&buf).unwrap();
        assert!(same(&got, &via_prost(&buf).unwrap()));
        assert_eq!(got[0].2, 1);
        assert_eq!(got[0].1[1].v.to_bits(), crate::STALE_NAN_BITS);
    }

    #[test]
    fn decodes_histograms_exemplars_and_metadata() {
        use crate::histogram::HistogramValue;
        use crate::wire::prompb;
        let label = |n: &str, v: &str| crate::wire::thanos::Label {
            name: n.into(),
            value: v.into(),
        };
        let hist = prompb::Histogram {
            count: Some(prompb::histogram::Count::CountInt(3)),
            sum: 1.5,
            schema: 0,
            zero_count: Some(prompb::histogram::ZeroCount::ZeroCountInt(1)),
            positive_spans: vec![prompb::BucketSpan {
                offset: 0,
                length: 2,
            }],
            positive_deltas: vec![1, 0],
            timestamp: 77,
            ..Default::default()
        };
        let req = prometheus::WriteRequest {
            timeseries: vec![prompb::TimeSeries {
                labels: vec![label("__name__", "rpc_seconds")],
                samples: vec![],
                exemplars: vec![
                    prompb::Exemplar {
                        labels: vec![label("trace_id", "t1"), label("span_id", "s1")],
                        value: 0.5,
                        timestamp: 70,
                    },
                    prompb::Exemplar {
                        labels: vec![],
                        value: -1.0,
                        timestamp: 71,
                    },
                ],
                histograms: vec![hist.clone()],
            }],
            metadata: vec![
                prompb::MetricMetadata {
                    r#type: 3,
                    metric_family_name: "rpc_seconds".into(),
                    help: "RPC latency.".into(),
                    unit: "seconds".into(),
                },
                prompb::MetricMetadata {
                    r#type: 42,
                    ..Default::default()
                },
            ],
        };
        let buf = req.encode_to_vec();
        let mut r = WriteRequestReader::new(&buf);
        let mut v = SeriesView::default();
        assert!(r.next_series(&mut v).unwrap());
        assert_eq!(v.histograms.len(), 1);
        assert_eq!(v.histogram_msgs, vec![&hist.encode_to_vec()[..]]);
        assert_eq!(v.histograms[0].t, 77);
        let HistogramValue::Int(h) = &v.histograms[0].h else {
            panic!("integer histogram expected")
        };
        assert_eq!((h.count, h.zero_count, h.sum), (3, 1, 1.5));
        v.histograms[0].h.validate().unwrap();
        assert_eq!(v.exemplars.len(), 2);
        assert_eq!((v.exemplars[0].value, v.exemplars[0].t), (0.5, 70));
        assert_eq!(
            v.exemplar_labels_of(&v.exemplars[0]),
            &[
                LabelRef {
                    name: "trace_id",
                    value: "t1"
                },
                LabelRef {
                    name: "span_id",
                    value: "s1"
                }
            ]
        );
        assert!(v.exemplar_labels_of(&v.exemplars[1]).is_empty());
        assert_eq!((v.exemplars[1].value, v.exemplars[1].t), (-1.0, 71));
        assert!(!r.next_series(&mut v).unwrap());
        assert_eq!(
            r.metadata(),
            &[
                MetadataRef {
                    kind: MetricType::Histogram,
                    family: "rpc_seconds",
                    help: "RPC latency.",
                    unit: "seconds"
                },
                MetadataRef::default()
            ]
        );
        // A metadata-only request (what Prometheus sends every minute) has no series.
        let only = prometheus::WriteRequest {
            timeseries: vec![],
            metadata: req.metadata.clone(),
        }
        .encode_to_vec();
        let mut r = WriteRequestReader::new(&only);
        assert!(!r.next_series(&mut v).unwrap());
        assert_eq!(r.metadata().len(), 2);
        // Malformed metadata and exemplars are errors.
        assert!(
            WriteRequestReader::new(&[0x1a, 0x02, 0x08])
                .next_series(&mut v)
                .is_err()
        );
        assert!(
            WriteRequestReader::new(&[0x1a, 0x02, 0x22, 0x01, 0xff][..2])
                .next_series(&mut v)
                .is_err()
        );
        let bad_exemplar = [0x0a, 0x04, 0x1a, 0x02, 0x10, 0x80];
        assert!(
            WriteRequestReader::new(&bad_exemplar)
                .next_series(&mut v)
                .is_err()
        );
    }

    #[test]
    fn histogram_limit_applies_to_the_request() {
        use crate::wire::prompb;
        let req = prometheus::WriteRequest {
            timeseries: vec![prompb::TimeSeries {
                histograms: vec![prompb::Histogram {
                    positive_deltas: vec![1; 10],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            metadata: vec![],
        };
        let buf = req.encode_to_vec();
        let mut v = SeriesView::default();
        let lim = DecodeLimits {
            max_histogram_buckets: 9,
        };
        assert!(matches!(
            WriteRequestReader::with_limits(&buf, lim).next_series(&mut v),
            Err(DecodeError::Limit {
                count: 10,
                limit: 9,
                ..
            })
        ));
        assert!(WriteRequestReader::new(&buf).next_series(&mut v).unwrap());
    }

    #[test]
    fn errors_not_panics_on_garbage() {
        assert!(decode_all(&[0x0a, 0xff]).is_err());
        assert!(decode_all(&[0x0a, 0x05, 0x0a]).is_err());
        assert!(decode_all(&[0xff; 11]).is_err());
        assert!(decode_all(&[0x0b]).is_err()); // group start
        assert!(decode_all(&[0x00]).is_err()); // field 0
        // Invalid UTF-8 label name.
        let buf = [0x0a, 0x05, 0x0a, 0x03, 0x0a, 0x01, 0xff];
        assert_eq!(decode_all(&buf), Err(DecodeError::Utf8("name")));
        assert!(decode_all(&[]).unwrap().is_empty());
    }

    #[test]
    fn snappy_bomb_refused_before_allocation() {
        // A header claiming 4 GiB of output.
        let body = [0x80, 0x80, 0x80, 0x80, 0x10, 0x00];
        assert!(matches!(
            snappy_decompress(&body, 1 << 20),
            Err(DecodeError::TooLarge { .. }) | Err(DecodeError::Snappy(_))
        ));
        let ok = snappy_compress(b"hello hello hello");
        assert_eq!(snappy_decompress(&ok, 100).unwrap(), b"hello hello hello");
        assert!(matches!(
            snappy_decompress(&ok, 5),
            Err(DecodeError::TooLarge { size: 17, limit: 5 })
        ));
        assert!(snappy_decompress(b"\x05garbage", 100).is_err());
    }

    fn arb_series() -> impl Strategy<Value = Vec<(Labels, Vec<Sample>)>> {
        let label = ("[a-z_][a-z0-9_]{0,8}", "\\PC{1,12}");
        let labels = prop::collection::btree_map(label.0, label.1, 1..6)
            .prop_map(|m| Labels::from_pairs(m).unwrap());
        let sample = (any::<i64>(), any::<u64>()).prop_map(|(t, b)| Sample {
            t,
            v: f64::from_bits(b),
        });
        prop::collection::vec((labels, prop::collection::vec(sample, 0..20)), 0..8)
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(series in arb_series()) {
            let body = encode_write_request_snappy(series.iter().map(|(l, s)| (l, s.as_slice())));
            let raw = snappy_decompress(&body, usize::MAX).unwrap();
            let got = decode_all(&raw).unwrap();
            let want: Vec<_> = series.iter().map(|(l, s)| (
                l.iter().map(|l| (l.name.to_string(), l.value.to_string())).collect::<Vec<_>>(),
                s.clone(),
                0usize,
            )).collect();
            prop_assert!(same(&got, &want));
            prop_assert!(same(&got, &via_prost(&raw).unwrap()));
            prop_assert!(same(&got, &decode_all_deferred(&raw).unwrap()));
        }

        #[test]
        fn agrees_with_prost_on_mutations(series in arb_series(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4), cut in any::<prop::sample::Index>()) {
            let mut raw = encode_write_request(series.iter().map(|(l, s)| (l, s.as_slice())));
            if raw.is_empty() { return Ok(()); }
            for (i, b) in &flips {
                let i = i.index(raw.len());
                raw[i] = *b;
            }
            raw.truncate(cut.index(raw.len() + 1));
            let fast = decode_all(&raw);
            let slow = via_prost(&raw);
            // When both accept the bytes, they must agree exactly. The fast decoder
            // accepts a superset only for wire-type combinations prost also accepts.
            if let (Ok(f), Some(s)) = (&fast, &slow) {
                prop_assert!(same(f, s));
            }
            // Deferring labels changes when they are read, not what is accepted.
            match (&fast, &decode_all_deferred(&raw)) {
                (Ok(f), Ok(d)) => prop_assert!(same(f, d)),
                (Err(_), Err(_)) => {}
                (f, d) => prop_assert!(false, "eager {:?} vs deferred {:?}", f.is_ok(), d.is_ok()),
            }
        }
    }
}
