//! `orrery compact` against a real S3 server (`moto_server`): a bucket of 2h blocks from
//! two receive replicas (`receive_replica="0"|"1"`, identical samples) compacts into
//! deduplicated 8h and 2d blocks holding every input sample exactly once (read back by
//! downloading and opening the blocks, and with `promtool tsdb dump`); sources are
//! marked, then deleted once `--delete-delay` has passed; a backfill that contradicts
//! the replicas is marked no-compact while the rest compacts; and a compactor SIGKILLed
//! at random points never leaves the bucket with a missing or double-counted sample.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::s3::MotoServer;
use e2e::{Proc, free_port, http_get, orrery_bin, promtool_bin, wait_for};
use objstore::discovery::{Discovery, MetaFetcher};
use objstore::{Bucket, BucketConfig};
use storeapi::{Label, Labels};
use tsdb::block::{Block, BlockOptions, BlockWriter, Ulid};
use tsdb::chunk::{Chunk, Encoding, XorChunk};

const H: i64 = 3_600_000;
const BUCKET: &str = "compact";
const REPLICA: &str = "receive_replica";

/// Series (as `Labels::to_string()`) → samples in time order.
type Data = BTreeMap<String, Vec<(i64, f64)>>;

/// A 2-day-aligned start, as Thanos's ranges are aligned from epoch 0.
fn t0() -> i64 {
    (1_700_000_000_000 / (48 * H)) * 48 * H
}

struct Fixture {
    moto: MotoServer,
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    bucket: Bucket,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let moto = MotoServer::start(dir.path());
        moto.create_bucket(BUCKET);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let cfg = BucketConfig::parse(&objstore_yaml(&moto)).expect("objstore config");
        let bucket = Bucket::new(&cfg, None).expect("bucket");
        Fixture {
            moto,
            dir,
            rt,
            bucket,
        }
    }

    fn yaml(&self) -> String {
        objstore_yaml(&self.moto)
    }

    /// Writes one block locally with the tsdb writer and uploads it as a receiver does.
    fn upload(&self, mint: i64, maxt: i64, series: &Data, ext: &[(&str, &str)]) -> Ulid {
        let local = self.dir.path().join("upload");
        let mut sorted: Vec<(Labels, Vec<Chunk>)> = series
            .iter()
            .filter_map(|(k, s)| {
                let s: Vec<_> = s
                    .iter()
                    .copied()
                    .filter(|(t, _)| (mint..maxt).contains(t))
                    .collect();
                (!s.is_empty()).then(|| (parse_labels(k), xor_chunks(&s)))
            })
            .collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let meta = BlockWriter::write(&local, mint, maxt, sorted, &BlockOptions::default())
            .expect("write block");
        let labels: BTreeMap<String, String> = ext
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let dir = local.join(meta.ulid.to_string());
        self.rt
            .block_on(objstore::block::upload_block(
                &self.bucket,
                &dir,
                &labels,
                "receive",
            ))
            .expect("upload block");
        std::fs::remove_dir_all(&dir).expect("remove local block");
        meta.ulid
    }

    fn discover(&self) -> Discovery {
        self.rt
            .block_on(MetaFetcher::new(self.bucket.clone(), None).fetch())
            .expect("discovery")
    }

    /// Downloads and reads a block: series → samples.
    fn read_block(&self, id: Ulid) -> Data {
        let d = self.dir.path().join("read");
        std::fs::create_dir_all(&d).expect("mkdir");
        self.rt
            .block_on(objstore::block::download_block(&self.bucket, id, &d))
            .expect("download block");
        let bd = d.join(id.to_string());
        let b = Block::open(&bd).expect("open downloaded block");
        tsdb::block::verify_block(&bd).expect("downloaded block verifies");
        let mut out = Data::new();
        for s in b.series_iter().expect("series") {
            let (l, cs) = s.expect("series entry");
            let e = out.entry(l.to_string()).or_default();
            for c in cs {
                for x in c.iter().expect("xor") {
                    e.push(x.expect("sample"));
                }
            }
        }
        drop(b);
        std::fs::remove_dir_all(&bd).expect("remove downloaded block");
        out
    }

    /// Runs `orrery compact` with the common flags plus `extra`.
    fn compact(&self, extra: &[&str], log: &str) -> Proc {
        let mut cmd = Command::new(orrery_bin());
        cmd.arg("compact")
            .arg(format!("--objstore.config={}", self.yaml()))
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("compact-data").display()
            ))
            .arg("--consistency-delay=0s")
            .arg(format!("--deduplication.replica-label={REPLICA}"))
            .args(extra);
        if !extra.iter().any(|a| a.starts_with("--http-address")) {
            cmd.arg(format!("--http-address=127.0.0.1:{}", free_port()));
        }
        Proc::spawn("orrery compact", cmd, self.dir.path().join(log))
    }

    /// Runs one pass to completion; panics with the log when it fails.
    fn compact_once(&self, extra: &[&str], log: &str) -> String {
        let mut p = self.compact(extra, log);
        let st = wait_exit(&mut p, Duration::from_secs(600));
        let text = p.log_text();
        assert!(st.success(), "orrery compact failed ({st}):\n{text}");
        text
    }
}

