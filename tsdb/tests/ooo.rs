//! Out-of-order samples (`Options::ooo_time_window`): accepted inside the window,
//! queryable at once, durable through the write-behind log, written into their own
//! blocks at compaction, each sample once.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use storeapi::{Labels, MatchOp, Matcher, Sample};
use tsdb::db::HINT_FROM_OOO;
use tsdb::{Clock, Db, Options, SyncPolicy};

const M: i64 = 60_000;
const H: i64 = 60 * M;
/// "Now" of the pinned clock, a multiple of 2h plus 3h10m.
const NOW: i64 = 1_780_005_600_000 + 3 * H + 10 * M;

fn ls(name: &str) -> Labels {
    Labels::from_pairs([("__name__", name)]).unwrap()
}

fn opts(window: Duration, sync: SyncPolicy) -> Options {
    let now = Arc::new(AtomicI64::new(NOW));
    Options {
        block_duration: Duration::from_secs(7200),
        wal_sync: sync,
        ooo_time_window: window,
        clock: Clock::from_fn(move || now.load(Ordering::SeqCst)),
        ..Options::default()
    }
}

fn stored(db: &Db, name: &str) -> Vec<(i64, f64)> {
    let q = db.querier(i64::MIN, i64::MAX);
    q.select_samples(&[Matcher::new(MatchOp::Equal, "__name__", name).unwrap()])
        .unwrap()
        .into_iter()
        .flat_map(|(_, s)| s.into_iter().map(|s| (s.t, s.v)))
        .collect()
}

/// A deterministic shuffle (xorshift), so a failure reproduces.
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

/// Samples every 15 s over the 50 minutes before NOW, for series a, b, c.
fn dataset() -> Vec<(&'static str, i64, f64)> {
    let mut all = Vec::new();
    for name in ["a", "b", "c"] {
        for i in 0..200 {
            let t = NOW - 50 * M + i * 15_000;
            all.push((name, t, (t / 1000) as f64 + name.len() as f64));
        }
    }
    all
}

fn ingest_shuffled(db: &Db, seed: u64) -> u64 {
    let mut all = dataset();
    shuffle(&mut all, seed);
    let labels: Vec<Labels> = ["a", "b", "c"].iter().map(|n| ls(n)).collect();
    let mut appended = 0;
    for batch in all.chunks(17) {
        let mut app = db.appender();
        for &(name, t, v) in batch {
            let l = &labels[["a", "b", "c"].iter().position(|n| *n == name).unwrap()];
            app.append(l, &[Sample { t, v }]);
        }
        let out = app.commit().unwrap();
        assert_eq!(out.rejected(), 0, "{out:?}");
        appended += out.appended;
    }
    appended
}

fn expected(name: &str) -> Vec<(i64, f64)> {
    let mut v: Vec<(i64, f64)> = dataset()
        .into_iter()
        .filter(|s| s.0 == name)
        .map(|s| (s.1, s.2))
        .collect();
    v.sort_by_key(|s| s.0);
    v
}

#[test]
fn shuffled_stream_inside_the_window_is_kept_whole_and_in_order() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(
        d.path(),
        opts(Duration::from_secs(3600), SyncPolicy::Never),
        None,
    )
    .unwrap();
    let n = ingest_shuffled(&db, 42);
    assert_eq!(n, 600);
    for name in ["a", "b", "c"] {
        assert_eq!(stored(&db, name), expected(name), "series {name}");
    }
    // Out-of-order samples were taken: the shuffle is not in order.
    assert!(db.metrics().ooo_samples_appended.get() > 100);
    // A repeat (same timestamp, same value) is not refused; as in Prometheus it is
    // only recognised inside the open out-of-order chunk, else stored again — and read
    // once either way.
    let l = ls("a");
    let first = expected("a")[0];
    for _ in 0..2 {
        let mut app = db.appender();
        app.append(
            &l,
            &[Sample {
                t: first.0,
                v: first.1,
            }],
        );
        let out = app.commit().unwrap();
        assert_eq!(out.rejected(), 0, "{out:?}");
    }
    assert_eq!(stored(&db, "a"), expected("a"));
    // Outside the window: refused as before.
    let mut app = db.appender();
    app.append(
        &l,
        &[Sample {
            t: NOW - 2 * H,
            v: 1.0,
        }],
    );
    let out = app.commit().unwrap();
    assert_eq!(out.appended, 0);
    assert_eq!(out.rejected(), 1, "{out:?}");
    assert_eq!(stored(&db, "a"), expected("a"));
}

