//! Prometheus's WAL segment layout (`tsdb/wlog`), the format of every segment and
//! checkpoint file Orrery writes, so that Prometheus, Thanos Receive and `promtool` read
//! Orrery's WAL and Orrery reads theirs.
//!
//! A segment is a sequence of 32 KiB pages. A record is stored as one or more fragments,
//! none crossing a page boundary; each fragment has a 7-byte header:
//! `type byte | u16 BE length | u32 BE CRC32-Castagnoli of the fragment`. The type byte's
//! low 3 bits say full (1), first (2), middle (3) or last (4) fragment; bit 3 marks a
//! snappy-compressed record, bit 4 a zstd-compressed one. A zero type byte (and every byte
//! after it to the end of the page) is padding: a page with fewer than 7 bytes left is
//! padded, and so may be the rest of a page at the end of a segment. A segment may end
//! anywhere (Prometheus's reader treats a short last page as padded).
//!
//! Orrery writes records snappy-compressed when that makes them smaller (as Prometheus
//! does with `--storage.tsdb.wal-compression`, its default) or uncompressed when
//! compression is off, and reads uncompressed, snappy and zstd records (Prometheus writes
//! zstd when started with `--storage.tsdb.wal-compression-type=zstd`).

use super::Scan;

/// Page size (Prometheus's `pageSize`).
pub const PAGE: usize = 32 * 1024;
/// Fragment header size (Prometheus's `recordHeaderSize`).
pub const HEADER: usize = 7;

const SNAPPY: u8 = 1 << 3;
const ZSTD: u8 = 1 << 4;
const TYPE_MASK: u8 = SNAPPY - 1;

const FULL: u8 = 1;
const FIRST: u8 = 2;
const MIDDLE: u8 = 3;
const LAST: u8 = 4;

/// Appends `payload` as a record to `out`, whose first byte lands at segment offset
/// `base`: splits it into fragments that fit the pages and pads a page that has no room
/// for another header. `snappy`: the payload is snappy-compressed (every fragment's type
/// byte says so, as Prometheus writes it).
#[inline]
pub fn put_record(out: &mut Vec<u8>, base: u64, payload: &[u8], snappy: bool) {
    let flag = if snappy { SNAPPY } else { 0 };
    let mut rest = payload;
    let mut first = true;
    loop {
        let off = ((base + out.len() as u64) % PAGE as u64) as usize;
        let room = PAGE - off;
        if room < HEADER {
            out.resize(out.len() + room, 0);
            continue;
        }
        let n = rest.len().min(room - HEADER);
        let last = n == rest.len();
        let typ = match (first, last) {
            (true, true) => FULL,
            (true, false) => FIRST,
            (false, false) => MIDDLE,
            (false, true) => LAST,
        };
        let (part, tail) = rest.split_at(n);
        out.push(typ | flag);
        out.extend_from_slice(&(n as u16).to_be_bytes());
        out.extend_from_slice(&crc32c::crc32c(part).to_be_bytes());
        out.extend_from_slice(part);
        rest = tail;
        first = false;
        if last {
            return;
        }
    }
}

/// Bytes `put_record` appends for a payload of `len` bytes at offset `base`: used to
/// decide whether a batch still fits the current segment.
pub fn framed_len(base: u64, len: usize) -> usize {
    let mut pos = base as usize;
    let start = pos;
    let mut rest = len;
    loop {
        let room = PAGE - pos % PAGE;
        if room < HEADER {
            pos += room;
            continue;
        }
        let n = rest.min(room - HEADER);
        pos += HEADER + n;
        rest -= n;
        if rest == 0 {
            return pos - start;
        }
    }
}

/// One fragment header at the start of `b`, if the bytes hold one that is complete,
/// fits its page (`page_off` is its offset in the page) and whose checksum matches.
fn fragment(b: &[u8], page_off: usize) -> Result<(u8, &[u8]), (String, bool)> {
    if b.len() < HEADER {
        return Err(("partial record header".into(), true));
    }
    let t = b[0];
    if t & !(TYPE_MASK | SNAPPY | ZSTD) != 0 || t & (SNAPPY | ZSTD) == SNAPPY | ZSTD {
        return Err((format!("invalid record type byte {t:#04x}"), false));
    }
    if !(FULL..=LAST).contains(&(t & TYPE_MASK)) {
        return Err((format!("invalid record type byte {t:#04x}"), false));
    }
    let len = u16::from_be_bytes([b[1], b[2]]) as usize;
    if page_off + HEADER + len > PAGE {
        return Err((
            format!("record fragment of {len} bytes crosses a page"),
            false,
        ));
    }
    if b.len() < HEADER + len {
        return Err(("record extends past the end of the segment".into(), true));
    }
    let part = &b[HEADER..HEADER + len];
    let crc = u32::from_be_bytes([b[3], b[4], b[5], b[6]]);
    if crc32c::crc32c(part) != crc {
        return Err(("checksum mismatch".into(), b.len() == HEADER + len));
    }
    Ok((t, part))
}

