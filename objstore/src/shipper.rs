//! The shipper: uploads a TSDB directory's blocks to a bucket, oldest first, as Thanos's
//! `pkg/shipper` does for Receive.
//!
//! - Shipped: every block with a readable `meta.json`, at least one sample and
//!   compaction level 1, in `minTime` order. The first failure ends the pass, so the
//!   bucket only ever gains blocks in time order; the next pass retries.
//! - `thanos.shipper.json` (`{"version":1,"uploaded":[…]}`, written atomically) remembers
//!   what was shipped. It is only a cache: a block it does not list is looked up in the
//!   bucket (HEAD `<ULID>/meta.json`) before uploading, so a lost or corrupt state file
//!   costs requests, never a duplicate upload or a lost block.
//! - [`Shipper::retention_hold`] keeps every block not yet shipped out of the TSDB's
//!   retention: a bucket that is down for longer than the retention loses nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tsdb::block::{BlockMeta, Ulid};

use crate::block::{BlockTransferError, upload_block_hashed};
use crate::bucket::Bucket;
use crate::hash::HashFunc;

/// The state file in the TSDB directory (Thanos's name).
pub const STATE_FILE: &str = "thanos.shipper.json";

/// Why a shipper pass did not ship everything.
#[derive(Debug, thiserror::Error)]
pub enum ShipperError {
    #[error("listing blocks in {dir}: {reason}")]
    List { dir: PathBuf, reason: String },
    #[error("checking block {ulid} in the bucket: {source}")]
    Check {
        ulid: Ulid,
        #[source]
        source: crate::bucket::BucketError,
    },
    #[error(
        "compacted block {ulid} not shipped: it overlaps block {other} with the same labels in the bucket ({reason})"
    )]
    Overlap {
        ulid: Ulid,
        other: Ulid,
        reason: String,
    },
    #[error("uploading block {ulid}: {source}")]
    Upload {
        ulid: Ulid,
        #[source]
        source: BlockTransferError,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    uploaded: Vec<Ulid>,
}

/// Thanos's shipper metrics (per tenant when registered in a tenant's sub-registry),
/// plus how far behind the bucket is.
#[derive(Debug, Clone, Default)]
pub struct ShipperMetrics {
    pub dir_syncs: Counter,
    pub dir_sync_failures: Counter,
    pub uploads: Counter,
    pub upload_failures: Counter,
    /// Seconds between now and the end of the oldest block not shipped yet (0: none).
    pub oldest_unshipped_age: Gauge<f64, AtomicU64>,
    pub unshipped_blocks: Gauge,
}

impl ShipperMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "thanos_shipper_dir_syncs",
            "Total number of dir syncs",
            self.dir_syncs.clone(),
        );
        r.register(
            "thanos_shipper_dir_sync_failures",
            "Total number of failed dir syncs",
            self.dir_sync_failures.clone(),
        );
        r.register(
            "thanos_shipper_uploads",
            "Total number of uploaded blocks",
            self.uploads.clone(),
        );
        r.register(
            "thanos_shipper_upload_failures",
            "Total number of block upload failures",
            self.upload_failures.clone(),
        );
        r.register(
            "orrery_shipper_oldest_unshipped_block_age_seconds",
            "Seconds since the end of the oldest local block not uploaded yet (0 when all are)",
            self.oldest_unshipped_age.clone(),
        );
        r.register(
            "orrery_shipper_unshipped_blocks",
            "Local blocks waiting to be uploaded",
            self.unshipped_blocks.clone(),
        );
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Blocks uploaded in this pass, in order.
    pub uploaded: Vec<Ulid>,
    /// Blocks the state file did not list but the bucket already had.
    pub found_in_bucket: usize,
    /// Blocks still waiting (after a failure).
    pub pending: usize,
}

/// Whether a block is one the shipper uploads (Thanos Receive: non-empty, level 1).
pub fn shippable(meta: &BlockMeta) -> bool {
    meta.stats.num_samples > 0 && meta.compaction.level <= 1
}

/// Ships one TSDB directory's blocks. `Send + Sync`; passes are serialised.
#[derive(Debug)]
pub struct Shipper {
    bucket: Bucket,
    dir: PathBuf,
    labels: BTreeMap<String, String>,
    source: String,
    hash_func: HashFunc,
    upload_compacted: bool,
    uploaded: Arc<Mutex<BTreeSet<Ulid>>>,
    metrics: ShipperMetrics,
    pass: tokio::sync::Mutex<()>,
}

