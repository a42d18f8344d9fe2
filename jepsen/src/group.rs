//! The `group` workload: a consumer group of pop consumers (what the official SimpleConsumer
//! and PushConsumer do) reading what producers send, for the total-queue checker
//! ([`crate::checker::group`]).
//!
//! A key is a topic `jepsen-group-<key>` with one queue; every consumer is in [`GROUP`].
//! Senders send unique values as in the log workload. Consumers `ReceiveMessage` from the
//! keys they are subscribed to, through random nodes, and `AckMessage` what they received
//! (a batch per receive, through a random node). Now and then a consumer changes its
//! subscription (a rebalance) or crashes: it forgets what it holds unacknowledged, and the
//! group gets those messages again once their invisible time runs out. One reader samples
//! each key's group offset with `GetOffset` (for a popping group: its lowest unacknowledged
//! offset), which must never move back.
//!
//! History: a receive is `receive` with a `poll` mop (`reads` are `(offset, value)`), an
//! ack is `ack` with one `ack` mop per message (an `ok` completion lists only the entries
//! the broker accepted; a refused entry may still have been acked by a forward's first try), a group-offset read is `offset` with a `read` mop. A receive or ack
//! that errs or times out may have taken effect: `info`, and the process ends; one whose
//! connection could not be made failed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rocketraft_proto::rocketmq::v2 as pb;
use tokio::sync::watch;

use crate::history::{F, HistoryWriter, Key, Mop, OpType, Value};
use crate::workload::{self, Clients, Ids, SendError, Step, paced, resource, worker_rng};

/// The consumer group of every consumer of the run.
pub const GROUP: &str = "jepsen-group";

/// How long a received message stays invisible to the group: short, so that what a crashed
/// consumer held comes back within the run.
pub const INVISIBLE: Duration = Duration::from_secs(3);

pub fn topic(key: Key) -> String {
    format!("jepsen-group-{key}")
}

#[derive(Debug, Clone)]
pub struct GroupOptions {
    pub keys: u32,
    pub senders: usize,
    pub consumers: usize,
    /// Operations per second, over all clients.
    pub rate: f64,
    /// A client gives up on an operation after this long (the outcome is then unknown).
    pub op_timeout: Duration,
    /// Messages one receive asks for at most.
    pub batch: i32,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            keys: 4,
            senders: 4,
            consumers: 4,
            rate: 100.0,
            op_timeout: Duration::from_secs(3),
            batch: 8,
        }
    }
}

/// A received message: enough to ack it and to name it in the history.
#[derive(Debug, Clone)]
pub struct Received {
    pub offset: u64,
    pub value: Value,
    pub message_id: String,
    pub receipt_handle: String,
}

impl Clients {
    /// Receives up to `batch` messages of `key` for [`GROUP`] through node `node`.
    pub async fn receive(
        &self,
        node: usize,
        key: Key,
        batch: i32,
    ) -> Result<Vec<Received>, SendError> {
        use tokio_stream::StreamExt;
        let req = pb::ReceiveMessageRequest {
            group: Some(resource(GROUP)),
            message_queue: Some(pb::MessageQueue {
                topic: Some(resource(&topic(key))),
                id: -1,
                ..Default::default()
            }),
            filter_expression: None,
            batch_size: batch,
            invisible_duration: Some(proto_duration(INVISIBLE)),
            auto_renew: false,
            long_polling_timeout: Some(proto_duration(Duration::from_millis(500))),
            attempt_id: None,
        };
        let mut stream = self
            .client(node)
            .receive_message(self.request(req))
            .await
            .map_err(SendError::from_status)?
            .into_inner();
        let (mut got, mut status) = (Vec::new(), None);
        while let Some(frame) = stream.next().await {
            let frame = frame.map_err(SendError::from_status)?;
            match frame.content {
                Some(pb::receive_message_response::Content::Message(m)) => {
                    let (offset, value) =
                        workload::offset_and_value(&m).map_err(SendError::Unknown)?;
                    let props = m.system_properties.unwrap_or_default();
                    got.push(Received {
                        offset,
                        value,
                        message_id: props.message_id,
                        receipt_handle: props.receipt_handle.unwrap_or_default(),
                    });
                }
                Some(pb::receive_message_response::Content::Status(s)) => status = Some(s),
                _ => {}
            }
        }
        workload::stream_end(status, got).map_err(|s| SendError::refused(s.as_ref()))
    }

