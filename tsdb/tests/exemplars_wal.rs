//! Exemplars through the WAL: stored exemplars are logged as Prometheus's exemplar
//! records, replayed after a crash, and kept by the WAL checkpoint compaction writes.

use std::time::Duration;

use storeapi::{Labels, MatchOp, Matcher, Sample};
use tsdb::exemplars::{Added, Exemplar};
use tsdb::{Db, Options, SyncPolicy};

const M: i64 = 60_000;

fn ls(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs.iter().copied()).unwrap()
}

fn opts(max_exemplars: usize) -> Options {
    Options {
        block_duration: Duration::from_secs(7200),
        wal_sync: SyncPolicy::Always,
        max_exemplars,
        ..Options::default()
    }
}

fn all(db: &Db) -> Vec<(Labels, Vec<Exemplar>)> {
    let m = vec![Matcher::new(MatchOp::RegexMatch, "__name__", ".+").unwrap()];
    db.exemplars()
        .select(i64::MIN, i64::MAX, &[m])
        .into_iter()
        .map(|s| (s.series, s.exemplars))
        .collect()
}

fn ex(trace: &str, value: f64, t: i64) -> Exemplar {
    Exemplar {
        labels: ls(&[("trace_id", trace)]),
        value,
        t,
    }
}

#[test]
fn exemplars_survive_a_crash_and_a_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let a = ls(&[("__name__", "req_total")]);
    let b = ls(&[("__name__", "only_exemplars")]);
    let t0 = 1_780_000_000_000 / (2 * 60 * M) * (2 * 60 * M);
    {
        let db = Db::open(d.path(), opts(10), None).unwrap();
        let mut app = db.appender();
        app.append(&a, &[Sample { t: t0, v: 1.0 }]);
        app.commit().unwrap();
        let v = db
            .add_exemplars(&[
                (a.clone(), ex("aa", 1.0, t0)),
                (a.clone(), ex("aa", 1.0, t0)),
                (b.clone(), ex("bb", 2.0, t0 + 1)),
                (a.clone(), ex("old", 1.0, t0 - 5)),
            ])
            .unwrap();
        assert_eq!(v[0], Ok(Added::Stored));
        assert_eq!(v[1], Ok(Added::Duplicate));
        assert_eq!(v[2], Ok(Added::Stored), "an exemplar-only series");
        assert!(v[3].is_err(), "out of order");
        // Crash: no close.
    }
    let want = vec![
        (b.clone(), vec![ex("bb", 2.0, t0 + 1)]),
        (a.clone(), vec![ex("aa", 1.0, t0)]),
    ];
    let sorted = |mut v: Vec<(Labels, Vec<Exemplar>)>| {
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    let db = Db::open(d.path(), opts(10), None).unwrap();
    assert_eq!(sorted(all(&db)), sorted(want.clone()), "after the crash");

    // Compaction cuts a block and checkpoints the WAL: series `a` stays in the head
    // (newer samples), so its exemplar is kept by the checkpoint.
    let mut app = db.appender();
    let later: Vec<Sample> = (1..=200)
        .map(|i| Sample {
            t: t0 + i * M,
            v: i as f64,
        })
        .collect();
    app.append(&a, &later);
    app.commit().unwrap();
    db.add_exemplars(&[(a.clone(), ex("cc", 3.0, t0 + 200 * M))])
        .unwrap();
    assert!(!db.compact().unwrap().is_empty(), "a block was cut");
    assert!(
        std::fs::read_dir(d.path().join("wal")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("checkpoint.")),
        "a checkpoint was written"
    );
    drop(db);
    let db = Db::open(d.path(), opts(10), None).unwrap();
    let got = all(&db);
    let a_ex: Vec<&Exemplar> = got
        .iter()
        .filter(|(l, _)| *l == a)
        .flat_map(|(_, e)| e)
        .collect();
    assert_eq!(
        a_ex,
        vec![&ex("aa", 1.0, t0), &ex("cc", 3.0, t0 + 200 * M)],
        "after the checkpoint"
    );
    drop(db);
    // Exemplar storage off: the records are skipped, nothing fails.
    let db = Db::open(d.path(), opts(0), None).unwrap();
    assert!(all(&db).is_empty());
}
