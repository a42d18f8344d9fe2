//! The replicated state machine on RocksDB, and read access to its applied state.
//!
//! Column families:
//! - `messages`: `topic \0 queue_id(be32) offset(be64)` -> body key (12 bytes): where the
//!   message of that queue offset is kept in `bodies`
//! - `bodies`:   `log_index(be64) n(be32)` -> bincode [`StoredMessage`], the n-th message
//!   the entry at `log_index` stored. Keyed in apply order rather than by queue, so that
//!   every memtable flush covers a key range after all earlier ones and RocksDB moves the
//!   files down its levels without rewriting them; keyed by queue, each flush overlapped the
//!   last (it spans every queue) and compaction rewrote every body about twice more.
//! - `queues`:   `topic \0 queue_id(be32)` -> bincode [`QueueState`]
//! - `topics`:   `topic` -> bincode [`TopicConfig`]
//! - `offsets`:  `group \0 topic \0 queue_id(be32)` -> be64 committed offset
//! - `meta`:     last applied log id, last membership, install marker
//! - `groups`:   `group` -> bincode [`GroupConfig`]
//! - `pops`:     pop key (`group \0 consumer \0 topic \0 queue_id(be32)`) -> be64 next offset
//!   to hand out to that consumer group
//! - `inflight`: pop key + `offset(be64)` -> bincode `Inflight` (delivered, not yet acked)
//! - `timers`:   `due_ms(be64) log_index(be64) n(be32)` -> bincode `Timed` (DELAY messages)
//! - `halves`:   `transaction_id` -> bincode `Half` (prepared transaction messages)
//! - `ids`:      `topic \0 message_id` -> `queue_id(be32) offset(be64) store_ms(be64)`: the
//!   newest copy of a message id, for deduplication and lookup by id
//! - `keys`:     `topic \0 key \0 queue_id(be32) offset(be64)` -> empty: lookup by key
//!
//! The consumption commands (pop, ack, delay, transactions) live in `consume`.
//!
//! Writes skip RocksDB's WAL: the Raft log already holds every command durably, so the
//! state machine only has to be a consistent prefix of it after a crash. `atomic_flush`
//! makes every flush cover all column families at one point, `last_applied` is written in
//! the same batch as the state it describes, and openraft replays the log from there on
//! restart. The log is purged only up to a snapshot, and a snapshot flushes the memtables
//! after it is taken, so the log never loses an entry the state machine still needs.
//! This halves the bytes each message costs the disk (see docs/design.md).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, StorageIOError,
};
use rocksdb::{
    ColumnFamilyDescriptor, DB, FlushOptions, IteratorMode, ReadOptions, WriteBatch, WriteOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

mod consume;
mod recent_ids;
pub use consume::{HalfMessage, PopReadiness, QueueProgress};

use crate::limits;
use crate::snapshot::{SnapshotFileError, SnapshotReader, SnapshotWriter};
use crate::types::{
    Command, CommandResult, Entry, GroupConfig, LogId, NewMessage, Rejection, SnapshotMeta,
    StorageError, StoredMembership, StoredMessage, TopicConfig, TypeConfig,
};

const CF_MESSAGES: &str = "messages";
const CF_QUEUES: &str = "queues";
const CF_TOPICS: &str = "topics";
const CF_OFFSETS: &str = "offsets";
const CF_META: &str = "meta";
const CF_GROUPS: &str = "groups";
const CF_POPS: &str = "pops";
const CF_INFLIGHT: &str = "inflight";
const CF_TIMERS: &str = "timers";
const CF_HALVES: &str = "halves";
const CF_IDS: &str = "ids";
const CF_KEYS: &str = "keys";
const CF_BODIES: &str = "bodies";
/// Column families in snapshot order; a record's cf byte is its position here plus one,
/// so new families are only ever added at the end.
const DATA_CFS: [&str; 13] = [
    CF_MESSAGES,
    CF_QUEUES,
    CF_TOPICS,
    CF_OFFSETS,
    CF_META,
    CF_GROUPS,
    CF_POPS,
    CF_INFLIGHT,
    CF_TIMERS,
    CF_HALVES,
    CF_IDS,
    CF_KEYS,
    CF_BODIES,
];

const KEY_LAST_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
/// The latest store time of any message applied (be64, signed): the in-memory dedup filters
/// cover only what is stored after it when the state is opened or installed.
const KEY_MAX_STORE_MS: &[u8] = b"max_store_ms";
/// Present while a snapshot is being loaded; on open it means "reload the snapshot".
const KEY_INSTALLING: &[u8] = b"installing";

/// Offsets of one queue: messages `offset_min..offset_next` are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    pub offset_min: u64,
    pub offset_next: u64,
    /// Body bytes of the stored messages (`offset_min..offset_next`), for size retention.
    pub bytes: u64,
}

/// Errors of the read API.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("storage: {0}")]
    Storage(#[from] rocksdb::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

fn queue_key(topic: &str, queue_id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 5);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&queue_id.to_be_bytes());
    k
}

fn message_key(topic: &str, queue_id: u32, offset: u64) -> Vec<u8> {
    let mut k = queue_key(topic, queue_id);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// Where the `n`-th message stored by the entry at `log_index` is kept (`bodies`).
fn body_key(log_index: u64, n: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&log_index.to_be_bytes());
    k[8..].copy_from_slice(&n.to_be_bytes());
    k
}

fn consumer_offset_key(group: &str, topic: &str, queue_id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(group.len() + topic.len() + 6);
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k.extend_from_slice(&queue_key(topic, queue_id));
    k
}

fn sm_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        verb,
        openraft::AnyError::new(&e),
    )
    .into()
}

fn snap_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(
        ErrorSubject::Snapshot(None),
        verb,
        openraft::AnyError::new(&e),
    )
    .into()
}

