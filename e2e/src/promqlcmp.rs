//! Side-by-side PromQL comparison against the reference Prometheus: a deterministic
//! synthetic dataset, backfilled into Prometheus with `promtool tsdb
//! create-blocks-from openmetrics` and loaded into our in-memory storage, plus the HTTP
//! API client and the result comparison.

use crate::{Prometheus, http_get, promtool_bin};
use promql::{MemStorage, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use storeapi::{Label, Labels, Sample};

/// One generated series.
#[derive(Debug, Clone)]
pub struct Series {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

/// A small deterministic PRNG (xorshift64*), so both sides always see the same data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn f(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_unsorted(pairs.iter().map(|(n, v)| Label::new(*n, *v)).collect())
        .expect("generated label sets are valid")
}

/// Scrape timestamps of one target: every `interval_ms` from `start_ms` for `n` steps,
/// with a per-target phase and ±1s jitter on some scrapes, skipping `gap` (a target
/// outage) and stopping at `end_step` (a target that went away).
struct Target {
    job: &'static str,
    instance: String,
    phase_ms: i64,
    gap: Option<(usize, usize)>,
    end_step: usize,
    reset_at: Option<usize>,
}

/// The comparison dataset: a few hundred series of several kinds over `hours` at 15s.
pub fn realistic_dataset(start_ms: i64, hours: i64) -> Vec<Series> {
    let mut rng = Rng::new(0x5eed_1234);
    let interval = 15_000i64;
    let steps = (hours * 3_600_000 / interval) as usize;
    let mut targets = Vec::new();
    for (job, n) in [("api", 5), ("db", 4), ("cache", 3)] {
        for i in 0..n {
            let idx = targets.len();
            targets.push(Target {
                job,
                instance: format!("{job}-{i}:9100"),
                phase_ms: (rng.below(15) as i64) * 1000,
                gap: (idx % 5 == 2).then(|| {
                    let s = steps / 3 + rng.below(steps as u64 / 4) as usize;
                    (s, s + 40 + rng.below(40) as usize)
                }),
                end_step: if idx % 6 == 4 {
                    steps * 2 / 3 + rng.below(steps as u64 / 6) as usize
                } else {
                    steps
                },
                reset_at: (idx % 4 == 1).then(|| steps / 2 + rng.below(steps as u64 / 3) as usize),
            });
        }
    }
    let mut out: BTreeMap<Labels, Vec<Sample>> = BTreeMap::new();
    for tg in &targets {
        let ts: Vec<(usize, i64)> = (0..tg.end_step)
            .filter(|s| !tg.gap.is_some_and(|(a, b)| *s >= a && *s < b))
            .map(|s| {
                let jitter = match rng.below(10) {
                    0 => -1000,
                    1 => 1000,
                    _ => 0,
                };
                (s, start_ms + s as i64 * interval + tg.phase_ms + jitter)
            })
            .collect();
        let base = [("job", tg.job), ("instance", tg.instance.as_str())];
        let mut push = |extra: &[(&str, &str)], samples: Vec<Sample>| {
            let mut p: Vec<(&str, &str)> = base.to_vec();
            p.extend_from_slice(extra);
            out.entry(labels(&p)).or_default().extend(samples);
        };
        // Counters with a reset where the target restarted.
        for method in ["GET", "POST"] {
            for code in ["200", "500"] {
                let rate = if code == "200" { 20.0 } else { 0.5 } * (1.0 + rng.f());
                let mut v = rng.below(1000) as f64;
                let mut samples = Vec::new();
                for &(s, t) in &ts {
                    if tg.reset_at == Some(s) {
                        v = 0.0;
                    }
                    v += (rate * 15.0 * (0.5 + rng.f())).round();
                    samples.push(Sample { t, v });
                }
                push(
                    &[
                        ("__name__", "http_requests_total"),
                        ("method", method),
                        ("code", code),
                    ],
                    samples,
                );
            }
        }
        // A classic histogram.
        let bounds = ["0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf"];
        let mut counts = [0f64; 7];
        let mut sum = 0.0;
        let mut bucket_samples: Vec<Vec<Sample>> = vec![Vec::new(); 7];
        let (mut sum_s, mut count_s) = (Vec::new(), Vec::new());
        for &(s, t) in &ts {
            if tg.reset_at == Some(s) {
                counts = [0.0; 7];
                sum = 0.0;
            }
            let n = 5 + rng.below(30);
            for _ in 0..n {
                let x = rng.f() * rng.f() * 3.0;
                sum += x;
                for (k, b) in bounds.iter().enumerate() {
                    let le: f64 = b.parse().unwrap_or(f64::INFINITY);
                    if x <= le {
                        counts[k] += 1.0;
                    }
                }
            }
            for k in 0..7 {
                bucket_samples[k].push(Sample { t, v: counts[k] });
            }
            sum_s.push(Sample {
                t,
                v: (sum * 1000.0).round() / 1000.0,
            });
            count_s.push(Sample { t, v: counts[6] });
        }
        for (k, b) in bounds.iter().enumerate() {
            push(
                &[
                    ("__name__", "http_request_duration_seconds_bucket"),
                    ("le", b),
                ],
                std::mem::take(&mut bucket_samples[k]),
            );
        }
        push(&[("__name__", "http_request_duration_seconds_sum")], sum_s);
        push(
            &[("__name__", "http_request_duration_seconds_count")],
            count_s,
        );
        // CPU counters in seconds (fractional increments).
        for cpu in ["0", "1"] {
            for mode in ["idle", "user", "system"] {
                let share = match mode {
                    "idle" => 0.7,
                    "user" => 0.2,
                    _ => 0.1,
                };
                let mut v = rng.f() * 10_000.0;
                let mut samples = Vec::new();
                for &(s, t) in &ts {
                    if tg.reset_at == Some(s) {
                        v = 0.0;
                    }
                    v += ((share * 15.0 * (0.8 + 0.4 * rng.f())) * 100.0).round() / 100.0;
                    samples.push(Sample { t, v });
                }
                push(
                    &[
                        ("__name__", "node_cpu_seconds_total"),
                        ("cpu", cpu),
                        ("mode", mode),
                    ],
                    samples,
                );
            }
        }
        // Gauges.
        let mut mem = 1e9 * (1.0 + rng.f());
        let mut temp: [f64; 2] = [rng.f() * 20.0 - 5.0, rng.f() * 40.0];
        let mut queue = rng.below(50) as f64;
        let (mut mem_s, mut up_s, mut q_s) = (Vec::new(), Vec::new(), Vec::new());
        let mut temp_s: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
        for &(s, t) in &ts {
            mem = (mem + (rng.f() - 0.5) * 2e7).round();
            mem_s.push(Sample { t, v: mem });
            up_s.push(Sample {
                t,
                v: if rng.below(40) == 0 { 0.0 } else { 1.0 },
            });
            for k in 0..2 {
                temp[k] += ((rng.f() - 0.5) * 2.0 * 10.0).round() / 10.0;
                temp_s[k].push(Sample {
                    t,
                    v: (temp[k] * 10.0).round() / 10.0,
                });
            }
            queue = (queue + rng.below(7) as f64 - 3.0).max(0.0);
            if s % 3 != 1 {
                q_s.push(Sample { t, v: queue });
            }
        }
        push(&[("__name__", "process_resident_memory_bytes")], mem_s);
        push(&[("__name__", "up")], up_s);
        for (k, sensor) in ["inlet", "outlet"].iter().enumerate() {
            push(
                &[("__name__", "temperature_celsius"), ("sensor", sensor)],
                std::mem::take(&mut temp_s[k]),
            );
        }
        push(&[("__name__", "queue_length")], q_s);
    }
    out.into_iter()
        .map(|(labels, samples)| Series { labels, samples })
        .collect()
}

/// `n` series of one counter family spread over jobs and instances, for benchmarks:
/// `bench_requests_total{job, instance, path}` plus a `bench_info{instance, team}`
/// gauge per instance for joins.
pub fn bench_dataset(start_ms: i64, n: usize, minutes: i64) -> Vec<Series> {
    let mut rng = Rng::new(42);
    let interval = 15_000;
    let steps = (minutes * 60_000 / interval) as usize + 1;
    let mut out = Vec::with_capacity(n + n / 10);
    let per_instance = 10;
    let instances = n.div_ceil(per_instance);
    for i in 0..n {
        let inst = format!("host-{:05}", i / per_instance);
        let job = format!("job-{}", i % 20);
        let path = format!("/api/v{}", i % per_instance);
        let rate = 1.0 + rng.f() * 50.0;
        let mut v = 0.0;
        let samples = (0..steps)
            .map(|s| {
                v += (rate * 15.0 * (0.5 + rng.f())).round();
                Sample {
                    t: start_ms + s as i64 * interval,
                    v,
                }
            })
            .collect();
        out.push(Series {
            labels: labels(&[
                ("__name__", "bench_requests_total"),
                ("job", &job),
                ("instance", &inst),
                ("path", &path),
            ]),
            samples,
        });
    }
    for k in 0..instances {
        let inst = format!("host-{k:05}");
        let team = format!("team-{}", k % 7);
        let samples = (0..steps)
            .map(|s| Sample {
                t: start_ms + s as i64 * interval,
                v: 1.0 + (k % 3) as f64,
            })
            .collect();
        out.push(Series {
            labels: labels(&[
                ("__name__", "bench_info"),
                ("instance", &inst),
                ("team", &team),
            ]),
            samples,
        });
    }
    out
}

/// Loads series into an in-memory store.
pub fn to_mem_storage(series: &[Series]) -> MemStorage {
    let mut m = MemStorage::new();
    for s in series {
        m.add(s.labels.clone(), s.samples.iter().copied());
    }
    m
}

fn escape_label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes series as OpenMetrics text (one family after another, `# EOF` at the end).
/// Timestamps are written in seconds with millisecond precision.
pub fn write_openmetrics(series: &[Series], path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut by_name: BTreeMap<&str, Vec<&Series>> = BTreeMap::new();
    for s in series {
        by_name
            .entry(s.labels.metric_name().unwrap_or(""))
            .or_default()
            .push(s);
    }
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut line = String::new();
    for (name, list) in by_name {
        for s in list {
            let mut lbl = String::new();
            for l in s.labels.iter().filter(|l| l.name != "__name__") {
                if !lbl.is_empty() {
                    lbl.push(',');
                }
                let _ = write!(lbl, "{}=\"{}\"", l.name, escape_label_value(&l.value));
            }
            for smp in &s.samples {
                line.clear();
                let secs = smp.t.div_euclid(1000);
                let ms = smp.t.rem_euclid(1000);
                let _ = if ms == 0 {
                    writeln!(line, "{name}{{{lbl}}} {} {secs}", fmt_value(smp.v))
                } else {
                    writeln!(line, "{name}{{{lbl}}} {} {secs}.{ms:03}", fmt_value(smp.v))
                };
                w.write_all(line.as_bytes())?;
            }
        }
    }
    w.write_all(b"# EOF\n")?;
    w.flush()
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        // Rust's shortest round-trip form; Go parses it to the same double.
        format!("{v}")
    }
}

