//! The compactor's metrics, with Thanos's names so existing dashboards and alerts
//! (`thanos_compact_halted`, `thanos_compact_todo_*`) work unchanged.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MarkLabels {
    pub marker: String,
    pub reason: String,
}

/// Thanos's `resolution` label of the downsample metrics: the *input* block's
/// resolution in milliseconds ("0" for raw → 5m, "300000" for 5m → 1h).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResolutionLabels {
    pub resolution: String,
}

impl ResolutionLabels {
    pub fn of(input_resolution: i64) -> Self {
        ResolutionLabels {
            resolution: input_resolution.to_string(),
        }
    }
}

/// Thanos's buckets for `thanos_compact_downsample_duration_seconds` (1m … 4h).
fn downsample_duration_histogram() -> Histogram {
    Histogram::new([60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0])
}

#[derive(Clone)]
pub struct CompactMetrics {
    pub iterations: Counter,
    pub retries: Counter,
    pub halted: Gauge,
    pub group_compactions: Family<GroupLabels, Counter>,
    pub group_compaction_failures: Family<GroupLabels, Counter>,
    pub group_vertical_compactions: Family<GroupLabels, Counter>,
    pub blocks_marked: Family<MarkLabels, Counter>,
    pub garbage_collected_blocks: Counter,
    pub blocks_cleaned: Counter,
    pub block_cleanup_failures: Counter,
    pub aborted_partial_uploads_deletion_attempts: Counter,
    pub todo_compactions: Gauge,
    pub todo_compaction_blocks: Gauge,
    pub todo_deletion_blocks: Gauge,
    pub todo_downsample_blocks: Gauge,
    pub duplicate_samples_dropped: Counter,
    pub downsamples: Family<ResolutionLabels, Counter>,
    pub downsample_failures: Family<ResolutionLabels, Counter>,
    pub downsample_duration: Family<ResolutionLabels, Histogram, fn() -> Histogram>,
}

impl Default for CompactMetrics {
    fn default() -> Self {
        CompactMetrics {
            iterations: Default::default(),
            retries: Default::default(),
            halted: Default::default(),
            group_compactions: Default::default(),
            group_compaction_failures: Default::default(),
            group_vertical_compactions: Default::default(),
            blocks_marked: Default::default(),
            garbage_collected_blocks: Default::default(),
            blocks_cleaned: Default::default(),
            block_cleanup_failures: Default::default(),
            aborted_partial_uploads_deletion_attempts: Default::default(),
            todo_compactions: Default::default(),
            todo_compaction_blocks: Default::default(),
            todo_deletion_blocks: Default::default(),
            todo_downsample_blocks: Default::default(),
            duplicate_samples_dropped: Default::default(),
            downsamples: Default::default(),
            downsample_failures: Default::default(),
            downsample_duration: Family::new_with_constructor(downsample_duration_histogram),
        }
    }
}

impl CompactMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "thanos_compact_iterations",
            "Total number of iterations that were executed successfully.",
            self.iterations.clone(),
        );
        r.register(
            "thanos_compact_retries",
            "Total number of retries after a retriable compaction error.",
            self.retries.clone(),
        );
        r.register(
            "thanos_compact_halted",
            "Set to 1 if the compactor halted due to an unexpected error. Orrery never halts the whole bucket: blocks it cannot compact are marked no-compact instead.",
            self.halted.clone(),
        );
        r.register(
            "thanos_compact_group_compactions",
            "Total number of group compaction attempts that resulted in a new block.",
            self.group_compactions.clone(),
        );
        r.register(
            "thanos_compact_group_compactions_failures",
            "Total number of failed group compactions.",
            self.group_compaction_failures.clone(),
        );
        r.register(
            "thanos_compact_group_vertical_compactions",
            "Total number of group compaction attempts that resulted in a new block based on overlapping blocks.",
            self.group_vertical_compactions.clone(),
        );
        r.register(
            "thanos_compact_blocks_marked",
            "Total number of blocks marked in compactor.",
            self.blocks_marked.clone(),
        );
        r.register(
            "thanos_compact_garbage_collected_blocks",
            "Total number of blocks marked for deletion by compactor.",
            self.garbage_collected_blocks.clone(),
        );
        r.register(
            "thanos_compact_blocks_cleaned",
            "Total number of blocks deleted in compactor.",
            self.blocks_cleaned.clone(),
        );
        r.register(
            "thanos_compact_block_cleanup_failures",
            "Failures encountered while deleting blocks in compactor.",
            self.block_cleanup_failures.clone(),
        );
        r.register(
            "thanos_compact_aborted_partial_uploads_deletion_attempts",
            "Total number of started deletions of blocks that are assumed aborted and only partially uploaded.",
            self.aborted_partial_uploads_deletion_attempts.clone(),
        );
        r.register(
            "thanos_compact_todo_compactions",
            "The number of planned compactions.",
            self.todo_compactions.clone(),
        );
        r.register(
            "thanos_compact_todo_compaction_blocks",
            "The number of blocks planned to be merged.",
            self.todo_compaction_blocks.clone(),
        );
        r.register(
            "thanos_compact_todo_deletion_blocks",
            "The number of blocks that are marked for deletion and wait for --delete-delay.",
            self.todo_deletion_blocks.clone(),
        );
        r.register(
            "thanos_compact_todo_downsample_blocks",
            "The number of blocks waiting to be downsampled in this pass.",
            self.todo_downsample_blocks.clone(),
        );
        r.register(
            "orrery_compact_duplicate_samples_dropped",
            "Samples dropped by vertical compaction because another block held the identical sample (replica deduplication).",
            self.duplicate_samples_dropped.clone(),
        );
        r.register(
            "thanos_compact_downsample",
            "Total number of downsampling attempts.",
            self.downsamples.clone(),
        );
        r.register(
            "thanos_compact_downsample_failures",
            "Total number of failed downsampling attempts.",
            self.downsample_failures.clone(),
        );
        r.register(
            "thanos_compact_downsample_duration_seconds",
            "Duration of downsample runs",
            self.downsample_duration.clone(),
        );
    }

    pub fn marked(&self, marker: &str, reason: &str) {
        self.blocks_marked
            .get_or_create(&MarkLabels {
                marker: marker.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }
}
