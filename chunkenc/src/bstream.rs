//! Bit streams for the histogram chunk codecs: a writer that appends bits most
//! significant first (Prometheus's `bstream`) and a reader that checks every read
//! against the end of the data, so a truncated chunk is an error and never a panic.
//!
//! The XOR codec keeps its own unchecked reader for speed; histogram chunks carry
//! variable-length layouts where a checked reader is the simpler safe choice.

use crate::ChunkError;

/// Appends bits to a byte buffer, most significant bit first.
#[derive(Debug, Clone, Default)]
pub(crate) struct BitWriter {
    pub(crate) buf: Vec<u8>,
    /// Free bits in the last byte of `buf` (0 = the last byte is full).
    pub(crate) free: u32,
}

impl BitWriter {
    /// A writer whose buffer starts with `header` zero bytes.
    pub(crate) fn with_header(header: usize, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity.max(header));
        buf.resize(header, 0);
        BitWriter { buf, free: 0 }
    }

    /// Empties the writer for a new chunk that starts with `header` zero bytes, in the
    /// same buffer: kept unless it is more than twice `capacity` (then it shrinks to
    /// that), so one outsized chunk does not pin its memory.
    pub(crate) fn restart(&mut self, header: usize, capacity: usize) {
        let capacity = capacity.max(header);
        self.buf.clear();
        if self.buf.capacity() > 2 * capacity {
            self.buf.shrink_to(capacity);
        }
        self.buf.reserve(capacity);
        self.buf.resize(header, 0);
        self.free = 0;
    }

    /// Continues writing after `used_bits` bits of `data` (later bits are cleared).
    pub(crate) fn resume(data: &[u8], used_bits: usize) -> Self {
        let used_bytes = used_bits.div_ceil(8).min(data.len());
        let mut buf = Vec::with_capacity(used_bytes.max(128));
        buf.extend_from_slice(&data[..used_bytes]);
        let free = (used_bytes * 8).saturating_sub(used_bits) as u32;
        if free > 0
            && let Some(last) = buf.last_mut()
        {
            *last &= !((1u8 << free) - 1);
        }
        BitWriter { buf, free }
    }

    /// Bits written so far, header included.
    #[cfg(test)]
    pub(crate) fn bit_len(&self) -> usize {
        self.buf.len() * 8 - self.free as usize
    }

    /// A writer for one sample's many fields: the bits collect in a register and reach
    /// the buffer eight bytes at a time, and once more when the sink is dropped.
    ///
    /// A histogram sample is two dozen small fields (a varbit delta-of-delta per
    /// bucket); written one at a time each was a read-modify-write of the buffer's last
    /// byte with a length and capacity check, 10% of the receiver's time with
    /// 20-bucket histograms (issue #20).
    pub(crate) fn sink(&mut self) -> BitSink<'_> {
        let (acc, n) = match self.buf.last() {
            Some(&last) if self.free > 0 => {
                self.buf.pop();
                ((last as u64) << 56, 8 - self.free)
            }
            _ => (0, 0),
        };
        BitSink { w: self, acc, n }
    }
}

/// Something bits are written to, most significant first: a [`BitWriter`], or a
/// [`BitSink`] over one.
pub(crate) trait BitWrite {
    /// Writes the low `n` bits of `v` (n ≤ 64; none for 0).
    fn write_bits(&mut self, v: u64, n: u32);

    #[inline]
    fn write_bit(&mut self, bit: bool) {
        self.write_bits(bit as u64, 1);
    }

    #[inline]
    fn write_byte(&mut self, b: u8) {
        self.write_bits(b as u64, 8);
    }
}

impl BitWrite for BitWriter {
    #[inline]
    fn write_bits(&mut self, v: u64, n: u32) {
        push_bits(&mut self.buf, &mut self.free, v, n);
    }
}

/// See [`BitWriter::sink`]. The writer's buffer holds every bit again once the sink is
/// dropped.
pub(crate) struct BitSink<'a> {
    w: &'a mut BitWriter,
    /// Pending bits, left-aligned (the first pending bit is bit 63).
    acc: u64,
    /// How many bits of `acc` are pending (always < 64).
    n: u32,
}

impl BitWrite for BitSink<'_> {
    #[inline(always)]
    fn write_bits(&mut self, v: u64, n: u32) {
        if n == 0 {
            return;
        }
        let v = if n == 64 { v } else { v & ((1u64 << n) - 1) };
        let space = 64 - self.n;
        if n < space {
            self.acc |= v << (space - n);
            self.n += n;
            return;
        }
        // The register fills: its 64 bits go out and the `rest` low bits of `v` stay.
        let rest = n - space;
        self.acc |= v >> rest;
        self.w.buf.extend_from_slice(&self.acc.to_be_bytes());
        self.acc = if rest == 0 { 0 } else { v << (64 - rest) };
        self.n = rest;
    }
}

