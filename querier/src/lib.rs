//! Global query view: StoreAPI fan-out, dedup, PromQL, Prometheus HTTP API and web UI.
//!
//! `orrery query` is [`run`]; an embedding process (e.g. `orrery standalone`) calls
//! [`run_with`] with its own shutdown signal.

pub mod api;
pub mod args;
pub mod downsample;
pub mod endpoints;
pub mod exemplars;
pub mod histograms;
pub mod metrics;
pub mod proxy;
pub mod sdconfig;
pub mod ui;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

pub use args::QueryArgs;
pub use endpoints::EndpointSet;
pub use proxy::{FanoutOptions, ProxyStorage};

/// Runs the querier until SIGTERM or Ctrl-C.
pub async fn run(args: QueryArgs) -> anyhow::Result<()> {
    run_with(args, shutdown_signal()).await
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Builds the shared state from the flags (reads only the `--grpc-client-tls-*` files).
pub fn build_state(args: &QueryArgs) -> anyhow::Result<Arc<api::AppState>> {
    let sd = match (&args.endpoint_sd_config, &args.endpoint_sd_config_file) {
        (Some(_), Some(_)) => anyhow::bail!(
            "--endpoint.sd-config and --endpoint.sd-config-file are mutually exclusive"
        ),
        (Some(text), None) => {
            // Inline: a broken config is a startup error, not a silent empty set.
            sdconfig::parse(text, &args.grpc_client_tls.options())
                .map_err(|e| anyhow::anyhow!("--endpoint.sd-config: {e}"))?;
            Some(endpoints::SdSource::Inline(text.clone()))
        }
        (None, Some(path)) => Some(endpoints::SdSource::File(path.clone())),
        (None, None) => None,
    };
    let endpoints = Arc::new(
        EndpointSet::new(args.endpoints.clone(), None, args.info_interval)
            .with_sd(sd)
            .with_tls_options(args.grpc_client_tls.options())
            .context("--grpc-client-tls-*")?,
    );
    let engine = promql::Engine::new(promql::EngineOptions {
        lookback_delta_ms: args.lookback_delta.as_millis() as i64,
        max_samples: args.max_samples,
        timeout: args.timeout,
        limits: promql::QueryLimits {
            max_length: args.max_query_length,
            max_depth: args.max_nesting_depth,
        },
    });
    let tenancy = tenancy::Tenancy {
        policy: netsec::TenantPolicy::new(
            &args.tenant_header,
            &args.default_tenant,
            &args.tenant_certificate_field,
        )
        .map_err(anyhow::Error::msg)
        .context("--query.tenant-header / --query.tenant-certificate-field")?,
        enforce: args.enforce_tenancy,
        conflict: args.tenant_matcher_conflict,
        label: args.tenant_label_name.clone(),
    };
    if !storeapi::labels::is_valid_label_name(&tenancy.label) {
        anyhow::bail!(
            "--query.tenant-label-name {:?} is not a valid label name",
            tenancy.label
        );
    }
    Ok(Arc::new(api::AppState {
        endpoints,
        engine,
        replica_labels: args.replica_labels.clone(),
        partial_response: args.partial_response,
        timeout: args.timeout,
        store_timeout: args.store_response_timeout,
        tenancy,
        gate: Arc::new(tokio::sync::Semaphore::new(args.max_concurrent.max(1))),
        metrics: metrics::Metrics::new(),
        ready: AtomicBool::new(false),
        auto_downsampling: args.auto_downsampling,
        flags: args.flag_values.clone(),
    }))
}

/// Runs the querier until `shutdown` resolves, then drains in-flight requests and returns.
/// Binds `args.http_address` (an empty `grpc_address` disables the gRPC listener).
pub async fn run_with(
    args: QueryArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = build_state(&args)?;
    let listener = tokio::net::TcpListener::bind(&args.http_address)
        .await
        .with_context(|| format!("binding HTTP address {}", args.http_address))?;
    tracing::info!(
        address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        endpoints = ?args.endpoints,
        replica_labels = ?args.replica_labels,
        "querier HTTP API and UI listening"
    );
    serve(state, listener, args, shutdown).await
}

/// Serves on an already bound listener (tests bind port 0 themselves).
pub async fn serve(
    state: Arc<api::AppState>,
    listener: tokio::net::TcpListener,
    args: QueryArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let http_sec = args
        .http_config
        .server()
        .context("--http.config")?
        .with_failure_counter(state.metrics.auth_failures.clone());
    let grpc_tls = args
        .grpc_tls
        .server_config()
        .context("--grpc-server-tls-*")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // First discovery round before reporting ready, so the first queries see the stores.
    state.endpoints.refresh().await;
    let discovery = tokio::spawn(
        state
            .endpoints
            .clone()
            .run(args.info_interval, stop_rx.clone()),
    );
    let grpc = if args.grpc_address.is_empty() {
        None
    } else {
        Some(tokio::spawn(grpc::serve(
            state.clone(),
            args.grpc_address.clone(),
            grpc_tls,
            stop_rx.clone(),
        )))
    };
    state.ready.store(true, Ordering::Relaxed);
    let app = http_sec.router(api::router(state.clone()));
    let st = state.clone();
    let stop = async move {
        shutdown.await;
        tracing::info!("querier shutting down");
        st.ready.store(false, Ordering::Relaxed);
        let _ = stop_tx.send(true);
    };
    // TCP_NODELAY is set per connection: answers are written in parts and small ones must
    // not wait for delayed ACKs (Nagle).
    let listener = http_sec.listener(listener);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<netsec::ConnInfo>(),
    )
    .with_graceful_shutdown(stop)
    .await
    .context("HTTP server")?;
    discovery.abort();
    if let Some(g) = grpc {
        match g.await {
            Ok(r) => r?,
            Err(e) => tracing::warn!(error = %e, "gRPC server task failed"),
        }
    }
    Ok(())
}

pub mod grpc;
pub mod tenancy;
