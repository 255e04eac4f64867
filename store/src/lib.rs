//! `orrery store`: Thanos's store gateway. Serves the blocks of an object-storage bucket
//! over the StoreAPI so queriers reach back past the receivers' local retention.
//!
//! - [`args`]: the command line (Thanos Store's flag names and defaults).
//! - Discovery: `objstore::MetaFetcher` every `--sync-block-duration`; partial and
//!   corrupt blocks are skipped, blocks marked for deletion are hidden once the mark is
//!   older than `--ignore-deletion-marks-delay`, compacted sources are hidden while
//!   their result exists, `--min-time/--max-time` and `--selector.relabel-config`
//!   select the blocks served.
//! - [`block`]: per block, an index-header ([`header`]: symbols and postings offset
//!   table) is built on first use from ranged GETs and kept in `--data-dir`; postings,
//!   series and chunks are read with merged ranged GETs through byte-bounded caches
//!   ([`cache`]).
//! - [`service`]: `thanos.Store` (Series as pre-encoded frames), `thanos.info.Info`.
//! - [`resolution`]: downsampled blocks (5m, 1h): which resolution answers a request
//!   (`max_resolution_window`, Thanos's `getFor`) and which aggregates are sent.
//! - HTTP: `/metrics`, `/-/healthy`, `/-/ready` (ready after the first sync).

pub mod args;
pub mod block;
pub mod cache;
pub mod header;
pub mod heap;
pub mod inflight;
pub mod metrics;
pub mod resolution;
pub mod service;
pub mod tenancy;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use objstore::{BucketError, MetaFetcher};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

pub use args::StoreArgs;

use crate::block::StoreBlock;
use crate::cache::{ChunkCache, IndexCache};
use crate::inflight::InflightBytes;
use crate::metrics::{StateLabel, StoreMetrics};
use crate::service::{Gateway, Limits};
use objstore::relabel::Selector;

