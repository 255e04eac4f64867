//! Database behaviour: appender rejections, WAL replay, compaction into blocks with
//! seamless head+block queries, retention, and crash safety (WAL cut at random offsets;
//! writer killed with SIGKILL).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use storeapi::{Labels, MatchOp, Matcher, STALE_NAN_BITS, Sample};
use tsdb::{Db, Options, SyncPolicy};

const H: i64 = 3_600_000;

fn ls(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs.iter().copied()).unwrap()
}

fn opts() -> Options {
    Options {
        wal_sync: SyncPolicy::Never,
        ..Options::default()
    }
}

fn all(db: &Db) -> BTreeMap<Labels, Vec<(i64, u64)>> {
    let q = db.querier(i64::MIN, i64::MAX);
    q.select_samples(&[Matcher::new(MatchOp::RegexMatch, "__name__", ".+").unwrap()])
        .unwrap()
        .into_iter()
        .map(|(l, s)| (l, s.into_iter().map(|s| (s.t, s.v.to_bits())).collect()))
        .collect()
}

#[test]
fn appender_counts_each_rejection_kind_and_keeps_the_rest() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(d.path(), opts(), None).unwrap();
    let a = ls(&[("__name__", "a")]);
    let b = ls(&[("__name__", "b")]);
    let mut app = db.appender();
    app.append(
        &a,
        &[Sample { t: 1000, v: 1.0 }, Sample { t: 2000, v: 2.0 }],
    );
    let out = app.commit().unwrap();
    assert_eq!(out.appended, 2);
    assert_eq!(out.series_created, 1);

    let mut app = db.appender();
    app.append(
        &a,
        &[
            Sample { t: 1500, v: 9.0 }, // out of order
            Sample { t: 2000, v: 2.0 }, // identical duplicate: ignored
            Sample { t: 2000, v: 3.0 }, // duplicate timestamp, other value
            Sample { t: 3000, v: 3.0 }, // fine
        ],
    );
    app.append(&b, &[Sample { t: 2500, v: 1.0 }]);
    let out = app.commit().unwrap();
    assert_eq!(out.appended, 2);
    assert_eq!(out.out_of_order, 1);
    assert_eq!(out.duplicates_ignored, 1);
    assert_eq!(out.duplicate_timestamp, 1);
    assert_eq!(out.rejected(), 2);
    let first = out.first_rejection.unwrap();
    assert_eq!((first.series_index, first.t), (0, 1500));

    // Push the head's max time forward: anything older than max - 1h is out of bounds.
    let mut app = db.appender();
    app.append_one(&b, 10 * H, 1.0);
    app.commit().unwrap();
    let mut app = db.appender();
    app.append_one(&a, 10 * H - H - 1, 1.0);
    app.append_one(&a, 10 * H - H, 1.0);
    let out = app.commit().unwrap();
    assert_eq!(out.out_of_bounds, 1);
    assert_eq!(out.appended, 1);

    // By ref.
    let r = out.series_refs[0];
    let mut app = db.appender();
    app.append_ref(r, &[Sample { t: 10 * H, v: 5.0 }]);
    app.append_ref(987_654, &[Sample { t: 10 * H, v: 5.0 }]);
    let out = app.commit().unwrap();
    assert_eq!((out.appended, out.unknown_series), (1, 1));

    let got = all(&db);
    assert_eq!(
        got[&a],
        vec![
            (1000, 1f64.to_bits()),
            (2000, 2f64.to_bits()),
            (3000, 3f64.to_bits()),
            (9 * H, 1f64.to_bits()),
            (10 * H, 5f64.to_bits())
        ]
    );
    let m = db.metrics();
    assert_eq!(m.samples_appended.get(), 7);
    assert_eq!(db.head_series(), 2);
}

