//! The wire-key cache through the appender: a remembered encoding finds its series, a
//! series the head removed after the lookup is found or created again (no sample lost,
//! the WAL names it), and the cache honours its tag, its byte limit and truncations.

use storeapi::{Labels, Sample};

use super::*;

fn pairs(i: usize) -> Vec<(&'static str, String)> {
    vec![("__name__", "wire".to_string()), ("s", i.to_string())]
}

/// Stand-in for a client's encoding of series `i` (any bytes do: the cache never reads
/// labels out of them).
fn wire(i: usize) -> Vec<u8> {
    format!("\x0a\x0cname=wire,s={i}").into_bytes()
}

fn samples(db: &Db) -> BTreeMap<String, Vec<(i64, f64)>> {
    let q = db.querier(i64::MIN, i64::MAX);
    let m = storeapi::Matcher::new(storeapi::MatchOp::Equal, "__name__", "wire").unwrap();
    q.select_samples(&[m])
        .unwrap()
        .into_iter()
        .map(|(l, s): (Labels, Vec<Sample>)| {
            (
                l.get("s").unwrap_or_default().to_string(),
                s.iter().map(|x| (x.t, x.v)).collect(),
            )
        })
        .collect()
}

fn remember(db: &Db, keys: &[Vec<u8>], tag: u64, t: i64) -> AppendOutcome {
    let labels: Vec<Vec<(&str, String)>> = (0..keys.len()).map(pairs).collect();
    let mut app = db.appender();
    for (i, k) in keys.iter().enumerate() {
        app.append_pairs_remembered(
            WireKey::new(k, tag),
            labels[i].iter().map(|(n, v)| (*n, v.as_str())),
            &[Sample { t, v: i as f64 }],
        );
    }
    app.commit().unwrap()
}

#[test]
fn a_remembered_encoding_finds_its_series() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(d.path(), Options::default(), None).unwrap();
    let keys: Vec<Vec<u8>> = (0..3).map(wire).collect();
    assert!(db.cached_series(&WireKey::new(&keys[0], 7)).is_none());
    let out = remember(&db, &keys, 7, 1000);
    assert_eq!((out.appended, out.series_created), (3, 3));
    assert_eq!(db.head().wire_key_usage().0, 3);

    let mut app = db.appender();
    for (i, k) in keys.iter().enumerate() {
        let c = db.cached_series(&WireKey::new(k, 7)).expect("remembered");
        app.append_cached(
            c,
            &[Sample {
                t: 2000,
                v: 10.0 + i as f64,
            }],
        );
    }
    let out = app.commit().unwrap();
    assert_eq!((out.appended, out.series_created), (3, 0));
    assert_eq!(db.head_series(), 3);
    let got = samples(&db);
    assert_eq!(got["1"], vec![(1000, 1.0), (2000, 11.0)]);

    // Other bytes, or the same bytes under other rules, are not found.
    assert!(db.cached_series(&WireKey::new(&wire(9), 7)).is_none());
    assert!(db.cached_series(&WireKey::new(&keys[0], 8)).is_none());
    // Remembering under another tag forgets the first tag's entries.
    remember(&db, &keys[..1], 8, 3000);
    assert!(db.cached_series(&WireKey::new(&keys[0], 8)).is_some());
    assert!(db.cached_series(&WireKey::new(&keys[1], 7)).is_none());
}

#[test]
fn a_series_removed_after_its_lookup_gets_its_samples_all_the_same() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(d.path(), Options::default(), None).unwrap();
    let keys: Vec<Vec<u8>> = (0..2).map(wire).collect();
    remember(&db, &keys, 1, 1000);
    // Series 1 lives on past the truncation below, series 0 does not.
    let mut app = db.appender();
    app.append_cached(
        db.cached_series(&WireKey::new(&keys[1], 1)).unwrap(),
        &[Sample { t: 6000, v: 5.0 }],
    );
    app.commit().unwrap();

    let c0 = db.cached_series(&WireKey::new(&keys[0], 1)).unwrap();
    let c1 = db.cached_series(&WireKey::new(&keys[1], 1)).unwrap();
    {
        let _c = lock(&db.inner.commit);
        db.inner.head.truncate(5000);
    }
    assert_eq!(
        db.head_series(),
        1,
        "series 0 had no sample at or after the cut"
    );
    assert_eq!(
        db.head().wire_key_usage(),
        (0, 0),
        "a truncation empties the cache"
    );
    assert!(db.cached_series(&WireKey::new(&keys[1], 1)).is_none());

    let mut app = db.appender();
    app.append_cached(c0, &[Sample { t: 7000, v: 70.0 }]);
    app.append_cached(c1, &[Sample { t: 7000, v: 71.0 }]);
    let out = app.commit().unwrap();
    assert_eq!((out.appended, out.unknown_series), (2, 0));
    assert_eq!(out.series_created, 1, "series 0 was created again");
    let want = BTreeMap::from([
        ("0".to_string(), vec![(7000, 70.0)]),
        // (The chunk holding 1000 also holds 6000: truncation keeps it whole.)
        (
            "1".to_string(),
            vec![(1000, 1.0), (6000, 5.0), (7000, 71.0)],
        ),
    ]);
    assert_eq!(samples(&db), want);
    // The new series reached the WAL with its labels: it replays.
    db.close().unwrap();
    drop(db);
    let db = Db::open(d.path(), Options::default(), None).unwrap();
    let got = samples(&db);
    assert_eq!(got["1"], want["1"]);
    // (The truncation above skipped the checkpoint a compaction writes, so the WAL
    // still has series 0's first sample too.)
    assert_eq!(got["0"], vec![(1000, 0.0), (7000, 70.0)]);
}

