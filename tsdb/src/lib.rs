//! Storage engine: head, WAL, chunks, blocks, compaction, retention and the series index.
//!
//! The on-disk layout is Prometheus's (block directories with `meta.json`, `index`,
//! `chunks/`, `tombstones`), so Prometheus's and Thanos's tools can read our blocks.
//!
//! ```no_run
//! use storeapi::{Labels, MatchOp, Matcher, Sample};
//! use tsdb::{Db, Options, SyncPolicy};
//!
//! let db = Db::open("/tmp/data", Options { wal_sync: SyncPolicy::Always, ..Options::default() }, None)?;
//! let up = Labels::from_pairs([("__name__", "up"), ("job", "a")]).unwrap();
//! let mut app = db.appender();
//! app.append(&up, &[Sample { t: 1000, v: 1.0 }]);
//! let outcome = app.commit()?; // durable when it returns (SyncPolicy::Always)
//! assert_eq!(outcome.rejected(), 0);
//!
//! let q = db.querier(0, 2000);
//! let m = [Matcher::new(MatchOp::Equal, "__name__", "up").unwrap()];
//! for s in q.select(&m)? {
//!     let _raw_chunks = &s.chunks; // XOR chunks, for the StoreAPI
//!     let _samples = s.samples(q.mint(), q.maxt())?;
//! }
//! db.compact()?; // cut 2h blocks when due, checkpoint the WAL, apply retention
//! db.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod block;
mod checkpoint;
pub use chunkenc as chunk;
pub mod db;
pub mod exemplars;
pub mod follow;
#[cfg(feature = "frames")]
pub mod frames;
pub mod head;
pub mod heap;
pub mod metadata;
pub mod metrics;
pub mod postings;
pub mod wal;

pub use chunk::{Chunk, ChunkError, Encoding, XorChunk, XorIterator};
pub use db::{
    AppendOutcome, Appender, CachedSeries, Clock, DEFAULT_WIRE_KEY_CACHE_BYTES, Db, DbError,
    Options, Querier, Rejection, RetentionHold, SeriesChunks, WireKey, histograms_in_range,
    samples_in_range,
};
pub use metrics::{Metrics, RejectReason};
pub use postings::SeriesRef;
pub use wal::SyncPolicy;
