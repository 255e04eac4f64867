//! `tools bucket verify`: checks every block of a bucket the way a reader will need it,
//! and reports every problem found instead of stopping at the first.
//!
//! Per block: `meta.json` parses; every file listed in `thanos.files` exists with its
//! size and, when listed (`--hash-func=SHA256` at upload), its hash (and `index` exists
//! even for metas without that list); the index opens with
//! the TSDB's index reader (checksummed TOC, symbols, postings table) and every series
//! entry decodes; every chunk reference points inside an existing chunk segment;
//! chunks lie inside the block's time range and in time order; series are sorted and
//! unique; the meta's series/chunk counts match the index. Across blocks: no two
//! blocks of one `resolution@external labels` group overlap in time (blocks marked for
//! deletion and compacted sources — blocks whose sources another block of the group
//! covers — are left out: readers already hide them and the compactor deletes them).
//!
//! The index is downloaded into a scratch directory (it is read in full to check every
//! series entry); chunk segments are not downloaded, their sizes are enough to check
//! the references.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use tsdb::block::chunks::{SEGMENT_HEADER_SIZE, segment_name, unpack_ref};
use tsdb::block::index::IndexReader;
use tsdb::block::{BlockMeta, Ulid};

use crate::block::FileEntry;
use crate::bucket::{Bucket, BucketError};
use crate::discovery::{Discovery, MetaFetcher};
use crate::hash::{HashFunc, Hasher, ObjectHash, hash_file};

/// At most this many problems of one kind are listed per block (then a count), so a
/// badly broken index does not print millions of lines.
const MAX_SAME_KIND: usize = 10;

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The block, when the problem is about one (overlaps name both in `what`).
    pub block: Option<Ulid>,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.block {
            Some(b) => write!(f, "block {b}: {}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

/// What `verify` looked at and found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub blocks_checked: usize,
    pub problems: Vec<Problem>,
}

/// The group a block belongs to for overlap checks: Thanos's `resolution@labels` key.
pub fn group_key(meta: &BlockMeta) -> String {
    let (res, labels) = match &meta.thanos {
        Some(t) => (t.downsample.resolution, t.labels.clone()),
        None => (0, BTreeMap::new()),
    };
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{res}@{{{}}}", l.join(","))
}

/// Pairs of blocks in one group whose `[minTime, maxTime)` ranges intersect, each pair
/// once, ordered by the first block's `minTime`.
pub fn overlaps<'a>(metas: impl IntoIterator<Item = &'a BlockMeta>) -> Vec<(String, Ulid, Ulid)> {
    let mut groups: BTreeMap<String, Vec<&BlockMeta>> = BTreeMap::new();
    for m in metas {
        groups.entry(group_key(m)).or_default().push(m);
    }
    let mut out = Vec::new();
    for (key, mut ms) in groups {
        ms.sort_by_key(|m| (m.min_time, m.ulid));
        for (i, a) in ms.iter().enumerate() {
            for b in &ms[i + 1..] {
                if b.min_time >= a.max_time {
                    break;
                }
                out.push((key.clone(), a.ulid, b.ulid));
            }
        }
    }
    out
}

