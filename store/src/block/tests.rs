//! The ranged read path against the full-index path on the same blocks: what the
//! gateway answers through index-headers and ranged GETs must equal what
//! `tsdb::block` answers from the whole index.

use std::path::Path;

use objstore::BucketConfig;
use storeapi::{MatchOp, Matcher};
use tsdb::block::index::IndexReader;
use tsdb::block::{BlockOptions, BlockWriter};
use tsdb::chunk::{Encoding, XorChunk};

use super::*;

const T0: i64 = 1_700_000_000_000;

fn chunk(t: i64, v: f64) -> Chunk {
    let mut c = XorChunk::new();
    c.append(t, v).unwrap();
    c.append(t + 15_000, v + 1.0).unwrap();
    Chunk {
        min_time: t,
        max_time: t + 15_000,
        encoding: Encoding::Xor,
        data: Bytes::from(c.into_bytes()),
    }
}

/// `n` series: `__name__` of three metrics, `instance`, `job` even/odd, and `opt` on
/// every third series only (so matchers on a label some series lack are exercised).
fn write_block(bucket_dir: &Path, n: usize) -> BlockMeta {
    let mut series: Vec<(Labels, Vec<Chunk>)> = (0..n)
        .map(|i| {
            let mut pairs = vec![
                ("__name__", format!("metric_{}", i % 3)),
                ("instance", format!("host-{i}")),
                ("job", if i % 2 == 0 { "even" } else { "odd" }.to_string()),
            ];
            if i % 3 == 0 {
                pairs.push(("opt", format!("o{}", i % 4)));
            }
            let l = Labels::from_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str()))).unwrap();
            (l, vec![chunk(T0 + i as i64, i as f64)])
        })
        .collect();
    series.sort_by(|a, b| a.0.cmp(&b.0));
    BlockWriter::write(
        bucket_dir,
        T0,
        T0 + 3_600_000,
        series,
        &BlockOptions::default(),
    )
    .unwrap()
}

fn bucket(dir: &Path) -> Bucket {
    Bucket::new(&BucketConfig::filesystem(dir), None).unwrap()
}

struct Env {
    metrics: StoreMetrics,
    index_cache: IndexCache,
    chunk_cache: ChunkCache,
    inflight: InflightBytes,
}

impl Env {
    fn new(cache: usize) -> Env {
        Env {
            metrics: StoreMetrics::default(),
            index_cache: IndexCache::new(cache),
            chunk_cache: ChunkCache::new(cache),
            inflight: InflightBytes::new(1 << 20),
        }
    }

    fn ctx<'a>(&'a self, fetched: &'a Fetched) -> ReadCtx<'a> {
        ReadCtx {
            metrics: &self.metrics,
            index_cache: &self.index_cache,
            chunk_cache: &self.chunk_cache,
            fetched,
            inflight: &self.inflight,
        }
    }
}

fn m(op: MatchOp, n: &str, v: &str) -> Matcher {
    Matcher::new(op, n, v).unwrap()
}

fn matcher_table() -> Vec<Vec<Matcher>> {
    use MatchOp::*;
    vec![
        vec![],
        vec![m(Equal, "__name__", "metric_1")],
        vec![m(Equal, "__name__", "metric_1"), m(NotEqual, "job", "even")],
        vec![m(RegexMatch, "instance", "host-1.*")],
        vec![
            m(RegexNoMatch, "instance", "host-1.*"),
            m(Equal, "__name__", "metric_0"),
        ],
        vec![m(Equal, "__name__", "metric_2"), m(Equal, "opt", "")],
        vec![m(Equal, "__name__", "metric_0"), m(NotEqual, "opt", "")],
        vec![m(RegexMatch, "opt", ".*"), m(Equal, "job", "odd")],
        vec![m(RegexMatch, "opt", "o1|"), m(Equal, "job", "even")],
        vec![m(Equal, "missing", "x")],
        vec![m(NotEqual, "missing", "x"), m(Equal, "job", "odd")],
        vec![m(Equal, "missing", ""), m(RegexMatch, "__name__", ".+")],
        vec![m(RegexNoMatch, "opt", "o0|o2")],
        vec![
            m(Equal, "job", "odd"),
            m(RegexMatch, "instance", "host-(2|3|5|7)"),
        ],
        vec![m(Equal, "job", "odd"), m(Equal, "job", "even")],
        vec![m(NotEqual, "instance", "host-3")],
    ]
}

