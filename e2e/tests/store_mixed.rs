//! The global view over all history (issue #16): a receiver (recent data) and the store
//! gateway (old blocks in the bucket) behind one querier answer like Prometheus 3.5.3
//! holding everything, with no gap and no sample counted twice where a block is both on
//! the receiver and in the bucket; a fresh receiver's acknowledged samples are visible
//! at once; `orrery standalone` answers from its bucket past local retention.

mod receiver_common;
mod store_common;

use std::process::Command;
use std::time::Duration;

use e2e::promqlcmp::{
    Answer, compare_answers, corpus, prom_instant, prom_range, realistic_dataset, show_answer,
    start_prometheus_with,
};
use e2e::s3::MotoServer;
use e2e::{Proc, free_port, http_get, orrery_bin, remote_write, wait_for};
use receiver_common::Receiver;
use store_common::{
    Query, Store, api_json, metric, metric_suffix, promtool_blocks_uploaded, single_value, warnings,
};
use storeapi::{Labels, Sample};

const BUCKET: &str = "orrery";
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn s3_config(moto: &MotoServer) -> String {
    format!(
        "type: S3\nconfig:\n  bucket: {BUCKET}\n  endpoint: {}\n  insecure: true\n  access_key: test\n  secret_key: test\n",
        moto.addr()
    )
}

