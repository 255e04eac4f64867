//! Self-metrics, registered in a caller's `prometheus-client` registry.
//!
//! Several databases (one per tenant) can share one registry by each registering under
//! `registry.sub_registry_with_label(("tenant", …))`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a sample was refused by the appender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum RejectReason {
    OutOfOrder,
    DuplicateTimestamp,
    OutOfBounds,
    /// Newer than the clock plus the too-far-in-future limit.
    TooFarInFuture,
    /// A native histogram whose buckets do not match its spans (callers validate
    /// before appending; this guards the chunk encoder).
    InvalidHistogram,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: RejectReason,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    pub head_series: Gauge,
    pub head_series_created: Counter,
    pub head_series_removed: Counter,
    pub samples_appended: Counter,
    /// Of `samples_appended`, out-of-order samples (inside the out-of-order window).
    pub ooo_samples_appended: Counter,
    /// Out-of-order blocks written (Prometheus's out-of-order compaction).
    pub ooo_compactions: Counter,
    pub samples_rejected: Family<ReasonLabel, Counter>,
    pub wal_fsync_duration: Histogram,
    pub wal_corruptions_repaired: Counter,
    pub wal_torn_tails: Counter,
    pub wal_bytes_written: Counter,
    /// Failed WAL writes (ENOSPC, EIO, short writes); each was cut back or moved past.
    pub wal_write_errors: Counter,
    /// 1 while the last WAL write failed and no later one succeeded (disk full): commits
    /// are refused until a write succeeds again.
    pub wal_write_failing: Gauge,
    pub wal_checkpoints: Counter,
    /// WAL records replay skipped because Orrery's head cannot hold them (native
    /// histogram samples from a Prometheus WAL).
    pub blocks_loaded: Gauge,
    pub compactions: Counter,
    pub compactions_failed: Counter,
    pub blocks_deleted_by_retention: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            head_series: Gauge::default(),
            head_series_created: Counter::default(),
            head_series_removed: Counter::default(),
            samples_appended: Counter::default(),
            ooo_samples_appended: Counter::default(),
            ooo_compactions: Counter::default(),
            samples_rejected: Family::default(),
            wal_fsync_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            wal_corruptions_repaired: Counter::default(),
            wal_torn_tails: Counter::default(),
            wal_bytes_written: Counter::default(),
            wal_write_errors: Counter::default(),
            wal_write_failing: Gauge::default(),
            wal_checkpoints: Counter::default(),
            blocks_loaded: Gauge::default(),
            compactions: Counter::default(),
            compactions_failed: Counter::default(),
            blocks_deleted_by_retention: Counter::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `tsdb_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("tsdb");
        r.register(
            "head_series",
            "Series in the head",
            self.head_series.clone(),
        );
        r.register(
            "head_series_created",
            "Series created in the head",
            self.head_series_created.clone(),
        );
        r.register(
            "head_series_removed",
            "Series removed from the head by garbage collection",
            self.head_series_removed.clone(),
        );
        r.register(
            "head_samples_appended",
            "Samples appended to the head",
            self.samples_appended.clone(),
        );
        r.register(
            "head_out_of_order_samples_appended",
            "Out-of-order samples appended to the head (inside --tsdb.out-of-order.time-window)",
            self.ooo_samples_appended.clone(),
        );
        r.register(
            "out_of_order_compactions",
            "Blocks written from out-of-order samples",
            self.ooo_compactions.clone(),
        );
        r.register(
            "head_samples_rejected",
            "Samples refused by the appender, by reason",
            self.samples_rejected.clone(),
        );
        r.register(
            "wal_fsync_duration_seconds",
            "Duration of WAL fsyncs",
            self.wal_fsync_duration.clone(),
        );
        r.register(
            "wal_corruptions_repaired",
            "Damaged WAL regions found on replay (valid records after them are replayed; a damaged tail of the last segment is cut off)",
            self.wal_corruptions_repaired.clone(),
        );
        r.register(
            "wal_torn_tails",
            "Torn (partially written) WAL tail records cut off on replay",
            self.wal_torn_tails.clone(),
        );
        r.register(
            "wal_bytes_written",
            "Bytes written to the WAL",
            self.wal_bytes_written.clone(),
        );
        r.register(
            "wal_write_errors",
            "Failed WAL writes (the torn tail is cut back before the next write)",
            self.wal_write_errors.clone(),
        );
        r.register(
            "wal_write_failing",
            "1 while WAL writes fail (e.g. disk full) and commits are refused",
            self.wal_write_failing.clone(),
        );
        r.register(
            "wal_checkpoints",
            "WAL checkpoints written",
            self.wal_checkpoints.clone(),
        );
        r.register("blocks_loaded", "Blocks loaded", self.blocks_loaded.clone());
        r.register(
            "compactions",
            "Head compactions into blocks",
            self.compactions.clone(),
        );
        r.register(
            "compactions_failed",
            "Failed head compactions",
            self.compactions_failed.clone(),
        );
        r.register(
            "blocks_deleted_by_retention",
            "Blocks deleted because they are older than the retention time",
            self.blocks_deleted_by_retention.clone(),
        );
    }

    pub fn rejected(&self, reason: RejectReason, n: u64) {
        if n > 0 {
            self.samples_rejected
                .get_or_create(&ReasonLabel { reason })
                .inc_by(n);
        }
    }
}