/// State shared by the state machine, its snapshot builders and readers.
struct Inner {
    db: DB,
    snapshot_dir: PathBuf,
    /// Caches of small, hot state; the truth is in RocksDB. Updated only after the write
    /// that they describe has been made, so a reader never sees an offset it cannot read.
    topics: RwLock<HashMap<String, TopicConfig>>,
    queues: RwLock<HashMap<(String, u32), QueueState>>,
    groups: RwLock<HashMap<String, GroupConfig>>,
    applied_tx: watch::Sender<Option<LogId>>,
    /// Where `begin_receiving_snapshot` put the incoming file.
    receiving: Mutex<Option<PathBuf>>,
    /// Serialises snapshot builds with installs: both replace the snapshot file.
    snapshot_lock: tokio::sync::Mutex<()>,
    counters: AppliedCounters,
    /// Per pop key, an offset below which it has no in-flight entry: scans of the in-flight
    /// table start there instead of walking the tombstones every ack leaves behind (they
    /// stay until compaction, and made each pop slower the longer a group consumed). Only
    /// the apply path raises it, from committed state; anything that could put an entry
    /// below it lowers it first. Readers only use it.
    inflight_floor: Mutex<HashMap<Vec<u8>, u64>>,
    /// Ids stored since the state was opened or installed (the dedup fast path).
    recent_ids: Mutex<recent_ids::RecentIds>,
    /// The latest store time applied, as persisted under `KEY_MAX_STORE_MS`.
    max_store_ms: Mutex<i64>,
}

/// Messages this process applied since it started, for rate metrics. Every node of a group
/// applies the same entries, so every node counts the group's traffic; replay after a restart
/// counts again (Prometheus rates treat the restart as a counter reset).
#[derive(Debug, Default)]
struct AppliedCounters {
    appended: std::sync::atomic::AtomicU64,
    delivered: std::sync::atomic::AtomicU64,
    acked: std::sync::atomic::AtomicU64,
}

/// A reading of the applied-message counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppliedCounts {
    /// Messages appended to queues (sends, due DELAY messages, committed transactions).
    pub appended: u64,
    /// Deliveries handed to consumers (pops), redeliveries included.
    pub delivered: u64,
    /// Deliveries acknowledged.
    pub acked: u64,
}

impl AppliedCounters {
    fn count(&self, result: &CommandResult) {
        use std::sync::atomic::Ordering::Relaxed;
        match result {
            CommandResult::Appended { count, .. } | CommandResult::Delivered { count } => {
                self.appended.fetch_add(u64::from(*count), Relaxed);
            }
            CommandResult::TransactionEnded { offset: Some(_) } => {
                self.appended.fetch_add(1, Relaxed);
            }
            CommandResult::Popped(p) => {
                self.delivered.fetch_add(p.len() as u64, Relaxed);
            }
            CommandResult::Acked(acked) => {
                let n = acked.iter().filter(|a| **a).count();
                self.acked.fetch_add(n as u64, Relaxed);
            }
            CommandResult::Batch(results) => results.iter().for_each(|r| self.count(r)),
            _ => {}
        }
    }

    fn read(&self) -> AppliedCounts {
        use std::sync::atomic::Ordering::Relaxed;
        AppliedCounts {
            appended: self.appended.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            acked: self.acked.load(Relaxed),
        }
    }
}

impl Inner {
    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family is created when the database is opened")
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, ReadError> {
        match self.db.get_cf(self.cf(CF_META), key)? {
            None => Ok(None),
            Some(b) => bincode::deserialize(&b).map(Some).map_err(|e| {
                ReadError::Corrupt(format!("meta {:?}: {e}", String::from_utf8_lossy(key)))
            }),
        }
    }

    /// A topic as the last completed apply left it.
    fn cached_topic(&self, name: &str) -> Option<TopicConfig> {
        self.topics
            .read()
            .expect("lock poisoned")
            .get(name)
            .cloned()
    }

    fn cached_group(&self, name: &str) -> Option<GroupConfig> {
        self.groups
            .read()
            .expect("lock poisoned")
            .get(name)
            .cloned()
    }

    /// Flushes every column family's memtable, all at one point (atomic_flush).
    fn flush(&self) -> Result<(), rocksdb::Error> {
        let mut opts = FlushOptions::default();
        opts.set_wait(true);
        let cfs: Vec<_> = DATA_CFS.iter().map(|n| self.cf(n)).collect();
        self.db.flush_cfs_opt(&cfs, &opts)
    }

    fn reload_caches(&self) -> Result<(), ReadError> {
        // A loaded snapshot replaces the in-flight table.
        self.inflight_floor.lock().expect("lock poisoned").clear();
        // ... and the ids: the dedup filters start over from what the state holds.
        let max_store_ms = match self.db.get_cf(self.cf(CF_META), KEY_MAX_STORE_MS)? {
            None => i64::MIN,
            Some(v) => i64::from_be_bytes(v.as_slice().try_into().map_err(|_| {
                ReadError::Corrupt(format!("max_store_ms has {} bytes, expected 8", v.len()))
            })?),
        };
        *self.max_store_ms.lock().expect("lock poisoned") = max_store_ms;
        self.recent_ids
            .lock()
            .expect("lock poisoned")
            .reset(max_store_ms);
        let mut topics = HashMap::new();
        for item in self.db.iterator_cf(self.cf(CF_TOPICS), IteratorMode::Start) {
            let (_, v) = item?;
            let t: TopicConfig =
                bincode::deserialize(&v).map_err(|e| ReadError::Corrupt(format!("topic: {e}")))?;
            topics.insert(t.name.clone(), t);
        }
        let mut queues = HashMap::new();
        for item in self.db.iterator_cf(self.cf(CF_QUEUES), IteratorMode::Start) {
            let (k, v) = item?;
            let split = k
                .iter()
                .position(|b| *b == 0)
                .filter(|p| k.len() == p + 5)
                .ok_or_else(|| ReadError::Corrupt("queue key".into()))?;
            let topic = String::from_utf8(k[..split].to_vec())
                .map_err(|_| ReadError::Corrupt("queue key is not utf-8".into()))?;
            let mut qid = [0u8; 4];
            qid.copy_from_slice(&k[split + 1..]);
            let q: QueueState =
                bincode::deserialize(&v).map_err(|e| ReadError::Corrupt(format!("queue: {e}")))?;
            queues.insert((topic, u32::from_be_bytes(qid)), q);
        }
        let mut groups = HashMap::new();
        for item in self.db.iterator_cf(self.cf(CF_GROUPS), IteratorMode::Start) {
            let (_, v) = item?;
            let g: GroupConfig =
                bincode::deserialize(&v).map_err(|e| ReadError::Corrupt(format!("group: {e}")))?;
            groups.insert(g.name.clone(), g);
        }
        *self.topics.write().expect("lock poisoned") = topics;
        *self.queues.write().expect("lock poisoned") = queues;
        *self.groups.write().expect("lock poisoned") = groups;
        Ok(())
    }