impl Drop for BitSink<'_> {
    fn drop(&mut self) {
        let bytes = self.n.div_ceil(8);
        self.w
            .buf
            .extend_from_slice(&self.acc.to_be_bytes()[..bytes as usize]);
        self.w.free = bytes * 8 - self.n;
    }
}

/// Appends the low `n` bits of `v` (n ≤ 64) to `buf`, most significant first;
/// `free` counts the unused low bits of `buf`'s last byte (which must be zero).
///
/// Shared by both chunk writers: the common cases are a few bits that fit the last
/// byte (a `0` for an unchanged value) and a field that spills into new bytes, which
/// is appended as one 8-byte store and truncated (when the capacity allows),
/// instead of a push per byte.
#[inline(always)]
pub(crate) fn push_bits(buf: &mut Vec<u8>, free: &mut u32, v: u64, n: u32) {
    if n == 0 {
        return;
    }
    let v = if n == 64 { v } else { v & ((1u64 << n) - 1) };
    if n <= *free {
        if let Some(last) = buf.last_mut() {
            *last |= (v << (*free - n)) as u8;
        }
        *free -= n;
        return;
    }
    // The top `free` bits of `v` close the last byte; the other `rest` bits start
    // at a byte boundary.
    let rest = n - *free;
    if *free > 0
        && let Some(last) = buf.last_mut()
    {
        *last |= (v >> rest) as u8;
    }
    let bytes = rest.div_ceil(8);
    let left = (v << (64 - rest)).to_be_bytes();
    let len = buf.len();
    if buf.capacity() - len >= 8 {
        buf.extend_from_slice(&left);
        buf.truncate(len + bytes as usize);
    } else {
        // Near the end of a buffer sized ahead (a predicted chunk size): never grow
        // it for bytes that are not written.
        buf.extend_from_slice(&left[..bytes as usize]);
    }
    *free = bytes * 8 - rest;
}

/// Reads bits from a byte slice; every read past the end is [`ChunkError::Corrupt`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

const TRUNCATED: ChunkError = ChunkError::Corrupt("histogram chunk ends inside a sample");

impl<'a> BitReader<'a> {
    /// A reader positioned at bit `pos` of `data`.
    pub(crate) fn new(data: &'a [u8], pos: usize) -> Self {
        BitReader { data, pos }
    }

    /// Current position in bits from the start of the data.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Bits left to read.
    pub(crate) fn remaining(&self) -> usize {
        (self.data.len() * 8).saturating_sub(self.pos)
    }

    /// The 64 bits from `pos` on, left-aligned (zeros past the end); ≥ 57 are valid.
    #[inline(always)]
    fn peek(&self, pos: usize) -> u64 {
        let byte = pos >> 3;
        let w = match self.data.get(byte..byte + 8) {
            Some(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                u64::from_be_bytes(a)
            }
            None => {
                let mut a = [0u8; 8];
                let rest = self.data.get(byte..).unwrap_or(&[]);
                let n = rest.len().min(8);
                a[..n].copy_from_slice(&rest[..n]);
                u64::from_be_bytes(a)
            }
        };
        w << (pos & 7)
    }

    /// Reads `n` bits (0..=64), right-aligned.
    #[inline]
    pub(crate) fn read_bits(&mut self, n: u32) -> Result<u64, ChunkError> {
        if n == 0 {
            return Ok(0);
        }
        if n as usize > self.remaining() {
            return Err(TRUNCATED);
        }
        let v = if n <= 56 {
            self.peek(self.pos) >> (64 - n)
        } else {
            let hi = self.peek(self.pos) >> 32;
            let lo_n = n - 32;
            let lo = self.peek(self.pos + 32) >> (64 - lo_n);
            (hi << lo_n) | lo
        };
        self.pos += n as usize;
        Ok(v)
    }

    /// The next `n` (1..=56) bits without consuming them; the caller checks
    /// [`Self::remaining`] (bits past the end read as zeros).
    #[inline]
    pub(crate) fn peek_bits(&self, n: u32) -> u64 {
        self.peek(self.pos) >> (64 - n)
    }

    /// Consumes `n` bits already checked with [`Self::remaining`].
    #[inline]
    pub(crate) fn skip(&mut self, n: usize) {
        self.pos += n;
    }

