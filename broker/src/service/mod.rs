//! `apache.rocketmq.v2.MessagingService`, the API the official RocketMQ 5 clients speak,
//! served by every broker node. One file per RPC family:
//!
//! - [`status`]: in-band statuses and per-client code compatibility;
//! - [`route`]: QueryRoute, Heartbeat, QueryAssignment, NotifyClientTermination;
//! - [`telemetry`]: the settings handshake stream;
//! - [`send`]: SendMessage (NORMAL, FIFO, DELAY, TRANSACTION);
//! - [`receive`]: ReceiveMessage, AckMessage, ChangeInvisibleDuration,
//!   ForwardMessageToDeadLetterQueue (the pop-based Simple and Push consumers);
//! - [`transaction`]: EndTransaction and the orphaned-transaction checks;
//! - [`pull`]: PullMessage, UpdateOffset, GetOffset, QueryOffset;
//! - [`message`]: stored messages as the clients receive them.
//!
//! A node that is not the leader forwards whatever must be proposed to the leader, so every
//! node serves every RPC. RecallMessage and SyncLiteSubscription answer an in-band
//! NOT_IMPLEMENTED (see docs/compatibility.md).

pub mod delay;
pub mod message;
pub mod pull;
pub mod receive;
pub mod retention;
pub mod route;
pub mod send;
pub mod status;
pub mod telemetry;
pub mod transaction;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rocketraft_proto::rocketmq::v2 as pb;
use rocketraft_proto::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use rocketraft_proto::rocketmq::v2::messaging_service_server::{
    MessagingService, MessagingServiceServer,
};
use rocketraft_raft_store::{Raft, StateReader};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use self::status::{ClientInfo, not_implemented};
use crate::proposer::{self, Proposer};

/// Why a request is refused: the status code the client gets and a message naming the
/// field and the limit.
pub type Refusal = (pb::Code, String);

/// Largest request the official clients may send: a 4 MiB body plus a batch's framing.
/// (RocketMQ's proxy accepts up to 130 MiB; clients split larger batches anyway.)
pub const CLIENT_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Clients with an open telemetry stream that one node tracks at most.
const CLIENTS_MAX: usize = 100_000;

type TelemetrySender = mpsc::Sender<Result<pb::TelemetryCommand, Status>>;

/// A client with an open telemetry stream to this node.
#[derive(Clone)]
pub struct TelemetryClient {
    pub tx: TelemetrySender,
    /// Topics the client publishes, once its settings say it is a producer.
    pub producer_topics: Option<Vec<String>>,
}

/// When unresolved transactions are checked back with their producers.
#[derive(Debug, Clone, Copy)]
pub struct TransactionChecks {
    pub first: Duration,
    pub interval: Duration,
    pub max: u32,
}

/// What every RPC handler of this node shares.
pub struct ServiceContext {
    pub node_id: u64,
    pub group: String,
    /// This node's address as peers and clients reach it.
    pub advertised_addr: String,
    pub raft: Raft,
    pub reader: StateReader,
    pub proposer: Proposer,
    pub transaction_checks: TransactionChecks,
    /// Queues of topics created on first use; 0: unknown topics are refused.
    pub auto_create_topic_queues: u32,
    /// Round-robin position for messages without a message group, and for the first queue
    /// a pop over all queues looks at.
    pub next_queue: AtomicU32,
    /// Makes transaction ids unique on this node.
    pub next_transaction: AtomicU64,
    /// Open telemetry streams by client id.
    telemetry: Mutex<HashMap<String, Vec<TelemetryClient>>>,
    /// Whether the group has room for new messages (none: no check).
    pub disk: Option<Arc<crate::disk::DiskGuard>>,
}

