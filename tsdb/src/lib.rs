//! Storage engine: head, WAL, chunks, blocks, compaction, retention and the series index.
//!
//! The on-disk layout is Prometheus's (block directories with `meta.json`, `index`,
//! `chunks/`, `tombstones`), so Prometheus's and Thanos's tools can read our blocks.

pub mod block;
pub mod chunk;
pub mod db;
pub mod head;
pub mod metrics;
pub mod postings;
pub mod wal;

pub use chunk::{Chunk, ChunkError, Encoding, XorChunk, XorIterator};
pub use db::{
    AppendOutcome, Appender, Db, DbError, Options, Querier, Rejection, SeriesChunks,
    samples_in_range,
};
pub use metrics::{Metrics, RejectReason};
pub use postings::SeriesRef;
pub use wal::SyncPolicy;
