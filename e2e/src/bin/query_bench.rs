//! Query latency through the whole Orrery read path (`orrery query` → StoreAPI →
//! `orrery receive`) against the reference Prometheus 3.5.3 holding the same data, in the
//! same run, both timed through their HTTP APIs (`/api/v1/query`, `/api/v1/query_range`).
//!
//! ```sh
//! cargo build --release --bin orrery --bin query_bench
//! target/release/query_bench [--series 100000] [--reps 5] [--minutes 60] [--step 60] [--only SUBSTR] [--kind instant|range] [--via receive|sidecar] [--local-read] [--enforce-tenancy]
//! ```
//!
//! `--via sidecar`: no receiver; `orrery query` reads the same Prometheus through an
//! `orrery sidecar` (remote read), so the ratio is the cost of the extra hop; the sidecar's
//! RSS is printed at the end. `--local-read` (with `--via sidecar`): the sidecar reads
//! Prometheus's data directory instead (`--tsdb.local-read`).
//!
//! The data: `--series` series in blocks of 100 per scrape target (`job`, `instance`):
//! 60 `http_requests_total{handler,method,code}` counters, a classic histogram
//! `http_request_duration_seconds` (3 handlers × 10 buckets + `_sum` + `_count`), `up`,
//! `node_info{team,region}`, `process_resident_memory_bytes`, `process_cpu_seconds_total`,
//! `--minutes` of 15s samples ending now. The same snappy remote-write bodies are sent to
//! the receiver and to Prometheus (`--web.enable-remote-write-receiver`); both keep it in
//! their heads. Each query runs once to compare the answers (the receiver's `tenant_id`
//! external label removed), then `--reps` times alternating between the servers; the table
//! shows the median and min wall time per server and the ratio of the medians.

use e2e::bench::{answer, get, median, ms, orrery_for_bench, series_count, timed, truncate};
use e2e::promqlcmp::{compare_answers, secs, urlencode};
use e2e::{Proc, Prometheus, free_port, http_request, wait_for};
use std::process::Command;
use std::time::{Duration, Instant};
use storeapi::wire::remote_write::encode_write_request_snappy;
use storeapi::{Label, Labels, Sample};

const SERIES_PER_TARGET: usize = 100;
const JOBS: usize = 10;
const INTERVAL_MS: i64 = 15_000;
/// Minutes of samples per remote-write request slice (all series advance together).
const SLICE_MINUTES: i64 = 10;
/// Series per remote-write request.
const SERIES_PER_REQUEST: usize = 2_000;

const HANDLERS: [&str; 5] = [
    "/api/v1/query",
    "/api/v1/query_range",
    "/api/v1/series",
    "/api/v1/labels",
    "/-/healthy",
];
const METHODS: [&str; 3] = ["GET", "POST", "PUT"];
const CODES: [&str; 4] = ["200", "404", "500", "503"];
const LE: [&str; 10] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf",
];
const LE_F: [f64; 10] = [
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    f64::INFINITY,
];
const TEAMS: [&str; 7] = [
    "red", "orange", "yellow", "green", "blue", "indigo", "violet",
];
const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];

/// The queries, each run as an instant query at the end of the data and as a range
/// query over the last hour.
const QUERIES: &[&str] = &[
    r#"http_requests_total{job="job-1",code="500"}"#,
    r#"rate(http_requests_total{job="job-1",code="500"}[5m])"#,
    "sum by (job, code) (rate(http_requests_total[5m]))",
    "topk(5, rate(http_requests_total[5m]))",
    "histogram_quantile(0.99, sum by (le, job) (rate(http_request_duration_seconds_bucket[5m])))",
    r#"sum by (team) (rate(http_requests_total{code=~"5.."}[5m]) * on(instance) group_left(team) node_info)"#,
    "count(http_requests_total)",
    "count by (job) (up == 1)",
    r#"sum by (handler) (rate(http_requests_total{handler=~"/api/v1/(query|query_range|series)",method!="PUT",instance=~"10\\.0\\.0\\.1.*"}[5m]))"#,
];

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn f(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_unsorted(pairs.iter().map(|(n, v)| Label::new(*n, *v)).collect())
        .expect("generated label sets are valid")
}

/// How a series' next value is made from the previous one.
#[derive(Clone, Copy)]
enum Kind {
    /// Counter growing by about `rate` per second.
    Counter(f64),
    /// Cumulative histogram bucket: a share of histogram `hist`'s requests per step.
    Bucket {
        share: f64,
        hist: u64,
    },
    Const(f64),
    Gauge,
}

