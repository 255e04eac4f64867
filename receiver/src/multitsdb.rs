//! One TSDB per tenant under `<tsdb.path>/<tenant>/`, opened on start (WAL replay) or on
//! a tenant's first write. Each tenant's external labels are the `--label`s plus
//! `<tenant-label-name>=<tenant>`; they live in block `meta.json`, never in series.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::registry::Registry;
use storeapi::{Label, Labels};
use tsdb::{Db, DbError, Options, SyncPolicy};

/// Why a tenant name was refused (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error(transparent)]
    Name(#[from] netsec::identity::TenantNameError),
    #[error("invalid tenant {0:?}: reserved name")]
    Reserved(String),
}

/// The directory mkfs creates at the root of ext4/xfs volumes. A receiver whose
/// `--tsdb.path` is the root of a block volume (a PVC) would otherwise open it as a
/// tenant (thanos-io/thanos#8798); it is never a tenant, read or written.
pub const LOST_AND_FOUND: &str = "lost+found";

pub use netsec::identity::MAX_TENANT_LEN;

/// Validates a tenant name: the strict rule of [`netsec::identity::validate_tenant_name`]
/// (≤ 150 bytes of safe characters, never `.`/`..`), plus names a receiver reserves.
pub fn validate_tenant(t: &str) -> Result<(), TenantError> {
    netsec::identity::validate_tenant_name(t)?;
    if t == LOST_AND_FOUND {
        return Err(TenantError::Reserved(t.to_string()));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum MultiTsdbError {
    #[error(transparent)]
    Tenant(#[from] TenantError),
    #[error("tenant {tenant:?}: {source}")]
    Db {
        tenant: String,
        #[source]
        source: DbError,
    },
    #[error("tenant {tenant:?}: {source}")]
    Metadata {
        tenant: String,
        #[source]
        source: tsdb::metadata::JournalError,
    },
    #[error("too many tenants: the limit is {0}")]
    TooManyTenants(usize),
    /// `--tsdb.path` itself is a Prometheus/Thanos TSDB directory (with `wal/` segments
    /// or `chunks_head/` directly in it), not a directory of tenant TSDBs.
    #[error(
        "{path} is a single TSDB directory (it has {found} directly in it), but --tsdb.path holds one TSDB per tenant in <tsdb.path>/<tenant>/ (Thanos Receive's layout); nothing was changed. Point --tsdb.path at its parent, or move it to <dir>/<tenant>/"
    )]
    NotTenantLayout { path: PathBuf, found: &'static str },
    #[error("reading data directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Settings shared by every tenant's TSDB.
#[derive(Debug, Clone)]
pub struct MultiTsdbConfig {
    pub dir: PathBuf,
    pub external_labels: Labels,
    pub tenant_label_name: String,
    pub block_duration: Duration,
    pub retention: Duration,
    pub wal_sync: SyncPolicy,
    /// Snappy-compress WAL records (`--tsdb.wal-compression`).
    pub wal_compression: bool,
    pub max_tenants: usize,
    /// Samples more than this ahead of the receiver's clock are refused (`None`: off).
    pub too_far_in_future: Option<Duration>,
    /// Where blocks are shipped (`None`: nowhere; they live on local disk only).
    pub bucket: Option<objstore::Bucket>,
    /// `--hash-func`: file hashes in shipped blocks' `meta.json`.
    pub hash_func: objstore::HashFunc,
    /// `--tsdb.max-exemplars`: exemplars kept per tenant (0: exemplars are dropped).
    pub max_exemplars: usize,
    /// `--tsdb.out-of-order.time-window` (zero: off).
    pub ooo_time_window: Duration,
    /// `--tsdb.out-of-order.cap-max`.
    pub ooo_cap_max: usize,
    /// `--tsdb.series-cache-size`: bytes per tenant for finding series by their label
    /// bytes as sent (`tsdb::Options::wire_key_cache_bytes`; 0: off).
    pub wire_key_cache_bytes: usize,
}

/// The tenant's metadata journal, beside its WAL.
pub const METADATA_FILE: &str = "metadata.log";

/// How long one tenant's shipping pass may take before it is abandoned (Thanos: 10m);
/// the next pass starts over.
pub const SHIP_TIMEOUT: Duration = Duration::from_secs(600);

/// One tenant's TSDB with its external labels.
#[derive(Debug)]
pub struct Tenant {
    pub name: String,
    pub db: Db,
    /// `--label`s ∪ `{tenant_label_name=name}`, sorted.
    pub external_labels: Labels,
    /// Uploads this tenant's blocks (with a bucket configured).
    pub shipper: Option<Arc<objstore::Shipper>>,
    /// Metric metadata senders reported for this tenant, kept in `<tenant>/metadata.log`
    /// (synced as the WAL is) so a restart does not empty `/api/v1/metadata` until each
    /// sender's next metadata push.
    pub metadata: tsdb::metadata::MetadataStore,
}

impl Tenant {
    /// The newest `--tsdb.max-exemplars` exemplars of this tenant (logged to its WAL).
    pub fn exemplars(&self) -> &tsdb::exemplars::ExemplarStorage {
        self.db.exemplars()
    }
}

/// All tenants.
pub struct MultiTsdb {
    cfg: MultiTsdbConfig,
    tenants: RwLock<BTreeMap<String, Arc<Tenant>>>,
    registry: Arc<Mutex<Registry>>,
    /// Serializes tenant creation (opening a TSDB does I/O).
    create: Mutex<()>,
}

impl MultiTsdb {
    /// Creates the data directory and opens every existing tenant (replaying WALs).
    pub fn open(
        cfg: MultiTsdbConfig,
        registry: Arc<Mutex<Registry>>,
    ) -> Result<MultiTsdb, MultiTsdbError> {
        check_not_single_tsdb(&cfg.dir)?;
        std::fs::create_dir_all(&cfg.dir).map_err(|source| MultiTsdbError::Io {
            path: cfg.dir.clone(),
            source,
        })?;
        let m = MultiTsdb {
            cfg,
            tenants: RwLock::new(BTreeMap::new()),
            registry,
            create: Mutex::new(()),
        };
        let rd = std::fs::read_dir(&m.cfg.dir).map_err(|source| MultiTsdbError::Io {
            path: m.cfg.dir.clone(),
            source,
        })?;
        let mut names = Vec::new();
        for e in rd {
            let e = e.map_err(|source| MultiTsdbError::Io {
                path: m.cfg.dir.clone(),
                source,
            })?;
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                tracing::warn!(dir = ?e.path(), "skipping data directory with a non-UTF-8 name");
                continue;
            };
            if name == LOST_AND_FOUND {
                continue;
            }
            if validate_tenant(&name).is_err() {
                tracing::warn!(dir = ?e.path(), "skipping data directory that is not a valid tenant name");
                continue;
            }
            names.push(name);
        }
        names.sort();
        // Every tenant's WAL is checked before any is opened: one Orrery cannot read (not
        // Prometheus's format, nor Orrery's first) stops the start with nothing changed
        // anywhere. A Prometheus or Thanos Receive tenant directory is read as it is.
        for name in &names {
            tsdb::wal::ident::check_db_dir(&m.cfg.dir.join(name)).map_err(|e| {
                MultiTsdbError::Db {
                    tenant: name.clone(),
                    source: e.into(),
                }
            })?;
        }
        for name in names {
            let started = std::time::Instant::now();
            let t = m.open_tenant(&name)?;
            tracing::info!(
                tenant = %name,
                head_series = t.db.head_series(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "opened tenant TSDB (WAL replayed)"
            );
        }
        Ok(m)
    }

    pub fn config(&self) -> &MultiTsdbConfig {
        &self.cfg
    }

    fn tenant_external_labels(&self, tenant: &str) -> Labels {
        let mut l = self.cfg.external_labels.clone();
        l.set(&self.cfg.tenant_label_name, tenant);
        l
    }

    fn open_tenant(&self, tenant: &str) -> Result<Arc<Tenant>, MultiTsdbError> {
        validate_tenant(tenant)?;
        let external_labels = self.tenant_external_labels(tenant);
        let ext: BTreeMap<String, String> = external_labels
            .iter()
            .map(|l| (l.name.to_string(), l.value.to_string()))
            .collect();
        let dir = self.cfg.dir.join(tenant);
        let (db, shipper) = {
            let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            let tenant_label = || {
                (
                    std::borrow::Cow::Borrowed("tenant"),
                    std::borrow::Cow::Owned(tenant.to_string()),
                )
            };
            // The shipper first: its "not uploaded yet" set holds blocks back from the
            // retention the TSDB may apply while opening.
            let shipper = self.cfg.bucket.as_ref().map(|b| {
                Arc::new(
                    objstore::Shipper::new(
                        b.clone(),
                        &dir,
                        ext.clone(),
                        "receive",
                        Some(reg.sub_registry_with_label(tenant_label())),
                    )
                    .with_hash_func(self.cfg.hash_func),
                )
            });
            let opts = Options {
                block_duration: self.cfg.block_duration,
                retention: self.cfg.retention,
                wal_sync: self.cfg.wal_sync,
                wal_compression: self.cfg.wal_compression,
                external_labels: Some(ext),
                thanos_source: "receive".into(),
                too_far_in_future: self.cfg.too_far_in_future,
                max_exemplars: self.cfg.max_exemplars,
                ooo_time_window: self.cfg.ooo_time_window,
                ooo_cap_max: self.cfg.ooo_cap_max,
                wire_key_cache_bytes: self.cfg.wire_key_cache_bytes,
                retention_hold: shipper
                    .as_ref()
                    .map(|s| s.retention_hold())
                    .unwrap_or_default(),
                ..Options::default()
            };
            let sub = reg.sub_registry_with_label(tenant_label());
            let db = Db::open(&dir, opts, Some(sub)).map_err(|source| MultiTsdbError::Db {
                tenant: tenant.to_string(),
                source,
            })?;
            (db, shipper)
        };
        let (metadata, loaded) = tsdb::metadata::MetadataStore::open(
            &dir.join(METADATA_FILE),
            Default::default(),
            self.cfg.wal_sync == SyncPolicy::Always,
        )
        .map_err(|source| MultiTsdbError::Metadata {
            tenant: tenant.to_string(),
            source,
        })?;
        if loaded.records > 0 {
            tracing::info!(
                tenant,
                families = loaded.families,
                records = loaded.records,
                refused = loaded.refused,
                "metric metadata loaded"
            );
        }
        let t = Arc::new(Tenant {
            name: tenant.to_string(),
            db,
            external_labels,
            shipper,
            metadata,
        });
        self.tenants
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.to_string(), t.clone());
        Ok(t)
    }

    /// The tenant's TSDB, if it exists.
    pub fn get(&self, tenant: &str) -> Option<Arc<Tenant>> {
        self.tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .cloned()
    }

    /// The tenant's TSDB, created on first use (blocking I/O).
    pub fn get_or_create(&self, tenant: &str) -> Result<Arc<Tenant>, MultiTsdbError> {
        if let Some(t) = self.get(tenant) {
            return Ok(t);
        }
        validate_tenant(tenant)?;
        let _g = self.create.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = self.get(tenant) {
            return Ok(t);
        }
        if self.len() >= self.cfg.max_tenants {
            return Err(MultiTsdbError::TooManyTenants(self.cfg.max_tenants));
        }
        tracing::info!(tenant, "creating tenant TSDB");
        self.open_tenant(tenant)
    }

    /// All tenants, sorted by name.
    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        self.tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.tenants.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Head series per tenant.
    pub fn head_series(&self) -> HashMap<String, usize> {
        self.tenants()
            .iter()
            .map(|t| (t.name.clone(), t.db.head_series()))
            .collect()
    }

    /// Whether some tenant's head is due for a block now (see `tsdb::Db::compactable`).
    pub fn any_compactable(&self) -> bool {
        self.tenants().iter().any(|t| t.db.compactable())
    }

    /// Compaction and retention for every tenant (blocking I/O). Errors are logged.
    /// Returns how many blocks were cut (a reason to ship now).
    pub fn maintain(&self) -> usize {
        let mut cut = 0;
        for t in self.tenants() {
            if let Err(e) = t.db.retry_wal() {
                tracing::warn!(tenant = %t.name, error = %e, "WAL writes still failing");
            }
            match t.db.compact() {
                Ok(blocks) => {
                    for b in blocks {
                        cut += 1;
                        tracing::info!(tenant = %t.name, ulid = %b.ulid, min_time = b.min_time, max_time = b.max_time, "cut block");
                    }
                }
                Err(e) => tracing::error!(tenant = %t.name, error = %e, "compaction failed"),
            }
        }
        if cut > 0 {
            // A block cut truncated a head: its chunks are freed all over the heap, and
            // glibc keeps the pages unless asked (issue #26, see tsdb::heap).
            let released = tsdb::heap::trim();
            tracing::debug!(released, "malloc_trim after head truncation");
        }
        cut
    }

    /// Cuts every tenant's whole head into blocks (shutdown with a bucket: what is not
    /// in a block would otherwise stay on this disk only). Errors are logged.
    pub fn flush_all(&self) -> usize {
        self.tenants()
            .iter()
            .map(|t| self.flush_tenant(&t.name, "shutdown"))
            .sum()
    }

    /// Cuts one tenant's whole head into blocks (blocking I/O), while writes go on (see
    /// `tsdb::Db::flush`). Returns the number of blocks written; errors are logged (the
    /// head stays in the WAL, nothing is lost).
    pub fn flush_tenant(&self, tenant: &str, why: &str) -> usize {
        let Some(t) = self.get(tenant) else { return 0 };
        match t.db.flush() {
            Ok(blocks) => {
                for b in &blocks {
                    tracing::info!(tenant = %t.name, ulid = %b.ulid, min_time = b.min_time, max_time = b.max_time, samples = b.stats.num_samples, why, "cut block from the head");
                }
                blocks.len()
            }
            Err(e) => {
                tracing::error!(tenant = %t.name, error = %e, why, "cutting the head failed; it stays in the WAL");
                0
            }
        }
    }

    /// One shipping pass per tenant (async network I/O; local reads on blocking
    /// threads): never on the ingest path, and a failing bucket only delays uploads.
    /// Failures are logged by the shipper and retried on the next pass.
    pub async fn ship(&self) {
        let names: Vec<String> = self.tenants().iter().map(|t| t.name.clone()).collect();
        self.ship_tenants(&names).await;
    }

    /// A shipping pass for the named tenants; true when every one of them has nothing
    /// left to upload.
    pub async fn ship_tenants(&self, names: &[String]) -> bool {
        let mut all = true;
        for name in names {
            let Some(t) = self.get(name) else { continue };
            let Some(s) = &t.shipper else { continue };
            match tokio::time::timeout(SHIP_TIMEOUT, s.sync()).await {
                Ok(Ok(r)) => {
                    if !r.uploaded.is_empty() || r.found_in_bucket > 0 {
                        tracing::debug!(tenant = %t.name, uploaded = r.uploaded.len(), found_in_bucket = r.found_in_bucket, "shipping pass done")
                    }
                }
                // Logged by the shipper.
                Ok(Err(_)) => all = false,
                Err(_) => {
                    all = false;
                    tracing::warn!(tenant = %t.name, timeout_s = SHIP_TIMEOUT.as_secs(),
                        "shipping pass timed out; the next pass starts over")
                }
            }
        }
        all
    }

    /// Tenants whose WAL writes are failing, with the last error.
    pub fn wal_failures(&self) -> Vec<(String, String)> {
        self.tenants()
            .iter()
            .filter_map(|t| t.db.wal_failure().map(|why| (t.name.clone(), why)))
            .collect()
    }

    /// Fsyncs and closes every tenant's WAL (shutdown).
    pub fn close(&self) {
        for t in self.tenants() {
            if let Err(e) = t.db.close() {
                tracing::error!(tenant = %t.name, error = %e, "closing TSDB failed");
            }
        }
    }

    /// The directory of a tenant.
    pub fn tenant_dir(&self, tenant: &str) -> PathBuf {
        self.cfg.dir.join(tenant)
    }
}

/// Builds the external labels of the receiver from `--label`s.
pub fn external_labels(labels: &[Label]) -> Result<Labels, storeapi::LabelError> {
    Labels::from_unsorted(labels.to_vec())
}

#[allow(dead_code)]
/// Refuses a `--tsdb.path` that is itself one Prometheus/Thanos TSDB: its `wal/`,
/// `chunks_head/` and block directories would otherwise be opened as tenants (and get
/// WAL directories of their own).
fn check_not_single_tsdb(dir: &Path) -> Result<(), MultiTsdbError> {
    let is_segment = |e: &std::fs::DirEntry| {
        e.file_name()
            .to_str()
            .is_some_and(|n| n.len() == 8 && n.bytes().all(|b| b.is_ascii_digit()))
            && e.file_type().is_ok_and(|t| t.is_file())
    };
    let err = |found| MultiTsdbError::NotTenantLayout {
        path: dir.to_path_buf(),
        found,
    };
    if let Ok(rd) = std::fs::read_dir(dir.join("wal"))
        && rd.flatten().any(|e| is_segment(&e))
    {
        return Err(err("wal/ segment files"));
    }
    if dir.join("chunks_head").is_dir() {
        return Err(err("chunks_head/"));
    }
    Ok(())
}

fn _assert_path(_: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_validation() {
        assert!(validate_tenant("default-tenant").is_ok());
        assert!(validate_tenant("team_a.prod").is_ok());
        assert!(validate_tenant("A-Z_0.9!*'()").is_ok());
        assert!(
            validate_tenant("...").is_ok(),
            "not a path step, only . and .. are"
        );
        assert!(validate_tenant(&"x".repeat(MAX_TENANT_LEN)).is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a\\b",
            "a\nb",
            "/",
            "a b",
            "a:b",
            "a%2fb",
            "é",
            "a\0b",
            "$(id)",
            "lost+found",
        ] {
            assert!(validate_tenant(bad).is_err(), "{bad:?}");
        }
        assert!(validate_tenant(&"x".repeat(MAX_TENANT_LEN + 1)).is_err());
    }

    #[test]
    fn tenants_created_and_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = MultiTsdbConfig {
            dir: dir.path().to_path_buf(),
            external_labels: Labels::from_pairs([("replica", "0")]).unwrap(),
            tenant_label_name: "tenant_id".into(),
            block_duration: Duration::from_secs(7200),
            retention: Duration::from_secs(86400),
            wal_sync: SyncPolicy::Always,
            wal_compression: true,
            max_tenants: 2,
            too_far_in_future: None,
            bucket: None,
            hash_func: objstore::HashFunc::None,
            max_exemplars: 0,
            ooo_time_window: Duration::ZERO,
            ooo_cap_max: tsdb::db::DEFAULT_OOO_CAP_MAX,
            wire_key_cache_bytes: tsdb::DEFAULT_WIRE_KEY_CACHE_BYTES,
        };
        let reg = Arc::new(Mutex::new(Registry::default()));
        {
            let m = MultiTsdb::open(cfg.clone(), reg.clone()).unwrap();
            let t = m.get_or_create("acme").unwrap();
            assert_eq!(t.external_labels.get("tenant_id"), Some("acme"));
            assert_eq!(t.external_labels.get("replica"), Some("0"));
            let l = Labels::from_pairs([("__name__", "up")]).unwrap();
            let mut a = t.db.appender();
            a.append_one(&l, 1000, 1.0);
            a.commit().unwrap();
            m.get_or_create("b").unwrap();
            assert!(matches!(
                m.get_or_create("c"),
                Err(MultiTsdbError::TooManyTenants(2))
            ));
            assert!(m.get_or_create("../x").is_err());
            m.close();
        }
        let reg = Arc::new(Mutex::new(Registry::default()));
        let m = MultiTsdb::open(cfg, reg).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("acme").unwrap().db.head_series(), 1);
    }

    /// D7 of the operator review: `lost+found` at the root of a formatted volume is not
    /// opened as a tenant, and no client can create a tenant of that name.
    #[test]
    fn lost_and_found_is_not_a_tenant() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(LOST_AND_FOUND)).unwrap();
        let cfg = MultiTsdbConfig {
            dir: dir.path().to_path_buf(),
            external_labels: Labels::from_pairs([("replica", "0")]).unwrap(),
            tenant_label_name: "tenant_id".into(),
            block_duration: Duration::from_secs(7200),
            retention: Duration::from_secs(86400),
            wal_sync: SyncPolicy::Always,
            wal_compression: true,
            max_tenants: 2,
            too_far_in_future: None,
            bucket: None,
            hash_func: objstore::HashFunc::None,
            max_exemplars: 0,
            ooo_time_window: Duration::ZERO,
            ooo_cap_max: tsdb::db::DEFAULT_OOO_CAP_MAX,
            wire_key_cache_bytes: tsdb::DEFAULT_WIRE_KEY_CACHE_BYTES,
        };
        let reg = Arc::new(Mutex::new(Registry::default()));
        let m = MultiTsdb::open(cfg, reg).unwrap();
        assert_eq!(m.len(), 0);
        assert!(m.get(LOST_AND_FOUND).is_none());
        assert!(m.get_or_create(LOST_AND_FOUND).is_err());
        assert!(
            std::fs::read_dir(dir.path().join(LOST_AND_FOUND))
                .unwrap()
                .next()
                .is_none(),
            "nothing written into lost+found"
        );
    }

    /// With a bucket, cut blocks are held from retention until the shipper has
    /// uploaded them (with the tenant's external labels), then retention may delete them.
    #[tokio::test]
    async fn blocks_are_held_until_shipped() {
        let dir = tempfile::tempdir().unwrap();
        let bdir = tempfile::tempdir().unwrap();
        let bucket =
            objstore::Bucket::new(&objstore::BucketConfig::filesystem(bdir.path()), None).unwrap();
        let cfg = MultiTsdbConfig {
            dir: dir.path().to_path_buf(),
            external_labels: Labels::from_pairs([("replica", "0")]).unwrap(),
            tenant_label_name: "tenant_id".into(),
            block_duration: Duration::from_secs(3600),
            retention: Duration::from_millis(1),
            wal_sync: SyncPolicy::Never,
            wal_compression: true,
            max_tenants: 10,
            too_far_in_future: None,
            bucket: Some(bucket),
            hash_func: objstore::HashFunc::Sha256,
            max_exemplars: 0,
            ooo_time_window: Duration::ZERO,
            ooo_cap_max: tsdb::db::DEFAULT_OOO_CAP_MAX,
            wire_key_cache_bytes: tsdb::DEFAULT_WIRE_KEY_CACHE_BYTES,
        };
        let m = MultiTsdb::open(cfg, Arc::new(Mutex::new(Registry::default()))).unwrap();
        let t = m.get_or_create("acme").unwrap();
        let l = Labels::from_pairs([("__name__", "up")]).unwrap();
        let mut a = t.db.appender();
        for i in 0..(4 * 60) {
            a.append_one(&l, i * 60_000, i as f64);
        }
        a.commit().unwrap();
        assert!(m.maintain() >= 2);
        let local = tsdb::block::list_blocks(&dir.path().join("acme")).unwrap();
        assert!(local.len() >= 2, "held blocks stay: {}", local.len());
        m.ship().await;
        for b in &local {
            let meta = bdir.path().join(b.meta.ulid.to_string()).join("meta.json");
            let j: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
            assert_eq!(j["thanos"]["labels"]["tenant_id"], "acme");
            assert_eq!(j["thanos"]["labels"]["replica"], "0");
        }
        // Uploaded now: the next maintenance's retention may delete them locally.
        m.maintain();
        let left = tsdb::block::list_blocks(&dir.path().join("acme")).unwrap();
        assert!(
            left.len() < local.len(),
            "{} of {}",
            left.len(),
            local.len()
        );
        assert!(
            dir.path()
                .join("acme")
                .join(objstore::shipper::STATE_FILE)
                .is_file()
        );
    }

    /// A tenant directory whose WAL Orrery cannot read stops the start before any
    /// tenant is opened, with every file as it was; `--tsdb.path` pointed straight at a
    /// Prometheus data directory is refused as a layout mistake.
    #[test]
    fn foreign_wal_and_single_tsdb_layout_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = MultiTsdbConfig {
            dir: dir.path().to_path_buf(),
            external_labels: Labels::default(),
            tenant_label_name: "tenant_id".into(),
            block_duration: Duration::from_secs(7200),
            retention: Duration::from_secs(86400),
            wal_sync: SyncPolicy::Always,
            wal_compression: true,
            max_tenants: 10,
            too_far_in_future: None,
            bucket: None,
            hash_func: objstore::HashFunc::None,
            max_exemplars: 0,
            ooo_time_window: Duration::ZERO,
            ooo_cap_max: tsdb::db::DEFAULT_OOO_CAP_MAX,
            wire_key_cache_bytes: tsdb::DEFAULT_WIRE_KEY_CACHE_BYTES,
        };
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        let wal = dir.path().join("z/wal");
        std::fs::create_dir_all(&wal).unwrap();
        std::fs::write(wal.join("00000000"), b"not an orrery wal at all").unwrap();
        let reg = Arc::new(Mutex::new(Registry::default()));
        let e = MultiTsdb::open(cfg.clone(), reg.clone())
            .err()
            .expect("refused");
        let msg = e.to_string();
        assert!(
            msg.contains("tenant \"z\"")
                && msg.contains("not a write-ahead log segment Orrery can read"),
            "{msg}"
        );
        assert_eq!(
            std::fs::read(wal.join("00000000")).unwrap(),
            b"not an orrery wal at all"
        );
        assert_eq!(std::fs::read_dir(&wal).unwrap().count(), 1);
        assert!(
            !dir.path().join("a/wal").exists(),
            "tenant a was not opened either"
        );

        let single = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(single.path().join("wal")).unwrap();
        std::fs::write(single.path().join("wal/00000000"), b"x").unwrap();
        let e = MultiTsdb::open(
            MultiTsdbConfig {
                dir: single.path().to_path_buf(),
                ..cfg
            },
            reg,
        )
        .err()
        .expect("refused");
        assert!(matches!(e, MultiTsdbError::NotTenantLayout { .. }), "{e}");
        assert!(!single.path().join("wal/wal").exists());
    }
}
