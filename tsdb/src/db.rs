//! The database: head + WAL + blocks, with appenders, queriers, compaction and retention.
//!
//! Directory layout (Prometheus's): `<dir>/wal/` and one `<dir>/<ULID>/` per block.
//!
//! # Appending
//! [`Db::appender`] gives a batch; [`Appender::commit`] validates every sample against its
//! series (out-of-order, duplicate timestamp with another value, older than the
//! appendable window — each counted; bit-identical duplicates are ignored), applies the
//! accepted ones to the head, writes them to the WAL in one `write`, and (policy
//! [`SyncPolicy::Always`]) fsyncs before returning. Commits are serialized by one lock
//! (label hashing and the index lookup of known series happen before it, in the
//! caller's thread); fsyncs are shared by concurrent committers (group commit).
//! [`Appender::append_pairs`] takes borrowed label pairs: a known series costs no
//! allocation. `commit` blocks on disk I/O: call it from
//! `tokio::task::spawn_blocking` (or `block_in_place`) in async code.
//!
//! If `commit` returns `Err` (WAL write failed), accepted samples may be visible in memory
//! but are not guaranteed durable; the batch can be retried safely (identical duplicates
//! are ignored).
//!
//! # The appendable window (Prometheus's)
//! One window per commit, fixed before the first sample is appended: samples older than
//! `max(min_valid_time, head max time − chunk_range/2)` are out of bounds. On an empty
//! head the window starts at the first sample of the batch (Prometheus's `initAppender`
//! initialises the head's time range from it), so a first request spanning more than
//! half a chunk range is accepted whole only if its first sample is its oldest — exactly
//! as Prometheus answers the same request.
//!
//! # Samples in the future
//! [`Options::too_far_in_future`] refuses samples more than that ahead of
//! [`Options::clock`] (counted as [`RejectReason::TooFarInFuture`]; the rest of the
//! batch is written). Data already in the future (written before the limit existed, with
//! the limit off, or after the clock jumped back) must not lock the database: wherever
//! the head's newest timestamp is a reference — the appendable window, when head
//! compaction is due, the retention reference — it is capped at the clock's `now`. (For
//! data at or before `now` this is Prometheus's rule unchanged; samples accepted just
//! inside the limit cannot move the window past `now − chunk_range/2` either, which
//! matters for short block durations.) So current samples stay appendable, compaction cuts only
//! current data (future chunks stay in the head, no empty blocks are walked through up to
//! the future instant) and retention never deletes blocks because of a future sample. A
//! series whose own newest sample is in the future still refuses older samples as out of
//! order (an in-order head cannot take them); every other series is unaffected.
//!
//! # Compaction
//! [`Db::compact`] cuts the head into block-duration-aligned blocks while the head spans
//! more than 1.5 block durations (Prometheus's rule), keeping the newest ~half block
//! appendable; then truncates the head, checkpoints the WAL and applies retention.
//! [`Db::flush`] (for shutdown or tests) cuts everything up to the newest sample.
//!
//! # Out-of-order samples
//! With [`Options::ooo_time_window`] > 0 (Prometheus's `out_of_order_time_window`,
//! Thanos's `--tsdb.out-of-order.time-window`), a sample the in-order head would
//! refuse — older than its series' newest sample, or older than the appendable window —
//! is accepted when it is not older than the head's newest timestamp (capped at `now`)
//! minus the window. It is kept in the series' out-of-order chunks (see
//! [`crate::head`]'s `ooo` module), logged to the write-behind log `<dir>/wbl/` (the WAL's
//! format and sync policy, Prometheus's WBL: samples records only; series records stay
//! in the WAL) and queryable at once. Whenever head compaction writes blocks (and at
//! [`Db::flush`]), every out-of-order sample is written into blocks of the block
//! duration's aligned ranges, marked with the compaction hint `from-out-of-order`; they
//! may overlap other blocks (readers and the bucket compactor merge overlaps), and then
//! the WBL segments they came from are deleted. A crash in between replays them again:
//! written twice, identical, read once. Native histograms are taken out of order the
//! same way (their own open chunk, Prometheus's histogram chunk encodings, histogram
//! records in the WBL).

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::registry::Registry;
use storeapi::histogram::{HistogramSample, HistogramValue};
use storeapi::{Labels, Matcher, Sample};

use crate::block::{self, Block, BlockError, BlockOptions, ThanosMeta};
use crate::checkpoint::CheckpointRecords;
use crate::chunk::{Chunk, ChunkError, XorIterator};
use crate::exemplars::{Added, Exemplar, ExemplarError, ExemplarStorage};
use crate::head::{Head, MemSeries, SampleResult, SeriesHandles, SeriesKey, key_hash, labels_key};
use crate::metrics::{Metrics, RejectReason};
use crate::postings::SeriesRef;
use crate::wal::record::{
    self, ExemplarsRecord, RefHistogramSample, SamplesRecord, Skipped, Visitor,
};
use crate::wal::{self, SyncPolicy, Wal, WalError};

/// Database options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Block duration (and chunk range). Default 2h.
    pub block_duration: Duration,
    /// Blocks whose end is older than this before the newest data are deleted. Default 15d.
    /// Zero disables retention.
    pub retention: Duration,
    /// WAL fsync policy. Default [`SyncPolicy::Always`].
    pub wal_sync: SyncPolicy,
    /// WAL segment size. Default 128 MiB.
    pub wal_segment_size: u64,
    /// Snappy-compress WAL records (Prometheus's and Thanos's default). Default on.
    pub wal_compression: bool,
    /// External labels written into each block's `meta.json` `thanos` section; `None`
    /// writes no `thanos` section.
    pub external_labels: Option<BTreeMap<String, String>>,
    /// `thanos.source` in `meta.json` (e.g. `receive`).
    pub thanos_source: String,
    /// Samples more than this ahead of [`Options::clock`] are refused; `None` accepts any
    /// timestamp (Prometheus's TSDB). Default `None`. Either way the head's newest
    /// timestamp is capped at the clock where it is a reference (see the module docs).
    pub too_far_in_future: Option<Duration>,
    /// The wall clock. Default: the system clock.
    pub clock: Clock,
    /// Blocks retention must keep even when they are past the retention time (a shipper
    /// holds the blocks it has not uploaded yet). Default: none held.
    pub retention_hold: RetentionHold,
    /// Out-of-order samples not older than this before the head's newest timestamp are
    /// accepted (see "Out-of-order samples" in the module docs). Default zero: off.
    pub ooo_time_window: Duration,
    /// Samples per out-of-order head chunk (Prometheus's `out-of-order.cap-max`, 1–255).
    /// Default 32.
    pub ooo_cap_max: usize,
    /// Exemplars kept (one ring for the database, Prometheus's circular exemplar
    /// storage); 0 keeps none. Stored exemplars are logged to the WAL (Prometheus's
    /// exemplar records), replayed at open and kept by checkpoints. Default 0.
    pub max_exemplars: usize,
    /// Bytes the head may spend remembering clients' own label encodings, so a series
    /// sent again is found without parsing its labels (see [`WireKey`]); 0 turns it
    /// off. Default 32 MiB (about 110k series of nine labels).
    pub wire_key_cache_bytes: usize,
}

/// Default of [`Options::wire_key_cache_bytes`].
pub const DEFAULT_WIRE_KEY_CACHE_BYTES: usize = 32 << 20;

/// Prometheus's default `out_of_order_cap_max`.
pub const DEFAULT_OOO_CAP_MAX: usize = 32;

/// Compaction hint Prometheus writes into blocks made from out-of-order samples.
pub const HINT_FROM_OOO: &str = "from-out-of-order";

/// Decides, for a block past the retention time, whether it must stay on disk anyway.
/// The storage engine knows nothing of object storage; a caller that ships blocks
/// elsewhere (the receiver's shipper) plugs its "not uploaded yet" test in here, so a
/// block is never lost because the bucket was down longer than the retention.
#[derive(Clone, Default)]
pub struct RetentionHold(Option<Arc<HoldFn>>);

type HoldFn = dyn Fn(&block::BlockMeta) -> bool + Send + Sync;

impl RetentionHold {
    /// No block is held.
    pub fn none() -> RetentionHold {
        RetentionHold(None)
    }

    /// Blocks for which `f` returns true are kept.
    pub fn from_fn(f: impl Fn(&block::BlockMeta) -> bool + Send + Sync + 'static) -> RetentionHold {
        RetentionHold(Some(Arc::new(f)))
    }

    /// Whether `meta`'s block must be kept.
    pub fn holds(&self, meta: &block::BlockMeta) -> bool {
        self.0.as_ref().is_some_and(|f| f(meta))
    }
}

impl std::fmt::Debug for RetentionHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "RetentionHold(fn)"
        } else {
            "RetentionHold(none)"
        })
    }
}

/// Milliseconds since the Unix epoch, from the system clock or (tests) a function.
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<dyn Fn() -> i64 + Send + Sync>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(None)
    }

    /// A clock that reads `f` (tests pin or move "now" with it).
    pub fn from_fn(f: impl Fn() -> i64 + Send + Sync + 'static) -> Clock {
        Clock(Some(Arc::new(f)))
    }

    /// Now, in milliseconds since the epoch.
    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            Some(f) => f(),
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0),
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Clock(fn)"
        } else {
            "Clock(system)"
        })
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            block_duration: Duration::from_secs(2 * 3600),
            retention: Duration::from_secs(15 * 24 * 3600),
            wal_sync: SyncPolicy::Always,
            wal_segment_size: wal::DEFAULT_SEGMENT_SIZE,
            wal_compression: true,
            external_labels: None,
            thanos_source: "receive".into(),
            too_far_in_future: None,
            clock: Clock::system(),
            retention_hold: RetentionHold::none(),
            ooo_time_window: Duration::ZERO,
            ooo_cap_max: DEFAULT_OOO_CAP_MAX,
            max_exemplars: 0,
            wire_key_cache_bytes: DEFAULT_WIRE_KEY_CACHE_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("block: {0}")]
    Block(#[from] BlockError),
    #[error("chunk: {0}")]
    Chunk(#[from] ChunkError),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid options: {0}")]
    Options(String),
}

/// The first refused sample of a commit (for error messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: RejectReason,
    /// Index of the series in the batch (order of `append` calls).
    pub series_index: usize,
    pub t: i64,
}