#[tokio::test]
async fn ranged_reads_equal_the_full_index() {
    let dir = tempfile::tempdir().unwrap();
    let meta = write_block(dir.path(), 300);
    let full = IndexReader::new(Bytes::from(
        std::fs::read(dir.path().join(meta.ulid.to_string()).join("index")).unwrap(),
    ))
    .unwrap();
    let data = dir.path().join("data");
    let b = StoreBlock::new(meta, &data, bucket(dir.path()));
    // Cold without a cache, then cold and warm with one: all the same.
    for env in [Env::new(0), Env::new(64 << 20)] {
        for _ in 0..2 {
            let f = Fetched::default();
            let ctx = env.ctx(&f);
            let hdr = b.header(&env.metrics).await.unwrap();
            assert_eq!(hdr.postings.label_names(), full.label_names());
            for n in full.label_names() {
                assert_eq!(hdr.postings.label_values(&n), full.label_values(&n));
            }
            for ms in matcher_table() {
                let want = tsdb::block::postings_for_matchers(&full, &ms).unwrap();
                let got = b.postings(&hdr, &ms, ctx).await.unwrap();
                assert_eq!(got, want, "postings for {ms:?}");
                let series = b.series(&hdr, &got, ctx).await.unwrap();
                let want_series: Vec<_> = want.iter().map(|&id| full.series(id).unwrap()).collect();
                assert_eq!(series, want_series, "series for {ms:?}");
                assert_eq!(
                    b.label_names(&ms, ctx).await.unwrap(),
                    tsdb::block::label_names(&full, &ms).unwrap(),
                    "label names for {ms:?}"
                );
                for name in ["__name__", "job", "opt", "missing"] {
                    assert_eq!(
                        b.label_values(name, &ms, ctx).await.unwrap(),
                        tsdb::block::label_values(&full, name, &ms).unwrap(),
                        "label values of {name} for {ms:?}"
                    );
                }
            }
        }
        let hits = env
            .metrics
            .index_cache_hits
            .get_or_create(&crate::metrics::ItemTypeLabel {
                item_type: "Postings".into(),
            })
            .get();
        assert_eq!(
            hits > 0,
            env.index_cache.bytes() > 0,
            "cache used iff enabled"
        );
    }
    // Chunks through ranged reads equal the block's own.
    let f = Fetched::default();
    let env = Env::new(0);
    let hdr = b.header(&env.metrics).await.unwrap();
    let odd = [m(MatchOp::Equal, "job", "odd")];
    let ids = b.postings(&hdr, &odd, env.ctx(&f)).await.unwrap();
    let series = b.series(&hdr, &ids, env.ctx(&f)).await.unwrap();
    let refs: Vec<(u64, i64, i64)> = series
        .iter()
        .flat_map(|(_, c)| c.iter().map(|c| (c.chunk_ref, c.min_time, c.max_time)))
        .collect();
    let chunks = b.chunks(&refs, env.ctx(&f)).await.unwrap();
    let blk = tsdb::block::Block::open(&dir.path().join(b.id().to_string())).unwrap();
    let want: Vec<Chunk> = blk
        .select(&odd, i64::MIN, i64::MAX)
        .unwrap()
        .into_iter()
        .flat_map(|(_, c)| c)
        .collect();
    assert_eq!(chunks, want);
    assert!(f.chunks.load(Ordering::Relaxed) > 0);
    // The header built once for the block, persisted.
    assert!(b.header_path().is_file());
}

#[tokio::test]
async fn header_is_reused_after_restart_and_rebuilt_when_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let meta = write_block(dir.path(), 50);
    let data = dir.path().join("data");
    let bkt = bucket(dir.path());
    // A whole-index copy left by an older version goes away on first use.
    let old = data.join(meta.ulid.to_string()).join("index");
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::write(&old, b"old full index copy").unwrap();

    let env = Env::new(0);
    let b = StoreBlock::new(meta.clone(), &data, bkt.clone());
    assert!(!b.header_loaded());
    let names = b
        .label_names(&[], env.ctx(&Fetched::default()))
        .await
        .unwrap();
    assert_eq!(names, vec!["__name__", "instance", "job", "opt"]);
    assert_eq!(env.metrics.header_builds.get(), 1);
    assert!(!old.exists(), "old index copy kept");
    let path = b.header_path();
    let built = std::fs::read(&path).unwrap();

    // "Restart": a new block object opens the file; nothing is built.
    let env = Env::new(0);
    let b = StoreBlock::new(meta.clone(), &data, bkt.clone());
    let again = b.label_names(&[], env.ctx(&Fetched::default())).await;
    assert_eq!(again.unwrap(), names);
    assert_eq!(env.metrics.header_builds.get(), 0);

    // A corrupt file (one byte inside the postings offset table flipped) is rebuilt.
    let mut bad = built.clone();
    let at = bad.len() - 40;
    bad[at] ^= 0x10;
    std::fs::write(&path, &bad).unwrap();
    let env = Env::new(0);
    let b = StoreBlock::new(meta, &data, bkt);
    let again = b.label_names(&[], env.ctx(&Fetched::default())).await;
    assert_eq!(again.unwrap(), names);
    assert_eq!(env.metrics.header_rebuilds.get(), 1);
    assert_eq!(env.metrics.header_builds.get(), 1);
    assert_eq!(std::fs::read(&path).unwrap(), built);
}

