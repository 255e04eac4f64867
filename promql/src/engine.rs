//! The query engine: parse, plan selections (phase 1, async), evaluate step by step (phase 2, sync).

use crate::eval::{
    Ctx, Evaluator, Val, at_ms, ms_of, offset_ms, selector_key, selector_matchers,
    storeapi_series::Raw, subquery_ctx, too_many_samples, type_name,
};
use crate::limits::{ParsedExpr, QueryLimits, grow, parse_checked};
use crate::storage::{SelectHints, Storage};
use crate::value::{HistSeries, QueryResult, Value};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{Expr, VectorSelector};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use storeapi::{Labels, Sample};

/// Engine limits and defaults (Prometheus's defaults).
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How far back an instant selector looks for a sample (default 5m).
    pub lookback_delta_ms: i64,
    /// Maximum samples loaded in memory at once by one query (default 50M).
    pub max_samples: usize,
    /// Query timeout (default 2m).
    pub timeout: Duration,
    /// Maximum length and nesting depth of a query's text.
    pub limits: QueryLimits,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            lookback_delta_ms: 300_000,
            max_samples: 50_000_000,
            timeout: Duration::from_secs(120),
            limits: QueryLimits::default(),
        }
    }
}

/// Errors a query can end with; `Display` is Prometheus's message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    BadData(String),
    #[error("{0}")]
    Execution(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Canceled(String),
}

impl QueryError {
    /// The HTTP API's `errorType`.
    pub fn error_type(&self) -> &'static str {
        match self {
            QueryError::BadData(_) => "bad_data",
            QueryError::Execution(_) => "execution",
            QueryError::Timeout(_) => "timeout",
            QueryError::Canceled(_) => "canceled",
        }
    }
}

/// Per-query options that override the engine's defaults.
#[derive(Debug, Clone, Default)]
pub struct QueryOptions {
    /// Overrides [`EngineOptions::lookback_delta_ms`] when set and > 0.
    pub lookback_delta_ms: Option<i64>,
    /// Cancellation flag checked between steps.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// A PromQL engine with Prometheus 3.5 semantics.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    opts: EngineOptions,
}

impl Engine {
    pub fn new(opts: EngineOptions) -> Engine {
        Engine { opts }
    }

    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Evaluates `query` at one instant.
    pub async fn instant_query<S: Storage>(
        &self,
        storage: &S,
        query: &str,
        time_ms: i64,
    ) -> Result<QueryResult, QueryError> {
        self.instant_query_with(storage, query, time_ms, &QueryOptions::default())
            .await
    }

