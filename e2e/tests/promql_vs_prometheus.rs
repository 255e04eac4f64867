//! Side-by-side: our PromQL engine against the reference Prometheus 3.5.3 on the same
//! data. A few hundred realistic series (counters with resets, gauges, classic histogram
//! buckets, targets with outages and targets that went away) are backfilled into
//! Prometheus with `promtool tsdb create-blocks-from openmetrics` and loaded into our
//! in-memory storage. Every query of the corpus runs as instant queries at several times
//! and as a range query; answers must agree (result type, label sets, values within 1e-9
//! relative, NaN == NaN, infinities exact, order where the query sorts, errors by type and
//! message), apart from the differences listed in [`KNOWN_DIFFS`].

use e2e::promqlcmp::{
    Answer, compare_answers, corpus, is_ordered, is_value_ordered, prom_instant, prom_range,
    realistic_dataset, show_answer, start_prometheus_with, to_mem_storage,
};
use promql::{Engine, EngineOptions, MemStorage};
use std::collections::BTreeSet;

/// Queries whose answers differ today, with the reason. Every entry must still differ
/// (the test fails when one starts to agree, so the list stays honest).
const KNOWN_DIFFS: &[(&str, &str)] = &[];

#[test]
fn promql_vs_prometheus() {
    run();
}

/// The comparison itself (a plain function so a release-mode binary can call it too).
pub fn run() {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let hour = 3_600_000;
    // Fixed hours in the recent past: data from T0 to T0+3h, queried up to T0+3h10m.
    let t0 = (now_ms - 5 * hour) / hour * hour;
    let series = realistic_dataset(t0, 3);
    let n_samples: usize = series.iter().map(|s| s.samples.len()).sum();
    println!(
        "dataset: {} series, {n_samples} samples from {t0}",
        series.len()
    );
    assert!(series.len() >= 200, "dataset too small: {}", series.len());

    let prom = start_prometheus_with(&series);
    let addr = prom.addr();
    let storage: MemStorage = to_mem_storage(&series);
    let engine = Engine::new(EngineOptions::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let (t1, t2) = (t0 + hour + 7 * 60_000 + 30_000, t0 + 2 * hour + 43 * 60_000);
    let instants = [t0 + 20 * 60_000, t1, t2, t0 + 3 * hour + 2 * 60_000];
    // (start, end, step) of the range queries, used in rotation.
    let ranges = [
        (t0 + 30 * 60_000, t0 + 3 * hour + 10 * 60_000, 60_000),
        (t0 + hour, t0 + hour + 30 * 60_000, 15_000),
        (t0, t0 + 3 * hour, 300_000),
        (t0 + 90 * 60_000, t0 + 150 * 60_000, 37_000),
    ];

    // Sanity: Prometheus has the backfilled data.
    let check = prom_instant(&addr, "count(up)", t1).expect("query prometheus");
    assert!(
        matches!(&check, Answer::Value(promql::Value::Vector(v)) if !v.is_empty() && v[0].1.v >= 10.0),
        "prometheus does not see the backfilled data: {}",
        show_answer(&check)
    );

    let queries = corpus();
    assert!(
        queries.len() >= 200,
        "corpus has only {} queries",
        queries.len()
    );
    let known: BTreeSet<&str> = KNOWN_DIFFS.iter().map(|(q, _)| *q).collect();
    let mut mismatched_queries: BTreeSet<String> = BTreeSet::new();
    let mut report = Vec::new();
    let mut comparisons = 0;
    for (i, raw) in queries.iter().enumerate() {
        let q = raw
            .replace("{T1}", &e2e::promqlcmp::secs(t1))
            .replace("{T2}", &e2e::promqlcmp::secs(t2));
        let mut runs: Vec<(String, Answer, Answer, bool)> = Vec::new();
        for &t in &instants {
            let theirs = prom_instant(&addr, &q, t).expect("query prometheus");
            let ours = match rt.block_on(engine.instant_query(&storage, &q, t)) {
                Ok(r) => Answer::Value(r.value),
                Err(e) => Answer::Error {
                    kind: e.error_type().to_string(),
                    msg: e.to_string(),
                },
            };
            runs.push((
                format!("instant at {t}"),
                ours,
                theirs,
                is_ordered(raw) || is_value_ordered(raw),
            ));
        }
        let (s, e, st) = ranges[i % ranges.len()];
        let theirs = prom_range(&addr, &q, s, e, st).expect("query prometheus");
        let ours = match rt.block_on(engine.range_query(&storage, &q, s, e, st)) {
            Ok(r) => Answer::Value(r.value),
            Err(err) => Answer::Error {
                kind: err.error_type().to_string(),
                msg: err.to_string(),
            },
        };
        runs.push((format!("range {s}..{e} step {st}"), ours, theirs, false));
        for (mode, ours, theirs, ordered) in runs {
            comparisons += 1;
            if let Err(why) = compare_answers(&ours, &theirs, ordered) {
                mismatched_queries.insert(raw.clone());
                if !known.contains(raw.as_str()) {
                    report.push(format!(
                        "MISMATCH {q}\n  ({mode}) {why}\n  ours:       {}\n  prometheus: {}",
                        show_answer(&ours),
                        show_answer(&theirs)
                    ));
                }
            }
        }
    }
    let unexpected: Vec<&String> = mismatched_queries
        .iter()
        .filter(|q| !known.contains(q.as_str()))
        .collect();
    let now_agree: Vec<&str> = KNOWN_DIFFS
        .iter()
        .map(|(q, _)| *q)
        .filter(|q| !mismatched_queries.contains(*q))
        .collect();
    for r in &report {
        println!("{r}");
    }
    println!(
        "promql_vs_prometheus: {} queries, {comparisons} comparisons, {} queries differ ({} known)",
        queries.len(),
        mismatched_queries.len(),
        mismatched_queries.len() - unexpected.len()
    );
    assert!(
        now_agree.is_empty(),
        "KNOWN_DIFFS entries that now agree with Prometheus (remove them): {now_agree:#?}"
    );
    assert!(
        unexpected.is_empty(),
        "{} queries differ from Prometheus 3.5.3 (see MISMATCH lines above): {unexpected:#?}",
        unexpected.len()
    );
}
