//! The one `orrery` binary: wires subcommands to the service crates.

mod standalone;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "orrery",
    version,
    about = "A global view over many Prometheus servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Parsed once at startup, so the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Accept Prometheus remote write and serve it over the Thanos StoreAPI.
    Receive(receiver::ReceiveArgs),
    /// Fan queries out over StoreAPI endpoints and serve the Prometheus HTTP API and UI.
    Query(querier::QueryArgs),
    /// Reconcile ReceiveCluster and GlobalView resources on Kubernetes.
    Operator(operator::OperatorArgs),
    /// Receiver + querier in one process with defaults: the quickest way to a global view.
    Standalone(standalone::StandaloneArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Receive(args) => receiver::run(args).await,
            Command::Query(args) => querier::run(args).await,
            Command::Operator(args) => operator::run(args).await,
            Command::Standalone(args) => standalone::run(args).await,
        }
    })
}
