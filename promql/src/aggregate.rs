//! Aggregation operators (sum, avg, topk, quantile, count_values, ...).

use crate::binop::StepCursor;
use crate::engine::QueryError;
use crate::eval::{Ctx, Evaluator, Series};
use crate::functions::{kahan_inc, quantile};
use promql_parser::parser::token::{self, TokenId};
use std::collections::HashMap;
use storeapi::{Label, Labels, Sample};

fn group_labels(l: &Labels, without: bool, grouping: &[String]) -> Labels {
    let v: Vec<Label> = l
        .iter()
        .filter(|lab| {
            if without {
                lab.name != "__name__"
                    && lab.name != "__type__"
                    && lab.name != "__unit__"
                    && !grouping.iter().any(|g| g == lab.name)
            } else {
                grouping.iter().any(|g| g == lab.name)
            }
        })
        .cloned()
        .collect();
    Labels::from_sorted_unchecked(v)
}

#[derive(Clone, Default)]
struct Group {
    seen: bool,
    value: f64,
    mean: f64,
    kahan: f64,
    count: f64,
    incremental: bool,
    heap: Vec<f64>,
}

pub(crate) fn aggregate(
    ev: &mut Evaluator,
    op: TokenId,
    input: Vec<Series>,
    param: Option<Vec<f64>>,
    without: bool,
    grouping: &[String],
    ctx: Ctx,
) -> Result<Vec<Series>, QueryError> {
    let n = ctx.n();
    // Groups, computed once per input series.
    let mut key_to_group: HashMap<Labels, usize> = HashMap::new();
    let mut group_lbls: Vec<Labels> = Vec::new();
    let mut series_group: Vec<usize> = Vec::with_capacity(input.len());
    for s in &input {
        let gl = group_labels(&s.labels, without, grouping);
        let g = match key_to_group.get(&gl) {
            Some(g) => *g,
            None => {
                let g = group_lbls.len();
                key_to_group.insert(gl.clone(), g);
                group_lbls.push(gl);
                g
            }
        };
        series_group.push(g);
    }
    let ng = group_lbls.len();

    let mut input = input;
    if input.iter().any(|s| !s.hpts.is_empty()) {
        match op {
            token::T_SUM | token::T_AVG => {
                return crate::native::aggregate_sum_avg(
                    ev,
                    op == token::T_AVG,
                    input,
                    &series_group,
                    group_lbls,
                    ctx,
                );
            }
            token::T_COUNT | token::T_GROUP | token::T_LIMITK | token::T_LIMIT_RATIO => {
                // Histograms count like floats here; their values are never read.
                for s in input.iter_mut().filter(|s| !s.hpts.is_empty()) {
                    s.pts
                        .extend(s.hpts.drain(..).map(|h| Sample { t: h.t, v: 0.0 }));
                    s.pts.sort_by_key(|p| p.t);
                }
            }
            _ => {
                // Every other aggregation ignores histograms, with an info.
                let name = match op {
                    token::T_MIN => "min",
                    token::T_MAX => "max",
                    token::T_TOPK => "topk",
                    token::T_BOTTOMK => "bottomk",
                    token::T_STDDEV => "stddev",
                    token::T_STDVAR => "stdvar",
                    token::T_QUANTILE => "quantile",
                    _ => "count_values",
                };
                ev.info(format!(
                    "PromQL info: ignored histogram in {name} aggregation"
                ));
                for s in input.iter_mut() {
                    s.hpts.clear();
                }
            }
        }
    }

    if matches!(
        op,
        token::T_TOPK | token::T_BOTTOMK | token::T_LIMITK | token::T_LIMIT_RATIO
    ) {
        return aggregate_k(
            ev,
            op,
            input,
            param.unwrap_or_default(),
            &series_group,
            ng,
            ctx,
        );
    }

    if op == token::T_QUANTILE
        && let Some(p) = &param
    {
        {
            if p.iter().any(|q| q.is_nan()) {
                ev.warn("PromQL warning: quantile value should be between 0 and 1, got NaN".into());
            }
            let mx = p.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let mn = p.iter().cloned().fold(f64::INFINITY, f64::min);
            if mx > 1.0 {
                ev.warn(format!(
                    "PromQL warning: quantile value should be between 0 and 1, got {}",
                    crate::functions::fmt_g(mx)
                ));
            }
            if mn < 0.0 {
                ev.warn(format!(
                    "PromQL warning: quantile value should be between 0 and 1, got {}",
                    crate::functions::fmt_g(mn)
                ));
            }
        }
    }

    let mut out: Vec<Vec<Sample>> = vec![Vec::new(); ng];
    let mut groups: Vec<Group> = vec![Group::default(); ng];
    let mut cur = StepCursor::new(input.len());
    for i in 0..n {
        if i % 64 == 0 {
            ev.check_done()?;
        }
        let ts = ctx.ts(i);
        for g in groups.iter_mut() {
            g.seen = false;
        }
        for si in 0..input.len() {
            let Some(f) = cur.at(&input, si, ts) else {
                continue;
            };
            let g = &mut groups[series_group[si]];
            if !g.seen {
                g.seen = true;
                g.value = f;
                g.mean = f;
                g.kahan = 0.0;
                g.count = 1.0;
                g.incremental = false;
                match op {
                    token::T_STDDEV | token::T_STDVAR => {
                        g.value = if f.is_nan() || f.is_infinite() {
                            f64::NAN
                        } else {
                            0.0
                        };
                    }
                    token::T_QUANTILE => {
                        g.heap.clear();
                        g.heap.push(f);
                    }
                    token::T_GROUP => g.value = 1.0,
                    _ => {}
                }
                continue;
            }
            match op {
                token::T_SUM => {
                    let (v, c) = kahan_inc(f, g.value, g.kahan);
                    g.value = v;
                    g.kahan = c;
                }
                token::T_AVG => {
                    g.count += 1.0;
                    if !g.incremental {
                        let (v, c) = kahan_inc(f, g.value, g.kahan);
                        if !v.is_infinite() {
                            g.value = v;
                            g.kahan = c;
                            continue;
                        }
                        g.incremental = true;
                        g.mean = g.value / (g.count - 1.0);
                        g.kahan /= g.count - 1.0;
                    }
                    let q = (g.count - 1.0) / g.count;
                    let (m, c) = kahan_inc(f / g.count, q * g.mean, q * g.kahan);
                    g.mean = m;
                    g.kahan = c;
                }
                token::T_GROUP => {}
                token::T_MAX => {
                    if g.value < f || g.value.is_nan() {
                        g.value = f;
                    }
                }
                token::T_MIN => {
                    if g.value > f || g.value.is_nan() {
                        g.value = f;
                    }
                }
                token::T_COUNT => g.count += 1.0,
                token::T_STDDEV | token::T_STDVAR => {
                    g.count += 1.0;
                    let delta = f - g.mean;
                    g.mean += delta / g.count;
                    g.value += delta * (f - g.mean);
                }
                token::T_QUANTILE => g.heap.push(f),
                _ => {
                    return Err(QueryError::BadData(format!(
                        "unsupported aggregation operator {op}"
                    )));
                }
            }
        }
        for (gi, g) in groups.iter_mut().enumerate() {
            if !g.seen {
                continue;
            }
            let v = match op {
                token::T_AVG => {
                    if g.incremental {
                        g.mean + g.kahan
                    } else {
                        g.value / g.count + g.kahan / g.count
                    }
                }
                token::T_COUNT => g.count,
                token::T_STDVAR => g.value / g.count,
                token::T_STDDEV => (g.value / g.count).sqrt(),
                token::T_QUANTILE => {
                    let q = param
                        .as_ref()
                        .and_then(|p| p.get(i).copied())
                        .unwrap_or(f64::NAN);
                    quantile(q, &mut g.heap)
                }
                token::T_SUM => g.value + g.kahan,
                _ => g.value,
            };
            out[gi].push(Sample { t: ts, v });
        }
    }
    let mut res = Vec::with_capacity(ng);
    for (l, pts) in group_lbls.into_iter().zip(out) {
        if !pts.is_empty() {
            ev.add_samples(pts.len())?;
            res.push(Series {
                labels: l,
                pts,
                hpts: Vec::new(),
            });
        }
    }
    Ok(res)
}

