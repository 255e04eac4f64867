//! Command-line flags (Thanos Query's names).

use std::path::PathBuf;
use std::time::Duration;

/// Parses `2m`, `30s`, `1h` into a duration (Prometheus duration syntax).
pub fn parse_cli_duration(s: &str) -> Result<Duration, String> {
    crate::api::format::parse_prom_duration(s)
        .and_then(|ms| u64::try_from(ms).ok())
        .map(Duration::from_millis)
        .ok_or_else(|| format!("invalid duration {s:?} (examples: 30s, 5m, 1h)"))
}

/// Command-line flags of `orrery query`.
#[derive(Debug, Clone, clap::Args)]
pub struct QueryArgs {
    /// Listen address for the HTTP API, UI and metrics.
    #[arg(long = "http-address", default_value = "0.0.0.0:10902")]
    pub http_address: String,

    /// Listen address for gRPC (the querier's own health service).
    #[arg(long = "grpc-address", default_value = "0.0.0.0:10901")]
    pub grpc_address: String,

    /// StoreAPI endpoint: HOST:PORT, or dns+HOST:PORT (A/AAAA lookup refreshed every 30s).
    /// Repeatable.
    #[arg(long = "endpoint")]
    pub endpoints: Vec<String>,

    /// Thanos endpoint SD file (`endpoints: [{address, client_config}]`,
    /// `default_client_config`), reloaded when it changes.
    #[arg(long = "endpoint.sd-config-file")]
    pub endpoint_sd_config_file: Option<PathBuf>,

    /// The endpoint SD config as YAML (alternative to `--endpoint.sd-config-file`).
    #[arg(long = "endpoint.sd-config")]
    pub endpoint_sd_config: Option<String>,

    /// Label naming replicas; series differing only in these labels are deduplicated.
    /// Repeatable, or comma-separated.
    #[arg(long = "query.replica-label", value_delimiter = ',')]
    pub replica_labels: Vec<String>,

    /// Answer with the stores that responded (plus warnings) when some fail.
    #[arg(long = "query.partial-response", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub partial_response: bool,

    /// Maximum time a query may take.
    #[arg(long = "query.timeout", default_value = "2m", value_parser = parse_cli_duration)]
    pub timeout: Duration,

    /// Maximum number of queries evaluated at once; more wait in a queue, for at most
    /// their timeout (then 503, as Prometheus's query queue answers).
    #[arg(long = "query.max-concurrent", default_value_t = 20)]
    pub max_concurrent: usize,

    /// Maximum length in bytes of a query or `match[]` selector (longer: 400).
    #[arg(long = "query.max-length", default_value_t = promql::limits::DEFAULT_MAX_QUERY_LENGTH)]
    pub max_query_length: usize,

    /// Maximum nesting depth of a query or `match[]` selector, bounded from its text before
    /// parsing (deeper: 400). Each level costs stack in parsing and evaluation.
    #[arg(long = "query.max-nesting-depth", default_value_t = promql::limits::DEFAULT_MAX_NESTING_DEPTH)]
    pub max_nesting_depth: usize,

    /// How far back an instant selector looks for samples.
    #[arg(long = "query.lookback-delta", default_value = "5m", value_parser = parse_cli_duration)]
    pub lookback_delta: Duration,

    /// Maximum number of samples a single query may load into memory.
    #[arg(long = "query.max-samples", default_value_t = 50_000_000)]
    pub max_samples: usize,

    /// HTTP header carrying the tenant, forwarded to stores as `thanos-tenant` gRPC metadata.
    #[arg(long = "query.tenant-header", default_value = "THANOS-TENANT")]
    pub tenant_header: String,

    /// Confine every read to the caller's tenant (Thanos's flag): a
    /// `<tenant-label-name>="<tenant>"` matcher on every store call, conflicting tenant
    /// matchers refused (400), endpoints without a tenancy policy refused (403).
    #[arg(long = "query.enforce-tenancy", default_value_t = false)]
    pub enforce_tenancy: bool,

