//! Opening a block and answering selects, label names and label values from it.

use std::path::{Path, PathBuf};

use storeapi::{Labels, MatchOp, Matcher};

use super::chunks::ChunkReader;
use super::index::{IndexReader, PostingsRange, PostingsTable};
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
    let labels = postings_for_matchers(index, matchers)?
        .into_iter()
        .map(|id| index.series_labels(id))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(names_of(&labels))
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
    let labels = postings_for_matchers(index, matchers)?
        .into_iter()
        .map(|id| index.series_labels(id))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(values_of(name, &labels))
}

/// The distinct label names of `series`, sorted (LabelNames with matchers).
pub fn names_of(series: &[Labels]) -> Vec<String> {
    let mut names = std::collections::BTreeSet::new();
    for l in series.iter().flat_map(|s| s.iter()) {
        if !names.contains(l.name.as_str()) {
            names.insert(l.name.to_string());
        }
    }
    names.into_iter().collect()
}

/// The distinct values of label `name` in `series`, sorted (LabelValues with matchers).
pub fn values_of(name: &str, series: &[Labels]) -> Vec<String> {
    let mut values = std::collections::BTreeSet::new();
    for v in series.iter().filter_map(|s| s.get(name)) {
        if !values.contains(v) {
            values.insert(v.to_string());
        }
    }
    values.into_iter().collect()
}

/// Sorted series IDs of `index` matching all `matchers` (Prometheus semantics: a
/// matcher that matches "" also selects series without the label). No matchers: all
/// series. Shared by [`Block`] and readers that hold only a block's index; a reader
/// that fetches postings lists itself uses [`PostingsPlan`] directly.
pub fn postings_for_matchers(
    index: &IndexReader,
    matchers: &[Matcher],
) -> Result<Vec<u32>, BlockError> {
    let plan = PostingsPlan::new(index.postings_table(), matchers);
    let lists = plan
        .lists()
        .iter()
        .map(|r| index.postings(r.start))
        .collect::<Result<Vec<_>, _>>()?;
    plan.evaluate(&lists)
}

/// How a set of matchers selects series, in two phases so that the postings lists can
/// be read from anywhere (a mapped index, ranged GETs, a cache): [`PostingsPlan::new`]
/// resolves the matchers against the postings offset table alone into the lists
/// needed, [`PostingsPlan::evaluate`] combines those lists once read.
///
/// Semantics (Prometheus's): matchers that do not match "" select the union of the
/// lists of the values they match, intersected across matchers; matchers that match
/// "" (`!=`, `!~`, `=""`, `=~".*"`) keep series lacking the label, so they subtract the
/// lists of the values they do not match; without a non-empty-matching matcher the
/// base is all series.
#[derive(Debug, Clone, Default)]
pub struct PostingsPlan {
    /// Distinct lists needed, sorted by position in the index.
    lists: Vec<PostingsRange>,
    /// Per positive matcher: indices into `lists` whose union it selects.
    positive: Vec<Vec<usize>>,
    /// Indices into `lists` whose union is subtracted.
    negative: Vec<usize>,
    /// Index into `lists` of the all-series list, when no matcher is positive.
    all: Option<usize>,
    /// Known empty without reading anything (a positive matcher matches no value).
    empty: bool,
}

impl PostingsPlan {
    /// Resolves `matchers` against `table`.
    pub fn new(table: &PostingsTable, matchers: &[Matcher]) -> PostingsPlan {
        let mut positive: Vec<Vec<PostingsRange>> = Vec::new();
        let mut negative: Vec<PostingsRange> = Vec::new();
        for m in matchers {
            if m.matches_empty() {
                match m.op {
                    MatchOp::NotEqual => negative.extend(table.lookup(&m.name, &m.value)),
                    _ => table.for_each_value(&m.name, |v, r| {
                        if !m.matches(v) {
                            negative.push(r);
                        }
                    }),
                }
            } else {
                let mut group = Vec::new();
                match m.op {
                    MatchOp::Equal => group.extend(table.lookup(&m.name, &m.value)),
                    _ => table.for_each_value(&m.name, |v, r| {
                        if m.matches(v) {
                            group.push(r);
                        }
                    }),
                }
                if group.is_empty() {
                    return PostingsPlan {
                        empty: true,
                        ..PostingsPlan::default()
                    };
                }
                positive.push(group);
            }
        }
        let all = if positive.is_empty() {
            match table.lookup("", "") {
                Some(r) => Some(r),
                None => {
                    return PostingsPlan {
                        empty: true,
                        ..PostingsPlan::default()
                    };
                }
            }
        } else {
            None
        };
        let mut lists: Vec<PostingsRange> = positive
            .iter()
            .flatten()
            .chain(&negative)
            .chain(&all)
            .copied()
            .collect();
        lists.sort_unstable();
        lists.dedup();
        let at = |r: &PostingsRange| lists.binary_search(r).unwrap_or(0);
        let positive = positive
            .iter()
            .map(|g| g.iter().map(at).collect())
            .collect();
        let negative = negative.iter().map(at).collect();
        let all = all.as_ref().map(at);
        PostingsPlan {
            lists,
            positive,
            negative,
            all,
            empty: false,
        }
    }

    /// The postings lists to read, sorted by offset; [`PostingsPlan::evaluate`] wants
    /// them in this order.
    pub fn lists(&self) -> &[PostingsRange] {
        &self.lists
    }

    /// Whether the plan selects nothing without reading any list.
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// The sorted series IDs selected, given the lists (decoded, in
    /// [`PostingsPlan::lists`] order).
    pub fn evaluate<L: std::borrow::Borrow<Vec<u32>>>(
        &self,
        lists: &[L],
    ) -> Result<Vec<u32>, BlockError> {
        let lists: Vec<&Vec<u32>> = lists.iter().map(|l| l.borrow()).collect();
        if self.empty {
            return Ok(Vec::new());
        }
        if lists.len() != self.lists.len() {
            return Err(BlockError::Invalid(format!(
                "postings plan wants {} lists, got {}",
                self.lists.len(),
                lists.len()
            )));
        }
        let union = |idx: &[usize]| {
            let mut ids: Vec<u32> = idx.iter().flat_map(|&i| lists[i].iter().copied()).collect();
            if idx.len() > 1 {
                ids.sort_unstable();
                ids.dedup();
            }
            ids
        };
        // Smallest groups first: the intersection shrinks fastest.
        let mut groups: Vec<&Vec<usize>> = self.positive.iter().collect();
        groups.sort_by_key(|g| g.iter().map(|&i| lists[i].len()).sum::<usize>());
        let mut base: Option<Vec<u32>> = None;
        for g in groups {
            let ids = union(g);
            base = Some(match base {
                None => ids,
                Some(p) => intersect(&p, &ids),
            });
            if base.as_ref().is_some_and(|p| p.is_empty()) {
                return Ok(Vec::new());
            }
        }
        let base = match (base, self.all) {
            (Some(b), _) => b,
            (None, Some(i)) => lists[i].to_vec(),
            (None, None) => Vec::new(),
        };
        if self.negative.is_empty() {
            return Ok(base);
        }
        Ok(subtract(&base, &union(&self.negative)))
    }
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
