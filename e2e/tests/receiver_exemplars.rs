//! Exemplars and metric metadata end to end.
//!
//! The real Prometheus 3.5.3 (`--enable-feature=exemplar-storage`) scrapes a test target
//! that exposes OpenMetrics exemplars (a counter and a classic histogram, with HELP,
//! TYPE and UNIT) and remote-writes to `orrery receive --tsdb.max-exemplars`, once with
//! remote write 1.0 (metadata requests every 2s) and once with 2.0. `orrery query`'s
//! `/api/v1/query_exemplars` and `/api/v1/metadata` then equal Prometheus's own answers
//! (JSON normalised for ordering and for the receiver's external labels), and no
//! exemplar or sample fails at the sender. Hostile exemplars (label sets over 128
//! characters, out of order) are dropped and counted; the request still succeeds.

mod querier_common;
mod receiver_common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use e2e::{Prometheus, http_get, wait_for};
use querier_common::{Querier, enc, get_json};
use receiver_common::Receiver;
use serde_json::Value;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A scrape target on 127.0.0.1 answering OpenMetrics with a fresh exemplar per scrape.
/// Returns its address; the thread lives as long as the test process.
fn exemplar_target() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind target");
    let addr = l.local_addr().unwrap().to_string();
    let n = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 4096];
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => req.extend_from_slice(&buf[..k]),
                }
            }
            let i = n.fetch_add(1, Ordering::SeqCst) + 1;
            let ts = now_ms() as f64 / 1000.0;
            let body = format!(
                "# HELP test_requests Requests served.\n\
                 # TYPE test_requests counter\n\
                 test_requests_total{{path=\"/a\"}} {i} # {{trace_id=\"a{i}\"}} {v} {ts:.3}\n\
                 test_requests_total{{path=\"/b\"}} {i2} # {{trace_id=\"b{i}\",span_id=\"s{i}\"}} 1 {ts:.3}\n\
                 # HELP test_latency_seconds Request latency.\n\
                 # TYPE test_latency_seconds histogram\n\
                 # UNIT test_latency_seconds seconds\n\
                 test_latency_seconds_bucket{{le=\"0.1\"}} {i} # {{trace_id=\"h{i}\"}} 0.05 {ts:.3}\n\
                 test_latency_seconds_bucket{{le=\"+Inf\"}} {i2} # {{trace_id=\"H{i}\"}} 0.5 {ts:.3}\n\
                 test_latency_seconds_sum {sum}\n\
                 test_latency_seconds_count {i2}\n\
                 # HELP test_temperature_celsius Temperature.\n\
                 # TYPE test_temperature_celsius gauge\n\
                 # UNIT test_temperature_celsius celsius\n\
                 test_temperature_celsius 21.5\n\
                 # EOF\n",
                v = 0.25 * i as f64,
                i2 = 2 * i,
                sum = 0.55 * i as f64,
            );
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = c.write_all(head.as_bytes());
            let _ = c.write_all(body.as_bytes());
        }
    });
    addr
}

fn prometheus_config(target: &str, receiver_rw: &str, v2: bool) -> String {
    let proto = if v2 {
        "    protobuf_message: io.prometheus.write.v2.Request\n"
    } else {
        ""
    };
    format!(
        r#"global:
  scrape_interval: 1s
scrape_configs:
  - job_name: exemplars
    static_configs:
      - targets: ["{target}"]
remote_write:
  - url: http://{receiver_rw}/api/v1/receive
{proto}    send_exemplars: true
    metadata_config:
      send: true
      send_interval: 2s
    queue_config:
      batch_send_deadline: 1s
      max_shards: 2
"#
    )
}

/// `/api/v1/query_exemplars` data with the receiver's tenant label removed from series
/// labels and series sorted by their labels.
fn normalised_exemplars(v: &Value) -> Vec<Value> {
    let mut out: Vec<Value> = v["data"].as_array().cloned().unwrap_or_default();
    for s in &mut out {
        if let Some(m) = s["seriesLabels"].as_object_mut() {
            m.remove("tenant_id");
        }
    }
    out.sort_by_key(|s| s["seriesLabels"].to_string());
    out
}

/// `/api/v1/metadata` data with each family's entries sorted.
fn normalised_metadata(v: &Value) -> Value {
    let mut m = v["data"].as_object().cloned().unwrap_or_default();
    for (_, entries) in m.iter_mut() {
        if let Some(a) = entries.as_array_mut() {
            a.sort_by_key(|e| e.to_string());
        }
    }
    Value::Object(m)
}

fn exemplars_of(addr: &str, query: &str, start: f64, end: f64) -> Vec<Value> {
    let (code, v) = get_json(
        addr,
        &format!(
            "/api/v1/query_exemplars?query={}&start={start:.3}&end={end:.3}",
            enc(query)
        ),
    );
    assert_eq!(code, 200, "query_exemplars on {addr}: {v}");
    normalised_exemplars(&v)
}