/// Backfills `series` into a new Prometheus data dir with promtool, then starts the
/// reference Prometheus 3.5.3 on it. Panics with promtool's output if backfilling fails.
pub fn start_prometheus_with(series: &[Series]) -> Prometheus {
    Prometheus::start_prepared(
        "global:\n  scrape_interval: 1h\n",
        &[
            "--storage.tsdb.retention.time=100y",
            "--query.max-samples=100000000",
            // sort_by_label and double_exponential_smoothing are experimental in 3.5.
            "--enable-feature=promql-experimental-functions",
        ],
        |data_dir| {
            let parent = data_dir.parent().unwrap_or(data_dir);
            let om = parent.join("backfill.om");
            write_openmetrics(series, &om).expect("write OpenMetrics backfill file");
            let out = Command::new(promtool_bin())
                .args(["tsdb", "create-blocks-from", "openmetrics"])
                .arg(&om)
                .arg(data_dir)
                .output()
                .expect("run promtool");
            assert!(
                out.status.success(),
                "promtool create-blocks-from openmetrics failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let _ = std::fs::remove_file(&om);
        },
    )
}

/// Percent-encodes a query parameter value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Formats milliseconds as the API's seconds parameter.
pub fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// A query's outcome in a comparable form.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Value(Value),
    Error { kind: String, msg: String },
}

