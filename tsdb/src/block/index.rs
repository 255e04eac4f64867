//! The block `index` file, format version 2 (Prometheus `tsdb/docs/format/index.md`):
//!
//! ```text
//! magic 0xBAAAD700 <4b> | version 2 <1b>
//! symbol table      len <4b> | #symbols <4b> | (uvarint len, bytes)... | CRC32C <4b>
//! series            each 16-byte aligned: uvarint len | labels | chunk metas | CRC32C
//! label indices     (one per label name, 4-byte aligned; written for old readers)
//! postings          (one list per label pair, 4-byte aligned): len | #refs | refs | CRC
//! label offset table
//! postings offset table   sorted by (name, value); ("", "") is the all-series list
//! TOC               six 8-byte section offsets | CRC32C
//! ```
//!
//! A series' ID (what postings lists hold) is its byte offset divided by 16; since
//! series are written in label order, sorted IDs mean sorted label sets.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use storeapi::{Label, Labels};

use super::BlockError;
use super::encoding::{
    Decoder, checked_section, checked_uvarint_section, crc32c, put_uvarint, put_uvarint_str,
    put_varint,
};

pub const MAGIC_INDEX: u32 = 0xBAAA_D700;
pub const INDEX_FORMAT_V2: u8 = 2;
const HEADER_LEN: usize = 5;
const TOC_LEN: usize = 6 * 8 + 4;
const SERIES_ALIGN: u64 = 16;

/// Where one chunk of a series lives and the time range it covers (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkMeta {
    /// Block chunk reference: `(segment index << 32) | offset`.
    pub chunk_ref: u64,
    pub min_time: i64,
    pub max_time: i64,
}

/// The hash symbols are looked up by while a block is written.
pub(crate) fn symbol_hash(s: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(s.as_bytes())
}

/// A label set as `{name="value", ...}`, for error messages.
pub(crate) fn label_text<'s>(pairs: impl Iterator<Item = (&'s str, &'s str)>) -> String {
    let body: Vec<String> = pairs.map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", body.join(", "))
}

/// Hashes the packed (name id, value id) keys of the postings being collected: one
/// multiply, whose high bits (what the table's probes use) mix every input bit.
#[derive(Default)]
struct PairHasher(u64);

impl Hasher for PairHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0 ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

/// Streams an index file to disk. Symbols are given up front (sorted, unique); series
/// are then added in label order; [`IndexWriter::finish`] writes the rest.
pub struct IndexWriter {
    path: PathBuf,
    w: BufWriter<File>,
    pos: u64,
    symbols: Vec<String>,
    /// Symbol ids by the hash of their string (see [`symbol_hash`]), built on the first
    /// lookup by text: a writer given symbol ids ([`Self::add_series_ids`]) needs none.
    ids: std::cell::OnceCell<hashbrown::HashTable<u32>>,
    /// `name id << 32 | value id` → series IDs (hashed while series stream in, sorted
    /// once by [`IndexWriter::finish`]: the packing keeps (name, value) order).
    postings: HashMap<u64, Vec<u32>, BuildHasherDefault<PairHasher>>,
    all: Vec<u32>,
    toc_symbols: u64,
    toc_series: u64,
    /// The previous series as (name id, value id) pairs: ids follow the sorted
    /// symbols, so comparing them orders label sets as their strings do.
    last_series: Option<Vec<(u32, u32)>>,
    /// Scratch for the current series' ids.
    pairs: Vec<(u32, u32)>,
    last_chunk_ref: u64,
    buf: Vec<u8>,
    /// Scratch for a series entry's length prefix (no allocation per series).
    prefix: Vec<u8>,
    /// Largest series entry, padded to [`SERIES_ALIGN`].
    max_series_entry: u64,
}

impl IndexWriter {
    /// Creates the file and writes the header and symbol table. `symbols` must be sorted
    /// and unique.
    pub fn new(path: &Path, symbols: Vec<String>) -> Result<Self, BlockError> {
        if symbols.windows(2).any(|w| w[0] >= w[1]) {
            return Err(BlockError::Invalid("symbols not sorted and unique".into()));
        }
        if symbols.len() > u32::MAX as usize {
            return Err(BlockError::Invalid("too many symbols".into()));
        }
        let f = File::create(path).map_err(|e| BlockError::io(path, e))?;
        let mut w = IndexWriter {
            path: path.to_path_buf(),
            w: BufWriter::with_capacity(1 << 20, f),
            pos: 0,
            ids: std::cell::OnceCell::new(),
            symbols,
            postings: HashMap::default(),
            all: Vec::new(),
            toc_symbols: 0,
            toc_series: 0,
            last_series: None,
            pairs: Vec::new(),
            last_chunk_ref: 0,
            buf: Vec::with_capacity(256),
            prefix: Vec::with_capacity(10),
            max_series_entry: 0,
        };
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(&MAGIC_INDEX.to_be_bytes());
        header.push(INDEX_FORMAT_V2);
        w.write(&header)?;

        w.toc_symbols = w.pos;
        let mut content = Vec::new();
        content.extend_from_slice(&(w.symbols.len() as u32).to_be_bytes());
        for s in &w.symbols {
            put_uvarint_str(&mut content, s);
        }
        w.write_section(&content)?;
        Ok(w)
    }

