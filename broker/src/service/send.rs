//! SendMessage: validate with the codes the official clients expect, pick the queue (the
//! client's choice is ignored, as RocketMQ's proxy does: Python never sends one), append
//! through Raft, answer one result entry per message in request order.
//!
//! NORMAL and FIFO are supported. DELAY and TRANSACTION messages are refused with
//! NOT_IMPLEMENTED until their timer and half-message state exist (docs/design.md).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use rocketraft_proto::rocketmq::v2 as pb;
use rocketraft_raft_store::{Command, CommandResult, MessageKind, NewMessage, limits};

use super::ServiceContext;
use super::status::{ClientInfo, ok};
use crate::proposer::Proposed;

/// RocketMQ's limit on a FIFO message group's length.
const MESSAGE_GROUP_LEN_MAX: usize = 64;

/// A refusal: the code and a message naming the field.
type Refusal = (pb::Code, String);

fn millis(ts: &Option<prost_types::Timestamp>) -> i64 {
    ts.as_ref()
        .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
        .unwrap_or(0)
}

fn kind_of(m: &pb::Message, sp: &pb::SystemProperties) -> Result<MessageKind, Refusal> {
    let declared =
        pb::MessageType::try_from(sp.message_type).unwrap_or(pb::MessageType::Unspecified);
    let kind = match declared {
        pb::MessageType::Normal => MessageKind::Normal,
        pb::MessageType::Fifo => MessageKind::Fifo,
        pb::MessageType::Delay => MessageKind::Delay,
        pb::MessageType::Transaction => MessageKind::Transaction,
        pb::MessageType::Unspecified if sp.message_group.is_some() => MessageKind::Fifo,
        pb::MessageType::Unspecified if sp.delivery_timestamp.is_some() => MessageKind::Delay,
        pb::MessageType::Unspecified => MessageKind::Normal,
        other => {
            return Err((
                pb::Code::NotImplemented,
                format!(
                    "message_type {} is not supported by rocketraft",
                    other.as_str_name()
                ),
            ));
        }
    };
    if kind == MessageKind::Fifo && sp.message_group.is_none() {
        return Err((
            pb::Code::MessagePropertyConflictWithType,
            "FIFO message requires system_properties.message_group".into(),
        ));
    }
    if matches!(kind, MessageKind::Delay | MessageKind::Transaction) {
        let topic = m
            .topic
            .as_ref()
            .map(|t| t.name.as_str())
            .unwrap_or_default();
        return Err((
            pb::Code::NotImplemented,
            format!("{kind:?} messages are not supported by rocketraft yet (topic {topic:?})"),
        ));
    }
    Ok(kind)
}

/// Checks one message and converts it into the domain type.
fn convert(i: usize, m: pb::Message) -> Result<NewMessage, Refusal> {
    let field = |name: &str| format!("messages[{i}].{name}");
    let sp = m.system_properties.clone().ok_or_else(|| {
        (
            pb::Code::MessageCorrupted,
            format!("{} is required", field("system_properties")),
        )
    })?;
    if sp.message_id.trim().is_empty() {
        return Err((
            pb::Code::IllegalMessageId,
            format!("{} must not be blank", field("message_id")),
        ));
    }
    if m.body.is_empty() {
        return Err((
            pb::Code::MessageBodyEmpty,
            format!("{} must not be empty", field("body")),
        ));
    }
    if m.body.len() > limits::BODY_BYTES_MAX {
        return Err((
            pb::Code::MessageBodyTooLarge,
            format!(
                "{} is {} bytes; the limit is {}",
                field("body"),
                m.body.len(),
                limits::BODY_BYTES_MAX
            ),
        ));
    }
    if let Some(tag) = &sp.tag
        && (tag.trim().is_empty() || tag.contains('|'))
    {
        return Err((
            pb::Code::IllegalMessageTag,
            format!("{} must not be blank or contain '|'", field("tag")),
        ));
    }
    if sp.keys.iter().any(|k| k.trim().is_empty()) {
        return Err((
            pb::Code::IllegalMessageKey,
            format!("{} must not contain a blank key", field("keys")),
        ));
    }
    if let Some(g) = &sp.message_group
        && (g.trim().is_empty() || g.len() > MESSAGE_GROUP_LEN_MAX)
    {
        return Err((
            pb::Code::IllegalMessageGroup,
            format!(
                "{} must be 1 to {MESSAGE_GROUP_LEN_MAX} characters",
                field("message_group")
            ),
        ));
    }
    if m.user_properties.keys().any(|k| k.trim().is_empty()) {
        return Err((
            pb::Code::IllegalMessagePropertyKey,
            format!("{} must not have a blank key", field("user_properties")),
        ));
    }
    let properties_bytes: usize = m
        .user_properties
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if m.user_properties.len() > limits::PROPERTIES_MAX
        || properties_bytes > limits::PROPERTIES_BYTES_MAX
    {
        return Err((
            pb::Code::MessagePropertiesTooLarge,
            format!(
                "{} has {} entries and {properties_bytes} bytes; the limits are {} and {}",
                field("user_properties"),
                m.user_properties.len(),
                limits::PROPERTIES_MAX,
                limits::PROPERTIES_BYTES_MAX
            ),
        ));
    }
    let kind = kind_of(&m, &sp)?;
    Ok(NewMessage {
        message_id: sp.message_id,
        tag: sp.tag,
        keys: sp.keys,
        properties: m.user_properties.into_iter().collect(),
        body: m.body,
        born_timestamp_ms: millis(&sp.born_timestamp),
        kind,
        message_group: sp.message_group,
        delivery_timestamp_ms: sp.delivery_timestamp.as_ref().map(|t| millis(&Some(*t))),
    })
}

