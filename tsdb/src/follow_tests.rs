//! A follower reads a data directory that a database keeps writing (the database
//! writes Prometheus's WAL and block formats): after every catch-up it answers exactly
//! what the database answers, and it never changes the directory.

use std::collections::BTreeMap;
use std::path::Path;

use storeapi::{Labels, MatchOp, Matcher};

use super::*;
use crate::db::{Db, Options};
use crate::wal::SyncPolicy;
use crate::wal::record::{SamplesRecord, put_series};

const HOUR: i64 = 3_600_000;

fn l(i: usize) -> Labels {
    Labels::from_pairs([("__name__", "f".to_string()), ("s", i.to_string())]).unwrap()
}

fn m() -> Matcher {
    Matcher::new(MatchOp::Equal, "__name__", "f").unwrap()
}

type All = BTreeMap<String, Vec<(i64, u64)>>;

fn all(q: &Querier) -> All {
    q.select_samples(&[m()])
        .unwrap()
        .into_iter()
        .map(|(ls, s)| {
            (
                format!("{ls:?}"),
                s.iter().map(|x| (x.t, x.v.to_bits())).collect(),
            )
        })
        .collect()
}

/// Equal, or a short account of the first difference.
#[track_caller]
fn same(got: &All, want: &All, what: &str) {
    if got == want {
        return;
    }
    let summary = |a: &All| -> Vec<(String, usize, Option<i64>, Option<i64>)> {
        a.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.len(),
                    v.first().map(|x| x.0),
                    v.last().map(|x| x.0),
                )
            })
            .take(3)
            .collect()
    };
    panic!(
        "{what}: follower {} series {:?}\ndatabase {} series {:?}",
        got.len(),
        summary(got),
        want.len(),
        summary(want)
    );
}

fn db_all(db: &Db) -> All {
    all(&db.querier(i64::MIN, i64::MAX))
}

fn f_all(f: &Follower) -> All {
    all(&f.querier(i64::MIN, i64::MAX))
}

fn options() -> Options {
    Options {
        wal_sync: SyncPolicy::Never,
        // Small segments: a few commits span several.
        wal_segment_size: 64 << 10,
        ..Options::default()
    }
}

/// Commits one sample per minute for `series` series over `[from, to)`.
fn write(db: &Db, series: usize, from: i64, to: i64) {
    let labels: Vec<Labels> = (0..series).map(l).collect();
    let mut t = from;
    while t < to {
        let mut app = db.appender();
        for (i, ls) in labels.iter().enumerate() {
            app.append_one(ls, t, (t / 1000 + i as i64) as f64);
        }
        app.commit().unwrap();
        t += 60_000;
    }
}

/// Every file and directory under `dir` with its size.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            out.push((
                e.path().display().to_string(),
                if md.is_dir() { 0 } else { md.len() },
            ));
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn follows_commits_segments_blocks_and_checkpoints() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(d.path(), options(), None).unwrap();
    write(&db, 20, 0, HOUR);
    let f = Follower::open(d.path(), 2 * HOUR).unwrap();
    let first = f_all(&f);
    assert_eq!(first.len(), 20);
    same(&first, &db_all(&db), "");

    // Appended to the segment being read, and new segments.
    write(&db, 30, HOUR, 4 * HOUR);
    f.catch_up().unwrap();
    same(&f_all(&f), &db_all(&db), "");
    assert_eq!(f.head_series(), 30);

    // A block cut, then more blocks, a checkpoint and deleted segments.
    assert!(!db.compact().unwrap().is_empty());
    f.catch_up().unwrap();
    same(&f_all(&f), &db_all(&db), "after the first block");
    assert_eq!(f.stats().blocks, 1);
    write(&db, 30, 4 * HOUR, 9 * HOUR);
    assert!(!db.compact().unwrap().is_empty());
    let st = f.catch_up().unwrap();
    same(&f_all(&f), &db_all(&db), "after more blocks");
    assert_eq!(st.blocks, db.block_metas().len());
    assert_eq!(st.unknown_series, 0);
    assert_eq!(st.damaged, 0);
    // The head holds what the database's head holds, not every sample ever read.
    assert_eq!(f.head().min_valid_time(), db.head().min_valid_time());
    assert_eq!(f.min_time(), db.min_time());
    assert_eq!(f.max_time(), db.max_time());

    // A range inside the blocks, one across the boundary and one in the head alone.
    for (a, b) in [(HOUR, 3 * HOUR), (5 * HOUR, 7 * HOUR), (8 * HOUR, 9 * HOUR)] {
        same(
            &all(&f.querier(a, b)),
            &all(&db.querier(a, b)),
            "[{a}, {b}]",
        );
    }
    let names = f.querier(0, 9 * HOUR).label_values("s", &[m()]).unwrap();
    assert_eq!(names.len(), 30);

    // Reading changes nothing in the directory.
    let before = listing(d.path());
    f.catch_up().unwrap();
    let again = Follower::open(d.path(), 2 * HOUR).unwrap();
    assert_eq!(listing(d.path()), before);
    same(
        &f_all(&again),
        &db_all(&db),
        "a new follower reads blocks and checkpoint",
    );
    db.close().unwrap();
}

