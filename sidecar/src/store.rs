//! The StoreAPI (`thanos.Store`, `thanos.info.Info`) served from Prometheus.
//!
//! - `Series`: Prometheus's remote read with streamed XOR chunks; the chunks' bytes are
//!   passed through as Prometheus sent them (no decode, no re-encode). External labels
//!   are added to every series (they win a name clash, Thanos's rule), matchers on
//!   external labels are decided here and never sent, `without_replica_labels` are
//!   removed. Series go out as Prometheus's frames arrive, re-sorted only where that
//!   can change their order (see [`Reorder`]), through a small channel: memory stays
//!   bounded by one metric's series, not the whole answer.
//!   `skip_chunks` asks `/api/v1/series` instead.
//! - `LabelNames` / `LabelValues`: Prometheus's label APIs, plus the external labels.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use storeapi::wire::frames::{FrameWriter, WireChunk, put_label};
use storeapi::wire::info::{InfoRequest, InfoResponse, StoreInfo, TsdbInfo};
use storeapi::wire::prometheus::ChunkedReadResponse;
use storeapi::wire::store_service::{FrameSeries, FrameStream};
use storeapi::wire::thanos::{
    self, LabelNamesRequest, LabelNamesResponse, LabelValuesRequest, LabelValuesResponse,
    SeriesRequest, SeriesResponse, ZLabelSet,
};
use storeapi::wire::{labels_to_wire, matchers_from_wire};
use storeapi::{Label, Labels, Matcher};
use tonic::{Request, Response, Status};

use crate::chunked::{FRAME_LIMIT, FrameDecoder};
use crate::local::LocalRead;
use crate::meta::PromMeta;
use crate::prom::PromClient;

/// Frames queued to a slow client before the writer waits.
const FRAME_QUEUE: usize = 16;

/// Shared by the StoreAPI and Info services.
#[derive(Clone)]
pub struct SidecarStore {
    pub client: PromClient,
    pub meta: Arc<PromMeta>,
    /// `--tsdb.local-read`: `Series` and the label calls read Prometheus's data
    /// directory instead of asking Prometheus.
    pub local: Option<LocalRead>,
}

/// A request's matchers split against the external labels.
enum Split {
    /// An external-label matcher rejects this Prometheus: the answer is empty.
    NoMatch,
    /// The matchers to send to Prometheus (external-label ones removed).
    Prom(Vec<Matcher>),
}

/// Thanos's `matchesExternalLabels`: a matcher on an external label name is decided by
/// the external label's value; the others are for Prometheus.
fn split_matchers(ms: Vec<Matcher>, ext: &Labels) -> Split {
    let mut out = Vec::with_capacity(ms.len());
    for m in ms {
        match ext.get(&m.name) {
            Some(v) if !m.matches(v) => return Split::NoMatch,
            Some(_) => {}
            None => out.push(m),
        }
    }
    Split::Prom(out)
}

/// A series' labels as sent: Prometheus's, external added (winning a clash), replica
/// labels removed.
fn final_labels(series: Vec<Label>, ext: &Labels, without: &[String]) -> Result<Labels, Status> {
    let mut l = Labels::from_unsorted(series)
        .map_err(|e| Status::internal(format!("Prometheus sent an invalid series: {e}")))?;
    l.extend_external(ext);
    l.retain(|x| !without.iter().any(|w| w.as_str() == x.name.as_str()));
    Ok(l)
}

fn bad_matchers(e: storeapi::wire::ConvertError) -> Status {
    Status::invalid_argument(format!("invalid matchers: {e}"))
}

/// One series read from Prometheus, waiting to be sorted and framed.
struct ReadSeries {
    labels: Labels,
    chunks: Vec<storeapi::wire::prometheus::Chunk>,
}

impl SidecarStore {
    fn check_ready(&self) -> Result<(), Status> {
        if self.meta.is_ready() {
            Ok(())
        } else {
            Err(Status::unavailable(format!(
                "sidecar is not ready: {}",
                self.meta.reason()
            )))
        }
    }

