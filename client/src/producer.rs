//! The producer: sync, async (bounded in-flight window), oneway and batch sends of NORMAL,
//! FIFO, DELAY and TRANSACTION messages, with retries on retriable errors only.
//!
//! Async sends of NORMAL messages to one topic are coalesced: while a few requests for the
//! topic are under way, further sends queue up and then go out together as one request
//! (one message each in its entries). No timer waits for more: a lone send goes at once, and
//! under load a request carries what piled up while the previous ones were stored. Each
//! request costs the client and the broker tens of microseconds however many messages it
//! carries, so this is what lets a windowed producer reach the broker's batched rates.
//!
//! A send goes to one broker group of the topic (FIFO: the group a message group hashes
//! to, so its order holds; otherwise round-robin, and a retry moves on to the next group),
//! to the first of the group's nodes (the leader, per the route); any node would do, as
//! followers forward to their leader. A transport failure moves that node to the back of
//! the route and refreshes it.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rocketraft_proto::rocketmq::v2 as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio_stream::StreamExt;
use tracing::Instrument;

use crate::ClientConfig;
use crate::conn::Connections;
use crate::error::{Error, Result};
use crate::message::{Message, ReceivedMessage, new_message_id, resource};
use crate::route::{GroupRoute, Router, spawn_refresher};

/// What a broker said about one sent message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    pub message_id: String,
    /// The broker group that stored it.
    pub broker_group: String,
    /// Its offset in its queue (for a delayed or transactional message: in the queue it
    /// waits in until delivered or committed).
    pub offset: i64,
    /// Set for transactional messages.
    pub transaction_id: String,
}

/// The answer to an orphaned-transaction check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionResolution {
    Commit,
    Rollback,
    /// Ask again later.
    Unknown,
}

type Checker = Arc<dyn Fn(&ReceivedMessage) -> TransactionResolution + Send + Sync>;

pub struct ProducerBuilder {
    config: ClientConfig,
    topics: Vec<String>,
    max_in_flight: usize,
    max_attempts: u32,
    backoff_initial: Duration,
    backoff_max: Duration,
    compress_over: Option<usize>,
    checker: Option<Checker>,
}

impl ProducerBuilder {
    /// Topics the producer declares up front: their routes are fetched at start, and with a
    /// transaction checker, the brokers ask it about their orphaned transactions.
    pub fn topics<I, S>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topics = topics.into_iter().map(Into::into).collect();
        self
    }

    /// Sends in flight at once for [`Producer::send_async`] and oneway sends (default 1024).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Attempts per send, the first included (default 3); retries only retriable errors,
    /// waiting `initial`, then doubling up to `max`.
    pub fn retries(mut self, max_attempts: u32, initial: Duration, max: Duration) -> Self {
        self.max_attempts = max_attempts.max(1);
        self.backoff_initial = initial;
        self.backoff_max = max.max(initial);
        self
    }

    /// Gzip bodies larger than `bytes` (RocketMQ's Java client does so above 4 KiB).
    pub fn compress_bodies_over(mut self, bytes: usize) -> Self {
        self.compress_over = Some(bytes);
        self
    }

    /// Answers the brokers' checks of transactions left neither committed nor rolled back.
    pub fn transaction_checker<F>(mut self, f: F) -> Self
    where
        F: Fn(&ReceivedMessage) -> TransactionResolution + Send + Sync + 'static,
    {
        self.checker = Some(Arc::new(f));
        self
    }

    pub async fn build(self) -> Result<Producer> {
        let conns = Arc::new(Connections::new(
            self.config.client_id(),
            self.config.request_timeout,
        ));
        let router = Arc::new(Router::new(conns.clone(), self.config.nameservers.clone()));
        spawn_refresher(Arc::downgrade(&router), self.config.route_refresh);
        for t in &self.topics {
            router.route(t).await?;
        }
        let (stop, stopped) = watch::channel(false);
        let inner = Arc::new(Inner {
            conns,
            router,
            window: Arc::new(Semaphore::new(self.max_in_flight)),
            window_size: self.max_in_flight,
            next_group: AtomicUsize::new(0),
            max_attempts: self.max_attempts,
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
            compress_over: self.compress_over,
            stop,
            coalescing: Mutex::default(),
        });
        if let Some(checker) = self.checker {
            for topic in &self.topics {
                let route = inner.router.route(topic).await?;
                for g in &route.groups {
                    tokio::spawn(
                        answer_checks(
                            inner.clone(),
                            topic.clone(),
                            g.group.clone(),
                            self.topics.clone(),
                            checker.clone(),
                            stopped.clone(),
                        )
                        .instrument(tracing::info_span!("transaction_checks", group = %g.group)),
                    );
                }
            }
        }
        Ok(Producer { inner })
    }
}

