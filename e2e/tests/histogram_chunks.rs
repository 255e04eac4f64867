//! Golden test for the native histogram chunk codecs against the real Prometheus 3.5.3:
//! Prometheus scrapes its own native histograms (protobuf), converts a classic
//! histogram served by this test to custom buckets (NHCB, schema -53) and records
//! `rate()` of a native histogram (float histograms); a TSDB snapshot is then read with
//! `tsdb::block`. For every histogram chunk:
//! - each decoded sample's count and sum equal Prometheus's query API answer at that
//!   timestamp;
//! - appending the decoded samples to a fresh chunk with our appender reproduces
//!   Prometheus's chunk byte for byte (header computed against the previous chunk of
//!   the series, as the head does).
//!
//! Each of the three kinds (integer exponential, integer NHCB, float) must be found.
//!
//! A second test SIGKILLs such a Prometheus with its head only in its WAL, decodes the
//! WAL's histogram records (types 7-10) with `tsdb::wal::record` and compares every
//! sample with what Prometheus, restarted on a copy of the same directory, answers.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use e2e::histograms::{
    generate_traffic, serve_classic_histogram, snapshot, start_native_histogram_prometheus,
};
use e2e::promqlcmp::urlencode;
use e2e::{Prometheus, http_get};
use storeapi::Labels;
use tsdb::block::{Block, list_blocks};
use tsdb::chunk::{
    Appended, Chunk, CounterResetHeader, Encoding, FloatHistogramAppender, FloatHistogramIterator,
    HistogramAppender, HistogramIterator,
};

