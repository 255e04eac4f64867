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
    pub(crate) fn write_bits(&mut self, v: u64, mut n: u32) {
        if n == 0 {
            return;
        }
        let v = if n == 64 { v } else { v & ((1u64 << n) - 1) };
        if self.free > 0 {
            let take = self.free.min(n);
            let bits = ((v >> (n - take)) as u8) & (((1u16 << take) - 1) as u8);
            if let Some(last) = self.buf.last_mut() {
                *last |= bits << (self.free - take);
            }
            self.free -= take;
            n -= take;
        }
        while n >= 8 {
            n -= 8;
            self.buf.push((v >> n) as u8);
        }
        if n > 0 {
            self.buf.push(((v << (8 - n)) & 0xff) as u8);
            self.free = 8 - n;
        }
    }

    /// Bits written so far, header included.
    #[cfg(test)]
    pub(crate) fn bit_len(&self) -> usize {
        self.buf.len() * 8 - self.free as usize
    }
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
}
