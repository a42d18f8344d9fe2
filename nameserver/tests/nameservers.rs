//! Real processes: 3 nameservers and two 3-node broker groups reporting to them.
//!
//! - after a group's leader is SIGKILLed, every nameserver reports the new leader within 1 s
//!   of the election (measured and printed), and no nameserver ever reports an older leader
//!   term than it did before (checked on every poll);
//! - a killed nameserver leaves routes served by the others and converges when restarted;
//! - a nameserver partitioned from its peers (gossip blocked) and healed never lets a stale
//!   leader overwrite a newer one;
//! - topics are created across groups through any nameserver, bad input changes nothing;
//! - the official Python client with a nameserver as access point produces to and consumes
//!   from a topic spread over both groups.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

#[path = "../../broker/tests/common/clients.rs"]
mod clients;
use rocketraft_proto::admin as apb;
use rocketraft_proto::admin::broker_admin_client::BrokerAdminClient;
use rocketraft_proto::nameserver as pb;
use rocketraft_proto::nameserver::nameserver_admin_client::NameserverAdminClient;
use rocketraft_proto::rocketmq::v2;

/// The tests take turns: each starts 9 processes, and several worlds at once on a 2-core
/// machine would distort the timings measured here (and widen the window in which two
/// worlds could pick the same free port). A tokio mutex: it does not poison on failure.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn free_port() -> u16 {
    rocketraft_client::ports::free_loopback_port().expect("a free loopback port")
}

/// The broker binary, built by the same `cargo test --workspace` (it sits next to ours).
fn broker_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary directory")?;
    let bin = dir.join("rocketraft-broker");
    ensure!(
        bin.exists(),
        "{} not found: build the workspace first (cargo test --workspace builds it)",
        bin.display()
    );
    Ok(bin)
}

struct Proc {
    addr: String,
    args: Vec<String>,
    program: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.child = Some(
            Command::new(&self.program)
                .args(&self.args)
                .env("ROCKETRAFT_LOG", "info,openraft=warn")
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .spawn()
                .with_context(|| format!("spawning {}", self.program.display()))?,
        );
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

struct World {
    dir: tempfile::TempDir,
    nameservers: Vec<Proc>,
    /// group name -> node id -> broker process
    groups: BTreeMap<String, BTreeMap<u64, Proc>>,
}

impl World {
    fn start(groups: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(groups, &[])
    }

    fn start_with(groups: &[&str], broker_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_full(groups, broker_args, &[])
    }

    fn start_full(groups: &[&str], broker_args: &[&str], ns_args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ns_addrs: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let mut nameservers = Vec::new();
        for (i, addr) in ns_addrs.iter().enumerate() {
            let mut p = Proc {
                addr: addr.clone(),
                args: vec![
                    "--listen".into(),
                    addr.clone(),
                    "--peers".into(),
                    ns_addrs.join(","),
                    "--gossip-interval-ms".into(),
                    "250".into(),
                    "--expiry-ms".into(),
                    "3000".into(),
                ]
                .into_iter()
                .chain(ns_args.iter().map(|a| a.to_string()))
                .collect(),
                program: PathBuf::from(env!("CARGO_BIN_EXE_rocketraft-nameserver")),
                log: dir.path().join(format!("ns{i}.log")),
                child: None,
            };
            p.spawn()?;
            nameservers.push(p);
        }
        let broker = broker_binary()?;
        let mut all = BTreeMap::new();
        for g in groups {
            let addrs: BTreeMap<u64, String> = (1..=3)
                .map(|id| (id, format!("127.0.0.1:{}", free_port())))
                .collect();
            let members = addrs
                .iter()
                .map(|(id, a)| format!("{id}={a}"))
                .collect::<Vec<_>>()
                .join(",");
            let mut nodes = BTreeMap::new();
            for (id, addr) in &addrs {
                let mut p = Proc {
                    addr: addr.clone(),
                    args: vec![
                        "--node-id".into(),
                        id.to_string(),
                        "--group".into(),
                        g.to_string(),
                        "--listen".into(),
                        addr.clone(),
                        "--data-dir".into(),
                        dir.path().join(format!("{g}-{id}")).display().to_string(),
                        "--members".into(),
                        members.clone(),
                        "--nameservers".into(),
                        ns_addrs.join(","),
                    ]
                    .into_iter()
                    .chain(broker_args.iter().map(|a| a.to_string()))
                    .collect(),
                    program: broker.clone(),
                    log: dir.path().join(format!("{g}-{id}.log")),
                    child: None,
                };
                p.spawn()?;
                nodes.insert(*id, p);
            }
            all.insert(g.to_string(), nodes);
        }
        Ok(Self {
            dir,
            nameservers,
            groups: all,
        })
    }

    async fn ns(
        &self,
        i: usize,
    ) -> anyhow::Result<NameserverAdminClient<tonic::transport::Channel>> {
        Ok(NameserverAdminClient::connect(format!("http://{}", self.nameservers[i].addr)).await?)
    }

