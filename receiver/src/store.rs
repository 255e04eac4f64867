//! The Thanos StoreAPI (`thanos.Store`) and discovery (`thanos.info.Info`) over the
//! tenants' TSDBs.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use storeapi::wire::info::{InfoRequest, InfoResponse, StoreInfo, TsdbInfo};
use storeapi::wire::thanos::{
    self, AggrChunk, LabelNamesRequest, LabelNamesResponse, LabelValuesRequest,
    LabelValuesResponse, SeriesBatch, SeriesRequest, SeriesResponse, ZLabelSet,
    series_response::Result as Frame,
};
use storeapi::wire::{labels_to_wire, matchers_from_wire};
use storeapi::{Labels, Matcher};
use tonic::{Request, Response, Status};

use crate::multitsdb::{MultiTsdb, Tenant};

/// Byte budget of one `SeriesResponse` frame (Thanos's `RemoteReadFrameLimit`).
pub const FRAME_LIMIT: usize = 1 << 20;
/// gRPC metadata key selecting a tenant.
pub const TENANT_METADATA: &str = "thanos-tenant";

/// Shared by the StoreAPI and Info services.
#[derive(Clone)]
pub struct StoreState {
    pub mt: Arc<MultiTsdb>,
    pub ready: Arc<AtomicBool>,
}

