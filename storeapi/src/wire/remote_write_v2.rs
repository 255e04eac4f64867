//! Remote-write 2.0 bodies (`io.prometheus.write.v2.Request`): a borrowing decoder in the
//! style of [`super::remote_write`], and the translation to a 1.0 `prometheus.WriteRequest`
//! that lets the receiver keep one write path (limits, tenancy, hashring forwarding) for
//! both protocols, as Thanos's `translateV2ToV1` does.
//!
//! A 2.0 request carries its strings once, in `symbols`; series, exemplars and metadata
//! refer to them by index. Every reference is bounds-checked, `labels_refs` must come in
//! (name, value) pairs and the table must start with `""` (the spec's MUST): each of these
//! is a malformed request, never a panic. Semantic label checks (empty or duplicate names,
//! order) are the receiver's, as in Prometheus's handler.
//!
//! Both spec revisions are read: rc.3's `TimeSeries.created_timestamp` (6, what
//! Prometheus 3.5.3 speaks) and rc.4's `Sample.start_timestamp` (3); rc.4's
//! `Histogram.start_timestamp` (17) is kept inside the forwarded histogram bytes.

use super::proto_reader::{Cursor, DecodeError, WT_I64, WT_LEN, WT_VARINT};
use super::remote_write::{
    DecodeLimits, ExemplarRef, LabelRef, MetadataRef, MetricType, SeriesView, decode_histogram,
    put_len_field, put_varint,
};
use crate::Sample;

/// Streams the series of an uncompressed `io.prometheus.write.v2.Request` body.
pub struct RequestReader<'a> {
    symbols: Vec<&'a str>,
    cur: Cursor<'a>,
    limits: DecodeLimits,
    /// A series' `labels_refs`, kept between series: a fresh vector per series, grown
    /// push by push, was an eighth of the receiver's CPU at 50k series.
    refs: Vec<u64>,
}

fn symbol_table(body: &[u8]) -> Result<Vec<&str>, DecodeError> {
    let mut c = Cursor::new(body);
    let mut symbols = Vec::new();
    while !c.done() {
        let (field, wt) = c.tag()?;
        if field == 4 {
            c.expect(field, wt, WT_LEN)?;
            let s = c.bytes("symbol")?;
            symbols.push(std::str::from_utf8(s).map_err(|_| DecodeError::Utf8("symbol"))?);
        } else {
            c.skip(field, wt)?;
        }
    }
    match symbols.first() {
        Some(s) if !s.is_empty() => Err(DecodeError::FirstSymbolNotEmpty),
        _ => Ok(symbols),
    }
}

impl<'a> RequestReader<'a> {
    /// Reads the symbol table (wherever it sits in the body) and checks the framing of
    /// the whole body; series are decoded by [`Self::next_series`].
    pub fn new(body: &'a [u8]) -> Result<Self, DecodeError> {
        Self::with_limits(body, DecodeLimits::default())
    }

    pub fn with_limits(body: &'a [u8], limits: DecodeLimits) -> Result<Self, DecodeError> {
        Ok(RequestReader {
            symbols: symbol_table(body)?,
            cur: Cursor::new(body),
            limits,
            refs: Vec::new(),
        })
    }

    pub fn symbols(&self) -> &[&'a str] {
        &self.symbols
    }

    /// Bytes of the body read so far: with the series read, what a caller sizes its
    /// per-series vectors from.
    pub fn consumed(&self) -> usize {
        self.cur.pos
    }

    /// Decodes the next series into `out` (cleared first). Returns `Ok(false)` at the end.
    /// `out.raw` stays empty: a 2.0 series is not forwardable as it is.
    pub fn next_series(&mut self, out: &mut SeriesView<'a>) -> Result<bool, DecodeError> {
        out.clear();
        while !self.cur.done() {
            let (field, wt) = self.cur.tag()?;
            if field == 5 {
                self.cur.expect(field, wt, WT_LEN)?;
                let ts = self.cur.bytes("timeseries")?;
                decode_series(ts, &self.symbols, &self.limits, &mut self.refs, out)?;
                return Ok(true);
            }
            self.cur.skip(field, wt)?;
        }
        Ok(false)
    }
}

