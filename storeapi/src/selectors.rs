//! The series selectors of a PromQL expression as matcher sets, and back to query text.
//!
//! The exemplar API selects by the selectors of a query (Prometheus's
//! `parser.ExtractSelectors`), and Thanos Query sends each store the sets it may match
//! as a query of its own, `{a="1",b="2"}+{c="3"}`. Both ends live here so the querier
//! and every store read and write the same form.

use promql_parser::label::MatchOp as P;
use promql_parser::parser::{Expr, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};

use crate::{METRIC_NAME, MatchOp, Matcher};

/// Why a query gave no matcher sets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("{0}")]
    Parse(String),
    #[error(transparent)]
    Matcher(#[from] crate::MatcherError),
}

/// One matcher set per vector selector of `expr` (per `or` alternative of one), in the
/// order they appear; the metric name is a `__name__` matcher.
pub fn extract(expr: &Expr) -> Result<Vec<Vec<Matcher>>, SelectorError> {
    struct V(Vec<Vec<Matcher>>);
    impl ExprVisitor for V {
        type Error = SelectorError;
        fn pre_visit(&mut self, e: &Expr) -> Result<bool, SelectorError> {
            match e {
                Expr::VectorSelector(vs) => self.0.extend(selector_sets(vs)?),
                Expr::MatrixSelector(ms) => self.0.extend(selector_sets(&ms.vs)?),
                _ => {}
            }
            Ok(true)
        }
    }
    let mut v = V(Vec::new());
    walk_expr(&mut v, expr)?;
    Ok(v.0)
}

/// [`extract`] of a query text (parsed without limits: call with bounded text).
pub fn extract_from_query(query: &str) -> Result<Vec<Vec<Matcher>>, SelectorError> {
    let expr = promql_parser::parser::parse(query).map_err(SelectorError::Parse)?;
    extract(&expr)
}

fn selector_sets(vs: &VectorSelector) -> Result<Vec<Vec<Matcher>>, SelectorError> {
    let conv = |ms: &[promql_parser::label::Matcher]| -> Result<Vec<Matcher>, SelectorError> {
        let mut out = Vec::with_capacity(ms.len() + 1);
        if let Some(name) = &vs.name
            && !ms.iter().any(|m| m.name == METRIC_NAME)
        {
            out.push(Matcher::equal(METRIC_NAME, name.clone()));
        }
        for m in ms {
            let op = match m.op {
                P::Equal => MatchOp::Equal,
                P::NotEqual => MatchOp::NotEqual,
                P::Re(_) => MatchOp::RegexMatch,
                P::NotRe(_) => MatchOp::RegexNoMatch,
            };
            out.push(Matcher::new(op, m.name.clone(), m.value.clone())?);
        }
        Ok(out)
    };
    if vs.matchers.or_matchers.is_empty() {
        return Ok(vec![conv(&vs.matchers.matchers)?]);
    }
    vs.matchers
        .or_matchers
        .iter()
        .map(|group| {
            let mut g = group.clone();
            g.extend(vs.matchers.matchers.iter().cloned());
            conv(&g)
        })
        .collect()
}

/// PromQL text selecting `sets`: `{a="1",b=~"x"}+{c!="3"}` (Thanos Query's form). Values
/// are double-quoted with `\\`, `"` and control characters escaped.
pub fn to_query(sets: &[Vec<Matcher>]) -> String {
    let mut q = String::new();
    for (i, set) in sets.iter().enumerate() {
        if i > 0 {
            q.push('+');
        }
        q.push('{');
        for (j, m) in set.iter().enumerate() {
            if j > 0 {
                q.push(',');
            }
            q.push_str(&m.name);
            q.push_str(m.op.as_str());
            q.push('"');
            for c in m.value.chars() {
                match c {
                    '\\' => q.push_str("\\\\"),
                    '"' => q.push_str("\\\""),
                    '\n' => q.push_str("\\n"),
                    '\r' => q.push_str("\\r"),
                    '\t' => q.push_str("\\t"),
                    c if (c as u32) < 0x20 || c == '\u{7f}' => {
                        q.push_str(&format!("\\x{:02x}", c as u32))
                    }
                    c => q.push(c),
                }
            }
            q.push('"');
        }
        q.push('}');
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(op: MatchOp, n: &str, v: &str) -> Matcher {
        Matcher::new(op, n, v).unwrap()
    }

    #[test]
    fn selectors_of_an_expression() {
        let sets = extract_from_query(
            r#"sum(rate(req_total{job="a"}[5m])) / on() group_left up{x=~"y.*"} offset 1m"#,
        )
        .unwrap();
        assert_eq!(
            sets,
            vec![
                vec![
                    Matcher::equal("__name__", "req_total"),
                    Matcher::equal("job", "a")
                ],
                vec![
                    Matcher::equal("__name__", "up"),
                    m(MatchOp::RegexMatch, "x", "y.*")
                ],
            ]
        );
        assert!(extract_from_query("1 + 2").unwrap().is_empty());
        assert!(matches!(
            extract_from_query("sum("),
            Err(SelectorError::Parse(_))
        ));
    }

    #[test]
    fn query_text_round_trips() {
        let sets = vec![
            vec![
                Matcher::equal("__name__", "a"),
                m(MatchOp::NotEqual, "v", "q\"uo\\te\nline"),
            ],
            vec![m(MatchOp::RegexMatch, "job", "x|y")],
        ];
        let q = to_query(&sets);
        assert_eq!(q, r#"{__name__="a",v!="q\"uo\\te\nline"}+{job=~"x|y"}"#);
        assert_eq!(extract_from_query(&q).unwrap(), sets);
    }
}
