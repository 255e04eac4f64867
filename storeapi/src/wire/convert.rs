//! Conversions between the data model ([`Labels`], [`Matcher`]) and wire types.

use super::thanos;
use crate::{LabelError, Labels, MatchOp, Matcher, MatcherError};

/// Why a wire value could not become a model value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("unknown label matcher type {0}")]
    UnknownMatcherType(i32),
    #[error(transparent)]
    Matcher(#[from] MatcherError),
    #[error(transparent)]
    Labels(#[from] LabelError),
}

/// Model labels → wire labels (already sorted).
pub fn labels_to_wire(labels: &Labels) -> Vec<thanos::Label> {
    labels.as_slice().to_vec()
}

/// Wire labels (any order) → model labels; refuses duplicate names.
pub fn labels_from_wire(labels: Vec<thanos::Label>) -> Result<Labels, ConvertError> {
    Ok(Labels::from_unsorted(labels)?)
}

/// Wire matcher → model matcher (compiles regexes; a bad regex is an error).
pub fn matcher_from_wire(m: &thanos::LabelMatcher) -> Result<Matcher, ConvertError> {
    use thanos::label_matcher::Type;
    let op = match Type::try_from(m.r#type) {
        Ok(Type::Eq) => MatchOp::Equal,
        Ok(Type::Neq) => MatchOp::NotEqual,
        Ok(Type::Re) => MatchOp::RegexMatch,
        Ok(Type::Nre) => MatchOp::RegexNoMatch,
        Err(_) => return Err(ConvertError::UnknownMatcherType(m.r#type)),
    };
    Ok(Matcher::new(op, m.name.clone(), m.value.clone())?)
}

/// All matchers of a request.
pub fn matchers_from_wire(ms: &[thanos::LabelMatcher]) -> Result<Vec<Matcher>, ConvertError> {
    ms.iter().map(matcher_from_wire).collect()
}

/// Model matcher → wire matcher.
pub fn matcher_to_wire(m: &Matcher) -> thanos::LabelMatcher {
    use thanos::label_matcher::Type;
    let t = match m.op {
        MatchOp::Equal => Type::Eq,
        MatchOp::NotEqual => Type::Neq,
        MatchOp::RegexMatch => Type::Re,
        MatchOp::RegexNoMatch => Type::Nre,
    };
    thanos::LabelMatcher {
        r#type: t as i32,
        name: m.name.clone(),
        value: m.value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matcher_round_trip() {
        for op in [
            MatchOp::Equal,
            MatchOp::NotEqual,
            MatchOp::RegexMatch,
            MatchOp::RegexNoMatch,
        ] {
            let m = Matcher::new(op, "job", "a.*").unwrap();
            let w = matcher_to_wire(&m);
            assert_eq!(matcher_from_wire(&w).unwrap(), m);
        }
    }

    #[test]
    fn bad_regex_and_type_are_errors() {
        let w = thanos::LabelMatcher {
            r#type: 2,
            name: "a".into(),
            value: "(".into(),
        };
        assert!(matches!(
            matcher_from_wire(&w),
            Err(ConvertError::Matcher(_))
        ));
        let w = thanos::LabelMatcher {
            r#type: 9,
            name: "a".into(),
            value: "x".into(),
        };
        assert_eq!(
            matcher_from_wire(&w),
            Err(ConvertError::UnknownMatcherType(9))
        );
    }

    #[test]
    fn labels_round_trip() {
        let l = Labels::from_pairs([("b", "2"), ("a", "1")]).unwrap();
        let w = labels_to_wire(&l);
        assert_eq!(w[0].name, "a");
        assert_eq!(labels_from_wire(w).unwrap(), l);
    }
}
