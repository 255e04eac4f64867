//! Binary operators between two instant vectors: vector matching, set operators.

use crate::engine::QueryError;
use crate::eval::{Collector, Ctx, Evaluator, Series, card_labels, drop_metric_name, elem_binop};
use crate::value::HPoint;
use promql_parser::parser::token::{self, TokenId};
use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use storeapi::histogram::FloatHistogram;
use storeapi::{Label, Labels};

#[derive(Clone, Copy, PartialEq)]
enum Card {
    OneToOne,
    ManyToOne,
    OneToMany,
    ManyToMany,
}

struct Matching {
    card: Card,
    on: bool,
    labels: Vec<String>,
    include: Vec<String>,
}

fn matching_of(b: &BinaryExpr) -> Matching {
    let set_op = matches!(b.op.id(), token::T_LAND | token::T_LOR | token::T_LUNLESS);
    let (card, on, labels, include) = match &b.modifier {
        None => (
            if set_op {
                Card::ManyToMany
            } else {
                Card::OneToOne
            },
            false,
            Vec::new(),
            Vec::new(),
        ),
        Some(m) => {
            let card = match &m.card {
                VectorMatchCardinality::OneToOne => Card::OneToOne,
                VectorMatchCardinality::ManyToOne(_) => Card::ManyToOne,
                VectorMatchCardinality::OneToMany(_) => Card::OneToMany,
                VectorMatchCardinality::ManyToMany => Card::ManyToMany,
            };
            let card = if set_op { Card::ManyToMany } else { card };
            let (on, labels) = match &m.matching {
                None => (false, Vec::new()),
                Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
                Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
            };
            (card, on, labels, card_labels(&m.card))
        }
    };
    Matching {
        card,
        on,
        labels,
        include,
    }
}

/// The matching signature of a label set.
fn signature(l: &Labels, m: &Matching) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    for lab in l.iter() {
        let keep = if m.on {
            m.labels.iter().any(|n| n == lab.name)
        } else {
            lab.name != "__name__" && !m.labels.iter().any(|n| n == lab.name)
        };
        if keep {
            b.extend_from_slice(lab.name.as_bytes());
            b.push(0xff);
            b.extend_from_slice(lab.value.as_bytes());
            b.push(0xff);
        }
    }
    b
}

fn match_labels(l: &Labels, m: &Matching) -> Labels {
    let v: Vec<Label> = l
        .iter()
        .filter(|lab| {
            if m.on {
                m.labels.iter().any(|n| n == lab.name)
            } else {
                lab.name != "__name__" && !m.labels.iter().any(|n| n == lab.name)
            }
        })
        .cloned()
        .collect();
    Labels::from_sorted_unchecked(v)
}

fn result_labels(l: &Labels, r: &Labels, op: TokenId, m: &Matching) -> Labels {
    let mut out: Labels = if changes_schema(op) {
        drop_metric_name(l)
    } else {
        l.clone()
    };
    if m.card == Card::OneToOne {
        if m.on {
            out.retain(|lab| m.labels.iter().any(|n| n == lab.name));
        } else {
            out.retain(|lab| !m.labels.iter().any(|n| n == lab.name));
        }
    }
    for n in &m.include {
        match r.get(n) {
            Some(v) if !v.is_empty() => out.set(n, v),
            _ => out.remove(n),
        }
    }
    out
}

fn changes_schema(op: TokenId) -> bool {
    matches!(
        op,
        token::T_ADD
            | token::T_SUB
            | token::T_DIV
            | token::T_MUL
            | token::T_POW
            | token::T_MOD
            | token::T_ATAN2
    )
}

/// Step-major cursor over series whose points sit on step timestamps.
pub(crate) struct StepCursor {
    pos: Vec<usize>,
}

impl StepCursor {
    pub fn new(n: usize) -> Self {
        StepCursor { pos: vec![0; n] }
    }
    /// The value of series `i` at `ts`, advancing its cursor.
    #[inline]
    pub fn at(&mut self, series: &[Series], i: usize, ts: i64) -> Option<f64> {
        let s = &series[i].pts;
        let p = &mut self.pos[i];
        while *p < s.len() && s[*p].t < ts {
            *p += 1;
        }
        if *p < s.len() && s[*p].t == ts {
            let v = s[*p].v;
            *p += 1;
            Some(v)
        } else {
            None
        }
    }
}

