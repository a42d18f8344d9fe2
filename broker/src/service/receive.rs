//! The pop-based consumers (SimpleConsumer and PushConsumer): ReceiveMessage, AckMessage,
//! ChangeInvisibleDuration and ForwardMessageToDeadLetterQueue.
//!
//! Every delivery is a Raft command (`Pop`), so which message went to which consumer, its
//! invisibility and its attempt count are the same on every node and survive a leader
//! change; receipt handles are therefore valid on every node. A receive that finds nothing
//! waits on this node's applied state (new appends, due timers, expiring invisibility)
//! until its long-polling budget is spent, without proposing empty pops.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rocketraft_proto::rocketmq::v2 as pb;
use rocketraft_proto::rocketmq::v2::receive_message_response::Content;
use rocketraft_raft_store::{
    Command, CommandResult, Filter, Handle, Rejection, TopicConfig, limits,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::message::{Delivery, decode_handle, duration_ms, encode_handle, timestamp, to_pb};
use super::status::{ClientInfo, ok};
use super::{BoxStream, Outcome, Refusal, ServiceContext, propose};
use crate::admin::now_ms;

/// Invisible time of push consumers, which ask the server to choose (RocketMQ's proxy: 60 s).
const DEFAULT_INVISIBLE_MS: i64 = 60_000;
/// Accepted invisible times of a receive. RocketMQ's proxy asks for at least 10 s; we allow
/// shorter, which tests of redelivery need and which costs nothing.
const INVISIBLE_MS_MIN: i64 = 1_000;
pub const INVISIBLE_MS_MAX: i64 = 12 * 3600 * 1000;
/// Long polling when the request names none, and the most we ever hold a receive.
const LONG_POLLING_DEFAULT: Duration = Duration::from_secs(20);
const LONG_POLLING_MAX: Duration = Duration::from_secs(30);
/// Messages in one receive at most.
const BATCH_SIZE_MAX: i32 = 1024;
/// Entries in one ack at most.
const ACK_ENTRIES_MAX: usize = 1024;

/// A validated receive.
struct Receive {
    group: String,
    topic: TopicConfig,
    namespace: String,
    queue_ids: Vec<u32>,
    filter: Filter,
    max: u32,
    invisible_ms: i64,
    long_polling: Duration,
}

fn resource_name(r: &Option<pb::Resource>) -> &str {
    r.as_ref().map(|r| r.name.as_str()).unwrap_or_default()
}

pub fn check_group(group: &Option<pb::Resource>) -> Result<String, Refusal> {
    let name = resource_name(group);
    limits::validate_name("group", name)
        .map_err(|e| (pb::Code::IllegalConsumerGroup, e.to_string()))?;
    Ok(name.to_string())
}

pub fn check_topic(
    ctx: &ServiceContext,
    topic: &Option<pb::Resource>,
) -> Result<TopicConfig, Refusal> {
    let name = resource_name(topic);
    limits::validate_name("topic", name).map_err(|e| (pb::Code::IllegalTopic, e.to_string()))?;
    ctx.reader.topic(name).ok_or_else(|| {
        (
            pb::Code::TopicNotFound,
            format!("topic {name:?} does not exist"),
        )
    })
}

/// The group and topic every per-message consumer RPC names.
pub fn check_group_and_topic(
    ctx: &ServiceContext,
    group: &Option<pb::Resource>,
    topic: &Option<pb::Resource>,
) -> Result<(String, TopicConfig), Refusal> {
    Ok((check_group(group)?, check_topic(ctx, topic)?))
}

/// A receipt handle this group handed out. One naming another group reached the wrong
/// group (a client or relay routed it by topic alone); saying so beats "stale".
fn check_handle(ctx: &ServiceContext, receipt_handle: &str) -> Result<Handle, Refusal> {
    match decode_handle(receipt_handle) {
        Some((h, group)) if group == ctx.group => Ok(h),
        Some((_, group)) => Err((
            pb::Code::InvalidReceiptHandle,
            format!(
                "receipt_handle {receipt_handle:?} was issued by broker group {group:?}; this is group {:?}",
                ctx.group
            ),
        )),
        None => Err((
            pb::Code::InvalidReceiptHandle,
            format!("receipt_handle {receipt_handle:?} is not one of ours"),
        )),
    }
}

pub fn filter_from_pb(f: &Option<pb::FilterExpression>) -> Result<Filter, Refusal> {
    let Some(f) = f else { return Ok(Filter::All) };
    match pb::FilterType::try_from(f.r#type) {
        Ok(pb::FilterType::Sql) => Filter::sql(&f.expression).map_err(|e| {
            (
                pb::Code::IllegalFilterExpression,
                format!("filter_expression.expression {:?} {e}", f.expression),
            )
        }),
        Ok(pb::FilterType::Tag) | Ok(pb::FilterType::Unspecified) => {
            if f.expression.len() > rocketraft_raft_store::filter::EXPRESSION_LEN_MAX {
                return Err((
                    pb::Code::IllegalFilterExpression,
                    format!(
                        "filter_expression.expression is {} bytes; the limit is {}",
                        f.expression.len(),
                        rocketraft_raft_store::filter::EXPRESSION_LEN_MAX
                    ),
                ));
            }
            Ok(Filter::tags(&f.expression))
        }
        Err(_) => Err((
            pb::Code::IllegalFilterExpression,
            format!("filter_expression.type {} is unknown", f.r#type),
        )),
    }
}

/// The queues a request names: one, or (id -1, as push consumers send) all of them, starting
/// at a rotating position so that no queue is always served first.
pub fn queue_ids(ctx: &ServiceContext, topic: &TopicConfig, id: i32) -> Result<Vec<u32>, Refusal> {
    if id < 0 {
        let n = topic.queue_count;
        let first = ctx.next_queue.fetch_add(1, Ordering::Relaxed) % n;
        return Ok((0..n).map(|i| (first + i) % n).collect());
    }
    Ok(vec![queue_id(topic, id)?])
}

/// A queue id the topic has.
pub fn queue_id(topic: &TopicConfig, id: i32) -> Result<u32, Refusal> {
    if id < 0 || id as u32 >= topic.queue_count {
        return Err((
            pb::Code::BadRequest,
            format!(
                "message_queue.id {id} is out of range: topic {:?} has {} queues",
                topic.name, topic.queue_count
            ),
        ));
    }
    Ok(id as u32)
}

/// How long to hold a receive: what the request asks (or the default), inside the gRPC
/// deadline the client set, less a margin for the answer to reach it in time.
fn long_polling(requested: Option<Duration>, grpc_deadline: Option<Duration>) -> Duration {
    let mut d = requested
        .unwrap_or(LONG_POLLING_DEFAULT)
        .min(LONG_POLLING_MAX);
    if let Some(deadline) = grpc_deadline {
        let margin = if deadline > Duration::from_secs(2) {
            Duration::from_secs(1)
        } else {
            deadline / 2
        };
        d = d.min(deadline - margin);
    }
    d
}

fn validate(
    ctx: &ServiceContext,
    req: &pb::ReceiveMessageRequest,
    grpc_deadline: Option<Duration>,
) -> Result<Receive, Refusal> {
    let group = check_group(&req.group)?;
    let mq = req.message_queue.as_ref().ok_or_else(|| {
        (
            pb::Code::BadRequest,
            "message_queue is required".to_string(),
        )
    })?;
    let topic = check_topic(ctx, &mq.topic)?;
    if !topic.permission.readable() {
        return Err((
            pb::Code::Forbidden,
            format!("topic {:?} is not readable", topic.name),
        ));
    }
    // Like RocketMQ's proxy, a receive pops across all of the topic's queues on this broker
    // group whatever queue the client named: the official clients pick queues blindly
    // (Python even at random), and a long poll on one empty queue while others hold
    // messages would stall them. The id is still checked, to refuse nonsense.
    if mq.id >= 0 {
        queue_id(&topic, mq.id)?;
    }
    let queue_ids = queue_ids(ctx, &topic, -1)?;
    let filter = filter_from_pb(&req.filter_expression)?;
    if req.batch_size < 1 || req.batch_size > BATCH_SIZE_MAX {
        return Err((
            pb::Code::BadRequest,
            format!(
                "batch_size is {}; it must be between 1 and {BATCH_SIZE_MAX}",
                req.batch_size
            ),
        ));
    }
    let invisible_ms = match &req.invisible_duration {
        Some(d) => duration_ms(d),
        None if req.auto_renew => DEFAULT_INVISIBLE_MS,
        None => {
            return Err((
                pb::Code::IllegalInvisibleTime,
                "invisible_duration is required unless auto_renew is set".into(),
            ));
        }
    };
    if !(INVISIBLE_MS_MIN..=INVISIBLE_MS_MAX).contains(&invisible_ms) {
        return Err((
            pb::Code::IllegalInvisibleTime,
            format!(
                "invisible_duration is {invisible_ms} ms; it must be between {INVISIBLE_MS_MIN} and {INVISIBLE_MS_MAX} ms"
            ),
        ));
    }
    let requested = req
        .long_polling_timeout
        .as_ref()
        .map(|d| Duration::from_millis(duration_ms(d).max(0) as u64));
    Ok(Receive {
        group,
        namespace: mq
            .topic
            .as_ref()
            .map(|t| t.resource_namespace.clone())
            .unwrap_or_default(),
        topic,
        queue_ids,
        filter,
        max: req.batch_size as u32,
        invisible_ms,
        long_polling: long_polling(requested, grpc_deadline),
    })
}

fn status_frame(status: pb::Status) -> pb::ReceiveMessageResponse {
    pb::ReceiveMessageResponse {
        content: Some(Content::Status(status)),
    }
}

/// The frames the clients expect: the status first, then the messages, then (as RocketMQ's
/// proxy always ends) the delivery timestamp. The stream always ends after them.
fn frames(status: pb::Status, messages: Vec<pb::Message>) -> Vec<pb::ReceiveMessageResponse> {
    let mut out = Vec::with_capacity(messages.len() + 2);
    out.push(status_frame(status));
    out.extend(messages.into_iter().map(|m| pb::ReceiveMessageResponse {
        content: Some(Content::Message(m)),
    }));
    out.push(pb::ReceiveMessageResponse {
        content: Some(Content::DeliveryTimestamp(timestamp(now_ms()))),
    });
    out
}

/// Serves one ReceiveMessage on this node (the leader, or a node that knows no other).
/// Returns at once; the long poll runs in the stream's task.
pub fn receive(
    ctx: Arc<ServiceContext>,
    client: ClientInfo,
    grpc_deadline: Option<Duration>,
    req: pb::ReceiveMessageRequest,
) -> BoxStream<pb::ReceiveMessageResponse> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let out = match validate(&ctx, &req, grpc_deadline) {
            Err((code, message)) => frames(client.status(code, message), vec![]),
            Ok(r) => poll(&ctx, &client, r).await,
        };
        for frame in out {
            if tx.send(Ok(frame)).await.is_err() {
                break;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// Relays a receive served by the leader. If the leader goes away before it answered, the
/// client gets an ordinary empty answer and simply receives again (through the new
/// leader); anything the lost pop handed out becomes visible again after its invisible time.
pub fn relay(
    mut upstream: tonic::Streaming<pb::ReceiveMessageResponse>,
    client: ClientInfo,
) -> BoxStream<pb::ReceiveMessageResponse> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut relayed = 0usize;
        loop {
            match upstream.message().await {
                Ok(Some(frame)) => {
                    relayed += 1;
                    if tx.send(Ok(frame)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) if relayed == 0 => {
                    tracing::debug!("leader went away during a relayed receive: {e}");
                    for frame in frames(
                        client.status(pb::Code::MessageNotFound, "leader changed; receive again"),
                        vec![],
                    ) {
                        if tx.send(Ok(frame)).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

async fn poll(
    ctx: &ServiceContext,
    client: &ClientInfo,
    r: Receive,
) -> Vec<pb::ReceiveMessageResponse> {
    let deadline = Instant::now() + r.long_polling;
    let mut applied = ctx.reader.subscribe_applied();
    let topic = r.topic.name.as_str();
    loop {
        applied.borrow_and_update();
        let now = now_ms();
        let readiness =
            match ctx
                .reader
                .pop_readiness(&r.group, &client.client_id, topic, &r.queue_ids, now)
            {
                Ok(x) => x,
                Err(e) => {
                    return frames(
                        client.status(pb::Code::InternalServerError, e.to_string()),
                        vec![],
                    );
                }
            };
        if readiness.ready {
            let cmd = Command::Pop {
                group: r.group.clone(),
                consumer: client.client_id.clone(),
                topic: topic.to_string(),
                queue_ids: r.queue_ids.clone(),
                max: r.max,
                invisible_ms: r.invisible_ms as u64,
                now_ms: now,
                filter: r.filter.clone(),
            };
            match propose(ctx, cmd).await {
                Ok(Outcome::Done(CommandResult::Popped(popped))) if !popped.is_empty() => {
                    let messages = popped
                        .into_iter()
                        .map(|p| {
                            to_pb(
                                p.message,
                                &r.namespace,
                                &ctx.advertised_addr,
                                Some(&Delivery {
                                    group: &ctx.group,
                                    handle: p.handle,
                                    attempt: p.attempt,
                                    invisible_ms: r.invisible_ms,
                                }),
                            )
                        })
                        .collect();
                    return frames(ok(), messages);
                }
                // Everything eligible was filtered out or dead-lettered: keep waiting.
                Ok(Outcome::Done(CommandResult::Popped(_))) => {}
                Ok(Outcome::Done(CommandResult::Rejected(e))) => {
                    let code = match e {
                        Rejection::UnknownTopic(_) => pb::Code::TopicNotFound,
                        _ => pb::Code::BadRequest,
                    };
                    return frames(client.status(code, e.to_string()), vec![]);
                }
                Ok(Outcome::Done(other)) => {
                    return frames(
                        client.status(
                            pb::Code::InternalServerError,
                            format!("unexpected pop result {other:?}"),
                        ),
                        vec![],
                    );
                }
                // Leadership moved during the poll: an empty answer makes the client poll
                // again, and its next receive is forwarded to the new leader.
                Ok(Outcome::Forward(_)) => break,
                Err(status) => {
                    return frames(
                        client.status(pb::Code::InternalServerError, status.message()),
                        vec![],
                    );
                }
            }
            continue;
        }
        let wake = readiness
            .next_visible_at_ms
            .map(|t| Instant::now() + Duration::from_millis((t - now_ms()).max(0) as u64))
            .unwrap_or(deadline)
            .min(deadline);
        if Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            changed = applied.changed() => if changed.is_err() { break },
        }
    }
    frames(
        client.status(pb::Code::MessageNotFound, "no new message"),
        vec![],
    )
}

fn ack_response(
    status: pb::Status,
    entries: Vec<pb::AckMessageResultEntry>,
) -> pb::AckMessageResponse {
    pb::AckMessageResponse {
        status: Some(status),
        entries,
    }
}

/// The top-level code of a multi-entry answer: the entries' code if they agree.
pub fn overall(client: &ClientInfo, codes: &[pb::Code]) -> pb::Status {
    match codes.first() {
        Some(first) if codes.iter().all(|c| c == first) => {
            if *first == pb::Code::Ok {
                ok()
            } else {
                client.status(*first, "every entry failed; see the entries")
            }
        }
        _ => client.status(pb::Code::MultipleResults, "entries differ; see the entries"),
    }
}

pub async fn ack(
    ctx: &ServiceContext,
    client: &ClientInfo,
    req: &pb::AckMessageRequest,
) -> Result<Outcome<pb::AckMessageResponse>, tonic::Status> {
    let refuse = |(code, msg): Refusal| {
        Ok(Outcome::Done(ack_response(
            client.status(code, msg),
            vec![],
        )))
    };
    let (group, topic) = match check_group_and_topic(ctx, &req.group, &req.topic) {
        Ok(x) => x,
        Err(r) => return refuse(r),
    };
    if req.entries.is_empty() || req.entries.len() > ACK_ENTRIES_MAX {
        return refuse((
            pb::Code::BadRequest,
            format!(
                "entries has {} entries; it must have 1 to {ACK_ENTRIES_MAX}",
                req.entries.len()
            ),
        ));
    }
    let decoded: Vec<_> = req
        .entries
        .iter()
        .map(|e| check_handle(ctx, &e.receipt_handle))
        .collect();
    let handles: Vec<_> = decoded.iter().flatten().copied().collect();
    let acked = if handles.is_empty() {
        vec![]
    } else {
        let cmd = Command::Ack {
            group,
            consumer: client.client_id.clone(),
            topic: topic.name.clone(),
            handles,
        };
        match propose(ctx, cmd).await? {
            Outcome::Forward(addr) => return Ok(Outcome::Forward(addr)),
            Outcome::Done(CommandResult::Acked(v)) => v,
            Outcome::Done(other) => {
                return refuse((
                    pb::Code::InternalServerError,
                    format!("unexpected ack result {other:?}"),
                ));
            }
        }
    };
    let mut acked = acked.into_iter();
    let mut codes = Vec::with_capacity(req.entries.len());
    let entries = req
        .entries
        .iter()
        .zip(&decoded)
        .map(|(e, h)| {
            let done = h.is_ok() && acked.next().unwrap_or(false);
            let status = match h {
                _ if done => ok(),
                // Not ours, or of another group: say which.
                Err((code, why)) => client.status(*code, why.clone()),
                Ok(_) => client.status(
                    pb::Code::InvalidReceiptHandle,
                    format!(
                        "receipt_handle {:?} of message {:?} is stale or unknown",
                        e.receipt_handle, e.message_id
                    ),
                ),
            };
            codes.push(if done {
                pb::Code::Ok
            } else {
                pb::Code::InvalidReceiptHandle
            });
            pb::AckMessageResultEntry {
                message_id: e.message_id.clone(),
                receipt_handle: e.receipt_handle.clone(),
                status: Some(status),
            }
        })
        .collect();
    Ok(Outcome::Done(ack_response(
        overall(client, &codes),
        entries,
    )))
}

pub async fn change_invisible_duration(
    ctx: &ServiceContext,
    client: &ClientInfo,
    req: &pb::ChangeInvisibleDurationRequest,
) -> Result<Outcome<pb::ChangeInvisibleDurationResponse>, tonic::Status> {
    // On failure the request's own handle goes back: the Python client adopts whatever
    // handle the answer carries before it looks at the status.
    let refuse = |(code, msg): Refusal| {
        Ok(Outcome::Done(pb::ChangeInvisibleDurationResponse {
            status: Some(client.status(code, msg)),
            receipt_handle: req.receipt_handle.clone(),
        }))
    };
    let (group, topic) = match check_group_and_topic(ctx, &req.group, &req.topic) {
        Ok(x) => x,
        Err(r) => return refuse(r),
    };
    let invisible_ms = req.invisible_duration.as_ref().map(duration_ms);
    let Some(invisible_ms) = invisible_ms.filter(|ms| (0..=INVISIBLE_MS_MAX).contains(ms)) else {
        return refuse((
            pb::Code::IllegalInvisibleTime,
            format!(
                "invisible_duration is {invisible_ms:?} ms; it must be between 0 and {INVISIBLE_MS_MAX} ms"
            ),
        ));
    };
    let handle = match check_handle(ctx, &req.receipt_handle) {
        Ok(h) => h,
        Err(r) => return refuse(r),
    };
    let cmd = Command::ChangeInvisible {
        group,
        consumer: client.client_id.clone(),
        topic: topic.name,
        handle,
        visible_at_ms: now_ms() + invisible_ms,
    };
    match propose(ctx, cmd).await? {
        Outcome::Forward(addr) => Ok(Outcome::Forward(addr)),
        Outcome::Done(CommandResult::InvisibilityChanged(h)) => {
            Ok(Outcome::Done(pb::ChangeInvisibleDurationResponse {
                status: Some(ok()),
                receipt_handle: encode_handle(&ctx.group, &h),
            }))
        }
        Outcome::Done(CommandResult::Rejected(e)) => {
            refuse((pb::Code::InvalidReceiptHandle, e.to_string()))
        }
        Outcome::Done(other) => refuse((
            pb::Code::InternalServerError,
            format!("unexpected result {other:?}"),
        )),
    }
}

pub async fn forward_to_dead_letter_queue(
    ctx: &ServiceContext,
    client: &ClientInfo,
    req: &pb::ForwardMessageToDeadLetterQueueRequest,
) -> Result<Outcome<pb::ForwardMessageToDeadLetterQueueResponse>, tonic::Status> {
    let refuse = |(code, msg): Refusal| {
        Ok(Outcome::Done(pb::ForwardMessageToDeadLetterQueueResponse {
            status: Some(client.status(code, msg)),
        }))
    };
    let (group, topic) = match check_group_and_topic(ctx, &req.group, &req.topic) {
        Ok(x) => x,
        Err(r) => return refuse(r),
    };
    let handle = match check_handle(ctx, &req.receipt_handle) {
        Ok(h) => h,
        Err(r) => return refuse(r),
    };
    let cmd = Command::DeadLetter {
        group,
        consumer: client.client_id.clone(),
        topic: topic.name,
        handle,
        now_ms: now_ms(),
    };
    match propose(ctx, cmd).await? {
        Outcome::Forward(addr) => Ok(Outcome::Forward(addr)),
        Outcome::Done(CommandResult::DeadLettered) => {
            Ok(Outcome::Done(pb::ForwardMessageToDeadLetterQueueResponse {
                status: Some(ok()),
            }))
        }
        Outcome::Done(CommandResult::Rejected(e)) => {
            refuse((pb::Code::InvalidReceiptHandle, e.to_string()))
        }
        Outcome::Done(other) => refuse((
            pb::Code::InternalServerError,
            format!("unexpected result {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_polling_stays_inside_the_client_deadline() {
        let s = Duration::from_secs;
        // Rust 5.0.0: 40 s asked, 40 s deadline.
        assert_eq!(long_polling(Some(s(40)), Some(s(40))), LONG_POLLING_MAX);
        // Python push: 20 s asked, 23 s deadline.
        assert_eq!(long_polling(Some(s(20)), Some(s(23))), s(20));
        // Python simple consumer with await 5 s: deadline 8 s.
        assert_eq!(long_polling(Some(s(5)), Some(s(8))), s(5));
        assert_eq!(long_polling(None, Some(s(3))), s(2));
        assert_eq!(long_polling(None, None), LONG_POLLING_DEFAULT);
        assert!(
            long_polling(Some(s(10)), Some(Duration::from_millis(500)))
                <= Duration::from_millis(250)
        );
    }
}
