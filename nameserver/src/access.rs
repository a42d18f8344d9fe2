//! The nameserver as the clients' access point: `apache.rocketmq.v2.MessagingService`.
//!
//! QueryRoute answers the queues of every broker group hosting the topic; each group's broker
//! endpoints are its leader for clients that take one address (grpc-python cannot be given
//! several, see the broker's route.rs), and every live member, the leader first, for the Rust
//! client, which balances over them and never refreshes routes. Telemetry, Heartbeat and
//! NotifyClientTermination are answered here. Data-plane calls that reach a nameserver (the
//! Rust client sends EndTransaction to its access point) are relayed to the group hosting the
//! topic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rocketraft_broker::proposer::with_client_headers;
use rocketraft_broker::service::message::handle_group;
use rocketraft_broker::service::route::{self, endpoint_address, permission, topic_queues};
use rocketraft_broker::service::status::{ClientInfo, not_implemented, ok};
use rocketraft_broker::service::{
    BoxStream, CLIENT_MESSAGE_BYTES_MAX, messaging_client, telemetry,
};
use rocketraft_proto::admin as apb;
use rocketraft_proto::rocketmq::v2 as pb;
use rocketraft_proto::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use rocketraft_proto::rocketmq::v2::messaging_service_server::{
    MessagingService, MessagingServiceServer,
};
use rocketraft_proto::rocketmq::v2::settings::PubSub;
use rocketraft_proto::rocketmq::v2::telemetry_command::Command as TelemetryKind;
use rocketraft_raft_store::TopicConfig;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::registry::GroupView;
use crate::server::State;

#[derive(Clone)]
pub struct AccessPoint {
    state: Arc<State>,
    next: Arc<AtomicUsize>,
}

/// The endpoints of `addrs` in one scheme: DOMAIN_NAME if any is a name (and then only the
/// first, as that scheme allows one address), else IPv6 if any is, else IPv4.
fn endpoints(addrs: &[String]) -> pb::Endpoints {
    let parsed: Vec<_> = addrs.iter().map(|a| endpoint_address(a)).collect();
    let has = |scheme| parsed.iter().any(|(s, _)| *s == scheme);
    let scheme = if has(pb::AddressScheme::DomainName) {
        pb::AddressScheme::DomainName
    } else if has(pb::AddressScheme::IPv6) {
        pb::AddressScheme::IPv6
    } else {
        pb::AddressScheme::IPv4
    };
    let mut addresses: Vec<pb::Address> = parsed.into_iter().map(|(_, a)| a).collect();
    if scheme == pb::AddressScheme::DomainName {
        addresses.truncate(1);
    }
    pb::Endpoints {
        scheme: scheme as i32,
        addresses,
    }
}

/// A group's topic as the route builder takes it (the registry holds the admin form).
fn topic_config(t: &apb::TopicConfig) -> Option<TopicConfig> {
    rocketraft_broker::convert::topic_from_pb(t.clone()).ok()
}

fn topic_of(r: &Option<pb::Resource>) -> &str {
    r.as_ref().map(|r| r.name.as_str()).unwrap_or_default()
}

impl AccessPoint {
    pub fn new(state: Arc<State>) -> Self {
        Self {
            state,
            next: Arc::default(),
        }
    }

    pub fn into_server(self) -> MessagingServiceServer<Self> {
        MessagingServiceServer::new(self)
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
    }

    fn broker(&self, g: &GroupView, client: &ClientInfo) -> pb::Broker {
        let addrs = if client.language.eq_ignore_ascii_case("RUST") {
            g.addrs()
        } else {
            State::group_target(g).into_iter().collect()
        };
        pb::Broker {
            name: g.name.clone(),
            id: 0,
            endpoints: Some(endpoints(&addrs)),
        }
    }

