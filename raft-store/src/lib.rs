//! rocketraft's replicated storage: what makes a broker group a Raft group.
//!
//! - [`types`]: the openraft type config ([`TypeConfig`]) and the commands carried in log
//!   entries ([`Command`]), with their results.
//! - [`filter`]: tag and SQL92 subscription filters, evaluated at apply time.
//! - [`limits`]: limits and validation shared by the broker (before proposing) and the
//!   state machine (when applying).
//! - [`log_store`]: the Raft log on RocksDB; one WAL sync covers every append queued
//!   while the previous sync ran (group commit).
//! - [`state_machine`]: the applied state on RocksDB (messages by queue offset, queue
//!   offsets, topics, consumer offsets, consumer groups' delivery state, scheduled and
//!   prepared messages) and [`StateReader`] for reads.
//! - [`snapshot`]: the snapshot file format (a checksummed dump of the state machine).
//! - [`network`]: the Raft transport over tonic, client and server side.
//! - `rocks`: RocksDB tuning shared by both databases, and the process's RocksDB memory
//!   budget (one block cache, one cap on memtables), read by [`memory_usage`].
//!
//! The broker crate owns everything client-facing; it talks to the group only by proposing
//! [`Command`]s through openraft and reading applied state through [`StateReader`].

// openraft's traits return `StorageError`, a large enum; our helpers return the same type so
// errors pass through unchanged instead of being boxed and unboxed at every boundary.
#![allow(clippy::result_large_err)]

#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod filter;
pub mod limits;
pub mod log_store;
pub mod network;
mod rocks;
pub mod snapshot;
pub mod state_machine;
pub mod types;

pub use log_store::{LogFlush, LogStore};
pub use network::{NetworkFactory, RaftTransportService};
pub use rocks::{BLOCK_CACHE_BYTES, MEMTABLE_BUDGET_BYTES, MemoryUsage, memory_usage};
pub use state_machine::{
    AppliedCounts, HalfMessage, PopReadiness, QueueProgress, QueueState, ReadError,
    StateMachineStore, StateReader,
};
pub use types::*;