#[test]
fn without_a_window_out_of_order_samples_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(d.path(), opts(Duration::ZERO, SyncPolicy::Never), None).unwrap();
    let l = ls("a");
    let mut app = db.appender();
    app.append(&l, &[Sample { t: NOW, v: 1.0 }]);
    app.commit().unwrap();
    let mut app = db.appender();
    app.append(&l, &[Sample { t: NOW - M, v: 1.0 }]);
    let out = app.commit().unwrap();
    assert_eq!(out.out_of_order, 1);
    assert!(!d.path().join("wbl").exists());
}

#[test]
fn out_of_order_samples_survive_a_crash_through_the_write_behind_log() {
    let d = tempfile::tempdir().unwrap();
    {
        let db = Db::open(
            d.path(),
            opts(Duration::from_secs(3600), SyncPolicy::Always),
            None,
        )
        .unwrap();
        ingest_shuffled(&db, 7);
        // Dropped without close: what a SIGKILL leaves.
    }
    assert!(d.path().join("wbl/00000000").is_file());
    let db = Db::open(
        d.path(),
        opts(Duration::from_secs(3600), SyncPolicy::Always),
        None,
    )
    .unwrap();
    for name in ["a", "b", "c"] {
        assert_eq!(stored(&db, name), expected(name), "series {name}");
    }
    // Replayed even when the window was turned off since: acknowledged data stays.
    drop(db);
    let db = Db::open(d.path(), opts(Duration::ZERO, SyncPolicy::Always), None).unwrap();
    assert_eq!(stored(&db, "b"), expected("b"));
}

