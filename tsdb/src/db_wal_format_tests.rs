//! The database's WAL is Prometheus's: what it writes (segments and checkpoints) decodes
//! as Prometheus's records, a Prometheus-written WAL opens with every sample, and a WAL
//! in Orrery's first format is replayed once and migrated.

use std::collections::BTreeMap;
use std::fs;

use storeapi::Labels;

use super::*;
use crate::wal::record::{Collect, legacy};
use crate::wal::{ident, page};

fn l(i: usize) -> Labels {
    Labels::from_pairs([("__name__", "f".to_string()), ("s", i.to_string())]).unwrap()
}

fn all(db: &Db) -> BTreeMap<String, Vec<(i64, u64)>> {
    let q = db.querier(i64::MIN, i64::MAX);
    let m = storeapi::Matcher::new(storeapi::MatchOp::Equal, "__name__", "f").unwrap();
    let mut out = BTreeMap::new();
    for (ls, s) in q.select_samples(&[m]).unwrap() {
        out.insert(
            format!("{ls:?}"),
            s.iter().map(|x| (x.t, x.v.to_bits())).collect(),
        );
    }
    out
}

/// Decodes every record of a file in Prometheus's layout.
fn decode_file(p: &Path) -> Collect {
    let data = fs::read(p).unwrap();
    let mut c = Collect::default();
    let mut n = 0;
    let s = page::scan(
        &data,
        &mut |r| record::decode(r, &mut c).map_err(|e| e.to_string()),
        &mut n,
    );
    assert!(s.skipped.is_empty() && s.tail.is_none(), "{p:?}");
    c
}

/// Commits, then a compaction's checkpoint: segments hold Prometheus series and samples
/// records, the checkpoint holds every head series and sample, and both replay.
#[test]
fn segments_and_checkpoints_are_prometheus_records() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(d.path(), Options::default(), None).unwrap();
    let labels: Vec<Labels> = (0..10).map(l).collect();
    for b in 0..5i64 {
        let mut app = db.appender();
        for (i, ls) in labels.iter().enumerate() {
            app.append_one(ls, b * 1000, (b * 10 + i as i64) as f64);
        }
        app.commit().unwrap();
    }
    let c = decode_file(&d.path().join("wal/00000000"));
    assert_eq!(c.series.len(), 10);
    assert_eq!(c.samples.len(), 50);
    let want = all(&db);
    let upto = db.inner.wal.cut_segment().unwrap();
    db.checkpoint(upto, i64::MAX).unwrap();
    let c = decode_file(&d.path().join(format!("wal/checkpoint.{upto:08}/00000000")));
    assert_eq!(c.series.len(), 10);
    assert_eq!(c.samples.len(), 50);
    assert!(!d.path().join("wal/00000000").exists());
    db.close().unwrap();
    drop(db);
    let db = Db::open(d.path(), Options::default(), None).unwrap();
    assert_eq!(all(&db), want);
}

/// Numbers of the WAL's segments and checkpoints, oldest first.
fn wal_files(dir: &Path) -> (Vec<u64>, Vec<u64>) {
    let (mut segs, mut cps) = (Vec::new(), Vec::new());
    for e in fs::read_dir(dir.join("wal")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if let Ok(n) = name.parse() {
            segs.push(n);
        } else if let Some(n) = name
            .strip_prefix("checkpoint.")
            .and_then(|r| r.parse().ok())
        {
            cps.push(n);
        }
    }
    segs.sort_unstable();
    cps.sort_unstable();
    (segs, cps)
}

