//! Times the same PromQL range queries on the same data in our engine (in-process,
//! in-memory storage) and in the reference Prometheus 3.5.3 (HTTP API; its figures include
//! HTTP and JSON encoding, ours do not), and prints per-query medians and the ratio.
//!
//! `cargo run --release -p e2e --bin promql_bench [-- REPS [SERIES]]` (defaults 5, 10000).
//! The data: SERIES counters `bench_requests_total{job,instance,path}` plus one
//! `bench_info{instance,team}` per 10 series, 1h05m at 15s, backfilled into Prometheus with
//! promtool; each query runs over the last hour at a 15s step.

use e2e::promqlcmp::{
    Answer, bench_dataset, compare_answers, parse_api_answer, secs, start_prometheus_with,
    to_mem_storage, urlencode,
};
use promql::{Engine, EngineOptions};
use std::time::{Duration, Instant};

const QUERIES: &[&str] = &[
    "sum by (job) (rate(bench_requests_total[5m]))",
    "topk(10, rate(bench_requests_total[5m]))",
    "rate(bench_requests_total[5m]) / on(instance) group_left(team) bench_info",
];

/// GET with a generous timeout (the shared helper's 30s is too short for big queries on
/// a loaded machine); true when the status is 200. Reads the whole body.
fn timed_get(addr: &str, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(600)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = Vec::new();
    if s.read_to_end(&mut buf).is_err() {
        return false;
    }
    buf.starts_with(b"HTTP/1.1 200")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5).max(1);
    let n: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let hour = 3_600_000;
    let t0 = (now_ms - 3 * hour) / hour * hour;
    let series = bench_dataset(t0, n, 65);
    let samples: usize = series.iter().map(|s| s.samples.len()).sum();
    println!(
        "data: {} series, {samples} samples; backfilling into Prometheus…",
        series.len()
    );
    let t = Instant::now();
    let prom = start_prometheus_with(&series);
    println!("prometheus ready after {:.1}s", t.elapsed().as_secs_f64());
    let storage = to_mem_storage(&series);
    drop(series);
    let engine = Engine::new(EngineOptions::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (start, end, step) = (t0 + 5 * 60_000, t0 + 65 * 60_000, 15_000);
    let addr = prom.addr();

    println!(
        "\n{:<75} {:>12} {:>14} {:>8}",
        "query (range 1h, step 15s)", "orrery ms", "prometheus ms", "ratio"
    );
    for q in QUERIES {
        let path = format!(
            "/api/v1/query_range?query={}&start={}&end={}&step={}",
            urlencode(q),
            secs(start),
            secs(end),
            secs(step)
        );
        // Warm-up and agreement check.
        let theirs = match e2e::http_get(&addr, &path) {
            Ok((_, body)) => parse_api_answer(&body).unwrap_or_else(|e| Answer::Error {
                kind: "client".into(),
                msg: e,
            }),
            Err(e) => Answer::Error {
                kind: "client".into(),
                msg: format!("not checked: {e}"),
            },
        };
        let ours = match rt.block_on(engine.range_query(&storage, q, start, end, step)) {
            Ok(r) => Answer::Value(r.value),
            Err(e) => Answer::Error {
                kind: e.error_type().into(),
                msg: e.to_string(),
            },
        };
        let agree = compare_answers(&ours, &theirs, false);
        let mut ours_t = Vec::new();
        let mut theirs_t = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            let r = rt.block_on(engine.range_query(&storage, q, start, end, step));
            ours_t.push(t.elapsed());
            assert!(r.is_ok(), "{q}: {r:?}");
            let t = Instant::now();
            let ok = timed_get(&addr, &path);
            theirs_t.push(t.elapsed());
            assert!(ok, "{q}: prometheus did not answer 200");
        }
        let (o, p) = (median(ours_t), median(theirs_t));
        println!(
            "{:<75} {:>12.1} {:>14.1} {:>7.2}x{}",
            q,
            o.as_secs_f64() * 1e3,
            p.as_secs_f64() * 1e3,
            p.as_secs_f64() / o.as_secs_f64(),
            match agree {
                Ok(()) => String::new(),
                Err(e) => format!("  (answers differ: {e})"),
            }
        );
    }
    println!("\nratio = prometheus / orrery (above 1: we are faster); medians of {reps} runs");
}
