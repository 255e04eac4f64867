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

/// Kind of bucket data a query fetched (Thanos's `data_type`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DataTypeLabel {
    pub data_type: String,
}

/// Index cache item (Thanos's `item_type`: `Postings`, `Series`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ItemTypeLabel {
    pub item_type: String,
}

/// Which in-memory cache (`chunks`, `index`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabel {
    pub cache: String,
}

#[derive(Clone, Debug)]
pub struct StoreMetrics {
    /// Blocks seen by the last sync, by state (Thanos's names).
    pub meta_synced: Family<StateLabel, Gauge>,
    pub syncs: Counter,
    pub sync_failures: Counter,
    pub blocks_loaded: Gauge,
    /// Index-headers built from the bucket (first use of a block, or a bad file).
    pub header_builds: Counter,
    /// Index-header files found bad on disk (then rebuilt).
    pub header_rebuilds: Counter,
    /// Series entries longer than the estimated size, fetched again.
    pub series_refetches: Counter,
    /// Reads answered with a remembered index failure (no bucket fetch).
    pub remembered_failures: Counter,
    pub index_cache_requests: Family<ItemTypeLabel, Counter>,
    pub index_cache_hits: Family<ItemTypeLabel, Counter>,
    /// Bucket bytes fetched by requests, by data type.
    pub fetched_bytes: Family<DataTypeLabel, Counter>,
    /// Bucket bytes fetched by one request, by data type.
    pub fetched_bytes_per_query: Family<DataTypeLabel, Histogram>,
    pub chunk_cache_hits: Counter,
    /// Items (postings, series, chunks) a request took from a concurrent request's
    /// fetch instead of fetching them itself.
    pub shared_fetches: Counter,
    pub chunk_cache_misses: Counter,
    pub bytes_fetched: Counter,
    /// Bucket bytes fetched per Series call.
    pub bytes_per_query: Histogram,
    pub series_limited: Counter,
    /// Block reads that failed inside a request (bucket unreachable, object missing,
    /// corrupt index or chunks); the log line names the block.
    pub block_read_failures: Counter,
    /// Bytes each cache holds (what its limit counts), set after every `Series` call.
    pub cache_bytes: Family<CacheLabel, Gauge>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            meta_synced: Family::default(),
            syncs: Counter::default(),
            sync_failures: Counter::default(),
            blocks_loaded: Gauge::default(),
            header_builds: Counter::default(),
            header_rebuilds: Counter::default(),
            series_refetches: Counter::default(),
            remembered_failures: Counter::default(),
            index_cache_requests: Family::default(),
            index_cache_hits: Family::default(),
            fetched_bytes: Family::default(),
            fetched_bytes_per_query: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(256.0, 4.0, 14))
            }),
            chunk_cache_hits: Counter::default(),
            shared_fetches: Counter::default(),
            chunk_cache_misses: Counter::default(),
            bytes_fetched: Counter::default(),
            bytes_per_query: Histogram::new(exponential_buckets(1024.0, 4.0, 12)),
            series_limited: Counter::default(),
            block_read_failures: Counter::default(),
            cache_bytes: Family::default(),
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
            "orrery_store_index_header_builds",
            "Index-headers built from the bucket into --data-dir (first use of a block)",
            self.header_builds.clone(),
        );
        r.register(
            "orrery_store_index_header_rebuilds",
            "Index-header files found bad on disk and rebuilt",
            self.header_rebuilds.clone(),
        );
        r.register(
            "thanos_bucket_store_series_refetches",
            "Series entries longer than the estimated size, fetched again",
            self.series_refetches.clone(),
        );
        r.register(
            "orrery_store_remembered_block_failures",
            "Block reads answered with a remembered index failure instead of fetching again",
            self.remembered_failures.clone(),
        );
        r.register(
            "thanos_store_index_cache_requests",
            "Index cache lookups, by item type",
            self.index_cache_requests.clone(),
        );
        r.register(
            "thanos_store_index_cache_hits",
            "Index cache hits, by item type",
            self.index_cache_hits.clone(),
        );
        r.register(
            "orrery_store_bucket_fetched_bytes",
            "Bytes fetched from the bucket by requests, by data type (postings, series, chunks)",
            self.fetched_bytes.clone(),
        );
        r.register(
            "thanos_bucket_store_series_data_size_fetched_bytes",
            "Bytes fetched from the bucket by one request, by data type",
            self.fetched_bytes_per_query.clone(),
        );
        r.register(
            "orrery_store_chunk_cache_hits",
            "Chunk cache hits",
            self.chunk_cache_hits.clone(),
        );
        r.register(
            "orrery_store_shared_fetches",
            "Index items and chunks a request took from a concurrent request's bucket fetch instead of fetching them again",
            self.shared_fetches.clone(),
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
        r.register(
            "orrery_store_cache_bytes",
            "Bytes held by the in-memory chunk and index caches (their values' segments and their hash tables), as their size limits count them",
            self.cache_bytes.clone(),
        );
    }

    /// Records what the caches hold.
    pub fn observe_caches(&self, chunks: usize, index: usize) {
        for (cache, n) in [("chunks", chunks), ("index", index)] {
            self.cache_bytes
                .get_or_create(&CacheLabel {
                    cache: cache.into(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

impl StoreMetrics {
    pub fn index_cache_hit(&self, item: &str) {
        let l = ItemTypeLabel {
            item_type: item.into(),
        };
        self.index_cache_requests.get_or_create(&l).inc();
        self.index_cache_hits.get_or_create(&l).inc();
    }

    pub fn index_cache_miss(&self, item: &str) {
        self.index_cache_requests
            .get_or_create(&ItemTypeLabel {
                item_type: item.into(),
            })
            .inc();
    }

    /// Records what one request fetched from the bucket.
    pub fn observe_fetched(&self, f: &crate::block::Fetched) {
        use std::sync::atomic::Ordering::Relaxed;
        for (kind, n) in [
            ("postings", f.postings.load(Relaxed)),
            ("series", f.series.load(Relaxed)),
            ("chunks", f.chunks.load(Relaxed)),
        ] {
            let l = DataTypeLabel {
                data_type: kind.into(),
            };
            self.fetched_bytes.get_or_create(&l).inc_by(n);
            self.fetched_bytes_per_query
                .get_or_create(&l)
                .observe(n as f64);
        }
        self.bytes_fetched.inc_by(f.chunks.load(Relaxed));
        self.bytes_per_query.observe(f.total() as f64);
    }
}
