//! The Gorilla XOR float chunk, byte-for-byte as Prometheus's `chunkenc` XOR chunk.
//!
//! Layout: a 2-byte big-endian sample count, then a bitstream (most significant bit
//! first within each byte):
//! - sample 0: timestamp as a signed (zig-zag) varint, value as its 64 raw bits;
//! - sample 1: timestamp delta as an unsigned varint, then the value XOR-encoded;
//! - sample n ≥ 2: the delta-of-delta of the timestamp in one of five buckets
//!   (`0` → 0; `10` + 14 bits; `110` + 17 bits; `1110` + 20 bits; `1111` + 64 bits; the
//!   n-bit buckets hold values in `[-(2^(n-1) - 1), 2^(n-1)]` as two's complement), then
//!   the value XOR-encoded.
//!
//! XOR value encoding against the previous value: `0` when equal; else `1` then either
//! `0` + the meaningful bits inside the previous leading/trailing-zero window (when the
//! new XOR fits in it), or `1` + 5 bits of leading zeros (clamped to 31) + 6 bits of
//! meaningful-bit count (64 written as 0) + the meaningful bits.
//!
//! Values are stored as raw bits, so every NaN (the stale marker `0x7ff0000000000002`
//! included) round-trips bit-exactly.

use super::ChunkError;
use std::ops::ControlFlow;

/// Bytes of the sample-count header.
pub const HEADER_SIZE: usize = 2;

/// Initial allocation of a new chunk's buffer (Prometheus uses the same figure).
const INITIAL_CAPACITY: usize = 128;

/// An XOR chunk being built. Appends must come in timestamp order (the head checks it).
#[derive(Debug, Clone)]
pub struct XorChunk {
    buf: Vec<u8>,
    /// Free bits in the last byte of `buf` (0 = the last byte is full).
    free: u32,
    t: i64,
    v: u64,
    t_delta: u64,
    leading: u8,
    trailing: u8,
}

impl Default for XorChunk {
    fn default() -> Self {
        Self::new()
    }
}

impl XorChunk {
    pub fn new() -> Self {
        Self::with_capacity(INITIAL_CAPACITY)
    }

    /// A new chunk whose buffer starts with `cap` bytes reserved.
    pub fn with_capacity(cap: usize) -> Self {
        let mut buf = Vec::with_capacity(cap.max(HEADER_SIZE));
        buf.extend_from_slice(&[0, 0]);
        XorChunk {
            buf,
            free: 0,
            t: 0,
            v: 0,
            t_delta: 0,
            leading: 0xff,
            trailing: 0,
        }
    }

    /// Reopens an encoded chunk for appending (replays it to restore the encoder state).
    pub fn from_bytes(data: &[u8]) -> Result<Self, ChunkError> {
        let mut it = XorIterator::new(data)?;
        let mut n = 0usize;
        for r in it.by_ref() {
            r?;
            n += 1;
        }
        let used_bits = it.st.pos;
        let used_bytes = used_bits.div_ceil(8);
        if used_bytes > data.len() {
            return Err(ChunkError::Corrupt("chunk ends inside a sample"));
        }
        let mut buf = Vec::with_capacity(used_bytes.max(INITIAL_CAPACITY));
        buf.extend_from_slice(&data[..used_bytes]);
        // Clear any garbage past the last used bit so appends can OR into it.
        let free = (used_bytes * 8 - used_bits) as u32;
        if free > 0
            && let Some(last) = buf.last_mut()
        {
            *last &= !((1u8 << free) - 1);
        }
        debug_assert_eq!(n, it.total as usize);
        let win = it.st.win;
        Ok(XorChunk {
            buf,
            free,
            t: it.st.t,
            v: it.st.v,
            t_delta: it.st.delta,
            // As the encoder keeps them: no window yet is a leading count of 0xff.
            leading: if win.sig == 0 {
                0xff
            } else {
                (64 - win.sig - win.trail) as u8
            },
            trailing: win.trail as u8,
        })
    }

