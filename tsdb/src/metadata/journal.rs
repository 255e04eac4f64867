//! The file that keeps a tenant's metric metadata across restarts.
//!
//! Metadata changes rarely (a sender repeats the same entries every minute, and a
//! repeat is not a change), so the store logs only changes: each is appended as one
//! checksummed record and synced before the write that carried it is answered. When the
//! file has grown to well over what it describes, it is rewritten from the store's
//! state into a new file that replaces it by rename.
//!
//! Layout: the 8-byte magic `ORRMETA1`, then records `be32 length, be32 CRC32C of the
//! payload, payload`; a payload is four uvarint-prefixed strings: family, type, help,
//! unit. Replay stops at the first record that is cut short or fails its checksum (a
//! write the crash interrupted) and truncates the file there, as Prometheus repairs
//! its WAL.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::block::encoding::{crc32c, put_uvarint_str, uvarint};

use super::Meta;

const MAGIC: &[u8; 8] = b"ORRMETA1";
/// Longest payload replay accepts: four strings at the store's longest limit would be
/// far less; anything larger is damage, not a record.
const MAX_RECORD: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("metadata journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata journal {path} does not start with Orrery's magic; moved it to {moved}")]
    Foreign { path: PathBuf, moved: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What replay read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// The records, oldest first.
    pub entries: Vec<(String, Meta)>,
    /// Bytes cut off the end (a record a crash interrupted, or damage).
    pub truncated: u64,
}

/// An open journal, positioned at its end.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Bytes in the file (all of them valid records after open).
    len: u64,
    sync: bool,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and reads its records. A file that is not
    /// a journal is moved aside (`*.foreign`), never overwritten, and an error says so.
    pub fn open(path: &Path, sync: bool) -> Result<(Journal, Replayed), JournalError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err(path))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io_err(path))?;
        let mut replayed = Replayed::default();
        let good = if data.len() < MAGIC.len() && MAGIC.starts_with(&data) {
            // A new file, or one whose first write (the magic) was cut short: nothing was
            // ever stored in it.
            file.set_len(0).map_err(io_err(path))?;
            file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
            file.write_all(MAGIC).map_err(io_err(path))?;
            if sync {
                file.sync_all().map_err(io_err(path))?;
                sync_parent(path)?;
            }
            MAGIC.len()
        } else if !data.starts_with(MAGIC) {
            drop(file);
            let moved = path.with_extension("foreign");
            std::fs::rename(path, &moved).map_err(io_err(path))?;
            return Err(JournalError::Foreign {
                path: path.to_path_buf(),
                moved,
            });
        } else {
            let (entries, good) = decode_records(&data[MAGIC.len()..]);
            replayed.entries = entries;
            MAGIC.len() + good
        };
        if good < data.len() {
            replayed.truncated = (data.len() - good) as u64;
            file.set_len(good as u64).map_err(io_err(path))?;
            if sync {
                file.sync_all().map_err(io_err(path))?;
            }
        }
        file.seek(SeekFrom::Start(good as u64))
            .map_err(io_err(path))?;
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
                len: good as u64,
                sync,
            },
            replayed,
        ))
    }

    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Appends `entries` as one write and syncs it (when syncing). On an error the file
    /// may end in part of a record: the caller must [`Journal::rewrite`] before it
    /// appends again.
    pub fn append<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (&'a str, &'a Meta)>,
    ) -> Result<(), JournalError> {
        let mut buf = Vec::new();
        for (family, m) in entries {
            encode_record(&mut buf, family, m);
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(&buf).map_err(io_err(&self.path))?;
        if self.sync {
            self.file.sync_data().map_err(io_err(&self.path))?;
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Replaces the file with one holding exactly `entries` (written to a temporary file,
    /// synced, renamed over the journal). On an error the old file is still the journal
    /// unless the rename happened; either way the caller must rewrite again before it
    /// appends.
    pub fn rewrite<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (&'a str, &'a Meta)>,
    ) -> Result<(), JournalError> {
        let mut buf = MAGIC.to_vec();
        for (family, m) in entries {
            encode_record(&mut buf, family, m);
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&buf).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io_err(&self.path))?;
        sync_parent(&self.path)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        self.len = buf.len() as u64;
        Ok(())
    }
}

/// Syncs the directory holding `path`, so a new or renamed file's entry is durable.
fn sync_parent(path: &Path) -> Result<(), JournalError> {
    match path.parent() {
        Some(dir) => File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir)),
        None => Ok(()),
    }
}

/// The bytes one entry takes in the journal.
pub fn record_len(family: &str, m: &Meta) -> usize {
    let mut n = 8;
    for s in [family, &m.kind, &m.help, &m.unit] {
        n += crate::block::encoding::uvarint_len(s.len() as u64) + s.len();
    }
    n
}