struct Inner {
    conns: Arc<Connections>,
    router: Arc<Router>,
    window: Arc<Semaphore>,
    window_size: usize,
    next_group: AtomicUsize,
    max_attempts: u32,
    backoff_initial: Duration,
    backoff_max: Duration,
    compress_over: Option<usize>,
    stop: watch::Sender<bool>,
    coalescing: Mutex<HashMap<String, TopicQueue>>,
}

/// Sends messages. Cheap to clone; clones share connections, routes and the window.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

/// A send under way ([`Producer::send_async`]); resolves to its receipt.
pub struct SendFuture(oneshot::Receiver<Result<SendReceipt>>);

impl Future for SendFuture {
    type Output = Result<SendReceipt>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::Closed)))
    }
}

/// Requests of coalesced sends under way per topic at once; what arrives meanwhile waits
/// and goes out in the next one. Several, not one, so that one slow request (a leader
/// change, a retry) does not hold up the topic, and the broker can spread them over queues.
const COALESCED_REQUESTS_MAX: usize = 4;
/// Messages and body bytes one coalesced request carries at most (the broker takes up to
/// 1024 messages and 8 MiB per request).
const COALESCED_MESSAGES_MAX: usize = 512;
const COALESCED_BYTES_MAX: usize = 2 * 1024 * 1024;

/// An async send waiting to be coalesced, with its window slot.
struct Pending {
    message: Message,
    done: oneshot::Sender<Result<SendReceipt>>,
    /// Held until the send is answered: the window counts sends, not requests.
    slot: OwnedSemaphorePermit,
}

/// Per topic: the sends waiting and the requests under way.
#[derive(Default)]
struct TopicQueue {
    waiting: VecDeque<Pending>,
    requests: usize,
}

/// A half message stored by [`Producer::send_transactional`]: invisible to consumers until
/// committed; rolled back, it is never delivered.
pub struct Transaction {
    inner: Arc<Inner>,
    receipt: SendReceipt,
    topic: String,
}

impl Transaction {
    pub fn receipt(&self) -> &SendReceipt {
        &self.receipt
    }

    pub async fn commit(self) -> Result<()> {
        self.end(pb::TransactionResolution::Commit).await
    }

    pub async fn rollback(self) -> Result<()> {
        self.end(pb::TransactionResolution::Rollback).await
    }

    async fn end(self, resolution: pb::TransactionResolution) -> Result<()> {
        end_transaction(
            &self.inner,
            &self.topic,
            &self.receipt.broker_group,
            &self.receipt.message_id,
            &self.receipt.transaction_id,
            resolution,
            pb::TransactionSource::SourceClient,
        )
        .await
    }
}

impl Producer {
    pub fn builder(config: ClientConfig) -> ProducerBuilder {
        ProducerBuilder {
            config,
            topics: Vec::new(),
            max_in_flight: 1024,
            max_attempts: 3,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            compress_over: None,
            checker: None,
        }
    }

    /// Sends one message and waits for its receipt (stored by a majority of its group).
    pub async fn send(&self, message: Message) -> Result<SendReceipt> {
        message.validate()?;
        let kind = message.kind();
        let mut receipts = self.inner.send_with_retries(&[message], kind).await?;
        receipts.pop().ok_or_else(|| Error::Server {
            context: "send".into(),
            code: pb::Code::Unspecified,
            message: "the answer has no entry".into(),
        })
    }

