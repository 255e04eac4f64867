//! Long-range queries through the store gateway (`orrery store` + `orrery query`) against
//! Prometheus 3.5.3 serving the same blocks from its own data dir, same machine, same run
//! (issue #16), and 30 days of downsampled data against raw (issue #17).
//!
//! ```sh
//! cargo build --release --bin orrery --bin store_bench
//! target/release/store_bench [--series 2000] [--days 7] [--reps 5] [--buckets fs,s3]
//!     [--start-blocks 100] [--ds-series 500] [--ds-days 30] [--parts long,start,ds]
//!     [--store-args "--store.chunk-cache-size=67108864"] [--only SUBSTRING] [--orrery PATH]
//! ```
//!
//! Data (both workloads): scrape targets of 20 series at 15 s (`job`, `instance`): 12
//! `bench_http_requests_total{handler,code}` counters and `bench_cpu_seconds_total`
//! (reset to 0 when the target restarts, about every 2.5 days), gauges
//! `bench_memory_bytes`, `bench_queue_depth{queue}` (4), `bench_temperature_celsius`, and
//! `up`. 2h blocks are written in-process with the `tsdb` block writer and uploaded with
//! `orrery tools bucket upload-blocks`.
//!
//! 1. `long`: `--days` × `--series`. One `orrery compact` pass (`--downsampling.disable`,
//!    `--delete-delay=0s`) leaves the compacted raw blocks; Prometheus gets a copy of
//!    exactly those (`--storage.tsdb.{min,max}-block-duration=2h`: it never compacts them
//!    again). Every query's answer is compared with Prometheus's before timing. Per query
//!    and bucket (FILESYSTEM, moto S3): cold (a fresh gateway with an empty `--data-dir`
//!    and a fresh querier, first query; Prometheus restarted), warm (median of `--reps`,
//!    alternating), bytes the gateway fetched (its `/metrics`, every counter whose name
//!    says bytes), the gateway's RSS after ready and after the workload (2 s after the
//!    last answer) against the blocks' size.
//! 2. `start`: `--start-blocks` 2h blocks (uncompacted): time from `orrery store` start to
//!    `/-/ready` and to the first full answer through a querier started after ready.
//! 3. `ds`: `--ds-days` × `--ds-series`, compacted with downsampling (raw ≥ 40h → 5m, 5m
//!    ≥ 10d → 1h); a 30-day range at a 1h step through the gateway with
//!    `max_source_resolution` `auto`, `1h` and `0s` (raw), and Prometheus over the raw
//!    blocks; the downsampled answers' relative error against raw.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::bench::{
    answer, arg_num, arg_str, median, metric_growth, metric_sums, ms, orrery_for_bench, proc_stats,
    rss_anon_kib, rss_kib, series_count, timed, truncate, xor_chunks,
};
use e2e::promqlcmp::{Answer, Rng, compare_answers, secs, urlencode};
use e2e::s3::MotoServer;
use e2e::{Proc, free_port, http_get, prometheus_bin, wait_for};
use objstore::{Bucket, BucketConfig};
use storeapi::{Label, Labels};
use tsdb::block::{BlockOptions, BlockWriter};

const H: i64 = 3_600_000;
const D: i64 = 24 * H;
const STEP_MS: i64 = 15_000;
const SERIES_PER_TARGET: usize = 20;
const JOBS: usize = 5;
const HANDLERS: [&str; 3] = ["/api/v1/query", "/api/v1/query_range", "/api/v1/write"];
const CODES: [&str; 4] = ["200", "404", "500", "503"];
const QUEUES: [&str; 4] = ["ingest", "compact", "upload", "query"];
const BUCKET: &str = "bench";
/// The external label of every uploaded block; the querier drops it as a replica label,
/// so answers compare with Prometheus's as they are.
const EXT_LABEL: &str = "tenant_id";

#[derive(Clone, Copy)]
enum Kind {
    /// Grows by about this much per second; back to 0 at a target restart.
    Counter(f64),
    /// Random walk with this step, two decimals, kept in `[lo, hi]`.
    Gauge {
        step: f64,
        lo: f64,
        hi: f64,
    },
    Const(f64),
}

struct GenSeries {
    labels: Labels,
    target: usize,
    kind: Kind,
    value: f64,
    rng: Rng,
}

