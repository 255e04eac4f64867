//! One bucket block as the gateway reads it, Thanos/Mimir style: nothing of the block
//! is downloaded whole. On a block's first query its index-header (symbols and
//! postings offset table, see [`crate::header`]) is built from two ranged GETs of the
//! `index` object and persisted in `--data-dir/<ULID>/index-header` (reused after a
//! restart). A query then resolves its matchers against the header, fetches just the
//! postings lists and series entries it needs, and the chunks those series point at —
//! each kind with ranged GETs, nearby ranges merged into one request — through
//! byte-bounded in-memory caches.
//!
//! A block whose index turns out corrupt is remembered as failed (its queries get the
//! error at once, without fetching again) until its `index` object changes or
//! [`FAILURE_BACKOFF`] passes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use objstore::{Bucket, BucketError, ObjectAttributes};
use storeapi::{Labels, Matcher};
use tsdb::Chunk;
use tsdb::block::chunks::{parse_record, record_len, segment_name, unpack_ref};
use tsdb::block::index::{
    ChunkMeta, INDEX_HEADER_LEN, INDEX_TOC_LEN, decode_postings, decode_series, parse_index_header,
    parse_toc, series_entry_len, series_offset,
};
use tsdb::block::{BlockError, BlockMeta, PostingsPlan, Ulid};

use crate::cache::{ChunkCache, IndexCache, IndexKey, IndexValue};
use crate::header::{self, IndexHeader};
use crate::inflight::InflightBytes;
use crate::metrics::StoreMetrics;

/// Gap between two wanted byte ranges below which they are fetched in one request
/// (Thanos's partitioner uses 512 KiB).
const MERGE_GAP: u64 = 512 << 10;
/// Bytes assumed for a chunk whose end is not known from the next wanted chunk (Thanos's
/// estimate); a longer chunk costs one more request.
const CHUNK_ESTIMATE: u64 = 16_000;
/// Bytes assumed for a series entry when the meta has no `index_stats.series_max_size`
/// (Thanos's `--debug.estimated-max-series-size`); a longer entry is refetched.
const SERIES_ESTIMATE: u64 = 64 << 10;
/// Range requests in flight per block.
const FETCH_CONCURRENCY: usize = 8;
/// How long a block whose index is corrupt is answered from memory with its error
/// (unless its `index` object changes first).
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(300);

/// Why a block could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("block {id}: {source}")]
    Bucket {
        id: Ulid,
        #[source]
        source: BucketError,
    },
    /// Corrupt or unsupported chunk data.
    #[error("block {id}: {source}")]
    Block {
        id: Ulid,
        #[source]
        source: BlockError,
    },
    /// Corrupt or unsupported index data (remembered, see [`FAILURE_BACKOFF`]).
    #[error("block {id}: index: {source}")]
    Index {
        id: Ulid,
        #[source]
        source: BlockError,
    },
    /// The index failed earlier and has not changed since.
    #[error(
        "block {id}: {reason} (remembered failure; retried when the index object changes or after {backoff:?})"
    )]
    Remembered {
        id: Ulid,
        reason: String,
        backoff: Duration,
    },
    #[error("block {id}: local index-header {path}: {source}")]
    Local {
        id: Ulid,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ReadError {
    /// The block that could not be read.
    pub fn block(&self) -> Ulid {
        match self {
            ReadError::Bucket { id, .. }
            | ReadError::Block { id, .. }
            | ReadError::Index { id, .. }
            | ReadError::Remembered { id, .. }
            | ReadError::Local { id, .. } => *id,
        }
    }
}

/// Bucket bytes fetched by one request, by kind (what
/// `--store.grpc.downloaded-bytes-limit` counts).
#[derive(Debug, Default)]
pub struct Fetched {
    pub postings: AtomicU64,
    pub series: AtomicU64,
    pub chunks: AtomicU64,
}

impl Fetched {
    pub fn total(&self) -> u64 {
        self.postings.load(Ordering::Relaxed)
            + self.series.load(Ordering::Relaxed)
            + self.chunks.load(Ordering::Relaxed)
    }
}

/// What a block read needs besides the block: caches, metrics, the request's byte
/// counters.
#[derive(Clone, Copy)]
pub struct ReadCtx<'a> {
    pub metrics: &'a StoreMetrics,
    pub index_cache: &'a IndexCache,
    pub chunk_cache: &'a ChunkCache,
    pub fetched: &'a Fetched,
    /// The gateway's bound on range bytes being fetched and decoded at once.
    pub inflight: &'a InflightBytes,
}