fn parse_point(p: &serde_json::Value) -> Result<Sample, String> {
    let arr = p.as_array().ok_or("point is not an array")?;
    let t = arr
        .first()
        .and_then(|t| t.as_f64())
        .ok_or("point without timestamp")?;
    let v = arr
        .get(1)
        .and_then(|v| v.as_str())
        .ok_or("point without value string")?;
    let v: f64 = v.parse().map_err(|_| format!("bad value {v:?}"))?;
    Ok(Sample {
        t: (t * 1000.0).round() as i64,
        v,
    })
}

fn parse_metric(m: &serde_json::Value) -> Result<Labels, String> {
    let obj = m.as_object().ok_or("metric is not an object")?;
    let mut v = Vec::new();
    for (k, val) in obj {
        v.push(Label::new(
            k.clone(),
            val.as_str().unwrap_or("").to_string(),
        ));
    }
    if v.is_empty() {
        return Ok(Labels::empty());
    }
    Labels::from_unsorted(v).map_err(|e| e.to_string())
}

/// Parses a `/api/v1/query[_range]` response body.
pub fn parse_api_answer(body: &str) -> Result<Answer, String> {
    let j: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("bad JSON {e}: {body}"))?;
    if j["status"] != "success" {
        let msg = j["error"].as_str().unwrap_or("");
        // The HTTP layer wraps query errors in `invalid parameter "query": `; the engine
        // itself reports the inner message.
        let msg = msg
            .strip_prefix("invalid parameter \"query\": ")
            .unwrap_or(msg);
        return Ok(Answer::Error {
            kind: j["errorType"].as_str().unwrap_or("").to_string(),
            msg: msg.to_string(),
        });
    }
    let data = &j["data"];
    let res = &data["result"];
    let value = match data["resultType"].as_str() {
        Some("scalar") => Value::Scalar(parse_point(res)?),
        Some("string") => {
            let p = parse_point(&serde_json::json!([res[0], "0"]))?;
            Value::String {
                t: p.t,
                v: res[1].as_str().unwrap_or("").to_string(),
            }
        }
        Some("vector") => {
            let mut v = Vec::new();
            for s in res.as_array().ok_or("vector result is not an array")? {
                v.push((parse_metric(&s["metric"])?, parse_point(&s["value"])?));
            }
            Value::Vector(v)
        }
        Some("matrix") => {
            let mut m = Vec::new();
            for s in res.as_array().ok_or("matrix result is not an array")? {
                let pts = s["values"]
                    .as_array()
                    .map(|a| a.iter().map(parse_point).collect::<Result<Vec<_>, _>>())
                    .transpose()?
                    .unwrap_or_default();
                m.push((parse_metric(&s["metric"])?, pts));
            }
            Value::Matrix(m)
        }
        other => return Err(format!("unknown resultType {other:?}")),
    };
    Ok(Answer::Value(value))
}