/// The offset of the next plausible record start at or after `from`: a full or first
/// fragment whose checksum matches (a chance match is ~2^-32 per candidate). The
/// checksummed bytes are budgeted so a large garbage region cannot make replay quadratic.
fn resync(data: &[u8], from: usize, budget: &mut usize) -> Option<usize> {
    let mut o = from;
    while o + HEADER < data.len() {
        let t = data[o];
        let len = u16::from_be_bytes([data[o + 1], data[o + 2]]) as usize;
        // Every record has at least its type byte: an empty one (whose checksum is 0)
        // is a run of zero bytes after a 1 or 2, common inside records.
        if matches!(t & TYPE_MASK, FULL | FIRST) && t & !(TYPE_MASK | SNAPPY | ZSTD) == 0 && len > 0
        {
            let end = o + HEADER + len;
            // Cheap structure checks before the checksum: a first fragment fills its
            // page (the writer only splits a record when the page is full); what follows
            // a full fragment in its page is padding or another record's start.
            let shaped = match t & TYPE_MASK {
                FIRST => end.is_multiple_of(PAGE),
                _ => {
                    end.is_multiple_of(PAGE)
                        || end >= data.len()
                        || data[end] == 0
                        || (matches!(data[end] & TYPE_MASK, FULL | FIRST)
                            && data[end] & !(TYPE_MASK | SNAPPY | ZSTD) == 0)
                }
            };
            if shaped && o % PAGE + HEADER + len <= PAGE && end <= data.len() {
                if *budget < len {
                    return None;
                }
                *budget -= len;
                if fragment(&data[o..], o % PAGE).is_ok() {
                    return Some(o);
                }
            }
        }
        o += 1;
    }
    None
}

/// A zstd frame (Prometheus's `--storage.tsdb.wal-compression-type=zstd`), decoded with a
/// bound on the output so a corrupt or hostile frame cannot claim unbounded memory.
fn decompress_zstd(rec: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    use std::io::Read;
    out.clear();
    let dec = ruzstd::decoding::StreamingDecoder::new(rec).map_err(|e| format!("zstd: {e}"))?;
    dec.take(MAX_DECOMPRESSED as u64 + 1)
        .read_to_end(out)
        .map_err(|e| format!("zstd: {e}"))?;
    if out.len() > MAX_DECOMPRESSED {
        return Err(format!(
            "zstd record decompresses to over {MAX_DECOMPRESSED} bytes"
        ));
    }
    Ok(())
}

/// Largest decompressed record accepted (anything larger is corruption).
const MAX_DECOMPRESSED: usize = super::MAX_RECORD_SIZE as usize;

fn decompress(t: u8, rec: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    if t & ZSTD != 0 {
        return decompress_zstd(rec, out);
    }
    let n = snap::raw::decompress_len(rec).map_err(|e| format!("snappy: {e}"))?;
    if n > MAX_DECOMPRESSED {
        return Err(format!(
            "snappy record decompresses to {n} bytes, over {MAX_DECOMPRESSED}"
        ));
    }
    out.resize(n, 0);
    snap::raw::Decoder::new()
        .decompress(rec, out)
        .map_err(|e| format!("snappy: {e}"))?;
    Ok(())
}

/// Calls `f` for each record in a segment in Prometheus's layout, skipping padding and
/// damaged regions (a damaged region starts at the first fragment of the record it
/// broke). A record `f` refuses is reported as damaged and skipped.
pub(crate) fn scan(
    data: &[u8],
    f: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    records: &mut u64,
) -> Scan {
    scan_from(data, 0, false, f, records)
}