#[test]
fn stale_markers_and_wal_replay_are_exact() {
    let d = tempfile::tempdir().unwrap();
    let stale = f64::from_bits(STALE_NAN_BITS);
    let series: Vec<Labels> = (0..50)
        .map(|i| ls(&[("__name__", "m"), ("i", &i.to_string())]))
        .collect();
    {
        let db = Db::open(d.path(), opts(), None).unwrap();
        for step in 0..300i64 {
            let mut app = db.appender();
            for (i, l) in series.iter().enumerate() {
                let v = if step % 50 == 49 {
                    stale
                } else {
                    (step * i as i64) as f64 * 0.5
                };
                app.append_one(l, step * 15_000, v);
            }
            app.commit().unwrap();
        }
        // No close: the process "ends" here; replay must restore everything.
    }
    let db = Db::open(d.path(), opts(), None).unwrap();
    let got = all(&db);
    assert_eq!(got.len(), 50);
    for (i, l) in series.iter().enumerate() {
        let s = &got[l];
        assert_eq!(s.len(), 300);
        for (step, &(t, v)) in s.iter().enumerate() {
            let step = step as i64;
            assert_eq!(t, step * 15_000);
            let want = if step % 50 == 49 {
                STALE_NAN_BITS
            } else {
                ((step * i as i64) as f64 * 0.5).to_bits()
            };
            assert_eq!(v, want);
        }
    }
}

/// `compactable` says yes exactly when `compact` would cut a block (head span over 1.5
/// block durations), and no again once it has: a server polls it to compact promptly.
#[test]
fn compactable_agrees_with_compact() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(d.path(), opts(), None).unwrap();
    assert!(!db.compactable(), "empty head");
    let l = ls(&[("__name__", "m")]);
    let mut t = 0;
    let mut add = |db: &Db, upto: i64| {
        while t <= upto {
            let mut app = db.appender();
            app.append_one(&l, t, 1.0);
            app.commit().unwrap();
            t += 60_000;
        }
    };
    // Span exactly 1.5 × 2h: not due (Prometheus's `>`).
    add(&db, 3 * H);
    assert!(!db.compactable());
    assert!(db.compact().unwrap().is_empty());
    add(&db, 3 * H + 60_000);
    assert!(db.compactable());
    let metas = db.compact().unwrap();
    assert_eq!(metas.len(), 1);
    assert!(!db.compactable(), "head truncated to [2h, 3h]");
}

