//! Wire types (prost) to domain types and back: the only place that knows both.

use rocketraft_proto::admin as pb;
use rocketraft_raft_store::{
    GroupConfig, MessageKind, NewMessage, Permission, RetryBackoff, StoredMessage, TopicConfig,
};

pub fn message_kind_from_pb(t: pb::MessageType) -> Option<MessageKind> {
    match t {
        pb::MessageType::Unspecified => None,
        pb::MessageType::Normal => Some(MessageKind::Normal),
        pb::MessageType::Fifo => Some(MessageKind::Fifo),
        pb::MessageType::Delay => Some(MessageKind::Delay),
        pb::MessageType::Transaction => Some(MessageKind::Transaction),
    }
}

pub fn message_kind_to_pb(k: MessageKind) -> pb::MessageType {
    match k {
        MessageKind::Normal => pb::MessageType::Normal,
        MessageKind::Fifo => pb::MessageType::Fifo,
        MessageKind::Delay => pb::MessageType::Delay,
        MessageKind::Transaction => pb::MessageType::Transaction,
    }
}

pub fn topic_from_pb(t: pb::TopicConfig) -> Result<TopicConfig, tonic::Status> {
    let permission = match pb::Permission::try_from(t.permission) {
        Ok(pb::Permission::Unspecified) | Ok(pb::Permission::ReadWrite) => Permission::ReadWrite,
        Ok(pb::Permission::Read) => Permission::Read,
        Ok(pb::Permission::Write) => Permission::Write,
        Err(_) => {
            return Err(tonic::Status::invalid_argument(format!(
                "topic.permission: unknown value {}",
                t.permission
            )));
        }
    };
    let mut kinds = Vec::new();
    for raw in t.message_types {
        let kind = pb::MessageType::try_from(raw)
            .ok()
            .and_then(message_kind_from_pb)
            .ok_or_else(|| {
                tonic::Status::invalid_argument(format!("topic.message_types: unknown value {raw}"))
            })?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    kinds.sort();
    let retention_ms = t
        .retention_ms
        .unwrap_or(rocketraft_raft_store::DEFAULT_RETENTION_MS);
    Ok(TopicConfig {
        name: t.name,
        queue_count: t.queue_count,
        permission,
        message_kinds: kinds,
        retention_ms,
        retention_bytes: t.retention_bytes.unwrap_or(0),
        // The default window never outlives the messages it remembers.
        dedup_window_ms: t
            .dedup_window_ms
            .unwrap_or(rocketraft_raft_store::DEFAULT_DEDUP_WINDOW_MS.min(retention_ms)),
    })
}

pub fn topic_to_pb(t: &TopicConfig) -> pb::TopicConfig {
    pb::TopicConfig {
        name: t.name.clone(),
        queue_count: t.queue_count,
        permission: match t.permission {
            Permission::Read => pb::Permission::Read,
            Permission::Write => pb::Permission::Write,
            Permission::ReadWrite => pb::Permission::ReadWrite,
        } as i32,
        message_types: t
            .message_kinds
            .iter()
            .map(|k| message_kind_to_pb(*k) as i32)
            .collect(),
        retention_ms: Some(t.retention_ms),
        retention_bytes: Some(t.retention_bytes),
        dedup_window_ms: Some(t.dedup_window_ms),
    }
}

/// A consumer group's config; 0 delivery attempts means the default.
pub fn group_from_pb(g: pb::ConsumerGroupConfig) -> GroupConfig {
    use pb::retry_policy::Policy;
    let retry = match g.retry_policy.and_then(|p| p.policy) {
        None => RetryBackoff::default(),
        Some(Policy::Customized(c)) => RetryBackoff::Customized {
            delays_ms: c.delays_ms,
        },
        Some(Policy::Exponential(e)) => RetryBackoff::Exponential {
            initial_ms: e.initial_ms,
            max_ms: e.max_ms,
            // Out-of-range values (NaN included) saturate and are refused by validation.
            multiplier_milli: (e.multiplier * 1000.0).round() as u32,
        },
    };
    GroupConfig {
        max_delivery_attempts: match g.max_delivery_attempts {
            0 => GroupConfig::DEFAULT_MAX_DELIVERY_ATTEMPTS,
            n => n,
        },
        orderly: g.orderly,
        broadcast: g.broadcast,
        name: g.name,
        retry,
    }
}

pub fn group_to_pb(g: GroupConfig) -> pb::ConsumerGroupConfig {
    use pb::retry_policy::Policy;
    let policy = match g.retry {
        RetryBackoff::Customized { delays_ms } => {
            Policy::Customized(pb::CustomizedRetry { delays_ms })
        }
        RetryBackoff::Exponential {
            initial_ms,
            max_ms,
            multiplier_milli,
        } => Policy::Exponential(pb::ExponentialRetry {
            initial_ms,
            max_ms,
            multiplier: multiplier_milli as f64 / 1000.0,
        }),
    };
    pb::ConsumerGroupConfig {
        name: g.name,
        orderly: g.orderly,
        max_delivery_attempts: g.max_delivery_attempts,
        broadcast: g.broadcast,
        retry_policy: Some(pb::RetryPolicy {
            policy: Some(policy),
        }),
    }
}

pub fn message_from_pb(m: pb::MessageInput) -> NewMessage {
    NewMessage {
        message_id: m.message_id,
        tag: m.tag,
        keys: m.keys,
        properties: m.properties.into_iter().collect(),
        body: m.body,
        born_timestamp_ms: m.born_timestamp_ms,
        kind: MessageKind::Normal,
        message_group: None,
        delivery_timestamp_ms: None,
    }
}

pub fn stored_to_pb(s: StoredMessage) -> pb::StoredMessage {
    pb::StoredMessage {
        topic: s.topic,
        queue_id: s.queue_id,
        offset: s.offset,
        message_id: s.message.message_id,
        tag: s.message.tag,
        keys: s.message.keys,
        properties: s.message.properties.into_iter().collect(),
        body: s.message.body,
        born_timestamp_ms: s.message.born_timestamp_ms,
        store_timestamp_ms: s.store_timestamp_ms,
    }
}
