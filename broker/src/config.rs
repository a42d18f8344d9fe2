//! Broker node configuration: a TOML file, overridden by `ROCKETRAFT_*` environment
//! variables, overridden by command-line flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use serde::Deserialize;

/// Everything a broker node needs to start.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    pub node_id: u64,
    /// Name of the broker group this node belongs to.
    pub group: String,
    /// Address to listen on (Raft, admin and client traffic share it).
    pub listen: SocketAddr,
    /// Address peers and clients use to reach this node; defaults to `listen`.
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    /// Initial voters of the group: node id -> advertised address (this node included).
    pub members: BTreeMap<u64, String>,
    #[serde(default = "defaults::heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    #[serde(default = "defaults::election_timeout_min_ms")]
    pub election_timeout_min_ms: u64,
    #[serde(default = "defaults::election_timeout_max_ms")]
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    #[serde(default = "defaults::snapshot_logs_since_last")]
    pub snapshot_logs_since_last: u64,
    /// Log entries kept before a snapshot's index when the log is purged, so that a briefly
    /// lagging follower can catch up from the log instead of a full snapshot.
    #[serde(default = "defaults::log_keep_before_snapshot")]
    pub log_keep_before_snapshot: u64,
    /// Age of an unresolved transaction half message at which its producers are first
    /// asked to resolve it (RocketMQ: 6 s).
    #[serde(default = "defaults::transaction_check_first_ms")]
    pub transaction_check_first_ms: u64,
    /// Time between further checks of one half message.
    #[serde(default = "defaults::transaction_check_interval_ms")]
    pub transaction_check_interval_ms: u64,
    /// Checks after which an unresolved half message is rolled back (RocketMQ: 15).
    #[serde(default = "defaults::transaction_check_max")]
    pub transaction_check_max: u32,
    /// Nameservers this node reports to (any one at a time; they gossip). Empty: none.
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default = "defaults::nameserver_report_interval_ms")]
    pub nameserver_report_interval_ms: u64,
    /// Queues of a topic created on first use (a client's route query or send); 0 (the
    /// default) refuses unknown topics, as production setups should.
    #[serde(default)]
    pub auto_create_topic_queues: u32,
    /// Address of the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`); none if unset.
    #[serde(default)]
    pub http_listen: Option<SocketAddr>,
    /// How often the leader looks for messages past their topic's retention.
    #[serde(default = "defaults::retention_check_interval_ms")]
    pub retention_check_interval_ms: u64,
    /// New messages are refused while any member's data disk has less free space than
    /// this, so no node's storage ever fails for lack of space.
    #[serde(default = "defaults::disk_min_free_bytes")]
    pub disk_min_free_bytes: u64,
    /// This node joins a running group: it never initializes a membership of its own and
    /// waits for the group's leader to add it (`rocketraft broker add`). `members` may then
    /// be empty.
    #[serde(default)]
    pub join: bool,
    /// When the Raft log reaches the disk: `sync` (the default) fsyncs before an append
    /// counts towards the majority that acknowledges a send; `async` counts it once the
    /// operating system has it and fsyncs every `log_flush_interval_ms`. Faster, and safe
    /// against process crashes and the loss of a minority of machines, but a power failure
    /// of a majority within the interval can lose acknowledged sends.
    #[serde(default)]
    pub log_flush: LogFlushMode,
    #[serde(default = "defaults::log_flush_interval_ms")]
    pub log_flush_interval_ms: u64,
}

/// See [`BrokerConfig::log_flush`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFlushMode {
    #[default]
    Sync,
    Async,
}

impl BrokerConfig {
    /// The raft log's flush policy from `log_flush` and `log_flush_interval_ms`.
    pub fn log_flush(&self) -> rocketraft_raft_store::LogFlush {
        match self.log_flush {
            LogFlushMode::Sync => rocketraft_raft_store::LogFlush::Sync,
            LogFlushMode::Async => rocketraft_raft_store::LogFlush::Async {
                interval_ms: self.log_flush_interval_ms,
            },
        }
    }
}

mod defaults {
    pub fn heartbeat_interval_ms() -> u64 {
        100
    }
    // openraft makes followers refuse votes until election_timeout_max after the last
    // heartbeat (the leader lease), so one election round takes up to the max and a split
    // vote costs another. 500-1000 ms keeps two rounds inside the 3 s failover budget.
    pub fn election_timeout_min_ms() -> u64 {
        500
    }
    pub fn election_timeout_max_ms() -> u64 {
        1000
    }
    pub fn snapshot_logs_since_last() -> u64 {
        100_000
    }
    pub fn log_keep_before_snapshot() -> u64 {
        1_000
    }
    pub fn transaction_check_first_ms() -> u64 {
        6_000
    }
    pub fn transaction_check_interval_ms() -> u64 {
        6_000
    }
    pub fn transaction_check_max() -> u32 {
        15
    }
    pub fn nameserver_report_interval_ms() -> u64 {
        1_000
    }
    pub fn retention_check_interval_ms() -> u64 {
        10_000
    }
    pub fn disk_min_free_bytes() -> u64 {
        256 << 20
    }
    pub fn log_flush_interval_ms() -> u64 {
        1_000
    }
}

