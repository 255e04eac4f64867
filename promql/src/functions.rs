//! PromQL functions (Prometheus 3.5 `promql/functions.go` semantics, float samples).

use crate::engine::QueryError;
use crate::eval::{
    Ctx, Evaluator, Series, Val, check_unique, drop_metric_name, merge_same_labels, unwrap_parens,
    window,
};
use crate::value::HPoint;
use promql_parser::parser::{Call, Expr};
use storeapi::{Labels, Sample};

pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Prometheus's `quantile` over values (sorts `values`; NaN first).
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let w = rank - rank.floor();
    values[lower as usize] * (1.0 - w) + values[upper as usize] * w
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`.
pub(crate) fn fmt_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f == f64::INFINITY {
        "+Inf".into()
    } else if f == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{f}")
    }
}

/// Roughly Go's `%g`.
pub(crate) fn fmt_g(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f == f64::INFINITY {
        "+Inf".into()
    } else if f == f64::NEG_INFINITY {
        "-Inf".into()
    } else if f != 0.0 && (f.abs() >= 1e21 || f.abs() < 1e-4) {
        let s = format!("{f:e}");
        // Go writes e+XX with at least two exponent digits.
        match s.split_once('e') {
            Some((m, e)) => {
                let (sign, digits) = match e.strip_prefix('-') {
                    Some(d) => ("-", d),
                    None => ("+", e),
                };
                format!("{m}e{sign}{digits:0>2}")
            }
            None => s,
        }
    } else {
        format!("{f}")
    }
}

fn arg(c: &Call, i: usize) -> Result<&Expr, QueryError> {
    c.args.args.get(i).map(|b| b.as_ref()).ok_or_else(|| {
        QueryError::BadData(format!("missing argument {} to {}", i + 1, c.func.name))
    })
}

fn string_arg(c: &Call, i: usize) -> Result<String, QueryError> {
    match unwrap_parens(arg(c, i)?) {
        Expr::StringLiteral(s) => Ok(s.val.clone()),
        _ => Err(QueryError::BadData(format!(
            "expected string argument {} to {}",
            i + 1,
            c.func.name
        ))),
    }
}

fn is_range_fn(name: &str) -> bool {
    matches!(
        name,
        "rate"
            | "increase"
            | "delta"
            | "irate"
            | "idelta"
            | "deriv"
            | "predict_linear"
            | "changes"
            | "resets"
            | "avg_over_time"
            | "min_over_time"
            | "max_over_time"
            | "sum_over_time"
            | "count_over_time"
            | "quantile_over_time"
            | "stddev_over_time"
            | "stdvar_over_time"
            | "last_over_time"
            | "present_over_time"
            | "absent_over_time"
            | "mad_over_time"
            | "ts_of_max_over_time"
            | "ts_of_min_over_time"
            | "ts_of_last_over_time"
            | "double_exponential_smoothing"
            | "holt_winters"
    )
}

pub(crate) fn eval_call(ev: &mut Evaluator, c: &Call, ctx: Ctx) -> Result<Val, QueryError> {
    let name = c.func.name;
    let n = ctx.n();
    if is_range_fn(name) {
        return eval_range_fn(ev, c, ctx).map(Val::Vector);
    }
    match name {
        "time" => Ok(Val::Scalar(
            (0..n).map(|i| ctx.ts(i) as f64 / 1000.0).collect(),
        )),
        "pi" => Ok(Val::Scalar(vec![std::f64::consts::PI; n])),
        "vector" => {
            let v = ev.eval_scalar(arg(c, 0)?, ctx)?;
            let pts: Vec<Sample> = v
                .iter()
                .enumerate()
                .map(|(i, v)| Sample {
                    t: ctx.ts(i),
                    v: *v,
                })
                .collect();
            ev.add_samples(pts.len())?;
            Ok(Val::Vector(vec![Series {
                labels: Labels::empty(),
                pts,
                hpts: Vec::new(),
            }]))
        }
        "scalar" => {
            let vec = ev.eval_vector(arg(c, 0)?, ctx)?;
            let mut out = vec![f64::NAN; n];
            let mut cnt = vec![0u32; n];
            for s in &vec {
                for p in &s.pts {
                    let i = ((p.t - ctx.start) / ctx.step) as usize;
                    if i < n {
                        cnt[i] += 1;
                        out[i] = p.v;
                    }
                }
            }
            for i in 0..n {
                if cnt[i] != 1 {
                    out[i] = f64::NAN;
                }
            }
            Ok(Val::Scalar(out))
        }
        "timestamp" => {
            let a = unwrap_parens(arg(c, 0)?);
            if let Expr::VectorSelector(vs) = a {
                return ev.eval_vector_selector_timestamps(vs, ctx).map(Val::Vector);
            }
            let vec = ev.eval_vector(a, ctx)?;
            let out = vec
                .into_iter()
                .map(|s| Series {
                    labels: drop_metric_name(&s.labels),
                    pts: s
                        .pts
                        .iter()
                        .map(|p| Sample {
                            t: p.t,
                            v: p.t as f64 / 1000.0,
                        })
                        .collect(),
                    hpts: Vec::new(),
                })
                .collect();
            merge_same_labels(out).map(Val::Vector)
        }
        "absent" => {
            let a = arg(c, 0)?;
            let vec = ev.eval_vector(a, ctx)?;
            let mut present = vec![false; n];
            for s in &vec {
                for p in &s.pts {
                    let i = ((p.t - ctx.start) / ctx.step) as usize;
                    if i < n {
                        present[i] = true;
                    }
                }
            }
            let pts: Vec<Sample> = (0..n)
                .filter(|i| !present[*i])
                .map(|i| Sample {
                    t: ctx.ts(i),
                    v: 1.0,
                })
                .collect();
            if pts.is_empty() {
                return Ok(Val::Vector(Vec::new()));
            }
            Ok(Val::Vector(vec![Series {
                labels: absent_labels(a),
                pts,
                hpts: Vec::new(),
            }]))
        }
        "label_replace" => {
            let dst = string_arg(c, 1)?;
            let repl = string_arg(c, 2)?;
            let src = string_arg(c, 3)?;
            let re_s = string_arg(c, 4)?;
            let re = regex::Regex::new(&format!("^(?s:{re_s})$")).map_err(|_| {
                QueryError::Execution(format!(
                    "invalid regular expression in label_replace(): {re_s}"
                ))
            })?;
            if !storeapi::labels::is_valid_label_name(&dst) {
                return Err(QueryError::Execution(format!(
                    "invalid destination label name in label_replace(): {dst}"
                )));
            }
            let mut vec = ev.eval_vector(arg(c, 0)?, ctx)?;
            for s in &mut vec {
                let sv = s.labels.get(&src).unwrap_or("").to_string();
                if let Some(caps) = re.captures(&sv) {
                    let mut res = String::new();
                    caps.expand(&go_template(&repl), &mut res);
                    if res.is_empty() {
                        s.labels.remove(&dst);
                    } else {
                        s.labels.set(&dst, &res);
                    }
                }
            }
            check_unique(&vec)?;
            Ok(Val::Vector(vec))
        }
        "label_join" => {
            let dst = string_arg(c, 1)?;
            let sep = string_arg(c, 2)?;
            let mut srcs = Vec::new();
            for i in 3..c.args.args.len() {
                let s = string_arg(c, i)?;
                if !storeapi::labels::is_valid_label_name(&s) {
                    return Err(QueryError::Execution(format!(
                        "invalid source label name in label_join(): {s}"
                    )));
                }
                srcs.push(s);
            }
            if !storeapi::labels::is_valid_label_name(&dst) {
                return Err(QueryError::Execution(format!(
                    "invalid destination label name in label_join(): {dst}"
                )));
            }
            let mut vec = ev.eval_vector(arg(c, 0)?, ctx)?;
            for s in &mut vec {
                let vals: Vec<&str> = srcs.iter().map(|x| s.labels.get(x).unwrap_or("")).collect();
                let joined = vals.join(&sep);
                if joined.is_empty() {
                    s.labels.remove(&dst);
                } else {
                    s.labels.set(&dst, &joined);
                }
            }
            check_unique(&vec)?;
            Ok(Val::Vector(vec))
        }
        "sort" | "sort_desc" => {
            let mut vec = ev.eval_vector(arg(c, 0)?, ctx)?;
            // Histogram samples are dropped (Prometheus's `filterFloats`).
            vec.retain_mut(|s| {
                s.hpts.clear();
                !s.pts.is_empty()
            });
            if ctx.n() == 1 {
                let desc = name == "sort_desc";
                vec.sort_by(|a, b| {
                    let (x, y) = (a.pts[0].v, b.pts[0].v);
                    // NaN sorts last in both directions.
                    match (x.is_nan(), y.is_nan()) {
                        (true, true) => std::cmp::Ordering::Equal,
                        (true, false) => std::cmp::Ordering::Greater,
                        (false, true) => std::cmp::Ordering::Less,
                        _ => {
                            let o = x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
                            if desc { o.reverse() } else { o }
                        }
                    }
                });
            }
            Ok(Val::Vector(vec))
        }
        "sort_by_label" | "sort_by_label_desc" => {
            let mut names = Vec::new();
            for i in 1..c.args.args.len() {
                names.push(string_arg(c, i)?);
            }
            let mut vec = ev.eval_vector(arg(c, 0)?, ctx)?;
            let desc = name == "sort_by_label_desc";
            vec.sort_by(|a, b| {
                for l in &names {
                    let x = a.labels.get(l).unwrap_or("");
                    let y = b.labels.get(l).unwrap_or("");
                    if x == y {
                        continue;
                    }
                    let o = natural_cmp(x, y);
                    return if desc { o.reverse() } else { o };
                }
                let o = a.labels.cmp(&b.labels);
                if desc { o.reverse() } else { o }
            });
            Ok(Val::Vector(vec))
        }
        "histogram_quantile" => {
            let q = ev.eval_scalar(arg(c, 0)?, ctx)?;
            let vec = ev.eval_vector(arg(c, 1)?, ctx)?;
            crate::histogram::histogram_quantile(ev, &q, vec, ctx).map(Val::Vector)
        }
        "clamp" | "clamp_min" | "clamp_max" => {
            let vec = ev.eval_vector(arg(c, 0)?, ctx)?;
            let (lo, hi) = match name {
                "clamp" => (
                    ev.eval_scalar(arg(c, 1)?, ctx)?,
                    ev.eval_scalar(arg(c, 2)?, ctx)?,
                ),
                "clamp_min" => (ev.eval_scalar(arg(c, 1)?, ctx)?, vec![f64::INFINITY; n]),
                _ => (vec![f64::NEG_INFINITY; n], ev.eval_scalar(arg(c, 1)?, ctx)?),
            };
            map_vector(vec, ctx, |i, v| {
                let (mn, mx) = (lo[i], hi[i]);
                if mx < mn {
                    None
                } else {
                    Some(mn.max(mx.min(v)))
                }
            })
        }
        "round" => {
            let vec = ev.eval_vector(arg(c, 0)?, ctx)?;
            let to = if c.args.args.len() > 1 {
                ev.eval_scalar(arg(c, 1)?, ctx)?
            } else {
                vec![1.0; n]
            };
            map_vector(vec, ctx, |i, v| {
                let inv = 1.0 / to[i];
                Some((v * inv + 0.5).floor() / inv)
            })
        }
        "days_in_month" | "day_of_month" | "day_of_week" | "day_of_year" | "hour" | "minute"
        | "month" | "year" => {
            let f = date_fn(name);
            if c.args.args.is_empty() {
                let pts: Vec<Sample> = (0..n)
                    .map(|i| {
                        let ts = ctx.ts(i);
                        Sample {
                            t: ts,
                            v: f(ts.div_euclid(1000)),
                        }
                    })
                    .collect();
                return Ok(Val::Vector(vec![Series {
                    labels: Labels::empty(),
                    pts,
                    hpts: Vec::new(),
                }]));
            }
            let vec = ev.eval_vector(arg(c, 0)?, ctx)?;
            map_vector(vec, ctx, |_, v| {
                if v.is_nan() || v.is_infinite() || v.abs() > 9.2e18 {
                    // Go's int64 conversion of such values is implementation-defined;
                    // Prometheus effectively yields the date of the minimum time.
                    Some(f(i64::MIN / 1_000_000_000))
                } else {
                    Some(f(v as i64))
                }
            })
        }
        _ => {
            if let Some(f) = simple_fn(name) {
                let vec = ev.eval_vector(arg(c, 0)?, ctx)?;
                return map_vector(vec, ctx, |_, v| Some(f(v)));
            }
            if matches!(
                name,
                "histogram_count"
                    | "histogram_sum"
                    | "histogram_avg"
                    | "histogram_stddev"
                    | "histogram_stdvar"
            ) {
                let vec = ev.eval_vector(arg(c, 0)?, ctx)?;
                return Ok(Val::Vector(crate::native::simple_histogram_fn(name, vec)));
            }
            if name == "histogram_fraction" {
                let lower = ev.eval_scalar(arg(c, 0)?, ctx)?;
                let upper = ev.eval_scalar(arg(c, 1)?, ctx)?;
                let vec = ev.eval_vector(arg(c, 2)?, ctx)?;
                let out = crate::native::eval_histogram_fraction(ev, &lower, &upper, &vec, ctx);
                check_unique(&out)?;
                return Ok(Val::Vector(out));
            }
            if name.starts_with("histogram_") || name == "info" {
                return Err(QueryError::Execution(format!(
                    "function {name}() is not supported yet: native histograms and info() are not implemented"
                )));
            }
            Err(QueryError::BadData(format!(
                "unknown function with name {name:?}"
            )))
        }
    }
}

/// Applies `f(step index, value)` to every point, dropping the metric name.
fn map_vector(
    vec: Vec<Series>,
    ctx: Ctx,
    f: impl Fn(usize, f64) -> Option<f64>,
) -> Result<Val, QueryError> {
    let mut out = Vec::with_capacity(vec.len());
    for s in vec {
        let pts: Vec<Sample> = s
            .pts
            .iter()
            .filter_map(|p| {
                let i = ((p.t - ctx.start) / ctx.step) as usize;
                f(i, p.v).map(|v| Sample { t: p.t, v })
            })
            .collect();
        if !pts.is_empty() {
            out.push(Series {
                labels: drop_metric_name(&s.labels),
                pts,
                hpts: Vec::new(),
            });
        }
    }
    merge_same_labels(out).map(Val::Vector)
}

fn simple_fn(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "sqrt" => f64::sqrt,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sin" => f64::sin,
        "cos" => f64::cos,
        "tan" => f64::tan,
        "asin" => f64::asin,
        "acos" => f64::acos,
        "atan" => f64::atan,
        "sinh" => f64::sinh,
        "cosh" => f64::cosh,
        "tanh" => f64::tanh,
        "asinh" => f64::asinh,
        "acosh" => f64::acosh,
        "atanh" => f64::atanh,
        "rad" => |v| v * std::f64::consts::PI / 180.0,
        "deg" => |v| v * 180.0 / std::f64::consts::PI,
        "sgn" => |v: f64| {
            if v < 0.0 {
                -1.0
            } else if v > 0.0 {
                1.0
            } else {
                v
            }
        },
        _ => return None,
    })
}

/// Converts Go's `$1`/`${name}` template syntax to the regex crate's (same syntax,
/// except that Go treats `$1x` as the group named `1x`).
fn go_template(s: &str) -> String {
    s.to_string()
}

/// Natural sort order as Prometheus's `natsort.Compare` (digit runs compared numerically).
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < ab.len() && j < bb.len() {
        if ab[i].is_ascii_digit() && bb[j].is_ascii_digit() {
            let si = i;
            while i < ab.len() && ab[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < bb.len() && bb[j].is_ascii_digit() {
                j += 1;
            }
            let x = a[si..i].trim_start_matches('0');
            let y = b[sj..j].trim_start_matches('0');
            let o = x.len().cmp(&y.len()).then_with(|| x.cmp(y));
            if o != std::cmp::Ordering::Equal {
                return o;
            }
        } else {
            if ab[i] != bb[j] {
                return ab[i].cmp(&bb[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (ab.len() - i).cmp(&(bb.len() - j))
}

/// Labels for absent()/absent_over_time(): the equality matchers of a selector.
fn absent_labels(e: &Expr) -> Labels {
    let vs = match unwrap_parens(e) {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::empty(),
    };
    let mut out = Labels::empty();
    let mut has: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for m in &vs.matchers.matchers {
        if m.name == "__name__" {
            continue;
        }
        if matches!(m.op, promql_parser::label::MatchOp::Equal) && !has.contains(m.name.as_str()) {
            if m.value.is_empty() {
                out.remove(&m.name);
            } else {
                out.set(&m.name, &m.value);
            }
            has.insert(&m.name);
        } else {
            out.remove(&m.name);
        }
    }
    out
}

fn date_fn(name: &str) -> fn(i64) -> f64 {
    fn civil(secs: i64) -> (i64, u32, u32, i64, u32, u32, u32) {
        // (year, month, day, day of year, weekday, hour, minute)
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (hour, minute) = ((rem / 3600) as u32, ((rem % 3600) / 60) as u32);
        let weekday = ((days + 4).rem_euclid(7)) as u32;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = if m <= 2 { y + 1 } else { y };
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let mut yday = cum[(m - 1) as usize] + d as i64;
        if leap && m > 2 {
            yday += 1;
        }
        (y, m, d, yday, weekday, hour, minute)
    }
    match name {
        "days_in_month" => |s| {
            let (y, m, ..) = civil(s);
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let dim = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            dim[(m - 1) as usize] as f64
        },
        "day_of_month" => |s| civil(s).2 as f64,
        "day_of_week" => |s| civil(s).4 as f64,
        "day_of_year" => |s| civil(s).3 as f64,
        "hour" => |s| civil(s).5 as f64,
        "minute" => |s| civil(s).6 as f64,
        "month" => |s| civil(s).1 as f64,
        _ => |s| civil(s).0 as f64,
    }
}

// ------------------------------------------------------------------ range functions

pub(crate) const RF_RATE: u8 = 0;
pub(crate) const RF_INCREASE: u8 = 1;
pub(crate) const RF_DELTA: u8 = 2;
pub(crate) const RF_IRATE: u8 = 3;
pub(crate) const RF_IDELTA: u8 = 4;
pub(crate) const RF_DERIV: u8 = 5;
pub(crate) const RF_PREDICT_LINEAR: u8 = 6;
pub(crate) const RF_CHANGES: u8 = 7;
pub(crate) const RF_RESETS: u8 = 8;
pub(crate) const RF_AVG_OVER_TIME: u8 = 9;
pub(crate) const RF_SUM_OVER_TIME: u8 = 10;
pub(crate) const RF_MIN_OVER_TIME: u8 = 11;
pub(crate) const RF_MAX_OVER_TIME: u8 = 12;
pub(crate) const RF_TS_OF_MIN_OVER_TIME: u8 = 13;
pub(crate) const RF_TS_OF_MAX_OVER_TIME: u8 = 14;
pub(crate) const RF_COUNT_OVER_TIME: u8 = 15;
pub(crate) const RF_LAST_OVER_TIME: u8 = 16;
pub(crate) const RF_TS_OF_LAST_OVER_TIME: u8 = 17;
pub(crate) const RF_PRESENT_OVER_TIME: u8 = 18;
pub(crate) const RF_ABSENT_OVER_TIME: u8 = 19;
pub(crate) const RF_QUANTILE_OVER_TIME: u8 = 20;
pub(crate) const RF_MAD_OVER_TIME: u8 = 21;
pub(crate) const RF_STDDEV_OVER_TIME: u8 = 22;
pub(crate) const RF_STDVAR_OVER_TIME: u8 = 23;
pub(crate) const RF_DOUBLE_EXPONENTIAL_SMOOTHING: u8 = 24;
pub(crate) const RF_HOLT_WINTERS: u8 = 25;

fn range_fn_code(name: &str) -> u8 {
    match name {
        "rate" => RF_RATE,
        "increase" => RF_INCREASE,
        "delta" => RF_DELTA,
        "irate" => RF_IRATE,
        "idelta" => RF_IDELTA,
        "deriv" => RF_DERIV,
        "predict_linear" => RF_PREDICT_LINEAR,
        "changes" => RF_CHANGES,
        "resets" => RF_RESETS,
        "avg_over_time" => RF_AVG_OVER_TIME,
        "sum_over_time" => RF_SUM_OVER_TIME,
        "min_over_time" => RF_MIN_OVER_TIME,
        "max_over_time" => RF_MAX_OVER_TIME,
        "ts_of_min_over_time" => RF_TS_OF_MIN_OVER_TIME,
        "ts_of_max_over_time" => RF_TS_OF_MAX_OVER_TIME,
        "count_over_time" => RF_COUNT_OVER_TIME,
        "last_over_time" => RF_LAST_OVER_TIME,
        "ts_of_last_over_time" => RF_TS_OF_LAST_OVER_TIME,
        "present_over_time" => RF_PRESENT_OVER_TIME,
        "absent_over_time" => RF_ABSENT_OVER_TIME,
        "quantile_over_time" => RF_QUANTILE_OVER_TIME,
        "mad_over_time" => RF_MAD_OVER_TIME,
        "stddev_over_time" => RF_STDDEV_OVER_TIME,
        "stdvar_over_time" => RF_STDVAR_OVER_TIME,
        "double_exponential_smoothing" => RF_DOUBLE_EXPONENTIAL_SMOOTHING,
        "holt_winters" => RF_HOLT_WINTERS,
        _ => u8::MAX,
    }
}

fn eval_range_fn(ev: &mut Evaluator, c: &Call, ctx: Ctx) -> Result<Vec<Series>, QueryError> {
    let name = c.func.name;
    let n = ctx.n();
    // Position of the range argument and scalar parameters.
    let (mi, params): (usize, Vec<Vec<f64>>) = match name {
        "quantile_over_time" => (1, vec![ev.eval_scalar(arg(c, 0)?, ctx)?]),
        "predict_linear" => (0, vec![ev.eval_scalar(arg(c, 1)?, ctx)?]),
        "double_exponential_smoothing" | "holt_winters" => (
            0,
            vec![
                ev.eval_scalar(arg(c, 1)?, ctx)?,
                ev.eval_scalar(arg(c, 2)?, ctx)?,
            ],
        ),
        _ => (0, Vec::new()),
    };
    let marg = arg(c, mi)?;
    let src = ev.range_source(marg, ctx)?;
    if name == "quantile_over_time" {
        let q = &params[0];
        for v in q {
            if v.is_nan() || *v < 0.0 || *v > 1.0 {
                ev.warn(format!(
                    "PromQL warning: quantile value should be between 0 and 1, got {}",
                    fmt_g(*v)
                ));
                break;
            }
        }
    }
    let drop_name = name != "last_over_time";
    let code = range_fn_code(name);
    let range = src.range;
    let offset = src.offset;
    let at = src.at;
    let counted = src.counted;
    let mut out: Vec<Series> = Vec::with_capacity(src.series.len());
    let mut any_non_counter: Option<String> = None;
    let mut scratch: Vec<f64> = Vec::new();
    for s in src.series {
        ev.check_done()?;
        if !s.hpts.is_empty() {
            let (res, hres) = histogram_range_series(
                ev,
                code,
                &s,
                ctx,
                (range, offset, at),
                counted,
                &params,
                &mut scratch,
            )?;
            if !res.is_empty() || !hres.is_empty() {
                if (name == "rate" || name == "increase")
                    && !res.is_empty()
                    && any_non_counter.is_none()
                    && let Some(mn) = s.labels.metric_name()
                    && !mn.is_empty()
                    && !mn.ends_with("_total")
                    && !mn.ends_with("_sum")
                    && !mn.ends_with("_count")
                    && !mn.ends_with("_bucket")
                {
                    any_non_counter = Some(mn.to_string());
                }
                ev.add_samples(res.len() + hres.len())?;
                let labels = if drop_name {
                    drop_metric_name(&s.labels)
                } else {
                    s.labels
                };
                out.push(Series {
                    labels,
                    pts: res,
                    hpts: hres,
                });
            }
            continue;
        }
        let pts = &s.pts;
        let mut res: Vec<Sample> = Vec::new();
        let (mut lo, mut hi) = (0usize, 0usize);
        #[allow(clippy::needless_range_loop)]
        for i in 0..n {
            let ts = ctx.ts(i);
            let rt = at.unwrap_or(ts) - offset;
            let mint = rt - range;
            if at.is_some() {
                let w = window(pts, mint, rt);
                lo = w.0;
                hi = w.1;
            } else {
                while lo < pts.len() && pts[lo].t <= mint {
                    lo += 1;
                }
                if hi < lo {
                    hi = lo;
                }
                while hi < pts.len() && pts[hi].t <= rt {
                    hi += 1;
                }
            }
            let w = &pts[lo..hi];
            if w.is_empty() {
                continue;
            }
            if ev.cur_samples + w.len() > ev.max_samples {
                return Err(crate::eval::too_many_samples());
            }
            ev.total_samples += w.len() as u64;
            ev.peak_samples = ev.peak_samples.max(ev.cur_samples + w.len());
            let v = float_range_value(code, w, rt, range, counted, &params, i, ts, &mut scratch)?;
            if let Some(v) = v {
                res.push(Sample { t: ts, v });
            }
        }
        if !res.is_empty() {
            if (name == "rate" || name == "increase")
                && any_non_counter.is_none()
                && let Some(mn) = s.labels.metric_name()
                && !mn.is_empty()
                && !mn.ends_with("_total")
                && !mn.ends_with("_sum")
                && !mn.ends_with("_count")
                && !mn.ends_with("_bucket")
            {
                any_non_counter = Some(mn.to_string());
            }
            ev.add_samples(res.len())?;
            let labels = if drop_name {
                drop_metric_name(&s.labels)
            } else {
                s.labels
            };
            out.push(Series {
                labels,
                pts: res,
                hpts: Vec::new(),
            });
        }
    }
    if let Some(mn) = any_non_counter {
        ev.info(format!(
            "PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: {mn:?}"
        ));
    }
    if name == "absent_over_time" {
        let mut present = vec![false; n];
        for s in &out {
            for p in &s.pts {
                let i = ((p.t - ctx.start) / ctx.step) as usize;
                if i < n {
                    present[i] = true;
                }
            }
        }
        let pts: Vec<Sample> = (0..n)
            .filter(|i| !present[*i])
            .map(|i| Sample {
                t: ctx.ts(i),
                v: 1.0,
            })
            .collect();
        if pts.is_empty() {
            return Ok(Vec::new());
        }
        return Ok(vec![Series {
            labels: absent_labels(marg),
            pts,
            hpts: Vec::new(),
        }]);
    }
    check_unique(&out)?;
    Ok(out)
}

/// A range function over a series holding histograms: per step, the float and histogram
/// samples in the window go to [`crate::native::range_step`].
#[allow(clippy::too_many_arguments)]
fn histogram_range_series(
    ev: &mut Evaluator,
    code: u8,
    s: &Series,
    ctx: Ctx,
    (range, offset, at): (i64, i64, Option<i64>),
    counted: bool,
    params: &[Vec<f64>],
    scratch: &mut Vec<f64>,
) -> Result<(Vec<Sample>, Vec<HPoint>), QueryError> {
    let metric = s.labels.metric_name().unwrap_or("").to_string();
    let (mut res, mut hres) = (Vec::new(), Vec::new());
    for i in 0..ctx.n() {
        let ts = ctx.ts(i);
        let rt = at.unwrap_or(ts) - offset;
        let (lo, hi) = window(&s.pts, rt - range, rt);
        let (hlo, hhi) = crate::eval::hwindow(&s.hpts, rt - range, rt);
        let k = (hi - lo) + (hhi - hlo);
        if k == 0 {
            continue;
        }
        if ev.cur_samples + k > ev.max_samples {
            return Err(crate::eval::too_many_samples());
        }
        ev.total_samples += k as u64;
        ev.peak_samples = ev.peak_samples.max(ev.cur_samples + k);
        match crate::native::range_step(
            ev,
            code,
            &metric,
            &s.pts[lo..hi],
            &s.hpts[hlo..hhi],
            rt,
            range,
            counted,
            params,
            i,
            ts,
            scratch,
        )? {
            Some(crate::native::Out::F(v)) => res.push(Sample { t: ts, v }),
            Some(crate::native::Out::H(h)) => hres.push(crate::native::hpoint(ts, h)),
            None => {}
        }
    }
    Ok((res, hres))
}

/// The value of a float range function over one window `w` (non-empty) at step `i`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn float_range_value(
    code: u8,
    w: &[Sample],
    rt: i64,
    range: i64,
    counted: bool,
    params: &[Vec<f64>],
    i: usize,
    ts: i64,
    scratch: &mut Vec<f64>,
) -> Result<Option<f64>, QueryError> {
    let eff_ts = ts;
    let v = match code {
        RF_RATE => extrapolated_rate(w, rt - range, rt, range, true, true),
        RF_INCREASE => extrapolated_rate(w, rt - range, rt, range, true, false),
        RF_DELTA => extrapolated_rate(w, rt - range, rt, range, false, false),
        RF_IRATE => instant_value(w, true),
        RF_IDELTA => instant_value(w, false),
        RF_DERIV => {
            if w.len() < 2 {
                None
            } else {
                Some(linear_regression(w, w[0].t).0)
            }
        }
        RF_PREDICT_LINEAR => {
            if w.len() < 2 {
                None
            } else {
                let (slope, icpt) = linear_regression(w, eff_ts);
                Some(slope * params[0][i] + icpt)
            }
        }
        RF_CHANGES => {
            let mut c = 0;
            for x in w.windows(2) {
                if x[1].v != x[0].v && !(x[1].v.is_nan() && x[0].v.is_nan()) {
                    c += 1;
                }
            }
            Some(c as f64)
        }
        RF_RESETS => {
            let mut c = 0;
            for x in w.windows(2) {
                if x[1].v < x[0].v {
                    c += 1;
                }
            }
            Some(c as f64)
        }
        RF_AVG_OVER_TIME => Some(avg_over_time(w)),
        RF_SUM_OVER_TIME => {
            let (mut sum, mut c) = (0.0, 0.0);
            for p in w {
                (sum, c) = kahan_inc(p.v, sum, c);
            }
            Some(if sum.is_infinite() { sum } else { sum + c })
        }
        RF_MIN_OVER_TIME | RF_MAX_OVER_TIME | RF_TS_OF_MIN_OVER_TIME | RF_TS_OF_MAX_OVER_TIME => {
            let is_max = code == RF_MAX_OVER_TIME || code == RF_TS_OF_MAX_OVER_TIME;
            let ts_of = code == RF_TS_OF_MIN_OVER_TIME || code == RF_TS_OF_MAX_OVER_TIME;
            let mut best = w[0].v;
            let mut best_t = w[0].t;
            for p in w {
                let better = if is_max {
                    if ts_of {
                        p.v >= best || best.is_nan()
                    } else {
                        p.v > best || best.is_nan()
                    }
                } else if ts_of {
                    p.v <= best || best.is_nan()
                } else {
                    p.v < best || best.is_nan()
                };
                if better {
                    best = p.v;
                    best_t = p.t;
                }
            }
            Some(if ts_of { best_t as f64 / 1000.0 } else { best })
        }
        RF_COUNT_OVER_TIME if counted => Some(w.iter().map(|p| p.v).sum()),
        RF_COUNT_OVER_TIME => Some(w.len() as f64),
        RF_LAST_OVER_TIME => Some(w[w.len() - 1].v),
        RF_TS_OF_LAST_OVER_TIME => Some(w[w.len() - 1].t as f64 / 1000.0),
        RF_PRESENT_OVER_TIME | RF_ABSENT_OVER_TIME => Some(1.0),
        RF_QUANTILE_OVER_TIME => {
            scratch.clear();
            scratch.extend(w.iter().map(|p| p.v));
            Some(quantile(params[0][i], scratch))
        }
        RF_MAD_OVER_TIME => {
            scratch.clear();
            scratch.extend(w.iter().map(|p| p.v));
            let med = quantile(0.5, scratch);
            scratch.clear();
            scratch.extend(w.iter().map(|p| (p.v - med).abs()));
            Some(quantile(0.5, scratch))
        }
        RF_STDDEV_OVER_TIME | RF_STDVAR_OVER_TIME => {
            let (mut count, mut mean, mut cmean, mut aux, mut caux) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for p in w {
                count += 1.0;
                let delta = p.v - (mean + cmean);
                (mean, cmean) = kahan_inc(delta / count, mean, cmean);
                (aux, caux) = kahan_inc(delta * (p.v - (mean + cmean)), aux, caux);
            }
            let var = (aux + caux) / count;
            Some(if code == RF_STDDEV_OVER_TIME {
                var.sqrt()
            } else {
                var
            })
        }
        RF_DOUBLE_EXPONENTIAL_SMOOTHING | RF_HOLT_WINTERS => {
            let sf = params[0][i];
            let tf = params[1][i];
            if sf <= 0.0 || sf >= 1.0 {
                return Err(QueryError::Execution(format!(
                    "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:.6}"
                )));
            }
            if tf <= 0.0 || tf >= 1.0 {
                return Err(QueryError::Execution(format!(
                    "invalid trend factor. Expected: 0 < tf < 1, got: {tf:.6}"
                )));
            }
            double_exp_smoothing(w, sf, tf)
        }
        _ => None,
    };
    Ok(v)
}

fn avg_over_time(w: &[Sample]) -> f64 {
    let (mut sum, mut count) = (w[0].v, 1.0);
    let (mut mean, mut kc) = (0.0, 0.0);
    let mut incremental = false;
    for (i, p) in w[1..].iter().enumerate() {
        count = (i + 2) as f64;
        if !incremental {
            let (ns, nc) = kahan_inc(p.v, sum, kc);
            if !ns.is_infinite() {
                sum = ns;
                kc = nc;
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            kc /= count - 1.0;
        }
        let q = (count - 1.0) / count;
        (mean, kc) = kahan_inc(p.v / count, q * mean, q * kc);
    }
    if incremental {
        mean + kc
    } else {
        sum / count + kc / count
    }
}

/// Prometheus's extrapolated rate/increase/delta over a left-open window.
pub(crate) fn extrapolated_rate(
    w: &[Sample],
    range_start: i64,
    range_end: i64,
    range: i64,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let first = w[0];
    let last = w[w.len() - 1];
    let mut result = last.v - first.v;
    if is_counter {
        let mut prev = first.v;
        for p in &w[1..] {
            if p.v < prev {
                result += prev;
            }
            prev = p.v;
        }
    }
    let mut to_start = (first.t - range_start) as f64 / 1000.0;
    let mut to_end = (range_end - last.t) as f64 / 1000.0;
    let sampled = (last.t - first.t) as f64 / 1000.0;
    let avg = sampled / (w.len() - 1) as f64;
    let threshold = avg * 1.1;
    let mut extrapolate_to = sampled;
    if to_start >= threshold {
        to_start = avg / 2.0;
    }
    if is_counter && result > 0.0 && first.v >= 0.0 {
        let to_zero = sampled * (first.v / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    extrapolate_to += to_start;
    if to_end >= threshold {
        to_end = avg / 2.0;
    }
    extrapolate_to += to_end;
    let mut factor = extrapolate_to / sampled;
    if is_rate {
        factor /= range as f64 / 1000.0;
    }
    Some(result * factor)
}

fn instant_value(w: &[Sample], is_rate: bool) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let a = w[w.len() - 2];
    let b = w[w.len() - 1];
    let dt = b.t - a.t;
    if dt == 0 {
        return None;
    }
    let mut v = b.v;
    if !is_rate || b.v >= a.v || b.v.is_nan() || a.v.is_nan() {
        v = b.v - a.v;
    }
    if is_rate {
        v /= dt as f64 / 1000.0;
    }
    Some(v)
}

fn linear_regression(w: &[Sample], intercept_t: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy, mut sxy, mut cxy, mut sx2, mut cx2) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let init_y = w[0].v;
    let mut const_y = true;
    for (i, p) in w.iter().enumerate() {
        if const_y && i > 0 && p.v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (p.t - intercept_t) as f64 / 1e3;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(p.v, sy, cy);
        (sxy, cxy) = kahan_inc(x * p.v, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    sx += cx;
    sy += cy;
    sxy += cxy;
    sx2 += cx2;
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    let icpt = sy / n - slope * sx / n;
    (slope, icpt)
}

fn double_exp_smoothing(w: &[Sample], sf: f64, tf: f64) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let mut s0 = 0.0;
    let mut s1 = w[0].v;
    let mut b = w[1].v - w[0].v;
    for (i, p) in w.iter().enumerate().skip(1) {
        let x = sf * p.v;
        b = if i - 1 == 0 {
            b
        } else {
            tf * (s1 - s0) + (1.0 - tf) * b
        };
        let y = (1.0 - sf) * (s1 + b);
        s0 = s1;
        s1 = x + y;
    }
    Some(s1)
}