fn aggregate_k(
    ev: &mut Evaluator,
    op: TokenId,
    input: Vec<Series>,
    param: Vec<f64>,
    series_group: &[usize],
    ng: usize,
    ctx: Ctx,
) -> Result<Vec<Series>, QueryError> {
    let n = ctx.n();
    if op == token::T_LIMIT_RATIO {
        let mx = param.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let mn = param.iter().cloned().fold(f64::INFINITY, f64::min);
        if mx > 1.0 {
            ev.warn(format!(
                "PromQL warning: ratio value should be between -1 and 1, got {}, capping to 1",
                crate::functions::fmt_g(mx)
            ));
        }
        if mn < -1.0 {
            ev.warn(format!(
                "PromQL warning: ratio value should be between -1 and 1, got {}, capping to -1",
                crate::functions::fmt_g(mn)
            ));
        }
    }
    let mut out: Vec<Vec<Sample>> = vec![Vec::new(); input.len()];
    let mut order: Vec<usize> = Vec::new();
    let mut emitted = vec![false; input.len()];
    let mut cur = StepCursor::new(input.len());
    let mut heaps: Vec<Vec<(usize, f64)>> = vec![Vec::new(); ng];
    for i in 0..n {
        if i % 64 == 0 {
            ev.check_done()?;
        }
        let ts = ctx.ts(i);
        let p = param.get(i).copied().unwrap_or(f64::NAN);
        for h in heaps.iter_mut() {
            h.clear();
        }
        let mut vals: Vec<(usize, f64)> = Vec::new();
        for si in 0..input.len() {
            if let Some(v) = cur.at(&input, si, ts) {
                vals.push((si, v));
            }
        }
        if vals.is_empty() {
            continue;
        }
        let k: i64 = match op {
            token::T_TOPK | token::T_BOTTOMK | token::T_LIMITK => {
                // Go's convertibleToInt64: NaN and out-of-range values overflow.
                if p.is_nan() || !(-9.223372036854776e18..9.223372036854776e18).contains(&p) {
                    return Err(QueryError::Execution(format!(
                        "Scalar value {} overflows int64",
                        crate::functions::fmt_g(p)
                    )));
                }
                (p as i64).min(input.len() as i64)
            }
            _ => 0,
        };
        if op == token::T_LIMIT_RATIO && p.is_nan() {
            return Err(QueryError::Execution("Ratio value NaN is NaN".into()));
        }
        if matches!(op, token::T_TOPK | token::T_BOTTOMK | token::T_LIMITK) && k < 1 {
            continue;
        }
        for (si, v) in vals {
            heaps[series_group[si]].push((si, v));
        }
        for h in heaps.iter_mut() {
            if h.is_empty() {
                continue;
            }
            let chosen: Vec<(usize, f64)> = match op {
                token::T_TOPK | token::T_BOTTOMK => {
                    let top = op == token::T_TOPK;
                    // Larger first for topk (NaN last), smaller first for bottomk (NaN last).
                    h.sort_by(|a, b| {
                        let (x, y) = (a.1, b.1);
                        match (x.is_nan(), y.is_nan()) {
                            (true, true) => std::cmp::Ordering::Equal,
                            (true, false) => std::cmp::Ordering::Greater,
                            (false, true) => std::cmp::Ordering::Less,
                            _ => {
                                if top {
                                    y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal)
                                } else {
                                    x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal)
                                }
                            }
                        }
                    });
                    h.iter().take(k as usize).copied().collect()
                }
                token::T_LIMITK => h.iter().take(k as usize).copied().collect(),
                _ => {
                    let r = p.clamp(-1.0, 1.0);
                    h.iter()
                        .filter(|(si, _)| ratio_keep(r, &input[*si].labels))
                        .copied()
                        .collect()
                }
            };
            for (si, v) in chosen {
                out[si].push(Sample { t: ts, v });
                if !emitted[si] {
                    emitted[si] = true;
                    order.push(si);
                }
            }
        }
    }
    let mut slots: Vec<Option<Series>> = input.into_iter().map(Some).collect();
    let mut res = Vec::with_capacity(order.len());
    for si in order {
        if let Some(s) = slots[si].take() {
            let pts = std::mem::take(&mut out[si]);
            ev.add_samples(pts.len())?;
            res.push(Series {
                labels: s.labels,
                pts,
                hpts: Vec::new(),
            });
        }
    }
    Ok(res)
}

