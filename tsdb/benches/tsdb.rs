//! `cargo bench -p tsdb`: head append (with the WAL write, and with fsync per commit),
//! XOR chunk encode/decode, select+iterate, block write; prints bytes per sample on disk
//! for a realistic mix (counters, gauges, histogram buckets at 15s) after cutting a block.
//!
//! Timings are the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, user + system,
//! so the WAL `write` syscalls count), i.e. per-core figures that do not depend on how
//! busy the machine is; only the fsync benchmark is measured in wall time.

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass; the clock id is valid.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Criterion measurement: thread CPU time.
struct ThreadCpu;

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, i: u64) -> u64 {
        thread_cpu_ns().saturating_sub(i)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (f, unit) = if typical < 1e3 {
            (1.0, "ns(cpu)")
        } else if typical < 1e6 {
            (1e-3, "us(cpu)")
        } else if typical < 1e9 {
            (1e-6, "ms(cpu)")
        } else {
            (1e-9, "s(cpu)")
        };
        values.iter_mut().for_each(|v| *v *= f);
        unit
    }
    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let n = match t {
            Throughput::Elements(n) => *n as f64,
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) => *n as f64,
        };
        values.iter_mut().for_each(|v| *v = n * 1e9 / *v / 1e6);
        "M/cpu-s"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

use std::hint::black_box;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use storeapi::{Labels, MatchOp, Matcher};
use tsdb::chunk::xor::decode_all;
use tsdb::{Db, Options, SyncPolicy, XorChunk};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Realistic series: per "target", counters, gauges and histogram buckets.
fn series(n: usize) -> Vec<(Labels, Kind)> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0usize;
    while out.len() < n {
        let inst = format!("10.0.{}.{}:9100", i / 250, i % 250);
        for m in 0..10 {
            out.push((
                Labels::from_pairs([
                    ("__name__", format!("node_counter_{m}_total")),
                    ("instance", inst.clone()),
                    ("job", "node".into()),
                ])
                .unwrap(),
                Kind::Counter,
            ));
        }
        for m in 0..10 {
            out.push((
                Labels::from_pairs([
                    ("__name__", format!("node_gauge_{m}")),
                    ("instance", inst.clone()),
                    ("job", "node".into()),
                ])
                .unwrap(),
                Kind::Gauge,
            ));
        }
        for le in [
            "0.005", "0.01", "0.05", "0.1", "0.5", "1", "5", "10", "+Inf",
        ] {
            out.push((
                Labels::from_pairs([
                    (
                        "__name__",
                        "http_request_duration_seconds_bucket".to_string(),
                    ),
                    ("instance", inst.clone()),
                    ("job", "node".into()),
                    ("le", le.into()),
                ])
                .unwrap(),
                Kind::Bucket,
            ));
        }
        i += 1;
    }
    out.truncate(n);
    out
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Bucket,
}

/// How busy a series is, fixed per series (a hash of its index): a quarter of the series
/// never change (idle targets, unused buckets), a quarter change on ~10% of scrapes, half
/// change on every scrape.
fn activity(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 62 // 0..=3
}

/// Next value of series `i` of `kind` given the previous one.
fn next_value(kind: Kind, i: usize, prev: f64, rng: &mut Rng) -> f64 {
    let changes = match activity(i) {
        0 => false,
        1 => rng.below(10) == 0,
        _ => true,
    };
    if !changes {
        return prev;
    }
    match kind {
        // Counters grow by whole numbers (requests, bytes).
        Kind::Counter => prev + 1.0 + rng.below(1000) as f64,
        // Gauges move by values with two decimals.
        Kind::Gauge => (prev + (rng.below(20001) as f64 - 10000.0) / 100.0).max(0.0),
        Kind::Bucket => prev + rng.below(20) as f64,
    }
}

/// Scrape timestamps every 15s (Prometheus aligns scrape timestamps within 2ms).
fn scrape_t(step: i64, _rng: &mut Rng) -> i64 {
    step * 15_000
}

fn append_bench<M: Measurement>(c: &mut Criterion<M>, name: &str, policy: SyncPolicy) {
    const N: usize = 100_000;
    const BATCH: usize = 2_000;
    let ss = series(N);
    let mut g = c.benchmark_group("head_append");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            wal_sync: policy,
            ..Options::default()
        },
        None,
    )
    .unwrap();
    let mut step = 0i64;
    let mut vals = vec![0f64; N];
    let mut rng = Rng(7);
    // Create the series first: the benchmark measures appends to existing series.
    let mut app = db.appender();
    for (l, _) in &ss {
        app.append_one(l, 0, 0.0);
    }
    app.commit().unwrap();
    g.bench_function(name, |b| {
        b.iter(|| {
            step += 1;
            let t = step * 15_000;
            for (ci, chunk) in ss.chunks(BATCH).enumerate() {
                let mut app = db.appender();
                for (j, (l, k)) in chunk.iter().enumerate() {
                    let i = ci * BATCH + j;
                    vals[i] = next_value(*k, i, vals[i], &mut rng);
                    app.append_one(l, t, vals[i]);
                }
                black_box(app.commit().unwrap());
            }
        })
    });
    g.finish();
}

