//! [`Bucket`]: the operations Thanos's components need from object storage (get, range
//! get, upload, exists, attributes, iterate, delete), built on the `object_store` crate
//! for every provider, with Thanos's bucket metrics.
//!
//! Retries with exponential backoff and request timeouts are `object_store`'s
//! (`RetryConfig`, `ClientOptions`), configured from the Thanos keys (`max_retries`,
//! `http_config`). Large files are uploaded in parts (`part_size`, Thanos's default
//! 64 MiB) with at most two parts in flight, so memory stays bounded by the part size.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::prefix::PrefixStore;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, RetryConfig, WriteMultipart,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{BucketConfig, HttpConfig, Provider};

/// Thanos's default multipart part size (64 MiB).
pub const DEFAULT_PART_SIZE: u64 = 64 << 20;

/// Why a bucket operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("bucket {bucket}: object {key} not found")]
    NotFound { bucket: String, key: String },
    #[error("bucket {bucket}: {op} {key}: {source}")]
    Op {
        bucket: String,
        op: &'static str,
        key: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("bucket {bucket}: local file {path}: {source}")]
    Local {
        bucket: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid object key {key:?}: {reason}")]
    Key { key: String, reason: String },
    #[error("setting up the {kind} bucket: {reason}")]
    Setup { kind: &'static str, reason: String },
    /// The startup check failed: the bucket is unreachable, missing, or refuses the
    /// credentials. `desc` names the provider, bucket and endpoint.
    #[error("{desc}: {reason}")]
    Unreachable { desc: String, reason: String },
}

impl BucketError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, BucketError::NotFound { .. })
    }
}

/// Size, modification time and entity tag of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectAttributes {
    pub size: u64,
    pub last_modified: DateTime<Utc>,
    /// The provider's entity tag, when it gives one: tells a replaced object apart
    /// even within the same second (`last_modified` has second precision on S3).
    pub e_tag: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OpLabels {
    bucket: String,
    operation: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BucketLabel {
    bucket: String,
}

type HistogramFamily = Family<OpLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // Thanos: 0.001s … 120s.
    Histogram::new(exponential_buckets(0.001, 2.5, 14))
}

/// Thanos's bucket metrics (`thanos-io/objstore` `objstore.go`), names unchanged so
/// existing dashboards work.
#[derive(Debug, Clone)]
pub struct BucketMetrics {
    ops: Family<OpLabels, Counter>,
    failures: Family<OpLabels, Counter>,
    duration: HistogramFamily,
    fetched_bytes: Family<OpLabels, Counter>,
    last_upload: Family<BucketLabel, Gauge>,
    reachable: Family<BucketLabel, Gauge>,
}

impl Default for BucketMetrics {
    fn default() -> Self {
        BucketMetrics {
            ops: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            fetched_bytes: Family::default(),
            last_upload: Family::default(),
            reachable: Family::default(),
        }
    }
}

impl BucketMetrics {
    /// Registers the metrics (call once per registry).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "thanos_objstore_bucket_operations",
            "Total number of all attempted operations against a bucket",
            self.ops.clone(),
        );
        r.register(
            "thanos_objstore_bucket_operation_failures",
            "Total number of operations against a bucket that failed, but were not expected to fail in certain way from caller perspective",
            self.failures.clone(),
        );
        r.register(
            "thanos_objstore_bucket_operation_duration_seconds",
            "Duration of successful operations against the bucket per operation",
            self.duration.clone(),
        );
        r.register(
            "thanos_objstore_bucket_operation_fetched_bytes",
            "Total number of bytes fetched from bucket, per operation",
            self.fetched_bytes.clone(),
        );
        r.register(
            "thanos_objstore_bucket_last_successful_upload_time",
            "Second timestamp of the last successful upload to the bucket",
            self.last_upload.clone(),
        );
        r.register(
            "orrery_objstore_bucket_reachable",
            "1 when the last startup check of the bucket succeeded (reachable, credentials accepted), 0 when it failed",
            self.reachable.clone(),
        );
    }
}

/// A bucket. Cheap to clone; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    /// The same store without retries and with short timeouts, for [`Bucket::check`].
    probe: Arc<dyn ObjectStore>,
    /// Provider, bucket and endpoint, for error messages.
    desc: String,
    name: String,
    metrics: BucketMetrics,
    part_size: u64,
    multipart: bool,
}