/// What a sync needs besides the gateway.
pub struct Syncer {
    pub fetcher: MetaFetcher,
    pub selector: Selector,
    pub min_time: args::TimeFlag,
    pub max_time: args::TimeFlag,
    pub ignore_deletion_marks_delay: Duration,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Syncer {
    /// One discovery pass: replaces the served block set, keeping already-open blocks
    /// (their index-headers stay mapped) and removing local files of blocks that left.
    pub async fn sync(&self, gw: &Gateway) -> Result<(), BucketError> {
        gw.metrics.syncs.inc();
        let d = match self.fetcher.fetch().await {
            Ok(d) => d,
            Err(e) => {
                gw.metrics.sync_failures.inc();
                return Err(e);
            }
        };
        let now = now_ms();
        let (wmin, wmax) = (self.min_time.at(now), self.max_time.at(now));
        *gw.window.write().unwrap_or_else(|e| e.into_inner()) = (wmin, wmax);
        let hidden = d.compacted_sources();
        let delay = i64::try_from(self.ignore_deletion_marks_delay.as_secs()).unwrap_or(i64::MAX);
        let mut states: HashMap<&'static str, i64> = HashMap::new();
        *states.entry("no-meta-json").or_default() += d.partial.len() as i64;
        *states.entry("corrupted-meta-json").or_default() += d.corrupt.len() as i64;
        for (id, why) in &d.corrupt {
            tracing::warn!(block = %id, reason = %why, "corrupt meta.json; block ignored");
        }
        let old = gw.blocks.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut next = BTreeMap::new();
        for (id, e) in d.blocks {
            let state = if e.deletion_older_than(now / 1000, delay) {
                "marked-for-deletion"
            } else if hidden.contains(&id) {
                "duplicate"
            } else if !(e.meta.min_time <= wmax && wmin < e.meta.max_time) {
                "time-excluded"
            } else if !self.selector.keeps_block(id, &e.labels(), &[]) {
                "label-excluded"
            } else {
                "loaded"
            };
            *states.entry(state).or_default() += 1;
            if state != "loaded" {
                continue;
            }
            let b = match old.get(&id) {
                Some(b) => b.clone(),
                None => Arc::new(
                    StoreBlock::new(e.meta, &gw.data_dir, gw.bucket.clone())
                        .with_postings_sampling(gw.postings_sampling),
                ),
            };
            next.insert(id, b);
        }
        for (id, b) in &old {
            if !next.contains_key(id) {
                tracing::info!(block = %id, "block no longer served");
                b.remove_local();
            }
        }
        for s in [
            "loaded",
            "no-meta-json",
            "corrupted-meta-json",
            "marked-for-deletion",
            "duplicate",
            "time-excluded",
            "label-excluded",
        ] {
            gw.metrics
                .meta_synced
                .get_or_create(&StateLabel { state: s.into() })
                .set(states.get(s).copied().unwrap_or(0));
        }
        gw.metrics.blocks_loaded.set(next.len() as i64);
        tracing::debug!(blocks = next.len(), "bucket synced");
        *gw.blocks.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }
}

/// Removes leftovers in `--data-dir`: temporary files of interrupted header builds,
/// and the whole-index copies older versions kept per block (index-headers replace
/// them, so the disk used drops to the headers). Only names this gateway writes are
/// touched.
fn clean_data_dir(data_dir: &Path) {
    let Ok(rd) = std::fs::read_dir(data_dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name()
            .to_str()
            .is_none_or(|n| n.parse::<tsdb::block::Ulid>().is_err())
        {
            continue;
        }
        for name in ["index.tmp", "index-header.tmp", "index"] {
            let p = e.path().join(name);
            if p.is_file() {
                match std::fs::remove_file(&p) {
                    Ok(()) => tracing::info!(path = %p.display(), "removed leftover file"),
                    Err(err) => {
                        tracing::warn!(path = %p.display(), error = %err, "cannot remove leftover file")
                    }
                }
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
    }
}

/// The pieces `run` and an embedding process (standalone) share.
pub struct Parts {
    pub gateway: Gateway,
    pub syncer: Syncer,
    pub sync_every: Duration,
}

/// Builds the gateway from its flags (no network yet); registers metrics in `registry`.
pub fn build(args: &StoreArgs, registry: &mut Registry) -> anyhow::Result<Parts> {
    let cfg = objstore::BucketConfig::from_flags(
        args.objstore_config_file.as_deref(),
        args.objstore_config.as_deref(),
    )
    .context("invalid --objstore.config / --objstore.config-file")?
    .context("orrery store needs --objstore.config or --objstore.config-file")?;
    let bucket = objstore::Bucket::new(&cfg, Some(registry))
        .context("setting up the bucket from --objstore.config")?;
    let selector = Selector::from_flags(
        args.selector_relabel_config.as_deref(),
        args.selector_relabel_config_file.as_deref(),
    )
    .context("invalid --selector.relabel-config")?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating --data-dir {}", args.data_dir.display()))?;
    clean_data_dir(&args.data_dir);
    let metrics = StoreMetrics::default();
    metrics.register(registry);
    let gateway = Gateway {
        blocks: Arc::new(RwLock::new(BTreeMap::new())),
        ready: Arc::new(AtomicBool::new(false)),
        cache: Arc::new(ChunkCache::new(args.chunk_cache_size)),
        index_cache: Arc::new(IndexCache::new(args.index_cache_size)),
        inflight: Arc::new(InflightBytes::new(args.max_inflight_fetch_bytes as u64)),
        metrics,
        limits: Limits {
            series: args.series_limit,
            samples: args.series_sample_limit,
            bytes: args.downloaded_bytes_limit,
        },
        data_dir: args.data_dir.clone(),
        bucket: bucket.clone(),
        window: Arc::new(RwLock::new((i64::MIN, i64::MAX))),
        batch_chunks: service::SERIES_BATCH_CHUNKS,
        tenancy: args.enforce_tenancy.then(|| {
            Arc::new(tenancy::TenantScope {
                label: args.tenant_label_name.clone(),
                default_tenant: args.default_tenant_id.clone(),
            })
        }),
        postings_sampling: args.postings_offsets_sampling as usize,
    };
    let syncer = Syncer {
        fetcher: MetaFetcher::new(bucket, Some(args.data_dir.join("meta-syncer"))),
        selector,
        min_time: args.min_time,
        max_time: args.max_time,
        ignore_deletion_marks_delay: args.ignore_deletion_marks_delay,
    };
    Ok(Parts {
        gateway,
        syncer,
        sync_every: args.sync_block_duration.max(Duration::from_secs(1)),
    })
}

/// Syncs at once (retrying every 5 s until the first sync succeeds, then marking the
/// gateway ready), then every `every` until `stop`.
pub async fn sync_loop(
    gw: Gateway,
    syncer: Syncer,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut first = true;
    loop {
        match syncer.sync(&gw).await {
            Ok(()) => {
                if first {
                    first = false;
                    gw.ready.store(true, Ordering::Release);
                    tracing::info!(
                        blocks = gw.blocks.read().unwrap_or_else(|e| e.into_inner()).len(),
                        "initial bucket sync done; store gateway ready"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "bucket sync failed"),
        }
        let wait = if first {
            every.min(Duration::from_secs(5))
        } else {
            every
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Runs the gateway until SIGTERM/SIGINT.
pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    let registry = Arc::new(Mutex::new(Registry::default()));
    let parts = {
        let mut r = registry.lock().unwrap_or_else(|e| e.into_inner());
        build(&args, &mut r)?
    };
    let grpc_tls = args
        .grpc_tls
        .server_config()
        .context("--grpc-server-tls-*")?;
    let http_sec = args.http_config.server().context("--http.config")?;
    let http_listener = tokio::net::TcpListener::bind(args.http_address)
        .await
        .with_context(|| format!("binding --http-address {}", args.http_address))?;
    let grpc_listener = tokio::net::TcpListener::bind(args.grpc_address)
        .await
        .with_context(|| format!("binding --grpc-address {}", args.grpc_address))?;
    tracing::info!(grpc = %args.grpc_address, http = %args.http_address,
        data_dir = %args.data_dir.display(), "starting store gateway");
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let gw = parts.gateway.clone();
    let http = tokio::spawn(
        axum::serve(
            http_sec.listener(http_listener),
            http_sec.router(netsec::ops::flag_ops_router(
                registry.clone(),
                gw.ready.clone(),
                "initial bucket sync in progress",
            )),
        )
        .with_graceful_shutdown(stopped(stop_rx.clone()))
        .into_future(),
    );
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<storeapi::wire::thanos::store_server::StoreServer<Gateway>>()
        .await;
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(storeapi::wire::store_service::StoreService::new(gw.clone()))
            .add_service(storeapi::wire::info::info_server::InfoServer::new(
                gw.clone(),
            ))
            .serve_with_incoming_shutdown(
                netsec::Listener::new(grpc_listener, grpc_tls).into_incoming(),
                stopped(stop_rx.clone()),
            ),
    );
    let sync = tokio::spawn(sync_loop(
        gw,
        parts.syncer,
        parts.sync_every,
        stop_rx.clone(),
    ));
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = sync.await;
    match http.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "http server error"),
        Err(e) => tracing::error!(error = %e, "http server task failed"),
    }
    match grpc.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "gRPC server error"),
        Err(e) => tracing::error!(error = %e, "gRPC server task failed"),
    }
    tracing::info!("store gateway stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_cleanup_removes_old_index_copies_only() {
        let dir = tempfile::tempdir().unwrap();
        let block = dir.path().join(tsdb::block::Ulid::default().to_string());
        std::fs::create_dir_all(&block).unwrap();
        for f in ["index", "index.tmp", "index-header.tmp", "index-header"] {
            std::fs::write(block.join(f), b"x").unwrap();
        }
        // Not a block directory (e.g. the meta cache): left alone.
        let other = dir.path().join("meta-syncer");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("index"), b"x").unwrap();
        clean_data_dir(dir.path());
        assert!(!block.join("index").exists());
        assert!(!block.join("index.tmp").exists());
        assert!(!block.join("index-header.tmp").exists());
        assert!(block.join("index-header").exists());
        assert!(other.join("index").exists());
    }
}
