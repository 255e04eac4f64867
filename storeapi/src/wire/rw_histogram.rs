//! The remote-write `Histogram` message (identical field numbers in `prometheus.Histogram`
//! of remote write 1.0 and `io.prometheus.write.v2.Histogram`) decoded into the shared
//! [`crate::histogram`] model.
//!
//! The `count` oneof decides the flavour, as Prometheus's `IsFloatHistogram`: `count_float`
//! set means a float histogram (absolute `*_counts`), anything else an integer histogram
//! (delta-encoded `*_deltas`); the other flavour's bucket fields are ignored. Every list
//! is bounded by [`DecodeLimits::max_histogram_buckets`] while it is read, so a flood of
//! buckets is refused before it is held in memory.

use super::proto_reader::{Cursor, DecodeError, Elem, WT_I64, WT_LEN, WT_VARINT};
use crate::histogram::{
    CounterResetHint, FloatHistogram, Histogram, HistogramSample, HistogramValue, Span,
};

/// Bounds on the counts a remote-write client controls inside one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Buckets (positive + negative), spans (both sides) and custom bounds of one
    /// histogram, each counted separately against this number.
    pub max_histogram_buckets: usize,
}

/// Default per-histogram bound: far above what a real exponential histogram holds
/// (Prometheus's client libraries default to 160 buckets; schema 8 over ±1e±10 is ~30 000
/// for a pathological spread), small enough that one histogram stays well under a megabyte.
pub const DEFAULT_MAX_HISTOGRAM_BUCKETS: usize = 32_768;

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_histogram_buckets: DEFAULT_MAX_HISTOGRAM_BUCKETS,
        }
    }
}