    fn write(&mut self, b: &[u8]) -> Result<(), BlockError> {
        self.w
            .write_all(b)
            .map_err(|e| BlockError::io(&self.path, e))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self, align: u64) -> Result<(), BlockError> {
        let rem = self.pos % align;
        if rem != 0 {
            let zeros = [0u8; 16];
            self.write(&zeros[..(align - rem) as usize])?;
        }
        Ok(())
    }

    /// Writes `len <4b> | content | CRC32C(content)`.
    fn write_section(&mut self, content: &[u8]) -> Result<(), BlockError> {
        let len = u32::try_from(content.len())
            .map_err(|_| BlockError::Invalid("index section larger than 4 GiB".into()))?;
        self.write(&len.to_be_bytes())?;
        self.write(content)?;
        self.write(&crc32c(content).to_be_bytes())
    }

    fn symbol(&self, s: &str) -> Result<u32, BlockError> {
        let symbols = &self.symbols;
        self.ids
            .get_or_init(|| {
                let mut t = hashbrown::HashTable::with_capacity(symbols.len());
                for (i, s) in symbols.iter().enumerate() {
                    t.insert_unique(symbol_hash(s), i as u32, |&j| {
                        symbol_hash(&symbols[j as usize])
                    });
                }
                t
            })
            .find(symbol_hash(s), |&i| symbols[i as usize] == s)
            .copied()
            .ok_or_else(|| BlockError::Invalid(format!("symbol {s:?} missing from symbol table")))
    }

    /// A label set of ids, as text (for error messages).
    fn text(&self, pairs: &[(u32, u32)]) -> String {
        let sym = |i: u32| self.symbols.get(i as usize).map_or("?", |s| s.as_str());
        label_text(pairs.iter().map(|&(n, v)| (sym(n), sym(v))))
    }

    /// Adds the next series (strictly greater label set than the previous one) with its
    /// chunks (increasing references, non-overlapping increasing time ranges).
    pub fn add_series(&mut self, labels: &Labels, chunks: &[ChunkMeta]) -> Result<(), BlockError> {
        self.add_series_pairs(
            labels.iter().map(|l| (l.name.as_str(), l.value.as_str())),
            chunks,
        )
    }

