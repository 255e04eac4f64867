//! Phase 2 of a query: step-wise evaluation of the AST over prefetched series.
//!
//! Every node is evaluated over all steps of its context at once (as Prometheus's
//! `rangeEval` does): a vector-typed node yields series whose points sit on the step
//! timestamps, a scalar node one value per step.

use crate::engine::QueryError;
use crate::functions;
use crate::value::HPoint;
use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::token::{self, TokenId};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{
    AggregateExpr, AtModifier, BinaryExpr, Expr, LabelModifier, Offset, SubqueryExpr,
    VectorMatchCardinality, VectorSelector,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use storeapi::{Label, Labels, Sample};

/// Default subquery step when none is given (Prometheus's default evaluation interval).
pub(crate) const DEFAULT_SUBQUERY_STEP_MS: i64 = 60_000;

/// One series with points (step timestamps for evaluated vectors, raw for matrices).
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub labels: Labels,
    pub pts: Vec<Sample>,
    /// Native-histogram points, in time order; a step has a float or a histogram, never
    /// both. Empty for float series, so the float paths never look at it.
    pub hpts: Vec<HPoint>,
}

/// The value of a node over all steps of its context.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    Scalar(Vec<f64>),
    Str(String),
    Vector(Vec<Series>),
    /// Raw samples (only from a matrix selector or subquery evaluated at one instant).
    Matrix(Vec<Series>),
}

/// The steps a node is evaluated at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx {
    pub start: i64,
    pub end: i64,
    pub step: i64,
}

impl Ctx {
    pub fn n(&self) -> usize {
        ((self.end - self.start) / self.step + 1).max(0) as usize
    }
    pub fn ts(&self, i: usize) -> i64 {
        self.start + self.step * i as i64
    }
}

pub(crate) fn ms_of(d: &std::time::Duration) -> i64 {
    d.as_millis() as i64
}

pub(crate) fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => ms_of(d),
        Some(Offset::Neg(d)) => -ms_of(d),
    }
}

pub(crate) fn at_ms(a: &Option<AtModifier>, qstart: i64, qend: i64) -> Option<i64> {
    match a {
        None => None,
        Some(AtModifier::Start) => Some(qstart),
        Some(AtModifier::End) => Some(qend),
        Some(AtModifier::At(t)) => Some(system_time_ms(t)),
    }
}

fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// The inner context of a subquery evaluated for the outer context `ctx`.
pub(crate) fn subquery_ctx(sq: &SubqueryExpr, ctx: Ctx, qstart: i64, qend: i64) -> Ctx {
    let offset = offset_ms(&sq.offset);
    let range = ms_of(&sq.range);
    let step = sq
        .step
        .as_ref()
        .map(ms_of)
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_SUBQUERY_STEP_MS);
    let (s, e) = match at_ms(&sq.at, qstart, qend) {
        Some(at) => (at, at),
        None => (ctx.start, ctx.end),
    };
    let lo = s - offset - range;
    let mut start = step * (lo / step);
    if start <= lo {
        start += step;
    }
    Ctx {
        start,
        end: e - offset,
        step,
    }
}

/// Converts the parser's matchers of a selector into ours (the metric name included).
/// Returns one matcher set per `or` alternative.
pub(crate) fn selector_matchers(
    vs: &VectorSelector,
) -> Result<Vec<Vec<storeapi::Matcher>>, QueryError> {
    let conv =
        |ms: &[promql_parser::label::Matcher]| -> Result<Vec<storeapi::Matcher>, QueryError> {
            let mut out = Vec::with_capacity(ms.len() + 1);
            for m in ms {
                let op = match m.op {
                    PMatchOp::Equal => storeapi::MatchOp::Equal,
                    PMatchOp::NotEqual => storeapi::MatchOp::NotEqual,
                    PMatchOp::Re(_) => storeapi::MatchOp::RegexMatch,
                    PMatchOp::NotRe(_) => storeapi::MatchOp::RegexNoMatch,
                };
                out.push(
                    storeapi::Matcher::new(op, m.name.clone(), m.value.clone())
                        .map_err(|e| QueryError::BadData(e.to_string()))?,
                );
            }
            if let Some(name) = &vs.name
                && !out.iter().any(|m| m.name == "__name__")
            {
                out.push(storeapi::Matcher::equal("__name__", name.clone()));
            }
            Ok(out)
        };
    if vs.matchers.or_matchers.is_empty() {
        Ok(vec![conv(&vs.matchers.matchers)?])
    } else {
        let mut all = Vec::new();
        for group in &vs.matchers.or_matchers {
            let mut g = group.clone();
            g.extend(vs.matchers.matchers.iter().cloned());
            all.push(conv(&g)?);
        }
        Ok(all)
    }
}

