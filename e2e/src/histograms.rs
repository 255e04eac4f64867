//! A real Prometheus 3.5.3 producing every kind of native histogram, for tests that need
//! Prometheus-written histogram data: it scrapes its own metrics over protobuf (integer
//! exponential histograms such as `prometheus_http_request_duration_seconds`), a classic
//! histogram served here converted to custom buckets (NHCB, schema -53,
//! `golden_latency_seconds`), and records `rate()` of a native histogram (float
//! histograms, `job:http_request_duration_seconds:rate1m`).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::promqlcmp::{secs, urlencode};
use crate::{Prometheus, http_get, http_request};

/// Serves a classic histogram whose observations grow with every scrape; some buckets
/// stay empty for a while so the converted NHCB layout changes mid-chunk. Returns the
/// port and the scrape count.
pub fn serve_classic_histogram() -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind classic target");
    let port = listener.local_addr().expect("local addr").port();
    let scrapes = Arc::new(AtomicU64::new(0));
    let n = scrapes.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let k = n.fetch_add(1, Ordering::Relaxed);
            // Cumulative bucket counts: le=0.1 grows every scrape, 0.5 from scrape 8,
            // 2.5 from scrape 15, +Inf adds one every third scrape.
            let b1 = k;
            let b2 = b1 + k.saturating_sub(8);
            let b3 = b2 + 2 * k.saturating_sub(15);
            let inf = b3 + k / 3;
            let sum = b1 as f64 * 0.05
                + (b2 - b1) as f64 * 0.3
                + (b3 - b2) as f64 * 1.7
                + (inf - b3) as f64 * 4.0;
            let body = format!(
                "# HELP golden_latency_seconds A classic histogram.\n\
                 # TYPE golden_latency_seconds histogram\n\
                 golden_latency_seconds_bucket{{le=\"0.1\"}} {b1}\n\
                 golden_latency_seconds_bucket{{le=\"0.5\"}} {b2}\n\
                 golden_latency_seconds_bucket{{le=\"2.5\"}} {b3}\n\
                 golden_latency_seconds_bucket{{le=\"+Inf\"}} {inf}\n\
                 golden_latency_seconds_sum {sum}\n\
                 golden_latency_seconds_count {inf}\n"
            );
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes());
        }
    });
    (port, scrapes)
}

/// Prometheus with native histograms on, its admin API enabled, scraping itself and
/// the classic target every second and recording float histograms every second; with
/// `extra_config` appended to prometheus.yml (e.g. a `remote_write` section).
pub fn start_native_histogram_prometheus(
    classic_port: u16,
    extra_config: &str,
    extra_args: &[&str],
) -> (Prometheus, tempfile::TempDir) {
    start_native_histogram_prometheus_labeled(classic_port, &[], extra_config, extra_args)
}

/// [`start_native_histogram_prometheus`] with `external` labels (a sidecar requires
/// them).
pub fn start_native_histogram_prometheus_labeled(
    classic_port: u16,
    external: &[(&str, &str)],
    extra_config: &str,
    extra_args: &[&str],
) -> (Prometheus, tempfile::TempDir) {
    let rules_dir = tempfile::tempdir().expect("rules dir");
    let rules = rules_dir.path().join("rules.yml");
    std::fs::write(
        &rules,
        "groups:\n- name: golden\n  interval: 1s\n  rules:\n  - record: job:http_request_duration_seconds:rate1m\n    expr: sum by (job) (rate(prometheus_http_request_duration_seconds[1m]))\n",
    )
    .expect("write rules");
    let mut labels = String::new();
    if !external.is_empty() {
        labels.push_str("  external_labels:\n");
        for (k, v) in external {
            labels.push_str(&format!("    {k}: {v}\n"));
        }
    }
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{labels}rule_files:\n  - {}\nscrape_configs:\n  - job_name: self\n    scrape_protocols: [PrometheusProto]\n    static_configs:\n      - targets: ['127.0.0.1:{{{{PORT}}}}']\n  - job_name: classic\n    scrape_protocols: [PrometheusText0.0.4]\n    convert_classic_histograms_to_nhcb: true\n    static_configs:\n      - targets: ['127.0.0.1:{classic_port}']\n{extra_config}",
        rules.display()
    );
    let mut args = vec![
        "--enable-feature=native-histograms",
        "--web.enable-admin-api",
    ];
    args.extend_from_slice(extra_args);
    (Prometheus::start(&config, &args), rules_dir)
}