/// A remembered index failure.
struct Failure {
    at: Instant,
    reason: String,
    /// The index object's attributes when it failed (`None`: unknown, then only the
    /// backoff clears the failure).
    attrs: Option<ObjectAttributes>,
}

/// One merged range request: `[start, end)` of an object and the items it serves,
/// each with its own start offset.
struct Part<T> {
    start: u64,
    end: u64,
    items: Vec<(u64, T)>,
}

/// Merges wanted ranges `(start, end, item)` (any order) into requests, joining ranges
/// less than `gap` apart.
fn partition<T>(mut want: Vec<(u64, u64, T)>, gap: u64) -> Vec<Part<T>> {
    want.sort_by_key(|w| w.0);
    let mut parts: Vec<Part<T>> = Vec::new();
    for (start, end, item) in want {
        match parts.last_mut() {
            Some(last) if start <= last.end.saturating_add(gap) => {
                last.end = last.end.max(end);
                last.items.push((start, item));
            }
            _ => parts.push(Part {
                start,
                end,
                items: vec![(start, item)],
            }),
        }
    }
    parts
}

/// Byte ranges for records at the sorted offsets `want` (with their positions), each
/// assumed `estimate` long but cut where the next wanted record starts (records do not
/// overlap) and at the object's size `limit` when known; never empty.
fn estimated_ranges(
    want: &[(u64, usize)],
    estimate: u64,
    limit: Option<u64>,
) -> Vec<(u64, u64, usize)> {
    want.iter()
        .enumerate()
        .map(|(k, &(off, i))| {
            let mut end = off.saturating_add(estimate);
            if let Some(&(next, _)) = want.get(k + 1)
                && next > off
            {
                end = end.min(next);
            }
            if let Some(l) = limit {
                end = end.min(l);
            }
            (off, end.max(off + 1), i)
        })
        .collect()
}

/// A block served by the gateway.
pub struct StoreBlock {
    pub meta: BlockMeta,
    /// External labels from `thanos.labels`.
    pub ext: Labels,
    dir: PathBuf,
    bucket: Bucket,
    /// Segment sizes from `thanos.files`, when the meta lists them (bounds range GETs).
    segment_sizes: HashMap<usize, u64>,
    /// The index's size from `thanos.files`, when listed (saves a HEAD request).
    index_size: Option<u64>,
    /// Bytes assumed per series entry.
    series_estimate: u64,
    header: tokio::sync::OnceCell<Arc<IndexHeader>>,
    /// One in how many postings offset table entries the header keeps in memory.
    postings_sampling: usize,
    failure: Mutex<Option<Failure>>,
}