/// 100k series, one sample each per iteration, in commits of 2000 samples (a remote-write
/// request), WAL written (page cache, no fsync).
fn bench_append(c: &mut Criterion<ThreadCpu>) {
    append_bench(c, "100k_series_batch2000_wal_write", SyncPolicy::Never);
}

/// Like `bench_append` but by series ref (refs from the first commit's outcome), the
/// path for callers that cache refs: no label hashing or key comparison.
fn bench_append_by_ref(c: &mut Criterion<ThreadCpu>) {
    const N: usize = 100_000;
    const BATCH: usize = 2_000;
    let ss = series(N);
    let mut g = c.benchmark_group("head_append");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            wal_sync: SyncPolicy::Never,
            ..Options::default()
        },
        None,
    )
    .unwrap();
    let mut app = db.appender();
    for (l, _) in &ss {
        app.append_one(l, 0, 0.0);
    }
    let refs = app.commit().unwrap().series_refs;
    let mut step = 0i64;
    let mut vals = vec![0f64; N];
    let mut rng = Rng(7);
    g.bench_function("100k_series_batch2000_wal_write_by_ref", |b| {
        b.iter(|| {
            step += 1;
            let t = step * 15_000;
            for (ci, chunk) in ss.chunks(BATCH).enumerate() {
                let mut app = db.appender();
                for (j, (_, k)) in chunk.iter().enumerate() {
                    let i = ci * BATCH + j;
                    vals[i] = next_value(*k, i, vals[i], &mut rng);
                    app.append_ref(refs[i], &[storeapi::Sample { t, v: vals[i] }]);
                }
                black_box(app.commit().unwrap());
            }
        })
    });
    g.finish();
}

/// The same with an fsync per commit (wall time).
fn bench_append_fsync(c: &mut Criterion) {
    append_bench(
        c,
        "100k_series_batch2000_wal_fsync_wall",
        SyncPolicy::Always,
    );
}

fn bench_chunk(c: &mut Criterion<ThreadCpu>) {
    let mut rng = Rng(3);
    let mut v = 0.0;
    let samples: Vec<(i64, f64)> = (0..120)
        .map(|i| {
            v = next_value(Kind::Gauge, 3, v, &mut rng);
            (scrape_t(i, &mut rng), v)
        })
        .collect();
    let mut g = c.benchmark_group("xor_chunk");
    g.throughput(Throughput::Elements(120));
    g.bench_function("encode_120", |b| {
        b.iter(|| {
            let mut c = XorChunk::new();
            for &(t, v) in &samples {
                c.append(t, v).unwrap();
            }
            black_box(c.into_bytes())
        })
    });
    let mut ch = XorChunk::new();
    for &(t, v) in &samples {
        ch.append(t, v).unwrap();
    }
    let bytes = ch.into_bytes();
    g.bench_function("decode_120", |b| {
        b.iter(|| black_box(decode_all(&bytes).unwrap()))
    });
    // A request counter: whole increments, so few significant bits change per sample.
    let mut ch = XorChunk::new();
    let mut v = 0.0;
    for i in 0..120 {
        v = next_value(Kind::Counter, 3, v, &mut rng);
        ch.append(scrape_t(i, &mut rng), v).unwrap();
    }
    let counter = ch.into_bytes();
    g.bench_function("decode_120_counter", |b| {
        b.iter(|| black_box(decode_all(&counter).unwrap()))
    });
    g.finish();
}

/// A database holding `n` realistic series over `hours` at 15s.
fn filled_db(dir: &std::path::Path, n: usize, hours: i64) -> (Db, u64) {
    filled_db_steps(dir, n, hours * 240)
}

/// `n` benchmark series with `steps` scrapes each (15 s apart).
fn filled_db_steps(dir: &std::path::Path, n: usize, steps: i64) -> (Db, u64) {
    let db = Db::open(
        dir,
        Options {
            wal_sync: SyncPolicy::Never,
            ..Options::default()
        },
        None,
    )
    .unwrap();
    let ss = series(n);
    let mut vals = vec![0f64; n];
    let mut rng = Rng(11);
    let mut total = 0;
    for step in 0..steps {
        let mut app = db.appender();
        for (i, (l, k)) in ss.iter().enumerate() {
            vals[i] = next_value(*k, i, vals[i], &mut rng);
            app.append_one(l, scrape_t(step, &mut rng), vals[i]);
        }
        total += app.commit().unwrap().appended;
    }
    (db, total)
}

fn dir_size(p: &std::path::Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            dir_size(&e.path())
        } else {
            m.len()
        };
    }
    n
}

