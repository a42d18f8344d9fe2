//! Applying the consumption commands: pop / ack / change-invisible / dead-letter for the
//! official clients' consumers, scheduled (DELAY) messages and transaction half messages;
//! and the reads the broker makes of that state.
//!
//! Delivery state is per (consumer group, consumer, topic, queue): a cursor (the next offset
//! not yet handed out) and an in-flight table of handed-out, unacknowledged offsets with the
//! time they become visible again. A pop takes expired in-flight messages first (their
//! delivery attempt grows; past the group's maximum they go to the dead-letter topic instead)
//! and then new ones from the cursor. No timer drives redelivery: an expired message is
//! simply eligible at the next pop, which the broker's long polling issues on time.
//! Only broadcasting groups have a consumer in the key; clustering groups use "".

use rocksdb::{Direction, IteratorMode, ReadOptions};
use serde::{Deserialize, Serialize};

use super::{
    CF_BODIES, CF_HALVES, CF_IDS, CF_INFLIGHT, CF_KEYS, CF_MESSAGES, CF_OFFSETS, CF_POPS,
    CF_TIMERS, Inner, Pending, QueueState, ReadError, StateMachineStore, StateReader,
    consumer_offset_key, message_key, queue_key, sm_err,
};
use crate::limits;
use crate::types::{
    Command, CommandResult, GroupConfig, Handle, NewMessage, Popped, Rejection, StorageError,
    StoredMessage, TopicConfig, dead_letter_topic,
};
use openraft::ErrorVerb;

/// Unacknowledged deliveries one queue keeps per consumer group; beyond this a pop hands out
/// only redeliveries from that queue, so a consumer that never acks cannot grow state forever.
pub const INFLIGHT_PER_QUEUE_MAX: usize = 20_000;
/// Messages a pop examines per queue for the filter, so one pop stays a bounded amount of work.
const POP_SCAN_MAX: usize = 4096;

/// A delivered, unacknowledged message.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Inflight {
    visible_at_ms: i64,
    attempt: u32,
    generation: u64,
}

/// A DELAY message waiting for its time.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Timed {
    topic: String,
    queue_id: u32,
    message: NewMessage,
}

/// A prepared transaction message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HalfMessage {
    pub transaction_id: String,
    pub topic: String,
    pub queue_id: u32,
    pub store_timestamp_ms: i64,
    pub message: NewMessage,
    /// How often the producers were asked about it so far.
    pub checks: u32,
}

/// Whether a pop would find something now, and if not, when it next might.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PopReadiness {
    pub ready: bool,
    /// The earliest time an in-flight message becomes visible again.
    pub next_visible_at_ms: Option<i64>,
}

/// Where a consumer group stands on one queue, for operators (`group describe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueProgress {
    /// The consumer of a broadcasting group; "" for clustering groups.
    pub consumer: String,
    pub topic: String,
    pub queue_id: u32,
    /// The queue's retained range: `offset_min..offset_next`.
    pub offset_min: u64,
    pub offset_next: u64,
    /// The next offset a pop hands out; `None` if the group never popped from the queue.
    pub cursor: Option<u64>,
    /// Handed out and not acknowledged yet.
    pub inflight: u64,
    /// The offset a pull consumer committed, if it did.
    pub committed: Option<u64>,
}

impl QueueProgress {
    /// Messages the group has not finished with: never handed out, or handed out and not
    /// acknowledged. A group that only pulls is measured by its committed offset.
    pub fn lag(&self) -> u64 {
        let from = match (self.cursor, self.committed) {
            (Some(cursor), _) => cursor,
            (None, Some(committed)) => committed,
            (None, None) => self.offset_min,
        };
        self.offset_next.saturating_sub(from.max(self.offset_min)) + self.inflight
    }
}

fn pop_key(group: &str, consumer: &str, topic: &str, queue_id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(group.len() + consumer.len() + topic.len() + 7);
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k.extend_from_slice(consumer.as_bytes());
    k.push(0);
    k.extend_from_slice(&queue_key(topic, queue_id));
    k
}

/// The smallest key above every key that starts with `prefix` followed by an offset or
/// queue-and-offset suffix (at most 12 bytes): an iterator's exclusive upper bound.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    end.extend_from_slice(&[0xff; 13]);
    end
}