/// A block cut checkpoints the segments up to the previous cut, not the one it makes:
/// in steady state those hold nothing the head still has, so the checkpoint is series
/// records alone (it wrote every head sample before, issue #26). Reopening at each
/// step, and after cuts in a row that catch up a backlog, gives back every sample once:
/// the samples a cut moved into a block stay in the kept segments and are not replayed
/// into the head, including those of a series the head dropped.
#[test]
fn cut_checkpoints_keep_one_cut_of_segments_and_lose_nothing() {
    const H: i64 = 3_600_000;
    let d = tempfile::tempdir().unwrap();
    let open = || Db::open(d.path(), Options::default(), None).unwrap();
    let mut db = open();
    let labels: Vec<Labels> = (0..10).map(l).collect();
    // Series 9 stops at 3.9h: a cut at 4h leaves it nothing and the head drops it.
    let append = |db: &Db, from: i64, to: i64| {
        let mut t = from;
        while t < to {
            let mut app = db.appender();
            for (i, ls) in labels.iter().enumerate() {
                if i < 9 || t < 4 * H - 5 * 60_000 {
                    app.append_one(ls, t, (t / 1000 + i as i64) as f64);
                }
            }
            app.commit().unwrap();
            t += 10 * 60_000;
        }
    };
    let reopen = |db: Db| {
        let want = all(&db);
        db.close().unwrap();
        drop(db);
        let db = open();
        assert_eq!(all(&db), want);
        db
    };
    append(&db, 0, 3 * H + 20 * 60_000);
    assert_eq!(db.compact().unwrap().len(), 1, "cuts [0, 2h)");
    // The first cut since the open has no earlier cut to checkpoint up to.
    assert_eq!(wal_files(d.path()), (vec![0, 1], vec![]));
    db = reopen(db);

    append(&db, 3 * H + 20 * 60_000, 5 * H + 20 * 60_000);
    assert_eq!(db.compact().unwrap().len(), 1, "cuts [2h, 4h)");
    let (segs, cps) = wal_files(d.path());
    let cp = *cps.last().expect("a checkpoint");
    assert!(segs.iter().all(|&s| s > cp), "{segs:?} {cps:?}");
    let c = decode_file(&d.path().join(format!("wal/checkpoint.{cp:08}/00000000")));
    assert_eq!(c.series.len(), 9, "the series the head still has");
    assert!(c.samples.is_empty(), "{} samples", c.samples.len());
    db = reopen(db);

    // A backlog: three cuts in one compaction, each checkpointing up to the one before.
    append(&db, 5 * H + 20 * 60_000, 12 * H);
    assert_eq!(db.compact().unwrap().len(), 3, "cuts [4h, 10h)");
    let db = reopen(db);
    let got = all(&db);
    assert_eq!(got.len(), 10);
    for (k, v) in &got {
        let n = if k.contains("\"9\"") { 24 } else { 72 };
        assert_eq!(v.len(), n, "{k}");
    }
}

/// A Prometheus data directory (checkpoint + segments, snappy records, a native
/// histogram record, and `chunks_head/`) opens with every float sample; histogram
/// records are skipped and counted; `chunks_head/` is left alone until Orrery's own
/// checkpoint replaces the WAL it belonged with.
#[test]
fn prometheus_wal_opens_with_every_sample() {
    let d = tempfile::tempdir().unwrap();
    let wal = d.path().join("wal");
    fs::create_dir_all(wal.join("checkpoint.00000000")).unwrap();
    let mut series = vec![record::TYPE_SERIES];
    for i in 0..3 {
        record::put_series(&mut series, 100 + i as u64, &l(i));
    }
    let samples = |ts: &[i64]| {
        let mut b = vec![record::TYPE_SAMPLES];
        let mut r = record::SamplesRecord::default();
        for &t in ts {
            for i in 0..3u64 {
                r.push(&mut b, 100 + i, t, (t + i as i64) as f64);
            }
        }
        b
    };
    let cp = ident::tests::prometheus_segment(&[(series, true), (samples(&[1000, 2000]), true)]);
    fs::write(wal.join("checkpoint.00000000/00000000"), cp).unwrap();
    let seg = ident::tests::prometheus_segment(&[
        (samples(&[3000]), false),
        (
            record::encode_histogram_samples(
                &[record::RefHistogramSample {
                    r: 100,
                    t: 3500,
                    h: storeapi::histogram::HistogramValue::Int(Box::default()),
                }],
                false,
            )
            .0,
            false,
        ),
        (samples(&[4000]), true),
    ]);
    fs::write(wal.join("00000001"), &seg).unwrap();
    fs::create_dir_all(d.path().join("chunks_head")).unwrap();
    fs::write(
        d.path().join("chunks_head/000001"),
        [0x01, 0x30, 0xbc, 0x91],
    )
    .unwrap();

    let db = Db::open(d.path(), Options::default(), None).unwrap();
    let got = all(&db);
    assert_eq!(got.len(), 3);
    for (i, (_, s)) in got.iter().enumerate() {
        let want: Vec<(i64, u64)> = [1000i64, 2000, 3000, 4000]
            .iter()
            .map(|&t| (t, ((t + i as i64) as f64).to_bits()))
            .collect();
        assert_eq!(s, &want);
    }
    // The histogram record is replayed too: series 100 (`s=0`) holds it between its
    // float samples at 3000 and 4000.
    let q = db.querier(i64::MIN, i64::MAX);
    let m = storeapi::Matcher::new(storeapi::MatchOp::Equal, "s", "0").unwrap();
    let sel = q.select(&[m]).unwrap();
    assert_eq!(sel.len(), 1);
    let h = sel[0].histograms(i64::MIN, i64::MAX).unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].t, 3500);
    assert!(matches!(&h[0].h, storeapi::histogram::HistogramValue::Int(x) if x.count == 0));
    assert_eq!(db.metrics().wal_corruptions_repaired.get(), 0);
    // Untouched so far (a user can still go back).
    assert_eq!(fs::read(wal.join("00000001")).unwrap(), seg);
    assert!(d.path().join("chunks_head/000001").exists());
    // New commits reference the Prometheus series refs; a checkpoint replaces it all.
    let l0 = l(0);
    let mut app = db.appender();
    app.append_one(&l0, 5000, 1.0);
    app.commit().unwrap();
    let upto = db.inner.wal.cut_segment().unwrap();
    db.checkpoint(upto, i64::MAX).unwrap();
    assert!(!d.path().join("chunks_head").exists());
    let want = all(&db);
    db.close().unwrap();
    drop(db);
    let db = Db::open(d.path(), Options::default(), None).unwrap();
    assert_eq!(all(&db), want);
}