    fn snapshot_files(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.snapshot_dir)? {
            let p = e?.path();
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snap-"))
            {
                out.push(p);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Makes `path` the only current snapshot file.
    fn promote_snapshot_file(&self, path: &Path, snapshot_id: &str) -> std::io::Result<PathBuf> {
        let dest = self.snapshot_dir.join(format!("snap-{snapshot_id}"));
        let old = self.snapshot_files()?;
        std::fs::rename(path, &dest)?;
        File::open(&self.snapshot_dir)?.sync_all()?;
        for p in old.into_iter().filter(|p| *p != dest) {
            std::fs::remove_file(p)?;
        }
        Ok(dest)
    }

    /// Replaces the whole state with the snapshot in `path` (already verified).
    fn load_snapshot_file(&self, path: &Path) -> Result<SnapshotMeta, SnapshotFileError> {
        let io = |e: rocksdb::Error| SnapshotFileError::Io(std::io::Error::other(e.to_string()));
        let mut no_wal = WriteOptions::default();
        no_wal.disable_wal(true);
        // Mark first and flush it, so a crash half way through is repaired on open.
        self.db
            .put_cf_opt(self.cf(CF_META), KEY_INSTALLING, b"1", &no_wal)
            .map_err(io)?;
        self.flush().map_err(io)?;

        let mut batch = WriteBatch::default();
        for name in DATA_CFS {
            // Every key we write starts with a byte below 0xff (names are ASCII).
            batch.delete_range_cf(self.cf(name), b"".as_slice(), [0xffu8; 8].as_slice());
        }
        self.db.write_opt(batch, &no_wal).map_err(io)?;

        let mut reader = SnapshotReader::open(File::open(path)?)?;
        let meta = reader.meta.clone();
        let mut batch = WriteBatch::default();
        while let Some((cf, key, value)) = reader.next_record()? {
            let name = DATA_CFS
                .get(usize::from(cf) - 1)
                .ok_or_else(|| SnapshotFileError::Corrupt(format!("unknown column family {cf}")))?;
            if *name == CF_META && key == KEY_INSTALLING {
                continue;
            }
            batch.put_cf(self.cf(name), key, value);
            if batch.size_in_bytes() > 4 << 20 {
                self.db
                    .write_opt(std::mem::take(&mut batch), &no_wal)
                    .map_err(io)?;
            }
        }
        // The snapshot's own meta is authoritative for what it covers.
        let meta_cf = self.cf(CF_META);
        batch.put_cf(meta_cf, KEY_LAST_APPLIED, encode_meta(&meta.last_log_id));
        batch.put_cf(meta_cf, KEY_MEMBERSHIP, encode_meta(&meta.last_membership));
        batch.delete_cf(meta_cf, KEY_INSTALLING);
        self.db.write_opt(batch, &no_wal).map_err(io)?;
        self.flush().map_err(io)?;
        self.reload_caches()
            .map_err(|e| SnapshotFileError::Corrupt(e.to_string()))?;
        Ok(meta)
    }
}

/// bincode of a meta value; these are plain structs for which encoding cannot fail.
fn encode_meta<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("meta values always serialize")
}

/// The state machine store handed to openraft.
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

/// Read access to the applied state, for the broker's services. Cheap to clone.
#[derive(Clone)]
pub struct StateReader {
    inner: Arc<Inner>,
}

/// Snapshot builder handed to openraft.
pub struct SnapshotBuilder {
    inner: Arc<Inner>,
}

impl StateMachineStore {
    /// Opens (or creates) the state machine under `dir` (RocksDB in `dir/db`, snapshots in
    /// `dir/snapshots`).
    pub fn open(dir: &Path) -> Result<Self, ReadError> {
        let snapshot_dir = dir.join("snapshots");
        std::fs::create_dir_all(&snapshot_dir)
            .map_err(|e| ReadError::Corrupt(format!("creating {}: {e}", snapshot_dir.display())))?;
        let mut opts = crate::rocks::db_options(&dir.join("db"));
        opts.set_atomic_flush(true);
        let cfs = DATA_CFS.map(|n| {
            let cf_opts = match n {
                CF_BODIES => crate::rocks::payload_cf_options(),
                CF_IDS => crate::rocks::lookup_cf_options(),
                _ => crate::rocks::small_cf_options(),
            };
            ColumnFamilyDescriptor::new(n, cf_opts)
        });
        let db = DB::open_cf_descriptors(&opts, dir.join("db"), cfs)?;
        let (applied_tx, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            db,
            snapshot_dir,
            topics: RwLock::new(HashMap::new()),
            queues: RwLock::new(HashMap::new()),
            groups: RwLock::new(HashMap::new()),
            applied_tx,
            receiving: Mutex::new(None),
            snapshot_lock: tokio::sync::Mutex::new(()),
            counters: AppliedCounters::default(),
            inflight_floor: Mutex::new(HashMap::new()),
            recent_ids: Mutex::default(),
            max_store_ms: Mutex::new(i64::MIN),
        });
        if inner
            .db
            .get_cf(inner.cf(CF_META), KEY_INSTALLING)?
            .is_some()
        {
            let snap = inner
                .snapshot_files()
                .ok()
                .and_then(|f| f.last().cloned())
                .ok_or_else(|| {
                    ReadError::Corrupt("interrupted snapshot install and no snapshot file".into())
                })?;
            tracing::warn!(file = %snap.display(), "finishing an interrupted snapshot install");
            inner
                .load_snapshot_file(&snap)
                .map_err(|e| ReadError::Corrupt(e.to_string()))?;
        }
        for f in std::fs::read_dir(&inner.snapshot_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = f.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("tmp-") || name.starts_with("recv-") {
                let _ = std::fs::remove_file(f.path());
            }
        }
        inner.reload_caches()?;
        let applied = inner.get_meta::<Option<LogId>>(KEY_LAST_APPLIED)?.flatten();
        inner.applied_tx.send_replace(applied);
        Ok(Self { inner })
    }

