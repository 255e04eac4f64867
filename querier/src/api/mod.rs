//! The Prometheus HTTP API v1 (GET and POST form), Thanos's `/api/v1/stores`, health,
//! metrics and the web UI.

pub mod format;
pub mod params;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use promql::{Engine, QueryError, QueryOptions};
use storeapi::Matcher;

use crate::endpoints::EndpointSet;
use crate::metrics::Metrics;
use crate::proxy::{FanoutOptions, ProxyStorage};
use crate::tenancy::Scope;
use format::{MAX_TIME_MS, MIN_TIME_MS};
use params::Params;

/// Prometheus's limit on points per series in a range query.
pub const MAX_POINTS_PER_SERIES: i64 = 11_000;

/// Everything a handler needs.
#[derive(Debug)]
pub struct AppState {
    pub endpoints: Arc<EndpointSet>,
    pub engine: Engine,
    pub replica_labels: Vec<String>,
    pub partial_response: bool,
    pub timeout: Duration,
    pub store_timeout: Duration,
    /// The tenant of each request and, with `--query.enforce-tenancy`, its confinement.
    pub tenancy: crate::tenancy::Tenancy,
    /// `--query.max-concurrent`: a permit per running request, held until its evaluation
    /// has really stopped.
    pub gate: Arc<tokio::sync::Semaphore>,
    pub metrics: Metrics,
    pub ready: AtomicBool,
    /// `--query.auto-downsampling`: without `max_source_resolution`, range queries may
    /// read data downsampled to step/5.
    pub auto_downsampling: bool,
    /// Every flag and its value, for `/api/v1/status/flags` (inline configs redacted).
    pub flags: Vec<(String, String)>,
}

/// An API error: Prometheus's `errorType` and message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub error_type: &'static str,
    pub message: String,
    pub warnings: Vec<String>,
}

impl ApiError {
    pub fn bad_data(message: impl Into<String>) -> Self {
        ApiError {
            error_type: "bad_data",
            message: message.into(),
            warnings: Vec::new(),
        }
    }

    fn param(name: &str, err: impl std::fmt::Display) -> Self {
        Self::bad_data(format!("invalid parameter \"{name}\": {err}"))
    }

