//! The store gateway when the bucket misbehaves (issue #16), against a real S3 server
//! (moto) behind a relay that can refuse, cut and hold connections:
//! - a corrupt index object: an error (warning) for that block only, the others are
//!   served, the metric and the log name it; once repaired it is served again;
//! - the bucket down before a query, and cut in the middle of one: a warning with
//!   partial response, an error without, and never an answer later than the querier's
//!   per-store timeout;
//! - a block deleted under the running gateway: the others still answer, and the next
//!   sync drops it (no warning any more).

mod store_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::s3::{MotoServer, S3Gate};
use e2e::wait_for;
use store_common::{
    Query, Store, api_json, metric, promtool_blocks_uploaded, single_value, warnings,
};

const BUCKET: &str = "orrery";
const HOUR: i64 = 3_600_000;
/// The querier's per-store timeout in this test.
const STORE_TIMEOUT: Duration = Duration::from_secs(4);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn s3_config(endpoint: &str) -> String {
    format!(
        "type: S3\nconfig:\n  bucket: {BUCKET}\n  endpoint: {endpoint}\n  insecure: true\n  access_key: test\n  secret_key: test\n"
    )
}

/// Blocks of `fault_test` (4 series at 15 s over `[start, end)`) made by promtool and
/// uploaded to the bucket; returns ULID → samples in that block.
fn upload_blocks(dir: &Path, objstore: &str, start: i64, end: i64) -> BTreeMap<String, u64> {
    let mut om = String::from("# HELP fault_test Test data.\n# TYPE fault_test gauge\n");
    for s in 0..4 {
        let mut t = start;
        while t < end {
            om.push_str(&format!(
                "fault_test{{id=\"{s}\"}} {} {}\n",
                t % 977,
                t / 1000
            ));
            t += 15_000;
        }
    }
    om.push_str("# EOF\n");
    let input = dir.join("fault.om");
    std::fs::write(&input, om).expect("write openmetrics");
    let blocks = dir.join("blocks");
    promtool_blocks_uploaded(&input, &blocks, objstore, "cluster=\"eu\"");
    let mut by_block = BTreeMap::new();
    for e in std::fs::read_dir(&blocks).expect("promtool output") {
        let e = e.expect("dir entry");
        let Ok(meta) = std::fs::read(e.path().join("meta.json")) else {
            continue;
        };
        let m: serde_json::Value = serde_json::from_slice(&meta).expect("meta.json");
        by_block.insert(
            e.file_name().to_string_lossy().to_string(),
            m["stats"]["numSamples"].as_u64().expect("numSamples"),
        );
    }
    by_block
}

/// `sum(count_over_time(fault_test[..]))` over all the data: (HTTP status, answer,
/// seconds taken).
fn count_all(q: &Query, at: i64, span_s: i64, partial: bool) -> (u16, serde_json::Value, f64) {
    let t = Instant::now();
    let (code, j) = api_json(
        &q.http,
        &format!(
            "/api/v1/query?query={}&time={}&partial_response={partial}",
            e2e::promqlcmp::urlencode(&format!("sum(count_over_time(fault_test[{span_s}s]))")),
            e2e::promqlcmp::secs(at)
        ),
    );
    (code, j, t.elapsed().as_secs_f64())
}