    /// [`Self::add_series`] for a label set given as (name, value) pairs in label
    /// order, so a caller reading series back from bytes needs no owned `Labels`.
    pub fn add_series_pairs<'s>(
        &mut self,
        labels: impl IntoIterator<Item = (&'s str, &'s str)>,
        chunks: &[ChunkMeta],
    ) -> Result<(), BlockError> {
        let mut pairs = std::mem::take(&mut self.pairs);
        pairs.clear();
        for (n, v) in labels {
            match (self.symbol(n), self.symbol(v)) {
                (Ok(n), Ok(v)) => pairs.push((n, v)),
                (Err(e), _) | (_, Err(e)) => {
                    self.pairs = pairs;
                    return Err(e);
                }
            }
        }
        let r = self.add_series_ids(&pairs, chunks);
        self.pairs = pairs;
        r
    }

    /// [`Self::add_series`] for a label set given as (name, value) symbol ids: indexes
    /// into the sorted symbols this writer was created with.
    pub fn add_series_ids(
        &mut self,
        pairs: &[(u32, u32)],
        chunks: &[ChunkMeta],
    ) -> Result<(), BlockError> {
        let known = self.symbols.len();
        if pairs.is_empty() {
            return Err(BlockError::Invalid("series with an empty label set".into()));
        }
        if pairs
            .iter()
            .any(|&(n, v)| n as usize >= known || v as usize >= known)
        {
            return Err(BlockError::Invalid(format!(
                "series names a symbol id outside the {known} symbols: {pairs:?}"
            )));
        }
        if let Some(last) = &self.last_series
            && pairs <= last.as_slice()
        {
            return Err(BlockError::Invalid(format!(
                "series out of order: {} after {}",
                self.text(pairs),
                self.text(last)
            )));
        }
        let labels = || self.text(pairs);
        let mut last_ref = self.last_chunk_ref;
        let mut last_maxt = i64::MIN;
        for (i, c) in chunks.iter().enumerate() {
            if c.chunk_ref < last_ref {
                return Err(BlockError::Invalid(format!(
                    "chunk references not increasing in series {}",
                    labels()
                )));
            }
            if c.max_time < c.min_time || (i > 0 && c.min_time <= last_maxt) {
                return Err(BlockError::Invalid(format!(
                    "chunk time ranges overlap or are inverted in series {}",
                    labels()
                )));
            }
            last_ref = c.chunk_ref;
            last_maxt = c.max_time;
        }

        self.toc_series_start();
        self.pad(SERIES_ALIGN)?;
        let id = u32::try_from(self.pos / SERIES_ALIGN)
            .map_err(|_| BlockError::Invalid("index series section exceeds 64 GiB".into()))?;

        let mut b = std::mem::take(&mut self.buf);
        b.clear();
        put_uvarint(&mut b, pairs.len() as u64);
        for &(n, v) in pairs {
            put_uvarint(&mut b, u64::from(n));
            put_uvarint(&mut b, u64::from(v));
            self.postings
                .entry(u64::from(n) << 32 | u64::from(v))
                .or_default()
                .push(id);
        }
        put_uvarint(&mut b, chunks.len() as u64);
        if let Some(c0) = chunks.first() {
            put_varint(&mut b, c0.min_time);
            put_uvarint(&mut b, (c0.max_time - c0.min_time) as u64);
            put_uvarint(&mut b, c0.chunk_ref);
            let mut t0 = c0.max_time;
            let mut r0 = c0.chunk_ref;
            for c in &chunks[1..] {
                put_uvarint(&mut b, (c.min_time - t0) as u64);
                put_uvarint(&mut b, (c.max_time - c.min_time) as u64);
                put_varint(&mut b, c.chunk_ref.wrapping_sub(r0) as i64);
                t0 = c.max_time;
                r0 = c.chunk_ref;
            }
        }
        let mut head = std::mem::take(&mut self.prefix);
        head.clear();
        put_uvarint(&mut head, b.len() as u64);
        self.write(&head)?;
        self.write(&b)?;
        self.write(&crc32c(&b).to_be_bytes())?;
        let entry = (head.len() + b.len() + 4) as u64;
        self.max_series_entry = self
            .max_series_entry
            .max(entry.div_ceil(SERIES_ALIGN) * SERIES_ALIGN);
        self.buf = b;
        self.prefix = head;

        self.all.push(id);
        self.last_chunk_ref = last_ref;
        match &mut self.last_series {
            Some(last) => {
                last.clear();
                last.extend_from_slice(pairs);
            }
            None => self.last_series = Some(pairs.to_vec()),
        }
        Ok(())
    }

    /// The largest series entry written so far (length prefix, labels, chunk metas,
    /// CRC), rounded up to the 16-byte alignment of series: the distance from one
    /// series' reference to the next, which is what Thanos's
    /// `index_stats.series_max_size` measures.
    pub fn max_series_size(&self) -> u64 {
        self.max_series_entry
    }

    fn toc_series_start(&mut self) {
        if self.toc_series == 0 {
            self.toc_series = self.pos;
        }
    }

    /// Writes label indices, postings, offset tables and the TOC, then fsyncs.
    pub fn finish(mut self) -> Result<(), BlockError> {
        self.toc_series_start();
        let toc_label_indices = self.pos;

        // Label indices: per label name, the sorted value symbol refs.
        let mut label_index_offsets: Vec<(u32, u64)> = Vec::new();
        let mut postings: Vec<(u64, Vec<u32>)> =
            std::mem::take(&mut self.postings).into_iter().collect();
        postings.sort_unstable_by_key(|p| p.0);
        let keys: Vec<(u32, u32)> = postings
            .iter()
            .map(|p| ((p.0 >> 32) as u32, p.0 as u32))
            .collect();
        let mut i = 0;
        while i < keys.len() {
            let name = keys[i].0;
            let mut j = i;
            while j < keys.len() && keys[j].0 == name {
                j += 1;
            }
            self.pad(4)?;
            label_index_offsets.push((name, self.pos));
            let mut c = Vec::with_capacity(8 + 4 * (j - i));
            c.extend_from_slice(&1u32.to_be_bytes());
            c.extend_from_slice(&((j - i) as u32).to_be_bytes());
            for k in &keys[i..j] {
                c.extend_from_slice(&k.1.to_be_bytes());
            }
            self.write_section(&c)?;
            i = j;
        }

        // Postings: the all-series list under ("", ""), then each label pair.
        self.pad(4)?;
        let toc_postings = self.pos;
        let mut offsets: Vec<(Option<(u32, u32)>, u64)> = Vec::with_capacity(keys.len() + 1);
        let all = std::mem::take(&mut self.all);
        offsets.push((None, self.pos));
        self.write_postings(&all)?;
        for (k, (_, ids)) in keys.iter().zip(&postings) {
            self.pad(4)?;
            offsets.push((Some(*k), self.pos));
            self.write_postings(ids)?;
        }

        // Label offset table.
        let toc_label_table = self.pos;
        let mut c = Vec::new();
        c.extend_from_slice(&(label_index_offsets.len() as u32).to_be_bytes());
        for (name, off) in &label_index_offsets {
            put_uvarint(&mut c, 1);
            put_uvarint_str(&mut c, &self.symbols[*name as usize]);
            put_uvarint(&mut c, *off);
        }
        self.write_section(&c)?;

        // Postings offset table.
        let toc_postings_table = self.pos;
        let mut c = Vec::new();
        c.extend_from_slice(&(offsets.len() as u32).to_be_bytes());
        for (k, off) in &offsets {
            put_uvarint(&mut c, 2);
            match k {
                None => {
                    put_uvarint_str(&mut c, "");
                    put_uvarint_str(&mut c, "");
                }
                Some((n, v)) => {
                    put_uvarint_str(&mut c, &self.symbols[*n as usize]);
                    put_uvarint_str(&mut c, &self.symbols[*v as usize]);
                }
            }
            put_uvarint(&mut c, *off);
        }
        self.write_section(&c)?;

        let mut toc = Vec::with_capacity(TOC_LEN);
        for v in [
            self.toc_symbols,
            self.toc_series,
            toc_label_indices,
            toc_label_table,
            toc_postings,
            toc_postings_table,
        ] {
            toc.extend_from_slice(&v.to_be_bytes());
        }
        let h = crc32c(&toc);
        toc.extend_from_slice(&h.to_be_bytes());
        self.write(&toc)?;

        let path = self.path.clone();
        let f = self
            .w
            .into_inner()
            .map_err(|e| BlockError::io(&path, e.into_error()))?;
        f.sync_all().map_err(|e| BlockError::io(&path, e))
    }

    fn write_postings(&mut self, ids: &[u32]) -> Result<(), BlockError> {
        let mut c = Vec::with_capacity(4 + 4 * ids.len());
        c.extend_from_slice(&(ids.len() as u32).to_be_bytes());
        for id in ids {
            c.extend_from_slice(&id.to_be_bytes());
        }
        self.write_section(&c)
    }
}

