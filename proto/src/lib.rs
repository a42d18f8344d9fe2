//! Generated protobuf and gRPC code.
//!
//! - [`raft`]: the Raft transport between the nodes of a broker group (`RaftService`).
//! - [`admin`]: a broker node's internal admin API (`BrokerAdmin`): group status, topics,
//!   append/read by offset, consumer offsets, snapshots.
//! - [`nameserver`]: broker nodes reporting to nameservers (`Registry`), nameserver gossip
//!   (`Gossip`) and the nameserver's admin API (`NameserverAdmin`).
//! - [`rocketmq::v2`]: the public RocketMQ 5 gRPC API (`apache.rocketmq.v2.MessagingService`)
//!   that the official clients speak; our own `.proto` files with the public field numbers.
//!
//! - [`transport`]: HTTP/2 settings every server and channel of ours shares.
//!
//! The `.proto` sources live in `proto/proto/`; `build.rs` compiles them with protox.

pub mod raft {
    tonic::include_proto!("rocketraft.raft");
}

pub mod admin {
    tonic::include_proto!("rocketraft.admin");
}

pub mod nameserver {
    tonic::include_proto!("rocketraft.nameserver");
}

pub mod rocketmq {
    // Generated: prost keeps the protocol's oneofs as plain enums.
    #[allow(clippy::large_enum_variant)]
    pub mod v2 {
        tonic::include_proto!("apache.rocketmq.v2");
    }
}

pub mod transport {
    use tonic::transport::{Endpoint, Server};

    /// HTTP/2 flow-control windows of our servers and channels. h2's default is 64 KiB per
    /// stream: a 1 MiB pull answer or a 16 MiB replication batch then waits for a window
    /// update every 64 KiB, one round trip each. With these, a stream sends up to 4 MiB
    /// before it needs the receiver's update. They bound what a peer may have in flight, not
    /// what is allocated up front.
    pub const HTTP2_STREAM_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
    pub const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

    /// A channel endpoint with our flow-control windows.
    pub fn endpoint_windows(endpoint: Endpoint) -> Endpoint {
        endpoint
            .initial_stream_window_size(HTTP2_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW_BYTES)
    }

    /// A server builder with our flow-control windows (before any layer is added).
    pub fn server_windows(server: Server) -> Server {
        server
            .initial_stream_window_size(HTTP2_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW_BYTES)
    }
}
