//! Transactions: EndTransaction, and asking producers about transactions nobody ended.
//!
//! A TRANSACTION send stores a half message (replicated, invisible); EndTransaction COMMIT
//! appends it to its queue, ROLLBACK drops it. A half message left unresolved is checked back:
//! every node sends `RecoverOrphanedTransactionCommand` to the producers of its topic that
//! hold a telemetry stream to that node, at `first` after the send and every `interval`
//! after that (the producer answers with EndTransaction, source SERVER_CHECK). The leader
//! counts the checks in the replicated state; after `max` of them the half message is rolled
//! back, as RocketMQ does. Several nodes may ask the same producer: EndTransaction of an
//! already ended transaction is refused harmlessly.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rocketraft_proto::rocketmq::v2 as pb;
use rocketraft_proto::rocketmq::v2::telemetry_command::Command as TelemetryCommandKind;
use rocketraft_raft_store::{Command, CommandResult, HalfMessage, Rejection, StoredMessage};

use super::message::to_pb;
use super::receive::check_topic;
use super::status::{ClientInfo, ok};
use super::{Outcome, ServiceContext, propose};
use crate::admin::now_ms;

/// Half messages one round of checks looks at; the rest wait for the next round.
const CHECK_BATCH_MAX: usize = 10_000;
/// How often a node looks for half messages due for a check.
const CHECK_TICK: Duration = Duration::from_millis(250);
const TRANSACTION_ID_LEN_MAX: usize = 256;

/// A transaction id unique across the group: the message id alone could repeat when a
/// producer resends, so the node, the time and a counter are added.
pub fn new_transaction_id(ctx: &ServiceContext, message_id: &str) -> String {
    let seq = ctx.next_transaction.fetch_add(1, Ordering::Relaxed);
    format!("{message_id}-{}-{:x}-{seq:x}", ctx.node_id, now_ms())
}

fn response(status: pb::Status) -> Outcome<pb::EndTransactionResponse> {
    Outcome::Done(pb::EndTransactionResponse {
        status: Some(status),
    })
}

pub async fn end_transaction(
    ctx: &ServiceContext,
    client: &ClientInfo,
    req: &pb::EndTransactionRequest,
) -> Result<Outcome<pb::EndTransactionResponse>, tonic::Status> {
    let refuse = |code, msg: String| Ok(response(client.status(code, msg)));
    if let Err((code, msg)) = check_topic(ctx, &req.topic) {
        // The topic may be new to this follower; the leader decides.
        if code == pb::Code::TopicNotFound
            && let Some(leader) = ctx.leader_elsewhere_once_known().await
        {
            return Ok(Outcome::Forward(leader));
        }
        return refuse(code, msg);
    }
    if req.transaction_id.trim().is_empty() || req.transaction_id.len() > TRANSACTION_ID_LEN_MAX {
        return refuse(
            pb::Code::InvalidTransactionId,
            format!("transaction_id must be 1 to {TRANSACTION_ID_LEN_MAX} characters, not blank"),
        );
    }
    let commit = match pb::TransactionResolution::try_from(req.resolution) {
        Ok(pb::TransactionResolution::Commit) => true,
        Ok(pb::TransactionResolution::Rollback) => false,
        _ => {
            return refuse(
                pb::Code::BadRequest,
                format!(
                    "resolution is {}; it must be COMMIT or ROLLBACK",
                    req.resolution
                ),
            );
        }
    };
    let cmd = Command::EndTransaction {
        transaction_id: req.transaction_id.clone(),
        commit,
        store_timestamp_ms: now_ms(),
    };
    match propose(ctx, cmd).await? {
        Outcome::Forward(addr) => Ok(Outcome::Forward(addr)),
        Outcome::Done(CommandResult::TransactionEnded { .. }) => Ok(response(ok())),
        Outcome::Done(CommandResult::Rejected(r @ Rejection::UnknownTransaction(_))) => {
            refuse(pb::Code::InvalidTransactionId, r.to_string())
        }
        Outcome::Done(CommandResult::Rejected(r)) => refuse(pb::Code::BadRequest, r.to_string()),
        Outcome::Done(other) => refuse(
            pb::Code::InternalServerError,
            format!("unexpected result {other:?}"),
        ),
    }
}

/// Which check a half message is due for at `now_ms`: 0 before the first.
fn checks_due(half: &HalfMessage, now_ms: i64, ctx: &ServiceContext) -> u32 {
    let first = ctx.transaction_checks.first.as_millis() as i64;
    let interval = ctx.transaction_checks.interval.as_millis().max(1) as i64;
    let age = now_ms - half.store_timestamp_ms;
    if age < first {
        0
    } else {
        1 + ((age - first) / interval) as u32
    }
}

fn check_command(ctx: &ServiceContext, half: &HalfMessage) -> pb::TelemetryCommand {
    let stored = StoredMessage {
        topic: half.topic.clone(),
        queue_id: half.queue_id,
        offset: 0,
        store_timestamp_ms: half.store_timestamp_ms,
        message: half.message.clone(),
    };
    pb::TelemetryCommand {
        status: Some(ok()),
        command: Some(TelemetryCommandKind::RecoverOrphanedTransactionCommand(
            pb::RecoverOrphanedTransactionCommand {
                message: Some(to_pb(stored, "", &ctx.advertised_addr, None)),
                transaction_id: half.transaction_id.clone(),
            },
        )),
    }
}

/// Runs on every node until `stop` fires: sends due checks to this node's producers; on the
/// leader, also records them (and rolls back the hopeless ones).
pub async fn run_checks(ctx: Arc<ServiceContext>, mut stop: tokio::sync::watch::Receiver<bool>) {
    // The check number this node last sent per transaction, so each is sent once per node.
    let mut sent: HashMap<String, u32> = HashMap::new();
    let mut tick = tokio::time::interval(CHECK_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let halves = match ctx.reader.half_messages(CHECK_BATCH_MAX) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("reading half messages for transaction checks: {e}");
                continue;
            }
        };
        let now = now_ms();
        let mut newly_due = Vec::new();
        for half in &halves {
            let due = checks_due(half, now, &ctx);
            if due == 0 || sent.get(&half.transaction_id).is_some_and(|s| *s >= due) {
                continue;
            }
            sent.insert(half.transaction_id.clone(), due);
            let producers = ctx.producers_of(&half.topic);
            tracing::info!(
                transaction_id = %half.transaction_id,
                topic = %half.topic,
                check = due,
                producers = producers.len(),
                "asking connected producers about an unresolved transaction"
            );
            if !producers.is_empty() {
                let check = check_command(&ctx, half);
                for tx in producers {
                    // A full queue means the producer is not reading; the next check retries.
                    let _ = tx.try_send(Ok(check.clone()));
                }
            }
            if due > half.checks {
                newly_due.push(half.transaction_id.clone());
            }
        }
        let live: std::collections::HashSet<&str> =
            halves.iter().map(|h| h.transaction_id.as_str()).collect();
        sent.retain(|id, _| live.contains(id.as_str()));
        if !newly_due.is_empty() && ctx.is_leader() {
            let cmd = Command::TransactionsChecked {
                transaction_ids: newly_due,
                max_checks: ctx.transaction_checks.max,
            };
            match propose(&ctx, cmd).await {
                Ok(Outcome::Done(CommandResult::TransactionsChecked { rolled_back }))
                    if rolled_back > 0 =>
                {
                    tracing::info!(rolled_back, "rolled back transactions nobody resolved");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("recording transaction checks: {e}"),
            }
        }
    }
}
