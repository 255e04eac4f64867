//! Remote-write decode throughput: the borrowing decoder vs prost's owned decoding, and
//! the borrowing decoder over native histograms.
//! Run: `cargo bench -p storeapi --features wire --bench remote_write`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use storeapi::wire::prometheus;
use storeapi::wire::remote_write::{
    SeriesView, WriteRequestReader, encode_write_request, snappy_compress, snappy_decompress,
};
use storeapi::{Labels, Sample};

/// 2000 series × 1 sample with ~8 realistic labels, like a Prometheus shard's request.
fn request() -> Vec<u8> {
    let series: Vec<(Labels, Vec<Sample>)> = (0..2000)
        .map(|i| {
            let l = Labels::from_pairs([
                ("__name__", format!("http_requests_total_{}", i % 50)),
                ("instance", format!("10.0.{}.{}:9100", i % 7, i % 251)),
                ("job", "node-exporter".to_string()),
                ("cluster", "batcave".to_string()),
                ("namespace", format!("ns-{}", i % 13)),
                ("pod", format!("pod-{i}-abcdef")),
                ("code", "200".to_string()),
                ("method", "GET".to_string()),
            ])
            .unwrap();
            (
                l,
                vec![Sample {
                    t: 1_700_000_000_000 + i,
                    v: i as f64 * 1.5,
                }],
            )
        })
        .collect();
    encode_write_request(series.iter().map(|(l, s)| (l, s.as_slice())))
}

/// 2000 series × 1 counter histogram (schema 3, 20 buckets in two spans, the counts of
/// a histogram scraped a few hundred times): what `histogram_ingest_bench` sends.
fn histogram_request() -> Vec<u8> {
    use storeapi::wire::prompb::{self, BucketSpan, Histogram, TimeSeries};
    use storeapi::wire::thanos::Label;
    let k = 700u64;
    let timeseries = (0..2000u64)
        .map(|s| {
            let (mut prev, mut count) = (0i64, k);
            let deltas = (0..20u64)
                .map(|b| {
                    let c = (k * (1 + (s * 7 + b * 13) % 5) + k * (b + 1) * 3 / 7) as i64;
                    count += c as u64;
                    let d = c - prev;
                    prev = c;
                    d
                })
                .collect();
            TimeSeries {
                labels: vec![
                    Label {
                        name: "__name__".into(),
                        value: "http_request_duration_seconds".into(),
                    },
                    Label {
                        name: "instance".into(),
                        value: format!("host-{:04}", s / 10).into(),
                    },
                    Label {
                        name: "route".into(),
                        value: format!("/api/{}", s % 10).into(),
                    },
                ],
                histograms: vec![Histogram {
                    count: Some(prompb::histogram::Count::CountInt(count)),
                    sum: count as f64 * 0.37,
                    schema: 3,
                    zero_threshold: 1e-128,
                    zero_count: Some(prompb::histogram::ZeroCount::ZeroCountInt(k)),
                    positive_spans: vec![
                        BucketSpan {
                            offset: 4,
                            length: 10,
                        },
                        BucketSpan {
                            offset: 3,
                            length: 10,
                        },
                    ],
                    positive_deltas: deltas,
                    timestamp: 1_700_000_000_000 + s as i64,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    prometheus::WriteRequest {
        timeseries,
        metadata: vec![],
    }
    .encode_to_vec()
}

fn bench(c: &mut Criterion) {
    let raw = request();
    let compressed = snappy_compress(&raw);
    let mut g = c.benchmark_group("remote_write_decode");
    g.throughput(Throughput::Elements(2000));
    g.bench_function("borrowing_walk", |b| {
        b.iter(|| {
            let mut r = WriteRequestReader::new(&raw);
            let mut v = SeriesView::default();
            let mut n = 0usize;
            while r.next_series(&mut v).unwrap() {
                n += v.labels.len() + v.samples.len();
            }
            n
        })
    });
    g.bench_function("prost_owned", |b| {
        b.iter(|| {
            prometheus::WriteRequest::decode(raw.as_slice())
                .unwrap()
                .timeseries
                .len()
        })
    });
    g.bench_function("snappy_plus_walk", |b| {
        b.iter(|| {
            let raw = snappy_decompress(&compressed, 64 << 20).unwrap();
            let mut r = WriteRequestReader::new(&raw);
            let mut v = SeriesView::default();
            let mut n = 0usize;
            while r.next_series(&mut v).unwrap() {
                n += v.samples.len();
            }
            n
        })
    });
    g.finish();
    let raw = histogram_request();
    let mut g = c.benchmark_group("remote_write_decode");
    g.throughput(Throughput::Elements(2000));
    g.bench_function("histograms_borrowing_walk", |b| {
        b.iter(|| {
            let mut r = WriteRequestReader::new(&raw);
            let mut v = SeriesView::default();
            let mut n = 0usize;
            while r.next_series(&mut v).unwrap() {
                for h in v.histograms.drain(..) {
                    // Given back as the head does after its commit.
                    if let storeapi::histogram::HistogramValue::Int(h) = h.h {
                        n += h.positive_buckets.len();
                        storeapi::histogram::pool::give(h);
                    }
                }
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