#[test]
fn compaction_writes_blocks_and_queries_merge_head_and_blocks() {
    let d = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.external_labels = Some(BTreeMap::from([("replica".to_string(), "0".to_string())]));
    let db = Db::open(d.path(), o.clone(), None).unwrap();
    let series: Vec<Labels> = (0..20)
        .map(|i| {
            ls(&[
                ("__name__", if i % 2 == 0 { "even" } else { "odd" }),
                ("job", "j"),
                ("i", &format!("{i:02}")),
            ])
        })
        .collect();
    // 7 hours at 60s.
    let mut expected: BTreeMap<Labels, Vec<(i64, u64)>> = BTreeMap::new();
    for t in (0..7 * H).step_by(60_000) {
        let mut app = db.appender();
        for (i, l) in series.iter().enumerate() {
            let v = (t / 60_000 + i as i64) as f64;
            app.append_one(l, t, v);
            expected
                .entry(l.clone())
                .or_default()
                .push((t, v.to_bits()));
        }
        app.commit().unwrap();
    }
    let before = all(&db);
    assert_eq!(before, expected);
    let metas = db.compact().unwrap();
    // Head spans 7h: blocks [0,2h), [2h,4h) are cut; [4h,6h) would leave < 1.5 ranges.
    assert_eq!(
        metas
            .iter()
            .map(|m| (m.min_time, m.max_time))
            .collect::<Vec<_>>(),
        vec![(0, 2 * H), (2 * H, 4 * H)]
    );
    assert_eq!(metas[0].stats.num_series, 20);
    assert_eq!(metas[0].thanos.as_ref().unwrap().labels["replica"], "0");
    assert_eq!(db.head().min_time(), 4 * H);
    assert_eq!(
        all(&db),
        expected,
        "head+blocks merge equals what was appended"
    );
    assert_eq!(db.min_time(), 0);
    assert_eq!(db.max_time(), 7 * H - 60_000);

    // A range spanning block and head, with trimming and matchers.
    let q = db.querier(2 * H - 120_000, 4 * H + 60_000);
    let m = [
        Matcher::new(MatchOp::Equal, "__name__", "even").unwrap(),
        Matcher::new(MatchOp::NotEqual, "i", "00").unwrap(),
    ];
    let sel = q.select_samples(&m).unwrap();
    assert_eq!(sel.len(), 9);
    assert_eq!(
        sel[0].1.iter().map(|s| s.t).collect::<Vec<_>>(),
        (2 * H - 120_000..=4 * H + 60_000)
            .step_by(60_000)
            .collect::<Vec<_>>()
    );
    assert_eq!(q.label_names(&[]).unwrap(), vec!["__name__", "i", "job"]);
    assert_eq!(
        q.label_values("__name__", &[]).unwrap(),
        vec!["even", "odd"]
    );
    assert_eq!(
        q.label_values(
            "i",
            &[Matcher::new(MatchOp::Equal, "__name__", "odd").unwrap()]
        )
        .unwrap()
        .len(),
        10
    );
    // Raw chunks are sorted by time and do not overlap.
    for s in db.querier(i64::MIN, i64::MAX).select(&[]).unwrap() {
        for w in s.chunks.windows(2) {
            assert!(w[0].max_time < w[1].min_time);
        }
    }

    // Samples older than the compacted range are refused.
    let mut app = db.appender();
    app.append_one(&series[0], 3 * H, 1.0);
    assert_eq!(app.commit().unwrap().out_of_bounds, 1);

    // Reopen: blocks + checkpoint + WAL give the same data.
    drop(db);
    let db = Db::open(d.path(), o.clone(), None).unwrap();
    assert_eq!(db.block_metas().len(), 2);
    assert_eq!(all(&db), expected);
    let mut app = db.appender();
    app.append_one(&series[0], 3 * H, 1.0);
    assert_eq!(app.commit().unwrap().out_of_bounds, 1);

    // Flush cuts the rest; retention of 3h from the newest data drops [0,2h).
    let metas = db.flush().unwrap();
    assert_eq!(metas.last().unwrap().max_time, 7 * H - 60_000 + 1);
    assert_eq!(db.head_series(), 0);
    assert_eq!(all(&db), expected);
    drop(db);
    let mut o2 = o.clone();
    o2.retention = Duration::from_millis(4 * H as u64);
    // A hold (a shipper's "not uploaded yet") keeps the expired block on disk.
    let held = Arc::new(AtomicBool::new(true));
    let h = held.clone();
    o2.retention_hold = tsdb::RetentionHold::from_fn(move |_| h.load(Ordering::SeqCst));
    let db = Db::open(d.path(), o2, None).unwrap();
    let oldest = db.block_metas()[0].ulid.to_string();
    let n = db.block_metas().len();
    assert!(d.path().join(&oldest).exists());
    assert_eq!(db.apply_retention().unwrap(), 0);
    assert!(d.path().join(&oldest).exists());
    assert_eq!(db.block_metas().len(), n);
    held.store(false, Ordering::SeqCst);
    assert_eq!(db.apply_retention().unwrap(), 1);
    assert_eq!(db.min_time(), 2 * H);
    assert!(!d.path().join(&oldest).exists());
    assert_eq!(db.metrics().blocks_deleted_by_retention.get(), 1);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// The WAL is cut at many offsets: reopening yields exactly the batches written before
/// the cut, with the right values, and nothing else.
#[test]
fn wal_cut_at_random_offsets_yields_exactly_the_acknowledged_prefix() {
    let d = tempfile::tempdir().unwrap();
    let series: Vec<Labels> = (0..30)
        .map(|i| ls(&[("__name__", "c"), ("s", &i.to_string())]))
        .collect();
    // Batch k writes sample (k*1000, k + s/100) for a rotating subset of series.
    let batch = |k: i64| -> Vec<(usize, i64, f64)> {
        (0..30usize)
            .filter(|s| (*s as i64 + k) % 3 != 0)
            .map(|s| (s, k * 1000, k as f64 + s as f64 / 100.0))
            .collect()
    };
    let mut ends = vec![];
    {
        let db = Db::open(d.path(), opts(), None).unwrap();
        for k in 0..200i64 {
            let mut app = db.appender();
            for (s, t, v) in batch(k) {
                app.append_one(&series[s], t, v);
            }
            app.commit().unwrap();
            ends.push(
                std::fs::metadata(d.path().join("wal/00000000"))
                    .unwrap()
                    .len(),
            );
        }
    }
    let total = *ends.last().unwrap();
    let mut seed = 42u64;
    let mut cuts: Vec<u64> = (0..40)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % (total + 1)
        })
        .collect();
    cuts.extend([0, 1, 7, 8, ends[0], ends[0] + 1, total - 1, total]);
    for cut in cuts {
        let c = tempfile::tempdir().unwrap();
        copy_dir(d.path(), c.path());
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(c.path().join("wal/00000000"))
            .unwrap();
        f.set_len(cut).unwrap();
        drop(f);
        let db = Db::open(c.path(), opts(), None).unwrap();
        let complete = ends.iter().filter(|&&e| e <= cut).count() as i64;
        let mut want: BTreeMap<Labels, Vec<(i64, u64)>> = BTreeMap::new();
        for k in 0..complete {
            for (s, t, v) in batch(k) {
                want.entry(series[s].clone())
                    .or_default()
                    .push((t, v.to_bits()));
            }
        }
        assert_eq!(all(&db), want, "cut at {cut} of {total}");
        let torn = db.metrics().wal_torn_tails.get();
        assert_eq!(
            torn,
            u64::from(!ends.contains(&cut) && cut > 0),
            "cut at {cut}"
        );
        assert_eq!(db.metrics().wal_corruptions_repaired.get(), 0);
        // A second open finds a clean WAL and the same data (no crash loop, no loss).
        drop(db);
        let db = Db::open(c.path(), opts(), None).unwrap();
        assert_eq!(all(&db), want);
        assert_eq!(db.metrics().wal_torn_tails.get(), 0);
    }
}