#[test]
fn gateway_faults_give_warnings_or_errors_for_the_broken_part_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let moto = MotoServer::start(dir.path());
    moto.create_bucket(BUCKET);
    // 5 hours ending 30 minutes before a 2h boundary in the past: promtool cuts 3 blocks.
    let end = (now_ms() - 4 * HOUR).div_euclid(2 * HOUR) * 2 * HOUR - HOUR / 2;
    let start = end - 5 * HOUR;
    let blocks = upload_blocks(dir.path(), &s3_config(&moto.addr()), start, end);
    assert!(blocks.len() >= 3, "promtool made {blocks:?}");
    let total: u64 = blocks.values().sum();
    let ids: Vec<&String> = blocks.keys().collect();
    let (corrupt, deleted) = (ids[0].clone(), ids[1].clone());

    // A corrupt index object (the gateway has not read it yet).
    let good_index = moto.get(BUCKET, &format!("{corrupt}/index"));
    let mut bad = good_index.clone();
    for b in bad.iter_mut().skip(5) {
        *b ^= 0x5a;
    }
    moto.put(BUCKET, &format!("{corrupt}/index"), &bad);

    let gate = S3Gate::start(&moto.addr());
    let store = Store::start(
        &s3_config(&gate.addr()),
        &dir.path().join("store"),
        &dir.path().join("store.log"),
        // Every query reads its chunks from the bucket, so an outage is seen.
        &["--sync-block-duration=1s", "--store.chunk-cache-size=0"],
    );
    let q = Query::start(
        &[store.grpc.as_str()],
        &dir.path().join("query.log"),
        &[&format!(
            "--store.response-timeout={}s",
            STORE_TIMEOUT.as_secs()
        )],
    );
    let at = end + 60_000;
    let span = (end - start) / 1000 + 120;
    let seen = wait_for(Duration::from_secs(20), || {
        let (_, j, _) = count_all(&q, at, span, true);
        single_value(&j)
    });
    assert!(
        seen.is_some(),
        "querier never got an answer from the gateway"
    );

    // 1. Corrupt index: that block is missing (warning naming it), the others served.
    let (code, j, _) = count_all(&q, at, span, true);
    assert_eq!(code, 200, "{j}");
    assert_eq!(
        single_value(&j),
        Some((total - blocks[&corrupt]) as f64),
        "all but the corrupt block: {j}"
    );
    let w = warnings(&j);
    assert!(
        w.iter().any(|w| w.contains(&corrupt)),
        "no warning names the corrupt block {corrupt}: {w:?}"
    );
    assert!(
        w.iter().all(|w| !w.contains(&deleted)),
        "only the corrupt block is reported: {w:?}"
    );
    // Without partial response it is an error.
    let (code, j, _) = count_all(&q, at, span, false);
    assert!(code >= 400, "partial response off: {code} {j}");
    assert!(j["error"].as_str().unwrap_or("").contains(&corrupt), "{j}");
    let m = store.metrics();
    assert!(
        metric(&m, "orrery_store_block_read_failures_total") >= 2.0,
        "{m}"
    );
    assert!(
        store
            .proc
            .log_text()
            .lines()
            .any(|l| l.contains("block unreadable") && l.contains(&corrupt)),
        "the log names the block:\n{}",
        store.proc.log_text()
    );
    // Repaired: served again (the bad local copy was not kept).
    moto.put(BUCKET, &format!("{corrupt}/index"), &good_index);
    let (_, j, _) = count_all(&q, at, span, true);
    assert_eq!(single_value(&j), Some(total as f64), "{j}");
    assert!(warnings(&j).is_empty(), "{j}");

    // 2. The bucket down before a query: a warning (partial response) or an error,
    // within the per-store timeout.
    gate.close();
    let (code, j, secs) = count_all(&q, at, span, true);
    assert_eq!(code, 200, "{j}");
    assert!(!warnings(&j).is_empty(), "bucket down, no warning: {j}");
    assert!(single_value(&j).is_none_or(|v| v < total as f64), "{j}");
    assert!(
        secs < STORE_TIMEOUT.as_secs_f64() + 3.0,
        "answer took {secs:.1}s with the bucket down"
    );
    let (code, j, secs) = count_all(&q, at, span, false);
    assert!(code >= 400, "bucket down, partial response off: {code} {j}");
    assert!(!j["error"].as_str().unwrap_or("").is_empty(), "{j}");
    assert!(secs < STORE_TIMEOUT.as_secs_f64() + 3.0, "took {secs:.1}s");
    gate.open();
    let back = wait_for(Duration::from_secs(20), || {
        let (_, j, _) = count_all(&q, at, span, true);
        (single_value(&j) == Some(total as f64) && warnings(&j).is_empty()).then_some(())
    });
    assert!(
        back.is_some(),
        "not served again after the bucket came back"
    );

    // 3. The bucket cut in the middle of a query: chunk reads held, then the
    // connections cut and refused.
    gate.stall("/chunks/");
    let qh = q.http.clone();
    let running = std::thread::spawn(move || {
        let t = Instant::now();
        let (code, body) = e2e::http_get(
            &qh,
            &format!(
                "/api/v1/query?query={}&time={}",
                e2e::promqlcmp::urlencode(&format!("sum(count_over_time(fault_test[{span}s]))")),
                e2e::promqlcmp::secs(at)
            ),
        )
        .expect("query during the outage");
        (code, body, t.elapsed().as_secs_f64())
    });
    let stalled = wait_for(Duration::from_secs(10), || {
        gate.requests()
            .iter()
            .any(|r| r.path.contains("/chunks/"))
            .then_some(())
    });
    assert!(stalled.is_some(), "the query never reached the chunks");
    gate.close();
    let (code, body, secs) = running.join().expect("query thread");
    gate.release();
    gate.open();
    let j: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(code, 200, "{body}");
    assert!(
        !warnings(&j).is_empty(),
        "cut mid-query, no warning: {body}"
    );
    assert!(
        secs < STORE_TIMEOUT.as_secs_f64() + 3.0,
        "answer took {secs:.1}s with the bucket cut mid-query"
    );

    // 4. A block deleted under the running gateway: its chunks first (the index is
    // already local) — the others still answer, with a warning naming it...
    let objects = moto.list(BUCKET);
    for (key, _) in objects
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{deleted}/chunks/")))
    {
        moto.delete(BUCKET, key);
    }
    let (code, j, _) = count_all(&q, at, span, true);
    assert_eq!(code, 200, "{j}");
    assert_eq!(
        single_value(&j),
        Some((total - blocks[&deleted]) as f64),
        "{j}"
    );
    assert!(
        warnings(&j).iter().any(|w| w.contains(&deleted)),
        "no warning names the deleted block: {j}"
    );
    // ...then the rest of it: the next sync drops the block, no warning any more.
    for (key, _) in objects
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{deleted}/")))
    {
        if !key.contains("/chunks/") {
            moto.delete(BUCKET, key);
        }
    }
    let dropped = wait_for(Duration::from_secs(20), || {
        let m = store.metrics();
        (metric(&m, "thanos_blocks_meta_synced{state=\"loaded\"}") == (blocks.len() - 1) as f64)
            .then_some(())
    });
    assert!(
        dropped.is_some(),
        "the gateway still serves the deleted block:\n{}",
        store.metrics()
    );
    let (_, j, _) = count_all(&q, at, span, true);
    assert_eq!(
        single_value(&j),
        Some((total - blocks[&deleted]) as f64),
        "{j}"
    );
    assert!(warnings(&j).is_empty(), "{j}");
    assert!(
        !dir.path().join("store").join(&deleted).exists(),
        "local copy of the dropped block kept"
    );
}
