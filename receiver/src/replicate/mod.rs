//! Replication: fan a write out to the receivers that hold its series, decide write quorum,
//! and serve the peer side (`thanos.WriteableStore/RemoteWrite`).
//!
//! Entry points:
//! - [`Distributor::write`] — a client write (HTTP remote write), tenant already resolved.
//!   Router modes place each series' `RF` replicas on the tenant's ring, send one batch per
//!   (peer, replica) — this receiver's own share goes to the [`LocalWriter`] — and wait until
//!   every series is decided (see [`quorum`]). Ingestor-only mode writes locally.
//! - [`Distributor::remote_write`] — a forwarded write from a peer (gRPC). A request with
//!   `replica > 0` was already placed by a router and is written locally only.
//! - [`server::writeable_store_service`] — the tonic service to add to the gRPC server; it also
//!   accepts Thanos's `snappy` (framed) gRPC compression.
//!
//! [`WriteError::http_status`] / [`WriteError::grpc_status`] give the answer to the client.

pub mod local;
pub mod metrics;
pub mod peers;
pub mod plan;
pub mod quorum;
pub mod server;
pub mod snappy;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use storeapi::wire::prompb::TimeSeries;
use storeapi::wire::remote_write::{
    DecodeError, SeriesView, WriteRequestReader, encode_forwarded, raw_metadata, split_forwarded,
};
use storeapi::wire::thanos::WriteRequest;
use thiserror::Error;
use tokio::sync::mpsc;

use crate::hashring::watch::{HashringHandle, HashringMetrics, HashringWatcher, LoadError};
use crate::hashring::{HashringArgs, HashringError, Mode};

pub use metrics::ReplicationMetrics;
pub use peers::PeerPool;
pub use quorum::{FailureKind, Outcome, Quorum, write_quorum};

/// A boxed future, for the object-safe [`LocalWriter`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a replica write failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

/// What a local write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalWriteResult {
    /// Every series accepted.
    Ok,
    /// The whole batch failed for one reason (e.g. TSDB not ready).
    Failed(Failure),
    /// Some series failed (index into the batch, why); all others were accepted. As in
    /// Prometheus, the valid samples of a series are appended even when another sample of
    /// it conflicts; report such a series as failed with `Conflict`.
    Partial(Vec<(usize, Failure)>),
}

/// This receiver's storage, implemented by the TSDB layer.
pub trait LocalWriter: Send + Sync + 'static {
    /// Appends `series` (encoded `TimeSeries` messages) to `tenant`'s TSDB (creating it if
    /// needed) and stores `metadata` (encoded `MetricMetadata` messages).
    fn write<'a>(
        &'a self,
        tenant: &'a str,
        series: &'a [Bytes],
        metadata: &'a [Bytes],
    ) -> BoxFuture<'a, LocalWriteResult>;
}

/// One series of a write as its encoded `TimeSeries` message (usually a zero-copy slice
/// of the request body) and its placement hash for the write's tenant.
#[derive(Debug, Clone)]
pub struct RawSeries {
    pub bytes: Bytes,
    pub hash: u64,
}

impl RawSeries {
    /// From a decoded view of `bytes` (the caller already walked the labels).
    pub fn from_view(tenant: &str, view: &SeriesView<'_>, bytes: Bytes) -> Self {
        let hash =
            crate::hashring::series_hash(tenant, view.labels.iter().map(|l| (l.name, l.value)));
        RawSeries { bytes, hash }
    }

    /// Decodes the labels of `bytes` to place it.
    pub fn decode(tenant: &str, bytes: Bytes) -> Result<Self, DecodeError> {
        let mut view = SeriesView::default();
        view.decode(&bytes)?;
        let hash =
            crate::hashring::series_hash(tenant, view.labels.iter().map(|l| (l.name, l.value)));
        drop(view);
        Ok(RawSeries { bytes, hash })
    }

    pub fn from_prost(tenant: &str, ts: &TimeSeries) -> Self {
        let hash = crate::hashring::series_hash(
            tenant,
            ts.labels
                .iter()
                .map(|l| (l.name.as_str(), l.value.as_str())),
        );
        RawSeries {
            bytes: Bytes::from(ts.encode_to_vec()),
            hash,
        }
    }
}