    pub fn reader(&self) -> StateReader {
        StateReader {
            inner: self.inner.clone(),
        }
    }

    /// A topic as the entries applied so far left it.
    fn topic_as_of(&self, p: &Pending, name: &str) -> Option<TopicConfig> {
        if let Some(t) = p.topics.get(name) {
            return Some(t.clone());
        }
        if p.deleted_topics.contains(name) {
            return None;
        }
        self.inner.cached_topic(name)
    }

    fn group_as_of(&self, p: &Pending, name: &str) -> GroupConfig {
        p.groups
            .get(name)
            .cloned()
            .or_else(|| self.inner.cached_group(name))
            .unwrap_or_else(|| GroupConfig::default_for(name))
    }

    fn queue_as_of(&self, p: &Pending, topic: &str, queue_id: u32) -> QueueState {
        let key = (topic.to_string(), queue_id);
        match p.queues.get(&key) {
            Some(q) => *q,
            None => self
                .inner
                .queues
                .read()
                .expect("lock poisoned")
                .get(&key)
                .copied()
                .unwrap_or_default(),
        }
    }

    /// The newest copy of `message_id` in `topic`, as the entries applied so far left it.
    fn stored_id(
        &self,
        p: &Pending,
        topic: &str,
        message_id: &str,
    ) -> Result<Option<IdEntry>, StorageError> {
        let key = id_key(topic, message_id);
        if let Some(e) = p.ids.get(&key) {
            return Ok(Some(*e));
        }
        let raw = self
            .inner
            .db
            .get_cf(self.inner.cf(CF_IDS), &key)
            .map_err(|e| sm_err(ErrorVerb::Read, e))?;
        Ok(raw.as_deref().and_then(IdEntry::decode))
    }

    /// Appends `messages` to one queue (already validated against it), assigning offsets.
    /// A message whose id the topic stored within its dedup window is not stored again.
    /// Returns (first new offset, messages stored, offset of each input message).
    fn append(
        &self,
        p: &mut Pending,
        log_index: u64,
        topic: &str,
        queue_id: u32,
        store_timestamp_ms: i64,
        messages: impl IntoIterator<Item = NewMessage>,
    ) -> Result<Appended, StorageError> {
        let inner = &self.inner;
        let window = self.topic_as_of(p, topic).map_or(0, |t| t.dedup_window_ms);
        let mut q = self.queue_as_of(p, topic, queue_id);
        #[cfg(feature = "fault-injection")]
        if std::mem::take(&mut p.reuse_offset) && q.offset_next > q.offset_min {
            q.offset_next -= 1;
        }
        let first_offset = q.offset_next;
        let mut offsets = Vec::new();
        let mut recent = inner.recent_ids.lock().expect("lock poisoned");
        for m in messages {
            let hash = recent_ids::id_hash(topic, &m.message_id);
            if window > 0
                && !recent.certainly_absent(hash, store_timestamp_ms.saturating_sub(window as i64))
                && let Some(held) = self.stored_id(p, topic, &m.message_id)?
                && held.store_ms.saturating_add(window as i64) >= store_timestamp_ms
                && (if held.queue_id == queue_id {
                    // This queue's state is `q` until the command ends.
                    (q.offset_min..q.offset_next).contains(&held.offset)
                } else {
                    self.holds(p, topic, held)
                })
            {
                offsets.push((held.queue_id, held.offset));
                continue;
            }
            let offset = q.offset_next;
            let entry = IdEntry {
                queue_id,
                offset,
                store_ms: store_timestamp_ms,
            };
            let id_key = id_key(topic, &m.message_id);
            p.batch.put_cf(inner.cf(CF_IDS), &id_key, entry.encode());
            p.ids.insert(id_key, entry);
            recent.insert(hash, store_timestamp_ms);
            p.max_store_ms = p.max_store_ms.max(Some(store_timestamp_ms));
            for k in &m.keys {
                p.batch.put_cf(
                    inner.cf(CF_KEYS),
                    key_index_key(topic, k, queue_id, offset),
                    [],
                );
            }
            q.bytes += m.body.len() as u64;
            let stored = StoredMessage {
                topic: topic.to_string(),
                queue_id,
                offset,
                store_timestamp_ms,
                message: m,
            };
            let value = bincode::serialize(&stored).map_err(|e| sm_err(ErrorVerb::Write, e))?;
            let body = body_key(log_index, p.messages_in_entry);
            p.messages_in_entry += 1;
            p.batch.put_cf(inner.cf(CF_BODIES), body, value);
            p.batch.put_cf(
                inner.cf(CF_MESSAGES),
                message_key(topic, queue_id, offset),
                body,
            );
            q.offset_next += 1;
            offsets.push((queue_id, offset));
        }
        let qv = bincode::serialize(&q).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        p.batch
            .put_cf(inner.cf(CF_QUEUES), queue_key(topic, queue_id), qv);
        p.queues.insert((topic.to_string(), queue_id), q);
        Ok((first_offset, (q.offset_next - first_offset) as u32, offsets))
    }

