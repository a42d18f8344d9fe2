//! What a broker node exposes on its HTTP endpoint ([`crate::ops`]): Prometheus metrics,
//! read from Raft's metrics and the applied state at scrape time, and readiness.
//!
//! Ready means: the group has a leader that a majority still follows, and this node has
//! applied everything that leader had committed when the probe asked. A node catching up
//! after a restart, or cut off from its group, is live but not ready.

use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::ServerState;
use prometheus::{HistogramVec, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use rocketraft_proto::admin as pb;
use rocketraft_raft_store::{Raft, StateReader};

use crate::proposer::Proposer;

/// How long a readiness probe may take before it answers "not ready".
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub struct BrokerMetrics {
    registry: Registry,
    pub rpc: HistogramVec,
    raft: Raft,
    reader: StateReader,
    proposer: Proposer,
    data_dir: PathBuf,
    /// Serialises scrapes: each one resets and refills the labelled gauges.
    scrape: tokio::sync::Mutex<()>,
    gauges: Gauges,
}

struct Gauges {
    term: IntGauge,
    is_leader: IntGauge,
    leader_id: IntGauge,
    last_log_index: IntGauge,
    commit_index: IntGauge,
    applied_index: IntGauge,
    snapshot_index: IntGauge,
    purged_index: IntGauge,
    voters: IntGauge,
    replication_lag: IntGaugeVec,
    elections: IntCounter,
    leader_changes: IntCounter,
    proposals_in_flight: IntGauge,
    storage_bytes: IntGaugeVec,
    storage_memory_bytes: IntGaugeVec,
    appended: IntGauge,
    delivered: IntGauge,
    acked: IntGauge,
    queue_offset: IntGaugeVec,
    consumer_lag: IntGaugeVec,
    consumer_inflight: IntGaugeVec,
}

fn gauge(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Gauges {
    fn new(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            term: gauge(r, "rocketraft_raft_term", "Current Raft term")?,
            is_leader: gauge(r, "rocketraft_raft_is_leader", "1 on the group's leader")?,
            leader_id: gauge(
                r,
                "rocketraft_raft_leader_id",
                "Node id of the leader this node knows, -1 if none",
            )?,
            last_log_index: gauge(
                r,
                "rocketraft_raft_last_log_index",
                "Index of the last entry in this node's log",
            )?,
            commit_index: gauge(
                r,
                "rocketraft_raft_commit_index",
                "Highest index this node knows committed",
            )?,
            applied_index: gauge(
                r,
                "rocketraft_raft_applied_index",
                "Highest index applied to the state machine",
            )?,
            snapshot_index: gauge(
                r,
                "rocketraft_raft_snapshot_index",
                "Index covered by the latest snapshot",
            )?,
            purged_index: gauge(
                r,
                "rocketraft_raft_purged_index",
                "Highest index purged from the log",
            )?,
            voters: gauge(
                r,
                "rocketraft_raft_voters",
                "Voters in the group's membership",
            )?,
            replication_lag: gauge_vec(
                r,
                "rocketraft_raft_replication_lag",
                "Entries a member is behind the leader's commit index (leader only)",
                &["node"],
            )?,
            elections: counter(
                r,
                "rocketraft_raft_term_changes_total",
                "Term changes this node saw (one per election)",
            )?,
            leader_changes: counter(
                r,
                "rocketraft_raft_leader_changes_total",
                "Times the known leader changed",
            )?,
            proposals_in_flight: gauge(
                r,
                "rocketraft_proposals_in_flight",
                "Proposals waiting for commit on this node",
            )?,
            storage_bytes: gauge_vec(
                r,
                "rocketraft_storage_bytes",
                "Bytes on disk by store (raft-log, state)",
                &["store"],
            )?,
            storage_memory_bytes: gauge_vec(
                r,
                "rocketraft_storage_memory_bytes",
                "RocksDB memory of this node by kind (memtables, block_cache); each has a fixed budget",
                &["kind"],
            )?,
            appended: gauge(
                r,
                "rocketraft_messages_appended_total",
                "Messages appended to queues (applied by this node since it started)",
            )?,
            delivered: gauge(
                r,
                "rocketraft_messages_delivered_total",
                "Deliveries to consumers (applied by this node since it started)",
            )?,
            acked: gauge(
                r,
                "rocketraft_messages_acked_total",
                "Deliveries acknowledged (applied by this node since it started)",
            )?,
            queue_offset: gauge_vec(
                r,
                "rocketraft_queue_offset_next",
                "Offset the next message of a queue gets",
                &["topic", "queue"],
            )?,
            consumer_lag: gauge_vec(
                r,
                "rocketraft_consumer_lag",
                "Messages of a queue a consumer group has not consumed",
                &["consumer_group", "topic", "queue"],
            )?,
            consumer_inflight: gauge_vec(
                r,
                "rocketraft_consumer_inflight",
                "Messages delivered to a consumer group and not yet acknowledged",
                &["consumer_group", "topic", "queue"],
            )?,
        })
    }
}