/// [`scan`] starting at offset `start` of `data`, which must be the first byte of a
/// record, of padding, or of the end. `data` must start on a page boundary of its
/// file: offsets within a page are taken relative to it. Used to read only what was
/// appended to a segment since an earlier read (following a live WAL).
///
/// `live`: the file is still being written, so a record that runs past the end of
/// `data` is the end (reported as the tail, to be read again when complete), not
/// damage to skip: what follows it is not written yet.
pub(crate) fn scan_from(
    data: &[u8],
    start: usize,
    live: bool,
    f: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    records: &mut u64,
) -> Scan {
    let mut out = Scan::default();
    let mut budget = data.len().saturating_mul(8).saturating_add(4 << 20);
    let mut rec: Vec<u8> = Vec::new();
    let mut plain: Vec<u8> = Vec::new();
    // Offset of the first fragment of the record being assembled.
    let mut rec_start: Option<usize> = None;
    let mut off = start;
    let mut damage =
        |off: usize, rec_start: Option<usize>, why: String, torn: bool, out: &mut Scan| {
            let start = rec_start.unwrap_or(off);
            if live && torn {
                out.tail = Some((start, torn, why));
                return None;
            }
            match resync(data, off + 1, &mut budget) {
                Some(next) => {
                    out.skipped.push((start, next, why));
                    Some(next)
                }
                None => {
                    out.tail = Some((start, torn, why));
                    None
                }
            }
        };
    while off < data.len() {
        let page_off = off % PAGE;
        if data[off] == 0 {
            // Padding to the end of the page (or of the file).
            let end = (off - page_off + PAGE).min(data.len());
            if let Some(nz) = data[off..end].iter().position(|&b| b != 0) {
                let at = off + nz;
                let why = "unexpected non-zero byte in padded page".to_string();
                rec.clear();
                match damage(at, rec_start.take(), why, false, &mut out) {
                    Some(next) => {
                        off = next;
                        continue;
                    }
                    None => break,
                }
            }
            off = end;
            continue;
        }
        let (t, part) = match fragment(&data[off..], page_off) {
            Ok(x) => x,
            Err((why, torn)) => match damage(off, rec_start.take(), why, torn, &mut out) {
                Some(next) => {
                    rec.clear();
                    off = next;
                    continue;
                }
                None => break,
            },
        };
        let kind = t & TYPE_MASK;
        let expect_start = rec_start.is_none();
        if expect_start != matches!(kind, FULL | FIRST) {
            let why = format!(
                "record fragment of type {kind} where a {} was expected",
                if expect_start {
                    "record start"
                } else {
                    "continuation"
                }
            );
            // The fragment itself is intact: a new record starting here is kept.
            let start = rec_start.take().unwrap_or(off);
            rec.clear();
            if matches!(kind, FULL | FIRST) {
                out.skipped.push((start, off, why));
                continue;
            }
            match damage(off, Some(start), why, false, &mut out) {
                Some(next) => {
                    off = next;
                    continue;
                }
                None => break,
            }
        }
        if kind == FIRST {
            rec_start = Some(off);
        }
        let start = rec_start.unwrap_or(off);
        off += HEADER + part.len();
        let payload: &[u8] = if kind == FULL && t & (SNAPPY | ZSTD) == 0 {
            part
        } else {
            rec.extend_from_slice(part);
            if matches!(kind, FIRST | MIDDLE) {
                continue;
            }
            if t & (SNAPPY | ZSTD) != 0 {
                if let Err(why) = decompress(t, &rec, &mut plain) {
                    out.skipped
                        .push((start, off, format!("undecodable record: {why}")));
                    rec.clear();
                    rec_start = None;
                    continue;
                }
                &plain
            } else {
                &rec
            }
        };
        match f(payload) {
            Ok(()) => *records += 1,
            Err(why) => out
                .skipped
                .push((start, off, format!("undecodable record: {why}"))),
        }
        rec.clear();
        rec_start = None;
    }
    if out.tail.is_none()
        && let Some(start) = rec_start
    {
        out.tail = Some((start, true, "last record is torn".into()));
    }
    out
}

