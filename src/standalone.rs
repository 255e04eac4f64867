//! `orrery standalone`: a receiver and a querier in one process, wired to each other
//! over loopback gRPC, with defaults that need no flags.

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
/// `receive_replica`, its /metrics on `--compact.http-address`.
fn compact_args(a: &StandaloneArgs) -> anyhow::Result<compact::CompactArgs> {
    let mut c = vec![
        "compact".to_string(),
        "--wait".to_string(),
        format!("--data-dir={}-compact", a.tsdb_path.trim_end_matches('/')),
        format!("--http-address={}", a.compact_http_address),
        "--deduplication.replica-label=receive_replica".to_string(),
        "--downsampling.disable".to_string(),
    ];
    match (&a.objstore_config_file, &a.objstore_config) {
        (Some(f), _) => c.push(format!("--objstore.config-file={f}")),
        (None, Some(y)) => c.push(format!("--objstore.config={y}")),
        (None, None) => c.push(format!(
            "--objstore.config=type: FILESYSTEM\nconfig:\n  directory: {}\n",
            serde_json::Value::from(default_bucket_dir(&a.tsdb_path))
        )),
    }
    Ok(CompactCli::try_parse_from(c)?.args)
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
    ];
    r.extend(a.labels.iter().map(|l| format!("--label={l}")));
    match (&a.objstore_config_file, &a.objstore_config) {
        (Some(f), _) => r.push(format!("--objstore.config-file={f}")),
        (None, Some(c)) => r.push(format!("--objstore.config={c}")),
        (None, None) => r.push(format!(
            "--objstore.config=type: FILESYSTEM\nconfig:\n  directory: {}\n",
            // A JSON string is a YAML double-quoted scalar: any path stays one value.
            serde_json::Value::from(default_bucket_dir(&a.tsdb_path))
        )),
    }
    let receive = ReceiveCli::try_parse_from(r)?.args;
    let query = QueryCli::try_parse_from([
        "query".to_string(),
        format!("--http-address={}", a.http_address),
        "--grpc-address=".to_string(),
        format!("--endpoint={}", a.grpc_address),
    ])?
    .args;
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

/// Runs receiver and querier until SIGTERM/SIGINT (each stops gracefully on it).
pub async fn run(a: StandaloneArgs) -> anyhow::Result<()> {
    let (receive, query) = component_args(&a)?;
    println!(
        "orrery standalone: UI and Prometheus API on http://{}/ ; add this to prometheus.yml:\n\n{}",
        a.http_address,
        remote_write_snippet(&a.remote_write_address)
    );
    if a.compact_disable {
        let (r, q) = tokio::join!(receiver::run(receive), querier::run(query));
        return r.and(q);
    }
    let compact = compact_args(&a)?;
    let (r, q, c) = tokio::join!(
        receiver::run(receive),
        querier::run(query),
        compact::run(compact)
    );
    r.and(q).and(c)
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
            objstore_config_file: None,
            objstore_config: None,
            compact_http_address: "127.0.0.1:10912".into(),
            compact_disable: false,
        };
        let c = compact_args(&a).unwrap();
        assert!(c.wait);
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
        assert_eq!(q.endpoints, vec!["127.0.0.1:10901".to_string()]);
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
            objstore_config_file: None,
            objstore_config: None,
            compact_http_address: "127.0.0.1:10912".into(),
            compact_disable: false,
        };
        assert!(component_args(&a).is_err());
    }
}