/// Command-line flags; each also reads a `ROCKETRAFT_*` environment variable.
#[derive(Debug, Parser, Default)]
#[command(
    name = "rocketraft-broker",
    version,
    about = "A rocketraft broker node (one member of a Raft broker group)"
)]
pub struct BrokerArgs {
    /// TOML config file; flags and ROCKETRAFT_* variables override its values.
    #[arg(long, env = "ROCKETRAFT_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "ROCKETRAFT_NODE_ID")]
    pub node_id: Option<u64>,
    #[arg(long, env = "ROCKETRAFT_GROUP")]
    pub group: Option<String>,
    #[arg(long, env = "ROCKETRAFT_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[arg(long, env = "ROCKETRAFT_ADVERTISE")]
    pub advertise: Option<String>,
    #[arg(long, env = "ROCKETRAFT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Initial members as `id=host:port,id=host:port,...`.
    #[arg(long, env = "ROCKETRAFT_MEMBERS")]
    pub members: Option<String>,
    #[arg(long, env = "ROCKETRAFT_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    #[arg(long, env = "ROCKETRAFT_ELECTION_TIMEOUT_MIN_MS")]
    pub election_timeout_min_ms: Option<u64>,
    #[arg(long, env = "ROCKETRAFT_ELECTION_TIMEOUT_MAX_MS")]
    pub election_timeout_max_ms: Option<u64>,
    #[arg(long, env = "ROCKETRAFT_SNAPSHOT_LOGS_SINCE_LAST")]
    pub snapshot_logs_since_last: Option<u64>,
    #[arg(long, env = "ROCKETRAFT_LOG_KEEP_BEFORE_SNAPSHOT")]
    pub log_keep_before_snapshot: Option<u64>,
    #[arg(long, env = "ROCKETRAFT_TRANSACTION_CHECK_FIRST_MS")]
    pub transaction_check_first_ms: Option<u64>,
    #[arg(long, env = "ROCKETRAFT_TRANSACTION_CHECK_INTERVAL_MS")]
    pub transaction_check_interval_ms: Option<u64>,
    #[arg(long, env = "ROCKETRAFT_TRANSACTION_CHECK_MAX")]
    pub transaction_check_max: Option<u32>,
    /// Nameservers to report to, comma-separated host:port.
    #[arg(long, env = "ROCKETRAFT_NAMESERVERS")]
    pub nameservers: Option<String>,
    #[arg(long, env = "ROCKETRAFT_NAMESERVER_REPORT_INTERVAL_MS")]
    pub nameserver_report_interval_ms: Option<u64>,
    /// Create unknown topics on first use with this many queues (0: off, the default).
    #[arg(long, env = "ROCKETRAFT_AUTO_CREATE_TOPIC_QUEUES")]
    pub auto_create_topic_queues: Option<u32>,
    /// HTTP endpoint for /metrics, /healthz and /readyz (host:port; off if unset).
    #[arg(long, env = "ROCKETRAFT_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    #[arg(long, env = "ROCKETRAFT_RETENTION_CHECK_INTERVAL_MS")]
    pub retention_check_interval_ms: Option<u64>,
    /// Refuse new messages while a member's disk has less free space [default: 268435456].
    #[arg(long, env = "ROCKETRAFT_DISK_MIN_FREE_BYTES")]
    pub disk_min_free_bytes: Option<u64>,
    /// Join a running group instead of initializing one: wait to be added by its leader.
    #[arg(long, env = "ROCKETRAFT_JOIN")]
    pub join: bool,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "ROCKETRAFT_LOG_JSON")]
    pub log_json: bool,
    /// When the Raft log reaches the disk: sync (fsync before an append counts; the
    /// default) or async (fsync every --log-flush-interval-ms; a power failure of a majority
    /// can lose acknowledged sends).
    #[arg(long, env = "ROCKETRAFT_LOG_FLUSH", value_enum)]
    pub log_flush: Option<LogFlushMode>,
    /// Background fsync interval of the async log flush [default: 1000].
    #[arg(long, env = "ROCKETRAFT_LOG_FLUSH_INTERVAL_MS")]
    pub log_flush_interval_ms: Option<u64>,
}

pub fn parse_members(s: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .with_context(|| format!("members: {part:?} is not of the form id=host:port"))?;
        let id: u64 = id
            .trim()
            .parse()
            .with_context(|| format!("members: node id {id:?} is not a number"))?;
        if out.insert(id, addr.trim().to_string()).is_some() {
            bail!("members: node id {id} appears twice");
        }
    }
    Ok(out)
}

