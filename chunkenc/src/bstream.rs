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

    #[inline]
    pub(crate) fn write_bit(&mut self, bit: bool) {
        self.write_bits(bit as u64, 1);
    }

    #[inline]
    pub(crate) fn write_byte(&mut self, b: u8) {
        self.write_bits(b as u64, 8);
    }

    /// Writes the low `n` bits of `v` (n ≤ 64), most significant first.
    #[inline]
    pub(crate) fn write_bits(&mut self, v: u64, n: u32) {
        push_bits(&mut self.buf, &mut self.free, v, n);
    }

    /// Bits written so far, header included.
    #[cfg(test)]
    pub(crate) fn bit_len(&self) -> usize {
        self.buf.len() * 8 - self.free as usize
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
    }
}