struct GenSeries {
    labels: Labels,
    kind: Kind,
    value: f64,
    phase_ms: i64,
}

fn dataset(n: usize) -> Vec<GenSeries> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let targets = n.div_ceil(SERIES_PER_TARGET);
    let mut out = Vec::with_capacity(targets * SERIES_PER_TARGET);
    for t in 0..targets {
        let job = format!("job-{}", t % JOBS);
        let inst = format!("10.0.{}.{}:9100", t / 250, t % 250);
        let phase_ms = (rng.next() % 15_000) as i64;
        let base = [("job", job.as_str()), ("instance", inst.as_str())];
        let mut push = |extra: &[(&str, &str)], kind: Kind, value: f64| {
            let mut p = base.to_vec();
            p.extend_from_slice(extra);
            out.push(GenSeries {
                labels: labels(&p),
                kind,
                value,
                phase_ms,
            });
        };
        for h in HANDLERS {
            for m in METHODS {
                for c in CODES {
                    let r = match c {
                        "200" => 20.0,
                        "404" => 1.0,
                        _ => 0.2,
                    } * (0.5 + rng.f());
                    push(
                        &[
                            ("__name__", "http_requests_total"),
                            ("handler", h),
                            ("method", m),
                            ("code", c),
                        ],
                        Kind::Counter(r),
                        (rng.next() % 10_000) as f64,
                    );
                }
            }
        }
        for (hi, h) in HANDLERS[..3].iter().enumerate() {
            let hist = (t * 3 + hi) as u64;
            let speed = 0.02 + rng.f() * 0.3;
            for (k, le) in LE.iter().enumerate() {
                // Share of requests at most `le` seconds (exponential latencies).
                let share = if LE_F[k].is_infinite() {
                    1.0
                } else {
                    1.0 - (-LE_F[k] / speed).exp()
                };
                push(
                    &[
                        ("__name__", "http_request_duration_seconds_bucket"),
                        ("handler", h),
                        ("le", le),
                    ],
                    Kind::Bucket { share, hist },
                    0.0,
                );
            }
            push(
                &[
                    ("__name__", "http_request_duration_seconds_sum"),
                    ("handler", h),
                ],
                Kind::Counter(10.0 * speed),
                0.0,
            );
            push(
                &[
                    ("__name__", "http_request_duration_seconds_count"),
                    ("handler", h),
                ],
                Kind::Counter(10.0),
                0.0,
            );
        }
        push(&[("__name__", "up")], Kind::Const(1.0), 0.0);
        push(
            &[
                ("__name__", "node_info"),
                ("team", TEAMS[t % TEAMS.len()]),
                ("region", REGIONS[t % REGIONS.len()]),
            ],
            Kind::Const(1.0),
            0.0,
        );
        push(
            &[("__name__", "process_resident_memory_bytes")],
            Kind::Gauge,
            1e8 * (1.0 + rng.f()),
        );
        push(
            &[("__name__", "process_cpu_seconds_total")],
            Kind::Counter(0.05 + rng.f() * 0.5),
            rng.f() * 1000.0,
        );
    }
    out.truncate(n);
    out
}