/// The TOML file with every field optional, so that flags can fill the gaps.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<u64>,
    group: Option<String>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    data_dir: Option<PathBuf>,
    members: Option<BTreeMap<String, String>>,
    heartbeat_interval_ms: Option<u64>,
    election_timeout_min_ms: Option<u64>,
    election_timeout_max_ms: Option<u64>,
    snapshot_logs_since_last: Option<u64>,
    transaction_check_first_ms: Option<u64>,
    transaction_check_interval_ms: Option<u64>,
    transaction_check_max: Option<u32>,
    nameservers: Option<Vec<String>>,
    nameserver_report_interval_ms: Option<u64>,
    auto_create_topic_queues: Option<u32>,
    log_keep_before_snapshot: Option<u64>,
    http_listen: Option<SocketAddr>,
    join: Option<bool>,
    retention_check_interval_ms: Option<u64>,
    disk_min_free_bytes: Option<u64>,
    log_flush: Option<LogFlushMode>,
    log_flush_interval_ms: Option<u64>,
}

impl BrokerArgs {
    /// Merges file, environment and flags into a validated config.
    pub fn resolve(&self) -> anyhow::Result<BrokerConfig> {
        let file: FileConfig = match &self.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
        };
        let file_members = match file.members {
            None => None,
            Some(m) => {
                let mut out = BTreeMap::new();
                for (id, addr) in m {
                    let id: u64 = id.parse().with_context(|| {
                        format!("members: node id {id:?} in the config file is not a number")
                    })?;
                    out.insert(id, addr);
                }
                Some(out)
            }
        };
        let members = match &self.members {
            Some(s) => Some(parse_members(s)?),
            None => file_members,
        };
        let config = BrokerConfig {
            node_id: self
                .node_id
                .or(file.node_id)
                .context("node_id is required (--node-id)")?,
            group: self
                .group
                .clone()
                .or(file.group)
                .context("group is required (--group)")?,
            listen: self
                .listen
                .or(file.listen)
                .context("listen is required (--listen)")?,
            advertise: self.advertise.clone().or(file.advertise),
            data_dir: self
                .data_dir
                .clone()
                .or(file.data_dir)
                .context("data_dir is required (--data-dir)")?,
            members: match members {
                Some(m) => m,
                // A joining node learns the membership from the leader.
                None if self.join || file.join == Some(true) => BTreeMap::new(),
                None => anyhow::bail!("members is required (--members id=host:port,...)"),
            },
            heartbeat_interval_ms: self
                .heartbeat_interval_ms
                .or(file.heartbeat_interval_ms)
                .unwrap_or_else(defaults::heartbeat_interval_ms),
            election_timeout_min_ms: self
                .election_timeout_min_ms
                .or(file.election_timeout_min_ms)
                .unwrap_or_else(defaults::election_timeout_min_ms),
            election_timeout_max_ms: self
                .election_timeout_max_ms
                .or(file.election_timeout_max_ms)
                .unwrap_or_else(defaults::election_timeout_max_ms),
            snapshot_logs_since_last: self
                .snapshot_logs_since_last
                .or(file.snapshot_logs_since_last)
                .unwrap_or_else(defaults::snapshot_logs_since_last),
            log_keep_before_snapshot: self
                .log_keep_before_snapshot
                .or(file.log_keep_before_snapshot)
                .unwrap_or_else(defaults::log_keep_before_snapshot),
            transaction_check_first_ms: self
                .transaction_check_first_ms
                .or(file.transaction_check_first_ms)
                .unwrap_or_else(defaults::transaction_check_first_ms),
            transaction_check_interval_ms: self
                .transaction_check_interval_ms
                .or(file.transaction_check_interval_ms)
                .unwrap_or_else(defaults::transaction_check_interval_ms),
            transaction_check_max: self
                .transaction_check_max
                .or(file.transaction_check_max)
                .unwrap_or_else(defaults::transaction_check_max),
            nameservers: match &self.nameservers {
                Some(list) => list
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect(),
                None => file.nameservers.unwrap_or_default(),
            },
            nameserver_report_interval_ms: self
                .nameserver_report_interval_ms
                .or(file.nameserver_report_interval_ms)
                .unwrap_or_else(defaults::nameserver_report_interval_ms),
            auto_create_topic_queues: self
                .auto_create_topic_queues
                .or(file.auto_create_topic_queues)
                .unwrap_or(0),
            http_listen: self.http_listen.or(file.http_listen),
            retention_check_interval_ms: self
                .retention_check_interval_ms
                .or(file.retention_check_interval_ms)
                .unwrap_or_else(defaults::retention_check_interval_ms),
            disk_min_free_bytes: self
                .disk_min_free_bytes
                .or(file.disk_min_free_bytes)
                .unwrap_or_else(defaults::disk_min_free_bytes),
            join: self.join || file.join.unwrap_or(false),
            log_flush: self.log_flush.or(file.log_flush).unwrap_or_default(),
            log_flush_interval_ms: self
                .log_flush_interval_ms
                .or(file.log_flush_interval_ms)
                .unwrap_or_else(defaults::log_flush_interval_ms),
        };
        config.validate()?;
        Ok(config)
    }
}