    /// Acks `msgs` of `key` through node `node`: for each message whether the broker
    /// accepted the ack, or an error for the whole request.
    pub async fn ack(
        &self,
        node: usize,
        key: Key,
        msgs: &[Received],
    ) -> Result<Vec<bool>, SendError> {
        let req = pb::AckMessageRequest {
            group: Some(resource(GROUP)),
            topic: Some(resource(&topic(key))),
            entries: msgs
                .iter()
                .map(|m| pb::AckMessageEntry {
                    message_id: m.message_id.clone(),
                    receipt_handle: m.receipt_handle.clone(),
                    ..Default::default()
                })
                .collect(),
        };
        let resp = self
            .client(node)
            .ack_message(self.request(req))
            .await
            .map_err(SendError::from_status)?
            .into_inner();
        // A refusal of the whole request (no leader, say) answers without entries.
        if resp.entries.len() != msgs.len() {
            return Err(SendError::refused(resp.status.as_ref()));
        }
        // Entries answer in request order; match by handle anyway, as a client must.
        Ok(msgs
            .iter()
            .map(|m| {
                resp.entries.iter().any(|e| {
                    e.receipt_handle == m.receipt_handle
                        && e.status
                            .as_ref()
                            .is_some_and(|s| s.code == pb::Code::Ok as i32)
                })
            })
            .collect())
    }
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Receives `key` through `node` as one history op of `process`. `None` when it did not
/// succeed; `Err` when its outcome is unknown (the process must end).
pub async fn recorded_receive(
    clients: &Clients,
    history: &HistoryWriter,
    process: u64,
    node: usize,
    key: Key,
    batch: i32,
) -> Result<Option<Vec<Received>>, ()> {
    let empty = vec![Mop::Poll {
        key,
        reads: Vec::new(),
    }];
    let inv = history.invoke(process, F::Receive, empty, Vec::new());
    let addr = Some(clients.addrs[node].clone());
    match clients.receive(node, key, batch).await {
        Ok(got) => {
            let reads = got.iter().map(|m| (m.offset, m.value)).collect();
            history.complete(&inv, OpType::Ok, vec![Mop::Poll { key, reads }], addr, None);
            Ok(Some(got))
        }
        // Unless the request never left, the pop may have been committed with the answer
        // lost: those messages come back after their invisible time, but the op's effect
        // is unknown.
        Err(e) => {
            let (kind, error) = e.outcome();
            history.complete(&inv, kind, inv.value.clone(), addr, Some(error));
            if kind == OpType::Info {
                Err(())
            } else {
                Ok(None)
            }
        }
    }
}

/// Acks `msgs` of `key` through `node` as one history op of `process`; returns the op's
/// outcome.
pub async fn recorded_ack(
    clients: &Clients,
    history: &HistoryWriter,
    process: u64,
    node: usize,
    key: Key,
    msgs: &[Received],
) -> OpType {
    let mop = |m: &Received| Mop::Ack {
        key,
        offset: m.offset,
        value: m.value,
    };
    let inv = history.invoke(process, F::Ack, msgs.iter().map(mop).collect(), Vec::new());
    let addr = Some(clients.addrs[node].clone());
    match clients.ack(node, key, msgs).await {
        Ok(accepted) if accepted.iter().any(|a| *a) => {
            let done = msgs
                .iter()
                .zip(&accepted)
                .filter(|(_, a)| **a)
                .map(|(m, _)| mop(m))
                .collect();
            history.complete(&inv, OpType::Ok, done, addr, None);
            OpType::Ok
        }
        // Every entry refused. Not a definite failure: a follower retries a forward that
        // broke off, and the leader may have applied the first try, whose handles the retry
        // then finds stale.
        Ok(_) => {
            let why = "every entry refused".to_string();
            history.complete(&inv, OpType::Info, inv.value.clone(), addr, Some(why));
            OpType::Info
        }
        Err(e) => {
            let (kind, error) = e.outcome();
            history.complete(&inv, kind, inv.value.clone(), addr, Some(error));
            kind
        }
    }
}

/// Reads the group offset of `key` through `node` as one history op of `process`.
pub async fn recorded_offset(
    clients: &Clients,
    history: &HistoryWriter,
    process: u64,
    node: usize,
    key: Key,
) -> Result<Option<Value>, ()> {
    let inv = history.invoke(
        process,
        F::Offset,
        vec![Mop::Read { key, value: None }],
        Vec::new(),
    );
    let addr = Some(clients.addrs[node].clone());
    match clients.consume_offset(node, GROUP, &topic(key)).await {
        Ok(value) => {
            let done = vec![Mop::Read { key, value }];
            history.complete(&inv, OpType::Ok, done, addr, None);
            Ok(value)
        }
        // A read changes nothing: a definite failure.
        Err(e) => {
            history.complete(&inv, OpType::Fail, inv.value.clone(), addr, Some(e));
            Err(())
        }
    }
}

/// Runs senders, consumers and one offset reader until `stop` turns true.
pub async fn run(
    opts: &GroupOptions,
    clients: &Clients,
    history: &Arc<HistoryWriter>,
    ids: &Arc<Ids>,
    seed: u64,
    stop: watch::Receiver<bool>,
) {
    let workers = (0..opts.senders + opts.consumers + 1)
        .map(|w| {
            let mut rng = worker_rng(seed, w);
            Worker {
                role: if w < opts.senders {
                    Role::Sender
                } else if w < opts.senders + opts.consumers {
                    Role::Consumer
                } else {
                    Role::OffsetReader
                },
                consumer: Consumer::new(ids, opts, &mut rng),
                process: ids.process(),
                rng,
                opts: opts.clone(),
                clients: clients.clone(),
                history: history.clone(),
                ids: ids.clone(),
            }
        })
        .collect();
    paced(workers, opts.rate, stop).await;
}

#[derive(Clone, Copy)]
enum Role {
    Sender,
    Consumer,
    OffsetReader,
}

struct Worker {
    role: Role,
    /// The consumer's state (consumers only).
    consumer: Consumer,
    /// The process of a sender or the reader, renewed after an unknown outcome.
    process: u64,
    rng: StdRng,
    opts: GroupOptions,
    clients: Clients,
    history: Arc<HistoryWriter>,
    ids: Arc<Ids>,
}

impl Step for Worker {
    fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    async fn step(&mut self) {
        let node = self.rng.random_range(0..self.clients.addrs.len());
        let (clients, history, ids) = (&self.clients, &self.history, &self.ids);
        match self.role {
            Role::Sender => {
                let key = self.rng.random_range(0..self.opts.keys.max(1));
                let (process, value) = (self.process, ids.value());
                let outcome = workload::recorded_send(
                    clients,
                    history,
                    process,
                    node,
                    &topic(key),
                    key,
                    value,
                )
                .await;
                if outcome == OpType::Info {
                    self.process = ids.process();
                }
            }
            Role::Consumer => {
                let (opts, rng) = (&self.opts, &mut self.rng);
                self.consumer
                    .step(clients, history, ids, opts, rng, node)
                    .await
            }
            Role::OffsetReader => {
                let key = self.rng.random_range(0..self.opts.keys.max(1));
                let _ = recorded_offset(clients, history, self.process, node, key).await;
            }
        }
    }
}

/// One consumer of the group: its subscription, and what it received and has not acked.
struct Consumer {
    process: u64,
    keys: Vec<Key>,
    held: BTreeMap<Key, Vec<Received>>,
}

impl Consumer {
    fn new(ids: &Ids, opts: &GroupOptions, rng: &mut StdRng) -> Self {
        let mut c = Self {
            process: ids.process(),
            keys: Vec::new(),
            held: BTreeMap::new(),
        };
        c.subscribe(opts, rng);
        c
    }

