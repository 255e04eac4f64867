//! Builders the histogram codec tests share.

use crate::histogram::Appended;
use crate::{FloatHistogramAppender, HistogramAppender};
use std::collections::BTreeMap;
use storeapi::histogram::{CounterResetHint, FloatHistogram, Histogram, Span};

/// Packs a string of `0`/`1` (spaces ignored) into bytes, zero-padded.
pub fn pack(bits: &str) -> Vec<u8> {
    let bits: Vec<u8> = bits.bytes().filter(|b| *b == b'0' || *b == b'1').collect();
    bits.chunks(8)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u8, |acc, (i, b)| acc | ((*b - b'0') << (7 - i)))
        })
        .collect()
}

/// Spans for ascending bucket indices (a new span at every gap).
pub fn spans_for(idx: &[i32]) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    let mut last: Option<i32> = None;
    for &i in idx {
        match last {
            Some(l) if i == l + 1 => {
                if let Some(s) = spans.last_mut() {
                    s.length += 1;
                }
            }
            Some(l) => spans.push(Span {
                offset: i - l - 1,
                length: 1,
            }),
            None => spans.push(Span {
                offset: i,
                length: 1,
            }),
        }
        last = Some(i);
    }
    spans
}

/// An integer histogram from absolute bucket counts per index.
pub fn hist(
    schema: i32,
    zero_count: u64,
    pos: &BTreeMap<i32, u64>,
    neg: &BTreeMap<i32, u64>,
    sum: f64,
) -> Histogram {
    let deltas = |m: &BTreeMap<i32, u64>| {
        let mut last = 0i64;
        m.values()
            .map(|&c| {
                let d = c as i64 - last;
                last = c as i64;
                d
            })
            .collect::<Vec<_>>()
    };
    let pk: Vec<i32> = pos.keys().copied().collect();
    let nk: Vec<i32> = neg.keys().copied().collect();
    Histogram {
        hint: CounterResetHint::Unknown,
        schema,
        zero_threshold: if schema == -53 { 0.0 } else { 2f64.powi(-128) },
        zero_count,
        count: zero_count + pos.values().sum::<u64>() + neg.values().sum::<u64>(),
        sum,
        positive_spans: spans_for(&pk),
        negative_spans: spans_for(&nk),
        positive_buckets: deltas(pos),
        negative_buckets: deltas(neg),
        custom_values: if schema == -53 {
            (0..16).map(|i| 0.25 * (i + 1) as f64).collect()
        } else {
            Vec::new()
        },
    }
}

/// Appends a sequence the way the head does (cutting on `NewChunk`, passing the
/// previous appender to a chunk that was just cut) and returns every chunk's bytes.
pub fn append_all_int(samples: &[(i64, Histogram)]) -> Vec<Vec<u8>> {
    let mut done = Vec::new();
    let mut cur = HistogramAppender::new();
    for (t, h) in samples {
        match cur.append(None, *t, h).expect("append") {
            Appended::InPlace | Appended::Recoded => {}
            Appended::NewChunk(n) => done.push(std::mem::replace(&mut cur, n).into_bytes()),
        }
    }
    done.push(cur.into_bytes());
    done
}

pub fn append_all_float(samples: &[(i64, FloatHistogram)]) -> Vec<Vec<u8>> {
    let mut done = Vec::new();
    let mut cur = FloatHistogramAppender::new();
    for (t, h) in samples {
        match cur.append(None, *t, h).expect("append") {
            Appended::InPlace | Appended::Recoded => {}
            Appended::NewChunk(n) => done.push(std::mem::replace(&mut cur, n).into_bytes()),
        }
    }
    done.push(cur.into_bytes());
    done
}
