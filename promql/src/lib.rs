//! PromQL engine over a storage trait, with Prometheus 3.5 semantics.
//!
//! The engine never knows where series come from: `tsdb` (through an adapter in the
//! services) and the querier's StoreAPI fan-out implement [`Storage`].
//!
//! A query runs in two phases: [`engine`] walks the AST to find each selector's time
//! range and selects its series (async), then `eval` evaluates the tree step by step
//! (plain synchronous code).

mod aggregate;
mod binop;
pub mod engine;
mod eval;
mod functions;
mod go_order;
mod histogram;
pub mod limits;
mod native;
pub mod storage;
pub mod untrusted;
pub mod value;

pub use engine::{Engine, EngineOptions, PreparedQuery, QueryError, QueryOptions};
pub use limits::{LimitError, ParsedExpr, QueryLimits, check_query_text, parse_checked};
pub use storage::{MemStorage, SelectHints, SelectResult, Storage, StorageError, StorageSeries};
pub use value::{HPoint, HistSeries, QueryResult, QueryStats, Value};