fn wait_exit(p: &mut Proc, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = p.child.try_wait() {
            return st;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "orrery compact did not finish in {timeout:?}:\n{}",
        p.log_text()
    );
}

fn objstore_yaml(moto: &MotoServer) -> String {
    format!(
        "type: S3\nconfig:\n  bucket: {BUCKET}\n  endpoint: {}\n  insecure: true\n  access_key: test\n  secret_key: test\n",
        moto.addr()
    )
}

fn parse_labels(s: &str) -> Labels {
    // Our own series names: `{a="b", c="d"}` with plain values.
    let inner = s.trim_start_matches('{').trim_end_matches('}');
    let mut ls: Vec<Label> = inner
        .split(", ")
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("label");
            Label::new(k, v.trim_matches('"'))
        })
        .collect();
    ls.sort_by(|a, b| a.name.cmp(&b.name));
    Labels::from_sorted_unchecked(ls)
}

fn xor_chunks(samples: &[(i64, f64)]) -> Vec<Chunk> {
    samples
        .chunks(120)
        .map(|part| {
            let mut c = XorChunk::new();
            for &(t, v) in part {
                c.append(t, v).expect("append");
            }
            Chunk {
                min_time: part[0].0,
                max_time: part[part.len() - 1].0,
                encoding: Encoding::Xor,
                data: Bytes::from(c.into_bytes()),
            }
        })
        .collect()
}

/// `n` series over `[t0, t0 + hours)` at 1-minute steps (offset per series): counters
/// with resets, gauges with fractions, and a stale marker now and then.
fn dataset(n: usize, hours: i64) -> Data {
    let mut out = Data::new();
    for i in 0..n {
        let (name, kind) = if i % 2 == 0 {
            ("http_requests_total", 0)
        } else {
            ("temperature_celsius", 1)
        };
        let l = Labels::from_sorted_unchecked(vec![
            Label::new("__name__", name),
            Label::new("instance", format!("host-{i}")),
        ]);
        let mut acc = 0.0;
        let mut s = Vec::new();
        let mut t = t0() + (i as i64) * 1_000;
        let mut k = 0u64;
        while t < t0() + hours * H {
            k += 1;
            let v = match kind {
                0 => {
                    if k % 997 == 0 {
                        acc = 0.0;
                    }
                    acc += ((k * 7919 + i as u64) % 13) as f64;
                    acc
                }
                _ if k % 500 == 0 => f64::from_bits(storeapi::STALE_NAN_BITS),
                _ => ((k * 31 + i as u64 * 17) % 4000) as f64 / 8.0 - 100.0,
            };
            s.push((t, v));
            t += 60_000;
        }
        out.insert(l.to_string(), s);
    }
    out
}

fn same(a: &[(i64, f64)], b: &[(i64, f64)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.0 == y.0 && x.1.to_bits() == y.1.to_bits())
}

/// Uploads `hours` of 2h blocks for both replicas.
fn upload_replicas(f: &Fixture, data: &Data, hours: i64) -> Vec<Ulid> {
    let mut ids = Vec::new();
    for w in 0..hours / 2 {
        for r in ["0", "1"] {
            let (a, b) = (t0() + w * 2 * H, t0() + (w + 1) * 2 * H);
            ids.push(f.upload(a, b, data, &[("tenant_id", "default-tenant"), (REPLICA, r)]));
        }
    }
    ids
}

