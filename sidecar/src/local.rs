//! `--tsdb.local-read`: the StoreAPI served from Prometheus's data directory instead of
//! its remote-read API.
//!
//! Remote read makes Prometheus sort and frame every selection, which costs it about
//! three times its own evaluation of a query over many series. Read locally, a
//! `Series` call costs Prometheus nothing: its blocks are opened where they lie and its
//! head is rebuilt from its WAL as Prometheus writes it ([`tsdb::follow`]), then
//! served exactly as a receiver serves its own database ([`tsdb::frames`]).
//!
//! The cost is memory: about one Orrery head for the series in Prometheus's head. The
//! sidecar must see the data directory (the same volume, read-only is enough). Before
//! every call the follower catches up with what Prometheus wrote, so an answer holds
//! every sample Prometheus had logged when the call arrived, as remote read would.

use std::collections::BTreeSet;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use storeapi::wire::thanos::SeriesRequest;
use storeapi::{Labels, Matcher};
use tokio::sync::watch;
use tonic::Status;
use tsdb::follow::{FollowError, FollowStats, Follower};
use tsdb::frames::{self, Selection};

/// How often the directory is read when no call asks: keeps the head's memory to what
/// Prometheus holds (a new block truncates it) and the next call's catch-up short.
pub const CATCH_UP_INTERVAL: Duration = Duration::from_secs(1);

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// What following shows on `/metrics`.
#[derive(Clone, Default)]
struct LocalMetrics {
    head_series: Gauge,
    blocks: Gauge,
    samples: Counter,
    unknown: Counter,
    damaged: Counter,
    checkpoints: Counter,
    missed: Counter,
    failures: Counter,
    /// The stats the counters were last moved to (catch-ups run concurrently).
    last: std::sync::Arc<std::sync::Mutex<FollowStats>>,
}

impl LocalMetrics {
    fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("orrery_sidecar_local_read");
        r.register(
            "head_series",
            "Series in the head rebuilt from Prometheus's WAL",
            self.head_series.clone(),
        );
        r.register(
            "blocks",
            "Prometheus blocks served from the data directory",
            self.blocks.clone(),
        );
        r.register(
            "samples",
            "Samples and histograms read from Prometheus's WAL into the head",
            self.samples.clone(),
        );
        r.register(
            "unknown_series_samples",
            "WAL samples newer than the blocks whose series record was never read (a WAL segment deleted unread, or damage)",
            self.unknown.clone(),
        );
        r.register(
            "damaged_regions",
            "Damaged WAL regions skipped",
            self.damaged.clone(),
        );
        r.register(
            "checkpoints",
            "WAL checkpoints read",
            self.checkpoints.clone(),
        );
        r.register(
            "segments_missed",
            "WAL segments deleted before they were read with no checkpoint covering them",
            self.missed.clone(),
        );
        r.register(
            "failures",
            "Catch-ups that could not read the data directory",
            self.failures.clone(),
        );
    }

    /// Moves the counters to `now` (what following has read in all).
    fn update(&self, now: &FollowStats, head_series: usize) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        self.head_series
            .set(i64::try_from(head_series).unwrap_or(i64::MAX));
        self.blocks
            .set(i64::try_from(now.blocks).unwrap_or(i64::MAX));
        self.samples
            .inc_by(now.samples.saturating_sub(last.samples));
        self.unknown
            .inc_by(now.unknown_series.saturating_sub(last.unknown_series));
        self.damaged
            .inc_by(now.damaged.saturating_sub(last.damaged));
        self.checkpoints
            .inc_by(now.checkpoints.saturating_sub(last.checkpoints));
        self.missed
            .inc_by(now.segments_missed.saturating_sub(last.segments_missed));
        // Counts only grow: a catch-up that finished after a later one reports less.
        if now.records >= last.records {
            *last = now.clone();
        }
    }
}

/// A followed Prometheus data directory.
#[derive(Clone)]
pub struct LocalRead {
    follower: Follower,
    metrics: LocalMetrics,
}