pub(crate) fn selector_key(vs: &VectorSelector) -> usize {
    vs as *const VectorSelector as usize
}

pub(crate) fn drop_metric_name(l: &Labels) -> Labels {
    if l.iter().any(|x| is_metadata(&x.name)) {
        let v: Vec<Label> = l
            .iter()
            .filter(|x| !is_metadata(&x.name))
            .cloned()
            .collect();
        Labels::from_sorted_unchecked(v)
    } else {
        l.clone()
    }
}

fn is_metadata(n: &str) -> bool {
    n == "__name__" || n == "__type__" || n == "__unit__"
}

pub(crate) fn dup_labelset_err() -> QueryError {
    QueryError::Execution("vector cannot contain metrics with the same labelset".into())
}

/// Collects per-step output samples into series keyed by label set, detecting two
/// samples with the same labels at the same step.
pub(crate) struct Collector {
    map: HashMap<Labels, usize>,
    pub out: Vec<Series>,
    cap: usize,
}

impl Collector {
    pub fn new() -> Self {
        Collector {
            map: HashMap::new(),
            out: Vec::new(),
            cap: 0,
        }
    }
    /// The output index for a label set (created if new).
    pub fn index(&mut self, labels: Labels) -> usize {
        if let Some(i) = self.map.get(&labels) {
            return *i;
        }
        let i = self.out.len();
        self.map.insert(labels.clone(), i);
        self.out.push(Series {
            labels,
            pts: Vec::with_capacity(self.cap),
            hpts: Vec::new(),
        });
        i
    }
    /// Expected points per output series (the number of steps, capped).
    pub fn with_capacity(mut self, steps: usize) -> Self {
        self.cap = steps.min(4096);
        self
    }
    pub fn push(&mut self, idx: usize, t: i64, v: f64) -> Result<(), QueryError> {
        let s = &mut self.out[idx];
        if let Some(last) = s.pts.last()
            && last.t == t
        {
            return Err(dup_labelset_err());
        }
        s.pts.push(Sample { t, v });
        Ok(())
    }
}

/// Checks a matrix for two series with the same labels.
pub(crate) fn check_unique(series: &[Series]) -> Result<(), QueryError> {
    if series.len() < 2 {
        return Ok(());
    }
    let mut seen = std::collections::HashSet::with_capacity(series.len());
    for s in series {
        if !seen.insert(&s.labels) {
            return Err(dup_labelset_err());
        }
    }
    Ok(())
}

/// Merges series with equal labels whose points do not overlap (after a label change),
/// failing when two of them have a point at the same step.
pub(crate) fn merge_same_labels(series: Vec<Series>) -> Result<Vec<Series>, QueryError> {
    let mut map: HashMap<Labels, usize> = HashMap::with_capacity(series.len());
    let mut out: Vec<Series> = Vec::with_capacity(series.len());
    let mut need_sort = Vec::new();
    for s in series {
        match map.get(&s.labels) {
            Some(&i) => {
                let o: &mut Series = &mut out[i];
                o.pts.extend(s.pts);
                o.hpts.extend(s.hpts);
                need_sort.push(i);
            }
            None => {
                map.insert(s.labels.clone(), out.len());
                out.push(s);
            }
        }
    }
    for i in need_sort {
        let o = &mut out[i];
        o.pts.sort_by_key(|p| p.t);
        if o.pts.windows(2).any(|w| w[0].t == w[1].t) {
            return Err(dup_labelset_err());
        }
        if !o.hpts.is_empty() {
            o.hpts.sort_by_key(|p| p.t);
            if o.hpts.windows(2).any(|w| w[0].t == w[1].t)
                || o.hpts
                    .iter()
                    .any(|h| o.pts.binary_search_by_key(&h.t, |p| p.t).is_ok())
            {
                return Err(dup_labelset_err());
            }
        }
    }
    Ok(out)
}