/// Sends HTTP requests to Prometheus's API for `secs` seconds at an uneven pace, so its
/// request-duration histograms gain observations in changing buckets.
pub fn generate_traffic(addr: &str, secs: u64) {
    let paths = [
        "/api/v1/query?query=up",
        "/api/v1/labels",
        "/api/v1/query?query=sum(rate(prometheus_http_requests_total[1m]))",
        "/api/v1/status/buildinfo",
    ];
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    let mut i = 0u64;
    while std::time::Instant::now() < end {
        let _ = http_get(addr, paths[(i % paths.len() as u64) as usize]);
        std::thread::sleep(Duration::from_millis(20 + (i % 7) * 15));
        i += 1;
    }
}

/// Takes a TSDB snapshot (head included) and returns its directory.
pub fn snapshot(prom: &Prometheus) -> std::path::PathBuf {
    let (code, body) = http_request(
        &prom.addr(),
        "POST",
        "/api/v1/admin/tsdb/snapshot",
        &[],
        &[],
    )
    .expect("snapshot request");
    assert_eq!(code, 200, "snapshot: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("snapshot JSON");
    let name = v["data"]["name"].as_str().expect("snapshot name");
    prom.dir.path().join("data").join("snapshots").join(name)
}

/// Numbers in answers are strings; both engines compute in float64 but may add in a
/// different order.
const REL_TOLERANCE: f64 = 1e-9;

fn numbers_equal(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => {
            (x.is_nan() && y.is_nan())
                || (x - y).abs() <= REL_TOLERANCE * x.abs().max(y.abs()).max(1e-300)
        }
        _ => false,
    }
}

/// Whether `path` names a lower or upper bound in a histogram's `buckets`
/// (`[boundary rule, lower, upper, count]`).
fn is_bucket_bound(path: &str) -> bool {
    path.rsplit_once(".buckets[")
        .is_some_and(|(_, tail)| tail.ends_with("][1]") || tail.ends_with("][2]"))
}

/// Compares two JSON values, numbers-as-strings with [`REL_TOLERANCE`] (bucket bounds
/// exactly); the first difference as a path.
pub fn json_diff(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        // A bucket's bounds are read from the schema, never summed: they must print as
        // Prometheus prints them, to the last digit.
        (Value::String(x), Value::String(y)) if is_bucket_bound(path) => {
            (x != y).then(|| format!("{path}: bucket bound {x} vs {y}"))
        }
        (Value::String(x), Value::String(y)) => {
            (!numbers_equal(x, y)).then(|| format!("{path}: {x} vs {y}"))
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path}: {} elements vs {}", x.len(), y.len()));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (p, q))| json_diff(p, q, &format!("{path}[{i}]")))
        }
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => json_diff(p, q, &format!("{path}.{k}")),
                _ => Some(format!("{path}.{k}: present on one side only")),
            })
        }
        (x, y) => (x != y).then(|| format!("{path}: {x} vs {y}")),
    }
}

/// `data.result` of an answer, each series' external labels removed, sorted by metric.
fn results(body: &str, strip: &[&str]) -> Result<Vec<Value>, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
    if v["status"] != "success" {
        return Err(format!("not a success: {body}"));
    }
    let mut out: Vec<Value> = v["data"]["result"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("no result array: {body}"))?;
    for r in &mut out {
        if let Some(m) = r["metric"].as_object_mut() {
            for l in strip {
                m.remove(*l);
            }
        }
    }
    out.sort_by_key(|r| r["metric"].to_string());
    Ok(out)
}

fn kinds(results: &[Value]) -> (usize, usize) {
    let hist = results
        .iter()
        .filter(|r| r.get("histogram").is_some() || r.get("histograms").is_some())
        .count();
    (hist, results.len() - hist)
}

/// Histogram queries over the data [`start_native_histogram_prometheus`] produces: raw
/// histograms, `rate`, the `histogram_*` functions, `sum by`, custom buckets (NHCB) and
/// recorded float histograms.
pub const HISTOGRAM_QUERIES: &[&str] = &[
    "prometheus_http_request_duration_seconds",
    "rate(prometheus_http_request_duration_seconds[30s])",
    "histogram_count(rate(prometheus_http_request_duration_seconds[30s]))",
    "histogram_sum(rate(prometheus_http_request_duration_seconds[30s]))",
    "histogram_avg(rate(prometheus_http_request_duration_seconds[1m]))",
    "histogram_quantile(0.9, rate(prometheus_http_request_duration_seconds[30s]))",
    "histogram_fraction(0, 0.1, rate(prometheus_http_request_duration_seconds[1m]))",
    "sum by (job) (rate(prometheus_http_request_duration_seconds[1m]))",
    "histogram_quantile(0.5, sum(rate(prometheus_http_request_duration_seconds[1m])))",
    "golden_latency_seconds",
    "histogram_quantile(0.75, rate(golden_latency_seconds[30s]))",
    "histogram_count(increase(golden_latency_seconds[20s]))",
    "job:http_request_duration_seconds:rate1m",
    "histogram_quantile(0.99, job:http_request_duration_seconds:rate1m)",
];