impl BrokerMetrics {
    pub fn new(
        raft: Raft,
        reader: StateReader,
        proposer: Proposer,
        data_dir: PathBuf,
    ) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let rpc = crate::ops::rpc_histogram(&registry)?;
        let gauges = Gauges::new(&registry)?;
        Ok(Self {
            registry,
            rpc,
            raft,
            reader,
            proposer,
            data_dir,
            scrape: tokio::sync::Mutex::new(()),
            gauges,
        })
    }

    /// Counts elections and leader changes as Raft reports them, until `stop`.
    pub async fn watch_raft(
        self: std::sync::Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut metrics = self.raft.metrics();
        let (mut term, mut leader) = {
            let m = metrics.borrow();
            (m.current_term, m.current_leader)
        };
        loop {
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
            let m = metrics.borrow_and_update();
            if m.current_term > term {
                self.gauges.elections.inc_by(m.current_term - term);
                term = m.current_term;
            }
            if m.current_leader != leader {
                if m.current_leader.is_some() {
                    self.gauges.leader_changes.inc();
                }
                leader = m.current_leader;
            }
        }
    }

    fn refresh(&self, commit_index: Option<u64>) {
        let g = &self.gauges;
        let m = self.raft.metrics().borrow().clone();
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        g.term.set(as_i64(m.current_term));
        g.is_leader.set(i64::from(m.state == ServerState::Leader));
        g.leader_id.set(m.current_leader.map_or(-1, as_i64));
        g.last_log_index.set(as_i64(m.last_log_index.unwrap_or(0)));
        g.applied_index
            .set(as_i64(m.last_applied.map_or(0, |l| l.index)));
        g.snapshot_index
            .set(as_i64(m.snapshot.map_or(0, |l| l.index)));
        g.purged_index.set(as_i64(m.purged.map_or(0, |l| l.index)));
        g.voters
            .set(m.membership_config.membership().voter_ids().count() as i64);
        g.commit_index.set(as_i64(commit_index.unwrap_or(0)));
        g.replication_lag.reset();
        if let Some(replication) = &m.replication {
            for (node, matched) in replication {
                let matched = matched.map_or(0, |l| l.index);
                g.replication_lag
                    .with_label_values(&[node.to_string().as_str()])
                    .set(as_i64(
                        m.last_log_index.unwrap_or(0).saturating_sub(matched),
                    ));
            }
        }
        g.proposals_in_flight.set(self.proposer.in_flight() as i64);
        for (store, dir) in [("raft-log", "raft-log"), ("state", "state")] {
            g.storage_bytes
                .with_label_values(&[store])
                .set(as_i64(crate::ops::dir_bytes(&self.data_dir.join(dir))));
        }
        let memory = rocketraft_raft_store::memory_usage();
        for (kind, bytes) in [
            ("memtables", memory.memtable_bytes),
            ("block_cache", memory.block_cache_bytes),
        ] {
            g.storage_memory_bytes
                .with_label_values(&[kind])
                .set(as_i64(bytes as u64));
        }
        let counts = self.reader.applied_counts();
        g.appended.set(as_i64(counts.appended));
        g.delivered.set(as_i64(counts.delivered));
        g.acked.set(as_i64(counts.acked));
        g.queue_offset.reset();
        for t in self.reader.topics() {
            for q in 0..t.queue_count {
                g.queue_offset
                    .with_label_values(&[t.name.as_str(), q.to_string().as_str()])
                    .set(as_i64(self.reader.queue_state(&t.name, q).offset_next));
            }
        }
        g.consumer_lag.reset();
        g.consumer_inflight.reset();
        for group in self.reader.groups() {
            let progress = match self.reader.group_progress(&group.name) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(group = %group.name, "metrics: reading consumer progress: {e}");
                    continue;
                }
            };
            for p in progress {
                let labels = [
                    group.name.as_str(),
                    p.topic.as_str(),
                    &p.queue_id.to_string(),
                ];
                g.consumer_lag
                    .with_label_values(&labels)
                    .set(as_i64(p.lag()));
                g.consumer_inflight
                    .with_label_values(&labels)
                    .set(as_i64(p.inflight));
            }
        }
    }

    /// Ready: see the module docs.
    async fn check_ready(&self) -> Result<String, String> {
        let m = self.raft.metrics().borrow().clone();
        let Some(leader) = m.current_leader else {
            return Err("the group has no leader".into());
        };
        let target = if leader == m.id {
            // A leader cut off from its group still believes it leads; a heartbeat round
            // acknowledged by a majority proves it does, and returns its read index.
            let read = self
                .raft
                .ensure_linearizable()
                .await
                .map_err(|e| format!("leadership not confirmed by a majority: {e}"))?;
            read.map_or(0, |l| l.index)
        } else {
            let addr = m
                .membership_config
                .membership()
                .get_node(&leader)
                .map(|n| n.addr.clone())
                .ok_or_else(|| format!("leader {leader} is not in the membership"))?;
            let status = self
                .proposer
                .client(&addr)
                .map_err(|e| e.message().to_string())?
                .group_status(pb::GroupStatusRequest {})
                .await
                .map_err(|e| format!("asking leader {leader} at {addr}: {}", e.message()))?
                .into_inner();
            if status.leader_id != Some(leader) {
                return Err(format!(
                    "node {leader} no longer leads (it knows {:?})",
                    status.leader_id
                ));
            }
            status.commit_index
        };
        self.raft
            .wait(Some(READY_TIMEOUT))
            .applied_index_at_least(Some(target), "readiness")
            .await
            .map_err(|_| {
                let applied = self
                    .raft
                    .metrics()
                    .borrow()
                    .last_applied
                    .map_or(0, |l| l.index);
                format!("applied index {applied} is behind the leader's commit index {target}")
            })?;
        Ok(format!(
            "leader {leader}, term {}, applied >= {target}",
            m.current_term
        ))
    }
}

impl crate::ops::Probe for BrokerMetrics {
    fn gather(&self) -> BoxFuture<'_, Vec<prometheus::proto::MetricFamily>> {
        Box::pin(async move {
            let _one = self.scrape.lock().await;
            // Not in openraft 0.9's metrics; asked of the Raft core (None once it stopped).
            let commit_index = self
                .raft
                .with_raft_state(|s| s.committed.map(|l| l.index))
                .await
                .ok()
                .flatten();
            self.refresh(commit_index);
            self.registry.gather()
        })
    }

    fn ready(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            tokio::time::timeout(READY_TIMEOUT * 2, self.check_ready())
                .await
                .unwrap_or_else(|_| Err("the readiness check timed out".into()))
        })
    }
}
