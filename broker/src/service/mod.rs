//! `apache.rocketmq.v2.MessagingService`, the API the official RocketMQ 5 clients speak,
//! served by every broker node. One file per RPC family:
//!
//! - [`status`]: in-band statuses and per-client code compatibility;
//! - [`route`]: QueryRoute, Heartbeat, QueryAssignment, NotifyClientTermination;
//! - [`telemetry`]: the settings handshake stream;
//! - [`send`]: SendMessage (NORMAL and FIFO so far).
//!
//! Receive/ack, delay, transactions and the pull API are not built yet; those RPCs answer
//! an in-band NOT_IMPLEMENTED naming what is missing (see docs/compatibility.md).

pub mod route;
pub mod send;
pub mod status;
pub mod telemetry;

use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};

use rocketraft_proto::rocketmq::v2 as pb;
use rocketraft_proto::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use rocketraft_proto::rocketmq::v2::messaging_service_server::{
    MessagingService, MessagingServiceServer,
};
use rocketraft_raft_store::{Raft, StateReader};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use self::status::{ClientInfo, status};
use crate::proposer::{self, Proposer};

/// Largest request the official clients may send: a 4 MiB body plus a batch's framing.
/// (RocketMQ's proxy accepts up to 130 MiB; clients split larger batches anyway.)
pub const CLIENT_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Clients with an open telemetry stream that one node tracks at most.
const CLIENTS_MAX: usize = 100_000;

type TelemetrySender = mpsc::Sender<Result<pb::TelemetryCommand, Status>>;

/// What every RPC handler of this node shares.
pub struct ServiceContext {
    pub group: String,
    /// This node's address as peers and clients reach it.
    pub advertised_addr: String,
    pub raft: Raft,
    pub reader: StateReader,
    pub proposer: Proposer,
    /// Round-robin position for messages without a message group.
    pub next_queue: AtomicU32,
    telemetry: Mutex<HashMap<String, TelemetrySender>>,
}

impl ServiceContext {
    pub fn new(
        group: String,
        advertised_addr: String,
        raft: Raft,
        reader: StateReader,
        proposer: Proposer,
    ) -> Self {
        Self {
            group,
            advertised_addr,
            raft,
            reader,
            proposer,
            next_queue: AtomicU32::new(0),
            telemetry: Mutex::new(HashMap::new()),
        }
    }

    /// The leader's address, when the leader is another node.
    pub fn leader_addr_if_elsewhere(&self) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader.filter(|l| *l != m.id)?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    fn register_client(&self, client_id: &str, tx: TelemetrySender) {
        let mut clients = self.telemetry.lock().expect("lock poisoned");
        if clients.len() >= CLIENTS_MAX && !clients.contains_key(client_id) {
            // Drop streams whose readers are gone before refusing to track a new one.
            clients.retain(|_, tx| !tx.is_closed());
        }
        if clients.len() < CLIENTS_MAX || clients.contains_key(client_id) {
            clients.insert(client_id.to_string(), tx);
        }
    }

    fn forget_client(&self, client_id: &str) {
        self.telemetry
            .lock()
            .expect("lock poisoned")
            .remove(client_id);
    }
}

#[derive(Clone)]
pub struct MessagingServiceImpl {
    ctx: Arc<ServiceContext>,
}

impl MessagingServiceImpl {
    pub fn new(ctx: Arc<ServiceContext>) -> Self {
        Self { ctx }
    }

    pub fn into_server(self) -> MessagingServiceServer<Self> {
        MessagingServiceServer::new(self)
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
    }
}

fn not_implemented(what: &str) -> Option<pb::Status> {
    Some(status(
        pb::Code::NotImplemented,
        format!("{what} is not implemented by rocketraft yet"),
    ))
}

type BoxStream<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

fn one_frame<T: Send + 'static>(frame: T) -> BoxStream<T> {
    Box::pin(tokio_stream::once(Ok(frame)))
}

