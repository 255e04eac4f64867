//! The appendable window side by side with the reference Prometheus 3.5.3: the same
//! remote-write request sequence against `orrery receive` and against Prometheus's own
//! remote-write receiver, with short (2m) and default (2h) block durations, must refuse
//! the same samples, one by one, and leave the same data behind.
//!
//! Prometheus refuses a whole request on its first bad sample (and rolls back), while
//! Thanos (and so Orrery) writes the good samples and answers 409. To compare sample by
//! sample, Prometheus's verdict on each sample is read from probes: every probe is the
//! samples accepted so far plus the candidate, followed by a sentinel sample a day in the
//! future. The sentinel always fails ("too far in the future"), so Prometheus rolls every
//! probe back; that error (rather than "out of bounds"/"out of order") means every sample
//! before it passed. A rolled-back appender leaves the head as it was, so each probe sees
//! the window the real request sees. The accepted samples are then written for real.

mod receiver_common;

use std::collections::BTreeMap;

use e2e::{Prometheus, http_request};
use receiver_common::{Receiver, labels, prom_query, re, series};
use storeapi::wire::remote_write::encode_write_request_snappy;
use storeapi::{Labels, Sample};

const S: i64 = 1000;
const M: i64 = 60 * S;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One sample of a request, in append order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Point {
    series: usize,
    t: i64,
}

/// A request: `(series index, timestamps)` in order.
type Request = Vec<(usize, Vec<i64>)>;

fn name(i: usize) -> String {
    format!("s_{i}")
}

fn body(points: &[Point], sentinel: Option<i64>) -> Vec<u8> {
    let mut groups: Vec<(Labels, Vec<Sample>)> = Vec::new();
    for p in points {
        let s = Sample {
            t: p.t,
            v: p.t as f64 / 1000.0,
        };
        match groups.last_mut() {
            Some((l, v)) if l.get("__name__") == Some(name(p.series).as_str()) => v.push(s),
            _ => groups.push((labels(&[("__name__", &name(p.series))]), vec![s])),
        }
    }
    if let Some(t) = sentinel {
        groups.push((
            labels(&[("__name__", "zz_sentinel")]),
            vec![Sample { t, v: 0.0 }],
        ));
    }
    encode_write_request_snappy(groups.iter().map(|(l, s)| (l, s.as_slice())))
}

fn post(addr: &str, path: &str, body: &[u8]) -> (u16, String) {
    http_request(
        addr,
        "POST",
        path,
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ],
        body,
    )
    .expect("remote write")
}

fn flatten(req: &Request) -> Vec<Point> {
    req.iter()
        .flat_map(|(s, ts)| ts.iter().map(|&t| Point { series: *s, t }))
        .collect()
}

/// Prometheus's per-sample verdict on `req` (see the module docs); writes the accepted
/// samples. Returns the refused ones.
fn prometheus_apply(prom: &str, req: &Request) -> Vec<Point> {
    const PATH: &str = "/api/v1/write";
    let sentinel = now_ms() + 24 * 60 * M;
    let mut good: Vec<Point> = Vec::new();
    let mut refused = Vec::new();
    for p in flatten(req) {
        let mut probe = good.clone();
        probe.push(p);
        let (code, text) = post(prom, PATH, &body(&probe, Some(sentinel)));
        assert_eq!(code, 400, "probe must always fail: {text}");
        if text.contains("too far in the future") {
            good.push(p);
        } else {
            assert!(
                text.contains("out of bounds") || text.contains("out of order"),
                "unexpected refusal of {p:?}: {text}"
            );
            refused.push(p);
        }
    }
    if !good.is_empty() {
        let (code, text) = post(prom, PATH, &body(&good, None));
        assert_eq!(code, 204, "writing the accepted samples: {text}");
    }
    refused
}

/// Orrery's per-sample verdict: sends `req` whole, then reads back which samples exist.
fn orrery_apply(recv: &Receiver, req: &Request) -> (u16, String, Vec<Point>) {
    let points = flatten(req);
    let (code, text) = post(&recv.rw, "/api/v1/receive", &body(&points, None));
    let stored = orrery_data(recv);
    let refused = points
        .into_iter()
        .filter(|p| {
            !stored
                .get(&name(p.series))
                .is_some_and(|v| v.iter().any(|&(t, _)| t == p.t))
        })
        .collect();
    (code, text, refused)
}

fn orrery_data(recv: &Receiver) -> BTreeMap<String, Vec<(i64, u64)>> {
    series(&recv.grpc, vec![re("__name__", "s_.+")], 0, i64::MAX)
        .expect("StoreAPI Series")
        .into_iter()
        .map(|(l, s)| {
            (
                l.get("__name__").unwrap_or_default().to_string(),
                s.into_iter().map(|(t, v)| (t, v.to_bits())).collect(),
            )
        })
        .collect()
}

fn prometheus_data(prom: &str, at: i64) -> BTreeMap<String, Vec<(i64, u64)>> {
    let v = prom_query(prom, "{__name__=~\"s_.+\"}[6h]", Some(at as f64 / 1000.0));
    let mut out = BTreeMap::new();
    for r in v["data"]["result"].as_array().cloned().unwrap_or_default() {
        let n = r["metric"]["__name__"].as_str().unwrap().to_string();
        let samples = r["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let t = (p[0].as_f64().unwrap() * 1000.0).round() as i64;
                let v: f64 = p[1].as_str().unwrap().parse().unwrap();
                (t, v.to_bits())
            })
            .collect();
        out.insert(n, samples);
    }
    out
}