impl Shipper {
    /// A shipper for the TSDB in `dir`, whose blocks get `labels` and `source` in their
    /// uploaded `meta.json`. Reads the state file (blocking I/O); a missing or unreadable
    /// one starts empty and the bucket is asked instead.
    pub fn new(
        bucket: Bucket,
        dir: &Path,
        labels: BTreeMap<String, String>,
        source: &str,
        registry: Option<&mut Registry>,
    ) -> Shipper {
        let metrics = ShipperMetrics::default();
        if let Some(r) = registry {
            metrics.register(r);
        }
        let uploaded = match read_state(dir) {
            Ok(Some(s)) => s,
            Ok(None) => BTreeSet::new(),
            Err(reason) => {
                tracing::warn!(dir = %dir.display(), %reason,
                    "shipper state file unreadable: rebuilding it from the bucket (HEAD of each local block's meta.json)");
                BTreeSet::new()
            }
        };
        Shipper {
            bucket,
            dir: dir.to_path_buf(),
            labels,
            source: source.to_string(),
            hash_func: HashFunc::None,
            upload_compacted: false,
            uploaded: Arc::new(Mutex::new(uploaded)),
            metrics,
            pass: tokio::sync::Mutex::new(()),
        }
    }

    /// Thanos's `--hash-func`: with SHA256 the uploaded `meta.json` lists each chunk
    /// segment's and the index's hash (each file is read once more before upload).
    pub fn with_hash_func(mut self, hash_func: HashFunc) -> Shipper {
        self.hash_func = hash_func;
        self
    }

    /// Thanos's `--shipper.upload-compacted`: also ship compacted blocks (level > 1),
    /// e.g. a Prometheus's history from before it had a sidecar. Each one only after the
    /// bucket's blocks with the same labels were checked for a time overlap with it: a
    /// compacted block usually covers 2h blocks shipped before, and both in the bucket
    /// would double every sample.
    pub fn with_upload_compacted(mut self, on: bool) -> Shipper {
        self.upload_compacted = on;
        self
    }

    /// Whether this shipper uploads the block.
    fn ships(&self, meta: &BlockMeta) -> bool {
        shippable(meta) || (self.upload_compacted && meta.stats.num_samples > 0)
    }

    /// The first bucket block with this shipper's labels whose time range overlaps
    /// `meta`'s (other than `meta` itself).
    async fn overlapping(
        &self,
        meta: &BlockMeta,
    ) -> Result<Option<(Ulid, String)>, crate::bucket::BucketError> {
        let d = crate::discovery::MetaFetcher::new(self.bucket.clone(), None)
            .fetch()
            .await?;
        Ok(d.blocks.values().find_map(|e| {
            let m = &e.meta;
            (m.ulid != meta.ulid
                && e.labels() == self.labels
                && m.min_time < meta.max_time
                && meta.min_time < m.max_time)
                .then(|| {
                    (
                        m.ulid,
                        format!(
                            "[{}, {}) and [{}, {})",
                            meta.min_time, meta.max_time, m.min_time, m.max_time
                        ),
                    )
                })
        }))
    }

    pub fn metrics(&self) -> &ShipperMetrics {
        &self.metrics
    }

    /// Blocks known to be in the bucket.
    pub fn uploaded(&self) -> BTreeSet<Ulid> {
        self.uploaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// For the TSDB's retention: holds every shippable block not known to be uploaded.
    pub fn retention_hold(&self) -> tsdb::RetentionHold {
        Self::hold_for(self.uploaded.clone())
    }

    fn hold_for(uploaded: Arc<Mutex<BTreeSet<Ulid>>>) -> tsdb::RetentionHold {
        tsdb::RetentionHold::from_fn(move |meta| {
            shippable(meta)
                && !uploaded
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&meta.ulid)
        })
    }

    /// One pass: uploads every shippable block not in the bucket yet, oldest first,
    /// stopping at the first failure. Never touches the TSDB's own files.
    pub async fn sync(&self) -> Result<SyncReport, ShipperError> {
        let _pass = self.pass.lock().await;
        self.metrics.dir_syncs.inc();
        let r = self.sync_inner().await;
        if r.is_err() {
            self.metrics.dir_sync_failures.inc();
        }
        r
    }

