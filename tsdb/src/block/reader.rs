//! Opening a block and answering selects, label names and label values from it.

use std::path::{Path, PathBuf};

use storeapi::{Labels, MatchOp, Matcher};

use super::chunks::ChunkReader;
use super::index::IndexReader;
use super::tombstones::{self, Tombstones};
use super::{BlockError, BlockMeta, map_file, read_meta};
use crate::chunk::{Chunk, Encoding, XorChunk};

/// An open, immutable block.
#[derive(Debug)]
pub struct Block {
    dir: PathBuf,
    meta: BlockMeta,
    index: IndexReader,
    chunks: ChunkReader,
    tombstones: Tombstones,
}

impl Block {
    /// Opens the block in `dir`: parses `meta.json`, maps and checks `index` (header,
    /// TOC, symbols, postings offset table) and the chunk segments, reads `tombstones`.
    pub fn open(dir: &Path) -> Result<Block, BlockError> {
        let meta = read_meta(dir)?;
        let index = IndexReader::new(map_file(&dir.join("index"))?)?;
        let chunks = ChunkReader::open(&dir.join("chunks"))?;
        let tombstones = tombstones::read(dir)?;
        Ok(Block {
            dir: dir.to_path_buf(),
            meta,
            index,
            chunks,
            tombstones,
        })
    }

    pub fn meta(&self) -> &BlockMeta {
        &self.meta
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of index plus chunk segments.
    pub fn size_bytes(&self) -> u64 {
        self.index.size() + self.chunks.size()
    }

    /// Whether the block's range `[minTime, maxTime)` overlaps the closed `[mint, maxt]`.
    pub fn overlaps(&self, mint: i64, maxt: i64) -> bool {
        self.meta.min_time <= maxt && mint < self.meta.max_time
    }

    /// Series matching every matcher that have a chunk overlapping the closed interval
    /// `[mint, maxt]`, sorted by labels, with those chunks (whole chunks: samples
    /// outside the interval may be included; callers trim). Deleted samples
    /// (tombstones) are removed, re-encoding the affected XOR chunks.
    pub fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<(Labels, Vec<Chunk>)>, BlockError> {
        let mut out = Vec::new();
        self.for_each_series(matchers, mint, maxt, |l, c| {
            out.push((l, c));
            Ok(())
        })?;
        Ok(out)
    }

    /// Like [`Block::select`] but hands series to `f` one by one (sorted by labels)
    /// instead of collecting them.
    pub fn for_each_series(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        mut f: impl FnMut(Labels, Vec<Chunk>) -> Result<(), BlockError>,
    ) -> Result<(), BlockError> {
        if !self.overlaps(mint, maxt) {
            return Ok(());
        }
        for id in self.postings_for_matchers(matchers)? {
            let (labels, metas) = self.index.series(id)?;
            let mut chunks = Vec::new();
            for m in metas {
                if m.max_time < mint || m.min_time > maxt {
                    continue;
                }
                chunks.push(self.chunks.chunk(m.chunk_ref, m.min_time, m.max_time)?);
            }
            if let Some(ivs) = self.tombstones.get(&id) {
                chunks = apply_tombstones(chunks, ivs)?;
            }
            if chunks.is_empty() {
                continue;
            }
            f(labels, chunks)?;
        }
        Ok(())
    }

    /// Label names of series matching `matchers` (all names when empty), sorted.
    pub fn label_names(&self, matchers: &[Matcher]) -> Result<Vec<String>, BlockError> {
        label_names(&self.index, matchers)
    }

    /// Values of label `name` over series matching `matchers` (all when empty), sorted.
    pub fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, BlockError> {
        label_values(&self.index, name, matchers)
    }

    /// Sorted series IDs matching all `matchers` (Prometheus semantics: a matcher that
    /// matches "" also selects series without the label). No matchers: all series.
    pub fn postings_for_matchers(&self, matchers: &[Matcher]) -> Result<Vec<u32>, BlockError> {
        postings_for_matchers(&self.index, matchers)
    }
}

/// Label names of series matching `matchers` in `index` (all names when empty), sorted.
pub fn label_names(index: &IndexReader, matchers: &[Matcher]) -> Result<Vec<String>, BlockError> {
    if matchers.is_empty() {
        return Ok(index.label_names());
    }
    let mut names = std::collections::BTreeSet::new();
    for id in postings_for_matchers(index, matchers)? {
        for l in &index.series_labels(id)? {
            if !names.contains(&l.name) {
                names.insert(l.name.clone());
            }
        }
    }
    Ok(names.into_iter().map(String::from).collect())
}

/// Values of label `name` over series matching `matchers` in `index` (all when empty),
/// sorted.
pub fn label_values(
    index: &IndexReader,
    name: &str,
    matchers: &[Matcher],
) -> Result<Vec<String>, BlockError> {
    if matchers.is_empty() {
        return Ok(index.label_values(name));
    }
    let mut values = std::collections::BTreeSet::new();
    for id in postings_for_matchers(index, matchers)? {
        if let Some(v) = index.series_labels(id)?.get(name)
            && !values.contains(v)
        {
            values.insert(v.to_string());
        }
    }
    Ok(values.into_iter().collect())
}

/// Sorted series IDs of `index` matching all `matchers` (Prometheus semantics: a
/// matcher that matches "" also selects series without the label). No matchers: all
/// series. Shared by [`Block`] and readers that hold only a block's index (the store
/// gateway).
pub fn postings_for_matchers(
    index: &IndexReader,
    matchers: &[Matcher],
) -> Result<Vec<u32>, BlockError> {
    let mut positive: Option<Vec<u32>> = None;
    let mut negative: Vec<u32> = Vec::new();
    // Positive matchers first: they narrow the set fastest.
    let mut ms: Vec<&Matcher> = matchers.iter().collect();
    ms.sort_by_key(|m| m.matches_empty());
    for m in ms {
        if m.matches_empty() {
            // Keep series lacking the label or with a matching value: drop those
            // whose value does not match.
            match m.op {
                MatchOp::NotEqual => {
                    if let Some(off) = index.postings_offset(&m.name, &m.value) {
                        negative.extend(index.postings(off)?);
                    }
                }
                _ => {
                    let mut offs = Vec::new();
                    index.for_each_value(&m.name, |v, off| {
                        if !m.matches(v) {
                            offs.push(off);
                        }
                    });
                    for off in offs {
                        negative.extend(index.postings(off)?);
                    }
                }
            }
        } else {
            let mut ids = Vec::new();
            match m.op {
                MatchOp::Equal => {
                    if let Some(off) = index.postings_offset(&m.name, &m.value) {
                        ids = index.postings(off)?;
                    }
                }
                _ => {
                    let mut offs = Vec::new();
                    index.for_each_value(&m.name, |v, off| {
                        if m.matches(v) {
                            offs.push(off);
                        }
                    });
                    for off in offs {
                        ids.extend(index.postings(off)?);
                    }
                    ids.sort_unstable();
                    ids.dedup();
                }
            }
            positive = Some(match positive {
                None => ids,
                Some(p) => intersect(&p, &ids),
            });
            if positive.as_ref().is_some_and(|p| p.is_empty()) {
                return Ok(Vec::new());
            }
        }
    }
    let base = match positive {
        Some(p) => p,
        None => index.all_postings()?,
    };
    if negative.is_empty() {
        return Ok(base);
    }
    negative.sort_unstable();
    negative.dedup();
    Ok(subtract(&base, &negative))
}

fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

fn subtract(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len());
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if j < b.len() && b[j] == x {
            continue;
        }
        out.push(x);
    }
    out
}