/// Receiver (last ~20 minutes local, 5-minute blocks shipped to S3, older ones deleted by
/// retention) + store gateway (every shipped block) behind one querier: raw samples,
/// counts and the corpus over a range crossing the boundary equal Prometheus's.
#[test]
fn receiver_recent_and_gateway_old_answer_across_the_boundary_like_prometheus() {
    let dir = tempfile::tempdir().expect("temp dir");
    let moto = MotoServer::start(dir.path());
    moto.create_bucket(BUCKET);
    let objstore = s3_config(&moto);
    let t0 = (now_ms() - 3 * HOUR) / HOUR * HOUR;
    let end = t0 + HOUR;
    let series = realistic_dataset(t0, 1);
    let prom = start_prometheus_with(&series);

    let recv = Receiver::start(
        &dir.path().join("receiver"),
        &dir.path().join("receiver.log"),
        &[
            "--tsdb.min-block-duration=5m",
            "--tsdb.max-block-duration=5m",
            "--tsdb.maintenance-interval=200ms",
            "--tsdb.retention=20m",
            &format!("--objstore.config={objstore}"),
            "--shipper.interval=500ms",
        ],
    );
    recv.write_in_order(&series, t0, end);
    // Blocks ending 20 minutes before the newest data leave the receiver once shipped.
    let deleted = wait_for(Duration::from_secs(40), || {
        let n = metric_suffix(&recv.metrics(), "blocks_deleted_by_retention_total");
        (n >= 6.0).then_some(n)
    });
    assert!(
        deleted.is_some(),
        "the receiver never deleted its old blocks by retention; metrics:\n{}\nlog:\n{}",
        recv.metrics(),
        recv.proc.log_text()
    );

    let store = Store::start(
        &objstore,
        &dir.path().join("store"),
        &dir.path().join("store.log"),
        &["--sync-block-duration=1s"],
    );
    let q = Query::start(
        &[recv.grpc.as_str(), store.grpc.as_str()],
        &dir.path().join("query.log"),
        &[],
    );
    // Both are known, the receiver without the first half hour, the gateway from t0 on
    // and reaching into the receiver's range (blocks in both places).
    let ranges = wait_for(Duration::from_secs(20), || {
        let (r, s) = (q.stores("receive"), q.stores("store"));
        match (r.first(), s.first()) {
            (Some(r), Some(s)) if s.1 <= t0 && s.2 >= r.1 => Some((r.clone(), s.clone())),
            _ => None,
        }
    });
    let Some((r, s)) = ranges else {
        panic!(
            "querier never saw both stores with overlapping ranges: {:?} {:?}; store log:\n{}",
            q.stores("receive"),
            q.stores("store"),
            store.proc.log_text()
        );
    };
    // At least the six blocks of the first half hour are gone (the wait above); more may
    // follow before the querier asks, so the receiver starts at t0 + 30 m or later.
    assert!(
        r.1 >= t0 + 30 * MIN && r.1 < end,
        "receiver still advertises old data: {r:?} (t0 {t0})"
    );
    println!("boundary: receiver from {}, gateway {}..{}", r.1, s.1, s.2);

    let mut report = Vec::new();
    let mut n = 0;
    let mut check = |what: String, mine: Answer, theirs: Answer| {
        n += 1;
        if let Err(why) = compare_answers(&mine, &theirs, false) {
            report.push(format!(
                "MISMATCH {what}: {why}\n  orrery:     {}\n  prometheus: {}",
                show_answer(&mine),
                show_answer(&theirs)
            ));
        }
    };
    // Every raw sample of the hour, and per-series counts: a gap or a sample counted
    // twice at the boundary changes both.
    let at = end + MIN;
    for raw in [
        r#"{__name__=~".+"}[62m]"#,
        r#"count_over_time({__name__=~".+"}[62m])"#,
        r#"sum(count_over_time({__name__=~".+"}[62m]))"#,
    ] {
        check(
            format!("{raw} at {at}"),
            prom_instant(&q.http, raw, at).expect("query orrery"),
            prom_instant(&prom.addr(), raw, at).expect("query prometheus"),
        );
    }
    // The corpus as range queries over the whole hour (the boundary inside).
    let (t1, t2) = (t0 + 20 * MIN, t0 + 50 * MIN);
    // topk/bottomk included: ties resolve as Prometheus's heap does over the merged,
    // label-ordered series of both stores.
    for raw in corpus() {
        let qs = raw
            .replace("{T1}", &e2e::promqlcmp::secs(t1))
            .replace("{T2}", &e2e::promqlcmp::secs(t2));
        let (a, b, step) = (t0 + 5 * MIN, end, 30_000);
        check(
            format!("{qs} range {a}..{b}"),
            prom_range(&q.http, &qs, a, b, step).expect("query orrery"),
            prom_range(&prom.addr(), &qs, a, b, step).expect("query prometheus"),
        );
    }
    for r in &report {
        println!("{r}");
    }
    println!("{n} comparisons, {} differ", report.len());
    assert!(
        report.is_empty(),
        "{} of {n} answers over receiver + gateway differ from Prometheus 3.5.3:\n{}",
        report.len(),
        report
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The gateway really served the old part.
    assert!(metric(&store.metrics(), "orrery_store_index_header_builds_total") >= 1.0);
}

/// A querier that last asked an empty receiver for its range still sees the samples the
/// receiver acknowledges next, without waiting for its next Info call; so does a sample
/// older than anything the receiver held at that call.
#[test]
fn fresh_receiver_data_is_visible_to_the_querier_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let recv = Receiver::start(
        &dir.path().join("receiver"),
        &dir.path().join("receiver.log"),
        &[],
    );
    let q = Query::start(&[recv.grpc.as_str()], &dir.path().join("query.log"), &[]);
    let now = now_ms() / 1000 * 1000;
    let a = Labels::from_pairs([("__name__", "fresh_a")]).expect("labels");
    let (code, body) = recv.write(&[(a, vec![Sample { t: now, v: 1.0 }])]);
    assert_eq!(code, 200, "{body}");
    // One query, no retry: acknowledged means visible.
    let got = prom_instant(&q.http, "fresh_a", now).expect("query");
    assert!(
        matches!(&got, Answer::Value(promql::Value::Vector(v)) if v.len() == 1),
        "a sample acknowledged by a fresh receiver is not visible at once: {}",
        show_answer(&got)
    );

    // Once the querier has the receiver's range again, a sample older than everything
    // stored (but inside the appendable window) is still visible at once.
    let refreshed = wait_for(Duration::from_secs(20), || {
        q.stores("receive")
            .first()
            .filter(|s| s.1 != i64::MIN)
            .cloned()
    });
    let r = refreshed.expect("the querier never refreshed the receiver's range");
    assert!(
        r.1 <= now - 30 * MIN,
        "advertised min time {r:?} above now - 30m"
    );
    let b = Labels::from_pairs([("__name__", "fresh_b")]).expect("labels");
    let old = now - 30 * MIN;
    let (code, body) = recv.write(&[(b, vec![Sample { t: old, v: 2.0 }])]);
    assert_eq!(code, 200, "{body}");
    let got = prom_instant(&q.http, "fresh_b", old).expect("query");
    assert!(
        matches!(&got, Answer::Value(promql::Value::Vector(v)) if v.len() == 1),
        "an older acknowledged sample is not visible at once: {}",
        show_answer(&got)
    );
}

