//! Command-line flags (Thanos Store's names and defaults).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `orrery store`.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Local cache directory: per-block index-headers (built on first use) and the meta
    /// cache.
    #[arg(long = "data-dir", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Path to the object storage configuration YAML (Thanos's format).
    #[arg(long = "objstore.config-file", value_name = "PATH")]
    pub objstore_config_file: Option<PathBuf>,

    /// Object storage configuration YAML inline (alternative to --objstore.config-file).
    #[arg(long = "objstore.config", value_name = "YAML")]
    pub objstore_config: Option<String>,

    /// gRPC listen address (StoreAPI, Info, health).
    #[arg(long = "grpc-address", default_value = "0.0.0.0:10901")]
    pub grpc_address: SocketAddr,

    /// HTTP listen address for `/metrics`, `/-/healthy`, `/-/ready`.
    #[arg(long = "http-address", default_value = "0.0.0.0:10902")]
    pub http_address: SocketAddr,

    /// How often the bucket is scanned for new and removed blocks.
    #[arg(long = "sync-block-duration", default_value = "3m", value_parser = parse_duration)]
    pub sync_block_duration: Duration,

    /// Serve only blocks (and samples) at or after this time: RFC3339 or relative to now
    /// (e.g. `-2w`, `-36h`).
    #[arg(long = "min-time", default_value = "0000-01-01T00:00:00Z", value_parser = parse_time_flag)]
    pub min_time: TimeFlag,

    /// Serve only blocks (and samples) at or before this time (RFC3339 or relative).
    #[arg(long = "max-time", default_value = "9999-12-31T23:59:59Z", value_parser = parse_time_flag)]
    pub max_time: TimeFlag,

    /// Blocks marked for deletion are hidden once the mark is this old (so a compacted
    /// replacement is always visible first).
    #[arg(long = "ignore-deletion-marks-delay", default_value = "24h", value_parser = parse_duration)]
    pub ignore_deletion_marks_delay: Duration,

    /// Relabel config YAML selecting the blocks this gateway serves (actions keep, drop,
    /// hashmod over external labels and `__block_id`).
    #[arg(long = "selector.relabel-config", value_name = "YAML")]
    pub selector_relabel_config: Option<String>,

    /// Path to a relabel config YAML (alternative to --selector.relabel-config).
    #[arg(long = "selector.relabel-config-file", value_name = "PATH")]
    pub selector_relabel_config_file: Option<PathBuf>,

    /// Most samples one Series call may return (estimated from chunk headers); 0 = no
    /// limit.
    #[arg(long = "store.grpc.series-sample-limit", default_value_t = 0)]
    pub series_sample_limit: u64,

    /// Most series one Series call may return; 0 = no limit.
    #[arg(long = "store.limits.request-series", default_value_t = 0)]
    pub series_limit: u64,

    /// Most bytes one Series call may fetch from the bucket (postings, series entries
    /// and chunks); 0 = no limit.
    #[arg(long = "store.grpc.downloaded-bytes-limit", default_value_t = 0)]
    pub downloaded_bytes_limit: u64,

    /// In-memory index cache size (postings lists and series entries), e.g. `250MB`,
    /// `1GiB` or bytes; 0 disables it. Counts the cache's table as well as its values.
    #[arg(long = "index-cache-size", default_value = "250MB", value_parser = parse_bytes)]
    pub index_cache_size: usize,

    /// In-memory chunk cache size in bytes (its table counted as well as the chunks).
    #[arg(long = "store.chunk-cache-size", default_value_t = 256 << 20)]
    pub chunk_cache_size: usize,

    /// Answer each call for one tenant only: the one in `thanos-tenant` gRPC metadata
    /// (forwarded by the querier), or `--store.default-tenant-id` without it. A block's
    /// tenant is its `--store.tenant-label-name` external label; blocks without it are
    /// never served. No Thanos equivalent (its receivers have one of this name).
    #[arg(long = "store.enforce-tenancy", default_value_t = false)]
    pub enforce_tenancy: bool,

    /// The tenant of a call without `thanos-tenant` metadata, with enforcement.
    #[arg(long = "store.default-tenant-id", default_value = "default-tenant")]
    pub default_tenant_id: String,

    /// The external label naming a block's tenant (the receivers' `--receive.tenant-label-name`).
    #[arg(long = "store.tenant-label-name", default_value = "tenant_id")]
    pub tenant_label_name: String,
    /// Most bucket range bytes being fetched and decoded at once over all requests,
    /// e.g. `64MB`; a range waits until earlier ones are decoded, so concurrent large
    /// queries do not multiply the gateway's memory. 0 = no bound.
    #[arg(long = "store.max-inflight-fetch-bytes", default_value = "64MB", value_parser = parse_bytes)]
    pub max_inflight_fetch_bytes: usize,

    /// Every how many postings offset table entries one is kept in memory per
    /// index-header (Thanos's flag); the others are read from the mapped header file
    /// when a lookup lands between two kept entries. 1 keeps them all.
    #[arg(long = "store.index-header-posting-offsets-in-mem-sampling", default_value_t = 32,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub postings_offsets_sampling: u32,

    /// `--grpc-server-tls-*`: TLS (and mTLS) for the StoreAPI listener.
    #[command(flatten)]
    pub grpc_tls: netsec::flags::GrpcServerTls,

    /// `--http.config`: TLS and basic auth for the `--http-address` listener.
    #[command(flatten)]
    pub http_config: netsec::flags::HttpConfig,
}

