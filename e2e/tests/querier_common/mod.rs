//! Shared helpers of the querier end-to-end tests: receivers, queriers and Prometheus
//! servers wired together on loopback, and a JSON API client.
#![allow(dead_code)]

use e2e::{Proc, Prometheus, free_port, http_get, orrery_bin, wait_for};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Labels the receivers and Prometheus add that Prometheus's own answers do not carry.
pub const EXTERNAL_LABELS: &[&str] =
    &["cluster", "receive_cluster", "receive_replica", "tenant_id"];

/// A directory for a test's output (logs, screenshots) that survives the test.
pub fn out_dir(test: &str) -> PathBuf {
    let d = e2e::workspace_root().join("target/e2e-out").join(test);
    let _ = std::fs::create_dir_all(&d);
    d
}

pub struct Receiver {
    pub proc: Proc,
    pub grpc: String,
    pub remote_write: String,
    pub http: String,
    pub dir: tempfile::TempDir,
}

impl Receiver {
    pub fn start(name: &str, labels: &[(&str, &str)]) -> Receiver {
        let dir = tempfile::tempdir().expect("receiver dir");
        let data = dir.path().join("data");
        Self::start_in(name, dir, &data, labels)
    }

    /// A receiver on an existing data directory (e.g. a restart after a kill); its log
    /// goes to a new temporary directory.
    pub fn start_on(name: &str, data: &std::path::Path, labels: &[(&str, &str)]) -> Receiver {
        Self::start_in(
            name,
            tempfile::tempdir().expect("receiver dir"),
            data,
            labels,
        )
    }

    fn start_in(
        name: &str,
        dir: tempfile::TempDir,
        data: &std::path::Path,
        labels: &[(&str, &str)],
    ) -> Receiver {
        let grpc = format!("127.0.0.1:{}", free_port());
        let rw = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(orrery_bin());
        cmd.arg("receive")
            .arg(format!("--tsdb.path={}", data.display()))
            .arg(format!("--remote-write.address={rw}"))
            .arg(format!("--grpc-address={grpc}"))
            .arg(format!("--http-address={http}"));
        for (k, v) in labels {
            cmd.arg(format!("--label={k}=\"{v}\""));
        }
        let proc = Proc::spawn(name, cmd, dir.path().join("receiver.log"));
        let r = Receiver {
            proc,
            grpc,
            remote_write: rw,
            http,
            dir,
        };
        let up = wait_for(Duration::from_secs(30), || {
            std::net::TcpStream::connect(&r.grpc).ok().map(|_| ())
        });
        assert!(
            up.is_some(),
            "receiver {name} did not listen on gRPC {}; log:\n{}",
            r.grpc,
            r.proc.log_text()
        );
        r
    }

    pub fn remote_write_url(&self) -> String {
        format!("http://{}/api/v1/receive", self.remote_write)
    }
}

pub struct Querier {
    pub proc: Proc,
    pub http: String,
    pub dir: tempfile::TempDir,
}

impl Querier {
    pub fn start(endpoints: &[&str], extra: &[&str]) -> Querier {
        let dir = tempfile::tempdir().expect("querier dir");
        let http = format!("127.0.0.1:{}", free_port());
        let grpc = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(orrery_bin());
        cmd.arg("query")
            .arg(format!("--http-address={http}"))
            .arg(format!("--grpc-address={grpc}"));
        for e in endpoints {
            cmd.arg(format!("--endpoint={e}"));
        }
        cmd.args(extra);
        let proc = Proc::spawn("querier", cmd, dir.path().join("querier.log"));
        let q = Querier { proc, http, dir };
        let ready = wait_for(Duration::from_secs(30), || {
            matches!(http_get(&q.http, "/-/ready"), Ok((200, _))).then_some(())
        });
        assert!(
            ready.is_some(),
            "querier not ready on {}; log:\n{}",
            q.http,
            q.proc.log_text()
        );
        q
    }
}

/// Prometheus scraping itself every second with these external labels, remote-writing to
/// every URL in `remote_write`.
pub fn prometheus(external: &[(&str, &str)], remote_write: &[String]) -> Prometheus {
    let mut cfg = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n");
    if !external.is_empty() {
        cfg.push_str("  external_labels:\n");
        for (k, v) in external {
            cfg.push_str(&format!("    {k}: {v}\n"));
        }
    }
    cfg.push_str(
        "scrape_configs:\n  - job_name: prometheus\n    static_configs:\n      - targets: ['127.0.0.1:{{PORT}}']\n",
    );
    if !remote_write.is_empty() {
        cfg.push_str("remote_write:\n");
        for url in remote_write {
            cfg.push_str(&format!(
                "  - url: {url}\n    queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n      max_backoff: 1s\n    metadata_config:\n      send_interval: 2s\n"
            ));
        }
    }
    Prometheus::start(&cfg, &[])
}

