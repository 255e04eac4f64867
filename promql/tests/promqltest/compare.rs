//! Comparing engine results with a script's expectations, as the upstream runner does.

use super::script::{AnnotationExpect, FailExpect, Item, LabelPairs, SeriesLine};
use promql::{HPoint, HistSeries};
use storeapi::histogram::{FloatHistogram, Span};
use storeapi::{Label, Labels, STALE_NAN_BITS, Sample};

/// Upstream's relative tolerance (`defaultEpsilon`).
const EPSILON: f64 = 1e-6;
const MIN_NORMAL: f64 = 2.2250738585072014e-308;

/// Upstream's `almost.Equal`: exact, both NaN (a stale marker only equals a stale marker),
/// or relatively close; anything against zero must match (almost) exactly.
pub fn almost_equal(a: f64, b: f64) -> bool {
    if a == b {
        return true;
    }
    let (sa, sb) = (a.to_bits() == STALE_NAN_BITS, b.to_bits() == STALE_NAN_BITS);
    if sa || sb {
        return sa && sb;
    }
    if a.is_nan() && b.is_nan() {
        return true;
    }
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || (a.abs() + b.abs()) < MIN_NORMAL {
        return diff < EPSILON * MIN_NORMAL;
    }
    diff / (a.abs() + b.abs()) < EPSILON
}

/// Written label pairs as a sorted label set (empty values dropped).
pub fn to_labels(pairs: &LabelPairs) -> Result<Labels, String> {
    Labels::from_unsorted(
        pairs
            .iter()
            .map(|(n, v)| Label::new(n.clone(), v.clone()))
            .collect(),
    )
    .or_else(|e| {
        if pairs.iter().all(|(_, v)| v.is_empty()) {
            Ok(Labels::empty())
        } else {
            Err(format!("invalid label set: {e}"))
        }
    })
}

/// Matches an error or annotation text against a `msg:`/`regex:` pattern.
pub fn pattern_matches(p: &FailExpect, text: &str) -> Result<bool, String> {
    match p {
        FailExpect::Any => Ok(true),
        FailExpect::Msg(m) => Ok(text.trim() == m.trim()),
        FailExpect::Regex(r) => regex::Regex::new(r)
            .map(|re| re.is_match(text))
            .map_err(|e| format!("invalid regex {r:?}: {e}")),
    }
}

/// The rendered text of an annotation the way the upstream runner matches it:
/// `PromQL warning: <msg>`. If the engine already renders the prefix, it is kept; a
/// trailing position `(line:col)` is removed, since 3.5 expectations carry none.
fn render_annotation(kind: &str, text: &str) -> String {
    let prefix = format!("PromQL {kind}: ");
    let mut t = text.trim().to_string();
    if !t.starts_with(&prefix) {
        t = format!("{prefix}{t}");
    }
    if t.ends_with(')')
        && let Some(open) = t.rfind(" (")
    {
        let pos = &t[open + 2..t.len() - 1];
        if let Some((l, c)) = pos.split_once(':')
            && l.parse::<u32>().is_ok()
            && c.parse::<u32>().is_ok()
        {
            t.truncate(open);
        }
    }
    t
}

/// Checks warnings or infos against the expectations of one kind.
pub fn check_annotations(kind: &str, exp: &AnnotationExpect, got: &[String]) -> Result<(), String> {
    let rendered: Vec<String> = got.iter().map(|g| render_annotation(kind, g)).collect();
    if exp.none && !got.is_empty() {
        return Err(format!("expected no {kind} annotations, got {rendered:?}"));
    }
    if (exp.some || !exp.patterns.is_empty()) && got.is_empty() {
        return Err(format!("expected {kind} annotations but got none"));
    }
    for p in &exp.patterns {
        let mut any = false;
        for r in &rendered {
            any |= pattern_matches(p, r)?;
        }
        if !any {
            return Err(format!("expected {kind} {p:?} not among {rendered:?}"));
        }
    }
    if !exp.patterns.is_empty() {
        for r in &rendered {
            let mut any = false;
            for p in &exp.patterns {
                any |= pattern_matches(p, r)?;
            }
            if !any {
                return Err(format!("unexpected {kind} {r:?}"));
            }
        }
    }
    Ok(())
}

