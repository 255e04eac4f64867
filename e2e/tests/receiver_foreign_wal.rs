//! Migration both ways by swapping the image (issue #18):
//! - the reference Prometheus 3.5.3 receives remote write and is SIGKILLed with its head
//!   only in its WAL (and `chunks_head/`); `orrery receive` is started on that data
//!   directory as a tenant directory (`<tsdb.path>/<tenant>/`, Thanos Receive's layout)
//!   and serves every sample, compared sample by sample over the StoreAPI;
//! - Orrery then ingests more and is SIGKILLed mid-stream; `promtool tsdb dump` and
//!   Prometheus 3.5.3 started on the tenant directory return every acknowledged sample,
//!   Prometheus's and Orrery's.
//!
//! `--tsdb.path` pointed straight at a Prometheus data directory is still refused as a
//! layout mistake, with every byte left as it was. A zstd-compressed Prometheus WAL is
//! replayed too, and a real Prometheus WAL with a torn last record is repaired as
//! Prometheus 3.5.3 repairs it (same samples kept).

mod receiver_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::{Proc, Prometheus, free_port, orrery_bin, promtool_bin, remote_write};
use receiver_common::{Receiver, eq, labels, prom_value, series, xxh64};
use storeapi::Sample;

const SERIES: usize = 50;
const BATCHES: i64 = 60;
/// Batches Orrery ingests after the migration, before it is SIGKILLed.
const ORRERY_BATCHES: i64 = 40;
const STEP: i64 = 10_000;

/// Every file and directory under `root`: relative path → (size, xxh64 of contents).
fn snapshot(root: &Path) -> BTreeMap<String, (u64, u64)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u64, u64)>) {
        for e in std::fs::read_dir(dir).expect("read dir") {
            let e = e.expect("dir entry");
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                out.insert(format!("{rel}/"), (0, 0));
                walk(root, &p, out);
            } else {
                let data = std::fs::read(&p).expect("read file");
                out.insert(rel, (data.len() as u64, xxh64(&data, 0)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Runs `orrery receive --tsdb.path=<tsdb_path>`; expects it to exit on its own (non-zero)
/// within 30 s; returns its log.
fn receive_must_refuse(tsdb_path: &Path, log: &Path) -> String {
    let mut cmd = Command::new(orrery_bin());
    cmd.arg("receive")
        .arg(format!("--tsdb.path={}", tsdb_path.display()))
        .arg(format!("--remote-write.address=127.0.0.1:{}", free_port()))
        .arg(format!("--grpc-address=127.0.0.1:{}", free_port()))
        .arg(format!("--http-address=127.0.0.1:{}", free_port()))
        .env("RUST_LOG", "info");
    let mut p = Proc::spawn("orrery-receive", cmd, log.to_path_buf());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(st)) = p.child.try_wait() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "orrery receive kept running on a data directory it must refuse; log:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = p.log_text();
    assert!(!status.success(), "orrery receive exited 0; log:\n{text}");
    text
}

fn batch(b: i64, base: i64) -> Vec<(storeapi::Labels, Vec<Sample>)> {
    (0..SERIES)
        .map(|i| {
            (
                labels(&[
                    ("__name__", "migration_test"),
                    ("series", &format!("s{i:02}")),
                ]),
                vec![Sample {
                    t: base + b * STEP,
                    v: (b * 100 + i as i64) as f64 + 0.25,
                }],
            )
        })
        .collect()
}

/// Expected samples per series key (as `promtool tsdb dump` prints labels) for batches
/// `0..n`.
fn expected(n: i64, base: i64) -> BTreeMap<String, Vec<(i64, f64)>> {
    let mut m: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for b in 0..n {
        for (l, s) in batch(b, base) {
            let key = format!(
                "{{__name__=\"migration_test\", series=\"{}\"}}",
                l.get("series").unwrap_or_default()
            );
            m.entry(key)
                .or_default()
                .extend(s.iter().map(|x| (x.t, x.v)));
        }
    }
    m
}

/// Every `migration_test` sample Orrery serves over the StoreAPI, keyed like `expected`.
fn served(grpc: &str) -> BTreeMap<String, Vec<(i64, f64)>> {
    let got = series(
        grpc,
        vec![eq("__name__", "migration_test")],
        i64::MIN,
        i64::MAX,
    )
    .expect("Series");
    got.into_iter()
        .map(|(l, s)| {
            (
                format!(
                    "{{__name__=\"migration_test\", series=\"{}\"}}",
                    l.get("series").unwrap_or_default()
                ),
                s,
            )
        })
        .collect()
}

/// Prometheus 3.5.3 (started with `flags` too) takes `BATCHES` batches of remote write
/// and is SIGKILLed with its head only in its WAL. Returns its temp dir (kept alive), the
/// data directory and the batches' base timestamp.
fn prometheus_killed_with_its_head_in_the_wal(
    flags: &[&str],
) -> (tempfile::TempDir, std::path::PathBuf, i64) {
    let mut args = vec!["--web.enable-remote-write-receiver"];
    args.extend_from_slice(flags);
    let prom = Prometheus::start("global:\n  scrape_interval: 1h\n", &args);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let base = now - (BATCHES + ORRERY_BATCHES) * STEP;
    for b in 0..BATCHES {
        let series = batch(b, base);
        let (code, resp) = remote_write(&prom.addr(), "/api/v1/write", &series, &[])
            .expect("remote write to prometheus");
        assert!(
            code == 204 || code == 200,
            "prometheus remote write: {code} {resp}"
        );
    }
    let written = (SERIES as i64 * BATCHES) as f64;
    let q = "sum(count_over_time(migration_test[1h]))";
    assert_eq!(prom_value(&prom.addr(), q), Some(written));

    // SIGKILL: the samples are only in the WAL (no block was cut).
    let Prometheus {
        mut proc,
        dir: pdir,
        ..
    } = prom;
    proc.kill();
    let data = pdir.path().join("data");
    let seg = data.join("wal/00000000");
    let seg_len = std::fs::metadata(&seg).map(|m| m.len()).unwrap_or(0);
    assert!(seg_len > 0, "prometheus wrote no WAL segment");
    let blocks = std::fs::read_dir(&data)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_str().is_some_and(|n| n.len() == 26))
        })
        .count();
    assert_eq!(blocks, 0, "the head must be in the WAL only");

    (pdir, data, base)
}

