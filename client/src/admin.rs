//! Cluster administration through any nameserver (`NameserverAdmin`).

use anyhow::Context;
use rocketraft_proto::admin as apb;
use rocketraft_proto::nameserver as pb;
use rocketraft_proto::nameserver::nameserver_admin_client::NameserverAdminClient;
use serde::Serialize;
use tonic::transport::Channel;

/// How long `create_topic` waits for the nameserver to route a new topic.
const ROUTED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

pub struct Admin {
    client: NameserverAdminClient<Channel>,
}

/// A topic's settings, as the command line takes them.
#[derive(Debug, Clone, Default)]
pub struct TopicSpec {
    pub name: String,
    pub queues: u32,
    /// `normal`, `fifo`, `delay`, `transaction`; empty means every type ("mixed").
    pub message_types: Vec<String>,
    /// Broker groups to host it; empty means every available group.
    pub groups: Vec<String>,
    /// How long messages are kept; `None`: the broker's default (72 h).
    pub retention: Option<std::time::Duration>,
    /// Body bytes kept per topic; `None`: no size limit.
    pub retention_bytes: Option<u64>,
    /// Window within which a resent message id is not stored again; `None`: 2 minutes.
    pub dedup_window: Option<std::time::Duration>,
}

/// A consumer group's settings, as the command line takes them.
#[derive(Debug, Clone, Default)]
pub struct GroupSpec {
    pub name: String,
    pub orderly: bool,
    /// 0 means the default (17).
    pub max_delivery_attempts: u32,
    pub broadcast: bool,
    /// `None` keeps RocketMQ's default schedule.
    pub retry: Option<Retry>,
    /// Broker groups to configure; empty means every available group.
    pub groups: Vec<String>,
}

/// How long a consumer waits before a failed message comes back.
#[derive(Debug, Clone)]
pub enum Retry {
    /// The n-th retry waits the n-th delay; the last repeats.
    Delays(Vec<std::time::Duration>),
    Exponential {
        initial: std::time::Duration,
        max: std::time::Duration,
        multiplier: f64,
    },
}

#[derive(Debug, Serialize)]
pub struct NodeView {
    pub node_id: u64,
    pub addr: String,
    pub role: String,
    pub term: u64,
    pub down: bool,
    pub last_log_index: u64,
    pub applied_index: u64,
    /// Entries the leader has that this node is not known to hold (as of the leader's last
    /// report); `None` without a live leader.
    pub lag: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct GroupView {
    pub name: String,
    pub leader: Option<u64>,
    pub leader_term: u64,
    pub available: bool,
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Serialize)]
pub struct TopicView {
    pub name: String,
    pub queues: u32,
    pub message_types: Vec<String>,
    pub groups: Vec<String>,
}

/// A topic in one broker group.
#[derive(Debug, Serialize)]
pub struct TopicInGroupView {
    pub broker_group: String,
    pub queues: u32,
    pub permission: String,
    pub message_types: Vec<String>,
    /// Next offset of each queue, by queue id, as last reported (about 1 s old).
    pub max_offsets: Vec<u64>,
}

fn type_names(types: &[i32]) -> Vec<String> {
    types
        .iter()
        .map(|m| {
            apb::MessageType::try_from(*m)
                .map(|m| m.as_str_name().to_ascii_lowercase())
                .unwrap_or_else(|_| "unknown".into())
        })
        .collect()
}

/// A stored message found by `message get`.
#[derive(Debug, Serialize)]
pub struct FoundMessage {
    pub broker_group: String,
    pub queue_id: u32,
    pub offset: u64,
    pub message_id: String,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub properties: std::collections::BTreeMap<String, String>,
    /// The body as text (invalid UTF-8 replaced).
    pub body: String,
    pub born_timestamp_ms: i64,
    pub store_timestamp_ms: i64,
}

/// The answer to a lookup: matches, and whether every retained message was looked at.
#[derive(Debug, Serialize)]
pub struct Lookup {
    pub messages: Vec<FoundMessage>,
    pub scanned: u64,
    pub complete: bool,
    /// Broker group -> why it could not be asked.
    pub errors: std::collections::BTreeMap<String, String>,
}

