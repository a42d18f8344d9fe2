//! `fifo AP TOPIC GROUP`: 4 message groups x 10 FIFO messages (message group "gk", body
//! "k-j"), sent interleaved (g0-0, g1-0, g2-0, g3-0, g0-1, ...), received through GROUP,
//! which the caller created as an orderly group.
//!
//! The Rust 5.0.0 client has no FIFO-aware consumer: it receives and acks like any simple
//! consumer, so per-group order comes from the broker alone. Two checks:
//! - while the first message is received and not yet acked, a further receive must not hand
//!   out a later message of the same message group (that is what "orderly" means);
//! - receiving and acking one message at a time, every group arrives as 0..9, each message
//!   once and on its first delivery.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use rocketmq::model::message::{MessageBuilder, MessageView};
use serde_json::{json, Value};

use crate::clients::{
    body_text, describe, shutdown_producer, start_producer, Budget, Consumer, SHORT_LONG_POLLING,
};

const GROUPS: usize = 4;
const PER_GROUP: usize = 10;
/// Longer than the held-message check lasts (one long poll), so the held message is still in
/// flight when the second receive asks.
const INVISIBLE: Duration = Duration::from_secs(30);
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Per message group, the indexes received so far, in order.
struct Order {
    ids: Vec<Vec<String>>,
    received: Vec<Vec<usize>>,
}

impl Order {
    fn total(&self) -> usize {
        self.received.iter().map(Vec::len).sum()
    }

    /// Checks `m` is the next message of its group; returns (group, index).
    fn record(&mut self, m: &MessageView) -> Result<(usize, usize)> {
        let body = body_text(m)?;
        let (k, j) = body
            .split_once('-')
            .and_then(|(k, j)| Some((k.parse::<usize>().ok()?, j.parse::<usize>().ok()?)))
            .filter(|(k, j)| *k < GROUPS && *j < PER_GROUP)
            .with_context(|| format!("a message this scenario never sent: {}", describe(m)))?;
        if m.message_group() != Some(format!("g{k}").as_str()) || m.message_id() != self.ids[k][j] {
            bail!(
                "message {k}-{j} was sent as id {} in group g{k}, received {}",
                self.ids[k][j],
                describe(m)
            );
        }
        let next = self.received[k].len();
        if j != next {
            bail!(
                "message group g{k} out of order: received {k}-{j} after {:?}",
                self.received[k]
            );
        }
        if m.delivery_attempt() != 1 {
            bail!(
                "{k}-{j} was acked in time, yet its delivery attempt is {}",
                m.delivery_attempt()
            );
        }
        self.received[k].push(j);
        Ok((k, j))
    }
}

pub async fn run(access_point: &str, topic: &str, group: &str) -> Result<Value> {
    let producer = start_producer(access_point, topic).await?;
    let mut ids: Vec<Vec<String>> = vec![Vec::new(); GROUPS];
    for j in 0..PER_GROUP {
        for (k, group_ids) in ids.iter_mut().enumerate() {
            let message = MessageBuilder::fifo_message_builder(
                topic,
                format!("{k}-{j}").into_bytes(),
                format!("g{k}"),
            )
            .build()?;
            let receipt = producer
                .send(message)
                .await
                .with_context(|| format!("sending {k}-{j}"))?;
            group_ids.push(receipt.message_id().to_string());
        }
    }
    shutdown_producer(producer).await?;

    let mut consumer =
        Consumer::start(access_point, group, topic, "*", SHORT_LONG_POLLING, true).await?;
    let mut order = Order {
        ids,
        received: vec![Vec::new(); GROUPS],
    };
    let total = GROUPS * PER_GROUP;

    // Hold the first message unacked and ask again.
    let mut budget = Budget::new("receiving the first FIFO message", RECEIVE_TIMEOUT, 20);
    let held = loop {
        budget.next_round()?;
        if let Some(m) = consumer.receive(1, INVISIBLE).await?.pop() {
            break m;
        }
    };
    let (held_group, _) = order.record(&held)?;
    let while_held = consumer.receive(16, INVISIBLE).await?;
    if let Some(m) = while_held
        .iter()
        .find(|m| m.message_group() == held.message_group())
    {
        bail!(
            "orderly group {group} handed out {} while {} of the same message group was unacked",
            describe(m),
            describe(&held)
        );
    }
    consumer.ack(&held).await?;
    for m in &while_held {
        order.record(m)?;
        consumer.ack(m).await?;
    }
    let received_while_held = while_held.len();

    let mut budget = Budget::new(
        "receiving every FIFO message",
        RECEIVE_TIMEOUT,
        3 * total as u32,
    );
    while order.total() < total {
        budget
            .next_round()
            .with_context(|| format!("received so far: {:?}", order.received))?;
        for m in consumer.receive(1, INVISIBLE).await? {
            order.record(&m)?;
            consumer.ack(&m).await?;
        }
    }
    let calls = consumer.receive_calls;
    consumer.shutdown().await?;

    Ok(json!({
        "scenario": "fifo",
        "message_groups": GROUPS,
        "per_group": PER_GROUP,
        "received": order.total(),
        "held_message_group": format!("g{held_group}"),
        "received_while_held": received_while_held,
        "receive_calls": calls,
    }))
}
