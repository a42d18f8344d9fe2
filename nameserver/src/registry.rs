//! The route table: the newest report of every broker node, merged from brokers and peers.
//!
//! A report replaces the held one only if its version is newer (term, then incarnation, then
//! counter: all of them grow on the reporting node alone, so no clocks are compared across
//! machines). A node whose version has not advanced here within the expiry is down; a group's
//! leader is the live node claiming leadership with the highest term, so an old leader's
//! report can never displace a newer leader.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rocketraft_proto::admin as apb;
use rocketraft_proto::nameserver as pb;

/// A node's identity: (group, node id).
pub type NodeKey = (String, u64);

fn version_key(v: &Option<pb::Version>) -> (u64, u64, u64) {
    v.as_ref()
        .map(|v| (v.term, v.incarnation, v.counter))
        .unwrap_or_default()
}

struct Entry {
    report: pb::NodeReport,
    /// When this nameserver last saw the node's version advance.
    advanced_at: Instant,
}

/// A broker group as the registry sees it.
#[derive(Debug, Clone)]
pub struct GroupView {
    pub name: String,
    /// Live nodes, the leader first.
    pub live: Vec<pb::NodeReport>,
    pub leader: Option<pb::NodeReport>,
    pub down: Vec<pb::NodeReport>,
}

impl GroupView {
    /// The report whose topics and groups describe the group best: the leader's (it has
    /// applied the most), else the live node with the highest term.
    pub fn authority(&self) -> Option<&pb::NodeReport> {
        self.leader.as_ref().or_else(|| self.live.first())
    }

    pub fn topic(&self, name: &str) -> Option<&apb::TopicConfig> {
        self.authority()?.topics.iter().find(|t| t.name == name)
    }

    pub fn consumer_group(&self, name: &str) -> Option<&apb::ConsumerGroupConfig> {
        self.authority()?
            .consumer_groups
            .iter()
            .find(|g| g.name == name)
    }

    /// Client addresses of the live nodes, the leader first.
    pub fn addrs(&self) -> Vec<String> {
        self.live.iter().map(|n| n.addr.clone()).collect()
    }
}

pub struct Registry {
    entries: BTreeMap<NodeKey, Entry>,
    expiry: Duration,
}

impl Registry {
    pub fn new(expiry: Duration) -> Self {
        Self {
            entries: BTreeMap::new(),
            expiry,
        }
    }

    /// Takes `report` if it is newer than the one held; returns whether it was.
    pub fn merge(&mut self, report: pb::NodeReport, now: Instant) -> bool {
        let key = (report.group.clone(), report.node_id);
        if let Some(held) = self.entries.get(&key)
            && version_key(&held.report.version) >= version_key(&report.version)
        {
            return false;
        }
        self.entries.insert(
            key,
            Entry {
                report,
                advanced_at: now,
            },
        );
        true
    }

    pub fn digests(&self) -> Vec<pb::NodeDigest> {
        self.entries
            .iter()
            .map(|((group, id), e)| pb::NodeDigest {
                group: group.clone(),
                node_id: *id,
                version: e.report.version,
            })
            .collect()
    }

    /// The reports held newer than (or missing from) `digests`, and the digests that are
    /// newer than what is held here.
    pub fn compare(
        &self,
        digests: &[pb::NodeDigest],
    ) -> (Vec<pb::NodeReport>, Vec<pb::NodeDigest>) {
        let theirs: BTreeMap<NodeKey, (u64, u64, u64)> = digests
            .iter()
            .map(|d| ((d.group.clone(), d.node_id), version_key(&d.version)))
            .collect();
        let newer = self
            .entries
            .iter()
            .filter(|(k, e)| {
                theirs
                    .get(*k)
                    .is_none_or(|v| *v < version_key(&e.report.version))
            })
            .map(|(_, e)| e.report.clone())
            .collect();
        let wanted = digests
            .iter()
            .filter(|d| {
                self.entries
                    .get(&(d.group.clone(), d.node_id))
                    .is_none_or(|e| version_key(&e.report.version) < version_key(&d.version))
            })
            .cloned()
            .collect();
        (newer, wanted)
    }

    pub fn reports(&self, keys: &[pb::NodeDigest]) -> Vec<pb::NodeReport> {
        keys.iter()
            .filter_map(|d| self.entries.get(&(d.group.clone(), d.node_id)))
            .map(|e| e.report.clone())
            .collect()
    }

    fn is_live(&self, e: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(e.advanced_at) <= self.expiry
    }

    pub fn groups(&self, now: Instant) -> Vec<GroupView> {
        let names: BTreeSet<&String> = self.entries.keys().map(|(g, _)| g).collect();
        names
            .into_iter()
            .filter_map(|g| self.group(g, now))
            .collect()
    }

    pub fn group(&self, name: &str, now: Instant) -> Option<GroupView> {
        let mut live = Vec::new();
        let mut down = Vec::new();
        for ((g, _), e) in &self.entries {
            if g != name {
                continue;
            }
            if self.is_live(e, now) {
                live.push(e.report.clone());
            } else {
                down.push(e.report.clone());
            }
        }
        if live.is_empty() && down.is_empty() {
            return None;
        }
        let leader = live
            .iter()
            .filter(|r| r.role == pb::Role::Leader as i32)
            .max_by_key(|r| r.term)
            .cloned();
        // Leader first, then by term (most current view first).
        live.sort_by_key(|r| {
            (
                leader.as_ref().map(|l| l.node_id) != Some(r.node_id),
                std::cmp::Reverse(r.term),
                r.node_id,
            )
        });
        Some(GroupView {
            name: name.to_string(),
            live,
            leader,
            down,
        })
    }

