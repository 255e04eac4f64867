//! PromQL engine over a storage trait, with Prometheus 3.5 semantics.
//!
//! The engine never knows where series come from: `tsdb` (through an adapter in the
//! services) and the querier's StoreAPI fan-out implement [`Storage`].

pub mod storage;
pub mod value;

pub use storage::{MemStorage, SelectHints, SelectResult, Storage, StorageError, StorageSeries};
pub use value::{QueryResult, Value};
