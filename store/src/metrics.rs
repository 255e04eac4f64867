//! The gateway's own metrics (bucket operation metrics come from `objstore`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug)]
pub struct StoreMetrics {
    /// Blocks seen by the last sync, by state (Thanos's names).
    pub meta_synced: Family<StateLabel, Gauge>,
    pub syncs: Counter,
    pub sync_failures: Counter,
    pub blocks_loaded: Gauge,
    pub index_downloads: Counter,
    pub chunk_cache_hits: Counter,
    pub chunk_cache_misses: Counter,
    pub bytes_fetched: Counter,
    /// Bucket bytes fetched per Series call.
    pub bytes_per_query: Histogram,
    pub series_limited: Counter,
    /// Block reads that failed inside a request (bucket unreachable, object missing,
    /// corrupt index or chunks); the log line names the block.
    pub block_read_failures: Counter,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            meta_synced: Family::default(),
            syncs: Counter::default(),
            sync_failures: Counter::default(),
            blocks_loaded: Gauge::default(),
            index_downloads: Counter::default(),
            chunk_cache_hits: Counter::default(),
            chunk_cache_misses: Counter::default(),
            bytes_fetched: Counter::default(),
            bytes_per_query: Histogram::new(exponential_buckets(1024.0, 4.0, 12)),
            series_limited: Counter::default(),
            block_read_failures: Counter::default(),
        }
    }
}

impl StoreMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "thanos_blocks_meta_synced",
            "Number of block metadata synced, by state",
            self.meta_synced.clone(),
        );
        r.register(
            "thanos_blocks_meta_syncs",
            "Total blocks metadata synchronization attempts",
            self.syncs.clone(),
        );
        r.register(
            "thanos_blocks_meta_sync_failures",
            "Total blocks metadata synchronization failures",
            self.sync_failures.clone(),
        );
        r.register(
            "thanos_bucket_store_blocks_loaded",
            "Number of currently loaded blocks",
            self.blocks_loaded.clone(),
        );
        r.register(
            "orrery_store_index_downloads",
            "Block indexes downloaded into --data-dir (first use of a block)",
            self.index_downloads.clone(),
        );
        r.register(
            "orrery_store_chunk_cache_hits",
            "Chunk cache hits",
            self.chunk_cache_hits.clone(),
        );
        r.register(
            "orrery_store_chunk_cache_misses",
            "Chunk cache misses",
            self.chunk_cache_misses.clone(),
        );
        r.register(
            "orrery_store_chunk_bytes_fetched",
            "Chunk bytes fetched from the bucket",
            self.bytes_fetched.clone(),
        );
        r.register(
            "orrery_store_series_fetched_bytes_per_query",
            "Bucket bytes fetched by one Series call",
            self.bytes_per_query.clone(),
        );
        r.register(
            "orrery_store_series_requests_limited",
            "Series calls refused by a limit",
            self.series_limited.clone(),
        );
        r.register(
            "orrery_store_block_read_failures",
            "Block reads that failed in a request (the log names the block)",
            self.block_read_failures.clone(),
        );
    }
}