    /// Whether the message an id entry points at is still stored (not expired or deleted).
    fn holds(&self, p: &Pending, topic: &str, e: IdEntry) -> bool {
        let q = self.queue_as_of(p, topic, e.queue_id);
        (q.offset_min..q.offset_next).contains(&e.offset)
    }

    /// Deletes `topic`'s messages of one queue below `before` and their index entries.
    fn expire(
        &self,
        p: &mut Pending,
        topic: &str,
        queue_id: u32,
        before: u64,
    ) -> Result<u64, StorageError> {
        let inner = &self.inner;
        let mut q = self.queue_as_of(p, topic, queue_id);
        let before = before.min(q.offset_next);
        if before <= q.offset_min {
            return Ok(0);
        }
        // Messages this apply has not written yet cannot be below offset_next's old value,
        // so everything to delete is in RocksDB already.
        let start = message_key(topic, queue_id, q.offset_min);
        let end = message_key(topic, queue_id, before);
        let stored = inner
            .located_between(topic, queue_id, q.offset_min, before)
            .map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let mut removed = 0u64;
        for (body, m) in stored {
            p.batch.delete_cf(inner.cf(CF_BODIES), body);
            q.bytes = q.bytes.saturating_sub(m.message.body.len() as u64);
            let id_key = id_key(topic, &m.message.message_id);
            // The id may point at a later copy; only this copy's entry goes.
            if self
                .stored_id(p, topic, &m.message.message_id)?
                .is_some_and(|e| e.queue_id == queue_id && e.offset == m.offset)
            {
                p.batch.delete_cf(inner.cf(CF_IDS), &id_key);
                p.ids.remove(&id_key);
            }
            for k in &m.message.keys {
                p.batch.delete_cf(
                    inner.cf(CF_KEYS),
                    key_index_key(topic, k, queue_id, m.offset),
                );
            }
            removed += 1;
        }
        p.batch
            .delete_range_cf(inner.cf(CF_MESSAGES), start.as_slice(), end.as_slice());
        q.offset_min = before;
        let qv = bincode::serialize(&q).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        p.batch
            .put_cf(inner.cf(CF_QUEUES), queue_key(topic, queue_id), qv);
        p.queues.insert((topic.to_string(), queue_id), q);
        Ok(removed)
    }

    fn put_topic(&self, p: &mut Pending, cfg: &TopicConfig) -> Result<(), StorageError> {
        let v = bincode::serialize(cfg).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        p.batch
            .put_cf(self.inner.cf(CF_TOPICS), cfg.name.as_bytes(), v);
        p.deleted_topics.remove(&cfg.name);
        p.topics.insert(cfg.name.clone(), cfg.clone());
        Ok(())
    }

    /// Writes what the entries applied so far changed, so that the next command can read it
    /// from RocksDB. `last_applied` goes into the same batch, so a crash after this write
    /// resumes replay right after these entries: the state stays a prefix of the log.
    fn commit(&self, p: &mut Pending) -> Result<(), StorageError> {
        let Some(last) = p.last else {
            return Ok(());
        };
        let mut batch = std::mem::take(&mut p.batch);
        let meta = self.inner.cf(CF_META);
        batch.put_cf(meta, KEY_LAST_APPLIED, encode_meta(&Some(last)));
        if let Some(m) = p.membership.take() {
            batch.put_cf(meta, KEY_MEMBERSHIP, encode_meta(&m));
        }
        let mut max_store_ms = self.inner.max_store_ms.lock().expect("lock poisoned");
        if let Some(ms) = p.max_store_ms.take()
            && ms > *max_store_ms
        {
            batch.put_cf(meta, KEY_MAX_STORE_MS, ms.to_be_bytes());
            *max_store_ms = ms;
        }
        drop(max_store_ms);
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        self.inner
            .db
            .write_opt(batch, &opts)
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let inner = &self.inner;
        if !p.deleted_topics.is_empty() {
            let mut topics = inner.topics.write().expect("lock poisoned");
            for name in std::mem::take(&mut p.deleted_topics) {
                topics.remove(&name);
            }
        }
        if !p.topics.is_empty() {
            inner
                .topics
                .write()
                .expect("lock poisoned")
                .extend(std::mem::take(&mut p.topics));
        }
        if !p.queues.is_empty() {
            inner
                .queues
                .write()
                .expect("lock poisoned")
                .extend(std::mem::take(&mut p.queues));
        }
        p.ids.clear();
        if !p.groups.is_empty() {
            inner
                .groups
                .write()
                .expect("lock poisoned")
                .extend(std::mem::take(&mut p.groups));
        }
        inner.applied_tx.send_replace(Some(last));
        Ok(())
    }

