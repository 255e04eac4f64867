//! HTTP: the remote-write endpoint (`POST /api/v1/receive`, remote write 1.0 and 2.0) and
//! the operational endpoints (`/metrics`, `/-/healthy`, `/-/ready`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

use storeapi::wire::remote_write::DecodeLimits;
use storeapi::wire::remote_write_v2;

use crate::body;
use crate::limits::LimitsConfig;
use crate::metrics::{CodeLabels, ProtocolLabels, ReceiveMetrics};
use crate::multitsdb::{MultiTsdb, validate_tenant};
use crate::negotiate::{self, Protocol};
use crate::replicate::{self, Distributor, split_body};
use crate::write::{Bounds, WriteError, WriteSummary, write_into};

/// Everything the remote-write handler needs.
pub struct WriteState {
    pub mt: Arc<MultiTsdb>,
    pub metrics: ReceiveMetrics,
    pub limits: Arc<LimitsConfig>,
    pub bounds: Bounds,
    /// Header, default and certificate field: how a request's tenant is picked.
    pub tenants: netsec::TenantPolicy,
    /// Refusals by reason (shared with the `--remote-write.http-config` guard).
    pub auth_failures: netsec::identity::FailureCounter,
    pub max_body_bytes: usize,
    pub max_decompressed_bytes: usize,
    pub concurrency: Semaphore,
    pub ready: Arc<AtomicBool>,
    /// Routes and replicates over the hashring; `None` for an ingestor (writes locally).
    pub distributor: Option<Arc<Distributor>>,
}

fn text(code: StatusCode, body: String) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The remote-write router.
pub fn remote_write_router(state: Arc<WriteState>) -> Router {
    Router::new()
        .route("/api/v1/receive", post(receive))
        // The body is read by hand under our own limits.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn receive(State(st): State<Arc<WriteState>>, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    // The guard of `--remote-write.http-config` attached the principal; the listener the
    // connection (and its client certificate).
    let tenant = st.tenants.resolve(
        &headers,
        parts.extensions.get::<netsec::Principal>(),
        parts
            .extensions
            .get::<ConnectInfo<netsec::ConnInfo>>()
            .and_then(|c| c.0.peer_certificates.as_deref()),
    );
    let tenant = match tenant {
        Ok(t) => t,
        Err(e) => return refuse(&st, e),
    };
    st.metrics.in_flight.inc();
    let (result, protocol, written) = handle(&st, &headers, tenant, body).await;
    st.metrics.in_flight.dec();
    st.metrics
        .request_duration
        .observe(started.elapsed().as_secs_f64());
    let (code, mut resp) = match result {
        // 1.0: Thanos answers 200; 2.0: the spec's 204, as Prometheus.
        Ok(()) if protocol == Some(Protocol::V2) => (204, StatusCode::NO_CONTENT.into_response()),
        Ok(()) => (200, StatusCode::OK.into_response()),
        Err(e) => {
            let code = e.status();
            let sc = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if code >= 500 {
                tracing::warn!(code, error = %e, "remote write failed");
            } else {
                tracing::debug!(code, error = %e, "remote write refused");
            }
            (code, text(sc, format!("{e}\n")))
        }
    };
    if protocol == Some(Protocol::V2) {
        written.set_headers(resp.headers_mut());
    }
    st.metrics
        .requests
        .get_or_create(&CodeLabels {
            code: code.to_string(),
        })
        .inc();
    resp
}

/// What a request really wrote; a remote-write 2.0 response carries it in the
/// `X-Prometheus-Remote-Write-*-Written` headers, on success and on failure (a sender
/// reads a 2xx without them as "nothing written").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub samples: u64,
    pub histograms: u64,
    pub exemplars: u64,
}

impl Written {
    pub const SAMPLES_HEADER: &str = "X-Prometheus-Remote-Write-Samples-Written";
    pub const HISTOGRAMS_HEADER: &str = "X-Prometheus-Remote-Write-Histograms-Written";
    pub const EXEMPLARS_HEADER: &str = "X-Prometheus-Remote-Write-Exemplars-Written";

    fn set_headers(&self, h: &mut HeaderMap) {
        for (name, n) in [
            (Self::SAMPLES_HEADER, self.samples),
            (Self::HISTOGRAMS_HEADER, self.histograms),
            (Self::EXEMPLARS_HEADER, self.exemplars),
        ] {
            h.insert(name, header::HeaderValue::from(n));
        }
    }
}

