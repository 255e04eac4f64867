//! A series' closed chunks, packed into one allocation.
//!
//! A head series holds a few closed chunks at a time (one to three with 2m blocks at a
//! 10 s interval; up to a block's worth at 2h), each a few dozen bytes. As a `Vec` of
//! [`Chunk`]s that cost a 56-byte slot per chunk plus a heap allocation for its bytes,
//! about 110 bytes of overhead per chunk at a million series (issue #26). Packed, a
//! chunk costs a header of 11–14 bytes and the whole list one allocation.
//!
//! Layout, per chunk, oldest first: `min_time` (8 bytes, little endian),
//! `max_time - min_time` (uvarint), the encoding byte, the data length (uvarint), the
//! data. Readers borrow the data in place; [`ClosedChunks::to_chunk`] copies it out.

use crate::block::encoding::{self, put_uvarint, uvarint_len};
use crate::chunk::ChunkView;
use crate::chunk::{Chunk, Encoding};

/// See the module doc. Empty: no allocation.
#[derive(Debug, Default)]
pub(crate) struct ClosedChunks {
    buf: Box<[u8]>,
}

/// Reads the uvarint at `*at`, moving past it.
fn uvarint(b: &[u8], at: &mut usize) -> Option<u64> {
    let (v, n) = encoding::uvarint(b.get(*at..)?)?;
    *at += n;
    Some(v)
}

/// Appends one chunk's record to `out`.
fn put(out: &mut Vec<u8>, c: ChunkView<'_>) {
    out.extend_from_slice(&c.min_time.to_le_bytes());
    put_uvarint(out, c.max_time.wrapping_sub(c.min_time) as u64);
    out.push(c.encoding as u8);
    put_uvarint(out, c.data.len() as u64);
    out.extend_from_slice(c.data);
}

/// Bytes one chunk's record takes.
fn record_len(c: &ChunkView<'_>) -> usize {
    8 + uvarint_len(c.max_time.wrapping_sub(c.min_time) as u64)
        + 1
        + uvarint_len(c.data.len() as u64)
        + c.data.len()
}

/// Iterates the records of a packed list.
#[derive(Clone)]
pub(crate) struct Iter<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = ChunkView<'a>;

    fn next(&mut self) -> Option<ChunkView<'a>> {
        let b = self.buf;
        let mut at = self.at;
        let min_time = i64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?);
        at += 8;
        let span = uvarint(b, &mut at)?;
        // Only this module writes the buffer, with encodings of chunks it was given.
        let encoding = Encoding::from_byte(*b.get(at)?)?;
        at += 1;
        let len = usize::try_from(uvarint(b, &mut at)?).ok()?;
        let data = b.get(at..at.checked_add(len)?)?;
        self.at = at + len;
        Some(ChunkView {
            min_time,
            max_time: min_time.wrapping_add(span as i64),
            encoding,
            data,
        })
    }
}

impl ClosedChunks {
    /// Where the packed chunks start (for a prefetch).
    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.buf.as_ptr()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The chunks, oldest first.
    pub(crate) fn iter(&self) -> Iter<'_> {
        Iter {
            buf: &self.buf,
            at: 0,
        }
    }

    /// The oldest chunk's first timestamp.
    pub(crate) fn min_time(&self) -> Option<i64> {
        self.iter().next().map(|c| c.min_time)
    }

    /// Appends a chunk, growing the allocation by exactly its record.
    pub(crate) fn push(&mut self, c: ChunkView<'_>) {
        let mut v = std::mem::take(&mut self.buf).into_vec();
        v.reserve_exact(record_len(&c));
        put(&mut v, c);
        self.buf = v.into_boxed_slice();
    }

    /// Appends an owned chunk.
    pub(crate) fn push_chunk(&mut self, c: &Chunk) {
        self.push(c.view());
    }

    /// Keeps the chunks `keep` says yes to (rewritten only when one goes).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&ChunkView<'_>) -> bool) {
        if self.iter().all(|c| keep(&c)) {
            return;
        }
        let mut v = Vec::new();
        for c in self.iter().filter(|c| keep(c)) {
            put(&mut v, c);
        }
        self.buf = v.into_boxed_slice();
    }

    /// Replaces the list with `chunks`.
    pub(crate) fn set(&mut self, chunks: &[Chunk]) {
        let mut v = Vec::with_capacity(chunks.iter().map(|c| record_len(&c.view())).sum());
        for c in chunks {
            put(&mut v, c.view());
        }
        self.buf = v.into_boxed_slice();
    }

    /// The chunks as owned ones (copied).
    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> Vec<Chunk> {
        self.iter().map(|c| c.to_chunk()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn chunk(min: i64, max: i64, enc: Encoding, len: usize) -> Chunk {
        Chunk {
            min_time: min,
            max_time: max,
            encoding: enc,
            data: Bytes::from((0..len).map(|i| (i * 7 + len) as u8).collect::<Vec<_>>()),
        }
    }

    #[test]
    fn packs_reads_retains_and_sizes_exactly() {
        let cs = [
            chunk(-5_000, -1, Encoding::Xor, 0),
            chunk(0, 119_000, Encoding::Xor, 37),
            chunk(120_000, 120_000, Encoding::Histogram, 200),
            chunk(i64::MIN, i64::MAX, Encoding::FloatHistogram, 1),
            chunk(7, 20_000_000, Encoding::Xor, 70_000),
        ];
        let mut l = ClosedChunks::default();
        assert!(l.is_empty() && l.min_time().is_none());
        for (i, c) in cs.iter().enumerate() {
            l.push_chunk(c);
            assert_eq!(l.to_vec(), cs[..=i].to_vec());
        }
        let want: usize = cs.iter().map(|c| record_len(&c.view())).sum();
        assert_eq!(l.buf.len(), want, "exactly the records, no slack");
        assert_eq!(l.min_time(), Some(-5_000));
        l.retain(|c| c.encoding == Encoding::Xor);
        let xor: Vec<Chunk> = cs
            .iter()
            .filter(|c| c.encoding == Encoding::Xor)
            .cloned()
            .collect();
        assert_eq!(l.to_vec(), xor);
        l.set(&cs[1..3]);
        assert_eq!(l.to_vec(), cs[1..3].to_vec());
        l.retain(|_| false);
        assert!(l.is_empty());
    }
}