/// Result of a commit: counts per outcome.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppendOutcome {
    pub appended: u64,
    /// Same timestamp and identical value as the series' last sample: ignored, not an error.
    pub duplicates_ignored: u64,
    pub out_of_order: u64,
    pub duplicate_timestamp: u64,
    pub out_of_bounds: u64,
    /// Newer than `now + too_far_in_future` (see [`Options::too_far_in_future`]).
    pub too_far_in_future: u64,
    /// Native histograms whose buckets do not match their spans (refused).
    pub invalid_histograms: u64,
    /// Of `appended`, out-of-order samples (see [`Options::ooo_time_window`]).
    pub ooo_appended: u64,
    /// Of `appended`, native histogram samples.
    pub histograms_appended: u64,
    /// Of `duplicates_ignored`, native histogram samples.
    pub histogram_duplicates_ignored: u64,
    /// The newest timestamp accepted by this commit (`i64::MAX` without a limit).
    pub max_valid_time: i64,
    /// Samples sent by ref for a ref the head does not know (any more).
    pub unknown_series: u64,
    /// Samples of series with an empty label set (refused).
    pub invalid_labels: u64,
    pub series_created: u64,
    pub first_rejection: Option<Rejection>,
    /// The head ref of each series of the batch (0 for unknown refs), in batch order.
    pub series_refs: Vec<SeriesRef>,
}

impl AppendOutcome {
    /// Samples refused (all kinds).
    pub fn rejected(&self) -> u64 {
        self.out_of_order
            + self.duplicate_timestamp
            + self.out_of_bounds
            + self.too_far_in_future
            + self.invalid_histograms
            + self.unknown_series
            + self.invalid_labels
    }

    fn count(&mut self, reason: RejectReason, series_index: usize, t: i64) {
        match reason {
            RejectReason::OutOfOrder => self.out_of_order += 1,
            RejectReason::DuplicateTimestamp => self.duplicate_timestamp += 1,
            RejectReason::OutOfBounds => self.out_of_bounds += 1,
            RejectReason::TooFarInFuture => self.too_far_in_future += 1,
            RejectReason::InvalidHistogram => self.invalid_histograms += 1,
        }
        if self.first_rejection.is_none() {
            self.first_rejection = Some(Rejection {
                reason,
                series_index,
                t,
            });
        }
    }
}

#[derive(Default)]
struct CommitBufs {
    frames: Vec<u8>,
    samples: Vec<u8>,
    /// Frames for the write-behind log (out-of-order samples).
    wbl_frames: Vec<u8>,
    wbl_samples: Vec<u8>,
    /// A commit's appended histograms: (series ref, index into the batch's histograms),
    /// integer and float, in order and out of order. Kept between commits: grown from
    /// empty by doubling in each of them, they were a tenth of the receiver's malloc
    /// time with 2,000 histograms per request (issue #20).
    hist_lists: [Vec<(u64, usize)>; 4],
}

struct Inner {
    dir: PathBuf,
    opts: Options,
    range: i64,
    head: Head,
    wal: Arc<Wal>,
    /// The write-behind log of out-of-order samples; present while the window is on or
    /// a previous run left one.
    wbl: Option<Arc<Wal>>,
    /// The out-of-order window in ms (0: off).
    ooo_window: i64,
    exemplars: ExemplarStorage,
    commit: Mutex<CommitBufs>,
    /// Loaded blocks, sorted by min time.
    blocks: RwLock<Vec<Arc<Block>>>,
    compact_lock: Mutex<()>,
    /// The WAL's state at the last block cut (or at open): the next checkpoint replaces
    /// the segments up to it. Keeping one cut's segments lets the checkpoint leave out
    /// every sample written since, which is all of the head in steady state (issue #26).
    last_cut: Mutex<Option<WalCut>>,
    metrics: Metrics,
}

/// A point in the WAL: segments ≤ `seg` hold only samples not newer than `maxt`, the
/// head's newest timestamp when the segment after them was started (appends and cuts
/// both hold the commit lock, so no sample written before the cut is newer).
#[derive(Debug, Clone, Copy)]
struct WalCut {
    seg: u64,
    maxt: i64,
}

/// A time-series database. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("dir", &self.inner.dir).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a block was written from out-of-order samples (it may overlap others).
pub(crate) fn is_ooo_block(b: &Block) -> bool {
    b.meta().compaction.hints.iter().any(|h| h == HINT_FROM_OOO)
}

/// Replays the write-behind log into the series' out-of-order chunks (after the WAL
/// replay created the series) and opens it for appending.
fn open_wbl(
    dir: &Path,
    head: &Head,
    refs: &HashMap<u64, Arc<MemSeries>>,
    opts: &Options,
    metrics: &Metrics,
) -> Result<Arc<Wal>, DbError> {
    let mut rp = OooReplayer {
        head,
        refs,
        cap: opts.ooo_cap_max,
        samples: 0,
        unknown_refs: 0,
        histograms: 0,
    };
    let (report, last_seg) = wal::replay(dir, metrics, &mut |format, payload| {
        match format {
            wal::Format::Prometheus => record::decode(payload, &mut rp),
            wal::Format::OrreryV1 => record::legacy::decode(payload, &mut rp),
        }
        .map_err(|e| e.to_string())
    })?;
    if rp.unknown_refs > 0 || rp.histograms > 0 {
        tracing::warn!(
            unknown_series = rp.unknown_refs,
            invalid_histograms = rp.histograms,
            "write-behind log: samples of unknown series and histograms that do not encode skipped"
        );
    }
    tracing::info!(dir = %dir.display(), samples = rp.samples, segments = report.segments,
        torn_tails = report.torn_tails, corruptions_repaired = report.corruptions_repaired,
        "out-of-order samples replayed from the write-behind log");
    let wbl = Wal::create(
        dir,
        last_seg,
        opts.wal_sync,
        opts.wal_segment_size,
        metrics.clone(),
    )?;
    wbl.set_compression(opts.wal_compression);
    Ok(wbl)
}

/// Applies write-behind-log records: samples into out-of-order chunks.
struct OooReplayer<'a> {
    head: &'a Head,
    refs: &'a HashMap<u64, Arc<MemSeries>>,
    cap: usize,
    samples: u64,
    unknown_refs: u64,
    histograms: u64,
}

impl Visitor for OooReplayer<'_> {
    fn series(&mut self, _r: u64, _labels: Labels) {}
    fn sample(&mut self, r: u64, t: i64, v: f64) {
        let Some(s) = self.refs.get(&r) else {
            self.unknown_refs += 1;
            return;
        };
        if s.lock().insert_ooo(t, v, self.cap) {
            self.head.note_ooo_time(t);
            self.samples += 1;
        }
    }
    fn chunk(&mut self, _r: u64, _min_t: i64, _max_t: i64, _data: &[u8]) {}
    fn histograms(&mut self, samples: Vec<RefHistogramSample>) {
        for x in samples {
            let Some(s) = self.refs.get(&x.r) else {
                self.unknown_refs += 1;
                continue;
            };
            match s.lock().insert_ooo_histogram(x.t, &x.h, self.cap) {
                Ok(true) => {
                    self.head.note_ooo_time(x.t);
                    self.samples += 1;
                }
                Ok(false) => {}
                Err(_) => self.histograms += 1,
            }
        }
    }
}

/// Applies WAL records to the head during replay.
struct Replayer<'a> {
    head: &'a Head,
    exemplars: &'a ExemplarStorage,
    refs: HashMap<u64, Arc<MemSeries>>,
    scratch: Vec<u8>,
    unknown_refs: u64,
    mint: i64,
    maxt: i64,
    error: Option<String>,
    /// Tombstone records (the head does not delete).
    tombstones: u64,
}

impl Replayer<'_> {
    fn add(&mut self, r: u64, t: i64, v: f64) {
        let min_valid = self.head.min_valid_time();
        let Some(s) = self.refs.get(&r) else {
            self.unknown(t, min_valid);
            return;
        };
        let mut d = s.lock();
        if self.head.append_locked(&mut d, t, v, min_valid) == SampleResult::Appended {
            self.mint = self.mint.min(t);
            self.maxt = self.maxt.max(t);
        }
    }
}

impl Replayer<'_> {
    /// A sample whose series record is not in the log. Below the blocks' end that is
    /// expected, not lost: the head dropped the series at a cut after writing the block
    /// (its record left with the segments the checkpoint replaced), and the sample is in
    /// that block.
    fn unknown(&mut self, t: i64, min_valid: i64) {
        if t >= min_valid {
            self.unknown_refs += 1;
        }
    }
}

