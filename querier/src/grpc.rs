//! The querier's own gRPC server: `thanos.info.Info` (component `query`) and a
//! `thanos.Store` that answers through the fan-out, so queriers can be stacked.

use std::pin::Pin;
use std::sync::Arc;

use storeapi::wire::info::{
    InfoRequest, InfoResponse, StoreInfo,
    info_server::{Info, InfoServer},
};
use storeapi::wire::thanos::{
    self, AggrChunk, LabelNamesRequest, LabelNamesResponse, LabelValuesRequest,
    LabelValuesResponse, PartialResponseStrategy, SeriesRequest, SeriesResponse, series_response,
    store_server::{Store, StoreServer},
};
use tonic::{Request, Response, Status};

use crate::api::AppState;
use crate::proxy::{FanoutOptions, ProxyStorage};
use promql::{SelectHints, Storage};

/// Samples per re-encoded chunk (Prometheus's target).
const SAMPLES_PER_CHUNK: usize = 120;

#[derive(Clone)]
struct QueryGrpc {
    state: Arc<AppState>,
}

impl QueryGrpc {
    fn storage<T>(&self, req: &Request<T>, partial: bool, without: &[String]) -> ProxyStorage {
        let tenant = req
            .metadata()
            .get("thanos-tenant")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // A querier above us sends without_replica_labels; dedup on those, as Thanos does.
        let (dedup, replica_labels) = if without.is_empty() {
            (false, Vec::new())
        } else {
            (true, without.to_vec())
        };
        ProxyStorage::new(
            self.state.endpoints.clone(),
            FanoutOptions {
                replica_labels,
                dedup,
                partial_response: partial,
                // A layered querier: with enforcement on, the caller's `thanos-tenant`
                // (else the default tenant) confines this fan-out too.
                enforce: self.state.tenancy.enforce.then(|| {
                    storeapi::Matcher::equal(
                        self.state.tenancy.label.clone(),
                        tenant
                            .clone()
                            .unwrap_or_else(|| self.state.tenancy.policy.default.clone()),
                    )
                }),
                tenant,
                timeout: self.state.timeout,
                max_resolution_ms: 0,
            },
        )
    }
}

fn partial(disabled: bool, strategy: i32) -> bool {
    !disabled && strategy != PartialResponseStrategy::Abort as i32
}

/// Encodes samples into XOR chunks of at most [`SAMPLES_PER_CHUNK`] samples.
pub fn encode_chunks(samples: &[storeapi::Sample]) -> Result<Vec<AggrChunk>, String> {
    let mut out = Vec::new();
    for part in samples.chunks(SAMPLES_PER_CHUNK) {
        let mut c = chunkenc::XorChunk::new();
        for s in part {
            c.append(s.t, s.v).map_err(|e| e.to_string())?;
        }
        let (Some(first), Some(last)) = (part.first(), part.last()) else {
            continue;
        };
        let data = c.into_bytes();
        let hash = xxhash_rust::xxh64::xxh64(&data, 0);
        out.push(AggrChunk {
            min_time: first.t,
            max_time: last.t,
            raw: Some(thanos::Chunk {
                r#type: thanos::chunk::Encoding::Xor as i32,
                data: data.into(),
                hash,
            }),
            ..Default::default()
        });
    }
    Ok(out)
}

type SeriesStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<SeriesResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Store for QueryGrpc {
    type SeriesStream = SeriesStream;

    async fn series(
        &self,
        request: Request<SeriesRequest>,
    ) -> Result<Response<Self::SeriesStream>, Status> {
        let storage = {
            let r = request.get_ref();
            self.storage(
                &request,
                partial(r.partial_response_disabled, r.partial_response_strategy),
                &r.without_replica_labels,
            )
        };
        let r = request.into_inner();
        // A querier above may allow downsampled data; it gets it as averages (raw chunks).
        let mut storage = storage;
        storage.opts.max_resolution_ms = r.max_resolution_window.max(0);
        let matchers = storeapi::wire::matchers_from_wire(&r.matchers)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let hints = SelectHints {
            start: r.min_time,
            end: r.max_time,
            ..Default::default()
        };
        let mut frames: Vec<Result<SeriesResponse, Status>> = Vec::new();
        if r.skip_chunks {
            let (labels, warnings) = storage
                .series(&[matchers], r.min_time, r.max_time)
                .await
                .map_err(|e| Status::aborted(e.to_string()))?;
            for w in warnings {
                frames.push(Ok(SeriesResponse {
                    result: Some(series_response::Result::Warning(w)),
                }));
            }
            for l in labels {
                frames.push(Ok(SeriesResponse {
                    result: Some(series_response::Result::Series(thanos::Series {
                        labels: storeapi::wire::labels_to_wire(&l),
                        chunks: Vec::new(),
                    })),
                }));
            }
        } else {
            let res = storage
                .select(hints, matchers)
                .await
                .map_err(|e| Status::aborted(e.to_string()))?;
            for w in res.warnings {
                frames.push(Ok(SeriesResponse {
                    result: Some(series_response::Result::Warning(w)),
                }));
            }
            for s in res.series {
                let chunks = encode_chunks(&s.samples).map_err(Status::internal)?;
                frames.push(Ok(SeriesResponse {
                    result: Some(series_response::Result::Series(thanos::Series {
                        labels: storeapi::wire::labels_to_wire(&s.labels),
                        chunks,
                    })),
                }));
            }
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(frames))))
    }

    async fn label_names(
        &self,
        request: Request<LabelNamesRequest>,
    ) -> Result<Response<LabelNamesResponse>, Status> {
        let r = request.get_ref();
        let storage = self.storage(
            &request,
            partial(r.partial_response_disabled, r.partial_response_strategy),
            &r.without_replica_labels,
        );
        let matchers = storeapi::wire::matchers_from_wire(&r.matchers)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (names, warnings) = storage
            .label_names(&matchers, r.start, r.end)
            .await
            .map_err(|e| Status::aborted(e.to_string()))?;
        Ok(Response::new(LabelNamesResponse {
            names,
            warnings,
            hints: None,
        }))
    }

    async fn label_values(
        &self,
        request: Request<LabelValuesRequest>,
    ) -> Result<Response<LabelValuesResponse>, Status> {
        let r = request.get_ref();
        if r.label.is_empty() {
            return Err(Status::invalid_argument(
                "label name parameter cannot be empty",
            ));
        }
        let storage = self.storage(
            &request,
            partial(r.partial_response_disabled, r.partial_response_strategy),
            &r.without_replica_labels,
        );
        let matchers = storeapi::wire::matchers_from_wire(&r.matchers)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (values, warnings) = storage
            .label_values(&r.label, &matchers, r.start, r.end)
            .await
            .map_err(|e| Status::aborted(e.to_string()))?;
        Ok(Response::new(LabelValuesResponse {
            values,
            warnings,
            hints: None,
        }))
    }
}

#[tonic::async_trait]
impl Info for QueryGrpc {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let mut label_sets = Vec::new();
        let (mut min_t, mut max_t) = (i64::MAX, i64::MIN);
        for e in self.state.endpoints.all() {
            let st = e.status();
            if !(st.healthy && st.has_store) {
                continue;
            }
            min_t = min_t.min(st.min_time);
            max_t = max_t.max(st.max_time);
            for ls in st.label_sets {
                let mut ls = ls;
                for r in &self.state.replica_labels {
                    ls.remove(r);
                }
                let wire = thanos::ZLabelSet {
                    labels: storeapi::wire::labels_to_wire(&ls),
                };
                if !label_sets.contains(&wire) {
                    label_sets.push(wire);
                }
            }
        }
        if min_t > max_t {
            (min_t, max_t) = (i64::MAX, i64::MIN);
        }
        Ok(Response::new(InfoResponse {
            label_sets,
            component_type: "query".into(),
            store: Some(StoreInfo {
                min_time: min_t,
                max_time: max_t,
                supports_sharding: false,
                supports_without_replica_labels: true,
                tsdb_infos: Vec::new(),
                supports_projections: false,
            }),
            ..Default::default()
        }))
    }
}

/// Serves Info + Store on `addr` until `stop` flips.
pub async fn serve(
    state: Arc<AppState>,
    addr: String,
    tls: Option<Arc<dyn netsec::server::ServerConfigSource>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding gRPC address {addr}"))?;
    tracing::info!(address = %addr, "querier gRPC (Info, Store) listening");
    let svc = QueryGrpc { state };
    tonic::transport::Server::builder()
        .add_service(
            StoreServer::new(svc.clone())
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(InfoServer::new(svc))
        .serve_with_incoming_shutdown(
            netsec::Listener::new(listener, tls).into_incoming(),
            async move {
                let _ = stop.wait_for(|v| *v).await;
            },
        )
        .await
        .context("gRPC server")
}

#[cfg(test)]
mod tests {
    use super::*;
    use storeapi::Sample;

    #[test]
    fn chunks_round_trip() {
        let samples: Vec<Sample> = (0..250)
            .map(|i| Sample {
                t: i * 1000,
                v: i as f64 * 0.5,
            })
            .collect();
        let chunks = encode_chunks(&samples).unwrap();
        assert_eq!(chunks.len(), 3);
        let raw: Vec<crate::proxy::RawChunk> = chunks.into_iter().map(Into::into).collect();
        let back = crate::proxy::decode_chunks(&raw, i64::MIN, i64::MAX).unwrap();
        assert_eq!(back, samples);
    }
}
