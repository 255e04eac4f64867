//! `orrery standalone`: a receiver, a store gateway over the receiver's bucket, a
//! compactor and a querier in one process, wired to each other over loopback gRPC, with
//! defaults that need no flags. The querier asks the receiver for recent data and the
//! gateway for blocks past the receiver's local retention, so one command answers over
//! all history.

use clap::{Args, Parser};

/// Flags of `orrery standalone`; everything has a default.
#[derive(Debug, Clone, Args)]
pub struct StandaloneArgs {
    /// Where the receiver keeps its TSDBs.
    #[arg(long = "tsdb.path", default_value = "./data")]
    pub tsdb_path: String,
    /// Prometheus remote write (`POST /api/v1/receive`).
    #[arg(long = "remote-write.address", default_value = "0.0.0.0:19291")]
    pub remote_write_address: String,
    /// Web UI and Prometheus HTTP API of the querier.
    #[arg(long = "http-address", default_value = "0.0.0.0:10902")]
    pub http_address: String,
    /// The receiver's StoreAPI (the querier's one endpoint).
    #[arg(long = "grpc-address", default_value = "127.0.0.1:10901")]
    pub grpc_address: String,
    /// The receiver's own /metrics, /-/healthy, /-/ready.
    #[arg(long = "receive.http-address", default_value = "127.0.0.1:10909")]
    pub receive_http_address: String,
    /// External labels of the receiver, `name="value"` (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// How long samples are kept.
    #[arg(long = "tsdb.retention", default_value = "15d")]
    pub retention: String,
    /// Samples more than this ahead of the clock are refused (0 = off); as `receive`.
    #[arg(long = "tsdb.too-far-in-future.time-window", default_value = "10m")]
    pub too_far_in_future: String,
    /// Out-of-order samples this much older than the newest one are accepted (0 = off);
    /// as `receive`.
    #[arg(long = "tsdb.out-of-order.time-window", default_value = "0s")]
    pub ooo_time_window: String,
    /// Bucket for the blocks (Thanos objstore YAML) in a file. Default: a FILESYSTEM
    /// bucket in `<tsdb.path>-bucket/` (beside the data dir, whose subdirectories are
    /// tenants), so history outlives --tsdb.retention out of the box.
    #[arg(
        long = "objstore.config-file",
        value_name = "PATH",
        conflicts_with = "objstore_config"
    )]
    pub objstore_config_file: Option<String>,
    /// The objstore YAML itself, instead of --objstore.config-file.
    #[arg(long = "objstore.config", value_name = "YAML")]
    pub objstore_config: Option<String>,
    /// The embedded compactor's /metrics, /-/healthy, /-/ready.
    #[arg(long = "compact.http-address", default_value = "127.0.0.1:10912")]
    pub compact_http_address: String,
    /// Do not run the compactor over the bucket.
    #[arg(long = "compact.disable")]
    pub compact_disable: bool,
    /// How long the bucket keeps raw blocks (0d = forever, Thanos's default; at least
    /// 40h otherwise, so the 5m blocks get made first); the compactor's
    /// `--retention.resolution-raw`.
    #[arg(long = "compact.retention.resolution-raw", default_value = "0d")]
    pub compact_retention_raw: String,
    /// How long the bucket keeps 5m blocks (0d = forever; at least 10d otherwise).
    #[arg(long = "compact.retention.resolution-5m", default_value = "0d")]
    pub compact_retention_5m: String,
    /// How long the bucket keeps 1h blocks (0d = forever).
    #[arg(long = "compact.retention.resolution-1h", default_value = "0d")]
    pub compact_retention_1h: String,
    /// The embedded store gateway's StoreAPI (the querier's second endpoint).
    #[arg(long = "store.grpc-address", default_value = "127.0.0.1:10905")]
    pub store_grpc_address: String,
    /// The embedded store gateway's /metrics, /-/healthy, /-/ready.
    #[arg(long = "store.http-address", default_value = "127.0.0.1:10906")]
    pub store_http_address: String,
    /// How often the store gateway scans the bucket for new and removed blocks.
    #[arg(long = "store.sync-block-duration", default_value = "3m")]
    pub store_sync_block_duration: String,
    /// Do not run the store gateway (queries then reach only the receiver's local data).
    #[arg(long = "store.disable")]
    pub store_disable: bool,
    /// TLS on the remote-write listener (the one Prometheus servers reach from outside).
    #[command(flatten)]
    pub remote_write_tls: netsec::flags::RemoteWriteServerTls,
    /// Web config (exporter-toolkit format) for the remote-write listener: writers'
    /// basic auth, bearer tokens, tenants bound to them; as `orrery receive`'s flag.
    #[arg(
        long = "remote-write.http-config",
        value_name = "FILE",
        default_value = "",
        value_parser = netsec::flags::any_path()
    )]
    pub remote_write_http_config: std::path::PathBuf,
    /// `--http.config`: TLS and basic auth for the querier's UI and HTTP API
    /// (`--http-address`). The other listeners are on loopback.
    #[command(flatten)]
    pub http_config: netsec::flags::HttpConfig,
    /// Every flag with its value (filled by the binary), for the querier's
    /// `/api/v1/status/flags`.
    #[arg(skip)]
    pub flag_values: Vec<(String, String)>,
}

