//! Native histogram remote-write ingest, `orrery receive` against the reference
//! Prometheus 3.5.3 (`--web.enable-remote-write-receiver`), one after the other on the
//! same machine with the same requests (issue #20).
//!
//! The load: `--series` counter histograms (exponential schema 3, `--buckets` populated
//! buckets in two spans, counts growing unevenly), one sample per series every
//! `--step-secs` of sample time, `--rounds` rounds ending now, `--per-request` series per
//! remote-write 1.0 request. Requests are encoded and snappy-compressed before the clock
//! starts; two client threads, each owning half the series, send them in time order.
//! Reported per server: histograms/s (wall), server CPU-seconds per million histograms,
//! peak RSS, and WAL bytes per histogram on disk.
//!
//! ```text
//! cargo build --release --bin orrery && cargo build --release -p e2e --bin histogram_ingest_bench
//! target/release/histogram_ingest_bench [--series 2000] [--buckets 20] [--rounds 200] \
//!     [--per-request 2000] [--step-secs 15] [--servers orrery,prometheus,orrery,prometheus]
//! ```
//!
//! `orrery-base` in `--servers` runs a second binary (`--base-orrery PATH`), to compare
//! a change with the build before it in alternating runs.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::bench::{arg_num, arg_str, orrery_for_bench, proc_stats};
use e2e::{Proc, Prometheus, free_port, http_get, http_request, wait_for};
use prost::Message;
use storeapi::wire::prometheus::WriteRequest;
use storeapi::wire::prompb::{self, BucketSpan, Histogram, TimeSeries};
use storeapi::wire::remote_write::snappy_compress;
use storeapi::wire::thanos::Label;

/// One histogram of series `s` after `k` scrapes: cumulative counts per bucket, growing by
/// an uneven amount each scrape, delta-encoded as remote write carries them.
fn histogram(s: usize, k: u64, buckets: usize, t: i64) -> Histogram {
    let mut deltas = Vec::with_capacity(buckets);
    // The zero bucket holds `k`.
    let (mut prev, mut count) = (0i64, k);
    for b in 0..buckets as u64 {
        let rate = 1 + (s as u64 * 7 + b * 13) % 5;
        let c = k * rate + k * (b + 1) * 3 / 7;
        deltas.push(c as i64 - prev);
        prev = c as i64;
        count += c;
    }
    let half = (buckets / 2) as u32;
    Histogram {
        count: Some(prompb::histogram::Count::CountInt(count)),
        sum: count as f64 * 0.37,
        schema: 3,
        zero_threshold: 1e-128,
        zero_count: Some(prompb::histogram::ZeroCount::ZeroCountInt(k)),
        positive_spans: vec![
            BucketSpan {
                offset: 4,
                length: half,
            },
            BucketSpan {
                offset: 3,
                length: buckets as u32 - half,
            },
        ],
        positive_deltas: deltas,
        timestamp: t,
        ..Default::default()
    }
}

/// Requests per client thread, in time order: `(histograms in it, snappy body)`.
fn build_load(
    series: usize,
    buckets: usize,
    rounds: u64,
    per_request: usize,
    step_ms: i64,
) -> [Vec<(usize, Vec<u8>)>; 2] {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let t0 = now - rounds as i64 * step_ms;
    let mut out: [Vec<(usize, Vec<u8>)>; 2] = [Vec::new(), Vec::new()];
    for k in 0..rounds {
        let t = t0 + k as i64 * step_ms;
        for (chunk_no, group) in (0..series)
            .collect::<Vec<_>>()
            .chunks(per_request)
            .enumerate()
        {
            let req = WriteRequest {
                timeseries: group
                    .iter()
                    .map(|&s| TimeSeries {
                        labels: vec![
                            Label {
                                name: "__name__".into(),
                                value: "bench_request_duration_seconds".into(),
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
                        histograms: vec![histogram(s, k + 1, buckets, t)],
                        ..Default::default()
                    })
                    .collect(),
                metadata: vec![],
            };
            out[chunk_no % 2].push((group.len(), snappy_compress(&req.encode_to_vec())));
        }
    }
    out
}

/// Bytes under `dir`'s `wal/` directories.
fn wal_bytes(dir: &Path) -> u64 {
    fn walk(p: &Path, in_wal: bool) -> u64 {
        let Ok(rd) = std::fs::read_dir(p) else {
            return 0;
        };
        rd.filter_map(Result::ok)
            .map(|e| {
                let path = e.path();
                let wal = in_wal || e.file_name() == "wal";
                match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&path, wal),
                    Ok(_) if wal => e.metadata().map(|m| m.len()).unwrap_or(0),
                    _ => 0,
                }
            })
            .sum()
    }
    walk(dir, false)
}

struct Outcome {
    histograms: usize,
    wall: Duration,
    cpu_secs: f64,
    peak_rss_mib: f64,
    wal_bytes: u64,
    failed: usize,
}

