//! Limits on client expressions, and the stack every walk of a client AST runs on.
//!
//! A PromQL AST is a tree of boxes: parsing (the parser checks types recursively),
//! evaluating, and even *dropping* a tree recurse once per level. A query nested 100,000
//! levels deep (`((((up))))`, `-(-(-up))`, `a + a + a ...`) would overflow a thread's stack
//! and abort the whole process, so:
//!
//! 1. [`check_query_text`] bounds the query's length and, from a single iterative scan of
//!    its tokens, the depth of any tree a parse could produce. It refuses deeper queries
//!    before the parser sees them, with a message naming the limit.
//! 2. Everything that recurses over an accepted tree runs on a stack sized for it:
//!    [`parse_checked`] parses on a segment sized from the depth bound and hands back a
//!    [`ParsedExpr`] that frees the tree on such a segment too; the evaluator grows its
//!    stack on demand ([`grow`]).

use crate::engine::QueryError;
use promql_parser::parser::Expr;

/// Default maximum query length in bytes (`--query.max-length`).
pub const DEFAULT_MAX_QUERY_LENGTH: usize = 1 << 20;

/// Default maximum nesting depth (`--query.max-nesting-depth`): Prometheus answers the
/// deep-but-plausible queries (5,000 levels) and refuses none; deeper than this, parsing
/// alone turns quadratic (the parser re-derives each node's type from its subtree).
pub const DEFAULT_MAX_NESTING_DEPTH: usize = 10_000;

/// Stack reserved per level of nesting for the parser and for freeing a tree. Generous:
/// a level costs a few hundred bytes in debug builds; the pages are only committed when
/// touched.
const STACK_PER_LEVEL: usize = 2 << 10;

/// Stack the evaluator keeps free before it recurses into a child node; less than that
/// left and the child runs on a fresh [`GROW_SEGMENT`].
const RED_ZONE: usize = 256 << 10;

/// Size of a stack segment added on demand by [`grow`].
const GROW_SEGMENT: usize = 16 << 20;

/// Limits on the text of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Maximum length of a query in bytes.
    pub max_length: usize,
    /// Maximum nesting depth, as bounded by [`nesting_bound`].
    pub max_depth: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_length: DEFAULT_MAX_QUERY_LENGTH,
            max_depth: DEFAULT_MAX_NESTING_DEPTH,
        }
    }
}

/// A query refused by [`check_query_text`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("query too long: {len} bytes exceed the limit of {limit} bytes (--query.max-length)")]
    TooLong { len: usize, limit: usize },
    #[error(
        "query too deeply nested: depth {depth} exceeds the limit of {limit} (--query.max-nesting-depth)"
    )]
    TooDeep { depth: usize, limit: usize },
}

impl From<LimitError> for QueryError {
    fn from(e: LimitError) -> Self {
        QueryError::BadData(e.to_string())
    }
}

/// Checks a query's length and nesting bound against `limits`; returns the bound.
/// Linear in the length, no recursion, no allocation beyond one entry per open bracket.
pub fn check_query_text(query: &str, limits: &QueryLimits) -> Result<usize, LimitError> {
    if query.len() > limits.max_length {
        return Err(LimitError::TooLong {
            len: query.len(),
            limit: limits.max_length,
        });
    }
    let depth = nesting_bound(query);
    if depth > limits.max_depth {
        return Err(LimitError::TooDeep {
            depth,
            limit: limits.max_depth,
        });
    }
    Ok(depth)
}

/// One open bracket while scanning.
#[derive(Debug, Clone, Copy)]
struct Group {
    /// Operator tokens directly inside: each may add one node above its operands.
    ops: usize,
    /// The deepest bracketed group directly inside.
    child: usize,
    /// `{...}` holds label matchers, whose `!=` and `or` are not operators.
    braces: bool,
}

impl Group {
    fn new(braces: bool) -> Group {
        Group {
            ops: 0,
            child: 0,
            braces,
        }
    }

    /// Bound on the depth of the expression directly inside: every node above a leaf is
    /// made by one of the operators, and the deepest leaf is an atom (1) or a group.
    fn depth(&self) -> usize {
        self.ops.saturating_add(self.child.max(1))
    }
}