    /// Number of samples in the chunk.
    #[inline]
    pub fn num_samples(&self) -> u16 {
        u16::from_be_bytes([self.buf[0], self.buf[1]])
    }

    /// The encoded chunk (header + bitstream), as stored on disk.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Consumes the chunk, returning its encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// Timestamp of the last sample appended (meaningless when empty).
    #[inline]
    pub fn last_t(&self) -> i64 {
        self.t
    }

    /// Value of the last sample appended (meaningless when empty).
    #[inline]
    pub fn last_v(&self) -> f64 {
        f64::from_bits(self.v)
    }

    /// Appends one sample. Fails only when the chunk already holds `u16::MAX` samples.
    pub fn append(&mut self, t: i64, v: f64) -> Result<(), ChunkError> {
        let num = self.num_samples();
        if num == u16::MAX {
            return Err(ChunkError::Full);
        }
        let vbits = v.to_bits();
        let mut t_delta = 0u64;
        match num {
            0 => {
                let mut tmp = [0u8; 10];
                let n = put_varint(&mut tmp, t);
                for &b in &tmp[..n] {
                    self.write_bits(b as u64, 8);
                }
                self.write_bits(vbits, 64);
            }
            1 => {
                t_delta = t.wrapping_sub(self.t) as u64;
                let mut tmp = [0u8; 10];
                let n = put_uvarint(&mut tmp, t_delta);
                for &b in &tmp[..n] {
                    self.write_bits(b as u64, 8);
                }
                self.write_value(vbits);
            }
            _ => {
                t_delta = t.wrapping_sub(self.t) as u64;
                let dod = t_delta.wrapping_sub(self.t_delta) as i64;
                if dod == 0 {
                    self.write_bits(0, 1);
                } else if bit_range(dod, 14) {
                    self.write_bits((0b10 << 14) | (dod as u64 & ((1 << 14) - 1)), 16);
                } else if bit_range(dod, 17) {
                    self.write_bits((0b110 << 17) | (dod as u64 & ((1 << 17) - 1)), 20);
                } else if bit_range(dod, 20) {
                    self.write_bits((0b1110 << 20) | (dod as u64 & ((1 << 20) - 1)), 24);
                } else {
                    self.write_bits(0b1111, 4);
                    self.write_bits(dod as u64, 64);
                }
                self.write_value(vbits);
            }
        }
        self.t = t;
        self.v = vbits;
        self.t_delta = t_delta;
        let [a, b] = (num + 1).to_be_bytes();
        self.buf[0] = a;
        self.buf[1] = b;
        Ok(())
    }

    #[inline]
    fn write_value(&mut self, vbits: u64) {
        let delta = vbits ^ self.v;
        if delta == 0 {
            self.write_bits(0, 1);
            return;
        }
        let mut lead = delta.leading_zeros() as u8;
        let trail = delta.trailing_zeros() as u8;
        if lead >= 32 {
            lead = 31;
        }
        if self.leading != 0xff && lead >= self.leading && trail >= self.trailing {
            // `10` + the bits inside the previous window.
            let sig = 64 - self.leading as u32 - self.trailing as u32;
            self.write_bits(0b10, 2);
            self.write_bits(delta >> self.trailing, sig);
            return;
        }
        self.leading = lead;
        self.trailing = trail;
        let sig = 64 - lead as u32 - trail as u32;
        // `11` + 5 bits leading + 6 bits significant count (64 is written as 0).
        let head = (0b11u64 << 11) | ((lead as u64) << 6) | (sig as u64 & 0x3f);
        self.write_bits(head, 13);
        self.write_bits(delta >> trail, sig);
    }

    /// Writes the low `n` bits of `v` (n ≤ 64), most significant first.
    #[inline]
    fn write_bits(&mut self, v: u64, n: u32) {
        if n > self.free {
            let need = (n - self.free).div_ceil(8) as usize;
            if self.buf.capacity() - self.buf.len() < need {
                // Grow by half rather than doubling: an open chunk lives as long as
                // its series fills it, and a million open chunks at Vec's doubling
                // carry a third of their size in empty capacity (issue #26).
                self.buf
                    .reserve_exact((self.buf.capacity() / 2).max(need).max(16));
            }
        }
        crate::bstream::push_bits(&mut self.buf, &mut self.free, v, n);
    }
}

