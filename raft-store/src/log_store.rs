//! The Raft log on RocksDB.
//!
//! Layout: column family `entries` maps a big-endian log index to a bincode [`Entry`];
//! column family `meta` holds the vote, the committed log id and the last purged log id.
//!
//! Durability: by default `append` writes its batch with `sync = true` and reports it
//! flushed before returning. openraft 0.9 waits for each append's flush before it does
//! anything else (the next append, replication of it), so a syncer thread of our own never
//! had two appends to batch and cost two thread handoffs per entry on every node; the batching
//! happens one level up, where everything proposed while an append syncs goes into the next
//! one. The fsync blocks the task running the Raft core for its duration, which that task
//! would spend waiting anyway. With [`LogFlush::Async`] the batch goes to the operating system
//! and a thread fsyncs the WAL every interval. Votes and truncations are always written with
//! `sync = true`, which also syncs everything written before them, keeping all log IO
//! ordered.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Weak};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, RaftLogReader, StorageIOError, Vote,
};
use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, ReadOptions, WriteBatch, WriteOptions};

use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

const CF_ENTRIES: &str = "entries";
const CF_META: &str = "meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// Bytes of stored entries one replication request carries at most (unless a single entry
/// is larger): well below the transport's `RAFT_MESSAGE_BYTES_MAX`, leaving room for
/// framing, and small enough that a follower's append and fsync stay short. openraft gives
/// each AppendEntries one heartbeat interval (100 ms by default) and sends it again when
/// that passes; with 16 MiB a loaded follower often took longer, so the same entries went
/// out again and again while the leader held copies of them for each try (in one
/// one-minute fill, 999 such timeouts and a leader at 339 MiB instead of about 240).
pub const REPLICATION_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

/// WAL bytes the log keeps before forcing the flushes that let old WAL files go.
const LOG_WAL_BYTES_MAX: u64 = 128 * 1024 * 1024;

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| {
        read_err(
            ErrorSubject::Logs,
            std::io::Error::other(format!("log key has {} bytes, expected 8", key.len())),
        )
    })?;
    Ok(u64::from_be_bytes(bytes))
}

fn read_err(subject: ErrorSubject<NodeId>, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(subject, ErrorVerb::Read, openraft::AnyError::new(&e)).into()
}

fn write_err(subject: ErrorSubject<NodeId>, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(subject, ErrorVerb::Write, openraft::AnyError::new(&e)).into()
}

/// Shared by the store and its readers.
struct Inner {
    db: DB,
}

impl Inner {
    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family is created when the database is opened")
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let bytes = self
            .db
            .get_cf(self.cf(CF_META), key)
            .map_err(|e| read_err(ErrorSubject::Store, e))?;
        bytes
            .map(|b| bincode::deserialize(&b).map_err(|e| read_err(ErrorSubject::Store, e)))
            .transpose()
    }

    fn put_meta<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
        sync: bool,
    ) -> Result<(), StorageError> {
        let bytes = bincode::serialize(value).map_err(|e| write_err(ErrorSubject::Store, e))?;
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db
            .put_cf_opt(self.cf(CF_META), key, bytes, &opts)
            .map_err(|e| write_err(ErrorSubject::Store, e))
    }

    /// Entries from `start` (below `end_exclusive`) whose stored size adds up to at most
    /// `bytes_max`, but always at least one, so replication makes progress even past one
    /// entry larger than the limit.
    ///
    /// They are decoded straight from RocksDB's buffers (a raw iterator, bounded above so it
    /// reads nothing past the range): apply and replication read every entry back right
    /// after it is appended, and copying each value out first cost a copy of every message
    /// body per node (the copy alone was 1.3 % of the brokers' CPU in a profile under load).
    fn read_entries(
        &self,
        start: u64,
        end_exclusive: Option<u64>,
        bytes_max: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut opts = ReadOptions::default();
        if let Some(end) = end_exclusive {
            opts.set_iterate_upper_bound(index_key(end));
        }
        let mut iter = self.db.raw_iterator_cf_opt(self.cf(CF_ENTRIES), opts);
        iter.seek(index_key(start));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            let index = key_index(key)?;
            if !out.is_empty() && bytes.saturating_add(value.len()) > bytes_max {
                break;
            }
            bytes = bytes.saturating_add(value.len());
            let entry: Entry =
                bincode::deserialize(value).map_err(|e| read_err(ErrorSubject::Logs, e))?;
            debug_assert_eq!(
                entry.log_id.index, index,
                "log entry stored under a wrong key"
            );
            out.push(entry);
            iter.next();
        }
        iter.status().map_err(|e| read_err(ErrorSubject::Logs, e))?;
        Ok(out)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let mut iter = self.db.iterator_cf(self.cf(CF_ENTRIES), IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (_, value) = item.map_err(|e| read_err(ErrorSubject::Logs, e))?;
                let entry: Entry =
                    bincode::deserialize(&value).map_err(|e| read_err(ErrorSubject::Logs, e))?;
                Ok(Some(*entry.get_log_id()))
            }
        }
    }
}

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("opening the raft log database: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("starting the raft log syncer thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// When appended entries reach the disk, i.e. what "stored" means when openraft counts a
/// node's copy of an entry towards a majority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LogFlush {
    /// An append counts once it is fsynced (the default; RocketMQ's SYNC_FLUSH): an
    /// acknowledged send survives even a power failure of every node.
    Sync,
    /// An append counts once it is written to the operating system, and the log is fsynced
    /// every `interval_ms` in the background (RocketMQ's ASYNC_FLUSH; NATS JetStream's
    /// default syncs every 2 minutes). An acknowledged send survives any process crash and
    /// the loss of a minority of machines, but a power failure of a majority within the
    /// interval can lose it. Votes and truncations are still synced at once: Raft's safety
    /// needs them durable.
    Async { interval_ms: u64 },
}

