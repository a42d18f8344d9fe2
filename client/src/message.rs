//! Messages as the application builds them and as consumers receive them, and message ids
//! in RocketMQ's format.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rocketraft_proto::rocketmq::v2 as pb;

use crate::error::{Error, Result};

/// A message to send. Build it with [`Message::new`] and the `with_*` methods.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub body: Bytes,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub properties: BTreeMap<String, String>,
    /// FIFO: messages of one group are stored and consumed in send order.
    pub message_group: Option<String>,
    /// DELAY: not delivered before this time.
    pub deliver_at: Option<SystemTime>,
}

impl Message {
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            body: body.into(),
            tag: None,
            keys: Vec::new(),
            properties: BTreeMap::new(),
            message_group: None,
            deliver_at: None,
        }
    }

    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    pub fn with_keys<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.keys = keys.into_iter().map(Into::into).collect();
        self
    }

    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    pub fn with_message_group(mut self, group: impl Into<String>) -> Self {
        self.message_group = Some(group.into());
        self
    }

    pub fn deliver_at(mut self, at: SystemTime) -> Self {
        self.deliver_at = Some(at);
        self
    }

    pub fn deliver_after(self, delay: Duration) -> Self {
        self.deliver_at(SystemTime::now() + delay)
    }

    /// Checks what the client can check before sending (the broker checks the rest).
    pub(crate) fn validate(&self) -> Result<()> {
        if self.topic.is_empty() {
            return Err(Error::invalid("topic", "is empty"));
        }
        if self.body.is_empty() {
            return Err(Error::invalid("body", "is empty"));
        }
        if let Some(tag) = &self.tag
            && (tag.trim().is_empty() || tag.contains('|'))
        {
            return Err(Error::invalid(
                "tag",
                format!("{tag:?} is blank or contains '|'"),
            ));
        }
        if self.message_group.is_some() && self.deliver_at.is_some() {
            return Err(Error::invalid(
                "message_group",
                "a message is FIFO or delayed, not both",
            ));
        }
        Ok(())
    }

    /// The wire form; `kind` is the message type, `compress_over` the body size above which
    /// the body is gzipped.
    pub(crate) fn to_pb(
        &self,
        message_id: String,
        kind: pb::MessageType,
        compress_over: Option<usize>,
    ) -> pb::Message {
        let (body, encoding) = match compress_over {
            Some(limit) if self.body.len() > limit => match gzip(&self.body) {
                Some(z) if z.len() < self.body.len() => (Bytes::from(z), pb::Encoding::Gzip),
                _ => (self.body.clone(), pb::Encoding::Identity),
            },
            _ => (self.body.clone(), pb::Encoding::Identity),
        };
        pb::Message {
            topic: Some(resource(&self.topic)),
            user_properties: self
                .properties
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            system_properties: Some(pb::SystemProperties {
                tag: self.tag.clone(),
                keys: self.keys.clone(),
                message_id,
                body_encoding: encoding as i32,
                message_type: kind as i32,
                born_timestamp: Some(timestamp(SystemTime::now())),
                born_host: hostname(),
                message_group: self.message_group.clone(),
                delivery_timestamp: self.deliver_at.map(timestamp),
                ..Default::default()
            }),
            body,
        }
    }

    /// The message type the fields imply.
    pub(crate) fn kind(&self) -> pb::MessageType {
        if self.message_group.is_some() {
            pb::MessageType::Fifo
        } else if self.deliver_at.is_some() {
            pb::MessageType::Delay
        } else {
            pb::MessageType::Normal
        }
    }
}

/// A message as a consumer receives it.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    pub topic: String,
    pub message_id: String,
    pub body: Bytes,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub message_group: Option<String>,
    /// The broker group that stored it.
    pub broker_group: String,
    pub queue_id: i32,
    pub offset: i64,
    /// 1 for the first delivery to the consumer group.
    pub delivery_attempt: u32,
    pub born_at: Option<SystemTime>,
    pub stored_at: Option<SystemTime>,
    pub deliver_at: Option<SystemTime>,
    pub(crate) receipt_handle: String,
    /// The node that delivered it; acks go there first.
    pub(crate) endpoint: String,
}

