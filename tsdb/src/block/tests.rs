//! Round-trip and corruption tests for whole blocks.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use storeapi::{Labels, MatchOp, Matcher};

use super::*;
use crate::chunk::{Chunk, ChunkView, Encoding, XorChunk};

fn xor_chunk(samples: &[(i64, f64)]) -> Chunk {
    let mut c = XorChunk::new();
    for &(t, v) in samples {
        c.append(t, v).unwrap();
    }
    Chunk {
        min_time: samples[0].0,
        max_time: samples[samples.len() - 1].0,
        encoding: Encoding::Xor,
        data: Bytes::from(c.into_bytes()),
    }
}

type Series = Vec<(Labels, Vec<(i64, f64)>)>;

/// `n` series over a few metrics, each with `per` samples every 15 s from t0.
fn make_series(n: usize, per: usize, t0: i64) -> Series {
    let mut out: Series = (0..n)
        .map(|i| {
            let l = Labels::from_pairs([
                ("__name__", format!("metric_{}", i % 3)),
                ("instance", format!("host-{}", i / 3)),
                ("job", if i % 2 == 0 { "even" } else { "odd" }.to_string()),
            ])
            .unwrap();
            let s = (0..per)
                .map(|k| (t0 + 15_000 * k as i64, (i * 1000 + k) as f64 * 0.5))
                .collect();
            (l, s)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn to_chunks(samples: &[(i64, f64)]) -> Vec<Chunk> {
    samples.chunks(120).map(xor_chunk).collect()
}

fn write(dir: &Path, series: &Series, mint: i64, maxt: i64, opts: &BlockOptions) -> BlockMeta {
    BlockWriter::write(
        dir,
        mint,
        maxt,
        series.iter().map(|(l, s)| (l.clone(), to_chunks(s))),
        opts,
    )
    .unwrap()
}

fn decode(chunks: &[Chunk]) -> Vec<(i64, f64)> {
    chunks
        .iter()
        .flat_map(|c| c.iter().unwrap().map(|r| r.unwrap()))
        .collect()
}

#[test]
fn round_trip_series_chunks_labels() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = 1_700_000_000_000;
    let series = make_series(300, 400, t0);
    let mut ext = BTreeMap::new();
    ext.insert("receive_replica".to_string(), "0".to_string());
    let opts = BlockOptions {
        thanos: Some(ThanosMeta::new(ext, "receive")),
        ..Default::default()
    };
    let maxt = t0 + 2 * 3_600_000;
    let meta = write(dir.path(), &series, t0, maxt, &opts);
    assert_eq!(meta.stats.num_series, 300);
    assert_eq!(meta.stats.num_samples, 300 * 400);
    assert_eq!(meta.stats.num_chunks, 300 * 4);
    assert_eq!(meta.compaction.sources, vec![meta.ulid]);

    let bdir = dir.path().join(meta.ulid.to_string());
    assert!(bdir.join("tombstones").is_file());
    assert!(bdir.join("chunks/000001").is_file());
    assert!(
        !dir.path()
            .join(format!("{}{TMP_FOR_CREATION}", meta.ulid))
            .exists()
    );
    let b = Block::open(&bdir).unwrap();
    assert_eq!(b.meta(), &meta);
    assert_eq!(b.meta().thanos.as_ref().unwrap().source, "receive");

    // Everything back, sorted, sample for sample.
    let all = b.select(&[], i64::MIN, i64::MAX).unwrap();
    assert_eq!(all.len(), series.len());
    for ((l, chunks), (want_l, want_s)) in all.iter().zip(&series) {
        assert_eq!(l, want_l);
        assert_eq!(&decode(chunks), want_s);
    }

    // Matchers.
    let m = |op, n: &str, v: &str| Matcher::new(op, n, v).unwrap();
    let got = b
        .select(
            &[m(MatchOp::Equal, "__name__", "metric_1")],
            i64::MIN,
            i64::MAX,
        )
        .unwrap();
    assert_eq!(got.len(), 100);
    let got = b
        .select(
            &[
                m(MatchOp::RegexMatch, "__name__", "metric_[12]"),
                m(MatchOp::NotEqual, "job", "even"),
            ],
            i64::MIN,
            i64::MAX,
        )
        .unwrap();
    let want: Vec<_> = series
        .iter()
        .filter(|(l, _)| l.get("__name__") != Some("metric_0") && l.get("job") == Some("odd"))
        .map(|(l, _)| l.clone())
        .collect();
    assert_eq!(got.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>(), want);
    // A matcher that matches "" selects series without the label.
    assert_eq!(
        b.select(&[m(MatchOp::RegexMatch, "nope", "x|")], i64::MIN, i64::MAX)
            .unwrap()
            .len(),
        300
    );
    assert!(
        b.select(&[m(MatchOp::Equal, "nope", "x")], i64::MIN, i64::MAX)
            .unwrap()
            .is_empty()
    );
    assert!(
        b.select(&[m(MatchOp::RegexMatch, "job", "ev")], i64::MIN, i64::MAX)
            .unwrap()
            .is_empty(),
        "regexes are anchored"
    );
    assert_eq!(
        b.select(
            &[m(MatchOp::RegexNoMatch, "job", "ev.*")],
            i64::MIN,
            i64::MAX
        )
        .unwrap()
        .len(),
        150
    );

    // Time ranges pick overlapping chunks only.
    let got = b.select(&[], t0 + 15_000 * 130, t0 + 15_000 * 200).unwrap();
    assert_eq!(got[0].1.len(), 1);
    assert!(b.select(&[], maxt, maxt + 10).unwrap().is_empty());

    // Label names and values.
    assert_eq!(
        b.label_names(&[]).unwrap(),
        vec!["__name__", "instance", "job"]
    );
    assert_eq!(b.label_values("job", &[]).unwrap(), vec!["even", "odd"]);
    assert_eq!(
        b.label_values("__name__", &[m(MatchOp::Equal, "instance", "host-0")])
            .unwrap(),
        vec!["metric_0", "metric_1", "metric_2"]
    );
    assert_eq!(
        b.label_values("job", &[m(MatchOp::Equal, "instance", "host-0")])
            .unwrap()
            .len(),
        2
    );
    assert!(b.label_values("nope", &[]).unwrap().is_empty());
}

#[test]
fn index_bytes_follow_prometheus_layout() {
    let dir = tempfile::tempdir().unwrap();
    let series = make_series(4, 3, 1000);
    let meta = write(dir.path(), &series, 1000, 100_000, &BlockOptions::default());
    let idx = std::fs::read(dir.path().join(meta.ulid.to_string()).join("index")).unwrap();
    assert_eq!(&idx[..5], &[0xBA, 0xAA, 0xD7, 0x00, 2]);
    // Symbol table right after the header: len, count, then sorted strings.
    let count = u32::from_be_bytes(idx[9..13].try_into().unwrap());
    // 3 names, 3 metric names, 2 hosts, 2 jobs.
    assert_eq!(count, 3 + 3 + 2 + 2);
    let seg = std::fs::read(dir.path().join(meta.ulid.to_string()).join("chunks/000001")).unwrap();
    assert_eq!(&seg[..8], &[0x85, 0xBD, 0x40, 0xDD, 1, 0, 0, 0]);
}

#[test]
fn rejects_unsorted_series_and_out_of_range_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mut series = make_series(5, 3, 1000);
    series.swap(0, 1);
    let r = BlockWriter::write(
        dir.path(),
        0,
        100_000,
        series.iter().map(|(l, s)| (l.clone(), to_chunks(s))),
        &BlockOptions::default(),
    );
    assert!(matches!(r, Err(BlockError::Invalid(_))));
    let series = make_series(5, 3, 1000);
    let r = BlockWriter::write(
        dir.path(),
        0,
        2000,
        series.iter().map(|(l, s)| (l.clone(), to_chunks(s))),
        &BlockOptions::default(),
    );
    assert!(matches!(r, Err(BlockError::Invalid(_))));
    // Nothing half-written is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn small_segments_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let series = make_series(60, 240, 0);
    let opts = BlockOptions {
        segment_size: 4096,
        ..Default::default()
    };
    let meta = write(dir.path(), &series, 0, 7_200_000, &opts);
    let bdir = dir.path().join(meta.ulid.to_string());
    assert!(bdir.join("chunks/000003").is_file());
    let b = Block::open(&bdir).unwrap();
    let all = b.select(&[], i64::MIN, i64::MAX).unwrap();
    for ((l, chunks), (want_l, want_s)) in all.iter().zip(&series) {
        assert_eq!(l, want_l);
        assert_eq!(&decode(chunks), want_s);
    }
}

fn block_with_files(dir: &Path) -> std::path::PathBuf {
    let series = make_series(30, 200, 0);
    let meta = write(dir, &series, 0, 7_200_000, &BlockOptions::default());
    dir.join(meta.ulid.to_string())
}

#[test]
fn truncated_index_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let b = block_with_files(dir.path());
    let p = b.join("index");
    let full = std::fs::read(&p).unwrap();
    for cut in [0, 3, 5, 40, full.len() / 2, full.len() - 1] {
        std::fs::write(&p, &full[..cut]).unwrap();
        assert!(Block::open(&b).is_err(), "index cut at {cut} must not open");
    }
}

