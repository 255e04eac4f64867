//! Whole compactor passes on a real (FILESYSTEM) bucket:
//! - two compactors sharing it through `--selector.relabel-config` `hashmod` shards:
//!   each compacts only the groups of its shard, both replicas of a tenant land on the
//!   same shard (the replica label is left out of the hash), together they compact all;
//! - `--deduplication.func=penalty` merging an HA pair with jittered timestamps;
//! - RF=2 replicas of a series holding native histograms (and floats before them),
//!   vertically compacted into one block with each sample once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use objstore::{Bucket, BucketConfig, MetaFetcher, Selector};
use storeapi::Sample;
use storeapi::dedup::penalty_dedup;
use storeapi::{Label, Labels};
use tsdb::block::{Block, BlockOptions, BlockWriter, DedupFunc};
use tsdb::chunk::{Chunk, Encoding, XorChunk};

use crate::{CompactConfig, CompactMetrics, Compactor};

const H: i64 = 3_600_000;
const REPLICA: &str = "receive_replica";
const TENANTS: [&str; 8] = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"];

fn t0() -> i64 {
    (1_700_000_000_000 / (48 * H)) * 48 * H
}

fn chunk(samples: &[(i64, f64)]) -> Chunk {
    let mut x = XorChunk::new();
    for &(t, v) in samples {
        x.append(t, v).unwrap();
    }
    Chunk {
        min_time: samples[0].0,
        max_time: samples[samples.len() - 1].0,
        encoding: Encoding::Xor,
        data: x.into_bytes().into(),
    }
}

/// One 2h block of one series (a sample a minute) uploaded as a receiver does.
async fn upload(bucket: &Bucket, scratch: &std::path::Path, tenant: &str, replica: &str, w: i64) {
    let (mint, maxt) = (t0() + w * 2 * H, t0() + (w + 1) * 2 * H);
    let samples: Vec<(i64, f64)> = (mint..maxt)
        .step_by(60_000)
        .map(|t| (t, (t / 60_000) as f64))
        .collect();
    upload_samples(bucket, scratch, tenant, replica, (mint, maxt), &samples).await;
}

