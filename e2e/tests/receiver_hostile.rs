//! Hostile remote-write requests: each gets the right 4xx with a body that says what was
//! wrong, and the receiver keeps serving.

mod receiver_common;

use e2e::http_request;
use receiver_common::{Receiver, eq, labels, series};
use storeapi::wire::remote_write::{encode_write_request, snappy_compress};
use storeapi::{Label, Labels, Sample};

fn one(l: Labels) -> Vec<(Labels, Vec<Sample>)> {
    vec![(
        l,
        vec![Sample {
            t: 1_700_000_000_000,
            v: 1.0,
        }],
    )]
}

/// Protobuf by hand: series with labels in the given order (possibly unsorted/duplicate).
fn raw_series(pairs: &[(&str, &str)]) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, f: u8, data: &[u8]) {
        out.push(f << 3 | 2);
        let mut n = data.len();
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(data);
    }
    let mut ts = Vec::new();
    for (n, v) in pairs {
        let mut l = Vec::new();
        field(&mut l, 1, n.as_bytes());
        field(&mut l, 2, v.as_bytes());
        field(&mut ts, 1, &l);
    }
    let mut s = vec![0x09];
    s.extend_from_slice(&1.0f64.to_le_bytes());
    s.push(0x10);
    s.extend_from_slice(&[0x80, 0xe0, 0xc5, 0xa7, 0xbb, 0x31]); // some t
    field(&mut ts, 2, &s);
    let mut out = Vec::new();
    field(&mut out, 1, &ts);
    out
}