    /// HTTP status code Prometheus uses for this error type.
    pub fn status(&self) -> StatusCode {
        match self.error_type {
            "bad_data" => StatusCode::BAD_REQUEST,
            "execution" => StatusCode::UNPROCESSABLE_ENTITY,
            "canceled" => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            "timeout" | "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "not_found" => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn from_query(e: QueryError, warnings: Vec<String>) -> Self {
        let error_type = e.error_type();
        let mut message = e.to_string();
        if error_type == "bad_data" && !message.starts_with("invalid parameter") {
            message = format!("invalid parameter \"query\": {message}");
        }
        ApiError {
            error_type,
            message,
            warnings,
        }
    }
}

fn json_response(code: StatusCode, body: String) -> Response {
    let mut r = (code, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

type ApiResult = Result<(String, Vec<String>, Vec<String>), ApiError>;

fn finish(res: ApiResult) -> Response {
    match res {
        Ok((data, warnings, infos)) => {
            json_response(StatusCode::OK, format::success(&data, &warnings, &infos))
        }
        Err(e) => json_response(
            e.status(),
            format::error(e.error_type, &e.message, &e.warnings),
        ),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl AppState {
    /// Fan-out options for one request: `dedup`, `replicaLabels[]`, `partial_response`
    /// parameters and the request's tenant scope.
    fn fanout(&self, p: &Params, scope: &Scope) -> Result<FanoutOptions, ApiError> {
        let dedup = match p.get("dedup") {
            Some(v) if !v.is_empty() => params::parse_bool(v).ok_or_else(|| {
                ApiError::param("dedup", format!("cannot parse {v:?} as a boolean"))
            })?,
            _ => true,
        };
        let partial_response = match p.get("partial_response") {
            Some(v) if !v.is_empty() => params::parse_bool(v).ok_or_else(|| {
                ApiError::param(
                    "partial_response",
                    format!("cannot parse {v:?} as a boolean"),
                )
            })?,
            _ => self.partial_response,
        };
        let override_labels: Vec<String> = p
            .get_all("replicaLabels[]")
            .into_iter()
            .flat_map(|v| v.split(',').map(str::to_string).collect::<Vec<_>>())
            .filter(|v| !v.is_empty())
            .collect();
        let replica_labels = if override_labels.is_empty() {
            self.replica_labels.clone()
        } else {
            override_labels
        };
        let tenant = scope.forward.clone();
        let timeout = if self.store_timeout.is_zero() {
            self.timeout
        } else {
            self.store_timeout
        };
        Ok(FanoutOptions {
            replica_labels,
            dedup,
            partial_response,
            tenant,
            enforce: scope.enforced.clone(),
            timeout,
            max_resolution_ms: 0,
        })
    }

    /// The `max_source_resolution` parameter in milliseconds (Thanos's
    /// `parseDownsamplingParamMillis`): a duration (`0s`, `5m`, `1h`), or `auto` (and no
    /// parameter with `--query.auto-downsampling`) for `auto_ms` (range: step/5).
    fn max_resolution(&self, p: &Params, auto_ms: i64) -> Result<i64, ApiError> {
        const NAME: &str = "max_source_resolution";
        let v = p.get(NAME).unwrap_or("");
        let ms = match v {
            "" if self.auto_downsampling => auto_ms,
            "" => 0,
            "auto" => auto_ms,
            v => format::parse_duration(v).map_err(|e| ApiError::param(NAME, e))?,
        };
        if ms < 0 {
            return Err(ApiError::bad_data(format!(
                "negative '{NAME}' is not accepted. Try a positive integer"
            )));
        }
        Ok(ms)
    }

    /// Applies `max_source_resolution` to a query: the stores may answer with data that
    /// coarse, and (unless `lookback_delta` is given) the lookback grows to 5m / 1h with
    /// it, as Thanos's dynamic lookback delta does.
    fn downsampling(
        &self,
        p: &Params,
        auto_ms: i64,
        storage: &mut ProxyStorage,
        opts: &mut QueryOptions,
    ) -> Result<(), ApiError> {
        let ms = self.max_resolution(p, auto_ms)?;
        storage.opts.max_resolution_ms = ms;
        if opts.lookback_delta_ms.is_none() && ms > 0 {
            let base = self.engine.options().lookback_delta_ms;
            opts.lookback_delta_ms = Some(crate::downsample::lookback_for(base, ms));
        }
        Ok(())
    }

    /// The fan-out for one request: the only way a handler reads data, and it takes the
    /// request's tenant [`Scope`].
    fn storage(&self, p: &Params, scope: &Scope) -> Result<ProxyStorage, ApiError> {
        Ok(ProxyStorage::new(
            self.endpoints.clone(),
            self.fanout(p, scope)?,
        ))
    }

    fn query_timeout(&self, p: &Params) -> Result<Duration, ApiError> {
        match p.get("timeout") {
            Some(v) if !v.is_empty() => {
                let ms = format::parse_duration(v).map_err(|e| ApiError::param("timeout", e))?;
                let d = Duration::from_millis(ms.max(0) as u64);
                Ok(d.min(self.timeout))
            }
            _ => Ok(self.timeout),
        }
    }

    fn query_options(&self, p: &Params) -> Result<QueryOptions, ApiError> {
        let mut o = QueryOptions::default();
        if let Some(v) = p.get("lookback_delta")
            && !v.is_empty()
        {
            let ms = format::parse_duration(v).map_err(|e| ApiError::param("lookback_delta", e))?;
            o.lookback_delta_ms = Some(ms);
        }
        Ok(o)
    }

    /// Runs `f` with a `--query.max-concurrent` permit, all within `timeout`: a request
    /// waits in the queue for at most its timeout (then 503 "query timed out in query
    /// queue", as Prometheus's engine answers), and the rest of the timeout bounds the
    /// work. `f` gets the permit so it can hand it to the thread that evaluates.
    async fn with_gate<T, F, Fut>(&self, timeout: Duration, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(QuerySlot) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let permit =
            match tokio::time::timeout_at(deadline, self.gate.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => {
                    return Err(ApiError {
                        error_type: "unavailable",
                        message: "querier is shutting down".into(),
                        warnings: Vec::new(),
                    });
                }
                Err(_) => return Err(timeout_error("query queue")),
            };
        let mut slot = QuerySlot::new(permit, self.metrics.concurrent_queries.clone());
        slot.queued = deadline
            .checked_duration_since(tokio::time::Instant::now())
            .map_or(timeout, |left| timeout.saturating_sub(left));
        let r = tokio::time::timeout_at(deadline, f(slot)).await;
        match r {
            Ok(r) => r,
            Err(_) => Err(timeout_error("expression evaluation")),
        }
    }
}

/// A `--query.max-concurrent` permit, counted in `orrery_query_concurrent_queries` for
/// exactly as long as it is held (by the request, or by the thread still parsing or
/// evaluating after the request gave up), so the gauge never shows more than the limit.
pub(crate) struct QuerySlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    gauge: prometheus_client::metrics::gauge::Gauge,
    /// How long the request waited for this permit (`execQueueTime`).
    queued: Duration,
}

impl QuerySlot {
    fn new(
        permit: tokio::sync::OwnedSemaphorePermit,
        gauge: prometheus_client::metrics::gauge::Gauge,
    ) -> QuerySlot {
        gauge.inc();
        QuerySlot {
            _permit: permit,
            gauge,
            queued: Duration::ZERO,
        }
    }
}

impl Drop for QuerySlot {
    fn drop(&mut self) {
        // Before the permit (a field) is released: a new holder cannot be counted first.
        self.gauge.dec();
    }
}

/// Prometheus's `ErrQueryTimeout` message (503, `errorType` "timeout").
fn timeout_error(stage: &str) -> ApiError {
    ApiError {
        error_type: "timeout",
        message: format!("query timed out in {stage}"),
        warnings: Vec::new(),
    }
}

/// Sets the query's cancel flag when dropped: a request that timed out (its future is
/// dropped) stops its evaluation at the next node instead of leaving it running.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Evaluates a prepared query and renders its data on a blocking thread (evaluation is
/// CPU bound and must not stall the runtime's workers), holding `permit` until the
/// evaluation has ended even if the request gave up on it.
async fn exec_blocking(
    prepared: promql::PreparedQuery,
    permit: QuerySlot,
    out: ResultOptions,
) -> Result<(String, Vec<String>, Vec<String>), ApiError> {
    let job = tokio::task::spawn_blocking(move || {
        let r = prepared
            .exec()
            .map_err(|e| ApiError::from_query(e, Vec::new()))?;
        let mut warnings = r.warnings;
        let mut value = r.value;
        truncate_series(&mut value, out.limit, &mut warnings);
        let mut data = String::new();
        format::write_query_data(&mut data, &value);
        if out.stats {
            let timings = format::Timings {
                exec_queue: permit.queued.as_secs_f64(),
                query_preparation: out.preparation.as_secs_f64(),
            };
            format::append_stats(&mut data, timings, &r.stats);
        }
        drop(permit);
        Ok((data, warnings, r.infos))
    });
    match job.await {
        Ok(r) => r,
        Err(e) => Err(ApiError {
            error_type: "internal",
            message: format!("query evaluation failed: {e}"),
            warnings: Vec::new(),
        }),
    }
}

/// What a query's answer carries besides its value: `limit` (series kept, 0 = all) and
/// `stats` (any non-empty value, as Prometheus), with the time selection took.
struct ResultOptions {
    limit: usize,
    stats: bool,
    preparation: Duration,
}

impl ResultOptions {
    fn from_params(p: &Params) -> Result<ResultOptions, ApiError> {
        Ok(ResultOptions {
            limit: limit_param(p)?,
            stats: p.get("stats").is_some_and(|v| !v.is_empty()),
            preparation: Duration::ZERO,
        })
    }
}

/// Keeps the first `limit` series of a vector or matrix (Prometheus's `limit` parameter of
/// query and query_range: scalars and strings are untouched), with its warning.
fn truncate_series(v: &mut promql::Value, limit: usize, warnings: &mut Vec<String>) {
    match v {
        promql::Value::Vector(s) => apply_limit(s, limit, warnings),
        promql::Value::Matrix(s) => apply_limit(s, limit, warnings),
        promql::Value::HistVector(s) | promql::Value::HistMatrix(s) => {
            apply_limit(s, limit, warnings)
        }
        _ => {}
    }
}

/// Parses a client's query on a blocking thread: parsing a long or deep expression is
/// seconds of CPU for some shapes and must not stall the runtime's workers. The thread
/// holds the `--query.max-concurrent` permit until it is done (even if the request timed
/// out meanwhile), so parsing is bounded by the same limit as evaluation.
async fn parse_blocking(
    engine: &Engine,
    q: String,
    permit: QuerySlot,
    scope: &Scope,
) -> Result<(promql::ParsedExpr, QuerySlot), ApiError> {
    let engine = engine.clone();
    let scope = scope.clone();
    let job = tokio::task::spawn_blocking(move || {
        let r = engine.parse(&q).and_then(|e| {
            // A tenant matcher that contradicts the caller's tenant is the client's error.
            scope
                .check_expr(&e)
                .map_err(|t| QueryError::BadData(t.to_string()))?;
            Ok(e)
        });
        (r, permit)
    });
    match job.await {
        Ok((Ok(expr), permit)) => Ok((expr, permit)),
        Ok((Err(e), _)) => Err(ApiError::from_query(e, Vec::new())),
        Err(e) => Err(ApiError {
            error_type: "internal",
            message: format!("query parsing failed: {e}"),
            warnings: Vec::new(),
        }),
    }
}

fn parse_time_param(p: &Params, name: &str, default: i64) -> Result<i64, ApiError> {
    match p.get(name) {
        Some(v) if !v.is_empty() => format::parse_time(v).map_err(|e| ApiError::param(name, e)),
        _ => Ok(default),
    }
}

/// Most `match[]` selectors one request may carry (each is a fan-out of its own).
pub const MAX_MATCH_SETS: usize = 1_000;

/// Parses a series selector (`match[]`) into matchers, within the query text limits.
pub fn parse_selector(s: &str, limits: &promql::QueryLimits) -> Result<Vec<Matcher>, String> {
    use promql_parser::label::MatchOp as P;
    use promql_parser::parser::Expr;
    let expr = promql::parse_checked(s, limits).map_err(|e| e.to_string())?;
    let Expr::VectorSelector(vs) = &*expr else {
        return Err(format!(
            "1:1: parse error: expected a series selector, got {:?}",
            truncate(s, 200)
        ));
    };
    if !vs.matchers.or_matchers.is_empty() {
        return Err("1:1: parse error: `or` in series selectors is not supported".into());
    }
    let mut out = Vec::new();
    if let Some(name) = &vs.name {
        out.push(Matcher::equal(storeapi::METRIC_NAME, name.clone()));
    }
    for m in &vs.matchers.matchers {
        let op = match m.op {
            P::Equal => storeapi::MatchOp::Equal,
            P::NotEqual => storeapi::MatchOp::NotEqual,
            P::Re(_) => storeapi::MatchOp::RegexMatch,
            P::NotRe(_) => storeapi::MatchOp::RegexNoMatch,
        };
        out.push(Matcher::new(op, m.name.clone(), m.value.clone()).map_err(|e| e.to_string())?);
    }
    if out.iter().all(|m| m.matches_empty()) {
        return Err("match[] must contain at least one non-empty matcher".into());
    }
    Ok(out)
}

/// At most `max` bytes of `s` (on a character boundary), for error messages.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn matcher_sets(st: &AppState, p: &Params, scope: &Scope) -> Result<Vec<Vec<Matcher>>, ApiError> {
    let all = p.get_all("match[]");
    if all.len() > MAX_MATCH_SETS {
        return Err(ApiError::param(
            "match[]",
            format!(
                "{} selectors exceed the limit of {MAX_MATCH_SETS} per request",
                all.len()
            ),
        ));
    }
    let limits = st.engine.options().limits;
    all.into_iter()
        .map(|s| {
            let ms = parse_selector(s, &limits).map_err(|e| ApiError::param("match[]", e))?;
            scope
                .check_matchers(&ms)
                .map_err(|e| ApiError::param("match[]", e))?;
            Ok(ms)
        })
        .collect()
}

/// The `limit` parameter (0 = none), refused as Prometheus refuses it.
fn limit_param(p: &Params) -> Result<usize, ApiError> {
    match p.get("limit") {
        Some(v) if !v.is_empty() => match params::parse_go_int(v) {
            Ok(n) if n < 0 => Err(ApiError::param("limit", "limit must be non-negative")),
            Ok(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            Err(e) => Err(ApiError::param("limit", e)),
        },
        _ => Ok(0),
    }
}

fn apply_limit<T>(v: &mut Vec<T>, limit: usize, warnings: &mut Vec<String>) {
    if limit > 0 && v.len() > limit {
        v.truncate(limit);
        warnings.push("results truncated due to limit".into());
    }
}

async fn query(st: &AppState, p: &Params, h: &Scope) -> ApiResult {
    let q = p.get("query").unwrap_or("").to_string();
    let t = parse_time_param(p, "time", now_ms())?;
    let timeout = st.query_timeout(p)?;
    let mut opts = st.query_options(p)?;
    let mut storage = st.storage(p, h)?;
    let mut out = ResultOptions::from_params(p)?;
    // Instant queries: `auto` means raw, Thanos's default
    // `--query.instant.default.max_source_resolution` (0s).
    st.downsampling(p, 0, &mut storage, &mut opts)?;
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel = CancelOnDrop(cancel.clone());
    opts.cancel = Some(cancel);
    st.with_gate(timeout, |permit| async move {
        let (expr, permit) = parse_blocking(&st.engine, q, permit, h).await?;
        let started = Instant::now();
        let prepared = st
            .engine
            .prepare_instant_parsed(&storage, expr, t, &opts)
            .await
            .map_err(|e| ApiError::from_query(e, Vec::new()))?;
        out.preparation = started.elapsed();
        exec_blocking(prepared, permit, out).await
    })
    .await
}

async fn query_range(st: &AppState, p: &Params, h: &Scope) -> ApiResult {
    let start = match p.get("start") {
        Some(v) => format::parse_time(v).map_err(|e| ApiError::param("start", e))?,
        None => {
            return Err(ApiError::param(
                "start",
                "cannot parse \"\" to a valid timestamp",
            ));
        }
    };
    let end = match p.get("end") {
        Some(v) => format::parse_time(v).map_err(|e| ApiError::param("end", e))?,
        None => {
            return Err(ApiError::param(
                "end",
                "cannot parse \"\" to a valid timestamp",
            ));
        }
    };
    if end < start {
        return Err(ApiError::param(
            "end",
            "end timestamp must not be before start time",
        ));
    }
    let step = match p.get("step") {
        Some(v) => format::parse_duration(v).map_err(|e| ApiError::param("step", e))?,
        None => {
            return Err(ApiError::param(
                "step",
                "cannot parse \"\" to a valid duration",
            ));
        }
    };
    if step <= 0 {
        return Err(ApiError::param(
            "step",
            "zero or negative query resolution step widths are not accepted. Try a positive integer",
        ));
    }
    if (end - start) / step > MAX_POINTS_PER_SERIES {
        return Err(ApiError::bad_data(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        ));
    }
    let q = p.get("query").unwrap_or("").to_string();
    let timeout = st.query_timeout(p)?;
    let mut opts = st.query_options(p)?;
    let mut storage = st.storage(p, h)?;
    let mut out = ResultOptions::from_params(p)?;
    // At least 5 samples per step, as Thanos's auto downsampling.
    st.downsampling(p, step / 5, &mut storage, &mut opts)?;
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel = CancelOnDrop(cancel.clone());
    opts.cancel = Some(cancel);
    st.with_gate(timeout, |permit| async move {
        let (expr, permit) = parse_blocking(&st.engine, q, permit, h).await?;
        let started = Instant::now();
        let prepared = st
            .engine
            .prepare_range_parsed(&storage, expr, start, end, step, &opts)
            .await
            .map_err(|e| ApiError::from_query(e, Vec::new()))?;
        out.preparation = started.elapsed();
        exec_blocking(prepared, permit, out).await
    })
    .await
}

/// `/api/v1/query_exemplars`: the exemplars of every series the query's selectors
/// pick (Prometheus's `queryExemplars`), from the endpoints serving `thanos.Exemplars`.
async fn query_exemplars(st: &AppState, p: &Params, scope: &Scope) -> ApiResult {
    let start = parse_time_param(p, "start", MIN_TIME_MS)?;
    let end = parse_time_param(p, "end", MAX_TIME_MS)?;
    if end < start {
        return Err(ApiError::bad_data(
            "end timestamp must not be before start timestamp",
        ));
    }
    let q = p.get("query").unwrap_or("");
    let e = promql::parse_checked(q, &st.engine.options().limits)
        .map_err(|e| ApiError::bad_data(e.to_string()))?;
    scope
        .check_expr(&e)
        .map_err(|e| ApiError::param("query", e))?;
    // The walk recurses once per level: a stack sized for the tree, as parsing had.
    let sets = promql::limits::with_stack_for(e.depth_bound(), || storeapi::selectors::extract(&e))
        .map_err(|e| ApiError::bad_data(e.to_string()))?;
    if sets.is_empty() {
        // Prometheus answers a query without selectors with no data at all.
        return Ok(("null".into(), Vec::new(), Vec::new()));
    }
    let opts = st.fanout(p, scope)?;
    let timeout = st.query_timeout(p)?;
    st.with_gate(timeout, |permit| async move {
        let _permit = permit;
        let (series, warnings) =
            crate::exemplars::exemplars(&st.endpoints, &sets, start, end, &opts)
                .await
                .map_err(fanout_err)?;
        Ok((exemplars_json(&series), warnings, Vec::new()))
    })
    .await
}

/// Prometheus's exemplar query JSON: `[{"seriesLabels":{..},"exemplars":[{"labels":{..},
/// "value":"1","timestamp":1.5}]}]`.
pub fn exemplars_json(series: &[crate::exemplars::SeriesExemplars]) -> String {
    let mut out = String::from("[");
    for (i, s) in series.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"seriesLabels\":");
        format::write_labels(&mut out, &s.series);
        out.push_str(",\"exemplars\":[");
        for (j, e) in s.exemplars.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str("{\"labels\":");
            format::write_labels(&mut out, &e.labels);
            out.push_str(",\"value\":");
            format::write_json_str(&mut out, &format::format_value(e.value));
            out.push_str(",\"timestamp\":");
            format::format_timestamp(&mut out, e.t);
            out.push('}');
        }
        out.push_str("]}");
    }
    out.push(']');
    out
}

/// `/api/v1/metadata` (`limit`, `limit_per_metric`, `metric`): per metric family the
/// distinct type/help/unit entries the endpoints serving `thanos.Metadata` know. Families
/// are taken in name order when a limit applies (Prometheus: map order).
async fn metadata(st: &AppState, p: &Params, scope: &Scope) -> ApiResult {
    let number = |name: &str| -> Result<i64, ApiError> {
        match p.get(name) {
            Some(v) if !v.is_empty() => v
                .parse::<i64>()
                .map_err(|_| ApiError::bad_data(format!("{name} must be a number"))),
            _ => Ok(-1),
        }
    };
    let limit = number("limit")?;
    let limit_per_metric = number("limit_per_metric")?;
    let metric = p
        .get("metric")
        .filter(|m| !m.is_empty())
        .map(str::to_string);
    let opts = st.fanout(p, scope)?;
    let timeout = st.query_timeout(p)?;
    st.with_gate(timeout, |permit| async move {
        let _permit = permit;
        let (all, warnings) = crate::exemplars::metadata(&st.endpoints, metric.as_deref(), &opts)
            .await
            .map_err(fanout_err)?;
        Ok((
            metadata_json(all, limit, limit_per_metric),
            warnings,
            Vec::new(),
        ))
    })
    .await
}

/// `{"family":[{"type":"counter","help":"...","unit":""}],...}` under Prometheus's limits:
/// at most `limit` families (negative: all), `limit_per_metric` entries each (≤ 0: all).
pub fn metadata_json(
    all: std::collections::BTreeMap<String, std::collections::BTreeSet<crate::exemplars::Meta>>,
    limit: i64,
    limit_per_metric: i64,
) -> String {
    let max_families = usize::try_from(limit).unwrap_or(usize::MAX);
    let per = if limit_per_metric > 0 {
        usize::try_from(limit_per_metric).unwrap_or(usize::MAX)
    } else {
        usize::MAX
    };
    let mut out = String::from("{");
    for (i, (family, metas)) in all.iter().take(max_families).enumerate() {
        if i > 0 {
            out.push(',');
        }
        format::write_json_str(&mut out, family);
        out.push_str(":[");
        for (j, (kind, help, unit)) in metas.iter().take(per).enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str("{\"type\":");
            format::write_json_str(&mut out, kind);
            out.push_str(",\"help\":");
            format::write_json_str(&mut out, help);
            out.push_str(",\"unit\":");
            format::write_json_str(&mut out, unit);
            out.push('}');
        }
        out.push(']');
    }
    out.push('}');
    out
}

