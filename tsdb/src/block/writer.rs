//! Writes a complete block directory atomically: everything goes into
//! `<parent>/<ulid>.tmp-for-creation/`, each file and the directory are fsynced, the
//! directory is renamed to `<parent>/<ulid>` and the parent is fsynced.
//!
//! Memory: chunk data is streamed straight into the segment files; per series only its
//! labels and chunk metas go to a scratch file, so the writer holds just the distinct
//! label strings and the postings lists (4 bytes per label of each series).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use storeapi::Labels;

use super::chunks::{ChunkWriter, DEFAULT_SEGMENT_SIZE};
use super::encoding::{Decoder, put_uvarint, put_uvarint_str, put_varint};
use super::index::{ChunkMeta, IndexWriter, label_text, symbol_hash};
use super::meta::{BlockDesc, BlockMeta, BlockMetaCompaction, BlockStats, IndexStats, ThanosMeta};
use super::{BlockError, Ulid, tombstones};
use crate::chunk::{Chunk, ChunkView};

/// Suffix of a block directory still being written.
pub const TMP_FOR_CREATION: &str = ".tmp-for-creation";
/// Suffix of a block directory being deleted.
pub const TMP_FOR_DELETION: &str = ".tmp-for-deletion";

/// Options for a new block.
#[derive(Debug, Clone)]
pub struct BlockOptions {
    /// Use this ULID instead of a fresh one.
    pub ulid: Option<Ulid>,
    /// Thanos's `meta.json` extension (external labels, source, resolution 0). The
    /// writer fills its `index_stats` with what it measured.
    pub thanos: Option<ThanosMeta>,
    /// Compaction level: 1 for a block cut from the head.
    pub compaction_level: u32,
    /// Source blocks; empty means "this block itself" (a head block).
    pub sources: Vec<Ulid>,
    /// Parent blocks of a compacted block.
    pub parents: Vec<BlockDesc>,
    /// Maximum chunk segment size (Prometheus: 512 MiB).
    pub segment_size: u64,
    /// `compaction.hints` (e.g. `from-out-of-order`).
    pub hints: Vec<String>,
}

impl Default for BlockOptions {
    fn default() -> Self {
        BlockOptions {
            ulid: None,
            thanos: None,
            compaction_level: 1,
            sources: Vec::new(),
            parents: Vec::new(),
            segment_size: DEFAULT_SEGMENT_SIZE,
            hints: Vec::new(),
        }
    }
}

/// Writes blocks. See [`BlockWriter::write`].
pub struct BlockWriter;

impl BlockWriter {
    /// Writes one block under `parent` covering `[mint, maxt)` from `series`, which must
    /// come sorted by label set (strictly increasing), each with its chunks in time
    /// order, every chunk inside `[mint, maxt)`. Series without chunks are skipped.
    /// Returns the meta written; the block directory is `parent/<meta.ulid>`.
    pub fn write<I>(
        parent: &Path,
        mint: i64,
        maxt: i64,
        series: I,
        opts: &BlockOptions,
    ) -> Result<BlockMeta, BlockError>
    where
        I: IntoIterator<Item = (Labels, Vec<Chunk>)>,
    {
        Self::write_with(parent, mint, maxt, opts, |w| {
            for (labels, chunks) in series {
                let pairs: Vec<(&str, &str)> = labels
                    .iter()
                    .map(|l| (l.name.as_str(), l.value.as_str()))
                    .collect();
                let views: Vec<ChunkView<'_>> = chunks.iter().map(Chunk::view).collect();
                w.series(&pairs, &views)?;
            }
            Ok(())
        })
    }

    /// [`BlockWriter::write`] for a source that lends each series instead of giving
    /// owned labels and chunks: `feed` calls [`SeriesSink::series`] once per series, in
    /// label order (the head writes its blocks so, without copying a series' strings
    /// and chunk bytes for the writer to drop again).
    pub fn write_with(
        parent: &Path,
        mint: i64,
        maxt: i64,
        opts: &BlockOptions,
        feed: impl FnOnce(&mut SeriesSink) -> Result<(), BlockError>,
    ) -> Result<BlockMeta, BlockError> {
        if maxt <= mint {
            return Err(BlockError::Invalid(format!(
                "block range [{mint}, {maxt}) is empty"
            )));
        }
        let ulid = opts.ulid.unwrap_or_default();
        std::fs::create_dir_all(parent).map_err(|e| BlockError::io(parent, e))?;
        let tmp = parent.join(format!("{ulid}{TMP_FOR_CREATION}"));
        let dst = parent.join(ulid.to_string());
        if dst.exists() {
            return Err(BlockError::Invalid(format!(
                "block {} already exists",
                dst.display()
            )));
        }
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| BlockError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| BlockError::io(&tmp, e))?;
        match write_into(&tmp, ulid, mint, maxt, feed, opts) {
            Ok(meta) => {
                std::fs::rename(&tmp, &dst).map_err(|e| BlockError::io(&dst, e))?;
                sync_dir(parent)?;
                Ok(meta)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }
}

/// The distinct strings of a block's labels, hashed while series stream in (a block
/// of a million series looks up tens of millions of strings: a hash probe each, where
/// an ordered set paid a string compare per tree level) and sorted once at the end.
#[derive(Default)]
struct SymbolSet {
    table: hashbrown::HashTable<String>,
}

impl SymbolSet {
    fn add(&mut self, s: &str) {
        let h = symbol_hash(s);
        if self.table.find(h, |x| x == s).is_none() {
            self.table
                .insert_unique(h, s.to_string(), |x| symbol_hash(x));
        }
    }

