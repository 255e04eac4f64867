//! Kubernetes operator for ReceiveCluster and GlobalView resources.
//!
//! - [`crd`]: the custom resources (CRDs derived from Rust types).
//! - [`receive`], [`query`]: pure functions building the desired child objects.
//! - [`sidecar`]: adding/removing an `orrery sidecar` container in a Prometheus CR.
//! - [`remote_write`]: upsert/removal of our remote_write entry in a Prometheus CR or
//!   a prometheus.yml.
//! - [`controller`]: the two reconcilers; [`leader`]: Lease-based leader election;
//!   [`metrics`]: `/metrics` and `/healthz`; [`probe`]: HTTP calls to workloads.

pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod probe;
pub mod query;
pub mod receive;
pub mod remote_cluster;
pub mod remote_write;
pub mod schema_check;
pub mod sidecar;
pub mod tls;
pub mod yaml;
pub mod yml_text;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};

use crate::controller::Context;
use crate::crd::{GlobalView, ReceiveCluster};
use crate::receive::{LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME, MANAGER};

/// Command-line flags of this component.
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArgs {
    #[command(subcommand)]
    pub command: Option<OperatorCommand>,
    /// Image (with the `orrery` binary) for receivers and queriers whose spec sets none.
    #[arg(long, env = "ORRERY_OPERATOR_IMAGE", default_value = "orrery:latest")]
    pub image: String,
    /// Address of `/metrics` and `/healthz`.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http_address: SocketAddr,
    /// Run without leader election (only with a single replica).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    #[arg(long, default_value = "orrery-operator-leader")]
    pub lease_name: String,
    /// Identity in the Lease; the pod name.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

/// `orrery operator <command>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum OperatorCommand {
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
}

/// Runs the component until it is asked to stop.
pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    if let Some(OperatorCommand::Crds) = args.command {
        print!("{}", crd::all_crds_yaml()?);
        return Ok(());
    }
    let client = Client::try_default().await?;
    let metrics = Arc::new(metrics::Metrics::new());
    let listener = tokio::net::TcpListener::bind(args.http_address).await?;
    tracing::info!(address = %args.http_address, "serving /metrics and /healthz");
    let app = metrics::router(metrics.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });

    let elector = (!args.no_leader_election).then(|| {
        let identity = args.identity.clone().unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            leader::default_identity(std::env::var("HOSTNAME").ok(), std::process::id(), nanos)
        });
        leader::LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
            args.lease_name.clone(),
            identity,
            Duration::from_secs(15),
        )
    });
    if let Some(e) = &elector {
        tracing::info!(lease = %e.name, identity = %e.identity, "waiting for leadership");
        if !e.acquire_or_shutdown(shutdown_signal()).await {
            tracing::info!("shutdown while waiting for leadership");
            return Ok(());
        }
        tracing::info!("leading");
        metrics.leader.set(1);
    }

    let ctx = Arc::new(Context::new(
        client.clone(),
        args.image.clone(),
        metrics.clone(),
        Arc::new(probe::HttpProbe::default()),
    ));
    let controllers = run_controllers(client, ctx);
    match &elector {
        Some(e) => {
            tokio::select! {
                _ = controllers => {
                    // Shutdown: hand the lease over now, not after it expires.
                    match e.release().await {
                        Ok(true) => tracing::info!(lease = %e.name, "released the lease"),
                        Ok(false) => {}
                        Err(err) => tracing::warn!(lease = %e.name, error = %err, "could not release the lease"),
                    }
                }
                _ = e.hold() => {
                    metrics.leader.set(0);
                    anyhow::bail!("lost the leader lease; exiting so another replica takes over");
                }
            }
        }
        None => controllers.await,
    }
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C (what `shutdown_on_signal` of the controllers waits
/// for), for the phase before the controllers run.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn managed() -> watcher::Config {
    watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"))
}

/// Runs both controllers until a shutdown signal.
pub async fn run_controllers(client: Client, ctx: Arc<Context>) {
    let receive = Controller::new(
        Api::<ReceiveCluster>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<StatefulSet>::all(client.clone()), managed())
    .owns(Api::<Service>::all(client.clone()), managed())
    .owns(Api::<ConfigMap>::all(client.clone()), managed())
    .owns(Api::<PodDisruptionBudget>::all(client.clone()), managed())
    // Pods belong to the StatefulSet, not to us: map them to their ReceiveCluster so
    // the hashring follows readiness.
    .watches(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default()
            .labels(&format!("{LABEL_NAME}=orrery,{LABEL_COMPONENT}=receive")),
        |pod| {
            let ns = pod.namespace()?;
            let rc = pod.labels().get(LABEL_INSTANCE)?.clone();
            Some(ObjectRef::<ReceiveCluster>::new(&rc).within(&ns))
        },
    )
    .shutdown_on_signal()
    .run(
        controller::receive::reconcile,
        controller::receive::error_policy,
        ctx.clone(),
    )
    .for_each(|res| async move {
        match res {
            Ok((obj, _)) => tracing::debug!(%obj, "reconciled"),
            Err(e) => tracing::debug!(error = %e, "receivecluster controller event"),
        }
    });

    let gv_controller = Controller::new(
        Api::<GlobalView>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = gv_controller.store();
    let global = gv_controller
        .owns(Api::<Deployment>::all(client.clone()), managed())
        // A ReceiveCluster change (new one, or its status URL) rewires the views of its namespace.
        .watches(
            Api::<ReceiveCluster>::all(client),
            watcher::Config::default(),
            move |rc| {
                let ns = rc.namespace();
                store
                    .state()
                    .into_iter()
                    .filter(|gv| gv.namespace() == ns)
                    .map(|gv| ObjectRef::from_obj(&*gv))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(
            controller::global_view::reconcile,
            controller::global_view::error_policy,
            ctx,
        )
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(%obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "globalview controller event"),
            }
        });
    futures::join!(receive, global);
}
