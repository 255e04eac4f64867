//! Blocks go to object storage (issue #15): `orrery receive` with a REAL S3 server
//! (`moto_server`, installed by scripts/install-s3-server.sh) behind a recording relay
//! ([`e2e::s3::S3Gate`]) that also plays the outage, and with a FILESYSTEM bucket.
//!
//! Checked: Thanos's layout and meta.json (labels, source, resolution, segment_files,
//! files with sizes equal to the objects), meta.json PUT after every other object of its
//! block, oldest block first, the local meta.json untouched, a bucket outage that loses
//! nothing and drains in order, a corrupt `thanos.shipper.json` recovered without a
//! second upload, and a receiver SIGKILLed mid-upload re-uploading the block whole.

mod receiver_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::s3::{MotoServer, S3Gate};
use e2e::{promtool_bin, wait_for};
use receiver_common::{Receiver, labels};
use storeapi::Sample;

const BUCKET: &str = "orrery";
const BASE: i64 = 1_700_000_040_000; // aligned to the minute

fn s3_config(gate: &S3Gate) -> String {
    format!(
        "type: S3\nconfig:\n  bucket: {BUCKET}\n  endpoint: {}\n  insecure: true\n  access_key: test\n  secret_key: test\n  max_retries: 1\n",
        gate.addr()
    )
}

fn start_receiver(data: &Path, log: &Path, objstore: &str, retention: &str) -> Receiver {
    start_receiver_with(data, log, objstore, retention, &[])
}

fn start_receiver_with(
    data: &Path,
    log: &Path,
    objstore: &str,
    retention: &str,
    extra: &[&str],
) -> Receiver {
    let retention = format!("--tsdb.retention={retention}");
    let objstore = format!("--objstore.config={objstore}");
    let mut args = vec![
        "--tsdb.min-block-duration=1m",
        "--tsdb.max-block-duration=1m",
        "--tsdb.maintenance-interval=200ms",
        retention.as_str(),
        "--label=replica=\"r1\"",
        objstore.as_str(),
        "--shipper.interval=500ms",
    ];
    args.extend_from_slice(extra);
    Receiver::start(data, log, &args)
}

/// `sha256sum` of a local file: the reference for `--hash-func=SHA256`.
fn sha256sum(p: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(p)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Writes 3 series at 15 s steps `from..to` (each step one request); every write must
/// succeed. Returns the samples written.
fn write_steps(recv: &Receiver, from: i64, to: i64) -> BTreeMap<(String, i64), f64> {
    let mut want = BTreeMap::new();
    for step in from..to {
        let t = BASE + step * 15_000;
        let batch: Vec<_> = (0..3)
            .map(|i| {
                let v = (step * 10 + i) as f64 + 0.5;
                want.insert((format!("s{i}"), t), v);
                (
                    labels(&[("__name__", "objstore_test"), ("id", &format!("s{i}"))]),
                    vec![Sample { t, v }],
                )
            })
            .collect();
        let (code, body) = recv.write(&batch);
        assert_eq!(code, 200, "write at step {step}: {body}");
    }
    want
}

/// Objects of the bucket grouped by block: ULID → (relative path → size).
fn bucket_blocks(moto: &MotoServer) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (key, size) in moto.list(BUCKET) {
        if let Some((ulid, rel)) = key.split_once('/') {
            out.entry(ulid.to_string())
                .or_default()
                .insert(rel.to_string(), size);
        }
    }
    out
}

/// ULIDs of complete blocks (with meta.json) in the bucket.
fn complete(moto: &MotoServer) -> BTreeSet<String> {
    bucket_blocks(moto)
        .into_iter()
        .filter(|(_, f)| f.contains_key("meta.json"))
        .map(|(u, _)| u)
        .collect()
}