    /// Evaluates `query` over `[start_ms, end_ms]` every `step_ms`; the result is a matrix.
    pub async fn range_query<S: Storage>(
        &self,
        storage: &S,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<QueryResult, QueryError> {
        self.range_query_with(
            storage,
            query,
            start_ms,
            end_ms,
            step_ms,
            &QueryOptions::default(),
        )
        .await
    }

    /// [`Engine::instant_query`] with per-query options.
    pub async fn instant_query_with<S: Storage>(
        &self,
        storage: &S,
        query: &str,
        time_ms: i64,
        qopts: &QueryOptions,
    ) -> Result<QueryResult, QueryError> {
        self.prepare_instant_query(storage, query, time_ms, qopts)
            .await?
            .exec()
    }

    /// Parses an instant query and selects its series (phase 1). Run the returned
    /// [`PreparedQuery::exec`] (plain CPU work) where blocking is fine, e.g. in
    /// `tokio::task::spawn_blocking`.
    pub async fn prepare_instant_query<S: Storage>(
        &self,
        storage: &S,
        query: &str,
        time_ms: i64,
        qopts: &QueryOptions,
    ) -> Result<PreparedQuery, QueryError> {
        let expr = self.parse(query)?;
        self.prepare_instant_parsed(storage, expr, time_ms, qopts)
            .await
    }

    /// Parses `query` within the engine's text limits. Parsing is CPU work that grows
    /// with the text (faster than linearly for some shapes): a server parses client
    /// queries where blocking is fine and then calls the `prepare_*_parsed` methods.
    pub fn parse(&self, query: &str) -> Result<ParsedExpr, QueryError> {
        parse_checked(query, &self.opts.limits)
    }

    /// [`Engine::prepare_instant_query`] for an expression from [`Engine::parse`].
    pub async fn prepare_instant_parsed<S: Storage>(
        &self,
        storage: &S,
        expr: ParsedExpr,
        time_ms: i64,
        qopts: &QueryOptions,
    ) -> Result<PreparedQuery, QueryError> {
        let ctx = Ctx {
            start: time_ms,
            end: time_ms,
            step: 1,
        };
        let ev = self.prepare(storage, &expr, ctx, qopts).await?;
        Ok(PreparedQuery {
            expr,
            ev,
            ctx,
            range: false,
        })
    }

    /// [`Engine::range_query`] with per-query options.
    pub async fn range_query_with<S: Storage>(
        &self,
        storage: &S,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        qopts: &QueryOptions,
    ) -> Result<QueryResult, QueryError> {
        self.prepare_range_query(storage, query, start_ms, end_ms, step_ms, qopts)
            .await?
            .exec()
    }

    /// Parses a range query and selects its series (phase 1); see
    /// [`Engine::prepare_instant_query`].
    pub async fn prepare_range_query<S: Storage>(
        &self,
        storage: &S,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        qopts: &QueryOptions,
    ) -> Result<PreparedQuery, QueryError> {
        let expr = self.parse(query)?;
        self.prepare_range_parsed(storage, expr, start_ms, end_ms, step_ms, qopts)
            .await
    }

    /// [`Engine::prepare_range_query`] for an expression from [`Engine::parse`].
    pub async fn prepare_range_parsed<S: Storage>(
        &self,
        storage: &S,
        expr: ParsedExpr,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        qopts: &QueryOptions,
    ) -> Result<PreparedQuery, QueryError> {
        if step_ms <= 0 {
            return Err(QueryError::BadData(
                "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
            ));
        }
        if end_ms < start_ms {
            return Err(QueryError::BadData(
                "end timestamp must not be before start time".into(),
            ));
        }
        match crate::eval::value_type(&expr) {
            ValueType::Scalar | ValueType::Vector => {}
            _ => {
                return Err(QueryError::BadData(format!(
                    "invalid expression type {:?} for range query, must be Scalar or instant Vector",
                    type_name(&expr)
                )));
            }
        }
        let ctx = Ctx {
            start: start_ms,
            end: end_ms,
            step: step_ms,
        };
        let ev = self.prepare(storage, &expr, ctx, qopts).await?;
        Ok(PreparedQuery {
            expr,
            ev,
            ctx,
            range: true,
        })
    }

    /// Phase 1: find every selector's time range and select its series.
    async fn prepare<S: Storage>(
        &self,
        storage: &S,
        expr: &Expr,
        ctx: Ctx,
        qopts: &QueryOptions,
    ) -> Result<Evaluator, QueryError> {
        let lookback = qopts
            .lookback_delta_ms
            .filter(|l| *l > 0)
            .unwrap_or(self.opts.lookback_delta_ms);
        let deadline = Instant::now() + self.opts.timeout;
        let mut plans = Vec::new();
        plan(expr, ctx, ctx.start, ctx.end, lookback, None, &mut plans);
        let mut ev = Evaluator {
            qstart: ctx.start,
            qend: ctx.end,
            lookback,
            max_samples: self.opts.max_samples,
            cur_samples: 0,
            peak_samples: 0,
            total_samples: 0,
            deadline,
            cancel: qopts.cancel.clone(),
            data: HashMap::new(),
            spent: Vec::new(),
            counted: Default::default(),
            warnings: Vec::new(),
            infos: Vec::new(),
        };
        // Every selection (one per selector and `or` alternative) runs concurrently.
        let mut requests: Vec<(usize, Vec<storeapi::Matcher>)> = Vec::new();
        for (pi, p) in plans.iter().enumerate() {
            for matchers in selector_matchers(p.vs)? {
                requests.push((pi, matchers));
            }
        }
        let futures: Vec<_> = requests
            .into_iter()
            .map(|(pi, matchers)| {
                let p = &plans[pi];
                let hints = SelectHints {
                    start: p.min + 1,
                    end: p.max,
                    step: if ctx.start == ctx.end { 0 } else { ctx.step },
                    func: p.func.clone(),
                    range: p.range,
                    by: false,
                    grouping: Vec::new(),
                };
                (pi, storage.select(hints, matchers))
            })
            .collect();
        let (owners, futs): (Vec<usize>, Vec<_>) = futures.into_iter().unzip();
        let results = JoinAll::new(futs).await;
        ev.check_done()?;
        let mut per_plan: Vec<Vec<Raw>> = (0..plans.len()).map(|_| Vec::new()).collect();
        // Per plan: how many selections fed it, and whether all of them came sorted.
        let mut fed: Vec<(usize, bool)> = vec![(0, true); plans.len()];
        let mut loaded = 0usize;
        for (pi, res) in owners.into_iter().zip(results) {
            let res = res.map_err(|e| QueryError::Execution(format!("expanding series: {e}")))?;
            let p = &plans[pi];
            fed[pi].0 += 1;
            fed[pi].1 &= res.sorted;
            if res.counts {
                ev.counted.insert(selector_key(p.vs));
            }
            for w in res.warnings {
                ev.warn(w);
            }
            for s in res.series {
                let mut samples = s.samples;
                samples.retain(|x| x.t > p.min && x.t <= p.max);
                loaded += samples.len();
                if loaded > self.opts.max_samples {
                    return Err(too_many_samples());
                }
                let hsamples: Vec<crate::value::HPoint> = s
                    .histograms
                    .into_iter()
                    .filter(|x| x.t > p.min && x.t <= p.max)
                    .map(|x| crate::value::HPoint {
                        t: x.t,
                        h: std::sync::Arc::new(x.h.to_float()),
                    })
                    .collect();
                loaded += hsamples.len();
                if loaded > self.opts.max_samples {
                    return Err(too_many_samples());
                }
                per_plan[pi].push(Raw {
                    labels: s.labels,
                    samples,
                    hsamples,
                });
            }
        }
        for ((p, mut all), (n, sorted)) in plans.iter().zip(per_plan).zip(fed) {
            // Stores answer sorted and unique: then one pass of comparisons suffices, or
            // none when the storage vouches for the order of the plan's only selection.
            let trusted = n == 1 && sorted;
            if !trusted && !all.windows(2).all(|w| w[0].labels < w[1].labels) {
                all.sort_by(|a, b| a.labels.cmp(&b.labels));
                all.dedup_by(|a, b| a.labels == b.labels);
            }
            ev.data.insert(selector_key(p.vs), std::sync::Arc::new(all));
        }
        Ok(ev)
    }
}

/// Polls several futures of one type concurrently and yields their outputs in order.
struct JoinAll<F: std::future::Future> {
    futs: Vec<Option<std::pin::Pin<Box<F>>>>,
    out: Vec<Option<F::Output>>,
}

// The futures are pinned in their own boxes and the outputs are never pinned.
impl<F: std::future::Future> Unpin for JoinAll<F> {}

impl<F: std::future::Future> JoinAll<F> {
    fn new(futs: Vec<F>) -> Self {
        let n = futs.len();
        JoinAll {
            futs: futs.into_iter().map(|f| Some(Box::pin(f))).collect(),
            out: (0..n).map(|_| None).collect(),
        }
    }
}

impl<F: std::future::Future> std::future::Future for JoinAll<F> {
    type Output = Vec<F::Output>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.get_mut();
        let mut pending = false;
        for (slot, out) in this.futs.iter_mut().zip(this.out.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(this.out.iter_mut().filter_map(Option::take).collect())
        }
    }
}

