//! The StoreAPI fan-out: `Series`, `LabelNames` and `LabelValues` sent to every matching
//! endpoint in parallel, streams merged by labels, XOR chunks decoded, replicas deduplicated.
//! [`ProxyStorage`] is the [`promql::Storage`] the engine reads through.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use promql::{SelectHints, SelectResult, Storage, StorageError, StorageSeries};
use prost::Message;
use storeapi::wire::BytesCodec;
use storeapi::wire::series_frame::{self, Frame, SeriesRef};
use storeapi::wire::thanos::{
    self, AggrChunk, LabelNamesRequest, LabelValuesRequest, PartialResponseStrategy, SeriesRequest,
    store_client::StoreClient,
};
use storeapi::{Label, Labels, Matcher, Sample};

use crate::downsample::{self, Mode};
use crate::endpoints::{Endpoint, EndpointSet};
use crate::histograms;
use storeapi::dedup::{self, TimeRanged};
use storeapi::histogram::HistogramSample;

/// Series per response frame the querier asks batching stores for (Thanos's default).
pub const RESPONSE_BATCH_SIZE: i64 = 64;

/// Per-request settings of the fan-out.
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    /// Replica labels to strip and deduplicate on; empty or `dedup == false`: no dedup.
    pub replica_labels: Vec<String>,
    pub dedup: bool,
    pub partial_response: bool,
    /// Tenant forwarded as `thanos-tenant` metadata.
    pub tenant: Option<String>,
    /// Tenancy enforcement (see [`crate::tenancy`]): appended to the matchers of every
    /// `Series`, `LabelNames` and `LabelValues` call, so no read leaves the tenant.
    pub enforce: Option<Matcher>,
    /// Per-endpoint call timeout.
    pub timeout: Duration,
    /// `max_source_resolution` in milliseconds: the coarsest downsampled data stores may
    /// answer with (0: raw).
    pub max_resolution_ms: i64,
}

impl FanoutOptions {
    pub(crate) fn dedup_labels(&self) -> &[String] {
        if self.dedup {
            &self.replica_labels
        } else {
            &[]
        }
    }

    pub(crate) fn strategy(&self) -> i32 {
        if self.partial_response {
            PartialResponseStrategy::Warn as i32
        } else {
            PartialResponseStrategy::Abort as i32
        }
    }

    /// `matchers` with the enforced tenant matcher, if any, in place of the user's
    /// matchers on the tenant label. Those were either checked to admit the caller's
    /// tenant (so the equality is at least as strict) or, with
    /// `--query.tenant-matcher-conflict=replace`, are meant to be replaced.
    fn confined(&self, matchers: &[Matcher]) -> Vec<Matcher> {
        match &self.enforce {
            None => matchers.to_vec(),
            Some(e) => matchers
                .iter()
                .filter(|m| m.name != e.name)
                .cloned()
                .chain(std::iter::once(e.clone()))
                .collect(),
        }
    }

    pub(crate) fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.timeout);
        if let Some(t) = &self.tenant
            && let Ok(v) = t.parse()
        {
            req.metadata_mut().insert("thanos-tenant", v);
        }
        req
    }
}

/// Why a fan-out failed (partial response off, or an invalid store answer).
#[derive(Debug, Clone, thiserror::Error)]
pub enum FanoutError {
    #[error("{0}")]
    Store(String),
}

impl From<FanoutError> for StorageError {
    fn from(e: FanoutError) -> Self {
        StorageError::Unavailable(e.to_string())
    }
}

/// One series as one store sent it (consecutive frames with equal labels joined).
#[derive(Debug)]
pub struct StoreSeries {
    pub labels: Labels,
    pub chunks: Vec<RawChunk>,
}

/// A chunk as a store sent it; `data` shares the buffer of the frame it came in.
#[derive(Debug, Clone)]
pub struct RawChunk {
    pub min_time: i64,
    pub max_time: i64,
    /// `thanos.Chunk.Encoding` and bytes; `None` when the store sent only aggregates.
    pub raw: Option<(i32, Bytes)>,
    /// Downsampled aggregates (count, sum, min, max, counter), as encoding and bytes.
    pub aggrs: [Option<(i32, Bytes)>; 5],
}

