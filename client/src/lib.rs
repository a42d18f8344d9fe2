//! rocketraft's client side.
//!
//! - [`Producer`] (`producer.rs`): sync, async, oneway, batch and transactional sends;
//! - [`SimpleConsumer`], [`PushConsumer`] (`consumer.rs`) and [`PullConsumer`] (`pull.rs`);
//! - `route.rs`: routes from the nameservers (`GetRoutes`), refreshed periodically and after
//!   failures; `conn.rs`: channels and the headers every call carries;
//! - [`admin`]: the operator's view through a nameserver, used by the `rocketraft` CLI;
//! - [`membership`]: a broker group's members and leader, through its nodes;
//! - [`ports`]: free loopback ports for local clusters.
//!
//! Data-plane calls use the official `apache.rocketmq.v2` API, so producers and consumers
//! also work against any broker that speaks it once routes are known. Examples are in
//! `client/examples/`.

pub mod admin;
mod conn;
pub mod consumer;
pub mod error;
pub mod membership;
pub mod message;
pub mod ports;
pub mod producer;
pub mod pull;
mod route;

use std::time::Duration;

pub use consumer::{ConsumeResult, Filter, PushConsumer, SimpleConsumer};
pub use error::{Error, Result};
pub use message::{Message, ReceivedMessage};
pub use producer::{Producer, SendReceipt, Transaction, TransactionResolution};
pub use pull::{PullConsumer, QueueRef};
pub use route::{GroupRoute, TopicRoute};

/// Where the cluster is and how patient to be with it.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Nameserver addresses (`host:port`); more are learned from their answers.
    pub nameservers: Vec<String>,
    /// The deadline of each call (long polls add their wait to it).
    pub request_timeout: Duration,
    /// How often cached routes are fetched again (they are also after failures).
    pub route_refresh: Duration,
    /// Names this client to the brokers; generated when empty.
    pub client_id: String,
}

impl ClientConfig {
    pub fn new<I, S>(nameservers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            nameservers: nameservers.into_iter().map(Into::into).collect(),
            request_timeout: Duration::from_secs(3),
            route_refresh: Duration::from_secs(30),
            client_id: String::new(),
        }
    }

    fn client_id(&self) -> String {
        if !self.client_id.is_empty() {
            return self.client_id.clone();
        }
        // Unique per client object: broadcasting groups track consumers by this id.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!(
            "{}@{}#{}#{}",
            host.trim(),
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        )
    }
}
