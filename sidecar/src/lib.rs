//! `orrery sidecar`: Thanos's sidecar. Stands next to a Prometheus the querier can reach,
//! serves its data over the StoreAPI and ships its blocks to a bucket.
//!
//! - [`args`]: the command line (Thanos Sidecar's flag names and defaults).
//! - [`prom`]: the Prometheus HTTP client (config, flags, label/series APIs, remote read).
//! - [`meta`]: external labels and lowest timestamp, refreshed every
//!   `--prometheus.get_config_interval`; a failed refresh makes the sidecar unready.
//! - [`chunked`]: the streamed remote-read framing.
//! - [`store`]: `thanos.Store` and `thanos.info.Info` over remote read (raw XOR chunks
//!   passed through) and the label APIs.
//! - [`ship`]: with a bucket, Prometheus's 2h blocks are uploaded with
//!   `objstore::Shipper` (meta `source: sidecar`), after checking Prometheus does not
//!   compact them.
//! - HTTP: `/metrics`, `/-/healthy`, `/-/ready` (ready while Prometheus answers and has
//!   external labels).

pub mod args;
pub mod chunked;
pub mod local;
pub mod meta;
pub mod prom;
pub mod ship;
pub mod store;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

pub use args::SidecarArgs;

use crate::meta::{PromMeta, RefreshError};
use crate::prom::PromClient;
use crate::store::SidecarStore;

struct Ops {
    registry: Arc<Mutex<Registry>>,
    meta: Arc<PromMeta>,
    /// Set once the StoreAPI serves (after `--tsdb.local-read` has read Prometheus's
    /// data directory, which can take a while for a large WAL).
    serving: Arc<AtomicBool>,
}