impl From<AggrChunk> for RawChunk {
    fn from(c: AggrChunk) -> Self {
        let own = |r: Option<thanos::Chunk>| r.map(|r| (r.r#type, r.data));
        RawChunk {
            min_time: c.min_time,
            max_time: c.max_time,
            raw: own(c.raw),
            aggrs: [
                own(c.count),
                own(c.sum),
                own(c.min),
                own(c.max),
                own(c.counter),
            ],
        }
    }
}

impl TimeRanged for RawChunk {
    fn min_time(&self) -> i64 {
        self.min_time
    }
    fn max_time(&self) -> i64 {
        self.max_time
    }
}

/// One series as one store sent it, its chunks decoded and trimmed to the query range
/// (overlapping chunks of that store unioned). Samples are empty for `skip_chunks` calls.
#[derive(Debug)]
pub struct DecodedSeries {
    pub labels: Labels,
    pub samples: Vec<Sample>,
    /// Native-histogram samples (from `HISTOGRAM`/`FLOAT_HISTOGRAM` chunks).
    pub histograms: Vec<HistogramSample>,
}

impl DecodedSeries {
    fn is_empty(&self) -> bool {
        self.samples.is_empty() && self.histograms.is_empty()
    }
}

/// The answer of one store.
#[derive(Debug, Default)]
struct StoreAnswer {
    series: Vec<DecodedSeries>,
    warnings: Vec<String>,
    /// Whether the series arrived strictly ordered by labels.
    sorted: bool,
}

/// Builds a store's answer while its frames arrive: consecutive frames with equal labels
/// are joined, and each series is decoded as soon as the next one starts, so decoding
/// overlaps with the store still encoding and sending.
struct Collector {
    strip: Vec<String>,
    /// `None`: labels only (`skip_chunks`); else the query range `[mint, maxt]`.
    range: Option<(i64, i64)>,
    /// How downsampled chunks are read (from the request's aggregates).
    mode: Mode,
    cur: Option<StoreSeries>,
    out: Vec<DecodedSeries>,
    /// Whether every series so far came after the previous one (checked while joining
    /// frames, so a sorted answer needs no second pass).
    sorted: bool,
}

impl Collector {
    fn new(strip: Vec<String>, range: Option<(i64, i64)>, mode: Mode) -> Self {
        Collector {
            strip,
            range,
            mode,
            cur: None,
            out: Vec::new(),
            sorted: true,
        }
    }

    /// Adds one series read from `frame`. Its labels are filtered and sorted in place.
    fn push(&mut self, frame: &Bytes, s: &mut SeriesRef<'_>) -> Result<(), String> {
        // As `Labels::from_unsorted`: empty values mean absent; replica labels are stripped.
        let strip = &self.strip;
        s.labels
            .retain(|l| !l.value.is_empty() && !strip.iter().any(|r| r == l.name));
        if !s.labels.is_sorted_by(|a, b| a.name < b.name) {
            s.labels
                .sort_unstable_by(|a, b| (a.name, a.value).cmp(&(b.name, b.value)));
            if let Some(w) = s.labels.windows(2).find(|w| w[0].name == w[1].name) {
                return Err(format!("duplicate label name {:?} in a series", w[0].name));
            }
        }
        let chunks = s.chunks.iter().map(|c| RawChunk {
            min_time: c.min_time,
            max_time: c.max_time,
            raw: c.raw.map(|r| (r.encoding, frame.slice_ref(r.data))),
            aggrs: c
                .aggrs
                .map(|a| a.map(|r| (r.encoding, frame.slice_ref(r.data)))),
        });
        if let Some(cur) = &mut self.cur {
            let order = cur
                .labels
                .iter()
                .map(|l| (l.name.as_str(), l.value.as_str()))
                .cmp(s.labels.iter().map(|l| (l.name, l.value)));
            match order {
                std::cmp::Ordering::Equal => {
                    cur.chunks.extend(chunks);
                    return Ok(());
                }
                std::cmp::Ordering::Greater => self.sorted = false,
                std::cmp::Ordering::Less => {}
            }
        }
        let labels = Labels::from_sorted_unchecked(
            s.labels
                .iter()
                .map(|l| Label::new(l.name, l.value))
                .collect(),
        );
        let chunks = chunks.collect();
        self.flush()?;
        self.cur = Some(StoreSeries { labels, chunks });
        Ok(())
    }

    fn flush(&mut self) -> Result<(), String> {
        let Some(cur) = self.cur.take() else {
            return Ok(());
        };
        match self.range {
            None => self.out.push(DecodedSeries {
                labels: cur.labels,
                samples: Vec::new(),
                histograms: Vec::new(),
            }),
            Some((mint, maxt)) => {
                let (samples, histograms) = decode_store_series(cur.chunks, mint, maxt, self.mode)?;
                let d = DecodedSeries {
                    labels: cur.labels,
                    samples,
                    histograms,
                };
                if !d.is_empty() {
                    self.out.push(d);
                }
            }
        }
        Ok(())
    }

    /// The decoded series and whether they arrived sorted.
    fn finish(mut self) -> Result<(Vec<DecodedSeries>, bool), String> {
        self.flush()?;
        Ok((self.out, self.sorted))
    }
}

const SERIES_PATH: &str = "/thanos.Store/Series";

/// How errors name an endpoint's kind (Thanos's component type).
fn component(e: &Endpoint) -> String {
    let component = e.status().component_type;
    if component.is_empty() {
        "store".to_string()
    } else {
        component
    }
}

fn store_error(e: &Endpoint, what: &str, status: &tonic::Status) -> String {
    format!(
        "{} {}: {what}: rpc error: code = {:?} desc = {}",
        component(e),
        e.addr,
        status.code(),
        status.message()
    )
}

async fn series_from(
    e: Arc<Endpoint>,
    req: SeriesRequest,
    opts: FanoutOptions,
) -> Result<StoreAnswer, String> {
    let range = (!req.skip_chunks).then_some((req.min_time, req.max_time));
    let mode = Mode::from_aggregates(&req.aggregates);
    let mut col = Collector::new(opts.dedup_labels().to_vec(), range, mode);
    let timeout = opts.timeout;
    let work = async {
        // Frames arrive as bytes and are read in place (see `series_frame`), so no
        // prost struct is built per series, label or chunk.
        let mut grpc =
            tonic::client::Grpc::new(e.channel.clone()).max_decoding_message_size(usize::MAX);
        grpc.ready()
            .await
            .map_err(|err| format!("{} {}: receive series: {err}", component(&e), e.addr))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(SERIES_PATH);
        let body = Bytes::from(req.encode_to_vec());
        let mut stream = grpc
            .server_streaming(opts.request(body), path, BytesCodec)
            .await
            .map_err(|s| store_error(&e, "receive series", &s))?
            .into_inner();
        let mut ans = StoreAnswer::default();
        loop {
            let frame = stream
                .message()
                .await
                .map_err(|s| store_error(&e, "receive series", &s))?;
            let Some(frame) = frame else { break };
            let invalid = |err: storeapi::wire::remote_write::DecodeError| {
                format!(
                    "{} {}: receive series: invalid response: {err}",
                    component(&e),
                    e.addr
                )
            };
            match series_frame::read_frame(&frame).map_err(invalid)? {
                Frame::Series(mut r) => {
                    let mut view = SeriesRef::default();
                    while r.next_series(&mut view).map_err(invalid)? {
                        col.push(&frame, &mut view)?;
                    }
                }
                Frame::Warning(w) => ans.warnings.push(w.to_string()),
                Frame::Other => {}
            }
        }
        (ans.series, ans.sorted) = col.finish()?;
        Ok(ans)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{} {}: receive series: timed out after {timeout:?}",
            e.status().component_type,
            e.addr
        )),
    }
}