/// What `message get` looks for.
#[derive(Debug, Clone)]
pub enum LookupBy {
    Id(String),
    Key(String),
    /// Stored in `[start_ms, end_ms)`.
    Time {
        start_ms: i64,
        end_ms: i64,
    },
}

/// A consumer group's settings and where it is configured.
#[derive(Debug, Serialize)]
pub struct ConsumerGroupView {
    pub name: String,
    pub orderly: bool,
    /// 0: the default (17).
    pub max_delivery_attempts: u32,
    pub broadcast: bool,
    /// The broker groups it is configured on.
    pub groups: Vec<String>,
}

impl ConsumerGroupView {
    fn from_pb(c: apb::ConsumerGroupConfig, groups: Vec<String>) -> Self {
        Self {
            name: c.name,
            orderly: c.orderly,
            max_delivery_attempts: c.max_delivery_attempts,
            broadcast: c.broadcast,
            groups,
        }
    }
}

/// Where a consumer group stands on one queue.
#[derive(Debug, Serialize)]
pub struct QueueProgressView {
    pub broker_group: String,
    pub topic: String,
    pub queue_id: u32,
    /// The consumer of a broadcasting group; empty for clustering groups.
    pub consumer: String,
    pub offset_min: u64,
    pub offset_next: u64,
    /// The next offset a receive hands out (`None`: never received from this queue).
    pub cursor: Option<u64>,
    pub inflight: u64,
    pub committed: Option<u64>,
    pub lag: u64,
}

/// `group describe`: a consumer group's settings, its progress per queue, and the broker
/// groups that could not be asked.
#[derive(Debug, Serialize)]
pub struct GroupDescription {
    /// `None` if no broker group has the group configured (it may still have consumed with
    /// the defaults).
    pub config: Option<ConsumerGroupView>,
    pub queues: Vec<QueueProgressView>,
    pub lag: u64,
    pub inflight: u64,
    /// Broker group -> why it could not be asked.
    pub errors: std::collections::BTreeMap<String, String>,
}

fn message_type(name: &str) -> anyhow::Result<i32> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "normal" => apb::MessageType::Normal,
        "fifo" => apb::MessageType::Fifo,
        "delay" => apb::MessageType::Delay,
        "transaction" => apb::MessageType::Transaction,
        other => anyhow::bail!(
            "message type {other:?} is unknown; use normal, fifo, delay or transaction"
        ),
    } as i32)
}

impl Admin {
    pub async fn connect(nameserver: &str) -> anyhow::Result<Self> {
        let client = NameserverAdminClient::connect(format!("http://{nameserver}"))
            .await
            .with_context(|| format!("connecting to nameserver {nameserver}"))?;
        Ok(Self { client })
    }

    pub async fn cluster_status(&mut self) -> anyhow::Result<Vec<GroupView>> {
        let resp = self
            .client
            .cluster_status(pb::ClusterStatusRequest {})
            .await?
            .into_inner();
        Ok(resp
            .groups
            .into_iter()
            .map(|g| GroupView {
                available: !g.unavailable,
                leader: g.leader_id,
                leader_term: g.leader_term,
                nodes: g
                    .nodes
                    .into_iter()
                    .map(|n| NodeView {
                        node_id: n.node_id,
                        addr: n.addr,
                        role: pb::Role::try_from(n.role)
                            .map(|r| r.as_str_name().to_ascii_lowercase())
                            .unwrap_or_else(|_| "unknown".into()),
                        term: n.term,
                        down: n.down,
                        last_log_index: n.last_log_index,
                        applied_index: n.applied_index,
                        lag: n.replication_lag,
                    })
                    .collect(),
                name: g.name,
            })
            .collect())
    }

