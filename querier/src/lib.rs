//! Global query view: StoreAPI fan-out, dedup, PromQL, Prometheus HTTP API and web UI.

/// Command-line flags of this component.
#[derive(Debug, Clone, clap::Args)]
pub struct QueryArgs {}

/// Runs the component until it is asked to stop.
pub async fn run(_args: QueryArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
