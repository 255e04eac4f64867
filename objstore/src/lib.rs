//! Object storage for Orrery, compatible with Thanos's buckets.
//!
//! - [`config`]: Thanos's `--objstore.config` YAML (S3, GCS, AZURE, FILESYSTEM; `prefix`).
//! - [`bucket`]: [`Bucket`], the operations every component needs, on the `object_store`
//!   crate, with Thanos's `thanos_objstore_bucket_*` metrics.
//! - [`block`]: uploading a TSDB block in Thanos's layout (`meta.json` last) and
//!   downloading one.
//! - [`hash`]: Thanos's `--hash-func` (SHA-256 of chunk segments and index in
//!   `thanos.files`).
//! - [`markers`]: Thanos's `deletion-mark.json`, `no-compact-mark.json`,
//!   `no-downsample-mark.json`.
//! - [`discovery`]: a bucket's complete blocks with their markers, partial uploads and
//!   unreadable metas; the hiding of compacted sources.
//! - [`upload`], [`verify`], [`inspect`]: `orrery tools bucket upload-blocks`, `verify`,
//!   `ls`/`inspect` (bringing a Prometheus data dir in, checking a bucket, listing it).
//! - [`shipper`]: uploading a TSDB directory's new blocks, oldest first, with
//!   `thanos.shipper.json` as a cache and a retention hold for blocks not shipped yet.
//!
//! The bucket layout is Thanos's: one `<ULID>/` directory per block at the top level
//! (under `prefix` if set), tenants told apart by the external labels in `meta.json`.

pub mod block;
pub mod bucket;
pub mod config;
pub mod crashpoint;
pub mod discovery;
pub mod hash;
pub mod inspect;
pub mod markers;
pub mod relabel;
pub mod shipper;
pub mod upload;
pub mod verify;

pub use bucket::{Bucket, BucketError, BucketMetrics, ObjectAttributes};
pub use config::{BucketConfig, ConfigError, Provider};
pub use discovery::{BlockEntry, Discovery, MetaFetcher};
pub use hash::HashFunc;
pub use markers::{DeletionMark, Marker, MarkerError, NoCompactMark, NoDownsampleMark};
pub use relabel::{RelabelError, Selector};
pub use shipper::{Shipper, ShipperError, SyncReport};