#[inline]
fn bit_range(x: i64, nbits: u32) -> bool {
    -((1i64 << (nbits - 1)) - 1) <= x && x <= (1i64 << (nbits - 1))
}

fn put_uvarint(buf: &mut [u8; 10], mut x: u64) -> usize {
    let mut i = 0;
    while x >= 0x80 {
        buf[i] = (x as u8) | 0x80;
        x >>= 7;
        i += 1;
    }
    buf[i] = x as u8;
    i + 1
}

fn put_varint(buf: &mut [u8; 10], x: i64) -> usize {
    let ux = ((x as u64) << 1) ^ ((x >> 63) as u64);
    put_uvarint(buf, ux)
}

/// Decodes the samples of an XOR chunk one at a time. Corrupt or truncated input yields
/// one error and then ends; it never panics. [`for_each_sample`] is faster for readers
/// of a whole chunk.
#[derive(Debug, Clone)]
pub struct XorIterator<'a> {
    bits: Bits<'a>,
    total: u16,
    st: DecodeState,
    failed: bool,
}

impl<'a> XorIterator<'a> {
    /// Starts decoding `data` (header included). Fails if the header is missing.
    pub fn new(data: &'a [u8]) -> Result<Self, ChunkError> {
        Ok(XorIterator {
            bits: Bits { data },
            total: sample_count(data)?,
            st: DecodeState::new(),
            failed: false,
        })
    }

    /// The sample count from the header.
    pub fn num_samples(&self) -> u16 {
        self.total
    }
}

impl Iterator for XorIterator<'_> {
    type Item = Result<(i64, f64), ChunkError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.st.read >= self.total {
            return None;
        }
        match self.st.step(self.bits) {
            Ok(s) => Some(Ok(s)),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.failed {
            0
        } else {
            (self.total - self.st.read) as usize
        };
        (0, Some(left))
    }
}

/// Decodes every sample of an XOR chunk.
pub fn decode_all(data: &[u8]) -> Result<Vec<(i64, f64)>, ChunkError> {
    // Each sample takes at least two bits: a garbage count cannot make a large allocation.
    let count = data
        .get(..HEADER_SIZE)
        .map_or(0, |h| u16::from_be_bytes([h[0], h[1]]));
    let mut out = Vec::with_capacity((count as usize).min(data.len() * 4));
    for_each_sample(data, |t, v| {
        out.push((t, v));
        ControlFlow::Continue(())
    })?;
    Ok(out)
}

/// Reads `data`'s bitstream at arbitrary bit positions. Reads past the end see zero bits
/// and never panic; [`for_each_sample`] compares the position with the end once per
/// sample instead of at every read.
#[derive(Debug, Clone, Copy)]
struct Bits<'a> {
    data: &'a [u8],
}

impl Bits<'_> {
    /// The bits from `pos` on, left-aligned; at least the first 57 are valid.
    #[inline(always)]
    fn peek(self, pos: usize) -> u64 {
        let byte = pos >> 3;
        let w = match self.data.get(byte..byte + 8) {
            Some(b) => u64::from_be_bytes(b.try_into().unwrap_or([0; 8])),
            None => self.tail(byte),
        };
        w << (pos & 7)
    }

    #[cold]
    fn tail(self, byte: usize) -> u64 {
        let mut b = [0u8; 8];
        let rest = self.data.get(byte..).unwrap_or(&[]);
        let n = rest.len().min(8);
        b[..n].copy_from_slice(&rest[..n]);
        u64::from_be_bytes(b)
    }

    /// The `n` bits (1..=64) at `pos`, right-aligned.
    #[inline(always)]
    fn read(self, pos: usize, n: u32) -> u64 {
        if n <= 57 {
            self.peek(pos) >> (64 - n)
        } else {
            let w = (self.peek(pos) & !0xffff_ffff) | (self.peek(pos + 32) >> 32);
            w >> (64 - n)
        }
    }

    /// An unsigned varint at `*pos` (advanced past it); `None` if it overflows 64 bits.
    fn uvarint(self, pos: &mut usize) -> Option<u64> {
        let mut x = 0u64;
        for i in 0..10 {
            let b = self.read(*pos, 8) as u8;
            *pos += 8;
            if b < 0x80 {
                if i == 9 && b > 1 {
                    return None;
                }
                return Some(x | ((b as u64) << (7 * i)));
            }
            x |= ((b & 0x7f) as u64) << (7 * i);
        }
        None
    }
}

