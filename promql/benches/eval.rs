//! Evaluation benchmarks: range queries over 10k counter series, 1h at a 15s step.
//!
//! Run with `cargo bench -p promql --bench eval`. The same queries are timed against the
//! reference Prometheus 3.5.3 by `cargo run --release -p e2e --bin promql_bench`.

use criterion::{Criterion, criterion_group, criterion_main};
use promql::{Engine, EngineOptions, MemStorage};
use std::time::Duration;
use storeapi::{Label, Labels, Sample};

const SERIES: usize = 10_000;
const PER_INSTANCE: usize = 10;
const STEP_MS: i64 = 15_000;
/// Data covers 1h05m so that the first step's `[5m]` window is full.
const DATA_MS: i64 = 65 * 60_000;
const START_MS: i64 = 1_700_000_000_000;

/// A deterministic xorshift generator.
struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_unsorted(pairs.iter().map(|(n, v)| Label::new(*n, *v)).collect()).unwrap()
}

/// `bench_requests_total{job, instance, path}` counters (10 per instance, 20 jobs) and one
/// `bench_info{instance, team}` per instance.
fn storage() -> MemStorage {
    let mut rng = Rng(42);
    let mut m = MemStorage::new();
    let steps = (DATA_MS / STEP_MS) as usize + 1;
    for i in 0..SERIES {
        let inst = format!("host-{:05}", i / PER_INSTANCE);
        let job = format!("job-{}", i % 20);
        let path = format!("/api/v{}", i % PER_INSTANCE);
        let rate = 1.0 + rng.f() * 50.0;
        let mut v = 0.0;
        let samples: Vec<Sample> = (0..steps)
            .map(|s| {
                v += (rate * 15.0 * (0.5 + rng.f())).round();
                Sample {
                    t: START_MS + s as i64 * STEP_MS,
                    v,
                }
            })
            .collect();
        m.add(
            labels(&[
                ("__name__", "bench_requests_total"),
                ("job", &job),
                ("instance", &inst),
                ("path", &path),
            ]),
            samples,
        );
    }
    for k in 0..SERIES.div_ceil(PER_INSTANCE) {
        let inst = format!("host-{k:05}");
        let team = format!("team-{}", k % 7);
        let samples: Vec<Sample> = (0..steps)
            .map(|s| Sample {
                t: START_MS + s as i64 * STEP_MS,
                v: 1.0 + (k % 3) as f64,
            })
            .collect();
        m.add(
            labels(&[
                ("__name__", "bench_info"),
                ("instance", &inst),
                ("team", &team),
            ]),
            samples,
        );
    }
    m
}

pub const QUERIES: &[(&str, &str)] = &[
    (
        "sum_by_job_rate",
        "sum by (job) (rate(bench_requests_total[5m]))",
    ),
    ("topk_rate", "topk(10, rate(bench_requests_total[5m]))"),
    (
        "join_group_left",
        "rate(bench_requests_total[5m]) / on(instance) group_left(team) bench_info",
    ),
];

fn bench(c: &mut Criterion) {
    let st = storage();
    let engine = Engine::new(EngineOptions::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (start, end) = (START_MS + 5 * 60_000, START_MS + DATA_MS);
    let mut g = c.benchmark_group("range_10k_series_1h_step15s");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    for (name, q) in QUERIES {
        // Fail loudly rather than time an error.
        let r = rt
            .block_on(engine.range_query(&st, q, start, end, STEP_MS))
            .unwrap_or_else(|e| panic!("{q}: {e}"));
        assert!(matches!(r.value, promql::Value::Matrix(ref m) if !m.is_empty()));
        g.bench_function(*name, |b| {
            b.iter(|| {
                rt.block_on(engine.range_query(&st, q, start, end, STEP_MS))
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