/// The Raft log store. Cloning shares the database.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
    /// With [`LogFlush::Async`]: dropping the last clone stops the periodic syncer.
    _syncer: Option<mpsc::SyncSender<()>>,
    flush: LogFlush,
}

/// A reader for replication tasks.
#[derive(Clone)]
pub struct LogReader {
    inner: Arc<Inner>,
}

impl LogStore {
    /// Opens (or creates) the log under `dir`, fsyncing before an append counts.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        Self::open_with(dir, LogFlush::Sync)
    }

    /// Opens (or creates) the log under `dir` with the given flush policy.
    pub fn open_with(dir: &Path, flush: LogFlush) -> Result<Self, OpenError> {
        let mut opts = crate::rocks::db_options(dir);
        // A WAL file is deleted only once every column family with data in it has flushed,
        // and the small meta column family (vote, committed) rarely fills its memtable: the
        // WAL files behind it piled up to as much again as the entries themselves (1.2 GB
        // of log for 0.5 GB of messages in a 20 s run). Past this total, RocksDB flushes
        // the column families that hold the oldest WAL back.
        opts.set_max_total_wal_size(LOG_WAL_BYTES_MAX);
        let cfs = [
            ColumnFamilyDescriptor::new(CF_ENTRIES, crate::rocks::payload_cf_options()),
            ColumnFamilyDescriptor::new(CF_META, crate::rocks::small_cf_options()),
        ];
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        let inner = Arc::new(Inner { db });
        let syncer = match flush {
            LogFlush::Sync => None,
            LogFlush::Async { interval_ms } => {
                let (alive, stopped) = mpsc::sync_channel(1);
                let syncer_inner = Arc::downgrade(&inner);
                std::thread::Builder::new()
                    .name("raft-log-sync".into())
                    .spawn(move || run_periodic_syncer(syncer_inner, stopped, interval_ms))?;
                Some(alive)
            }
        };
        Ok(Self {
            inner,
            _syncer: syncer,
            flush,
        })
    }
}

/// Syncs the WAL every `interval_ms` ([`LogFlush::Async`]). Exits when every `LogStore` is
/// gone (its channel carries nothing, only the disconnect).
///
/// It holds the database weakly, so that the database is closed by whoever drops the last
/// `LogStore` or `LogReader`, never by this detached thread (possibly while the process is
/// already exiting and RocksDB's statics are being torn down).
fn run_periodic_syncer(inner: Weak<Inner>, rx: mpsc::Receiver<()>, interval_ms: u64) {
    let interval = std::time::Duration::from_millis(interval_ms.max(1));
    while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(interval) {
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.db.flush_wal(true) {
            tracing::error!(error = %e, "syncing the raft log WAL in the background failed");
        }
    }
}

