//! Remote-write ingest benchmark: the same load into `orrery receive` (release binary) and
//! into the reference Prometheus 3.5.3 (`--web.enable-remote-write-receiver`), one after
//! the other in the same run, on 127.0.0.1.
//!
//! ```sh
//! cargo build --release --bin orrery
//! cargo run --release -p e2e --bin ingest_bench [-- --series 100000 --per-request 2000 --conns 4 --seconds 30]
//! ```
//!
//! Other flags: `--step-secs 15` (sample interval), `--block-mins 30` (block duration
//! given to both servers), `--servers orrery,prometheus` (or `orrery-nofsync` for orrery
//! with `--tsdb.wal-fsync=false`, `orrery-nowalz` for orrery with
//! `--tsdb.wal-compression=false`; `ring-rf1`/`ring-rf3` for three router+ingestors on one
//! hashring with replication factor 1 or 3, load sent to the first, CPU and peak RSS summed
//! over the three; its bytes/sample are the first node's share; `orrery-s3` for orrery
//! shipping its blocks to a local `moto_server` S3 bucket, see below; `orrery-tls` for orrery
//! with remote write over TLS 1.3, certificates made by the bench, keep-alive connections
//! as Prometheus's), `--no-blocks` (skip
//! the bytes-per-sample phase), `--protocol v1,v2` (run every server with remote write
//! 1.0, 2.0 or both — the same series and samples; 2.0 runs are named `<server>-rw2` and
//! compared with the 1.0 run of the same server). `--v2-metadata`: every 2.0 series
//! carries its family's metadata (type, help, unit), as Prometheus 3.5.3 sends it with
//! `--enable-feature=metadata-wal-records`.
//!
//! Shipping cost: `--servers orrery,orrery-s3 --block-mins 2` runs the same load into
//! orrery without and with a bucket (a real `moto_server` from the cache, started per
//! run); with short blocks several blocks ship during the timed phase. For `orrery-s3`
//! it also prints the upload throughput from the receiver's own metrics: bytes in the
//! bucket over the summed duration of the upload operations (MB/s), and blocks shipped
//! per minute of upload time.
//!
//! Per server it prints samples/s accepted (2xx only; non-2xx counted apart), peak RSS
//! (VmHWM), server CPU seconds per million samples (utime+stime from /proc), and bytes
//! per sample of the first block cut from the head (index + chunks). After the timed
//! phase the load goes on (untimed) until the head spans 1.5 block durations, so both
//! servers cut a block of the same shape: `block-mins / step-secs` samples per series.
//!
//! The load generator is cheap: every request body is a snappy template built once; per
//! request only the 15 bytes of each series' sample (value, timestamp) are patched in
//! place. The templates use a fixed-width sample encoding, and the snappy stream of each
//! template never copies from sample bytes, so patching keeps it valid. Each connection
//! owns a fixed set of series (as Prometheus's remote-write shards do), so samples of a
//! series arrive in order; connections stay within two rounds of each other.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use e2e::bench::rwload::{
    Batch, Conn, cpu_secs, decode_template, distinct_ports, split_load, status_kb,
};
use e2e::{Proc, Prometheus, free_port, http_get, orrery_release_bin, wait_for};