/// Percent-encodes a query parameter value.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// POSTs a form (large queries do not fit in a URL): `(status, the body as JSON — or
/// as a JSON string when it is not JSON —, elapsed)`.
#[allow(dead_code)] // not every test binary that includes this module posts forms
pub fn post_form<V: AsRef<str>>(
    addr: &str,
    path: &str,
    form: &[(&str, V)],
) -> (u16, Value, std::time::Duration) {
    let body = form
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v.as_ref())))
        .collect::<Vec<_>>()
        .join("&");
    let started = std::time::Instant::now();
    let (code, text) = e2e::http_request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )
    .unwrap_or_else(|e| panic!("POST {addr}{path}: {e}"));
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (code, v, started.elapsed())
}

/// GET `path` on `addr`, parsed as JSON; panics with the body when not JSON.
pub fn get_json(addr: &str, path: &str) -> (u16, Value) {
    let (code, body) = http_get(addr, path).unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"));
    let v: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {addr}{path}: not JSON ({e}): {body}"));
    (code, v)
}

pub fn instant(addr: &str, q: &str, t: f64) -> (u16, Value) {
    get_json(addr, &format!("/api/v1/query?query={}&time={t:.3}", enc(q)))
}

pub fn range(addr: &str, q: &str, start: f64, end: f64, step: f64) -> (u16, Value) {
    get_json(
        addr,
        &format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}",
            enc(q)
        ),
    )
}

pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A metric's labels without the external labels, as a sorted string key.
pub fn metric_key(m: &Value) -> String {
    let mut pairs: Vec<(String, String)> = m
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| !EXTERNAL_LABELS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn num(s: &Value) -> f64 {
    match s.as_str() {
        Some("NaN") => f64::NAN,
        Some("+Inf") => f64::INFINITY,
        Some("-Inf") => f64::NEG_INFINITY,
        Some(x) => x.parse().unwrap_or(f64::NAN),
        None => f64::NAN,
    }
}

fn close(a: f64, b: f64) -> bool {
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let d = (a - b).abs();
    d <= 1e-9 * a.abs().max(b.abs()).max(1e-300)
}

/// Normalises a query `data` object: `(resultType, sorted [(metric key, [(t, v)])])`.
#[allow(clippy::type_complexity)]
pub fn normalise(data: &Value) -> (String, Vec<(String, Vec<(f64, f64)>)>) {
    let rt = data["resultType"].as_str().unwrap_or("").to_string();
    let mut out = Vec::new();
    match rt.as_str() {
        "vector" | "matrix" => {
            for s in data["result"].as_array().cloned().unwrap_or_default() {
                let key = metric_key(&s["metric"]);
                let pts: Vec<(f64, f64)> = if rt == "vector" {
                    vec![(s["value"][0].as_f64().unwrap_or(0.0), num(&s["value"][1]))]
                } else {
                    s["values"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|p| (p[0].as_f64().unwrap_or(0.0), num(&p[1])))
                        .collect()
                };
                out.push((key, pts));
            }
        }
        "scalar" => out.push((
            String::new(),
            vec![(
                data["result"][0].as_f64().unwrap_or(0.0),
                num(&data["result"][1]),
            )],
        )),
        _ => out.push((String::new(), vec![])),
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    (rt, out)
}

/// Compares two query answers (Prometheus's and ours) and describes the first difference.
pub fn diff(ours: &Value, theirs: &Value) -> Option<String> {
    let (rt_o, o) = normalise(ours);
    let (rt_t, t) = normalise(theirs);
    if rt_o != rt_t {
        return Some(format!("resultType {rt_o} vs {rt_t}"));
    }
    if o.len() != t.len() {
        return Some(format!(
            "{} series vs {}: ours {:?} theirs {:?}",
            o.len(),
            t.len(),
            o.iter().map(|x| &x.0).collect::<Vec<_>>(),
            t.iter().map(|x| &x.0).collect::<Vec<_>>()
        ));
    }
    for ((ko, po), (kt, pt)) in o.iter().zip(t.iter()) {
        if ko != kt {
            return Some(format!("series {ko} vs {kt}"));
        }
        if po.len() != pt.len() {
            return Some(format!("{ko}: {} points vs {}", po.len(), pt.len()));
        }
        for (a, b) in po.iter().zip(pt.iter()) {
            if (a.0 - b.0).abs() > 1e-6 || !close(a.1, b.1) {
                return Some(format!("{ko}: point {a:?} vs {b:?}"));
            }
        }
    }
    None
}