#[test]
fn flipped_bytes_are_detected_or_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let b = block_with_files(dir.path());
    let p = b.join("index");
    let full = std::fs::read(&p).unwrap();
    let reference = Block::open(&b)
        .unwrap()
        .select(&[], i64::MIN, i64::MAX)
        .unwrap();
    // Flip every byte in turn: each either fails (with an error, never a panic) or,
    // when it hit padding or unused sections, reads back the same data.
    for i in 0..full.len() {
        let mut bad = full.clone();
        bad[i] ^= 0x5a;
        std::fs::write(&p, &bad).unwrap();
        let r = Block::open(&b).and_then(|blk| blk.select(&[], i64::MIN, i64::MAX));
        if let Ok(got) = r {
            assert_eq!(got, reference, "flip at {i} changed data silently");
        }
    }
    std::fs::write(&p, &full).unwrap();

    // A chunk with a bad CRC.
    let sp = b.join("chunks/000001");
    let mut seg = std::fs::read(&sp).unwrap();
    seg[20] ^= 0xff;
    std::fs::write(&sp, &seg).unwrap();
    let blk = Block::open(&b).unwrap();
    assert!(matches!(
        blk.select(&[], i64::MIN, i64::MAX),
        Err(BlockError::Checksum("chunk"))
    ));
}