/// True when `head` (the first bytes of a file) starts like a Prometheus segment: a full
/// or first fragment header with a plausible length, checksum not checked (used to tell a
/// damaged Prometheus-format segment from an unknown file).
/// A file shorter than a header is judged by what it has (a write cut short after its
/// first bytes).
pub fn plausible_start(head: &[u8]) -> bool {
    let Some(&t) = head.first() else {
        return false;
    };
    let type_ok = matches!(t & TYPE_MASK, FULL | FIRST)
        && t & !(TYPE_MASK | SNAPPY | ZSTD) == 0
        && t & (SNAPPY | ZSTD) != SNAPPY | ZSTD;
    if head.len() < 3 {
        return type_ok;
    }
    let len = u16::from_be_bytes([head[1], head[2]]) as usize;
    type_ok && len > 0 && HEADER + len <= PAGE
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn records(data: &[u8]) -> (Vec<Vec<u8>>, Scan) {
        let mut got = vec![];
        let mut n = 0;
        let s = scan(
            data,
            &mut |p| {
                got.push(p.to_vec());
                Ok(())
            },
            &mut n,
        );
        (got, s)
    }

    #[test]
    fn layout_matches_prometheus_builder() {
        // The independent builder in `ident::tests` follows the format description.
        let recs: Vec<Vec<u8>> = (0..50u32)
            .map(|i| vec![(i % 7) as u8 + 1; 100 + (i as usize * 997) % 70_000])
            .collect();
        let mut mine = Vec::new();
        for r in &recs {
            put_record(&mut mine, 0, r, false);
        }
        let theirs = crate::wal::ident::tests::prometheus_segment(
            &recs.iter().map(|r| (r.clone(), false)).collect::<Vec<_>>(),
        );
        assert_eq!(mine, theirs);
        let (got, s) = records(&mine);
        assert_eq!(got, recs);
        assert!(s.skipped.is_empty() && s.tail.is_none());
    }

    #[test]
    fn snappy_records_are_read() {
        let recs = crate::wal::ident::tests::prometheus_records(500);
        let seg = crate::wal::ident::tests::prometheus_segment(&recs);
        let (got, s) = records(&seg);
        assert_eq!(got, recs.into_iter().map(|r| r.0).collect::<Vec<_>>());
        assert!(s.skipped.is_empty() && s.tail.is_none());
    }

    /// Records as Prometheus writes them with zstd: each a zstd frame, every fragment's
    /// type byte carrying bit 4. A frame whose bytes were damaged (checksums re-made, as
    /// if written that way) is an error for that record only.
    #[test]
    fn zstd_records_are_read() {
        let recs: Vec<Vec<u8>> = (0..5u8)
            .map(|i| {
                let mut r = vec![2u8];
                r.extend((0..60_000u32).map(|k| (k / 97) as u8 ^ i));
                r
            })
            .collect();
        let mut seg = Vec::new();
        for (i, r) in recs.iter().enumerate() {
            let mut z = ruzstd::encoding::compress_to_vec(
                &r[..],
                ruzstd::encoding::CompressionLevel::Fastest,
            );
            assert!(z.len() < r.len() / 4);
            if i == 2 {
                let n = z.len();
                z[n / 2] ^= 0xff;
                z.truncate(n - 3);
            }
            let at = seg.len();
            put_record(&mut seg, 0, &z, false);
            // Set the zstd bit on every fragment of this record (re-checksummed).
            let mut o = at;
            while o < seg.len() {
                if seg[o] == 0 {
                    o += PAGE - o % PAGE;
                    continue;
                }
                seg[o] |= ZSTD;
                o += HEADER + u16::from_be_bytes([seg[o + 1], seg[o + 2]]) as usize;
            }
        }
        let (got, s) = records(&seg);
        let mut want = recs.clone();
        want.remove(2);
        assert_eq!(got, want);
        assert_eq!(s.skipped.len(), 1, "{:?}", s.skipped);
        assert!(s.tail.is_none());
    }

    #[test]
    fn corrupt_middle_fragment_skips_the_record_only() {
        let recs: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i + 1; 40_000]).collect();
        let mut seg = Vec::new();
        for r in &recs {
            put_record(&mut seg, 0, r, false);
        }
        // Flip a byte in the second page: inside record 0's last fragment.
        seg[PAGE + 100] ^= 0xff;
        let (got, s) = records(&seg);
        assert_eq!(got, recs[1..].to_vec());
        assert_eq!(s.skipped.len(), 1);
        assert_eq!(s.skipped[0].0, 0);
        assert!(s.tail.is_none());
    }

    proptest! {
        /// Any batch at any starting offset frames to `framed_len` bytes, never crosses a
        /// page with a fragment, and reads back (after the zero prefix) unchanged; any
        /// cut yields exactly the complete records before it.
        #[test]
        fn framing_round_trips_and_cuts_yield_prefixes(
            lens in prop::collection::vec(1usize..50_000, 1..12),
            cut_frac in 0.0f64..=1.0,
        ) {
            // Record 0 puts the others at arbitrary page offsets.
            let recs: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &l)| vec![i as u8 + 1; l]).collect();
            let base = 0u64;
            let mut buf = vec![];
            let mut ends = vec![];
            for r in &recs {
                let before = buf.len();
                let mut tmp = Vec::new();
                put_record(&mut tmp, before as u64, r, false);
                prop_assert_eq!(tmp.len(), framed_len(before as u64, r.len()));
                buf.extend_from_slice(&tmp);
                ends.push(buf.len());
            }
            let (got, s) = records(&buf);
            prop_assert_eq!(&got, &recs);
            prop_assert!(s.skipped.is_empty() && s.tail.is_none());
            let cut = base as usize + ((buf.len() - base as usize) as f64 * cut_frac) as usize;
            let (got, s) = records(&buf[..cut]);
            let complete = ends.iter().filter(|&&e| e <= cut).count();
            prop_assert_eq!(&got[..], &recs[..complete]);
            prop_assert!(s.skipped.is_empty());
            // A cut inside a record is a torn tail (a cut in padding is not).
            if let Some((_, torn, _)) = s.tail {
                prop_assert!(torn);
            }
        }

        #[test]
        fn garbage_never_panics(data in prop::collection::vec(any::<u8>(), 0..5000)) {
            let _ = records(&data);
        }
    }
}