    /// The groups hosting `topic`, by name.
    pub fn topic_groups(&self, topic: &str, now: Instant) -> Vec<GroupView> {
        self.groups(now)
            .into_iter()
            .filter(|g| g.topic(topic).is_some())
            .collect()
    }

    pub fn status(&self, now: Instant) -> Vec<pb::GroupStatus> {
        self.groups(now)
            .into_iter()
            .map(|g| {
                let lag = |node_id: u64| {
                    let leader = g.leader.as_ref()?;
                    if leader.node_id == node_id {
                        return Some(0);
                    }
                    let matched = leader.matched.get(&node_id).copied().unwrap_or(0);
                    Some(leader.last_log_index.saturating_sub(matched))
                };
                let mut nodes: Vec<pb::NodeStatus> = g
                    .live
                    .iter()
                    .map(|n| (n, false))
                    .chain(g.down.iter().map(|n| (n, true)))
                    .map(|(n, down)| pb::NodeStatus {
                        node_id: n.node_id,
                        addr: n.addr.clone(),
                        role: n.role,
                        term: n.term,
                        down,
                        version: n.version,
                        last_log_index: n.last_log_index,
                        applied_index: n.applied_index,
                        replication_lag: lag(n.node_id),
                    })
                    .collect();
                nodes.sort_by_key(|n| n.node_id);
                pb::GroupStatus {
                    name: g.name.clone(),
                    nodes,
                    leader_id: g.leader.as_ref().map(|l| l.node_id),
                    leader_term: g.leader.as_ref().map(|l| l.term).unwrap_or(0),
                    unavailable: g.leader.is_none(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: u64, role: pb::Role, term: u64, inc: u64, counter: u64) -> pb::NodeReport {
        pb::NodeReport {
            group: "g".into(),
            node_id: node,
            addr: format!("127.0.0.1:{}", 9000 + node),
            role: role as i32,
            term,
            version: Some(pb::Version {
                term,
                incarnation: inc,
                counter,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn older_versions_never_replace_newer_ones() {
        let now = Instant::now();
        let mut r = Registry::new(Duration::from_secs(10));
        assert!(r.merge(report(1, pb::Role::Leader, 2, 100, 5), now));
        assert!(
            !r.merge(report(1, pb::Role::Leader, 1, 500, 99), now),
            "older term"
        );
        assert!(
            !r.merge(report(1, pb::Role::Leader, 2, 100, 5), now),
            "same version"
        );
        assert!(
            !r.merge(report(1, pb::Role::Leader, 2, 99, 50), now),
            "older incarnation"
        );
        assert!(
            r.merge(report(1, pb::Role::Follower, 2, 101, 1), now),
            "restarted"
        );
        assert!(r.merge(report(1, pb::Role::Follower, 3, 101, 2), now));
    }

    #[test]
    fn leader_is_the_live_claimant_with_the_highest_term() {
        let now = Instant::now();
        let mut r = Registry::new(Duration::from_secs(10));
        r.merge(report(1, pb::Role::Leader, 1, 1, 1), now);
        r.merge(report(2, pb::Role::Leader, 2, 1, 1), now);
        r.merge(report(3, pb::Role::Follower, 2, 1, 1), now);
        let g = r.group("g", now).expect("group");
        assert_eq!(g.leader.map(|l| l.node_id), Some(2));
        assert_eq!(g.live[0].node_id, 2, "leader first");
        // Node 2 falls silent: after the expiry it is down, and the stale claim of node 1
        // (term 1) is all that is left: it still wins only among live nodes.
        let later = now + Duration::from_secs(11);
        r.merge(report(1, pb::Role::Follower, 2, 1, 2), later);
        r.merge(report(3, pb::Role::Follower, 2, 1, 2), later);
        let g = r.group("g", later).expect("group");
        assert!(g.leader.is_none(), "no live leader: unavailable");
        assert_eq!(g.down.len(), 1);
        assert!(r.status(later)[0].unavailable);
    }

    #[test]
    fn compare_finds_what_each_side_lacks() {
        let now = Instant::now();
        let mut a = Registry::new(Duration::from_secs(10));
        let mut b = Registry::new(Duration::from_secs(10));
        a.merge(report(1, pb::Role::Leader, 1, 1, 5), now);
        a.merge(report(2, pb::Role::Follower, 1, 1, 1), now);
        b.merge(report(1, pb::Role::Leader, 1, 1, 3), now);
        b.merge(report(3, pb::Role::Follower, 1, 1, 7), now);
        let (newer, wanted) = a.compare(&b.digests());
        let newer: Vec<u64> = newer.iter().map(|r| r.node_id).collect();
        let wanted: Vec<u64> = wanted.iter().map(|d| d.node_id).collect();
        assert_eq!(newer, [1, 2], "a has node 1 newer and node 2 that b lacks");
        assert_eq!(wanted, [3], "b has node 3 that a lacks");
    }
}