#[test]
fn bad_meta_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let b = block_with_files(dir.path());
    std::fs::write(b.join("meta.json"), b"{\"ulid\": 5").unwrap();
    assert!(matches!(Block::open(&b), Err(BlockError::Meta { .. })));
}

#[test]
fn tombstones_hide_deleted_samples() {
    let dir = tempfile::tempdir().unwrap();
    let b = block_with_files(dir.path());
    let blk = Block::open(&b).unwrap();
    let ids = blk.postings_for_matchers(&[]).unwrap();
    let mut stones = tombstones::Tombstones::new();
    stones.insert(ids[0], vec![(15_000, 30_000)]);
    stones.insert(ids[1], vec![(i64::MIN, i64::MAX)]);
    std::fs::write(b.join("tombstones"), tombstones::encode(&stones)).unwrap();
    let blk = Block::open(&b).unwrap();
    let all = blk.select(&[], i64::MIN, i64::MAX).unwrap();
    assert_eq!(all.len(), 29);
    let first = decode(&all[0].1);
    assert_eq!(first.len(), 198);
    assert!(first.iter().all(|&(t, _)| !(15_000..=30_000).contains(&t)));
}

#[test]
fn retention_and_tmp_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let h = 3_600_000;
    let series = make_series(2, 2, 0);
    let mut metas = Vec::new();
    for k in 0..4i64 {
        let s: Series = series
            .iter()
            .map(|(l, ss)| {
                (
                    l.clone(),
                    ss.iter().map(|&(t, v)| (t + k * 2 * h, v)).collect(),
                )
            })
            .collect();
        metas.push(write(
            dir.path(),
            &s,
            k * 2 * h,
            (k + 1) * 2 * h,
            &BlockOptions::default(),
        ));
    }
    std::fs::create_dir(
        dir.path()
            .join(format!("{}{TMP_FOR_CREATION}", Ulid::new())),
    )
    .unwrap();
    assert_eq!(remove_tmp_dirs(dir.path()).unwrap(), 1);
    assert_eq!(list_blocks(dir.path()).unwrap().len(), 4);
    // Newest maxTime is 8h; retention 4h deletes blocks ending at or before 4h.
    let deleted = apply_retention(dir.path(), 4 * h, None).unwrap();
    assert_eq!(
        deleted.iter().map(|m| m.ulid).collect::<Vec<_>>(),
        vec![metas[0].ulid, metas[1].ulid]
    );
    let left = list_blocks(dir.path()).unwrap();
    assert_eq!(left.len(), 2);
    assert_eq!(left[0].meta.ulid, metas[2].ulid);
    // With wall-clock time far ahead, everything goes.
    assert_eq!(
        apply_retention(dir.path(), 4 * h, Some(100 * h))
            .unwrap()
            .len(),
        2
    );
    assert!(list_blocks(dir.path()).unwrap().is_empty());
}

