//! Immutable blocks in the Prometheus TSDB on-disk layout, byte-compatible with
//! Prometheus 3.x (and so readable by promtool and Thanos):
//!
//! ```text
//! <data dir>/<ULID>/
//!     meta.json      block meta, version 1, optional `thanos` section
//!     index          index format v2: symbols, series, postings, TOC
//!     chunks/000001  chunk segments (≤ 512 MiB each)
//!     tombstones     deleted intervals (empty when we write a block)
//! ```
//!
//! [`BlockWriter::write`] writes a block atomically; [`Block::open`] reads one. Blocks
//! are opened by memory-mapping `index` and the chunk segments: they are never modified
//! after the rename that publishes them, and deletion unlinks them (existing mappings
//! stay valid). Every section read is checksum-verified; corrupt input yields
//! [`BlockError`], never a panic.

pub mod chunks;
pub mod compact;
pub mod downsample;
pub mod encoding;
pub mod index;
pub mod meta;
mod reader;
pub mod retention;
pub mod tombstones;
mod ulid;
mod writer;

use std::path::{Path, PathBuf};

use bytes::Bytes;

pub use compact::{
    Conflict, DedupFunc, MergeError, MergeReport, merge_blocks, merge_blocks_with, verify_block,
};
pub use downsample::downsample_block;
pub use index::ChunkMeta;
pub use meta::{
    BlockDesc, BlockMeta, BlockMetaCompaction, BlockStats, IndexStats, ThanosDownsample, ThanosMeta,
};
pub use reader::{
    Block, PostingsPlan, SeriesIter, label_names, label_values, names_of, postings_for_matchers,
    values_of,
};
pub use retention::{BlockEntry, apply_retention, delete_block, list_blocks, remove_tmp_dirs};
pub use ulid::{Ulid, UlidError};
pub use writer::{
    BlockOptions, BlockWriter, SeriesSink, TMP_FOR_CREATION, TMP_FOR_DELETION, block_dir, sync_dir,
    write_meta,
};

/// Why a block could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt block data: {0}")]
    Corrupt(String),
    #[error("checksum mismatch in {0}")]
    Checksum(&'static str),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("invalid block input: {0}")]
    Invalid(String),
    #[error("bad meta.json in {path}: {reason}")]
    Meta { path: PathBuf, reason: String },
    #[error("chunk: {0}")]
    Chunk(#[from] crate::chunk::ChunkError),
}

impl BlockError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        BlockError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Maps a whole file read-only. Zero-length files give an empty buffer.
pub fn map_file(path: &Path) -> Result<Bytes, BlockError> {
    let f = std::fs::File::open(path).map_err(|e| BlockError::io(path, e))?;
    let len = f.metadata().map_err(|e| BlockError::io(path, e))?.len();
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: block files are immutable once the block directory is published (the
    // writer renames a fully written, fsynced directory into place) and are only ever
    // removed, never truncated or rewritten, so the mapping stays valid.
    let m = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| BlockError::io(path, e))?;
    Ok(Bytes::from_owner(m))
}

/// Reads and validates `dir/meta.json`.
pub fn read_meta(dir: &Path) -> Result<BlockMeta, BlockError> {
    let p = dir.join("meta.json");
    let b = std::fs::read(&p).map_err(|e| BlockError::io(&p, e))?;
    let m: BlockMeta = serde_json::from_slice(&b).map_err(|e| BlockError::Meta {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    if m.version != 1 {
        return Err(BlockError::Meta {
            path: p,
            reason: format!("unexpected meta file version {}", m.version),
        });
    }
    Ok(m)
}

#[cfg(test)]
mod tests;
