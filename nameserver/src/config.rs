//! Nameserver configuration: a TOML file, overridden by `ROCKETRAFT_NS_*` environment
//! variables, overridden by command-line flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq)]
pub struct NameserverConfig {
    pub listen: SocketAddr,
    /// How peers, brokers and clients reach this nameserver; defaults to `listen`.
    pub advertise: Option<String>,
    /// Other nameservers (host:port); joining late needs only one that is up.
    pub peers: Vec<String>,
    pub gossip_interval_ms: u64,
    /// Peers gossiped with per round.
    pub gossip_fanout: usize,
    /// A broker node not heard from (through any nameserver) for this long is down.
    pub expiry_ms: u64,
    /// Queues per group of a topic created on a client's first route query; 0 (the default)
    /// answers TOPIC_NOT_FOUND instead.
    pub auto_create_topic_queues: u32,
    /// Address of the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`); none if unset.
    pub http_listen: Option<SocketAddr>,
}

impl NameserverConfig {
    pub fn advertised_addr(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    peers: Option<Vec<String>>,
    gossip_interval_ms: Option<u64>,
    gossip_fanout: Option<usize>,
    expiry_ms: Option<u64>,
    auto_create_topic_queues: Option<u32>,
    http_listen: Option<SocketAddr>,
}

#[derive(Debug, Parser, Default)]
#[command(
    name = "rocketraft-nameserver",
    version,
    about = "A rocketraft nameserver: route registry for brokers and clients, gossiped among nameservers"
)]
pub struct NameserverArgs {
    /// TOML config file; flags and ROCKETRAFT_NS_* variables override its values.
    #[arg(long, env = "ROCKETRAFT_NS_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "ROCKETRAFT_NS_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[arg(long, env = "ROCKETRAFT_NS_ADVERTISE")]
    pub advertise: Option<String>,
    /// Peer nameservers, comma-separated host:port.
    #[arg(long, env = "ROCKETRAFT_NS_PEERS")]
    pub peers: Option<String>,
    /// Time between gossip rounds [default: 250].
    #[arg(long, env = "ROCKETRAFT_NS_GOSSIP_INTERVAL_MS")]
    pub gossip_interval_ms: Option<u64>,
    /// Peers per gossip round [default: 2].
    #[arg(long, env = "ROCKETRAFT_NS_GOSSIP_FANOUT")]
    pub gossip_fanout: Option<usize>,
    /// Broker node expiry [default: 10000].
    #[arg(long, env = "ROCKETRAFT_NS_EXPIRY_MS")]
    pub expiry_ms: Option<u64>,
    /// Create unknown topics on every available group on first use, with this many queues
    /// per group [default: 0, off].
    #[arg(long, env = "ROCKETRAFT_NS_AUTO_CREATE_TOPIC_QUEUES")]
    pub auto_create_topic_queues: Option<u32>,
    /// HTTP endpoint for /metrics, /healthz and /readyz (host:port; off if unset).
    #[arg(long, env = "ROCKETRAFT_NS_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Log as JSON lines.
    #[arg(long, env = "ROCKETRAFT_NS_LOG_JSON")]
    pub log_json: bool,
}

impl NameserverArgs {
    pub fn resolve(&self) -> anyhow::Result<NameserverConfig> {
        let file: FileConfig = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let config = NameserverConfig {
            listen: self
                .listen
                .or(file.listen)
                .context("listen is required (--listen host:port)")?,
            advertise: self.advertise.clone().or(file.advertise),
            peers: match &self.peers {
                Some(list) => list
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect(),
                None => file.peers.unwrap_or_default(),
            },
            gossip_interval_ms: self
                .gossip_interval_ms
                .or(file.gossip_interval_ms)
                .unwrap_or(250),
            gossip_fanout: self.gossip_fanout.or(file.gossip_fanout).unwrap_or(2),
            expiry_ms: self.expiry_ms.or(file.expiry_ms).unwrap_or(10_000),
            auto_create_topic_queues: self
                .auto_create_topic_queues
                .or(file.auto_create_topic_queues)
                .unwrap_or(0),
            http_listen: self.http_listen.or(file.http_listen),
        };
        if config.gossip_interval_ms == 0 || config.gossip_fanout == 0 {
            bail!("gossip_interval_ms and gossip_fanout must be at least 1");
        }
        if config.expiry_ms <= 2 * config.gossip_interval_ms {
            bail!(
                "expiry_ms ({}) must exceed two gossip intervals ({} ms each)",
                config.expiry_ms,
                config.gossip_interval_ms
            );
        }
        Ok(config)
    }
}
