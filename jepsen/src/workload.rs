//! The `log` workload (a port of Jepsen's Kafka queue workload): unique values are sent to
//! keys, and pollers read keys back by explicit offset, all through the public
//! `apache.rocketmq.v2` API on random nodes (so followers forward and relay too).
//!
//! A key is a topic with one queue: a send names its key by topic, and the send result's
//! offset is then that key's offset.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rocketraft_proto::rocketmq::v2 as pb;
use rocketraft_proto::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::history::{F, HistoryWriter, Key, Mop, Op, OpType, Value};

/// The consumer group the pollers name; pull reads do not move its offsets.
const GROUP: &str = "jepsen";

#[derive(Debug, Clone)]
pub struct LogOptions {
    pub keys: u32,
    pub senders: usize,
    pub pollers: usize,
    /// Operations per second, over all clients.
    pub rate: f64,
    /// A client gives up on an operation after this long (the outcome is then unknown).
    pub op_timeout: Duration,
    pub poll_batch: u32,
    /// Producer retries of a send whose outcome was unknown, with the same message id (the
    /// `dedup` workload); 0 in the `log` workload, where every send is its own value.
    pub retries: u32,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            keys: 4,
            senders: 4,
            pollers: 4,
            rate: 100.0,
            op_timeout: Duration::from_secs(3),
            poll_batch: 32,
            retries: 0,
        }
    }
}

pub fn topic(key: Key) -> String {
    format!("jepsen-log-{key}")
}

/// Clients of the workload: one lazily connected channel per node, shared by all.
#[derive(Clone)]
pub struct Clients {
    pub addrs: Vec<String>,
    channels: Vec<Channel>,
    timeout: Duration,
}

impl Clients {
    pub fn new(addrs: Vec<String>, timeout: Duration) -> anyhow::Result<Self> {
        let channels = addrs
            .iter()
            .map(|a| {
                Ok(Endpoint::from_shared(format!("http://{a}"))?
                    .connect_timeout(Duration::from_secs(1))
                    .timeout(timeout)
                    .connect_lazy())
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            addrs,
            channels,
            timeout,
        })
    }

    pub(crate) fn client(&self, node: usize) -> MessagingServiceClient<Channel> {
        MessagingServiceClient::new(self.channels[node].clone())
    }