    fn apply_command(
        &self,
        cmd: &Command,
        log_index: u64,
        p: &mut Pending,
    ) -> Result<CommandResult, StorageError> {
        let inner = &self.inner;
        match cmd {
            Command::Append {
                topic,
                queue_id,
                store_timestamp_ms,
                messages,
            } => {
                let topic_cfg = self.topic_as_of(p, topic);
                if let Err(r) = limits::validate_batch(messages).and_then(|_| {
                    limits::validate_append_target(topic_cfg.as_ref(), topic, *queue_id, messages)
                }) {
                    return Ok(CommandResult::Rejected(r));
                }
                let (first_offset, count, offsets) = self.append(
                    p,
                    log_index,
                    topic,
                    *queue_id,
                    *store_timestamp_ms,
                    messages.iter().cloned(),
                )?;
                Ok(CommandResult::Appended {
                    first_offset,
                    count,
                    store_timestamp_ms: *store_timestamp_ms,
                    offsets,
                })
            }
            Command::PutTopic(cfg) => {
                if let Err(r) = limits::validate_topic_config(cfg) {
                    return Ok(CommandResult::Rejected(r));
                }
                let old = self.topic_as_of(p, &cfg.name);
                if let Some(old) = old
                    && cfg.queue_count < old.queue_count
                {
                    // Shrinking would orphan stored messages of the dropped queues.
                    return Ok(CommandResult::Rejected(Rejection::Invalid {
                        field: "topic.queue_count".into(),
                        reason: format!(
                            "is {}, below the current {}; queues cannot be removed from a topic",
                            cfg.queue_count, old.queue_count
                        ),
                    }));
                }
                self.put_topic(p, cfg)?;
                Ok(CommandResult::TopicPut)
            }
            Command::CommitOffset {
                group,
                topic,
                queue_id,
                offset,
            } => {
                if let Err(r) = limits::validate_name("consumer_group", group) {
                    return Ok(CommandResult::Rejected(r));
                }
                let topic_cfg = self.topic_as_of(p, topic);
                let Some(topic_cfg) = topic_cfg else {
                    return Ok(CommandResult::Rejected(Rejection::UnknownTopic(
                        topic.clone(),
                    )));
                };
                if *queue_id >= topic_cfg.queue_count {
                    return Ok(CommandResult::Rejected(Rejection::QueueOutOfRange {
                        topic: topic.clone(),
                        queue_id: *queue_id,
                        queue_count: topic_cfg.queue_count,
                    }));
                }
                p.batch.put_cf(
                    inner.cf(CF_OFFSETS),
                    consumer_offset_key(group, topic, *queue_id),
                    offset.to_be_bytes(),
                );
                Ok(CommandResult::OffsetCommitted)
            }
            Command::PutGroup(cfg) => {
                if let Err(r) = limits::validate_group_config(cfg) {
                    return Ok(CommandResult::Rejected(r));
                }
                let v = bincode::serialize(cfg).map_err(|e| sm_err(ErrorVerb::Write, e))?;
                p.batch.put_cf(inner.cf(CF_GROUPS), cfg.name.as_bytes(), v);
                p.groups.insert(cfg.name.clone(), cfg.clone());
                Ok(CommandResult::GroupPut)
            }
            Command::DeleteTopic { name } => {
                let Some(cfg) = self.topic_as_of(p, name) else {
                    return Ok(CommandResult::Rejected(Rejection::UnknownTopic(
                        name.clone(),
                    )));
                };
                let mut start = name.as_bytes().to_vec();
                start.push(0);
                let mut end = name.as_bytes().to_vec();
                end.push(1);
                // The bodies are keyed by the entries that stored them, not by topic: find
                // them through the offset index (all in RocksDB: this command reads state).
                for body in inner
                    .body_keys_in(&start, &end)
                    .map_err(|e| sm_err(ErrorVerb::Read, e))?
                {
                    p.batch.delete_cf(inner.cf(CF_BODIES), body);
                }
                p.batch
                    .delete_range_cf(inner.cf(CF_MESSAGES), start.as_slice(), end.as_slice());
                p.batch
                    .delete_range_cf(inner.cf(CF_IDS), start.as_slice(), end.as_slice());
                p.batch
                    .delete_range_cf(inner.cf(CF_KEYS), start.as_slice(), end.as_slice());
                p.ids.retain(|k, _| !k.starts_with(&start));
                for q in 0..cfg.queue_count {
                    let mut state = self.queue_as_of(p, name, q);
                    state.offset_min = state.offset_next;
                    state.bytes = 0;
                    let v = bincode::serialize(&state).map_err(|e| sm_err(ErrorVerb::Write, e))?;
                    p.batch.put_cf(inner.cf(CF_QUEUES), queue_key(name, q), v);
                    p.queues.insert((name.clone(), q), state);
                }
                p.batch.delete_cf(inner.cf(CF_TOPICS), name.as_bytes());
                p.topics.remove(name);
                p.deleted_topics.insert(name.clone());
                Ok(CommandResult::TopicDeleted)
            }
            Command::Expire {
                topic,
                queue_id,
                before_offset,
            } => {
                if self.topic_as_of(p, topic).is_none() {
                    return Ok(CommandResult::Rejected(Rejection::UnknownTopic(
                        topic.clone(),
                    )));
                }
                let removed = self.expire(p, topic, *queue_id, *before_offset)?;
                Ok(CommandResult::Expired { removed })
            }
            Command::Batch(cmds) => {
                let mut results = Vec::with_capacity(cmds.len());
                for cmd in cmds {
                    results.push(if cmd.batchable() {
                        self.apply_command(cmd, log_index, p)?
                    } else {
                        CommandResult::Rejected(Rejection::Invalid {
                            field: "batch".into(),
                            reason: "holds a command that reads state or another batch; \
                                     such commands must be entries of their own"
                                .into(),
                        })
                    });
                }
                Ok(CommandResult::Batch(results))
            }
            other => self.apply_consume(other, log_index, p),
        }
    }
}

/// What the entries of one `apply` call changed and has not yet been written.
#[derive(Default)]
struct Pending {
    batch: WriteBatch,
    topics: HashMap<String, TopicConfig>,
    /// Topics deleted by these entries (and not created again since).
    deleted_topics: std::collections::HashSet<String>,
    queues: HashMap<(String, u32), QueueState>,
    groups: HashMap<String, GroupConfig>,
    /// Message ids written by these entries (the batch is not readable).
    ids: HashMap<Vec<u8>, IdEntry>,
    last: Option<LogId>,
    membership: Option<StoredMembership>,
    /// DELAY timers the current entry has written so far: numbers them uniquely within
    /// their entry (their key holds the entry's log index).
    timers_in_entry: u32,
    /// Messages the current entry has stored so far: numbers their bodies within it.
    messages_in_entry: u32,
    /// The latest store time of the messages these entries stored.
    max_store_ms: Option<i64>,
    /// A test-only broken build's next append reuses an offset ([`crate::fault`]).
    #[cfg(feature = "fault-injection")]
    reuse_offset: bool,
}

/// What [`StateMachineStore::append`] did: (first new offset, messages stored, the
/// (queue, offset) of each input message).
type Appended = (u64, u32, Vec<(u32, u64)>);

