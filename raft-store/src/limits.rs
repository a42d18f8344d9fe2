//! Limits and validation shared by the broker (before proposing) and the state machine
//! (when applying). Every error names the field and the limit it broke.

use crate::types::{GroupConfig, NewMessage, Rejection, RetryBackoff, TopicConfig};

/// RocketMQ's topic and group name limit.
pub const NAME_LEN_MAX: usize = 127;
pub const QUEUE_COUNT_MAX: u32 = 1024;
/// RocketMQ's default maximum message body (4 MiB).
pub const BODY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// One Raft entry carries at most this many messages...
pub const BATCH_MESSAGES_MAX: usize = 1024;
/// ...and at most this many bytes of bodies and properties; larger batches would stall
/// replication of everything queued behind them.
pub const BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;
pub const TAG_LEN_MAX: usize = 1024;
pub const KEYS_MAX: usize = 64;
pub const PROPERTIES_MAX: usize = 128;
/// Bytes of all user properties (keys and values) of one message; RocketMQ caps these at 16 KiB.
pub const PROPERTIES_BYTES_MAX: usize = 16 * 1024;
pub const MESSAGE_ID_LEN_MAX: usize = 128;

fn invalid(field: &str, reason: impl Into<String>) -> Rejection {
    Rejection::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Topic and consumer group names follow RocketMQ: `^[%|a-zA-Z0-9_-]+$`, at most 127 chars.
pub fn validate_name(field: &str, name: &str) -> Result<(), Rejection> {
    if name.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if name.len() > NAME_LEN_MAX {
        return Err(invalid(
            field,
            format!(
                "is {} characters long; the limit is {NAME_LEN_MAX}",
                name.len()
            ),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '%' | '|' | '_' | '-')))
    {
        return Err(invalid(
            field,
            format!("contains {c:?}; allowed are letters, digits, '%', '|', '_' and '-'"),
        ));
    }
    Ok(())
}

/// Deliveries of one message to one group at most (RocketMQ allows up to 16 retries by
/// default and the clients' backoff tables are far shorter than this).
pub const DELIVERY_ATTEMPTS_MAX: u32 = 1000;

pub fn validate_group_config(group: &GroupConfig) -> Result<(), Rejection> {
    validate_name("group.name", &group.name)?;
    if group.max_delivery_attempts == 0 || group.max_delivery_attempts > DELIVERY_ATTEMPTS_MAX {
        return Err(invalid(
            "group.max_delivery_attempts",
            format!(
                "is {}; it must be between 1 and {DELIVERY_ATTEMPTS_MAX}",
                group.max_delivery_attempts
            ),
        ));
    }
    validate_retry(&group.retry)
}

/// The longest retry delay a group may configure (RocketMQ's own schedule ends at 2 h).
pub const RETRY_DELAY_MS_MAX: u64 = 24 * 3600 * 1000;
/// Entries of a customized retry schedule.
pub const RETRY_DELAYS_MAX: usize = 64;

fn validate_retry(retry: &RetryBackoff) -> Result<(), Rejection> {
    let delay = |field: &str, ms: u64| {
        if ms == 0 || ms > RETRY_DELAY_MS_MAX {
            Err(invalid(
                field,
                format!("is {ms} ms; it must be between 1 and {RETRY_DELAY_MS_MAX} ms"),
            ))
        } else {
            Ok(())
        }
    };
    match retry {
        RetryBackoff::Customized { delays_ms } => {
            if delays_ms.is_empty() || delays_ms.len() > RETRY_DELAYS_MAX {
                return Err(invalid(
                    "group.retry_policy.customized.delays_ms",
                    format!(
                        "has {} entries; it must have between 1 and {RETRY_DELAYS_MAX}",
                        delays_ms.len()
                    ),
                ));
            }
            for ms in delays_ms {
                delay("group.retry_policy.customized.delays_ms", *ms)?;
            }
        }
        RetryBackoff::Exponential {
            initial_ms,
            max_ms,
            multiplier_milli,
        } => {
            delay("group.retry_policy.exponential.initial_ms", *initial_ms)?;
            delay("group.retry_policy.exponential.max_ms", *max_ms)?;
            if max_ms < initial_ms {
                return Err(invalid(
                    "group.retry_policy.exponential.max_ms",
                    format!("is {max_ms} ms; it must be at least initial_ms ({initial_ms} ms)"),
                ));
            }
            if !(1000..=10_000).contains(multiplier_milli) {
                return Err(invalid(
                    "group.retry_policy.exponential.multiplier",
                    format!(
                        "is {}; it must be between 1 and 10",
                        *multiplier_milli as f64 / 1000.0
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Topic name prefixes the broker reserves for itself (RocketMQ's retry and dead-letter
/// topics, and its system topics); users cannot create topics with them.
pub const RESERVED_TOPIC_PREFIXES: [&str; 4] = ["%DLQ%", "%RETRY%", "rmq_sys_", "RMQ_SYS_"];

/// A topic name a user may create: RocketMQ's rules, and none of the reserved prefixes.
pub fn validate_user_topic_name(field: &str, name: &str) -> Result<(), Rejection> {
    validate_name(field, name)?;
    if let Some(p) = RESERVED_TOPIC_PREFIXES
        .iter()
        .find(|p| name.starts_with(**p))
    {
        return Err(invalid(
            field,
            format!("starts with {p:?}, a prefix reserved for the broker's own topics"),
        ));
    }
    Ok(())
}

pub fn validate_topic_config(topic: &TopicConfig) -> Result<(), Rejection> {
    validate_name("topic.name", &topic.name)?;
    if topic.queue_count == 0 || topic.queue_count > QUEUE_COUNT_MAX {
        return Err(invalid(
            "topic.queue_count",
            format!(
                "is {}; it must be between 1 and {QUEUE_COUNT_MAX}",
                topic.queue_count
            ),
        ));
    }
    if !(RETENTION_MS_MIN..=RETENTION_MS_MAX).contains(&topic.retention_ms) {
        return Err(invalid(
            "topic.retention_ms",
            format!(
                "is {}; it must be between {RETENTION_MS_MIN} (1 s) and {RETENTION_MS_MAX} (10 years)",
                topic.retention_ms
            ),
        ));
    }
    if topic.dedup_window_ms > topic.retention_ms {
        return Err(invalid(
            "topic.dedup_window_ms",
            format!(
                "is {}; it cannot exceed the topic's retention_ms ({}): ids are forgotten with their messages",
                topic.dedup_window_ms, topic.retention_ms
            ),
        ));
    }
    Ok(())
}

/// Shortest and longest retention a topic may have.
pub const RETENTION_MS_MIN: u64 = 1_000;
pub const RETENTION_MS_MAX: u64 = 10 * 365 * 24 * 3600 * 1000;

/// Checks a batch on its own (not against a topic): sizes, counts, ids.
pub fn validate_batch(messages: &[NewMessage]) -> Result<(), Rejection> {
    if messages.is_empty() {
        return Err(invalid("messages", "must contain at least one message"));
    }
    if messages.len() > BATCH_MESSAGES_MAX {
        return Err(invalid(
            "messages",
            format!(
                "has {} messages; the limit is {BATCH_MESSAGES_MAX}",
                messages.len()
            ),
        ));
    }
    let mut batch_bytes = 0usize;
    for (i, m) in messages.iter().enumerate() {
        validate_message(i, m)?;
        batch_bytes += message_bytes(m);
    }
    if batch_bytes > BATCH_BYTES_MAX {
        return Err(invalid(
            "messages",
            format!("carry {batch_bytes} bytes; the limit for one batch is {BATCH_BYTES_MAX}"),
        ));
    }
    Ok(())
}

fn message_bytes(m: &NewMessage) -> usize {
    m.body.len()
        + m.properties
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

fn validate_message(i: usize, m: &NewMessage) -> Result<(), Rejection> {
    let field = |name: &str| format!("messages[{i}].{name}");
    if m.message_id.trim().is_empty() {
        return Err(invalid(&field("message_id"), "must not be blank"));
    }
    if m.message_id.len() > MESSAGE_ID_LEN_MAX {
        return Err(invalid(
            &field("message_id"),
            format!(
                "is {} bytes; the limit is {MESSAGE_ID_LEN_MAX}",
                m.message_id.len()
            ),
        ));
    }
    if m.body.is_empty() {
        return Err(invalid(&field("body"), "must not be empty"));
    }
    if m.body.len() > BODY_BYTES_MAX {
        return Err(invalid(
            &field("body"),
            format!("is {} bytes; the limit is {BODY_BYTES_MAX}", m.body.len()),
        ));
    }
    if let Some(tag) = &m.tag {
        if tag.trim().is_empty() {
            return Err(invalid(&field("tag"), "must not be blank when set"));
        }
        if tag.contains('|') {
            return Err(invalid(&field("tag"), "must not contain '|'"));
        }
        if tag.len() > TAG_LEN_MAX {
            return Err(invalid(
                &field("tag"),
                format!("is {} bytes; the limit is {TAG_LEN_MAX}", tag.len()),
            ));
        }
    }
    if m.keys.len() > KEYS_MAX {
        return Err(invalid(
            &field("keys"),
            format!("has {} keys; the limit is {KEYS_MAX}", m.keys.len()),
        ));
    }
    if m.keys.iter().any(|k| k.trim().is_empty()) {
        return Err(invalid(&field("keys"), "must not contain a blank key"));
    }
    if m.properties.len() > PROPERTIES_MAX {
        return Err(invalid(
            &field("properties"),
            format!(
                "has {} entries; the limit is {PROPERTIES_MAX}",
                m.properties.len()
            ),
        ));
    }
    let properties_bytes: usize = m.properties.iter().map(|(k, v)| k.len() + v.len()).sum();
    if properties_bytes > PROPERTIES_BYTES_MAX {
        return Err(invalid(
            &field("properties"),
            format!("carry {properties_bytes} bytes; the limit is {PROPERTIES_BYTES_MAX}"),
        ));
    }
    if m.properties.keys().any(|k| k.trim().is_empty()) {
        return Err(invalid(&field("properties"), "must not have a blank key"));
    }
    Ok(())
}

/// Checks an append against the topic it targets.
pub fn validate_append_target(
    topic: Option<&TopicConfig>,
    topic_name: &str,
    queue_id: u32,
    messages: &[NewMessage],
) -> Result<(), Rejection> {
    let topic = topic.ok_or_else(|| Rejection::UnknownTopic(topic_name.to_string()))?;
    if queue_id >= topic.queue_count {
        return Err(Rejection::QueueOutOfRange {
            topic: topic.name.clone(),
            queue_id,
            queue_count: topic.queue_count,
        });
    }
    if !topic.permission.writable() {
        return Err(Rejection::NotWritable(topic.name.clone()));
    }
    if let Some(m) = messages.iter().find(|m| !topic.accepts(m.kind)) {
        return Err(Rejection::KindNotAccepted {
            topic: topic.name.clone(),
            kind: m.kind,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::MessageKind;

    fn msg(body: &[u8]) -> NewMessage {
        NewMessage {
            message_id: "id-1".into(),
            tag: None,
            keys: vec![],
            properties: Default::default(),
            body: bytes::Bytes::copy_from_slice(body),
            born_timestamp_ms: 0,
            kind: MessageKind::Normal,
            message_group: None,
            delivery_timestamp_ms: None,
        }
    }

    #[test]
    fn reserved_prefixes_are_refused_for_users_only() {
        assert!(validate_user_topic_name("topic", "%DLQ%orders").is_err());
        assert!(validate_user_topic_name("topic", "rmq_sys_x").is_err());
        assert!(validate_user_topic_name("topic", "orders%DLQ%").is_ok());
        assert!(
            validate_name("topic", "%DLQ%orders").is_ok(),
            "the broker may"
        );
    }

    #[test]
    fn names_follow_rocketmq_rules() {
        assert!(validate_name("topic", "Topic_A-1%|x").is_ok());
        assert!(validate_name("topic", "").is_err());
        assert!(validate_name("topic", "a b").is_err());
        assert!(validate_name("topic", &"a".repeat(NAME_LEN_MAX)).is_ok());
        let err = validate_name("topic", &"a".repeat(NAME_LEN_MAX + 1)).unwrap_err();
        assert!(err.to_string().contains("127"), "{err}");
    }

    #[test]
    fn batch_limits_name_the_field() {
        let err = validate_batch(&[msg(b"")]).unwrap_err();
        assert!(err.to_string().contains("messages[0].body"), "{err}");
        let mut m = msg(b"x");
        m.tag = Some("a|b".into());
        assert!(
            validate_batch(&[m])
                .unwrap_err()
                .to_string()
                .contains("tag")
        );
        let big = vec![0u8; BODY_BYTES_MAX + 1];
        assert!(validate_batch(&[msg(&big)]).is_err());
        assert!(validate_batch(&[]).is_err());
        let many: Vec<_> = (0..=BATCH_MESSAGES_MAX).map(|_| msg(b"x")).collect();
        assert!(validate_batch(&many).is_err());
        assert!(validate_batch(&[msg(b"ok")]).is_ok());
    }
}
