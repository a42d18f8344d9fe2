//! A nameserver process: the registry brokers report to, push-pull gossip with the peers,
//! and the admin API. The client access point (`MessagingService`) is in [`crate::access`].
//!
//! Gossip: every `interval` the nameserver sends its digest (node -> version) to `fanout`
//! peers, taken in turn; each answers with the reports it holds newer and names the ones it
//! wants, which are pushed back. One exchange therefore leaves both sides with the newer of
//! every entry.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rocketraft_proto::admin as apb;
use rocketraft_proto::admin::broker_admin_client::BrokerAdminClient;
use rocketraft_proto::nameserver as pb;
use rocketraft_proto::nameserver::gossip_client::GossipClient;
use rocketraft_proto::nameserver::gossip_server::{Gossip, GossipServer};
use rocketraft_proto::nameserver::nameserver_admin_server::{
    NameserverAdmin, NameserverAdminServer,
};
use rocketraft_proto::nameserver::registry_server::{Registry as RegistryRpc, RegistryServer};
use rocketraft_raft_store::limits;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::config::NameserverConfig;
use crate::registry::{GroupView, Registry};

/// What every service of one nameserver shares.
pub struct State {
    pub addr: String,
    pub auto_create_topic_queues: u32,
    pub peers: Vec<String>,
    pub registry: Mutex<Registry>,
    /// Peers gossip is cut off from (fault injection).
    blocked: Mutex<HashSet<String>>,
    channels: Mutex<HashMap<String, Channel>>,
    pub gossip: crate::metrics::GossipStats,
}

impl State {
    pub fn new(config: &NameserverConfig) -> Self {
        let addr = config.advertised_addr();
        Self {
            auto_create_topic_queues: config.auto_create_topic_queues,
            peers: config
                .peers
                .iter()
                .filter(|p| **p != addr)
                .cloned()
                .collect(),
            addr,
            registry: Mutex::new(Registry::new(Duration::from_millis(config.expiry_ms))),
            blocked: Mutex::new(HashSet::new()),
            channels: Mutex::new(HashMap::new()),
            gossip: crate::metrics::GossipStats::new(),
        }
    }

    /// A cached, lazily connected channel to `addr`.
    pub fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().expect("lock poisoned");
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let c = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::internal(format!("address {addr:?} is invalid: {e}")))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(500))
            .connect_lazy();
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    fn is_blocked(&self, peer: &str) -> bool {
        self.blocked.lock().expect("lock poisoned").contains(peer)
    }

    pub fn groups(&self) -> Vec<GroupView> {
        self.registry
            .lock()
            .expect("lock poisoned")
            .groups(Instant::now())
    }

    pub fn topic_groups(&self, topic: &str) -> Vec<GroupView> {
        self.registry
            .lock()
            .expect("lock poisoned")
            .topic_groups(topic, Instant::now())
    }

    /// The admin API of a group (through its leader, else any live node, which forwards).
    pub fn broker_admin(&self, g: &GroupView) -> Result<BrokerAdminClient<Channel>, Status> {
        let addr = State::group_target(g)
            .ok_or_else(|| Status::unavailable(format!("group {} has no live node", g.name)))?;
        Ok(BrokerAdminClient::new(self.channel(&addr)?))
    }

    pub fn group(&self, name: &str) -> Option<GroupView> {
        self.registry
            .lock()
            .expect("lock poisoned")
            .group(name, Instant::now())
    }

    /// Where to send a group's writes: its leader, else any live node (which forwards).
    pub fn group_target(g: &GroupView) -> Option<String> {
        g.leader
            .as_ref()
            .map(|l| l.addr.clone())
            .or_else(|| g.live.first().map(|n| n.addr.clone()))
    }

    /// One gossip exchange with `peer`.
    async fn gossip_with(&self, peer: &str) -> Result<(), Status> {
        let mut client = GossipClient::new(self.channel(peer)?);
        let digests = self.registry.lock().expect("lock poisoned").digests();
        let resp = client
            .exchange(pb::ExchangeRequest {
                from: self.addr.clone(),
                digests,
            })
            .await?
            .into_inner();
        let reports = {
            let mut reg = self.registry.lock().expect("lock poisoned");
            let now = Instant::now();
            for r in resp.newer {
                reg.merge(r, now);
            }
            reg.reports(&resp.wanted)
        };
        if !reports.is_empty() {
            client
                .push(pb::PushRequest {
                    from: self.addr.clone(),
                    reports,
                })
                .await?;
        }
        Ok(())
    }
}