fn fanout_err(e: crate::proxy::FanoutError) -> ApiError {
    ApiError {
        error_type: "internal",
        message: e.to_string(),
        warnings: Vec::new(),
    }
}

async fn series(st: &AppState, p: &Params, h: &Scope) -> ApiResult {
    let sets = matcher_sets(st, p, h)?;
    if sets.is_empty() {
        return Err(ApiError::bad_data("no match[] parameter provided"));
    }
    let start = parse_time_param(p, "start", MIN_TIME_MS)?;
    let end = parse_time_param(p, "end", MAX_TIME_MS)?;
    let limit = limit_param(p)?;
    let storage = st.storage(p, h)?;
    let timeout = st.query_timeout(p)?;
    st.with_gate(timeout, |permit| async move {
        let _permit = permit;
        let (mut labels, mut warnings) = storage
            .series(&sets, start, end)
            .await
            .map_err(fanout_err)?;
        apply_limit(&mut labels, limit, &mut warnings);
        let mut data = String::from("[");
        for (i, l) in labels.iter().enumerate() {
            if i > 0 {
                data.push(',');
            }
            format::write_labels(&mut data, l);
        }
        data.push(']');
        Ok((data, warnings, Vec::new()))
    })
    .await
}

async fn labels(st: &AppState, p: &Params, h: &Scope) -> ApiResult {
    let sets = matcher_sets(st, p, h)?;
    let start = parse_time_param(p, "start", MIN_TIME_MS)?;
    let end = parse_time_param(p, "end", MAX_TIME_MS)?;
    let limit = limit_param(p)?;
    let storage = st.storage(p, h)?;
    let timeout = st.query_timeout(p)?;
    st.with_gate(timeout, |permit| async move {
        let _permit = permit;
        let sets = if sets.is_empty() {
            vec![Vec::new()]
        } else {
            sets
        };
        let mut all = std::collections::BTreeSet::new();
        let mut warnings = Vec::new();
        for ms in &sets {
            let (names, w) = storage
                .label_names(ms, start, end)
                .await
                .map_err(fanout_err)?;
            all.extend(names);
            warnings.extend(w);
        }
        let mut names: Vec<String> = all.into_iter().collect();
        apply_limit(&mut names, limit, &mut warnings);
        Ok((format::string_list(&names), warnings, Vec::new()))
    })
    .await
}

