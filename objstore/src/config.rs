//! Thanos's objstore configuration (`--objstore.config-file` / `--objstore.config`):
//!
//! ```yaml
//! type: S3            # S3 | GCS | AZURE | FILESYSTEM (any case)
//! config:
//!   bucket: thanos
//!   endpoint: s3.eu-west-1.amazonaws.com
//! prefix: ""          # optional: every key becomes <prefix>/<key>
//! ```
//!
//! Keys are Thanos's (`thanos-io/objstore` `providers/*`), parsed strictly as Thanos
//! does (`yaml.UnmarshalStrict`): an unknown key is an error that names it, so a typo
//! never silently falls back to a default. Keys Thanos accepts but that have no
//! equivalent here are refused when set to a non-default value, naming the key, rather
//! than being ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why an objstore configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading objstore config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--objstore.config and --objstore.config-file are mutually exclusive")]
    BothFlags,
    #[error("objstore config is not valid YAML: {0}")]
    Yaml(String),
    #[error("objstore config: missing `type` (one of S3, GCS, AZURE, FILESYSTEM)")]
    MissingType,
    #[error("objstore config: unsupported type {0:?} (supported: S3, GCS, AZURE, FILESYSTEM)")]
    UnsupportedType(String),
    #[error("objstore config ({kind}): {reason}")]
    Invalid { kind: &'static str, reason: String },
    #[error("objstore config ({kind}): missing `config.{key}`")]
    Missing {
        kind: &'static str,
        key: &'static str,
    },
    #[error("objstore config ({kind}): `config.{key}` is not supported by Orrery yet{hint}")]
    Unsupported {
        kind: &'static str,
        key: &'static str,
        hint: &'static str,
    },
    #[error(
        "objstore config ({kind}): `config.{key}`: invalid duration {value:?} (e.g. 90s, 1m30s)"
    )]
    Duration {
        kind: &'static str,
        key: &'static str,
        value: String,
    },
}

/// A parsed bucket configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketConfig {
    pub provider: Provider,
    /// Every object key is `<prefix>/<key>` (no leading/trailing `/`); empty: none.
    pub prefix: String,
}

/// The provider and its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum Provider {
    S3(S3Config),
    Gcs(GcsConfig),
    Azure(AzureConfig),
    Filesystem(FilesystemConfig),
}

impl Provider {
    /// Thanos's name of the provider type.
    pub fn kind(&self) -> &'static str {
        match self {
            Provider::S3(_) => "S3",
            Provider::Gcs(_) => "GCS",
            Provider::Azure(_) => "AZURE",
            Provider::Filesystem(_) => "FILESYSTEM",
        }
    }
}

/// The top level of the YAML document; `config` is decoded per type afterwards so its
/// errors can name the provider.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    config: Option<serde_json::Value>,
    #[serde(default)]
    prefix: Option<String>,
}

/// `http_config` of the HTTP-based providers (Thanos's `exthttp.HTTPConfig`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub idle_conn_timeout: Option<String>,
    pub response_header_timeout: Option<String>,
    pub insecure_skip_verify: bool,
    pub tls_handshake_timeout: Option<String>,
    pub expect_continue_timeout: Option<String>,
    pub max_idle_conns: Option<u64>,
    pub max_idle_conns_per_host: Option<u64>,
    pub max_conns_per_host: Option<u64>,
    pub disable_compression: bool,
    pub tls_config: TlsConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
    pub server_name: String,
    pub insecure_skip_verify: bool,
}

