//! NATS JetStream through `async-nats`: an R3 file stream per cell, publishes acknowledged
//! by the stream (quorum commit; fsynced first when the servers run with
//! `sync_interval: always`), and a durable pull consumer with explicit acks.

use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};

use super::{CALL_TIMEOUT, retry_until_ready};

/// Messages a pull request asks for at once.
const PULL_BATCH: usize = 1000;
/// How long one JetStream API request (stream create or delete) may take. Short, so that a
/// request sent before the cluster elected its meta leader is retried soon rather than
/// waited on for the whole CALL_TIMEOUT.
const API_TIMEOUT: Duration = Duration::from_secs(5);

fn subject(stream: &str) -> String {
    format!("bench.{stream}")
}

async fn connect(urls: &[String]) -> anyhow::Result<async_nats::Client> {
    anyhow::ensure!(
        !urls.is_empty(),
        "NATS needs at least one nats://host:port endpoint"
    );
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(CALL_TIMEOUT))
        .connect(urls.to_vec())
        .await
        .with_context(|| format!("connecting to NATS at {}", urls.join(",")))
}

fn admin(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(API_TIMEOUT)
        .build(client)
}

pub async fn create(urls: &[String], name: &str) -> anyhow::Result<()> {
    let js = admin(connect(urls).await?);
    let config = stream::Config {
        name: name.into(),
        subjects: vec![subject(name)],
        num_replicas: 3,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    // A fresh cluster answers "JetStream not ready" until its meta leader is elected.
    retry_until_ready(&format!("creating stream {name}"), || async {
        js.create_stream(config.clone()).await?;
        Ok::<(), anyhow::Error>(())
    })
    .await
}

pub async fn delete(urls: &[String], name: &str) -> anyhow::Result<()> {
    let js = admin(connect(urls).await?);
    js.delete_stream(name).await?;
    Ok(())
}

#[derive(Clone)]
pub struct Pub {
    client: async_nats::Client,
    js: jetstream::Context,
    subject: String,
}

impl Pub {
    pub async fn new(urls: &[String], stream: &str, window: usize) -> anyhow::Result<Self> {
        let client = connect(urls).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(CALL_TIMEOUT)
            // The benchmark bounds what is in flight itself; the context must not refuse
            // a publish below that bound.
            .max_ack_inflight(window.max(1) + 16)
            .backpressure_on_inflight(true)
            .build(client.clone());
        Ok(Self {
            client,
            js,
            subject: subject(stream),
        })
    }

    pub async fn publish(&self, bodies: Vec<Bytes>) -> anyhow::Result<()> {
        if bodies.len() != 1 {
            bail!("NATS JetStream has no batch publish; run it with --batch 1");
        }
        for body in bodies {
            self.js.publish(self.subject.clone(), body).await?.await?;
        }
        Ok(())
    }

    pub async fn close(&self) {
        let _ = self.client.flush().await;
    }
}

pub struct Sub {
    messages: pull::Stream,
}

impl Sub {
    pub async fn new(
        urls: &[String],
        stream: &str,
        group: &str,
        batch: u32,
    ) -> anyhow::Result<Self> {
        let js = jetstream::new(connect(urls).await?);
        let s = js.get_stream(stream).await?;
        let consumer: jetstream::consumer::PullConsumer = s
            .get_or_create_consumer(
                group,
                pull::Config {
                    durable_name: Some(group.into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    // Acks are sent as messages arrive; this only bounds redelivery state.
                    max_ack_pending: 100_000,
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("creating durable consumer {group} on stream {stream}"))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch((batch as usize).max(PULL_BATCH))
            .messages()
            .await?;
        Ok(Self { messages })
    }

    /// Waits up to `wait` for one message, takes whatever else has already arrived (up to
    /// a pull batch), and acks each (JetStream explicit acks are per message).
    pub async fn receive(&mut self, out: &mut Vec<Bytes>, wait: Duration) -> anyhow::Result<()> {
        let first = match tokio::time::timeout(wait, self.messages.next()).await {
            Err(_) => return Ok(()),
            Ok(None) => bail!("the NATS pull subscription ended"),
            Ok(Some(m)) => m?,
        };
        let mut got = vec![first];
        while got.len() < PULL_BATCH {
            match self.messages.next().now_or_never() {
                Some(Some(m)) => got.push(m?),
                _ => break,
            }
        }
        for m in got {
            m.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
            out.push(m.payload.clone());
        }
        Ok(())
    }

    pub async fn close(self) {}
}
