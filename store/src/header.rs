//! The index-header: the two parts of a block's `index` that every query needs — the
//! symbol table and the postings offset table — copied out of the bucket with two
//! ranged GETs and kept in `--data-dir/<ULID>/index-header`, so a block costs a few
//! percent of its index on disk and postings and series are fetched by range.
//!
//! The file uses Thanos's binary index-header v1 layout, so it looks familiar:
//!
//! ```text
//! magic 0xBAAAD792 <4b> | version 1 <1b> | index version <1b>
//! index's postings-offset-table offset <8b>
//! symbol table      (copied byte for byte: len | #symbols | symbols | CRC32C)
//! postings offset table   (copied byte for byte: len | #entries | entries | CRC32C)
//! TOC               symbols offset <8b> | postings offset table offset <8b> | CRC32C
//! ```
//!
//! The copied sections keep their own checksums, so opening the file verifies every
//! byte a reader uses; a bad file is rebuilt from the bucket.

use std::path::Path;

use bytes::Bytes;
use tsdb::block::BlockError;
use tsdb::block::encoding::crc32c;
use tsdb::block::index::{PostingsTable, Symbols};

pub const MAGIC_INDEX_HEADER: u32 = 0xBAAA_D792;
pub const INDEX_HEADER_V1: u8 = 1;
/// Magic, version, index version, postings-offset-table offset.
const PREAMBLE_LEN: usize = 4 + 1 + 1 + 8;
const TOC_LEN: usize = 8 + 8 + 4;
/// File name inside `--data-dir/<ULID>/`.
pub const FILE_NAME: &str = "index-header";

/// An opened index-header: symbols and postings offset table over the file's bytes
/// (a read-only mapping: pages are loaded as used and can be dropped by the kernel).
#[derive(Debug)]
pub struct IndexHeader {
    pub index_version: u8,
    pub symbols: Symbols,
    pub postings: PostingsTable,
    /// Bytes of the header file.
    pub size: u64,
}

impl IndexHeader {
    /// Parses and verifies a header file's bytes, keeping every postings offset table
    /// entry in memory.
    pub fn parse(b: Bytes) -> Result<IndexHeader, BlockError> {
        IndexHeader::parse_sampled(b, 1)
    }

    /// Parses and verifies a header file's bytes, keeping one in `sampling` postings
    /// offset table entries in memory (see [`PostingsTable::parse_sampled`]).
    pub fn parse_sampled(b: Bytes, sampling: usize) -> Result<IndexHeader, BlockError> {
        if b.len() < PREAMBLE_LEN + TOC_LEN {
            return Err(BlockError::Corrupt("index-header: file too short".into()));
        }
        let be64 = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[at..at + 8]);
            u64::from_be_bytes(a)
        };
        let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if magic != MAGIC_INDEX_HEADER {
            return Err(BlockError::Corrupt(format!(
                "index-header: bad magic {magic:#x}"
            )));
        }
        if b[4] != INDEX_HEADER_V1 {
            return Err(BlockError::Unsupported(format!(
                "index-header version {}",
                b[4]
            )));
        }
        let index_version = b[5];
        if index_version != 2 && index_version != 3 {
            return Err(BlockError::Unsupported(format!(
                "index format version {index_version}"
            )));
        }
        let postings_end = be64(6);
        let toc_at = b.len() - TOC_LEN;
        if crc32c(&b[toc_at..toc_at + 16])
            != u32::from_be_bytes([
                b[toc_at + 16],
                b[toc_at + 17],
                b[toc_at + 18],
                b[toc_at + 19],
            ])
        {
            return Err(BlockError::Checksum("index-header TOC"));
        }
        let (sym, tbl) = (be64(toc_at), be64(toc_at + 8));
        let inside = |o: u64| (PREAMBLE_LEN as u64..toc_at as u64).contains(&o);
        if !inside(sym) || !inside(tbl) {
            return Err(BlockError::Corrupt(
                "index-header: TOC points outside the file".into(),
            ));
        }
        let symbols = Symbols::parse(b.clone(), sym as usize)?;
        let postings =
            PostingsTable::parse_sampled(b.clone(), tbl as usize, postings_end, sampling)?;
        Ok(IndexHeader {
            index_version,
            symbols,
            postings,
            size: b.len() as u64,
        })
    }

    /// Maps and parses the header file at `path` (see [`IndexHeader::parse_sampled`]).
    pub fn open(path: &Path, sampling: usize) -> Result<IndexHeader, BlockError> {
        IndexHeader::parse_sampled(tsdb::block::map_file(path)?, sampling)
    }
}

