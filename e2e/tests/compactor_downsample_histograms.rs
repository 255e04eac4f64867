//! Downsampling native histograms, end to end (issue #17): 56 hours of native histogram
//! series (an integer exponential counter with a reset, a custom-bucket (NHCB) counter,
//! a float gauge histogram) and a float counter, as 8h raw blocks in a real S3 server
//! (moto). One `orrery compact` pass compacts the first 2d range into one raw block and
//! downsamples it to 5m: histogram `AggrChunk`s (count, sum, counter). `orrery store` +
//! `orrery query` at `max_source_resolution=5m` must then answer, over 5m-aligned
//! windows, `sum_over_time`/`count_over_time` of histograms (read through
//! `histogram_count`, `histogram_sum`, `histogram_fraction`, `histogram_quantile`)
//! exactly as Prometheus 3.5.3 holding the raw blocks, `rate`/`increase` within
//! [`RATE_TOLERANCE`], and `max_over_time` of histograms as Prometheus does (nothing).
//! At `0s` every query equals Prometheus's: the compacted raw block is intact.

mod store_common;

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::promqlcmp::{
    compare_answers, matrix_points, prom_range, range_at_resolution, show_answer,
    worst_relative_error,
};
use e2e::s3::MotoServer;
use e2e::{Prometheus, copy_dir, free_port, orrery_bin, wait_for};
use objstore::{Bucket, BucketConfig, MetaFetcher};
use store_common::{Query, Store};
use storeapi::Labels;
use storeapi::histogram::{
    CUSTOM_BUCKETS_SCHEMA, CounterResetHint, FloatHistogram, Histogram, Span,
};
use tsdb::block::{Block, BlockOptions, BlockWriter};
use tsdb::chunk::aggr_histogram::is_histogram_aggr;
use tsdb::chunk::{Chunk, Encoding, SeriesEncoder};

const H: i64 = 3_600_000;
const BUCKET: &str = "dshist";
/// Hours of data: the first 48 fill one 2d range (compacted, then downsampled); the
/// last 8h block is the newest and is left alone, as Thanos's planner leaves it.
const HOURS: i64 = 56;
/// `rate`/`increase` over 5m counter aggregates against raw data: the aggregate has one
/// point per window, so the points a range sees and the extrapolation to its ends move
/// by up to one window (1/12 of a 1h range). The float test sees ≈ 5%.
const RATE_TOLERANCE: f64 = 0.10;

/// 2-day aligned, as the compactor's ranges are aligned from epoch 0.
fn t0() -> i64 {
    (1_700_000_000_000 / (48 * H)) * 48 * H
}

enum Value {
    F(f64),
    H(Histogram),
    FH(FloatHistogram),
}

struct Series {
    labels: Labels,
    samples: Vec<(i64, Value)>,
}

fn spans(offset: i32, n: u32) -> Vec<Span> {
    vec![Span { offset, length: n }]
}

/// Delta-encodes absolute bucket counts.
fn deltas(abs: &[u64]) -> Vec<i64> {
    let mut last = 0i64;
    abs.iter()
        .map(|&c| {
            let d = c as i64 - last;
            last = c as i64;
            d
        })
        .collect()
}

