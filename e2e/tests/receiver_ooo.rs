//! Out-of-order ingestion side by side with the reference Prometheus 3.5.3: both get
//! `out_of_order_time_window` 1h and the same shuffled remote-write stream (every sample
//! inside the window, so Prometheus accepts every request whole); the receiver is
//! SIGKILLed halfway and at the end, restarted on the same directory each time, and
//! must then answer exactly as Prometheus: the raw samples and PromQL range queries
//! through `orrery query`. With 5-minute blocks the receiver also compacts while the
//! stream arrives, so out-of-order samples land in their own blocks (compaction hint
//! `from-out-of-order`) overlapping the in-order ones.

mod querier_common;
mod receiver_common;

use std::path::Path;
use std::time::Duration;

use e2e::{Prometheus, remote_write, wait_for};
use querier_common::{Querier, diff, range};
use receiver_common::{Receiver, labels, prom_query};
use storeapi::{Labels, Sample};

const S: i64 = 1000;
const M: i64 = 60 * S;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Samples per series.
const PER_SERIES: usize = 252;

/// Six series (three counters, three gauges), one sample every 15 s over the 63
/// minutes before `now`.
fn dataset(now: i64) -> Vec<(usize, Sample)> {
    let mut out = Vec::new();
    for s in 0..6usize {
        for i in 0..PER_SERIES as i64 {
            let t = now - 63 * M + i * 15 * S;
            let v = if s < 3 {
                // A counter with a reset in the middle.
                ((i % 150) * (s as i64 + 1)) as f64
            } else {
                ((t / S * 7919 + s as i64 * 104_729) % 1000) as f64 / 10.0
            };
            out.push((s, Sample { t, v }));
        }
    }
    out
}

fn series_labels(s: usize) -> Labels {
    let (name, i) = if s < 3 {
        ("ooo_requests_total", s)
    } else {
        ("ooo_temperature", s - 3)
    };
    labels(&[("__name__", name), ("instance", &format!("host-{i}"))])
}

/// A deterministic shuffle (xorshift).
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

/// The samples up to 8 minutes before `now` shuffled and cut into requests of 40 samples, each grouped
/// by series (samples of a series stay in their shuffled order inside a request); then
/// the later samples in order, one minute per request: the live tail that moves the
/// in-order head on, so it gets compacted (and the out-of-order samples with it).
fn requests(now: i64) -> Vec<Vec<(Labels, Vec<Sample>)>> {
    let cut = now - 8 * M;
    let (mut all, live): (Vec<_>, Vec<_>) = dataset(now).into_iter().partition(|x| x.1.t <= cut);
    // The newest sample first, so both servers start their window from it.
    let newest = all
        .iter()
        .enumerate()
        .max_by_key(|(_, x)| x.1.t)
        .map(|(i, _)| i)
        .unwrap();
    let first = all.remove(newest);
    shuffle(&mut all, 0x9e37_79b9_7f4a_7c15);
    all.insert(0, first);
    let mut live_batches: Vec<Vec<(usize, Sample)>> = Vec::new();
    for x in live {
        let minute = (x.1.t - cut - 1) / M;
        match live_batches.get_mut(minute as usize) {
            Some(b) => b.push(x),
            None => live_batches.push(vec![x]),
        }
    }
    all.chunks(40)
        .map(|b| b.to_vec())
        .chain(live_batches)
        .map(|batch| {
            let mut groups: Vec<(Labels, Vec<Sample>)> = Vec::new();
            for (s, x) in batch {
                let l = series_labels(s);
                match groups.iter_mut().find(|g| g.0 == l) {
                    Some(g) => g.1.push(x),
                    None => groups.push((l, vec![x])),
                }
            }
            groups
        })
        .collect()
}

fn start_receiver(data: &Path, log: &Path, block: &str) -> Receiver {
    Receiver::start(
        data,
        log,
        &[
            "--tsdb.out-of-order.time-window=1h",
            &format!("--tsdb.min-block-duration={block}"),
            &format!("--tsdb.max-block-duration={block}"),
        ],
    )
}

/// Blocks under the tenant directories whose meta.json carries the out-of-order hint.
fn ooo_blocks(data: &Path) -> usize {
    let mut n = 0;
    for tenant in std::fs::read_dir(data).into_iter().flatten().flatten() {
        for b in std::fs::read_dir(tenant.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(meta) = std::fs::read_to_string(b.path().join("meta.json"))
                && meta.contains("from-out-of-order")
            {
                n += 1;
            }
        }
    }
    n
}

