//! Write-ahead log in Prometheus's format: segmented files of checksummed records,
//! replay with repair, and checkpoints. Prometheus, Thanos Receive and `promtool` read
//! Orrery's WAL, and Orrery replays theirs.
//!
//! # Layout
//! `wal/00000000`, `wal/00000001`, … segment files (a new one is started when the current
//! one would exceed the segment size, 128 MiB by default, and on every open), and at most
//! one `wal/checkpoint.NNNNNNNN/00000000` holding the head's state as of the end of
//! segment `NNNNNNNN` (older segments are then deleted). Segments and checkpoint files
//! use Prometheus's page layout ([`page`]: 32 KiB pages, records split into fragments
//! with a CRC32-Castagnoli each) and record encodings ([`record`]). Orrery's first
//! format ([`legacy`], [`ident`]) is still read, once: the database then writes a
//! checkpoint in the new format, which replaces those files.
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
//! # Write failures
//! A failed write (ENOSPC, EIO, a short write) is cut back to the end of the last
//! complete record before anything else is written (the writer writes at explicit
//! offsets, so a partial write moves nothing); if the cut fails, the segment is closed
//! and writing continues in a new one. The failed records are kept and written first by
//! the next write (laid out again for where they then land): their samples are in the
//! head already, and a client's retry of them finds duplicates there, so the retry must
//! not be acknowledged before they are in the log. Space for a new segment's first page is
//! reserved when it is created, so a full disk shows when the log is opened.
//!
//! # Replay and repair
//! Before anything is read or changed, every segment is checked to be in a format Orrery
//! reads ([`ident`]); an unidentifiable file stops the open with [`WalError::Foreign`]
//! and is left untouched. Replay then reads the checkpoint and every later segment, in
//! order. A record that is cut short at the end of the last segment (a torn write) is cut
//! off and counted (`tsdb_wal_torn_tails`), as Prometheus's repair does. Damage followed
//! by valid records — a bad checksum, an impossible length, fragments out of sequence, a
//! record that does not decode — is logged, counted (`tsdb_wal_corruptions_repaired`) and
//! skipped, and the valid records after it (found by their fragment header and checksum)
//! and in later segments are replayed. Here Orrery keeps more than Prometheus, which
//! drops everything after a corruption: nothing that may have been acknowledged is
//! dropped. Damage at the end of the last segment is cut off; elsewhere damaged bytes are
//! left on disk. Replay never fails because of the contents of a file it identified, so a
//! damaged WAL cannot cause a crash loop.

pub(crate) mod file;
pub mod ident;
mod legacy;
pub mod page;
pub mod record;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use file::SegFile;

/// Default segment size (Prometheus's).
pub const DEFAULT_SEGMENT_SIZE: u64 = 128 * 1024 * 1024;

/// Largest record payload accepted when reading (anything larger is corruption).
pub const MAX_RECORD_SIZE: u32 = 512 * 1024 * 1024;

/// Header of a caller's record frame: `u32 LE payload length` (see [`start_frame`]).
pub(crate) const FRAME_HEADER: usize = 4;

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
    /// The directory holds a file Orrery cannot identify as a WAL segment it reads.
    /// Repairing it would mean truncating data Orrery cannot read, so opening stops
    /// before anything is changed on disk.
    #[error(
        "{path} is not a write-ahead log segment Orrery can read: {what}. Orrery changed nothing in it and will not start on it. {remedy}"
    )]
    Foreign {
        path: PathBuf,
        what: String,
        remedy: &'static str,
    },
}

/// What to do about a file that is neither Prometheus's nor Orrery's first format.
const UNKNOWN_REMEDY: &str = "Its first bytes are neither a Prometheus WAL record nor an Orrery v1 frame, so it is not \
repaired (that would truncate data Orrery cannot read). Inspect it and move it out of the wal directory to \
start; its contents are then not replayed.";

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Starts a record in `buf`, a batch for [`Wal::write`]: reserves the length. Write the
/// payload after it, then call [`finish_frame`] with the returned offset. The writer lays
/// the records out in Prometheus's pages ([`page`]) when it knows where they land; a
/// batch that failed to reach the disk is kept in this form and laid out again.
#[inline]
pub fn start_frame(buf: &mut Vec<u8>) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_HEADER]);
    at
}

/// Fills in the length of the record started at `at` (payload = the rest of `buf`).
#[inline]
pub fn finish_frame(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at - FRAME_HEADER) as u32;
    buf[at..at + FRAME_HEADER].copy_from_slice(&len.to_le_bytes());
}

/// Snappy compression of records, reusing its buffers.
#[derive(Default)]
struct Compressor {
    encoder: Option<snap::raw::Encoder>,
    buf: Vec<u8>,
}

impl Compressor {
    /// `rec` compressed, if compression is on and makes it smaller (Prometheus's rule).
    fn compress(&mut self, rec: &[u8]) -> Option<&[u8]> {
        let enc = self.encoder.as_mut()?;
        if rec.is_empty() {
            return None;
        }
        self.buf.resize(snap::raw::max_compress_len(rec.len()), 0);
        let n = enc.compress(rec, &mut self.buf).ok()?;
        (n < rec.len()).then(|| &self.buf[..n])
    }
}