pub(crate) fn vector_vector(
    ev: &mut Evaluator,
    b: &BinaryExpr,
    op: TokenId,
    lhs: Vec<Series>,
    rhs: Vec<Series>,
    return_bool: bool,
    ctx: Ctx,
) -> Result<Vec<Series>, QueryError> {
    if lhs.iter().chain(rhs.iter()).any(|s| !s.hpts.is_empty()) {
        return vector_vector_mixed(ev, b, op, lhs, rhs, return_bool, ctx);
    }
    let m = matching_of(b);
    let lsig: Vec<Vec<u8>> = lhs.iter().map(|s| signature(&s.labels, &m)).collect();
    let rsig: Vec<Vec<u8>> = rhs.iter().map(|s| signature(&s.labels, &m)).collect();
    let mut lc = StepCursor::new(lhs.len());
    let mut rc = StepCursor::new(rhs.len());
    let n = ctx.n();

    match op {
        token::T_LAND | token::T_LOR | token::T_LUNLESS => {
            // Output series are the input series themselves (labels unchanged).
            let mut lout: Vec<Vec<storeapi::Sample>> = vec![Vec::new(); lhs.len()];
            let mut rout: Vec<Vec<storeapi::Sample>> = vec![Vec::new(); rhs.len()];
            let mut lvals: Vec<Option<f64>> = vec![None; lhs.len()];
            let mut rvals: Vec<Option<f64>> = vec![None; rhs.len()];
            let mut sigs: HashSet<&[u8]> = HashSet::new();
            for i in 0..n {
                if i % 64 == 0 {
                    ev.check_done()?;
                }
                let ts = ctx.ts(i);
                for (j, lv) in lvals.iter_mut().enumerate() {
                    *lv = lc.at(&lhs, j, ts);
                }
                for (j, rv) in rvals.iter_mut().enumerate() {
                    *rv = rc.at(&rhs, j, ts);
                }
                sigs.clear();
                match op {
                    token::T_LAND | token::T_LUNLESS => {
                        for j in 0..rhs.len() {
                            if rvals[j].is_some() {
                                sigs.insert(&rsig[j]);
                            }
                        }
                        let want = op == token::T_LAND;
                        for j in 0..lhs.len() {
                            if let Some(v) = lvals[j]
                                && sigs.contains(lsig[j].as_slice()) == want
                            {
                                lout[j].push(storeapi::Sample { t: ts, v });
                            }
                        }
                    }
                    _ => {
                        for j in 0..lhs.len() {
                            if let Some(v) = lvals[j] {
                                sigs.insert(&lsig[j]);
                                lout[j].push(storeapi::Sample { t: ts, v });
                            }
                        }
                        for j in 0..rhs.len() {
                            if let Some(v) = rvals[j]
                                && !sigs.contains(rsig[j].as_slice())
                            {
                                rout[j].push(storeapi::Sample { t: ts, v });
                            }
                        }
                    }
                }
            }
            let mut out = Vec::new();
            for (s, pts) in lhs.into_iter().zip(lout) {
                if !pts.is_empty() {
                    out.push(Series {
                        labels: s.labels,
                        pts,
                        hpts: Vec::new(),
                    });
                }
            }
            for (s, pts) in rhs.into_iter().zip(rout) {
                if !pts.is_empty() {
                    out.push(Series {
                        labels: s.labels,
                        pts,
                        hpts: Vec::new(),
                    });
                }
            }
            // `or` may join series with equal labels from both sides at different steps.
            return crate::eval::merge_same_labels(out);
        }
        _ => {}
    }

    if m.card == Card::ManyToMany {
        return Err(QueryError::BadData(
            "many-to-many only allowed for set operators".into(),
        ));
    }
    // The "one" side is rhs, except for group_right where it is lhs.
    let swap = m.card == Card::OneToMany;
    let (one, many, one_sig, many_sig) = if swap {
        (&lhs, &rhs, &lsig, &rsig)
    } else {
        (&rhs, &lhs, &rsig, &lsig)
    };
    let (mut one_c, mut many_c) = if swap { (lc, rc) } else { (rc, lc) };
    // Signatures as small integers, computed once.
    let mut sig_ids: HashMap<&[u8], usize> = HashMap::new();
    let one_ids: Vec<usize> = one_sig
        .iter()
        .map(|s| {
            let next = sig_ids.len();
            *sig_ids.entry(s.as_slice()).or_insert(next)
        })
        .collect();
    let many_ids: Vec<Option<usize>> = many_sig
        .iter()
        .map(|s| sig_ids.get(s.as_slice()).copied())
        .collect();
    let nsig = sig_ids.len();
    let mut col = Collector::new().with_capacity(n);
    // Output index per (many, one) pair: a one-entry cache per many-side series, then a map.
    let mut pair_cache: Vec<Option<(usize, usize)>> = vec![None; many.len()];
    let mut pair_out: HashMap<(usize, usize), usize> = HashMap::new();
    // Per signature: the one-side series present at this step (stamped by step).
    let mut one_at: Vec<(usize, usize, f64)> = vec![(usize::MAX, 0, 0.0); nsig];
    // Per signature: step at which a one-to-one match happened.
    let mut sig_matched: Vec<usize> = vec![usize::MAX; nsig];
    // Per output series: (step, signature) of its last sample.
    let mut out_stamp: Vec<(usize, usize)> = Vec::new();
    let one_side = if swap { "left" } else { "right" };
    for i in 0..n {
        if i % 64 == 0 {
            ev.check_done()?;
        }
        let ts = ctx.ts(i);
        let mut any_one = false;
        for j in 0..one.len() {
            let Some(v) = one_c.at(one, j, ts) else {
                continue;
            };
            any_one = true;
            let sid = one_ids[j];
            let slot = &mut one_at[sid];
            if slot.0 == i {
                let dup = slot.1;
                let ml = match_labels(&one[j].labels, &m);
                return Err(QueryError::Execution(format!(
                    "found duplicate series for the match group {} on the {} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                    ml, one_side, one[j].labels, one[dup].labels
                )));
            }
            *slot = (i, j, v);
        }
        if !any_one {
            // Still advance the many side's cursors.
            for j in 0..many.len() {
                let _ = many_c.at(many, j, ts);
            }
            continue;
        }
        for j in 0..many.len() {
            let Some(v) = many_c.at(many, j, ts) else {
                continue;
            };
            let Some(sid) = many_ids[j] else {
                continue;
            };
            let (stamp, k, ov) = one_at[sid];
            if stamp != i {
                continue;
            }
            let (l, r) = if swap { (ov, v) } else { (v, ov) };
            let (mut val, keep) = elem_binop(op, l, r);
            if return_bool {
                val = if keep { 1.0 } else { 0.0 };
            } else if !keep {
                continue;
            }
            let oi = match pair_cache[j] {
                Some((ck, o)) if ck == k => o,
                _ => {
                    let o = match pair_out.get(&(j, k)) {
                        Some(o) => *o,
                        None => {
                            let mut lbl = result_labels(&many[j].labels, &one[k].labels, op, &m);
                            if return_bool {
                                lbl = drop_metric_name(&lbl);
                            }
                            let o = col.index(lbl);
                            pair_out.insert((j, k), o);
                            o
                        }
                    };
                    pair_cache[j] = Some((k, o));
                    o
                }
            };
            if m.card == Card::OneToOne {
                if sig_matched[sid] == i {
                    return Err(QueryError::Execution(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                    ));
                }
                sig_matched[sid] = i;
            }
            if out_stamp.len() <= oi {
                out_stamp.resize(oi + 1, (usize::MAX, 0));
            }
            if out_stamp[oi].0 == i {
                if m.card != Card::OneToOne && out_stamp[oi].1 == sid {
                    return Err(QueryError::Execution(
                        "multiple matches for labels: grouping labels must ensure unique matches"
                            .into(),
                    ));
                }
                return Err(crate::eval::dup_labelset_err());
            }
            out_stamp[oi] = (i, sid);
            col.push(oi, ts, val)?;
        }
    }
    let mut out = col.out;
    out.retain(|s| !s.pts.is_empty());
    Ok(out)
}

