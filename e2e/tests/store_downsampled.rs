//! Reading downsampled blocks (issue #17, "Reading downsampled data"): a bucket holds a
//! day of raw blocks and the 5m block of the same data (aggregates computed with
//! `tsdb::chunk::aggr::downsample_raw`, Thanos's AggrChunk encoding), for two replicas.
//! `orrery store` + `orrery query` (`--query.replica-label=replica`) must answer
//! `max/min/sum/count_over_time` over 5m-aligned windows with `max_source_resolution=5m`
//! exactly as with raw data (`0s`) and as Prometheus 3.5.3 holding the raw samples;
//! `rate` within [`RATE_TOLERANCE`]. Then the raw blocks are deleted from the bucket:
//! the same queries still answer (from the 5m blocks), even at `max_source_resolution=0s`.
//! A 1h block (from the 5m aggregates, as the compactor makes it) answers the queries
//! whose windows are whole hours at `max_source_resolution=1h` exactly like raw data, and
//! alone once the 5m blocks are deleted too.
//! Against a real S3 server process (moto) and a FILESYSTEM bucket.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use e2e::promqlcmp::{
    Series, compare_answers, matrix_points, prom_range, range_at_resolution, show_answer,
    start_prometheus_with, worst_relative_error,
};
use e2e::s3::MotoServer;
use e2e::{Proc, free_port, http_get, orrery_bin, wait_for};
use objstore::{Bucket, BucketConfig};
use storeapi::{Labels, Sample};
use tsdb::block::downsample::downsample_series;
use tsdb::block::meta::{ThanosDownsample, ThanosMeta};
use tsdb::block::{BlockOptions, BlockWriter, Ulid};
use tsdb::chunk::aggr::{RES_1H, RES_5M, downsample_raw};
use tsdb::chunk::{Chunk, Encoding, XorChunk};

const H: i64 = 3_600_000;
const BUCKET: &str = "downsampled";
/// 2023-11-14T00:00:00Z: day-aligned, so every 5m window starts on a multiple of 5m.
const T0: i64 = 1_699_920_000_000;
/// Hours of data.
const HOURS: i64 = 24;
/// Documented error bound of `rate`/`increase` over 5m counter aggregates against raw
/// data (Thanos's approach): the counter aggregate has one point per window, so the
/// points a range sees, and the extrapolation to its ends, move by up to one window —
/// up to 1/12 of a 1h range. 10% bounds it for ranges ≥ 1h (observed here: ≈ 5% for
/// `rate(x[1h])`, less for `increase(x[2h])`).
const RATE_TOLERANCE: f64 = 0.10;

/// Gauges (multiples of 0.25, so sums are exact in any order) and counters with resets,
/// at 30 s with a per-series offset of a few seconds: no sample sits on a 5m boundary,
/// so a window of whole 5m steps holds the same raw samples in Prometheus's `(t-r, t]`
/// and in the aggregates' `[w, w+5m)`.
fn dataset() -> Vec<Series> {
    let mut rng = e2e::promqlcmp::Rng::new(17);
    let mut out = Vec::new();
    for i in 0..6 {
        let off = 3_000 + i * 4_000;
        let (mut g, mut c) = (50.0f64, 0.0f64);
        let (mut gs, mut cs) = (Vec::new(), Vec::new());
        let mut t = T0 + off;
        while t < T0 + HOURS * H {
            g += (rng.below(9) as f64 - 4.0) * 0.25;
            if rng.below(1500) == 0 {
                c = 0.0;
            }
            c += (rng.below(20) + 1) as f64;
            gs.push(Sample { t, v: g });
            cs.push(Sample { t, v: c });
            t += 30_000;
        }
        let inst = format!("host-{i}");
        for (name, s) in [("ds_gauge", gs), ("ds_counter_total", cs)] {
            out.push(Series {
                labels: Labels::from_pairs([("__name__", name), ("instance", inst.as_str())])
                    .expect("labels"),
                samples: s,
            });
        }
    }
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    out
}

fn xor_chunks(samples: &[Sample]) -> Vec<Chunk> {
    samples
        .chunks(120)
        .map(|part| {
            let mut c = XorChunk::new();
            for s in part {
                c.append(s.t, s.v).expect("append");
            }
            Chunk {
                min_time: part[0].t,
                max_time: part[part.len() - 1].t,
                encoding: Encoding::Xor,
                data: Bytes::from(c.into_bytes()),
            }
        })
        .collect()
}