#[test]
fn receiver_hostile_inputs_get_the_right_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let limits = dir.path().join("limits.yaml");
    std::fs::write(
        &limits,
        "write:\n  tenants:\n    small:\n      request:\n        series_limit: 2\n        samples_limit: 3\n        size_bytes_limit: 5000\n    tiny-head:\n      head_series_limit: 1\n",
    )
    .unwrap();
    let recv = Receiver::start(
        &dir.path().join("data"),
        &dir.path().join("receive.log"),
        &[&format!(
            "--receive.limits-config-file={}",
            limits.display()
        )],
    );
    let good = encode_write_request(
        one(labels(&[("__name__", "ok"), ("job", "x")]))
            .iter()
            .map(|(l, s)| (l, s.as_slice())),
    );
    let good_snappy = snappy_compress(&good);

    #[allow(clippy::type_complexity)]
    let mut cases: Vec<(&str, Vec<u8>, Vec<(&str, &str)>, u16, &str)> = vec![
        (
            "garbage snappy",
            b"\xff\xff\xff\xff\xff\xff garbage".to_vec(),
            vec![],
            400,
            "snappy",
        ),
        (
            "truncated snappy",
            good_snappy[..good_snappy.len() / 2].to_vec(),
            vec![],
            400,
            "snappy",
        ),
        (
            "garbage protobuf",
            snappy_compress(b"\x0a\xff\xff\xff\x0fnot protobuf"),
            vec![],
            400,
            "protobuf",
        ),
        (
            "snappy bomb (declares 1 GiB)",
            vec![0x80, 0x80, 0x80, 0x80, 0x04, 0x00, 0x01, 0x02],
            vec![],
            413,
            "decompressed",
        ),
        (
            "unsorted labels",
            snappy_compress(&raw_series(&[("job", "x"), ("__name__", "a")])),
            vec![],
            409,
            "not sorted",
        ),
        (
            "duplicate labels",
            snappy_compress(&raw_series(&[
                ("__name__", "a"),
                ("job", "x"),
                ("job", "y"),
            ])),
            vec![],
            409,
            "duplicate",
        ),
        (
            "empty label value",
            snappy_compress(&raw_series(&[("__name__", "a"), ("job", "")])),
            vec![],
            409,
            "empty value",
        ),
        (
            "invalid label name",
            snappy_compress(&raw_series(&[("__name__", "a"), ("1job", "x")])),
            vec![],
            409,
            "invalid label name",
        ),
        (
            "tenant traversal",
            good_snappy.clone(),
            vec![("THANOS-TENANT", "../etc")],
            400,
            "tenant",
        ),
        (
            "tenant with slash",
            good_snappy.clone(),
            vec![("THANOS-TENANT", "a/b")],
            400,
            "tenant",
        ),
    ];
    // 10k labels in one series.
    let many: Vec<Label> = (0..10_000)
        .map(|i| Label::new(format!("l{i:05}"), "v"))
        .collect();
    let many = Labels::from_unsorted(many).unwrap();
    let body = snappy_compress(&encode_write_request(
        one(many).iter().map(|(l, s)| (l, s.as_slice())),
    ));
    cases.push(("10k labels", body, vec![], 409, "labels, over the limit"));
    // A huge label value.
    let huge = "x".repeat(1 << 20);
    let body = snappy_compress(&encode_write_request(
        one(labels(&[("__name__", "a"), ("v", &huge)]))
            .iter()
            .map(|(l, s)| (l, s.as_slice())),
    ));
    cases.push(("huge value", body, vec![], 409, "over the limit"));
    // Limits for tenant `small`.
    let three: Vec<_> = (0..3)
        .flat_map(|i| one(labels(&[("__name__", "s"), ("i", &i.to_string())])))
        .collect();
    let body = snappy_compress(&encode_write_request(
        three.iter().map(|(l, s)| (l, s.as_slice())),
    ));
    cases.push((
        "series_limit",
        body,
        vec![("THANOS-TENANT", "small")],
        413,
        "series_limit",
    ));
    #[allow(clippy::useless_vec)]
    let four = vec![(
        labels(&[("__name__", "s")]),
        (0..4)
            .map(|i| Sample {
                t: 1_700_000_000_000 + i,
                v: 1.0,
            })
            .collect::<Vec<_>>(),
    )];
    let body = snappy_compress(&encode_write_request(
        four.iter().map(|(l, s)| (l, s.as_slice())),
    ));
    cases.push((
        "samples_limit",
        body,
        vec![("THANOS-TENANT", "small")],
        413,
        "samples_limit",
    ));
    let big = vec![0u8; 6000];
    cases.push((
        "size_bytes_limit",
        big,
        vec![("THANOS-TENANT", "small")],
        413,
        "size_bytes_limit",
    ));

    for (name, body, headers, want, needle) in &cases {
        let (code, text) = recv.post(body, headers);
        assert_eq!(code, *want, "{name}: body {text}");
        assert!(
            text.contains(needle),
            "{name}: error body should mention {needle:?}: {text}"
        );
        // Still serving.
        let (code, text) = recv.post(&good_snappy, &[]);
        assert_eq!(code, 200, "after {name}: {text}");
    }

    // Wrong methods and paths.
    for (m, p, want) in [
        ("GET", "/api/v1/receive", 405),
        ("PUT", "/api/v1/receive", 405),
        ("POST", "/api/v1/write", 404),
        ("POST", "/", 404),
    ] {
        let (code, _) = http_request(&recv.rw, m, p, &[], b"x").unwrap();
        assert_eq!(code, want, "{m} {p}");
    }

    // Conflicts: out-of-order and duplicate-with-other-value samples → 409; the valid
    // sample of the same request is still written.
    let l = labels(&[("__name__", "conflict")]);
    const T2: i64 = 1_700_000_100_000;
    let s = |t: i64, v: f64| Sample { t, v };
    assert_eq!(recv.write(&[(l.clone(), vec![s(T2, 1.0)])]).0, 200);
    let (code, text) = recv.write(&[
        (l.clone(), vec![s(T2 - 50_000, 1.0)]),
        (labels(&[("__name__", "fresh")]), vec![s(T2, 5.0)]),
    ]);
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("out of order"), "{text}");
    let (code, text) = recv.write(&[(l.clone(), vec![s(T2, 2.0)])]);
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("duplicate"), "{text}");
    // Identical duplicate: accepted.
    assert_eq!(recv.write(&[(l, vec![s(T2, 1.0)])]).0, 200);
    let fresh = series(&recv.grpc, vec![eq("__name__", "fresh")], 0, i64::MAX).unwrap();
    assert_eq!(fresh.len(), 1, "valid series of a 409 request is written");

    // Samples in the future: a year ahead, at int64 max and just outside the default
    // 10m margin are refused with 409 naming the sample, its timestamp and the limit; the
    // rest of the request is written, and current writes keep succeeding afterwards.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let one_at = |n: &str, t: i64| (labels(&[("__name__", n)]), vec![s(t, 1.0)]);
    const MIN: i64 = 60_000;
    for (what, t) in [
        ("a year ahead", now() + 365 * 24 * 60 * MIN),
        ("int64 max", i64::MAX),
        ("just outside the margin", now() + 11 * MIN),
    ] {
        let (code, text) = recv.write(&[one_at("future", t), one_at("beside_future", now())]);
        assert_eq!(code, 409, "{what}: {text}");
        assert!(text.contains("too far in the future"), "{what}: {text}");
        assert!(text.contains(&format!("at t={t} ")), "{what}: {text}");
        assert!(
            text.contains("in series {__name__=\"future\"}"),
            "{what}: names the series: {text}"
        );
        assert!(
            text.contains("--tsdb.too-far-in-future.time-window"),
            "{what}: {text}"
        );
        let (code, text) = recv.write(&[one_at("current", now())]);
        assert_eq!(code, 200, "current write after {what}: {text}");
        let (code, text) = recv.write(&[one_at("older_current", now() - 30 * MIN)]);
        assert_eq!(code, 200, "30m old write after {what}: {text}");
    }
    // Just inside the margin: accepted, and current data still is.
    let (code, text) = recv.write(&[one_at("inside", now() + 9 * MIN)]);
    assert_eq!(code, 200, "{text}");
    let (code, text) = recv.write(&[one_at("current", now()), one_at("late", now() - 40 * MIN)]);
    assert_eq!(code, 200, "current write after a sample 9m ahead: {text}");
    assert!(
        series(&recv.grpc, vec![eq("__name__", "future")], 0, i64::MAX)
            .unwrap()
            .is_empty()
    );
    let beside = series(
        &recv.grpc,
        vec![eq("__name__", "beside_future")],
        0,
        i64::MAX,
    )
    .unwrap();
    assert_eq!(
        beside.len(),
        1,
        "the valid sample beside a future one is written"
    );
    assert!(recv.metrics().contains("reason=\"too_far_in_future\"} 3"));

    // Head series limit → 429 for tenant tiny-head once it holds one series.
    let h = |n: &str| one(labels(&[("__name__", n)]));
    let body = |s: &[(Labels, Vec<Sample>)]| {
        snappy_compress(&encode_write_request(
            s.iter().map(|(l, s)| (l, s.as_slice())),
        ))
    };
    assert_eq!(
        recv.post(&body(&h("a")), &[("THANOS-TENANT", "tiny-head")])
            .0,
        200
    );
    let (code, text) = recv.post(&body(&h("b")), &[("THANOS-TENANT", "tiny-head")]);
    assert_eq!(code, 429, "{text}");
    assert!(text.contains("head_series_limit"), "{text}");

    // Empty request (metadata only) → 200.
    assert_eq!(recv.post(&snappy_compress(&[]), &[]).0, 200);

    // Rejections are counted.
    let m = recv.metrics();
    assert!(m.contains("reason=\"invalid_labels\""), "{m}");
    assert!(
        m.contains("orrery_receive_http_requests_total{code=\"409\"}"),
        "{m}"
    );
    // No directory escaped the data dir.
    assert!(!dir.path().join("etc").exists());
}

