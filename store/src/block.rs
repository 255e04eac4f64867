//! One bucket block as the gateway reads it: the meta (from discovery), the index
//! downloaded once into `--data-dir/<ULID>/index` on first use and memory-mapped
//! (reused after a restart), and chunks read from the bucket with ranged GETs — nearby
//! chunks merged into one request — through a byte-bounded in-memory cache.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use objstore::{Bucket, BucketError};
use storeapi::Labels;
use tsdb::Chunk;
use tsdb::block::chunks::{parse_record, record_len, segment_name, unpack_ref};
use tsdb::block::index::IndexReader;
use tsdb::block::{BlockError, BlockMeta, Ulid};

use crate::metrics::StoreMetrics;

/// Gap between two wanted chunks below which they are fetched in one request (Thanos's
/// partitioner uses 512 KiB).
const MERGE_GAP: u64 = 512 << 10;
/// Bytes assumed for a chunk whose end is not known from the next wanted chunk (Thanos's
/// estimate); a longer chunk costs one more request.
const CHUNK_ESTIMATE: u64 = 16_000;
/// Range requests in flight per block.
const FETCH_CONCURRENCY: usize = 8;

/// Why a block could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("block {id}: {source}")]
    Bucket {
        id: Ulid,
        #[source]
        source: BucketError,
    },
    #[error("block {id}: {source}")]
    Block {
        id: Ulid,
        #[source]
        source: BlockError,
    },
    #[error("block {id}: local index cache {path}: {source}")]
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
            | ReadError::Local { id, .. } => *id,
        }
    }
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
    index: tokio::sync::OnceCell<Arc<IndexReader>>,
}