#[test]
fn compaction_writes_out_of_order_blocks_and_truncates_the_log() {
    let d = tempfile::tempdir().unwrap();
    let o = || opts(Duration::from_secs(2 * 3600), SyncPolicy::Always);
    let db = Db::open(d.path(), o(), None).unwrap();
    let l = ls("a");
    let base = NOW - 3 * H - 10 * M; // a multiple of 2h
    // In order: one sample a minute over 3h10m.
    let in_order: Vec<Sample> = (0..=190)
        .map(|i| Sample {
            t: base + i * M,
            v: i as f64,
        })
        .collect();
    let mut app = db.appender();
    app.append(&l, &in_order);
    assert_eq!(app.commit().unwrap().appended, 191);
    let written = db.compact().unwrap();
    assert_eq!(written.len(), 1, "the first 2h block");
    // Out of order, inside the 2h window: one in the range already in a block, one
    // in the head's range.
    let late = [
        Sample {
            t: base + 90 * M + 30_000,
            v: -1.0,
        },
        Sample {
            t: base + 150 * M + 30_000,
            v: -2.0,
        },
    ];
    let mut app = db.appender();
    app.append(&l, &late);
    let out = app.commit().unwrap();
    assert_eq!((out.appended, out.ooo_appended), (2, 2), "{out:?}");
    let mut want: Vec<(i64, f64)> = in_order.iter().map(|s| (s.t, s.v)).collect();
    want.extend(late.iter().map(|s| (s.t, s.v)));
    want.sort_by_key(|s| s.0);
    assert_eq!(stored(&db, "a"), want, "queryable before compaction");

    let written = db.flush().unwrap();
    let ooo: Vec<_> = written
        .iter()
        .filter(|m| m.compaction.hints.iter().any(|h| h == HINT_FROM_OOO))
        .collect();
    assert_eq!(
        ooo.len(),
        2,
        "one out-of-order block per 2h range: {written:#?}"
    );
    assert_eq!(ooo.iter().map(|m| m.stats.num_samples).sum::<u64>(), 2);
    assert_eq!(stored(&db, "a"), want, "after compaction");
    // The log that held them is gone.
    let segs: Vec<_> = std::fs::read_dir(d.path().join("wbl"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(segs.len(), 1, "only the current segment: {segs:?}");
    drop(db);
    // Reopened: every sample once (none replayed twice from the log).
    let db = Db::open(d.path(), o(), None).unwrap();
    assert_eq!(stored(&db, "a"), want, "after reopening");
}

fn hist(k: u64) -> storeapi::histogram::HistogramValue {
    use storeapi::histogram::{FloatHistogram, Histogram, HistogramValue, Span};
    let spans = vec![Span {
        offset: 0,
        length: 2,
    }];
    if k % 5 == 4 {
        // Every fifth one a float histogram: the flavour changes inside the stream.
        return HistogramValue::Float(Box::new(FloatHistogram {
            schema: 0,
            count: 2.0 * k as f64,
            sum: k as f64,
            positive_spans: spans,
            positive_buckets: vec![k as f64, k as f64],
            ..Default::default()
        }));
    }
    HistogramValue::Int(Box::new(Histogram {
        schema: 0,
        count: 2 * k,
        sum: k as f64,
        positive_spans: spans,
        // Deltas: k, then +0.
        positive_buckets: vec![k as i64, 0],
        ..Default::default()
    }))
}

fn stored_histograms(db: &Db, name: &str) -> Vec<(i64, f64)> {
    let q = db.querier(i64::MIN, i64::MAX);
    q.select(&[Matcher::new(MatchOp::Equal, "__name__", name).unwrap()])
        .unwrap()
        .into_iter()
        .flat_map(|s| s.histograms(i64::MIN, i64::MAX).unwrap())
        .map(|x| {
            let sum = match x.h {
                storeapi::histogram::HistogramValue::Int(h) => h.sum,
                storeapi::histogram::HistogramValue::Float(h) => h.sum,
            };
            (x.t, sum)
        })
        .collect()
}

#[test]
fn native_histograms_out_of_order_are_kept_logged_and_compacted() {
    use storeapi::histogram::HistogramSample;
    let d = tempfile::tempdir().unwrap();
    let o = || opts(Duration::from_secs(3600), SyncPolicy::Always);
    let l = ls("h");
    let mut ts: Vec<i64> = (0..100).map(|i| NOW - 50 * M + i * 30_000).collect();
    shuffle(&mut ts[1..], 3);
    ts.swap(0, 99);
    let want: Vec<(i64, f64)> = {
        let mut w: Vec<(i64, f64)> = ts
            .iter()
            .map(|&t| (t, ((t - NOW + 50 * M) / 30_000) as f64))
            .collect();
        w.sort_by_key(|x| x.0);
        w
    };
    {
        let db = Db::open(d.path(), o(), None).unwrap();
        for batch in ts.chunks(7) {
            let mut app = db.appender();
            app.append_histograms(
                &l,
                batch.iter().map(|&t| HistogramSample {
                    t,
                    h: hist(((t - NOW + 50 * M) / 30_000) as u64),
                }),
            );
            let out = app.commit().unwrap();
            assert_eq!(out.rejected(), 0, "{out:?}");
        }
        assert!(db.metrics().ooo_samples_appended.get() > 50);
        assert_eq!(stored_histograms(&db, "h"), want, "before the crash");
    }
    // Crashed: the write-behind log brings them back.
    let db = Db::open(d.path(), o(), None).unwrap();
    assert_eq!(stored_histograms(&db, "h"), want, "after the crash");
    // Written into blocks: the same samples, each once, also after reopening.
    let written = db.flush().unwrap();
    assert!(
        written
            .iter()
            .any(|m| m.compaction.hints.iter().any(|h| h == HINT_FROM_OOO)),
        "{written:#?}"
    );
    assert_eq!(stored_histograms(&db, "h"), want, "after compaction");
    drop(db);
    let db = Db::open(d.path(), o(), None).unwrap();
    assert_eq!(stored_histograms(&db, "h"), want, "after reopening");
}
