//! `rocketraft-broker`: runs one broker node until SIGTERM or SIGINT.

use clap::Parser;
use rocketraft_broker::config::BrokerArgs;
use rocketraft_broker::node::BrokerNode;
use tracing_subscriber::EnvFilter;

/// jemalloc rather than glibc's malloc: with glibc's per-thread arenas a node's resident set
/// grew well past what it used (filling a 1 M-message backlog: peaks of 254-305 MiB, of
/// which RocksDB's memtables and block cache held at most 118), as freed memory stayed
/// scattered over a dozen arenas. docs/benchmarks.md has the measurements.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
