//! Command-line flags (Thanos Receive's names and defaults).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use storeapi::{Label, Labels};

use crate::hashring::HashringArgs;

/// Flags of `orrery receive`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReceiveArgs {
    /// Data directory: one TSDB per tenant under `<tsdb.path>/<tenant>/`.
    #[arg(long = "tsdb.path", default_value = "./data")]
    pub tsdb_path: PathBuf,

    /// Remote-write HTTP listen address (`POST /api/v1/receive`).
    #[arg(long = "remote-write.address", default_value = "0.0.0.0:19291")]
    pub remote_write_address: SocketAddr,

    /// gRPC listen address (StoreAPI, Info, health).
    #[arg(long = "grpc-address", default_value = "0.0.0.0:10901")]
    pub grpc_address: SocketAddr,

    /// HTTP listen address for `/metrics`, `/-/healthy`, `/-/ready`.
    #[arg(long = "http-address", default_value = "0.0.0.0:10902")]
    pub http_address: SocketAddr,

    /// External label `name="value"` added to every tenant's TSDB (repeatable).
    #[arg(long = "label", value_name = "key=\"value\"", value_parser = parse_label_flag)]
    pub labels: Vec<Label>,

    /// How long samples are kept (e.g. 15d, 6h, 30m; 0 = forever).
    #[arg(long = "tsdb.retention", default_value = "15d", value_parser = parse_duration)]
    pub retention: Duration,

    /// HTTP header carrying the tenant.
    #[arg(long = "receive.tenant-header", default_value = "THANOS-TENANT")]
    pub tenant_header: String,

    /// Tenant used when a request names none.
    #[arg(long = "receive.default-tenant-id", default_value = "default-tenant")]
    pub default_tenant: String,

    /// Take the tenant from this field of the verified client certificate
    /// (organization, organizationalUnit or commonName) instead of the header; a
    /// header naming another tenant is refused (403). Needs a client CA on the
    /// remote-write listener.
    #[arg(long = "receive.tenant-certificate-field", default_value = "")]
    pub tenant_certificate_field: String,

    /// StoreAPI calls (Series, LabelNames, LabelValues) see only the tenant named by
    /// their `thanos-tenant` gRPC metadata, and calls without it only the default
    /// tenant (without the flag: every tenant). Thanos has no such flag.
    #[arg(long = "store.enforce-tenancy", default_value_t = false)]
    pub store_enforce_tenancy: bool,

    /// External label that carries the tenant name.
    #[arg(long = "receive.tenant-label-name", default_value = "tenant_id")]
    pub tenant_label_name: String,

    /// Thanos limits YAML (per-tenant and default request limits, head series limits).
    #[arg(long = "receive.limits-config-file", value_name = "PATH")]
    pub limits_config_file: Option<PathBuf>,

    /// Head block span before it is cut into a block (hidden, as in Thanos).
    #[arg(long = "tsdb.min-block-duration", default_value = "2h", value_parser = parse_duration, hide = true)]
    pub min_block_duration: Duration,

    /// Largest block span after compaction (hidden, as in Thanos).
    #[arg(long = "tsdb.max-block-duration", default_value = "2h", value_parser = parse_duration, hide = true)]
    pub max_block_duration: Duration,

    /// Largest accepted remote-write body (compressed) in bytes; also bounds the
    /// decompressed size (×8, at most 512 MiB) unless a limits file sets less.
    #[arg(long = "receive.max-body-bytes", default_value_t = 32 << 20)]
    pub max_body_bytes: usize,

    /// Largest decompressed remote-write body in bytes.
    #[arg(long = "receive.max-decompressed-bytes", default_value_t = 256 << 20)]
    pub max_decompressed_bytes: usize,

    /// Most labels per series.
    #[arg(long = "receive.max-labels-per-series", default_value_t = 128)]
    pub max_labels_per_series: usize,

    /// Longest label name in bytes.
    #[arg(long = "receive.max-label-name-length", default_value_t = 1024)]
    pub max_label_name_len: usize,

    /// Longest label value in bytes.
    #[arg(long = "receive.max-label-value-length", default_value_t = 4096)]
    pub max_label_value_len: usize,

    /// Most remote-write requests processed at once; more wait (up to the client's timeout).
    #[arg(long = "receive.max-concurrent-requests", default_value_t = 64)]
    pub max_concurrent_requests: usize,

    /// Most tenants (TSDBs) this receiver creates.
    #[arg(long = "receive.max-tenants", default_value_t = 1000)]
    pub max_tenants: usize,

    /// WAL fsync on every acknowledged write (true) or batched by the TSDB's interval.
    #[arg(long = "tsdb.wal-fsync", default_value_t = true, action = clap::ArgAction::Set)]
    pub wal_fsync: bool,

    /// Snappy-compress WAL records, as Prometheus and Thanos do by default (about half
    /// the WAL bytes for a few percent of ingest CPU). Readers handle both either way.
    #[arg(long = "tsdb.wal-compression", default_value_t = true, action = clap::ArgAction::Set)]
    pub wal_compression: bool,

    /// Samples more than this ahead of the receiver's clock are refused (409, reason
    /// `too_far_in_future`; the rest of the request is written). 0 turns the check off
    /// (Thanos's default). On by default: one sample from a client with a broken clock
    /// would otherwise move the head's appendable window into the future.
    #[arg(long = "tsdb.too-far-in-future.time-window", default_value = "10m", value_parser = parse_duration)]
    pub too_far_in_future: Duration,

    /// Samples older than their series' newest one (or than the head's appendable
    /// window) are accepted when not older than the tenant's newest sample minus this
    /// window (Prometheus's `out_of_order_time_window`): kept in the write-behind log
    /// `wbl/`, queryable at once, written into their own blocks (compaction hint
    /// `from-out-of-order`) when the head is compacted. 0 (Thanos's default) refuses
    /// them (409 out_of_order / out_of_bounds). Floats and native histograms.
    #[arg(long = "tsdb.out-of-order.time-window", default_value = "0s", value_parser = parse_duration)]
    pub ooo_time_window: Duration,

    /// Samples per in-memory out-of-order chunk (1–255).
    #[arg(long = "tsdb.out-of-order.cap-max", default_value_t = tsdb::db::DEFAULT_OOO_CAP_MAX,
          value_parser = parse_ooo_cap)]
    pub ooo_cap_max: usize,

    /// Bytes per tenant for remembering each series by its label fields exactly as a
    /// remote-write 1.0 client sends them, so that a series sent again is found without
    /// parsing and checking its labels (about a quarter less CPU per sample at 50k
    /// series). An entry costs its labels' encoded size plus ~80 bytes (~300 bytes for
    /// nine labels: the default holds ~110k series); past the limit further series take
    /// the ordinary path. Emptied whenever the head drops series. 0 turns it off.
    #[arg(long = "tsdb.series-cache-size", default_value = "32MiB", value_parser = objstore::config::parse_size)]
    pub series_cache_size: usize,

    /// Exemplars kept per tenant: one ring buffer, the oldest forgotten first
    /// (Prometheus's exemplar storage), logged to the tenant's WAL and replayed after a
    /// restart. 0 (Thanos's default) drops every exemplar.
    #[arg(long = "tsdb.max-exemplars", default_value_t = 0)]
    pub max_exemplars: usize,

    /// How often compaction and retention run.
    #[arg(long = "tsdb.maintenance-interval", default_value = "1m", value_parser = parse_duration, hide = true)]
    pub maintenance_interval: Duration,

    /// Object storage for the blocks (Thanos's objstore YAML: `type: S3|GCS|AZURE|FILESYSTEM`,
    /// `config: {...}`, `prefix`), in a file. With a bucket every tenant's blocks are
    /// uploaded in Thanos's layout (`<ULID>/chunks/…`, `index`, then `meta.json`), oldest
    /// first, and a block is never deleted by --tsdb.retention before it is uploaded.
    #[arg(
        long = "objstore.config-file",
        value_name = "PATH",
        conflicts_with = "objstore_config"
    )]
    pub objstore_config_file: Option<PathBuf>,

    /// The objstore YAML itself, instead of --objstore.config-file.
    #[arg(long = "objstore.config", value_name = "YAML")]
    pub objstore_config: Option<String>,

    /// How often each tenant's new blocks are uploaded; a pass also starts right after
    /// blocks are cut. A failed upload is retried on the next pass.
    #[arg(long = "shipper.interval", default_value = "30s", value_parser = parse_duration, hide = true)]
    pub shipper_interval: Duration,

    /// At SIGTERM, with a bucket, the head is cut into blocks and shipped before exit
    /// (as Thanos Receive does); this bounds how long that upload may take. It bounds
    /// the upload of a hashring hand-off too (tenants a reloaded hashring moved away).
    #[arg(long = "shipper.shutdown-timeout", default_value = "1m", value_parser = parse_duration)]
    pub shipper_shutdown_timeout: Duration,

    /// Hash function for the files of shipped blocks: "" (none, Thanos's default) or
    /// "SHA256": each chunk segment's and the index's hash goes into the uploaded
    /// meta.json's `thanos.files`, as Thanos writes it (readers can skip downloading files
    /// they hold and check what they downloaded; costs one more read of each file).
    #[arg(long = "hash-func", default_value = "", value_name = "\"\"|SHA256")]
    pub hash_func: objstore::HashFunc,

    #[command(flatten)]
    pub hashring: HashringArgs,

    /// `--grpc-server-tls-*`: TLS (and mTLS) for the StoreAPI and replication listener.
    #[command(flatten)]
    pub grpc_tls: netsec::flags::GrpcServerTls,

    /// `--remote-write.server-tls-*`: TLS (and mTLS) for the remote-write listener.
    #[command(flatten)]
    pub remote_write_tls: netsec::flags::RemoteWriteServerTls,

    /// Web config file (exporter-toolkit format, as --http.config) for the remote-write
    /// listener: basic auth (bcrypt), headers, rate limit, and TLS unless
    /// --remote-write.server-tls-* is used. Thanos has no equivalent (its issue #8227).
    #[arg(
        long = "remote-write.http-config",
        value_name = "FILE",
        default_value = "",
        value_parser = netsec::flags::any_path()
    )]
    pub remote_write_http_config: PathBuf,

    /// `--http.config`: TLS and basic auth for the `--http-address` listener.
    #[command(flatten)]
    pub http_config: netsec::flags::HttpConfig,
}