    fn into_sorted(self) -> Vec<String> {
        let mut v: Vec<String> = self.table.into_iter().collect();
        v.sort_unstable();
        v
    }
}

/// Pass 1 of a block write, fed one series at a time: chunks to segments, series
/// (labels + chunk metas) to a scratch file, distinct strings to the symbol set.
pub struct SeriesSink {
    mint: i64,
    maxt: i64,
    cw: ChunkWriter,
    scratch: BufWriter<File>,
    scratch_path: PathBuf,
    symbols: SymbolSet,
    stats: BlockStats,
    /// The previous series' labels (buffers reused from series to series; empty
    /// before the first, as no series has an empty label set).
    last: Vec<(String, String)>,
    buf: Vec<u8>,
    metas: Vec<(u64, i64, i64)>,
}

impl SeriesSink {
    /// Adds the next series: label pairs in order (strictly after the previous
    /// series), chunks in time order inside the block's range. A series without chunks
    /// is skipped.
    pub fn series(
        &mut self,
        labels: &[(&str, &str)],
        chunks: &[ChunkView<'_>],
    ) -> Result<(), BlockError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let text = |labels: &[(&str, &str)]| label_text(labels.iter().copied());
        if labels.is_empty() {
            return Err(BlockError::Invalid("series with an empty label set".into()));
        }
        if !self.last.is_empty()
            && labels
                .iter()
                .copied()
                .cmp(self.last.iter().map(|(n, v)| (n.as_str(), v.as_str())))
                != std::cmp::Ordering::Greater
        {
            return Err(BlockError::Invalid(format!(
                "series not sorted: {} after {}",
                text(labels),
                label_text(self.last.iter().map(|(n, v)| (n.as_str(), v.as_str())))
            )));
        }
        let (mint, maxt) = (self.mint, self.maxt);
        let mut prev_max = i64::MIN;
        self.metas.clear();
        for c in chunks {
            if c.min_time < mint || c.max_time >= maxt || c.max_time < c.min_time {
                return Err(BlockError::Invalid(format!(
                    "chunk [{}, {}] of {} outside block range [{mint}, {maxt})",
                    c.min_time,
                    c.max_time,
                    text(labels)
                )));
            }
            if c.min_time <= prev_max {
                return Err(BlockError::Invalid(format!(
                    "chunks of {} overlap or are out of order",
                    text(labels)
                )));
            }
            prev_max = c.max_time;
            let r = self.cw.write(c.encoding, c.data)?;
            self.metas.push((r, c.min_time, c.max_time));
            self.stats.num_chunks += 1;
            self.stats.num_samples += c.num_samples() as u64;
        }
        let buf = &mut self.buf;
        buf.clear();
        put_uvarint(buf, labels.len() as u64);
        for &(n, v) in labels {
            for s in [n, v] {
                self.symbols.add(s);
                put_uvarint_str(buf, s);
            }
        }
        put_uvarint(buf, self.metas.len() as u64);
        for &(r, a, b) in &self.metas {
            put_uvarint(buf, r);
            put_varint(buf, a);
            put_varint(buf, b);
        }
        self.stats.num_series += 1;
        self.scratch
            .write_all(buf)
            .map_err(|e| BlockError::io(&self.scratch_path, e))?;
        // Keep the labels for the next order check, reusing the strings' buffers.
        self.last.truncate(labels.len());
        for (k, &(n, v)) in labels.iter().enumerate() {
            match self.last.get_mut(k) {
                Some((a, b)) => {
                    a.clear();
                    a.push_str(n);
                    b.clear();
                    b.push_str(v);
                }
                None => self.last.push((n.to_string(), v.to_string())),
            }
        }
        Ok(())
    }
}

fn write_into(
    dir: &Path,
    ulid: Ulid,
    mint: i64,
    maxt: i64,
    feed: impl FnOnce(&mut SeriesSink) -> Result<(), BlockError>,
    opts: &BlockOptions,
) -> Result<BlockMeta, BlockError> {
    let chunks_dir = dir.join("chunks");
    let scratch_path = dir.join("index.series.tmp");
    let scratch = File::create(&scratch_path).map_err(|e| BlockError::io(&scratch_path, e))?;
    let mut sink = SeriesSink {
        mint,
        maxt,
        cw: ChunkWriter::new(&chunks_dir, opts.segment_size)?,
        scratch: BufWriter::with_capacity(1 << 20, scratch),
        scratch_path,
        symbols: SymbolSet::default(),
        stats: BlockStats::default(),
        last: Vec::new(),
        buf: Vec::with_capacity(256),
        metas: Vec::new(),
    };
    feed(&mut sink)?;
    let SeriesSink {
        cw,
        mut scratch,
        scratch_path,
        symbols,
        stats,
        ..
    } = sink;
    let chunk_max_size = cw.max_record_size();
    cw.finish()?;
    scratch
        .flush()
        .map_err(|e| BlockError::io(&scratch_path, e))?;
    drop(scratch);

    // Pass 2: the index.
    let mut iw = IndexWriter::new(&dir.join("index"), symbols.into_sorted())?;
    {
        let data = super::map_file(&scratch_path)?;
        let mut d = Decoder::new(&data, "series scratch file");
        let mut metas = Vec::new();
        let mut ls: Vec<(&str, &str)> = Vec::new();
        while d.remaining() > 0 {
            let n = d.uvarint()? as usize;
            ls.clear();
            for _ in 0..n {
                let name = d.uvarint_str()?;
                let value = d.uvarint_str()?;
                ls.push((name, value));
            }
            let k = d.uvarint()? as usize;
            metas.clear();
            for _ in 0..k {
                let chunk_ref = d.uvarint()?;
                let min_time = d.varint()?;
                let max_time = d.varint()?;
                metas.push(ChunkMeta {
                    chunk_ref,
                    min_time,
                    max_time,
                });
            }
            iw.add_series_pairs(ls.iter().copied(), &metas)?;
        }
    }
    let index_stats = IndexStats {
        series_max_size: i64::try_from(iw.max_series_size()).unwrap_or(i64::MAX),
        chunk_max_size: i64::try_from(chunk_max_size).unwrap_or(i64::MAX),
    };
    iw.finish()?;
    std::fs::remove_file(&scratch_path).map_err(|e| BlockError::io(&scratch_path, e))?;

    let tomb_path = dir.join("tombstones");
    write_file_synced(&tomb_path, &tombstones::encode(&Default::default()))?;

    let meta = BlockMeta {
        ulid,
        min_time: mint,
        max_time: maxt,
        stats,
        compaction: BlockMetaCompaction {
            level: opts.compaction_level.max(1),
            sources: if opts.sources.is_empty() {
                vec![ulid]
            } else {
                opts.sources.clone()
            },
            parents: opts.parents.clone(),
            hints: opts.hints.clone(),
            ..Default::default()
        },
        version: 1,
        // Measured here, where every series entry and chunk record is written, so no
        // reader has to scan the block for them (Thanos's compactor re-reads its output).
        thanos: opts.thanos.clone().map(|mut t| {
            t.index_stats = index_stats;
            t
        }),
    };
    write_meta(dir, &meta)?;
    sync_dir(&chunks_dir)?;
    sync_dir(dir)?;
    Ok(meta)
}

/// Writes `dir/meta.json` (indented like Prometheus) atomically and durably.
pub fn write_meta(dir: &Path, meta: &BlockMeta) -> Result<(), BlockError> {
    let json = serde_json::to_vec_pretty(meta)
        .map_err(|e| BlockError::Invalid(format!("encode meta.json: {e}")))?;
    let tmp = dir.join("meta.json.tmp");
    write_file_synced(&tmp, &json)?;
    let dst = dir.join("meta.json");
    std::fs::rename(&tmp, &dst).map_err(|e| BlockError::io(&dst, e))?;
    Ok(())
}

fn write_file_synced(path: &Path, data: &[u8]) -> Result<(), BlockError> {
    let mut f = File::create(path).map_err(|e| BlockError::io(path, e))?;
    f.write_all(data).map_err(|e| BlockError::io(path, e))?;
    f.sync_all().map_err(|e| BlockError::io(path, e))
}

/// fsyncs a directory so renames and new entries in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), BlockError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| BlockError::io(dir, e))
}

/// The directory a block with this ULID has under `parent`.
pub fn block_dir(parent: &Path, ulid: Ulid) -> PathBuf {
    parent.join(ulid.to_string())
}