/// Gossips every `interval` with `fanout` peers in turn until `stop` fires.
pub async fn run_gossip(
    state: Arc<State>,
    interval: Duration,
    fanout: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if state.peers.is_empty() {
        return;
    }
    let mut next = 0usize;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let round: Vec<String> = (0..fanout.min(state.peers.len()))
            .map(|i| state.peers[(next + i) % state.peers.len()].clone())
            .collect();
        next = (next + fanout) % state.peers.len();
        state.gossip.rounds.inc();
        let exchanges = round.iter().filter(|p| !state.is_blocked(p)).map(|p| {
            let state = state.clone();
            let p = p.clone();
            async move {
                let r = tokio::time::timeout(
                    interval.max(Duration::from_secs(1)),
                    state.gossip_with(&p),
                )
                .await;
                state.gossip.exchanged(matches!(r, Ok(Ok(()))));
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(peer = %p, "gossip failed: {e}"),
                    Err(_) => tracing::debug!(peer = %p, "gossip timed out"),
                }
            }
        });
        futures::future::join_all(exchanges).await;
    }
}

struct RegistryService(Arc<State>);

#[tonic::async_trait]
impl RegistryRpc for RegistryService {
    async fn report(
        &self,
        req: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let report = req
            .into_inner()
            .report
            .ok_or_else(|| Status::invalid_argument("report is required"))?;
        limits::validate_name("report.group", &report.group)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.0
            .registry
            .lock()
            .expect("lock poisoned")
            .merge(report, Instant::now());
        Ok(Response::new(pb::ReportResponse {}))
    }
}

struct GossipService(Arc<State>);

#[tonic::async_trait]
impl Gossip for GossipService {
    async fn exchange(
        &self,
        req: Request<pb::ExchangeRequest>,
    ) -> Result<Response<pb::ExchangeResponse>, Status> {
        let req = req.into_inner();
        if self.0.is_blocked(&req.from) {
            return Err(Status::unavailable("gossip with this peer is blocked"));
        }
        let (newer, wanted) = self
            .0
            .registry
            .lock()
            .expect("lock poisoned")
            .compare(&req.digests);
        Ok(Response::new(pb::ExchangeResponse { newer, wanted }))
    }

    async fn push(
        &self,
        req: Request<pb::PushRequest>,
    ) -> Result<Response<pb::PushResponse>, Status> {
        let req = req.into_inner();
        if self.0.is_blocked(&req.from) {
            return Err(Status::unavailable("gossip with this peer is blocked"));
        }
        let mut reg = self.0.registry.lock().expect("lock poisoned");
        let now = Instant::now();
        for r in req.reports {
            reg.merge(r, now);
        }
        Ok(Response::new(pb::PushResponse {}))
    }
}

/// Topics one GetRoutes request may ask about.
const ROUTE_TOPICS_MAX: usize = 1024;

struct AdminService(Arc<State>);