/// Length of the index's table of contents (six offsets and a CRC32C).
pub const INDEX_TOC_LEN: usize = TOC_LEN;
/// Length of the index's header (magic and format version).
pub const INDEX_HEADER_LEN: usize = HEADER_LEN;

/// The table of contents at the end of the index: where each section starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexToc {
    pub symbols: u64,
    pub series: u64,
    pub label_indices: u64,
    pub label_offset_table: u64,
    pub postings: u64,
    pub postings_table: u64,
}

/// Checks the index's first [`INDEX_HEADER_LEN`] bytes and returns its format version
/// (2 or 3: the series and postings layout the readers here understand).
pub fn parse_index_header(b: &[u8]) -> Result<u8, BlockError> {
    let mut d = Decoder::new(b, "index header");
    let magic = d.be32()?;
    if magic != MAGIC_INDEX {
        return Err(BlockError::Corrupt(format!("index: bad magic {magic:#x}")));
    }
    let version = d.byte()?;
    if version != 2 && version != 3 {
        return Err(BlockError::Unsupported(format!(
            "index format version {version}"
        )));
    }
    Ok(version)
}

/// Parses the TOC (the last [`INDEX_TOC_LEN`] bytes of an index of `index_len` bytes),
/// verifying its checksum and that every section starts inside the index.
pub fn parse_toc(toc_bytes: &[u8], index_len: u64) -> Result<IndexToc, BlockError> {
    if toc_bytes.len() != TOC_LEN || index_len < (HEADER_LEN + TOC_LEN) as u64 {
        return Err(BlockError::Corrupt("index: file too short".into()));
    }
    let mut d = Decoder::new(toc_bytes, "index TOC");
    let mut t = [0u64; 6];
    for v in t.iter_mut() {
        *v = d.be64()?;
    }
    if crc32c(&toc_bytes[..48]) != d.be32()? {
        return Err(BlockError::Checksum("index TOC"));
    }
    let toc = IndexToc {
        symbols: t[0],
        series: t[1],
        label_indices: t[2],
        label_offset_table: t[3],
        postings: t[4],
        postings_table: t[5],
    };
    let data_end = index_len - TOC_LEN as u64;
    if t.iter().any(|&v| v > data_end) {
        return Err(BlockError::Corrupt("index: TOC points past the end".into()));
    }
    Ok(toc)
}

