//! The Raft transport over tonic: [`Network`] sends openraft's RPCs to peers, and
//! [`RaftTransportService`] receives them. Payloads are bincode-encoded openraft types
//! (see `proto/rocketraft/raft.proto` for why).

use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use rocketraft_proto::raft::RaftPayload;
use rocketraft_proto::raft::raft_service_client::RaftServiceClient;
use rocketraft_proto::raft::raft_service_server::RaftService;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use crate::types::{NodeId, Raft, TypeConfig};

/// Largest Raft message we accept or send: a full append batch plus framing. openraft sends
/// snapshots in chunks of `snapshot_max_chunk_size`, far below this.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Creates one [`Network`] per peer; connections are made lazily.
#[derive(Clone, Default)]
pub struct NetworkFactory {
    pub connect_timeout: Option<Duration>,
}

pub struct Network {
    target: NodeId,
    client: Option<RaftServiceClient<Channel>>,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Network {
        let client = Endpoint::from_shared(format!("http://{}", node.addr))
            .ok()
            .map(|e| {
                rocketraft_proto::transport::endpoint_windows(e)
                    .tcp_nodelay(true)
                    .connect_timeout(self.connect_timeout.unwrap_or(Duration::from_millis(500)))
                    // Finds a connection a partition cut within about 2 s (see the broker's
                    // forwarding channels), so heartbeats resume soon after the network heals.
                    .http2_keep_alive_interval(Duration::from_secs(1))
                    .keep_alive_timeout(Duration::from_secs(1))
                    .keep_alive_while_idle(true)
                    .connect_lazy()
            })
            .map(|ch| {
                RaftServiceClient::new(ch)
                    .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            });
        if client.is_none() {
            tracing::error!(target, addr = %node.addr, "peer address is not a valid endpoint");
        }
        Network {
            target,
            client,
            addr: node.addr.clone(),
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Result<RaftPayload, bincode::Error> {
    Ok(RaftPayload {
        data: bincode::serialize(value)?.into(),
    })
}

impl Network {
    /// Sends one RPC; the remote answers with a bincode `Result<Resp, RaftError<E>>`.
    async fn call<Req, Resp, E>(
        &mut self,
        req: &Req,
        option: &RPCOption,
        which: Rpc,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            let e = std::io::Error::other(format!("invalid peer address {:?}", self.addr));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        };
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(payload);
        request.set_timeout(option.hard_ttl());
        let reply = match which {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            // Nobody listening, or the connection broke: let openraft back off this peer.
            tonic::Code::Unavailable | tonic::Code::Unknown => {
                RPCError::Unreachable(Unreachable::new(&status))
            }
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            bincode::deserialize(&reply.into_inner().data)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(&rpc, &option, Rpc::Append).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(&rpc, &option, Rpc::Snapshot).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(&rpc, &option, Rpc::Vote).await
    }
}

/// The receiving side: hands each RPC to the local Raft node.
pub struct RaftTransportService {
    raft: Raft,
}

impl RaftTransportService {
    pub fn new(raft: Raft) -> Self {
        Self { raft }
    }

    /// The tonic server for this service, with our message size limits.
    pub fn into_server(
        self,
    ) -> rocketraft_proto::raft::raft_service_server::RaftServiceServer<Self> {
        rocketraft_proto::raft::raft_service_server::RaftServiceServer::new(self)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
    }
}

fn decode<T: DeserializeOwned>(req: tonic::Request<RaftPayload>) -> Result<T, tonic::Status> {
    bincode::deserialize(&req.into_inner().data)
        .map_err(|e| tonic::Status::invalid_argument(format!("undecodable raft payload: {e}")))
}

fn reply<T: Serialize>(value: &T) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
    encode(value)
        .map(tonic::Response::new)
        .map_err(|e| tonic::Status::internal(format!("encoding raft reply: {e}")))
}

#[tonic::async_trait]
impl RaftService for RaftTransportService {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let req: AppendEntriesRequest<TypeConfig> = decode(request)?;
        reply(&self.raft.append_entries(req).await)
    }

    async fn vote(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let req: VoteRequest<NodeId> = decode(request)?;
        reply(&self.raft.vote(req).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let req: InstallSnapshotRequest<TypeConfig> = decode(request)?;
        reply(&self.raft.install_snapshot(req).await)
    }
}
