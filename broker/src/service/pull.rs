//! The pull path: PullMessage, UpdateOffset, GetOffset and QueryOffset, for consumers that
//! track their own offsets.
//!
//! Pulls only read, so every node serves them from its own applied state (a follower may
//! trail the leader by the replication delay, like a RocketMQ slave read: a pull that comes
//! back empty is retried, nothing is lost). Offset queries are different: a consumer that
//! committed an offset, or a producer that saw its send acknowledged, must read it back, so
//! GetOffset and QueryOffset pass a read barrier on the leader. Committed offsets are
//! proposed through Raft like any other change.

use std::sync::Arc;
use std::time::Duration;

use rocketraft_proto::rocketmq::v2 as pb;
use rocketraft_proto::rocketmq::v2::pull_message_response::Content;
use rocketraft_raft_store::{Command, CommandResult, TopicConfig};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::message::{millis, to_pb};
use super::receive::{check_group, check_topic, filter_from_pb, queue_id};
use super::status::{ClientInfo, ok};
use super::{BoxStream, Outcome, Refusal, ServiceContext, propose, read_barrier};

const BATCH_SIZE_MAX: i32 = 1024;
/// Messages one pull examines for its filter at most.
const SCAN_MAX: u64 = 4096;
const LONG_POLLING_MAX: Duration = Duration::from_secs(30);
/// Messages read from the store per lookup.
const READ_CHUNK: usize = 256;

/// The topic and queue a request names; the queue must exist (no "-1" here).
fn check_queue(
    ctx: &ServiceContext,
    mq: &Option<pb::MessageQueue>,
) -> Result<(TopicConfig, u32), Refusal> {
    let mq = mq.as_ref().ok_or_else(|| {
        (
            pb::Code::BadRequest,
            "message_queue is required".to_string(),
        )
    })?;
    let topic = check_topic(ctx, &mq.topic)?;
    let id = queue_id(&topic, mq.id)?;
    Ok((topic, id))
}

fn frame(c: Content) -> pb::PullMessageResponse {
    pb::PullMessageResponse { content: Some(c) }
}