/// The series of `n / 20` targets (at least one), sorted by labels (the block writer's
/// order).
fn dataset(n: usize) -> Vec<GenSeries> {
    let targets = (n / SERIES_PER_TARGET).max(1);
    let mut rng = Rng::new(0x16b);
    let mut out = Vec::with_capacity(targets * SERIES_PER_TARGET);
    for t in 0..targets {
        let job = format!("job-{}", t % JOBS);
        let inst = format!("host-{t:04}");
        let mut push = |extra: &[(&str, &str)], kind: Kind, value: f64, seed: u64| {
            let mut l = vec![
                Label::new("job", job.as_str()),
                Label::new("instance", inst.as_str()),
            ];
            l.extend(extra.iter().map(|(k, v)| Label::new(*k, *v)));
            out.push(GenSeries {
                labels: Labels::from_unsorted(l).expect("generated labels are valid"),
                target: t,
                kind,
                value,
                rng: Rng::new(seed),
            });
        };
        for h in HANDLERS {
            for c in CODES {
                let r = match c {
                    "200" => 30.0,
                    "404" => 2.0,
                    _ => 0.3,
                } * (0.5 + rng.f());
                push(
                    &[
                        ("__name__", "bench_http_requests_total"),
                        ("handler", h),
                        ("code", c),
                    ],
                    Kind::Counter(r),
                    rng.below(100_000) as f64,
                    rng.next_u64(),
                );
            }
        }
        push(
            &[("__name__", "bench_cpu_seconds_total")],
            Kind::Counter(0.2 + rng.f()),
            rng.below(10_000) as f64,
            rng.next_u64(),
        );
        push(
            &[("__name__", "bench_memory_bytes")],
            Kind::Gauge {
                step: 4e6,
                lo: 5e7,
                hi: 4e9,
            },
            (2e8 + rng.f() * 1e9).round(),
            rng.next_u64(),
        );
        for q in QUEUES {
            push(
                &[("__name__", "bench_queue_depth"), ("queue", q)],
                Kind::Gauge {
                    step: 20.0,
                    lo: 0.0,
                    hi: 5000.0,
                },
                rng.below(500) as f64,
                rng.next_u64(),
            );
        }
        push(
            &[("__name__", "bench_temperature_celsius")],
            Kind::Gauge {
                step: 0.5,
                lo: 20.0,
                hi: 90.0,
            },
            40.0 + rng.below(20) as f64,
            rng.next_u64(),
        );
        push(&[("__name__", "up")], Kind::Const(1.0), 1.0, rng.next_u64());
    }
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    out
}

/// The scrape offset of a target within its 15 s interval.
fn phase_ms(target: usize) -> i64 {
    (target as i64 * 7_919) % STEP_MS
}

/// The step (index within the window) at which `target` restarts in 2h window `w`, if it
/// does: about once every 30 windows (2.5 days).
fn restart_step(target: usize, w: i64) -> Option<i64> {
    let mut r = Rng::new((target as u64) << 32 ^ w as u64 ^ 0x9e37_79b9_7f4a_7c15);
    r.next_u64();
    (r.below(30) == 0).then(|| r.below((2 * H / STEP_MS) as u64) as i64)
}

/// Writes 2h blocks for `[t0, t0 + days)` into `dir` (a Prometheus-style data dir);
/// returns the number of samples.
fn write_blocks(series: &mut [GenSeries], t0: i64, days: i64, dir: &Path) -> u64 {
    std::fs::create_dir_all(dir).expect("mkdir blocks");
    let mut total = 0u64;
    let steps = 2 * H / STEP_MS;
    for w in 0..days * 12 {
        let mint = t0 + w * 2 * H;
        let restarts: BTreeMap<usize, Option<i64>> = series
            .iter()
            .map(|s| s.target)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|t| (t, restart_step(t, w)))
            .collect();
        let mut out = Vec::with_capacity(series.len());
        for s in series.iter_mut() {
            let restart = restarts.get(&s.target).copied().flatten();
            let mut samples = Vec::with_capacity(steps as usize);
            for k in 0..steps {
                let t = mint + k * STEP_MS + phase_ms(s.target);
                s.value = match s.kind {
                    Kind::Counter(r) => {
                        let base = if restart == Some(k) { 0.0 } else { s.value };
                        base + (r * 15.0 * (0.5 + s.rng.f())).round()
                    }
                    Kind::Gauge { step, lo, hi } => {
                        let v = s.value + (s.rng.f() - 0.5) * 2.0 * step;
                        ((v.clamp(lo, hi)) * 100.0).round() / 100.0
                    }
                    Kind::Const(v) => v,
                };
                samples.push((t, s.value));
            }
            total += samples.len() as u64;
            out.push((s.labels.clone(), xor_chunks(&samples)));
        }
        BlockWriter::write(dir, mint, mint + 2 * H, out, &BlockOptions::default())
            .expect("write block");
    }
    total
}

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => n += dir_bytes(&e.path()),
                Ok(m) => n += m.len(),
                Err(_) => {}
            }
        }
    }
    n
}

