//! Shared helpers of the receiver_* tests: start `orrery receive`, remote-write to it,
//! read it back over the StoreAPI.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::{Proc, free_port, http_get, http_request, orrery_bin, wait_for};
use storeapi::wire::thanos::{self, LabelMatcher, SeriesRequest, store_client::StoreClient};
use storeapi::{Labels, Sample};

pub struct Receiver {
    pub proc: Proc,
    pub rw: String,
    pub grpc: String,
    pub http: String,
    pub data: PathBuf,
}

impl Receiver {
    /// Writes `series` one minute per request over `[from, end)`, in time order; every
    /// request must be accepted.
    pub fn write_in_order(&self, series: &[e2e::promqlcmp::Series], from: i64, end: i64) {
        let mut from = from;
        while from < end {
            let to = from + 60_000;
            let batch: Vec<_> = series
                .iter()
                .filter_map(|s| {
                    let samples: Vec<_> = s
                        .samples
                        .iter()
                        .filter(|x| x.t >= from && x.t < to)
                        .copied()
                        .collect();
                    (!samples.is_empty()).then(|| (s.labels.clone(), samples))
                })
                .collect();
            if !batch.is_empty() {
                let (code, body) = self.write(&batch);
                assert_eq!(code, 200, "write {from}..{to}: {body}");
            }
            from = to;
        }
    }

    /// Starts `orrery receive` on free ports with `data` as --tsdb.path and waits for
    /// /-/ready.
    pub fn start(data: &Path, log: &Path, extra: &[&str]) -> Receiver {
        let r = Receiver::spawn(data, log, extra);
        let ok = wait_for(Duration::from_secs(60), || {
            matches!(http_get(&r.http, "/-/ready"), Ok((200, _))).then_some(())
        });
        assert!(
            ok.is_some(),
            "orrery receive did not become ready; log:\n{}",
            r.proc.log_text()
        );
        r
    }

    /// Starts `orrery receive` like [`Receiver::start`] but waits only until it serves
    /// the StoreAPI and `/-/healthy` (it may be unready, e.g. on a full disk).
    pub fn spawn(data: &Path, log: &Path, extra: &[&str]) -> Receiver {
        let (rw, grpc, http) = (free_port(), free_port(), free_port());
        let mut cmd = Command::new(orrery_bin());
        cmd.arg("receive")
            .arg(format!("--tsdb.path={}", data.display()))
            .arg(format!("--remote-write.address=127.0.0.1:{rw}"))
            .arg(format!("--grpc-address=127.0.0.1:{grpc}"))
            .arg(format!("--http-address=127.0.0.1:{http}"))
            .args(extra)
            .env("RUST_LOG", "info");
        let proc = Proc::spawn("orrery-receive", cmd, log.to_path_buf());
        let r = Receiver {
            proc,
            rw: format!("127.0.0.1:{rw}"),
            grpc: format!("127.0.0.1:{grpc}"),
            http: format!("127.0.0.1:{http}"),
            data: data.to_path_buf(),
        };
        let ok = wait_for(Duration::from_secs(60), || {
            let healthy = matches!(http_get(&r.http, "/-/healthy"), Ok((200, _)));
            (healthy && std::net::TcpStream::connect(&r.grpc).is_ok()).then_some(())
        });
        assert!(
            ok.is_some(),
            "orrery receive did not start (no /-/healthy or gRPC listener); log:\n{}",
            r.proc.log_text()
        );
        r
    }

    /// `(status, body)` of `/-/ready`.
    pub fn ready(&self) -> (u16, String) {
        http_get(&self.http, "/-/ready").unwrap_or((0, String::new()))
    }

    /// POSTs a raw body to /api/v1/receive.
    pub fn post(&self, body: &[u8], headers: &[(&str, &str)]) -> (u16, String) {
        let mut h = vec![
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ];
        h.extend_from_slice(headers);
        http_request(&self.rw, "POST", "/api/v1/receive", &h, body)
            .unwrap_or_else(|e| panic!("remote write to {} failed: {e}", self.rw))
    }

    /// Remote-writes model series.
    pub fn write(&self, series: &[(Labels, Vec<Sample>)]) -> (u16, String) {
        e2e::remote_write(&self.rw, "/api/v1/receive", series, &[])
            .unwrap_or_else(|e| panic!("remote write to {} failed: {e}", self.rw))
    }

    pub fn metrics(&self) -> String {
        http_get(&self.http, "/metrics")
            .map(|r| r.1)
            .unwrap_or_default()
    }
}

pub fn eq(name: &str, value: &str) -> LabelMatcher {
    LabelMatcher {
        r#type: 0,
        name: name.into(),
        value: value.into(),
    }
}