/// The evaluator's state for one query.
pub(crate) struct Evaluator {
    pub qstart: i64,
    pub qend: i64,
    pub lookback: i64,
    pub max_samples: usize,
    pub cur_samples: usize,
    /// The most samples held at once (Prometheus's `peakSamples`).
    pub peak_samples: usize,
    /// Samples read at each step (Prometheus's `totalQueryableSamples`).
    pub total_samples: u64,
    pub deadline: Instant,
    pub cancel: Option<Arc<AtomicBool>>,
    pub data: HashMap<usize, Arc<Vec<storeapi_series::Raw>>>,
    /// Series whose labels were moved out by their (single) evaluation, kept to be freed
    /// after the query.
    pub spent: Vec<Arc<Vec<storeapi_series::Raw>>>,
    /// Selectors whose samples are counts of raw samples ([`crate::SelectResult::counts`]).
    pub counted: std::collections::HashSet<usize>,
    pub warnings: Vec<String>,
    pub infos: Vec<String>,
}

pub(crate) mod storeapi_series {
    use storeapi::{Labels, Sample};
    /// A selected series: labels and raw samples (stale markers kept).
    #[derive(Debug, Clone)]
    pub struct Raw {
        pub labels: Labels,
        pub samples: Vec<Sample>,
        /// Histogram samples (stale markers kept).
        pub hsamples: Vec<crate::value::HPoint>,
    }
}

pub(crate) fn too_many_samples() -> QueryError {
    QueryError::Execution(
        "query processing would load too many samples into memory in query execution".into(),
    )
}

impl Evaluator {
    pub fn check_done(&self) -> Result<(), QueryError> {
        if let Some(c) = &self.cancel
            && c.load(Ordering::Relaxed)
        {
            return Err(QueryError::Canceled(
                "query was canceled in expression evaluation".into(),
            ));
        }
        if Instant::now() > self.deadline {
            return Err(QueryError::Timeout(
                "query timed out in expression evaluation".into(),
            ));
        }
        Ok(())
    }

    pub fn add_samples(&mut self, n: usize) -> Result<(), QueryError> {
        self.cur_samples += n;
        self.peak_samples = self.peak_samples.max(self.cur_samples);
        if self.cur_samples > self.max_samples {
            return Err(too_many_samples());
        }
        Ok(())
    }

    /// The statistics of a finished evaluation.
    pub fn stats(&self, inner_eval_seconds: f64, result_sort_seconds: f64) -> crate::QueryStats {
        crate::QueryStats {
            total_queryable_samples: self.total_samples,
            peak_samples: self.peak_samples as u64,
            inner_eval_seconds,
            result_sort_seconds,
        }
    }

    pub fn warn(&mut self, w: String) {
        if !self.warnings.contains(&w) {
            self.warnings.push(w);
        }
    }
    pub fn info(&mut self, w: String) {
        if !self.infos.contains(&w) {
            self.infos.push(w);
        }
    }

    /// Evaluates a node. The samples its children held are released once it is done,
    /// so the count tracks what is alive, as Prometheus's `currentSamples` does.
    pub fn eval(&mut self, e: &Expr, ctx: Ctx) -> Result<Val, QueryError> {
        // Every recursion of the evaluation passes here: the stack grows on demand.
        crate::limits::grow(|| self.eval_at(e, ctx))
    }

    fn eval_at(&mut self, e: &Expr, ctx: Ctx) -> Result<Val, QueryError> {
        self.check_done()?;
        let before = self.cur_samples;
        let v = self.eval_node(e, ctx)?;
        let size = match &v {
            Val::Vector(ss) | Val::Matrix(ss) => {
                ss.iter().map(|s| s.pts.len() + s.hpts.len()).sum()
            }
            Val::Scalar(v) => v.len(),
            Val::Str(_) => 0,
        };
        self.cur_samples = before;
        self.add_samples(size)?;
        Ok(v)
    }

