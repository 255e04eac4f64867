//! Golden test for the native histogram chunk codecs against the real Prometheus 3.5.3:
//! Prometheus scrapes its own native histograms (protobuf), converts a classic
//! histogram served by this test to custom buckets (NHCB, schema -53) and records
//! `rate()` of a native histogram (float histograms); a TSDB snapshot is then read with
//! `tsdb::block`. For every histogram chunk:
//! - each decoded sample's count and sum equal Prometheus's query API answer at that
//!   timestamp;
//! - appending the decoded samples to a fresh chunk with our appender reproduces
//!   Prometheus's chunk byte for byte (header computed against the previous chunk of
//!   the series, as the head does).
//!
//! Each of the three kinds (integer exponential, integer NHCB, float) must be found.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use e2e::promqlcmp::urlencode;
use e2e::{Prometheus, http_get, http_request};
use storeapi::Labels;
use tsdb::block::{Block, list_blocks};
use tsdb::chunk::{
    Appended, Chunk, CounterResetHeader, Encoding, FloatHistogramAppender, FloatHistogramIterator,
    HistogramAppender, HistogramIterator,
};

/// Serves a classic histogram whose observations grow with every scrape; some buckets
/// stay empty for a while so the converted NHCB layout changes mid-chunk.
fn serve_classic_histogram() -> (u16, Arc<AtomicU64>) {
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

/// A PromQL selector matching exactly `labels`.
fn selector(labels: &Labels) -> String {
    let parts: Vec<String> = labels
        .iter()
        .map(|l| {
            let v = l.value.replace('\\', "\\\\").replace('"', "\\\"");
            format!("{}=\"{}\"", l.name, v)
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// The histogram samples Prometheus returns for `labels` in `(from, to]` ms:
/// timestamp → (count, sum).
fn query_histograms(addr: &str, labels: &Labels, from: i64, to: i64) -> BTreeMap<i64, (f64, f64)> {
    let range_ms = (to - from).max(1);
    let q = format!("{}[{}ms]", selector(labels), range_ms);
    let path = format!(
        "/api/v1/query?query={}&time={}.{:03}",
        urlencode(&q),
        to / 1000,
        to % 1000
    );
    let (code, body) = http_get(addr, &path).expect("query prometheus");
    assert_eq!(code, 200, "{path}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("query JSON");
    let mut out = BTreeMap::new();
    let results = v["data"]["result"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 1, "one series for {q}: {body}");
    for h in results[0]["histograms"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let t = (h[0].as_f64().expect("timestamp") * 1000.0).round() as i64;
        let num = |k: &str| -> f64 {
            h[1][k]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{k} in {h}"))
        };
        out.insert(t, (num("count"), num("sum")));
    }
    out
}

#[derive(Default, Debug)]
struct Kind {
    chunks: usize,
    samples: usize,
    bytes: usize,
    recoded_or_cut: usize,
}

/// Re-appends the decoded samples of `c` into a fresh chunk (the previous chunk's
/// appender as `prev`) and returns its bytes; panics if the appender wants a new chunk.
fn reencode_int(c: &Chunk, prev: Option<&Chunk>) -> Vec<u8> {
    let prev = prev.map(|p| HistogramAppender::from_bytes(&p.data).expect("reopen previous chunk"));
    let mut a = HistogramAppender::new();
    for (i, s) in HistogramIterator::new(&c.data)
        .expect("chunk header")
        .enumerate()
    {
        let (t, h) = s.expect("decode");
        let p = if i == 0 { prev.as_ref() } else { None };
        match a.append(p, t, &h).expect("append") {
            Appended::InPlace | Appended::Recoded => {}
            Appended::NewChunk(_) => {
                panic!("sample {i} of a Prometheus chunk does not fit our chunk")
            }
        }
    }
    a.into_bytes()
}

fn reencode_float(c: &Chunk, prev: Option<&Chunk>) -> Vec<u8> {
    let prev =
        prev.map(|p| FloatHistogramAppender::from_bytes(&p.data).expect("reopen previous chunk"));
    let mut a = FloatHistogramAppender::new();
    for (i, s) in FloatHistogramIterator::new(&c.data)
        .expect("chunk header")
        .enumerate()
    {
        let (t, h) = s.expect("decode");
        let p = if i == 0 { prev.as_ref() } else { None };
        match a.append(p, t, &h).expect("append") {
            Appended::InPlace | Appended::Recoded => {}
            Appended::NewChunk(_) => {
                panic!("sample {i} of a Prometheus chunk does not fit our chunk")
            }
        }
    }
    a.into_bytes()
}

#[test]
fn histogram_chunks_match_prometheus_byte_for_byte() {
    let (classic_port, scrapes) = serve_classic_histogram();
    let rules_dir = tempfile::tempdir().expect("rules dir");
    let rules = rules_dir.path().join("rules.yml");
    std::fs::write(
        &rules,
        "groups:\n- name: golden\n  interval: 1s\n  rules:\n  - record: job:http_request_duration_seconds:rate1m\n    expr: sum by (job) (rate(prometheus_http_request_duration_seconds[1m]))\n",
    )
    .expect("write rules");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: self\n    scrape_protocols: [PrometheusProto]\n    static_configs:\n      - targets: ['127.0.0.1:{{{{PORT}}}}']\n  - job_name: classic\n    scrape_protocols: [PrometheusText0.0.4]\n    convert_classic_histograms_to_nhcb: true\n    static_configs:\n      - targets: ['127.0.0.1:{classic_port}']\n",
        rules.display()
    );
    let prom = Prometheus::start(
        &config,
        &[
            "--enable-feature=native-histograms",
            "--web.enable-admin-api",
        ],
    );
    let addr = prom.addr();

    // Traffic with varied latencies so the HTTP duration histograms gain buckets.
    let deadline = std::time::Instant::now() + Duration::from_secs(32);
    let mut i = 0u64;
    while std::time::Instant::now() < deadline {
        let path = match i % 4 {
            0 => "/api/v1/query?query=up".to_string(),
            1 => "/api/v1/label/__name__/values".to_string(),
            2 => format!(
                "/api/v1/query_range?query={}&start=0&end=100000&step=1",
                urlencode("sum(rate(prometheus_http_requests_total[5m]))")
            ),
            _ => "/metrics".to_string(),
        };
        let _ = http_get(&addr, &path);
        i += 1;
        std::thread::sleep(Duration::from_millis(20 + (i % 7) * 15));
    }
    assert!(
        scrapes.load(Ordering::Relaxed) >= 10,
        "classic target was scraped"
    );

    let (code, body) = http_request(&addr, "POST", "/api/v1/admin/tsdb/snapshot", &[], &[])
        .expect("snapshot request");
    assert_eq!(code, 200, "snapshot: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("snapshot JSON");
    let name = v["data"]["name"]
        .as_str()
        .expect("snapshot name")
        .to_string();
    let snap = prom.dir.path().join("data").join("snapshots").join(name);
    let blocks = list_blocks(&snap).expect("list snapshot blocks");
    assert!(
        !blocks.is_empty(),
        "snapshot at {} has blocks",
        snap.display()
    );

    let mut kinds: BTreeMap<&'static str, Kind> = BTreeMap::new();
    for b in &blocks {
        let block = Block::open(&b.dir).expect("open snapshot block");
        for (labels, chunks) in block.select(&[], i64::MIN, i64::MAX).expect("select") {
            let mut prev: Option<&Chunk> = None;
            for c in &chunks {
                if !matches!(c.encoding, Encoding::Histogram | Encoding::FloatHistogram) {
                    prev = None;
                    continue;
                }
                // Decode: timestamps inside the chunk's range, values as the API has them.
                let samples: Vec<(i64, f64, f64, bool)> = c
                    .iter_histograms()
                    .expect("histogram chunk")
                    .map(|s| {
                        let s = s.unwrap_or_else(|e| panic!("{labels:?}: decode: {e}"));
                        let f = s.h.to_float();
                        (s.t, f.count, f.sum, f.is_stale())
                    })
                    .collect();
                assert_eq!(samples.len(), c.num_samples());
                let first = samples.first().map(|s| s.0).expect("non-empty chunk");
                let last = samples.last().map(|s| s.0).expect("non-empty chunk");
                assert_eq!((first, last), (c.min_time, c.max_time), "{labels:?}");
                let want = query_histograms(&addr, &labels, first - 1, last);
                for (t, count, sum, stale) in &samples {
                    if *stale {
                        assert!(!want.contains_key(t), "stale marker at {t} is not a sample");
                        continue;
                    }
                    let (wc, ws) = want
                        .get(t)
                        .unwrap_or_else(|| panic!("{labels:?}: Prometheus has no sample at {t}"));
                    assert_eq!(count, wc, "{labels:?} count at {t}");
                    assert!(
                        sum == ws || (sum - ws).abs() <= 1e-12 * ws.abs().max(1.0),
                        "{labels:?} sum at {t}: ours {sum}, Prometheus {ws}"
                    );
                }

                // Byte-for-byte: our appender rebuilds Prometheus's chunk.
                let prev_same = prev.filter(|p| p.encoding == c.encoding);
                let ours = match c.encoding {
                    Encoding::Histogram => reencode_int(c, prev_same),
                    _ => reencode_float(c, prev_same),
                };
                assert_eq!(
                    CounterResetHeader::from_byte(ours[2]),
                    CounterResetHeader::from_byte(c.data[2]),
                    "{labels:?}: header of chunk [{first}, {last}]"
                );
                assert!(
                    ours[..] == c.data[..],
                    "{labels:?}: chunk [{first}, {last}] differs:\n ours {:02x?}\n prom {:02x?}",
                    ours,
                    &c.data[..]
                );

                let schema = match c.iter_histograms().ok().and_then(|mut it| it.next()) {
                    Some(Ok(s)) => s.h.to_float().schema,
                    _ => 0,
                };
                let kind = match (c.encoding, schema) {
                    (Encoding::FloatHistogram, _) => "float",
                    (_, -53) => "int-nhcb",
                    _ => "int-exponential",
                };
                let k = kinds.entry(kind).or_default();
                k.chunks += 1;
                k.samples += samples.len();
                k.bytes += c.data.len();
                if prev_same.is_some() {
                    k.recoded_or_cut += 1;
                }
                prev = Some(c);
            }
        }
    }
    for (name, k) in &kinds {
        eprintln!(
            "{name}: {} chunks, {} samples, {} bytes, {:.2} bytes/sample, {} chunks after a cut",
            k.chunks,
            k.samples,
            k.bytes,
            k.bytes as f64 / k.samples.max(1) as f64,
            k.recoded_or_cut
        );
    }
    for kind in ["int-exponential", "int-nhcb", "float"] {
        assert!(
            kinds.get(kind).is_some_and(|k| k.samples >= 10),
            "no {kind} histogram chunks with ≥ 10 samples in the snapshot: {kinds:?}\nlog:\n{}",
            prom.proc.log_text()
        );
    }
}