#[tonic::async_trait]
impl MessagingService for MessagingServiceImpl {
    async fn query_route(
        &self,
        req: Request<pb::QueryRouteRequest>,
    ) -> Result<Response<pb::QueryRouteResponse>, Status> {
        let client = ClientInfo::from_metadata(req.metadata());
        Ok(Response::new(route::query_route(
            &self.ctx,
            &client,
            req.into_inner(),
        )))
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
        let client = ClientInfo::from_metadata(req.metadata());
        let already_forwarded = proposer::is_forwarded(req.metadata());
        let metadata = req.metadata().clone();
        let body = req.into_inner();
        match send::send_message(&self.ctx, &client, &body).await? {
            send::Sent::Done(resp) => Ok(Response::new(resp)),
            send::Sent::Forward(addr) if already_forwarded => Err(Status::unavailable(format!(
                "this node is not the leader (leader at {addr}) and the request was already forwarded once"
            ))),
            send::Sent::Forward(addr) => {
                let mut client = MessagingServiceClient::new(self.ctx.proposer.channel(&addr)?)
                    .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX);
                client
                    .send_message(proposer::forwarded_request(&metadata, body))
                    .await
            }
        }
    }

    async fn query_assignment(
        &self,
        _req: Request<pb::QueryAssignmentRequest>,
    ) -> Result<Response<pb::QueryAssignmentResponse>, Status> {
        Ok(Response::new(pb::QueryAssignmentResponse {
            status: not_implemented("QueryAssignment (push consumers)"),
            assignments: vec![],
        }))
    }

    type ReceiveMessageStream = BoxStream<pb::ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        _req: Request<pb::ReceiveMessageRequest>,
    ) -> Result<Response<Self::ReceiveMessageStream>, Status> {
        Ok(Response::new(one_frame(pb::ReceiveMessageResponse {
            content: not_implemented("ReceiveMessage")
                .map(pb::receive_message_response::Content::Status),
        })))
    }

    async fn ack_message(
        &self,
        _req: Request<pb::AckMessageRequest>,
    ) -> Result<Response<pb::AckMessageResponse>, Status> {
        Ok(Response::new(pb::AckMessageResponse {
            status: not_implemented("AckMessage"),
            entries: vec![],
        }))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        _req: Request<pb::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<pb::ForwardMessageToDeadLetterQueueResponse>, Status> {
        Ok(Response::new(pb::ForwardMessageToDeadLetterQueueResponse {
            status: not_implemented("ForwardMessageToDeadLetterQueue"),
        }))
    }

    type PullMessageStream = BoxStream<pb::PullMessageResponse>;

    async fn pull_message(
        &self,
        _req: Request<pb::PullMessageRequest>,
    ) -> Result<Response<Self::PullMessageStream>, Status> {
        Ok(Response::new(one_frame(pb::PullMessageResponse {
            content: not_implemented("PullMessage").map(pb::pull_message_response::Content::Status),
        })))
    }

    async fn update_offset(
        &self,
        _req: Request<pb::UpdateOffsetRequest>,
    ) -> Result<Response<pb::UpdateOffsetResponse>, Status> {
        Ok(Response::new(pb::UpdateOffsetResponse {
            status: not_implemented("UpdateOffset"),
        }))
    }

    async fn get_offset(
        &self,
        _req: Request<pb::GetOffsetRequest>,
    ) -> Result<Response<pb::GetOffsetResponse>, Status> {
        Ok(Response::new(pb::GetOffsetResponse {
            status: not_implemented("GetOffset"),
            offset: 0,
        }))
    }

    async fn query_offset(
        &self,
        _req: Request<pb::QueryOffsetRequest>,
    ) -> Result<Response<pb::QueryOffsetResponse>, Status> {
        Ok(Response::new(pb::QueryOffsetResponse {
            status: not_implemented("QueryOffset"),
            offset: 0,
        }))
    }

    async fn end_transaction(
        &self,
        _req: Request<pb::EndTransactionRequest>,
    ) -> Result<Response<pb::EndTransactionResponse>, Status> {
        Ok(Response::new(pb::EndTransactionResponse {
            status: not_implemented("EndTransaction"),
        }))
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
        _req: Request<pb::ChangeInvisibleDurationRequest>,
    ) -> Result<Response<pb::ChangeInvisibleDurationResponse>, Status> {
        Ok(Response::new(pb::ChangeInvisibleDurationResponse {
            status: not_implemented("ChangeInvisibleDuration"),
            receipt_handle: String::new(),
        }))
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
