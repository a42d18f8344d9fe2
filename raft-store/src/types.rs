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
    /// Messages older than this are deleted (on every node).
    pub retention_ms: u64,
    /// Each queue keeps at most `retention_bytes / queue_count` bytes of bodies, deleting
    /// its oldest messages beyond; 0: no size limit.
    pub retention_bytes: u64,
    /// A message whose id the topic already stored within this window is not stored again:
    /// the send returns the first copy's offset, so producer retries are idempotent. 0: off.
    pub dedup_window_ms: u64,
}

/// RocketMQ's default file retention (`fileReservedTime`): 72 hours.
pub const DEFAULT_RETENTION_MS: u64 = 72 * 3600 * 1000;
/// How long a message id is remembered for deduplication by default.
pub const DEFAULT_DEDUP_WINDOW_MS: u64 = 2 * 60 * 1000;

impl TopicConfig {
    /// A read-write topic of every message kind, with the default retention and dedup window.
    pub fn new(name: impl Into<String>, queue_count: u32) -> Self {
        Self {
            name: name.into(),
            queue_count,
            permission: Permission::ReadWrite,
            message_kinds: Vec::new(),
            retention_ms: DEFAULT_RETENTION_MS,
            retention_bytes: 0,
            dedup_window_ms: DEFAULT_DEDUP_WINDOW_MS,
        }
    }

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

/// A consumer group's delivery policy, set by an administrator (groups that were never
/// configured use [`GroupConfig::default_for`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupConfig {
    pub name: String,
    /// Orderly (FIFO) consumption: a queue hands out nothing new while any of its messages
    /// is in flight to the group, so each message group is consumed in send order.
    pub orderly: bool,
    /// Deliveries before a message goes to the group's dead-letter queue (RocketMQ's default:
    /// 16 retries, so 17 deliveries).
    pub max_delivery_attempts: u32,
    /// Broadcasting: every consumer (client) gets every message, instead of each message
    /// going to one consumer of the group.
    pub broadcast: bool,
    /// How long a consumer waits before a message it failed to consume is delivered again.
    /// The broker hands it to the group's consumers in their settings; push consumers apply
    /// it when a listener fails.
    pub retry: RetryBackoff,
}

/// A retry schedule, by delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetryBackoff {
    /// The n-th retry waits the n-th delay (the last one repeats).
    Customized { delays_ms: Vec<u64> },
    /// `initial_ms * multiplier^(n-1)`, capped at `max_ms`. The multiplier is kept in
    /// thousandths so that configurations compare (and replicate) exactly.
    Exponential {
        initial_ms: u64,
        max_ms: u64,
        multiplier_milli: u32,
    },
}

impl Default for RetryBackoff {
    /// RocketMQ's default: 1 s, 5 s, 10 s, 30 s, 1 min ... 2 h.
    fn default() -> Self {
        const SECS: [u64; 18] = [
            1, 5, 10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600, 7200,
        ];
        RetryBackoff::Customized {
            delays_ms: SECS.iter().map(|s| s * 1000).collect(),
        }
    }
}

impl GroupConfig {
    pub const DEFAULT_MAX_DELIVERY_ATTEMPTS: u32 = 17;

    pub fn default_for(name: &str) -> Self {
        Self {
            name: name.to_string(),
            orderly: false,
            max_delivery_attempts: Self::DEFAULT_MAX_DELIVERY_ATTEMPTS,
            broadcast: false,
            retry: RetryBackoff::default(),
        }
    }
}

/// Which messages a consumer wants; evaluated at apply time, so every replica agrees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Filter {
    All,
    /// Any of these tags (`a||b`).
    Tags(Vec<String>),
    /// A RocketMQ SQL92 expression over the user properties (and `TAGS`).
    Sql(String),
}

/// Names one delivery of one message to a consumer group. `generation` is the log index of
/// the command that made this delivery, so an older delivery's handle is recognisably stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    pub queue_id: u32,
    pub offset: u64,
    pub generation: u64,
}

/// One message handed out by a [`Command::Pop`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Popped {
    pub message: StoredMessage,
    pub handle: Handle,
    /// 1 for the first delivery.
    pub attempt: u32,
    pub visible_at_ms: i64,
}

