//! Label matchers with Prometheus semantics: regexes are fully anchored and `.` matches
//! newlines (Prometheus 3); a label that is absent has the value "".

use regex::Regex;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchOp {
    Equal,
    NotEqual,
    RegexMatch,
    RegexNoMatch,
}

impl MatchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::RegexMatch => "=~",
            MatchOp::RegexNoMatch => "!~",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatcherError {
    #[error("invalid regular expression {value:?} for label {name:?}: {reason}")]
    BadRegex {
        name: String,
        value: String,
        reason: String,
    },
}

/// One label matcher. Construct with [`Matcher::new`] so a regex is compiled once.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    re: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}
impl Eq for Matcher {}

impl Matcher {
    pub fn new(
        op: MatchOp,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, MatcherError> {
        let name = name.into();
        let value = value.into();
        let re = match op {
            MatchOp::RegexMatch | MatchOp::RegexNoMatch => {
                Some(Regex::new(&format!("^(?s:{value})$")).map_err(|e| {
                    MatcherError::BadRegex {
                        name: name.clone(),
                        value: value.clone(),
                        reason: e.to_string(),
                    }
                })?)
            }
            _ => None,
        };
        Ok(Matcher {
            name,
            op,
            value,
            re,
        })
    }

    /// `name="value"`.
    pub fn equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Matcher {
            name: name.into(),
            op: MatchOp::Equal,
            value: value.into(),
            re: None,
        }
    }

    /// Whether a label value (or "" for an absent label) matches.
    pub fn matches(&self, v: &str) -> bool {
        match self.op {
            MatchOp::Equal => v == self.value,
            MatchOp::NotEqual => v != self.value,
            MatchOp::RegexMatch => self.re.as_ref().is_some_and(|r| r.is_match(v)),
            MatchOp::RegexNoMatch => !self.re.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }

    /// Whether this matcher selects series that lack the label entirely.
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op.as_str(), self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_is_anchored_and_dot_matches_newline() {
        let m = Matcher::new(MatchOp::RegexMatch, "a", "fo.").unwrap();
        assert!(m.matches("foo"));
        assert!(!m.matches("xfoo"));
        assert!(!m.matches("fooo"));
        assert!(m.matches("fo\n"));
    }

    #[test]
    fn empty_matching() {
        assert!(
            Matcher::new(MatchOp::RegexMatch, "a", ".*")
                .unwrap()
                .matches_empty()
        );
        assert!(
            Matcher::new(MatchOp::NotEqual, "a", "x")
                .unwrap()
                .matches_empty()
        );
        assert!(
            !Matcher::new(MatchOp::RegexNoMatch, "a", "")
                .unwrap()
                .matches_empty()
        );
        assert!(Matcher::new(MatchOp::RegexMatch, "a", "(").is_err());
    }
}
