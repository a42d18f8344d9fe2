//! rocketraft's Jepsen-style harness: it runs a real broker group under faults, records
//! every client operation, and checks the history against what rocketraft promises.
//!
//! - [`netns`]: a private network per run (a namespace per node, `nft` partitions);
//! - [`cluster`]: the broker nodes in it, started, killed, paused by PID;
//! - [`nemesis`]: the seeded fault schedule;
//! - [`membership`]: membership changes as faults, and reading the membership back;
//! - [`lazyfs`]: the FUSE layer that loses unfsynced writes (`rocketraft-jepsen lazyfs`);
//! - [`clock`]: per-node wall-clock skew through libfaketime;
//! - [`workload`]: the log workload's clients (official v2 API) and final reads;
//! - [`register`]: the register workload's clients: a consumer group's committed offset
//!   per key, written with `UpdateOffset` and read with `GetOffset`;
//! - [`group`]: the group workload's clients: pop consumers of one consumer group that
//!   receive, ack, rebalance and crash, and a reader of the group's offsets;
//! - [`history`]: the JSON-lines history of operations;
//! - [`checker`]: the analyses (the log checker, a port of Jepsen's Kafka workload; the
//!   register checker, a linearizability search);
//! - [`plot`]: throughput and latency over time, fault windows shaded (PNG);
//! - [`run`]: one run from start to verdict, and its directory of results.
//!
//! See `docs/jepsen.md`.

pub mod checker;
pub mod clock;
pub mod cluster;
pub mod group;
pub mod history;
pub mod lazyfs;
pub mod membership;
pub mod nemesis;
pub mod netns;
pub mod plot;
pub mod register;
pub mod run;
pub mod workload;
