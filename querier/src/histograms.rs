//! Native-histogram samples from StoreAPI chunks (`HISTOGRAM` and `FLOAT_HISTOGRAM`
//! encodings, Prometheus's chunk formats passed through by receivers and store gateways),
//! and their merging across overlapping chunks of one store and across replicas.
//!
//! Counter-reset hints are downgraded to `Unknown` wherever the source of the samples
//! changes (another chunk run of one store, or another replica). A hint says "no reset
//! since the previous sample *of this chunk*"; after a switch the previous sample came
//! from elsewhere, and PromQL trusting `NotCounterReset` there would miss a reset
//! (Prometheus's merge iterators do the same; Thanos's dedup does not).

use storeapi::dedup;
use storeapi::histogram::HistogramSample;
use storeapi::wire::thanos;

use crate::proxy::RawChunk;

/// Whether a StoreAPI chunk encoding is one of the histogram encodings.
pub fn is_histogram_encoding(encoding: i32) -> bool {
    encoding == thanos::chunk::Encoding::Histogram as i32
        || encoding == thanos::chunk::Encoding::FloatHistogram as i32
}

/// Decodes the histogram samples of a run of non-overlapping chunks (other encodings
/// skipped), trimmed to `[mint, maxt]`.
pub fn decode_histogram_chunks(
    chunks: &[RawChunk],
    mint: i64,
    maxt: i64,
) -> Result<Vec<HistogramSample>, String> {
    let mut out: Vec<HistogramSample> = Vec::new();
    for c in chunks {
        if c.max_time < mint || c.min_time > maxt {
            continue;
        }
        let Some((encoding, data)) = &c.raw else {
            continue;
        };
        let encoding = match *encoding {
            e if e == thanos::chunk::Encoding::Histogram as i32 => chunkenc::Encoding::Histogram,
            e if e == thanos::chunk::Encoding::FloatHistogram as i32 => {
                chunkenc::Encoding::FloatHistogram
            }
            _ => continue,
        };
        let chunk = chunkenc::Chunk {
            min_time: c.min_time,
            max_time: c.max_time,
            encoding,
            data: data.clone(),
        };
        for s in chunk.iter_histograms().map_err(|e| e.to_string())? {
            let s = s.map_err(|e| e.to_string())?;
            if s.t > maxt {
                break;
            }
            if s.t >= mint && out.last().is_none_or(|l| l.t < s.t) {
                out.push(s);
            }
        }
    }
    Ok(out)
}

/// Merges replicas of one series' histogram samples: with `dedup_on` by Thanos's penalty
/// algorithm (the timestamps it picks are exactly those it picks for float samples), else
/// as a chain (each timestamp once, earlier replicas first). Hints become `Unknown` where
/// the chosen replica changes. The compactor's `penalty` merge uses the same
/// [`dedup::merge_replicas_by`].
pub fn merge_replicas(replicas: Vec<Vec<HistogramSample>>, dedup_on: bool) -> Vec<HistogramSample> {
    dedup::merge_replicas_by(
        replicas,
        |s| s.t,
        dedup_on,
        |s| s.h.forget_counter_reset_hint(),
    )
}