/// The leading/trailing-zero window of XOR-encoded values: `sig` meaningful bits
/// followed by `trail` zeros. `sig == 0` means no window yet (reusing it is corrupt).
#[derive(Debug, Clone, Copy)]
struct Window {
    sig: u32,
    trail: u32,
}

/// Reads one XOR-encoded value at `*pos` into `v`. `w` holds the bits from `*pos` on,
/// `avail` of them valid, so most values need no further load.
#[inline(always)]
fn xor_value(
    bits: Bits,
    pos: &mut usize,
    w: u64,
    avail: u32,
    win: &mut Window,
    v: &mut u64,
) -> Result<(), ChunkError> {
    if w >> 63 == 0 {
        *pos += 1;
        return Ok(());
    }
    let ctl = if (w >> 62) & 1 == 0 {
        if win.sig == 0 {
            return Err(ChunkError::Corrupt("invalid XOR window"));
        }
        2
    } else {
        let lead = ((w >> 57) & 0x1f) as u32;
        let mut sig = ((w >> 51) & 0x3f) as u32;
        if sig == 0 {
            sig = 64;
        }
        if lead + sig > 64 {
            return Err(ChunkError::Corrupt("invalid XOR window"));
        }
        *win = Window {
            sig,
            trail: 64 - lead - sig,
        };
        13
    };
    let sig = win.sig;
    let x = if ctl + sig <= avail {
        (w << ctl) >> (64 - sig)
    } else {
        bits.read(*pos + ctl as usize, sig)
    };
    *pos += (ctl + sig) as usize;
    *v ^= x << win.trail;
    Ok(())
}

