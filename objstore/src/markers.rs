//! Thanos's marker files: `deletion-mark.json`, `no-compact-mark.json` and
//! `no-downsample-mark.json`, stored next to a block's `meta.json` as `<ULID>/<file>`.
//!
//! The JSON is Thanos's (`pkg/block/metadata/markers.go`): compact, `version` 1,
//! `details` omitted when empty, times in Unix seconds. Readers refuse any other
//! version, as Thanos's do, so a marker from a future format is never misread. A marker
//! that is already present is kept (Thanos's `MarkFor*` skip too), so the first
//! deletion time wins and repeated marking never postpones a deletion.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tsdb::block::Ulid;

use crate::bucket::{Bucket, BucketError};

pub const DELETION_MARK: &str = "deletion-mark.json";
pub const NO_COMPACT_MARK: &str = "no-compact-mark.json";
pub const NO_DOWNSAMPLE_MARK: &str = "no-downsample-mark.json";

/// The only marker version Thanos writes and reads.
pub const MARKER_VERSION: u32 = 1;

/// Why a marker could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    #[error(transparent)]
    Bucket(#[from] BucketError),
    #[error("marker {key}: {reason}")]
    Invalid { key: String, reason: String },
}

/// A marker file: its name inside the block directory and the block it marks.
pub trait Marker: Serialize + DeserializeOwned + Send + Sync {
    const FILE: &'static str;
    fn id(&self) -> Ulid;
    fn version(&self) -> u32;
}

/// The block is to be deleted by the compactor's cleaner once `deletion_time` is older
/// than `--delete-delay`; readers hide it after their own, shorter delay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionMark {
    pub id: Ulid,
    pub version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
    /// Unix seconds.
    pub deletion_time: i64,
}

impl DeletionMark {
    pub fn new(id: Ulid, details: impl Into<String>, now_unix_s: i64) -> Self {
        DeletionMark {
            id,
            version: MARKER_VERSION,
            details: details.into(),
            deletion_time: now_unix_s,
        }
    }
}

/// The compactor leaves the block out of compaction (`reason` is Thanos's vocabulary:
/// `manual`, `index-size-exceeding`, `block-index-out-of-order-chunk`,
/// `downsample-vertical-compaction`, or Orrery's own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoCompactMark {
    pub id: Ulid,
    pub version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
    /// Unix seconds.
    pub no_compact_time: i64,
    pub reason: String,
}

impl NoCompactMark {
    pub fn new(
        id: Ulid,
        reason: impl Into<String>,
        details: impl Into<String>,
        now_unix_s: i64,
    ) -> Self {
        NoCompactMark {
            id,
            version: MARKER_VERSION,
            details: details.into(),
            no_compact_time: now_unix_s,
            reason: reason.into(),
        }
    }
}

/// The compactor does not downsample the block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoDownsampleMark {
    pub id: Ulid,
    pub version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
    /// Unix seconds.
    pub no_downsample_time: i64,
    pub reason: String,
}

impl NoDownsampleMark {
    pub fn new(
        id: Ulid,
        reason: impl Into<String>,
        details: impl Into<String>,
        now_unix_s: i64,
    ) -> Self {
        NoDownsampleMark {
            id,
            version: MARKER_VERSION,
            details: details.into(),
            no_downsample_time: now_unix_s,
            reason: reason.into(),
        }
    }
}

macro_rules! marker {
    ($t:ty, $file:expr) => {
        impl Marker for $t {
            const FILE: &'static str = $file;
            fn id(&self) -> Ulid {
                self.id
            }
            fn version(&self) -> u32 {
                self.version
            }
        }
    };
}
marker!(DeletionMark, DELETION_MARK);
marker!(NoCompactMark, NO_COMPACT_MARK);
marker!(NoDownsampleMark, NO_DOWNSAMPLE_MARK);

/// The object key of marker `M` for block `id`.
pub fn marker_key<M: Marker>(id: Ulid) -> String {
    format!("{id}/{}", M::FILE)
}

