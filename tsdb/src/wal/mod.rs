//! Write-ahead log: segmented files of checksummed records, replay with repair, and
//! checkpoints.
//!
//! # Layout
//! `wal/00000000`, `wal/00000001`, … segment files (a new one is started when the current
//! one would exceed the segment size, 128 MiB by default, and on every open), and at most
//! one `wal/checkpoint.NNNNNNNN/00000000` holding the head's state as of the end of
//! segment `NNNNNNNN` (older segments are then deleted).
//!
//! Each record is framed as `u32 LE payload length | u32 LE CRC32C(payload) | payload`;
//! payloads are described in [`record`].
//!
//! # Durability guarantee
//! A commit writes its records with one `write` call before it returns, then:
//! - [`SyncPolicy::Always`]: `fdatasync`s the segment before returning. Concurrent
//!   committers share fsyncs (group commit): a committer whose bytes were already covered
//!   by another's fsync returns without its own. **When a commit returns `Ok`, its samples
//!   survive a process crash and a machine crash (power loss).**
//! - [`SyncPolicy::Interval`]: a background thread `fdatasync`s every interval. A commit
//!   survives a process crash (SIGKILL) as soon as it returns (the bytes are in the page
//!   cache); a machine crash may lose up to one interval of acknowledged commits.
//! - [`SyncPolicy::Never`]: like `Interval` without the timer (the OS flushes eventually);
//!   survives process crashes only.
//!
//! Segments are always fsynced before the writer moves to the next one.
//!
//! # Replay and repair
//! Replay reads the checkpoint, then every later segment, in order. A record that is cut
//! short at the end of the last segment (a torn write) is cut off and counted
//! (`tsdb_wal_torn_tails`). Any other damage — a bad checksum or an impossible length in
//! the middle of a segment, a record that does not decode — is repaired by truncating
//! the segment at the last good record and deleting the segments after it; this is logged
//! and counted (`tsdb_wal_corruptions_repaired`), and opening proceeds. Replay never fails
//! because of the contents of the files, so a damaged WAL cannot cause a crash loop.

pub mod record;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// Default segment size (Prometheus's).
pub const DEFAULT_SEGMENT_SIZE: u64 = 128 * 1024 * 1024;

/// Largest record payload accepted when reading (anything larger is corruption).
pub const MAX_RECORD_SIZE: u32 = 512 * 1024 * 1024;

const FRAME_HEADER: usize = 8;

/// When the WAL calls `fdatasync`. See the module documentation for the guarantees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Before every commit returns (with group commit across concurrent committers).
    Always,
    /// From a background thread at this interval.
    Interval(Duration),
    /// Only when a segment is complete.
    Never,
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("WAL writer is closed")]
    Closed,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Starts a frame in `buf`: reserves the header. Write the payload after it, then call
/// [`finish_frame`] with the returned offset.
#[inline]
pub fn start_frame(buf: &mut Vec<u8>) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_HEADER]);
    at
}