/// Orrery on the tenant layout serves every sample Prometheus acknowledged, compared
/// sample by sample; it repaired nothing.
fn assert_serves_every_prometheus_sample(r: &Receiver, base: i64) {
    assert_serves_batches(r, BATCHES, base);
    let log = r.proc.log_text();
    assert!(
        !log.contains("truncating") && !log.contains("cutting off") && !log.contains("WAL damage"),
        "{log}"
    );
}

/// Orrery serves exactly the first `batches` batches, sample by sample.
fn assert_serves_batches(r: &Receiver, batches: i64, base: i64) {
    let want = expected(batches, base);
    let got = served(&r.grpc);
    assert_eq!(got.len(), SERIES, "log:\n{}", r.proc.log_text());
    for (k, w) in &want {
        let g = got.get(k).unwrap_or_else(|| panic!("{k} not served"));
        assert_eq!(g.len(), w.len(), "{k}");
        for (a, b) in g.iter().zip(w) {
            assert_eq!(a.0, b.0, "{k}");
            assert_eq!(a.1.to_bits(), b.1.to_bits(), "{k} at {}", a.0);
        }
    }
}

/// The last record of a real Prometheus WAL torn (the segment cut 5 bytes short, as a
/// crash mid-write leaves it): Orrery cuts the torn record off and serves every sample
/// before it, and Prometheus 3.5.3 started on a copy of the same bytes answers the same
/// count: both repair a torn tail the same way.
#[test]
fn torn_tail_of_a_prometheus_wal_is_repaired_as_prometheus_repairs_it() {
    let (_pdir, data, base) = prometheus_killed_with_its_head_in_the_wal(&[]);
    let seg = data.join("wal/00000000");
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let copy = tempfile::tempdir().unwrap();
    let copy_data = copy.path().join("data");
    let out = Command::new("cp")
        .arg("-a")
        .arg(&data)
        .arg(&copy_data)
        .output()
        .expect("cp");
    assert!(out.status.success());

    let work = tempfile::tempdir().unwrap();
    let tsdb_path = work.path().join("receive");
    std::fs::create_dir_all(&tsdb_path).unwrap();
    std::fs::rename(&data, tsdb_path.join("default-tenant")).unwrap();
    let r = Receiver::start(&tsdb_path, &work.path().join("receive.log"), &[]);
    assert_serves_batches(&r, BATCHES - 1, base);
    let log = r.proc.log_text();
    assert!(log.contains("torn WAL tail"), "{log}");

    let prom = Prometheus::start_prepared("global:\n  scrape_interval: 1h\n", &[], |d| {
        std::fs::rename(&copy_data, d).unwrap()
    });
    let q = "sum(count_over_time(migration_test[2h]))";
    assert_eq!(
        prom_value(&prom.addr(), q),
        Some((SERIES as i64 * (BATCHES - 1)) as f64),
        "Prometheus 3.5.3 on the same torn WAL"
    );
}