    /// Creates (or updates) a topic; returns the groups that host it now. Returns once the
    /// nameserver routes the topic to all of them (the nodes' next reports, about a second),
    /// so that a producer started right after finds it.
    pub async fn create_topic(&mut self, spec: &TopicSpec) -> anyhow::Result<Vec<String>> {
        let groups = self.put_topic(spec).await?;
        let deadline = tokio::time::Instant::now() + ROUTED_TIMEOUT;
        loop {
            let routed = self.list_topics().await?.into_iter().any(|t| {
                t.name == spec.name
                    && t.queues == spec.queues
                    && groups.iter().all(|g| t.groups.contains(g))
            });
            if routed {
                return Ok(groups);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "topic {} was created on {groups:?} but the nameserver did not route it within {ROUTED_TIMEOUT:?}",
                spec.name
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    async fn put_topic(&mut self, spec: &TopicSpec) -> anyhow::Result<Vec<String>> {
        let message_types = spec
            .message_types
            .iter()
            .map(|t| message_type(t))
            .collect::<anyhow::Result<_>>()?;
        let resp = self
            .client
            .create_topic(pb::CreateTopicRequest {
                topic: Some(apb::TopicConfig {
                    name: spec.name.clone(),
                    queue_count: spec.queues,
                    permission: apb::Permission::ReadWrite as i32,
                    message_types,
                    retention_ms: spec.retention.map(|d| d.as_millis() as u64),
                    retention_bytes: spec.retention_bytes,
                    dedup_window_ms: spec.dedup_window.map(|d| d.as_millis() as u64),
                }),
                groups: spec.groups.clone(),
            })
            .await?
            .into_inner();
        Ok(resp.groups)
    }

    pub async fn delete_topic(
        &mut self,
        name: &str,
        groups: &[String],
    ) -> anyhow::Result<Vec<String>> {
        let resp = self
            .client
            .delete_topic(pb::DeleteTopicRequest {
                name: name.to_string(),
                groups: groups.to_vec(),
            })
            .await?
            .into_inner();
        Ok(resp.groups)
    }

    pub async fn list_topics(&mut self) -> anyhow::Result<Vec<TopicView>> {
        let resp = self
            .client
            .list_topics(pb::ListTopicsRequest {})
            .await?
            .into_inner();
        Ok(resp
            .topics
            .into_iter()
            .filter_map(|t| {
                let cfg = t.topic?;
                Some(TopicView {
                    message_types: type_names(&cfg.message_types),
                    name: cfg.name,
                    queues: cfg.queue_count,
                    groups: t.groups,
                })
            })
            .collect())
    }

    /// Creates (or updates) a consumer group; returns the broker groups configured.
    pub async fn put_group(&mut self, spec: &GroupSpec) -> anyhow::Result<Vec<String>> {
        use apb::retry_policy::Policy;
        let policy = match &spec.retry {
            None => None,
            Some(Retry::Delays(delays)) => Some(Policy::Customized(apb::CustomizedRetry {
                delays_ms: delays.iter().map(|d| d.as_millis() as u64).collect(),
            })),
            Some(Retry::Exponential {
                initial,
                max,
                multiplier,
            }) => Some(Policy::Exponential(apb::ExponentialRetry {
                initial_ms: initial.as_millis() as u64,
                max_ms: max.as_millis() as u64,
                multiplier: *multiplier,
            })),
        };
        let resp = self
            .client
            .put_consumer_group(pb::PutConsumerGroupRequest {
                group: Some(apb::ConsumerGroupConfig {
                    name: spec.name.clone(),
                    orderly: spec.orderly,
                    max_delivery_attempts: spec.max_delivery_attempts,
                    broadcast: spec.broadcast,
                    retry_policy: policy.map(|p| apb::RetryPolicy { policy: Some(p) }),
                }),
                groups: spec.groups.clone(),
            })
            .await?
            .into_inner();
        Ok(resp.groups)
    }

    pub async fn list_groups(&mut self) -> anyhow::Result<Vec<ConsumerGroupView>> {
        let resp = self
            .client
            .list_consumer_groups(pb::ListConsumerGroupsRequest {})
            .await?
            .into_inner();
        Ok(resp
            .groups
            .into_iter()
            .filter_map(|r| Some(ConsumerGroupView::from_pb(r.group?, r.groups)))
            .collect())
    }

    pub async fn describe_group(&mut self, name: &str) -> anyhow::Result<GroupDescription> {
        let resp = self
            .client
            .describe_consumer_group(pb::DescribeConsumerGroupRequest {
                consumer_group: name.to_string(),
            })
            .await?
            .into_inner();
        let mut errors = std::collections::BTreeMap::new();
        let mut queues = Vec::new();
        for g in resp.groups {
            if !g.error.is_empty() {
                errors.insert(g.broker_group.clone(), g.error);
            }
            queues.extend(g.queues.into_iter().map(|q| QueueProgressView {
                broker_group: g.broker_group.clone(),
                topic: q.topic,
                queue_id: q.queue_id,
                consumer: q.consumer,
                offset_min: q.offset_min,
                offset_next: q.offset_next,
                cursor: q.cursor,
                inflight: q.inflight,
                committed: q.committed,
                lag: q.lag,
            }));
        }
        Ok(GroupDescription {
            config: self
                .list_groups()
                .await?
                .into_iter()
                .find(|g| g.name == name),
            lag: queues.iter().map(|q| q.lag).sum(),
            inflight: queues.iter().map(|q| q.inflight).sum(),
            queues,
            errors,
        })
    }

    /// Moves a consumer group on every queue of `topic` (in every broker group hosting it)
    /// to the first message stored at or after `timestamp_ms`; returns the new offsets per
    /// broker group, by queue id.
    pub async fn reset_offsets(
        &mut self,
        group: &str,
        topic: &str,
        timestamp_ms: i64,
    ) -> anyhow::Result<std::collections::BTreeMap<String, Vec<u64>>> {
        let resp = self
            .client
            .reset_consumer_offsets(pb::ResetConsumerOffsetsRequest {
                consumer_group: group.to_string(),
                topic: topic.to_string(),
                timestamp_ms,
            })
            .await?
            .into_inner();
        Ok(resp
            .groups
            .into_iter()
            .map(|g| (g.broker_group, g.offsets))
            .collect())
    }

    /// A topic's settings and queue offsets in every broker group hosting it.
    pub async fn describe_topic(&mut self, name: &str) -> anyhow::Result<Vec<TopicInGroupView>> {
        let resp = self
            .client
            .describe_topic(pb::DescribeTopicRequest {
                topic: name.to_string(),
            })
            .await?
            .into_inner();
        Ok(resp
            .groups
            .into_iter()
            .filter_map(|g| {
                let t = g.topic?;
                Some(TopicInGroupView {
                    broker_group: g.broker_group,
                    queues: t.queue_count,
                    permission: apb::Permission::try_from(t.permission)
                        .map(|p| p.as_str_name().to_ascii_lowercase())
                        .unwrap_or_else(|_| "unknown".into()),
                    message_types: type_names(&t.message_types),
                    max_offsets: g.max_offsets,
                })
            })
            .collect())
    }

    /// Finds messages of `topic` by id or key in every broker group hosting it, reading at
    /// most `scan_max_per_queue` of the newest messages of each queue (0: 100,000).
    pub async fn find_messages(
        &mut self,
        topic: &str,
        by: &LookupBy,
        max: u32,
    ) -> anyhow::Result<Lookup> {
        let mut req = apb::FindMessagesRequest {
            topic: topic.to_string(),
            max,
            ..Default::default()
        };
        match by {
            LookupBy::Id(id) => req.message_id = id.clone(),
            LookupBy::Key(k) => req.key = k.clone(),
            LookupBy::Time { start_ms, end_ms } => {
                req.start_ms = Some(*start_ms);
                req.end_ms = Some(*end_ms);
            }
        }
        let resp = self.client.find_messages(req).await?.into_inner();
        let mut out = Lookup {
            messages: Vec::new(),
            scanned: 0,
            complete: true,
            errors: Default::default(),
        };
        for g in resp.groups {
            if !g.error.is_empty() {
                out.errors.insert(g.broker_group.clone(), g.error);
                out.complete = false;
            }
            let Some(found) = g.found else { continue };
            out.scanned += found.scanned;
            out.complete &= found.complete;
            out.messages
                .extend(found.messages.into_iter().map(|m| FoundMessage {
                    broker_group: g.broker_group.clone(),
                    queue_id: m.queue_id,
                    offset: m.offset,
                    message_id: m.message_id,
                    tag: m.tag,
                    keys: m.keys,
                    properties: m.properties.into_iter().collect(),
                    body: String::from_utf8_lossy(&m.body).into_owned(),
                    born_timestamp_ms: m.born_timestamp_ms,
                    store_timestamp_ms: m.store_timestamp_ms,
                }));
        }
        Ok(out)
    }
}