// ---------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone)]
struct Opts {
    series: usize,
    per_request: usize,
    conns: usize,
    seconds: u64,
    step_secs: i64,
    block_mins: i64,
    servers: Vec<String>,
    blocks: bool,
    /// Remote-write protocols to run every server with (`false` = 1.0, `true` = 2.0).
    protocols: Vec<bool>,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        series: 100_000,
        per_request: 2000,
        conns: 4,
        seconds: 30,
        step_secs: 15,
        block_mins: 30,
        servers: vec!["orrery".into(), "prometheus".into()],
        blocks: true,
        protocols: vec![false],
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let num = |v: Option<&String>, name: &str| -> u64 {
        v.and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name} needs a positive integer"))
    };
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "--series" => o.series = num(args.get(i + 1), a) as usize,
            "--per-request" => o.per_request = num(args.get(i + 1), a) as usize,
            "--conns" => o.conns = num(args.get(i + 1), a) as usize,
            "--seconds" => o.seconds = num(args.get(i + 1), a),
            "--step-secs" => o.step_secs = num(args.get(i + 1), a) as i64,
            "--block-mins" => o.block_mins = num(args.get(i + 1), a) as i64,
            "--servers" => {
                o.servers = args
                    .get(i + 1)
                    .map(|s| s.split(',').map(str::to_string).collect())
                    .unwrap_or_default()
            }
            "--protocol" => {
                o.protocols = args
                    .get(i + 1)
                    .map(|s| {
                        s.split(',')
                            .map(|p| match p {
                                "v1" => false,
                                "v2" => true,
                                _ => panic!("--protocol takes v1, v2 or v1,v2"),
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            }
            "--v2-metadata" => {
                e2e::bench::rwload::V2_METADATA.store(true, std::sync::atomic::Ordering::Relaxed);
                i += 1;
                continue;
            }
            "--no-blocks" => {
                o.blocks = false;
                i += 1;
                continue;
            }
            _ => panic!("unknown argument {a:?} (see the file header for the flags)"),
        }
        i += 2;
    }
    assert!(o.series > 0 && o.per_request > 0 && o.conns > 0 && o.step_secs > 0);
    assert!(!o.protocols.is_empty(), "--protocol needs v1, v2 or v1,v2");
    o.per_request = o.per_request.min(o.series);
    o
}

/// The TLS client config of the server being driven (`orrery-tls`); `None`: plaintext.
/// Set around one server's run, read by every [`Conn`] it opens.
static TLS_CLIENT: std::sync::Mutex<Option<Arc<netsec::tokio_rustls::rustls::ClientConfig>>> =
    std::sync::Mutex::new(None);

// ---------------------------------------------------------------------------------------
// Blocks on disk

struct BlockSize {
    blocks: usize,
    samples: u64,
    bytes: u64,
    chunk_bytes: u64,
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Blocks (dirs with a meta.json) up to two levels under `data`.
fn blocks_under(data: &Path) -> BlockSize {
    let mut out = BlockSize {
        blocks: 0,
        samples: 0,
        bytes: 0,
        chunk_bytes: 0,
    };
    let mut dirs = vec![data.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(data) {
        dirs.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() != 26 || name.contains('.') {
                continue;
            }
            let Ok(meta) = std::fs::read_to_string(p.join("meta.json")) else {
                continue;
            };
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&meta) else {
                continue;
            };
            let samples = json["stats"]["numSamples"].as_u64().unwrap_or(0);
            let index = std::fs::metadata(p.join("index"))
                .map(|m| m.len())
                .unwrap_or(0);
            let chunks = dir_size(&p.join("chunks"));
            out.blocks += 1;
            out.samples += samples;
            out.bytes += index + chunks;
            out.chunk_bytes += chunks;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Driving one server

struct Result1 {
    server: String,
    secs: f64,
    accepted: u64,
    non2xx: u64,
    errors: u64,
    first_error: String,
    cpu: f64,
    hwm_kb: u64,
    /// RSS (`VmRSS`, anon + file) at the end of the timed phase, and the series sent.
    rss_end_kb: u64,
    series: usize,
    /// VmHWM when the first block appeared (both servers then hold the same data).
    hwm_at_block_kb: Option<u64>,
    /// Rounds sent when the first block appeared.
    rounds_at_block: u64,
    client_cpu: f64,
    block: Option<BlockSize>,
    /// Bytes in the WAL directories at the end of the timed phase, when no block had been
    /// cut yet (a cut truncates the WAL, and the figure would mean nothing).
    wal_bytes: Option<u64>,
}

struct Shared {
    accepted: AtomicU64,
    non2xx: AtomicU64,
    errors: AtomicU64,
    rounds: Vec<AtomicU64>,
    /// Connections stop before starting this round.
    stop_round: AtomicU64,
    first_error: std::sync::Mutex<String>,
    failed: AtomicBool,
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
fn drive(
    o: &Opts,
    name: &str,
    addr: &str,
    path: &str,
    pids: &[u32],
    data: &Path,
    batches: &mut [Vec<Batch>],
    t0: i64,
) -> Result1 {
    let step = o.step_secs * 1000;
    let block_ms = o.block_mins * 60_000;
    let needed_rounds = (block_ms * 3 / 2 / step + 4) as u64;
    let shared = Arc::new(Shared {
        accepted: AtomicU64::new(0),
        non2xx: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        rounds: (0..o.conns).map(|_| AtomicU64::new(0)).collect(),
        stop_round: AtomicU64::new(u64::MAX),
        first_error: std::sync::Mutex::new(String::new()),
        failed: AtomicBool::new(false),
    });
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    // A ring is measured as a whole: CPU and peak RSS summed over its processes.
    let cpu_all = || pids.iter().map(|p| cpu_secs(p)).sum::<f64>();
    let hwm_all = || pids.iter().map(|p| status_kb(p, "VmHWM:")).sum::<u64>();
    let cpu0 = cpu_all();
    let client0 = cpu_secs("self");
    let start = Instant::now();
    // (VmHWM, rounds sent) when the first block shows up on disk.
    let mut at_block: Option<(u64, u64)> = None;
    let look = |at: &mut Option<(u64, u64)>| {
        if blocks_under(data).blocks > 0 {
            let hwm = hwm_all();
            let r = shared
                .rounds
                .iter()
                .map(|r| r.load(Ordering::Acquire))
                .filter(|&r| r != u64::MAX)
                .max()
                .unwrap_or(needed_rounds);
            *at = Some((hwm, r));
        }
    };
    let (accepted, non2xx, errors, secs, cpu1, client1, hwm, rss_end, wal_bytes) =
        std::thread::scope(|sc| {
            for (c, my) in batches.iter_mut().enumerate() {
                let shared = shared.clone();
                let mut conn = Conn::new(
                    addr,
                    path,
                    my.first().is_some_and(|b| b.v2),
                    TLS_CLIENT.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                );
                sc.spawn(move || {
                    let mut round = 0u64;
                    loop {
                        // Lockstep: at most two rounds ahead of the slowest connection.
                        loop {
                            let slowest = shared
                                .rounds
                                .iter()
                                .map(|r| r.load(Ordering::Acquire))
                                .min()
                                .unwrap_or(0);
                            if round <= slowest + 2 {
                                break;
                            }
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        if round >= shared.stop_round.load(Ordering::Acquire)
                            || shared.failed.load(Ordering::Acquire)
                        {
                            break;
                        }
                        let t = t0 + round as i64 * step;
                        for b in my.iter_mut() {
                            b.patch(round, t);
                            match conn.post(&b.body) {
                                Ok((s, _)) if (200..300).contains(&s) => {
                                    shared
                                        .accepted
                                        .fetch_add(b.series.len() as u64, Ordering::Relaxed);
                                }
                                Ok((s, text)) => {
                                    shared.non2xx.fetch_add(1, Ordering::Relaxed);
                                    let mut f = shared
                                        .first_error
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner());
                                    if f.is_empty() {
                                        *f = format!("HTTP {s}: {}", text.trim());
                                    }
                                }
                                Err(e) => {
                                    let n = shared.errors.fetch_add(1, Ordering::Relaxed);
                                    let mut f = shared
                                        .first_error
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner());
                                    if f.is_empty() {
                                        *f = format!("I/O: {e}");
                                    }
                                    if n > 100 {
                                        shared.failed.store(true, Ordering::Release);
                                    }
                                }
                            }
                        }
                        round += 1;
                        shared.rounds[c].store(round, Ordering::Release);
                    }
                    // Done: let the others pass the lockstep check.
                    shared.rounds[c].store(u64::MAX, Ordering::Release);
                });
            }
            let deadline = start + Duration::from_secs(o.seconds);
            let mut last_look = Instant::now();
            while Instant::now() < deadline && !shared.failed.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(20));
                if o.blocks
                    && at_block.is_none()
                    && last_look.elapsed() > Duration::from_millis(200)
                {
                    last_look = Instant::now();
                    look(&mut at_block);
                }
            }
            let secs = start.elapsed().as_secs_f64();
            let accepted = shared.accepted.load(Ordering::Acquire);
            let non2xx = shared.non2xx.load(Ordering::Acquire);
            let errors = shared.errors.load(Ordering::Acquire);
            let cpu1 = cpu_all();
            let client1 = cpu_secs("self");
            let hwm = hwm_all();
            let rss_end: u64 = pids.iter().map(|p| status_kb(p, "VmRSS:")).sum();
            let wal = (blocks_under(data).blocks == 0).then(|| wal_bytes_under(data));
            let max_round = shared
                .rounds
                .iter()
                .map(|r| r.load(Ordering::Acquire))
                .filter(|&r| r != u64::MAX)
                .max()
                .unwrap_or(0);
            let stop = if o.blocks {
                needed_rounds.max(max_round + 1)
            } else {
                0
            };
            println!(
                "  {name}: timed phase done after {secs:.1}s at round {max_round}; {}",
                if o.blocks && stop > max_round + 1 {
                    format!("sending (untimed) up to round {stop} so the head spans 1.5 blocks")
                } else {
                    "finishing the current round".to_string()
                }
            );
            shared.stop_round.store(stop, Ordering::Release);
            if o.blocks {
                let give_up = Instant::now() + Duration::from_secs(600);
                while at_block.is_none() && Instant::now() < give_up {
                    std::thread::sleep(Duration::from_millis(200));
                    look(&mut at_block);
                }
            }
            (
                accepted, non2xx, errors, secs, cpu1, client1, hwm, rss_end, wal,
            )
        });
    let mut block = None;
    if o.blocks {
        if at_block.is_some() {
            // Let a block that is being written finish (its meta.json is written last,
            // after a rename, in both servers; one more look for a second block).
            std::thread::sleep(Duration::from_secs(2));
            block = Some(blocks_under(data));
        } else {
            println!("  {name}: no block was cut within 600s");
        }
    }
    let first_error = shared
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Result1 {
        server: name.to_string(),
        secs,
        accepted,
        non2xx,
        errors,
        first_error,
        cpu: cpu1 - cpu0,
        hwm_kb: hwm,
        rss_end_kb: rss_end,
        series: o.series,
        hwm_at_block_kb: at_block.map(|(h, _)| h),
        rounds_at_block: at_block.map(|(_, r)| r).unwrap_or(0),
        client_cpu: client1 - client0,
        block,
        wal_bytes,
    }
}

/// Bytes of every file under a directory named `wal` below `data` (Prometheus's
/// `data/wal`, Orrery's `<tenant>/wal`), checkpoints included.
fn wal_bytes_under(data: &Path) -> u64 {
    fn sum(p: &Path, in_wal: bool) -> u64 {
        let Ok(rd) = std::fs::read_dir(p) else {
            return 0;
        };
        let mut n = 0;
        for e in rd.flatten() {
            let path = e.path();
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                n += sum(&path, in_wal || e.file_name() == "wal");
            } else if in_wal {
                n += m.len();
            }
        }
        n
    }
    sum(data, false)
}

fn start_orrery(
    dir: &Path,
    block_mins: i64,
    fsync: bool,
    no_wal_compression: bool,
) -> (Proc, String, PathBuf) {
    let mut ports = distinct_ports(3).into_iter();
    let mut next = || ports.next().unwrap_or_else(free_port);
    let extra: Vec<String> = if no_wal_compression {
        vec!["--tsdb.wal-compression=false".into()]
    } else {
        vec![]
    };
    start_orrery_node(dir, block_mins, fsync, [next(), next(), next()], &extra)
}

/// Three router+ingestors on loopback sharing one hashring file with replication factor
/// `rf`; the load goes to the first. Returns the processes, its address and its data dir.
fn start_ring(dir: &Path, block_mins: i64, rf: u64) -> (Vec<Proc>, String, PathBuf) {
    let ports = distinct_ports(9);
    let grpc: Vec<u16> = ports[..3].to_vec();
    let ring = dir.join("hashring.json");
    let eps: Vec<String> = grpc.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    std::fs::write(
        &ring,
        format!(
            r#"[{{"hashring":"default","endpoints":[{}]}}]"#,
            eps.join(",")
        ),
    )
    .expect("write hashring file");
    let mut procs = Vec::new();
    let mut entry = None;
    for (i, port) in grpc.iter().enumerate() {
        let extra = [
            format!("--receive.hashrings-file={}", ring.display()),
            format!("--receive.replication-factor={rf}"),
            format!("--receive.local-endpoint=127.0.0.1:{port}"),
            format!("--label=receive_replica=\"{i}\""),
        ];
        let own = [*port, ports[3 + 2 * i], ports[4 + 2 * i]];
        let (p, addr, data) = start_orrery_node(
            &dir.join(format!("node-{i}")),
            block_mins,
            true,
            own,
            &extra,
        );
        if i == 0 {
            entry = Some((addr, data));
        }
        procs.push(p);
    }
    let (addr, data) = entry.expect("three nodes");
    (procs, addr, data)
}

/// One receiver in `dir` with `extra` flags, driven by the load; returns the process
/// (still running, for the caller's own checks), its HTTP port and the result.
fn drive_node(
    o: &Opts,
    server: &str,
    dir: &Path,
    extra: &[String],
    batches: &mut [Vec<Batch>],
    t0: i64,
) -> (Proc, u16, Result1) {
    let ports = distinct_ports(3);
    let (p, addr, data) = start_orrery_node(
        &dir.join("node"),
        o.block_mins,
        true,
        [ports[0], ports[1], ports[2]],
        extra,
    );
    println!("{server}: pid {} on {addr}", p.pid());
    let r = drive(
        o,
        server,
        &addr,
        "/api/v1/receive",
        &[p.pid()],
        &data,
        batches,
        t0,
    );
    (p, ports[2], r)
}

fn start_orrery_node(
    dir: &Path,
    block_mins: i64,
    fsync: bool,
    [grpc, rw, http]: [u16; 3],
    extra: &[String],
) -> (Proc, String, PathBuf) {
    let data = dir.join("data");
    let mut cmd = Command::new(orrery_release_bin());
    cmd.arg("receive")
        .arg(format!("--tsdb.path={}", data.display()))
        .arg(format!("--remote-write.address=127.0.0.1:{rw}"))
        .arg(format!("--grpc-address=127.0.0.1:{grpc}"))
        .arg(format!("--http-address=127.0.0.1:{http}"))
        .arg(format!("--tsdb.min-block-duration={block_mins}m"))
        .arg(format!("--tsdb.max-block-duration={block_mins}m"))
        .arg("--tsdb.maintenance-interval=2s")
        .arg(format!("--tsdb.wal-fsync={fsync}"))
        .args(extra)
        .env("RUST_LOG", "warn");
    std::fs::create_dir_all(dir).expect("node dir");
    let p = Proc::spawn("orrery", cmd, dir.join("orrery.log"));
    let haddr = format!("127.0.0.1:{http}");
    let ready = wait_for(Duration::from_secs(60), || {
        matches!(http_get(&haddr, "/-/ready"), Ok((200, _))).then_some(())
    });
    assert!(
        ready.is_some(),
        "orrery receive did not become ready; log:\n{}",
        p.log_text()
    );
    (p, format!("127.0.0.1:{rw}"), data)
}

fn build_load(o: &Opts, v2: bool) -> Vec<Vec<Batch>> {
    let started = Instant::now();
    let (per_conn, k) = split_load(o.series, o.per_request, o.conns, v2);
    // Check one template decodes to what it should, after a patch.
    let mut probe = Batch::build(0..o.per_request.min(o.series), v2);
    probe.patch(0, 1_700_000_000_000);
    let raw = storeapi::wire::remote_write::snappy_decompress(&probe.body, 1 << 30)
        .expect("template is valid snappy");
    let got = decode_template(&raw, v2);
    assert_eq!(got.len(), probe.series.len());
    for (n, (labels, samples)) in got.iter().enumerate() {
        assert_eq!(labels.len(), 9);
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].t, 1_700_000_000_000);
        assert_eq!(samples[0].v.to_bits(), probe.values[n].to_bits());
    }
    let bytes: usize = per_conn.iter().flatten().map(|b| b.body.len()).sum();
    println!(
        "load ({}): {} series × 9 labels, {} requests per round ({} samples each), {} connections; \
         templates {:.1} MiB compressed ({:.1} KiB per request, snappy ratio {:.1}); built in {:.1}s",
        if v2 {
            "remote write 2.0"
        } else {
            "remote write 1.0"
        },
        o.series,
        k,
        o.per_request,
        o.conns,
        bytes as f64 / (1 << 20) as f64,
        probe.body.len() as f64 / 1024.0,
        raw.len() as f64 / probe.body.len() as f64,
        started.elapsed().as_secs_f64()
    );
    if k < o.conns {
        println!(
            "note: only {k} requests per round, so only {k} of {} connections are busy",
            o.conns
        );
    }
    per_conn
}