fn range(from: i64, to: i64, step: i64) -> Vec<i64> {
    (0..)
        .map(|i| from + i * step)
        .take_while(|&t| t <= to)
        .collect()
}

/// Runs `requests` (built from `now`) against a fresh Prometheus and a fresh receiver
/// with `block` as min and max block duration; asserts identical verdicts and data.
fn side_by_side(scenario: &str, block: &str, requests: impl Fn(i64) -> Vec<Request>) {
    let dir = tempfile::tempdir().unwrap();
    let recv = Receiver::start(
        &dir.path().join("data"),
        &dir.path().join("receive.log"),
        &[
            &format!("--tsdb.min-block-duration={block}"),
            &format!("--tsdb.max-block-duration={block}"),
        ],
    );
    let prom = Prometheus::start(
        "global:\n  scrape_interval: 1m\n",
        &[
            "--web.enable-remote-write-receiver",
            &format!("--storage.tsdb.min-block-duration={block}"),
            &format!("--storage.tsdb.max-block-duration={block}"),
        ],
    );
    let now = now_ms() / S * S;
    let mut total_refused = 0;
    for (i, req) in requests(now).iter().enumerate() {
        let want = prometheus_apply(&prom.addr(), req);
        let (code, text, got) = orrery_apply(&recv, req);
        assert_eq!(
            got, want,
            "{scenario} ({block} blocks), request {i}: samples refused by orrery (left) vs prometheus (right); orrery said {code} {text}"
        );
        let want_code = if want.is_empty() { 200 } else { 409 };
        assert_eq!(code, want_code, "{scenario} ({block}), request {i}: {text}");
        total_refused += want.len();
    }
    let o = orrery_data(&recv);
    let p = prometheus_data(&prom.addr(), now_ms());
    assert_eq!(o, p, "{scenario} ({block} blocks): stored data differs");
    eprintln!(
        "{scenario} ({block} blocks): {} series, {} samples stored, {total_refused} refused by both",
        o.len(),
        o.values().map(Vec::len).sum::<usize>()
    );
}

/// The first request a fresh receiver gets spans 20 minutes, in order.
fn fresh_20m(now: i64) -> Vec<Request> {
    vec![vec![(0, range(now - 21 * M, now - M, 15 * S))]]
}

/// A first request whose first series is the newest: the window starts at that sample.
fn mixed_first_newest(now: i64) -> Vec<Request> {
    vec![
        vec![
            (0, vec![now - M]),
            (1, range(now - 20 * M, now - M, 30 * S)),
            (2, range(now - 90 * M, now - M, 5 * M)),
        ],
        vec![
            (1, range(now - 50 * S, now, 10 * S)),
            (3, vec![now - 100 * M]),
        ],
    ]
}

/// Live data, an outage, then the client backfills what it missed in order, older
/// series last; and new live data after it.
fn backfill_after_outage(now: i64) -> Vec<Request> {
    let live = |from: i64, to: i64| -> Request {
        (0..3)
            .map(|s| (s, range(from + s as i64 * S, to, 15 * S)))
            .collect()
    };
    vec![
        live(now - 150 * M, now - 100 * M),
        // Outage from now−100m to now−5m; the newest data comes first.
        live(now - 5 * M, now),
        // The backlog, oldest first, one request per 10 minutes.
        live(now - 100 * M + 15 * S, now - 90 * M),
        live(now - 90 * M + 15 * S, now - 80 * M),
        live(now - 62 * M, now - 55 * M),
        live(now - 7 * M, now - 5 * M - 15 * S),
    ]
}

/// Several series with differing ranges per request, new series appearing late and
/// with old samples.
fn interleaved(now: i64) -> Vec<Request> {
    vec![
        vec![
            (0, range(now - 40 * M, now - 30 * M, M)),
            (1, vec![now - 45 * M]),
        ],
        vec![
            (1, range(now - 44 * M, now - 20 * M, 2 * M)),
            (0, range(now - 29 * M, now - 20 * M, M)),
            (2, range(now - 35 * M, now - 19 * M, 4 * M)),
        ],
        vec![
            (3, range(now - 80 * M, now - 10 * M, 10 * M)),
            (0, range(now - 19 * M, now - 10 * M, 30 * S)),
        ],
        vec![
            (2, range(now - 18 * M, now, 2 * M)),
            (4, vec![now - 75 * M, now]),
        ],
    ]
}

#[test]
fn receiver_window_matches_prometheus_short_blocks() {
    side_by_side("fresh 20m", "2m", fresh_20m);
    side_by_side("mixed, first newest", "2m", mixed_first_newest);
    side_by_side("backfill after outage", "2m", backfill_after_outage);
    side_by_side("interleaved", "2m", interleaved);
}

#[test]
fn receiver_window_matches_prometheus_default_blocks() {
    side_by_side("fresh 20m", "2h", fresh_20m);
    side_by_side("mixed, first newest", "2h", mixed_first_newest);
    side_by_side("backfill after outage", "2h", backfill_after_outage);
    side_by_side("interleaved", "2h", interleaved);
}
