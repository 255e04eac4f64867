//! The StoreAPI (`thanos.Store`) and discovery (`thanos.info.Info`) over the synced
//! bucket blocks, with the receiver's semantics: each block's `thanos.labels` are its
//! external labels (added to every series, matched by external-label matchers),
//! `without_replica_labels` removes them, series come sorted and each once (chunks of
//! the same series from several blocks merged, identical chunks dropped).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use objstore::Bucket;
use prost::Message;
use storeapi::wire::frames::{FrameWriter, WireChunk, put_label};
use storeapi::wire::info::{InfoRequest, InfoResponse, StoreInfo, TsdbInfo};
use storeapi::wire::store_service::{FrameSeries, FrameStream};
use storeapi::wire::thanos::{
    self, LabelNamesRequest, LabelNamesResponse, LabelValuesRequest, LabelValuesResponse,
    PartialResponseStrategy, SeriesRequest, SeriesResponse, ZLabelSet, series_response,
};
use storeapi::wire::{labels_to_wire, matchers_from_wire};
use storeapi::{Labels, Matcher};
use tonic::{Request, Response, Status};
use tsdb::Chunk;
use tsdb::block::Ulid;
use tsdb::chunk::Encoding;
use tsdb::chunk::aggr::{AggrType, aggr_get};
use tsdb::chunk::aggr_histogram::is_histogram_aggr;

use crate::block::{Fetched, ReadCtx, ReadError, StoreBlock};
use crate::cache::{ChunkCache, IndexCache};
use crate::inflight::InflightBytes;
use crate::metrics::StoreMetrics;
use crate::resolution::Span;

/// Blocks read at once by one request.
const BLOCK_CONCURRENCY: usize = 4;
/// Frames buffered between the encoder and the gRPC stream.
const FRAME_QUEUE: usize = 8;

/// Per-request limits (0: none).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub series: u64,
    pub samples: u64,
    pub bytes: u64,
}

/// Shared by the StoreAPI and Info services and the sync loop.
#[derive(Clone)]
pub struct Gateway {
    pub blocks: Arc<RwLock<BTreeMap<Ulid, Arc<StoreBlock>>>>,
    pub ready: Arc<AtomicBool>,
    pub cache: Arc<ChunkCache>,
    /// Postings lists and series entries (`--index-cache-size`).
    pub index_cache: Arc<IndexCache>,
    /// Bucket range bytes being fetched and decoded at once, over all requests
    /// (`--store.max-inflight-fetch-bytes`).
    pub inflight: Arc<InflightBytes>,
    pub metrics: StoreMetrics,
    pub limits: Limits,
    pub data_dir: PathBuf,
    pub bucket: Bucket,
    /// `--min-time`/`--max-time` resolved at the last sync.
    pub window: Arc<RwLock<(i64, i64)>>,
    /// Chunk refs fetched per batch of a `Series` response ([`SERIES_BATCH_CHUNKS`]).
    pub batch_chunks: usize,
    /// `--store.enforce-tenancy`: each call reads one tenant's blocks only.
    pub tenancy: Option<Arc<crate::tenancy::TenantScope>>,
    /// `--store.index-header-posting-offsets-in-mem-sampling` for blocks opened by sync.
    pub postings_sampling: usize,
}

/// Chunk refs fetched and sent per batch of a `Series` response: about 8 MiB of chunk
/// bytes in memory at 160 bytes a chunk, whatever the response's size.
pub const SERIES_BATCH_CHUNKS: usize = 50_000;

/// One series' selection in one block: labels (external added, replica removed) and
/// chunk refs with times.
type BlockSeries = (Labels, Vec<ChunkRef>);

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn bad_matchers(e: storeapi::wire::ConvertError) -> Status {
    Status::invalid_argument(format!("invalid matchers: {e}"))
}

/// Splits matchers into (on the block's external labels, on its series) and says
/// whether the external ones match.
fn split_for_block(ms: &[Matcher], ext: &Labels) -> (bool, Vec<Matcher>) {
    let mut local = Vec::new();
    let mut ok = true;
    for m in ms {
        match ext.get(&m.name) {
            Some(v) => ok &= m.matches(v),
            None => local.push(m.clone()),
        }
    }
    (ok, local)
}

/// Samples in a chunk: every Prometheus chunk encoding starts with a 2-byte count; a
/// downsampled chunk counts the samples of each aggregate sent.
fn chunk_samples(c: &Chunk, aggrs: &[AggrType]) -> u64 {
    let head = |d: &[u8]| match d.get(..2) {
        Some(b) => u64::from(u16::from_be_bytes([b[0], b[1]])),
        None => 0,
    };
    if c.encoding != Encoding::Aggr {
        return head(&c.data);
    }
    aggrs
        .iter()
        .filter_map(|&t| aggr_get(&c.data, t).ok().flatten())
        .map(|(_, d)| head(d))
        .sum()
}