impl Bucket {
    /// Builds the bucket client for `cfg`. Registers the bucket metrics in `registry`
    /// when given. Makes no request (an unreachable endpoint shows on first use).
    pub fn new(cfg: &BucketConfig, registry: Option<&mut Registry>) -> Result<Bucket, BucketError> {
        let (store, name, part_size, multipart) = build(cfg, false)?;
        let (probe, ..) = build(cfg, true)?;
        let prefixed = |s: Arc<dyn ObjectStore>| -> Arc<dyn ObjectStore> {
            if cfg.prefix.is_empty() {
                s
            } else {
                Arc::new(PrefixStore::new(s, cfg.prefix.as_str()))
            }
        };
        let metrics = BucketMetrics::default();
        if let Some(r) = registry {
            metrics.register(r);
        }
        Ok(Bucket {
            store: prefixed(store),
            probe: prefixed(probe),
            desc: describe(cfg),
            name,
            metrics,
            part_size: part_size.max(1),
            multipart,
        })
    }

    /// Provider, bucket and endpoint (`S3 bucket "b" at http://host:9000`), for messages.
    pub fn describe(&self) -> &str {
        &self.desc
    }

    /// One cheap request (a one-level listing of the top), without retries and within
    /// `timeout`: fails when the endpoint is unreachable, the bucket does not exist or
    /// the credentials are refused, with an error naming the endpoint and bucket. Sets
    /// `orrery_objstore_bucket_reachable`.
    pub async fn check(&self, timeout: Duration) -> Result<(), BucketError> {
        let r = match tokio::time::timeout(timeout, self.probe.list_with_delimiter(None)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(BucketError::Unreachable {
                desc: self.desc.clone(),
                reason: error_chain(&e),
            }),
            Err(_) => Err(BucketError::Unreachable {
                desc: self.desc.clone(),
                reason: format!("no answer within {timeout:?}"),
            }),
        };
        self.metrics
            .reachable
            .get_or_create(&BucketLabel {
                bucket: self.name.clone(),
            })
            .set(i64::from(r.is_ok()));
        r
    }
}

/// An error with its sources (`object_store` puts the useful part — "connection
/// refused", "403 Forbidden" — in the chain).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn describe(cfg: &BucketConfig) -> String {
    match &cfg.provider {
        Provider::S3(c) => {
            let scheme = if c.insecure { "http" } else { "https" };
            format!("S3 bucket {:?} at {scheme}://{}", c.bucket, c.endpoint)
        }
        Provider::Gcs(c) => format!("GCS bucket {:?}", c.bucket),
        Provider::Azure(c) => format!(
            "AZURE container {:?} of storage account {:?}",
            c.container, c.storage_account
        ),
        Provider::Filesystem(c) => format!("FILESYSTEM bucket at {}", c.directory),
    }
}