/// The symbol table: every string a series entry refers to by number. Holds the
/// bytes it was parsed from (an index or an index-header) and one offset per symbol.
#[derive(Debug, Clone)]
pub struct Symbols {
    b: Bytes,
    /// Start of the table's content in `b`.
    base: usize,
    /// Offset of every symbol's uvarint length, relative to `base` (a section is at
    /// most 4 GiB, so u32 suffices and halves the memory per symbol).
    offsets: Vec<u32>,
}

impl Symbols {
    /// Parses the symbol table section (`len | #symbols | symbols | CRC32C`) at `off`
    /// in `b`, verifying its checksum and order. `off == 0` means no table.
    pub fn parse(b: Bytes, off: usize) -> Result<Symbols, BlockError> {
        let mut offsets = Vec::new();
        if off == 0 {
            return Ok(Symbols {
                b,
                base: 0,
                offsets,
            });
        }
        let sym = checked_section(&b, off, "index symbol table")?;
        let mut d = Decoder::new(sym, "index symbol table");
        let n = d.be32()? as usize;
        offsets.reserve(n.min(sym.len()));
        let mut prev: Option<&str> = None;
        for _ in 0..n {
            let at = d.pos() as u32;
            let s = d.uvarint_str()?;
            if prev.is_some_and(|p| p >= s) {
                return Err(BlockError::Corrupt("index: symbols not sorted".into()));
            }
            prev = Some(s);
            offsets.push(at);
        }
        Ok(Symbols {
            base: off + 4,
            b,
            offsets,
        })
    }

    /// The symbol numbered `id`.
    pub fn get(&self, id: u32) -> Result<&str, BlockError> {
        let off = *self
            .offsets
            .get(id as usize)
            .ok_or_else(|| BlockError::Corrupt(format!("index: symbol {id} out of range")))?;
        let mut d = Decoder::new(&self.b, "index symbol");
        d.skip(self.base + off as usize)?;
        d.uvarint_str()
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
}

/// Where one postings list lives in the index: `[start, end)`, `end` being the next
/// list's start (or the end of the postings section), so a ranged read of it holds the
/// whole list (plus at most alignment padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PostingsRange {
    pub start: u64,
    pub end: u64,
}

/// One label pair's entry in the postings offset table.
#[derive(Debug, Clone, Copy)]
struct PostingsEntry {
    /// Start of the value's bytes, relative to the table's content.
    value_pos: u32,
    value_len: u32,
    off: u64,
}

/// The postings offset table: every (label name, value) pair of the index, sorted,
/// with where its postings list starts. Enough to answer label names and values and to
/// plan which postings lists a set of matchers needs, without the rest of the index.
///
/// Only every `sampling`-th entry of each label name (and its last) is held in memory;
/// a lookup binary-searches those and decodes the few entries after the nearest one
/// from the table's bytes (Thanos's `--store.index-header-posting-offsets-in-mem-sampling`),
/// so a label-rich block costs a fraction of its table in memory. The bytes are the
/// index or index-header mapping the table was parsed from.
#[derive(Debug, Clone)]
pub struct PostingsTable {
    b: Bytes,
    /// Start of the table's content (after its length field) in `b`.
    base: usize,
    /// Length of the content (entries end there; the CRC follows).
    content_len: usize,
    /// Label names (sorted; "" for the all-series list) with their samples' range.
    names: Vec<(String, std::ops::Range<usize>)>,
    samples: Vec<PostingsEntry>,
    /// Entries in the table.
    count: usize,
    /// Where the last postings list ends (the postings offset table's offset in the
    /// index).
    postings_end: u64,
}

/// One entry decoded from the table's bytes.
struct Decoded<'a> {
    name: &'a str,
    value: &'a str,
    off: u64,
    /// Where the next entry starts, relative to the content.
    next: usize,
}

