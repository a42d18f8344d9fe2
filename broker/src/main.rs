//! `rocketraft-broker`: runs one broker node until SIGTERM or SIGINT.

use clap::Parser;
use rocketraft_broker::config::BrokerArgs;
use rocketraft_broker::node::BrokerNode;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = BrokerArgs::parse();
    let filter = EnvFilter::try_from_env("ROCKETRAFT_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let config = args.resolve()?;
    let node = BrokerNode::start(config).await?;
    wait_for_signal().await?;
    tracing::info!("shutdown requested");
    node.shutdown().await
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
