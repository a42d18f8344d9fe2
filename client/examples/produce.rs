//! Sends messages of every kind to the playground (`./scripts/playground.sh`):
//! `cargo run -p rocketraft-client --example produce [NAMESERVER]`.

use std::time::Duration;

use rocketraft_client::{ClientConfig, Message, Producer, TransactionResolution};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nameserver = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9876".into());
    let producer = Producer::builder(ClientConfig::new([nameserver]))
        .topics(["TopicTest"])
        // Asked about transactions left open (say, by a crash between send and commit).
        .transaction_checker(|_message| TransactionResolution::Rollback)
        .build()
        .await?;

    // Acknowledged once a majority of the group has it on disk.
    let receipt = producer
        .send(
            Message::new("TopicTest", "hello")
                .with_tag("greeting")
                .with_keys(["order-1"]),
        )
        .await?;
    println!(
        "normal: {} at {}/{}",
        receipt.message_id, receipt.broker_group, receipt.offset
    );

    // Many under way at once; each future resolves to its receipt.
    let mut pending = Vec::new();
    for i in 0..100 {
        pending.push(
            producer
                .send_async(Message::new("TopicTest", format!("async {i}")))
                .await?,
        );
    }
    for p in pending {
        p.await?;
    }
    println!("async: 100 acknowledged");

    // One message group: consumed in send order by orderly consumer groups.
    for step in ["created", "paid", "shipped"] {
        producer
            .send(Message::new("TopicTest", step).with_message_group("order-1"))
            .await?;
    }

    // Delivered in 5 seconds, not before.
    producer
        .send(Message::new("TopicTest", "later").deliver_after(Duration::from_secs(5)))
        .await?;

    // Invisible to consumers until committed.
    let txn = producer
        .send_transactional(Message::new("TopicTest", "debit"))
        .await?;
    txn.commit().await?;
    println!("fifo, delay and transaction messages sent");

    producer.close().await;
    Ok(())
}