/// A query whose series are selected; [`PreparedQuery::exec`] evaluates it.
pub struct PreparedQuery {
    // Boxed inside so selector addresses (the keys of the selected data) stay put; freed
    // on a stack sized for its depth.
    expr: ParsedExpr,
    ev: Evaluator,
    ctx: Ctx,
    range: bool,
}

impl std::fmt::Debug for PreparedQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedQuery")
            .field("expr", &self.expr)
            .field("range", &self.range)
            .finish()
    }
}

impl PreparedQuery {
    /// Phase 2: evaluates the query step by step (synchronous, CPU bound).
    pub fn exec(self) -> Result<QueryResult, QueryError> {
        if self.range {
            self.exec_range()
        } else {
            self.exec_instant()
        }
    }

    fn exec_instant(self) -> Result<QueryResult, QueryError> {
        let PreparedQuery {
            expr, mut ev, ctx, ..
        } = self;
        let time_ms = ctx.start;
        let eval_started = Instant::now();
        let val = ev.eval(&expr, ctx)?;
        let inner_eval_seconds = eval_started.elapsed().as_secs_f64();
        let sort_started = Instant::now();
        drop_later((std::mem::take(&mut ev.data), std::mem::take(&mut ev.spent)));
        let value = match val {
            Val::Scalar(v) => Value::Scalar(Sample {
                t: time_ms,
                v: v.first().copied().unwrap_or(f64::NAN),
            }),
            Val::Str(s) => Value::String { t: time_ms, v: s },
            Val::Vector(ss) if ss.iter().any(|s| !s.hpts.is_empty()) => {
                let mut out: Vec<HistSeries> = ss
                    .into_iter()
                    .filter(|s| !s.pts.is_empty() || !s.hpts.is_empty())
                    .map(|s| HistSeries {
                        labels: s.labels,
                        floats: s.pts,
                        histograms: s.hpts,
                    })
                    .collect();
                if !keeps_order(&expr) {
                    out.sort_by(|a, b| a.labels.cmp(&b.labels));
                }
                Value::HistVector(out)
            }
            Val::Matrix(ss) if ss.iter().any(|s| !s.hpts.is_empty()) => {
                Value::HistMatrix(hist_series(ss))
            }
            Val::Vector(ss) => {
                let mut out: Vec<(Labels, Sample)> = ss
                    .into_iter()
                    .filter_map(|s| s.pts.first().copied().map(|p| (s.labels, p)))
                    .collect();
                if !keeps_order(&expr) {
                    out.sort_by(|a, b| a.0.cmp(&b.0));
                }
                Value::Vector(out)
            }
            Val::Matrix(ss) => {
                let mut out: Vec<(Labels, Vec<Sample>)> =
                    ss.into_iter().map(|s| (s.labels, s.pts)).collect();
                out.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Matrix(out)
            }
        };
        let stats = ev.stats(inner_eval_seconds, sort_started.elapsed().as_secs_f64());
        Ok(QueryResult {
            value,
            warnings: ev.warnings,
            infos: ev.infos,
            stats,
        })
    }