/// A damaged record in the middle of the WAL is reported and skipped; every record after
/// it is replayed (nothing acknowledged later is dropped), on every open.
#[test]
fn mid_wal_corruption_is_skipped_and_counted() {
    let d = tempfile::tempdir().unwrap();
    let l = ls(&[("__name__", "x")]);
    {
        let db = Db::open(d.path(), opts(), None).unwrap();
        for k in 0..100 {
            let mut app = db.appender();
            app.append_one(&l, k * 1000, k as f64);
            app.commit().unwrap();
        }
    }
    let p = d.path().join("wal/00000000");
    let mut data = std::fs::read(&p).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x55;
    std::fs::write(&p, &data).unwrap();
    let db = Db::open(d.path(), opts(), None).unwrap();
    assert_eq!(db.metrics().wal_corruptions_repaired.get(), 1);
    let got = all(&db)[&l].clone();
    assert_eq!(got.len(), 99, "exactly the damaged record is skipped");
    let lost: Vec<i64> = (0..100)
        .filter(|k| !got.contains(&(k * 1000, (*k as f64).to_bits())))
        .collect();
    assert_eq!(lost.len(), 1, "{lost:?}");
    // Appends continue, and the next open replays the same plus the new sample.
    let mut app = db.appender();
    app.append_one(&l, 1_000_000, 1.0);
    assert_eq!(app.commit().unwrap().appended, 1);
    drop(db);
    let db = Db::open(d.path(), opts(), None).unwrap();
    assert_eq!(db.metrics().wal_corruptions_repaired.get(), 1);
    assert_eq!(all(&db)[&l].len(), got.len() + 1);
}

#[test]
fn concurrent_appenders_from_many_threads() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(
        d.path(),
        Options {
            wal_sync: SyncPolicy::Always,
            ..Options::default()
        },
        None,
    )
    .unwrap();
    std::thread::scope(|sc| {
        for w in 0..8 {
            let db = db.clone();
            sc.spawn(move || {
                let series: Vec<Labels> = (0..20)
                    .map(|i| {
                        ls(&[
                            ("__name__", "w"),
                            ("w", &w.to_string()),
                            ("i", &i.to_string()),
                        ])
                    })
                    .collect();
                for t in 0..50i64 {
                    let mut app = db.appender();
                    for l in &series {
                        app.append_one(l, t * 1000, t as f64);
                    }
                    assert_eq!(app.commit().unwrap().appended, 20);
                }
            });
        }
    });
    drop(db);
    let db = Db::open(d.path(), opts(), None).unwrap();
    let got = all(&db);
    assert_eq!(got.len(), 160);
    assert!(got.values().all(|s| s.len() == 50));
}

const CHILD_ENV: &str = "TSDB_CRASH_CHILD_DIR";

