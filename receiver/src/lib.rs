//! Remote-write receiver: durable multi-tenant TSDB served over the Thanos StoreAPI.
//!
//! - [`args`]: the command line (Thanos Receive's flag names and defaults).
//! - [`http`]: `POST /api/v1/receive`, `/metrics`, `/-/healthy`, `/-/ready`.
//! - [`write`]: decode → validate → limits → append, and the status-code mapping.
//! - [`negotiate`]: remote write 1.0 or 2.0, from `Content-Type` / `Content-Encoding`.
//! - [`multitsdb`]: one `tsdb::Db` per tenant under `<tsdb.path>/<tenant>/`.
//! - [`store`]: `thanos.Store` and `thanos.info.Info` over the tenants.
//! - [`limits`]: Thanos's limits YAML.
//! - [`hashring`], [`replicate`]: distribution over several receivers (issue 6).
//! - [`handoff`]: tenants a reloaded hashring moves away are flushed and shipped.
//! - Shipping: with `--objstore.config[-file]` each tenant's blocks go to the bucket
//!   through `objstore::Shipper` (see [`multitsdb::MultiTsdb::ship`]).

pub mod args;
mod body;
pub mod exemplar_service;
pub mod handoff;
pub mod hashring;
pub mod http;
pub mod limits;
pub mod metadata_service;
pub mod metrics;
pub mod multitsdb;
pub mod negotiate;
pub mod replicate;
pub mod store;
pub mod write;
mod write_runtime;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

pub use args::{ReceiveArgs, parse_label_flag};

use crate::hashring::Mode;
use crate::http::{OpsState, WriteState};
use crate::limits::LimitsConfig;
use crate::metrics::ReceiveMetrics;
use crate::multitsdb::{MultiTsdb, MultiTsdbConfig};
use crate::replicate::local::TsdbLocalWriter;
use crate::replicate::{Distributor, LocalWriter};
use crate::store::StoreState;
use crate::write::Bounds;

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
        r = tokio::signal::ctrl_c() => {
            if r.is_ok() { tracing::info!("SIGINT received, shutting down") }
        }
    }
}

/// Runs the component until it is asked to stop (SIGTERM/SIGINT): stops accepting,
/// finishes in-flight requests, fsyncs the WALs and returns.
/// How often the receiver checks whether a head is due for a block between maintenance
/// runs (`--tsdb.maintenance-interval`).
const COMPACTION_CHECK: Duration = Duration::from_secs(5);