/// The blocks answering a request at `max_res` (see [`crate::resolution`]), chosen per
/// external label set.
fn by_resolution(
    blocks: Vec<Arc<StoreBlock>>,
    mint: i64,
    maxt: i64,
    max_res: i64,
) -> Vec<Arc<StoreBlock>> {
    let mut sets: BTreeMap<Labels, Vec<Arc<StoreBlock>>> = BTreeMap::new();
    for b in blocks {
        sets.entry(b.ext.clone()).or_default().push(b);
    }
    let mut out = Vec::new();
    for set in sets.into_values() {
        let spans: Vec<Span> = set
            .iter()
            .map(|b| Span {
                min_time: b.meta.min_time,
                max_time: b.meta.max_time,
                resolution: b.resolution(),
            })
            .collect();
        for i in crate::resolution::choose(&spans, mint, maxt, max_res) {
            out.push(set[i].clone());
        }
    }
    out
}

/// Checks that every downsampled chunk read from `b` holds the requested aggregates in
/// an encoding the frame writer can send, so a corrupt or foreign chunk is the block's
/// error (a warning or an abort), not a silently missing series. Float chunks hold
/// every aggregate as XOR; a native histogram chunk holds count (XOR), sum and counter
/// (histogram encodings) and never min or max, which PromQL's `min_*`/`max_*` ignore
/// for histograms anyway: such a chunk is simply not sent for them.
fn check_aggregates(b: &StoreBlock, chunks: &[Chunk], aggrs: &[AggrType]) -> Result<(), ReadError> {
    let corrupt = |why: String| ReadError::Block {
        id: b.id(),
        source: tsdb::block::BlockError::Corrupt(why),
    };
    // Raw chunks are sent as they are, in any block (as Thanos's `populateChunk`).
    for c in chunks.iter().filter(|c| c.encoding == Encoding::Aggr) {
        let histogram = is_histogram_aggr(&c.data);
        for &t in aggrs {
            let histogram_part = histogram && matches!(t, AggrType::Sum | AggrType::Counter);
            match aggr_get(&c.data, t) {
                Ok(Some((1, _))) if !histogram_part => {}
                Ok(Some((2 | 3, _))) if histogram_part => {}
                Ok(Some((e, _))) => {
                    return Err(corrupt(format!(
                        "aggregate {t:?}: unexpected sub-chunk encoding {e}"
                    )));
                }
                Ok(None) if histogram && matches!(t, AggrType::Min | AggrType::Max) => {}
                Ok(None) => return Err(corrupt(format!("aggregate {t:?} does not exist"))),
                Err(e) => return Err(corrupt(format!("aggregate {t:?}: {e}"))),
            }
        }
    }
    Ok(())
}

/// Whether a chunk has anything to send for `aggrs`: raw chunks always; a downsampled
/// one when it holds at least one requested aggregate.
fn has_requested(c: &Chunk, aggrs: &[AggrType]) -> bool {
    c.encoding != Encoding::Aggr
        || aggrs
            .iter()
            .any(|&t| matches!(aggr_get(&c.data, t), Ok(Some(_))))
}

/// The frame form of a chunk: raw as stored, or the requested aggregates' sub-chunks
/// with their StoreAPI encodings (the stored encoding byte minus one).
fn wire_chunk<'a>(c: &'a Chunk, aggrs: &[AggrType]) -> WireChunk<'a> {
    if c.encoding != Encoding::Aggr {
        return WireChunk::from_prometheus(c.min_time, c.max_time, c.encoding as u8, &c.data);
    }
    let mut parts: [Option<(i32, &[u8])>; 5] = [None; 5];
    for &t in aggrs {
        // Checked by `check_aggregates` when read.
        if let Ok(Some((e, d))) = aggr_get(&c.data, t) {
            parts[t as usize] = Some((i32::from(e) - 1, d));
        }
    }
    WireChunk::aggregates(c.min_time, c.max_time, parts)
}

fn warn_frame(msg: String) -> Bytes {
    Bytes::from(
        SeriesResponse {
            result: Some(series_response::Result::Warning(msg)),
        }
        .encode_to_vec(),
    )
}

