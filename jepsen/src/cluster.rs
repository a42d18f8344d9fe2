//! The cluster under test: one broker group, each node a `rocketraft-broker` process in a
//! network namespace of its own ([`crate::netns`]), started, killed, paused and restarted by
//! PID.
//!
//! Node ids and namespaces ("slots") are separate: the initial nodes 1..=n live in slots
//! 0..n, and a membership change adds a node with a fresh id (and a fresh data directory) in
//! whichever spare slot is free, so a slot whose node was removed can host a new one. Ids
//! are never reused: a removed node's id with new, empty state could vote twice in a term.
//!
//! Options per run: a lazyfs mount under each node's data directory (for lost-unfsynced-
//! writes faults, [`crate::lazyfs`]), a libfaketime clock per node ([`crate::clock`]), and
//! nameservers, each a `rocketraft-nameserver` in a namespace of its own after the broker
//! slots: the brokers report to them, they gossip, and clients use them as access points
//! (they relay every call to the group), so packets between brokers and nameservers can be
//! cut like any others.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rocketraft_proto::admin as pb;
use rocketraft_proto::admin::broker_admin_client::BrokerAdminClient;
use rocketraft_proto::nameserver as nspb;
use rocketraft_proto::nameserver::nameserver_admin_client::NameserverAdminClient;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::clock::NodeClock;
use crate::lazyfs::DropReport;
use crate::lazyfs::process::LazyFsProcess;
use crate::netns::Net;

/// Every node listens on this port on its own address. A fixed port is safe here: each
/// node has a network namespace to itself, so nothing else on the machine can hold it.
pub const BROKER_PORT: u16 = 7000;
pub const NAMESERVER_PORT: u16 = 9876;
/// Nameserver `k` (0-based) is `NAMESERVER_ID_BASE + k` wherever faults name nodes. Broker
/// ids count up from 1 and a run adds a few dozen at most, so the two never meet.
pub const NAMESERVER_ID_BASE: u64 = 1000;
/// How long a nameserver keeps a silent broker node live: shorter than the default (10 s)
/// so that cuts between brokers and nameservers, which hold for 3 to 8 s, do expire nodes.
const NAMESERVER_EXPIRY_MS: u64 = 3000;
pub const GROUP: &str = "g1";

/// Where a node stands in the group, as the harness last confirmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Voter,
    Learner,
    /// Started with `--join`, not yet confirmed a member.
    Joining,
    /// Out of the group; its process is stopped and its slot free.
    Removed,
}

pub struct Node {
    pub id: u64,
    pub slot: usize,
    pub addr: String,
    pub role: Role,
    /// Started with `--join` (added by a membership change) rather than `--members`.
    joined: bool,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    lazyfs: Option<LazyFsProcess>,
    clock: Option<NodeClock>,
}

/// A nameserver of the run. Faults other than partitions leave nameservers alone.
pub struct Nameserver {
    pub id: u64,
    pub slot: usize,
    pub addr: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// The broker's data directory (the lazyfs mount point when lazyfs is on).
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub size: usize,
    /// Namespaces beyond `size` for nodes that membership changes add.
    pub spares: usize,
    pub broker_bin: PathBuf,
    /// This harness's own binary, which serves lazyfs mounts (`rocketraft-jepsen lazyfs`).
    pub jepsen_bin: PathBuf,
    /// Each node's data directory on a lazyfs mount.
    pub lazyfs: bool,
    /// libfaketime, to give each node a clock of its own.
    pub faketime: Option<PathBuf>,
    /// Nameservers to start (0: the brokers run without any).
    pub nameservers: usize,
    pub nameserver_bin: PathBuf,
}

pub struct Cluster {
    pub net: Net,
    opts: ClusterOptions,
    dir: PathBuf,
    /// Every node of the run, removed ones too (their logs stay readable).
    pub nodes: Vec<Node>,
    pub nameservers: Vec<Nameserver>,
    members: String,
    next_id: u64,
}

/// What a node answered about its group, or why it did not.
pub type Status = Result<pb::GroupStatusResponse>;

