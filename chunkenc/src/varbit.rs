//! Variable-bit-width integers and XOR-compressed floats, as Prometheus writes them
//! inside histogram chunks (`varbit.go`, `xorWrite`/`xorRead`).
//!
//! A varbit number is a unary-ish prefix (`0`, `10`, `110`, … `11111111`) choosing a
//! payload of 0, 3, 6, 9, 12, 18, 25, 56 or 64 bits. The buckets were tuned for the
//! delta-of-deltas of bucket counts, which are mostly tiny.

use crate::ChunkError;
#[cfg(test)]
use crate::bstream::BitWriter;
use crate::bstream::{BitReader, BitWrite};

/// Payload widths selected by prefixes `10`, `110`, … `11111110`.
const WIDTHS: [u32; 7] = [3, 6, 9, 12, 18, 25, 56];

/// Whether `x` fits an `nbits` two's-complement payload as Prometheus counts it: the
/// range is `-(2^(n-1) - 1) ..= 2^(n-1)` (one more on the positive side; the reader
/// maps raw values above `2^(n-1)` to negatives).
#[inline]
fn bit_range(x: i64, nbits: u32) -> bool {
    -((1i64 << (nbits - 1)) - 1) <= x && x <= (1i64 << (nbits - 1))
}

/// Writes a signed varbit integer.
pub(crate) fn put_varbit_int<W: BitWrite>(w: &mut W, v: i64) {
    if v == 0 {
        w.write_bit(false);
        return;
    }
    for (i, &n) in WIDTHS.iter().enumerate() {
        if bit_range(v, n) {
            // `i + 1` ones then a zero, and the payload: at most 8 + 56 bits, one write.
            let prefix_len = i as u32 + 2;
            let payload = v as u64 & ((1u64 << n) - 1);
            w.write_bits((((1u64 << prefix_len) - 2) << n) | payload, prefix_len + n);
            return;
        }
    }
    w.write_bits(0xff, 8);
    w.write_bits(v as u64, 64);
}

/// Writes an unsigned varbit integer.
pub(crate) fn put_varbit_uint<W: BitWrite>(w: &mut W, v: u64) {
    if v == 0 {
        w.write_bit(false);
        return;
    }
    let used = 64 - v.leading_zeros();
    for (i, &n) in WIDTHS.iter().enumerate() {
        if used <= n {
            let prefix_len = i as u32 + 2;
            w.write_bits((((1u64 << prefix_len) - 2) << n) | v, prefix_len + n);
            return;
        }
    }
    w.write_bits(0xff, 8);
    w.write_bits(v, 64);
}

/// Reads the prefix: the number of leading ones (0..=8), consuming the closing zero
/// if there is one (up to eight bits are looked at once).
#[inline]
fn read_prefix(r: &mut BitReader<'_>) -> Result<usize, ChunkError> {
    let avail = r.remaining().min(8);
    if avail == 0 {
        return Err(ChunkError::Corrupt("histogram chunk ends inside a sample"));
    }
    let byte = (r.peek_bits(avail as u32) << (8 - avail)) as u8;
    let ones = byte.leading_ones() as usize;
    if ones < avail {
        r.skip(ones + 1);
        Ok(ones)
    } else if avail == 8 {
        r.skip(8);
        Ok(8)
    } else {
        Err(ChunkError::Corrupt("histogram chunk ends inside a sample"))
    }
}

/// Reads a signed varbit integer.
pub(crate) fn read_varbit_int(r: &mut BitReader<'_>) -> Result<i64, ChunkError> {
    match read_prefix(r)? {
        0 => Ok(0),
        8 => Ok(r.read_bits(64)? as i64),
        ones => {
            let n = WIDTHS[ones - 1];
            let raw = r.read_bits(n)?;
            if raw > (1u64 << (n - 1)) {
                Ok(raw.wrapping_sub(1u64 << n) as i64)
            } else {
                Ok(raw as i64)
            }
        }
    }
}

/// Reads an unsigned varbit integer.
pub(crate) fn read_varbit_uint(r: &mut BitReader<'_>) -> Result<u64, ChunkError> {
    match read_prefix(r)? {
        0 => Ok(0),
        8 => r.read_bits(64),
        ones => r.read_bits(WIDTHS[ones - 1]),
    }
}

/// "No window yet": the first XOR of a field always writes its window explicitly.
pub(crate) const NO_WINDOW: u8 = 0xff;

/// XOR-encodes `new` against `cur`, updating the field's leading/trailing-zero window.
pub(crate) fn xor_write<W: BitWrite>(
    w: &mut W,
    new: f64,
    cur: f64,
    leading: &mut u8,
    trailing: &mut u8,
) {
    let delta = new.to_bits() ^ cur.to_bits();
    if delta == 0 {
        w.write_bit(false);
        return;
    }
    w.write_bit(true);
    let new_leading = (delta.leading_zeros() as u8).min(31);
    let new_trailing = delta.trailing_zeros() as u8;
    if *leading != NO_WINDOW && new_leading >= *leading && new_trailing >= *trailing {
        w.write_bit(false);
        let sig = 64 - *leading as u32 - *trailing as u32;
        w.write_bits(delta >> *trailing, sig);
        return;
    }
    *leading = new_leading;
    *trailing = new_trailing;
    w.write_bit(true);
    w.write_bits(new_leading as u64, 5);
    let sig = 64 - new_leading as u32 - new_trailing as u32;
    // 64 significant bits do not fit 6 bits; 0 never occurs otherwise, so it stands for 64.
    w.write_bits(sig as u64, 6);
    w.write_bits(delta >> new_trailing, sig);
}

