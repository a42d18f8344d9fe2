//! The deployment in `deploy/` end to end: `deploy/build-images.sh` builds the FROM-scratch
//! image from this build's binaries, `deploy/compose.yaml` brings up 3 nameservers and two
//! 3-node broker groups as containers, and the test waits for every container's health check.
//! Through the CLI inside the compose network it creates a topic on both groups, sends and
//! consumes messages (counts and bodies checked); through the port published on the host's
//! loopback it reads the cluster status. Then it kills the container of group g1's leader and
//! sends to a topic that lives only on g1 until a send succeeds (within 15 s of the kill),
//! checks that every acknowledged message is consumed, and restarts the killed node, which
//! rejoins. Everything (containers, network, volumes, image tag) is removed at the end, also
//! when the test fails.
//!
//! Skipped (with a note on stderr) where there is no Docker engine or no Compose.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use common::{free_port, sibling};
use serde_json::Value;

/// How long the image build may take (copying and stripping a few hundred MB).
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);
/// Every container healthy and both groups with a leader and 3 live nodes.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// A send to g1's topic succeeds within this long after its leader was killed.
const FAILOVER_BUDGET: Duration = Duration::from_secs(15);
/// Any one docker or CLI command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `cmd` to completion, killing it after `timeout`; stdout on success, else an error
/// with both streams.
fn run(cmd: &mut Command, timeout: Duration) -> anyhow::Result<String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let mut out_pipe = child.stdout.take().context("stdout")?;
    let mut err_pipe = child.stderr.take().context("stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    match status {
        None => bail!("{what} did not finish within {timeout:?}\nstdout: {out}\nstderr: {err}"),
        Some(s) if !s.success() => bail!("{what} failed ({s})\nstdout: {out}\nstderr: {err}"),
        Some(_) => Ok(out),
    }
}

/// True if `program args` runs and exits 0.
fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `docker compose` (v2) if the plugin is there, else `docker-compose` (v1).
fn compose_program() -> Option<Vec<String>> {
    if succeeds("docker", &["compose", "version"]) {
        Some(vec!["docker".into(), "compose".into()])
    } else if succeeds("docker-compose", &["version"]) {
        Some(vec!["docker-compose".into()])
    } else {
        None
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the client crate is in the workspace")
        .to_path_buf()
}

/// One compose project; `down -v` and the image tag removed when dropped.
struct Deployment {
    compose: Vec<String>,
    project: String,
    file: PathBuf,
    image: String,
    ns_ports: [u16; 3],
    /// ns1's container, where the CLI runs (set once the project is up).
    ns1: Option<String>,
}

impl Deployment {
    fn compose(&self) -> Command {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..])
            .args(["-p", &self.project, "-f"])
            .arg(&self.file)
            .env("RR_IMAGE", &self.image)
            .env("RR_NS1_PORT", self.ns_ports[0].to_string())
            .env("RR_NS2_PORT", self.ns_ports[1].to_string())
            .env("RR_NS3_PORT", self.ns_ports[2].to_string());
        cmd
    }

    fn compose_run(&self, args: &[&str], timeout: Duration) -> anyhow::Result<String> {
        run(self.compose().args(args), timeout)
    }

    /// The container id of a service.
    fn container(&self, service: &str) -> anyhow::Result<String> {
        let id = self
            .compose_run(&["ps", "-q", service], COMMAND_TIMEOUT)?
            .trim()
            .to_string();
        ensure!(!id.is_empty(), "service {service} has no container");
        Ok(id)
    }

    /// The CLI inside the compose network (in ns1's container), with --json.
    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let ns1 = self.ns1.as_deref().context("the project is not up")?;
        run(
            Command::new("docker")
                .args(["exec", ns1, "/usr/local/bin/rocketraft"])
                .args(["--nameserver", "ns1:9876", "--json"])
                .args(args),
            COMMAND_TIMEOUT,
        )
    }

    fn cli_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = self.cli(args)?;
        serde_json::from_str(out.trim()).with_context(|| format!("rocketraft {args:?}: {out}"))
    }

    /// Name, health and state of every container of the project.
    fn container_states(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let ids = self.compose_run(&["ps", "-q"], COMMAND_TIMEOUT)?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let out = run(
            Command::new("docker")
                .args([
                    "inspect",
                    "--format",
                    "{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}no-healthcheck{{end}} {{.State.Status}}",
                ])
                .args(&ids),
            COMMAND_TIMEOUT,
        )?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((
                    f.next()?.trim_start_matches('/').to_string(),
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                ))
            })
            .collect())
    }

    /// The last lines of every service's log.
    fn logs(&self) -> String {
        self.compose_run(&["logs", "--no-color", "--tail", "40"], COMMAND_TIMEOUT)
            .unwrap_or_else(|e| format!("(no logs: {e:#})"))
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let down = self.compose_run(
            &["down", "-v", "--remove-orphans", "--timeout", "5"],
            Duration::from_secs(120),
        );
        if let Err(e) = down {
            eprintln!("compose down failed: {e:#}");
        }
        let rmi = run(
            Command::new("docker").args(["rmi", &self.image]),
            COMMAND_TIMEOUT,
        );
        if let Err(e) = rmi {
            eprintln!("removing {} failed: {e:#}", self.image);
        }
    }
}

