//! rocketraft through our client library, as an application would use it: routes from the
//! nameserver, sends and receives over the official `apache.rocketmq.v2` API.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use rocketraft_client::admin::{Admin, TopicSpec};
use rocketraft_client::{
    ClientConfig, Filter, Message, Producer, PullConsumer, QueueRef, SimpleConsumer,
};

use super::{CALL_TIMEOUT, retry_until_ready};

/// Queues per benchmark topic: RocketMQ's default (`defaultTopicQueueNums`).
const QUEUES: u32 = 8;
/// How long a received message stays invisible to the group: far longer than any cell.
const INVISIBLE: Duration = Duration::from_secs(300);

fn config(nameservers: &[String]) -> ClientConfig {
    let mut c = ClientConfig::new(nameservers.iter().cloned());
    // A deep window at a slow rate queues sends for seconds; the benchmark times calls out
    // itself (CALL_TIMEOUT) and counts those as errors.
    c.request_timeout = CALL_TIMEOUT;
    c
}

async fn admin(nameservers: &[String]) -> anyhow::Result<Admin> {
    let ns = nameservers
        .first()
        .context("rocketraft needs a nameserver endpoint")?;
    Admin::connect(ns).await
}

pub async fn create(nameservers: &[String], topic: &str) -> anyhow::Result<()> {
    let spec = TopicSpec {
        name: topic.into(),
        queues: QUEUES,
        ..Default::default()
    };
    retry_until_ready(&format!("creating topic {topic}"), || async {
        admin(nameservers)
            .await?
            .create_topic(&spec)
            .await
            .map(|_| ())
    })
    .await
}

pub async fn delete(nameservers: &[String], topic: &str) -> anyhow::Result<()> {
    admin(nameservers).await?.delete_topic(topic, &[]).await?;
    Ok(())
}

#[derive(Clone)]
pub struct Pub {
    producer: Producer,
    topic: String,
}

impl Pub {
    pub async fn new(nameservers: &[String], topic: &str, window: usize) -> anyhow::Result<Self> {
        let producer = Producer::builder(config(nameservers))
            .topics([topic.to_string()])
            .max_in_flight(window)
            // No retries: a retried send would be measured twice; failures are counted.
            .retries(1, Duration::from_millis(1), Duration::from_millis(1))
            .build()
            .await
            .with_context(|| format!("starting a producer for topic {topic}"))?;
        Ok(Self {
            producer,
            topic: topic.into(),
        })
    }

    pub async fn publish(&self, bodies: Vec<Bytes>) -> anyhow::Result<()> {
        if bodies.len() == 1 {
            // An async send, as an application with a window would send: concurrent ones
            // share requests (the client coalesces them per topic).
            let body = bodies.into_iter().next().context("one body")?;
            self.producer
                .send_async(Message::new(self.topic.clone(), body))
                .await?
                .await?;
        } else {
            let messages = bodies
                .into_iter()
                .map(|b| Message::new(self.topic.clone(), b))
                .collect();
            self.producer.send_batch(messages).await?;
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.producer.close().await;
    }
}

/// Messages one pull asks for: the broker's limit per PullMessage.
const PULL_BATCH: u32 = 1024;
/// How often a pull consumer commits its positions: periodically, as RocketMQ's lite pull
/// consumer does (every 5 s by default) and Kafka's, not after every pull.
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// A consumer of the group: pop-style (`SimpleConsumer`: receive, then ack what came), or,
/// for draining a backlog, a pull consumer reading its share of the queues by offset and
/// committing its positions periodically and when it closes (RocketMQ's lite pull consumer,
/// Kafka's model).
pub enum Sub {
    Pop {
        consumer: SimpleConsumer,
        batch: u32,
    },
    Pull {
        consumer: PullConsumer,
        queues: Vec<QueueRef>,
        next: usize,
        /// Pulls in a row that found nothing.
        empty_in_row: usize,
        committed_at: Instant,
    },
}

impl Sub {
    /// The `index`-th of `count` pull consumers of `group`: it takes every `count`-th queue,
    /// starting from the group's committed offsets (the beginning for a new group).
    pub async fn new_pull(
        nameservers: &[String],
        topic: &str,
        group: &str,
        index: usize,
        count: usize,
    ) -> anyhow::Result<Self> {
        let mut consumer = PullConsumer::new(config(nameservers), group).await?;
        let queues: Vec<QueueRef> = consumer
            .queues(topic)
            .await?
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % count.max(1) == index)
            .map(|(_, q)| q)
            .collect();
        for q in &queues {
            if consumer.seek_to_committed(q).await?.is_none() {
                consumer.seek_to_beginning(q).await?;
            }
        }
        Ok(Sub::Pull {
            consumer,
            queues,
            next: 0,
            empty_in_row: 0,
            committed_at: Instant::now(),
        })
    }

    pub async fn new(
        nameservers: &[String],
        topic: &str,
        group: &str,
        batch: u32,
    ) -> anyhow::Result<Self> {
        let consumer = SimpleConsumer::builder(config(nameservers), group)
            .subscribe(topic, Filter::all())
            .await_duration(Duration::from_millis(500))
            .build()
            .await
            .with_context(|| format!("starting consumer group {group} on topic {topic}"))?;
        Ok(Sub::Pop {
            consumer,
            batch: batch.max(1),
        })
    }

    /// Pop: one receive (long-polling up to the consumer's await duration when empty) and
    /// one ack request for everything it returned, as a high-throughput consumer would.
    /// Pull: one pull of the next queue in turn; the positions are committed every
    /// [`COMMIT_EVERY`].
    pub async fn receive(&mut self, out: &mut Vec<Bytes>, wait: Duration) -> anyhow::Result<()> {
        match self {
            Sub::Pop { consumer, batch } => {
                let got = consumer.receive(*batch, INVISIBLE).await?;
                if got.is_empty() {
                    return Ok(());
                }
                consumer.ack_all(&got).await?;
                out.extend(got.into_iter().map(|m| m.body));
            }
            Sub::Pull {
                consumer,
                queues,
                next,
                empty_in_row,
                committed_at,
            } => {
                if queues.is_empty() {
                    tokio::time::sleep(wait).await;
                    return Ok(());
                }
                let q = queues[*next % queues.len()].clone();
                *next += 1;
                // Long-poll only once a whole round of queues came back empty: while any
                // has messages, an empty one must not hold up the others.
                let per_queue = if *empty_in_row >= queues.len() {
                    (wait / queues.len() as u32).max(Duration::from_millis(10))
                } else {
                    Duration::ZERO
                };
                let got = consumer.pull(&q, PULL_BATCH, per_queue).await?;
                if got.is_empty() {
                    *empty_in_row += 1;
                    return Ok(());
                }
                *empty_in_row = 0;
                if committed_at.elapsed() >= COMMIT_EVERY {
                    commit_positions(consumer, queues).await?;
                    *committed_at = Instant::now();
                }
                out.extend(got.into_iter().map(|m| m.body));
            }
        }
        Ok(())
    }

    /// A pull consumer commits where it got to, so a later consumer of the group resumes
    /// there; a failure is only logged (the cell has already been measured).
    pub async fn close(self) {
        if let Sub::Pull {
            consumer, queues, ..
        } = self
            && let Err(e) = commit_positions(&consumer, &queues).await
        {
            tracing::warn!("committing the pull consumer's positions: {e:#}");
        }
    }
}

async fn commit_positions(consumer: &PullConsumer, queues: &[QueueRef]) -> anyhow::Result<()> {
    for q in queues {
        if let Some(position) = consumer.position(q) {
            consumer.commit(q, position).await?;
        }
    }
    Ok(())
}
