//! Side-by-side: our PromQL engine against the reference Prometheus 3.5.3 on the same
//! data. A few hundred realistic series (counters with resets, gauges, classic histogram
//! buckets, targets with outages and targets that went away) are backfilled into
//! Prometheus with `promtool tsdb create-blocks-from openmetrics` and loaded into our
//! in-memory storage. Every query of the corpus runs as instant queries at several times
//! and as a range query; answers must agree (result type, label sets, values within 1e-9
//! relative, NaN == NaN, infinities exact, order where the query sorts, errors by type and
//! message), apart from the differences listed in [`KNOWN_DIFFS`].

use e2e::promqlcmp::{
    Answer, compare_answers, prom_instant, prom_range, realistic_dataset, show_answer,
    start_prometheus_with, to_mem_storage,
};
use promql::{Engine, EngineOptions, MemStorage};
use std::collections::BTreeSet;

/// Queries whose answers differ today, with the reason. Every entry must still differ
/// (the test fails when one starts to agree, so the list stays honest).
const KNOWN_DIFFS: &[(&str, &str)] = &[];

/// The query corpus. `{T1}`, `{T2}` are replaced with absolute times (seconds).
fn corpus() -> Vec<String> {
    let mut q: Vec<String> = Vec::new();
    let mut add = |s: &str| q.push(s.to_string());
    // Selectors and matchers.
    for s in [
        "up",
        "up == 0",
        "up != 1",
        r#"http_requests_total{job="api"}"#,
        r#"http_requests_total{job=~"api|db", code!="200"}"#,
        r#"http_requests_total{method!~"G.*", job!="cache"}"#,
        r#"{__name__=~"http_request_duration_seconds_(sum|count)", job="db"}"#,
        r#"{job="cache", __name__!~"http.*|node.*"}"#,
        "queue_length",
        "queue_length offset 5m",
        "queue_length offset -10m",
        "temperature_celsius @ {T1}",
        "temperature_celsius offset 1h @ {T2}",
        "http_requests_total[5m]",
        r#"node_cpu_seconds_total{cpu="0",mode="idle"}[2m] offset 1m"#,
        r#"queue_length[3m] @ {T1}"#,
        "nonexistent_metric",
        r#"up{job="nope"}"#,
        r#"{__name__="up", instance=~".*-1:.*"}"#,
        r#"up{instance=~"(?i)API-.*"}"#,
    ] {
        add(s);
    }
    // Counter functions.
    for f in [
        "rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets",
    ] {
        for sel in [
            "http_requests_total",
            r#"node_cpu_seconds_total{mode="user"}"#,
        ] {
            for r in ["1m", "5m"] {
                add(&format!("{f}({sel}[{r}])"));
            }
        }
    }
    // Gauge functions over time.
    for f in [
        "avg_over_time",
        "min_over_time",
        "max_over_time",
        "sum_over_time",
        "count_over_time",
        "last_over_time",
        "present_over_time",
        "stddev_over_time",
        "stdvar_over_time",
    ] {
        for sel in ["temperature_celsius", "queue_length"] {
            for r in ["5m", "30m"] {
                add(&format!("{f}({sel}[{r}])"));
            }
        }
    }
    for s in [
        "quantile_over_time(0.9, temperature_celsius[10m])",
        "quantile_over_time(0, queue_length[10m])",
        "quantile_over_time(1.5, queue_length[10m])",
        "absent_over_time(nonexistent_metric[5m])",
        "absent_over_time(up[5m])",
        r#"absent_over_time(queue_length{job="db"}[5m])"#,
        "predict_linear(process_resident_memory_bytes[30m], 3600)",
        "predict_linear(temperature_celsius[10m], 600)",
        "deriv(process_resident_memory_bytes[10m])",
        "double_exponential_smoothing(temperature_celsius[10m], 0.5, 0.5)",
        "double_exponential_smoothing(queue_length[20m], 0.1, 0.9)",
        "delta(temperature_celsius[15m])",
        "idelta(queue_length[5m])",
        "changes(up[30m])",
        "resets(http_request_duration_seconds_count[1h])",
    ] {
        add(s);
    }
    // Math, clamping, trigonometry.
    for f in [
        "abs", "ceil", "floor", "round", "sqrt", "exp", "ln", "log2", "log10", "sgn", "sin", "cos",
        "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "deg",
        "rad",
    ] {
        add(&format!("{f}(temperature_celsius)"));
    }
    for s in [
        "round(temperature_celsius, 5)",
        "round(temperature_celsius, 0.3)",
        "clamp(temperature_celsius, -1, 20)",
        "clamp(temperature_celsius, 20, -1)",
        "clamp_min(queue_length, 10)",
        "clamp_max(queue_length, 10)",
        "exp(queue_length)",
        "ln(queue_length)",
        "pi()",
        "-temperature_celsius",
        "temperature_celsius % 7",
        "temperature_celsius ^ 2",
        "2 ^ queue_length",
        "temperature_celsius atan2 queue_length",
        "1 / (queue_length - queue_length)",
        "0 / (queue_length - queue_length)",
    ] {
        add(s);
    }
    // Time functions.
    for s in [
        "time()",
        "timestamp(up)",
        "timestamp(queue_length offset 2m)",
        "minute()",
        "hour()",
        "day_of_week()",
        "day_of_month()",
        "day_of_year()",
        "days_in_month()",
        "month()",
        "year()",
        "minute(timestamp(up))",
        "hour(timestamp(queue_length))",
        "time() - timestamp(queue_length)",
    ] {
        add(s);
    }
    // Vector/scalar conversion, absence, labels, sorting.
    for s in [
        "vector(1)",
        "vector(time())",
        "scalar(sum(up))",
        r#"scalar(up{job="api"})"#,
        "sum(up) * scalar(count(up))",
        "absent(nonexistent_metric)",
        r#"absent(nonexistent_metric{job="x", instance=~"a.*"})"#,
        r#"absent(up{job="api"})"#,
        r#"label_replace(up, "host", "$1", "instance", "(.*):.*")"#,
        r#"label_replace(up, "job", "", "job", "api")"#,
        r#"label_replace(up, "nomatch", "$1", "instance", "xyz(.*)")"#,
        r#"label_join(up, "foo", "-", "job", "instance")"#,
        r#"label_join(up, "job", "", "instance")"#,
        "sort(queue_length)",
        "sort_desc(temperature_celsius)",
        r#"sort_by_label(up, "instance")"#,
        r#"sort_by_label_desc(temperature_celsius, "sensor", "instance")"#,
        "sort(rate(http_requests_total[5m]))",
        r#""hello""#,
        "42",
        "-1.5e3 + 2",
    ] {
        add(s);
    }
    // Classic histograms.
    for s in [
        "histogram_quantile(0.9, rate(http_request_duration_seconds_bucket[5m]))",
        "histogram_quantile(0.5, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
        "histogram_quantile(0.99, sum by (job, le) (rate(http_request_duration_seconds_bucket[10m])))",
        "histogram_quantile(0, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
        "histogram_quantile(1, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
        "histogram_quantile(1.5, sum by (le) (increase(http_request_duration_seconds_bucket[5m])))",
        "histogram_quantile(0.75, http_request_duration_seconds_bucket)",
        "rate(http_request_duration_seconds_sum[5m]) / rate(http_request_duration_seconds_count[5m])",
    ] {
        add(s);
    }
    // Aggregations.
    for agg in [
        "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar",
    ] {
        add(&format!("{agg}(rate(http_requests_total[5m]))"));
        add(&format!("{agg} by (job) (rate(http_requests_total[5m]))"));
        add(&format!(
            "{agg} without (instance, method) (temperature_celsius)"
        ));
    }
    for s in [
        "sum by (job, code) (increase(http_requests_total[10m]))",
        "sum by (__name__) (up)",
        "sum without () (up)",
        "sum(up) by ()",
        "count by (mode) (node_cpu_seconds_total)",
        "avg by (mode) (rate(node_cpu_seconds_total[5m]))",
        "max by (job) (process_resident_memory_bytes)",
        "topk(3, rate(http_requests_total[5m]))",
        "bottomk(2, temperature_celsius)",
        "topk by (job) (1, process_resident_memory_bytes)",
        "bottomk without (sensor) (1, temperature_celsius)",
        "topk(5, queue_length)",
        "quantile(0.9, temperature_celsius)",
        "quantile by (job) (0.5, rate(http_requests_total[5m]))",
        "quantile(-0.5, queue_length)",
        r#"count_values("value", up)"#,
        r#"count_values by (job) ("q", queue_length)"#,
        "count(count by (job) (up))",
        "sum(sum by (job) (up))",
        "avg(temperature_celsius) - min(temperature_celsius)",
    ] {
        add(s);
    }
    // Binary operators and vector matching.
    for s in [
        r#"rate(http_requests_total{code="500"}[5m]) / ignoring(code) rate(http_requests_total{code="200"}[5m])"#,
        r#"sum by (job, instance) (rate(http_requests_total[5m])) / on(instance) group_left process_resident_memory_bytes"#,
        r#"process_resident_memory_bytes * on(instance) group_left(sensor) temperature_celsius{sensor="inlet"}"#,
        r#"up * on(job, instance) group_right process_resident_memory_bytes"#,
        "up + on(instance) group_left(job) queue_length",
        "http_requests_total / on(job) up",
        "sum by (job) (up) / on(job) group_right sum by (job, instance) (up)",
        "rate(http_requests_total[5m]) > 10",
        "rate(http_requests_total[5m]) > bool 10",
        "temperature_celsius < 0",
        "temperature_celsius <= bool 0",
        "queue_length == 0",
        "queue_length >= queue_length offset 1m",
        "queue_length > bool queue_length offset 1m",
        "10 < temperature_celsius",
        "1 > bool 2",
        "1 + 2 * 3 - 4 / 5",
        "2 ^ 3 ^ 2",
        "up and queue_length",
        "up and on(instance) queue_length",
        "queue_length or up",
        r#"queue_length or on(job) up{job="cache"}"#,
        "up unless queue_length",
        r#"up unless on(job) queue_length{job="db"}"#,
        "up == bool up",
        "temperature_celsius - on(instance, sensor) temperature_celsius offset 10m",
        r#"temperature_celsius{sensor="inlet"} - ignoring(sensor) temperature_celsius{sensor="outlet"}"#,
        "sum by (instance) (rate(node_cpu_seconds_total[5m])) * 100",
        r#"sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5m])) / sum by (instance) (rate(node_cpu_seconds_total[5m]))"#,
        "(queue_length > 10) + 1",
        "vector(1) + up",
        "time() - 5",
    ] {
        add(s);
    }
    // Subqueries, offset and @.
    for s in [
        "max_over_time(rate(http_requests_total[5m])[30m:1m])",
        "avg_over_time(up[10m:])",
        "rate(sum by (job) (http_requests_total)[10m:30s])",
        "deriv(queue_length[15m:2m] offset 5m)",
        "min_over_time(temperature_celsius[1h:5m] @ {T2})",
        "sum_over_time(queue_length[20m:90s])",
        "max_over_time(sum(rate(http_requests_total[1m]))[1h:])",
        "avg_over_time((temperature_celsius > 10)[30m:1m])",
        "rate(http_requests_total[5m] @ {T1})",
        "up @ start()",
        "up @ end()",
        "sum(rate(http_requests_total[5m] @ end()))",
        "rate(http_requests_total[5m] offset -5m)",
        "increase(http_requests_total[1h] offset 30m)",
        "last_over_time(queue_length[10m] @ {T2} offset 5m)",
        "count_over_time(queue_length[1h:1m])",
    ] {
        add(s);
    }
    // Errors Prometheus reports while evaluating (message and type must match).
    for s in [
        "http_requests_total + on(job) group_left http_requests_total",
        r#"label_replace(up, "job", "x", "instance", ".*")"#,
        "sum(up) by (job) + on() sum(up) by (job)",
        r#"label_replace(up, "foo", "$1", "instance", "(.*")"#,
    ] {
        add(s);
    }
    q
}

/// Queries whose instant result order is defined (sorting functions, topk/bottomk).
fn is_ordered(q: &str) -> bool {
    [
        "sort(",
        "sort_desc(",
        "sort_by_label(",
        "sort_by_label_desc(",
    ]
    .iter()
    .any(|p| q.starts_with(p))
}

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
            runs.push((format!("instant at {t}"), ours, theirs, is_ordered(raw)));
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