/// Where the newest copy of a message id is (the `ids` column family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IdEntry {
    queue_id: u32,
    offset: u64,
    store_ms: i64,
}

impl IdEntry {
    fn encode(&self) -> [u8; 20] {
        let mut v = [0u8; 20];
        v[..4].copy_from_slice(&self.queue_id.to_be_bytes());
        v[4..12].copy_from_slice(&self.offset.to_be_bytes());
        v[12..].copy_from_slice(&self.store_ms.to_be_bytes());
        v
    }

    fn decode(v: &[u8]) -> Option<Self> {
        Some(Self {
            queue_id: u32::from_be_bytes(v.get(..4)?.try_into().ok()?),
            offset: u64::from_be_bytes(v.get(4..12)?.try_into().ok()?),
            store_ms: i64::from_be_bytes(v.get(12..20)?.try_into().ok()?),
        })
    }
}

fn id_key(topic: &str, message_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + message_id.len() + 1);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(message_id.as_bytes());
    k
}

/// `topic \0 key \0`: the prefix of every index entry of one key.
fn key_prefix(topic: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + key.len() + 14);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k.push(0);
    k
}

fn key_index_key(topic: &str, key: &str, queue_id: u32, offset: u64) -> Vec<u8> {
    let mut k = key_prefix(topic, key);
    k.extend_from_slice(&queue_id.to_be_bytes());
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

impl Pending {
    fn is_dirty(&self) -> bool {
        !self.batch.is_empty() || self.membership.is_some()
    }
}

impl StateReader {
    pub fn last_applied(&self) -> Option<LogId> {
        *self.inner.applied_tx.borrow()
    }

    /// Changes whenever entries have been applied; for long polling.
    /// Messages appended, delivered and acked since this process started.
    pub fn applied_counts(&self) -> AppliedCounts {
        self.inner.counters.read()
    }

    pub fn subscribe_applied(&self) -> watch::Receiver<Option<LogId>> {
        self.inner.applied_tx.subscribe()
    }

    pub fn topic(&self, name: &str) -> Option<TopicConfig> {
        self.inner.cached_topic(name)
    }

    pub fn topics(&self) -> Vec<TopicConfig> {
        let mut v: Vec<_> = self
            .inner
            .topics
            .read()
            .expect("lock poisoned")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn queue_state(&self, topic: &str, queue_id: u32) -> QueueState {
        self.inner
            .queues
            .read()
            .expect("lock poisoned")
            .get(&(topic.to_string(), queue_id))
            .copied()
            .unwrap_or_default()
    }

    /// How many message bodies this node keeps, over all topics: a full scan, for tests and
    /// diagnostics (it must equal the messages the queues hold).
    pub fn stored_bodies(&self) -> Result<u64, ReadError> {
        let mut n = 0;
        for item in self
            .inner
            .db
            .iterator_cf(self.inner.cf(CF_BODIES), IteratorMode::Start)
        {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// Up to `max_count` messages of one queue from `offset` on, in offset order.
    pub fn read_messages(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_count: usize,
    ) -> Result<Vec<StoredMessage>, ReadError> {
        let q = self.queue_state(topic, queue_id);
        let start = offset.max(q.offset_min);
        let end = q.offset_next.min(start.saturating_add(max_count as u64));
        self.inner.messages_between(topic, queue_id, start, end)
    }

    pub fn consumer_offset(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
    ) -> Result<Option<u64>, ReadError> {
        let v = self.inner.db.get_cf(
            self.inner.cf(CF_OFFSETS),
            consumer_offset_key(group, topic, queue_id),
        )?;
        v.map(|b| {
            <[u8; 8]>::try_from(b.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| ReadError::Corrupt("consumer offset is not 8 bytes".into()))
        })
        .transpose()
    }

    /// Flushes applied state to disk; call on graceful shutdown.
    pub fn flush(&self) -> Result<(), rocksdb::Error> {
        self.inner.flush()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let _guard = self.inner.snapshot_lock.lock().await;
        let inner = self.inner.clone();
        let path = tokio::task::spawn_blocking(move || build_snapshot_file(&inner))
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, std::io::Error::other(e.to_string())))??;
        let (meta, path) = path;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

/// Dumps a consistent view of every column family into a new snapshot file.
fn build_snapshot_file(inner: &Inner) -> Result<(SnapshotMeta, PathBuf), StorageError> {
    let werr = |e: SnapshotFileError| snap_err(ErrorVerb::Write, e);
    let view = inner.db.snapshot();
    let get = |key: &[u8]| -> Result<Option<Vec<u8>>, StorageError> {
        view.get_cf(inner.cf(CF_META), key)
            .map_err(|e| sm_err(ErrorVerb::Read, e))
    };
    let last_applied: Option<LogId> = match get(KEY_LAST_APPLIED)? {
        Some(b) => bincode::deserialize(&b).map_err(|e| sm_err(ErrorVerb::Read, e))?,
        None => None,
    };
    let last_membership: StoredMembership = match get(KEY_MEMBERSHIP)? {
        Some(b) => bincode::deserialize(&b).map_err(|e| sm_err(ErrorVerb::Read, e))?,
        None => StoredMembership::default(),
    };
    // Flush after taking the view: the durable state now covers at least the snapshot,
    // so purging the log up to it can never lose an entry we would have to replay.
    inner.flush().map_err(|e| sm_err(ErrorVerb::Write, e))?;

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let snapshot_id = match last_applied {
        Some(l) => format!("{:020}-{}-{nanos}", l.index, l.leader_id.term),
        None => format!("{:020}-0-{nanos}", 0),
    };
    let meta = SnapshotMeta {
        last_log_id: last_applied,
        last_membership,
        snapshot_id: snapshot_id.clone(),
    };
    let tmp = inner.snapshot_dir.join(format!("tmp-{snapshot_id}"));
    let file = File::create(&tmp).map_err(|e| snap_err(ErrorVerb::Write, e))?;
    let mut w = SnapshotWriter::new(file, &meta).map_err(werr)?;
    for (i, name) in DATA_CFS.iter().enumerate() {
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&view);
        for item in inner
            .db
            .iterator_cf_opt(inner.cf(name), opts, IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| sm_err(ErrorVerb::Read, e))?;
            if *name == CF_META && &*k == KEY_INSTALLING {
                continue;
            }
            w.record(i as u8 + 1, &k, &v).map_err(werr)?;
        }
    }
    w.finish().map_err(werr)?;
    let path = inner
        .promote_snapshot_file(&tmp, &snapshot_id)
        .map_err(|e| snap_err(ErrorVerb::Write, e))?;
    tracing::info!(%snapshot_id, "built snapshot");
    Ok((meta, path))
}

impl StateMachineStore {
    /// The path of the file holding a received snapshot. Normally that is the file
    /// `begin_receiving_snapshot` created; if the caller handed us another file instead,
    /// its contents are copied into the snapshot directory first.
    async fn received_snapshot_path(
        &self,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<PathBuf, StorageError> {
        use std::os::unix::fs::MetadataExt;
        use tokio::io::{AsyncSeekExt, AsyncWriteExt};
        let werr = |e: std::io::Error| snap_err(ErrorVerb::Write, e);
        let mut file = snapshot;
        file.flush().await.map_err(werr)?;
        let handle_meta = file.metadata().await.map_err(werr)?;
        let receiving = self.inner.receiving.lock().expect("lock poisoned").take();
        if let Some(path) = receiving {
            let path_meta = std::fs::metadata(&path).map_err(werr)?;
            if (path_meta.dev(), path_meta.ino()) == (handle_meta.dev(), handle_meta.ino()) {
                file.sync_all().await.map_err(werr)?;
                return Ok(path);
            }
            let _ = std::fs::remove_file(&path);
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = self.inner.snapshot_dir.join(format!("recv-{nanos}"));
        let mut copy = tokio::fs::File::create(&path).await.map_err(werr)?;
        file.seek(std::io::SeekFrom::Start(0)).await.map_err(werr)?;
        tokio::io::copy(&mut file, &mut copy).await.map_err(werr)?;
        copy.sync_all().await.map_err(werr)?;
        Ok(path)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let r = |e: ReadError| sm_err(ErrorVerb::Read, e);
        let applied = self
            .inner
            .get_meta::<Option<LogId>>(KEY_LAST_APPLIED)
            .map_err(r)?
            .flatten();
        let membership = self
            .inner
            .get_meta::<StoredMembership>(KEY_MEMBERSHIP)
            .map_err(r)?
            .unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut p = Pending::default();
        let mut results = Vec::new();
        for entry in entries {
            let prev = p.last.or_else(|| *self.inner.applied_tx.borrow());
            assert!(
                prev.is_none_or(|prev: LogId| prev.index < entry.log_id.index),
                "applied index must only grow: {prev:?} then {}",
                entry.log_id
            );
            p.timers_in_entry = 0;
            p.messages_in_entry = 0;
            let result = match &entry.payload {
                EntryPayload::Blank => CommandResult::None,
                EntryPayload::Normal(cmd) => {
                    // Commands that read state must see every earlier entry's writes, and
                    // the WriteBatch is not readable: write it first.
                    if cmd.reads_state() && p.is_dirty() {
                        self.commit(&mut p)?;
                    }
                    #[cfg(feature = "fault-injection")]
                    if matches!(cmd, Command::Append { .. } | Command::Batch(_)) {
                        p.reuse_offset =
                            crate::fault::first_append_of_new_term(entry.log_id.leader_id.term);
                    }
                    let result = self.apply_command(cmd, entry.log_id.index, &mut p)?;
                    #[cfg(feature = "fault-injection")]
                    {
                        p.reuse_offset = false;
                    }
                    self.inner.counters.count(&result);
                    result
                }
                EntryPayload::Membership(m) => {
                    p.membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                    CommandResult::None
                }
            };
            p.last = Some(entry.log_id);
            results.push(result);
        }
        self.commit(&mut p)?;
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            inner: self.inner.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = self.inner.snapshot_dir.join(format!("recv-{nanos}"));
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let previous = self
            .inner
            .receiving
            .lock()
            .expect("lock poisoned")
            .replace(path);
        if let Some(p) = previous {
            // An earlier transfer was abandoned.
            let _ = std::fs::remove_file(p);
        }
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let _guard = self.inner.snapshot_lock.lock().await;
        let path = self.received_snapshot_path(snapshot).await?;
        let inner = self.inner.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            let rerr = |e: SnapshotFileError| snap_err(ErrorVerb::Read, e);
            let file_meta =
                SnapshotReader::open(File::open(&path).map_err(|e| snap_err(ErrorVerb::Read, e))?)
                    .and_then(|r| r.verify())
                    .map_err(rerr)?;
            if file_meta.last_log_id != meta.last_log_id {
                return Err(snap_err(
                    ErrorVerb::Read,
                    std::io::Error::other(format!(
                        "snapshot file covers {:?} but the leader said {:?}",
                        file_meta.last_log_id, meta.last_log_id
                    )),
                ));
            }
            let dest = inner
                .promote_snapshot_file(&path, &meta.snapshot_id)
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            inner.load_snapshot_file(&dest).map_err(rerr)?;
            inner.applied_tx.send_replace(meta.last_log_id);
            tracing::info!(snapshot_id = %meta.snapshot_id, "installed snapshot");
            Ok(())
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, std::io::Error::other(e.to_string())))?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let files = self
            .inner
            .snapshot_files()
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let Some(path) = files.last() else {
            return Ok(None);
        };
        let reader =
            SnapshotReader::open(File::open(path).map_err(|e| snap_err(ErrorVerb::Read, e))?)
                .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta: reader.meta,
            snapshot: Box::new(file),
        }))
    }
}