impl StoreBlock {
    pub fn new(meta: BlockMeta, data_dir: &Path, bucket: Bucket) -> StoreBlock {
        let labels = meta
            .thanos
            .as_ref()
            .map(|t| t.labels.clone())
            .unwrap_or_default();
        let ext = Labels::from_pairs(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .unwrap_or_else(|_| Labels::empty());
        let mut segment_sizes = HashMap::new();
        if let Some(files) = meta
            .thanos
            .as_ref()
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
                if let Some(seq) = p
                    .strip_prefix("chunks/")
                    .and_then(|s| s.parse::<usize>().ok())
                    .filter(|&s| s > 0)
                {
                    segment_sizes.insert(seq - 1, n);
                }
            }
        }
        StoreBlock {
            dir: data_dir.join(meta.ulid.to_string()),
            meta,
            ext,
            bucket,
            segment_sizes,
            index: tokio::sync::OnceCell::new(),
        }
    }

    pub fn id(&self) -> Ulid {
        self.meta.ulid
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

    /// Whether the index is already open (for tests and metrics).
    pub fn index_loaded(&self) -> bool {
        self.index.initialized()
    }

    /// The block's index: mapped from the local copy, downloaded first if missing.
    /// Concurrent callers share one download.
    pub async fn index(&self, metrics: &StoreMetrics) -> Result<Arc<IndexReader>, ReadError> {
        self.index
            .get_or_try_init(|| async {
                let id = self.id();
                let path = self.dir.join("index");
                if !path.exists() {
                    let local = |source| ReadError::Local {
                        id,
                        path: path.clone(),
                        source,
                    };
                    tokio::fs::create_dir_all(&self.dir).await.map_err(local)?;
                    let tmp = self.dir.join("index.tmp");
                    let n = self
                        .bucket
                        .download_file(&format!("{id}/index"), &tmp)
                        .await
                        .map_err(|source| ReadError::Bucket { id, source })?;
                    tokio::fs::rename(&tmp, &path).await.map_err(local)?;
                    metrics.index_downloads.inc();
                    tracing::debug!(block = %id, bytes = n, "index downloaded");
                }
                let p = path.clone();
                let r = tokio::task::spawn_blocking(move || {
                    let b = tsdb::block::map_file(&p)?;
                    IndexReader::new(b)
                })
                .await
                .map_err(|e| ReadError::Block {
                    id,
                    source: BlockError::Corrupt(format!("index open task failed: {e}")),
                })?;
                match r {
                    Ok(r) => Ok(Arc::new(r)),
                    Err(source) => {
                        // A corrupt copy must not stick: the next use downloads again.
                        let _ = tokio::fs::remove_file(&path).await;
                        Err(ReadError::Block { id, source })
                    }
                }
            })
            .await
            .cloned()
    }

    /// Removes the local index copy (the block left the bucket).
    pub fn remove_local(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(block = %self.id(), error = %e, "removing local index copy failed");
        }
    }

    /// Reads the chunks at `refs` (with their index time ranges), from the cache or the
    /// bucket. Returns them in `refs`' order and the bytes fetched from the bucket.
    pub async fn chunks(
        &self,
        refs: &[(u64, i64, i64)],
        cache: &ChunkCache,
        metrics: &StoreMetrics,
    ) -> Result<(Vec<Chunk>, u64), ReadError> {
        let id = self.id();
        let mut out: Vec<Option<Chunk>> = vec![None; refs.len()];
        // Missing chunks by segment, as (offset, position in refs).
        let mut missing: BTreeMap<usize, Vec<(u64, usize)>> = BTreeMap::new();
        for (i, &(r, mint, maxt)) in refs.iter().enumerate() {
            match cache.get(id, r) {
                Some(mut c) => {
                    metrics.chunk_cache_hits.inc();
                    c.min_time = mint;
                    c.max_time = maxt;
                    out[i] = Some(c);
                }
                None => {
                    metrics.chunk_cache_misses.inc();
                    let (seg, off) = unpack_ref(r);
                    missing.entry(seg).or_default().push((off as u64, i));
                }
            }
        }
        // Plan ranges: [start, end) per segment with the chunks they hold.
        let mut ranges: Vec<(usize, u64, u64, Vec<(u64, usize)>)> = Vec::new();
        for (seg, mut want) in missing {
            want.sort_unstable();
            want.dedup_by_key(|w| (w.0, w.1));
            let limit = self.segment_sizes.get(&seg).copied();
            for k in 0..want.len() {
                let off = want[k].0;
                let mut end = off + CHUNK_ESTIMATE;
                if let Some(&(next, _)) = want.get(k + 1)
                    && next > off
                {
                    end = end.min(next);
                }
                if let Some(l) = limit {
                    end = end.min(l);
                }
                end = end.max(off + 1);
                match ranges.last_mut() {
                    Some(last) if last.0 == seg && off <= last.2 + MERGE_GAP => {
                        last.2 = last.2.max(end);
                        last.3.push(want[k]);
                    }
                    _ => ranges.push((seg, off, end, vec![want[k]])),
                }
            }
        }
        let fetched = std::sync::atomic::AtomicU64::new(0);
        let results: Vec<Result<Vec<(usize, Chunk)>, ReadError>> = stream::iter(ranges)
            .map(|(seg, start, end, wanted)| {
                let fetched = &fetched;
                async move {
                    let key = format!("{id}/chunks/{}", segment_name(seg));
                    let buf = self
                        .bucket
                        .get_range(&key, start, Some(end - start))
                        .await
                        .map_err(|source| ReadError::Bucket { id, source })?;
                    fetched.fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    let mut got = Vec::with_capacity(wanted.len());
                    for (off, i) in wanted {
                        let (r, mint, maxt) = refs[i];
                        let rel = (off - start) as usize;
                        let head = buf.get(rel..).unwrap_or(&[]);
                        let len = record_len(head).ok_or_else(|| ReadError::Block {
                            id,
                            source: BlockError::Corrupt(format!(
                                "chunk reference {r:#x}: bad length field"
                            )),
                        })?;
                        let rec: Bytes = if rel + len <= buf.len() {
                            buf.slice(rel..rel + len)
                        } else {
                            // Longer than estimated: fetch exactly this record.
                            let b = self
                                .bucket
                                .get_range(&key, off, Some(len as u64))
                                .await
                                .map_err(|source| ReadError::Bucket { id, source })?;
                            fetched.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
                            b
                        };
                        // Copy out of the shared range buffer, so caching one chunk
                        // never pins the whole range.
                        let rec = Bytes::copy_from_slice(&rec);
                        let c = parse_record(&rec, r, mint, maxt)
                            .map_err(|source| ReadError::Block { id, source })?;
                        cache.put(id, r, c.clone());
                        got.push((i, c));
                    }
                    Ok(got)
                }
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .collect()
            .await;
        for r in results {
            for (i, c) in r? {
                out[i] = Some(c);
            }
        }
        let fetched = fetched.into_inner();
        metrics.bytes_fetched.inc_by(fetched);
        let chunks = out
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                c.ok_or_else(|| ReadError::Block {
                    id,
                    source: BlockError::Corrupt(format!("chunk {:#x} not read", refs[i].0)),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((chunks, fetched))
    }
}

/// Chunks by (block, ref), evicted oldest-first beyond a byte limit.
pub struct ChunkCache {
    limit: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    map: HashMap<(Ulid, u64), Chunk>,
    order: VecDeque<(Ulid, u64)>,
    bytes: usize,
}

impl ChunkCache {
    pub fn new(limit: usize) -> ChunkCache {
        ChunkCache {
            limit,
            inner: Mutex::new(CacheInner::default()),
        }
    }

    pub fn get(&self, id: Ulid, r: u64) -> Option<Chunk> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.map.get(&(id, r)).cloned()
    }

    pub fn put(&self, id: Ulid, r: u64, c: Chunk) {
        let size = c.data.len() + 64;
        if size > self.limit {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.map.contains_key(&(id, r)) {
            return;
        }
        while g.bytes + size > self.limit {
            let Some(k) = g.order.pop_front() else { break };
            if let Some(old) = g.map.remove(&k) {
                g.bytes -= old.data.len() + 64;
            }
        }
        g.map.insert((id, r), c);
        g.order.push_back((id, r));
        g.bytes += size;
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}