/// The default bucket: a FILESYSTEM bucket beside the data dir. Not inside it: every
/// directory in `--tsdb.path` is a tenant.
fn default_bucket_dir(tsdb_path: &str) -> String {
    let p = tsdb_path.trim_end_matches('/');
    format!("{}-bucket", if p.is_empty() { "." } else { p })
}

#[derive(Parser)]
struct ReceiveCli {
    #[command(flatten)]
    args: receiver::ReceiveArgs,
}

#[derive(Parser)]
struct CompactCli {
    #[command(flatten)]
    args: compact::CompactArgs,
}

/// The compactor over the same bucket: a pass every 5 minutes (Thanos's
/// `--wait-interval`), scratch space beside the data dir, replicas deduplicated by
/// `receive_replica`, its /metrics on `--compact.http-address`. Downsampling is on
/// (as Thanos's default): the embedded store gateway serves the 5m/1h blocks, so long
/// ranges stay fast once the raw blocks reach 40h.
fn compact_args(a: &StandaloneArgs) -> anyhow::Result<compact::CompactArgs> {
    let c = vec![
        "compact".to_string(),
        "--wait".to_string(),
        format!("--data-dir={}-compact", a.tsdb_path.trim_end_matches('/')),
        format!("--http-address={}", a.compact_http_address),
        "--deduplication.replica-label=receive_replica".to_string(),
        format!("--retention.resolution-raw={}", a.compact_retention_raw),
        format!("--retention.resolution-5m={}", a.compact_retention_5m),
        format!("--retention.resolution-1h={}", a.compact_retention_1h),
        objstore_flag(a),
    ];
    let args = CompactCli::try_parse_from(c)?.args;
    // Refused at startup, before any component runs (the names are the compactor's;
    // here they carry the `compact.` prefix).
    args.validate()
        .map_err(|e| anyhow::anyhow!("the embedded compactor (--compact.*): {e}"))?;
    Ok(args)
}

#[derive(Parser)]
struct StoreCli {
    #[command(flatten)]
    args: store::StoreArgs,
}

/// The bucket flag every bucket-reading component gets: the user's, or the default
/// FILESYSTEM bucket beside the data dir.
fn objstore_flag(a: &StandaloneArgs) -> String {
    match (&a.objstore_config_file, &a.objstore_config) {
        (Some(f), _) => format!("--objstore.config-file={f}"),
        (None, Some(y)) => format!("--objstore.config={y}"),
        (None, None) => format!(
            "--objstore.config=type: FILESYSTEM\nconfig:\n  directory: {}\n",
            // A JSON string is a YAML double-quoted scalar: any path stays one value.
            serde_json::Value::from(default_bucket_dir(&a.tsdb_path))
        ),
    }
}

