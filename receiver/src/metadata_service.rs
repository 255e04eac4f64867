//! `thanos.Metadata/MetricMetadata` over the tenants' metric metadata: one message with
//! every family the visible tenants know (distinct entries merged), as Thanos's sidecar
//! answers. Tenancy as for the StoreAPI.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;

use storeapi::wire::thanos::{
    self, Meta, MetricMetadata, MetricMetadataEntry, MetricMetadataRequest, MetricMetadataResponse,
    metric_metadata_response,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::multitsdb::Tenant;
use crate::store::StoreState;

type MetadataStream = Pin<Box<dyn Stream<Item = Result<MetricMetadataResponse, Status>> + Send>>;

/// Families (sorted; at most `limit` when it is not negative) and their distinct entries.
pub fn collect(
    tenants: &[std::sync::Arc<Tenant>],
    metric: Option<&str>,
    limit: i64,
) -> BTreeMap<String, BTreeSet<tsdb::metadata::Meta>> {
    let mut all: BTreeMap<String, BTreeSet<tsdb::metadata::Meta>> = BTreeMap::new();
    for t in tenants {
        for (family, metas) in t.metadata.list(metric, -1, -1) {
            all.entry(family).or_default().extend(metas);
        }
    }
    if limit >= 0 {
        let keep = usize::try_from(limit).unwrap_or(usize::MAX);
        while all.len() > keep {
            all.pop_last();
        }
    }
    all
}

#[tonic::async_trait]
impl thanos::metadata_server::Metadata for StoreState {
    type MetricMetadataStream = MetadataStream;

    async fn metric_metadata(
        &self,
        request: Request<MetricMetadataRequest>,
    ) -> Result<Response<MetadataStream>, Status> {
        self.check_ready()?;
        let tenants = self.tenants(&request);
        let r = request.into_inner();
        let metric = (!r.metric.is_empty()).then_some(r.metric.as_str());
        let all = collect(&tenants, metric, i64::from(r.limit));
        let metadata: HashMap<String, MetricMetadataEntry> = all
            .into_iter()
            .map(|(family, metas)| {
                let metas = metas
                    .into_iter()
                    .map(|m| Meta {
                        r#type: m.kind,
                        help: m.help,
                        unit: m.unit,
                    })
                    .collect();
                (family, MetricMetadataEntry { metas })
            })
            .collect();
        let msg = MetricMetadataResponse {
            result: Some(metric_metadata_response::Result::Metadata(MetricMetadata {
                metadata,
            })),
        };
        Ok(Response::new(Box::pin(tokio_stream::iter([Ok(msg)]))))
    }
}
