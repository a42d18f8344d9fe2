//! Changing a broker group's membership and leadership, run on the leader.
//!
//! - Add: the node joins as a learner (it started with `join = true`, so it never formed a
//!   group of its own), the leader waits until it has caught up, then makes it a voter.
//!   openraft changes voters through joint consensus, one change at a time.
//! - Remove: a voter or learner leaves. Removing the leader first hands leadership to the
//!   most caught-up other voter, so the group does not wait out an election timeout.
//! - Transfer: openraft 0.9 has no leadership transfer, so we build one from its runtime
//!   switches. Followers refuse votes while their leader lease (the election timeout max
//!   since the leader's last message) runs, so the leader holds the other voters' elections,
//!   pauses new proposals and heartbeats, waits for the target to have its whole log and for
//!   the leases to lapse, then asks the target to campaign. The target's log is the longest,
//!   so it wins; every hold expires on its own if the leader dies mid-way.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use rocketraft_proto::admin as pb;
use tonic::Status;

use crate::admin::AdminService;

/// How long the new node may take to catch up when the request does not say.
const CATCH_UP_DEFAULT: Duration = Duration::from_secs(60);
/// Longest hold on elections a node accepts.
pub const HOLD_MAX: Duration = Duration::from_secs(10);
/// How long the target may take to win its election.
const CAMPAIGN_TIMEOUT: Duration = Duration::from_secs(5);

/// The group's voters and learners as this node sees them.
pub fn members(raft: &rocketraft_raft_store::Raft) -> (Vec<u64>, Vec<u64>) {
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let learners = membership.learner_ids().collect();
    (voters, learners)
}

fn write_error(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Status::unavailable(format!(
            "leadership moved during the change (leader now {:?}); retry",
            f.leader_id
        )),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Status::failed_precondition(format!("membership change refused: {e}"))
        }
        RaftError::Fatal(e) => Status::unavailable(format!("raft node stopped: {e}")),
    }
}

/// Where this node is not the leader: the leader's address, to forward to.
pub fn leader_elsewhere(raft: &rocketraft_raft_store::Raft) -> Result<Option<String>, Status> {
    if raft.metrics().borrow().state == ServerState::Leader {
        return Ok(None);
    }
    crate::proposer::leader_addr_elsewhere(raft)
        .map(Some)
        .ok_or_else(|| Status::unavailable("the group has no leader right now; retry"))
}