/// Builds the remote-write bodies: slices of [`SLICE_MINUTES`] in time order, each split
/// into requests of [`SERIES_PER_REQUEST`] series.
fn bodies(series: &mut [GenSeries], start: i64, steps: usize) -> (Vec<Vec<u8>>, usize) {
    let mut rng = Rng(0x5eed_cafe);
    let per_slice = (SLICE_MINUTES * 60_000 / INTERVAL_MS) as usize;
    let mut out = Vec::new();
    let mut total = 0;
    // The requests a histogram observed in step `k`: the same for all its buckets.
    let draw = |hist: u64, k: usize| {
        let mut r = Rng((hist << 20 | k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        r.next();
        (150.0 * (0.5 + r.f())).round()
    };
    let mut step0 = 0;
    while step0 < steps {
        let step1 = (step0 + per_slice).min(steps);
        for group in series.chunks_mut(SERIES_PER_REQUEST) {
            let mut batch: Vec<(Labels, Vec<Sample>)> = Vec::with_capacity(group.len());
            for s in group.iter_mut() {
                let mut samples = Vec::with_capacity(step1 - step0);
                for k in step0..step1 {
                    let t = start + k as i64 * INTERVAL_MS + s.phase_ms;
                    s.value = match s.kind {
                        Kind::Counter(r) => s.value + (r * 15.0 * (0.5 + rng.f())).round(),
                        Kind::Bucket { share, hist } => s.value + (draw(hist, k) * share).round(),
                        Kind::Const(v) => v,
                        Kind::Gauge => (s.value + (rng.f() - 0.5) * 1e6).round(),
                    };
                    samples.push(Sample { t, v: s.value });
                }
                total += samples.len();
                batch.push((s.labels.clone(), samples));
            }
            out.push(encode_write_request_snappy(
                batch.iter().map(|(l, s)| (l, s.as_slice())),
            ));
        }
        step0 = step1;
    }
    (out, total)
}

/// Posts every body to `url_path` on `addr`. Body `i` holds series group `i % groups`
/// (see [`bodies`]). The first time slice goes from one thread, group after group, so a
/// Prometheus head creates its series in label order: a head-only query hands series to
/// the engine in creation order, and topk/bottomk break ties by input order, so only
/// then are the two answers comparable. The rest goes from two threads; each owns whole
/// groups and sends their slices in time order, so no series' samples arrive out of
/// order (with one group, one thread does it all).
fn load(addr: &str, url_path: &str, bodies: &[Vec<u8>], groups: usize) -> Result<(), String> {
    let groups = groups.max(1);
    let (first, bodies) = bodies.split_at(groups.min(bodies.len()));
    for b in first {
        post(addr, url_path, b)?;
    }
    std::thread::scope(|sc| {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                sc.spawn(move || -> Result<(), String> {
                    let mine = bodies
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| (i % groups) % 2 == w)
                        .map(|(_, b)| b);
                    for b in mine {
                        post(addr, url_path, b)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| "loader thread panicked".to_string())??;
        }
        Ok(())
    })
}

/// One remote-write request; a non-2xx answer is an error.
fn post(addr: &str, url_path: &str, b: &[u8]) -> Result<(), String> {
    let (code, body) = http_request(
        addr,
        "POST",
        url_path,
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ],
        b,
    )
    .map_err(|e| format!("POST {addr}{url_path}: {e}"))?;
    if code / 100 != 2 {
        return Err(format!("POST {addr}{url_path}: {code} {body}"));
    }
    Ok(())
}

struct Args {
    series: usize,
    reps: usize,
    minutes: i64,
    step_s: i64,
    only: Option<String>,
    /// `instant` or `range`: run only that kind.
    kind: Option<String>,
    /// Also time a second querier with `--query.enforce-tenancy` (the cost of the
    /// tenant matcher on every store call; receiver mode).
    enforce_tenancy: bool,
    /// The querier reads Prometheus through an `orrery sidecar` instead of a receiver.
    via_sidecar: bool,
    /// The sidecar reads Prometheus's data directory (`--tsdb.local-read`) instead of
    /// remote read.
    local_read: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        series: 100_000,
        reps: 5,
        minutes: 60,
        step_s: 60,
        only: None,
        kind: None,
        via_sidecar: false,
        local_read: false,
        enforce_tenancy: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let val = argv.get(i + 1).cloned().unwrap_or_default();
        let num = || -> i64 {
            val.parse()
                .unwrap_or_else(|_| panic!("{} wants a number, got {val:?}", argv[i]))
        };
        match argv[i].as_str() {
            "--series" => a.series = num().max(1) as usize,
            "--reps" => a.reps = num().max(1) as usize,
            "--minutes" => a.minutes = num().max(10),
            "--step" => a.step_s = num().max(1),
            "--only" => a.only = Some(val.clone()),
            "--kind" if val == "instant" || val == "range" => a.kind = Some(val.clone()),
            "--via" if val == "receive" || val == "sidecar" => a.via_sidecar = val == "sidecar",
            "--enforce-tenancy" => {
                a.enforce_tenancy = true;
                i += 1;
                continue;
            }
            "--local-read" => {
                a.local_read = true;
                i += 1;
                continue;
            }
            // Read by `orrery_for_bench`.
            "--orrery" => {}
            other => panic!(
                "unknown argument {other:?}; usage: query_bench [--series N] [--reps N] \
                 [--minutes N] [--step SECONDS] [--only SUBSTRING] [--kind instant|range] [--via receive|sidecar] [--local-read] [--enforce-tenancy] [--orrery PATH]"
            ),
        }
        i += 2;
    }
    a
}