/// Prometheus started with `--storage.tsdb.wal-compression-type=zstd` writes zstd
/// records; Orrery replays them.
#[test]
fn receiver_serves_a_zstd_compressed_prometheus_wal() {
    let (_pdir, data, base) =
        prometheus_killed_with_its_head_in_the_wal(&["--storage.tsdb.wal-compression-type=zstd"]);
    let seg = std::fs::read(data.join("wal/00000000")).expect("prometheus WAL segment");
    assert_eq!(
        seg[0] & 0x18,
        0x10,
        "Prometheus's first record is zstd-flagged"
    );
    let work = tempfile::tempdir().unwrap();
    let tsdb_path = work.path().join("receive");
    std::fs::create_dir_all(&tsdb_path).unwrap();
    std::fs::rename(&data, tsdb_path.join("default-tenant")).unwrap();
    let r = Receiver::start(&tsdb_path, &work.path().join("receive.log"), &[]);
    assert_serves_every_prometheus_sample(&r, base);
}

#[test]
fn receiver_serves_prometheus_wal_and_prometheus_reads_orrery_wal() {
    let (_pdir, data, base) = prometheus_killed_with_its_head_in_the_wal(&[]);

    // Thanos Receive's layout: the Prometheus data dir is tenant `default-tenant`.
    let work = tempfile::tempdir().unwrap();
    let tsdb_path = work.path().join("receive");
    std::fs::create_dir_all(&tsdb_path).unwrap();
    let tenant = tsdb_path.join("default-tenant");
    std::fs::rename(&data, &tenant).unwrap();

    // `--tsdb.path` pointed straight at the Prometheus data directory: a layout mistake.
    let before_single = snapshot(&tenant);
    let log = receive_must_refuse(&tenant, &work.path().join("receive-single.log"));
    println!("orrery receive (--tsdb.path = prometheus dir) said:\n{log}");
    assert!(log.contains("single TSDB directory"), "{log}");
    assert_eq!(
        snapshot(&tenant),
        before_single,
        "the data directory changed"
    );

    // Orrery on the tenant layout serves every sample Prometheus acknowledged.
    let r = Receiver::start(&tsdb_path, &work.path().join("receive.log"), &[]);
    assert_serves_every_prometheus_sample(&r, base);

    // Orrery ingests on, each batch acknowledged, and is SIGKILLed.
    for b in BATCHES..BATCHES + ORRERY_BATCHES {
        let (code, resp) = r.write(&batch(b, base));
        assert!(
            code == 200 || code == 204,
            "orrery remote write: {code} {resp}"
        );
    }
    let Receiver { mut proc, .. } = r;
    proc.kill();
    let want = expected(BATCHES + ORRERY_BATCHES, base);

    // promtool reads the tenant directory: Prometheus's WAL and Orrery's segments.
    let out = Command::new(promtool_bin())
        .args(["tsdb", "dump"])
        .arg(&tenant)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool tsdb dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dumped = e2e::parse_promtool_dump(&String::from_utf8_lossy(&out.stdout));
    let dumped: BTreeMap<String, Vec<(i64, f64)>> = dumped
        .into_iter()
        .filter(|(k, _)| k.contains("migration_test"))
        .collect();
    assert_eq!(dumped, want, "promtool tsdb dump of the tenant directory");

    // Prometheus started on the tenant directory finds every acknowledged sample.
    let prom2 = Prometheus::start_prepared("global:\n  scrape_interval: 1h\n", &[], |d| {
        std::fs::rename(&tenant, d).unwrap()
    });
    let all = (SERIES as i64 * (BATCHES + ORRERY_BATCHES)) as f64;
    let q = "sum(count_over_time(migration_test[2h]))";
    assert_eq!(
        prom_value(&prom2.addr(), q),
        Some(all),
        "prometheus on orrery's WAL; log:\n{}",
        prom2.proc.log_text()
    );
    let total: f64 = want.values().flatten().map(|s| s.1).sum();
    let q = "sum(sum_over_time(migration_test[2h]))";
    assert_eq!(prom_value(&prom2.addr(), q), Some(total));
}

