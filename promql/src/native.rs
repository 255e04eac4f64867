//! Native histograms in PromQL functions (Prometheus 3.5.3 `promql/functions.go` and
//! `quantile.go`): the `histogram_*` functions, and the range functions over windows that
//! hold histogram samples. Float-only series never come here.

use crate::engine::QueryError;
use crate::eval::{Ctx, Evaluator, Series, drop_metric_name};
use crate::functions::{self as f, kahan_inc};
use crate::value::HPoint;
use std::sync::Arc;
use storeapi::Sample;
use storeapi::histogram::{CounterResetHint, FloatHistogram, HistogramOpError};

/// The result of one step of a function: a float or a histogram.
pub(crate) enum Out {
    F(f64),
    H(FloatHistogram),
}

pub(crate) fn mixed_floats_histograms(metric: &str) -> String {
    format!("PromQL warning: encountered a mix of histograms and floats for metric name {metric:?}")
}

/// The warning for a failed histogram operation in a function over `metric`.
pub(crate) fn op_error_warning(e: HistogramOpError, metric: &str) -> String {
    match e {
        HistogramOpError::IncompatibleSchema => format!(
            "PromQL warning: vector contains a mix of histograms with exponential and custom buckets schemas for metric name {metric:?}"
        ),
        HistogramOpError::IncompatibleBounds => format!(
            "PromQL warning: vector contains histograms with incompatible custom buckets for metric name {metric:?}"
        ),
    }
}

fn not_counter(metric: &str) -> String {
    format!("PromQL warning: this native histogram metric is not a counter: {metric:?}")
}

fn not_gauge(metric: &str) -> String {
    format!("PromQL warning: this native histogram metric is not a gauge: {metric:?}")
}

fn ignored_in_mixed_range(metric: &str) -> String {
    format!(
        "PromQL info: ignored histograms in a range containing both floats and histograms for metric name {metric:?}"
    )
}

