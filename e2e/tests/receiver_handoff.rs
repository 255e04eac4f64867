//! Hashring hand-off with a REAL S3 server (moto): two `orrery receive` router+ingestors
//! share a hashring file; tenant `t1` is placed on A alone. A writer sends `t1`'s samples
//! to A without pause while the file is changed so that `t1` moves to B. Then:
//!
//! - A flushes `t1`'s head into a block and ships it: every sample acknowledged before
//!   the change is in A's uploaded blocks (read back by the reference `promtool tsdb
//!   dump`), with `t1`'s external labels; A counts one hand-off round
//!   (`thanos_receive_multi_db_updates_{attempted,completed}_total`);
//! - every write succeeded (status 200), before, during and after the change;
//! - no acknowledged sample is lost: each is in A's uploaded blocks, A's head or B;
//! - writes after the hand-off reach B (routed by A), not A;
//! - tenant `t2`, which stays on B, is not flushed on B.

mod receiver_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::s3::MotoServer;
use e2e::{Proc, free_port, http_get, orrery_bin, promtool_bin, wait_for};
use receiver_common::{eq, labels, series};
use storeapi::Sample;

const BUCKET: &str = "handoff";
const SERIES: usize = 8;

struct Node {
    grpc: String,
    rw: String,
    http: String,
    proc: Proc,
}

impl Node {
    fn start_on(
        name: &str,
        dir: &Path,
        ring: &Path,
        objstore: &str,
        grpc: String,
        rw: String,
        http: String,
    ) -> Node {
        let mut cmd = Command::new(orrery_bin());
        cmd.arg("receive")
            .arg(format!("--tsdb.path={}", dir.join(name).display()))
            .arg(format!("--remote-write.address={rw}"))
            .arg(format!("--grpc-address={grpc}"))
            .arg(format!("--http-address={http}"))
            .arg(format!("--receive.hashrings-file={}", ring.display()))
            .arg("--receive.hashrings-file-refresh-interval=200ms")
            .arg(format!("--receive.local-endpoint={grpc}"))
            .arg(format!("--label=receive=\"{name}\""))
            .arg(format!("--objstore.config={objstore}"))
            .arg("--shipper.interval=1h")
            .env("RUST_LOG", "info");
        let proc = Proc::spawn(name, cmd, dir.join(format!("{name}.log")));
        let n = Node {
            grpc,
            rw,
            http,
            proc,
        };
        let ready = wait_for(Duration::from_secs(60), || {
            matches!(http_get(&n.http, "/-/ready"), Ok((200, _))).then_some(())
        });
        assert!(
            ready.is_some(),
            "{name} not ready; log:\n{}",
            n.proc.log_text()
        );
        n
    }

    fn write(&self, tenant: &str, t: i64) -> u16 {
        write_to(&self.rw, tenant, t)
    }