/// Verifies the blocks `ids` (empty: all) of `bucket`, using `scratch` for downloaded
/// indexes. An error is returned only when the bucket cannot be listed at all; every
/// other failure is a [`Problem`].
pub async fn verify_bucket(
    bucket: &Bucket,
    scratch: &Path,
    ids: &[Ulid],
) -> Result<VerifyReport, BucketError> {
    let d: Discovery = MetaFetcher::new(bucket.clone(), None).fetch().await?;
    let wanted = |u: &Ulid| ids.is_empty() || ids.contains(u);
    let mut report = VerifyReport::default();
    for (id, reason) in &d.corrupt {
        if wanted(id) {
            report.problems.push(Problem {
                block: Some(*id),
                what: format!("meta.json does not parse: {reason}"),
            });
        }
    }
    for id in &d.partial {
        if wanted(id) {
            report.problems.push(Problem {
                block: Some(*id),
                what: "no meta.json: a partial upload (or one still in progress)".into(),
            });
        }
    }
    for id in ids {
        if !d.blocks.contains_key(id)
            && !d.partial.contains(id)
            && !d.corrupt.iter().any(|(c, _)| c == id)
        {
            report.problems.push(Problem {
                block: Some(*id),
                what: "not in the bucket".into(),
            });
        }
    }
    for (id, e) in &d.blocks {
        if !wanted(id) {
            continue;
        }
        report.blocks_checked += 1;
        for what in verify_block(bucket, scratch, &e.meta).await {
            report.problems.push(Problem {
                block: Some(*id),
                what,
            });
        }
    }
    let hidden = d.compacted_sources();
    let live = d
        .blocks
        .values()
        .filter(|e| e.deletion_mark.is_none() && !hidden.contains(&e.meta.ulid))
        .map(|e| &e.meta);
    for (group, a, b) in overlaps(live) {
        if wanted(&a) || wanted(&b) {
            let (ma, mb) = (&d.blocks[&a].meta, &d.blocks[&b].meta);
            report.problems.push(Problem {
                block: None,
                what: format!(
                    "overlapping blocks in group {group}: {a} [{}, {}) and {b} [{}, {})",
                    ma.min_time, ma.max_time, mb.min_time, mb.max_time
                ),
            });
        }
    }
    Ok(report)
}

/// The problems of one block (empty: none).
async fn verify_block(bucket: &Bucket, scratch: &Path, meta: &BlockMeta) -> Vec<String> {
    let ulid = meta.ulid;
    let mut problems = Vec::new();
    if meta.min_time >= meta.max_time {
        problems.push(format!(
            "minTime {} is not before maxTime {}",
            meta.min_time, meta.max_time
        ));
    }
    let listed = match bucket.list_recursive(&ulid.to_string()).await {
        Ok(l) => l,
        Err(e) => {
            problems.push(format!("listing its objects failed: {e}"));
            return problems;
        }
    };
    let prefix = format!("{ulid}/");
    let present: HashMap<String, u64> = listed
        .into_iter()
        .filter_map(|(k, a)| k.strip_prefix(&prefix).map(|r| (r.to_string(), a.size)))
        .collect();

    let files: Option<Vec<FileEntry>> =
        match meta.thanos.as_ref().and_then(|t| t.extra.get("files")) {
            None => None,
            Some(v) => match serde_json::from_value(v.clone()) {
                Ok(f) => Some(f),
                Err(e) => {
                    problems.push(format!("thanos.files does not parse: {e}"));
                    None
                }
            },
        };
    for f in files.iter().flatten() {
        if f.rel_path == "meta.json" {
            continue;
        }
        match (present.get(&f.rel_path), f.size_bytes) {
            (None, _) => {
                problems.push(format!("{} is listed in meta.json but missing", f.rel_path))
            }
            (Some(&got), Some(want)) if got != want => problems.push(format!(
                "{} is {got} bytes, meta.json says {want}",
                f.rel_path
            )),
            _ => {}
        }
        // The index's hash is checked once it is downloaded, below.
        if let Some(want) = &f.hash
            && f.rel_path != "index"
            && present.contains_key(&f.rel_path)
        {
            let Some(mut h) = Hasher::for_name(&want.func) else {
                problems.push(unknown_hash(&f.rel_path, &want.func));
                continue;
            };
            match bucket
                .get_each(&format!("{ulid}/{}", f.rel_path), |b| h.update(b))
                .await
            {
                Ok(_) => problems.extend(hash_mismatch(&f.rel_path, want, &h.finish())),
                Err(e) => problems.push(format!("reading {} to check its hash: {e}", f.rel_path)),
            }
        }
    }
    let index_hash = files
        .iter()
        .flatten()
        .find(|f| f.rel_path == "index")
        .and_then(|f| f.hash.clone());
    // Chunk segments as the index addresses them: by number, from the objects present.
    let mut segments: BTreeMap<usize, u64> = BTreeMap::new();
    for (rel, size) in &present {
        if let Some(n) = rel
            .strip_prefix("chunks/")
            .and_then(|s| s.parse::<usize>().ok())
            && n >= 1
        {
            segments.insert(n - 1, *size);
        }
    }
    if !present.contains_key("index") {
        // Reported above when `thanos.files` lists it.
        if files.is_none() {
            problems.push("index is missing".into());
        }
        return problems;
    }
    // A wrong-sized index was reported above; reading it still names what is broken.
    let local = scratch.join(format!("{ulid}-index"));
    if let Err(e) = bucket.download_file(&format!("{ulid}/index"), &local).await {
        problems.push(format!("downloading the index failed: {e}"));
        return problems;
    }
    if let Some(want) = &index_hash {
        match HashFunc::parse(&want.func) {
            Ok(func) if func != HashFunc::None => {
                let p = local.clone();
                match tokio::task::spawn_blocking(move || hash_file(&p, func)).await {
                    Ok(Ok(Some(got))) => problems.extend(hash_mismatch("index", want, &got.value)),
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => problems.push(format!("hashing the downloaded index: {e}")),
                    Err(e) => problems.push(format!("hashing the downloaded index: {e}")),
                }
            }
            _ => problems.push(unknown_hash("index", &want.func)),
        }
    }
    let m = meta.clone();
    let path = local.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let b = tsdb::block::map_file(&path).map_err(|e| e.to_string())?;
        Ok::<_, String>(check_index(b, &m, &segments))
    })
    .await;
    let _ = std::fs::remove_file(&local);
    match checked {
        Ok(Ok(p)) => problems.extend(p),
        Ok(Err(e)) => problems.push(format!("reading the downloaded index: {e}")),
        Err(e) => problems.push(format!("checking the index failed: {e}")),
    }
    problems
}

