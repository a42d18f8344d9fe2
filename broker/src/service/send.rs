//! SendMessage: validate with the codes the official clients expect, pick the queue (the
//! client's choice is ignored, as RocketMQ's proxy does: Python never sends one), append
//! through Raft, answer one result entry per message in request order.
//!
//! DELAY messages due later are scheduled (held in the replicated timer table until the
//! leader delivers them, see [`super::delay`]); TRANSACTION messages are prepared as half
//! messages, invisible until EndTransaction (see [`super::transaction`]).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use rocketraft_proto::rocketmq::v2 as pb;
use rocketraft_raft_store::{Command, CommandResult, MessageKind, NewMessage, limits};

use super::message::millis;
use super::status::{ClientInfo, ok};
use super::{Outcome, Refusal, ServiceContext};

/// RocketMQ's limit on a FIFO message group's length.
const MESSAGE_GROUP_LEN_MAX: usize = 64;
/// How far ahead a DELAY message may be scheduled (RocketMQ's timer allows 3 days by
/// default; we allow 40 days, the timer table having no wheel to overflow).
pub const DELAY_MS_MAX: i64 = 40 * 24 * 3600 * 1000;

fn kind_of(sp: &pb::SystemProperties) -> Result<MessageKind, Refusal> {
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
    if kind == MessageKind::Delay && sp.delivery_timestamp.is_none() {
        return Err((
            pb::Code::MessagePropertyConflictWithType,
            "DELAY message requires system_properties.delivery_timestamp".into(),
        ));
    }
    Ok(kind)
}