/// Instant query against Prometheus's HTTP API.
pub fn prom_instant(addr: &str, q: &str, t_ms: i64) -> Result<Answer, String> {
    let path = format!("/api/v1/query?query={}&time={}", urlencode(q), secs(t_ms));
    let (_, body) = http_get(addr, &path).map_err(|e| e.to_string())?;
    parse_api_answer(&body)
}

/// Range query against Prometheus's HTTP API.
pub fn prom_range(addr: &str, q: &str, start: i64, end: i64, step: i64) -> Result<Answer, String> {
    let path = format!(
        "/api/v1/query_range?query={}&start={}&end={}&step={}",
        urlencode(q),
        secs(start),
        secs(end),
        secs(step)
    );
    let (_, body) = http_get(addr, &path).map_err(|e| e.to_string())?;
    parse_api_answer(&body)
}

/// A range query through an Orrery querier with `max_source_resolution=res` (`0s`,
/// `5m`, `1h`, `auto`): what the downsampling tests compare.
pub fn range_at_resolution(
    addr: &str,
    q: &str,
    (start, end, step): (i64, i64, i64),
    res: &str,
) -> Answer {
    let path = format!(
        "/api/v1/query_range?query={}&start={}&end={}&step={}&max_source_resolution={res}",
        urlencode(q),
        secs(start),
        secs(end),
        secs(step)
    );
    let (_, body) = http_get(addr, &path).expect("query orrery");
    parse_api_answer(&body).expect("parse answer")
}

/// Points in a matrix answer (0 for anything else).
pub fn matrix_points(a: &Answer) -> usize {
    match a {
        Answer::Value(Value::Matrix(m)) => m.iter().map(|(_, p)| p.len()).sum(),
        _ => 0,
    }
}

/// Worst relative difference between two matrices that must have the same series and
/// steps (an error says where they differ in shape).
pub fn worst_relative_error(a: &Answer, b: &Answer) -> Result<f64, String> {
    let (Answer::Value(Value::Matrix(x)), Answer::Value(Value::Matrix(y))) = (a, b) else {
        return Err(format!(
            "not two matrices: {} / {}",
            show_answer(a),
            show_answer(b)
        ));
    };
    if x.len() != y.len() {
        return Err(format!("{} series vs {}", x.len(), y.len()));
    }
    let theirs: BTreeMap<&Labels, &Vec<Sample>> = y.iter().map(|(l, s)| (l, s)).collect();
    let mut worst = 0.0f64;
    for (l, pts) in x {
        let o = theirs.get(l).ok_or(format!("{l} missing"))?;
        if pts.len() != o.len() {
            return Err(format!("{l}: {} points vs {}", pts.len(), o.len()));
        }
        for (p, q) in pts.iter().zip(o.iter()) {
            if p.t != q.t {
                return Err(format!("{l}: step {} vs {}", p.t, q.t));
            }
            worst = worst.max((p.v - q.v).abs() / q.v.abs().max(1e-9));
        }
    }
    Ok(worst)
}

