//! `orrery compact` against a real S3 server (`moto_server`): a bucket of 2h blocks from
//! two receive replicas (`receive_replica="0"|"1"`, identical samples) compacts into
//! deduplicated 8h and 2d blocks holding every input sample exactly once (read back by
//! downloading and opening the blocks, and with `promtool tsdb dump`); sources are
//! marked, then deleted once `--delete-delay` has passed; a backfill that contradicts
//! the replicas is marked no-compact while the rest compacts; and a compactor SIGKILLed
//! at random points never leaves the bucket with a missing or double-counted sample;
//! raw blocks spanning ≥ 40h get 5m blocks (and 5m blocks ≥ 10d 1h blocks) whose
//! aggregates equal a direct computation over the raw samples.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

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
        Proc::spawn(
            "orrery compact",
            self.compact_cmd(extra),
            self.dir.path().join(log),
        )
    }

    fn compact_cmd(&self, extra: &[&str]) -> Command {
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
        cmd
    }

    /// Starts a waiting compactor (`--wait`, next pass in an hour) with `extra` flags and
    /// waits for its first pass to finish; returns it, its HTTP address and the metrics
    /// text read right after that pass.
    fn compact_first_pass(&self, extra: &[&str], log: &str) -> (Proc, String, String) {
        let addr = format!("127.0.0.1:{}", free_port());
        let http = format!("--http-address={addr}");
        let mut args = vec!["--wait", "--wait-interval=1h", http.as_str()];
        args.extend_from_slice(extra);
        let p = self.compact(&args, log);
        let m = wait_for(Duration::from_secs(300), || {
            http_get(&addr, "/metrics")
                .ok()
                .filter(|(c, b)| {
                    *c == 200 && metric(b, "thanos_compact_iterations_total") == Some(1.0)
                })
                .map(|(_, b)| b)
        })
        .unwrap_or_else(|| panic!("no finished pass:\n{}", p.log_text()));
        (p, addr, m)
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
    p.wait_exit(timeout).unwrap_or_else(|| {
        panic!(
            "orrery compact did not finish in {timeout:?}:\n{}",
            p.log_text()
        )
    })
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
        // The raw-resolution view (downsampled blocks are checked on their own).
        if hidden.contains(id) || b.resolution() != 0 {
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
        .filter(|b| b.deletion_mark.is_none() && b.resolution() == 0)
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
    // The 2d block spans ≥ 40h: it got its 5m block, the only downsampled one.
    let ds: Vec<_> = d.blocks.values().filter(|b| b.resolution() != 0).collect();
    assert_eq!(ds.len(), 1, "one downsampled block");
    assert_eq!(ds[0].resolution(), 300_000);
    assert_eq!(
        (ds[0].meta.min_time, ds[0].meta.max_time),
        (big.meta.min_time, big.meta.max_time)
    );
    assert_eq!(ds[0].meta.compaction.sources, big.meta.compaction.sources);
    // Both outputs carry the writer's size hints (index_stats); an Aggr chunk record
    // holds five sub-chunks, so a downsampled block's differs from the raw one's.
    for b in [big, ds[0]] {
        let st = b.meta.index_stats();
        assert!(st.series_max_size > 0 && st.chunk_max_size > 0, "{st:?}");
    }
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
    let (mut p, addr, m) = f.compact_first_pass(&["--delete-delay=0s"], "compact-2.log");
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
    assert_eq!(
        d.blocks.len(),
        8,
        "only the live blocks (7 raw, one 5m) remain"
    );
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

    let (mut p, _, m) = f.compact_first_pass(&["--delete-delay=1h"], "compact.log");
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
fn sigkill_at_any_point_never_loses_or_doubles_a_sample() {
    use std::os::unix::process::ExitStatusExt;
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
    // Kills after a random delay: these may land inside a write (a multipart upload, a
    // local block being written); whether they land mid-run depends on the machine.
    for round in 0..3 {
        let mut p = f.compact(&["--delete-delay=0s"], &format!("crash-timed-{round}.log"));
        std::thread::sleep(Duration::from_millis(100 + next() % 1500));
        p.kill();
        assert_reader_view(&f, &data);
    }
    // Kills between bucket writes, on any machine: the compactor SIGKILLs itself right
    // after its k-th bucket write (objstore's crash point), k = 1, 2, 3, ... until a run
    // completes. Every run resumes from what the previous ones left in the bucket.
    let mut crashes = 0;
    for k in 1u64.. {
        assert!(
            k <= 200,
            "no run completed after 200 crash rounds: the compactor does not make progress"
        );
        let log = f.dir.path().join(format!("crash-after-{k}-writes.log"));
        let mut cmd = f.compact_cmd(&["--delete-delay=0s"]);
        cmd.env("ORRERY_CRASH_AFTER_BUCKET_WRITES", k.to_string());
        let mut p = Proc::spawn("orrery compact", cmd, log);
        let st = wait_exit(&mut p, Duration::from_secs(300));
        if st.success() {
            break;
        }
        assert_eq!(
            st.signal(),
            Some(SIGKILL),
            "compact run {k} ended with {st}, not by its crash point:\n{}",
            p.log_text()
        );
        crashes += 1;
        assert_reader_view(&f, &data);
    }
    assert!(
        crashes >= 5,
        "only {crashes} crash points were hit: the dataset no longer needs enough bucket writes to test crashes"
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

/// SIGKILL's signal number on Linux.
const SIGKILL: i32 = 9;

/// The five sub-chunks of a Thanos `AggrChunk` (count, sum, min, max, counter), parsed
/// here from the documented layout (`uvarint len`, then encoding byte + XOR bytes when
/// `len > 0`) rather than with the code under test. `None`: absent aggregate.
fn parse_aggr(data: &[u8]) -> [Option<Vec<(i64, f64)>>; 5] {
    let mut b = data;
    std::array::from_fn(|_| {
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let c = b[0];
            b = &b[1..];
            len |= ((c & 0x7f) as usize) << shift;
            shift += 7;
            if c < 0x80 {
                break;
            }
        }
        if len == 0 {
            return None;
        }
        assert_eq!(b[0], 1, "aggregate sub-chunk is XOR");
        let xor = &b[1..=len];
        b = &b[len + 1..];
        Some(
            tsdb::chunk::XorIterator::new(xor)
                .expect("xor sub-chunk")
                .map(|s| s.expect("sample"))
                .collect(),
        )
    })
}

/// Checks one downsampled series against a straightforward computation over its raw
/// samples (stale markers / NaN dropped): per window of `res` the count, sum, min and
/// max (a window split between two chunks is merged); per chunk, the counter holds the
/// chunk's first raw sample, then at each window the first raw value plus the increase
/// since (a drop counts as a reset: the new value is the increase), then the last raw
/// value again at the last window's timestamp; and the chunks' raw ranges together
/// cover every raw sample exactly once. Returns the number of windows.
fn check_downsampled(series: &str, raw: &[(i64, f64)], chunks: &[Chunk], res: i64) -> usize {
    let raw: Vec<(i64, f64)> = raw.iter().copied().filter(|s| !s.1.is_nan()).collect();
    let mut direct: BTreeMap<i64, (f64, f64, f64, f64)> = BTreeMap::new();
    for &(t, v) in &raw {
        let e = direct
            .entry(t / res)
            .or_insert((0.0, 0.0, f64::MAX, f64::MIN));
        e.0 += 1.0;
        e.1 += v;
        e.2 = e.2.min(v);
        e.3 = e.3.max(v);
    }
    let mut got: BTreeMap<i64, (f64, f64, f64, f64)> = BTreeMap::new();
    let mut covered = 0usize;
    let mut prev_last = i64::MIN;
    let mut windows = 0;
    for c in chunks {
        assert_eq!(c.encoding, Encoding::Aggr, "{series}");
        let [count, sum, min, max, counter] = parse_aggr(&c.data);
        let (count, sum, min, max, counter) = (
            count.expect("count"),
            sum.expect("sum"),
            min.expect("min"),
            max.expect("max"),
            counter.expect("counter"),
        );
        windows += count.len();
        assert_eq!(
            (c.min_time, c.max_time),
            (count[0].0, count[count.len() - 1].0)
        );
        for i in 0..count.len() {
            let t = count[i].0;
            assert!([sum[i].0, min[i].0, max[i].0] == [t; 3], "{series}@{t}");
            let e = got.entry(t / res).or_insert((0.0, 0.0, f64::MAX, f64::MIN));
            e.0 += count[i].1;
            e.1 += sum[i].1;
            e.2 = e.2.min(min[i].1);
            e.3 = e.3.max(max[i].1);
        }
        // The raw samples this chunk was made of.
        let (first, last) = (counter[0], counter[counter.len() - 1]);
        let part: Vec<(i64, f64)> = raw
            .iter()
            .copied()
            .filter(|s| s.0 >= first.0 && s.0 <= last.0)
            .collect();
        assert!(first.0 > prev_last, "{series}: chunks overlap");
        prev_last = part[part.len() - 1].0;
        covered += part.len();
        assert_eq!(
            part[0], first,
            "{series}: counter starts with the first raw sample"
        );
        assert_eq!(
            (counter[counter.len() - 2].0, last.1),
            (last.0, part[part.len() - 1].1),
            "{series}: counter ends with the last raw value at the last window"
        );
        let mut acc = part[0].1;
        let mut want_ctr: BTreeMap<i64, f64> = BTreeMap::from([(part[0].0 / res, acc)]);
        for w in part.windows(2) {
            acc += if w[1].1 >= w[0].1 {
                w[1].1 - w[0].1
            } else {
                w[1].1
            };
            want_ctr.insert(w[1].0 / res, acc);
        }
        let have_ctr = &counter[1..counter.len() - 1];
        assert_eq!(have_ctr.len(), want_ctr.len(), "{series}: counter windows");
        assert_eq!(have_ctr.len(), count.len(), "{series}: counter windows");
        for (&(t, v), (&k, &w)) in have_ctr.iter().zip(&want_ctr) {
            assert_eq!(t / res, k, "{series}");
            assert!(
                t % res == res - 1 || t == last.0,
                "{series}: window timestamp {t} is neither a window end nor the last sample"
            );
            // Above 5m the counter aggregate is re-derived from the 5m counters, which
            // is only meaningful for real counters (a gauge going negative looks like
            // resets of the cumulative value); Thanos documents it for counters only.
            let counter_series = series.contains("_total");
            assert!(
                (v - w).abs() <= 1e-9 * w.abs().max(1.0) || (res > 300_000 && !counter_series),
                "{series}@{t}: counter {v}, want {w}"
            );
        }
    }
    assert_eq!(
        covered,
        raw.len(),
        "{series}: raw samples covered by chunks"
    );
    assert_eq!(got.len(), direct.len(), "{series}: windows");
    for ((k, g), (_, w)) in got.iter().zip(&direct) {
        assert_eq!((g.0, g.2, g.3), (w.0, w.2, w.3), "{series}: window {k}");
        assert!(
            (g.1 - w.1).abs() <= 1e-9 * w.1.abs().max(1.0),
            "{series}: sum in window {k}: {} vs {}",
            g.1,
            w.1
        );
    }
    windows
}

impl Fixture {
    /// Downloads a block and returns its series → chunks (any encoding), verified.
    fn read_chunks(&self, id: Ulid) -> BTreeMap<String, Vec<Chunk>> {
        let d = self.dir.path().join("read-chunks");
        std::fs::create_dir_all(&d).expect("mkdir");
        self.rt
            .block_on(objstore::block::download_block(&self.bucket, id, &d))
            .expect("download block");
        let bd = d.join(id.to_string());
        tsdb::block::verify_block(&bd).expect("downloaded block verifies");
        let b = Block::open(&bd).expect("open downloaded block");
        let mut out = BTreeMap::new();
        for s in b.series_iter().expect("series") {
            let (l, cs) = s.expect("series entry");
            out.insert(l.to_string(), cs);
        }
        drop(b);
        std::fs::remove_dir_all(&bd).expect("remove downloaded block");
        out
    }
}

fn resolution(b: &objstore::discovery::BlockEntry) -> i64 {
    b.resolution()
}

fn tenant(b: &objstore::discovery::BlockEntry) -> String {
    b.meta
        .thanos
        .as_ref()
        .and_then(|t| t.labels.get("tenant_id").cloned())
        .unwrap_or_default()
}

#[test]
fn raw_blocks_of_40h_get_5m_and_1h_blocks_equal_to_a_direct_computation() {
    let f = Fixture::new();
    // Tenant a: 8h blocks over 56h; [0,48) compacts into a 2d block (the newest block
    // waits), which gets a 5m block.
    let a = dataset(4, 56);
    for w in 0..7 {
        f.upload(
            t0() + w * 8 * H,
            t0() + (w + 1) * 8 * H,
            &a,
            &[("tenant_id", "a")],
        );
    }
    // Tenant b: a 48h block marked no-downsample.
    let b_id = f.upload(t0(), t0() + 48 * H, &a, &[("tenant_id", "b")]);
    f.rt.block_on(objstore::markers::write_marker(
        &f.bucket,
        &objstore::markers::NoDownsampleMark::new(b_id, "manual", "test", 0),
    ))
    .expect("no-downsample mark");
    // Tenant c: one 10-day block (a backfill): 5m, then 1h from the 5m block.
    let c = dataset(2, 240);
    f.upload(t0(), t0() + 240 * H, &c, &[("tenant_id", "c")]);

    // --downsampling.disable: compaction only.
    f.compact_once(&["--downsampling.disable"], "disabled.log");
    let d = f.discover();
    assert!(
        d.blocks.values().all(|b| resolution(b) == 0),
        "downsampled despite --downsampling.disable"
    );
    let big = d
        .blocks
        .values()
        .find(|b| {
            tenant(b) == "a"
                && b.deletion_mark.is_none()
                && b.meta.max_time - b.meta.min_time == 48 * H
        })
        .expect("tenant a's 2d block")
        .meta
        .clone();

    let (mut p, _, m) = f.compact_first_pass(&[], "downsample.log");
    p.terminate(Duration::from_secs(10));
    for (r, n) in [("0", 2.0), ("300000", 1.0)] {
        assert_eq!(
            metric(
                &m,
                &format!("thanos_compact_downsample_total{{resolution=\"{r}\"}}")
            ),
            Some(n),
            "{m}"
        );
        assert_eq!(
            metric(
                &m,
                &format!("thanos_compact_downsample_failures_total{{resolution=\"{r}\"}}")
            ),
            Some(0.0),
            "{m}"
        );
    }
    assert!(
        m.contains("thanos_compact_downsample_duration_seconds"),
        "{m}"
    );
    // Everything due was downsampled: nothing left to do.
    assert_eq!(
        metric(&m, "thanos_compact_todo_downsample_blocks"),
        Some(0.0),
        "{m}"
    );
    assert!(
        !p.log_text().contains("not implemented"),
        "{}",
        p.log_text()
    );

    let d = f.discover();
    let ds: Vec<_> = d.blocks.values().filter(|b| resolution(b) > 0).collect();
    let mut kinds: Vec<(String, i64)> = ds.iter().map(|b| (tenant(b), resolution(b))).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("a".to_string(), 300_000),
            ("c".to_string(), 300_000),
            ("c".to_string(), 3_600_000)
        ],
        "one 5m block per ≥40h raw block, a 1h block for the 10d 5m block, none for the no-downsample-marked block"
    );
    let find = |t: &str, r: i64| {
        ds.iter()
            .find(|b| tenant(b) == t && resolution(b) == r)
            .expect("downsampled block")
    };
    let a5 = find("a", 300_000);
    let th = a5.meta.thanos.as_ref().expect("thanos");
    assert_eq!(th.source, "compactor");
    assert_eq!(
        th.labels,
        BTreeMap::from([("tenant_id".to_string(), "a".to_string())])
    );
    assert_eq!(
        (a5.meta.min_time, a5.meta.max_time),
        (big.min_time, big.max_time)
    );
    assert_eq!(a5.meta.compaction.sources, big.compaction.sources);
    assert_eq!(a5.meta.compaction.level, big.compaction.level);

    // Tenant a's 5m block against the raw samples of [0, 48h).
    let got = f.read_chunks(a5.meta.ulid);
    assert_eq!(got.len(), a.len());
    let mut windows = 0;
    for (s, all) in &a {
        let raw: Vec<_> = all
            .iter()
            .copied()
            .filter(|x| x.0 < t0() + 48 * H)
            .collect();
        windows += check_downsampled(s, &raw, &got[s], 300_000);
    }
    assert_eq!(a5.meta.stats.num_samples as usize, windows);
    // Tenant c: 5m and 1h against the raw samples.
    let c5 = f.read_chunks(find("c", 300_000).meta.ulid);
    let c1 = f.read_chunks(find("c", 3_600_000).meta.ulid);
    for (s, raw) in &c {
        check_downsampled(s, raw, &c5[s], 300_000);
        check_downsampled(s, raw, &c1[s], 3_600_000);
    }

    // Another pass downsamples nothing again.
    let before: BTreeSet<Ulid> = d.blocks.keys().copied().collect();
    f.compact_once(&[], "again.log");
    let after: BTreeSet<Ulid> = f.discover().blocks.keys().copied().collect();
    assert_eq!(before, after, "a second pass made or removed blocks");

    // Crash safety: without the downsampled blocks, runs killed at random points leave
    // only complete downsampled blocks, never two for the same data; a final run
    // converges to the same set.
    for b in &ds {
        let id = b.meta.ulid.to_string();
        f.rt.block_on(async {
            f.bucket.delete(&format!("{id}/meta.json")).await?;
            for (k, _) in f.bucket.list_recursive(&id).await? {
                f.bucket.delete(&k).await?;
            }
            Ok::<_, objstore::BucketError>(())
        })
        .expect("delete downsampled block");
    }
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for round in 0..4 {
        let mut p = f.compact(&[], &format!("ds-crash-{round}.log"));
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(50 + rng % 1500));
        p.kill();
        let d = f.discover();
        let mut per: BTreeMap<(String, i64), usize> = BTreeMap::new();
        for b in d.blocks.values().filter(|b| resolution(b) > 0) {
            *per.entry((tenant(b), resolution(b))).or_default() += 1;
            f.read_chunks(b.meta.ulid);
        }
        assert!(per.values().all(|&n| n == 1), "round {round}: {per:?}");
    }

    f.compact_once(&[], "converge.log");
    let d = f.discover();
    let mut again: Vec<(String, i64)> = d
        .blocks
        .values()
        .filter(|b| resolution(b) > 0)
        .map(|b| (tenant(b), resolution(b)))
        .collect();
    again.sort();
    assert_eq!(again, kinds, "after the crashes");
    let a5 = d
        .blocks
        .values()
        .find(|b| tenant(b) == "a" && resolution(b) == 300_000)
        .expect("a's 5m block");
    let got = f.read_chunks(a5.meta.ulid);
    for (s, all) in &a {
        let raw: Vec<_> = all
            .iter()
            .copied()
            .filter(|x| x.0 < t0() + 48 * H)
            .collect();
        check_downsampled(s, &raw, &got[s], 300_000);
    }

    // promtool still lists the raw and compacted blocks.
    let pdir = f.dir.path().join("promtool-ds");
    std::fs::create_dir_all(pdir.join("wal")).expect("mkdir");
    for id in [big.ulid, b_id] {
        f.rt.block_on(objstore::block::download_block(&f.bucket, id, &pdir))
            .expect("download");
    }
    let out = Command::new(promtool_bin())
        .args(["tsdb", "list"])
        .arg(&pdir)
        .output()
        .expect("run promtool");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains(&big.ulid.to_string())
            && text.contains(&b_id.to_string()),
        "promtool tsdb list: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