/// Every 30 s with a per-series offset of a few seconds, so no sample sits on a 5m
/// boundary; counts and sums are integers or quarters, so sums in any order are exact.
fn dataset() -> Vec<Series> {
    let mut rng = e2e::promqlcmp::Rng::new(23);
    let t0 = t0();
    let mut out = Vec::new();
    let times = |off: i64| (0..HOURS * 120).map(move |k| t0 + off + k * 30_000);

    // An integer exponential counter (schema 1, buckets -1..=3), reset once.
    let mut b = [0u64; 5];
    let (mut zero, mut sum) = (0u64, 0.0f64);
    let mut s = Vec::new();
    for (k, t) in times(3_000).enumerate() {
        let reset = k == 2_500;
        if reset {
            (b, zero, sum) = ([0; 5], 0, 0.0);
        }
        for x in b.iter_mut() {
            let n = rng.below(4);
            *x += n;
            sum += n as f64 * 0.75;
        }
        zero += rng.below(2);
        s.push((
            t,
            Value::H(Histogram {
                hint: if reset {
                    CounterResetHint::CounterReset
                } else {
                    CounterResetHint::Unknown
                },
                schema: 1,
                zero_threshold: 0.001,
                zero_count: zero,
                count: zero + b.iter().sum::<u64>(),
                sum,
                positive_spans: spans(-1, 5),
                positive_buckets: deltas(&b),
                ..Default::default()
            }),
        ));
    }
    out.push(Series {
        labels: Labels::from_pairs([("__name__", "dsh_requests"), ("kind", "exp")])
            .expect("labels"),
        samples: s,
    });

    // A custom-bucket counter (bounds 0.1, 0.5, 1, 5 and +Inf).
    let mut b = [0u64; 5];
    let mut sum = 0.0f64;
    let mut s = Vec::new();
    for t in times(7_000) {
        for (i, x) in b.iter_mut().enumerate() {
            let n = rng.below(3 + i as u64);
            *x += n;
            sum += n as f64 * 0.25;
        }
        s.push((
            t,
            Value::H(Histogram {
                schema: CUSTOM_BUCKETS_SCHEMA,
                count: b.iter().sum(),
                sum,
                positive_spans: spans(0, 5),
                positive_buckets: deltas(&b),
                custom_values: vec![0.1, 0.5, 1.0, 5.0],
                ..Default::default()
            }),
        ));
    }
    out.push(Series {
        labels: Labels::from_pairs([("__name__", "dsh_requests"), ("kind", "nhcb")])
            .expect("labels"),
        samples: s,
    });

    // A float gauge histogram going up and down.
    let mut s = Vec::new();
    for t in times(11_000) {
        let b: Vec<f64> = (0..3).map(|_| rng.below(20) as f64).collect();
        s.push((
            t,
            Value::FH(FloatHistogram {
                hint: CounterResetHint::Gauge,
                schema: 0,
                zero_threshold: 0.001,
                count: b.iter().sum(),
                sum: b.iter().sum::<f64>() * 1.5,
                positive_spans: spans(0, 3),
                positive_buckets: b,
                ..Default::default()
            }),
        ));
    }
    out.push(Series {
        labels: Labels::from_pairs([("__name__", "dsh_inflight"), ("kind", "gauge")])
            .expect("labels"),
        samples: s,
    });

    // A float counter beside them.
    let mut v = 0.0;
    let s = times(13_000)
        .map(|t| {
            v += rng.below(10) as f64;
            (t, Value::F(v))
        })
        .collect();
    out.push(Series {
        labels: Labels::from_pairs([("__name__", "dsh_float_total")]).expect("labels"),
        samples: s,
    });
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    out
}

/// Prometheus's chunking of one series' samples in `[mint, maxt)`.
fn chunks(s: &Series, mint: i64, maxt: i64) -> Vec<Chunk> {
    let mut e = SeriesEncoder::new();
    for (t, v) in s.samples.iter().filter(|(t, _)| (mint..maxt).contains(t)) {
        match v {
            Value::F(x) => e.append_float(*t, *x),
            Value::H(h) => e.append_histogram(*t, h),
            Value::FH(h) => e.append_float_histogram(*t, h),
        }
        .expect("append");
    }
    e.finish()
}

