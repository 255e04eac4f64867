//! Byte-level helpers shared by the block files: Go-compatible varints, big-endian
//! integers, CRC32-Castagnoli and a bounds-checked decoder that never panics.

use super::BlockError;

/// CRC32 with the Castagnoli polynomial, as Prometheus uses everywhere in a block.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Appends `v` as an unsigned LEB128 varint (Go's `binary.PutUvarint`).
#[inline]
pub fn put_uvarint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Appends `v` as a zig-zag signed varint (Go's `binary.PutVarint`).
#[inline]
pub fn put_varint(buf: &mut Vec<u8>, v: i64) {
    put_uvarint(buf, ((v << 1) ^ (v >> 63)) as u64);
}

/// Appends a uvarint length and the string bytes.
#[inline]
pub fn put_uvarint_str(buf: &mut Vec<u8>, s: &str) {
    put_uvarint(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

/// Number of bytes `v` takes as a uvarint.
#[inline]
pub fn uvarint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Decodes a uvarint at the start of `b`: `(value, bytes read)`, or `None` when `b`
/// ends inside it or it overflows 64 bits.
#[inline]
pub fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut x: u64 = 0;
    let mut s: u32 = 0;
    for (i, &byte) in b.iter().enumerate() {
        if i == 10 {
            return None;
        }
        if byte < 0x80 {
            if i == 9 && byte > 1 {
                return None;
            }
            return Some((x | (u64::from(byte) << s), i + 1));
        }
        x |= u64::from(byte & 0x7f) << s;
        s += 7;
    }
    None
}

/// A cursor over a byte slice; every read is bounds-checked and fails with a
/// [`BlockError::Corrupt`] naming `what` is being decoded.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    b: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Decoder<'a> {
    pub fn new(b: &'a [u8], what: &'static str) -> Self {
        Decoder { b, pos: 0, what }
    }

    fn corrupt(&self, why: &str) -> BlockError {
        BlockError::Corrupt(format!("{}: {why} at byte {}", self.what, self.pos))
    }

    /// Bytes not yet read.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }

    #[inline]
    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn skip(&mut self, n: usize) -> Result<(), BlockError> {
        if n > self.remaining() {
            return Err(self.corrupt("unexpected end"));
        }
        self.pos += n;
        Ok(())
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], BlockError> {
        if n > self.remaining() {
            return Err(self.corrupt("unexpected end"));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn byte(&mut self) -> Result<u8, BlockError> {
        Ok(self.bytes(1)?[0])
    }

    pub fn be32(&mut self) -> Result<u32, BlockError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn be64(&mut self) -> Result<u64, BlockError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub fn uvarint(&mut self) -> Result<u64, BlockError> {
        match uvarint(&self.b[self.pos..]) {
            Some((v, n)) => {
                self.pos += n;
                Ok(v)
            }
            None => Err(self.corrupt("bad uvarint")),
        }
    }

    pub fn uvarint32(&mut self) -> Result<u32, BlockError> {
        let v = self.uvarint()?;
        u32::try_from(v).map_err(|_| self.corrupt("uvarint exceeds 32 bits"))
    }

    pub fn varint(&mut self) -> Result<i64, BlockError> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// A uvarint length followed by that many bytes.
    pub fn uvarint_bytes(&mut self) -> Result<&'a [u8], BlockError> {
        let n = self.uvarint()?;
        let n = usize::try_from(n).map_err(|_| self.corrupt("length overflows"))?;
        self.bytes(n)
    }

    /// A uvarint length followed by that many bytes of UTF-8.
    pub fn uvarint_str(&mut self) -> Result<&'a str, BlockError> {
        let b = self.uvarint_bytes()?;
        std::str::from_utf8(b).map_err(|_| self.corrupt("string is not UTF-8"))
    }
}

/// Reads a `len <4b BE> | content | CRC32 <4b BE>` section starting at `off` in `b`,
/// verifies the checksum and returns the content.
pub fn checked_section<'a>(
    b: &'a [u8],
    off: usize,
    what: &'static str,
) -> Result<&'a [u8], BlockError> {
    let mut d = Decoder::new(b, what);
    d.skip(off)?;
    let len = d.be32()? as usize;
    let content = d.bytes(len)?;
    let want = d.be32()?;
    if crc32c(content) != want {
        return Err(BlockError::Checksum(what));
    }
    Ok(content)
}

/// Reads a `len <uvarint> | content | CRC32 <4b BE>` entry (a series) at `off`.
pub fn checked_uvarint_section<'a>(
    b: &'a [u8],
    off: usize,
    what: &'static str,
) -> Result<&'a [u8], BlockError> {
    let mut d = Decoder::new(b, what);
    d.skip(off)?;
    let len = usize::try_from(d.uvarint()?)
        .map_err(|_| BlockError::Corrupt(format!("{what}: length overflows")))?;
    let content = d.bytes(len)?;
    let want = d.be32()?;
    if crc32c(content) != want {
        return Err(BlockError::Checksum(what));
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0i64, 1, -1, 63, -64, 64, 1 << 40, i64::MIN, i64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut d = Decoder::new(&b, "t");
            assert_eq!(d.varint().unwrap(), v);
            assert_eq!(d.remaining(), 0);
        }
        for v in [0u64, 127, 128, 300, u64::MAX] {
            let mut b = Vec::new();
            put_uvarint(&mut b, v);
            assert_eq!(b.len(), uvarint_len(v));
            assert_eq!(uvarint(&b), Some((v, b.len())));
        }
        // Truncated and overlong varints fail.
        assert_eq!(uvarint(&[0x80]), None);
        assert_eq!(uvarint(&[0xff; 11]), None);
    }

    #[test]
    fn decoder_never_reads_past_the_end() {
        let mut d = Decoder::new(&[1, 2, 3], "t");
        assert!(d.be32().is_err());
        assert!(d.bytes(4).is_err());
        assert_eq!(d.byte().unwrap(), 1);
        assert!(matches!(
            Decoder::new(&[5, b'a'], "t").uvarint_str(),
            Err(BlockError::Corrupt(_))
        ));
    }
}