impl Visitor for Replayer<'_> {
    fn series(&mut self, r: u64, labels: Labels) {
        let s = self.head.replay_series(r, &labels, &mut self.scratch);
        self.refs.insert(r, s);
    }
    fn exemplar(&mut self, r: u64, t: i64, value: f64, labels: Labels) {
        if !self.exemplars.enabled() {
            return;
        }
        let Some(s) = self.refs.get(&r) else {
            return;
        };
        // Refused ones (out of order after a ring that was smaller) are dropped, as
        // Prometheus's replay does.
        let _ = self
            .exemplars
            .add(&s.labels(), Exemplar { labels, value, t });
    }
    fn sample(&mut self, r: u64, t: i64, v: f64) {
        self.add(r, t, v);
    }
    fn skipped(&mut self, what: Skipped) {
        match what {
            Skipped::Tombstones => self.tombstones += 1,
            Skipped::Histograms | Skipped::Other => {}
        }
    }
    fn histograms(&mut self, samples: Vec<RefHistogramSample>) {
        let min_valid = self.head.min_valid_time();
        for x in samples {
            let Some(s) = self.refs.get(&x.r) else {
                self.unknown(x.t, min_valid);
                continue;
            };
            let r = s
                .lock()
                .append_histogram(x.t, &x.h, min_valid, self.head.chunk_range());
            if r == SampleResult::Appended {
                self.mint = self.mint.min(x.t);
                self.maxt = self.maxt.max(x.t);
            }
        }
    }
    fn chunk(&mut self, r: u64, _min_t: i64, _max_t: i64, data: &[u8]) {
        let it = match XorIterator::new(data) {
            Ok(it) => it,
            Err(e) => {
                self.error = Some(e.to_string());
                return;
            }
        };
        for s in it {
            match s {
                Ok((t, v)) => self.add(r, t, v),
                Err(e) => {
                    self.error = Some(e.to_string());
                    return;
                }
            }
        }
    }
}

impl Inner {
    /// `(newest timestamp a commit accepts, now)`: the head's newest timestamp is capped
    /// at `now` where it is a reference. See "Samples in the future" in the module docs.
    fn future_bounds(&self) -> (i64, i64) {
        let now = self.opts.clock.now_ms();
        let limit = match self.opts.too_far_in_future {
            Some(d) => now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            None => i64::MAX,
        };
        (limit, now)
    }
}

