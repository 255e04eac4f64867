//! Soak benchmark (issue #26): a steady remote-write load held for many minutes against
//! `orrery receive` (release binary) and Prometheus 3.5.3 (`--web.enable-remote-write-
//! receiver`), with 2-minute blocks and 10-minute retention so that blocks are cut and
//! deleted all along, watching memory over time rather than over a 30 s burst.
//!
//! ```sh
//! cargo build --release --bin orrery --bin soak_bench
//! target/release/soak_bench [--minutes 30] [--series 50000] [--rate 100000]
//! ```
//!
//! Other flags: `--per-request 2000`, `--conns 2` (per server), `--sample-secs 30`,
//! `--servers orrery,prometheus` (add `orrery-base` with `--base-orrery PATH` to run a
//! second orrery binary, e.g. a build before a change, under the same load),
//! `--sequential` (one server after the other; by default all run at the same time, each
//! with its own generator threads and its own copy of the load, to halve wall time),
//! `--orrery-env K=V` (environment for `orrery`, repeatable), `--svg PATH` (default
//! `docs/soak-rss.svg` under the workspace root).
//!
//! The load is the ingest benchmark's series set and snappy templates
//! (`e2e::bench::rwload`), sent in real time: every `series / rate` seconds one round (one
//! sample per series, stamped with the scheduled wall-clock time), so the servers cut
//! blocks and apply retention as they would in production. Every `--sample-secs` it
//! records per server RssAnon and RssFile (`/proc/PID/status`), CPU (utime+stime) and
//! the samples accepted, and prints them as a table; at the end CPU per sample, WAL bytes
//! per sample and an SVG chart of RSS over time for every server.
//!
//! WAL bytes are bytes written into the WAL's segment files over the run: the directory
//! is polled every second and every segment's largest size seen is summed, including
//! segments deleted since (a segment is deleted only after it is complete, and a complete
//! segment does not grow, so a 1 s poll sees its final size). Checkpoints are counted
//! apart. `/proc/PID/io` `write_bytes` (everything the process caused to be written to
//! disk: WAL, checkpoints, blocks) is printed too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::bench::rwload::{Batch, Conn, cpu_secs, distinct_ports, split_load, status_kb};
use e2e::{Proc, Prometheus, http_get, orrery_release_bin, wait_for, workspace_root};

#[derive(Debug, Clone)]
struct Opts {
    minutes: u64,
    series: usize,
    rate: u64,
    per_request: usize,
    conns: usize,
    sample_secs: u64,
    servers: Vec<String>,
    sequential: bool,
    base_orrery: Option<PathBuf>,
    orrery_env: Vec<(String, String)>,
    svg: PathBuf,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        minutes: 30,
        series: 50_000,
        rate: 100_000,
        per_request: 2000,
        conns: 2,
        sample_secs: 30,
        servers: vec!["orrery".into(), "prometheus".into()],
        sequential: false,
        base_orrery: None,
        orrery_env: Vec::new(),
        svg: workspace_root().join("docs/soak-rss.svg"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let num = |v: Option<&String>, name: &str| -> u64 {
        v.and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name} needs a positive integer"))
    };
    while i < args.len() {
        let a = args[i].as_str();
        let v = args.get(i + 1);
        match a {
            "--minutes" => o.minutes = num(v, a),
            "--series" => o.series = num(v, a) as usize,
            "--rate" => o.rate = num(v, a),
            "--per-request" => o.per_request = num(v, a) as usize,
            "--conns" => o.conns = num(v, a) as usize,
            "--sample-secs" => o.sample_secs = num(v, a),
            "--servers" => {
                o.servers = v
                    .map(|s| s.split(',').map(str::to_string).collect())
                    .unwrap_or_default()
            }
            "--base-orrery" => o.base_orrery = v.map(PathBuf::from),
            "--orrery-env" => {
                let kv = v.and_then(|s| s.split_once('=')).unwrap_or_else(|| {
                    panic!("--orrery-env takes NAME=VALUE");
                });
                o.orrery_env.push((kv.0.to_string(), kv.1.to_string()));
            }
            "--svg" => o.svg = v.map(PathBuf::from).unwrap_or(o.svg),
            "--sequential" => {
                o.sequential = true;
                i += 1;
                continue;
            }
            _ => panic!("unknown argument {a:?} (see the file header for the flags)"),
        }
        i += 2;
    }
    assert!(o.series > 0 && o.rate > 0 && o.conns > 0 && o.sample_secs > 0);
    assert!(!o.servers.is_empty(), "--servers needs at least one server");
    o.per_request = o.per_request.min(o.series);
    o
}

