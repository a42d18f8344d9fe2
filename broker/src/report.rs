//! Reporting this node to the nameservers: who it is, its Raft role and term, the leader it
//! knows, and the topics, queue offsets and consumer groups of its group.
//!
//! One nameserver of the configured list gets each report (the next one when it fails);
//! nameservers gossip reports among themselves. A report goes out every interval and at once
//! when the node's role, term or leader changes, so a new leader is known within a gossip
//! round of the election. Versions need no clock agreement between machines: (term,
//! incarnation, counter), where the incarnation is this process's start time on this
//! machine's clock, so a restarted node's reports supersede its earlier ones.

use std::time::Duration;

use openraft::ServerState;
use rocketraft_proto::nameserver as pb;
use rocketraft_proto::nameserver::registry_client::RegistryClient;
use rocketraft_raft_store::{Raft, StateReader};
use tonic::transport::{Channel, Endpoint};

use crate::admin::now_ms;
use crate::convert;

pub struct Reporter {
    pub group: String,
    pub node_id: u64,
    pub addr: String,
    pub raft: Raft,
    pub reader: StateReader,
    pub nameservers: Vec<String>,
    pub interval: Duration,
}

fn role(s: ServerState) -> pb::Role {
    match s {
        ServerState::Leader => pb::Role::Leader,
        ServerState::Follower => pb::Role::Follower,
        ServerState::Candidate => pb::Role::Candidate,
        ServerState::Learner => pb::Role::Learner,
        ServerState::Shutdown => pb::Role::Shutdown,
    }
}

impl Reporter {
    fn report(&self, incarnation: u64, counter: u64) -> pb::NodeReport {
        let m = self.raft.metrics().borrow().clone();
        let topics = self.reader.topics();
        let offsets = topics
            .iter()
            .map(|t| pb::QueueOffsets {
                topic: t.name.clone(),
                max_offsets: (0..t.queue_count)
                    .map(|q| self.reader.queue_state(&t.name, q).offset_next)
                    .collect(),
            })
            .collect();
        pb::NodeReport {
            group: self.group.clone(),
            node_id: self.node_id,
            addr: self.addr.clone(),
            role: role(m.state) as i32,
            term: m.current_term,
            leader_id: m.current_leader,
            topics: topics.iter().map(convert::topic_to_pb).collect(),
            offsets,
            consumer_groups: self
                .reader
                .groups()
                .into_iter()
                .map(convert::group_to_pb)
                .collect(),
            version: Some(pb::Version {
                term: m.current_term,
                incarnation,
                counter,
            }),
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            matched: m
                .replication
                .as_ref()
                .map(|r| {
                    r.iter()
                        .map(|(id, l)| (*id, l.map_or(0, |l| l.index)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        if self.nameservers.is_empty() {
            return;
        }
        let channels: Vec<Channel> = self
            .nameservers
            .iter()
            .filter_map(|a| {
                Endpoint::from_shared(format!("http://{a}"))
                    .map_err(|e| tracing::warn!("nameserver address {a:?} is invalid: {e}"))
                    .ok()
            })
            .map(|e| {
                e.connect_timeout(Duration::from_millis(500))
                    .timeout(Duration::from_secs(2))
                    .connect_lazy()
            })
            .collect();
        if channels.is_empty() {
            return;
        }
        let incarnation = now_ms().max(0) as u64;
        let mut counter = 0u64;
        let mut target = (self.node_id as usize) % channels.len();
        let mut metrics = self.raft.metrics();
        let key = |m: &openraft::RaftMetrics<u64, openraft::BasicNode>| {
            (m.state, m.current_term, m.current_leader)
        };
        let mut last = key(&metrics.borrow());
        loop {
            counter += 1;
            let report = self.report(incarnation, counter);
            for _ in 0..channels.len() {
                let mut client = RegistryClient::new(channels[target].clone());
                match client
                    .report(pb::ReportRequest {
                        report: Some(report.clone()),
                    })
                    .await
                {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::debug!(nameserver = %self.nameservers[target], "report failed: {e}");
                        target = (target + 1) % channels.len();
                    }
                }
            }
            let deadline = tokio::time::Instant::now() + self.interval;
            // Until the next report is due, or at once when the role, term or leader changes.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    changed = metrics.changed() => {
                        if changed.is_err() { return; }
                        let now = key(&metrics.borrow_and_update());
                        if now != last { last = now; break; }
                    }
                    _ = stop.changed() => return,
                }
            }
        }
    }
}
