//! Commits through a WAL whose writes fail (disk full, EIO, short writes): what a client
//! was told was written must be there after a restart, including a retry that the head
//! answers as all duplicates.

use std::sync::Arc;

use storeapi::Labels;

use super::*;
use crate::wal::file::faults::{Fault, SharedPlan};

fn l(i: usize) -> Labels {
    Labels::from_pairs([("__name__", "f".to_string()), ("s", i.to_string())]).unwrap()
}

/// Opens `dir` and swaps in a WAL writer whose segment files fail as `plan` says.
fn open_faulty(dir: &Path, plan: &SharedPlan) -> Db {
    let mut db = Db::open(dir, Options::default(), None).unwrap();
    let inner = Arc::get_mut(&mut db.inner).expect("sole owner right after open");
    let seg = inner.wal.current_segment();
    inner.wal = Wal::create_with_faults(
        &dir.join("wal"),
        Some(seg),
        1 << 20,
        inner.metrics.clone(),
        plan.clone(),
    )
    .unwrap();
    db
}

fn commit(db: &Db, batch: i64) -> Result<AppendOutcome, DbError> {
    let labels: Vec<Labels> = (0..10).map(l).collect();
    let mut app = db.appender();
    for (i, ls) in labels.iter().enumerate() {
        app.append_one(ls, batch * 1000, (batch * 100 + i as i64) as f64);
    }
    app.commit()
}

fn samples_after_reopen(dir: &Path) -> Vec<(i64, f64)> {
    let db = Db::open(dir, Options::default(), None).unwrap();
    let q = db.querier(i64::MIN, i64::MAX);
    let m = storeapi::Matcher::new(storeapi::MatchOp::Equal, "__name__", "f").unwrap();
    let mut out = Vec::new();
    for (_, s) in q.select_samples(&[m]).unwrap() {
        out.extend(s.iter().map(|x| (x.t, x.v)));
    }
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

/// The hole this closes: batch 1's commit fails after its samples reached the head; the
/// client retries; once space is back the retry is all duplicates in the head. It must
/// not be acknowledged before batch 1's records are in the log.
#[test]
fn retry_of_a_failed_commit_is_only_acknowledged_once_logged() {
    for fault in [
        Fault::Enospc(0),
        Fault::Enospc(37),
        Fault::Eio(100),
        Fault::Short(5),
    ] {
        let d = tempfile::tempdir().unwrap();
        let plan = SharedPlan::default();
        {
            let db = open_faulty(d.path(), &plan);
            commit(&db, 0).unwrap();
            plan.lock().unwrap().next.push_back(Some(fault));
            assert!(commit(&db, 1).is_err(), "{fault:?}");
            plan.lock().unwrap().full = true;
            let e = commit(&db, 1).unwrap_err().to_string();
            assert!(e.contains("No space left on device"), "{e}");
            assert_eq!(db.metrics().wal_write_failing.get(), 1);
            plan.lock().unwrap().full = false;
            let out = commit(&db, 1).unwrap();
            assert_eq!((out.appended, out.duplicates_ignored), (0, 10), "{fault:?}");
            assert_eq!(db.metrics().wal_write_failing.get(), 0);
            commit(&db, 2).unwrap();
            db.close().unwrap();
        }
        let got = samples_after_reopen(d.path());
        let want: Vec<(i64, f64)> = (0..3i64)
            .flat_map(|b| (0..10i64).map(move |i| (b * 1000, (b * 100 + i) as f64)))
            .collect();
        let mut want = want;
        want.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(got, want, "{fault:?}");
    }
}

/// While the WAL cannot be written, commits are refused before they change the head:
/// new samples are not half-applied (a retry later appends them normally).
#[test]
fn commits_while_full_leave_the_head_alone() {
    let d = tempfile::tempdir().unwrap();
    let plan = SharedPlan::default();
    {
        let db = open_faulty(d.path(), &plan);
        plan.lock().unwrap().full = true;
        assert!(commit(&db, 0).is_err());
        let series_after_first_failure = db.head_series();
        for b in 1..5 {
            assert!(commit(&db, b).is_err());
        }
        assert_eq!(db.head_series(), series_after_first_failure);
        plan.lock().unwrap().full = false;
        for b in 1..5 {
            assert_eq!(commit(&db, b).unwrap().appended, 10, "batch {b}");
        }
        db.close().unwrap();
    }
    let got = samples_after_reopen(d.path());
    assert_eq!(
        got.len(),
        50,
        "batch 0 (failed, then written first) and 1-4"
    );
}

/// On a full disk compaction fails (here: starting the WAL segment after the block), and
/// retention must still run: deleting expired blocks is what frees space.
#[test]
fn retention_runs_when_compaction_fails() {
    const H: i64 = 3_600_000;
    let d = tempfile::tempdir().unwrap();
    let plan = SharedPlan::default();
    let opts = Options {
        retention: Duration::from_secs(5 * 3600),
        ..Options::default()
    };
    let mut db = Db::open(d.path(), opts, None).unwrap();
    let labels = l(0);
    // An old block: [0, 2h).
    let mut app = db.appender();
    app.append_one(&labels, 0, 1.0);
    app.append_one(&labels, H, 2.0);
    app.commit().unwrap();
    db.flush().unwrap();
    assert_eq!(db.block_metas().len(), 1);
    {
        let inner = Arc::get_mut(&mut db.inner).expect("sole owner");
        let seg = inner.wal.current_segment();
        inner.wal = Wal::create_with_faults(
            &d.path().join("wal"),
            Some(seg),
            1 << 20,
            inner.metrics.clone(),
            plan.clone(),
        )
        .unwrap();
    }
    // Ten hours later the head spans more than 1.5 block durations: compaction is due,
    // and the old block is past retention.
    let mut app = db.appender();
    for k in 0..5 {
        app.append_one(&labels, 10 * H + k * H, k as f64);
    }
    app.commit().unwrap();
    plan.lock().unwrap().full = true;
    let r = db.compact();
    assert!(
        r.is_err(),
        "compaction cannot start a WAL segment on a full disk"
    );
    assert!(
        db.block_metas().iter().all(|m| m.max_time > 2 * H),
        "the expired block was not deleted: {:?}",
        db.block_metas()
            .iter()
            .map(|m| (m.min_time, m.max_time))
            .collect::<Vec<_>>()
    );
    plan.lock().unwrap().full = false;
    db.compact().unwrap();
    db.close().unwrap();
}
