//! The appendable window (one per commit, Prometheus's rule), the too-far-in-future
//! limit, and a head whose newest sample is already in the future.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use storeapi::{Labels, MatchOp, Matcher, Sample};
use tsdb::{Clock, Db, Options, SyncPolicy};

const M: i64 = 60_000;
const H: i64 = 60 * M;
/// "Now" of the pinned clock: 2026-05-28T20:26:40Z, not a multiple of any block range.
const NOW: i64 = 1_780_000_000_000;
const YEAR: i64 = 365 * 24 * H;

fn ls(name: &str) -> Labels {
    Labels::from_pairs([("__name__", name)]).unwrap()
}

/// A clock the test moves.
fn clock(at: i64) -> (Clock, Arc<AtomicI64>) {
    let now = Arc::new(AtomicI64::new(at));
    let n = now.clone();
    (Clock::from_fn(move || n.load(Ordering::SeqCst)), now)
}

fn opts(block: Duration, future: Option<Duration>, clock: Clock) -> Options {
    Options {
        block_duration: block,
        wal_sync: SyncPolicy::Never,
        too_far_in_future: future,
        clock,
        ..Options::default()
    }
}

fn every(from: i64, to: i64, step: i64) -> Vec<Sample> {
    (0..)
        .map(|i| from + i * step)
        .take_while(|&t| t <= to)
        .map(|t| Sample { t, v: t as f64 })
        .collect()
}

fn stored(db: &Db, name: &str) -> Vec<i64> {
    let q = db.querier(i64::MIN, i64::MAX);
    q.select_samples(&[Matcher::new(MatchOp::Equal, "__name__", name).unwrap()])
        .unwrap()
        .into_iter()
        .flat_map(|(_, s)| s.into_iter().map(|s| s.t))
        .collect()
}

#[test]
fn first_request_spanning_20m_on_a_2m_block_head_is_accepted_whole() {
    let d = tempfile::tempdir().unwrap();
    let (c, now) = clock(NOW);
    let db = Db::open(d.path(), opts(Duration::from_secs(120), None, c), None).unwrap();
    let a = ls("a");
    let samples = every(NOW - 20 * M, NOW, 15_000);
    let mut app = db.appender();
    app.append(&a, &samples);
    let out = app.commit().unwrap();
    assert_eq!(out.rejected(), 0, "{out:?}");
    assert_eq!(out.appended, samples.len() as u64);

    // The next request, in order, spans another 20 minutes: its window is fixed from
    // the head before it (max − 1m), not advanced sample by sample.
    let mut app = db.appender();
    app.append(&a, &every(NOW + 15_000, NOW + 20 * M, 15_000));
    app.append_pairs(
        [("__name__", "b")],
        &every(NOW - 50_000, NOW + 20 * M, 15_000),
    );
    let out = app.commit().unwrap();
    assert_eq!(out.rejected(), 0, "{out:?}");
    // Twenty minutes later the window is NOW+19m: one minute back is fine, two are out
    // of bounds.
    now.store(NOW + 20 * M, Ordering::SeqCst);
    let mut app = db.appender();
    app.append_pairs(
        [("__name__", "c")],
        &[Sample {
            t: NOW + 19 * M,
            v: 1.0,
        }],
    );
    app.append_pairs(
        [("__name__", "d")],
        &[Sample {
            t: NOW + 18 * M,
            v: 1.0,
        }],
    );
    let out = app.commit().unwrap();
    assert_eq!((out.appended, out.out_of_bounds), (1, 1), "{out:?}");
}

