//! Proposing commands to the broker group: on the leader through openraft, elsewhere by
//! telling the caller where the leader is so it can forward the request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use rocketraft_proto::admin::broker_admin_client::BrokerAdminClient;
use rocketraft_raft_store::{Command, CommandResult, Raft};
use tokio::sync::Semaphore;
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
}

impl Proposer {
    pub fn new(raft: Raft, leader_wait: Duration) -> Self {
        Self {
            raft,
            slots: Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT_MAX)),
            channels: Arc::default(),
            gate: Arc::default(),
            leader_wait,
        }
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
            let written = {
                let _open = self.gate.read().await;
                self.raft.client_write(cmd.clone()).await
            };
            match written {
                Ok(resp) => {
                    return Ok(Proposed::Applied {
                        result: resp.data,
                        log_index: resp.log_id.index,
                    });
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    if let Some(node) = f.leader_node {
                        return Ok(Proposed::Forward(node.addr));
                    }
                    // No leader known: an election is under way. Wait for its outcome.
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
                        .metrics(|m| m.current_leader.is_some(), "a leader is known")
                        .await;
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
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| {
                tonic::Status::internal(format!("leader address {addr:?} is invalid: {e}"))
            })?
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