// ------------------------------------------------------------ operands with histograms

/// A point of either kind, for operators over series that hold histograms.
#[derive(Clone)]
pub(crate) enum Pv {
    F(f64),
    H(Arc<FloatHistogram>),
}

/// Per-series cursors over floats and histograms whose points sit on step timestamps.
pub(crate) struct PvCursor {
    f: Vec<usize>,
    h: Vec<usize>,
}

impl PvCursor {
    pub fn new(n: usize) -> Self {
        PvCursor {
            f: vec![0; n],
            h: vec![0; n],
        }
    }
    /// The point of series `i` at `ts`, advancing its cursors.
    pub fn at(&mut self, series: &[Series], i: usize, ts: i64) -> Option<Pv> {
        let s = &series[i];
        let p = &mut self.f[i];
        while *p < s.pts.len() && s.pts[*p].t < ts {
            *p += 1;
        }
        if let Some(x) = s.pts.get(*p).filter(|x| x.t == ts) {
            return Some(Pv::F(x.v));
        }
        let p = &mut self.h[i];
        while *p < s.hpts.len() && s.hpts[*p].t < ts {
            *p += 1;
        }
        s.hpts
            .get(*p)
            .filter(|x| x.t == ts)
            .map(|x| Pv::H(x.h.clone()))
    }
}