/// Every block a reader uses: all complete blocks minus compacted sources (computed, as
/// the compactor does, with the replica label removed), whatever their deletion marks.
/// Returns per series every sample with the block it came from, and asserts no sample
/// is counted twice by compacted blocks and none is missing.
fn assert_reader_view(f: &Fixture, want: &Data) {
    let raw = f.discover();
    let mut stripped = raw.clone();
    for b in stripped.blocks.values_mut() {
        if let Some(t) = b.meta.thanos.as_mut() {
            t.labels.remove(REPLICA);
        }
    }
    let hidden = stripped.compacted_sources();
    // (series, t) → (value bits, was the block compacted, replica label)
    let mut seen: BTreeMap<(String, i64), Vec<(u64, bool, Option<String>)>> = BTreeMap::new();
    for (id, b) in &raw.blocks {
        if hidden.contains(id) {
            continue;
        }
        let t = b.meta.thanos.as_ref().expect("thanos section");
        let compacted = t.source == "compactor";
        let replica = t.labels.get(REPLICA).cloned();
        for (s, samples) in f.read_block(*id) {
            for (ts, v) in samples {
                seen.entry((s.clone(), ts)).or_default().push((
                    v.to_bits(),
                    compacted,
                    replica.clone(),
                ));
            }
        }
    }
    let mut n = 0;
    for (s, samples) in want {
        for (t, v) in samples {
            let e = seen
                .remove(&(s.clone(), *t))
                .unwrap_or_else(|| panic!("sample {s}@{t} missing from the bucket"));
            assert!(
                e.iter().all(|x| x.0 == v.to_bits()),
                "{s}@{t}: wrong value {e:?}"
            );
            let compacted = e.iter().filter(|x| x.1).count();
            if compacted > 0 {
                assert_eq!(
                    e.len(),
                    1,
                    "{s}@{t} counted {} times (compacted block + others)",
                    e.len()
                );
            } else {
                // Raw replica blocks: at most one per replica (the querier deduplicates).
                let replicas: BTreeSet<_> = e.iter().map(|x| x.2.clone()).collect();
                assert_eq!(
                    replicas.len(),
                    e.len(),
                    "{s}@{t} twice in one replica: {e:?}"
                );
            }
            n += 1;
        }
    }
    assert!(
        seen.is_empty(),
        "samples nobody wrote: {:?}",
        seen.keys().take(5).collect::<Vec<_>>()
    );
    assert!(n > 0);
}

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn two_replicas_compact_into_8h_and_2d_blocks_each_sample_once() {
    let f = Fixture::new();
    let data = dataset(10, 72);
    let inputs = upload_replicas(&f, &data, 72);
    assert_eq!(inputs.len(), 72);

    f.compact_once(
        &["--delete-delay=1h", "--hash-func=SHA256"],
        "compact-1.log",
    );

    let d = f.discover();
    let live: Vec<_> = d
        .blocks
        .values()
        .filter(|b| b.deletion_mark.is_none())
        .collect();
    let mut ranges: Vec<(i64, i64)> = live
        .iter()
        .map(|b| ((b.meta.min_time - t0()) / H, (b.meta.max_time - t0()) / H))
        .collect();
    ranges.sort();
    // [0,48) compacted to one 2d block; [48,64) to two 8h blocks; the last 8h range
    // holds the newest block, so it waits (as Thanos/Prometheus plan) as deduplicated
    // 2h blocks.
    assert_eq!(
        ranges,
        vec![
            (0, 48),
            (48, 56),
            (56, 64),
            (64, 66),
            (66, 68),
            (68, 70),
            (70, 72)
        ],
        "live blocks"
    );
    for b in &live {
        let t = b.meta.thanos.as_ref().expect("thanos section");
        assert_eq!(t.source, "compactor");
        assert_eq!(
            t.labels,
            BTreeMap::from([("tenant_id".to_string(), "default-tenant".to_string())]),
            "replica label removed"
        );
        assert_eq!(t.downsample.resolution, 0);
        assert!(b.no_compact_mark.is_none());
        // --hash-func=SHA256: every chunk segment and the index carry Thanos's hash
        // (checked again by read_block's download below).
        let files = t
            .extra
            .get("files")
            .and_then(|f| f.as_array())
            .expect("files");
        for file in files {
            let hashed = file["hash"]["hashFunc"] == "SHA256"
                && file["hash"]["value"]
                    .as_str()
                    .is_some_and(|v| v.len() == 64);
            assert_eq!(hashed, file["rel_path"] != "meta.json", "{file}");
        }
    }
    let big = live
        .iter()
        .find(|b| b.meta.max_time - b.meta.min_time == 48 * H)
        .expect("2d block");
    assert_eq!(big.meta.compaction.level, 4, "2h (dedup) → 8h → 2d");
    assert_eq!(
        big.meta.compaction.sources.len(),
        48,
        "24 windows × 2 replicas"
    );
    // Every input block is marked for deletion, none deleted yet (delete-delay 1h).
    for id in &inputs {
        let b = d
            .blocks
            .get(id)
            .unwrap_or_else(|| panic!("input {id} deleted too early"));
        assert!(b.deletion_mark.is_some(), "input {id} not marked");
    }

    // Every sample of the input, exactly once, in the live blocks.
    let mut got = Data::new();
    for b in &live {
        for (s, samples) in f.read_block(b.meta.ulid) {
            got.entry(s).or_default().extend(samples);
        }
    }
    for v in got.values_mut() {
        v.sort_by_key(|x| x.0);
    }
    assert_eq!(got.len(), data.len());
    for (s, want) in &data {
        assert!(
            same(&got[s], want),
            "series {s}: {} samples, want {}",
            got[s].len(),
            want.len()
        );
    }
    assert_reader_view(&f, &data);

    // promtool reads the 2d block and dumps exactly the input's first two days.
    let pdir = f.dir.path().join("promtool");
    std::fs::create_dir_all(pdir.join("wal")).expect("mkdir");
    f.rt.block_on(objstore::block::download_block(
        &f.bucket,
        big.meta.ulid,
        &pdir,
    ))
    .expect("download");
    let out = Command::new(promtool_bin())
        .args([
            "tsdb",
            "dump",
            "--min-time",
            &t0().to_string(),
            "--max-time",
            &(t0() + 48 * H).to_string(),
        ])
        .arg(&pdir)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = e2e::parse_promtool_dump(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(dump.len(), data.len());
    for (s, all) in &data {
        let want: Vec<_> = all
            .iter()
            .copied()
            .filter(|(t, _)| *t < t0() + 48 * H)
            .collect();
        let have = dump
            .get(s)
            .unwrap_or_else(|| panic!("{s} missing from promtool dump"));
        assert_eq!(have.len(), want.len(), "{s}");
        for (h, w) in have.iter().zip(&want) {
            assert_eq!(h.0, w.0);
            assert!(
                h.1.to_bits() == w.1.to_bits() || (h.1.is_nan() && w.1.is_nan()),
                "{s}@{}",
                w.0
            );
        }
    }

    // A second, waiting compactor: nothing left to compact; with --delete-delay=0s the
    // cleaner deletes every marked block (meta.json first, deletion mark last).
    let port = free_port();
    let mut p = f.compact(
        &[
            "--wait",
            "--wait-interval=1h",
            "--delete-delay=0s",
            &format!("--http-address=127.0.0.1:{port}"),
        ],
        "compact-2.log",
    );
    let addr = format!("127.0.0.1:{port}");
    let m = wait_for(Duration::from_secs(300), || {
        http_get(&addr, "/metrics")
            .ok()
            .filter(|(c, b)| *c == 200 && metric(b, "thanos_compact_iterations_total") == Some(1.0))
            .map(|(_, b)| b)
    })
    .unwrap_or_else(|| panic!("no finished pass:\n{}", p.log_text()));
    assert_eq!(http_get(&addr, "/-/ready").map(|r| r.0).ok(), Some(200));
    assert_eq!(http_get(&addr, "/-/healthy").map(|r| r.0).ok(), Some(200));
    assert_eq!(metric(&m, "thanos_compact_halted"), Some(0.0), "{m}");
    assert_eq!(
        metric(&m, "thanos_compact_todo_compactions"),
        Some(0.0),
        "{m}"
    );
    assert!(
        metric(&m, "thanos_compact_blocks_cleaned_total").unwrap_or(0.0) >= 72.0,
        "{m}"
    );
    assert!(m.contains("thanos_objstore_bucket_operations_total"), "{m}");
    assert!(
        p.terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success()),
        "clean shutdown"
    );

    let d = f.discover();
    assert_eq!(d.blocks.len(), 7, "only the live blocks remain");
    assert!(
        d.partial.is_empty(),
        "deleted blocks leave no objects: {:?}",
        d.partial
    );
    for id in &inputs {
        assert!(!d.blocks.contains_key(id));
    }
    assert_reader_view(&f, &data);
}

