//! `transaction AP TOPIC GROUP`: a transaction producer sends three half messages:
//! "commit-me" (committed), "rollback-me" (rolled back) and "orphan-me" (left unresolved: its
//! `Transaction` is dropped, and the crate's transaction type has no Drop that would end it,
//! model/transaction.rs). The producer's checker answers COMMIT for bodies starting with
//! "orphan" and ROLLBACK otherwise, so orphan-me becomes visible only through the broker's
//! check (RecoverOrphanedTransactionCommand on the telemetry stream).
//!
//! The producer stays up while a consumer in GROUP receives until commit-me and orphan-me
//! arrived, then 5 s more: rollback-me must never arrive. The broker must ask the checker
//! about orphan-me (before it arrives) and about nothing the client had already resolved.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rocketmq::model::message::{MessageBuilder, MessageView};
use rocketmq::model::transaction::{Transaction, TransactionResolution};
use rocketmq::Producer;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::clients::{
    body_text, describe, epoch_ms, shutdown_producer, start_transaction_producer, Budget, Consumer,
    SHORT_LONG_POLLING,
};

const INVISIBLE: Duration = Duration::from_secs(30);
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long rollback-me gets to (wrongly) show up after the other two arrived.
const QUIET: Duration = Duration::from_secs(5);

/// One call of the checker, as the broker asked it.
struct Check {
    message_id: String,
    body: String,
    at_ms: i64,
}

pub async fn run(access_point: &str, topic: &str, group: &str) -> Result<Value> {
    let checks: Arc<Mutex<Vec<Check>>> = Arc::default();
    let recorder = Arc::clone(&checks);
    // The crate calls this synchronously on its background task, with the half message the
    // broker attached to the check.
    let checker = Box::new(move |_transaction_id: String, view: MessageView| {
        let body = String::from_utf8_lossy(view.body()).into_owned();
        let resolution = if body.starts_with("orphan") {
            TransactionResolution::COMMIT
        } else {
            TransactionResolution::ROLLBACK
        };
        if let Ok(mut checks) = recorder.lock() {
            checks.push(Check {
                message_id: view.message_id().to_string(),
                body,
                at_ms: epoch_ms().unwrap_or_default(),
            });
        }
        resolution
    });
    let producer = start_transaction_producer(access_point, topic, checker).await?;
    let mut consumer =
        Consumer::start(access_point, group, topic, "*", SHORT_LONG_POLLING, true).await?;

    let commit = send_half(&producer, topic, "commit-me").await?;
    let commit_id = commit.message_id().to_string();
    commit.commit().await.context("committing commit-me")?;
    let rollback = send_half(&producer, topic, "rollback-me").await?;
    let rollback_id = rollback.message_id().to_string();
    rollback
        .rollback()
        .await
        .context("rolling back rollback-me")?;
    let orphan = send_half(&producer, topic, "orphan-me").await?;
    let orphan_id = orphan.message_id().to_string();
    let orphan_sent_ms = epoch_ms()?;
    drop(orphan);

    let mut commit_seen = false;
    let mut orphan_arrived_ms = None;
    let mut budget = Budget::new("receiving commit-me and orphan-me", RECEIVE_TIMEOUT, 40);
    while !commit_seen || orphan_arrived_ms.is_none() {
        budget.next_round().with_context(|| {
            format!(
                "commit-me arrived: {commit_seen}, orphan-me arrived: {}, checks so far: {}",
                orphan_arrived_ms.is_some(),
                checked_bodies(&checks)
            )
        })?;
        for m in consumer.receive(16, INVISIBLE).await? {
            let body = body_text(&m)?;
            match body {
                "commit-me" if !commit_seen && m.message_id() == commit_id => commit_seen = true,
                "orphan-me" if orphan_arrived_ms.is_none() && m.message_id() == orphan_id => {
                    let asked = lock(&checks)?.iter().any(|c| c.message_id == orphan_id);
                    if !asked {
                        bail!("orphan-me arrived though the checker was never asked about it: something other than the check resolved it");
                    }
                    orphan_arrived_ms = Some(epoch_ms()?);
                }
                "rollback-me" => bail!("the rolled-back message was delivered: {}", describe(&m)),
                _ => bail!("unexpected or repeated delivery: {}", describe(&m)),
            }
            if m.delivery_attempt() != 1 {
                bail!("first delivery expected: {}", describe(&m));
            }
            consumer.ack(&m).await?;
        }
    }

    let quiet_until = Instant::now() + QUIET;
    let mut budget = Budget::new(
        "watching for rollback-me",
        QUIET + SHORT_LONG_POLLING * 2,
        20,
    );
    while Instant::now() < quiet_until {
        budget.next_round()?;
        if let Some(m) = consumer.receive(16, INVISIBLE).await?.first() {
            if m.message_id() == rollback_id {
                bail!("the rolled-back message was delivered: {}", describe(m));
            }
            bail!("nothing more was expected, received {}", describe(m));
        }
    }

    let (check_count, first_check_ms) = {
        let checks = lock(&checks)?;
        if let Some(c) = checks.iter().find(|c| c.message_id != orphan_id) {
            bail!(
                "the broker asked the checker about {:?} ({}), which the client had already resolved",
                c.body,
                c.message_id
            );
        }
        (checks.len(), checks.iter().map(|c| c.at_ms).min())
    };
    let calls = consumer.receive_calls;
    consumer.shutdown().await?;
    shutdown_producer(producer).await?;

    Ok(json!({
        "scenario": "transaction",
        "committed_received": commit_seen,
        "orphan_checks": check_count,
        "orphan_first_check_after_ms": first_check_ms.map(|t| t - orphan_sent_ms),
        "orphan_received_after_ms": orphan_arrived_ms.map(|t| t - orphan_sent_ms),
        "receive_calls": calls,
    }))
}

async fn send_half(producer: &Producer, topic: &str, body: &str) -> Result<impl Transaction> {
    let message =
        MessageBuilder::transaction_message_builder(topic, body.as_bytes().to_vec()).build()?;
    let transaction = producer
        .send_transaction_message(message)
        .await
        .with_context(|| format!("sending half message {body}"))?;
    // EndTransaction carries it back; the Java proxy rejects a blank one.
    if transaction.transaction_id().is_empty() {
        bail!("the send receipt of {body} has no transaction id");
    }
    Ok(transaction)
}

fn lock(checks: &Mutex<Vec<Check>>) -> Result<std::sync::MutexGuard<'_, Vec<Check>>> {
    checks
        .lock()
        .map_err(|_| anyhow::anyhow!("the checker panicked while recording a check"))
}

fn checked_bodies(checks: &Mutex<Vec<Check>>) -> String {
    match checks.lock() {
        Ok(checks) => format!("{:?}", checks.iter().map(|c| &c.body).collect::<Vec<_>>()),
        Err(_) => "unknown".into(),
    }
}
