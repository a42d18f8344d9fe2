//! Proposing commands to the broker group: on the leader through openraft, elsewhere by
//! telling the caller where the leader is so it can forward the request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, RaftError};
use rocketraft_proto::admin::broker_admin_client::BrokerAdminClient;
use rocketraft_raft_store::{Command, CommandResult, NodeId, Raft, Rejection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tonic::metadata::{KeyAndValueRef, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

/// Metadata key marking a request a follower forwarded to the leader; a forwarded request
/// is never forwarded again, so a confused leadership view cannot bounce it around.
const FORWARDED: &str = "x-rocketraft-forwarded";

pub fn is_forwarded(metadata: &MetadataMap) -> bool {
    metadata.contains_key(FORWARDED)
}

/// `msg` as a request carrying the client's own `x-mq-*` headers (its id, language and
/// version decide how the receiver answers). Transport headers are left to tonic.
pub fn with_client_headers<T>(client_metadata: &MetadataMap, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    let md = req.metadata_mut();
    for kv in client_metadata.iter() {
        if let KeyAndValueRef::Ascii(key, value) = kv
            && key.as_str().starts_with("x-mq-")
        {
            md.insert(key.clone(), value.clone());
        }
    }
    req
}

/// The request id header: official clients (Python) send one; a request forwarded without
/// one gets one, so the follower's and the leader's log lines of one request match.
pub const REQUEST_ID: &str = "x-mq-request-id";

/// The leader's address, when this node knows a leader and it is another node.
pub fn leader_addr_elsewhere(raft: &Raft) -> Option<String> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let leader = m.current_leader.filter(|l| *l != m.id)?;
    m.membership_config
        .membership()
        .get_node(&leader)
        .map(|n| n.addr.clone())
}

/// A request id unique on this machine: `rr-<pid>-<sequence>`.
pub fn new_request_id() -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "rr-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// `msg` as a request to forward to the leader: the client's headers, marked as forwarded.
pub fn forwarded_request<T>(client_metadata: &MetadataMap, msg: T) -> tonic::Request<T> {
    let mut req = with_client_headers(client_metadata, msg);
    let md = req.metadata_mut();
    md.insert(FORWARDED, MetadataValue::from_static("1"));
    if !md.contains_key(REQUEST_ID)
        && let Ok(v) = MetadataValue::try_from(new_request_id().as_str())
    {
        md.insert(REQUEST_ID, v);
    }
    tracing::debug!(request_id = ?md.get(REQUEST_ID), "forwarding to the leader");
    req
}

/// Proposals waiting for commit at once; beyond this, callers wait for a slot.
const PROPOSALS_IN_FLIGHT_MAX: usize = 8192;

/// Coalesced entries being written (appended, replicated, applied) at once. While they are
/// all under way, new proposals queue up and then go out together as one entry: the time
/// the previous entries take is the batching window, so a lone proposal never waits for a
/// timer, and under load one entry carries many. Napkin math: an entry costs the leader
/// about the same (a log write, a replication slot, an apply call, bookkeeping) whether it
/// holds one send of 1 KiB or a hundred, while a commit takes 1-2 ms (two fsyncs on a shared
/// disk plus a round trip); one entry per send capped the group at about 2,100 sends/s.
const COALESCED_IN_FLIGHT_MAX: usize = 2;
/// Commands and bytes one coalesced entry carries at most (a single larger command goes
/// alone): enough to amortise the per-entry cost, small enough that one entry's append and
/// replication stay short.
const COALESCED_COMMANDS_MAX: usize = 1024;
const COALESCED_BYTES_MAX: usize = 4 * 1024 * 1024;

type WriteError = RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>;
/// A written command's result and the log index of the entry that carried it.
type WriteResult = Result<(CommandResult, u64), WriteError>;

/// A proposal waiting for the coalescer.
struct Queued {
    cmd: Command,
    bytes: usize,
    done: oneshot::Sender<WriteResult>,
}

/// Where a proposal ended.
pub enum Proposed {
    /// Committed by a majority and applied here.
    Applied {
        result: CommandResult,
        log_index: u64,
    },
    /// This node is not the leader; the leader serves at this address.
    Forward(String),
}

/// Where a linearizable read is served (see [`Proposer::read_barrier`]).
pub enum ReadFrom {
    Here,
    /// This node is not the leader; the leader serves at this address.
    Leader(String),
}

#[derive(Clone)]
pub struct Proposer {
    raft: Raft,
    slots: Arc<Semaphore>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Proposals hold it shared; a leadership transfer holds it exclusively so that no new
    /// entry refreshes the followers' leader leases while it waits for them to lapse.
    gate: Arc<tokio::sync::RwLock<()>>,
    /// How long a proposal waits for a leader to be elected before giving up.
    leader_wait: Duration,
    /// Batchable commands go through the coalescer (see [`COALESCED_IN_FLIGHT_MAX`]).
    coalesce: mpsc::Sender<Queued>,
}

impl Proposer {
    /// Must be called within a tokio runtime: it starts the coalescer task, which ends when
    /// every clone of the proposer is gone.
    pub fn new(raft: Raft, leader_wait: Duration) -> Self {
        let gate: Arc<tokio::sync::RwLock<()>> = Arc::default();
        let (coalesce, queue) = mpsc::channel(PROPOSALS_IN_FLIGHT_MAX);
        tokio::spawn(run_coalescer(raft.clone(), gate.clone(), queue));
        Self {
            raft,
            slots: Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT_MAX)),
            channels: Arc::default(),
            gate,
            leader_wait,
            coalesce,
        }
    }

    /// Writes `cmd` once: on its own when it reads state, else coalesced with others.
    async fn write(&self, cmd: Command) -> WriteResult {
        if !cmd.batchable() {
            let _open = self.gate.read().await;
            return self
                .raft
                .client_write(cmd)
                .await
                .map(|r| (r.data, r.log_id.index));
        }
        let (done, result) = oneshot::channel();
        let bytes = cmd.payload_bytes();
        if self
            .coalesce
            .send(Queued { cmd, bytes, done })
            .await
            .is_err()
        {
            return Err(RaftError::Fatal(Fatal::Stopped));
        }
        result
            .await
            .unwrap_or(Err(RaftError::Fatal(Fatal::Stopped)))
    }

    /// Proposes `cmd`, waiting (up to `leader_wait`) while the group has no leader.
    pub async fn propose(&self, cmd: Command) -> Result<Proposed, tonic::Status> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| tonic::Status::unavailable("broker is shutting down"))?;
        let deadline = Instant::now() + self.leader_wait;
        loop {
            match self.write(cmd.clone()).await {
                Ok((result, log_index)) => {
                    return Ok(Proposed::Applied { result, log_index });
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    if let Some(node) = f.leader_node {
                        return Ok(Proposed::Forward(node.addr));
                    }
                    // No leader known: an election is under way. Wait for its outcome.
                    self.wait_for_leader(deadline).await?;
                }
                Err(RaftError::APIError(e)) => {
                    return Err(tonic::Status::failed_precondition(e.to_string()));
                }
                Err(RaftError::Fatal(e)) => {
                    return Err(tonic::Status::unavailable(format!(
                        "raft node stopped: {e}"
                    )));
                }
            }
        }
    }

    /// Whether this node believes it leads (its view may be stale; only a proposal or a
    /// read barrier proves it).
    pub fn believes_it_leads(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader == Some(m.id)
    }

    /// Waits until a read of this node's state is linearizable: this node leads, a
    /// majority acknowledged that in a heartbeat round after the call, and every entry
    /// committed before the call is applied here. Otherwise it names the leader to forward
    /// to. Without this a deposed leader (paused, or cut off by a partition) would answer
    /// from state the rest of the group has moved past: jepsen's register workload caught
    /// exactly that with GetOffset.
    pub async fn read_barrier(&self) -> Result<ReadFrom, tonic::Status> {
        #[cfg(feature = "fault-injection")]
        if rocketraft_raft_store::fault::is(rocketraft_raft_store::fault::Fault::StaleReads) {
            return Ok(ReadFrom::Here);
        }
        let deadline = Instant::now() + self.leader_wait;
        loop {
            match self.raft.ensure_linearizable().await {
                Ok(_) => return Ok(ReadFrom::Here),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    if let Some(node) = f.leader_node {
                        return Ok(ReadFrom::Leader(node.addr));
                    }
                    self.wait_for_leader(deadline).await?;
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                    return Err(tonic::Status::unavailable(format!(
                        "leadership not confirmed by a majority, so a read here could be stale: {e}"
                    )));
                }
                Err(RaftError::Fatal(e)) => {
                    return Err(tonic::Status::unavailable(format!(
                        "raft node stopped: {e}"
                    )));
                }
            }
        }
    }

    /// Waits (until `deadline`) for a leader that can answer: another node, or this one
    /// once it really leads. A node that just stepped down may still name itself as the
    /// leader in its metrics; waiting for "any leader" would then spin. Past the deadline,
    /// the caller's request fails as unavailable.
    async fn wait_for_leader(&self, deadline: Instant) -> Result<(), tonic::Status> {
        let now = Instant::now();
        if now >= deadline {
            return Err(tonic::Status::unavailable(format!(
                "the broker group has no leader after waiting {} ms",
                self.leader_wait.as_millis()
            )));
        }
        let _ = self
            .raft
            .wait(Some(deadline - now))
            .metrics(
                |m| match m.current_leader {
                    Some(l) if l == m.id => m.state == openraft::ServerState::Leader,
                    Some(_) => true,
                    None => false,
                },
                "a leader is known",
            )
            .await;
        Ok(())
    }

    /// Holds new proposals back (those under way finish first) until the guard is dropped.
    pub async fn pause(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.gate.clone().write_owned().await
    }

    /// Proposals waiting for a slot or for commit.
    pub fn in_flight(&self) -> usize {
        PROPOSALS_IN_FLIGHT_MAX.saturating_sub(self.slots.available_permits())
    }

    pub fn leader_wait(&self) -> Duration {
        self.leader_wait
    }

    /// A (cached, lazily connected) channel to the node at `addr`.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::Status> {
        let mut channels = self.channels.lock().expect("lock poisoned");
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| {
            tonic::Status::internal(format!("leader address {addr:?} is invalid: {e}"))
        })?;
        let channel = rocketraft_proto::transport::endpoint_windows(endpoint)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(1))
            // A partition drops packets silently, and the connection it cut would otherwise
            // look alive until TCP's retransmission backoff ends, seconds after the network
            // heals. A ping every second that must be answered within a second finds the dead
            // connection, and the next request connects afresh.
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(1))
            .keep_alive_while_idle(true)
            .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// An admin client for the leader at `addr`.
    pub fn client(&self, addr: &str) -> Result<BrokerAdminClient<Channel>, tonic::Status> {
        Ok(BrokerAdminClient::new(self.channel(addr)?)
            .max_decoding_message_size(crate::admin::ADMIN_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(crate::admin::ADMIN_MESSAGE_BYTES_MAX))
    }
}

