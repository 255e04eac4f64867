//! Remote-write receiver: durable multi-tenant TSDB served over the Thanos StoreAPI.

/// Command-line flags of this component.
#[derive(Debug, Clone, clap::Args)]
pub struct ReceiveArgs {}

/// Runs the component until it is asked to stop.
pub async fn run(_args: ReceiveArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
