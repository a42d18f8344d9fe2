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

pub fn permission(p: Permission) -> pb::Permission {
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

pub fn endpoint_address(addr: &str) -> (pb::AddressScheme, pb::Address) {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "0"));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let scheme = match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => pb::AddressScheme::IPv4,
        Ok(IpAddr::V6(_)) => pb::AddressScheme::IPv6,
        Err(_) => pb::AddressScheme::DomainName,
    };
    (
        scheme,
        pb::Address {
            host: host.to_string(),
            port: port.parse().unwrap_or(0),
        },
    )
}

/// Where a client should send a broker group's data-plane calls: the node it asked.
///
/// Every member serves every call (followers forward what must be proposed to the leader
/// and relay receives), so answering with the node the client already reaches keeps a
/// client working through a leader failover without a route refresh; the Rust 5.0.0 client
/// never refreshes routes at all. Only one address, because grpc-python turns a
/// multi-address endpoint into an HTTP/2 `:authority` of `a:1,b:2`, which a conforming server
/// (ours, h2) rejects. The price is one forwarding hop when the client's node is a follower.
pub fn group_endpoints(ctx: &ServiceContext) -> pb::Endpoints {
    let (scheme, address) = endpoint_address(&ctx.advertised_addr);
    pb::Endpoints {
        scheme: scheme as i32,
        addresses: vec![address],
    }
}

fn broker(ctx: &ServiceContext) -> pb::Broker {
    pb::Broker {
        name: ctx.group.clone(),
        id: 0,
        endpoints: Some(group_endpoints(ctx)),
    }
}

pub fn queues(
    ctx: &ServiceContext,
    resource: &pb::Resource,
    topic: &TopicConfig,
) -> Vec<pb::MessageQueue> {
    topic_queues(&broker(ctx), resource, topic)
}

/// One `MessageQueue` per queue of `topic`, served by `broker`.
pub fn topic_queues(
    broker: &pb::Broker,
    resource: &pb::Resource,
    topic: &TopicConfig,
) -> Vec<pb::MessageQueue> {
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

/// The topic `name`, created with the configured queue count if it does not exist and
/// auto-creation is on (a dev convenience, off by default). Creation goes through the
/// leader like any topic change.
pub async fn topic_or_auto_create(
    ctx: &ServiceContext,
    name: &str,
) -> Result<Option<TopicConfig>, tonic::Status> {
    if let Some(t) = ctx.reader.topic(name) {
        return Ok(Some(t));
    }
    // Reserved names (dead-letter topics...) are the broker's to create.
    if ctx.auto_create_topic_queues == 0
        || rocketraft_raft_store::limits::validate_user_topic_name("topic", name).is_err()
    {
        return Ok(None);
    }
    let cfg = TopicConfig::new(name, ctx.auto_create_topic_queues);
    match super::propose(ctx, rocketraft_raft_store::Command::PutTopic(cfg.clone())).await? {
        super::Outcome::Done(_) => {}
        super::Outcome::Forward(addr) => {
            // The leader creates it, unless someone did first; either way it knows the
            // topic this node has not applied yet.
            let mut leader = ctx.proposer.client(&addr)?;
            let _ = leader
                .put_topic(rocketraft_proto::admin::PutTopicRequest {
                    topic: Some(crate::convert::topic_to_pb(&cfg)),
                })
                .await;
            let got = leader
                .get_topic(rocketraft_proto::admin::GetTopicRequest {
                    name: name.to_string(),
                })
                .await?
                .into_inner();
            return got.topic.map(crate::convert::topic_from_pb).transpose();
        }
    }
    tracing::info!(topic = name, queues = cfg.queue_count, "auto-created topic");
    // Someone may have created it with more queues meanwhile (ours was then refused).
    Ok(Some(ctx.reader.topic(name).unwrap_or(cfg)))
}

pub async fn query_route(
    ctx: &ServiceContext,
    client: &ClientInfo,
    req: pb::QueryRouteRequest,
) -> Result<pb::QueryRouteResponse, tonic::Status> {
    let Some(resource) = req.topic else {
        return Ok(pb::QueryRouteResponse {
            status: Some(client.status(pb::Code::IllegalTopic, "topic is required")),
            message_queues: vec![],
        });
    };
    if let Err(e) = rocketraft_raft_store::limits::validate_name("topic", &resource.name) {
        return Ok(pb::QueryRouteResponse {
            status: Some(client.status(pb::Code::IllegalTopic, e.to_string())),
            message_queues: vec![],
        });
    }
    Ok(match topic_or_auto_create(ctx, &resource.name).await? {
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
    })
}

/// Which queues a push consumer of a group should receive from: for a clustering group one
/// assignment with queue id -1 (the broker pops across all queues); for an orderly group one
/// per queue, so that each queue's messages are consumed in order by one process queue.
pub fn query_assignment(
    ctx: &ServiceContext,
    client: &ClientInfo,
    req: pb::QueryAssignmentRequest,
) -> pb::QueryAssignmentResponse {
    let refuse = |code, message: String| pb::QueryAssignmentResponse {
        status: Some(client.status(code, message)),
        assignments: vec![],
    };
    let group = match super::receive::check_group(&req.group) {
        Ok(g) => g,
        Err((code, msg)) => return refuse(code, msg),
    };
    let topic = match super::receive::check_topic(ctx, &req.topic) {
        Ok(t) => t,
        Err((code, msg)) => return refuse(code, msg),
    };
    if !topic.permission.readable() {
        return refuse(
            pb::Code::Forbidden,
            format!("topic {:?} has no readable queue", topic.name),
        );
    }
    let resource = req.topic.clone().unwrap_or_default();
    let orderly = ctx.reader.group(&group).is_some_and(|g| g.orderly);
    let mq = |id: i32| pb::Assignment {
        message_queue: Some(pb::MessageQueue {
            topic: Some(resource.clone()),
            id,
            permission: permission(topic.permission) as i32,
            broker: Some(broker(ctx)),
            accept_message_types: vec![],
        }),
    };
    let assignments = if orderly {
        (0..topic.queue_count as i32).map(mq).collect()
    } else {
        vec![mq(-1)]
    };
    pb::QueryAssignmentResponse {
        status: Some(ok()),
        assignments,
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