/// Local block directories (with meta.json) of a tenant: ULID → dir.
fn local_blocks(tenant_dir: &Path) -> BTreeMap<String, PathBuf> {
    std::fs::read_dir(tenant_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("meta.json").is_file())
                .map(|e| (e.file_name().to_string_lossy().to_string(), e.path()))
                // Not `<ULID>.tmp-for-creation` (a block being written) or `.tmp-for-deletion`.
                .filter(|(name, _)| {
                    name.len() == 26 && name.bytes().all(|b| b.is_ascii_alphanumeric())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn json(b: &[u8]) -> serde_json::Value {
    serde_json::from_slice(b)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(b)))
}

/// A metric's value summed over its series (`name{...} value` lines).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Positions of PUTs in the gate's log, per ULID: (rel path, position).
fn puts_by_block(gate: &S3Gate) -> BTreeMap<String, Vec<(String, usize)>> {
    let mut out: BTreeMap<String, Vec<(String, usize)>> = BTreeMap::new();
    for (i, r) in gate.requests().iter().enumerate() {
        if r.method != "PUT" {
            continue;
        }
        let Some(rest) = r.path.strip_prefix(&format!("/{BUCKET}/")) else {
            continue;
        };
        if let Some((ulid, rel)) = rest.split_once('/') {
            out.entry(ulid.to_string())
                .or_default()
                .push((rel.to_string(), i));
        }
    }
    out
}

/// meta.json is the last PUT of each block; returns the blocks in meta.json PUT order.
fn assert_meta_last(gate: &S3Gate) -> Vec<String> {
    let mut order = Vec::new();
    for (ulid, puts) in puts_by_block(gate) {
        let meta_pos = puts
            .iter()
            .filter(|(rel, _)| rel == "meta.json")
            .map(|(_, i)| *i)
            .max();
        let Some(meta_pos) = meta_pos else { continue };
        for (rel, i) in &puts {
            if rel != "meta.json" {
                assert!(
                    *i < meta_pos,
                    "block {ulid}: {rel} was PUT (#{i}) after meta.json (#{meta_pos}): {puts:?}"
                );
            }
        }
        order.push((meta_pos, ulid));
    }
    order.sort();
    order.into_iter().map(|(_, u)| u).collect()
}

/// Checks one uploaded block against Thanos's layout and its local copy; `hashed`: it
/// was shipped with `--hash-func=SHA256` (else its files carry no hash).
fn check_block(
    moto: &MotoServer,
    ulid: &str,
    objects: &BTreeMap<String, u64>,
    local: &Path,
    hashed: bool,
) {
    let meta = json(&moto.get(BUCKET, &format!("{ulid}/meta.json")));
    let th = &meta["thanos"];
    assert_eq!(
        th["labels"],
        serde_json::json!({"replica": "r1", "tenant_id": "default-tenant"}),
        "{meta}"
    );
    assert_eq!(th["source"], "receive");
    assert_eq!(th["downsample"]["resolution"], 0);
    assert!(
        th["upload_time"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{meta}"
    );
    let files = th["files"].as_array().expect("thanos.files");
    let listed: BTreeSet<String> = files
        .iter()
        .map(|f| f["rel_path"].as_str().unwrap_or("").to_string())
        .collect();
    let present: BTreeSet<String> = objects.keys().cloned().collect();
    assert_eq!(listed, present, "thanos.files = the block's objects");
    assert!(present.contains("index") && present.contains("chunks/000001"));
    assert!(!present.contains("tombstones"));
    for f in files {
        let rel = f["rel_path"].as_str().unwrap_or("");
        if rel == "meta.json" {
            assert!(f.get("size_bytes").is_none(), "{f}");
            assert!(f.get("hash").is_none(), "{f}");
            continue;
        }
        if hashed {
            // Thanos's ObjectHash: {"hashFunc": "SHA256", "value": <hex>} of the file.
            assert_eq!(
                f["hash"],
                serde_json::json!({"hashFunc": "SHA256", "value": sha256sum(&local.join(rel))}),
                "{ulid}/{rel}"
            );
        } else {
            assert!(f.get("hash").is_none(), "{f}");
        }
        assert_eq!(
            f["size_bytes"].as_u64(),
            objects.get(rel).copied(),
            "{ulid}/{rel}: size_bytes vs object size"
        );
        assert_eq!(
            std::fs::metadata(local.join(rel)).map(|m| m.len()).ok(),
            objects.get(rel).copied(),
            "{ulid}/{rel}: local size vs object size"
        );
    }
    let segs: Vec<String> = present
        .iter()
        .filter_map(|p| p.strip_prefix("chunks/").map(str::to_string))
        .collect();
    assert_eq!(th["segment_files"], serde_json::json!(segs));
    assert_eq!(
        moto.get(BUCKET, &format!("{ulid}/index")),
        std::fs::read(local.join("index")).unwrap(),
        "{ulid}/index bytes"
    );
    // The local meta.json is the TSDB's own: never rewritten with the upload fields.
    let lm = json(&std::fs::read(local.join("meta.json")).unwrap());
    for k in [
        "ulid",
        "minTime",
        "maxTime",
        "stats",
        "compaction",
        "version",
    ] {
        assert_eq!(lm[k], meta[k], "{ulid}: {k}");
    }
    for k in ["files", "upload_time", "segment_files"] {
        assert!(
            lm["thanos"].get(k).is_none(),
            "{ulid}: local meta.json got {k}: {lm}"
        );
    }
}

#[test]
fn blocks_land_in_s3_in_thanos_layout_meta_json_last() {
    let dir = tempfile::tempdir().unwrap();
    let moto = MotoServer::start(dir.path());
    moto.create_bucket(BUCKET);
    let gate = S3Gate::start(&moto.addr());
    let data = dir.path().join("data");
    let recv = start_receiver_with(
        &data,
        &dir.path().join("receive.log"),
        &s3_config(&gate),
        "0",
        &["--hash-func=SHA256"],
    );
    let want = write_steps(&recv, 0, 40); // 10 minutes
    let tenant = data.join("default-tenant");
    let done = wait_for(Duration::from_secs(90), || {
        let c = complete(&moto);
        (c.len() >= 5).then_some(c)
    })
    .unwrap_or_else(|| {
        panic!(
            "blocks not uploaded: bucket {:?}; log:\n{}",
            bucket_blocks(&moto),
            recv.proc.log_text()
        )
    });
    let objects = bucket_blocks(&moto);
    let local = local_blocks(&tenant);
    for ulid in &done {
        let l = local
            .get(ulid)
            .unwrap_or_else(|| panic!("{ulid} not local"));
        check_block(&moto, ulid, &objects[ulid], l, true);
    }
    // Every PUT of a block precedes its meta.json; blocks go up oldest first.
    let order = assert_meta_last(&gate);
    let min_times: Vec<i64> = order
        .iter()
        .map(|u| {
            json(&moto.get(BUCKET, &format!("{u}/meta.json")))["minTime"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let mut sorted = min_times.clone();
    sorted.sort();
    assert_eq!(min_times, sorted, "upload order by minTime: {order:?}");

    let m = recv.metrics();
    assert!(
        metric(&m, "thanos_shipper_uploads_total") >= done.len() as f64,
        "{m}"
    );
    assert_eq!(metric(&m, "thanos_shipper_upload_failures_total"), 0.0);
    assert!(
        m.lines().any(
            |l| l.starts_with("thanos_objstore_bucket_operations_total{")
                && l.contains("bucket=\"orrery\"")
                && l.contains("operation=\"upload\"")
        ),
        "{m}"
    );
    assert!(m.contains("thanos_objstore_bucket_operation_duration_seconds_bucket{"));

    // A block downloaded from the bucket is read by the reference promtool, samples equal.
    let ulid = done.iter().next().unwrap();
    let view = dir.path().join("promtool-view");
    std::fs::create_dir_all(view.join("wal")).unwrap();
    for rel in objects[ulid].keys() {
        let p = view.join(ulid).join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, moto.get(BUCKET, &format!("{ulid}/{rel}"))).unwrap();
    }
    let out = Command::new(promtool_bin())
        .args(["tsdb", "dump"])
        .arg(&view)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool tsdb dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8_lossy(&out.stdout);
    let mut n = 0;
    for line in dump.lines() {
        let Some((lbls, rest)) = line.rsplit_once('}') else {
            continue;
        };
        let id = lbls
            .split("id=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("")
            .to_string();
        let mut it = rest.split_whitespace();
        let v: f64 = it.next().unwrap().parse().unwrap();
        let t: i64 = it.next().unwrap().parse().unwrap();
        assert_eq!(want.get(&(id, t)), Some(&v), "dumped sample {line}");
        n += 1;
    }
    let meta = json(&moto.get(BUCKET, &format!("{ulid}/meta.json")));
    assert_eq!(Some(n), meta["stats"]["numSamples"].as_u64(), "{dump}");

    // `tools bucket verify` checks the hashes: the block passes; one bit flipped in
    // its chunk segment (same size) is reported and fails the command.
    let direct = format!(
        "type: S3\nconfig:\n  bucket: {BUCKET}\n  endpoint: {}\n  insecure: true\n  access_key: test\n  secret_key: test\n",
        moto.addr()
    );
    let verify = || {
        Command::new(e2e::orrery_bin())
            .args(["tools", "bucket", &format!("--objstore.config={direct}")])
            .args(["verify", "--id", ulid])
            .output()
            .expect("run orrery tools bucket verify")
    };
    let out = verify();
    assert!(
        out.status.success(),
        "verify of a hashed block: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let key = format!("{ulid}/chunks/000001");
    let mut chunk = moto.get(BUCKET, &key);
    let i = chunk.len() / 2;
    chunk[i] ^= 0x04;
    moto.put(BUCKET, &key, &chunk);
    let out = verify();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !out.status.success(),
        "verify passed a corrupted chunk: {report}"
    );
    assert!(
        report.contains(&format!("block {ulid}: chunks/000001: its SHA256 hash is")),
        "{report}"
    );
    assert!(!report.contains("bytes, meta.json says"), "{report}");
}

#[test]
fn bucket_outage_keeps_writes_and_blocks_then_backlog_ships_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let moto = MotoServer::start(dir.path());
    moto.create_bucket(BUCKET);
    let gate = S3Gate::start(&moto.addr());
    let data = dir.path().join("data");
    let tenant = data.join("default-tenant");
    // 2m retention with 1m blocks: without the hold, blocks cut during the outage would
    // be deleted before they could be uploaded.
    let recv = start_receiver(
        &data,
        &dir.path().join("receive.log"),
        &s3_config(&gate),
        "2m",
    );
    let mut seen: BTreeSet<String> = BTreeSet::new();
    write_steps(&recv, 0, 20);
    wait_for(Duration::from_secs(60), || {
        seen.extend(local_blocks(&tenant).into_keys());
        (!complete(&moto).is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("no block uploaded; log:\n{}", recv.proc.log_text()));

    gate.close();
    let before_outage = complete(&moto);
    // Ingest continues while the bucket is unreachable: every write is acknowledged.
    for chunk in 0..4 {
        write_steps(&recv, 20 + chunk * 10, 30 + chunk * 10);
        seen.extend(local_blocks(&tenant).into_keys());
    }
    let stuck = wait_for(Duration::from_secs(60), || {
        seen.extend(local_blocks(&tenant).into_keys());
        let m = recv.metrics();
        let waiting: BTreeSet<String> = seen.difference(&before_outage).cloned().collect();
        // The gauge is set at the end of each (failing) pass: wait for one after the cuts.
        (waiting.len() >= 4
            && metric(&m, "thanos_shipper_dir_sync_failures_total") >= 1.0
            && metric(&m, "orrery_shipper_unshipped_blocks") >= waiting.len() as f64)
            .then_some(waiting)
    })
    .unwrap_or_else(|| {
        panic!(
            "no backlog during the outage; log:\n{}",
            recv.proc.log_text()
        )
    });
    // Past retention, yet nothing un-uploaded was deleted.
    let local_now = local_blocks(&tenant);
    for u in &stuck {
        assert!(local_now.contains_key(u), "{u} deleted before upload");
    }
    let m = recv.metrics();
    assert!(
        metric(&m, "orrery_shipper_oldest_unshipped_block_age_seconds") > 0.0,
        "{m}"
    );
    assert!(
        recv.proc.log_text().contains("shipping stopped"),
        "a log line says why; log:\n{}",
        recv.proc.log_text()
    );
    assert_eq!(complete(&moto), before_outage, "nothing new while down");

    gate.clear();
    gate.open();
    let all = wait_for(Duration::from_secs(90), || {
        seen.extend(local_blocks(&tenant).into_keys());
        let c = complete(&moto);
        seen.is_subset(&c).then_some(c)
    })
    .unwrap_or_else(|| {
        panic!(
            "backlog not drained: seen {seen:?}, bucket {:?}; log:\n{}",
            complete(&moto),
            recv.proc.log_text()
        )
    });
    // The backlog went up oldest first, each meta.json last.
    let order = assert_meta_last(&gate);
    let min_times: Vec<i64> = order
        .iter()
        .map(|u| {
            json(&moto.get(BUCKET, &format!("{u}/meta.json")))["minTime"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let mut sorted = min_times.clone();
    sorted.sort();
    assert_eq!(min_times, sorted, "backlog order: {order:?}");
    for u in &stuck {
        assert!(all.contains(u), "{u} never uploaded");
    }
    // Uploaded now: retention trims local disk again.
    let trimmed = wait_for(Duration::from_secs(30), || {
        let l = local_blocks(&tenant);
        stuck.iter().any(|u| !l.contains_key(u)).then_some(())
    });
    assert!(
        trimmed.is_some(),
        "retention never deleted an uploaded block"
    );
}

#[test]
fn corrupt_shipper_state_is_rebuilt_from_the_bucket_without_uploading_twice() {
    let dir = tempfile::tempdir().unwrap();
    let moto = MotoServer::start(dir.path());
    moto.create_bucket(BUCKET);
    let gate = S3Gate::start(&moto.addr());
    let data = dir.path().join("data");
    let tenant = data.join("default-tenant");
    let state = tenant.join("thanos.shipper.json");
    let mut recv = start_receiver(
        &data,
        &dir.path().join("receive1.log"),
        &s3_config(&gate),
        "0",
    );
    write_steps(&recv, 0, 40);
    let uploaded = wait_for(Duration::from_secs(90), || {
        let c = complete(&moto);
        let s = json(&std::fs::read(&state).ok()?);
        let listed: BTreeSet<String> = s["uploaded"]
            .as_array()?
            .iter()
            .filter_map(|u| u.as_str().map(str::to_string))
            .collect();
        (c.len() >= 4 && listed == c).then_some(c)
    })
    .unwrap_or_else(|| panic!("blocks not uploaded; log:\n{}", recv.proc.log_text()));
    let st = recv
        .proc
        .terminate(Duration::from_secs(30))
        .expect("exits on SIGTERM");
    assert!(st.success(), "{st:?}");

    std::fs::write(&state, b"{\"version\": 1, \"uploaded\": [\"not a ulid").unwrap();
    gate.clear();
    let recv = start_receiver(
        &data,
        &dir.path().join("receive2.log"),
        &s3_config(&gate),
        "0",
    );
    let rebuilt = wait_for(Duration::from_secs(60), || {
        let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).ok()?).ok()?;
        let listed: BTreeSet<String> = s["uploaded"]
            .as_array()?
            .iter()
            .filter_map(|u| u.as_str().map(str::to_string))
            .collect();
        (s["version"] == 1 && uploaded.is_subset(&listed)).then_some(listed)
    })
    .unwrap_or_else(|| panic!("state file not rebuilt; log:\n{}", recv.proc.log_text()));
    assert!(uploaded.is_subset(&rebuilt));
    let reqs = gate.requests();
    for u in &uploaded {
        assert!(
            !reqs
                .iter()
                .any(|r| r.method == "PUT" && r.path.contains(u.as_str())),
            "{u} uploaded twice: {reqs:?}"
        );
        assert!(
            reqs.iter()
                .any(|r| r.method == "HEAD" && r.path == format!("/{BUCKET}/{u}/meta.json")),
            "{u} not checked in the bucket: {reqs:?}"
        );
    }
    // Only blocks never uploaded before (one cut just before the SIGTERM, say) go up.
    let fresh_metas = reqs
        .iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with("/meta.json"))
        .count();
    assert_eq!(
        metric(&recv.metrics(), "thanos_shipper_uploads_total"),
        fresh_metas as f64
    );
    assert!(
        recv.proc
            .log_text()
            .contains("shipper state file unreadable"),
        "{}",
        recv.proc.log_text()
    );
}

#[test]
fn receiver_killed_mid_upload_reuploads_the_block_whole() {
    let dir = tempfile::tempdir().unwrap();
    let moto = MotoServer::start(dir.path());
    moto.create_bucket(BUCKET);
    let gate = S3Gate::start(&moto.addr());
    let data = dir.path().join("data");
    // Every index upload hangs: the first block's chunks land, its index never does.
    gate.stall("/index");
    let mut recv = start_receiver(
        &data,
        &dir.path().join("receive1.log"),
        &s3_config(&gate),
        "0",
    );
    write_steps(&recv, 0, 20);
    let victim = wait_for(Duration::from_secs(60), || {
        puts_by_block(&gate)
            .into_iter()
            .find(|(_, p)| p.iter().any(|(rel, _)| rel.starts_with("chunks/")))
            .map(|(u, _)| u)
    })
    .unwrap_or_else(|| panic!("no chunk upload seen; log:\n{}", recv.proc.log_text()));
    std::thread::sleep(Duration::from_millis(500));
    recv.proc.kill();
    // Half-uploaded: chunks are there, meta.json is not, so no reader sees the block.
    let b = bucket_blocks(&moto);
    let objs = b.get(&victim).cloned().unwrap_or_default();
    assert!(objs.contains_key("chunks/000001"), "{b:?}");
    assert!(!objs.contains_key("meta.json"), "{b:?}");
    assert!(complete(&moto).is_empty(), "{b:?}");

    gate.release();
    std::thread::sleep(Duration::from_millis(500));
    gate.clear();
    let recv = start_receiver(
        &data,
        &dir.path().join("receive2.log"),
        &s3_config(&gate),
        "0",
    );
    wait_for(Duration::from_secs(60), || {
        complete(&moto).contains(&victim).then_some(())
    })
    .unwrap_or_else(|| panic!("{victim} not re-uploaded; log:\n{}", recv.proc.log_text()));
    // Re-uploaded whole after the restart: every file again, meta.json last.
    let puts = puts_by_block(&gate).remove(&victim).unwrap_or_default();
    let rels: BTreeSet<&str> = puts.iter().map(|(r, _)| r.as_str()).collect();
    assert!(
        rels.contains("chunks/000001") && rels.contains("index") && rels.contains("meta.json"),
        "{puts:?}"
    );
    assert_meta_last(&gate);
    let objects = bucket_blocks(&moto);
    let local = local_blocks(&data.join("default-tenant"));
    check_block(&moto, &victim, &objects[&victim], &local[&victim], false);
    // One ULID, one block: nothing else in the bucket names it twice.
    assert_eq!(
        objects.keys().filter(|u| **u == victim).count(),
        1,
        "{objects:?}"
    );
}

#[test]
fn filesystem_bucket_is_thanos_layout_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    let data = dir.path().join("data");
    let cfg = format!(
        "type: FILESYSTEM\nconfig:\n  directory: {}\n",
        serde_json::Value::from(bucket.display().to_string())
    );
    let recv = start_receiver(&data, &dir.path().join("receive.log"), &cfg, "0");
    write_steps(&recv, 0, 40);
    let metas = wait_for(Duration::from_secs(90), || {
        let v: Vec<PathBuf> = std::fs::read_dir(&bucket)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("meta.json"))
            .filter(|p| p.is_file())
            .collect();
        (v.len() >= 4).then_some(v)
    })
    .unwrap_or_else(|| {
        panic!(
            "no blocks in {}; log:\n{}",
            bucket.display(),
            recv.proc.log_text()
        )
    });
    let local = local_blocks(&data.join("default-tenant"));
    for meta in metas {
        let block = meta.parent().unwrap();
        let ulid = block.file_name().unwrap().to_string_lossy().to_string();
        let m = json(&std::fs::read(&meta).unwrap());
        assert_eq!(m["thanos"]["labels"]["tenant_id"], "default-tenant");
        for f in m["thanos"]["files"].as_array().unwrap() {
            let rel = f["rel_path"].as_str().unwrap();
            let p = block.join(rel);
            assert!(p.is_file(), "{}", p.display());
            if let Some(size) = f["size_bytes"].as_u64() {
                assert_eq!(
                    std::fs::metadata(&p).unwrap().len(),
                    size,
                    "{}",
                    p.display()
                );
                assert_eq!(
                    std::fs::read(&p).unwrap(),
                    std::fs::read(local[&ulid].join(rel)).unwrap(),
                    "{}",
                    p.display()
                );
            }
        }
    }
}

/// SIGTERM with a bucket: the head is cut into blocks and shipped before the process
/// exits, so samples that never reached a block are in the bucket too.
#[test]
fn sigterm_cuts_the_head_and_ships_it_before_exit() {
    let dir = tempfile::tempdir().unwrap();
    let moto = MotoServer::start(dir.path());
    moto.create_bucket(BUCKET);
    let gate = S3Gate::start(&moto.addr());
    let data = dir.path().join("data");
    let mut recv = start_receiver(
        &data,
        &dir.path().join("receive.log"),
        &s3_config(&gate),
        "0",
    );
    // 90 s of data: not enough for maintenance to cut a block (1.5 block durations).
    write_steps(&recv, 0, 6);
    std::thread::sleep(Duration::from_secs(1));
    assert!(complete(&moto).is_empty(), "no block before the SIGTERM");
    let st = recv
        .proc
        .terminate(Duration::from_secs(60))
        .expect("exits on SIGTERM");
    assert!(st.success(), "{st:?}; log:\n{}", recv.proc.log_text());
    let done = complete(&moto);
    assert!(
        !done.is_empty(),
        "head not shipped at shutdown; log:\n{}",
        recv.proc.log_text()
    );
    let samples: u64 = done
        .iter()
        .map(|u| {
            json(&moto.get(BUCKET, &format!("{u}/meta.json")))["stats"]["numSamples"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(samples, 18, "3 series × 6 samples in the bucket");
    assert_meta_last(&gate);
}