fn side_by_side(block: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut prom = Prometheus::start(
        "global:\n  scrape_interval: 1h\nstorage:\n  tsdb:\n    out_of_order_time_window: 1h\n",
        &["--web.enable-remote-write-receiver"],
    );
    let now = now_ms() / S * S;
    let reqs = requests(now);
    let half = reqs.len() / 2;
    let mut recv = start_receiver(&data, &dir.path().join("receive-1.log"), block);
    for (i, r) in reqs.iter().enumerate() {
        if i == half {
            // Everything so far was acknowledged; the process dies without warning.
            recv.proc.kill();
            recv = start_receiver(&data, &dir.path().join("receive-2.log"), block);
        }
        let (code, text) = remote_write(&prom.addr(), "/api/v1/write", r, &[]).unwrap();
        assert_eq!(code, 204, "Prometheus refused request {i}: {text}");
        let (code, text) = recv.write(r);
        assert_eq!(
            code, 200,
            "orrery refused request {i} ({block} blocks): {text}"
        );
    }
    let metrics = recv.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("head_out_of_order_samples_appended")
                && !l.starts_with('#')
                && l.rsplit(' ').next().is_some_and(|v| v != "0")),
        "no out-of-order samples counted:\n{metrics}"
    );
    if block == "5m" {
        let written = wait_for(Duration::from_secs(60), || {
            (ooo_blocks(&data) > 0).then_some(())
        });
        assert!(
            written.is_some(),
            "no out-of-order block written; log:\n{}",
            recv.proc.log_text()
        );
    }
    recv.proc.kill();
    let recv = start_receiver(&data, &dir.path().join("receive-3.log"), block);
    let q = Querier::start(&[&recv.grpc], &[]);

    // Raw samples, every one, once.
    let at = (now + M) as f64 / 1000.0;
    let raw = r#"{__name__=~"ooo_.+"}[2h]"#;
    let ours = prom_query(&q.http, raw, Some(at));
    let theirs = prom_query(&prom.addr(), raw, Some(at));
    assert_eq!(ours["status"], "success", "{ours}");
    let n: usize = theirs["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["values"].as_array().unwrap().len())
        .sum();
    assert_eq!(n, 6 * PER_SERIES, "Prometheus holds every sample");
    if let Some(d) = diff(&ours["data"], &theirs["data"]) {
        panic!("{block} blocks: raw samples differ: {d}");
    }
    // PromQL over the shuffled data.
    let (start, end) = ((now - 60 * M) as f64 / 1000.0, now as f64 / 1000.0);
    for expr in [
        "sum by (instance) (rate(ooo_requests_total[5m]))",
        "resets(ooo_requests_total[30m])",
        "max_over_time(ooo_temperature[7m])",
        "count_over_time(ooo_temperature[10m])",
        r#"sum by (instance) ({__name__=~"ooo_.+"})"#,
        "avg(ooo_temperature)",
    ] {
        let (c1, o) = range(&q.http, expr, start, end, 60.0);
        let (c2, p) = range(&prom.addr(), expr, start, end, 60.0);
        assert_eq!((c1, c2), (200, 200), "{expr}: {o} / {p}");
        if let Some(d) = diff(&o["data"], &p["data"]) {
            panic!("{block} blocks: {expr} differs: {d}");
        }
    }
    // Outside the window: refused (409), the rest of the request written.
    let late = labels(&[("__name__", "ooo_late")]);
    let (code, text) = recv.write(&[
        (late.clone(), vec![Sample { t: now, v: 1.0 }]),
        (
            series_labels(3),
            vec![Sample {
                t: now - 3 * 60 * M,
                v: 1.0,
            }],
        ),
    ]);
    assert_eq!(code, 409, "{text}");
    let v = prom_query(&q.http, "ooo_late", Some(at));
    assert_eq!(v["data"]["result"].as_array().map(Vec::len), Some(1), "{v}");

    // Prometheus 3.5.3 opened on the receiver's tenant directory (SIGKILLed: head in
    // the WAL, out-of-order samples in the write-behind log and out-of-order blocks)
    // answers the same.
    let mut recv = recv;
    recv.proc.kill();
    let tenant = data.join("default-tenant");
    let reopened = Prometheus::start_prepared(
        "global:\n  scrape_interval: 1h\nstorage:\n  tsdb:\n    out_of_order_time_window: 1h\n",
        &[],
        |d| e2e::copy_dir(&tenant, d),
    );
    let again = prom_query(&reopened.addr(), raw, Some(at));
    let mut again_data = again["data"].clone();
    // Drop the late in-window series written above, which the reference never got.
    if let Some(r) = again_data["result"].as_array_mut() {
        r.retain(|s| s["metric"]["__name__"] != "ooo_late");
    }
    if let Some(d) = diff(&again_data, &theirs["data"]) {
        panic!("{block} blocks: Prometheus on orrery's directory: raw samples differ: {d}");
    }

    // The other way round: Prometheus dies; `orrery receive` opened on its data
    // directory (as tenant `default-tenant`) finds every sample, the out-of-order ones
    // through Prometheus's write-behind log.
    prom.proc.kill();
    let pdata = prom.dir.path().join("data");
    assert!(
        pdata.join("wbl").is_dir(),
        "Prometheus wrote no write-behind log"
    );
    let migrated = dir.path().join("migrated");
    e2e::copy_dir(&pdata, &migrated.join("default-tenant"));
    let recv2 = start_receiver(&migrated, &dir.path().join("receive-4.log"), block);
    let q2 = Querier::start(&[&recv2.grpc], &[]);
    let ours = prom_query(&q2.http, raw, Some(at));
    if let Some(d) = diff(&ours["data"], &theirs["data"]) {
        panic!("{block} blocks: Prometheus's directory read by orrery: raw samples differ: {d}");
    }
}

