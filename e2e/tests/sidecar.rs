//! `orrery sidecar` (issue #21) against real Prometheus 3.5.3 servers.
//!
//! - An HA pair (same external labels but `replica`) holding the side-by-side dataset,
//!   each with a sidecar shipping to a moto S3 bucket; one querier deduplicating by
//!   `replica` answers the PromQL corpus exactly as Prometheus's own API; after one
//!   Prometheus is killed the answers stay the same; after both are gone and their data
//!   dirs deleted, `orrery store` over the bucket answers the same again.
//! - A live HA pair scraping itself and each other every second (one sidecar reading
//!   through remote read, the other Prometheus's data directory) plus a remote-writing
//!   site behind a receiver, all behind one querier: one `up` per target, both sites.
//! - `--tsdb.local-read` over a Prometheus that cuts a block while it is followed.

mod querier_common;
mod receiver_common;
mod store_common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e::promqlcmp::{
    Answer, compare_answers, corpus, is_ordered, prom_instant, prom_range, realistic_dataset,
    show_answer, write_openmetrics,
};
use e2e::s3::MotoServer;
use e2e::{Proc, free_port, http_get, orrery_bin, prometheus_bin, promtool_bin, wait_for};
use querier_common::{Querier, Receiver, diff, get_json, instant, metric_key, now_secs, range};
use store_common::Store;

const BUCKET: &str = "orrery";
const HOUR: i64 = 3_600_000;

/// A Prometheus 3.5.3 started on a port chosen beforehand (an HA pair scrapes each other).
struct Prom {
    proc: Proc,
    addr: String,
}

fn start_prom(port: u16, config: &str, data: &Path, log: &Path, extra: &[&str]) -> Prom {
    let cfg = data.with_extension("yml");
    std::fs::write(&cfg, config).expect("write prometheus.yml");
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(prometheus_bin());
    cmd.arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address={addr}"))
        // Thanos's requirement for shipping: Prometheus never compacts its 2h blocks.
        .arg("--storage.tsdb.min-block-duration=2h")
        .arg("--storage.tsdb.max-block-duration=2h")
        .args(extra);
    let p = Prom {
        proc: Proc::spawn("prometheus", cmd, log.to_path_buf()),
        addr,
    };
    let ready = wait_for(Duration::from_secs(60), || {
        matches!(http_get(&p.addr, "/-/ready"), Ok((200, _))).then_some(())
    });
    assert!(
        ready.is_some(),
        "prometheus did not become ready on {}; log:\n{}",
        p.addr,
        p.proc.log_text()
    );
    p
}

/// A running `orrery sidecar`.
struct Sidecar {
    proc: Proc,
    grpc: String,
    http: String,
}

impl Sidecar {
    fn start(prom: &str, tsdb: &Path, objstore: Option<&str>, log: &Path) -> Sidecar {
        Sidecar::start_with(prom, tsdb, objstore, log, &[])
    }

    fn start_with(
        prom: &str,
        tsdb: &Path,
        objstore: Option<&str>,
        log: &Path,
        extra: &[&str],
    ) -> Sidecar {
        let (grpc, http) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let mut cmd = Command::new(orrery_bin());
        cmd.arg("sidecar")
            .arg(format!("--prometheus.url=http://{prom}"))
            .arg(format!("--tsdb.path={}", tsdb.display()))
            .arg(format!("--grpc-address={grpc}"))
            .arg(format!("--http-address={http}"))
            .arg("--prometheus.get_config_interval=1s")
            .args(extra)
            .env("RUST_LOG", "info");
        if let Some(o) = objstore {
            cmd.arg(format!("--objstore.config={o}"));
        }
        let s = Sidecar {
            proc: Proc::spawn("orrery-sidecar", cmd, log.to_path_buf()),
            grpc,
            http,
        };
        let ok = wait_for(Duration::from_secs(60), || {
            matches!(http_get(&s.http, "/-/ready"), Ok((200, _))).then_some(())
        });
        assert!(
            ok.is_some(),
            "sidecar not ready; log:\n{}",
            s.proc.log_text()
        );
        s
    }
}

/// Removes `name` from every series of an answer (an external label Prometheus's own
/// API does not show).
fn strip_label(a: Answer, name: &str) -> Answer {
    use promql::Value;
    match a {
        Answer::Value(Value::Vector(v)) => Answer::Value(Value::Vector(
            v.into_iter()
                .map(|(mut l, s)| {
                    l.remove(name);
                    (l, s)
                })
                .collect(),
        )),
        Answer::Value(Value::Matrix(m)) => Answer::Value(Value::Matrix(
            m.into_iter()
                .map(|(mut l, s)| {
                    l.remove(name);
                    (l, s)
                })
                .collect(),
        )),
        // Error texts that print a series (duplicate series, many-to-many) show it.
        Answer::Error { kind, msg } => Answer::Error {
            kind,
            msg: msg
                .replace(&format!("{name}=\"eu\", "), "")
                .replace(&format!(", {name}=\"eu\""), ""),
        },
        other => other,
    }
}