fn drive(
    addr: &str,
    path: &str,
    pid: u32,
    data: &Path,
    load: &[Vec<(usize, Vec<u8>)>; 2],
) -> Outcome {
    let (_, cpu0) = proc_stats(pid).expect("server stats");
    let wal0 = wal_bytes(data);
    let start = Instant::now();
    let results: Vec<(usize, usize)> = std::thread::scope(|sc| {
        let handles: Vec<_> = load
            .iter()
            .map(|reqs| {
                sc.spawn(move || {
                    let (mut sent, mut failed) = (0usize, 0usize);
                    for (n, body) in reqs {
                        let r = http_request(
                            addr,
                            "POST",
                            path,
                            &[
                                ("Content-Type", "application/x-protobuf"),
                                ("Content-Encoding", "snappy"),
                                ("X-Prometheus-Remote-Write-Version", "0.1.0"),
                            ],
                            body,
                        );
                        match r {
                            Ok((c, _)) if (200..300).contains(&c) => sent += n,
                            Ok((c, b)) => {
                                if failed == 0 {
                                    eprintln!(
                                        "{addr}: {c} {}",
                                        b.chars().take(300).collect::<String>()
                                    );
                                }
                                failed += n
                            }
                            Err(e) => {
                                eprintln!("{addr}: {e}");
                                failed += n
                            }
                        }
                    }
                    (sent, failed)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let wall = start.elapsed();
    let (hwm, cpu1) = proc_stats(pid).expect("server stats");
    Outcome {
        histograms: results.iter().map(|r| r.0).sum(),
        failed: results.iter().map(|r| r.1).sum(),
        wall,
        cpu_secs: (cpu1 - cpu0) as f64 / 100.0,
        peak_rss_mib: hwm as f64 / 1024.0,
        wal_bytes: wal_bytes(data).saturating_sub(wal0),
    }
}

fn main() {
    let series = arg_num("--series", 2000) as usize;
    let buckets = arg_num("--buckets", 20).clamp(2, 160) as usize;
    let rounds = arg_num("--rounds", 200) as u64;
    // Prometheus's `queue_config.max_samples_per_send` default (histograms count as
    // samples), as the float `ingest_bench` sends.
    let per_request = arg_num("--per-request", 2000).max(1) as usize;
    let step_ms = arg_num("--step-secs", 15) * 1000;
    let servers = arg_str("--servers").unwrap_or_else(|| "orrery,prometheus".into());
    assert!(
        rounds as i64 * step_ms < 3_600_000,
        "rounds × step must stay under 1h (Prometheus's appendable window)"
    );
    println!(
        "{series} series × {rounds} rounds = {} histograms of {buckets} buckets, {per_request} per request",
        series as u64 * rounds
    );
    let orrery = orrery_for_bench();
    let mut rows = Vec::new();
    for server in servers.split(',') {
        let load = build_load(series, buckets, rounds, per_request, step_ms);
        let dir = tempfile::tempdir().expect("temp dir");
        let o = match server {
            "orrery" | "orrery-base" => {
                let (rw, http, grpc) = (free_port(), free_port(), free_port());
                let data = dir.path().join("data");
                let bin = if server == "orrery" {
                    orrery.clone()
                } else {
                    arg_str("--base-orrery")
                        .map(std::path::PathBuf::from)
                        .expect("orrery-base needs --base-orrery PATH")
                };
                let mut cmd = std::process::Command::new(&bin);
                cmd.arg("receive")
                    .arg(format!("--tsdb.path={}", data.display()))
                    .arg(format!("--remote-write.address=127.0.0.1:{rw}"))
                    .arg(format!("--http-address=127.0.0.1:{http}"))
                    .arg(format!("--grpc-address=127.0.0.1:{grpc}"))
                    .arg("--tsdb.wal-fsync=false")
                    .env("RUST_LOG", "warn");
                let mut p = Proc::spawn("orrery", cmd, dir.path().join("orrery.log"));
                let haddr = format!("127.0.0.1:{http}");
                let ready = wait_for(Duration::from_secs(60), || {
                    matches!(http_get(&haddr, "/-/ready"), Ok((200, _))).then_some(())
                });
                assert!(ready.is_some(), "orrery not ready: {}", p.log_text());
                let o = drive(
                    &format!("127.0.0.1:{rw}"),
                    "/api/v1/receive",
                    p.pid(),
                    &data,
                    &load,
                );
                p.terminate(Duration::from_secs(30));
                o
            }
            "prometheus" => {
                let mut p = Prometheus::start(
                    "global:\n  scrape_interval: 1h\n",
                    &[
                        "--web.enable-remote-write-receiver",
                        "--enable-feature=native-histograms",
                        "--log.level=warn",
                    ],
                );
                let data = p.dir.path().join("data");
                let o = drive(&p.addr(), "/api/v1/write", p.proc.pid(), &data, &load);
                p.proc.terminate(Duration::from_secs(30));
                o
            }
            other => panic!("unknown server {other:?} (orrery, orrery-base, prometheus)"),
        };
        assert_eq!(o.failed, 0, "{server}: {} histograms refused", o.failed);
        rows.push((server.to_string(), o));
    }
    println!(
        "\n| server | histograms/s | CPU-s per million | peak RSS MiB | WAL bytes per histogram |"
    );
    println!("|---|---|---|---|---|");
    for (s, o) in &rows {
        println!(
            "| {s} | {:.0} | {:.2} | {:.0} | {:.1} |",
            o.histograms as f64 / o.wall.as_secs_f64(),
            o.cpu_secs / (o.histograms as f64 / 1e6),
            o.peak_rss_mib,
            o.wal_bytes as f64 / o.histograms as f64
        );
    }
}
