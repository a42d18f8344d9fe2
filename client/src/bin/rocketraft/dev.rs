//! `rocketraft dev`: the local playground. Runs a nameserver and broker groups as child
//! processes of the sibling binaries, creates a topic, and stops them all on Ctrl-C/SIGTERM.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rocketraft_client::admin::{Admin, TopicSpec};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long the playground waits for every group to elect a leader and report it.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct DevArgs {
    /// Where the nodes keep their data and logs; restarting reuses it.
    #[arg(long, default_value = "./rocketraft-data")]
    data_dir: PathBuf,
    /// Broker groups to run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    groups: u32,
    /// Nodes per broker group.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=7))]
    nodes: u32,
    /// The first broker node's port; the others follow it.
    #[arg(long, default_value_t = 8081)]
    first_broker_port: u16,
    /// Every broker node's port, comma-separated (groups x nodes of them), instead of
    /// consecutive ports from --first-broker-port.
    #[arg(long, value_delimiter = ',')]
    broker_ports: Vec<u16>,
    /// The topic to create once the cluster is up ("" for none).
    #[arg(long, default_value = "TopicTest")]
    topic: String,
    /// Queues of that topic per broker group.
    #[arg(long, default_value_t = 8)]
    queues: u32,
    /// Do not create unknown topics on first use (a production setting; the playground
    /// creates them, with 8 queues, as RocketMQ's dev setups do).
    #[arg(long)]
    no_auto_create: bool,
    /// Where rocketraft-nameserver and rocketraft-broker are; this binary's directory by
    /// default.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// A child process, its name and its log.
struct Node {
    name: String,
    log: PathBuf,
    child: Child,
}

impl Node {
    fn spawn(name: String, program: &Path, args: &[String], log: PathBuf) -> anyhow::Result<Self> {
        let out = std::fs::File::create(&log)
            .with_context(|| format!("creating log file {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        // Should this process be killed without stopping them (SIGKILL runs no cleanup),
        // the kernel sends each child SIGTERM, so no node outlives the playground. The
        // signal follows the thread that forks: the main thread, which lives as long as
        // the process.
        // SAFETY: prctl is async-signal-safe and touches only the child's own state.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self { name, log, child })
    }

    /// The last lines of the node's log, for an error message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// The playground's processes; stopped (SIGTERM, then SIGKILL after a grace period) by PID.
struct Playground {
    nodes: Vec<Node>,
}

impl Playground {
    /// Fails, with its log, if a node has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for n in &mut self.nodes {
            if let Some(status) = n.child.try_wait()? {
                bail!(
                    "{} exited ({status}); the end of {}:\n{}",
                    n.name,
                    n.log.display(),
                    n.log_tail()
                );
            }
        }
        Ok(())
    }

    async fn stop(&mut self) {
        for n in &self.nodes {
            if let Some(pid) = n.child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
        }
        for n in &mut self.nodes {
            match tokio::time::timeout(STOP_GRACE, n.child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    eprintln!("{} did not stop within {STOP_GRACE:?}; killing it", n.name);
                    let _ = n.child.kill().await;
                }
            }
        }
    }
}

fn sibling(bin_dir: &Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    let dir = match bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no directory")?
            .to_path_buf(),
    };
    let path = dir.join(name);
    ensure!(
        path.is_file(),
        "{} not found; build it beside rocketraft (cargo build --release -p rocketraft-broker -p rocketraft-nameserver) or pass --bin-dir",
        path.display()
    );
    Ok(path)
}

/// The broker ports, group by group.
fn broker_ports(a: &DevArgs) -> anyhow::Result<Vec<u16>> {
    let count = (a.groups * a.nodes) as usize;
    if !a.broker_ports.is_empty() {
        ensure!(
            a.broker_ports.len() == count,
            "--broker-ports has {} ports; {} groups of {} nodes need {count}",
            a.broker_ports.len(),
            a.groups,
            a.nodes
        );
        return Ok(a.broker_ports.clone());
    }
    (0..count)
        .map(|i| {
            a.first_broker_port
                .checked_add(i as u16)
                .context("--first-broker-port leaves too few ports below 65536")
        })
        .collect()
}

pub async fn run(nameserver: &str, json: bool, a: DevArgs) -> anyhow::Result<()> {
    let ns_bin = sibling(&a.bin_dir, "rocketraft-nameserver")?;
    let broker_bin = sibling(&a.bin_dir, "rocketraft-broker")?;
    let ports = broker_ports(&a)?;
    let host = nameserver
        .rsplit_once(':')
        .map(|(h, _)| h)
        .context("--nameserver must be host:port")?;
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("creating {}", a.data_dir.display()))?;
    let auto_create = if a.no_auto_create { "0" } else { "8" };

    // Signals are caught from the start, so a Ctrl-C or SIGTERM while the cluster is still
    // starting stops the children too.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut pg = Playground { nodes: Vec::new() };
    let started = start_all(
        &mut pg,
        &a,
        nameserver,
        host,
        &ports,
        &ns_bin,
        &broker_bin,
        auto_create,
    );
    let result = match started {
        Ok(groups) => tokio::select! {
            r = serve(&mut pg, &a, nameserver, json, &groups) => r,
            _ = term.recv() => Ok(()),
            _ = int.recv() => Ok(()),
        },
        Err(e) => Err(e),
    };
    pg.stop().await;
    if !json {
        eprintln!("playground stopped");
    }
    result
}