pub fn re(name: &str, value: &str) -> LabelMatcher {
    LabelMatcher {
        r#type: 2,
        name: name.into(),
        value: value.into(),
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Raw `Series` call: every frame's series (batches flattened).
pub fn series_raw(grpc: &str, req: SeriesRequest) -> Result<Vec<thanos::Series>, tonic::Status> {
    runtime().block_on(async {
        let mut c = StoreClient::connect(format!("http://{grpc}"))
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?
            .max_decoding_message_size(usize::MAX);
        let mut stream = c.series(req).await?.into_inner();
        let mut out = Vec::new();
        while let Some(frame) = stream.message().await? {
            match frame.result {
                Some(thanos::series_response::Result::Series(s)) => out.push(s),
                Some(thanos::series_response::Result::Batch(b)) => out.extend(b.series),
                _ => {}
            }
        }
        Ok(out)
    })
}

/// `Series` decoded: labels and float samples in `[mint, maxt]`; checks chunk hashes.
#[allow(clippy::type_complexity)]
pub fn series(
    grpc: &str,
    matchers: Vec<LabelMatcher>,
    mint: i64,
    maxt: i64,
) -> Result<Vec<(Labels, Vec<(i64, f64)>)>, tonic::Status> {
    let frames = series_raw(
        grpc,
        SeriesRequest {
            min_time: mint,
            max_time: maxt,
            matchers,
            response_batch_size: 64,
            ..Default::default()
        },
    )?;
    let mut out: Vec<(Labels, Vec<(i64, f64)>)> = Vec::new();
    for s in frames {
        let labels = storeapi::wire::labels_from_wire(s.labels).expect("valid labels");
        let mut samples = Vec::new();
        for c in s.chunks {
            let raw = c.raw.expect("raw chunk");
            assert_eq!(raw.r#type, 0, "XOR chunk");
            assert_eq!(
                raw.hash,
                xxhash(&raw.data),
                "chunk hash is xxhash64 of data"
            );
            for (t, v) in tsdb::chunk::xor::decode_all(&raw.data).expect("decodable XOR chunk") {
                if t >= mint && t <= maxt {
                    samples.push((t, v));
                }
            }
        }
        match out.last_mut() {
            Some((l, s)) if *l == labels => s.extend(samples),
            _ => out.push((labels, samples)),
        }
    }
    Ok(out)
}

fn xxhash(data: &[u8]) -> u64 {
    // xxhash64 with seed 0, computed via the tsdb crate's dependency-free path is not
    // public; recompute with a tiny local implementation.
    xxh64(data, 0)
}

/// Reference XXH64 (for checking chunk hashes independently of the server's crate).
pub fn xxh64(input: &[u8], seed: u64) -> u64 {
    const P1: u64 = 11400714785074694791;
    const P2: u64 = 14029467366897019727;
    const P3: u64 = 1609587929392839161;
    const P4: u64 = 9650029242287828579;
    const P5: u64 = 2870177450012600261;
    fn round(acc: u64, lane: u64) -> u64 {
        acc.wrapping_add(lane.wrapping_mul(P2))
            .rotate_left(31)
            .wrapping_mul(P1)
    }
    fn merge(acc: u64, val: u64) -> u64 {
        (acc ^ round(0, val)).wrapping_mul(P1).wrapping_add(P4)
    }
    let rd64 = |b: &[u8]| u64::from_le_bytes(b[..8].try_into().unwrap());
    let rd32 = |b: &[u8]| u32::from_le_bytes(b[..4].try_into().unwrap()) as u64;
    let len = input.len();
    let mut p = input;
    let mut h;
    if len >= 32 {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        while p.len() >= 32 {
            for (i, vi) in v.iter_mut().enumerate() {
                *vi = round(*vi, rd64(&p[i * 8..]));
            }
            p = &p[32..];
        }
        h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        for vi in v {
            h = merge(h, vi);
        }
    } else {
        h = seed.wrapping_add(P5);
    }
    h = h.wrapping_add(len as u64);
    while p.len() >= 8 {
        h ^= round(0, rd64(p));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        p = &p[8..];
    }
    if p.len() >= 4 {
        h ^= rd32(p).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        p = &p[4..];
    }
    for &b in p {
        h ^= (b as u64).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^= h >> 32;
    h
}

/// An instant query against a Prometheus's HTTP API (`time` in seconds, or now).
pub fn prom_query(addr: &str, q: &str, time: Option<f64>) -> serde_json::Value {
    let enc: String = q
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let path = match time {
        Some(t) => format!("/api/v1/query?query={enc}&time={t}"),
        None => format!("/api/v1/query?query={enc}"),
    };
    let (code, body) = http_get(addr, &path).expect("query prometheus");
    assert_eq!(code, 200, "prometheus query {q}: {body}");
    serde_json::from_str(&body).expect("json")
}

/// The single value of a scalar-like instant query (`sum(...)`), None when empty.
pub fn prom_value(addr: &str, q: &str) -> Option<f64> {
    let v = prom_query(addr, q, None);
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs.iter().copied()).expect("valid labels")
}