    fn exec_range(self) -> Result<QueryResult, QueryError> {
        let PreparedQuery {
            expr, mut ev, ctx, ..
        } = self;
        let eval_started = Instant::now();
        let val = ev.eval(&expr, ctx)?;
        let inner_eval_seconds = eval_started.elapsed().as_secs_f64();
        let sort_started = Instant::now();
        drop_later((std::mem::take(&mut ev.data), std::mem::take(&mut ev.spent)));
        if let Val::Vector(ss) | Val::Matrix(ss) = &val
            && ss.iter().any(|s| !s.hpts.is_empty())
        {
            let (Val::Vector(ss) | Val::Matrix(ss)) = val else {
                unreachable!("matched above")
            };
            let value = Value::HistMatrix(hist_series(ss));
            let stats = ev.stats(inner_eval_seconds, sort_started.elapsed().as_secs_f64());
            return Ok(QueryResult {
                value,
                warnings: ev.warnings,
                infos: ev.infos,
                stats,
            });
        }
        let mut out: Vec<(Labels, Vec<Sample>)> = match val {
            Val::Scalar(v) => vec![(
                Labels::empty(),
                v.iter()
                    .enumerate()
                    .map(|(i, v)| Sample { t: ctx.ts(i), v: *v })
                    .collect(),
            )],
            Val::Vector(ss) | Val::Matrix(ss) => ss
                .into_iter()
                .filter(|s| !s.pts.is_empty())
                .map(|s| (s.labels, s.pts))
                .collect(),
            Val::Str(_) => {
                return Err(QueryError::BadData(
                    "invalid expression type \"string\" for range query, must be Scalar or instant Vector".into(),
                ))
            }
        };
        out.sort_by(|a, b| a.0.cmp(&b.0));
        let stats = ev.stats(inner_eval_seconds, sort_started.elapsed().as_secs_f64());
        Ok(QueryResult {
            value: Value::Matrix(out),
            warnings: ev.warnings,
            infos: ev.infos,
            stats,
        })
    }
}

