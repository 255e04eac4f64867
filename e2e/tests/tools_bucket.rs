//! `orrery tools bucket` (issue #15) against a REAL S3 server (moto) and a FILESYSTEM
//! bucket, with blocks made by the reference `promtool tsdb create-blocks-from
//! openmetrics`:
//! - `upload-blocks` ships every block with the given external labels; `ls -o json`
//!   lists them with those labels, the blocks' times and sample counts; the blocks
//!   downloaded back are read by `promtool tsdb dump` with exactly the input samples;
//! - a second `upload-blocks` uploads nothing (meta.json bytes, with their upload time,
//!   unchanged); an overlapping block with the same labels is refused;
//! - `verify` passes, then names each damage: a deleted chunk file, a truncated index,
//!   an overlapping block copied in with the same labels;
//! - `upload-blocks --hash-func=SHA256` lists each chunk segment's and index's SHA-256
//!   in `thanos.files` as Thanos does (equal to `sha256sum`); `verify` names a chunk
//!   changed in place (same size) by its hash;
//! - `mark` writes Thanos's marker JSON and a second mark keeps the first;
//! - an unreachable endpoint fails every tool quickly with the endpoint in the error.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use e2e::s3::MotoServer;
use e2e::{orrery_bin, promtool_bin};

const BUCKET: &str = "tools";
const HOUR: i64 = 3_600_000;

/// Where the blocks go, with direct access to the objects for checks and damage.
enum Store {
    Moto(MotoServer),
    Fs(PathBuf),
}

impl Store {
    fn config(&self) -> String {
        match self {
            Store::Moto(m) => format!(
                "type: S3\nconfig:\n  bucket: {BUCKET}\n  endpoint: {}\n  insecure: true\n  access_key: test\n  secret_key: test\n",
                m.addr()
            ),
            Store::Fs(d) => format!("type: FILESYSTEM\nconfig:\n  directory: {}\n", d.display()),
        }
    }

    /// Every object: key → size.
    fn list(&self) -> BTreeMap<String, u64> {
        match self {
            Store::Moto(m) => m.list(BUCKET).into_iter().collect(),
            Store::Fs(d) => {
                let mut out = BTreeMap::new();
                let mut stack = vec![d.clone()];
                while let Some(p) = stack.pop() {
                    for e in std::fs::read_dir(&p).unwrap() {
                        let e = e.unwrap();
                        if e.path().is_dir() {
                            stack.push(e.path());
                        } else {
                            let rel = e
                                .path()
                                .strip_prefix(d)
                                .unwrap()
                                .to_string_lossy()
                                .to_string();
                            out.insert(rel, e.metadata().unwrap().len());
                        }
                    }
                }
                out
            }
        }
    }

    fn get(&self, key: &str) -> Vec<u8> {
        match self {
            Store::Moto(m) => m.get(BUCKET, key),
            Store::Fs(d) => std::fs::read(d.join(key)).unwrap_or_else(|e| panic!("{key}: {e}")),
        }
    }

    fn put(&self, key: &str, body: &[u8]) {
        match self {
            Store::Moto(m) => m.put(BUCKET, key, body),
            Store::Fs(d) => {
                let p = d.join(key);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, body).unwrap();
            }
        }
    }

    fn delete(&self, key: &str) {
        match self {
            Store::Moto(m) => m.delete(BUCKET, key),
            Store::Fs(d) => std::fs::remove_file(d.join(key)).unwrap(),
        }
    }
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

/// Runs `orrery tools bucket <args>` with the store's config.
fn tools(store: &Store, args: &[&str]) -> Output {
    tools_with(&store.config(), args)
}

fn tools_with(config: &str, args: &[&str]) -> Output {
    Command::new(orrery_bin())
        .args(["tools", "bucket", &format!("--objstore.config={config}")])
        .args(args)
        .output()
        .expect("run orrery tools bucket")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// OpenMetrics text for `series` gauges at 15 s steps over `[start, end)` and the
/// samples it holds: (series id, t) → v.
fn openmetrics(
    prefix: &str,
    series: usize,
    start: i64,
    end: i64,
) -> (String, BTreeMap<(String, i64), f64>) {
    let mut text =
        String::from("# HELP tools_test A gauge for the tools test.\n# TYPE tools_test gauge\n");
    let mut want = BTreeMap::new();
    for s in 0..series {
        let id = format!("{prefix}{s}");
        let mut t = start;
        while t < end {
            let v = ((t / 15_000) % 1000) as f64 * 0.25 + s as f64;
            writeln!(text, "tools_test{{id=\"{id}\"}} {v:?} {}", t / 1000).unwrap();
            want.insert((id.clone(), t), v);
            t += 15_000;
        }
    }
    text.push_str("# EOF\n");
    (text, want)
}

/// Blocks made by promtool from `text` in `dir/blocks`; returns that directory.
fn promtool_blocks(dir: &Path, name: &str, text: &str) -> PathBuf {
    let input = dir.join(format!("{name}.om"));
    std::fs::write(&input, text).unwrap();
    let out = dir.join(name);
    let o = Command::new(promtool_bin())
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(&out)
        .output()
        .expect("run promtool");
    assert!(
        o.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Local blocks: ULID → meta.json.
fn local_metas(dir: &Path) -> BTreeMap<String, serde_json::Value> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let m = std::fs::read(e.path().join("meta.json")).ok()?;
            Some((
                e.file_name().to_string_lossy().to_string(),
                serde_json::from_slice(&m).unwrap(),
            ))
        })
        .collect()
}