/// What [`compare_histogram_queries`] found.
#[derive(Debug, Default)]
pub struct Comparison {
    /// One line per answer that differs.
    pub bad: Vec<String>,
    pub answers: usize,
    /// Result series compared, by kind.
    pub hist_results: usize,
    pub float_results: usize,
}

impl Comparison {
    /// Panics unless every answer equals Prometheus's and both kinds were compared.
    pub fn assert_clean(&self) {
        assert!(
            self.bad.is_empty(),
            "{} of {} answers differ from Prometheus 3.5.3:\n{}",
            self.bad.len(),
            self.answers,
            self.bad.join("\n")
        );
        assert!(
            self.hist_results > 0 && self.float_results > 0,
            "both histogram and float results were compared ({} / {})",
            self.hist_results,
            self.float_results
        );
    }
}

/// Asks Prometheus (`prom`) and Orrery's querier (`orrery`) every [`HISTOGRAM_QUERIES`]
/// entry (except those mentioning `skip`, when given), instant at `end_ms` and as a range `[start_ms, end_ms]` step 5 s, and compares
/// the answers (labels in `strip` removed from Orrery's; numbers within 1e-9 relative).
/// Prints a line per answer.
pub fn compare_histogram_queries(
    prom: &str,
    orrery: &str,
    start_ms: i64,
    end_ms: i64,
    strip: &[&str],
    skip: Option<&str>,
) -> Comparison {
    let queries: Vec<&str> = HISTOGRAM_QUERIES
        .iter()
        .copied()
        .filter(|q| !skip.is_some_and(|s| q.contains(s)))
        .collect();
    compare_queries(prom, orrery, &queries, start_ms, end_ms, 5, strip)
}

/// Asks Prometheus (`prom`) and Orrery's querier (`orrery`) each of `queries`, instant at
/// `end_ms` and as a range `[start_ms, end_ms]` every `step_secs`, and compares the
/// answers, histograms included (labels in `strip` removed from Orrery's; numbers within
/// 1e-9 relative). Prints a line per answer.
pub fn compare_queries(
    prom: &str,
    orrery: &str,
    queries: &[&str],
    start_ms: i64,
    end_ms: i64,
    step_secs: u64,
    strip: &[&str],
) -> Comparison {
    let mut c = Comparison::default();
    for q in queries {
        for (kind, path) in [
            (
                "instant",
                format!("/api/v1/query?query={}&time={}", urlencode(q), secs(end_ms)),
            ),
            (
                "range",
                format!(
                    "/api/v1/query_range?query={}&start={}&end={}&step={step_secs}",
                    urlencode(q),
                    secs(start_ms),
                    secs(end_ms)
                ),
            ),
        ] {
            c.answers += 1;
            let (pc, pb) = http_get(prom, &path).expect("query prometheus");
            let (oc, ob) = http_get(orrery, &path).expect("query orrery");
            if pc != oc {
                c.bad.push(format!(
                    "{kind} {q}: status {oc} vs Prometheus's {pc}: {ob}"
                ));
                continue;
            }
            let theirs = results(&pb, &[]).expect("prometheus answer");
            let ours = match results(&ob, strip) {
                Ok(r) => r,
                Err(e) => {
                    c.bad.push(format!("{kind} {q}: {e}"));
                    continue;
                }
            };
            assert!(
                !theirs.is_empty(),
                "{kind} {q}: Prometheus returned nothing: {pb}"
            );
            let (h, f) = kinds(&theirs);
            c.hist_results += h;
            c.float_results += f;
            if let Some(d) = json_diff(&Value::Array(ours), &Value::Array(theirs), "result") {
                c.bad.push(format!("{kind} {q}: {d}"));
            }
            println!("{kind:<7} {q:<85} {} series  ok", h + f);
        }
    }
    c
}