/// limit_ratio's deterministic sampling: a series is kept when its label hash falls in
/// the ratio's share of the hash space.
fn ratio_keep(r: f64, l: &Labels) -> bool {
    let mut b = Vec::new();
    for lab in l.iter() {
        b.extend_from_slice(lab.name.as_bytes());
        b.push(0xff);
        b.extend_from_slice(lab.value.as_bytes());
        b.push(0xff);
    }
    let h = xxhash_rust::xxh64::xxh64(&b, 0);
    let sample_offset = h as f64 / u64::MAX as f64;
    (r >= 0.0 && sample_offset < r) || (r < 0.0 && sample_offset >= 1.0 + r)
}

pub(crate) fn count_values(
    ev: &mut Evaluator,
    input: Vec<Series>,
    label: &str,
    without: bool,
    grouping: &[String],
    ctx: Ctx,
) -> Result<Vec<Series>, QueryError> {
    let mut grouping: Vec<String> = grouping.to_vec();
    if !without {
        grouping.push(label.to_string());
        grouping.sort();
    }
    let n = ctx.n();
    let mut cur = StepCursor::new(input.len());
    let mut col: HashMap<Labels, usize> = HashMap::new();
    let mut out: Vec<Series> = Vec::new();
    for i in 0..n {
        if i % 64 == 0 {
            ev.check_done()?;
        }
        let ts = ctx.ts(i);
        let mut counts: Vec<(usize, f64)> = Vec::new();
        let mut idx_of: HashMap<usize, usize> = HashMap::new();
        for si in 0..input.len() {
            let Some(v) = cur.at(&input, si, ts) else {
                continue;
            };
            let mut l = input[si].labels.clone();
            l.set(label, &crate::functions::fmt_float(v));
            let gl = group_labels(&l, without, &grouping);
            let oi = match col.get(&gl) {
                Some(o) => *o,
                None => {
                    let o = out.len();
                    col.insert(gl.clone(), o);
                    out.push(Series {
                        labels: gl,
                        pts: Vec::new(),
                        hpts: Vec::new(),
                    });
                    o
                }
            };
            match idx_of.get(&oi) {
                Some(&c) => counts[c].1 += 1.0,
                None => {
                    idx_of.insert(oi, counts.len());
                    counts.push((oi, 1.0));
                }
            }
        }
        for (oi, c) in counts {
            out[oi].pts.push(Sample { t: ts, v: c });
        }
    }
    out.retain(|s| !s.pts.is_empty());
    Ok(out)
}