#[test]
fn on_an_empty_head_the_window_starts_at_the_first_sample_as_in_prometheus() {
    // Prometheus's initAppender sets the head's time range from the first appended
    // sample; the batch's window is then that sample − chunk_range/2.
    let d = tempfile::tempdir().unwrap();
    let (c, _) = clock(NOW);
    let db = Db::open(d.path(), opts(Duration::from_secs(120), None, c), None).unwrap();
    let mut app = db.appender();
    app.append_pairs([("__name__", "new")], &[Sample { t: NOW, v: 1.0 }]);
    app.append_pairs([("__name__", "old")], &every(NOW - 3 * M, NOW, 30_000));
    let out = app.commit().unwrap();
    // Window NOW−1m: NOW−3m … NOW−1m30s refused, NOW−1m … NOW accepted.
    assert_eq!(out.out_of_bounds, 4, "{out:?}");
    assert_eq!(stored(&db, "old"), vec![NOW - M, NOW - 30_000, NOW]);
}

#[test]
fn samples_too_far_in_future_are_refused_and_the_rest_written() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = clock(NOW);
    let limit = Duration::from_secs(600);
    let db = Db::open(
        d.path(),
        opts(Duration::from_secs(7200), Some(limit), c),
        None,
    )
    .unwrap();
    let mut app = db.appender();
    app.append_pairs([("__name__", "cur")], &[Sample { t: NOW, v: 1.0 }]);
    app.append_pairs(
        [("__name__", "year")],
        &[Sample {
            t: NOW + YEAR,
            v: 1.0,
        }],
    );
    app.append_pairs(
        [("__name__", "max")],
        &[Sample {
            t: i64::MAX,
            v: 1.0,
        }],
    );
    app.append_pairs(
        [("__name__", "inside")],
        &[Sample {
            t: NOW + 10 * M,
            v: 1.0,
        }],
    );
    app.append_pairs(
        [("__name__", "outside")],
        &[Sample {
            t: NOW + 10 * M + 1,
            v: 1.0,
        }],
    );
    let out = app.commit().unwrap();
    assert_eq!(out.too_far_in_future, 3, "{out:?}");
    assert_eq!(out.appended, 2, "{out:?}");
    assert_eq!(out.max_valid_time, NOW + 10 * M);
    let first = out.first_rejection.unwrap();
    assert_eq!(first.reason, tsdb::RejectReason::TooFarInFuture);
    assert_eq!((first.series_index, first.t), (1, NOW + YEAR));
    assert!(stored(&db, "year").is_empty() && stored(&db, "max").is_empty());

    // Valid current writes keep working, also older ones within the window.
    let mut app = db.appender();
    app.append_pairs(
        [("__name__", "cur")],
        &[Sample {
            t: NOW + 15_000,
            v: 2.0,
        }],
    );
    app.append_pairs(
        [("__name__", "other")],
        &[Sample {
            t: NOW - 50 * M,
            v: 2.0,
        }],
    );
    let out = app.commit().unwrap();
    assert_eq!((out.appended, out.rejected()), (2, 0), "{out:?}");
}