    async fn sync_inner(&self) -> Result<SyncReport, ShipperError> {
        let dir = self.dir.clone();
        let blocks = tokio::task::spawn_blocking(move || tsdb::block::list_blocks(&dir))
            .await
            .map_err(|e| ShipperError::List {
                dir: self.dir.clone(),
                reason: e.to_string(),
            })?
            .map_err(|e| ShipperError::List {
                dir: self.dir.clone(),
                reason: e.to_string(),
            })?;
        let mut report = SyncReport::default();
        let mut failure = None;
        for b in blocks.iter().filter(|b| self.ships(&b.meta)) {
            let ulid = b.meta.ulid;
            if self.is_uploaded(&ulid) {
                continue;
            }
            match self.bucket.exists(&format!("{ulid}/meta.json")).await {
                Ok(true) => {
                    tracing::info!(%ulid, dir = %self.dir.display(), "block already in the bucket");
                    self.mark_uploaded(ulid);
                    report.found_in_bucket += 1;
                    continue;
                }
                Ok(false) => {}
                Err(source) => {
                    failure = Some(ShipperError::Check { ulid, source });
                    break;
                }
            }
            if b.meta.compaction.level > 1 {
                match self.overlapping(&b.meta).await {
                    Ok(None) => {}
                    Ok(Some((other, reason))) => {
                        failure = Some(ShipperError::Overlap {
                            ulid,
                            other,
                            reason,
                        });
                        break;
                    }
                    Err(source) => {
                        failure = Some(ShipperError::Check { ulid, source });
                        break;
                    }
                }
            }
            let started = std::time::Instant::now();
            let up = upload_block_hashed(
                &self.bucket,
                &b.dir,
                &self.labels,
                &self.source,
                self.hash_func,
            );
            match up.await {
                Ok(m) => {
                    self.metrics.uploads.inc();
                    self.mark_uploaded(ulid);
                    report.uploaded.push(ulid);
                    tracing::info!(%ulid, min_time = m.min_time, max_time = m.max_time,
                        bucket = self.bucket.name(), elapsed_ms = started.elapsed().as_millis() as u64,
                        "uploaded block");
                    // Saved after each block: a restart re-checks less.
                    self.save_state(&blocks).await;
                }
                Err(source) => {
                    self.metrics.upload_failures.inc();
                    failure = Some(ShipperError::Upload { ulid, source });
                    break;
                }
            }
        }
        self.save_state(&blocks).await;
        let uploaded = self.uploaded();
        let pending: Vec<&BlockMeta> = blocks
            .iter()
            .map(|b| &b.meta)
            .filter(|m| self.ships(m) && !uploaded.contains(&m.ulid))
            .collect();
        report.pending = pending.len();
        self.metrics.unshipped_blocks.set(pending.len() as i64);
        let now_ms = chrono::Utc::now().timestamp_millis();
        let age = pending
            .iter()
            .map(|m| m.max_time)
            .min()
            .map(|t| (now_ms.saturating_sub(t)).max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        self.metrics.oldest_unshipped_age.set(age);
        match failure {
            Some(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, pending = report.pending,
                    "shipping stopped at this block (uploads stay in time order); retried on the next pass, and blocks not uploaded are kept on disk");
                Err(e)
            }
            None => Ok(report),
        }
    }

    fn is_uploaded(&self, u: &Ulid) -> bool {
        self.uploaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(u)
    }

    fn mark_uploaded(&self, u: Ulid) {
        self.uploaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(u);
    }

    /// Drops blocks no longer on disk from the set and writes the state file. A write
    /// failure is logged only: the file is a cache.
    async fn save_state(&self, blocks: &[tsdb::block::BlockEntry]) {
        let present: BTreeSet<Ulid> = blocks.iter().map(|b| b.meta.ulid).collect();
        let on_disk_now = {
            let dir = self.dir.clone();
            tokio::task::spawn_blocking(move || tsdb::block::list_blocks(&dir))
                .await
                .ok()
                .and_then(Result::ok)
        };
        let list: Vec<Ulid> = {
            let mut set = self.uploaded.lock().unwrap_or_else(|e| e.into_inner());
            // Keep blocks that exist now or existed at the start of the pass (a block
            // deleted by retention in between is simply dropped next time).
            let now: BTreeSet<Ulid> = on_disk_now
                .map(|v| v.iter().map(|b| b.meta.ulid).collect())
                .unwrap_or_else(|| present.clone());
            set.retain(|u| now.contains(u) || present.contains(u));
            set.iter().copied().collect()
        };
        let dir = self.dir.clone();
        let r = tokio::task::spawn_blocking(move || write_state(&dir, &list)).await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "writing the shipper state file failed")
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "writing the shipper state file failed")
            }
        }
    }
}

