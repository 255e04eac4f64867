//! Parser for Prometheus's PromQL test script format (`*.test`).
//!
//! The format is described in `shared/promql-testdata/README.md` (the project's notes on
//! Prometheus's `promql/promqltest` runner). This parser does not
//! use the PromQL parser: an expression the engine cannot parse fails only its own eval.

use std::fmt;
use storeapi::histogram::{CounterResetHint, FloatHistogram, Span};

/// A parse error with its 1-based line number.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.msg)
    }
}

fn err<T>(line: usize, msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        line,
        msg: msg.into(),
    })
}

/// One entry of an expanded value sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// `_`: a slot without a sample.
    Empty,
    Float(f64),
    /// `stale`: the staleness marker.
    Stale,
    /// A native histogram (`{{...}}`).
    Histogram(Box<FloatHistogram>),
}

/// A label set as written in a script, in the order written (not yet sorted).
pub type LabelPairs = Vec<(String, String)>;

/// A series line: labels and its expanded values.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesLine {
    pub line: usize,
    pub labels: LabelPairs,
    pub items: Vec<Item>,
}

impl SeriesLine {
    pub fn has_histogram(&self) -> bool {
        self.items.iter().any(|i| matches!(i, Item::Histogram(_)))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    pub line: usize,
    pub interval_ms: i64,
    pub with_nhcb: bool,
    pub series: Vec<SeriesLine>,
}

/// What an `expect fail` requires of the error text.
#[derive(Debug, Clone, PartialEq)]
pub enum FailExpect {
    Any,
    Msg(String),
    Regex(String),
}

/// Expectations on warnings or infos.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AnnotationExpect {
    /// At least one annotation of this kind (`eval_warn`, bare `expect warn`).
    pub some: bool,
    /// `expect no_warn` / `expect no_info`.
    pub none: bool,
    /// `msg:` and `regex:` patterns; every one must match, and every annotation must be
    /// matched by one.
    pub patterns: Vec<FailExpect>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EvalKind {
    Instant { at: i64 },
    Range { start: i64, end: i64, step: i64 },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// Series lines (possibly none: an empty result).
    Series(Vec<SeriesLine>),
    Scalar(f64),
    String(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Eval {
    pub line: usize,
    pub kind: EvalKind,
    pub expr: String,
    pub fail: Option<FailExpect>,
    pub warn: AnnotationExpect,
    pub info: AnnotationExpect,
    pub ordered: bool,
    /// `expect range vector from .. to .. step ..` on an instant eval.
    pub range_vector: Option<(i64, i64, i64)>,
    pub expected: Expected,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Clear { line: usize },
    Load(Load),
    Eval(Eval),
}

/// Parses a Prometheus duration (`1h30m`, `10s53ms`, `0`) into milliseconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    if s == "0" {
        return Some(0);
    }
    if s.is_empty() {
        return None;
    }
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    let units: [(&str, i64); 7] = [
        ("y", 365 * 24 * 3_600_000),
        ("w", 7 * 24 * 3_600_000),
        ("d", 24 * 3_600_000),
        ("h", 3_600_000),
        ("ms", 1),
        ("m", 60_000),
        ("s", 1000),
    ];
    let mut last_rank = usize::MAX;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let n: i64 = s[start..i].parse().ok()?;
        let rest = &s[i..];
        let (unit, mult) = units.iter().find(|(u, _)| rest.starts_with(u))?;
        // Units must come in descending order (y w d h m s ms).
        let rank = match *unit {
            "y" => 0,
            "w" => 1,
            "d" => 2,
            "h" => 3,
            "m" => 4,
            "s" => 5,
            _ => 6,
        };
        if last_rank != usize::MAX && rank <= last_rank {
            return None;
        }
        last_rank = rank;
        total = total.checked_add(n.checked_mul(*mult)?)?;
        i += unit.len();
    }
    Some(total)
}

/// Parses a float as the test format writes it (`1`, `-1.5e3`, `Inf`, `+Inf`, `NaN`).
pub fn parse_float(s: &str) -> Option<f64> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower.trim_start_matches(['+', '-']);
    if body.starts_with("0x") {
        return None;
    }
    match body {
        "inf" | "nan" => {}
        _ => {
            // Rust accepts "infinity" too; Go's ParseFloat does as well. Refuse anything
            // that is not a plain decimal literal apart from inf/nan.
            if !body
                .bytes()
                .all(|c| c.is_ascii_digit() || c == b'.' || c == b'e' || c == b'+' || c == b'-')
            {
                return None;
            }
        }
    }
    t.parse::<f64>().ok()
}