/// A head whose newest sample is a year (or i64::MAX) ahead — written with the limit
/// off, before it existed, or before the clock jumped back — keeps taking current data,
/// compaction cuts only current data, retention deletes nothing because of it, and all
/// of this survives a restart (WAL replay).
#[test]
fn a_head_already_in_the_future_does_not_lock_the_database() {
    for future in [NOW + YEAR, i64::MAX] {
        let d = tempfile::tempdir().unwrap();
        let (c, now) = clock(NOW);
        let o = opts(Duration::from_secs(7200), None, c);
        let db = Db::open(d.path(), o.clone(), None).unwrap();
        let mut app = db.appender();
        app.append_pairs([("__name__", "poison")], &[Sample { t: future, v: 1.0 }]);
        let out = app.commit().unwrap();
        assert_eq!(out.appended, 1);

        // Current samples of other series: accepted (Prometheus's window would be
        // `future − 1h` and refuse them all).
        let mut app = db.appender();
        app.append_pairs([("__name__", "cur")], &every(NOW - 30 * M, NOW, 15_000));
        let out = app.commit().unwrap();
        assert_eq!(out.rejected(), 0, "future={future}: {out:?}");
        // The poisoned series itself refuses older samples as out of order.
        let mut app = db.appender();
        app.append_pairs([("__name__", "poison")], &[Sample { t: NOW, v: 2.0 }]);
        assert_eq!(app.commit().unwrap().out_of_order, 1);

        // Compaction is not due (current data spans 30m) and cuts nothing.
        assert!(db.compact().unwrap().is_empty());
        // Four hours later, with data all along: compaction cuts current blocks only,
        // quickly, and the head keeps taking current samples.
        let mut blocks = 0;
        for step in 1..=16 {
            let t = NOW + step * 15 * M;
            now.store(t, Ordering::SeqCst);
            let mut app = db.appender();
            app.append_pairs(
                [("__name__", "cur")],
                &every(t - 15 * M + 15_000, t, 15_000),
            );
            let out = app.commit().unwrap();
            assert_eq!(out.rejected(), 0, "step {step}: {out:?}");
            let started = std::time::Instant::now();
            blocks += db.compact().unwrap().len();
            assert!(started.elapsed() < Duration::from_secs(5));
        }
        assert!((1..=2).contains(&blocks), "blocks cut: {blocks}");
        for m in db.block_metas() {
            assert!(m.max_time <= NOW + 4 * H, "{m:?}");
        }
        assert!(db.head().min_valid_time() <= NOW + 4 * H - H);
        // Retention (15d) deleted nothing although the newest sample is far ahead.
        assert_eq!(db.block_metas().len(), blocks);
        assert_eq!(stored(&db, "poison"), vec![future]);
        let cur = stored(&db, "cur");
        assert_eq!(cur.len(), every(NOW - 30 * M, NOW + 4 * H, 15_000).len());

        // Restart: replay keeps the future sample and current writes still succeed.
        db.close().unwrap();
        drop(db);
        let db = Db::open(d.path(), o.clone(), None).unwrap();
        assert_eq!(stored(&db, "poison"), vec![future]);
        let mut app = db.appender();
        app.append_pairs(
            [("__name__", "cur")],
            &[Sample {
                t: NOW + 4 * H + 15_000,
                v: 1.0,
            }],
        );
        app.append_pairs(
            [("__name__", "new")],
            &[Sample {
                t: NOW + 4 * H - 20 * M,
                v: 1.0,
            }],
        );
        let out = app.commit().unwrap();
        assert_eq!(out.rejected(), 0, "future={future}: {out:?}");
    }
}

/// What a StoreAPI advertises as its min time must cover every sample a commit may
/// still add: a querier caches it between Info calls.
#[test]
fn queryable_min_time_covers_what_the_window_still_accepts() {
    let d = tempfile::tempdir().unwrap();
    let (c, _) = clock(NOW);
    let db = Db::open(d.path(), opts(Duration::from_secs(7200), None, c), None).unwrap();
    // Empty: any timestamp may arrive next.
    assert_eq!(db.queryable_min_time(), i64::MIN);
    let (la, lb, lc) = (ls("a"), ls("b"), ls("c"));
    let mut app = db.appender();
    app.append(&la, &every(NOW - 10 * M, NOW, 15_000));
    assert_eq!(app.commit().unwrap().rejected(), 0);
    assert_eq!(db.min_time(), NOW - 10 * M);
    // A 2h block range accepts down to max − 1h, older than anything stored...
    assert_eq!(db.queryable_min_time(), NOW - H);
    // ...and a sample there is accepted and then inside the advertised range.
    let mut app = db.appender();
    app.append(&lb, &[Sample { t: NOW - H, v: 1.0 }]);
    assert_eq!(app.commit().unwrap().rejected(), 0);
    assert!(db.queryable_min_time() <= NOW - H);
    assert_eq!(stored(&db, "b"), [NOW - H]);
    // Once the stored data reaches further back than the window, that is the bound.
    let mut app = db.appender();
    app.append(&lc, &every(NOW + 30 * M, NOW + 31 * M, 15_000));
    assert_eq!(app.commit().unwrap().rejected(), 0);
    assert_eq!(db.queryable_min_time(), NOW - H);
}