/// One step of a range function over a series that holds histograms: `w` and `hw` are
/// the float and histogram samples in the window (at least one non-empty).
#[allow(clippy::too_many_arguments)]
pub(crate) fn range_step(
    ev: &mut Evaluator,
    code: u8,
    metric: &str,
    w: &[Sample],
    hw: &[HPoint],
    rt: i64,
    range: i64,
    counted: bool,
    params: &[Vec<f64>],
    i: usize,
    ts: i64,
    scratch: &mut Vec<f64>,
) -> Result<Option<Out>, QueryError> {
    let float = |ev: &mut Evaluator, scratch: &mut Vec<f64>| -> Result<Option<Out>, QueryError> {
        if w.is_empty() {
            return Ok(None);
        }
        let _ = ev;
        Ok(f::float_range_value(code, w, rt, range, counted, params, i, ts, scratch)?.map(Out::F))
    };
    match code {
        f::RF_RATE | f::RF_INCREASE | f::RF_DELTA => {
            if !w.is_empty() && !hw.is_empty() {
                ev.warn(mixed_floats_histograms(metric));
                return Ok(None);
            }
            if hw.len() < 2 {
                return float(ev, scratch);
            }
            let is_counter = code != f::RF_DELTA;
            let is_rate = code == f::RF_RATE;
            let Some(mut h) = histogram_rate(ev, hw, is_counter, metric) else {
                return Ok(None);
            };
            let (first, last) = (hw[0].t, hw[hw.len() - 1].t);
            h.mul(extrapolation_factor(
                first,
                last,
                hw.len() - 1,
                rt - range,
                rt,
                range,
                is_rate,
            ));
            Ok(Some(Out::H(h)))
        }
        f::RF_IRATE | f::RF_IDELTA => Ok(instant_value(ev, w, hw, code == f::RF_IRATE, metric)),
        f::RF_CHANGES | f::RF_RESETS => {
            let mut prev: Option<Pt> = None;
            let mut n = 0usize;
            for cur in merged(w, hw) {
                if let Some(p) = &prev {
                    let hit = match (p, &cur) {
                        (Pt::F(a), Pt::F(b)) => {
                            if code == f::RF_CHANGES {
                                a != b && !(a.is_nan() && b.is_nan())
                            } else {
                                b < a
                            }
                        }
                        (Pt::H(a), Pt::H(b)) => {
                            if code == f::RF_CHANGES {
                                !b.equals(a)
                            } else {
                                b.detect_reset(a)
                            }
                        }
                        _ => true,
                    };
                    if hit {
                        n += 1;
                    }
                }
                prev = Some(cur);
            }
            Ok(Some(Out::F(n as f64)))
        }
        f::RF_SUM_OVER_TIME | f::RF_AVG_OVER_TIME => {
            if !w.is_empty() && !hw.is_empty() {
                ev.warn(mixed_floats_histograms(metric));
                return Ok(None);
            }
            if hw.is_empty() {
                return float(ev, scratch);
            }
            let r = if code == f::RF_SUM_OVER_TIME {
                sum_histograms(hw.iter().map(|p| &*p.h))
            } else {
                avg_histograms(hw.iter().map(|p| &*p.h))
            };
            match r {
                Ok(h) => Ok(Some(Out::H(h))),
                Err(e) => {
                    ev.warn(op_error_warning(e, metric));
                    Ok(None)
                }
            }
        }
        f::RF_COUNT_OVER_TIME => {
            let floats: f64 = if counted {
                w.iter().map(|p| p.v).sum()
            } else {
                w.len() as f64
            };
            Ok(Some(Out::F(floats + hw.len() as f64)))
        }
        f::RF_PRESENT_OVER_TIME | f::RF_ABSENT_OVER_TIME => Ok(Some(Out::F(1.0))),
        f::RF_LAST_OVER_TIME | f::RF_TS_OF_LAST_OVER_TIME => {
            let lf = w.last();
            let lh = hw.last();
            let ts_of = code == f::RF_TS_OF_LAST_OVER_TIME;
            Ok(match (lf, lh) {
                (Some(a), Some(b)) if b.t < a.t => Some(if ts_of {
                    Out::F(a.t as f64 / 1000.0)
                } else {
                    Out::F(a.v)
                }),
                (_, Some(b)) => Some(if ts_of {
                    Out::F(b.t as f64 / 1000.0)
                } else {
                    Out::H((*b.h).clone())
                }),
                (Some(a), None) => Some(if ts_of {
                    Out::F(a.t as f64 / 1000.0)
                } else {
                    Out::F(a.v)
                }),
                (None, None) => None,
            })
        }
        _ => {
            // Every other range function ignores histograms, with an info when the range
            // also has floats.
            if w.is_empty() {
                return Ok(None);
            }
            if !hw.is_empty() {
                ev.info(ignored_in_mixed_range(metric));
            }
            float(ev, scratch)
        }
    }
}

enum Pt<'a> {
    F(f64),
    H(&'a FloatHistogram),
}