impl StoreState {
    fn check_ready(&self) -> Result<(), Status> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Status::unavailable(
                "receiver is not ready (WAL replay in progress)",
            ))
        }
    }

    /// The tenants a request may see: the one named by `thanos-tenant`, else all.
    fn tenants<T>(&self, req: &Request<T>) -> Vec<Arc<Tenant>> {
        match req
            .metadata()
            .get(TENANT_METADATA)
            .and_then(|v| v.to_str().ok())
        {
            Some(t) if !t.is_empty() => self.mt.get(t).into_iter().collect(),
            _ => self.mt.tenants(),
        }
    }

    /// Names of the external labels (the same for every tenant).
    fn external_names(&self) -> HashSet<String> {
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

/// One selected series: full labels (external added, replica labels removed) and chunks.
type Selected = (Labels, Vec<tsdb::Chunk>);

/// A `Series` answer before framing: materialized and sorted, or one tenant's head
/// selection read series by series while frames are sent.
pub enum Selection {
    Eager(Vec<Selected>),
    Lazy {
        sel: tsdb::head::LazySelect,
        external: Labels,
        without: HashSet<String>,
        /// 0: no limit.
        limit: usize,
    },
}

impl Selection {
    /// Every series in order, external labels added and replica labels removed.
    pub fn for_each(self, mut f: impl FnMut(Labels, Vec<tsdb::Chunk>) -> bool) {
        match self {
            Selection::Eager(v) => {
                for (l, c) in v {
                    if !f(l, c) {
                        return;
                    }
                }
            }
            Selection::Lazy {
                sel,
                external,
                without,
                limit,
            } => {
                for (n, (mut l, c)) in sel.into_iter().enumerate() {
                    if limit > 0 && n >= limit {
                        return;
                    }
                    l.extend_external(&external);
                    if !without.is_empty() {
                        l.retain(|x| !without.contains(x.name.as_str()));
                    }
                    if !f(l, c) {
                        return;
                    }
                }
            }
        }
    }
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
    if let [t] = matching.as_slice()
        && !local.is_empty()
        // Removing an external label is not adding it; removing a series label could
        // reorder series.
        && req
            .without_replica_labels
            .iter()
            .all(|w| t.external_labels.get(w).is_some())
    {
        let q = t.db.querier(req.min_time, req.max_time);
        if let Some(sel) = q.select_lazy(&local)
            && sel.prefix_free()
            && !t.external_labels.iter().any(|l| q.head_has_label(&l.name))
        {
            return Ok(Selection::Lazy {
                sel,
                external: t.external_labels.clone(),
                without: req.without_replica_labels.iter().cloned().collect(),
                limit: usize::try_from(req.limit.max(0)).unwrap_or(usize::MAX),
            });
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
    let without: HashSet<&str> = req
        .without_replica_labels
        .iter()
        .map(String::as_str)
        .collect();
    let mut out: Vec<Selected> = Vec::new();
    for t in tenants {
        if !ext_match(&ext_m, &t.external_labels) {
            continue;
        }
        let q = t.db.querier(req.min_time, req.max_time);
        for s in q.select(&local).map_err(internal)? {
            let mut l = s.labels;
            l.extend_external(&t.external_labels);
            if !without.is_empty() {
                l.retain(|x| !without.contains(x.name.as_str()));
            }
            out.push((l, s.chunks));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if req.limit > 0 && out.len() as u64 > req.limit as u64 {
        out.truncate(req.limit as usize);
    }
    Ok(out)
}

fn wire_chunk(c: &tsdb::Chunk) -> AggrChunk {
    AggrChunk {
        min_time: c.min_time,
        max_time: c.max_time,
        raw: Some(thanos::Chunk {
            r#type: i32::from(c.encoding as u8) - 1,
            hash: xxhash_rust::xxh64::xxh64(&c.data, 0),
            data: c.data.clone(),
        }),
        ..Default::default()
    }
}

fn labels_size(l: &Labels) -> usize {
    l.iter().map(|x| x.name.len() + x.value.len() + 8).sum()
}

/// Packs series into `SeriesResponse` frames: a series is split at [`FRAME_LIMIT`], and
/// series are packed into `batch` frames of up to `batch_size` series when
/// `batch_size > 1`. Frames are handed out as soon as they are complete.
pub struct Framer {
    skip_chunks: bool,
    batch_size: i64,
    batch: Vec<thanos::Series>,
    bsize: usize,
}

impl Framer {
    pub fn new(skip_chunks: bool, batch_size: i64) -> Self {
        Framer {
            skip_chunks,
            batch_size,
            batch: Vec::new(),
            bsize: 0,
        }
    }

    /// Adds one series; calls `emit` with every frame completed by it.
    pub fn push(
        &mut self,
        labels: &Labels,
        chunks: &[tsdb::Chunk],
        emit: &mut impl FnMut(SeriesResponse),
    ) {
        self.push_owned(labels_to_wire(labels), labels_size(labels), chunks, emit);
    }

    /// As [`Framer::push`], taking the labels (no copy of their strings).
    pub fn push_labels(
        &mut self,
        labels: Labels,
        chunks: &[tsdb::Chunk],
        emit: &mut impl FnMut(SeriesResponse),
    ) {
        let lsize = labels_size(&labels);
        let wl = labels
            .into_vec()
            .into_iter()
            .map(|l| thanos::Label {
                name: l.name,
                value: l.value,
            })
            .collect();
        self.push_owned(wl, lsize, chunks, emit);
    }

    fn push_owned(
        &mut self,
        wl: Vec<thanos::Label>,
        lsize: usize,
        chunks: &[tsdb::Chunk],
        emit: &mut impl FnMut(SeriesResponse),
    ) {
        if self.skip_chunks || chunks.is_empty() {
            self.add(
                thanos::Series {
                    labels: wl,
                    chunks: Vec::new(),
                },
                lsize,
                emit,
            );
            return;
        }
        let mut cur: Vec<AggrChunk> = Vec::with_capacity(chunks.len());
        let mut size = lsize;
        for c in chunks {
            let csize = c.data.len() + 32;
            if !cur.is_empty() && size + csize > FRAME_LIMIT {
                self.add(
                    thanos::Series {
                        labels: wl.clone(),
                        chunks: std::mem::take(&mut cur),
                    },
                    size,
                    emit,
                );
                size = lsize;
            }
            size += csize;
            cur.push(wire_chunk(c));
        }
        self.add(
            thanos::Series {
                labels: wl,
                chunks: cur,
            },
            size,
            emit,
        );
    }

    fn add(&mut self, s: thanos::Series, size: usize, emit: &mut impl FnMut(SeriesResponse)) {
        if self.batch_size <= 1 {
            emit(SeriesResponse {
                result: Some(Frame::Series(s)),
            });
            return;
        }
        if !self.batch.is_empty()
            && (self.batch.len() as i64 >= self.batch_size || self.bsize + size > FRAME_LIMIT)
        {
            self.flush(emit);
        }
        self.bsize += size;
        self.batch.push(s);
    }

    fn flush(&mut self, emit: &mut impl FnMut(SeriesResponse)) {
        if self.batch.is_empty() {
            return;
        }
        self.bsize = 0;
        emit(SeriesResponse {
            result: Some(Frame::Batch(SeriesBatch {
                series: std::mem::take(&mut self.batch),
            })),
        });
    }

    /// Emits the last, partly filled batch.
    pub fn finish(mut self, emit: &mut impl FnMut(SeriesResponse)) {
        self.flush(emit);
    }
}

/// Turns selected series into frames (see [`Framer`]).
pub fn frames(selected: Vec<Selected>, skip_chunks: bool, batch_size: i64) -> Vec<SeriesResponse> {
    let mut out = Vec::new();
    let mut f = Framer::new(skip_chunks, batch_size);
    let mut emit = |r| out.push(r);
    for (labels, chunks) in &selected {
        f.push(labels, chunks, &mut emit);
    }
    f.finish(&mut emit);
    out
}

/// Frames buffered between the encoding thread and the gRPC stream.
const FRAME_QUEUE: usize = 8;

type SeriesStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<SeriesResponse, Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl thanos::store_server::Store for StoreState {
    type SeriesStream = SeriesStream;

    async fn series(
        &self,
        request: Request<SeriesRequest>,
    ) -> Result<Response<Self::SeriesStream>, Status> {
        self.check_ready()?;
        let tenants = self.tenants(&request);
        let ext = self.external_names();
        let req = request.into_inner();
        let (skip_chunks, batch_size) = (req.skip_chunks, req.response_batch_size);
        let sel = tokio::task::spawn_blocking(move || select(&tenants, &ext, &req))
            .await
            .map_err(internal)??;
        // Frames are built on a blocking thread and streamed while later ones are still
        // being built, so the client decodes while we encode.
        let (tx, rx) = tokio::sync::mpsc::channel(FRAME_QUEUE);
        tokio::task::spawn_blocking(move || {
            let open = std::cell::Cell::new(true);
            let mut emit = |r: SeriesResponse| {
                if open.get() && tx.blocking_send(Ok(r)).is_err() {
                    // The client went away.
                    open.set(false);
                }
            };
            let mut f = Framer::new(skip_chunks, batch_size);
            let mut done = Vec::new();
            sel.for_each(|labels, chunks| {
                f.push_labels(labels, &chunks, &mut emit);
                // Freed after the stream has ended, not while the client waits.
                done.push(chunks);
                open.get()
            });
            if !open.get() {
                return;
            }
            f.finish(&mut emit);
            drop(tx);
            drop(done);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
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
    async fn info(&self, _req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        self.check_ready()?;
        let mut label_sets = Vec::new();
        let mut tsdb_infos = Vec::new();
        let mut min_time = i64::MAX;
        let tenants = self.mt.tenants();
        for t in &tenants {
            let ls = ZLabelSet {
                labels: labels_to_wire(&t.external_labels),
            };
            let tmin = t.db.min_time();
            min_time = min_time.min(tmin);
            tsdb_infos.push(TsdbInfo {
                labels: Some(ls.clone()),
                min_time: tmin,
                max_time: i64::MAX,
            });
            label_sets.push(ls);
        }
        if tenants.is_empty() {
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
            exemplars: None,
            ..Default::default()
        }))
    }
}
