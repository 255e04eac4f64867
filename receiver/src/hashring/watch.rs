//! Loading the hashring file and reloading it on change without restart.
//!
//! [`HashringWatcher::run`] re-reads the file every refresh interval and publishes a new
//! [`LoadedHashring`] on a `tokio::sync::watch` channel when its content changed and is
//! valid. An invalid or unreadable file keeps the previous ring (and is counted and logged);
//! requests never see a half-loaded ring. Readers call [`HashringHandle::current`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use thiserror::Error;
use tokio::sync::watch;
use xxhash_rust::xxh64::xxh64;

use super::config::{Algorithm, ConfigError, parse_config};
use super::{HashringError, MultiHashring};

/// A hashring built from one version of the file.
#[derive(Debug)]
pub struct LoadedHashring {
    pub hashring: MultiHashring,
    /// 48-bit hash of the file's bytes (exact as an `f64` metric value).
    pub config_hash: u64,
}

/// Why a hashring file could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("reading hashring file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hashring file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
    #[error("hashring file {path}: {source}")]
    Build {
        path: PathBuf,
        #[source]
        source: HashringError,
    },
}

/// 48-bit content hash, so that the metric value is exact in an `f64`.
pub fn config_hash(content: &[u8]) -> u64 {
    xxh64(content, 0) & 0xffff_ffff_ffff
}

/// Parses, validates and builds a hashring from file content.
pub fn build(
    content: &[u8],
    origin: &Path,
    algorithm: Algorithm,
    replication_factor: u64,
) -> Result<LoadedHashring, LoadError> {
    let configs = parse_config(content, replication_factor).map_err(|source| LoadError::Parse {
        path: origin.to_path_buf(),
        source,
    })?;
    let hashring =
        MultiHashring::new(algorithm, replication_factor, &configs).map_err(|source| {
            LoadError::Build {
                path: origin.to_path_buf(),
                source,
            }
        })?;
    Ok(LoadedHashring {
        hashring,
        config_hash: config_hash(content),
    })
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RingLabels {
    name: String,
}

/// Hashring configuration metrics (Thanos's names).
#[derive(Debug, Clone, Default)]
pub struct HashringMetrics {
    config_hash: Gauge<f64, AtomicU64>,
    last_reload_successful: Gauge,
    last_reload_success_timestamp: Gauge<f64, AtomicU64>,
    changes: Counter,
    errors: Counter,
    refreshes: Counter,
    nodes: Family<RingLabels, Gauge>,
    tenants: Family<RingLabels, Gauge>,
}

impl HashringMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "thanos_receive_config_hash",
            "Hash of the currently loaded hashring configuration file",
            self.config_hash.clone(),
        );
        registry.register(
            "thanos_receive_config_last_reload_successful",
            "Whether the last hashring configuration file reload attempt was successful",
            self.last_reload_successful.clone(),
        );
        registry.register(
            "thanos_receive_config_last_reload_success_timestamp_seconds",
            "Timestamp of the last successful hashring configuration file reload",
            self.last_reload_success_timestamp.clone(),
        );
        registry.register(
            "thanos_receive_hashrings_file_changes",
            "The number of times the hashrings configuration file has changed",
            self.changes.clone(),
        );
        registry.register(
            "thanos_receive_hashrings_file_errors",
            "The number of errors loading the hashrings configuration file",
            self.errors.clone(),
        );
        registry.register(
            "thanos_receive_hashrings_file_refreshes",
            "The number of refreshes of the hashrings configuration file",
            self.refreshes.clone(),
        );
        registry.register(
            "thanos_receive_hashring_nodes",
            "The number of nodes per hashring",
            self.nodes.clone(),
        );
        registry.register(
            "thanos_receive_hashring_tenants",
            "The number of tenants per hashring",
            self.tenants.clone(),
        );
    }

    fn loaded(&self, l: &LoadedHashring) {
        self.config_hash.set(l.config_hash as f64);
        self.last_reload_successful.set(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.last_reload_success_timestamp.set(now);
        self.nodes.clear();
        self.tenants.clear();
        for r in l.hashring.rings() {
            let labels = RingLabels {
                name: r.name.clone(),
            };
            self.nodes
                .get_or_create(&labels)
                .set(r.ring.endpoints().len() as i64);
            self.tenants
                .get_or_create(&labels)
                .set(r.tenant_count() as i64);
        }
    }
}

/// Read side: the currently loaded hashring, if any.
#[derive(Debug, Clone)]
pub struct HashringHandle {
    rx: watch::Receiver<Option<Arc<LoadedHashring>>>,
}

impl HashringHandle {
    /// A handle that never changes (tests, inline `--receive.hashrings`).
    pub fn fixed(loaded: LoadedHashring) -> Self {
        let (tx, rx) = watch::channel(Some(Arc::new(loaded)));
        // Keep the channel open forever: a closed channel still serves the last value.
        drop(tx);
        HashringHandle { rx }
    }

    /// The hashring in force now; `None` until the first successful load.
    pub fn current(&self) -> Option<Arc<LoadedHashring>> {
        self.rx.borrow().clone()
    }

    /// Waits until the hashring changes (or the watcher stops: then returns false).
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

/// Re-reads the hashring file on an interval and publishes changes.
#[derive(Debug)]
pub struct HashringWatcher {
    path: PathBuf,
    interval: Duration,
    algorithm: Algorithm,
    replication_factor: u64,
    tx: watch::Sender<Option<Arc<LoadedHashring>>>,
    last_hash: Option<u64>,
    metrics: HashringMetrics,
}

impl HashringWatcher {
    /// Creates the watcher and loads the file once. A failing first load is returned as an
    /// error (the caller may start anyway and stay unready until the file becomes valid).
    pub fn new(
        path: impl Into<PathBuf>,
        interval: Duration,
        algorithm: Algorithm,
        replication_factor: u64,
        metrics: HashringMetrics,
    ) -> (Self, HashringHandle, Result<(), LoadError>) {
        let (tx, rx) = watch::channel(None);
        let mut w = HashringWatcher {
            path: path.into(),
            interval: interval.max(Duration::from_millis(10)),
            algorithm,
            replication_factor,
            tx,
            last_hash: None,
            metrics,
        };
        let first = w.refresh().map(|_| ());
        (w, HashringHandle { rx }, first)
    }

