//! A broker group's membership and leadership, through any of its nodes (`BrokerAdmin`;
//! followers forward to the leader). Used by `rocketraft broker ...`.

use std::time::Duration;

use anyhow::{Context, bail};
use rocketraft_proto::admin as pb;
use rocketraft_proto::admin::broker_admin_client::BrokerAdminClient;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

/// The nodes of one broker group to send membership requests to.
pub struct BrokerGroup {
    nodes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Members {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

#[derive(Debug, Serialize)]
pub struct MemberView {
    pub node_id: u64,
    pub addr: String,
    pub voter: bool,
    /// Entries behind the leader's commit index (leader's view).
    pub lag: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct GroupMembership {
    pub group: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub members: Vec<MemberView>,
}

fn client(addr: &str, timeout: Duration) -> anyhow::Result<BrokerAdminClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .with_context(|| format!("node address {addr:?} is invalid"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .connect_lazy();
    Ok(BrokerAdminClient::new(channel))
}

/// Worth trying another node: this one is down or cannot reach the leader right now.
fn try_next(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
    )
}

impl BrokerGroup {
    /// `nodes`: addresses of the group's nodes (any subset that includes a live one).
    pub fn new(nodes: Vec<String>) -> anyhow::Result<Self> {
        if nodes.is_empty() {
            bail!("no node address for the broker group");
        }
        Ok(Self { nodes })
    }

    /// Runs `call` against each node in turn until one answers (or refuses for a reason
    /// another node would share).
    async fn each<T, F, Fut>(&self, timeout: Duration, call: F) -> anyhow::Result<T>
    where
        F: Fn(BrokerAdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last = None;
        for addr in &self.nodes {
            match call(client(addr, timeout)?).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if try_next(&s) => last = Some(format!("{addr}: {}", s.message())),
                Err(s) => bail!("{addr}: {:?}: {}", s.code(), s.message()),
            }
        }
        bail!(
            "no node of the group answered: {}",
            last.unwrap_or_default()
        )
    }

    pub async fn status(&self) -> anyhow::Result<GroupMembership> {
        // Prefer the leader's view: it alone knows each member's lag.
        let first = self
            .each(Duration::from_secs(5), |mut c| async move {
                c.group_status(pb::GroupStatusRequest {}).await
            })
            .await?;
        let leader_addr = first.leader_id.and_then(|l| {
            first
                .members
                .iter()
                .find(|m| m.node_id == l)
                .map(|m| m.addr.clone())
        });
        let s = match leader_addr {
            Some(addr) if first.leader_id != Some(first.node_id) => {
                match client(&addr, Duration::from_secs(5))?
                    .group_status(pb::GroupStatusRequest {})
                    .await
                {
                    Ok(r) => r.into_inner(),
                    Err(_) => first,
                }
            }
            _ => first,
        };
        Ok(GroupMembership {
            group: s.group,
            leader: s.leader_id,
            term: s.term,
            commit_index: s.commit_index,
            members: s
                .members
                .into_iter()
                .map(|m| MemberView {
                    node_id: m.node_id,
                    addr: m.addr,
                    voter: m.voter,
                    lag: m.lag,
                })
                .collect(),
        })
    }

    /// Adds `node_id` at `addr` (started with `join = true`): learner, catch-up, voter.
    pub async fn add(
        &self,
        node_id: u64,
        addr: &str,
        learner_only: bool,
        catch_up: Duration,
    ) -> anyhow::Result<Members> {
        let req = pb::AddMemberRequest {
            node_id,
            addr: addr.to_string(),
            learner_only,
            catch_up_timeout_ms: catch_up.as_millis() as u64,
        };
        let r = self
            .each(catch_up + Duration::from_secs(30), |mut c| {
                let req = req.clone();
                async move { c.add_member(req).await }
            })
            .await?;
        Ok(Members {
            voters: r.voters,
            learners: r.learners,
        })
    }

    pub async fn remove(&self, node_id: u64) -> anyhow::Result<Members> {
        let r = self
            .each(Duration::from_secs(30), |mut c| async move {
                c.remove_member(pb::RemoveMemberRequest { node_id }).await
            })
            .await?;
        Ok(Members {
            voters: r.voters,
            learners: r.learners,
        })
    }

    /// Hands leadership to `node_id`; returns (leader, term).
    pub async fn transfer_leader(&self, node_id: u64) -> anyhow::Result<(u64, u64)> {
        let r = self
            .each(Duration::from_secs(30), |mut c| async move {
                c.transfer_leader(pb::TransferLeaderRequest { node_id })
                    .await
            })
            .await?;
        Ok((r.leader_id, r.term))
    }
}

/// GET `url` (http only) and return the status code and body; for health probes, where the
/// image has no curl.
pub async fn http_get(url: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("url {url:?} is invalid"))?;
    if uri.scheme_str() != Some("http") {
        bail!("url {url:?}: only http:// is supported");
    }
    let host = uri.host().context("url has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await?;
        // HTTP/1.0: the server closes the connection after the response, which ends the read.
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await?;
        let mut raw = Vec::new();
        stream.take(1 << 20).read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("{url} did not answer within {timeout:?}"))?
        .with_context(|| format!("GET {url}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("{url} answered something other than HTTP"))?;
    Ok((code, body.to_string()))
}