/// Equal within `rel` relative error; NaN equals NaN; infinities must match exactly.
pub fn close(a: f64, b: f64, rel: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    if a == b {
        return true;
    }
    (a - b).abs() <= rel * a.abs().max(b.abs())
}

/// Compares our answer with Prometheus's. `ordered`: the query sorts, so order counts.
pub fn compare_answers(ours: &Answer, theirs: &Answer, ordered: bool) -> Result<(), String> {
    const REL: f64 = 1e-9;
    match (ours, theirs) {
        (Answer::Error { kind: k1, msg: m1 }, Answer::Error { kind: k2, msg: m2 }) => {
            if k1 == k2 && m1 == m2 {
                Ok(())
            } else {
                Err(format!(
                    "different errors: ours {k1}: {m1}; prometheus {k2}: {m2}"
                ))
            }
        }
        (Answer::Value(a), Answer::Value(b)) => match (a, b) {
            (Value::Scalar(x), Value::Scalar(y)) => {
                if x.t == y.t && close(x.v, y.v, REL) {
                    Ok(())
                } else {
                    Err("scalar differs".into())
                }
            }
            (Value::String { v: x, .. }, Value::String { v: y, .. }) => {
                if x == y {
                    Ok(())
                } else {
                    Err("string differs".into())
                }
            }
            (Value::Vector(x), Value::Vector(y)) => {
                if x.len() != y.len() {
                    return Err(format!("{} series vs {}", x.len(), y.len()));
                }
                if ordered {
                    // Same values in the same order. Series with equal values may come in
                    // any order: Prometheus sorts with an unstable sort, so its order of
                    // ties is arbitrary. The set comparison below checks the series.
                    for (i, ((la, sa), (lb, sb))) in x.iter().zip(y).enumerate() {
                        if !close(sa.v, sb.v, REL) {
                            return Err(format!(
                                "order differs at {i}: {la} {} vs {lb} {}",
                                sa.v, sb.v
                            ));
                        }
                    }
                }
                let theirs: BTreeMap<&Labels, &Sample> = y.iter().map(|(l, s)| (l, s)).collect();
                if theirs.len() != y.len() {
                    return Err("prometheus returned duplicate series".into());
                }
                let mut seen = std::collections::BTreeSet::new();
                for (l, s) in x {
                    if !seen.insert(l) {
                        return Err(format!("we returned {l} twice"));
                    }
                    let Some(o) = theirs.get(l) else {
                        return Err(format!("series {l} only in ours"));
                    };
                    if s.t != o.t || !close(s.v, o.v, REL) {
                        return Err(format!("{l}: {} @{} vs {} @{}", s.v, s.t, o.v, o.t));
                    }
                }
                Ok(())
            }
            (Value::Matrix(x), Value::Matrix(y)) => {
                if x.len() != y.len() {
                    return Err(format!("{} series vs {}", x.len(), y.len()));
                }
                let theirs: BTreeMap<&Labels, &Vec<Sample>> =
                    y.iter().map(|(l, s)| (l, s)).collect();
                let mut seen = std::collections::BTreeSet::new();
                for (l, pts) in x {
                    if !seen.insert(l) {
                        return Err(format!("we returned {l} twice"));
                    }
                    let Some(o) = theirs.get(l) else {
                        return Err(format!("series {l} only in ours"));
                    };
                    if pts.len() != o.len() {
                        return Err(format!("{l}: {} points vs {}", pts.len(), o.len()));
                    }
                    for (p, q) in pts.iter().zip(o.iter()) {
                        if p.t != q.t || !close(p.v, q.v, REL) {
                            return Err(format!("{l}: {} @{} vs {} @{}", p.v, p.t, q.v, q.t));
                        }
                    }
                }
                Ok(())
            }
            _ => Err("different result types".into()),
        },
        _ => Err("one side failed".into()),
    }
}