fn inflight_key(pop_key: &[u8], offset: u64) -> Vec<u8> {
    let mut k = pop_key.to_vec();
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

fn timer_key(due_ms: i64, log_index: u64, n: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(20);
    // Deliveries before 1970 sort first: clamp rather than wrap.
    k.extend_from_slice(&(due_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(&log_index.to_be_bytes());
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// A body found through the offset index must be the message of that queue and offset.
fn check_located(
    topic: &str,
    queue_id: u32,
    offset: u64,
    m: &StoredMessage,
) -> Result<(), ReadError> {
    if m.offset != offset || m.queue_id != queue_id || m.topic != topic {
        return Err(ReadError::Corrupt(format!(
            "{topic}/{queue_id}: expected offset {offset}, found {}/{} offset {}",
            m.topic, m.queue_id, m.offset
        )));
    }
    Ok(())
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, v: &[u8]) -> Result<T, ReadError> {
    bincode::deserialize(v).map_err(|e| ReadError::Corrupt(format!("{what}: {e}")))
}

fn read_err(e: ReadError) -> StorageError {
    sm_err(ErrorVerb::Read, e)
}

fn put<T: Serialize>(
    p: &mut Pending,
    cf: &rocksdb::ColumnFamily,
    key: &[u8],
    value: &T,
) -> Result<(), StorageError> {
    let v = bincode::serialize(value).map_err(|e| sm_err(ErrorVerb::Write, e))?;
    p.batch.put_cf(cf, key, v);
    Ok(())
}

fn consumer_key<'a>(group: &GroupConfig, consumer: &'a str) -> &'a str {
    if group.broadcast { consumer } else { "" }
}

impl Inner {
    fn message(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
    ) -> Result<Option<StoredMessage>, ReadError> {
        let Some(body) = self
            .db
            .get_cf(self.cf(CF_MESSAGES), message_key(topic, queue_id, offset))?
        else {
            return Ok(None);
        };
        let m: StoredMessage = self
            .db
            .get_cf(self.cf(CF_BODIES), &body)?
            .map(|v| decode("message", &v))
            .transpose()?
            .ok_or_else(|| {
                ReadError::Corrupt(format!("{topic}/{queue_id}: offset {offset} has no body"))
            })?;
        check_located(topic, queue_id, offset, &m)?;
        Ok(Some(m))
    }

    /// Messages `start..end` of one queue, in offset order, checking that offsets are dense.
    pub(super) fn messages_between(
        &self,
        topic: &str,
        queue_id: u32,
        start: u64,
        end: u64,
    ) -> Result<Vec<StoredMessage>, ReadError> {
        Ok(self
            .located_between(topic, queue_id, start, end)?
            .into_iter()
            .map(|(_, m)| m)
            .collect())
    }

    /// Messages `start..end` of one queue with their body keys, in offset order, checking
    /// that offsets are dense. The offset index gives the body keys; the bodies come in one
    /// batched multi-get, which looks the keys up together (they were mostly stored
    /// together, so they share blocks) and decodes from pinned blocks instead of copies.
    pub(super) fn located_between(
        &self,
        topic: &str,
        queue_id: u32,
        start: u64,
        end: u64,
    ) -> Result<Vec<(Vec<u8>, StoredMessage)>, ReadError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let bodies = self.body_keys_in(
            &message_key(topic, queue_id, start),
            &message_key(topic, queue_id, end),
        )?;
        // Body keys grow with the offset (they are in apply order), so they come sorted;
        // the check keeps a reordering from ever turning into wrong answers.
        let sorted = bodies.is_sorted();
        let values = self
            .db
            .batched_multi_get_cf(self.cf(CF_BODIES), &bodies, sorted);
        let mut out = Vec::with_capacity(bodies.len());
        for (body, value) in bodies.into_iter().zip(values) {
            // Offsets are dense: a gap here would be a lost message.
            let expected = start + out.len() as u64;
            let m: StoredMessage = match value? {
                Some(v) => decode("message", &v)?,
                None => {
                    return Err(ReadError::Corrupt(format!(
                        "{topic}/{queue_id}: offset {expected} has no body"
                    )));
                }
            };
            check_located(topic, queue_id, expected, &m)?;
            out.push((body, m));
        }
        Ok(out)
    }

    /// The body keys of every message whose offset-index key is in `start..end`.
    pub(super) fn body_keys_in(&self, start: &[u8], end: &[u8]) -> Result<Vec<Vec<u8>>, ReadError> {
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(end.to_vec());
        let iter = self.db.iterator_cf_opt(
            self.cf(CF_MESSAGES),
            opts,
            IteratorMode::From(start, Direction::Forward),
        );
        iter.map(|item| Ok(item?.1.into_vec())).collect()
    }

    fn inflight(&self, pop_key: &[u8]) -> Result<Vec<(u64, Inflight)>, ReadError> {
        self.inflight_upto(pop_key, usize::MAX)
    }

    /// The first `max` of [`Inner::inflight`], in offset order.
    fn inflight_upto(&self, pop_key: &[u8], max: usize) -> Result<Vec<(u64, Inflight)>, ReadError> {
        let mut out = Vec::new();
        let floor = self
            .inflight_floor
            .lock()
            .expect("lock poisoned")
            .get(pop_key)
            .copied()
            .unwrap_or(0);
        // The bound matters as much as the floor: without it the iterator, having passed
        // this key's entries, walks every tombstone after them (other queues' acked
        // entries) looking for the next live key.
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(prefix_end(pop_key));
        let iter = self.db.iterator_cf_opt(
            self.cf(CF_INFLIGHT),
            opts,
            IteratorMode::From(&inflight_key(pop_key, floor), Direction::Forward),
        );
        for item in iter.take(max) {
            let (k, v) = item?;
            if !k.starts_with(pop_key) || k.len() != pop_key.len() + 8 {
                break;
            }
            let mut off = [0u8; 8];
            off.copy_from_slice(&k[pop_key.len()..]);
            out.push((u64::from_be_bytes(off), decode("inflight", &v)?));
        }
        Ok(out)
    }

    /// Apply path only: `pop_key` has no in-flight entry below `offset` in committed state,
    /// and the command being applied adds none there.
    fn raise_inflight_floor(&self, pop_key: &[u8], offset: u64) {
        let mut floors = self.inflight_floor.lock().expect("lock poisoned");
        let f = floors.entry(pop_key.to_vec()).or_insert(0);
        *f = (*f).max(offset);
    }

    /// Entries may be added from `offset` on (a cursor moved back).
    fn lower_inflight_floor(&self, pop_key: &[u8], offset: u64) {
        let mut floors = self.inflight_floor.lock().expect("lock poisoned");
        if let Some(f) = floors.get_mut(pop_key) {
            *f = (*f).min(offset);
        }
    }

    /// The first offset of a queue whose message was stored at or after `timestamp_ms`
    /// (`queue.offset_next` if none was). Store timestamps only grow along a queue.
    fn offset_for_timestamp(
        &self,
        topic: &str,
        queue_id: u32,
        queue: QueueState,
        timestamp_ms: i64,
    ) -> Result<u64, ReadError> {
        let (mut lo, mut hi) = (queue.offset_min, queue.offset_next);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.message(topic, queue_id, mid)? {
                Some(m) if m.store_timestamp_ms < timestamp_ms => lo = mid + 1,
                Some(_) => hi = mid,
                // Purged under us: everything before is older still.
                None => lo = mid + 1,
            }
        }
        Ok(lo)
    }

    /// The consumers a broadcasting group has pop state for (keys `group\0consumer\0...`).
    fn pop_consumers(&self, group: &str) -> Result<Vec<String>, ReadError> {
        let mut prefix = group.as_bytes().to_vec();
        prefix.push(0);
        let mut out: Vec<String> = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_POPS),
            IteratorMode::From(&prefix, Direction::Forward),
        );
        for item in iter {
            let (k, _) = item?;
            let Some(rest) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let end = rest
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| ReadError::Corrupt("pop key without a consumer".into()))?;
            let consumer = String::from_utf8_lossy(&rest[..end]).into_owned();
            if out.last() != Some(&consumer) {
                out.push(consumer);
            }
        }
        Ok(out)
    }

    fn cursor(&self, pop_key: &[u8], queue: QueueState) -> Result<u64, ReadError> {
        // A group that never consumed this queue starts at its oldest retained message.
        let stored = self
            .db
            .get_cf(self.cf(CF_POPS), pop_key)?
            .map(|b| {
                <[u8; 8]>::try_from(b.as_slice())
                    .map(u64::from_be_bytes)
                    .map_err(|_| ReadError::Corrupt("pop cursor is not 8 bytes".into()))
            })
            .transpose()?;
        Ok(stored.unwrap_or(queue.offset_min).max(queue.offset_min))
    }

    fn half(&self, transaction_id: &str) -> Result<Option<HalfMessage>, ReadError> {
        self.db
            .get_cf(self.cf(CF_HALVES), transaction_id.as_bytes())?
            .map(|v| decode("half message", &v))
            .transpose()
    }
}

