//! The cluster under test: one broker group, each node a `rocketraft-broker` process in its
//! own network namespace ([`crate::netns`]), started, killed, paused and restarted by PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rocketraft_proto::admin as pb;
use rocketraft_proto::admin::broker_admin_client::BrokerAdminClient;
use tonic::transport::{Channel, Endpoint};

use crate::netns::Net;

/// Every node listens on this port on its own address. A fixed port is safe here: each
/// node has a network namespace to itself, so nothing else on the machine can hold it.
pub const BROKER_PORT: u16 = 7000;
pub const GROUP: &str = "g1";

pub struct Node {
    pub id: u64,
    pub addr: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

pub struct Cluster {
    pub net: Net,
    broker_bin: PathBuf,
    pub nodes: Vec<Node>,
    members: String,
}

/// What a node answered about its group, or why it did not.
pub type Status = Result<pb::GroupStatusResponse>;

impl Cluster {
    /// Creates the network and starts every node; node ids are 1-based, node `id` lives in
    /// namespace `id - 1`.
    pub fn start(size: usize, broker_bin: &Path, dir: &Path) -> Result<Self> {
        if !broker_bin.is_file() {
            bail!(
                "broker binary {} not found (build it: cargo build --workspace --bins)",
                broker_bin.display()
            );
        }
        let net = Net::create(size)?;
        let nodes: Vec<Node> = (0..size)
            .map(|i| {
                let id = i as u64 + 1;
                Node {
                    id,
                    addr: format!("{}:{BROKER_PORT}", net.ip(i)),
                    data_dir: dir.join(format!("n{id}/data")),
                    log: dir.join(format!("n{id}/broker.log")),
                    child: None,
                    paused: false,
                }
            })
            .collect();
        let members = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.addr))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            net,
            broker_bin: broker_bin.to_path_buf(),
            nodes,
            members,
        };
        for id in cluster.ids() {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn node_mut(&mut self, id: u64) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .with_context(|| format!("no node {id}"))
    }

    pub fn node(&self, id: u64) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .with_context(|| format!("no node {id}"))
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.node(id).is_ok_and(|n| n.child.is_some())
    }

    /// Starts node `id` if it is not running (a restart keeps its data dir).
    pub fn spawn(&mut self, id: u64) -> Result<()> {
        let i = (id - 1) as usize;
        let mut cmd = self.net.command(i, &self.broker_bin);
        let members = self.members.clone();
        let node = self.node_mut(id)?;
        if node.child.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&node.data_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("opening {}", node.log.display()))?;
        cmd.args(["--node-id", &id.to_string(), "--group", GROUP])
            .args(["--listen", &node.addr, "--members", &members])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .env("ROCKETRAFT_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let child = cmd.spawn().with_context(|| format!("starting node {id}"))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// SIGKILL and reap: the node gets no chance to flush anything.
    pub fn kill(&mut self, id: u64) -> Result<()> {
        let node = self.node_mut(id)?;
        if let Some(mut child) = node.child.take() {
            child.kill().with_context(|| format!("killing node {id}"))?;
            child.wait()?;
        }
        node.paused = false;
        Ok(())
    }

    pub fn pause(&mut self, id: u64) -> Result<()> {
        self.signal(id, Signal::SIGSTOP)?;
        self.node_mut(id)?.paused = true;
        Ok(())
    }

    pub fn resume(&mut self, id: u64) -> Result<()> {
        self.signal(id, Signal::SIGCONT)?;
        self.node_mut(id)?.paused = false;
        Ok(())
    }

    fn signal(&self, id: u64, sig: Signal) -> Result<()> {
        if let Some(child) = &self.node(id)?.child {
            kill(Pid::from_raw(child.id() as i32), sig)
                .with_context(|| format!("{sig} to node {id}"))?;
        }
        Ok(())
    }

    /// Undoes every process fault: resumes paused nodes and starts killed ones.
    pub fn restore_all(&mut self) -> Result<()> {
        for id in self.ids() {
            if self.node(id)?.paused {
                self.resume(id)?;
            }
            self.spawn(id)?;
        }
        Ok(())
    }

    fn admin(&self, id: u64, timeout: Duration) -> Result<BrokerAdminClient<Channel>> {
        admin_client(&self.node(id)?.addr, timeout)
    }

    pub async fn status(&self, id: u64) -> Status {
        group_status(&self.node(id)?.addr).await
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    pub async fn leader(&self) -> Option<(u64, u64)> {
        agreed_leader(&self.addrs()).await
    }

    pub async fn wait_leader(&self, timeout: Duration) -> Result<(u64, u64)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader().await {
                return Ok(l);
            }
            if Instant::now() > deadline {
                bail!("no leader agreed by a majority within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every node has applied what the leader has committed.
    pub async fn wait_caught_up(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((leader, _)) = self.leader().await
                && let Ok(s) = self.status(leader).await
            {
                let mut behind = Vec::new();
                for id in self.ids() {
                    match self.status(id).await {
                        Ok(n) if n.applied_index >= s.commit_index => {}
                        Ok(n) => behind.push(format!("node {id} applied {}", n.applied_index)),
                        Err(e) => behind.push(format!("node {id}: {e}")),
                    }
                }
                if behind.is_empty() {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!(
                        "nodes did not catch up with commit {} within {timeout:?}: {}",
                        s.commit_index,
                        behind.join("; ")
                    );
                }
            } else if Instant::now() > deadline {
                bail!("no leader within {timeout:?} while waiting for catch-up");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn create_topic(&self, name: &str, queues: u32) -> Result<()> {
        let (leader, _) = self.wait_leader(Duration::from_secs(30)).await?;
        self.admin(leader, Duration::from_secs(10))?
            .put_topic(pb::PutTopicRequest {
                topic: Some(pb::TopicConfig {
                    name: name.into(),
                    queue_count: queues,
                    permission: pb::Permission::ReadWrite as i32,
                    ..Default::default()
                }),
            })
            .await
            .context("creating the topic")?;
        Ok(())
    }

    /// Every message node `id` holds in one queue, read from its own applied state.
    pub async fn read_queue(
        &self,
        id: u64,
        topic: &str,
        queue_id: u32,
    ) -> Result<Vec<pb::StoredMessage>> {
        let mut client = self.admin(id, Duration::from_secs(10))?;
        let mut out: Vec<pb::StoredMessage> = Vec::new();
        loop {
            let r = client
                .read_messages(pb::ReadMessagesRequest {
                    topic: topic.into(),
                    queue_id,
                    offset: out.last().map_or(0, |m| m.offset + 1),
                    max_count: 1000,
                })
                .await?
                .into_inner();
            if r.messages.is_empty() {
                return Ok(out);
            }
            out.extend(r.messages);
        }
    }

    /// The last lines of every node's log, for failure reports.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            out += &format!("--- node {} ---\n", n.id);
            for l in tail.iter().rev() {
                out += l;
                out.push('\n');
            }
        }
        out
    }

    /// Stops every node by PID (paused ones are resumed first so SIGKILL is delivered).
    pub fn stop_all(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn admin_client(addr: &str, timeout: Duration) -> Result<BrokerAdminClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_lazy();
    Ok(BrokerAdminClient::new(channel).max_decoding_message_size(64 << 20))
}

/// What the node at `addr` says about its group (answered within half a second or not at
/// all: a paused or cut-off node must not stall the harness).
pub async fn group_status(addr: &str) -> Status {
    Ok(admin_client(addr, Duration::from_millis(500))?
        .group_status(pb::GroupStatusRequest {})
        .await?
        .into_inner())
}

/// The leader (node id, term) the nodes at `addrs` agree on: the highest term any node
/// leads in, if a majority of all nodes names that leader in that term.
pub async fn agreed_leader(addrs: &[String]) -> Option<(u64, u64)> {
    let statuses = futures::future::join_all(addrs.iter().map(|a| group_status(a))).await;
    let ok: Vec<_> = statuses.into_iter().filter_map(Result::ok).collect();
    let (term, leader) = ok
        .iter()
        .filter(|s| s.role == "Leader")
        .map(|s| (s.term, s.node_id))
        .max()?;
    let agree = ok
        .iter()
        .filter(|s| s.term == term && s.leader_id == Some(leader))
        .count();
    (agree * 2 > addrs.len()).then_some((leader, term))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}