#[tokio::test]
async fn corrupt_index_fails_that_block_only_and_is_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let good_meta = write_block(dir.path(), 20);
    let bad_meta = write_block(dir.path(), 20);
    let index = dir.path().join(bad_meta.ulid.to_string()).join("index");
    let good_index = std::fs::read(&index).unwrap();
    let mut bad = good_index.clone();
    for x in bad.iter_mut().skip(5) {
        *x ^= 0x5a;
    }
    std::fs::write(&index, &bad).unwrap();

    let data = dir.path().join("data");
    let env = Env::new(0);
    let ms = [m(MatchOp::Equal, "job", "odd")];
    let good = StoreBlock::new(good_meta, &data, bucket(dir.path()));
    let broken = StoreBlock::new(bad_meta, &data, bucket(dir.path()));
    async fn read(b: &StoreBlock, env: &Env, ms: &[Matcher]) -> Result<Vec<String>, ReadError> {
        let f = Fetched::default();
        b.guarded(&env.metrics, b.label_values("instance", ms, env.ctx(&f)))
            .await
    }
    assert_eq!(read(&good, &env, &ms).await.unwrap().len(), 10);
    let e = read(&broken, &env, &ms).await.unwrap_err();
    assert!(matches!(e, ReadError::Index { .. }), "{e}");
    assert!(e.to_string().contains(&broken.id().to_string()), "{e}");
    assert!(
        !broken.header_path().exists(),
        "a header of a bad index was kept"
    );
    // Asked again: the remembered error, nothing fetched or built.
    let e = read(&broken, &env, &ms).await.unwrap_err();
    assert!(matches!(e, ReadError::Remembered { .. }), "{e}");
    assert!(e.to_string().contains(&broken.id().to_string()), "{e}");
    assert_eq!(env.metrics.remembered_failures.get(), 1);
    assert_eq!(env.metrics.header_builds.get(), 1);
    assert_eq!(read(&good, &env, &ms).await.unwrap().len(), 10);
    // The object repaired (a new modification time): served again.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&index, &good_index).unwrap();
    assert_eq!(read(&broken, &env, &ms).await.unwrap().len(), 10);
}

#[tokio::test]
async fn one_series_query_fetches_far_less_than_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let meta = write_block(dir.path(), 20_000);
    let index_size = std::fs::metadata(dir.path().join(meta.ulid.to_string()).join("index"))
        .unwrap()
        .len();
    let b = StoreBlock::new(meta, &dir.path().join("data"), bucket(dir.path()));
    let env = Env::new(0);
    let f = Fetched::default();
    let ctx = env.ctx(&f);
    let hdr = b.header(&env.metrics).await.unwrap();
    let one = [m(MatchOp::Equal, "instance", "host-12345")];
    let ids = b.postings(&hdr, &one, ctx).await.unwrap();
    assert_eq!(ids.len(), 1);
    let s = b.series(&hdr, &ids, ctx).await.unwrap();
    assert_eq!(s[0].0.get("instance"), Some("host-12345"));
    let postings = f.postings.load(Ordering::Relaxed);
    let series = f.series.load(Ordering::Relaxed);
    // One 1-entry postings list (plus alignment) and one series estimate.
    assert!(postings <= 64, "postings bytes {postings}");
    assert!(series <= SERIES_ESTIMATE, "series bytes {series}");
    assert!(
        (postings + series) * 20 < index_size,
        "fetched {} of a {index_size}-byte index",
        postings + series
    );
    assert_eq!(env.metrics.series_refetches.get(), 0);
}