/// Floats and histograms of a window in time order.
fn merged<'a>(w: &'a [Sample], hw: &'a [HPoint]) -> Vec<Pt<'a>> {
    let mut out: Vec<(i64, Pt<'a>)> = w
        .iter()
        .map(|p| (p.t, Pt::F(p.v)))
        .chain(hw.iter().map(|p| (p.t, Pt::H(&p.h))))
        .collect();
    out.sort_by_key(|p| p.0);
    out.into_iter().map(|p| p.1).collect()
}

/// Prometheus's extrapolation of a rate over a left-open window, without the float
/// path's clamp at a zero counter value (3.5 does not apply it to histograms).
fn extrapolation_factor(
    first_t: i64,
    last_t: i64,
    n_minus_one: usize,
    range_start: i64,
    range_end: i64,
    range: i64,
    is_rate: bool,
) -> f64 {
    let mut to_start = (first_t - range_start) as f64 / 1000.0;
    let mut to_end = (range_end - last_t) as f64 / 1000.0;
    let sampled = (last_t - first_t) as f64 / 1000.0;
    let avg = sampled / n_minus_one as f64;
    let threshold = avg * 1.1;
    if to_start >= threshold {
        to_start = avg / 2.0;
    }
    if to_end >= threshold {
        to_end = avg / 2.0;
    }
    let mut factor = (sampled + to_start + to_end) / sampled;
    if is_rate {
        factor /= range as f64 / 1000.0;
    }
    factor
}

/// Prometheus's `histogramRate`: last − first at the smallest schema, corrected for
/// counter resets; `None` (with a warning) when the histograms cannot be combined.
fn histogram_rate(
    ev: &mut Evaluator,
    points: &[HPoint],
    is_counter: bool,
    metric: &str,
) -> Option<FloatHistogram> {
    let first = &*points[0].h;
    let last = &*points[points.len() - 1].h;
    if is_counter && (first.hint == CounterResetHint::Gauge || last.hint == CounterResetHint::Gauge)
    {
        ev.warn(not_counter(metric));
    }
    let mut prev: FloatHistogram = first.clone();
    let mut custom = prev.uses_custom_buckets();
    // A reset between the first and the second sample makes the first irrelevant.
    if is_counter && points.len() > 1 {
        let second = &*points[1].h;
        if second.detect_reset(first) {
            prev = FloatHistogram {
                schema: second.schema,
                custom_values: second.custom_values.clone(),
                ..Default::default()
            };
            custom = second.uses_custom_buckets();
        }
    }
    if last.uses_custom_buckets() != custom {
        ev.warn(op_error_warning(
            HistogramOpError::IncompatibleSchema,
            metric,
        ));
        return None;
    }
    let mut min_schema = prev.schema.min(last.schema);
    for p in &points[1..points.len() - 1] {
        if !is_counter {
            continue;
        }
        if p.h.hint == CounterResetHint::Gauge {
            ev.warn(not_counter(metric));
        }
        min_schema = min_schema.min(p.h.schema);
        if p.h.uses_custom_buckets() != custom {
            ev.warn(op_error_warning(
                HistogramOpError::IncompatibleSchema,
                metric,
            ));
            return None;
        }
    }
    let mut h = last.clone();
    h.reduce_resolution(min_schema);
    if let Err(e) = h.sub(&prev) {
        ev.warn(op_error_warning(e, metric));
        return None;
    }
    if is_counter {
        let mut prev: &FloatHistogram = &prev;
        for p in &points[1..] {
            let cur = &*p.h;
            if cur.detect_reset(prev)
                && let Err(e) = h.add(prev)
            {
                ev.warn(op_error_warning(e, metric));
                return None;
            }
            prev = cur;
        }
    } else if first.hint != CounterResetHint::Gauge || last.hint != CounterResetHint::Gauge {
        ev.warn(not_gauge(metric));
    }
    h.hint = CounterResetHint::Gauge;
    h.compact();
    Some(h)
}

/// Prometheus's `instantValue` (irate/idelta) over the last two samples of either kind.
fn instant_value(
    ev: &mut Evaluator,
    w: &[Sample],
    hw: &[HPoint],
    is_rate: bool,
    metric: &str,
) -> Option<Out> {
    if w.len() + hw.len() < 2 {
        return None;
    }
    let mut ss: Vec<(i64, Pt)> = w[w.len().saturating_sub(2)..]
        .iter()
        .map(|p| (p.t, Pt::F(p.v)))
        .collect();
    for p in &hw[hw.len().saturating_sub(2)..] {
        let s = (p.t, Pt::H(&p.h));
        match ss.len() {
            0 => ss.push(s),
            1 => {
                if s.0 < ss[0].0 {
                    ss.insert(0, s);
                } else {
                    ss.push(s);
                }
            }
            _ => {
                if s.0 < ss[0].0 {
                } else if s.0 > ss[1].0 {
                    ss.swap(0, 1);
                    ss[1] = s;
                } else {
                    ss[0] = s;
                }
            }
        }
    }
    let (t0, t1) = (ss[0].0, ss[1].0);
    let interval = t1 - t0;
    if interval == 0 {
        return None;
    }
    let secs = interval as f64 / 1000.0;
    match (&ss[0].1, &ss[1].1) {
        (Pt::F(a), Pt::F(b)) => {
            let mut v = *b;
            if !is_rate || b >= a || b.is_nan() || a.is_nan() {
                v = b - a;
            }
            if is_rate {
                v /= secs;
            }
            Some(Out::F(v))
        }
        (Pt::H(a), Pt::H(b)) => {
            let mut r = (*b).clone();
            if is_rate && (a.hint == CounterResetHint::Gauge || b.hint == CounterResetHint::Gauge) {
                ev.warn(not_counter(metric));
            }
            if !is_rate && (a.hint != CounterResetHint::Gauge || b.hint != CounterResetHint::Gauge)
            {
                ev.warn(not_gauge(metric));
            }
            if (!is_rate || !b.detect_reset(a))
                && let Err(e) = r.sub(a)
            {
                ev.warn(op_error_warning(e, metric));
                return None;
            }
            r.hint = CounterResetHint::Gauge;
            r.compact();
            if is_rate {
                r.div(secs);
            }
            Some(Out::H(r))
        }
        _ => {
            ev.warn(mixed_floats_histograms(metric));
            None
        }
    }
}

/// The sum of histograms (the first one's copy plus each next).
pub(crate) fn sum_histograms<'a>(
    mut hs: impl Iterator<Item = &'a FloatHistogram>,
) -> Result<FloatHistogram, HistogramOpError> {
    let Some(first) = hs.next() else {
        return Ok(FloatHistogram::default());
    };
    let mut sum = first.clone();
    for h in hs {
        sum.add(h)?;
    }
    Ok(sum)
}