fn range_to_bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => Some(e + 1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = range_to_bounds(&range);
        self.inner.read_entries(start, end, usize::MAX)
    }

    /// What replication sends in one AppendEntries: bounded in bytes as well as in entries
    /// (`max_payload_entries`), because 512 entries of a few MiB each would exceed the
    /// transport's message limit, and the follower would then never catch up.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.inner
            .read_entries(start, Some(end), REPLICATION_BATCH_BYTES_MAX)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = range_to_bounds(&range);
        self.inner.read_entries(start, end, usize::MAX)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.inner.get_meta(KEY_LAST_PURGED)?;
        let last_log_id = self.inner.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            inner: self.inner.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.inner
            .put_meta(KEY_VOTE, vote, true)
            .map_err(|e| write_err(ErrorSubject::Vote, std::io::Error::other(e.to_string())))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.inner.get_meta(KEY_VOTE)
    }

    // Saved without sync: losing it only means re-applying from the state machine's own
    // durable position, which openraft does anyway.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.inner.put_meta(KEY_COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .inner
            .get_meta::<Option<LogId>>(KEY_COMMITTED)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.inner.cf(CF_ENTRIES);
        let mut batch = WriteBatch::default();
        for entry in entries {
            let value = bincode::serialize(&entry).map_err(|e| write_err(ErrorSubject::Logs, e))?;
            batch.put_cf(cf, index_key(entry.log_id.index), value);
        }
        // Sync: on disk when this returns. Async: in the operating system's hands, which
        // survives a crash of this process; the periodic syncer does the rest.
        let mut opts = WriteOptions::default();
        opts.set_sync(self.flush == LogFlush::Sync);
        self.inner
            .db
            .write_opt(batch, &opts)
            .map_err(|e| write_err(ErrorSubject::Logs, e))?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.inner.cf(CF_ENTRIES),
            index_key(log_id.index),
            index_key(u64::MAX),
        );
        // u64::MAX itself is never a real index, so the exclusive end loses nothing.
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.inner
            .db
            .write_opt(batch, &opts)
            .map_err(|e| write_err(ErrorSubject::Logs, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: if we crash in between, the log state is still
        // consistent (entries below the mark are ignored, never a hole above it).
        self.inner.put_meta(KEY_LAST_PURGED, &log_id, true)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.inner.cf(CF_ENTRIES),
            index_key(0),
            index_key(log_id.index + 1),
        );
        self.inner
            .db
            .write(batch)
            .map_err(|e| write_err(ErrorSubject::Logs, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Command, NewMessage};
    use openraft::{CommittedLeaderId, EntryPayload};

    /// An entry carrying one message of `body_bytes`, written straight into the log's column
    /// family (appending needs openraft's flush callback, which only openraft can make).
    fn put_entry(store: &LogStore, index: u64, body_bytes: usize) {
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Append {
                topic: "t".into(),
                queue_id: 0,
                store_timestamp_ms: 0,
                messages: vec![NewMessage {
                    message_id: format!("m{index}"),
                    tag: None,
                    keys: vec![],
                    properties: Default::default(),
                    body: vec![7u8; body_bytes].into(),
                    born_timestamp_ms: 0,
                    kind: crate::types::MessageKind::Normal,
                    message_group: None,
                    delivery_timestamp_ms: None,
                }],
            }),
        };
        let value = bincode::serialize(&entry).expect("entry serializes");
        store
            .inner
            .db
            .put_cf(store.inner.cf(CF_ENTRIES), index_key(index), value)
            .expect("put entry");
    }

    #[tokio::test]
    async fn replication_reads_are_bounded_in_bytes_but_never_empty() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = LogStore::open(dir.path()).expect("open log");
        // 40 entries of 1 MiB: 40 MiB in all, more than one replication request may carry.
        for i in 1..=40 {
            put_entry(&store, i, 1024 * 1024);
        }
        let mut reader = store.get_log_reader().await;
        let first = reader.limited_get_log_entries(1, 41).await.expect("read");
        let expected = REPLICATION_BATCH_BYTES_MAX / (1024 * 1024 + 256);
        assert!(
            (expected.saturating_sub(1)..=expected).contains(&first.len()),
            "one request carries {} entries of 1 MiB; expected about {expected}",
            first.len()
        );
        assert_eq!(first[0].log_id.index, 1);
        let rest = reader
            .limited_get_log_entries(first.len() as u64 + 1, 41)
            .await
            .expect("read");
        assert_eq!(
            rest[0].log_id.index,
            first.len() as u64 + 1,
            "continues densely"
        );

        // One entry above the limit still goes out alone.
        put_entry(&store, 41, REPLICATION_BATCH_BYTES_MAX + 1);
        let big = reader.limited_get_log_entries(41, 42).await.expect("read");
        assert_eq!(big.len(), 1);
        // And the range end is respected.
        let two = reader.limited_get_log_entries(3, 5).await.expect("read");
        assert_eq!(
            two.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![3, 4]
        );
    }
}