fn encode_record(buf: &mut Vec<u8>, family: &str, m: &Meta) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 8]);
    for s in [family, &m.kind, &m.help, &m.unit] {
        put_uvarint_str(buf, s);
    }
    let payload_len = (buf.len() - start - 8) as u32;
    let crc = crc32c(&buf[start + 8..]);
    buf[start..start + 4].copy_from_slice(&payload_len.to_be_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

/// The records at the start of `b` up to the first damaged one, and the bytes they take.
fn decode_records(b: &[u8]) -> (Vec<(String, Meta)>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some((entry, n)) = decode_record(&b[pos..]) {
        out.push(entry);
        pos += n;
    }
    (out, pos)
}

fn decode_record(b: &[u8]) -> Option<((String, Meta), usize)> {
    let head = b.get(..8)?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if len > MAX_RECORD {
        return None;
    }
    let payload = b.get(8..8 + len)?;
    if crc32c(payload) != crc {
        return None;
    }
    let mut pos = 0;
    let mut strings: [String; 4] = Default::default();
    for s in &mut strings {
        let (n, k) = uvarint(&payload[pos..])?;
        pos += k;
        let n = usize::try_from(n).ok()?;
        let bytes = payload.get(pos..pos.checked_add(n)?)?;
        *s = std::str::from_utf8(bytes).ok()?.to_string();
        pos += n;
    }
    if pos != payload.len() {
        return None;
    }
    let [family, kind, help, unit] = strings;
    Some(((family, Meta { kind, help, unit }), 8 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kind: &str, help: &str, unit: &str) -> Meta {
        Meta {
            kind: kind.into(),
            help: help.into(),
            unit: unit.into(),
        }
    }

    fn entries() -> Vec<(String, Meta)> {
        vec![
            ("http_requests".into(), meta("counter", "Requests.", "")),
            (
                "lat".into(),
                meta("histogram", "Latency — ünïcode.", "seconds"),
            ),
            ("empty".into(), meta("gauge", "", "")),
        ]
    }

    #[test]
    fn appended_records_read_back_after_reopen_and_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metadata.log");
        let (mut j, r) = Journal::open(&p, true).unwrap();
        assert_eq!(r, Replayed::default());
        assert_eq!(j.len(), MAGIC.len() as u64);
        let e = entries();
        j.append(e.iter().map(|(f, m)| (f.as_str(), m))).unwrap();
        let want_len = 8 + e.iter().map(|(f, m)| record_len(f, m)).sum::<usize>();
        assert_eq!(j.len(), want_len as u64);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), want_len as u64);
        drop(j);
        let (mut j, r) = Journal::open(&p, true).unwrap();
        assert_eq!(r.entries, e);
        assert_eq!(r.truncated, 0);
        // A rewrite keeps only what it is given, and appends go after it.
        j.rewrite(e[1..2].iter().map(|(f, m)| (f.as_str(), m)))
            .unwrap();
        j.append(e[..1].iter().map(|(f, m)| (f.as_str(), m)))
            .unwrap();
        drop(j);
        let (_, r) = Journal::open(&p, false).unwrap();
        assert_eq!(r.entries, vec![e[1].clone(), e[0].clone()]);
        assert!(!dir.path().join("metadata.tmp").exists());
    }

    #[test]
    fn a_cut_or_damaged_tail_is_truncated_and_the_records_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metadata.log");
        let e = entries();
        let (mut j, _) = Journal::open(&p, false).unwrap();
        j.append(e.iter().map(|(f, m)| (f.as_str(), m))).unwrap();
        drop(j);
        let full = std::fs::read(&p).unwrap();
        let two = 8 + record_len(&e[0].0, &e[0].1) + record_len(&e[1].0, &e[1].1);
        // Every cut inside the third record keeps exactly the first two.
        for cut in two..full.len() {
            std::fs::write(&p, &full[..cut]).unwrap();
            let (j, r) = Journal::open(&p, false).unwrap();
            assert_eq!(r.entries, e[..2].to_vec(), "cut at {cut}");
            assert_eq!(r.truncated, (cut - two) as u64);
            assert_eq!(j.len(), two as u64);
            assert_eq!(std::fs::metadata(&p).unwrap().len(), two as u64);
        }
        // A flipped bit in the second record drops it and everything after.
        let one = 8 + record_len(&e[0].0, &e[0].1);
        for at in one..two {
            let mut bad = full.clone();
            bad[at] ^= 0x10;
            std::fs::write(&p, &bad).unwrap();
            let (_, r) = Journal::open(&p, false).unwrap();
            assert_eq!(r.entries, e[..1].to_vec(), "flip at {at}");
        }
        // A cut magic is a journal that never stored anything.
        std::fs::write(&p, &MAGIC[..3]).unwrap();
        let (j, r) = Journal::open(&p, false).unwrap();
        assert_eq!(r.entries, vec![]);
        assert_eq!(j.len(), MAGIC.len() as u64);
        assert_eq!(std::fs::read(&p).unwrap(), MAGIC);
    }

    #[test]
    fn a_foreign_file_is_moved_aside_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metadata.log");
        std::fs::write(&p, b"something else entirely").unwrap();
        match Journal::open(&p, false) {
            Err(JournalError::Foreign { moved, .. }) => {
                assert_eq!(std::fs::read(&moved).unwrap(), b"something else entirely");
            }
            other => panic!("expected Foreign, got {other:?}"),
        }
        assert!(!p.exists());
        let (_, r) = Journal::open(&p, false).unwrap();
        assert_eq!(r.entries, vec![]);
    }
}
