//! Consumes TopicTest from the playground with a push consumer for ten seconds:
//! `cargo run -p rocketraft-client --example consume [NAMESERVER]`.

use std::time::Duration;

use rocketraft_client::{ClientConfig, ConsumeResult, Filter, PushConsumer};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nameserver = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9876".into());
    let consumer = PushConsumer::builder(ClientConfig::new([nameserver]), "ExampleReaders")
        .subscribe("TopicTest", Filter::all())
        .workers(4)
        .listener(|m| async move {
            println!(
                "{} attempt {} {}",
                m.message_id,
                m.delivery_attempt,
                String::from_utf8_lossy(&m.body)
            );
            // Failure brings the message back after the group's retry backoff.
            ConsumeResult::Success
        })
        .build()
        .await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    consumer.shutdown().await;
    Ok(())
}