fn main() {
    let args = parse_args();
    let orrery = orrery_for_bench();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let steps = (args.minutes * 60_000 / INTERVAL_MS) as usize;
    let start = (now_ms - args.minutes * 60_000) / INTERVAL_MS * INTERVAL_MS;
    let t = Instant::now();
    let mut series = dataset(args.series);
    // Label order, so Prometheus's head creates the series in that order (see [`load`]).
    series.sort_by(|a, b| a.labels.cmp(&b.labels));
    let groups = series.len().div_ceil(SERIES_PER_REQUEST);
    let (bodies, samples) = bodies(&mut series, start, steps);
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    println!(
        "data: {} series, {samples} samples over {} min, {} remote-write requests ({:.1} MB snappy), generated in {:.1}s",
        series.len(),
        args.minutes,
        bodies.len(),
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let targets = args.series.div_ceil(SERIES_PER_TARGET);
    drop(series);

    if args.via_sidecar {
        return run_via_sidecar(
            &args, &orrery, bodies, groups, samples, start, steps, targets,
        );
    }

    // Receiver and querier.
    let rdir = tempfile::tempdir().expect("receiver dir");
    let grpc = format!("127.0.0.1:{}", free_port());
    let rw = format!("127.0.0.1:{}", free_port());
    let rhttp = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(&orrery);
    cmd.arg("receive")
        .arg(format!(
            "--tsdb.path={}",
            rdir.path().join("data").display()
        ))
        .arg(format!("--remote-write.address={rw}"))
        .arg(format!("--grpc-address={grpc}"))
        .arg(format!("--http-address={rhttp}"))
        .arg("--tsdb.wal-fsync=false");
    let receiver = Proc::spawn("receiver", cmd, rdir.path().join("receiver.log"));
    let up = wait_for(Duration::from_secs(60), || {
        std::net::TcpStream::connect(&rw).ok().map(|_| ())
    });
    assert!(
        up.is_some(),
        "receiver did not listen; log:\n{}",
        receiver.log_text()
    );

    let prom = Prometheus::start(
        "global:\n  scrape_interval: 1h\n",
        &[
            "--web.enable-remote-write-receiver",
            "--storage.tsdb.retention.time=100y",
            "--query.max-samples=50000000",
        ],
    );
    let paddr = prom.addr();

    let t = Instant::now();
    load(&paddr, "/api/v1/write", &bodies, groups)
        .unwrap_or_else(|e| panic!("loading Prometheus: {e}"));
    let prom_load = t.elapsed();
    let t = Instant::now();
    load(&rw, "/api/v1/receive", &bodies, groups)
        .unwrap_or_else(|e| panic!("loading the receiver: {e}; log:\n{}", receiver.log_text()));
    let orr_load = t.elapsed();
    drop(bodies);
    println!(
        "load (remote write, 2 client threads): prometheus {:.1}s ({:.0}k samples/s), orrery receive {:.1}s ({:.0}k samples/s)",
        prom_load.as_secs_f64(),
        samples as f64 / prom_load.as_secs_f64() / 1e3,
        orr_load.as_secs_f64(),
        samples as f64 / orr_load.as_secs_f64() / 1e3,
    );

    let qdir = tempfile::tempdir().expect("querier dir");
    let qaddr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(&orrery);
    cmd.arg("query")
        .arg(format!("--http-address={qaddr}"))
        .arg(format!("--grpc-address=127.0.0.1:{}", free_port()))
        .arg(format!("--endpoint={grpc}"));
    let querier = Proc::spawn("querier", cmd, qdir.path().join("querier.log"));
    // The same querier with read-path tenancy enforced: every store call carries the
    // (default) tenant's matcher and `thanos-tenant`.
    let enforced = args.enforce_tenancy.then(|| {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(&orrery);
        cmd.arg("query")
            .arg(format!("--http-address={addr}"))
            .arg(format!("--grpc-address=127.0.0.1:{}", free_port()))
            .arg(format!("--endpoint={grpc}"))
            .arg("--query.enforce-tenancy");
        let p = Proc::spawn("querier-enforced", cmd, qdir.path().join("enforced.log"));
        (p, addr)
    });

    // All see every target.
    let end = start + (steps as i64 - 1) * INTERVAL_MS + INTERVAL_MS;
    let probe = format!(
        "/api/v1/query?query={}&time={}",
        urlencode("count(up)"),
        secs(end)
    );
    let mut probed = vec![("prometheus", paddr.clone()), ("orrery", qaddr.clone())];
    if let Some((_, a)) = &enforced {
        probed.push(("orrery enforced", a.clone()));
    }
    for (name, addr) in &probed {
        let ok = wait_for(Duration::from_secs(60), || {
            match get(addr.as_str(), &probe) {
                Ok((200, body)) if body.contains(&format!("\"{targets}\"")) => Some(()),
                _ => None,
            }
        });
        assert!(
            ok.is_some(),
            "{name} does not see the {targets} targets; querier log:\n{}\nreceiver log:\n{}",
            querier.log_text(),
            receiver.log_text()
        );
    }

    query_table(
        &args,
        &paddr,
        &qaddr,
        enforced.as_ref().map(|(_, a)| a.as_str()),
        start,
        steps,
        "tenant_id",
    );
    drop(querier);
    drop(receiver);
    drop(prom);
}

/// Runs every query on both servers (and on `enforced`, a querier with tenancy
/// enforcement, if given) and prints the latency table; `strip` is the external label
/// the querier's answers carry and Prometheus's do not.
fn query_table(
    args: &Args,
    paddr: &str,
    qaddr: &str,
    enforced: Option<&str>,
    start: i64,
    steps: usize,
    strip: &str,
) {
    let end = start + (steps as i64 - 1) * INTERVAL_MS + INTERVAL_MS;
    let range_start = end - 3_600_000.min(args.minutes * 60_000);
    let step = args.step_s * 1000;
    println!(
        "\ninstant queries at the end of the data; range queries over the last {} min at a {}s step; {} reps, alternating",
        (end - range_start) / 60_000,
        args.step_s,
        args.reps
    );
    println!(
        "{:<7} {:<100} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8}{}  agree",
        "kind",
        "query",
        "orr med",
        "orr min",
        "prom med",
        "prom min",
        "ratio",
        "series",
        if enforced.is_some() {
            format!(" {:>9} {:>8}", "enf med", "enf/orr")
        } else {
            String::new()
        }
    );
    let mut ratios = Vec::new();
    let mut enf_ratios = Vec::new();
    for q in QUERIES {
        if args.only.as_ref().is_some_and(|o| !q.contains(o.as_str())) {
            continue;
        }
        for kind in ["instant", "range"] {
            if args.kind.as_deref().is_some_and(|k| k != kind) {
                continue;
            }
            let path = if kind == "instant" {
                format!("/api/v1/query?query={}&time={}", urlencode(q), secs(end))
            } else {
                format!(
                    "/api/v1/query_range?query={}&start={}&end={}&step={}",
                    urlencode(q),
                    secs(range_start),
                    secs(end),
                    secs(step)
                )
            };
            // Warm-up run on each, comparing the answers.
            let theirs = answer(paddr, &path, &[]);
            let ours = answer(qaddr, &path, &[strip]);
            let mut agree = match compare_answers(&ours, &theirs, false) {
                Ok(()) => "yes".to_string(),
                Err(e) => format!("NO: {}", truncate(&e)),
            };
            if let Some(ea) = enforced {
                let enf = answer(ea, &path, &[strip]);
                if let Err(e) = compare_answers(&enf, &theirs, false) {
                    agree = format!("{agree}; enforced NO: {}", truncate(&e));
                }
            }
            let (mut o, mut p, mut e) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..args.reps {
                o.push(timed(qaddr, &path));
                p.push(timed(paddr, &path));
                if let Some(ea) = enforced {
                    e.push(timed(ea, &path));
                }
            }
            let (om, pm) = (median(&mut o), median(&mut p));
            let ratio = om.as_secs_f64() / pm.as_secs_f64();
            ratios.push(ratio);
            let enf_col = if e.is_empty() {
                String::new()
            } else {
                let em = median(&mut e);
                let r = em.as_secs_f64() / om.as_secs_f64();
                enf_ratios.push(r);
                format!(" {:>9.1} {:>7.2}x", ms(em), r)
            };
            println!(
                "{:<7} {:<100} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>6.2}x {:>8}{enf_col}  {agree}",
                kind,
                q,
                ms(om),
                ms(o[0]),
                ms(pm),
                ms(p[0]),
                ratio,
                series_count(&theirs)
            );
        }
    }
    if !ratios.is_empty() {
        let geo = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
        println!(
            "\nratio = orrery median / prometheus median (below 1: orrery is faster); geometric mean {geo:.2}x"
        );
    }
    if !enf_ratios.is_empty() {
        let geo = (enf_ratios.iter().map(|r| r.ln()).sum::<f64>() / enf_ratios.len() as f64).exp();
        println!(
            "enf/orr = median with --query.enforce-tenancy / median without; geometric mean {geo:.2}x"
        );
    }
}

/// `--via sidecar`: Prometheus (with an external label, as a sidecar requires) loaded by
/// remote write, an `orrery sidecar` in front of it, the querier over the sidecar.
fn run_via_sidecar(
    args: &Args,
    orrery: &std::path::Path,
    bodies: Vec<Vec<u8>>,
    groups: usize,
    samples: usize,
    start: i64,
    steps: usize,
    targets: usize,
) {
    let prom = Prometheus::start(
        "global:\n  scrape_interval: 1h\n  external_labels:\n    cluster: bench\n",
        &[
            "--web.enable-remote-write-receiver",
            "--storage.tsdb.retention.time=100y",
            "--query.max-samples=50000000",
        ],
    );
    let paddr = prom.addr();
    let t = Instant::now();
    load(&paddr, "/api/v1/write", &bodies, groups)
        .unwrap_or_else(|e| panic!("loading Prometheus: {e}"));
    println!(
        "load (remote write, 2 client threads): prometheus {:.1}s ({:.0}k samples/s)",
        t.elapsed().as_secs_f64(),
        samples as f64 / t.elapsed().as_secs_f64() / 1e3,
    );
    drop(bodies);
    let sdir = tempfile::tempdir().expect("sidecar dir");
    let grpc = format!("127.0.0.1:{}", free_port());
    let shttp = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(orrery);
    cmd.arg("sidecar")
        .arg(format!("--prometheus.url=http://{paddr}"))
        .arg(format!(
            "--tsdb.path={}",
            prom.dir.path().join("data").display()
        ))
        .arg(format!("--grpc-address={grpc}"))
        .arg(format!("--http-address={shttp}"));
    if args.local_read {
        cmd.arg("--tsdb.local-read");
    }
    let sidecar = Proc::spawn("sidecar", cmd, sdir.path().join("sidecar.log"));
    let ready = wait_for(Duration::from_secs(60), || {
        matches!(get(&shttp, "/-/ready"), Ok((200, _))).then_some(())
    });
    assert!(
        ready.is_some(),
        "sidecar not ready; log:\n{}",
        sidecar.log_text()
    );
    let qaddr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(orrery);
    cmd.arg("query")
        .arg(format!("--http-address={qaddr}"))
        .arg(format!("--grpc-address=127.0.0.1:{}", free_port()))
        .arg(format!("--endpoint={grpc}"));
    let querier = Proc::spawn("querier", cmd, sdir.path().join("querier.log"));
    let end = start + (steps as i64 - 1) * INTERVAL_MS + INTERVAL_MS;
    let probe = format!(
        "/api/v1/query?query={}&time={}",
        urlencode("count(up)"),
        secs(end)
    );
    let ok = wait_for(Duration::from_secs(60), || match get(&qaddr, &probe) {
        Ok((200, body)) if body.contains(&format!("\"{targets}\"")) => Some(()),
        _ => None,
    });
    assert!(
        ok.is_some(),
        "the querier does not see the {targets} targets through the sidecar; querier log:\n{}\nsidecar log:\n{}",
        querier.log_text(),
        sidecar.log_text()
    );
    query_table(args, &paddr, &qaddr, None, start, steps, "cluster");
    // With RUST_LOG=sidecar=debug: where the sidecar's time went, per Series call.
    for l in sidecar
        .log_text()
        .lines()
        .filter(|l| l.contains("Series answered") || l.contains("remote read"))
    {
        println!("{l}");
    }
    let pid = sidecar.child.id();
    println!(
        "sidecar RSS after the workload: {} KiB (peak {} KiB)",
        e2e::bench::rss_kib(pid).unwrap_or(0),
        e2e::bench::proc_stats(pid).map(|s| s.0).unwrap_or(0)
    );
    let ppid = prom.proc.child.id();
    println!(
        "prometheus RSS after the workload: {} KiB (peak {} KiB)",
        e2e::bench::rss_kib(ppid).unwrap_or(0),
        e2e::bench::proc_stats(ppid).map(|s| s.0).unwrap_or(0)
    );
    drop(querier);
    drop(sidecar);
    drop(prom);
}