/// Prometheus's incremental mean of histograms: `mean += h/n − mean/n`.
pub(crate) fn avg_histograms<'a>(
    mut hs: impl Iterator<Item = &'a FloatHistogram>,
) -> Result<FloatHistogram, HistogramOpError> {
    let Some(first) = hs.next() else {
        return Ok(FloatHistogram::default());
    };
    let mut mean = first.clone();
    for (i, h) in hs.enumerate() {
        let count = (i + 2) as f64;
        let mut left = h.clone();
        left.div(count);
        let mut right = mean.clone();
        right.div(count);
        left.sub(&right)?;
        mean.add(&left)?;
    }
    Ok(mean)
}

// ------------------------------------------------------------------ instant functions

/// `histogram_count/sum/avg/stddev/stdvar(v)`: a float per histogram sample; float
/// samples are dropped.
pub(crate) fn simple_histogram_fn(name: &str, vec: Vec<Series>) -> Vec<Series> {
    let g: fn(&FloatHistogram) -> f64 = match name {
        "histogram_count" => |h| h.count,
        "histogram_sum" => |h| h.sum,
        "histogram_avg" => |h| h.sum / h.count,
        "histogram_stddev" => |h| variance(h).sqrt(),
        _ => variance,
    };
    vec.into_iter()
        .filter(|s| !s.hpts.is_empty())
        .map(|s| Series {
            labels: drop_metric_name(&s.labels),
            pts: s
                .hpts
                .iter()
                .map(|p| Sample { t: p.t, v: g(&p.h) })
                .collect(),
            hpts: Vec::new(),
        })
        .collect()
}

/// The variance of the observations, each assumed at its bucket's mean (geometric for
/// exponential buckets, zero for the zero bucket, arithmetic for custom buckets).
fn variance(h: &FloatHistogram) -> f64 {
    let mean = h.sum / h.count;
    let (mut var, mut c) = (0.0, 0.0);
    for b in h.all_buckets() {
        if b.count == 0.0 {
            continue;
        }
        let val = if h.uses_custom_buckets() {
            (b.upper + b.lower) / 2.0
        } else if b.lower <= 0.0 && b.upper >= 0.0 {
            0.0
        } else {
            let v = (b.upper * b.lower).sqrt();
            if b.upper < 0.0 { -v } else { v }
        };
        let d = val - mean;
        (var, c) = kahan_inc(b.count * d * d, var, c);
    }
    (var + c) / h.count
}