    pub(crate) fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.timeout);
        for (k, v) in [
            ("x-mq-client-id", "rocketraft-jepsen"),
            ("x-mq-language", "RUST"),
            ("x-mq-protocol", "v2"),
        ] {
            if let Ok(v) = v.parse() {
                req.metadata_mut().insert(k, v);
            }
        }
        req
    }

    /// Sends `value` to `topic` through node `node`; the stored offset, or why not. The
    /// message id is derived from the value, so a retry of a value is a producer retry.
    pub async fn send(&self, node: usize, topic: &str, value: Value) -> Result<u64, SendError> {
        let body = value.to_string().into_bytes();
        let message = pb::Message {
            topic: Some(resource(topic)),
            user_properties: Default::default(),
            system_properties: Some(pb::SystemProperties {
                message_id: format!("J{value:016X}"),
                body_encoding: pb::Encoding::Identity as i32,
                message_type: pb::MessageType::Normal as i32,
                body_digest: Some(pb::Digest {
                    r#type: pb::DigestType::Crc32 as i32,
                    checksum: format!("{:08X}", crc32fast::hash(&body)),
                }),
                born_host: "jepsen".into(),
                ..Default::default()
            }),
            body: body.into(),
        };
        let resp = self
            .client(node)
            .send_message(self.request(pb::SendMessageRequest {
                messages: vec![message],
            }))
            .await
            .map_err(SendError::from_status)?
            .into_inner();
        let entry = resp.entries.first();
        let status = entry
            .and_then(|e| e.status.as_ref())
            .or(resp.status.as_ref());
        match status {
            Some(s) if s.code == pb::Code::Ok as i32 => entry
                .map(|e| e.offset as u64)
                .ok_or_else(|| SendError::Unknown("OK without an entry".into())),
            other => Err(SendError::refused(other)),
        }
    }

    /// Up to `max` (offset, value) pairs of `key` from `offset`, as node `node` has them.
    pub async fn pull(
        &self,
        node: usize,
        key: Key,
        offset: u64,
        max: u32,
    ) -> Result<Vec<(u64, Value)>, String> {
        use tokio_stream::StreamExt;
        let req = pb::PullMessageRequest {
            group: Some(resource(GROUP)),
            message_queue: Some(pb::MessageQueue {
                topic: Some(resource(&topic(key))),
                id: 0,
                ..Default::default()
            }),
            offset: offset as i64,
            batch_size: max as i32,
            filter_expression: None,
            long_polling_timeout: Some(prost_types::Duration {
                seconds: 0,
                nanos: 100_000_000,
            }),
        };
        let mut stream = self
            .client(node)
            .pull_message(self.request(req))
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        let (mut reads, mut status) = (Vec::new(), None);
        while let Some(frame) = stream.next().await {
            let frame = frame.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
            match frame.content {
                Some(pb::pull_message_response::Content::Message(m)) => {
                    reads.push(offset_and_value(&m)?);
                }
                Some(pb::pull_message_response::Content::Status(s)) => status = Some(s),
                _ => {}
            }
        }
        stream_end(status, reads).map_err(|s| match s {
            Some(s) => format!("{}: {}", code_name(s.code), s.message),
            None => "no status".into(),
        })
    }

    /// The offset of `group` on `topic`'s queue 0 as node `node` answers `GetOffset`:
    /// `None` when the group has none yet (`OFFSET_NOT_FOUND`).
    pub async fn consume_offset(
        &self,
        node: usize,
        group: &str,
        topic: &str,
    ) -> Result<Option<Value>, String> {
        let resp = self
            .client(node)
            .get_offset(self.request(pb::GetOffsetRequest {
                group: Some(resource(group)),
                message_queue: Some(pb::MessageQueue {
                    topic: Some(resource(topic)),
                    id: 0,
                    ..Default::default()
                }),
            }))
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        match resp.status {
            Some(s) if s.code == pb::Code::Ok as i32 => Value::try_from(resp.offset)
                .map(Some)
                .map_err(|_| format!("negative offset {}", resp.offset)),
            Some(s) if s.code == pb::Code::OffsetNotFound as i32 => Ok(None),
            Some(s) => Err(format!("{}: {}", code_name(s.code), s.message)),
            None => Err("no status".into()),
        }
    }
}

/// What a consumer's server stream (pull, receive) delivered, given its final status: OK
/// and MESSAGE_NOT_FOUND both mean "this is what there was"; otherwise, messages that did
/// arrive were still delivered (and, for a receive, popped for this consumer); with none,
/// the status (if any) says why.
pub(crate) fn stream_end<T>(
    status: Option<pb::Status>,
    items: Vec<T>,
) -> Result<Vec<T>, Option<pb::Status>> {
    match status {
        Some(s) if s.code == pb::Code::Ok as i32 || s.code == pb::Code::MessageNotFound as i32 => {
            Ok(items)
        }
        _ if !items.is_empty() => Ok(items),
        other => Err(other),
    }
}

/// A delivered message's queue offset and the value its body carries.
pub(crate) fn offset_and_value(m: &pb::Message) -> Result<(u64, Value), String> {
    let offset = m
        .system_properties
        .as_ref()
        .and_then(|p| p.queue_offset)
        .ok_or("a message without a queue offset")?;
    let offset = u64::try_from(offset).map_err(|_| format!("negative queue offset {offset}"))?;
    let value = std::str::from_utf8(&m.body)
        .ok()
        .and_then(|s| s.parse::<Value>().ok())
        .ok_or_else(|| format!("offset {offset}: body is not a value"))?;
    Ok((offset, value))
}