/// The `object_store` client for `cfg` with its name, part size and whether multipart
/// uploads are on. `probe`: no retries and short timeouts (the startup check).
#[allow(clippy::type_complexity)]
fn build(
    cfg: &BucketConfig,
    probe: bool,
) -> Result<(Arc<dyn ObjectStore>, String, u64, bool), BucketError> {
    let retry = |n: usize| {
        if probe {
            RetryConfig {
                max_retries: 0,
                retry_timeout: Duration::from_secs(5),
                ..RetryConfig::default()
            }
        } else {
            retry(n)
        }
    };
    let client_options = |kind: &'static str, h: &HttpConfig| {
        client_options(kind, h).map(|o| {
            if probe {
                o.with_timeout(Duration::from_secs(10))
                    .with_connect_timeout(Duration::from_secs(5))
            } else {
                o
            }
        })
    };
    {
        let kind = cfg.provider.kind();
        let setup = |e: object_store::Error| BucketError::Setup {
            kind,
            reason: e.to_string(),
        };
        let (store, name, part_size, multipart): (Arc<dyn ObjectStore>, String, u64, bool) =
            match &cfg.provider {
                Provider::Filesystem(c) => {
                    std::fs::create_dir_all(&c.directory).map_err(|e| BucketError::Setup {
                        kind,
                        reason: format!("creating directory {}: {e}", c.directory),
                    })?;
                    let fs = LocalFileSystem::new_with_prefix(&c.directory)
                        .map_err(setup)?
                        .with_automatic_cleanup(true)
                        .with_fsync(true);
                    (Arc::new(fs), c.directory.clone(), DEFAULT_PART_SIZE, true)
                }
                Provider::S3(c) => {
                    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
                    // Client options first: `with_client_options` replaces them all,
                    // including the `allow_http` that `with_allow_http` sets.
                    let mut b = AmazonS3Builder::from_env()
                        .with_client_options(client_options(kind, &c.http_config)?)
                        .with_retry(retry(c.max_retries))
                        .with_bucket_name(&c.bucket);
                    let aws = c.endpoint.ends_with(".amazonaws.com") && !c.insecure;
                    if !aws {
                        let scheme = if c.insecure { "http" } else { "https" };
                        b = b
                            .with_endpoint(format!("{scheme}://{}", c.endpoint))
                            .with_allow_http(c.insecure);
                    }
                    let region = if !c.region.is_empty() {
                        Some(c.region.clone())
                    } else if b.get_config_value(&AmazonS3ConfigKey::Region).is_some() {
                        None
                    } else {
                        Some(
                            region_from_endpoint(&c.endpoint)
                                .unwrap_or("us-east-1")
                                .to_string(),
                        )
                    };
                    if let Some(r) = region {
                        b = b.with_region(r);
                    }
                    if !c.access_key.is_empty() {
                        b = b
                            .with_access_key_id(&c.access_key)
                            .with_secret_access_key(&c.secret_key);
                        if !c.session_token.is_empty() {
                            b = b.with_token(&c.session_token);
                        }
                    }
                    b = b.with_virtual_hosted_style_request(match c.bucket_lookup_type.as_str() {
                        "virtual-hosted" => true,
                        "path" => false,
                        _ => aws,
                    });
                    if c.sse_config.kind == "SSE-KMS" {
                        b = b.with_sse_kms_encryption(&c.sse_config.kms_key_id);
                    }
                    let part = if c.part_size == 0 {
                        DEFAULT_PART_SIZE
                    } else {
                        c.part_size
                    };
                    (
                        Arc::new(b.build().map_err(setup)?),
                        c.bucket.clone(),
                        part,
                        !c.disable_multipart,
                    )
                }
                Provider::Gcs(c) => {
                    use object_store::gcp::GoogleCloudStorageBuilder;
                    let mut b = GoogleCloudStorageBuilder::from_env().with_bucket_name(&c.bucket);
                    if !c.service_account.is_empty() {
                        b = b.with_service_account_key(&c.service_account);
                    }
                    b = b
                        .with_client_options(client_options(kind, &c.http_config)?)
                        .with_retry(retry(c.max_retries));
                    let part = if c.chunk_size_bytes == 0 {
                        DEFAULT_PART_SIZE
                    } else {
                        c.chunk_size_bytes
                    };
                    (
                        Arc::new(b.build().map_err(setup)?),
                        c.bucket.clone(),
                        part,
                        true,
                    )
                }
                Provider::Azure(c) => {
                    use object_store::azure::MicrosoftAzureBuilder;
                    let mut b = MicrosoftAzureBuilder::from_env()
                        .with_account(&c.storage_account)
                        .with_container_name(&c.container);
                    if !c.storage_account_key.is_empty() {
                        b = b.with_access_key(&c.storage_account_key);
                    } else if !c.client_id.is_empty() && !c.client_secret.is_empty() {
                        b = b.with_client_secret_authorization(
                            &c.client_id,
                            &c.client_secret,
                            &c.az_tenant_id,
                        );
                    } else if !c.user_assigned_id.is_empty() {
                        b = b.with_client_id(&c.user_assigned_id);
                    }
                    if !c.endpoint.is_empty() && c.endpoint != "blob.core.windows.net" {
                        b = b
                            .with_endpoint(format!("https://{}.{}", c.storage_account, c.endpoint));
                    }
                    b = b
                        .with_client_options(client_options(kind, &c.http_config)?)
                        .with_retry(retry(c.max_retries));
                    (
                        Arc::new(b.build().map_err(setup)?),
                        c.container.clone(),
                        DEFAULT_PART_SIZE,
                        true,
                    )
                }
            };
        Ok((store, name, part_size, multipart))
    }
}

