//! Compaction and downsampling throughput of `orrery compact` on a FILESYSTEM bucket:
//! wall time, CPU seconds (user + system of the compactor process), peak RSS.
//!
//! ```sh
//! cargo build --release --bin orrery --bin compact_bench
//! target/release/compact_bench [--series 500] [--hours 50] [--step 15] [--vs-prometheus 1]
//!     [--histograms 1]
//! ```
//!
//! The bucket: `--hours` of 2h blocks (as a receiver uploads them) holding `--series`
//! series (half counters, half gauges) with a sample every `--step` seconds. Run 1
//! (`--downsampling.disable`) compacts `[0, 48h)` 2h → 8h → 2d (the newest block is held
//! back, as Thanos plans); run 2 downsamples the 2d block to 5m. Figures are per run,
//! for the samples of `[0, 48h)`; CPU and RSS are read from `/proc/<pid>` every 10 ms.
//! `--histograms 1` makes the counters native histograms (integer, schema 3, 12
//! populated buckets shifting over time, as Prometheus's chunks), so the runs measure
//! histogram compaction and histogram downsampling.
//!
//! `--vs-prometheus 1` also hands the same 2h blocks to Prometheus 3.5.3 (its data dir,
//! `--storage.tsdb.max-block-duration=2d`, no scraping) and times its own compaction
//! (2h → 6h → 18h: its ranges, not Thanos's, but the same two rewrites of every sample
//! of `[0, 48h)` minus what its newest 18h range leaves at 6h), from the first compaction
//! output it creates until its block directories stop changing; CPU from `/proc`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::Prometheus;
use e2e::bench::{arg_num, orrery_for_bench, proc_stats, xor_chunks};
use objstore::{Bucket, BucketConfig};
use storeapi::histogram::{Histogram, Span};
use storeapi::{Label, Labels};
use tsdb::block::{BlockOptions, BlockWriter};
use tsdb::chunk::{Chunk, SeriesEncoder};

const H: i64 = 3_600_000;

struct Run {
    wall: Duration,
    cpu_s: f64,
    peak_rss_mib: f64,
}

fn run_compactor(yaml: &str, data_dir: &Path, extra: &[&str], log: &Path) -> Run {
    let mut cmd = Command::new(orrery_for_bench());
    cmd.arg("compact")
        .arg(format!("--objstore.config={yaml}"))
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg("--consistency-delay=0s")
        .arg("--http-address=127.0.0.1:0")
        .args(extra)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).expect("log"))
        .stderr(std::fs::File::create(log.with_extension("err")).expect("log"));
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start orrery compact");
    let (mut hwm, mut ticks) = (0u64, 0u64);
    let status = loop {
        if let Some((h, t)) = proc_stats(child.id()) {
            hwm = hwm.max(h);
            ticks = ticks.max(t);
        }
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let wall = started.elapsed();
    assert!(
        status.success(),
        "orrery compact failed; see {}",
        log.display()
    );
    Run {
        wall,
        cpu_s: ticks as f64 / 100.0,
        peak_rss_mib: hwm as f64 / 1024.0,
    }
}

/// Block directories (ULIDs) and temporary compaction outputs in a Prometheus data dir.
fn prom_dirs(data: &Path) -> (Vec<String>, usize) {
    let mut blocks = Vec::new();
    let mut tmp = 0;
    if let Ok(rd) = std::fs::read_dir(data) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".tmp-for-creation") || name.ends_with(".tmp-for-deletion") {
                tmp += 1;
            } else if name.len() == 26 && e.path().join("meta.json").exists() {
                blocks.push(name);
            }
        }
    }
    blocks.sort();
    (blocks, tmp)
}

