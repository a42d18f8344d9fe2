//! The pull consumer: the application picks queues and positions, reads by offset and
//! commits offsets for its consumer group (`PullMessage`, `QueryOffset`, `GetOffset`,
//! `UpdateOffset`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rocketraft_proto::rocketmq::v2 as pb;
use tokio_stream::StreamExt;

use crate::ClientConfig;
use crate::conn::Connections;
use crate::error::{Error, Result};
use crate::message::{ReceivedMessage, duration, resource, timestamp};
use crate::route::{Router, spawn_refresher};

/// One queue of a topic in one broker group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueRef {
    pub topic: String,
    pub broker_group: String,
    pub queue_id: u32,
}

pub struct PullConsumer {
    conns: Arc<Connections>,
    router: Arc<Router>,
    group: String,
    positions: HashMap<QueueRef, i64>,
}

impl PullConsumer {
    pub async fn new(config: ClientConfig, group: impl Into<String>) -> Result<Self> {
        let group = group.into();
        if group.is_empty() {
            return Err(Error::invalid("group", "is empty"));
        }
        let conns = Arc::new(Connections::new(config.client_id(), config.request_timeout));
        let router = Arc::new(Router::new(conns.clone(), config.nameservers.clone()));
        spawn_refresher(Arc::downgrade(&router), config.route_refresh);
        Ok(Self {
            conns,
            router,
            group,
            positions: HashMap::new(),
        })
    }

    /// Every queue of `topic`, over all groups hosting it.
    pub async fn queues(&self, topic: &str) -> Result<Vec<QueueRef>> {
        let route = self.router.route(topic).await?;
        Ok(route
            .groups
            .iter()
            .flat_map(|g| {
                (0..g.queues).map(|q| QueueRef {
                    topic: topic.to_string(),
                    broker_group: g.group.clone(),
                    queue_id: q,
                })
            })
            .collect())
    }

    /// Where the next [`PullConsumer::pull`] of `queue` reads from, if set.
    pub fn position(&self, queue: &QueueRef) -> Option<i64> {
        self.positions.get(queue).copied()
    }

    pub fn seek(&mut self, queue: &QueueRef, offset: i64) {
        self.positions.insert(queue.clone(), offset);
    }

    /// Positions `queue` at its first message stored at or after `at`.
    pub async fn seek_to_timestamp(&mut self, queue: &QueueRef, at: SystemTime) -> Result<i64> {
        let offset = self
            .query_offset(queue, pb::QueryOffsetPolicy::Timestamp, Some(at))
            .await?;
        self.seek(queue, offset);
        Ok(offset)
    }

    pub async fn seek_to_beginning(&mut self, queue: &QueueRef) -> Result<i64> {
        let offset = self
            .query_offset(queue, pb::QueryOffsetPolicy::Beginning, None)
            .await?;
        self.seek(queue, offset);
        Ok(offset)
    }

    pub async fn seek_to_end(&mut self, queue: &QueueRef) -> Result<i64> {
        let offset = self
            .query_offset(queue, pb::QueryOffsetPolicy::End, None)
            .await?;
        self.seek(queue, offset);
        Ok(offset)
    }