/// Why a send has no offset.
#[derive(Debug, Clone)]
pub enum SendError {
    /// Certainly not stored: the request never left (a failed history op).
    NotSent(String),
    /// Perhaps stored (an info op).
    Unknown(String),
}

impl SendError {
    /// A write RPC's transport error: no connection, so no request, is the one error that
    /// proves nothing was sent; anything else may have been applied.
    pub fn from_status(s: tonic::Status) -> Self {
        let text = format!("{:?}: {}", s.code(), s.message());
        if s.code() == tonic::Code::Unavailable && s.message().contains("connect error") {
            Self::NotSent(text)
        } else {
            Self::Unknown(text)
        }
    }

    /// A write's in-band refusal. Still unknown: a follower may answer for a forward whose
    /// entry the leader had already appended when the forward broke off.
    pub fn refused(status: Option<&pb::Status>) -> Self {
        match status {
            Some(s) => Self::Unknown(format!("{}: {}", code_name(s.code), s.message)),
            None => Self::Unknown("no status".into()),
        }
    }

    /// The history's view of it: a definite failure or an unknown outcome.
    pub fn outcome(&self) -> (OpType, String) {
        match self {
            Self::NotSent(e) => (OpType::Fail, e.clone()),
            Self::Unknown(e) => (OpType::Info, e.clone()),
        }
    }
}

pub(crate) fn resource(name: &str) -> pb::Resource {
    pb::Resource {
        resource_namespace: String::new(),
        name: name.into(),
    }
}

pub(crate) fn code_name(code: i32) -> String {
    pb::Code::try_from(code).map_or_else(|_| format!("code {code}"), |c| format!("{c:?}"))
}

/// Shared by the workload's tasks: fresh process ids and unique values.
pub struct Ids {
    process: AtomicU64,
    value: AtomicU64,
}

impl Ids {
    pub fn new() -> Self {
        Self {
            process: AtomicU64::new(0),
            value: AtomicU64::new(1),
        }
    }
    pub fn process(&self) -> u64 {
        self.process.fetch_add(1, Ordering::Relaxed)
    }
    pub fn value(&self) -> Value {
        self.value.fetch_add(1, Ordering::Relaxed)
    }
}

impl Default for Ids {
    fn default() -> Self {
        Self::new()
    }
}

