//! `orrery store` (issue #16): a receiver with 5-minute blocks ingests two hours of the
//! side-by-side dataset while the reference Prometheus 3.5.3 holds the same samples
//! (backfilled with promtool); the receiver ships its blocks and is stopped, its disk
//! deleted; `orrery store` over the bucket behind `orrery query` must then answer the
//! whole PromQL corpus exactly as Prometheus does. Against a real S3 server process
//! (moto) and a FILESYSTEM bucket.

mod receiver_common;
mod store_common;

use std::path::Path;
use std::time::Duration;

use e2e::promqlcmp::{
    Answer, compare_answers, corpus, is_ordered, prom_instant, prom_range, realistic_dataset,
    show_answer, start_prometheus_with,
};
use e2e::s3::MotoServer;
use e2e::wait_for;
use receiver_common::Receiver;
use store_common::{Query, Store, metric};

const BUCKET: &str = "orrery";
const HOUR: i64 = 3_600_000;

/// Fills the bucket through a receiver (5-minute blocks, data written in time order one
/// minute per request), stops it (final flush and upload) and deletes its disk.
fn ship_through_receiver(objstore: &str, dir: &Path, series: &[e2e::promqlcmp::Series], t0: i64) {
    let data = dir.join("receiver");
    let recv = Receiver::start(
        &data,
        &dir.join("receiver.log"),
        &[
            "--tsdb.min-block-duration=5m",
            "--tsdb.max-block-duration=5m",
            "--tsdb.maintenance-interval=200ms",
            "--tsdb.retention=0d",
            &format!("--objstore.config={objstore}"),
            "--shipper.interval=500ms",
        ],
    );
    recv.write_in_order(series, t0, t0 + 2 * HOUR);
    let mut recv = recv;
    let status = recv.proc.terminate(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "receiver did not stop cleanly: {status:?}; log:\n{}",
        recv.proc.log_text()
    );
    std::fs::remove_dir_all(&data).expect("delete the receiver's disk");
}

/// Runs the corpus against the querier and Prometheus; returns the mismatches.
fn compare_corpus(ours: &str, prom: &str, t0: i64) -> (usize, Vec<String>) {
    let (t1, t2) = (t0 + 37 * 60_000 + 30_000, t0 + HOUR + 43 * 60_000);
    let instants = [t0 + 20 * 60_000, t1, t2, t0 + 2 * HOUR - 60_000];
    let ranges = [
        (t0 + 30 * 60_000, t0 + 2 * HOUR, 60_000),
        (t0 + HOUR, t0 + HOUR + 30 * 60_000, 15_000),
        (t0, t0 + 2 * HOUR, 300_000),
        (t0 + 50 * 60_000, t0 + 110 * 60_000, 37_000),
    ];
    let mut report = Vec::new();
    let mut n = 0;
    for (i, raw) in corpus().iter().enumerate() {
        let q = raw
            .replace("{T1}", &e2e::promqlcmp::secs(t1))
            .replace("{T2}", &e2e::promqlcmp::secs(t2));
        let mut runs: Vec<(String, Answer, Answer, bool)> = Vec::new();
        for &t in &instants {
            let theirs = prom_instant(prom, &q, t).expect("query prometheus");
            let mine = prom_instant(ours, &q, t).expect("query orrery");
            runs.push((format!("instant at {t}"), mine, theirs, is_ordered(raw)));
        }
        let (s, e, st) = ranges[i % ranges.len()];
        let theirs = prom_range(prom, &q, s, e, st).expect("query prometheus");
        let mine = prom_range(ours, &q, s, e, st).expect("query orrery");
        runs.push((format!("range {s}..{e} step {st}"), mine, theirs, false));
        for (mode, mine, theirs, ordered) in runs {
            n += 1;
            if let Err(why) = compare_answers(&mine, &theirs, ordered) {
                report.push(format!(
                    "MISMATCH {q}\n  ({mode}) {why}\n  orrery:     {}\n  prometheus: {}",
                    show_answer(&mine),
                    show_answer(&theirs)
                ));
            }
        }
    }
    (n, report)
}

