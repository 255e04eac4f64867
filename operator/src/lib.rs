//! Kubernetes operator for ReceiveCluster and GlobalView resources.

/// Command-line flags of this component.
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArgs {}

/// Runs the component until it is asked to stop.
pub async fn run(_args: OperatorArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