/// Decodes the float samples of a run of non-overlapping chunks, trimmed to `[mint, maxt]`.
pub fn decode_chunks(chunks: &[RawChunk], mint: i64, maxt: i64) -> Result<Vec<Sample>, String> {
    let mut out: Vec<Sample> = Vec::new();
    for c in chunks {
        if c.max_time < mint || c.min_time > maxt {
            continue;
        }
        let Some((encoding, data)) = &c.raw else {
            continue;
        };
        if *encoding != thanos::chunk::Encoding::Xor as i32 {
            // Histogram chunks are decoded by `histograms::decode_histogram_chunks`.
            continue;
        }
        if out.capacity() == 0 {
            // Room for the chunk's share of samples inside the range (an instant query
            // keeps a few of a chunk's 120).
            let count = data
                .get(..2)
                .map_or(0, |h| u16::from_be_bytes([h[0], h[1]]));
            let span = (c.max_time as i128 - c.min_time as i128).max(0) + 1;
            let inside =
                (maxt.min(c.max_time) as i128 - mint.max(c.min_time) as i128 + 1).clamp(0, span);
            out.reserve((count as i128 * inside / span) as usize + 1);
        }
        chunkenc::xor::for_each_sample(data, |t, v| {
            if t > maxt {
                // Samples are in time order: the rest of this chunk is past the range.
                return ControlFlow::Break(());
            }
            if t >= mint && out.last().is_none_or(|l| l.t < t) {
                out.push(Sample { t, v });
            }
            ControlFlow::Continue(())
        })
        .map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Decodes one store's chunks of one series into float and histogram samples:
/// overlapping chunks (e.g. head and block, out-of-order data) are the same source and
/// are unioned. Downsampled chunks are read per `mode` (see [`crate::downsample`]); in
/// count mode raw samples count 1 each.
fn decode_store_series(
    chunks: Vec<RawChunk>,
    mint: i64,
    maxt: i64,
    mode: Mode,
) -> Result<(Vec<Sample>, Vec<HistogramSample>), String> {
    if chunks.iter().any(|c| c.aggrs.iter().any(Option::is_some)) {
        let mut views: Vec<downsample::ChunkView<'_>> = chunks
            .iter()
            .map(|c| downsample::ChunkView {
                min_time: c.min_time,
                max_time: c.max_time,
                raw: c.raw.as_ref(),
                aggrs: &c.aggrs,
            })
            .collect();
        return downsample::decode_series(&mut views, mint, maxt, mode);
    }
    let (mut samples, histograms) = decode_raw_series(chunks, mint, maxt)?;
    if mode.counts() {
        for s in &mut samples {
            if !storeapi::is_stale_nan(s.v) {
                s.v = 1.0;
            }
        }
    }
    Ok((samples, histograms))
}

fn decode_raw_series(
    mut chunks: Vec<RawChunk>,
    mint: i64,
    maxt: i64,
) -> Result<(Vec<Sample>, Vec<HistogramSample>), String> {
    let has_histograms = chunks.iter().any(|c| {
        c.raw
            .as_ref()
            .is_some_and(|(e, _)| histograms::is_histogram_encoding(*e))
    });
    let decode = |run: &[RawChunk]| -> Result<(Vec<Sample>, Vec<HistogramSample>), String> {
        let floats = decode_chunks(run, mint, maxt)?;
        let hists = if has_histograms {
            histograms::decode_histogram_chunks(run, mint, maxt)?
        } else {
            Vec::new()
        };
        Ok((floats, hists))
    };
    if !chunks.windows(2).all(|w| w[0].max_time < w[1].min_time) {
        chunks.sort_by_key(|c| (c.min_time, c.max_time));
    }
    if chunks.windows(2).all(|w| w[0].max_time < w[1].min_time) {
        // The usual case: one run of consecutive chunks.
        return decode(&chunks);
    }
    let (mut runs, mut hist_runs) = (Vec::new(), Vec::new());
    for run in dedup::overlap_split(chunks) {
        let (samples, hists) = decode(&run)?;
        if !samples.is_empty() {
            runs.push(samples);
        }
        if !hists.is_empty() {
            hist_runs.push(hists);
        }
    }
    Ok((dedup::chain_merge(runs), histograms::chain(hist_runs)))
}

/// Merges the answers of all stores: groups equal label sets (replicas, once replica labels
/// are stripped), unions overlapping chunk runs of one store, decodes, and deduplicates
/// the replicas from different stores (penalty) or unions them (dedup off).
pub fn merge_series(
    parts: Vec<StoreSeries>,
    mint: i64,
    maxt: i64,
    dedup_on: bool,
    counter: bool,
) -> Result<Vec<StorageSeries>, String> {
    let mut decoded = Vec::with_capacity(parts.len());
    for p in parts {
        let (samples, histograms) = decode_store_series(p.chunks, mint, maxt, Mode::Average)?;
        decoded.push(DecodedSeries {
            labels: p.labels,
            samples,
            histograms,
        });
    }
    Ok(merge_decoded(decoded, dedup_on, counter, false))
}

/// Merges decoded store series: equal label sets from different stores (or repeated by
/// one store) are replicas, deduplicated (penalty) or unioned (dedup off). `sorted`: the
/// caller knows `parts` are strictly ordered by labels (one store that answered so).
pub fn merge_decoded(
    mut parts: Vec<DecodedSeries>,
    dedup_on: bool,
    counter: bool,
    sorted: bool,
) -> Vec<StorageSeries> {
    // Stable: equal label sets keep the order of the stores (a k-way merge of sorted streams).
    if !sorted && !parts.windows(2).all(|w| w[0].labels < w[1].labels) {
        parts.sort_by(|a, b| a.labels.cmp(&b.labels));
    } else {
        // Sorted and unique: nothing to merge.
        return parts
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(|p| storage_series(p.labels, p.samples, p.histograms))
            .collect();
    }
    let mut out = Vec::with_capacity(parts.len());
    let mut it = parts.into_iter().peekable();
    while let Some(first) = it.next() {
        let labels = first.labels;
        let mut replicas = Vec::new();
        let mut hist_replicas = Vec::new();
        for p in std::iter::once(first.samples)
            .zip(std::iter::once(first.histograms))
            .chain(std::iter::from_fn(|| {
                it.next_if(|p| p.labels == labels)
                    .map(|p| (p.samples, p.histograms))
            }))
        {
            if !p.0.is_empty() {
                replicas.push(p.0);
            }
            if !p.1.is_empty() {
                hist_replicas.push(p.1);
            }
        }
        let samples = if replicas.len() <= 1 {
            replicas.pop().unwrap_or_default()
        } else if dedup_on {
            dedup::penalty_dedup(replicas, counter)
        } else {
            dedup::chain_merge(replicas)
        };
        let hists = histograms::merge_replicas(hist_replicas, dedup_on);
        if !samples.is_empty() || !hists.is_empty() {
            out.push(storage_series(labels, samples, hists));
        }
    }
    out
}

/// A series for the engine. A timestamp holds one sample: where replicas disagree on
/// the kind (a float in one, a histogram in another), the float is kept.
fn storage_series(
    labels: Labels,
    samples: Vec<Sample>,
    mut hists: Vec<HistogramSample>,
) -> StorageSeries {
    if !samples.is_empty() && !hists.is_empty() {
        hists.retain(|h| samples.binary_search_by_key(&h.t, |s| s.t).is_err());
    }
    StorageSeries {
        labels,
        samples,
        histograms: hists,
    }
}

/// The fan-out over an [`EndpointSet`] with per-request options.
#[derive(Debug, Clone)]
pub struct ProxyStorage {
    pub endpoints: Arc<EndpointSet>,
    pub opts: FanoutOptions,
}

impl ProxyStorage {
    pub fn new(endpoints: Arc<EndpointSet>, opts: FanoutOptions) -> Self {
        ProxyStorage { endpoints, opts }
    }

    fn no_endpoints_check(&self) -> Result<(), FanoutError> {
        if !self.opts.partial_response && !self.endpoints.any_healthy() {
            return Err(FanoutError::Store(
                "no StoreAPI endpoints are healthy and partial response is disabled".into(),
            ));
        }
        Ok(())
    }

    fn series_request(
        &self,
        hints: &SelectHints,
        matchers: &[Matcher],
        skip_chunks: bool,
    ) -> SeriesRequest {
        SeriesRequest {
            min_time: hints.start,
            max_time: hints.end,
            matchers: matchers
                .iter()
                .map(storeapi::wire::matcher_to_wire)
                .collect(),
            partial_response_disabled: !self.opts.partial_response,
            partial_response_strategy: self.opts.strategy(),
            skip_chunks,
            max_resolution_window: downsample::max_resolution_for(
                self.opts.max_resolution_ms,
                hints.range,
                hints.func.as_deref(),
            ),
            aggregates: downsample::aggrs_from_func(hints.func.as_deref())
                .into_iter()
                .map(|a| a as i32)
                .collect(),
            step: hints.step,
            range: hints.range,
            query_hints: Some(thanos::QueryHints {
                step_millis: hints.step,
                func: hints
                    .func
                    .as_ref()
                    .map(|f| thanos::Func { name: f.clone() }),
                grouping: (!hints.grouping.is_empty() || hints.by).then(|| thanos::Grouping {
                    by: hints.by,
                    labels: hints.grouping.clone(),
                }),
                range: (hints.range > 0).then_some(thanos::Range {
                    millis: hints.range,
                }),
                ..Default::default()
            }),
            without_replica_labels: self.opts.dedup_labels().to_vec(),
            response_batch_size: RESPONSE_BATCH_SIZE,
            ..Default::default()
        }
    }

    /// Sends one `Series` request to every matching endpoint; returns all store series and
    /// the warnings (or an error when partial response is off).
    async fn fan_series(
        &self,
        hints: &SelectHints,
        matchers: &[Matcher],
        skip_chunks: bool,
    ) -> Result<(Vec<DecodedSeries>, Vec<String>, bool), FanoutError> {
        self.no_endpoints_check()?;
        let matchers = &self.opts.confined(matchers);
        let eps = self.endpoints.select(hints.start, hints.end, matchers);
        let req = self.series_request(hints, matchers, skip_chunks);
        let calls = eps.into_iter().map(|e| {
            let req = req.clone();
            let opts = self.opts.clone();
            series_from(e, req, opts)
        });
        let answers = crate::endpoints::join_all(calls).await;
        let mut series = Vec::new();
        let mut warnings = Vec::new();
        // Sorted as a whole only when at most one store has series and it answered sorted.
        let mut sorted = true;
        for a in answers {
            match a {
                Ok(a) => {
                    if !a.series.is_empty() {
                        sorted &= series.is_empty() && a.sorted;
                    }
                    series.extend(a.series);
                    warnings.extend(a.warnings);
                }
                Err(e) => warnings.push(e),
            }
        }
        if !self.opts.partial_response && !warnings.is_empty() {
            return Err(FanoutError::Store(warnings.join("; ")));
        }
        Ok((series, warnings, sorted))
    }

    /// `/api/v1/series`: label sets of the series matching any of `matcher_sets`.
    pub async fn series(
        &self,
        matcher_sets: &[Vec<Matcher>],
        start: i64,
        end: i64,
    ) -> Result<(Vec<Labels>, Vec<String>), FanoutError> {
        let hints = SelectHints {
            start,
            end,
            ..Default::default()
        };
        let mut all = BTreeSet::new();
        let mut warnings = Vec::new();
        for ms in matcher_sets {
            let (series, w, _) = self.fan_series(&hints, ms, true).await?;
            all.extend(series.into_iter().map(|s| s.labels));
            warnings.extend(w);
        }
        Ok((all.into_iter().collect(), warnings))
    }

    /// `/api/v1/labels`.
    pub async fn label_names(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<(Vec<String>, Vec<String>), FanoutError> {
        self.no_endpoints_check()?;
        let matchers = &self.opts.confined(matchers);
        let eps = self.endpoints.select(start, end, matchers);
        let req = LabelNamesRequest {
            partial_response_disabled: !self.opts.partial_response,
            partial_response_strategy: self.opts.strategy(),
            start,
            end,
            matchers: matchers
                .iter()
                .map(storeapi::wire::matcher_to_wire)
                .collect(),
            without_replica_labels: self.opts.dedup_labels().to_vec(),
            ..Default::default()
        };
        let calls = eps.into_iter().map(|e| {
            let req = self.opts.request(req.clone());
            let timeout = self.opts.timeout;
            async move {
                let mut c =
                    StoreClient::new(e.channel.clone()).max_decoding_message_size(usize::MAX);
                match tokio::time::timeout(timeout, c.label_names(req)).await {
                    Ok(Ok(r)) => Ok(r.into_inner()),
                    Ok(Err(s)) => Err(store_error(&e, "label names", &s)),
                    Err(_) => Err(format!("{}: label names: timed out", e.addr)),
                }
            }
        });
        let mut names = BTreeSet::new();
        let mut warnings = Vec::new();
        for r in crate::endpoints::join_all(calls).await {
            match r {
                Ok(r) => {
                    names.extend(r.names);
                    warnings.extend(r.warnings);
                }
                Err(e) => warnings.push(e),
            }
        }
        for l in self.opts.dedup_labels() {
            names.remove(l);
        }
        if !self.opts.partial_response && !warnings.is_empty() {
            return Err(FanoutError::Store(warnings.join("; ")));
        }
        Ok((names.into_iter().collect(), warnings))
    }

    /// `/api/v1/label/<name>/values`.
    pub async fn label_values(
        &self,
        label: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<(Vec<String>, Vec<String>), FanoutError> {
        self.no_endpoints_check()?;
        if self.opts.dedup_labels().iter().any(|l| l == label) {
            return Ok((Vec::new(), Vec::new()));
        }
        let matchers = &self.opts.confined(matchers);
        let eps = self.endpoints.select(start, end, matchers);
        let req = LabelValuesRequest {
            label: label.to_string(),
            partial_response_disabled: !self.opts.partial_response,
            partial_response_strategy: self.opts.strategy(),
            start,
            end,
            matchers: matchers
                .iter()
                .map(storeapi::wire::matcher_to_wire)
                .collect(),
            without_replica_labels: self.opts.dedup_labels().to_vec(),
            ..Default::default()
        };
        let calls = eps.into_iter().map(|e| {
            let req = self.opts.request(req.clone());
            let timeout = self.opts.timeout;
            async move {
                let mut c =
                    StoreClient::new(e.channel.clone()).max_decoding_message_size(usize::MAX);
                match tokio::time::timeout(timeout, c.label_values(req)).await {
                    Ok(Ok(r)) => Ok(r.into_inner()),
                    Ok(Err(s)) => Err(store_error(&e, "label values", &s)),
                    Err(_) => Err(format!("{}: label values: timed out", e.addr)),
                }
            }
        });
        let mut values = BTreeSet::new();
        let mut warnings = Vec::new();
        for r in crate::endpoints::join_all(calls).await {
            match r {
                Ok(r) => {
                    values.extend(r.values);
                    warnings.extend(r.warnings);
                }
                Err(e) => warnings.push(e),
            }
        }
        if !self.opts.partial_response && !warnings.is_empty() {
            return Err(FanoutError::Store(warnings.join("; ")));
        }
        Ok((values.into_iter().collect(), warnings))
    }
}

impl Storage for ProxyStorage {
    async fn select(
        &self,
        hints: SelectHints,
        matchers: Vec<Matcher>,
    ) -> Result<SelectResult, StorageError> {
        let (parts, warnings, sorted) = self.fan_series(&hints, &matchers, false).await?;
        let dedup_on = !self.opts.dedup_labels().is_empty();
        let counter = dedup::is_counter_func(hints.func.as_deref());
        let counts = Mode::from_aggregates(
            &downsample::aggrs_from_func(hints.func.as_deref())
                .into_iter()
                .map(|a| a as i32)
                .collect::<Vec<_>>(),
        )
        .counts();
        let series = merge_decoded(parts, dedup_on, counter, sorted);
        Ok(SelectResult {
            series,
            warnings,
            sorted: true,
            counts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use chunkenc::XorChunk;

    fn chunk(samples: &[(i64, f64)]) -> AggrChunk {
        let mut c = XorChunk::new();
        for &(t, v) in samples {
            c.append(t, v).unwrap();
        }
        AggrChunk {
            min_time: samples[0].0,
            max_time: samples[samples.len() - 1].0,
            raw: Some(thanos::Chunk {
                r#type: thanos::chunk::Encoding::Xor as i32,
                data: Bytes::from(c.into_bytes()),
                hash: 0,
            }),
            ..Default::default()
        }
    }

    fn raw(samples: &[(i64, f64)]) -> RawChunk {
        chunk(samples).into()
    }

    fn ls(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied()).unwrap()
    }

    #[test]
    fn decode_trims_to_range() {
        let c = chunk(&[(1000, 1.0), (2000, 2.0), (3000, 3.0)]);
        let s = decode_chunks(&[c.into()], 1500, 3000).unwrap();
        assert_eq!(
            s,
            vec![Sample { t: 2000, v: 2.0 }, Sample { t: 3000, v: 3.0 }]
        );
    }

    /// A `SeriesResponse` frame holding `series` as a batch.
    fn frame(series: Vec<thanos::Series>) -> Bytes {
        Bytes::from(
            thanos::SeriesResponse {
                result: Some(thanos::series_response::Result::Batch(
                    thanos::SeriesBatch { series },
                )),
            }
            .encode_to_vec(),
        )
    }

    fn collect(col: &mut Collector, frame: &Bytes) -> Result<(), String> {
        let Frame::Series(mut r) = series_frame::read_frame(frame).unwrap() else {
            panic!("a series frame");
        };
        let mut view = SeriesRef::default();
        while r.next_series(&mut view).unwrap() {
            col.push(frame, &mut view)?;
        }
        Ok(())
    }

    fn wire(pairs: &[(&str, &str)]) -> Vec<storeapi::Label> {
        pairs
            .iter()
            .map(|&(n, v)| storeapi::Label::new(n, v))
            .collect()
    }

    #[test]
    fn frames_of_one_series_are_joined_and_replica_labels_stripped() {
        let mut col = Collector::new(vec!["replica".to_string()], Some((0, 100)), Mode::Average);
        // One series split over two frames (replica label and an empty label on the
        // wire, labels unsorted in the second), then the next series.
        let a = frame(vec![thanos::Series {
            labels: wire(&[("a", "b"), ("empty", ""), ("replica", "0")]),
            chunks: vec![chunk(&[(1, 1.0)])],
        }]);
        let b = frame(vec![
            thanos::Series {
                labels: wire(&[("replica", "0"), ("a", "b")]),
                chunks: vec![chunk(&[(2, 2.0)])],
            },
            thanos::Series {
                labels: wire(&[("a", "c")]),
                chunks: vec![chunk(&[(3, 3.0)])],
            },
        ]);
        collect(&mut col, &a).unwrap();
        collect(&mut col, &b).unwrap();
        let (out, sorted) = col.finish().unwrap();
        assert!(sorted);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].labels, ls(&[("a", "b")]));
        assert_eq!(
            out[0].samples,
            vec![Sample { t: 1, v: 1.0 }, Sample { t: 2, v: 2.0 }]
        );
        assert_eq!(out[1].labels, ls(&[("a", "c")]));
    }

    #[test]
    fn out_of_order_series_and_duplicate_names_are_noticed() {
        let mut col = Collector::new(Vec::new(), Some((0, 100)), Mode::Average);
        let f = frame(vec![
            thanos::Series {
                labels: wire(&[("a", "2")]),
                chunks: vec![chunk(&[(1, 1.0)])],
            },
            thanos::Series {
                labels: wire(&[("a", "1")]),
                chunks: vec![chunk(&[(1, 1.0)])],
            },
        ]);
        collect(&mut col, &f).unwrap();
        let (out, sorted) = col.finish().unwrap();
        assert!(!sorted);
        assert_eq!(out.len(), 2);
        let mut col = Collector::new(Vec::new(), Some((0, 100)), Mode::Average);
        let dup = frame(vec![thanos::Series {
            labels: wire(&[("b", "1"), ("a", "1"), ("b", "2")]),
            chunks: Vec::new(),
        }]);
        let err = collect(&mut col, &dup).unwrap_err();
        assert!(err.contains("duplicate label name"), "{err}");
    }

    #[test]
    fn replicas_from_two_stores_are_deduplicated() {
        let a: Vec<(i64, f64)> = (0..6).map(|i| (i * 10_000, i as f64)).collect();
        let b: Vec<(i64, f64)> = (0..6).map(|i| (i * 10_000 + 300, i as f64)).collect();
        let parts = vec![
            StoreSeries {
                labels: ls(&[("__name__", "up"), ("job", "x")]),
                chunks: vec![raw(&a)],
            },
            StoreSeries {
                labels: ls(&[("__name__", "up"), ("job", "w")]),
                chunks: vec![raw(&[(5, 1.0)])],
            },
            StoreSeries {
                labels: ls(&[("__name__", "up"), ("job", "x")]),
                chunks: vec![raw(&b)],
            },
        ];
        let out = merge_series(parts, 0, 100_000, true, false).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].labels, ls(&[("__name__", "up"), ("job", "w")]));
        assert_eq!(out[1].samples.len(), 6);
        assert!(out[1].samples.iter().all(|s| s.t % 10_000 == 0));
    }

    #[test]
    fn dedup_off_chain_merges_identical_series() {
        let parts = vec![
            StoreSeries {
                labels: ls(&[("a", "1")]),
                chunks: vec![raw(&[(1, 1.0), (3, 3.0)])],
            },
            StoreSeries {
                labels: ls(&[("a", "1")]),
                chunks: vec![raw(&[(2, 2.0), (3, 3.0)])],
            },
        ];
        let out = merge_series(parts, 0, 10, false, false).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].samples.iter().map(|s| s.t).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn overlapping_chunks_in_one_store_become_replicas() {
        let parts = vec![StoreSeries {
            labels: ls(&[("a", "1")]),
            chunks: vec![
                raw(&[(0, 0.0), (10_000, 1.0), (20_000, 2.0)]),
                raw(&[(0, 0.0), (10_000, 1.0), (20_000, 2.0), (30_000, 3.0)]),
            ],
        }];
        let out = merge_series(parts, 0, 100_000, true, false).unwrap();
        assert_eq!(
            out[0].samples.iter().map(|s| s.t).collect::<Vec<_>>(),
            vec![0, 10_000, 20_000, 30_000]
        );
    }

    #[test]
    fn empty_series_are_dropped() {
        let parts = vec![StoreSeries {
            labels: ls(&[("a", "1")]),
            chunks: vec![raw(&[(0, 0.0)])],
        }];
        assert!(merge_series(parts, 10, 20, true, false).unwrap().is_empty());
    }
}
