//! `rocketraft-nameserver`: runs one nameserver until SIGTERM or SIGINT.

use clap::Parser;
use rocketraft_nameserver::config::NameserverArgs;
use rocketraft_nameserver::server::Nameserver;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = NameserverArgs::parse();
    let filter =
        EnvFilter::try_from_env("ROCKETRAFT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let ns = Nameserver::start(args.resolve()?).await?;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutdown requested");
    ns.shutdown().await
}