fn symbol<'a>(symbols: &[&'a str], index: u64, what: &'static str) -> Result<&'a str, DecodeError> {
    usize::try_from(index)
        .ok()
        .and_then(|i| symbols.get(i))
        .copied()
        .ok_or(DecodeError::BadSymbolRef {
            what,
            index,
            symbols: symbols.len(),
        })
}

/// Reads one `labels_refs` occurrence (packed or not) into `refs`.
fn read_refs(
    c: &mut Cursor<'_>,
    field: u32,
    wt: u8,
    refs: &mut Vec<u64>,
) -> Result<(), DecodeError> {
    c.repeated(
        field,
        wt,
        WT_VARINT,
        |c| c.varint(),
        |r| {
            refs.push(r);
            Ok(())
        },
    )
}

/// Resolves (name, value) reference pairs into `out`.
fn resolve_labels<'a>(
    refs: &[u64],
    symbols: &[&'a str],
    what: &'static str,
    out: &mut Vec<LabelRef<'a>>,
) -> Result<(), DecodeError> {
    if refs.len() % 2 != 0 {
        return Err(DecodeError::OddLabelRefs {
            what,
            count: refs.len(),
        });
    }
    for pair in refs.chunks_exact(2) {
        if let [n, v] = pair {
            out.push(LabelRef {
                name: symbol(symbols, *n, what)?,
                value: symbol(symbols, *v, what)?,
            });
        }
    }
    Ok(())
}

fn decode_series<'a>(
    buf: &'a [u8],
    symbols: &[&'a str],
    limits: &DecodeLimits,
    refs: &mut Vec<u64>,
    out: &mut SeriesView<'a>,
) -> Result<(), DecodeError> {
    let mut c = Cursor::new(buf);
    refs.clear();
    let mut created = 0i64;
    let mut first_start = 0i64;
    while !c.done() {
        let (field, wt) = c.tag()?;
        match field {
            1 => read_refs(&mut c, field, wt, refs)?,
            2 => {
                c.expect(field, wt, WT_LEN)?;
                let (s, st) = decode_sample(c.bytes("sample")?)?;
                if first_start == 0 {
                    first_start = st;
                }
                out.samples.push(s);
            }
            3 => {
                c.expect(field, wt, WT_LEN)?;
                let h = c.bytes("histogram")?;
                out.histograms.push(decode_histogram(h, limits)?);
                out.histogram_msgs.push(h);
            }
            4 => {
                c.expect(field, wt, WT_LEN)?;
                decode_exemplar(c.bytes("exemplar")?, symbols, out)?;
            }
            5 => {
                c.expect(field, wt, WT_LEN)?;
                out.metadata = Some(decode_metadata(c.bytes("metadata")?, symbols)?);
            }
            6 => {
                c.expect(field, wt, WT_VARINT)?;
                created = c.varint()? as i64;
            }
            _ => c.skip(field, wt)?,
        }
    }
    resolve_labels(refs, symbols, "series labels_refs", &mut out.labels)?;
    out.start_timestamp = if created != 0 { created } else { first_start };
    Ok(())
}

/// `Sample`: value 1, timestamp 2, start_timestamp 3 (rc.4). Returns the start timestamp
/// beside the sample.
#[inline]
fn decode_sample(buf: &[u8]) -> Result<(Sample, i64), DecodeError> {
    // Fast path: the layout Prometheus writes (value then timestamp, nothing else).
    if let [0x09, v @ ..] = buf
        && buf.len() >= 10
        && buf[9] == 0x10
    {
        let mut a = [0u8; 8];
        if let Some(bits) = v.get(..8) {
            a.copy_from_slice(bits);
            let mut c = Cursor { buf, pos: 10 };
            let t = c.varint()? as i64;
            if c.done() {
                return Ok((
                    Sample {
                        t,
                        v: f64::from_bits(u64::from_le_bytes(a)),
                    },
                    0,
                ));
            }
        }
    }
    let mut c = Cursor::new(buf);
    let mut s = Sample { t: 0, v: 0.0 };
    let mut start = 0i64;
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
            3 => {
                c.expect(field, wt, WT_VARINT)?;
                start = c.varint()? as i64;
            }
            _ => c.skip(field, wt)?,
        }
    }
    Ok((s, start))
}

