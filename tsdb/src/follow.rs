//! Following a Prometheus data directory, read-only: its blocks as they are, and its
//! head rebuilt from its WAL as Prometheus appends to it.
//!
//! A sidecar that reads Prometheus through remote read pays Prometheus's cost of
//! sorting and framing every selection (about three times its own evaluation of a
//! query over many series). Reading the data directory instead serves the same samples
//! without asking Prometheus anything: the persisted blocks are opened where they lie
//! (memory-mapped, never written), and the WAL is read as Prometheus's own remote-write
//! watcher reads it — the newest checkpoint, then every segment after it, then the last
//! segment's tail, again and again — into an in-memory [`Head`].
//!
//! Nothing under the directory is created, changed or deleted. What Prometheus changes
//! is picked up by [`Follower::catch_up`]:
//! - records appended to the segment being read (a record still being written is read
//!   the next time: the read stops at the last complete one);
//! - a new segment: the current one is read to its end first (Prometheus closes a
//!   segment before it creates the next);
//! - a new checkpoint, when the segments it replaced were deleted before they were
//!   read (a follower that fell behind): the checkpoint is read, then the segments
//!   after it, as Prometheus's watcher does;
//! - a new block: loaded, and the head drops what the block now holds (Prometheus
//!   truncates its own head the same way), so memory stays about one head's worth;
//!   a block replaced by a compaction (it is a parent of a newer block) is dropped at
//!   once, a block deleted by retention when it is gone from the directory;
//! - out-of-order samples (Prometheus's out-of-order window): the WAL has them but they
//!   do not fit in-order chunks, so they are read from the write-behind log (`wbl/`,
//!   the WAL's format) into the head's out-of-order chunks. A new out-of-order block
//!   means Prometheus compacted them: the head's are dropped and what the write-behind
//!   log still holds is read again (samples in both are read once: a series' chunks
//!   are merged by timestamp).
//!
//! The head never serves samples older than the newest block's end (see
//! [`crate::Db::querier`]): between a block's appearance and the truncation the same
//! samples are in both, and are read once.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use storeapi::Labels;

use crate::block::Block;
use crate::db::{
    HeadOwner, Querier, in_order_end, is_ooo_block, max_time_of, min_time_of, read_blocks,
};
use crate::head::{Head, SampleResult};
use crate::metrics::Metrics;
use crate::wal::Scan;
use crate::wal::page::{self, PAGE};
use crate::wal::record::{self, RefHistogramSample, Visitor};

/// Samples per out-of-order head chunk (Prometheus's default `out_of_order_cap_max`).
const OOO_CAP: usize = crate::db::DEFAULT_OOO_CAP_MAX;

/// The most of a segment read into memory at once. A record larger than this (a huge
/// commit) doubles it for that read.
const READ_WINDOW: usize = 4 << 20;

/// Why following failed.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a directory (Prometheus's --storage.tsdb.path)")]
    NotADirectory(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FollowError + '_ {
    move |source| FollowError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Counts of what following has read so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FollowStats {
    /// WAL records applied (checkpoints included).
    pub records: u64,
    /// Samples and histograms appended to the head.
    pub samples: u64,
    /// Samples of series whose record was not read, newer than the blocks (lost to a
    /// follower that fell behind, or damage in the WAL).
    pub unknown_series: u64,
    /// Damaged regions skipped (bad checksums, undecodable records, a segment's torn
    /// end).
    pub damaged: u64,
    /// Checkpoints read (the first one, and any read after falling behind).
    pub checkpoints: u64,
    /// Segments deleted before they were read, with no checkpoint covering them.
    pub segments_missed: u64,
    /// Blocks loaded (now).
    pub blocks: usize,
}

/// Where one log (the WAL, or the out-of-order write-behind log) is being read.
#[derive(Default)]
struct Tail {
    started: bool,
    /// The segment being read (or wanted next).
    seg: u64,
    /// Its handle, kept open: Prometheus may delete a segment a checkpoint replaced
    /// while it is still being read, and an open file stays readable.
    file: Option<File>,
    /// End of the last complete record read in `seg`.
    offset: u64,
}

/// Which log a [`Tail`] reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Log {
    /// `wal/`: in-order samples into the head's chunks; checkpoints.
    Wal,
    /// `wbl/`: Prometheus's out-of-order samples (the WAL has them too, but they do not
    /// fit the in-order chunks) into the head's out-of-order chunks; no checkpoints.
    Wbl,
}