/// Starts the nameserver and the broker nodes; returns each group's name and addresses.
#[allow(clippy::too_many_arguments)]
fn start_all(
    pg: &mut Playground,
    a: &DevArgs,
    nameserver: &str,
    host: &str,
    ports: &[u16],
    ns_bin: &Path,
    broker_bin: &Path,
    auto_create: &str,
) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    pg.nodes.push(Node::spawn(
        "nameserver".into(),
        ns_bin,
        &[
            "--listen".into(),
            nameserver.into(),
            "--auto-create-topic-queues".into(),
            auto_create.into(),
        ],
        a.data_dir.join("nameserver.log"),
    )?);
    let mut groups = Vec::new();
    for g in 0..a.groups as usize {
        let name = if a.groups == 1 {
            "playground".to_string()
        } else {
            format!("playground-{}", g + 1)
        };
        let addrs: Vec<String> = ports[g * a.nodes as usize..(g + 1) * a.nodes as usize]
            .iter()
            .map(|p| format!("{host}:{p}"))
            .collect();
        let members = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("{}={addr}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        for (i, addr) in addrs.iter().enumerate() {
            let id = i + 1;
            let node = format!("{name}-node{id}");
            pg.nodes.push(Node::spawn(
                format!("broker {name} node {id}"),
                broker_bin,
                &[
                    "--node-id".into(),
                    id.to_string(),
                    "--group".into(),
                    name.clone(),
                    "--listen".into(),
                    addr.clone(),
                    "--data-dir".into(),
                    a.data_dir.join(&node).display().to_string(),
                    "--members".into(),
                    members.clone(),
                    "--nameservers".into(),
                    nameserver.into(),
                    "--auto-create-topic-queues".into(),
                    auto_create.into(),
                ],
                a.data_dir.join(format!("{node}.log")),
            )?);
        }
        groups.push((name, addrs));
    }
    Ok(groups)
}

/// Waits for the cluster, creates the topic, prints how to use it, and watches the nodes.
async fn serve(
    pg: &mut Playground,
    a: &DevArgs,
    nameserver: &str,
    json: bool,
    groups: &[(String, Vec<String>)],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    wait_ready(pg, nameserver, groups.len(), deadline).await?;
    if !a.topic.is_empty() {
        create_topic(pg, nameserver, a, deadline).await?;
    }
    if json {
        println!(
            "{}",
            serde_json::json!({
                "nameserver": nameserver,
                "groups": groups.iter().map(|(n, addrs)| serde_json::json!({"name": n, "nodes": addrs})).collect::<Vec<_>>(),
                "topic": a.topic,
                "data_dir": a.data_dir,
            })
        );
    } else {
        println!("rocketraft playground is up.");
        println!("  nameserver (the access point for the official clients): {nameserver}");
        for (name, addrs) in groups {
            println!("  broker group {name}: {}", addrs.join(", "));
        }
        if !a.topic.is_empty() {
            println!(
                "  topic {} ({} queues, every message type)",
                a.topic, a.queues
            );
        }
        println!("  data and logs: {}", a.data_dir.display());
        println!("Try, in another terminal:");
        println!("  rocketraft cluster status");
        println!("  rocketraft send {} 'hello {{i}}' --count 100", a.topic);
        println!(
            "  rocketraft consume {} --group Readers --count 100",
            a.topic
        );
        println!("  rocketraft group describe Readers");
        println!("Ctrl-C stops everything; starting again reuses the data.");
    }
    watch_nodes(pg).await
}

async fn wait_ready(
    pg: &mut Playground,
    nameserver: &str,
    groups: usize,
    deadline: Instant,
) -> anyhow::Result<()> {
    loop {
        pg.check_alive()?;
        if let Ok(mut admin) = Admin::connect(nameserver).await
            && let Ok(status) = admin.cluster_status().await
            && status.len() >= groups
            && status.iter().all(|g| g.available)
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the broker groups had no leader after {READY_TIMEOUT:?}; logs are in the data dir"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create_topic(
    pg: &mut Playground,
    nameserver: &str,
    a: &DevArgs,
    deadline: Instant,
) -> anyhow::Result<()> {
    let spec = TopicSpec {
        name: a.topic.clone(),
        queues: a.queues,
        ..Default::default()
    };
    loop {
        pg.check_alive()?;
        let err = match Admin::connect(nameserver).await {
            Ok(mut admin) => match admin.create_topic(&spec).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            },
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(err.context(format!("creating topic {}", a.topic)));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Watches the children until the caller's signal ends the playground.
async fn watch_nodes(pg: &mut Playground) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        // A node that dies is reported once; the others keep serving, as a cluster would.
        let mut i = 0;
        while i < pg.nodes.len() {
            if let Some(status) = pg.nodes[i].child.try_wait()? {
                let n = pg.nodes.remove(i);
                eprintln!(
                    "{} exited ({status}); the end of {}:\n{}",
                    n.name,
                    n.log.display(),
                    n.log_tail()
                );
            } else {
                i += 1;
            }
        }
        if pg.nodes.is_empty() {
            bail!("every node of the playground exited");
        }
    }
}
