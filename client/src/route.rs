//! Routes: which broker groups host a topic and where their nodes are, fetched from the
//! nameservers (`GetRoutes`), cached, refreshed in the background and after failures.
//!
//! Any nameserver may answer; between answers the client keeps, per group, the route with
//! the higher (leader term, report version), so a lagging nameserver cannot take a client
//! back to an old leader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rocketraft_proto::nameserver as pb;
use tokio::time::Instant;

use crate::conn::Connections;
use crate::error::{Error, Result};

/// One broker group's part of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRoute {
    pub group: String,
    pub queues: u32,
    /// Client addresses of the group's live nodes, the leader first.
    pub addrs: Vec<String>,
    pub leader_term: u64,
    version: (u64, u64, u64),
}

impl GroupRoute {
    fn newness(&self) -> (u64, (u64, u64, u64)) {
        (self.leader_term, self.version)
    }
}

/// Every broker group hosting a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRoute {
    pub topic: String,
    pub groups: Vec<GroupRoute>,
}

pub(crate) struct Router {
    conns: Arc<Connections>,
    nameservers: RwLock<Vec<String>>,
    routes: RwLock<HashMap<String, Arc<TopicRoute>>>,
    /// The nameserver asked first next time; moves on when one fails.
    next_nameserver: Mutex<usize>,
    /// When a topic was last fetched, so failures do not turn into a fetch storm.
    fetched_at: Mutex<HashMap<String, Instant>>,
}

/// The shortest time between two fetches of one topic's route after failures.
const REFETCH_MIN: Duration = Duration::from_millis(200);

impl Router {
    pub fn new(conns: Arc<Connections>, nameservers: Vec<String>) -> Self {
        Self {
            conns,
            nameservers: RwLock::new(nameservers),
            routes: RwLock::new(HashMap::new()),
            next_nameserver: Mutex::new(0),
            fetched_at: Mutex::new(HashMap::new()),
        }
    }

    /// The cached route of `topic`, fetched first if there is none.
    pub async fn route(&self, topic: &str) -> Result<Arc<TopicRoute>> {
        if let Some(r) = self.routes.read().expect("lock poisoned").get(topic)
            && !r.groups.is_empty()
        {
            return Ok(r.clone());
        }
        self.fetch(&[topic.to_string()]).await?;
        self.routes
            .read()
            .expect("lock poisoned")
            .get(topic)
            .filter(|r| !r.groups.is_empty())
            .cloned()
            .ok_or_else(|| Error::NoRoute(topic.to_string()))
    }

    /// Fetches `topic`'s route again after a failure (at most every [`REFETCH_MIN`]).
    pub async fn refresh_after_failure(&self, topic: &str) {
        let due = {
            let mut at = self.fetched_at.lock().expect("lock poisoned");
            let now = Instant::now();
            let due = at.get(topic).is_none_or(|t| now - *t >= REFETCH_MIN);
            if due {
                at.insert(topic.to_string(), now);
            }
            due
        };
        if due && let Err(e) = self.fetch(&[topic.to_string()]).await {
            tracing::debug!(topic, "route refresh failed: {e}");
        }
    }

    /// Fetches every cached topic's route (the periodic refresh).
    pub async fn refresh_all(&self) -> Result<()> {
        let topics: Vec<String> = self
            .routes
            .read()
            .expect("lock poisoned")
            .keys()
            .cloned()
            .collect();
        if topics.is_empty() {
            return Ok(());
        }
        for chunk in topics.chunks(1024) {
            self.fetch(chunk).await?;
        }
        Ok(())
    }

    /// Asks the nameservers in turn (from the one that answered last) for `topics`' routes
    /// and merges the answer.
    async fn fetch(&self, topics: &[String]) -> Result<()> {
        let nameservers = self.nameservers.read().expect("lock poisoned").clone();
        if nameservers.is_empty() {
            return Err(Error::invalid("nameservers", "no nameserver address given"));
        }
        let start = *self.next_nameserver.lock().expect("lock poisoned");
        let mut last = None;
        for i in 0..nameservers.len() {
            let n = (start + i) % nameservers.len();
            let addr = &nameservers[n];
            let mut client = self.conns.nameserver(addr)?;
            let req = self.conns.request(pb::GetRoutesRequest {
                topics: topics.to_vec(),
            });
            match client.get_routes(req).await {
                Ok(resp) => {
                    *self.next_nameserver.lock().expect("lock poisoned") = n;
                    self.merge(resp.into_inner());
                    return Ok(());
                }
                Err(status) => {
                    tracing::debug!(nameserver = %addr, "GetRoutes failed: {status}");
                    last = Some(Error::transport(format!("nameserver {addr}"), status));
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::invalid("nameservers", "none answered")))
    }

    fn merge(&self, resp: pb::GetRoutesResponse) {
        if !resp.nameservers.is_empty() {
            let mut known = self.nameservers.write().expect("lock poisoned");
            for ns in resp.nameservers {
                if !known.contains(&ns) {
                    known.push(ns);
                }
            }
        }
        let mut routes = self.routes.write().expect("lock poisoned");
        for t in resp.topics {
            let fresh: Vec<GroupRoute> = t
                .groups
                .into_iter()
                .map(|g| GroupRoute {
                    queues: g.topic.as_ref().map_or(0, |c| c.queue_count),
                    version: g
                        .version
                        .map(|v| (v.term, v.incarnation, v.counter))
                        .unwrap_or_default(),
                    group: g.group,
                    addrs: g.addrs,
                    leader_term: g.leader_term,
                })
                .filter(|g| g.queues > 0 && !g.addrs.is_empty())
                .collect();
            let held = routes.get(&t.topic);
            let mut groups: Vec<GroupRoute> = fresh
                .into_iter()
                .map(
                    |g| match held.and_then(|h| h.groups.iter().find(|o| o.group == g.group)) {
                        Some(old) if old.newness() > g.newness() => old.clone(),
                        _ => g,
                    },
                )
                .collect();
            groups.sort_by(|a, b| a.group.cmp(&b.group));
            let route = Arc::new(TopicRoute {
                topic: t.topic.clone(),
                groups,
            });
            routes.insert(t.topic, route);
        }
    }

    /// Moves `addr` to the back of `group`'s addresses in `topic`'s route: it failed, so the
    /// next call tries another node until a refresh says otherwise.
    pub fn demote(&self, topic: &str, group: &str, addr: &str) {
        let mut routes = self.routes.write().expect("lock poisoned");
        let Some(route) = routes.get(topic) else {
            return;
        };
        let mut route = (**route).clone();
        if let Some(g) = route.groups.iter_mut().find(|g| g.group == group)
            && let Some(i) = g.addrs.iter().position(|a| a == addr)
        {
            let a = g.addrs.remove(i);
            g.addrs.push(a);
        }
        routes.insert(topic.to_string(), Arc::new(route));
    }
}

/// Refreshes every cached route every `every` until the router is dropped.
pub(crate) fn spawn_refresher(router: std::sync::Weak<Router>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(router) = router.upgrade() else {
                return;
            };
            if let Err(e) = router.refresh_all().await {
                tracing::debug!("periodic route refresh failed: {e}");
            }
        }
    });
}