impl Db {
    /// Opens (or creates) the database in `dir`: loads blocks, replays the WAL (repairing
    /// damage), registers metrics in `registry` when given.
    pub fn open(
        dir: impl AsRef<Path>,
        opts: Options,
        registry: Option<&mut Registry>,
    ) -> Result<Db, DbError> {
        let dir = dir.as_ref().to_path_buf();
        // Before anything below touches the directory: a Prometheus/Thanos TSDB or a WAL
        // Orrery cannot identify is refused, never "repaired".
        wal::ident::check_db_dir(&dir)?;
        let range = i64::try_from(opts.block_duration.as_millis()).unwrap_or(i64::MAX);
        if range < 1000 {
            return Err(DbError::Options(format!(
                "block duration {:?} is shorter than 1s",
                opts.block_duration
            )));
        }
        if !(1..=255).contains(&opts.ooo_cap_max) {
            return Err(DbError::Options(format!(
                "out-of-order cap-max {} is not between 1 and 255",
                opts.ooo_cap_max
            )));
        }
        let ooo_window = i64::try_from(opts.ooo_time_window.as_millis()).unwrap_or(i64::MAX);
        std::fs::create_dir_all(&dir).map_err(|source| DbError::Io {
            path: dir.clone(),
            source,
        })?;
        let metrics = Metrics::default();
        if let Some(r) = registry {
            metrics.register(r);
        }
        block::remove_tmp_dirs(&dir)?;
        let mut blocks = Vec::new();
        for e in block::list_blocks(&dir)? {
            match Block::open(&e.dir) {
                Ok(b) => blocks.push(Arc::new(b)),
                Err(err) => {
                    tracing::error!(dir = %e.dir.display(), error = %err, "cannot open block; skipping it")
                }
            }
        }
        metrics.blocks_loaded.set(blocks.len() as i64);
        let mut head = Head::new(range, metrics.clone());
        head.set_wire_key_limit(opts.wire_key_cache_bytes);
        // Out-of-order blocks may reach into the head's range: only in-order blocks bound it.
        head.set_min_valid_time(in_order_end(&blocks));

        let exemplars = ExemplarStorage::new(opts.max_exemplars);
        let wal_dir = dir.join("wal");
        let mut rp = Replayer {
            head: &head,
            exemplars: &exemplars,
            refs: HashMap::new(),
            scratch: Vec::new(),
            unknown_refs: 0,
            mint: i64::MAX,
            maxt: i64::MIN,
            error: None,
            tombstones: 0,
        };
        let (report, last_seg) = wal::replay(&wal_dir, &metrics, &mut |format, payload| {
            match format {
                wal::Format::Prometheus => record::decode(payload, &mut rp),
                wal::Format::OrreryV1 => record::legacy::decode(payload, &mut rp),
            }
            .map_err(|e| e.to_string())?;
            match rp.error.take() {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })?;
        head.note_times(rp.mint, rp.maxt);
        if rp.unknown_refs > 0 {
            tracing::warn!(
                samples = rp.unknown_refs,
                "WAL samples for unknown series skipped"
            );
        }
        if rp.tombstones > 0 {
            tracing::warn!(
                records = rp.tombstones,
                "WAL tombstone records ignored: Orrery does not delete series; the samples stay queryable"
            );
        }
        tracing::info!(
            dir = %dir.display(),
            records = report.records,
            segments = report.segments,
            checkpoint = ?report.checkpoint,
            torn_tails = report.torn_tails,
            corruptions_repaired = report.corruptions_repaired,
            series = head.num_series(),
            blocks = blocks.len(),
            "tsdb opened"
        );
        let wbl_dir = dir.join("wbl");
        let wbl = if ooo_window > 0 || wbl_dir.is_dir() {
            Some(open_wbl(&wbl_dir, &head, &rp.refs, &opts, &metrics)?)
        } else {
            None
        };
        let wal = Wal::create(
            &wal_dir,
            last_seg,
            opts.wal_sync,
            opts.wal_segment_size,
            metrics.clone(),
        )?;
        wal.set_compression(opts.wal_compression);
        metrics.head_series.set(head.num_series() as i64);
        // The replayed segments hold nothing newer than the replayed head.
        let last_cut = last_seg.map(|seg| WalCut {
            seg,
            maxt: head.max_time(),
        });
        let db = Db {
            inner: Arc::new(Inner {
                dir,
                opts,
                range,
                head,
                wal,
                wbl,
                ooo_window,
                exemplars,
                commit: Mutex::new(CommitBufs::default()),
                blocks: RwLock::new(blocks),
                compact_lock: Mutex::new(()),
                last_cut: Mutex::new(last_cut),
                metrics,
            }),
        };
        if report.legacy_files > 0
            && let Some(upto) = last_seg
        {
            // Orrery's first WAL format: the head now holds everything it had; a
            // checkpoint in Prometheus's format replaces those files. If it fails (a full
            // disk) they stay and are migrated at the next open.
            match db.checkpoint(upto, i64::MAX) {
                Ok(()) => tracing::info!(
                    files = report.legacy_files,
                    upto,
                    "migrated the WAL from Orrery's first format to Prometheus's"
                ),
                Err(e) => tracing::error!(error = %e, files = report.legacy_files,
                    "cannot migrate the WAL from Orrery's first format yet; it is replayed again at the next open"),
            }
        }
        Ok(db)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn head(&self) -> &Head {
        &self.inner.head
    }

    /// A new, empty append batch.
    pub fn appender(&self) -> Appender<'_> {
        Appender {
            db: self,
            keys: Vec::new(),
            spans: Vec::new(),
            samples: Vec::new(),
            hists: Vec::new(),
            hist: Vec::new(),
            keybuf: Vec::new(),
            cached: SeriesHandles(Vec::new()),
            cached_epoch: None,
            remember: Vec::new(),
        }
    }

    /// Whether a batch's series are worth looking up with [`Db::cached_series_many`]
    /// (and remembering): false when the cache is off, or full and finding fewer than
    /// half of what it is asked (it is tried again after a while). A caller that gets
    /// false parses labels as usual.
    pub fn wire_keys_worth_asking(&self) -> bool {
        self.inner.head.wire_keys_worth_asking()
    }

    /// [`Db::cached_series`] for many keys (one answer per key, in order, appended to
    /// `out`): the lookups of a batch overlap their memory accesses, which one by one
    /// between other work they cannot.
    pub fn cached_series_many(&self, keys: &[WireKey<'_>], out: &mut Vec<Option<CachedSeries>>) {
        let mut found = Vec::with_capacity(keys.len());
        // One batch, one tag (a key of another tag is not found).
        let tag = keys.first().map_or(0, |k| k.tag);
        let epoch = self.inner.head.wire_key_series_many(
            keys.iter().map(|k| (k.hash, k.bytes)),
            tag,
            &mut found,
        );
        let head = self.inner.head.id();
        out.extend(keys.iter().zip(found).map(|(k, s)| {
            s.filter(|_| k.tag == tag).map(|series| CachedSeries {
                series,
                epoch,
                head,
            })
        }));
    }

    /// The series a client's label encoding names, when the head has seen it before
    /// (see [`WireKey`]); add its samples with [`Appender::append_cached`].
    pub fn cached_series(&self, key: &WireKey<'_>) -> Option<CachedSeries> {
        let mut out = Vec::with_capacity(1);
        self.cached_series_many(std::slice::from_ref(key), &mut out);
        out.pop().flatten()
    }

    /// The exemplars kept (see [`Options::max_exemplars`]).
    pub fn exemplars(&self) -> &ExemplarStorage {
        &self.inner.exemplars
    }

    /// Validates and stores exemplars (Prometheus's rules, see [`crate::exemplars`]) and
    /// logs the stored ones to the WAL before returning (the series of an exemplar is
    /// created when missing, as Prometheus's `AppendExemplar` does). Returns each
    /// exemplar's verdict, in order; `Err` when the WAL write failed (the exemplars stay
    /// in memory and their records are written before any later commit).
    pub fn add_exemplars(
        &self,
        items: &[(Labels, Exemplar)],
    ) -> Result<Vec<Result<Added, ExemplarError>>, DbError> {
        let inner = &self.inner;
        let mut verdicts = Vec::with_capacity(items.len());
        if items.is_empty() {
            return Ok(verdicts);
        }
        let pos = {
            let _c = lock(&inner.commit);
            let flushed = inner.wal.flush_pending()?;
            let mut frames = Vec::new();
            let series_frame = wal::start_frame(&mut frames);
            frames.push(record::TYPE_SERIES);
            let mut ex = vec![record::TYPE_EXEMPLARS];
            let mut rec = ExemplarsRecord::default();
            let mut scratch = Vec::new();
            for (series, e) in items {
                let v = inner.exemplars.add(series, e.clone());
                if v == Ok(Added::Stored)
                    && let Some(s) = inner.head.series_for(series, &mut scratch)
                {
                    let mut d = s.lock();
                    if !d.logged {
                        record::put_series(&mut frames, s.sref, series);
                        d.logged = true;
                    }
                    rec.push(&mut ex, s.sref, e.t, e.value, &e.labels);
                }
                verdicts.push(v);
            }
            if !wal::abandon_frame_if_empty(&mut frames, series_frame, 1) {
                wal::finish_frame(&mut frames, series_frame);
            }
            if !rec.is_empty() {
                let at = wal::start_frame(&mut frames);
                frames.extend_from_slice(&ex);
                wal::finish_frame(&mut frames, at);
            }
            if frames.is_empty() {
                flushed
            } else {
                Some(inner.wal.write(&frames)?)
            }
        };
        if let Some(p) = pos {
            inner.wal.commit_sync(p)?;
        }
        Ok(verdicts)
    }

    /// Number of series in the head.
    pub fn head_series(&self) -> usize {
        self.inner.head.num_series()
    }

    fn blocks(&self) -> Vec<Arc<Block>> {
        read_blocks(&self.inner.blocks)
    }

    /// Metas of the loaded blocks, oldest first.
    pub fn block_metas(&self) -> Vec<block::BlockMeta> {
        self.blocks().iter().map(|b| b.meta().clone()).collect()
    }

    /// Oldest sample timestamp (blocks and head); `i64::MAX` when empty.
    pub fn min_time(&self) -> i64 {
        min_time_of(&self.blocks(), &self.inner.head)
    }

    /// The oldest timestamp a query may find here by the time it runs: the oldest stored
    /// sample, or older while a commit may still land below it: an empty head accepts
    /// any time (`i64::MIN`), a young head accepts down to its appendable window's start.
    /// What a StoreAPI advertises as its min time, so a querier that cached it never
    /// prunes samples acknowledged after its last Info call.
    pub fn queryable_min_time(&self) -> i64 {
        let (_, cap) = self.inner.future_bounds();
        let head = &self.inner.head;
        let mut appendable = head.appendable_min(cap).unwrap_or(i64::MIN);
        if self.inner.ooo_window > 0 && head.max_time() != i64::MIN {
            appendable = appendable.min(
                head.max_time()
                    .min(cap)
                    .saturating_sub(self.inner.ooo_window),
            );
        }
        self.min_time().min(appendable)
    }

    /// Newest sample timestamp (blocks and head); `i64::MIN` when empty.
    pub fn max_time(&self) -> i64 {
        max_time_of(&self.blocks(), &self.inner.head)
    }

    /// A querier over the closed interval `[mint, maxt]`.
    pub fn querier(&self, mint: i64, maxt: i64) -> Querier {
        Querier::new(HeadOwner::Db(self.clone()), self.blocks(), mint, maxt)
    }

    /// Compacts the head into blocks while it spans more than 1.5 block durations, then
    /// applies retention. Returns the metas of the blocks written.
    ///
    /// Retention runs even when compaction fails: on a full disk the block write fails,
    /// and deleting blocks past retention is what frees space.
    pub fn compact(&self) -> Result<Vec<block::BlockMeta>, DbError> {
        let _g = lock(&self.inner.compact_lock);
        let compacted = self.compact_head();
        let retained = self.apply_retention();
        let written = compacted?;
        retained?;
        Ok(written)
    }

    /// Whether the head spans more than 1.5 block durations, so [`Db::compact`] would cut
    /// a block now (Prometheus's `compactable`). Cheap: a server may ask every few
    /// seconds and compact as soon as a block is due, as Prometheus does on commit,
    /// instead of holding up to a maintenance interval more of samples in memory.
    pub fn compactable(&self) -> bool {
        let head = &self.inner.head;
        if head.is_empty() {
            return false;
        }
        // Samples in the future do not make current data due (see the module docs).
        let (_, cap) = self.inner.future_bounds();
        let (mint, maxt) = (head.min_time(), head.max_time().min(cap));
        maxt.saturating_sub(mint) > self.inner.range / 2 * 3
    }

    fn compact_head(&self) -> Result<Vec<block::BlockMeta>, DbError> {
        let mut written = Vec::new();
        loop {
            let head = &self.inner.head;
            if !self.compactable() {
                break;
            }
            let mint = head.min_time();
            let aligned = mint.div_euclid(self.inner.range) * self.inner.range;
            let end = aligned.saturating_add(self.inner.range);
            // After a flush the previous block may end inside this range: start there.
            let start = aligned.max(head.min_valid_time());
            written.extend(self.compact_range(start, end)?);
        }
        // Prometheus compacts its out-of-order head whenever it compacted the in-order
        // one.
        if !written.is_empty() {
            written.extend(self.compact_ooo()?);
        }
        Ok(written)
    }

    /// Writes every out-of-order sample into blocks of the block duration's aligned
    /// ranges (hint `from-out-of-order`), then drops them from the head and deletes the
    /// write-behind-log segments that held them. See "Out-of-order samples" in the
    /// module docs. Callers hold the compaction lock.
    fn compact_ooo(&self) -> Result<Vec<block::BlockMeta>, DbError> {
        let inner = &self.inner;
        let Some(wbl) = &inner.wbl else {
            return Ok(Vec::new());
        };
        if inner.head.ooo_min_time() == i64::MAX {
            return Ok(Vec::new());
        }
        // Under the commit lock, so the samples taken are exactly those of the segments
        // cut off (a failed write's frames still pending go to later segments: logged
        // twice, read once).
        let (last_seg, taken) = {
            let _c = lock(&inner.commit);
            let last = wbl.cut_segment()?;
            let mut taken = Vec::new();
            for s in inner.head.ooo_series() {
                let chunks = s.lock().begin_ooo_compaction();
                if !chunks.is_empty() {
                    taken.push((s, chunks));
                }
            }
            (last, taken)
        };
        let mut written = Vec::new();
        let range = inner.range;
        let mut ranges: Vec<i64> = Vec::new();
        for (_, chunks) in &taken {
            for c in chunks {
                let (a, b) = (c.min_time.div_euclid(range), c.max_time.div_euclid(range));
                ranges.extend(a..=b);
            }
        }
        ranges.sort_unstable();
        ranges.dedup();
        let opts = self.block_options(vec![HINT_FROM_OOO.to_string()]);
        for k in ranges {
            let start = k.saturating_mul(range);
            let end = start.saturating_add(range);
            let mut failed = None;
            let series = taken.iter().filter_map(|(s, chunks)| {
                let encoded = crate::head::merge_samples(chunks, start, end - 1)
                    .and_then(|x| crate::head::encode_samples(&x));
                match encoded {
                    Ok(c) if c.is_empty() => None,
                    Ok(c) => Some((s.labels(), c)),
                    Err(e) => {
                        failed.get_or_insert(e);
                        None
                    }
                }
            });
            let mut series = series.peekable();
            if series.peek().is_none() {
                continue;
            }
            let meta = self.write_block(start, end, series, &opts)?;
            if let Some(e) = failed {
                // A head chunk that does not decode is a bug; its samples stay in the
                // head and the write-behind log.
                let _ = block::delete_block(&inner.dir.join(meta.ulid.to_string()));
                inner.metrics.compactions_failed.inc();
                return Err(e.into());
            }
            self.publish_block(&meta)?;
            tracing::info!(ulid = %meta.ulid, mint = start, maxt = end,
                series = meta.stats.num_series, samples = meta.stats.num_samples,
                "wrote out-of-order block");
            inner.metrics.ooo_compactions.inc();
            written.push(meta);
        }
        {
            let _c = lock(&inner.commit);
            for (s, _) in &taken {
                s.lock().end_ooo_compaction();
            }
            inner.head.recompute_ooo_range();
        }
        wbl.remove_segments_upto(last_seg)?;
        Ok(written)
    }

    /// Why WAL writes are failing (the last error), `None` while they succeed.
    pub fn wal_failure(&self) -> Option<String> {
        self.inner
            .wal
            .failure()
            .or_else(|| self.inner.wbl.as_ref().and_then(|w| w.failure()))
    }

    /// While WAL writes are failing, tries the log again (see [`Wal::retry_failed`]);
    /// maintenance calls it so a database recovers without waiting for a client write.
    pub fn retry_wal(&self) -> Result<(), DbError> {
        let _c = lock(&self.inner.commit);
        self.inner.wal.retry_failed()?;
        if let Some(w) = &self.inner.wbl {
            w.retry_failed()?;
        }
        Ok(())
    }

    /// Cuts every sample in the head into blocks (at shutdown, at a hashring hand-off,
    /// in tests); new samples not newer than the newest one flushed are refused
    /// afterwards (Prometheus's out-of-bounds). Appends may go on meanwhile: what they
    /// add after the newest sample seen at the start stays in the head (a flush under
    /// steady writes ends), and each commit lands either in a block or in the head.
    pub fn flush(&self) -> Result<Vec<block::BlockMeta>, DbError> {
        let _g = lock(&self.inner.compact_lock);
        let mut written = Vec::new();
        let until = self.inner.head.max_time();
        while !self.inner.head.is_empty() && self.inner.head.min_time() <= until {
            let mint = self.inner.head.min_time();
            let aligned = mint.div_euclid(self.inner.range) * self.inner.range;
            let start = aligned.max(self.inner.head.min_valid_time());
            // The last block ends just after the newest sample seen at the start.
            let end = (aligned.saturating_add(self.inner.range)).min(until.saturating_add(1));
            written.extend(self.compact_range(start, end)?);
        }
        written.extend(self.compact_ooo()?);
        self.apply_retention()?;
        Ok(written)
    }

    fn compact_range(&self, start: i64, end: i64) -> Result<Option<block::BlockMeta>, DbError> {
        let inner = &self.inner;
        {
            let _c = lock(&inner.commit);
            inner.head.set_min_valid_time(end);
            if end.rem_euclid(inner.range) != 0 {
                // A flush's end is not a chunk boundary: chunks written since the flush
                // read it may hold samples past it, and open chunks could take more.
                inner.head.split_chunks_at(end)?;
            }
        }
        let series = inner.head.sorted_for_block(start, end - 1);
        let res = if !series.iter().any(|s| s.has_chunks_in(start, end - 1)) {
            drop(series);
            None
        } else {
            let opts = self.block_options(Vec::new());
            let mut scratch = crate::head::BlockScratch::default();
            // Labels go to the writer as the head's string ids; `series` keeps every
            // series, and so every id, alive until the block is written.
            let strings = |ids: &[u32]| inner.head.symbol_strings(ids);
            let meta =
                block::BlockWriter::write_with_ids(&inner.dir, start, end, &opts, strings, |w| {
                    series.try_for_each(|s| {
                        s.lend_for_block(start, end - 1, &mut scratch, |ids, chunks| {
                            w.series_ids(ids, chunks)
                        })
                    })
                })
                .map_err(|e| {
                    inner.metrics.compactions_failed.inc();
                    DbError::from(e)
                })?;
            drop(series);
            self.publish_block(&meta)?;
            tracing::info!(ulid = %meta.ulid, mint = start, maxt = end,
                series = meta.stats.num_series, samples = meta.stats.num_samples, "wrote block");
            inner.metrics.compactions.inc();
            Some(meta)
        };
        let prev = {
            let _c = lock(&inner.commit);
            let seg = inner.wal.cut_segment()?;
            let cut = WalCut {
                seg,
                maxt: inner.head.max_time(),
            };
            inner.head.truncate(end);
            lock(&inner.last_cut).replace(cut)
        };
        // The segments up to the previous cut go; those since stay (see `last_cut`).
        if let Some(p) = prev {
            self.checkpoint(p.seg, p.maxt)?;
        }
        Ok(res)
    }

    /// Options of the blocks this database cuts (its external labels and source).
    fn block_options(&self, hints: Vec<String>) -> BlockOptions {
        let o = &self.inner.opts;
        BlockOptions {
            thanos: o
                .external_labels
                .clone()
                .map(|l| ThanosMeta::new(l, o.thanos_source.clone())),
            hints,
            ..BlockOptions::default()
        }
    }

    /// Writes a block under the database's directory, counting a failure.
    fn write_block(
        &self,
        start: i64,
        end: i64,
        series: impl Iterator<Item = (Labels, Vec<Chunk>)>,
        opts: &BlockOptions,
    ) -> Result<block::BlockMeta, DbError> {
        block::BlockWriter::write(&self.inner.dir, start, end, series, opts).map_err(|e| {
            self.inner.metrics.compactions_failed.inc();
            e.into()
        })
    }

    /// Opens a written block and makes it visible to queriers and retention.
    fn publish_block(&self, meta: &block::BlockMeta) -> Result<(), DbError> {
        let inner = &self.inner;
        let b = Block::open(&inner.dir.join(meta.ulid.to_string()))?;
        let mut bl = inner.blocks.write().unwrap_or_else(|e| e.into_inner());
        bl.push(Arc::new(b));
        bl.sort_by_key(|b| b.meta().min_time);
        inner.metrics.blocks_loaded.set(bl.len() as i64);
        Ok(())
    }

    /// Writes the head's state as a WAL checkpoint covering segments ≤ `upto`: what
    /// Prometheus's checkpoint holds, series records then samples records (the head's
    /// samples not newer than `maxt`, the newest those segments can hold: the rest are
    /// in the segments that stay), so Prometheus and `promtool` read it.
    ///
    /// Once it is written, a Prometheus head's `chunks_head/` (left by the Prometheus or
    /// Thanos Receive this directory came from) is removed: its samples are in the head
    /// and now in this checkpoint, and the segments it belonged with are gone, so a
    /// Prometheus started here later must not map those stale chunks onto the series
    /// refs of this WAL.
    fn checkpoint(&self, upto: u64, maxt: i64) -> Result<(), DbError> {
        const TARGET: usize = 1 << 20;
        let mut exemplars = Vec::new();
        let mut scratch = Vec::new();
        self.inner.exemplars.iterate(|series, e| {
            if let Some(s) = self.inner.head.find_series(series, &mut scratch) {
                exemplars.push((s.sref, e.clone()));
            }
        });
        let mut records = CheckpointRecords::new(self.inner.head.all_series(), exemplars, maxt);
        self.inner
            .wal
            .checkpoint(upto, &mut |buf| records.fill(buf, TARGET))?;
        if let Some(e) = records.error {
            // A head chunk that does not decode is a bug; its readable samples are in the
            // checkpoint.
            tracing::error!(error = %e, "a head chunk did not decode while writing the WAL checkpoint");
        }
        self.remove_prometheus_head_chunks();
        Ok(())
    }

    /// See [`Db::checkpoint`].
    fn remove_prometheus_head_chunks(&self) {
        let ch = self.inner.dir.join("chunks_head");
        if ch.is_dir() {
            match std::fs::remove_dir_all(&ch) {
                Ok(()) => tracing::info!(dir = %ch.display(),
                    "removed Prometheus head chunks: their samples are in the WAL checkpoint"),
                Err(e) => tracing::warn!(dir = %ch.display(), error = %e,
                    "cannot remove Prometheus head chunks"),
            }
        }
    }

    /// Deletes blocks whose end lies more than the retention before the newest data.
    pub fn apply_retention(&self) -> Result<usize, DbError> {
        let retention = i64::try_from(self.inner.opts.retention.as_millis()).unwrap_or(i64::MAX);
        if retention <= 0 {
            return Ok(0);
        }
        // A sample in the future must not age every block out (see the module docs).
        let (_, cap) = self.inner.future_bounds();
        let reference = self.max_time().min(cap);
        if reference == i64::MIN {
            return Ok(0);
        }
        let doomed: Vec<Arc<Block>> = {
            let mut bl = self.inner.blocks.write().unwrap_or_else(|e| e.into_inner());
            let hold = &self.inner.opts.retention_hold;
            let (old, keep): (Vec<_>, Vec<_>) = bl.drain(..).partition(|b| {
                let expired = reference.saturating_sub(b.meta().max_time) >= retention;
                if expired && hold.holds(b.meta()) {
                    tracing::debug!(ulid = %b.meta().ulid, "block past retention kept: held (not uploaded yet)");
                    return false;
                }
                expired
            });
            *bl = keep;
            self.inner.metrics.blocks_loaded.set(bl.len() as i64);
            old
        };
        for b in &doomed {
            block::delete_block(b.dir())?;
            tracing::info!(ulid = %b.meta().ulid, max_time = b.meta().max_time, "deleted block past retention");
            self.inner.metrics.blocks_deleted_by_retention.inc();
        }
        Ok(doomed.len())
    }

    /// Fsyncs the WAL and refuses further appends (shutdown). Everything acknowledged is
    /// on disk after this returns.
    pub fn close(&self) -> Result<(), DbError> {
        let _c = lock(&self.inner.commit);
        self.inner.wal.close()?;
        if let Some(w) = &self.inner.wbl {
            w.close()?;
        }
        Ok(())
    }
}

/// A client's own encoding of a series' labels, byte for byte (e.g. the label fields
/// of a remote-write `TimeSeries`), under which the head remembers the series once its
/// labels were accepted (see [`Appender::append_pairs_remembered`]). The same label set
/// may have several encodings; each is its own key. `tag` names the rules the caller
/// accepted the labels under (a key remembered under another tag is not found).
#[derive(Debug, Clone, Copy)]
pub struct WireKey<'a> {
    bytes: &'a [u8],
    hash: u64,
    tag: u64,
}

impl<'a> WireKey<'a> {
    pub fn new(bytes: &'a [u8], tag: u64) -> WireKey<'a> {
        WireKey {
            bytes,
            hash: crate::head::wire_hash(bytes),
            tag,
        }
    }
}

/// A series found by [`Db::cached_series`].
#[derive(Debug, Clone)]
pub struct CachedSeries {
    series: Arc<MemSeries>,
    /// The head's epoch the lookup was valid in.
    epoch: u64,
    /// The head it was found in ([`Head::id`]), so a series is checked against another
    /// head without reading the series itself.
    head: u64,
}

/// A batch of samples for several series, applied by [`Appender::commit`].
pub struct Appender<'a> {
    db: &'a Db,
    keys: Vec<SeriesKey<'a>>,
    /// `[start, end)` into `samples` per key.
    spans: Vec<(u32, u32)>,
    samples: Vec<(i64, f64)>,
    /// Native histogram samples; a key whose `hist` flag is set spans these.
    hists: Vec<HistogramSample>,
    hist: Vec<bool>,
    /// Series keys of the batch, back to back.
    keybuf: Vec<u8>,
    /// Series found through the wire-key cache ([`SeriesKey::Cached`] indexes these),
    /// and the head epoch they were found in (`u64::MAX`: several, or another head's).
    cached: SeriesHandles<Arc<MemSeries>>,
    cached_epoch: Option<u64>,
    /// Wire keys to remember once their series are resolved, by key index.
    remember: Vec<(u32, WireKey<'a>)>,
}

impl<'a> Appender<'a> {
    /// Adds samples (in time order) for the series `labels`. Labels are hashed here, in
    /// the caller's thread; they are copied only if the series is new.
    pub fn append(&mut self, labels: &'a Labels, samples: &[Sample]) {
        let k = labels_key(labels, &mut self.keybuf);
        let h = key_hash(&self.keybuf[k.0 as usize..]);
        self.push(
            SeriesKey::Labels(h, labels, k),
            samples.iter().map(|s| (s.t, s.v)),
        );
    }