#[test]
fn histograms_downsampled_by_the_compactor_answer_like_prometheus() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dataset();
    let t0 = t0();

    // Raw 8h blocks: written locally (Prometheus gets a copy), uploaded to moto.
    let local = dir.path().join("blocks");
    let mut block_dirs = Vec::new();
    for k in 0..HOURS / 8 {
        let (mint, maxt) = (t0 + k * 8 * H, t0 + (k + 1) * 8 * H);
        let series: Vec<(Labels, Vec<Chunk>)> = data
            .iter()
            .map(|s| (s.labels.clone(), chunks(s, mint, maxt)))
            .collect();
        let meta = BlockWriter::write(&local, mint, maxt, series, &BlockOptions::default())
            .expect("write block");
        block_dirs.push(local.join(meta.ulid.to_string()));
    }
    let prom = Prometheus::start_prepared(
        "global:\n  scrape_interval: 1h\n",
        &[
            "--storage.tsdb.retention.time=100y",
            "--query.max-samples=100000000",
            "--enable-feature=native-histograms",
        ],
        |data_dir| {
            for b in &block_dirs {
                let name = b.file_name().expect("block name");
                copy_dir(b, &data_dir.join(name));
            }
        },
    );

    let moto = MotoServer::start(dir.path());
    moto.create_bucket(BUCKET);
    let objstore = format!(
        "type: S3\nconfig:\n  bucket: {BUCKET}\n  endpoint: {}\n  insecure: true\n  access_key: test\n  secret_key: test\n",
        moto.addr()
    );
    let bucket =
        Bucket::new(&BucketConfig::parse(&objstore).expect("config"), None).expect("bucket");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ext = BTreeMap::from([("cluster".to_string(), "a".to_string())]);
    for b in &block_dirs {
        rt.block_on(objstore::block::upload_block(&bucket, b, &ext, "receive"))
            .expect("upload block");
    }

    // One compactor pass: 6 × 8h → one 2d raw block (≥ 40h) → its 5m block.
    let mut cmd = std::process::Command::new(orrery_bin());
    cmd.args([
        "compact".to_string(),
        format!("--objstore.config={objstore}"),
        format!("--data-dir={}", dir.path().join("compact-data").display()),
        "--consistency-delay=0s".to_string(),
        format!("--http-address=127.0.0.1:{}", free_port()),
    ]);
    let mut p = e2e::Proc::spawn("orrery compact", cmd, dir.path().join("compact.log"));
    let st = p
        .wait_exit(Duration::from_secs(300))
        .unwrap_or_else(|| panic!("orrery compact did not finish:\n{}", p.log_text()));
    assert!(
        st.success(),
        "orrery compact failed ({st}):\n{}",
        p.log_text()
    );
    let log = p.log_text();

    // The bucket now holds a 5m block whose histogram series are histogram AggrChunks.
    let d = rt
        .block_on(MetaFetcher::new(bucket.clone(), None).fetch())
        .expect("discovery");
    let five: Vec<_> = d
        .blocks
        .iter()
        .filter(|(_, b)| {
            b.meta
                .thanos
                .as_ref()
                .is_some_and(|t| t.downsample.resolution == 300_000)
        })
        .collect();
    assert_eq!(five.len(), 1, "one 5m block; compactor log:\n{log}");
    let (id5, b5) = five[0];
    assert_eq!((b5.meta.min_time, b5.meta.max_time), (t0, t0 + 48 * H));
    let read = dir.path().join("read");
    rt.block_on(objstore::block::download_block(&bucket, *id5, &read))
        .expect("download 5m block");
    let bd = read.join(id5.to_string());
    tsdb::block::verify_block(&bd).expect("5m block verifies");
    let mut kinds: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for s in Block::open(&bd)
        .expect("open")
        .series_iter()
        .expect("series")
    {
        let (l, cs) = s.expect("series entry");
        for c in cs {
            assert_eq!(c.encoding, Encoding::Aggr);
            let e = kinds.entry(l.to_string()).or_default();
            if is_histogram_aggr(&c.data) {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
    }
    for s in &data {
        let (h, f) = kinds[&s.labels.to_string()];
        let histogram = !matches!(s.samples[0].1, Value::F(_));
        assert!(
            if histogram {
                h > 0 && f == 0
            } else {
                h == 0 && f > 0
            },
            "{}: {h} histogram and {f} float aggregate chunks",
            s.labels
        );
    }

    let store = Store::start(
        &objstore,
        &dir.path().join("store"),
        &dir.path().join("store.log"),
        &[],
    );
    // `cluster` is dropped from answers, so series equal Prometheus's.
    let query = Query::start(
        &[&store.grpc],
        &dir.path().join("query.log"),
        &["--query.replica-label=cluster"],
    );
    let qhttp = query.http.clone();
    let probe = (t0 + 2 * H, t0 + 3 * H, 5 * 60_000);
    let seen = wait_for(Duration::from_secs(60), || {
        (matrix_points(&range_at_resolution(
            &qhttp,
            "histogram_count(dsh_requests)",
            probe,
            "0s",
        )) > 0)
            .then_some(())
    });
    assert!(
        seen.is_some(),
        "the querier never saw the bucket; store log:\n{}",
        store.proc.log_text()
    );

    // Windows of whole 5m steps inside the 5m block's range.
    let ranges = [
        (t0 + 2 * H, t0 + 46 * H, H),
        (t0 + 20 * H + 10 * 60_000, t0 + 23 * H, 5 * 60_000),
    ];
    let exact = [
        "histogram_count(sum_over_time(dsh_requests[1h]))",
        "histogram_sum(sum_over_time(dsh_requests[30m]))",
        "histogram_count(sum_over_time(dsh_inflight[15m]))",
        "histogram_fraction(0, 1, sum_over_time(dsh_requests{kind=\"nhcb\"}[1h]))",
        "histogram_quantile(0.9, sum_over_time(dsh_requests[1h]))",
        "count_over_time(dsh_requests[1h])",
        "count_over_time({__name__=~\"dsh_.+\"}[20m])",
        "max_over_time({__name__=~\"dsh_.+\"}[1h])",
        "sum(histogram_count(sum_over_time(dsh_requests[2h])))",
    ];
    let rates = [
        "histogram_count(rate(dsh_requests[1h]))",
        "histogram_sum(increase(dsh_requests[2h]))",
        "histogram_quantile(0.5, rate(dsh_requests{kind=\"exp\"}[2h]))",
        "rate(dsh_float_total[1h])",
    ];
    let mut bad = Vec::new();
    let mut worst = 0.0f64;
    for q in exact.iter().chain(rates.iter()) {
        for r in ranges {
            let theirs = prom_range(&prom.addr(), q, r.0, r.1, r.2).expect("prometheus");
            assert!(
                matrix_points(&theirs) > 0,
                "{q}: Prometheus returned nothing"
            );
            for res in ["0s", "5m"] {
                let mine = range_at_resolution(&qhttp, q, r, res);
                if rates.contains(q) && res == "5m" {
                    match worst_relative_error(&mine, &theirs) {
                        Ok(w) if w <= RATE_TOLERANCE => worst = worst.max(w),
                        Ok(w) => bad.push(format!("{q} at 5m {r:?}: off by {:.2}%", w * 100.0)),
                        Err(e) => bad.push(format!("{q} at 5m {r:?}: {e}")),
                    }
                    continue;
                }
                if let Err(why) = compare_answers(&mine, &theirs, false) {
                    bad.push(format!(
                        "{q} at {res} {r:?}: {why}\n  orrery:     {}\n  prometheus: {}",
                        show_answer(&mine),
                        show_answer(&theirs)
                    ));
                }
            }
        }
    }
    println!(
        "worst rate/increase error over 5m histogram data: {:.3}%",
        worst * 100.0
    );
    assert!(
        bad.is_empty(),
        "{} answers differ:\n{}\nstore log:\n{}",
        bad.len(),
        bad.iter().take(8).cloned().collect::<Vec<_>>().join("\n"),
        store.proc.log_text()
    );

    // The 5m answers really come from the aggregates: a plain selector reads window
    // averages (sum / count), not raw histograms.
    let q = "histogram_count(dsh_inflight)";
    let (avg, raw) = (
        range_at_resolution(&qhttp, q, ranges[1], "5m"),
        range_at_resolution(&qhttp, q, ranges[1], "0s"),
    );
    assert!(matrix_points(&avg) > 0 && matrix_points(&raw) > 0);
    assert!(
        compare_answers(&avg, &raw, false).is_err(),
        "5m averages equal raw samples: the store served raw data for 5m"
    );
    drop(query);
    drop(store);
}