impl LocalRead {
    /// Reads the directory whole (blocks, WAL checkpoint and segments); blocking. Its
    /// metrics go into `registry`.
    pub fn open(
        dir: &std::path::Path,
        block_duration: Duration,
        registry: &mut Registry,
    ) -> Result<LocalRead, FollowError> {
        let range = i64::try_from(block_duration.as_millis()).unwrap_or(i64::MAX);
        let follower = Follower::open(dir, range)?;
        let st = follower.stats();
        tracing::info!(dir = %dir.display(), series = follower.head_series(),
            blocks = st.blocks, records = st.records, samples = st.samples,
            "local read: Prometheus's data directory loaded");
        let metrics = LocalMetrics::default();
        metrics.update(&st, follower.head_series());
        metrics.register(registry);
        Ok(LocalRead { follower, metrics })
    }

    /// The oldest sample held (`i64::MAX` when none).
    pub fn min_time(&self) -> i64 {
        self.follower.min_time()
    }

    /// Reads what Prometheus wrote since the last call; blocking. A directory that can
    /// no longer be read fails the call: an answer missing what Prometheus holds must
    /// not look complete.
    fn catch_up(&self) -> Result<(), Status> {
        self.follow().map_err(|e| {
            Status::unavailable(format!(
                "local read: cannot read Prometheus's data directory {}: {e}",
                self.follower.dir().display()
            ))
        })
    }

    /// One catch-up, counted; blocking.
    fn follow(&self) -> Result<(), FollowError> {
        match self.follower.catch_up() {
            Ok(now) => {
                self.metrics.update(&now, self.follower.head_series());
                Ok(())
            }
            Err(e) => {
                self.metrics.failures.inc();
                Err(e)
            }
        }
    }

    /// A `Series` selection over `matchers` (external-label ones already decided and
    /// removed); blocking.
    pub fn select(
        &self,
        matchers: &[Matcher],
        req: &SeriesRequest,
        ext: &Labels,
    ) -> Result<Selection, Status> {
        self.catch_up()?;
        let q = self.follower.querier(req.min_time, req.max_time);
        let limit = usize::try_from(req.limit.max(0)).unwrap_or(usize::MAX);
        frames::select_one(&q, matchers, ext, &req.without_replica_labels, limit).map_err(internal)
    }

    /// Label names of series matching `matchers` in `[start, end]`, with the external
    /// label names when any series matches (Thanos), `without` removed; blocking.
    pub fn label_names(
        &self,
        matchers: &[Matcher],
        (start, end): (i64, i64),
        ext: &Labels,
        without: &[String],
    ) -> Result<Vec<String>, Status> {
        self.catch_up()?;
        let q = self.follower.querier(start, end);
        let names = q.label_names(matchers).map_err(internal)?;
        let mut set: BTreeSet<String> = names.into_iter().collect();
        if !set.is_empty() {
            set.extend(ext.iter().map(|l| l.name.to_string()));
        }
        Ok(set.into_iter().filter(|n| !without.contains(n)).collect())
    }

    /// Values of `name` among series matching `matchers`; an external label's value
    /// when any series matches; blocking.
    pub fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        (start, end): (i64, i64),
        ext: &Labels,
    ) -> Result<Vec<String>, Status> {
        self.catch_up()?;
        let q = self.follower.querier(start, end);
        if let Some(v) = ext.get(name) {
            let any = !q.label_names(matchers).map_err(internal)?.is_empty();
            return Ok(if any { vec![v.to_string()] } else { Vec::new() });
        }
        q.label_values(name, matchers).map_err(internal)
    }

    /// Catches up every [`CATCH_UP_INTERVAL`] until `stop`.
    pub async fn follow_loop(self, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CATCH_UP_INTERVAL) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let l = self.clone();
            match tokio::task::spawn_blocking(move || l.follow()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "local read: cannot read Prometheus's data directory")
                }
                Err(e) => tracing::error!(error = %e, "local read: catch-up task failed"),
            }
        }
    }
}
