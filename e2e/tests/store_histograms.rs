//! Native histograms written by the real Prometheus 3.5.3, read back through Orrery
//! (issue #20): Prometheus scrapes integer exponential histograms, custom-bucket
//! histograms (NHCB) and records float histograms; its TSDB snapshot (head included) is
//! uploaded to a FILESYSTEM bucket; `orrery store` serves the blocks' HISTOGRAM and
//! FLOAT_HISTOGRAM chunks as they are and `orrery query` evaluates them. Histogram
//! queries — raw histograms in the API's `histogram`/`histograms` JSON, `rate`,
//! `histogram_count`/`sum`/`avg`/`quantile`/`fraction`, `sum by`, custom buckets, float
//! histograms — answer as Prometheus itself answers over its own data, instant and range.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use e2e::histograms::{
    compare_histogram_queries, generate_traffic, serve_classic_histogram, snapshot,
    start_native_histogram_prometheus,
};
use e2e::promqlcmp::{secs, urlencode};
use e2e::{Proc, free_port, http_get, orrery_bin, wait_for};
use objstore::{Bucket, BucketConfig};
use tsdb::block::list_blocks;

#[test]
fn prometheus_native_histograms_answer_alike_through_store_and_query() {
    let (classic_port, _) = serve_classic_histogram();
    let (prom, _rules) = start_native_histogram_prometheus(classic_port, "", &[]);
    generate_traffic(&prom.addr(), 40);
    let snap = snapshot(&prom);

    let dir = tempfile::tempdir().expect("temp dir");
    let bucket_dir = dir.path().join("bucket");
    std::fs::create_dir_all(&bucket_dir).expect("bucket dir");
    let objstore = format!(
        "type: FILESYSTEM\nconfig:\n  directory: {}\n",
        bucket_dir.display()
    );
    let bucket =
        Bucket::new(&BucketConfig::parse(&objstore).expect("config"), None).expect("bucket");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let labels = BTreeMap::from([("cluster".to_string(), "golden".to_string())]);
    let mut maxt = i64::MIN;
    let mut mint = i64::MAX;
    let blocks = list_blocks(&snap).expect("snapshot blocks");
    assert!(!blocks.is_empty(), "empty snapshot at {}", snap.display());
    for b in &blocks {
        let meta = rt
            .block_on(objstore::block::upload_block(
                &bucket, &b.dir, &labels, "sidecar",
            ))
            .expect("upload snapshot block");
        maxt = maxt.max(meta.max_time);
        mint = mint.min(meta.min_time);
    }

    let (grpc, shttp, qhttp) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut cmd = Command::new(orrery_bin());
    cmd.args([
        "store".to_string(),
        format!("--objstore.config={objstore}"),
        format!("--data-dir={}", dir.path().join("store").display()),
        format!("--grpc-address={grpc}"),
        format!("--http-address={shttp}"),
    ]);
    let store = Proc::spawn("orrery-store", cmd, dir.path().join("store.log"));
    let mut cmd = Command::new(orrery_bin());
    cmd.args([
        "query".to_string(),
        format!("--http-address={qhttp}"),
        format!("--grpc-address=127.0.0.1:{}", free_port()),
        format!("--endpoint={grpc}"),
    ]);
    let query = Proc::spawn("orrery-query", cmd, dir.path().join("query.log"));

    // Evaluate where both hold the same samples: inside the snapshot, a minute in.
    let end = maxt - 2_000;
    let start = (mint + 60_000).min(end - 10_000);
    let probe = format!(
        "/api/v1/query?query={}&time={}",
        urlencode("count(prometheus_http_request_duration_seconds)"),
        secs(end)
    );
    let seen = wait_for(Duration::from_secs(60), || {
        let (code, body) = http_get(&qhttp, &probe).ok()?;
        (code == 200 && body.contains("\"result\":[{")).then_some(())
    });
    assert!(
        seen.is_some(),
        "the querier never saw the snapshot; query log:\n{}\nstore log:\n{}",
        query.log_text(),
        store.log_text()
    );

    let cmp = compare_histogram_queries(&prom.addr(), &qhttp, start, end, &["cluster"], None);
    cmp.assert_clean();
    drop(query);
    drop(store);
}