/// Everything following keeps between catch-ups.
#[derive(Default)]
struct State {
    wal: Tail,
    wbl: Tail,
    scratch: Vec<u8>,
    stats: FollowStats,
    /// Blocks that did not open, each logged once (tried again every time).
    unopened: HashSet<crate::block::Ulid>,
}

impl State {
    fn tail(&mut self, log: Log) -> &mut Tail {
        match log {
            Log::Wal => &mut self.wal,
            Log::Wbl => &mut self.wbl,
        }
    }
}

struct Inner {
    dir: PathBuf,
    wal_dir: PathBuf,
    wbl_dir: PathBuf,
    head: Head,
    blocks: RwLock<Vec<Arc<Block>>>,
    state: Mutex<State>,
}

/// A read-only view of a Prometheus data directory that keeps up with it. Cheap to
/// clone; `Send + Sync`.
#[derive(Clone)]
pub struct Follower {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Follower {
    /// Opens `dir` (Prometheus's `--storage.tsdb.path`) and reads everything in it.
    /// `chunk_range_ms` is Prometheus's block duration (`--storage.tsdb.min-block-duration`,
    /// 2h by default): the head cuts chunks on the same boundaries as Prometheus's.
    pub fn open(dir: impl AsRef<Path>, chunk_range_ms: i64) -> Result<Follower, FollowError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(FollowError::NotADirectory(dir));
        }
        let mut head = Head::new(chunk_range_ms.max(1000), Metrics::default());
        // Nothing here is written through the remote-write path.
        head.set_wire_key_limit(0);
        let f = Follower {
            inner: Arc::new(Inner {
                wal_dir: dir.join("wal"),
                wbl_dir: dir.join("wbl"),
                dir,
                head,
                blocks: RwLock::new(Vec::new()),
                state: Mutex::new(State::default()),
            }),
        };
        f.catch_up()?;
        Ok(f)
    }

    pub(crate) fn head(&self) -> &Head {
        &self.inner.head
    }

    /// The directory followed.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Reads what Prometheus wrote since the last call: new WAL records, then new blocks
    /// (the head then drops what they hold). Cheap when nothing changed: three directory
    /// listings (`wal/`, `wbl/`, the blocks) and a few `stat`s; a block's meta is read
    /// only when the block appears. Calls are serialized.
    pub fn catch_up(&self) -> Result<FollowStats, FollowError> {
        let mut st = lock(&self.inner.state);
        if !st.wal.started {
            // The first time, blocks first: WAL samples they hold are then not read
            // into the head at all.
            self.refresh_blocks(&mut st)?;
        }
        // Then the logs before the blocks: a block is cut from samples already in the
        // WAL, so once the WAL is read every series Prometheus keeps past the block has
        // samples past it here too, and the truncation keeps it. The other way round, a
        // series whose newer samples were not read yet would be dropped, and its later
        // samples would name a series that is gone.
        self.read_log(&mut st, Log::Wal)?;
        self.read_log(&mut st, Log::Wbl)?;
        if self.refresh_blocks(&mut st)? {
            // New out-of-order blocks: what the write-behind log still holds is read
            // again into emptied out-of-order chunks.
            self.read_log(&mut st, Log::Wbl)?;
        }
        Ok(st.stats.clone())
    }

    /// What has been read so far.
    pub fn stats(&self) -> FollowStats {
        lock(&self.inner.state).stats.clone()
    }

    fn blocks(&self) -> Vec<Arc<Block>> {
        read_blocks(&self.inner.blocks)
    }

    /// Series in the head now.
    pub fn head_series(&self) -> usize {
        self.inner.head.num_series()
    }

    /// Oldest sample timestamp (blocks and head); `i64::MAX` when empty.
    pub fn min_time(&self) -> i64 {
        min_time_of(&self.blocks(), &self.inner.head)
    }

    /// Newest sample timestamp (blocks and head); `i64::MIN` when empty.
    pub fn max_time(&self) -> i64 {
        max_time_of(&self.blocks(), &self.inner.head)
    }

    /// A querier over the closed interval `[mint, maxt]`, as [`crate::Db::querier`].
    pub fn querier(&self, mint: i64, maxt: i64) -> Querier {
        Querier::new(HeadOwner::Follower(self.clone()), self.blocks(), mint, maxt)
    }

    /// Loads new blocks, drops those gone or replaced by a compaction, and truncates the
    /// head below the newest in-order block's end. A new out-of-order block means
    /// Prometheus compacted its out-of-order samples: the head's are dropped and the
    /// write-behind log (what Prometheus kept of it) is to be read again; returns
    /// whether that happened.
    fn refresh_blocks(&self, st: &mut State) -> Result<bool, FollowError> {
        // Only the names are listed: a block's meta is read once, when it appears (a
        // catch-up runs before every call).
        let present = block_dirs(&self.inner.dir)?;
        let current = self.blocks();
        let mut next = Vec::with_capacity(present.len());
        for (ulid, dir) in &present {
            if let Some(b) = current.iter().find(|b| b.meta().ulid == *ulid) {
                next.push(b.clone());
                continue;
            }
            match Block::open(dir) {
                Ok(b) => {
                    let m = b.meta();
                    tracing::info!(ulid = %ulid, mint = m.min_time, maxt = m.max_time,
                        "following: block loaded");
                    st.unopened.remove(ulid);
                    next.push(Arc::new(b));
                }
                // Being deleted, or damaged: tried again next time, logged once.
                Err(err) => {
                    if st.unopened.insert(*ulid) {
                        tracing::warn!(dir = %dir.display(), error = %err,
                            "following: cannot open block; its samples are not served until it opens");
                    }
                }
            }
        }
        // A compaction's sources stay on disk for a moment after its result appears.
        let parents: HashSet<_> = next
            .iter()
            .flat_map(|b| b.meta().compaction.parents.iter().map(|p| p.ulid))
            .collect();
        next.retain(|b| !parents.contains(&b.meta().ulid));
        next.sort_by_key(|b| (b.meta().min_time, b.meta().ulid));
        let changed = next.len() != current.len()
            || next.iter().zip(&current).any(|(a, b)| !Arc::ptr_eq(a, b));
        let end = Some(in_order_end(&next)).filter(|&e| e != i64::MIN);
        st.stats.blocks = next.len();
        let new_ooo = next
            .iter()
            .any(|b| is_ooo_block(b) && !current.iter().any(|c| Arc::ptr_eq(b, c)));
        if changed {
            *self.inner.blocks.write().unwrap_or_else(|e| e.into_inner()) = next;
        }
        let head = &self.inner.head;
        if let Some(end) = end
            && end > head.min_valid_time()
        {
            let removed = head.truncate(end);
            tracing::debug!(
                cut = end,
                series_removed = removed,
                "following: head truncated"
            );
        }
        if new_ooo && st.wbl.started {
            for s in head.ooo_series() {
                let mut d = s.lock();
                d.begin_ooo_compaction();
                d.end_ooo_compaction();
            }
            head.recompute_ooo_range();
            st.wbl = Tail::default();
            return Ok(true);
        }
        Ok(false)
    }

    /// Reads `log` from where the last call stopped.
    fn read_log(&self, st: &mut State, log: Log) -> Result<(), FollowError> {
        let mut t = std::mem::take(st.tail(log));
        let res = self.read_log_from(st, &mut t, log);
        *st.tail(log) = t;
        res
    }

    fn read_log_from(&self, st: &mut State, t: &mut Tail, log: Log) -> Result<(), FollowError> {
        let dir = match log {
            Log::Wal => &self.inner.wal_dir,
            Log::Wbl => &self.inner.wbl_dir,
        };
        if !dir.is_dir() {
            return Ok(());
        }
        if !t.started {
            t.seg = match newest_checkpoint(dir)?.filter(|_| log == Log::Wal) {
                Some(cp) => {
                    self.read_checkpoint(st, cp)?;
                    cp + 1
                }
                None => segments(dir)?.first().copied().unwrap_or(0),
            };
            t.started = true;
        }
        loop {
            if t.file.is_none() {
                let p = dir.join(segment_name(t.seg));
                match File::open(&p) {
                    Ok(f) => {
                        t.file = Some(f);
                        t.offset = 0;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        // Not written yet, or deleted unread (a checkpoint replaced it).
                        if log == Log::Wal
                            && let Some(cp) = newest_checkpoint(dir)?
                            && cp >= t.seg
                        {
                            self.read_checkpoint(st, cp)?;
                            t.seg = cp + 1;
                            continue;
                        }
                        match segments(dir)?.into_iter().find(|&s| s > t.seg) {
                            Some(s) => {
                                // The write-behind log's segments go once their samples
                                // are in blocks: nothing is missed there.
                                if log == Log::Wal {
                                    tracing::warn!(
                                        missed = t.seg,
                                        next = s,
                                        "following: WAL segment deleted before it was read and no checkpoint covers it"
                                    );
                                    st.stats.segments_missed += 1;
                                }
                                t.seg = s;
                                continue;
                            }
                            None => return Ok(()),
                        }
                    }
                    Err(e) => return Err(io_err(&p)(e)),
                }
            }
            // Looked at before reading: once a later segment exists, this one is
            // complete, and the read below reaches its end.
            let later = segments(dir)?.into_iter().any(|s| s > t.seg);
            let p = dir.join(segment_name(t.seg));
            if !later && replaced(&p, t.file.as_ref()) {
                // Prometheus's repair at startup (after a crash left a torn record)
                // writes a damaged segment again under its own name and makes the
                // next one anew: the file open here is no longer the log. Read the new
                // one from its start; what was read already is found again and kept
                // once (series records and repeated samples change nothing).
                tracing::warn!(file = %p.display(),
                    "following: a log segment was replaced (Prometheus repaired its WAL); reading it again");
                t.file = Some(File::open(&p).map_err(io_err(&p))?);
                t.offset = 0;
            }
            let torn = match t.file.take() {
                Some(file) => {
                    let res = self.read_open_segment(st, t, &file, &p, log);
                    t.file = Some(file);
                    res?
                }
                None => false,
            };
            if !later {
                return Ok(());
            }
            if torn {
                tracing::warn!(file = %p.display(), offset = t.offset,
                    "following: a log segment ends in a damaged record; skipped");
                st.stats.damaged += 1;
            }
            // The next one, not the next listed: a segment deleted in between is covered
            // by a checkpoint, found when it is opened above.
            t.file = None;
            t.seg += 1;
        }
    }

    /// Reads the open segment `file` from `t.offset` to its end. Returns whether it
    /// ends in an incomplete record (still being written, or torn).
    fn read_open_segment(
        &self,
        st: &mut State,
        t: &mut Tail,
        file: &File,
        p: &Path,
        log: Log,
    ) -> Result<bool, FollowError> {
        let mut window = READ_WINDOW;
        loop {
            let len = file.metadata().map_err(io_err(p))?.len();
            if len <= t.offset {
                return Ok(false);
            }
            // From the start of the offset's page: offsets within a page matter.
            let base = t.offset - t.offset % PAGE as u64;
            let want = usize::try_from(len - base)
                .unwrap_or(usize::MAX)
                .min(window);
            let mut buf = vec![0u8; want];
            let n = read_full(file, &mut buf, base).map_err(io_err(p))?;
            buf.truncate(n);
            let start = (t.offset - base) as usize;
            let scan = self.apply(st, &buf, start, true, log == Log::Wbl);
            for (from, to, why) in &scan.skipped {
                tracing::warn!(file = %p.display(), offset = base + *from as u64,
                    bytes = to - from, %why, "following: skipped a damaged log region");
                st.stats.damaged += 1;
            }
            let end = scan.tail.as_ref().map_or(buf.len(), |x| x.0);
            t.offset = base + end as u64;
            let whole_file = base + n as u64 >= len;
            match scan.tail {
                None if whole_file => return Ok(false),
                // The window cut a record: read on from it.
                _ if !whole_file && end > start => continue,
                // One record larger than the window.
                _ if !whole_file => {
                    window = window.saturating_mul(2);
                    continue;
                }
                _ => return Ok(true),
            }
        }
    }

    /// Applies the records of `buf` (a segment's bytes from a page boundary) from
    /// `start`; `ooo`: their samples go into the out-of-order chunks.
    fn apply(&self, st: &mut State, buf: &[u8], start: usize, live: bool, ooo: bool) -> Scan {
        let head = &self.inner.head;
        let mut v = Apply {
            head,
            scratch: &mut st.scratch,
            ooo,
            mint: i64::MAX,
            maxt: i64::MIN,
            samples: 0,
            unknown: 0,
        };
        let mut records = 0;
        let scan = page::scan_from(
            buf,
            start,
            live,
            &mut |payload| record::decode(payload, &mut v).map_err(|e| e.to_string()),
            &mut records,
        );
        if !ooo {
            head.note_times(v.mint, v.maxt);
        }
        st.stats.samples += v.samples;
        st.stats.unknown_series += v.unknown;
        st.stats.records += records;
        scan
    }

    /// Reads checkpoint `cp` whole.
    fn read_checkpoint(&self, st: &mut State, cp: u64) -> Result<(), FollowError> {
        let cdir = self.inner.wal_dir.join(format!("checkpoint.{cp:08}"));
        for s in segments(&cdir)? {
            let p = cdir.join(segment_name(s));
            let data = match std::fs::read(&p) {
                Ok(d) => d,
                // Replaced by a newer one while being read: the caller reads on from the
                // segments, and a newer checkpoint is found when they are missing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(io_err(&p)(e)),
            };
            let scan = self.apply(st, &data, 0, false, false);
            st.stats.damaged += scan.skipped.len() as u64 + u64::from(scan.tail.is_some());
        }
        st.stats.checkpoints += 1;
        tracing::info!(
            checkpoint = cp,
            series = self.inner.head.num_series(),
            "following: WAL checkpoint read"
        );
        Ok(())
    }
}