/// Drops deleted samples, re-encoding chunks that lose some of theirs.
fn apply_tombstones(chunks: Vec<Chunk>, ivs: &[(i64, i64)]) -> Result<Vec<Chunk>, BlockError> {
    let mut out = Vec::with_capacity(chunks.len());
    for c in chunks {
        if !ivs.iter().any(|&(a, b)| a <= c.max_time && c.min_time <= b) {
            out.push(c);
            continue;
        }
        if c.encoding != Encoding::Xor {
            return Err(BlockError::Unsupported(format!(
                "tombstones over {:?} chunks",
                c.encoding
            )));
        }
        let mut x = XorChunk::new();
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for s in c.iter()? {
            let (t, v) = s?;
            if tombstones::is_deleted(ivs, t) {
                continue;
            }
            x.append(t, v)?;
            lo = lo.min(t);
            hi = hi.max(t);
        }
        if x.num_samples() > 0 {
            out.push(Chunk {
                min_time: lo,
                max_time: hi,
                encoding: Encoding::Xor,
                data: bytes::Bytes::from(x.into_bytes()),
            });
        }
    }
    Ok(out)
}

impl Block {
    /// Every series of the block, sorted by labels, read lazily one at a time (only the
    /// sorted series IDs are held): what a merge of several blocks streams through.
    /// Tombstoned samples are removed as in [`Block::select`].
    pub fn series_iter(&self) -> Result<SeriesIter<'_>, BlockError> {
        Ok(SeriesIter {
            block: self,
            ids: self.index.all_postings()?,
            pos: 0,
        })
    }
}

/// Lazy iterator over a block's series; see [`Block::series_iter`].
pub struct SeriesIter<'a> {
    block: &'a Block,
    ids: Vec<u32>,
    pos: usize,
}

impl Iterator for SeriesIter<'_> {
    type Item = Result<(Labels, Vec<Chunk>), BlockError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let id = *self.ids.get(self.pos)?;
            self.pos += 1;
            let r = (|| {
                let (labels, metas) = self.block.index.series(id)?;
                let mut chunks = Vec::with_capacity(metas.len());
                for m in metas {
                    chunks.push(
                        self.block
                            .chunks
                            .chunk(m.chunk_ref, m.min_time, m.max_time)?,
                    );
                }
                if let Some(ivs) = self.block.tombstones.get(&id) {
                    chunks = apply_tombstones(chunks, ivs)?;
                }
                Ok((labels, chunks))
            })();
            match r {
                Ok((_, c)) if c.is_empty() => continue,
                other => return Some(other),
            }
        }
    }
}