impl Bucket {
    /// The bucket's name (the `bucket` label of its metrics).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn labels(&self, operation: &'static str) -> OpLabels {
        OpLabels {
            bucket: self.name.clone(),
            operation,
        }
    }

    /// Counts and times one operation; `NotFound` is an expected answer, not a failure.
    async fn observe<T>(
        &self,
        operation: &'static str,
        fut: impl std::future::Future<Output = Result<T, BucketError>>,
    ) -> Result<T, BucketError> {
        let l = self.labels(operation);
        self.metrics.ops.get_or_create(&l).inc();
        let start = Instant::now();
        let r = fut.await;
        match &r {
            Ok(_) => self
                .metrics
                .duration
                .get_or_create(&l)
                .observe(start.elapsed().as_secs_f64()),
            Err(e) if e.is_not_found() => {}
            Err(_) => {
                self.metrics.failures.get_or_create(&l).inc();
            }
        }
        r
    }

    fn path(&self, key: &str) -> Result<ObjPath, BucketError> {
        ObjPath::parse(key).map_err(|e| BucketError::Key {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }

    fn op_err(&self, op: &'static str, key: &str, e: object_store::Error) -> BucketError {
        match e {
            object_store::Error::NotFound { .. } => BucketError::NotFound {
                bucket: self.name.clone(),
                key: key.to_string(),
            },
            source => BucketError::Op {
                bucket: self.name.clone(),
                op,
                key: key.to_string(),
                source: Box::new(source),
            },
        }
    }

    fn local_err(&self, path: &Path, source: std::io::Error) -> BucketError {
        BucketError::Local {
            bucket: self.name.clone(),
            path: path.to_path_buf(),
            source,
        }
    }

    /// The whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes, BucketError> {
        self.observe("get", async {
            let p = self.path(key)?;
            let r = self
                .store
                .get(&p)
                .await
                .map_err(|e| self.op_err("get", key, e))?;
            let b = r.bytes().await.map_err(|e| self.op_err("get", key, e))?;
            self.fetched("get", b.len());
            Ok(b)
        })
        .await
    }

    /// `len` bytes from `offset` (`None`: to the end).
    pub async fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<Bytes, BucketError> {
        self.observe("get_range", async {
            let p = self.path(key)?;
            let range = match len {
                Some(n) => GetRange::Bounded(offset..offset.saturating_add(n)),
                None => GetRange::Offset(offset),
            };
            let opts = GetOptions {
                range: Some(range),
                ..GetOptions::default()
            };
            let r = self
                .store
                .get_opts(&p, opts)
                .await
                .map_err(|e| self.op_err("get_range", key, e))?;
            let b = r
                .bytes()
                .await
                .map_err(|e| self.op_err("get_range", key, e))?;
            self.fetched("get_range", b.len());
            Ok(b)
        })
        .await
    }

    fn fetched(&self, op: &'static str, n: usize) {
        self.metrics
            .fetched_bytes
            .get_or_create(&self.labels(op))
            .inc_by(n as u64);
    }

    /// Whether the object exists (a HEAD request).
    pub async fn exists(&self, key: &str) -> Result<bool, BucketError> {
        self.observe("exists", async {
            let p = self.path(key)?;
            match self.store.head(&p).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(self.op_err("exists", key, e)),
            }
        })
        .await
    }

    /// Size, modification time and entity tag (a HEAD request).
    pub async fn attributes(&self, key: &str) -> Result<ObjectAttributes, BucketError> {
        self.observe("attributes", async {
            let p = self.path(key)?;
            let m = self
                .store
                .head(&p)
                .await
                .map_err(|e| self.op_err("attributes", key, e))?;
            Ok(ObjectAttributes {
                size: m.size,
                last_modified: m.last_modified,
                e_tag: m.e_tag,
            })
        })
        .await
    }

    /// Writes `data` as one object (replacing any existing one).
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), BucketError> {
        self.observe("upload", async {
            let p = self.path(key)?;
            self.store
                .put(&p, data.into())
                .await
                .map_err(|e| self.op_err("upload", key, e))?;
            self.uploaded();
            Ok(())
        })
        .await
    }

    fn uploaded(&self) {
        crate::crashpoint::bucket_write_done();
        self.metrics
            .last_upload
            .get_or_create(&BucketLabel {
                bucket: self.name.clone(),
            })
            .set(Utc::now().timestamp());
    }

    /// Uploads a local file; files larger than the part size go up in parts. Returns the
    /// number of bytes uploaded.
    pub async fn upload_file(&self, key: &str, path: &Path) -> Result<u64, BucketError> {
        self.observe("upload", async {
            let p = self.path(key)?;
            let len = tokio::fs::metadata(path)
                .await
                .map_err(|e| self.local_err(path, e))?
                .len();
            if !self.multipart || len <= self.part_size {
                let data = tokio::fs::read(path)
                    .await
                    .map_err(|e| self.local_err(path, e))?;
                let n = data.len() as u64;
                self.store
                    .put(&p, Bytes::from(data).into())
                    .await
                    .map_err(|e| self.op_err("upload", key, e))?;
                self.uploaded();
                return Ok(n);
            }
            let upload = self
                .store
                .put_multipart(&p)
                .await
                .map_err(|e| self.op_err("upload", key, e))?;
            let part = usize::try_from(self.part_size).unwrap_or(usize::MAX);
            let mut w = WriteMultipart::new_with_chunk_size(upload, part);
            let mut f = tokio::fs::File::open(path)
                .await
                .map_err(|e| self.local_err(path, e))?;
            let mut n = 0u64;
            let mut buf = vec![0u8; part.min(8 << 20)];
            loop {
                let read = match f.read(&mut buf).await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = w.abort().await;
                        return Err(self.local_err(path, e));
                    }
                };
                if read == 0 {
                    break;
                }
                // At most two parts in flight: memory stays ~3 × part size.
                if let Err(e) = w.wait_for_capacity(2).await {
                    let _ = w.abort().await;
                    return Err(self.op_err("upload", key, e));
                }
                w.write(&buf[..read]);
                n += read as u64;
            }
            w.finish()
                .await
                .map_err(|e| self.op_err("upload", key, e))?;
            self.uploaded();
            Ok(n)
        })
        .await
    }

    /// Downloads an object into a local file (created or truncated).
    pub async fn download_file(&self, key: &str, dst: &Path) -> Result<u64, BucketError> {
        self.observe("get", async {
            let p = self.path(key)?;
            let r = self
                .store
                .get(&p)
                .await
                .map_err(|e| self.op_err("get", key, e))?;
            let mut f = tokio::fs::File::create(dst)
                .await
                .map_err(|e| self.local_err(dst, e))?;
            let mut stream = r.into_stream();
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.op_err("get", key, e))?;
                f.write_all(&chunk)
                    .await
                    .map_err(|e| self.local_err(dst, e))?;
                n += chunk.len() as u64;
            }
            f.sync_all().await.map_err(|e| self.local_err(dst, e))?;
            self.fetched("get", usize::try_from(n).unwrap_or(usize::MAX));
            Ok(n)
        })
        .await
    }

    /// Streams the whole object through `f`, piece by piece as it arrives (nothing is
    /// kept: for hashing objects larger than memory). Returns its size.
    pub async fn get_each(
        &self,
        key: &str,
        mut f: impl FnMut(&[u8]) + Send,
    ) -> Result<u64, BucketError> {
        self.observe("get", async {
            let p = self.path(key)?;
            let r = self
                .store
                .get(&p)
                .await
                .map_err(|e| self.op_err("get", key, e))?;
            let mut stream = r.into_stream();
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.op_err("get", key, e))?;
                f(&chunk);
                n += chunk.len() as u64;
            }
            self.fetched("get", usize::try_from(n).unwrap_or(usize::MAX));
            Ok(n)
        })
        .await
    }

    /// The entries directly under `dir` (`""`: the top level), as Thanos's `Iter`:
    /// full keys, "directories" with a trailing `/`, sorted.
    pub async fn iter(&self, dir: &str) -> Result<Vec<String>, BucketError> {
        self.observe("iter", async {
            let dir = dir.trim_end_matches('/');
            let prefix = if dir.is_empty() {
                None
            } else {
                Some(self.path(dir)?)
            };
            let r = self
                .store
                .list_with_delimiter(prefix.as_ref())
                .await
                .map_err(|e| self.op_err("iter", dir, e))?;
            let mut out: Vec<String> = r
                .common_prefixes
                .iter()
                .map(|p| format!("{p}/"))
                .chain(r.objects.iter().map(|o| o.location.to_string()))
                .collect();
            out.sort();
            Ok(out)
        })
        .await
    }

    /// Every object under `dir` (recursive) with its attributes, sorted by key.
    pub async fn list_recursive(
        &self,
        dir: &str,
    ) -> Result<Vec<(String, ObjectAttributes)>, BucketError> {
        self.observe("iter", async {
            let dir = dir.trim_end_matches('/');
            let prefix = if dir.is_empty() {
                None
            } else {
                Some(self.path(dir)?)
            };
            let mut s = self.store.list(prefix.as_ref());
            let mut out = Vec::new();
            while let Some(m) = s.next().await {
                let m = m.map_err(|e| self.op_err("iter", dir, e))?;
                out.push((
                    m.location.to_string(),
                    ObjectAttributes {
                        size: m.size,
                        last_modified: m.last_modified,
                        e_tag: m.e_tag,
                    },
                ));
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(out)
        })
        .await
    }

    /// Deletes an object (a missing one is not an error).
    pub async fn delete(&self, key: &str) -> Result<(), BucketError> {
        self.observe("delete", async {
            let p = self.path(key)?;
            match self.store.delete(&p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    crate::crashpoint::bucket_write_done();
                    Ok(())
                }
                Err(e) => Err(self.op_err("delete", key, e)),
            }
        })
        .await
    }
}