impl PostingsTable {
    /// Parses the postings offset table section at `off` in `b` (checksum and order
    /// verified), keeping every entry in memory. `postings_end` is the table's offset
    /// in the original index, which bounds the last postings list. `off == 0` means no
    /// table.
    pub fn parse(b: Bytes, off: usize, postings_end: u64) -> Result<PostingsTable, BlockError> {
        PostingsTable::parse_sampled(b, off, postings_end, 1)
    }

    /// As [`PostingsTable::parse`], keeping the first of every `sampling` entries of
    /// each label name and its last (1 or 0: all) in memory.
    pub fn parse_sampled(
        b: Bytes,
        off: usize,
        postings_end: u64,
        sampling: usize,
    ) -> Result<PostingsTable, BlockError> {
        let sampling = sampling.max(1);
        let mut names: Vec<(String, std::ops::Range<usize>)> = Vec::new();
        let mut samples = Vec::new();
        if off == 0 {
            return Ok(PostingsTable {
                b,
                base: 0,
                content_len: 0,
                names,
                samples,
                count: 0,
                postings_end,
            });
        }
        let tbl = checked_section(&b, off, "postings offset table")?;
        let mut d = Decoder::new(tbl, "postings offset table");
        let n = d.be32()? as usize;
        samples.reserve((n / sampling + 1).min(tbl.len()));
        let mut prev: Option<(&str, &str)> = None;
        let mut prev_off = 0u64;
        // Entries of the current name so far, and its latest entry when not sampled
        // (kept if it turns out to be the name's last).
        let mut in_name = 0usize;
        let mut unsampled_last: Option<PostingsEntry> = None;
        for _ in 0..n {
            if d.uvarint()? != 2 {
                return Err(BlockError::Corrupt(
                    "postings offset table: entry without 2 keys".into(),
                ));
            }
            let name = d.uvarint_str()?;
            let value = d.uvarint_str()?;
            let value_pos = (d.pos() - value.len()) as u32;
            let off = d.uvarint()?;
            if prev.is_some_and(|p| p >= (name, value)) {
                return Err(BlockError::Corrupt(
                    "postings offset table: entries not sorted".into(),
                ));
            }
            if off < prev_off || off >= postings_end {
                return Err(BlockError::Corrupt(format!(
                    "postings offset table: offset {off} out of order or past the postings"
                )));
            }
            prev_off = off;
            prev = Some((name, value));
            if names.last().is_none_or(|(n, _)| n != name) {
                if let Some(e) = unsampled_last.take() {
                    samples.push(e);
                }
                if let Some(last) = names.last_mut() {
                    last.1.end = samples.len();
                }
                names.push((name.to_string(), samples.len()..samples.len()));
                in_name = 0;
            }
            let e = PostingsEntry {
                value_pos,
                value_len: value.len() as u32,
                off,
            };
            if in_name.is_multiple_of(sampling) {
                samples.push(e);
                unsampled_last = None;
            } else {
                unsampled_last = Some(e);
            }
            in_name += 1;
            if let Some(last) = names.last_mut() {
                last.1.end = samples.len();
            }
        }
        if let Some(e) = unsampled_last.take() {
            samples.push(e);
            if let Some(last) = names.last_mut() {
                last.1.end = samples.len();
            }
        }
        samples.shrink_to_fit();
        Ok(PostingsTable {
            base: off + 4,
            content_len: tbl.len(),
            b,
            names,
            samples,
            count: n,
            postings_end,
        })
    }

    /// The table's content (validated when parsed).
    fn content(&self) -> &[u8] {
        self.b
            .get(self.base..self.base + self.content_len)
            .unwrap_or(&[])
    }

    fn entry_value(&self, e: &PostingsEntry) -> &str {
        let at = e.value_pos as usize;
        // Validated as UTF-8 when the table was parsed.
        self.content()
            .get(at..at + e.value_len as usize)
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or("")
    }