/// S3 and S3-compatible servers (`providers/s3`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    pub bucket: String,
    /// `host[:port]`, no scheme (Thanos); required.
    pub endpoint: String,
    pub region: String,
    pub disable_dualstack: bool,
    /// Use the AWS SDK's credential chain: here the environment / instance metadata,
    /// which is also what happens when `access_key` is empty.
    pub aws_sdk_auth: bool,
    pub access_key: String,
    pub secret_key: String,
    pub session_token: String,
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    pub signature_version2: bool,
    pub put_user_metadata: BTreeMap<String, String>,
    pub http_config: HttpConfig,
    pub trace: TraceConfig,
    pub list_objects_version: String,
    /// `auto` | `virtual-hosted` | `path`.
    pub bucket_lookup_type: String,
    pub send_content_md5: Option<bool>,
    pub disable_multipart: bool,
    /// Multipart part size in bytes (Thanos default 64 MiB).
    pub part_size: u64,
    pub sse_config: SseConfig,
    pub sts_endpoint: String,
    /// 0: the client's default (10).
    pub max_retries: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceConfig {
    pub enable: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseConfig {
    #[serde(rename = "type")]
    pub kind: String,
    pub kms_key_id: String,
    pub kms_encryption_context: BTreeMap<String, String>,
    pub encryption_key: String,
}

/// Google Cloud Storage (`providers/gcs`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcsConfig {
    pub bucket: String,
    /// The service account JSON itself (not a path); empty: application default
    /// credentials from the environment.
    pub service_account: String,
    pub use_grpc: bool,
    pub grpc_conn_pool_size: u64,
    pub http_config: HttpConfig,
    pub chunk_size_bytes: u64,
    pub max_retries: usize,
}

/// Azure Blob Storage (`providers/azure`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AzureConfig {
    pub storage_account: String,
    pub storage_account_key: String,
    pub storage_connection_string: String,
    pub container: String,
    /// Blob service suffix, default `blob.core.windows.net`.
    pub endpoint: String,
    pub storage_create_container: bool,
    pub az_tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub user_assigned_id: String,
    pub msi_resource: String,
    pub max_retries: usize,
    pub reader_config: serde_json::Value,
    pub pipeline_config: serde_json::Value,
    pub http_config: HttpConfig,
}

/// A plain directory tree: `<directory>/<key>` (Thanos's FILESYSTEM).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesystemConfig {
    pub directory: String,
}

impl BucketConfig {
    /// A FILESYSTEM bucket in `dir` (the standalone default).
    pub fn filesystem(dir: &Path) -> BucketConfig {
        BucketConfig {
            provider: Provider::Filesystem(FilesystemConfig {
                directory: dir.display().to_string(),
            }),
            prefix: String::new(),
        }
    }