/// A problem when `got` (hex) is not the hash `meta.json` lists for `rel`.
fn hash_mismatch(rel: &str, want: &ObjectHash, got: &str) -> Option<String> {
    (got != want.value).then(|| {
        format!(
            "{rel}: its {} hash is {got}, meta.json says {}",
            want.func, want.value
        )
    })
}

fn unknown_hash(rel: &str, func: &str) -> String {
    format!(
        "{rel}: meta.json lists a hash of unknown function {func:?} (Thanos knows only \"SHA256\"); not checked"
    )
}

/// Collects at most [`MAX_SAME_KIND`] messages per kind, counting the rest.
#[derive(Default)]
struct Capped {
    out: Vec<String>,
    counts: BTreeMap<&'static str, usize>,
}

impl Capped {
    fn push(&mut self, kind: &'static str, msg: impl FnOnce() -> String) {
        let n = self.counts.entry(kind).or_default();
        *n += 1;
        if *n <= MAX_SAME_KIND {
            self.out.push(msg());
        }
    }

    fn finish(mut self) -> Vec<String> {
        for (kind, n) in self.counts {
            if n > MAX_SAME_KIND {
                self.out
                    .push(format!("… and {} more of: {kind}", n - MAX_SAME_KIND));
            }
        }
        self.out
    }
}

