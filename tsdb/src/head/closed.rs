//! A series' closed chunks, packed into one allocation.
//!
//! A head series holds a few closed chunks at a time (one to three with 2m blocks at a
//! 10 s interval; up to a block's worth at 2h), each a few dozen bytes. As a `Vec` of
//! [`Chunk`]s that cost a 56-byte slot per chunk plus a heap allocation for its bytes,
//! about 110 bytes of overhead per chunk at a million series (issue #26). Packed, a
//! chunk costs a header of 11–14 bytes and the whole list one allocation.
//!
//! Layout: the records' length (8 bytes, little endian), the records, then spare room.
//! Per chunk, oldest first: `min_time` (8 bytes, little endian), `max_time - min_time`
//! (uvarint), the encoding byte, the data length (uvarint), the data. Readers borrow the
//! data in place; [`ClosedChunks::to_chunk`] copies it out.
//!
//! Spare room: a list of a few small chunks is sized exactly. A long list (histogram
//! chunks of a kilobyte each, or a long block range) grows, when full, by a quarter or
//! by two chunks of the size just cut, whichever is more, so a chunk cut copies a
//! bounded amount on average. Sized exactly, every cut copied the whole list to its new
//! allocation: quadratic in the list, 4.5% of the receiver's CPU at 10k histogram series
//! (issue #20).

use crate::block::encoding;
use crate::chunk::ChunkView;
use crate::chunk::{Chunk, Encoding};

/// See the module doc. Empty: no allocation.
#[derive(Debug, Default)]
pub(crate) struct ClosedChunks {
    /// Empty, or the records' length ([`LEN`] bytes), the records and spare room.
    buf: Box<[u8]>,
}

/// Bytes of the records' length in front of them.
const LEN: usize = 8;

/// Lists up to this many bytes are sized exactly (what a float series holds with 2-hour
/// blocks at a 15 s interval is about 1 KiB).
const EXACT_UP_TO: usize = 2048;

/// The allocation to make for a list that needs `need` bytes, its last record `record`.
fn capacity_for(need: usize, record: usize) -> usize {
    if need <= EXACT_UP_TO {
        need
    } else {
        need + (need / 4).max(2 * record)
    }
}

/// Reads the uvarint at `*at`, moving past it.
fn uvarint(b: &[u8], at: &mut usize) -> Option<u64> {
    let (v, n) = encoding::uvarint(b.get(*at..)?)?;
    *at += n;
    Some(v)
}

/// A list's buffer, sized exactly, from `v`: [`LEN`] placeholder bytes, then records
/// (none: no allocation).
fn exact(mut v: Vec<u8>) -> Box<[u8]> {
    let records = v.len().saturating_sub(LEN);
    if records == 0 {
        return Box::default();
    }
    v[..LEN].copy_from_slice(&(records as u64).to_le_bytes());
    v.into_boxed_slice()
}

/// A chunk's record header (everything before its data) and its length.
fn header(c: &ChunkView<'_>) -> ([u8; 29], usize) {
    fn uvarint_at(out: &mut [u8; 29], at: &mut usize, mut v: u64) {
        while v >= 0x80 {
            out[*at] = (v as u8) | 0x80;
            v >>= 7;
            *at += 1;
        }
        out[*at] = v as u8;
        *at += 1;
    }
    // 8 + two uvarints of at most 10 bytes + 1.
    let mut h = [0u8; 29];
    h[..8].copy_from_slice(&c.min_time.to_le_bytes());
    let mut at = 8;
    uvarint_at(&mut h, &mut at, c.max_time.wrapping_sub(c.min_time) as u64);
    h[at] = c.encoding as u8;
    at += 1;
    uvarint_at(&mut h, &mut at, c.data.len() as u64);
    (h, at)
}

/// Appends one chunk's record to `out`.
fn put(out: &mut Vec<u8>, c: ChunkView<'_>) {
    let (h, n) = header(&c);
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(c.data);
}