async fn label_values(st: &AppState, name: &str, p: &Params, h: &Scope) -> ApiResult {
    // Prometheus accepts UTF-8 names encoded as `U__...`; plain names are the common case.
    if name.is_empty() || !storeapi::labels::is_valid_label_name(name) {
        return Err(ApiError::bad_data(format!(
            "invalid label name: \"{name}\""
        )));
    }
    let sets = matcher_sets(st, p, h)?;
    let start = parse_time_param(p, "start", MIN_TIME_MS)?;
    let end = parse_time_param(p, "end", MAX_TIME_MS)?;
    let limit = limit_param(p)?;
    let storage = st.storage(p, h)?;
    let timeout = st.query_timeout(p)?;
    st.with_gate(timeout, |permit| async move {
        let _permit = permit;
        let sets = if sets.is_empty() {
            vec![Vec::new()]
        } else {
            sets
        };
        let mut all = std::collections::BTreeSet::new();
        let mut warnings = Vec::new();
        for ms in &sets {
            let (values, w) = storage
                .label_values(name, ms, start, end)
                .await
                .map_err(fanout_err)?;
            all.extend(values);
            warnings.extend(w);
        }
        let mut values: Vec<String> = all.into_iter().collect();
        apply_limit(&mut values, limit, &mut warnings);
        Ok((format::string_list(&values), warnings, Vec::new()))
    })
    .await
}

