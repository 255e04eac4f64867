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
        Self::write_in(
            parent,
            mint,
            maxt,
            opts,
            SinkSymbols::Text(SymbolSet::default()),
            None::<NoStrings>,
            feed,
        )
    }

    /// [`BlockWriter::write_with`] for a source that names label strings by ids of its
    /// own string table: `feed` calls [`SeriesSink::series_ids`], and `strings` gives the
    /// text of the ids used, once, when the index is written (in the order asked). The
    /// head writes its blocks so: its series hold their labels as ids already, and
    /// hashing every label string of every series twice to find the block's symbols
    /// was the largest part of a block cut at a million series (issue #26). The ids
    /// must name the same strings until this returns.
    pub fn write_with_ids(
        parent: &Path,
        mint: i64,
        maxt: i64,
        opts: &BlockOptions,
        strings: impl FnOnce(&[u32]) -> Vec<String>,
        feed: impl FnOnce(&mut SeriesSink) -> Result<(), BlockError>,
    ) -> Result<BlockMeta, BlockError> {
        Self::write_in(
            parent,
            mint,
            maxt,
            opts,
            SinkSymbols::Ids(Vec::new()),
            Some(strings),
            feed,
        )
    }

    fn write_in<S: FnOnce(&[u32]) -> Vec<String>>(
        parent: &Path,
        mint: i64,
        maxt: i64,
        opts: &BlockOptions,
        symbols: SinkSymbols,
        strings: Option<S>,
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
        match write_into(&tmp, ulid, mint, maxt, symbols, strings, feed, opts) {
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

/// What [`BlockWriter::write_with_ids`]'s caller has instead of strings.
type NoStrings = fn(&[u32]) -> Vec<String>;

/// Marks a source id no series used, in [`SinkSymbols::Ids`].
const UNUSED: u32 = u32::MAX;

/// How a sink learns its block's symbols.
enum SinkSymbols {
    /// Series come as text ([`SeriesSink::series`]): each string is hashed into the set.
    Text(SymbolSet),
    /// Series come as source ids ([`SeriesSink::series_ids`]): by source id, [`UNUSED`]
    /// or used (0), and once the symbols are sorted, the block's id of that string.
    Ids(Vec<u32>),
}

/// Pass 1 of a block write, fed one series at a time: chunks to segments, series
/// (labels + chunk metas) to a scratch file, distinct strings (or the source's ids of
/// them) to the symbol set.
pub struct SeriesSink {
    mint: i64,
    maxt: i64,
    cw: ChunkWriter,
    scratch: BufWriter<File>,
    scratch_path: PathBuf,
    symbols: SinkSymbols,
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
        let SinkSymbols::Text(symbols) = &mut self.symbols else {
            return Err(BlockError::Invalid(format!(
                "series {} given as text to a writer of symbol ids",
                text(labels)
            )));
        };
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
        let buf = &mut self.buf;
        buf.clear();
        put_uvarint(buf, labels.len() as u64);
        for &(n, v) in labels {
            for s in [n, v] {
                symbols.add(s);
                put_uvarint_str(buf, s);
            }
        }
        self.chunks(chunks, || text(labels))?;
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

    /// [`Self::series`] for a writer made by [`BlockWriter::write_with_ids`]: the labels
    /// as the source's ids, name and value of each label in turn. Their order is checked
    /// when the index is written, by the strings' order.
    pub fn series_ids(&mut self, ids: &[u32], chunks: &[ChunkView<'_>]) -> Result<(), BlockError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let SinkSymbols::Ids(used) = &mut self.symbols else {
            return Err(BlockError::Invalid(format!(
                "series of symbol ids {ids:?} given to a writer of text"
            )));
        };
        if ids.is_empty() || !ids.len().is_multiple_of(2) {
            return Err(BlockError::Invalid(format!(
                "series of symbol ids {ids:?} is not a non-empty list of name and value pairs"
            )));
        }
        let buf = &mut self.buf;
        buf.clear();
        put_uvarint(buf, (ids.len() / 2) as u64);
        for &id in ids {
            let i = id as usize;
            if i >= used.len() {
                if id == UNUSED {
                    return Err(BlockError::Invalid(format!("symbol id {id} out of range")));
                }
                used.resize(i + 1, UNUSED);
            }
            used[i] = 0;
            put_uvarint(buf, u64::from(id));
        }
        self.chunks(chunks, || format!("of symbol ids {ids:?}"))
    }

    /// Writes `chunks` and then the series (its labels already in `self.buf`, its chunk
    /// metas appended here) to the scratch file.
    fn chunks(
        &mut self,
        chunks: &[ChunkView<'_>],
        what: impl Fn() -> String,
    ) -> Result<(), BlockError> {
        let (mint, maxt) = (self.mint, self.maxt);
        let mut prev_max = i64::MIN;
        self.metas.clear();
        for c in chunks {
            if c.min_time < mint || c.max_time >= maxt || c.max_time < c.min_time {
                return Err(BlockError::Invalid(format!(
                    "chunk [{}, {}] of {} outside block range [{mint}, {maxt})",
                    c.min_time,
                    c.max_time,
                    what()
                )));
            }
            if c.min_time <= prev_max {
                return Err(BlockError::Invalid(format!(
                    "chunks of {} overlap or are out of order",
                    what()
                )));
            }
            prev_max = c.max_time;
            let r = self.cw.write(c.encoding, c.data)?;
            self.metas.push((r, c.min_time, c.max_time));
            self.stats.num_chunks += 1;
            self.stats.num_samples += c.num_samples() as u64;
        }
        let buf = &mut self.buf;
        put_uvarint(buf, self.metas.len() as u64);
        for &(r, a, b) in &self.metas {
            put_uvarint(buf, r);
            put_varint(buf, a);
            put_varint(buf, b);
        }
        self.stats.num_series += 1;
        self.scratch
            .write_all(buf)
            .map_err(|e| BlockError::io(&self.scratch_path, e))
    }
}

/// The block's sorted symbols from the ids its series used: `strings` gives their
/// text, and `used` (by source id) becomes each used id's index in the result.
fn sorted_from_ids(
    used: &mut [u32],
    strings: impl FnOnce(&[u32]) -> Vec<String>,
) -> Result<Vec<String>, BlockError> {
    let ids: Vec<u32> = (0..used.len() as u32)
        .filter(|&i| used[i as usize] != UNUSED)
        .collect();
    let mut texts = strings(&ids);
    if texts.len() != ids.len() {
        return Err(BlockError::Invalid(format!(
            "asked for the text of {} symbol ids, got {}",
            ids.len(),
            texts.len()
        )));
    }
    // Sorted by position (4 bytes each), not by moving (text, id) pairs around: a cut
    // at a million series has millions of symbols.
    let mut order: Vec<u32> = (0..texts.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| texts[a as usize].cmp(&texts[b as usize]));
    let mut sorted: Vec<String> = Vec::with_capacity(texts.len());
    for k in order {
        let text = std::mem::take(&mut texts[k as usize]);
        // Two ids of one string (a source that holds a string twice) share its symbol.
        if sorted.last() != Some(&text) {
            sorted.push(text);
        }
        used[ids[k as usize] as usize] = (sorted.len() - 1) as u32;
    }
    Ok(sorted)
}

#[allow(clippy::too_many_arguments)]
fn write_into<S: FnOnce(&[u32]) -> Vec<String>>(
    dir: &Path,
    ulid: Ulid,
    mint: i64,
    maxt: i64,
    symbols: SinkSymbols,
    strings: Option<S>,
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
        symbols,
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
    let (sorted, by_id) = match symbols {
        SinkSymbols::Text(set) => (set.into_sorted(), None),
        SinkSymbols::Ids(mut used) => {
            let Some(strings) = strings else {
                return Err(BlockError::Invalid(
                    "a writer of symbol ids was given no strings".into(),
                ));
            };
            (sorted_from_ids(&mut used, strings)?, Some(used))
        }
    };
    let mut iw = IndexWriter::new(&dir.join("index"), sorted)?;
    {
        let data = super::map_file(&scratch_path)?;
        let mut d = Decoder::new(&data, "series scratch file");
        let mut metas = Vec::new();
        let mut ls: Vec<(&str, &str)> = Vec::new();
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        while d.remaining() > 0 {
            let n = d.uvarint()? as usize;
            ls.clear();
            pairs.clear();
            match by_id.as_ref() {
                None => {
                    for _ in 0..n {
                        let name = d.uvarint_str()?;
                        let value = d.uvarint_str()?;
                        ls.push((name, value));
                    }
                }
                Some(map) => {
                    let block_id = |d: &mut Decoder<'_>| -> Result<u32, BlockError> {
                        let id = d.uvarint()?;
                        usize::try_from(id)
                            .ok()
                            .and_then(|i| map.get(i).copied())
                            .filter(|&b| b != UNUSED)
                            .ok_or_else(|| {
                                BlockError::Corrupt(format!(
                                    "series scratch file names unknown symbol id {id}"
                                ))
                            })
                    };
                    for _ in 0..n {
                        let name = block_id(&mut d)?;
                        let value = block_id(&mut d)?;
                        pairs.push((name, value));
                    }
                }
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
            if by_id.is_some() {
                iw.add_series_ids(&pairs, &metas)?;
            } else {
                iw.add_series_pairs(ls.iter().copied(), &metas)?;
            }
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