fn refused(client: &ClientInfo, (code, message): Refusal) -> pb::SendMessageResponse {
    pb::SendMessageResponse {
        status: Some(client.status(code, message)),
        entries: vec![],
    }
}

/// A stable queue for a FIFO message group: the same group always lands on the same queue,
/// on every node and across restarts.
fn fifo_queue(group: &str, queue_count: u32) -> u32 {
    crc32fast::hash(group.as_bytes()) % queue_count
}

/// What happened to a send on this node.
pub enum Sent {
    Done(pb::SendMessageResponse),
    /// Not the leader; the leader serves at this address.
    Forward(String),
}

pub async fn send_message(
    ctx: &ServiceContext,
    client: &ClientInfo,
    req: &pb::SendMessageRequest,
) -> Result<Sent, tonic::Status> {
    let Some(first) = req.messages.first() else {
        return Ok(Sent::Done(refused(
            client,
            (
                pb::Code::MessageCorrupted,
                "messages: at least one message is required".into(),
            ),
        )));
    };
    let topic_name = first
        .topic
        .as_ref()
        .map(|t| t.name.clone())
        .unwrap_or_default();
    if let Err(e) = limits::validate_name("topic", &topic_name) {
        return Ok(Sent::Done(refused(
            client,
            (pb::Code::IllegalTopic, e.to_string()),
        )));
    }
    if let Some(i) = req
        .messages
        .iter()
        .position(|m| m.topic.as_ref().map(|t| t.name.as_str()) != Some(topic_name.as_str()))
    {
        return Ok(Sent::Done(refused(
            client,
            (
                pb::Code::IllegalTopic,
                format!(
                    "messages[{i}].topic differs from messages[0].topic {topic_name:?}; one topic per request"
                ),
            ),
        )));
    }
    let Some(topic) = ctx.reader.topic(&topic_name) else {
        // A follower may not have applied a just-created topic yet; the leader decides.
        if let Some(leader) = ctx.leader_addr_if_elsewhere() {
            return Ok(Sent::Forward(leader));
        }
        return Ok(Sent::Done(refused(
            client,
            (
                pb::Code::TopicNotFound,
                format!("topic {topic_name:?} does not exist"),
            ),
        )));
    };
    let mut converted = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        match convert(i, m.clone()) {
            Ok(nm) => converted.push(nm),
            Err(r) => return Ok(Sent::Done(refused(client, r))),
        }
    }
    if let Some(m) = converted.iter().find(|m| !topic.accepts(m.kind)) {
        return Ok(Sent::Done(refused(
            client,
            (
                pb::Code::MessagePropertyConflictWithType,
                format!("topic {topic_name:?} does not accept {:?} messages", m.kind),
            ),
        )));
    }
    // Non-FIFO messages of one request share a queue, so a batch stays one Raft entry.
    let round_robin = ctx.next_queue.fetch_add(1, Ordering::Relaxed) % topic.queue_count;
    let mut by_queue: BTreeMap<u32, Vec<(usize, NewMessage)>> = BTreeMap::new();
    for (i, m) in converted.into_iter().enumerate() {
        let queue_id = match &m.message_group {
            Some(g) => fifo_queue(g, topic.queue_count),
            None => round_robin,
        };
        by_queue.entry(queue_id).or_default().push((i, m));
    }

    let now_ms = crate::admin::now_ms();
    let mut entries: Vec<Option<pb::SendResultEntry>> = vec![None; req.messages.len()];
    for (n, (queue_id, batch)) in by_queue.into_iter().enumerate() {
        let (indexes, messages): (Vec<usize>, Vec<NewMessage>) = batch.into_iter().unzip();
        if let Err(e) = limits::validate_batch(&messages) {
            return Ok(Sent::Done(refused(
                client,
                (pb::Code::BadRequest, e.to_string()),
            )));
        }
        let ids: Vec<String> = messages.iter().map(|m| m.message_id.clone()).collect();
        let cmd = Command::Append {
            topic: topic_name.clone(),
            queue_id,
            store_timestamp_ms: now_ms,
            messages,
        };
        match ctx.proposer.propose(cmd).await? {
            Proposed::Forward(addr) if n == 0 => return Ok(Sent::Forward(addr)),
            Proposed::Forward(_) => {
                return Err(tonic::Status::unavailable(
                    "leadership moved while the request was being appended; retry",
                ));
            }
            Proposed::Applied {
                result: CommandResult::Appended { first_offset, .. },
                ..
            } => {
                for (k, (i, id)) in indexes.into_iter().zip(ids).enumerate() {
                    entries[i] = Some(pb::SendResultEntry {
                        status: Some(ok()),
                        message_id: id,
                        transaction_id: String::new(),
                        offset: (first_offset + k as u64) as i64,
                        recall_handle: String::new(),
                    });
                }
            }
            Proposed::Applied {
                result: CommandResult::Rejected(r),
                ..
            } => {
                return Ok(Sent::Done(refused(
                    client,
                    (pb::Code::BadRequest, r.to_string()),
                )));
            }
            Proposed::Applied { result, .. } => {
                return Err(tonic::Status::internal(format!(
                    "unexpected append result {result:?}"
                )));
            }
        }
    }
    Ok(Sent::Done(pb::SendMessageResponse {
        status: Some(ok()),
        entries: entries.into_iter().flatten().collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_groups_map_to_stable_queues() {
        assert_eq!(fifo_queue("order-1", 8), fifo_queue("order-1", 8));
        let spread: std::collections::BTreeSet<_> =
            (0..100).map(|i| fifo_queue(&format!("g{i}"), 8)).collect();
        assert!(
            spread.len() > 4,
            "groups should spread over queues: {spread:?}"
        );
    }

    fn base() -> pb::Message {
        pb::Message {
            topic: Some(pb::Resource {
                resource_namespace: String::new(),
                name: "T".into(),
            }),
            user_properties: Default::default(),
            system_properties: Some(pb::SystemProperties {
                message_id: "01ABC".into(),
                message_type: pb::MessageType::Normal as i32,
                ..Default::default()
            }),
            body: bytes::Bytes::from_static(b"hello"),
        }
    }

    fn sp(m: &mut pb::Message) -> &mut pb::SystemProperties {
        m.system_properties
            .as_mut()
            .expect("base() sets system properties")
    }

    fn refusal(f: impl Fn(&mut pb::Message)) -> pb::Code {
        let mut m = base();
        f(&mut m);
        convert(0, m).expect_err("must be refused").0
    }

    #[test]
    fn conversion_refuses_with_the_codes_clients_expect() {
        assert!(convert(0, base()).is_ok());
        assert_eq!(
            refusal(|m| m.body = Default::default()),
            pb::Code::MessageBodyEmpty
        );
        assert_eq!(
            refusal(|m| sp(m).message_id = " ".into()),
            pb::Code::IllegalMessageId
        );
        assert_eq!(
            refusal(|m| sp(m).tag = Some("a|b".into())),
            pb::Code::IllegalMessageTag
        );
        assert_eq!(
            refusal(|m| sp(m).keys = vec!["".into()]),
            pb::Code::IllegalMessageKey
        );
        assert_eq!(
            refusal(|m| sp(m).message_type = pb::MessageType::Fifo as i32),
            pb::Code::MessagePropertyConflictWithType
        );
        assert_eq!(
            refusal(|m| sp(m).message_type = pb::MessageType::Delay as i32),
            pb::Code::NotImplemented
        );
        assert_eq!(
            refusal(|m| m.system_properties = None),
            pb::Code::MessageCorrupted
        );
    }
}