/// Prometheus 3.5.3's own WAL checkpoint is replayed (issue #18): with 5-minute blocks
/// Prometheus compacts its head four times while taking remote write over 26 minutes of
/// sample time, and at the fourth compaction writes `wal/checkpoint.00000001/` (series
/// still in the head; segments 0 and 1 deleted). The `ckpt_early` series were created in
/// segment 0, so their series records now exist only in the checkpoint, while their
/// newest samples sit in the later segments; `ckpt_gone` stopped early (blocks only);
/// `ckpt_late` began after the checkpoint. Prometheus is SIGKILLed; `orrery receive` on
/// the data dir (as tenant `default-tenant`) serves exactly what Prometheus served.
#[test]
fn receiver_replays_a_prometheus_checkpoint() {
    const R: i64 = 300_000; // block range
    const S: i64 = 30_000; // sample step
    const STEPS: i64 = 53; // 0..=26 minutes
    let name = |kind: &str, i: usize| format!("ckpt_{kind}_{i}");
    let batch = |k: i64, t: i64| -> Vec<(storeapi::Labels, Vec<Sample>)> {
        let mut out = Vec::new();
        for i in 0..5 {
            out.push((name("early", i), k * 10 + i as i64));
        }
        if k < 8 {
            for i in 0..2 {
                out.push((name("gone", i), k * 100 + i as i64));
            }
        }
        if k >= 44 {
            for i in 0..2 {
                out.push((name("late", i), k * 1000 + i as i64));
            }
        }
        out.into_iter()
            .map(|(s, v)| {
                (
                    labels(&[("__name__", "ckpt_test"), ("series", &s)]),
                    vec![Sample {
                        t,
                        v: v as f64 + 0.5,
                    }],
                )
            })
            .collect()
    };
    let prom = Prometheus::start(
        "global:\n  scrape_interval: 1h\n",
        &[
            "--web.enable-remote-write-receiver",
            "--storage.tsdb.min-block-duration=5m",
            "--storage.tsdb.max-block-duration=5m",
            // Uncompressed records: the test finds series names in the files below.
            "--no-storage.tsdb.wal-compression",
        ],
    );
    let data = prom.dir.path().join("data");
    let blocks_on_disk = || {
        std::fs::read_dir(&data)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_str().is_some_and(|n| n.len() == 26))
                    .count()
            })
            .unwrap_or(0)
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let base = (now - 40 * 60_000).div_euclid(R) * R;
    // Prometheus's head: compactable once it spans more than 1.5 block ranges; each
    // compaction (one per commit that makes it so) starts a new WAL segment. Each is
    // awaited, so that every one is its own compaction run and segment.
    let (mut head_min, mut expected_blocks) = (base, 0usize);
    for k in 0..STEPS {
        let t = base + k * S;
        let series = batch(k, t);
        let (code, resp) = remote_write(&prom.addr(), "/api/v1/write", &series, &[])
            .expect("remote write to prometheus");
        assert!(
            code == 204 || code == 200,
            "prometheus remote write: {code} {resp}"
        );
        while t - head_min > R / 2 * 3 {
            head_min += R;
            expected_blocks += 1;
        }
        let cut = e2e::wait_for(Duration::from_secs(20), || {
            (blocks_on_disk() >= expected_blocks).then_some(())
        });
        assert!(
            cut.is_some(),
            "prometheus cut {} blocks, expected {expected_blocks}; log:\n{}",
            blocks_on_disk(),
            prom.proc.log_text()
        );
    }
    assert_eq!(expected_blocks, 4);
    let ckpt = data.join("wal/checkpoint.00000001");
    let ok = e2e::wait_for(Duration::from_secs(20), || ckpt.is_dir().then_some(()));
    assert!(
        ok.is_some(),
        "prometheus wrote no checkpoint: {:?}; log:\n{}",
        std::fs::read_dir(data.join("wal"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
            .unwrap_or_default(),
        prom.proc.log_text()
    );

    // What Prometheus serves: every sample of the last hour, blocks and head.
    let at = (base + STEPS * S) as f64 / 1000.0;
    let answer = receiver_common::prom_query(&prom.addr(), "ckpt_test[1h]", Some(at));
    let mut served_by_prometheus: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for r in answer["data"]["result"].as_array().expect("matrix") {
        let s = r["metric"]["series"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let v: Vec<(i64, f64)> = r["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(|p| {
                (
                    (p[0].as_f64().unwrap() * 1000.0).round() as i64,
                    p[1].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect();
        served_by_prometheus.insert(s, v);
    }
    // ... which is what was written.
    let mut written: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for k in 0..STEPS {
        for (l, s) in batch(k, base + k * S) {
            let key = l.get("series").unwrap_or_default().to_string();
            written.entry(key).or_default().push((s[0].t, s[0].v));
        }
    }
    assert_eq!(served_by_prometheus, written);

    // SIGKILL. The checkpoint and the segments left after it are the head.
    let Prometheus {
        mut proc,
        dir: pdir,
        ..
    } = prom;
    proc.kill();
    let wal = data.join("wal");
    let mut segments: Vec<String> = std::fs::read_dir(&wal)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    segments.sort();
    assert_eq!(
        segments.first().map(String::as_str),
        Some("00000002"),
        "{segments:?}"
    );
    let contains = |p: &Path, needle: &str| {
        let b = std::fs::read(p).unwrap();
        b.windows(needle.len()).any(|w| w == needle.as_bytes())
    };
    let ckpt_files: Vec<std::path::PathBuf> = std::fs::read_dir(&ckpt)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(!ckpt_files.is_empty());
    assert!(
        ckpt_files.iter().any(|p| contains(p, &name("early", 0))),
        "the early series' record is in the checkpoint"
    );
    assert!(
        !ckpt_files.iter().any(|p| contains(p, &name("gone", 0))),
        "series that left the head are not checkpointed"
    );
    for s in &segments {
        let p = wal.join(s);
        assert!(
            !contains(&p, &name("early", 0)),
            "segment {s} also holds the early series' record: the checkpoint would not be needed"
        );
    }
    assert!(
        segments
            .iter()
            .any(|s| contains(&wal.join(s), &name("late", 0)))
    );

    let work = tempfile::tempdir().unwrap();
    let tsdb_path = work.path().join("receive");
    std::fs::create_dir_all(&tsdb_path).unwrap();
    std::fs::rename(&data, tsdb_path.join("default-tenant")).unwrap();
    drop(pdir);
    let r = Receiver::start(&tsdb_path, &work.path().join("receive.log"), &[]);
    let got: BTreeMap<String, Vec<(i64, f64)>> = series(
        &r.grpc,
        vec![eq("__name__", "ckpt_test")],
        i64::MIN,
        i64::MAX,
    )
    .expect("Series")
    .into_iter()
    .map(|(l, s)| (l.get("series").unwrap_or_default().to_string(), s))
    .collect();
    let log = r.proc.log_text();
    assert_eq!(got, served_by_prometheus, "log:\n{log}");
    // The head's part: the early series' samples after the last block, whose series
    // records only the checkpoint holds.
    let head_from = base + 4 * R;
    let early_in_head = got[&name("early", 0)]
        .iter()
        .filter(|(t, _)| *t >= head_from)
        .count();
    assert_eq!(early_in_head as i64, (STEPS * S - 4 * R) / S, "{log}");
    assert!(
        !log.contains("truncating") && !log.contains("cutting off") && !log.contains("WAL damage"),
        "{log}"
    );
}