    /// With enforcement, what a user matcher on the tenant label that cannot match the
    /// caller's tenant does: `error` (400, the default) or `replace` (Thanos's
    /// behaviour: the store calls carry only the caller's tenant matcher).
    #[arg(
        long = "query.tenant-matcher-conflict",
        value_enum,
        default_value = "error"
    )]
    pub tenant_matcher_conflict: crate::tenancy::ConflictMode,

    /// Tenant of requests that name none.
    #[arg(long = "query.default-tenant-id", default_value = "default-tenant")]
    pub default_tenant: String,

    /// Take the tenant from this field of the verified client certificate
    /// (organization, organizationalUnit or commonName); a header naming another tenant
    /// is refused (403).
    #[arg(long = "query.tenant-certificate-field", default_value = "")]
    pub tenant_certificate_field: String,

    /// The label that carries the tenant (the receivers' --receive.tenant-label-name).
    #[arg(long = "query.tenant-label-name", default_value = "tenant_id")]
    pub tenant_label_name: String,

    /// Interval and per-call timeout of endpoint Info calls.
    #[arg(long = "endpoint.info-timeout", default_value = "5s", value_parser = parse_cli_duration, hide = true)]
    pub info_interval: Duration,

    /// Per-endpoint timeout of a Series/LabelNames/LabelValues call (0 = the query timeout).
    #[arg(long = "store.response-timeout", default_value = "0s", value_parser = parse_cli_duration)]
    pub store_response_timeout: Duration,

    /// `--grpc-client-tls-*`: TLS (and a client certificate) towards StoreAPI endpoints.
    #[command(flatten)]
    pub grpc_client_tls: netsec::flags::GrpcClientTls,

    /// `--grpc-server-tls-*`: TLS (and mTLS) for the querier's own gRPC listener.
    #[command(flatten)]
    pub grpc_tls: netsec::flags::GrpcServerTls,

    /// `--http.config`: TLS and basic auth for the HTTP API and UI.
    #[command(flatten)]
    pub http_config: netsec::flags::HttpConfig,

    /// Without a `max_source_resolution` parameter, let range queries read data
    /// downsampled to step/5 (Thanos's flag).
    #[arg(long = "query.auto-downsampling", default_value_t = false)]
    pub auto_downsampling: bool,

    /// Every flag of the running command and its value, filled by the binary from the
    /// parsed command line (`/api/v1/status/flags`); not a flag itself.
    #[arg(skip)]
    pub flag_values: Vec<(String, String)>,
}

impl QueryArgs {
    /// Defaults with the given endpoints (what `orrery standalone` uses).
    pub fn with_endpoints(http_address: &str, endpoints: Vec<String>) -> QueryArgs {
        QueryArgs {
            http_address: http_address.to_string(),
            grpc_address: String::new(),
            endpoints,
            endpoint_sd_config_file: None,
            endpoint_sd_config: None,
            replica_labels: Vec::new(),
            partial_response: true,
            timeout: Duration::from_secs(120),
            max_concurrent: 20,
            max_query_length: promql::limits::DEFAULT_MAX_QUERY_LENGTH,
            max_nesting_depth: promql::limits::DEFAULT_MAX_NESTING_DEPTH,
            lookback_delta: Duration::from_secs(300),
            max_samples: 50_000_000,
            tenant_header: "THANOS-TENANT".into(),
            enforce_tenancy: false,
            tenant_matcher_conflict: crate::tenancy::ConflictMode::Error,
            default_tenant: "default-tenant".into(),
            tenant_certificate_field: String::new(),
            tenant_label_name: "tenant_id".into(),
            info_interval: Duration::from_secs(5),
            store_response_timeout: Duration::ZERO,
            grpc_client_tls: Default::default(),
            grpc_tls: Default::default(),
            http_config: Default::default(),
            auto_downsampling: false,
            flag_values: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: QueryArgs,
    }

    #[test]
    fn defaults_are_thanos_defaults() {
        let a = Cli::parse_from(["q"]).args;
        assert_eq!(a.http_address, "0.0.0.0:10902");
        assert_eq!(a.grpc_address, "0.0.0.0:10901");
        assert!(a.partial_response);
        assert_eq!(a.timeout, Duration::from_secs(120));
        assert_eq!(a.max_concurrent, 20);
        assert_eq!(a.lookback_delta, Duration::from_secs(300));
        assert_eq!(a.tenant_header, "THANOS-TENANT");
        assert_eq!(a.max_query_length, 1 << 20);
        assert_eq!(a.max_nesting_depth, 10_000);
        let b = QueryArgs::with_endpoints("a:1", Vec::new());
        assert_eq!(
            (b.max_query_length, b.max_nesting_depth, b.max_concurrent),
            (a.max_query_length, a.max_nesting_depth, a.max_concurrent)
        );
    }

    #[test]
    fn repeatable_flags() {
        let a = Cli::parse_from([
            "q",
            "--endpoint",
            "a:1",
            "--endpoint=dns+b:2",
            "--query.replica-label",
            "replica",
            "--query.replica-label=receive_replica,rule_replica",
            "--query.partial-response=false",
            "--query.timeout=30s",
        ])
        .args;
        assert_eq!(a.endpoints, vec!["a:1", "dns+b:2"]);
        assert_eq!(
            a.replica_labels,
            vec!["replica", "receive_replica", "rule_replica"]
        );
        assert!(!a.partial_response);
        assert_eq!(a.timeout, Duration::from_secs(30));
    }
}