    fn eval_node(&mut self, e: &Expr, ctx: Ctx) -> Result<Val, QueryError> {
        match e {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(vec![n.val; ctx.n()])),
            Expr::StringLiteral(s) => Ok(Val::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, ctx),
            Expr::Unary(u) => match self.eval(&u.expr, ctx)? {
                Val::Scalar(mut v) => {
                    v.iter_mut().for_each(|x| *x = -*x);
                    Ok(Val::Scalar(v))
                }
                Val::Vector(mut ss) => {
                    for s in &mut ss {
                        s.labels = drop_metric_name(&s.labels);
                        s.pts.iter_mut().for_each(|p| p.v = -p.v);
                        for p in &mut s.hpts {
                            let mut h = (*p.h).clone();
                            h.mul(-1.0);
                            p.h = Arc::new(h);
                        }
                    }
                    check_unique(&ss)?;
                    Ok(Val::Vector(ss))
                }
                _ => Err(QueryError::BadData(
                    "unary expression only allowed on expressions of type scalar or instant vector"
                        .into(),
                )),
            },
            Expr::VectorSelector(vs) => Ok(Val::Vector(self.eval_vector_selector(vs, ctx)?)),
            Expr::MatrixSelector(ms) => {
                let src = self.range_source(e, ctx)?;
                let ts = ctx.start;
                let rt = src.at.unwrap_or(ts) - src.offset;
                let mut out = Vec::new();
                for s in src.series {
                    let (lo, hi) = window(&s.pts, rt - src.range, rt);
                    let (hlo, hhi) = hwindow(&s.hpts, rt - src.range, rt);
                    let k = (hi - lo) + (hhi - hlo);
                    if k > 0 {
                        self.add_samples(k)?;
                        self.total_samples += k as u64;
                        out.push(Series {
                            labels: s.labels,
                            pts: s.pts[lo..hi].to_vec(),
                            hpts: s.hpts[hlo..hhi].to_vec(),
                        });
                    }
                }
                let _ = ms;
                Ok(Val::Matrix(out))
            }
            Expr::Subquery(sq) => {
                let inner = subquery_ctx(sq, ctx, self.qstart, self.qend);
                match self.eval(&sq.expr, inner)? {
                    Val::Vector(ss) => Ok(Val::Matrix(ss)),
                    _ => Err(QueryError::BadData(
                        "subquery is only allowed on instant vector".into(),
                    )),
                }
            }
            Expr::Call(c) => functions::eval_call(self, c, ctx),
            Expr::Aggregate(a) => self.eval_aggregate(a, ctx),
            Expr::Binary(b) => self.eval_binary(b, ctx),
            Expr::Extension(_) => Err(QueryError::BadData(
                "extension expressions are not supported".into(),
            )),
        }
    }

    /// An instant vector selector: the latest sample within the lookback delta per step.
    pub fn eval_vector_selector(
        &mut self,
        vs: &VectorSelector,
        ctx: Ctx,
    ) -> Result<Vec<Series>, QueryError> {
        let offset = offset_ms(&vs.offset);
        let at = at_ms(&vs.at, self.qstart, self.qend);
        // Each selector node is evaluated once per query (evaluation is vectorised over
        // the steps), so its series' labels are moved out instead of cloned when no one
        // else holds them; the emptied series go back to be freed after the query.
        let key = selector_key(vs);
        let mut raws = self.data.remove(&key).unwrap_or_default();
        let owned = Arc::get_mut(&mut raws).is_some();
        let n = ctx.n();
        let mut out = Vec::with_capacity(raws.len());
        for i in 0..raws.len() {
            let r = &raws[i];
            let mut pts = Vec::new();
            let mut hpts = Vec::new();
            if !r.hsamples.is_empty() {
                for i in 0..n {
                    let ts = ctx.ts(i);
                    let rt = at.unwrap_or(ts) - offset;
                    match lookup_mixed(&r.samples, &r.hsamples, rt, self.lookback) {
                        Some(Found::F(p)) => pts.push(Sample { t: ts, v: p.v }),
                        Some(Found::H(h)) => hpts.push(HPoint {
                            t: ts,
                            h: h.h.clone(),
                        }),
                        None => {}
                    }
                }
            } else if let Some(at) = at {
                let rt = at - offset;
                if let Some(v) = lookup(&r.samples, rt, self.lookback) {
                    pts = (0..n)
                        .map(|i| Sample {
                            t: ctx.ts(i),
                            v: v.v,
                        })
                        .collect();
                }
            } else {
                let mut cur = 0usize;
                let s = &r.samples;
                for i in 0..n {
                    let ts = ctx.ts(i);
                    let rt = ts - offset;
                    while cur < s.len() && s[cur].t <= rt {
                        cur += 1;
                    }
                    if cur == 0 {
                        continue;
                    }
                    let p = s[cur - 1];
                    if p.t <= rt - self.lookback || storeapi::is_stale_nan(p.v) {
                        continue;
                    }
                    pts.push(Sample { t: ts, v: p.v });
                }
            }
            if !pts.is_empty() || !hpts.is_empty() {
                self.add_samples(pts.len() + hpts.len())?;
                self.total_samples += (pts.len() + hpts.len()) as u64;
                let labels = match Arc::get_mut(&mut raws) {
                    Some(rs) if owned => std::mem::take(&mut rs[i].labels),
                    _ => raws[i].labels.clone(),
                };
                out.push(Series { labels, pts, hpts });
            }
        }
        if !owned {
            self.data.insert(key, raws);
        } else {
            self.spent.push(raws);
        }
        Ok(out)
    }

    /// Like [`Self::eval_vector_selector`] but each point carries the sample's timestamp
    /// in seconds (for `timestamp()`).
    pub fn eval_vector_selector_timestamps(
        &mut self,
        vs: &VectorSelector,
        ctx: Ctx,
    ) -> Result<Vec<Series>, QueryError> {
        let offset = offset_ms(&vs.offset);
        let at = at_ms(&vs.at, self.qstart, self.qend);
        let raws = self
            .data
            .get(&selector_key(vs))
            .cloned()
            .unwrap_or_default();
        let n = ctx.n();
        let mut out = Vec::with_capacity(raws.len());
        for r in raws.iter() {
            let mut pts = Vec::new();
            for i in 0..n {
                let ts = ctx.ts(i);
                let rt = at.unwrap_or(ts) - offset;
                let found = match lookup_mixed(&r.samples, &r.hsamples, rt, self.lookback) {
                    Some(Found::F(p)) => Some(p.t),
                    Some(Found::H(h)) => Some(h.t),
                    None => None,
                };
                if let Some(t) = found {
                    pts.push(Sample {
                        t: ts,
                        v: t as f64 / 1000.0,
                    });
                }
            }
            if !pts.is_empty() {
                self.add_samples(pts.len())?;
                self.total_samples += pts.len() as u64;
                out.push(Series {
                    labels: drop_metric_name(&r.labels),
                    pts,
                    hpts: Vec::new(),
                });
            }
        }
        check_unique(&out)?;
        Ok(out)
    }

    /// The series and window parameters behind a range-vector argument.
    pub fn range_source(&mut self, e: &Expr, ctx: Ctx) -> Result<RangeSource, QueryError> {
        match e {
            Expr::Paren(p) => self.range_source(&p.expr, ctx),
            Expr::MatrixSelector(ms) => {
                let vs = &ms.vs;
                let raws = self
                    .data
                    .get(&selector_key(vs))
                    .cloned()
                    .unwrap_or_default();
                let series = raws
                    .iter()
                    .map(|r| Series {
                        labels: r.labels.clone(),
                        pts: if r.samples.iter().any(|s| storeapi::is_stale_nan(s.v)) {
                            r.samples
                                .iter()
                                .filter(|s| !storeapi::is_stale_nan(s.v))
                                .copied()
                                .collect()
                        } else {
                            r.samples.clone()
                        },
                        hpts: r
                            .hsamples
                            .iter()
                            .filter(|h| !h.h.is_stale())
                            .cloned()
                            .collect(),
                    })
                    .collect();
                Ok(RangeSource {
                    series,
                    range: ms_of(&ms.range),
                    offset: offset_ms(&vs.offset),
                    at: at_ms(&vs.at, self.qstart, self.qend),
                    counted: self.counted.contains(&selector_key(vs)),
                })
            }
            Expr::Subquery(sq) => {
                let inner = subquery_ctx(sq, ctx, self.qstart, self.qend);
                let series = match self.eval(&sq.expr, inner)? {
                    Val::Vector(ss) => ss,
                    _ => {
                        return Err(QueryError::BadData(
                            "subquery is only allowed on instant vector".into(),
                        ));
                    }
                };
                Ok(RangeSource {
                    series,
                    range: ms_of(&sq.range),
                    offset: offset_ms(&sq.offset),
                    at: at_ms(&sq.at, self.qstart, self.qend),
                    counted: false,
                })
            }
            _ => Err(QueryError::BadData(format!(
                "expected type range vector, got {}",
                type_name(e)
            ))),
        }
    }

    /// Evaluates an expression expected to be a scalar, per step.
    pub fn eval_scalar(&mut self, e: &Expr, ctx: Ctx) -> Result<Vec<f64>, QueryError> {
        match self.eval(e, ctx)? {
            Val::Scalar(v) => Ok(v),
            _ => Err(QueryError::BadData(format!(
                "expected type scalar, got {}",
                type_name(e)
            ))),
        }
    }

    /// Evaluates an expression expected to be an instant vector.
    pub fn eval_vector(&mut self, e: &Expr, ctx: Ctx) -> Result<Vec<Series>, QueryError> {
        match self.eval(e, ctx)? {
            Val::Vector(v) => Ok(v),
            _ => Err(QueryError::BadData(format!(
                "expected type instant vector, got {}",
                type_name(e)
            ))),
        }
    }

    // ---------------------------------------------------------------- aggregation

    fn eval_aggregate(&mut self, a: &AggregateExpr, ctx: Ctx) -> Result<Val, QueryError> {
        let op = a.op.id();
        let (without, mut grouping): (bool, Vec<String>) = match &a.modifier {
            None => (false, Vec::new()),
            Some(LabelModifier::Include(l)) => (false, l.labels.clone()),
            Some(LabelModifier::Exclude(l)) => (true, l.labels.clone()),
        };
        grouping.sort();
        grouping.dedup();
        if op == token::T_COUNT_VALUES {
            let label = match a.param.as_deref().map(unwrap_parens) {
                Some(Expr::StringLiteral(s)) => s.val.clone(),
                _ => {
                    return Err(QueryError::BadData(
                        "count_values requires a string parameter".into(),
                    ));
                }
            };
            if !storeapi::labels::is_valid_label_name(&label) {
                return Err(QueryError::Execution(format!(
                    "invalid label name {label:?}"
                )));
            }
            let input = self.eval_vector(&a.expr, ctx)?;
            return crate::aggregate::count_values(self, input, &label, without, &grouping, ctx)
                .map(Val::Vector);
        }
        let param = match &a.param {
            Some(p)
                if matches!(
                    op,
                    token::T_TOPK
                        | token::T_BOTTOMK
                        | token::T_QUANTILE
                        | token::T_LIMITK
                        | token::T_LIMIT_RATIO
                ) =>
            {
                Some(self.eval_scalar(p, ctx)?)
            }
            _ => None,
        };
        let input = self.eval_vector(&a.expr, ctx)?;
        crate::aggregate::aggregate(self, op, input, param, without, &grouping, ctx)
            .map(Val::Vector)
    }

    // ---------------------------------------------------------------- binary operators

    fn eval_binary(&mut self, b: &BinaryExpr, ctx: Ctx) -> Result<Val, QueryError> {
        let op = b.op.id();
        let return_bool = b.return_bool();
        let lhs = self.eval(&b.lhs, ctx)?;
        let rhs = self.eval(&b.rhs, ctx)?;
        match (lhs, rhs) {
            (Val::Scalar(l), Val::Scalar(r)) => {
                let v = l
                    .iter()
                    .zip(r.iter())
                    .map(|(a, b)| scalar_binop(op, *a, *b))
                    .collect();
                Ok(Val::Scalar(v))
            }
            (Val::Vector(l), Val::Scalar(r)) => self
                .vector_scalar(op, l, &r, false, return_bool, ctx)
                .map(Val::Vector),
            (Val::Scalar(l), Val::Vector(r)) => self
                .vector_scalar(op, r, &l, true, return_bool, ctx)
                .map(Val::Vector),
            (Val::Vector(l), Val::Vector(r)) => {
                crate::binop::vector_vector(self, b, op, l, r, return_bool, ctx).map(Val::Vector)
            }
            _ => Err(QueryError::BadData(
                "binary expression must contain only scalar and instant vector types".into(),
            )),
        }
    }

    fn vector_scalar(
        &mut self,
        op: TokenId,
        vec: Vec<Series>,
        sc: &[f64],
        swap: bool,
        return_bool: bool,
        ctx: Ctx,
    ) -> Result<Vec<Series>, QueryError> {
        let comparison = is_comparison(op);
        let drop = !comparison || return_bool;
        let mut out = Vec::with_capacity(vec.len());
        for s in vec {
            let mut pts = Vec::with_capacity(s.pts.len());
            for p in &s.pts {
                let i = ((p.t - ctx.start) / ctx.step) as usize;
                let sv = sc.get(i).copied().unwrap_or(f64::NAN);
                let (l, r) = if swap { (sv, p.v) } else { (p.v, sv) };
                let (mut v, keep) = elem_binop(op, l, r);
                if comparison && swap {
                    v = r;
                }
                if return_bool {
                    pts.push(Sample {
                        t: p.t,
                        v: if keep { 1.0 } else { 0.0 },
                    });
                } else if keep {
                    pts.push(Sample { t: p.t, v });
                }
            }
            let mut hpts = Vec::new();
            for p in &s.hpts {
                let i = ((p.t - ctx.start) / ctx.step) as usize;
                let sv = crate::binop::Pv::F(sc.get(i).copied().unwrap_or(f64::NAN));
                let hv = crate::binop::Pv::H(p.h.clone());
                let (l, r) = if swap { (&sv, &hv) } else { (&hv, &sv) };
                let Some((mut v, keep)) = crate::binop::elem_binop_pv(self, op, l, r) else {
                    continue;
                };
                if comparison && swap {
                    v = hv.clone();
                }
                if return_bool {
                    v = crate::binop::Pv::F(if keep { 1.0 } else { 0.0 });
                } else if !keep {
                    continue;
                }
                match v {
                    crate::binop::Pv::F(v) => pts.push(Sample { t: p.t, v }),
                    crate::binop::Pv::H(h) => hpts.push(HPoint { t: p.t, h }),
                }
            }
            if !hpts.is_empty() && !pts.is_empty() {
                pts.sort_by_key(|p| p.t);
            }
            if !pts.is_empty() || !hpts.is_empty() {
                let labels = if drop {
                    drop_metric_name(&s.labels)
                } else {
                    s.labels
                };
                out.push(Series { labels, pts, hpts });
            }
        }
        if drop {
            out = merge_same_labels(out)?;
        }
        Ok(out)
    }
}