/// A chain merge of runs of one store (overlapping chunks): each timestamp once, from
/// the earliest run holding it; hints `Unknown` where the run changes.
pub fn chain(runs: Vec<Vec<HistogramSample>>) -> Vec<HistogramSample> {
    dedup::chain_by(runs, |s| s.t, |s| s.h.forget_counter_reset_hint())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use chunkenc::histogram::{Appended, HistogramAppender};
    use storeapi::histogram::{CounterResetHint, HistogramValue};
    use storeapi::histogram::{Histogram, Span};

    fn hist(count: u64) -> Histogram {
        Histogram {
            schema: 0,
            zero_threshold: 1e-128,
            count,
            sum: count as f64 * 1.5,
            positive_spans: vec![Span {
                offset: 0,
                length: 1,
            }],
            positive_buckets: vec![count as i64],
            ..Default::default()
        }
    }

    fn sample(t: i64, count: u64, hint: CounterResetHint) -> HistogramSample {
        let mut h = hist(count);
        h.hint = hint;
        HistogramSample {
            t,
            h: HistogramValue::Int(Box::new(h)),
        }
    }

    fn hint(s: &HistogramSample) -> CounterResetHint {
        s.h.hint()
    }

    /// A HISTOGRAM chunk of `(t, count)` samples as a store would send it.
    fn chunk(samples: &[(i64, u64)]) -> RawChunk {
        let mut app = HistogramAppender::new();
        for &(t, c) in samples {
            match app.append(None, t, &hist(c)) {
                Ok(Appended::InPlace) | Ok(Appended::Recoded) => {}
                other => panic!("append {t}: {other:?}"),
            }
        }
        RawChunk {
            min_time: samples[0].0,
            max_time: samples[samples.len() - 1].0,
            raw: Some((
                thanos::chunk::Encoding::Histogram as i32,
                Bytes::from(app.into_bytes()),
            )),
            aggrs: Default::default(),
        }
    }

    #[test]
    fn decodes_histogram_chunks_trimmed_to_the_range() {
        let c = chunk(&[(1000, 1), (2000, 2), (3000, 3), (4000, 5)]);
        let got = decode_histogram_chunks(&[c], 1500, 3000).unwrap();
        let ts: Vec<i64> = got.iter().map(|s| s.t).collect();
        assert_eq!(ts, [2000, 3000]);
        match &got[1].h {
            HistogramValue::Int(h) => assert_eq!((h.count, h.sum), (3, 4.5)),
            other => panic!("{other:?}"),
        }
        // Corrupt bytes are an error, not a panic.
        let mut bad = chunk(&[(1000, 1), (2000, 2)]);
        bad.raw = Some((
            thanos::chunk::Encoding::Histogram as i32,
            Bytes::from_static(&[0, 9, 1]),
        ));
        assert!(decode_histogram_chunks(&[bad], 0, 10_000).is_err());
    }

    #[test]
    fn replica_switches_downgrade_hints() {
        use CounterResetHint::*;
        // Replica 0 stops at 3000; replica 1 continues with a gap-free stream.
        let a = vec![
            sample(1000, 1, Unknown),
            sample(2000, 2, NotCounterReset),
            sample(3000, 3, NotCounterReset),
        ];
        let b: Vec<HistogramSample> = (1..=8)
            .map(|k| sample(k * 1000 + 10, k as u64, NotCounterReset))
            .collect();
        let out = merge_replicas(vec![a.clone(), b], true);
        assert!(out.windows(2).all(|w| w[0].t < w[1].t));
        let switch = out
            .iter()
            .position(|s| s.t % 1000 == 10)
            .expect("switched to replica 1");
        assert_eq!(hint(&out[switch]), Unknown, "first sample after the switch");
        assert!(out[switch + 1..].iter().all(|s| hint(s) == NotCounterReset));
        assert_eq!(
            out[..switch].to_vec(),
            a[..switch].to_vec(),
            "replica 0 unchanged"
        );

        // Gauges keep their hint.
        let g = vec![sample(1000, 1, Gauge)];
        let h = vec![sample(1500, 1, Gauge), sample(2500, 1, Gauge)];
        assert!(
            merge_replicas(vec![g, h], false)
                .iter()
                .all(|s| hint(s) == Gauge)
        );
    }

    #[test]
    fn chain_keeps_each_timestamp_once() {
        use CounterResetHint::*;
        let r0 = vec![
            sample(1000, 1, NotCounterReset),
            sample(3000, 3, NotCounterReset),
        ];
        let r1 = vec![
            sample(2000, 2, NotCounterReset),
            sample(3000, 9, NotCounterReset),
        ];
        let out = chain(vec![r0, r1]);
        let ts: Vec<(i64, CounterResetHint)> = out.iter().map(|s| (s.t, hint(s))).collect();
        assert_eq!(
            ts,
            [(1000, NotCounterReset), (2000, Unknown), (3000, Unknown)]
        );
        match &out[2].h {
            HistogramValue::Int(h) => assert_eq!(h.count, 3, "the earlier run wins a tie"),
            other => panic!("{other:?}"),
        }
    }
}