/// Milliseconds between two rounds (one sample for every series).
fn round_ms(o: &Opts) -> u64 {
    (o.series as u64 * 1000 / o.rate).max(1)
}

// ---------------------------------------------------------------------------------------
// Servers

/// A running server under load: what to measure and where to send.
struct Server {
    name: String,
    pid: u32,
    /// Remote-write address and path.
    addr: String,
    path: &'static str,
    data: PathBuf,
    /// Keeps the process (stopped on drop) and its directory alive.
    _keep: Keep,
}

enum Keep {
    Orrery(Proc, tempfile::TempDir),
    Prometheus(Prometheus),
}

impl Server {
    fn stop(self) {
        match self._keep {
            Keep::Orrery(mut p, _dir) => {
                p.terminate(Duration::from_secs(30));
            }
            Keep::Prometheus(mut p) => {
                p.proc.terminate(Duration::from_secs(30));
            }
        }
    }
}

fn start_server(o: &Opts, name: &str) -> Server {
    match name {
        "orrery" | "orrery-base" => {
            let bin = if name == "orrery" {
                orrery_release_bin()
            } else {
                o.base_orrery
                    .clone()
                    .unwrap_or_else(|| panic!("orrery-base needs --base-orrery PATH"))
            };
            let dir = tempfile::tempdir().expect("temp dir");
            let data = dir.path().join("data");
            let ports = distinct_ports(3);
            let (grpc, rw, http) = (ports[0], ports[1], ports[2]);
            let mut cmd = Command::new(bin);
            cmd.arg("receive")
                .arg(format!("--tsdb.path={}", data.display()))
                .arg(format!("--remote-write.address=127.0.0.1:{rw}"))
                .arg(format!("--grpc-address=127.0.0.1:{grpc}"))
                .arg(format!("--http-address=127.0.0.1:{http}"))
                .arg("--tsdb.min-block-duration=2m")
                .arg("--tsdb.max-block-duration=2m")
                .arg("--tsdb.retention=10m")
                .env("RUST_LOG", "warn");
            if name == "orrery" {
                for (k, v) in &o.orrery_env {
                    cmd.env(k, v);
                }
            }
            let p = Proc::spawn(name, cmd, dir.path().join("orrery.log"));
            let haddr = format!("127.0.0.1:{http}");
            let ready = wait_for(Duration::from_secs(60), || {
                matches!(http_get(&haddr, "/-/ready"), Ok((200, _))).then_some(())
            });
            assert!(
                ready.is_some(),
                "{name} did not become ready; log:\n{}",
                p.log_text()
            );
            Server {
                name: name.into(),
                pid: p.pid(),
                addr: format!("127.0.0.1:{rw}"),
                path: "/api/v1/receive",
                data,
                _keep: Keep::Orrery(p, dir),
            }
        }
        "prometheus" => {
            let p = Prometheus::start(
                "global:\n  scrape_interval: 15s\n",
                &[
                    "--web.enable-remote-write-receiver",
                    "--log.level=warn",
                    "--storage.tsdb.min-block-duration=2m",
                    "--storage.tsdb.max-block-duration=2m",
                    "--storage.tsdb.retention.time=10m",
                ],
            );
            Server {
                name: name.into(),
                pid: p.proc.pid(),
                addr: p.addr(),
                path: "/api/v1/write",
                data: p.dir.path().join("data"),
                _keep: Keep::Prometheus(p),
            }
        }
        other => panic!("unknown server {other:?} (orrery, orrery-base, prometheus)"),
    }
}

// ---------------------------------------------------------------------------------------
// Measurements

