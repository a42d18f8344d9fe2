//! Consumers of a consumer group: [`SimpleConsumer`] (receive, ack, change invisibility)
//! and [`PushConsumer`] (a listener fed by a bounded worker pool).
//!
//! Both receive through `ReceiveMessage` from every broker group hosting a subscribed
//! topic; a received message stays invisible to the group for the invisible duration,
//! and comes back unless acknowledged (at-least-once).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rocketraft_proto::rocketmq::v2 as pb;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tracing::Instrument;

use crate::ClientConfig;
use crate::conn::Connections;
use crate::error::{Error, Result};
use crate::message::{ReceivedMessage, duration, resource};
use crate::route::{Router, spawn_refresher};

/// Which messages of a topic a subscription takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `*` for all, or tags joined by `||`.
    Tag(String),
    /// An SQL92 condition on the message properties.
    Sql(String),
}

impl Filter {
    pub fn all() -> Self {
        Filter::Tag("*".into())
    }

    fn to_pb(&self) -> pb::FilterExpression {
        match self {
            Filter::Tag(t) => pb::FilterExpression {
                r#type: pb::FilterType::Tag as i32,
                expression: t.clone(),
            },
            Filter::Sql(s) => pb::FilterExpression {
                r#type: pb::FilterType::Sql as i32,
                expression: s.clone(),
            },
        }
    }
}

/// What is shared by both consumer kinds: the group, the subscriptions, connections, routes.
struct Core {
    conns: Arc<Connections>,
    router: Arc<Router>,
    group: String,
    subscriptions: Vec<(String, Filter)>,
}

impl Core {
    async fn new(
        config: &ClientConfig,
        group: String,
        subs: Vec<(String, Filter)>,
    ) -> Result<Self> {
        if group.is_empty() {
            return Err(Error::invalid("group", "is empty"));
        }
        if subs.is_empty() {
            return Err(Error::invalid(
                "subscriptions",
                "subscribe to at least one topic",
            ));
        }
        let conns = Arc::new(Connections::new(config.client_id(), config.request_timeout));
        let router = Arc::new(Router::new(conns.clone(), config.nameservers.clone()));
        spawn_refresher(Arc::downgrade(&router), config.route_refresh);
        for (t, _) in &subs {
            router.route(t).await?;
        }
        Ok(Self {
            conns,
            router,
            group,
            subscriptions: subs,
        })
    }

    /// Every (subscription index, broker group) pair to receive from, per current routes.
    async fn sources(&self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (i, (topic, _)) in self.subscriptions.iter().enumerate() {
            match self.router.route(topic).await {
                Ok(r) => out.extend(r.groups.iter().map(|g| (i, g.group.clone()))),
                Err(e) => tracing::debug!(topic, "no route: {e}"),
            }
        }
        out
    }

    /// One ReceiveMessage call to `group` for subscription `sub`.
    async fn receive_from(
        &self,
        sub: usize,
        group: &str,
        max: u32,
        invisible: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let (topic, filter) = &self.subscriptions[sub];
        let route = self.router.route(topic).await?;
        let Some(addr) = route
            .groups
            .iter()
            .find(|g| g.group == group)
            .and_then(|g| g.addrs.first().cloned())
        else {
            return Ok(Vec::new());
        };
        let req = self.conns.request_with_timeout(
            pb::ReceiveMessageRequest {
                group: Some(resource(&self.group)),
                message_queue: Some(pb::MessageQueue {
                    topic: Some(resource(topic)),
                    id: 0,
                    ..Default::default()
                }),
                filter_expression: Some(filter.to_pb()),
                batch_size: max.clamp(1, 1024) as i32,
                invisible_duration: Some(duration(invisible)),
                auto_renew: false,
                long_polling_timeout: Some(duration(wait)),
                attempt_id: None,
            },
            wait + self.conns.request_timeout(),
        );
        let mut client = self.conns.messaging(&addr)?;
        let mut stream = match client.receive_message(req).await {
            Ok(s) => s.into_inner(),
            Err(status) => {
                self.router.demote(topic, group, &addr);
                return Err(Error::transport(format!("receive from {addr}"), status));
            }
        };
        let mut out = Vec::new();
        let mut status = None;
        while let Some(frame) = stream.next().await {
            let frame = frame.map_err(|s| Error::transport(format!("receive from {addr}"), s))?;
            match frame.content {
                Some(pb::receive_message_response::Content::Message(m)) => {
                    match ReceivedMessage::from_pb(m, group, &addr) {
                        Ok(m) => out.push(m),
                        // A corrupt message is left to come back (and, past its attempts,
                        // to go to the dead-letter queue) rather than handed to the app.
                        Err(e) => tracing::warn!("dropping a received message: {e}"),
                    }
                }
                Some(pb::receive_message_response::Content::Status(s)) => status = Some(s),
                _ => {}
            }
        }
        match status
            .as_ref()
            .and_then(|s| pb::Code::try_from(s.code).ok())
        {
            // "Nothing to receive" is an answer, not an error.
            Some(pb::Code::MessageNotFound) => Ok(out),
            _ if !out.is_empty() => Ok(out),
            _ => Error::check(&format!("receive from {group}"), status.as_ref()).map(|_| out),
        }
    }

