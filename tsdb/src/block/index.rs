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

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
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

/// Streams an index file to disk. Symbols are given up front (sorted, unique); series
/// are then added in label order; [`IndexWriter::finish`] writes the rest.
pub struct IndexWriter {
    path: PathBuf,
    w: BufWriter<File>,
    pos: u64,
    symbols: Vec<String>,
    ids: HashMap<String, u32>,
    /// (name id, value id) → series IDs.
    postings: BTreeMap<(u32, u32), Vec<u32>>,
    all: Vec<u32>,
    toc_symbols: u64,
    toc_series: u64,
    last_series: Option<Labels>,
    last_chunk_ref: u64,
    buf: Vec<u8>,
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
            ids: symbols
                .iter()
                .enumerate()
                .map(|(i, s)| (s.clone(), i as u32))
                .collect(),
            symbols,
            postings: BTreeMap::new(),
            all: Vec::new(),
            toc_symbols: 0,
            toc_series: 0,
            last_series: None,
            last_chunk_ref: 0,
            buf: Vec::with_capacity(256),
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
        self.ids
            .get(s)
            .copied()
            .ok_or_else(|| BlockError::Invalid(format!("symbol {s:?} missing from symbol table")))
    }

    /// Adds the next series (strictly greater label set than the previous one) with its
    /// chunks (increasing references, non-overlapping increasing time ranges).
    pub fn add_series(&mut self, labels: &Labels, chunks: &[ChunkMeta]) -> Result<(), BlockError> {
        if let Some(last) = &self.last_series
            && labels <= last
        {
            return Err(BlockError::Invalid(format!(
                "series out of order: {labels} after {last}"
            )));
        }
        let mut last_ref = self.last_chunk_ref;
        let mut last_maxt = i64::MIN;
        for (i, c) in chunks.iter().enumerate() {
            if c.chunk_ref < last_ref {
                return Err(BlockError::Invalid(format!(
                    "chunk references not increasing in series {labels}"
                )));
            }
            if c.max_time < c.min_time || (i > 0 && c.min_time <= last_maxt) {
                return Err(BlockError::Invalid(format!(
                    "chunk time ranges overlap or are inverted in series {labels}"
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
        put_uvarint(&mut b, labels.len() as u64);
        for l in labels {
            let n = self.symbol(&l.name)?;
            let v = self.symbol(&l.value)?;
            put_uvarint(&mut b, u64::from(n));
            put_uvarint(&mut b, u64::from(v));
            self.postings.entry((n, v)).or_default().push(id);
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
        let mut head = Vec::with_capacity(5);
        put_uvarint(&mut head, b.len() as u64);
        self.write(&head)?;
        self.write(&b)?;
        self.write(&crc32c(&b).to_be_bytes())?;
        let entry = (head.len() + b.len() + 4) as u64;
        self.max_series_entry = self
            .max_series_entry
            .max(entry.div_ceil(SERIES_ALIGN) * SERIES_ALIGN);
        self.buf = b;

        self.all.push(id);
        self.last_chunk_ref = last_ref;
        self.last_series = Some(labels.clone());
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
        let keys: Vec<(u32, u32)> = self.postings.keys().copied().collect();
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
        let postings = std::mem::take(&mut self.postings);
        for (k, ids) in &postings {
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

/// The table of contents at the end of the index.
#[derive(Debug, Clone, Copy, Default)]
struct Toc {
    symbols: u64,
    series: u64,
    postings_table: u64,
}

/// One label pair's entry in the postings offset table.
#[derive(Debug, Clone, Copy)]
struct PostingsEntry {
    value_pos: usize,
    value_len: usize,
    off: u64,
}

/// Read access to an index file held in memory (a mapping of the file).
#[derive(Debug)]
pub struct IndexReader {
    b: Bytes,
    version: u8,
    /// Byte offset of every symbol's uvarint length.
    symbol_offsets: Vec<usize>,
    /// Label names (sorted; "" for the all-series list) with their entries' range.
    names: Vec<(String, std::ops::Range<usize>)>,
    entries: Vec<PostingsEntry>,
}

impl IndexReader {
    /// Parses the header, TOC, symbol table and postings offset table, verifying their
    /// checksums. Series entries and postings lists are checked when read.
    pub fn new(b: Bytes) -> Result<Self, BlockError> {
        if b.len() < HEADER_LEN + TOC_LEN {
            return Err(BlockError::Corrupt("index: file too short".into()));
        }
        let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if magic != MAGIC_INDEX {
            return Err(BlockError::Corrupt(format!("index: bad magic {magic:#x}")));
        }
        let version = b[4];
        if version != 2 && version != 3 {
            return Err(BlockError::Unsupported(format!(
                "index format version {version}"
            )));
        }
        let toc_bytes = &b[b.len() - TOC_LEN..];
        let mut d = Decoder::new(toc_bytes, "index TOC");
        let mut t = [0u64; 6];
        for v in t.iter_mut() {
            *v = d.be64()?;
        }
        if crc32c(&toc_bytes[..48]) != d.be32()? {
            return Err(BlockError::Checksum("index TOC"));
        }
        let toc = Toc {
            symbols: t[0],
            series: t[1],
            postings_table: t[5],
        };
        let data_end = (b.len() - TOC_LEN) as u64;
        if toc.symbols > data_end || toc.series > data_end || toc.postings_table > data_end {
            return Err(BlockError::Corrupt("index: TOC points past the end".into()));
        }

        // Symbols.
        let mut symbol_offsets = Vec::new();
        if toc.symbols != 0 {
            let sym = checked_section(&b, toc.symbols as usize, "index symbol table")?;
            let base = toc.symbols as usize + 4;
            let mut d = Decoder::new(sym, "index symbol table");
            let n = d.be32()? as usize;
            symbol_offsets.reserve(n.min(sym.len()));
            let mut prev: Option<&str> = None;
            for _ in 0..n {
                let at = base + d.pos();
                let s = d.uvarint_str()?;
                if prev.is_some_and(|p| p >= s) {
                    return Err(BlockError::Corrupt("index: symbols not sorted".into()));
                }
                prev = Some(s);
                symbol_offsets.push(at);
            }
        }

        // Postings offset table.
        let mut names: Vec<(String, std::ops::Range<usize>)> = Vec::new();
        let mut entries = Vec::new();
        if toc.postings_table != 0 {
            let base = toc.postings_table as usize + 4;
            let tbl = checked_section(&b, toc.postings_table as usize, "postings offset table")?;
            let mut d = Decoder::new(tbl, "postings offset table");
            let n = d.be32()? as usize;
            entries.reserve(n.min(tbl.len()));
            let mut prev: Option<(&str, &str)> = None;
            for _ in 0..n {
                if d.uvarint()? != 2 {
                    return Err(BlockError::Corrupt(
                        "postings offset table: entry without 2 keys".into(),
                    ));
                }
                let name = d.uvarint_str()?;
                let value_pos = base + d.pos();
                let value = d.uvarint_str()?;
                let value_pos = value_pos + (value_pos_len(value.len()));
                let off = d.uvarint()?;
                if prev.is_some_and(|p| p >= (name, value)) {
                    return Err(BlockError::Corrupt(
                        "postings offset table: entries not sorted".into(),
                    ));
                }
                prev = Some((name, value));
                if names.last().is_none_or(|(n, _)| n != name) {
                    names.push((name.to_string(), entries.len()..entries.len()));
                }
                entries.push(PostingsEntry {
                    value_pos,
                    value_len: value.len(),
                    off,
                });
                if let Some(last) = names.last_mut() {
                    last.1.end = entries.len();
                }
            }
        }
        Ok(IndexReader {
            b,
            version,
            symbol_offsets,
            names,
            entries,
        })
    }

    pub fn version(&self) -> u8 {
        self.version
    }

    pub fn size(&self) -> u64 {
        self.b.len() as u64
    }

    fn symbol(&self, id: u32) -> Result<&str, BlockError> {
        let off = *self
            .symbol_offsets
            .get(id as usize)
            .ok_or_else(|| BlockError::Corrupt(format!("index: symbol {id} out of range")))?;
        let mut d = Decoder::new(&self.b, "index symbol");
        d.skip(off)?;
        d.uvarint_str()
    }

    fn entry_value(&self, e: &PostingsEntry) -> &str {
        // Validated as UTF-8 when the table was parsed.
        std::str::from_utf8(&self.b[e.value_pos..e.value_pos + e.value_len]).unwrap_or("")
    }

    fn name_entries(&self, name: &str) -> &[PostingsEntry] {
        match self.names.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => &self.entries[self.names[i].1.clone()],
            Err(_) => &[],
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
        if name.is_empty() {
            return Vec::new();
        }
        self.name_entries(name)
            .iter()
            .map(|e| self.entry_value(e).to_string())
            .collect()
    }

    /// Calls `f` with each value of `name` and its postings offset.
    pub fn for_each_value(&self, name: &str, mut f: impl FnMut(&str, u64)) {
        if name.is_empty() {
            return;
        }
        for e in self.name_entries(name) {
            f(self.entry_value(e), e.off);
        }
    }

    /// The postings offset of one label pair, if present.
    pub fn postings_offset(&self, name: &str, value: &str) -> Option<u64> {
        let es = self.name_entries(name);
        es.binary_search_by(|e| self.entry_value(e).cmp(value))
            .ok()
            .map(|i| es[i].off)
    }

    /// The all-series postings list.
    pub fn all_postings(&self) -> Result<Vec<u32>, BlockError> {
        match self.postings_offset("", "") {
            Some(off) => self.postings(off),
            None => Ok(Vec::new()),
        }
    }

    /// Reads the postings list at `off` (CRC-checked).
    pub fn postings(&self, off: u64) -> Result<Vec<u32>, BlockError> {
        let off = usize::try_from(off)
            .map_err(|_| BlockError::Corrupt("postings offset overflows".into()))?;
        let c = checked_section(&self.b, off, "postings list")?;
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

    /// Reads one series entry: its labels and chunk metas (CRC-checked).
    pub fn series(&self, id: u32) -> Result<(Labels, Vec<ChunkMeta>), BlockError> {
        let off = (id as u64 * SERIES_ALIGN) as usize;
        let c = checked_uvarint_section(&self.b, off, "series entry")?;
        let mut d = Decoder::new(c, "series entry");
        let n = d.uvarint()? as usize;
        let mut labels = Vec::with_capacity(n.min(c.len()));
        for _ in 0..n {
            let name = self.symbol(d.uvarint32()?)?;
            let value = self.symbol(d.uvarint32()?)?;
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

    /// Only the labels of a series (skips its chunk metas).
    pub fn series_labels(&self, id: u32) -> Result<Labels, BlockError> {
        self.series(id).map(|(l, _)| l)
    }
}

/// Bytes of the uvarint that precedes a string of length `len`.
fn value_pos_len(len: usize) -> usize {
    super::encoding::uvarint_len(len as u64)
}