/// Starts Prometheus on `blocks` (moved into its data dir) and times its compaction.
fn run_prometheus(blocks: &Path) -> (Run, usize, usize) {
    let prom = Prometheus::start_prepared(
        "global:\n  scrape_interval: 1h\n",
        &[
            "--storage.tsdb.retention.time=100y",
            "--storage.tsdb.min-block-duration=2h",
            "--storage.tsdb.max-block-duration=2d",
        ],
        |data| {
            std::fs::create_dir_all(data).expect("prometheus data dir");
            for e in std::fs::read_dir(blocks).expect("blocks").flatten() {
                std::fs::rename(e.path(), data.join(e.file_name())).expect("move block");
            }
        },
    );
    let data = prom.dir.path().join("data");
    let pid = prom.proc.child.id();
    let (initial, _) = prom_dirs(&data);
    // Its first compaction starts about a minute after opening the DB.
    let deadline = Instant::now() + Duration::from_secs(180);
    let (started, ticks0) = loop {
        let (b, tmp) = prom_dirs(&data);
        if tmp > 0 || b != initial {
            let t = proc_stats(pid).map_or(0, |(_, t)| t);
            break (Instant::now(), t);
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not compact within 3 minutes; log:\n{}",
            prom.proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    // Done when nothing changed for 3 s (no temporary dirs, same blocks).
    let mut last = prom_dirs(&data);
    let mut last_change = Instant::now();
    let mut hwm = 0u64;
    let mut ticks = ticks0;
    // CPU after the last change belongs to idling, not compacting: the ticks at it count.
    let mut ticks_at_change = ticks0;
    while last_change.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(10));
        if let Some((h, t)) = proc_stats(pid) {
            hwm = hwm.max(h);
            ticks = ticks.max(t);
        }
        let now = prom_dirs(&data);
        if now != last {
            last = now;
            last_change = Instant::now();
            ticks_at_change = ticks;
        }
    }
    let finished = last_change;
    let ticks = ticks_at_change;
    (
        Run {
            wall: finished - started,
            cpu_s: ticks.saturating_sub(ticks0) as f64 / 100.0,
            peak_rss_mib: hwm as f64 / 1024.0,
        },
        initial.len(),
        last.0.len(),
    )
}

/// Series `i`'s integer histogram counter at step `k`: 12 buckets from an offset that
/// moves every 2h (new buckets appear, as latencies drift), counts growing with `k`.
fn histogram_at(i: usize, k: i64, step: i64) -> Histogram {
    let shift = (k * step / (2 * H)) as i32 % 4;
    let abs: Vec<i64> = (0..12).map(|b| k * (b % 5 + 1) + i as i64 % 3).collect();
    let mut last = 0;
    let deltas = abs
        .iter()
        .map(|&c| {
            let d = c - last;
            last = c;
            d
        })
        .collect();
    Histogram {
        schema: 3,
        zero_threshold: 1e-128,
        zero_count: k as u64,
        count: k as u64 + abs.iter().sum::<i64>() as u64,
        sum: k as f64 * 1.25,
        positive_spans: vec![Span {
            offset: -4 + shift,
            length: 12,
        }],
        positive_buckets: deltas,
        ..Default::default()
    }
}

fn histogram_chunks(i: usize, mint: i64, maxt: i64, t0: i64, step: i64) -> Vec<Chunk> {
    let mut e = SeriesEncoder::new();
    for t in (mint..maxt).step_by(step as usize) {
        e.append_histogram(t, &histogram_at(i, (t - t0) / step, step))
            .expect("append histogram");
    }
    e.finish()
}