    /// Group statuses as nameserver `i` reports them.
    async fn status(&self, i: usize) -> anyhow::Result<BTreeMap<String, pb::GroupStatus>> {
        let resp = self
            .ns(i)
            .await?
            .cluster_status(pb::ClusterStatusRequest {})
            .await?
            .into_inner();
        Ok(resp
            .groups
            .into_iter()
            .map(|g| (g.name.clone(), g))
            .collect())
    }

    /// Waits until every running nameserver knows every group with a leader.
    async fn wait_converged(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut ok = true;
            for (i, ns) in self.nameservers.iter().enumerate() {
                if ns.child.is_none() {
                    continue;
                }
                let s = self.status(i).await.unwrap_or_default();
                ok &= self
                    .groups
                    .keys()
                    .all(|g| s.get(g).is_some_and(|g| g.leader_id.is_some()));
            }
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "nameservers did not converge within {timeout:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The leader of `group` as its own members report it (node id, term).
    async fn broker_leader(&self, group: &str) -> Option<(u64, u64)> {
        for p in self.groups[group].values() {
            if p.child.is_none() {
                continue;
            }
            let Ok(mut c) = BrokerAdminClient::connect(format!("http://{}", p.addr)).await else {
                continue;
            };
            if let Ok(s) = c.group_status(apb::GroupStatusRequest {}).await {
                let s = s.into_inner();
                if let Some(l) = s.leader_id {
                    return Some((l, s.term));
                }
            }
        }
        None
    }

    fn logs(&self) -> String {
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

/// Records, per nameserver and group, the highest leader term seen, and fails if a later
/// poll shows a lower one (a stale leader overwriting a newer one).
#[derive(Default)]
struct TermWatch(BTreeMap<(usize, String), u64>);

impl TermWatch {
    fn check(
        &mut self,
        ns: usize,
        status: &BTreeMap<String, pb::GroupStatus>,
    ) -> anyhow::Result<()> {
        for (g, s) in status {
            if s.leader_id.is_none() {
                continue;
            }
            let seen = self.0.entry((ns, g.clone())).or_default();
            ensure!(
                s.leader_term >= *seen,
                "nameserver {ns} went back from leader term {seen} to {} for group {g}",
                s.leader_term
            );
            *seen = s.leader_term;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nameservers_learn_a_new_leader_within_a_second_of_the_election() -> anyhow::Result<()> {
    let _turn = SERIAL.lock().await;
    let mut w = World::start(&["g1", "g2"])?;
    w.wait_converged(Duration::from_secs(30)).await?;
    let (old_leader, old_term) = w.broker_leader("g1").await.context("g1 leader")?;
    let mut watch = TermWatch::default();
    for i in 0..3 {
        watch.check(i, &w.status(i).await?)?;
    }
    w.groups
        .get_mut("g1")
        .context("g1")?
        .get_mut(&old_leader)
        .context("leader")?
        .kill();
    let killed_at = Instant::now();

    // Poll the survivors for the election's outcome and every nameserver for its view.
    let mut elected_at = None;
    let mut learned: BTreeMap<usize, Instant> = BTreeMap::new();
    let deadline = killed_at + Duration::from_secs(20);
    while learned.len() < 3 {
        ensure!(
            Instant::now() < deadline,
            "not converged: {learned:?}\n{}",
            w.logs()
        );
        if elected_at.is_none()
            && let Some((l, t)) = w.broker_leader("g1").await
            && l != old_leader
            && t > old_term
        {
            elected_at = Some(Instant::now());
        }
        for i in 0..3 {
            let s = w.status(i).await?;
            watch.check(i, &s)?;
            if !learned.contains_key(&i)
                && s.get("g1").is_some_and(|g| {
                    g.leader_id.is_some_and(|l| l != old_leader) && g.leader_term > old_term
                })
            {
                learned.insert(i, Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elected_at = elected_at.unwrap_or(killed_at);
    let worst = learned
        .values()
        .map(|t| t.saturating_duration_since(elected_at))
        .max()
        .unwrap_or_default();
    println!(
        "nameserver convergence: election {} ms after the kill; every nameserver knew the new leader {} ms after the election",
        elected_at.duration_since(killed_at).as_millis(),
        worst.as_millis()
    );
    ensure!(
        worst < Duration::from_secs(1),
        "a nameserver learned the new leader {worst:?} after the election"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_nameserver_converges_and_partitions_never_regress_leaders()
-> anyhow::Result<()> {
    let _turn = SERIAL.lock().await;
    let mut w = World::start(&["g1"])?;
    w.wait_converged(Duration::from_secs(30)).await?;
    let mut watch = TermWatch::default();

    // Kill nameserver 2: the others keep serving routes.
    w.nameservers[2].kill();
    for i in 0..2 {
        let s = w.status(i).await?;
        watch.check(i, &s)?;
        ensure!(
            s["g1"].leader_id.is_some(),
            "nameserver {i} still routes g1"
        );
    }
    // Restarted on the same address, it catches up in one gossip round (plus startup).
    w.nameservers[2].spawn()?;
    let restarted = Instant::now();
    loop {
        if let Ok(s) = w.status(2).await
            && s.get("g1")
                .is_some_and(|g| g.leader_id.is_some() && g.nodes.len() == 3)
        {
            break;
        }
        ensure!(
            restarted.elapsed() < Duration::from_secs(10),
            "restarted nameserver did not converge\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "restarted nameserver converged {} ms after its start",
        restarted.elapsed().as_millis()
    );

    // Partition nameserver 0 from its peers, then kill the group's leader and heal.
    let peers: Vec<String> = w.nameservers[1..].iter().map(|p| p.addr.clone()).collect();
    w.ns(0)
        .await?
        .set_gossip_blocked(pb::SetGossipBlockedRequest { peers })
        .await?;
    for i in 1..3 {
        let me = vec![w.nameservers[0].addr.clone()];
        w.ns(i)
            .await?
            .set_gossip_blocked(pb::SetGossipBlockedRequest { peers: me })
            .await?;
    }
    let (old_leader, old_term) = w.broker_leader("g1").await.context("leader")?;
    w.groups
        .get_mut("g1")
        .context("g1")?
        .get_mut(&old_leader)
        .context("leader")?
        .kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut healed = false;
    loop {
        let mut all_new = true;
        for i in 0..3 {
            let s = w.status(i).await?;
            watch.check(i, &s)?;
            all_new &= s
                .get("g1")
                .is_some_and(|g| g.leader_term > old_term && g.leader_id != Some(old_leader));
        }
        if all_new && healed {
            break;
        }
        if !healed
            && w.broker_leader("g1")
                .await
                .is_some_and(|(l, _)| l != old_leader)
        {
            // Give the partition a moment with the new leader known on one side only.
            tokio::time::sleep(Duration::from_millis(500)).await;
            for i in 0..3 {
                w.ns(i)
                    .await?
                    .set_gossip_blocked(pb::SetGossipBlockedRequest { peers: vec![] })
                    .await?;
            }
            healed = true;
        }
        ensure!(
            Instant::now() < deadline,
            "no convergence after healing\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_span_groups_and_bad_admin_input_changes_nothing() -> anyhow::Result<()> {
    let _turn = SERIAL.lock().await;
    let w = World::start(&["g1", "g2"])?;
    w.wait_converged(Duration::from_secs(30)).await?;
    let mut ns = w.ns(1).await?;
    let topic = |name: &str, queues: u32| apb::TopicConfig {
        name: name.into(),
        queue_count: queues,
        permission: apb::Permission::ReadWrite as i32,
        message_types: vec![],
        ..Default::default()
    };
    let created = ns
        .create_topic(pb::CreateTopicRequest {
            topic: Some(topic("Spread", 2)),
            groups: vec![],
        })
        .await?
        .into_inner();
    assert_eq!(created.groups, ["g1", "g2"]);

    let bad = [
        (
            topic("bad name", 2),
            vec![],
            tonic::Code::InvalidArgument,
            "topic.name",
        ),
        (
            topic(&"x".repeat(128), 2),
            vec![],
            tonic::Code::InvalidArgument,
            "127",
        ),
        (
            topic("Fine", 0),
            vec![],
            tonic::Code::InvalidArgument,
            "queue_count",
        ),
        (
            topic("Fine", 5000),
            vec![],
            tonic::Code::InvalidArgument,
            "queue_count",
        ),
        (
            topic("Fine", 2),
            vec!["g1".to_string(), "nope".to_string()],
            tonic::Code::NotFound,
            "nope",
        ),
    ];
    for (t, groups, code, needle) in bad {
        let err = ns
            .create_topic(pb::CreateTopicRequest {
                topic: Some(t),
                groups,
            })
            .await
            .expect_err("must be refused");
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(needle), "{needle} in {err:?}");
    }
    // Reports carry topics to every nameserver; wait for Spread on each (the route checks
    // below ask nameserver 1, which may learn of g2's topic a gossip round after another),
    // then check nothing else appeared (the unknown-group request was refused before
    // touching g1).
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0..w.nameservers.len() {
        loop {
            let topics = w
                .ns(i)
                .await?
                .list_topics(pb::ListTopicsRequest {})
                .await?
                .into_inner()
                .topics;
            let names: Vec<(String, Vec<String>)> = topics
                .iter()
                .map(|t| {
                    (
                        t.topic.as_ref().map(|t| t.name.clone()).unwrap_or_default(),
                        t.groups.clone(),
                    )
                })
                .collect();
            if names
                == [(
                    "Spread".to_string(),
                    vec!["g1".to_string(), "g2".to_string()],
                )]
            {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "topics on nameserver {i}: {names:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Our client's route API: both groups, live nodes leader first, versions; an unknown
    // topic has no groups; a bad name or too many topics is refused. On a loaded machine a
    // group may hold an election in between (the route is leaderless until the winner's
    // next report), so wait until each route names the group's current leader first.
    let deadline = Instant::now() + Duration::from_secs(10);
    let routes = loop {
        let routes = ns
            .get_routes(pb::GetRoutesRequest {
                topics: vec!["Spread".into(), "Nowhere".into()],
            })
            .await?
            .into_inner();
        let mut leaders_first = true;
        for g in routes.topics.iter().flat_map(|t| &t.groups) {
            let leader = w.broker_leader(&g.group).await.context("leader")?.0;
            leaders_first &=
                g.leader_term > 0 && g.addrs.first() == Some(&w.groups[&g.group][&leader].addr);
        }
        if leaders_first {
            break routes;
        }
        ensure!(
            Instant::now() < deadline,
            "routes do not name the leaders first: {routes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(routes.nameservers.len(), 3, "{:?}", routes.nameservers);
    assert_eq!(routes.topics.len(), 2);
    let spread = &routes.topics[0];
    assert_eq!(spread.topic, "Spread");
    let names: Vec<&str> = spread.groups.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(names, ["g1", "g2"]);
    for g in &spread.groups {
        assert_eq!(g.addrs.len(), 3, "{g:?}");
        assert_eq!(g.topic.as_ref().map(|t| t.queue_count), Some(2));
        assert!(g.version.is_some(), "{g:?}");
    }
    assert!(routes.topics[1].groups.is_empty(), "{:?}", routes.topics[1]);
    for (topics, needle) in [
        (vec!["bad name".to_string()], "topics"),
        (vec!["T".to_string(); 1025], "1024"),
    ] {
        let err = ns
            .get_routes(pb::GetRoutesRequest { topics })
            .await
            .expect_err("must be refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(needle), "{needle} in {err:?}");
    }

    // A consumer group's retry policy reaches its consumers through their settings; a bad
    // one is refused, naming the field, and changes nothing.
    let retry_group = |multiplier: f64| apb::ConsumerGroupConfig {
        name: "Retrying".into(),
        orderly: false,
        max_delivery_attempts: 5,
        broadcast: false,
        retry_policy: Some(apb::RetryPolicy {
            policy: Some(apb::retry_policy::Policy::Exponential(
                apb::ExponentialRetry {
                    initial_ms: 200,
                    max_ms: 5000,
                    multiplier,
                },
            )),
        }),
    };
    ns.put_consumer_group(pb::PutConsumerGroupRequest {
        group: Some(retry_group(1.5)),
        groups: vec![],
    })
    .await?;
    let err = ns
        .put_consumer_group(pb::PutConsumerGroupRequest {
            group: Some(retry_group(50.0)),
            groups: vec![],
        })
        .await
        .expect_err("multiplier out of range");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("multiplier"), "{err:?}");
    let policy = consumer_backoff(&w.nameservers[0].addr, "Retrying").await?;
    let Some(v2::retry_policy::Strategy::ExponentialBackoff(e)) = policy.strategy else {
        bail!("not exponential: {policy:?}");
    };
    assert_eq!(policy.max_attempts, 5);
    assert_eq!(
        e.initial.map(|d| (d.seconds, d.nanos)),
        Some((0, 200_000_000))
    );
    assert_eq!(e.max.map(|d| d.seconds), Some(5));
    assert!((e.multiplier - 1.5).abs() < 1e-6, "{e:?}");
    // A group never configured gets RocketMQ's default schedule.
    let default = consumer_backoff(&w.nameservers[0].addr, "NeverConfigured").await?;
    let Some(v2::retry_policy::Strategy::CustomizedBackoff(c)) = default.strategy else {
        bail!("not customized: {default:?}");
    };
    assert_eq!((default.max_attempts, c.next.len()), (17, 18));

    // Deleting from one group leaves it on the other.
    let err = ns
        .delete_topic(pb::DeleteTopicRequest {
            name: "Nowhere".into(),
            groups: vec![],
        })
        .await
        .expect_err("unknown topic");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let deleted = ns
        .delete_topic(pb::DeleteTopicRequest {
            name: "Spread".into(),
            groups: vec!["g2".into()],
        })
        .await?
        .into_inner();
    assert_eq!(deleted.groups, ["g2"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let topics = w
            .ns(0)
            .await?
            .list_topics(pb::ListTopicsRequest {})
            .await?
            .into_inner()
            .topics;
        let groups: Vec<Vec<String>> = topics.iter().map(|t| t.groups.clone()).collect();
        if groups == [vec!["g1".to_string()]] {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "after deleting from g2: {groups:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The retry policy a subscriber of `group` is given in its settings, through the access
/// point at `addr`. Reports and gossip carry a new group configuration to every nameserver,
/// so this waits (bounded) until the answer is not the default for a configured group.
async fn consumer_backoff(addr: &str, group: &str) -> anyhow::Result<v2::RetryPolicy> {
    use v2::messaging_service_client::MessagingServiceClient;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut client = MessagingServiceClient::connect(format!("http://{addr}")).await?;
        let settings = v2::TelemetryCommand {
            status: None,
            command: Some(v2::telemetry_command::Command::Settings(v2::Settings {
                client_type: Some(v2::ClientType::SimpleConsumer as i32),
                pub_sub: Some(v2::settings::PubSub::Subscription(v2::Subscription {
                    group: Some(v2::Resource {
                        resource_namespace: String::new(),
                        name: group.into(),
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            })),
        };
        let mut request = tonic::Request::new(tokio_stream::iter(vec![settings]));
        request
            .metadata_mut()
            .insert("x-mq-client-id", "retry-policy-probe".parse()?);
        let mut replies = client.telemetry(request).await?.into_inner();
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .context("settings reply")??
            .context("stream ended")?;
        let Some(v2::telemetry_command::Command::Settings(s)) = reply.command else {
            bail!("not a settings reply: {reply:?}");
        };
        let policy = s.backoff_policy.context("no backoff policy")?;
        let is_default = matches!(
            policy.strategy,
            Some(v2::retry_policy::Strategy::CustomizedBackoff(_))
        );
        if group == "NeverConfigured" || !is_default {
            return Ok(policy);
        }
        ensure!(
            Instant::now() < deadline,
            "{group}: still the default policy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl World {
    /// Creates `topic` (one queue per group) on every group and, if given, a consumer group
    /// (name, orderly, max delivery attempts), through nameserver 0; waits until every nameserver routes the topic
    /// to every group.
    async fn spread_topic(
        &self,
        topic: &str,
        group: Option<(&str, bool, u32)>,
    ) -> anyhow::Result<()> {
        self.create_topic_on(topic, group, &[]).await
    }

    /// Like [`World::spread_topic`], on the named broker groups only (empty: all).
    async fn create_topic_on(
        &self,
        topic: &str,
        group: Option<(&str, bool, u32)>,
        on: &[&str],
    ) -> anyhow::Result<()> {
        let hosts = if on.is_empty() {
            self.groups.len()
        } else {
            on.len()
        };
        let mut ns = self.ns(0).await?;
        ns.create_topic(pb::CreateTopicRequest {
            topic: Some(apb::TopicConfig {
                name: topic.into(),
                queue_count: 1,
                permission: apb::Permission::ReadWrite as i32,
                message_types: vec![],
                ..Default::default()
            }),
            groups: on.iter().map(|g| g.to_string()).collect(),
        })
        .await?;
        if let Some((name, orderly, max_delivery_attempts)) = group {
            ns.put_consumer_group(pb::PutConsumerGroupRequest {
                group: Some(apb::ConsumerGroupConfig {
                    name: name.into(),
                    orderly,
                    max_delivery_attempts,
                    broadcast: false,
                    retry_policy: None,
                }),
                groups: vec![],
            })
            .await?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        'wait: loop {
            for i in 0..self.nameservers.len() {
                let t = self
                    .ns(i)
                    .await?
                    .list_topics(pb::ListTopicsRequest {})
                    .await?
                    .into_inner()
                    .topics;
                let routed = t.iter().any(|t| {
                    t.topic.as_ref().is_some_and(|t| t.name == topic) && t.groups.len() == hosts
                });
                if !routed {
                    ensure!(
                        Instant::now() < deadline,
                        "topic {topic} not routed to every group"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'wait;
                }
            }
            return Ok(());
        }
    }

    /// How many messages each group hosting `topic` stored in it (queue 0).
    async fn stored_per_group(&self, topic: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for (g, nodes) in &self.groups {
            let Some(p) = nodes.values().find(|p| p.child.is_some()) else {
                continue;
            };
            let mut c = BrokerAdminClient::connect(format!("http://{}", p.addr)).await?;
            match c
                .queue_offsets(apb::QueueOffsetsRequest {
                    topic: topic.into(),
                    queue_id: 0,
                })
                .await
            {
                Ok(offsets) => {
                    out.insert(g.clone(), offsets.into_inner().offset_next);
                }
                // Not hosted by this group.
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }
}

/// Runs a scenario of an interop driver to success within `timeout`; returns its stdout.
async fn run_client(
    mut cmd: tokio::process::Command,
    what: &str,
    w: &World,
) -> anyhow::Result<String> {
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.kill_on_drop(true).output())
        .await
        .with_context(|| format!("{what} did not finish in 180 s"))??;
    ensure!(
        out.status.success(),
        "{what} failed: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
        w.logs()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_client_uses_a_nameserver_as_access_point() -> anyhow::Result<()> {
    let _turn = SERIAL.lock().await;
    // Transactions are checked back after 1 s, so the orphan resolves within the scenario.
    let w = World::start_with(
        &["g1", "g2"],
        &[
            "--transaction-check-first-ms",
            "1000",
            "--transaction-check-interval-ms",
            "1000",
        ],
    )?;
    w.wait_converged(Duration::from_secs(30)).await?;
    // One nameserver: grpc-python sends a multi-address target's whole address list as the
    // HTTP/2 :authority ("a:1,b:2"), which h2 refuses (RST_STREAM PROTOCOL_ERROR), so Python
    // users give one address (or a DNS name that resolves to several nameservers).
    let access_point = w.nameservers[1].addr.clone();
    let script = clients::interop_dir().join("python_scenarios.py");
    // (scenario, topic, group, extra argument, group config: orderly, max delivery attempts)
    for (scenario, topic, group, extra, config) in [
        ("simple", "NsSimple", "NsSimpleGroup", Some("20"), None),
        ("sql", "NsSql", "NsSqlGroup", None, None),
        ("fifo", "NsFifo", "NsFifoGroup", None, Some((true, 0))),
        ("delay", "NsDelay", "NsDelayGroup", None, None),
        ("transaction", "NsTxn", "NsTxnGroup", None, None),
        ("invisible", "NsInvisible", "NsInvisibleGroup", None, None),
        ("dlq", "NsDlq", "NsDlqGroup", None, Some((false, 2))),
    ] {
        w.spread_topic(topic, config.map(|(o, m)| (group, o, m)))
            .await?;
        let mut cmd = tokio::process::Command::new(clients::python()?);
        cmd.arg(&script)
            .args([scenario, &access_point, topic, group])
            .args(extra);
        run_client(cmd, &format!("python {scenario}"), &w).await?;
        let stored = w.stored_per_group(topic).await?;
        println!("python {scenario} through the nameservers: stored per group {stored:?}");
        if scenario == "simple" {
            ensure!(
                stored.values().all(|n| *n > 0),
                "topic {topic} not spread: {stored:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_rust_client_uses_the_nameserver_list_as_access_point() -> anyhow::Result<()> {
    let _turn = SERIAL.lock().await;
    let driver = tokio::task::spawn_blocking(clients::build_rust_interop).await??;
    let w = World::start_with(
        &["g1", "g2"],
        &[
            "--transaction-check-first-ms",
            "1000",
            "--transaction-check-interval-ms",
            "1000",
        ],
    )?;
    w.wait_converged(Duration::from_secs(30)).await?;
    // The Rust client's list syntax: comma-separated.
    let access_point = w
        .nameservers
        .iter()
        .map(|p| p.addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    for (scenario, topic, group, extra, config) in [
        ("simple", "NsRustSimple", "NsRustGroup", Some("20"), None),
        (
            "fifo",
            "NsRustFifo",
            "NsRustFifoGroup",
            None,
            Some((true, 0)),
        ),
        ("delay", "NsRustDelay", "NsRustDelayGroup", None, None),
        ("transaction", "NsRustTxn", "NsRustTxnGroup", None, None),
        ("dlq", "NsRustDlq", "NsRustDlqGroup", None, Some((false, 2))),
    ] {
        // The Rust 5.0.0 FIFO scenario receives one message per call, alternating over the
        // route's queues; with a queue in a second group that its message groups did not hash
        // to, every other call waits out a whole long poll, too slow for its budget. One group.
        let on: &[&str] = if scenario == "fifo" { &["g1"] } else { &[] };
        w.create_topic_on(topic, config.map(|(o, m)| (group, o, m)), on)
            .await?;
        let mut cmd = tokio::process::Command::new(&driver);
        cmd.args([scenario, &access_point, topic, group])
            .args(extra);
        let out = run_client(cmd, &format!("rust {scenario}"), &w).await?;
        ensure!(
            out.lines()
                .last()
                .is_some_and(|l| l.starts_with("SUMMARY ")),
            "no summary: {out}"
        );
        let stored = w.stored_per_group(topic).await?;
        println!("rust {scenario} through the nameservers: stored per group {stored:?}");
        if scenario == "simple" {
            ensure!(
                stored.values().all(|n| *n > 0),
                "topic {topic} not spread: {stored:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nameserver_creates_unknown_topics_on_every_group_when_enabled() -> anyhow::Result<()> {
    let _turn = SERIAL.lock().await;
    use rocketraft_proto::rocketmq::v2;
    use rocketraft_proto::rocketmq::v2::messaging_service_client::MessagingServiceClient;
    let w = World::start_full(&["g1", "g2"], &[], &["--auto-create-topic-queues", "2"])?;
    w.wait_converged(Duration::from_secs(30)).await?;
    let mut client =
        MessagingServiceClient::connect(format!("http://{}", w.nameservers[2].addr)).await?;
    let route = client
        .query_route(v2::QueryRouteRequest {
            topic: Some(v2::Resource {
                resource_namespace: String::new(),
                name: "AutoNs".into(),
            }),
            endpoints: None,
        })
        .await?
        .into_inner();
    assert_eq!(
        route.status.as_ref().map(|s| s.code),
        Some(v2::Code::Ok as i32),
        "{route:?}"
    );
    let per_group: BTreeMap<String, usize> =
        route
            .message_queues
            .iter()
            .fold(BTreeMap::new(), |mut m, q| {
                *m.entry(
                    q.broker
                        .as_ref()
                        .map(|b| b.name.clone())
                        .unwrap_or_default(),
                )
                .or_default() += 1;
                m
            });
    assert_eq!(
        per_group,
        BTreeMap::from([("g1".to_string(), 2), ("g2".to_string(), 2)])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_through_a_nameserver_reach_the_group_that_delivered() -> anyhow::Result<()> {
    use v2::messaging_service_client::MessagingServiceClient;
    use v2::receive_message_response::Content;
    let _turn = SERIAL.lock().await;
    let w = World::start(&["g1", "g2"])?;
    w.wait_converged(Duration::from_secs(30)).await?;
    let topic = "AckSpread";
    w.spread_topic(topic, None).await?;
    let resource = |name: &str| {
        Some(v2::Resource {
            resource_namespace: String::new(),
            name: name.into(),
        })
    };
    fn headers<T>(body: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(body);
        r.metadata_mut().insert(
            "x-mq-client-id",
            tonic::metadata::MetadataValue::from_static("ack-router"),
        );
        r
    }

    // Three messages stored in each group (sent to one of its nodes).
    for (g, nodes) in &w.groups {
        let addr = &nodes.values().next().context("a node")?.addr;
        let mut broker = MessagingServiceClient::connect(format!("http://{addr}")).await?;
        for i in 0..3 {
            let message = v2::Message {
                topic: resource(topic),
                user_properties: Default::default(),
                system_properties: Some(v2::SystemProperties {
                    message_id: format!("{g}-{i}"),
                    message_type: v2::MessageType::Normal as i32,
                    ..Default::default()
                }),
                body: format!("{g} {i}").into_bytes().into(),
            };
            let sent = broker
                .send_message(headers(v2::SendMessageRequest {
                    messages: vec![message],
                }))
                .await?
                .into_inner();
            ensure!(
                sent.status
                    .as_ref()
                    .is_some_and(|s| s.code == v2::Code::Ok as i32),
                "send to {g}: {sent:?}"
            );
        }
    }

    // Received through a nameserver, queue by queue (the route names each queue's group).
    let mut ns =
        MessagingServiceClient::connect(format!("http://{}", w.nameservers[1].addr)).await?;
    let mut entries = Vec::new();
    for g in w.groups.keys() {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = 0;
        while got < 3 {
            ensure!(Instant::now() < deadline, "received {got} of 3 from {g}");
            let mut stream = ns
                .receive_message(headers(v2::ReceiveMessageRequest {
                    group: resource("AckGroup"),
                    message_queue: Some(v2::MessageQueue {
                        topic: resource(topic),
                        id: 0,
                        broker: Some(v2::Broker {
                            name: g.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    filter_expression: Some(v2::FilterExpression {
                        r#type: v2::FilterType::Tag as i32,
                        expression: "*".into(),
                    }),
                    batch_size: 16,
                    invisible_duration: Some(prost_types::Duration {
                        seconds: 60,
                        nanos: 0,
                    }),
                    auto_renew: false,
                    long_polling_timeout: Some(prost_types::Duration {
                        seconds: 2,
                        nanos: 0,
                    }),
                    attempt_id: None,
                }))
                .await?
                .into_inner();
            while let Some(frame) = stream.message().await? {
                if let Some(Content::Message(m)) = frame.content {
                    let sp = m.system_properties.context("system properties")?;
                    let handle = sp.receipt_handle.context("receipt handle")?;
                    ensure!(handle.ends_with(&format!(".{g}")), "{handle} from {g}");
                    entries.push(v2::AckMessageEntry {
                        message_id: sp.message_id,
                        receipt_handle: handle,
                        lite_topic: None,
                    });
                    got += 1;
                }
            }
        }
    }

    // One ack through another nameserver, with the entries of both groups: each entry
    // reaches the group that delivered it. (Sent by topic alone, half would be refused.)
    let mut ns0 =
        MessagingServiceClient::connect(format!("http://{}", w.nameservers[0].addr)).await?;
    let ack = |entries: Vec<v2::AckMessageEntry>| v2::AckMessageRequest {
        group: resource("AckGroup"),
        topic: resource(topic),
        entries,
    };
    let acked = ns0
        .ack_message(headers(ack(entries.clone())))
        .await?
        .into_inner();
    ensure!(
        acked
            .status
            .as_ref()
            .is_some_and(|s| s.code == v2::Code::Ok as i32),
        "ack: {acked:?}"
    );
    ensure!(acked.entries.len() == 6, "ack entries: {acked:?}");
    for e in &acked.entries {
        ensure!(
            e.status
                .as_ref()
                .is_some_and(|s| s.code == v2::Code::Ok as i32),
            "entry {e:?}"
        );
    }
    // Acked means gone: the same handles are now stale in their own groups.
    let again = ns0.ack_message(headers(ack(entries))).await?.into_inner();
    for e in &again.entries {
        ensure!(
            e.status
                .as_ref()
                .is_some_and(|s| s.code == v2::Code::InvalidReceiptHandle as i32),
            "acked twice: {e:?}"
        );
    }
    Ok(())
}

/// SIGTERM, then a bounded wait for the process to exit.
fn terminate(p: &mut Proc) -> anyhow::Result<()> {
    let mut child = p.child.take().context("not running")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not exit within 15 s of SIGTERM", p.addr);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Waits until node `addr` follows a leader and has applied that leader's commit index.
async fn wait_caught_up(addr: &str, leader_addr: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let leader = async {
            let mut c = BrokerAdminClient::connect(format!("http://{leader_addr}")).await?;
            anyhow::Ok(
                c.group_status(apb::GroupStatusRequest {})
                    .await?
                    .into_inner(),
            )
        };
        let node = async {
            let mut c = BrokerAdminClient::connect(format!("http://{addr}")).await?;
            anyhow::Ok(
                c.group_status(apb::GroupStatusRequest {})
                    .await?
                    .into_inner(),
            )
        };
        if let (Ok(l), Ok(n)) = (leader.await, node.await)
            && n.leader_id.is_some()
            && n.applied_index >= l.commit_index
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{addr} did not catch up within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The documented rolling restart (followers first; then leadership handed to a restarted
/// node and the old leader restarted), with a producer and a consumer running throughout
/// through the nameservers: every acknowledged send is consumed, and neither client sees
/// an error (the client retries what the brokers ask it to).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load_loses_nothing() -> anyhow::Result<()> {
    use rocketraft_client::membership::BrokerGroup;
    use rocketraft_client::{ClientConfig, Filter, Message, Producer, SimpleConsumer};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let _turn = SERIAL.lock().await;
    let mut w = World::start(&["g1"])?;
    w.wait_converged(Duration::from_secs(30)).await?;
    w.spread_topic("Rolling", Some(("Rollers", false, 16)))
        .await?;
    let nameservers: Vec<String> = w.nameservers.iter().map(|n| n.addr.clone()).collect();
    let config = ClientConfig::new(nameservers.clone());
    let producer = Producer::builder(config.clone())
        .topics(["Rolling"])
        .build()
        .await?;
    let consumer = SimpleConsumer::builder(config, "Rollers")
        .subscribe("Rolling", Filter::all())
        .await_duration(Duration::from_secs(2))
        .build()
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let produced = {
        let (stop, errors) = (stop.clone(), errors.clone());
        tokio::spawn(async move {
            let mut acked = std::collections::BTreeSet::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match producer
                    .send(Message::new("Rolling", format!("roll-{i}")))
                    .await
                {
                    Ok(_) => {
                        acked.insert(format!("roll-{i}"));
                    }
                    Err(e) => {
                        eprintln!("send roll-{i}: {e}");
                        errors.fetch_add(1, Ordering::SeqCst);
                    }
                }
                i += 1;
            }
            producer.close().await;
            acked
        })
    };
    let received = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let drained = Arc::new(AtomicBool::new(false));
    let consumed = {
        let (stop, errors, received) = (drained.clone(), errors.clone(), received.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(180);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match consumer.receive(32, Duration::from_secs(20)).await {
                    Ok(batch) => {
                        if let Err(e) = consumer.ack_all(&batch).await {
                            eprintln!("ack: {e}");
                            errors.fetch_add(1, Ordering::SeqCst);
                        }
                        let mut r = received.lock().expect("lock");
                        for m in batch {
                            r.insert(String::from_utf8_lossy(&m.body).into_owned());
                        }
                    }
                    Err(e) => {
                        eprintln!("receive: {e}");
                        errors.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };

    // Followers first, then hand leadership to a restarted node and restart the old leader.
    let (leader, _) = w.broker_leader("g1").await.context("a leader")?;
    let mut order: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    order.push(leader);
    for id in order {
        let addr = w.groups["g1"][&id].addr.clone();
        if id == leader {
            let to = *w.groups["g1"]
                .keys()
                .find(|n| **n != id)
                .context("another node")?;
            let group = BrokerGroup::new(vec![addr.clone()])?;
            let (now, _) = group.transfer_leader(to).await?;
            ensure!(now == to, "leadership went to {now}, not {to}");
        }
        let proc = w
            .groups
            .get_mut("g1")
            .and_then(|g| g.get_mut(&id))
            .context("node")?;
        terminate(proc)?;
        proc.spawn()?;
        let (l, _) = w.broker_leader("g1").await.context("a leader")?;
        let leader_addr = w.groups["g1"][&l].addr.clone();
        wait_caught_up(&addr, &leader_addr, Duration::from_secs(30)).await?;
    }
    // Some load after the last restart, then stop producing and drain.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let acked = produced.await?;
    ensure!(
        acked.len() > 50,
        "the producer made progress: {} sends",
        acked.len()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = acked
            .iter()
            .filter(|b| !received.lock().expect("lock").contains(*b))
            .count();
        if missing == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{missing} of {} acknowledged sends never consumed",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drained.store(true, Ordering::SeqCst);
    consumed.await?;
    assert_eq!(
        errors.load(Ordering::SeqCst),
        0,
        "client errors during the rolling restart"
    );
    eprintln!(
        "rolling restart: {} sends acknowledged, all consumed",
        acked.len()
    );
    Ok(())
}
