//! What a bucket holds: its complete blocks with their metas and markers, its partial
//! uploads, and metas it cannot parse — the view the store gateway, the compactor and
//! `orrery tools bucket` start from.
//!
//! Discovery follows Thanos's (`pkg/block/fetcher.go`): one top-level listing, then each
//! `<ULID>/` directory listed to learn which of `meta.json` and the markers exist. A
//! directory without `meta.json` is a partial upload (pending or aborted) and is never
//! read as a block. Block metas are immutable once written, so they are cached on local
//! disk and fetched from the bucket only once per block; markers are read every time,
//! because they appear later.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use futures_util::{StreamExt, stream};
use tsdb::block::{BlockMeta, Ulid};

use crate::bucket::{Bucket, BucketError};
use crate::markers::{
    self, DeletionMark, Marker, MarkerError, NoCompactMark, NoDownsampleMark,
};

/// Listings and meta reads in flight at once.
const DEFAULT_CONCURRENCY: usize = 32;

/// A complete block: its meta and whichever markers it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockEntry {
    pub meta: BlockMeta,
    pub deletion_mark: Option<DeletionMark>,
    pub no_compact_mark: Option<NoCompactMark>,
    pub no_downsample_mark: Option<NoDownsampleMark>,
}

impl BlockEntry {
    /// Downsampling resolution in ms (0: raw), from the `thanos` section.
    pub fn resolution(&self) -> i64 {
        self.meta
            .thanos
            .as_ref()
            .map_or(0, |t| t.downsample.resolution)
    }

    /// External labels from the `thanos` section (empty for a plain Prometheus block).
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.meta
            .thanos
            .as_ref()
            .map(|t| t.labels.clone())
            .unwrap_or_default()
    }

    /// The blocks this one was compacted from; a block that was never compacted is its
    /// own only source (whatever its meta says).
    pub fn sources(&self) -> BTreeSet<Ulid> {
        let mut s: BTreeSet<Ulid> = self.meta.compaction.sources.iter().copied().collect();
        if s.is_empty() {
            s.insert(self.meta.ulid);
        }
        s
    }

    /// Whether it is marked for deletion and the mark is at least `delay_s` seconds old
    /// at `now_unix_s`.
    pub fn deletion_older_than(&self, now_unix_s: i64, delay_s: i64) -> bool {
        self.deletion_mark
            .as_ref()
            .is_some_and(|m| now_unix_s.saturating_sub(m.deletion_time) >= delay_s)
    }
}

/// The result of one discovery pass.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    pub blocks: BTreeMap<Ulid, BlockEntry>,
    /// Block directories without `meta.json`.
    pub partial: Vec<Ulid>,
    /// Blocks whose `meta.json` exists but cannot be parsed, with the reason.
    pub corrupt: Vec<(Ulid, String)>,
}

impl Discovery {
    /// Blocks made redundant by a compacted block of the same group (same resolution and
    /// external labels) whose sources include all of theirs: readers hide them so no
    /// sample is counted twice while the compactor's deletion is pending. Of blocks with
    /// identical sources (a compaction uploaded twice), the lowest ULID stays visible.
    pub fn compacted_sources(&self) -> BTreeSet<Ulid> {
        let mut groups: HashMap<(i64, BTreeMap<String, String>), Vec<(Ulid, BTreeSet<Ulid>)>> =
            HashMap::new();
        for (id, b) in &self.blocks {
            groups
                .entry((b.resolution(), b.labels()))
                .or_default()
                .push((*id, b.sources()));
        }
        let mut hidden = BTreeSet::new();
        for members in groups.values() {
            for (id, sources) in members {
                let covered = members.iter().any(|(other, theirs)| {
                    other != id
                        && sources.is_subset(theirs)
                        && (sources.len() < theirs.len() || other < id)
                });
                if covered {
                    hidden.insert(*id);
                }
            }
        }
        hidden
    }
}

/// Discovers a bucket's blocks, caching metas under `cache_dir/<ULID>/meta.json`.
#[derive(Debug, Clone)]
pub struct MetaFetcher {
    bucket: Bucket,
    cache_dir: Option<PathBuf>,
    concurrency: usize,
}

/// What one block directory turned out to be.
enum Found {
    Block(Box<BlockEntry>),
    Partial,
    Corrupt(String),
}

