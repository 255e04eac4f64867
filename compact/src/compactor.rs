//! One compactor pass over a bucket, as Thanos's `compactMainFn`: discover, garbage
//! collect sources already covered by a compacted block, compact every group until its
//! plan is empty, downsample (raw ≥ 40h → 5m, 5m ≥ 10d → 1h), apply retention, delete
//! blocks whose deletion mark is older than `--delete-delay`, and remove aborted partial
//! uploads.
//!
//! Crash safety (the order is what makes a SIGKILL at any point harmless):
//! 1. inputs are downloaded to `<data-dir>/compact/<group>/` (scratch, wiped first);
//! 2. the merged block is written there, re-opened and verified completely;
//! 3. it is uploaded with `meta.json` last — until then it is a partial upload that no
//!    reader sees (and that is removed after 48h);
//! 4. only then are the sources marked for deletion. A crash between 3 and 4 leaves
//!    sources whose `compaction.sources` are covered by the new block: readers hide
//!    them ([`objstore::discovery::Discovery::compacted_sources`]) and the next pass
//!    marks them (garbage collection), so nothing is counted twice or lost.
//!
//! Where Thanos halts the whole compactor on an overlap it cannot merge, Orrery marks
//! the offending block `no-compact-mark.json` (reason
//! [`REASON_CONFLICT`]) with the conflicting series and timestamp in `details`, logs
//! it, counts it in `thanos_compact_blocks_marked_total`, and compacts everything else.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, stream};
use objstore::Bucket;
use objstore::discovery::{BlockEntry, Discovery, MetaFetcher};
use objstore::markers::{self, DELETION_MARK, DeletionMark, NO_COMPACT_MARK, NoCompactMark};
use tsdb::block::{Block, BlockMeta, BlockOptions, MergeError, ThanosMeta, Ulid};

use tsdb::chunk::aggr::{RES_1H, RES_5M};

use crate::metrics::{CompactMetrics, GroupLabels, ResolutionLabels};
use crate::planner::{self, GroupKey};

