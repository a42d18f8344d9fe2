//! The `BrokerAdmin` gRPC service: group status, topics, append/read by offset, consumer
//! offsets and on-demand snapshots. Writes are proposed on the leader; a follower forwards
//! them there once (a forwarded request is never forwarded again).

use std::time::Duration;

use openraft::ServerState;
use rocketraft_proto::admin as pb;
use rocketraft_proto::admin::broker_admin_server::BrokerAdmin;
use rocketraft_raft_store::{Command, CommandResult, Raft, Rejection, StateReader, limits};
use tonic::{Request, Response, Status};

use crate::convert;
use crate::proposer::{self, Proposed, Proposer};

/// Largest admin request or response: one maximal batch plus framing.
pub const ADMIN_MESSAGE_BYTES_MAX: usize = limits::BATCH_BYTES_MAX + 4 * 1024 * 1024;
/// Most messages one ReadMessages call returns.
pub const READ_COUNT_MAX: u32 = 4096;
/// Bytes of bodies one ReadMessages call returns at most (at least one message is returned).
pub const READ_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Matches a lookup returns by default, and at most.
pub const FIND_MATCHES_DEFAULT: usize = 32;
pub const FIND_MATCHES_MAX: usize = 1000;

pub struct AdminService {
    pub node_id: u64,
    pub group: String,
    pub raft: Raft,
    pub reader: StateReader,
    pub proposer: Proposer,
    /// The followers' leader lease (openraft: the election timeout max).
    pub election_lease: Duration,
    /// Bumped by every hold on elections, so only the latest one lifts it.
    pub hold_generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub disk: Option<std::sync::Arc<crate::disk::DiskGuard>>,
}

fn rejection_status(r: Rejection) -> Status {
    match r {
        Rejection::UnknownTopic(_) => Status::not_found(r.to_string()),
        Rejection::NotWritable(_) => Status::permission_denied(r.to_string()),
        Rejection::QueueOutOfRange { .. }
        | Rejection::KindNotAccepted { .. }
        | Rejection::Invalid { .. }
        | Rejection::InvalidHandle(_)
        | Rejection::UnknownTransaction(_) => Status::invalid_argument(r.to_string()),
    }
}

fn unexpected(result: CommandResult) -> Status {
    match result {
        CommandResult::Rejected(r) => rejection_status(r),
        other => Status::internal(format!("unexpected result {other:?}")),
    }
}

fn is_forwarded<T>(req: &Request<T>) -> bool {
    proposer::is_forwarded(req.metadata())
}

fn already_forwarded(node_id: u64, leader: &str) -> Status {
    Status::unavailable(format!(
        "node {node_id} is not the leader (leader at {leader}) and the request was already forwarded once"
    ))
}