/// Result series holding histograms, sorted by labels, empty ones dropped.
fn hist_series(ss: Vec<crate::eval::Series>) -> Vec<HistSeries> {
    let mut out: Vec<HistSeries> = ss
        .into_iter()
        .filter(|s| !s.pts.is_empty() || !s.hpts.is_empty())
        .map(|s| HistSeries {
            labels: s.labels,
            floats: s.pts,
            histograms: s.hpts,
        })
        .collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    out
}

/// Frees `v` on a background thread: the selected series of a big query take a while to
/// free, and the answer need not wait for that.
fn drop_later<T: Send + 'static>(v: T) {
    type Garbage = Box<dyn Send>;
    static TX: std::sync::OnceLock<Option<std::sync::mpsc::Sender<Garbage>>> =
        std::sync::OnceLock::new();
    let tx = TX.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Garbage>();
        std::thread::Builder::new()
            .name("promql-free".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .ok()
            .map(|_| tx)
    });
    match tx {
        // A failed send hands the value back inside the error, which frees it here.
        Some(tx) => drop(tx.send(Box::new(v))),
        None => drop(v),
    }
}

/// Whether the result order of an instant query is set by the query itself.
fn keeps_order(e: &Expr) -> bool {
    match crate::eval::unwrap_parens(e) {
        Expr::Call(c) => matches!(
            c.func.name,
            "sort" | "sort_desc" | "sort_by_label" | "sort_by_label_desc"
        ),
        Expr::Aggregate(a) => matches!(
            a.op.id(),
            promql_parser::parser::token::T_TOPK | promql_parser::parser::token::T_BOTTOMK
        ),
        _ => false,
    }
}

struct Plan<'a> {
    vs: &'a VectorSelector,
    min: i64,
    max: i64,
    range: i64,
    func: Option<String>,
}

/// Walks the AST computing the time range each selector reads (exclusive min, inclusive max).
fn plan<'a>(
    e: &'a Expr,
    ctx: Ctx,
    qstart: i64,
    qend: i64,
    lookback: i64,
    func: Option<&str>,
    out: &mut Vec<Plan<'a>>,
) {
    grow(|| plan_node(e, ctx, qstart, qend, lookback, func, out))
}

