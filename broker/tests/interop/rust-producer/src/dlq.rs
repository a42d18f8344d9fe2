//! `dlq AP TOPIC GROUP`: GROUP allows 2 delivery attempts (the caller created it so). One
//! message is received twice with a 1 s invisible time and never acked:
//! - the second delivery comes no earlier than the first one's invisible time allows, as
//!   attempt 2;
//! - after the second invisible time ran out, GROUP never receives it again;
//! - a consumer in GROUP-dlq-reader receives it from "%DLQ%GROUP" with the same id and body.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use rocketmq::model::message::{MessageBuilder, MessageView};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::clients::{
    body_text, describe, shutdown_producer, start_producer, Budget, Consumer, SHORT_LONG_POLLING,
};

const BODY: &str = "dead letter";
const INVISIBLE: Duration = Duration::from_secs(1);
/// The redelivery is measured from when the first receive returned, a little after the broker
/// started the invisible time.
const EARLY_SLACK: Duration = Duration::from_millis(50);
/// How long after the second invisible time ran out GROUP is watched for a third delivery.
const QUIET: Duration = Duration::from_secs(2);
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn run(access_point: &str, topic: &str, group: &str) -> Result<Value> {
    let producer = start_producer(access_point, topic).await?;
    let message = MessageBuilder::builder()
        .set_topic(topic)
        .set_body(BODY.as_bytes().to_vec())
        .set_tag("TagA")
        .set_keys(vec!["dlq-key"])
        .build()?;
    let id = producer
        .send(message)
        .await
        .context("sending the message")?
        .message_id()
        .to_string();
    shutdown_producer(producer).await?;

    let mut consumer =
        Consumer::start(access_point, group, topic, "*", SHORT_LONG_POLLING, true).await?;

    let first = receive_one(&mut consumer, &id, "the first delivery").await?;
    let first_at = Instant::now();
    expect_attempt(&first, 1)?;

    let second = receive_one(&mut consumer, &id, "the redelivery").await?;
    let redelivered_after = first_at.elapsed();
    expect_attempt(&second, 2)?;
    if redelivered_after + EARLY_SLACK < INVISIBLE {
        bail!(
            "redelivered {redelivered_after:?} after the first delivery, within its {INVISIBLE:?} invisible time"
        );
    }

    // At least one receive must start after the second invisible time ran out, whatever
    // the wall clock says, so the broker has had its chance to (wrongly) deliver it again.
    let second_expired = Instant::now() + INVISIBLE;
    let quiet_until = second_expired + QUIET;
    let mut asked_after_expiry = false;
    let mut budget = Budget::new(
        "watching for a third delivery",
        INVISIBLE + QUIET + SHORT_LONG_POLLING * 3,
        20,
    );
    while Instant::now() < quiet_until || !asked_after_expiry {
        budget.next_round()?;
        asked_after_expiry |= Instant::now() >= second_expired;
        if let Some(m) = consumer.receive(16, INVISIBLE).await?.first() {
            bail!(
                "group {group} allows 2 delivery attempts, yet received {}",
                describe(m)
            );
        }
    }
    let moved_at = Instant::now();
    let calls = consumer.receive_calls;
    consumer.shutdown().await?;

    let dlq_topic = format!("%DLQ%{group}");
    let reader_group = format!("{group}-dlq-reader");
    // No route prefetch: the dead-letter topic may only be created when the message is moved.
    let mut reader = Consumer::start(
        access_point,
        &reader_group,
        &dlq_topic,
        "*",
        SHORT_LONG_POLLING,
        false,
    )
    .await?;
    let mut budget = Budget::new(format!("receiving from {dlq_topic}"), RECEIVE_TIMEOUT, 60);
    let mut last_error = None;
    let dead = loop {
        budget.next_round().with_context(|| match &last_error {
            Some(e) => format!("last receive error: {e:#}"),
            None => "no receive failed".to_string(),
        })?;
        match reader.receive(16, Duration::from_secs(30)).await {
            Ok(messages) => {
                if let Some(m) = messages.into_iter().next() {
                    break m;
                }
            }
            Err(e) => {
                // Until the topic exists its route lookup fails; this is a retry interval
                // between lookups, not a wait for a condition we could observe.
                last_error = Some(e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    if dead.message_id() != id || body_text(&dead)? != BODY || dead.topic() != dlq_topic {
        bail!("{dlq_topic} should hold the message sent as id {id} with body {BODY:?}, received {} on {}", describe(&dead), dead.topic());
    }
    let dlq_after = moved_at.elapsed();
    let dlq_attempt = dead.delivery_attempt();
    reader.ack(&dead).await?;
    let reader_calls = reader.receive_calls;
    reader.shutdown().await?;

    Ok(json!({
        "scenario": "dlq",
        "redelivered_after_ms": redelivered_after.as_millis() as u64,
        "dlq_received_after_quiet_ms": dlq_after.as_millis() as u64,
        "dlq_delivery_attempt": dlq_attempt,
        "receive_calls": calls,
        "dlq_receive_calls": reader_calls,
    }))
}

/// Receives until the one message arrives; anything else is an error.
async fn receive_one(consumer: &mut Consumer, id: &str, what: &str) -> Result<MessageView> {
    let mut budget = Budget::new(format!("waiting for {what}"), RECEIVE_TIMEOUT, 20);
    loop {
        budget.next_round()?;
        let mut messages = consumer.receive(16, INVISIBLE).await?;
        if messages.len() > 1 {
            bail!(
                "one message was sent, received {}",
                messages.iter().map(describe).collect::<Vec<_>>().join("; ")
            );
        }
        if let Some(m) = messages.pop() {
            if m.message_id() != id || body_text(&m)? != BODY {
                bail!(
                    "{what}: expected id {id} body {BODY:?}, received {}",
                    describe(&m)
                );
            }
            return Ok(m);
        }
    }
}

fn expect_attempt(m: &MessageView, attempt: i32) -> Result<()> {
    if m.delivery_attempt() != attempt {
        bail!("delivery attempt {attempt} expected: {}", describe(m));
    }
    Ok(())
}