/// An upper bound on the depth (nodes on the longest root-to-leaf path) of the AST any
/// parse of `query` can produce.
///
/// Every AST node comes from a token: a bracket pair (parentheses, call, aggregation), an
/// operator (binary, unary `-`/`+`), or a `[` (range selector, subquery). Inside one
/// bracket group the nodes on a path are distinct operator tokens of that group, then a
/// leaf, which is an atom or a nested group. So `depth(group) <= 1 + ops + deepest
/// child`; strings and comments are skipped, and matchers in `{}` count as one leaf. The
/// bound overestimates (commas split operators among arguments) but never underestimates.
pub fn nesting_bound(query: &str) -> usize {
    let b = query.as_bytes();
    let mut stack: Vec<Group> = vec![Group::new(false)];
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                i = string_end(b, i);
                continue;
            }
            b'#' => {
                i = comment_end(b, i);
                continue;
            }
            b'(' | b'{' | b'[' => {
                if c == b'['
                    && let Some(top) = stack.last_mut()
                {
                    // A range selector or subquery wraps the expression before it.
                    top.ops = top.ops.saturating_add(1);
                }
                stack.push(Group::new(c == b'{'));
            }
            b')' | b'}' | b']' => {
                if stack.len() > 1 {
                    close(&mut stack);
                }
            }
            _ if is_word_byte(c) => {
                let start = i;
                i = word_end(b, i);
                let word = &query[start..i];
                if let Some(top) = stack.last_mut()
                    && !top.braces
                    && ["and", "or", "unless", "atan2"]
                        .iter()
                        .any(|k| word.eq_ignore_ascii_case(k))
                {
                    top.ops = top.ops.saturating_add(1);
                }
                continue;
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'<' | b'>' | b'!' | b'=' => {
                // `==`, `!=`, `<=`, `>=` are one operator; `=` alone and `=~`/`!~` only
                // occur in matchers.
                let two = b.get(i + 1).copied();
                let is_op = match c {
                    b'=' => two == Some(b'='),
                    b'!' => two == Some(b'='),
                    _ => true,
                };
                if matches!(c, b'=' | b'!' | b'<' | b'>') && matches!(two, Some(b'=') | Some(b'~'))
                {
                    i += 1;
                }
                if is_op
                    && let Some(top) = stack.last_mut()
                    && !top.braces
                {
                    top.ops = top.ops.saturating_add(1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    while stack.len() > 1 {
        close(&mut stack);
    }
    stack.last().map_or(1, Group::depth)
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':' || c == b'.' || c >= 0x80
}

/// End of the string literal starting at `b[i]` (a quote): after its closing quote
/// (backslash escapes except in backtick strings). An unterminated one runs to the end;
/// it is the parser's error to report.
fn string_end(b: &[u8], mut i: usize) -> usize {
    let q = b[i];
    i += 1;
    while i < b.len() && b[i] != q {
        if b[i] == b'\\' && q != b'`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// End of the `#` comment starting at `b[i]`: its newline.
fn comment_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i] != b'\n' {
        i += 1;
    }
    i
}

/// End of the word (identifier, keyword or number) starting at `b[i]`. In `1e-5` the
/// sign belongs to the number, not a binary operator.
fn word_end(b: &[u8], mut i: usize) -> usize {
    let number = b[i].is_ascii_digit() || b[i] == b'.';
    let hex = number
        && b.get(i..i + 2)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"0x"));
    while i < b.len() && is_word_byte(b[i]) {
        i += 1;
        if number
            && !hex
            && (b[i - 1] == b'e' || b[i - 1] == b'E')
            && i < b.len()
            && (b[i] == b'+' || b[i] == b'-')
        {
            i += 1;
        }
    }
    i
}

/// Longest duration in seconds (Prometheus keeps durations as int64 nanoseconds).
const MAX_DURATION_SECS: f64 = i64::MAX as f64 / 1e9;

/// Refuses a plain number used as a duration (`foo offset 1e20`, `foo[1e300]`,
/// `foo[5m:1e20]`, `foo offset Inf`) that no duration can hold, with Prometheus's
/// message: the parser would panic converting it.
pub fn check_duration_numbers(query: &str) -> Result<(), QueryError> {
    #[derive(PartialEq)]
    enum Open {
        Paren,
        Brace,
        Square,
    }
    /// Where a duration may come next.
    enum Expect {
        Nothing,
        /// After `[` or the `:` of a subquery.
        Range,
        /// After `offset`, with the position of a sign already seen.
        Offset(Option<usize>),
    }
    let b = query.as_bytes();
    let mut open: Vec<Open> = Vec::new();
    let mut expect = Expect::Nothing;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' {
            i = comment_end(b, i);
            continue;
        }
        if matches!(c, b'"' | b'\'' | b'`') {
            i = string_end(b, i);
            expect = Expect::Nothing;
            continue;
        }
        if is_word_byte(c) {
            let start = i;
            i = word_end(b, i);
            let word = &query[start..i];
            let out_of_range = |at: usize, v: Option<f64>| match v {
                Some(v) if !(v.is_finite() && v.abs() <= MAX_DURATION_SECS) => {
                    let (line, col) = line_col(query, at);
                    Err(QueryError::BadData(format!(
                        "{line}:{col}: parse error: duration out of range"
                    )))
                }
                _ => Ok(()),
            };
            let numeric = |w: &str| w.starts_with(|c: char| c.is_ascii_digit() || c == '.');
            if open.last() == Some(&Open::Square) {
                // `5m:1e20` lexes as one word here: range, then the subquery's step.
                let mut at = start;
                for (k, piece) in word.split(':').enumerate() {
                    if (k > 0 || matches!(expect, Expect::Range)) && numeric(piece) {
                        out_of_range(at, number_value(piece))?;
                    }
                    at += piece.len() + 1;
                }
            } else if let Expect::Offset(sign) = expect {
                out_of_range(sign.unwrap_or(start), number_value(word))?;
            }
            expect = if word.eq_ignore_ascii_case("offset") && open.last() != Some(&Open::Brace) {
                Expect::Offset(None)
            } else if word.ends_with(':') && open.last() == Some(&Open::Square) {
                Expect::Range
            } else {
                Expect::Nothing
            };
            continue;
        }
        expect = match (c, expect) {
            (b'-' | b'+', Expect::Offset(None)) => Expect::Offset(Some(i)),
            (b'[', _) => {
                open.push(Open::Square);
                Expect::Range
            }
            (b':', _) if open.last() == Some(&Open::Square) => Expect::Range,
            (b'(', _) => {
                open.push(Open::Paren);
                Expect::Nothing
            }
            (b'{', _) => {
                open.push(Open::Brace);
                Expect::Nothing
            }
            (b')' | b'}' | b']', _) => {
                open.pop();
                Expect::Nothing
            }
            _ => Expect::Nothing,
        };
        i += 1;
    }
    Ok(())
}