/// Fills in the header of the frame started at `at` (payload = the rest of `buf`).
#[inline]
pub fn finish_frame(buf: &mut [u8], at: usize) {
    let payload = &buf[at + FRAME_HEADER..];
    let len = payload.len() as u32;
    let crc = crc32c::crc32c(payload);
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Removes a frame started at `at` whose payload turned out empty.
#[inline]
pub fn abandon_frame_if_empty(buf: &mut Vec<u8>, at: usize, min_payload: usize) -> bool {
    if buf.len() - at - FRAME_HEADER <= min_payload {
        buf.truncate(at);
        true
    } else {
        false
    }
}

fn segment_name(n: u64) -> String {
    format!("{n:08}")
}

fn checkpoint_name(n: u64) -> String {
    format!("checkpoint.{n:08}")
}

/// Lists segment numbers in `dir`, sorted.
fn list_segments(dir: &Path) -> Result<Vec<u64>, WalError> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() == 8
            && name.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = name.parse::<u64>()
        {
            v.push(n);
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// Finds the newest complete checkpoint; deletes leftover temporary ones.
fn find_checkpoint(dir: &Path) -> Result<Option<u64>, WalError> {
    let mut best = None;
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix("checkpoint.") else {
            continue;
        };
        if rest.ends_with(".tmp") {
            let p = e.path();
            tracing::info!(path = %p.display(), "removing incomplete WAL checkpoint");
            fs::remove_dir_all(&p).map_err(io_err(&p))?;
            continue;
        }
        if let Ok(n) = rest.parse::<u64>() {
            best = best.max(Some(n));
        }
    }
    Ok(best)
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// What replay found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub checkpoint: Option<u64>,
    pub segments: usize,
    pub records: u64,
    pub torn_tails: u64,
    pub corruptions_repaired: u64,
    pub bytes_truncated: u64,
}

/// How a segment's contents ended.
enum ScanEnd {
    Clean,
    /// Bad data at this offset; `torn` when it looks like an interrupted final write.
    Bad {
        at: usize,
        torn: bool,
        why: String,
    },
}

/// Calls `f` for each valid record payload in `data`; stops at the first bad frame or a
/// payload that `f` refuses.
fn scan(
    data: &[u8],
    is_last: bool,
    f: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    records: &mut u64,
) -> ScanEnd {
    let mut off = 0usize;
    while off < data.len() {
        let rest = &data[off..];
        if rest.len() < FRAME_HEADER {
            return ScanEnd::Bad {
                at: off,
                torn: is_last,
                why: "partial record header".into(),
            };
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len == 0 || len > MAX_RECORD_SIZE {
            // A zero-filled tail (the file system extended the file but the data never
            // landed) is a torn write too.
            let zeros = rest.iter().all(|&b| b == 0);
            return ScanEnd::Bad {
                at: off,
                torn: is_last && zeros,
                why: format!("impossible record length {len}"),
            };
        }
        let end = FRAME_HEADER + len as usize;
        if rest.len() < end {
            return ScanEnd::Bad {
                at: off,
                torn: is_last,
                why: "record extends past the end of the segment".into(),
            };
        }
        let payload = &rest[FRAME_HEADER..end];
        if crc32c::crc32c(payload) != crc {
            return ScanEnd::Bad {
                at: off,
                torn: is_last && rest.len() == end,
                why: "checksum mismatch".into(),
            };
        }
        if let Err(why) = f(payload) {
            return ScanEnd::Bad {
                at: off,
                torn: false,
                why: format!("undecodable record: {why}"),
            };
        }
        *records += 1;
        off += end;
    }
    ScanEnd::Clean
}

fn truncate_file(path: &Path, len: u64) -> Result<(), WalError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    f.set_len(len).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Replays the WAL in `dir` (checkpoint first, then segments), repairing damage as the
/// module documentation describes. `f` gets each record payload; returning `Err` marks
/// the record as corrupt. Returns the report and the number of the last segment seen.
pub fn replay(
    dir: &Path,
    metrics: &Metrics,
    f: &mut dyn FnMut(&[u8]) -> Result<(), String>,
) -> Result<(ReplayReport, Option<u64>), WalError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut report = ReplayReport::default();
    let cp = find_checkpoint(dir)?;
    report.checkpoint = cp;
    if let Some(n) = cp {
        let cdir = dir.join(checkpoint_name(n));
        for s in list_segments(&cdir)? {
            let p = cdir.join(segment_name(s));
            replay_file(&p, false, &mut report, metrics, f)?;
        }
    }
    let segs = list_segments(dir)?;
    let mut last = cp;
    let mut deleting = false;
    for (i, &s) in segs.iter().enumerate() {
        let p = dir.join(segment_name(s));
        if cp.is_some_and(|c| s <= c) || deleting {
            // Covered by the checkpoint (a crash before their deletion), or after a repaired
            // corruption.
            fs::remove_file(&p).map_err(io_err(&p))?;
            continue;
        }
        last = last.max(Some(s));
        report.segments += 1;
        let clean = replay_file(&p, i + 1 == segs.len(), &mut report, metrics, f)?;
        if !clean {
            deleting = true;
        }
    }
    Ok((report, last))
}

/// Replays one file; returns false when it had mid-file corruption (later files must go).
fn replay_file(
    p: &Path,
    is_last: bool,
    report: &mut ReplayReport,
    metrics: &Metrics,
    f: &mut dyn FnMut(&[u8]) -> Result<(), String>,
) -> Result<bool, WalError> {
    let data = fs::read(p).map_err(io_err(p))?;
    match scan(&data, is_last, f, &mut report.records) {
        ScanEnd::Clean => Ok(true),
        ScanEnd::Bad { at, torn, why } => {
            let cut = (data.len() - at) as u64;
            report.bytes_truncated += cut;
            if torn {
                tracing::warn!(file = %p.display(), offset = at, bytes = cut, %why,
                    "cutting off torn WAL tail record");
                report.torn_tails += 1;
                metrics.wal_torn_tails.inc();
            } else {
                tracing::error!(file = %p.display(), offset = at, bytes = cut, %why,
                    "WAL corruption: truncating to the last good record and dropping later segments");
                report.corruptions_repaired += 1;
                metrics.wal_corruptions_repaired.inc();
            }
            truncate_file(p, at as u64)?;
            Ok(torn)
        }
    }
}

struct Writer {
    file: Arc<File>,
    seg: u64,
    seg_len: u64,
    /// Logical bytes written since open (across segments).
    pos: u64,
}

/// The WAL writer.
pub struct Wal {
    dir: PathBuf,
    writer: Mutex<Writer>,
    sync_lock: Mutex<()>,
    synced: AtomicU64,
    policy: SyncPolicy,
    segment_size: u64,
    metrics: Metrics,
    closed: AtomicBool,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("policy", &self.policy)
            .finish()
    }
}