#[test]
fn contradicting_backfill_is_marked_no_compact_and_the_rest_compacts() {
    let f = Fixture::new();
    let data = dataset(4, 24);
    upload_replicas(&f, &data, 24);
    // A backfill of hours [2,4) whose values differ from what the replicas hold.
    let mut bad = Data::new();
    for (s, v) in &data {
        bad.insert(s.clone(), v.iter().map(|(t, x)| (*t, x + 1.0)).collect());
    }
    let backfill = f.upload(
        t0() + 2 * H,
        t0() + 4 * H,
        &bad,
        &[("tenant_id", "default-tenant")],
    );

    let port = free_port();
    let mut p = f.compact(
        &[
            "--wait",
            "--wait-interval=1h",
            "--delete-delay=1h",
            &format!("--http-address=127.0.0.1:{port}"),
        ],
        "compact.log",
    );
    let addr = format!("127.0.0.1:{port}");
    let m = wait_for(Duration::from_secs(300), || {
        http_get(&addr, "/metrics")
            .ok()
            .filter(|(c, b)| *c == 200 && metric(b, "thanos_compact_iterations_total") == Some(1.0))
            .map(|(_, b)| b)
    })
    .unwrap_or_else(|| panic!("no finished pass:\n{}", p.log_text()));
    assert_eq!(
        metric(
            &m,
            "thanos_compact_blocks_marked_total{marker=\"no-compact-mark.json\",reason=\"vertical-compaction-conflicting-samples\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "thanos_compact_halted"), Some(0.0));
    p.terminate(Duration::from_secs(10));
    assert!(
        p.log_text().contains("marking block no-compact"),
        "{}",
        p.log_text()
    );

    let d = f.discover();
    let b = &d.blocks[&backfill];
    let mark = b
        .no_compact_mark
        .as_ref()
        .expect("backfill marked no-compact");
    assert_eq!(mark.reason, "vertical-compaction-conflicting-samples");
    assert!(
        mark.details.contains("different values"),
        "{}",
        mark.details
    );
    assert!(b.deletion_mark.is_none());
    // The replicas still compacted: 8h blocks [0,8) and [8,16) exist.
    let live: BTreeSet<(i64, i64)> = d
        .blocks
        .values()
        .filter(|b| b.deletion_mark.is_none() && b.meta.ulid != backfill)
        .map(|b| ((b.meta.min_time - t0()) / H, (b.meta.max_time - t0()) / H))
        .collect();
    assert!(
        live.contains(&(0, 8)) && live.contains(&(8, 16)),
        "{live:?}"
    );
}

#[test]
fn sigkill_at_random_points_never_loses_or_doubles_a_sample() {
    let f = Fixture::new();
    let data = dataset(6, 24);
    upload_replicas(&f, &data, 24);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut killed_mid_run = 0;
    for round in 0..8 {
        let mut p = f.compact(&["--delete-delay=0s"], &format!("crash-{round}.log"));
        let after = Duration::from_millis(100 + next() % 2500);
        std::thread::sleep(after);
        if let Ok(None) = p.child.try_wait() {
            killed_mid_run += 1;
        }
        p.kill();
        assert_reader_view(&f, &data);
    }
    assert!(
        killed_mid_run >= 3,
        "the compactor finished before most kills; raise the data size"
    );
    // A final run converges: everything compacted as planned, nothing marked left.
    f.compact_once(&["--delete-delay=0s"], "final.log");
    f.compact_once(&["--delete-delay=0s"], "final-2.log");
    let d = f.discover();
    let mut ranges: Vec<(i64, i64)> = d
        .blocks
        .values()
        .map(|b| ((b.meta.min_time - t0()) / H, (b.meta.max_time - t0()) / H))
        .collect();
    ranges.sort();
    assert_eq!(
        ranges,
        vec![(0, 8), (8, 16), (16, 18), (18, 20), (20, 22), (22, 24)]
    );
    assert!(d.blocks.values().all(|b| b.deletion_mark.is_none()));
    assert_reader_view(&f, &data);
}