/// The value of a PromQL number literal (decimal, hex, `Inf`, `NaN`), `None` for any
/// other word.
fn number_value(word: &str) -> Option<f64> {
    if let Some(h) = word.strip_prefix("0x").or_else(|| word.strip_prefix("0X")) {
        return Some(u128::from_str_radix(h, 16).map_or(f64::INFINITY, |v| v as f64));
    }
    if word.eq_ignore_ascii_case("inf") || word.eq_ignore_ascii_case("nan") {
        // Neither converts to a duration.
        return Some(f64::NAN);
    }
    if !word.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return None;
    }
    word.parse::<f64>().ok()
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(query: &str, at: usize) -> (usize, usize) {
    let before = &query[..at.min(query.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |p| p + 1);
    (
        line,
        query[line_start..at.min(query.len())].chars().count() + 1,
    )
}

/// Closes the innermost group, folding its depth into its parent.
fn close(stack: &mut Vec<Group>) {
    if let Some(g) = stack.pop() {
        let d = if g.braces {
            1
        } else {
            g.depth().saturating_add(1)
        };
        if let Some(parent) = stack.last_mut() {
            parent.child = parent.child.max(d);
        }
    }
}

/// Stack to reserve for the parser or a tree walk over `depth` levels.
fn stack_for(depth: usize) -> usize {
    depth
        .saturating_mul(STACK_PER_LEVEL)
        .saturating_add(1 << 20)
}

/// Runs `f` on a stack segment sized for a tree `depth` levels deep, unless the current
/// stack has that much left.
pub fn with_stack_for<R>(depth: usize, f: impl FnOnce() -> R) -> R {
    let size = stack_for(depth);
    stacker::maybe_grow(size, size, f)
}

/// Runs one level of a recursive walk: on the current stack while [`RED_ZONE`] is left,
/// else on a new segment. Call it around each recursive step over client data.
pub fn grow<R>(f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(RED_ZONE, GROW_SEGMENT, f)
}

/// A parsed client expression whose drop is safe however deep it is (the tree is freed on
/// a stack sized for its depth bound).
pub struct ParsedExpr {
    expr: Option<Box<Expr>>,
    depth: usize,
}

impl ParsedExpr {
    /// The depth bound the text check computed (at least the tree's depth).
    pub fn depth_bound(&self) -> usize {
        self.depth
    }
}

impl std::ops::Deref for ParsedExpr {
    type Target = Expr;

    fn deref(&self) -> &Expr {
        match &self.expr {
            Some(e) => e,
            // Only `drop` takes the tree out.
            None => unreachable!("ParsedExpr used after drop"),
        }
    }
}

impl std::fmt::Debug for ParsedExpr {
    // No `Display` of the tree: printing recurses too.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedExpr")
            .field("depth_bound", &self.depth)
            .finish()
    }
}