/// Why a `--label` flag was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelFlagError {
    #[error("unrecognized label {0:?}: expected name=\"value\" (e.g. receive_replica=\"0\")")]
    Syntax(String),
    #[error("invalid label name {0:?} in --label")]
    Name(String),
    #[error("label value of {0:?} is not a valid double-quoted string: {1}")]
    Value(String, String),
}

/// Parses `name="value"` exactly as Thanos does: split at the first `=`, the name is a
/// valid label name, the value a Go double-quoted string (`strconv.Unquote`).
pub fn parse_label_flag(s: &str) -> Result<Label, LabelFlagError> {
    let Some((name, quoted)) = s.split_once('=') else {
        return Err(LabelFlagError::Syntax(s.to_string()));
    };
    if !storeapi::labels::is_valid_label_name(name) {
        return Err(LabelFlagError::Name(name.to_string()));
    }
    let value = unquote(quoted).map_err(|e| LabelFlagError::Value(name.to_string(), e))?;
    Ok(Label::new(name, value))
}

/// A Go-style `strconv.Unquote` for double-quoted strings (the common escapes).
fn unquote(s: &str) -> Result<String, String> {
    let inner = s
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .filter(|_| s.len() >= 2)
        .ok_or_else(|| format!("{s:?} is not enclosed in double quotes"))?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Err("unescaped '\"' inside the value".into()),
            '\n' => return Err("newline inside the value".into()),
            '\\' => {
                let e = chars.next().ok_or("trailing backslash")?;
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'a' => out.push('\x07'),
                    'b' => out.push('\x08'),
                    'f' => out.push('\x0c'),
                    'v' => out.push('\x0b'),
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = chars.by_ref().take(n).collect();
                        let v = u32::from_str_radix(&hex, 16)
                            .ok()
                            .filter(|_| hex.len() == n)
                            .ok_or_else(|| format!("bad \\{e} escape"))?;
                        out.push(char::from_u32(v).ok_or_else(|| format!("bad \\{e} escape"))?);
                    }
                    other => return Err(format!("unknown escape \\{other}")),
                }
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Parses a Prometheus duration: one or more `<n><unit>` with units y w d h m s ms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    objstore::config::parse_model_duration(s)
}