/// One sample of a server's state.
#[derive(Debug, Clone, Copy)]
struct Row {
    secs: f64,
    anon_kb: u64,
    file_kb: u64,
    cpu: f64,
    accepted: u64,
    wal_bytes: u64,
    blocks: usize,
}

/// Bytes written into WAL segments (and checkpoints) so far: every file's largest size
/// seen, deleted files included.
#[derive(Default)]
struct WalTracker {
    segments: HashMap<PathBuf, u64>,
    checkpoints: HashMap<PathBuf, u64>,
}

impl WalTracker {
    fn poll(&mut self, data: &Path) {
        let mut wal_dirs = Vec::new();
        find_wal_dirs(data, 0, &mut wal_dirs);
        for wal in wal_dirs {
            let Ok(rd) = std::fs::read_dir(&wal) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(m) = e.metadata() else { continue };
                if m.is_file() && !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
                    let v = self.segments.entry(e.path()).or_insert(0);
                    *v = (*v).max(m.len());
                } else if m.is_dir() && name.starts_with("checkpoint.") && !name.ends_with(".tmp") {
                    for f in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                        if let Ok(fm) = f.metadata() {
                            let v = self.checkpoints.entry(f.path()).or_insert(0);
                            *v = (*v).max(fm.len());
                        }
                    }
                }
            }
        }
    }

    fn segment_bytes(&self) -> u64 {
        self.segments.values().sum()
    }

    fn checkpoint_bytes(&self) -> u64 {
        self.checkpoints.values().sum()
    }
}

/// Directories named `wal` up to three levels under `p` (Prometheus's `data/wal`,
/// Orrery's `data/<tenant>/wal`).
fn find_wal_dirs(p: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > 3 {
        return;
    }
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            if e.file_name() == "wal" {
                out.push(e.path());
            } else {
                find_wal_dirs(&e.path(), depth + 1, out);
            }
        }
    }
}

/// Blocks (26-character directories with a meta.json) up to two levels under `data`.
fn blocks_under(data: &Path) -> usize {
    let mut dirs = vec![data.to_path_buf()];
    dirs.extend(
        std::fs::read_dir(data)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir()),
    );
    dirs.iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| e.file_name().len() == 26 && e.path().join("meta.json").is_file())
        .count()
}

/// `write_bytes` of `/proc/PID/io`: bytes the process caused to be sent to disk.
fn write_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Load

/// Counters of one server's load.
#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    non2xx: AtomicU64,
    errors: AtomicU64,
    /// Rounds that started more than one round interval after their scheduled time.
    late_rounds: AtomicU64,
    first_error: std::sync::Mutex<String>,
}