/// A client write split for routing: its series and its metric metadata, both as the
/// request's own bytes (zero-copy).
#[derive(Debug, Clone, Default)]
pub struct SplitWrite {
    pub series: Vec<RawSeries>,
    /// Encoded `prometheus.MetricMetadata` messages.
    pub metadata: Vec<Bytes>,
}

/// Splits an uncompressed `prometheus.WriteRequest` into [`RawSeries`] and metadata
/// (zero-copy), calling `check` on every decoded series first (limits, counting); its
/// error aborts the split.
pub fn split_body<E: From<DecodeError>>(
    tenant: &str,
    body: &Bytes,
    mut check: impl FnMut(&SeriesView<'_>) -> Result<(), E>,
) -> Result<SplitWrite, E> {
    let mut reader = WriteRequestReader::new(body);
    let mut view = SeriesView::default();
    let mut series = Vec::new();
    while reader.next_series(&mut view)? {
        check(&view)?;
        series.push(RawSeries::from_view(
            tenant,
            &view,
            body.slice_ref(view.raw),
        ));
    }
    let metadata = raw_metadata(body)?
        .into_iter()
        .map(|m| body.slice_ref(m))
        .collect();
    Ok(SplitWrite { series, metadata })
}

/// The answer to a write request.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WriteError {
    /// Some series missed write quorum (or failed locally); `cause` decides the status.
    #[error("{failed} of {total} series failed ({cause}): {message}")]
    Failed {
        cause: FailureKind,
        failed: usize,
        total: usize,
        message: String,
    },
    /// A hashring is configured but not loaded (yet).
    #[error("hashring not loaded: service unavailable")]
    HashringNotReady,
    #[error(transparent)]
    Hashring(#[from] HashringError),
    #[error("request replica {replica} is outside 1..={replication_factor}")]
    BadReplica {
        replica: i64,
        replication_factor: u64,
    },
    #[error("this receiver stores nothing locally (router only)")]
    NoLocalStorage,
    #[error("invalid protobuf remote-write request: {0}")]
    BadRequest(String),
}

impl WriteError {
    /// HTTP status for the remote-write client.
    pub fn http_status(&self) -> u16 {
        match self {
            WriteError::Failed { cause, .. } => quorum::http_status(*cause),
            WriteError::HashringNotReady => 503,
            WriteError::Hashring(_) | WriteError::NoLocalStorage => 500,
            WriteError::BadReplica { .. } | WriteError::BadRequest(_) => 400,
        }
    }

    /// gRPC status for a forwarding peer (Thanos's codes).
    pub fn grpc_status(&self) -> tonic::Status {
        let msg = self.to_string();
        match self {
            WriteError::Failed { cause, .. } => match cause {
                FailureKind::Conflict => tonic::Status::already_exists(msg),
                FailureKind::NotReady | FailureKind::Unavailable => tonic::Status::unavailable(msg),
                FailureKind::Other => tonic::Status::internal(msg),
            },
            WriteError::HashringNotReady => tonic::Status::unavailable(msg),
            WriteError::BadReplica { .. } | WriteError::BadRequest(_) => {
                tonic::Status::invalid_argument(msg)
            }
            WriteError::Hashring(_) | WriteError::NoLocalStorage => tonic::Status::internal(msg),
        }
    }
}

/// Settings of a [`Distributor`].
#[derive(Debug, Clone)]
pub struct DistributorConfig {
    pub mode: Mode,
    /// This receiver's address in the hashring (router+ingestor).
    pub local_endpoint: Option<String>,
    pub replication_factor: u64,
    /// Deadline for one fan-out; replicas that have not answered count as unavailable.
    pub forward_timeout: Duration,
    pub forward_max_backoff: Duration,
    /// Tenant for forwarded requests that carry none.
    pub default_tenant: String,
}

impl DistributorConfig {
    pub fn from_args(args: &HashringArgs, default_tenant: String) -> Self {
        DistributorConfig {
            mode: args.mode(),
            local_endpoint: args.local_endpoint.clone(),
            replication_factor: args.replication_factor,
            forward_timeout: args.forward_timeout,
            forward_max_backoff: args.forward_max_backoff,
            default_tenant,
        }
    }
}

/// Routes, replicates and writes.
pub struct Distributor {
    cfg: DistributorConfig,
    hashring: Option<HashringHandle>,
    local: Option<Arc<dyn LocalWriter>>,
    peers: Arc<PeerPool>,
    metrics: ReplicationMetrics,
}

impl std::fmt::Debug for Distributor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributor")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Errors setting up distribution from flags.
#[derive(Debug, Error)]
pub enum SetupError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(
        "--receive.local-endpoint needs a hashring (--receive.hashrings-file or --receive.hashrings)"
    )]
    LocalEndpointWithoutHashring,
    #[error("this mode stores data locally but no local writer was given")]
    MissingLocalWriter,
    #[error(transparent)]
    Tls(#[from] netsec::Error),
}

