//! `tools bucket upload-blocks`: bringing the blocks of an existing Prometheus (or
//! Orrery) data directory into a bucket — how a user moves the history they already
//! have.
//!
//! Every block of the directory goes up (any compaction level; empty blocks are
//! skipped, as Thanos's shipper does), oldest first, in Thanos's layout with
//! `meta.json` last and the given external labels, `source: bucket.upload`. A block
//! already in the bucket (its `meta.json` is there) is skipped, so running the command
//! twice uploads nothing twice; a partial upload (no `meta.json`) is redone whole. A
//! block whose time range overlaps a block already in the bucket with the same
//! external labels and resolution is refused: the two would be double-counted by
//! readers and the compactor would have to merge them vertically.

use std::collections::BTreeMap;
use std::path::Path;

use tsdb::block::{BlockMeta, Ulid};

use crate::block::{BlockTransferError, upload_block_hashed};
use crate::bucket::{Bucket, BucketError};
use crate::discovery::MetaFetcher;
use crate::hash::HashFunc;
use crate::verify::group_key;

/// Thanos's `metadata.BucketUploadSource`.
pub const SOURCE: &str = "bucket.upload";

/// Why `upload_blocks` could not run at all (per-block refusals are in the report).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Bucket(#[from] BucketError),
    #[error("reading blocks in {dir}: {reason}")]
    Local { dir: String, reason: String },
    #[error("empty external labels are not allowed: give at least one --label")]
    NoLabels,
    #[error(transparent)]
    Transfer(#[from] BlockTransferError),
}

/// What happened to each block of the directory.
#[derive(Debug, Default)]
pub struct UploadReport {
    pub uploaded: Vec<Ulid>,
    /// Already in the bucket.
    pub present: Vec<Ulid>,
    /// No samples.
    pub empty: Vec<Ulid>,
    /// Overlapping a block of the same group already in the bucket: (block, why).
    pub refused: Vec<(Ulid, String)>,
}

/// The bucket's `meta` with the labels and resolution a local block would get, for the
/// overlap check.
fn as_uploaded(meta: &BlockMeta, labels: &BTreeMap<String, String>) -> BlockMeta {
    let mut m = meta.clone();
    let mut t = m
        .thanos
        .take()
        .unwrap_or_else(|| tsdb::block::ThanosMeta::new(BTreeMap::new(), SOURCE));
    t.labels = labels.clone();
    m.thanos = Some(t);
    m
}

/// Uploads the blocks of `data_dir` with `labels` (see the module doc), with file
/// hashes in `thanos.files` unless `hash` is [`HashFunc::None`].
pub async fn upload_blocks(
    bucket: &Bucket,
    data_dir: &Path,
    labels: &BTreeMap<String, String>,
    hash: HashFunc,
) -> Result<UploadReport, UploadError> {
    if labels.is_empty() {
        return Err(UploadError::NoLabels);
    }
    let local = tsdb::block::list_blocks(data_dir).map_err(|e| UploadError::Local {
        dir: data_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let found = MetaFetcher::new(bucket.clone(), None).fetch().await?;
    // Blocks of the bucket that will stay (not marked for deletion), grouped as readers
    // group them; uploads join their group as they land.
    let mut groups: BTreeMap<String, Vec<(i64, i64, Ulid)>> = BTreeMap::new();
    for e in found.blocks.values().filter(|e| e.deletion_mark.is_none()) {
        groups.entry(group_key(&e.meta)).or_default().push((
            e.meta.min_time,
            e.meta.max_time,
            e.meta.ulid,
        ));
    }
    let mut report = UploadReport::default();
    for b in local {
        let m = &b.meta;
        if found.blocks.contains_key(&m.ulid) {
            report.present.push(m.ulid);
            continue;
        }
        if m.stats.num_samples == 0 {
            report.empty.push(m.ulid);
            continue;
        }
        let key = group_key(&as_uploaded(m, labels));
        let group = groups.entry(key.clone()).or_default();
        if let Some(&(mint, maxt, other)) = group
            .iter()
            .find(|(mint, maxt, _)| m.min_time < *maxt && *mint < m.max_time)
        {
            report.refused.push((
                m.ulid,
                format!(
                    "[{}, {}) overlaps block {other} [{mint}, {maxt}) already in the bucket with the same labels and resolution ({key})",
                    m.min_time, m.max_time
                ),
            ));
            continue;
        }
        let up = upload_block_hashed(bucket, &b.dir, labels, SOURCE, hash).await?;
        tracing::info!(block = %up.ulid, mint = up.min_time, maxt = up.max_time, level = up.compaction.level, "uploaded block");
        group.push((m.min_time, m.max_time, m.ulid));
        report.uploaded.push(m.ulid);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::tests::write_block;
    use crate::config::BucketConfig;

    #[tokio::test]
    async fn uploads_once_and_refuses_overlaps_in_the_same_group() {
        let data = tempfile::tempdir().unwrap();
        let bdir = tempfile::tempdir().unwrap();
        let bucket = Bucket::new(&BucketConfig::filesystem(bdir.path()), None).unwrap();
        let a = write_block(data.path(), 0);
        let b = write_block(data.path(), 10_000);
        let x = BTreeMap::from([("cluster".to_string(), "x".to_string())]);
        assert!(matches!(
            upload_blocks(&bucket, data.path(), &BTreeMap::new(), HashFunc::None).await,
            Err(UploadError::NoLabels)
        ));
        let r = upload_blocks(&bucket, data.path(), &x, HashFunc::Sha256)
            .await
            .unwrap();
        assert_eq!(r.uploaded, vec![a.ulid, b.ulid]);
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(bdir.path().join(format!("{}/meta.json", a.ulid))).unwrap(),
        )
        .unwrap();
        assert_eq!(meta["thanos"]["labels"]["cluster"], "x");
        assert_eq!(meta["thanos"]["source"], "bucket.upload");
        assert_eq!(meta["thanos"]["files"][0]["hash"]["hashFunc"], "SHA256");

        let r = upload_blocks(&bucket, data.path(), &x, HashFunc::Sha256)
            .await
            .unwrap();
        assert!(r.uploaded.is_empty());
        assert_eq!(r.present, vec![a.ulid, b.ulid]);

        // A new block overlapping a: refused under the same labels, fine under others.
        let other = tempfile::tempdir().unwrap();
        let c = write_block(other.path(), 5_000);
        let r = upload_blocks(&bucket, other.path(), &x, HashFunc::None)
            .await
            .unwrap();
        assert!(r.uploaded.is_empty());
        assert_eq!(r.refused.len(), 1);
        assert!(
            r.refused[0].1.contains(&a.ulid.to_string()),
            "{:?}",
            r.refused
        );
        assert!(!bdir.path().join(c.ulid.to_string()).exists());
        let y = BTreeMap::from([("cluster".to_string(), "y".to_string())]);
        let r = upload_blocks(&bucket, other.path(), &y, HashFunc::None)
            .await
            .unwrap();
        assert_eq!(r.uploaded, vec![c.ulid]);
    }
}
