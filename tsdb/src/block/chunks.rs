//! `chunks/` segment files: `000001`, `000002`, ... each a header (magic `0x85BD40DD`,
//! version 1, three zero bytes) followed by chunks written as
//! `uvarint(len(data)) | encoding <1b> | data | CRC32C(encoding | data) <4b BE>`.
//!
//! A chunk reference is `(segment index << 32) | offset in the segment`, the segment
//! index counting from 0 for `000001` (Prometheus's `BlockChunkRef`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::BlockError;
use super::encoding::{crc32c, put_uvarint, uvarint};
use crate::chunk::{Chunk, Encoding};

pub const MAGIC_CHUNKS: u32 = 0x85BD_40DD;
pub const CHUNKS_FORMAT_V1: u8 = 1;
pub const SEGMENT_HEADER_SIZE: usize = 8;
/// Prometheus's default maximum segment size.
pub const DEFAULT_SEGMENT_SIZE: u64 = 512 * 1024 * 1024;
/// Bytes of the largest `len` field (a uvarint of a 32-bit length).
const MAX_LEN_FIELD: usize = 5;

/// Packs a block chunk reference.
#[inline]
pub fn chunk_ref(segment: u32, offset: u32) -> u64 {
    (u64::from(segment) << 32) | u64::from(offset)
}

/// Unpacks a block chunk reference into `(segment index, offset)`.
#[inline]
pub fn unpack_ref(r: u64) -> (usize, usize) {
    ((r >> 32) as usize, (r & 0xffff_ffff) as usize)
}

/// The file name of segment `index` (0-based): `000001` for index 0.
pub fn segment_name(index: usize) -> String {
    format!("{:06}", index + 1)
}

/// Writes chunks into numbered segment files, cutting a new one before a chunk would
/// push the current one past the size limit.
pub struct ChunkWriter {
    dir: PathBuf,
    segment_size: u64,
    /// Index of the current segment; `None` before the first chunk.
    seq: Option<u32>,
    file: Option<BufWriter<File>>,
    /// Bytes written to the current segment.
    pos: u64,
    scratch: Vec<u8>,
    /// Largest record written (length, encoding, data, CRC).
    max_record: u64,
}

impl ChunkWriter {
    /// Writes into `dir` (created if missing).
    pub fn new(dir: &Path, segment_size: u64) -> Result<Self, BlockError> {
        std::fs::create_dir_all(dir).map_err(|e| BlockError::io(dir, e))?;
        Ok(ChunkWriter {
            dir: dir.to_path_buf(),
            segment_size: segment_size.max(SEGMENT_HEADER_SIZE as u64 + 64),
            seq: None,
            file: None,
            pos: 0,
            scratch: Vec::with_capacity(16),
            max_record: 0,
        })
    }

    fn finish_segment(&mut self) -> Result<(), BlockError> {
        if let (Some(f), Some(seq)) = (self.file.take(), self.seq) {
            let path = self.dir.join(segment_name(seq as usize));
            let f = f
                .into_inner()
                .map_err(|e| BlockError::io(&path, e.into_error()))?;
            f.sync_all().map_err(|e| BlockError::io(&path, e))?;
        }
        Ok(())
    }