/// A range-vector argument: per-series samples (stale markers removed) and the window.
pub(crate) struct RangeSource {
    pub series: Vec<Series>,
    pub range: i64,
    pub offset: i64,
    pub at: Option<i64>,
    /// Values are counts of raw samples (downsampled data): `count_over_time` sums them.
    pub counted: bool,
}

/// Indices `[lo, hi)` of the samples with `mint < t <= maxt`.
pub(crate) fn window(s: &[Sample], mint: i64, maxt: i64) -> (usize, usize) {
    let lo = s.partition_point(|p| p.t <= mint);
    let hi = s.partition_point(|p| p.t <= maxt);
    (lo, hi.max(lo))
}

/// Indices `[lo, hi)` of the histogram points with `mint < t <= maxt`.
pub(crate) fn hwindow(s: &[HPoint], mint: i64, maxt: i64) -> (usize, usize) {
    let lo = s.partition_point(|p| p.t <= mint);
    let hi = s.partition_point(|p| p.t <= maxt);
    (lo, hi.max(lo))
}

/// What a lookup in a series of floats and histograms found.
pub(crate) enum Found<'a> {
    F(Sample),
    H(&'a HPoint),
}

/// The latest sample of either kind at or before `rt` within the lookback delta, unless
/// it is a stale marker.
pub(crate) fn lookup_mixed<'a>(
    f: &[Sample],
    h: &'a [HPoint],
    rt: i64,
    lookback: i64,
) -> Option<Found<'a>> {
    let i = f.partition_point(|p| p.t <= rt);
    let j = h.partition_point(|p| p.t <= rt);
    let fp = i.checked_sub(1).and_then(|i| f.get(i));
    let hp = j.checked_sub(1).and_then(|j| h.get(j));
    let found = match (fp, hp) {
        (Some(a), Some(b)) if b.t > a.t => Found::H(b),
        (Some(a), _) => Found::F(*a),
        (None, Some(b)) => Found::H(b),
        (None, None) => return None,
    };
    match found {
        Found::F(p) if p.t <= rt - lookback || storeapi::is_stale_nan(p.v) => None,
        Found::H(p) if p.t <= rt - lookback || p.h.is_stale() => None,
        x => Some(x),
    }
}