impl Gateway {
    fn check_ready(&self) -> Result<(), Status> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Status::unavailable(
                "store gateway is not ready (initial bucket sync in progress)",
            ))
        }
    }

    /// Blocks overlapping `[mint, maxt]` and the served window.
    fn blocks_for(&self, mint: i64, maxt: i64) -> Vec<Arc<StoreBlock>> {
        let (wmin, wmax) = *self.window.read().unwrap_or_else(|e| e.into_inner());
        let (mint, maxt) = (mint.max(wmin), maxt.min(wmax));
        if mint > maxt {
            return Vec::new();
        }
        self.blocks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|b| b.overlaps(mint, maxt))
            .cloned()
            .collect()
    }

    /// What a read of one request needs.
    fn ctx<'a>(&'a self, fetched: &'a Fetched) -> ReadCtx<'a> {
        ReadCtx {
            metrics: &self.metrics,
            index_cache: &self.index_cache,
            chunk_cache: &self.cache,
            fetched,
            inflight: &self.inflight,
        }
    }

    /// The series of one block matching `local` with chunks in `[mint, maxt]`: the
    /// index-header plans the postings, which with the series entries are fetched by
    /// range.
    #[allow(clippy::too_many_arguments)]
    async fn block_series(
        &self,
        b: &StoreBlock,
        local: Vec<Matcher>,
        mint: i64,
        maxt: i64,
        without: &BTreeSet<String>,
        skip_chunks: bool,
        ctx: ReadCtx<'_>,
    ) -> Result<Vec<BlockSeries>, ReadError> {
        let hdr = b.header(ctx.metrics).await?;
        let ids = b.postings(&hdr, &local, ctx).await?;
        let mut out = Vec::new();
        for (mut labels, metas) in b.series(&hdr, &ids, ctx).await? {
            let refs: Vec<(u64, i64, i64)> = metas
                .iter()
                .filter(|m| m.max_time >= mint && m.min_time <= maxt)
                .map(|m| (m.chunk_ref, m.min_time, m.max_time))
                .collect();
            if refs.is_empty() {
                continue;
            }
            labels.extend_external(&b.ext);
            if !without.is_empty() {
                labels.retain(|l| !without.contains(l.name.as_str()));
            }
            out.push((labels, if skip_chunks { Vec::new() } else { refs }));
        }
        Ok(out)
    }

    /// Phase one of a `Series` request: every block's matching series with their chunk
    /// refs (labels and refs only, no chunk bytes), merged in label order, and warnings
    /// for blocks that could not be read. The series limit applies here, before a single
    /// chunk is fetched.
    async fn plan(&self, req: &SeriesRequest, fetched: &Fetched) -> Result<Plan, Status> {
        let aggrs = crate::resolution::requested(&req.aggregates)
            .map_err(|e| Status::invalid_argument(format!("invalid aggregates: {e}")))?;
        let matchers = matchers_from_wire(&req.matchers).map_err(bad_matchers)?;
        let abort = req.partial_response_disabled
            || req.partial_response_strategy == PartialResponseStrategy::Abort as i32;
        let (wmin, wmax) = *self.window.read().unwrap_or_else(|e| e.into_inner());
        let (mint, maxt) = (req.min_time.max(wmin), req.max_time.min(wmax));
        let without: BTreeSet<String> = req.without_replica_labels.iter().cloned().collect();
        let blocks = self.blocks_for(req.min_time, req.max_time);
        let blocks = by_resolution(blocks, mint, maxt, req.max_resolution_window);
        let work: Vec<(usize, Arc<StoreBlock>, Vec<Matcher>)> = blocks
            .into_iter()
            .filter_map(|b| {
                let (ok, local) = split_for_block(&matchers, &b.ext);
                ok.then_some((b, local))
            })
            .enumerate()
            .map(|(i, (b, local))| (i, b, local))
            .collect();
        if work.iter().any(|(_, _, l)| l.is_empty()) {
            return Err(Status::invalid_argument(
                "no matchers specified (excluding external labels)",
            ));
        }
        let ctx = self.ctx(fetched);
        let blocks: Vec<Arc<StoreBlock>> = work.iter().map(|(_, b, _)| b.clone()).collect();
        let results: Vec<(usize, Result<Vec<BlockSeries>, ReadError>)> = stream::iter(work)
            .map(|(i, b, local)| {
                let without = &without;
                async move {
                    let r = b
                        .guarded(
                            &self.metrics,
                            self.block_series(&b, local, mint, maxt, without, req.skip_chunks, ctx),
                        )
                        .await;
                    (i, r)
                }
            })
            .buffer_unordered(BLOCK_CONCURRENCY)
            .collect()
            .await;
        let mut merged: BTreeMap<Labels, Vec<(usize, Vec<ChunkRef>)>> = BTreeMap::new();
        let mut warnings = Vec::new();
        for (i, r) in results {
            match r {
                Ok(series) => {
                    for (l, refs) in series {
                        merged.entry(l).or_default().push((i, refs));
                    }
                }
                Err(e) => {
                    self.block_failed(&e, abort)?;
                    warnings.push(e.to_string());
                }
            }
        }
        if self.limits.series > 0 && merged.len() as u64 > self.limits.series {
            return Err(self.limited(format!(
                "exceeded series limit: the query selects more than {} series (--store.limits.request-series)",
                self.limits.series
            )));
        }
        self.check_bytes(fetched)?;
        let mut series: Vec<PlannedSeries> = merged.into_iter().collect();
        if req.limit > 0 && series.len() as u64 > req.limit as u64 {
            series.truncate(req.limit as usize);
        }
        Ok(Plan {
            blocks,
            series,
            warnings,
            aggrs,
            abort,
            skip_chunks: req.skip_chunks,
            frame_batch: req.response_batch_size,
        })
    }

    /// Logs and counts an unreadable block; under the ABORT strategy, the error.
    fn block_failed(&self, e: &ReadError, abort: bool) -> Result<(), Status> {
        self.metrics.block_read_failures.inc();
        tracing::warn!(block = %e.block(), error = %e, partial_response = !abort,
            "block unreadable; answering without it unless partial response is off");
        if abort {
            return Err(Status::unavailable(e.to_string()));
        }
        Ok(())
    }

    fn limited(&self, what: String) -> Status {
        self.metrics.series_limited.inc();
        Status::resource_exhausted(what)
    }

    fn check_bytes(&self, fetched: &Fetched) -> Result<(), Status> {
        let n = fetched.total();
        if self.limits.bytes > 0 && n > self.limits.bytes {
            return Err(self.limited(format!(
                "exceeded bytes limit: the query fetched {n} bytes (postings, series and chunks) from the bucket, more than {} (--store.grpc.downloaded-bytes-limit)",
                self.limits.bytes
            )));
        }
        Ok(())
    }

    /// Phase two: the planned series in batches of at most `batch_chunks` chunk refs —
    /// fetched (each block's share of a batch in one merged read), checked against the
    /// samples and bytes limits, encoded and sent before the next batch is fetched — so
    /// a response of any size is served with about one batch of chunks in memory. A
    /// block failing mid-stream is a warning (or, under ABORT, the stream's error) and
    /// is not read again for this request; a limit crossed mid-stream ends the stream
    /// with `ResourceExhausted`.
    async fn stream_series(
        &self,
        plan: Plan,
        fetched: &Fetched,
        tx: &tokio::sync::mpsc::Sender<Result<Bytes, Status>>,
    ) -> Result<(), Status> {
        let mut frames: Vec<Bytes> = plan.warnings.iter().cloned().map(warn_frame).collect();
        let mut w = FrameWriter::new(plan.skip_chunks, plan.frame_batch);
        let mut failed: HashSet<usize> = HashSet::new();
        let mut samples = 0u64;
        let ctx = self.ctx(fetched);
        let aggrs = &plan.aggrs[..];
        let mut next = 0;
        while next < plan.series.len() {
            let first = next;
            let mut refs = 0usize;
            while next < plan.series.len() && (next == first || refs < self.batch_chunks) {
                refs += plan.series[next]
                    .1
                    .iter()
                    .map(|(_, r)| r.len())
                    .sum::<usize>();
                next += 1;
            }
            let batch = &plan.series[first..next];
            let mut per_block: BTreeMap<usize, Vec<ChunkRef>> = BTreeMap::new();
            for (_, parts) in batch {
                for (bi, r) in parts {
                    if !r.is_empty() && !failed.contains(bi) {
                        per_block.entry(*bi).or_default().extend_from_slice(r);
                    }
                }
            }
            let results: Vec<(usize, Result<Vec<Chunk>, ReadError>)> = stream::iter(per_block)
                .map(|(bi, refs)| {
                    let b = &plan.blocks[bi];
                    async move {
                        let r = b
                            .guarded(&self.metrics, async {
                                let chunks = b.chunks(&refs, ctx).await?;
                                check_aggregates(b, &chunks, aggrs)?;
                                Ok(chunks)
                            })
                            .await;
                        (bi, r)
                    }
                })
                .buffer_unordered(BLOCK_CONCURRENCY)
                .collect()
                .await;
            let mut got: HashMap<usize, std::vec::IntoIter<Chunk>> = HashMap::new();
            for (bi, r) in results {
                match r {
                    Ok(chunks) => {
                        got.insert(bi, chunks.into_iter());
                    }
                    Err(e) => {
                        self.block_failed(&e, plan.abort)?;
                        failed.insert(bi);
                        frames.push(warn_frame(e.to_string()));
                    }
                }
            }
            self.check_bytes(fetched)?;
            for (labels, parts) in batch {
                let mut chunks: Vec<Chunk> = Vec::new();
                for (bi, r) in parts {
                    if let Some(it) = got.get_mut(bi) {
                        chunks.extend(it.by_ref().take(r.len()));
                    }
                }
                if chunks.is_empty() && !plan.skip_chunks {
                    // Its only blocks failed (a warning says so).
                    continue;
                }
                chunks.sort_by_key(|c| (c.min_time, c.max_time));
                // The same block content under two ULIDs (e.g. a replica shipped twice)
                // gives identical chunks: send each once.
                chunks.dedup();
                let had = chunks.len();
                chunks.retain(|c| has_requested(c, aggrs));
                if had > 0 && chunks.is_empty() && !plan.skip_chunks {
                    // Only histogram aggregates, asked for min or max: nothing to send.
                    continue;
                }
                samples += chunks.iter().map(|c| chunk_samples(c, aggrs)).sum::<u64>();
                if self.limits.samples > 0 && samples > self.limits.samples {
                    return Err(self.limited(format!(
                        "exceeded samples limit: the query selects more than {} samples (--store.grpc.series-sample-limit)",
                        self.limits.samples
                    )));
                }
                let buf = w.labels();
                for x in labels.iter() {
                    put_label(buf, x.name.as_bytes(), x.value.as_bytes());
                }
                w.push(chunks.iter().map(|c| wire_chunk(c, aggrs)), &mut |b| {
                    frames.push(b)
                });
            }
            for f in frames.drain(..) {
                if tx.send(Ok(f)).await.is_err() {
                    return Ok(()); // the client went away
                }
            }
        }
        w.finish(&mut |b| frames.push(b));
        for f in frames {
            if tx.send(Ok(f)).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// A chunk reference with its time range, as the index lists it.
type ChunkRef = (u64, i64, i64);

/// One selected series: its labels and, per block (index into [`Plan::blocks`]), the
/// refs of its chunks there.
type PlannedSeries = (Labels, Vec<(usize, Vec<ChunkRef>)>);

/// A `Series` request after phase one (see [`Gateway::plan`]).
struct Plan {
    blocks: Vec<Arc<StoreBlock>>,
    series: Vec<PlannedSeries>,
    warnings: Vec<String>,
    aggrs: Vec<AggrType>,
    abort: bool,
    skip_chunks: bool,
    frame_batch: i64,
}

impl FrameSeries for Gateway {
    async fn series_frames(&self, request: Request<SeriesRequest>) -> Result<FrameStream, Status> {
        self.check_ready()?;
        let tenant = self
            .tenancy
            .as_ref()
            .map(|s| (s.clone(), s.tenant(&request)));
        let mut req = request.into_inner();
        if let Some((scope, t)) = tenant {
            scope.confine(&t, &mut req.matchers);
        }
        let fetched = Fetched::default();
        let plan = match self.plan(&req, &fetched).await {
            Ok(p) => p,
            Err(e) => {
                self.metrics.observe_fetched(&fetched);
                return Err(e);
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(FRAME_QUEUE);
        let gw = self.clone();
        tokio::spawn(async move {
            if let Err(e) = gw.stream_series(plan, &fetched, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
            gw.metrics.observe_fetched(&fetched);
            gw.metrics
                .observe_caches(gw.cache.bytes(), gw.index_cache.bytes());
            drop(tx);
            crate::heap::after_request(fetched.total());
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

type SeriesStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<SeriesResponse, Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl thanos::store_server::Store for Gateway {
    type SeriesStream = SeriesStream;

    async fn series(
        &self,
        request: Request<SeriesRequest>,
    ) -> Result<Response<Self::SeriesStream>, Status> {
        let frames = self.series_frames(request).await?;
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            frames,
            |r| r.and_then(|b| SeriesResponse::decode(b).map_err(internal)),
        ))))
    }

    async fn label_names(
        &self,
        request: Request<LabelNamesRequest>,
    ) -> Result<Response<LabelNamesResponse>, Status> {
        self.check_ready()?;
        let tenant = self
            .tenancy
            .as_ref()
            .map(|s| (s.clone(), s.tenant(&request)));
        let mut req = request.into_inner();
        if let Some((scope, t)) = tenant {
            scope.confine(&t, &mut req.matchers);
        }
        let matchers = matchers_from_wire(&req.matchers).map_err(bad_matchers)?;
        let without: BTreeSet<String> = req.without_replica_labels.iter().cloned().collect();
        let mut set = BTreeSet::new();
        let mut warnings = Vec::new();
        let fetched = Fetched::default();
        let ctx = self.ctx(&fetched);
        for b in self.blocks_for(req.start, req.end) {
            let (ok, local) = split_for_block(&matchers, &b.ext);
            if !ok {
                continue;
            }
            let names = b
                .guarded(&self.metrics, b.label_names(&local, ctx))
                .await
                .map_err(|e| e.to_string());
            match names {
                Ok(names) if names.is_empty() => {}
                Ok(names) => {
                    set.extend(names);
                    set.extend(b.ext.iter().map(|l| l.name.to_string()));
                }
                Err(e) => {
                    self.metrics.block_read_failures.inc();
                    tracing::warn!(error = %e, "block unreadable in LabelNames");
                    if req.partial_response_disabled {
                        return Err(Status::unavailable(e));
                    }
                    warnings.push(e)
                }
            }
        }
        let mut names: Vec<String> = set.into_iter().filter(|n| !without.contains(n)).collect();
        if req.limit > 0 && names.len() as u64 > req.limit as u64 {
            names.truncate(req.limit as usize);
        }
        self.metrics.observe_fetched(&fetched);
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
        self.check_ready()?;
        let tenant = self
            .tenancy
            .as_ref()
            .map(|s| (s.clone(), s.tenant(&request)));
        let mut req = request.into_inner();
        if let Some((scope, t)) = tenant {
            scope.confine(&t, &mut req.matchers);
        }
        if req.label.is_empty() {
            return Err(Status::invalid_argument(
                "label name parameter cannot be empty",
            ));
        }
        let matchers = matchers_from_wire(&req.matchers).map_err(bad_matchers)?;
        let mut set = BTreeSet::new();
        let mut warnings = Vec::new();
        let fetched = Fetched::default();
        let ctx = self.ctx(&fetched);
        if !req.without_replica_labels.contains(&req.label) {
            for b in self.blocks_for(req.start, req.end) {
                let (ok, local) = split_for_block(&matchers, &b.ext);
                if !ok {
                    continue;
                }
                let values = b
                    .guarded(&self.metrics, async {
                        match b.ext.get(&req.label) {
                            // The external value, if the block has any matching series.
                            Some(v) => b.label_names(&local, ctx).await.map(|n| {
                                if n.is_empty() {
                                    Vec::new()
                                } else {
                                    vec![v.to_string()]
                                }
                            }),
                            None => b.label_values(&req.label, &local, ctx).await,
                        }
                    })
                    .await
                    .map_err(|e| e.to_string());
                match values {
                    Ok(v) => set.extend(v),
                    Err(e) => {
                        self.metrics.block_read_failures.inc();
                        tracing::warn!(error = %e, "block unreadable in LabelValues");
                        if req.partial_response_disabled {
                            return Err(Status::unavailable(e));
                        }
                        warnings.push(e)
                    }
                }
            }
        }
        let mut values: Vec<String> = set.into_iter().collect();
        if req.limit > 0 && values.len() as u64 > req.limit as u64 {
            values.truncate(req.limit as usize);
        }
        self.metrics.observe_fetched(&fetched);
        Ok(Response::new(LabelValuesResponse {
            values,
            warnings,
            hints: None,
        }))
    }
}

#[tonic::async_trait]
impl storeapi::wire::info::info_server::Info for Gateway {
    async fn info(&self, req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        self.check_ready()?;
        let (wmin, wmax) = *self.window.read().unwrap_or_else(|e| e.into_inner());
        // Per external label set: the time ranges of its blocks.
        let mut sets: BTreeMap<Labels, Vec<(i64, i64)>> = BTreeMap::new();
        let blocks: Vec<Arc<StoreBlock>> = self
            .blocks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        // With enforcement, sets are shown as the caller may see them (see `tenancy`).
        let shown: Option<BTreeMap<Labels, Labels>> = self.tenancy.as_ref().map(|scope| {
            let all: Vec<Labels> = blocks.iter().map(|b| b.ext.clone()).collect();
            let caller = crate::tenancy::TenantScope::caller(&req);
            scope.visible(caller.as_deref(), &all).into_iter().collect()
        });
        for b in &blocks {
            let ls = match &shown {
                None => b.ext.clone(),
                Some(m) => match m.get(&b.ext) {
                    Some(ls) => ls.clone(),
                    None => continue,
                },
            };
            sets.entry(ls)
                .or_default()
                .push((b.meta.min_time, b.meta.max_time - 1));
        }
        let (mut min_time, mut max_time) = (i64::MAX, i64::MIN);
        let mut label_sets = Vec::new();
        let mut tsdb_infos = Vec::new();
        for (ls, mut ranges) in sets {
            ranges.sort_unstable();
            let z = ZLabelSet {
                labels: labels_to_wire(&ls),
            };
            // Adjacent or overlapping ranges merged, as Thanos does.
            let mut merged: Vec<(i64, i64)> = Vec::new();
            for (a, b) in ranges {
                match merged.last_mut() {
                    Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            for (a, b) in merged {
                let (a, b) = (a.max(wmin), b.min(wmax));
                if a > b {
                    continue;
                }
                min_time = min_time.min(a);
                max_time = max_time.max(b);
                tsdb_infos.push(TsdbInfo {
                    labels: Some(z.clone()),
                    min_time: a,
                    max_time: b,
                });
            }
            label_sets.push(z);
        }
        Ok(Response::new(InfoResponse {
            label_sets,
            component_type: "store".into(),
            store: Some(StoreInfo {
                min_time,
                max_time,
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

#[cfg(test)]
mod tests {
    //! The `Series` stream in batches equals the answer of one batch, and the limits end
    //! it as documented; on a real FILESYSTEM bucket of blocks written by `tsdb`.

    use super::*;
    use objstore::BucketConfig;
    use storeapi::MatchOp;
    use storeapi::wire::matcher_to_wire;
    use tsdb::block::{BlockOptions, BlockWriter};
    use tsdb::chunk::XorChunk;

    const T0: i64 = 1_700_000_000_000;
    const HOUR: i64 = 3_600_000;

    /// Three 1h blocks of 40 series; each series has two 3-sample chunks per block.
    fn gateway(dir: &std::path::Path, batch_chunks: usize, limits: Limits) -> Gateway {
        gateway_with(dir, batch_chunks, limits, |_| None)
    }

    /// As [`gateway`], block `b`'s external labels `tenant_id=<tenant_of(b)>` if any.
    fn gateway_with(
        dir: &std::path::Path,
        batch_chunks: usize,
        limits: Limits,
        tenant_of: impl Fn(i64) -> Option<&'static str>,
    ) -> Gateway {
        let bucket_dir = dir.join("bucket");
        let bucket = Bucket::new(&BucketConfig::filesystem(&bucket_dir), None).unwrap();
        let mut blocks = BTreeMap::new();
        for b in 0..3i64 {
            let start = T0 + b * HOUR;
            let mut series: Vec<(Labels, Vec<Chunk>)> = (0..40)
                .map(|i| {
                    let l = Labels::from_pairs([
                        ("__name__", "m"),
                        ("instance", format!("host-{i:02}").as_str()),
                    ])
                    .unwrap();
                    let chunks = (0..2)
                        .map(|k| {
                            let t = start + k * 1_800_000;
                            let mut c = XorChunk::new();
                            for s in 0..3 {
                                c.append(t + s * 15_000, (i * 10 + s) as f64).unwrap();
                            }
                            Chunk {
                                min_time: t,
                                max_time: t + 30_000,
                                encoding: Encoding::Xor,
                                data: Bytes::from(c.into_bytes()),
                            }
                        })
                        .collect();
                    (l, chunks)
                })
                .collect();
            series.sort_by(|a, b| a.0.cmp(&b.0));
            let opts = BlockOptions {
                thanos: tenant_of(b).map(|t| {
                    tsdb::block::ThanosMeta::new(
                        BTreeMap::from([("tenant_id".to_string(), t.to_string())]),
                        "receive",
                    )
                }),
                ..BlockOptions::default()
            };
            let meta = BlockWriter::write(&bucket_dir, start, start + HOUR, series, &opts).unwrap();
            let blk = StoreBlock::new(meta, &dir.join("data"), bucket.clone());
            blocks.insert(blk.id(), Arc::new(blk));
        }
        Gateway {
            blocks: Arc::new(RwLock::new(blocks)),
            ready: Arc::new(AtomicBool::new(true)),
            cache: Arc::new(ChunkCache::new(0)),
            index_cache: Arc::new(IndexCache::new(1 << 20)),
            inflight: Arc::new(InflightBytes::unbounded()),
            metrics: StoreMetrics::default(),
            limits,
            data_dir: dir.join("data"),
            bucket,
            window: Arc::new(RwLock::new((i64::MIN, i64::MAX))),
            batch_chunks,
            tenancy: None,
            postings_sampling: 32,
        }
    }

    fn request() -> SeriesRequest {
        let m = Matcher::new(MatchOp::Equal, "__name__", "m").unwrap();
        SeriesRequest {
            min_time: T0,
            max_time: T0 + 3 * HOUR,
            matchers: vec![matcher_to_wire(&m)],
            ..Default::default()
        }
    }

    /// (series labels, chunk count) in stream order, or the stream's error after them.
    async fn run(gw: &Gateway) -> (Vec<(String, usize)>, Option<Status>) {
        run_as(gw, None).await
    }

    /// As [`run`], with `thanos-tenant` metadata when given.
    async fn run_as(gw: &Gateway, tenant: Option<&str>) -> (Vec<(String, usize)>, Option<Status>) {
        let mut req = Request::new(request());
        if let Some(t) = tenant {
            req.metadata_mut()
                .insert(crate::tenancy::TENANT_METADATA, t.parse().unwrap());
        }
        let mut s = gw.series_frames(req).await.unwrap();
        let mut out = Vec::new();
        while let Some(f) = s.next().await {
            match f {
                Ok(b) => match SeriesResponse::decode(b).unwrap().result {
                    Some(series_response::Result::Series(x)) => {
                        let l: Vec<String> = x
                            .labels
                            .iter()
                            .map(|l| format!("{}={}", l.name, l.value))
                            .collect();
                        out.push((l.join(","), x.chunks.len()));
                    }
                    other => panic!("unexpected frame {other:?}"),
                },
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn enforced_tenancy_serves_only_the_callers_blocks() {
        use storeapi::wire::info::info_server::Info;
        use storeapi::wire::thanos::store_server::Store;
        let dir = tempfile::tempdir().unwrap();
        // Block 0: tenant a, block 1: tenant b, block 2: no tenant label.
        let tenant_of = |b: i64| [Some("a"), Some("b"), None][b as usize];
        let mut gw = gateway_with(dir.path(), usize::MAX, Limits::default(), tenant_of);
        let open = run(&gw).await;
        assert_eq!(
            open.0.len(),
            120,
            "without enforcement every block is served"
        );
        gw.tenancy = Some(Arc::new(crate::tenancy::TenantScope {
            label: "tenant_id".into(),
            default_tenant: "default-tenant".into(),
        }));
        for t in ["a", "b"] {
            let (series, err) = run_as(&gw, Some(t)).await;
            assert!(err.is_none(), "{err:?}");
            assert_eq!(series.len(), 40, "tenant {t}");
            assert!(
                series
                    .iter()
                    .all(|(l, n)| l.contains(&format!("tenant_id={t}")) && *n == 2),
                "tenant {t}: {series:?}"
            );
        }
        let (none, err) = run(&gw).await;
        assert!(
            err.is_none() && none.is_empty(),
            "no metadata: the default tenant has nothing: {none:?}"
        );

        let values = |tenant: Option<&str>| {
            let mut r = Request::new(LabelValuesRequest {
                label: "tenant_id".into(),
                start: T0,
                end: T0 + 3 * HOUR,
                ..Default::default()
            });
            if let Some(t) = tenant {
                r.metadata_mut()
                    .insert(crate::tenancy::TENANT_METADATA, t.parse().unwrap());
            }
            r
        };
        let v = gw
            .label_values(values(Some("a")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(v.values, ["a"]);
        let v = gw.label_values(values(None)).await.unwrap().into_inner();
        assert!(v.values.is_empty(), "{:?}", v.values);
        let names = gw
            .label_names(Request::new(LabelNamesRequest {
                start: T0,
                end: T0 + 3 * HOUR,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(names.names.is_empty(), "{:?}", names.names);

        let info = |tenant: Option<&str>| {
            let mut r = Request::new(InfoRequest {});
            if let Some(t) = tenant {
                r.metadata_mut()
                    .insert(crate::tenancy::TENANT_METADATA, t.parse().unwrap());
            }
            r
        };
        let own = gw.info(info(Some("b"))).await.unwrap().into_inner();
        let text = format!("{:?}", own.label_sets);
        assert!(text.contains("\"b\"") && !text.contains("\"a\""), "{text}");
        let anon = gw.info(info(None)).await.unwrap().into_inner();
        let text = format!("{:?} {:?}", anon.label_sets, anon.store);
        assert!(
            !text.contains("tenant_id"),
            "no tenant named without metadata: {text}"
        );
    }

    #[tokio::test]
    async fn batches_stream_the_same_answer_as_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let whole = run(&gateway(dir.path(), usize::MAX, Limits::default())).await;
        assert!(whole.1.is_none(), "{:?}", whole.1);
        assert_eq!(whole.0.len(), 40);
        assert!(whole.0.iter().all(|(_, n)| *n == 6), "{:?}", whole.0);
        assert!(
            whole.0.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, each once"
        );
        for batch in [1, 7, 60] {
            let dir = tempfile::tempdir().unwrap();
            let gw = gateway(dir.path(), batch, Limits::default());
            let got = run(&gw).await;
            assert_eq!(got.0, whole.0, "batch of {batch} chunk refs");
            assert!(got.1.is_none());
        }
    }

    #[tokio::test]
    async fn series_limit_refuses_before_any_chunk_and_samples_limit_ends_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            series: 39,
            ..Limits::default()
        };
        let gw = gateway(dir.path(), 7, limits);
        let err = match gw.series_frames(Request::new(request())).await {
            Err(e) => e,
            Ok(_) => panic!("40 series must exceed a limit of 39"),
        };
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
        assert_eq!(
            gw.metrics.bytes_fetched.get(),
            0,
            "no chunk fetched before the series limit"
        );

        // 18 samples a series: the limit is crossed at the 6th series, mid-stream.
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            samples: 100,
            ..Limits::default()
        };
        let (sent, err) = run(&gateway(dir.path(), 7, limits)).await;
        let err = err.expect("the samples limit ends the stream");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
        assert!(
            sent.len() < 6,
            "at most the series before the limit: {sent:?}"
        );
    }

    /// Chunk bytes the gateway's metrics say were fetched from the bucket.
    fn chunk_bytes(gw: &Gateway) -> u64 {
        gw.metrics
            .fetched_bytes
            .get_or_create(&crate::metrics::DataTypeLabel {
                data_type: "chunks".into(),
            })
            .get()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn two_concurrent_series_calls_fetch_each_chunk_once() {
        // One call alone: what fetching every chunk once costs.
        let dir = tempfile::tempdir().unwrap();
        let mut gw = gateway(dir.path(), 7, Limits::default());
        gw.cache = Arc::new(ChunkCache::new(1 << 20));
        let alone = run(&gw).await;
        assert!(alone.1.is_none());
        let once = chunk_bytes(&gw);
        assert!(once > 0);

        let dir = tempfile::tempdir().unwrap();
        let mut gw = gateway(dir.path(), 7, Limits::default());
        gw.cache = Arc::new(ChunkCache::new(1 << 20));
        let (a, b) = tokio::join!(run(&gw), run(&gw));
        assert!(a.1.is_none() && b.1.is_none(), "{:?} {:?}", a.1, b.1);
        assert_eq!(a.0, alone.0);
        assert_eq!(b.0, alone.0);
        // The metric is updated when each stream ends; both have ended here.
        assert_eq!(
            chunk_bytes(&gw),
            once,
            "two concurrent calls fetched chunks twice"
        );
        assert!(
            gw.metrics.shared_fetches.get() + gw.metrics.chunk_cache_hits.get() > 0,
            "the second call took the chunks from the first"
        );
        // What the caches hold is exported once a call is over.
        let held = |cache: &str| {
            gw.metrics
                .cache_bytes
                .get_or_create(&crate::metrics::CacheLabel {
                    cache: cache.into(),
                })
                .get()
        };
        assert_eq!(held("chunks"), gw.cache.bytes() as i64);
        assert!(held("chunks") > 0 && held("chunks") <= 1 << 20);
        assert_eq!(held("index"), gw.index_cache.bytes() as i64);
        assert!(held("index") > 0);
    }
}
