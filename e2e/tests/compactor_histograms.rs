//! Vertical compaction of native histograms made by the real Prometheus 3.5.3 (issue
//! #17): Prometheus scrapes integer exponential histograms, custom-bucket histograms
//! (NHCB) and records float histograms; its TSDB snapshot is uploaded twice, as the two
//! replicas RF=2 receivers would upload (`receive_replica` 0 and 1, each copy its own
//! ULID and source). `orrery compact --deduplication.replica-label=receive_replica`
//! merges each overlapping pair into one block (HISTOGRAM, FLOAT_HISTOGRAM and XOR chunks
//! decoded, deduplicated 1:1 and re-encoded); the replicas are deleted. Then `orrery
//! store` + `orrery query` over the compacted blocks alone must answer histogram queries
//! (raw histograms, `rate`, `histogram_*`, `sum by`, custom buckets, float histograms)
//! exactly as Prometheus answers over its own data — so every sample is there once.

mod store_common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use e2e::histograms::{
    compare_histogram_queries, generate_traffic, serve_classic_histogram, snapshot,
    start_native_histogram_prometheus,
};
use e2e::promqlcmp::{secs, urlencode};
use e2e::{Proc, copy_dir, free_port, http_get, orrery_bin, wait_for};
use objstore::{Bucket, BucketConfig, MetaFetcher};
use store_common::{Query, Store};
use tsdb::block::{Block, Ulid, list_blocks};
use tsdb::chunk::Encoding;

const REPLICA: &str = "receive_replica";

/// Copies the block in `from` under a fresh ULID (its own source, as a second receiver's
/// block of the same samples would be) into `scratch`; returns the new directory.
fn copy_as_new_block(from: &std::path::Path, scratch: &std::path::Path) -> std::path::PathBuf {
    let id = Ulid::new();
    let to = scratch.join(id.to_string());
    copy_dir(from, &to);
    let path = to.join("meta.json");
    let text = std::fs::read_to_string(&path).expect("read meta.json");
    let mut meta: serde_json::Value = serde_json::from_str(&text).expect("meta.json is JSON");
    meta["ulid"] = id.to_string().into();
    meta["compaction"]["sources"] = serde_json::json!([id.to_string()]);
    std::fs::write(&path, serde_json::to_vec_pretty(&meta).expect("json")).expect("write meta");
    to
}

fn wait_exit(p: &mut Proc, timeout: Duration) -> std::process::ExitStatus {
    p.wait_exit(timeout).unwrap_or_else(|| {
        panic!(
            "orrery compact did not finish in {timeout:?}:\n{}",
            p.log_text()
        )
    })
}

#[test]
fn prometheus_histogram_replicas_compact_into_blocks_answering_as_prometheus() {
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
    let scratch = dir.path().join("scratch");
    let blocks = list_blocks(&snap).expect("snapshot blocks");
    assert!(!blocks.is_empty(), "empty snapshot at {}", snap.display());
    let (mut mint, mut maxt) = (i64::MAX, i64::MIN);
    let mut input_samples = 0u64;
    for b in &blocks {
        for replica in ["0", "1"] {
            let copy = copy_as_new_block(&b.dir, &scratch);
            let labels = BTreeMap::from([
                ("cluster".to_string(), "golden".to_string()),
                (REPLICA.to_string(), replica.to_string()),
            ]);
            let meta = rt
                .block_on(objstore::block::upload_block(
                    &bucket, &copy, &labels, "receive",
                ))
                .expect("upload replica block");
            mint = mint.min(meta.min_time);
            maxt = maxt.max(meta.max_time);
            if replica == "0" {
                input_samples += meta.stats.num_samples;
            }
        }
    }

    // One pass compacts; a second one (delete delay 0s) deletes the marked replicas.
    let data_dir = dir.path().join("compact-data");
    for pass in 0..2 {
        let mut cmd = Command::new(orrery_bin());
        cmd.args([
            "compact".to_string(),
            format!("--objstore.config={objstore}"),
            format!("--data-dir={}", data_dir.display()),
            "--consistency-delay=0s".to_string(),
            "--delete-delay=0s".to_string(),
            "--downsampling.disable".to_string(),
            format!("--deduplication.replica-label={REPLICA}"),
            format!("--http-address=127.0.0.1:{}", free_port()),
        ]);
        let mut p = Proc::spawn(
            "orrery compact",
            cmd,
            dir.path().join(format!("compact-{pass}.log")),
        );
        let st = wait_exit(&mut p, Duration::from_secs(300));
        assert!(
            st.success(),
            "orrery compact failed ({st}):\n{}",
            p.log_text()
        );
    }
    let d = rt
        .block_on(MetaFetcher::new(bucket.clone(), None).fetch())
        .expect("discovery");
    assert!(!d.blocks.is_empty(), "no blocks left");
    let sources: usize = d.blocks.values().map(|b| b.sources().len()).sum();
    assert_eq!(
        sources,
        2 * blocks.len(),
        "each compacted block comes from both replicas' blocks"
    );
    let mut out_samples = 0u64;
    let mut encodings = std::collections::BTreeSet::new();
    for (id, b) in &d.blocks {
        let thanos = b.meta.thanos.as_ref().expect("thanos section");
        assert_eq!(
            thanos.source, "compactor",
            "block {id} was not compacted (or its replica not deleted)"
        );
        assert!(
            !b.labels().contains_key(REPLICA),
            "replica label left on {id}"
        );
        assert!(
            b.meta.compaction.level >= 2,
            "{id}: {:?}",
            b.meta.compaction
        );
        out_samples += b.meta.stats.num_samples;
        let local = dir.path().join("read");
        rt.block_on(objstore::block::download_block(&bucket, *id, &local))
            .expect("download");
        let bd = local.join(id.to_string());
        tsdb::block::verify_block(&bd).expect("compacted block verifies");
        let blk = Block::open(&bd).expect("open");
        for s in blk.series_iter().expect("series") {
            for c in s.expect("series entry").1 {
                encodings.insert(format!("{:?}", c.encoding));
            }
        }
    }
    assert_eq!(
        out_samples, input_samples,
        "the compacted blocks hold each of one replica's samples once"
    );
    for e in [Encoding::Xor, Encoding::Histogram, Encoding::FloatHistogram] {
        assert!(
            encodings.contains(&format!("{e:?}")),
            "no {e:?} chunk in the compacted blocks: {encodings:?}"
        );
    }

    let store = Store::start(
        &objstore,
        &dir.path().join("store"),
        &dir.path().join("store.log"),
        &[],
    );
    let query = Query::start(&[&store.grpc], &dir.path().join("query.log"), &[]);
    let qhttp = query.http.clone();

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
        "the querier never saw the compacted blocks; query log:\n{}\nstore log:\n{}",
        query.proc.log_text(),
        store.proc.log_text()
    );
    let cmp = compare_histogram_queries(&prom.addr(), &qhttp, start, end, &["cluster"], None);
    cmp.assert_clean();
    drop(query);
    drop(store);
}
