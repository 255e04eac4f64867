//! Remote-write decode throughput: the borrowing decoder vs prost's owned decoding.
//! Run: `cargo bench -p storeapi --bench remote_write`.

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
}

criterion_group!(benches, bench);
criterion_main!(benches);