impl StateMachineStore {
    pub(super) fn apply_consume(
        &self,
        cmd: &Command,
        log_index: u64,
        p: &mut Pending,
    ) -> Result<CommandResult, StorageError> {
        match cmd {
            Command::Pop {
                group,
                consumer,
                topic,
                queue_ids,
                max,
                invisible_ms,
                now_ms,
                filter,
            } => {
                let Some(topic_cfg) = self.topic_as_of(p, topic) else {
                    return Ok(CommandResult::Rejected(Rejection::UnknownTopic(
                        topic.clone(),
                    )));
                };
                let group_cfg = self.group_as_of(p, group);
                let pop = PopArgs {
                    group: &group_cfg,
                    consumer: consumer_key(&group_cfg, consumer),
                    topic: &topic_cfg,
                    max: *max as usize,
                    visible_at_ms: now_ms.saturating_add(*invisible_ms as i64),
                    now_ms: *now_ms,
                    // Parsed once per pop, not per queue.
                    matcher: filter.matcher(),
                    generation: log_index,
                };
                let mut out = Vec::new();
                for q in queue_ids {
                    if out.len() >= pop.max {
                        break;
                    }
                    if *q >= topic_cfg.queue_count {
                        return Ok(CommandResult::Rejected(Rejection::QueueOutOfRange {
                            topic: topic.clone(),
                            queue_id: *q,
                            queue_count: topic_cfg.queue_count,
                        }));
                    }
                    self.pop_queue(p, &pop, *q, &mut out)?;
                }
                Ok(CommandResult::Popped(out))
            }
            Command::ResetOffsets {
                group,
                topic,
                timestamp_ms,
            } => {
                if let Err(r) = limits::validate_name("consumer_group", group) {
                    return Ok(CommandResult::Rejected(r));
                }
                let Some(topic_cfg) = self.topic_as_of(p, topic) else {
                    return Ok(CommandResult::Rejected(Rejection::UnknownTopic(
                        topic.clone(),
                    )));
                };
                let group_cfg = self.group_as_of(p, group);
                let consumers = if group_cfg.broadcast {
                    self.inner.pop_consumers(group).map_err(read_err)?
                } else {
                    vec![String::new()]
                };
                let inner = &self.inner;
                let mut offsets = Vec::with_capacity(topic_cfg.queue_count as usize);
                for q in 0..topic_cfg.queue_count {
                    let queue = self.queue_as_of(p, topic, q);
                    let offset = inner
                        .offset_for_timestamp(topic, q, queue, *timestamp_ms)
                        .map_err(read_err)?;
                    for c in &consumers {
                        let pk = pop_key(group, c, topic, q);
                        for (off, _) in inner.inflight(&pk).map_err(read_err)? {
                            p.batch
                                .delete_cf(inner.cf(CF_INFLIGHT), inflight_key(&pk, off));
                        }
                        p.batch.put_cf(inner.cf(CF_POPS), &pk, offset.to_be_bytes());
                        inner.lower_inflight_floor(&pk, offset);
                    }
                    p.batch.put_cf(
                        inner.cf(CF_OFFSETS),
                        consumer_offset_key(group, topic, q),
                        offset.to_be_bytes(),
                    );
                    offsets.push(offset);
                }
                Ok(CommandResult::OffsetsReset(offsets))
            }
            Command::Ack {
                group,
                consumer,
                topic,
                handles,
            } => {
                let group_cfg = self.group_as_of(p, group);
                let consumer = consumer_key(&group_cfg, consumer);
                let cf = self.inner.cf(CF_INFLIGHT);
                let mut acked: Vec<Vec<u8>> = Vec::new();
                let mut out = Vec::with_capacity(handles.len());
                for h in handles {
                    let key = inflight_key(&pop_key(group, consumer, topic, h.queue_id), h.offset);
                    let current = self.current_delivery(&key, h)?;
                    let ok = current.is_some() && !acked.contains(&key);
                    if ok {
                        p.batch.delete_cf(cf, &key);
                        acked.push(key);
                    }
                    out.push(ok);
                }
                Ok(CommandResult::Acked(out))
            }
            Command::ChangeInvisible {
                group,
                consumer,
                topic,
                handle,
                visible_at_ms,
            } => {
                let key = self.delivery_key(p, group, consumer, topic, handle);
                let Some(mut inf) = self.current_delivery(&key, handle)? else {
                    return Ok(stale(handle));
                };
                inf.visible_at_ms = *visible_at_ms;
                inf.generation = log_index;
                put(p, self.inner.cf(CF_INFLIGHT), &key, &inf)?;
                Ok(CommandResult::InvisibilityChanged(Handle {
                    generation: log_index,
                    ..*handle
                }))
            }
            Command::DeadLetter {
                group,
                consumer,
                topic,
                handle,
                now_ms,
            } => {
                let key = self.delivery_key(p, group, consumer, topic, handle);
                if self.current_delivery(&key, handle)?.is_none() {
                    return Ok(stale(handle));
                }
                p.batch.delete_cf(self.inner.cf(CF_INFLIGHT), &key);
                if let Some(m) = self
                    .inner
                    .message(topic, handle.queue_id, handle.offset)
                    .map_err(read_err)?
                {
                    self.dead_letter(p, log_index, group, m, *now_ms)?;
                }
                Ok(CommandResult::DeadLettered)
            }
            Command::Schedule {
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
                let cf = self.inner.cf(CF_TIMERS);
                for m in messages {
                    let due = m.delivery_timestamp_ms.unwrap_or(*store_timestamp_ms);
                    let timed = Timed {
                        topic: topic.clone(),
                        queue_id: *queue_id,
                        message: m.clone(),
                    };
                    // Numbered within the entry, not the command: one coalesced entry may
                    // carry several Schedule commands, and their timers must not collide.
                    let n = p.timers_in_entry;
                    p.timers_in_entry += 1;
                    put(p, cf, &timer_key(due, log_index, n), &timed)?;
                }
                Ok(CommandResult::Scheduled {
                    count: messages.len() as u32,
                })
            }
            Command::Deliver { now_ms, max } => {
                let cf = self.inner.cf(CF_TIMERS);
                let mut opts = ReadOptions::default();
                opts.set_iterate_upper_bound(timer_key(now_ms.saturating_add(1), 0, 0));
                let mut count = 0u32;
                for item in self.inner.db.iterator_cf_opt(cf, opts, IteratorMode::Start) {
                    if count >= *max {
                        break;
                    }
                    let (k, v) = item.map_err(|e| sm_err(ErrorVerb::Read, e))?;
                    p.batch.delete_cf(cf, &k);
                    let timed: Timed = decode("timer", &v).map_err(read_err)?;
                    let target = self.topic_as_of(p, &timed.topic);
                    // A topic deleted or narrowed meanwhile drops the message, like an
                    // append to it would be refused.
                    if limits::validate_append_target(
                        target.as_ref(),
                        &timed.topic,
                        timed.queue_id,
                        std::slice::from_ref(&timed.message),
                    )
                    .is_ok()
                    {
                        self.append(
                            p,
                            log_index,
                            &timed.topic,
                            timed.queue_id,
                            *now_ms,
                            [timed.message],
                        )?;
                    }
                    count += 1;
                }
                Ok(CommandResult::Delivered { count })
            }
            Command::Prepare {
                topic,
                queue_id,
                store_timestamp_ms,
                transaction_id,
                message,
            } => {
                let topic_cfg = self.topic_as_of(p, topic);
                let batch = std::slice::from_ref(message);
                if let Err(r) = limits::validate_batch(batch).and_then(|_| {
                    limits::validate_append_target(topic_cfg.as_ref(), topic, *queue_id, batch)
                }) {
                    return Ok(CommandResult::Rejected(r));
                }
                let half = HalfMessage {
                    transaction_id: transaction_id.clone(),
                    topic: topic.clone(),
                    queue_id: *queue_id,
                    store_timestamp_ms: *store_timestamp_ms,
                    message: message.clone(),
                    checks: 0,
                };
                put(
                    p,
                    self.inner.cf(CF_HALVES),
                    transaction_id.as_bytes(),
                    &half,
                )?;
                Ok(CommandResult::Prepared)
            }
            Command::EndTransaction {
                transaction_id,
                commit,
                store_timestamp_ms,
            } => {
                let Some(half) = self.inner.half(transaction_id).map_err(read_err)? else {
                    return Ok(CommandResult::Rejected(Rejection::UnknownTransaction(
                        transaction_id.clone(),
                    )));
                };
                p.batch
                    .delete_cf(self.inner.cf(CF_HALVES), transaction_id.as_bytes());
                if !commit {
                    return Ok(CommandResult::TransactionEnded { offset: None });
                }
                let target = self.topic_as_of(p, &half.topic);
                let batch = std::slice::from_ref(&half.message);
                if let Err(r) = limits::validate_append_target(
                    target.as_ref(),
                    &half.topic,
                    half.queue_id,
                    batch,
                ) {
                    return Ok(CommandResult::Rejected(r));
                }
                let (_, _, offsets) = self.append(
                    p,
                    log_index,
                    &half.topic,
                    half.queue_id,
                    *store_timestamp_ms,
                    [half.message],
                )?;
                Ok(CommandResult::TransactionEnded {
                    offset: offsets.first().map(|(_, o)| *o),
                })
            }
            Command::TransactionsChecked {
                transaction_ids,
                max_checks,
            } => {
                let cf = self.inner.cf(CF_HALVES);
                let mut rolled_back = 0;
                for id in transaction_ids {
                    let Some(mut half) = self.inner.half(id).map_err(read_err)? else {
                        continue;
                    };
                    half.checks += 1;
                    if half.checks >= *max_checks {
                        // RocketMQ's rule: a transaction nobody resolves is rolled back.
                        p.batch.delete_cf(cf, id.as_bytes());
                        rolled_back += 1;
                    } else {
                        put(p, cf, id.as_bytes(), &half)?;
                    }
                }
                Ok(CommandResult::TransactionsChecked { rolled_back })
            }
            Command::Append { .. }
            | Command::PutTopic(_)
            | Command::CommitOffset { .. }
            | Command::PutGroup(_)
            | Command::DeleteTopic { .. }
            | Command::Expire { .. }
            | Command::Batch(_) => {
                unreachable!("apply_command handles {cmd:?} itself")
            }
        }
    }

