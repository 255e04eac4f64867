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
            token::T_COUNT | token::T_GROUP => {
                // Histograms count like floats here; their values are never read.
                for s in input.iter_mut().filter(|s| !s.hpts.is_empty()) {
                    s.pts
                        .extend(s.hpts.drain(..).map(|h| Sample { t: h.t, v: 0.0 }));
                    s.pts.sort_by_key(|p| p.t);
                }
            }
            token::T_LIMITK | token::T_LIMIT_RATIO => {
                // Selection depends on labels only: histograms take part as placeholder
                // floats and are put back into the selected series afterwards.
                let mut hists: HashMap<Labels, Vec<crate::value::HPoint>> = HashMap::new();
                for s in input.iter_mut().filter(|s| !s.hpts.is_empty()) {
                    s.pts
                        .extend(s.hpts.iter().map(|h| Sample { t: h.t, v: 0.0 }));
                    s.pts.sort_by_key(|p| p.t);
                    hists.insert(s.labels.clone(), std::mem::take(&mut s.hpts));
                }
                let mut out = aggregate_k(
                    ev,
                    op,
                    input,
                    param.unwrap_or_default(),
                    &series_group,
                    ng,
                    ctx,
                )?;
                for s in &mut out {
                    if let Some(hs) = hists.get(&s.labels) {
                        s.hpts = hs
                            .iter()
                            .filter(|h| s.pts.binary_search_by_key(&h.t, |p| p.t).is_ok())
                            .cloned()
                            .collect();
                        s.pts
                            .retain(|p| hs.binary_search_by_key(&p.t, |h| h.t).is_err());
                    }
                }
                return Ok(out);
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
        match op {
            token::T_TOPK | token::T_BOTTOMK => {
                for (si, v) in vals {
                    select_k(
                        &mut heaps[series_group[si]],
                        (si, v),
                        k as usize,
                        op == token::T_TOPK,
                    );
                }
            }
            _ => {
                for (si, v) in vals {
                    heaps[series_group[si]].push((si, v));
                }
            }
        }
        for h in heaps.iter_mut() {
            if h.is_empty() {
                continue;
            }
            let chosen: Vec<(usize, f64)> = match op {
                token::T_TOPK => {
                    // Prometheus: sort.Sort(sort.Reverse(heap)), largest first.
                    if h.len() > 1 {
                        crate::go_order::sort(h, &|a, b| by_value_less(b, a));
                    }
                    std::mem::take(h)
                }
                token::T_BOTTOMK => {
                    if h.len() > 1 {
                        crate::go_order::sort(h, &|a, b| by_reverse_value_less(b, a));
                    }
                    std::mem::take(h)
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

/// Prometheus's `vectorByValueHeap.Less`: NaN is less than everything (NaN included).
fn by_value_less(a: &(usize, f64), b: &(usize, f64)) -> bool {
    a.1.is_nan() || a.1 < b.1
}

/// Prometheus's `vectorByReverseValueHeap.Less`.
fn by_reverse_value_less(a: &(usize, f64), b: &(usize, f64)) -> bool {
    a.1.is_nan() || a.1 > b.1
}

/// Offers one sample to a group's topk/bottomk heap exactly as Prometheus's
/// `aggregationK` does, so equal values keep the same series: the first k samples are
/// pushed; after that a sample replaces the root (the worst kept) only when strictly
/// better (a number beats a NaN root), and the heap is fixed from the root.
fn select_k(heap: &mut Vec<(usize, f64)>, s: (usize, f64), k: usize, top: bool) {
    let less: fn(&(usize, f64), &(usize, f64)) -> bool = if top {
        by_value_less
    } else {
        by_reverse_value_less
    };
    if heap.len() < k {
        crate::go_order::heap_push(heap, s, &less);
        return;
    }
    let Some(root) = heap.first().map(|r| r.1) else {
        return;
    };
    let better = if top { root < s.1 } else { root > s.1 };
    if better || (root.is_nan() && !s.1.is_nan()) {
        heap[0] = s;
        if k > 1 {
            crate::go_order::heap_fix(heap, 0, &less);
        }
    }
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
    let mut cur = crate::binop::PvCursor::new(input.len());
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
            let value = match v {
                crate::binop::Pv::F(v) => crate::functions::fmt_float(v),
                crate::binop::Pv::H(h) => crate::native::histogram_string(&h),
            };
            l.set(label, &value);
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

#[cfg(test)]
mod tests {
    use crate::engine::{Engine, EngineOptions};
    use crate::storage::MemStorage;
    use crate::value::Value;
    use storeapi::{Labels, Sample};

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    fn name(i: usize) -> Labels {
        Labels::from_pairs([
            ("__name__".to_string(), "x".to_string()),
            ("s".to_string(), format!("s{i}")),
        ])
        .expect("valid labels")
    }

    /// Series `x{s="s<i>"}` with `vals[i]` at t=0 and t=60s.
    fn store(vals: &[f64]) -> MemStorage {
        let mut st = MemStorage::new();
        for (i, v) in vals.iter().enumerate() {
            st.add(name(i), [0, 60_000].map(|t| Sample { t, v: *v }));
        }
        st
    }

    fn instant(st: &MemStorage, q: &str) -> Vec<(String, f64)> {
        let e = Engine::new(EngineOptions::default());
        match run(e.instant_query(st, q, 60_000)).expect("query").value {
            Value::Vector(v) => v
                .into_iter()
                .map(|(l, s)| (l.get("s").unwrap_or_default().to_string(), s.v))
                .collect(),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Ties go to the series Prometheus's heap keeps, not the first ones in label order:
    /// topk(2) over 1,1,1,2 pushes s0 and s1, skips s2 (not strictly greater than the
    /// root), then s3 replaces the root s0 and sinks below s1 — so s3 and s1 remain.
    /// (A stable sort by value would answer s3 and s0.)
    #[test]
    fn topk_ties_follow_prometheus_heap() {
        let st = store(&[1.0, 1.0, 1.0, 2.0]);
        assert_eq!(
            instant(&st, "topk(2, x)"),
            vec![("s3".to_string(), 2.0), ("s1".to_string(), 1.0)]
        );
        let st = store(&[2.0, 2.0, 2.0, 1.0]);
        assert_eq!(
            instant(&st, "bottomk(2, x)"),
            vec![("s3".to_string(), 1.0), ("s1".to_string(), 2.0)]
        );
        // All equal: nothing replaces the first k pushed.
        let st = store(&[5.0; 6]);
        assert_eq!(
            instant(&st, "topk(3, x)"),
            vec![
                ("s0".to_string(), 5.0),
                ("s1".to_string(), 5.0),
                ("s2".to_string(), 5.0)
            ]
        );
    }

    /// The same choice at every step of a range query (each step is its own heap).
    #[test]
    fn range_topk_ties_pick_the_same_series_per_step() {
        let st = store(&[1.0, 1.0, 1.0, 2.0]);
        let e = Engine::new(EngineOptions::default());
        let r = run(e.range_query(&st, "topk(2, x)", 0, 60_000, 30_000)).expect("query");
        let Value::Matrix(m) = r.value else {
            panic!("{:?}", r.value)
        };
        let got: Vec<(String, usize)> = m
            .iter()
            .map(|(l, pts)| (l.get("s").unwrap_or_default().to_string(), pts.len()))
            .collect();
        assert_eq!(got, vec![("s1".to_string(), 3), ("s3".to_string(), 3)]);
    }

    /// NaN is the worst value for both: a number replaces a NaN root, and NaNs come last.
    #[test]
    fn topk_and_bottomk_put_nan_last() {
        let st = store(&[f64::NAN, 3.0, f64::NAN, 1.0]);
        let top = instant(&st, "topk(3, x)");
        assert_eq!(top.len(), 3);
        assert_eq!((top[0].0.as_str(), top[0].1), ("s1", 3.0));
        assert_eq!((top[1].0.as_str(), top[1].1), ("s3", 1.0));
        assert!(top[2].1.is_nan());
        let bottom = instant(&st, "bottomk(3, x)");
        assert_eq!((bottom[0].0.as_str(), bottom[0].1), ("s3", 1.0));
        assert_eq!((bottom[1].0.as_str(), bottom[1].1), ("s1", 3.0));
        assert!(bottom[2].1.is_nan());
    }
}
