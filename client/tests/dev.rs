//! The playground end to end, as a newcomer uses it: `rocketraft dev` starts a cluster, the
//! command line creates a topic, sends 1000 messages and consumes them, `group describe`
//! shows no lag, `offset reset` rewinds the group and it consumes all again, `cluster
//! status --json` parses, `broker transfer-leader` moves the leader; SIGTERM stops every
//! process, and starting again on the same data dir finds everything where it was.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use common::free_port;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// `rocketraft dev` as a child process, stopped by PID.
struct Dev {
    child: tokio::process::Child,
}

impl Dev {
    /// Starts the playground and waits for its ready line (JSON, with --json).
    async fn start(ns: &str, data: &Path, ports: &[u16]) -> anyhow::Result<(Self, Value)> {
        let ports = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rocketraft"))
            .args([
                "--nameserver",
                ns,
                "--json",
                "dev",
                "--broker-ports",
                &ports,
            ])
            .arg("--data-dir")
            .arg(data)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(READY_TIMEOUT, lines.next_line())
            .await
            .context("rocketraft dev was not ready in time")??
            .context("rocketraft dev exited before it was ready")?;
        Ok((Self { child }, serde_json::from_str(&line)?))
    }

    /// SIGTERM, then waits for a clean exit.
    async fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().context("already exited")?;
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM)?;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("rocketraft dev did not stop within 30 s of SIGTERM")??;
        ensure!(status.success(), "rocketraft dev exited with {status}");
        Ok(())
    }
}

fn cli(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_rocketraft"))
        .args(["--nameserver", ns, "--json"])
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "rocketraft {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn json(ns: &str, args: &[&str]) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(cli(ns, args)?.trim())?)
}