/// Lays out a batch of records made with [`start_frame`] in Prometheus's pages, the
/// first byte landing at segment offset `base`, compressing each record with `z`.
fn lay_out(out: &mut Vec<u8>, base: u64, batch: &[u8], z: &mut Compressor) {
    let mut i = 0usize;
    while i + FRAME_HEADER <= batch.len() {
        let n = u32::from_le_bytes([batch[i], batch[i + 1], batch[i + 2], batch[i + 3]]) as usize;
        let end = (i + FRAME_HEADER).saturating_add(n).min(batch.len());
        let rec = &batch[i + FRAME_HEADER..end];
        match z.compress(rec) {
            Some(c) => page::put_record(out, base, c, true),
            None => page::put_record(out, base, rec, false),
        }
        i = end;
    }
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
    /// Damaged regions found (in the middle of a file, or a damaged end that is not a
    /// torn tail). Valid records after them were replayed.
    pub corruptions_repaired: u64,
    /// Bytes cut off the end of the last segment.
    pub bytes_truncated: u64,
    /// Bytes of damaged regions skipped (left on disk).
    pub bytes_skipped: u64,
    /// Files in Orrery's first WAL format (replayed; the caller migrates them by
    /// writing a checkpoint, see [`legacy`]).
    pub legacy_files: usize,
}

/// Replay's callback: gets each record payload and the format of its file; `Err` marks
/// the record as damaged (skipped and reported).
pub type RecordFn<'a> = dyn FnMut(Format, &[u8]) -> Result<(), String> + 'a;

/// The format of a file a record came from: record payloads differ between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus's segment layout and record encodings ([`page`], [`record`]).
    Prometheus,
    /// Orrery's first format ([`legacy`], [`record::legacy`]).
    OrreryV1,
}

/// What one file held.
#[derive(Default)]
pub(crate) struct Scan {
    /// Damaged regions `[start, end)` followed by valid records, and why.
    pub(crate) skipped: Vec<(usize, usize, String)>,
    /// Damage at the end of the file with nothing valid after it: offset, whether it
    /// looks like an interrupted write, why.
    pub(crate) tail: Option<(usize, bool, String)>,
}

fn truncate_file(path: &Path, len: u64) -> Result<(), WalError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    f.set_len(len).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Replays the WAL in `dir` (checkpoint first, then segments) as the module
/// documentation describes. `f` gets each record payload; returning `Err` marks the
/// record as damaged (it is skipped and reported). Refuses (changing nothing) when a file
/// is not Orrery's (see [`ident`]). Returns the report and the number of the last
/// segment seen.
pub fn replay(
    dir: &Path,
    metrics: &Metrics,
    f: &mut RecordFn<'_>,
) -> Result<(ReplayReport, Option<u64>), WalError> {
    ident::check_wal_dir(dir)?;
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
    for (i, &s) in segs.iter().enumerate() {
        let p = dir.join(segment_name(s));
        if cp.is_some_and(|c| s <= c) {
            // Covered by the checkpoint (a crash before their deletion).
            fs::remove_file(&p).map_err(io_err(&p))?;
            continue;
        }
        last = last.max(Some(s));
        report.segments += 1;
        replay_file(&p, i + 1 == segs.len(), &mut report, metrics, f)?;
    }
    Ok((report, last))
}

/// Replays one file. Damage followed by valid records is reported and skipped (left on
/// disk); damage at the end of the last segment is cut off (nothing acknowledged can
/// follow it); damage at the end of an earlier file is reported and left alone.
fn replay_file(
    p: &Path,
    is_last: bool,
    report: &mut ReplayReport,
    metrics: &Metrics,
    f: &mut RecordFn<'_>,
) -> Result<(), WalError> {
    let data = fs::read(p).map_err(io_err(p))?;
    let head = &data[..data.len().min(page::PAGE)];
    let scan = match ident::classify(head) {
        ident::SegmentKind::Empty | ident::SegmentKind::Prometheus(_) => page::scan(
            &data,
            &mut |r| f(Format::Prometheus, r),
            &mut report.records,
        ),
        ident::SegmentKind::Orrery | ident::SegmentKind::OrreryLegacy => {
            report.legacy_files += 1;
            if data.len() < ident::MAGIC_LEN && ident::segment_magic().starts_with(&data) {
                return Ok(()); // created, never written
            }
            legacy::scan(&data, &mut |r| f(Format::OrreryV1, r), &mut report.records)
        }
        ident::SegmentKind::Unknown(what) => {
            return Err(WalError::Foreign {
                path: p.to_path_buf(),
                what,
                remedy: UNKNOWN_REMEDY,
            });
        }
    };
    for (from, to, why) in &scan.skipped {
        tracing::error!(file = %p.display(), offset = from, bytes = to - from, %why,
            "WAL damage: skipped a damaged region; the valid records after it were replayed");
        report.corruptions_repaired += 1;
        report.bytes_skipped += (to - from) as u64;
        metrics.wal_corruptions_repaired.inc();
    }
    if let Some((at, torn, why)) = scan.tail {
        let cut = (data.len() - at) as u64;
        if !is_last {
            tracing::error!(file = %p.display(), offset = at, bytes = cut, %why,
                "WAL damage at the end of a segment that is not the last one: skipped, later segments are replayed");
            report.corruptions_repaired += 1;
            report.bytes_skipped += cut;
            metrics.wal_corruptions_repaired.inc();
            return Ok(());
        }
        report.bytes_truncated += cut;
        if torn {
            tracing::warn!(file = %p.display(), offset = at, bytes = cut, %why,
                "cutting off torn WAL tail record");
            report.torn_tails += 1;
            metrics.wal_torn_tails.inc();
        } else {
            tracing::error!(file = %p.display(), offset = at, bytes = cut, %why,
                "WAL damage at the end of the last segment: cutting it off");
            report.corruptions_repaired += 1;
            metrics.wal_corruptions_repaired.inc();
        }
        truncate_file(p, at as u64)?;
    }
    Ok(())
}