/// The store gateway over the same bucket: its index cache beside the data dir (not in
/// it: every directory there is a tenant).
fn store_args(a: &StandaloneArgs) -> anyhow::Result<store::StoreArgs> {
    let c = vec![
        "store".to_string(),
        format!("--data-dir={}-store", a.tsdb_path.trim_end_matches('/')),
        format!("--grpc-address={}", a.store_grpc_address),
        format!("--http-address={}", a.store_http_address),
        format!("--sync-block-duration={}", a.store_sync_block_duration),
        objstore_flag(a),
    ];
    Ok(StoreCli::try_parse_from(c)?.args)
}

#[derive(Parser)]
struct QueryCli {
    #[command(flatten)]
    args: querier::QueryArgs,
}

/// Builds both components' flags the way their own subcommands parse them, so the
/// standalone defaults can never drift from what `receive`/`query` accept.
fn component_args(
    a: &StandaloneArgs,
) -> anyhow::Result<(receiver::ReceiveArgs, querier::QueryArgs)> {
    let mut r = vec![
        "receive".to_string(),
        format!("--tsdb.path={}", a.tsdb_path),
        format!("--remote-write.address={}", a.remote_write_address),
        format!("--grpc-address={}", a.grpc_address),
        format!("--http-address={}", a.receive_http_address),
        format!("--tsdb.retention={}", a.retention),
        format!(
            "--tsdb.too-far-in-future.time-window={}",
            a.too_far_in_future
        ),
        format!("--tsdb.out-of-order.time-window={}", a.ooo_time_window),
    ];
    r.extend(a.labels.iter().map(|l| format!("--label={l}")));
    r.push(objstore_flag(a));
    let mut receive = ReceiveCli::try_parse_from(r)?.args;
    // The exposed listeners take the standalone's security flags as they are.
    receive.remote_write_tls = a.remote_write_tls.clone();
    receive.remote_write_http_config = a.remote_write_http_config.clone();
    let mut q = vec![
        "query".to_string(),
        format!("--http-address={}", a.http_address),
        "--grpc-address=".to_string(),
        format!("--endpoint={}", a.grpc_address),
    ];
    if !a.store_disable {
        q.push(format!("--endpoint={}", a.store_grpc_address));
    }
    let mut query = QueryCli::try_parse_from(q)?.args;
    query.flag_values = a.flag_values.clone();
    query.http_config = a.http_config.clone();
    Ok((receive, query))
}

/// The snippet to paste into prometheus.yml.
fn remote_write_snippet(remote_write_address: &str) -> String {
    let port = remote_write_address
        .rsplit_once(':')
        .map(|(_, p)| p)
        .unwrap_or("19291");
    format!("remote_write:\n  - url: http://<this-host>:{port}/api/v1/receive\n")
}