pub async fn run(args: ReceiveArgs) -> anyhow::Result<()> {
    let external_labels = args.external_labels().context("invalid --label flags")?;
    if external_labels.get(&args.tenant_label_name).is_some() {
        anyhow::bail!(
            "--label {} clashes with --receive.tenant-label-name",
            args.tenant_label_name
        );
    }
    multitsdb::validate_tenant(&args.default_tenant)
        .context("invalid --receive.default-tenant-id")?;
    let limits = match &args.limits_config_file {
        Some(p) => LimitsConfig::load(p)?,
        None => LimitsConfig::default(),
    };
    let max_concurrency = limits
        .write
        .global
        .max_concurrency
        .filter(|&c| c > 0)
        .map(|c| c as usize)
        .unwrap_or(args.max_concurrent_requests)
        .max(1);

    let registry = Arc::new(Mutex::new(Registry::default()));
    let metrics = ReceiveMetrics::new();
    {
        let mut r = registry.lock().unwrap_or_else(|e| e.into_inner());
        metrics.register(&mut r);
    }
    let ready = Arc::new(AtomicBool::new(false));

    // TLS material and web config are read before binding: a bad file fails fast.
    let grpc_tls = args
        .grpc_tls
        .server_config()
        .context("--grpc-server-tls-*")?;
    let rw_tls = args
        .remote_write_tls
        .server_config()
        .context("--remote-write.server-tls-*")?;
    let http_sec = args.http_config.server().context("--http.config")?;
    let rw_sec = netsec::HttpServer::load(Some(args.remote_write_http_config.as_path()))
        .and_then(|s| s.with_tls_flags(rw_tls))
        .context("--remote-write.http-config")?;
    for t in rw_sec.bound_tenants() {
        multitsdb::validate_tenant(&t)
            .with_context(|| format!("--remote-write.http-config: tenant {t:?}"))?;
    }
    let tenant_policy = netsec::TenantPolicy::new(
        &args.tenant_header,
        &args.default_tenant,
        &args.tenant_certificate_field,
    )
    .map_err(anyhow::Error::msg)
    .context("--receive.tenant-header / --receive.tenant-certificate-field")?;
    registry
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .register(
            "orrery_receive_remote_write_auth_failures",
            "Remote-write requests refused before any write, by reason: missing or wrong credentials and certificates (401), a tenant header naming another tenant than the credential's (403), rate limit (429)",
            rw_sec.failures(),
        );
    registry.lock().unwrap_or_else(|e| e.into_inner()).register(
        "orrery_receive_http_auth_failures",
        "Requests to --http-address refused by --http.config authentication, by reason",
        http_sec.failures(),
    );
    if tenant_policy.cert_field.is_some() && !rw_sec.is_tls() {
        anyhow::bail!(
            "--receive.tenant-certificate-field needs TLS with a client CA on the remote-write listener (--remote-write.server-tls-client-ca or client_ca_file in --remote-write.http-config)"
        );
    }

    // Bind everything first, so a port clash fails fast.
    // The remote-write listener is registered with its own runtime (see write_runtime).
    let write_rt = write_runtime::WriteRuntime::new().context("starting the write runtime")?;
    let rw_listener = std::net::TcpListener::bind(args.remote_write_address)
        .and_then(|l| {
            l.set_nonblocking(true)?;
            let _in = write_rt.handle().enter();
            tokio::net::TcpListener::from_std(l)
        })
        .with_context(|| {
            format!(
                "binding --remote-write.address {}",
                args.remote_write_address
            )
        })?;
    let http_listener = tokio::net::TcpListener::bind(args.http_address)
        .await
        .with_context(|| format!("binding --http-address {}", args.http_address))?;
    let grpc_listener = tokio::net::TcpListener::bind(args.grpc_address)
        .await
        .with_context(|| format!("binding --grpc-address {}", args.grpc_address))?;
    tracing::info!(
        remote_write = %args.remote_write_address,
        grpc = %args.grpc_address,
        http = %args.http_address,
        tsdb = %args.tsdb_path.display(),
        "starting receiver"
    );

    let bucket = match objstore::BucketConfig::from_flags(
        args.objstore_config_file.as_deref(),
        args.objstore_config.as_deref(),
    )
    .context("invalid --objstore.config / --objstore.config-file")?
    {
        Some(cfg) => {
            let mut r = registry.lock().unwrap_or_else(|e| e.into_inner());
            let b = objstore::Bucket::new(&cfg, Some(&mut r))
                .context("setting up the bucket from --objstore.config")?;
            tracing::info!(kind = cfg.provider.kind(), bucket = b.name(), prefix = %cfg.prefix,
                "blocks will be uploaded to object storage");
            // Checked in the background: a bucket that is down never blocks ingestion
            // (the shipper retries); the error names it and the gauge
            // orrery_objstore_bucket_reachable shows it.
            let probe = b.clone();
            tokio::spawn(async move {
                match probe.check(std::time::Duration::from_secs(10)).await {
                    Ok(()) => tracing::info!(bucket = probe.describe(), "object storage reachable"),
                    Err(e) => tracing::error!(error = %e,
                        "object storage is not usable at startup: blocks stay on local disk (never deleted before they are shipped) and uploads are retried; ingestion goes on"),
                }
            });
            Some(b)
        }
        None => {
            tracing::info!("no --objstore.config: blocks stay on local disk only");
            None
        }
    };
    let shipping = bucket.is_some();
    let cfg = MultiTsdbConfig {
        dir: args.tsdb_path.clone(),
        external_labels,
        tenant_label_name: args.tenant_label_name.clone(),
        block_duration: args.min_block_duration,
        retention: args.retention,
        wal_sync: if args.wal_fsync {
            tsdb::SyncPolicy::Always
        } else {
            tsdb::SyncPolicy::Interval(Duration::from_secs(1))
        },
        wal_compression: args.wal_compression,
        max_tenants: args.max_tenants,
        too_far_in_future: (!args.too_far_in_future.is_zero()).then_some(args.too_far_in_future),
        bucket,
        hash_func: args.hash_func,
        max_exemplars: args.max_exemplars,
        ooo_time_window: args.ooo_time_window,
        ooo_cap_max: args.ooo_cap_max,
        wire_key_cache_bytes: args.series_cache_size,
    };
    // The ops server answers /-/healthy (and /-/ready = 503) during WAL replay; the other
    // servers start once the TSDBs are open.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let reg2 = registry.clone();
    let mt = tokio::task::spawn_blocking(move || MultiTsdb::open(cfg, reg2))
        .await
        .context("opening TSDBs")??;
    let mt = Arc::new(mt);
    let limits = Arc::new(limits);
    let bounds = Bounds {
        max_labels_per_series: args.max_labels_per_series,
        max_label_name_len: args.max_label_name_len,
        max_label_value_len: args.max_label_value_len,
    };
    // Distribution: routes client writes over the hashring (router modes) and serves
    // forwarded writes from peers and routers (every mode).
    let mode = args.hashring.mode();
    let local: Option<Arc<dyn LocalWriter>> = mode.stores_locally().then(|| {
        Arc::new(TsdbLocalWriter {
            mt: mt.clone(),
            metrics: metrics.clone(),
            bounds,
            limits: limits.clone(),
        }) as Arc<dyn LocalWriter>
    });
    let setup = {
        let mut r = registry.lock().unwrap_or_else(|e| e.into_inner());
        Distributor::from_args(&args.hashring, args.default_tenant.clone(), local, &mut r)
            .context("setting up the hashring")?
    };
    let distributor = setup.distributor;
    tracing::info!(
        mode = mode.as_str(),
        replication_factor = args.hashring.replication_factor,
        local_endpoint = args.hashring.local_endpoint.as_deref().unwrap_or(""),
        "distribution"
    );
    if let Some(w) = setup.watcher {
        tokio::spawn(w.run(stopped(stop_rx.clone())));
    }
    let handoff_running = Arc::new(AtomicBool::new(false));
    if let (Mode::RouterIngestor, Some(hashring), Some(local_endpoint)) = (
        mode,
        distributor.hashring(),
        args.hashring.local_endpoint.clone(),
    ) {
        let h = handoff::Handoff {
            mt: mt.clone(),
            hashring,
            local_endpoint,
            in_progress: handoff_running.clone(),
            ship_timeout: args.shipper_shutdown_timeout,
            metrics: handoff::HandoffMetrics::default(),
        };
        h.metrics
            .register(&mut registry.lock().unwrap_or_else(|e| e.into_inner()));
        tokio::spawn(h.run(stopped(stop_rx.clone())));
    }
    let ops = Arc::new(OpsState {
        registry: registry.clone(),
        ready: ready.clone(),
        mt: mt.clone(),
        metrics: metrics.clone(),
        distributor: Some(distributor.clone()),
        handoff: handoff_running,
    });
    let ops_server = tokio::spawn(
        axum::serve(
            http_sec.listener(http_listener),
            http_sec.router(http::ops_router(ops)),
        )
        .with_graceful_shutdown(stopped(stop_rx.clone()))
        .into_future(),
    );

    let write_state = Arc::new(WriteState {
        mt: mt.clone(),
        metrics: metrics.clone(),
        limits: limits.clone(),
        bounds,
        tenants: tenant_policy,
        auth_failures: rw_sec.failures(),
        max_body_bytes: args.max_body_bytes,
        max_decompressed_bytes: args.max_decompressed_bytes,
        concurrency: tokio::sync::Semaphore::new(max_concurrency),
        ready: ready.clone(),
        distributor: (mode != Mode::IngestorOnly).then(|| distributor.clone()),
    });
    let rw_server = write_rt.handle().spawn(
        axum::serve(
            rw_sec.listener(rw_listener),
            rw_sec
                .router(http::remote_write_router(write_state))
                .into_make_service_with_connect_info::<netsec::ConnInfo>(),
        )
        .with_graceful_shutdown(stopped(stop_rx.clone()))
        .into_future(),
    );

    let store_state = StoreState {
        mt: mt.clone(),
        ready: ready.clone(),
        enforce_default_tenant: args
            .store_enforce_tenancy
            .then(|| args.default_tenant.clone()),
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<storeapi::wire::thanos::store_server::StoreServer<StoreState>>()
        .await;
    let grpc = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(storeapi::wire::store_service::StoreService::new(
            store_state.clone(),
        ))
        .add_service(
            storeapi::wire::thanos::exemplars_server::ExemplarsServer::new(store_state.clone()),
        )
        .add_service(
            storeapi::wire::thanos::metadata_server::MetadataServer::new(store_state.clone()),
        )
        .add_service(storeapi::wire::info::info_server::InfoServer::new(
            store_state,
        ))
        .add_service(replicate::server::writeable_store_service(distributor))
        .serve_with_incoming_shutdown(
            // TCP_NODELAY is set per connection: small StoreAPI answers would otherwise
            // wait on Nagle + delayed ACK (~40 ms).
            netsec::Listener::new(grpc_listener, grpc_tls).into_incoming(),
            stopped(stop_rx.clone()),
        );
    let grpc_server = tokio::spawn(grpc);

    ready.store(true, Ordering::Release);
    tracing::info!(tenants = mt.len(), "receiver ready");

    // Compaction and retention in the background.
    let mt_maint = mt.clone();
    let interval = args.maintenance_interval.max(Duration::from_millis(100));
    let mut maint_stop = stop_rx.clone();
    let ship_now = Arc::new(tokio::sync::Notify::new());
    let ship_now_maint = ship_now.clone();
    // Between maintenance runs a cheap check every few seconds starts one as soon as a
    // head is due for a block, as Prometheus compacts on commit: waiting for the next
    // interval would hold up to a whole interval more of samples in memory (issue #26).
    let check = interval.min(COMPACTION_CHECK);
    let maintenance = tokio::spawn(async move {
        let mut tick = tokio::time::interval(check);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_full: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = maint_stop.wait_for(|s| *s) => return,
            }
            let full_due = last_full.is_none_or(|t| t.elapsed() >= interval);
            if !full_due && !mt_maint.any_compactable() {
                continue;
            }
            last_full = Some(tokio::time::Instant::now());
            let m = mt_maint.clone();
            match tokio::task::spawn_blocking(move || m.maintain()).await {
                Ok(cut) if cut > 0 => ship_now_maint.notify_one(),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "maintenance task failed"),
            }
        }
    });
    // Shipping in its own task: a slow or unreachable bucket never delays compaction,
    // retention or ingestion. A pass runs at start, every --shipper.interval and right
    // after blocks are cut; an in-flight pass is abandoned at shutdown (its block has no
    // meta.json in the bucket yet, so the next start uploads it again, whole).
    let shipper = shipping.then(|| {
        let mt_ship = mt.clone();
        let every = args.shipper_interval.max(Duration::from_millis(100));
        let mut ship_stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = ship_now.notified() => {}
                    _ = ship_stop.wait_for(|s| *s) => return,
                }
                tokio::select! {
                    _ = mt_ship.ship() => {}
                    _ = ship_stop.wait_for(|s| *s) => return,
                }
            }
        })
    });

    shutdown_signal().await;
    ready.store(false, Ordering::Release);
    let _ = stop_tx.send(true);
    for (name, h) in [("remote-write", rw_server), ("http", ops_server)] {
        match h.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(server = name, error = %e, "server error"),
            Err(e) => tracing::error!(server = name, error = %e, "server task failed"),
        }
    }
    match grpc_server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "gRPC server error"),
        Err(e) => tracing::error!(error = %e, "gRPC server task failed"),
    }
    let _ = maintenance.await;
    if let Some(s) = shipper {
        let _ = s.await;
        // Thanos Receive at shutdown: cut the head into blocks and ship them, within
        // --shipper.shutdown-timeout (/-/ready is already false). Whatever does not make
        // it stays on disk (WAL and blocks) and ships at the next start.
        let m = mt.clone();
        match tokio::task::spawn_blocking(move || m.flush_all()).await {
            Ok(cut) => tracing::info!(blocks = cut, "head cut into blocks for the final upload"),
            Err(e) => tracing::error!(error = %e, "cutting the head at shutdown failed"),
        }
        let timeout = args.shipper_shutdown_timeout;
        if tokio::time::timeout(timeout, mt.ship()).await.is_err() {
            tracing::warn!(
                timeout_s = timeout.as_secs(),
                "final upload did not finish within --shipper.shutdown-timeout; the rest ships at the next start"
            );
        }
    }
    drop(write_rt);
    let m = mt.clone();
    tokio::task::spawn_blocking(move || m.close())
        .await
        .context("closing TSDBs")?;
    tracing::info!("receiver stopped");
    Ok(())
}