/// `Exemplar`: labels_refs 1, value 2, timestamp 3.
fn decode_exemplar<'a>(
    buf: &'a [u8],
    symbols: &[&'a str],
    out: &mut SeriesView<'a>,
) -> Result<(), DecodeError> {
    let mut c = Cursor::new(buf);
    let mut refs = Vec::new();
    let mut e = ExemplarRef {
        labels: (0, 0),
        value: 0.0,
        t: 0,
    };
    while !c.done() {
        let (field, wt) = c.tag()?;
        match field {
            1 => read_refs(&mut c, field, wt, &mut refs)?,
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
    let start = out.exemplar_labels.len();
    resolve_labels(
        &refs,
        symbols,
        "exemplar labels_refs",
        &mut out.exemplar_labels,
    )?;
    e.labels = (start, out.exemplar_labels.len());
    out.exemplars.push(e);
    Ok(())
}

/// `Metadata`: type 1, help_ref 3, unit_ref 4 (the family is the series' `__name__`).
fn decode_metadata<'a>(buf: &'a [u8], symbols: &[&'a str]) -> Result<MetadataRef<'a>, DecodeError> {
    let mut c = Cursor::new(buf);
    let mut m = MetadataRef::default();
    while !c.done() {
        let (field, wt) = c.tag()?;
        match field {
            1 => {
                c.expect(field, wt, WT_VARINT)?;
                m.kind = MetricType::from_proto(c.varint()?);
            }
            3 => {
                c.expect(field, wt, WT_VARINT)?;
                m.help = symbol(symbols, c.varint()?, "metadata help_ref")?;
            }
            4 => {
                c.expect(field, wt, WT_VARINT)?;
                m.unit = symbol(symbols, c.varint()?, "metadata unit_ref")?;
            }
            _ => c.skip(field, wt)?,
        }
    }
    Ok(m)
}

/// What a 2.0 request held, counted while translating it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V2Counts {
    pub series: u64,
    pub samples: u64,
    pub histograms: u64,
    pub exemplars: u64,
    /// Series whose metadata says anything (type, help or unit).
    pub metadata: u64,
}

/// Translates a 2.0 request into an equivalent 1.0 `prometheus.WriteRequest`: labels and
/// exemplar labels de-symbolised, samples re-encoded (start timestamps dropped),
/// histogram messages copied byte for byte (their field numbers are the same in both
/// versions), exemplar-only series kept, and non-empty series metadata appended as
/// `WriteRequest.metadata` under the series' family ([`MetricType::family_of`], as a
/// receiver storing the 2.0 request itself names it), a run of equal entries once.
pub fn translate_to_v1(
    body: &[u8],
    limits: DecodeLimits,
) -> Result<(Vec<u8>, V2Counts), DecodeError> {
    let mut reader = RequestReader::with_limits(body, limits)?;
    let mut view = SeriesView::default();
    let mut out = Vec::with_capacity(body.len() + body.len() / 2);
    let mut ts = Vec::new();
    let mut meta = Vec::new();
    let mut mm = Vec::new();
    let mut scratch = Vec::new();
    let mut last: Option<MetadataRef<'_>> = None;
    let mut counts = V2Counts::default();
    while reader.next_series(&mut view)? {
        counts.series += 1;
        counts.samples += view.samples.len() as u64;
        counts.histograms += view.histograms.len() as u64;
        counts.exemplars += view.exemplars.len() as u64;
        ts.clear();
        encode_v1_series(&view, &mut ts, &mut scratch);
        put_len_field(&mut out, 1, &ts);
        if let Some(mut m) = view.metadata.filter(|m| !m.is_empty()) {
            counts.metadata += 1;
            let name = view
                .labels
                .iter()
                .find(|l| l.name == "__name__")
                .map_or("", |l| l.value);
            m.family = m.kind.family_of(name);
            if last == Some(m) {
                continue;
            }
            last = Some(m);
            let family = m.family;
            mm.clear();
            if m.kind != MetricType::Unknown {
                put_varint(&mut mm, 1 << 3);
                put_varint(&mut mm, m.kind.to_proto());
            }
            for (f, s) in [(2, family), (4, m.help), (5, m.unit)] {
                if !s.is_empty() {
                    put_len_field(&mut mm, f, s.as_bytes());
                }
            }
            put_len_field(&mut meta, 3, &mm);
        }
    }
    out.extend_from_slice(&meta);
    Ok((out, counts))
}

fn encode_label(out: &mut Vec<u8>, field: u32, l: &LabelRef<'_>, scratch: &mut Vec<u8>) {
    scratch.clear();
    if !l.name.is_empty() {
        put_len_field(scratch, 1, l.name.as_bytes());
    }
    if !l.value.is_empty() {
        put_len_field(scratch, 2, l.value.as_bytes());
    }
    put_len_field(out, field, scratch);
}

/// Appends the fields of a 1.0 `TimeSeries` (not its own tag/length) for `view`.
fn encode_v1_series(view: &SeriesView<'_>, ts: &mut Vec<u8>, scratch: &mut Vec<u8>) {
    for l in &view.labels {
        encode_label(ts, 1, l, scratch);
    }
    for s in &view.samples {
        // Always both fields: 20 bytes at most, the layout the 1.0 fast path reads.
        let mut m = [0u8; 20];
        m[0] = 0x09;
        m[1..9].copy_from_slice(&s.v.to_bits().to_le_bytes());
        m[9] = 0x10;
        let mut n = 10;
        let mut t = s.t as u64;
        while t >= 0x80 {
            m[n] = (t as u8) | 0x80;
            t >>= 7;
            n += 1;
        }
        m[n] = t as u8;
        n += 1;
        put_len_field(ts, 2, &m[..n]);
    }
    let mut ex = Vec::new();
    for e in &view.exemplars {
        ex.clear();
        for l in view.exemplar_labels_of(e) {
            encode_label(&mut ex, 1, l, scratch);
        }
        ex.push(2 << 3 | 1);
        ex.extend_from_slice(&e.value.to_bits().to_le_bytes());
        ex.push(3 << 3);
        put_varint(&mut ex, e.t as u64);
        put_len_field(ts, 3, &ex);
    }
    for h in &view.histogram_msgs {
        put_len_field(ts, 4, h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::HistogramValue;
    use crate::wire::remote_write::WriteRequestReader;
    use crate::wire::write_v2 as v2;
    use proptest::prelude::*;
    use prost::Message;

    fn symbols(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn request() -> v2::Request {
        v2::Request {
            symbols: symbols(&[
                "",
                "__name__",
                "http_requests_total",
                "job",
                "api",
                "trace_id",
                "abc",
                "Requests served.",
                "seconds",
            ]),
            timeseries: vec![
                v2::TimeSeries {
                    labels_refs: vec![1, 2, 3, 4],
                    samples: vec![
                        v2::Sample {
                            value: 1.5,
                            timestamp: 1000,
                            start_timestamp: 0,
                        },
                        v2::Sample {
                            value: 2.5,
                            timestamp: 2000,
                            start_timestamp: 500,
                        },
                    ],
                    exemplars: vec![v2::Exemplar {
                        labels_refs: vec![5, 6],
                        value: 0.25,
                        timestamp: 1500,
                    }],
                    metadata: Some(v2::Metadata {
                        r#type: 1,
                        help_ref: 7,
                        unit_ref: 8,
                    }),
                    created_timestamp: 0,
                    histograms: vec![],
                },
                v2::TimeSeries {
                    labels_refs: vec![1, 2],
                    histograms: vec![v2::Histogram {
                        count: Some(v2::histogram::Count::CountInt(3)),
                        sum: 4.0,
                        schema: 1,
                        zero_count: Some(v2::histogram::ZeroCount::ZeroCountInt(1)),
                        positive_spans: vec![v2::BucketSpan {
                            offset: -1,
                            length: 2,
                        }],
                        positive_deltas: vec![1, 0],
                        reset_hint: 1,
                        timestamp: 3000,
                        custom_values: vec![],
                        start_timestamp: 7,
                        ..Default::default()
                    }],
                    created_timestamp: 42,
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn decodes_every_field() {
        let body = request().encode_to_vec();
        let mut r = RequestReader::new(&body).unwrap();
        assert_eq!(r.symbols().len(), 9);
        let mut v = SeriesView::default();
        assert!(r.next_series(&mut v).unwrap());
        assert_eq!(
            v.labels,
            vec![
                LabelRef {
                    name: "__name__",
                    value: "http_requests_total"
                },
                LabelRef {
                    name: "job",
                    value: "api"
                }
            ]
        );
        assert_eq!(v.samples.len(), 2);
        assert_eq!((v.samples[1].t, v.samples[1].v), (2000, 2.5));
        assert_eq!(v.start_timestamp, 500, "rc.4 sample start timestamp");
        assert_eq!(v.exemplars.len(), 1);
        assert_eq!((v.exemplars[0].t, v.exemplars[0].value), (1500, 0.25));
        assert_eq!(
            v.exemplar_labels_of(&v.exemplars[0]),
            &[LabelRef {
                name: "trace_id",
                value: "abc"
            }]
        );
        assert_eq!(
            v.metadata,
            Some(MetadataRef {
                kind: MetricType::Counter,
                family: "",
                help: "Requests served.",
                unit: "seconds"
            })
        );
        assert!(r.next_series(&mut v).unwrap());
        assert!(v.samples.is_empty());
        assert_eq!(v.start_timestamp, 42, "rc.3 created timestamp");
        assert_eq!(v.histograms.len(), 1);
        assert_eq!(v.histograms[0].t, 3000);
        let HistogramValue::Int(h) = &v.histograms[0].h else {
            panic!("integer histogram expected")
        };
        assert_eq!((h.count, h.zero_count, h.schema), (3, 1, 1));
        assert_eq!(h.positive_buckets, vec![1, 0]);
        v.histograms[0].h.validate().unwrap();
        assert!(!r.next_series(&mut v).unwrap());
    }

    #[test]
    fn symbols_after_series_are_found() {
        // Field order on the wire is free: put the timeseries (5) before the symbols (4).
        let req = request();
        let mut body = Vec::new();
        for ts in &req.timeseries {
            put_len_field(&mut body, 5, &ts.encode_to_vec());
        }
        for s in &req.symbols {
            put_len_field(&mut body, 4, s.as_bytes());
        }
        let mut r = RequestReader::new(&body).unwrap();
        let mut v = SeriesView::default();
        assert!(r.next_series(&mut v).unwrap());
        assert_eq!(v.labels[1].value, "api");
    }

    fn decode_err(req: &v2::Request) -> DecodeError {
        let body = req.encode_to_vec();
        let mut v = SeriesView::default();
        let mut r = match RequestReader::new(&body) {
            Ok(r) => r,
            Err(e) => return e,
        };
        loop {
            match r.next_series(&mut v) {
                Ok(true) => {}
                Ok(false) => panic!("request was accepted"),
                Err(e) => return e,
            }
        }
    }

    #[test]
    fn bad_references_are_refused() {
        let mut req = request();
        req.timeseries[0].labels_refs = vec![1, 2, 3, 9];
        let e = decode_err(&req);
        assert_eq!(
            e,
            DecodeError::BadSymbolRef {
                what: "series labels_refs",
                index: 9,
                symbols: 9
            }
        );
        assert!(e.to_string().contains("symbol 9"), "{e}");

        let mut req = request();
        req.timeseries[0].labels_refs = vec![1, 2, 3];
        assert_eq!(
            decode_err(&req),
            DecodeError::OddLabelRefs {
                what: "series labels_refs",
                count: 3
            }
        );

        let mut req = request();
        req.timeseries[0].exemplars[0].labels_refs = vec![5, u32::MAX];
        assert!(matches!(
            decode_err(&req),
            DecodeError::BadSymbolRef {
                what: "exemplar labels_refs",
                ..
            }
        ));
        let mut req = request();
        req.timeseries[0].exemplars[0].labels_refs = vec![5];
        assert!(matches!(decode_err(&req), DecodeError::OddLabelRefs { .. }));

        let mut req = request();
        req.timeseries[0].metadata = Some(v2::Metadata {
            r#type: 2,
            help_ref: 100,
            unit_ref: 0,
        });
        assert!(matches!(
            decode_err(&req),
            DecodeError::BadSymbolRef {
                what: "metadata help_ref",
                index: 100,
                ..
            }
        ));
        let mut req = request();
        req.timeseries[0].metadata = Some(v2::Metadata {
            r#type: 2,
            help_ref: 0,
            unit_ref: 10,
        });
        assert!(matches!(
            decode_err(&req),
            DecodeError::BadSymbolRef {
                what: "metadata unit_ref",
                ..
            }
        ));

        let mut req = request();
        req.symbols[0] = "x".into();
        assert_eq!(decode_err(&req), DecodeError::FirstSymbolNotEmpty);

        // No symbols at all: any reference is out of range.
        let mut req = request();
        req.symbols.clear();
        assert!(matches!(
            decode_err(&req),
            DecodeError::BadSymbolRef { symbols: 0, .. }
        ));
    }

    #[test]
    fn histogram_bounds_apply() {
        let mut req = request();
        req.timeseries[1].histograms[0].positive_deltas = vec![1; 40];
        let body = req.encode_to_vec();
        let lim = DecodeLimits {
            max_histogram_buckets: 32,
        };
        let mut r = RequestReader::with_limits(&body, lim).unwrap();
        let mut v = SeriesView::default();
        assert!(r.next_series(&mut v).unwrap());
        assert!(matches!(
            r.next_series(&mut v),
            Err(DecodeError::Limit { limit: 32, .. })
        ));
        assert!(translate_to_v1(&body, lim).is_err());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for bad in [
            &[0x22, 0x05, b'a'][..],         // truncated symbol
            &[0x22, 0x01, 0xff],             // symbol not UTF-8
            &[0x2a, 0x03, 0x0a, 0x05, 0x01], // series: truncated packed refs
            &[0x2a, 0x02, 0x12, 0x05],       // series: truncated sample
            &[0x2a, 0x02, 0x30, 0x80],       // created_timestamp: truncated varint
            &[0x2b],                         // group wire type
        ] {
            let r = RequestReader::new(bad).and_then(|mut r| {
                let mut v = SeriesView::default();
                while r.next_series(&mut v)? {}
                Ok(())
            });
            assert!(r.is_err(), "{bad:?} accepted");
        }
        // A 1.0 body read as 2.0 is empty (fields 1-3 are reserved in 2.0), not garbage.
        let l = crate::Labels::from_pairs([("__name__", "up")]).unwrap();
        let v1 =
            crate::wire::remote_write::encode_write_request([(&l, &[Sample { t: 1, v: 1.0 }][..])]);
        let mut r = RequestReader::new(&v1).unwrap();
        assert!(!r.next_series(&mut SeriesView::default()).unwrap());
    }

    #[test]
    fn translation_to_v1_keeps_everything_v1_can_hold() {
        let body = request().encode_to_vec();
        let (v1, counts) = translate_to_v1(&body, DecodeLimits::default()).unwrap();
        assert_eq!(
            counts,
            V2Counts {
                series: 2,
                samples: 2,
                histograms: 1,
                exemplars: 1,
                metadata: 1
            }
        );
        let req = crate::wire::prometheus::WriteRequest::decode(&v1[..]).unwrap();
        assert_eq!(req.timeseries.len(), 2);
        let ts = &req.timeseries[0];
        assert_eq!(ts.labels[0].value, "http_requests_total");
        assert_eq!(ts.labels[1].name, "job");
        assert_eq!(ts.samples[1].timestamp, 2000);
        assert_eq!(ts.samples[1].value, 2.5);
        assert_eq!(ts.exemplars[0].labels[0].name, "trace_id");
        assert_eq!(ts.exemplars[0].value, 0.25);
        assert_eq!(ts.exemplars[0].timestamp, 1500);
        let h = &req.timeseries[1].histograms[0];
        assert_eq!(h.timestamp, 3000);
        assert_eq!(h.positive_deltas, vec![1, 0]);
        assert_eq!(h.reset_hint, 1);
        assert_eq!(req.metadata.len(), 1);
        assert_eq!(req.metadata[0].metric_family_name, "http_requests_total");
        assert_eq!(req.metadata[0].r#type, 1);
        assert_eq!(req.metadata[0].help, "Requests served.");
        assert_eq!(req.metadata[0].unit, "seconds");
        // And the fast 1.0 reader agrees.
        let mut r = WriteRequestReader::new(&v1);
        let mut v = SeriesView::default();
        assert!(r.next_series(&mut v).unwrap());
        assert_eq!(v.exemplars.len(), 1);
        assert!(r.next_series(&mut v).unwrap());
        assert_eq!(v.histograms.len(), 1);
        assert!(!r.next_series(&mut v).unwrap());
        assert_eq!(r.metadata().len(), 1);
        assert_eq!(r.metadata()[0].kind, MetricType::Counter);
    }

    /// A classic histogram's series name one family, `lat`, as the receiver's own 2.0
    /// path names it; a run of the same entry is forwarded once, a different one again.
    #[test]
    fn translated_metadata_names_the_family_and_drops_repeats() {
        let names = [
            "lat_bucket",
            "lat_bucket",
            "lat_sum",
            "lat_count",
            "up",
            "lat_sum",
        ];
        let mut syms = vec!["", "__name__", "le", "1", "Latency.", "seconds", "Up."];
        syms.extend(names);
        let timeseries = names
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let up = names[i] == "up";
                v2::TimeSeries {
                    labels_refs: vec![1, 7 + i as u32, 2, 3],
                    samples: vec![v2::Sample {
                        value: 1.0,
                        timestamp: 1000,
                        start_timestamp: 0,
                    }],
                    metadata: Some(v2::Metadata {
                        r#type: if up { 2 } else { 3 },
                        help_ref: if up { 6 } else { 4 },
                        unit_ref: if up { 0 } else { 5 },
                    }),
                    ..Default::default()
                }
            })
            .collect();
        let body = v2::Request {
            symbols: symbols(&syms),
            timeseries,
        }
        .encode_to_vec();
        let (v1, counts) = translate_to_v1(&body, DecodeLimits::default()).unwrap();
        assert_eq!(counts.metadata, 6);
        let req = crate::wire::prometheus::WriteRequest::decode(&v1[..]).unwrap();
        assert_eq!(req.timeseries.len(), 6);
        let got: Vec<(&str, i32, &str, &str)> = req
            .metadata
            .iter()
            .map(|m| {
                (
                    m.metric_family_name.as_str(),
                    m.r#type,
                    m.help.as_str(),
                    m.unit.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("lat", 3, "Latency.", "seconds"),
                ("up", 2, "Up.", ""),
                ("lat", 3, "Latency.", "seconds"),
            ]
        );
    }

    fn arb_request() -> impl Strategy<Value = v2::Request> {
        let syms = prop::collection::vec("\\PC{0,6}", 0..8).prop_map(|mut s| {
            s.insert(0, String::new());
            s
        });
        let series = (
            prop::collection::vec(0u32..12, 0..8),
            prop::collection::vec((any::<u64>(), any::<i64>()), 0..6),
            any::<i64>(),
        )
            .prop_map(|(refs, samples, ct)| v2::TimeSeries {
                labels_refs: refs,
                samples: samples
                    .into_iter()
                    .map(|(b, t)| v2::Sample {
                        value: f64::from_bits(b),
                        timestamp: t,
                        start_timestamp: 0,
                    })
                    .collect(),
                created_timestamp: ct,
                ..Default::default()
            });
        (syms, prop::collection::vec(series, 0..6)).prop_map(|(symbols, timeseries)| v2::Request {
            symbols,
            timeseries,
        })
    }

    type Flat = Vec<(Vec<(String, String)>, Vec<(i64, u64)>)>;

    fn fast(body: &[u8]) -> Result<Flat, DecodeError> {
        let mut r = RequestReader::new(body)?;
        let mut v = SeriesView::default();
        let mut out = Vec::new();
        while r.next_series(&mut v)? {
            out.push((
                v.labels
                    .iter()
                    .map(|l| (l.name.to_string(), l.value.to_string()))
                    .collect(),
                v.samples.iter().map(|s| (s.t, s.v.to_bits())).collect(),
            ));
        }
        Ok(out)
    }

    /// The reference semantics, from prost's decoding: `None` where the spec's rules
    /// (pairs, references in range, `""` first) are broken.
    fn slow(body: &[u8]) -> Option<Flat> {
        let req = v2::Request::decode(body).ok()?;
        if req.symbols.first().is_some_and(|s| !s.is_empty()) {
            return None;
        }
        let mut out = Vec::new();
        for ts in req.timeseries {
            if ts.labels_refs.len() % 2 != 0 {
                return None;
            }
            let mut labels = Vec::new();
            for p in ts.labels_refs.chunks(2) {
                labels.push((
                    req.symbols.get(p[0] as usize)?.clone(),
                    req.symbols.get(p[1] as usize)?.clone(),
                ));
            }
            out.push((
                labels,
                ts.samples
                    .iter()
                    .map(|s| (s.timestamp, s.value.to_bits()))
                    .collect(),
            ));
        }
        Some(out)
    }

    proptest! {
        #[test]
        fn agrees_with_prost(req in arb_request()) {
            let body = req.encode_to_vec();
            prop_assert_eq!(fast(&body).ok(), slow(&body));
            // Translated bodies decode to the same series as 1.0.
            if let Ok(want) = fast(&body) {
                let (v1, _) = translate_to_v1(&body, DecodeLimits::default()).unwrap();
                let mut r = WriteRequestReader::new(&v1);
                let mut v = SeriesView::default();
                let mut got: Flat = Vec::new();
                while r.next_series(&mut v).unwrap() {
                    got.push((
                        v.labels.iter().map(|l| (l.name.to_string(), l.value.to_string())).collect(),
                        v.samples.iter().map(|s| (s.t, s.v.to_bits())).collect(),
                    ));
                }
                prop_assert_eq!(got, want);
            }
        }

        #[test]
        fn mutations_never_panic_and_agree_when_both_accept(req in arb_request(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4), cut in any::<prop::sample::Index>()) {
            let mut body = req.encode_to_vec();
            if body.is_empty() { return Ok(()); }
            for (i, b) in &flips {
                let i = i.index(body.len());
                body[i] = *b;
            }
            body.truncate(cut.index(body.len() + 1));
            if let (Ok(f), Some(s)) = (fast(&body), slow(&body)) {
                prop_assert_eq!(f, s);
            }
        }
    }
}
