//! Listing the blocks of a data directory, cleaning up half-written ones and deleting
//! whole blocks past the retention time.

use std::path::{Path, PathBuf};

use super::writer::{TMP_FOR_CREATION, TMP_FOR_DELETION, sync_dir};
use super::{BlockError, BlockMeta, Ulid, read_meta};

/// A block directory and its meta.
#[derive(Debug, Clone)]
pub struct BlockEntry {
    pub dir: PathBuf,
    pub meta: BlockMeta,
}

/// Block directories (named by ULID) in `data_dir`, sorted by `minTime` then ULID.
/// A directory whose `meta.json` cannot be read is logged and skipped (it is not
/// deleted: an operator should look at it).
pub fn list_blocks(data_dir: &Path) -> Result<Vec<BlockEntry>, BlockError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(data_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(BlockError::io(data_dir, e)),
    };
    for e in rd {
        let e = e.map_err(|e| BlockError::io(data_dir, e))?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.parse::<Ulid>().is_err() || !e.path().is_dir() {
            continue;
        }
        match read_meta(&e.path()) {
            Ok(meta) => out.push(BlockEntry {
                dir: e.path(),
                meta,
            }),
            Err(err) => {
                tracing::warn!(dir = %e.path().display(), error = %err, "skipping unreadable block")
            }
        }
    }
    out.sort_by_key(|b| (b.meta.min_time, b.meta.ulid));
    Ok(out)
}

/// Removes leftovers of interrupted writes and deletions (`*.tmp-for-creation`,
/// `*.tmp-for-deletion`) in `data_dir`; returns how many were removed.
pub fn remove_tmp_dirs(data_dir: &Path) -> Result<usize, BlockError> {
    let rd = match std::fs::read_dir(data_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(BlockError::io(data_dir, e)),
    };
    let mut n = 0;
    for e in rd {
        let e = e.map_err(|e| BlockError::io(data_dir, e))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(TMP_FOR_CREATION) || name.ends_with(TMP_FOR_DELETION) {
            let p = e.path();
            std::fs::remove_dir_all(&p).map_err(|e| BlockError::io(&p, e))?;
            tracing::info!(dir = %p.display(), "removed leftover temporary block directory");
            n += 1;
        }
    }
    Ok(n)
}

/// Deletes a block directory: renames it to `<ulid>.tmp-for-deletion` first so a crash
/// mid-way never leaves a half-deleted block that looks valid.
pub fn delete_block(dir: &Path) -> Result<(), BlockError> {
    let mut tmp = dir.as_os_str().to_owned();
    tmp.push(TMP_FOR_DELETION);
    let tmp = PathBuf::from(tmp);
    std::fs::rename(dir, &tmp).map_err(|e| BlockError::io(dir, e))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    std::fs::remove_dir_all(&tmp).map_err(|e| BlockError::io(&tmp, e))
}

/// Deletes every block in `data_dir` whose whole range lies more than `retention_ms`
/// before the reference time: `max(newest block maxTime, now_ms)` (Prometheus measures
/// from the newest block; pass `now_ms` to also count wall-clock time). `retention_ms
/// <= 0` disables retention. Returns the metas of the deleted blocks.
pub fn apply_retention(
    data_dir: &Path,
    retention_ms: i64,
    now_ms: Option<i64>,
) -> Result<Vec<BlockMeta>, BlockError> {
    if retention_ms <= 0 {
        return Ok(Vec::new());
    }
    let blocks = list_blocks(data_dir)?;
    let newest = blocks.iter().map(|b| b.meta.max_time).max();
    let reference = match (newest, now_ms) {
        (Some(a), Some(b)) => a.max(b),
        (Some(a), None) => a,
        (None, _) => return Ok(Vec::new()),
    };
    let mut deleted = Vec::new();
    for b in blocks {
        if reference.saturating_sub(b.meta.max_time) >= retention_ms {
            delete_block(&b.dir)?;
            tracing::info!(block = %b.meta.ulid, max_time = b.meta.max_time, "deleted block past retention");
            deleted.push(b.meta);
        }
    }
    Ok(deleted)
}