    /// Acks at the node that delivered, then at the group's other nodes if it is gone.
    async fn ack(&self, m: &ReceivedMessage) -> Result<()> {
        self.ack_same_source(&[m]).await
    }

    /// Acks messages of one topic delivered by one broker group in one request (one Raft
    /// entry at the group); fails if any entry was refused.
    async fn ack_same_source(&self, ms: &[&ReceivedMessage]) -> Result<()> {
        let Some(first) = ms.first() else {
            return Ok(());
        };
        let req = pb::AckMessageRequest {
            group: Some(resource(&self.group)),
            topic: Some(resource(&first.topic)),
            entries: ms
                .iter()
                .map(|m| pb::AckMessageEntry {
                    message_id: m.message_id.clone(),
                    receipt_handle: m.receipt_handle.clone(),
                    lite_topic: None,
                })
                .collect(),
        };
        let r = self
            .conns
            .first_answer(&self.addrs_for(first).await, "ack", |mut c| {
                let r = self.conns.request(req.clone());
                async move { c.ack_message(r).await }
            })
            .await?;
        if r.entries.is_empty() {
            return Error::check("ack", r.status.as_ref());
        }
        for e in &r.entries {
            Error::check(&format!("ack of {}", e.message_id), e.status.as_ref())?;
        }
        Ok(())
    }

    /// Changes the message's invisible duration; returns the new receipt handle.
    async fn change_invisible(&self, m: &ReceivedMessage, d: Duration) -> Result<String> {
        let req = pb::ChangeInvisibleDurationRequest {
            group: Some(resource(&self.group)),
            topic: Some(resource(&m.topic)),
            receipt_handle: m.receipt_handle.clone(),
            invisible_duration: Some(duration(d)),
            message_id: m.message_id.clone(),
            lite_topic: None,
            suspend: None,
        };
        let r = self
            .conns
            .first_answer(&self.addrs_for(m).await, "change invisible", |mut c| {
                let r = self.conns.request(req.clone());
                async move { c.change_invisible_duration(r).await }
            })
            .await?;
        Error::check("change invisible duration", r.status.as_ref())?;
        Ok(r.receipt_handle)
    }

    /// The delivering node first, then the rest of its group.
    async fn addrs_for(&self, m: &ReceivedMessage) -> Vec<String> {
        let mut addrs = vec![m.endpoint.clone()];
        if let Ok(r) = self.router.route(&m.topic).await
            && let Some(g) = r.groups.iter().find(|g| g.group == m.broker_group)
        {
            addrs.extend(g.addrs.iter().filter(|a| **a != m.endpoint).cloned());
        }
        addrs
    }
}

/// Receives and acknowledges at the application's pace.
pub struct SimpleConsumer {
    core: Core,
    cursor: AtomicUsize,
    wait: Duration,
}