/// Polls `group describe` until `check` holds (deadline 20 s).
async fn describe_until(
    ns: &str,
    group: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = json(ns, &["group", "describe", group])?;
        if check(&d) {
            return Ok(d);
        }
        ensure!(Instant::now() < deadline, "{what}: {d}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The message ids of `send` or `consume` JSON output, one message per line.
fn message_ids(output: &str) -> anyhow::Result<std::collections::BTreeSet<String>> {
    output
        .lines()
        .map(|l| Ok(serde_json::from_str::<Value>(l)?["message_id"].to_string()))
        .collect()
}

fn stored(d: &Value) -> u64 {
    d["queues"].as_array().map_or(0, |q| {
        q.iter().filter_map(|q| q["offset_next"].as_u64()).sum()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playground_runs_the_whole_tour_and_restarts_on_its_data() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let ns = format!("127.0.0.1:{}", free_port());
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();

    let (dev, ready) = Dev::start(&ns, data.path(), &ports).await?;
    assert_eq!(ready["topic"], "TopicTest");
    assert_eq!(
        ready["groups"][0]["nodes"].as_array().map(Vec::len),
        Some(3)
    );
    let topics = json(&ns, &["topic", "list"])?;
    ensure!(
        topics.as_array().is_some_and(|t| t
            .iter()
            .any(|t| t["name"] == "TopicTest" && t["queues"] == 8)),
        "TopicTest with 8 queues: {topics}"
    );

    json(&ns, &["topic", "create", "Tour", "--queues", "4"])?;
    let sent = cli(&ns, &["send", "Tour", "tour {i}", "--count", "1000"])?;
    let sent_ids = message_ids(&sent)?;
    assert_eq!(sent_ids.len(), 1000);

    let described = json(&ns, &["topic", "describe", "Tour"])?;
    assert_eq!(described[0]["queues"], 4, "{described}");

    // Looked up by id and by key.
    let one: Value = serde_json::from_str(sent.lines().nth(500).context("a sent line")?)?;
    let id = one["message_id"].as_str().context("message_id")?;
    let found = json(&ns, &["message", "get", "--topic", "Tour", "--id", id])?;
    assert_eq!(
        found["messages"].as_array().map(Vec::len),
        Some(1),
        "{found}"
    );
    assert_eq!(found["messages"][0]["offset"], one["offset"], "{found}");
    assert_eq!(found["complete"], true);
    // By store time: everything sent in the last 10 minutes, all 1000.
    let recent = json(
        &ns,
        &[
            "message", "get", "--topic", "Tour", "--since", "10m", "--max", "1000",
        ],
    )?;
    assert_eq!(recent["messages"].as_array().map(Vec::len), Some(1000));
    assert_eq!(recent["complete"], true);
    let too_many = Command::new(env!("CARGO_BIN_EXE_rocketraft"))
        .args([
            "--nameserver",
            &ns,
            "message",
            "get",
            "--topic",
            "Tour",
            "--id",
            id,
        ])
        .args(["--max", "5000"])
        .output()?;
    let why = String::from_utf8_lossy(&too_many.stderr);
    ensure!(
        !too_many.status.success() && why.contains("max is 5000; the limit is 1000"),
        "an oversized lookup is refused naming the field: {why}"
    );
    cli(&ns, &["send", "TopicTest", "keyed", "--key", "order-42"])?;
    let by_key = json(
        &ns,
        &[
            "message",
            "get",
            "--topic",
            "TopicTest",
            "--key",
            "order-42",
        ],
    )?;
    assert_eq!(by_key["messages"][0]["body"], "keyed", "{by_key}");

    let consumed = cli(
        &ns,
        &[
            "consume",
            "Tour",
            "--group",
            "TourReaders",
            "--count",
            "1000",
        ],
    )?;
    let got = message_ids(&consumed)?;
    assert_eq!(got, sent_ids, "consumed exactly what was sent");

    let d = describe_until(&ns, "TourReaders", "no lag after consuming", |d| {
        d["lag"] == 0 && d["inflight"] == 0 && stored(d) == 1000
    })
    .await?;
    assert_eq!(d["queues"].as_array().map(Vec::len), Some(4), "{d}");

    // Rewound to the beginning, the group gets every message again.
    let reset = json(
        &ns,
        &[
            "offset",
            "reset",
            "--group",
            "TourReaders",
            "--topic",
            "Tour",
            "--to-timestamp",
            "0",
        ],
    )?;
    assert_eq!(
        reset["offsets"]["playground"],
        serde_json::json!([0, 0, 0, 0]),
        "{reset}"
    );
    describe_until(
        &ns,
        "TourReaders",
        "the whole topic to consume again",
        |d| d["lag"] == 1000,
    )
    .await?;
    let again = cli(
        &ns,
        &[
            "consume",
            "Tour",
            "--group",
            "TourReaders",
            "--count",
            "1000",
        ],
    )?;
    let again = message_ids(&again)?;
    assert_eq!(again, sent_ids, "consumed everything again after the reset");
    describe_until(&ns, "TourReaders", "no lag after consuming again", |d| {
        d["lag"] == 0
    })
    .await?;

    let status = json(&ns, &["cluster", "status"])?;
    assert_eq!(status[0]["available"], true, "{status}");
    let nodes = status[0]["nodes"].as_array().context("nodes")?;
    assert_eq!(nodes.len(), 3);
    // Every node has applied the tour's entries; lag is known (a leader is live).
    for n in nodes {
        ensure!(
            n["applied_index"].as_u64().is_some_and(|i| i > 0) && n["lag"].is_u64(),
            "node status: {n}"
        );
    }

    // Membership through the CLI: the group's members, then leadership to another voter.
    let members = json(&ns, &["broker", "members", "--broker-group", "playground"])?;
    assert_eq!(
        members["members"].as_array().map(Vec::len),
        Some(3),
        "{members}"
    );
    let leader = members["leader"].as_u64().context("a leader")?;
    let to = (1..=3).find(|n| *n != leader).context("another node")?;
    let moved = json(
        &ns,
        &[
            "broker",
            "transfer-leader",
            "--broker-group",
            "playground",
            "--to",
            &to.to_string(),
        ],
    )?;
    assert_eq!(moved["leader"].as_u64(), Some(to), "{moved}");
    let members = json(&ns, &["broker", "members", "--broker-group", "playground"])?;
    assert_eq!(members["leader"].as_u64(), Some(to), "{members}");

    dev.stop().await?;
    // Every child stopped with it: their ports are free again.
    for p in &ports {
        ensure!(
            std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok(),
            "port {p} still in use after the playground stopped"
        );
    }

    // Started again on the same data: the messages and the group's progress are there.
    let (dev, _) = Dev::start(&ns, data.path(), &ports).await?;
    describe_until(&ns, "TourReaders", "progress kept across a restart", |d| {
        d["lag"] == 0 && stored(d) == 1000
    })
    .await?;
    dev.stop().await
}