fn create_segment(dir: &Path, n: u64) -> Result<File, WalError> {
    let p = dir.join(segment_name(n));
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&p)
        .map_err(io_err(&p))?;
    sync_dir(dir)?;
    Ok(f)
}

impl Wal {
    /// Opens a writer on a new segment after `last_segment` (from [`replay`]).
    pub fn create(
        dir: &Path,
        last_segment: Option<u64>,
        policy: SyncPolicy,
        segment_size: u64,
        metrics: Metrics,
    ) -> Result<Arc<Wal>, WalError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let seg = last_segment.map_or(0, |n| n + 1);
        let file = create_segment(dir, seg)?;
        let wal = Arc::new(Wal {
            dir: dir.to_path_buf(),
            writer: Mutex::new(Writer {
                file: Arc::new(file),
                seg,
                seg_len: 0,
                pos: 0,
            }),
            sync_lock: Mutex::new(()),
            synced: AtomicU64::new(0),
            policy,
            segment_size: segment_size.max(1024),
            metrics,
            closed: AtomicBool::new(false),
        });
        if let SyncPolicy::Interval(d) = policy {
            let weak = Arc::downgrade(&wal);
            std::thread::Builder::new()
                .name("wal-sync".into())
                .spawn(move || interval_syncer(weak, d))
                .map_err(io_err(dir))?;
        }
        Ok(wal)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn policy(&self) -> SyncPolicy {
        self.policy
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes complete frames (one `write` call). Returns the logical end position, to be
    /// passed to [`Wal::sync_to`]. Callers serialize writes that must stay ordered.
    pub fn write(&self, frames: &[u8]) -> Result<u64, WalError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(WalError::Closed);
        }
        let mut w = self.lock_writer();
        if w.seg_len > 0 && w.seg_len + frames.len() as u64 > self.segment_size {
            self.rotate(&mut w)?;
        }
        let p = self.dir.join(segment_name(w.seg));
        (&*w.file).write_all(frames).map_err(io_err(&p))?;
        w.seg_len += frames.len() as u64;
        w.pos += frames.len() as u64;
        self.metrics.wal_bytes_written.inc_by(frames.len() as u64);
        Ok(w.pos)
    }

    /// Syncs the finished segment and starts the next one.
    fn rotate(&self, w: &mut Writer) -> Result<(), WalError> {
        let start = Instant::now();
        let p = self.dir.join(segment_name(w.seg));
        w.file.sync_data().map_err(io_err(&p))?;
        self.metrics
            .wal_fsync_duration
            .observe(start.elapsed().as_secs_f64());
        self.synced.fetch_max(w.pos, Ordering::AcqRel);
        let next = w.seg + 1;
        w.file = Arc::new(create_segment(&self.dir, next)?);
        w.seg = next;
        w.seg_len = 0;
        Ok(())
    }

    /// Called after [`Wal::write`]: makes the write durable if the policy says so.
    pub fn commit_sync(&self, pos: u64) -> Result<(), WalError> {
        match self.policy {
            SyncPolicy::Always => self.sync_to(pos),
            _ => Ok(()),
        }
    }

    /// Ensures everything up to logical position `pos` is fsynced (group commit).
    pub fn sync_to(&self, pos: u64) -> Result<(), WalError> {
        if self.synced.load(Ordering::Acquire) >= pos {
            return Ok(());
        }
        let _g = self.sync_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.synced.load(Ordering::Acquire) >= pos {
            return Ok(());
        }
        let (file, target, seg) = {
            let w = self.lock_writer();
            (w.file.clone(), w.pos, w.seg)
        };
        let start = Instant::now();
        file.sync_data()
            .map_err(io_err(&self.dir.join(segment_name(seg))))?;
        self.metrics
            .wal_fsync_duration
            .observe(start.elapsed().as_secs_f64());
        self.synced.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    /// Fsyncs everything written so far.
    pub fn sync(&self) -> Result<(), WalError> {
        let pos = self.lock_writer().pos;
        self.sync_to(pos)
    }

    /// Starts a new segment; returns the number of the last segment before it. Everything
    /// written before this call is in segments ≤ the returned number.
    pub fn cut_segment(&self) -> Result<u64, WalError> {
        let mut w = self.lock_writer();
        let last = w.seg;
        self.rotate(&mut w)?;
        Ok(last)
    }

    /// Writes a checkpoint for segments ≤ `upto`: `fill` writes complete frames into the
    /// buffer it gets (it is called repeatedly until it returns false, so a large state can
    /// be written in pieces). Then deletes segments ≤ `upto` and older checkpoints.
    pub fn checkpoint(
        &self,
        upto: u64,
        fill: &mut dyn FnMut(&mut Vec<u8>) -> bool,
    ) -> Result<(), WalError> {
        let final_dir = self.dir.join(checkpoint_name(upto));
        let tmp = self.dir.join(format!("{}.tmp", checkpoint_name(upto)));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let fp = tmp.join(segment_name(0));
        let mut file = File::create(&fp).map_err(io_err(&fp))?;
        let mut buf = Vec::with_capacity(1 << 20);
        loop {
            buf.clear();
            let more = fill(&mut buf);
            file.write_all(&buf).map_err(io_err(&fp))?;
            if !more {
                break;
            }
        }
        file.sync_all().map_err(io_err(&fp))?;
        drop(file);
        sync_dir(&tmp)?;
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir).map_err(io_err(&final_dir))?;
        }
        fs::rename(&tmp, &final_dir).map_err(io_err(&tmp))?;
        sync_dir(&self.dir)?;
        // The checkpoint is in place: older segments and checkpoints are redundant.
        for s in list_segments(&self.dir)? {
            if s <= upto {
                let p = self.dir.join(segment_name(s));
                fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
        for e in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let e = e.map_err(io_err(&self.dir))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(n) = name
                .strip_prefix("checkpoint.")
                .and_then(|r| r.parse::<u64>().ok())
                && n < upto
            {
                let p = e.path();
                fs::remove_dir_all(&p).map_err(io_err(&p))?;
            }
        }
        self.metrics.wal_checkpoints.inc();
        Ok(())
    }

    /// Fsyncs and refuses further writes.
    pub fn close(&self) -> Result<(), WalError> {
        let r = self.sync();
        self.closed.store(true, Ordering::Release);
        r
    }
}