/// `s3.<region>.amazonaws.com` / `s3-<region>.amazonaws.com` → region.
fn region_from_endpoint(endpoint: &str) -> Option<&str> {
    let host = endpoint.split(':').next()?;
    let rest = host.strip_suffix(".amazonaws.com")?;
    let r = rest
        .strip_prefix("s3.")
        .or_else(|| rest.strip_prefix("s3-"))?;
    let r = r.strip_prefix("dualstack.").unwrap_or(r);
    (!r.is_empty() && !r.contains('.')).then_some(r)
}

fn retry(max_retries: usize) -> RetryConfig {
    let mut r = RetryConfig::default();
    if max_retries > 0 {
        r.max_retries = max_retries;
    }
    r
}

/// Thanos's `http_config` as `object_store` client options. The response-header
/// timeout (default 2m) bounds each request; the TLS handshake timeout (10s) bounds
/// connecting.
fn client_options(kind: &'static str, h: &HttpConfig) -> Result<ClientOptions, BucketError> {
    let mut o = ClientOptions::new()
        .with_timeout(
            HttpConfig::duration(&h.response_header_timeout).unwrap_or(Duration::from_secs(120)),
        )
        .with_connect_timeout(
            HttpConfig::duration(&h.tls_handshake_timeout).unwrap_or(Duration::from_secs(10)),
        )
        .with_pool_idle_timeout(
            HttpConfig::duration(&h.idle_conn_timeout).unwrap_or(Duration::from_secs(90)),
        );
    if let Some(n) = h.max_idle_conns_per_host {
        o = o.with_pool_max_idle_per_host(usize::try_from(n).unwrap_or(usize::MAX));
    }
    if h.insecure_skip_verify || h.tls_config.insecure_skip_verify {
        o = o.with_allow_invalid_certificates(true);
    }
    if !h.tls_config.ca_file.is_empty() {
        let pem = std::fs::read(&h.tls_config.ca_file).map_err(|e| BucketError::Setup {
            kind,
            reason: format!(
                "reading http_config.tls_config.ca_file {}: {e}",
                h.tls_config.ca_file
            ),
        })?;
        let certs =
            object_store::Certificate::from_pem_bundle(&pem).map_err(|e| BucketError::Setup {
                kind,
                reason: format!(
                    "http_config.tls_config.ca_file {}: {e}",
                    h.tls_config.ca_file
                ),
            })?;
        for c in certs {
            o = o.with_root_certificate(c);
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs_bucket(dir: &Path, part: u64) -> Bucket {
        let mut b = Bucket::new(&BucketConfig::filesystem(dir), None).unwrap();
        b.part_size = part;
        b
    }

    #[tokio::test]
    async fn check_names_an_unreachable_endpoint_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::default();
        assert!(
            fs_bucket(dir.path(), DEFAULT_PART_SIZE)
                .check(Duration::from_secs(5))
                .await
                .is_ok()
        );
        // A port that was just free: connection refused, no retries.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = BucketConfig::parse(&format!(
            "type: S3\nconfig:\n  bucket: nowhere\n  endpoint: 127.0.0.1:{port}\n  insecure: true\n  access_key: a\n  secret_key: b\n"
        ))
        .unwrap();
        let b = Bucket::new(&cfg, Some(&mut r)).unwrap();
        let t0 = Instant::now();
        let e = b
            .check(Duration::from_secs(10))
            .await
            .unwrap_err()
            .to_string();
        assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
        assert!(
            e.contains(&format!("S3 bucket \"nowhere\" at http://127.0.0.1:{port}")),
            "{e}"
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(
            text.contains("orrery_objstore_bucket_reachable{bucket=\"nowhere\"} 0"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn filesystem_bucket_is_a_plain_directory_tree() {
        let dir = tempfile::tempdir().unwrap();
        let b = fs_bucket(dir.path(), DEFAULT_PART_SIZE);
        b.put("01ABC/meta.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        b.put("01ABC/chunks/000001", Bytes::from_static(b"0123456789"))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("01ABC/chunks/000001")).unwrap(),
            b"0123456789"
        );
        assert!(b.exists("01ABC/meta.json").await.unwrap());
        assert!(!b.exists("01ABC/index").await.unwrap());
        assert_eq!(b.attributes("01ABC/chunks/000001").await.unwrap().size, 10);
        assert_eq!(
            b.get_range("01ABC/chunks/000001", 3, Some(4))
                .await
                .unwrap(),
            Bytes::from_static(b"3456")
        );
        assert_eq!(
            b.get_range("01ABC/chunks/000001", 8, None).await.unwrap(),
            Bytes::from_static(b"89")
        );
        assert_eq!(b.iter("").await.unwrap(), vec!["01ABC/".to_string()]);
        assert_eq!(
            b.iter("01ABC").await.unwrap(),
            vec!["01ABC/chunks/".to_string(), "01ABC/meta.json".to_string()]
        );
        let all = b.list_recursive("").await.unwrap();
        assert_eq!(all.len(), 2);
        let e = b.get("nope").await.unwrap_err();
        assert!(e.is_not_found(), "{e}");
        b.delete("01ABC/meta.json").await.unwrap();
        b.delete("01ABC/meta.json").await.unwrap();
        assert!(!b.exists("01ABC/meta.json").await.unwrap());
    }

    #[tokio::test]
    async fn large_files_go_up_in_parts_and_come_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let f = src.path().join("big");
        std::fs::write(&f, &data).unwrap();
        let b = fs_bucket(dir.path(), 4096);
        assert_eq!(b.upload_file("x/big", &f).await.unwrap(), data.len() as u64);
        assert_eq!(std::fs::read(dir.path().join("x/big")).unwrap(), data);
        let back = src.path().join("back");
        assert_eq!(
            b.download_file("x/big", &back).await.unwrap(),
            data.len() as u64
        );
        assert_eq!(std::fs::read(&back).unwrap(), data);
        let e = b
            .upload_file("x/missing", &src.path().join("missing"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[tokio::test]
    async fn prefix_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = BucketConfig::filesystem(dir.path());
        cfg.prefix = "pre/fix".into();
        let mut reg = Registry::default();
        let b = Bucket::new(&cfg, Some(&mut reg)).unwrap();
        b.put("k", Bytes::from_static(b"v")).await.unwrap();
        assert!(dir.path().join("pre/fix/k").is_file());
        assert_eq!(b.iter("").await.unwrap(), vec!["k".to_string()]);
        assert!(b.get("absent").await.is_err());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(
            text.contains("thanos_objstore_bucket_operations_total{bucket=")
                && text.contains("operation=\"upload\"} 1"),
            "{text}"
        );
        // A missing object is an expected answer, not a failure.
        assert!(
            !text.contains("thanos_objstore_bucket_operation_failures_total{"),
            "{text}"
        );
        assert!(text.contains("thanos_objstore_bucket_operation_duration_seconds_bucket"));
    }

    #[test]
    fn aws_regions_from_endpoints() {
        assert_eq!(
            region_from_endpoint("s3.eu-west-1.amazonaws.com"),
            Some("eu-west-1")
        );
        assert_eq!(
            region_from_endpoint("s3-us-west-2.amazonaws.com"),
            Some("us-west-2")
        );
        assert_eq!(region_from_endpoint("s3.amazonaws.com"), None);
        assert_eq!(region_from_endpoint("127.0.0.1:9000"), None);
    }
}