    /// Sends messages of one topic together: stored at once, in one queue, all or none.
    pub async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<SendReceipt>> {
        let Some(first) = messages.first() else {
            return Ok(Vec::new());
        };
        for (i, m) in messages.iter().enumerate() {
            m.validate()?;
            if m.topic != first.topic {
                return Err(Error::invalid(
                    format!("messages[{i}].topic"),
                    format!(
                        "{:?} differs from the batch's topic {:?}",
                        m.topic, first.topic
                    ),
                ));
            }
            if m.kind() != first.kind() {
                return Err(Error::invalid(
                    format!("messages[{i}]"),
                    "a batch holds messages of one type",
                ));
            }
        }
        let kind = first.kind();
        self.inner.send_with_retries(&messages, kind).await
    }

    /// Starts a send once the in-flight window has room (waiting for it otherwise) and
    /// returns a future of its receipt. NORMAL messages are coalesced with other async
    /// sends to their topic (see the module doc); the others go one request each.
    pub async fn send_async(&self, message: Message) -> Result<SendFuture> {
        message.validate()?;
        let slot = self
            .inner
            .window
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Closed)?;
        let (done, receipt) = oneshot::channel();
        if message.kind() == pb::MessageType::Normal {
            let topic = message.topic.clone();
            let start = {
                let mut queues = self.inner.coalescing.lock().expect("lock poisoned");
                let q = queues.entry(topic.clone()).or_default();
                q.waiting.push_back(Pending {
                    message,
                    done,
                    slot,
                });
                let start = q.requests < COALESCED_REQUESTS_MAX;
                if start {
                    q.requests += 1;
                }
                start
            };
            if start {
                tokio::spawn(send_coalesced(self.inner.clone(), topic));
            }
        } else {
            let producer = self.clone();
            tokio::spawn(async move {
                let r = producer.send(message).await;
                drop(slot);
                let _ = done.send(r);
            });
        }
        Ok(SendFuture(receipt))
    }

    /// Sends without waiting for (or reporting) the outcome; waits only for window room.
    pub async fn send_oneway(&self, message: Message) -> Result<()> {
        let pending = self.send_async(message).await?;
        tokio::spawn(async move {
            if let Err(e) = pending.await {
                tracing::debug!("oneway send failed: {e}");
            }
        });
        Ok(())
    }

    /// Stores `message` as a half message; commit or roll back the returned transaction.
    pub async fn send_transactional(&self, message: Message) -> Result<Transaction> {
        message.validate()?;
        if message.kind() != pb::MessageType::Normal {
            return Err(Error::invalid(
                "message",
                "a transactional message has no message group or delivery time",
            ));
        }
        let topic = message.topic.clone();
        let mut receipts = self
            .inner
            .send_with_retries(&[message], pb::MessageType::Transaction)
            .await?;
        let receipt = receipts.pop().ok_or_else(|| Error::Server {
            context: "send".into(),
            code: pb::Code::Unspecified,
            message: "the answer has no entry".into(),
        })?;
        Ok(Transaction {
            inner: self.inner.clone(),
            receipt,
            topic,
        })
    }

    /// Waits for every send under way, then stops background work.
    pub async fn close(&self) {
        let n = self.inner.window_size as u32;
        if let Ok(all) = self.inner.window.acquire_many(n).await {
            drop(all);
        }
        let _ = self.inner.stop.send(true);
    }
}

