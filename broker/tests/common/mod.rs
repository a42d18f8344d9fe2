//! A real 3-node broker group for tests: `rocketraft-broker` processes on free loopback
//! ports, each with its own data dir, killed by PID when the cluster is dropped.

#![allow(dead_code)] // each test binary uses a different part of this helper

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

mod clients;
// Each test binary uses some of these.
#[allow(unused_imports)]
pub use clients::{assert_delay_lateness, build_rust_interop, python};
use rocketraft_proto::admin as pb;
use rocketraft_proto::admin::broker_admin_client::BrokerAdminClient;
use tokio::time::Instant;
use tonic::transport::Channel;

pub type Admin = BrokerAdminClient<Channel>;

pub struct Node {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    /// The HTTP endpoint (`/metrics`, `/healthz`, `/readyz`).
    pub http: String,
    /// Started with `--join`: waits to be added instead of forming the group.
    pub join: bool,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, Node>,
    members: String,
    extra_args: Vec<String>,
}

/// See `rocketraft_client::ports` for why not `bind(0)`.
fn free_port() -> u16 {
    rocketraft_client::ports::free_loopback_port().expect("a free loopback port")
}

impl Node {
    fn new(dir: &std::path::Path, id: u64, join: bool) -> Self {
        Self {
            id,
            addr: format!("127.0.0.1:{}", free_port()),
            data_dir: dir.join(format!("node{id}")),
            log: dir.join(format!("node{id}.log")),
            child: None,
            http: format!("127.0.0.1:{}", free_port()),
            join,
        }
    }
}

impl Cluster {
    /// Starts a new node `id` with `--join`, not yet a member; returns its address.
    pub fn spawn_joining(&mut self, id: u64) -> anyhow::Result<String> {
        anyhow::ensure!(!self.nodes.contains_key(&id), "node {id} exists");
        let node = Node::new(self.dir.path(), id, true);
        let addr = node.addr.clone();
        self.nodes.insert(id, node);
        self.spawn(id)?;
        Ok(addr)
    }

