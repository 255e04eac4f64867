//! Exponential bucket bounds print as Prometheus 3.5.3 prints them, to the last digit
//! (issue #20). Prometheus reads the bounds of schemas 1–8 from a table that is not
//! the correctly rounded `2^(k/2^schema)` (see `storeapi`'s `histogram::bounds`), so a
//! bound computed with `exp2` shows in Grafana and the query API one to four ulps off.
//!
//! The same remote-write request goes to Prometheus 3.5.3 and to `orrery receive`: one
//! histogram per schema from -4 to 8 with a bucket at every index of two whole powers
//! of two, positive and negative. The raw histograms through `orrery query` must have
//! exactly Prometheus's bucket bounds, and the quantiles and fractions interpolated
//! between them must agree.

mod querier_common;
mod receiver_common;

use std::time::Duration;

use e2e::{Prometheus, wait_for};
use querier_common::Querier;
use receiver_common::{Receiver, prom_query};

const SCHEMAS: [i32; 13] = [-4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8];

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// One histogram of `schema` at `t`: buckets at every index in `[-n, n)`, `n` the
/// buckets per power of two (at least 1), counting 1, 2, 3, … upwards (negative buckets
/// all 1), so each bucket is in the answer and every quantile lands in a different one.
fn histogram(schema: i32, t: i64) -> storeapi::wire::prompb::Histogram {
    use storeapi::wire::prompb::{self, BucketSpan};
    let n = 1i32 << schema.max(0);
    let len = 2 * n as u32;
    let positive: Vec<i64> = vec![1; len as usize];
    let negative: Vec<i64> = (0..len).map(|i| i64::from(i == 0)).collect();
    let count = (1..=u64::from(len)).sum::<u64>() + u64::from(len);
    prompb::Histogram {
        count: Some(prompb::histogram::Count::CountInt(count)),
        zero_count: Some(prompb::histogram::ZeroCount::ZeroCountInt(0)),
        zero_threshold: 0.0,
        schema,
        positive_spans: vec![BucketSpan {
            offset: -n,
            length: len,
        }],
        positive_deltas: positive,
        negative_spans: vec![BucketSpan {
            offset: -n,
            length: len,
        }],
        negative_deltas: negative,
        sum: 1234.5,
        timestamp: t,
        ..Default::default()
    }
}

#[test]
fn exponential_bucket_bounds_equal_prometheus_to_the_last_digit() {
    use prost::Message;
    use storeapi::wire::prometheus::WriteRequest;
    use storeapi::wire::prompb::TimeSeries;
    use storeapi::wire::thanos::Label as WLabel;

    let dir = tempfile::tempdir().expect("tempdir");
    let prom = Prometheus::start(
        "global:\n  scrape_interval: 1h\n",
        &[
            "--web.enable-remote-write-receiver",
            "--enable-feature=native-histograms",
        ],
    );
    let recv = Receiver::start(
        &dir.path().join("data"),
        &dir.path().join("receive.log"),
        &[],
    );
    let now = now_ms() / 1000 * 1000;
    let t = now - 60_000;
    let req = WriteRequest {
        timeseries: SCHEMAS
            .iter()
            .map(|&s| TimeSeries {
                labels: vec![
                    WLabel {
                        name: "__name__".into(),
                        value: "bounds_seconds".into(),
                    },
                    WLabel {
                        name: "schema".into(),
                        value: s.to_string().into(),
                    },
                ],
                samples: vec![],
                exemplars: vec![],
                histograms: vec![histogram(s, t)],
            })
            .collect(),
        metadata: vec![],
    };
    let body = snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .expect("snappy");
    let headers = [
        ("Content-Type", "application/x-protobuf"),
        ("Content-Encoding", "snappy"),
        ("X-Prometheus-Remote-Write-Version", "0.1.0"),
    ];
    let (code, text) = e2e::http_request(&prom.addr(), "POST", "/api/v1/write", &headers, &body)
        .expect("write to Prometheus");
    assert_eq!(code, 204, "Prometheus refused the histograms: {text}");
    let (code, text) = recv.post(&body, &[]);
    assert_eq!(code, 200, "orrery refused the histograms: {text}");

    let q = Querier::start(&[&recv.grpc], &[]);
    let at = now as f64 / 1000.0;
    let raw = |addr: &str| -> serde_json::Value {
        let v = prom_query(addr, "bounds_seconds", Some(at));
        let mut r = v["data"]["result"].as_array().cloned().unwrap_or_default();
        for s in &mut r {
            if let Some(m) = s["metric"].as_object_mut() {
                m.remove("tenant_id");
            }
        }
        r.sort_by_key(|s| {
            s["metric"]["schema"]
                .as_str()
                .unwrap_or("")
                .parse::<i32>()
                .ok()
        });
        serde_json::Value::Array(r)
    };
    let theirs = raw(&prom.addr());
    let ours = wait_for(Duration::from_secs(20), || {
        let v = raw(&q.http);
        (v.as_array().map(Vec::len) == Some(SCHEMAS.len())).then_some(v)
    })
    .expect("the querier answers every histogram");
    assert_eq!(
        theirs.as_array().map(Vec::len),
        Some(SCHEMAS.len()),
        "{theirs}"
    );
    // Each histogram has all its buckets in the answer (the comparison below then
    // covers every fraction of every schema).
    for (s, h) in SCHEMAS.iter().zip(theirs.as_array().into_iter().flatten()) {
        let n = h["histogram"][1]["buckets"].as_array().map_or(0, Vec::len);
        assert_eq!(n, 4 << s.max(&0), "schema {s}: {h}");
    }
    if let Some(d) = e2e::histograms::json_diff(&ours, &theirs, "result") {
        panic!("histograms differ from Prometheus 3.5.3's: {d}");
    }

    let mut queries: Vec<String> = Vec::new();
    for phi in ["0.01", "0.2", "0.37", "0.5", "0.77", "0.9", "0.999"] {
        queries.push(format!("histogram_quantile({phi}, bounds_seconds)"));
    }
    for (lo, hi) in [
        ("0", "1.3"),
        ("-0.7", "0.9"),
        ("1.1", "1.9"),
        ("-inf", "0.6"),
    ] {
        queries.push(format!("histogram_fraction({lo}, {hi}, bounds_seconds)"));
    }
    queries.push("bounds_seconds".into());
    let queries: Vec<&str> = queries.iter().map(String::as_str).collect();
    e2e::histograms::compare_queries(
        &prom.addr(),
        &q.http,
        &queries,
        now - 120_000,
        now,
        30,
        &["tenant_id"],
    )
    .assert_clean();
}