impl MetaFetcher {
    pub fn new(bucket: Bucket, cache_dir: Option<PathBuf>) -> Self {
        MetaFetcher {
            bucket,
            cache_dir,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }

    /// Sets how many block directories are read at once (at least 1).
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    /// One discovery pass. Fails only when the bucket cannot be listed or read; a bad
    /// meta is reported in [`Discovery::corrupt`], a bad marker is logged and ignored
    /// (as Thanos does), never failing the pass.
    pub async fn fetch(&self) -> Result<Discovery, BucketError> {
        let ids: Vec<Ulid> = self
            .bucket
            .iter("")
            .await?
            .iter()
            .filter_map(|k| k.strip_suffix('/'))
            .filter_map(|name| name.parse::<Ulid>().ok())
            .collect();
        let found: Vec<(Ulid, Result<Found, BucketError>)> = stream::iter(ids)
            .map(|id| async move { (id, self.fetch_one(id).await) })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut out = Discovery::default();
        for (id, f) in found {
            match f? {
                Found::Block(b) => {
                    out.blocks.insert(id, *b);
                }
                Found::Partial => out.partial.push(id),
                Found::Corrupt(why) => out.corrupt.push((id, why)),
            }
        }
        out.partial.sort();
        out.corrupt.sort();
        if let Some(dir) = &self.cache_dir {
            self.prune_cache(dir, &out).await;
        }
        Ok(out)
    }

    async fn fetch_one(&self, id: Ulid) -> Result<Found, BucketError> {
        let files: BTreeSet<String> = self
            .bucket
            .iter(&id.to_string())
            .await?
            .into_iter()
            .filter_map(|k| k.rsplit('/').next().map(str::to_string))
            .collect();
        if !files.contains("meta.json") {
            return Ok(Found::Partial);
        }
        let meta = match self.meta(id).await? {
            Ok(m) => m,
            Err(why) => return Ok(Found::Corrupt(why)),
        };
        Ok(Found::Block(Box::new(BlockEntry {
            meta,
            deletion_mark: self.marker::<DeletionMark>(id, &files).await?,
            no_compact_mark: self.marker::<NoCompactMark>(id, &files).await?,
            no_downsample_mark: self.marker::<NoDownsampleMark>(id, &files).await?,
        })))
    }

    /// The block's meta: from the cache when present there, else from the bucket (then
    /// cached). The inner `Err` is a meta that does not parse or is for another block.
    async fn meta(&self, id: Ulid) -> Result<Result<BlockMeta, String>, BucketError> {
        let cached = self.cache_dir.as_ref().map(|d| d.join(id.to_string()).join("meta.json"));
        if let Some(path) = &cached
            && let Ok(b) = tokio::fs::read(path).await
            && let Ok(m) = parse_meta(id, &b)
        {
            return Ok(Ok(m));
        }
        let bytes = self.bucket.get(&format!("{id}/meta.json")).await?;
        let meta = match parse_meta(id, &bytes) {
            Ok(m) => m,
            Err(why) => return Ok(Err(why)),
        };
        if let Some(path) = cached
            && let Err(e) = write_atomic(&path, &bytes).await
        {
            // Only a cache: the next pass reads the bucket again.
            tracing::warn!(block = %id, error = %e, "could not cache meta.json");
        }
        Ok(Ok(meta))
    }

    async fn marker<M: Marker>(
        &self,
        id: Ulid,
        files: &BTreeSet<String>,
    ) -> Result<Option<M>, BucketError> {
        if !files.contains(M::FILE) {
            return Ok(None);
        }
        match markers::read_marker::<M>(&self.bucket, id).await {
            Ok(m) => Ok(m),
            Err(MarkerError::Bucket(e)) if e.is_not_found() => Ok(None),
            Err(MarkerError::Bucket(e)) => Err(e),
            Err(e @ MarkerError::Invalid { .. }) => {
                tracing::warn!(block = %id, error = %e, "ignoring an unreadable marker");
                Ok(None)
            }
        }
    }

    /// Removes cached metas of blocks that are gone from the bucket.
    async fn prune_cache(&self, dir: &Path, seen: &Discovery) {
        let Ok(mut rd) = tokio::fs::read_dir(dir).await else {
            return;
        };
        while let Ok(Some(e)) = rd.next_entry().await {
            let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<Ulid>().ok()) else {
                continue;
            };
            if !seen.blocks.contains_key(&id) {
                let _ = tokio::fs::remove_dir_all(e.path()).await;
            }
        }
    }
}

/// The meta of block `id`, or why these bytes are not one.
fn parse_meta(id: Ulid, bytes: &[u8]) -> Result<BlockMeta, String> {
    match serde_json::from_slice::<BlockMeta>(bytes) {
        Ok(m) if m.ulid != id => Err(format!("meta.json names block {}", m.ulid)),
        Ok(m) if m.version != 1 => Err(format!("unsupported meta version {}", m.version)),
        Ok(m) => Ok(m),
        Err(e) => Err(format!("unparsable meta.json: {e}")),
    }
}

async fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let tmp = path.with_extension("json.tmp");
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BucketConfig;
    use crate::block::encode_meta;
    use tsdb::block::{BlockMetaCompaction, BlockStats, ThanosMeta};

    fn meta(id: Ulid, sources: &[Ulid], labels: &[(&str, &str)], res: i64) -> BlockMeta {
        let mut t = ThanosMeta::new(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            "receive",
        );
        t.downsample.resolution = res;
        BlockMeta {
            ulid: id,
            min_time: 0,
            max_time: 7_200_000,
            stats: BlockStats::default(),
            compaction: BlockMetaCompaction {
                level: if sources.len() > 1 { 2 } else { 1 },
                sources: sources.to_vec(),
                ..Default::default()
            },
            version: 1,
            thanos: Some(t),
        }
    }

    async fn put_meta(b: &Bucket, m: &BlockMeta) {
        b.put(&format!("{}/index", m.ulid), "i".into()).await.unwrap();
        b.put(&format!("{}/meta.json", m.ulid), encode_meta(m).unwrap().into())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn finds_blocks_partials_corrupt_metas_and_markers() {
        let dir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let b = Bucket::new(&BucketConfig::filesystem(dir.path()), None).unwrap();
        let (a, p, c, d) = (
            Ulid::with_time(1_000),
            Ulid::with_time(2_000),
            Ulid::with_time(3_000),
            Ulid::with_time(4_000),
        );
        put_meta(&b, &meta(a, &[a], &[("tenant", "x")], 0)).await;
        b.put(&format!("{p}/chunks/000001"), "c".into()).await.unwrap();
        b.put(&format!("{c}/meta.json"), "{not json".into()).await.unwrap();
        put_meta(&b, &meta(d, &[d], &[("tenant", "x")], 0)).await;
        markers::write_marker(&b, &DeletionMark::new(d, "", 50)).await.unwrap();
        b.put(&format!("{d}/{}", markers::NO_COMPACT_MARK), "bad".into())
            .await
            .unwrap();
        b.put("debug/metas/x.json", "{}".into()).await.unwrap();

        let f = MetaFetcher::new(b.clone(), Some(cache.path().to_path_buf()));
        let got = f.fetch().await.unwrap();
        assert_eq!(got.blocks.keys().copied().collect::<Vec<_>>(), vec![a, d]);
        assert_eq!(got.partial, vec![p]);
        assert_eq!(got.corrupt.len(), 1);
        assert_eq!(got.corrupt[0].0, c);
        assert!(got.blocks[&a].deletion_mark.is_none());
        assert_eq!(got.blocks[&d].deletion_mark.as_ref().unwrap().deletion_time, 50);
        assert!(got.blocks[&d].no_compact_mark.is_none(), "bad marker ignored");
        assert!(got.blocks[&d].deletion_older_than(100, 50));
        assert!(!got.blocks[&d].deletion_older_than(99, 50));
        assert!(cache.path().join(a.to_string()).join("meta.json").is_file());

        // A cached meta is served from the cache; a block gone from the bucket leaves it.
        b.delete(&format!("{a}/meta.json")).await.unwrap();
        b.delete(&format!("{a}/index")).await.unwrap();
        let again = f.fetch().await.unwrap();
        assert_eq!(again.blocks.keys().copied().collect::<Vec<_>>(), vec![d]);
        assert!(!cache.path().join(a.to_string()).exists());
    }

    #[tokio::test]
    async fn cached_meta_is_not_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let b = Bucket::new(&BucketConfig::filesystem(dir.path()), None).unwrap();
        let a = Ulid::with_time(1_000);
        put_meta(&b, &meta(a, &[a], &[("r", "1")], 0)).await;
        let f = MetaFetcher::new(b.clone(), Some(cache.path().to_path_buf()));
        f.fetch().await.unwrap();
        // Change the object behind the cache's back: the cached (immutable) meta wins.
        let mut changed = meta(a, &[a], &[("r", "2")], 0);
        changed.max_time = 1;
        put_meta(&b, &changed).await;
        let got = f.fetch().await.unwrap();
        assert_eq!(got.blocks[&a].labels()["r"], "1");
        // Without a cache the bucket is read.
        let got = MetaFetcher::new(b, None).fetch().await.unwrap();
        assert_eq!(got.blocks[&a].labels()["r"], "2");
    }

    #[test]
    fn compacted_sources_are_hidden_per_group() {
        let ids: Vec<Ulid> = (1..=6).map(|i| Ulid::with_time(i * 1000)).collect();
        let (s1, s2, s3, c12, dup, other) = (ids[0], ids[1], ids[2], ids[3], ids[4], ids[5]);
        let mut d = Discovery::default();
        let x = [("tenant", "x")];
        for m in [
            meta(s1, &[s1], &x, 0),
            meta(s2, &[], &x, 0),
            meta(s3, &[s3], &x, 0),
            meta(c12, &[s1, s2], &x, 0),
            meta(dup, &[s1, s2], &x, 0),
            // Same sources but another group (downsampled): hides nothing raw.
            meta(other, &[s3], &x, 300_000),
        ] {
            d.blocks.insert(
                m.ulid,
                BlockEntry {
                    meta: m,
                    deletion_mark: None,
                    no_compact_mark: None,
                    no_downsample_mark: None,
                },
            );
        }
        let hidden = d.compacted_sources();
        assert_eq!(hidden, [s1, s2, dup].into_iter().collect());
    }
}