impl ReceivedMessage {
    pub(crate) fn from_pb(
        m: pb::Message,
        broker_group: &str,
        endpoint: &str,
    ) -> Result<ReceivedMessage> {
        let sp = m.system_properties.unwrap_or_default();
        let body = match pb::Encoding::try_from(sp.body_encoding) {
            Ok(pb::Encoding::Gzip) => gunzip(&m.body).map(Bytes::from).ok_or_else(|| {
                Error::invalid(
                    "body",
                    format!("message {} is not valid gzip", sp.message_id),
                )
            })?,
            _ => m.body,
        };
        if let Some(d) = &sp.body_digest
            && d.r#type == pb::DigestType::Crc32 as i32
            && !d
                .checksum
                .eq_ignore_ascii_case(&format!("{:08X}", crc32fast::hash(&body)))
        {
            return Err(Error::invalid(
                "body",
                format!("message {} fails its CRC32 digest", sp.message_id),
            ));
        }
        Ok(ReceivedMessage {
            topic: m.topic.map(|t| t.name).unwrap_or_default(),
            message_id: sp.message_id,
            body,
            tag: sp.tag,
            keys: sp.keys,
            properties: m.user_properties.into_iter().collect(),
            message_group: sp.message_group,
            broker_group: broker_group.to_string(),
            queue_id: sp.queue_id,
            offset: sp.queue_offset.unwrap_or(-1),
            delivery_attempt: sp.delivery_attempt.unwrap_or(1).max(1) as u32,
            born_at: sp.born_timestamp.as_ref().map(system_time),
            stored_at: sp.store_timestamp.as_ref().map(system_time),
            deliver_at: sp.delivery_timestamp.as_ref().map(system_time),
            receipt_handle: sp.receipt_handle.unwrap_or_default(),
            endpoint: endpoint.to_string(),
        })
    }
}

pub(crate) fn resource(name: &str) -> pb::Resource {
    pb::Resource {
        resource_namespace: String::new(),
        name: name.to_string(),
    }
}

pub(crate) fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub(crate) fn system_time(t: &prost_types::Timestamp) -> SystemTime {
    UNIX_EPOCH
        + Duration::new(
            t.seconds.max(0) as u64,
            t.nanos.clamp(0, 999_999_999) as u32,
        )
}

pub(crate) fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

fn gzip(data: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).ok()?;
    enc.finish().ok()
}

/// Decompresses at most the broker's body limit (a larger result is refused).
fn gunzip(data: &[u8]) -> Option<Vec<u8>> {
    const LIMIT: u64 = 64 * 1024 * 1024;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .take(LIMIT + 1)
        .read_to_end(&mut out)
        .ok()?;
    (out.len() as u64 <= LIMIT).then_some(out)
}

/// A new message id in RocketMQ 5's layout (34 upper-case hex digits): version `01`, a
/// 6-byte process identity (random, where Java uses a MAC address), the low 2 bytes of the
/// pid, seconds since 2021-01-01 UTC (4 bytes) and a per-process sequence (4 bytes).
pub fn new_message_id() -> String {
    static IDENTITY: OnceLock<u64> = OnceLock::new();
    static SEQUENCE: AtomicU32 = AtomicU32::new(0);
    const EPOCH_2021: u64 = 1_609_459_200;
    let identity = *IDENTITY.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        h.finish() & 0xFFFF_FFFF_FFFF
    });
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .saturating_sub(EPOCH_2021) as u32;
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!(
        "01{identity:012X}{:04X}{secs:08X}{seq:08X}",
        std::process::id() as u16
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_have_rocketmq_layout_and_do_not_repeat() {
        let a = new_message_id();
        let b = new_message_id();
        assert_eq!(a.len(), 34, "{a}");
        assert!(a.starts_with("01"));
        assert!(
            a.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
        );
        assert_ne!(a, b);
        assert_eq!(a[..18], b[..18], "same process identity and pid");
    }

    #[test]
    fn large_bodies_are_gzipped_and_restored() {
        let body = "abc".repeat(10_000);
        let m =
            Message::new("T", body.clone()).to_pb("id".into(), pb::MessageType::Normal, Some(4096));
        let sp = m.system_properties.clone().unwrap_or_default();
        assert_eq!(sp.body_encoding, pb::Encoding::Gzip as i32);
        assert!(m.body.len() < body.len());
        let got = ReceivedMessage::from_pb(m, "g", "a").expect("decodes");
        assert_eq!(got.body, body.as_bytes());
        let small = Message::new("T", "x").to_pb("id".into(), pb::MessageType::Normal, Some(4096));
        assert_eq!(
            small.system_properties.unwrap_or_default().body_encoding,
            pb::Encoding::Identity as i32
        );
    }

    #[test]
    fn corrupt_bodies_are_reported_not_delivered() {
        let mut m = Message::new("T", "hello").to_pb("id".into(), pb::MessageType::Normal, None);
        if let Some(sp) = m.system_properties.as_mut() {
            sp.body_digest = Some(pb::Digest {
                r#type: pb::DigestType::Crc32 as i32,
                checksum: "00000000".into(),
            });
        }
        assert!(ReceivedMessage::from_pb(m, "g", "a").is_err());
    }
}