impl Drop for ParsedExpr {
    fn drop(&mut self) {
        if let Some(e) = self.expr.take() {
            with_stack_for(self.depth, move || drop(e));
        }
    }
}

/// Checks `query` against `limits`, then parses it on a stack sized for its depth bound.
pub fn parse_checked(query: &str, limits: &QueryLimits) -> Result<ParsedExpr, QueryError> {
    let depth = check_query_text(query, limits)?;
    check_duration_numbers(query)?;
    with_stack_for(depth, || {
        // The parser is a dependency: should it still panic on some input the checks
        // above do not foresee, the query is refused instead of failing the request's
        // thread (the fuzz target looks for such inputs).
        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            promql_parser::parser::parse(query)
        }));
        match parsed {
            Ok(r) => r
                .map(|e| ParsedExpr {
                    expr: Some(Box::new(e)),
                    depth,
                })
                .map_err(QueryError::BadData),
            Err(_) => Err(QueryError::BadData(
                "1:1: parse error: the query could not be parsed".into(),
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prometheus 3.5.3's answers, position included (asked over its HTTP API).
    #[test]
    fn durations_out_of_range_are_refused_as_prometheus_does() {
        for (q, pos) in [
            (
                "rV1al offset 777777777777777777777777777777777777777777777777-0",
                "1:14",
            ),
            ("foo offset 77777777777777777777", "1:12"),
            ("foo offset 1e300", "1:12"),
            ("foo[1e300]", "1:5"),
            ("foo[5m:1e300]", "1:8"),
            ("foo offset 9223372037", "1:12"),
            ("foo offset Inf", "1:12"),
            ("foo offset 0x7fffffffffffffff", "1:12"),
            ("foo offset -1e300", "1:12"),
            ("foo[ 1e20 ]", "1:6"),
            ("foo[5m: 1e20]", "1:9"),
            ("foo\n  offset 1e20", "2:10"),
        ] {
            let e = parse_checked(q, &QueryLimits::default()).unwrap_err();
            assert_eq!(
                e,
                QueryError::BadData(format!("{pos}: parse error: duration out of range")),
                "{q}"
            );
        }
        for q in [
            "foo offset 9223372036",
            "foo[1e-300]",
            "foo offset 5m",
            "foo offset -5m",
            "foo[5m:1m] offset 1h",
            "foo{offset=\"1e300\"}",
            "foo{a=\"[1e300]\"}",
            "sum by (offset) (foo)",
            "foo @ 1e20",
        ] {
            assert!(check_duration_numbers(q).is_ok(), "{q}");
        }
    }

    /// Found by the `parse_eval` fuzz target: the parser panicked converting the number.
    #[test]
    fn fuzz_found_duration_panic_is_a_parse_error() {
        let q = "rV1al offset 777777777777777777777777777777777777777777777777-0";
        assert!(crate::untrusted::evaluate_untrusted(q, QueryLimits::default()).is_err());
    }

    fn nested(open: &str, leaf: &str, close: &str, n: usize) -> String {
        format!("{}{leaf}{}", open.repeat(n), close.repeat(n))
    }

    /// The real depth of a tree (iterative, so tests can measure deep ones).
    fn real_depth(e: &Expr) -> usize {
        let mut max = 0;
        let mut todo = vec![(e, 1usize)];
        while let Some((e, d)) = todo.pop() {
            max = max.max(d);
            match e {
                Expr::Paren(p) => todo.push((&p.expr, d + 1)),
                Expr::Unary(u) => todo.push((&u.expr, d + 1)),
                Expr::Subquery(s) => todo.push((&s.expr, d + 1)),
                Expr::Binary(b) => {
                    todo.push((&b.lhs, d + 1));
                    todo.push((&b.rhs, d + 1));
                }
                Expr::Aggregate(a) => {
                    todo.push((&a.expr, d + 1));
                    if let Some(p) = &a.param {
                        todo.push((p, d + 1));
                    }
                }
                Expr::Call(c) => todo.extend(c.args.args.iter().map(|a| (&**a, d + 1))),
                Expr::MatrixSelector(_) => max = max.max(d + 1),
                _ => {}
            }
        }
        max
    }

    #[test]
    fn bound_is_never_below_the_real_depth() {
        let cases = [
            "up".to_string(),
            "-1".into(),
            "sum by (job) (rate(x_total{a!=\"b\", c=~\"(d)\"}[5m]))".into(),
            "topk(3, sum without (i) (x)) > bool 2 * -x".into(),
            "a + b * c ^ d ^ e or f unless g and h atan2 i".into(),
            "(a + b)[5m:1m] offset -1m".into(),
            "max_over_time(rate(x[1m])[10m:])".into(),
            "1e-3 + 0x1e + 2E+3 - .5 - Inf".into(),
            "label_replace(up, \"a(((\", \"$1\", \"b\", \"(.*)\") # (((".into(),
            "-(-(-(-up)))".into(),
            nested("(", "up", ")", 50),
            nested("abs(", "up", ")", 50),
            nested("-(", "up", ")", 50),
            nested("sum(", "up", ")", 50),
            nested("max_over_time(", "up", "[5m:1m])", 20),
            format!("up{}", " + up".repeat(200)),
            format!("1{}", " * 2 - 3".repeat(100)),
        ];
        for q in &cases {
            let e = promql_parser::parser::parse(q).unwrap_or_else(|err| panic!("{q}: {err}"));
            let real = real_depth(&e);
            let bound = nesting_bound(q);
            assert!(bound >= real, "{q}: bound {bound} < real depth {real}");
            assert!(bound <= real * 3 + 4, "{q}: bound {bound} far above {real}");
        }
    }

    #[test]
    fn strings_comments_and_matchers_do_not_count() {
        assert_eq!(nesting_bound("up"), 1);
        assert_eq!(
            nesting_bound(&format!("up{{a=\"{}\"}}", "((((-+".repeat(1000))),
            1
        );
        assert_eq!(
            nesting_bound(&format!(
                "up{{{}}}",
                vec!["a!=\"1\" or b=~\"2\""; 500].join(",")
            )),
            1
        );
        assert_eq!(nesting_bound(&format!("up # {}", "(".repeat(1000))), 1);
        assert_eq!(nesting_bound("`\\`"), 1);
    }

    #[test]
    fn unbalanced_input_still_bounds() {
        assert!(nesting_bound(&"(".repeat(5000)) >= 5000);
        assert!(nesting_bound(&")".repeat(5000)) >= 1);
        assert!(nesting_bound(&"-".repeat(100_000)) >= 100_000);
    }

    #[test]
    fn limits_name_their_flags() {
        let l = QueryLimits {
            max_length: 10,
            max_depth: 3,
        };
        let e = check_query_text("sum(rate(x[5m]))", &l).unwrap_err();
        assert_eq!(
            e.to_string(),
            "query too long: 16 bytes exceed the limit of 10 bytes (--query.max-length)"
        );
        let e = check_query_text("((((x))))", &l).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("exceeds the limit of 3 (--query.max-nesting-depth)"),
            "{e}"
        );
    }

    /// Parsing and dropping a tree at the default limit works from a small stack: the
    /// parser and the drop run on their own segments.
    #[test]
    fn deep_trees_parse_and_drop_on_a_small_thread_stack() {
        let limits = QueryLimits::default();
        let n = limits.max_depth - 2;
        let shapes = [
            nested("(", "up", ")", n),
            nested("-(", "up", ")", n / 2),
            format!("up{}", " + up".repeat(n - 1)),
            format!("{}1", "-".repeat(n)),
        ];
        let r = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                for q in &shapes {
                    let e = parse_checked(q, &limits).unwrap_or_else(|e| panic!("{e}"));
                    assert!(e.depth_bound() <= limits.max_depth);
                    drop(e);
                }
            })
            .map(|h| h.join());
        assert!(matches!(r, Ok(Ok(()))));
    }
}