/// Sends round after round on schedule until `stop`: round `r` is due at `start + r ×
/// round_ms` and carries that wall-clock time as its timestamp.
#[allow(clippy::too_many_arguments)]
fn drive_conn(
    addr: &str,
    path: &str,
    batches: &mut [Batch],
    start: Instant,
    t0_ms: i64,
    round: Duration,
    stop: &AtomicBool,
    c: &Counters,
) {
    let mut conn = Conn::new(addr, path, false, None);
    let mut r = 0u64;
    while !stop.load(Ordering::Acquire) {
        let due = start + round * r as u32;
        let now = Instant::now();
        if now < due {
            std::thread::sleep((due - now).min(Duration::from_millis(200)));
            continue;
        }
        if now - due > round {
            c.late_rounds.fetch_add(1, Ordering::Relaxed);
        }
        let t = t0_ms + (round.as_millis() as i64) * r as i64;
        for b in batches.iter_mut() {
            b.patch(r, t);
            match conn.post(&b.body) {
                Ok((s, _)) if (200..300).contains(&s) => {
                    c.accepted
                        .fetch_add(b.series.len() as u64, Ordering::Relaxed);
                }
                Ok((s, text)) => {
                    c.non2xx.fetch_add(1, Ordering::Relaxed);
                    let mut f = c.first_error.lock().unwrap_or_else(|e| e.into_inner());
                    if f.is_empty() {
                        *f = format!("HTTP {s}: {}", text.trim());
                    }
                }
                Err(e) => {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                    let mut f = c.first_error.lock().unwrap_or_else(|e| e.into_inner());
                    if f.is_empty() {
                        *f = format!("I/O: {e}");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        r += 1;
    }
}

/// What one server did over the run.
struct Run {
    name: String,
    rows: Vec<Row>,
    non2xx: u64,
    errors: u64,
    late_rounds: u64,
    first_error: String,
    wal_segment_bytes: u64,
    wal_checkpoint_bytes: u64,
    disk_write_bytes: u64,
}

/// Runs the load against every server in `names` at the same time for `o.minutes`.
fn run_together(o: &Opts, names: &[String]) -> Vec<Run> {
    let servers: Vec<Server> = names.iter().map(|n| start_server(o, n)).collect();
    for s in &servers {
        println!("{}: pid {} on {}", s.name, s.pid, s.addr);
    }
    let mut loads: Vec<Vec<Vec<Batch>>> = servers
        .iter()
        .map(|_| split_load(o.series, o.per_request, o.conns, false).0)
        .collect();
    let counters: Vec<Counters> = servers.iter().map(|_| Counters::default()).collect();
    let stop = AtomicBool::new(false);
    let round = Duration::from_millis(round_ms(o));
    let t0_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut wal: Vec<WalTracker> = servers.iter().map(|_| WalTracker::default()).collect();
    let mut rows: Vec<Vec<Row>> = servers.iter().map(|_| Vec::new()).collect();
    let cpu0: Vec<f64> = servers
        .iter()
        .map(|s| cpu_secs(&s.pid.to_string()))
        .collect();
    let wb0: Vec<u64> = servers.iter().map(|s| write_bytes(s.pid)).collect();
    let start = Instant::now();
    let total = Duration::from_secs(o.minutes * 60);
    print_header(&servers);
    std::thread::scope(|sc| {
        for ((s, load), c) in servers.iter().zip(loads.iter_mut()).zip(&counters) {
            for mine in load.iter_mut() {
                let stop = &stop;
                let (addr, path) = (s.addr.as_str(), s.path);
                sc.spawn(move || drive_conn(addr, path, mine, start, t0_ms, round, stop, c));
            }
        }
        let mut next_sample = Duration::ZERO;
        loop {
            let el = start.elapsed();
            for (w, s) in wal.iter_mut().zip(&servers) {
                w.poll(&s.data);
            }
            if el >= next_sample {
                for (i, s) in servers.iter().enumerate() {
                    let pid = s.pid.to_string();
                    rows[i].push(Row {
                        secs: el.as_secs_f64(),
                        anon_kb: status_kb(&pid, "RssAnon:"),
                        file_kb: status_kb(&pid, "RssFile:"),
                        cpu: cpu_secs(&pid) - cpu0[i],
                        accepted: counters[i].accepted.load(Ordering::Relaxed),
                        wal_bytes: wal[i].segment_bytes(),
                        blocks: blocks_under(&s.data),
                    });
                }
                print_row(&rows);
                next_sample += Duration::from_secs(o.sample_secs);
                if el >= total {
                    break;
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        stop.store(true, Ordering::Release);
    });
    let out = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let c = &counters[i];
            Run {
                name: s.name.clone(),
                rows: std::mem::take(&mut rows[i]),
                non2xx: c.non2xx.load(Ordering::Relaxed),
                errors: c.errors.load(Ordering::Relaxed),
                late_rounds: c.late_rounds.load(Ordering::Relaxed),
                first_error: c
                    .first_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
                wal_segment_bytes: wal[i].segment_bytes(),
                wal_checkpoint_bytes: wal[i].checkpoint_bytes(),
                disk_write_bytes: write_bytes(s.pid).saturating_sub(wb0[i]),
            }
        })
        .collect();
    for s in servers {
        s.stop();
    }
    out
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn print_header(servers: &[Server]) {
    let mut h = String::from("   min");
    for s in servers {
        h.push_str(&format!(
            " | {:>12} anon  file total  blk  Msamples  WAL MB",
            s.name
        ));
    }
    println!("{h}");
}

fn print_row(rows: &[Vec<Row>]) {
    let Some(secs) = rows.first().and_then(|r| r.last()).map(|r| r.secs) else {
        return;
    };
    let mut line = format!("{:>6.1}", secs / 60.0);
    for r in rows.iter().filter_map(|r| r.last()) {
        line.push_str(&format!(
            " | {:>12} {:>5.0} {:>5.0} {:>5.0} {:>4} {:>9.2} {:>7.1}",
            "",
            mib(r.anon_kb),
            mib(r.file_kb),
            mib(r.anon_kb + r.file_kb),
            r.blocks,
            r.accepted as f64 / 1e6,
            r.wal_bytes as f64 / 1e6
        ));
    }
    println!("{line}");
}

// ---------------------------------------------------------------------------------------
// Summary and chart

/// Steady-state figures of one run.
struct Summary {
    samples: u64,
    cpu_ns_per_sample: f64,
    wal_per_sample: f64,
    /// Max of anon + file over the last window (KiB), and of anon alone.
    steady_total_kb: u64,
    steady_anon_kb: u64,
    /// Max of anon + file over the window before the last one (KiB).
    previous_total_kb: u64,
    peak_total_kb: u64,
}

/// The last `window` seconds of a run and the `window` before them; rows in the first
/// `skip` seconds (the first retention cycle) are not part of the earlier window.
fn summarize(r: &Run, window: f64, skip: f64) -> Summary {
    let end = r.rows.last().map_or(0.0, |x| x.secs);
    let total = |x: &Row| x.anon_kb + x.file_kb;
    let max_in = |from: f64, to: f64, f: &dyn Fn(&Row) -> u64| {
        r.rows
            .iter()
            .filter(|x| x.secs >= from && x.secs <= to)
            .map(f)
            .max()
            .unwrap_or(0)
    };
    let last = r.rows.last().copied();
    let samples = last.map_or(0, |x| x.accepted);
    Summary {
        samples,
        cpu_ns_per_sample: last.map_or(0.0, |x| x.cpu) * 1e9 / samples.max(1) as f64,
        wal_per_sample: r.wal_segment_bytes as f64 / samples.max(1) as f64,
        steady_total_kb: max_in(end - window, end, &total),
        steady_anon_kb: max_in(end - window, end, &|x| x.anon_kb),
        previous_total_kb: max_in(skip.max(end - 2.0 * window), end - window, &total),
        peak_total_kb: max_in(0.0, end, &total),
    }
}

/// An SVG line chart of every run's RSS (anon + file solid, anon dashed) over minutes.
fn svg_chart(runs: &[Run], title: &str) -> String {
    let (w, h) = (900.0, 420.0);
    let (left, right, top, bottom) = (60.0, 170.0, 40.0, 45.0);
    let max_min = runs
        .iter()
        .flat_map(|r| r.rows.iter().map(|x| x.secs / 60.0))
        .fold(1.0f64, f64::max);
    let max_mib = runs
        .iter()
        .flat_map(|r| r.rows.iter().map(|x| mib(x.anon_kb + x.file_kb)))
        .fold(10.0f64, f64::max);
    let step_mib = [10.0, 25.0, 50.0, 100.0, 200.0, 250.0, 500.0, 1000.0]
        .into_iter()
        .find(|s| max_mib / s <= 8.0)
        .unwrap_or(2000.0);
    let top_mib = (max_mib / step_mib).ceil() * step_mib;
    let step_min = [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0]
        .into_iter()
        .find(|s| max_min / s <= 12.0)
        .unwrap_or(120.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let x = |m: f64| left + m / max_min * pw;
    let y = |v: f64| top + ph - v / top_mib * ph;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"22\" font-size=\"14\">{title}</text>\n"
    );
    let mut v = 0.0;
    while v <= top_mib + 0.1 {
        s.push_str(&format!(
            "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>\n",
            left + pw,
            y(v),
            y(v),
            left - 6.0,
            y(v) + 4.0
        ));
        v += step_mib;
    }
    let mut m = 0.0;
    while m <= max_min + 0.01 {
        s.push_str(&format!(
            "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{top}\" y2=\"{:.1}\" stroke=\"#eee\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{m:.0}</text>\n",
            x(m),
            x(m),
            top + ph,
            x(m),
            top + ph + 16.0
        ));
        m += step_min;
    }
    s.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">minutes</text>\n\
         <text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" \
         text-anchor=\"middle\">RSS (MiB)</text>\n",
        left + pw / 2.0,
        h - 8.0,
        top + ph / 2.0,
        top + ph / 2.0
    ));
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    for (i, r) in runs.iter().enumerate() {
        let c = colours.get(i).copied().unwrap_or("#333");
        for (dash, f, label) in [
            (
                "",
                (|x: &Row| x.anon_kb + x.file_kb) as fn(&Row) -> u64,
                "anon+file",
            ),
            ("5,4", |x: &Row| x.anon_kb, "anon"),
        ] {
            let pts: Vec<String> = r
                .rows
                .iter()
                .map(|p| format!("{:.1},{:.1}", x(p.secs / 60.0), y(mib(f(p)))))
                .collect();
            s.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" \
                 stroke-dasharray=\"{dash}\" points=\"{}\"/>\n",
                pts.join(" ")
            ));
            let ly = top + 10.0 + (i * 2 + usize::from(!dash.is_empty())) as f64 * 18.0;
            s.push_str(&format!(
                "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"{c}\" \
                 stroke-width=\"2\" stroke-dasharray=\"{dash}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\">{} {label}</text>\n",
                left + pw + 10.0,
                left + pw + 34.0,
                left + pw + 40.0,
                ly + 4.0,
                r.name
            ));
        }
    }
    s.push_str("</svg>\n");
    s
}

fn main() {
    let o = parse_opts();
    println!(
        "soak_bench {o:?}: {} series, one round every {} ms ({} samples/s per server)",
        o.series,
        round_ms(&o),
        o.series as u64 * 1000 / round_ms(&o)
    );
    let load_avg = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", load_avg().trim());
    let mut runs = Vec::new();
    if o.sequential {
        for s in &o.servers {
            runs.extend(run_together(&o, std::slice::from_ref(s)));
        }
    } else {
        runs = run_together(&o, &o.servers);
    }
    println!("load average at end: {}", load_avg().trim());
    let minutes = o.minutes as f64;
    // The last 10 minutes (a third of a short run), against the window before it, after
    // the first retention cycle (10 min of data + a 2 min block).
    let window = (minutes / 3.0).min(10.0) * 60.0;
    let skip = (12.0f64).min(minutes / 3.0) * 60.0;
    let sums: Vec<Summary> = runs.iter().map(|r| summarize(r, window, skip)).collect();
    println!(
        "\nsummary (steady = max over the last {:.0} min; before = max over the {:.0} min before, from minute {:.0}):",
        window / 60.0,
        window / 60.0,
        skip / 60.0
    );
    for (r, s) in runs.iter().zip(&sums) {
        println!(
            "{}: {} samples ({} non-2xx, {} I/O errors, {} late rounds{}); CPU {:.0} ns/sample \
             ({:.3} CPU-s per million); WAL {:.2} bytes/sample written to segments \
             (+ {:.2} checkpoints; all disk writes {:.2} bytes/sample); RSS steady {:.0} MiB \
             (anon {:.0}), before {:.0} MiB, peak {:.0} MiB",
            r.name,
            s.samples,
            r.non2xx,
            r.errors,
            r.late_rounds,
            if r.first_error.is_empty() {
                String::new()
            } else {
                format!("; first error: {}", r.first_error)
            },
            s.cpu_ns_per_sample,
            s.cpu_ns_per_sample / 1e3,
            s.wal_per_sample,
            r.wal_checkpoint_bytes as f64 / s.samples.max(1) as f64,
            r.disk_write_bytes as f64 / s.samples.max(1) as f64,
            mib(s.steady_total_kb),
            mib(s.steady_anon_kb),
            mib(s.previous_total_kb),
            mib(s.peak_total_kb),
        );
    }
    if let Some(pi) = runs.iter().position(|r| r.name == "prometheus") {
        let p = &sums[pi];
        for (r, s) in runs
            .iter()
            .zip(&sums)
            .filter(|(r, _)| r.name != "prometheus")
        {
            println!(
                "ratios {}/prometheus: steady RSS {:.2}× (goal ≤ 0.5), CPU per sample {:.2}× \
                 (goal ≤ 0.12), WAL bytes per sample {:.2}× (goal ≤ 1.0)",
                r.name,
                s.steady_total_kb as f64 / p.steady_total_kb.max(1) as f64,
                s.cpu_ns_per_sample / p.cpu_ns_per_sample.max(1e-9),
                s.wal_per_sample / p.wal_per_sample.max(1e-9),
            );
        }
    }
    let title = format!(
        "RSS under {} series at {} samples/s, 2m blocks, 10m retention{}",
        o.series,
        o.series as u64 * 1000 / round_ms(&o),
        if o.sequential {
            ""
        } else {
            " (servers run concurrently)"
        }
    );
    if let Some(dir) = o.svg.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&o.svg, svg_chart(&runs, &title)) {
        Ok(()) => println!("chart: {}", o.svg.display()),
        Err(e) => println!("chart not written to {}: {e}", o.svg.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(secs: f64, anon: u64, file: u64) -> Row {
        Row {
            secs,
            anon_kb: anon,
            file_kb: file,
            cpu: secs / 10.0,
            accepted: (secs * 1000.0) as u64,
            wal_bytes: 0,
            blocks: 0,
        }
    }

    fn run(rows: Vec<Row>) -> Run {
        Run {
            name: "x".into(),
            rows,
            non2xx: 0,
            errors: 0,
            late_rounds: 0,
            first_error: String::new(),
            wal_segment_bytes: 5000,
            wal_checkpoint_bytes: 0,
            disk_write_bytes: 0,
        }
    }

    #[test]
    fn summary_windows_take_the_max_of_anon_plus_file() {
        let r = run((0..=40)
            .map(|i| {
                row(
                    i as f64 * 30.0,
                    100 + i as u64,
                    if i == 30 { 50 } else { 10 },
                )
            })
            .collect());
        // End at 1200 s; last 10 min = 600..=1200 s (rows 20..=40).
        let s = summarize(&r, 600.0, 300.0);
        assert_eq!(s.steady_total_kb, 130 + 50);
        assert_eq!(s.steady_anon_kb, 140);
        assert_eq!(s.previous_total_kb, 120 + 10);
        assert_eq!(s.peak_total_kb, 180);
        assert_eq!(s.samples, 1_200_000);
        assert!((s.wal_per_sample - 5000.0 / 1_200_000.0).abs() < 1e-12);
    }

    #[test]
    fn wal_tracker_keeps_deleted_segments() {
        let d = tempfile::tempdir().unwrap();
        let wal = d.path().join("t").join("wal");
        std::fs::create_dir_all(&wal).unwrap();
        std::fs::write(wal.join("00000001"), vec![0u8; 100]).unwrap();
        let mut t = WalTracker::default();
        t.poll(d.path());
        std::fs::write(wal.join("00000001"), vec![0u8; 300]).unwrap();
        std::fs::write(wal.join("00000002"), vec![0u8; 50]).unwrap();
        t.poll(d.path());
        std::fs::remove_file(wal.join("00000001")).unwrap();
        std::fs::create_dir_all(wal.join("checkpoint.00000001")).unwrap();
        std::fs::write(wal.join("checkpoint.00000001/00000000"), vec![0u8; 7]).unwrap();
        t.poll(d.path());
        assert_eq!(t.segment_bytes(), 350);
        assert_eq!(t.checkpoint_bytes(), 7);
    }

    #[test]
    fn chart_has_a_line_per_server_and_kind() {
        let mut a = run(vec![row(0.0, 1000, 100), row(60.0, 2000, 200)]);
        a.name = "orrery".into();
        let mut b = run(vec![row(0.0, 3000, 100), row(60.0, 4000, 200)]);
        b.name = "prometheus".into();
        let svg = svg_chart(&[a, b], "t");
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("orrery anon+file") && svg.contains("prometheus anon"));
    }
}
