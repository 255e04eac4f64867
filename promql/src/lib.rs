//! PromQL engine over a storage trait, with Prometheus 3.5 semantics.
