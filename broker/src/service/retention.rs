//! Retention: the leader deletes messages that are older than their topic's retention time
//! or beyond its size limit, by proposing [`Command::Expire`], so every node deletes the same
//! messages at the same log position.
//!
//! Deletion is by offset prefix of each queue: whatever is older than the newest expired
//! message goes with it. A consumer whose cursor or committed offset falls below a queue's
//! retained start resumes at that start (reported as `offset_min` by `group describe` and
//! the pull API's QueryOffset).

use std::sync::Arc;
use std::time::Duration;

use rocketraft_raft_store::{Command, CommandResult, StateReader, TopicConfig};

use super::{Outcome, ServiceContext, propose};
use crate::admin::now_ms;

/// Messages one Expire command deletes at most, so applying an entry stays quick.
const EXPIRE_BATCH_MAX: u64 = 10_000;

/// Where a queue's retained messages should start now (its `offset_min` when none expire).
fn retained_start(
    reader: &StateReader,
    topic: &TopicConfig,
    queue_id: u32,
    now_ms: i64,
) -> anyhow::Result<u64> {
    let q = reader.queue_state(&topic.name, queue_id);
    let cutoff = now_ms.saturating_sub(i64::try_from(topic.retention_ms).unwrap_or(i64::MAX));
    let mut start = reader.offset_for_timestamp(&topic.name, queue_id, cutoff)?;
    let limit = topic.retention_bytes / u64::from(topic.queue_count.max(1));
    if topic.retention_bytes > 0 && q.bytes > limit {
        // Walk from the oldest message until what is left fits.
        let mut excess = q.bytes - limit;
        let mut at = q.offset_min;
        let end = q.offset_next.min(q.offset_min + EXPIRE_BATCH_MAX);
        while excess > 0 && at < end {
            let chunk = reader.read_messages(&topic.name, queue_id, at, 256)?;
            if chunk.is_empty() {
                break;
            }
            for m in chunk {
                if excess == 0 {
                    break;
                }
                excess = excess.saturating_sub(m.message.body.len() as u64);
                at = m.offset + 1;
            }
        }
        start = start.max(at);
    }
    Ok(start.min(q.offset_min + EXPIRE_BATCH_MAX))
}

/// One pass over every queue of every topic; returns whether anything was deleted.
async fn sweep(ctx: &ServiceContext) -> bool {
    let mut deleted = false;
    for topic in ctx.reader.topics() {
        for queue_id in 0..topic.queue_count {
            if !ctx.is_leader() {
                return deleted;
            }
            let before = match retained_start(&ctx.reader, &topic, queue_id, now_ms()) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(topic = %topic.name, queue_id, "retention: {e:#}");
                    continue;
                }
            };
            if before <= ctx.reader.queue_state(&topic.name, queue_id).offset_min {
                continue;
            }
            let cmd = Command::Expire {
                topic: topic.name.clone(),
                queue_id,
                before_offset: before,
            };
            match propose(ctx, cmd).await {
                Ok(Outcome::Done(CommandResult::Expired { removed })) => {
                    tracing::info!(topic = %topic.name, queue_id, removed, before, "retention deleted messages");
                    deleted |= removed > 0;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(topic = %topic.name, queue_id, "retention: {e}"),
            }
        }
    }
    deleted
}

/// Sweeps every `interval` while this node leads (at once again while a sweep deletes).
pub async fn run(
    ctx: Arc<ServiceContext>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let again = ctx.is_leader() && sweep(&ctx).await;
        let wait = if again { Duration::ZERO } else { interval };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}