impl AdminService {
    /// The groups an admin request targets: those named (each must be known and have a
    /// live node), or every group with a live node. Checked before anything is applied.
    ///
    /// A leader is not required here: the registry's view of leadership lags an election by
    /// a report or two, and any live broker node forwards an admin change to its leader,
    /// waiting out an election itself.
    fn targets(&self, named: &[String]) -> Result<Vec<GroupView>, Status> {
        let groups = self.0.groups();
        if named.is_empty() {
            let available: Vec<_> = groups.into_iter().filter(|g| !g.live.is_empty()).collect();
            if available.is_empty() {
                return Err(Status::unavailable(
                    "no broker group with a live node has reported",
                ));
            }
            return Ok(available);
        }
        let mut out = Vec::new();
        for name in named {
            let g = groups.iter().find(|g| &g.name == name).ok_or_else(|| {
                Status::not_found(format!(
                    "groups: broker group {name:?} is unknown; known: {:?}",
                    groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>()
                ))
            })?;
            if g.live.is_empty() {
                return Err(Status::unavailable(format!(
                    "groups: broker group {name:?} has no live node right now"
                )));
            }
            out.push(g.clone());
        }
        Ok(out)
    }

    /// Runs `change` on each target group's admin API in turn; a failure names the group and
    /// the groups already changed (admin changes are not atomic across groups).
    ///
    /// Within a group the live nodes are tried leader first; an `Unavailable` answer (the
    /// node died since its last report, or it saw no leader) moves on to the next node.
    async fn change_groups<F, Fut>(
        &self,
        targets: &[GroupView],
        change: F,
    ) -> Result<Vec<String>, Status>
    where
        F: Fn(BrokerAdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<(), Status>>,
    {
        let mut done = Vec::new();
        for g in targets {
            let mut last = Status::unavailable(format!("group {} has no live node", g.name));
            let mut changed = false;
            for node in &g.live {
                match change(BrokerAdminClient::new(self.0.channel(&node.addr)?)).await {
                    Ok(()) => {
                        changed = true;
                        break;
                    }
                    Err(e) if e.code() == tonic::Code::Unavailable => {
                        tracing::debug!(group = %g.name, node = %node.addr, "admin change: {e}");
                        last = e;
                    }
                    Err(e) => {
                        last = e;
                        break;
                    }
                }
            }
            if !changed {
                return Err(Status::new(
                    last.code(),
                    format!(
                        "group {}: {} (already changed: {done:?})",
                        g.name,
                        last.message()
                    ),
                ));
            }
            done.push(g.name.clone());
        }
        Ok(done)
    }

    /// The groups hosting `topic` (with a live node), or NOT_FOUND.
    fn hosting(&self, topic: &str) -> Result<Vec<GroupView>, Status> {
        let hosts = self.0.topic_groups(topic);
        if hosts.is_empty() {
            return Err(Status::not_found(format!(
                "topic {topic:?} is not hosted by any live broker group"
            )));
        }
        Ok(hosts)
    }

    /// Reads from a group's live nodes, leader first (it has applied the most), moving to
    /// the next when one fails. `Ok(Err(why))` when none answered, for the caller to report
    /// per group; bad input fails the whole request, as every node would refuse it alike.
    async fn read_group<T, F, Fut>(
        &self,
        g: &GroupView,
        read: F,
    ) -> Result<Result<T, String>, Status>
    where
        F: Fn(BrokerAdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let mut why = format!("group {} has no live node", g.name);
        for node in &g.live {
            match read(BrokerAdminClient::new(self.0.channel(&node.addr)?)).await {
                Ok(resp) => return Ok(Ok(resp.into_inner())),
                Err(e) if e.code() == tonic::Code::InvalidArgument => return Err(e),
                Err(e) => why = format!("node {}: {}", node.addr, e.message()),
            }
        }
        Ok(Err(why))
    }
}

#[tonic::async_trait]
impl NameserverAdmin for AdminService {
    async fn cluster_status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let groups = self
            .0
            .registry
            .lock()
            .expect("lock poisoned")
            .status(Instant::now());
        Ok(Response::new(pb::ClusterStatusResponse {
            groups,
            peers: self.0.peers.clone(),
        }))
    }