impl ReceiveArgs {
    /// The `--label`s as a sorted label set; duplicate names are an error.
    pub fn external_labels(&self) -> Result<Labels, storeapi::LabelError> {
        Labels::from_unsorted(self.labels.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_flags_parse_and_default_to_plaintext() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ReceiveArgs,
        }
        use clap::Parser;
        let a = Cli::try_parse_from(["receive"]).unwrap().args;
        assert!(a.remote_write_http_config.as_os_str().is_empty());
        assert!(a.grpc_tls.server_config().unwrap().is_none());
        assert!(!a.hashring.client_tls.client().unwrap().is_tls());
        let a = Cli::try_parse_from([
            "receive",
            "--grpc-server-tls-cert=/c",
            "--grpc-server-tls-key=/k",
            "--grpc-server-tls-client-ca=/ca",
            "--remote-write.server-tls-cert=/rc",
            "--remote-write.server-tls-min-version=1.2",
            "--remote-write.client-tls-secure",
            "--remote-write.client-server-name=peer",
            "--remote-write.http-config=/w.yml",
            "--http.config=/h.yml",
        ])
        .unwrap()
        .args;
        assert_eq!(
            a.grpc_tls.client_ca.as_deref(),
            Some(std::path::Path::new("/ca"))
        );
        assert_eq!(
            a.remote_write_tls.cert.as_deref(),
            Some(std::path::Path::new("/rc"))
        );
        assert_eq!(a.remote_write_tls.min_version, "1.2");
        assert!(a.hashring.client_tls.secure);
        assert_eq!(a.hashring.client_tls.server_name, "peer");
        assert_eq!(a.http_config.http_config, "/h.yml");
        // Files that do not exist are startup errors naming them.
        let e = a.grpc_tls.server_config().unwrap_err().to_string();
        assert!(e.contains("/c"), "{e}");
    }