pub struct SimpleConsumerBuilder {
    config: ClientConfig,
    group: String,
    subscriptions: Vec<(String, Filter)>,
    wait: Duration,
}

impl SimpleConsumerBuilder {
    pub fn subscribe(mut self, topic: impl Into<String>, filter: Filter) -> Self {
        self.subscriptions.push((topic.into(), filter));
        self
    }

    /// How long a receive waits for messages when there are none (default 20 s, the
    /// broker's long-polling limit is 30 s).
    pub fn await_duration(mut self, d: Duration) -> Self {
        self.wait = d;
        self
    }

    pub async fn build(self) -> Result<SimpleConsumer> {
        Ok(SimpleConsumer {
            core: Core::new(&self.config, self.group, self.subscriptions).await?,
            cursor: AtomicUsize::new(0),
            wait: self.wait,
        })
    }
}

impl SimpleConsumer {
    pub fn builder(config: ClientConfig, group: impl Into<String>) -> SimpleConsumerBuilder {
        SimpleConsumerBuilder {
            config,
            group: group.into(),
            subscriptions: Vec::new(),
            wait: Duration::from_secs(20),
        }
    }

    /// Up to `max` messages, each invisible to the group for `invisible` unless acked.
    ///
    /// Looks at every source (subscribed topic x hosting broker group) once without waiting,
    /// taking turns at who goes first; when none has anything, long-polls the next one for
    /// the await duration (as the official clients do, one queue per long poll).
    pub async fn receive(&self, max: u32, invisible: Duration) -> Result<Vec<ReceivedMessage>> {
        if max == 0 {
            return Err(Error::invalid("max", "must be at least 1"));
        }
        let sources = self.core.sources().await;
        if sources.is_empty() {
            return Err(Error::NoRoute(self.core.subscriptions[0].0.clone()));
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::new();
        let mut last_err = None;
        for k in 0..sources.len() {
            let (sub, group) = &sources[(start + k) % sources.len()];
            let want = max - out.len() as u32;
            match self
                .core
                .receive_from(*sub, group, want, invisible, Duration::ZERO)
                .await
            {
                Ok(got) => out.extend(got),
                Err(e) => last_err = Some(e),
            }
            if out.len() as u32 >= max {
                break;
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        let (sub, group) = &sources[start % sources.len()];
        match self
            .core
            .receive_from(*sub, group, max, invisible, self.wait)
            .await
        {
            Ok(got) => Ok(got),
            // Every source failed: report it rather than an empty answer.
            Err(e) => Err(last_err.unwrap_or(e)),
        }
    }

    pub async fn ack(&self, message: &ReceivedMessage) -> Result<()> {
        self.core.ack(message).await
    }

    /// Acks many messages with one request per (broker group, topic): each group then
    /// records them in one Raft entry instead of one per message. Fails with the first
    /// refusal; the other messages of its request may still have been acked.
    pub async fn ack_all(&self, messages: &[ReceivedMessage]) -> Result<()> {
        let mut by_source: HashMap<(&str, &str), Vec<&ReceivedMessage>> = HashMap::new();
        for m in messages {
            by_source
                .entry((m.broker_group.as_str(), m.topic.as_str()))
                .or_default()
                .push(m);
        }
        for ms in by_source.values() {
            self.core.ack_same_source(ms).await?;
        }
        Ok(())
    }

    /// Makes the message visible again after `d` (zero: now); the message's receipt changes,
    /// so it is updated in place.
    pub async fn change_invisible_duration(
        &self,
        message: &mut ReceivedMessage,
        d: Duration,
    ) -> Result<()> {
        message.receipt_handle = self.core.change_invisible(message, d).await?;
        Ok(())
    }
}

/// What a listener made of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeResult {
    Success,
    /// Deliver it again later, after the group's retry backoff.
    Failure,
}

type Listener = Arc<
    dyn Fn(ReceivedMessage) -> Pin<Box<dyn Future<Output = ConsumeResult> + Send>> + Send + Sync,
>;

pub struct PushConsumerBuilder {
    config: ClientConfig,
    group: String,
    subscriptions: Vec<(String, Filter)>,
    listener: Option<Listener>,
    workers: usize,
    cache_max: usize,
    invisible: Duration,
}

impl PushConsumerBuilder {
    pub fn subscribe(mut self, topic: impl Into<String>, filter: Filter) -> Self {
        self.subscriptions.push((topic.into(), filter));
        self
    }

    /// The function each message is handed to.
    pub fn listener<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(ReceivedMessage) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ConsumeResult> + Send + 'static,
    {
        self.listener = Some(Arc::new(move |m| Box::pin(f(m))));
        self
    }

    /// Listener calls running at once (default 16).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Messages received and not yet consumed, at most (default 1024): receiving pauses
    /// when this many wait.
    pub fn cache_max(mut self, n: usize) -> Self {
        self.cache_max = n.max(1);
        self
    }

    /// How long a message handed to the listener stays invisible to the rest of the group
    /// (default 60 s): a listener slower than this sees it delivered again.
    pub fn invisible_duration(mut self, d: Duration) -> Self {
        self.invisible = d;
        self
    }

    pub async fn build(self) -> Result<PushConsumer> {
        let listener = self
            .listener
            .ok_or_else(|| Error::invalid("listener", "a push consumer needs a listener"))?;
        let core = Arc::new(Core::new(&self.config, self.group, self.subscriptions).await?);
        let policy = group_policy(&core).await;
        let (stop, stopped) = watch::channel(false);
        let cache = Arc::new(Semaphore::new(self.cache_max));
        let workers = Arc::new(Semaphore::new(self.workers));
        let (tx, rx) = mpsc::unbounded_channel::<Cached>();
        let ctx = Arc::new(PushContext {
            core: core.clone(),
            listener,
            policy,
            invisible: self.invisible,
        });
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(dispatch(
            ctx.clone(),
            rx,
            workers,
            stopped.clone(),
        )));
        tasks.push(tokio::spawn(
            receive_loop(ctx.clone(), tx, cache, stopped.clone())
                .instrument(tracing::info_span!("push_consumer", group = %core.group)),
        ));
        Ok(PushConsumer { stop, tasks })
    }
}

/// The group's delivery policy, as the brokers state it in their settings answer.
struct GroupPolicy {
    orderly: bool,
    max_attempts: u32,
    backoff: pb::RetryPolicy,
}

impl GroupPolicy {
    /// How long to wait before delivery `attempt + 1`, after delivery `attempt` failed.
    fn backoff(&self, attempt: u32) -> Duration {
        let n = attempt.max(1) as usize;
        let d = |d: &prost_types::Duration| {
            Duration::new(
                d.seconds.max(0) as u64,
                d.nanos.clamp(0, 999_999_999) as u32,
            )
        };
        match &self.backoff.strategy {
            Some(pb::retry_policy::Strategy::CustomizedBackoff(c)) if !c.next.is_empty() => {
                d(&c.next[(n - 1).min(c.next.len() - 1)])
            }
            Some(pb::retry_policy::Strategy::ExponentialBackoff(e)) => {
                let initial = e.initial.as_ref().map(d).unwrap_or(Duration::from_secs(1));
                let max = e.max.as_ref().map(d).unwrap_or(Duration::from_secs(60));
                let f = (e.multiplier.max(1.0) as f64).powi((n - 1).min(64) as i32);
                initial.mul_f64(f.min(1e6)).min(max)
            }
            _ => Duration::from_secs(1),
        }
    }
}

/// Opens a telemetry stream to one node of the first subscription's first group, announces
/// the subscription and reads the settings answer.
async fn group_policy(core: &Core) -> GroupPolicy {
    let fallback = GroupPolicy {
        orderly: false,
        max_attempts: 17,
        backoff: pb::RetryPolicy::default(),
    };
    let topic = &core.subscriptions[0].0;
    let Ok(route) = core.router.route(topic).await else {
        return fallback;
    };
    let Some(addr) = route.groups.first().and_then(|g| g.addrs.first()) else {
        return fallback;
    };
    let settings = pb::TelemetryCommand {
        status: None,
        command: Some(pb::telemetry_command::Command::Settings(pb::Settings {
            client_type: Some(pb::ClientType::PushConsumer as i32),
            pub_sub: Some(pb::settings::PubSub::Subscription(pb::Subscription {
                group: Some(resource(&core.group)),
                subscriptions: core
                    .subscriptions
                    .iter()
                    .map(|(t, f)| pb::SubscriptionEntry {
                        topic: Some(resource(t)),
                        expression: Some(f.to_pb()),
                    })
                    .collect(),
                ..Default::default()
            })),
            ..Default::default()
        })),
    };
    let req = core.conns.request(tokio_stream::iter(vec![settings]));
    let Ok(mut client) = core.conns.messaging(addr) else {
        return fallback;
    };
    let answer = async {
        let mut replies = client.telemetry(req).await.ok()?.into_inner();
        while let Some(Ok(cmd)) = replies.next().await {
            if let Some(pb::telemetry_command::Command::Settings(s)) = cmd.command {
                return Some(s);
            }
        }
        None
    };
    match tokio::time::timeout(core.conns.request_timeout(), answer).await {
        Ok(Some(s)) => {
            let orderly = matches!(
                &s.pub_sub,
                Some(pb::settings::PubSub::Subscription(sub)) if sub.fifo == Some(true)
            );
            let backoff = s.backoff_policy.unwrap_or_default();
            GroupPolicy {
                orderly,
                max_attempts: backoff.max_attempts.max(1) as u32,
                backoff,
            }
        }
        _ => fallback,
    }
}

struct PushContext {
    core: Arc<Core>,
    listener: Listener,
    policy: GroupPolicy,
    invisible: Duration,
}

/// Consumes messages with the listener until stopped. Stop it with [`PushConsumer::shutdown`].
pub struct PushConsumer {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl PushConsumer {
    pub fn builder(config: ClientConfig, group: impl Into<String>) -> PushConsumerBuilder {
        PushConsumerBuilder {
            config,
            group: group.into(),
            subscriptions: Vec::new(),
            listener: None,
            workers: 16,
            cache_max: 1024,
            invisible: Duration::from_secs(60),
        }
    }

