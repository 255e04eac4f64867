//! A corpus of PromQL queries answered by `orrery query` over `orrery receive` must equal
//! the reference Prometheus 3.5.3's own answers over a window both hold (Prometheus
//! remote-writes what it scrapes).

mod querier_common;

use querier_common::*;
use std::time::Duration;

const METRICS: &[&str] = &[
    "up",
    "prometheus_tsdb_head_series",
    "prometheus_tsdb_head_samples_appended_total",
    "go_goroutines",
    "process_resident_memory_bytes",
    "go_memstats_alloc_bytes",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "prometheus_http_requests_total",
    "go_gc_duration_seconds",
    "prometheus_sd_discovered_targets",
    "process_cpu_seconds_total",
];

fn corpus() -> Vec<String> {
    let mut q = Vec::new();
    for m in METRICS {
        q.push(m.to_string());
        q.push(format!("sum({m})"));
        q.push(format!("count({m})"));
        q.push(format!("max_over_time({m}[10s])"));
        q.push(format!("avg by (job) ({m})"));
        q.push(format!("{m} * 2 + 1"));
        q.push(format!("topk(2, {m})"));
        q.push(format!("rate({m}[10s])"));
        q.push(format!("increase({m}[15s])"));
        q.push(format!("delta({m}[10s])"));
    }
    for extra in [
        "sum by (code) (rate(prometheus_http_requests_total[10s]))",
        "histogram_quantile(0.9, sum by (le) (rate(prometheus_http_request_duration_seconds_bucket[15s])))",
        "count by (__name__) ({__name__=~\"go_memstats_.*\"})",
        "absent(nonexistent_metric)",
        "vector(1) + 1",
        "scalar(sum(up))",
        "time()",
        "up == 1",
        "prometheus_tsdb_head_series > bool 10",
        "irate(process_cpu_seconds_total[5s])",
        "resets(prometheus_tsdb_head_samples_appended_total[20s])",
        "changes(prometheus_tsdb_head_series[20s])",
        "label_replace(up, \"foo\", \"$1\", \"job\", \"(.*)\")",
        "quantile_over_time(0.5, go_goroutines[20s])",
        "sum without (instance) (rate(prometheus_http_requests_total{handler=~\"/api.*\"}[10s]))",
        "go_goroutines offset 5s",
        "deriv(process_resident_memory_bytes[20s])",
        "stddev_over_time(go_goroutines[20s])",
        "sort_desc(sum by (handler) (prometheus_http_requests_total))",
        "count_values(\"value\", up)",
    ] {
        q.push(extra.to_string());
    }
    q
}

#[test]
fn corpus_equals_prometheus() {
    let recv = Receiver::start("receiver", &[("receive_replica", "0")]);
    let q = Querier::start(&[recv.grpc.as_str()], &[]);
    let prom = prometheus(&[], &[recv.remote_write_url()]);
    let paddr = prom.addr();
    let t0 = now_secs();
    // Let both hold ~40s of data; then evaluate at fixed past times.
    std::thread::sleep(Duration::from_secs(40));
    let end = (now_secs() - 8.0).floor();
    let start = (t0 + 25.0).ceil().min(end - 5.0);
    let corpus = corpus();
    assert!(corpus.len() >= 100, "corpus has {} queries", corpus.len());
    let mut failures = Vec::new();
    for query in &corpus {
        for (kind, ours, theirs) in [
            (
                "instant",
                instant(&q.http, query, end),
                instant(&paddr, query, end),
            ),
            (
                "range",
                range(&q.http, query, start, end, 1.0),
                range(&paddr, query, start, end, 1.0),
            ),
        ] {
            let (oc, ov) = ours;
            let (tc, tv) = theirs;
            if oc != tc || ov["status"] != tv["status"] {
                failures.push(format!("{kind} {query}: status {oc} {} vs {tc} {}", ov, tv));
                continue;
            }
            if tv["status"] != "success" {
                continue;
            }
            if let Some(d) = diff(&ov["data"], &tv["data"]) {
                failures.push(format!("{kind} {query}: {d}"));
            }
        }
    }
    let out = out_dir("querier_corpus");
    let _ = std::fs::write(out.join("failures.txt"), failures.join("\n"));
    assert!(
        failures.is_empty(),
        "{} of {} answers differ from Prometheus 3.5.3:\n{}",
        failures.len(),
        corpus.len() * 2,
        failures.join("\n")
    );
}