    pub fn start(size: u64, extra_args: &[&str]) -> anyhow::Result<Self> {
        let mut cluster = Self::prepare(size, extra_args)?;
        for id in 1..=size {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// The cluster's nodes, not started yet (to arrange their data dirs first).
    pub fn prepare(size: u64, extra_args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut nodes = BTreeMap::new();
        for id in 1..=size {
            nodes.insert(id, Node::new(dir.path(), id, false));
        }
        let members = nodes
            .values()
            .map(|n| format!("{}={}", n.id, n.addr))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Self {
            dir,
            nodes,
            members,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        })
    }

    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(&id).context("no such node")?;
        assert!(node.child.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_rocketraft-broker"))
            .args([
                "--node-id",
                &id.to_string(),
                "--group",
                "test-group",
                "--listen",
                &node.addr,
                "--http-listen",
                &node.http,
            ])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--members", &self.members])
            .args(node.join.then_some("--join"))
            .args(&self.extra_args)
            .env("ROCKETRAFT_LOG", "info,openraft=warn")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("spawning rocketraft-broker")?;
        node.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (bounded) for a clean exit; returns the exit status.
    pub fn terminate(
        &mut self,
        id: u64,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self
            .nodes
            .get_mut(&id)
            .and_then(|n| n.child.take())
            .context("node is not running")?;
        // SAFETY: kill(2) on the PID of a child we own and have not reaped yet.
        let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("node {id} did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (e.g. SIGSTOP, SIGCONT) to node `id`'s process.
    pub fn signal(&self, id: u64, signal: i32) -> anyhow::Result<()> {
        let child = self
            .nodes
            .get(&id)
            .and_then(|n| n.child.as_ref())
            .context("node is not running")?;
        // SAFETY: kill(2) on the PID of a child we own and have not reaped yet.
        let rc = unsafe { libc::kill(child.id() as i32, signal) };
        anyhow::ensure!(rc == 0, "kill({signal}) on node {id} failed");
        Ok(())
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    pub async fn client(&self, id: u64) -> anyhow::Result<Admin> {
        let addr = &self.nodes.get(&id).context("no such node")?.addr;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(15))
            .connect_lazy();
        Ok(BrokerAdminClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    pub async fn status(&self, id: u64) -> anyhow::Result<pb::GroupStatusResponse> {
        Ok(self
            .client(id)
            .await?
            .group_status(pb::GroupStatusRequest {})
            .await?
            .into_inner())
    }

    /// Waits until the running nodes agree on one leader; returns its id.
    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            for id in self.running() {
                if let Ok(s) = self.status(id).await
                    && s.role == "Leader"
                {
                    leaders.push((s.term, id));
                }
            }
            leaders.sort();
            if let Some((term, leader)) = leaders.last().copied() {
                // Everyone running must follow that leader in that term.
                let mut agreed = 0;
                for id in self.running() {
                    if let Ok(s) = self.status(id).await
                        && s.leader_id == Some(leader)
                        && s.term == term
                    {
                        agreed += 1;
                    }
                }
                if agreed == self.running().len() {
                    return Ok(leader);
                }
            }
            if Instant::now() > deadline {
                bail!("no agreed leader within {timeout:?}:\n{}", self.logs_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = self.status(id).await
                && s.applied_index >= index
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "node {id} did not apply index {index} within {timeout:?}:\n{}",
                    self.logs_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn create_topic(&self, via: u64, name: &str, queues: u32) -> anyhow::Result<()> {
        self.client(via)
            .await?
            .put_topic(pb::PutTopicRequest {
                topic: Some(pb::TopicConfig {
                    name: name.into(),
                    queue_count: queues,
                    permission: pb::Permission::ReadWrite as i32,
                    message_types: vec![],
                    ..Default::default()
                }),
            })
            .await?;
        Ok(())
    }

    pub async fn create_group(
        &self,
        via: u64,
        name: &str,
        orderly: bool,
        max_delivery_attempts: u32,
    ) -> anyhow::Result<()> {
        self.put_group(
            via,
            pb::ConsumerGroupConfig {
                name: name.into(),
                orderly,
                max_delivery_attempts,
                broadcast: false,
                retry_policy: None,
            },
        )
        .await
    }

    pub async fn put_group(&self, via: u64, group: pb::ConsumerGroupConfig) -> anyhow::Result<()> {
        self.client(via)
            .await?
            .put_consumer_group(pb::PutConsumerGroupRequest { group: Some(group) })
            .await?;
        Ok(())
    }

    /// Starts a 3-node group for a client scenario: creates `topic` and the groups whose
    /// policy differs from the default ((name, orderly, max delivery attempts); other groups
    /// are used unconfigured, as an application would), and returns it with its leader and a
    /// follower that has applied all that (clients' first QueryRoute goes to the follower).
    pub async fn for_scenario(
        broker_args: &[&str],
        topic: &str,
        queues: u32,
        groups: &[(&str, bool, u32)],
    ) -> anyhow::Result<(Self, u64, u64)> {
        let cluster = Self::start(3, broker_args)?;
        let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
        cluster.create_topic(leader, topic, queues).await?;
        for (name, orderly, max_attempts) in groups {
            cluster
                .create_group(leader, name, *orderly, *max_attempts)
                .await?;
        }
        let follower = (1..=3).find(|id| *id != leader).context("a follower")?;
        let commit = cluster.status(leader).await?.commit_index;
        cluster
            .wait_applied(follower, commit, Duration::from_secs(20))
            .await?;
        Ok((cluster, leader, follower))
    }

    /// Every message of one queue as node `id` has it.
    pub async fn read_queue(
        &self,
        id: u64,
        topic: &str,
        queue_id: u32,
    ) -> anyhow::Result<Vec<pb::StoredMessage>> {
        let mut client = self.client(id).await?;
        let mut out = Vec::new();
        loop {
            let r = client
                .read_messages(pb::ReadMessagesRequest {
                    topic: topic.into(),
                    queue_id,
                    // After the last one read (retention may have moved the start).
                    offset: out.last().map_or(0, |m: &pb::StoredMessage| m.offset + 1),
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

    pub fn logs_tail(&self) -> String {
        let mut s = String::new();
        for n in self.nodes.values() {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let lines: Vec<_> = text.lines().collect();
            let from = lines.len().saturating_sub(15);
            s.push_str(&format!(
                "--- node {} ({}) ---\n{}\n",
                n.id,
                n.addr,
                lines[from..].join("\n")
            ));
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes.values_mut() {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A batch of `n` distinct messages whose bodies encode `tag_prefix` and their index.
pub fn batch(prefix: &str, start: usize, n: usize) -> Vec<pb::MessageInput> {
    (start..start + n)
        .map(|i| pb::MessageInput {
            message_id: format!("{prefix}-{i}"),
            tag: Some("TagA".into()),
            keys: vec![format!("key-{i}")],
            properties: [("index".to_string(), i.to_string())].into(),
            body: format!("{prefix} message {i}").into_bytes().into(),
            born_timestamp_ms: 1,
        })
        .collect()
}

/// Appends with retries across nodes until acknowledged or `timeout` runs out.
pub async fn append_retrying(
    cluster: &Cluster,
    topic: &str,
    queue_id: u32,
    messages: Vec<pb::MessageInput>,
    timeout: Duration,
) -> anyhow::Result<pb::AppendResponse> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    while Instant::now() < deadline {
        for id in cluster.running() {
            let mut c = cluster.client(id).await?;
            let req = pb::AppendRequest {
                topic: topic.into(),
                queue_id,
                messages: messages.clone(),
            };
            match tokio::time::timeout(Duration::from_secs(2), c.append(req)).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(e)) => last_err = Some(anyhow::anyhow!("node {id}: {e}")),
                Err(_) => last_err = Some(anyhow::anyhow!("node {id}: timed out")),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no node running")))
}

/// One message an official client reported sending in an interop test.
pub struct InteropReceipt {
    /// Index of the message in the client's run.
    pub index: usize,
    pub message_id: String,
    /// The offset, when the client reports one (the Rust 5.0.0 client does not).
    pub offset: Option<u64>,
}

/// Checks what the interop producers (tests/interop) send: message `i` has body
/// "`<prefix>` message i", tag TagA/TagB by parity, key "key-i" and property index=i, and every
/// third message is FIFO in group "group-(i % 4)". Every node must hold exactly these
/// messages, each FIFO group on one queue in send order.
pub async fn assert_interop_messages(
    cluster: &Cluster,
    topic: &str,
    queues: u32,
    prefix: &str,
    receipts: &[InteropReceipt],
) -> anyhow::Result<()> {
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    let commit = cluster.status(leader).await?.commit_index;
    for id in cluster.running() {
        cluster
            .wait_applied(id, commit, Duration::from_secs(30))
            .await?;
        let mut stored = BTreeMap::new();
        for q in 0..queues {
            for m in cluster.read_queue(id, topic, q).await? {
                stored.insert(m.message_id.clone(), (q, m));
            }
        }
        assert_eq!(
            stored.len(),
            receipts.len(),
            "node {id} holds exactly the sent messages"
        );
        let mut last_by_group: BTreeMap<String, (u32, u64)> = BTreeMap::new();
        for r in receipts {
            let i = r.index;
            let (queue, m) = stored
                .get(&r.message_id)
                .with_context(|| format!("node {id}: {} missing", r.message_id))?;
            if let Some(offset) = r.offset {
                assert_eq!(m.offset, offset, "node {id}: receipt offset of message {i}");
            }
            assert_eq!(m.body, format!("{prefix} message {i}").into_bytes());
            assert_eq!(
                m.tag.as_deref(),
                Some(if i % 2 == 0 { "TagA" } else { "TagB" })
            );
            assert_eq!(m.keys, vec![format!("key-{i}")]);
            assert_eq!(m.properties.get("index"), Some(&i.to_string()));
            if i % 3 == 0 {
                let group = format!("group-{}", i % 4);
                if let Some((q, off)) = last_by_group.get(&group) {
                    assert_eq!(q, queue, "message group {group} must stay on one queue");
                    assert!(
                        *off < m.offset,
                        "message group {group} must keep send order"
                    );
                }
                last_by_group.insert(group, (*queue, m.offset));
            }
        }
        assert_eq!(last_by_group.len(), 4, "every FIFO group was seen");
    }
    Ok(())
}
