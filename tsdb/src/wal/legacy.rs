//! Orrery's first WAL format ("v1"), read once to migrate it: records framed as
//! `u32 LE payload length | u32 LE CRC32C(payload) | payload`, segments starting with a
//! magic frame ([`super::ident::segment_magic`]) or, before the magic existed, with a
//! valid frame. Nothing writes this format any more: a database that holds it is
//! replayed and then checkpointed in Prometheus's format, which deletes the old files.

use super::{MAX_RECORD_SIZE, Scan, ident};

const FRAME_HEADER: usize = 8;

/// The frame at the start of `rest`: `Ok((payload, frame length))`, or why it is not
/// one and whether it looks like an interrupted final write (only meaningful when
/// nothing valid follows).
fn frame_at(rest: &[u8]) -> Result<(&[u8], usize), (String, bool)> {
    if rest.len() < FRAME_HEADER {
        return Err(("partial record header".into(), true));
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len == 0 || len > MAX_RECORD_SIZE {
        // A zero-filled tail (the file system extended the file but the data never
        // landed) is a torn write too.
        let zeros = rest.iter().all(|&b| b == 0);
        return Err((format!("impossible record length {len}"), zeros));
    }
    let end = FRAME_HEADER + len as usize;
    if rest.len() < end {
        return Err(("record extends past the end of the segment".into(), true));
    }
    let payload = &rest[FRAME_HEADER..end];
    if crc32c::crc32c(payload) != crc {
        return Err(("checksum mismatch".into(), rest.len() == end));
    }
    Ok((payload, end))
}

/// The offset of the next valid record frame at or after `from`, if any. Used after
/// damage: a torn write left by an earlier failure may be followed by good records,
/// which must not be dropped. A candidate needs a plausible length, a known record type
/// and a matching CRC32C (a chance match is ~2^-32 per candidate); the checksummed
/// bytes are budgeted so that a large garbage region cannot make replay quadratic.
fn resync(data: &[u8], from: usize, budget: &mut usize) -> Option<usize> {
    use super::record::legacy::{TYPE_CHUNKS, TYPE_SAMPLES, TYPE_SERIES};
    let mut o = from;
    while o + FRAME_HEADER < data.len() {
        let len = u32::from_le_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]) as usize;
        let end = o + FRAME_HEADER + len;
        if len > 0
            && len <= MAX_RECORD_SIZE as usize
            && end <= data.len()
            && matches!(
                data[o + FRAME_HEADER],
                TYPE_SERIES | TYPE_SAMPLES | TYPE_CHUNKS
            )
        {
            if *budget < len {
                return None;
            }
            *budget -= len;
            let crc = u32::from_le_bytes([data[o + 4], data[o + 5], data[o + 6], data[o + 7]]);
            if crc32c::crc32c(&data[o + FRAME_HEADER..end]) == crc {
                return Some(o);
            }
        }
        o += 1;
    }
    None
}

/// Calls `f` for each valid record payload in `data`, skipping the segment magic and
/// damaged regions (see [`resync`]). A record `f` refuses is reported as damaged and
/// skipped.
pub(crate) fn scan(
    data: &[u8],
    f: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    records: &mut u64,
) -> Scan {
    let mut out = Scan::default();
    let mut budget = data.len().saturating_mul(4).saturating_add(1 << 20);
    let mut off = 0usize;
    while off < data.len() {
        match frame_at(&data[off..]) {
            Ok((payload, len)) => {
                if payload != ident::MAGIC_PAYLOAD {
                    match f(payload) {
                        Ok(()) => *records += 1,
                        Err(why) => {
                            out.skipped
                                .push((off, off + len, format!("undecodable record: {why}")))
                        }
                    }
                }
                off += len;
            }
            Err((why, torn)) => match resync(data, off + 1, &mut budget) {
                Some(next) => {
                    out.skipped.push((off, next, why));
                    off = next;
                }
                None => {
                    out.tail = Some((off, torn, why));
                    break;
                }
            },
        }
    }
    out
}
