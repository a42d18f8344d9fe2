//! QueryRoute, Heartbeat, QueryAssignment and NotifyClientTermination.
//!
//! Until the nameserver exists, a broker node answers routes for its own broker group: one
//! `MessageQueue` per queue of the topic, the broker's endpoint being the group's leader
//! (any member accepts every call; followers forward writes).

use std::net::IpAddr;

use rocketraft_proto::rocketmq::v2 as pb;
use rocketraft_raft_store::{MessageKind, Permission, TopicConfig};

use super::ServiceContext;
use super::status::{ClientInfo, ok};

fn permission(p: Permission) -> pb::Permission {
    match p {
        Permission::Read => pb::Permission::Read,
        Permission::Write => pb::Permission::Write,
        Permission::ReadWrite => pb::Permission::ReadWrite,
    }
}

pub fn message_type(k: MessageKind) -> pb::MessageType {
    match k {
        MessageKind::Normal => pb::MessageType::Normal,
        MessageKind::Fifo => pb::MessageType::Fifo,
        MessageKind::Delay => pb::MessageType::Delay,
        MessageKind::Transaction => pb::MessageType::Transaction,
    }
}

/// Where clients should send a broker group's data-plane calls: one address, the leader's
/// (or this node's while no leader is known). Any member would do, since followers forward
/// writes, but the leader saves the hop.
///
/// Only one address, because grpc-python (the official Python client) turns a multi-address
/// endpoint into an HTTP/2 `:authority` of `a:1,b:2,...`, which a conforming HTTP/2 server
/// (ours, h2) rejects with RST_STREAM PROTOCOL_ERROR.
pub fn group_endpoints(ctx: &ServiceContext) -> pb::Endpoints {
    let metrics = ctx.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let target = metrics.current_leader.unwrap_or(metrics.id);
    let addr = membership
        .get_node(&target)
        .map(|n| n.addr.clone())
        .unwrap_or_else(|| ctx.advertised_addr.clone());
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr.as_str(), "0"));
    let scheme = match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => pb::AddressScheme::IPv4,
        Ok(IpAddr::V6(_)) => pb::AddressScheme::IPv6,
        Err(_) => pb::AddressScheme::DomainName,
    };
    pb::Endpoints {
        scheme: scheme as i32,
        addresses: vec![pb::Address {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: port.parse().unwrap_or(0),
        }],
    }
}

pub fn queues(
    ctx: &ServiceContext,
    resource: &pb::Resource,
    topic: &TopicConfig,
) -> Vec<pb::MessageQueue> {
    let broker = pb::Broker {
        name: ctx.group.clone(),
        id: 0,
        endpoints: Some(group_endpoints(ctx)),
    };
    let kinds: Vec<i32> = if topic.message_kinds.is_empty() {
        [
            MessageKind::Normal,
            MessageKind::Fifo,
            MessageKind::Delay,
            MessageKind::Transaction,
        ]
        .into_iter()
        .map(|k| message_type(k) as i32)
        .collect()
    } else {
        topic
            .message_kinds
            .iter()
            .map(|k| message_type(*k) as i32)
            .collect()
    };
    (0..topic.queue_count)
        .map(|id| pb::MessageQueue {
            topic: Some(resource.clone()),
            id: id as i32,
            permission: permission(topic.permission) as i32,
            broker: Some(broker.clone()),
            accept_message_types: kinds.clone(),
        })
        .collect()
}

pub fn query_route(
    ctx: &ServiceContext,
    client: &ClientInfo,
    req: pb::QueryRouteRequest,
) -> pb::QueryRouteResponse {
    let Some(resource) = req.topic else {
        return pb::QueryRouteResponse {
            status: Some(client.status(pb::Code::IllegalTopic, "topic is required")),
            message_queues: vec![],
        };
    };
    if let Err(e) = rocketraft_raft_store::limits::validate_name("topic", &resource.name) {
        return pb::QueryRouteResponse {
            status: Some(client.status(pb::Code::IllegalTopic, e.to_string())),
            message_queues: vec![],
        };
    }
    match ctx.reader.topic(&resource.name) {
        None => pb::QueryRouteResponse {
            status: Some(client.status(
                pb::Code::TopicNotFound,
                format!("topic {:?} does not exist", resource.name),
            )),
            message_queues: vec![],
        },
        Some(topic) => pb::QueryRouteResponse {
            status: Some(ok()),
            message_queues: queues(ctx, &resource, &topic),
        },
    }
}

/// Producers and consumers heartbeat every 10-30 s; there is no per-client state to renew
/// yet, so this only confirms the node is serving.
pub fn heartbeat(_req: pb::HeartbeatRequest) -> pb::HeartbeatResponse {
    pb::HeartbeatResponse { status: Some(ok()) }
}

pub fn notify_client_termination(
    ctx: &ServiceContext,
    client: &ClientInfo,
    _req: pb::NotifyClientTerminationRequest,
) -> pb::NotifyClientTerminationResponse {
    ctx.forget_client(&client.client_id);
    pb::NotifyClientTerminationResponse { status: Some(ok()) }
}