/// Child mode of the SIGKILL test: append numbered batches forever, printing the batch
/// number after each commit returns.
#[test]
#[ignore = "child process of sigkill_loses_no_acknowledged_batch"]
fn sigkill_child() {
    let dir = std::env::var(CHILD_ENV).expect("run by sigkill_loses_no_acknowledged_batch");
    let db = Db::open(
        &dir,
        Options {
            wal_sync: SyncPolicy::Always,
            wal_segment_size: 64 * 1024,
            ..Options::default()
        },
        None,
    )
    .unwrap();
    let series: Vec<Labels> = (0..10)
        .map(|i| ls(&[("__name__", "k"), ("s", &i.to_string())]))
        .collect();
    for k in 0i64.. {
        let mut app = db.appender();
        for (i, l) in series.iter().enumerate() {
            app.append_one(l, k * 1000, (k * 10 + i as i64) as f64);
        }
        app.commit().unwrap();
        println!("ack {k}");
    }
}

#[test]
fn sigkill_loses_no_acknowledged_batch() {
    let d = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "sigkill_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, d.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut acked = None;
        let mut seen = Vec::new();
        let target = 200 + round * 150;
        let mut lines = BufReader::new(out).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if seen.len() < 5 {
                seen.push(line.clone());
            }
            if let Some(n) = line.strip_prefix("ack ") {
                let n: i64 = n.parse().unwrap();
                acked = Some(n);
                if n >= target {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked = acked.unwrap_or_else(|| panic!("round {round}: child output {seen:?}"));
        // The child may have acknowledged more batches before the kill landed (their
        // lines are still in the pipe): the upper bound counts those.
        let printed = lines
            .map_while(Result::ok)
            .filter_map(|l| l.strip_prefix("ack ").and_then(|n| n.parse::<i64>().ok()))
            .max()
            .unwrap_or(acked)
            .max(acked);
        let db = Db::open(d.path(), opts(), None).unwrap();
        let got = all(&db);
        for i in 0..10i64 {
            let l = ls(&[("__name__", "k"), ("s", &i.to_string())]);
            let s = &got[&l];
            // Every acknowledged batch is there, in order, with its exact value; at most one
            // unacknowledged (in-flight) batch more; nothing invented.
            assert!(
                s.len() as i64 > acked && s.len() as i64 <= printed + 2,
                "round {round}: {} samples, acked {acked} (last printed {printed})",
                s.len()
            );
            for (k, &(t, v)) in s.iter().enumerate() {
                let k = k as i64;
                assert_eq!((t, v), (k * 1000, ((k * 10 + i) as f64).to_bits()));
            }
        }
        // The next child continues after what is stored: it restarts at k=0, and every
        // sample it sends up to the stored maximum is an identical duplicate (ignored).
        drop(db);
    }
}

#[test]
fn flush_mid_chunk_then_append_and_flush_again() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(d.path(), opts(), None).unwrap();
    let l = ls(&[("__name__", "f")]);
    let mut want = vec![];
    for round in 0..3i64 {
        for k in 0..50i64 {
            let t = (round * 50 + k) * 1000;
            let mut app = db.appender();
            app.append_one(&l, t, t as f64);
            assert_eq!(app.commit().unwrap().appended, 1);
            want.push((t, (t as f64).to_bits()));
        }
        let metas = db.flush().unwrap();
        assert_eq!(metas.len(), 1);
        // Each block starts where the previous one ended (one past its newest sample).
        let start = if round == 0 { 0 } else { round * 50_000 - 999 };
        assert_eq!(metas[0].min_time, start);
        assert_eq!(metas[0].max_time, round * 50_000 + 49_001);
        assert_eq!(db.head_series(), 0);
    }
    assert_eq!(all(&db)[&l], want);
    drop(db);
    let db = Db::open(d.path(), opts(), None).unwrap();
    assert_eq!(all(&db)[&l], want);
    assert_eq!(db.block_metas().len(), 3);
}

#[test]
fn append_by_borrowed_pairs_matches_append_by_labels() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(d.path(), opts(), None).unwrap();
    let pairs = [("__name__", "up"), ("instance", "a:9100"), ("job", "node")];
    let l = ls(&pairs);
    let s = |t: i64| [Sample { t, v: t as f64 }];

    let mut app = db.appender();
    app.append_pairs(pairs.iter().copied(), &s(1000));
    app.append_pairs(std::iter::empty(), &s(1000));
    let out = app.commit().unwrap();
    assert_eq!(out.series_created, 1);
    assert_eq!(out.appended, 1);
    assert_eq!(out.invalid_labels, 1);
    let r = out.series_refs[0];
    assert_ne!(r, 0);
    assert_eq!(out.series_refs[1], 0);

    // The same series by owned labels and again by pairs: no new series, same ref.
    let mut app = db.appender();
    app.append(&l, &s(2000));
    app.append_pairs(pairs.iter().copied(), &s(3000));
    let out = app.commit().unwrap();
    assert_eq!(out.series_created, 0);
    assert_eq!(out.series_refs, vec![r, r]);
    assert_eq!(out.appended, 2);

    // Rejections are counted as for labels.
    let mut app = db.appender();
    app.append_pairs(pairs.iter().copied(), &s(500));
    let out = app.commit().unwrap();
    assert_eq!(out.out_of_order, 1);

    let got = all(&db);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[&l].iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![1000, 2000, 3000]
    );

    // WAL replay gives the series its labels back.
    db.close().unwrap();
    drop(db);
    let db = Db::open(d.path(), opts(), None).unwrap();
    assert_eq!(all(&db)[&l].len(), 3);
}