    /// Stops receiving, lets the listener calls under way finish, and returns. Messages
    /// received and not consumed come back to the group after their invisible duration.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// A received message waiting for the listener, its cache permit, and when it arrived (its
/// invisibility runs from then).
type Cached = (ReceivedMessage, tokio::sync::OwnedSemaphorePermit, Instant);

/// Receives from every source in its own task (one long poll at a time each), taking a
/// cache permit per message so receiving pauses while the listener is behind. An orderly
/// group's batch is passed on whole, so its messages are consumed one after another.
async fn receive_loop(
    ctx: Arc<PushContext>,
    tx: mpsc::UnboundedSender<Cached>,
    cache: Arc<Semaphore>,
    stopped: watch::Receiver<bool>,
) {
    let mut running: HashMap<(usize, String), tokio::task::JoinHandle<()>> = HashMap::new();
    let mut stop = stopped.clone();
    loop {
        for (sub, group) in ctx.core.sources().await {
            let key = (sub, group.clone());
            if running.get(&key).is_some_and(|t| !t.is_finished()) {
                continue;
            }
            let (ctx, tx, cache, stopped) =
                (ctx.clone(), tx.clone(), cache.clone(), stopped.clone());
            running.insert(
                key,
                tokio::spawn(receive_source(ctx, sub, group, tx, cache, stopped)),
            );
        }
        // New groups may start hosting a topic: look again now and then.
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
    for (_, t) in running {
        let _ = t.await;
    }
}

async fn receive_source(
    ctx: Arc<PushContext>,
    sub: usize,
    group: String,
    tx: mpsc::UnboundedSender<Cached>,
    cache: Arc<Semaphore>,
    mut stopped: watch::Receiver<bool>,
) {
    const BATCH: u32 = 32;
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stopped.borrow() {
            return;
        }
        // Wait for room for at least one message; take what is free, up to a batch.
        let first = tokio::select! {
            _ = stopped.changed() => return,
            p = cache.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let extra = (cache.available_permits() as u32).min(BATCH - 1);
        let mut permits = vec![first];
        for _ in 0..extra {
            match cache.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let got = tokio::select! {
            _ = stopped.changed() => return,
            r = ctx.core.receive_from(sub, &group, permits.len() as u32, ctx.invisible, Duration::from_secs(20)) => r,
        };
        match got {
            Ok(messages) => {
                backoff = Duration::from_millis(100);
                for m in messages {
                    let permit = match permits.pop() {
                        Some(p) => p,
                        // The broker sent more than asked: take room as it frees up.
                        None => match cache.clone().acquire_owned().await {
                            Ok(p) => p,
                            Err(_) => return,
                        },
                    };
                    if tx.send((m, permit, Instant::now())).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(group, "receive failed: {e}");
                ctx.core
                    .router
                    .refresh_after_failure(&ctx.core.subscriptions[sub].0)
                    .await;
                tokio::select! {
                    _ = stopped.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Hands cached messages to the listener, at most `workers` at once. For an orderly group
/// the messages of one message group (or queue) go through one at a time, in order.
async fn dispatch(
    ctx: Arc<PushContext>,
    mut rx: mpsc::UnboundedReceiver<Cached>,
    workers: Arc<Semaphore>,
    mut stopped: watch::Receiver<bool>,
) {
    // Orderly: one queue of pending messages per ordering key, drained by one task.
    let lanes: Arc<std::sync::Mutex<HashMap<String, mpsc::UnboundedSender<Cached>>>> =
        Arc::default();
    loop {
        let item = tokio::select! {
            _ = stopped.changed() => break,
            item = rx.recv() => match item { Some(i) => i, None => break },
        };
        if ctx.policy.orderly {
            let key = format!(
                "{}/{}/{}",
                item.0.broker_group,
                item.0.queue_id,
                item.0.message_group.as_deref().unwrap_or("")
            );
            let mut lanes_now = lanes.lock().expect("lock poisoned");
            let item = match lanes_now.get(&key) {
                Some(lane) => match lane.send(item) {
                    Ok(()) => continue,
                    // The lane retired meanwhile: start a new one with the message.
                    Err(mpsc::error::SendError(item)) => item,
                },
                None => item,
            };
            let (lane_tx, mut lane_rx) = mpsc::unbounded_channel::<Cached>();
            let _ = lane_tx.send(item);
            lanes_now.insert(key.clone(), lane_tx);
            drop(lanes_now);
            let (ctx, workers, lanes) = (ctx.clone(), workers.clone(), lanes.clone());
            tokio::spawn(async move {
                loop {
                    let next =
                        match tokio::time::timeout(Duration::from_secs(1), lane_rx.recv()).await {
                            Ok(Some(n)) => n,
                            _ => {
                                // Idle: retire the lane unless a message slipped in meanwhile.
                                let mut l = lanes.lock().expect("lock poisoned");
                                match lane_rx.try_recv() {
                                    Ok(n) => {
                                        drop(l);
                                        n
                                    }
                                    Err(_) => {
                                        l.remove(&key);
                                        return;
                                    }
                                }
                            }
                        };
                    let Ok(slot) = workers.clone().acquire_owned().await else {
                        return;
                    };
                    consume_in_order(&ctx, next).await;
                    drop(slot);
                }
            });
        } else {
            let Ok(slot) = workers.clone().acquire_owned().await else {
                break;
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                consume_concurrently(&ctx, item).await;
                drop(slot);
            });
        }
    }
    // Let listener calls under way finish.
    let _ = workers
        .acquire_many(workers.available_permits() as u32)
        .await;
}

/// Runs the listener on `m` and keeps the message invisible while it runs (auto-renew, as
/// the official push consumers do): whenever half the invisible duration has passed since
/// it was last made invisible (`since`), it is extended by a whole one, and `m` takes the
/// new receipt handle, so a slow listener does not see its message handed to another
/// consumer meanwhile.
async fn listen_renewing(
    ctx: &PushContext,
    m: &mut ReceivedMessage,
    since: Instant,
) -> ConsumeResult {
    let call = (ctx.listener)(m.clone());
    tokio::pin!(call);
    let half = ctx.invisible / 2;
    let mut renew_at = since + half;
    loop {
        tokio::select! {
            r = &mut call => return r,
            _ = tokio::time::sleep_until(renew_at) => {
                match ctx.core.change_invisible(m, ctx.invisible).await {
                    Ok(handle) => m.receipt_handle = handle,
                    // Too late (it was handed out again) or unreachable: the listener's
                    // result still decides what we ask for; the broker refuses a stale ack.
                    Err(e) => tracing::debug!(message_id = %m.message_id, "renewing invisibility failed: {e}"),
                }
                renew_at = Instant::now() + half;
            }
        }
    }
}

/// One message, independently of the others: ack on success; on failure make it visible
/// again after the group's backoff for its attempt.
async fn consume_concurrently(ctx: &PushContext, (mut m, _permit, received): Cached) {
    let attempt = m.delivery_attempt;
    match listen_renewing(ctx, &mut m, received).await {
        ConsumeResult::Success => {
            if let Err(e) = ctx.core.ack(&m).await {
                tracing::debug!(message_id = %m.message_id, "ack failed (it will come back): {e}");
            }
        }
        ConsumeResult::Failure => {
            let d = ctx.policy.backoff(attempt);
            if let Err(e) = ctx.core.change_invisible(&m, d).await {
                tracing::debug!(message_id = %m.message_id, "nack failed: {e}");
            }
        }
    }
}

/// One message of an orderly group: retried here, in place, until it succeeds or runs out
/// of attempts (then it goes to the dead-letter queue), so nothing behind it overtakes it.
async fn consume_in_order(ctx: &PushContext, (mut m, _permit, received): Cached) {
    let mut attempt = m.delivery_attempt;
    let mut visible_from = received;
    loop {
        let started = Instant::now();
        if listen_renewing(ctx, &mut m, visible_from).await == ConsumeResult::Success {
            if let Err(e) = ctx.core.ack(&m).await {
                tracing::debug!(message_id = %m.message_id, "ack failed (it will come back): {e}");
            }
            return;
        }
        if attempt >= ctx.policy.max_attempts {
            if let Err(e) = forward_to_dead_letters(ctx, &m, attempt).await {
                tracing::warn!(message_id = %m.message_id, "moving to the DLQ failed: {e}");
            }
            return;
        }
        let wait = ctx.policy.backoff(attempt);
        // Keep it invisible through the wait and the next try.
        match ctx.core.change_invisible(&m, wait + ctx.invisible).await {
            Ok(handle) => m.receipt_handle = handle,
            Err(e) => {
                // Lost the message (its invisibility ran out): the broker redelivers it.
                tracing::debug!(message_id = %m.message_id, "extending invisibility failed: {e}");
                return;
            }
        }
        tracing::debug!(message_id = %m.message_id, attempt, elapsed = ?started.elapsed(), "orderly retry");
        // Invisible for `wait + invisible` from now: the next call renews relative to the
        // wait's end.
        visible_from = Instant::now() + wait;
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

async fn forward_to_dead_letters(
    ctx: &PushContext,
    m: &ReceivedMessage,
    attempt: u32,
) -> Result<()> {
    let req = pb::ForwardMessageToDeadLetterQueueRequest {
        group: Some(resource(&ctx.core.group)),
        topic: Some(resource(&m.topic)),
        receipt_handle: m.receipt_handle.clone(),
        message_id: m.message_id.clone(),
        delivery_attempt: attempt as i32,
        max_delivery_attempts: ctx.policy.max_attempts as i32,
        lite_topic: None,
    };
    let conns = &ctx.core.conns;
    let r = conns
        .first_answer(&ctx.core.addrs_for(m).await, "forward to DLQ", |mut c| {
            let r = conns.request(req.clone());
            async move { c.forward_message_to_dead_letter_queue(r).await }
        })
        .await?;
    Error::check("forward to DLQ", r.status.as_ref())
}
