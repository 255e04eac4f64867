//! Migration by swapping the image: the reference Prometheus 3.5.3 receives remote write
//! and is SIGKILLed with its head only in its WAL; `orrery receive` is started on that
//! data directory as a tenant directory (`<tsdb.path>/<tenant>/`, Thanos Receive's
//! layout), and also with `--tsdb.path` pointed straight at it. Orrery must refuse to
//! start with a message that says what it found and what to do, and leave every byte of
//! the directory as it was: Prometheus then still serves every sample from it.

mod receiver_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::{Proc, Prometheus, free_port, http_request, orrery_bin};
use receiver_common::{labels, prom_value, xxh64};
use storeapi::Sample;
use storeapi::wire::remote_write::encode_write_request_snappy;

const SERIES: usize = 50;
const BATCHES: i64 = 60;

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
            "orrery receive kept running on a foreign WAL; log:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = p.log_text();
    assert!(!status.success(), "orrery receive exited 0; log:\n{text}");
    text
}

#[test]
fn receiver_refuses_prometheus_wal_and_leaves_it_byte_identical() {
    let prom = Prometheus::start(
        "global:\n  scrape_interval: 1h\n",
        &["--web.enable-remote-write-receiver"],
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let base = now - BATCHES * 10_000;
    for b in 0..BATCHES {
        let series: Vec<(storeapi::Labels, Vec<Sample>)> = (0..SERIES)
            .map(|i| {
                (
                    labels(&[
                        ("__name__", "migration_test"),
                        ("series", &format!("s{i:02}")),
                    ]),
                    vec![Sample {
                        t: base + b * 10_000,
                        v: (b * 100 + i as i64) as f64,
                    }],
                )
            })
            .collect();
        let body = encode_write_request_snappy(series.iter().map(|(l, s)| (l, s.as_slice())));
        let (code, resp) = http_request(
            &prom.addr(),
            "POST",
            "/api/v1/write",
            &[
                ("Content-Type", "application/x-protobuf"),
                ("Content-Encoding", "snappy"),
                ("X-Prometheus-Remote-Write-Version", "0.1.0"),
            ],
            &body,
        )
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

    // Thanos Receive's layout: the Prometheus data dir is tenant `default-tenant`.
    let work = tempfile::tempdir().unwrap();
    let tsdb_path = work.path().join("receive");
    std::fs::create_dir_all(&tsdb_path).unwrap();
    let tenant = tsdb_path.join("default-tenant");
    std::fs::rename(&data, &tenant).unwrap();
    let before = snapshot(&tsdb_path);
    println!(
        "prometheus data dir as tenant: {} files, wal/00000000 = {seg_len} bytes",
        before.len()
    );

    let log = receive_must_refuse(&tsdb_path, &work.path().join("receive1.log"));
    println!("orrery receive (tenant layout) said:\n{log}");
    for want in [
        "not an Orrery write-ahead log",
        "Prometheus WAL record",
        "default-tenant/wal/00000000",
        "changed nothing",
        "a later one will",
        "snapshot",
    ] {
        assert!(log.contains(want), "log lacks {want:?}:\n{log}");
    }
    assert!(
        !log.contains("truncating") && !log.contains("cutting off"),
        "{log}"
    );
    assert_eq!(snapshot(&tsdb_path), before, "the tenant directory changed");

    // `--tsdb.path` pointed straight at the Prometheus data directory.
    let before_single = snapshot(&tenant);
    let log = receive_must_refuse(&tenant, &work.path().join("receive2.log"));
    println!("orrery receive (--tsdb.path = prometheus dir) said:\n{log}");
    assert!(log.contains("single TSDB directory"), "{log}");
    assert_eq!(
        snapshot(&tenant),
        before_single,
        "the data directory changed"
    );

    // The reference Prometheus still finds every sample in it.
    let prom2 = Prometheus::start_prepared("global:\n  scrape_interval: 1h\n", &[], |d| {
        std::fs::rename(&tenant, d).unwrap()
    });
    assert_eq!(
        prom_value(&prom2.addr(), q),
        Some(written),
        "prometheus lost samples after orrery looked at its directory"
    );
}