/// The header file's bytes for an index of format `index_version` whose postings
/// offset table starts at `postings_table_offset`, from the index's symbol table
/// section and postings offset table section (each `len | content | CRC32C`, possibly
/// followed by padding, which is dropped).
pub fn encode(
    index_version: u8,
    postings_table_offset: u64,
    symbols: &[u8],
    table: &[u8],
) -> Result<Vec<u8>, BlockError> {
    let section = |b: &[u8], what: &'static str| -> Result<usize, BlockError> {
        // Validates the checksum and gives the section's whole length.
        let content = tsdb::block::encoding::checked_section(b, 0, what)?;
        Ok(4 + content.len() + 4)
    };
    let sym_len = section(symbols, "index symbol table")?;
    let tbl_len = section(table, "postings offset table")?;
    let mut out = Vec::with_capacity(PREAMBLE_LEN + sym_len + tbl_len + TOC_LEN);
    out.extend_from_slice(&MAGIC_INDEX_HEADER.to_be_bytes());
    out.push(INDEX_HEADER_V1);
    out.push(index_version);
    out.extend_from_slice(&postings_table_offset.to_be_bytes());
    let sym_at = out.len() as u64;
    out.extend_from_slice(&symbols[..sym_len]);
    let tbl_at = out.len() as u64;
    out.extend_from_slice(&table[..tbl_len]);
    let toc_at = out.len();
    out.extend_from_slice(&sym_at.to_be_bytes());
    out.extend_from_slice(&tbl_at.to_be_bytes());
    let h = crc32c(&out[toc_at..]);
    out.extend_from_slice(&h.to_be_bytes());
    Ok(out)
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use storeapi::Labels;
    use tsdb::block::index::{IndexReader, IndexWriter};

    /// An index with a few series, and its header built from its sections the way the
    /// gateway does (ranges from the TOC).
    fn index_and_header(dir: &Path) -> (IndexReader, Bytes) {
        let p = dir.join("index");
        let mut syms: Vec<String> = ["__name__", "a", "b", "job", "up", "x", "y", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        syms.sort();
        syms.dedup();
        let mut w = IndexWriter::new(&p, syms).unwrap();
        for l in [
            Labels::from_pairs([("__name__", "up"), ("a", "x")]).unwrap(),
            Labels::from_pairs([("__name__", "up"), ("a", "y"), ("b", "x")]).unwrap(),
            Labels::from_pairs([("__name__", "up"), ("job", "y")]).unwrap(),
        ] {
            w.add_series(&l, &[]).unwrap();
        }
        w.finish().unwrap();
        let b = Bytes::from(std::fs::read(&p).unwrap());
        let r = IndexReader::new(b.clone()).unwrap();
        let toc = r.toc();
        let end = b.len() - tsdb::block::index::INDEX_TOC_LEN;
        let h = encode(
            r.version(),
            toc.postings_table,
            &b[toc.symbols as usize..toc.series as usize],
            &b[toc.postings_table as usize..end],
        )
        .unwrap();
        (r, Bytes::from(h))
    }

    #[test]
    fn header_reads_like_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let (r, h) = index_and_header(dir.path());
        assert_eq!(&h[..4], &0xBAAA_D792u32.to_be_bytes());
        let hdr = IndexHeader::parse(h).unwrap();
        assert_eq!(hdr.index_version, 2);
        assert_eq!(hdr.postings.label_names(), r.label_names());
        for n in r.label_names() {
            assert_eq!(hdr.postings.label_values(&n), r.label_values(&n));
            for v in r.label_values(&n) {
                assert_eq!(
                    hdr.postings.lookup(&n, &v),
                    r.postings_table().lookup(&n, &v)
                );
            }
        }
        assert_eq!(hdr.symbols.len(), r.symbols().len());
        for i in 0..hdr.symbols.len() as u32 {
            assert_eq!(hdr.symbols.get(i).unwrap(), r.symbols().get(i).unwrap());
        }
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let (_, h) = index_and_header(dir.path());
        // Magic, header version, TOC and both sections are covered by a check; the
        // index version may be 2 or 3, and the 8-byte postings-table offset only
        // bounds the entries (which must lie before it).
        for i in 0..h.len() {
            if (5..14).contains(&i) {
                continue;
            }
            let mut bad = h.to_vec();
            bad[i] ^= 0x01;
            assert!(
                IndexHeader::parse(Bytes::from(bad)).is_err(),
                "flipping byte {i} of {} went unnoticed",
                h.len()
            );
        }
        assert!(IndexHeader::parse(h.slice(..h.len() - 1)).is_err());
        assert!(IndexHeader::parse(Bytes::new()).is_err());
    }

    /// Label names with 1, 2, 31, 32, 33 and 100 values (around the sampling steps).
    fn rich_header(dir: &Path) -> (IndexReader, Bytes) {
        let p = dir.join("index");
        let counts = [
            ("a", 1),
            ("b", 2),
            ("c", 31),
            ("d", 32),
            ("e", 33),
            ("f", 100),
        ];
        let mut series = Vec::new();
        for (name, n) in counts {
            for i in 0..n {
                series.push(
                    Labels::from_pairs([("__name__", "m"), (name, format!("v{i:03}").as_str())])
                        .unwrap(),
                );
            }
        }
        series.sort();
        let mut syms: Vec<String> = series
            .iter()
            .flat_map(|l| {
                l.iter()
                    .flat_map(|x| [x.name.to_string(), x.value.to_string()])
            })
            .chain([String::new()])
            .collect();
        syms.sort();
        syms.dedup();
        let mut w = IndexWriter::new(&p, syms).unwrap();
        for l in &series {
            w.add_series(l, &[]).unwrap();
        }
        w.finish().unwrap();
        let b = Bytes::from(std::fs::read(&p).unwrap());
        let r = IndexReader::new(b.clone()).unwrap();
        let toc = r.toc();
        let end = b.len() - tsdb::block::index::INDEX_TOC_LEN;
        let h = encode(
            r.version(),
            toc.postings_table,
            &b[toc.symbols as usize..toc.series as usize],
            &b[toc.postings_table as usize..end],
        )
        .unwrap();
        (r, Bytes::from(h))
    }

    #[test]
    fn sampled_table_answers_like_the_full_table() {
        let dir = tempfile::tempdir().unwrap();
        let (r, h) = rich_header(dir.path());
        let full = r.postings_table();
        assert_eq!(full.len(), 1 + 1 + 1 + 2 + 31 + 32 + 33 + 100);
        let probes = |vals: &[String]| {
            // Every value, plus values before, between and after them.
            let mut p: Vec<String> = vals.to_vec();
            p.extend(["", "a", "v", "v0005x", "v031x", "v099z", "w", "v000"].map(String::from));
            p.extend(vals.iter().map(|v| format!("{v}0")));
            p
        };
        // The full table itself against what was written: each name's values in
        // order, ranges back to back.
        for (name, n) in [
            ("a", 1),
            ("b", 2),
            ("c", 31),
            ("d", 32),
            ("e", 33),
            ("f", 100),
        ] {
            let want: Vec<String> = (0..n).map(|i| format!("v{i:03}")).collect();
            assert_eq!(full.label_values(name), want);
            let mut ranges = Vec::new();
            full.for_each_value(name, |_, r| ranges.push(r));
            assert!(
                ranges
                    .windows(2)
                    .all(|w| w[0].end == w[1].start && w[0].start < w[0].end)
            );
            assert_eq!(full.lookup(name, "v000"), ranges.first().copied());
            assert_eq!(full.lookup(name, "v0000"), None);
        }
        for every in [1usize, 2, 3, 7, 31, 32, 33, 1000] {
            let hdr = IndexHeader::parse_sampled(h.clone(), every).unwrap();
            let t = &hdr.postings;
            assert_eq!(t.len(), full.len());
            assert_eq!(t.label_names(), full.label_names());
            if every >= 32 {
                assert!(
                    t.entries_in_memory() * 4 < full.len(),
                    "sampling {every} keeps {} of {}",
                    t.entries_in_memory(),
                    full.len()
                );
            }
            for name in ["__name__", "a", "b", "c", "d", "e", "f", "", "zz", "0"] {
                let vals = full.label_values(name);
                assert_eq!(
                    t.label_values(name),
                    vals,
                    "values of {name:?} every {every}"
                );
                let mut got = Vec::new();
                t.for_each_value(name, |v, r| got.push((v.to_string(), r)));
                let mut want = Vec::new();
                full.for_each_value(name, |v, r| want.push((v.to_string(), r)));
                assert_eq!(got, want, "ranges of {name:?} every {every}");
                for v in probes(&vals) {
                    assert_eq!(
                        t.lookup(name, &v),
                        full.lookup(name, &v),
                        "lookup {name:?}={v:?} every {every}"
                    );
                }
            }
            assert!(t.lookup("", "").is_some());
            assert_eq!(t.lookup("", ""), full.lookup("", ""));
        }
    }
}
