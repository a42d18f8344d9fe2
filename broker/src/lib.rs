//! A rocketraft broker node: one member of a Raft broker group.
//!
//! - [`config`]: TOML file + `ROCKETRAFT_*` environment + flags -> [`config::BrokerConfig`].
//! - [`node`]: the node's lifecycle (storage, Raft, gRPC server, bootstrap, shutdown).
//! - [`admin`]: the internal `BrokerAdmin` gRPC service (status, topics, append, read).
//! - [`disk`]: refusing new messages before any member's disk fills up.
//! - [`membership`]: adding and removing nodes, handing leadership over.
//! - [`proposer`]: proposing commands on the leader, or pointing at it for forwarding.
//! - [`convert`]: wire types to domain types and back.
//! - [`ops`]: the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`) brokers and nameservers
//!   share, and gRPC call timing; [`metrics`]: what a broker node exposes there.
//! - [`service`]: `apache.rocketmq.v2.MessagingService` for the official RocketMQ clients.
//! - `fault` (feature `fault-injection` only): the test-only broken build jepsen must catch.
//!
//! Storage, replication and the state machine live in `rocketraft-raft-store`.

pub mod admin;
pub mod config;
pub mod convert;
pub mod disk;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod ops;
pub mod proposer;
pub mod report;
pub mod service;
