//! The Thanos StoreAPI (`thanos.Store`) and discovery (`thanos.info.Info`) over the
//! tenants' TSDBs.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prost::Message;
use storeapi::wire::info::{
    ExemplarsInfo, InfoRequest, InfoResponse, MetricMetadataInfo, StoreInfo, TsdbInfo,
};
use storeapi::wire::thanos::{
    self, LabelNamesRequest, LabelNamesResponse, LabelValuesRequest, LabelValuesResponse,
    SeriesRequest, SeriesResponse, ZLabelSet,
};
use storeapi::wire::{labels_to_wire, matchers_from_wire};
use storeapi::{Labels, Matcher};
use tonic::{Request, Response, Status};

use crate::multitsdb::{MultiTsdb, Tenant};
use storeapi::wire::frames::FrameWriter;
use tsdb::frames::{self, Selected, Selection};

/// gRPC metadata key selecting a tenant.
pub const TENANT_METADATA: &str = "thanos-tenant";

/// Shared by the StoreAPI and Info services.
#[derive(Clone)]
pub struct StoreState {
    pub mt: Arc<MultiTsdb>,
    pub ready: Arc<AtomicBool>,
    /// `--store.enforce-tenancy`: the default tenant a call without `thanos-tenant`
    /// metadata is confined to. `None`: such a call sees every tenant (Thanos).
    pub enforce_default_tenant: Option<String>,
}

impl StoreState {
    pub(crate) fn check_ready(&self) -> Result<(), Status> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Status::unavailable(
                "receiver is not ready (WAL replay in progress)",
            ))
        }
    }

    /// The tenants a request may see: the one named by `thanos-tenant`; without it all,
    /// or with `--store.enforce-tenancy` only the default tenant (as Thanos reads a
    /// missing tenant), so no call reads across tenants.
    pub(crate) fn tenants<T>(&self, req: &Request<T>) -> Vec<Arc<Tenant>> {
        match req
            .metadata()
            .get(TENANT_METADATA)
            .and_then(|v| v.to_str().ok())
        {
            Some(t) if !t.is_empty() => self.mt.get(t).into_iter().collect(),
            _ => match &self.enforce_default_tenant {
                Some(d) => self.mt.get(d).into_iter().collect(),
                None => self.mt.tenants(),
            },
        }
    }

    /// Names of the external labels (the same for every tenant).
    pub(crate) fn external_names(&self) -> HashSet<String> {
        let cfg = self.mt.config();
        let mut s: HashSet<String> = cfg
            .external_labels
            .iter()
            .map(|l| l.name.to_string())
            .collect();
        s.insert(cfg.tenant_label_name.clone());
        s
    }
}

/// Splits matchers into (external-label matchers, TSDB matchers).
fn split_matchers(ms: Vec<Matcher>, ext: &HashSet<String>) -> (Vec<Matcher>, Vec<Matcher>) {
    ms.into_iter().partition(|m| ext.contains(&m.name))
}

fn ext_match(ext_matchers: &[Matcher], ext: &Labels) -> bool {
    ext_matchers
        .iter()
        .all(|m| m.matches(ext.get(&m.name).unwrap_or("")))
}