/// A WAL in Orrery's first format (magic-framed segments and a whole-chunk checkpoint)
/// is replayed once, then replaced by a Prometheus-format checkpoint; nothing is lost.
#[test]
fn orrery_v1_wal_is_migrated() {
    let d = tempfile::tempdir().unwrap();
    let wal = d.path().join("wal");
    fs::create_dir_all(&wal).unwrap();
    let frame = |p: &[u8]| {
        let mut b = (p.len() as u32).to_le_bytes().to_vec();
        b.extend_from_slice(&crc32c::crc32c(p).to_le_bytes());
        b.extend_from_slice(p);
        b
    };
    let (a, b) = (l(0), l(1));
    let mut seg = ident::segment_magic().to_vec();
    seg.extend(frame(&legacy::series_record(&[(1, &a), (2, &b)])));
    seg.extend(frame(&legacy::samples_record(
        1,
        &[(1000, 1.0), (2000, 2.0)],
    )));
    seg.extend(frame(&legacy::samples_record(2, &[(1500, 3.0)])));
    fs::write(wal.join("00000000"), &seg).unwrap();
    let mut seg1 = ident::segment_magic().to_vec();
    seg1.extend(frame(&legacy::samples_record(2, &[(2500, 4.0)])));
    // A torn last record (SIGKILL mid-write in the old format).
    let torn = frame(&legacy::samples_record(1, &[(3000, 5.0)]));
    seg1.extend_from_slice(&torn[..torn.len() - 3]);
    fs::write(wal.join("00000001"), &seg1).unwrap();

    let db = Db::open(d.path(), Options::default(), None).unwrap();
    let want = all(&db);
    let vals: Vec<usize> = want.values().map(|v| v.len()).collect();
    assert_eq!(vals, vec![2, 2]);
    // Migrated: the old segments are gone, a Prometheus checkpoint covers them.
    assert!(!wal.join("00000000").exists() && !wal.join("00000001").exists());
    let c = decode_file(&wal.join("checkpoint.00000001/00000000"));
    assert_eq!((c.series.len(), c.samples.len()), (2, 4));
    db.close().unwrap();
    drop(db);
    let db = Db::open(d.path(), Options::default(), None).unwrap();
    assert_eq!(all(&db), want);
    assert_eq!(db.metrics().wal_torn_tails.get(), 0);
}

/// WAL bytes per sample for the ingest shape (commits of 2000 series, one sample each,
/// refs spread over 100k series, millisecond timestamps): Prometheus's samples record is
/// about 12 bytes a sample here (3-byte ref delta, 1-byte time delta, 8-byte value).
#[test]
fn wal_bytes_per_sample() {
    for (compression, limit) in [(true, 9.0), (false, 13.0)] {
        let d = tempfile::tempdir().unwrap();
        let opts = Options {
            wal_compression: compression,
            ..Options::default()
        };
        let db = Db::open(d.path(), opts, None).unwrap();
        let labels: Vec<Labels> = (0..100_000).map(l).collect();
        let t0 = 1_764_000_000_000i64;
        let mut n = 0u64;
        for round in 0..2i64 {
            for c in 0..50usize {
                let mut app = db.appender();
                for k in 0..2000usize {
                    let i = (c * 2000 + k * 37) % labels.len();
                    app.append_one(&labels[i], t0 + round * 15_000, (i as f64) * 1.5);
                }
                n += app.commit().unwrap().appended;
            }
        }
        let before = db.metrics().wal_bytes_written.get();
        let mut app = db.appender();
        for k in 0..2000usize {
            app.append_one(&labels[(k * 53) % labels.len()], t0 + 30_000, k as f64);
        }
        n += app.commit().unwrap().appended;
        let per = (db.metrics().wal_bytes_written.get() - before) as f64 / 2000.0;
        println!(
            "WAL bytes per sample (compression {compression}, a commit of 2000 known series): {per:.2}; total incl. series records: {:.2}",
            db.metrics().wal_bytes_written.get() as f64 / n as f64
        );
        assert!(per < limit, "compression {compression}: {per}");
    }
}