#[tokio::test]
async fn series_longer_than_the_estimate_are_refetched() {
    let dir = tempfile::tempdir().unwrap();
    let mut meta = write_block(dir.path(), 30);
    // A meta claiming tiny series entries: a read of the last wanted entry is too
    // short and refetched (the ones before lie inside the merged range).
    let mut thanos = tsdb::block::ThanosMeta::new(Default::default(), "test");
    thanos.extra.insert(
        "index_stats".into(),
        serde_json::json!({ "series_max_size": 3 }),
    );
    meta.thanos = Some(thanos);
    let full = IndexReader::new(Bytes::from(
        std::fs::read(dir.path().join(meta.ulid.to_string()).join("index")).unwrap(),
    ))
    .unwrap();
    let b = StoreBlock::new(meta, &dir.path().join("data"), bucket(dir.path()));
    let env = Env::new(0);
    let f = Fetched::default();
    let hdr = b.header(&env.metrics).await.unwrap();
    let ids: Vec<u32> = full.all_postings().unwrap()[..5].to_vec();
    let got = b.series(&hdr, &ids, env.ctx(&f)).await.unwrap();
    let want: Vec<_> = ids.iter().map(|&id| full.series(id).unwrap()).collect();
    assert_eq!(got, want);
    assert_eq!(env.metrics.series_refetches.get(), 1);
}

#[test]
fn partition_merges_nearby_ranges_only() {
    let want = vec![(100, 200, 'b'), (0, 50, 'a'), (10_000_000, 10_000_010, 'c')];
    let got: Vec<(u64, u64, Vec<char>)> = partition(want, 512 << 10)
        .into_iter()
        .map(|p| {
            (
                p.start,
                p.end,
                p.items.into_iter().map(|(_, c)| c).collect(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 200, vec!['a', 'b']),
            (10_000_000, 10_000_010, vec!['c'])
        ]
    );
}

#[tokio::test]
async fn concurrent_queries_share_index_fetches() {
    let dir = tempfile::tempdir().unwrap();
    let meta = write_block(dir.path(), 200);
    let b = StoreBlock::new(meta, &dir.path().join("data"), bucket(dir.path()));
    let env = Env::new(64 << 20);
    let hdr = b.header(&env.metrics).await.unwrap();
    let ms = [m(MatchOp::Equal, "job", "odd")];
    let (f1, f2) = (Fetched::default(), Fetched::default());
    let (env, b, hdr, ms) = (&env, &b, &hdr, &ms);
    let query = |f| async move {
        let ctx = env.ctx(f);
        let ids = b.postings(hdr, ms, ctx).await?;
        b.series(hdr, &ids, ctx).await
    };
    let (a, c) = tokio::join!(query(&f1), query(&f2));
    let (a, c) = (a.unwrap(), c.unwrap());
    assert_eq!(a.len(), 100);
    assert_eq!(a, c);
    let bytes = |f: &Fetched| {
        (
            f.postings.load(Ordering::Relaxed),
            f.series.load(Ordering::Relaxed),
        )
    };
    // The first fetched each item, the second waited for it.
    assert!(bytes(&f1).0 > 0 && bytes(&f1).1 > 0, "{:?}", bytes(&f1));
    assert_eq!(bytes(&f2), (0, 0));
}

/// Chunk refs of the series matching `ms` in `b`.
async fn chunk_refs(b: &StoreBlock, env: &Env, ms: &[Matcher]) -> Vec<(u64, i64, i64)> {
    let f = Fetched::default();
    let hdr = b.header(&env.metrics).await.unwrap();
    let ids = b.postings(&hdr, ms, env.ctx(&f)).await.unwrap();
    b.series(&hdr, &ids, env.ctx(&f))
        .await
        .unwrap()
        .iter()
        .flat_map(|(_, c)| c.iter().map(|c| (c.chunk_ref, c.min_time, c.max_time)))
        .collect()
}

#[tokio::test]
async fn concurrent_queries_share_chunk_fetches() {
    let dir = tempfile::tempdir().unwrap();
    let meta = write_block(dir.path(), 200);
    let b = StoreBlock::new(meta, &dir.path().join("data"), bucket(dir.path()));
    let env = Env::new(64 << 20);
    let refs = chunk_refs(&b, &env, &[m(MatchOp::Equal, "job", "odd")]).await;
    assert_eq!(refs.len(), 100);
    let (f1, f2) = (Fetched::default(), Fetched::default());
    // Usually both miss the cache before either has fetched (join! polls the second
    // while the first waits for the bucket): one fetches, the other waits for it. When
    // the first read completes within its first poll (a loaded machine can schedule it
    // so), the second finds the chunks cached instead. Either way they are fetched once.
    let (a, c) = tokio::join!(b.chunks(&refs, env.ctx(&f1)), b.chunks(&refs, env.ctx(&f2)));
    let (a, c) = (a.unwrap(), c.unwrap());
    assert_eq!(a, c);
    let (misses, shared) = (
        env.metrics.chunk_cache_misses.get(),
        env.metrics.shared_fetches.get(),
    );
    assert!(
        (misses, shared) == (200, 100) || (misses, shared) == (100, 0),
        "misses {misses}, shared {shared}: neither one shared fetch nor a cache hit"
    );
    let (n1, n2) = (
        f1.chunks.load(Ordering::Relaxed),
        f2.chunks.load(Ordering::Relaxed),
    );
    assert!(n1 > 0, "the first fetched");
    assert_eq!(n2, 0, "the second fetched {n2} bytes instead of waiting");
    // Without a cache to hand chunks over, each fetches its own (and still answers).
    let env = Env::new(0);
    let (f1, f2) = (Fetched::default(), Fetched::default());
    let (x, y) = tokio::join!(b.chunks(&refs, env.ctx(&f1)), b.chunks(&refs, env.ctx(&f2)));
    assert_eq!(x.unwrap(), a);
    assert_eq!(y.unwrap(), a);
    assert_eq!(
        f1.chunks.load(Ordering::Relaxed),
        f2.chunks.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn a_failed_chunk_fetch_releases_its_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let meta = write_block(dir.path(), 50);
    let b = StoreBlock::new(meta, &dir.path().join("data"), bucket(dir.path()));
    let env = Env::new(64 << 20);
    let refs = chunk_refs(&b, &env, &[m(MatchOp::Equal, "job", "odd")]).await;
    // A reference past the segment's end fails the first caller's fetch; the second,
    // waiting on the same keys, is released and fetches (and fails) itself rather
    // than hanging.
    let mut bad = refs.clone();
    bad.push((u64::from(u32::MAX) - 8, 0, 0));
    let (f1, f2) = (Fetched::default(), Fetched::default());
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(b.chunks(&bad, env.ctx(&f1)), b.chunks(&bad, env.ctx(&f2)))
    })
    .await
    .expect("waiters released after a failed fetch");
    assert!(r.0.is_err() && r.1.is_err());
    // Good refs still read afterwards.
    assert_eq!(
        b.chunks(&refs, env.ctx(&Fetched::default()))
            .await
            .unwrap()
            .len(),
        refs.len()
    );
}