    /// A rebalance: a new set of keys. What it holds of keys it leaves it still acks.
    fn subscribe(&mut self, opts: &GroupOptions, rng: &mut StdRng) {
        let all: Vec<Key> = (0..opts.keys.max(1)).collect();
        let count = rng.random_range(1..=all.len());
        self.keys = all.choose_multiple(rng, count).copied().collect();
    }

    async fn step(
        &mut self,
        clients: &Clients,
        history: &HistoryWriter,
        ids: &Ids,
        opts: &GroupOptions,
        rng: &mut StdRng,
        node: usize,
    ) {
        if rng.random_ratio(1, 32) {
            // A crash: what it held comes back to the group after its invisible time.
            *self = Self::new(ids, opts, rng);
            return;
        }
        if rng.random_ratio(1, 16) {
            self.subscribe(opts, rng);
        }
        // Ack what was received last step (a consumer processes, then acks).
        if let Some((&key, _)) = self.held.iter().next() {
            let msgs = self.held.remove(&key).unwrap_or_default();
            let outcome = recorded_ack(clients, history, self.process, node, key, &msgs).await;
            if outcome == OpType::Info {
                self.process = ids.process();
            }
            return;
        }
        let Some(&key) = self.keys.choose(rng) else {
            return;
        };
        match recorded_receive(clients, history, self.process, node, key, opts.batch).await {
            Ok(Some(got)) if !got.is_empty() => {
                self.held.insert(key, got);
            }
            Ok(_) => {}
            Err(()) => self.process = ids.process(),
        }
    }
}

/// The final reads: one consumer receives every key and acks all it gets until the group's
/// offset on each key has passed every acknowledged send (so everything sent was received
/// and acked, or dead-lettered), or `deadline`. Returns the keys not finished.
pub async fn drain(
    opts: &GroupOptions,
    clients: &Clients,
    history: &HistoryWriter,
    ids: &Ids,
    deadline: Instant,
) -> Vec<Key> {
    let acked = workload::max_acked(&history.ops());
    let mut unfinished = Vec::new();
    let n = clients.addrs.len();
    for key in 0..opts.keys {
        let target = acked.get(&key).map_or(0, |o| o + 1);
        let mut process = ids.process();
        let mut node = key as usize % n;
        let mut done = false;
        while Instant::now() < deadline {
            match recorded_offset(clients, history, process, node, key).await {
                Ok(offset) if offset.unwrap_or(0) >= target => {
                    done = true;
                    break;
                }
                Ok(_) => {}
                Err(()) => node = (node + 1) % n,
            }
            match recorded_receive(clients, history, process, node, key, 32).await {
                Ok(Some(got)) if !got.is_empty() => {
                    if recorded_ack(clients, history, process, node, key, &got).await
                        == OpType::Info
                    {
                        process = ids.process();
                    }
                }
                // Nothing visible yet: what crashed consumers hold comes back later.
                Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
                failed => {
                    if failed.is_err() {
                        process = ids.process();
                    }
                    node = (node + 1) % n;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        if !done {
            unfinished.push(key);
        }
    }
    unfinished
}