fn fmt_f(v: f64) -> String {
    if v.to_bits() == STALE_NAN_BITS {
        "stale".into()
    } else {
        format!("{v}")
    }
}

/// Compares an instant vector with expected series (one value each).
pub fn compare_vector(
    got: &[(Labels, Sample)],
    expected: &[SeriesLine],
    ordered: bool,
) -> Result<(), String> {
    let mut exp = Vec::with_capacity(expected.len());
    for s in expected {
        let l = to_labels(&s.labels)?;
        let v = match s.items.as_slice() {
            [Item::Float(v)] => *v,
            [Item::Stale] => f64::from_bits(STALE_NAN_BITS),
            other => {
                return Err(format!(
                    "line {}: an instant result needs exactly one float value, got {other:?}",
                    s.line
                ));
            }
        };
        exp.push((l, v));
    }
    if got.len() != exp.len() {
        return Err(format!(
            "expected {} series, got {}: {}",
            exp.len(),
            got.len(),
            show_vector(got)
        ));
    }
    for (i, (gl, gs)) in got.iter().enumerate() {
        if got[..i].iter().any(|(l, _)| l == gl) {
            return Err(format!("series {gl} returned twice"));
        }
        let Some(pos) = exp.iter().position(|(l, _)| l == gl) else {
            return Err(format!(
                "unexpected series {gl} {}; expected one of: {}",
                fmt_f(gs.v),
                exp.iter()
                    .map(|(l, _)| l.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        if ordered && pos != i {
            return Err(format!(
                "series {gl} at position {i}, expected at {pos}: {}",
                show_vector(got)
            ));
        }
        let ev = exp[pos].1;
        if !almost_equal(ev, gs.v) {
            return Err(format!(
                "series {gl}: expected {}, got {}",
                fmt_f(ev),
                fmt_f(gs.v)
            ));
        }
    }
    Ok(())
}

/// Compares a matrix with expected series whose entry i sits at `start + i*step`.
pub fn compare_matrix(
    got: &[(Labels, Vec<Sample>)],
    expected: &[SeriesLine],
    start: i64,
    step: i64,
    end: i64,
) -> Result<(), String> {
    for w in got.windows(2) {
        if w[0].0 >= w[1].0 {
            return Err(format!(
                "matrix not sorted by labels (or duplicate): {} before {}",
                w[0].0, w[1].0
            ));
        }
    }
    let mut exp: Vec<(Labels, Vec<Sample>, usize)> = Vec::new();
    for s in expected {
        let l = to_labels(&s.labels)?;
        let mut pts = Vec::new();
        for (i, it) in s.items.iter().enumerate() {
            let t = start + i as i64 * step;
            if t > end {
                return Err(format!("line {}: more entries than steps", s.line));
            }
            match it {
                Item::Empty => {}
                Item::Float(v) => pts.push(Sample { t, v: *v }),
                Item::Stale => pts.push(Sample {
                    t,
                    v: f64::from_bits(STALE_NAN_BITS),
                }),
                Item::Histogram(_) => {
                    return Err(format!(
                        "line {}: histogram expectation against floats",
                        s.line
                    ));
                }
            }
        }
        exp.push((l, pts, s.line));
    }
    if got.len() != exp.len() {
        return Err(format!(
            "expected {} series, got {}: {}",
            exp.len(),
            got.len(),
            show_matrix(got)
        ));
    }
    for (gl, gp) in got {
        let Some((_, ep, line)) = exp.iter().find(|(l, _, _)| l == gl) else {
            return Err(format!("unexpected series {gl}: {}", show_matrix(got)));
        };
        let ok = ep.len() == gp.len()
            && ep
                .iter()
                .zip(gp)
                .all(|(e, g)| e.t == g.t && almost_equal(e.v, g.v));
        if !ok {
            return Err(format!(
                "series {gl} (line {line}): expected {}, got {}",
                show_points(ep),
                show_points(gp)
            ));
        }
    }
    Ok(())
}

pub fn show_vector(v: &[(Labels, Sample)]) -> String {
    let parts: Vec<String> = v
        .iter()
        .take(20)
        .map(|(l, s)| format!("{l} {}", fmt_f(s.v)))
        .collect();
    format!(
        "[{}{}]",
        parts.join(", "),
        if v.len() > 20 { ", …" } else { "" }
    )
}

pub fn show_points(p: &[Sample]) -> String {
    let parts: Vec<String> = p
        .iter()
        .take(30)
        .map(|s| format!("{}@{}", fmt_f(s.v), s.t))
        .collect();
    format!(
        "[{}{}]",
        parts.join(" "),
        if p.len() > 30 { " …" } else { "" }
    )
}

pub fn show_matrix(m: &[(Labels, Vec<Sample>)]) -> String {
    let parts: Vec<String> = m
        .iter()
        .take(10)
        .map(|(l, p)| format!("{l} {}", show_points(p)))
        .collect();
    format!(
        "[{}{}]",
        parts.join(", "),
        if m.len() > 10 { ", …" } else { "" }
    )
}

/// Spans equal in the buckets they describe (zero-length spans folded), as upstream's
/// `spansMatch`.
fn spans_match(a: &[Span], b: &[Span]) -> bool {
    fn norm(s: &[Span]) -> Vec<Span> {
        let mut out: Vec<Span> = Vec::new();
        let mut carry = 0;
        for x in s {
            if x.length == 0 {
                carry += x.offset;
                continue;
            }
            let off = x.offset + carry;
            carry = 0;
            match out.last_mut() {
                Some(l) if off == 0 => l.length += x.length,
                _ => out.push(Span {
                    offset: off,
                    length: x.length,
                }),
            }
        }
        out
    }
    norm(a) == norm(b)
}

/// Upstream's `compareNativeHistogram` after `Compact(0)` of both sides: schema, zero
/// threshold, spans and custom bounds exactly, counts, sum and buckets within 1e-6.
pub fn histograms_match(exp: &FloatHistogram, got: &FloatHistogram) -> bool {
    let (mut e, mut g) = (exp.clone(), got.clone());
    e.compact();
    g.compact();
    let buckets = |a: &[f64], b: &[f64]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| almost_equal(*x, *y))
    };
    e.schema == g.schema
        && almost_equal(e.count, g.count)
        && almost_equal(e.sum, g.sum)
        && (!e.uses_custom_buckets()
            || storeapi::histogram::floats_match(&e.custom_values, &g.custom_values))
        && e.zero_threshold == g.zero_threshold
        && almost_equal(e.zero_count, g.zero_count)
        && spans_match(&e.negative_spans, &g.negative_spans)
        && buckets(&e.negative_buckets, &g.negative_buckets)
        && spans_match(&e.positive_spans, &g.positive_spans)
        && buckets(&e.positive_buckets, &g.positive_buckets)
}

/// A short text form of a histogram for failure messages.
pub fn show_histogram(h: &FloatHistogram) -> String {
    let mut h = h.clone();
    h.compact();
    format!(
        "{{{{schema:{} count:{} sum:{} z:{}@{} p:{:?}{:?} n:{:?}{:?}{}}}}}",
        h.schema,
        fmt_f(h.count),
        fmt_f(h.sum),
        fmt_f(h.zero_count),
        h.zero_threshold,
        h.positive_spans
            .iter()
            .map(|s| (s.offset, s.length))
            .collect::<Vec<_>>(),
        h.positive_buckets,
        h.negative_spans
            .iter()
            .map(|s| (s.offset, s.length))
            .collect::<Vec<_>>(),
        h.negative_buckets,
        if h.uses_custom_buckets() {
            format!(" cv:{:?}", h.custom_values)
        } else {
            String::new()
        }
    )
}

/// One point of a series that may hold histograms.
#[derive(Debug, Clone)]
enum Pt<'a> {
    F(f64),
    H(&'a FloatHistogram),
}

fn pt_match(e: &Pt, g: &Pt) -> bool {
    match (e, g) {
        (Pt::F(a), Pt::F(b)) => almost_equal(*a, *b),
        (Pt::H(a), Pt::H(b)) => histograms_match(a, b),
        _ => false,
    }
}

fn show_pt(p: &Pt) -> String {
    match p {
        Pt::F(v) => fmt_f(*v),
        Pt::H(h) => show_histogram(h),
    }
}

/// A series' points of both kinds, merged in time order.
fn merged<'a>(floats: &'a [Sample], hists: &'a [HPoint]) -> Vec<(i64, Pt<'a>)> {
    let mut out: Vec<(i64, Pt<'a>)> = floats
        .iter()
        .map(|s| (s.t, Pt::F(s.v)))
        .chain(hists.iter().map(|h| (h.t, Pt::H(&h.h))))
        .collect();
    out.sort_by_key(|p| p.0);
    out
}

fn show_merged(p: &[(i64, Pt)]) -> String {
    let parts: Vec<String> = p
        .iter()
        .take(20)
        .map(|(t, v)| format!("{}@{t}", show_pt(v)))
        .collect();
    format!(
        "[{}{}]",
        parts.join(" "),
        if p.len() > 20 { " …" } else { "" }
    )
}

/// Float results in the form of histogram-capable series.
pub fn vector_as_hist(v: &[(Labels, Sample)]) -> Vec<HistSeries> {
    v.iter()
        .map(|(l, s)| HistSeries {
            labels: l.clone(),
            floats: vec![*s],
            histograms: Vec::new(),
        })
        .collect()
}

pub fn matrix_as_hist(m: &[(Labels, Vec<Sample>)]) -> Vec<HistSeries> {
    m.iter()
        .map(|(l, s)| HistSeries {
            labels: l.clone(),
            floats: s.clone(),
            histograms: Vec::new(),
        })
        .collect()
}

pub fn show_hist_series(v: &[HistSeries]) -> String {
    let parts: Vec<String> = v
        .iter()
        .take(10)
        .map(|s| {
            format!(
                "{} {}",
                s.labels,
                show_merged(&merged(&s.floats, &s.histograms))
            )
        })
        .collect();
    format!(
        "[{}{}]",
        parts.join(", "),
        if v.len() > 10 { ", …" } else { "" }
    )
}

fn expected_point(it: &Item) -> Option<Pt<'_>> {
    match it {
        Item::Empty => None,
        Item::Float(v) => Some(Pt::F(*v)),
        Item::Stale => Some(Pt::F(f64::from_bits(STALE_NAN_BITS))),
        Item::Histogram(h) => Some(Pt::H(h)),
    }
}

/// Compares an instant vector that may hold histograms with expected series.
pub fn compare_hist_vector(
    got: &[HistSeries],
    expected: &[SeriesLine],
    ordered: bool,
) -> Result<(), String> {
    let mut exp = Vec::with_capacity(expected.len());
    for s in expected {
        let l = to_labels(&s.labels)?;
        let p = match s.items.as_slice() {
            [it] => expected_point(it),
            _ => None,
        }
        .ok_or_else(|| format!("line {}: an instant result needs exactly one value", s.line))?;
        exp.push((l, p));
    }
    if got.len() != exp.len() {
        return Err(format!(
            "expected {} series, got {}: {}",
            exp.len(),
            got.len(),
            show_hist_series(got)
        ));
    }
    for (i, g) in got.iter().enumerate() {
        if got[..i].iter().any(|x| x.labels == g.labels) {
            return Err(format!("series {} returned twice", g.labels));
        }
        let gp = merged(&g.floats, &g.histograms);
        let Some(pos) = exp.iter().position(|(l, _)| *l == g.labels) else {
            return Err(format!(
                "unexpected series {} {}",
                g.labels,
                show_merged(&gp)
            ));
        };
        if ordered && pos != i {
            return Err(format!(
                "series {} at position {i}, expected at {pos}: {}",
                g.labels,
                show_hist_series(got)
            ));
        }
        let ok = gp.len() == 1 && pt_match(&exp[pos].1, &gp[0].1);
        if !ok {
            return Err(format!(
                "series {}: expected {}, got {}",
                g.labels,
                show_pt(&exp[pos].1),
                show_merged(&gp)
            ));
        }
    }
    Ok(())
}

/// Compares a matrix that may hold histograms with expected series whose entry i sits at
/// `start + i*step`.
pub fn compare_hist_matrix(
    got: &[HistSeries],
    expected: &[SeriesLine],
    start: i64,
    step: i64,
    end: i64,
) -> Result<(), String> {
    for w in got.windows(2) {
        if w[0].labels >= w[1].labels {
            return Err(format!(
                "matrix not sorted by labels (or duplicate): {} before {}",
                w[0].labels, w[1].labels
            ));
        }
    }
    let mut exp = Vec::new();
    for s in expected {
        let l = to_labels(&s.labels)?;
        let mut pts = Vec::new();
        for (i, it) in s.items.iter().enumerate() {
            let t = start + i as i64 * step;
            if t > end {
                return Err(format!("line {}: more entries than steps", s.line));
            }
            if let Some(p) = expected_point(it) {
                pts.push((t, p));
            }
        }
        exp.push((l, pts, s.line));
    }
    if got.len() != exp.len() {
        return Err(format!(
            "expected {} series, got {}: {}",
            exp.len(),
            got.len(),
            show_hist_series(got)
        ));
    }
    for g in got {
        let Some((_, ep, line)) = exp.iter().find(|(l, _, _)| *l == g.labels) else {
            return Err(format!(
                "unexpected series {}: {}",
                g.labels,
                show_hist_series(got)
            ));
        };
        let gp = merged(&g.floats, &g.histograms);
        let ok = ep.len() == gp.len()
            && ep
                .iter()
                .zip(&gp)
                .all(|(e, g)| e.0 == g.0 && pt_match(&e.1, &g.1));
        if !ok {
            return Err(format!(
                "series {} (line {line}): expected {}, got {}",
                g.labels,
                show_merged(ep),
                show_merged(&gp)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance() {
        assert!(almost_equal(1.0, 1.0 + 1e-9));
        assert!(!almost_equal(1.0, 1.001));
        assert!(almost_equal(f64::INFINITY, f64::INFINITY));
        assert!(!almost_equal(f64::INFINITY, f64::NEG_INFINITY));
        assert!(almost_equal(f64::NAN, f64::NAN));
        assert!(!almost_equal(f64::NAN, f64::from_bits(STALE_NAN_BITS)));
        assert!(almost_equal(-0.0, 0.0));
        assert!(!almost_equal(0.0, 1e-300));
        assert!(!almost_equal(1.0, f64::NAN));
    }

    #[test]
    fn annotations() {
        let exp = AnnotationExpect {
            patterns: vec![FailExpect::Msg("PromQL warning: bad thing".into())],
            ..Default::default()
        };
        assert!(check_annotations("warning", &exp, &["bad thing".into()]).is_ok());
        assert!(
            check_annotations("warning", &exp, &["PromQL warning: bad thing (1:5)".into()]).is_ok()
        );
        assert!(check_annotations("warning", &exp, &[]).is_err());
        assert!(check_annotations("warning", &exp, &["bad thing".into(), "other".into()]).is_err());
        let none = AnnotationExpect {
            none: true,
            ..Default::default()
        };
        assert!(check_annotations("info", &none, &["x".into()]).is_err());
        assert!(check_annotations("info", &AnnotationExpect::default(), &["x".into()]).is_ok());
    }

    #[test]
    fn vectors_and_matrices() {
        let l = |n: &str| Labels::from_pairs([("__name__", n)]).unwrap();
        let sl = |n: &str, items: Vec<Item>| SeriesLine {
            line: 1,
            labels: vec![("__name__".into(), n.into())],
            items,
        };
        let got = vec![
            (l("a"), Sample { t: 0, v: 1.0 }),
            (l("b"), Sample { t: 0, v: 2.0 }),
        ];
        let exp = vec![
            sl("b", vec![Item::Float(2.0)]),
            sl("a", vec![Item::Float(1.0)]),
        ];
        assert!(compare_vector(&got, &exp, false).is_ok());
        assert!(compare_vector(&got, &exp, true).is_err());
        assert!(compare_vector(&got[..1], &exp, false).is_err());
        let m = vec![(
            l("a"),
            vec![Sample { t: 0, v: 1.0 }, Sample { t: 20, v: 3.0 }],
        )];
        let e = vec![sl(
            "a",
            vec![Item::Float(1.0), Item::Empty, Item::Float(3.0)],
        )];
        assert!(compare_matrix(&m, &e, 0, 10, 20).is_ok());
        let e2 = vec![sl(
            "a",
            vec![Item::Float(1.0), Item::Float(2.0), Item::Float(3.0)],
        )];
        assert!(compare_matrix(&m, &e2, 0, 10, 20).is_err());
        let e3 = vec![sl("a", vec![Item::Float(1.0); 4])];
        assert!(compare_matrix(&m, &e3, 0, 10, 20).is_err());
    }
}