/// `/api/v1/rules`: no ruler evaluates rules yet, so there are no groups; the parameters
/// are still checked as Prometheus checks them (Grafana's rule views call this at start).
fn rules(p: &Params) -> ApiResult {
    match p.get("type").unwrap_or("") {
        "" | "alert" | "record" => {}
        other => {
            return Err(ApiError::param(
                "type",
                format!("not supported value {other:?}"),
            ));
        }
    }
    if let Some(v) = p.get("exclude_alerts").filter(|v| !v.is_empty())
        && params::parse_bool(v).is_none()
    {
        return Err(ApiError::param(
            "exclude_alerts",
            format!(
                "error converting exclude_alerts: strconv.ParseBool: parsing {v:?}: invalid syntax"
            ),
        ));
    }
    if let Some(v) = p.get("group_limit").filter(|v| !v.is_empty()) {
        let n = params::parse_go_int(v).map_err(|e| {
            ApiError::param(
                "group_limit",
                format!(
                    "group_limit needs to be a valid number: {}",
                    e.replacen("strconv.Atoi", "strconv.ParseInt", 1)
                ),
            )
        })?;
        if n <= 0 {
            return Err(ApiError::param(
                "group_limit",
                "group_limit needs to be greater than 0",
            ));
        }
    }
    Ok(("{\"groups\":[]}".into(), Vec::new(), Vec::new()))
}