    fn cut(&mut self) -> Result<(), BlockError> {
        self.finish_segment()?;
        let seq = match self.seq {
            None => 0,
            Some(s) => s
                .checked_add(1)
                .ok_or_else(|| BlockError::Invalid("too many chunk segments".into()))?,
        };
        let path = self.dir.join(segment_name(seq as usize));
        let f = File::create(&path).map_err(|e| BlockError::io(&path, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let mut header = [0u8; SEGMENT_HEADER_SIZE];
        header[..4].copy_from_slice(&MAGIC_CHUNKS.to_be_bytes());
        header[4] = CHUNKS_FORMAT_V1;
        w.write_all(&header).map_err(|e| BlockError::io(&path, e))?;
        self.file = Some(w);
        self.seq = Some(seq);
        self.pos = SEGMENT_HEADER_SIZE as u64;
        Ok(())
    }

    /// Appends one chunk and returns its reference.
    pub fn write(&mut self, encoding: Encoding, data: &[u8]) -> Result<u64, BlockError> {
        if data.len() > u32::MAX as usize {
            return Err(BlockError::Invalid("chunk larger than 4 GiB".into()));
        }
        self.scratch.clear();
        put_uvarint(&mut self.scratch, data.len() as u64);
        let len_field = self.scratch.len();
        let size = (len_field + 1 + data.len() + 4) as u64;
        if self.file.is_none() || self.pos + size > self.segment_size {
            // A chunk bigger than a whole segment still gets a segment of its own.
            if self.file.is_none() || self.pos > SEGMENT_HEADER_SIZE as u64 {
                self.cut()?;
            }
        }
        if self.pos + size > u64::from(u32::MAX) {
            return Err(BlockError::Invalid(
                "chunk segment would exceed 4 GiB".into(),
            ));
        }
        let seq = self.seq.unwrap_or(0);
        let r = chunk_ref(seq, self.pos as u32);
        self.scratch.push(encoding as u8);
        let mut h = crc32c::crc32c(&self.scratch[len_field..]);
        h = crc32c::crc32c_append(h, data);
        let path = &self.dir;
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| BlockError::Invalid("no open chunk segment".into()))?;
        f.write_all(&self.scratch)
            .and_then(|_| f.write_all(data))
            .and_then(|_| f.write_all(&h.to_be_bytes()))
            .map_err(|e| BlockError::io(path, e))?;
        self.pos += size;
        self.max_record = self.max_record.max(size);
        Ok(r)
    }

    /// The largest chunk record written so far: its length prefix, encoding byte, data
    /// and CRC — the distance from one chunk's reference to the next in a segment,
    /// which is what Thanos's `index_stats.chunk_max_size` measures.
    pub fn max_record_size(&self) -> u64 {
        self.max_record
    }

    /// Flushes and fsyncs the last segment.
    pub fn finish(mut self) -> Result<(), BlockError> {
        self.finish_segment()
    }
}

/// Read access to a block's chunk segments (memory-mapped).
#[derive(Debug)]
pub struct ChunkReader {
    segments: Vec<Bytes>,
}

impl ChunkReader {
    /// Maps every numbered file in `dir` (in numeric order) and checks its header.
    pub fn open(dir: &Path) -> Result<Self, BlockError> {
        let mut files: Vec<(u64, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(dir).map_err(|e| BlockError::io(dir, e))? {
            let e = e.map_err(|e| BlockError::io(dir, e))?;
            let name = e.file_name();
            if let Some(n) = name.to_str().and_then(|s| s.parse::<u64>().ok()) {
                files.push((n, e.path()));
            }
        }
        files.sort();
        let mut segments = Vec::with_capacity(files.len());
        for (_, p) in files {
            let b = super::map_file(&p)?;
            if b.len() < SEGMENT_HEADER_SIZE {
                return Err(BlockError::Corrupt(format!(
                    "chunk segment {} is shorter than its header",
                    p.display()
                )));
            }
            let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            if magic != MAGIC_CHUNKS {
                return Err(BlockError::Corrupt(format!(
                    "chunk segment {}: bad magic {magic:#x}",
                    p.display()
                )));
            }
            if b[4] != CHUNKS_FORMAT_V1 {
                return Err(BlockError::Corrupt(format!(
                    "chunk segment {}: unknown version {}",
                    p.display(),
                    b[4]
                )));
            }
            segments.push(b);
        }
        Ok(ChunkReader { segments })
    }

    /// Total bytes of all segments.
    pub fn size(&self) -> u64 {
        self.segments.iter().map(|s| s.len() as u64).sum()
    }

    /// The chunk at `r` with its time range filled in from the index, CRC-checked.
    /// The returned data shares the mapping (no copy).
    pub fn chunk(&self, r: u64, min_time: i64, max_time: i64) -> Result<Chunk, BlockError> {
        let (seg, off) = unpack_ref(r);
        let s = self.segments.get(seg).ok_or_else(|| {
            BlockError::Corrupt(format!("chunk reference {r:#x}: no segment {seg}"))
        })?;
        if off < SEGMENT_HEADER_SIZE || off >= s.len() {
            return Err(BlockError::Corrupt(format!(
                "chunk reference {r:#x}: offset outside segment"
            )));
        }
        let len = record_len(&s[off..]).ok_or_else(|| {
            BlockError::Corrupt(format!("chunk reference {r:#x}: bad length field"))
        })?;
        if off.checked_add(len).is_none_or(|e| e > s.len()) {
            return Err(BlockError::Corrupt(format!(
                "chunk reference {r:#x}: chunk runs past segment end"
            )));
        }
        parse_record(&s.slice(off..off + len), r, min_time, max_time)
    }
}

/// Total bytes of the chunk record starting at `head[0]` (length field, encoding byte,
/// data and CRC), read from its length field; `None` when `head` is too short to hold
/// the field or the field is malformed. Lets a reader holding only part of a segment
/// (a ranged GET) tell how much more it needs.
pub fn record_len(head: &[u8]) -> Option<usize> {
    let (len, n) = uvarint(&head[..head.len().min(MAX_LEN_FIELD)])?;
    usize::try_from(len).ok()?.checked_add(n + 1 + 4)
}

/// Decodes one whole chunk record (exactly [`record_len`] bytes), checking its CRC.
/// The data shares `rec`'s buffer. `r` only names the chunk in errors.
pub fn parse_record(
    rec: &Bytes,
    r: u64,
    min_time: i64,
    max_time: i64,
) -> Result<Chunk, BlockError> {
    let bad = |what: &str| BlockError::Corrupt(format!("chunk reference {r:#x}: {what}"));
    let (len, n) =
        uvarint(&rec[..rec.len().min(MAX_LEN_FIELD)]).ok_or_else(|| bad("bad length field"))?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| n.checked_add(1 + l + 4))
        .filter(|&e| e == rec.len())
        .ok_or_else(|| bad("record length does not match its length field"))?;
    let data_end = end - 4;
    let want = u32::from_be_bytes([
        rec[data_end],
        rec[data_end + 1],
        rec[data_end + 2],
        rec[data_end + 3],
    ]);
    if crc32c(&rec[n..data_end]) != want {
        return Err(BlockError::Checksum("chunk"));
    }
    let encoding =
        Encoding::from_byte(rec[n]).ok_or_else(|| bad(&format!("unknown encoding {}", rec[n])))?;
    Ok(Chunk {
        min_time,
        max_time,
        encoding,
        data: rec.slice(n + 1..data_end),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_segments_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ChunkWriter::new(dir.path(), 100).unwrap();
        let mut refs = Vec::new();
        for i in 0..20u8 {
            let data = vec![i; 30];
            refs.push((w.write(Encoding::Xor, &data).unwrap(), data));
        }
        w.finish().unwrap();
        assert!(dir.path().join("000002").exists());
        assert_eq!(refs[0].0, chunk_ref(0, 8));
        let r = ChunkReader::open(dir.path()).unwrap();
        for (cr, data) in &refs {
            let c = r.chunk(*cr, 1, 2).unwrap();
            assert_eq!(&c.data[..], &data[..]);
            assert_eq!(c.encoding, Encoding::Xor);
        }
        assert!(r.chunk(chunk_ref(99, 8), 0, 0).is_err());
        assert!(r.chunk(chunk_ref(0, 1_000_000), 0, 0).is_err());
    }

    #[test]
    fn detects_bad_crc() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ChunkWriter::new(dir.path(), DEFAULT_SEGMENT_SIZE).unwrap();
        let r0 = w.write(Encoding::Xor, &[0, 1, 2, 3, 4, 5]).unwrap();
        w.finish().unwrap();
        let p = dir.path().join("000001");
        let mut b = std::fs::read(&p).unwrap();
        b[12] ^= 0xff;
        std::fs::write(&p, &b).unwrap();
        let r = ChunkReader::open(dir.path()).unwrap();
        assert!(matches!(r.chunk(r0, 0, 0), Err(BlockError::Checksum(_))));
        std::fs::write(&p, [0u8; 4]).unwrap();
        assert!(ChunkReader::open(dir.path()).is_err());
    }
}