/// Parses a marker's bytes, refusing bad JSON, a version other than 1 and a marker
/// whose `id` is not the block it sits in.
pub fn decode_marker<M: Marker>(id: Ulid, bytes: &[u8]) -> Result<M, MarkerError> {
    let key = marker_key::<M>(id);
    let m: M = serde_json::from_slice(bytes).map_err(|e| MarkerError::Invalid {
        key: key.clone(),
        reason: format!("unparsable: {e}"),
    })?;
    if m.version() != MARKER_VERSION {
        return Err(MarkerError::Invalid {
            key,
            reason: format!("unexpected version {}, want {MARKER_VERSION}", m.version()),
        });
    }
    if m.id() != id {
        return Err(MarkerError::Invalid {
            key,
            reason: format!("marks block {}, not {id}", m.id()),
        });
    }
    Ok(m)
}

/// Writes `m` unless that marker already exists. Returns whether it was written.
pub async fn write_marker<M: Marker>(bucket: &Bucket, m: &M) -> Result<bool, MarkerError> {
    let key = marker_key::<M>(m.id());
    if bucket.exists(&key).await? {
        return Ok(false);
    }
    let json = serde_json::to_vec(m).map_err(|e| MarkerError::Invalid {
        key: key.clone(),
        reason: format!("encoding: {e}"),
    })?;
    bucket.put(&key, json.into()).await?;
    Ok(true)
}

/// Reads marker `M` of block `id`; `None` when the block has none.
pub async fn read_marker<M: Marker>(bucket: &Bucket, id: Ulid) -> Result<Option<M>, MarkerError> {
    match bucket.get(&marker_key::<M>(id)).await {
        Ok(b) => decode_marker(id, &b).map(Some),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Ulid {
        "01JQ2B7ZK3N5V8W9X0Y1Z2A3B4".parse().unwrap()
    }

    #[test]
    fn json_is_thanos_s() {
        let m = DeletionMark::new(id(), "", 1_700_000_000);
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"id":"01JQ2B7ZK3N5V8W9X0Y1Z2A3B4","version":1,"deletion_time":1700000000}"#
        );
        let m = NoCompactMark::new(id(), "manual", "too big", 1_700_000_001);
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"id":"01JQ2B7ZK3N5V8W9X0Y1Z2A3B4","version":1,"details":"too big","no_compact_time":1700000001,"reason":"manual"}"#
        );
        let m = NoDownsampleMark::new(id(), "manual", "", 7);
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"id":"01JQ2B7ZK3N5V8W9X0Y1Z2A3B4","version":1,"no_downsample_time":7,"reason":"manual"}"#
        );
    }

    #[test]
    fn decoding_refuses_other_versions_ids_and_garbage() {
        let good = br#"{"id":"01JQ2B7ZK3N5V8W9X0Y1Z2A3B4","version":1,"details":"x","deletion_time":5}"#;
        let m: DeletionMark = decode_marker(id(), good).unwrap();
        assert_eq!(m.deletion_time, 5);
        assert_eq!(m.details, "x");
        let v2 = br#"{"id":"01JQ2B7ZK3N5V8W9X0Y1Z2A3B4","version":2,"deletion_time":5}"#;
        assert!(matches!(
            decode_marker::<DeletionMark>(id(), v2),
            Err(MarkerError::Invalid { .. })
        ));
        let other = Ulid::with_time(1);
        assert!(decode_marker::<DeletionMark>(other, good).is_err());
        assert!(decode_marker::<DeletionMark>(id(), b"{\"id\":").is_err());
        assert!(decode_marker::<NoCompactMark>(id(), good).is_err(), "missing reason");
    }

    #[tokio::test]
    async fn written_once_first_mark_wins() {
        let dir = tempfile::tempdir().unwrap();
        let b = Bucket::new(&crate::BucketConfig::filesystem(dir.path()), None).unwrap();
        assert_eq!(read_marker::<DeletionMark>(&b, id()).await.unwrap(), None);
        let first = DeletionMark::new(id(), "compacted", 100);
        assert!(write_marker(&b, &first).await.unwrap());
        assert!(!write_marker(&b, &DeletionMark::new(id(), "again", 200)).await.unwrap());
        assert_eq!(read_marker::<DeletionMark>(&b, id()).await.unwrap(), Some(first));
        assert!(dir.path().join(id().to_string()).join(DELETION_MARK).is_file());
        b.put(&marker_key::<NoCompactMark>(id()), "garbage".into())
            .await
            .unwrap();
        assert!(read_marker::<NoCompactMark>(&b, id()).await.is_err());
    }
}
