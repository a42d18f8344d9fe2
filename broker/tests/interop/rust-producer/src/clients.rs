//! Thin wrappers around the official clients that every scenario shares: option building,
//! bounded start/shutdown, a consumer that counts its receives, and a loop budget.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rocketmq::conf::{ClientOption, ProducerOption, SimpleConsumerOption};
use rocketmq::model::common::{FilterExpression, FilterType};
use rocketmq::model::message::MessageView;
use rocketmq::model::transaction::TransactionChecker;
use rocketmq::{Producer, SimpleConsumer};
use tokio::time::Instant;

/// `start()` awaits the Telemetry response headers without any deadline of its own, so a
/// broker that never answers would hang the scenario instead of failing it.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// `shutdown()` is one NotifyClientTermination with the client's 3 s request timeout; this
/// only turns a hang anywhere else into an error.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// The client's own default (conf.rs): 40 s, which is also the gRPC deadline of every
/// ReceiveMessage (session.rs sets the deadline to exactly this value, not to this plus the
/// request timeout as the setter's doc claims).
pub const DEFAULT_LONG_POLLING: Duration = Duration::from_secs(40);

/// What most scenarios use instead: every receive that finds nothing costs one long poll, and
/// the scenarios make several of those on purpose. Still well above the 5 s floor a
/// RocketMQ-like server may apply, so the broker has room to answer before the deadline.
pub const SHORT_LONG_POLLING: Duration = Duration::from_secs(10);

/// How many receives `expect_nothing` makes at once. The client picks the queue round-robin
/// over the route (util.rs `select_message_queue`), so this many concurrent calls touch every
/// queue of a topic with up to this many queues, at the cost of a single long poll.
const PROBE_RECEIVES: usize = 8;

fn client_option(access_point: &str, long_polling: Duration) -> ClientOption {
    let mut option = ClientOption::default();
    option.set_access_url(access_point);
    option.set_long_polling_timeout(long_polling);
    option
}

fn producer_option(topic: &str) -> ProducerOption {
    let mut option = ProducerOption::default();
    // Queries the route at start(), so a missing topic fails there and not at the first send.
    option.set_topics(vec![topic.to_string()]);
    option
}

pub async fn start_producer(access_point: &str, topic: &str) -> Result<Producer> {
    let mut producer = Producer::new(
        producer_option(topic),
        client_option(access_point, DEFAULT_LONG_POLLING),
    )?;
    bounded(START_TIMEOUT, "starting the producer", producer.start()).await?;
    Ok(producer)
}

pub async fn start_transaction_producer(
    access_point: &str,
    topic: &str,
    checker: Box<TransactionChecker>,
) -> Result<Producer> {
    let mut producer = Producer::new_transaction_producer(
        producer_option(topic),
        client_option(access_point, DEFAULT_LONG_POLLING),
        checker,
    )?;
    bounded(
        START_TIMEOUT,
        "starting the transaction producer",
        producer.start(),
    )
    .await?;
    Ok(producer)
}

/// Fails when the broker does not answer NotifyClientTermination with OK.
pub async fn shutdown_producer(producer: Producer) -> Result<()> {
    bounded(
        SHUTDOWN_TIMEOUT,
        "shutting the producer down",
        producer.shutdown(),
    )
    .await
}

async fn bounded<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, rocketmq::error::ClientError>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context(format!("{what} failed"))),
        Err(_) => bail!("{what} did not finish within {limit:?}"),
    }
}

/// A SimpleConsumer bound to one group, topic and tag expression.
pub struct Consumer {
    inner: SimpleConsumer,
    group: String,
    topic: String,
    tag_expression: String,
    long_polling: Duration,
    /// ReceiveMessage calls made so far, for the summary.
    pub receive_calls: u32,
}

impl Consumer {
    /// `prefetch_route` queries the topic's route at start, which then fails if the topic
    /// does not exist; without it the first receive looks the route up, and a failed lookup
    /// is not cached (client.rs `topic_route_inner`), so receiving can be retried until a
    /// topic the broker creates on its own (a dead-letter topic) appears.
    pub async fn start(
        access_point: &str,
        group: &str,
        topic: &str,
        tag_expression: &str,
        long_polling: Duration,
        prefetch_route: bool,
    ) -> Result<Self> {
        let mut option = SimpleConsumerOption::default();
        option.set_consumer_group(group);
        if prefetch_route {
            option.set_topics(vec![topic.to_string()]);
        }
        let mut inner = SimpleConsumer::new(option, client_option(access_point, long_polling))?;
        bounded(
            START_TIMEOUT,
            &format!("starting a consumer in group {group}"),
            inner.start(),
        )
        .await?;
        Ok(Self {
            inner,
            group: group.to_string(),
            topic: topic.to_string(),
            tag_expression: tag_expression.to_string(),
            long_polling,
            receive_calls: 0,
        })
    }