    /// Adds samples (in time order) for the series named by borrowed label pairs, which
    /// must be sorted by name, with unique names and non-empty values (as in a valid
    /// [`Labels`]). Nothing is allocated per series unless the series is new: the pairs
    /// are hashed here, in the caller's thread, and looked up in the head's index.
    pub fn append_pairs<'l>(
        &mut self,
        labels: impl IntoIterator<Item = (&'l str, &'l str)>,
        samples: &[Sample],
    ) {
        let start = self.keybuf.len();
        for (n, v) in labels {
            self.keybuf.extend_from_slice(n.as_bytes());
            self.keybuf.push(0xff);
            self.keybuf.extend_from_slice(v.as_bytes());
            self.keybuf.push(0xff);
        }
        let end = self.keybuf.len();
        let h = key_hash(&self.keybuf[start..end]);
        self.push(
            SeriesKey::Key(h, (start as u32, end as u32)),
            samples.iter().map(|s| (s.t, s.v)),
        );
    }

    /// Makes room for `series` more series with `samples` samples and `key_bytes` of
    /// label text (names and values plus two bytes per label), so a batch whose size the
    /// caller already knows is not copied through repeated growth.
    pub fn reserve(&mut self, series: usize, samples: usize, key_bytes: usize) {
        self.keys.reserve(series);
        self.spans.reserve(series);
        self.hist.reserve(series);
        // Series found through the wire-key cache: in the steady state, all of them
        // (their handles grew by doubling, a few of the receiver's mallocs per request).
        self.cached.reserve(series);
        self.samples.reserve(samples);
        self.keybuf.reserve(key_bytes);
    }