/// A [`Distributor`] built from flags, with the file watcher to spawn (if any).
pub struct Setup {
    pub distributor: Arc<Distributor>,
    /// Spawn `watcher.run(shutdown)` to reload the hashring file on change.
    pub watcher: Option<HashringWatcher>,
}

impl Distributor {
    pub fn new(
        cfg: DistributorConfig,
        hashring: Option<HashringHandle>,
        local: Option<Arc<dyn LocalWriter>>,
        metrics: ReplicationMetrics,
    ) -> Self {
        let peers = Arc::new(PeerPool::new(cfg.forward_timeout, cfg.forward_max_backoff));
        Distributor {
            cfg,
            hashring,
            local,
            peers,
            metrics,
        }
    }

    /// Builds everything from the command line. `local` is required unless router-only.
    /// Metrics are registered in `registry`. A hashring file that fails to load at start is
    /// an error; later bad versions are logged and the previous ring kept.
    pub fn from_args(
        args: &HashringArgs,
        default_tenant: String,
        local: Option<Arc<dyn LocalWriter>>,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<Setup, SetupError> {
        let cfg = DistributorConfig::from_args(args, default_tenant);
        if cfg.mode.stores_locally() && local.is_none() {
            return Err(SetupError::MissingLocalWriter);
        }
        let ring_metrics = HashringMetrics::default();
        ring_metrics.register(registry);
        let metrics = ReplicationMetrics::default();
        metrics.register(registry);
        let (handle, watcher) = if let Some(path) = &args.hashrings_file {
            let (w, h, first) = HashringWatcher::new(
                path,
                args.hashrings_file_refresh_interval,
                args.hashrings_algorithm,
                args.replication_factor,
                ring_metrics,
            );
            first?;
            (Some(h), Some(w))
        } else if let Some(inline) = &args.hashrings {
            let loaded = crate::hashring::watch::build(
                inline.as_bytes(),
                std::path::Path::new("--receive.hashrings"),
                args.hashrings_algorithm,
                args.replication_factor,
            )?;
            (Some(HashringHandle::fixed(loaded)), None)
        } else {
            (None, None)
        };
        let mut distributor = Distributor::new(cfg, handle, local, metrics);
        distributor.peers = Arc::new(
            PeerPool::new(args.forward_timeout, args.forward_max_backoff)
                .with_tls(args.client_tls.client()?),
        );
        let distributor = Arc::new(distributor);
        Ok(Setup {
            distributor,
            watcher,
        })
    }

    pub fn mode(&self) -> Mode {
        self.cfg.mode
    }

    /// The hashring in force and its changes (`None` without a hashring).
    pub fn hashring(&self) -> Option<HashringHandle> {
        self.hashring.clone()
    }

    /// Ready to take writes: the hashring (if any) is loaded.
    pub fn is_ready(&self) -> bool {
        match &self.hashring {
            Some(h) => h.current().is_some(),
            None => true,
        }
    }

    pub fn peers(&self) -> &PeerPool {
        &self.peers
    }

    /// A client write of prost series (tests and tools); see [`Distributor::write_series`].
    pub async fn write(&self, tenant: &str, series: Vec<TimeSeries>) -> Result<(), WriteError> {
        let series = series
            .iter()
            .map(|ts| RawSeries::from_prost(tenant, ts))
            .collect();
        self.write_series(
            tenant,
            SplitWrite {
                series,
                metadata: Vec::new(),
            },
        )
        .await
    }

    /// A client write (remote-write HTTP). `tenant` is resolved by the caller.
    ///
    /// Metadata travels with the series: every batch of the write carries all of its
    /// metadata (Orrery's [`FORWARDED_METADATA_FIELD`]), so each receiver that stores part
    /// of the write can answer for the families it holds, and the querier merges them. A
    /// write of metadata only (Prometheus sends metadata in requests of its own) is
    /// placed as one series named by the tenant on the ring, RF times, under the same
    /// quorum: a failure is the client's to retry, not a silent drop.
    ///
    /// [`FORWARDED_METADATA_FIELD`]: storeapi::wire::remote_write::FORWARDED_METADATA_FIELD
    pub async fn write_series(&self, tenant: &str, write: SplitWrite) -> Result<(), WriteError> {
        let SplitWrite {
            mut series,
            metadata,
        } = write;
        if series.is_empty() && metadata.is_empty() {
            return Ok(());
        }
        match self.cfg.mode {
            Mode::IngestorOnly => {
                self.write_local(
                    tenant,
                    series.into_iter().map(|s| s.bytes).collect(),
                    metadata,
                )
                .await
            }
            Mode::RouterOnly | Mode::RouterIngestor => {
                if series.is_empty() {
                    series.push(RawSeries {
                        bytes: Bytes::new(),
                        hash: crate::hashring::series_hash(tenant, std::iter::empty()),
                    });
                }
                let replicas: Vec<u64> = (0..self.cfg.replication_factor).collect();
                let quorum = Quorum::for_replication_factor(self.cfg.replication_factor);
                self.fanout(tenant, series, metadata, &replicas, quorum, true)
                    .await
            }
        }
    }

    /// [`Distributor::write_series`] for an uncompressed `prometheus.WriteRequest` body.
    pub async fn write_raw(&self, tenant: &str, raw: &[u8]) -> Result<(), WriteError> {
        let body = Bytes::copy_from_slice(raw);
        let write = split_body(tenant, &body, |_| Ok::<(), DecodeError>(()))
            .map_err(|e| WriteError::BadRequest(e.to_string()))?;
        self.write_series(tenant, write).await
    }

    /// A forwarded write of prost series (tests and tools); see
    /// [`Distributor::remote_write_bytes`].
    pub async fn remote_write(&self, req: WriteRequest) -> Result<(), WriteError> {
        self.remote_write_bytes(Bytes::from(req.encode_to_vec()))
            .await
    }

    /// A forwarded write (`thanos.WriteableStore/RemoteWrite`): an encoded
    /// `thanos.WriteRequest`.
    pub async fn remote_write_bytes(&self, body: Bytes) -> Result<(), WriteError> {
        let parts = split_forwarded(&body).map_err(|e| WriteError::BadRequest(e.to_string()))?;
        let tenant = if parts.tenant.is_empty() {
            self.cfg.default_tenant.clone()
        } else {
            parts.tenant.to_string()
        };
        let replica = parts.replica;
        let series: Vec<Bytes> = parts.series.iter().map(|s| body.slice_ref(s)).collect();
        let metadata: Vec<Bytes> = parts.metadata.iter().map(|m| body.slice_ref(m)).collect();
        drop(parts);
        let routed = |series: Vec<Bytes>, metadata| -> Result<SplitWrite, WriteError> {
            let series = series
                .into_iter()
                .map(|b| RawSeries::decode(&tenant, b))
                .collect::<Result<_, _>>()
                .map_err(|e| WriteError::BadRequest(e.to_string()))?;
            Ok(SplitWrite { series, metadata })
        };
        match self.cfg.mode {
            // Acyclic topologies: the replica number is meaningless here (Thanos resets it).
            Mode::IngestorOnly => self.write_local(&tenant, series, metadata).await,
            Mode::RouterOnly => self.write_series(&tenant, routed(series, metadata)?).await,
            Mode::RouterIngestor => {
                let rf = self.cfg.replication_factor;
                if replica < 0 || replica as u64 > rf {
                    return Err(WriteError::BadReplica {
                        replica,
                        replication_factor: rf,
                    });
                }
                if replica == 0 {
                    self.write_series(&tenant, routed(series, metadata)?).await
                } else {
                    self.write_local(&tenant, series, metadata).await
                }
            }
        }
    }

    /// Writes to the local TSDB only.
    pub async fn write_local(
        &self,
        tenant: &str,
        series: Vec<Bytes>,
        metadata: Vec<Bytes>,
    ) -> Result<(), WriteError> {
        if series.is_empty() && metadata.is_empty() {
            return Ok(());
        }
        let local = self.local.as_ref().ok_or(WriteError::NoLocalStorage)?;
        let total = series.len().max(1);
        match local.write(tenant, &series, &metadata).await {
            LocalWriteResult::Ok => Ok(()),
            LocalWriteResult::Failed(f) => Err(WriteError::Failed {
                cause: f.kind,
                failed: total,
                total,
                message: f.message,
            }),
            LocalWriteResult::Partial(fails) if fails.is_empty() => Ok(()),
            LocalWriteResult::Partial(fails) => {
                let mut failed_ids = BTreeSet::new();
                let mut messages = Messages::default();
                for (i, f) in &fails {
                    failed_ids.insert(*i);
                    messages.add(&f.message);
                }
                let cause =
                    quorum::request_cause(fails.iter().map(|(_, f)| Outcome::Failed(f.kind)))
                        .unwrap_or(FailureKind::Other);
                Err(WriteError::Failed {
                    cause,
                    failed: failed_ids.len(),
                    total,
                    message: messages.join(),
                })
            }
        }
    }

    async fn fanout(
        &self,
        tenant: &str,
        series: Vec<RawSeries>,
        metadata: Vec<Bytes>,
        replicas: &[u64],
        quorum: Quorum,
        count_replication: bool,
    ) -> Result<(), WriteError> {
        let loaded = self
            .hashring
            .as_ref()
            .and_then(|h| h.current())
            .ok_or(WriteError::HashringNotReady)?;
        let plan = plan::plan(&loaded.hashring, tenant, &series, replicas)?;
        drop(loaded);
        let deadline = tokio::time::Instant::now() + self.cfg.forward_timeout;
        let total = series.len();
        let (tx, mut rx) = mpsc::unbounded_channel::<Response>();

        let metadata = Arc::new(metadata);
        for (dest, ids) in plan {
            // A metadata-only write's placeholder series has no bytes and is not sent.
            let batch: Vec<Bytes> = ids
                .iter()
                .map(|&i| series[i].bytes.clone())
                .filter(|b| !b.is_empty())
                .collect();
            let metadata = Arc::clone(&metadata);
            let tx = tx.clone();
            let tenant = tenant.to_string();
            let is_local = self.cfg.local_endpoint.as_deref() == Some(dest.address.as_str());
            if is_local {
                let local = self.local.clone();
                let metrics = self.metrics.clone();
                tokio::spawn(async move {
                    let resp = match local {
                        Some(l) => local_response(ids, l.write(&tenant, &batch, &metadata).await),
                        None => Response::all(
                            ids,
                            Err(Failure::new(FailureKind::Other, "no local storage")),
                        ),
                    };
                    metrics.forwarded("local", resp.batch_result());
                    let _ = tx.send(resp);
                });
            } else {
                let peers = Arc::clone(&self.peers);
                let metrics = self.metrics.clone();
                tokio::spawn(async move {
                    // 1-based on the wire; 0 means "not replicated yet".
                    let req = Bytes::from(encode_forwarded(
                        &batch,
                        &metadata,
                        &tenant,
                        dest.replica as i64 + 1,
                    ));
                    drop(batch);
                    let result = peers.remote_write(&dest.address, req).await;
                    if let Err(f) = &result {
                        tracing::debug!(peer = %dest.address, error = %f.message, "forward failed");
                    }
                    let resp = Response::all(ids, result);
                    metrics.forwarded(&dest.address, resp.batch_result());
                    let _ = tx.send(resp);
                });
            }
        }
        drop(tx);

        let mut tallies = vec![quorum::Tally::default(); total];
        let mut outcomes = vec![Outcome::Pending; total];
        let mut undecided = total;
        let mut messages = Messages::default();
        while undecided > 0 {
            let resp = match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => r,
                // Every batch answered (a batch task died), or the deadline passed: missing
                // answers count as unavailable.
                Ok(None) | Err(_) => {
                    messages.add(&format!(
                        "not every replica answered within the forward timeout of {:?}",
                        self.cfg.forward_timeout
                    ));
                    for (t, o) in tallies.iter().zip(outcomes.iter_mut()) {
                        if *o == Outcome::Pending {
                            *o = quorum.decide_final(t);
                        }
                    }
                    break;
                }
            };
            for m in &resp.messages {
                messages.add(m);
            }
            for (id, r) in resp.per_series {
                let Some(t) = tallies.get_mut(id) else {
                    continue;
                };
                t.record(r);
                if outcomes[id] == Outcome::Pending {
                    outcomes[id] = quorum.decide(t);
                    if outcomes[id] != Outcome::Pending {
                        undecided -= 1;
                    }
                }
            }
        }

        let mut failed = 0;
        for o in &outcomes {
            if let Outcome::Failed(k) = o {
                failed += 1;
                self.metrics
                    .quorum_failures
                    .get_or_create(&metrics::CauseLabels {
                        cause: k.as_str().to_string(),
                    })
                    .inc();
            }
        }
        let cause = quorum::request_cause(outcomes.iter().copied());
        if count_replication {
            let result = if cause.is_none() { "success" } else { "error" };
            self.metrics
                .replications
                .get_or_create(&metrics::ResultLabels {
                    result: result.to_string(),
                })
                .inc();
        }
        match cause {
            None => Ok(()),
            Some(cause) => Err(WriteError::Failed {
                cause,
                failed,
                total,
                message: messages.join(),
            }),
        }
    }
}