impl StoreBlock {
    pub fn new(meta: BlockMeta, data_dir: &Path, bucket: Bucket) -> StoreBlock {
        let thanos = meta.thanos.as_ref();
        let labels = thanos.map(|t| t.labels.clone()).unwrap_or_default();
        let ext = Labels::from_pairs(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .unwrap_or_else(|_| Labels::empty());
        let mut segment_sizes = HashMap::new();
        let mut index_size = None;
        if let Some(files) = thanos
            .and_then(|t| t.extra.get("files"))
            .and_then(|f| f.as_array())
        {
            for f in files {
                let (Some(p), Some(n)) = (
                    f.get("rel_path").and_then(|p| p.as_str()),
                    f.get("size_bytes").and_then(|n| n.as_u64()),
                ) else {
                    continue;
                };
                if p == "index" {
                    index_size = Some(n);
                }
                if let Some(seq) = p
                    .strip_prefix("chunks/")
                    .and_then(|s| s.parse::<usize>().ok())
                    .filter(|&s| s > 0)
                {
                    segment_sizes.insert(seq - 1, n);
                }
            }
        }
        let series_estimate = thanos
            .and_then(|t| t.extra.get("index_stats"))
            .and_then(|s| s.get("series_max_size"))
            .and_then(|n| n.as_u64())
            .filter(|&n| n > 0)
            .map_or(SERIES_ESTIMATE, |n| n.min(SERIES_ESTIMATE));
        StoreBlock {
            dir: data_dir.join(meta.ulid.to_string()),
            meta,
            ext,
            bucket,
            segment_sizes,
            index_size,
            series_estimate,
            header: tokio::sync::OnceCell::new(),
            postings_sampling: 1,
            failure: Mutex::new(None),
        }
    }

    /// Keeps one in `every` postings offset table entries of the index-header in memory
    /// (`--store.index-header-posting-offsets-in-mem-sampling`; 1: all).
    pub fn with_postings_sampling(mut self, every: usize) -> StoreBlock {
        self.postings_sampling = every.max(1);
        self
    }

    pub fn id(&self) -> Ulid {
        self.meta.ulid
    }

    fn index_key(&self) -> String {
        format!("{}/index", self.id())
    }

    /// Downsampling resolution in milliseconds (0: raw), from `thanos.downsample`.
    pub fn resolution(&self) -> i64 {
        self.meta
            .thanos
            .as_ref()
            .map_or(0, |t| t.downsample.resolution)
    }

    /// Whether the block's `[minTime, maxTime)` overlaps the closed `[mint, maxt]`.
    pub fn overlaps(&self, mint: i64, maxt: i64) -> bool {
        self.meta.min_time <= maxt && mint < self.meta.max_time
    }

    /// Whether the index-header is already open (for tests and metrics).
    pub fn header_loaded(&self) -> bool {
        self.header.initialized()
    }

    /// Path of the block's index-header file.
    pub fn header_path(&self) -> PathBuf {
        self.dir.join(header::FILE_NAME)
    }

    /// Runs `read` on this block unless its index is remembered as failed; a corrupt
    /// index it runs into is remembered (see [`FAILURE_BACKOFF`]).
    pub async fn guarded<T, F>(&self, metrics: &StoreMetrics, read: F) -> Result<T, ReadError>
    where
        F: std::future::Future<Output = Result<T, ReadError>>,
    {
        self.check_failure(metrics).await?;
        let r = read.await;
        if let Err(ReadError::Index { source, .. }) = &r {
            let attrs = self.bucket.attributes(&self.index_key()).await.ok();
            *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(Failure {
                at: Instant::now(),
                reason: format!("index: {source}"),
                attrs,
            });
        }
        r
    }

    async fn check_failure(&self, metrics: &StoreMetrics) -> Result<(), ReadError> {
        let (reason, attrs) = {
            let mut g = self.failure.lock().unwrap_or_else(|e| e.into_inner());
            match g.as_ref() {
                None => return Ok(()),
                Some(f) if f.at.elapsed() >= FAILURE_BACKOFF => {
                    *g = None;
                    return Ok(());
                }
                Some(f) => (f.reason.clone(), f.attrs.clone()),
            }
        };
        let id = self.id();
        // One HEAD tells whether the object was replaced (e.g. repaired); without the
        // attributes of the failed object only the backoff clears the failure.
        let unchanged = match &attrs {
            None => true,
            Some(then) => {
                let now = self
                    .bucket
                    .attributes(&self.index_key())
                    .await
                    .map_err(|source| ReadError::Bucket { id, source })?;
                *then == now
            }
        };
        if unchanged {
            metrics.remembered_failures.inc();
            return Err(ReadError::Remembered {
                id,
                reason,
                backoff: FAILURE_BACKOFF,
            });
        }
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    /// The block's index-header: opened from `--data-dir` (verified; rebuilt when
    /// bad), or built from the bucket on first use. Concurrent callers share one build.
    pub async fn header(&self, metrics: &StoreMetrics) -> Result<Arc<IndexHeader>, ReadError> {
        self.header
            .get_or_try_init(|| async {
                let id = self.id();
                let path = self.header_path();
                let local = |source| ReadError::Local {
                    id,
                    path: path.clone(),
                    source,
                };
                // A full index copy from before index-headers: no longer used.
                let old = self.dir.join("index");
                if old.exists() {
                    tokio::fs::remove_file(&old).await.map_err(local)?;
                    tracing::info!(block = %id, "removed the old local index copy");
                }
                if path.exists() {
                    let p = path.clone();
                    let every = self.postings_sampling;
                    match tokio::task::spawn_blocking(move || IndexHeader::open(&p, every)).await {
                        Ok(Ok(h)) => return Ok(Arc::new(h)),
                        Ok(Err(e)) => {
                            metrics.header_rebuilds.inc();
                            tracing::warn!(block = %id, error = %e, "index-header file bad; rebuilding it");
                        }
                        Err(e) => tracing::warn!(block = %id, error = %e, "index-header open task failed"),
                    }
                }
                let bytes = self.build_header().await?;
                tokio::fs::create_dir_all(&self.dir).await.map_err(local)?;
                let p = path.clone();
                let every = self.postings_sampling;
                let opened = tokio::task::spawn_blocking(move || {
                    header::write_file(&p, &bytes)?;
                    Ok::<_, std::io::Error>(IndexHeader::open(&p, every))
                })
                .await
                .map_err(|e| local(std::io::Error::other(e.to_string())))?
                .map_err(local)?;
                metrics.header_builds.inc();
                match opened {
                    Ok(h) => {
                        tracing::debug!(block = %id, bytes = h.size, "index-header built");
                        Ok(Arc::new(h))
                    }
                    Err(source) => {
                        let _ = tokio::fs::remove_file(&path).await;
                        Err(ReadError::Index { id, source })
                    }
                }
            })
            .await
            .cloned()
    }

    /// The header file's bytes, from the index's first bytes, its TOC, symbol table
    /// and postings offset table (four ranged GETs, two at a time).
    async fn build_header(&self) -> Result<Vec<u8>, ReadError> {
        let id = self.id();
        let key = self.index_key();
        let bucket_err = |source| ReadError::Bucket { id, source };
        let size = match self.index_size {
            Some(n) => n,
            None => self.bucket.attributes(&key).await.map_err(bucket_err)?.size,
        };
        let corrupt = |why: String| ReadError::Index {
            id,
            source: BlockError::Corrupt(why),
        };
        let toc_len = INDEX_TOC_LEN as u64;
        if size < INDEX_HEADER_LEN as u64 + toc_len {
            return Err(corrupt(format!(
                "index object of {size} bytes is too short"
            )));
        }
        let (head, toc) = futures_util::try_join!(
            self.bucket
                .get_range(&key, 0, Some(INDEX_HEADER_LEN as u64)),
            self.bucket.get_range(&key, size - toc_len, Some(toc_len)),
        )
        .map_err(bucket_err)?;
        let index_err = |source| ReadError::Index { id, source };
        let version = parse_index_header(&head).map_err(index_err)?;
        let toc = parse_toc(&toc, size).map_err(index_err)?;
        if toc.symbols == 0 || toc.postings_table == 0 || toc.series < toc.symbols {
            return Err(corrupt(format!(
                "TOC without symbols or postings offset table: {toc:?}"
            )));
        }
        let (symbols, table) = futures_util::try_join!(
            self.bucket
                .get_range(&key, toc.symbols, Some(toc.series - toc.symbols)),
            self.bucket.get_range(
                &key,
                toc.postings_table,
                Some(size - toc_len - toc.postings_table)
            ),
        )
        .map_err(bucket_err)?;
        header::encode(version, toc.postings_table, &symbols, &table).map_err(index_err)
    }

    /// Fetches `parts` of object `key` (a few requests at a time), adding the bytes to
    /// `counter`, and turns each part into items with `decode` while the part's bytes
    /// are reserved in the gateway's in-flight budget (so the range buffer is gone
    /// before the reservation is given back).
    async fn fetch_parts<T, R, F>(
        &self,
        key: &str,
        parts: Vec<Part<T>>,
        counter: &AtomicU64,
        inflight: &InflightBytes,
        decode: F,
    ) -> Result<Vec<R>, ReadError>
    where
        F: Fn(Bytes, Part<T>) -> Result<Vec<R>, ReadError>,
    {
        let id = self.id();
        let decode = &decode;
        let got: Vec<Result<Vec<R>, ReadError>> = stream::iter(parts)
            .map(|p| async move {
                let len = p.end - p.start;
                let _reserved = inflight.reserve(len).await;
                let b = self
                    .bucket
                    .get_range(key, p.start, Some(len))
                    .await
                    .map_err(|source| ReadError::Bucket { id, source })?;
                counter.fetch_add(b.len() as u64, Ordering::Relaxed);
                decode(b, p)
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .collect()
            .await;
        let mut out = Vec::new();
        for r in got {
            out.extend(r?);
        }
        Ok(out)
    }

    /// The index items `keys` in order: from the cache, else fetched by `fetch` (given
    /// positions in `keys`, it returns them with their values). An item another request
    /// is fetching is awaited and taken from the cache instead of fetched twice.
    async fn index_items<F, Fut>(
        &self,
        ctx: ReadCtx<'_>,
        keys: &[IndexKey],
        item: &'static str,
        fetch: F,
    ) -> Result<Vec<IndexValue>, ReadError>
    where
        F: Fn(Vec<usize>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<(usize, IndexValue)>, ReadError>>,
    {
        let mut out: Vec<Option<IndexValue>> = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let v = ctx.index_cache.get(k);
            match v {
                Some(_) => ctx.metrics.index_cache_hit(item),
                None => {
                    ctx.metrics.index_cache_miss(item);
                    missing.push(i);
                }
            }
            out.push(v);
        }
        let (claim, waits) = ctx.index_cache.claim(keys, missing);
        if !claim.mine.is_empty() {
            for (i, v) in fetch(claim.mine.clone()).await? {
                ctx.index_cache.put(keys[i], v.clone());
                out[i] = Some(v);
            }
        }
        drop(claim);
        let mut again = Vec::new();
        for (i, mut done) in waits {
            // Err: that fetch was abandoned; the cache lookup below then misses.
            let _ = done.wait_for(|d| *d).await;
            match ctx.index_cache.get(&keys[i]) {
                Some(v) => {
                    ctx.metrics.shared_fetches.inc();
                    out[i] = Some(v)
                }
                None => again.push(i),
            }
        }
        if !again.is_empty() {
            for (i, v) in fetch(again).await? {
                out[i] = Some(v);
            }
        }
        out.into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ReadError::Index {
                id: self.id(),
                source: BlockError::Corrupt(format!("{item} item not read")),
            })
    }

    /// Sorted IDs of the series matching `matchers` (all series when empty): the
    /// header plans which postings lists are needed, the lists come from the cache or
    /// ranged GETs.
    pub async fn postings(
        &self,
        hdr: &IndexHeader,
        matchers: &[Matcher],
        ctx: ReadCtx<'_>,
    ) -> Result<Vec<u32>, ReadError> {
        let id = self.id();
        let index_err = |source| ReadError::Index { id, source };
        let plan = PostingsPlan::new(&hdr.postings, matchers);
        let ranges = plan.lists();
        let keys: Vec<IndexKey> = ranges
            .iter()
            .map(|r| IndexKey::Postings(id, r.start))
            .collect();
        let key = &self.index_key();
        let fetch = |pos: Vec<usize>| async move {
            let want = pos
                .into_iter()
                .map(|i| (ranges[i].start, ranges[i].end.max(ranges[i].start + 8), i))
                .collect();
            self.fetch_parts(
                key,
                partition(want, MERGE_GAP),
                &ctx.fetched.postings,
                ctx.inflight,
                |buf, part| {
                    part.items
                        .into_iter()
                        .map(|(start, i)| {
                            let rel = (start - part.start) as usize;
                            let p = decode_postings(buf.get(rel..).unwrap_or(&[]))
                                .map_err(index_err)?;
                            Ok((i, IndexValue::Postings(Arc::new(p))))
                        })
                        .collect()
                },
            )
            .await
        };
        let lists = self
            .index_items(ctx, &keys, "Postings", fetch)
            .await?
            .into_iter()
            .map(|v| match v {
                IndexValue::Postings(p) => Ok(p),
                IndexValue::Series(_) => Err(index_err(BlockError::Corrupt(
                    "postings cache entry holds a series".into(),
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        plan.evaluate(&lists).map_err(index_err)
    }

    /// The series entries `ids` (labels and chunk metas), in `ids`' order, from the
    /// cache or ranged GETs (an entry longer than estimated is fetched again).
    pub async fn series(
        &self,
        hdr: &IndexHeader,
        ids: &[u32],
        ctx: ReadCtx<'_>,
    ) -> Result<Vec<(Labels, Vec<ChunkMeta>)>, ReadError> {
        let id = self.id();
        let index_err = |source| ReadError::Index { id, source };
        let keys: Vec<IndexKey> = ids.iter().map(|&s| IndexKey::Series(id, s)).collect();
        let fetch = |pos: Vec<usize>| async move {
            let mut want: Vec<(u64, usize)> = pos
                .into_iter()
                .map(|i| (series_offset(ids[i]), i))
                .collect();
            want.sort_unstable();
            let ranges = estimated_ranges(&want, self.series_estimate, None);
            let parts = self
                .fetch_parts(
                    &self.index_key(),
                    partition(ranges, MERGE_GAP),
                    &ctx.fetched.series,
                    ctx.inflight,
                    |buf, part| {
                        Ok(part
                            .items
                            .into_iter()
                            .map(|(off, i)| {
                                let rel = (off - part.start) as usize;
                                let head = buf.get(rel..).unwrap_or(&[]);
                                match series_entry_len(head) {
                                    // Copied out, so caching one entry never pins the
                                    // whole range.
                                    Some(n) if n <= head.len() => {
                                        Read::Whole(i, Bytes::copy_from_slice(&head[..n]))
                                    }
                                    known => Read::Short { off, i, len: known },
                                }
                            })
                            .collect())
                    },
                )
                .await?;
            let mut got = Vec::with_capacity(parts.len());
            for r in parts {
                let (off, i, known) = match r {
                    Read::Whole(i, entry) => {
                        got.push((i, IndexValue::Series(entry)));
                        continue;
                    }
                    Read::Short { off, i, len } => (off, i, len),
                };
                // Longer than estimated: fetch exactly this entry (its length first,
                // if even that was cut off).
                ctx.metrics.series_refetches.inc();
                let n = match known {
                    Some(n) => n,
                    None => {
                        let b = self
                            .get_index_range(off, 10, &ctx.fetched.series, ctx.inflight)
                            .await?;
                        series_entry_len(&b).ok_or_else(|| {
                            index_err(BlockError::Corrupt(format!(
                                "series {}: bad length field",
                                ids[i]
                            )))
                        })?
                    }
                };
                let entry = self
                    .get_index_range(off, n as u64, &ctx.fetched.series, ctx.inflight)
                    .await?;
                got.push((i, IndexValue::Series(entry)));
            }
            Ok(got)
        };
        self.index_items(ctx, &keys, "Series", fetch)
            .await?
            .into_iter()
            .map(|v| match v {
                IndexValue::Series(b) => decode_series(&b, &hdr.symbols).map_err(index_err),
                IndexValue::Postings(_) => Err(index_err(BlockError::Corrupt(
                    "series cache entry holds postings".into(),
                ))),
            })
            .collect()
    }

    async fn get_index_range(
        &self,
        off: u64,
        len: u64,
        counter: &AtomicU64,
        inflight: &InflightBytes,
    ) -> Result<Bytes, ReadError> {
        let id = self.id();
        let _reserved = inflight.reserve(len).await;
        let b = self
            .bucket
            .get_range(&self.index_key(), off, Some(len))
            .await
            .map_err(|source| ReadError::Bucket { id, source })?;
        counter.fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(b)
    }

    /// Label names of the series matching `matchers`: from the header alone without
    /// matchers, else from the matching series' entries.
    pub async fn label_names(
        &self,
        matchers: &[Matcher],
        ctx: ReadCtx<'_>,
    ) -> Result<Vec<String>, ReadError> {
        let hdr = self.header(ctx.metrics).await?;
        if matchers.is_empty() {
            return Ok(hdr.postings.label_names());
        }
        let labels = self.matching_labels(&hdr, matchers, ctx).await?;
        Ok(tsdb::block::names_of(&labels))
    }

    /// Values of `name` over the series matching `matchers` (as [`Self::label_names`]).
    pub async fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        ctx: ReadCtx<'_>,
    ) -> Result<Vec<String>, ReadError> {
        let hdr = self.header(ctx.metrics).await?;
        if matchers.is_empty() {
            return Ok(hdr.postings.label_values(name));
        }
        let labels = self.matching_labels(&hdr, matchers, ctx).await?;
        Ok(tsdb::block::values_of(name, &labels))
    }

    async fn matching_labels(
        &self,
        hdr: &IndexHeader,
        matchers: &[Matcher],
        ctx: ReadCtx<'_>,
    ) -> Result<Vec<Labels>, ReadError> {
        let ids = self.postings(hdr, matchers, ctx).await?;
        let series = self.series(hdr, &ids, ctx).await?;
        Ok(series.into_iter().map(|(l, _)| l).collect())
    }

    /// Removes the local files of the block (it left the bucket).
    pub fn remove_local(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(block = %self.id(), error = %e, "removing local index-header failed");
        }
    }

    /// Reads the chunks at `refs` (with their index time ranges), from the cache or the
    /// bucket, in `refs`' order. A chunk another request is fetching right now is
    /// awaited and taken from the cache instead of fetched twice.
    pub async fn chunks(
        &self,
        refs: &[(u64, i64, i64)],
        ctx: ReadCtx<'_>,
    ) -> Result<Vec<Chunk>, ReadError> {
        let id = self.id();
        let keys: Vec<(Ulid, u64)> = refs.iter().map(|&(r, _, _)| (id, r)).collect();
        let mut out: Vec<Option<Chunk>> = vec![None; refs.len()];
        let mut missing = Vec::new();
        for (i, &(r, mint, maxt)) in refs.iter().enumerate() {
            match ctx.chunk_cache.get(&(id, r), mint, maxt) {
                Some(c) => {
                    ctx.metrics.chunk_cache_hits.inc();
                    out[i] = Some(c);
                }
                None => {
                    ctx.metrics.chunk_cache_misses.inc();
                    missing.push(i);
                }
            }
        }
        let (claim, waits) = ctx.chunk_cache.claim(&keys, missing);
        if !claim.mine.is_empty() {
            self.fetch_chunks(refs, &claim.mine, ctx, &mut out).await?;
        }
        drop(claim);
        let mut again = Vec::new();
        for (i, mut done) in waits {
            // Err: that fetch was abandoned; the cache lookup below then misses.
            let _ = done.wait_for(|d| *d).await;
            let (_, mint, maxt) = refs[i];
            match ctx.chunk_cache.get(&keys[i], mint, maxt) {
                Some(c) => {
                    ctx.metrics.shared_fetches.inc();
                    out[i] = Some(c);
                }
                None => again.push(i),
            }
        }
        if !again.is_empty() {
            self.fetch_chunks(refs, &again, ctx, &mut out).await?;
        }
        out.into_iter()
            .enumerate()
            .map(|(i, c)| {
                c.ok_or_else(|| ReadError::Block {
                    id,
                    source: BlockError::Corrupt(format!("chunk {:#x} not read", refs[i].0)),
                })
            })
            .collect()
    }

    /// Fetches the chunks at positions `pos` of `refs` from the bucket (merged ranged
    /// reads per segment) into `out` and the chunk cache.
    async fn fetch_chunks(
        &self,
        refs: &[(u64, i64, i64)],
        pos: &[usize],
        ctx: ReadCtx<'_>,
        out: &mut [Option<Chunk>],
    ) -> Result<(), ReadError> {
        let id = self.id();
        // Wanted chunks by segment, as (offset, position in refs).
        let mut missing: BTreeMap<usize, Vec<(u64, usize)>> = BTreeMap::new();
        for &i in pos {
            let Some(&(r, _, _)) = refs.get(i) else {
                continue;
            };
            let (seg, off) = unpack_ref(r);
            missing.entry(seg).or_default().push((off as u64, i));
        }
        let fetched = &ctx.fetched.chunks;
        for (seg, mut want) in missing {
            want.sort_unstable();
            want.dedup_by_key(|w| (w.0, w.1));
            let limit = self.segment_sizes.get(&seg).copied();
            let ranges = estimated_ranges(&want, CHUNK_ESTIMATE, limit);
            let key = format!("{id}/chunks/{}", segment_name(seg));
            let got = self
                .fetch_parts(
                    &key,
                    partition(ranges, MERGE_GAP),
                    fetched,
                    ctx.inflight,
                    |buf, part| {
                        part.items
                            .into_iter()
                            .map(|(off, i)| {
                                let r = refs[i].0;
                                let rel = (off - part.start) as usize;
                                let head = buf.get(rel..).unwrap_or(&[]);
                                let len = record_len(head).ok_or_else(|| ReadError::Block {
                                    id,
                                    source: BlockError::Corrupt(format!(
                                        "chunk reference {r:#x}: bad length field"
                                    )),
                                })?;
                                Ok(match head.get(..len) {
                                    // Copied out of the shared range buffer, so caching
                                    // one chunk never pins the whole range.
                                    Some(rec) => Read::Whole(i, Bytes::copy_from_slice(rec)),
                                    None => Read::Short {
                                        off,
                                        i,
                                        len: Some(len),
                                    },
                                })
                            })
                            .collect()
                    },
                )
                .await?;
            for g in got {
                let (i, rec) = match g {
                    Read::Whole(i, rec) => (i, rec),
                    Read::Short { off, i, len } => {
                        // Longer than estimated: fetch exactly this record.
                        let len = len.unwrap_or(0) as u64;
                        let _reserved = ctx.inflight.reserve(len).await;
                        let b = self
                            .bucket
                            .get_range(&key, off, Some(len))
                            .await
                            .map_err(|source| ReadError::Bucket { id, source })?;
                        fetched.fetch_add(b.len() as u64, Ordering::Relaxed);
                        (i, b)
                    }
                };
                let (r, mint, maxt) = refs[i];
                let c = parse_record(&rec, r, mint, maxt)
                    .map_err(|source| ReadError::Block { id, source })?;
                ctx.chunk_cache.put((id, r), c.clone());
                if let Some(slot) = out.get_mut(i) {
                    *slot = Some(c);
                }
            }
        }
        Ok(())
    }
}

/// One record of a merged range: whole (copied out), or cut short by the estimate and
/// to be fetched on its own (its length, when the range held the length field).
enum Read {
    Whole(usize, Bytes),
    Short {
        off: u64,
        i: usize,
        len: Option<usize>,
    },
}

#[cfg(test)]
mod tests;