/// The name of a consumer group's dead-letter topic.
pub fn dead_letter_topic(group: &str) -> String {
    format!("%DLQ%{group}")
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
    /// Create a consumer group or replace its configuration.
    PutGroup(GroupConfig),
    /// Hand out up to `max` messages of `topic`'s `queue_ids` to a consumer of `group`:
    /// first those whose invisibility expired (redeliveries), then new ones matching
    /// `filter`. Each becomes invisible until `now_ms + invisible_ms`.
    Pop {
        group: String,
        /// The consuming client; only broadcasting groups keep state per consumer.
        consumer: String,
        topic: String,
        queue_ids: Vec<u32>,
        max: u32,
        invisible_ms: u64,
        now_ms: i64,
        filter: Filter,
    },
    /// Acknowledge deliveries: those messages are consumed.
    Ack {
        group: String,
        consumer: String,
        topic: String,
        handles: Vec<Handle>,
    },
    /// Make a delivered message visible again at `visible_at_ms` (a nack, or a renewal).
    ChangeInvisible {
        group: String,
        consumer: String,
        topic: String,
        handle: Handle,
        visible_at_ms: i64,
    },
    /// Move a delivered message to the group's dead-letter topic now.
    DeadLetter {
        group: String,
        consumer: String,
        topic: String,
        handle: Handle,
        now_ms: i64,
    },
    /// Hold DELAY messages until their delivery timestamps; [`Command::Deliver`] moves them
    /// into their queue then.
    Schedule {
        topic: String,
        queue_id: u32,
        store_timestamp_ms: i64,
        messages: Vec<NewMessage>,
    },
    /// Append every scheduled message due by `now_ms` (at most `max`) to its queue.
    Deliver { now_ms: i64, max: u32 },
    /// Store a transaction's half message, invisible until [`Command::EndTransaction`].
    Prepare {
        topic: String,
        queue_id: u32,
        store_timestamp_ms: i64,
        transaction_id: String,
        message: NewMessage,
    },
    /// Commit (append the half message to its queue) or roll back (drop it).
    EndTransaction {
        transaction_id: String,
        commit: bool,
        store_timestamp_ms: i64,
    },
    /// The producers were asked about these halves once more; halves asked `max_checks`
    /// times are rolled back, as RocketMQ does.
    TransactionsChecked {
        transaction_ids: Vec<String>,
        max_checks: u32,
    },
    /// Delete a topic and its messages. Its queues keep their offsets, so a topic created
    /// again under the name continues after them and no consumer cursor points past the end.
    DeleteTopic { name: String },
    /// Move a consumer group, on every queue of `topic`, to the first message stored at or
    /// after `timestamp_ms` (the queue's end if none was): the receive cursor of each of its
    /// consumers and the committed offset. Messages in flight to the group are dropped from
    /// the in-flight table (their handles go stale), so nothing is delivered twice at once.
    /// Offsets are resolved when applied, against the state every replica has then.
    ResetOffsets {
        group: String,
        topic: String,
        timestamp_ms: i64,
    },
    /// Delete a queue's messages below `before_offset` (retention). The leader proposes it
    /// from the topic's retention settings; every replica deletes the same messages.
    Expire {
        topic: String,
        queue_id: u32,
        before_offset: u64,
    },
    /// Several commands proposed at about the same time, applied in order as one entry: the
    /// leader coalesces concurrent proposals so that one entry, one log write and one
    /// replication slot carry many of them. Only commands that do not read state (see
    /// [`Command::batchable`]) may be batched, because a command that reads state must see
    /// earlier writes, and those can only be written between entries (the state machine
    /// persists `last_applied` with them). Replicas refuse any other sub-command, each on its
    /// own, the same way.
    Batch(Vec<Command>),
}

impl Command {
    /// Whether applying this command reads state (beyond the topic, queue and group caches)
    /// that earlier commands may have written.
    pub fn reads_state(&self) -> bool {
        matches!(
            self,
            Command::Pop { .. }
                | Command::Ack { .. }
                | Command::ChangeInvisible { .. }
                | Command::DeadLetter { .. }
                | Command::Deliver { .. }
                | Command::EndTransaction { .. }
                | Command::TransactionsChecked { .. }
                | Command::ResetOffsets { .. }
                // Read the messages they delete, which earlier entries may have appended.
                | Command::Expire { .. }
                | Command::DeleteTopic { .. }
        ) || matches!(self, Command::Batch(cmds) if cmds.iter().any(Command::reads_state))
    }

    /// Whether this command may go into a [`Command::Batch`] with others.
    pub fn batchable(&self) -> bool {
        !self.reads_state() && !matches!(self, Command::Batch(_))
    }

    /// About how many bytes this command takes in the log: the message bodies, which dwarf
    /// everything else, plus a little per message. Used to bound batches, not for accounting.
    pub fn payload_bytes(&self) -> usize {
        const PER_MESSAGE: usize = 128;
        let messages = |ms: &[NewMessage]| -> usize {
            ms.iter()
                .map(|m| m.body.len() + PER_MESSAGE + m.properties.len() * 32)
                .sum()
        };
        match self {
            Command::Append { messages: ms, .. } | Command::Schedule { messages: ms, .. } => {
                messages(ms)
            }
            Command::Prepare { message, .. } => messages(std::slice::from_ref(message)),
            Command::Batch(cmds) => cmds.iter().map(Command::payload_bytes).sum(),
            _ => PER_MESSAGE,
        }
    }
}

/// What applying a [`Command`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Blank and membership entries.
    None,
    Appended {
        /// Offset of the first message stored by this command.
        first_offset: u64,
        /// Messages stored by this command (duplicates are not).
        count: u32,
        store_timestamp_ms: i64,
        /// (queue id, offset) of each message of the command, in order: where it was stored
        /// now, or, for a duplicate within the topic's dedup window, where its first copy is
        /// (possibly another queue: producers retry on another queue).
        offsets: Vec<(u32, u64)>,
    },
    TopicPut,
    OffsetCommitted,
    GroupPut,
    Popped(Vec<Popped>),
    /// Per handle of an [`Command::Ack`]: whether it named the current delivery.
    Acked(Vec<bool>),
    /// The new delivery handle after [`Command::ChangeInvisible`].
    InvisibilityChanged(Handle),
    DeadLettered,
    Scheduled {
        count: u32,
    },
    Delivered {
        count: u32,
    },
    Prepared,
    TransactionEnded {
        /// Where a committed message landed.
        offset: Option<u64>,
    },
    TransactionsChecked {
        rolled_back: u32,
    },
    TopicDeleted,
    /// The new offset of each queue, by queue id, after [`Command::ResetOffsets`].
    OffsetsReset(Vec<u64>),
    /// Messages deleted by [`Command::Expire`].
    Expired {
        removed: u64,
    },
    /// The command was valid when proposed but not against the state it was applied to
    /// (e.g. the topic was deleted in between). Nothing was changed.
    Rejected(Rejection),
    /// One result per command of a [`Command::Batch`], in order.
    Batch(Vec<CommandResult>),
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
    #[error("receipt handle is stale or unknown: {0}")]
    InvalidHandle(String),
    #[error("transaction {0:?} is unknown or already ended")]
    UnknownTransaction(String),
    #[error("{field} is invalid: {reason}")]
    Invalid { field: String, reason: String },
}