/// Checks an index against its block: readable, every series entry decodes, series
/// sorted and unique, chunks inside the block range, in order, and inside a segment
/// (`segments`: 0-based segment index → size in bytes). Pure; tested directly.
pub fn check_index(
    index: bytes::Bytes,
    meta: &BlockMeta,
    segments: &BTreeMap<usize, u64>,
) -> Vec<String> {
    let r = match IndexReader::new(index) {
        Ok(r) => r,
        Err(e) => return vec![format!("index unreadable: {e}")],
    };
    let ids = match r.all_postings() {
        Ok(ids) => ids,
        Err(e) => return vec![format!("index: all-series postings unreadable: {e}")],
    };
    let mut p = Capped::default();
    let mut prev = None;
    let (mut series, mut chunks) = (0u64, 0u64);
    for id in ids {
        let (labels, metas) = match r.series(id) {
            Ok(s) => s,
            Err(e) => {
                p.push("unreadable series entry", || {
                    format!("index: series entry {id}: {e}")
                });
                continue;
            }
        };
        series += 1;
        chunks += metas.len() as u64;
        if let Some(pl) = &prev
            && *pl >= labels
        {
            p.push("series out of order or duplicated", || {
                format!("index: series {labels} is not after {pl}")
            });
        }
        let mut last_max: Option<i64> = None;
        for c in &metas {
            if c.min_time > c.max_time {
                p.push("chunk with minTime after maxTime", || {
                    format!(
                        "index: series {labels}: chunk [{}, {}] is reversed",
                        c.min_time, c.max_time
                    )
                });
            }
            if c.min_time < meta.min_time || c.max_time >= meta.max_time {
                p.push("chunk outside the block's time range", || {
                    format!(
                        "index: series {labels}: chunk [{}, {}] outside the block [{}, {})",
                        c.min_time, c.max_time, meta.min_time, meta.max_time
                    )
                });
            }
            if last_max.is_some_and(|m| c.min_time <= m) {
                p.push("chunks overlapping or out of order", || {
                    format!(
                        "index: series {labels}: chunk starting at {} overlaps the previous one",
                        c.min_time
                    )
                });
            }
            last_max = Some(c.max_time);
            let (seg, off) = unpack_ref(c.chunk_ref);
            match segments.get(&seg) {
                None => p.push("chunk in a missing segment", || {
                    format!(
                        "index: series {labels}: chunk reference {:#x} is in chunks/{}, which is missing",
                        c.chunk_ref,
                        segment_name(seg)
                    )
                }),
                // Smallest chunk: a 1-byte length, the encoding byte and the CRC.
                Some(&size) if off < SEGMENT_HEADER_SIZE || off as u64 + 6 > size => {
                    p.push("chunk past the end of its segment", || {
                        format!(
                            "index: series {labels}: chunk reference {:#x} is outside chunks/{} ({size} bytes)",
                            c.chunk_ref,
                            segment_name(seg)
                        )
                    })
                }
                Some(_) => {}
            }
        }
        prev = Some(labels);
    }
    if meta.stats.num_series != 0 && meta.stats.num_series != series {
        p.push("series count differs", || {
            format!(
                "meta.json says {} series, the index has {series}",
                meta.stats.num_series
            )
        });
    }
    if meta.stats.num_chunks != 0 && meta.stats.num_chunks != chunks {
        p.push("chunk count differs", || {
            format!(
                "meta.json says {} chunks, the index has {chunks}",
                meta.stats.num_chunks
            )
        });
    }
    p.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::tests::write_block;
    use crate::block::upload_block;
    use crate::config::BucketConfig;

    fn labels(v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("tenant_id".to_string(), v.to_string())])
    }

    #[tokio::test]
    async fn a_sound_bucket_passes_and_each_damage_is_named() {
        let local = tempfile::tempdir().unwrap();
        let bdir = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let bucket = Bucket::new(&BucketConfig::filesystem(bdir.path()), None).unwrap();
        let a = write_block(local.path(), 0);
        let b = write_block(local.path(), 10_000);
        let c = write_block(local.path(), 5_000); // overlaps a and b
        for m in [&a, &b] {
            upload_block(
                &bucket,
                &local.path().join(m.ulid.to_string()),
                &labels("x"),
                "test",
            )
            .await
            .unwrap();
        }
        // Same range, other labels: another group, no overlap.
        upload_block(
            &bucket,
            &local.path().join(c.ulid.to_string()),
            &labels("y"),
            "test",
        )
        .await
        .unwrap();
        let r = verify_bucket(&bucket, scratch.path(), &[]).await.unwrap();
        assert_eq!(r.blocks_checked, 3);
        assert!(r.problems.is_empty(), "{:?}", r.problems);

        // Damage: a's chunks gone, b's index truncated, c re-labelled into a's group.
        std::fs::remove_file(bdir.path().join(format!("{}/chunks/000001", a.ulid))).unwrap();
        let bi = bdir.path().join(format!("{}/index", b.ulid));
        let len = std::fs::metadata(&bi).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&bi).unwrap();
        f.set_len(len / 2).unwrap();
        drop(f);
        upload_block(
            &bucket,
            &local.path().join(c.ulid.to_string()),
            &labels("x"),
            "test",
        )
        .await
        .unwrap();
        let r = verify_bucket(&bucket, scratch.path(), &[]).await.unwrap();
        let text: Vec<String> = r.problems.iter().map(|p| p.to_string()).collect();
        let has = |needle: &str, block: Option<Ulid>| {
            r.problems
                .iter()
                .any(|p| p.block == block && p.what.contains(needle))
        };
        assert!(
            has(
                "chunks/000001 is listed in meta.json but missing",
                Some(a.ulid)
            ),
            "{text:#?}"
        );
        assert!(has("which is missing", Some(a.ulid)), "{text:#?}");
        assert!(has("index is", Some(b.ulid)), "{text:#?}");
        assert!(has("index unreadable", Some(b.ulid)), "{text:#?}");
        assert!(
            r.problems.iter().any(|p| p.block.is_none()
                && p.what.contains("overlapping")
                && p.what.contains(&a.ulid.to_string())
                && p.what.contains(&c.ulid.to_string())),
            "{text:#?}"
        );
        // Only the asked-for block.
        let r = verify_bucket(&bucket, scratch.path(), &[c.ulid])
            .await
            .unwrap();
        assert_eq!(r.blocks_checked, 1);
        assert!(
            r.problems.iter().all(|p| p.block.is_none()),
            "{:?}",
            r.problems
        );
        assert!(
            std::fs::read_dir(scratch.path()).unwrap().next().is_none(),
            "scratch cleaned"
        );
    }

    /// Blocks uploaded with `--hash-func=SHA256`: a sound one passes; a chunk segment or
    /// an index changed in place without changing its size is caught by its hash only;
    /// an unknown hash function is reported.
    #[tokio::test]
    async fn listed_hashes_are_checked() {
        let local = tempfile::tempdir().unwrap();
        let bdir = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let bucket = Bucket::new(&BucketConfig::filesystem(bdir.path()), None).unwrap();
        let a = write_block(local.path(), 0);
        let b = write_block(local.path(), 10_000);
        for m in [&a, &b] {
            crate::block::upload_block_hashed(
                &bucket,
                &local.path().join(m.ulid.to_string()),
                &labels("x"),
                "test",
                HashFunc::Sha256,
            )
            .await
            .unwrap();
        }
        let r = verify_bucket(&bucket, scratch.path(), &[]).await.unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);

        let flip_last_byte = |p: std::path::PathBuf| {
            let mut d = std::fs::read(&p).unwrap();
            let i = d.len() - 1;
            d[i] ^= 0x01;
            std::fs::write(&p, d).unwrap();
        };
        flip_last_byte(bdir.path().join(format!("{}/chunks/000001", a.ulid)));
        // (The index's last byte is its TOC checksum: the index check reports it too.)
        flip_last_byte(bdir.path().join(format!("{}/index", b.ulid)));
        let r = verify_bucket(&bucket, scratch.path(), &[]).await.unwrap();
        let text: Vec<String> = r.problems.iter().map(|p| p.to_string()).collect();
        assert!(
            r.problems.iter().any(|p| p.block == Some(a.ulid)
                && p.what.starts_with("chunks/000001: its SHA256 hash is")),
            "{text:#?}"
        );
        assert!(
            r.problems.iter().any(|p| p.block == Some(b.ulid)
                && p.what.starts_with("index: its SHA256 hash is")),
            "{text:#?}"
        );
        assert!(
            !r.problems
                .iter()
                .any(|p| p.what.contains("bytes, meta.json says")),
            "sizes are unchanged: {text:#?}"
        );

        // A hash function nobody knows: reported, not silently passed.
        let mp = bdir.path().join(format!("{}/meta.json", a.ulid));
        let j = std::fs::read_to_string(&mp)
            .unwrap()
            .replace("\"SHA256\"", "\"MD4\"");
        std::fs::write(&mp, j).unwrap();
        let r = verify_bucket(&bucket, scratch.path(), &[a.ulid])
            .await
            .unwrap();
        assert!(
            r.problems
                .iter()
                .any(|p| p.what.contains("unknown function \"MD4\"")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn overlaps_are_per_group_and_half_open() {
        let local = tempfile::tempdir().unwrap();
        let mut a = write_block(local.path(), 0);
        let mut b = write_block(local.path(), 10_000);
        for m in [&mut a, &mut b] {
            m.thanos = Some(tsdb::block::ThanosMeta::new(labels("x"), "test"));
        }
        // Touching ranges: [0, 10000) and [10000, 20000).
        assert!(overlaps([&a, &b]).is_empty());
        b.min_time = 9_999;
        assert_eq!(overlaps([&a, &b]).len(), 1);
        b.thanos.as_mut().unwrap().downsample.resolution = 300_000;
        assert!(overlaps([&a, &b]).is_empty());
    }
}
