//! The systems under test behind one interface, so every workload drives them the same way:
//! a [`Cluster`] makes a fresh destination per cell (a rocketraft topic, a NATS R3 file
//! stream, a RabbitMQ quorum queue), [`Publisher`]s send to it and wait for the ack, and
//! [`Subscriber`]s receive and acknowledge. Enums rather than trait objects: three
//! variants, async methods, no boxing on the hot path.
//!
//! - `rocketraft.rs`: our client library (`Producer`, `SimpleConsumer`) through the
//!   nameserver, the official `apache.rocketmq.v2` API;
//! - `nats.rs`: `async-nats`, JetStream publish with ack, a durable pull consumer;
//! - `rabbitmq.rs`: `lapin`, publisher confirms, a consumer with cumulative acks.

mod nats;
mod rabbitmq;
mod rocketraft;

use std::time::Duration;

use bytes::Bytes;
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// How long any one send, receive or admin call may take before it counts as an error.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SystemKind {
    Rocketraft,
    Nats,
    Rabbitmq,
}

impl SystemKind {
    pub fn name(self) -> &'static str {
        match self {
            SystemKind::Rocketraft => "rocketraft",
            SystemKind::Nats => "nats",
            SystemKind::Rabbitmq => "rabbitmq",
        }
    }

    /// Whether one send can carry several messages. NATS JetStream has no batch publish;
    /// RabbitMQ's confirms are cumulative on the wire but each publish is one message.
    pub fn batches(self) -> bool {
        self == SystemKind::Rocketraft
    }
}

/// Where a system is reached.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub kind: SystemKind,
    /// rocketraft: nameserver `host:port`s; NATS: `nats://host:port`s; RabbitMQ: one
    /// `amqp://` URI per node (publishers and consumers use the first).
    pub endpoints: Vec<String>,
}

/// One cell's destination.
#[derive(Debug, Clone)]
pub struct Dest {
    pub name: String,
}

impl Cluster {
    /// Creates the destination `name` (replicated on all 3 nodes), waiting up to
    /// `CALL_TIMEOUT` for the cluster to accept it (a fresh cluster elects leaders first).
    pub async fn create(&self, name: &str) -> anyhow::Result<Dest> {
        match self.kind {
            SystemKind::Rocketraft => rocketraft::create(&self.endpoints, name).await?,
            SystemKind::Nats => nats::create(&self.endpoints, name).await?,
            SystemKind::Rabbitmq => rabbitmq::create(&self.endpoints, name).await?,
        }
        Ok(Dest { name: name.into() })
    }

    /// Deletes the destination and what it holds, so cells do not pile data up.
    pub async fn delete(&self, dest: &Dest) -> anyhow::Result<()> {
        match self.kind {
            SystemKind::Rocketraft => rocketraft::delete(&self.endpoints, &dest.name).await,
            SystemKind::Nats => nats::delete(&self.endpoints, &dest.name).await,
            SystemKind::Rabbitmq => rabbitmq::delete(&self.endpoints, &dest.name).await,
        }
    }

    /// A producer with its own connection; `window` is how many sends it will have under
    /// way at once (the libraries size their own limits from it).
    pub async fn publisher(&self, dest: &Dest, window: usize) -> anyhow::Result<Publisher> {
        Ok(match self.kind {
            SystemKind::Rocketraft => Publisher::Rocketraft(
                rocketraft::Pub::new(&self.endpoints, &dest.name, window).await?,
            ),
            SystemKind::Nats => Publisher::Nats(Box::new(
                nats::Pub::new(&self.endpoints, &dest.name, window).await?,
            )),
            SystemKind::Rabbitmq => {
                Publisher::Rabbitmq(rabbitmq::Pub::new(&self.endpoints, &dest.name).await?)
            }
        })
    }

    /// A consumer with its own connection; subscribers of one cell share `group` (one
    /// consumer group / durable consumer / queue), so each message goes to one of them.
    ///
    /// `drain` picks each system's fastest way to empty a backlog where it differs: for
    /// rocketraft the pull consumer (`index` of `count` splits the queues among them).
    pub async fn subscriber(
        &self,
        dest: &Dest,
        group: &str,
        receive_batch: u32,
        drain: Option<(usize, usize)>,
    ) -> anyhow::Result<Subscriber> {
        Ok(match self.kind {
            SystemKind::Rocketraft => Subscriber::Rocketraft(match drain {
                Some((index, count)) => {
                    rocketraft::Sub::new_pull(&self.endpoints, &dest.name, group, index, count)
                        .await?
                }
                None => {
                    rocketraft::Sub::new(&self.endpoints, &dest.name, group, receive_batch).await?
                }
            }),
            SystemKind::Nats => Subscriber::Nats(
                nats::Sub::new(&self.endpoints, &dest.name, group, receive_batch).await?,
            ),
            SystemKind::Rabbitmq => Subscriber::Rabbitmq(
                rabbitmq::Sub::new(&self.endpoints, &dest.name, receive_batch).await?,
            ),
        })
    }
}

/// Sends to one destination. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub enum Publisher {
    Rocketraft(rocketraft::Pub),
    // Boxed: the JetStream context is large, and publishers are cloned into every lane.
    Nats(Box<nats::Pub>),
    Rabbitmq(rabbitmq::Pub),
}

impl Publisher {
    /// Sends `bodies` (one message each) and returns once the system acknowledged them
    /// all: one request for rocketraft, which batches; one message for the others.
    pub async fn publish(&self, bodies: Vec<Bytes>) -> anyhow::Result<()> {
        let sent = match self {
            Publisher::Rocketraft(p) => tokio::time::timeout(CALL_TIMEOUT, p.publish(bodies)).await,
            Publisher::Nats(p) => tokio::time::timeout(CALL_TIMEOUT, p.publish(bodies)).await,
            Publisher::Rabbitmq(p) => tokio::time::timeout(CALL_TIMEOUT, p.publish(bodies)).await,
        };
        sent.map_err(|_| anyhow::anyhow!("no acknowledgement within {CALL_TIMEOUT:?}"))?
    }

    pub async fn close(&self) {
        match self {
            Publisher::Rocketraft(p) => p.close().await,
            Publisher::Nats(p) => p.close().await,
            Publisher::Rabbitmq(p) => p.close().await,
        }
    }
}

/// Receives from one destination.
pub enum Subscriber {
    Rocketraft(rocketraft::Sub),
    Nats(nats::Sub),
    Rabbitmq(rabbitmq::Sub),
}

impl Subscriber {
    /// Appends what arrived to `out` and acknowledges it; waits at most `wait` when
    /// nothing is there (then `out` may be unchanged).
    pub async fn receive(&mut self, out: &mut Vec<Bytes>, wait: Duration) -> anyhow::Result<()> {
        match self {
            Subscriber::Rocketraft(s) => s.receive(out, wait).await,
            Subscriber::Nats(s) => s.receive(out, wait).await,
            Subscriber::Rabbitmq(s) => s.receive(out, wait).await,
        }
    }

    pub async fn close(self) {
        match self {
            Subscriber::Rocketraft(s) => s.close().await,
            Subscriber::Nats(s) => s.close().await,
            Subscriber::Rabbitmq(s) => s.close().await,
        }
    }
}

/// Retries `f` until it succeeds or `CALL_TIMEOUT` passes: a fresh cluster refuses
/// creations until it has leaders.
async fn retry_until_ready<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!("{what} (gave up after {CALL_TIMEOUT:?})")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
