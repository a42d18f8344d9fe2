//! The openraft type configuration and the domain types carried in log entries.
//!
//! Everything here is serialized into the Raft log with bincode, so changing a type changes
//! the on-disk format: add new commands as new enum variants at the end, never reorder.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Types of one rocketraft broker group.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        // A file rather than openraft's default in-memory cursor: a snapshot holds every
        // retained message and may be far larger than memory we want to spend on it.
        SnapshotData = tokio::fs::File,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;

/// Which kinds of message a topic accepts (RocketMQ 5's `MessageType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MessageKind {
    Normal,
    Fifo,
    Delay,
    Transaction,
}

/// RocketMQ's queue permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Permission {
    Read,
    Write,
    ReadWrite,
}

impl Permission {
    pub fn readable(self) -> bool {
        matches!(self, Permission::Read | Permission::ReadWrite)
    }
    pub fn writable(self) -> bool {
        matches!(self, Permission::Write | Permission::ReadWrite)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub name: String,
    pub queue_count: u32,
    pub permission: Permission,
    /// Accepted kinds; empty means every kind ("mixed").
    pub message_kinds: Vec<MessageKind>,
}

impl TopicConfig {
    pub fn accepts(&self, kind: MessageKind) -> bool {
        self.message_kinds.is_empty() || self.message_kinds.contains(&kind)
    }
}

/// A message as a producer hands it to the group, before it has an offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    /// Client-generated, unique.
    pub message_id: String,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub body: Bytes,
    pub born_timestamp_ms: i64,
    pub kind: MessageKind,
    /// FIFO message group.
    pub message_group: Option<String>,
    /// When a DELAY message becomes deliverable.
    pub delivery_timestamp_ms: Option<i64>,
}

/// A message as stored: the producer's fields plus what the group assigned at apply time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub topic: String,
    pub queue_id: u32,
    pub offset: u64,
    pub store_timestamp_ms: i64,
    pub message: NewMessage,
}

/// One state change of a broker group: the payload of a Raft log entry.
///
/// `apply` must be a pure function of (state, command): anything time-dependent is stamped
/// into the command by the leader before it is proposed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Append a batch of messages to one queue; offsets are assigned densely at apply time.
    Append {
        topic: String,
        queue_id: u32,
        store_timestamp_ms: i64,
        messages: Vec<NewMessage>,
    },
    /// Create a topic or replace its configuration.
    PutTopic(TopicConfig),
    /// Record a consumer group's committed offset for one queue.
    CommitOffset {
        group: String,
        topic: String,
        queue_id: u32,
        offset: u64,
    },
}

/// What applying a [`Command`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Blank and membership entries.
    None,
    Appended {
        first_offset: u64,
        count: u32,
        store_timestamp_ms: i64,
    },
    TopicPut,
    OffsetCommitted,
    /// The command was valid when proposed but not against the state it was applied to
    /// (e.g. the topic was deleted in between). Nothing was changed.
    Rejected(Rejection),
}

/// Why a command was refused, deterministically, by every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    #[error("queue_id {queue_id} is out of range: topic {topic:?} has {queue_count} queues")]
    QueueOutOfRange {
        topic: String,
        queue_id: u32,
        queue_count: u32,
    },
    #[error("topic {0:?} is not writable")]
    NotWritable(String),
    #[error("topic {topic:?} does not accept {kind:?} messages")]
    KindNotAccepted { topic: String, kind: MessageKind },
    #[error("{field} is invalid: {reason}")]
    Invalid { field: String, reason: String },
}