impl ServiceContext {
    pub fn new(
        node_id: u64,
        group: String,
        advertised_addr: String,
        raft: Raft,
        reader: StateReader,
        proposer: Proposer,
        transaction_checks: TransactionChecks,
    ) -> Self {
        Self {
            node_id,
            group,
            advertised_addr,
            raft,
            reader,
            proposer,
            transaction_checks,
            auto_create_topic_queues: 0,
            next_queue: AtomicU32::new(0),
            next_transaction: AtomicU64::new(0),
            disk: None,
            telemetry: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this node leads the group.
    /// `Err(why)` when this node leads and the group has no room for new messages.
    pub fn refuse_writes(&self) -> Result<(), String> {
        match &self.disk {
            Some(d) if self.is_leader() => d.writable(),
            _ => Ok(()),
        }
    }

    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.current_leader == Some(m.id)
    }

    /// Waits (bounded by the proposer's leader wait) until the group's leader is known and
    /// is not the node at `addr`.
    pub async fn wait_leader_other_than(&self, addr: &str) {
        let addr = addr.to_string();
        let _ = self
            .raft
            .wait(Some(self.proposer.leader_wait()))
            .metrics(
                move |m| {
                    m.current_leader.is_some_and(|l| {
                        m.membership_config
                            .membership()
                            .get_node(&l)
                            .is_some_and(|n| n.addr != addr)
                    })
                },
                "a leader other than the unreachable one",
            )
            .await;
    }

    /// The leader's address, when the leader is another node.
    pub fn leader_addr_if_elsewhere(&self) -> Option<String> {
        proposer::leader_addr_elsewhere(&self.raft)
    }

    /// The leader's address when it is another node, waiting (bounded by the proposer's
    /// leader wait) while no leader is known; `None` when this node leads.
    pub async fn leader_elsewhere_once_known(&self) -> Option<String> {
        let _ = self
            .raft
            .wait(Some(self.proposer.leader_wait()))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await;
        self.leader_addr_if_elsewhere()
    }

    /// Telemetry streams to this node of producers that publish `topic`. A client may hold
    /// several (its own, and one a nameserver relays for it); each gets the command.
    pub fn producers_of(&self, topic: &str) -> Vec<TelemetrySender> {
        self.telemetry
            .lock()
            .expect("lock poisoned")
            .values()
            .flatten()
            .filter(|c| {
                c.producer_topics
                    .as_ref()
                    .is_some_and(|t| t.iter().any(|t| t == topic))
            })
            .map(|c| c.tx.clone())
            .collect()
    }

    fn set_producer_topics(
        &self,
        client_id: &str,
        tx: &TelemetrySender,
        topics: Option<Vec<String>>,
    ) {
        let mut clients = self.telemetry.lock().expect("lock poisoned");
        if let Some(c) = clients
            .get_mut(client_id)
            .and_then(|streams| streams.iter_mut().find(|c| c.tx.same_channel(tx)))
        {
            c.producer_topics = topics;
        }
    }

    fn register_client(&self, client_id: &str, tx: TelemetrySender) {
        let mut clients = self.telemetry.lock().expect("lock poisoned");
        if clients.len() >= CLIENTS_MAX && !clients.contains_key(client_id) {
            // Drop streams whose readers are gone before refusing to track a new one.
            for streams in clients.values_mut() {
                streams.retain(|c| !c.tx.is_closed());
            }
            clients.retain(|_, streams| !streams.is_empty());
        }
        if clients.len() < CLIENTS_MAX || clients.contains_key(client_id) {
            let streams = clients.entry(client_id.to_string()).or_default();
            streams.retain(|c| !c.tx.is_closed());
            streams.push(TelemetryClient {
                tx,
                producer_topics: None,
            });
        }
    }

    fn forget_client(&self, client_id: &str) {
        self.telemetry
            .lock()
            .expect("lock poisoned")
            .remove(client_id);
    }

    /// Forgets one of the client's streams when it ends.
    fn forget_stream(&self, client_id: &str, tx: &TelemetrySender) {
        let mut clients = self.telemetry.lock().expect("lock poisoned");
        if let Some(streams) = clients.get_mut(client_id) {
            streams.retain(|c| !c.tx.same_channel(tx));
            if streams.is_empty() {
                clients.remove(client_id);
            }
        }
    }
}

/// Where a request that changes state ended on this node.
pub enum Outcome<T> {
    Done(T),
    /// Another node leads the group; the request goes there.
    Forward(String),
}

/// Proposes `cmd` through Raft when this node leads (or no leader is known yet).
pub async fn propose(
    ctx: &ServiceContext,
    cmd: rocketraft_raft_store::Command,
) -> Result<Outcome<rocketraft_raft_store::CommandResult>, Status> {
    Ok(match ctx.proposer.propose(cmd).await? {
        proposer::Proposed::Applied { result, .. } => Outcome::Done(result),
        proposer::Proposed::Forward(addr) => Outcome::Forward(addr),
    })
}

/// Where a read that must be linearizable (a committed offset, a queue's end) is served:
/// here once [`proposer::Proposer::read_barrier`] passes, else at the leader.
pub async fn read_barrier(ctx: &ServiceContext) -> Result<Outcome<()>, Status> {
    Ok(match ctx.proposer.read_barrier().await? {
        proposer::ReadFrom::Here => Outcome::Done(()),
        proposer::ReadFrom::Leader(addr) => Outcome::Forward(addr),
    })
}

/// The time left before the client's gRPC deadline (`grpc-timeout`), if it set one.
pub fn grpc_deadline(md: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A client of another node's MessagingService, with the same message limits we serve.
pub fn messaging_client(
    channel: tonic::transport::Channel,
) -> MessagingServiceClient<tonic::transport::Channel> {
    MessagingServiceClient::new(channel)
        .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
}

#[derive(Clone)]
pub struct MessagingServiceImpl {
    ctx: Arc<ServiceContext>,
}

impl MessagingServiceImpl {
    pub fn new(ctx: Arc<ServiceContext>) -> Self {
        Self { ctx }
    }

    /// A client of the leader at `addr`, for a request this node cannot serve itself.
    fn leader_client(
        &self,
        addr: &str,
        md: &tonic::metadata::MetadataMap,
    ) -> Result<MessagingServiceClient<tonic::transport::Channel>, Status> {
        if proposer::is_forwarded(md) {
            return Err(Status::unavailable(format!(
                "this node is not the leader (leader at {addr}) and the request was already forwarded once"
            )));
        }
        Ok(messaging_client(self.ctx.proposer.channel(addr)?))
    }

    pub fn into_server(self) -> MessagingServiceServer<Self> {
        MessagingServiceServer::new(self)
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
    }
}

/// Serves a unary request on this node or forwards it to the leader.
/// Forwarding attempts per request: the first, and one after each observed leader change.
const FORWARD_ATTEMPTS: usize = 3;

/// Whether a forwarded call failed because the leader could not be reached (it died or is
/// being replaced), rather than because the leader answered.
fn leader_unreachable(e: &Status) -> bool {
    matches!(e.code(), tonic::Code::Unavailable | tonic::Code::Unknown)
}

/// Serves a unary request on this node or forwards it to the leader. A leader that cannot
/// be reached is waited out (an election takes a second or two) and the request is served
/// again, locally or by the new leader, so clients ride through a failover.
macro_rules! serve_or_forward {
    ($self:ident, $req:ident, $handler:path, $rpc:ident) => {{
        let client = ClientInfo::from_metadata($req.metadata());
        let md = $req.metadata().clone();
        let body = $req.into_inner();
        let mut attempt = 1;
        loop {
            match $handler(&$self.ctx, &client, &body).await? {
                Outcome::Done(resp) => break Ok(Response::new(resp)),
                Outcome::Forward(addr) => {
                    let result = $self
                        .leader_client(&addr, &md)?
                        .$rpc(proposer::forwarded_request(&md, body.clone()))
                        .await;
                    match result {
                        Err(e) if attempt < FORWARD_ATTEMPTS && leader_unreachable(&e) => {
                            tracing::debug!(%addr, "leader unreachable ({e}); waiting for a new one");
                            $self.ctx.wait_leader_other_than(&addr).await;
                            attempt += 1;
                        }
                        other => break other,
                    }
                }
            }
        }
    }};
}

pub type BoxStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl MessagingService for MessagingServiceImpl {
    async fn query_route(
        &self,
        req: Request<pb::QueryRouteRequest>,
    ) -> Result<Response<pb::QueryRouteResponse>, Status> {
        let client = ClientInfo::from_metadata(req.metadata());
        Ok(Response::new(
            route::query_route(&self.ctx, &client, req.into_inner()).await?,
        ))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        Ok(Response::new(route::heartbeat(req.into_inner())))
    }

    async fn send_message(
        &self,
        req: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        serve_or_forward!(self, req, send::send_message, send_message)
    }

    async fn query_assignment(
        &self,
        req: Request<pb::QueryAssignmentRequest>,
    ) -> Result<Response<pb::QueryAssignmentResponse>, Status> {
        let client = ClientInfo::from_metadata(req.metadata());
        Ok(Response::new(route::query_assignment(
            &self.ctx,
            &client,
            req.into_inner(),
        )))
    }

    type ReceiveMessageStream = BoxStream<pb::ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        req: Request<pb::ReceiveMessageRequest>,
    ) -> Result<Response<Self::ReceiveMessageStream>, Status> {
        let client = ClientInfo::from_metadata(req.metadata());
        let md = req.metadata().clone();
        let deadline = grpc_deadline(&md);
        let body = req.into_inner();
        // Pops are proposals: the leader runs the whole long poll, and its stream is relayed.
        let mut attempt = 1;
        while let Some(addr) = self.ctx.leader_addr_if_elsewhere() {
            let mut fwd = proposer::forwarded_request(&md, body.clone());
            if let Some(d) = deadline {
                fwd.set_timeout(d);
            }
            match self.leader_client(&addr, &md)?.receive_message(fwd).await {
                Ok(stream) => {
                    return Ok(Response::new(receive::relay(stream.into_inner(), client)));
                }
                Err(e) if attempt < FORWARD_ATTEMPTS && leader_unreachable(&e) => {
                    self.ctx.wait_leader_other_than(&addr).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Response::new(receive::receive(
            self.ctx.clone(),
            client,
            deadline,
            body,
        )))
    }

    async fn ack_message(
        &self,
        req: Request<pb::AckMessageRequest>,
    ) -> Result<Response<pb::AckMessageResponse>, Status> {
        serve_or_forward!(self, req, receive::ack, ack_message)
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        req: Request<pb::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<pb::ForwardMessageToDeadLetterQueueResponse>, Status> {
        serve_or_forward!(
            self,
            req,
            receive::forward_to_dead_letter_queue,
            forward_message_to_dead_letter_queue
        )
    }

    type PullMessageStream = BoxStream<pb::PullMessageResponse>;

    async fn pull_message(
        &self,
        req: Request<pb::PullMessageRequest>,
    ) -> Result<Response<Self::PullMessageStream>, Status> {
        let client = ClientInfo::from_metadata(req.metadata());
        let deadline = grpc_deadline(req.metadata());
        Ok(Response::new(pull::pull(
            self.ctx.clone(),
            client,
            deadline,
            req.into_inner(),
        )))
    }

    async fn update_offset(
        &self,
        req: Request<pb::UpdateOffsetRequest>,
    ) -> Result<Response<pb::UpdateOffsetResponse>, Status> {
        serve_or_forward!(self, req, pull::update_offset, update_offset)
    }

    async fn get_offset(
        &self,
        req: Request<pb::GetOffsetRequest>,
    ) -> Result<Response<pb::GetOffsetResponse>, Status> {
        serve_or_forward!(self, req, pull::get_offset, get_offset)
    }

    async fn query_offset(
        &self,
        req: Request<pb::QueryOffsetRequest>,
    ) -> Result<Response<pb::QueryOffsetResponse>, Status> {
        serve_or_forward!(self, req, pull::query_offset, query_offset)
    }

    async fn end_transaction(
        &self,
        req: Request<pb::EndTransactionRequest>,
    ) -> Result<Response<pb::EndTransactionResponse>, Status> {
        serve_or_forward!(self, req, transaction::end_transaction, end_transaction)
    }

    type TelemetryStream = telemetry::TelemetryStream;

    async fn telemetry(
        &self,
        req: Request<tonic::Streaming<pb::TelemetryCommand>>,
    ) -> Result<Response<Self::TelemetryStream>, Status> {
        let client = ClientInfo::from_metadata(req.metadata());
        Ok(Response::new(telemetry::open(
            self.ctx.clone(),
            client,
            req.into_inner(),
        )))
    }

    async fn notify_client_termination(
        &self,
        req: Request<pb::NotifyClientTerminationRequest>,
    ) -> Result<Response<pb::NotifyClientTerminationResponse>, Status> {
        let client = ClientInfo::from_metadata(req.metadata());
        Ok(Response::new(route::notify_client_termination(
            &self.ctx,
            &client,
            req.into_inner(),
        )))
    }

    async fn change_invisible_duration(
        &self,
        req: Request<pb::ChangeInvisibleDurationRequest>,
    ) -> Result<Response<pb::ChangeInvisibleDurationResponse>, Status> {
        serve_or_forward!(
            self,
            req,
            receive::change_invisible_duration,
            change_invisible_duration
        )
    }

    async fn recall_message(
        &self,
        _req: Request<pb::RecallMessageRequest>,
    ) -> Result<Response<pb::RecallMessageResponse>, Status> {
        Ok(Response::new(pb::RecallMessageResponse {
            status: not_implemented("RecallMessage"),
            message_id: String::new(),
        }))
    }

    async fn sync_lite_subscription(
        &self,
        _req: Request<pb::SyncLiteSubscriptionRequest>,
    ) -> Result<Response<pb::SyncLiteSubscriptionResponse>, Status> {
        Ok(Response::new(pb::SyncLiteSubscriptionResponse {
            status: not_implemented("SyncLiteSubscription"),
        }))
    }
}