    fn filter(&self) -> FilterExpression {
        FilterExpression::new(FilterType::Tag, self.tag_expression.clone())
    }

    /// The client's deadline ends the call after one long poll; the margin only catches a
    /// hang outside that call (session creation has no deadline).
    fn receive_limit(&self) -> Duration {
        self.long_polling + Duration::from_secs(5)
    }

    /// One ReceiveMessage on the next queue of the route.
    pub async fn receive(&mut self, batch: i32, invisible: Duration) -> Result<Vec<MessageView>> {
        self.receive_calls += 1;
        let filter = self.filter();
        let what = format!(
            "receive #{} in group {} from {} (batch {batch}, invisible {invisible:?})",
            self.receive_calls, self.group, self.topic
        );
        let messages = bounded(
            self.receive_limit(),
            &what,
            self.inner
                .receive_with(&self.topic, &filter, batch, invisible),
        )
        .await?;
        if messages.len() > batch as usize {
            bail!(
                "{what} returned {} messages, more than the batch size",
                messages.len()
            );
        }
        Ok(messages)
    }

    /// Asserts that nothing is left to deliver: several receives at once, so that every
    /// queue is asked and the whole check costs one long poll.
    pub async fn expect_nothing(&mut self, invisible: Duration) -> Result<()> {
        let filter = self.filter();
        let limit = self.receive_limit();
        let calls = (0..PROBE_RECEIVES).map(|_| {
            tokio::time::timeout(
                limit,
                self.inner.receive_with(&self.topic, &filter, 16, invisible),
            )
        });
        let results = futures::future::join_all(calls).await;
        self.receive_calls += PROBE_RECEIVES as u32;
        let mut unexpected = Vec::new();
        for r in results {
            match r {
                Ok(Ok(messages)) => unexpected.extend(messages.iter().map(describe)),
                Ok(Err(e)) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "a receive in group {} meant to find nothing failed",
                        self.group
                    )))
                }
                Err(_) => bail!(
                    "a receive in group {} meant to find nothing did not finish within {limit:?}",
                    self.group
                ),
            }
        }
        if !unexpected.is_empty() {
            bail!(
                "group {} should have nothing left on {}, yet received: {}",
                self.group,
                self.topic,
                unexpected.join("; ")
            );
        }
        Ok(())
    }

    pub async fn ack(&self, message: &MessageView) -> Result<()> {
        let what = format!("acking {} in group {}", describe(message), self.group);
        // An ack is one unary call with the client's 3 s request timeout.
        bounded(Duration::from_secs(10), &what, self.inner.ack(message)).await
    }

    /// Fails when the broker does not answer NotifyClientTermination with OK.
    pub async fn shutdown(self) -> Result<()> {
        let what = format!("shutting down the consumer in group {}", self.group);
        bounded(SHUTDOWN_TIMEOUT, &what, self.inner.shutdown()).await
    }
}

/// A short, readable identification of a received message for error messages.
pub fn describe(m: &MessageView) -> String {
    format!(
        "[id {} body {:?} tag {:?} group {:?} attempt {}]",
        m.message_id(),
        String::from_utf8_lossy(m.body()),
        m.tag(),
        m.message_group(),
        m.delivery_attempt()
    )
}

/// Bounds a polling loop by wall time and by number of rounds, so that neither a slow broker
/// nor one that answers instantly with nothing can keep a scenario spinning.
pub struct Budget {
    what: String,
    timeout: Duration,
    deadline: Instant,
    rounds_max: u32,
    rounds: u32,
}

impl Budget {
    pub fn new(what: impl Into<String>, timeout: Duration, rounds_max: u32) -> Self {
        Self {
            what: what.into(),
            timeout,
            deadline: Instant::now() + timeout,
            rounds_max,
            rounds: 0,
        }
    }

    /// Call at the top of each round: an error once either bound is used up.
    pub fn next_round(&mut self) -> Result<()> {
        if Instant::now() >= self.deadline {
            bail!("{}: not done within {:?}", self.what, self.timeout);
        }
        if self.rounds >= self.rounds_max {
            bail!("{}: not done within {} rounds", self.what, self.rounds_max);
        }
        self.rounds += 1;
        Ok(())
    }
}

pub fn epoch_ms() -> Result<i64> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?;
    Ok(since.as_millis() as i64)
}

pub fn body_text(m: &MessageView) -> Result<&str> {
    std::str::from_utf8(m.body()).with_context(|| format!("body is not UTF-8: {}", describe(m)))
}