pub fn pull(
    ctx: Arc<ServiceContext>,
    client: ClientInfo,
    grpc_deadline: Option<Duration>,
    req: pb::PullMessageRequest,
) -> BoxStream<pb::PullMessageResponse> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let out = match pull_frames(&ctx, &client, grpc_deadline, &req).await {
            Ok(frames) => frames,
            Err((code, msg)) => vec![frame(Content::Status(client.status(code, msg)))],
        };
        for f in out {
            if tx.send(Ok(f)).await.is_err() {
                break;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

async fn pull_frames(
    ctx: &ServiceContext,
    client: &ClientInfo,
    grpc_deadline: Option<Duration>,
    req: &pb::PullMessageRequest,
) -> Result<Vec<pb::PullMessageResponse>, Refusal> {
    check_group(&req.group)?;
    let (topic, queue_id) = check_queue(ctx, &req.message_queue)?;
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
    let namespace = req
        .message_queue
        .as_ref()
        .and_then(|m| m.topic.as_ref())
        .map(|t| t.resource_namespace.clone())
        .unwrap_or_default();
    let mut wait = req
        .long_polling_timeout
        .as_ref()
        .map(|d| Duration::from_millis(super::message::duration_ms(d).max(0) as u64))
        .unwrap_or_default()
        .min(LONG_POLLING_MAX);
    if let Some(d) = grpc_deadline {
        wait = wait.min(d.saturating_sub(Duration::from_millis(500)));
    }
    let deadline = Instant::now() + wait;
    let mut applied = ctx.reader.subscribe_applied();
    let matcher = filter.matcher();
    loop {
        applied.borrow_and_update();
        let q = ctx.reader.queue_state(&topic.name, queue_id);
        let offset = req.offset.max(0) as u64;
        if req.offset < 0 || offset < q.offset_min || offset > q.offset_next {
            // The offset fell out of the retained range: say where the consumer can resume.
            let resume = if offset < q.offset_min {
                q.offset_min
            } else {
                q.offset_next
            };
            return Ok(vec![
                frame(Content::Status(client.status(
                    pb::Code::IllegalOffset,
                    format!(
                        "offset {} is outside the queue's range {}..{}",
                        req.offset, q.offset_min, q.offset_next
                    ),
                ))),
                frame(Content::NextOffset(resume as i64)),
            ]);
        }
        let scan_end = q.offset_next.min(offset + SCAN_MAX);
        let mut messages = Vec::new();
        let mut next = offset;
        let mut at = offset;
        while at < scan_end && messages.len() < req.batch_size as usize {
            // What the batch still lacks (more chunks follow when a filter drops some), at
            // most READ_CHUNK: a big batch is read in a few large lookups, not many small.
            let want = (req.batch_size as usize - messages.len()).min(READ_CHUNK);
            let chunk = ctx
                .reader
                .read_messages(
                    &topic.name,
                    queue_id,
                    at,
                    want.min((scan_end - at) as usize),
                )
                .map_err(|e| (pb::Code::InternalServerError, e.to_string()))?;
            if chunk.is_empty() {
                break;
            }
            for m in chunk {
                at = m.offset + 1;
                if messages.len() >= req.batch_size as usize {
                    break;
                }
                next = at;
                if matcher.matches(&m.message) {
                    messages.push(to_pb(m, &namespace, &ctx.advertised_addr, None));
                }
            }
        }
        if !messages.is_empty() || Instant::now() >= deadline {
            let status = if messages.is_empty() {
                client.status(pb::Code::MessageNotFound, "no new message")
            } else {
                ok()
            };
            let mut out = vec![frame(Content::Status(status))];
            out.extend(messages.into_iter().map(|m| frame(Content::Message(m))));
            out.push(frame(Content::NextOffset(next as i64)));
            return Ok(out);
        }
        if next > offset {
            // Everything scanned was filtered out: answer so the consumer moves on.
            return Ok(vec![
                frame(Content::Status(
                    client.status(pb::Code::MessageNotFound, "no matching message"),
                )),
                frame(Content::NextOffset(next as i64)),
            ]);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            changed = applied.changed() => if changed.is_err() { return Err((pb::Code::InternalServerError, "node is stopping".into())) },
        }
    }
}

pub async fn update_offset(
    ctx: &ServiceContext,
    client: &ClientInfo,
    req: &pb::UpdateOffsetRequest,
) -> Result<Outcome<pb::UpdateOffsetResponse>, tonic::Status> {
    let refuse = |(code, msg): Refusal| {
        Ok(Outcome::Done(pb::UpdateOffsetResponse {
            status: Some(client.status(code, msg)),
        }))
    };
    let group = match check_group(&req.group) {
        Ok(g) => g,
        Err(r) => return refuse(r),
    };
    let (topic, queue_id) = match check_queue(ctx, &req.message_queue) {
        Ok(x) => x,
        Err(r) => return refuse(r),
    };
    if req.offset < 0 {
        return refuse((
            pb::Code::IllegalOffset,
            format!("offset is {}; it must not be negative", req.offset),
        ));
    }
    let cmd = Command::CommitOffset {
        group,
        topic: topic.name,
        queue_id,
        offset: req.offset as u64,
    };
    match propose(ctx, cmd).await? {
        Outcome::Forward(addr) => Ok(Outcome::Forward(addr)),
        Outcome::Done(CommandResult::OffsetCommitted) => {
            Ok(Outcome::Done(pb::UpdateOffsetResponse {
                status: Some(ok()),
            }))
        }
        Outcome::Done(other) => refuse((pb::Code::BadRequest, format!("{other:?}"))),
    }
}

pub async fn get_offset(
    ctx: &ServiceContext,
    client: &ClientInfo,
    req: &pb::GetOffsetRequest,
) -> Result<Outcome<pb::GetOffsetResponse>, tonic::Status> {
    let group = check_group(&req.group);
    if group.is_ok()
        && let Outcome::Forward(addr) = read_barrier(ctx).await?
    {
        return Ok(Outcome::Forward(addr));
    }
    let answer = (|| -> Result<i64, Refusal> {
        let group = group?;
        let (topic, queue_id) = check_queue(ctx, &req.message_queue)?;
        ctx.reader
            .consume_offset(&group, &topic.name, queue_id)
            .map_err(|e| (pb::Code::InternalServerError, e.to_string()))?
            .map(|o| o as i64)
            .ok_or_else(|| {
                (
                    pb::Code::OffsetNotFound,
                    format!(
                        "group {group:?} has no committed or acknowledged offset for {}/{queue_id}",
                        topic.name
                    ),
                )
            })
    })();
    Ok(Outcome::Done(match answer {
        Ok(offset) => pb::GetOffsetResponse {
            status: Some(ok()),
            offset,
        },
        Err((code, msg)) => pb::GetOffsetResponse {
            status: Some(client.status(code, msg)),
            offset: 0,
        },
    }))
}

/// Linearizable like GetOffset: a producer that saw its send acknowledged must find the
/// queue's end past it, on whichever node it asks.
pub async fn query_offset(
    ctx: &ServiceContext,
    client: &ClientInfo,
    req: &pb::QueryOffsetRequest,
) -> Result<Outcome<pb::QueryOffsetResponse>, tonic::Status> {
    if let Outcome::Forward(addr) = read_barrier(ctx).await? {
        return Ok(Outcome::Forward(addr));
    }
    let answer = (|| -> Result<i64, Refusal> {
        let (topic, queue_id) = check_queue(ctx, &req.message_queue)?;
        let q = ctx.reader.queue_state(&topic.name, queue_id);
        let offset = match pb::QueryOffsetPolicy::try_from(req.query_offset_policy) {
            Ok(pb::QueryOffsetPolicy::Beginning) => q.offset_min,
            Ok(pb::QueryOffsetPolicy::End) => q.offset_next,
            Ok(pb::QueryOffsetPolicy::Timestamp) => {
                let ts = req.timestamp.as_ref().ok_or_else(|| {
                    (
                        pb::Code::BadRequest,
                        "timestamp is required with query_offset_policy TIMESTAMP".to_string(),
                    )
                })?;
                ctx.reader
                    .offset_for_timestamp(&topic.name, queue_id, millis(ts))
                    .map_err(|e| (pb::Code::InternalServerError, e.to_string()))?
            }
            Err(_) => {
                return Err((
                    pb::Code::BadRequest,
                    format!("query_offset_policy {} is unknown", req.query_offset_policy),
                ));
            }
        };
        Ok(offset as i64)
    })();
    Ok(Outcome::Done(match answer {
        Ok(offset) => pb::QueryOffsetResponse {
            status: Some(ok()),
            offset,
        },
        Err((code, msg)) => pb::QueryOffsetResponse {
            status: Some(client.status(code, msg)),
            offset: 0,
        },
    }))
}
