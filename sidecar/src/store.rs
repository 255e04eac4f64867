//! The StoreAPI (`thanos.Store`, `thanos.info.Info`) served from Prometheus.
//!
//! - `Series`: Prometheus's remote read with streamed XOR chunks; the chunks' bytes are
//!   passed through as Prometheus sent them (no decode, no re-encode). External labels
//!   are added to every series (they win a name clash, Thanos's rule), matchers on
//!   external labels are decided here and never sent, `without_replica_labels` are
//!   removed, and the series are re-sorted (removing a label can change the order).
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
use crate::meta::PromMeta;
use crate::prom::PromClient;

/// Frames queued to a slow client before the writer waits.
const FRAME_QUEUE: usize = 16;

/// Shared by the StoreAPI and Info services.
#[derive(Clone)]
pub struct SidecarStore {
    pub client: PromClient,
    pub meta: Arc<PromMeta>,
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

    /// Runs remote read and collects its series (labels final, chunks untouched).
    async fn read_series(
        &self,
        matchers: &[Matcher],
        min_time: i64,
        max_time: i64,
        ext: &Labels,
        without: &[String],
    ) -> Result<Vec<ReadSeries>, Status> {
        let req = crate::prom::read_request(matchers, min_time, max_time);
        let mut resp = self
            .client
            .remote_read(&req)
            .await
            .map_err(|e| e.to_status())?;
        let mut dec = FrameDecoder::new(FRAME_LIMIT);
        let mut out = Vec::new();
        let bad = |e: crate::chunked::FrameError| {
            Status::internal(format!("reading Prometheus's remote-read stream: {e}"))
        };
        let started = std::time::Instant::now();
        let mut first_byte = None;
        let mut busy = std::time::Duration::ZERO;
        loop {
            let piece = resp.chunk().await.map_err(|e| {
                Status::unavailable(format!("reading Prometheus's remote-read stream: {e}"))
            })?;
            let Some(piece) = piece else { break };
            first_byte.get_or_insert_with(|| started.elapsed());
            let t = std::time::Instant::now();
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
                    out.push(ReadSeries {
                        labels: final_labels(s.labels, ext, without)?,
                        chunks: s.chunks,
                    });
                }
            }
            busy += t.elapsed();
        }
        dec.finish().map_err(bad)?;
        tracing::debug!(
            first_byte_ms = first_byte.unwrap_or_default().as_secs_f64() * 1e3,
            stream_ms = started.elapsed().as_secs_f64() * 1e3,
            decode_ms = busy.as_secs_f64() * 1e3,
            "remote read"
        );
        Ok(out)
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

/// Frames for sorted series.
fn frames(mut series: Vec<ReadSeries>, skip_chunks: bool, batch: i64, limit: i64) -> Vec<Bytes> {
    if !series.is_sorted_by(|a, b| a.labels <= b.labels) {
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
    }
    if limit > 0 {
        series.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    let mut w = FrameWriter::new(skip_chunks, batch);
    let mut out = Vec::new();
    for s in &series {
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
            &mut |b| out.push(b),
        );
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
        let min_time = req.min_time.max(self.meta.min_time());
        if min_time > req.max_time {
            return Ok(FrameStream::new(rx));
        }
        let started = std::time::Instant::now();
        let series = if req.skip_chunks {
            self.series_labels(&matchers, &req, min_time, &ext).await?
        } else {
            self.read_series(
                &matchers,
                min_time,
                req.max_time,
                &ext,
                &req.without_replica_labels,
            )
            .await?
        };
        let read = started.elapsed();
        let n = series.len();
        let out = frames(series, req.skip_chunks, req.response_batch_size, req.limit);
        tracing::debug!(
            series = n,
            frames = out.len(),
            read_ms = read.as_secs_f64() * 1e3,
            framed_ms = started.elapsed().as_secs_f64() * 1e3,
            "Series answered from Prometheus"
        );
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
        if req.limit > 0 {
            names.truncate(usize::try_from(req.limit).unwrap_or(usize::MAX));
        }
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
        let min_time = self.meta.min_time();
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