    /// Reads the file; publishes it when changed and valid. Returns whether it changed.
    pub fn refresh(&mut self) -> Result<bool, LoadError> {
        self.metrics.refreshes.inc();
        let content = match std::fs::read(&self.path) {
            Ok(c) => c,
            Err(source) => {
                return Err(self.failed(LoadError::Read {
                    path: self.path.clone(),
                    source,
                }));
            }
        };
        let hash = config_hash(&content);
        if self.last_hash == Some(hash) {
            return Ok(false);
        }
        let loaded = match build(
            &content,
            &self.path,
            self.algorithm,
            self.replication_factor,
        ) {
            Ok(l) => l,
            Err(e) => {
                // Do not retry the same broken content every tick: remember it, keep the old ring.
                self.last_hash = Some(hash);
                return Err(self.failed(e));
            }
        };
        self.last_hash = Some(hash);
        self.metrics.changes.inc();
        self.metrics.loaded(&loaded);
        tracing::info!(
            path = %self.path.display(),
            rings = loaded.hashring.rings().len(),
            endpoints = loaded.hashring.endpoints().len(),
            config_hash = loaded.config_hash,
            "hashring loaded"
        );
        self.tx.send_replace(Some(Arc::new(loaded)));
        Ok(true)
    }

    fn failed(&self, e: LoadError) -> LoadError {
        self.metrics.errors.inc();
        self.metrics.last_reload_successful.set(0);
        tracing::error!(error = %e, "hashring file not loaded; keeping the previous hashring");
        e
    }

    /// Polls until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {
                    // Errors are logged and counted in refresh().
                    let _ = self.refresh();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, s: &str) {
        std::fs::write(path, s).unwrap();
    }

    #[test]
    fn reload_keeps_old_ring_on_bad_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.json");
        write(&path, r#"[{"endpoints":["a:1","b:1"]}]"#);
        let metrics = HashringMetrics::default();
        let (mut w, h, first) =
            HashringWatcher::new(&path, Duration::from_secs(1), Algorithm::Ketama, 2, metrics);
        first.unwrap();
        let v1 = h.current().unwrap();
        assert_eq!(v1.hashring.endpoints().len(), 2);
        assert!(!w.refresh().unwrap(), "unchanged content is not a change");

        write(&path, "not json");
        assert!(w.refresh().is_err());
        assert_eq!(
            h.current().unwrap().config_hash,
            v1.config_hash,
            "old ring kept"
        );
        assert!(
            !w.refresh().unwrap(),
            "same broken content is not re-reported"
        );

        write(&path, r#"[{"endpoints":["a:1"]}]"#); // fewer endpoints than RF 2
        assert!(w.refresh().is_err());
        assert_eq!(h.current().unwrap().config_hash, v1.config_hash);

        write(&path, r#"[{"endpoints":["a:1","b:1","c:1"]}]"#);
        assert!(w.refresh().unwrap());
        assert_eq!(h.current().unwrap().hashring.endpoints().len(), 3);

        std::fs::remove_file(&path).unwrap();
        assert!(matches!(w.refresh(), Err(LoadError::Read { .. })));
        assert_eq!(h.current().unwrap().hashring.endpoints().len(), 3);
    }

    #[test]
    fn missing_file_at_start_is_unready_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.json");
        let (mut w, h, first) = HashringWatcher::new(
            &path,
            Duration::from_secs(1),
            Algorithm::Ketama,
            1,
            HashringMetrics::default(),
        );
        assert!(first.is_err());
        assert!(h.current().is_none());
        write(&path, r#"[{"endpoints":["a:1"]}]"#);
        assert!(w.refresh().unwrap());
        assert!(h.current().is_some());
    }

    #[tokio::test]
    async fn run_picks_up_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.json");
        write(&path, r#"[{"endpoints":["a:1"]}]"#);
        let (w, mut h, first) = HashringWatcher::new(
            &path,
            Duration::from_millis(20),
            Algorithm::Ketama,
            1,
            HashringMetrics::default(),
        );
        first.unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(w.run(async {
            let _ = stop_rx.await;
        }));
        write(&path, r#"[{"endpoints":["a:1","b:1"]}]"#);
        tokio::time::timeout(Duration::from_secs(5), async {
            while h.current().unwrap().hashring.endpoints().len() != 2 {
                assert!(h.changed().await);
            }
        })
        .await
        .unwrap();
        let _ = stop_tx.send(());
        task.await.unwrap();
    }

    #[test]
    fn metrics_encode() {
        let mut reg = Registry::default();
        let m = HashringMetrics::default();
        m.register(&mut reg);
        let loaded = build(
            br#"[{"hashring":"r","tenants":["x"],"endpoints":["a:1","b:1"]}]"#,
            Path::new("-"),
            Algorithm::Ketama,
            1,
        )
        .unwrap();
        m.loaded(&loaded);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains("thanos_receive_hashring_nodes{name=\"r\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("thanos_receive_hashring_tenants{name=\"r\"} 1"),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "thanos_receive_config_hash {}",
                loaded.config_hash as f64
            )) || out.contains("thanos_receive_config_hash "),
            "{out}"
        );
    }
}