fn sample_count(data: &[u8]) -> Result<u16, ChunkError> {
    match data {
        [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(ChunkError::Corrupt("chunk shorter than its header")),
    }
}

/// Where a decoder stands: the bit position and the previous sample's state.
#[derive(Debug, Clone)]
struct DecodeState {
    pos: usize,
    /// Samples decoded so far.
    read: u16,
    t: i64,
    v: u64,
    delta: u64,
    win: Window,
}

impl DecodeState {
    fn new() -> Self {
        DecodeState {
            pos: HEADER_SIZE * 8,
            read: 0,
            t: 0,
            v: 0,
            delta: 0,
            win: Window { sig: 0, trail: 0 },
        }
    }

    /// Decodes the next sample (the caller keeps `read` below the header's count).
    #[inline(always)]
    fn step(&mut self, bits: Bits) -> Result<(i64, f64), ChunkError> {
        const OVERFLOW: ChunkError = ChunkError::Corrupt("varint overflows 64 bits");
        match self.read {
            0 => {
                let ux = bits.uvarint(&mut self.pos).ok_or(OVERFLOW)?;
                self.t = ((ux >> 1) as i64) ^ -((ux & 1) as i64);
                self.v = bits.read(self.pos, 64);
                self.pos += 64;
            }
            1 => {
                self.delta = bits.uvarint(&mut self.pos).ok_or(OVERFLOW)?;
                self.t = self.t.wrapping_add(self.delta as i64);
                let w = bits.peek(self.pos);
                xor_value(bits, &mut self.pos, w, 57, &mut self.win, &mut self.v)?;
            }
            _ => return self.step_dod(bits),
        }
        self.finish(bits)
    }

    /// Decodes a sample after the second: delta-of-delta and XOR value.
    #[inline(always)]
    fn step_dod(&mut self, bits: Bits) -> Result<(i64, f64), ChunkError> {
        // One load serves the delta-of-delta and, usually, the value.
        let w = bits.peek(self.pos);
        let avail = 64 - (self.pos & 7) as u32;
        // '0', '10' + 14 bits, '110' + 17, '1110' + 20, '1111' + 64.
        let (dod, used) = if w >> 63 == 0 {
            (0, 1)
        } else {
            let (prefix, sz) = match w.leading_ones() {
                1 => (2, 14),
                2 => (3, 17),
                3 => (4, 20),
                _ => (4, 64),
            };
            let dod = if sz == 64 {
                bits.read(self.pos + 4, 64) as i64
            } else {
                let mut b = (w << prefix) >> (64 - sz);
                if b > (1 << (sz - 1)) {
                    b = b.wrapping_sub(1 << sz);
                }
                b as i64
            };
            (dod, prefix + sz)
        };
        self.delta = (self.delta as i64).wrapping_add(dod) as u64;
        self.t = self.t.wrapping_add(self.delta as i64);
        self.pos += used as usize;
        let (w, avail) = if used < avail {
            (w << used, avail - used)
        } else {
            (bits.peek(self.pos), 57)
        };
        xor_value(bits, &mut self.pos, w, avail, &mut self.win, &mut self.v)?;
        self.finish(bits)
    }

    #[inline(always)]
    fn finish(&mut self, bits: Bits) -> Result<(i64, f64), ChunkError> {
        // Reads past the end saw zeros: the sample is not real.
        if self.pos > bits.data.len() * 8 {
            return Err(ChunkError::Corrupt("unexpected end of chunk data"));
        }
        self.read += 1;
        Ok((self.t, f64::from_bits(self.v)))
    }
}

/// Decodes the samples of an XOR chunk in one tight loop, handing each to `f` until it
/// breaks: the fast path for readers of a whole chunk (the query path decodes millions
/// of samples per query; the decoder state stays in registers). Samples before corrupt
/// or truncated data are delivered first, then the error, exactly as [`XorIterator`].
pub fn for_each_sample(
    data: &[u8],
    mut f: impl FnMut(i64, f64) -> ControlFlow<()>,
) -> Result<(), ChunkError> {
    let total = sample_count(data)?;
    let bits = Bits { data };
    let mut st = DecodeState::new();
    for i in 0..total {
        let (t, v) = if i < 2 {
            st.step(bits)?
        } else {
            st.step_dod(bits)?
        };
        if f(t, v).is_break() {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(samples: &[(i64, f64)]) -> Vec<u8> {
        let mut c = XorChunk::new();
        for &(t, v) in samples {
            c.append(t, v).unwrap();
        }
        c.into_bytes()
    }

    fn assert_bits_eq(a: &[(i64, f64)], b: &[(i64, f64)]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.0, y.0);
            assert_eq!(
                x.1.to_bits(),
                y.1.to_bits(),
                "value bits differ at t={}",
                x.0
            );
        }
    }

    #[test]
    fn empty_chunk_is_two_zero_bytes() {
        let c = XorChunk::new();
        assert_eq!(c.bytes(), &[0, 0]);
        assert_eq!(decode_all(c.bytes()).unwrap(), vec![]);
    }

    /// Expected bytes derived by hand from the format description above.
    #[test]
    fn known_bytes_small_chunk() {
        // t=1000 (zigzag 2000 = varint d0 0f), v=1.0 (3ff0000000000000)
        // t=2000: uvarint 1000 = e8 07; value equal -> bit 0
        // t=3000: dod 0 -> bit 0; value 2.0: xor = 0x7ff0000000000000 ^ ... computed below.
        let b = encode(&[(1000, 1.0), (2000, 1.0), (3000, 1.0)]);
        assert_eq!(
            b,
            vec![
                0x00, 0x03, 0xd0, 0x0f, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0xe8, 0x07, 0x00
            ]
        );
        // 1.0 -> 2.0: xor = 0x3ff0.. ^ 0x4000.. = 0x7ff0000000000000: lead 1, trail 52,
        // sig 11. Bits: 1 1 00001 001011 11111111111 = 24 bits after the dod bit.
        let b = encode(&[(0, 1.0), (15, 1.0), (30, 2.0)]);
        // header 0003, t0 varint 00, v 3ff0.., delta 0f, then bits:
        // value(1.0==1.0): 0 | dod 0 | 1 1 00001 001011 11111111111
        // = 0 0 1 1 0 0 0 0 | 1 0 0 1 0 1 1 1 | 1 1 1 1 1 1 1 1 | 1 1 (pad 000000)
        assert_eq!(
            b,
            vec![
                0x00, 0x03, 0x00, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0x0f, 0x30, 0x97, 0xff, 0xc0
            ]
        );
    }

    /// A chunk written by the reference `promtool tsdb create-blocks-from openmetrics`
    /// (Prometheus 3.5.3), read raw from its `chunks/000001`.
    #[test]
    fn matches_promtool_chunk_bytes() {
        let hex = "0010d0dbc9fdf9623ff00000000000009875309bffd8001c07c007bffec11c104502f98001\
                   9080a817ce1d4c3715a30ff03f890327ef9db27715a6fe56e2b395d64739270f7f905555\
                   55555555e173187759fc60430115600e71695440005da5ab1001f780000000000783d461\
                   fe0c2b70fe17c79ac8";
        let expected: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let ts = [
            1699999201000i64,
            1699999216000,
            1699999231000,
            1699999246001,
            1699999261000,
            1699999276000,
            1699999306000,
            1699999321000,
            1699999321001,
            1699999326001,
            1699999426001,
            1699999441001,
            1699999456001,
            1699999656001,
            1699999671001,
            1700000671001,
        ];
        let vs = [
            1.0,
            1.0,
            2.5,
            -3.25,
            1e10,
            0.0,
            0.0,
            123456.789,
            1.0 / 3.0,
            42.0,
            42.0,
            -0.0,
            7.0,
            7.5,
            8.0,
            1e-300,
        ];
        let samples: Vec<(i64, f64)> = ts.iter().copied().zip(vs.iter().copied()).collect();
        assert_eq!(encode(&samples), expected);
        assert_bits_eq(&decode_all(&expected).unwrap(), &samples);
    }

    #[test]
    fn stale_nan_round_trips_bit_exactly() {
        let stale = f64::from_bits(storeapi::STALE_NAN_BITS);
        let s = vec![
            (1, 1.0),
            (2, stale),
            (3, f64::NAN),
            (4, stale),
            (5, -0.0),
            (6, f64::INFINITY),
        ];
        assert_bits_eq(&decode_all(&encode(&s)).unwrap(), &s);
    }

    #[test]
    fn dod_bucket_boundaries() {
        let mut s = vec![(0i64, 0.0), (100, 1.0)];
        let mut t = 100i64;
        let mut d = 100i64;
        for dod in [
            0i64,
            1,
            -1,
            8192,
            -8191,
            8193,
            -8192,
            65536,
            -65535,
            65537,
            -65536,
            524288,
            -524287,
            524289,
            -524288,
            1 << 40,
            -(1 << 39),
        ] {
            d += dod;
            t += d;
            s.push((t, dod as f64));
        }
        assert_bits_eq(&decode_all(&encode(&s)).unwrap(), &s);
    }

    #[test]
    fn reopen_and_append_matches_single_pass() {
        let s: Vec<(i64, f64)> = (0..50)
            .map(|i| (i * 15_000 + i % 3, (i * i) as f64))
            .collect();
        let full = encode(&s);
        for cut in 0..s.len() {
            let mut c = XorChunk::from_bytes(&encode(&s[..cut])).unwrap();
            for &(t, v) in &s[cut..] {
                c.append(t, v).unwrap();
            }
            assert_eq!(c.bytes(), &full[..], "cut at {cut}");
        }
    }

    /// `len` pseudo-random bytes from an xorshift state.
    fn random_bytes(seed: &mut u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                *seed as u8
            })
            .collect()
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for len in 0..200 {
            let buf = random_bytes(&mut seed, len);
            let _ = decode_all(&buf);
            let _ = XorChunk::from_bytes(&buf);
        }
    }

    fn sample_strategy() -> impl Strategy<Value = Vec<(i64, f64)>> {
        let value = prop_oneof![
            any::<f64>(),
            (-1000i64..1000).prop_map(|x| x as f64),
            Just(f64::from_bits(storeapi::STALE_NAN_BITS)),
            any::<u64>().prop_map(f64::from_bits),
        ];
        let step = prop_oneof![
            Just(15_000i64),
            0i64..5,
            14_990i64..15_010,
            0i64..1_000_000,
            0i64..(1 << 40),
        ];
        (any::<i32>(), prop::collection::vec((step, value), 0..300)).prop_map(|(start, v)| {
            let mut t = start as i64;
            v.into_iter()
                .map(|(d, v)| {
                    t += d;
                    (t, v)
                })
                .collect()
        })
    }

    /// A reference decoder reading one bit at a time, straight from the format: the
    /// samples, then `None` if the data ended or was invalid before the header's count.
    fn reference_decode(data: &[u8]) -> (Vec<(i64, u64)>, Option<()>) {
        let mut pos = 16usize;
        let bit = |pos: &mut usize| -> Option<u64> {
            let b = data.get(*pos / 8)?;
            let x = (b >> (7 - *pos % 8)) & 1;
            *pos += 1;
            Some(x as u64)
        };
        let bits = |pos: &mut usize, n: u32| -> Option<u64> {
            let mut x = 0u64;
            for _ in 0..n {
                x = (x << 1) | bit(pos)?;
            }
            Some(x)
        };
        let uvarint = |pos: &mut usize| -> Option<u64> {
            let mut x = 0u64;
            for i in 0..10 {
                let b = bits(pos, 8)?;
                if b < 0x80 {
                    if i == 9 && b > 1 {
                        return None;
                    }
                    return Some(x | (b << (7 * i)));
                }
                x |= (b & 0x7f) << (7 * i);
            }
            None
        };
        let mut out = Vec::new();
        if data.len() < 2 {
            return (out, None);
        }
        let total = u16::from_be_bytes([data[0], data[1]]) as usize;
        let (mut t, mut v, mut delta, mut lead, mut trail) = (0i64, 0u64, 0i64, 0xffu32, 0u32);
        let mut value = |pos: &mut usize, v: &mut u64| -> Option<()> {
            if bit(pos)? == 0 {
                return Some(());
            }
            if bit(pos)? == 1 {
                let l = bits(pos, 5)? as u32;
                let mut sig = bits(pos, 6)? as u32;
                if sig == 0 {
                    sig = 64;
                }
                if l + sig > 64 {
                    return None;
                }
                lead = l;
                trail = 64 - l - sig;
            } else if lead + trail > 64 {
                return None;
            }
            let sig = 64 - lead - trail;
            let x = bits(pos, sig)?;
            if trail < 64 {
                *v ^= x << trail;
            }
            Some(())
        };
        for i in 0..total {
            let ok = (|| -> Option<()> {
                match i {
                    0 => {
                        let ux = uvarint(&mut pos)?;
                        t = ((ux >> 1) as i64) ^ -((ux & 1) as i64);
                        v = bits(&mut pos, 64)?;
                    }
                    1 => {
                        delta = uvarint(&mut pos)? as i64;
                        t = t.wrapping_add(delta);
                        value(&mut pos, &mut v)?;
                    }
                    _ => {
                        let mut ones = 0;
                        while ones < 4 && bit(&mut pos)? == 1 {
                            ones += 1;
                        }
                        let dod = match ones {
                            0 => 0,
                            4 => bits(&mut pos, 64)? as i64,
                            _ => {
                                let sz = [0, 14, 17, 20][ones];
                                let b = bits(&mut pos, sz)?;
                                if b > (1 << (sz - 1)) {
                                    b as i64 - (1i64 << sz)
                                } else {
                                    b as i64
                                }
                            }
                        };
                        delta = delta.wrapping_add(dod);
                        t = t.wrapping_add(delta);
                        value(&mut pos, &mut v)?;
                    }
                }
                Some(())
            })();
            if ok.is_none() {
                return (out, None);
            }
            out.push((t, v));
        }
        (out, Some(()))
    }

    /// Our decoder in the reference's shape.
    fn our_decode(data: &[u8]) -> (Vec<(i64, u64)>, Option<()>) {
        let Ok(it) = XorIterator::new(data) else {
            return (Vec::new(), None);
        };
        let mut out = Vec::new();
        for s in it {
            match s {
                Ok((t, v)) => out.push((t, v.to_bits())),
                Err(_) => return (out, None),
            }
        }
        (out, Some(()))
    }

    /// The loop decoder in the reference's shape.
    fn loop_decode(data: &[u8]) -> (Vec<(i64, u64)>, Option<()>) {
        let mut out = Vec::new();
        let r = for_each_sample(data, |t, v| {
            out.push((t, v.to_bits()));
            ControlFlow::Continue(())
        });
        (out, r.ok())
    }

    #[test]
    fn loop_decoder_stops_when_told() {
        let samples: Vec<(i64, f64)> = (0..100).map(|i| (i * 15_000, i as f64)).collect();
        let b = encode(&samples);
        let mut seen = Vec::new();
        for_each_sample(&b, |t, _| {
            seen.push(t);
            if t >= 30_000 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert_eq!(seen, vec![0, 15_000, 30_000]);
    }

    #[test]
    fn equals_reference_decoder_on_garbage() {
        let mut seed = 0x0bad_cafe_1234_5678u64;
        for len in 0..600 {
            let mut buf = random_bytes(&mut seed, len);
            // A plausible count, so decoding goes past the header.
            if len >= 2 {
                buf[0] = 0;
                buf[1] = (seed % 200) as u8;
            }
            assert_eq!(our_decode(&buf), reference_decode(&buf), "{buf:?}");
            assert_eq!(loop_decode(&buf), reference_decode(&buf), "{buf:?}");
        }
    }

    proptest! {
        #[test]
        fn equals_reference_decoder(samples in sample_strategy(), cut in any::<usize>(), flip in any::<usize>()) {
            let b = encode(&samples);
            prop_assert_eq!(our_decode(&b), reference_decode(&b));
            prop_assert_eq!(loop_decode(&b), reference_decode(&b));
            let mut b = b;
            if !b.is_empty() {
                let i = flip % b.len();
                b[i] ^= 1 << (flip % 8);
                let c = cut % (b.len() + 1);
                prop_assert_eq!(our_decode(&b[..c]), reference_decode(&b[..c]));
                prop_assert_eq!(loop_decode(&b[..c]), reference_decode(&b[..c]));
            }
        }

        #[test]
        fn round_trip(samples in sample_strategy()) {
            let b = encode(&samples);
            let got = decode_all(&b).unwrap();
            prop_assert_eq!(got.len(), samples.len());
            for (x, y) in got.iter().zip(&samples) {
                prop_assert_eq!(x.0, y.0);
                prop_assert_eq!(x.1.to_bits(), y.1.to_bits());
            }
        }

        #[test]
        fn truncated_or_flipped_never_panics(samples in sample_strategy(), cut in any::<usize>(), flip in any::<usize>()) {
            let mut b = encode(&samples);
            if !b.is_empty() {
                let i = flip % b.len();
                b[i] ^= 1 << (flip % 8);
                let c = cut % (b.len() + 1);
                let _ = decode_all(&b[..c]);
                let _ = XorChunk::from_bytes(&b[..c]);
            }
        }
    }
}