#[inline]
fn zigzag64(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[inline]
fn zigzag32(v: u64) -> i32 {
    let v = v as u32;
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}

/// A packed `sint64` field (bucket deltas, the bulk of a histogram) appended to `v`,
/// which with `others` may hold at most `limit` values. A field of no more bytes than
/// the limit leaves room for cannot hold too many values, and is decoded straight into
/// `v`; a longer one has its values counted first (a varint ends at each byte below
/// 0x80), so the limit is checked before anything is held. Through the general packed
/// reader each value went through an element callback and a bounded push: a quarter
/// of decoding a histogram request (issue #20).
fn packed_sint64_into(
    packed: &[u8],
    v: &mut Vec<i64>,
    others: usize,
    what: &'static str,
    limit: usize,
) -> Result<(), DecodeError> {
    let start = v.len();
    if others + start + packed.len() <= limit {
        // Fewer bytes than the limit allows values: no need to count them first.
        v.reserve(packed.len());
        let mut c = Cursor::new(packed);
        while !c.done() {
            v.push(zigzag64(c.varint()?));
        }
        return Ok(());
    }
    let n = packed.iter().filter(|&&b| b < 0x80).count();
    if others + start + n > limit {
        // The count at which reading one at a time stops, as every other limit says.
        let count = (others + start + n).min(limit + 1);
        return Err(DecodeError::Limit { what, count, limit });
    }
    v.resize(start + n, 0);
    let mut c = Cursor::new(packed);
    for slot in &mut v[start..] {
        *slot = zigzag64(c.varint()?);
    }
    if !c.done() {
        // A last varint without its final byte.
        return Err(DecodeError::Truncated("varint"));
    }
    Ok(())
}

/// Pushes `x` unless `others + v.len()` (the elements held so far under one limit)
/// already reached `limit`; for a packed field's bound, reserves that much room, never
/// past what `limit` allows (the rest of a hostile field fails before it is pushed).
fn push_bounded<T>(
    v: &mut Vec<T>,
    x: Elem<T>,
    others: usize,
    what: &'static str,
    limit: usize,
) -> Result<(), DecodeError> {
    let x = match x {
        Elem::AtMost(n) => {
            v.reserve(n.min(limit.saturating_sub(others + v.len())));
            return Ok(());
        }
        Elem::Value(x) => x,
    };
    let count = others + v.len() + 1;
    if count > limit {
        return Err(DecodeError::Limit { what, count, limit });
    }
    v.push(x);
    Ok(())
}

fn decode_span(buf: &[u8]) -> Result<Span, DecodeError> {
    let mut c = Cursor::new(buf);
    let mut s = Span::default();
    while !c.done() {
        let (field, wt) = c.tag()?;
        match field {
            1 => {
                c.expect(field, wt, WT_VARINT)?;
                s.offset = zigzag32(c.varint()?);
            }
            2 => {
                c.expect(field, wt, WT_VARINT)?;
                s.length = c.varint()? as u32;
            }
            _ => c.skip(field, wt)?,
        }
    }
    Ok(s)
}

#[derive(Clone, Copy)]
enum Count {
    Int(u64),
    Float(f64),
}

/// Decodes one `Histogram` message. Validation (spans against buckets, counts, schema)
/// is left to [`HistogramValue::validate`], so a receiver can count invalid histograms
/// apart from malformed bytes.
pub fn decode_histogram(buf: &[u8], limits: &DecodeLimits) -> Result<HistogramSample, DecodeError> {
    let max = limits.max_histogram_buckets;
    let mut c = Cursor::new(buf);
    let mut count: Option<Count> = None;
    let mut zero: Option<Count> = None;
    let mut sum = 0.0;
    let mut schema = 0;
    let mut zero_threshold = 0.0;
    let mut hint = CounterResetHint::Unknown;
    let mut t = 0i64;
    // The integer histogram's box and vectors come from the per-thread pool the head
    // gives them back to after the commit (`histogram::pool`).
    let mut shell = crate::histogram::pool::take();
    let mut pos_spans = std::mem::take(&mut shell.positive_spans);
    let mut neg_spans = std::mem::take(&mut shell.negative_spans);
    let mut pos_deltas = std::mem::take(&mut shell.positive_buckets);
    let mut neg_deltas = std::mem::take(&mut shell.negative_buckets);
    let mut pos_counts = Vec::new();
    let mut neg_counts = Vec::new();
    let mut custom = std::mem::take(&mut shell.custom_values);
    let mut spans_total = 0usize;
    let f64_of = |c: &mut Cursor<'_>| c.fixed64().map(f64::from_bits);
    while !c.done() {
        let (field, wt) = c.tag()?;
        match field {
            1 => {
                c.expect(field, wt, WT_VARINT)?;
                count = Some(Count::Int(c.varint()?));
            }
            2 => {
                c.expect(field, wt, WT_I64)?;
                count = Some(Count::Float(f64::from_bits(c.fixed64()?)));
            }
            3 => {
                c.expect(field, wt, WT_I64)?;
                sum = f64::from_bits(c.fixed64()?);
            }
            4 => {
                c.expect(field, wt, WT_VARINT)?;
                schema = zigzag32(c.varint()?);
            }
            5 => {
                c.expect(field, wt, WT_I64)?;
                zero_threshold = f64::from_bits(c.fixed64()?);
            }
            6 => {
                c.expect(field, wt, WT_VARINT)?;
                zero = Some(Count::Int(c.varint()?));
            }
            7 => {
                c.expect(field, wt, WT_I64)?;
                zero = Some(Count::Float(f64::from_bits(c.fixed64()?)));
            }
            8 | 11 => {
                c.expect(field, wt, WT_LEN)?;
                let s = decode_span(c.bytes("bucket span")?)?;
                spans_total += 1;
                if spans_total > max {
                    return Err(DecodeError::Limit {
                        what: "histogram bucket spans",
                        count: spans_total,
                        limit: max,
                    });
                }
                if field == 8 {
                    neg_spans.push(s);
                } else {
                    pos_spans.push(s);
                }
            }
            9 | 12 => {
                let (out, other) = if field == 9 {
                    (&mut neg_deltas, pos_deltas.len())
                } else {
                    (&mut pos_deltas, neg_deltas.len())
                };
                if wt == WT_LEN {
                    let packed = c.bytes("packed repeated field")?;
                    packed_sint64_into(packed, out, other, "histogram buckets", max)?;
                } else {
                    c.repeated_sized(
                        field,
                        wt,
                        WT_VARINT,
                        |c| c.varint().map(zigzag64),
                        |d| push_bounded(out, d, other, "histogram buckets", max),
                    )?;
                }
            }
            10 | 13 => {
                let (out, other) = if field == 10 {
                    (&mut neg_counts, pos_counts.len())
                } else {
                    (&mut pos_counts, neg_counts.len())
                };
                c.repeated_sized(field, wt, WT_I64, f64_of, |d| {
                    push_bounded(out, d, other, "histogram buckets", max)
                })?;
            }
            14 => {
                c.expect(field, wt, WT_VARINT)?;
                hint = CounterResetHint::from_proto(c.varint()? as i32);
            }
            15 => {
                c.expect(field, wt, WT_VARINT)?;
                t = c.varint()? as i64;
            }
            16 => {
                c.repeated_sized(field, wt, WT_I64, f64_of, |d| {
                    push_bounded(&mut custom, d, 0, "histogram custom bounds", max)
                })?;
            }
            _ => c.skip(field, wt)?,
        }
    }
    let h = match count {
        Some(Count::Float(count)) => {
            let f = FloatHistogram {
                hint,
                schema,
                zero_threshold,
                zero_count: match zero {
                    Some(Count::Float(z)) => z,
                    _ => 0.0,
                },
                count,
                sum,
                positive_spans: pos_spans,
                negative_spans: neg_spans,
                positive_buckets: pos_counts,
                negative_buckets: neg_counts,
                custom_values: custom,
            };
            crate::histogram::pool::give(shell);
            HistogramValue::Float(Box::new(f))
        }
        Some(Count::Int(_)) | None => {
            *shell = Histogram {
                hint,
                schema,
                zero_threshold,
                zero_count: match zero {
                    Some(Count::Int(z)) => z,
                    _ => 0,
                },
                count: match count {
                    Some(Count::Int(n)) => n,
                    _ => 0,
                },
                sum,
                positive_spans: pos_spans,
                negative_spans: neg_spans,
                positive_buckets: pos_deltas,
                negative_buckets: neg_deltas,
                custom_values: custom,
            };
            HistogramValue::Int(shell)
        }
    };
    Ok(HistogramSample { t, h })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::prompb;
    use prost::Message;

    fn span(offset: i32, length: u32) -> prompb::BucketSpan {
        prompb::BucketSpan { offset, length }
    }

    #[test]
    fn integer_histogram_every_field() {
        let m = prompb::Histogram {
            count: Some(prompb::histogram::Count::CountInt(7)),
            sum: 12.5,
            schema: -2,
            zero_threshold: 1e-128,
            zero_count: Some(prompb::histogram::ZeroCount::ZeroCountInt(1)),
            negative_spans: vec![span(-3, 1)],
            negative_deltas: vec![1],
            negative_counts: vec![99.0], // other flavour: ignored
            positive_spans: vec![span(0, 2), span(1, 1)],
            positive_deltas: vec![2, -1, 0],
            positive_counts: vec![],
            reset_hint: 2,
            timestamp: -1234,
            custom_values: vec![],
        };
        let got = decode_histogram(&m.encode_to_vec(), &DecodeLimits::default()).unwrap();
        assert_eq!(got.t, -1234);
        let HistogramValue::Int(h) = got.h else {
            panic!("count_int must give an integer histogram")
        };
        assert_eq!(
            *h,
            Histogram {
                hint: CounterResetHint::NotCounterReset,
                schema: -2,
                zero_threshold: 1e-128,
                zero_count: 1,
                count: 7,
                sum: 12.5,
                positive_spans: vec![
                    Span {
                        offset: 0,
                        length: 2
                    },
                    Span {
                        offset: 1,
                        length: 1
                    }
                ],
                negative_spans: vec![Span {
                    offset: -3,
                    length: 1
                }],
                positive_buckets: vec![2, -1, 0],
                negative_buckets: vec![1],
                custom_values: vec![],
            }
        );
        // 2 + 1 + 1 (positive) + 1 (negative) + 1 (zero) = 6 ≠ 7.
        assert!(h.validate().is_err());
    }

    #[test]
    fn float_histogram_and_custom_buckets() {
        let m = prompb::Histogram {
            count: Some(prompb::histogram::Count::CountFloat(3.5)),
            sum: -1.0,
            schema: -53,
            zero_count: Some(prompb::histogram::ZeroCount::ZeroCountFloat(0.0)),
            positive_spans: vec![span(0, 2)],
            positive_deltas: vec![5, 5], // other flavour: ignored
            positive_counts: vec![1.5, 2.0],
            reset_hint: 3,
            timestamp: 99,
            custom_values: vec![0.5, 1.0],
            ..Default::default()
        };
        let got = decode_histogram(&m.encode_to_vec(), &DecodeLimits::default()).unwrap();
        assert_eq!(got.t, 99);
        assert_eq!(got.h.hint(), CounterResetHint::Gauge);
        let HistogramValue::Float(h) = &got.h else {
            panic!("count_float must give a float histogram")
        };
        assert_eq!(h.schema, -53);
        assert_eq!(h.count, 3.5);
        assert_eq!(h.sum, -1.0);
        assert_eq!(h.positive_buckets, vec![1.5, 2.0]);
        assert_eq!(h.custom_values, vec![0.5, 1.0]);
        got.h.validate().unwrap();
    }

    #[test]
    fn unset_oneof_is_an_empty_integer_histogram() {
        let got = decode_histogram(&[], &DecodeLimits::default()).unwrap();
        assert_eq!(got.h, HistogramValue::Int(Box::default()));
        assert_eq!(got.t, 0);
    }

    #[test]
    fn unpacked_repeated_fields_decode_like_packed() {
        // positive_deltas (12) unpacked: two separate varint fields, zigzag 4 → 2, 1 → -1;
        // custom_values (16) unpacked: one fixed64.
        let mut buf = vec![12 << 3, 4, 12 << 3, 1];
        buf.extend_from_slice(&[(16 << 3 | 1) as u8, 0x01]);
        buf.extend_from_slice(&2.0f64.to_le_bytes());
        let got = decode_histogram(&buf, &DecodeLimits::default()).unwrap();
        let HistogramValue::Int(h) = got.h else {
            panic!()
        };
        assert_eq!(h.positive_buckets, vec![2, -1]);
        assert_eq!(h.custom_values, vec![2.0]);
    }

    #[test]
    fn bucket_floods_are_refused_while_reading() {
        let lim = DecodeLimits {
            max_histogram_buckets: 4,
        };
        let ok = prompb::Histogram {
            positive_deltas: vec![1, 1],
            negative_deltas: vec![1, 1],
            ..Default::default()
        };
        decode_histogram(&ok.encode_to_vec(), &lim).unwrap();
        // More bytes than the limit allows values, but no more values: taken whole.
        let wide = prompb::Histogram {
            positive_deltas: vec![300, -300, 300, 1],
            ..Default::default()
        };
        let h = decode_histogram(&wide.encode_to_vec(), &lim).unwrap();
        let HistogramValue::Int(h) = h.h else {
            panic!("an integer histogram")
        };
        assert_eq!(h.positive_buckets, [300, -300, 300, 1]);
        let flood = prompb::Histogram {
            positive_deltas: vec![1, 1, 1],
            negative_deltas: vec![1, 1],
            ..Default::default()
        };
        let e = decode_histogram(&flood.encode_to_vec(), &lim).unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError::Limit {
                    what: "histogram buckets",
                    count: 5,
                    limit: 4,
                }
            ),
            "{e}"
        );
        // However far over, the count named is the first one over the limit.
        let far = prompb::Histogram {
            positive_deltas: vec![1; 10],
            ..Default::default()
        };
        let e = decode_histogram(&far.encode_to_vec(), &lim).unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError::Limit {
                    count: 5,
                    limit: 4,
                    ..
                }
            ),
            "{e}"
        );
        let counts = prompb::Histogram {
            count: Some(prompb::histogram::Count::CountFloat(1.0)),
            positive_counts: vec![0.0; 5],
            ..Default::default()
        };
        assert!(decode_histogram(&counts.encode_to_vec(), &lim).is_err());
        let spans = prompb::Histogram {
            positive_spans: vec![span(0, 0); 3],
            negative_spans: vec![span(0, 0); 2],
            ..Default::default()
        };
        let e = decode_histogram(&spans.encode_to_vec(), &lim).unwrap_err();
        assert!(e.to_string().contains("spans"), "{e}");
        let custom = prompb::Histogram {
            custom_values: vec![1.0; 5],
            ..Default::default()
        };
        let e = decode_histogram(&custom.encode_to_vec(), &lim).unwrap_err();
        assert!(e.to_string().contains("custom bounds"), "{e}");
    }

    #[test]
    fn malformed_bytes_are_errors() {
        let lim = DecodeLimits::default();
        // count_int with the fixed64 wire type.
        assert!(decode_histogram(&[1 << 3 | 1, 0, 0, 0, 0, 0, 0, 0, 0], &lim).is_err());
        // Truncated packed deltas.
        assert!(decode_histogram(&[12 << 3 | 2, 5, 1], &lim).is_err());
        // Packed doubles whose length is not a multiple of 8.
        assert!(decode_histogram(&[13 << 3 | 2, 3, 0, 0, 0], &lim).is_err());
        // Truncated span.
        assert!(decode_histogram(&[11 << 3 | 2, 2, 8], &lim).is_err());
        // Packed deltas whose last varint lacks its final byte.
        let e = decode_histogram(&[12 << 3 | 2, 2, 0x02, 0x80], &lim).unwrap_err();
        assert!(matches!(e, DecodeError::Truncated("varint")), "{e}");
        // A varint over ten bytes inside packed deltas.
        let mut long = vec![12 << 3 | 2, 11];
        long.extend([0xff; 10]);
        long.push(0x01);
        assert!(decode_histogram(&long, &lim).is_err());
    }

    /// Deltas of every width (one to ten bytes, both signs) read back as sent.
    #[test]
    fn packed_deltas_of_every_width_read_back() {
        let deltas: Vec<i64> = (0..64)
            .flat_map(|b| {
                [
                    1i64 << b,
                    (1i64 << b).wrapping_neg(),
                    (1i64 << b).wrapping_sub(1),
                ]
            })
            .chain([i64::MIN, i64::MAX, 0])
            .collect();
        let h = prompb::Histogram {
            positive_spans: vec![span(0, deltas.len() as u32)],
            positive_deltas: deltas.clone(),
            negative_spans: vec![span(0, 3)],
            negative_deltas: vec![-1, 300, -70_000],
            ..Default::default()
        };
        let lim = DecodeLimits {
            max_histogram_buckets: 1000,
        };
        let got = decode_histogram(&h.encode_to_vec(), &lim).unwrap();
        let HistogramValue::Int(got) = got.h else {
            panic!("an integer histogram")
        };
        assert_eq!(got.positive_buckets, deltas);
        assert_eq!(got.negative_buckets, vec![-1, 300, -70_000]);
    }
}