/// `no-compact-mark.json` reason for a block whose samples contradict another block's
/// (same series and timestamp, different value): merging would have to pick one.
pub const REASON_CONFLICT: &str = "vertical-compaction-conflicting-samples";
/// Thanos's reason for overlapping downsampled blocks (never vertically compacted).
pub const REASON_DOWNSAMPLE_OVERLAP: &str = "downsample-vertical-compaction";
/// Thanos's `ResLevel1DownsampleRange`: raw blocks spanning at least this (ms) get a
/// 5m block (about two chunks' worth of 5m windows).
pub const DOWNSAMPLE_RANGE_5M: i64 = 40 * 3600 * 1000;
/// Thanos's `ResLevel2DownsampleRange`: 5m blocks spanning at least this get a 1h block.
pub const DOWNSAMPLE_RANGE_1H: i64 = 10 * 24 * 3600 * 1000;
/// Thanos's `PartialUploadThresholdAge`: a block directory without `meta.json` whose
/// newest object is older than this is an aborted upload.
pub const PARTIAL_UPLOAD_THRESHOLD: Duration = Duration::from_secs(48 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Bucket(#[from] objstore::BucketError),
    #[error(transparent)]
    Marker(#[from] objstore::markers::MarkerError),
    #[error(transparent)]
    Transfer(#[from] objstore::block::BlockTransferError),
    #[error("group {group}: merging {blocks:?}: {source}")]
    Merge {
        group: String,
        blocks: Vec<Ulid>,
        #[source]
        source: MergeError,
    },
    #[error("{path}: {source}")]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("downsampling block {block}: {source}")]
    Downsample {
        block: Ulid,
        #[source]
        source: tsdb::block::BlockError,
    },
    #[error("background task failed: {0}")]
    Task(String),
}

/// Settings of a compactor (from the CLI flags).
#[derive(Debug, Clone)]
pub struct CompactConfig {
    pub data_dir: PathBuf,
    pub consistency_delay: Duration,
    pub delete_delay: Duration,
    /// Retention for raw, 5m and 1h blocks (zero: forever).
    pub retention: [Duration; 3],
    pub replica_labels: Vec<String>,
    pub concurrency: usize,
    /// Downsample raw blocks ≥ 40h to 5m and 5m blocks ≥ 10d to 1h (off with
    /// `--downsampling.disable`).
    pub downsampling: bool,
    /// `--selector.relabel-config`: blocks it drops do not exist for this compactor
    /// (not compacted, downsampled, retained, garbage-collected or cleaned).
    pub selector: objstore::Selector,
    /// `--deduplication.func`: 1:1 (default) or penalty for overlapping samples.
    pub dedup: tsdb::block::DedupFunc,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    pub compactions: usize,
    pub marked_no_compact: usize,
    pub garbage_collected: usize,
    pub retention_marked: usize,
    pub deleted: usize,
    pub partial_deleted: usize,
    pub failed_groups: usize,
    /// Downsampled blocks uploaded.
    pub downsampled: usize,
    pub downsample_failures: usize,
}

pub struct Compactor {
    bucket: Bucket,
    fetcher: MetaFetcher,
    cfg: CompactConfig,
    metrics: CompactMetrics,
    hash_func: objstore::HashFunc,
}

fn now_unix_s() -> i64 {
    chrono::Utc::now().timestamp()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Compactor {
    pub fn new(bucket: Bucket, cfg: CompactConfig, metrics: CompactMetrics) -> Compactor {
        let fetcher = MetaFetcher::new(bucket.clone(), Some(cfg.data_dir.join("meta-syncer")));
        Compactor {
            bucket,
            fetcher,
            cfg,
            metrics,
            hash_func: objstore::HashFunc::None,
        }
    }

    /// Thanos's `--hash-func`: with SHA256 the compacted blocks' `meta.json` lists each
    /// chunk segment's and the index's hash (downloads of such blocks are checked
    /// against them).
    pub fn with_hash_func(mut self, hash_func: objstore::HashFunc) -> Compactor {
        self.hash_func = hash_func;
        self
    }

    /// The bucket as the compactor sees it: only the blocks `--selector.relabel-config`
    /// keeps (judged on their labels minus the replica labels, as Thanos's
    /// `LabelShardedMetaFilter`), with replica labels removed from every meta, so
    /// replicas fall into one group and a deduplicated block covers its replica sources.
    /// Partial uploads stay: they have no labels to select on, and every compactor
    /// removes aborted ones (Thanos does the same).
    async fn discover(&self) -> Result<Discovery, CompactError> {
        let mut d = self.fetcher.fetch().await?;
        let before = d.blocks.len();
        d.blocks.retain(|id, b| {
            self.cfg
                .selector
                .keeps_block(id, &b.labels(), &self.cfg.replica_labels)
        });
        if d.blocks.len() < before {
            tracing::debug!(
                excluded = before - d.blocks.len(),
                "blocks left to other compactors by --selector.relabel-config"
            );
        }
        for b in d.blocks.values_mut() {
            if let Some(t) = b.meta.thanos.as_mut() {
                for r in &self.cfg.replica_labels {
                    t.labels.remove(r);
                }
            }
        }
        for (id, why) in &d.corrupt {
            tracing::warn!(block = %id, reason = %why, "ignoring block with unreadable meta.json");
        }
        Ok(d)
    }

    /// One full pass. Group failures are logged and counted, never abort the pass.
    pub async fn run_once(self: &Arc<Self>) -> Result<PassReport, CompactError> {
        let mut report = PassReport::default();
        let d = self.discover().await?;
        report.garbage_collected = self.garbage_collect(&d).await?;

        let d = self.discover().await?;
        let groups = self.groups(&d);
        let (mut todo, mut todo_blocks) = (0, 0);
        for (metas, excluded) in groups.values() {
            let (n, b) = planner::simulate(metas, excluded);
            todo += n;
            todo_blocks += b;
        }
        self.metrics.todo_compactions.set(todo as i64);
        self.metrics.todo_compaction_blocks.set(todo_blocks as i64);

        let results: Vec<(GroupKey, Result<(usize, usize), CompactError>)> = stream::iter(groups)
            .map(|(key, (metas, excluded))| {
                let this = Arc::clone(self);
                async move {
                    let r = this.compact_group(&key, metas, excluded).await;
                    (key, r)
                }
            })
            .buffer_unordered(self.cfg.concurrency.max(1))
            .collect()
            .await;
        for (key, r) in results {
            match r {
                Ok((n, marked)) => {
                    report.compactions += n;
                    report.marked_no_compact += marked;
                }
                Err(e) => {
                    report.failed_groups += 1;
                    self.metrics.retries.inc();
                    self.metrics
                        .group_compaction_failures
                        .get_or_create(&GroupLabels { group: key.key() })
                        .inc();
                    tracing::error!(group = %key.key(), labels = ?key.labels, error = %e,
                        "group compaction failed; retrying next pass");
                }
            }
        }
        self.metrics.todo_compactions.set(0);
        self.metrics.todo_compaction_blocks.set(0);

        if self.cfg.downsampling {
            // Two passes, as Thanos: the second makes the 1h blocks of 5m blocks the
            // first one made.
            for _ in 0..2 {
                let d = self.discover().await?;
                let (ok, failed) = self.downsample_pass(&d).await;
                report.downsampled += ok;
                report.downsample_failures += failed;
            }
        }

        let d = self.discover().await?;
        report.garbage_collected += self.garbage_collect(&d).await?;
        report.retention_marked = self.apply_retention(&d).await?;

        let d = self.discover().await?;
        report.deleted = self.clean_marked(&d).await?;
        report.partial_deleted = self.clean_partial(&d).await?;
        self.metrics.iterations.inc();
        Ok(report)
    }

    /// Blocks the compactor may plan with, by group, with each group's no-compact set.
    fn groups(&self, d: &Discovery) -> BTreeMap<GroupKey, (Vec<BlockMeta>, BTreeSet<Ulid>)> {
        let hidden = d.compacted_sources();
        let now = now_ms();
        let mut out: BTreeMap<GroupKey, (Vec<BlockMeta>, BTreeSet<Ulid>)> = BTreeMap::new();
        for (id, b) in &d.blocks {
            if b.deletion_mark.is_some() || hidden.contains(id) || !self.consistent(b, now) {
                continue;
            }
            let g = out.entry(GroupKey::of(&b.meta, &[])).or_default();
            if b.no_compact_mark.is_some() {
                g.1.insert(*id);
            }
            g.0.push(b.meta.clone());
        }
        out
    }

    /// `--consistency-delay`: a block not written by a compactor is used only once it
    /// has been in the bucket that long (its upload time, else its ULID time), so a
    /// slowly listed upload is not compacted half-seen.
    fn consistent(&self, b: &BlockEntry, now_ms: i64) -> bool {
        let t = b.meta.thanos.as_ref();
        if t.is_some_and(|t| {
            matches!(
                t.source.as_str(),
                "compactor" | "compactor.repair" | "bucket.repair"
            )
        }) {
            return true;
        }
        let uploaded = t
            .and_then(|t| t.extra.get("upload_time"))
            .and_then(|v| v.as_str())
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_millis())
            .filter(|&ms| ms > 0)
            .unwrap_or(b.meta.ulid.timestamp_ms() as i64);
        now_ms - uploaded >= self.cfg.consistency_delay.as_millis() as i64
    }

    /// Marks blocks whose sources a compacted block already covers (a pass that died
    /// after uploading its output but before marking the inputs).
    async fn garbage_collect(&self, d: &Discovery) -> Result<usize, CompactError> {
        let mut n = 0;
        for id in d.compacted_sources() {
            let Some(b) = d.blocks.get(&id) else { continue };
            if b.deletion_mark.is_some() {
                continue;
            }
            let m = DeletionMark::new(id, "covered by a compacted block", now_unix_s());
            if markers::write_marker(&self.bucket, &m).await? {
                tracing::info!(block = %id, "marked for deletion: its data is in a compacted block");
                self.metrics.garbage_collected_blocks.inc();
                self.metrics.marked(DELETION_MARK, "duplicate");
                n += 1;
            }
        }
        Ok(n)
    }

    /// Compacts one group until the planner has nothing left. Returns (compactions,
    /// blocks marked no-compact).
    async fn compact_group(
        &self,
        key: &GroupKey,
        mut metas: Vec<BlockMeta>,
        mut excluded: BTreeSet<Ulid>,
    ) -> Result<(usize, usize), CompactError> {
        let (mut done, mut marked) = (0, 0);
        let glabels = GroupLabels { group: key.key() };
        // Each round removes at least one block from the plannable set (compacted into
        // one, or excluded), so the number of rounds is bounded.
        for _ in 0..=metas.len() * 2 {
            let plan = planner::plan(&metas, &excluded);
            if plan.is_empty() {
                break;
            }
            let inputs: Vec<BlockMeta> = plan
                .iter()
                .filter_map(|id| metas.iter().find(|m| m.ulid == *id).cloned())
                .collect();
            let vertical = inputs.iter().enumerate().any(|(i, a)| {
                inputs[i + 1..]
                    .iter()
                    .any(|b| a.min_time < b.max_time && b.min_time < a.max_time)
            });
            if vertical && key.resolution > 0 {
                for m in &inputs[1..] {
                    self.mark_no_compact(
                        m.ulid,
                        REASON_DOWNSAMPLE_OVERLAP,
                        "overlapping downsampled blocks are not vertically compacted",
                    )
                    .await?;
                    excluded.insert(m.ulid);
                    marked += 1;
                }
                continue;
            }
            match self.compact_plan(key, &inputs).await {
                Ok(out) => {
                    done += 1;
                    self.metrics.group_compactions.get_or_create(&glabels).inc();
                    if vertical {
                        self.metrics
                            .group_vertical_compactions
                            .get_or_create(&glabels)
                            .inc();
                    }
                    let set: BTreeSet<Ulid> = plan.iter().copied().collect();
                    metas.retain(|m| !set.contains(&m.ulid));
                    metas.push(out);
                }
                Err(CompactError::Merge {
                    source: MergeError::Conflict(c),
                    ..
                }) => {
                    let tsdb::block::Conflict {
                        series,
                        t,
                        a,
                        b,
                        blocks,
                    } = *c;
                    // Keep the older block compacting; leave out the newer (usually the
                    // backfill or out-of-order upload that brought the contradiction).
                    let (x, y) = (inputs[blocks.0].ulid, inputs[blocks.1].ulid);
                    let victim = x.max(y);
                    let details = format!(
                        "series {series} has different values at t={t} in blocks {x} ({a}) and {y} ({b}); left out of compaction instead of picking one"
                    );
                    tracing::warn!(group = %key.key(), block = %victim, %details,
                        "marking block no-compact: merging it would have to drop one of two different samples");
                    self.mark_no_compact(victim, REASON_CONFLICT, &details)
                        .await?;
                    excluded.insert(victim);
                    marked += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Ok((done, marked))
    }

    async fn mark_no_compact(
        &self,
        id: Ulid,
        reason: &str,
        details: &str,
    ) -> Result<(), CompactError> {
        let m = NoCompactMark::new(id, reason, details, now_unix_s());
        if markers::write_marker(&self.bucket, &m).await? {
            self.metrics.marked(NO_COMPACT_MARK, reason);
        }
        Ok(())
    }

    /// Downloads, merges, verifies, uploads (meta.json last), then marks the sources.
    async fn compact_plan(
        &self,
        key: &GroupKey,
        inputs: &[BlockMeta],
    ) -> Result<BlockMeta, CompactError> {
        let work = self.cfg.data_dir.join("compact").join(key.key());
        let local = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CompactError::Local { path, source }
        };
        if work.exists() {
            tokio::fs::remove_dir_all(&work)
                .await
                .map_err(local(&work))?;
        }
        let in_dir = work.join("in");
        let out_dir = work.join("out");
        tokio::fs::create_dir_all(&in_dir)
            .await
            .map_err(local(&in_dir))?;
        tokio::fs::create_dir_all(&out_dir)
            .await
            .map_err(local(&out_dir))?;
        for m in inputs {
            objstore::block::download_block(&self.bucket, m.ulid, &in_dir).await?;
        }
        let ids: Vec<Ulid> = inputs.iter().map(|m| m.ulid).collect();
        let level = inputs.iter().map(|m| m.compaction.level).max().unwrap_or(1) + 1;
        let mut thanos = ThanosMeta::new(key.labels.clone(), "compactor");
        thanos.downsample.resolution = key.resolution;
        let opts = BlockOptions {
            thanos: Some(thanos),
            compaction_level: level,
            ..Default::default()
        };
        let group = key.key();
        let dedup = self.cfg.dedup;
        let (ind, outd, ids2) = (in_dir.clone(), out_dir.clone(), ids.clone());
        let (meta, dup) = tokio::task::spawn_blocking(move || {
            let merr = |source| CompactError::Merge {
                group: group.clone(),
                blocks: ids2.clone(),
                source,
            };
            let mut blocks = Vec::with_capacity(ids2.len());
            for id in &ids2 {
                blocks.push(Block::open(&ind.join(id.to_string())).map_err(|e| merr(e.into()))?);
            }
            let refs: Vec<&Block> = blocks.iter().collect();
            let r = tsdb::block::merge_blocks_with(&outd, &refs, &opts, dedup).map_err(merr)?;
            tsdb::block::verify_block(&outd.join(r.meta.ulid.to_string()))
                .map_err(|e| merr(e.into()))?;
            Ok::<_, CompactError>((r.meta, r.duplicate_samples))
        })
        .await
        .map_err(|e| CompactError::Task(e.to_string()))??;
        self.metrics.duplicate_samples_dropped.inc_by(dup);
        let uploaded = objstore::block::upload_block_hashed(
            &self.bucket,
            &out_dir.join(meta.ulid.to_string()),
            &key.labels,
            "compactor",
            self.hash_func,
        )
        .await?;
        tracing::info!(group = %key.key(), block = %meta.ulid, sources = ?ids, level,
            samples = meta.stats.num_samples, duplicates_dropped = dup,
            "compacted block uploaded");
        for id in &ids {
            let m = DeletionMark::new(
                *id,
                format!("source of compacted block {}", meta.ulid),
                now_unix_s(),
            );
            if markers::write_marker(&self.bucket, &m).await? {
                self.metrics.marked(DELETION_MARK, "compaction");
            }
        }
        tokio::fs::remove_dir_all(&work)
            .await
            .map_err(local(&work))?;
        Ok(uploaded)
    }

    /// Thanos's `downsampleBucket`: every usable raw block spanning at least 40h whose
    /// sources are not all covered by a 5m block gets one, every 5m block spanning at
    /// least 10d whose sources are not all covered by a 1h block gets one. Checking
    /// sources (not block IDs) is what keeps this idempotent across crashes and
    /// compactions: a downsampled block is visible only once its `meta.json` is
    /// uploaded, and from then on its sources are covered; a compacted raw block that
    /// adds sources gets a new downsampled block, which then hides the older one
    /// (garbage collection, as for compacted raw blocks).
    ///
    /// Blocks with `no-downsample-mark.json` are not downsampled (their sources still
    /// count as covered, so marking a 5m block never causes a second 5m block). Failures
    /// are logged and counted; the other blocks are still downsampled. Returns
    /// (uploaded, failed).
    async fn downsample_pass(&self, d: &Discovery) -> (usize, usize) {
        let hidden = d.compacted_sources();
        let now = now_ms();
        let usable: Vec<&BlockEntry> = d
            .blocks
            .iter()
            .filter(|(id, b)| {
                b.deletion_mark.is_none() && !hidden.contains(*id) && self.consistent(b, now)
            })
            .map(|(_, b)| b)
            .collect();
        let (mut sources_5m, mut sources_1h) = (BTreeSet::new(), BTreeSet::new());
        for b in &usable {
            // As Thanos: the series exist (at 0) for every resolution in the bucket.
            let l = ResolutionLabels::of(b.resolution());
            let _ = self.metrics.downsamples.get_or_create(&l);
            let _ = self.metrics.downsample_failures.get_or_create(&l);
            match b.resolution() {
                RES_5M => sources_5m.extend(b.sources()),
                RES_1H => sources_1h.extend(b.sources()),
                _ => {}
            }
        }
        // `d.blocks` is a BTreeMap: ULID order, as Thanos.
        let mut todo: Vec<(&BlockEntry, i64)> = Vec::new();
        for b in usable {
            let (covered, min_range, to) = match b.resolution() {
                0 => (&sources_5m, DOWNSAMPLE_RANGE_5M, RES_5M),
                RES_5M => (&sources_1h, DOWNSAMPLE_RANGE_1H, RES_1H),
                RES_1H => continue,
                other => {
                    tracing::warn!(block = %b.meta.ulid, resolution = other,
                        "not downsampling a block of unexpected resolution");
                    continue;
                }
            };
            if b.sources().is_subset(covered) || b.meta.max_time - b.meta.min_time < min_range {
                continue;
            }
            if b.no_downsample_mark.is_some() {
                tracing::debug!(block = %b.meta.ulid, "not downsampling: no-downsample-mark.json");
                continue;
            }
            todo.push((b, to));
        }
        let (mut ok, mut failed) = (0, 0);
        let total = todo.len();
        self.metrics.todo_downsample_blocks.set(total as i64);
        for (b, to) in todo {
            let labels = ResolutionLabels::of(b.resolution());
            self.metrics.downsamples.get_or_create(&labels).inc();
            let started = std::time::Instant::now();
            match self.downsample_one(b, to).await {
                Ok(out) => {
                    let took = started.elapsed();
                    self.metrics
                        .downsample_duration
                        .get_or_create(&labels)
                        .observe(took.as_secs_f64());
                    tracing::info!(from = %b.meta.ulid, to = %out.ulid, resolution = to,
                        samples = out.stats.num_samples, ?took, "downsampled block uploaded");
                    ok += 1;
                }
                Err(e) => {
                    self.metrics
                        .downsample_failures
                        .get_or_create(&labels)
                        .inc();
                    tracing::error!(block = %b.meta.ulid, resolution = to, error = %e,
                        "downsampling failed; retrying next pass");
                    failed += 1;
                }
            }
            // What is not downsampled yet, failed blocks included (retried next pass).
            self.metrics.todo_downsample_blocks.set((total - ok) as i64);
        }
        (ok, failed)
    }

    /// Downloads `b`, downsamples it to `to`, verifies the result, uploads it
    /// (`meta.json` last: until then no reader sees it). The scratch directory is wiped
    /// first, so a crashed run leaves nothing the next one trips over.
    async fn downsample_one(&self, b: &BlockEntry, to: i64) -> Result<BlockMeta, CompactError> {
        let work = self.cfg.data_dir.join("downsample");
        let local = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CompactError::Local { path, source }
        };
        if work.exists() {
            tokio::fs::remove_dir_all(&work)
                .await
                .map_err(local(&work))?;
        }
        let (in_dir, out_dir) = (work.join("in"), work.join("out"));
        for d in [&in_dir, &out_dir] {
            tokio::fs::create_dir_all(d).await.map_err(local(d))?;
        }
        let id = b.meta.ulid;
        objstore::block::download_block(&self.bucket, id, &in_dir).await?;
        let (ind, outd) = (in_dir.clone(), out_dir.clone());
        let meta = tokio::task::spawn_blocking(move || {
            let derr = |source| CompactError::Downsample { block: id, source };
            let block = Block::open(&ind.join(id.to_string())).map_err(derr)?;
            let meta = tsdb::block::downsample_block(&outd, &block, to).map_err(derr)?;
            tsdb::block::verify_block(&outd.join(meta.ulid.to_string())).map_err(derr)?;
            Ok::<_, CompactError>(meta)
        })
        .await
        .map_err(|e| CompactError::Task(e.to_string()))??;
        let labels = b
            .meta
            .thanos
            .as_ref()
            .map(|t| t.labels.clone())
            .unwrap_or_default();
        let uploaded = objstore::block::upload_block(
            &self.bucket,
            &out_dir.join(meta.ulid.to_string()),
            &labels,
            "compactor",
        )
        .await?;
        tokio::fs::remove_dir_all(&work)
            .await
            .map_err(local(&work))?;
        Ok(uploaded)
    }

    /// Marks blocks past their resolution's retention for deletion.
    async fn apply_retention(&self, d: &Discovery) -> Result<usize, CompactError> {
        let now = now_ms();
        let mut n = 0;
        for (id, b) in &d.blocks {
            if b.deletion_mark.is_some() {
                continue;
            }
            let r = match b.resolution() {
                0 => self.cfg.retention[0],
                300_000 => self.cfg.retention[1],
                _ => self.cfg.retention[2],
            };
            if planner::past_retention(b.meta.max_time, r.as_millis() as i64, now) {
                let m = DeletionMark::new(*id, "block exceeds retention", now_unix_s());
                if markers::write_marker(&self.bucket, &m).await? {
                    tracing::info!(block = %id, resolution = b.resolution(), "marked for deletion by retention");
                    self.metrics.marked(DELETION_MARK, "retention");
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// The blocks cleaner: deletes blocks whose deletion mark is older than
    /// `--delete-delay`.
    async fn clean_marked(&self, d: &Discovery) -> Result<usize, CompactError> {
        let now = now_unix_s();
        let delay = self.cfg.delete_delay.as_secs() as i64;
        let mut n = 0;
        let mut waiting = 0;
        for (id, b) in &d.blocks {
            if b.deletion_mark.is_none() {
                continue;
            }
            if !b.deletion_older_than(now, delay) {
                waiting += 1;
                continue;
            }
            match delete_block(&self.bucket, *id).await {
                Ok(()) => {
                    tracing::info!(block = %id, "deleted block marked for deletion");
                    self.metrics.blocks_cleaned.inc();
                    n += 1;
                }
                Err(e) => {
                    self.metrics.block_cleanup_failures.inc();
                    tracing::warn!(block = %id, error = %e, "deleting block failed; retrying next pass");
                    waiting += 1;
                }
            }
        }
        self.metrics.todo_deletion_blocks.set(waiting);
        Ok(n)
    }

    /// Directories without `meta.json`: a deletion in progress (its mark is still
    /// there) is finished once the mark is old enough; an upload whose newest object is
    /// older than 48h is an aborted one and is removed.
    async fn clean_partial(&self, d: &Discovery) -> Result<usize, CompactError> {
        let now = chrono::Utc::now();
        let mut n = 0;
        for id in &d.partial {
            let objs = self.bucket.list_recursive(&id.to_string()).await?;
            let Some(newest) = objs.iter().map(|(_, a)| a.last_modified).max() else {
                continue;
            };
            let mark = match markers::read_marker::<DeletionMark>(&self.bucket, *id).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(block = %id, error = %e, "unreadable deletion mark on partial block");
                    None
                }
            };
            let due = match &mark {
                Some(m) => {
                    now.timestamp() - m.deletion_time >= self.cfg.delete_delay.as_secs() as i64
                }
                None => (now - newest)
                    .to_std()
                    .is_ok_and(|age| age > PARTIAL_UPLOAD_THRESHOLD),
            };
            if !due {
                continue;
            }
            if mark.is_none() {
                self.metrics.aborted_partial_uploads_deletion_attempts.inc();
            }
            match delete_block(&self.bucket, *id).await {
                Ok(()) => {
                    tracing::info!(block = %id, "deleted partial block");
                    n += 1;
                }
                Err(e) => {
                    self.metrics.block_cleanup_failures.inc();
                    tracing::warn!(block = %id, error = %e, "deleting partial block failed");
                }
            }
        }
        Ok(n)
    }
}

/// Deletes a block as Thanos's `block.Delete`: `meta.json` first (the block turns
/// partial at once, so no reader picks it up half-deleted), then every other object
/// except the deletion mark, the deletion mark last.
pub async fn delete_block(bucket: &Bucket, id: Ulid) -> Result<(), objstore::BucketError> {
    let dir = id.to_string();
    let meta = format!("{dir}/meta.json");
    let mark = format!("{dir}/{DELETION_MARK}");
    bucket.delete(&meta).await?;
    let objs = bucket.list_recursive(&dir).await?;
    for (k, _) in &objs {
        if *k != mark && *k != meta {
            bucket.delete(k).await?;
        }
    }
    bucket.delete(&mark).await?;
    Ok(())
}