    /// Creates `topic` on every group with a leader (a dev convenience, off by default) and
    /// returns its queues; reports bring it into the registry within a second.
    async fn auto_create(
        &self,
        topic: &pb::Resource,
        client: &ClientInfo,
    ) -> Vec<pb::MessageQueue> {
        if rocketraft_raft_store::limits::validate_user_topic_name("topic", &topic.name).is_err() {
            return vec![];
        }
        let cfg = apb::TopicConfig {
            name: topic.name.clone(),
            queue_count: self.state.auto_create_topic_queues,
            permission: apb::Permission::ReadWrite as i32,
            message_types: vec![],
            ..Default::default()
        };
        let mut queues = Vec::new();
        for g in self
            .state
            .groups()
            .into_iter()
            .filter(|g| g.leader.is_some())
        {
            let Ok(mut admin) = self.state.broker_admin(&g) else {
                continue;
            };
            // A refusal means another client created it first; its config is what counts.
            let _ = admin
                .put_topic(apb::PutTopicRequest {
                    topic: Some(cfg.clone()),
                })
                .await;
            let Ok(got) = admin
                .get_topic(apb::GetTopicRequest {
                    name: topic.name.clone(),
                })
                .await
            else {
                continue;
            };
            let Some(t) = got.into_inner().topic else {
                continue;
            };
            if let Some(cfg) = topic_config(&t) {
                queues.extend(topic_queues(&self.broker(&g, client), topic, &cfg));
            }
        }
        tracing::info!(topic = %topic.name, queues = queues.len(), "auto-created topic");
        queues
    }

    /// The group to relay a call about `topic` to. A call that names a broker group (a
    /// queue's broker, a receipt handle's issuer) goes to that group only: another group
    /// would refuse the handle or, worse, answer for its own queue of the same id. The
    /// group is looked up by name when this nameserver's copy of its topics is behind
    /// (a report or gossip round not yet in). A call naming no group takes the hosting
    /// groups in turn.
    fn pick_group(&self, topic: &str, broker_name: Option<&str>) -> Result<GroupView, Status> {
        let groups = self.state.topic_groups(topic);
        match broker_name {
            Some(b) => groups
                .iter()
                .find(|g| g.name == b)
                .cloned()
                .or_else(|| self.state.group(b))
                .ok_or_else(|| {
                    Status::unavailable(format!(
                        "broker group {b:?} (named by the request for topic {topic:?}) is not \
                         known to this nameserver; retry after the next route refresh"
                    ))
                }),
            None => (!groups.is_empty())
                .then(|| &groups[self.next.fetch_add(1, Ordering::Relaxed) % groups.len()])
                .cloned()
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "topic {topic:?} is not hosted by any live broker group"
                    ))
                }),
        }
    }

    /// A client for the group `pick_group` chooses: its leader, else a live node.
    fn pick(
        &self,
        topic: &str,
        broker_name: Option<&str>,
    ) -> Result<MessagingServiceClient<Channel>, Status> {
        let g = self.pick_group(topic, broker_name)?;
        let addr = State::group_target(&g).ok_or_else(|| {
            Status::unavailable(format!("broker group {} has no live node", g.name))
        })?;
        Ok(messaging_client(self.state.channel(&addr)?))
    }
}

/// Holds a telemetry stream to a node of `group` for a producer connected to this nameserver
/// and passes the orphaned-transaction checks it carries on to the producer, until the
/// producer's stream closes. Reconnects (to the group's current leader) when the node goes.
async fn relay_checks(
    state: Arc<State>,
    group: String,
    client_md: tonic::metadata::MetadataMap,
    settings: pb::Settings,
    to_client: mpsc::Sender<Result<pb::TelemetryCommand, Status>>,
) {
    const RECONNECT: std::time::Duration = std::time::Duration::from_secs(1);
    while !to_client.is_closed() {
        let target = state.group(&group).and_then(|g| State::group_target(&g));
        if let Some(addr) = target
            && let Ok(channel) = state.channel(&addr)
        {
            let (up_tx, up_rx) = mpsc::channel(1);
            let _ = up_tx
                .send(pb::TelemetryCommand {
                    status: None,
                    command: Some(TelemetryKind::Settings(settings.clone())),
                })
                .await;
            let req = with_client_headers(&client_md, ReceiverStream::new(up_rx));
            if let Ok(resp) = messaging_client(channel).telemetry(req).await {
                let mut down = resp.into_inner();
                loop {
                    tokio::select! {
                        frame = down.next() => match frame {
                            Some(Ok(cmd)) => {
                                if matches!(cmd.command, Some(TelemetryKind::RecoverOrphanedTransactionCommand(_)))
                                    && to_client.send(Ok(cmd)).await.is_err()
                                {
                                    return;
                                }
                            }
                            _ => break,
                        },
                        _ = to_client.closed() => return,
                    }
                }
            }
            // Keep the upstream open until here: dropping it ends the broker's stream.
            drop(up_tx);
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT) => {}
            _ = to_client.closed() => return,
        }
    }
}