/// Answers of one batch.
struct Response {
    per_series: Vec<(usize, Result<(), FailureKind>)>,
    messages: Vec<String>,
}

impl Response {
    fn all(ids: Vec<usize>, result: Result<(), Failure>) -> Self {
        let (r, messages) = match result {
            Ok(()) => (Ok(()), Vec::new()),
            Err(f) => (Err(f.kind), vec![f.message]),
        };
        Response {
            per_series: ids.into_iter().map(|i| (i, r)).collect(),
            messages,
        }
    }

    /// The batch as one result (worst failure) for metrics.
    fn batch_result(&self) -> Result<(), FailureKind> {
        let kinds = self
            .per_series
            .iter()
            .filter_map(|(_, r)| r.err().map(Outcome::Failed));
        match quorum::request_cause(kinds) {
            None => Ok(()),
            Some(k) => Err(k),
        }
    }
}

fn local_response(ids: Vec<usize>, result: LocalWriteResult) -> Response {
    match result {
        LocalWriteResult::Ok => Response::all(ids, Ok(())),
        LocalWriteResult::Failed(f) => Response::all(ids, Err(f)),
        LocalWriteResult::Partial(fails) => {
            let mut per_series: Vec<(usize, Result<(), FailureKind>)> =
                ids.iter().map(|&i| (i, Ok(()))).collect();
            let mut messages = Vec::new();
            for (pos, f) in fails {
                if let Some(slot) = per_series.get_mut(pos) {
                    slot.1 = Err(f.kind);
                }
                if messages.len() < 8 && !messages.contains(&f.message) {
                    messages.push(f.message);
                }
            }
            Response {
                per_series,
                messages,
            }
        }
    }
}

/// A small deduplicated set of error reasons for the client.
#[derive(Default)]
struct Messages(BTreeSet<String>);

impl Messages {
    const MAX: usize = 10;

    fn add(&mut self, m: &str) {
        if self.0.len() < Self::MAX {
            self.0.insert(m.to_string());
        }
    }

    fn join(&self) -> String {
        self.0.iter().cloned().collect::<Vec<_>>().join("; ")
    }
}

#[cfg(test)]
mod tests;