fn json_stream(s: &str) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_str(s)
        .into_iter::<serde_json::Value>()
        .map(|v| v.unwrap())
        .collect()
}

/// Reads all blocks of the bucket back with `promtool tsdb dump`: (id, t) → v.
fn dump_bucket(store: &Store, dir: &Path) -> BTreeMap<(String, i64), f64> {
    let view = dir.join("view");
    let _ = std::fs::remove_dir_all(&view);
    for (key, _) in store.list() {
        let p = view.join(&key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, store.get(&key)).unwrap();
    }
    // promtool opens the directory as a Prometheus data dir, which always has a WAL.
    std::fs::create_dir_all(view.join("wal")).unwrap();
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
    let mut got = BTreeMap::new();
    for (series, samples) in e2e::parse_promtool_dump(&String::from_utf8_lossy(&out.stdout)) {
        let id = series
            .split("id=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("no id in {series}"))
            .to_string();
        for (t, v) in samples {
            assert!(
                got.insert((id.clone(), t), v).is_none(),
                "sample {id}@{t} twice"
            );
        }
    }
    std::fs::remove_dir_all(&view).unwrap();
    got
}

fn scenario(store: &Store, dir: &Path) {
    // 5 hours ending half an hour before a past 2h boundary: promtool cuts ≥ 3 blocks.
    let end = (now_ms() - 2 * HOUR).div_euclid(2 * HOUR) * 2 * HOUR - HOUR / 2;
    let start = end - 5 * HOUR;
    let (text, want) = openmetrics("s", 20, start, end);
    let blocks = promtool_blocks(dir, "blocks", &text);
    let local = local_metas(&blocks);
    assert!(local.len() >= 3, "promtool made {} blocks", local.len());
    let labels = ["--label=cluster=\"eu-1\"", "--label=replica=\"a b\""];

    // Refused without labels; nothing uploaded.
    let out = tools(
        store,
        &["upload-blocks", "--path", blocks.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(store.list().is_empty());

    let mut args = vec!["upload-blocks", "--path", blocks.to_str().unwrap()];
    args.extend(labels);
    ok(&tools(store, &args), "upload-blocks");
    let objects = store.list();
    for ulid in local.keys() {
        for f in ["meta.json", "index", "chunks/000001"] {
            assert!(
                objects.contains_key(&format!("{ulid}/{f}")),
                "{ulid}/{f} in {objects:?}"
            );
        }
    }

    // ls: ULIDs; -o json: every block with its labels, times and samples.
    let ids = ok(&tools(store, &["ls"]), "ls");
    assert_eq!(
        ids.lines().collect::<Vec<_>>(),
        local.keys().collect::<Vec<_>>()
    );
    let listed = json_stream(&ok(&tools(store, &["ls", "-o", "json"]), "ls -o json"));
    assert_eq!(listed.len(), local.len());
    let mut samples = 0;
    for m in &listed {
        let l = &local[m["ulid"].as_str().unwrap()];
        assert_eq!(m["minTime"], l["minTime"]);
        assert_eq!(m["maxTime"], l["maxTime"]);
        assert_eq!(m["stats"]["numSamples"], l["stats"]["numSamples"]);
        assert_eq!(
            m["thanos"]["labels"],
            serde_json::json!({"cluster": "eu-1", "replica": "a b"})
        );
        assert_eq!(m["thanos"]["source"], "bucket.upload");
        assert_eq!(m["thanos"]["downsample"]["resolution"], 0);
        samples += m["stats"]["numSamples"].as_u64().unwrap();
    }
    assert_eq!(samples as usize, want.len());
    let wide = ok(&tools(store, &["ls", "-o", "wide"]), "ls -o wide");
    assert_eq!(wide.lines().count(), local.len());
    assert!(wide.contains("cluster=eu-1,replica=a b"), "{wide}");
    let table = ok(
        &tools(store, &["inspect", "-l", "cluster=\"eu-1\""]),
        "inspect",
    );
    assert!(table.contains("#SAMPLES"), "{table}");
    assert_eq!(table.lines().count(), 2 + local.len(), "{table}");
    let none = ok(
        &tools(store, &["inspect", "-l", "cluster=\"us\""]),
        "inspect",
    );
    assert_eq!(none.lines().count(), 2, "{none}");

    // promtool reads the bucket's blocks back: exactly the input samples.
    assert_eq!(dump_bucket(store, dir), want);

    // verify passes.
    ok(&tools(store, &["verify"]), "verify");

    // A second upload uploads nothing: every meta.json (with its upload_time) unchanged.
    let metas_before: Vec<Vec<u8>> = local
        .keys()
        .map(|u| store.get(&format!("{u}/meta.json")))
        .collect();
    ok(&tools(store, &args), "second upload-blocks");
    let metas_after: Vec<Vec<u8>> = local
        .keys()
        .map(|u| store.get(&format!("{u}/meta.json")))
        .collect();
    assert_eq!(metas_before, metas_after);
    assert_eq!(store.list(), objects);

    // An overlapping block with the same labels is refused (and none of it uploaded);
    // with other labels it goes in.
    let (text2, _) = openmetrics("o", 3, start + HOUR, start + HOUR + 20 * 60_000);
    let other = promtool_blocks(dir, "other", &text2);
    let other_ulids: Vec<String> = local_metas(&other).into_keys().collect();
    let mut oargs = vec!["upload-blocks", "--path", other.to_str().unwrap()];
    oargs.extend(labels);
    let out = tools(store, &oargs);
    assert!(!out.status.success(), "overlapping upload accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("overlaps"), "{err}");
    assert_eq!(store.list(), objects);
    // An unknown --hash-func is refused before anything is uploaded.
    let out = tools(
        store,
        &[
            "upload-blocks",
            "--path",
            other.to_str().unwrap(),
            "--label=cluster=\"eu-2\"",
            "--hash-func=MD5",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("MD5"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(store.list(), objects);
    ok(
        &tools(
            store,
            &[
                "upload-blocks",
                "--path",
                other.to_str().unwrap(),
                "--label=cluster=\"eu-2\"",
                "--hash-func=SHA256",
            ],
        ),
        "upload-blocks other labels",
    );
    ok(&tools(store, &["verify"]), "verify with a second group");

    // --hash-func=SHA256: each chunk segment and index is listed with Thanos's
    // {"hashFunc":"SHA256","value":<hex>}, equal to `sha256sum` of the local file;
    // meta.json has none, nor have the blocks uploaded without the flag.
    for u in &other_ulids {
        let m: serde_json::Value =
            serde_json::from_slice(&store.get(&format!("{u}/meta.json"))).unwrap();
        let files = m["thanos"]["files"].as_array().unwrap();
        assert!(files.len() >= 3, "{m}");
        for f in files {
            let rel = f["rel_path"].as_str().unwrap();
            if rel == "meta.json" {
                assert!(f.get("hash").is_none(), "{f}");
            } else {
                assert_eq!(
                    f["hash"],
                    serde_json::json!({"hashFunc": "SHA256", "value": sha256sum(&other.join(u).join(rel))}),
                    "{u}/{rel}"
                );
            }
        }
    }
    for u in local.keys() {
        let m: serde_json::Value =
            serde_json::from_slice(&store.get(&format!("{u}/meta.json"))).unwrap();
        assert!(
            m["thanos"]["files"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f.get("hash").is_none()),
            "{m}"
        );
    }
    // verify checks the hashes: one bit flipped in a chunk segment (same size) is named.
    let victim = format!("{}/chunks/000001", other_ulids[0]);
    let good = store.get(&victim);
    let mut bad = good.clone();
    let i = bad.len() / 2;
    bad[i] ^= 0x10;
    store.put(&victim, &bad);
    let out = tools(store, &["verify"]);
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !out.status.success(),
        "verify passed a corrupted chunk:\n{report}"
    );
    assert_eq!(report.lines().count(), 1, "{report}");
    assert!(
        report.starts_with(&format!(
            "block {}: chunks/000001: its SHA256 hash is ",
            other_ulids[0]
        )),
        "{report}"
    );
    store.put(&victim, &good);
    ok(&tools(store, &["verify"]), "verify after the repair");

    // mark: Thanos's JSON, field for field; a second mark keeps the first.
    let target = local.keys().next().unwrap().clone();
    let before = now_ms() / 1000;
    ok(
        &tools(
            store,
            &[
                "mark",
                "--id",
                &target,
                "--marker",
                "deletion-mark.json",
                "--details",
                "tools test",
            ],
        ),
        "mark",
    );
    let mark = store.get(&format!("{target}/deletion-mark.json"));
    let v: serde_json::Value = serde_json::from_slice(&mark).unwrap();
    let t = v["deletion_time"].as_i64().unwrap();
    assert!(t >= before && t <= now_ms() / 1000 + 1, "{t}");
    assert_eq!(
        String::from_utf8(mark.clone()).unwrap(),
        format!(
            "{{\"id\":\"{target}\",\"version\":1,\"details\":\"tools test\",\"deletion_time\":{t}}}"
        )
    );
    ok(
        &tools(
            store,
            &[
                "mark",
                "--id",
                &target,
                "--marker",
                "deletion-mark.json",
                "--details",
                "again",
            ],
        ),
        "second mark",
    );
    assert_eq!(store.get(&format!("{target}/deletion-mark.json")), mark);
    ok(
        &tools(
            store,
            &[
                "mark",
                "--id",
                &other_ulids[0],
                "--marker",
                "no-compact-mark.json",
                "--details",
                "keep",
            ],
        ),
        "mark no-compact",
    );
    let nc: serde_json::Value =
        serde_json::from_slice(&store.get(&format!("{}/no-compact-mark.json", other_ulids[0])))
            .unwrap();
    assert_eq!(nc["reason"], "manual");
    assert_eq!(nc["details"], "keep");
    assert_eq!(nc["version"], 1);
    assert!(
        !tools(
            store,
            &["mark", "--id", &target, "--marker", "deletion-mark.json"]
        )
        .status
        .success()
    );
    // ls --exclude-delete leaves the marked block out.
    let kept = ok(
        &tools(store, &["ls", "--exclude-delete"]),
        "ls --exclude-delete",
    );
    assert!(!kept.contains(&target));
    ok(
        &tools(
            store,
            &[
                "mark",
                "--id",
                &target,
                "--marker",
                "deletion-mark.json",
                "--remove",
            ],
        ),
        "mark --remove",
    );
    assert!(
        !store
            .list()
            .contains_key(&format!("{target}/deletion-mark.json"))
    );

    // Damage: a chunk file gone, an index truncated, an overlapping copy with the same
    // labels under a new ULID. verify names each and fails.
    let ulids: Vec<&String> = local.keys().collect();
    let (a, b, c) = (ulids[0], ulids[1], ulids[2]);
    store.delete(&format!("{a}/chunks/000001"));
    let index = store.get(&format!("{b}/index"));
    store.put(&format!("{b}/index"), &index[..index.len() / 2]);
    let copy = "01KBYY0000000000000000TEST";
    for (key, _) in store
        .list()
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{c}/")))
    {
        let rel = &key[c.len() + 1..];
        let mut body = store.get(key);
        if rel == "meta.json" {
            body = String::from_utf8(body)
                .unwrap()
                .replace(c.as_str(), copy)
                .into_bytes();
        }
        store.put(&format!("{copy}/{rel}"), &body);
    }
    let out = tools(store, &["verify"]);
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !out.status.success(),
        "verify passed a damaged bucket:\n{report}"
    );
    assert!(
        report.contains(&format!(
            "block {a}: chunks/000001 is listed in meta.json but missing"
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!("block {b}: index is {} bytes", index.len() / 2)),
        "{report}"
    );
    assert!(
        report.contains(&format!("block {b}: index unreadable")),
        "{report}"
    );
    assert!(
        report.lines().any(|l| l.starts_with("overlapping blocks")
            && l.contains(c.as_str())
            && l.contains(copy)),
        "{report}"
    );
    assert!(!report.contains(&format!("block {c}:")), "{report}");
    // Only one block asked for.
    let out = tools(store, &["verify", "--id", c]);
    let only = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !only.contains(&format!("block {a}")) && !only.contains(&format!("block {b}")),
        "{only}"
    );
}

#[test]
fn tools_bucket_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    let moto = MotoServer::start(dir.path());
    moto.create_bucket(BUCKET);
    scenario(&Store::Moto(moto), dir.path());
}

#[test]
fn tools_bucket_on_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    scenario(&Store::Fs(bucket), dir.path());
}

#[test]
fn unreachable_bucket_fails_fast_naming_the_endpoint() {
    // A port nobody listens on.
    let port = e2e::free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let cfg = format!(
        "type: S3\nconfig:\n  bucket: nowhere\n  endpoint: {endpoint}\n  insecure: true\n  access_key: a\n  secret_key: b\n"
    );
    for args in [
        &["ls"][..],
        &["verify"],
        &["upload-blocks", "--path", "/nonexistent", "--label=a=\"b\""],
    ] {
        let t0 = Instant::now();
        let out = tools_with(&cfg, args);
        let took = t0.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(&endpoint) && err.contains("nowhere"),
            "{args:?}: {err}"
        );
        assert!(took < Duration::from_secs(20), "{args:?} took {took:?}");
    }
}