    /// `skip_chunks`: label sets from `/api/v1/series`.
    async fn series_labels(
        &self,
        matchers: &[Matcher],
        req: &SeriesRequest,
        min_time: i64,
        ext: &Labels,
    ) -> Result<Vec<ReadSeries>, Status> {
        let sets = self
            .client
            .series(matchers, min_time, req.max_time, req.limit)
            .await
            .map_err(|e| e.to_status())?;
        sets.into_iter()
            .map(|m| {
                let labels = final_labels(
                    m.into_iter().map(|(n, v)| Label::new(n, v)).collect(),
                    ext,
                    &req.without_replica_labels,
                )?;
                Ok(ReadSeries {
                    labels,
                    chunks: Vec::new(),
                })
            })
            .collect()
    }
}

/// Puts Prometheus's series (sorted by their own labels) into the order of their final
/// labels, holding back as little as possible.
///
/// Adding external labels and removing replica labels only touches label names at or
/// after `pivot` (the smallest such name); labels before it stay as they are. Series
/// whose first label sorts before the pivot keep that first label, so their order
/// against series with another first label cannot change: only a run of series with
/// the same first label (one metric, as `__name__` comes first) needs sorting, and it
/// is contiguous in Prometheus's order. Series whose first label is at or after the
/// pivot come last in Prometheus's order and stay last (every final label of theirs is
/// at or after the pivot too); they form one last run. Without external or replica
/// labels nothing can move and every series goes out at once.
struct Reorder {
    pivot: Option<String>,
    /// The first label of the run being held (None: the run past the pivot).
    key: Option<Option<Label>>,
    run: Vec<ReadSeries>,
}

impl Reorder {
    fn new(ext: &Labels, without: &[String]) -> Self {
        let pivot = ext
            .iter()
            .map(|l| l.name.to_string())
            .chain(without.iter().cloned())
            .min();
        Reorder {
            pivot,
            key: None,
            run: Vec::new(),
        }
    }

    /// The run a series (final labels) belongs to.
    fn run_key(&self, labels: &Labels) -> Option<Label> {
        let pivot = self.pivot.as_deref()?;
        labels
            .iter()
            .next()
            .filter(|l| l.name.as_str() < pivot)
            .cloned()
    }

    /// Adds the next series in Prometheus's order; series whose place is now certain
    /// are appended to `ready`, in final order.
    fn push(&mut self, s: ReadSeries, ready: &mut Vec<ReadSeries>) {
        if self.pivot.is_none() {
            ready.push(s);
            return;
        }
        let key = self.run_key(&s.labels);
        if self.key.as_ref() != Some(&key) {
            self.flush(ready);
            self.key = Some(key);
        }
        self.run.push(s);
    }

    /// Releases the held run.
    fn flush(&mut self, ready: &mut Vec<ReadSeries>) {
        if !self.run.is_sorted_by(|a, b| a.labels <= b.labels) {
            self.run.sort_by(|a, b| a.labels.cmp(&b.labels));
        }
        ready.append(&mut self.run);
    }

    /// How many series are held back.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.run.len()
    }
}

/// Why streaming stopped early.
enum Stop {
    /// The client went away (the receiver was dropped).
    Gone,
    Failed(Status),
}

impl From<Status> for Stop {
    fn from(s: Status) -> Self {
        Stop::Failed(s)
    }
}

/// Turns Prometheus's streamed remote-read body into `SeriesResponse` frames on `tx`
/// as it arrives: frames are decoded and checked, series get their final labels, go
/// through [`Reorder`], and are framed and sent; a full channel stops the reading (and
/// so Prometheus) until the client catches up. A failure midway is sent as the
/// stream's last item.
async fn stream_series<S, E>(
    body: S,
    ext: Labels,
    without: Vec<String>,
    batch: i64,
    limit: i64,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, Status>>,
) where
    S: tokio_stream::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let started = std::time::Instant::now();
    match pump(body, &ext, &without, batch, limit, &tx).await {
        Ok(n) => tracing::debug!(
            series = n,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "Series streamed from Prometheus"
        ),
        Err(Stop::Gone) => tracing::debug!("Series client went away"),
        Err(Stop::Failed(st)) => {
            tracing::warn!(error = %st.message(), "Series from Prometheus failed midway");
            let _ = tx.send(Err(st)).await;
        }
    }
}

