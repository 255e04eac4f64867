//! `SeriesResponse` frame reading: the in-place reader (labels copied into the model's
//! `Labels`, chunk bytes borrowed, as the querier does) vs prost's owned decoding.
//! Run: `cargo bench -p storeapi --bench series_frame`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use storeapi::wire::series_frame::{Frame, SeriesRef, read_frame};
use storeapi::wire::thanos::{
    AggrChunk, Chunk, Series, SeriesBatch, SeriesResponse, series_response,
};
use storeapi::{Label, Labels};

/// One batch frame of 64 series with 8 labels and one 200-byte chunk each, as a receiver
/// answers a querier.
fn frame() -> Vec<u8> {
    let series = (0..64)
        .map(|i| Series {
            labels: vec![
                Label::new("__name__", "http_requests_total"),
                Label::new("code", "200"),
                Label::new("handler", format!("/api/v1/h{}", i % 9)),
                Label::new("instance", format!("10.0.{}.{}:9100", i % 7, i)),
                Label::new("job", format!("job-{}", i % 10)),
                Label::new("method", "GET"),
                Label::new("receive_replica", "0"),
                Label::new("tenant_id", "default-tenant"),
            ],
            chunks: vec![AggrChunk {
                min_time: 1_700_000_000_000,
                max_time: 1_700_001_785_000,
                raw: Some(Chunk {
                    r#type: 0,
                    data: vec![i as u8; 200].into(),
                    hash: 0x1234_5678_9abc_def0,
                }),
                ..Default::default()
            }],
        })
        .collect();
    SeriesResponse {
        result: Some(series_response::Result::Batch(SeriesBatch { series })),
    }
    .encode_to_vec()
}

/// Reads every series of `raw`, summing what `per_series` makes of each.
fn walk(raw: &[u8], mut per_series: impl FnMut(&SeriesRef<'_>) -> usize) -> usize {
    let Ok(Frame::Series(mut r)) = read_frame(raw) else {
        panic!("a series frame")
    };
    let mut v = SeriesRef::default();
    let mut n = 0;
    while r.next_series(&mut v).unwrap() {
        n += per_series(&v);
    }
    n
}

fn bench(c: &mut Criterion) {
    let raw = frame();
    let mut g = c.benchmark_group("series_frame_decode");
    g.throughput(Throughput::Elements(64));
    g.bench_function("in_place_to_labels", |b| {
        b.iter(|| {
            walk(&raw, |v| {
                let labels = Labels::from_sorted_unchecked(
                    v.labels
                        .iter()
                        .map(|l| Label::new(l.name, l.value))
                        .collect(),
                );
                labels.len()
                    + v.chunks
                        .iter()
                        .map(|c| c.raw.map_or(0, |r| r.data.len()))
                        .sum::<usize>()
            })
        })
    });
    g.bench_function("in_place_walk", |b| {
        b.iter(|| walk(&raw, |v| v.labels.len() + v.chunks.len()))
    });
    g.bench_function("prost_owned", |b| {
        b.iter(
            || match SeriesResponse::decode(raw.as_slice()).unwrap().result {
                Some(series_response::Result::Batch(b)) => b.series.len(),
                _ => 0,
            },
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
