//! Generated protobuf and gRPC code.
//!
//! - [`raft`]: the Raft transport between the nodes of a broker group (`RaftService`).
//! - [`admin`]: a broker node's internal admin API (`BrokerAdmin`): group status, topics,
//!   append/read by offset, consumer offsets, snapshots.
//!
//! The `.proto` sources live in `proto/proto/`; `build.rs` compiles them with protox.

pub mod raft {
    tonic::include_proto!("rocketraft.raft");
}

pub mod admin {
    tonic::include_proto!("rocketraft.admin");
}