fn bench_disk_and_select(c: &mut Criterion<ThreadCpu>) {
    // Bytes per sample on disk: 10k series, 2h at 15s, cut into one block.
    let dir = tempfile::tempdir().unwrap();
    let (db, total) = filled_db(dir.path(), 10_000, 2);
    let metas = db.flush().unwrap();
    let mut block_bytes = 0;
    let mut chunk_bytes = 0;
    let mut samples = 0;
    for m in &metas {
        let bd = dir.path().join(m.ulid.to_string());
        block_bytes += dir_size(&bd);
        chunk_bytes += dir_size(&bd.join("chunks"));
        samples += m.stats.num_samples;
    }
    assert_eq!(samples, total);
    println!(
        "bytes/sample on disk (10k series: counters, gauges, histogram buckets; 2h at 15s; {samples} samples): \
         block total {:.3}, chunks only {:.3}",
        block_bytes as f64 / samples as f64,
        chunk_bytes as f64 / samples as f64
    );

    // Select + iterate: 10k series × 3h, all in blocks (flushed) or all in the head.
    let dir = tempfile::tempdir().unwrap();
    let (db, total) = filled_db(dir.path(), 10_000, 3);
    db.flush().ok();
    let (db2, _) = {
        let d2 = tempfile::tempdir().unwrap();
        let r = filled_db(d2.path(), 10_000, 3);
        std::mem::forget(d2);
        r
    };
    let mut g = c.benchmark_group("select_iterate");
    g.sample_size(10);
    g.throughput(Throughput::Elements(total));
    let m = [Matcher::new(MatchOp::Equal, "job", "node").unwrap()];
    g.bench_function("10k_series_3h_blocks", |b| {
        b.iter(|| {
            let q = db.querier(i64::MIN, i64::MAX);
            let n: usize = q
                .select_samples(&m)
                .unwrap()
                .iter()
                .map(|s| s.1.len())
                .sum();
            assert_eq!(n as u64, total);
        })
    });
    // The receiver's StoreAPI path: the selection sorted by labels, then read in place.
    g.bench_function("10k_series_3h_head_lazy", |b| {
        b.iter(|| {
            let q = db2.querier(i64::MIN, i64::MAX);
            let sel = q.select_lazy(&m).expect("head only");
            let (mut key, mut out) = (Vec::new(), Vec::new());
            let mut bytes = 0;
            for s in sel.iter_in_place() {
                key.clear();
                s.write_key(&mut key);
                // Copied out, as the frame writer copies them.
                out.clear();
                out.extend_from_slice(&key);
                for c in s.chunks().iter() {
                    out.extend_from_slice(c.data);
                }
                bytes += out.len();
            }
            black_box(bytes)
        })
    });
    g.bench_function("10k_series_3h_head", |b| {
        b.iter(|| {
            let q = db2.querier(i64::MIN, i64::MAX);
            let n: usize = q
                .select_samples(&m)
                .unwrap()
                .iter()
                .map(|s| s.1.len())
                .sum();
            black_box(n)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("block_write");
    g.sample_size(10);
    // A flush of `n` series with `steps` samples each, the database filled afresh
    // (outside the measurement) for every iteration.
    let flush =
        |name: &str, n: usize, steps: i64, g: &mut criterion::BenchmarkGroup<'_, ThreadCpu>| {
            g.bench_function(name, |b| {
                b.iter_batched(
                    || {
                        let d = tempfile::tempdir().unwrap();
                        let (db, _) = filled_db_steps(d.path(), n, steps);
                        (d, db)
                    },
                    |(d, db)| {
                        black_box(db.flush().unwrap());
                        d
                    },
                    BatchSize::PerIteration,
                )
            });
        };
    flush("flush_1k_series_2h", 1_000, 2 * 240, &mut g);
    // The soak's shape (issue #26): many series with a dozen samples each, where the
    // per-series costs of a block (symbols, sorting, index entries) dominate.
    flush("flush_200k_series_12_samples", 200_000, 12, &mut g);
    g.finish();
}

/// A WAL histogram record of a 2,000-histogram request (20 buckets each, small bucket
/// deltas as a counter's): what each commit of native histograms encodes (issue #20).
fn bench_histogram_record(c: &mut Criterion<ThreadCpu>) {
    use storeapi::histogram::{Histogram, HistogramValue, Span};
    let hists: Vec<HistogramValue> = (0..2_000)
        .map(|i: i64| {
            HistogramValue::Int(Box::new(Histogram {
                schema: 3,
                count: 1_000 + i as u64,
                sum: 123.5 + i as f64,
                positive_spans: vec![Span {
                    offset: -3,
                    length: 20,
                }],
                positive_buckets: (0..20).map(|k| (i * 7 + k * 3) % 9 - 4).collect(),
                ..Default::default()
            }))
        })
        .collect();
    let refs: Vec<(u64, i64, &HistogramValue)> = hists
        .iter()
        .enumerate()
        .map(|(i, h)| (i as u64 * 3 + 1, 1_700_000_000_000 + i as i64, h))
        .collect();
    let mut g = c.benchmark_group("wal_record");
    g.throughput(Throughput::Elements(refs.len() as u64));
    g.bench_function("histograms_2000x20", |b| {
        b.iter(|| black_box(tsdb::wal::record::encode_histogram_refs(&refs, false)))
    });
    g.finish();
}

criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = bench_chunk, bench_append, bench_append_by_ref, bench_disk_and_select,
        bench_histogram_record
}
criterion_group!(wall, bench_append_fsync);
criterion_main!(cpu, wall);
