//! Native histograms through the database: committed with float samples, written to
//! the WAL as Prometheus's histogram records, replayed after a restart, kept by a WAL
//! checkpoint, and cut into blocks whose chunks are HISTOGRAM / FLOAT_HISTOGRAM.

use storeapi::histogram::{
    CUSTOM_BUCKETS_SCHEMA, FloatHistogram, Histogram, HistogramSample, HistogramValue, Span,
};
use storeapi::{Labels, MatchOp, Matcher, Sample};
use tsdb::block::{Block, list_blocks};
use tsdb::{Db, Encoding, Options, SyncPolicy};

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

fn int_hist(k: u64) -> Histogram {
    Histogram {
        schema: 1,
        zero_threshold: 0.001,
        zero_count: k,
        count: 4 * k,
        sum: k as f64 * 2.5,
        positive_spans: vec![
            Span {
                offset: -1,
                length: 2,
            },
            Span {
                offset: 2,
                length: 1,
            },
        ],
        positive_buckets: vec![k as i64, 0, k as i64 - k as i64 / 2],
        ..Default::default()
    }
}

fn nhcb(k: u64) -> Histogram {
    Histogram {
        schema: CUSTOM_BUCKETS_SCHEMA,
        count: 3 * k,
        sum: k as f64,
        positive_spans: vec![Span {
            offset: 0,
            length: 3,
        }],
        positive_buckets: vec![k as i64, 0, 0],
        custom_values: vec![0.5, 1.0],
        ..Default::default()
    }
}

fn float_hist(k: u64) -> FloatHistogram {
    FloatHistogram {
        schema: 0,
        zero_threshold: 1e-128,
        count: k as f64 * 1.5,
        sum: k as f64 * 0.25,
        positive_spans: vec![Span {
            offset: 0,
            length: 1,
        }],
        positive_buckets: vec![k as f64 * 1.5],
        ..Default::default()
    }
}

/// Every series' (float samples, histogram samples) over all time.
type Content = Vec<(Labels, Vec<(i64, u64)>, Vec<HistogramSample>)>;

fn content(db: &Db) -> Content {
    let q = db.querier(i64::MIN, i64::MAX);
    q.select(&[Matcher::new(MatchOp::RegexMatch, "__name__", ".+").unwrap()])
        .unwrap()
        .into_iter()
        .map(|s| {
            let f = s.samples(i64::MIN, i64::MAX).unwrap();
            let h = s.histograms(i64::MIN, i64::MAX).unwrap();
            (
                s.labels,
                f.iter().map(|x| (x.t, x.v.to_bits())).collect(),
                h,
            )
        })
        .collect()
}

/// Histogram samples compared without the counter-reset hint (the chunk header, not the
/// sample, carries it; only a chunk's first sample reports it).
fn without_hints(c: &Content) -> Vec<(Labels, Vec<(i64, u64)>, Vec<(i64, HistogramValue)>)> {
    c.iter()
        .map(|(l, f, h)| {
            let h = h
                .iter()
                .map(|x| {
                    let mut v = x.h.clone();
                    match &mut v {
                        HistogramValue::Int(h) => h.hint = Default::default(),
                        HistogramValue::Float(h) => h.hint = Default::default(),
                    }
                    (x.t, v)
                })
                .collect();
            (l.clone(), f.clone(), h)
        })
        .collect()
}

/// Writes 3 histogram series (integer exponential, integer custom buckets, float) and a
/// float series, every 15 s for `minutes`, starting at `start`.
fn write(db: &Db, start: i64, minutes: i64) {
    let (a, b, c, f) = (
        ls(&[("__name__", "h_int")]),
        ls(&[("__name__", "h_nhcb")]),
        ls(&[("__name__", "h_float")]),
        ls(&[("__name__", "plain")]),
    );
    for i in 0..minutes * 4 {
        let t = start + i * 15_000;
        let k = (t / 15_000) as u64 + 1;
        let mut app = db.appender();
        app.append(&f, &[Sample { t, v: k as f64 }]);
        app.append_histograms(
            &a,
            [HistogramSample {
                t,
                h: HistogramValue::Int(Box::new(int_hist(k))),
            }],
        );
        app.append_histograms(
            &b,
            [HistogramSample {
                t,
                h: HistogramValue::Int(Box::new(nhcb(k))),
            }],
        );
        app.append_histograms(
            &c,
            [HistogramSample {
                t,
                h: HistogramValue::Float(Box::new(float_hist(k))),
            }],
        );
        let pooled = storeapi::histogram::pool::pooled();
        let out = app.commit().unwrap();
        assert_eq!(out.appended, 4, "{out:?}");
        assert_eq!(out.histograms_appended, 3);
        // The committed integer histograms went back to this thread's pool (until it
        // is full), for the next request's decoder.
        let now = storeapi::histogram::pool::pooled();
        assert!(now == pooled + 2 || now == 2048, "{pooled} → {now}");
    }
}

#[test]
fn histograms_survive_restart_checkpoint_and_blocks() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(d.path(), opts(), None).unwrap();
    write(&db, 0, 60);
    let want = content(&db);
    assert_eq!(want.len(), 4);
    let hists: usize = want.iter().map(|x| x.2.len()).sum();
    assert_eq!(hists, 3 * 240);
    db.close().unwrap();
    drop(db);

    // WAL replay.
    let db = Db::open(d.path(), opts(), None).unwrap();
    assert_eq!(without_hints(&content(&db)), without_hints(&want));
    // More data, a refused out-of-order histogram, then cut blocks (the head compacts
    // at 1.5 block ranges and checkpoints the WAL).
    write(&db, 60 * 60_000, 4 * 60);
    let mut app = db.appender();
    let a = ls(&[("__name__", "h_int")]);
    app.append_histograms(
        &a,
        [HistogramSample {
            t: 1000,
            h: HistogramValue::Int(Box::new(int_hist(1))),
        }],
    );
    let out = app.commit().unwrap();
    assert_eq!((out.appended, out.rejected()), (0, 1));
    let want = content(&db);
    let metas = db.compact().unwrap();
    assert!(!metas.is_empty(), "the head spans 5h: blocks are cut");
    assert!(d.path().join("wal").read_dir().unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("checkpoint.")
    }));
    assert_eq!(without_hints(&content(&db)), without_hints(&want));
    db.close().unwrap();
    drop(db);

    // Blocks hold histogram chunks; the checkpoint plus newer segments hold the rest.
    let mut encodings = std::collections::BTreeSet::new();
    for e in list_blocks(d.path()).unwrap() {
        let b = Block::open(&e.dir).unwrap();
        for s in b.series_iter().unwrap() {
            let (_, chunks) = s.unwrap();
            for c in chunks {
                assert!(c.max_time - c.min_time < 2 * H);
                encodings.insert(format!("{:?}", c.encoding));
            }
        }
    }
    assert_eq!(
        encodings.into_iter().collect::<Vec<_>>(),
        [Encoding::FloatHistogram, Encoding::Histogram, Encoding::Xor].map(|e| format!("{e:?}"))
    );
    let db = Db::open(d.path(), opts(), None).unwrap();
    assert_eq!(without_hints(&content(&db)), without_hints(&want));
}