/// A follower that was not asked while the database cut blocks and replaced the
/// segments it was reading with checkpoints reads the checkpoint and goes on.
#[test]
fn a_follower_that_fell_behind_reads_the_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(d.path(), options(), None).unwrap();
    write(&db, 10, 0, 30 * 60_000);
    let f = Follower::open(d.path(), 2 * HOUR).unwrap();
    for k in 0..4 {
        write(&db, 10, (1 + 2 * k) * HOUR, (3 + 2 * k) * HOUR);
        db.compact().unwrap();
    }
    let cps: Vec<_> = std::fs::read_dir(d.path().join("wal"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint."))
        .collect();
    assert!(!cps.is_empty(), "the database wrote no checkpoint");
    assert!(
        !d.path().join("wal/00000000").exists(),
        "segment 0 still there"
    );
    let st = f.catch_up().unwrap();
    same(&f_all(&f), &db_all(&db), "");
    assert!(st.checkpoints >= 1, "{st:?}");
    assert_eq!(st.unknown_series, 0, "{st:?}");
    db.close().unwrap();
}

/// A directory with an empty `wal/`, the path of its first segment, and a series record
/// of `n` series (refs 1..=n) for it.
fn hand_made_wal(n: usize) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("wal")).unwrap();
    let seg = d.path().join("wal/00000000");
    let mut series = vec![1u8];
    for i in 0..n {
        put_series(&mut series, i as u64 + 1, &l(i));
    }
    (d, seg, series)
}

/// A record is applied only once all of it is in the file; until then the follower
/// stops before it and reads it whole the next time.
#[test]
fn a_record_being_written_is_read_when_complete() {
    let (d, seg, series) = hand_made_wal(3);
    let mut samples = vec![2u8];
    let mut sr = SamplesRecord::default();
    // Large enough to cross a page: a record of several fragments.
    for k in 0..4000i64 {
        for r in 1..=3u64 {
            sr.push(&mut samples, r, k * 1000, (k * 10 + r as i64) as f64);
        }
    }
    let mut bytes = Vec::new();
    page::put_record(&mut bytes, 0, &series, false);
    let first = bytes.len();
    page::put_record(&mut bytes, 0, &samples, false);
    assert!(bytes.len() > PAGE + first, "the samples record spans pages");

    let cut = first + PAGE / 2 + 100;
    std::fs::write(&seg, &bytes[..cut]).unwrap();
    let f = Follower::open(d.path(), 2 * HOUR).unwrap();
    assert_eq!(f.head_series(), 3);
    assert!(
        f_all(&f).is_empty(),
        "no sample before the record is complete"
    );
    assert_eq!(f.stats().damaged, 0);

    std::fs::write(&seg, &bytes).unwrap();
    let st = f.catch_up().unwrap();
    let got = f_all(&f);
    assert_eq!(got.len(), 3, "{st:?}");
    assert!(got.values().all(|s| s.len() == 4000), "{:?}", st);
    assert_eq!(st.samples, 12_000);
    assert_eq!(st.damaged, 0);
    // Nothing more: a second catch-up appends nothing.
    assert_eq!(f.catch_up().unwrap().samples, 12_000);
}