#[test]
fn receiver_native_histograms_stored_invalid_ones_refused_clearly_and_counted() {
    use storeapi::wire::prometheus::WriteRequest;
    use storeapi::wire::prompb::{self, BucketSpan, Histogram, Sample as PSample, TimeSeries};
    use storeapi::wire::thanos::Label as WLabel;
    let dir = tempfile::tempdir().unwrap();
    let recv = Receiver::start(&dir.path().join("data"), &dir.path().join("r.log"), &[]);
    let t = 1_700_000_000_000;
    let good = |t: i64| Histogram {
        count: Some(prompb::histogram::Count::CountInt(3)),
        zero_count: Some(prompb::histogram::ZeroCount::ZeroCountInt(1)),
        positive_spans: vec![BucketSpan {
            offset: 0,
            length: 1,
        }],
        positive_deltas: vec![2],
        sum: 4.5,
        timestamp: t,
        ..Default::default()
    };
    let mut bad = good(t + 2000);
    bad.positive_deltas = vec![2, 0];
    let req = WriteRequest {
        timeseries: vec![TimeSeries {
            labels: vec![WLabel {
                name: "__name__".into(),
                value: "h".into(),
            }],
            samples: vec![PSample {
                value: 3.0,
                timestamp: t - 1000,
            }],
            exemplars: vec![],
            histograms: vec![good(t), good(t + 1000), bad],
        }],
        metadata: vec![],
    };
    let body = snappy_compress(&prost_encode(&req));
    let (code, text) = recv.post(&body, &[]);
    assert_eq!(code, 400, "{text}");
    assert!(
        text.contains("1 invalid native histogram samples refused; first: ")
            && text.contains("histogram spans specify different number of buckets than provided"),
        "{text}"
    );
    assert!(text.contains("{__name__=\"h\"}"), "{text}");
    let m = recv.metrics();
    assert!(
        m.contains("orrery_receive_native_histograms_rejected_total{tenant=\"default-tenant\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("orrery_receive_native_histograms_received_total{tenant=\"default-tenant\"} 3"),
        "{m}"
    );
    // The float sample and both valid histograms are stored: resending the newest is a
    // duplicate (a 2xx), and an older histogram is out of order (409).
    let mut again = req.clone();
    again.timeseries[0].samples.clear();
    again.timeseries[0].histograms = vec![good(t + 1000)];
    let (code, text) = recv.post(&snappy_compress(&prost_encode(&again)), &[]);
    assert!((200..300).contains(&code), "{code} {text}");
    let mut old = req.clone();
    old.timeseries[0].samples.clear();
    old.timeseries[0].histograms = vec![good(t + 500)];
    let (code, text) = recv.post(&snappy_compress(&prost_encode(&old)), &[]);
    assert_eq!(code, 409, "{text}");
    assert!(
        text.contains("out of order sample at t=1700000000500"),
        "{text}"
    );
}

fn prost_encode(req: &storeapi::wire::prometheus::WriteRequest) -> Vec<u8> {
    use prost::Message;
    req.encode_to_vec()
}