#[test]
fn out_of_order_stream_matches_prometheus_default_blocks() {
    side_by_side("2h");
}

#[test]
fn out_of_order_stream_matches_prometheus_with_compaction() {
    side_by_side("5m");
}

/// A native histogram counter, shuffled inside the window: stored out of order,
/// replayed from the write-behind log after a SIGKILL, and answered as Prometheus 3.5.3
/// (same window) answers: the raw histograms, `rate`, the `histogram_*` functions.
#[test]
fn native_histograms_out_of_order_match_prometheus() {
    use storeapi::wire::prometheus::WriteRequest;
    use storeapi::wire::prompb::{self, BucketSpan, Histogram, TimeSeries};
    use storeapi::wire::thanos::Label as WLabel;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let prom = Prometheus::start(
        "global:\n  scrape_interval: 1h\nstorage:\n  tsdb:\n    out_of_order_time_window: 1h\n",
        &[
            "--web.enable-remote-write-receiver",
            "--enable-feature=native-histograms",
        ],
    );
    let now = now_ms() / S * S;
    let hist = |i: i64| {
        let (a, b) = (3 * i as u64, 7 * i as u64);
        Histogram {
            count: Some(prompb::histogram::Count::CountInt(i as u64 + a + b)),
            zero_count: Some(prompb::histogram::ZeroCount::ZeroCountInt(i as u64)),
            zero_threshold: 0.001,
            schema: 1,
            positive_spans: vec![BucketSpan {
                offset: 0,
                length: 2,
            }],
            positive_deltas: vec![a as i64, b as i64 - a as i64],
            sum: i as f64 * 1.5,
            timestamp: now - 50 * M + i * 30 * S,
            ..Default::default()
        }
    };
    let mut idx: Vec<i64> = (0..100).collect();
    // The newest first, then shuffled.
    idx.swap(0, 99);
    shuffle(&mut idx[1..], 0x51ed_270b);
    let mut recv = start_receiver(&data, &dir.path().join("receive-1.log"), "2h");
    for (n, batch) in idx.chunks(8).enumerate() {
        let req = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![WLabel {
                    name: "__name__".into(),
                    value: "ooo_latency_seconds".into(),
                }],
                samples: vec![],
                exemplars: vec![],
                histograms: batch.iter().map(|&i| hist(i)).collect(),
            }],
            metadata: vec![],
        };
        let body = {
            use prost::Message;
            snap::raw::Encoder::new()
                .compress_vec(&req.encode_to_vec())
                .unwrap()
        };
        let headers = [
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ];
        let (code, text) =
            e2e::http_request(&prom.addr(), "POST", "/api/v1/write", &headers, &body).unwrap();
        assert_eq!(code, 204, "Prometheus refused request {n}: {text}");
        let (code, text) = recv.post(&body, &[]);
        assert_eq!(code, 200, "orrery refused request {n}: {text}");
    }
    recv.proc.kill();
    let recv = start_receiver(&data, &dir.path().join("receive-2.log"), "2h");
    let q = Querier::start(&[&recv.grpc], &[]);
    let at = (now + M) as f64 / 1000.0;
    let raw = |addr: &str| {
        let v = prom_query(addr, "ooo_latency_seconds[2h]", Some(at));
        v["data"]["result"][0]["histograms"].clone()
    };
    let theirs = raw(&prom.addr());
    assert_eq!(theirs.as_array().map(Vec::len), Some(100), "{theirs}");
    // Counts within 1e-9, bucket bounds exactly (`json_diff`).
    if let Some(d) = e2e::histograms::json_diff(&raw(&q.http), &theirs, "histograms") {
        panic!("raw histograms differ: {d}");
    }
    e2e::histograms::compare_queries(
        &prom.addr(),
        &q.http,
        &[
            "ooo_latency_seconds",
            "rate(ooo_latency_seconds[5m])",
            "histogram_count(rate(ooo_latency_seconds[5m]))",
            "histogram_quantile(0.9, rate(ooo_latency_seconds[5m]))",
            "histogram_sum(increase(ooo_latency_seconds[10m]))",
        ],
        now - 45 * M,
        now,
        60,
        &["tenant_id"],
    )
    .assert_clean();
}