#[test]
fn pairs_of_a_series_removed_by_truncation_recreate_it_while_compacting() {
    // Series show up every 2h of sample time (so truncation removes them in between)
    // while another thread compacts all the time: every sample a commit reports as
    // appended must be in the database afterwards, whatever the interleaving.
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(
        d.path(),
        Options {
            block_duration: Duration::from_secs(3600),
            ..opts()
        },
        None,
    )
    .unwrap();
    let step = 10 * 60 * 1000;
    let rounds = 120i64;
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut appended = 0u64;
    let mut sent = 0u64;
    std::thread::scope(|sc| {
        let compactor = sc.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                db.compact().unwrap();
            }
        });
        for r in 0..rounds {
            let names: Vec<String> = (0..48)
                .filter(|i| (r + i) % 12 == 0 || *i == 0)
                .map(|i| format!("s{i}"))
                .collect();
            sent += names.len() as u64;
            let mut app = db.appender();
            for n in &names {
                app.append_pairs(
                    [("__name__", n.as_str()), ("job", "x")],
                    &[Sample {
                        t: r * step,
                        v: r as f64,
                    }],
                );
            }
            let out = app.commit().unwrap();
            assert_eq!(out.rejected(), 0, "round {r}: {out:?}");
            appended += out.appended;
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        compactor.join().unwrap();
    });
    db.flush().unwrap();
    assert!(db.block_metas().len() > 5);
    let total: usize = all(&db).values().map(Vec::len).sum();
    assert_eq!(total as u64, appended);
    assert_eq!(appended, sent);
}

/// The lazy head selection yields exactly what the eager one does, in the same order,
/// including names that are prefixes of others and values ranked past a long common key
/// prefix; it says when a label set is a prefix of the next one, and declines when a
/// block overlaps the range.
#[test]
fn lazy_head_select_equals_eager_select() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(d.path(), opts(), None).unwrap();
    let mut series = Vec::new();
    let mut seed = 7u64;
    for i in 0..3000u64 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let v = format!("{}", seed % 97);
        let inst = format!("10.0.{}.{}:9100", seed % 3, i % 50);
        let mut pairs = vec![
            ("__name__", "m"),
            ("instance", inst.as_str()),
            ("code", v.as_str()),
        ];
        match i % 4 {
            0 => pairs.push(("code_class", "x")),
            1 => pairs.push(("c", "y")),
            _ => {}
        }
        // Every 5th series has no sample in the queried range.
        let t = if i % 5 == 0 { 1_000 } else { 10 * H };
        series.push((ls(&pairs), [Sample { t, v: i as f64 }]));
    }
    let mut app = db.appender();
    for (l, s) in &series {
        app.append(l, s);
    }
    app.commit().unwrap();
    let m = [Matcher::new(MatchOp::Equal, "__name__", "m").unwrap()];
    let q = db.querier(5 * H, 11 * H);
    let eager: Vec<_> = q
        .select(&m)
        .unwrap()
        .into_iter()
        .map(|s| (s.labels, s.chunks))
        .collect();
    // Read in place: the same labels (from the keys) and chunk bytes, in the same order;
    // series without chunks in range are counted but have none.
    let sel = q.select_lazy(&m).expect("head only");
    let matched = sel.len();
    let mut in_place = Vec::new();
    for s in sel.iter_in_place() {
        let cs: Vec<_> = s
            .chunks()
            .iter()
            .map(|c| (c.min_time, c.max_time, c.encoding, c.data.to_vec()))
            .collect();
        if !cs.is_empty() {
            let mut key = Vec::new();
            s.write_key(&mut key);
            let labels = tsdb::head::labels_from_key(&key).expect("valid key");
            in_place.push((labels, cs));
        }
    }
    assert_eq!(in_place.len(), eager.len());
    assert!(in_place.len() > 2000, "{}", in_place.len());
    assert!(
        matched > in_place.len(),
        "series without samples in range are counted, not read"
    );
    let eager_raw: Vec<_> = eager
        .iter()
        .map(|(l, cs)| {
            let cs: Vec<_> = cs
                .iter()
                .map(|c| (c.min_time, c.max_time, c.encoding, c.data.to_vec()))
                .collect();
            (l.clone(), cs)
        })
        .collect();
    assert!(
        in_place == eager_raw,
        "lazy order or content differs from eager select"
    );

    // {__name__=p} is a prefix of {__name__=p, z=1}.
    let (p1, p2) = (
        ls(&[("__name__", "p")]),
        ls(&[("__name__", "p"), ("z", "1")]),
    );
    let mut app = db.appender();
    app.append(&p1, &[Sample { t: 10 * H, v: 1.0 }]);
    app.append(&p2, &[Sample { t: 10 * H, v: 1.0 }]);
    app.commit().unwrap();
    let p = [Matcher::new(MatchOp::Equal, "__name__", "p").unwrap()];
    assert!(
        !db.querier(5 * H, 11 * H)
            .select_lazy(&p)
            .unwrap()
            .prefix_free()
    );
    assert!(
        db.querier(5 * H, 11 * H)
            .select_lazy(&m)
            .unwrap()
            .prefix_free()
    );
    assert!(db.querier(5 * H, 11 * H).head_has_label("code_class"));
    assert!(!db.querier(5 * H, 11 * H).head_has_label("tenant_id"));
}