/// A database whose cache has room for about ten of `keys` (all of one length), and
/// that limit in bytes.
fn ten_key_cache(dir: &Path, keys: &[Vec<u8>]) -> (Db, usize) {
    let limit = 10 * (keys[0].len() + crate::head::WIRE_KEY_OVERHEAD);
    let opts = Options {
        wire_key_cache_bytes: limit,
        ..Options::default()
    };
    (Db::open(dir, opts, None).unwrap(), limit)
}

#[test]
fn the_cache_stops_at_its_byte_limit_or_is_off() {
    let d = tempfile::tempdir().unwrap();
    let keys: Vec<Vec<u8>> = (0..50).map(wire).collect();
    let (db, limit) = ten_key_cache(d.path(), &keys);
    remember(&db, &keys, 0, 1000);
    let (n, bytes) = db.head().wire_key_usage();
    assert!(
        (9..=10).contains(&n) && bytes <= limit,
        "{n} entries, {bytes} bytes"
    );
    let found = keys
        .iter()
        .filter(|k| db.cached_series(&WireKey::new(k, 0)).is_some())
        .count();
    assert_eq!(found, n);

    let d = tempfile::tempdir().unwrap();
    let opts = Options {
        wire_key_cache_bytes: 0,
        ..Options::default()
    };
    let db = Db::open(d.path(), opts, None).unwrap();
    remember(&db, &keys, 0, 1000);
    assert_eq!(db.head().wire_key_usage(), (0, 0));
    assert!(db.cached_series(&WireKey::new(&keys[0], 0)).is_none());
    assert_eq!(samples(&db).len(), 50);
}

#[test]
fn a_series_of_another_database_is_looked_up_by_its_labels() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Db::open(d1.path(), Options::default(), None).unwrap();
    let b = Db::open(d2.path(), Options::default(), None).unwrap();
    let keys: Vec<Vec<u8>> = (0..2).map(wire).collect();
    remember(&a, &keys, 0, 1000);
    // `b` holds series 1 only.
    let mut app = b.appender();
    let p1 = pairs(1);
    app.append_pairs_remembered(
        WireKey::new(&keys[1], 0),
        p1.iter().map(|(n, v)| (*n, v.as_str())),
        &[Sample { t: 1000, v: 0.0 }],
    );
    app.commit().unwrap();
    let mut app = b.appender();
    app.append_cached(
        b.cached_series(&WireKey::new(&keys[1], 0)).unwrap(),
        &[Sample { t: 2000, v: 2.0 }],
    );
    app.append_cached(
        a.cached_series(&WireKey::new(&keys[0], 0)).unwrap(),
        &[Sample { t: 2000, v: 1.0 }],
    );
    let out = app.commit().unwrap();
    assert_eq!((out.appended, out.series_created), (2, 1), "{out:?}");
    let got = samples(&b);
    assert_eq!(got["0"], vec![(2000, 1.0)]);
    assert_eq!(got["1"], vec![(1000, 0.0), (2000, 2.0)]);
    assert_eq!(
        samples(&a)["0"],
        vec![(1000, 0.0)],
        "nothing written into the other head"
    );
}

#[test]
fn a_full_cache_that_finds_too_little_sits_batches_out() {
    let d = tempfile::tempdir().unwrap();
    let keys: Vec<Vec<u8>> = (0..50).map(wire).collect();
    let (db, _) = ten_key_cache(d.path(), &keys);
    assert!(db.wire_keys_worth_asking());
    remember(&db, &keys, 0, 1000);
    let batch = |n: usize| -> usize {
        let wk: Vec<WireKey<'_>> = keys[..n].iter().map(|k| WireKey::new(k, 0)).collect();
        let mut out = Vec::new();
        db.cached_series_many(&wk, &mut out);
        assert_eq!(out.len(), n);
        out.iter().flatten().count()
    };
    // Full, but a batch of the cached keys finds them all: still worth asking.
    let held = db.head().wire_key_usage().0;
    assert_eq!(batch(held), held);
    assert!(db.wire_keys_worth_asking());
    // Full and finding a fifth: sits out 64 batches, then is tried again.
    assert_eq!(batch(50), held);
    let skipped = (0..100)
        .take_while(|_| !db.wire_keys_worth_asking())
        .count();
    assert_eq!(skipped, 64);
    // A truncation empties the cache: asked again at once.
    batch(50);
    assert!(!db.wire_keys_worth_asking());
    {
        let _c = lock(&db.inner.commit);
        db.inner.head.truncate(0);
    }
    assert!(db.wire_keys_worth_asking());
}