    /// The configuration from `--objstore.config-file` or `--objstore.config`; `None`
    /// when neither is given (no bucket: nothing is shipped).
    pub fn from_flags(
        file: Option<&Path>,
        inline: Option<&str>,
    ) -> Result<Option<BucketConfig>, ConfigError> {
        match (file, inline) {
            (Some(_), Some(_)) => Err(ConfigError::BothFlags),
            (None, None) => Ok(None),
            (None, Some(text)) => BucketConfig::parse(text).map(Some),
            (Some(path), None) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                BucketConfig::parse(&text).map(Some)
            }
        }
    }

    /// Parses the YAML text (the first document).
    pub fn parse(text: &str) -> Result<BucketConfig, ConfigError> {
        let raw: RawConfig =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        let kind = raw.kind.ok_or(ConfigError::MissingType)?;
        let config = raw
            .config
            .filter(|v| !v.is_null())
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
        let prefix = raw.prefix.unwrap_or_default().trim_matches('/').to_string();
        let provider = match kind.to_ascii_uppercase().as_str() {
            "S3" => Provider::S3(decode("S3", config)?),
            "GCS" => Provider::Gcs(decode("GCS", config)?),
            "AZURE" => Provider::Azure(decode("AZURE", config)?),
            "FILESYSTEM" => Provider::Filesystem(decode("FILESYSTEM", config)?),
            _ => return Err(ConfigError::UnsupportedType(kind)),
        };
        let cfg = BucketConfig { provider, prefix };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Required keys, and keys set to something Orrery cannot do.
    fn validate(&self) -> Result<(), ConfigError> {
        let unsupported = |kind, key, hint| Err(ConfigError::Unsupported { kind, key, hint });
        match &self.provider {
            Provider::S3(c) => {
                if c.bucket.is_empty() {
                    return Err(ConfigError::Missing {
                        kind: "S3",
                        key: "bucket",
                    });
                }
                if c.endpoint.is_empty() {
                    return Err(ConfigError::Missing {
                        kind: "S3",
                        key: "endpoint",
                    });
                }
                if c.endpoint.contains("://") {
                    return Err(ConfigError::Invalid {
                        kind: "S3",
                        reason: format!(
                            "`config.endpoint` {:?} must be host[:port] without a scheme (set `insecure: true` for plain HTTP)",
                            c.endpoint
                        ),
                    });
                }
                if c.access_key.is_empty() != c.secret_key.is_empty() {
                    return Err(ConfigError::Invalid {
                        kind: "S3",
                        reason: "`config.access_key` and `config.secret_key` must be set together (or neither: credentials from the environment)".into(),
                    });
                }
                if c.signature_version2 {
                    return unsupported("S3", "signature_version2", ": only signature v4");
                }
                if !c.put_user_metadata.is_empty() {
                    return unsupported("S3", "put_user_metadata", "");
                }
                if !c.list_objects_version.is_empty() && c.list_objects_version != "v2" {
                    return unsupported("S3", "list_objects_version", ": only v2");
                }
                if !c.sts_endpoint.is_empty() {
                    return unsupported("S3", "sts_endpoint", "");
                }
                if !matches!(
                    c.bucket_lookup_type.as_str(),
                    "" | "auto" | "path" | "virtual-hosted"
                ) {
                    return Err(ConfigError::Invalid {
                        kind: "S3",
                        reason: format!(
                            "`config.bucket_lookup_type` {:?}: expected auto, path or virtual-hosted",
                            c.bucket_lookup_type
                        ),
                    });
                }
                match c.sse_config.kind.as_str() {
                    "" | "SSE-S3" => {}
                    "SSE-KMS" if !c.sse_config.kms_key_id.is_empty() => {
                        if !c.sse_config.kms_encryption_context.is_empty() {
                            return unsupported("S3", "sse_config.kms_encryption_context", "");
                        }
                    }
                    "SSE-KMS" => {
                        return Err(ConfigError::Missing {
                            kind: "S3",
                            key: "sse_config.kms_key_id",
                        });
                    }
                    "SSE-C" => return unsupported("S3", "sse_config.type", ": SSE-C"),
                    other => {
                        return Err(ConfigError::Invalid {
                            kind: "S3",
                            reason: format!(
                                "`config.sse_config.type` {other:?}: expected SSE-S3, SSE-KMS or SSE-C"
                            ),
                        });
                    }
                }
                check_http("S3", &c.http_config)?;
            }
            Provider::Gcs(c) => {
                if c.bucket.is_empty() {
                    return Err(ConfigError::Missing {
                        kind: "GCS",
                        key: "bucket",
                    });
                }
                if c.use_grpc {
                    return unsupported("GCS", "use_grpc", ": JSON API only");
                }
                check_http("GCS", &c.http_config)?;
            }
            Provider::Azure(c) => {
                if c.storage_account.is_empty() {
                    return Err(ConfigError::Missing {
                        kind: "AZURE",
                        key: "storage_account",
                    });
                }
                if c.container.is_empty() {
                    return Err(ConfigError::Missing {
                        kind: "AZURE",
                        key: "container",
                    });
                }
                if !c.storage_connection_string.is_empty() {
                    return unsupported(
                        "AZURE",
                        "storage_connection_string",
                        ": use storage_account + storage_account_key",
                    );
                }
                if c.storage_create_container {
                    return unsupported("AZURE", "storage_create_container", "");
                }
                if !c.msi_resource.is_empty() {
                    return unsupported("AZURE", "msi_resource", "");
                }
                check_http("AZURE", &c.http_config)?;
            }
            Provider::Filesystem(c) => {
                if c.directory.is_empty() {
                    return Err(ConfigError::Missing {
                        kind: "FILESYSTEM",
                        key: "directory",
                    });
                }
            }
        }
        Ok(())
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    v: serde_json::Value,
) -> Result<T, ConfigError> {
    serde_json::from_value(v).map_err(|e| ConfigError::Invalid {
        kind,
        reason: format!("`config`: {e}"),
    })
}

fn check_http(kind: &'static str, h: &HttpConfig) -> Result<(), ConfigError> {
    for (key, v) in [
        ("http_config.idle_conn_timeout", &h.idle_conn_timeout),
        (
            "http_config.response_header_timeout",
            &h.response_header_timeout,
        ),
        (
            "http_config.tls_handshake_timeout",
            &h.tls_handshake_timeout,
        ),
        (
            "http_config.expect_continue_timeout",
            &h.expect_continue_timeout,
        ),
    ] {
        if let Some(v) = v {
            parse_go_duration(v).ok_or_else(|| ConfigError::Duration {
                kind,
                key,
                value: v.clone(),
            })?;
        }
    }
    if !h.tls_config.cert_file.is_empty() || !h.tls_config.key_file.is_empty() {
        return Err(ConfigError::Unsupported {
            kind,
            key: "http_config.tls_config.cert_file",
            hint: ": client certificates",
        });
    }
    Ok(())
}

impl HttpConfig {
    /// A duration key's value (validated at parse time).
    pub fn duration(v: &Option<String>) -> Option<Duration> {
        v.as_deref().and_then(parse_go_duration)
    }
}

/// Parses a Go `time.Duration` string as Thanos's YAML uses them (`90s`, `1m30s`,
/// `500ms`, `2h`; a bare `0`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .bytes()
            .take_while(|b| !(b.is_ascii_digit() || *b == b'.'))
            .count();
        let secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * secs;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Parses a byte size: a number with an optional unit `B`, `KB`/`KiB`, `MB`/`MiB`,
/// `GB`/`GiB`, `TB`/`TiB` — powers of 1024 either way, as Thanos's size flags
/// (shared by the services' flags).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid size {s:?}: want a number with an optional unit like 250MB")
    })?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "KB" | "KIB" | "K" => 10,
        "MB" | "MIB" | "M" => 20,
        "GB" | "GIB" | "G" => 30,
        "TB" | "TIB" | "T" => 40,
        u => return Err(format!("invalid size {s:?}: unknown unit {u:?}")),
    };
    n.checked_mul(1u64 << shift)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// Parses a Prometheus (model) duration, as Thanos's flags take them: one or more