fn op_str(op: TokenId) -> &'static str {
    match op {
        token::T_ADD => "+",
        token::T_SUB => "-",
        token::T_MUL => "*",
        token::T_DIV => "/",
        token::T_POW => "^",
        token::T_MOD => "%",
        token::T_EQLC => "==",
        token::T_NEQ => "!=",
        token::T_GTR => ">",
        token::T_LSS => "<",
        token::T_GTE => ">=",
        token::T_LTE => "<=",
        token::T_ATAN2 => "atan2",
        _ => "?",
    }
}

/// Prometheus's `vectorElemBinop` for operands of either kind: the value and whether
/// to keep it, or `None` when the pair is dropped (with the annotation recorded).
pub(crate) fn elem_binop_pv(ev: &mut Evaluator, op: TokenId, l: &Pv, r: &Pv) -> Option<(Pv, bool)> {
    let incompatible = |ev: &mut Evaluator, a: &str, b: &str| {
        let o = op_str(op);
        ev.info(format!(
            "PromQL info: incompatible sample types encountered for binary operator {o:?}: {a} {o} {b}"
        ));
    };
    let scaled = |h: &FloatHistogram, f: &dyn Fn(&mut FloatHistogram)| {
        let mut h = h.clone();
        f(&mut h);
        h.compact();
        Pv::H(Arc::new(h))
    };
    match (l, r) {
        (Pv::F(a), Pv::F(b)) => {
            let (v, keep) = elem_binop(op, *a, *b);
            Some((Pv::F(v), keep))
        }
        (Pv::F(a), Pv::H(h)) => {
            if op == token::T_MUL {
                Some((scaled(h, &|x| x.mul(*a)), true))
            } else {
                incompatible(ev, "float", "histogram");
                None
            }
        }
        (Pv::H(h), Pv::F(b)) => match op {
            token::T_MUL => Some((scaled(h, &|x| x.mul(*b)), true)),
            token::T_DIV => Some((scaled(h, &|x| x.div(*b)), true)),
            _ => {
                incompatible(ev, "histogram", "float");
                None
            }
        },
        (Pv::H(a), Pv::H(b)) => match op {
            token::T_ADD | token::T_SUB => {
                let mut h = (**a).clone();
                let r = if op == token::T_ADD {
                    h.add(b)
                } else {
                    h.sub(b)
                };
                if r.is_err() {
                    ev.warn(format!(
                        "PromQL warning: incompatible bucket layout encountered for binary operator {}",
                        op_str(op)
                    ));
                    return None;
                }
                h.compact();
                Some((Pv::H(Arc::new(h)), true))
            }
            token::T_EQLC => Some((Pv::H(a.clone()), a.equals(b))),
            token::T_NEQ => Some((Pv::H(a.clone()), !a.equals(b))),
            _ => {
                incompatible(ev, "histogram", "histogram");
                None
            }
        },
    }
}

/// Appends a point to a series being built.
fn push_pv(s: &mut Series, t: i64, v: Pv) {
    match v {
        Pv::F(v) => s.pts.push(storeapi::Sample { t, v }),
        Pv::H(h) => s.hpts.push(HPoint { t, h }),
    }
}