struct Writer {
    /// `None` while segment `seg` could not be created (the disk was full when the WAL
    /// was opened): the next write tries again.
    file: Option<Arc<SegFile>>,
    seg: u64,
    /// Bytes of complete records (and padding) in the current segment: where the next
    /// write goes.
    seg_len: u64,
    /// Logical bytes written since open (across segments).
    pos: u64,
    /// A failed write left bytes past `seg_len` that could not be cut off: the segment
    /// takes no more records, the next write starts a new one.
    torn: bool,
    /// Records (as [`start_frame`] makes them) that failed to reach the log. Their
    /// samples are already in the head (a client's retry of them is a no-op duplicate
    /// there), so they are written before anything else and before any later commit is
    /// acknowledged.
    pending: Vec<u8>,
    /// The page layout of the batch being written (reused).
    scratch: Vec<u8>,
    /// Record compression (off unless [`Wal::set_compression`] turned it on).
    z: Compressor,
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
    /// Why the last write failed, while writes are failing (for `/-/ready`).
    failure: Mutex<Option<String>>,
    #[cfg(test)]
    faults: Option<file::faults::SharedPlan>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("policy", &self.policy)
            .finish()
    }
}

/// Creates segment `n` in `dir` (replacing a leftover of a failed earlier attempt) and
/// reserves space for its first page (see [`SegFile::reserve`]): an empty file can
/// often still be created on a full disk, and the log must say so when it is opened.
fn create_segment(
    dir: &Path,
    n: u64,
    #[cfg(test)] faults: Option<&file::faults::SharedPlan>,
) -> Result<SegFile, WalError> {
    let p = dir.join(segment_name(n));
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&p)
        .map_err(io_err(&p))?;
    #[cfg(test)]
    let f = match faults {
        Some(plan) => SegFile::Faulty(file::faults::FaultyFile {
            file: f,
            plan: plan.clone(),
        }),
        None => SegFile::Real(f),
    };
    #[cfg(not(test))]
    let f = SegFile::Real(f);
    f.reserve(page::PAGE as u64).map_err(io_err(&p))?;
    sync_dir(dir)?;
    Ok(f)
}

