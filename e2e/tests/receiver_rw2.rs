//! Remote Write 2.0 at `orrery receive`.
//!
//! - Hostile and edge-case requests (bad symbol references, odd `labels_refs`, histogram
//!   spans that do not match their buckets, schema 1000, bucket floods, unknown `proto`,
//!   foreign encodings): each is a 4xx naming the problem, every 2.0 answer carries the
//!   three `X-Prometheus-Remote-Write-*-Written` headers with what was really written,
//!   and the receiver keeps serving.
//! - The real Prometheus 3.5.3 remote-writes `io.prometheus.write.v2.Request` (scraping
//!   itself, exemplars and WAL metadata on, native histograms off): no sample fails and
//!   the receiver's StoreAPI answers equal Prometheus's own.

mod receiver_common;

use std::time::Duration;

use e2e::{HttpResponse, Prometheus, http_exchange, wait_for};
use prost::Message;
use receiver_common::{Receiver, eq, prom_query, prom_value, series, series_raw};
use storeapi::wire::remote_write::snappy_compress;
use storeapi::wire::write_v2 as v2;

const V2: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn post(recv: &Receiver, body: &[u8], content_type: &str, encoding: &str) -> HttpResponse {
    http_exchange(
        &recv.rw,
        "POST",
        "/api/v1/receive",
        &[
            ("Content-Type", content_type),
            ("Content-Encoding", encoding),
            ("X-Prometheus-Remote-Write-Version", "2.0.0"),
        ],
        body,
    )
    .unwrap_or_else(|e| panic!("remote write to {} failed: {e}", recv.rw))
}

fn post_v2(recv: &Receiver, req: &v2::Request) -> HttpResponse {
    post(recv, &snappy_compress(&req.encode_to_vec()), V2, "snappy")
}