fn run_case(name: &str, objstore: impl FnOnce(&Path) -> String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let objstore = objstore(dir.path());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let t0 = (now_ms - 5 * HOUR) / HOUR * HOUR;
    let series = realistic_dataset(t0, 2);
    let prom = start_prometheus_with(&series);
    ship_through_receiver(&objstore, dir.path(), &series, t0);

    let store = Store::start(
        &objstore,
        &dir.path().join("store"),
        &dir.path().join("store.log"),
        &[],
    );
    let m = store.metrics();
    let loaded = metric(&m, "thanos_blocks_meta_synced{state=\"loaded\"}");
    assert!(
        loaded >= 20.0,
        "{name}: only {loaded} blocks loaded from 2 h of 5 m blocks:\n{m}"
    );
    let q = Query::start(&[store.grpc.as_str()], &dir.path().join("query.log"), &[]);
    // The querier learns the store's range through Info: wait until it answers.
    let seen = wait_for(Duration::from_secs(30), || {
        match prom_instant(&q.http, "count(up)", t0 + HOUR) {
            Ok(Answer::Value(promql::Value::Vector(v))) if !v.is_empty() => Some(()),
            _ => None,
        }
    });
    assert!(
        seen.is_some(),
        "{name}: the querier never saw the store's data; log:\n{}",
        q.proc.log_text()
    );

    let (n, report) = compare_corpus(&q.http, &prom.addr(), t0);
    for r in &report {
        println!("{r}");
    }
    println!("{name}: {n} comparisons, {} differ", report.len());
    let m = store.metrics();
    println!(
        "{name}: index-headers built {}, bytes fetched: postings {}, series {}, chunks {}; chunk cache hits {}",
        metric(&m, "orrery_store_index_header_builds_total"),
        metric(
            &m,
            "orrery_store_bucket_fetched_bytes_total{data_type=\"postings\"}"
        ),
        metric(
            &m,
            "orrery_store_bucket_fetched_bytes_total{data_type=\"series\"}"
        ),
        metric(
            &m,
            "orrery_store_bucket_fetched_bytes_total{data_type=\"chunks\"}"
        ),
        metric(&m, "orrery_store_chunk_cache_hits_total")
    );
    assert!(
        report.is_empty(),
        "{name}: {} of {n} answers through orrery store differ from Prometheus 3.5.3:\n{}\nstore log:\n{}",
        report.len(),
        report
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        store.proc.log_text()
    );
    assert!(metric(&m, "orrery_store_index_header_builds_total") >= 1.0);
    // Blocks are read by range: per block an index-header on disk, never the index.
    let mut headers = 0;
    for e in std::fs::read_dir(dir.path().join("store")).expect("store data dir") {
        let p = e.expect("dir entry").path();
        assert!(
            !p.join("index").exists(),
            "{name}: whole index kept in {p:?}"
        );
        headers += usize::from(p.join("index-header").is_file());
    }
    assert!(headers >= 1, "{name}: no index-header in the data dir");
}

#[test]
fn store_gateway_s3_answers_corpus_like_prometheus() {
    let moto_dir = tempfile::tempdir().expect("moto dir");
    let moto = MotoServer::start(moto_dir.path());
    moto.create_bucket(BUCKET);
    run_case("s3", |_| {
        format!(
            "type: S3\nconfig:\n  bucket: {BUCKET}\n  endpoint: {}\n  insecure: true\n  access_key: test\n  secret_key: test\n",
            moto.addr()
        )
    });
}

#[test]
fn store_gateway_filesystem_answers_corpus_like_prometheus() {
    run_case("filesystem", |dir| {
        let b = dir.join("bucket");
        std::fs::create_dir_all(&b).expect("bucket dir");
        format!("type: FILESYSTEM\nconfig:\n  directory: {}\n", b.display())
    });
}
