//! Block format compatibility both ways with the reference promtool 3.5.3:
//! - a block written by `tsdb::block::BlockWriter` is listed by `promtool tsdb list` and
//!   `promtool tsdb dump` prints exactly the samples we wrote;
//! - blocks made by `promtool tsdb create-blocks-from openmetrics` are read by
//!   `tsdb::block::Block` and hold exactly the input samples.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use storeapi::{Labels, MatchOp, Matcher};
use tsdb::block::{Block, BlockOptions, BlockWriter, ThanosMeta, list_blocks};
use tsdb::chunk::{Chunk, Encoding, XorChunk};

const HOUR: i64 = 3_600_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Samples of one series: (timestamp ms, value).
type Samples = Vec<(i64, f64)>;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run promtool");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("promtool output is UTF-8")
}

/// Values as a mix a real TSDB sees: counters, gauges with fractions, big and tiny
/// magnitudes, repeats, negative numbers, infinities, NaN and the stale marker.
fn value(rng: &mut Rng, kind: usize, k: usize, prev: f64) -> f64 {
    match kind {
        0 => prev + rng.below(100) as f64,                   // counter
        1 => (rng.below(1_000_000) as f64) / 1000.0 - 500.0, // gauge
        2 => {
            if rng.below(4) == 0 {
                prev + 1.0
            } else {
                prev
            }
        } // mostly constant
        3 => match k % 50 {
            7 => f64::INFINITY,
            8 => f64::NEG_INFINITY,
            9 => f64::NAN,
            10 => f64::from_bits(storeapi::STALE_NAN_BITS),
            _ => (rng.next() as f64) * 1e-300 * if k.is_multiple_of(2) { 1.0 } else { -1e290 },
        },
        _ => 0.1 * k as f64,
    }
}