/// Reads an XOR-encoded value into `value`, updating the field's window. A reader's
/// window starts at leading = trailing = 0 (as Prometheus's iterator's does).
pub(crate) fn xor_read(
    r: &mut BitReader<'_>,
    value: &mut f64,
    leading: &mut u8,
    trailing: &mut u8,
) -> Result<(), ChunkError> {
    if !r.read_bit()? {
        return Ok(());
    }
    let (lead, trail, sig) = if !r.read_bit()? {
        let sig = 64u32
            .checked_sub(*leading as u32 + *trailing as u32)
            .filter(|s| *s > 0)
            .ok_or(ChunkError::Corrupt("xor value reuses an empty window"))?;
        (*leading, *trailing, sig)
    } else {
        let lead = r.read_bits(5)? as u32;
        let mut sig = r.read_bits(6)? as u32;
        if sig == 0 {
            sig = 64;
        }
        let trail = 64u32
            .checked_sub(lead + sig)
            .ok_or(ChunkError::Corrupt("xor value window wider than 64 bits"))?;
        *leading = lead as u8;
        *trailing = trail as u8;
        (lead as u8, trail as u8, sig)
    };
    let _ = lead;
    let bits = r.read_bits(sig)?;
    let shifted = if trail >= 64 { 0 } else { bits << trail };
    *value = f64::from_bits(value.to_bits() ^ shifted);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits_of(f: impl FnOnce(&mut BitWriter)) -> (Vec<u8>, usize) {
        let mut w = BitWriter::with_header(0, 0);
        f(&mut w);
        let n = w.bit_len();
        (w.buf, n)
    }

    #[test]
    fn varbit_int_edges_round_trip_with_prometheus_widths() {
        // (value, encoded bit length) at each bucket edge, per varbit.go's comments.
        let cases: &[(i64, usize)] = &[
            (0, 1),
            (1, 5),
            (-3, 5),
            (4, 5),
            (-4, 9),
            (5, 9),
            (32, 9),
            (-31, 9),
            (33, 13),
            (-255, 13),
            (256, 13),
            (257, 17),
            (-2047, 17),
            (2048, 17),
            (2049, 24),
            (131072, 24),
            (-131071, 24),
            (131073, 32),
            (16777216, 32),
            (-16777215, 32),
            (16777217, 64),
            ((1 << 55), 64),
            (-((1 << 55) - 1), 64),
            ((1 << 55) + 1, 72),
            (i64::MIN, 72),
            (i64::MAX, 72),
        ];
        for &(v, len) in cases {
            let (buf, n) = bits_of(|w| put_varbit_int(w, v));
            assert_eq!(n, len, "bit length of {v}");
            let mut r = BitReader::new(&buf, 0);
            assert_eq!(read_varbit_int(&mut r).unwrap(), v);
            assert_eq!(r.pos(), len);
        }
    }

    #[test]
    fn varbit_uint_edges_round_trip() {
        let cases: &[(u64, usize)] = &[
            (0, 1),
            (7, 5),
            (8, 9),
            (63, 9),
            (64, 13),
            (511, 13),
            (4095, 17),
            (4096, 24),
            (262143, 24),
            (33554431, 32),
            (33554432, 64),
            ((1 << 56) - 1, 64),
            (1 << 56, 72),
            (u64::MAX, 72),
        ];
        for &(v, len) in cases {
            let (buf, n) = bits_of(|w| put_varbit_uint(w, v));
            assert_eq!(n, len, "bit length of {v}");
            let mut r = BitReader::new(&buf, 0);
            assert_eq!(read_varbit_uint(&mut r).unwrap(), v);
        }
    }

    #[test]
    fn varbit_hand_checked_bytes() {
        // 1 → `10` + `001`; -1 → `10` + `111`; 5 → `110` + `000101`, derived by hand
        // from putVarbitInt.
        let (buf, n) = bits_of(|w| {
            put_varbit_int(w, 1);
            put_varbit_int(w, -1);
            put_varbit_int(w, 5);
        });
        assert_eq!(n, 19);
        // 10001 10111 110000101 + 5 padding zeros
        assert_eq!(buf, vec![0b1000_1101, 0b1111_0000, 0b1010_0000]);
    }

    #[test]
    fn truncated_varbit_is_an_error() {
        let (buf, _) = bits_of(|w| put_varbit_int(w, 1 << 40));
        let mut r = BitReader::new(&buf[..3], 0);
        assert!(read_varbit_int(&mut r).is_err());
    }

    #[test]
    fn xor_round_trip_keeps_nan_bits() {
        let vals = [
            0.0,
            1.5,
            1.5,
            -2.25,
            f64::from_bits(storeapi::STALE_NAN_BITS),
            1e300,
            3.0,
        ];
        let mut w = BitWriter::with_header(0, 0);
        let (mut cur, mut l, mut t) = (0.0f64, NO_WINDOW, 0u8);
        for v in vals {
            xor_write(&mut w, v, cur, &mut l, &mut t);
            cur = v;
        }
        let mut r = BitReader::new(&w.buf, 0);
        let (mut v, mut l, mut t) = (0.0f64, 0u8, 0u8);
        for want in vals {
            xor_read(&mut r, &mut v, &mut l, &mut t).unwrap();
            assert_eq!(v.to_bits(), want.to_bits());
        }
    }
}