#[test]
fn index_stats_equal_the_largest_series_entry_and_chunk_record_on_disk() {
    use super::chunks::{segment_name, unpack_ref};
    use super::encoding::uvarint;
    use super::index::IndexReader;

    let d = tempfile::tempdir().unwrap();
    let mut series = make_series(12, 300, 0);
    // A series of many chunks (the largest index entry: labels are symbol references,
    // each chunk adds its meta; not the last series, so Thanos's distance-between-
    // references measure sees it too) and one with noisy values (the largest chunks).
    series.push((
        Labels::from_pairs([("__name__", "metric_1"), ("long", "yes")]).unwrap(),
        (0..4000).map(|k| (k * 1000, 1.0)).collect(),
    ));
    series.push((
        Labels::from_pairs([("__name__", "metric_2"), ("noise", "x")]).unwrap(),
        (0..240)
            .map(|k| {
                (
                    k * 15_000 + (k * k) % 977,
                    ((k * 7919) % 104_729) as f64 / 3.7,
                )
            })
            .collect(),
    ));
    series.sort_by(|a, b| a.0.cmp(&b.0));
    let opts = BlockOptions {
        thanos: Some(ThanosMeta::new(
            BTreeMap::from([("a".to_string(), "b".to_string())]),
            "compactor",
        )),
        segment_size: 4096,
        ..Default::default()
    };
    let meta = write(d.path(), &series, 0, 10_000_000, &opts);
    let dir = d.path().join(meta.ulid.to_string());

    // Measure the written files directly.
    let index = std::fs::read(dir.join("index")).unwrap();
    let ir = IndexReader::new(Bytes::from(index.clone())).unwrap();
    let ids = ir.all_postings().unwrap();
    let (mut series_max, mut chunk_max, mut thanos_series, mut thanos_chunk) = (0, 0, 0, 0);
    let mut segments: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    for (i, &id) in ids.iter().enumerate() {
        let off = id as usize * 16;
        let (len, n) = uvarint(&index[off..]).unwrap();
        series_max = series_max.max((n + len as usize + 4).div_ceil(16) * 16);
        if i > 0 {
            thanos_series = thanos_series.max((id - ids[i - 1]) as usize * 16);
        }
        let (_, chunks) = ir.series(id).unwrap();
        for (k, c) in chunks.iter().enumerate() {
            let (seg, at) = unpack_ref(c.chunk_ref);
            let data = segments.entry(seg).or_insert_with(|| {
                std::fs::read(dir.join("chunks").join(segment_name(seg))).unwrap()
            });
            let (len, n) = uvarint(&data[at..]).unwrap();
            chunk_max = chunk_max.max(n + 1 + len as usize + 4);
            if let Some(next) = chunks.get(k + 1) {
                let (seg2, at2) = unpack_ref(next.chunk_ref);
                if seg2 == seg {
                    thanos_chunk = thanos_chunk.max(at2 - at);
                }
            }
        }
    }
    assert!(segments.len() > 1, "small segments: several files");
    let st = meta.index_stats();
    assert_eq!(st.series_max_size as usize, series_max);
    assert_eq!(st.chunk_max_size as usize, chunk_max);
    assert!(series_max > 100 && chunk_max > 200, "{st:?}");
    // Thanos's approximations (distances between references, blind to the last series
    // and to each series' last chunk) never exceed the exact maxima; the largest series
    // here is not the last one, so both find it.
    assert_eq!(thanos_series, series_max);
    assert!(thanos_chunk > 0 && thanos_chunk <= chunk_max);
    // What meta.json on disk says.
    assert_eq!(read_meta(&dir).unwrap().index_stats(), st);
    // Without a thanos section there is nowhere to put them.
    let plain = write(d.path(), &series, 0, 10_000_000, &BlockOptions::default());
    assert_eq!(plain.index_stats(), IndexStats::default());
}