/// A PromQL selector matching exactly `labels`.
fn selector(labels: &Labels) -> String {
    let parts: Vec<String> = labels
        .iter()
        .map(|l| {
            let v = l.value.replace('\\', "\\\\").replace('"', "\\\"");
            format!("{}=\"{}\"", l.name, v)
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// The histogram samples Prometheus returns for `labels` in `(from, to]` ms:
/// timestamp → (count, sum).
fn query_histograms(addr: &str, labels: &Labels, from: i64, to: i64) -> BTreeMap<i64, (f64, f64)> {
    let range_ms = (to - from).max(1);
    let q = format!("{}[{}ms]", selector(labels), range_ms);
    let path = format!(
        "/api/v1/query?query={}&time={}.{:03}",
        urlencode(&q),
        to / 1000,
        to % 1000
    );
    let (code, body) = http_get(addr, &path).expect("query prometheus");
    assert_eq!(code, 200, "{path}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("query JSON");
    let mut out = BTreeMap::new();
    let results = v["data"]["result"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 1, "one series for {q}: {body}");
    for h in results[0]["histograms"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let t = (h[0].as_f64().expect("timestamp") * 1000.0).round() as i64;
        let num = |k: &str| -> f64 {
            h[1][k]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{k} in {h}"))
        };
        out.insert(t, (num("count"), num("sum")));
    }
    out
}

#[derive(Default, Debug)]
struct Kind {
    chunks: usize,
    samples: usize,
    bytes: usize,
    recoded_or_cut: usize,
}

/// Re-appends the decoded samples of `c` into a fresh chunk (the previous chunk's
/// appender as `prev`) and returns its bytes; panics if the appender wants a new chunk.
fn reencode_int(c: &Chunk, prev: Option<&Chunk>) -> Vec<u8> {
    let prev = prev.map(|p| HistogramAppender::from_bytes(&p.data).expect("reopen previous chunk"));
    let mut a = HistogramAppender::new();
    for (i, s) in HistogramIterator::new(&c.data)
        .expect("chunk header")
        .enumerate()
    {
        let (t, h) = s.expect("decode");
        let p = if i == 0 { prev.as_ref() } else { None };
        match a.append(p, t, &h).expect("append") {
            Appended::InPlace | Appended::Recoded => {}
            Appended::NewChunk(_) => {
                panic!("sample {i} of a Prometheus chunk does not fit our chunk")
            }
        }
    }
    a.into_bytes()
}

fn reencode_float(c: &Chunk, prev: Option<&Chunk>) -> Vec<u8> {
    let prev =
        prev.map(|p| FloatHistogramAppender::from_bytes(&p.data).expect("reopen previous chunk"));
    let mut a = FloatHistogramAppender::new();
    for (i, s) in FloatHistogramIterator::new(&c.data)
        .expect("chunk header")
        .enumerate()
    {
        let (t, h) = s.expect("decode");
        let p = if i == 0 { prev.as_ref() } else { None };
        match a.append(p, t, &h).expect("append") {
            Appended::InPlace | Appended::Recoded => {}
            Appended::NewChunk(_) => {
                panic!("sample {i} of a Prometheus chunk does not fit our chunk")
            }
        }
    }
    a.into_bytes()
}

/// Prometheus scraping its own native histograms and the classic target (as NHCB),
/// recording `rate()` of a native histogram, with traffic for `secs` seconds.
fn prometheus_with_histograms(secs: u64) -> (Prometheus, tempfile::TempDir) {
    let (classic_port, scrapes) = serve_classic_histogram();
    let (prom, rules_dir) = start_native_histogram_prometheus(classic_port, "", &[]);
    generate_traffic(&prom.addr(), secs);
    assert!(
        scrapes.load(Ordering::Relaxed) >= 10,
        "classic target was scraped"
    );
    (prom, rules_dir)
}

#[test]
fn histogram_chunks_match_prometheus_byte_for_byte() {
    let (prom, _rules) = prometheus_with_histograms(32);
    let addr = prom.addr();

    let snap = snapshot(&prom);
    let blocks = list_blocks(&snap).expect("list snapshot blocks");
    assert!(
        !blocks.is_empty(),
        "snapshot at {} has blocks",
        snap.display()
    );

    let mut kinds: BTreeMap<&'static str, Kind> = BTreeMap::new();
    for b in &blocks {
        let block = Block::open(&b.dir).expect("open snapshot block");
        for (labels, chunks) in block.select(&[], i64::MIN, i64::MAX).expect("select") {
            let mut prev: Option<&Chunk> = None;
            let n_chunks = chunks.len();
            for (ci, c) in chunks.iter().enumerate() {
                if !matches!(c.encoding, Encoding::Histogram | Encoding::FloatHistogram) {
                    prev = None;
                    continue;
                }
                // Decode: timestamps inside the chunk's range, values as the API has them.
                let samples: Vec<(i64, f64, f64, bool)> = c
                    .iter_histograms()
                    .expect("histogram chunk")
                    .map(|s| {
                        let s = s.unwrap_or_else(|e| panic!("{labels:?}: decode: {e}"));
                        let f = s.h.to_float();
                        (s.t, f.count, f.sum, f.is_stale())
                    })
                    .collect();
                assert_eq!(samples.len(), c.num_samples());
                let first = samples.first().map(|s| s.0).expect("non-empty chunk");
                let last = samples.last().map(|s| s.0).expect("non-empty chunk");
                assert_eq!((first, last), (c.min_time, c.max_time), "{labels:?}");
                let want = query_histograms(&addr, &labels, first - 1, last);
                for (t, count, sum, stale) in &samples {
                    if *stale {
                        assert!(!want.contains_key(t), "stale marker at {t} is not a sample");
                        continue;
                    }
                    let (wc, ws) = want
                        .get(t)
                        .unwrap_or_else(|| panic!("{labels:?}: Prometheus has no sample at {t}"));
                    assert_eq!(count, wc, "{labels:?} count at {t}");
                    assert!(
                        sum == ws || (sum - ws).abs() <= 1e-12 * ws.abs().max(1.0),
                        "{labels:?} sum at {t}: ours {sum}, Prometheus {ws}"
                    );
                }

                // Byte-for-byte: our appender rebuilds Prometheus's chunk.
                let prev_same = prev.filter(|p| p.encoding == c.encoding);
                let reencode = |p: Option<&Chunk>| match c.encoding {
                    Encoding::Histogram => reencode_int(c, p),
                    _ => reencode_float(c, p),
                };
                let mut ours = reencode(prev_same);
                // A series' last chunk is the head's open chunk, still taking samples while
                // the snapshot is written: Prometheus then re-encodes it, trimmed to the
                // snapshot's end, with a fresh appender that knows no previous chunk (its
                // `populateWithDelChunkSeriesIterator`), so its header is computed without
                // one. Either encoding is Prometheus's; the bytes must equal one of them.
                if ci + 1 == n_chunks && prev_same.is_some() && ours[..] != c.data[..] {
                    ours = reencode(None);
                }
                assert_eq!(
                    CounterResetHeader::from_byte(ours[2]),
                    CounterResetHeader::from_byte(c.data[2]),
                    "{labels:?}: header of chunk [{first}, {last}]"
                );
                assert!(
                    ours[..] == c.data[..],
                    "{labels:?}: chunk [{first}, {last}] differs:\n ours {:02x?}\n prom {:02x?}",
                    ours,
                    &c.data[..]
                );

                let schema = match c.iter_histograms().ok().and_then(|mut it| it.next()) {
                    Some(Ok(s)) => s.h.to_float().schema,
                    _ => 0,
                };
                let kind = match (c.encoding, schema) {
                    (Encoding::FloatHistogram, _) => "float",
                    (_, -53) => "int-nhcb",
                    _ => "int-exponential",
                };
                let k = kinds.entry(kind).or_default();
                k.chunks += 1;
                k.samples += samples.len();
                k.bytes += c.data.len();
                if prev_same.is_some() {
                    k.recoded_or_cut += 1;
                }
                prev = Some(c);
            }
        }
    }
    for (name, k) in &kinds {
        eprintln!(
            "{name}: {} chunks, {} samples, {} bytes, {:.2} bytes/sample, {} chunks after a cut",
            k.chunks,
            k.samples,
            k.bytes,
            k.bytes as f64 / k.samples.max(1) as f64,
            k.recoded_or_cut
        );
    }
    for kind in ["int-exponential", "int-nhcb", "float"] {
        assert!(
            kinds.get(kind).is_some_and(|k| k.samples >= 10),
            "no {kind} histogram chunks with ≥ 10 samples in the snapshot: {kinds:?}\nlog:\n{}",
            prom.proc.log_text()
        );
    }
}

#[test]
fn histogram_wal_records_match_prometheus() {
    use storeapi::histogram::HistogramValue;
    use tsdb::wal::record::{self, Collect};

    let (mut prom, _rules) = prometheus_with_histograms(22);
    prom.proc.kill();
    let data = prom.dir.path().join("data");

    // Our reading of the WAL, from a copy (replay may repair a torn tail).
    let copy = tempfile::tempdir().expect("copy dir");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(data.join("wal"))
        .arg(copy.path())
        .status()
        .expect("cp");
    assert!(status.success());
    let mut c = Collect::default();
    let mut err = None;
    let mut raw_types: BTreeMap<u8, usize> = BTreeMap::new();
    tsdb::wal::replay(
        &copy.path().join("wal"),
        &tsdb::Metrics::default(),
        &mut |_, payload: &[u8]| {
            if let Some(t) = payload.first() {
                *raw_types.entry(*t).or_default() += 1;
            }
            if let Err(e) = record::decode(payload, &mut c) {
                err.get_or_insert(e.to_string());
            }
            Ok(())
        },
    )
    .expect("replay Prometheus WAL");
    assert_eq!(err, None, "every record decodes");
    for t in [
        record::TYPE_HISTOGRAMS,
        record::TYPE_FLOAT_HISTOGRAMS,
        record::TYPE_CUSTOM_HISTOGRAMS,
    ] {
        assert!(
            raw_types.get(&t).is_some_and(|n| *n > 0),
            "record type {t} in the WAL: {raw_types:?}"
        );
    }
    let labels: BTreeMap<u64, Labels> = c.series.iter().cloned().collect();

    // Prometheus restarted on a copy of the same bytes, scraping nothing.
    let prepared = data.clone();
    let p2 = Prometheus::start_prepared(
        "global:\n  scrape_interval: 1h\n",
        &["--enable-feature=native-histograms"],
        move |d| {
            let st = std::process::Command::new("cp")
                .arg("-a")
                .arg(&prepared)
                .arg(d)
                .status()
                .expect("cp data dir");
            assert!(st.success());
        },
    );
    let addr = p2.addr();

    // Our samples per series: t → (count, sum), stale markers left out.
    let mut ours: BTreeMap<u64, BTreeMap<i64, (f64, f64)>> = BTreeMap::new();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &c.histograms {
        let f = s.h.to_float();
        let kind = match (&s.h, f.schema) {
            (HistogramValue::Float(_), _) => "float",
            (_, -53) => "int-nhcb",
            _ => "int-exponential",
        };
        *kinds.entry(kind).or_default() += 1;
        if f.is_stale() {
            continue;
        }
        assert_eq!(f.validate(), Ok(()), "{s:?}");
        ours.entry(s.r).or_default().insert(s.t, (f.count, f.sum));
    }
    for kind in ["int-exponential", "int-nhcb", "float"] {
        assert!(
            kinds.get(kind).is_some_and(|n| *n >= 10),
            "{kind} samples in the WAL: {kinds:?}"
        );
    }
    for (r, samples) in &ours {
        let l = labels
            .get(r)
            .unwrap_or_else(|| panic!("series record for ref {r}"));
        let first = *samples.keys().next().expect("samples");
        let last = *samples.keys().last().expect("samples");
        let want = query_histograms(&addr, l, first - 1, last);
        assert_eq!(
            samples.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{l:?}: timestamps"
        );
        for (t, (count, sum)) in samples {
            let (wc, ws) = want[t];
            assert_eq!(*count, wc, "{l:?} count at {t}");
            assert!(
                *sum == ws || (sum - ws).abs() <= 1e-12 * ws.abs().max(1.0),
                "{l:?} sum at {t}: ours {sum}, Prometheus {ws}"
            );
        }
    }
    eprintln!("WAL histogram samples by kind: {kinds:?}; records by type: {raw_types:?}");
}
