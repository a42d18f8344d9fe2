//! Sends messages with the official `rocketmq` 5.0.0 crate and prints one line per receipt:
//! `<index> <message id>`. Arguments: access point, topic, count.

use std::collections::HashMap;

use rocketmq::conf::{ClientOption, ProducerOption};
use rocketmq::model::message::MessageBuilder;
use rocketmq::Producer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (access_point, topic, count) = match args.as_slice() {
        [_, a, t, c] => (a.clone(), t.clone(), c.parse::<usize>()?),
        _ => return Err("usage: rust-producer ACCESS_POINT TOPIC COUNT".into()),
    };
    let mut client_option = ClientOption::default();
    client_option.set_access_url(access_point);
    let mut producer_option = ProducerOption::default();
    producer_option.set_topics(vec![topic.clone()]);
    let mut producer = Producer::new(producer_option, client_option)?;
    producer.start().await?;
    for i in 0..count {
        let body = format!("rust message {i}").into_bytes();
        let builder = if i % 3 == 0 {
            MessageBuilder::fifo_message_builder(topic.clone(), body, format!("group-{}", i % 4))
        } else {
            MessageBuilder::builder().set_topic(topic.clone()).set_body(body)
        };
        let message = builder
            .set_tag(if i % 2 == 0 { "TagA" } else { "TagB" })
            .set_keys(vec![format!("key-{i}")])
            .set_properties(HashMap::from([("index".to_string(), i.to_string())]))
            .build()?;
        let receipt = producer.send(message).await?;
        println!("{i} {}", receipt.message_id());
    }
    producer.shutdown().await?;
    Ok(())
}
