//! Moving whole TSDB blocks between a local directory and a bucket, in Thanos's layout
//! and order (`pkg/block/block.go`):
//!
//! ```text
//! <ULID>/chunks/000001 …   first, in segment order
//! <ULID>/index             then the index
//! <ULID>/meta.json         LAST: a reader never sees a block without all its files
//! ```
//!
//! The uploaded `meta.json` is the local one plus the `thanos` section's `files`,
//! `segment_files` and `upload_time`; the local `meta.json` is only read, never
//! rewritten. `tombstones` is not uploaded (Thanos ignores it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tsdb::block::{BlockMeta, ThanosMeta, Ulid};

use crate::bucket::{Bucket, BucketError};
use crate::hash::{HashFunc, ObjectHash};

/// Why a block could not be uploaded or downloaded.
#[derive(Debug, thiserror::Error)]
pub enum BlockTransferError {
    #[error(transparent)]
    Bucket(#[from] BucketError),
    #[error("block {dir}: {source}")]
    Local {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("block {dir}: {reason}")]
    Invalid { dir: PathBuf, reason: String },
}

/// One entry of `thanos.files`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileEntry {
    pub rel_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// With `--hash-func=SHA256`: chunk segments and `index` (Thanos's `hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<ObjectHash>,
}

/// The files of a local block that are uploaded, in upload order (chunk segments
/// sorted, then `index`), with their sizes and, unless `hash` is [`HashFunc::None`],
/// their hashes (blocking I/O: every file is read once).
pub fn block_files(dir: &Path, hash: HashFunc) -> Result<Vec<FileEntry>, BlockTransferError> {
    let local = |source| BlockTransferError::Local {
        dir: dir.to_path_buf(),
        source,
    };
    let mut segments = Vec::new();
    for e in std::fs::read_dir(dir.join("chunks")).map_err(local)? {
        let e = e.map_err(local)?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !(name.len() == 6 && name.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let size = e.metadata().map_err(local)?.len();
        segments.push(FileEntry {
            rel_path: format!("chunks/{name}"),
            size_bytes: Some(size),
            hash: crate::hash::hash_file(&e.path(), hash).map_err(local)?,
        });
    }
    segments.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
    let index = std::fs::metadata(dir.join("index")).map_err(local)?.len();
    segments.push(FileEntry {
        rel_path: "index".into(),
        size_bytes: Some(index),
        hash: crate::hash::hash_file(&dir.join("index"), hash).map_err(local)?,
    });
    Ok(segments)
}

/// The `meta.json` to upload: `meta` with a `thanos` section carrying `labels` and
/// `source` (replacing what the local one had), `downsample.resolution` kept (0 for
/// raw), `files`, `segment_files` and `upload_time`. Pure; tested directly.
pub fn upload_meta(
    meta: &BlockMeta,
    labels: &BTreeMap<String, String>,
    source: &str,
    files: &[FileEntry],
    upload_time: chrono::DateTime<chrono::Utc>,
) -> BlockMeta {
    let mut m = meta.clone();
    let mut t = m
        .thanos
        .take()
        .unwrap_or_else(|| ThanosMeta::new(BTreeMap::new(), source));
    t.version = 1;
    t.labels = labels.clone();
    t.source = source.to_string();
    let mut all: Vec<FileEntry> = files.to_vec();
    all.push(FileEntry {
        rel_path: "meta.json".into(),
        size_bytes: None,
        hash: None,
    });
    all.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
    let segment_files: Vec<String> = files
        .iter()
        .filter_map(|f| f.rel_path.strip_prefix("chunks/").map(str::to_string))
        .collect();
    t.extra.insert(
        "files".into(),
        serde_json::to_value(&all).unwrap_or(serde_json::Value::Null),
    );
    t.extra.insert(
        "segment_files".into(),
        serde_json::Value::from(segment_files),
    );
    t.extra.insert(
        "upload_time".into(),
        serde_json::Value::from(upload_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    );
    m.thanos = Some(t);
    m
}

/// `meta` as Thanos writes it: tab-indented JSON.
pub fn encode_meta(meta: &BlockMeta) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    serde::Serialize::serialize(meta, &mut ser)?;
    out.push(b'\n');
    Ok(out)
}

/// [`upload_block_hashed`] without file hashes (Thanos's default `--hash-func=""`).
pub async fn upload_block(
    bucket: &Bucket,
    dir: &Path,
    labels: &BTreeMap<String, String>,
    source: &str,
) -> Result<BlockMeta, BlockTransferError> {
    upload_block_hashed(bucket, dir, labels, source, HashFunc::None).await
}

/// Uploads the block in `dir` under `<ULID>/`, `meta.json` last, with `labels` and
/// `source` in its `thanos` section and, with `hash` set, each chunk segment's and the
/// index's hash in `thanos.files`. Refuses empty labels (Thanos does too: a block
/// without external labels cannot be told apart from other producers' blocks).
/// Returns the uploaded meta. On failure nothing is cleaned up: without `meta.json`
/// the objects are a partial block, and the next attempt overwrites them.
pub async fn upload_block_hashed(
    bucket: &Bucket,
    dir: &Path,
    labels: &BTreeMap<String, String>,
    source: &str,
    hash: HashFunc,
) -> Result<BlockMeta, BlockTransferError> {
    if labels.is_empty() {
        return Err(BlockTransferError::Invalid {
            dir: dir.to_path_buf(),
            reason: "empty external labels are not allowed".into(),
        });
    }
    let d = dir.to_path_buf();
    let (meta, files) = tokio::task::spawn_blocking(move || {
        let meta = tsdb::block::read_meta(&d).map_err(|e| BlockTransferError::Invalid {
            dir: d.clone(),
            reason: e.to_string(),
        })?;
        let files = block_files(&d, hash)?;
        Ok::<_, BlockTransferError>((meta, files))
    })
    .await
    .map_err(|e| BlockTransferError::Invalid {
        dir: dir.to_path_buf(),
        reason: format!("reading block failed: {e}"),
    })??;
    let ulid = meta.ulid;
    let mut uploaded = Vec::with_capacity(files.len());
    for f in &files {
        let n = bucket
            .upload_file(&format!("{ulid}/{}", f.rel_path), &dir.join(&f.rel_path))
            .await?;
        if Some(n) != f.size_bytes {
            // Blocks are immutable; a changed size means something else is writing it.
            return Err(BlockTransferError::Invalid {
                dir: dir.to_path_buf(),
                reason: format!(
                    "{} changed size during upload ({:?} → {n} bytes)",
                    f.rel_path, f.size_bytes
                ),
            });
        }
        uploaded.push(FileEntry {
            rel_path: f.rel_path.clone(),
            size_bytes: Some(n),
            hash: f.hash.clone(),
        });
    }
    let out = upload_meta(&meta, labels, source, &uploaded, chrono::Utc::now());
    let json = encode_meta(&out).map_err(|e| BlockTransferError::Invalid {
        dir: dir.to_path_buf(),
        reason: format!("encoding meta.json: {e}"),
    })?;
    bucket
        .put(&format!("{ulid}/meta.json"), Bytes::from(json))
        .await?;
    Ok(out)
}

/// Downloads block `ulid` into `<parent>/<ULID>/` (via `<ULID>.tmp-for-creation`, renamed
/// when complete, as the TSDB writes blocks). The files are those listed in the bucket
/// meta's `thanos.files` (or, for metas without it, everything under `<ULID>/`); each
/// size is checked against the listing.
pub async fn download_block(
    bucket: &Bucket,
    ulid: Ulid,
    parent: &Path,
) -> Result<BlockMeta, BlockTransferError> {
    let meta_bytes = bucket.get(&format!("{ulid}/meta.json")).await?;
    let dst = parent.join(ulid.to_string());
    let invalid = |reason: String| BlockTransferError::Invalid {
        dir: dst.clone(),
        reason,
    };
    let meta: BlockMeta = serde_json::from_slice(&meta_bytes)
        .map_err(|e| invalid(format!("bucket meta.json: {e}")))?;
    let mut files: Vec<FileEntry> = match meta.thanos.as_ref().and_then(|t| t.extra.get("files")) {
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| invalid(format!("bucket meta.json thanos.files: {e}")))?,
        None => bucket
            .list_recursive(&ulid.to_string())
            .await?
            .into_iter()
            .filter_map(|(k, a)| {
                k.strip_prefix(&format!("{ulid}/")).map(|r| FileEntry {
                    rel_path: r.to_string(),
                    size_bytes: Some(a.size),
                    hash: None,
                })
            })
            .collect(),
    };
    files.retain(|f| f.rel_path != "meta.json");
    for f in &files {
        if f.rel_path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(invalid(format!(
                "unsafe file name {:?} in meta.json",
                f.rel_path
            )));
        }
    }
    let tmp = parent.join(format!("{ulid}{}", tsdb::block::TMP_FOR_CREATION));
    let local = |source| BlockTransferError::Local {
        dir: tmp.clone(),
        source,
    };
    if tmp.exists() {
        tokio::fs::remove_dir_all(&tmp).await.map_err(local)?;
    }
    tokio::fs::create_dir_all(tmp.join("chunks"))
        .await
        .map_err(local)?;
    for f in &files {
        let path = tmp.join(&f.rel_path);
        if let Some(p) = path.parent() {
            tokio::fs::create_dir_all(p).await.map_err(local)?;
        }
        let n = bucket
            .download_file(&format!("{ulid}/{}", f.rel_path), &path)
            .await?;
        if let Some(want) = f.size_bytes
            && want != n
        {
            return Err(invalid(format!(
                "{}: {n} bytes in the bucket, meta.json says {want}",
                f.rel_path
            )));
        }
        // A listed hash is checked too: a compactor must not merge a corrupted
        // download into a new block. (A hash function Orrery does not know is skipped,
        // as Thanos's `block.Download` does.)
        if let Some(want) = &f.hash
            && let Ok(func) = crate::hash::HashFunc::parse(&want.func)
            && func != HashFunc::None
        {
            let p = path.clone();
            let got = tokio::task::spawn_blocking(move || crate::hash::hash_file(&p, func))
                .await
                .map_err(|e| invalid(format!("hashing {}: {e}", f.rel_path)))?
                .map_err(local)?;
            if got.as_ref().map(|h| &h.value) != Some(&want.value) {
                return Err(invalid(format!(
                    "{}: {} hash of the downloaded file is {}, meta.json says {}",
                    f.rel_path,
                    want.func,
                    got.map(|h| h.value).unwrap_or_default(),
                    want.value
                )));
            }
        }
    }
    tokio::fs::write(tmp.join("meta.json"), &meta_bytes)
        .await
        .map_err(local)?;
    tokio::fs::rename(&tmp, &dst).await.map_err(local)?;
    Ok(meta)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::BucketConfig;
    use storeapi::Labels;
    use tsdb::block::{BlockOptions, BlockWriter};
    use tsdb::chunk::{Chunk, Encoding, XorChunk};

    /// A real block written by the TSDB's block writer.
    pub(crate) fn write_block(parent: &Path, mint: i64) -> BlockMeta {
        let series: Vec<(Labels, Vec<Chunk>)> = (0..3i64)
            .map(|i| {
                let l = Labels::from_pairs([("__name__", "up"), ("i", &i.to_string())]).unwrap();
                let mut c = XorChunk::new();
                for t in 0..10 {
                    c.append(mint + t * 1000, (i * 10 + t) as f64).unwrap();
                }
                let chunk = Chunk {
                    min_time: mint,
                    max_time: mint + 9000,
                    encoding: Encoding::Xor,
                    data: Bytes::from(c.into_bytes()),
                };
                (l, vec![chunk])
            })
            .collect();
        let opts = BlockOptions {
            thanos: Some(ThanosMeta::new(
                BTreeMap::from([("local".to_string(), "x".to_string())]),
                "receive",
            )),
            ..BlockOptions::default()
        };
        BlockWriter::write(parent, mint, mint + 10_000, series, &opts).unwrap()
    }

    #[test]
    fn upload_meta_has_the_thanos_section() {
        let dir = tempfile::tempdir().unwrap();
        let meta = write_block(dir.path(), 0);
        let files = block_files(&dir.path().join(meta.ulid.to_string()), HashFunc::None).unwrap();
        assert_eq!(files[0].rel_path, "chunks/000001");
        assert_eq!(files.last().unwrap().rel_path, "index");
        let labels = BTreeMap::from([
            ("replica".to_string(), "r1".to_string()),
            ("tenant_id".to_string(), "t".to_string()),
        ]);
        let t = chrono::DateTime::parse_from_rfc3339("2026-12-03T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let m = upload_meta(&meta, &labels, "receive", &files, t);
        let json: serde_json::Value = serde_json::from_slice(&encode_meta(&m).unwrap()).unwrap();
        let th = &json["thanos"];
        assert_eq!(th["labels"]["tenant_id"], "t");
        assert_eq!(
            th["labels"].as_object().unwrap().len(),
            2,
            "local labels replaced"
        );
        assert_eq!(th["source"], "receive");
        assert_eq!(th["downsample"]["resolution"], 0);
        assert_eq!(th["segment_files"], serde_json::json!(["000001"]));
        assert_eq!(th["upload_time"], "2026-12-03T10:00:00.000Z");
        let files_json = th["files"].as_array().unwrap();
        let names: Vec<&str> = files_json
            .iter()
            .map(|f| f["rel_path"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["chunks/000001", "index", "meta.json"]);
        assert!(files_json[0]["size_bytes"].as_u64().unwrap() > 0);
        assert!(files_json[2].get("size_bytes").is_none());
        assert_eq!(json["ulid"], meta.ulid.to_string());
        assert_eq!(json["compaction"]["level"], 1);
        // Tab-indented like Thanos.
        assert!(
            String::from_utf8(encode_meta(&m).unwrap())
                .unwrap()
                .contains("\n\t\"ulid\"")
        );
    }

    #[tokio::test]
    async fn round_trip_through_a_filesystem_bucket() {
        let local = tempfile::tempdir().unwrap();
        let bdir = tempfile::tempdir().unwrap();
        let meta = write_block(local.path(), 1_000_000);
        let bdir_path = local.path().join(meta.ulid.to_string());
        let before = std::fs::read(bdir_path.join("meta.json")).unwrap();
        let bucket = Bucket::new(&BucketConfig::filesystem(bdir.path()), None).unwrap();
        let labels = BTreeMap::from([("tenant_id".to_string(), "a".to_string())]);
        let up = upload_block(&bucket, &bdir_path, &labels, "receive")
            .await
            .unwrap();
        assert_eq!(std::fs::read(bdir_path.join("meta.json")).unwrap(), before);
        let root = bdir.path().join(meta.ulid.to_string());
        for f in ["chunks/000001", "index", "meta.json"] {
            assert!(root.join(f).is_file(), "{f}");
        }
        assert!(!root.join("tombstones").exists());
        assert_eq!(
            std::fs::read(root.join("index")).unwrap(),
            std::fs::read(bdir_path.join("index")).unwrap()
        );
        assert!(
            upload_block(&bucket, &bdir_path, &BTreeMap::new(), "receive")
                .await
                .is_err()
        );

        let back = tempfile::tempdir().unwrap();
        let got = download_block(&bucket, meta.ulid, back.path())
            .await
            .unwrap();
        assert_eq!(got, up);
        let b = tsdb::block::Block::open(&back.path().join(meta.ulid.to_string())).unwrap();
        assert_eq!(b.meta().stats.num_samples, 30);
    }

    /// `--hash-func=SHA256`: chunk segments and index carry Thanos's `hash` object, equal
    /// to the SHA-256 of the local files; `meta.json` has none. A download checks them.
    #[tokio::test]
    async fn sha256_hashes_in_files_and_checked_on_download() {
        let local = tempfile::tempdir().unwrap();
        let bdir = tempfile::tempdir().unwrap();
        let meta = write_block(local.path(), 1_000_000);
        let dir = local.path().join(meta.ulid.to_string());
        let bucket = Bucket::new(&BucketConfig::filesystem(bdir.path()), None).unwrap();
        let labels = BTreeMap::from([("tenant_id".to_string(), "a".to_string())]);
        upload_block_hashed(&bucket, &dir, &labels, "receive", HashFunc::Sha256)
            .await
            .unwrap();
        let root = bdir.path().join(meta.ulid.to_string());
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("meta.json")).unwrap()).unwrap();
        let files = json["thanos"]["files"].as_array().unwrap();
        assert_eq!(files.len(), 3);
        for f in files {
            let rel = f["rel_path"].as_str().unwrap();
            if rel == "meta.json" {
                assert!(f.get("hash").is_none(), "{f}");
                continue;
            }
            let want = crate::hash::hash_file(&dir.join(rel), HashFunc::Sha256)
                .unwrap()
                .unwrap();
            assert_eq!(
                f["hash"],
                serde_json::json!({"hashFunc": "SHA256", "value": want.value}),
                "{rel}"
            );
            assert_eq!(want.value.len(), 64);
        }
        // Without a hash function the entries have no `hash` key (Thanos's omitempty).
        let other = tempfile::tempdir().unwrap();
        let m2 = write_block(other.path(), 5_000_000);
        upload_block(
            &bucket,
            &other.path().join(m2.ulid.to_string()),
            &labels,
            "receive",
        )
        .await
        .unwrap();
        let j2: serde_json::Value = serde_json::from_slice(
            &std::fs::read(bdir.path().join(m2.ulid.to_string()).join("meta.json")).unwrap(),
        )
        .unwrap();
        assert!(
            j2["thanos"]["files"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f.get("hash").is_none())
        );

        let back = tempfile::tempdir().unwrap();
        download_block(&bucket, meta.ulid, back.path())
            .await
            .unwrap();
        // Same size, different bytes: only the hash can tell.
        let chunk = root.join("chunks/000001");
        let mut b = std::fs::read(&chunk).unwrap();
        let last = b.len() - 1;
        b[last] ^= 0xff;
        std::fs::write(&chunk, b).unwrap();
        let back2 = tempfile::tempdir().unwrap();
        let e = download_block(&bucket, meta.ulid, back2.path())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("chunks/000001") && e.contains("SHA256 hash"),
            "{e}"
        );
        assert!(!back2.path().join(meta.ulid.to_string()).exists());
    }
}
