//! Telling WAL files apart before replay may repair them.
//!
//! Orrery writes Prometheus's WAL format ([`super::page`]). Its first format ("v1",
//! [`super::legacy`]) used the same file names with its own framing; such files are
//! replayed once and migrated. Repair (cutting off a damaged tail) is only allowed on
//! files positively identified as one of the two, so that nothing Orrery cannot read is
//! ever truncated:
//!
//! - a Prometheus segment starts with a full or first record fragment (type byte: full
//!   /first/middle/last in bits 0-2, snappy bit 3, zstd bit 4; big-endian u16 length;
//!   big-endian CRC32C of the fragment) whose checksum matches, or, if its first record
//!   is damaged, whose header is plausible (type, flags, a length that fits the page);
//! - a v1 segment starts with the magic frame [`segment_magic`] (or a prefix of it: cut
//!   short while being created), or, written before the magic existed, with a v1 frame of
//!   a valid length and CRC32C and a known record type;
//! - an empty or all-zero file holds nothing (zeros are padding in Prometheus's layout).
//!
//! Anything else is refused, untouched.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{MAX_RECORD_SIZE, UNKNOWN_REMEDY, WalError};
use crate::wal::record::legacy::{TYPE_CHUNKS, TYPE_SAMPLES, TYPE_SERIES};

/// Header of a v1 frame: `u32 LE length | u32 LE CRC32C`.
const FRAME_HEADER: usize = 8;

/// Payload of the first frame of every v1 segment and checkpoint file. Its
/// frame starts with the length byte 14, which is not a Prometheus record type (types
/// use the low 3 bits, 0-4, and 14 & 7 = 6), so no Prometheus segment starts like it.
pub const MAGIC_PAYLOAD: &[u8; 14] = b"\x7forrery-wal-v1";

/// Length of the magic frame.
pub const MAGIC_LEN: usize = FRAME_HEADER + MAGIC_PAYLOAD.len();

/// The complete magic frame (header + payload).
pub fn segment_magic() -> [u8; MAGIC_LEN] {
    let mut m = [0u8; MAGIC_LEN];
    m[..4].copy_from_slice(&(MAGIC_PAYLOAD.len() as u32).to_le_bytes());
    m[4..8].copy_from_slice(&crc32c::crc32c(MAGIC_PAYLOAD).to_le_bytes());
    m[8..].copy_from_slice(MAGIC_PAYLOAD);
    m
}

/// Prometheus's WAL page size.
const PROM_PAGE: usize = 32 * 1024;
/// Prometheus's record header: type, u16 length, u32 CRC.
const PROM_HEADER: usize = 7;

/// What a segment file is, judged from its first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentKind {
    /// Orrery's first format: starts with the magic frame, or is a prefix of it.
    Orrery,
    /// No magic, but the first frame is a valid Orrery frame (written before the magic).
    OrreryLegacy,
    /// Empty or all zeros: nothing to lose.
    Empty,
    /// Prometheus's page/record format (the string says what matched).
    Prometheus(String),
    /// Neither.
    Unknown(String),
}

/// Classifies a segment from (at least) its first 32 KiB.
pub fn classify(head: &[u8]) -> SegmentKind {
    let magic = segment_magic();
    if head.iter().all(|&b| b == 0) {
        return SegmentKind::Empty;
    }
    if head.len() >= MAGIC_LEN && head[..MAGIC_LEN] == magic {
        return SegmentKind::Orrery;
    }
    if head.len() < MAGIC_LEN && magic.starts_with(head) {
        return SegmentKind::Orrery;
    }
    if let Some(why) = prometheus_first_record(head) {
        return SegmentKind::Prometheus(why);
    }
    let legacy = legacy_first_frame(head);
    if legacy {
        return SegmentKind::OrreryLegacy;
    }
    if super::page::plausible_start(head) {
        return SegmentKind::Prometheus(
            "its first record fragment is damaged but its header is Prometheus's".into(),
        );
    }
    SegmentKind::Unknown(format!(
        "the first bytes ({}) are neither a Prometheus WAL record nor an Orrery v1 frame",
        hex_prefix(head, 8)
    ))
}

/// True when `head` starts with a valid v1 frame of a known record type.
fn legacy_first_frame(head: &[u8]) -> bool {
    if head.len() >= FRAME_HEADER {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let end = FRAME_HEADER.saturating_add(len as usize);
        if len > 0 && len <= MAX_RECORD_SIZE && head.len() >= end {
            let payload = &head[FRAME_HEADER..end];
            if crc32c::crc32c(payload) == crc
                && matches!(payload[0], TYPE_SERIES | TYPE_SAMPLES | TYPE_CHUNKS)
            {
                return true;
            }
        }
    }
    false
}