fn bad_matchers(e: storeapi::wire::ConvertError) -> Status {
    Status::invalid_argument(format!("invalid matchers: {e}"))
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// Runs a `Series` request (blocking). When one tenant answers from its head alone and
/// adding its external labels provably keeps the head's label order, the selection is
/// left lazy, so the first frames leave before later series are read.
pub fn select(
    tenants: &[Arc<Tenant>],
    ext_names: &HashSet<String>,
    req: &SeriesRequest,
) -> Result<Selection, Status> {
    let matchers = matchers_from_wire(&req.matchers).map_err(bad_matchers)?;
    let (ext_m, local) = split_matchers(matchers, ext_names);
    let matching: Vec<&Arc<Tenant>> = tenants
        .iter()
        .filter(|t| ext_match(&ext_m, &t.external_labels))
        .collect();
    if let [t] = matching.as_slice() {
        let q = t.db.querier(req.min_time, req.max_time);
        let limit = usize::try_from(req.limit.max(0)).unwrap_or(usize::MAX);
        if let Some(sel) = frames::lazy(
            &q,
            &local,
            &t.external_labels,
            &req.without_replica_labels,
            limit,
        ) {
            return Ok(sel);
        }
    }
    select_series(tenants, ext_names, req).map(Selection::Eager)
}

/// Runs a `Series` request against `tenants` (blocking), materialized and sorted.
pub fn select_series(
    tenants: &[Arc<Tenant>],
    ext_names: &HashSet<String>,
    req: &SeriesRequest,
) -> Result<Vec<Selected>, Status> {
    let matchers = matchers_from_wire(&req.matchers).map_err(bad_matchers)?;
    let (ext_m, local) = split_matchers(matchers, ext_names);
    if local.is_empty() {
        return Err(Status::invalid_argument(
            "no matchers specified (excluding external labels)",
        ));
    }
    let mut out: Vec<Selected> = Vec::new();
    for t in tenants {
        if !ext_match(&ext_m, &t.external_labels) {
            continue;
        }
        let q = t.db.querier(req.min_time, req.max_time);
        frames::eager_into(
            &mut out,
            &q,
            &local,
            &t.external_labels,
            &req.without_replica_labels,
        )
        .map_err(internal)?;
    }
    frames::sort_and_limit(
        &mut out,
        usize::try_from(req.limit.max(0)).unwrap_or(usize::MAX),
    );
    Ok(out)
}

/// Frames buffered between the encoding thread and the gRPC stream.
const FRAME_QUEUE: usize = 8;

type SeriesStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<SeriesResponse, Status>> + Send + 'static>,
>;

pub use storeapi::wire::store_service::FrameStream;

impl storeapi::wire::store_service::FrameSeries for StoreState {
    /// Runs a `Series` call. Frames are written on a blocking thread straight from the
    /// head (see [`storeapi::wire::frames`]) and streamed while later ones are still being
    /// written, so the client decodes while we encode.
    async fn series_frames(&self, request: Request<SeriesRequest>) -> Result<FrameStream, Status> {
        self.check_ready()?;
        let tenants = self.tenants(&request);
        let ext = self.external_names();
        let req = request.into_inner();
        let (skip_chunks, batch_size) = (req.skip_chunks, req.response_batch_size);
        let sel = tokio::task::spawn_blocking(move || select(&tenants, &ext, &req))
            .await
            .map_err(internal)??;
        let (tx, rx) = tokio::sync::mpsc::channel(FRAME_QUEUE);
        tokio::task::spawn_blocking(move || {
            // A failed send: the client went away.
            sel.write(FrameWriter::new(skip_chunks, batch_size), &mut |b| {
                tx.blocking_send(Ok(b)).is_ok()
            });
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

#[tonic::async_trait]
impl thanos::store_server::Store for StoreState {
    type SeriesStream = SeriesStream;

    /// The same frames as [`StoreState::series_frames`] decoded into structs (the gRPC
    /// server sends the bytes through [`crate::store_service`] instead).
    async fn series(
        &self,
        request: Request<SeriesRequest>,
    ) -> Result<Response<Self::SeriesStream>, Status> {
        use storeapi::wire::store_service::FrameSeries;
        use tokio_stream::StreamExt;
        let frames = self.series_frames(request).await?;
        Ok(Response::new(Box::pin(frames.map(|r| {
            r.and_then(|b| SeriesResponse::decode(b).map_err(internal))
        }))))
    }

    async fn label_names(
        &self,
        request: Request<LabelNamesRequest>,
    ) -> Result<Response<LabelNamesResponse>, Status> {
        self.check_ready()?;
        let tenants = self.tenants(&request);
        let ext = self.external_names();
        let req = request.into_inner();
        let names = tokio::task::spawn_blocking(move || {
            let matchers = matchers_from_wire(&req.matchers).map_err(bad_matchers)?;
            let (ext_m, local) = split_matchers(matchers, &ext);
            let without: HashSet<&str> = req
                .without_replica_labels
                .iter()
                .map(String::as_str)
                .collect();
            let mut set = BTreeSet::new();
            for t in &tenants {
                if !ext_match(&ext_m, &t.external_labels) {
                    continue;
                }
                let q = t.db.querier(req.start, req.end);
                let names = q.label_names(&local).map_err(internal)?;
                if names.is_empty() {
                    continue;
                }
                set.extend(names);
                set.extend(t.external_labels.iter().map(|l| l.name.to_string()));
            }
            let mut v: Vec<String> = set
                .into_iter()
                .filter(|n| !without.contains(n.as_str()))
                .collect();
            if req.limit > 0 && v.len() as u64 > req.limit as u64 {
                v.truncate(req.limit as usize);
            }
            Ok::<_, Status>(v)
        })
        .await
        .map_err(internal)??;
        Ok(Response::new(LabelNamesResponse {
            names,
            warnings: Vec::new(),
            hints: None,
        }))
    }

    async fn label_values(
        &self,
        request: Request<LabelValuesRequest>,
    ) -> Result<Response<LabelValuesResponse>, Status> {
        self.check_ready()?;
        let tenants = self.tenants(&request);
        let ext = self.external_names();
        let req = request.into_inner();
        if req.label.is_empty() {
            return Err(Status::invalid_argument(
                "label name parameter cannot be empty",
            ));
        }
        let values = tokio::task::spawn_blocking(move || {
            let matchers = matchers_from_wire(&req.matchers).map_err(bad_matchers)?;
            let (ext_m, local) = split_matchers(matchers, &ext);
            if req.without_replica_labels.contains(&req.label) {
                return Ok(Vec::new());
            }
            let mut set = BTreeSet::new();
            for t in &tenants {
                if !ext_match(&ext_m, &t.external_labels) {
                    continue;
                }
                let q = t.db.querier(req.start, req.end);
                if let Some(v) = t.external_labels.get(&req.label) {
                    // The external value, if the tenant has any matching series.
                    if !q.label_names(&local).map_err(internal)?.is_empty() {
                        set.insert(v.to_string());
                    }
                    continue;
                }
                set.extend(q.label_values(&req.label, &local).map_err(internal)?);
            }
            let mut v: Vec<String> = set.into_iter().collect();
            if req.limit > 0 && v.len() as u64 > req.limit as u64 {
                v.truncate(req.limit as usize);
            }
            Ok::<_, Status>(v)
        })
        .await
        .map_err(internal)??;
        Ok(Response::new(LabelValuesResponse {
            values,
            warnings: Vec::new(),
            hints: None,
        }))
    }
}

#[tonic::async_trait]
impl storeapi::wire::info::info_server::Info for StoreState {
    async fn info(&self, req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        self.check_ready()?;
        let mut label_sets = Vec::new();
        let mut tsdb_infos = Vec::new();
        // Not the oldest sample stored but the oldest a query may find by the time it
        // arrives (an empty receiver: any), so a querier that cached this answer still
        // asks for samples acknowledged after it (a fresh receiver's first writes).
        let mut min_time = i64::MAX;
        // With enforcement, the tenants' label sets name every tenant: a caller with
        // `thanos-tenant` sees its own, a caller without (a querier's discovery) sees
        // only the receiver's labels — no tenant names, and nothing a querier would
        // prune a tenant's query on.
        let caller = req
            .metadata()
            .get(TENANT_METADATA)
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty());
        let (tenants, hide_tenants) = match (&self.enforce_default_tenant, caller) {
            (Some(_), Some(t)) => (self.mt.get(t).into_iter().collect(), false),
            (Some(_), None) => (self.mt.tenants(), true),
            (None, _) => (self.mt.tenants(), false),
        };
        if tenants.is_empty() {
            min_time = i64::MIN;
        }
        if hide_tenants {
            for t in &tenants {
                min_time = min_time.min(t.db.queryable_min_time());
            }
            let ls = ZLabelSet {
                labels: labels_to_wire(&self.mt.config().external_labels),
            };
            tsdb_infos.push(TsdbInfo {
                labels: Some(ls.clone()),
                min_time,
                max_time: i64::MAX,
            });
            label_sets.push(ls);
        }
        for t in tenants.iter().filter(|_| !hide_tenants) {
            let ls = ZLabelSet {
                labels: labels_to_wire(&t.external_labels),
            };
            let tmin = t.db.queryable_min_time();
            min_time = min_time.min(tmin);
            tsdb_infos.push(TsdbInfo {
                labels: Some(ls.clone()),
                min_time: tmin,
                max_time: i64::MAX,
            });
            label_sets.push(ls);
        }
        if label_sets.is_empty() {
            // No tenant yet: advertise the receiver's own labels, so a querier can list it.
            label_sets.push(ZLabelSet {
                labels: labels_to_wire(&self.mt.config().external_labels),
            });
        }
        Ok(Response::new(InfoResponse {
            label_sets,
            component_type: "receive".into(),
            store: Some(StoreInfo {
                min_time,
                max_time: i64::MAX,
                supports_sharding: false,
                supports_without_replica_labels: true,
                tsdb_infos,
                supports_projections: false,
            }),
            // Exemplars of any time (they are not in blocks); advertised only when kept.
            exemplars: (self.mt.config().max_exemplars > 0).then_some(ExemplarsInfo {
                min_time: i64::MIN,
                max_time: i64::MAX,
            }),
            metric_metadata: Some(MetricMetadataInfo {}),
            ..Default::default()
        }))
    }
}
