//! Shell-style tenant patterns with the semantics of Go's `path/filepath.Match` on Unix,
//! which Thanos uses for `"tenant_matcher_type": "glob"`.
//!
//! Syntax: `*` any run of non-`/` characters, `?` one non-`/` character, `[...]` a class
//! (`[^...]` negated, `a-z` ranges), `\x` the literal `x`. A malformed pattern (unclosed
//! class, empty class, dangling `\`, `-` or `]` unescaped inside a class where a character is
//! expected) is rejected when it is compiled, not when it is first matched.

use thiserror::Error;

/// A malformed glob pattern.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("bad glob pattern {pattern:?}: {reason}")]
pub struct GlobError {
    pub pattern: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Star,
    AnyChar,
    Literal(char),
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A compiled glob pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    tokens: Vec<Token>,
}

impl Glob {
    /// Compiles `pattern`, rejecting malformed ones.
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        let bad = |reason| GlobError {
            pattern: pattern.to_string(),
            reason,
        };
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' => {
                    // Consecutive stars are one star.
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                    i += 1;
                }
                '?' => {
                    tokens.push(Token::AnyChar);
                    i += 1;
                }
                '\\' => {
                    let Some(&c) = chars.get(i + 1) else {
                        return Err(bad("trailing backslash"));
                    };
                    tokens.push(Token::Literal(c));
                    i += 2;
                }
                '[' => {
                    i += 1;
                    let mut negated = false;
                    if chars.get(i) == Some(&'^') {
                        negated = true;
                        i += 1;
                    }
                    let mut ranges = Vec::new();
                    loop {
                        match chars.get(i) {
                            None => return Err(bad("unclosed character class")),
                            Some(']') if !ranges.is_empty() => {
                                i += 1;
                                break;
                            }
                            _ => {}
                        }
                        let (lo, next) =
                            class_char(&chars, i).ok_or_else(|| bad("bad character class"))?;
                        i = next;
                        let mut hi = lo;
                        if chars.get(i) == Some(&'-') {
                            let (h, next) = class_char(&chars, i + 1)
                                .ok_or_else(|| bad("bad range in character class"))?;
                            hi = h;
                            i = next;
                        }
                        ranges.push((lo, hi));
                    }
                    tokens.push(Token::Class { negated, ranges });
                }
                c => {
                    tokens.push(Token::Literal(c));
                    i += 1;
                }
            }
        }
        Ok(Glob {
            pattern: pattern.to_string(),
            tokens,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the whole of `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let chars: Vec<char> = name.chars().collect();
        match_from(&self.tokens, &chars)
    }
}

/// One (possibly escaped) character inside a class; `-` and `]` must be escaped there.
fn class_char(chars: &[char], i: usize) -> Option<(char, usize)> {
    match chars.get(i)? {
        '-' | ']' => None,
        '\\' => chars.get(i + 1).map(|&c| (c, i + 2)),
        &c => Some((c, i + 1)),
    }
}

fn match_one(tok: &Token, c: char) -> bool {
    match tok {
        // Stars are handled by the caller; a single-character match never sees one.
        Token::Star => false,
        Token::AnyChar => c != '/',
        Token::Literal(l) => *l == c,
        Token::Class { negated, ranges } => {
            if c == '/' {
                return false;
            }
            let inside = ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
            inside != *negated
        }
    }
}

/// Iterative wildcard matching with single-star backtracking (stars never cross `/`, so
/// backtracking into a star stops at a separator).
fn match_from(tokens: &[Token], name: &[char]) -> bool {
    let (mut t, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if t < tokens.len() {
            if tokens[t] == Token::Star {
                star = Some((t, n));
                t += 1;
                continue;
            }
            if match_one(&tokens[t], name[n]) {
                t += 1;
                n += 1;
                continue;
            }
        }
        match star {
            Some((st, sn)) if name[sn] != '/' => {
                star = Some((st, sn + 1));
                t = st + 1;
                n = sn + 1;
            }
            _ => return false,
        }
    }
    tokens[t..].iter().all(|tok| *tok == Token::Star)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Glob::new(p).unwrap().matches(s)
    }

    #[test]
    fn go_filepath_match_table() {
        // Cases from the behaviour of Go's filepath.Match on Unix.
        let cases: &[(&str, &str, bool)] = &[
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "a", false),
            ("*x", "xxx", true),
            ("prefix*", "prefix-1", true),
            ("prefix*", "suffix-1", false),
            ("t1-*", "t2", false),
            ("", "", true),
            ("", "a", false),
        ];
        for (p, s, want) in cases {
            assert_eq!(m(p, s), *want, "pattern {p:?} on {s:?}");
        }
    }

    #[test]
    fn malformed_patterns_are_rejected() {
        for p in [
            "[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a[", "[]", "[^]",
        ] {
            assert!(Glob::new(p).is_err(), "{p:?} should be rejected");
        }
    }
}