/// Parses a PromQL string literal at the start of `s` (`"…"`, `'…'` or `` `…` ``);
/// returns the value and the number of bytes consumed.
pub fn parse_string_literal(s: &str) -> Result<(String, usize), String> {
    let mut chars = s.char_indices();
    let quote = match chars.next() {
        Some((_, q @ ('"' | '\'' | '`'))) => q,
        _ => return Err(format!("expected a string literal at {s:?}")),
    };
    let mut out: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4];
    while let Some((i, c)) = chars.next() {
        if c == quote {
            let v = String::from_utf8(out).map_err(|_| "string literal is not valid UTF-8")?;
            return Ok((v, i + 1));
        }
        if c != '\\' || quote == '`' {
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let (_, e) = chars.next().ok_or("unterminated escape")?;
        match e {
            'a' => out.push(7),
            'b' => out.push(8),
            'f' => out.push(12),
            'n' => out.push(b'\n'),
            'r' => out.push(b'\r'),
            't' => out.push(b'\t'),
            'v' => out.push(11),
            '\\' => out.push(b'\\'),
            '"' | '\'' => out.push(e as u8),
            'x' => {
                let h: String = (0..2).filter_map(|_| chars.next().map(|x| x.1)).collect();
                out.push(u8::from_str_radix(&h, 16).map_err(|_| "bad \\x escape")?);
            }
            'u' | 'U' => {
                let n = if e == 'u' { 4 } else { 8 };
                let h: String = (0..n).filter_map(|_| chars.next().map(|x| x.1)).collect();
                let cp = u32::from_str_radix(&h, 16).map_err(|_| "bad unicode escape")?;
                let ch = char::from_u32(cp).ok_or("bad unicode code point")?;
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            }
            '0'..='7' => {
                let mut h = String::from(e);
                for _ in 0..2 {
                    h.push(chars.next().ok_or("bad octal escape")?.1);
                }
                out.push(u8::from_str_radix(&h, 8).map_err(|_| "bad octal escape")?);
            }
            other => return Err(format!("unknown escape sequence \\{other}")),
        }
    }
    Err("unterminated string literal".into())
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

/// Parses a series description (`name`, `name{a="b"}`, `{__name__="x"}`, `{}`) at the
/// start of `s`; returns the labels and the rest of the text.
pub fn parse_series_desc(s: &str) -> Result<(LabelPairs, &str), String> {
    let s = s.trim_start();
    let mut labels = Vec::new();
    let mut rest = s;
    let name_len = s
        .char_indices()
        .take_while(|&(i, c)| is_name_char(c, i == 0))
        .map(|(i, c)| i + c.len_utf8())
        .last()
        .unwrap_or(0);
    if name_len > 0 {
        labels.push(("__name__".to_string(), s[..name_len].to_string()));
        rest = &s[name_len..];
    }
    if let Some(body) = rest.strip_prefix('{') {
        let mut r = body.trim_start();
        loop {
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let n = r
                .char_indices()
                .take_while(|&(i, c)| is_name_char(c, i == 0))
                .map(|(i, c)| i + c.len_utf8())
                .last()
                .unwrap_or(0);
            let name = if n > 0 {
                let name = r[..n].to_string();
                r = &r[n..];
                name
            } else if r.starts_with('"') {
                // Quoted label name (UTF-8 names).
                let (v, used) = parse_string_literal(r)?;
                r = &r[used..];
                v
            } else {
                return Err(format!("expected a label name at {r:?}"));
            };
            r = r.trim_start();
            r = r
                .strip_prefix('=')
                .ok_or_else(|| format!("expected '=' after label {name:?}"))?
                .trim_start();
            let (value, used) = parse_string_literal(r)?;
            r = r[used..].trim_start();
            labels.retain(|(n, _)| n != &name);
            labels.push((name, value));
            if let Some(after) = r.strip_prefix(',') {
                r = after.trim_start();
            } else if !r.starts_with('}') {
                return Err(format!("expected ',' or '}}' at {r:?}"));
            }
        }
    } else if name_len == 0 {
        return Err(format!("expected a series description at {s:?}"));
    }
    Ok((labels, rest))
}

/// Splits a value list at whitespace outside `{{ … }}`.
fn split_items(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0usize;
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == '{' && b.get(i + 1) == Some(&'{') {
            depth += 1;
            cur.push_str("{{");
            i += 2;
            continue;
        }
        if c == '}' && b.get(i + 1) == Some(&'}') && depth > 0 {
            depth -= 1;
            cur.push_str("}}");
            i += 2;
            continue;
        }
        if c.is_whitespace() && depth == 0 {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
        i += 1;
    }
    if depth != 0 {
        return Err("unterminated {{ histogram".into());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

fn parse_count(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .map_err(|_| format!("invalid repetition count {s:?}"))
}

/// Expands one value item (`7`, `_`, `_x3`, `stale`, `1x5`, `0+10x100`, `5-1x4`, `{{..}}x2`).
pub fn expand_item(tok: &str) -> Result<Vec<Item>, String> {
    if tok == "_" {
        return Ok(vec![Item::Empty]);
    }
    if let Some(n) = tok.strip_prefix("_x") {
        return Ok(vec![Item::Empty; parse_count(n)?]);
    }
    if tok == "stale" {
        return Ok(vec![Item::Stale]);
    }
    if tok.contains("{{") {
        // Histogram items: `{{H}}`, `{{H}}xN`, `{{A}}+{{B}}xN`, `{{A}}-{{B}}xN`.
        let close = tok.rfind("}}").ok_or("unterminated histogram")?;
        let tail = &tok[close + 2..];
        let n = match tail.strip_prefix('x') {
            Some(n) => parse_count(n)?,
            None if tail.is_empty() => 0,
            None => return Err(format!("invalid histogram item {tok:?}")),
        };
        let body = &tok[..close + 2];
        let first_close = body.find("}}").ok_or("unterminated histogram")?;
        let base = parse_histogram(&body[..first_close + 2])?;
        let rest = &body[first_close + 2..];
        if rest.is_empty() {
            if tail.is_empty() {
                return Ok(vec![Item::Histogram(Box::new(base))]);
            }
            return Ok(vec![Item::Histogram(Box::new(base)); n + 1]);
        }
        let (sub, inc) = match (rest.strip_prefix('+'), rest.strip_prefix('-')) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => return Err(format!("invalid histogram item {tok:?}")),
        };
        if tail.is_empty() {
            return Err(format!("histogram increment without repetition in {tok:?}"));
        }
        let inc = parse_histogram(inc)?;
        let mut out = vec![Item::Histogram(Box::new(base.clone()))];
        let mut cur = base;
        for _ in 0..n {
            if cur.schema > inc.schema {
                return Err(format!(
                    "error combining histograms: cannot merge from schema {} to {}",
                    inc.schema, cur.schema
                ));
            }
            let r = if sub { cur.sub(&inc) } else { cur.add(&inc) };
            r.map_err(|e| e.to_string())?;
            out.push(Item::Histogram(Box::new(cur.clone())));
        }
        return Ok(out);
    }
    let Some(xpos) = tok.rfind('x') else {
        return parse_float(tok)
            .map(|v| vec![Item::Float(v)])
            .ok_or_else(|| format!("invalid value {tok:?}"));
    };
    let n = parse_count(&tok[xpos + 1..])?;
    let head = &tok[..xpos];
    // Find a '+' or '-' that is an operator: not at the start, not after an exponent 'e'.
    let hb = head.as_bytes();
    let op = (1..hb.len()).find(|&i| {
        (hb[i] == b'+' || hb[i] == b'-') && !matches!(hb[i - 1], b'e' | b'E' | b'+' | b'-')
    });
    let (a, b, sub) = match op {
        Some(i) => (&head[..i], Some(&head[i + 1..]), hb[i] == b'-'),
        None => (head, None, false),
    };
    let a = parse_float(a).ok_or_else(|| format!("invalid value {a:?} in {tok:?}"))?;
    let b = match b {
        Some(b) => parse_float(b).ok_or_else(|| format!("invalid value {b:?} in {tok:?}"))?,
        None => 0.0,
    };
    let mut out = Vec::with_capacity(n + 1);
    let mut v = a;
    out.push(Item::Float(v));
    for _ in 0..n {
        if sub {
            v -= b;
        } else {
            v += b;
        }
        out.push(Item::Float(v));
    }
    Ok(out)
}

/// Parses one `{{key:value ...}}` histogram description (all keys optional; `buckets`
/// and `n_buckets` are absolute counts forming one span at `offset`/`n_offset`).
pub fn parse_histogram(s: &str) -> Result<FloatHistogram, String> {
    let inner = s
        .strip_prefix("{{")
        .and_then(|x| x.strip_suffix("}}"))
        .ok_or_else(|| format!("invalid histogram {s:?}"))?;
    // Tokens `key:value`, where a value may be a bracketed list with spaces.
    let mut toks: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut in_list = false;
    for c in inner.chars() {
        match c {
            '[' => {
                in_list = true;
                cur.push(c);
            }
            ']' => {
                in_list = false;
                cur.push(c);
            }
            c if c.is_whitespace() && !in_list => {
                if !cur.is_empty() {
                    toks.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        toks.push(cur);
    }
    let num = |k: &str, v: &str| parse_float(v).ok_or_else(|| format!("bad {k} value {v:?}"));
    let int = |k: &str, v: &str| v.parse::<i32>().map_err(|_| format!("bad {k} value {v:?}"));
    let list = |k: &str, v: &str| -> Result<Vec<f64>, String> {
        let body = v
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .ok_or_else(|| format!("bad {k} list {v:?}"))?;
        body.split_whitespace().map(|x| num(k, x)).collect()
    };
    let mut h = FloatHistogram::default();
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    let (mut off, mut noff) = (0, 0);
    let mut seen: Vec<String> = Vec::new();
    for t in toks {
        let (k, v) = t
            .split_once(':')
            .ok_or_else(|| format!("invalid histogram field {t:?}"))?;
        if seen.iter().any(|x| x == k) {
            return Err(format!("duplicate key \"{k}\" in histogram"));
        }
        seen.push(k.to_string());
        match k {
            "schema" => h.schema = int(k, v)?,
            "sum" => h.sum = num(k, v)?,
            "count" => h.count = num(k, v)?,
            "z_bucket" => h.zero_count = num(k, v)?,
            "z_bucket_w" => h.zero_threshold = num(k, v)?,
            "custom_values" => h.custom_values = list(k, v)?,
            "buckets" => pos = list(k, v)?,
            "n_buckets" => neg = list(k, v)?,
            "offset" => off = int(k, v)?,
            "n_offset" => noff = int(k, v)?,
            "counter_reset_hint" => {
                h.hint = match v {
                    "unknown" => CounterResetHint::Unknown,
                    "reset" => CounterResetHint::CounterReset,
                    "not_reset" => CounterResetHint::NotCounterReset,
                    "gauge" => CounterResetHint::Gauge,
                    _ => return Err(format!("bad counter_reset_hint {v:?}")),
                }
            }
            _ => return Err(format!("unknown histogram field {k:?}")),
        }
    }
    if !pos.is_empty() {
        h.positive_spans = vec![Span {
            offset: off,
            length: pos.len() as u32,
        }];
    }
    if !neg.is_empty() {
        h.negative_spans = vec![Span {
            offset: noff,
            length: neg.len() as u32,
        }];
    }
    h.positive_buckets = pos;
    h.negative_buckets = neg;
    Ok(h)
}

/// Expands a whole value list.
pub fn expand_values(s: &str) -> Result<Vec<Item>, String> {
    let mut out = Vec::new();
    for tok in split_items(s)? {
        out.extend(expand_item(&tok)?);
    }
    Ok(out)
}

/// Parses `<series> <values…>`.
pub fn parse_series_line(s: &str, line: usize) -> Result<SeriesLine, ParseError> {
    let (labels, rest) = parse_series_desc(s).map_err(|m| ParseError { line, msg: m })?;
    let items = expand_values(rest).map_err(|m| ParseError { line, msg: m })?;
    Ok(SeriesLine {
        line,
        labels,
        items,
    })
}

fn parse_pattern(kind: &str, text: &str) -> FailExpect {
    match kind {
        "msg" => FailExpect::Msg(text.trim().to_string()),
        _ => FailExpect::Regex(text.trim().to_string()),
    }
}

/// Parses a whole script into commands.
pub fn parse_script(text: &str) -> Result<Vec<Command>, ParseError> {
    let lines: Vec<&str> = text.split('\n').map(str::trim).collect();
    let is_blank = |l: &str| l.is_empty() || l.starts_with('#');
    let mut cmds = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        let lineno = i + 1;
        if is_blank(l) {
            i += 1;
            continue;
        }
        let word = l
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        // The block: following lines up to a blank or comment line.
        let mut j = i + 1;
        while j < lines.len() && !is_blank(lines[j]) {
            j += 1;
        }
        if word == "clear" {
            cmds.push(Command::Clear { line: lineno });
            i += 1;
            continue;
        }
        if word.starts_with("load") {
            let with_nhcb = word == "load_with_nhcb";
            if word != "load" && !with_nhcb {
                return err(lineno, format!("unknown command {word:?}"));
            }
            let arg = l[word.len()..].trim();
            let interval_ms = parse_duration(arg).ok_or_else(|| ParseError {
                line: lineno,
                msg: format!("invalid load interval {arg:?}"),
            })?;
            let mut series: Vec<SeriesLine> = Vec::new();
            for (k, body) in lines.iter().enumerate().take(j).skip(i + 1) {
                let sl = parse_series_line(body, k + 1)?;
                // The last line for a label set wins.
                series.retain(|s| !same_labels(&s.labels, &sl.labels));
                series.push(sl);
            }
            cmds.push(Command::Load(Load {
                line: lineno,
                interval_ms,
                with_nhcb,
                series,
            }));
            i = j;
            continue;
        }
        if word.starts_with("eval") {
            let (ev, next) = parse_eval(&lines, i, j)?;
            cmds.push(Command::Eval(ev));
            i = next;
            continue;
        }
        return err(lineno, format!("unknown command {word:?}"));
    }
    Ok(cmds)
}

/// Whether two written label sets are the same set.
pub fn same_labels(a: &LabelPairs, b: &LabelPairs) -> bool {
    let norm = |l: &LabelPairs| {
        let mut v: Vec<(String, String)> =
            l.iter().filter(|(_, v)| !v.is_empty()).cloned().collect();
        v.sort();
        v
    };
    norm(a) == norm(b)
}

fn parse_eval(lines: &[&str], i: usize, j: usize) -> Result<(Eval, usize), ParseError> {
    let l = lines[i];
    let lineno = i + 1;
    let (word, rest) = l
        .split_once(char::is_whitespace)
        .ok_or_else(|| ParseError {
            line: lineno,
            msg: "eval without arguments".into(),
        })?;
    let modifier = match word {
        "eval" => "",
        "eval_fail" => "fail",
        "eval_warn" => "warn",
        "eval_info" => "info",
        "eval_ordered" => "ordered",
        _ => return err(lineno, format!("unknown eval command {word:?}")),
    };
    let rest = rest.trim();
    let kind;
    let expr;
    if let Some(r) = rest.strip_prefix("instant") {
        let r = r.trim_start();
        let r = r.strip_prefix("at").ok_or_else(|| ParseError {
            line: lineno,
            msg: "expected 'at' after 'eval instant'".into(),
        })?;
        let r = r.trim_start();
        let (t, e) = r
            .split_once(char::is_whitespace)
            .ok_or_else(|| ParseError {
                line: lineno,
                msg: "missing expression".into(),
            })?;
        let at = parse_duration(t).ok_or_else(|| ParseError {
            line: lineno,
            msg: format!("invalid time {t:?}"),
        })?;
        kind = EvalKind::Instant { at };
        expr = e.trim().to_string();
    } else if let Some(r) = rest.strip_prefix("range") {
        if modifier == "ordered" {
            return err(lineno, "eval_ordered only works for instant queries");
        }
        let toks: Vec<&str> = r.split_whitespace().collect();
        if toks.len() < 7 || toks[0] != "from" || toks[2] != "to" || toks[4] != "step" {
            return err(lineno, "expected 'range from T to T step D EXPR'");
        }
        let p = |s: &str| {
            parse_duration(s).ok_or_else(|| ParseError {
                line: lineno,
                msg: format!("invalid duration {s:?}"),
            })
        };
        let (start, end, step) = (p(toks[1])?, p(toks[3])?, p(toks[5])?);
        if end < start {
            return err(lineno, "range end before start");
        }
        if step <= 0 {
            return err(lineno, "range step must be positive");
        }
        kind = EvalKind::Range { start, end, step };
        // The expression is the text after the step token.
        let step_at = r.find(" step ").map(|p| p + 6).unwrap_or(0);
        let after = r[step_at..].trim_start();
        expr = after[toks[5].len()..].trim().to_string();
    } else {
        return err(lineno, "expected 'instant' or 'range'");
    }

    let mut ev = Eval {
        line: lineno,
        kind,
        expr,
        fail: None,
        warn: AnnotationExpect::default(),
        info: AnnotationExpect::default(),
        ordered: modifier == "ordered",
        range_vector: None,
        expected: Expected::Series(Vec::new()),
    };
    match modifier {
        "fail" => ev.fail = Some(FailExpect::Any),
        "warn" => ev.warn.some = true,
        "info" => ev.info.some = true,
        _ => {}
    }
    let mut series = Vec::new();
    let mut k = i + 1;
    while k < j {
        let body = lines[k];
        let bl = k + 1;
        k += 1;
        if let Some(r) = body.strip_prefix("expect range vector") {
            let toks: Vec<&str> = r.split_whitespace().collect();
            if toks.len() != 6 || toks[0] != "from" || toks[2] != "to" || toks[4] != "step" {
                return err(bl, "expected 'expect range vector from T to T step D'");
            }
            let p = |s: &str| {
                parse_duration(s).ok_or_else(|| ParseError {
                    line: bl,
                    msg: format!("invalid duration {s:?}"),
                })
            };
            ev.range_vector = Some((p(toks[1])?, p(toks[3])?, p(toks[5])?));
            continue;
        }
        if let Some(r) = body.strip_prefix("expect string") {
            let r = r.trim();
            let v = parse_string_literal(r).map_err(|m| ParseError { line: bl, msg: m })?;
            ev.expected = Expected::String(v.0);
            continue;
        }
        if let Some(r) = body.strip_prefix("expected_fail_message") {
            ev.fail = Some(FailExpect::Msg(r.trim().to_string()));
            // Legacy form: ends the block.
            return Ok((ev, k));
        }
        if let Some(r) = body.strip_prefix("expected_fail_regexp") {
            ev.fail = Some(FailExpect::Regex(r.trim().to_string()));
            return Ok((ev, k));
        }
        if body.split_whitespace().next() == Some("expect") {
            let r = body["expect".len()..].trim();
            let (what, pat) = match r.split_once(char::is_whitespace) {
                Some((w, p)) => (w, Some(p.trim())),
                None => (r, None),
            };
            let pattern = match pat {
                None => None,
                Some(p) => {
                    let (kind, text) = p.split_once(':').ok_or_else(|| ParseError {
                        line: bl,
                        msg: format!("invalid expect line {body:?}"),
                    })?;
                    let kind = kind.trim();
                    if kind != "msg" && kind != "regex" {
                        return err(bl, format!("invalid expect line {body:?}"));
                    }
                    Some(parse_pattern(kind, text))
                }
            };
            match what {
                "ordered" => ev.ordered = true,
                "fail" => {
                    if ev.fail.is_some() && modifier != "fail" {
                        return err(bl, "more than one 'expect fail'");
                    }
                    ev.fail = Some(pattern.unwrap_or(FailExpect::Any));
                }
                "warn" => match pattern {
                    Some(p) => ev.warn.patterns.push(p),
                    None => ev.warn.some = true,
                },
                "info" => match pattern {
                    Some(p) => ev.info.patterns.push(p),
                    None => ev.info.some = true,
                },
                "no_warn" => ev.warn.none = true,
                "no_info" => ev.info.none = true,
                _ => return err(bl, format!("invalid expect line {body:?}")),
            }
            continue;
        }
        if let Some(v) = parse_float(body) {
            ev.expected = Expected::Scalar(v);
            // A scalar line ends the block.
            return check_eval(ev, k);
        }
        series.push(parse_series_line(body, bl)?);
    }
    if !series.is_empty() {
        if !matches!(ev.expected, Expected::Series(_)) {
            return err(
                lineno,
                "series lines mixed with a scalar or string expectation",
            );
        }
        ev.expected = Expected::Series(series);
    }
    check_eval(ev, j)
}

fn check_eval(ev: Eval, next: usize) -> Result<(Eval, usize), ParseError> {
    if (ev.warn.none && (ev.warn.some || !ev.warn.patterns.is_empty()))
        || (ev.info.none && (ev.info.some || !ev.info.patterns.is_empty()))
    {
        return err(
            ev.line,
            "expect no_warn/no_info combined with expect warn/info",
        );
    }
    if ev.ordered && ev.range_vector.is_some() {
        return err(ev.line, "expect ordered on a range vector result");
    }
    if ev.ordered && matches!(ev.kind, EvalKind::Range { .. }) {
        return err(ev.line, "expect ordered on a range query");
    }
    Ok((ev, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(items: &[Item]) -> Vec<Option<f64>> {
        items
            .iter()
            .map(|i| match i {
                Item::Float(v) => Some(*v),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Some(0));
        assert_eq!(parse_duration("5m"), Some(300_000));
        assert_eq!(parse_duration("1m30s"), Some(90_000));
        assert_eq!(parse_duration("10s53ms"), Some(10_053));
        assert_eq!(parse_duration("1111111s"), Some(1_111_111_000));
        assert_eq!(parse_duration("1y"), Some(365 * 86_400_000));
        assert_eq!(parse_duration("2w1d"), Some(15 * 86_400_000));
        assert_eq!(parse_duration("-5m"), None);
        assert_eq!(parse_duration("1.5m"), None);
        assert_eq!(parse_duration("30s1m"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn expansion() {
        assert_eq!(
            floats(&expand_values("0+10x3").unwrap()),
            vec![Some(0.0), Some(10.0), Some(20.0), Some(30.0)]
        );
        assert_eq!(
            floats(&expand_values("10-2x2").unwrap()),
            vec![Some(10.0), Some(8.0), Some(6.0)]
        );
        assert_eq!(
            floats(&expand_values("-2+1x2").unwrap()),
            vec![Some(-2.0), Some(-1.0), Some(0.0)]
        );
        assert_eq!(
            floats(&expand_values("1e-3+1e-3x1").unwrap()),
            vec![Some(1e-3), Some(2e-3)]
        );
        assert_eq!(floats(&expand_values("1x2").unwrap()), vec![Some(1.0); 3]);
        assert_eq!(floats(&expand_values("0x5").unwrap()).len(), 6);
        assert_eq!(
            expand_values("1 _ 3 stale _x2").unwrap(),
            vec![
                Item::Float(1.0),
                Item::Empty,
                Item::Float(3.0),
                Item::Stale,
                Item::Empty,
                Item::Empty
            ]
        );
        let v = expand_values("Inf -Inf +Inf NaN nan inf").unwrap();
        let f = floats(&v);
        assert_eq!(f[0], Some(f64::INFINITY));
        assert_eq!(f[1], Some(f64::NEG_INFINITY));
        assert_eq!(f[2], Some(f64::INFINITY));
        assert!(f[3].unwrap().is_nan() && f[4].unwrap().is_nan());
        assert_eq!(f[5], Some(f64::INFINITY));
        // Repeated floating-point addition, as upstream does.
        let v = floats(&expand_values("0+0.1x3").unwrap());
        assert_eq!(v[3], Some(0.1 + 0.1 + 0.1));
        assert!(expand_values("0x1f").is_err());
        assert!(expand_values("abc").is_err());
        assert!(expand_values("0xa").is_err());
    }

    #[test]
    fn histogram_items() {
        let v = expand_values(
            "0 {{schema:0 sum:1 count:1}}x2 {{sum:1 buckets:[1 2] offset:-1}}+{{sum:2 buckets:[1]}}x1 3",
        )
        .unwrap();
        assert_eq!(v.len(), 1 + 3 + 2 + 1);
        assert!(matches!(&v[1], Item::Histogram(h) if h.sum == 1.0 && h.count == 1.0));
        let Item::Histogram(h) = &v[5] else {
            panic!("{:?}", v[5])
        };
        assert_eq!(h.sum, 3.0);
        assert_eq!(h.positive_buckets, vec![1.0, 3.0]);
        assert_eq!(h.positive_spans[0].offset, -1);
        assert_eq!(v[6], Item::Float(3.0));
        let h = parse_histogram(
            "{{schema:1 sum:-0.3 count:3.1 z_bucket:7.1 z_bucket_w:0.05 n_buckets:[4.1 5] n_offset:-5 counter_reset_hint:gauge}}",
        )
        .unwrap();
        assert_eq!((h.schema, h.zero_threshold, h.zero_count), (1, 0.05, 7.1));
        assert_eq!(
            h.negative_spans,
            vec![Span {
                offset: -5,
                length: 2
            }]
        );
        assert_eq!(h.hint, CounterResetHint::Gauge);
    }

    #[test]
    fn series_descriptions() {
        let (l, rest) =
            parse_series_desc(r#"http_requests{job="api", instance="0"}   0+10x10"#).unwrap();
        assert_eq!(
            l,
            vec![
                ("__name__".into(), "http_requests".into()),
                ("job".into(), "api".into()),
                ("instance".into(), "0".into())
            ]
        );
        assert_eq!(rest.trim(), "0+10x10");
        let (l, _) = parse_series_desc(r#"{__name__="a:b", x='y z', q=`r\n`} 1"#).unwrap();
        assert_eq!(l[1], ("x".into(), "y z".into()));
        assert_eq!(l[2], ("q".into(), "r\\n".into()));
        let (l, _) = parse_series_desc("{} 1").unwrap();
        assert!(l.is_empty());
        let (l, _) = parse_series_desc(r#"{a="\"\u00e4\x41"} 1"#).unwrap();
        assert_eq!(l[0].1, "\"\u{e4}A");
        assert!(parse_series_desc("{a=1} 2").is_err());
        assert!(parse_series_desc("  1").is_err());
    }

    #[test]
    fn script_blocks() {
        let s = "\
# comment
load 5m
  a{x=\"1\"} 0+1x2
  a{x=\"1\"} 5 6
  b 1 _ 3

eval instant at 10m a
  expect warn msg: PromQL warning: foo
  a{x=\"1\"} 6

eval range from 0 to 10m step 5m b
  b 1 _ 3

clear
eval_fail instant at 0 c
  expected_fail_message some text
eval_ordered instant at 1m sort(a)
  a{x=\"1\"} 5

eval instant at 0 1
  1
eval instant at 0 \"x\"
  expect string \"x\"

eval instant at 0 a
  expect no_info
";
        let cmds = parse_script(s).unwrap();
        assert_eq!(cmds.len(), 9);
        let Command::Load(l) = &cmds[0] else { panic!() };
        assert_eq!(l.interval_ms, 300_000);
        assert_eq!(l.series.len(), 2);
        assert_eq!(l.series[0].items, vec![Item::Float(5.0), Item::Float(6.0)]);
        let Command::Eval(e) = &cmds[1] else { panic!() };
        assert_eq!(e.kind, EvalKind::Instant { at: 600_000 });
        assert_eq!(
            e.warn.patterns,
            vec![FailExpect::Msg("PromQL warning: foo".into())]
        );
        assert_eq!(e.line, 7);
        let Command::Eval(e) = &cmds[2] else { panic!() };
        assert_eq!(
            e.kind,
            EvalKind::Range {
                start: 0,
                end: 600_000,
                step: 300_000
            }
        );
        assert_eq!(e.expr, "b");
        assert!(matches!(cmds[3], Command::Clear { .. }));
        let Command::Eval(e) = &cmds[4] else { panic!() };
        assert_eq!(e.fail, Some(FailExpect::Msg("some text".into())));
        let Command::Eval(e) = &cmds[5] else { panic!() };
        assert!(e.ordered);
        assert_eq!(e.expr, "sort(a)");
        let Command::Eval(e) = &cmds[6] else { panic!() };
        assert_eq!(e.expected, Expected::Scalar(1.0));
        let Command::Eval(e) = &cmds[7] else { panic!() };
        assert_eq!(e.expected, Expected::String("x".into()));
        assert!(parse_script("bogus 1").is_err());
    }

    #[test]
    fn all_upstream_files_parse() {
        let dir = super::super::testdata_dir();
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "test") {
                let text = std::fs::read_to_string(&p).unwrap();
                let cmds = parse_script(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += cmds
                    .iter()
                    .filter(|c| matches!(c, Command::Eval(_)))
                    .count();
            }
        }
        assert_eq!(n, 1479, "upstream README counts 1,479 eval statements");
    }
}
