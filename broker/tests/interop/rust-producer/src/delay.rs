//! `delay AP TOPIC GROUP`: 5 DELAY messages due at one whole epoch second about 3 s ahead
//! (the client's API takes epoch seconds and sends no sub-second part), received through
//! GROUP. None may arrive before its delivery time; the summary reports how late they were.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use rocketmq::model::message::MessageBuilder;
use serde_json::{json, Value};

use crate::clients::{
    body_text, describe, epoch_ms, shutdown_producer, start_producer, Budget, Consumer,
    SHORT_LONG_POLLING,
};

const COUNT: usize = 5;
const DELAY_S: i64 = 3;
/// Receive times are taken on the same machine's clock as the broker's, after the response
/// stream ended; this covers the clock's granularity, not a real early delivery.
const EARLY_SLACK_MS: i64 = 50;
const INVISIBLE: Duration = Duration::from_secs(30);
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn run(access_point: &str, topic: &str, group: &str) -> Result<Value> {
    // Started first so that the first receive goes out right after the sends and is already
    // waiting when the messages fall due.
    let mut consumer =
        Consumer::start(access_point, group, topic, "*", SHORT_LONG_POLLING, true).await?;
    let producer = start_producer(access_point, topic).await?;
    let deliver_at_s = epoch_ms()? / 1000 + DELAY_S;
    let deliver_at_ms = deliver_at_s * 1000;
    let mut ids = Vec::with_capacity(COUNT);
    for i in 0..COUNT {
        let message = MessageBuilder::delay_message_builder(
            topic,
            format!("delay {i}").into_bytes(),
            deliver_at_s,
        )
        .build()?;
        let receipt = producer
            .send(message)
            .await
            .with_context(|| format!("sending delay message {i}"))?;
        ids.push(receipt.message_id().to_string());
    }
    let sent_ms = epoch_ms()?;
    if sent_ms >= deliver_at_ms - EARLY_SLACK_MS {
        bail!("sending took until {sent_ms} ms, past the delivery time {deliver_at_ms} ms: an early delivery could not be told apart");
    }
    shutdown_producer(producer).await?;

    let mut arrived = [false; COUNT];
    let mut lateness_ms = Vec::with_capacity(COUNT);
    let mut budget = Budget::new("receiving the delay messages", RECEIVE_TIMEOUT, 40);
    while lateness_ms.len() < COUNT {
        budget
            .next_round()
            .with_context(|| format!("{} of {COUNT} arrived", lateness_ms.len()))?;
        let messages = consumer.receive(16, INVISIBLE).await?;
        let now_ms = epoch_ms()?;
        for m in messages {
            let i = body_text(&m)?
                .strip_prefix("delay ")
                .and_then(|i| i.parse::<usize>().ok())
                .filter(|i| *i < COUNT)
                .with_context(|| format!("a message this scenario never sent: {}", describe(&m)))?;
            let late_ms = now_ms - deliver_at_ms;
            if late_ms < -EARLY_SLACK_MS {
                bail!(
                    "delay message {i} arrived {} ms before its delivery time: {}",
                    -late_ms,
                    describe(&m)
                );
            }
            if arrived[i] {
                bail!("delay message {i} delivered twice: {}", describe(&m));
            }
            if m.message_id() != ids[i] || m.delivery_attempt() != 1 {
                bail!(
                    "delay message {i} was sent as id {}, first delivery expected: {}",
                    ids[i],
                    describe(&m)
                );
            }
            // The client exposes the delivery time in seconds; when the broker echoes it, it
            // must be the one sent.
            if let Some(at) = m.delivery_timestamp() {
                if at != deliver_at_s {
                    bail!("delay message {i} carries delivery time {at} s, sent {deliver_at_s} s");
                }
            }
            arrived[i] = true;
            lateness_ms.push(late_ms);
            consumer.ack(&m).await?;
        }
    }
    let calls = consumer.receive_calls;
    consumer.shutdown().await?;

    Ok(json!({
        "scenario": "delay",
        "count": COUNT,
        "deliver_at_s": deliver_at_s,
        "delay_after_send_ms": deliver_at_ms - sent_ms,
        "min_lateness_ms": lateness_ms.iter().min(),
        "max_lateness_ms": lateness_ms.iter().max(),
        "receive_calls": calls,
    }))
}