fn report(r: &Result1) {
    let rate = r.accepted as f64 / r.secs;
    println!(
        "{}: {:.0} samples/s accepted ({} samples in {:.1}s; {} non-2xx, {} I/O errors), \
         CPU {:.2} s per million samples ({:.1} s total, {:.2} cores), peak RSS {:.0} MiB \
         over the timed phase, client CPU {:.2} s per million samples",
        r.server,
        rate,
        r.accepted,
        r.secs,
        r.non2xx,
        r.errors,
        r.cpu / (r.accepted.max(1) as f64 / 1e6),
        r.cpu,
        r.cpu / r.secs,
        r.hwm_kb as f64 / 1024.0,
        r.client_cpu / (r.accepted.max(1) as f64 / 1e6),
    );
    if !r.first_error.is_empty() {
        println!("  first error: {}", r.first_error);
    }
    println!(
        "  per series ({}): peak RSS {:.3} KiB, RSS at the end of the timed phase {:.0} MiB = {:.3} KiB",
        r.series,
        r.hwm_kb as f64 / r.series.max(1) as f64,
        r.rss_end_kb as f64 / 1024.0,
        r.rss_end_kb as f64 / r.series.max(1) as f64,
    );
    if let Some(h) = r.hwm_at_block_kb {
        println!(
            "  peak RSS {:.0} MiB until the first block was cut (at about round {}, the same data for every server)",
            h as f64 / 1024.0,
            r.rounds_at_block
        );
    }
    match r.wal_bytes {
        Some(w) => println!(
            "  WAL: {w} bytes after the timed phase, {:.2} bytes per accepted sample",
            w as f64 / r.accepted.max(1) as f64
        ),
        None => println!(
            "  WAL: not measured (a block was cut during the timed phase; raise --block-mins)"
        ),
    }
    if let Some(b) = &r.block {
        println!(
            "  {} block(s): {} samples, {:.3} bytes/sample (index + chunks; chunks alone {:.3})",
            b.blocks,
            b.samples,
            b.bytes as f64 / b.samples.max(1) as f64,
            b.chunk_bytes as f64 / b.samples.max(1) as f64
        );
    }
}