/// How long the querier waits for the embedded StoreAPIs before it starts anyway.
const EMBEDDED_READY_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Waits until every embedded StoreAPI answers Info (or `EMBEDDED_READY_WAIT` passes),
/// so the querier's first discovery round finds them healthy: a query right after the
/// standalone reports ready sees the receiver's acknowledged samples and the bucket,
/// not "no stores" until the next Info refresh.
async fn wait_for_stores(addrs: Vec<String>) {
    let set = querier::EndpointSet::new(addrs, None, std::time::Duration::from_secs(1));
    let deadline = tokio::time::Instant::now() + EMBEDDED_READY_WAIT;
    loop {
        set.refresh().await;
        let all = set.all();
        let waiting: Vec<String> = all
            .iter()
            .filter(|e| !e.status().healthy)
            .map(|e| e.addr.clone())
            .collect();
        if waiting.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(endpoints = ?waiting, "embedded StoreAPIs not ready; starting the querier anyway");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A component's result, logged as soon as it ends with an error (the others keep
/// running until the signal, so the error would otherwise surface only at exit).
async fn logged(
    name: &'static str,
    f: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let r = f.await;
    if let Err(e) = &r {
        tracing::error!(
            component = name,
            error = format!("{e:#}"),
            "component stopped"
        );
    }
    r
}

/// Runs the components until SIGTERM/SIGINT (each stops gracefully on it).
pub async fn run(a: StandaloneArgs) -> anyhow::Result<()> {
    let (receive, query) = component_args(&a)?;
    // Flags are all parsed before anything starts: a bad one stops nothing half-way.
    let compact = (!a.compact_disable).then(|| compact_args(&a)).transpose()?;
    let store = (!a.store_disable).then(|| store_args(&a)).transpose()?;
    println!(
        "orrery standalone: UI and Prometheus API on http://{}/ ; add this to prometheus.yml:\n\n{}",
        a.http_address,
        remote_write_snippet(&a.remote_write_address)
    );
    let compact = async move {
        match compact {
            Some(c) => logged("compact", compact::run(c)).await,
            None => Ok(()),
        }
    };
    let store = async move {
        match store {
            Some(s) => logged("store", store::run(s)).await,
            None => Ok(()),
        }
    };
    let endpoints = query.endpoints.clone();
    let query = async move {
        tokio::select! {
            _ = wait_for_stores(endpoints) => logged("query", querier::run(query)).await,
            // Stopped before the querier started: nothing to drain.
            _ = querier::shutdown_signal() => Ok(()),
        }
    };
    let (r, q, c, s) = tokio::join!(
        logged("receive", receiver::run(receive)),
        query,
        compact,
        store
    );
    r.and(q).and(c).and(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_into_component_flags() {
        let a = StandaloneArgs {
            tsdb_path: "./data".into(),
            remote_write_address: "0.0.0.0:19291".into(),
            http_address: "0.0.0.0:10902".into(),
            grpc_address: "127.0.0.1:10901".into(),
            receive_http_address: "127.0.0.1:10909".into(),
            labels: vec![r#"receive_replica="0""#.into()],
            retention: "15d".into(),
            too_far_in_future: "10m".into(),
            ooo_time_window: "0s".into(),
            objstore_config_file: None,
            objstore_config: None,
            compact_http_address: "127.0.0.1:10912".into(),
            compact_disable: false,
            compact_retention_raw: "0d".into(),
            compact_retention_5m: "0d".into(),
            compact_retention_1h: "0d".into(),
            store_grpc_address: "127.0.0.1:10905".into(),
            store_http_address: "127.0.0.1:10906".into(),
            store_sync_block_duration: "3m".into(),
            store_disable: false,
            remote_write_tls: Default::default(),
            remote_write_http_config: Default::default(),
            http_config: Default::default(),
            flag_values: Vec::new(),
        };
        let c = compact_args(&a).unwrap();
        assert!(c.wait);
        // Thanos's default: the bucket keeps every resolution forever.
        assert!(c.retention_raw.is_zero() && c.retention_5m.is_zero() && c.retention_1h.is_zero());
        let mut kept = a.clone();
        kept.compact_retention_raw = "90d".into();
        kept.compact_retention_1h = "2y".into();
        let k = compact_args(&kept).unwrap();
        assert_eq!(k.retention_raw, std::time::Duration::from_secs(90 * 86400));
        assert_eq!(
            k.retention_1h,
            std::time::Duration::from_secs(2 * 365 * 86400)
        );
        // Raw data must outlive the 40h the 5m blocks need.
        kept.compact_retention_raw = "1d".into();
        let e = compact_args(&kept).unwrap_err().to_string();
        assert!(e.contains("40h") && e.contains("--compact."), "{e}");
        assert_eq!(c.replica_labels, ["receive_replica"]);
        assert_eq!(c.http_address.to_string(), "127.0.0.1:10912");
        assert!(
            c.objstore_config
                .as_deref()
                .is_some_and(|y| y.contains("data-bucket"))
        );
        let (r, q) = component_args(&a).unwrap();
        assert_eq!(r.grpc_address.to_string(), "127.0.0.1:10901");
        assert_eq!(r.http_address.to_string(), "127.0.0.1:10909");
        assert_eq!(r.labels.len(), 1);
        assert_eq!(r.too_far_in_future, std::time::Duration::from_secs(600));
        // The querier asks the receiver (recent) and the store gateway (the bucket).
        assert_eq!(q.endpoints, ["127.0.0.1:10901", "127.0.0.1:10905"]);
        assert_eq!(q.http_address, "0.0.0.0:10902");
        assert!(q.grpc_address.is_empty());
        assert!(remote_write_snippet(&a.remote_write_address).contains(":19291/api/v1/receive"));
        // The default bucket: FILESYSTEM beside the data dir.
        let cfg = objstore::BucketConfig::from_flags(None, r.objstore_config.as_deref())
            .unwrap()
            .unwrap();
        assert_eq!(
            cfg,
            objstore::BucketConfig::filesystem(std::path::Path::new("./data-bucket"))
        );
        let (r, _) = component_args(&StandaloneArgs {
            objstore_config: Some("type: S3\nconfig: {bucket: b, endpoint: e}".into()),
            ..a.clone()
        })
        .unwrap();
        let cfg = objstore::BucketConfig::from_flags(None, r.objstore_config.as_deref())
            .unwrap()
            .unwrap();
        assert_eq!(cfg.provider.kind(), "S3");
        // The store gateway reads the same bucket, its cache beside the data dir.
        let s = store_args(&a).unwrap();
        assert_eq!(s.grpc_address.to_string(), "127.0.0.1:10905");
        assert_eq!(s.http_address.to_string(), "127.0.0.1:10906");
        assert_eq!(s.data_dir, std::path::Path::new("./data-store"));
        assert_eq!(s.sync_block_duration, std::time::Duration::from_secs(180));
        assert_eq!(
            objstore::BucketConfig::from_flags(None, s.objstore_config.as_deref())
                .unwrap()
                .unwrap(),
            objstore::BucketConfig::filesystem(std::path::Path::new("./data-bucket"))
        );
        let (_, q) = component_args(&StandaloneArgs {
            store_disable: true,
            ..a.clone()
        })
        .unwrap();
        assert_eq!(q.endpoints, ["127.0.0.1:10901"]);
    }

    #[test]
    fn exposed_listeners_take_the_security_flags() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: StandaloneArgs,
        }
        let a = <Cli as clap::Parser>::try_parse_from([
            "standalone",
            "--remote-write.server-tls-cert=/tls/c.crt",
            "--remote-write.server-tls-key=/tls/c.key",
            "--remote-write.server-tls-client-ca=/tls/ca.crt",
            "--remote-write.http-config=/w.yml",
            "--http.config=/h.yml",
        ])
        .unwrap()
        .a;
        let (r, q) = component_args(&a).unwrap();
        assert_eq!(
            r.remote_write_tls.cert.as_deref(),
            Some(std::path::Path::new("/tls/c.crt"))
        );
        assert_eq!(
            r.remote_write_tls.key.as_deref(),
            Some(std::path::Path::new("/tls/c.key"))
        );
        assert_eq!(
            r.remote_write_tls.client_ca.as_deref(),
            Some(std::path::Path::new("/tls/ca.crt"))
        );
        assert_eq!(r.remote_write_http_config, std::path::Path::new("/w.yml"));
        assert_eq!(q.http_config.http_config, "/h.yml");
        // The loopback listeners stay plain: the receiver's own HTTP and the gRPC ports.
        assert!(r.http_config.http_config.is_empty());
        assert!(r.grpc_tls.cert.is_none());
    }

    #[test]
    fn bad_label_is_an_error() {
        let a = StandaloneArgs {
            tsdb_path: "./data".into(),
            remote_write_address: "0.0.0.0:19291".into(),
            http_address: "0.0.0.0:10902".into(),
            grpc_address: "127.0.0.1:10901".into(),
            receive_http_address: "127.0.0.1:10909".into(),
            labels: vec!["no-quotes".into()],
            retention: "15d".into(),
            too_far_in_future: "10m".into(),
            ooo_time_window: "0s".into(),
            objstore_config_file: None,
            objstore_config: None,
            compact_http_address: "127.0.0.1:10912".into(),
            compact_disable: false,
            compact_retention_raw: "0d".into(),
            compact_retention_5m: "0d".into(),
            compact_retention_1h: "0d".into(),
            store_grpc_address: "127.0.0.1:10905".into(),
            store_http_address: "127.0.0.1:10906".into(),
            store_sync_block_duration: "3m".into(),
            store_disable: false,
            remote_write_tls: Default::default(),
            remote_write_http_config: Default::default(),
            http_config: Default::default(),
            flag_values: Vec::new(),
        };
        assert!(component_args(&a).is_err());
    }
}