    /// The entry starting at `pos` of the content, if there is one.
    fn decode_at(&self, pos: usize) -> Option<Decoded<'_>> {
        let c = self.content().get(pos..)?;
        if c.is_empty() {
            return None;
        }
        let mut d = Decoder::new(c, "postings offset table");
        d.uvarint().ok()?;
        let name = d.uvarint_str().ok()?;
        let value = d.uvarint_str().ok()?;
        let off = d.uvarint().ok()?;
        Some(Decoded {
            name,
            value,
            off,
            next: pos + d.pos(),
        })
    }

    /// Where the entry after sample `e` starts.
    fn after(&self, e: &PostingsEntry) -> usize {
        let end = e.value_pos as usize + e.value_len as usize;
        let n = self
            .content()
            .get(end..)
            .and_then(super::encoding::uvarint)
            .map_or(0, |(_, n)| n);
        end + n
    }

    /// The entries from sample `k` on (the sample first), in table order, as (name,
    /// value, postings offset); `name` is the sample's label name.
    fn scan<'a>(
        &'a self,
        k: usize,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str, u64)> + 'a {
        let first = self.samples.get(k);
        let mut pos = first.map(|e| self.after(e));
        let head = first.map(|e| (name, self.entry_value(e), e.off));
        head.into_iter().chain(std::iter::from_fn(move || {
            let d = self.decode_at(pos?)?;
            pos = Some(d.next);
            Some((d.name, d.value, d.off))
        }))
    }

    /// The samples of `name` and the index of the first one in `samples`.
    fn name_samples(&self, name: &str) -> (usize, &[PostingsEntry]) {
        match self.names.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => {
                let r = self.names[i].1.clone();
                (r.start, self.samples.get(r.clone()).unwrap_or(&[]))
            }
            Err(_) => (0, &[]),
        }
    }

    /// All label names with postings (sorted, without the all-series key "").
    pub fn label_names(&self) -> Vec<String> {
        self.names
            .iter()
            .filter(|(n, _)| !n.is_empty())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// All values of `name` (sorted).
    pub fn label_values(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.for_each_value(name, |v, _| out.push(v.to_string()));
        out
    }

    /// Calls `f` with each value of `name` and where its postings list is.
    pub fn for_each_value(&self, name: &str, mut f: impl FnMut(&str, PostingsRange)) {
        if name.is_empty() {
            return;
        }
        let (first, ss) = self.name_samples(name);
        if ss.is_empty() {
            return;
        }
        let mut it = self.scan(first, name).peekable();
        while let Some((n, v, off)) = it.next() {
            if n != name {
                break;
            }
            let end = it.peek().map_or(self.postings_end, |e| e.2);
            f(v, PostingsRange { start: off, end });
        }
    }

    /// Where the postings list of one label pair is, if the pair exists. `("", "")`
    /// is the list of all series.
    pub fn lookup(&self, name: &str, value: &str) -> Option<PostingsRange> {
        let (first, ss) = self.name_samples(name);
        let k = match ss.binary_search_by(|e| self.entry_value(e).cmp(value)) {
            Ok(k) => k,
            Err(0) => return None,
            Err(k) => k - 1,
        };
        let mut it = self.scan(first + k, name).peekable();
        while let Some((n, v, off)) = it.next() {
            if n != name || v > value {
                return None;
            }
            if v == value {
                let end = it.peek().map_or(self.postings_end, |e| e.2);
                return Some(PostingsRange { start: off, end });
            }
        }
        None
    }

    /// Number of label pairs (with the all-series key).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Entries held in memory (all of them unless sampled).
    pub fn entries_in_memory(&self) -> usize {
        self.samples.len()
    }
}

/// Decodes a postings list (`len | #refs | refs | CRC32C`) at the start of `b` (which
/// may run on past the list), verifying its checksum and order.
pub fn decode_postings(b: &[u8]) -> Result<Vec<u32>, BlockError> {
    let c = checked_section(b, 0, "postings list")?;
    let mut d = Decoder::new(c, "postings list");
    let n = d.be32()? as usize;
    if c.len() != 4 + 4 * n {
        return Err(BlockError::Corrupt(format!(
            "postings list: {} bytes for {n} entries",
            c.len()
        )));
    }
    let mut out = Vec::with_capacity(n);
    let mut prev: Option<u32> = None;
    for _ in 0..n {
        let v = d.be32()?;
        if prev.is_some_and(|p| p >= v) {
            return Err(BlockError::Corrupt("postings list not increasing".into()));
        }
        prev = Some(v);
        out.push(v);
    }
    Ok(out)
}

/// Byte offset of series `id` in the index (format v2: IDs are offsets / 16).
pub fn series_offset(id: u32) -> u64 {
    u64::from(id) * SERIES_ALIGN
}

/// The whole length (length field, content and CRC) of the series entry starting at
/// `b`, once `b` holds the length field; `None` while it is cut short.
pub fn series_entry_len(b: &[u8]) -> Option<usize> {
    let (len, n) = super::encoding::uvarint(b)?;
    usize::try_from(len).ok()?.checked_add(n + 4)
}