    fn metric(&self, name: &str) -> f64 {
        let text = http_get(&self.http, "/metrics")
            .map(|r| r.1)
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// `tenant`'s `handoff_test` samples this node serves: (series id, t) → v.
    fn served(&self, tenant: &str) -> BTreeMap<(String, i64), f64> {
        let got = series(
            &self.grpc,
            vec![eq("__name__", "handoff_test")],
            i64::MIN,
            i64::MAX,
        )
        .expect("Series");
        let mut out = BTreeMap::new();
        for (l, s) in got {
            if l.get("tenant_id") != Some(tenant) {
                continue;
            }
            let id = l.get("id").unwrap_or_default().to_string();
            for (t, v) in s {
                out.insert((id.clone(), t), v);
            }
        }
        out
    }
}

/// One remote-write request to `rw` for `tenant`: every series' sample at `t`.
fn write_to(rw: &str, tenant: &str, t: i64) -> u16 {
    let batch: Vec<_> = (0..SERIES)
        .map(|i| {
            (
                labels(&[("__name__", "handoff_test"), ("id", &format!("s{i}"))]),
                vec![Sample { t, v: value(i, t) }],
            )
        })
        .collect();
    e2e::remote_write(rw, "/api/v1/receive", &batch, &[("THANOS-TENANT", tenant)])
        .map(|r| r.0)
        .unwrap_or(0)
}

fn value(i: usize, t: i64) -> f64 {
    (t % 1_000_000) as f64 + i as f64 / 10.0
}

fn ring_json(t1_on: &str, rest_on: &str) -> String {
    format!(
        r#"[{{"hashring":"t1","tenants":["t1"],"endpoints":["{t1_on}"]}},{{"hashring":"rest","endpoints":["{rest_on}"]}}]"#
    )
}

/// Replaces the file atomically (the watcher never reads half a file).
fn write_ring(path: &Path, json: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The blocks in the bucket with their meta.json.
fn bucket_metas(moto: &MotoServer) -> BTreeMap<String, serde_json::Value> {
    let objects: BTreeSet<String> = moto.list(BUCKET).into_iter().map(|(k, _)| k).collect();
    objects
        .iter()
        .filter_map(|k| k.strip_suffix("/meta.json"))
        .map(|u| {
            let m = serde_json::from_slice(&moto.get(BUCKET, &format!("{u}/meta.json")))
                .expect("meta.json");
            (u.to_string(), m)
        })
        .collect()
}

/// Every sample of the given blocks, read by the reference `promtool tsdb dump`.
fn dump_blocks(moto: &MotoServer, ulids: &[String], view: &Path) -> BTreeMap<(String, i64), f64> {
    std::fs::create_dir_all(view.join("wal")).unwrap();
    for (key, _) in moto.list(BUCKET) {
        if !ulids.iter().any(|u| key.starts_with(&format!("{u}/"))) {
            continue;
        }
        let p = view.join(&key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, moto.get(BUCKET, &key)).unwrap();
    }
    let out = Command::new(promtool_bin())
        .args(["tsdb", "dump"])
        .arg(view)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool tsdb dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got = BTreeMap::new();
    for (series, samples) in e2e::parse_promtool_dump(&String::from_utf8_lossy(&out.stdout)) {
        let id = series
            .split("id=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_default()
            .to_string();
        for (t, v) in samples {
            assert!(got.insert((id.clone(), t), v).is_none(), "{id}@{t} twice");
        }
    }
    got
}

#[test]
fn tenant_moved_by_the_hashring_is_flushed_shipped_and_routed_to_its_new_node() {
    let dir = tempfile::tempdir().unwrap();
    let moto = MotoServer::start(dir.path());
    moto.create_bucket(BUCKET);
    let objstore = format!(
        "type: S3\nconfig:\n  bucket: {BUCKET}\n  endpoint: {}\n  insecure: true\n  access_key: test\n  secret_key: test\n",
        moto.addr()
    );
    // Both nodes' addresses go into the file before either starts.
    let ports: Vec<String> = (0..6)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let ring = dir.path().join("hashring.json");
    write_ring(&ring, &ring_json(&ports[0], &ports[3]));
    let a = Node::start_on(
        "a",
        dir.path(),
        &ring,
        &objstore,
        ports[0].clone(),
        ports[1].clone(),
        ports[2].clone(),
    );
    let b = Node::start_on(
        "b",
        dir.path(),
        &ring,
        &objstore,
        ports[3].clone(),
        ports[4].clone(),
        ports[5].clone(),
    );

    // t2 lives on B throughout; t1 on A until the change.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t0 = now - 10 * 60_000;
    assert_eq!(b.write("t2", t0), 200);

    // The writer: one request per 1 s step of sample time, as fast as acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let rw = a.rw.clone();
        std::thread::spawn(move || {
            let mut acked: Vec<(i64, u16, std::time::Instant)> = Vec::new();
            let mut t = t0;
            while !stop.load(Ordering::SeqCst) {
                let code = write_to(&rw, "t1", t);
                acked.push((t, code, std::time::Instant::now()));
                t += 1000;
                std::thread::sleep(Duration::from_millis(5));
            }
            acked
        })
    };
    // Some history on A before the change.
    let before_change = wait_for(Duration::from_secs(20), || {
        (a.served("t1").len() >= 100 * SERIES).then_some(())
    });
    assert!(before_change.is_some(), "writes to A not served");
    let changed_at = std::time::Instant::now();
    write_ring(&ring, &ring_json(&ports[3], &ports[3]));
    let done = wait_for(Duration::from_secs(30), || {
        (a.metric("thanos_receive_multi_db_updates_completed_total") >= 1.0).then_some(())
    });
    assert!(
        done.is_some(),
        "A did not hand off; log:\n{}",
        a.proc.log_text()
    );
    let handed_off_at = std::time::Instant::now();
    // Writes go on for a while after the hand-off.
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    let acked = writer.join().unwrap();

    // Every write succeeded: before, during and after the change.
    let failed: Vec<_> = acked.iter().filter(|(_, c, _)| *c != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} writes failed: {:?}",
        failed.len(),
        acked.len(),
        &failed[..failed.len().min(5)]
    );
    let acked_before: Vec<i64> = acked
        .iter()
        .filter(|(_, _, at)| *at < changed_at)
        .map(|(t, _, _)| *t)
        .collect();
    let acked_after: Vec<i64> = acked
        .iter()
        .filter(|(_, _, at)| *at > handed_off_at)
        .map(|(t, _, _)| *t)
        .collect();
    assert!(
        acked_before.len() >= 100 && acked_after.len() >= 10,
        "{acked:?}"
    );

    assert_eq!(
        a.metric("thanos_receive_multi_db_updates_attempted_total"),
        1.0
    );
    let log = a.proc.log_text();
    assert!(log.contains("hashring has changed; flushing"), "{log}");
    assert!(log.contains("left this receiver"), "{log}");
    // B kept t2's head: t2 did not move, so B handed nothing off.
    assert_eq!(
        b.metric("thanos_receive_multi_db_updates_attempted_total"),
        0.0
    );

    // A's blocks of t1 in the bucket hold every sample acknowledged before the change.
    let metas = bucket_metas(&moto);
    let a_t1: Vec<String> = metas
        .iter()
        .filter(|(_, m)| {
            m["thanos"]["labels"] == serde_json::json!({"receive": "a", "tenant_id": "t1"})
        })
        .map(|(u, _)| u.clone())
        .collect();
    assert!(
        !a_t1.is_empty(),
        "no block of t1 from A in the bucket: {metas:?}; log:\n{log}"
    );
    for u in &a_t1 {
        assert_eq!(metas[u]["thanos"]["source"], "receive");
    }
    let shipped = dump_blocks(&moto, &a_t1, &dir.path().join("view"));
    for t in &acked_before {
        for i in 0..SERIES {
            assert_eq!(
                shipped.get(&(format!("s{i}"), *t)),
                Some(&value(i, *t)),
                "sample s{i}@{t} acknowledged before the change is not in A's shipped blocks"
            );
        }
    }

    // No acknowledged sample lost: each is shipped by A, in A's head, or on B.
    let on_a = a.served("t1");
    let on_b = b.served("t1");
    for (t, _, _) in &acked {
        for i in 0..SERIES {
            let k = (format!("s{i}"), *t);
            let v = shipped.get(&k).or(on_a.get(&k)).or(on_b.get(&k));
            assert_eq!(v, Some(&value(i, *t)), "acknowledged sample s{i}@{t} lost");
        }
    }
    // Writes after the hand-off were routed to B, not stored on A.
    for t in &acked_after {
        assert!(
            on_b.contains_key(&("s0".to_string(), *t)),
            "s0@{t} not on B"
        );
        assert!(!on_a.contains_key(&("s0".to_string(), *t)), "s0@{t} on A");
    }
    // A serves what it shipped (blocks stay until retention) and nothing newer.
    assert!(on_a.len() >= shipped.len());
    assert_eq!(b.served("t2").len(), SERIES);
}