/// Whether the file at `p` is another file than `open` (written again under the same
/// name). A missing path is not a replacement: a deleted segment is read to its end.
fn replaced(p: &Path, open: Option<&File>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(now), Some(Ok(was))) = (std::fs::metadata(p), open.map(File::metadata)) else {
        return false;
    };
    (now.dev(), now.ino()) != (was.dev(), was.ino())
}

/// Reads into `buf` from `at` until it is full or the file ends.
fn read_full(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn segment_name(n: u64) -> String {
    format!("{n:08}")
}

/// Segment numbers in `dir`, sorted (read-only: nothing is cleaned up).
fn segments(dir: &Path) -> Result<Vec<u64>, FollowError> {
    let mut v: Vec<u64> = read_names(dir)?
        .iter()
        .filter(|n| n.len() == 8 && n.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|n| n.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// The newest complete checkpoint in `dir` (read-only: a `.tmp` one being written is
/// skipped, never removed).
fn newest_checkpoint(dir: &Path) -> Result<Option<u64>, FollowError> {
    Ok(read_names(dir)?
        .iter()
        .filter_map(|n| n.strip_prefix("checkpoint."))
        .filter_map(|n| n.parse::<u64>().ok())
        .max())
}

/// The block directories in `dir` (named by a ULID), from the listing alone: no
/// `stat` per entry.
fn block_dirs(dir: &Path) -> Result<Vec<(crate::block::Ulid, PathBuf)>, FollowError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let ulid = e.file_name().to_str().and_then(|n| n.parse().ok());
        if let Some(u) = ulid
            && e.file_type().is_ok_and(|t| t.is_dir())
        {
            out.push((u, e.path()));
        }
    }
    Ok(out)
}

fn read_names(dir: &Path) -> Result<Vec<String>, FollowError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(io_err(dir))?;
        if let Some(n) = e.file_name().to_str() {
            out.push(n.to_string());
        }
    }
    Ok(out)
}