/// `/api/v1/status/flags`: every flag with its effective value, as strings.
fn flags_json(flags: &[(String, String)]) -> String {
    let mut data = String::from("{");
    for (i, (k, v)) in flags.iter().enumerate() {
        if i > 0 {
            data.push(',');
        }
        format::write_json_str(&mut data, k);
        data.push(':');
        format::write_json_str(&mut data, v);
    }
    data.push('}');
    data
}

/// `/api/v1/stores`: endpoints grouped by component type (Thanos's shape); label sets
/// naming another tenant than `scope`'s are left out when enforcing.
pub fn stores_json(endpoints: &EndpointSet, scope: &Scope) -> String {
    let mut groups: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for e in endpoints.all() {
        let st = e.status();
        let mut o = String::from("{\"name\":");
        format::write_json_str(&mut o, &e.addr);
        o.push_str(",\"lastCheck\":");
        format::write_json_str(&mut o, &format::rfc3339(st.last_check_ms));
        o.push_str(",\"lastError\":");
        match &st.last_error {
            Some(err) => format::write_json_str(&mut o, err),
            None => o.push_str("null"),
        }
        o.push_str(",\"labelSets\":[");
        let shown = st.label_sets.iter().filter(|ls| scope.shows_label_set(ls));
        for (i, ls) in shown.enumerate() {
            if i > 0 {
                o.push(',');
            }
            format::write_labels(&mut o, ls);
        }
        o.push_str("],\"minTime\":");
        o.push_str(&st.min_time.to_string());
        o.push_str(",\"maxTime\":");
        o.push_str(&st.max_time.to_string());
        o.push('}');
        let kind = if st.component_type.is_empty() {
            "unknown".to_string()
        } else {
            st.component_type.clone()
        };
        groups.entry(kind).or_default().push(o);
    }
    let mut data = String::from("{");
    for (i, (k, v)) in groups.iter().enumerate() {
        if i > 0 {
            data.push(',');
        }
        format::write_json_str(&mut data, k);
        data.push_str(":[");
        data.push_str(&v.join(","));
        data.push(']');
    }
    data.push('}');
    data
}

