//! Stored messages as the official clients receive them, and receipt handles.

use rocketraft_proto::rocketmq::v2 as pb;
use rocketraft_raft_store::{Handle, MessageKind, StoredMessage};

use super::route::message_type;

pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn millis(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos) / 1_000_000)
}

pub fn duration_ms(d: &prost_types::Duration) -> i64 {
    d.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(d.nanos) / 1_000_000)
}

/// Receipt handles are opaque to clients; ours name the queue, the offset, the delivery (the
/// log index that made it) and the broker group, prefixed with a version so the format can
/// change. The group comes last (names have no dots, but it needs no parsing either way): a
/// nameserver relaying an ack for a topic spread over several groups reads it to find the
/// group that handed the message out.
pub fn encode_handle(group: &str, h: &Handle) -> String {
    format!("rr2.{}.{}.{}.{group}", h.queue_id, h.offset, h.generation)
}

/// The handle and the broker group it names.
pub fn decode_handle(s: &str) -> Option<(Handle, &str)> {
    let mut parts = s.strip_prefix("rr2.")?.splitn(4, '.');
    let h = Handle {
        queue_id: parts.next()?.parse().ok()?,
        offset: parts.next()?.parse().ok()?,
        generation: parts.next()?.parse().ok()?,
    };
    let group = parts.next().filter(|g| !g.is_empty())?;
    Some((h, group))
}

/// The broker group a receipt handle names, if it is one of ours.
pub fn handle_group(s: &str) -> Option<&str> {
    decode_handle(s).map(|(_, g)| g)
}

/// What a delivery adds to a message: present for pops, absent for pulls and checks.
pub struct Delivery<'a> {
    /// The broker group handing the message out, named in the receipt handle.
    pub group: &'a str,
    pub handle: Handle,
    pub attempt: u32,
    pub invisible_ms: i64,
}

/// `m` as a client receives it. `namespace` echoes the requester's resource namespace.
pub fn to_pb(
    m: StoredMessage,
    namespace: &str,
    store_host: &str,
    delivery: Option<&Delivery<'_>>,
) -> pb::Message {
    // Takes the message by value: a pull of a thousand messages moves their bodies and
    // strings into the answer rather than copying each.
    let nm = m.message;
    let mut sp = pb::SystemProperties {
        // CRC32 in upper-case hex, the form the Python client verifies.
        body_digest: Some(pb::Digest {
            r#type: pb::DigestType::Crc32 as i32,
            checksum: format!("{:08X}", crc32fast::hash(&nm.body)),
        }),
        tag: nm.tag,
        keys: nm.keys,
        message_id: nm.message_id,
        body_encoding: pb::Encoding::Identity as i32,
        message_type: message_type(nm.kind) as i32,
        born_timestamp: Some(timestamp(nm.born_timestamp_ms)),
        born_host: String::new(),
        store_timestamp: Some(timestamp(m.store_timestamp_ms)),
        store_host: store_host.to_string(),
        queue_id: m.queue_id as i32,
        queue_offset: Some(m.offset as i64),
        message_group: nm.message_group,
        ..Default::default()
    };
    if nm.kind == MessageKind::Delay {
        sp.delivery_timestamp = nm.delivery_timestamp_ms.map(timestamp);
    }
    if let Some(d) = delivery {
        sp.receipt_handle = Some(encode_handle(d.group, &d.handle));
        sp.delivery_attempt = Some(d.attempt as i32);
        sp.invisible_duration = Some(prost_types::Duration {
            seconds: d.invisible_ms / 1000,
            nanos: ((d.invisible_ms % 1000) * 1_000_000) as i32,
        });
    }
    pb::Message {
        topic: Some(pb::Resource {
            resource_namespace: namespace.to_string(),
            name: m.topic,
        }),
        user_properties: nm.properties.into_iter().collect(),
        system_properties: Some(sp),
        body: nm.body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_reject_garbage() {
        let h = Handle {
            queue_id: 3,
            offset: 17,
            generation: 99,
        };
        let encoded = encode_handle("g-1", &h);
        assert_eq!(decode_handle(&encoded), Some((h, "g-1")));
        assert_eq!(handle_group(&encoded), Some("g-1"));
        for bad in [
            "",
            "rr2.",
            "rr2.1.2.3",
            "rr2.1.2.3.",
            "rr1.1.2.3",
            "rr2.a.2.3.g",
            "rr2.1.-2.3.g",
        ] {
            assert_eq!(decode_handle(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn timestamps_keep_milliseconds() {
        assert_eq!(millis(&timestamp(1_700_000_000_123)), 1_700_000_000_123);
        assert_eq!(millis(&timestamp(-1)), -1);
    }
}