/// A `--min-time`/`--max-time` value: absolute, or relative to the time it is read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeFlag {
    Absolute(i64),
    /// Milliseconds added to now (negative for the past).
    Relative(i64),
}

impl TimeFlag {
    /// The time in ms since the epoch, relative values resolved against `now_ms`.
    pub fn at(self, now_ms: i64) -> i64 {
        match self {
            TimeFlag::Absolute(t) => t,
            TimeFlag::Relative(d) => now_ms.saturating_add(d),
        }
    }
}

/// Parses RFC3339 or a signed relative duration (`-2w`, `+1h`, `-90m`).
pub fn parse_time_flag(s: &str) -> Result<TimeFlag, String> {
    if let Some(rest) = s.strip_prefix('-') {
        let d = parse_duration(rest)?;
        return Ok(TimeFlag::Relative(
            -i64::try_from(d.as_millis()).map_err(|_| format!("{s:?}: too large"))?,
        ));
    }
    if let Some(rest) = s.strip_prefix('+') {
        let d = parse_duration(rest)?;
        return Ok(TimeFlag::Relative(
            i64::try_from(d.as_millis()).map_err(|_| format!("{s:?}: too large"))?,
        ));
    }
    // Thanos's defaults name years 0 and 9999: the ends of time.
    match s {
        "0000-01-01T00:00:00Z" => return Ok(TimeFlag::Absolute(i64::MIN)),
        "9999-12-31T23:59:59Z" => return Ok(TimeFlag::Absolute(i64::MAX)),
        _ => {}
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| TimeFlag::Absolute(t.timestamp_millis()))
        .map_err(|e| {
            format!("invalid time {s:?}: want RFC3339 or a relative duration like -2w ({e})")
        })
}

/// Parses a byte size (see [`objstore::config::parse_size`]).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    objstore::config::parse_size(s)
}

/// Parses a Prometheus duration (`3m`, `24h`, `2w`, `1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    objstore::config::parse_model_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_flags() {
        assert_eq!(
            parse_time_flag("-2w"),
            Ok(TimeFlag::Relative(-14 * 86_400_000))
        );
        assert_eq!(
            parse_time_flag("2024-01-01T00:00:00Z"),
            Ok(TimeFlag::Absolute(1_704_067_200_000))
        );
        assert_eq!(
            parse_time_flag("0000-01-01T00:00:00Z"),
            Ok(TimeFlag::Absolute(i64::MIN))
        );
        assert!(parse_time_flag("yesterday").is_err());
        assert_eq!(TimeFlag::Relative(-10).at(100), 90);
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("250MB"), Ok(250 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("0"), Ok(0));
        assert!(parse_bytes("12XB").is_err());
        assert!(parse_bytes("MB").is_err());
        assert!(parse_bytes("99999999999TB").is_err());
    }
}