/// The three Written headers as numbers; panics (naming the response) when one is absent.
fn written(r: &HttpResponse) -> (u64, u64, u64) {
    let h = |name: &str| -> u64 {
        r.header(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no numeric {name} header in {r:?}"))
    };
    (
        h("X-Prometheus-Remote-Write-Samples-Written"),
        h("X-Prometheus-Remote-Write-Histograms-Written"),
        h("X-Prometheus-Remote-Write-Exemplars-Written"),
    )
}

fn sym(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// symbols: 0 "", 1 __name__, 2 rw2_floats, 3 job, 4 a, 5 rw2_hist, 6 trace_id, 7 abc
fn symbols() -> Vec<String> {
    sym(&[
        "",
        "__name__",
        "rw2_floats",
        "job",
        "a",
        "rw2_hist",
        "trace_id",
        "abc",
    ])
}

fn float_series(t: i64, v: f64) -> v2::TimeSeries {
    v2::TimeSeries {
        labels_refs: vec![1, 2, 3, 4],
        samples: vec![v2::Sample {
            value: v,
            timestamp: t,
            start_timestamp: 0,
        }],
        ..Default::default()
    }
}

fn histogram(t: i64) -> v2::Histogram {
    v2::Histogram {
        count: Some(v2::histogram::Count::CountInt(3)),
        sum: 2.0,
        schema: 0,
        zero_threshold: 1e-128,
        zero_count: Some(v2::histogram::ZeroCount::ZeroCountInt(1)),
        positive_spans: vec![v2::BucketSpan {
            offset: 0,
            length: 1,
        }],
        positive_deltas: vec![2],
        timestamp: t,
        ..Default::default()
    }
}

fn histogram_series(h: v2::Histogram) -> v2::TimeSeries {
    v2::TimeSeries {
        labels_refs: vec![1, 5],
        histograms: vec![h],
        ..Default::default()
    }
}

fn assert_4xx(r: &HttpResponse, code: u16, needle: &str) {
    assert_eq!(r.status, code, "want {code} for {needle:?}: {r:?}");
    assert!(r.body.contains(needle), "body must say {needle:?}: {r:?}");
}

#[test]
fn receiver_rw2_hostile_requests_get_4xx_with_reasons_and_written_headers() {
    let dir = tempfile::tempdir().unwrap();
    let recv = Receiver::start(
        &dir.path().join("data"),
        &dir.path().join("receive.log"),
        &[],
    );
    let t0 = now_ms() - 60_000;

    // A good request: 204, one sample written, exemplar-only series accepted.
    let mut exemplar_only = float_series(0, 0.0);
    exemplar_only.samples.clear();
    exemplar_only.exemplars = vec![v2::Exemplar {
        labels_refs: vec![6, 7],
        value: 1.0,
        timestamp: t0,
    }];
    let good = v2::Request {
        symbols: symbols(),
        timeseries: vec![float_series(t0, 1.0), exemplar_only],
    };
    let r = post_v2(&recv, &good);
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(written(&r), (1, 0, 0));

    // Resending the same batch (a sender's retry) still reports the sample as written.
    let r = post_v2(&recv, &good);
    assert_eq!((r.status, written(&r)), (204, (1, 0, 0)), "{r:?}");

    // Symbol reference past the table.
    let mut req = good.clone();
    req.timeseries[0].labels_refs = vec![1, 2, 3, 99];
    let r = post_v2(&recv, &req);
    assert_4xx(
        &r,
        400,
        "refers to symbol 99, but the request has only 8 symbols",
    );
    assert_eq!(written(&r), (0, 0, 0));

    // Odd labels_refs.
    let mut req = good.clone();
    req.timeseries[0].labels_refs = vec![1, 2, 3];
    assert_4xx(
        &post_v2(&recv, &req),
        400,
        "odd number of label references (3)",
    );

    // First symbol not empty.
    let mut req = good.clone();
    req.symbols[0] = "x".into();
    assert_4xx(
        &post_v2(&recv, &req),
        400,
        "first symbol of the request must be the empty string",
    );

    // Duplicate and empty label names: the series is refused, the others written.
    let mut dup = float_series(t0 + 1000, 2.0);
    dup.labels_refs = vec![1, 2, 3, 4, 3, 4];
    let mut empty = float_series(t0 + 1000, 2.0);
    empty.labels_refs = vec![0, 4, 1, 2];
    let req = v2::Request {
        symbols: symbols(),
        timeseries: vec![dup, empty, float_series(t0 + 1000, 2.0)],
    };
    let r = post_v2(&recv, &req);
    assert_4xx(
        &r,
        409,
        "2 series (2 samples) with an invalid label set refused",
    );
    assert_eq!(written(&r), (1, 0, 0), "the valid series is written");

    // Histogram spans that do not match the buckets, next to a float series: 400 naming
    // the validation error; the float sample is written and counted.
    let mut bad = histogram(t0 + 2000);
    bad.positive_deltas = vec![2, 0];
    let req = v2::Request {
        symbols: symbols(),
        timeseries: vec![float_series(t0 + 2000, 3.0), histogram_series(bad)],
    };
    let r = post_v2(&recv, &req);
    assert_4xx(
        &r,
        400,
        "histogram spans specify different number of buckets than provided",
    );
    assert!(
        r.body
            .contains("1 invalid native histogram samples refused; first: "),
        "{r:?}"
    );
    assert_eq!(written(&r), (1, 0, 0));

    // Schema 1000.
    let mut h = histogram(t0 + 3000);
    h.schema = 1000;
    let req = v2::Request {
        symbols: symbols(),
        timeseries: vec![histogram_series(h)],
    };
    assert_4xx(&post_v2(&recv, &req), 400, "got schema 1000");

    // A valid histogram is stored and counted in the histograms header.
    let req = v2::Request {
        symbols: symbols(),
        timeseries: vec![histogram_series(histogram(t0 + 3000))],
    };
    let r = post_v2(&recv, &req);
    assert!((200..300).contains(&r.status), "{r:?}");
    assert_eq!(written(&r), (0, 1, 0));

    // A bucket flood: 40 000 buckets in one histogram.
    let mut h = histogram(t0 + 4000);
    h.positive_spans = vec![v2::BucketSpan {
        offset: 0,
        length: 40_000,
    }];
    h.positive_deltas = vec![0; 40_000];
    let req = v2::Request {
        symbols: symbols(),
        timeseries: vec![histogram_series(h)],
    };
    assert_4xx(
        &post_v2(&recv, &req),
        400,
        "histogram buckets: 32769 is over the limit of 32768",
    );

    // Negotiation: unknown proto, foreign media type, foreign encoding → 415.
    let body = snappy_compress(&good.encode_to_vec());
    assert_4xx(
        &post(
            &recv,
            &body,
            "application/x-protobuf;proto=io.prometheus.write.v3.Request",
            "snappy",
        ),
        415,
        "unsupported remote-write message proto=\"io.prometheus.write.v3.Request\"",
    );
    assert_4xx(
        &post(&recv, &body, "application/json", "snappy"),
        415,
        "unsupported Content-Type",
    );
    assert_4xx(
        &post(&recv, &body, V2, "gzip"),
        415,
        "unsupported Content-Encoding \"gzip\"",
    );
    // Case and whitespace do not matter.
    let r = post(
        &recv,
        &snappy_compress(
            &v2::Request {
                symbols: symbols(),
                timeseries: vec![float_series(t0 + 5000, 5.0)],
            }
            .encode_to_vec(),
        ),
        " Application/X-Protobuf ; proto = io.prometheus.write.v2.Request",
        "Snappy",
    );
    assert_eq!((r.status, written(&r)), (204, (1, 0, 0)), "{r:?}");

    // Garbage after snappy, and not snappy at all: 400 with the Written headers.
    let r = post(&recv, &snappy_compress(&[0x2a, 0x05, 0x0a]), V2, "snappy");
    assert_4xx(&r, 400, "invalid protobuf remote-write 2.0 request");
    assert_eq!(written(&r), (0, 0, 0));
    assert_4xx(&post(&recv, b"\xff\xff\xff", V2, "snappy"), 400, "snappy");

    // Still serving: the receiver is ready and the StoreAPI holds exactly the float
    // samples that were reported written.
    assert_eq!(recv.ready().0, 200);
    let s = series(&recv.grpc, vec![eq("__name__", "rw2_floats")], 0, i64::MAX).unwrap();
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(
        s[0].1,
        vec![
            (t0, 1.0),
            (t0 + 1000, 2.0),
            (t0 + 2000, 3.0),
            (t0 + 5000, 5.0)
        ]
    );
    // The one valid histogram is served as a HISTOGRAM chunk (Thanos encoding 1).
    let h = series_raw(
        &recv.grpc,
        storeapi::wire::thanos::SeriesRequest {
            min_time: 0,
            max_time: i64::MAX,
            matchers: vec![eq("__name__", "rw2_hist")],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(h.len(), 1, "{h:?}");
    let raw = h[0].chunks[0].raw.clone().expect("raw chunk");
    assert_eq!(raw.r#type, 1, "HISTOGRAM chunk");
    let decoded: Vec<_> = tsdb::chunk::HistogramIterator::new(&raw.data)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(decoded.len(), 1);
    assert_eq!((decoded[0].0, decoded[0].1.count), (t0 + 3000, 3));
    let m = recv.metrics();
    assert!(
        m.contains("orrery_receive_exemplars_received_total{tenant=\"default-tenant\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("orrery_receive_requests_by_protocol_total{protocol=\"v2\"}"),
        "{m}"
    );
}

#[test]
fn receiver_rw2_prometheus_remote_write_v2_matches_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let recv = Receiver::start(
        &dir.path().join("data"),
        &dir.path().join("receive.log"),
        &["--label=receive_replica=\"0\""],
    );
    let config = format!(
        r#"
global:
  scrape_interval: 1s
  evaluation_interval: 1s
  external_labels:
    cluster: batcave
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ['127.0.0.1:{{{{PORT}}}}']
remote_write:
  - url: http://{}/api/v1/receive
    protobuf_message: io.prometheus.write.v2.Request
    send_exemplars: true
    metadata_config:
      send: true
    queue_config:
      batch_send_deadline: 1s
      max_shards: 2
"#,
        recv.rw
    );
    let prom = Prometheus::start(
        &config,
        &["--enable-feature=exemplar-storage,metadata-wal-records"],
    );

    let found = wait_for(Duration::from_secs(30), || {
        let s = series(&recv.grpc, vec![eq("__name__", "up")], 0, i64::MAX).ok()?;
        (s.len() == 1 && s[0].1.len() >= 3).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "no `up` series over the StoreAPI within 30s; receiver log:\n{}\nprometheus log:\n{}",
            recv.proc.log_text(),
            prom.proc.log_text()
        )
    });
    let l = &found[0].0;
    assert_eq!(l.get("cluster"), Some("batcave"), "{l}");
    assert_eq!(l.get("job"), Some("prometheus"), "{l}");
    assert_eq!(l.get("receive_replica"), Some("0"), "{l}");

    std::thread::sleep(Duration::from_secs(8));
    let at_ms = now_ms() - 3000;
    let at = at_ms as f64 / 1000.0;

    // `up` sample by sample over the last minute.
    let local = prom_query(&prom.addr(), "up{job=\"prometheus\"}[1m]", Some(at));
    let want: Vec<(i64, f64)> = local["data"]["result"][0]["values"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let t = (p[0].as_f64().unwrap() * 1000.0).round() as i64;
            (t, p[1].as_str().unwrap().parse().unwrap())
        })
        .collect();
    assert!(want.len() >= 5, "prometheus holds too few samples: {local}");
    let (mint, maxt) = (want[0].0, want[want.len() - 1].0);
    let got = wait_for(Duration::from_secs(20), || {
        let s = series(&recv.grpc, vec![eq("__name__", "up")], mint, maxt).ok()?;
        let samples = s.into_iter().next()?.1;
        (samples.last().map(|x| x.0) == Some(maxt)).then_some(samples)
    })
    .unwrap_or_else(|| panic!("receiver did not catch up to t={maxt}"));
    assert_eq!(
        got.len(),
        want.len(),
        "receiver {got:?} vs prometheus {want:?}"
    );
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.0, w.0, "timestamps differ");
        assert_eq!(g.1.to_bits(), w.1.to_bits(), "values differ at t={}", g.0);
    }

    // Every series of a few metrics: the newest sample at or before `at` equals what
    // Prometheus's instant query answers (same timestamp, same value bits). Retried
    // briefly: the receiver may still be taking the last batches.
    for metric in [
        "prometheus_http_requests_total",
        "prometheus_tsdb_head_series",
        "go_goroutines",
    ] {
        let values = prom_query(&prom.addr(), metric, Some(at));
        let stamps = prom_query(&prom.addr(), &format!("timestamp({metric})"), Some(at));
        let want = values["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(!want.is_empty(), "prometheus has no {metric}: {values}");
        let compare = || -> Result<(), String> {
            let got = series(
                &recv.grpc,
                vec![eq("__name__", metric)],
                at_ms - 300_000,
                at_ms,
            )
            .map_err(|e| e.to_string())?;
            if got.len() != want.len() {
                return Err(format!(
                    "{metric}: receiver has {} series, prometheus {}: {got:?} vs {values}",
                    got.len(),
                    want.len()
                ));
            }
            for w in &want {
                let m = w["metric"].as_object().ok_or("no metric")?;
                let value: f64 = w["value"][1]
                    .as_str()
                    .ok_or("no value")?
                    .parse()
                    .map_err(|e| format!("{e}"))?;
                let ts = stamps["data"]["result"]
                    .as_array()
                    .and_then(|a| {
                        a.iter().find(|s| {
                            s["metric"].as_object().is_some_and(|o| {
                                o.iter().all(|(k, v)| m.get(k) == Some(v)) && o.len() + 1 == m.len()
                            })
                        })
                    })
                    .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
                    .map(|t| (t * 1000.0).round() as i64)
                    .ok_or_else(|| format!("no timestamp for {m:?} in {stamps}"))?;
                let g = got
                    .iter()
                    .find(|(l, _)| m.iter().all(|(k, v)| l.get(k) == v.as_str()))
                    .ok_or_else(|| format!("{metric}: receiver lacks {m:?}"))?;
                let last =
                    g.1.iter()
                        .rev()
                        .find(|s| s.0 <= at_ms)
                        .ok_or_else(|| format!("{metric}: no sample ≤ {at_ms} for {m:?}"))?;
                if last.0 != ts || last.1.to_bits() != value.to_bits() {
                    return Err(format!(
                        "{metric} {m:?}: receiver has {last:?}, prometheus ({ts}, {value})"
                    ));
                }
            }
            Ok(())
        };
        let mut last_err = String::new();
        let ok = wait_for(Duration::from_secs(20), || match compare() {
            Ok(()) => Some(()),
            Err(e) => {
                last_err = e;
                None
            }
        });
        assert!(ok.is_some(), "{last_err}");
    }

    let failed = prom_value(
        &prom.addr(),
        "sum(prometheus_remote_storage_samples_failed_total)",
    )
    .unwrap_or(0.0);
    assert_eq!(
        failed,
        0.0,
        "prometheus_remote_storage_samples_failed_total must stay 0; prometheus log:\n{}",
        prom.proc.log_text()
    );
    let m = recv.metrics();
    assert!(
        m.contains("orrery_receive_requests_by_protocol_total{protocol=\"v2\"}"),
        "{m}"
    );
    assert!(
        !m.contains("orrery_receive_requests_by_protocol_total{protocol=\"v1\"}"),
        "Prometheus spoke 1.0: {m}"
    );
    assert!(
        m.contains("orrery_receive_http_requests_total{code=\"204\"}"),
        "{m}"
    );
    // WAL metadata records reach the receiver as 2.0 series metadata.
    assert!(
        m.contains("orrery_receive_metadata_received_total{tenant=\"default-tenant\"}"),
        "no metadata counted: {m}"
    );
}

/// A router-only receiver in front of an ingestor: 2.0 requests are translated and
/// forwarded over the hashring like 1.0 ones; the router's answer carries the samples
/// written, the ingestor holds them, and a refused request reports nothing written.
#[test]
fn receiver_rw2_router_forwards_v2_to_the_ingestor() {
    let dir = tempfile::tempdir().unwrap();
    let ingestor = Receiver::start(
        &dir.path().join("ingestor"),
        &dir.path().join("ingestor.log"),
        &[],
    );
    let ring = dir.path().join("hashring.json");
    std::fs::write(
        &ring,
        format!(
            r#"[{{"hashring":"default","endpoints":["{}"]}}]"#,
            ingestor.grpc
        ),
    )
    .unwrap();
    let router = Receiver::start(
        &dir.path().join("router"),
        &dir.path().join("router.log"),
        &[&format!("--receive.hashrings-file={}", ring.display())],
    );
    let t0 = now_ms() - 60_000;
    let mut other = float_series(t0, 7.0);
    other.labels_refs = vec![1, 2, 3, 7]; // job="abc"
    let req = v2::Request {
        symbols: symbols(),
        timeseries: vec![float_series(t0, 1.0), other],
    };
    let r = post_v2(&router, &req);
    assert_eq!((r.status, written(&r)), (204, (2, 0, 0)), "{r:?}");
    let s = series(
        &ingestor.grpc,
        vec![eq("__name__", "rw2_floats")],
        0,
        i64::MAX,
    )
    .unwrap();
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!(s[0].1, vec![(t0, 1.0)]);
    assert_eq!(s[1].1, vec![(t0, 7.0)]);
    assert!(
        series(
            &router.grpc,
            vec![eq("__name__", "rw2_floats")],
            0,
            i64::MAX
        )
        .unwrap()
        .is_empty(),
        "a router-only receiver stores nothing"
    );

    // Malformed 2.0 is refused at the router, before forwarding.
    let mut bad = req.clone();
    bad.timeseries[0].labels_refs = vec![1, 2, 3, 50];
    let r = post_v2(&router, &bad);
    assert_4xx(&r, 400, "refers to symbol 50");
    assert_eq!(written(&r), (0, 0, 0));
    let m = router.metrics();
    assert!(
        m.contains("orrery_receive_requests_by_protocol_total{protocol=\"v2\"} 2"),
        "{m}"
    );
}