/// Sends what waits for `topic`, a request at a time, until nothing is left.
async fn send_coalesced(inner: Arc<Inner>, topic: String) {
    loop {
        let batch = {
            let mut queues = inner.coalescing.lock().expect("lock poisoned");
            let Some(q) = queues.get_mut(&topic) else {
                return;
            };
            // A share of what waits, not all of it: the other request slots take the rest
            // to the next queues, so a burst still spreads over the topic's queues and
            // broker groups like one-by-one sends would.
            let share = q
                .waiting
                .len()
                .div_ceil(COALESCED_REQUESTS_MAX)
                .clamp(1, COALESCED_MESSAGES_MAX);
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            while let Some(next) = q.waiting.front() {
                let size = next.message.body.len();
                if !batch.is_empty() && (batch.len() >= share || bytes + size > COALESCED_BYTES_MAX)
                {
                    break;
                }
                bytes += size;
                batch.extend(q.waiting.pop_front());
            }
            if batch.is_empty() {
                q.requests -= 1;
                if q.requests == 0 {
                    queues.remove(&topic);
                }
                return;
            }
            batch
        };
        let (messages, waiters): (Vec<Message>, Vec<_>) = batch
            .into_iter()
            .map(|p| (p.message, (p.done, p.slot)))
            .unzip();
        match inner
            .send_with_retries(&messages, pb::MessageType::Normal)
            .await
        {
            Ok(receipts) => {
                for ((done, _slot), receipt) in waiters.into_iter().zip(receipts) {
                    let _ = done.send(Ok(receipt));
                }
            }
            Err(e) => {
                for (done, _slot) in waiters {
                    let _ = done.send(Err(e.clone()));
                }
            }
        }
    }
}

impl Inner {
    /// The group `messages` go to on attempt `attempt` (0-based).
    fn pick_group<'r>(
        &self,
        groups: &'r [GroupRoute],
        message_group: Option<&str>,
        attempt: usize,
    ) -> &'r GroupRoute {
        let i = match message_group {
            // FIFO: the same group every time, so one message group's order holds.
            Some(g) => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                g.hash(&mut h);
                h.finish() as usize
            }
            None => self.next_group.fetch_add(1, Ordering::Relaxed) + attempt,
        };
        &groups[i % groups.len()]
    }

    async fn send_with_retries(
        &self,
        messages: &[Message],
        kind: pb::MessageType,
    ) -> Result<Vec<SendReceipt>> {
        let topic = &messages[0].topic;
        // One id per message for all attempts: a retried send is recognisably the same.
        let wire: Vec<pb::Message> = messages
            .iter()
            .map(|m| m.to_pb(new_message_id(), kind, self.compress_over))
            .collect();
        let mut delay = self.backoff_initial;
        let mut attempt = 0usize;
        loop {
            let r = self
                .send_once(topic, messages[0].message_group.as_deref(), &wire, attempt)
                .await;
            attempt += 1;
            match r {
                Err(e) if e.is_retriable() && attempt < self.max_attempts as usize => {
                    tracing::debug!(topic, attempt, "send failed, retrying: {e}");
                    self.router.refresh_after_failure(topic).await;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.backoff_max);
                }
                other => return other,
            }
        }
    }

    async fn send_once(
        &self,
        topic: &str,
        message_group: Option<&str>,
        wire: &[pb::Message],
        attempt: usize,
    ) -> Result<Vec<SendReceipt>> {
        let route = self.router.route(topic).await?;
        let group = self.pick_group(&route.groups, message_group, attempt);
        let addr = group
            .addrs
            .first()
            .ok_or_else(|| Error::NoRoute(topic.into()))?;
        let mut client = self.conns.messaging(addr)?;
        let resp = match client
            .send_message(self.conns.request(pb::SendMessageRequest {
                messages: wire.to_vec(),
            }))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => {
                self.router.demote(topic, &group.group, addr);
                return Err(Error::transport(format!("send to {addr}"), status));
            }
        };
        let code = resp
            .status
            .as_ref()
            .and_then(|s| pb::Code::try_from(s.code).ok());
        if code != Some(pb::Code::MultipleResults) {
            Error::check(&format!("send to {}", group.group), resp.status.as_ref())?;
        }
        let mut receipts = Vec::with_capacity(resp.entries.len());
        for e in resp.entries {
            Error::check(&format!("send {}", e.message_id), e.status.as_ref())?;
            receipts.push(SendReceipt {
                message_id: e.message_id,
                broker_group: group.group.clone(),
                offset: e.offset,
                transaction_id: e.transaction_id,
            });
        }
        if receipts.len() != wire.len() {
            return Err(Error::Server {
                context: format!("send to {}", group.group),
                code: pb::Code::Unspecified,
                message: format!("{} entries for {} messages", receipts.len(), wire.len()),
            });
        }
        Ok(receipts)
    }
}

