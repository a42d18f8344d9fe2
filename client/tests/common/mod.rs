//! A local cluster of real processes for the client tests: one nameserver and one 3-node
//! broker group on free loopback ports, killed by PID when dropped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use rocketraft_client::admin::{Admin, TopicSpec};

pub fn free_port() -> u16 {
    rocketraft_client::ports::free_loopback_port().expect("a free loopback port")
}

/// A sibling binary of the workspace (cargo test --workspace builds them all).
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("target directory")?;
    let bin = dir.join(name);
    ensure!(
        bin.exists(),
        "{} not found: build the workspace first",
        bin.display()
    );
    Ok(bin)
}

pub struct LocalCluster {
    pub dir: tempfile::TempDir,
    pub nameserver: String,
    pub group: String,
    /// Broker client addresses, node ids 1..=3 in order.
    pub brokers: Vec<String>,
    ns_proc: Option<Child>,
    broker_procs: Vec<Option<Child>>,
    broker_args: Vec<String>,
    /// Each broker's `/metrics` endpoint (host:port).
    pub broker_http: Vec<String>,
}

impl LocalCluster {
    pub fn start(group: &str) -> anyhow::Result<Self> {
        Self::start_with(group, &[])
    }

    /// With extra broker flags.
    pub fn start_with(group: &str, broker_args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let nameserver = format!("127.0.0.1:{}", free_port());
        let brokers: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let broker_http: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let ns_log = std::fs::File::create(dir.path().join("ns.log"))?;
        let ns_proc = Command::new(sibling("rocketraft-nameserver")?)
            .args(["--listen", &nameserver])
            .env("ROCKETRAFT_LOG", "info,openraft=warn")
            .stdout(Stdio::from(ns_log.try_clone()?))
            .stderr(Stdio::from(ns_log))
            .spawn()?;
        let mut cluster = Self {
            dir,
            nameserver,
            group: group.to_string(),
            brokers,
            ns_proc: Some(ns_proc),
            broker_procs: Vec::new(),
            broker_args: broker_args.iter().map(|a| a.to_string()).collect(),
            broker_http,
        };
        for i in 0..3 {
            let child = cluster.spawn_broker(i)?;
            cluster.broker_procs.push(Some(child));
        }
        Ok(cluster)
    }

    fn spawn_broker(&self, i: usize) -> anyhow::Result<Child> {
        let members = self
            .brokers
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("broker{}.log", i + 1)))?;
        Ok(Command::new(sibling("rocketraft-broker")?)
            .args(["--node-id", &(i + 1).to_string(), "--group", &self.group])
            .args(["--listen", &self.brokers[i]])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("n{}", i + 1)))
            .args(["--members", &members, "--nameservers", &self.nameserver])
            .args(["--http-listen", &self.broker_http[i]])
            .args(&self.broker_args)
            .env("ROCKETRAFT_LOG", "info,openraft=warn")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?)
    }

    /// Waits until the nameserver routes the group with a leader and all 3 nodes live.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(mut admin) = Admin::connect(&self.nameserver).await
                && let Ok(groups) = admin.cluster_status().await
                && let Some(g) = groups.iter().find(|g| g.name == self.group)
                && let Some(leader) = g.leader
                && g.nodes.iter().filter(|n| !n.down).count() == 3
            {
                return Ok(leader);
            }
            ensure!(
                Instant::now() < deadline,
                "cluster not ready within {timeout:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates `topic` and waits until the nameserver routes it.
    pub async fn create_topic(&self, topic: &str, queues: u32) -> anyhow::Result<()> {
        let mut admin = Admin::connect(&self.nameserver).await?;
        admin
            .create_topic(&TopicSpec {
                name: topic.into(),
                queues,
                ..Default::default()
            })
            .await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if admin.list_topics().await?.iter().any(|t| t.name == topic) {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "topic {topic} not routed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs broker node `id` (1-based).
    pub fn kill_broker(&mut self, id: u64) {
        if let Some(Some(mut c)) = self.broker_procs.get_mut(id as usize - 1).map(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let lines: Vec<_> = text.lines().collect();
                    out += &format!(
                        "--- {} ---\n{}\n",
                        p.display(),
                        lines[lines.len().saturating_sub(15)..].join("\n")
                    );
                }
            }
        }
        out
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for c in self
            .broker_procs
            .iter_mut()
            .chain(std::iter::once(&mut self.ns_proc))
        {
            if let Some(mut c) = c.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