/// Out-of-order blocks reach the bucket and `orrery compact` merges their overlaps with
/// the in-order blocks: afterwards no two blocks of the receiver overlap and together
/// they hold every sample of their time range exactly once.
#[test]
fn out_of_order_blocks_are_shipped_and_compacted_away() {
    use objstore::{Bucket, BucketConfig, MetaFetcher};

    let dir = tempfile::tempdir().unwrap();
    let bucket_dir = dir.path().join("bucket");
    std::fs::create_dir_all(&bucket_dir).unwrap();
    let objstore = format!(
        "type: FILESYSTEM\nconfig:\n  directory: {}\n",
        bucket_dir.display()
    );
    let data = dir.path().join("data");
    let recv = Receiver::start(
        &data,
        &dir.path().join("receive.log"),
        &[
            "--tsdb.out-of-order.time-window=1h",
            "--tsdb.min-block-duration=5m",
            "--tsdb.max-block-duration=5m",
            &format!("--objstore.config={objstore}"),
            "--shipper.interval=1s",
        ],
    );
    let now = now_ms() / S * S;
    for (i, r) in requests(now).iter().enumerate() {
        let (code, text) = recv.write(r);
        assert_eq!(code, 200, "request {i}: {text}");
    }
    let bucket = Bucket::new(&BucketConfig::parse(&objstore).unwrap(), None).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fetch = || {
        rt.block_on(MetaFetcher::new(bucket.clone(), None).fetch())
            .expect("discovery")
    };
    let shipped = wait_for(Duration::from_secs(90), || {
        let d = fetch();
        let ooo = d
            .blocks
            .values()
            .filter(|b| {
                b.meta
                    .compaction
                    .hints
                    .iter()
                    .any(|h| h == "from-out-of-order")
            })
            .count();
        (ooo > 0 && d.blocks.len() > ooo).then_some(d.blocks.len())
    });
    assert!(
        shipped.is_some(),
        "no out-of-order block shipped; log:\n{}",
        recv.proc.log_text()
    );
    drop(recv);

    let compact_data = dir.path().join("compact-data");
    for pass in 0..2 {
        let mut cmd = std::process::Command::new(e2e::orrery_bin());
        cmd.args([
            "compact".to_string(),
            format!("--objstore.config={objstore}"),
            format!("--data-dir={}", compact_data.display()),
            "--consistency-delay=0s".to_string(),
            "--delete-delay=0s".to_string(),
            "--downsampling.disable".to_string(),
            format!("--http-address=127.0.0.1:{}", e2e::free_port()),
        ]);
        let mut p = e2e::Proc::spawn(
            "orrery compact",
            cmd,
            dir.path().join(format!("compact-{pass}.log")),
        );
        let ok = p.wait_exit(Duration::from_secs(120));
        assert!(
            ok.is_some_and(|s| s.success()),
            "orrery compact pass {pass} failed:\n{}",
            p.log_text()
        );
    }
    let d = fetch();
    let mut ranges: Vec<(i64, i64, u64)> = d
        .blocks
        .values()
        .map(|b| (b.meta.min_time, b.meta.max_time, b.meta.stats.num_samples))
        .collect();
    ranges.sort();
    for w in ranges.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "blocks still overlap after compaction: {ranges:?}"
        );
    }
    let stored: u64 = ranges.iter().map(|r| r.2).sum();
    let want = dataset(now)
        .iter()
        .filter(|(_, x)| ranges.iter().any(|r| x.t >= r.0 && x.t < r.1))
        .count() as u64;
    assert!(want > 0, "nothing covered: {ranges:?}");
    assert_eq!(stored, want, "samples in the compacted blocks: {ranges:?}");
}
