//! What a nameserver exposes on its HTTP endpoint ([`rocketraft_broker::ops`]): gossip
//! rounds and exchanges, the route table's size and each broker node's report version, and
//! readiness.
//!
//! Ready means: this nameserver has exchanged gossip with a peer recently (or has no peers),
//! so the routes it answers with are not those of a nameserver cut off from the others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::server::State;

/// Gossip counters the gossip loop updates (prometheus counters are atomics).
pub struct GossipStats {
    pub rounds: IntCounter,
    pub exchanges: IntCounterVec,
    /// When an exchange with a peer last succeeded.
    pub last_ok: std::sync::Mutex<Option<Instant>>,
}

impl GossipStats {
    pub fn new() -> Self {
        Self {
            rounds: IntCounter::new("rocketraft_ns_gossip_rounds_total", "Gossip rounds run")
                .expect("a valid metric name"),
            exchanges: IntCounterVec::new(
                Opts::new(
                    "rocketraft_ns_gossip_exchanges_total",
                    "Gossip exchanges with peers by result",
                ),
                &["result"],
            )
            .expect("a valid metric name"),
            last_ok: std::sync::Mutex::new(None),
        }
    }

    pub fn exchanged(&self, ok: bool) {
        self.exchanges
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
        if ok {
            *self.last_ok.lock().expect("lock poisoned") = Some(Instant::now());
        }
    }
}

impl Default for GossipStats {
    fn default() -> Self {
        Self::new()
    }
}

pub struct NameserverMetrics {
    registry: Registry,
    pub rpc: HistogramVec,
    state: Arc<State>,
    /// No successful exchange for this long makes the nameserver unready.
    stale_after: Duration,
    nodes: IntGaugeVec,
    groups: IntGauge,
    topics: IntGauge,
    versions: IntGaugeVec,
}

impl NameserverMetrics {
    pub fn new(state: Arc<State>, gossip_interval: Duration) -> prometheus::Result<Self> {
        let r = Registry::new();
        let rpc = rocketraft_broker::ops::rpc_histogram(&r)?;
        let nodes = IntGaugeVec::new(
            Opts::new(
                "rocketraft_ns_broker_nodes",
                "Broker nodes in the route table by state",
            ),
            &["state"],
        )?;
        let groups = IntGauge::new(
            "rocketraft_ns_broker_groups",
            "Broker groups with a live node",
        )?;
        let topics = IntGauge::new("rocketraft_ns_topics", "Topics routed")?;
        let versions = IntGaugeVec::new(
            Opts::new(
                "rocketraft_ns_report_version",
                "Counter of the newest report held per broker node (grows with every report)",
            ),
            &["group", "node"],
        )?;
        r.register(Box::new(state.gossip.rounds.clone()))?;
        r.register(Box::new(state.gossip.exchanges.clone()))?;
        r.register(Box::new(nodes.clone()))?;
        r.register(Box::new(groups.clone()))?;
        r.register(Box::new(topics.clone()))?;
        r.register(Box::new(versions.clone()))?;
        Ok(Self {
            registry: r,
            rpc,
            state,
            stale_after: (gossip_interval * 10).max(Duration::from_secs(3)),
            nodes,
            groups,
            topics,
            versions,
        })
    }

    fn refresh(&self) {
        let groups = self.state.groups();
        let live: usize = groups.iter().map(|g| g.live.len()).sum();
        let down: usize = groups.iter().map(|g| g.down.len()).sum();
        self.nodes.with_label_values(&["live"]).set(live as i64);
        self.nodes.with_label_values(&["down"]).set(down as i64);
        self.groups
            .set(groups.iter().filter(|g| !g.live.is_empty()).count() as i64);
        let mut topics: Vec<&str> = groups
            .iter()
            .filter_map(|g| g.authority())
            .flat_map(|a| a.topics.iter().map(|t| t.name.as_str()))
            .collect();
        topics.sort_unstable();
        topics.dedup();
        self.topics.set(topics.len() as i64);
        self.versions.reset();
        for d in self.state.registry.lock().expect("lock poisoned").digests() {
            self.versions
                .with_label_values(&[d.group.as_str(), d.node_id.to_string().as_str()])
                .set(d.version.map_or(0, |v| v.counter) as i64);
        }
    }

    fn check_ready(&self) -> Result<String, String> {
        if self.state.peers.is_empty() {
            return Ok("no peers to gossip with".into());
        }
        let last = *self.state.gossip.last_ok.lock().expect("lock poisoned");
        let Some(last) = last else {
            return Err(format!(
                "no gossip exchange with any of {} peers yet",
                self.state.peers.len()
            ));
        };
        let ago = last.elapsed();
        if ago > self.stale_after {
            return Err(format!(
                "no gossip exchange with a peer for {} ms",
                ago.as_millis()
            ));
        }
        Ok(format!("gossiped {} ms ago", ago.as_millis()))
    }
}

impl rocketraft_broker::ops::Probe for NameserverMetrics {
    fn gather(&self) -> BoxFuture<'_, Vec<prometheus::proto::MetricFamily>> {
        Box::pin(async move {
            self.refresh();
            self.registry.gather()
        })
    }

    fn ready(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move { self.check_ready() })
    }
}