/// One corpus run: (description, query, instant time or range, ordered).
struct Run {
    what: String,
    query: String,
    at: Result<i64, (i64, i64, i64)>,
    ordered: bool,
}

fn corpus_runs(t0: i64) -> Vec<Run> {
    let (t1, t2) = (t0 + 37 * 60_000 + 30_000, t0 + HOUR + 43 * 60_000);
    let instants = [t0 + 20 * 60_000, t1, t0 + 2 * HOUR - 60_000];
    let ranges = [
        (t0 + 30 * 60_000, t0 + 2 * HOUR, 60_000),
        (t0 + HOUR, t0 + HOUR + 30 * 60_000, 15_000),
        (t0, t0 + 2 * HOUR, 300_000),
    ];
    let mut out = Vec::new();
    for (i, raw) in corpus().iter().enumerate() {
        let q = raw
            .replace("{T1}", &e2e::promqlcmp::secs(t1))
            .replace("{T2}", &e2e::promqlcmp::secs(t2));
        for &t in &instants {
            out.push(Run {
                what: format!("instant at {t}"),
                query: q.clone(),
                at: Ok(t),
                ordered: is_ordered(raw),
            });
        }
        let r = ranges[i % ranges.len()];
        out.push(Run {
            what: format!("range {}..{} step {}", r.0, r.1, r.2),
            query: q,
            at: Err(r),
            ordered: false,
        });
    }
    out
}

fn answers(addr: &str, runs: &[Run]) -> Vec<Answer> {
    runs.iter()
        .map(|r| {
            match r.at {
                Ok(t) => prom_instant(addr, &r.query, t),
                Err((s, e, st)) => prom_range(addr, &r.query, s, e, st),
            }
            .unwrap_or_else(|e| panic!("{} ({}) against {addr}: {e}", r.query, r.what))
        })
        .collect()
}

/// Mismatches between our answers (external label `cluster` removed) and Prometheus's.
fn mismatches(runs: &[Run], ours: Vec<Answer>, theirs: &[Answer]) -> Vec<String> {
    let mut report = Vec::new();
    for ((r, mine), want) in runs.iter().zip(ours).zip(theirs) {
        let mine = strip_label(mine, "cluster");
        if let Err(why) = compare_answers(&mine, want, r.ordered) {
            report.push(format!(
                "MISMATCH {}\n  ({}) {why}\n  orrery:     {}\n  prometheus: {}",
                r.query,
                r.what,
                show_answer(&mine),
                show_answer(want)
            ));
        }
    }
    report
}

fn assert_same(stage: &str, runs: &[Run], ours: Vec<Answer>, theirs: &[Answer], log: &str) {
    let report = mismatches(runs, ours, theirs);
    println!(
        "{stage}: {} comparisons, {} differ",
        runs.len(),
        report.len()
    );
    assert!(
        report.is_empty(),
        "{stage}: {} of {} answers differ from Prometheus 3.5.3:\n{}\nlog:\n{log}",
        report.len(),
        runs.len(),
        report
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
    );
}

/// Waits until the querier answers `count(up)` at `t` with data.
fn wait_for_data(q: &str, t: i64, log: impl Fn() -> String) {
    let seen = wait_for(Duration::from_secs(30), || {
        match prom_instant(q, "count(up)", t) {
            Ok(Answer::Value(promql::Value::Vector(v))) if !v.is_empty() => Some(()),
            _ => None,
        }
    });
    assert!(
        seen.is_some(),
        "the querier never saw data; log:\n{}",
        log()
    );
}