    /// As [`Appender::append_pairs`], and once committed the head remembers `key` for
    /// the series (the caller has accepted these labels under `key`'s tag).
    pub fn append_pairs_remembered<'l>(
        &mut self,
        key: WireKey<'a>,
        labels: impl IntoIterator<Item = (&'l str, &'l str)>,
        samples: &[Sample],
    ) {
        self.remember.push((self.keys.len() as u32, key));
        self.append_pairs(labels, samples);
    }

    /// Adds samples (in time order) for a series found by [`Db::cached_series`]. If the
    /// head removed the series meanwhile, the commit finds or creates it again by its
    /// labels: nothing is lost.
    pub fn append_cached(&mut self, c: CachedSeries, samples: &[Sample]) {
        let key = self.cached_key(c);
        self.push(key, samples.iter().map(|s| (s.t, s.v)));
    }

    /// [`Appender::append_cached`] for native histogram samples (after the series'
    /// floats of the batch, as [`Appender::append_histogram_pairs`]).
    pub fn append_histograms_cached(
        &mut self,
        c: CachedSeries,
        samples: impl IntoIterator<Item = HistogramSample>,
    ) {
        let key = self.cached_key(c);
        self.push_histograms(key, samples);
    }

    /// As [`Appender::append_histogram_pairs`], remembering `key` for the series once
    /// committed (see [`Appender::append_pairs_remembered`]).
    pub fn append_histogram_pairs_remembered<'l>(
        &mut self,
        key: WireKey<'a>,
        labels: impl IntoIterator<Item = (&'l str, &'l str)>,
        samples: impl IntoIterator<Item = HistogramSample>,
    ) {
        self.remember.push((self.keys.len() as u32, key));
        self.append_histogram_pairs(labels, samples);
    }

    fn cached_key(&mut self, c: CachedSeries) -> SeriesKey<'a> {
        // A series of another database's head (a caller's mistake) is looked up here
        // by its labels, as a removed one is.
        let epoch = if c.head == self.db.inner.head.id() {
            c.epoch
        } else {
            u64::MAX
        };
        // Series found in different epochs: all are checked at commit.
        self.cached_epoch = Some(match self.cached_epoch {
            Some(e) if e != epoch => u64::MAX,
            _ => epoch,
        });
        let i = self.cached.len() as u32;
        self.cached.push(c.series);
        SeriesKey::Cached(i)
    }

    /// Adds one sample for `labels`.
    pub fn append_one(&mut self, labels: &'a Labels, t: i64, v: f64) {
        let k = labels_key(labels, &mut self.keybuf);
        let h = key_hash(&self.keybuf[k.0 as usize..]);
        self.push(SeriesKey::Labels(h, labels, k), std::iter::once((t, v)));
    }

    /// Adds samples for a series by head ref (from an earlier [`AppendOutcome`]). A ref
    /// the head no longer knows counts its samples as `unknown_series`.
    pub fn append_ref(&mut self, r: SeriesRef, samples: &[Sample]) {
        self.push(SeriesKey::Ref(r), samples.iter().map(|s| (s.t, s.v)));
    }

    fn push(&mut self, key: SeriesKey<'a>, samples: impl Iterator<Item = (i64, f64)>) {
        let start = self.samples.len() as u32;
        self.samples.extend(samples);
        self.keys.push(key);
        self.spans.push((start, self.samples.len() as u32));
        self.hist.push(false);
    }

    /// Adds native histogram samples (in time order) for the series named by borrowed
    /// label pairs (as [`Appender::append_pairs`]). A series' float samples of the same
    /// batch should be added first: the head, and the WAL replay, apply floats before
    /// histograms (Prometheus's commit order).
    pub fn append_histogram_pairs<'l>(
        &mut self,
        labels: impl IntoIterator<Item = (&'l str, &'l str)>,
        samples: impl IntoIterator<Item = HistogramSample>,
    ) {
        let start = self.keybuf.len();
        for (n, v) in labels {
            self.keybuf.extend_from_slice(n.as_bytes());
            self.keybuf.push(0xff);
            self.keybuf.extend_from_slice(v.as_bytes());
            self.keybuf.push(0xff);
        }
        let end = self.keybuf.len();
        let h = key_hash(&self.keybuf[start..end]);
        self.push_histograms(SeriesKey::Key(h, (start as u32, end as u32)), samples);
    }

    /// Adds native histogram samples (in time order) for `labels`.
    pub fn append_histograms(
        &mut self,
        labels: &'a Labels,
        samples: impl IntoIterator<Item = HistogramSample>,
    ) {
        let k = labels_key(labels, &mut self.keybuf);
        let h = key_hash(&self.keybuf[k.0 as usize..]);
        self.push_histograms(SeriesKey::Labels(h, labels, k), samples);
    }

    fn push_histograms(
        &mut self,
        key: SeriesKey<'a>,
        samples: impl IntoIterator<Item = HistogramSample>,
    ) {
        let start = self.hists.len() as u32;
        self.hists.extend(samples);
        self.keys.push(key);
        self.spans.push((start, self.hists.len() as u32));
        self.hist.push(true);
    }

    /// Samples in the batch (floats and histograms).
    pub fn len(&self) -> usize {
        self.samples.len() + self.hists.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty() && self.hists.is_empty()
    }

    /// Applies the batch; see the module documentation for the guarantees.
    pub fn commit(mut self) -> Result<AppendOutcome, DbError> {
        let r = self.commit_batch();
        // Integer histograms go back to the per-thread pool the remote-write decoder
        // takes them from (`storeapi::histogram::pool`): the head keeps copies.
        for s in self.hists.drain(..) {
            if let HistogramValue::Int(h) = s.h {
                storeapi::histogram::pool::give(h);
            }
        }
        r
    }

    fn commit_batch(&self) -> Result<AppendOutcome, DbError> {
        let inner = &self.db.inner;
        let head = &inner.head;
        let mut out = AppendOutcome::default();
        if self.keys.is_empty() {
            return Ok(out);
        }
        let mut resolved = SeriesHandles(Vec::with_capacity(self.keys.len()));
        let mut bmin = i64::MAX;
        let mut bmax = i64::MIN;
        // Look series up before taking the commit lock, so concurrent committers do not
        // queue behind each other's index lookups; redo it if series were removed since.
        let epoch = head.epoch();
        // Cached series found before a removal are checked against the head.
        let verify = self.cached_epoch.is_some_and(|e| e != epoch);
        head.resolve(
            &self.keys,
            &self.keybuf,
            &self.cached,
            verify,
            &mut resolved,
        );
        let pos = {
            let mut bufs = lock(&inner.commit);
            let CommitBufs {
                frames,
                samples,
                wbl_frames,
                wbl_samples,
                hist_lists,
            } = &mut *bufs;
            // Records of an earlier failed commit are in the head already: they reach the
            // log before this commit changes anything (a retry of them is all duplicates).
            let flushed = inner.wal.flush_pending()?;
            let wbl_flushed = match &inner.wbl {
                Some(w) => w.flush_pending()?,
                None => None,
            };
            if head.epoch() != epoch {
                resolved.clear();
                head.resolve(&self.keys, &self.keybuf, &self.cached, true, &mut resolved);
            }
            out.series_created =
                head.create_missing(&self.keys, &self.keybuf, &self.cached, &mut resolved);
            if let Some((_, first)) = self.remember.first() {
                head.remember_wire_keys(
                    first.tag,
                    self.remember.iter().filter_map(|(i, k)| {
                        if k.tag != first.tag {
                            return None;
                        }
                        let s = resolved.get(*i as usize)?.as_ref()?;
                        Some((k.hash, k.bytes, &**s))
                    }),
                );
            }
            // One window for the whole batch, fixed before appending (Prometheus's
            // appender); on an empty head it starts at the batch's first sample.
            let (max_valid, cap) = inner.future_bounds();
            out.max_valid_time = max_valid;
            let mut min_valid = head.appendable_min(cap);
            // Out-of-order samples not older than this are accepted: fixed once per
            // commit from the head's newest timestamp (capped at now) or, on an empty
            // head, from the batch's first sample, as Prometheus's appender does.
            let mut ooo_min = (head.max_time() != i64::MIN)
                .then(|| head.max_time().min(cap).saturating_sub(inner.ooo_window));
            let ooo_cap = inner.opts.ooo_cap_max;
            let mut ooo_rec = SamplesRecord::default();
            wbl_frames.clear();
            wbl_samples.clear();
            wbl_samples.push(record::TYPE_SAMPLES);
            frames.clear();
            samples.clear();
            let series_frame = wal::start_frame(frames);
            frames.push(record::TYPE_SERIES);
            samples.push(record::TYPE_SAMPLES);
            let mut rec = SamplesRecord::default();
            let mut newly_logged: Vec<&Arc<MemSeries>> = Vec::new();
            // Appended histograms: (series ref, index into `hists`), by flavour; and
            // those taken out of order.
            hist_lists.iter_mut().for_each(Vec::clear);
            let [int_hists, float_hists, ooo_int_hists, ooo_float_hists] = hist_lists;
            out.series_refs.reserve(self.keys.len());
            let mut window = crate::head::LockWindow::new();
            for (i, (s, &(a, b))) in resolved.iter().zip(&self.spans).enumerate() {
                let held = window.advance(
                    |k| resolved.get(k)?.as_deref().map(|s| &**s),
                    |k| self.hist.get(k).is_some_and(|h| *h),
                    i,
                );
                crate::head::prefetch_incoming_ahead(
                    |k| {
                        let &(a, b) = self.spans.get(k)?;
                        let hist = self.hist.get(k).is_some_and(|h| *h);
                        hist.then(|| self.hists.get(a as usize..b as usize))?
                    },
                    i,
                );
                let Some(s) = s else {
                    match self.keys[i] {
                        SeriesKey::Labels(..) | SeriesKey::Key(..) => {
                            out.invalid_labels += (b - a) as u64
                        }
                        SeriesKey::Ref(_) | SeriesKey::Cached(_) => {
                            out.unknown_series += (b - a) as u64
                        }
                    }
                    out.series_refs.push(0);
                    continue;
                };
                out.series_refs.push(s.sref);
                let mut d = match held {
                    Some(d) => d,
                    None => window.lock(s),
                };
                if !d.logged {
                    record::put_series(frames, s.sref, &s.labels());
                    d.logged = true;
                    newly_logged.push(s);
                }
                if self.hist[i] {
                    for (k, x) in self.hists[a as usize..b as usize].iter().enumerate() {
                        let t = x.t;
                        if t > max_valid {
                            out.count(RejectReason::TooFarInFuture, i, t);
                            continue;
                        }
                        let mv = *min_valid.get_or_insert_with(|| head.window_from(t.min(cap)));
                        let om = *ooo_min
                            .get_or_insert_with(|| t.min(cap).saturating_sub(inner.ooo_window));
                        match d.append_histogram(t, &x.h, mv, head.chunk_range()) {
                            SampleResult::Appended => {
                                let list = match x.h {
                                    HistogramValue::Int(_) => &mut *int_hists,
                                    HistogramValue::Float(_) => &mut *float_hists,
                                };
                                if list.capacity() == 0 {
                                    list.reserve(self.hists.len());
                                }
                                list.push((s.sref, a as usize + k));
                                out.histograms_appended += 1;
                                bmin = bmin.min(t);
                                bmax = bmax.max(t);
                            }
                            SampleResult::DuplicateIgnored => {
                                out.duplicates_ignored += 1;
                                out.histogram_duplicates_ignored += 1;
                            }
                            SampleResult::Rejected(
                                RejectReason::OutOfOrder | RejectReason::OutOfBounds,
                            ) if inner.ooo_window > 0 && t >= om => {
                                match d.insert_ooo_histogram(t, &x.h, ooo_cap) {
                                    Ok(true) => {
                                        let list = match x.h {
                                            HistogramValue::Int(_) => &mut *ooo_int_hists,
                                            HistogramValue::Float(_) => &mut *ooo_float_hists,
                                        };
                                        list.push((s.sref, a as usize + k));
                                        head.note_ooo_time(t);
                                        out.histograms_appended += 1;
                                        out.ooo_appended += 1;
                                    }
                                    Ok(false) => {
                                        out.duplicates_ignored += 1;
                                        out.histogram_duplicates_ignored += 1;
                                    }
                                    Err(_) => out.count(RejectReason::InvalidHistogram, i, t),
                                }
                            }
                            SampleResult::Rejected(r) => out.count(r, i, t),
                        }
                    }
                    continue;
                }
                let mut n = 0u64;
                for &(t, v) in &self.samples[a as usize..b as usize] {
                    if t > max_valid {
                        out.count(RejectReason::TooFarInFuture, i, t);
                        continue;
                    }
                    let mv = *min_valid.get_or_insert_with(|| head.window_from(t.min(cap)));
                    let om =
                        *ooo_min.get_or_insert_with(|| t.min(cap).saturating_sub(inner.ooo_window));
                    match head.append_locked(&mut d, t, v, mv) {
                        SampleResult::Appended => {
                            rec.push(samples, s.sref, t, v);
                            n += 1;
                            bmin = bmin.min(t);
                            bmax = bmax.max(t);
                        }
                        SampleResult::DuplicateIgnored => out.duplicates_ignored += 1,
                        SampleResult::Rejected(
                            RejectReason::OutOfOrder | RejectReason::OutOfBounds,
                        ) if inner.ooo_window > 0 && t >= om => {
                            if d.insert_ooo(t, v, ooo_cap) {
                                ooo_rec.push(wbl_samples, s.sref, t, v);
                                head.note_ooo_time(t);
                                out.ooo_appended += 1;
                                n += 1;
                            } else {
                                out.duplicates_ignored += 1;
                            }
                        }
                        SampleResult::Rejected(r) => out.count(r, i, t),
                    }
                }
                out.appended += n;
            }
            drop(window);
            if !wal::abandon_frame_if_empty(frames, series_frame, 1) {
                wal::finish_frame(frames, series_frame);
            }
            if !rec.is_empty() {
                let at = wal::start_frame(frames);
                frames.extend_from_slice(samples);
                wal::finish_frame(frames, at);
            }
            out.appended += out.histograms_appended;
            let mut wbl_hists = false;
            for (list, float, wbl) in [
                (&*int_hists, false, false),
                (&*float_hists, true, false),
                (&*ooo_int_hists, false, true),
                (&*ooo_float_hists, true, true),
            ] {
                if list.is_empty() {
                    continue;
                }
                let dst: &mut Vec<u8> = if wbl { wbl_frames } else { frames };
                let before = dst.len();
                record::put_histogram_frames(
                    dst,
                    list.iter()
                        .map(|&(r, k)| (r, self.hists[k].t, &self.hists[k].h)),
                    float,
                );
                wbl_hists |= wbl && dst.len() > before;
            }
            let pos = if frames.is_empty() {
                Ok(flushed)
            } else {
                inner.wal.write(frames).map(Some)
            };
            if pos.is_err() {
                for s in newly_logged {
                    s.lock().logged = false;
                }
            }
            // Out-of-order samples go to the write-behind log even when the WAL write
            // failed: they are in the head, and a failed write keeps its frames for the
            // next one, so they are logged before any later commit is acknowledged.
            let wpos = match &inner.wbl {
                Some(wbl) if !ooo_rec.is_empty() || wbl_hists => {
                    if !ooo_rec.is_empty() {
                        let at = wal::start_frame(wbl_frames);
                        wbl_frames.extend_from_slice(wbl_samples);
                        wal::finish_frame(wbl_frames, at);
                    }
                    wbl.write(wbl_frames).map(Some)
                }
                _ => Ok(wbl_flushed),
            };
            head.note_times(bmin, bmax);
            (pos?, wpos?)
        };
        let m = &inner.metrics;
        m.samples_appended.inc_by(out.appended);
        m.ooo_samples_appended.inc_by(out.ooo_appended);
        m.rejected(RejectReason::OutOfOrder, out.out_of_order);
        m.rejected(RejectReason::DuplicateTimestamp, out.duplicate_timestamp);
        m.rejected(RejectReason::OutOfBounds, out.out_of_bounds);
        m.rejected(RejectReason::TooFarInFuture, out.too_far_in_future);
        m.rejected(RejectReason::InvalidHistogram, out.invalid_histograms);
        if let Some(p) = pos.0 {
            inner.wal.commit_sync(p)?;
        }
        if let (Some(p), Some(wbl)) = (pos.1, &inner.wbl) {
            wbl.commit_sync(p)?;
        }
        Ok(out)
    }
}