/// The latest non-stale sample at or before `rt` within the lookback delta.
pub(crate) fn lookup(s: &[Sample], rt: i64, lookback: i64) -> Option<Sample> {
    let i = s.partition_point(|p| p.t <= rt);
    if i == 0 {
        return None;
    }
    let p = s[i - 1];
    if p.t <= rt - lookback || storeapi::is_stale_nan(p.v) {
        return None;
    }
    Some(p)
}

/// `e` without its enclosing parentheses (a loop: they may be nested deeply).
pub(crate) fn unwrap_parens(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

/// `Expr::value_type` without its recursion (the parser's walks the whole chain of
/// unary, parenthesised and binary nodes on the caller's stack).
pub(crate) fn value_type(e: &Expr) -> ValueType {
    let mut top = e;
    loop {
        match top {
            Expr::Paren(p) => top = &p.expr,
            Expr::Unary(u) => top = &u.expr,
            _ => break,
        }
    }
    if !matches!(top, Expr::Binary(_)) {
        return own_value_type(top);
    }
    // A binary node is a scalar when every operand under it is; else a vector.
    let mut todo = vec![top];
    while let Some(n) = todo.pop() {
        match n {
            Expr::Binary(b) => {
                todo.push(&b.lhs);
                todo.push(&b.rhs);
            }
            Expr::Paren(p) => todo.push(&p.expr),
            Expr::Unary(u) => todo.push(&u.expr),
            other => {
                if own_value_type(other) != ValueType::Scalar {
                    return ValueType::Vector;
                }
            }
        }
    }
    ValueType::Scalar
}

/// The type of a node that is not a unary, parenthesised or binary one.
fn own_value_type(e: &Expr) -> ValueType {
    match e {
        Expr::Aggregate(_) => ValueType::Vector,
        Expr::Subquery(_) | Expr::MatrixSelector(_) => ValueType::Matrix,
        Expr::NumberLiteral(_) => ValueType::Scalar,
        Expr::StringLiteral(_) => ValueType::String,
        Expr::VectorSelector(_) => ValueType::Vector,
        Expr::Call(c) => c.func.return_type,
        other => other.value_type(),
    }
}

pub(crate) fn type_name(e: &Expr) -> &'static str {
    match value_type(e) {
        ValueType::Scalar => "scalar",
        ValueType::String => "string",
        ValueType::Vector => "instant vector",
        ValueType::Matrix => "range vector",
    }
}