impl WalError {
    /// The file system is out of space (or quota): a condition that ends when space is
    /// freed, unlike a broken disk.
    pub fn is_out_of_space(&self) -> bool {
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        match self {
            WalError::Io { source, .. } => {
                matches!(source.raw_os_error(), Some(ENOSPC | EDQUOT))
                    || source.kind() == io::ErrorKind::StorageFull
            }
            _ => false,
        }
    }
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
        Self::create_inner(
            dir,
            last_segment,
            policy,
            segment_size,
            metrics,
            #[cfg(test)]
            None,
        )
    }

    /// As [`Wal::create`], with every segment written through a fault-injecting file.
    #[cfg(test)]
    pub(crate) fn create_with_faults(
        dir: &Path,
        last_segment: Option<u64>,
        segment_size: u64,
        metrics: Metrics,
        plan: file::faults::SharedPlan,
    ) -> Result<Arc<Wal>, WalError> {
        Self::create_inner(
            dir,
            last_segment,
            SyncPolicy::Never,
            segment_size,
            metrics,
            Some(plan),
        )
    }

    fn create_inner(
        dir: &Path,
        last_segment: Option<u64>,
        policy: SyncPolicy,
        segment_size: u64,
        metrics: Metrics,
        #[cfg(test)] faults: Option<file::faults::SharedPlan>,
    ) -> Result<Arc<Wal>, WalError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let seg = last_segment.map_or(0, |n| n + 1);
        // On a full disk the database still opens (its data stays readable and writes get
        // a clear error); any other failure to start a segment stops the open.
        let (file, failure) = match create_segment(
            dir,
            seg,
            #[cfg(test)]
            faults.as_ref(),
        ) {
            Ok(f) => (Some(Arc::new(f)), None),
            Err(e) if e.is_out_of_space() => {
                tracing::error!(error = %e,
                    "cannot start a WAL segment: the disk is full. Data stays readable; writes fail until there is space");
                metrics.wal_write_errors.inc();
                metrics.wal_write_failing.set(1);
                (None, Some(e.to_string()))
            }
            Err(e) => return Err(e),
        };
        let wal = Wal {
            dir: dir.to_path_buf(),
            writer: Mutex::new(Writer {
                file,
                seg,
                seg_len: 0,
                pos: 0,
                torn: false,
                pending: Vec::new(),
                scratch: Vec::new(),
                z: Compressor::default(),
            }),
            sync_lock: Mutex::new(()),
            synced: AtomicU64::new(0),
            policy,
            segment_size: segment_size.max(1024),
            metrics,
            closed: AtomicBool::new(false),
            failure: Mutex::new(failure),
            #[cfg(test)]
            faults,
        };
        let wal = Arc::new(wal);
        if let SyncPolicy::Interval(d) = policy {
            let weak = Arc::downgrade(&wal);
            std::thread::Builder::new()
                .name("wal-sync".into())
                .spawn(move || interval_syncer(weak, d))
                .map_err(io_err(dir))?;
        }
        Ok(wal)
    }

    fn create_segment(&self, n: u64) -> Result<SegFile, WalError> {
        create_segment(
            &self.dir,
            n,
            #[cfg(test)]
            self.faults.as_ref(),
        )
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment being written (tests swap in a fault-injecting writer after it).
    #[cfg(test)]
    pub(crate) fn current_segment(&self) -> u64 {
        self.lock_writer().seg
    }

    pub fn policy(&self) -> SyncPolicy {
        self.policy
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes complete frames (one `write` call). Returns the logical end position, to be
    /// passed to [`Wal::sync_to`]. Callers serialize writes that must stay ordered.
    ///
    /// Frames of an earlier failed write go first. When this fails, the segment is cut
    /// back to its last complete frame (or, if that is impossible, the next write starts
    /// a new segment) and `frames` are kept for the next write: replay never meets a
    /// torn record followed by acknowledged ones.
    pub fn write(&self, frames: &[u8]) -> Result<u64, WalError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(WalError::Closed);
        }
        let mut w = self.lock_writer();
        if w.pending.is_empty() {
            self.write_locked(&mut w, frames)
                .inspect_err(|_| w.pending = frames.to_vec())
        } else {
            let mut buf = std::mem::take(&mut w.pending);
            buf.extend_from_slice(frames);
            self.write_locked(&mut w, &buf)
                .inspect_err(|_| w.pending = buf)
        }
    }

    /// Writes the frames of earlier failed writes, if any; returns the position to sync
    /// to. Call before changing in-memory state for a new commit: while the disk is full
    /// this fails and the commit is refused before it touches anything.
    pub fn flush_pending(&self) -> Result<Option<u64>, WalError> {
        let mut w = self.lock_writer();
        if w.pending.is_empty() {
            return Ok(None);
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(WalError::Closed);
        }
        let buf = std::mem::take(&mut w.pending);
        match self.write_locked(&mut w, &buf) {
            Ok(p) => Ok(Some(p)),
            Err(e) => {
                w.pending = buf;
                Err(e)
            }
        }
    }

    /// Turns snappy compression of records on or off for what is written from now on
    /// (Prometheus's `--storage.tsdb.wal-compression`; a log may mix both, readers
    /// decide per record).
    pub fn set_compression(&self, on: bool) {
        let mut w = self.lock_writer();
        match (on, w.z.encoder.is_some()) {
            (true, false) => w.z.encoder = Some(snap::raw::Encoder::new()),
            (false, true) => w.z = Compressor::default(),
            _ => {}
        }
    }

    fn write_locked(&self, w: &mut Writer, frames: &[u8]) -> Result<u64, WalError> {
        let mut buf = std::mem::take(&mut w.scratch);
        let r = self.write_laid_out(w, frames, &mut buf);
        buf.clear();
        w.scratch = buf;
        r
    }

    fn write_laid_out(
        &self,
        w: &mut Writer,
        frames: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<u64, WalError> {
        buf.clear();
        lay_out(buf, w.seg_len, frames, &mut w.z);
        let seg = (w.file.is_some(), w.seg);
        let file = self
            .writable_file(w, buf.len())
            .inspect_err(|e| self.failed(e))?;
        if (w.file.is_some(), w.seg) != seg {
            // A new segment: the records land at another page offset.
            buf.clear();
            lay_out(buf, w.seg_len, frames, &mut w.z);
        }
        let frames = &buf[..];
        let p = self.dir.join(segment_name(w.seg));
        if let Err(e) = file.write_all_at(frames, w.seg_len) {
            // Part of the buffer may have landed: cut the segment back to its last
            // complete frame so the next write continues a clean log.
            if let Err(te) = file.set_len(w.seg_len) {
                tracing::error!(file = %p.display(), error = %te,
                    "cannot cut a failed WAL write back; continuing in a new segment");
                w.torn = true;
            }
            let e = io_err(&p)(e);
            self.failed(&e);
            return Err(e);
        }
        self.succeeded();
        w.seg_len += frames.len() as u64;
        w.pos += frames.len() as u64;
        self.metrics.wal_bytes_written.inc_by(frames.len() as u64);
        Ok(w.pos)
    }

    /// The segment file `len` more bytes go to: starts the segment that could not be
    /// created at open, or the next one when the current one is torn or full.
    fn writable_file(&self, w: &mut Writer, len: usize) -> Result<Arc<SegFile>, WalError> {
        match &w.file {
            None => {
                let f = Arc::new(self.create_segment(w.seg)?);
                tracing::info!(segment = w.seg, "WAL segment started");
                w.file = Some(f);
                w.seg_len = 0;
            }
            Some(_) if w.torn => self.rotate(w)?,
            Some(_) if w.seg_len > 0 && w.seg_len + len as u64 > self.segment_size => {
                self.rotate(w)?
            }
            Some(_) => {}
        }
        w.file.clone().ok_or(WalError::Closed)
    }

    /// Records a failed write: metrics, and the reason `/-/ready` reports.
    fn failed(&self, e: &WalError) {
        self.metrics.wal_write_errors.inc();
        self.metrics.wal_write_failing.set(1);
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
    }

    fn succeeded(&self) {
        self.metrics.wal_write_failing.set(0);
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = f.take() {
            tracing::info!(after = %why, "WAL writes succeed again");
        }
    }

    /// Why writes are failing (the last error), or `None` when the last write succeeded.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// While writes are failing: tries again to write what a failed write left pending,
    /// or to start the segment that could not be created, so that a log nobody writes to
    /// (a receiver taken out of its Service while unready) recovers once there is space.
    pub fn retry_failed(&self) -> Result<(), WalError> {
        if self.failure().is_none() || self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut w = self.lock_writer();
        if !w.pending.is_empty() {
            let buf = std::mem::take(&mut w.pending);
            return match self.write_locked(&mut w, &buf) {
                Ok(_) => Ok(()),
                Err(e) => {
                    w.pending = buf;
                    Err(e)
                }
            };
        }
        match self.writable_file(&mut w, 0) {
            Ok(_) => {
                self.succeeded();
                Ok(())
            }
            Err(e) => {
                self.failed(&e);
                Err(e)
            }
        }
    }

    /// Syncs the finished segment and starts the next one. A segment left torn by a
    /// failed write is closed as it is (its sync may fail too; what it holds was synced
    /// or not by the policy before the failure). Without a current segment (none could
    /// be created) the number is still advanced: `cut_segment` promised that later
    /// records go to a higher segment.
    fn rotate(&self, w: &mut Writer) -> Result<(), WalError> {
        let start = Instant::now();
        let p = self.dir.join(segment_name(w.seg));
        if let Some(file) = &w.file {
            match file.sync_data() {
                Ok(()) => {}
                Err(e) if w.torn => {
                    tracing::error!(file = %p.display(), error = %e, "fsync of a torn WAL segment failed")
                }
                Err(e) => return Err(io_err(&p)(e)),
            }
            self.metrics
                .wal_fsync_duration
                .observe(start.elapsed().as_secs_f64());
        }
        self.synced.fetch_max(w.pos, Ordering::AcqRel);
        let next = w.seg + 1;
        w.file = Some(Arc::new(self.create_segment(next)?));
        w.seg = next;
        w.seg_len = 0;
        w.torn = false;
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
        let Some(file) = file else {
            // No segment since open: nothing was written that could need a sync.
            self.synced.fetch_max(target, Ordering::AcqRel);
            return Ok(());
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
    /// written before this call is in segments ≤ the returned number (frames of a failed
    /// write that are still pending go to the new one).
    pub fn cut_segment(&self) -> Result<u64, WalError> {
        let mut w = self.lock_writer();
        let last = w.seg;
        self.rotate(&mut w)?;
        Ok(last)
    }

    /// Deletes segments ≤ `upto` (never the one being written): the write-behind log's
    /// truncation once what they held is in blocks (it has no checkpoints).
    pub fn remove_segments_upto(&self, upto: u64) -> Result<(), WalError> {
        let current = self.lock_writer().seg;
        for s in list_segments(&self.dir)? {
            if s <= upto && s < current {
                let p = self.dir.join(segment_name(s));
                fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
        sync_dir(&self.dir)
    }

    /// Writes a checkpoint for segments ≤ `upto`: `fill` writes complete frames into the
    /// buffer it gets (it is called repeatedly until it returns false, so a large state can
    /// be written in pieces). Then deletes segments ≤ `upto` and older checkpoints. A
    /// failed checkpoint leaves only its `.tmp` directory (removed on the next attempt or
    /// open) and deletes nothing.
    pub fn checkpoint(
        &self,
        upto: u64,
        fill: &mut dyn FnMut(&mut Vec<u8>) -> bool,
    ) -> Result<(), WalError> {
        let final_dir = self.dir.join(checkpoint_name(upto));
        let tmp = self.dir.join(format!("{}.tmp", checkpoint_name(upto)));
        let r = self.write_checkpoint(&tmp, fill);
        if r.is_err() {
            // Free the space now: the disk may be full.
            let _ = fs::remove_dir_all(&tmp);
        }
        r?;
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

    fn write_checkpoint(
        &self,
        tmp: &Path,
        fill: &mut dyn FnMut(&mut Vec<u8>) -> bool,
    ) -> Result<(), WalError> {
        if tmp.exists() {
            fs::remove_dir_all(tmp).map_err(io_err(tmp))?;
        }
        fs::create_dir_all(tmp).map_err(io_err(tmp))?;
        let fp = tmp.join(segment_name(0));
        let mut file = File::create(&fp).map_err(io_err(&fp))?;
        let mut buf = Vec::with_capacity(1 << 20);
        let mut laid = Vec::with_capacity(1 << 20);
        let mut written = 0u64;
        // Checkpoints are compressed as the segments are (Prometheus's too).
        let mut z = Compressor {
            encoder: self
                .lock_writer()
                .z
                .encoder
                .is_some()
                .then(snap::raw::Encoder::new),
            buf: Vec::new(),
        };
        loop {
            buf.clear();
            let more = fill(&mut buf);
            laid.clear();
            lay_out(&mut laid, written, &buf, &mut z);
            file.write_all(&laid).map_err(io_err(&fp))?;
            written += laid.len() as u64;
            if !more {
                break;
            }
        }
        file.sync_all().map_err(io_err(&fp))?;
        drop(file);
        sync_dir(tmp)
    }

    /// Fsyncs and refuses further writes. Fails if frames of a failed write could not
    /// be written (their commits were never acknowledged).
    pub fn close(&self) -> Result<(), WalError> {
        let r = self.flush_pending().and_then(|_| self.sync());
        if let Err(e) = &r {
            tracing::error!(error = %e, "closing the WAL: unacknowledged records of a failed write could not be written");
        }
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

    /// Records in Orrery's first format (`u32 LE length | u32 LE CRC32C | payload`).
    fn legacy_frames(payloads: &[Vec<u8>]) -> Vec<u8> {
        let mut buf = Vec::new();
        for p in payloads {
            buf.extend_from_slice(&(p.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32c::crc32c(p).to_le_bytes());
            buf.extend_from_slice(p);
        }
        buf
    }

    fn read_all(dir: &Path) -> (Vec<Vec<u8>>, ReplayReport) {
        let mut got = Vec::new();
        let (rep, _) = replay(dir, &Metrics::default(), &mut |_, p| {
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
    fn compressed_records_are_smaller_flagged_and_replayed() {
        // Compressible records (one spanning pages), an incompressible one, an empty one.
        let mut payloads: Vec<Vec<u8>> = (0..50u32).map(|i| rec(i, 300)).collect();
        payloads.push(rec(77, 100_000));
        let mut noise = vec![2u8];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            noise.push(x as u8);
        }
        payloads.push(noise);
        payloads.push(Vec::new());
        let write = |compress: bool| {
            let d = tempfile::tempdir().unwrap();
            let wal = Wal::create(
                d.path(),
                None,
                SyncPolicy::Never,
                1 << 20,
                Metrics::default(),
            )
            .unwrap();
            wal.set_compression(compress);
            wal.write(&frames(&payloads)).unwrap();
            wal.close().unwrap();
            let (got, rep) = read_all(d.path());
            assert_eq!(got, payloads, "compress={compress}");
            assert_eq!(rep.corruptions_repaired + rep.torn_tails, 0);
            let seg = fs::read(d.path().join(segment_name(0))).unwrap();
            assert_eq!(
                seg[0] & 8 != 0,
                compress,
                "the snappy bit of the first fragment"
            );
            seg.len()
        };
        let (on, off) = (write(true), write(false));
        assert!(on * 3 < off, "compressed {on} bytes vs plain {off}");

        // A log mixing both replays whole; checkpoints are compressed too.
        let d = tempfile::tempdir().unwrap();
        let wal = Wal::create(
            d.path(),
            None,
            SyncPolicy::Never,
            1 << 20,
            Metrics::default(),
        )
        .unwrap();
        wal.set_compression(true);
        wal.write(&frames(&[rec(1, 300)])).unwrap();
        wal.set_compression(false);
        wal.write(&frames(&[rec(2, 300)])).unwrap();
        wal.set_compression(true);
        let upto = wal.cut_segment().unwrap();
        wal.write(&frames(&[rec(3, 300)])).unwrap();
        let (got, _) = read_all(d.path());
        assert_eq!(got, vec![rec(1, 300), rec(2, 300), rec(3, 300)]);
        wal.checkpoint(upto, &mut |buf| {
            buf.extend_from_slice(&frames(&[rec(4, 5000)]));
            false
        })
        .unwrap();
        wal.close().unwrap();
        let (got, _) = read_all(d.path());
        assert_eq!(got, vec![rec(4, 5000), rec(3, 300)]);
        let cp = fs::read(
            d.path()
                .join(format!("checkpoint.{upto:08}"))
                .join(segment_name(0)),
        )
        .unwrap();
        assert_eq!(cp[0], 1 | 8);
        assert!(cp.len() < 1000, "checkpoint of {} bytes", cp.len());
    }

    /// A record payload as the head writes them (a known type byte), tagged with `i`.
    fn rec(i: u32, len: usize) -> Vec<u8> {
        let mut p = vec![record::TYPE_SAMPLES];
        p.extend_from_slice(&i.to_le_bytes());
        p.resize(len.max(5), (i % 251) as u8);
        p
    }

    #[test]
    fn mid_segment_damage_is_skipped_and_later_records_replayed() {
        let d = tempfile::tempdir().unwrap();
        let wal = Wal::create(
            d.path(),
            None,
            SyncPolicy::Never,
            1 << 20,
            Metrics::default(),
        )
        .unwrap();
        let payloads: Vec<Vec<u8>> = (0..10).map(|i| rec(i, 10)).collect();
        wal.write(&frames(&payloads)).unwrap();
        wal.cut_segment().unwrap();
        wal.write(&frames(&[rec(99, 30)])).unwrap();
        wal.close().unwrap();
        // Flip a byte inside the 4th record of segment 0 (each is a 7-byte fragment
        // header and 10 bytes).
        let p = d.path().join(segment_name(0));
        let mut data = fs::read(&p).unwrap();
        data[3 * 17 + 10] ^= 0xff;
        fs::write(&p, &data).unwrap();
        let m = Metrics::default();
        let mut got = vec![];
        let (rep, last) = replay(d.path(), &m, &mut |_, p| {
            got.push(p.to_vec());
            Ok(())
        })
        .unwrap();
        let mut want = payloads.clone();
        want.remove(3);
        want.push(rec(99, 30));
        assert_eq!(got, want);
        assert_eq!(rep.corruptions_repaired, 1);
        assert_eq!(rep.bytes_skipped, 17);
        assert_eq!(m.wal_corruptions_repaired.get(), 1);
        assert_eq!(last, Some(1));
        // The damaged bytes stay (nothing after them is lost); a second open reports the
        // same and replays the same.
        assert_eq!(fs::read(&p).unwrap(), data);
        let (got2, rep2) = read_all(d.path());
        assert_eq!(got2, want);
        assert_eq!(rep2.corruptions_repaired, 1);
    }

    /// The layout the writer before this fix left after a disk-full episode: a partial
    /// record (the write that failed) followed by good records in the same segment, and
    /// no magic (an old segment). Every good record is replayed.
    #[test]
    fn old_segment_with_torn_record_then_good_records_keeps_the_good_ones() {
        let d = tempfile::tempdir().unwrap();
        let before: Vec<Vec<u8>> = (0..5).map(|i| rec(i, 40)).collect();
        let after: Vec<Vec<u8>> = (10..20).map(|i| rec(i, 40)).collect();
        let torn = legacy_frames(&[rec(7, 400)]);
        let mut data = legacy_frames(&before);
        data.extend_from_slice(&torn[..150]);
        data.extend_from_slice(&legacy_frames(&after));
        fs::write(d.path().join(segment_name(0)), &data).unwrap();
        let (got, rep) = read_all(d.path());
        let mut want = before.clone();
        want.extend(after);
        assert_eq!(got, want);
        assert_eq!(rep.corruptions_repaired, 1);
        assert_eq!(rep.bytes_skipped, 150);
        assert_eq!(rep.torn_tails, 0);
    }

    /// A Prometheus WAL (snappy-compressed series and samples records in 32 KiB pages,
    /// built from the format description) with a checkpoint and a last segment torn
    /// mid-page (SIGKILL) is replayed: the checkpoint, then every record of the segments
    /// after it; the torn record is cut off (Prometheus's repair of the last segment), a
    /// leftover temporary checkpoint is removed, nothing else changes.
    #[test]
    fn prometheus_wal_is_replayed_and_its_torn_tail_repaired() {
        let d = tempfile::tempdir().unwrap();
        let recs = ident::tests::prometheus_records(2000);
        let seg = ident::tests::prometheus_segment(&recs);
        assert!(seg.len() > 64 * 1024);
        fs::write(d.path().join("00000003"), &seg).unwrap();
        fs::write(d.path().join("00000004"), &seg[..5000]).unwrap();
        let cp = d.path().join("checkpoint.00000002");
        fs::create_dir_all(&cp).unwrap();
        let cps = ident::tests::prometheus_segment(&recs[..1]);
        fs::write(cp.join("00000000"), &cps).unwrap();
        fs::create_dir_all(d.path().join("checkpoint.00000003.tmp")).unwrap();
        // What the torn segment holds whole: the records that end within 5000 bytes.
        let mut whole = 0;
        let mut n = 0u64;
        let sc = page::scan(&seg[..5000], &mut |_| Ok(()), &mut n);
        let (cut_at, torn, _) = sc.tail.clone().unwrap();
        assert!(torn);
        whole += n as usize;
        let m = Metrics::default();
        let mut got = vec![];
        let (rep, last) = replay(d.path(), &m, &mut |f, p| {
            assert_eq!(f, Format::Prometheus);
            got.push(p.to_vec());
            Ok(())
        })
        .unwrap();
        let mut want: Vec<Vec<u8>> = vec![recs[0].0.clone()];
        want.extend(recs.iter().map(|r| r.0.clone()));
        want.extend(recs.iter().take(whole).map(|r| r.0.clone()));
        assert_eq!(got.len(), want.len());
        assert!(got == want);
        assert_eq!((rep.torn_tails, rep.corruptions_repaired), (1, 0));
        assert_eq!((rep.checkpoint, last), (Some(2), Some(4)));
        assert_eq!(rep.legacy_files, 0);
        assert_eq!(fs::read(d.path().join("00000003")).unwrap(), seg);
        assert_eq!(fs::read(d.path().join("00000004")).unwrap(), &seg[..cut_at]);
        assert_eq!(fs::read(cp.join("00000000")).unwrap(), cps);
        assert!(!d.path().join("checkpoint.00000003.tmp").exists());
    }

    /// A Prometheus segment corrupted in the middle: the damaged record is skipped and
    /// every later record (and segment) is replayed.
    #[test]
    fn prometheus_segment_with_corrupt_middle_keeps_later_records() {
        let d = tempfile::tempdir().unwrap();
        let recs = ident::tests::prometheus_records(2000);
        let mut seg = ident::tests::prometheus_segment(&recs);
        let n_pages = seg.len() / page::PAGE;
        assert!(n_pages >= 2);
        seg[page::PAGE + 500] ^= 0x55;
        fs::write(d.path().join("00000000"), &seg).unwrap();
        fs::write(
            d.path().join("00000001"),
            ident::tests::prometheus_segment(&recs[..3]),
        )
        .unwrap();
        let (got, rep) = read_all(d.path());
        assert_eq!(rep.corruptions_repaired, 1);
        assert_eq!(rep.torn_tails, 0);
        // One record lost (the one holding the flipped byte), all others kept, in order.
        assert!(recs.len() > 10);
        assert_eq!(got.len(), recs.len() - 1 + 3);
        let mut it = recs.iter();
        for g in &got[..recs.len() - 1] {
            assert!(it.any(|r| &r.0 == g));
        }
    }

    /// A legacy Orrery segment (no magic) still replays; a new writer continues after it.
    /// Opened on a full disk: the log starts without a segment, says why, refuses
    /// writes, and once there is room a retry (no write needed) starts the segment.
    #[test]
    fn opened_on_a_full_disk_recovers_when_space_returns() {
        let d = tempfile::tempdir().unwrap();
        let first = Wal::create(
            d.path(),
            None,
            SyncPolicy::Never,
            1 << 20,
            Metrics::default(),
        )
        .unwrap();
        first.write(&frames(&[rec(1, 40)])).unwrap();
        first.close().unwrap();
        drop(first);
        let (_, last) = replay(d.path(), &Metrics::default(), &mut |_, _| Ok(())).unwrap();

        let plan = file::faults::SharedPlan::default();
        plan.lock().unwrap().full = true;
        let m = Metrics::default();
        let wal =
            Wal::create_with_faults(d.path(), last, 1 << 20, m.clone(), plan.clone()).unwrap();
        let why = wal.failure().expect("failing after an open on a full disk");
        assert!(why.contains("No space left on device"), "{why}");
        assert_eq!(m.wal_write_failing.get(), 1);
        assert!(wal.write(&frames(&[rec(2, 40)])).is_err());
        assert!(wal.retry_failed().is_err(), "still full");
        wal.sync().unwrap();

        plan.lock().unwrap().full = false;
        wal.retry_failed().unwrap();
        assert_eq!((wal.failure(), m.wal_write_failing.get()), (None, 0));
        wal.write(&frames(&[rec(3, 40)])).unwrap();
        wal.close().unwrap();
        drop(wal);
        let (got, rep) = read_all(d.path());
        // Record 2's write failed; its frames were pending and went out with the retry.
        assert_eq!(got, vec![rec(1, 40), rec(2, 40), rec(3, 40)]);
        assert_eq!(rep.torn_tails + rep.corruptions_repaired, 0);
    }

    /// Any other failure to start the log stops the open: a broken or misconfigured
    /// directory must not pass for a full disk.
    #[test]
    fn wal_create_failure_other_than_space_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join(segment_name(0))).unwrap();
        // Segment 0 is a directory: creating it fails with something other than ENOSPC.
        let e = Wal::create(
            d.path(),
            None,
            SyncPolicy::Never,
            1 << 20,
            Metrics::default(),
        )
        .unwrap_err();
        assert!(!e.is_out_of_space(), "{e}");
    }

    #[test]
    fn segments_without_magic_still_replay() {
        let d = tempfile::tempdir().unwrap();
        let payloads: Vec<Vec<u8>> = (0..4).map(|i| rec(i, 20)).collect();
        fs::write(d.path().join(segment_name(0)), legacy_frames(&payloads)).unwrap();
        let (got, rep) = read_all(d.path());
        assert_eq!(got, payloads);
        assert_eq!(rep.corruptions_repaired + rep.torn_tails, 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(usize),
        Fault(Option<file::faults::Fault>),
        DiskFull(bool),
        FailTruncate(bool),
        Cut,
        /// Maintenance's retry of a failing log.
        Retry,
    }

    fn op() -> impl Strategy<Value = Op> {
        use file::faults::Fault;
        prop_oneof![
            6 => (5usize..300).prop_map(Op::Write),
            2 => (0usize..400, 0u8..3).prop_map(|(n, k)| Op::Fault(Some(match k {
                0 => Fault::Enospc(n),
                1 => Fault::Eio(n),
                _ => Fault::Short(n),
            }))),
            1 => any::<bool>().prop_map(Op::DiskFull),
            1 => any::<bool>().prop_map(Op::FailTruncate),
            1 => Just(Op::Cut),
            1 => Just(Op::Retry),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Random writes interleaved with ENOSPC, EIO and short writes at random offsets
        /// (also while creating segments), a full disk, and truncations that fail; then
        /// everything recovers and the WAL is replayed. Every acknowledged record is
        /// replayed, in order, exactly once; every record whose write failed is replayed
        /// too (its data is in the head, see `Writer::pending`), in order, possibly twice
        /// when a failed write could not be cut back; nothing else appears. Half of the
        /// cases open the log on a full disk (no segment can be started).
        #[test]
        fn acknowledged_records_survive_any_write_failures(
            start_full in any::<bool>(),
            ops in prop::collection::vec(op(), 1..60),
        ) {
            let d = tempfile::tempdir().unwrap();
            let plan = file::faults::SharedPlan::default();
            plan.lock().unwrap().full = start_full;
            let wal = Wal::create_with_faults(d.path(), None, 2048, Metrics::default(), plan.clone()).unwrap();
            prop_assert_eq!(wal.failure().is_some(), start_full);
            let mut acked: Vec<Vec<u8>> = vec![];
            let mut attempted: Vec<Vec<u8>> = vec![];
            for o in ops {
                match o {
                    Op::Write(len) => {
                        // Unique contents: attempt number.
                        let p = rec(attempted.len() as u32, len);
                        attempted.push(p.clone());
                        if wal.write(&frames(std::slice::from_ref(&p))).is_ok() {
                            // Acknowledged: so are earlier failed ones written with it.
                            acked.push(p);
                        }
                    }
                    Op::Fault(f) => plan.lock().unwrap().next.push_back(f),
                    Op::DiskFull(b) => plan.lock().unwrap().full = b,
                    Op::FailTruncate(b) => plan.lock().unwrap().fail_truncate = b,
                    Op::Cut => { let _ = wal.cut_segment(); }
                    Op::Retry => { let _ = wal.retry_failed(); }
                }
            }
            {
                let mut p = plan.lock().unwrap();
                p.full = false;
                p.fail_truncate = false;
                p.next.clear();
            }
            // The disk has room again: the next commit goes through (and carries what is
            // pending).
            let fin = rec(u32::MAX, 9);
            attempted.push(fin.clone());
            wal.write(&frames(std::slice::from_ref(&fin))).unwrap();
            acked.push(fin);
            prop_assert_eq!(wal.failure(), None);
            wal.close().unwrap();
            drop(wal);
            let (got, rep) = read_all(d.path());
            // Every acknowledged record exactly once, in order.
            for a in &acked {
                prop_assert_eq!(got.iter().filter(|g| *g == a).count(), 1, "acknowledged record {:?}; report {:?}", &a[..5], rep);
            }
            let mut it = got.iter();
            for a in &acked {
                prop_assert!(it.any(|g| g == a), "acknowledged record {:?} out of order", &a[..5]);
            }
            // Nothing invented, nothing reordered: first occurrences are a subsequence of
            // the attempts, and every attempt was eventually written. A record whose
            // write failed may appear twice (whole frames of a failed write that could
            // not be cut back, then written again); replaying it twice is a no-op for
            // the head (duplicate samples are ignored).
            let mut seen = std::collections::HashSet::new();
            let firsts: Vec<&Vec<u8>> = got.iter().filter(|g| seen.insert(g.to_vec())).collect();
            let mut it = attempted.iter();
            for g in &firsts {
                prop_assert!(it.any(|a| a == *g), "replayed record {:?} not attempted or out of order", &g[..5]);
            }
            prop_assert_eq!(firsts.len(), attempted.len());
            prop_assert_eq!(rep.torn_tails, 0);
        }

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
            let inside = !ends.contains(&cut) && cut > 0;
            prop_assert_eq!(rep.torn_tails, inside as u64);
            prop_assert_eq!(rep.corruptions_repaired, 0);
        }
    }
}