/// Applies Prometheus WAL records to the follower's head.
struct Apply<'a> {
    head: &'a Head,
    scratch: &'a mut Vec<u8>,
    /// Samples go into the out-of-order chunks (the write-behind log).
    ooo: bool,
    mint: i64,
    maxt: i64,
    samples: u64,
    unknown: u64,
}

impl Apply<'_> {
    fn appended(&mut self, t: i64) {
        self.samples += 1;
        self.mint = self.mint.min(t);
        self.maxt = self.maxt.max(t);
    }
}

impl Visitor for Apply<'_> {
    fn series(&mut self, r: u64, labels: Labels) {
        self.head.replay_series(r, &labels, self.scratch);
    }

    fn sample(&mut self, r: u64, t: i64, v: f64) {
        let min_valid = self.head.min_valid_time();
        let Some(s) = self.head.get(r) else {
            // Below the blocks' end the series was dropped with its data: not lost.
            if t >= min_valid {
                self.unknown += 1;
            }
            return;
        };
        if self.ooo {
            if s.lock().insert_ooo(t, v, OOO_CAP) {
                self.head.note_ooo_time(t);
                self.samples += 1;
            }
            return;
        }
        // An out-of-order sample Prometheus took is refused here: it comes again from
        // the write-behind log.
        let res = self.head.append_locked(&mut s.lock(), t, v, min_valid);
        if res == SampleResult::Appended {
            self.appended(t);
        }
    }

    /// Only Orrery's first WAL format has chunk records; Prometheus's has none.
    fn chunk(&mut self, _r: u64, _min_t: i64, _max_t: i64, _data: &[u8]) {}

    fn histograms(&mut self, samples: Vec<RefHistogramSample>) {
        let min_valid = self.head.min_valid_time();
        for x in samples {
            let Some(s) = self.head.get(x.r) else {
                if x.t >= min_valid {
                    self.unknown += 1;
                }
                continue;
            };
            if self.ooo {
                if let Ok(true) = s.lock().insert_ooo_histogram(x.t, &x.h, OOO_CAP) {
                    self.head.note_ooo_time(x.t);
                    self.samples += 1;
                }
                continue;
            }
            let res = s
                .lock()
                .append_histogram(x.t, &x.h, min_valid, self.head.chunk_range());
            if res == SampleResult::Appended {
                self.appended(x.t);
            }
        }
    }
}

const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Follower>();
};

#[cfg(test)]
#[path = "follow_tests.rs"]
mod tests;