/// A short rendering of an answer for mismatch reports.
pub fn show_answer(a: &Answer) -> String {
    let mut s = String::new();
    match a {
        Answer::Error { kind, msg } => {
            let _ = write!(s, "error {kind}: {msg}");
        }
        Answer::Value(Value::Scalar(x)) => {
            let _ = write!(s, "scalar {} @{}", x.v, x.t);
        }
        Answer::Value(Value::String { v, .. }) => {
            let _ = write!(s, "string {v:?}");
        }
        Answer::Value(Value::Vector(v)) => {
            let _ = write!(s, "vector({}) [", v.len());
            for (l, x) in v.iter().take(8) {
                let _ = write!(s, "{l} {} @{}; ", x.v, x.t);
            }
            s.push(']');
        }
        Answer::Value(Value::Matrix(m)) => {
            let _ = write!(s, "matrix({}) [", m.len());
            for (l, p) in m.iter().take(4) {
                let _ = write!(s, "{l} {} points:", p.len());
                for x in p.iter().take(6) {
                    let _ = write!(s, " {}@{}", x.v, x.t);
                }
                s.push_str("; ");
            }
            s.push(']');
        }
        Answer::Value(Value::HistVector(v) | Value::HistMatrix(v)) => {
            let _ = write!(s, "{} series with native histograms", v.len());
        }
    }
    s
}