/// Takes queued batchable proposals and writes them, as many at a time as fit one entry,
/// with at most [`COALESCED_IN_FLIGHT_MAX`] entries under way.
async fn run_coalescer(
    raft: Raft,
    gate: Arc<tokio::sync::RwLock<()>>,
    mut queue: mpsc::Receiver<Queued>,
) {
    let in_flight = Arc::new(Semaphore::new(COALESCED_IN_FLIGHT_MAX));
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(q) => q,
            None => match queue.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        // Wait for a free slot before gathering: what arrives meanwhile joins this entry.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < COALESCED_COMMANDS_MAX {
            let Ok(next) = queue.try_recv() else { break };
            if bytes + next.bytes > COALESCED_BYTES_MAX {
                carried = Some(next);
                break;
            }
            bytes += next.bytes;
            batch.push(next);
        }
        tokio::spawn(write_coalesced(raft.clone(), gate.clone(), batch, permit));
    }
}

/// Writes one coalesced entry and hands each proposer its own result.
async fn write_coalesced(
    raft: Raft,
    gate: Arc<tokio::sync::RwLock<()>>,
    mut batch: Vec<Queued>,
    _permit: OwnedSemaphorePermit,
) {
    let _open = gate.read().await;
    if batch.len() == 1
        && let Some(q) = batch.pop()
    {
        let written = raft.client_write(q.cmd).await;
        let _ = q.done.send(written.map(|r| (r.data, r.log_id.index)));
        return;
    }
    let (cmds, dones): (Vec<Command>, Vec<oneshot::Sender<WriteResult>>) =
        batch.into_iter().map(|q| (q.cmd, q.done)).unzip();
    let count = cmds.len();
    match raft.client_write(Command::Batch(cmds)).await {
        Ok(resp) => {
            let index = resp.log_id.index;
            let results = match resp.data {
                CommandResult::Batch(results) if results.len() == count => results,
                other => {
                    // Cannot happen: the state machine answers a batch with one result per
                    // command. Say so to every proposer rather than guess.
                    tracing::error!(?other, count, "a coalesced entry got a malformed result");
                    let rejected = CommandResult::Rejected(Rejection::Invalid {
                        field: "batch".into(),
                        reason: format!(
                            "applied with a result that does not match its {count} commands"
                        ),
                    });
                    vec![rejected; count]
                }
            };
            for (done, result) in dones.into_iter().zip(results) {
                let _ = done.send(Ok((result, index)));
            }
        }
        Err(e) => {
            for done in dones {
                let _ = done.send(Err(e.clone()));
            }
        }
    }
}