/// Prometheus's `HistogramQuantile`; the second value asks for an info annotation
/// (`Some(true)`: NaN result, `Some(false)`: skewed by NaN observations).
pub(crate) fn histogram_quantile(q: f64, h: &FloatHistogram) -> (f64, Option<bool>) {
    if q < 0.0 {
        return (f64::NEG_INFINITY, None);
    }
    if q > 1.0 {
        return (f64::INFINITY, None);
    }
    if h.count == 0.0 || q.is_nan() {
        return (f64::NAN, None);
    }
    let forward = h.sum.is_nan() || q < 0.5;
    let mut buckets = h.all_buckets();
    if !forward {
        buckets.reverse();
    }
    let mut rank = if forward {
        q * h.count
    } else {
        (1.0 - q) * h.count
    };
    let mut count = 0.0;
    let mut at = 0usize;
    let mut bucket = None;
    while at < buckets.len() {
        let b = buckets[at];
        at += 1;
        if b.count == 0.0 {
            continue;
        }
        bucket = Some(b);
        count += b.count;
        if count >= rank {
            break;
        }
    }
    let Some(mut b) = bucket else {
        return (f64::NAN, None);
    };
    if !h.uses_custom_buckets() && b.lower < 0.0 && b.upper > 0.0 {
        if h.negative_buckets.is_empty() && !h.positive_buckets.is_empty() {
            b.lower = 0.0;
        } else if h.positive_buckets.is_empty() && !h.negative_buckets.is_empty() {
            b.upper = 0.0;
        }
    } else if h.uses_custom_buckets() {
        if b.lower == f64::NEG_INFINITY {
            if b.upper <= 0.0 {
                return (b.upper, None);
            }
            b.lower = 0.0;
        } else if b.upper == f64::INFINITY {
            return (b.lower, None);
        }
    }
    if count > h.count {
        count = h.count;
    }
    if count < rank {
        if h.sum.is_nan() {
            return (f64::NAN, Some(true));
        }
        return (b.upper, None);
    }
    if forward {
        rank -= count - b.count;
    } else {
        rank = count - rank;
    }
    let mut info = None;
    if h.sum.is_nan() {
        let rest: f64 = buckets[at..].iter().map(|b| b.count).sum();
        if count + rest < h.count {
            info = Some(false);
        }
    }
    let fraction = rank / b.count;
    if h.uses_custom_buckets() || (b.lower <= 0.0 && b.upper >= 0.0) {
        return (b.lower + (b.upper - b.lower) * fraction, info);
    }
    let ll = b.lower.abs().log2();
    let lu = b.upper.abs().log2();
    if b.lower > 0.0 {
        return ((ll + (lu - ll) * fraction).exp2(), info);
    }
    (-(lu + (ll - lu) * (1.0 - fraction)).exp2(), info)
}