async fn upload_samples(
    bucket: &Bucket,
    scratch: &std::path::Path,
    tenant: &str,
    replica: &str,
    (mint, maxt): (i64, i64),
    samples: &[(i64, f64)],
) {
    let chunks = samples.chunks(120).map(chunk).collect();
    let labels =
        Labels::from_sorted_unchecked(vec![Label::new("__name__", "up"), Label::new("job", "j")]);
    let meta = BlockWriter::write(
        scratch,
        mint,
        maxt,
        [(labels, chunks)],
        &BlockOptions::default(),
    )
    .unwrap();
    let ext: BTreeMap<String, String> = [
        ("tenant_id".to_string(), tenant.to_string()),
        (REPLICA.to_string(), replica.to_string()),
    ]
    .into();
    let dir = scratch.join(meta.ulid.to_string());
    objstore::block::upload_block(bucket, &dir, &ext, "receive")
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

fn compactor(bucket: &Bucket, data_dir: &std::path::Path, shard: u32) -> Arc<Compactor> {
    let selector = Selector::parse(&format!(
        "- action: hashmod\n  source_labels: [tenant_id, {REPLICA}]\n  modulus: 2\n  target_label: shard\n- action: keep\n  source_labels: [shard]\n  regex: '{shard}'\n"
    ))
    .unwrap();
    compactor_with(bucket, data_dir, selector, DedupFunc::OneToOne)
}

fn compactor_with(
    bucket: &Bucket,
    data_dir: &std::path::Path,
    selector: Selector,
    dedup: DedupFunc,
) -> Arc<Compactor> {
    let cfg = CompactConfig {
        data_dir: data_dir.to_path_buf(),
        consistency_delay: Duration::ZERO,
        delete_delay: Duration::from_secs(48 * 3600),
        retention: [Duration::ZERO; 3],
        replica_labels: vec![REPLICA.to_string()],
        concurrency: 1,
        downsampling: false,
        selector,
        dedup,
    };
    Arc::new(Compactor::new(
        bucket.clone(),
        cfg,
        CompactMetrics::default(),
    ))
}

/// Per tenant: (sources of the compactor-made blocks not marked for deletion, number of
/// uploaded blocks marked).
async fn state(bucket: &Bucket) -> BTreeMap<String, (Vec<BTreeSet<String>>, usize)> {
    let d = MetaFetcher::new(bucket.clone(), None)
        .fetch()
        .await
        .unwrap();
    let mut out: BTreeMap<String, (Vec<BTreeSet<String>>, usize)> = BTreeMap::new();
    for b in d.blocks.values() {
        let tenant = b.labels()["tenant_id"].clone();
        let e = out.entry(tenant).or_default();
        let t = b.meta.thanos.as_ref().unwrap();
        if t.source != "compactor" {
            e.1 += usize::from(b.deletion_mark.is_some());
        } else if b.deletion_mark.is_none() {
            // The compactor's outputs carry the writer's size hints.
            let st = b.meta.index_stats();
            assert!(st.series_max_size > 0 && st.chunk_max_size > 0, "{st:?}");
            e.0.push(b.sources().iter().map(|u| u.to_string()).collect());
        }
    }
    out
}

fn fs_bucket(dir: &std::path::Path) -> Bucket {
    let root = dir.join("bucket");
    std::fs::create_dir_all(&root).unwrap();
    let cfg = BucketConfig::parse(&format!(
        "type: FILESYSTEM\nconfig:\n  directory: {}\n",
        serde_json::Value::from(root.display().to_string())
    ))
    .unwrap();
    Bucket::new(&cfg, None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn penalty_dedup_merges_an_ha_pair_as_the_querier_would() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = fs_bucket(dir.path());
    let scratch = dir.path().join("scratch");
    let range = (t0(), t0() + 2 * H);
    // Replica 0 scrapes every 15 s and misses two minutes; replica 1 scrapes with up to
    // ±3 s jitter, 5 s later, with slightly different values.
    let r0: Vec<(i64, f64)> = (0..480)
        .filter(|k| !(200..208).contains(k))
        .map(|k| (t0() + k * 15_000, k as f64))
        .collect();
    let r1: Vec<(i64, f64)> = (0..479)
        .map(|k| {
            let jitter = ((k * 7919) % 6001) - 3000;
            (t0() + k * 15_000 + 5000 + jitter, k as f64 + 0.5)
        })
        .collect();
    upload_samples(&bucket, &scratch, "t", "0", range, &r0).await;
    upload_samples(&bucket, &scratch, "t", "1", range, &r1).await;
    let c = compactor_with(
        &bucket,
        &dir.path().join("c"),
        Selector::default(),
        DedupFunc::Penalty,
    );
    let r = c.run_once().await.unwrap();
    assert_eq!((r.compactions, r.failed_groups), (1, 0));
    let d = MetaFetcher::new(bucket.clone(), None)
        .fetch()
        .await
        .unwrap();
    let out: Vec<_> = d
        .blocks
        .values()
        .filter(|b| b.meta.thanos.as_ref().unwrap().source == "compactor")
        .collect();
    assert_eq!(out.len(), 1);
    let local = dir.path().join("read");
    objstore::block::download_block(&bucket, out[0].meta.ulid, &local)
        .await
        .unwrap();
    let block = Block::open(&local.join(out[0].meta.ulid.to_string())).unwrap();
    let series: Vec<_> = block.series_iter().unwrap().map(|s| s.unwrap()).collect();
    assert_eq!(series.len(), 1, "the two replicas became one series");
    let mut got = Vec::new();
    for c in &series[0].1 {
        got.extend(c.iter().unwrap().map(|s| s.unwrap()));
    }
    // The querier's dedup of the same replicas.
    let to = |v: &[(i64, f64)]| v.iter().map(|&(t, v)| Sample { t, v }).collect::<Vec<_>>();
    let want: Vec<(i64, f64)> = penalty_dedup(vec![to(&r0), to(&r1)], false)
        .into_iter()
        .map(|s| (s.t, s.v))
        .collect();
    assert_eq!(got, want);
    assert!(got.len() < r0.len() + 10 && got.iter().any(|s| s.1.fract() == 0.5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashmod_shards_split_groups_between_two_compactors() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = fs_bucket(dir.path());
    let scratch = dir.path().join("scratch");
    // 8 tenants × 2 replicas × 5 blocks of 2h: each tenant is one group (the replica
    // label is a dedup label) that compacts into one 8h block of the first 8 sources
    // and, the newest range being held back, one 2h block of the last two replicas.
    let mut sources: BTreeMap<String, Vec<BTreeSet<String>>> = BTreeMap::new();
    for tenant in TENANTS {
        for replica in ["0", "1"] {
            for w in 0..5 {
                upload(&bucket, &scratch, tenant, replica, w).await;
            }
        }
    }
    let d = MetaFetcher::new(bucket.clone(), None)
        .fetch()
        .await
        .unwrap();
    for b in d.blocks.values() {
        let e = sources.entry(b.labels()["tenant_id"].clone()).or_default();
        e.resize(2, BTreeSet::new());
        let newest = b.meta.min_time >= t0() + 8 * H;
        e[usize::from(newest)].insert(b.meta.ulid.to_string());
    }

    let a = compactor(&bucket, &dir.path().join("a"), 0);
    let ra = a.run_once().await.unwrap();
    let after_a = state(&bucket).await;
    let mut shard_a = BTreeSet::new();
    for tenant in TENANTS {
        let (mut made, marked) = after_a[tenant].clone();
        made.sort_by_key(|s| std::cmp::Reverse(s.len()));
        if made.is_empty() {
            // Not this shard's: untouched.
            assert_eq!(
                marked, 0,
                "{tenant}: shard 0 marked blocks of another shard"
            );
        } else {
            // This shard's: both replicas' blocks merged into exactly one block.
            assert_eq!(made, sources[tenant], "{tenant}");
            assert_eq!(marked, 10, "{tenant}");
            shard_a.insert(tenant);
        }
    }
    assert!(
        !shard_a.is_empty() && shard_a.len() < TENANTS.len(),
        "the hash should spread 8 tenants over both shards: {shard_a:?}"
    );
    assert_eq!(ra.failed_groups, 0);

    let b = compactor(&bucket, &dir.path().join("b"), 1);
    b.run_once().await.unwrap();
    let after_b = state(&bucket).await;
    for tenant in TENANTS {
        let (mut made, marked) = after_b[tenant].clone();
        made.sort_by_key(|s| std::cmp::Reverse(s.len()));
        assert_eq!(made, sources[tenant], "{tenant}");
        assert_eq!(marked, 10, "{tenant}");
    }
    // Shard 0's second pass finds nothing left to do.
    let again = a.run_once().await.unwrap();
    assert_eq!((again.compactions, again.failed_groups), (0, 0));
    assert_eq!(state(&bucket).await, after_b);
}

/// Replicas written by RF=2 receivers: a series that is a float gauge for its first
/// half hour, then an integer native histogram (a counter, reset once), and then a float
/// histogram; replica 1 misses 20 minutes. The compacted block must hold every sample
/// once, each in a chunk of its own encoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_replicas_compact_into_one_block_with_each_sample_once() {
    use storeapi::HistogramValue;
    use storeapi::histogram::{Histogram, Span};
    use tsdb::chunk::SeriesEncoder;

    #[derive(Debug, Clone, PartialEq)]
    enum V {
        F(f64),
        H(Histogram),
        FH(Histogram),
    }
    fn hist(count: u64) -> Histogram {
        let (a, b) = (count / 3, count - count / 3);
        Histogram {
            schema: 2,
            zero_threshold: 1e-128,
            count,
            sum: count as f64 * 1.25,
            positive_spans: vec![Span {
                offset: -1,
                length: 2,
            }],
            positive_buckets: vec![a as i64, b as i64 - a as i64],
            ..Default::default()
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let bucket = fs_bucket(dir.path());
    let scratch = dir.path().join("scratch");
    let (mint, maxt) = (t0(), t0() + 2 * H);
    let all: Vec<(i64, V)> = (0..480)
        .map(|k| {
            let t = mint + k * 15_000;
            let v = match k {
                0..120 => V::F(k as f64 * 0.5),
                120..300 => V::H(hist(if k < 200 { k as u64 } else { (k - 200) as u64 })),
                _ => V::FH(hist(k as u64)),
            };
            (t, v)
        })
        .collect();
    let gap = mint + 40 * 60_000..mint + 60 * 60_000;
    for (replica, samples) in [
        ("0", all.clone()),
        (
            "1",
            all.iter()
                .filter(|(t, _)| !gap.contains(t))
                .cloned()
                .collect(),
        ),
    ] {
        let mut e = SeriesEncoder::new();
        for (t, v) in &samples {
            match v {
                V::F(x) => e.append_float(*t, *x).unwrap(),
                V::H(h) => e.append_histogram(*t, h).unwrap(),
                V::FH(h) => e.append_float_histogram(*t, &h.to_float()).unwrap(),
            }
        }
        let labels = Labels::from_sorted_unchecked(vec![
            Label::new("__name__", "rpc_latency_seconds"),
            Label::new("job", "j"),
        ]);
        let meta = BlockWriter::write(
            &scratch,
            mint,
            maxt,
            [(labels, e.finish())],
            &BlockOptions::default(),
        )
        .unwrap();
        let ext: BTreeMap<String, String> = [
            ("tenant_id".to_string(), "t".to_string()),
            (REPLICA.to_string(), replica.to_string()),
        ]
        .into();
        let bdir = scratch.join(meta.ulid.to_string());
        objstore::block::upload_block(&bucket, &bdir, &ext, "receive")
            .await
            .unwrap();
    }
    let c = compactor_with(
        &bucket,
        &dir.path().join("c"),
        Selector::default(),
        DedupFunc::OneToOne,
    );
    let r = c.run_once().await.unwrap();
    assert_eq!((r.compactions, r.failed_groups), (1, 0));
    let d = MetaFetcher::new(bucket.clone(), None)
        .fetch()
        .await
        .unwrap();
    let out: Vec<_> = d
        .blocks
        .values()
        .filter(|b| b.meta.thanos.as_ref().unwrap().source == "compactor")
        .collect();
    assert_eq!(out.len(), 1);
    assert_eq!(
        d.blocks
            .values()
            .filter(|b| b.deletion_mark.is_some())
            .count(),
        2,
        "both replica blocks are marked for deletion"
    );
    assert_eq!(out[0].meta.stats.num_samples, all.len() as u64);
    let local = dir.path().join("read");
    objstore::block::download_block(&bucket, out[0].meta.ulid, &local)
        .await
        .unwrap();
    let block = Block::open(&local.join(out[0].meta.ulid.to_string())).unwrap();
    let series: Vec<_> = block.series_iter().unwrap().map(|s| s.unwrap()).collect();
    assert_eq!(series.len(), 1, "the two replicas became one series");
    let mut got: Vec<(i64, V)> = Vec::new();
    let mut encodings = Vec::new();
    for c in &series[0].1 {
        if encodings.last() != Some(&c.encoding) {
            encodings.push(c.encoding);
        }
        if c.encoding == Encoding::Xor {
            got.extend(c.iter().unwrap().map(|s| {
                let (t, v) = s.unwrap();
                (t, V::F(v))
            }));
            continue;
        }
        for s in c.iter_histograms().unwrap() {
            let s = s.unwrap();
            got.push(match s.h {
                HistogramValue::Int(mut h) => {
                    h.hint = Default::default();
                    (s.t, V::H(*h))
                }
                HistogramValue::Float(h) => {
                    // Compare as the integer histogram it was written from.
                    let want = hist(h.count as u64).to_float();
                    assert!(h.equals(&want), "{h:?}");
                    (s.t, V::FH(hist(h.count as u64)))
                }
            });
        }
    }
    assert_eq!(got.len(), all.len());
    assert_eq!(got, all, "every sample once, in order");
    assert_eq!(
        encodings,
        [Encoding::Xor, Encoding::Histogram, Encoding::FloatHistogram]
    );
}
