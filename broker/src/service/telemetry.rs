//! Telemetry: the long-lived bidirectional stream every client opens first.
//!
//! The response stream is returned at once (the Rust 5.0.0 client waits for its headers
//! with no deadline). Each `Settings` the client sends is answered with status OK and the
//! settings enriched with the server's side (body limit, retry policy, long-polling time),
//! which the Python push consumer waits for. The stream stays open until the client closes
//! it; it is registered under the client id so that the broker can push commands later
//! (orphaned-transaction checks).

use std::sync::Arc;
use std::time::Duration;

use rocketraft_proto::rocketmq::v2 as pb;
use rocketraft_proto::rocketmq::v2::settings::PubSub;
use rocketraft_proto::rocketmq::v2::telemetry_command::Command;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::ServiceContext;
use super::status::{ClientInfo, ok};

/// Commands queued for one client before we stop waiting for it to read.
const TELEMETRY_QUEUE_MAX: usize = 64;

/// Retry delays for consumers, RocketMQ's default customized policy (1 s ... 2 h).
const CONSUMER_BACKOFF_SECS: [i64; 18] = [
    1, 5, 10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600, 7200,
];

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The client's settings with the server-decided fields filled in.
pub fn enrich(mut settings: pb::Settings) -> pb::Settings {
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
            s.fifo = Some(false);
            settings.backoff_policy = Some(pb::RetryPolicy {
                max_attempts: 17,
                strategy: Some(pb::retry_policy::Strategy::CustomizedBackoff(
                    pb::CustomizedBackoff {
                        next: CONSUMER_BACKOFF_SECS
                            .iter()
                            .map(|s| duration(Duration::from_secs(*s as u64)))
                            .collect(),
                    },
                )),
            });
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
                let reply = pb::TelemetryCommand {
                    status: Some(ok()),
                    command: Some(Command::Settings(enrich(settings))),
                };
                if tx.send(Ok(reply)).await.is_err() {
                    break;
                }
            }
            // Thread-stack and verify-message results answer commands we never send yet.
        }
        ctx.forget_client(&client.client_id);
    });
    ReceiverStream::new(rx)
}