    #[inline]
    pub(crate) fn read_bit(&mut self) -> Result<bool, ChunkError> {
        Ok(self.read_bits(1)? == 1)
    }

    #[inline]
    pub(crate) fn read_byte(&mut self) -> Result<u8, ChunkError> {
        Ok(self.read_bits(8)? as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_arbitrary_widths() {
        let mut w = BitWriter::with_header(0, 0);
        let items: Vec<(u64, u32)> = vec![
            (1, 1),
            (0b101, 3),
            (u64::MAX, 64),
            (0x1234_5678_9abc_def0, 64),
            (0x3f, 6),
            (0, 57),
            ((1 << 58) - 3, 58),
        ];
        for &(v, n) in &items {
            w.write_bits(v, n);
        }
        let total: u32 = items.iter().map(|i| i.1).sum();
        assert_eq!(w.bit_len(), total as usize);
        let mut r = BitReader::new(&w.buf, 0);
        for &(v, n) in &items {
            assert_eq!(r.read_bits(n).unwrap(), v, "width {n}");
        }
        // Padding bits are readable, one more byte is not.
        assert!(r.read_bits(r.remaining() as u32).is_ok());
        assert_eq!(r.read_bit(), Err(TRUNCATED));
    }

    #[test]
    fn resume_continues_at_the_bit() {
        let mut w = BitWriter::with_header(1, 0);
        w.write_bits(0b101, 3);
        let mut r = BitWriter::resume(&[0, 0b1011_1111], 11);
        r.write_bits(0b11, 2);
        w.write_bits(0b11, 2);
        assert_eq!(r.buf, w.buf);
        assert_eq!(r.free, w.free);
    }

    /// A bit-at-a-time writer: the model `push_bits` must match.
    fn model_bits(items: &[(u64, u32)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut used = 0usize;
        for &(v, n) in items {
            for i in (0..n).rev() {
                if used % 8 == 0 {
                    out.push(0);
                }
                if (v >> i) & 1 == 1 {
                    let last = out.len() - 1;
                    out[last] |= 0x80 >> (used % 8);
                }
                used += 1;
            }
        }
        out
    }

    /// A restarted writer holds just the header, its buffer kept unless it is more
    /// than twice the room asked for.
    #[test]
    fn restart_keeps_a_fitting_buffer_and_shrinks_an_outsized_one() {
        let mut w = BitWriter::with_header(3, 1000);
        w.write_bits(0x1ff, 9);
        let kept = w.buf.capacity();
        w.restart(3, 900);
        assert_eq!((&w.buf[..], w.free), (&[0u8, 0, 0][..], 0));
        assert_eq!(w.buf.capacity(), kept);
        w.restart(3, 100);
        assert!(w.buf.capacity() < kept && w.buf.capacity() >= 100);
        assert_eq!(w.bit_len(), 24);
    }

    proptest::proptest! {
        #[test]
        fn push_bits_matches_a_bit_at_a_time_writer(
            items in proptest::collection::vec((proptest::prelude::any::<u64>(), 0u32..=64), 0..64)
        ) {
            let mut w = BitWriter::with_header(0, 0);
            for &(v, n) in &items {
                w.write_bits(v, n);
            }
            proptest::prop_assert_eq!(&w.buf, &model_bits(&items));
            let bits: u32 = items.iter().map(|i| i.1).sum();
            proptest::prop_assert_eq!(w.bit_len(), bits as usize);
        }

        /// Bits written through sinks (one per group, as one per sample), between
        /// direct writes, leave the same bytes and free count as direct writes alone:
        /// a sink picks up a part-filled last byte and hands one back.
        #[test]
        fn sinks_write_what_direct_writes_do(
            groups in proptest::collection::vec(
                (proptest::prelude::any::<bool>(),
                 proptest::collection::vec((proptest::prelude::any::<u64>(), 0u32..=64), 0..24)),
                0..12),
            header in 0usize..4,
        ) {
            let mut direct = BitWriter::with_header(header, 0);
            let mut sunk = BitWriter::with_header(header, 0);
            for (through_sink, items) in &groups {
                for &(v, n) in items {
                    direct.write_bits(v, n);
                }
                if *through_sink {
                    let mut s = sunk.sink();
                    for &(v, n) in items {
                        s.write_bits(v, n);
                    }
                } else {
                    for &(v, n) in items {
                        sunk.write_bits(v, n);
                    }
                }
                proptest::prop_assert_eq!(&sunk.buf, &direct.buf);
                proptest::prop_assert_eq!(sunk.free, direct.free);
            }
        }
    }
}