fn interval_syncer(weak: Weak<Wal>, every: Duration) {
    loop {
        std::thread::sleep(every);
        let Some(wal) = weak.upgrade() else { return };
        if wal.closed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = wal.sync() {
            tracing::error!(error = %e, "periodic WAL fsync failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(payloads: &[Vec<u8>]) -> Vec<u8> {
        let mut buf = Vec::new();
        for p in payloads {
            let at = start_frame(&mut buf);
            buf.extend_from_slice(p);
            finish_frame(&mut buf, at);
        }
        buf
    }

    fn read_all(dir: &Path) -> (Vec<Vec<u8>>, ReplayReport) {
        let mut got = Vec::new();
        let (rep, _) = replay(dir, &Metrics::default(), &mut |p| {
            got.push(p.to_vec());
            Ok(())
        })
        .unwrap();
        (got, rep)
    }

    #[test]
    fn write_rotate_checkpoint_replay() {
        let d = tempfile::tempdir().unwrap();
        let m = Metrics::default();
        let wal = Wal::create(d.path(), None, SyncPolicy::Always, 1024, m).unwrap();
        let payloads: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 100]).collect();
        for p in &payloads {
            let pos = wal.write(&frames(std::slice::from_ref(p))).unwrap();
            wal.commit_sync(pos).unwrap();
        }
        assert!(list_segments(d.path()).unwrap().len() > 5);
        let (got, rep) = read_all(d.path());
        assert_eq!(got, payloads);
        assert_eq!(rep.torn_tails + rep.corruptions_repaired, 0);

        let upto = wal.cut_segment().unwrap();
        wal.checkpoint(upto, &mut |buf| {
            buf.extend_from_slice(&frames(&[b"state".to_vec()]));
            false
        })
        .unwrap();
        let pos = wal.write(&frames(&[b"after".to_vec()])).unwrap();
        wal.sync_to(pos).unwrap();
        let (got, rep) = read_all(d.path());
        assert_eq!(got, vec![b"state".to_vec(), b"after".to_vec()]);
        assert_eq!(rep.checkpoint, Some(upto));
        assert!(list_segments(d.path()).unwrap().iter().all(|&s| s > upto));
    }

    #[test]
    fn mid_segment_corruption_is_repaired_once() {
        let d = tempfile::tempdir().unwrap();
        let wal = Wal::create(
            d.path(),
            None,
            SyncPolicy::Never,
            1 << 20,
            Metrics::default(),
        )
        .unwrap();
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 10]).collect();
        wal.write(&frames(&payloads)).unwrap();
        wal.cut_segment().unwrap();
        wal.write(&frames(&[b"later".to_vec()])).unwrap();
        wal.close().unwrap();
        // Flip a byte inside the 4th record of segment 0.
        let p = d.path().join(segment_name(0));
        let mut data = fs::read(&p).unwrap();
        data[3 * 18 + 10] ^= 0xff;
        fs::write(&p, &data).unwrap();
        let m = Metrics::default();
        let mut got = vec![];
        let (rep, last) = replay(d.path(), &m, &mut |p| {
            got.push(p.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(got, payloads[..3].to_vec());
        assert_eq!(rep.corruptions_repaired, 1);
        assert_eq!(m.wal_corruptions_repaired.get(), 1);
        assert_eq!(last, Some(0));
        // Second open: clean.
        let (got2, rep2) = read_all(d.path());
        assert_eq!(got2, payloads[..3].to_vec());
        assert_eq!(rep2.corruptions_repaired + rep2.torn_tails, 0);
    }

    proptest! {
        /// Records written then read back equal; any truncation of the last segment yields
        /// exactly the complete records before the cut, and counts a torn tail iff the cut
        /// fell inside a record.
        #[test]
        fn truncated_tail_yields_exact_prefix(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..200), 1..40),
            cut_frac in 0.0f64..=1.0,
        ) {
            let d = tempfile::tempdir().unwrap();
            let wal = Wal::create(d.path(), None, SyncPolicy::Never, 1 << 30, Metrics::default()).unwrap();
            let mut ends = vec![];
            for p in &payloads {
                ends.push(wal.write(&frames(std::slice::from_ref(p))).unwrap());
            }
            wal.close().unwrap();
            let total = *ends.last().unwrap();
            let cut = ((total as f64) * cut_frac) as u64;
            let f = OpenOptions::new().write(true).open(d.path().join(segment_name(0))).unwrap();
            f.set_len(cut).unwrap();
            drop(f);
            let (got, rep) = read_all(d.path());
            let complete = ends.iter().filter(|&&e| e <= cut).count();
            prop_assert_eq!(&got[..], &payloads[..complete]);
            let inside = !ends.contains(&cut) && cut != 0;
            prop_assert_eq!(rep.torn_tails, inside as u64);
            prop_assert_eq!(rep.corruptions_repaired, 0);
        }
    }
}