/// `orrery standalone` with its default FILESYSTEM bucket holding blocks from long ago
/// (promtool's, uploaded with `tools bucket upload-blocks`) and an empty data dir:
/// one query reaches both those blocks and the samples just written.
#[test]
fn standalone_answers_over_its_bucket_and_fresh_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let bucket = dir.path().join("data-bucket");
    std::fs::create_dir_all(&bucket).expect("bucket dir");
    // 4 hours of 5 series at 15 s, ending a day ago.
    let old_end = (now_ms() - 24 * HOUR) / HOUR * HOUR;
    let old_start = old_end - 4 * HOUR;
    let mut om = String::from("# HELP history_test Old data.\n# TYPE history_test gauge\n");
    let mut want = 0u64;
    for s in 0..5 {
        let mut t = old_start;
        while t < old_end {
            om.push_str(&format!("history_test{{id=\"{s}\"}} {} {}\n", s, t / 1000));
            want += 1;
            t += 15_000;
        }
    }
    om.push_str("# EOF\n");
    std::fs::write(dir.path().join("old.om"), &om).expect("write openmetrics");
    let blocks = dir.path().join("blocks");
    let fs_config = format!(
        "type: FILESYSTEM\nconfig:\n  directory: {}\n",
        bucket.display()
    );
    promtool_blocks_uploaded(
        &dir.path().join("old.om"),
        &blocks,
        &fs_config,
        "source=\"promtool\"",
    );

    let port = || format!("127.0.0.1:{}", free_port());
    let (http, rw) = (port(), port());
    let mut cmd = Command::new(orrery_bin());
    cmd.arg("standalone")
        .arg(format!("--tsdb.path={}", data.display()))
        .arg(format!("--http-address={http}"))
        .arg(format!("--grpc-address={}", port()))
        .arg(format!("--remote-write.address={rw}"))
        .arg(format!("--receive.http-address={}", port()))
        .arg(format!("--compact.http-address={}", port()))
        .arg(format!("--store.grpc-address={}", port()))
        .arg(format!("--store.http-address={}", port()))
        .env("RUST_LOG", "info");
    let sa = Proc::spawn("standalone", cmd, dir.path().join("standalone.log"));
    let ready = wait_for(Duration::from_secs(30), || {
        matches!(http_get(&http, "/-/ready"), Ok((200, _))).then_some(())
    });
    assert!(
        ready.is_some(),
        "standalone not ready; log:\n{}",
        sa.log_text()
    );

    // No waiting from here on: ready means both the receiver and the bucket answer.
    let now = now_ms() / 1000 * 1000;
    let fresh = Labels::from_pairs([("__name__", "history_test"), ("id", "new")]).expect("labels");
    let (code, text) = remote_write(
        &rw,
        "/api/v1/receive",
        &[(fresh, vec![Sample { t: now, v: 7.0 }])],
        &[],
    )
    .expect("remote write to the standalone");
    assert_eq!(code, 200, "{text}");
    // A window from before the old blocks to now: every old sample plus the new one.
    let span = (now - old_start) / 1000 + 60;
    let (code, j) = api_json(
        &http,
        &format!(
            "/api/v1/query?query={}&time={}",
            e2e::promqlcmp::urlencode(&format!("sum(count_over_time(history_test[{span}s]))")),
            e2e::promqlcmp::secs(now)
        ),
    );
    assert_eq!(code, 200, "{j}");
    assert!(warnings(&j).is_empty(), "{j}");
    assert_eq!(
        single_value(&j),
        Some((want + 1) as f64),
        "old blocks from the bucket plus the fresh sample; log:\n{}",
        sa.log_text()
    );
}