/// `field` of every line of `send` or `consume` JSON output (one message per line).
fn field_of_lines(output: &str, field: &str) -> anyhow::Result<Vec<String>> {
    output
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).with_context(|| format!("line {l:?}"))?;
            Ok(match &v[field] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        })
        .collect()
}

/// Group `name` of a `cluster status --json` answer.
fn group<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status.as_array()?.iter().find(|g| g["name"] == name)
}

/// A group with a leader and `nodes` live nodes.
fn group_ready(status: &Value, name: &str, nodes: usize) -> bool {
    group(status, name).is_some_and(|g| {
        g["available"] == true
            && g["leader"].is_u64()
            && g["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().filter(|n| n["down"] == false).count() == nodes)
    })
}

#[test]
fn compose_cluster_survives_the_loss_of_a_leader() -> anyhow::Result<()> {
    if !succeeds("docker", &["info"]) {
        eprintln!("SKIPPED compose test: `docker info` fails (no Docker engine reachable)");
        return Ok(());
    }
    let Some(compose) = compose_program() else {
        eprintln!("SKIPPED compose test: neither `docker compose` nor `docker-compose` works");
        return Ok(());
    };
    let bin_dir = sibling("rocketraft-broker")?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    sibling("rocketraft-nameserver")?;
    sibling("rocketraft")?;
    let root = repo_root();
    let tag = format!("rr-test-{}", std::process::id());

    // The guard first: whatever part of the following fails, its Drop removes it.
    let mut dep = Deployment {
        compose,
        project: tag.clone(),
        file: root.join("deploy/compose.yaml"),
        image: format!("rocketraft:{tag}"),
        ns_ports: [free_port(), free_port(), free_port()],
        ns1: None,
    };
    let started = Instant::now();
    let built = run(
        Command::new(root.join("deploy/build-images.sh"))
            .arg("--bin-dir")
            .arg(&bin_dir)
            .args(["--tag", &tag]),
        BUILD_TIMEOUT,
    )?;
    ensure!(built.trim() == dep.image, "built {built:?}");
    eprintln!("image {} built in {:?}", dep.image, started.elapsed());

    let result = exercise(&mut dep);
    if result.is_err() {
        eprintln!("--- container states ---\n{:?}", dep.container_states());
        eprintln!("--- logs ---\n{}", dep.logs());
    }
    result
}

fn exercise(dep: &mut Deployment) -> anyhow::Result<()> {
    let t0 = Instant::now();
    dep.compose_run(&["up", "-d"], Duration::from_secs(180))?;
    dep.ns1 = Some(dep.container("ns1")?);
    eprintln!("compose up in {:?}", t0.elapsed());

    // Every container healthy (the health check is `rocketraft probe .../readyz`).
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let states = dep.container_states()?;
        if let Some((name, _, state)) = states.iter().find(|(_, _, s)| s != "running") {
            bail!("container {name} is {state}");
        }
        let unhealthy: Vec<_> = states.iter().filter(|(_, h, _)| h != "healthy").collect();
        if states.len() == 9 && unhealthy.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "containers not healthy within {READY_TIMEOUT:?}: {unhealthy:?} ({} containers)",
            states.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("all 9 containers healthy after {:?}", t0.elapsed());

    // Both groups led, all nodes live, as the nameserver sees them.
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let status = dep.cli_json(&["cluster", "status"]);
        if let Ok(s) = &status
            && group_ready(s, "g1", 3)
            && group_ready(s, "g2", 3)
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "groups not ready within {READY_TIMEOUT:?}: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("both groups ready after {:?}", t0.elapsed());

    // The nameservers' client ports are published on the host's loopback only, and the
    // admin API answers there.
    let ns1 = dep.ns1.clone().context("ns1")?;
    let mapping = run(
        Command::new("docker").args(["port", &ns1, "9876/tcp"]),
        COMMAND_TIMEOUT,
    )?;
    ensure!(
        mapping.trim() == format!("127.0.0.1:{}", dep.ns_ports[0]),
        "ns1's port is published as {mapping:?}"
    );
    let host_status: Value = serde_json::from_str(
        run(
            Command::new(env!("CARGO_BIN_EXE_rocketraft"))
                .args(["--nameserver", &format!("127.0.0.1:{}", dep.ns_ports[0])])
                .args(["--json", "cluster", "status"]),
            COMMAND_TIMEOUT,
        )?
        .trim(),
    )?;
    ensure!(
        group(&host_status, "g1").is_some() && group(&host_status, "g2").is_some(),
        "cluster status from the host: {host_status}"
    );

    // A topic on both groups: send, consume, compare.
    dep.cli(&["topic", "create", "Orders", "--queues", "4"])?;
    wait_routed(dep, "Orders", &["g1", "g2"])?;
    const N: usize = 40;
    let sent = dep.cli(&["send", "Orders", "order {i}", "--count", &N.to_string()])?;
    let sent_groups: BTreeSet<String> =
        field_of_lines(&sent, "broker_group")?.into_iter().collect();
    ensure!(
        sent.lines().count() == N,
        "{N} sends acknowledged, got: {sent}"
    );
    ensure!(
        sent_groups == BTreeSet::from(["g1".to_string(), "g2".to_string()]),
        "sends spread over both groups, got {sent_groups:?}"
    );
    let consumed = dep.cli(&[
        "consume",
        "Orders",
        "--group",
        "Readers",
        "--count",
        &N.to_string(),
        "--idle-timeout-ms",
        "20000",
    ])?;
    let bodies = field_of_lines(&consumed, "body")?;
    let expected: BTreeSet<String> = (0..N).map(|i| format!("order {i}")).collect();
    ensure!(
        bodies.len() == N && bodies.iter().cloned().collect::<BTreeSet<_>>() == expected,
        "consumed {} messages, expected {expected:?}: {bodies:?}",
        bodies.len()
    );
    eprintln!("{N} messages sent over g1 and g2 and consumed");

    // A topic only on g1, whose leader is then killed.
    dep.cli(&[
        "topic",
        "create",
        "Failover",
        "--queues",
        "4",
        "--broker-group",
        "g1",
    ])?;
    wait_routed(dep, "Failover", &["g1"])?;
    let before = dep.cli(&["send", "Failover", "before {i}", "--count", "10"])?;
    ensure!(
        before.lines().count() == 10,
        "sends before the kill: {before}"
    );
    let mut acked: BTreeSet<String> = (0..10).map(|i| format!("before {i}")).collect();

    let status = dep.cli_json(&["cluster", "status"])?;
    let g1 = group(&status, "g1").context("g1 in cluster status")?;
    let leader = g1["leader"].as_u64().context("g1 has a leader")?;
    let leader_addr = g1["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["node_id"] == leader))
        .and_then(|n| n["addr"].as_str())
        .context("the leader's address")?;
    // Advertised as <service>:8081.
    let leader_service = leader_addr
        .split(':')
        .next()
        .context("leader address")?
        .to_string();
    let leader_container = dep.container(&leader_service)?;
    run(
        Command::new("docker").args(["kill", &leader_container]),
        COMMAND_TIMEOUT,
    )?;
    let killed_at = Instant::now();
    eprintln!("killed g1's leader, node {leader} ({leader_service})");

    // Sends until one succeeds: bounded in attempts and time.
    let mut attempts = 0;
    let mut failures = Vec::new();
    let recovered = loop {
        attempts += 1;
        let body = format!("after {attempts}");
        match dep.cli(&["send", "Failover", &body]) {
            Ok(out) if out.lines().count() == 1 => {
                acked.insert(body);
                break killed_at.elapsed();
            }
            Ok(out) => failures.push(format!("unexpected output {out:?}")),
            Err(e) => failures.push(format!("{e:#}")),
        }
        ensure!(
            killed_at.elapsed() < FAILOVER_BUDGET && attempts < 100,
            "no send succeeded within {FAILOVER_BUDGET:?} of the kill ({attempts} attempts): {failures:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "first send after the kill succeeded {recovered:?} after it ({attempts} attempts, {} failed)",
        failures.len()
    );
    // And they keep succeeding.
    let more = dep.cli(&["send", "Failover", "later {i}", "--count", "20"])?;
    ensure!(more.lines().count() == 20, "sends after failover: {more}");
    acked.extend((0..20).map(|i| format!("later {i}")));

    let status = dep.cli_json(&["cluster", "status"])?;
    let new_leader = group(&status, "g1").and_then(|g| g["leader"].as_u64());
    ensure!(
        new_leader.is_some_and(|l| l != leader),
        "g1's leader after the kill: {new_leader:?} (killed {leader})"
    );

    // Every acknowledged message is there (a failed attempt may have been stored too).
    let consumed = dep.cli(&[
        "consume",
        "Failover",
        "--group",
        "FailoverReaders",
        "--idle-timeout-ms",
        "5000",
    ])?;
    let got: BTreeSet<String> = field_of_lines(&consumed, "body")?.into_iter().collect();
    let missing: Vec<_> = acked.difference(&got).collect();
    ensure!(
        missing.is_empty(),
        "acknowledged but not consumed: {missing:?}"
    );
    eprintln!(
        "all {} acknowledged messages of g1's topic consumed ({} in all)",
        acked.len(),
        got.len()
    );

    // The killed node starts again on its volume and rejoins.
    dep.compose_run(&["start", &leader_service], COMMAND_TIMEOUT)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let status = dep.cli_json(&["cluster", "status"]);
        if let Ok(s) = &status
            && group_ready(s, "g1", 3)
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{leader_service} did not rejoin within {READY_TIMEOUT:?}: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("{leader_service} rejoined; whole run {:?}", t0.elapsed());
    Ok(())
}

/// Waits until `topic list` shows `topic` on exactly `groups`.
fn wait_routed(dep: &Deployment, topic: &str, groups: &[&str]) -> anyhow::Result<()> {
    let want: BTreeSet<&str> = groups.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = dep.cli_json(&["topic", "list"])?;
        let on: Option<BTreeSet<&str>> = list.as_array().and_then(|ts| {
            ts.iter().find(|t| t["name"] == topic).map(|t| {
                t["groups"]
                    .as_array()
                    .map(|g| g.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default()
            })
        });
        if on.as_ref() == Some(&want) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "topic {topic} not routed on {groups:?}: {list}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
