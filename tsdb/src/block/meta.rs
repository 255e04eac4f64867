//! `meta.json`: Prometheus's block meta (version 1) with Thanos's optional `thanos`
//! section.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Ulid;

/// The block meta file, field for field as Prometheus's `BlockMeta` JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockMeta {
    pub ulid: Ulid,
    /// First timestamp in the block (inclusive, ms).
    #[serde(rename = "minTime")]
    pub min_time: i64,
    /// End of the block's range (exclusive, ms): one past the newest sample, or the cut
    /// boundary.
    #[serde(rename = "maxTime")]
    pub max_time: i64,
    #[serde(default)]
    pub stats: BlockStats,
    pub compaction: BlockMetaCompaction,
    /// Index format version of the meta file: always 1.
    pub version: u32,
    /// Thanos's extension; absent in plain Prometheus blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thanos: Option<ThanosMeta>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BlockStats {
    #[serde(rename = "numSamples", default, skip_serializing_if = "is_zero")]
    pub num_samples: u64,
    #[serde(rename = "numSeries", default, skip_serializing_if = "is_zero")]
    pub num_series: u64,
    #[serde(rename = "numChunks", default, skip_serializing_if = "is_zero")]
    pub num_chunks: u64,
    #[serde(rename = "numTombstones", default, skip_serializing_if = "is_zero")]
    pub num_tombstones: u64,
    // Newer Prometheus versions split the sample count; kept when present.
    #[serde(rename = "numFloatSamples", default, skip_serializing_if = "is_zero")]
    pub num_float_samples: u64,
    #[serde(
        rename = "numHistogramSamples",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub num_histogram_samples: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A short description of a parent block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockDesc {
    pub ulid: Ulid,
    #[serde(rename = "minTime")]
    pub min_time: i64,
    #[serde(rename = "maxTime")]
    pub max_time: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BlockMetaCompaction {
    pub level: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<Ulid>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deletable: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<BlockDesc>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hints: Vec<String>,
}

/// Thanos's `thanos` section (`pkg/block/metadata/meta.go`). Fields we do not model
/// (`files`, `segment_files`, `rewrites`, ...) are kept verbatim in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThanosMeta {
    pub version: u32,
    /// External labels of the block's producer.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub downsample: ThanosDownsample,
    /// `receive`, `sidecar`, `compactor`, ...
    #[serde(default)]
    pub source: String,
    /// Size hints for readers. Always emitted (`{}` when unknown), as Thanos's Go
    /// struct field is.
    #[serde(default)]
    pub index_stats: IndexStats,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Thanos's `index_stats`: the largest series entry of the index and the largest chunk
/// record of the segments, in bytes (0: unknown, then omitted). A store gateway uses them
/// as the size to fetch for a series or chunk it has not read yet instead of a fixed
/// guess (Thanos: `--debug.estimated-max-series-size` / `-chunk-size`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexStats {
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub series_max_size: i64,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub chunk_max_size: i64,
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

impl BlockMeta {
    /// The block's `index_stats` (all zero for a block without a `thanos` section).
    pub fn index_stats(&self) -> IndexStats {
        self.thanos
            .as_ref()
            .map(|t| t.index_stats)
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThanosDownsample {
    /// Resolution in milliseconds; 0 is raw data.
    pub resolution: i64,
}

impl ThanosMeta {
    /// A raw-resolution section with the given external labels and source.
    pub fn new(labels: BTreeMap<String, String>, source: impl Into<String>) -> Self {
        ThanosMeta {
            version: 1,
            labels,
            downsample: ThanosDownsample { resolution: 0 },
            source: source.into(),
            index_stats: IndexStats::default(),
            extra: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_and_thanos_meta() {
        let j = r#"{
            "ulid": "01JABCDEFGHJKMNPQRSTVWXYZ0",
            "minTime": 1700000000000, "maxTime": 1700007200000,
            "stats": {"numSamples": 10, "numSeries": 2, "numChunks": 2},
            "compaction": {"level": 1, "sources": ["01JABCDEFGHJKMNPQRSTVWXYZ0"]},
            "version": 1,
            "thanos": {"version": 1, "labels": {"a": "b"}, "downsample": {"resolution": 0},
                       "source": "receive", "segment_files": ["000001"]}
        }"#;
        let m: BlockMeta = serde_json::from_str(j).unwrap();
        assert_eq!(m.stats.num_samples, 10);
        let t = m.thanos.as_ref().unwrap();
        assert_eq!(t.labels["a"], "b");
        assert_eq!(t.source, "receive");
        assert!(t.extra.contains_key("segment_files"));
        let back: BlockMeta = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        // No index_stats in the input: emitted as `{}` all the same.
        let v: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(v["thanos"]["index_stats"], serde_json::json!({}));
        assert_eq!(m.index_stats(), IndexStats::default());
    }

    #[test]
    fn index_stats_round_trip_and_omit_zero_fields() {
        // As a Thanos compactor writes it.
        let j = r#"{"ulid": "01JABCDEFGHJKMNPQRSTVWXYZ0", "minTime": 0, "maxTime": 1,
            "compaction": {"level": 2}, "version": 1,
            "thanos": {"version": 1, "labels": {"a": "b"}, "downsample": {"resolution": 0},
                       "source": "compactor",
                       "index_stats": {"series_max_size": 1200, "chunk_max_size": 346}}}"#;
        let m: BlockMeta = serde_json::from_str(j).unwrap();
        assert_eq!(
            m.index_stats(),
            IndexStats {
                series_max_size: 1200,
                chunk_max_size: 346
            }
        );
        let t = m.thanos.as_ref().unwrap();
        assert!(!t.extra.contains_key("index_stats"));
        let v: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(
            v["thanos"]["index_stats"],
            serde_json::json!({"series_max_size": 1200, "chunk_max_size": 346})
        );
        let mut half = m.clone();
        half.thanos.as_mut().unwrap().index_stats.chunk_max_size = 0;
        let v: serde_json::Value = serde_json::to_value(&half).unwrap();
        assert_eq!(
            v["thanos"]["index_stats"],
            serde_json::json!({"series_max_size": 1200})
        );
    }
}