/// Vector/vector operators when either side holds histograms: the same matching rules
/// as [`vector_vector`], on points of either kind.
fn vector_vector_mixed(
    ev: &mut Evaluator,
    b: &BinaryExpr,
    op: TokenId,
    lhs: Vec<Series>,
    rhs: Vec<Series>,
    return_bool: bool,
    ctx: Ctx,
) -> Result<Vec<Series>, QueryError> {
    let m = matching_of(b);
    let lsig: Vec<Vec<u8>> = lhs.iter().map(|s| signature(&s.labels, &m)).collect();
    let rsig: Vec<Vec<u8>> = rhs.iter().map(|s| signature(&s.labels, &m)).collect();
    let mut lc = PvCursor::new(lhs.len());
    let mut rc = PvCursor::new(rhs.len());
    let n = ctx.n();
    let empty = |l: &Labels| Series {
        labels: l.clone(),
        pts: Vec::new(),
        hpts: Vec::new(),
    };
    if matches!(op, token::T_LAND | token::T_LOR | token::T_LUNLESS) {
        let mut lout: Vec<Series> = lhs.iter().map(|s| empty(&s.labels)).collect();
        let mut rout: Vec<Series> = rhs.iter().map(|s| empty(&s.labels)).collect();
        for i in 0..n {
            let ts = ctx.ts(i);
            let lv: Vec<Option<Pv>> = (0..lhs.len()).map(|j| lc.at(&lhs, j, ts)).collect();
            let rv: Vec<Option<Pv>> = (0..rhs.len()).map(|j| rc.at(&rhs, j, ts)).collect();
            if op == token::T_LOR {
                let mut sigs: HashSet<&[u8]> = HashSet::new();
                for (j, v) in lv.into_iter().enumerate() {
                    if let Some(v) = v {
                        sigs.insert(&lsig[j]);
                        push_pv(&mut lout[j], ts, v);
                    }
                }
                for (j, v) in rv.into_iter().enumerate() {
                    if let Some(v) = v
                        && !sigs.contains(rsig[j].as_slice())
                    {
                        push_pv(&mut rout[j], ts, v);
                    }
                }
            } else {
                let sigs: HashSet<&[u8]> = rv
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_some())
                    .map(|(j, _)| rsig[j].as_slice())
                    .collect();
                let want = op == token::T_LAND;
                for (j, v) in lv.into_iter().enumerate() {
                    if let Some(v) = v
                        && sigs.contains(lsig[j].as_slice()) == want
                    {
                        push_pv(&mut lout[j], ts, v);
                    }
                }
            }
        }
        let out: Vec<Series> = lout
            .into_iter()
            .chain(rout)
            .filter(|s| !s.pts.is_empty() || !s.hpts.is_empty())
            .collect();
        return crate::eval::merge_same_labels(out);
    }
    if m.card == Card::ManyToMany {
        return Err(QueryError::BadData(
            "many-to-many only allowed for set operators".into(),
        ));
    }
    let swap = m.card == Card::OneToMany;
    let (one, many, one_sig, many_sig) = if swap {
        (&lhs, &rhs, &lsig, &rsig)
    } else {
        (&rhs, &lhs, &rsig, &lsig)
    };
    let (mut one_c, mut many_c) = if swap { (lc, rc) } else { (rc, lc) };
    let one_side = if swap { "left" } else { "right" };
    let mut out: Vec<Series> = Vec::new();
    let mut out_idx: HashMap<Labels, usize> = HashMap::new();
    for i in 0..n {
        if i % 64 == 0 {
            ev.check_done()?;
        }
        let ts = ctx.ts(i);
        let mut one_at: HashMap<&[u8], (usize, Pv)> = HashMap::new();
        for j in 0..one.len() {
            let Some(v) = one_c.at(one, j, ts) else {
                continue;
            };
            if let Some((dup, _)) = one_at.get(one_sig[j].as_slice()) {
                let ml = match_labels(&one[j].labels, &m);
                return Err(QueryError::Execution(format!(
                    "found duplicate series for the match group {} on the {} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                    ml, one_side, one[j].labels, one[*dup].labels
                )));
            }
            one_at.insert(one_sig[j].as_slice(), (j, v));
        }
        let mut matched: HashSet<&[u8]> = HashSet::new();
        let mut stamped: HashMap<usize, &[u8]> = HashMap::new();
        for j in 0..many.len() {
            let Some(v) = many_c.at(many, j, ts) else {
                continue;
            };
            let Some((k, ov)) = one_at.get(many_sig[j].as_slice()) else {
                continue;
            };
            let (l, r) = if swap { (ov, &v) } else { (&v, ov) };
            let Some((val, keep)) = elem_binop_pv(ev, op, l, r) else {
                continue;
            };
            let val = if return_bool {
                Pv::F(if keep { 1.0 } else { 0.0 })
            } else if !keep {
                continue;
            } else {
                val
            };
            let mut lbl = result_labels(&many[j].labels, &one[*k].labels, op, &m);
            if return_bool {
                lbl = drop_metric_name(&lbl);
            }
            let sig = many_sig[j].as_slice();
            if m.card == Card::OneToOne && !matched.insert(sig) {
                return Err(QueryError::Execution(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                ));
            }
            let oi = *out_idx.entry(lbl.clone()).or_insert_with(|| {
                out.push(empty(&lbl));
                out.len() - 1
            });
            if let Some(prev) = stamped.get(&oi) {
                if m.card != Card::OneToOne && *prev == sig {
                    return Err(QueryError::Execution(
                        "multiple matches for labels: grouping labels must ensure unique matches"
                            .into(),
                    ));
                }
                return Err(crate::eval::dup_labelset_err());
            }
            stamped.insert(oi, sig);
            push_pv(&mut out[oi], ts, val);
        }
    }
    out.retain(|s| !s.pts.is_empty() || !s.hpts.is_empty());
    Ok(out)
}