    /// Where the in-flight record of the delivery `handle` names is kept.
    fn delivery_key(
        &self,
        p: &Pending,
        group: &str,
        consumer: &str,
        topic: &str,
        handle: &Handle,
    ) -> Vec<u8> {
        let group_cfg = self.group_as_of(p, group);
        let pk = pop_key(
            group,
            consumer_key(&group_cfg, consumer),
            topic,
            handle.queue_id,
        );
        inflight_key(&pk, handle.offset)
    }

    /// The in-flight record at `key`, if `handle` names its current delivery.
    fn current_delivery(
        &self,
        key: &[u8],
        handle: &Handle,
    ) -> Result<Option<Inflight>, StorageError> {
        let v = self
            .inner
            .db
            .get_cf(self.inner.cf(CF_INFLIGHT), key)
            .map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let Some(v) = v else { return Ok(None) };
        let inf: Inflight = decode("inflight", &v).map_err(read_err)?;
        Ok((inf.generation == handle.generation).then_some(inf))
    }

    /// Appends `m` to the group's dead-letter topic, creating it on first use.
    fn dead_letter(
        &self,
        p: &mut Pending,
        log_index: u64,
        group: &str,
        m: StoredMessage,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        let dlq = dead_letter_topic(group);
        if self.topic_as_of(p, &dlq).is_none() {
            let cfg = TopicConfig::new(dlq.clone(), 1);
            if limits::validate_topic_config(&cfg).is_err() {
                // The group name is too long for a DLQ name; RocketMQ has the same limit.
                tracing::warn!(group, "dead-letter topic name too long; message dropped");
                return Ok(());
            }
            self.put_topic(p, &cfg)?;
        }
        self.append(p, log_index, &dlq, 0, now_ms, [m.message])?;
        Ok(())
    }