/// Prometheus's `HistogramFraction`; the flag asks for the NaN-observations info.
pub(crate) fn histogram_fraction(lower: f64, upper: f64, h: &FloatHistogram) -> (f64, bool) {
    if h.count == 0.0 || lower.is_nan() || upper.is_nan() {
        return (f64::NAN, false);
    }
    if lower >= upper {
        return (0.0, false);
    }
    let (mut count, mut rank, mut lower_rank, mut upper_rank) = (0.0, 0.0, 0.0, 0.0);
    let (mut lower_set, mut upper_set) = (false, false);
    let buckets = h.all_buckets();
    let mut at = 0usize;
    while at < buckets.len() {
        let mut b = buckets[at];
        at += 1;
        count += b.count;
        let mut zero_bucket = false;
        if b.lower <= 0.0 && b.upper >= 0.0 {
            zero_bucket = true;
            if h.negative_buckets.is_empty() && !h.positive_buckets.is_empty() {
                b.lower = 0.0;
            } else if h.positive_buckets.is_empty() && !h.negative_buckets.is_empty() {
                b.upper = 0.0;
            }
        }
        let linear = |v: f64| rank + b.count * (v - b.lower) / (b.upper - b.lower);
        let exponential = |v: f64| {
            let (ll, lu, lv) = (b.lower.abs().log2(), b.upper.abs().log2(), v.abs().log2());
            let fr = if v > 0.0 {
                (lv - ll) / (lu - ll)
            } else {
                1.0 - ((lv - lu) / (ll - lu))
            };
            rank + b.count * fr
        };
        let interp = |v: f64| {
            if h.uses_custom_buckets() || zero_bucket {
                linear(v)
            } else {
                exponential(v)
            }
        };
        if !lower_set && b.lower >= lower {
            lower_rank = rank;
            lower_set = true;
        }
        if !upper_set && b.lower >= upper {
            upper_rank = rank;
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        if !lower_set && b.lower < lower && b.upper > lower {
            lower_rank = interp(lower);
            lower_set = true;
        }
        if !upper_set && b.lower < upper && b.upper > upper {
            upper_rank = interp(upper);
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        rank += b.count;
    }
    let mut info = false;
    if h.sum.is_nan() {
        count += buckets[at..].iter().map(|b| b.count).sum::<f64>();
        if count < h.count {
            info = true;
        }
    } else {
        count = h.count;
    }
    if !lower_set || lower_rank > count {
        lower_rank = count;
    }
    if !upper_set || upper_rank > count {
        upper_rank = count;
    }
    ((upper_rank - lower_rank) / h.count, info)
}

/// `histogram_fraction(lower, upper, v)` over native histograms (classic bucket series
/// are left to the caller).
pub(crate) fn eval_histogram_fraction(
    ev: &mut Evaluator,
    lower: &[f64],
    upper: &[f64],
    vec: &[Series],
    ctx: Ctx,
) -> Vec<Series> {
    let mut out = Vec::new();
    let mut infos = Vec::new();
    for s in vec.iter().filter(|s| !s.hpts.is_empty()) {
        let pts: Vec<Sample> = s
            .hpts
            .iter()
            .map(|p| {
                let i = ((p.t - ctx.start) / ctx.step.max(1)) as usize;
                let lo = lower.get(i).copied().unwrap_or(f64::NAN);
                let hi = upper.get(i).copied().unwrap_or(f64::NAN);
                let (v, info) = histogram_fraction(lo, hi, &p.h);
                if info {
                    infos.push(s.labels.metric_name().unwrap_or("").to_string());
                }
                Sample { t: p.t, v }
            })
            .collect();
        out.push(Series {
            labels: drop_metric_name(&s.labels),
            pts,
            hpts: Vec::new(),
        });
    }
    for name in infos {
        ev.info(format!(
            "PromQL info: input to histogram_fraction has NaN observations, which are excluded from all fractions for metric name {name:?}"
        ));
    }
    out
}

/// `sum`/`avg` over input holding histograms: per step and group, floats aggregate as
/// floats, histograms as histograms (avg: incremental mean), a group mixing both is
/// dropped with a warning, and so is one whose histograms cannot be added.
pub(crate) fn aggregate_sum_avg(
    ev: &mut Evaluator,
    avg: bool,
    input: Vec<Series>,
    series_group: &[usize],
    group_lbls: Vec<storeapi::Labels>,
    ctx: Ctx,
) -> Result<Vec<Series>, QueryError> {
    let ng = group_lbls.len();
    let mut fcur = vec![0usize; input.len()];
    let mut hcur = vec![0usize; input.len()];
    let mut out_f: Vec<Vec<Sample>> = vec![Vec::new(); ng];
    let mut out_h: Vec<Vec<HPoint>> = vec![Vec::new(); ng];
    let mut floats: Vec<Vec<f64>> = vec![Vec::new(); ng];
    let mut hists: Vec<Vec<(usize, &FloatHistogram)>> = vec![Vec::new(); ng];
    let op = if avg { "avg" } else { "sum" };
    for i in 0..ctx.n() {
        if i % 64 == 0 {
            ev.check_done()?;
        }
        let ts = ctx.ts(i);
        floats.iter_mut().for_each(Vec::clear);
        hists.iter_mut().for_each(Vec::clear);
        for (si, s) in input.iter().enumerate() {
            let g = series_group[si];
            let p = &mut fcur[si];
            while *p < s.pts.len() && s.pts[*p].t < ts {
                *p += 1;
            }
            if let Some(x) = s.pts.get(*p).filter(|x| x.t == ts) {
                floats[g].push(x.v);
            }
            let p = &mut hcur[si];
            while *p < s.hpts.len() && s.hpts[*p].t < ts {
                *p += 1;
            }
            if let Some(x) = s.hpts.get(*p).filter(|x| x.t == ts) {
                hists[g].push((si, &x.h));
            }
        }
        for g in 0..ng {
            match (floats[g].is_empty(), hists[g].is_empty()) {
                (true, true) => {}
                (false, false) => ev.warn(format!(
                    "PromQL warning: encountered a mix of histograms and floats for {op} aggregation"
                )),
                (false, true) => {
                    let v = if avg {
                        float_avg(&floats[g])
                    } else {
                        let (mut sum, mut c) = (0.0, 0.0);
                        for (k, v) in floats[g].iter().enumerate() {
                            if k == 0 {
                                sum = *v;
                            } else {
                                (sum, c) = kahan_inc(*v, sum, c);
                            }
                        }
                        sum + c
                    };
                    out_f[g].push(Sample { t: ts, v });
                }
                (true, false) => {
                    let hs = hists[g].iter().map(|(_, h)| *h);
                    let r = if avg {
                        avg_histograms(hs)
                    } else {
                        sum_histograms(hs)
                    };
                    match r {
                        Ok(mut h) => {
                            h.compact();
                            out_h[g].push(hpoint(ts, h));
                        }
                        Err(e) => {
                            let name = hists[g]
                                .first()
                                .and_then(|(si, _)| input[*si].labels.metric_name())
                                .unwrap_or("");
                            ev.warn(op_error_warning(e, name));
                        }
                    }
                }
            }
        }
    }
    let mut res = Vec::with_capacity(ng);
    for ((l, pts), hpts) in group_lbls.into_iter().zip(out_f).zip(out_h) {
        if !pts.is_empty() || !hpts.is_empty() {
            ev.add_samples(pts.len() + hpts.len())?;
            res.push(Series {
                labels: l,
                pts,
                hpts,
            });
        }
    }
    Ok(res)
}

/// The float `avg` aggregation as Prometheus computes it (Kahan sum, incremental mean
/// once the sum overflows).
fn float_avg(vs: &[f64]) -> f64 {
    let (mut sum, mut kc, mut mean, mut count) = (vs[0], 0.0, vs[0], 1.0);
    let mut incremental = false;
    for f in &vs[1..] {
        count += 1.0;
        if !incremental {
            let (v, c) = kahan_inc(*f, sum, kc);
            if !v.is_infinite() {
                sum = v;
                kc = c;
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            kc /= count - 1.0;
        }
        let q = (count - 1.0) / count;
        (mean, kc) = kahan_inc(f / count, q * mean, q * kc);
    }
    if incremental {
        mean + kc
    } else {
        sum / count + kc / count
    }
}

/// A histogram point at `t`.
pub(crate) fn hpoint(t: i64, h: FloatHistogram) -> HPoint {
    HPoint { t, h: Arc::new(h) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storeapi::histogram::Span;

    fn h(buckets: &[f64]) -> FloatHistogram {
        FloatHistogram {
            count: buckets.iter().sum(),
            sum: 10.0,
            positive_spans: vec![Span {
                offset: 0,
                length: buckets.len() as u32,
            }],
            positive_buckets: buckets.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn quantile_interpolates_exponentially() {
        // Buckets (0.5,1] and (1,2] with 1 and 3 observations.
        let x = h(&[1.0, 3.0]);
        assert_eq!(histogram_quantile(0.0, &x).0, 0.5);
        assert_eq!(histogram_quantile(1.0, &x).0, 2.0);
        // Median: rank 2 → a third into (1,2] on a log scale.
        let m = histogram_quantile(0.5, &x).0;
        assert!((m - 2f64.powf(1.0 / 3.0)).abs() < 1e-12, "{m}");
        assert!(histogram_quantile(0.5, &h(&[])).0.is_nan());
        assert_eq!(histogram_quantile(-1.0, &x).0, f64::NEG_INFINITY);
    }

    #[test]
    fn fraction_of_whole_range() {
        let x = h(&[1.0, 3.0]);
        assert_eq!(
            histogram_fraction(f64::NEG_INFINITY, f64::INFINITY, &x).0,
            1.0
        );
        assert_eq!(histogram_fraction(1.0, 2.0, &x).0, 0.75);
        assert_eq!(histogram_fraction(2.0, 1.0, &x).0, 0.0);
    }

    #[test]
    fn averages_incrementally() {
        let a = h(&[2.0, 4.0]);
        let b = h(&[4.0, 8.0]);
        let m = avg_histograms([&a, &b].into_iter()).unwrap();
        assert_eq!(m.positive_buckets, vec![3.0, 6.0]);
        let s = sum_histograms([&a, &b].into_iter()).unwrap();
        assert_eq!(s.count, 18.0);
    }
}