/// Ends a transaction at any node of its group (nodes forward to the leader), trying the
/// next node when one is unreachable.
async fn end_transaction(
    inner: &Inner,
    topic: &str,
    group: &str,
    message_id: &str,
    transaction_id: &str,
    resolution: pb::TransactionResolution,
    source: pb::TransactionSource,
) -> Result<()> {
    let route = inner.router.route(topic).await?;
    let addrs = route
        .groups
        .iter()
        .find(|g| g.group == group)
        .map(|g| g.addrs.clone())
        .unwrap_or_default();
    let req = pb::EndTransactionRequest {
        topic: Some(resource(topic)),
        message_id: message_id.into(),
        transaction_id: transaction_id.into(),
        resolution: resolution as i32,
        source: source as i32,
        trace_context: String::new(),
    };
    let r = inner
        .conns
        .first_answer(&addrs, "end transaction", |mut c| {
            let r = inner.conns.request(req.clone());
            async move { c.end_transaction(r).await }
        })
        .await?;
    Error::check("end transaction", r.status.as_ref())
}

/// Holds a telemetry stream to a node of `group` announcing the producer's topics, and
/// answers the orphaned-transaction checks it pushes, until the producer closes.
async fn answer_checks(
    inner: Arc<Inner>,
    topic: String,
    group: String,
    topics: Vec<String>,
    checker: Checker,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let addr = match inner.router.route(&topic).await {
            Ok(r) => r
                .groups
                .iter()
                .find(|g| g.group == group)
                .and_then(|g| g.addrs.first().cloned()),
            Err(_) => None,
        };
        if let Some(addr) = addr {
            let settings = pb::TelemetryCommand {
                status: None,
                command: Some(pb::telemetry_command::Command::Settings(pb::Settings {
                    client_type: Some(pb::ClientType::Producer as i32),
                    pub_sub: Some(pb::settings::PubSub::Publishing(pb::Publishing {
                        topics: topics.iter().map(|t| resource(t)).collect(),
                        ..Default::default()
                    })),
                    ..Default::default()
                })),
            };
            // The outbound half stays open until the producer closes.
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let _ = tx.send(settings).await;
            let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
            let req = inner
                .conns
                .request_with_timeout(outbound, Duration::from_secs(365 * 24 * 3600));
            let opened = inner
                .conns
                .messaging(&addr)
                .map(|mut c| async move { c.telemetry(req).await });
            if let Ok(opening) = opened
                && let Ok(resp) = opening.await
            {
                backoff = Duration::from_millis(100);
                let mut inbound = resp.into_inner();
                loop {
                    tokio::select! {
                        _ = stopped.changed() => return,
                        frame = inbound.next() => {
                            let Some(Ok(cmd)) = frame else { break };
                            if let Some(pb::telemetry_command::Command::RecoverOrphanedTransactionCommand(c)) = cmd.command {
                                check_one(&inner, &group, &addr, c, &checker).await;
                            }
                        }
                    }
                }
                drop(tx);
            }
        }
        inner.router.refresh_after_failure(&topic).await;
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn check_one(
    inner: &Inner,
    group: &str,
    addr: &str,
    c: pb::RecoverOrphanedTransactionCommand,
    checker: &Checker,
) {
    let Some(m) = c.message else { return };
    let message = match ReceivedMessage::from_pb(m, group, addr) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!("transaction check carries a bad message: {e}");
            return;
        }
    };
    let resolution = match checker(&message) {
        TransactionResolution::Commit => pb::TransactionResolution::Commit,
        TransactionResolution::Rollback => pb::TransactionResolution::Rollback,
        TransactionResolution::Unknown => return,
    };
    if let Err(e) = end_transaction(
        inner,
        &message.topic,
        group,
        &message.message_id,
        &c.transaction_id,
        resolution,
        pb::TransactionSource::SourceServerCheck,
    )
    .await
    {
        tracing::debug!(message_id = %message.message_id, "answering a check failed: {e}");
    }
}