#[test]
fn a_missing_directory_is_an_error_and_an_empty_one_is_empty() {
    let d = tempfile::tempdir().unwrap();
    assert!(matches!(
        Follower::open(d.path().join("nope"), 2 * HOUR),
        Err(FollowError::NotADirectory(_))
    ));
    let f = Follower::open(d.path(), 2 * HOUR).unwrap();
    assert!(f_all(&f).is_empty());
    assert_eq!(f.min_time(), i64::MAX);
}

/// Out-of-order samples (in the database's write-behind log, as in Prometheus's) are
/// served at once, and once when the database compacts them into out-of-order blocks.
#[test]
fn out_of_order_samples_are_followed_through_their_compaction() {
    let d = tempfile::tempdir().unwrap();
    let opts = Options {
        ooo_time_window: std::time::Duration::from_secs(3600),
        ..options()
    };
    let db = Db::open(d.path(), opts, None).unwrap();
    // Every other minute in order, then the minutes between out of order.
    let labels: Vec<Labels> = (0..5).map(l).collect();
    let commit = |ts: &[i64]| {
        for &t in ts {
            let mut app = db.appender();
            for (i, ls) in labels.iter().enumerate() {
                app.append_one(ls, t, (t / 1000 + i as i64) as f64);
            }
            let out = app.commit().unwrap();
            assert_eq!(out.rejected(), 0, "{out:?}");
        }
    };
    let even: Vec<i64> = (0..100).map(|k| k * 120_000).collect();
    commit(&even);
    let f = Follower::open(d.path(), 2 * HOUR).unwrap();
    let odd: Vec<i64> = (70..100).map(|k| k * 120_000 + 60_000).collect();
    commit(&odd);
    let st = f.catch_up().unwrap();
    let got = f_all(&f);
    same(&got, &db_all(&db), "out-of-order samples in the head");
    assert_eq!(got.values().next().unwrap().len(), 130, "{st:?}");

    // Compaction: out-of-order blocks, then in-order ones; the write-behind log's
    // segments go.
    assert!(!db.compact().unwrap().is_empty());
    assert!(
        db.block_metas().iter().any(|m| m
            .compaction
            .hints
            .iter()
            .any(|h| h == crate::db::HINT_FROM_OOO)),
        "no out-of-order block"
    );
    f.catch_up().unwrap();
    same(
        &f_all(&f),
        &db_all(&db),
        "after the out-of-order compaction",
    );
    // More out of order after it.
    let late: Vec<i64> = (90..99).map(|k| k * 120_000 + 30_000).collect();
    commit(&late);
    let st = f.catch_up().unwrap();
    same(&f_all(&f), &db_all(&db), "new out-of-order samples");
    assert_eq!(st.unknown_series, 0, "{st:?}");
    assert_eq!(st.segments_missed, 0, "{st:?}");
    let fresh = Follower::open(d.path(), 2 * HOUR).unwrap();
    same(&f_all(&fresh), &db_all(&db), "a new follower");
    db.close().unwrap();
}

/// A segment written again under its own name (Prometheus's WAL repair after a crash
/// replaces the damaged segment and makes the next one anew) is read again from its
/// start: what is written to the new file is not missed.
#[test]
fn a_segment_written_again_under_its_name_is_read_again() {
    let (d, seg, series) = hand_made_wal(1);
    let record = |from: i64, to: i64| {
        let mut b = vec![2u8];
        let mut sr = SamplesRecord::default();
        for k in from..to {
            sr.push(&mut b, 1, k * 1000, k as f64);
        }
        b
    };
    let mut bytes = Vec::new();
    page::put_record(&mut bytes, 0, &series, false);
    page::put_record(&mut bytes, 0, &record(0, 10), false);
    std::fs::write(&seg, &bytes).unwrap();
    let f = Follower::open(d.path(), 2 * HOUR).unwrap();
    assert_eq!(f_all(&f).values().next().map(Vec::len), Some(10));

    // The same records and one more, in a new file under the same name.
    page::put_record(&mut bytes, 0, &record(10, 20), false);
    let tmp = d.path().join("wal/00000000.new");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, &seg).unwrap();
    let st = f.catch_up().unwrap();
    assert_eq!(f_all(&f).values().next().map(Vec::len), Some(20), "{st:?}");
    assert_eq!(st.damaged, 0);
}