const BUILDINFO: &str = concat!(
    "{\"version\":\"",
    env!("CARGO_PKG_VERSION"),
    "\",\"revision\":\"\",\"branch\":\"\",\"buildUser\":\"\",\"buildDate\":\"\",\"goVersion\":\"\"}"
);

/// Runs an API handler: resolves the caller's tenant scope, collects parameters (query
/// string + form body), times it, counts it.
#[allow(clippy::too_many_arguments)] // the request's parts, as the route closures extract them
async fn api(
    st: Arc<AppState>,
    handler: &'static str,
    method: Method,
    headers: HeaderMap,
    raw: Option<String>,
    body: Bytes,
    label: Option<String>,
    ext: axum::http::Extensions,
) -> Response {
    let started = Instant::now();
    let scope = st.tenancy.scope(
        handler,
        &headers,
        ext.get::<netsec::Principal>(),
        ext.get::<axum::extract::ConnectInfo<netsec::ConnInfo>>()
            .and_then(|c| c.0.peer_certificates.as_deref()),
    );
    let scope = match scope {
        Ok(s) => s,
        Err(e) => {
            if let crate::tenancy::TenancyError::Tenant(t) = &e {
                netsec::identity::count(&st.metrics.auth_failures, t.reason());
            }
            let status = e.status();
            let kind = if status == StatusCode::BAD_REQUEST {
                "bad_data"
            } else {
                "forbidden"
            };
            let resp = json_response(status, format::error(kind, &e.to_string(), &[]));
            st.metrics
                .observe(handler, status.as_u16(), started.elapsed().as_secs_f64());
            return resp;
        }
    };
    let h = &scope;
    let mut p = Params::from_query(raw.as_deref().unwrap_or(""));
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if method == Method::POST && is_form {
        p.prepend_form(&body);
    }
    let res = match handler {
        "query" => query(&st, &p, h).await,
        "query_range" => query_range(&st, &p, h).await,
        "series" => series(&st, &p, h).await,
        "labels" => labels(&st, &p, h).await,
        "label_values" => label_values(&st, label.as_deref().unwrap_or(""), &p, h).await,
        "metadata" => metadata(&st, &p, h).await,
        "query_exemplars" => query_exemplars(&st, &p, h).await,
        "buildinfo" => Ok((BUILDINFO.into(), Vec::new(), Vec::new())),
        "rules" => rules(&p),
        "alerts" => Ok(("{\"alerts\":[]}".into(), Vec::new(), Vec::new())),
        "flags" => Ok((flags_json(&st.flags), Vec::new(), Vec::new())),
        "stores" => Ok((stores_json(&st.endpoints, h), Vec::new(), Vec::new())),
        _ => Err(ApiError {
            error_type: "not_found",
            message: "not found".into(),
            warnings: Vec::new(),
        }),
    };
    let resp = finish(res);
    st.metrics.observe(
        handler,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

macro_rules! api_route {
    ($name:literal) => {
        |State(st): State<Arc<AppState>>,
         ext: axum::http::Extensions,
         method: Method,
         headers: HeaderMap,
         RawQuery(raw): RawQuery,
         body: Bytes| async move { api(st, $name, method, headers, raw, body, None, ext).await }
    };
}

async fn label_values_route(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    ext: axum::http::Extensions,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    api(
        st,
        "label_values",
        method,
        headers,
        raw,
        body,
        Some(name),
        ext,
    )
    .await
}

async fn metrics_route(State(st): State<Arc<AppState>>) -> Response {
    let mut healthy = 0;
    let mut unhealthy = 0;
    for e in st.endpoints.all() {
        if e.status().healthy {
            healthy += 1;
        } else {
            unhealthy += 1;
        }
    }
    use crate::metrics::StateLabel;
    st.metrics
        .endpoints
        .get_or_create(&StateLabel {
            state: "healthy".into(),
        })
        .set(healthy);
    st.metrics
        .endpoints
        .get_or_create(&StateLabel {
            state: "unhealthy".into(),
        })
        .set(unhealthy);
    let mut r = st.metrics.encode().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

async fn ready_route(State(st): State<Arc<AppState>>) -> Response {
    if st.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "OK\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// The largest request body the API reads: a form-encoded query may take three bytes per
/// character (`%XX`), so a query just over `--query.max-length` still arrives whole and is
/// refused with the 400 that names that limit, not a bare 413 from the body limit.
fn max_body_bytes(max_query_length: usize) -> usize {
    max_query_length
        .saturating_mul(3)
        .saturating_add(1 << 20)
        .max(2 << 20)
}

/// The whole HTTP surface.
pub fn router(st: Arc<AppState>) -> Router {
    let body_limit = max_body_bytes(st.engine.options().limits.max_length);
    let api_routes = Router::new()
        .route("/query", get(api_route!("query")).post(api_route!("query")))
        .route(
            "/query_range",
            get(api_route!("query_range")).post(api_route!("query_range")),
        )
        .route(
            "/series",
            get(api_route!("series")).post(api_route!("series")),
        )
        .route(
            "/labels",
            get(api_route!("labels")).post(api_route!("labels")),
        )
        .route("/label/{name}/values", get(label_values_route))
        .route("/metadata", get(api_route!("metadata")))
        .route(
            "/query_exemplars",
            get(api_route!("query_exemplars")).post(api_route!("query_exemplars")),
        )
        .route("/status/buildinfo", get(api_route!("buildinfo")))
        .route("/status/flags", get(api_route!("flags")))
        .route("/rules", get(api_route!("rules")))
        .route("/alerts", get(api_route!("alerts")))
        .route("/stores", get(api_route!("stores")))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit));
    Router::new()
        .nest("/api/v1", api_routes)
        .route("/metrics", get(metrics_route))
        .route("/-/healthy", get(|| async { "OK\n" }))
        .route("/-/ready", get(ready_route))
        .route("/", get(|| async { Redirect::to("/graph") }))
        .merge(crate::ui::routes())
        .with_state(st)
}

#[cfg(test)]
mod error_status_tests {
    use super::*;

    /// Prometheus 3.x's `returnAPIError` mapping, for every error the engine and the
    /// querier produce: Grafana shows a timeout (503) and a canceled query (499)
    /// differently from a bad query (400) or a failed evaluation (422).
    #[test]
    fn engine_errors_map_to_prometheus_status_codes() {
        let cases = [
            (QueryError::BadData("x".into()), 400, "bad_data"),
            (QueryError::Execution("x".into()), 422, "execution"),
            (QueryError::Timeout("x".into()), 503, "timeout"),
            (QueryError::Canceled("x".into()), 499, "canceled"),
        ];
        for (e, code, ty) in cases {
            let a = ApiError::from_query(e, Vec::new());
            assert_eq!(
                (a.status().as_u16(), a.error_type),
                (code, ty),
                "{}",
                a.message
            );
        }
        let q = timeout_error("query queue");
        assert_eq!(q.status().as_u16(), 503);
        assert_eq!(q.message, "query timed out in query queue");
        assert_eq!(ApiError::param("time", "x").status().as_u16(), 400);
    }
}

#[cfg(test)]
mod exemplar_json_tests {
    use super::*;
    use crate::exemplars::{Exemplar, SeriesExemplars};
    use std::collections::{BTreeMap, BTreeSet};
    use storeapi::Labels;

    #[test]
    fn exemplar_and_metadata_json_as_prometheus() {
        let s = vec![SeriesExemplars {
            series: Labels::from_pairs([("__name__", "x"), ("job", "a")]).unwrap(),
            exemplars: vec![Exemplar {
                labels: Labels::from_pairs([("trace_id", "ab\"c")]).unwrap(),
                value: 6.0,
                t: 1_600_096_945_479,
            }],
        }];
        assert_eq!(
            exemplars_json(&s),
            r#"[{"seriesLabels":{"__name__":"x","job":"a"},"exemplars":[{"labels":{"trace_id":"ab\"c"},"value":"6","timestamp":1600096945.479}]}]"#
        );
        assert_eq!(exemplars_json(&[]), "[]");
        let mut all: BTreeMap<String, BTreeSet<crate::exemplars::Meta>> = BTreeMap::new();
        for (f, h) in [("a", "1"), ("a", "2"), ("b", "3")] {
            all.entry(f.into())
                .or_default()
                .insert(("counter".into(), h.into(), String::new()));
        }
        assert_eq!(
            metadata_json(all.clone(), -1, 1),
            r#"{"a":[{"type":"counter","help":"1","unit":""}],"b":[{"type":"counter","help":"3","unit":""}]}"#
        );
        assert_eq!(
            metadata_json(all, 1, -1),
            r#"{"a":[{"type":"counter","help":"1","unit":""},{"type":"counter","help":"2","unit":""}]}"#
        );
    }
}