fn main() {
    let o = parse_opts();
    println!("ingest_bench {o:?}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let block_ms = o.block_mins * 60_000;
    // Aligned to the block duration, a day back: the first block is a full one.
    let t0 = (now_ms - 86_400_000) / block_ms * block_ms;
    let mut results = Vec::new();
    let runs: Vec<(bool, String)> = o
        .protocols
        .iter()
        .flat_map(|&v2| o.servers.iter().map(move |s| (v2, s.clone())))
        .collect();
    let mut loads: HashMap<bool, Vec<Vec<Batch>>> = HashMap::new();
    for (v2, server) in runs {
        let batches = loads.entry(v2).or_insert_with(|| build_load(&o, v2));
        // Fresh values per server: both get the exact same samples.
        for b in batches.iter_mut().flatten() {
            b.values = b.series.iter().map(|&i| 1.0 + (i % 1000) as f64).collect();
        }
        let r = match server.as_str() {
            "orrery-s3" => {
                let dir = tempfile::tempdir().expect("temp dir");
                let moto = e2e::s3::MotoServer::start(dir.path());
                moto.create_bucket("bench");
                let cfg = format!(
                    "--objstore.config=type: S3\nconfig:\n  bucket: bench\n  endpoint: {}\n  insecure: true\n  access_key: a\n  secret_key: b\n",
                    moto.addr()
                );
                println!("{server}: bucket on {}", moto.addr());
                let (mut p, http_port, r) =
                    drive_node(&o, &server, dir.path(), &[cfg], batches, t0);
                let metrics = http_get(&format!("127.0.0.1:{http_port}"), "/metrics")
                    .map(|(_, b)| b)
                    .unwrap_or_default();
                let sum = |name: &str, filter: &str| -> f64 {
                    metrics
                        .lines()
                        .filter(|l| l.starts_with(name) && l.contains(filter))
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        .sum()
                };
                let blocks = sum("thanos_shipper_uploads_total", "");
                let upload_secs = sum(
                    "thanos_objstore_bucket_operation_duration_seconds_sum",
                    "operation=\"upload\"",
                );
                let bytes: u64 = moto.list("bench").iter().map(|(_, n)| n).sum();
                println!(
                    "  shipped {blocks} block(s), {:.1} MB in the bucket; upload operations took {upload_secs:.2} s: \
                     {:.1} MB/s, {:.0} blocks/min of upload time",
                    bytes as f64 / 1e6,
                    bytes as f64 / 1e6 / upload_secs.max(1e-9),
                    blocks / (upload_secs.max(1e-9) / 60.0)
                );
                p.terminate(Duration::from_secs(30));
                r
            }
            "orrery-tls" => {
                // Remote write over TLS 1.3 (certificates made here), the rest as `orrery`.
                let dir = tempfile::tempdir().expect("temp dir");
                let ca = netsec::testing::Ca::new("ingest_bench CA");
                let leaf = ca.leaf("orrery", &["127.0.0.1"], 1);
                let crt = dir.path().join("tls.crt");
                let key = dir.path().join("tls.key");
                let ca_file = dir.path().join("ca.crt");
                std::fs::write(&crt, &leaf.cert_pem).expect("write cert");
                std::fs::write(&key, &leaf.key_pem).expect("write key");
                std::fs::write(&ca_file, ca.pem()).expect("write CA");
                let client = netsec::ClientOptions {
                    secure: true,
                    ca: Some(ca_file.clone()),
                    ..netsec::ClientOptions::default()
                }
                .client("ingest_bench")
                .expect("TLS client");
                let mut cfg = (*client.current_config().expect("TLS config")).clone();
                cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
                *TLS_CLIENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(cfg));
                let tls_flags = [
                    format!("--remote-write.server-tls-cert={}", crt.display()),
                    format!("--remote-write.server-tls-key={}", key.display()),
                ];
                let (mut p, _, r) = drive_node(&o, &server, dir.path(), &tls_flags, batches, t0);
                *TLS_CLIENT.lock().unwrap_or_else(|e| e.into_inner()) = None;
                p.terminate(Duration::from_secs(30));
                r
            }
            "orrery" | "orrery-nofsync" | "orrery-nowalz" => {
                let dir = tempfile::tempdir().expect("temp dir");
                let (mut p, addr, data) = start_orrery(
                    dir.path(),
                    o.block_mins,
                    server != "orrery-nofsync",
                    server == "orrery-nowalz",
                );
                println!("{server}: pid {} on {addr}", p.pid());
                let r = drive(
                    &o,
                    &server,
                    &addr,
                    "/api/v1/receive",
                    &[p.pid()],
                    &data,
                    batches,
                    t0,
                );
                p.terminate(Duration::from_secs(30));
                r
            }
            "ring-rf1" | "ring-rf3" => {
                let rf = if server == "ring-rf1" { 1 } else { 3 };
                let dir = tempfile::tempdir().expect("temp dir");
                let (mut procs, addr, data) = start_ring(dir.path(), o.block_mins, rf);
                println!(
                    "{server}: 3 router+ingestors (pids {:?}), load to {addr}",
                    procs.iter().map(|p| p.pid()).collect::<Vec<_>>()
                );
                let pids: Vec<u32> = procs.iter().map(|p| p.pid()).collect();
                let r = drive(
                    &o,
                    &server,
                    &addr,
                    "/api/v1/receive",
                    &pids,
                    &data,
                    batches,
                    t0,
                );
                for p in procs.iter_mut() {
                    p.terminate(Duration::from_secs(30));
                }
                r
            }
            "prometheus" => {
                let mins = format!("{}m", o.block_mins);
                let min_arg = format!("--storage.tsdb.min-block-duration={mins}");
                let max_arg = format!("--storage.tsdb.max-block-duration={mins}");
                let mut p = Prometheus::start(
                    "global:\n  scrape_interval: 15s\n",
                    &[
                        "--web.enable-remote-write-receiver",
                        "--log.level=warn",
                        &min_arg,
                        &max_arg,
                    ],
                );
                println!("prometheus: pid {} on {}", p.proc.pid(), p.addr());
                let data = p.dir.path().join("data");
                let r = drive(
                    &o,
                    &server,
                    &p.addr(),
                    "/api/v1/write",
                    &[p.proc.pid()],
                    &data,
                    batches,
                    t0,
                );
                p.proc.terminate(Duration::from_secs(30));
                r
            }
            other => panic!("unknown server {other:?}"),
        };
        let mut r = r;
        if v2 {
            r.server.push_str("-rw2");
        }
        report(&r);
        results.push(r);
    }
    let find = |n: &str| results.iter().find(|r| r.server == n);
    // The same load over remote write 2.0 against 1.0, per server.
    for r2 in results.iter().filter(|r| r.server.ends_with("-rw2")) {
        if let Some(r1) = find(r2.server.trim_end_matches("-rw2")) {
            let rate = |r: &Result1| r.accepted as f64 / r.secs;
            let cpm = |r: &Result1| r.cpu / (r.accepted.max(1) as f64 / 1e6);
            println!(
                "rw2/rw1 {}: samples/s {:.0} vs {:.0} ({:.2}×), CPU {:.2} vs {:.2} s per million samples ({:.2}×)",
                r1.server,
                rate(r2),
                rate(r1),
                rate(r2) / rate(r1),
                cpm(r2),
                cpm(r1),
                cpm(r2) / cpm(r1)
            );
        }
    }
    if let Some(p) = find("prometheus") {
        // The goals are for one receiver; a ring's lines are for comparison only.
        for o in results
            .iter()
            .filter(|r| r.server != "prometheus" && !r.server.starts_with("ring-"))
        {
            let rate = |r: &Result1| r.accepted as f64 / r.secs;
            let cpm = |r: &Result1| r.cpu / (r.accepted.max(1) as f64 / 1e6);
            let bps = |r: &Result1| {
                r.block
                    .as_ref()
                    .map(|b| b.bytes as f64 / b.samples.max(1) as f64)
            };
            println!(
                "ratios {}/prometheus: samples/s {:.2}× (goal ≥ 2), CPU per sample {:.2}× (goal ≤ 0.25), \
                 peak RSS {:.2}× over the timed phase, {} until the first block (goal ≤ 0.5){}",
                o.server,
                rate(o) / rate(p),
                cpm(o) / cpm(p),
                o.hwm_kb as f64 / p.hwm_kb.max(1) as f64,
                match (o.hwm_at_block_kb, p.hwm_at_block_kb) {
                    (Some(a), Some(b)) => format!("{:.2}×", a as f64 / b.max(1) as f64),
                    _ => "n/a".into(),
                },
                match (bps(o), bps(p)) {
                    (Some(a), Some(b)) => format!(", bytes/sample {:.2}×", a / b),
                    _ => String::new(),
                }
            );
        }
        for o in results.iter().filter(|r| r.server.starts_with("ring-")) {
            println!(
                "ratios {}/prometheus: samples/s {:.2}×, CPU per accepted sample {:.2}×, peak RSS (sum of 3) {:.2}×",
                o.server,
                (o.accepted as f64 / o.secs) / (p.accepted as f64 / p.secs),
                (o.cpu / o.accepted.max(1) as f64) / (p.cpu / p.accepted.max(1) as f64),
                o.hwm_kb as f64 / p.hwm_kb.max(1) as f64,
            );
        }
    }
}