/// A counter of Prometheus's own `/metrics` (0 when absent), summed over its series.
fn prom_counter(addr: &str, name: &str) -> f64 {
    let (_, text) = http_get(addr, "/metrics").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Prometheus remote-writes to a fresh receiver; the querier's exemplar answers must
/// equal Prometheus's own. Returns the running parts for further checks.
#[allow(clippy::type_complexity)]
fn run_phase(v2: bool) -> (Receiver, Querier, Prometheus, tempfile::TempDir, (f64, f64)) {
    let dir = tempfile::tempdir().unwrap();
    let recv = Receiver::start(
        &dir.path().join("data"),
        &dir.path().join("receive.log"),
        &["--tsdb.max-exemplars=100000"],
    );
    let target = exemplar_target();
    let mut flags = vec!["--enable-feature=exemplar-storage"];
    if v2 {
        flags = vec!["--enable-feature=exemplar-storage,metadata-wal-records"];
    }
    let prom = Prometheus::start(&prometheus_config(&target, &recv.rw, v2), &flags);
    let q = Querier::start(&[&recv.grpc], &[]);
    let start = (now_ms() - 60_000) as f64 / 1000.0;
    let query = r#"{job="exemplars"}"#;

    // Wait for a few scrapes (the first comes after the scrape manager's 5s reload
    // throttle), then compare a window that has been sent.
    let _ = wait_for(Duration::from_secs(40), || {
        let now = now_ms() as f64 / 1000.0;
        let have = exemplars_of(&prom.addr(), query, start, now);
        (have.len() == 4
            && have
                .iter()
                .all(|s| s["exemplars"].as_array().is_some_and(|a| a.len() >= 3)))
        .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let end = (now_ms() - 500) as f64 / 1000.0;
    let want = exemplars_of(&prom.addr(), query, start, end);
    let n: usize = want
        .iter()
        .map(|s| s["exemplars"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(
        want.len() == 4 && n >= 12,
        "Prometheus itself should hold exemplars of 4 series by now: {want:?}\ntargets: {}\n{}\nlog:\n{}",
        get_json(&prom.addr(), "/api/v1/targets").1,
        http_get(&prom.addr(), "/metrics")
            .unwrap_or_default()
            .1
            .lines()
            .filter(|l| l.contains("exemplar") && !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
            + &format!(
                "\nseries: {}",
                get_json(
                    &prom.addr(),
                    "/api/v1/series?match[]=%7Bjob%3D%22exemplars%22%7D"
                )
                .1
            ),
        prom.proc.log_text()
    );
    let mut got = Vec::new();
    let same = wait_for(Duration::from_secs(30), || {
        got = exemplars_of(&q.http, query, start, end);
        (got == want).then_some(())
    });
    assert!(
        same.is_some(),
        "v2={v2}: orrery query's exemplars differ from Prometheus's\n orrery: {}\n prometheus: {}\nreceiver log:\n{}",
        serde_json::to_string(&got).unwrap(),
        serde_json::to_string(&want).unwrap(),
        recv.proc.log_text()
    );
    // A PromQL expression selects through its selectors, as in Prometheus.
    let expr = r#"sum(rate(test_requests_total{path="/a"}[1m]))"#;
    let want = exemplars_of(&prom.addr(), expr, start, end);
    assert_eq!(want.len(), 1, "{want:?}");
    assert_eq!(exemplars_of(&q.http, expr, start, end), want);

    // Nothing failed at the sender.
    for m in [
        "prometheus_remote_storage_exemplars_failed_total",
        "prometheus_remote_storage_samples_failed_total",
    ] {
        assert_eq!(prom_counter(&prom.addr(), m), 0.0, "{m} (v2={v2})");
    }
    assert!(
        prom_counter(&prom.addr(), "prometheus_remote_storage_exemplars_total") > 0.0,
        "Prometheus sent no exemplars (v2={v2})"
    );
    (recv, q, prom, dir, (start, end))
}

#[test]
fn exemplars_and_metadata_equal_prometheus_over_remote_write_1() {
    let (mut recv, q, mut prom, dir, _) = run_phase(false);

    // Metadata: the 1.0 metadata requests carry the scrape cache Prometheus's own API
    // reads, so the answers are equal.
    let mut got = Value::Null;
    let mut want = Value::Null;
    let same = wait_for(Duration::from_secs(20), || {
        want = normalised_metadata(&get_json(&prom.addr(), "/api/v1/metadata").1);
        got = normalised_metadata(&get_json(&q.http, "/api/v1/metadata").1);
        (got == want && want.as_object().is_some_and(|m| m.len() >= 3)).then_some(())
    });
    assert!(
        same.is_some(),
        "metadata differs:\n orrery: {got}\n prometheus: {want}\nreceiver log:\n{}",
        recv.proc.log_text()
    );
    assert_eq!(
        want["test_latency_seconds"],
        serde_json::json!([{"type": "histogram", "help": "Request latency.", "unit": "seconds"}])
    );
    for path in [
        "/api/v1/metadata?metric=test_requests",
        "/api/v1/metadata?metric=nope",
        "/api/v1/metadata?limit_per_metric=1&metric=test_temperature_celsius",
    ] {
        let w = normalised_metadata(&get_json(&prom.addr(), path).1);
        let g = normalised_metadata(&get_json(&q.http, path).1);
        assert_eq!(g, w, "{path}");
    }
    let (_, limited) = get_json(&q.http, "/api/v1/metadata?limit=1");
    assert_eq!(limited["data"].as_object().map(|m| m.len()), Some(1));
    let (code, bad) = get_json(&q.http, "/api/v1/metadata?limit=x");
    assert_eq!(
        (code, bad["error"].as_str()),
        (400, Some("limit must be a number"))
    );

    // Acknowledged metadata is on disk: with the sender gone (so nothing is pushed
    // again), a receiver SIGKILLed and restarted answers as before.
    let before = normalised_metadata(&get_json(&q.http, "/api/v1/metadata").1);
    prom.proc.kill();
    recv.proc.kill();
    drop(q);
    let recv = Receiver::start(
        &dir.path().join("data"),
        &dir.path().join("receive-2.log"),
        &["--tsdb.max-exemplars=100000"],
    );
    let q = Querier::start(&[&recv.grpc], &[]);
    let mut after = Value::Null;
    let same = wait_for(Duration::from_secs(20), || {
        after = normalised_metadata(&get_json(&q.http, "/api/v1/metadata").1);
        (after == before).then_some(())
    });
    assert!(
        same.is_some(),
        "metadata after a SIGKILL differs:\n after: {after}\n before: {before}\nreceiver log:\n{}",
        recv.proc.log_text()
    );
    assert_eq!(before, want, "the compared answer was Prometheus's");
}

#[test]
fn exemplars_equal_prometheus_over_remote_write_2() {
    let (mut recv, q, prom, dir, (start, end)) = run_phase(true);
    // 2.0 carries metadata per series (metadata-wal-records): the histogram's series
    // are one family, as Prometheus lists it.
    let found = wait_for(Duration::from_secs(20), || {
        let (_, v) = get_json(&q.http, "/api/v1/metadata?metric=test_latency_seconds");
        let e = v["data"]["test_latency_seconds"].clone();
        (e == serde_json::json!([{"type": "histogram", "help": "Request latency.", "unit": "seconds"}]))
            .then_some(())
    });
    assert!(
        found.is_some(),
        "no 2.0 metadata for test_latency_seconds: {}\nreceiver log:\n{}",
        get_json(&q.http, "/api/v1/metadata").1,
        recv.proc.log_text()
    );

    // Stored exemplars are in the WAL: after a SIGKILL the restarted receiver answers
    // the compared window as before.
    let query = r#"{job="exemplars"}"#;
    let want = exemplars_of(&prom.addr(), query, start, end);
    recv.proc.kill();
    let recv = Receiver::start(
        &dir.path().join("data"),
        &dir.path().join("receive-2.log"),
        &["--tsdb.max-exemplars=100000"],
    );
    let q = Querier::start(&[&recv.grpc], &[]);
    let mut got = Vec::new();
    let same = wait_for(Duration::from_secs(20), || {
        got = exemplars_of(&q.http, query, start, end);
        (got == want).then_some(())
    });
    assert!(
        same.is_some(),
        "exemplars after a SIGKILL differ from Prometheus's\n orrery: {}\n prometheus: {}",
        serde_json::to_string(&got).unwrap(),
        serde_json::to_string(&want).unwrap()
    );

    // The exemplar records are Prometheus's: Prometheus 3.5.3 opened on the receiver's
    // tenant directory replays them.
    let mut recv = recv;
    recv.proc.kill();
    let tenant = dir.path().join("data").join("default-tenant");
    let reopened = Prometheus::start_prepared(
        "global:\n  scrape_interval: 1h\n",
        &["--enable-feature=exemplar-storage"],
        |d| e2e::copy_dir(&tenant, d),
    );
    let theirs = exemplars_of(&reopened.addr(), query, start, end);
    assert_eq!(theirs, want, "Prometheus on the receiver's directory");
}

#[test]
fn hostile_exemplars_are_dropped_and_counted_the_rest_written() {
    use prost::Message;
    use storeapi::wire::{prometheus as rw1, prompb, write_v2 as v2};
    let dir = tempfile::tempdir().unwrap();
    let recv = Receiver::start(
        &dir.path().join("data"),
        &dir.path().join("receive.log"),
        &["--tsdb.max-exemplars=1000"],
    );
    let q = Querier::start(&[&recv.grpc], &[]);
    let t0 = now_ms() - 10_000;
    let label = |n: &str, v: &str| storeapi::Label::new(n, v);
    let ex = |trace: &str, t: i64| prompb::Exemplar {
        labels: vec![label("trace_id", trace)],
        value: 1.0,
        timestamp: t,
    };
    let long = "é".repeat(121); // 8 + 121 = 129 characters (242 bytes)
    let req = rw1::WriteRequest {
        timeseries: vec![prompb::TimeSeries {
            labels: vec![label("__name__", "hostile_total"), label("job", "h")],
            samples: vec![prompb::Sample {
                value: 1.0,
                timestamp: t0,
            }],
            exemplars: vec![
                ex("ok1", t0),
                ex(&long, t0 + 1),
                ex("ok2", t0 + 2),
                ex("old", t0 - 1),
            ],
            histograms: vec![],
        }],
        metadata: vec![],
    };
    let body = storeapi::wire::remote_write::snappy_compress(&req.encode_to_vec());
    let (code, text) = recv.post(&body, &[]);
    assert_eq!(code, 200, "{text}");

    // 2.0: out-of-order exemplar refused with a 400 naming it, as Prometheus 3.5.3's 2.0
    // handler answers (the rest of the request is written); the Written header counts
    // what was kept.
    let v2req = v2::Request {
        symbols: [
            "",
            "__name__",
            "hostile_total",
            "job",
            "h",
            "trace_id",
            "v2ok",
            "v2old",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        timeseries: vec![v2::TimeSeries {
            labels_refs: vec![1, 2, 3, 4],
            samples: vec![v2::Sample {
                value: 2.0,
                timestamp: t0 + 1000,
                start_timestamp: 0,
            }],
            exemplars: vec![
                v2::Exemplar {
                    labels_refs: vec![5, 6],
                    value: 2.0,
                    timestamp: t0 + 1000,
                },
                v2::Exemplar {
                    labels_refs: vec![5, 7],
                    value: 2.0,
                    timestamp: t0 + 3,
                },
            ],
            ..Default::default()
        }],
    };
    let r = e2e::http_exchange(
        &recv.rw,
        "POST",
        "/api/v1/receive",
        &[
            (
                "Content-Type",
                "application/x-protobuf;proto=io.prometheus.write.v2.Request",
            ),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "2.0.0"),
        ],
        &storeapi::wire::remote_write::snappy_compress(&v2req.encode_to_vec()),
    )
    .unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("out of order exemplar"), "{r:?}");
    assert_eq!(
        r.header("X-Prometheus-Remote-Write-Samples-Written"),
        Some("1"),
        "{r:?}"
    );
    assert_eq!(
        r.header("X-Prometheus-Remote-Write-Exemplars-Written"),
        Some("1"),
        "{r:?}"
    );
    assert_eq!(
        r.header("X-Prometheus-Remote-Write-Samples-Written"),
        Some("1"),
        "{r:?}"
    );

    let metrics = recv.metrics();
    for (reason, n) in [("label_length", 1), ("out_of_order", 2)] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("orrery_receive_exemplars_rejected_total")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .unwrap_or_else(|| panic!("no rejected counter for {reason}:\n{metrics}"));
        assert!(line.ends_with(&format!(" {n}")), "{line}");
    }
    let traces: Vec<String> = wait_for(Duration::from_secs(15), || {
        let (_, v) = get_json(
            &q.http,
            &format!("/api/v1/query_exemplars?query={}", enc("hostile_total")),
        );
        let t: Vec<String> = v["data"][0]["exemplars"]
            .as_array()?
            .iter()
            .filter_map(|e| e["labels"]["trace_id"].as_str().map(str::to_string))
            .collect();
        (!t.is_empty()).then_some(t)
    })
    .expect("the valid exemplars are served");
    assert_eq!(traces, vec!["ok1", "ok2", "v2ok"]);
    // The receiver keeps serving writes.
    let later = rw1::WriteRequest {
        timeseries: vec![prompb::TimeSeries {
            labels: req.timeseries[0].labels.clone(),
            samples: vec![prompb::Sample {
                value: 3.0,
                timestamp: t0 + 2000,
            }],
            exemplars: vec![ex("later", t0 + 2000)],
            histograms: vec![],
        }],
        metadata: vec![],
    };
    let body = storeapi::wire::remote_write::snappy_compress(&later.encode_to_vec());
    let (code, text) = recv.post(&body, &[]);
    assert_eq!(code, 200, "{text}");
}
