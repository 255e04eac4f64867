//! Storage engine: head, WAL, chunks, blocks, compaction, retention and the series index.