/// Writes and uploads one block: raw over `[mint, maxt)`, or (`resolution` 5m) the
/// aggregates of the whole day, or (1h) the 5m aggregates downsampled again.
fn upload(
    rt: &tokio::runtime::Runtime,
    bucket: &Bucket,
    dir: &Path,
    data: &[Series],
    (mint, maxt): (i64, i64),
    resolution: i64,
    replica: &str,
) -> Ulid {
    let series: Vec<(Labels, Vec<Chunk>)> = data
        .iter()
        .map(|s| {
            let part: Vec<Sample> = s
                .samples
                .iter()
                .copied()
                .filter(|x| (mint..maxt).contains(&x.t))
                .collect();
            let chunks = if resolution == 0 {
                xor_chunks(&part)
            } else {
                let raw: Vec<(i64, f64)> = part.iter().map(|x| (x.t, x.v)).collect();
                let five: Vec<Chunk> = downsample_raw(&raw, RES_5M)
                    .expect("downsample")
                    .into_iter()
                    .map(|c| Chunk {
                        min_time: c.min_time,
                        max_time: c.max_time,
                        encoding: Encoding::Aggr,
                        data: c.data,
                    })
                    .collect();
                if resolution == RES_5M {
                    five
                } else {
                    downsample_series(&s.labels, &five, RES_5M, resolution).expect("downsample 1h")
                }
            };
            (s.labels.clone(), chunks)
        })
        .collect();
    let labels = BTreeMap::from([("replica".to_string(), replica.to_string())]);
    let opts = BlockOptions {
        thanos: Some(ThanosMeta {
            downsample: ThanosDownsample { resolution },
            ..ThanosMeta::new(labels.clone(), "compactor")
        }),
        ..BlockOptions::default()
    };
    let meta = BlockWriter::write(dir, mint, maxt, series, &opts).expect("write block");
    let local = dir.join(meta.ulid.to_string());
    rt.block_on(objstore::block::upload_block(
        bucket,
        &local,
        &labels,
        "compactor",
    ))
    .expect("upload block");
    std::fs::remove_dir_all(&local).expect("remove local block");
    meta.ulid
}

fn spawn(args: &[String], name: &str, log: &Path) -> Proc {
    let mut cmd = Command::new(orrery_bin());
    cmd.args(args).env("RUST_LOG", "info");
    Proc::spawn(name, cmd, log.to_path_buf())
}

fn ready(p: &Proc, http: &str) {
    let ok = wait_for(Duration::from_secs(60), || {
        matches!(http_get(http, "/-/ready"), Ok((200, _))).then_some(())
    });
    assert!(ok.is_some(), "not ready; log:\n{}", p.log_text());
}

