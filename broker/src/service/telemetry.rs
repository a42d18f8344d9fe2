//! Telemetry: the long-lived bidirectional stream every client opens first.
//!
//! The response stream is returned at once (the Rust 5.0.0 client waits for its headers
//! with no deadline). Each `Settings` the client sends is answered with status OK and the
//! settings enriched with the server's side (body limit, retry policy, long-polling time),
//! which the Python push consumer waits for. The stream stays open until the client closes
//! it; it is registered under the client id, with the topics a producer publishes, so that
//! the broker can push orphaned-transaction checks to the producers of a topic.

use std::sync::Arc;
use std::time::Duration;

use rocketraft_proto::rocketmq::v2 as pb;
use rocketraft_proto::rocketmq::v2::settings::PubSub;
use rocketraft_proto::rocketmq::v2::telemetry_command::Command;
use rocketraft_raft_store::{GroupConfig, RetryBackoff};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::ServiceContext;
use super::status::{ClientInfo, ok};

/// Commands queued for one client before we stop waiting for it to read.
const TELEMETRY_QUEUE_MAX: usize = 64;

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A consumer group's retry schedule as the v2 protocol spells it.
fn retry_policy(group: &GroupConfig) -> pb::RetryPolicy {
    let ms = |ms: u64| duration(Duration::from_millis(ms));
    pb::RetryPolicy {
        max_attempts: group.max_delivery_attempts as i32,
        strategy: Some(match &group.retry {
            RetryBackoff::Customized { delays_ms } => {
                pb::retry_policy::Strategy::CustomizedBackoff(pb::CustomizedBackoff {
                    next: delays_ms.iter().map(|d| ms(*d)).collect(),
                })
            }
            RetryBackoff::Exponential {
                initial_ms,
                max_ms,
                multiplier_milli,
            } => pb::retry_policy::Strategy::ExponentialBackoff(pb::ExponentialBackoff {
                initial: Some(ms(*initial_ms)),
                max: Some(ms(*max_ms)),
                multiplier: *multiplier_milli as f32 / 1000.0,
            }),
        }),
    }
}

/// The client's settings with the server-decided fields filled in; `group` is the
/// subscriber's consumer group (its order and retry policy), if the client subscribes.
pub fn enrich(mut settings: pb::Settings, group: Option<&GroupConfig>) -> pb::Settings {
    match settings.pub_sub.as_mut() {
        Some(PubSub::Publishing(p)) => {
            p.max_body_size = rocketraft_raft_store::limits::BODY_BYTES_MAX as i32;
            p.validate_message_type = true;
            settings.backoff_policy = Some(pb::RetryPolicy {
                max_attempts: 3,
                strategy: Some(pb::retry_policy::Strategy::ExponentialBackoff(
                    pb::ExponentialBackoff {
                        initial: Some(duration(Duration::from_millis(10))),
                        max: Some(duration(Duration::from_secs(1))),
                        multiplier: 2.0,
                    },
                )),
            });
        }
        Some(PubSub::Subscription(s)) => {
            s.receive_batch_size = Some(32);
            s.long_polling_timeout = Some(duration(Duration::from_secs(20)));
            let default;
            let group = match group {
                Some(g) => g,
                None => {
                    let name = s.group.as_ref().map(|g| g.name.as_str()).unwrap_or("");
                    default = GroupConfig::default_for(name);
                    &default
                }
            };
            s.fifo = Some(group.orderly);
            settings.backoff_policy = Some(retry_policy(group));
        }
        None => {}
    }
    settings.metric = Some(pb::Metric {
        on: false,
        endpoints: None,
    });
    settings
}

pub type TelemetryStream = ReceiverStream<Result<pb::TelemetryCommand, tonic::Status>>;

/// The consumer group a subscriber's settings name, if any.
pub fn subscription_group(settings: &pb::Settings) -> Option<&str> {
    match &settings.pub_sub {
        Some(PubSub::Subscription(s)) => s.group.as_ref().map(|g| g.name.as_str()),
        _ => None,
    }
}

/// The answer to a client's settings: status OK and the settings enriched (see [`enrich`]).
pub fn settings_reply(settings: pb::Settings, group: Option<&GroupConfig>) -> pb::TelemetryCommand {
    pb::TelemetryCommand {
        status: Some(ok()),
        command: Some(Command::Settings(enrich(settings, group))),
    }
}

pub fn open(
    ctx: Arc<ServiceContext>,
    client: ClientInfo,
    mut inbound: tonic::Streaming<pb::TelemetryCommand>,
) -> TelemetryStream {
    let (tx, rx) = mpsc::channel(TELEMETRY_QUEUE_MAX);
    ctx.register_client(&client.client_id, tx.clone());
    tokio::spawn(async move {
        while let Some(frame) = inbound.next().await {
            let Ok(cmd) = frame else { break };
            if let Some(Command::Settings(settings)) = cmd.command {
                let group = subscription_group(&settings).and_then(|g| ctx.reader.group(g));
                // Producers of a topic are asked about its unresolved transactions.
                let producer_topics = match &settings.pub_sub {
                    Some(PubSub::Publishing(p)) => {
                        Some(p.topics.iter().map(|t| t.name.clone()).collect())
                    }
                    _ => None,
                };
                ctx.set_producer_topics(&client.client_id, &tx, producer_topics);
                if tx
                    .send(Ok(settings_reply(settings, group.as_ref())))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            // Thread-stack and verify-message results answer commands we never send yet.
        }
        ctx.forget_stream(&client.client_id, &tx);
    });
    ReceiverStream::new(rx)
}