/// Decodes a series entry (`len | labels | chunk metas | CRC32C`) at the start of `b`
/// (which may run on past it), resolving label symbols through `symbols`.
pub fn decode_series(b: &[u8], symbols: &Symbols) -> Result<(Labels, Vec<ChunkMeta>), BlockError> {
    let c = checked_uvarint_section(b, 0, "series entry")?;
    let mut d = Decoder::new(c, "series entry");
    let n = d.uvarint()? as usize;
    let mut labels = Vec::with_capacity(n.min(c.len()));
    for _ in 0..n {
        let name = symbols.get(d.uvarint32()?)?;
        let value = symbols.get(d.uvarint32()?)?;
        labels.push(Label::new(name, value));
    }
    if labels.windows(2).any(|w| w[0].name >= w[1].name) {
        return Err(BlockError::Corrupt(
            "series entry: labels not sorted".into(),
        ));
    }
    let k = d.uvarint()? as usize;
    let mut chunks = Vec::with_capacity(k.min(c.len()));
    if k > 0 {
        let mint = d.varint()?;
        let maxt = mint.wrapping_add(d.uvarint()? as i64);
        let mut r = d.uvarint()?;
        chunks.push(ChunkMeta {
            chunk_ref: r,
            min_time: mint,
            max_time: maxt,
        });
        let mut t0 = maxt;
        for _ in 1..k {
            let mint = t0.wrapping_add(d.uvarint()? as i64);
            let maxt = mint.wrapping_add(d.uvarint()? as i64);
            r = r.wrapping_add(d.varint()? as u64);
            chunks.push(ChunkMeta {
                chunk_ref: r,
                min_time: mint,
                max_time: maxt,
            });
            t0 = maxt;
        }
    }
    Ok((Labels::from_sorted_unchecked(labels), chunks))
}

/// Read access to an index file held in memory (a mapping of the file).
#[derive(Debug)]
pub struct IndexReader {
    b: Bytes,
    version: u8,
    toc: IndexToc,
    symbols: Symbols,
    table: PostingsTable,
}

impl IndexReader {
    /// Parses the header, TOC, symbol table and postings offset table, verifying their
    /// checksums. Series entries and postings lists are checked when read.
    pub fn new(b: Bytes) -> Result<Self, BlockError> {
        if b.len() < HEADER_LEN + TOC_LEN {
            return Err(BlockError::Corrupt("index: file too short".into()));
        }
        let version = parse_index_header(&b[..HEADER_LEN])?;
        let toc = parse_toc(&b[b.len() - TOC_LEN..], b.len() as u64)?;
        let symbols = Symbols::parse(b.clone(), toc.symbols as usize)?;
        let table =
            PostingsTable::parse(b.clone(), toc.postings_table as usize, toc.postings_table)?;
        Ok(IndexReader {
            b,
            version,
            toc,
            symbols,
            table,
        })
    }

    pub fn version(&self) -> u8 {
        self.version
    }

    pub fn size(&self) -> u64 {
        self.b.len() as u64
    }

    pub fn toc(&self) -> IndexToc {
        self.toc
    }

    pub fn symbols(&self) -> &Symbols {
        &self.symbols
    }

    /// The postings offset table (label names, values, where each list is).
    pub fn postings_table(&self) -> &PostingsTable {
        &self.table
    }

    /// All label names with postings (sorted, without the all-series key "").
    pub fn label_names(&self) -> Vec<String> {
        self.table.label_names()
    }

    /// All values of `name` (sorted).
    pub fn label_values(&self, name: &str) -> Vec<String> {
        self.table.label_values(name)
    }

    /// The all-series postings list.
    pub fn all_postings(&self) -> Result<Vec<u32>, BlockError> {
        match self.table.lookup("", "") {
            Some(r) => self.postings(r.start),
            None => Ok(Vec::new()),
        }
    }

    /// Reads the postings list at `off` (CRC-checked).
    pub fn postings(&self, off: u64) -> Result<Vec<u32>, BlockError> {
        let off = usize::try_from(off)
            .ok()
            .filter(|&o| o <= self.b.len())
            .ok_or_else(|| BlockError::Corrupt("postings offset past the index".into()))?;
        decode_postings(&self.b[off..])
    }

    /// Reads one series entry: its labels and chunk metas (CRC-checked).
    pub fn series(&self, id: u32) -> Result<(Labels, Vec<ChunkMeta>), BlockError> {
        let off = usize::try_from(series_offset(id))
            .ok()
            .filter(|&o| o <= self.b.len())
            .ok_or_else(|| BlockError::Corrupt(format!("series {id} past the index")))?;
        decode_series(&self.b[off..], &self.symbols)
    }

    /// Only the labels of a series (skips its chunk metas).
    pub fn series_labels(&self, id: u32) -> Result<Labels, BlockError> {
        self.series(id).map(|(l, _)| l)
    }
}