pub(crate) fn is_comparison(op: TokenId) -> bool {
    matches!(
        op,
        token::T_EQLC | token::T_NEQ | token::T_GTR | token::T_LSS | token::T_GTE | token::T_LTE
    )
}

pub(crate) fn scalar_binop(op: TokenId, l: f64, r: f64) -> f64 {
    let b = |x: bool| if x { 1.0 } else { 0.0 };
    match op {
        token::T_ADD => l + r,
        token::T_SUB => l - r,
        token::T_MUL => l * r,
        token::T_DIV => l / r,
        token::T_POW => l.powf(r),
        token::T_MOD => l % r,
        token::T_EQLC => b(l == r),
        token::T_NEQ => b(l != r),
        token::T_GTR => b(l > r),
        token::T_LSS => b(l < r),
        token::T_GTE => b(l >= r),
        token::T_LTE => b(l <= r),
        token::T_ATAN2 => l.atan2(r),
        _ => f64::NAN,
    }
}

/// A binary operation between two vector elements: (value, keep).
pub(crate) fn elem_binop(op: TokenId, l: f64, r: f64) -> (f64, bool) {
    match op {
        token::T_EQLC => (l, l == r),
        token::T_NEQ => (l, l != r),
        token::T_GTR => (l, l > r),
        token::T_LSS => (l, l < r),
        token::T_GTE => (l, l >= r),
        token::T_LTE => (l, l <= r),
        _ => (scalar_binop(op, l, r), true),
    }
}

/// Cardinality helpers for the binary-operator module.
pub(crate) fn card_labels(c: &VectorMatchCardinality) -> Vec<String> {
    match c {
        VectorMatchCardinality::ManyToOne(l) | VectorMatchCardinality::OneToMany(l) => {
            l.labels.clone()
        }
        _ => Vec::new(),
    }
}
