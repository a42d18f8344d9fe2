//! `simple AP TOPIC GROUP N`: sends N NORMAL messages (body "simple i", tag TagA for even i
//! and TagB for odd, key "key-i", property index=i), then
//! - a SimpleConsumer in GROUP with tag "*" receives every one exactly once, first delivery,
//!   with the content sent, acks each, and afterwards finds nothing left;
//! - a SimpleConsumer in GROUP-tags with tag "TagA" receives exactly the TagA messages.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rocketmq::model::message::{MessageBuilder, MessageView};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::clients::{
    body_text, describe, shutdown_producer, start_producer, Budget, Consumer, DEFAULT_LONG_POLLING,
    SHORT_LONG_POLLING,
};

const BATCH: i32 = 16;
/// Long enough that nothing is redelivered while the scenario runs, so a second delivery of
/// any message is a broker error.
const INVISIBLE: Duration = Duration::from_secs(30);
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);

fn tag_of(i: usize) -> &'static str {
    if i.is_multiple_of(2) {
        "TagA"
    } else {
        "TagB"
    }
}

pub async fn run(access_point: &str, topic: &str, group: &str, n: usize) -> Result<Value> {
    if n == 0 {
        bail!("N must be at least 1");
    }
    let producer = start_producer(access_point, topic).await?;
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let message = MessageBuilder::builder()
            .set_topic(topic)
            .set_body(format!("simple {i}").into_bytes())
            .set_tag(tag_of(i))
            .set_keys(vec![format!("key-{i}")])
            .set_properties(HashMap::from([("index".to_string(), i.to_string())]))
            .build()?;
        let receipt = producer
            .send(message)
            .await
            .with_context(|| format!("sending message {i}"))?;
        ids.push(receipt.message_id().to_string());
    }
    shutdown_producer(producer).await?;

    // The client's default long polling here, as an application would have it: the broker
    // must end an empty long poll before the client's 40 s deadline.
    let mut consumer =
        Consumer::start(access_point, group, topic, "*", DEFAULT_LONG_POLLING, true).await?;
    let all = receive_exactly(&mut consumer, topic, &ids, (0..n).collect()).await?;
    let empty_started = Instant::now();
    consumer
        .expect_nothing(INVISIBLE)
        .await
        .context("after acking every message")?;
    let empty_receive_ms = empty_started.elapsed().as_millis() as u64;
    let calls = consumer.receive_calls;
    consumer.shutdown().await?;

    let tag_group = format!("{group}-tags");
    let mut tagged = Consumer::start(
        access_point,
        &tag_group,
        topic,
        "TagA",
        SHORT_LONG_POLLING,
        true,
    )
    .await?;
    let tag_a: Vec<usize> = (0..n).filter(|i| tag_of(*i) == "TagA").collect();
    let tagged_count = receive_exactly(&mut tagged, topic, &ids, tag_a).await?;
    tagged
        .expect_nothing(INVISIBLE)
        .await
        .context("after acking every TagA message")?;
    let tagged_calls = tagged.receive_calls;
    tagged.shutdown().await?;

    Ok(json!({
        "scenario": "simple",
        "produced": n,
        "received": all,
        "receive_calls": calls,
        "empty_receive_ms": empty_receive_ms,
        "tag_filtered_received": tagged_count,
        "tag_filtered_receive_calls": tagged_calls,
    }))
}

/// Receives and acks until exactly the messages with indexes `wanted` have arrived, each once.
async fn receive_exactly(
    consumer: &mut Consumer,
    topic: &str,
    ids: &[String],
    wanted: Vec<usize>,
) -> Result<usize> {
    let mut pending: Vec<bool> = vec![false; ids.len()];
    for i in &wanted {
        pending[*i] = true;
    }
    let mut left = wanted.len();
    let mut budget = Budget::new(
        "receiving the sent messages",
        RECEIVE_TIMEOUT,
        4 * ids.len() as u32 + 16,
    );
    while left > 0 {
        budget
            .next_round()
            .with_context(|| format!("{left} of {} still missing", wanted.len()))?;
        for m in consumer.receive(BATCH, INVISIBLE).await? {
            let i = check(&m, topic, ids)?;
            if !pending[i] {
                if wanted.contains(&i) {
                    bail!("message {i} delivered twice: {}", describe(&m));
                }
                bail!("message {i} does not pass the filter: {}", describe(&m));
            }
            pending[i] = false;
            left -= 1;
            consumer.ack(&m).await?;
        }
    }
    Ok(wanted.len())
}

/// Checks a received message against what was sent; returns its index.
fn check(m: &MessageView, topic: &str, ids: &[String]) -> Result<usize> {
    let i: usize = m
        .properties()
        .get("index")
        .with_context(|| format!("no index property: {}", describe(m)))?
        .parse()
        .with_context(|| format!("bad index property: {}", describe(m)))?;
    if i >= ids.len() {
        bail!("index {i} was never sent: {}", describe(m));
    }
    let ok = m.topic() == topic
        && body_text(m)? == format!("simple {i}")
        && m.tag() == Some(tag_of(i))
        && m.keys() == [format!("key-{i}")]
        && m.message_id() == ids[i]
        && m.message_group().is_none();
    if !ok {
        bail!(
            "message {i} differs from what was sent (topic {}, keys {:?}, sent id {}): {}",
            m.topic(),
            m.keys(),
            ids[i],
            describe(m)
        );
    }
    // 0 would mean the broker left the field out (message.rs maps a missing value to 0).
    if m.delivery_attempt() != 1 {
        bail!(
            "message {i} is a first delivery, yet attempt is {}",
            m.delivery_attempt()
        );
    }
    Ok(i)
}