    /// Positions `queue` at the group's committed offset; `None` (and no change) when the
    /// group never committed one.
    pub async fn seek_to_committed(&mut self, queue: &QueueRef) -> Result<Option<i64>> {
        let req = pb::GetOffsetRequest {
            group: Some(resource(&self.group)),
            message_queue: Some(message_queue(queue)),
        };
        let resp = self
            .call(queue, |mut c, r| async move { c.get_offset(r).await }, req)
            .await?;
        match Error::check("get offset", resp.status.as_ref()) {
            Ok(()) => {
                self.seek(queue, resp.offset);
                Ok(Some(resp.offset))
            }
            Err(e)
                if matches!(
                    e.code(),
                    Some(pb::Code::OffsetNotFound | pb::Code::NotFound)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Records `offset` as the group's position in `queue` (replicated in its group).
    pub async fn commit(&self, queue: &QueueRef, offset: i64) -> Result<()> {
        let req = pb::UpdateOffsetRequest {
            group: Some(resource(&self.group)),
            message_queue: Some(message_queue(queue)),
            offset,
        };
        let resp = self
            .call(
                queue,
                |mut c, r| async move { c.update_offset(r).await },
                req,
            )
            .await?;
        Error::check("update offset", resp.status.as_ref())
    }

    /// Up to `max` messages of `queue` from its position (the beginning if unset), waiting up
    /// to `wait` when there are none; the position moves past what was read.
    pub async fn pull(
        &mut self,
        queue: &QueueRef,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let offset = match self.position(queue) {
            Some(o) => o,
            None => self.seek_to_beginning(queue).await?,
        };
        let addrs = self.addrs(queue).await?;
        let mut last = None;
        for addr in addrs {
            let req = self.conns.request_with_timeout(
                pb::PullMessageRequest {
                    group: Some(resource(&self.group)),
                    message_queue: Some(message_queue(queue)),
                    offset,
                    batch_size: max.clamp(1, 1024) as i32,
                    filter_expression: None,
                    long_polling_timeout: Some(duration(wait)),
                },
                wait + self.conns.request_timeout(),
            );
            let mut stream = match self.conns.messaging(&addr)?.pull_message(req).await {
                Ok(s) => s.into_inner(),
                Err(s) => {
                    last = Some(Error::transport(format!("pull from {addr}"), s));
                    continue;
                }
            };
            let (mut out, mut next, mut status) = (Vec::new(), None, None);
            while let Some(frame) = stream.next().await {
                let frame = frame.map_err(|s| Error::transport(format!("pull from {addr}"), s))?;
                match frame.content {
                    Some(pb::pull_message_response::Content::Message(m)) => {
                        out.push(ReceivedMessage::from_pb(m, &queue.broker_group, &addr)?)
                    }
                    Some(pb::pull_message_response::Content::NextOffset(n)) => next = Some(n),
                    Some(pb::pull_message_response::Content::Status(s)) => status = Some(s),
                    None => {}
                }
            }
            match status
                .as_ref()
                .and_then(|s| pb::Code::try_from(s.code).ok())
            {
                Some(pb::Code::MessageNotFound) => {}
                _ => Error::check("pull", status.as_ref())?,
            }
            let next = next.unwrap_or(offset + out.len() as i64);
            self.seek(queue, next);
            return Ok(out);
        }
        Err(last.unwrap_or_else(|| Error::NoRoute(queue.topic.clone())))
    }

    async fn query_offset(
        &self,
        queue: &QueueRef,
        policy: pb::QueryOffsetPolicy,
        at: Option<SystemTime>,
    ) -> Result<i64> {
        let req = pb::QueryOffsetRequest {
            message_queue: Some(message_queue(queue)),
            query_offset_policy: policy as i32,
            timestamp: at.map(timestamp),
        };
        let resp = self
            .call(
                queue,
                |mut c, r| async move { c.query_offset(r).await },
                req,
            )
            .await?;
        Error::check("query offset", resp.status.as_ref())?;
        Ok(resp.offset)
    }

    async fn addrs(&self, queue: &QueueRef) -> Result<Vec<String>> {
        let route = self.router.route(&queue.topic).await?;
        route
            .groups
            .iter()
            .find(|g| g.group == queue.broker_group)
            .map(|g| g.addrs.clone())
            .ok_or_else(|| Error::NoRoute(queue.topic.clone()))
    }

    /// A unary call at the queue's group, trying its nodes in turn on transport failures.
    async fn call<Req, Resp, F, Fut>(&self, queue: &QueueRef, f: F, req: Req) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(
            rocketraft_proto::rocketmq::v2::messaging_service_client::MessagingServiceClient<
                tonic::transport::Channel,
            >,
            tonic::Request<Req>,
        ) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let addrs = self.addrs(queue).await?;
        self.conns
            .first_answer(&addrs, "call", |c| f(c, self.conns.request(req.clone())))
            .await
    }
}

fn message_queue(q: &QueueRef) -> pb::MessageQueue {
    pb::MessageQueue {
        topic: Some(resource(&q.topic)),
        id: q.queue_id as i32,
        ..Default::default()
    }
}
