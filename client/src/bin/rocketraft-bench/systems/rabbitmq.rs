//! RabbitMQ through `lapin`: a durable quorum queue per cell (Raft over the 3 nodes, fsync
//! before the confirm), persistent messages on a confirm channel, and consumers with a
//! prefetch window that ack cumulatively (`multiple`), once per batch of deliveries.
//!
//! Every client connects to the first node, where the queue is declared and so where its
//! leader starts.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::retry_until_ready;

/// Deliveries a consumer may hold unacknowledged.
const PREFETCH: u16 = 2000;
/// AMQP delivery mode 2: persistent (quorum queues store every message anyway).
const PERSISTENT: u8 = 2;

async fn channel(uris: &[String]) -> anyhow::Result<(Connection, Channel)> {
    let uri = uris.first().context("RabbitMQ needs an amqp:// endpoint")?;
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to RabbitMQ at {uri}"))?;
    let ch = conn.create_channel().await?;
    Ok((conn, ch))
}

async fn close(conn: &Connection) {
    let _ = conn.close(200, "bench done".into()).await;
}

pub async fn create(uris: &[String], queue: &str) -> anyhow::Result<()> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    retry_until_ready(&format!("declaring quorum queue {queue}"), || async {
        let (conn, ch) = channel(uris).await?;
        let declared = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args.clone(),
            )
            .await;
        close(&conn).await;
        declared?;
        Ok::<(), anyhow::Error>(())
    })
    .await
}

pub async fn delete(uris: &[String], queue: &str) -> anyhow::Result<()> {
    let (conn, ch) = channel(uris).await?;
    let deleted = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    close(&conn).await;
    deleted?;
    Ok(())
}

#[derive(Clone)]
pub struct Pub {
    conn: std::sync::Arc<Connection>,
    channel: Channel,
    queue: String,
}

impl Pub {
    pub async fn new(uris: &[String], queue: &str) -> anyhow::Result<Self> {
        let (conn, channel) = channel(uris).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            conn: std::sync::Arc::new(conn),
            channel,
            queue: queue.into(),
        })
    }

    /// Publishes each body and waits for its confirm (the broker confirms cumulatively; the
    /// library resolves each publish's own future).
    pub async fn publish(&self, bodies: Vec<Bytes>) -> anyhow::Result<()> {
        if bodies.len() != 1 {
            bail!("RabbitMQ publishes one message at a time; run it with --batch 1");
        }
        for body in bodies {
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_delivery_mode(PERSISTENT),
                )
                .await?
                .await?;
            if !confirm.is_ack() {
                bail!("RabbitMQ refused the message (nack)");
            }
        }
        Ok(())
    }

    pub async fn close(&self) {
        close(&self.conn).await;
    }
}

pub struct Sub {
    conn: Connection,
    channel: Channel,
    consumer: lapin::Consumer,
    batch: usize,
}

impl Sub {
    pub async fn new(uris: &[String], queue: &str, batch: u32) -> anyhow::Result<Self> {
        let (conn, channel) = channel(uris).await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming from queue {queue}"))?;
        Ok(Self {
            conn,
            channel,
            consumer,
            batch: (batch as usize).clamp(1, PREFETCH as usize / 2),
        })
    }

    /// Waits up to `wait` for one delivery, takes what else has arrived (up to the batch),
    /// and acks them all with one cumulative ack of the last.
    pub async fn receive(&mut self, out: &mut Vec<Bytes>, wait: Duration) -> anyhow::Result<()> {
        let first = match tokio::time::timeout(wait, self.consumer.next()).await {
            Err(_) => return Ok(()),
            Ok(None) => bail!("the RabbitMQ consumer was cancelled"),
            Ok(Some(d)) => d?,
        };
        let mut last_tag = first.delivery_tag;
        out.push(Bytes::from(first.data));
        let mut n = 1;
        while n < self.batch {
            match self.consumer.next().now_or_never() {
                Some(Some(d)) => {
                    let d = d?;
                    last_tag = d.delivery_tag;
                    out.push(Bytes::from(d.data));
                    n += 1;
                }
                _ => break,
            }
        }
        self.channel
            .basic_ack(last_tag, BasicAckOptions { multiple: true })
            .await?;
        Ok(())
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "bench done".into()).await;
        close(&self.conn).await;
    }
}