#[test]
fn sidecar_ha_pair_answers_like_prometheus_survives_a_kill_and_ships_to_s3() {
    let dir = tempfile::tempdir().expect("temp dir");
    let moto = MotoServer::start(dir.path());
    moto.create_bucket(BUCKET);
    let objstore = format!(
        "type: S3\nconfig:\n  bucket: {BUCKET}\n  endpoint: {}\n  insecure: true\n  access_key: test\n  secret_key: test\n",
        moto.addr()
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let t0 = (now_ms - 5 * HOUR) / HOUR * HOUR;
    let series = realistic_dataset(t0, 2);
    let om = dir.path().join("backfill.om");
    write_openmetrics(&series, &om).expect("write OpenMetrics");

    let mut proms = Vec::new();
    let mut sidecars = Vec::new();
    for replica in ["a", "b"] {
        let data = dir.path().join(format!("prom-{replica}"));
        let out = Command::new(promtool_bin())
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&om)
            .arg(&data)
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cfg = format!(
            "global:\n  scrape_interval: 1h\n  external_labels:\n    cluster: eu\n    replica: {replica}\n"
        );
        let p = start_prom(
            free_port(),
            &cfg,
            &data,
            &dir.path().join(format!("prom-{replica}.log")),
            &[
                "--storage.tsdb.retention.time=100y",
                "--query.max-samples=100000000",
                "--enable-feature=promql-experimental-functions",
            ],
        );
        let s = Sidecar::start(
            &p.addr,
            &data,
            Some(&objstore),
            &dir.path().join(format!("sidecar-{replica}.log")),
        );
        proms.push((p, data));
        sidecars.push(s);
    }
    let q = Querier::start(
        &[sidecars[0].grpc.as_str(), sidecars[1].grpc.as_str()],
        &["--query.replica-label=replica"],
    );
    wait_for_data(&q.http, t0 + HOUR, || q.proc.log_text());

    // Info: component sidecar, the external labels, min time = the oldest sample.
    let (_, stores) = get_json(&q.http, "/api/v1/stores");
    let sc = stores["data"]["sidecar"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(sc.len(), 2, "two sidecars listed: {stores}");
    for s in &sc {
        let min = s["minTime"].as_i64().unwrap_or(0);
        assert!(
            (t0..t0 + 60_000).contains(&min),
            "sidecar min time {min} is not the dataset's start {t0}: {s}"
        );
        assert_eq!(s["labelSets"][0]["cluster"], "eu", "{s}");
    }

    let runs = corpus_runs(t0);
    let reference = answers(&proms[0].0.addr, &runs);
    let logs = || {
        format!(
            "querier:\n{}\nsidecar a:\n{}",
            q.proc.log_text(),
            sidecars[0].proc.log_text()
        )
    };
    assert_same(
        "HA pair",
        &runs,
        answers(&q.http, &runs),
        &reference,
        &logs(),
    );

    // Kill one Prometheus: its sidecar fails (then turns unready); the view stays whole.
    proms[0].0.proc.kill();
    assert_same(
        "one Prometheus killed",
        &runs,
        answers(&q.http, &runs),
        &reference,
        &logs(),
    );
    let unready = wait_for(Duration::from_secs(15), || {
        http_get(&sidecars[0].http, "/-/ready")
            .ok()
            .filter(|(c, _)| *c == 503)
    });
    let (_, why) = unready.expect("the sidecar of a dead Prometheus turns unready");
    assert!(
        why.contains("Prometheus"),
        "unready reason names Prometheus: {why}"
    );

    // Shipping: both sidecars uploaded the backfilled blocks with Thanos's meta.
    let metas = wait_for(Duration::from_secs(60), || {
        let keys: Vec<String> = moto
            .list(BUCKET)
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.ends_with("/meta.json"))
            .collect();
        let local: usize = proms
            .iter()
            .map(|(_, d)| {
                std::fs::read_dir(d)
                    .map(|rd| {
                        rd.flatten()
                            .filter(|e| e.path().join("meta.json").is_file())
                            .count()
                    })
                    .unwrap_or(0)
            })
            .sum();
        (local > 0 && keys.len() == local).then_some(keys)
    })
    .unwrap_or_else(|| {
        panic!(
            "blocks not shipped: bucket {:?}\nsidecar a:\n{}",
            moto.list(BUCKET),
            sidecars[0].proc.log_text()
        )
    });
    let mut replicas = std::collections::BTreeSet::new();
    for k in &metas {
        let m: serde_json::Value =
            serde_json::from_slice(&moto.get(BUCKET, k)).expect("meta.json is JSON");
        assert_eq!(m["thanos"]["source"], "sidecar", "{k}: {m}");
        assert_eq!(m["thanos"]["labels"]["cluster"], "eu", "{k}: {m}");
        replicas.insert(
            m["thanos"]["labels"]["replica"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
        assert_eq!(m["compaction"]["level"], 1, "{k}: {m}");
    }
    assert_eq!(
        replicas.into_iter().collect::<Vec<_>>(),
        vec!["a".to_string(), "b".to_string()]
    );

    // Everything local gone: the store gateway over the bucket answers the same.
    drop(q);
    drop(sidecars);
    for (mut p, data) in proms {
        // The first was killed already.
        if let Ok(None) = p.proc.child.try_wait() {
            p.proc.kill();
        }
        std::fs::remove_dir_all(&data).expect("delete Prometheus's data dir");
    }
    let store = Store::start(
        &objstore,
        &dir.path().join("store"),
        &dir.path().join("store.log"),
        &[],
    );
    let q = Querier::start(&[store.grpc.as_str()], &["--query.replica-label=replica"]);
    wait_for_data(&q.http, t0 + HOUR, || q.proc.log_text());
    assert_same(
        "store gateway over the shipped blocks",
        &runs,
        answers(&q.http, &runs),
        &reference,
        &store.proc.log_text(),
    );
}

/// Remote-writes `series` to Prometheus in time order over `[from, to)`: one request
/// per ten minutes holding every series' samples in it (a series written whole would
/// move Prometheus's head past the others' first samples).
fn remote_write_window(addr: &str, series: &[e2e::promqlcmp::Series], from: i64, to: i64) {
    const STEP: i64 = 10 * 60_000;
    let mut t = from;
    while t < to {
        let end = (t + STEP).min(to);
        let batch: Vec<(storeapi::Labels, Vec<storeapi::Sample>)> = series
            .iter()
            .map(|s| {
                let v: Vec<_> = s
                    .samples
                    .iter()
                    .filter(|x| x.t >= t && x.t < end)
                    .copied()
                    .collect();
                (s.labels.clone(), v)
            })
            .filter(|(_, v)| !v.is_empty())
            .collect();
        if !batch.is_empty() {
            let (code, body) = e2e::remote_write(addr, "/api/v1/write", &batch, &[])
                .unwrap_or_else(|e| panic!("remote write to Prometheus: {e}"));
            assert!(
                (200..300).contains(&code),
                "Prometheus refused a write: {code} {body}"
            );
        }
        t = end;
    }
}

/// `--tsdb.local-read`: the sidecar serves Prometheus's data directory (blocks where
/// they lie, the head rebuilt by following the WAL) instead of remote read. Half the
/// data is written before the sidecar starts (read from the WAL at startup), half while
/// it runs (followed); Prometheus then cuts a block from it and truncates its WAL. The
/// PromQL corpus over the block and over the head answers as Prometheus's own API, and
/// a sample written just before a query is in its answer.
#[test]
fn sidecar_local_read_follows_prometheus_wal_and_blocks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let now_ms = now_secs() as i64 * 1000;
    // Four hours that end before now, starting on a block boundary: Prometheus cuts the
    // first two hours into a block once its head spans more than three.
    let t0 = (now_ms - 4 * HOUR - 60_000).div_euclid(2 * HOUR) * 2 * HOUR;
    let series = realistic_dataset(t0, 4);
    let data = dir.path().join("prom");
    let cfg = "global:\n  scrape_interval: 1h\n  external_labels:\n    cluster: eu\nstorage:\n  tsdb:\n    out_of_order_time_window: 1h\n";
    let p = start_prom(
        free_port(),
        cfg,
        &data,
        &dir.path().join("prom.log"),
        &[
            "--web.enable-remote-write-receiver",
            "--storage.tsdb.retention.time=100y",
            "--query.max-samples=100000000",
            "--enable-feature=promql-experimental-functions",
        ],
    );
    remote_write_window(&p.addr, &series, t0, t0 + 2 * HOUR);
    let sc = Sidecar::start_with(
        &p.addr,
        &data,
        None,
        &dir.path().join("sidecar.log"),
        &["--tsdb.local-read"],
    );
    assert!(
        sc.proc
            .log_text()
            .contains("local read: Prometheus's data directory loaded"),
        "the sidecar did not load the directory:\n{}",
        sc.proc.log_text()
    );
    let q = Querier::start(&[sc.grpc.as_str()], &[]);
    wait_for_data(&q.http, t0 + HOUR, || q.proc.log_text());
    remote_write_window(&p.addr, &series, t0 + 2 * HOUR, t0 + 4 * HOUR);

    // Prometheus cuts [t0, t0+2h) into a block and drops it from its head; the sidecar
    // loads the block and drops it from its own head.
    let block = wait_for(Duration::from_secs(120), || {
        std::fs::read_dir(&data).ok()?.flatten().find_map(|e| {
            let m = std::fs::read_to_string(e.path().join("meta.json")).ok()?;
            let v: serde_json::Value = serde_json::from_str(&m).ok()?;
            (v["minTime"].as_i64() == Some(t0)).then_some(v)
        })
    });
    assert!(
        block.is_some(),
        "Prometheus cut no block for [{t0}, +2h); log:\n{}",
        p.proc.log_text()
    );
    let loaded = wait_for(Duration::from_secs(30), || {
        sc.proc
            .log_text()
            .contains("following: block loaded")
            .then_some(())
    });
    assert!(
        loaded.is_some(),
        "the sidecar never loaded the block:\n{}",
        sc.proc.log_text()
    );

    let logs = || {
        format!(
            "querier:\n{}\nsidecar:\n{}",
            q.proc.log_text(),
            sc.proc.log_text()
        )
    };
    for (stage, start) in [
        ("local read, block", t0),
        ("local read, head", t0 + 2 * HOUR),
    ] {
        let runs = corpus_runs(start);
        let reference = answers(&p.addr, &runs);
        assert_same(stage, &runs, answers(&q.http, &runs), &reference, &logs());
    }
    // Out-of-order samples (Prometheus's window is 1h): in its write-behind log, read
    // into the sidecar's out-of-order chunks.
    let end = t0 + 4 * HOUR;
    let ooo =
        storeapi::Labels::from_pairs([("__name__", "ooo_probe"), ("k", "v")]).expect("labels");
    for offset in [0, 30_000] {
        let samples: Vec<storeapi::Sample> = (0..30)
            .map(|i| storeapi::Sample {
                t: end - 30 * 60_000 + i * 60_000 + offset,
                v: (i * 2 + offset / 30_000) as f64,
            })
            .collect();
        let (code, body) =
            e2e::remote_write(&p.addr, "/api/v1/write", &[(ooo.clone(), samples)], &[])
                .expect("remote write");
        assert!((200..300).contains(&code), "{code} {body}");
    }
    let ooo_runs: Vec<Run> = [
        "ooo_probe",
        "count_over_time(ooo_probe[31m])",
        "rate(ooo_probe[5m])",
    ]
    .iter()
    .flat_map(|q| {
        [
            Run {
                what: "instant".into(),
                query: q.to_string(),
                at: Ok(end - 1_000),
                ordered: false,
            },
            Run {
                what: "range".into(),
                query: q.to_string(),
                at: Err((end - 30 * 60_000, end, 15_000)),
                ordered: false,
            },
        ]
    })
    .collect();
    let reference = answers(&p.addr, &ooo_runs);
    assert!(
        matches!(&reference[2], Answer::Value(promql::Value::Vector(v)) if v.len() == 1 && v[0].1.v == 60.0),
        "Prometheus took the out-of-order samples: {:?}",
        reference[2]
    );
    assert_same(
        "local read, out of order",
        &ooo_runs,
        answers(&q.http, &ooo_runs),
        &reference,
        &logs(),
    );

    let (_, stores) = get_json(&q.http, "/api/v1/stores");
    let min = stores["data"]["sidecar"][0]["minTime"]
        .as_i64()
        .unwrap_or(0);
    assert!(
        (t0..t0 + 60_000).contains(&min),
        "sidecar min time {min}, data from {t0}: {stores}"
    );

    // Freshness: a sample Prometheus acknowledged is in the next answer.
    for k in 0..5 {
        // A millisecond apart at least: one timestamp takes one value.
        let t = now_secs() as i64 * 1000 + k;
        let probe =
            storeapi::Labels::from_pairs([("__name__", "live_probe"), ("k", "v")]).expect("labels");
        let (code, body) = e2e::remote_write(
            &p.addr,
            "/api/v1/write",
            &[(probe, vec![storeapi::Sample { t, v: k as f64 }])],
            &[],
        )
        .expect("remote write");
        assert!((200..300).contains(&code), "{code} {body}");
        match prom_instant(&q.http, "live_probe", t) {
            Ok(Answer::Value(promql::Value::Vector(v))) => assert!(
                v.len() == 1 && v[0].1.v == k as f64,
                "write {k} at {t}: the querier answered {v:?}\n{}",
                logs()
            ),
            other => panic!("write {k} at {t}: {other:?}\n{}", logs()),
        }
    }
    // Prometheus killed and started again on the same directory: it replays its WAL
    // and writes on in a new segment, which the sidecar follows.
    let port: u16 = p
        .addr
        .rsplit(':')
        .next()
        .and_then(|x| x.parse().ok())
        .expect("Prometheus's port");
    let mut p = p;
    p.proc.kill();
    let p = start_prom(
        port,
        cfg,
        &data,
        &dir.path().join("prom-2.log"),
        &[
            "--web.enable-remote-write-receiver",
            "--storage.tsdb.retention.time=100y",
            "--query.max-samples=100000000",
            "--enable-feature=promql-experimental-functions",
        ],
    );
    let t = now_secs() as i64 * 1000 + 10;
    let probe =
        storeapi::Labels::from_pairs([("__name__", "live_probe"), ("k", "v")]).expect("labels");
    let (code, body) = e2e::remote_write(
        &p.addr,
        "/api/v1/write",
        &[(probe, vec![storeapi::Sample { t, v: 42.0 }])],
        &[],
    )
    .expect("remote write after the restart");
    assert!((200..300).contains(&code), "{code} {body}");
    // The sidecar turns unready while its Prometheus is down (Thanos's rule; its
    // config is read again every second) and answers again once it has read it.
    let seen = wait_for(Duration::from_secs(15), || {
        match prom_instant(&q.http, "live_probe", t) {
            Ok(Answer::Value(promql::Value::Vector(v))) if v.len() == 1 && v[0].1.v == 42.0 => {
                Some(())
            }
            _ => None,
        }
    });
    assert!(
        seen.is_some(),
        "after Prometheus's restart the querier answered {:?}\n{}\nprometheus:\n{}",
        prom_instant(&q.http, "live_probe", t),
        logs(),
        p.proc.log_text()
    );
    let runs = corpus_runs(t0 + 2 * HOUR);
    let reference = answers(&p.addr, &runs);
    assert_same(
        "local read, after a restart",
        &runs,
        answers(&q.http, &runs),
        &reference,
        &logs(),
    );

    // Following shows on the sidecar's /metrics.
    let (_, sm) = http_get(&sc.http, "/metrics").expect("the sidecar's /metrics");
    let value = |name: &str| -> f64 {
        sm.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not on the sidecar's /metrics:\n{sm}"))
    };
    // At least the probe: a block cut for the dataset's second half (the probe makes
    // Prometheus's head span more than three hours) empties the head of its series.
    assert!(value("orrery_sidecar_local_read_head_series") >= 1.0);
    assert!(value("orrery_sidecar_local_read_blocks") >= 1.0);
    assert!(value("orrery_sidecar_local_read_samples_total") > 0.0);
    assert_eq!(
        value("orrery_sidecar_local_read_unknown_series_samples_total"),
        0.0
    );
    assert_eq!(
        value("orrery_sidecar_local_read_damaged_regions_total"),
        0.0
    );

    // Prometheus served no remote read: its handler counter has no request.
    let (_, metrics) = http_get(&p.addr, "/metrics").expect("Prometheus's /metrics");
    let reads: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("prometheus_http_requests_total") && l.contains("/api/v1/read"))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert!(
        reads.is_empty(),
        "a local-read sidecar asked for remote reads: {reads:?}"
    );
    let queries: usize = metrics
        .lines()
        .filter(|l| l.starts_with("prometheus_http_requests_total") && l.contains("/api/v1/query"))
        .count();
    assert!(
        queries > 0,
        "Prometheus's request counter not found in its /metrics"
    );
}