fn main() {
    let series = arg_num("--series", 500) as usize;
    let hours = arg_num("--hours", 50);
    let step = arg_num("--step", 15) * 1000;
    let vs_prometheus = arg_num("--vs-prometheus", 0) != 0;
    let histograms = arg_num("--histograms", 0) != 0;
    assert!(
        hours >= 50,
        "--hours must be at least 50 (a 2d block plus the held-back newest)"
    );
    let t0 = (1_700_000_000_000 / (48 * H)) * 48 * H;
    let dir = tempfile::tempdir().expect("temp dir");
    let bucket_dir = dir.path().join("bucket");
    std::fs::create_dir_all(&bucket_dir).expect("mkdir");
    let yaml = format!(
        "type: FILESYSTEM\nconfig:\n  directory: {}\n",
        bucket_dir.display()
    );
    let bucket = Bucket::new(&BucketConfig::parse(&yaml).expect("config"), None).expect("bucket");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut labels: Vec<Labels> = (0..series)
        .map(|i| {
            let name = if i % 2 == 0 {
                "bench_requests_total"
            } else {
                "bench_temperature"
            };
            Labels::from_sorted_unchecked(vec![
                Label::new("__name__", name),
                Label::new("instance", format!("host-{}", i % 50)),
                Label::new("series", i.to_string()),
            ])
        })
        .collect();
    labels.sort();
    let ext = BTreeMap::from([("tenant_id".to_string(), "bench".to_string())]);
    let local = dir.path().join("local");
    let prom_blocks = dir.path().join("prometheus-blocks");
    std::fs::create_dir_all(&prom_blocks).expect("mkdir");
    let generated = Instant::now();
    let mut in_range = 0u64;
    for w in 0..hours / 2 {
        let (mint, maxt) = (t0 + w * 2 * H, t0 + (w + 1) * 2 * H);
        let mut n = 0u64;
        let it = labels.iter().enumerate().map(|(i, l)| {
            if histograms && i % 2 == 0 {
                n += ((maxt - mint) / step) as u64;
                return (l.clone(), histogram_chunks(i, mint, maxt, t0, step));
            }
            let samples: Vec<(i64, f64)> = (mint..maxt)
                .step_by(step as usize)
                .map(|t| {
                    let k = (t - t0) / step;
                    let v = if i % 2 == 0 {
                        (k * (i as i64 % 7 + 1) + k % 13) as f64
                    } else {
                        ((k * 31 + i as i64) % 4000) as f64 / 8.0
                    };
                    (t, v)
                })
                .collect();
            n += samples.len() as u64;
            (l.clone(), xor_chunks(&samples))
        });
        let meta =
            BlockWriter::write(&local, mint, maxt, it, &BlockOptions::default()).expect("write");
        if maxt <= t0 + 48 * H {
            in_range += n;
        }
        let bd = local.join(meta.ulid.to_string());
        rt.block_on(objstore::block::upload_block(&bucket, &bd, &ext, "receive"))
            .expect("upload");
        if vs_prometheus {
            std::fs::rename(&bd, prom_blocks.join(meta.ulid.to_string())).expect("keep block");
        } else {
            std::fs::remove_dir_all(&bd).expect("rm");
        }
    }
    eprintln!(
        "generated {} blocks in {:?}",
        hours / 2,
        generated.elapsed()
    );
    let data_dir = dir.path().join("compact-data");
    let compaction = run_compactor(
        &yaml,
        &data_dir,
        &["--downsampling.disable"],
        &dir.path().join("compact.log"),
    );
    let downsampling = run_compactor(&yaml, &data_dir, &[], &dir.path().join("downsample.log"));
    let d = rt
        .block_on(objstore::discovery::MetaFetcher::new(bucket.clone(), None).fetch())
        .expect("discover");
    let five = d
        .blocks
        .values()
        .filter(|b| b.resolution() == 300_000)
        .count();
    assert_eq!(five, 1, "expected one 5m block");
    let prom = vs_prometheus.then(|| run_prometheus(&prom_blocks));
    println!(
        "{series} series{}, {step_s}s step, {hours}h of 2h blocks; {in_range} samples in [0, 48h)",
        if histograms {
            " (half native histogram counters)"
        } else {
            ""
        },
        step_s = step / 1000
    );
    println!("| run | wall s | samples/s | CPU s | CPU s / 1M samples | peak RSS MiB |");
    println!("|---|---|---|---|---|---|");
    for (name, r) in [
        ("compaction 2h→8h→2d", &compaction),
        ("downsampling 2d raw→5m", &downsampling),
    ] {
        println!(
            "| {name} | {:.2} | {:.0} | {:.2} | {:.3} | {:.1} |",
            r.wall.as_secs_f64(),
            in_range as f64 / r.wall.as_secs_f64(),
            r.cpu_s,
            r.cpu_s / (in_range as f64 / 1e6),
            r.peak_rss_mib
        );
    }
    if let Some((r, before, after)) = prom {
        println!(
            "| Prometheus 3.5.3 compaction 2h→6h→18h ({before} → {after} blocks) | {:.2} | {:.0} | {:.2} | {:.3} | {:.1} (whole server) |",
            r.wall.as_secs_f64(),
            in_range as f64 / r.wall.as_secs_f64(),
            r.cpu_s,
            r.cpu_s / (in_range as f64 / 1e6),
            r.peak_rss_mib
        );
        println!(
            "orrery / Prometheus: wall {:.2}×, CPU {:.2}×",
            compaction.wall.as_secs_f64() / r.wall.as_secs_f64(),
            compaction.cpu_s / r.cpu_s.max(0.01)
        );
    }
}