    fn pop_queue(
        &self,
        p: &mut Pending,
        pop: &PopArgs<'_>,
        queue_id: u32,
        out: &mut Vec<Popped>,
    ) -> Result<(), StorageError> {
        let inner = &self.inner;
        let topic = pop.topic.name.as_str();
        let pk = pop_key(&pop.group.name, pop.consumer, topic, queue_id);
        let queue = self.queue_as_of(p, topic, queue_id);
        let inflight = inner.inflight(&pk).map_err(read_err)?;
        let cf_inflight = inner.cf(CF_INFLIGHT);
        let mut still_inflight = 0usize;
        for (offset, inf) in &inflight {
            if inf.visible_at_ms > pop.now_ms || out.len() >= pop.max {
                still_inflight += 1;
                continue;
            }
            let key = inflight_key(&pk, *offset);
            let Some(m) = inner.message(topic, queue_id, *offset).map_err(read_err)? else {
                // Purged by retention while in flight: nothing left to deliver.
                p.batch.delete_cf(cf_inflight, &key);
                continue;
            };
            if inf.attempt >= pop.group.max_delivery_attempts {
                p.batch.delete_cf(cf_inflight, &key);
                self.dead_letter(p, pop.generation, &pop.group.name, m, pop.now_ms)?;
                continue;
            }
            let next = Inflight {
                visible_at_ms: pop.visible_at_ms,
                attempt: inf.attempt + 1,
                generation: pop.generation,
            };
            put(p, cf_inflight, &key, &next)?;
            still_inflight += 1;
            out.push(popped(m, queue_id, next));
        }
        // An orderly queue hands out nothing new while earlier messages are in flight.
        if pop.group.orderly && still_inflight > 0 {
            return Ok(());
        }
        let mut cursor = inner.cursor(&pk, queue).map_err(read_err)?;
        let start = cursor;
        // Committed entries start at the first one read; this pop adds entries from the
        // cursor on.
        inner.raise_inflight_floor(
            &pk,
            inflight.first().map_or(start, |(o, _)| (*o).min(start)),
        );
        let matcher = &pop.matcher;
        let room = |out: &Vec<Popped>, inflight: usize| {
            out.len() < pop.max && inflight < INFLIGHT_PER_QUEUE_MAX
        };
        while cursor < queue.offset_next
            && room(out, still_inflight)
            && ((cursor - start) as usize) < POP_SCAN_MAX
        {
            let end = queue.offset_next.min(cursor + 64);
            let chunk = inner
                .messages_between(topic, queue_id, cursor, end)
                .map_err(read_err)?;
            if chunk.is_empty() {
                break;
            }
            for m in chunk {
                if !room(out, still_inflight) {
                    break;
                }
                cursor = m.offset + 1;
                if !matcher.matches(&m.message) {
                    continue;
                }
                let inf = Inflight {
                    visible_at_ms: pop.visible_at_ms,
                    attempt: 1,
                    generation: pop.generation,
                };
                put(p, cf_inflight, &inflight_key(&pk, m.offset), &inf)?;
                still_inflight += 1;
                out.push(popped(m, queue_id, inf));
            }
        }
        if cursor != start {
            p.batch.put_cf(inner.cf(CF_POPS), &pk, cursor.to_be_bytes());
        }
        Ok(())
    }
}