fn plan_node<'a>(
    e: &'a Expr,
    ctx: Ctx,
    qstart: i64,
    qend: i64,
    lookback: i64,
    func: Option<&str>,
    out: &mut Vec<Plan<'a>>,
) {
    match e {
        Expr::VectorSelector(vs) => {
            let off = offset_ms(&vs.offset);
            let (lo, hi) = match at_ms(&vs.at, qstart, qend) {
                Some(at) => (at - off, at - off),
                None => (ctx.start - off, ctx.end - off),
            };
            out.push(Plan {
                vs,
                min: lo - lookback,
                max: hi,
                range: 0,
                func: func.map(str::to_string),
            });
        }
        Expr::MatrixSelector(ms) => {
            let vs = &ms.vs;
            let off = offset_ms(&vs.offset);
            let range = ms_of(&ms.range);
            let (lo, hi) = match at_ms(&vs.at, qstart, qend) {
                Some(at) => (at - off, at - off),
                None => (ctx.start - off, ctx.end - off),
            };
            out.push(Plan {
                vs,
                min: lo - range,
                max: hi,
                range,
                func: func.map(str::to_string),
            });
        }
        Expr::Subquery(sq) => {
            let inner = subquery_ctx(sq, ctx, qstart, qend);
            plan(&sq.expr, inner, qstart, qend, lookback, None, out);
        }
        Expr::Paren(p) => plan(&p.expr, ctx, qstart, qend, lookback, func, out),
        Expr::Unary(u) => plan(&u.expr, ctx, qstart, qend, lookback, None, out),
        Expr::Binary(b) => {
            plan(&b.lhs, ctx, qstart, qend, lookback, None, out);
            plan(&b.rhs, ctx, qstart, qend, lookback, None, out);
        }
        Expr::Aggregate(a) => {
            if let Some(p) = &a.param {
                plan(p, ctx, qstart, qend, lookback, None, out);
            }
            plan(&a.expr, ctx, qstart, qend, lookback, None, out);
        }
        Expr::Call(c) => {
            for a in &c.args.args {
                plan(a, ctx, qstart, qend, lookback, Some(c.func.name), out);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;
    use storeapi::STALE_NAN_BITS;

    fn lbl(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().map(|(a, b)| (a.to_string(), b.to_string()))).unwrap()
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn instant(st: &MemStorage, q: &str, t: i64) -> Result<Vec<(Labels, f64)>, QueryError> {
        let e = Engine::new(EngineOptions::default());
        match run(e.instant_query(st, q, t))?.value {
            Value::Vector(v) => Ok(v.into_iter().map(|(l, s)| (l, s.v)).collect()),
            Value::Scalar(s) => Ok(vec![(Labels::empty(), s.v)]),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// `stats` counts as Prometheus counts (the expected figures are Prometheus 3.5.3's
    /// for the same data; e2e `querier_grafana` compares them live).
    #[test]
    fn stats_count_samples_read_per_step_and_the_peak() {
        let st = counter();
        let e = Engine::new(EngineOptions::default());
        let total = |r: QueryResult| (r.stats.total_queryable_samples, r.stats.peak_samples);
        // One series, one sample at the evaluation time.
        let r = run(e.instant_query(&st, "c_total", 600_000)).unwrap();
        assert_eq!(total(r), (1, 1));
        // A 3m window at t=10m holds the samples at 8m, 9m, 10m (7m is excluded).
        let r = run(e.instant_query(&st, "rate(c_total[3m])", 600_000)).unwrap();
        assert_eq!(r.stats.total_queryable_samples, 3);
        assert!(r.stats.peak_samples >= 3, "{:?}", r.stats);
        // A range vector returned as such: its samples.
        let r = run(e.instant_query(&st, "c_total[3m]", 600_000)).unwrap();
        assert_eq!(r.stats.total_queryable_samples, 3);
        // A range query: one sample per step per series (11 steps), and every window.
        let r = run(e.range_query(&st, "c_total", 0, 600_000, 60_000)).unwrap();
        assert_eq!(total(r), (11, 11));
        let r = run(e.range_query(&st, "rate(c_total[2m])", 0, 600_000, 60_000)).unwrap();
        // Windows (t-2m, t]: 1 sample at t=0, 2 at every later step.
        assert_eq!(r.stats.total_queryable_samples, 1 + 2 * 10);
        // Nothing selected, nothing counted.
        let r = run(e.instant_query(&st, "nope", 600_000)).unwrap();
        assert_eq!(total(r), (0, 0));
    }

    fn counter() -> MemStorage {
        let mut st = MemStorage::new();
        st.add(
            lbl(&[("__name__", "c_total"), ("job", "a")]),
            (0..=10).map(|i| Sample {
                t: i * 60_000,
                v: (i * 10) as f64,
            }),
        );
        st
    }

    #[test]
    fn rate_extrapolates_over_left_open_window() {
        let st = counter();
        // Window (0s, 300s]: samples at 60..300 (the one at 0 is outside), increase 40
        // over 240s, extrapolated to the full 300s: 50 per 300s.
        let v = instant(&st, "rate(c_total[5m])", 300_000).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].0, lbl(&[("job", "a")]));
        assert!((v[0].1 - 50.0 / 300.0).abs() < 1e-12, "{}", v[0].1);
        let v = instant(&st, "increase(c_total[5m])", 300_000).unwrap();
        assert!((v[0].1 - 50.0).abs() < 1e-9);
        // Extrapolation toward the start stops at the counter's zero point.
        let v = instant(&st, "increase(c_total[10m])", 600_000).unwrap();
        assert!((v[0].1 - 100.0).abs() < 1e-9, "{}", v[0].1);
    }

    #[test]
    fn counter_reset_is_corrected() {
        let mut st = MemStorage::new();
        let vals = [0.0, 10.0, 20.0, 5.0, 15.0];
        st.add(
            lbl(&[("__name__", "r_total")]),
            vals.iter().enumerate().map(|(i, v)| Sample {
                t: i as i64 * 60_000,
                v: *v,
            }),
        );
        let v = instant(&st, "resets(r_total[5m])", 240_000).unwrap();
        assert_eq!(v[0].1, 1.0);
        // Raw increase over (−60s, 240s]: 20 + 15 = 35 over 240s, not extrapolated to the
        // start past the zero point.
        let v = instant(&st, "increase(r_total[5m])", 240_000).unwrap();
        assert!((v[0].1 - 35.0).abs() < 1e-9, "{}", v[0].1);
    }

    #[test]
    fn lookback_is_left_open_and_stale_markers_end_series() {
        let mut st = MemStorage::new();
        st.add(lbl(&[("__name__", "g")]), [Sample { t: 0, v: 1.0 }]);
        assert_eq!(instant(&st, "g", 299_999).unwrap().len(), 1);
        assert_eq!(instant(&st, "g", 300_000).unwrap().len(), 0);
        st.add(
            lbl(&[("__name__", "g")]),
            [Sample {
                t: 60_000,
                v: f64::from_bits(STALE_NAN_BITS),
            }],
        );
        assert_eq!(instant(&st, "g", 30_000).unwrap().len(), 1);
        assert_eq!(instant(&st, "g", 90_000).unwrap().len(), 0);
        // Stale markers are not samples of a range.
        let v = instant(&st, "count_over_time(g[5m])", 90_000).unwrap();
        assert_eq!(v[0].1, 1.0);
    }

    #[test]
    fn matching_errors_use_prometheus_messages() {
        let mut st = MemStorage::new();
        for (n, i) in [("a", "1"), ("a", "2"), ("b", "1")] {
            st.add(
                lbl(&[("__name__", n), ("instance", i), ("job", "j")]),
                [Sample { t: 0, v: 1.0 }],
            );
        }
        let err = instant(&st, "b + on(job) a", 0).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "found duplicate series for the match group {job=\"j\"} on the right hand-side of the operation"
            ),
            "{err}"
        );
        assert_eq!(err.error_type(), "execution");
        let err = instant(&st, "a + on(job) group_right b", 0).unwrap_err();
        assert!(err.to_string().contains("on the left hand-side"), "{err}");
        let err = instant(&st, "a + ignoring(instance) b", 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
        );
        let v = instant(&st, "a * on(job) group_left b", 0).unwrap();
        assert_eq!(v.len(), 2);
        let err = instant(&st, "{job=\"j\"} + 1", 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "vector cannot contain metrics with the same labelset"
        );
    }

    #[test]
    fn comparison_keeps_name_and_bool_drops_it() {
        let st = counter();
        let v = instant(&st, "c_total > 5", 60_000).unwrap();
        assert_eq!(v[0].0.metric_name(), Some("c_total"));
        let v = instant(&st, "c_total > bool 50", 60_000).unwrap();
        assert_eq!(v[0].0, lbl(&[("job", "a")]));
        assert_eq!(v[0].1, 0.0);
        let v = instant(&st, "c_total * 2", 60_000).unwrap();
        assert_eq!(v[0].0, lbl(&[("job", "a")]));
        assert_eq!(v[0].1, 20.0);
    }

    #[test]
    fn range_query_and_subquery_alignment() {
        let st = counter();
        let e = Engine::new(EngineOptions::default());
        let r = run(e.range_query(&st, "c_total", 0, 120_000, 30_000)).unwrap();
        match r.value {
            Value::Matrix(m) => {
                assert_eq!(m.len(), 1);
                let vs: Vec<f64> = m[0].1.iter().map(|s| s.v).collect();
                assert_eq!(vs, vec![0.0, 0.0, 10.0, 10.0, 20.0]);
            }
            other => panic!("{other:?}"),
        }
        // Subquery steps are aligned to multiples of the step: (90s, 300s] at 60s step is
        // 120, 180, 240, 300.
        let v = instant(&st, "count_over_time(c_total[210s:60s])", 300_000).unwrap();
        assert_eq!(v[0].1, 4.0);
        let r = run(e.range_query(&st, "c_total[5m]", 0, 60_000, 30_000)).unwrap_err();
        assert_eq!(r.error_type(), "bad_data");
    }

    #[test]
    fn too_many_samples_and_annotations() {
        let st = counter();
        let e = Engine::new(EngineOptions {
            max_samples: 3,
            ..Default::default()
        });
        let err = run(e.range_query(&st, "c_total", 0, 600_000, 60_000)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "query processing would load too many samples into memory in query execution"
        );
        let mut st = MemStorage::new();
        st.add(
            lbl(&[("__name__", "gauge")]),
            [Sample { t: 0, v: 1.0 }, Sample { t: 60_000, v: 2.0 }],
        );
        let e = Engine::new(EngineOptions::default());
        let r = run(e.instant_query(&st, "rate(gauge[5m])", 60_000)).unwrap();
        assert_eq!(
            r.infos,
            vec!["PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: \"gauge\"".to_string()]
        );
    }

    #[test]
    fn histogram_quantile_classic_buckets() {
        let mut st = MemStorage::new();
        for (le, v) in [("0.1", 10.0), ("0.5", 20.0), ("1", 30.0), ("+Inf", 40.0)] {
            st.add(
                lbl(&[("__name__", "h_bucket"), ("le", le)]),
                [Sample { t: 0, v }],
            );
        }
        let v = instant(&st, "histogram_quantile(0.5, h_bucket)", 0).unwrap();
        assert_eq!(v[0].0, Labels::empty());
        assert!((v[0].1 - 0.5).abs() < 1e-12, "{}", v[0].1);
        let v = instant(&st, "histogram_quantile(0.99, h_bucket)", 0).unwrap();
        assert_eq!(v[0].1, 1.0);
    }

    #[test]
    fn prepared_query_runs_on_another_thread() {
        let st = counter();
        let e = Engine::new(EngineOptions::default());
        let p = run(e.prepare_range_query(
            &st,
            "sum(rate(c_total[5m]))",
            300_000,
            600_000,
            60_000,
            &QueryOptions::default(),
        ))
        .unwrap();
        let r = std::thread::spawn(move || p.exec())
            .join()
            .unwrap()
            .unwrap();
        match r.value {
            Value::Matrix(m) => assert_eq!(m[0].1.len(), 6),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cancellation_is_checked() {
        let st = counter();
        let e = Engine::new(EngineOptions::default());
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let err = run(e.instant_query_with(
            &st,
            "c_total",
            0,
            &QueryOptions {
                lookback_delta_ms: None,
                cancel: Some(cancel),
            },
        ))
        .unwrap_err();
        assert_eq!(err.error_type(), "canceled");
    }

    #[test]
    fn parse_errors_are_bad_data() {
        let st = MemStorage::new();
        let err = instant(&st, "sum(", 0).unwrap_err();
        assert_eq!(err.error_type(), "bad_data");
    }
}