fn forwarded<T>(msg: T) -> Request<T> {
    proposer::forwarded_request(&tonic::metadata::MetadataMap::new(), msg)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl AdminService {
    /// Proposes `cmd`; `Ok(Err(addr))` means "forward the request to the leader at addr".
    async fn propose(
        &self,
        cmd: Command,
        already_forwarded: bool,
    ) -> Result<Result<(CommandResult, u64), String>, Status> {
        match self.proposer.propose(cmd).await? {
            Proposed::Applied { result, log_index } => Ok(Ok((result, log_index))),
            Proposed::Forward(addr) if already_forwarded => Err(Status::unavailable(format!(
                "node {} is not the leader (leader at {addr}) and the request was already forwarded once",
                self.node_id
            ))),
            Proposed::Forward(addr) => Ok(Err(addr)),
        }
    }

    fn check_queue(&self, topic: &str, queue_id: u32) -> Result<(), Status> {
        let t = self
            .reader
            .topic(topic)
            .ok_or_else(|| rejection_status(Rejection::UnknownTopic(topic.to_string())))?;
        if queue_id >= t.queue_count {
            return Err(rejection_status(Rejection::QueueOutOfRange {
                topic: topic.to_string(),
                queue_id,
                queue_count: t.queue_count,
            }));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl BrokerAdmin for AdminService {
    async fn group_status(
        &self,
        _req: Request<pb::GroupStatusRequest>,
    ) -> Result<Response<pb::GroupStatusResponse>, Status> {
        let m = self.raft.metrics().borrow().clone();
        let commit_index = self
            .raft
            .with_raft_state(|s| s.committed.map(|l| l.index))
            .await
            .map_err(|e| Status::unavailable(format!("raft node stopped: {e}")))?;
        let membership = m.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|l| l.map(|l| l.index).unwrap_or(0));
                pb::Member {
                    node_id: *id,
                    addr: node.addr.clone(),
                    voter: voters.contains(id),
                    matched_index: matched,
                    lag: matched.map(|mi| commit_index.unwrap_or(0).saturating_sub(mi)),
                }
            })
            .collect();
        let role = match m.state {
            ServerState::Leader => "Leader",
            ServerState::Follower => "Follower",
            ServerState::Candidate => "Candidate",
            ServerState::Learner => "Learner",
            ServerState::Shutdown => "Shutdown",
        };
        Ok(Response::new(pb::GroupStatusResponse {
            node_id: self.node_id,
            group: self.group.clone(),
            role: role.to_string(),
            leader_id: m.current_leader,
            term: m.current_term,
            commit_index: commit_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            members,
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
        }))
    }

    async fn put_topic(
        &self,
        req: Request<pb::PutTopicRequest>,
    ) -> Result<Response<pb::PutTopicResponse>, Status> {
        let fwd = is_forwarded(&req);
        let msg = req.into_inner();
        let topic = msg
            .topic
            .clone()
            .ok_or_else(|| Status::invalid_argument("topic is required"))?;
        let cfg = convert::topic_from_pb(topic)?;
        limits::validate_user_topic_name("topic.name", &cfg.name)
            .and_then(|_| limits::validate_topic_config(&cfg))
            .map_err(rejection_status)?;
        match self.propose(Command::PutTopic(cfg), fwd).await? {
            Ok((CommandResult::TopicPut, _)) => Ok(Response::new(pb::PutTopicResponse {})),
            Ok((other, _)) => Err(unexpected(other)),
            Err(leader) => {
                self.proposer
                    .client(&leader)?
                    .put_topic(forwarded(msg))
                    .await
            }
        }
    }

    async fn put_consumer_group(
        &self,
        req: Request<pb::PutConsumerGroupRequest>,
    ) -> Result<Response<pb::PutConsumerGroupResponse>, Status> {
        let fwd = is_forwarded(&req);
        let msg = req.into_inner();
        let group = msg
            .group
            .clone()
            .ok_or_else(|| Status::invalid_argument("group is required"))?;
        let cfg = convert::group_from_pb(group);
        limits::validate_group_config(&cfg).map_err(rejection_status)?;
        match self.propose(Command::PutGroup(cfg), fwd).await? {
            Ok((CommandResult::GroupPut, _)) => Ok(Response::new(pb::PutConsumerGroupResponse {})),
            Ok((other, _)) => Err(unexpected(other)),
            Err(leader) => {
                self.proposer
                    .client(&leader)?
                    .put_consumer_group(forwarded(msg))
                    .await
            }
        }
    }

    async fn delete_topic(
        &self,
        req: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let fwd = is_forwarded(&req);
        let msg = req.into_inner();
        limits::validate_name("name", &msg.name).map_err(rejection_status)?;
        let cmd = Command::DeleteTopic {
            name: msg.name.clone(),
        };
        match self.propose(cmd, fwd).await? {
            Ok((CommandResult::TopicDeleted, _)) => Ok(Response::new(pb::DeleteTopicResponse {})),
            Ok((other, _)) => Err(unexpected(other)),
            Err(leader) => {
                self.proposer
                    .client(&leader)?
                    .delete_topic(forwarded(msg))
                    .await
            }
        }
    }

    async fn get_topic(
        &self,
        req: Request<pb::GetTopicRequest>,
    ) -> Result<Response<pb::GetTopicResponse>, Status> {
        let name = req.into_inner().name;
        let t = self
            .reader
            .topic(&name)
            .ok_or_else(|| rejection_status(Rejection::UnknownTopic(name)))?;
        Ok(Response::new(pb::GetTopicResponse {
            topic: Some(convert::topic_to_pb(&t)),
        }))
    }

    async fn append(
        &self,
        req: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let fwd = is_forwarded(&req);
        let msg = req.into_inner();
        limits::validate_name("topic", &msg.topic).map_err(rejection_status)?;
        let messages: Vec<_> = msg
            .messages
            .iter()
            .cloned()
            .map(convert::message_from_pb)
            .collect();
        limits::validate_batch(&messages).map_err(rejection_status)?;
        // Check the target against local state when we know the topic; the leader checks
        // again at apply time, so a stale follower view cannot let a bad append through.
        if let Some(topic) = self.reader.topic(&msg.topic) {
            limits::validate_append_target(Some(&topic), &msg.topic, msg.queue_id, &messages)
                .map_err(rejection_status)?;
        }
        if let Some(d) = &self.disk
            && self.raft.metrics().borrow().state == ServerState::Leader
        {
            d.writable().map_err(Status::resource_exhausted)?;
        }
        let cmd = Command::Append {
            topic: msg.topic.clone(),
            queue_id: msg.queue_id,
            store_timestamp_ms: now_ms(),
            messages,
        };
        match self.propose(cmd, fwd).await? {
            Ok((
                CommandResult::Appended {
                    first_offset,
                    count,
                    store_timestamp_ms,
                    offsets,
                },
                log_index,
            )) => Ok(Response::new(pb::AppendResponse {
                first_offset,
                count,
                store_timestamp_ms,
                log_index,
                queue_ids: offsets.iter().map(|(q, _)| *q).collect(),
                offsets: offsets.iter().map(|(_, o)| *o).collect(),
            })),
            Ok((other, _)) => Err(unexpected(other)),
            Err(leader) => self.proposer.client(&leader)?.append(forwarded(msg)).await,
        }
    }

    async fn read_messages(
        &self,
        req: Request<pb::ReadMessagesRequest>,
    ) -> Result<Response<pb::ReadMessagesResponse>, Status> {
        let r = req.into_inner();
        self.check_queue(&r.topic, r.queue_id)?;
        if r.max_count > READ_COUNT_MAX {
            return Err(Status::invalid_argument(format!(
                "max_count is {}; the limit is {READ_COUNT_MAX}",
                r.max_count
            )));
        }
        let mut stored = self
            .reader
            .read_messages(&r.topic, r.queue_id, r.offset, r.max_count.max(1) as usize)
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut bytes = 0usize;
        let keep = stored
            .iter()
            .take_while(|m| {
                bytes += m.message.body.len();
                bytes <= READ_BYTES_MAX
            })
            .count()
            .max(1)
            .min(stored.len());
        stored.truncate(keep);
        let offset_next = self.reader.queue_state(&r.topic, r.queue_id).offset_next;
        Ok(Response::new(pb::ReadMessagesResponse {
            messages: stored.into_iter().map(convert::stored_to_pb).collect(),
            offset_next,
        }))
    }

    async fn queue_offsets(
        &self,
        req: Request<pb::QueueOffsetsRequest>,
    ) -> Result<Response<pb::QueueOffsetsResponse>, Status> {
        let r = req.into_inner();
        self.check_queue(&r.topic, r.queue_id)?;
        let q = self.reader.queue_state(&r.topic, r.queue_id);
        Ok(Response::new(pb::QueueOffsetsResponse {
            offset_min: q.offset_min,
            offset_next: q.offset_next,
        }))
    }

    async fn commit_offset(
        &self,
        req: Request<pb::CommitOffsetRequest>,
    ) -> Result<Response<pb::CommitOffsetResponse>, Status> {
        let fwd = is_forwarded(&req);
        let msg = req.into_inner();
        limits::validate_name("consumer_group", &msg.consumer_group).map_err(rejection_status)?;
        limits::validate_name("topic", &msg.topic).map_err(rejection_status)?;
        let cmd = Command::CommitOffset {
            group: msg.consumer_group.clone(),
            topic: msg.topic.clone(),
            queue_id: msg.queue_id,
            offset: msg.offset,
        };
        match self.propose(cmd, fwd).await? {
            Ok((CommandResult::OffsetCommitted, _)) => {
                Ok(Response::new(pb::CommitOffsetResponse {}))
            }
            Ok((other, _)) => Err(unexpected(other)),
            Err(leader) => {
                self.proposer
                    .client(&leader)?
                    .commit_offset(forwarded(msg))
                    .await
            }
        }
    }

    async fn get_consumer_offset(
        &self,
        req: Request<pb::GetConsumerOffsetRequest>,
    ) -> Result<Response<pb::GetConsumerOffsetResponse>, Status> {
        let r = req.into_inner();
        self.check_queue(&r.topic, r.queue_id)?;
        let offset = self
            .reader
            .consume_offset(&r.consumer_group, &r.topic, r.queue_id)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::GetConsumerOffsetResponse { offset }))
    }

    async fn group_progress(
        &self,
        req: Request<pb::GroupProgressRequest>,
    ) -> Result<Response<pb::GroupProgressResponse>, Status> {
        let group = req.into_inner().consumer_group;
        limits::validate_name("consumer_group", &group).map_err(rejection_status)?;
        let queues = self
            .reader
            .group_progress(&group)
            .map_err(|e| Status::internal(e.to_string()))?
            .into_iter()
            .map(|p| pb::QueueProgress {
                lag: p.lag(),
                consumer: p.consumer,
                topic: p.topic,
                queue_id: p.queue_id,
                offset_min: p.offset_min,
                offset_next: p.offset_next,
                cursor: p.cursor,
                inflight: p.inflight,
                committed: p.committed,
            })
            .collect();
        Ok(Response::new(pb::GroupProgressResponse { queues }))
    }

    async fn reset_offsets(
        &self,
        req: Request<pb::ResetOffsetsRequest>,
    ) -> Result<Response<pb::ResetOffsetsResponse>, Status> {
        let fwd = is_forwarded(&req);
        let msg = req.into_inner();
        limits::validate_name("consumer_group", &msg.consumer_group).map_err(rejection_status)?;
        limits::validate_name("topic", &msg.topic).map_err(rejection_status)?;
        let cmd = Command::ResetOffsets {
            group: msg.consumer_group.clone(),
            topic: msg.topic.clone(),
            timestamp_ms: msg.timestamp_ms,
        };
        match self.propose(cmd, fwd).await? {
            Ok((CommandResult::OffsetsReset(offsets), _)) => {
                Ok(Response::new(pb::ResetOffsetsResponse { offsets }))
            }
            Ok((other, _)) => Err(unexpected(other)),
            Err(leader) => {
                self.proposer
                    .client(&leader)?
                    .reset_offsets(forwarded(msg))
                    .await
            }
        }
    }

    async fn find_messages(
        &self,
        req: Request<pb::FindMessagesRequest>,
    ) -> Result<Response<pb::FindMessagesResponse>, Status> {
        let r = req.into_inner();
        limits::validate_name("topic", &r.topic).map_err(rejection_status)?;
        let topic = self
            .reader
            .topic(&r.topic)
            .ok_or_else(|| rejection_status(Rejection::UnknownTopic(r.topic.clone())))?;
        let max = match r.max {
            0 => FIND_MATCHES_DEFAULT,
            n if n as usize > FIND_MATCHES_MAX => {
                return Err(Status::invalid_argument(format!(
                    "max is {n}; the limit is {FIND_MATCHES_MAX}"
                )));
            }
            n => n as usize,
        };
        let by_time = match (r.start_ms, r.end_ms) {
            (None, None) => None,
            (Some(s), Some(e)) if s <= e => Some((s, e)),
            (Some(s), Some(e)) => {
                return Err(Status::invalid_argument(format!(
                    "start_ms ({s}) must not be after end_ms ({e})"
                )));
            }
            _ => {
                return Err(Status::invalid_argument(
                    "give both start_ms and end_ms for a time range",
                ));
            }
        };
        let ways = usize::from(!r.message_id.is_empty())
            + usize::from(!r.key.is_empty())
            + usize::from(by_time.is_some());
        if ways != 1 {
            return Err(Status::invalid_argument(
                "give exactly one of message_id, key, or start_ms and end_ms",
            ));
        }
        let reader = self.reader.clone();
        // Index reads are RocksDB reads: off the async workers.
        let result = tokio::task::spawn_blocking(move || {
            // One more than asked tells whether the answer is complete.
            if !r.message_id.is_empty() {
                Ok(reader
                    .message_by_id(&topic.name, &r.message_id)?
                    .into_iter()
                    .collect::<Vec<_>>())
            } else if !r.key.is_empty() {
                reader.messages_by_key(&topic.name, &r.key, max + 1)
            } else {
                let (start, end) = by_time.unwrap_or_default();
                reader.messages_by_time(&topic.name, start, end, max + 1)
            }
        })
        .await
        .map_err(|e| Status::internal(format!("lookup task: {e}")))?;
        let mut found = result.map_err(|e| Status::internal(e.to_string()))?;
        let scanned = found.len() as u64;
        let complete = found.len() <= max;
        found.truncate(max);
        Ok(Response::new(pb::FindMessagesResponse {
            messages: found.into_iter().map(convert::stored_to_pb).collect(),
            scanned,
            complete,
        }))
    }

    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::AddMemberResponse>, Status> {
        let fwd = is_forwarded(&req);
        let msg = req.into_inner();
        match crate::membership::leader_elsewhere(&self.raft)? {
            None => Ok(Response::new(self.add_member_here(msg).await?)),
            Some(addr) if !fwd => {
                self.proposer
                    .client(&addr)?
                    .add_member(forwarded(msg))
                    .await
            }
            Some(addr) => Err(already_forwarded(self.node_id, &addr)),
        }
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let fwd = is_forwarded(&req);
        let msg = req.into_inner();
        let addr = match crate::membership::leader_elsewhere(&self.raft)? {
            None => match self.remove_member_here(msg).await? {
                Ok(resp) => return Ok(Response::new(resp)),
                // This node led and handed leadership over; the new leader removes it.
                Err(new_leader) => new_leader,
            },
            Some(addr) if fwd => return Err(already_forwarded(self.node_id, &addr)),
            Some(addr) => addr,
        };
        self.proposer
            .client(&addr)?
            .remove_member(forwarded(msg))
            .await
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let fwd = is_forwarded(&req);
        let msg = req.into_inner();
        match crate::membership::leader_elsewhere(&self.raft)? {
            None => {
                let (leader_id, term) = self.transfer_leader_here(msg.node_id).await?;
                Ok(Response::new(pb::TransferLeaderResponse {
                    leader_id,
                    term,
                }))
            }
            Some(addr) if !fwd => {
                self.proposer
                    .client(&addr)?
                    .transfer_leader(forwarded(msg))
                    .await
            }
            Some(addr) => Err(already_forwarded(self.node_id, &addr)),
        }
    }

    async fn hold_elections(
        &self,
        req: Request<pb::HoldElectionsRequest>,
    ) -> Result<Response<pb::HoldElectionsResponse>, Status> {
        self.hold_elections_here(Duration::from_millis(req.into_inner().duration_ms));
        Ok(Response::new(pb::HoldElectionsResponse {}))
    }

    async fn campaign(
        &self,
        _req: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(format!("raft node stopped: {e}")))?;
        Ok(Response::new(pb::CampaignResponse {}))
    }

    async fn report_disk(
        &self,
        req: Request<pb::ReportDiskRequest>,
    ) -> Result<Response<pb::ReportDiskResponse>, Status> {
        let r = req.into_inner();
        if let Some(d) = &self.disk {
            d.record_report(r.node_id, r.free_bytes, r.low);
        }
        Ok(Response::new(pb::ReportDiskResponse {}))
    }

    async fn snapshot(
        &self,
        req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let purge = req.into_inner().purge_log;
        let stopped =
            |e: openraft::error::Fatal<u64>| Status::unavailable(format!("raft node stopped: {e}"));
        let applied = self.raft.metrics().borrow().last_applied.map(|l| l.index);
        self.raft.trigger().snapshot().await.map_err(stopped)?;
        let m = self
            .raft
            .wait(Some(Duration::from_secs(60)))
            .metrics(
                |m| m.snapshot.map(|l| l.index) >= applied,
                "snapshot covers what was applied when it was requested",
            )
            .await
            .map_err(|e| Status::deadline_exceeded(format!("snapshot did not complete: {e}")))?;
        let snapshot_index = m.snapshot.map(|l| l.index).unwrap_or(0);
        let mut purged_index = m.purged.map(|l| l.index);
        if purge && m.snapshot.is_some() {
            self.raft
                .trigger()
                .purge_log(snapshot_index)
                .await
                .map_err(stopped)?;
            // openraft purges once no replication still reads those entries; give it a
            // moment and report what actually happened.
            let m = self
                .raft
                .wait(Some(Duration::from_secs(10)))
                .metrics(
                    |m| m.purged.map(|l| l.index) >= Some(snapshot_index),
                    "log purged",
                )
                .await;
            purged_index = match m {
                Ok(m) => m.purged.map(|l| l.index),
                Err(_) => self.raft.metrics().borrow().purged.map(|l| l.index),
            };
        }
        Ok(Response::new(pb::SnapshotResponse {
            snapshot_index,
            purged_index,
        }))
    }
}