impl AdminService {
    pub(crate) async fn add_member_here(
        &self,
        req: pb::AddMemberRequest,
    ) -> Result<pb::AddMemberResponse, Status> {
        if req.addr.trim().is_empty() || !req.addr.contains(':') {
            return Err(Status::invalid_argument(format!(
                "addr must be host:port, got {:?}",
                req.addr
            )));
        }
        let (voters, _) = members(&self.raft);
        if !voters.contains(&req.node_id) {
            let catch_up = match req.catch_up_timeout_ms {
                0 => CATCH_UP_DEFAULT,
                ms => Duration::from_millis(ms),
            };
            let node = BasicNode {
                addr: req.addr.clone(),
            };
            // Blocking: returns once the leader has replicated its log to the learner.
            match tokio::time::timeout(catch_up, self.raft.add_learner(req.node_id, node, true))
                .await
            {
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "node {} at {} was added as a learner but did not catch up within {} ms; \
                         it stays a learner (is it running with join = true?); run add again \
                         to wait longer",
                        req.node_id,
                        req.addr,
                        catch_up.as_millis()
                    )));
                }
                Ok(r) => {
                    r.map_err(write_error)?;
                }
            }
            tracing::info!(node_id = req.node_id, addr = %req.addr, "learner caught up");
            if !req.learner_only {
                self.raft
                    .change_membership(
                        ChangeMembers::AddVoterIds(BTreeSet::from([req.node_id])),
                        false,
                    )
                    .await
                    .map_err(write_error)?;
                tracing::info!(node_id = req.node_id, "promoted to voter");
            }
        }
        let (voters, learners) = members(&self.raft);
        Ok(pb::AddMemberResponse { voters, learners })
    }

    /// Removes a member. `Ok(Err(addr))`: leadership moved to `addr` first; forward there.
    pub(crate) async fn remove_member_here(
        &self,
        req: pb::RemoveMemberRequest,
    ) -> Result<Result<pb::RemoveMemberResponse, String>, Status> {
        let (voters, learners) = members(&self.raft);
        let id = req.node_id;
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(Status::failed_precondition(format!(
                    "node {id} is the group's only voter; add another before removing it"
                )));
            }
            if id == self.node_id {
                let target = self.most_caught_up_voter(id)?;
                self.transfer_leader_here(target).await?;
                let addr = leader_elsewhere(&self.raft)?.ok_or_else(|| {
                    Status::unavailable("leadership did not move; retry the removal")
                })?;
                return Ok(Err(addr));
            }
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(write_error)?;
        } else if learners.contains(&id) {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(write_error)?;
        } else {
            return Err(Status::not_found(format!(
                "node_id {id} is not a member of group {} (voters {voters:?}, learners {learners:?})",
                self.group
            )));
        }
        tracing::info!(node_id = id, "removed from the group");
        let (voters, learners) = members(&self.raft);
        Ok(Ok(pb::RemoveMemberResponse { voters, learners }))
    }

    fn most_caught_up_voter(&self, except: u64) -> Result<u64, Status> {
        let m = self.raft.metrics().borrow().clone();
        let replication = m.replication.clone().unwrap_or_default();
        m.membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != except)
            .max_by_key(|v| replication.get(v).copied().flatten().map(|l| l.index))
            .ok_or_else(|| Status::failed_precondition("no other voter to hand leadership to"))
    }

    fn addr_of(&self, id: u64) -> Result<String, Status> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
            .ok_or_else(|| Status::not_found(format!("node {id} is not in the membership")))
    }

    /// Hands leadership to `target`; see the module docs. Returns the new (leader, term).
    pub(crate) async fn transfer_leader_here(&self, target: u64) -> Result<(u64, u64), Status> {
        let m = self.raft.metrics().borrow().clone();
        if target == self.node_id {
            return Ok((self.node_id, m.current_term));
        }
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        if !voters.contains(&target) {
            return Err(Status::invalid_argument(format!(
                "node_id {target} is not a voter of group {} (voters {voters:?})",
                self.group
            )));
        }
        let target_addr = self.addr_of(target)?;
        let hold = self.election_lease * 2 + CAMPAIGN_TIMEOUT;
        for other in voters
            .iter()
            .filter(|v| **v != target && **v != self.node_id)
        {
            let addr = self.addr_of(*other)?;
            // A node that cannot be reached cannot campaign either.
            if let Err(e) = self
                .proposer
                .client(&addr)?
                .hold_elections(pb::HoldElectionsRequest {
                    duration_ms: hold.as_millis() as u64,
                })
                .await
            {
                tracing::warn!(
                    node = other,
                    "could not hold its elections: {}",
                    e.message()
                );
            }
        }
        let paused = self.proposer.pause().await;
        self.raft.runtime_config().heartbeat(false);
        let outcome = self.hand_over(target, &target_addr).await;
        self.raft.runtime_config().heartbeat(true);
        drop(paused);
        for other in voters
            .iter()
            .filter(|v| **v != target && **v != self.node_id)
        {
            if let Ok(addr) = self.addr_of(*other)
                && let Ok(mut c) = self.proposer.client(&addr)
            {
                let _ = c
                    .hold_elections(pb::HoldElectionsRequest { duration_ms: 0 })
                    .await;
            }
        }
        outcome
    }

    async fn hand_over(&self, target: u64, target_addr: &str) -> Result<(u64, u64), Status> {
        let last = self.raft.metrics().borrow().last_log_index;
        self.raft
            .wait(Some(CAMPAIGN_TIMEOUT))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&target).copied().flatten())
                        .map(|l| l.index)
                        >= last
                },
                "the target has the leader's whole log",
            )
            .await
            .map_err(|_| {
                Status::unavailable(format!(
                    "node {target} did not catch up with the leader's log; leadership stays"
                ))
            })?;
        // Followers refuse votes until a lease has passed since the leader's last message.
        tokio::time::sleep(self.election_lease + Duration::from_millis(100)).await;
        self.proposer
            .client(target_addr)?
            .campaign(pb::CampaignRequest {})
            .await
            .map_err(|e| {
                Status::unavailable(format!("node {target} could not campaign: {}", e.message()))
            })?;
        let m = self
            .raft
            .wait(Some(CAMPAIGN_TIMEOUT))
            .metrics(
                |m| m.current_leader == Some(target),
                "the target leads the group",
            )
            .await
            .map_err(|_| {
                Status::unavailable(format!(
                    "node {target} campaigned but did not become leader within {} ms",
                    CAMPAIGN_TIMEOUT.as_millis()
                ))
            })?;
        tracing::info!(
            leader = target,
            term = m.current_term,
            "leadership transferred"
        );
        Ok((target, m.current_term))
    }

    pub(crate) fn hold_elections_here(&self, duration: Duration) {
        use std::sync::atomic::Ordering;
        let generation = self.hold_generation.fetch_add(1, Ordering::SeqCst) + 1;
        if duration.is_zero() {
            self.raft.runtime_config().elect(true);
            return;
        }
        self.raft.runtime_config().elect(false);
        let raft = self.raft.clone();
        let current = self.hold_generation.clone();
        let duration = duration.min(HOLD_MAX);
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            // A later hold or release owns the switch now.
            if current.load(Ordering::SeqCst) == generation {
                raft.runtime_config().elect(true);
            }
        });
    }
}