/// `Some(description)` when `head` starts with a Prometheus full or first record
/// fragment whose CRC32C matches.
fn prometheus_first_record(head: &[u8]) -> Option<String> {
    if head.len() < PROM_HEADER {
        return None;
    }
    let t = head[0];
    if t & 0xe0 != 0 || t & 0x18 == 0x18 {
        return None; // unknown flag bits, or snappy and zstd at once
    }
    let kind = match t & 0x07 {
        1 => "full",
        2 => "first",
        _ => return None,
    };
    let len = u16::from_be_bytes([head[1], head[2]]) as usize;
    let crc = u32::from_be_bytes([head[3], head[4], head[5], head[6]]);
    if len == 0 || PROM_HEADER + len > PROM_PAGE || head.len() < PROM_HEADER + len {
        return None;
    }
    if crc32c::crc32c(&head[PROM_HEADER..PROM_HEADER + len]) != crc {
        return None;
    }
    let comp = match t & 0x18 {
        0x08 => "snappy-compressed ",
        0x10 => "zstd-compressed ",
        _ => "",
    };
    Some(format!(
        "it starts with a Prometheus WAL record ({comp}{kind} fragment of {len} bytes with a matching CRC32C)"
    ))
}

fn hex_prefix(b: &[u8], n: usize) -> String {
    b.iter()
        .take(n)
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn read_head(p: &Path) -> Result<Vec<u8>, WalError> {
    let f = File::open(p).map_err(super::io_err(p))?;
    let mut buf = Vec::with_capacity(PROM_PAGE);
    f.take(PROM_PAGE as u64)
        .read_to_end(&mut buf)
        .map_err(super::io_err(p))?;
    Ok(buf)
}

fn is_segment_name(name: &str) -> bool {
    name.len() == 8 && name.bytes().all(|b| b.is_ascii_digit())
}

/// Checks that every segment under `wal_dir` (and its checkpoint directories, finished or
/// not) is in a format Orrery reads (Prometheus's, or Orrery's first). Reads only;
/// changes nothing. A missing directory is fine.
pub fn check_wal_dir(wal_dir: &Path) -> Result<(), WalError> {
    let rd = match fs::read_dir(wal_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(super::io_err(wal_dir)(e)),
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for e in rd {
        let e = e.map_err(super::io_err(wal_dir))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let p = e.path();
        if is_segment_name(name) && p.is_file() {
            files.push(p);
        } else if name.starts_with("checkpoint.") && p.is_dir() {
            for c in fs::read_dir(&p).map_err(super::io_err(&p))? {
                let c = c.map_err(super::io_err(&p))?;
                let cp = c.path();
                if c.file_name().to_str().is_some_and(is_segment_name) && cp.is_file() {
                    files.push(cp);
                }
            }
        }
    }
    files.sort();
    for p in files {
        let head = read_head(&p)?;
        let (what, remedy) = match classify(&head) {
            SegmentKind::Orrery
            | SegmentKind::OrreryLegacy
            | SegmentKind::Empty
            | SegmentKind::Prometheus(_) => continue,
            SegmentKind::Unknown(why) => (why, UNKNOWN_REMEDY),
        };
        return Err(WalError::Foreign {
            path: p,
            what,
            remedy,
        });
    }
    Ok(())
}

/// Checks a TSDB directory before anything in it is touched: its `wal/` must be in a
/// format Orrery reads.
///
/// A Prometheus head's `chunks_head/` is not read: Prometheus keeps every sample of its
/// head in the WAL as well (its WAL truncation checkpoints the samples at or after the
/// head's new minimum time, and head chunks are only dropped below that time), so
/// replaying the WAL restores the whole head. See [`crate::db`] for when it is removed.
pub fn check_db_dir(db_dir: &Path) -> Result<(), WalError> {
    check_wal_dir(&db_dir.join("wal"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a Prometheus WAL segment from the format description: records split into
    /// fragments that never cross a 32 KiB page, pages padded with zeros.
    pub(crate) fn prometheus_segment(records: &[(Vec<u8>, bool)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (rec, snappy) in records {
            let data = if *snappy {
                snap::raw::Encoder::new().compress_vec(rec).unwrap()
            } else {
                rec.clone()
            };
            let flag = if *snappy { 0x08 } else { 0 };
            let mut rest = &data[..];
            let mut first = true;
            loop {
                let in_page = out.len() % PROM_PAGE;
                if PROM_PAGE - in_page < PROM_HEADER + 1 {
                    out.resize(out.len() + PROM_PAGE - in_page, 0);
                    continue;
                }
                let room = PROM_PAGE - in_page - PROM_HEADER;
                let n = rest.len().min(room);
                let last = n == rest.len();
                let typ = match (first, last) {
                    (true, true) => 1,
                    (true, false) => 2,
                    (false, false) => 3,
                    (false, true) => 4,
                };
                out.push(typ | flag);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                out.extend_from_slice(&crc32c::crc32c(&rest[..n]).to_be_bytes());
                out.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                first = false;
                if last {
                    break;
                }
            }
        }
        out
    }

    /// A Prometheus series record (type 1: ref as BE u64, label count, uvarint strings)
    /// and a samples record (type 2: first ref and timestamp as BE u64, then varint deltas
    /// and BE float bits), as Prometheus's record encoder lays them out.
    pub(crate) fn prometheus_records(n: usize) -> Vec<(Vec<u8>, bool)> {
        use crate::wal::record::{put_uvarint, put_varint};
        let mut v = Vec::new();
        let mut series = vec![1u8];
        for r in 0..n as u64 {
            series.extend_from_slice(&(r + 1).to_be_bytes());
            put_uvarint(&mut series, 2);
            for (k, val) in [("__name__", "up"), ("instance", &format!("host-{r}")[..])] {
                put_uvarint(&mut series, k.len() as u64);
                series.extend_from_slice(k.as_bytes());
                put_uvarint(&mut series, val.len() as u64);
                series.extend_from_slice(val.as_bytes());
            }
        }
        v.push((series, true));
        for batch in 0..20i64 {
            let mut s = vec![2u8];
            let t0 = 1_700_000_000_000 + batch * 15_000;
            s.extend_from_slice(&1u64.to_be_bytes());
            s.extend_from_slice(&t0.to_be_bytes());
            for r in 0..n as i64 {
                put_varint(&mut s, r);
                put_varint(&mut s, 0);
                s.extend_from_slice(&(r as f64).to_bits().to_be_bytes());
            }
            v.push((s, true));
        }
        v
    }

    #[test]
    fn magic_frame_is_a_valid_frame_and_no_prometheus_type() {
        let m = segment_magic();
        assert_eq!(m.len(), MAGIC_LEN);
        assert_eq!(classify(&m), SegmentKind::Orrery);
        assert!(prometheus_first_record(&m).is_none());
        assert!(!matches!(m[0] & 7, 0..=4));
        for n in 1..MAGIC_LEN {
            assert_eq!(classify(&m[..n]), SegmentKind::Orrery, "prefix {n}");
        }
    }

    #[test]
    fn prometheus_segment_is_recognised() {
        let seg = prometheus_segment(&prometheus_records(3000));
        assert!(seg.len() > 2 * PROM_PAGE, "spans pages: {}", seg.len());
        match classify(&seg[..PROM_PAGE]) {
            SegmentKind::Prometheus(why) => assert!(why.contains("snappy"), "{why}"),
            k => panic!("classified as {k:?}"),
        }
        // Uncompressed, and a single small record.
        let seg = prometheus_segment(&[(vec![1, 0, 0, 0, 0, 0, 0, 0, 1, 0], false)]);
        assert!(matches!(classify(&seg), SegmentKind::Prometheus(_)));
    }

    #[test]
    fn legacy_orrery_and_garbage() {
        let payload = [TYPE_SAMPLES, 1, 2, 3];
        let mut buf = Vec::new();
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        buf.extend_from_slice(&payload);
        assert_eq!(classify(&buf), SegmentKind::OrreryLegacy);
        assert_eq!(classify(&[]), SegmentKind::Empty);
        assert_eq!(classify(&[0; 100]), SegmentKind::Empty);
        buf[9] ^= 1;
        assert!(matches!(classify(&buf), SegmentKind::Unknown(_)));
        assert!(matches!(
            classify(b"hello world, not a wal"),
            SegmentKind::Unknown(_)
        ));
    }

    /// A Prometheus segment whose first record is damaged is still Prometheus's (replay
    /// repairs it); it is not mistaken for an unknown file.
    #[test]
    fn damaged_prometheus_start_is_still_prometheus() {
        let mut seg = prometheus_segment(&prometheus_records(10));
        seg[20] ^= 0xff;
        assert!(matches!(classify(&seg), SegmentKind::Prometheus(_)));
    }

    #[test]
    fn check_db_dir_accepts_prometheus_and_v1_and_refuses_unknown() {
        let d = tempfile::tempdir().unwrap();
        assert!(check_db_dir(d.path()).is_ok(), "missing wal is fine");
        let wal = d.path().join("wal");
        fs::create_dir_all(&wal).unwrap();
        fs::write(wal.join("00000000"), segment_magic()).unwrap();
        assert!(check_db_dir(d.path()).is_ok());
        fs::write(
            wal.join("00000001"),
            prometheus_segment(&prometheus_records(10)),
        )
        .unwrap();
        let cp = wal.join("checkpoint.00000000");
        fs::create_dir_all(&cp).unwrap();
        fs::write(
            cp.join("00000000"),
            prometheus_segment(&prometheus_records(5)),
        )
        .unwrap();
        let ch = d.path().join("chunks_head");
        fs::create_dir_all(&ch).unwrap();
        fs::write(ch.join("000001"), [0x01, 0x30, 0xbc, 0x91]).unwrap();
        assert!(check_db_dir(d.path()).is_ok());
        fs::write(cp.join("00000001"), b"hello world, not a wal").unwrap();
        let e = check_db_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("checkpoint.00000000/00000001"), "{e}");
        assert!(e.contains("changed nothing"), "{e}");
    }
}
