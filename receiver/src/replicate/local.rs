//! [`LocalWriter`] over this receiver's own write path ([`crate::write::write`]), so the
//! distributor can store its share of a request in the tenant TSDBs.
//!
//! The batch's raw series and metadata are framed as a `prometheus.WriteRequest` (a copy,
//! no re-encoding) and appended with the same validation as a direct remote write. Request limits are not
//! applied again: in Thanos they belong on the router that received the client's request;
//! the tenant's `head_series_limit` is, as it guards this receiver's own memory.

use std::sync::Arc;

use bytes::Bytes;
use storeapi::wire::remote_write::encode_raw_request;

use super::{BoxFuture, Failure, FailureKind, LocalWriteResult, LocalWriter};
use crate::limits::{Effective, LimitsConfig};
use crate::metrics::ReceiveMetrics;
use crate::multitsdb::MultiTsdb;
use crate::write::{Bounds, WriteError, write};

/// Writes a distributor batch into the local multi-tenant TSDB.
pub struct TsdbLocalWriter {
    pub mt: Arc<MultiTsdb>,
    pub metrics: ReceiveMetrics,
    pub bounds: Bounds,
    pub limits: Arc<LimitsConfig>,
}

/// How a local write error counts towards quorum.
pub fn failure_kind(e: &WriteError) -> FailureKind {
    match e {
        // Thanos treats invalid label sets like sample conflicts: permanent, 409.
        WriteError::Conflict(_) | WriteError::BadRequest(_) => FailureKind::Conflict,
        WriteError::NotReady(_) => FailureKind::NotReady,
        WriteError::TooManyHeadSeries(_) => FailureKind::Unavailable,
        WriteError::TooLarge(_) | WriteError::Internal(_) | WriteError::UnsupportedMediaType(_) => {
            FailureKind::Other
        }
    }
}

impl LocalWriter for TsdbLocalWriter {
    fn write<'a>(
        &'a self,
        tenant: &'a str,
        series: &'a [Bytes],
        metadata: &'a [Bytes],
    ) -> BoxFuture<'a, LocalWriteResult> {
        Box::pin(async move {
            let raw = encode_raw_request(series, metadata);
            let mt = Arc::clone(&self.mt);
            let metrics = self.metrics.clone();
            let bounds = self.bounds;
            let limits = Effective {
                head_series: self.limits.for_tenant(tenant).head_series,
                ..Effective::default()
            };
            let tenant = tenant.to_string();
            let joined = tokio::task::spawn_blocking(move || {
                write(&mt, &metrics, &tenant, &raw, &limits, &bounds)
            })
            .await;
            match joined {
                Ok(Ok(_)) => LocalWriteResult::Ok,
                Ok(Err(e)) => {
                    LocalWriteResult::Failed(Failure::new(failure_kind(&e), e.to_string()))
                }
                Err(e) => LocalWriteResult::Failed(Failure::new(
                    FailureKind::Other,
                    format!("local write task failed: {e}"),
                )),
            }
        })
    }
}
