//! Remote-write 1.0 bodies: a fast decoder that walks the protobuf bytes of a (snappy-
//! decompressed) `prometheus.WriteRequest` and borrows label names and values from the
//! buffer, and an encoder for clients, tests and benchmarks.
//!
//! The decoder never allocates per label: [`WriteRequestReader::next_series`] fills a
//! caller-owned [`SeriesView`] whose vectors are reused from one series to the next. Every
//! read is bounds-checked; malformed input is an error, never a panic.

pub use super::proto_reader::DecodeError;
use super::proto_reader::{Cursor, WT_I64, WT_LEN, WT_VARINT};
use crate::{Labels, Sample};

/// One label borrowed from the request buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelRef<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

/// One decoded series. Labels are in the order the client sent them (not validated).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SeriesView<'a> {
    pub labels: Vec<LabelRef<'a>>,
    pub samples: Vec<Sample>,
    /// Native histogram samples present (field 4); not decoded.
    pub histograms: usize,
    /// Exemplars present (field 3); not decoded.
    pub exemplars: usize,
    /// The series' whole `TimeSeries` message as sent, so a router can forward it without
    /// re-encoding.
    pub raw: &'a [u8],
}

impl<'a> SeriesView<'a> {
    /// Decodes one `TimeSeries` message (e.g. a forwarded series) into `self`.
    pub fn decode(&mut self, raw: &'a [u8]) -> Result<(), DecodeError> {
        self.clear();
        self.raw = raw;
        decode_series(raw, self)
    }

    fn clear(&mut self) {
        self.raw = &[];
        self.labels.clear();
        self.samples.clear();
        self.histograms = 0;
        self.exemplars = 0;
    }
}

/// Streams the series of an uncompressed `prometheus.WriteRequest` body.
pub struct WriteRequestReader<'a> {
    cur: Cursor<'a>,
}

impl<'a> WriteRequestReader<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        WriteRequestReader {
            cur: Cursor::new(body),
        }
    }

    /// Decodes the next series into `out` (cleared first). Returns `Ok(false)` at the end.
    /// Metadata and unknown fields are skipped.
    pub fn next_series(&mut self, out: &mut SeriesView<'a>) -> Result<bool, DecodeError> {
        out.clear();
        while !self.cur.done() {
            let (field, wt) = self.cur.tag()?;
            if field == 1 {
                self.cur.expect(field, wt, WT_LEN)?;
                let ts = self.cur.bytes("timeseries")?;
                out.decode(ts)?;
                return Ok(true);
            }
            self.cur.skip(field, wt)?;
        }
        Ok(false)
    }
}

fn decode_series<'a>(buf: &'a [u8], out: &mut SeriesView<'a>) -> Result<(), DecodeError> {
    let mut c = Cursor::new(buf);
    while !c.done() {
        let (field, wt) = c.tag()?;
        match field {
            1 => {
                c.expect(field, wt, WT_LEN)?;
                let l = c.bytes("label")?;
                out.labels.push(decode_label(l)?);
            }
            2 => {
                c.expect(field, wt, WT_LEN)?;
                let s = c.bytes("sample")?;
                out.samples.push(decode_sample(s)?);
            }
            3 => {
                c.expect(field, wt, WT_LEN)?;
                c.bytes("exemplar")?;
                out.exemplars += 1;
            }
            4 => {
                c.expect(field, wt, WT_LEN)?;
                c.bytes("histogram")?;
                out.histograms += 1;
            }
            _ => c.skip(field, wt)?,
        }
    }
    Ok(())
}

#[inline]
pub(crate) fn decode_label(buf: &[u8]) -> Result<LabelRef<'_>, DecodeError> {
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

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    ((64 - (v | 1).leading_zeros() as usize) + 6) / 7
}

fn put_len_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
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

/// The parts of a `thanos.WriteRequest` (a forwarded write between receivers): its
/// series as raw `TimeSeries` messages, the tenant and the 1-based replica number (0 = not
/// replicated yet).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ForwardedParts<'a> {
    pub series: Vec<&'a [u8]>,
    pub tenant: &'a str,
    pub replica: i64,
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

/// Encodes a `thanos.WriteRequest` from raw `TimeSeries` messages (the inverse of
/// [`split_forwarded`]).
pub fn encode_forwarded<B: AsRef<[u8]>>(series: &[B], tenant: &str, replica: i64) -> Vec<u8> {
    let mut out = encode_raw_series(series);
    if !tenant.is_empty() {
        put_len_field(&mut out, 2, tenant.as_bytes());
    }
    if replica != 0 {
        out.push(3 << 3);
        put_varint(&mut out, replica as u64);
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

        let fwd = encode_forwarded(&raws, "team-a", 2);
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

    fn decode_all(
        buf: &[u8],
    ) -> Result<Vec<(Vec<(String, String)>, Vec<Sample>, usize)>, DecodeError> {
        let mut r = WriteRequestReader::new(buf);
        let mut v = SeriesView::default();
        let mut out = Vec::new();
        while r.next_series(&mut v)? {
            out.push((
                v.labels
                    .iter()
                    .map(|l| (l.name.to_string(), l.value.to_string()))
                    .collect(),
                v.samples.clone(),
                v.histograms,
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
        }
    }
}