async fn pump<S, E>(
    mut body: S,
    ext: &Labels,
    without: &[String],
    batch: i64,
    limit: i64,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, Status>>,
) -> Result<usize, Stop>
where
    S: tokio_stream::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    use tokio_stream::StreamExt;
    let limit = if limit > 0 {
        usize::try_from(limit).unwrap_or(usize::MAX)
    } else {
        usize::MAX
    };
    let bad = |e: crate::chunked::FrameError| {
        Status::internal(format!("reading Prometheus's remote-read stream: {e}"))
    };
    let mut dec = FrameDecoder::new(FRAME_LIMIT);
    let mut order = Reorder::new(ext, without);
    // Taken by `finish` at the end.
    let mut writer = Some(FrameWriter::new(false, batch));
    let mut sent = 0usize;
    let mut last: Option<Labels> = None;
    let mut ready = Vec::new();
    let mut out = Vec::new();
    let mut done = false;
    while !done {
        match body.next().await {
            Some(Ok(piece)) => {
                dec.push(&piece);
                while let Some(frame) = dec.next_frame().map_err(bad)? {
                    let msg = ChunkedReadResponse::decode(frame).map_err(|e| {
                        Status::internal(format!(
                            "Prometheus sent an undecodable remote-read frame: {e}"
                        ))
                    })?;
                    for s in msg.chunked_series {
                        if s.chunks.is_empty() {
                            continue;
                        }
                        let s = ReadSeries {
                            labels: final_labels(s.labels, ext, without)?,
                            chunks: s.chunks,
                        };
                        order.push(s, &mut ready);
                    }
                }
            }
            Some(Err(e)) => {
                return Err(Stop::Failed(Status::unavailable(format!(
                    "reading Prometheus's remote-read stream: {e}"
                ))));
            }
            None => {
                dec.finish().map_err(bad)?;
                order.flush(&mut ready);
                done = true;
            }
        }
        for s in ready.drain(..) {
            if sent >= limit {
                break;
            }
            if last.as_ref().is_some_and(|l| *l > s.labels) {
                return Err(Stop::Failed(Status::internal(
                    "Prometheus sent its remote-read series out of order",
                )));
            }
            if let Some(w) = writer.as_mut() {
                frame_series(w, &s, &mut |b| out.push(b));
            }
            last = Some(s.labels);
            sent += 1;
        }
        if done || sent >= limit {
            if let Some(w) = writer.take() {
                w.finish(&mut |b| out.push(b));
            }
            done = true;
        }
        for f in out.drain(..) {
            tx.send(Ok(f)).await.map_err(|_| Stop::Gone)?;
        }
    }
    Ok(sent)
}

