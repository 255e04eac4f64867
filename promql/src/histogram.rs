//! `histogram_quantile` over classic (`le` bucket) histograms.

use crate::engine::QueryError;
use crate::eval::{Collector, Ctx, Evaluator, Series, drop_metric_name};
use crate::functions::fmt_g;
use std::collections::HashMap;
use storeapi::{Label, Labels};

const SMALL_DELTA_TOLERANCE: f64 = 1e-12;

fn almost_equal(a: f64, b: f64, eps: f64) -> bool {
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < eps * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < eps
}

/// Prometheus's `BucketQuantile`: (value, forced monotonicity).
pub(crate) fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> (f64, bool) {
    if q.is_nan() {
        return (f64::NAN, false);
    }
    if q < 0.0 {
        return (f64::NEG_INFINITY, false);
    }
    if q > 1.0 {
        return (f64::INFINITY, false);
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    match buckets.last() {
        Some(b) if b.0 == f64::INFINITY => {}
        _ => return (f64::NAN, false),
    }
    // Coalesce buckets with the same upper bound.
    let mut co: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for b in buckets.iter() {
        match co.last_mut() {
            Some(l) if l.0 == b.0 => l.1 += b.1,
            _ => co.push(*b),
        }
    }
    let mut forced = false;
    let mut prev = co[0].1;
    for b in co.iter_mut().skip(1) {
        let curr = b.1;
        if curr == prev {
            continue;
        }
        if almost_equal(prev, curr, SMALL_DELTA_TOLERANCE) {
            b.1 = prev;
            continue;
        }
        if curr < prev {
            b.1 = prev;
            forced = true;
            continue;
        }
        prev = curr;
    }
    if co.len() < 2 {
        return (f64::NAN, false);
    }
    let observations = co[co.len() - 1].1;
    if observations == 0.0 {
        return (f64::NAN, false);
    }
    let mut rank = q * observations;
    let b = co[..co.len() - 1].partition_point(|x| x.1 < rank);
    if b == co.len() - 1 {
        return (co[co.len() - 2].0, forced);
    }
    if b == 0 && co[0].0 <= 0.0 {
        return (co[0].0, forced);
    }
    let mut start = 0.0;
    let end = co[b].0;
    let mut count = co[b].1;
    if b > 0 {
        start = co[b - 1].0;
        count -= co[b - 1].1;
        rank -= co[b - 1].1;
    }
    (start + (end - start) * (rank / count), forced)
}

/// Parses an `le` value as Go's `strconv.ParseFloat` would (incl. "+Inf", "Inf", "NaN").
fn parse_le(s: &str) -> Option<f64> {
    let t = s.trim_start_matches('+');
    match t.to_ascii_lowercase().as_str() {
        "inf" | "infinity" => return Some(f64::INFINITY),
        "nan" => return Some(f64::NAN),
        _ => {}
    }
    if let Some(rest) = s.strip_prefix('-') {
        let l = rest.to_ascii_lowercase();
        if l == "inf" || l == "infinity" {
            return Some(f64::NEG_INFINITY);
        }
    }
    if t.is_empty() || t.contains(|c: char| c.is_whitespace()) {
        return None;
    }
    if t.contains('_') {
        return None;
    }
    t.parse::<f64>().ok()
}

pub(crate) fn histogram_quantile(
    ev: &mut Evaluator,
    q: &[f64],
    vec: Vec<Series>,
    ctx: Ctx,
) -> Result<Vec<Series>, QueryError> {
    for v in q {
        if v.is_nan() || *v < 0.0 || *v > 1.0 {
            ev.warn(format!(
                "PromQL warning: quantile value should be between 0 and 1, got {}",
                fmt_g(*v)
            ));
            break;
        }
    }
    // Group input series by labels without `le` (computed once).
    let mut group_of: HashMap<Labels, usize> = HashMap::new();
    let mut groups: Vec<Labels> = Vec::new();
    let mut member: Vec<Option<(usize, f64)>> = Vec::with_capacity(vec.len());
    for s in &vec {
        if s.pts.is_empty() {
            // Native histograms only: no `le` needed.
            member.push(None);
            continue;
        }
        let le = s.labels.get("le").unwrap_or("");
        match parse_le(le) {
            None => {
                ev.warn(format!(
                    "PromQL warning: bucket label \"le\" is missing or has a malformed value of {:?} for metric name {:?}",
                    le,
                    s.labels.metric_name().unwrap_or("")
                ));
                member.push(None);
            }
            Some(ub) => {
                let key: Vec<Label> = s
                    .labels
                    .iter()
                    .filter(|l| l.name != "le")
                    .cloned()
                    .collect();
                let key = Labels::from_sorted_unchecked(key);
                let g = match group_of.get(&key) {
                    Some(g) => *g,
                    None => {
                        let g = groups.len();
                        let mut out = drop_metric_name(&key);
                        out.remove("le");
                        group_of.insert(key, g);
                        groups.push(out);
                        g
                    }
                };
                member.push(Some((g, ub)));
            }
        }
    }
    let n = ctx.n();
    let mut cursor = crate::binop::StepCursor::new(vec.len());
    let mut col = Collector::new();
    let out_idx: Vec<usize> = groups.iter().map(|g| col.index(g.clone())).collect();
    let mut buckets: Vec<Vec<(f64, f64)>> = vec![Vec::new(); groups.len()];
    let mut forced_names: Vec<String> = Vec::new();
    // Native histogram series: position in `vec`, output index, cursor into `hpts`.
    let mut natives: Vec<(usize, usize, usize)> = vec
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.hpts.is_empty())
        .map(|(i, s)| (i, col.index(drop_metric_name(&s.labels)), 0))
        .collect();
    let mut nan_infos: Vec<(String, bool)> = Vec::new();
    for i in 0..n {
        let ts = ctx.ts(i);
        for b in buckets.iter_mut() {
            b.clear();
        }
        for (si, m) in member.iter().enumerate() {
            let Some(v) = cursor.at(&vec, si, ts) else {
                continue;
            };
            if let Some((g, ub)) = m {
                buckets[*g].push((*ub, v));
            }
        }
        let qv = q.get(i).copied().unwrap_or(f64::NAN);
        for (si, oi, cur) in natives.iter_mut() {
            let s = &vec[*si];
            while *cur < s.hpts.len() && s.hpts[*cur].t < ts {
                *cur += 1;
            }
            let Some(p) = s.hpts.get(*cur).filter(|p| p.t == ts) else {
                continue;
            };
            let name = s.labels.metric_name().unwrap_or("");
            // Classic buckets with the same name and labels at this step: neither counts.
            if let Some(g) = group_of.get(&s.labels)
                && !buckets[*g].is_empty()
            {
                buckets[*g].clear();
                ev.warn(format!(
                    "PromQL warning: vector contains a mix of classic and native histograms for metric name {name:?}"
                ));
                continue;
            }
            let (v, info) = crate::native::histogram_quantile(qv, &p.h);
            if let Some(nan_result) = info
                && !nan_infos.iter().any(|x| x.0 == name && x.1 == nan_result)
            {
                nan_infos.push((name.to_string(), nan_result));
            }
            col.push(*oi, ts, v)?;
        }
        for (g, b) in buckets.iter_mut().enumerate() {
            if b.is_empty() {
                continue;
            }
            let (v, forced) = bucket_quantile(q.get(i).copied().unwrap_or(f64::NAN), b);
            if forced {
                let name = vec
                    .iter()
                    .zip(member.iter())
                    .find(|(_, m)| m.map(|x| x.0) == Some(g))
                    .and_then(|(s, _)| s.labels.metric_name().map(str::to_string))
                    .unwrap_or_default();
                if !forced_names.contains(&name) {
                    forced_names.push(name);
                }
            }
            col.push(out_idx[g], ts, v)?;
        }
    }
    for (name, nan_result) in nan_infos {
        ev.info(if nan_result {
            format!(
                "PromQL info: input to histogram_quantile has NaN observations, result is NaN for metric name {name:?}"
            )
        } else {
            format!(
                "PromQL info: input to histogram_quantile has NaN observations, result is skewed higher for metric name {name:?}"
            )
        });
    }
    for name in forced_names {
        ev.info(format!(
            "PromQL info: input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile) for metric name {name:?}"
        ));
    }
    let mut out = col.out;
    out.retain(|s| !s.pts.is_empty());
    Ok(out)
}