/// A request whose tenant could not be established: 401 (with a challenge) when the
/// client proved no tenant, 403 when it proved one and asked for another; counted by
/// reason and by status code, never a 5xx.
fn refuse(st: &WriteState, e: netsec::identity::TenantError) -> Response {
    netsec::identity::count(&st.auth_failures, e.reason());
    let code = e.status();
    tracing::debug!(code = code.as_u16(), error = %e, "remote write refused: tenant");
    st.metrics
        .requests
        .get_or_create(&CodeLabels {
            code: code.as_str().to_string(),
        })
        .inc();
    let mut resp = text(code, format!("{e}\n"));
    if code == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"orrery\""),
        );
    }
    resp
}

/// Negotiates, reads, decodes and writes one request. Returns the outcome, the protocol
/// (`None` when negotiation failed) and what was written.
async fn handle(
    st: &Arc<WriteState>,
    headers: &HeaderMap,
    tenant: String,
    body: Body,
) -> (Result<(), WriteError>, Option<Protocol>, Written) {
    let header_text = |name| {
        headers
            .get(name)
            .map(|v: &header::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let protocol = match negotiate::protocol(
        header_text(header::CONTENT_TYPE).as_deref(),
        header_text(header::CONTENT_ENCODING).as_deref(),
    ) {
        Ok(p) => p,
        Err(e) => {
            return (
                Err(WriteError::UnsupportedMediaType(e.to_string())),
                None,
                Written::default(),
            );
        }
    };
    st.metrics
        .requests_by_protocol
        .get_or_create(&ProtocolLabels {
            protocol: match protocol {
                Protocol::V1 => "v1",
                Protocol::V2 => "v2",
            }
            .to_string(),
        })
        .inc();
    let mut written = Written::default();
    let result = handle_body(st, headers, tenant, body, protocol, &mut written).await;
    (result, Some(protocol), written)
}

async fn handle_body(
    st: &Arc<WriteState>,
    headers: &HeaderMap,
    tenant: String,
    body: Body,
    protocol: Protocol,
    written: &mut Written,
) -> Result<(), WriteError> {
    if !st.ready.load(Ordering::Acquire) {
        return Err(WriteError::NotReady(
            "receiver is not ready (WAL replay in progress)".into(),
        ));
    }
    if let Some(d) = &st.distributor
        && !d.is_ready()
    {
        return Err(WriteError::NotReady("hashring not loaded yet".into()));
    }
    validate_tenant(&tenant).map_err(|e| WriteError::BadRequest(e.to_string()))?;
    let limits = st.limits.for_tenant(&tenant);
    let (body_limit, which) = match limits.size_bytes {
        Some(l) if (l as usize) < st.max_body_bytes => (l as usize, "size_bytes_limit"),
        _ => (st.max_body_bytes, "--receive.max-body-bytes"),
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > body_limit as u64
    {
        return Err(WriteError::TooLarge(format!(
            "request body of {len} bytes is over the {which} of {body_limit} bytes"
        )));
    }
    let _permit = st
        .concurrency
        .acquire()
        .await
        .map_err(|_| WriteError::NotReady("receiver is shutting down".into()))?;
    let compressed: Bytes = axum::body::to_bytes(body, body_limit).await.map_err(|e| {
        WriteError::TooLarge(format!(
            "reading request body failed (the {which} is {body_limit} bytes): {e}"
        ))
    })?;
    let (dlimit, dwhich) = match limits.size_bytes {
        Some(l) if (l as usize) < st.max_decompressed_bytes => (l as usize, "size_bytes_limit"),
        _ => (
            st.max_decompressed_bytes,
            "--receive.max-decompressed-bytes",
        ),
    };
    let st2 = st.clone();
    let routed = st.distributor.is_some();
    // Run here, on the write runtime, whose threads may block (see write_runtime); a
    // panic is this request's 500, as it was from the blocking pool.
    let (decoded, summary) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let mut summary = WriteSummary::default();
        let r = (|| {
            if routed {
                let raw = body::decompress(&compressed, dlimit, dwhich)?;
                // 2.0 is translated to 1.0 bytes: the hashring forwards 1.0 series.
                let raw = match protocol {
                    Protocol::V1 => raw,
                    Protocol::V2 => {
                        remote_write_v2::translate_to_v1(&raw, DecodeLimits::default())
                            .map_err(|e| {
                                WriteError::BadRequest(format!(
                                    "invalid protobuf remote-write 2.0 request: {e}"
                                ))
                            })?
                            .0
                    }
                };
                split_limited(&tenant, Bytes::from(raw), &limits).map(|s| Some((tenant, s)))
            } else {
                body::with_decompressed(&compressed, dlimit, dwhich, |raw| {
                    write_into(
                        &st2.mt,
                        &st2.metrics,
                        &tenant,
                        raw,
                        protocol,
                        &limits,
                        &st2.bounds,
                        &mut summary,
                    )
                })
                .map(|()| None)
            }
        })();
        (r, summary)
    }))
    .map_err(|_| WriteError::Internal("write task panicked".into()))?;
    written.samples = summary.written;
    written.histograms = summary.histograms_written;
    written.exemplars = summary.exemplars_written;
    match (decoded?, &st.distributor) {
        (Some((tenant, (write, samples, exemplars))), Some(d)) => {
            // Replication succeeded for every series, or the request failed: a partial
            // quorum failure reports nothing written (the sender does not retry a 4xx
            // and retries a 5xx whole, which the TSDB deduplicates).
            d.write_series(&tenant, write)
                .await
                .map_err(from_replication)?;
            written.samples = samples;
            // As Thanos: what was forwarded (each owner stores or drops exemplars itself).
            written.exemplars = exemplars;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Splits a body for routing, applying the tenant's request limits (series, samples) as
/// Thanos's router does before forwarding.
fn split_limited(
    tenant: &str,
    body: Bytes,
    limits: &crate::limits::Effective,
) -> Result<(replicate::SplitWrite, u64, u64), WriteError> {
    let (mut series, mut samples, mut exemplars) = (0u64, 0u64, 0u64);
    let raw = split_body(tenant, &body, |view| {
        series += 1;
        samples += view.samples.len() as u64;
        exemplars += view.exemplars.len() as u64;
        if let Some(max) = limits.series
            && series > max
        {
            return Err(WriteError::TooLarge(format!(
                "request has more than {max} series: over the series_limit of tenant {tenant:?}"
            )));
        }
        if let Some(max) = limits.samples
            && samples > max
        {
            return Err(WriteError::TooLarge(format!(
                "request has more than {max} samples: over the samples_limit of tenant {tenant:?}"
            )));
        }
        Ok(())
    })?;
    Ok((raw, samples, exemplars))
}

impl From<storeapi::wire::remote_write::DecodeError> for WriteError {
    fn from(e: storeapi::wire::remote_write::DecodeError) -> Self {
        WriteError::BadRequest(format!("invalid protobuf remote-write request: {e}"))
    }
}

/// The distributor's outcome as the remote-write answer (same status, same reason).
fn from_replication(e: replicate::WriteError) -> WriteError {
    let msg = e.to_string();
    match e.http_status() {
        400 => WriteError::BadRequest(msg),
        409 => WriteError::Conflict(msg),
        413 => WriteError::TooLarge(msg),
        415 => WriteError::UnsupportedMediaType(msg),
        429 => WriteError::TooManyHeadSeries(msg),
        503 => WriteError::NotReady(msg),
        _ => WriteError::Internal(msg),
    }
}

/// State of the operational HTTP server.
pub struct OpsState {
    pub registry: Arc<Mutex<Registry>>,
    pub ready: Arc<AtomicBool>,
    pub mt: Arc<MultiTsdb>,
    pub metrics: ReceiveMetrics,
    pub distributor: Option<Arc<Distributor>>,
    /// A hashring hand-off is flushing and shipping tenants (see [`crate::handoff`]).
    pub handoff: Arc<AtomicBool>,
}

pub fn ops_router(state: Arc<OpsState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/-/healthy", get(|| async { "OK\n" }))
        .route("/-/ready", get(ready))
        .with_state(state)
}

async fn ready(State(st): State<Arc<OpsState>>) -> Response {
    let ring_ready = st.distributor.as_ref().is_none_or(|d| d.is_ready());
    let failing = st.mt.wal_failures();
    let reason = if !st.ready.load(Ordering::Acquire) {
        "WAL replay in progress".to_string()
    } else if !ring_ready {
        "hashring not loaded".to_string()
    } else if st.handoff.load(Ordering::Acquire) {
        // As Thanos Receive: not ready while the heads of tenants the new hashring moved
        // are flushed and shipped (writes are still taken meanwhile).
        "hashring has changed; flushing and shipping the heads of tenants that moved".to_string()
    } else if !failing.is_empty() {
        // Writes would fail (5xx) until space is back: a load balancer should send them
        // elsewhere. Maintenance retries the log, so this clears without client traffic.
        let list: Vec<String> = failing
            .iter()
            .map(|(tenant, why)| format!("tenant {tenant:?}: {why}"))
            .collect();
        format!("WAL writes are failing ({})", list.join("; "))
    } else {
        return text(StatusCode::OK, "OK\n".into());
    };
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: {reason}\n"),
    )
}

async fn metrics(State(st): State<Arc<OpsState>>) -> Response {
    for (tenant, n) in st.mt.head_series() {
        st.metrics
            .head_series
            .get_or_create(&crate::metrics::TenantLabels { tenant })
            .set(n as i64);
    }
    st.metrics.tenants.set(st.mt.len() as i64);
    netsec::ops::metrics_response(&st.registry)
}