/// One series of a select: labels and its chunks (oldest first), whole chunks that
/// overlap the query range (samples outside it may be included: trim when iterating).
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesChunks {
    pub labels: Labels,
    pub chunks: Vec<Chunk>,
}

impl SeriesChunks {
    /// Decoded samples within `[mint, maxt]`, in time order.
    pub fn samples(&self, mint: i64, maxt: i64) -> Result<Vec<Sample>, ChunkError> {
        samples_in_range(&self.chunks, mint, maxt)
    }

    /// Decoded native histogram samples within `[mint, maxt]`, in time order.
    pub fn histograms(&self, mint: i64, maxt: i64) -> Result<Vec<HistogramSample>, ChunkError> {
        histograms_in_range(&self.chunks, mint, maxt)
    }
}

/// Decodes the float samples of XOR chunks, keeping those in `[mint, maxt]`, in time
/// order; overlapping chunks are unioned, each timestamp once (the chunk that starts
/// first wins). Native
/// histogram chunks are left out: see [`histograms_in_range`].
pub fn samples_in_range(chunks: &[Chunk], mint: i64, maxt: i64) -> Result<Vec<Sample>, ChunkError> {
    let xor = |c: &&Chunk| {
        c.encoding == crate::chunk::Encoding::Xor && c.max_time >= mint && c.min_time <= maxt
    };
    let mut sel: Vec<&Chunk> = chunks.iter().filter(xor).collect();
    sel.sort_by_key(|c| c.min_time);
    if sel.windows(2).any(|w| w[1].min_time <= w[0].max_time) {
        // Overlapping chunks (out-of-order samples, a block and the head): their union,
        // each timestamp once.
        return Ok(crate::head::merge_samples(sel, mint, maxt)?
            .into_iter()
            .filter_map(|(t, v)| match v {
                crate::head::Value::Float(v) => Some(Sample { t, v }),
                crate::head::Value::Histogram(_) => None,
            })
            .collect());
    }
    let mut out = Vec::with_capacity(chunks.iter().map(Chunk::num_samples).sum());
    let mut last = i64::MIN;
    for c in chunks {
        if c.max_time < mint || c.min_time > maxt || c.encoding != crate::chunk::Encoding::Xor {
            continue;
        }
        crate::chunk::xor::for_each_sample(&c.data, |t, v| {
            if t > maxt {
                return ControlFlow::Break(());
            }
            if t >= mint && (t > last || out.is_empty()) {
                out.push(Sample { t, v });
                last = t;
            }
            ControlFlow::Continue(())
        })?;
    }
    Ok(out)
}