#[test]
fn index_writer_orders_series_by_symbol_ids_and_postings_by_label_pair() {
    use super::index::{ChunkMeta, IndexReader, IndexWriter};

    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("index");
    let symbols: Vec<String> = ["__name__", "a", "b", "job", "up", "x", "y", "z"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut w = IndexWriter::new(&path, symbols).unwrap();
    let meta = |r: u64| {
        [ChunkMeta {
            chunk_ref: r,
            min_time: 0,
            max_time: 10,
        }]
    };
    let series: Vec<Labels> = [
        vec![("__name__", "up"), ("job", "a")],
        vec![("__name__", "up"), ("job", "a"), ("x", "y")],
        vec![("__name__", "up"), ("job", "b")],
        vec![("__name__", "z"), ("job", "a")],
    ]
    .into_iter()
    .map(|p| Labels::from_pairs(p).unwrap())
    .collect();
    for (i, l) in series.iter().enumerate() {
        w.add_series(l, &meta(8 + i as u64)).unwrap();
    }
    // Not after the last one (equal, or smaller by a later pair): refused, naming both.
    let err = w
        .add_series_pairs([("__name__", "up"), ("job", "b")], &meta(20))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("out of order") && err.contains("job=\"b\""),
        "{err}"
    );
    let err = w
        .add_series_pairs([("__name__", "zz")], &meta(20))
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"zz\" missing from symbol table"), "{err}");
    w.finish().unwrap();

    let ir = IndexReader::new(Bytes::from(std::fs::read(&path).unwrap())).unwrap();
    let ids = ir.all_postings().unwrap();
    let read: Vec<Labels> = ids.iter().map(|&id| ir.series(id).unwrap().0).collect();
    assert_eq!(read, series);
    let list = |n: &str, v: &str| {
        let r = ir.postings_table().lookup(n, v).unwrap();
        let got = ir.postings(r.start).unwrap();
        got.iter()
            .map(|&id| ids.iter().position(|&x| x == id).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(list("job", "a"), vec![0, 1, 3]);
    assert_eq!(list("__name__", "up"), vec![0, 1, 2]);
    assert_eq!(list("x", "y"), vec![1]);
    assert!(ir.postings_table().lookup("x", "z").is_none());
    assert_eq!(ir.label_values("job"), vec!["a", "b"]);
}

/// A source string table as the head keeps one: strings by id in creation order (not
/// sorted), with a gap (an id no series names) and ids past the ones used.
fn id_table(series: &Series) -> (Vec<String>, Vec<Vec<u32>>) {
    let mut table: Vec<String> = vec!["unused".to_string()];
    let mut id_of = std::collections::HashMap::<String, u32>::new();
    // Creation order: reversed series order, so source ids are not sorted either.
    let mut keys: Vec<Vec<u32>> = Vec::new();
    for (l, _) in series.iter().rev() {
        let mut k = Vec::new();
        for x in l.iter() {
            for s in [&x.name, &x.value] {
                let id = *id_of.entry(s.to_string()).or_insert_with(|| {
                    table.push(s.to_string());
                    (table.len() - 1) as u32
                });
                k.push(id);
            }
        }
        keys.push(k);
    }
    keys.reverse();
    table.push("also unused".to_string());
    (table, keys)
}

#[test]
fn blocks_written_from_symbol_ids_equal_those_written_from_text() {
    let t0 = 1_700_000_000_000;
    let series = make_series(120, 30, t0);
    let (table, keys) = id_table(&series);
    let maxt = t0 + 3_600_000;
    let ulid = Ulid::new();
    let opts = BlockOptions {
        ulid: Some(ulid),
        ..Default::default()
    };
    let text_dir = tempfile::tempdir().unwrap();
    let text_meta = write(text_dir.path(), &series, t0, maxt, &opts);
    let ids_dir = tempfile::tempdir().unwrap();
    let mut asked: Vec<u32> = Vec::new();
    let ids_meta = BlockWriter::write_with_ids(
        ids_dir.path(),
        t0,
        maxt,
        &opts,
        |ids| {
            asked = ids.to_vec();
            ids.iter().map(|&i| table[i as usize].clone()).collect()
        },
        |w| {
            for ((_, s), k) in series.iter().zip(&keys) {
                let chunks = to_chunks(s);
                let views: Vec<ChunkView<'_>> = chunks.iter().map(Chunk::view).collect();
                w.series_ids(k, &views)?;
            }
            // A series without chunks is skipped, as by `series`.
            w.series_ids(&[0, 0], &[])
        },
    )
    .unwrap();
    assert_eq!(ids_meta.stats, text_meta.stats);
    // Only the ids the series named were asked for, once each.
    let mut expected: Vec<u32> = keys.iter().flatten().copied().collect();
    expected.sort_unstable();
    expected.dedup();
    assert_eq!(asked, expected);
    assert!(!asked.contains(&0));
    let block = |d: &Path| d.join(ulid.to_string());
    for file in ["index", "chunks/000001", "tombstones"] {
        let a = std::fs::read(block(text_dir.path()).join(file)).unwrap();
        let b = std::fs::read(block(ids_dir.path()).join(file)).unwrap();
        assert!(a == b, "{file} differs between text and ids");
    }
    // And it reads back.
    let b = Block::open(&block(ids_dir.path())).unwrap();
    let m = [Matcher::new(MatchOp::Equal, "job", "odd").unwrap()];
    let got = b.select(&m, t0, maxt).unwrap();
    assert_eq!(got.len(), 60);
}

#[test]
fn a_writer_of_symbol_ids_refuses_unsorted_series_and_unknown_ids() {
    let t0 = 1_000;
    let series = make_series(5, 3, t0);
    let (table, keys) = id_table(&series);
    let strings =
        |ids: &[u32]| -> Vec<String> { ids.iter().map(|&i| table[i as usize].clone()).collect() };
    let feed = |order: Vec<usize>| {
        let keys = keys.clone();
        let series = series.clone();
        move |w: &mut SeriesSink| {
            for i in order {
                let chunks = to_chunks(&series[i].1);
                let views: Vec<ChunkView<'_>> = chunks.iter().map(Chunk::view).collect();
                w.series_ids(&keys[i], &views)?;
            }
            Ok(())
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let opts = BlockOptions::default();
    // Out of order (by the strings, which only the index pass knows).
    let r =
        BlockWriter::write_with_ids(dir.path(), 0, 100_000, &opts, strings, feed(vec![1, 0, 2]));
    assert!(
        matches!(&r, Err(BlockError::Invalid(m)) if m.contains("out of order")),
        "{r:?}"
    );
    // Twice the same series.
    let r = BlockWriter::write_with_ids(dir.path(), 0, 100_000, &opts, strings, feed(vec![0, 0]));
    assert!(matches!(r, Err(BlockError::Invalid(_))), "{r:?}");
    // Text given to a writer of ids, an odd id list, fewer strings than ids.
    let chunks = to_chunks(&series[0].1);
    let views: Vec<ChunkView<'_>> = chunks.iter().map(Chunk::view).collect();
    let r = BlockWriter::write_with_ids(dir.path(), 0, 100_000, &opts, strings, |w| {
        w.series(&[("a", "b")], &views)
    });
    assert!(matches!(r, Err(BlockError::Invalid(_))), "{r:?}");
    let r = BlockWriter::write_with_ids(dir.path(), 0, 100_000, &opts, strings, |w| {
        w.series_ids(&[1, 2, 3], &views)
    });
    assert!(matches!(r, Err(BlockError::Invalid(_))), "{r:?}");
    let r = BlockWriter::write_with_ids(
        dir.path(),
        0,
        100_000,
        &opts,
        |_| Vec::new(),
        |w| w.series_ids(&[1, 2], &views),
    );
    assert!(matches!(r, Err(BlockError::Invalid(_))), "{r:?}");
    // Ids given to a writer of text.
    let r = BlockWriter::write_with(dir.path(), 0, 100_000, &opts, |w| {
        w.series_ids(&[1, 2], &views)
    });
    assert!(matches!(r, Err(BlockError::Invalid(_))), "{r:?}");
    // Nothing half-written is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