fn ops_router(ops: Arc<Ops>) -> Router {
    let meta = Arc::clone(&ops.meta);
    let serving = Arc::clone(&ops.serving);
    netsec::ops::ops_router(Arc::clone(&ops.registry), move || {
        if !serving.load(Ordering::Acquire) {
            Err("the StoreAPI is not serving yet (with --tsdb.local-read: reading Prometheus's data directory)".into())
        } else if meta.is_ready() {
            Ok(())
        } else {
            Err(meta.reason())
        }
    })
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

/// Retries the first metadata read until it succeeds or `timeout` passes. A Prometheus
/// that answers but has no external labels is a configuration error: no retry.
async fn initial_load(
    client: &PromClient,
    meta: &PromMeta,
    timeout: Duration,
    call_timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match meta.refresh(client, call_timeout).await {
            Ok(()) => return Ok(()),
            Err(RefreshError::NoExternalLabels) => {
                anyhow::bail!("{}", meta::NO_EXTERNAL_LABELS)
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| {
                    format!(
                        "Prometheus at {} not reachable within --prometheus.ready_timeout={timeout:?}",
                        client.base()
                    )
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "failed to fetch initial external labels; is Prometheus running? retrying")
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Reads Prometheus's flags (retrying until `timeout`) and checks its block durations.
async fn validate_for_shipping(client: &PromClient, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let flags = loop {
        match client.flags().await {
            Ok(f) => break f,
            Err(e) if Instant::now() >= deadline => {
                return Err(e).context("fetching Prometheus's flags to check its block durations");
            }
            Err(e) => {
                tracing::warn!(error = %e, "failed to get Prometheus flags; is Prometheus running? retrying")
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    ship::check_block_durations(&flags).map_err(anyhow::Error::msg)
}

/// Prometheus's block duration (`--storage.tsdb.min-block-duration`): the chunk range
/// of a followed head. 2h (the default) when Prometheus does not say.
async fn block_duration(client: &PromClient, timeout: Duration) -> Duration {
    const DEFAULT: Duration = Duration::from_secs(2 * 3600);
    let flags = match tokio::time::timeout(timeout, client.flags()).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read Prometheus's flags; assuming 2h blocks");
            return DEFAULT;
        }
        Err(_) => return DEFAULT,
    };
    match flags
        .get(ship::MIN_FLAG)
        .map(|v| objstore::config::parse_model_duration(v))
    {
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "Prometheus's block duration does not parse; assuming 2h");
            DEFAULT
        }
        None => DEFAULT,
    }
}

/// Runs the sidecar until SIGTERM/SIGINT.
pub async fn run(args: SidecarArgs) -> anyhow::Result<()> {
    let registry = Arc::new(Mutex::new(Registry::default()));
    let client = PromClient::new(&args.prometheus_url)?;
    let bucket = match objstore::BucketConfig::from_flags(
        args.objstore_config_file.as_deref(),
        args.objstore_config.as_deref(),
    )
    .context("invalid --objstore.config / --objstore.config-file")?
    {
        Some(cfg) => {
            let mut r = registry.lock().unwrap_or_else(|e| e.into_inner());
            Some(
                objstore::Bucket::new(&cfg, Some(&mut r))
                    .context("setting up the bucket from --objstore.config")?,
            )
        }
        None => {
            tracing::info!("no --objstore.config: blocks are not uploaded");
            None
        }
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
        prometheus = %client.base(), "starting sidecar");

    let meta = Arc::new(PromMeta::default());
    let prom_up: Gauge<i64, AtomicI64> = Gauge::default();
    registry.lock().unwrap_or_else(|e| e.into_inner()).register(
        "thanos_sidecar_prometheus_up",
        "Boolean indicator whether the sidecar can reach its Prometheus peer",
        prom_up.clone(),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let serving = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(Ops {
        registry: registry.clone(),
        meta: meta.clone(),
        serving: serving.clone(),
    });
    let http = tokio::spawn(
        axum::serve(
            http_sec.listener(http_listener),
            http_sec.router(ops_router(ops)),
        )
        .with_graceful_shutdown(stopped(stop_rx.clone()))
        .into_future(),
    );

    // Prometheus first: nothing is served before its external labels are known.
    tokio::select! {
        r = initial_load(&client, &meta, args.prometheus_ready_timeout, args.get_config_timeout) => r?,
        _ = shutdown_signal() => {
            let _ = stop_tx.send(true);
            let _ = http.await;
            return Ok(());
        }
    }
    prom_up.set(1);
    tracing::info!(external_labels = %meta.labels(), min_time = meta.min_time(),
        "successfully loaded Prometheus external labels");
    if bucket.is_some() {
        validate_for_shipping(&client, args.prometheus_ready_timeout).await?;
    }

    let refresh = {
        let (client, meta, mut stop) = (client.clone(), meta.clone(), stop_rx.clone());
        let (every, timeout) = (args.get_config_interval, args.get_config_timeout);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                match meta.refresh(&client, timeout).await {
                    Ok(()) => {
                        prom_up.set(1);
                    }
                    Err(e) => {
                        prom_up.set(0);
                        tracing::warn!(error = %e, "refreshing Prometheus's external labels failed; sidecar unready");
                    }
                }
            }
        })
    };

    let local = if args.local_read {
        let duration = block_duration(&client, args.prometheus_ready_timeout).await;
        let dir = args.tsdb_path.clone();
        let reg = registry.clone();
        let l = tokio::task::spawn_blocking(move || {
            let mut r = reg.lock().unwrap_or_else(|e| e.into_inner());
            local::LocalRead::open(&dir, duration, &mut r)
        })
        .await
        .context("local read: loading task failed")?
        .with_context(|| {
            format!(
                "--tsdb.local-read: cannot read Prometheus's data directory {} (--tsdb.path)",
                args.tsdb_path.display()
            )
        })?;
        Some(l)
    } else {
        None
    };
    let following = local
        .clone()
        .map(|l| tokio::spawn(l.follow_loop(stop_rx.clone())));

    let st = SidecarStore {
        client: client.clone(),
        meta: meta.clone(),
        local,
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<storeapi::wire::thanos::store_server::StoreServer<SidecarStore>>()
        .await;
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(storeapi::wire::store_service::StoreService::new(st.clone()))
            .add_service(storeapi::wire::info::info_server::InfoServer::new(st))
            .serve_with_incoming_shutdown(
                netsec::Listener::new(grpc_listener, grpc_tls).into_incoming(),
                stopped(stop_rx.clone()),
            ),
    );
    serving.store(true, Ordering::Release);
    let shipping = bucket.map(|b| {
        tokio::spawn(ship::ship_loop(
            b,
            args.tsdb_path.clone(),
            meta.clone(),
            registry.clone(),
            ship::SHIP_INTERVAL,
            args.upload_compacted,
            stop_rx.clone(),
        ))
    });

    shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = refresh.await;
    if let Some(f) = following {
        let _ = f.await;
    }
    if let Some(s) = shipping {
        let _ = s.await;
    }
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
    tracing::info!("sidecar stopped");
    Ok(())
}