fn run_case(name: &str, objstore: String, dir: &Path) {
    let data = dataset();
    let prom = start_prometheus_with(&data);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let bucket = Bucket::new(
        &BucketConfig::parse(&objstore).expect("objstore config"),
        None,
    )
    .expect("bucket");
    let local = dir.join("blocks");
    let mut raw_ids = Vec::new();
    let mut five_ids = Vec::new();
    for replica in ["0", "1"] {
        for k in 0..HOURS / 6 {
            let r = (T0 + k * 6 * H, T0 + (k + 1) * 6 * H);
            raw_ids.push(upload(&rt, &bucket, &local, &data, r, 0, replica));
        }
        five_ids.push(upload(
            &rt,
            &bucket,
            &local,
            &data,
            (T0, T0 + HOURS * H),
            RES_5M,
            replica,
        ));
        upload(
            &rt,
            &bucket,
            &local,
            &data,
            (T0, T0 + HOURS * H),
            RES_1H,
            replica,
        );
    }

    let (grpc, shttp) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let store = spawn(
        &[
            "store".into(),
            format!("--objstore.config={objstore}"),
            format!("--data-dir={}", dir.join("store").display()),
            format!("--grpc-address={grpc}"),
            format!("--http-address={shttp}"),
            "--sync-block-duration=1s".into(),
        ],
        "orrery-store",
        &dir.join("store.log"),
    );
    ready(&store, &shttp);
    let qhttp = format!("127.0.0.1:{}", free_port());
    let query = spawn(
        &[
            "query".into(),
            format!("--http-address={qhttp}"),
            format!("--grpc-address=127.0.0.1:{}", free_port()),
            format!("--endpoint={grpc}"),
            "--query.replica-label=replica".into(),
        ],
        "orrery-query",
        &dir.join("query.log"),
    );
    ready(&query, &qhttp);
    let probe = (T0 + 2 * H, T0 + 3 * H, 5 * 60_000);
    let seen = wait_for(Duration::from_secs(30), || {
        (matrix_points(&range_at_resolution(&qhttp, "ds_gauge", probe, "0s")) > 0).then_some(())
    });
    assert!(
        seen.is_some(),
        "{name}: the querier never saw the store's data; log:\n{}",
        query.log_text()
    );

    // Ranges and steps on 5m boundaries; windows of whole 5m steps.
    let ranges = [
        (T0 + 2 * H, T0 + 22 * H, H),
        (T0 + 5 * H + 10 * 60_000, T0 + 9 * H, 5 * 60_000),
    ];
    let exact = [
        "max_over_time(ds_gauge[1h])",
        "min_over_time(ds_gauge[1h])",
        "sum_over_time(ds_gauge[30m])",
        "count_over_time(ds_gauge[1h])",
        "count_over_time(ds_counter_total[5m])",
        "max_over_time(ds_counter_total[2h])",
        "sum(sum_over_time(ds_gauge[15m]))",
    ];
    let rates = [
        "rate(ds_counter_total[1h])",
        "increase(ds_counter_total[2h])",
    ];
    // Windows of whole hours on an hourly step: what 1h aggregates answer exactly.
    let hourly = [
        "max_over_time(ds_gauge[1h])",
        "min_over_time(ds_gauge[1h])",
        "count_over_time(ds_gauge[1h])",
        "max_over_time(ds_counter_total[2h])",
        "sum(count_over_time(ds_counter_total[3h]))",
    ];
    let check_hourly = |phase: &str, resolutions: &[&str]| {
        let r = ranges[0];
        let mut bad = Vec::new();
        for q in hourly {
            let theirs = prom_range(&prom.addr(), q, r.0, r.1, r.2).expect("prometheus");
            assert!(
                matrix_points(&theirs) > 0,
                "{q}: Prometheus returned nothing"
            );
            for res in resolutions {
                let mine = range_at_resolution(&qhttp, q, r, res);
                if let Err(why) = compare_answers(&mine, &theirs, false) {
                    bad.push(format!(
                        "{phase} {q} at {res}: {why}\n  orrery:     {}\n  prometheus: {}",
                        show_answer(&mine),
                        show_answer(&theirs)
                    ));
                }
            }
        }
        assert!(
            bad.is_empty(),
            "{name} {phase}: {} answers differ:\n{}\nstore log:\n{}",
            bad.len(),
            bad.iter().take(8).cloned().collect::<Vec<_>>().join("\n"),
            store.log_text()
        );
    };
    let check = |phase: &str, raw_present: bool| {
        let mut bad = Vec::new();
        let mut worst_rate = 0.0f64;
        for q in exact.iter().chain(rates.iter()) {
            for &r in &ranges {
                let theirs = prom_range(&prom.addr(), q, r.0, r.1, r.2).expect("prometheus");
                assert!(
                    matrix_points(&theirs) > 0,
                    "{q}: Prometheus returned nothing"
                );
                let mut answers = vec![("5m", range_at_resolution(&qhttp, q, r, "5m"))];
                // With raw deleted, `0s` is answered from the 5m blocks as well.
                answers.push(("0s", range_at_resolution(&qhttp, q, r, "0s")));
                for (res, mine) in answers {
                    if rates.contains(q) && !(raw_present && res == "0s") {
                        match worst_relative_error(&mine, &theirs) {
                            Ok(w) if w <= RATE_TOLERANCE => worst_rate = worst_rate.max(w),
                            Ok(w) => bad.push(format!(
                                "{phase} {q} {res} {r:?}: rate off by {:.2}% (> {:.0}%)",
                                w * 100.0,
                                RATE_TOLERANCE * 100.0
                            )),
                            Err(e) => bad.push(format!("{phase} {q} {res} {r:?}: {e}")),
                        }
                        continue;
                    }
                    if let Err(why) = compare_answers(&mine, &theirs, false) {
                        bad.push(format!(
                            "{phase} {q} at {res} {r:?}: {why}\n  orrery:     {}\n  prometheus: {}",
                            show_answer(&mine),
                            show_answer(&theirs)
                        ));
                    }
                }
            }
        }
        println!(
            "{name} {phase}: worst rate/increase error over 5m data {:.3}%",
            worst_rate * 100.0
        );
        assert!(
            bad.is_empty(),
            "{name} {phase}: {} answers differ:\n{}\nstore log:\n{}",
            bad.len(),
            bad.iter().take(8).cloned().collect::<Vec<_>>().join("\n"),
            store.log_text()
        );
    };
    check("raw+5m+1h", true);
    check_hourly("raw+5m+1h", &["1h"]);

    // The 1h data is really read at 1h: plain selectors there are hourly averages,
    // unlike the 5m ones.
    let hourly_avg = range_at_resolution(&qhttp, "ds_gauge", ranges[0], "1h");
    assert!(matrix_points(&hourly_avg) > 0);
    assert!(
        compare_answers(
            &hourly_avg,
            &range_at_resolution(&qhttp, "ds_gauge", ranges[0], "5m"),
            false
        )
        .is_err(),
        "{name}: 1h averages equal the 5m ones: the store served 5m data for 1h"
    );

    // The 5m data really is a different source: plain selectors read window averages.
    let avg = range_at_resolution(&qhttp, "ds_gauge", ranges[0], "5m");
    let raw = range_at_resolution(&qhttp, "ds_gauge", ranges[0], "0s");
    assert!(matrix_points(&avg) > 0 && matrix_points(&raw) > 0);
    assert!(
        compare_answers(&avg, &raw, false).is_err(),
        "{name}: 5m averages equal raw samples: the store served raw data for 5m"
    );

    // Retention removed the raw data: only the 5m blocks are left.
    for id in &raw_ids {
        rt.block_on(bucket.delete(&format!("{id}/meta.json")))
            .expect("delete meta.json");
    }
    let gone = wait_for(Duration::from_secs(30), || {
        (compare_answers(
            &range_at_resolution(&qhttp, "ds_gauge", ranges[0], "0s"),
            &avg,
            false,
        )
        .is_ok())
        .then_some(())
    });
    assert!(
        gone.is_some(),
        "{name}: the store still serves raw data after the raw blocks were deleted; log:\n{}",
        store.log_text()
    );
    check("5m+1h", false);

    // Retention removed the 5m data as well: the 1h blocks answer alone, at any
    // requested resolution.
    for id in &five_ids {
        rt.block_on(bucket.delete(&format!("{id}/meta.json")))
            .expect("delete meta.json");
    }
    let only_1h = wait_for(Duration::from_secs(30), || {
        (compare_answers(
            &range_at_resolution(&qhttp, "ds_gauge", ranges[0], "0s"),
            &hourly_avg,
            false,
        )
        .is_ok())
        .then_some(())
    });
    assert!(
        only_1h.is_some(),
        "{name}: the store still serves 5m data after the 5m blocks were deleted; log:\n{}",
        store.log_text()
    );
    check_hourly("1h only", &["0s", "5m", "1h"]);

    // The UI offers Thanos's resolution selector.
    let (_, page) = http_get(&qhttp, "/graph").expect("ui");
    for opt in ["auto", "0s", "5m", "1h"] {
        assert!(
            page.contains("id=\"max-res\"") && page.contains(&format!("value=\"{opt}\"")),
            "{page}"
        );
    }
    let (_, js) = http_get(&qhttp, "/static/app.js").expect("ui js");
    assert!(js.contains("max_source_resolution"));
    drop(query);
    drop(store);
}

#[test]
fn downsampled_blocks_answer_like_raw_s3() {
    let dir = tempfile::tempdir().expect("temp dir");
    let moto = MotoServer::start(dir.path());
    moto.create_bucket(BUCKET);
    let objstore = format!(
        "type: S3\nconfig:\n  bucket: {BUCKET}\n  endpoint: {}\n  insecure: true\n  access_key: test\n  secret_key: test\n",
        moto.addr()
    );
    run_case("s3", objstore, dir.path());
}

#[test]
fn downsampled_blocks_answer_like_raw_filesystem() {
    let dir = tempfile::tempdir().expect("temp dir");
    let b = dir.path().join("bucket");
    std::fs::create_dir_all(&b).expect("bucket dir");
    let objstore = format!("type: FILESYSTEM\nconfig:\n  directory: {}\n", b.display());
    run_case("filesystem", objstore, dir.path());
}
