//! `produce AP TOPIC COUNT`: NORMAL and FIFO sends, one stdout line per receipt
//! (`<index> <message id>`), checked afterwards by the Rust test against what every node stores.
//! Message i: body "rust message i", tag TagA/TagB by parity, key "key-i", property index=i;
//! every third message is FIFO in message group "group-(i % 4)".

use std::collections::HashMap;

use anyhow::{Context, Result};
use rocketmq::model::message::MessageBuilder;
use serde_json::{json, Value};

use crate::clients::{shutdown_producer, start_producer};

pub async fn run(access_point: &str, topic: &str, count: usize) -> Result<Value> {
    let producer = start_producer(access_point, topic).await?;
    for i in 0..count {
        let body = format!("rust message {i}").into_bytes();
        let builder = if i % 3 == 0 {
            MessageBuilder::fifo_message_builder(topic, body, format!("group-{}", i % 4))
        } else {
            MessageBuilder::builder().set_topic(topic).set_body(body)
        };
        let message = builder
            .set_tag(if i.is_multiple_of(2) { "TagA" } else { "TagB" })
            .set_keys(vec![format!("key-{i}")])
            .set_properties(HashMap::from([("index".to_string(), i.to_string())]))
            .build()?;
        let receipt = producer
            .send(message)
            .await
            .with_context(|| format!("sending message {i}"))?;
        println!("{i} {}", receipt.message_id());
    }
    shutdown_producer(producer).await?;
    Ok(json!({ "scenario": "produce", "sent": count }))
}