/// A flush while a writer keeps appending (a hashring hand-off flushes live tenants):
/// it ends although the head never empties, and every acknowledged sample is served
/// exactly once afterwards, from a block or from the head; a sample refused as out of
/// bounds was not acknowledged. Reopening gives the same.
#[test]
fn flush_under_concurrent_appends_ends_and_loses_no_acknowledged_sample() {
    let d = tempfile::tempdir().unwrap();
    let o = Options {
        block_duration: Duration::from_millis(H as u64),
        ..opts()
    };
    let db = Db::open(d.path(), o.clone(), None).unwrap();
    let series: Vec<Labels> = (0..20)
        .map(|i| ls(&[("__name__", "hand_off"), ("i", &i.to_string())]))
        .collect();
    // 90 minutes of history first, then a writer goes on at 1 sample/s/series.
    let mut app = db.appender();
    for s in &series {
        for t in 0..90 {
            app.append_one(s, t * 60_000, t as f64);
        }
    }
    app.commit().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop, series) = (db.clone(), stop.clone(), series.clone());
        std::thread::spawn(move || {
            let mut acked: BTreeMap<Labels, Vec<(i64, u64)>> = BTreeMap::new();
            let mut t = 90 * 60_000;
            while !stop.load(Ordering::SeqCst) {
                t += 1000;
                let mut app = db.appender();
                for s in &series {
                    app.append_one(s, t, t as f64);
                }
                let out = app.commit().unwrap();
                assert_eq!(out.out_of_bounds + out.appended, series.len() as u64);
                // A commit is all-or-nothing per series here: appended ones are acked.
                if out.out_of_bounds == 0 {
                    for s in &series {
                        acked
                            .entry(s.clone())
                            .or_default()
                            .push((t, (t as f64).to_bits()));
                    }
                }
            }
            acked
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let metas = db.flush().unwrap();
    assert!(!metas.is_empty());
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::SeqCst);
    let acked = writer.join().unwrap();
    let mut want: BTreeMap<Labels, Vec<(i64, u64)>> = BTreeMap::new();
    for s in &series {
        let v = want.entry(s.clone()).or_default();
        v.extend((0..90).map(|t| (t * 60_000, (t as f64).to_bits())));
        v.extend(acked.get(s).into_iter().flatten().copied());
    }
    assert_eq!(all(&db), want);
    assert!(
        db.head_series() > 0,
        "appends after the flush stay in the head"
    );
    drop(db);
    let db = Db::open(d.path(), o, None).unwrap();
    assert_eq!(all(&db), want);
}
