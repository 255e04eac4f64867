//! Native histogram chunk encode/decode speed: a scrape-like counter histogram
//! (schema 3, 24 populated buckets in two spans, counts growing every 15 s), 120 samples
//! per chunk. Run: `cargo bench -p chunkenc --bench histogram`.

use chunkenc::{
    Appended, FloatHistogramAppender, FloatHistogramIterator, HistogramAppender, HistogramIterator,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use storeapi::histogram::{Histogram, Span};

const SAMPLES: usize = 120;

fn samples() -> Vec<(i64, Histogram)> {
    let mut abs = [0i64; 24];
    (0..SAMPLES)
        .map(|i| {
            for (k, c) in abs.iter_mut().enumerate() {
                *c += ((i * 7 + k * 13) % 5) as i64;
            }
            let mut last = 0;
            let deltas: Vec<i64> = abs
                .iter()
                .map(|&c| {
                    let d = c - last;
                    last = c;
                    d
                })
                .collect();
            let count = abs.iter().sum::<i64>() as u64 + i as u64;
            (
                1_700_000_000_000 + i as i64 * 15_000,
                Histogram {
                    schema: 3,
                    zero_threshold: 2f64.powi(-128),
                    zero_count: i as u64,
                    count,
                    sum: count as f64 * 0.0173,
                    positive_spans: vec![
                        Span {
                            offset: -4,
                            length: 16,
                        },
                        Span {
                            offset: 2,
                            length: 8,
                        },
                    ],
                    positive_buckets: deltas,
                    ..Default::default()
                },
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let s = samples();
    let fs: Vec<_> = s.iter().map(|(t, h)| (*t, h.to_float())).collect();
    let encode_int = || {
        let mut a = HistogramAppender::new();
        for (t, h) in &s {
            if let Ok(Appended::NewChunk(_)) = a.append(None, *t, h) {
                panic!("unexpected cut");
            }
        }
        a.into_bytes()
    };
    let encode_float = || {
        let mut a = FloatHistogramAppender::new();
        for (t, h) in &fs {
            if let Ok(Appended::NewChunk(_)) = a.append(None, *t, h) {
                panic!("unexpected cut");
            }
        }
        a.into_bytes()
    };
    let int_chunk = encode_int();
    let float_chunk = encode_float();
    eprintln!(
        "chunk bytes per sample: int {:.2}, float {:.2}",
        int_chunk.len() as f64 / SAMPLES as f64,
        float_chunk.len() as f64 / SAMPLES as f64
    );
    let mut g = c.benchmark_group("histogram_chunk");
    g.throughput(Throughput::Elements(SAMPLES as u64));
    g.bench_function("encode_int", |b| b.iter(|| black_box(encode_int())));
    g.bench_function("encode_float", |b| b.iter(|| black_box(encode_float())));
    g.bench_function("decode_int", |b| {
        b.iter(|| {
            HistogramIterator::new(black_box(&int_chunk))
                .map(|it| it.filter(|r| r.is_ok()).count())
                .unwrap_or(0)
        })
    });
    g.bench_function("decode_float", |b| {
        b.iter(|| {
            FloatHistogramIterator::new(black_box(&float_chunk))
                .map(|it| it.filter(|r| r.is_ok()).count())
                .unwrap_or(0)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