/// `<n><unit>` with units y w d h m s ms, or `0`.
pub fn parse_model_duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u128 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "invalid duration {s:?}: expected e.g. 15d, 2h, 30s"
            ));
        }
        let n: u128 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let ms: u128 = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "y" => 31_536_000_000,
            _ => return Err(format!("invalid duration {s:?}: unknown unit {unit:?}")),
        };
        total = total
            .checked_add(n.checked_mul(ms).ok_or("duration overflows")?)
            .ok_or("duration overflows")?;
    }
    u64::try_from(total)
        .map(Duration::from_millis)
        .map_err(|_| "duration overflows".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_with_thanos_keys() {
        let c = BucketConfig::parse(
            r#"
type: s3
config:
  bucket: thanos
  endpoint: 127.0.0.1:9000
  region: eu-west-1
  access_key: AK
  secret_key: SK
  insecure: true
  part_size: 5242880
  http_config:
    idle_conn_timeout: 1m30s
    response_header_timeout: 2m
    insecure_skip_verify: true
  sse_config:
    type: SSE-KMS
    kms_key_id: key-1
prefix: /tenant-a/
"#,
        )
        .unwrap();
        assert_eq!(c.prefix, "tenant-a");
        let Provider::S3(s3) = &c.provider else {
            panic!("{c:?}")
        };
        assert_eq!(s3.bucket, "thanos");
        assert!(s3.insecure);
        assert_eq!(s3.part_size, 5 << 20);
        assert_eq!(
            HttpConfig::duration(&s3.http_config.idle_conn_timeout),
            Some(Duration::from_secs(90))
        );
        assert_eq!(s3.sse_config.kms_key_id, "key-1");
    }

    #[test]
    fn errors_name_the_key() {
        let e = |t: &str| BucketConfig::parse(t).unwrap_err().to_string();
        let msg = e("type: S3\nconfig:\n  bucket: b\n  endpoint: e\n  buckett: x\n");
        assert!(msg.contains("buckett") && msg.contains("S3"), "{msg}");
        let msg = e("type: S3\nconfig:\n  endpoint: e\n");
        assert!(msg.contains("config.bucket"), "{msg}");
        let msg = e("type: S3\nconfig:\n  bucket: b\n");
        assert!(msg.contains("config.endpoint"), "{msg}");
        let msg = e("type: S3\nconfig:\n  bucket: b\n  endpoint: http://e\n");
        assert!(msg.contains("without a scheme"), "{msg}");
        let msg = e("type: S3\nconfig:\n  bucket: b\n  endpoint: e\n  access_key: a\n");
        assert!(msg.contains("secret_key"), "{msg}");
        let msg = e("type: S3\nconfig:\n  bucket: b\n  endpoint: e\n  signature_version2: true\n");
        assert!(msg.contains("signature_version2"), "{msg}");
        let msg = e(
            "type: S3\nconfig:\n  bucket: b\n  endpoint: e\n  http_config:\n    idle_conn_timeout: soon\n",
        );
        assert!(msg.contains("http_config.idle_conn_timeout"), "{msg}");
        let msg =
            e("type: S3\nconfig:\n  bucket: b\n  endpoint: e\n  http_config:\n    idle: 1s\n");
        assert!(msg.contains("idle"), "{msg}");
        let msg = e("type: SWIFT\nconfig: {}\n");
        assert!(msg.contains("SWIFT"), "{msg}");
        let msg = e("config:\n  directory: /x\n");
        assert!(msg.contains("type"), "{msg}");
        let msg = e("type: FILESYSTEM\nconfig:\n  directory: /x\nprefixx: a\n");
        assert!(msg.contains("prefixx"), "{msg}");
        let msg = e("type: FILESYSTEM\n");
        assert!(msg.contains("config.directory"), "{msg}");
        let msg = e("type: GCS\nconfig:\n  service_account: '{}'\n");
        assert!(msg.contains("config.bucket"), "{msg}");
        let msg = e("type: AZURE\nconfig:\n  storage_account: a\n");
        assert!(msg.contains("config.container"), "{msg}");
    }

    #[test]
    fn filesystem_gcs_azure_and_flags() {
        let c =
            BucketConfig::parse("type: FILESYSTEM\nconfig:\n  directory: /data/bucket\n").unwrap();
        assert_eq!(c, BucketConfig::filesystem(Path::new("/data/bucket")));
        let c = BucketConfig::parse("type: gcs\nconfig:\n  bucket: b\n").unwrap();
        assert_eq!(c.provider.kind(), "GCS");
        let c = BucketConfig::parse(
            "type: AZURE\nconfig:\n  storage_account: acct\n  storage_account_key: a2V5\n  container: c\n",
        )
        .unwrap();
        assert_eq!(c.provider.kind(), "AZURE");

        assert!(BucketConfig::from_flags(None, None).unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("objstore.yml");
        std::fs::write(&f, "type: FILESYSTEM\nconfig:\n  directory: /b\n").unwrap();
        assert!(BucketConfig::from_flags(Some(&f), None).unwrap().is_some());
        assert!(matches!(
            BucketConfig::from_flags(Some(&f), Some("type: FILESYSTEM")),
            Err(ConfigError::BothFlags)
        ));
        let missing = BucketConfig::from_flags(Some(&dir.path().join("nope.yml")), None)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope.yml"), "{missing}");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        for bad in ["", "s", "10", "1x", "-1s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }
}
