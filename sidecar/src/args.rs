//! Command-line flags (Thanos Sidecar's names and defaults).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `orrery sidecar`.
#[derive(Debug, Clone, clap::Args)]
pub struct SidecarArgs {
    /// URL of the Prometheus this sidecar serves and ships.
    #[arg(long = "prometheus.url", default_value = "http://localhost:9090")]
    pub prometheus_url: String,

    /// How long to wait for Prometheus to answer (and to have external labels) before
    /// giving up at startup.
    #[arg(long = "prometheus.ready_timeout", default_value = "10m", value_parser = parse_duration)]
    pub prometheus_ready_timeout: Duration,

    /// How often Prometheus's config (external labels) and lowest timestamp are read
    /// again; also the heartbeat that drives `/-/ready`.
    #[arg(long = "prometheus.get_config_interval", default_value = "30s", value_parser = parse_duration)]
    pub get_config_interval: Duration,

    /// Timeout of each of those reads.
    #[arg(long = "prometheus.get_config_timeout", default_value = "5s", value_parser = parse_duration)]
    pub get_config_timeout: Duration,

    /// Prometheus's data directory (`--storage.tsdb.path`): the blocks shipped to the
    /// bucket, and what `--tsdb.local-read` serves.
    #[arg(long = "tsdb.path", default_value = "./data")]
    pub tsdb_path: PathBuf,

    /// Serve the StoreAPI from Prometheus's data directory (`--tsdb.path`: its blocks,
    /// and its head rebuilt by following its WAL) instead of Prometheus's remote-read
    /// API. Queries then cost Prometheus nothing and answer faster; the sidecar holds
    /// about one head's worth of memory for Prometheus's series, and must be able to
    /// read the directory. Off by default (Thanos reads through remote read).
    #[arg(long = "tsdb.local-read", default_value_t = false)]
    pub local_read: bool,

    /// Path to the object storage configuration YAML (Thanos's format). Without a bucket
    /// nothing is shipped.
    #[arg(long = "objstore.config-file", value_name = "PATH")]
    pub objstore_config_file: Option<PathBuf>,

    /// Object storage configuration YAML inline (alternative to --objstore.config-file).
    #[arg(long = "objstore.config", value_name = "YAML")]
    pub objstore_config: Option<String>,

    /// Also ship the blocks Prometheus compacted before it had a sidecar (level > 1),
    /// each after checking the bucket has no block with the same external labels over
    /// its time range. For a migration: run once, then turn it off.
    #[arg(long = "shipper.upload-compacted", default_value_t = false)]
    pub upload_compacted: bool,

    /// gRPC listen address (StoreAPI, Info, health).
    #[arg(long = "grpc-address", default_value = "0.0.0.0:10901")]
    pub grpc_address: SocketAddr,

    /// HTTP listen address for `/metrics`, `/-/healthy`, `/-/ready`.
    #[arg(long = "http-address", default_value = "0.0.0.0:10902")]
    pub http_address: SocketAddr,

    /// `--grpc-server-tls-*`: TLS (and mTLS) for the StoreAPI listener.
    #[command(flatten)]
    pub grpc_tls: netsec::flags::GrpcServerTls,

    /// `--http.config`: TLS and basic auth for the `--http-address` listener.
    #[command(flatten)]
    pub http_config: netsec::flags::HttpConfig,
}

/// Parses a Prometheus duration (`30s`, `10m`, `2h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    objstore::config::parse_model_duration(s)
}
