//! Membership changes as faults: add a node, remove one (the leader too), hand leadership
//! over, one change at a time, through the broker's admin API (what `rocketraft broker
//! add|remove|transfer-leader` call).
//!
//! The harness keeps a model of who is in the group ([`Role`] per node) and only trusts it
//! after reading the group's membership back: a change whose call failed or timed out may
//! still have happened, so every change ends with [`resolve`], which asks the leader and
//! brings the model (and the processes) in line. While the membership cannot be read, no
//! further change is made: one change at a time, never on a guess.
//!
//! Bounds: the group never drops below a majority of its original size in voters, and
//! never grows past its slots (the initial nodes plus the spares).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rocketraft_proto::admin as pb;
use serde::Serialize;

use crate::cluster::{Cluster, Role, group_status};

/// How long the leader may take to catch a new node up before the add gives up.
const CATCH_UP_MS: u64 = 20_000;
/// A change call gives up after this long; its outcome is then unknown.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long resolving may wait for a leader to ask. Short: during other faults the group
/// may have no leader for a while, and the nemesis must not hold those faults much longer.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The membership as the leader reported it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct View {
    pub leader: u64,
    pub term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

/// One change and what became of it, for the nemesis log.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The call's answer: "ok" or its error.
    pub call: String,
    /// The membership read back afterwards, if it could be.
    pub view: Option<View>,
    /// Whether the change took effect according to that view.
    pub effective: bool,
}

/// The smallest voter count a change may leave: a majority of the original group.
pub fn min_voters(cluster: &Cluster) -> usize {
    cluster.size() / 2 + 1
}

/// Reads the membership from the current leader.
pub async fn view(cluster: &Cluster, timeout: Duration) -> Result<View> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((leader, term)) = cluster.leader().await
            && let Ok(s) = group_status(&cluster.node(leader)?.addr).await
            && s.term == term
        {
            let mut voters: Vec<u64> = s
                .members
                .iter()
                .filter(|m| m.voter)
                .map(|m| m.node_id)
                .collect();
            let mut learners: Vec<u64> = s
                .members
                .iter()
                .filter(|m| !m.voter)
                .map(|m| m.node_id)
                .collect();
            voters.sort();
            learners.sort();
            return Ok(View {
                leader,
                term,
                voters,
                learners,
            });
        }
        if Instant::now() > deadline {
            bail!("no leader to read the membership from within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Brings the model in line with the group's membership: members get their role, nodes
/// outside it are stopped and marked removed (a joining node the add never reached, a
/// node a timed-out remove did remove).
pub async fn resolve(cluster: &mut Cluster) -> Result<View> {
    let v = view(cluster, RESOLVE_TIMEOUT).await?;
    let known: Vec<(u64, Role)> = cluster.nodes.iter().map(|n| (n.id, n.role)).collect();
    for (id, role) in known {
        let now = if v.voters.contains(&id) {
            Role::Voter
        } else if v.learners.contains(&id) {
            Role::Learner
        } else {
            Role::Removed
        };
        if now != role {
            cluster.set_role(id, now)?;
        }
    }
    Ok(v)
}

fn call_result<T>(r: std::result::Result<tonic::Response<T>, tonic::Status>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

/// A member to send a change to: the leader if one is agreed, else any member. Followers
/// forward to the leader.
async fn entry_node(cluster: &Cluster) -> Result<u64> {
    if let Some((l, _)) = cluster.leader().await {
        return Ok(l);
    }
    cluster
        .voters()
        .first()
        .copied()
        .context("no voter to send the change to")
}

/// Adds a node: starts a fresh one with `--join` in a free slot (or finishes adding a
/// learner left by an earlier attempt), and asks the group to add it. Returns the node id.
pub async fn add(cluster: &mut Cluster, learner: Option<u64>) -> Result<(u64, Outcome)> {
    let id = match learner {
        // A learner the harness had given up on (its add timed out here but went on at the
        // leader) may have been stopped: it must run to catch up.
        Some(id) => {
            cluster.spawn(id)?;
            id
        }
        None => cluster.start_joining()?,
    };
    let addr = cluster.node(id)?.addr.clone();
    // A fresh process needs a moment before it answers; the leader's add would just fail.
    let deadline = Instant::now() + Duration::from_secs(10);
    while group_status(&addr).await.is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let to = entry_node(cluster).await?;
    let call = cluster
        .admin_of(to, CALL_TIMEOUT)?
        .add_member(pb::AddMemberRequest {
            node_id: id,
            addr,
            learner_only: false,
            catch_up_timeout_ms: CATCH_UP_MS,
        })
        .await;
    let call = call_result(call);
    let outcome = settle(cluster, call, |v| v.voters.contains(&id)).await;
    Ok((id, outcome))
}

/// Removes voter `id` (the leader included: it hands leadership over first).
pub async fn remove(cluster: &mut Cluster, id: u64) -> Result<Outcome> {
    let to = entry_node(cluster).await?;
    let call = cluster
        .admin_of(to, CALL_TIMEOUT)?
        .remove_member(pb::RemoveMemberRequest { node_id: id })
        .await;
    let call = call_result(call);
    Ok(settle(cluster, call, |v| {
        !v.voters.contains(&id) && !v.learners.contains(&id)
    })
    .await)
}

/// Hands leadership to voter `id`.
pub async fn transfer(cluster: &mut Cluster, id: u64) -> Result<Outcome> {
    let to = entry_node(cluster).await?;
    let call = cluster
        .admin_of(to, CALL_TIMEOUT)?
        .transfer_leader(pb::TransferLeaderRequest { node_id: id })
        .await;
    let call = call_result(call);
    Ok(settle(cluster, call, |v| v.leader == id).await)
}

/// Reads the membership back after a change (whatever the call said) and applies it to
/// the model; `done` says whether the change took effect.
async fn settle(cluster: &mut Cluster, call: String, done: impl Fn(&View) -> bool) -> Outcome {
    match resolve(cluster).await {
        Ok(v) => Outcome {
            call,
            effective: done(&v),
            view: Some(v),
        },
        Err(e) => Outcome {
            call: format!("{call}; membership unreadable afterwards: {e:#}"),
            view: None,
            effective: false,
        },
    }
}

/// At the end of a run, after healing: reads the membership back and finishes any add
/// that stopped at the learner stage, so the final checks see a settled group.
pub async fn finish(cluster: &mut Cluster) -> Result<View> {
    let mut v = view_after_heal(cluster).await?;
    for learner in v.learners.clone() {
        add(cluster, Some(learner)).await?;
        v = resolve(cluster).await?;
    }
    Ok(v)
}

/// Resolving right after healing may meet a group still electing: give it longer.
async fn view_after_heal(cluster: &mut Cluster) -> Result<View> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match resolve(cluster).await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context("reading the membership after healing"));
            }
            Err(_) => {}
        }
    }
}