fn run_ok(mut cmd: Command, what: &str) -> Duration {
    let t = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

fn upload_blocks(orrery: &Path, objstore: &str, dir: &Path) -> Duration {
    let mut cmd = Command::new(orrery);
    cmd.args(["tools", "bucket", &format!("--objstore.config={objstore}")])
        .args(["upload-blocks", "--path"])
        .arg(dir)
        .arg(format!("--label={EXT_LABEL}=\"bench\""));
    run_ok(cmd, "orrery tools bucket upload-blocks")
}

/// One `orrery compact` pass; returns (wall, CPU s, peak RSS MiB).
fn compact(orrery: &Path, objstore: &str, work: &Path, downsample: bool) -> (Duration, f64, f64) {
    let mut cmd = Command::new(orrery);
    cmd.arg("compact")
        .arg(format!("--objstore.config={objstore}"))
        .arg(format!("--data-dir={}", work.join("compact").display()))
        .args([
            "--consistency-delay=0s",
            "--delete-delay=0s",
            "--http-address=127.0.0.1:0",
        ]);
    if !downsample {
        cmd.arg("--downsampling.disable");
    }
    let log = work.join("compact.log");
    let mut p = Proc::spawn("orrery-compact", cmd, log.clone());
    let t = Instant::now();
    let (mut hwm, mut ticks) = (0, 0);
    let st = loop {
        if let Some((h, c)) = proc_stats(p.pid()) {
            hwm = hwm.max(h);
            ticks = ticks.max(c);
        }
        if let Ok(Some(st)) = p.child.try_wait() {
            break st;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "orrery compact failed:\n{}", p.log_text());
    (t.elapsed(), ticks as f64 / 100.0, hwm as f64 / 1024.0)
}

/// The blocks readers see (no deletion mark, not hidden by a compacted block):
/// (ULID, min, max, resolution, level).
fn visible_blocks(
    rt: &tokio::runtime::Runtime,
    bucket: &Bucket,
) -> Vec<(String, i64, i64, i64, u32)> {
    let d = rt
        .block_on(objstore::discovery::MetaFetcher::new(bucket.clone(), None).fetch())
        .expect("discover the bucket");
    let hidden = d.compacted_sources();
    d.blocks
        .iter()
        .filter(|(id, b)| b.deletion_mark.is_none() && !hidden.contains(*id))
        .map(|(id, b)| {
            (
                id.to_string(),
                b.meta.min_time,
                b.meta.max_time,
                b.resolution(),
                b.meta.compaction.level,
            )
        })
        .collect()
}

fn describe(blocks: &[(String, i64, i64, i64, u32)]) -> String {
    let mut by: BTreeMap<(i64, i64), usize> = BTreeMap::new();
    for b in blocks {
        *by.entry((b.3, (b.2 - b.1) / H)).or_default() += 1;
    }
    by.iter()
        .map(|((res, hours), n)| {
            let r = match res {
                0 => "raw".to_string(),
                r => format!("{}m", r / 60_000),
            };
            format!("{n}×{hours}h {r}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Downloads the raw visible blocks into `dir` (Prometheus's data dir).
fn download_raw(rt: &tokio::runtime::Runtime, bucket: &Bucket, dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir prometheus data");
    for (id, _, _, res, _) in visible_blocks(rt, bucket) {
        if res != 0 {
            continue;
        }
        let ulid = id.parse().expect("ULID from the bucket");
        rt.block_on(objstore::block::download_block(bucket, ulid, dir))
            .expect("download block");
    }
}

struct Srv {
    proc: Proc,
    http: String,
    grpc: String,
}

fn wait_ready(p: &Proc, http: &str, timeout: Duration) {
    let ok = wait_for(timeout, || {
        matches!(http_get(http, "/-/ready"), Ok((200, _))).then_some(())
    });
    assert!(
        ok.is_some(),
        "{} not ready on {http}; log:\n{}",
        p.name,
        p.log_text()
    );
}

/// `--store-args "..."`: extra flags for every `orrery store` (e.g. a chunk cache size),
/// split at whitespace.
fn store_args() -> Vec<String> {
    arg_str("--store-args")
        .map(|a| a.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Starts `orrery store` (not waiting for it to be ready).
fn spawn_store(orrery: &Path, objstore: &str, data: &Path, log: &Path) -> Srv {
    let (grpc, http) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut cmd = Command::new(orrery);
    cmd.arg("store")
        .arg(format!("--objstore.config={objstore}"))
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--grpc-address={grpc}"))
        .arg(format!("--http-address={http}"))
        .args(store_args());
    Srv {
        proc: Proc::spawn("orrery-store", cmd, log.to_path_buf()),
        http,
        grpc,
    }
}

/// Starts `orrery query` over `store` and waits until it answers `probe` with data.
fn start_query(orrery: &Path, store: &str, log: &Path, probe: &str) -> Srv {
    let http = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(orrery);
    cmd.arg("query")
        .arg(format!("--http-address={http}"))
        .arg(format!("--grpc-address=127.0.0.1:{}", free_port()))
        .arg(format!("--endpoint={store}"))
        .arg(format!("--query.replica-label={EXT_LABEL}"))
        .args(["--query.timeout=10m", "--query.max-samples=1000000000"]);
    let q = Srv {
        proc: Proc::spawn("orrery-query", cmd, log.to_path_buf()),
        grpc: String::new(),
        http,
    };
    wait_ready(&q.proc, &q.http, Duration::from_secs(60));
    wait_answers(&q.http, probe, &q.proc);
    q
}

fn wait_answers(addr: &str, probe: &str, p: &Proc) {
    let ok = wait_for(Duration::from_secs(60), || {
        match e2e::bench::get(addr, probe) {
            Ok((200, body)) if body.contains("\"result\":[{") => Some(()),
            _ => None,
        }
    });
    assert!(
        ok.is_some(),
        "{} never answered {probe}; log:\n{}",
        p.name,
        p.log_text()
    );
}

/// Prometheus 3.5.3 over an existing data dir, never compacting it.
fn start_prometheus(data: &Path, work: &Path, probe: &str) -> Srv {
    let port = free_port();
    let cfg = work.join("prometheus.yml");
    std::fs::write(&cfg, "global:\n  scrape_interval: 1h\n").expect("write prometheus.yml");
    let mut cmd = Command::new(prometheus_bin());
    cmd.arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .args([
            "--storage.tsdb.retention.time=100y",
            "--storage.tsdb.min-block-duration=2h",
            "--storage.tsdb.max-block-duration=2h",
            "--storage.tsdb.no-lockfile",
            "--query.timeout=10m",
            "--query.max-samples=1000000000",
        ]);
    let p = Srv {
        proc: Proc::spawn("prometheus", cmd, work.join("prometheus.log")),
        http: format!("127.0.0.1:{port}"),
        grpc: String::new(),
    };
    wait_ready(&p.proc, &p.http, Duration::from_secs(120));
    wait_answers(&p.http, probe, &p.proc);
    p
}

fn stop(mut s: Srv) {
    if s.proc.terminate(Duration::from_secs(20)).is_none() {
        s.proc.kill();
    }
}

fn range_path(q: &str, (start, end, step): (i64, i64, i64), res: Option<&str>) -> String {
    let mut p = format!(
        "/api/v1/query_range?query={}&start={}&end={}&step={}",
        urlencode(q),
        secs(start),
        secs(end),
        secs(step)
    );
    if let Some(r) = res {
        p.push_str(&format!("&max_source_resolution={r}"));
    }
    p
}

/// Bytes the gateway fetched while `f` ran, from every `/metrics` counter whose name
/// says bytes (the metric set differs between versions, so all are shown).
fn fetched_during<T>(store_http: &str, f: impl FnOnce() -> T) -> (T, String) {
    let before = metric_sums(
        &http_get(store_http, "/metrics")
            .map(|r| r.1)
            .unwrap_or_default(),
    );
    let r = f();
    let after = metric_sums(
        &http_get(store_http, "/metrics")
            .map(|r| r.1)
            .unwrap_or_default(),
    );
    let grown = metric_growth(&before, &after, &["bytes"]);
    let text = grown
        .iter()
        .filter(|(n, _)| !n.ends_with("_count"))
        .map(|(n, v)| format!("{n} +{}", human(*v)))
        .collect::<Vec<_>>()
        .join(", ");
    (r, if text.is_empty() { "-".into() } else { text })
}

fn human(b: f64) -> String {
    if b >= 1e6 {
        format!("{:.1}MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1}kB", b / 1e3)
    } else {
        format!("{b:.0}B")
    }
}

fn mib(kib: Option<u64>) -> f64 {
    kib.unwrap_or(0) as f64 / 1024.0
}

/// A bucket to benchmark on: its name and objstore YAML; `_moto` keeps the S3 server.
struct BucketKind {
    name: &'static str,
    yaml: String,
    _moto: Option<MotoServer>,
}

fn make_bucket(kind: &str, dir: &Path) -> BucketKind {
    std::fs::create_dir_all(dir).expect("mkdir");
    match kind {
        "fs" => {
            let b = dir.join("bucket");
            std::fs::create_dir_all(&b).expect("mkdir bucket");
            BucketKind {
                name: "FILESYSTEM",
                yaml: format!("type: FILESYSTEM\nconfig:\n  directory: {}\n", b.display()),
                _moto: None,
            }
        }
        "s3" => {
            let m = MotoServer::start(dir);
            m.create_bucket(BUCKET);
            BucketKind {
                name: "S3 (moto)",
                yaml: format!(
                    "type: S3\nconfig:\n  bucket: {BUCKET}\n  endpoint: {}\n  insecure: true\n  access_key: test\n  secret_key: test\n",
                    m.addr()
                ),
                _moto: Some(m),
            }
        }
        other => panic!("--buckets takes fs and/or s3, got {other:?}"),
    }
}

fn bucket_of(yaml: &str) -> Bucket {
    Bucket::new(&BucketConfig::parse(yaml).expect("objstore config"), None).expect("bucket")
}

/// Start of the data: `days` before the last whole day, so Prometheus's and the
/// gateway's notions of "recent" do not matter and days are aligned.
fn data_start(days: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    (now / D - 1 - days) * D
}

fn count_up_probe(end: i64) -> String {
    format!(
        "/api/v1/query?query={}&time={}",
        urlencode("count(up)"),
        secs(end)
    )
}

/// Workload 1: long-range queries, FILESYSTEM and S3.
fn long_range(orrery: &Path, work: &Path, buckets: &[String]) {
    let n = arg_num("--series", 2000) as usize;
    let days = arg_num("--days", 7);
    let reps = arg_num("--reps", 5).max(1) as usize;
    let t0 = data_start(days);
    let end = t0 + days * D;
    let mut series = dataset(n);
    let targets = series.len() / SERIES_PER_TARGET;
    let t = Instant::now();
    let raw_dir = work.join("raw-2h");
    let samples = write_blocks(&mut series, t0, days, &raw_dir);
    drop(series);
    println!(
        "## long range (#16): {} series ({targets} targets) × {days} d at 15 s = {samples} samples, {} 2h blocks written in {:.1}s",
        targets * SERIES_PER_TARGET,
        days * 12,
        t.elapsed().as_secs_f64()
    );

    // The FILESYSTEM bucket is compacted; Prometheus and the S3 bucket get its result.
    let fs = make_bucket("fs", &work.join("fs"));
    let up = upload_blocks(orrery, &fs.yaml, &raw_dir);
    std::fs::remove_dir_all(&raw_dir).expect("rm raw blocks");
    let (cw, cpu, rss) = compact(orrery, &fs.yaml, &work.join("fs"), false);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let fsb = bucket_of(&fs.yaml);
    let blocks = visible_blocks(&rt, &fsb);
    println!(
        "upload-blocks {:.1}s; orrery compact (one pass, downsampling off) {:.1}s, {cpu:.1} CPU-s, peak RSS {rss:.0} MiB → {}",
        up.as_secs_f64(),
        cw.as_secs_f64(),
        describe(&blocks)
    );
    let prom_data = work.join("prom-data");
    download_raw(&rt, &fsb, &prom_data);
    let block_bytes = dir_bytes(&prom_data);
    println!(
        "blocks served: {} ({:.1} MiB); Prometheus 3.5.3 holds a copy of the same blocks",
        blocks.len(),
        block_bytes as f64 / 1048576.0
    );
    let probe = count_up_probe(end);

    let day = (end - D, end, 60_000);
    let week = (t0 + 10 * 60_000, end, 300_000);
    let queries: [(&str, &str, (i64, i64, i64)); 8] = [
        (
            "1d",
            "sum by (job) (rate(bench_http_requests_total[5m]))",
            day,
        ),
        (
            "7d",
            "sum by (job) (rate(bench_http_requests_total[5m]))",
            week,
        ),
        ("1d", "max_over_time(bench_temperature_celsius[10m])", day),
        ("7d", "max_over_time(bench_temperature_celsius[10m])", week),
        (
            "1d",
            r#"rate(bench_http_requests_total{instance="host-0007",code="500"}[5m])"#,
            day,
        ),
        (
            "7d",
            r#"rate(bench_http_requests_total{instance="host-0007",code="500"}[5m])"#,
            week,
        ),
        (
            "1d",
            r#"count by (job) ({__name__=~"bench_.+",job=~"job-[0-3]"})"#,
            day,
        ),
        (
            "7d",
            r#"count by (job) ({__name__=~"bench_.+",job=~"job-[0-3]"})"#,
            week,
        ),
    ];
    let only = arg_str("--only");
    let selected: Vec<_> = queries
        .iter()
        .filter(|(_, q, _)| only.as_ref().is_none_or(|o| q.contains(o.as_str())))
        .collect();

    // Prometheus cold: restarted before each query's first run.
    let mut prom_cold = Vec::new();
    for (_, q, r) in &selected {
        let p = start_prometheus(&prom_data, work, &probe);
        prom_cold.push(timed(&p.http, &range_path(q, *r, None)));
        stop(p);
    }

    for kind in buckets {
        let b = if kind == "fs" {
            BucketKind {
                name: fs.name,
                yaml: fs.yaml.clone(),
                _moto: None,
            }
        } else {
            let b = make_bucket(kind, &work.join(kind));
            upload_blocks(orrery, &b.yaml, &prom_data);
            b
        };
        println!(
            "\n### {}: {reps} warm reps alternating with Prometheus; cold = fresh gateway (empty --data-dir) + querier, Prometheus restarted",
            b.name
        );
        // Cold, one fresh gateway per query.
        let mut cold = Vec::new();
        for (i, (_, q, r)) in selected.iter().enumerate() {
            let data = work.join(format!("store-cold-{kind}-{i}"));
            let s = spawn_store(orrery, &b.yaml, &data, &work.join("store-cold.log"));
            wait_ready(&s.proc, &s.http, Duration::from_secs(120));
            let qy = start_query(orrery, &s.grpc, &work.join("query-cold.log"), &probe);
            // The probe touched the `up` series only; the query below is the first of
            // its kind on this gateway.
            let (d, bytes) = fetched_during(&s.http, || timed(&qy.http, &range_path(q, *r, None)));
            cold.push((d, bytes));
            stop(qy);
            stop(s);
            let _ = std::fs::remove_dir_all(&data);
        }
        // Warm: one long-lived gateway.
        let started = Instant::now();
        let s = spawn_store(
            orrery,
            &b.yaml,
            &work.join(format!("store-{kind}")),
            &work.join(format!("store-{kind}.log")),
        );
        wait_ready(&s.proc, &s.http, Duration::from_secs(120));
        let ready_in = started.elapsed();
        let rss_ready = rss_kib(s.proc.pid());
        let anon_ready = rss_anon_kib(s.proc.pid());
        let qy = start_query(
            orrery,
            &s.grpc,
            &work.join(format!("query-{kind}.log")),
            &probe,
        );
        let prom = start_prometheus(&prom_data, work, &probe);
        println!(
            "gateway ready in {:.2}s, RSS after ready {:.1} MiB (anonymous {:.1} MiB; {:.2}% of the {:.1} MiB of blocks)",
            ready_in.as_secs_f64(),
            mib(rss_ready),
            mib(anon_ready),
            mib(rss_ready) * 1048576.0 / block_bytes as f64 * 100.0,
            block_bytes as f64 / 1048576.0
        );
        println!(
            "| range | query | series | cold Orrery ms | cold Prometheus ms | cold ratio | warm Orrery ms | warm Prometheus ms | warm ratio | bytes fetched cold; warm |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
        let mut ratios = Vec::new();
        for (i, (range, q, r)) in selected.iter().enumerate() {
            let path = range_path(q, *r, None);
            let theirs = answer(&prom.http, &path, &[]);
            let ours = answer(&qy.http, &path, &[]);
            if let Err(e) = compare_answers(&ours, &theirs, false) {
                panic!(
                    "{}: {q} over {range}: Orrery's answer differs from Prometheus's: {}",
                    b.name,
                    truncate(&e)
                );
            }
            let (mut o, mut p) = (Vec::new(), Vec::new());
            let (_, warm_bytes) = fetched_during(&s.http, || o.push(timed(&qy.http, &path)));
            p.push(timed(&prom.http, &path));
            for _ in 1..reps {
                o.push(timed(&qy.http, &path));
                p.push(timed(&prom.http, &path));
            }
            let (om, pm) = (median(&mut o), median(&mut p));
            let ratio = om.as_secs_f64() / pm.as_secs_f64();
            ratios.push(ratio);
            let (cd, cb) = &cold[i];
            println!(
                "| {range} | `{q}` | {} | {:.0} | {:.0} | {:.2}× | {:.0} | {:.0} | {:.2}× | {cb}; {warm_bytes} |",
                series_count(&theirs),
                ms(*cd),
                ms(prom_cold[i]),
                cd.as_secs_f64() / prom_cold[i].as_secs_f64(),
                ms(om),
                ms(pm),
                ratio
            );
        }
        // At rest: the gateway gives freed memory back shortly after a large request
        // (`store::heap`), so the RSS is read once that had time to run.
        std::thread::sleep(Duration::from_secs(2));
        let rss_after = rss_kib(s.proc.pid());
        let anon_after = rss_anon_kib(s.proc.pid());
        let peak = proc_stats(s.proc.pid()).map(|x| x.0);
        let geo = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len().max(1) as f64).exp();
        println!(
            "warm geometric mean {geo:.2}× (Orrery / Prometheus; below 1: Orrery faster). Gateway RSS after the workload {:.1} MiB (anonymous {:.1} MiB), peak {:.1} MiB: {:.2}% / {:.2}% of the blocks' {:.1} MiB",
            mib(rss_after),
            mib(anon_after),
            mib(peak),
            mib(rss_after) * 1048576.0 / block_bytes as f64 * 100.0,
            mib(peak) * 1048576.0 / block_bytes as f64 * 100.0,
            block_bytes as f64 / 1048576.0
        );
        stop(prom);
        stop(qy);
        stop(s);
    }
}

/// Workload 2: start time of a gateway over `--start-blocks` uncompacted 2h blocks.
fn start_time(orrery: &Path, work: &Path, buckets: &[String]) {
    let nblocks = arg_num("--start-blocks", 100).max(1);
    let n = arg_num("--start-series", 200) as usize;
    let mut series = dataset(n);
    let dir = work.join("start-2h");
    // Whole days, then the blocks past `nblocks` removed.
    let days = (nblocks + 11) / 12;
    let t0 = data_start(days);
    write_blocks(&mut series, t0, days, &dir);
    let mut ids: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read blocks")
        .flatten()
        .map(|e| e.path())
        .collect();
    ids.sort();
    for extra in ids.iter().skip(nblocks as usize) {
        std::fs::remove_dir_all(extra).expect("rm block");
    }
    let probe = count_up_probe(t0 + nblocks * 2 * H - 60_000);
    println!(
        "\n## start (#16): {nblocks} uncompacted 2h blocks of {} series ({:.1} MiB)",
        series.len(),
        dir_bytes(&dir) as f64 / 1048576.0
    );
    println!(
        "| bucket | start → /-/ready | start → first full answer (querier started after ready) | RSS after ready |"
    );
    println!("|---|---:|---:|---:|");
    for kind in buckets {
        let b = make_bucket(kind, &work.join(format!("start-{kind}")));
        upload_blocks(orrery, &b.yaml, &dir);
        let t = Instant::now();
        let s = spawn_store(
            orrery,
            &b.yaml,
            &work.join(format!("start-store-{kind}")),
            &work.join("start-store.log"),
        );
        wait_ready(&s.proc, &s.http, Duration::from_secs(300));
        let ready = t.elapsed();
        let rss = rss_kib(s.proc.pid());
        let q = start_query(orrery, &s.grpc, &work.join("start-query.log"), &probe);
        let (code, body) = e2e::bench::get(&q.http, &probe).expect("query");
        let want = format!("\"{}\"]", series.len() / SERIES_PER_TARGET);
        assert!(
            code == 200 && body.contains(&want),
            "first answer incomplete: {body}"
        );
        let first = t.elapsed();
        println!(
            "| {} | {:.2} s | {:.2} s | {:.1} MiB |",
            b.name,
            ready.as_secs_f64(),
            first.as_secs_f64(),
            mib(rss)
        );
        stop(q);
        stop(s);
    }
}

/// Worst and median relative difference of two matrices (same series, same steps).
/// Also returns where the worst one is: (series, timestamp ms).
#[allow(clippy::type_complexity)]
fn rel_error(a: &Answer, b: &Answer) -> Result<(f64, f64, usize, (String, i64)), String> {
    use promql::Value;
    let (Answer::Value(Value::Matrix(x)), Answer::Value(Value::Matrix(y))) = (a, b) else {
        return Err(format!("not two matrices: {}", series_count(a)));
    };
    let theirs: BTreeMap<&Labels, &Vec<storeapi::Sample>> = y.iter().map(|(l, s)| (l, s)).collect();
    let mut errs = Vec::new();
    let mut missing = 0;
    let mut worst = (0.0f64, String::new(), 0i64);
    for (l, pts) in x {
        let Some(o) = theirs.get(l) else {
            missing += 1;
            continue;
        };
        let by_t: BTreeMap<i64, f64> = o.iter().map(|s| (s.t, s.v)).collect();
        for p in pts {
            match by_t.get(&p.t) {
                Some(v) => {
                    let e = (p.v - v).abs() / v.abs().max(1e-9);
                    if e > worst.0 {
                        worst = (e, l.to_string(), p.t);
                    }
                    errs.push(e)
                }
                None => missing += 1,
            }
        }
    }
    if errs.is_empty() {
        return Err("no common points".into());
    }
    errs.sort_by(f64::total_cmp);
    Ok((
        errs[errs.len() - 1],
        errs[errs.len() / 2],
        missing,
        (worst.1, worst.2),
    ))
}

/// Workload 3: 30 days downsampled vs raw.
fn downsampled(orrery: &Path, work: &Path) {
    let n = arg_num("--ds-series", 500) as usize;
    let days = arg_num("--ds-days", 30);
    let reps = arg_num("--reps", 5).max(1) as usize;
    let t0 = data_start(days);
    let end = t0 + days * D;
    let mut series = dataset(n);
    let raw_dir = work.join("ds-2h");
    let t = Instant::now();
    let samples = write_blocks(&mut series, t0, days, &raw_dir);
    println!(
        "\n## downsampled (#17): {} series × {days} d at 15 s = {samples} samples, {} 2h blocks written in {:.1}s",
        series.len(),
        days * 12,
        t.elapsed().as_secs_f64()
    );
    drop(series);
    let b = make_bucket("fs", &work.join("ds"));
    upload_blocks(orrery, &b.yaml, &raw_dir);
    std::fs::remove_dir_all(&raw_dir).expect("rm raw blocks");
    let (cw, cpu, rss) = compact(orrery, &b.yaml, &work.join("ds"), true);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let bucket = bucket_of(&b.yaml);
    println!(
        "orrery compact (one pass, downsampling on) {:.1}s, {cpu:.1} CPU-s, peak RSS {rss:.0} MiB → {}",
        cw.as_secs_f64(),
        describe(&visible_blocks(&rt, &bucket))
    );
    let prom_data = work.join("ds-prom");
    download_raw(&rt, &bucket, &prom_data);
    let probe = count_up_probe(end);
    let s = spawn_store(
        orrery,
        &b.yaml,
        &work.join("ds-store"),
        &work.join("ds-store.log"),
    );
    wait_ready(&s.proc, &s.http, Duration::from_secs(120));
    let qy = start_query(orrery, &s.grpc, &work.join("ds-query.log"), &probe);
    let prom = start_prometheus(&prom_data, work, &probe);
    let range = (t0 + 2 * H, end, H);
    let queries = [
        "rate(bench_http_requests_total[1h])",
        "sum by (job) (rate(bench_http_requests_total[1h]))",
        "max_over_time(bench_temperature_celsius[1h])",
        // `rate` reads at most range/2 (Thanos's rule for two-sample functions): only a
        // range of 2h or more lets `1h` read the 1h blocks.
        "sum by (job) (rate(bench_http_requests_total[3h]))",
    ];
    println!(
        "30 d range at a 1h step; warm medians of {reps}; ratio = Prometheus / Orrery (above 1: Orrery faster); error = relative difference to Prometheus's raw answer (worst, median)"
    );
    println!(
        "| query | Prometheus raw ms | Orrery 0s ms | Orrery auto ms | Orrery 1h ms | speed-up auto / 1h | error auto | error 1h |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|---|");
    for q in queries {
        let theirs = answer(&prom.http, &range_path(q, range, None), &[]);
        let raw = answer(&qy.http, &range_path(q, range, Some("0s")), &[]);
        if let Err(e) = compare_answers(&raw, &theirs, false) {
            panic!(
                "{q}: Orrery raw (0s) differs from Prometheus: {}",
                truncate(&e)
            );
        }
        let mut times: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
        let mut errs = BTreeMap::new();
        let mut answers = Vec::new();
        for res in ["auto", "1h"] {
            let a = answer(&qy.http, &range_path(q, range, Some(res)), &[]);
            answers.push(a.clone());
            errs.insert(
                res,
                match rel_error(&a, &theirs) {
                    Ok((w, m, missing, (wl, wt))) => format!(
                        "{:.2}%, {:.2}% (worst: {wl} at data start + {:.2}h){}",
                        w * 100.0,
                        m * 100.0,
                        (wt - t0) as f64 / H as f64,
                        if missing > 0 {
                            format!(" ({missing} points/series not in raw)")
                        } else {
                            String::new()
                        }
                    ),
                    Err(e) => e,
                },
            );
        }
        if compare_answers(&answers[0], &answers[1], false).is_ok() {
            println!("note: `{q}` answers the same at auto (5m) and 1h");
        }
        for _ in 0..reps {
            times
                .entry("prom")
                .or_default()
                .push(timed(&prom.http, &range_path(q, range, None)));
            for res in ["0s", "auto", "1h"] {
                times
                    .entry(res)
                    .or_default()
                    .push(timed(&qy.http, &range_path(q, range, Some(res))));
            }
        }
        let mut med = |k: &str| median(times.get_mut(k).expect("timed"));
        let (p, r0, ra, rh) = (med("prom"), med("0s"), med("auto"), med("1h"));
        println!(
            "| `{q}` | {:.0} | {:.0} | {:.0} | {:.0} | {:.1}× / {:.1}× | {} | {} |",
            ms(p),
            ms(r0),
            ms(ra),
            ms(rh),
            p.as_secs_f64() / ra.as_secs_f64(),
            p.as_secs_f64() / rh.as_secs_f64(),
            errs["auto"],
            errs["1h"]
        );
    }
    stop(prom);
    stop(qy);
    stop(s);
}

fn main() {
    let orrery = orrery_for_bench();
    let work = tempfile::tempdir().expect("temp dir");
    let buckets: Vec<String> = arg_str("--buckets")
        .unwrap_or_else(|| "fs,s3".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let parts = arg_str("--parts").unwrap_or_else(|| "long,start,ds".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "orrery: {}; gateway flags: {:?}; load average at start: {}",
        orrery.display(),
        store_args(),
        load.trim()
    );
    for part in parts.split(',') {
        match part {
            "long" => long_range(&orrery, work.path(), &buckets),
            "start" => start_time(&orrery, work.path(), &buckets),
            "ds" => downsampled(&orrery, work.path()),
            other => panic!("--parts takes long, start and ds, got {other:?}"),
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at the end: {}", load.trim());
}
