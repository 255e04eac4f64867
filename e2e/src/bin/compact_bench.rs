//! Compaction and downsampling throughput of `orrery compact` on a FILESYSTEM bucket:
//! wall time, CPU seconds (user + system of the compactor process), peak RSS.
//!
//! ```sh
//! cargo build --release --bin orrery --bin compact_bench
//! target/release/compact_bench [--series 500] [--hours 50] [--step 15]
//! ```
//!
//! The bucket: `--hours` of 2h blocks (as a receiver uploads them) holding `--series`
//! series (half counters, half gauges) with a sample every `--step` seconds. Run 1
//! (`--downsampling.disable`) compacts `[0, 48h)` 2h → 8h → 2d (the newest block is held
//! back, as Thanos plans); run 2 downsamples the 2d block to 5m. Figures are per run,
//! for the samples of `[0, 48h)`; CPU and RSS are read from `/proc/<pid>` every 10 ms.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::bench::{arg_num, orrery_for_bench, proc_stats, xor_chunks};
use objstore::{Bucket, BucketConfig};
use storeapi::{Label, Labels};
use tsdb::block::{BlockOptions, BlockWriter};

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

fn main() {
    let series = arg_num("--series", 500) as usize;
    let hours = arg_num("--hours", 50);
    let step = arg_num("--step", 15) * 1000;
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
    let generated = Instant::now();
    let mut in_range = 0u64;
    for w in 0..hours / 2 {
        let (mint, maxt) = (t0 + w * 2 * H, t0 + (w + 1) * 2 * H);
        let mut n = 0u64;
        let it = labels.iter().enumerate().map(|(i, l)| {
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
        std::fs::remove_dir_all(&bd).expect("rm");
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
    println!(
        "{series} series, {step_s}s step, {hours}h of 2h blocks; {in_range} samples in [0, 48h)",
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
}