/// Writes one series into `w`, its chunks' bytes as Prometheus sent them.
fn frame_series(w: &mut FrameWriter, s: &ReadSeries, emit: &mut impl FnMut(Bytes)) {
    let buf = w.labels();
    for l in s.labels.iter() {
        put_label(buf, l.name.as_bytes(), l.value.as_bytes());
    }
    w.push(
        s.chunks.iter().map(|c| {
            WireChunk::from_prometheus(
                c.min_time_ms,
                c.max_time_ms,
                u8::try_from(c.r#type).unwrap_or(0),
                &c.data,
            )
        }),
        emit,
    );
}

/// Keeps the first `limit` entries of `v` (a request's limit; 0 or less: all).
fn keep_first<T>(v: &mut Vec<T>, limit: i64) {
    if limit > 0 {
        v.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
}

/// Frames for sorted series.
fn frames(mut series: Vec<ReadSeries>, skip_chunks: bool, batch: i64, limit: i64) -> Vec<Bytes> {
    if !series.is_sorted_by(|a, b| a.labels <= b.labels) {
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
    }
    keep_first(&mut series, limit);
    let mut w = FrameWriter::new(skip_chunks, batch);
    let mut out = Vec::new();
    for s in &series {
        frame_series(&mut w, s, &mut |b| out.push(b));
    }
    w.finish(&mut |b| out.push(b));
    out
}

impl FrameSeries for SidecarStore {
    async fn series_frames(&self, request: Request<SeriesRequest>) -> Result<FrameStream, Status> {
        self.check_ready()?;
        let req = request.into_inner();
        let ext = self.meta.labels();
        let matchers = matchers_from_wire(&req.matchers).map_err(bad_matchers)?;
        let (tx, rx) = tokio::sync::mpsc::channel(FRAME_QUEUE);
        let matchers = match split_matchers(matchers, &ext) {
            Split::NoMatch => return Ok(FrameStream::new(rx)),
            Split::Prom(m) => m,
        };
        if matchers.is_empty() {
            return Err(Status::invalid_argument(
                "no matchers specified (excluding external labels)",
            ));
        }
        if let Some(local) = self.local.clone() {
            let (skip_chunks, batch) = (req.skip_chunks, req.response_batch_size);
            let sel = tokio::task::spawn_blocking(move || local.select(&matchers, &req, &ext))
                .await
                .map_err(|e| Status::internal(e.to_string()))??;
            tokio::task::spawn_blocking(move || {
                // A failed send: the client went away.
                sel.write(FrameWriter::new(skip_chunks, batch), &mut |b| {
                    tx.blocking_send(Ok(b)).is_ok()
                });
            });
            return Ok(FrameStream::new(rx));
        }
        let min_time = req.min_time.max(self.meta.min_time());
        if min_time > req.max_time {
            return Ok(FrameStream::new(rx));
        }
        if !req.skip_chunks {
            // The request is sent (and its status checked) before the stream is
            // returned, so a refused read is this call's error; the body streams.
            let rr = crate::prom::read_request(&matchers, min_time, req.max_time);
            let resp = self
                .client
                .remote_read(&rr)
                .await
                .map_err(|e| e.to_status())?;
            tokio::spawn(stream_series(
                resp.bytes_stream(),
                ext,
                req.without_replica_labels,
                req.response_batch_size,
                req.limit,
                tx,
            ));
            return Ok(FrameStream::new(rx));
        }
        let series = self.series_labels(&matchers, &req, min_time, &ext).await?;
        let out = frames(series, req.skip_chunks, req.response_batch_size, req.limit);
        tokio::spawn(async move {
            for f in out {
                if tx.send(Ok(f)).await.is_err() {
                    // The client went away.
                    return;
                }
            }
        });
        Ok(FrameStream::new(rx))
    }
}

type SeriesStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<SeriesResponse, Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl thanos::store_server::Store for SidecarStore {
    type SeriesStream = SeriesStream;

    /// The frames of [`SidecarStore::series_frames`] decoded (the gRPC server sends the
    /// bytes through `StoreService` instead).
    async fn series(
        &self,
        request: Request<SeriesRequest>,
    ) -> Result<Response<Self::SeriesStream>, Status> {
        use tokio_stream::StreamExt;
        let frames = self.series_frames(request).await?;
        Ok(Response::new(Box::pin(frames.map(|r| {
            r.and_then(|b| SeriesResponse::decode(b).map_err(|e| Status::internal(e.to_string())))
        }))))
    }

    async fn label_names(
        &self,
        request: Request<LabelNamesRequest>,
    ) -> Result<Response<LabelNamesResponse>, Status> {
        self.check_ready()?;
        let req = request.into_inner();
        let ext = self.meta.labels();
        let matchers = matchers_from_wire(&req.matchers).map_err(bad_matchers)?;
        let matchers = match split_matchers(matchers, &ext) {
            Split::NoMatch => return Ok(Response::new(LabelNamesResponse::default())),
            Split::Prom(m) => m,
        };
        let limit = req.limit;
        let mut names = if let Some(local) = self.local.clone() {
            tokio::task::spawn_blocking(move || {
                local.label_names(
                    &matchers,
                    (req.start, req.end),
                    &ext,
                    &req.without_replica_labels,
                )
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))??
        } else {
            let min_time = req.start.max(self.meta.min_time());
            let mut names = self
                .client
                .label_names(&matchers, min_time, req.end, req.limit)
                .await
                .map_err(|e| e.to_status())?;
            // Prometheus holding no series: no external label names either (Thanos).
            if !names.is_empty() {
                names.extend(
                    ext.iter()
                        .filter(|l| !req.without_replica_labels.iter().any(|w| *w == l.name))
                        .map(|l| l.name.to_string()),
                );
                names.sort();
                names.dedup();
            }
            names.retain(|n| !req.without_replica_labels.contains(n));
            names
        };
        keep_first(&mut names, limit);
        Ok(Response::new(LabelNamesResponse {
            names,
            ..Default::default()
        }))
    }

    async fn label_values(
        &self,
        request: Request<LabelValuesRequest>,
    ) -> Result<Response<LabelValuesResponse>, Status> {
        self.check_ready()?;
        let req = request.into_inner();
        if req.label.is_empty() {
            return Err(Status::invalid_argument(
                "label name parameter cannot be empty",
            ));
        }
        if req.without_replica_labels.contains(&req.label) {
            return Ok(Response::new(LabelValuesResponse::default()));
        }
        let ext = self.meta.labels();
        let matchers = matchers_from_wire(&req.matchers).map_err(bad_matchers)?;
        let matchers = match split_matchers(matchers, &ext) {
            Split::NoMatch => return Ok(Response::new(LabelValuesResponse::default())),
            Split::Prom(m) => m,
        };
        if let Some(local) = self.local.clone() {
            let limit = req.limit;
            let mut values = tokio::task::spawn_blocking(move || {
                local.label_values(&req.label, &matchers, (req.start, req.end), &ext)
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
            keep_first(&mut values, limit);
            return Ok(Response::new(LabelValuesResponse {
                values,
                ..Default::default()
            }));
        }
        let min_time = req.start.max(self.meta.min_time());
        if let Some(v) = ext.get(&req.label) {
            // An external label: its one value, if any series matches.
            if matchers.is_empty() {
                return Ok(Response::new(LabelValuesResponse {
                    values: vec![v.to_string()],
                    ..Default::default()
                }));
            }
            let any = self
                .client
                .series(&matchers, min_time, req.end, 1)
                .await
                .map_err(|e| e.to_status())?;
            let values = if any.is_empty() {
                Vec::new()
            } else {
                vec![v.to_string()]
            };
            return Ok(Response::new(LabelValuesResponse {
                values,
                ..Default::default()
            }));
        }
        let mut values = self
            .client
            .label_values(&req.label, &matchers, min_time, req.end, req.limit)
            .await
            .map_err(|e| e.to_status())?;
        values.sort();
        Ok(Response::new(LabelValuesResponse {
            values,
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl storeapi::wire::info::info_server::Info for SidecarStore {
    async fn info(&self, _req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        self.check_ready()?;
        let ext = self.meta.labels();
        // Local read: what the directory holds may be older than Prometheus's head's
        // lowest timestamp (blocks read before Prometheus's retention got to them).
        let min_time = match &self.local {
            Some(l) => self.meta.min_time().min(l.min_time()),
            None => self.meta.min_time(),
        };
        let ls = ZLabelSet {
            labels: labels_to_wire(&ext),
        };
        Ok(Response::new(InfoResponse {
            label_sets: vec![ls.clone()],
            component_type: "sidecar".into(),
            store: Some(StoreInfo {
                min_time,
                max_time: i64::MAX,
                supports_sharding: false,
                supports_without_replica_labels: true,
                tsdb_infos: vec![TsdbInfo {
                    labels: Some(ls),
                    min_time,
                    max_time: i64::MAX,
                }],
                supports_projections: false,
            }),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storeapi::MatchOp;
    use storeapi::wire::prometheus::Chunk;

    fn ext() -> Labels {
        Labels::from_pairs([("cluster", "eu"), ("replica", "a")]).unwrap()
    }

    #[test]
    fn external_label_matchers_are_decided_here() {
        let m = |op, n: &str, v: &str| Matcher::new(op, n, v).unwrap();
        let Split::Prom(rest) = split_matchers(
            vec![
                m(MatchOp::Equal, "cluster", "eu"),
                m(MatchOp::RegexMatch, "replica", ".+"),
                m(MatchOp::Equal, "__name__", "up"),
            ],
            &ext(),
        ) else {
            panic!("external labels match");
        };
        assert_eq!(rest, vec![m(MatchOp::Equal, "__name__", "up")]);
        assert!(matches!(
            split_matchers(vec![m(MatchOp::Equal, "cluster", "us")], &ext()),
            Split::NoMatch
        ));
        // A matcher on a name that is not external goes to Prometheus, even if it
        // names nothing there.
        let Split::Prom(rest) = split_matchers(vec![m(MatchOp::Equal, "zone", "")], &ext()) else {
            panic!()
        };
        assert_eq!(rest.len(), 1);
    }

    #[test]
    fn labels_get_external_and_lose_replica_labels() {
        let l = final_labels(
            vec![
                Label::new("__name__", "up"),
                Label::new("cluster", "local"),
                Label::new("job", "p"),
            ],
            &ext(),
            &["replica".to_string()],
        )
        .unwrap();
        assert_eq!(
            l,
            Labels::from_pairs([("__name__", "up"), ("cluster", "eu"), ("job", "p")]).unwrap()
        );
    }

    fn series(pairs: &[(&str, &str)]) -> ReadSeries {
        ReadSeries {
            labels: Labels::from_pairs(pairs.iter().copied()).unwrap(),
            chunks: vec![Chunk {
                min_time_ms: 1,
                max_time_ms: 2,
                r#type: 1,
                data: Bytes::from_static(&[0, 1]),
            }],
        }
    }

    fn names(v: &[ReadSeries]) -> Vec<String> {
        v.iter()
            .map(|s| {
                s.labels
                    .iter()
                    .map(|l| format!("{}={}", l.name, l.value))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect()
    }

    #[test]
    fn reorder_holds_back_only_one_metric_and_fixes_what_external_labels_flip() {
        let ext = Labels::from_pairs([("d", "e")]).unwrap();
        let mut r = Reorder::new(&ext, &[]);
        let mut ready = Vec::new();
        // Prometheus's order: m{a=1} < m{a=1,c=1}; with d=e added the second sorts
        // first (c < d).
        let fin = |p: &[(&str, &str)]| ReadSeries {
            labels: final_labels(
                p.iter().map(|(n, v)| Label::new(*n, *v)).collect(),
                &ext,
                &[],
            )
            .unwrap(),
            chunks: Vec::new(),
        };
        r.push(fin(&[("__name__", "m"), ("a", "1")]), &mut ready);
        r.push(
            fin(&[("__name__", "m"), ("a", "1"), ("c", "1")]),
            &mut ready,
        );
        assert!(ready.is_empty());
        assert_eq!(r.held(), 2);
        r.push(fin(&[("__name__", "n"), ("a", "1")]), &mut ready);
        assert_eq!(
            names(&ready),
            ["__name__=m,a=1,c=1,d=e", "__name__=m,a=1,d=e",]
        );
        assert_eq!(r.held(), 1);
        r.flush(&mut ready);
        assert_eq!(names(&ready)[2], "__name__=n,a=1,d=e");

        // Nothing added or removed: nothing held.
        let mut r = Reorder::new(&Labels::default(), &[]);
        let mut ready = Vec::new();
        r.push(series(&[("__name__", "m")]), &mut ready);
        assert_eq!((ready.len(), r.held()), (1, 0));
    }

    /// Any label sets in Prometheus's order, any external and replica labels: the
    /// streamed order equals a full sort of the final labels.
    #[test]
    fn reorder_equals_a_full_sort() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let pool = ["A", "__name__", "a", "b", "c", "d", "x", "z"];
        for _ in 0..300 {
            let mut originals: Vec<Labels> = (0..rnd(12) + 1)
                .map(|_| {
                    let mut ls: Vec<Label> = Vec::new();
                    for name in pool {
                        if rnd(3) > 0 {
                            ls.push(Label::new(name, ["0", "1"][rnd(2) as usize]));
                        }
                    }
                    if ls.is_empty() {
                        ls.push(Label::new("__name__", "m"));
                    }
                    Labels::from_unsorted(ls).unwrap()
                })
                .collect();
            originals.sort();
            let ext_name = pool[rnd(pool.len() as u64) as usize];
            let ext = Labels::from_pairs([(ext_name, "e")]).unwrap();
            let without: Vec<String> = match rnd(3) {
                0 => Vec::new(),
                1 => vec![ext_name.to_string()],
                _ => vec![pool[rnd(pool.len() as u64) as usize].to_string()],
            };
            let fin: Vec<ReadSeries> = originals
                .iter()
                .map(|o| ReadSeries {
                    labels: final_labels(o.iter().cloned().collect(), &ext, &without).unwrap(),
                    chunks: Vec::new(),
                })
                .collect();
            let mut want: Vec<Labels> = fin.iter().map(|s| s.labels.clone()).collect();
            want.sort();
            let mut r = Reorder::new(&ext, &without);
            let mut got = Vec::new();
            for s in fin {
                r.push(s, &mut got);
            }
            r.flush(&mut got);
            let got: Vec<Labels> = got.into_iter().map(|s| s.labels).collect();
            assert_eq!(got, want, "ext {ext_name} without {without:?}");
        }
    }

    fn read_frame(series: Vec<storeapi::wire::prometheus::ChunkedSeries>) -> Bytes {
        let msg = ChunkedReadResponse {
            chunked_series: series,
            query_index: 0,
        };
        Bytes::from(crate::chunked::encode_frame(&msg.encode_to_vec()))
    }

    fn chunked(metric: &str, i: usize) -> storeapi::wire::prometheus::ChunkedSeries {
        storeapi::wire::prometheus::ChunkedSeries {
            labels: vec![
                Label::new("__name__", metric),
                Label::new("i", format!("{i:05}")),
            ],
            chunks: vec![Chunk {
                min_time_ms: 1,
                max_time_ms: 2,
                r#type: 1,
                data: Bytes::from(vec![7u8; 64]),
            }],
        }
    }

    fn decode_series(b: &Bytes) -> thanos::Series {
        match SeriesResponse::decode(b.clone()).unwrap().result {
            Some(thanos::series_response::Result::Series(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    async fn next_frame(rx: &mut tokio::sync::mpsc::Receiver<Result<Bytes, Status>>) -> Bytes {
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("no frame in time")
            .expect("stream ended")
            .expect("stream failed")
    }

    /// The first gRPC frame leaves while Prometheus is still sending: a large answer
    /// is never collected whole, and a slow client holds the reading back.
    #[tokio::test]
    async fn series_stream_out_as_remote_read_frames_arrive() {
        let (body_tx, body_rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(1);
        let (tx, mut rx) = tokio::sync::mpsc::channel(FRAME_QUEUE);
        let ext = Labels::from_pairs([("cluster", "eu"), ("replica", "a")]).unwrap();
        let task = tokio::spawn(stream_series(
            tokio_stream::wrappers::ReceiverStream::new(body_rx),
            ext,
            vec!["replica".to_string()],
            1,
            0,
            tx,
        ));
        // One remote-read frame per metric; metric `a`'s series are released once
        // metric `b` starts, before any later frame is read.
        let metrics = ["a", "b", "c", "d"];
        body_tx
            .send(Ok(read_frame((0..3).map(|i| chunked("a", i)).collect())))
            .await
            .unwrap();
        let whole = read_frame((0..3).map(|i| chunked("b", i)).collect());
        // The next frame split mid-way: its first bytes alone complete nothing.
        body_tx.send(Ok(whole.slice(..5))).await.unwrap();
        body_tx.send(Ok(whole.slice(5..))).await.unwrap();
        let first = decode_series(&next_frame(&mut rx).await);
        assert_eq!(first.labels[0].value, "a");
        assert_eq!(first.labels[1].name, "cluster");
        assert!(first.labels.iter().all(|l| l.name != "replica"));
        assert_eq!(first.chunks[0].raw.as_ref().unwrap().data, vec![7u8; 64]);
        for _ in 1..3 {
            assert_eq!(
                decode_series(&next_frame(&mut rx).await).labels[0].value,
                "a"
            );
        }
        for m in &metrics[2..] {
            body_tx
                .send(Ok(read_frame((0..3).map(|i| chunked(m, i)).collect())))
                .await
                .unwrap();
        }
        drop(body_tx);
        let mut rest = Vec::new();
        while let Some(f) = rx.recv().await {
            rest.push(decode_series(&f.unwrap()));
        }
        task.await.unwrap();
        assert_eq!(rest.len(), 9);
        let order: Vec<String> = rest
            .iter()
            .map(|s| format!("{}{}", s.labels[0].value, s.labels[2].value))
            .collect();
        assert_eq!(
            order,
            [
                "b00000", "b00001", "b00002", "c00000", "c00001", "c00002", "d00000", "d00001",
                "d00002"
            ]
        );
    }

    /// A cut-off or failing body ends the stream with an error after what was sent;
    /// `limit` stops after that many series.
    #[tokio::test]
    async fn series_stream_errors_and_limit() {
        let run = |pieces: Vec<Result<Bytes, String>>, limit: i64| async move {
            let (tx, mut rx) = tokio::sync::mpsc::channel(FRAME_QUEUE);
            stream_series(
                tokio_stream::iter(pieces),
                Labels::default(),
                Vec::new(),
                1,
                limit,
                tx,
            )
            .await;
            let mut out = Vec::new();
            while let Some(f) = rx.recv().await {
                out.push(f);
            }
            out
        };
        let good = read_frame((0..4).map(|i| chunked("a", i)).collect());
        let out = run(vec![Ok(good.clone()), Ok(good.slice(..7))], 0).await;
        assert_eq!(out.len(), 5);
        assert!(out[..4].iter().all(Result::is_ok));
        let err = out[4].as_ref().unwrap_err();
        assert!(err.message().contains("ended inside a frame"), "{err:?}");
        let out = run(vec![Ok(good.clone()), Err("reset by peer".into())], 0).await;
        assert_eq!(
            out.last().unwrap().as_ref().unwrap_err().code(),
            tonic::Code::Unavailable
        );
        let out = run(vec![Ok(good.clone())], 2).await;
        assert_eq!(out.len(), 2);
        // Out of order from Prometheus is an error, not a silently unsorted answer.
        let mut rev: Vec<_> = (0..2).map(|i| chunked("a", i)).collect();
        rev.reverse();
        let out = run(vec![Ok(read_frame(rev))], 0).await;
        assert!(out.last().unwrap().is_err());
    }

    #[test]
    fn frames_are_sorted_and_carry_chunks_untouched() {
        let data = Bytes::from_static(&[0, 1, 2, 3, 4]);
        let mk = |v: &str, enc: i32| ReadSeries {
            labels: Labels::from_pairs([("__name__", "up"), ("i", v)]).unwrap(),
            chunks: vec![Chunk {
                min_time_ms: 1,
                max_time_ms: 2,
                r#type: enc,
                data: data.clone(),
            }],
        };
        let out = frames(vec![mk("b", 1), mk("a", 2)], false, 1, 0);
        let got: Vec<thanos::Series> = out
            .iter()
            .map(
                |b| match SeriesResponse::decode(b.clone()).unwrap().result {
                    Some(thanos::series_response::Result::Series(s)) => s,
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].labels[1].value, "a");
        assert_eq!(got[1].labels[1].value, "b");
        let raw = got[0].chunks[0].raw.as_ref().unwrap();
        // Prometheus's HISTOGRAM (2) is the StoreAPI's 1; bytes as sent.
        assert_eq!(raw.r#type, 1);
        assert_eq!(raw.data, data);
        assert_eq!(got[1].chunks[0].raw.as_ref().unwrap().r#type, 0);
        let limited = frames(vec![mk("b", 1), mk("a", 2)], false, 1, 1);
        assert_eq!(limited.len(), 1);
    }
}