/// Decodes the native histogram samples of histogram chunks (either flavour) in
/// `[mint, maxt]`, in time order; XOR chunks are left out.
pub fn histograms_in_range(
    chunks: &[Chunk],
    mint: i64,
    maxt: i64,
) -> Result<Vec<HistogramSample>, ChunkError> {
    let hist = |c: &&Chunk| {
        c.encoding != crate::chunk::Encoding::Xor && c.max_time >= mint && c.min_time <= maxt
    };
    let mut sel: Vec<&Chunk> = chunks.iter().filter(hist).collect();
    sel.sort_by_key(|c| c.min_time);
    if sel.windows(2).any(|w| w[1].min_time <= w[0].max_time) {
        // Overlapping chunks (out-of-order samples): their union, each timestamp once.
        return Ok(crate::head::merge_samples(sel, mint, maxt)?
            .into_iter()
            .filter_map(|(t, v)| match v {
                crate::head::Value::Histogram(h) => Some(HistogramSample { t, h }),
                crate::head::Value::Float(_) => None,
            })
            .collect());
    }
    let mut out: Vec<HistogramSample> = Vec::new();
    for c in sel {
        for x in c.iter_histograms()? {
            let x = x?;
            if x.t >= mint && x.t <= maxt && out.last().is_none_or(|l| x.t > l.t) {
                out.push(x);
            }
        }
    }
    Ok(out)
}

/// Oldest sample timestamp of `blocks` and `head`; `i64::MAX` when empty.
pub(crate) fn min_time_of(blocks: &[Arc<Block>], head: &Head) -> i64 {
    let b = blocks
        .iter()
        .map(|b| b.meta().min_time)
        .min()
        .unwrap_or(i64::MAX);
    b.min(head.min_time()).min(head.ooo_min_time())
}

/// Newest sample timestamp of `blocks` and `head`; `i64::MIN` when empty.
pub(crate) fn max_time_of(blocks: &[Arc<Block>], head: &Head) -> i64 {
    let b = blocks
        .iter()
        .map(|b| b.meta().max_time - 1)
        .max()
        .unwrap_or(i64::MIN);
    b.max(head.max_time())
}

/// The end of the newest in-order block (`i64::MIN` without one): the head holds
/// nothing older that is not in blocks. Out-of-order blocks do not count: they may
/// reach into the head's range.
pub(crate) fn in_order_end(blocks: &[Arc<Block>]) -> i64 {
    blocks
        .iter()
        .filter(|b| !is_ooo_block(b))
        .map(|b| b.meta().max_time)
        .max()
        .unwrap_or(i64::MIN)
}

/// The blocks loaded now (a poisoned lock still holds a valid list).
pub(crate) fn read_blocks(blocks: &RwLock<Vec<Arc<Block>>>) -> Vec<Arc<Block>> {
    blocks.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// What keeps a querier's head alive: a database, or a follower of a Prometheus data
/// directory ([`crate::follow`]).
pub(crate) enum HeadOwner {
    Db(Db),
    Follower(crate::follow::Follower),
}

impl HeadOwner {
    fn head(&self) -> &Head {
        match self {
            HeadOwner::Db(db) => &db.inner.head,
            HeadOwner::Follower(f) => f.head(),
        }
    }
}

/// Reads a consistent view of blocks and head over `[mint, maxt]`.
pub struct Querier {
    head: HeadOwner,
    blocks: Vec<Arc<Block>>,
    head_mint: i64,
    mint: i64,
    maxt: i64,
}

impl Querier {
    /// A view of `blocks` (all loaded now) and `head` over `[mint, maxt]`.
    pub(crate) fn new(head: HeadOwner, blocks: Vec<Arc<Block>>, mint: i64, maxt: i64) -> Querier {
        // Head chunks older than the newest block end are already in blocks (visible
        // between a block's publication and the head's truncation): skip them.
        let blocks_end = in_order_end(&blocks);
        // Out-of-order samples are in the head until written into blocks, at any time.
        let head_mint = mint.max(blocks_end.min(head.head().ooo_min_time()));
        let blocks = blocks
            .into_iter()
            .filter(|b| b.overlaps(mint, maxt))
            .collect();
        Querier {
            head,
            blocks,
            head_mint,
            mint,
            maxt,
        }
    }

    pub fn mint(&self) -> i64 {
        self.mint
    }

    pub fn maxt(&self) -> i64 {
        self.maxt
    }

    /// Series matching all `matchers` with data in range, sorted by labels, with raw
    /// chunks merged across blocks and head (oldest first).
    pub fn select(&self, matchers: &[Matcher]) -> Result<Vec<SeriesChunks>, DbError> {
        let mut parts: Vec<Vec<(Labels, Vec<Chunk>)>> = Vec::with_capacity(self.blocks.len() + 1);
        for b in &self.blocks {
            parts.push(b.select(matchers, self.mint, self.maxt)?);
        }
        if self.head_mint <= self.maxt {
            parts.push(self.head.head().select(matchers, self.head_mint, self.maxt));
        }
        Ok(merge_sorted(parts))
    }

    /// The selection read lazily, when only the head holds data in range (no block
    /// overlaps it); `None` otherwise (use [`Querier::select`]).
    pub fn select_lazy(&self, matchers: &[Matcher]) -> Option<crate::head::LazySelect> {
        if !self.blocks.is_empty() {
            return None;
        }
        let head = self.head.head();
        if self.head_mint > self.maxt {
            return Some(crate::head::LazySelect::default());
        }
        Some(head.select_lazy(matchers, self.head_mint, self.maxt))
    }

    /// Whether any head series has a label named `name` (any value).
    pub fn head_has_label(&self, name: &str) -> bool {
        self.head.head().has_label(name)
    }

    /// Like [`Querier::select`] but with decoded samples trimmed to the range.
    pub fn select_samples(
        &self,
        matchers: &[Matcher],
    ) -> Result<Vec<(Labels, Vec<Sample>)>, DbError> {
        let mut out = Vec::new();
        for s in self.select(matchers)? {
            let samples = s.samples(self.mint, self.maxt)?;
            if !samples.is_empty() {
                out.push((s.labels, samples));
            }
        }
        Ok(out)
    }

    /// Sorted label names of series matching `matchers` (all series when empty).
    pub fn label_names(&self, matchers: &[Matcher]) -> Result<Vec<String>, DbError> {
        let mut set = std::collections::BTreeSet::new();
        for b in &self.blocks {
            set.extend(b.label_names(matchers)?);
        }
        if self.head_mint <= self.maxt {
            set.extend(
                self.head
                    .head()
                    .label_names(matchers, self.head_mint, self.maxt),
            );
        }
        Ok(set.into_iter().collect())
    }

    /// Sorted values of label `name` among series matching `matchers`.
    pub fn label_values(&self, name: &str, matchers: &[Matcher]) -> Result<Vec<String>, DbError> {
        let mut set = std::collections::BTreeSet::new();
        for b in &self.blocks {
            set.extend(b.label_values(name, matchers)?);
        }
        if self.head_mint <= self.maxt {
            set.extend(
                self.head
                    .head()
                    .label_values(name, matchers, self.head_mint, self.maxt),
            );
        }
        Ok(set.into_iter().collect())
    }
}

/// Merges lists sorted by labels (given oldest source first) into one sorted list,
/// concatenating the chunks of equal label sets in source order.
fn merge_sorted(parts: Vec<Vec<(Labels, Vec<Chunk>)>>) -> Vec<SeriesChunks> {
    let mut parts: Vec<_> = parts.into_iter().filter(|p| !p.is_empty()).collect();
    if parts.len() == 1 {
        return parts
            .pop()
            .unwrap_or_default()
            .into_iter()
            .map(|(labels, chunks)| SeriesChunks { labels, chunks })
            .collect();
    }
    let mut all: Vec<(Labels, usize, Vec<Chunk>)> = Vec::new();
    for (src, p) in parts.into_iter().enumerate() {
        all.extend(p.into_iter().map(|(l, c)| (l, src, c)));
    }
    all.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut out: Vec<SeriesChunks> = Vec::new();
    for (labels, _, chunks) in all {
        match out.last_mut() {
            Some(last) if last.labels == labels => last.chunks.extend(chunks),
            _ => out.push(SeriesChunks { labels, chunks }),
        }
    }
    for s in &mut out {
        s.chunks.sort_by_key(|c| c.min_time);
    }
    out
}

// `Db` is shared across threads and tokio tasks.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Db>();
    assert_send_sync::<Querier>();
};

#[cfg(test)]
#[path = "db_wal_fault_tests.rs"]
mod wal_fault_tests;

#[cfg(test)]
#[path = "db_wal_format_tests.rs"]
mod wal_format_tests;

#[cfg(test)]
#[path = "db_wire_key_tests.rs"]
mod wire_key_tests;
