//! The single entry point that fuzzing and property tests drive: client text through the
//! text limits, the parser and both kinds of evaluation over a small fixed storage.
//! Whatever the text, it must return (an answer or an error), never panic or overflow.

use crate::engine::{Engine, EngineOptions, QueryError};
use crate::limits::QueryLimits;
use crate::storage::MemStorage;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;
use storeapi::{Labels, Sample};

/// A few series of each kind the functions care about: counters, gauges, buckets.
fn storage() -> &'static MemStorage {
    static STORAGE: OnceLock<MemStorage> = OnceLock::new();
    STORAGE.get_or_init(|| {
        let mut st = MemStorage::new();
        let series: [&[(&str, &str)]; 6] = [
            &[("__name__", "up"), ("job", "a"), ("instance", "1")],
            &[("__name__", "up"), ("job", "b"), ("instance", "2")],
            &[("__name__", "c_total"), ("job", "a")],
            &[("__name__", "h_bucket"), ("le", "0.5")],
            &[("__name__", "h_bucket"), ("le", "+Inf")],
            &[("__name__", "g"), ("job", "a"), ("path", "/x\ny")],
        ];
        for (i, pairs) in series.iter().enumerate() {
            let labels = Labels::from_pairs(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string())),
            );
            if let Ok(labels) = labels {
                st.add(
                    labels,
                    (0..=20).map(|t| Sample {
                        t: t * 30_000,
                        v: (t * (i as i64 + 1)) as f64,
                    }),
                );
            }
        }
        st
    })
}

/// Polls a future that never waits (the engine over [`MemStorage`] is always ready).
fn ready<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// Runs `query` as an instant query and as a range query with `limits`; returns the first
/// error (a refusal or an evaluation error), if any.
pub fn evaluate_untrusted(query: &str, limits: QueryLimits) -> Result<(), QueryError> {
    let engine = Engine::new(EngineOptions {
        lookback_delta_ms: 300_000,
        max_samples: 1_000_000,
        timeout: Duration::from_secs(10),
        limits,
    });
    let st = storage();
    let pending = || QueryError::Execution("storage did not answer at once".into());
    ready(engine.instant_query(st, query, 300_000)).ok_or_else(pending)??;
    ready(engine.range_query(st, query, 0, 600_000, 60_000)).ok_or_else(pending)??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn answers_and_refusals() {
        let l = QueryLimits::default();
        assert_eq!(evaluate_untrusted("sum(rate(c_total[5m]))", l), Ok(()));
        assert_eq!(
            evaluate_untrusted("sum(", l).map_err(|e| e.error_type()),
            Err("bad_data")
        );
        let deep = format!("{}up{}", "(".repeat(20_000), ")".repeat(20_000));
        let e = evaluate_untrusted(&deep, l).unwrap_err();
        assert!(e.to_string().contains("--query.max-nesting-depth"), "{e}");
    }

    /// Wrappers that each add a level (or several) to the tree.
    const WRAPS: [(&str, &str); 12] = [
        ("(", ")"),
        ("abs(", ")"),
        ("-(", ")"),
        ("-", ""),
        ("+", ""),
        ("sum(", ")"),
        ("sum by (job) (", ")"),
        ("max_over_time(", "[2m:1m])"),
        ("1 + ", ""),
        ("", " * 2"),
        ("", " or up"),
        ("topk(1, ", ")"),
    ];
    const LEAVES: [&str; 6] = [
        "up",
        "1",
        "c_total",
        "g{path=~\"(?s).*\"}",
        "vector(time())",
        "histogram_quantile(0.5, h_bucket)",
    ];

    fn deep_query() -> impl Strategy<Value = String> {
        (
            prop::collection::vec((0..WRAPS.len(), 1usize..400), 1..12),
            0..LEAVES.len(),
        )
            .prop_map(|(runs, leaf)| {
                let mut open = String::new();
                let mut close = Vec::new();
                for (w, n) in runs {
                    for _ in 0..n {
                        open.push_str(WRAPS[w].0);
                        close.push(WRAPS[w].1);
                    }
                }
                open.push_str(LEAVES[leaf]);
                for c in close.iter().rev() {
                    open.push_str(c);
                }
                open
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Deep generated queries, on a thread with a small stack: answered or refused by
        /// the depth limit (set low so both happen), never a crash.
        #[test]
        fn deep_queries_never_crash(q in deep_query(), max_depth in 100usize..3_000) {
            let limits = QueryLimits { max_length: 1 << 20, max_depth };
            let r = std::thread::Builder::new()
                .stack_size(512 << 10)
                .spawn(move || {
                    let bound = crate::limits::nesting_bound(&q);
                    let r = evaluate_untrusted(&q, limits);
                    (bound, r)
                })
                .map(|h| h.join());
            let Ok(Ok((bound, r))) = r else {
                return Err(TestCaseError::fail("evaluation thread panicked"));
            };
            if bound > max_depth {
                let e = r.expect_err("over the limit");
                prop_assert!(e.to_string().contains("--query.max-nesting-depth"));
            } else if let Err(e) = r {
                prop_assert!(!e.to_string().contains("--query.max-nesting-depth"), "{}", e);
            }
        }

        /// Short strings over PromQL's alphabet: no panic.
        #[test]
        fn promql_alphabet_never_panics(q in "[a-z_(){}\\[\\]\"'`,.:=!~<>+*/%^@# 0-9-]{0,80}") {
            let _ = evaluate_untrusted(&q, QueryLimits::default());
        }
    }
}