/// The state file's ULIDs; `Ok(None)` when there is none.
fn read_state(dir: &Path) -> Result<Option<BTreeSet<Ulid>>, String> {
    let p = dir.join(STATE_FILE);
    let b = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", p.display())),
    };
    let s: StateFile = serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", p.display()))?;
    if s.version != 1 {
        return Err(format!("{}: unexpected version {}", p.display(), s.version));
    }
    Ok(Some(s.uploaded.into_iter().collect()))
}

/// Writes the state file atomically (tmp + fsync + rename + fsync of the directory),
/// tab-indented as Thanos writes it.
fn write_state(dir: &Path, uploaded: &[Ulid]) -> std::io::Result<()> {
    use std::io::Write;
    let state = StateFile {
        version: 1,
        uploaded: uploaded.to_vec(),
    };
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    state
        .serialize(&mut ser)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(STATE_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::tests::write_block;
    use crate::config::BucketConfig;

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([("tenant_id".to_string(), "t".to_string())])
    }

    #[tokio::test]
    async fn ships_oldest_first_once_and_survives_a_corrupt_state_file() {
        let tsdb = tempfile::tempdir().unwrap();
        let bdir = tempfile::tempdir().unwrap();
        let newer = write_block(tsdb.path(), 2_000_000);
        let older = write_block(tsdb.path(), 1_000_000);
        let bucket = Bucket::new(&BucketConfig::filesystem(bdir.path()), None).unwrap();
        let s = Shipper::new(bucket.clone(), tsdb.path(), labels(), "receive", None);
        let hold = s.retention_hold();
        assert!(hold.holds(&older));
        let r = s.sync().await.unwrap();
        assert_eq!(r.uploaded, vec![older.ulid, newer.ulid]);
        assert!(!hold.holds(&older) && !hold.holds(&newer));
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tsdb.path().join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(state["version"], 1);
        assert_eq!(state["uploaded"].as_array().unwrap().len(), 2);
        // A second pass does nothing.
        assert_eq!(s.sync().await.unwrap(), SyncReport::default());
        assert_eq!(s.metrics().uploads.get(), 2);

        // Corrupt state file: a new shipper asks the bucket and uploads nothing again.
        std::fs::write(tsdb.path().join(STATE_FILE), b"{not json").unwrap();
        let s2 = Shipper::new(bucket.clone(), tsdb.path(), labels(), "receive", None);
        assert!(s2.retention_hold().holds(&older), "unknown until checked");
        let r = s2.sync().await.unwrap();
        assert_eq!(r.uploaded, Vec::<Ulid>::new());
        assert_eq!(r.found_in_bucket, 2);
        assert_eq!(s2.metrics().uploads.get(), 0);
        assert_eq!(read_state(tsdb.path()).unwrap().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn hash_func_sha256_puts_hashes_in_the_uploaded_meta() {
        let tsdb = tempfile::tempdir().unwrap();
        let bdir = tempfile::tempdir().unwrap();
        let b = write_block(tsdb.path(), 1_000_000);
        let bucket = Bucket::new(&BucketConfig::filesystem(bdir.path()), None).unwrap();
        let s = Shipper::new(bucket, tsdb.path(), labels(), "receive", None)
            .with_hash_func(HashFunc::Sha256);
        assert_eq!(s.sync().await.unwrap().uploaded, vec![b.ulid]);
        let j: serde_json::Value = serde_json::from_slice(
            &std::fs::read(bdir.path().join(b.ulid.to_string()).join("meta.json")).unwrap(),
        )
        .unwrap();
        let local = tsdb.path().join(b.ulid.to_string());
        for f in j["thanos"]["files"].as_array().unwrap() {
            let rel = f["rel_path"].as_str().unwrap();
            let want = (rel != "meta.json").then(|| {
                serde_json::to_value(
                    crate::hash::hash_file(&local.join(rel), HashFunc::Sha256)
                        .unwrap()
                        .unwrap(),
                )
                .unwrap()
            });
            assert_eq!(f.get("hash").cloned(), want, "{rel}");
        }
        // The local meta.json is untouched (no thanos.files there).
        let lm: serde_json::Value =
            serde_json::from_slice(&std::fs::read(local.join("meta.json")).unwrap()).unwrap();
        assert!(lm["thanos"].get("files").is_none());
    }

    /// Rewrites a block's local meta.json as a compaction of level 2.
    fn make_compacted(dir: &Path, meta: &BlockMeta) -> BlockMeta {
        let mut m = meta.clone();
        m.compaction.level = 2;
        tsdb::block::write_meta(&dir.join(meta.ulid.to_string()), &m).unwrap();
        m
    }

    #[tokio::test]
    async fn compacted_blocks_ship_only_when_asked_and_not_over_an_overlap() {
        let tsdb = tempfile::tempdir().unwrap();
        let bdir = tempfile::tempdir().unwrap();
        let bucket = Bucket::new(&BucketConfig::filesystem(bdir.path()), None).unwrap();
        let raw = write_block(tsdb.path(), 1_000_000);
        let compacted = write_block(tsdb.path(), 3_000_000);
        let compacted = make_compacted(tsdb.path(), &compacted);
        let s = Shipper::new(bucket.clone(), tsdb.path(), labels(), "sidecar", None);
        assert_eq!(s.sync().await.unwrap().uploaded, vec![raw.ulid]);
        let s = Shipper::new(bucket.clone(), tsdb.path(), labels(), "sidecar", None)
            .with_upload_compacted(true);
        assert_eq!(s.sync().await.unwrap().uploaded, vec![compacted.ulid]);

        // A compacted block over a time the bucket already has for these labels: refused.
        let tsdb2 = tempfile::tempdir().unwrap();
        let over = write_block(tsdb2.path(), 1_000_000);
        let over = make_compacted(tsdb2.path(), &over);
        let s = Shipper::new(bucket.clone(), tsdb2.path(), labels(), "sidecar", None)
            .with_upload_compacted(true);
        let e = s.sync().await.unwrap_err();
        assert!(
            matches!(&e, ShipperError::Overlap { ulid, other, .. } if *ulid == over.ulid && *other == raw.ulid),
            "{e}"
        );
        // Other labels in the bucket do not count.
        let s = Shipper::new(
            bucket,
            tsdb2.path(),
            BTreeMap::from([("tenant_id".to_string(), "other".to_string())]),
            "sidecar",
            None,
        )
        .with_upload_compacted(true);
        assert_eq!(s.sync().await.unwrap().uploaded, vec![over.ulid]);
    }

    #[tokio::test]
    async fn a_failure_stops_the_pass_and_the_block_stays_held() {
        let tsdb = tempfile::tempdir().unwrap();
        let bdir = tempfile::tempdir().unwrap();
        let first = write_block(tsdb.path(), 1_000_000);
        let second = write_block(tsdb.path(), 2_000_000);
        // The first block's index vanishes: its upload fails, and the second one must
        // wait (time order).
        let idx = tsdb.path().join(first.ulid.to_string()).join("index");
        let saved = std::fs::read(&idx).unwrap();
        std::fs::remove_file(&idx).unwrap();
        let bucket = Bucket::new(&BucketConfig::filesystem(bdir.path()), None).unwrap();
        let s = Shipper::new(bucket, tsdb.path(), labels(), "receive", None);
        let e = s.sync().await.unwrap_err();
        assert!(e.to_string().contains(&first.ulid.to_string()), "{e}");
        assert_eq!(s.metrics().upload_failures.get(), 1);
        assert_eq!(s.metrics().unshipped_blocks.get(), 2);
        assert!(s.metrics().oldest_unshipped_age.get() > 0.0);
        assert!(s.retention_hold().holds(&first) && s.retention_hold().holds(&second));
        assert!(
            !bdir
                .path()
                .join(first.ulid.to_string())
                .join("meta.json")
                .exists()
        );
        std::fs::write(&idx, saved).unwrap();
        let r = s.sync().await.unwrap();
        assert_eq!(r.uploaded, vec![first.ulid, second.ulid]);
        assert_eq!(s.metrics().unshipped_blocks.get(), 0);
        assert_eq!(s.metrics().oldest_unshipped_age.get(), 0.0);
    }
}