fn not_hosted(topic: &str) -> pb::Status {
    rocketraft_broker::service::status::status(
        pb::Code::TopicNotFound,
        format!("topic {topic:?} does not exist on any live broker group"),
    )
}

/// The in-band status for a call `pick` found no group for: an unhosted topic is
/// TOPIC_NOT_FOUND; a named group this nameserver does not know (yet), or one with no live
/// node, is a server-side condition the client retries.
fn refusal(topic: &str, why: &Status) -> pb::Status {
    if why.code() == tonic::Code::NotFound {
        not_hosted(topic)
    } else {
        rocketraft_broker::service::status::status(pb::Code::InternalServerError, why.message())
    }
}

/// Relays a unary call about `$topic` to a group hosting it; an unknown topic gets an
/// in-band TOPIC_NOT_FOUND built by `$refuse`.
macro_rules! relay {
    ($self:ident, $req:ident, $b:ident => $topic:expr, $broker:expr, $rpc:ident, $refuse:expr) => {{
        let md = $req.metadata().clone();
        let body = $req.into_inner();
        let (topic, broker) = {
            let $b = &body;
            let broker: Option<&str> = $broker;
            (($topic).to_string(), broker.map(str::to_string))
        };
        match $self.pick(&topic, broker.as_deref()) {
            Ok(mut client) => client.$rpc(with_client_headers(&md, body)).await,
            Err(why) => Ok(Response::new($refuse(refusal(&topic, &why)))),
        }
    }};
}

fn queue_topic(mq: &Option<pb::MessageQueue>) -> &str {
    mq.as_ref().map(|q| topic_of(&q.topic)).unwrap_or_default()
}

/// The broker group a queue names; an empty name names none.
fn queue_broker(mq: &Option<pb::MessageQueue>) -> Option<&str> {
    let name = mq.as_ref()?.broker.as_ref()?.name.as_str();
    (!name.is_empty()).then_some(name)
}