fn same_value(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

fn encode_chunks(samples: &[(i64, f64)]) -> Vec<Chunk> {
    samples
        .chunks(120)
        .map(|part| {
            let mut c = XorChunk::new();
            for &(t, v) in part {
                c.append(t, v).unwrap();
            }
            Chunk {
                min_time: part[0].0,
                max_time: part[part.len() - 1].0,
                encoding: Encoding::Xor,
                data: Bytes::from(c.into_bytes()),
            }
        })
        .collect()
}

#[test]
fn promtool_reads_our_block() {
    let promtool = e2e::promtool_bin();
    let dir = tempfile::tempdir().unwrap();
    // A 2h block in the recent past, aligned like Prometheus's.
    let mint = (now_ms() - 6 * HOUR).div_euclid(2 * HOUR) * 2 * HOUR;
    let maxt = mint + 2 * HOUR;

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut series: Vec<(Labels, Samples)> = Vec::new();
    for i in 0..400usize {
        let kind = i % 5;
        let name = [
            "http_requests_total",
            "temperature_celsius",
            "build_info",
            "odd_values",
            "steps",
        ][kind];
        let labels = Labels::from_pairs([
            ("__name__", name.to_string()),
            ("instance", format!("10.0.{}.{}:9100", i / 50, i % 50)),
            ("job", format!("job-{}", i % 7)),
            ("zone", ["eu", "us", "ap"][i % 3].to_string()),
        ])
        .unwrap();
        // 15 s scrape interval with per-series jitter; some series start late or stop
        // early; a few have millisecond-irregular timestamps.
        let start = mint + (i as i64 * 37) % 15_000;
        let end = maxt - 1 - (rng.below(4) as i64) * 10 * 60_000;
        let mut t = start + (rng.below(3) as i64) * 20 * 60_000;
        let mut samples = Vec::new();
        let mut prev = 0.0;
        let mut k = 0;
        while t <= end {
            let v = value(&mut rng, kind, k, prev);
            samples.push((t, v));
            prev = if v.is_finite() { v } else { prev };
            t += 15_000
                + if i % 11 == 0 {
                    rng.below(2_000) as i64 - 1000
                } else {
                    0
                };
            k += 1;
        }
        series.push((labels, samples));
    }
    series.sort_by(|a, b| a.0.cmp(&b.0));
    let total: usize = series.iter().map(|(_, s)| s.len()).sum();
    assert!(total > 100_000, "{total} samples");

    let mut ext = BTreeMap::new();
    ext.insert("receive_replica".to_string(), "0".to_string());
    ext.insert("tenant_id".to_string(), "default-tenant".to_string());
    let opts = BlockOptions {
        thanos: Some(ThanosMeta::new(ext, "receive")),
        ..Default::default()
    };
    let meta = BlockWriter::write(
        dir.path(),
        mint,
        maxt,
        series.iter().map(|(l, s)| (l.clone(), encode_chunks(s))),
        &opts,
    )
    .unwrap();
    assert_eq!(meta.stats.num_samples as usize, total);

    // `promtool tsdb list` shows the block with our stats.
    let list = run(Command::new(&promtool)
        .args(["tsdb", "list"])
        .arg(dir.path()));
    let row = list
        .lines()
        .find(|l| l.starts_with(&meta.ulid.to_string()))
        .unwrap_or_else(|| panic!("block {} not listed:\n{list}", meta.ulid));
    let cols: Vec<&str> = row.split_whitespace().collect();
    // BLOCK ULID, MIN TIME, MAX TIME, DURATION, NUM SAMPLES, NUM CHUNKS, NUM SERIES, SIZE
    assert_eq!(cols[1], mint.to_string(), "{row}");
    assert_eq!(cols[2], maxt.to_string(), "{row}");
    assert_eq!(cols[4], total.to_string(), "{row}");
    assert_eq!(cols[5], meta.stats.num_chunks.to_string(), "{row}");
    assert_eq!(cols[6], "400", "{row}");

    // `promtool tsdb dump` opens the directory as a Prometheus data dir, which always
    // has a `wal/` (empty here: all data is in the block).
    std::fs::create_dir(dir.path().join("wal")).unwrap();
    // `promtool tsdb dump` prints every sample we wrote, and nothing else.
    let dump = run(Command::new(&promtool)
        .args(["tsdb", "dump"])
        .arg(format!("--min-time={mint}"))
        .arg(format!("--max-time={maxt}"))
        .arg(dir.path()));
    let got = e2e::parse_promtool_dump(&dump);
    assert_eq!(got.len(), series.len(), "series count in dump");
    let mut compared = 0;
    for (labels, want) in &series {
        let key = labels.to_string();
        let have = got
            .get(&key)
            .unwrap_or_else(|| panic!("series {key} missing from dump"));
        assert_eq!(have.len(), want.len(), "sample count of {key}");
        for (h, w) in have.iter().zip(want) {
            assert_eq!(h.0, w.0, "timestamp in {key}");
            assert!(
                same_value(h.1, w.1),
                "{key} at {}: dumped {} wrote {}",
                w.0,
                h.1,
                w.1
            );
            compared += 1;
        }
    }
    assert_eq!(compared, total);

    // A narrower dump window and a matcher are honoured by promtool on our index.
    let dump = run(Command::new(&promtool)
        .args(["tsdb", "dump"])
        .arg(format!("--min-time={}", mint + HOUR))
        .arg(format!("--max-time={}", mint + HOUR + 60_000))
        .arg("--match=build_info{zone=~\"eu|ap\"}")
        .arg(dir.path()));
    let got = e2e::parse_promtool_dump(&dump);
    let want: Vec<_> = series
        .iter()
        .filter(|(l, s)| {
            l.get("__name__") == Some("build_info")
                && l.get("zone") != Some("us")
                && s.iter()
                    .any(|&(t, _)| t >= mint + HOUR && t <= mint + HOUR + 60_000)
        })
        .collect();
    assert_eq!(got.len(), want.len());
    assert!(!want.is_empty());
}

/// Writes the OpenMetrics text for `families` (metric name → series) and returns the
/// samples each series must hold after backfilling.
fn openmetrics(rng: &mut Rng, start_ms: i64, end_ms: i64) -> (String, BTreeMap<Labels, Samples>) {
    let mut text = String::new();
    let mut want: BTreeMap<Labels, Samples> = BTreeMap::new();
    let families = [
        ("node_cpu_seconds", "counter", 120usize),
        ("node_memory_free_bytes", "gauge", 80),
        ("queue_depth", "gauge", 60),
        ("api_latency_seconds_bucket_like", "gauge", 40),
    ];
    for (fi, (name, typ, n)) in families.iter().enumerate() {
        writeln!(
            text,
            "# HELP {name} Generated for the promtool backfill test."
        )
        .unwrap();
        writeln!(text, "# TYPE {name} {typ}").unwrap();
        let sample_name = if *typ == "counter" {
            format!("{name}_total")
        } else {
            name.to_string()
        };
        for s in 0..*n {
            let labels = Labels::from_pairs([
                ("__name__", sample_name.clone()),
                ("host", format!("node-{:03}", s % 40)),
                ("idx", format!("{fi}-{s}")),
            ])
            .unwrap();
            let mut t = start_ms + (s as i64 % 4) * 250;
            let mut v = 0.0f64;
            let mut samples = Vec::new();
            let step = [15_000, 30_000, 10_000, 60_000][fi];
            while t < end_ms {
                v = match *typ {
                    "counter" => v + rng.below(1000) as f64 / 8.0,
                    _ => match s % 4 {
                        0 => rng.below(1 << 40) as f64,
                        1 => (rng.below(2_000_000) as f64 - 1_000_000.0) / 64.0,
                        2 => 1.0 / (1 + rng.below(1000)) as f64,
                        _ => {
                            if rng.below(20) == 0 {
                                f64::INFINITY
                            } else {
                                42.0
                            }
                        }
                    },
                };
                // Timestamps in seconds with exact binary fractions (x.25, x.5, ...).
                writeln!(
                    text,
                    "{}{{host=\"{}\",idx=\"{}\"}} {} {}.{:03}",
                    sample_name,
                    labels.get("host").unwrap(),
                    labels.get("idx").unwrap(),
                    om_value(v),
                    t.div_euclid(1000),
                    t.rem_euclid(1000)
                )
                .unwrap();
                samples.push((t, v));
                t += step;
            }
            want.insert(labels, samples);
        }
    }
    text.push_str("# EOF\n");
    (text, want)
}

fn om_value(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v:?}")
    }
}