struct PopArgs<'a> {
    group: &'a GroupConfig,
    consumer: &'a str,
    topic: &'a TopicConfig,
    max: usize,
    visible_at_ms: i64,
    now_ms: i64,
    matcher: crate::filter::Matcher<'a>,
    generation: u64,
}

fn popped(message: StoredMessage, queue_id: u32, inf: Inflight) -> Popped {
    Popped {
        handle: Handle {
            queue_id,
            offset: message.offset,
            generation: inf.generation,
        },
        message,
        attempt: inf.attempt,
        visible_at_ms: inf.visible_at_ms,
    }
}

fn stale(handle: &Handle) -> CommandResult {
    CommandResult::Rejected(Rejection::InvalidHandle(format!(
        "queue {} offset {} generation {} is not the message's current delivery (acked, redelivered or changed since)",
        handle.queue_id, handle.offset, handle.generation
    )))
}

impl StateReader {
    pub fn group(&self, name: &str) -> Option<GroupConfig> {
        self.inner.cached_group(name)
    }

    pub fn groups(&self) -> Vec<GroupConfig> {
        let mut v: Vec<_> = self
            .inner
            .groups
            .read()
            .expect("lock poisoned")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Whether a pop of these queues would hand something out at `now_ms`. Read-only, so a
    /// long poll can wait without proposing empty pops.
    pub fn pop_readiness(
        &self,
        group: &str,
        consumer: &str,
        topic: &str,
        queue_ids: &[u32],
        now_ms: i64,
    ) -> Result<PopReadiness, ReadError> {
        let group_cfg = self
            .group(group)
            .unwrap_or_else(|| GroupConfig::default_for(group));
        let consumer = consumer_key(&group_cfg, consumer);
        let mut r = PopReadiness::default();
        for q in queue_ids {
            let pk = pop_key(group, consumer, topic, *q);
            let inflight = self.inner.inflight(&pk)?;
            for (_, inf) in &inflight {
                if inf.visible_at_ms <= now_ms {
                    r.ready = true;
                } else {
                    r.next_visible_at_ms = Some(
                        r.next_visible_at_ms
                            .map_or(inf.visible_at_ms, |t| t.min(inf.visible_at_ms)),
                    );
                }
            }
            if group_cfg.orderly && !inflight.is_empty() {
                continue;
            }
            let queue = self.queue_state(topic, *q);
            if self.inner.cursor(&pk, queue)? < queue.offset_next
                && inflight.len() < INFLIGHT_PER_QUEUE_MAX
            {
                r.ready = true;
            }
        }
        Ok(r)
    }

    /// Where `group` stands on every queue it has consumed from (popped, or committed an
    /// offset for), topic by topic. Read-only; cost grows with topics x queues and, for
    /// broadcasting groups, consumers.
    pub fn group_progress(&self, group: &str) -> Result<Vec<QueueProgress>, ReadError> {
        let group_cfg = self
            .group(group)
            .unwrap_or_else(|| GroupConfig::default_for(group));
        let consumers = if group_cfg.broadcast {
            self.inner.pop_consumers(group)?
        } else {
            vec![String::new()]
        };
        let mut out = Vec::new();
        for topic in self.topics() {
            for q in 0..topic.queue_count {
                let queue = self.queue_state(&topic.name, q);
                let committed = self.consumer_offset(group, &topic.name, q)?;
                for consumer in &consumers {
                    let pk = pop_key(group, consumer, &topic.name, q);
                    let popped = self.inner.db.get_cf(self.inner.cf(CF_POPS), &pk)?.is_some();
                    let inflight = self.inner.inflight(&pk)?.len() as u64;
                    if !popped && inflight == 0 && committed.is_none() {
                        continue;
                    }
                    out.push(QueueProgress {
                        consumer: consumer.clone(),
                        topic: topic.name.clone(),
                        queue_id: q,
                        offset_min: queue.offset_min,
                        offset_next: queue.offset_next,
                        cursor: if popped {
                            Some(self.inner.cursor(&pk, queue)?)
                        } else {
                            None
                        },
                        inflight,
                        committed,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Where `group` resumes on a queue, as `GetOffset` reports it (RocketMQ shows one
    /// consumer offset per group and queue): for a clustering group that pops, its lowest
    /// unacknowledged offset; else the offset a pull consumer committed. The pop value only
    /// moves back when an operator resets the group (`ResetOffsets`): the cursor otherwise
    /// only grows, and an in-flight entry is only ever removed (acked, dead-lettered) or
    /// re-timed, never added below the cursor. `None` when the group has neither.
    /// Broadcasting groups keep pop progress per consumer, so only their commits count.
    pub fn consume_offset(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
    ) -> Result<Option<u64>, ReadError> {
        let broadcast = self.group(group).is_some_and(|g| g.broadcast);
        let pk = pop_key(group, "", topic, queue_id);
        if broadcast || self.inner.db.get_cf(self.inner.cf(CF_POPS), &pk)?.is_none() {
            return self.consumer_offset(group, topic, queue_id);
        }
        let cursor = self.inner.cursor(&pk, self.queue_state(topic, queue_id))?;
        let lowest_inflight = self.inner.inflight_upto(&pk, 1)?.first().map(|(o, _)| *o);
        Ok(Some(lowest_inflight.map_or(cursor, |o| o.min(cursor))))
    }

    /// The earliest delivery time of a scheduled (DELAY) message.
    pub fn next_timer_due_ms(&self) -> Result<Option<i64>, ReadError> {
        let mut iter = self
            .inner
            .db
            .iterator_cf(self.inner.cf(CF_TIMERS), IteratorMode::Start);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (k, _) = item?;
                let due = k
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .ok_or_else(|| ReadError::Corrupt("timer key".into()))?;
                Ok(Some(u64::from_be_bytes(due) as i64))
            }
        }
    }

    /// Scheduled messages waiting, at most `max` counted.
    pub fn scheduled_count(&self, max: usize) -> usize {
        self.inner
            .db
            .iterator_cf(self.inner.cf(CF_TIMERS), IteratorMode::Start)
            .take(max)
            .count()
    }

    /// Up to `max` prepared transactions, oldest transaction id first.
    pub fn half_messages(&self, max: usize) -> Result<Vec<HalfMessage>, ReadError> {
        let mut out = Vec::new();
        for item in self
            .inner
            .db
            .iterator_cf(self.inner.cf(CF_HALVES), IteratorMode::Start)
            .take(max)
        {
            let (_, v) = item?;
            out.push(decode("half message", &v)?);
        }
        Ok(out)
    }

    pub fn half_message(&self, transaction_id: &str) -> Result<Option<HalfMessage>, ReadError> {
        self.inner.half(transaction_id)
    }

    /// The first offset of a queue whose message was stored at or after `timestamp_ms`
    /// (the queue's next offset if none was).
    pub fn offset_for_timestamp(
        &self,
        topic: &str,
        queue_id: u32,
        timestamp_ms: i64,
    ) -> Result<u64, ReadError> {
        let q = self.queue_state(topic, queue_id);
        self.inner
            .offset_for_timestamp(topic, queue_id, q, timestamp_ms)
    }

    /// The stored message with this id (its newest copy), from the id index.
    pub fn message_by_id(
        &self,
        topic: &str,
        message_id: &str,
    ) -> Result<Option<StoredMessage>, ReadError> {
        let Some(raw) = self
            .inner
            .db
            .get_cf(self.inner.cf(CF_IDS), super::id_key(topic, message_id))?
        else {
            return Ok(None);
        };
        let e = super::IdEntry::decode(&raw)
            .ok_or_else(|| ReadError::Corrupt("id index entry is not 20 bytes".into()))?;
        self.inner.message(topic, e.queue_id, e.offset)
    }

    /// Up to `max` stored messages carrying `key`, by queue then offset, from the key index.
    pub fn messages_by_key(
        &self,
        topic: &str,
        key: &str,
        max: usize,
    ) -> Result<Vec<StoredMessage>, ReadError> {
        let prefix = super::key_prefix(topic, key);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(prefix_end(&prefix));
        let iter = self.inner.db.iterator_cf_opt(
            self.inner.cf(CF_KEYS),
            opts,
            IteratorMode::From(&prefix, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (k, _) = item?;
            let Some(rest) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            if out.len() >= max {
                break;
            }
            let (Some(q), Some(o)) = (rest.get(..4), rest.get(4..12)) else {
                return Err(ReadError::Corrupt("key index entry is too short".into()));
            };
            let queue_id = u32::from_be_bytes(q.try_into().unwrap_or_default());
            let offset = u64::from_be_bytes(o.try_into().unwrap_or_default());
            if let Some(m) = self.inner.message(topic, queue_id, offset)? {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Up to `max` messages of `topic` stored in `[start_ms, end_ms)`, by queue then offset.
    /// Store times grow with offsets within a queue (the leader stamps them in log order),
    /// so each queue is binary-searched for both ends.
    pub fn messages_by_time(
        &self,
        topic: &str,
        start_ms: i64,
        end_ms: i64,
        max: usize,
    ) -> Result<Vec<StoredMessage>, ReadError> {
        let Some(cfg) = self.topic(topic) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for queue_id in 0..cfg.queue_count {
            if out.len() >= max {
                break;
            }
            let from = self.offset_for_timestamp(topic, queue_id, start_ms)?;
            let to = self.offset_for_timestamp(topic, queue_id, end_ms)?;
            let to = to.min(from + (max - out.len()) as u64);
            out.extend(self.inner.messages_between(topic, queue_id, from, to)?);
        }
        Ok(out)
    }
}