/// `--tsdb.local-read` over a Prometheus scraping native histograms (integer
/// exponential, custom buckets) and recording float histograms: the histogram records
/// of its WAL become the sidecar's HISTOGRAM and FLOAT_HISTOGRAM chunks, and histogram
/// queries through the querier answer as Prometheus's own API.
#[test]
fn sidecar_local_read_serves_native_histograms_like_prometheus() {
    use e2e::histograms::{
        compare_histogram_queries, generate_traffic, serve_classic_histogram,
        start_native_histogram_prometheus_labeled,
    };
    let (classic_port, _) = serve_classic_histogram();
    let (prom, _rules) =
        start_native_histogram_prometheus_labeled(classic_port, &[("cluster", "eu")], "", &[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let sc = Sidecar::start_with(
        &prom.addr(),
        &prom.dir.path().join("data"),
        None,
        &dir.path().join("sidecar.log"),
        &["--tsdb.local-read"],
    );
    let q = Querier::start(&[sc.grpc.as_str()], &[]);
    let start = now_secs() as i64 * 1000;
    generate_traffic(&prom.addr(), 20);
    // A past instant both have complete: the last scrape before it is in the WAL.
    let end = now_secs() as i64 * 1000 - 3_000;
    wait_for_data(&q.http, end, || q.proc.log_text());
    let cmp = compare_histogram_queries(
        &prom.addr(),
        &q.http,
        start + 5_000,
        end,
        &["cluster"],
        None,
    );
    cmp.assert_clean();
}

/// The keys (labels without external ones) of a query answer, sorted.
fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v["data"]["result"]
        .as_array()
        .map(|a| a.iter().map(|s| metric_key(&s["metric"])).collect())
        .unwrap_or_default();
    k.sort();
    k
}

#[test]
fn sidecar_live_ha_pair_dedups_and_mixes_with_a_receiver_site() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = [free_port(), free_port()];
    let targets = format!("['127.0.0.1:{}', '127.0.0.1:{}']", ports[0], ports[1]);
    let mut proms = Vec::new();
    let mut sidecars = Vec::new();
    for (i, replica) in ["a", "b"].into_iter().enumerate() {
        let cfg = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n  external_labels:\n    cluster: eu\n    replica: {replica}\nscrape_configs:\n  - job_name: prometheus\n    static_configs:\n      - targets: {targets}\n"
        );
        let data = dir.path().join(format!("prom-{replica}"));
        let p = start_prom(
            ports[i],
            &cfg,
            &data,
            &dir.path().join(format!("prom-{replica}.log")),
            &[],
        );
        // Replica b's sidecar reads Prometheus's data directory (`--tsdb.local-read`):
        // the pair mixes both read paths behind one querier.
        let extra: &[&str] = if replica == "b" {
            &["--tsdb.local-read"]
        } else {
            &[]
        };
        sidecars.push(Sidecar::start_with(
            &p.addr,
            &data,
            None,
            &dir.path().join(format!("sidecar-{replica}.log")),
            extra,
        ));
        proms.push(p);
    }
    // The other site: no inbound access, remote write to a receiver.
    let recv = Receiver::start("receiver", &[("receive_replica", "0")]);
    let site_b = querier_common::prometheus(&[("cluster", "us")], &[recv.remote_write_url()]);
    let q = Querier::start(
        &[
            sidecars[0].grpc.as_str(),
            sidecars[1].grpc.as_str(),
            recv.grpc.as_str(),
        ],
        &["--query.replica-label=replica,receive_replica"],
    );

    // Both sites visible: two `up` in eu (deduplicated), one in us.
    let both = wait_for(Duration::from_secs(40), || {
        let (_, v) = instant(&q.http, "count by (cluster) (up)", now_secs());
        let mut got: Vec<(String, String)> = v["data"]["result"]
            .as_array()?
            .iter()
            .map(|s| {
                (
                    s["metric"]["cluster"].as_str().unwrap_or("").to_string(),
                    s["value"][1].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        got.sort();
        (got == [("eu".into(), "2".into()), ("us".into(), "1".into())]).then_some(())
    });
    assert!(
        both.is_some(),
        "want up from both sites (eu: 2 targets deduplicated, us: 1); got {}\nquerier:\n{}\nsidecar a:\n{}",
        instant(&q.http, "count by (cluster) (up)", now_secs()).1,
        q.proc.log_text(),
        sidecars[0].proc.log_text()
    );
    // Until both have scraped both targets for a while (Prometheus starts scraping a
    // few seconds after it is ready, and before B was up, A saw it down).
    for p in &proms {
        let both_up = wait_for(Duration::from_secs(30), || {
            let (_, v) = instant(&p.addr, "count(up == 1)", now_secs());
            (v["data"]["result"][0]["value"][1] == "2").then_some(())
        });
        assert!(both_up.is_some(), "{} never saw both targets up", p.addr);
    }
    let pair_up = now_secs();
    while now_secs() < pair_up + 14.0 {
        std::thread::sleep(Duration::from_millis(200));
    }

    // The eu site's series through the querier are Prometheus's own series, one per
    // target; `up` values agree.
    let t = (now_secs() - 3.0).floor();
    for query in [
        "up",
        "prometheus_tsdb_head_series",
        "sum by (instance) (rate(prometheus_http_requests_total[10s]))",
    ] {
        let eu = if query == "up" {
            "up{cluster=\"eu\"}".to_string()
        } else {
            query
                .replace(
                    "prometheus_tsdb_head_series",
                    "prometheus_tsdb_head_series{cluster=\"eu\"}",
                )
                .replace(
                    "prometheus_http_requests_total",
                    "prometheus_http_requests_total{cluster=\"eu\"}",
                )
        };
        let (code, ours) = instant(&q.http, &eu, t);
        assert_eq!(code, 200, "{eu}: {ours}");
        let (_, theirs) = instant(&proms[0].addr, query, t);
        assert_eq!(
            keys(&ours),
            keys(&theirs),
            "{query}: ours {ours}\ntheirs {theirs}"
        );
        assert!(
            ours["data"]["result"]
                .as_array()
                .is_some_and(|a| a.iter().all(|s| s["metric"]["replica"].is_null())),
            "replica label removed: {ours}"
        );
    }
    let (_, ours) = range(&q.http, "up{cluster=\"eu\"}", t - 10.0, t, 1.0);
    let (_, theirs) = range(&proms[0].addr, "up", t - 10.0, t, 1.0);
    if let Some(d) = diff(&ours["data"], &theirs["data"]) {
        panic!("up over 10s differs from Prometheus's own: {d}\nours {ours}\ntheirs {theirs}");
    }

    // The same wire checks against both read paths.
    storeapi_checks(&sidecars[0].grpc, &proms[0].addr, &proms[1].addr, "a", t);
    storeapi_checks(&sidecars[1].grpc, &proms[1].addr, &proms[0].addr, "b", t);

    // Kill one Prometheus: the view keeps one `up` per eu target, every query succeeds.
    let mut a = proms.remove(0);
    a.proc.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < deadline {
        let (code, v) = instant(&q.http, "up{cluster=\"eu\"}", now_secs());
        assert_eq!(code, 200, "query failed after killing a Prometheus: {v}");
        assert_eq!(keys(&v).len(), 2, "one up per eu target: {v}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, v) = instant(&q.http, "count by (cluster) (up)", now_secs());
    assert_eq!(v["data"]["result"].as_array().map(Vec::len), Some(2), "{v}");
    drop(site_b);
}

/// The sidecar's StoreAPI as the receiver's e2e checks it: raw XOR chunks with xxhash64
/// hashes whose samples are Prometheus's own, external labels added, external-label
/// matchers decided by the sidecar, label APIs with external labels.
fn storeapi_checks(grpc: &str, prom: &str, other_target: &str, replica: &str, t: f64) {
    use receiver_common::{eq, runtime, series};
    use storeapi::wire::thanos::{
        LabelNamesRequest, LabelValuesRequest, store_client::StoreClient,
    };

    let (_, local) = instant(prom, &format!("up{{instance=\"{other_target}\"}}[10s]"), t);
    let want: Vec<(i64, f64)> = local["data"]["result"][0]["values"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let ts = (p[0].as_f64().unwrap_or(0.0) * 1000.0).round() as i64;
            (ts, p[1].as_str().unwrap_or("").parse().unwrap_or(f64::NAN))
        })
        .collect();
    assert!(want.len() >= 5, "Prometheus holds too few samples: {local}");
    let (mint, maxt) = (want[0].0, want[want.len() - 1].0);
    let got = series(
        grpc,
        vec![eq("__name__", "up"), eq("instance", other_target)],
        mint,
        maxt,
    )
    .expect("Series through the sidecar");
    assert_eq!(got.len(), 1, "{got:?}");
    let (l, samples) = &got[0];
    assert_eq!(l.get("cluster"), Some("eu"), "{l}");
    assert_eq!(l.get("replica"), Some(replica), "{l}");
    assert_eq!(l.get("job"), Some("prometheus"), "{l}");
    assert_eq!(
        samples, &want,
        "samples through the sidecar equal Prometheus's own"
    );

    // External-label matchers: decided by the sidecar.
    let none = series(
        grpc,
        vec![eq("__name__", "up"), eq("cluster", "us")],
        mint,
        maxt,
    )
    .expect("Series with a non-matching external label");
    assert!(none.is_empty(), "{none:?}");
    let err = series(grpc, vec![eq("cluster", "eu")], mint, maxt)
        .expect_err("only external-label matchers");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let err = series(grpc, vec![receiver_common::re("__name__", "(")], mint, maxt)
        .expect_err("bad regex");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    runtime().block_on(async {
        let mut c = StoreClient::connect(format!("http://{grpc}"))
            .await
            .expect("connect to the sidecar");
        let names = c
            .label_names(LabelNamesRequest {
                start: mint,
                end: maxt,
                matchers: vec![eq("__name__", "up")],
                without_replica_labels: vec!["replica".into()],
                ..Default::default()
            })
            .await
            .expect("LabelNames")
            .into_inner()
            .names;
        assert_eq!(
            names,
            ["__name__", "cluster", "instance", "job"],
            "{names:?}"
        );
        for (label, want) in [
            ("cluster", vec!["eu".to_string()]),
            ("job", vec!["prometheus".to_string()]),
        ] {
            let values = c
                .label_values(LabelValuesRequest {
                    label: label.into(),
                    start: mint,
                    end: maxt,
                    matchers: vec![eq("__name__", "up")],
                    ..Default::default()
                })
                .await
                .expect("LabelValues")
                .into_inner()
                .values;
            assert_eq!(values, want, "{label}");
        }
        let values = c
            .label_values(LabelValuesRequest {
                label: "job".into(),
                matchers: vec![eq("cluster", "us")],
                ..Default::default()
            })
            .await
            .expect("LabelValues")
            .into_inner()
            .values;
        assert!(values.is_empty(), "{values:?}");
    });
}

/// Runs `orrery sidecar` against `prom` until it exits (it must, within 30 s); returns
/// (success, log).
fn sidecar_exit(prom: &str, objstore: Option<&str>, dir: &Path) -> (bool, String) {
    let mut cmd = Command::new(orrery_bin());
    cmd.arg("sidecar")
        .arg(format!("--prometheus.url=http://{prom}"))
        .arg(format!("--tsdb.path={}", dir.join("none").display()))
        .arg(format!("--grpc-address=127.0.0.1:{}", free_port()))
        .arg(format!("--http-address=127.0.0.1:{}", free_port()))
        .env("RUST_BACKTRACE", "0");
    if let Some(o) = objstore {
        cmd.arg(format!("--objstore.config={o}"));
    }
    let mut p = Proc::spawn("orrery-sidecar", cmd, dir.join("refused.log"));
    let status = wait_for(Duration::from_secs(30), || {
        p.child.try_wait().ok().flatten()
    });
    let status = status.unwrap_or_else(|| panic!("sidecar kept running; log:\n{}", p.log_text()));
    (status.success(), p.log_text())
}

#[test]
fn sidecar_refuses_prometheus_without_external_labels_or_with_compaction() {
    let dir = tempfile::tempdir().expect("temp dir");
    // No external labels: Thanos's error, at startup.
    let bare = start_prom(
        free_port(),
        "global:\n  scrape_interval: 1h\n",
        &dir.path().join("bare"),
        &dir.path().join("bare.log"),
        &[],
    );
    let (ok, log) = sidecar_exit(&bare.addr, None, dir.path());
    assert!(!ok, "{log}");
    assert!(log.contains("no external labels configured"), "{log}");
    drop(bare);

    // Prometheus compacting its blocks (default max block duration): shipping refused.
    let data = dir.path().join("compacting");
    let cfg = dir.path().join("compacting.yml");
    std::fs::write(&cfg, "global:\n  external_labels:\n    cluster: eu\n").expect("config");
    let port = free_port();
    let mut cmd = Command::new(prometheus_bin());
    cmd.arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let prom = Proc::spawn("prometheus", cmd, dir.path().join("compacting.log"));
    let addr = format!("127.0.0.1:{port}");
    let ready = wait_for(Duration::from_secs(60), || {
        matches!(http_get(&addr, "/-/ready"), Ok((200, _))).then_some(())
    });
    assert!(ready.is_some(), "prometheus: {}", prom.log_text());
    let bucket = dir.path().join("bucket");
    std::fs::create_dir_all(&bucket).expect("bucket dir");
    let objstore = format!(
        "type: FILESYSTEM\nconfig:\n  directory: {}\n",
        bucket.display()
    );
    let (ok, log) = sidecar_exit(&addr, Some(&objstore), dir.path());
    assert!(!ok, "{log}");
    assert!(
        log.contains("Compaction needs to be disabled") && log.contains("min-block-duration"),
        "{log}"
    );
    // Without a bucket the same Prometheus is served.
    let s = Sidecar::start(&addr, &data, None, &dir.path().join("served.log"));
    let (code, _) = http_get(&s.http, "/-/ready").expect("ready probe");
    assert_eq!(code, 200);
}