#[test]
fn we_read_promtool_backfilled_blocks() {
    let promtool = e2e::promtool_bin();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.om");
    let out = dir.path().join("blocks");
    // Five hours of data ending half an hour before a 2h boundary in the past: spans
    // three 2h-aligned blocks, each holding every series.
    let end = (now_ms() - 2 * HOUR).div_euclid(2 * HOUR) * 2 * HOUR - HOUR / 2;
    let start = end - 5 * HOUR;
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let (text, want) = openmetrics(&mut rng, start, end);
    std::fs::write(&input, &text).unwrap();
    let total: usize = want.values().map(Vec::len).sum();
    assert!(
        want.len() >= 300 && total > 50_000,
        "{} series, {total} samples",
        want.len()
    );

    run(Command::new(&promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(&out));

    let blocks = list_blocks(&out).unwrap();
    assert!(
        blocks.len() >= 3,
        "expected ≥ 3 blocks, got {}",
        blocks.len()
    );
    let mut got: BTreeMap<Labels, Samples> = BTreeMap::new();
    let mut meta_samples = 0u64;
    for b in &blocks {
        let block = Block::open(&b.dir).unwrap();
        meta_samples += block.meta().stats.num_samples;
        assert!(block.meta().max_time - block.meta().min_time <= 2 * HOUR);
        let mut prev: Option<Labels> = None;
        for (labels, chunks) in block.select(&[], i64::MIN, i64::MAX).unwrap() {
            assert!(
                prev.as_ref().is_none_or(|p| *p < labels),
                "sorted by labels"
            );
            prev = Some(labels.clone());
            let s = got.entry(labels).or_default();
            for c in &chunks {
                assert_eq!(c.encoding, Encoding::Xor);
                for r in c.iter().unwrap() {
                    let (t, v) = r.unwrap();
                    assert!(t >= c.min_time && t <= c.max_time);
                    assert!(t >= block.meta().min_time && t < block.meta().max_time);
                    s.push((t, v));
                }
            }
        }
        // Index queries on a promtool-made index.
        assert!(block.label_names(&[]).unwrap().contains(&"idx".to_string()));
        let hosts = block
            .label_values(
                "host",
                &[Matcher::new(MatchOp::Equal, "__name__", "queue_depth").unwrap()],
            )
            .unwrap();
        assert_eq!(hosts.len(), 40);
    }
    assert_eq!(
        meta_samples as usize, total,
        "meta.json numSamples over all blocks"
    );

    for s in got.values_mut() {
        s.sort_by_key(|&(t, _)| t);
    }
    assert_eq!(got.len(), want.len());
    for (labels, w) in &want {
        let g = got
            .get(labels)
            .unwrap_or_else(|| panic!("series {labels} missing"));
        assert_eq!(g.len(), w.len(), "sample count of {labels}");
        for (a, b) in g.iter().zip(w) {
            assert_eq!(a.0, b.0, "timestamp of {labels}");
            assert!(
                same_value(a.1, b.1),
                "{labels} at {}: read {} wrote {}",
                b.0,
                a.1,
                b.1
            );
        }
    }

    // Matchers against promtool's postings: regex, negative and absent-label semantics.
    let block = Block::open(&blocks[0].dir).unwrap();
    let m = |op, n: &str, v: &str| Matcher::new(op, n, v).unwrap();
    let sel = block
        .select(
            &[
                m(MatchOp::RegexMatch, "__name__", "node_.*"),
                m(MatchOp::NotEqual, "host", "node-000"),
                m(MatchOp::RegexMatch, "absent", "|x"),
            ],
            i64::MIN,
            i64::MAX,
        )
        .unwrap();
    let expect = want
        .keys()
        .filter(|l| {
            l.metric_name().is_some_and(|n| n.starts_with("node_"))
                && l.get("host") != Some("node-000")
        })
        .count();
    assert_eq!(sel.len(), expect);
}

/// The store gateway's ranged reads — an index-header built from ranged GETs, then
/// postings lists and series entries fetched by range — over blocks promtool made
/// answer exactly as the whole-index reader does.
#[test]
fn store_gateway_reads_promtool_blocks_by_range() {
    use store::block::{Fetched, ReadCtx, StoreBlock};
    use tsdb::block::index::IndexReader;

    let promtool = e2e::promtool_bin();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.om");
    let out = dir.path().join("bucket");
    let end = (now_ms() - 2 * HOUR).div_euclid(2 * HOUR) * 2 * HOUR - HOUR / 2;
    let mut rng = Rng(0x5EED_0000_1616_0016);
    let (text, _) = openmetrics(&mut rng, end - 3 * HOUR, end);
    std::fs::write(&input, &text).unwrap();
    run(Command::new(&promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(&out));
    let blocks = list_blocks(&out).unwrap();
    assert!(blocks.len() >= 2, "promtool made {} blocks", blocks.len());

    let bucket = objstore::Bucket::new(&objstore::BucketConfig::filesystem(&out), None).unwrap();
    let metrics = store::metrics::StoreMetrics::default();
    let index_cache = store::cache::IndexCache::new(1 << 20);
    let chunk_cache = store::cache::ChunkCache::new(1 << 20);
    let inflight = store::inflight::InflightBytes::unbounded();
    let m = |op, n: &str, v: &str| Matcher::new(op, n, v).unwrap();
    let table = vec![
        vec![m(MatchOp::Equal, "__name__", "queue_depth")],
        vec![
            m(MatchOp::RegexMatch, "host", "node-00.*"),
            m(MatchOp::NotEqual, "idx", "0-0"),
        ],
        vec![m(MatchOp::RegexNoMatch, "__name__", "node_.*")],
        vec![
            m(MatchOp::RegexNoMatch, "idx", "0-.*"),
            m(MatchOp::Equal, "host", "node-007"),
        ],
        vec![m(MatchOp::Equal, "missing", "")],
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for b in &blocks {
        let full = IndexReader::new(tsdb::block::map_file(&b.dir.join("index")).unwrap()).unwrap();
        let sb = StoreBlock::new(b.meta.clone(), &dir.path().join("data"), bucket.clone());
        rt.block_on(async {
            let fetched = Fetched::default();
            let ctx = ReadCtx {
                metrics: &metrics,
                index_cache: &index_cache,
                chunk_cache: &chunk_cache,
                fetched: &fetched,
                inflight: &inflight,
            };
            let hdr = sb.header(&metrics).await.unwrap();
            assert_eq!(hdr.postings.label_names(), full.label_names());
            for n in full.label_names() {
                assert_eq!(hdr.postings.label_values(&n), full.label_values(&n));
            }
            for ms in &table {
                let want = tsdb::block::postings_for_matchers(&full, ms).unwrap();
                assert!(!want.is_empty(), "{ms:?} selects nothing");
                let got = sb.postings(&hdr, ms, ctx).await.unwrap();
                assert_eq!(got, want, "{ms:?}");
                let series = sb.series(&hdr, &got, ctx).await.unwrap();
                for (id, s) in want.iter().zip(&series) {
                    assert_eq!(*s, full.series(*id).unwrap());
                }
            }
        });
        assert!(sb.header_path().is_file());
    }
}