impl BrokerConfig {
    pub fn advertised_addr(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        rocketraft_raft_store::limits::validate_name("group", &self.group)?;
        if !self.join && !self.members.contains_key(&self.node_id) {
            bail!(
                "members must include this node (node_id {}); got ids {:?}",
                self.node_id,
                self.members.keys().collect::<Vec<_>>()
            );
        }
        if self.heartbeat_interval_ms == 0
            || self.heartbeat_interval_ms >= self.election_timeout_min_ms
        {
            bail!(
                "heartbeat_interval_ms ({}) must be above 0 and below election_timeout_min_ms ({})",
                self.heartbeat_interval_ms,
                self.election_timeout_min_ms
            );
        }
        if self.election_timeout_min_ms >= self.election_timeout_max_ms {
            bail!(
                "election_timeout_min_ms ({}) must be below election_timeout_max_ms ({})",
                self.election_timeout_min_ms,
                self.election_timeout_max_ms
            );
        }
        if self.log_flush_interval_ms == 0 {
            bail!("log_flush_interval_ms must be at least 1");
        }
        if self.retention_check_interval_ms == 0 {
            bail!("retention_check_interval_ms must be at least 1");
        }
        if self.snapshot_logs_since_last == 0 {
            bail!("snapshot_logs_since_last must be at least 1");
        }
        if self.auto_create_topic_queues > rocketraft_raft_store::limits::QUEUE_COUNT_MAX {
            bail!(
                "auto_create_topic_queues ({}) must be at most {}",
                self.auto_create_topic_queues,
                rocketraft_raft_store::limits::QUEUE_COUNT_MAX
            );
        }
        if self.nameserver_report_interval_ms == 0 {
            bail!("nameserver_report_interval_ms must be at least 1");
        }
        if self.transaction_check_interval_ms < 100 || self.transaction_check_max == 0 {
            bail!(
                "transaction_check_interval_ms ({}) must be at least 100 and transaction_check_max ({}) at least 1",
                self.transaction_check_interval_ms,
                self.transaction_check_max
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_file_fills_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(
            &path,
            r#"
node_id = 1
group = "g1"
listen = "127.0.0.1:8081"
data_dir = "/tmp/x"
heartbeat_interval_ms = 100
log_flush = "async"
[members]
1 = "127.0.0.1:8081"
2 = "127.0.0.1:8082"
"#,
        )
        .unwrap();
        let args = BrokerArgs {
            config: Some(path),
            node_id: Some(2),
            listen: Some("127.0.0.1:8082".parse().unwrap()),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.group, "g1");
        assert_eq!(c.heartbeat_interval_ms, 100);
        assert_eq!(c.election_timeout_min_ms, 500);
        assert_eq!(c.members.len(), 2);
        assert_eq!(c.advertised_addr(), "127.0.0.1:8082");
        assert_eq!(
            c.log_flush(),
            rocketraft_raft_store::LogFlush::Async { interval_ms: 1000 },
            "the file asks for async flushing with the default interval"
        );
        let defaults = BrokerArgs {
            node_id: Some(1),
            group: Some("g".into()),
            listen: Some("127.0.0.1:1".parse().unwrap()),
            data_dir: Some("/tmp/x".into()),
            members: Some("1=a:1".into()),
            ..Default::default()
        };
        assert_eq!(
            defaults.resolve().unwrap().log_flush(),
            rocketraft_raft_store::LogFlush::Sync,
            "fsync before ack unless asked otherwise"
        );
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let base = || BrokerArgs {
            node_id: Some(3),
            group: Some("g".into()),
            listen: Some("127.0.0.1:1".parse().unwrap()),
            data_dir: Some("/tmp/x".into()),
            members: Some("1=a:1,2=b:2".into()),
            ..Default::default()
        };
        let err = base().resolve().unwrap_err().to_string();
        assert!(err.contains("members must include this node"), "{err}");
        let mut a = base();
        a.members = Some("1=a:1,1=b:2".into());
        assert!(
            a.resolve()
                .unwrap_err()
                .to_string()
                .contains("appears twice")
        );
        let mut a = base();
        a.members = Some("3=a:1".into());
        a.heartbeat_interval_ms = Some(5000);
        assert!(
            a.resolve()
                .unwrap_err()
                .to_string()
                .contains("heartbeat_interval_ms")
        );
    }
}