#[tokio::test]
async fn sampled_postings_offsets_read_like_the_full_table() {
    let dir = tempfile::tempdir().unwrap();
    let meta = write_block(dir.path(), 300);
    let full = IndexReader::new(Bytes::from(
        std::fs::read(dir.path().join(meta.ulid.to_string()).join("index")).unwrap(),
    ))
    .unwrap();
    for every in [2, 3, 32, 1000] {
        let data = dir.path().join(format!("data-{every}"));
        let b =
            StoreBlock::new(meta.clone(), &data, bucket(dir.path())).with_postings_sampling(every);
        let env = Env::new(0);
        let f = Fetched::default();
        let hdr = b.header(&env.metrics).await.unwrap();
        assert!(
            hdr.postings.entries_in_memory() < full.postings_table().len(),
            "sampling {every} keeps {} of {}",
            hdr.postings.entries_in_memory(),
            full.postings_table().len()
        );
        for ms in matcher_table() {
            let want = tsdb::block::postings_for_matchers(&full, &ms).unwrap();
            let got = b.postings(&hdr, &ms, env.ctx(&f)).await.unwrap();
            assert_eq!(got, want, "postings for {ms:?} sampling {every}");
        }
    }
}

#[tokio::test]
async fn inflight_budget_smaller_than_a_range_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let meta = write_block(dir.path(), 300);
    let b = StoreBlock::new(meta, &dir.path().join("data"), bucket(dir.path()));
    let mut env = Env::new(0);
    let refs = chunk_refs(&b, &env, &[m(MatchOp::RegexMatch, "job", ".+")]).await;
    let want = b.chunks(&refs, env.ctx(&Fetched::default())).await.unwrap();
    // 16 bytes: every range is larger, each takes the whole budget in turn.
    env.inflight = InflightBytes::new(16);
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        let (f1, f2) = (Fetched::default(), Fetched::default());
        let (x, y) = tokio::join!(b.chunks(&refs, env.ctx(&f1)), b.chunks(&refs, env.ctx(&f2)));
        (x.unwrap(), y.unwrap())
    })
    .await
    .expect("ranges larger than the budget run one at a time, not never");
    assert_eq!(got.0, want);
    assert_eq!(got.1, want);
    assert_eq!(env.inflight.in_use(), 0, "every reservation given back");
}