    async fn create_topic(
        &self,
        req: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        let req = req.into_inner();
        let topic = req
            .topic
            .ok_or_else(|| Status::invalid_argument("topic is required"))?;
        let cfg = rocketraft_broker::convert::topic_from_pb(topic.clone())?;
        limits::validate_user_topic_name("topic.name", &cfg.name)
            .and_then(|_| limits::validate_topic_config(&cfg))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let targets = self.targets(&req.groups)?;
        let done = self
            .change_groups(&targets, |mut admin| {
                let topic = topic.clone();
                async move {
                    admin
                        .put_topic(apb::PutTopicRequest { topic: Some(topic) })
                        .await
                        .map(|_| ())
                }
            })
            .await?;
        Ok(Response::new(pb::CreateTopicResponse { groups: done }))
    }

    async fn delete_topic(
        &self,
        req: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let req = req.into_inner();
        limits::validate_name("name", &req.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let hosting: Vec<String> = self
            .0
            .topic_groups(&req.name)
            .into_iter()
            .map(|g| g.name)
            .collect();
        if hosting.is_empty() {
            return Err(Status::not_found(format!(
                "name: topic {:?} is not hosted by any live group",
                req.name
            )));
        }
        let named = if req.groups.is_empty() {
            hosting.clone()
        } else {
            req.groups.clone()
        };
        if let Some(g) = named.iter().find(|g| !hosting.contains(g)) {
            return Err(Status::not_found(format!(
                "groups: group {g:?} does not host topic {:?}; hosts: {hosting:?}",
                req.name
            )));
        }
        let targets = self.targets(&named)?;
        let name = req.name.clone();
        let done = self
            .change_groups(&targets, |mut admin| {
                let name = name.clone();
                async move {
                    admin
                        .delete_topic(apb::DeleteTopicRequest { name })
                        .await
                        .map(|_| ())
                }
            })
            .await?;
        Ok(Response::new(pb::DeleteTopicResponse { groups: done }))
    }

    async fn put_consumer_group(
        &self,
        req: Request<pb::PutConsumerGroupRequest>,
    ) -> Result<Response<pb::PutConsumerGroupResponse>, Status> {
        let req = req.into_inner();
        let group = req
            .group
            .ok_or_else(|| Status::invalid_argument("group is required"))?;
        let cfg = rocketraft_broker::convert::group_from_pb(group.clone());
        limits::validate_group_config(&cfg).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let targets = self.targets(&req.groups)?;
        let done = self
            .change_groups(&targets, |mut admin| {
                let group = group.clone();
                async move {
                    admin
                        .put_consumer_group(apb::PutConsumerGroupRequest { group: Some(group) })
                        .await
                        .map(|_| ())
                }
            })
            .await?;
        Ok(Response::new(pb::PutConsumerGroupResponse { groups: done }))
    }

    async fn list_consumer_groups(
        &self,
        _req: Request<pb::ListConsumerGroupsRequest>,
    ) -> Result<Response<pb::ListConsumerGroupsResponse>, Status> {
        let mut by_name: std::collections::BTreeMap<String, pb::ConsumerGroupRoute> =
            Default::default();
        for g in self.0.groups() {
            let Some(auth) = g.authority() else { continue };
            for c in &auth.consumer_groups {
                by_name
                    .entry(c.name.clone())
                    .or_insert_with(|| pb::ConsumerGroupRoute {
                        group: Some(c.clone()),
                        groups: vec![],
                    })
                    .groups
                    .push(g.name.clone());
            }
        }
        Ok(Response::new(pb::ListConsumerGroupsResponse {
            groups: by_name.into_values().collect(),
        }))
    }

    async fn describe_consumer_group(
        &self,
        req: Request<pb::DescribeConsumerGroupRequest>,
    ) -> Result<Response<pb::DescribeConsumerGroupResponse>, Status> {
        let name = req.into_inner().consumer_group;
        limits::validate_name("consumer_group", &name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut out = pb::DescribeConsumerGroupResponse::default();
        for g in self.targets(&[])? {
            let req = apb::GroupProgressRequest {
                consumer_group: name.clone(),
            };
            let read = self
                .read_group(&g, |mut admin| {
                    let req = req.clone();
                    async move { admin.group_progress(req).await }
                })
                .await?;
            let (queues, error) = match read {
                Ok(resp) => (resp.queues, String::new()),
                Err(why) => (vec![], why),
            };
            out.groups.push(pb::BrokerGroupProgress {
                broker_group: g.name.clone(),
                queues,
                error,
            });
        }
        Ok(Response::new(out))
    }

    async fn reset_consumer_offsets(
        &self,
        req: Request<pb::ResetConsumerOffsetsRequest>,
    ) -> Result<Response<pb::ResetConsumerOffsetsResponse>, Status> {
        let req = req.into_inner();
        limits::validate_name("consumer_group", &req.consumer_group)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        limits::validate_name("topic", &req.topic)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut out = pb::ResetConsumerOffsetsResponse::default();
        for g in self.hosting(&req.topic)? {
            let offsets = std::sync::Mutex::new(Vec::new());
            self.change_groups(std::slice::from_ref(&g), |mut admin| {
                let (req, offsets) = (&req, &offsets);
                async move {
                    let resp = admin
                        .reset_offsets(apb::ResetOffsetsRequest {
                            consumer_group: req.consumer_group.clone(),
                            topic: req.topic.clone(),
                            timestamp_ms: req.timestamp_ms,
                        })
                        .await?;
                    *offsets.lock().expect("lock poisoned") = resp.into_inner().offsets;
                    Ok(())
                }
            })
            .await?;
            out.groups.push(pb::GroupOffsets {
                broker_group: g.name.clone(),
                offsets: offsets.into_inner().expect("lock poisoned"),
            });
        }
        Ok(Response::new(out))
    }

    async fn describe_topic(
        &self,
        req: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::DescribeTopicResponse>, Status> {
        let name = req.into_inner().topic;
        limits::validate_name("topic", &name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut out = pb::DescribeTopicResponse::default();
        for g in self.0.groups() {
            let Some(auth) = g.authority() else { continue };
            let Some(t) = auth.topics.iter().find(|t| t.name == name) else {
                continue;
            };
            out.groups.push(pb::TopicInGroup {
                broker_group: g.name.clone(),
                topic: Some(t.clone()),
                max_offsets: auth
                    .offsets
                    .iter()
                    .find(|o| o.topic == name)
                    .map(|o| o.max_offsets.clone())
                    .unwrap_or_default(),
            });
        }
        if out.groups.is_empty() {
            return Err(Status::not_found(format!(
                "topic {name:?} is not hosted by any broker group"
            )));
        }
        Ok(Response::new(out))
    }

    async fn find_messages(
        &self,
        req: Request<apb::FindMessagesRequest>,
    ) -> Result<Response<pb::FindMessagesResponse>, Status> {
        let req = req.into_inner();
        limits::validate_name("topic", &req.topic)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut out = pb::FindMessagesResponse::default();
        for g in self.hosting(&req.topic)? {
            let read = self
                .read_group(&g, |mut admin| {
                    let req = req.clone();
                    async move { admin.find_messages(req).await }
                })
                .await?;
            let (found, error) = match read {
                Ok(found) => (Some(found), String::new()),
                Err(why) => (None, why),
            };
            out.groups.push(pb::GroupMessages {
                broker_group: g.name.clone(),
                found,
                error,
            });
        }
        Ok(Response::new(out))
    }

    async fn list_topics(
        &self,
        _req: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let mut by_name: std::collections::BTreeMap<String, pb::TopicRoute> = Default::default();
        for g in self.0.groups() {
            let Some(auth) = g.authority() else { continue };
            for t in &auth.topics {
                let route = by_name
                    .entry(t.name.clone())
                    .or_insert_with(|| pb::TopicRoute {
                        topic: Some(t.clone()),
                        groups: vec![],
                    });
                route.groups.push(g.name.clone());
            }
        }
        Ok(Response::new(pb::ListTopicsResponse {
            topics: by_name.into_values().collect(),
        }))
    }

    async fn get_routes(
        &self,
        req: Request<pb::GetRoutesRequest>,
    ) -> Result<Response<pb::GetRoutesResponse>, Status> {
        let topics = req.into_inner().topics;
        if topics.len() > ROUTE_TOPICS_MAX {
            return Err(Status::invalid_argument(format!(
                "topics: {} topics asked; at most {ROUTE_TOPICS_MAX} per request",
                topics.len()
            )));
        }
        for t in &topics {
            limits::validate_name("topics", t)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let routes = topics
            .into_iter()
            .map(|topic| {
                let groups = self
                    .0
                    .topic_groups(&topic)
                    .into_iter()
                    .filter_map(|g| {
                        let config = g.topic(&topic)?.clone();
                        let authority = g.authority()?;
                        Some(pb::GroupRoute {
                            group: g.name.clone(),
                            topic: Some(config),
                            addrs: g.addrs(),
                            leader_id: g.leader.as_ref().map(|l| l.node_id),
                            leader_term: g.leader.as_ref().map_or(0, |l| l.term),
                            version: authority.version,
                        })
                    })
                    .collect();
                pb::TopicRoutes { topic, groups }
            })
            .collect();
        let mut nameservers = vec![self.0.addr.clone()];
        nameservers.extend(self.0.peers.iter().cloned());
        Ok(Response::new(pb::GetRoutesResponse {
            topics: routes,
            nameservers,
        }))
    }

    async fn set_gossip_blocked(
        &self,
        req: Request<pb::SetGossipBlockedRequest>,
    ) -> Result<Response<pb::SetGossipBlockedResponse>, Status> {
        let peers = req.into_inner().peers;
        tracing::warn!(?peers, "gossip blocked with these peers (empty: unblocked)");
        *self.0.blocked.lock().expect("lock poisoned") = peers.into_iter().collect();
        Ok(Response::new(pb::SetGossipBlockedResponse {}))
    }
}

/// A running nameserver.
pub struct Nameserver {
    pub local_addr: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served, if configured.
    pub http_addr: Option<SocketAddr>,
    pub state: Arc<State>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    stop_server: tokio::sync::oneshot::Sender<()>,
    stop_background: tokio::sync::watch::Sender<bool>,
}

impl Nameserver {
    pub async fn start(config: NameserverConfig) -> anyhow::Result<Self> {
        let state = Arc::new(State::new(&config));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let http_listener = rocketraft_broker::ops::bind_http(config.http_listen).await?;
        let http_addr = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let gossip_interval = Duration::from_millis(config.gossip_interval_ms);
        let metrics = Arc::new(
            crate::metrics::NameserverMetrics::new(state.clone(), gossip_interval)
                .context("registering metrics")?,
        );
        let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
        let router =
            rocketraft_proto::transport::server_windows(tonic::transport::Server::builder())
                .tcp_nodelay(true)
                .layer(rocketraft_broker::ops::RpcTimingLayer::new(
                    metrics.rpc.clone(),
                ))
                .add_service(RegistryServer::new(RegistryService(state.clone())))
                .add_service(GossipServer::new(GossipService(state.clone())))
                .add_service(NameserverAdminServer::new(AdminService(state.clone())))
                .add_service(crate::access::AccessPoint::new(state.clone()).into_server());
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        }));
        let (stop_background, background) = tokio::sync::watch::channel(false);
        if let Some(l) = http_listener {
            rocketraft_broker::ops::spawn_http(l, metrics, background.clone());
        }
        tokio::spawn(run_gossip(
            state.clone(),
            gossip_interval,
            config.gossip_fanout,
            background,
        ));
        tracing::info!(addr = %local_addr, peers = ?state.peers, "nameserver serving");
        Ok(Self {
            local_addr,
            http_addr,
            state,
            server,
            stop_server,
            stop_background,
        })
    }

    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop_background.send(true);
        let _ = self.stop_server.send(());
        match tokio::time::timeout(Duration::from_secs(5), self.server).await {
            Ok(Ok(r)) => r.context("serving")?,
            Ok(Err(e)) => tracing::warn!("server task failed: {e}"),
            Err(_) => tracing::warn!("in-flight requests did not finish within 5 s"),
        }
        Ok(())
    }
}