    #[test]
    fn label_flag_as_thanos() {
        assert_eq!(
            parse_label_flag("receive_replica=\"0\"").unwrap(),
            Label::new("receive_replica", "0")
        );
        assert_eq!(
            parse_label_flag("a=\"x=\\\"y\\\"\"").unwrap(),
            Label::new("a", "x=\"y\"")
        );
        assert_eq!(
            parse_label_flag("cluster=\"wayne-enterprises\"")
                .unwrap()
                .value,
            "wayne-enterprises"
        );
        assert!(matches!(
            parse_label_flag("novalue"),
            Err(LabelFlagError::Syntax(_))
        ));
        assert!(matches!(
            parse_label_flag("a=b"),
            Err(LabelFlagError::Value(..))
        ));
        assert!(matches!(
            parse_label_flag("a=\"b"),
            Err(LabelFlagError::Value(..))
        ));
        assert!(matches!(
            parse_label_flag("1a=\"b\""),
            Err(LabelFlagError::Name(_))
        ));
        assert!(matches!(
            parse_label_flag("a=\"b\"c\""),
            Err(LabelFlagError::Value(..))
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("15d").unwrap(),
            Duration::from_secs(15 * 86400)
        );
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }
}

/// `--tsdb.out-of-order.cap-max`: 1 to 255 (Prometheus's bounds).
fn parse_ooo_cap(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=255).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a number from 1 to 255")),
    }
}
