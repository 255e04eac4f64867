//! Native histograms written by the real Prometheus 3.5.3, read back through Orrery
//! (issue #20): Prometheus scrapes integer exponential histograms, custom-bucket
//! histograms (NHCB) and records float histograms; its TSDB snapshot (head included) is
//! uploaded to a FILESYSTEM bucket; `orrery store` serves the blocks' HISTOGRAM and
//! FLOAT_HISTOGRAM chunks as they are and `orrery query` evaluates them. Histogram
//! queries — raw histograms in the API's `histogram`/`histograms` JSON, `rate`,
//! `histogram_count`/`sum`/`avg`/`quantile`/`fraction`, `sum by`, custom buckets, float
//! histograms — answer as Prometheus itself answers over its own data, instant and range.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use e2e::histograms::{
    generate_traffic, serve_classic_histogram, snapshot, start_native_histogram_prometheus,
};
use e2e::promqlcmp::{secs, urlencode};
use e2e::{Proc, free_port, http_get, orrery_bin, wait_for};
use objstore::{Bucket, BucketConfig};
use serde_json::Value;
use tsdb::block::list_blocks;

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

/// Compares two JSON values, numbers-as-strings with [`REL_TOLERANCE`]; the first
/// difference as a path.
fn json_diff(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
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

#[test]
fn prometheus_native_histograms_answer_alike_through_store_and_query() {
    let (classic_port, _) = serve_classic_histogram();
    let (prom, _rules) = start_native_histogram_prometheus(classic_port, "", &[]);
    generate_traffic(&prom.addr(), 40);
    let snap = snapshot(&prom);

    let dir = tempfile::tempdir().expect("temp dir");
    let bucket_dir = dir.path().join("bucket");
    std::fs::create_dir_all(&bucket_dir).expect("bucket dir");
    let objstore = format!(
        "type: FILESYSTEM\nconfig:\n  directory: {}\n",
        bucket_dir.display()
    );
    let bucket =
        Bucket::new(&BucketConfig::parse(&objstore).expect("config"), None).expect("bucket");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let labels = BTreeMap::from([("cluster".to_string(), "golden".to_string())]);
    let mut maxt = i64::MIN;
    let mut mint = i64::MAX;
    let blocks = list_blocks(&snap).expect("snapshot blocks");
    assert!(!blocks.is_empty(), "empty snapshot at {}", snap.display());
    for b in &blocks {
        let meta = rt
            .block_on(objstore::block::upload_block(
                &bucket, &b.dir, &labels, "sidecar",
            ))
            .expect("upload snapshot block");
        maxt = maxt.max(meta.max_time);
        mint = mint.min(meta.min_time);
    }

    let (grpc, shttp, qhttp) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut cmd = Command::new(orrery_bin());
    cmd.args([
        "store".to_string(),
        format!("--objstore.config={objstore}"),
        format!("--data-dir={}", dir.path().join("store").display()),
        format!("--grpc-address={grpc}"),
        format!("--http-address={shttp}"),
    ]);
    let store = Proc::spawn("orrery-store", cmd, dir.path().join("store.log"));
    let mut cmd = Command::new(orrery_bin());
    cmd.args([
        "query".to_string(),
        format!("--http-address={qhttp}"),
        format!("--grpc-address=127.0.0.1:{}", free_port()),
        format!("--endpoint={grpc}"),
    ]);
    let query = Proc::spawn("orrery-query", cmd, dir.path().join("query.log"));

    // Evaluate where both hold the same samples: inside the snapshot, a minute in.
    let end = maxt - 2_000;
    let start = (mint + 60_000).min(end - 10_000);
    let probe = format!(
        "/api/v1/query?query={}&time={}",
        urlencode("count(prometheus_http_request_duration_seconds)"),
        secs(end)
    );
    let seen = wait_for(Duration::from_secs(60), || {
        let (code, body) = http_get(&qhttp, &probe).ok()?;
        (code == 200 && body.contains("\"result\":[{")).then_some(())
    });
    assert!(
        seen.is_some(),
        "the querier never saw the snapshot; query log:\n{}\nstore log:\n{}",
        query.log_text(),
        store.log_text()
    );

    let queries = [
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
    let mut bad = Vec::new();
    let (mut hist_results, mut float_results) = (0, 0);
    for q in queries {
        for (kind, path) in [
            (
                "instant",
                format!("/api/v1/query?query={}&time={}", urlencode(q), secs(end)),
            ),
            (
                "range",
                format!(
                    "/api/v1/query_range?query={}&start={}&end={}&step=5",
                    urlencode(q),
                    secs(start),
                    secs(end)
                ),
            ),
        ] {
            let (pc, pb) = http_get(&prom.addr(), &path).expect("query prometheus");
            let (oc, ob) = http_get(&qhttp, &path).expect("query orrery");
            if pc != oc {
                bad.push(format!(
                    "{kind} {q}: status {oc} vs Prometheus's {pc}: {ob}"
                ));
                continue;
            }
            let theirs = results(&pb, &[]).expect("prometheus answer");
            let ours = match results(&ob, &["cluster"]) {
                Ok(r) => r,
                Err(e) => {
                    bad.push(format!("{kind} {q}: {e}"));
                    continue;
                }
            };
            assert!(
                !theirs.is_empty(),
                "{kind} {q}: Prometheus returned nothing: {pb}"
            );
            let (h, f) = kinds(&theirs);
            hist_results += h;
            float_results += f;
            if let Some(d) = json_diff(&Value::Array(ours), &Value::Array(theirs), "result") {
                bad.push(format!("{kind} {q}: {d}"));
            }
            println!("{kind:<7} {q:<85} {} series  ok", h + f);
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} answers differ from Prometheus 3.5.3:\n{}",
        bad.len(),
        queries.len() * 2,
        bad.join("\n")
    );
    assert!(
        hist_results > 0 && float_results > 0,
        "both histogram and float results were compared ({hist_results} / {float_results})"
    );
    drop(query);
    drop(store);
}