/// Bytes one chunk's record takes.
fn record_len(c: &ChunkView<'_>) -> usize {
    header(c).1 + c.data.len()
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
        self.records().is_empty()
    }

    /// The records, without the spare room.
    fn records(&self) -> &[u8] {
        let len = self
            .buf
            .first_chunk::<LEN>()
            .map_or(0, |b| u64::from_le_bytes(*b) as usize);
        self.buf.get(LEN..LEN + len).unwrap_or_default()
    }

    /// The chunks, oldest first.
    pub(crate) fn iter(&self) -> Iter<'_> {
        Iter {
            buf: self.records(),
            at: 0,
        }
    }

    /// The oldest chunk's first timestamp.
    pub(crate) fn min_time(&self) -> Option<i64> {
        self.iter().next().map(|c| c.min_time)
    }

    /// Appends a chunk: into the spare room when it fits, else into a new allocation
    /// (see the module doc for its size).
    pub(crate) fn push(&mut self, c: ChunkView<'_>) {
        let used = LEN + self.records().len();
        let (h, hn) = header(&c);
        let need = used + hn + c.data.len();
        if self.buf.len() < need {
            // Grown in place where the allocator can (`realloc`).
            let mut v = std::mem::take(&mut self.buf).into_vec();
            let cap = capacity_for(need, need - used);
            v.reserve_exact(cap - v.len());
            v.resize(cap, 0);
            self.buf = v.into_boxed_slice();
        }
        self.buf[used..used + hn].copy_from_slice(&h[..hn]);
        self.buf[used + hn..need].copy_from_slice(c.data);
        self.buf[..LEN].copy_from_slice(&((need - LEN) as u64).to_le_bytes());
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
        let mut v = vec![0; LEN];
        for c in self.iter().filter(|c| keep(c)) {
            put(&mut v, c);
        }
        self.buf = exact(v);
    }

    /// Replaces the list with `chunks`.
    pub(crate) fn set(&mut self, chunks: &[Chunk]) {
        let mut v =
            Vec::with_capacity(LEN + chunks.iter().map(|c| record_len(&c.view())).sum::<usize>());
        v.resize(LEN, 0);
        for c in chunks {
            put(&mut v, c.view());
        }
        self.buf = exact(v);
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
            let want: usize = cs[..=i].iter().map(|c| record_len(&c.view())).sum();
            assert_eq!(l.records().len(), want);
            if LEN + want <= EXACT_UP_TO {
                assert_eq!(l.buf.len(), LEN + want, "a short list has no spare room");
            } else {
                assert!(l.buf.len() <= capacity_for(LEN + want, record_len(&c.view())));
            }
        }
        assert_eq!(l.min_time(), Some(-5_000));
        l.retain(|c| c.encoding == Encoding::Xor);
        let xor: Vec<Chunk> = cs
            .iter()
            .filter(|c| c.encoding == Encoding::Xor)
            .cloned()
            .collect();
        assert_eq!(l.to_vec(), xor);
        let want: usize = xor.iter().map(|c| record_len(&c.view())).sum();
        assert_eq!(
            l.buf.len(),
            LEN + want,
            "a rewritten list has no spare room"
        );
        l.set(&cs[1..3]);
        assert_eq!(l.to_vec(), cs[1..3].to_vec());
        let want: usize = cs[1..3].iter().map(|c| record_len(&c.view())).sum();
        assert_eq!(l.buf.len(), LEN + want);
        l.retain(|_| false);
        assert!(l.is_empty());
        assert!(l.buf.is_empty(), "an empty list holds no allocation");
    }

    /// A long list (kilobyte histogram chunks) grows a logarithmic number of times, not
    /// at every push, never holds more spare room than a quarter or two records, and
    /// reads back every record at every step.
    #[test]
    fn long_lists_grow_by_a_quarter_or_two_chunks() {
        let cs: Vec<Chunk> = (0..200)
            .map(|i| {
                chunk(
                    i * 1000,
                    i * 1000 + 999,
                    Encoding::Histogram,
                    900 + i as usize,
                )
            })
            .collect();
        let mut l = ClosedChunks::default();
        let mut growths = 0;
        for (i, c) in cs.iter().enumerate() {
            let before = l.buf.len();
            l.push_chunk(c);
            if l.buf.len() != before {
                growths += 1;
            }
            assert_eq!(l.iter().count(), i + 1);
            let need = LEN + l.records().len();
            let spare = l.buf.len() - need;
            let largest = cs[..=i].iter().map(|c| record_len(&c.view())).max();
            assert!(
                need <= EXACT_UP_TO && spare == 0
                    || spare <= (need / 4).max(2 * largest.unwrap_or(0)),
                "{spare} spare for {need}"
            );
        }
        assert_eq!(l.to_vec(), cs);
        // Exact sizing grows at each of the 200 pushes. From 2 KiB by two chunks (until a
        // quarter is more, at 8 KiB): 3 growths; then by a quarter to 200 KiB: about
        // log(25) / log(1.25) ≈ 15.
        assert!(growths <= 25, "{growths} growths");
        l.retain(|c| c.min_time >= 100_000);
        assert_eq!(l.to_vec(), cs[100..].to_vec());
        assert_eq!(l.buf.len(), LEN + l.records().len());
    }
}
