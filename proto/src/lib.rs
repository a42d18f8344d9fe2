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
