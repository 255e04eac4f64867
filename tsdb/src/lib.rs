//! Storage engine: head, WAL, chunks, blocks, compaction, retention and the series index.
//!
//! The on-disk layout is Prometheus's (block directories with `meta.json`, `index`,
//! `chunks/`, `tombstones`), so Prometheus's and Thanos's tools can read our blocks.

pub mod chunk;