/// The side-by-side PromQL corpus (shared by every test comparing answers with
/// Prometheus over [`realistic_dataset`]).
/// The query corpus. `{T1}`, `{T2}` are replaced with absolute times (seconds).
pub fn corpus() -> Vec<String> {
    let mut q: Vec<String> = Vec::new();
    let mut add = |s: &str| q.push(s.to_string());
    // Selectors and matchers.
    for s in [
        "up",
        "up == 0",
        "up != 1",
        r#"http_requests_total{job="api"}"#,
        r#"http_requests_total{job=~"api|db", code!="200"}"#,
        r#"http_requests_total{method!~"G.*", job!="cache"}"#,
        r#"{__name__=~"http_request_duration_seconds_(sum|count)", job="db"}"#,
        r#"{job="cache", __name__!~"http.*|node.*"}"#,
        "queue_length",
        "queue_length offset 5m",
        "queue_length offset -10m",
        "temperature_celsius @ {T1}",
        "temperature_celsius offset 1h @ {T2}",
        "http_requests_total[5m]",
        r#"node_cpu_seconds_total{cpu="0",mode="idle"}[2m] offset 1m"#,
        r#"queue_length[3m] @ {T1}"#,
        "nonexistent_metric",
        r#"up{job="nope"}"#,
        r#"{__name__="up", instance=~".*-1:.*"}"#,
        r#"up{instance=~"(?i)API-.*"}"#,
    ] {
        add(s);
    }
    // Counter functions.
    for f in [
        "rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets",
    ] {
        for sel in [
            "http_requests_total",
            r#"node_cpu_seconds_total{mode="user"}"#,
        ] {
            for r in ["1m", "5m"] {
                add(&format!("{f}({sel}[{r}])"));
            }
        }
    }
    // Gauge functions over time.
    for f in [
        "avg_over_time",
        "min_over_time",
        "max_over_time",
        "sum_over_time",
        "count_over_time",
        "last_over_time",
        "present_over_time",
        "stddev_over_time",
        "stdvar_over_time",
    ] {
        for sel in ["temperature_celsius", "queue_length"] {
            for r in ["5m", "30m"] {
                add(&format!("{f}({sel}[{r}])"));
            }
        }
    }
    for s in [
        "quantile_over_time(0.9, temperature_celsius[10m])",
        "quantile_over_time(0, queue_length[10m])",
        "quantile_over_time(1.5, queue_length[10m])",
        "absent_over_time(nonexistent_metric[5m])",
        "absent_over_time(up[5m])",
        r#"absent_over_time(queue_length{job="db"}[5m])"#,
        "predict_linear(process_resident_memory_bytes[30m], 3600)",
        "predict_linear(temperature_celsius[10m], 600)",
        "deriv(process_resident_memory_bytes[10m])",
        "double_exponential_smoothing(temperature_celsius[10m], 0.5, 0.5)",
        "double_exponential_smoothing(queue_length[20m], 0.1, 0.9)",
        "delta(temperature_celsius[15m])",
        "idelta(queue_length[5m])",
        "changes(up[30m])",
        "resets(http_request_duration_seconds_count[1h])",
    ] {
        add(s);
    }
    // Math, clamping, trigonometry.
    for f in [
        "abs", "ceil", "floor", "round", "sqrt", "exp", "ln", "log2", "log10", "sgn", "sin", "cos",
        "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "deg",
        "rad",
    ] {
        add(&format!("{f}(temperature_celsius)"));
    }
    for s in [
        "round(temperature_celsius, 5)",
        "round(temperature_celsius, 0.3)",
        "clamp(temperature_celsius, -1, 20)",
        "clamp(temperature_celsius, 20, -1)",
        "clamp_min(queue_length, 10)",
        "clamp_max(queue_length, 10)",
        "exp(queue_length)",
        "ln(queue_length)",
        "pi()",
        "-temperature_celsius",
        "temperature_celsius % 7",
        "temperature_celsius ^ 2",
        "2 ^ queue_length",
        "temperature_celsius atan2 queue_length",
        "1 / (queue_length - queue_length)",
        "0 / (queue_length - queue_length)",
    ] {
        add(s);
    }
    // Time functions.
    for s in [
        "time()",
        "timestamp(up)",
        "timestamp(queue_length offset 2m)",
        "minute()",
        "hour()",
        "day_of_week()",
        "day_of_month()",
        "day_of_year()",
        "days_in_month()",
        "month()",
        "year()",
        "minute(timestamp(up))",
        "hour(timestamp(queue_length))",
        "time() - timestamp(queue_length)",
    ] {
        add(s);
    }
    // Vector/scalar conversion, absence, labels, sorting.
    for s in [
        "vector(1)",
        "vector(time())",
        "scalar(sum(up))",
        r#"scalar(up{job="api"})"#,
        "sum(up) * scalar(count(up))",
        "absent(nonexistent_metric)",
        r#"absent(nonexistent_metric{job="x", instance=~"a.*"})"#,
        r#"absent(up{job="api"})"#,
        r#"label_replace(up, "host", "$1", "instance", "(.*):.*")"#,
        r#"label_replace(up, "job", "", "job", "api")"#,
        r#"label_replace(up, "nomatch", "$1", "instance", "xyz(.*)")"#,
        r#"label_join(up, "foo", "-", "job", "instance")"#,
        r#"label_join(up, "job", "", "instance")"#,
        "sort(queue_length)",
        "sort_desc(temperature_celsius)",
        r#"sort_by_label(up, "instance")"#,
        r#"sort_by_label_desc(temperature_celsius, "sensor", "instance")"#,
        "sort(rate(http_requests_total[5m]))",
        r#""hello""#,
        "42",
        "-1.5e3 + 2",
    ] {
        add(s);
    }
    // Classic histograms.
    for s in [
        "histogram_quantile(0.9, rate(http_request_duration_seconds_bucket[5m]))",
        "histogram_quantile(0.5, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
        "histogram_quantile(0.99, sum by (job, le) (rate(http_request_duration_seconds_bucket[10m])))",
        "histogram_quantile(0, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
        "histogram_quantile(1, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
        "histogram_quantile(1.5, sum by (le) (increase(http_request_duration_seconds_bucket[5m])))",
        "histogram_quantile(0.75, http_request_duration_seconds_bucket)",
        "rate(http_request_duration_seconds_sum[5m]) / rate(http_request_duration_seconds_count[5m])",
    ] {
        add(s);
    }
    // Aggregations.
    for agg in [
        "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar",
    ] {
        add(&format!("{agg}(rate(http_requests_total[5m]))"));
        add(&format!("{agg} by (job) (rate(http_requests_total[5m]))"));
        add(&format!(
            "{agg} without (instance, method) (temperature_celsius)"
        ));
    }
    for s in [
        "sum by (job, code) (increase(http_requests_total[10m]))",
        "sum by (__name__) (up)",
        "sum without () (up)",
        "sum(up) by ()",
        "count by (mode) (node_cpu_seconds_total)",
        "avg by (mode) (rate(node_cpu_seconds_total[5m]))",
        "max by (job) (process_resident_memory_bytes)",
        "topk(3, rate(http_requests_total[5m]))",
        "bottomk(2, temperature_celsius)",
        "topk by (job) (1, process_resident_memory_bytes)",
        "bottomk without (sensor) (1, temperature_celsius)",
        "topk(5, queue_length)",
        // Ties: `up` is 0 or 1, resets/count_over_time take few values, so which series
        // topk/bottomk keep and their order follow Go's heap and sort.Sort (k above 12
        // reaches pdqsort's partitioning, not only its insertion sort). The inputs are
        // selectors or range-vector functions, whose series order is the storage's in
        // range queries too: over a binary operator or a function of an instant vector,
        // Prometheus's range evaluation hands the series on in Go map order (random per
        // run), so its own tie choice varies from run to run there.
        "topk(3, up)",
        "bottomk(3, up)",
        "topk by (job) (2, up)",
        "topk(13, up)",
        "topk(20, resets(node_cpu_seconds_total[1h]))",
        "bottomk(30, count_over_time(node_cpu_seconds_total[5m]))",
        "bottomk(17, changes(temperature_celsius[10m]))",
        "limitk(4, up)",
        "quantile(0.9, temperature_celsius)",
        "quantile by (job) (0.5, rate(http_requests_total[5m]))",
        "quantile(-0.5, queue_length)",
        r#"count_values("value", up)"#,
        r#"count_values by (job) ("q", queue_length)"#,
        "count(count by (job) (up))",
        "sum(sum by (job) (up))",
        "avg(temperature_celsius) - min(temperature_celsius)",
    ] {
        add(s);
    }
    // Binary operators and vector matching.
    for s in [
        r#"rate(http_requests_total{code="500"}[5m]) / ignoring(code) rate(http_requests_total{code="200"}[5m])"#,
        r#"sum by (job, instance) (rate(http_requests_total[5m])) / on(instance) group_left process_resident_memory_bytes"#,
        r#"process_resident_memory_bytes * on(instance) group_left(sensor) temperature_celsius{sensor="inlet"}"#,
        r#"up * on(job, instance) group_right process_resident_memory_bytes"#,
        "up + on(instance) group_left(job) queue_length",
        "http_requests_total / on(job) up",
        "sum by (job) (up) / on(job) group_right sum by (job, instance) (up)",
        "rate(http_requests_total[5m]) > 10",
        "rate(http_requests_total[5m]) > bool 10",
        "temperature_celsius < 0",
        "temperature_celsius <= bool 0",
        "queue_length == 0",
        "queue_length >= queue_length offset 1m",
        "queue_length > bool queue_length offset 1m",
        "10 < temperature_celsius",
        "1 > bool 2",
        "1 + 2 * 3 - 4 / 5",
        "2 ^ 3 ^ 2",
        "up and queue_length",
        "up and on(instance) queue_length",
        "queue_length or up",
        r#"queue_length or on(job) up{job="cache"}"#,
        "up unless queue_length",
        r#"up unless on(job) queue_length{job="db"}"#,
        "up == bool up",
        "temperature_celsius - on(instance, sensor) temperature_celsius offset 10m",
        r#"temperature_celsius{sensor="inlet"} - ignoring(sensor) temperature_celsius{sensor="outlet"}"#,
        "sum by (instance) (rate(node_cpu_seconds_total[5m])) * 100",
        r#"sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5m])) / sum by (instance) (rate(node_cpu_seconds_total[5m]))"#,
        "(queue_length > 10) + 1",
        "vector(1) + up",
        "time() - 5",
    ] {
        add(s);
    }
    // Subqueries, offset and @.
    for s in [
        "max_over_time(rate(http_requests_total[5m])[30m:1m])",
        "avg_over_time(up[10m:])",
        "rate(sum by (job) (http_requests_total)[10m:30s])",
        "deriv(queue_length[15m:2m] offset 5m)",
        "min_over_time(temperature_celsius[1h:5m] @ {T2})",
        "sum_over_time(queue_length[20m:90s])",
        "max_over_time(sum(rate(http_requests_total[1m]))[1h:])",
        "avg_over_time((temperature_celsius > 10)[30m:1m])",
        "rate(http_requests_total[5m] @ {T1})",
        "up @ start()",
        "up @ end()",
        "sum(rate(http_requests_total[5m] @ end()))",
        "rate(http_requests_total[5m] offset -5m)",
        "increase(http_requests_total[1h] offset 30m)",
        "last_over_time(queue_length[10m] @ {T2} offset 5m)",
        "count_over_time(queue_length[1h:1m])",
    ] {
        add(s);
    }
    // Errors Prometheus reports while evaluating (message and type must match).
    for s in [
        "http_requests_total + on(job) group_left http_requests_total",
        r#"label_replace(up, "job", "x", "instance", ".*")"#,
        "sum(up) by (job) + on() sum(up) by (job)",
        r#"label_replace(up, "foo", "$1", "instance", "(.*")"#,
    ] {
        add(s);
    }
    q
}

/// Queries whose instant result order is set by topk/bottomk: groups in order of first
/// appearance, each group's series by value as Go's `sort.Sort` leaves them (ties
/// included). Compared in order where the input order is Prometheus's (label order).
pub fn is_value_ordered(q: &str) -> bool {
    q.starts_with("topk") || q.starts_with("bottomk")
}

/// Queries whose instant result order is defined (sorting functions, topk/bottomk).
pub fn is_ordered(q: &str) -> bool {
    [
        "sort(",
        "sort_desc(",
        "sort_by_label(",
        "sort_by_label_desc(",
    ]
    .iter()
    .any(|p| q.starts_with(p))
}