/// One client task of a workload: what it does at each paced step.
pub(crate) trait Step: Send + 'static {
    /// Its own seeded random source (the pace's jitter comes from it too).
    fn rng(&mut self) -> &mut StdRng;
    fn step(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

/// Each worker's random source: seeded from the run's seed and the worker's number, so a
/// run's client behaviour is reproducible.
pub(crate) fn worker_rng(seed: u64, worker: usize) -> StdRng {
    StdRng::seed_from_u64(seed.wrapping_add(worker as u64 * 7919))
}

/// Runs `workers` until `stop` turns true. Each sleeps a jittered share of the pace before
/// every step, so that all together make about `rate` ops/s.
pub(crate) async fn paced<W: Step>(workers: Vec<W>, rate: f64, stop: watch::Receiver<bool>) {
    let interval = Duration::from_secs_f64(workers.len().max(1) as f64 / rate.max(0.1));
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut worker| {
            let mut stop = stop.clone();
            tokio::spawn(async move {
                while !*stop.borrow() {
                    let jitter = worker.rng().random_range(0.5..1.5);
                    tokio::select! {
                        _ = tokio::time::sleep(interval.mul_f64(jitter)) => {}
                        _ = stop.changed() => break,
                    }
                    worker.step().await;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// Runs senders and pollers until `stop` turns true. Every operation goes to the history.
pub async fn run(
    opts: &LogOptions,
    clients: &Clients,
    history: &Arc<HistoryWriter>,
    ids: &Arc<Ids>,
    seed: u64,
    stop: watch::Receiver<bool>,
) {
    let count = (opts.senders + opts.pollers).max(1);
    let workers = (0..count)
        .map(|w| {
            let mut worker = Worker {
                opts: opts.clone(),
                clients: clients.clone(),
                history: history.clone(),
                ids: ids.clone(),
                rng: worker_rng(seed, w),
                positions: BTreeMap::new(),
                sender: w < opts.senders,
                process: ids.process(),
            };
            if !worker.sender {
                worker.assign(worker.process);
            }
            worker
        })
        .collect();
    paced(workers, opts.rate, stop).await;
}

struct Worker {
    opts: LogOptions,
    clients: Clients,
    history: Arc<HistoryWriter>,
    ids: Arc<Ids>,
    rng: StdRng,
    /// A poller's assigned keys and the offset it reads each from next.
    positions: BTreeMap<Key, u64>,
    sender: bool,
    process: u64,
}

impl Step for Worker {
    fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    async fn step(&mut self) {
        if self.sender {
            // An unknown outcome ends the process (Jepsen semantics).
            self.process = self.send(self.process).await;
        } else if self.rng.random_ratio(1, 16) {
            self.assign(self.process);
        } else {
            self.poll(self.process).await;
        }
    }
}

impl Worker {
    fn node(&mut self) -> usize {
        self.rng.random_range(0..self.clients.addrs.len())
    }

    /// Sends a new value; with `retries`, a send whose outcome is unknown is sent again
    /// (same value, same message id) through a random node by a fresh process, as a
    /// producer retries. Returns the process to continue with: an unknown outcome ends one.
    async fn send(&mut self, mut process: u64) -> u64 {
        let key = self.rng.random_range(0..self.opts.keys);
        let value = self.ids.value();
        let topic = topic(key);
        for attempt in 0..=self.opts.retries {
            let node = self.node();
            let outcome = recorded_send(
                &self.clients,
                &self.history,
                process,
                node,
                &topic,
                key,
                value,
            )
            .await;
            if outcome != OpType::Info {
                break;
            }
            process = self.ids.process();
            if attempt < self.opts.retries {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        process
    }

    /// Picks a new set of keys; a key newly assigned is read from offset 0 again.
    fn assign(&mut self, process: u64) {
        let all: Vec<Key> = (0..self.opts.keys).collect();
        let count = self.rng.random_range(1..=all.len());
        let mut keys: Vec<Key> = all.choose_multiple(&mut self.rng, count).copied().collect();
        keys.sort();
        self.positions.retain(|k, _| keys.contains(k));
        for k in &keys {
            self.positions.entry(*k).or_insert(0);
        }
        let inv = self
            .history
            .invoke(process, F::Assign, Vec::new(), keys.clone());
        self.history
            .complete(&inv, OpType::Ok, Vec::new(), None, None);
    }

    async fn poll(&mut self, process: u64) {
        let keys: Vec<Key> = self.positions.keys().copied().collect();
        let Some(&key) = keys.choose(&mut self.rng) else {
            return;
        };
        let offset = self.positions[&key];
        let node = self.node();
        let empty = vec![Mop::Poll {
            key,
            reads: Vec::new(),
        }];
        let inv = self.history.invoke(process, F::Poll, empty, Vec::new());
        let result = self
            .clients
            .pull(node, key, offset, self.opts.poll_batch)
            .await;
        let addr = Some(self.clients.addrs[node].clone());
        match result {
            Ok(reads) => {
                if let Some((last, _)) = reads.last() {
                    self.positions.insert(key, last + 1);
                }
                let done = vec![Mop::Poll { key, reads }];
                self.history.complete(&inv, OpType::Ok, done, addr, None);
            }
            // A read that failed changed nothing: a definite failure.
            Err(e) => {
                self.history
                    .complete(&inv, OpType::Fail, inv.value.clone(), addr, Some(e));
            }
        }
    }
}

/// Sends `value` to `key` (whose topic is `topic`) through node `node` as one history op of
/// `process`; returns the op's outcome (ok, fail or info).
pub async fn recorded_send(
    clients: &Clients,
    history: &HistoryWriter,
    process: u64,
    node: usize,
    topic: &str,
    key: Key,
    value: Value,
) -> OpType {
    let sent = |offset| vec![Mop::Send { key, value, offset }];
    let inv = history.invoke(process, F::Send, sent(None), Vec::new());
    let result = clients.send(node, topic, value).await;
    let addr = Some(clients.addrs[node].clone());
    match result {
        Ok(offset) => {
            history.complete(&inv, OpType::Ok, sent(Some(offset)), addr, None);
            OpType::Ok
        }
        Err(e) => {
            let (kind, error) = e.outcome();
            history.complete(&inv, kind, sent(None), addr, Some(error));
            kind
        }
    }
}

/// Liveness after healing, for any workload: for each of `keys`, calls `attempt(node, key)`
/// until it succeeds, moving to the next of `nodes` after each miss, until `deadline`.
/// `attempt` returns `None` to give up on the key. Returns the keys that never succeeded.
pub async fn dead_keys<F, Fut>(
    keys: Key,
    nodes: usize,
    deadline: Instant,
    mut attempt: F,
) -> Vec<Key>
where
    F: FnMut(usize, Key) -> Fut,
    Fut: std::future::Future<Output = Option<OpType>>,
{
    let mut dead = Vec::new();
    for key in 0..keys {
        let mut ok = false;
        let mut node = 0;
        while !ok && Instant::now() < deadline {
            let Some(outcome) = attempt(node, key).await else {
                break;
            };
            ok = outcome == OpType::Ok;
            if !ok {
                node = (node + 1) % nodes.max(1);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if !ok {
            dead.push(key);
        }
    }
    dead
}

/// The highest acknowledged offset per key, from the history so far.
pub fn max_acked(ops: &[Op]) -> BTreeMap<Key, u64> {
    let mut max = BTreeMap::new();
    for op in ops.iter().filter(|o| o.kind == OpType::Ok) {
        for m in &op.value {
            if let Mop::Send {
                key,
                offset: Some(o),
                ..
            } = m
            {
                let e = max.entry(*key).or_insert(*o);
                *e = (*e).max(*o);
            }
        }
    }
    max
}

/// Final reads: for each key, a fresh process reads from offset 0 until it has read past
/// the highest acknowledged offset and then finds nothing more, trying each node in turn
/// on errors. Returns the keys it could not finish before `deadline`.
pub async fn drain(
    opts: &LogOptions,
    clients: &Clients,
    history: &Arc<HistoryWriter>,
    ids: &Ids,
    deadline: Instant,
) -> Vec<Key> {
    let acked = max_acked(&history.ops());
    let mut unfinished = Vec::new();
    for key in 0..opts.keys {
        let process = ids.process();
        let mut offset = 0u64;
        let mut node = key as usize % clients.addrs.len();
        let target = acked.get(&key).map_or(0, |o| o + 1);
        let mut done = false;
        while Instant::now() < deadline {
            let inv = history.invoke(
                process,
                F::Drain,
                vec![Mop::Poll {
                    key,
                    reads: Vec::new(),
                }],
                Vec::new(),
            );
            let addr = Some(clients.addrs[node].clone());
            match clients.pull(node, key, offset, 256).await {
                Ok(reads) => {
                    let empty = reads.is_empty();
                    if let Some((last, _)) = reads.last() {
                        offset = last + 1;
                    }
                    history.complete(&inv, OpType::Ok, vec![Mop::Poll { key, reads }], addr, None);
                    if empty && offset >= target {
                        done = true;
                        break;
                    }
                    if empty {
                        // This node has not applied everything acknowledged: try another.
                        node = (node + 1) % clients.addrs.len();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Err(e) => {
                    history.complete(&inv, OpType::Fail, inv.value.clone(), addr, Some(e));
                    node = (node + 1) % clients.addrs.len();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        if !done {
            unfinished.push(key);
        }
    }
    unfinished
}