/// The body as the application wrote it. The Java client gzips bodies over 4 KiB (and says
/// so in `body_encoding`); it is stored and delivered uncompressed, so every consumer and
/// filter sees the same bytes. Decompression stops past the body limit, so a small
/// compressed body cannot expand without bound.
fn decode_body(field: &str, encoding: i32, body: bytes::Bytes) -> Result<bytes::Bytes, Refusal> {
    use std::io::Read;
    match pb::Encoding::try_from(encoding) {
        Ok(pb::Encoding::Gzip) => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .take(limits::BODY_BYTES_MAX as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| {
                    (
                        pb::Code::MessageCorrupted,
                        format!("{field} is not valid gzip: {e}"),
                    )
                })?;
            Ok(out.into())
        }
        Ok(pb::Encoding::Identity | pb::Encoding::Unspecified) => Ok(body),
        Err(_) => Err((
            pb::Code::MessageCorrupted,
            format!("{field}: body_encoding {encoding} is unknown"),
        )),
    }
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
    let body = decode_body(&field("body"), sp.body_encoding, m.body)?;
    if body.len() > limits::BODY_BYTES_MAX {
        return Err((
            pb::Code::MessageBodyTooLarge,
            format!(
                "{} is {} bytes; the limit is {}",
                field("body"),
                body.len(),
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
    let kind = kind_of(&sp)?;
    Ok(NewMessage {
        message_id: sp.message_id,
        tag: sp.tag,
        keys: sp.keys,
        properties: m.user_properties.into_iter().collect(),
        body,
        born_timestamp_ms: sp.born_timestamp.as_ref().map_or(0, millis),
        kind,
        message_group: sp.message_group,
        delivery_timestamp_ms: sp.delivery_timestamp.as_ref().map(millis),
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

/// How one message is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Route {
    Append,
    /// DELAY, due later.
    Schedule,
    /// TRANSACTION: one half message per command, each with its own transaction id.
    Prepare(usize),
}

pub async fn send_message(
    ctx: &ServiceContext,
    client: &ClientInfo,
    req: &pb::SendMessageRequest,
) -> Result<Outcome<pb::SendMessageResponse>, tonic::Status> {
    let refuse = |r: Refusal| Ok(Outcome::Done(refused(client, r)));
    let Some(first) = req.messages.first() else {
        return refuse((
            pb::Code::MessageCorrupted,
            "messages: at least one message is required".into(),
        ));
    };
    let topic_name = first
        .topic
        .as_ref()
        .map(|t| t.name.clone())
        .unwrap_or_default();
    if let Err(e) = limits::validate_name("topic", &topic_name) {
        return refuse((pb::Code::IllegalTopic, e.to_string()));
    }
    if let Some(i) = req
        .messages
        .iter()
        .position(|m| m.topic.as_ref().map(|t| t.name.as_str()) != Some(topic_name.as_str()))
    {
        return refuse((
            pb::Code::IllegalTopic,
            format!(
                "messages[{i}].topic differs from messages[0].topic {topic_name:?}; one topic per request"
            ),
        ));
    }
    let Some(topic) = super::route::topic_or_auto_create(ctx, &topic_name).await? else {
        // A follower may not have applied a just-created topic yet; the leader decides
        // (once there is one: a node that knows no leader cannot tell either).
        if let Some(leader) = ctx.leader_elsewhere_once_known().await {
            return Ok(Outcome::Forward(leader));
        }
        return refuse((
            pb::Code::TopicNotFound,
            format!("topic {topic_name:?} does not exist"),
        ));
    };
    if let Err(why) = ctx.refuse_writes() {
        return refuse((pb::Code::InternalServerError, why));
    }
    let now_ms = crate::admin::now_ms();
    let mut converted = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        match convert(i, m.clone()) {
            Ok(nm) => converted.push(nm),
            Err(r) => return refuse(r),
        }
    }
    if let Some(m) = converted.iter().find(|m| !topic.accepts(m.kind)) {
        return refuse((
            pb::Code::MessagePropertyConflictWithType,
            format!("topic {topic_name:?} does not accept {:?} messages", m.kind),
        ));
    }
    if let Some((i, m)) = converted.iter().enumerate().find(|(_, m)| {
        m.kind == MessageKind::Delay
            && m.delivery_timestamp_ms
                .is_some_and(|t| t > now_ms.saturating_add(DELAY_MS_MAX))
    }) {
        return refuse((
            pb::Code::IllegalDeliveryTime,
            format!(
                "messages[{i}].system_properties.delivery_timestamp is {} ms ahead; the limit is {DELAY_MS_MAX} ms",
                m.delivery_timestamp_ms.unwrap_or_default() - now_ms
            ),
        ));
    }
    // Non-FIFO messages of one request share a queue, so a batch stays one Raft entry.
    let round_robin = ctx.next_queue.fetch_add(1, Ordering::Relaxed) % topic.queue_count;
    let mut by_route: BTreeMap<(Route, u32), Vec<(usize, NewMessage)>> = BTreeMap::new();
    for (i, m) in converted.into_iter().enumerate() {
        let queue_id = match &m.message_group {
            Some(g) => fifo_queue(g, topic.queue_count),
            None => round_robin,
        };
        let route = match m.kind {
            MessageKind::Transaction => Route::Prepare(i),
            MessageKind::Delay if m.delivery_timestamp_ms.is_some_and(|t| t > now_ms) => {
                Route::Schedule
            }
            _ => Route::Append,
        };
        by_route.entry((route, queue_id)).or_default().push((i, m));
    }

    let mut entries: Vec<Option<pb::SendResultEntry>> = vec![None; req.messages.len()];
    for (n, ((route, queue_id), batch)) in by_route.into_iter().enumerate() {
        let (indexes, mut messages): (Vec<usize>, Vec<NewMessage>) = batch.into_iter().unzip();
        if let Err(e) = limits::validate_batch(&messages) {
            return refuse((pb::Code::BadRequest, e.to_string()));
        }
        let ids: Vec<String> = messages.iter().map(|m| m.message_id.clone()).collect();
        let mut transaction_id = String::new();
        let cmd = match route {
            Route::Append => Command::Append {
                topic: topic_name.clone(),
                queue_id,
                store_timestamp_ms: now_ms,
                messages,
            },
            Route::Schedule => Command::Schedule {
                topic: topic_name.clone(),
                queue_id,
                store_timestamp_ms: now_ms,
                messages,
            },
            Route::Prepare(_) => {
                let message = messages.remove(0);
                transaction_id = super::transaction::new_transaction_id(ctx, &message.message_id);
                Command::Prepare {
                    topic: topic_name.clone(),
                    queue_id,
                    store_timestamp_ms: now_ms,
                    transaction_id: transaction_id.clone(),
                    message,
                }
            }
        };
        #[cfg(feature = "fault-injection")]
        let proposed = crate::fault::propose_send(ctx, cmd).await?;
        #[cfg(not(feature = "fault-injection"))]
        let proposed = super::propose(ctx, cmd).await?;
        let offsets = match proposed {
            Outcome::Forward(addr) if n == 0 => return Ok(Outcome::Forward(addr)),
            Outcome::Forward(_) => {
                return Err(tonic::Status::unavailable(
                    "leadership moved while the request was being appended; retry",
                ));
            }
            Outcome::Done(CommandResult::Appended { offsets, .. }) => Some(offsets),
            // Scheduled and prepared messages get their offset when they become visible.
            Outcome::Done(CommandResult::Scheduled { .. } | CommandResult::Prepared) => None,
            Outcome::Done(CommandResult::Rejected(r)) => {
                return refuse((pb::Code::BadRequest, r.to_string()));
            }
            Outcome::Done(result) => {
                return Err(tonic::Status::internal(format!(
                    "unexpected append result {result:?}"
                )));
            }
        };
        for (k, (i, id)) in indexes.into_iter().zip(ids).enumerate() {
            entries[i] = Some(pb::SendResultEntry {
                status: Some(ok()),
                message_id: id,
                transaction_id: transaction_id.clone(),
                offset: offsets
                    .as_ref()
                    .and_then(|o| o.get(k))
                    .map_or(-1, |(_, o)| *o as i64),
                recall_handle: String::new(),
            });
        }
    }
    Ok(Outcome::Done(pb::SendMessageResponse {
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
            pb::Code::MessagePropertyConflictWithType
        );
        assert_eq!(
            refusal(|m| m.system_properties = None),
            pb::Code::MessageCorrupted
        );
    }

    #[test]
    fn gzipped_bodies_are_stored_as_written_and_bombs_refused() {
        use std::io::Write;
        let gzip = |data: &[u8]| {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(data).expect("in memory");
            bytes::Bytes::from(enc.finish().expect("in memory"))
        };
        let text = "payload ".repeat(2000);
        let mut m = base();
        m.body = gzip(text.as_bytes());
        sp(&mut m).body_encoding = pb::Encoding::Gzip as i32;
        let stored = convert(0, m).expect("valid gzip");
        assert_eq!(stored.body, text.as_bytes());

        // Decompressing past the body limit is refused, not buffered.
        let bomb = vec![0u8; limits::BODY_BYTES_MAX + 1];
        assert_eq!(
            refusal(|m| {
                m.body = gzip(&bomb);
                sp(m).body_encoding = pb::Encoding::Gzip as i32;
            }),
            pb::Code::MessageBodyTooLarge
        );
        assert_eq!(
            refusal(|m| sp(m).body_encoding = pb::Encoding::Gzip as i32),
            pb::Code::MessageCorrupted,
            "not gzip at all"
        );
        assert_eq!(
            refusal(|m| sp(m).body_encoding = 77),
            pb::Code::MessageCorrupted
        );
    }
}