impl Cluster {
    /// Creates the network and starts `size` nodes, with no options.
    pub fn start(size: usize, broker_bin: &Path, dir: &Path) -> Result<Self> {
        Self::start_with(
            &ClusterOptions {
                size,
                spares: 0,
                broker_bin: broker_bin.to_path_buf(),
                jepsen_bin: std::env::current_exe()?,
                lazyfs: false,
                faketime: None,
                nameservers: 0,
                nameserver_bin: PathBuf::new(),
            },
            dir,
        )
    }

    /// Creates the network and starts every initial node; node ids are 1-based, node `id`
    /// starts in slot `id - 1`.
    pub fn start_with(opts: &ClusterOptions, dir: &Path) -> Result<Self> {
        if !opts.broker_bin.is_file() {
            bail!(
                "broker binary {} not found (build it: cargo build --workspace --bins)",
                opts.broker_bin.display()
            );
        }
        if opts.nameservers > 0 && !opts.nameserver_bin.is_file() {
            bail!(
                "nameserver binary {} not found (build it: cargo build --workspace --bins)",
                opts.nameserver_bin.display()
            );
        }
        let net = Net::create(opts.size + opts.spares + opts.nameservers)?;
        let mut cluster = Self {
            net,
            opts: opts.clone(),
            dir: dir.to_path_buf(),
            nodes: Vec::new(),
            nameservers: Vec::new(),
            members: String::new(),
            next_id: 1,
        };
        // Nameservers first, so the brokers' first reports find them up.
        for k in 0..opts.nameservers {
            let slot = cluster.broker_slots() + k;
            let dir = dir.join(format!("ns{k}"));
            std::fs::create_dir_all(&dir)?;
            cluster.nameservers.push(Nameserver {
                id: NAMESERVER_ID_BASE + k as u64,
                slot,
                addr: format!("{}:{NAMESERVER_PORT}", cluster.net.ip(slot)),
                log: dir.join("nameserver.log"),
                child: None,
            });
        }
        for k in 0..opts.nameservers {
            cluster.spawn_nameserver(k)?;
        }
        for slot in 0..opts.size {
            cluster.new_node(slot, Role::Voter, false)?;
        }
        cluster.members = cluster
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.addr))
            .collect::<Vec<_>>()
            .join(",");
        for id in cluster.ids() {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    fn new_node(&mut self, slot: usize, role: Role, joined: bool) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let dir = self.dir.join(format!("n{id}"));
        std::fs::create_dir_all(&dir)?;
        let clock = match &self.opts.faketime {
            Some(_) => Some(NodeClock::create(dir.join("faketime"))?),
            None => None,
        };
        self.nodes.push(Node {
            id,
            slot,
            addr: format!("{}:{BROKER_PORT}", self.net.ip(slot)),
            role,
            joined,
            log: dir.join("broker.log"),
            dir,
            child: None,
            paused: false,
            lazyfs: None,
            clock,
        });
        Ok(id)
    }

    /// Namespaces for broker nodes (the initial ones and spares); nameservers come after.
    fn broker_slots(&self) -> usize {
        self.opts.size + self.opts.spares
    }

    fn spawn_nameserver(&mut self, k: usize) -> Result<()> {
        let peers: Vec<String> = self
            .nameservers
            .iter()
            .filter(|n| n.id != self.nameservers[k].id)
            .map(|n| n.addr.clone())
            .collect();
        let ns = &self.nameservers[k];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&ns.log)
            .with_context(|| format!("opening {}", ns.log.display()))?;
        let mut cmd = self.net.command(ns.slot, &self.opts.nameserver_bin);
        cmd.args(["--listen", &ns.addr])
            .args(["--expiry-ms", &NAMESERVER_EXPIRY_MS.to_string()])
            .env("ROCKETRAFT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        if !peers.is_empty() {
            cmd.args(["--peers", &peers.join(",")]);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting nameserver {}", ns.id))?;
        self.nameservers[k].child = Some(child);
        Ok(())
    }

    /// The nameservers' ids ([`NAMESERVER_ID_BASE`] + k).
    pub fn nameserver_ids(&self) -> Vec<u64> {
        self.nameservers.iter().map(|n| n.id).collect()
    }

    /// Voters and learners: the nodes faults act on and final reads check.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| matches!(n.role, Role::Voter | Role::Learner))
            .map(|n| n.id)
            .collect()
    }

    pub fn voters(&self) -> Vec<u64> {
        self.with_role(Role::Voter)
    }

    pub fn with_role(&self, role: Role) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.role == role)
            .map(|n| n.id)
            .collect()
    }

    /// The initial group size.
    pub fn size(&self) -> usize {
        self.opts.size
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

    /// The namespace of broker node or nameserver `id`.
    pub fn slot(&self, id: u64) -> Result<usize> {
        if let Some(ns) = self.nameservers.iter().find(|n| n.id == id) {
            return Ok(ns.slot);
        }
        Ok(self.node(id)?.slot)
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.node(id).is_ok_and(|n| n.child.is_some())
    }

    /// A slot no node occupies (for a node to add), if any.
    pub fn free_slot(&self) -> Option<usize> {
        (0..self.broker_slots()).find(|s| {
            !self
                .nodes
                .iter()
                .any(|n| n.slot == *s && n.role != Role::Removed)
        })
    }

    /// Starts node `id` if it is not running (a restart keeps its data). A removed node
    /// stays down.
    pub fn spawn(&mut self, id: u64) -> Result<()> {
        let node = self.node(id)?;
        if node.child.is_some() || node.role == Role::Removed {
            return Ok(());
        }
        let slot = node.slot;
        let mut cmd = self.net.command(slot, &self.opts.broker_bin);
        let members = self.members.clone();
        let nameservers = self.nameserver_addrs().join(",");
        let (jepsen_bin, lazyfs, faketime, broker_bin) = (
            self.opts.jepsen_bin.clone(),
            self.opts.lazyfs,
            self.opts.faketime.clone(),
            self.opts.broker_bin.clone(),
        );
        let node = self.node_mut(id)?;
        let data_dir = node.data_dir();
        if lazyfs && node.lazyfs.is_none() {
            node.lazyfs = Some(LazyFsProcess::start(
                &jepsen_bin,
                &node.dir.join("backing"),
                &data_dir,
                &node.dir.join("lazyfs.log"),
            )?);
        }
        std::fs::create_dir_all(&data_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("opening {}", node.log.display()))?;
        cmd.args(["--node-id", &id.to_string(), "--group", GROUP])
            .args(["--listen", &node.addr]);
        if node.joined {
            cmd.arg("--join");
        } else {
            cmd.args(["--members", &members]);
        }
        if !nameservers.is_empty() {
            cmd.args(["--nameservers", &nameservers]);
        }
        cmd.arg("--data-dir")
            .arg(&data_dir)
            .env("ROCKETRAFT_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        if let (Some(lib), Some(clock)) = (&faketime, &node.clock) {
            clock.apply(&mut cmd, lib, &broker_bin);
        }
        let child = cmd.spawn().with_context(|| format!("starting node {id}"))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// SIGKILL and reap: the node gets no chance to flush anything.
    pub fn kill(&mut self, id: u64) -> Result<()> {
        let node = self.node_mut(id)?;
        if let Some(mut child) = node.child.take() {
            // A stopped process dies of SIGKILL too, but resuming first lets it be reaped
            // at once.
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
            child.kill().with_context(|| format!("killing node {id}"))?;
            child.wait()?;
        }
        node.paused = false;
        Ok(())
    }

    /// Kills node `id` and throws away everything its storage had not fsynced: a power
    /// loss of that node. Needs the cluster started with lazyfs.
    pub fn kill_and_lose_unsynced(&mut self, id: u64) -> Result<DropReport> {
        self.kill(id)?;
        let node = self.node_mut(id)?;
        let fs = node
            .lazyfs
            .as_mut()
            .context("lost writes need lazyfs (the cluster was started without it)")?;
        fs.drop_unsynced()
            .with_context(|| format!("dropping node {id}'s unsynced writes"))
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

    /// Node `id`'s clock, when the cluster runs with libfaketime.
    pub fn clock(&self, id: u64) -> Result<&NodeClock> {
        self.node(id)?
            .clock
            .as_ref()
            .context("clock faults need libfaketime (the cluster was started without it)")
    }

    /// Puts every node's clock back on real time.
    pub fn reset_clocks(&self) -> Result<()> {
        for n in &self.nodes {
            if let Some(c) = &n.clock {
                c.set_offset_ms(0)?;
            }
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

    /// Starts a new node with `--join` in a free slot; it waits there until a membership
    /// change adds it. Returns its id.
    pub fn start_joining(&mut self) -> Result<u64> {
        let slot = self
            .free_slot()
            .context("no free slot for a new node (all spares in use)")?;
        let id = self.new_node(slot, Role::Joining, true)?;
        self.spawn(id)?;
        Ok(id)
    }

    /// Records what the group says node `id` is; a node out of the group is stopped (its
    /// data stays on disk for the post-mortem, and a later add gets a new id and directory).
    pub fn set_role(&mut self, id: u64, role: Role) -> Result<()> {
        if role == Role::Removed {
            self.kill(id)?;
            if let Some(mut fs) = self.node_mut(id)?.lazyfs.take() {
                fs.stop();
            }
        }
        self.node_mut(id)?.role = role;
        Ok(())
    }

    fn admin(&self, id: u64, timeout: Duration) -> Result<BrokerAdminClient<Channel>> {
        admin_client(&self.node(id)?.addr, timeout)
    }

    /// An admin client of node `id` whose calls give up after `timeout`.
    pub fn admin_of(&self, id: u64, timeout: Duration) -> Result<BrokerAdminClient<Channel>> {
        self.admin(id, timeout)
    }

    pub async fn status(&self, id: u64) -> Status {
        group_status(&self.node(id)?.addr).await
    }

    /// Every broker slot's address, whether a node runs there or not: the clients spread
    /// over all of them, so nodes that membership changes add get traffic too.
    pub fn addrs(&self) -> Vec<String> {
        (0..self.broker_slots())
            .map(|s| format!("{}:{BROKER_PORT}", self.net.ip(s)))
            .collect()
    }

    pub fn nameserver_addrs(&self) -> Vec<String> {
        self.nameservers.iter().map(|n| n.addr.clone()).collect()
    }

    /// Where clients may send their calls: every broker slot, then every nameserver (which
    /// relays to the group as its routes say). Index `i < addrs().len()` is broker slot `i`.
    pub fn access_points(&self) -> Vec<String> {
        let mut out = self.addrs();
        out.extend(self.nameserver_addrs());
        out
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

    /// Waits until every member has applied what the leader has committed.
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

    /// Declares consumer group `name` with the most delivery attempts the broker allows
    /// (1,000), so that nothing goes to its dead-letter queue within a run: the group
    /// checker counts what the group received and acked, and a message popped 16 times by
    /// consumers whose receives all failed in flight would otherwise be dead-lettered
    /// unseen and look lost. At 3 s invisible, a 120 s run allows about 40 deliveries.
    pub async fn put_consumer_group(&self, name: &str) -> Result<()> {
        let (leader, _) = self.wait_leader(Duration::from_secs(30)).await?;
        self.admin(leader, Duration::from_secs(10))?
            .put_consumer_group(pb::PutConsumerGroupRequest {
                group: Some(pb::ConsumerGroupConfig {
                    name: name.into(),
                    max_delivery_attempts: 1000,
                    ..Default::default()
                }),
            })
            .await
            .context("declaring the consumer group")?;
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

    /// The offset `group` committed on one queue, as node `id` has it in its own applied
    /// state (`None`: none committed).
    pub async fn consumer_offset(
        &self,
        id: u64,
        group: &str,
        topic: &str,
        queue_id: u32,
    ) -> Result<Option<u64>> {
        let r = self
            .admin(id, Duration::from_secs(10))?
            .get_consumer_offset(pb::GetConsumerOffsetRequest {
                consumer_group: group.into(),
                topic: topic.into(),
                queue_id,
            })
            .await?
            .into_inner();
        Ok(r.offset)
    }

    /// Nodes whose process ended without the harness stopping it (a crash, or a refusal to
    /// start), with how it ended.
    pub fn exited(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let nodes = self.nodes.iter_mut().map(|n| (n.id, &mut n.child));
        let nameservers = self.nameservers.iter_mut().map(|n| (n.id, &mut n.child));
        for (id, child) in nodes.chain(nameservers) {
            if let Some(c) = child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                out.push(format!("node {id}: {status}"));
            }
        }
        out
    }

    /// The last lines of every node's log, for failure reports.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        let nodes = self.nodes.iter().map(|n| (n.id, &n.log));
        let nameservers = self.nameservers.iter().map(|n| (n.id, &n.log));
        for (id, log) in nodes.chain(nameservers) {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            out += &format!("--- node {id} ---\n");
            for l in tail.iter().rev() {
                out += l;
                out.push('\n');
            }
        }
        out
    }

    /// Stops every node by PID (paused ones are resumed first so SIGKILL is delivered),
    /// then their lazyfs mounts, then the nameservers.
    pub fn stop_all(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
                let _ = child.kill();
                let _ = child.wait();
            }
            if let Some(mut fs) = n.lazyfs.take() {
                fs.stop();
            }
        }
        for n in &mut self.nameservers {
            if let Some(mut child) = n.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A channel to `addr` whose connects and calls give up after `timeout`.
fn channel(addr: &str, timeout: Duration) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_lazy())
}

fn admin_client(addr: &str, timeout: Duration) -> Result<BrokerAdminClient<Channel>> {
    Ok(BrokerAdminClient::new(channel(addr, timeout)?).max_decoding_message_size(64 << 20))
}

/// What the node at `addr` says about its group (answered within half a second or not at
/// all: a paused or cut-off node must not stall the harness).
pub async fn group_status(addr: &str) -> Status {
    Ok(admin_client(addr, Duration::from_millis(500))?
        .group_status(pb::GroupStatusRequest {})
        .await?
        .into_inner())
}

/// The leader (node id, term) the nameserver at `addr` names for `group` in its routes:
/// `Ok(None)` when it knows the group but no live leader. Answered within half a second or
/// not at all, as [`group_status`].
pub async fn nameserver_leader(addr: &str, group: &str) -> Result<Option<(u64, u64)>> {
    let status = NameserverAdminClient::new(channel(addr, Duration::from_millis(500))?)
        .cluster_status(nspb::ClusterStatusRequest {})
        .await?
        .into_inner();
    let g = status
        .groups
        .iter()
        .find(|g| g.name == group)
        .with_context(|| format!("nameserver {addr} does not know group {group}"))?;
    Ok(g.leader_id.map(|l| (l, g.leader_term)))
}

/// The leader (node id, term) the nodes at `addrs` agree on: the highest term any node
/// leads in, if a majority of that leader's voters names it leader in that term. (The
/// voters come from the leader's own view, as membership changes move the majority.)
pub async fn agreed_leader(addrs: &[String]) -> Option<(u64, u64)> {
    let statuses = futures::future::join_all(addrs.iter().map(|a| group_status(a))).await;
    let ok: Vec<_> = statuses.into_iter().filter_map(Result::ok).collect();
    let lead = ok
        .iter()
        .filter(|s| s.role == "Leader")
        .max_by_key(|s| (s.term, s.node_id))?;
    let (term, leader) = (lead.term, lead.node_id);
    let voters: Vec<u64> = lead
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.node_id)
        .collect();
    let agree = ok
        .iter()
        .filter(|s| s.term == term && s.leader_id == Some(leader) && voters.contains(&s.node_id))
        .count();
    (agree * 2 > voters.len()).then_some((leader, term))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}