#[tonic::async_trait]
impl MessagingService for AccessPoint {
    async fn query_route(
        &self,
        req: Request<pb::QueryRouteRequest>,
    ) -> Result<Response<pb::QueryRouteResponse>, Status> {
        let client = ClientInfo::from_metadata(req.metadata());
        let req = req.into_inner();
        let resource = req.topic.clone().unwrap_or_default();
        let groups = self.state.topic_groups(&resource.name);
        let mut queues = Vec::new();
        for g in &groups {
            let Some(t) = g.topic(&resource.name) else {
                continue;
            };
            if let Some(cfg) = topic_config(t) {
                queues.extend(topic_queues(&self.broker(g, &client), &resource, &cfg));
            }
        }
        if queues.is_empty() && self.state.auto_create_topic_queues > 0 {
            queues = self.auto_create(&resource, &client).await;
        }
        if queues.is_empty() {
            return Ok(Response::new(pb::QueryRouteResponse {
                status: Some(client.status(
                    pb::Code::TopicNotFound,
                    format!(
                        "topic {:?} does not exist on any live broker group",
                        resource.name
                    ),
                )),
                message_queues: vec![],
            }));
        }
        Ok(Response::new(pb::QueryRouteResponse {
            status: Some(ok()),
            message_queues: queues,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        Ok(Response::new(route::heartbeat(req.into_inner())))
    }

    async fn send_message(
        &self,
        req: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        relay!(
            self,
            req,
            b => b
                .messages
                .first()
                .map(|m| topic_of(&m.topic))
                .unwrap_or_default(),
            None,
            send_message,
            |s| pb::SendMessageResponse {
                status: Some(s),
                entries: vec![]
            }
        )
    }

    async fn query_assignment(
        &self,
        req: Request<pb::QueryAssignmentRequest>,
    ) -> Result<Response<pb::QueryAssignmentResponse>, Status> {
        let client = ClientInfo::from_metadata(req.metadata());
        let req = req.into_inner();
        let resource = req.topic.clone().unwrap_or_default();
        let group = req
            .group
            .as_ref()
            .map(|g| g.name.as_str())
            .unwrap_or_default();
        let mut assignments = Vec::new();
        for g in self.state.topic_groups(&resource.name) {
            let Some(t) = g.topic(&resource.name) else {
                continue;
            };
            let orderly = g.consumer_group(group).is_some_and(|c| c.orderly);
            let broker = self.broker(&g, &client);
            let ids: Vec<i32> = if orderly {
                (0..t.queue_count as i32).collect()
            } else {
                vec![-1]
            };
            assignments.extend(ids.into_iter().map(|id| {
                pb::Assignment {
                    message_queue: Some(pb::MessageQueue {
                        topic: Some(resource.clone()),
                        id,
                        permission: topic_config(t)
                            .map_or(pb::Permission::ReadWrite, |c| permission(c.permission))
                            as i32,
                        broker: Some(broker.clone()),
                        accept_message_types: vec![],
                    }),
                }
            }));
        }
        let status = if assignments.is_empty() {
            not_hosted(&resource.name)
        } else {
            ok()
        };
        Ok(Response::new(pb::QueryAssignmentResponse {
            status: Some(status),
            assignments,
        }))
    }

    type ReceiveMessageStream = BoxStream<pb::ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        req: Request<pb::ReceiveMessageRequest>,
    ) -> Result<Response<Self::ReceiveMessageStream>, Status> {
        let md = req.metadata().clone();
        let deadline = rocketraft_broker::service::grpc_deadline(&md);
        let body = req.into_inner();
        let topic = queue_topic(&body.message_queue).to_string();
        let mut client = self.pick(&topic, queue_broker(&body.message_queue))?;
        let mut fwd = with_client_headers(&md, body);
        if let Some(d) = deadline {
            fwd.set_timeout(d);
        }
        let stream = client.receive_message(fwd).await?.into_inner();
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack_message(
        &self,
        req: Request<pb::AckMessageRequest>,
    ) -> Result<Response<pb::AckMessageResponse>, Status> {
        // The receipt handles name the broker group that handed each message out; one
        // request may hold entries of several groups of the topic, so each group gets its own.
        let md = req.metadata().clone();
        let body = req.into_inner();
        let topic = topic_of(&body.topic).to_string();
        let mut by_group: BTreeMap<Option<&str>, Vec<pb::AckMessageEntry>> = BTreeMap::new();
        for e in &body.entries {
            by_group
                .entry(handle_group(&e.receipt_handle))
                .or_default()
                .push(e.clone());
        }
        let mut status = None;
        let mut entries = Vec::with_capacity(body.entries.len());
        for (group, part) in by_group {
            let resp = match self.pick(&topic, group) {
                Ok(mut client) => {
                    let sub = pb::AckMessageRequest {
                        entries: part,
                        ..body.clone()
                    };
                    client
                        .ack_message(with_client_headers(&md, sub))
                        .await?
                        .into_inner()
                }
                Err(why) => pb::AckMessageResponse {
                    status: Some(refusal(&topic, &why)),
                    entries: part
                        .into_iter()
                        .map(|e| pb::AckMessageResultEntry {
                            message_id: e.message_id,
                            receipt_handle: e.receipt_handle,
                            status: Some(refusal(&topic, &why)),
                        })
                        .collect(),
                },
            };
            if resp
                .status
                .as_ref()
                .is_none_or(|s| s.code != pb::Code::Ok as i32)
            {
                status = status.or(resp.status);
            }
            entries.extend(resp.entries);
        }
        Ok(Response::new(pb::AckMessageResponse {
            status: status.or_else(|| Some(ok())),
            entries,
        }))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        req: Request<pb::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<pb::ForwardMessageToDeadLetterQueueResponse>, Status> {
        relay!(
            self,
            req,
            b => topic_of(&b.topic),
            handle_group(&b.receipt_handle),
            forward_message_to_dead_letter_queue,
            |s| pb::ForwardMessageToDeadLetterQueueResponse { status: Some(s) }
        )
    }

    type PullMessageStream = BoxStream<pb::PullMessageResponse>;

    async fn pull_message(
        &self,
        req: Request<pb::PullMessageRequest>,
    ) -> Result<Response<Self::PullMessageStream>, Status> {
        let md = req.metadata().clone();
        let body = req.into_inner();
        let topic = queue_topic(&body.message_queue).to_string();
        let mut client = self.pick(&topic, queue_broker(&body.message_queue))?;
        let stream = client
            .pull_message(with_client_headers(&md, body))
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(stream)))
    }

    async fn update_offset(
        &self,
        req: Request<pb::UpdateOffsetRequest>,
    ) -> Result<Response<pb::UpdateOffsetResponse>, Status> {
        relay!(
            self,
            req,
            b => queue_topic(&b.message_queue),
            queue_broker(&b.message_queue),
            update_offset,
            |s| pb::UpdateOffsetResponse { status: Some(s) }
        )
    }

    async fn get_offset(
        &self,
        req: Request<pb::GetOffsetRequest>,
    ) -> Result<Response<pb::GetOffsetResponse>, Status> {
        relay!(
            self,
            req,
            b => queue_topic(&b.message_queue),
            queue_broker(&b.message_queue),
            get_offset,
            |s| pb::GetOffsetResponse {
                status: Some(s),
                offset: 0
            }
        )
    }

    async fn query_offset(
        &self,
        req: Request<pb::QueryOffsetRequest>,
    ) -> Result<Response<pb::QueryOffsetResponse>, Status> {
        relay!(
            self,
            req,
            b => queue_topic(&b.message_queue),
            queue_broker(&b.message_queue),
            query_offset,
            |s| pb::QueryOffsetResponse {
                status: Some(s),
                offset: 0
            }
        )
    }

    async fn end_transaction(
        &self,
        req: Request<pb::EndTransactionRequest>,
    ) -> Result<Response<pb::EndTransactionResponse>, Status> {
        // The transaction id does not name its group: ask each group hosting the topic
        // until one knows it.
        let md = req.metadata().clone();
        let body = req.into_inner();
        let topic = topic_of(&body.topic).to_string();
        let groups = self.state.topic_groups(&topic);
        let mut last = None;
        for g in &groups {
            let Some(addr) = State::group_target(g) else {
                continue;
            };
            let mut client = messaging_client(self.state.channel(&addr)?);
            let resp = client
                .end_transaction(with_client_headers(&md, body.clone()))
                .await?
                .into_inner();
            let code = resp.status.as_ref().map(|s| s.code);
            if code != Some(pb::Code::InvalidTransactionId as i32) {
                return Ok(Response::new(resp));
            }
            last = Some(resp);
        }
        Ok(Response::new(last.unwrap_or(pb::EndTransactionResponse {
            status: Some(not_hosted(&topic)),
        })))
    }

    type TelemetryStream = telemetry::TelemetryStream;

    async fn telemetry(
        &self,
        req: Request<tonic::Streaming<pb::TelemetryCommand>>,
    ) -> Result<Response<Self::TelemetryStream>, Status> {
        // Settings are answered here. A producer's orphaned-transaction checks come from
        // the broker nodes, which push them to the producers connected to them; a client
        // whose only telemetry stream is this one (the Rust client's broker sessions may
        // not open their own) gets them relayed: for each group hosting its topics this
        // nameserver holds a telemetry stream to a node of the group on the client's behalf.
        let md = req.metadata().clone();
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut relayed: std::collections::HashSet<String> = Default::default();
            while let Some(Ok(cmd)) = inbound.next().await {
                if let Some(TelemetryKind::Settings(settings)) = cmd.command {
                    let group = telemetry::subscription_group(&settings).and_then(|name| {
                        state.groups().iter().find_map(|g| {
                            g.consumer_group(name)
                                .cloned()
                                .map(rocketraft_broker::convert::group_from_pb)
                        })
                    });
                    if let Some(PubSub::Publishing(p)) = &settings.pub_sub {
                        for topic in &p.topics {
                            for g in state.topic_groups(&topic.name) {
                                if relayed.insert(g.name.clone()) {
                                    tokio::spawn(relay_checks(
                                        state.clone(),
                                        g.name.clone(),
                                        md.clone(),
                                        settings.clone(),
                                        tx.clone(),
                                    ));
                                }
                            }
                        }
                    }
                    if tx
                        .send(Ok(telemetry::settings_reply(settings, group.as_ref())))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn notify_client_termination(
        &self,
        _req: Request<pb::NotifyClientTerminationRequest>,
    ) -> Result<Response<pb::NotifyClientTerminationResponse>, Status> {
        Ok(Response::new(pb::NotifyClientTerminationResponse {
            status: Some(ok()),
        }))
    }

    async fn change_invisible_duration(
        &self,
        req: Request<pb::ChangeInvisibleDurationRequest>,
    ) -> Result<Response<pb::ChangeInvisibleDurationResponse>, Status> {
        let handle = req.get_ref().receipt_handle.clone();
        relay!(
            self,
            req,
            b => topic_of(&b.topic),
            handle_group(&b.receipt_handle),
            change_invisible_duration,
            |s| pb::ChangeInvisibleDurationResponse {
                status: Some(s),
                receipt_handle: handle
            }
        )
    }

    async fn recall_message(
        &self,
        _req: Request<pb::RecallMessageRequest>,
    ) -> Result<Response<pb::RecallMessageResponse>, Status> {
        Ok(Response::new(pb::RecallMessageResponse {
            status: not_implemented("RecallMessage"),
            message_id: String::new(),
        }))
    }

    async fn sync_lite_subscription(
        &self,
        _req: Request<pb::SyncLiteSubscriptionRequest>,
    ) -> Result<Response<pb::SyncLiteSubscriptionResponse>, Status> {
        Ok(Response::new(pb::SyncLiteSubscriptionResponse {
            status: not_implemented("SyncLiteSubscription"),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NameserverConfig;
    use rocketraft_proto::nameserver as npb;

    fn leader_report(group: &str, port: u16, topics: &[&str]) -> npb::NodeReport {
        npb::NodeReport {
            group: group.into(),
            node_id: 1,
            addr: format!("127.0.0.1:{port}"),
            role: npb::Role::Leader as i32,
            term: 1,
            topics: topics
                .iter()
                .map(|t| apb::TopicConfig {
                    name: (*t).into(),
                    queue_count: 1,
                    ..Default::default()
                })
                .collect(),
            version: Some(npb::Version {
                term: 1,
                incarnation: 1,
                counter: 1,
            }),
            ..Default::default()
        }
    }

    fn access_point(reports: Vec<npb::NodeReport>) -> AccessPoint {
        let state = State::new(&NameserverConfig {
            listen: "127.0.0.1:0".parse().expect("a socket address"),
            advertise: None,
            peers: Vec::new(),
            gossip_interval_ms: 1000,
            gossip_fanout: 1,
            expiry_ms: 60_000,
            auto_create_topic_queues: 0,
            http_listen: None,
        });
        {
            let mut registry = state.registry.lock().expect("lock poisoned");
            for r in reports {
                assert!(registry.merge(r, std::time::Instant::now()));
            }
        }
        AccessPoint::new(Arc::new(state))
    }

    /// The stop-15 CI failure: this nameserver's report of g2 predates the topic, and an ack
    /// of g2's handles went to g1 (which refused every one). A named group is never swapped.
    #[test]
    fn a_named_group_is_never_swapped_for_another() {
        let ap = access_point(vec![
            leader_report("g1", 9001, &["T"]),
            leader_report("g2", 9002, &[]),
        ]);
        for _ in 0..4 {
            let g = ap.pick_group("T", Some("g2")).expect("g2 is known");
            assert_eq!(g.name, "g2");
        }
        let unknown = ap.pick_group("T", Some("g3")).expect_err("g3 is unknown");
        assert_eq!(unknown.code(), tonic::Code::Unavailable);
        assert!(
            unknown.message().contains("\"g3\""),
            "{}",
            unknown.message()
        );
        let refused = refusal("T", &unknown);
        assert_eq!(refused.code, pb::Code::InternalServerError as i32);

        // Unnamed: only groups hosting the topic, in turn.
        for _ in 0..4 {
            assert_eq!(ap.pick_group("T", None).expect("g1 hosts T").name, "g1");
        }
        let missing = ap
            .pick_group("Other", None)
            .expect_err("nobody hosts Other");
        assert_eq!(missing.code(), tonic::Code::NotFound);
        assert_eq!(
            refusal("Other", &missing).code,
            pb::Code::TopicNotFound as i32
        );
        // An empty broker name names no group.
        let mq = Some(pb::MessageQueue {
            broker: Some(pb::Broker::default()),
            ..Default::default()
        });
        assert_eq!(queue_broker(&mq), None);
    }
}
