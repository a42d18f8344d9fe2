//! The official Python client (`rocketmq-python-client` 5.1.2, unmodified, in the virtualenv
//! scripts/setup.sh installs) consuming from a real 3-node group through a follower's address:
//! SimpleConsumer with TAG and SQL92 filters, an orderly group, DELAY, TRANSACTION (commit,
//! rollback, and an orphan resolved by the broker's check), ChangeInvisibleDuration and stale
//! receipt handles, the dead-letter queue, two PushConsumers sharing a group, and a
//! SimpleConsumer that outlives the leader.
//!
//! Each test runs one scenario of tests/interop/python_scenarios.py, which checks what it
//! receives itself and prints a JSON summary as its last stdout line; the test sets the
//! cluster up, runs the scenario and checks the summary again.
//!
//! The client's SimpleConsumer polls one queue per receive, picked at random (5.1.2 builds a
//! fresh round-robin selector with a random start for every receive), and an empty queue costs
//! a whole long poll; so topics get few queues: one where a scenario has only a handful of
//! messages, two where it needs them spread. The script's checks for silence assume at most
//! two queues (QUIET_MIN_CALLS).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, ensure};
use common::{Cluster, append_retrying, assert_delay_lateness, batch, python};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::time::Instant;

/// The tests of one binary run in parallel; on a 2-core machine nine 3-node clusters plus
/// their clients at once would starve the timing checks (delay lateness, invisibility), so the
/// scenarios of this binary take turns. A tokio mutex: it does not poison when a test fails.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A running cluster with the scenario's topic and groups, and the follower clients talk to.
struct Env {
    cluster: Cluster,
    leader: u64,
    follower: u64,
    access_point: String,
}

/// A 3-node cluster for one scenario (see [`Cluster::for_scenario`]), clients on a follower.
async fn start(
    broker_args: &[&str],
    topic: &str,
    queues: u32,
    groups: &[(&str, bool, u32)],
) -> anyhow::Result<Env> {
    let (cluster, leader, follower) =
        Cluster::for_scenario(broker_args, topic, queues, groups).await?;
    let access_point = cluster.nodes[&follower].addr.clone();
    Ok(Env {
        cluster,
        leader,
        follower,
        access_point,
    })
}

/// The script's command for `scenario` against the follower. Its stderr goes to a file in
/// the cluster's directory (returned), so that it can be shown even after a timeout.
fn scenario_command(
    env: &Env,
    scenario: &str,
    args: &[&str],
    label: &str,
) -> anyhow::Result<(Command, PathBuf)> {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/python_scenarios.py");
    let stderr_path = env.cluster.dir.path().join(format!("{label}.stderr"));
    let stderr = std::fs::File::create(&stderr_path)
        .with_context(|| format!("creating {}", stderr_path.display()))?;
    let mut cmd = Command::new(python()?);
    cmd.arg(&script)
        .arg(scenario)
        .arg(&env.access_point)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true);
    Ok((cmd, stderr_path))
}

/// The last `n` lines of a file (empty if it cannot be read).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// An error carrying what went wrong, the script's stderr and the brokers' logs.
fn failure(env: &Env, what: impl std::fmt::Display, stderr_path: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{what}\n--- script stderr ({}) ---\n{}\n--- brokers ---\n{}",
        stderr_path.display(),
        tail(stderr_path, 80),
        env.cluster.logs_tail()
    )
}

/// The JSON summary a scenario prints as its last stdout line.
fn summary(scenario: &str, stdout: &str) -> anyhow::Result<Value> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .with_context(|| format!("scenario {scenario} printed no summary"))?;
    let summary: Value = serde_json::from_str(line)
        .with_context(|| format!("summary of scenario {scenario} is not JSON: {line}"))?;
    ensure!(
        summary["scenario"] == scenario,
        "summary of another scenario: {summary}"
    );
    eprintln!("{scenario}: {summary}");
    Ok(summary)
}

/// Runs `scenario` to completion within `timeout`; it must exit 0. Returns its summary.
async fn run_scenario(
    env: &mut Env,
    scenario: &str,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<Value> {
    run_scenario_with_fault(env, scenario, args, timeout, None).await
}

/// Like [`run_scenario`], but SIGKILLs the leader `kill_leader_after` into the run: the
/// scenario's own checks must still hold (the client talks to a follower, which forwards).
async fn run_scenario_with_fault(
    env: &mut Env,
    scenario: &str,
    args: &[&str],
    timeout: Duration,
    kill_leader_after: Option<Duration>,
) -> anyhow::Result<Value> {
    let (mut cmd, stderr_path) = scenario_command(env, scenario, args, scenario)?;
    // spawn + wait_with_output rather than output(), which would pipe stderr after all.
    let child = cmd
        .spawn()
        .with_context(|| format!("starting scenario {scenario}"))?;
    let deadline = Instant::now() + timeout;
    // On timeout the child is dropped with the future, and kill_on_drop ends it.
    let run = child.wait_with_output();
    tokio::pin!(run);
    if let Some(after) = kill_leader_after {
        tokio::select! {
            out = &mut run => {
                let out = out.with_context(|| format!("running scenario {scenario}"))?;
                return Err(failure(
                    env,
                    format!("scenario {scenario} ended ({}) before the leader was killed", out.status),
                    &stderr_path,
                ));
            }
            _ = tokio::time::sleep(after) => {}
        }
        // Whoever leads now (an election may have moved it since the start).
        let leader = env.cluster.wait_leader(Duration::from_secs(10)).await?;
        ensure!(
            leader != env.follower,
            "leadership moved to the access point node; cannot kill it"
        );
        env.cluster.kill(leader);
        eprintln!("{scenario}: killed leader {leader} after {after:?}");
    }
    let out = match tokio::time::timeout_at(deadline, &mut run).await {
        Ok(out) => out.with_context(|| format!("running scenario {scenario}"))?,
        Err(_) => {
            return Err(failure(
                env,
                format!("scenario {scenario} did not finish within {timeout:?}"),
                &stderr_path,
            ));
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(failure(
            env,
            format!(
                "scenario {scenario} failed ({}); stdout:\n{stdout}",
                out.status
            ),
            &stderr_path,
        ));
    }
    summary(scenario, &stdout)
}

fn u64_field(summary: &Value, field: &str) -> anyhow::Result<u64> {
    summary[field]
        .as_u64()
        .with_context(|| format!("summary field {field} is not a count: {summary}"))
}

fn i64_field(summary: &Value, field: &str) -> anyhow::Result<i64> {
    summary[field]
        .as_i64()
        .with_context(|| format!("summary field {field} is not an integer: {summary}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_simple_consumer_receives_acks_and_filters_by_tag() -> anyhow::Result<()> {
    let _turn = SERIAL.lock().await;
    // 20 messages a queue: each needs two receives of 16, whichever queue comes up.
    let mut env = start(&[], "PySimple", 2, &[]).await?;
    let n = 40;
    let s = run_scenario(
        &mut env,
        "simple",
        &["PySimple", "PySimpleGroup", &n.to_string()],
        Duration::from_secs(180),
    )
    .await?;
    assert_eq!(u64_field(&s, "received")?, n);
    assert_eq!(u64_field(&s, "tag_a_received")?, n / 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_broadcasting_group_gives_every_consumer_every_message() -> anyhow::Result<()> {
    let _turn = SERIAL.lock().await;
    let mut env = start(&[], "PyBroadcast", 1, &[]).await?;
    env.cluster
        .put_group(
            env.leader,
            rocketraft_proto::admin::ConsumerGroupConfig {
                name: "PyBroadcastGroup".into(),
                orderly: false,
                max_delivery_attempts: 0,
                broadcast: true,
                retry_policy: None,
            },
        )
        .await?;
    let commit = env.cluster.status(env.leader).await?.commit_index;
    env.cluster
        .wait_applied(env.follower, commit, Duration::from_secs(20))
        .await?;
    let s = run_scenario(
        &mut env,
        "broadcast",
        &["PyBroadcast", "PyBroadcastGroup", "20"],
        Duration::from_secs(150),
    )
    .await?;
    assert_eq!(
        s["received_per_consumer"],
        serde_json::json!([20, 20]),
        "summary: {s}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_consumer_filters_by_sql92() -> anyhow::Result<()> {
    let _turn = SERIAL.lock().await;
    let mut env = start(&[], "PySql", 2, &[]).await?;
    let s = run_scenario(
        &mut env,
        "sql",
        &["PySql", "PySqlGroup"],
        Duration::from_secs(120),
    )
    .await?;
    // n > 4 AND color = 'red' (red for even n) over n = 0..9.
    assert_eq!(s["received_n"], serde_json::json!([6, 8]), "summary: {s}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_consumer_gets_each_message_group_in_order_from_an_orderly_group()
-> anyhow::Result<()> {
    fifo_scenario(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_fifo_order_survives_leader_kill() -> anyhow::Result<()> {
    fifo_scenario(Some(Duration::from_millis(4000))).await
}

async fn fifo_scenario(kill_leader_after: Option<Duration>) -> anyhow::Result<()> {
    let _turn = SERIAL.lock().await;
    // Two queues, so message groups share a queue and also spread over queues. The script
    // also holds its first batch unacked and checks that no later message of those groups
    // comes meanwhile.
    let mut env = start(&[], "PyFifo", 2, &[("PyFifoGroup", true, 16)]).await?;
    let s = run_scenario_with_fault(
        &mut env,
        "fifo",
        &["PyFifo", "PyFifoGroup"],
        Duration::from_secs(150),
        kill_leader_after,
    )
    .await?;
    assert_eq!(u64_field(&s, "received")?, 40);
    for g in ["g0", "g1", "g2", "g3"] {
        assert_eq!(s["per_group"][g], 10, "group {g}: {s}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_delay_messages_arrive_at_their_delivery_time_not_before() -> anyhow::Result<()> {
    delay_scenario(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_delay_messages_survive_leader_kill() -> anyhow::Result<()> {
    delay_scenario(Some(Duration::from_millis(1500))).await
}

async fn delay_scenario(kill_leader_after: Option<Duration>) -> anyhow::Result<()> {
    let _turn = SERIAL.lock().await;
    // One queue: the consumer's long poll then waits on the queue the messages land in.
    let mut env = start(&[], "PyDelay", 1, &[]).await?;
    let s = run_scenario_with_fault(
        &mut env,
        "delay",
        &["PyDelay", "PyDelayGroup"],
        Duration::from_secs(120),
        kill_leader_after,
    )
    .await?;
    assert_eq!(u64_field(&s, "received")?, 5);
    // The script fails on any early delivery (beyond 50 ms of clock rounding).
    assert!(i64_field(&s, "min_lateness_ms")? >= -50, "summary: {s}");
    assert_delay_lateness(
        i64_field(&s, "max_lateness_ms")?,
        kill_leader_after.is_some(),
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_transactions_commit_roll_back_and_resolve_orphans_by_check() -> anyhow::Result<()> {
    transaction_scenario(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_transactions_survive_leader_kill() -> anyhow::Result<()> {
    transaction_scenario(Some(Duration::from_millis(1500))).await
}

async fn transaction_scenario(kill_leader_after: Option<Duration>) -> anyhow::Result<()> {
    let _turn = SERIAL.lock().await;
    // Check halves older than 1 s every second, so the orphan resolves within the test.
    let mut env = start(
        &[
            "--transaction-check-first-ms",
            "1000",
            "--transaction-check-interval-ms",
            "1000",
        ],
        "PyTxn",
        1,
        &[],
    )
    .await?;
    let s = run_scenario_with_fault(
        &mut env,
        "transaction",
        &["PyTxn", "PyTxnGroup"],
        Duration::from_secs(120),
        kill_leader_after,
    )
    .await?;
    assert_eq!(
        s["received"],
        serde_json::json!(["commit-me", "orphan-me"]),
        "summary: {s}"
    );
    assert_eq!(s["orphan_checked"], true, "summary: {s}");
    // The client resolved the other two within milliseconds, long before the first check.
    let checked: Vec<&str> = s["checks"]
        .as_object()
        .context("checks")?
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(checked, ["orphan-me"], "only the orphan is checked: {s}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_change_invisible_duration_redelivers_and_stale_handles_are_refused()
-> anyhow::Result<()> {
    invisible_scenario(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_change_invisible_duration_survives_leader_kill() -> anyhow::Result<()> {
    invisible_scenario(Some(Duration::from_millis(2000))).await
}

async fn invisible_scenario(kill_leader_after: Option<Duration>) -> anyhow::Result<()> {
    let _turn = SERIAL.lock().await;
    let mut env = start(&[], "PyInvisible", 1, &[]).await?;
    let s = run_scenario_with_fault(
        &mut env,
        "invisible",
        &["PyInvisible", "PyInvisibleGroup"],
        Duration::from_secs(120),
        kill_leader_after,
    )
    .await?;
    assert_eq!(u64_field(&s, "first_attempt")?, 1);
    assert_eq!(u64_field(&s, "second_attempt")?, 2);
    // Invisible for 2 s after the change (the script allows 100 ms of timer slack).
    assert!(
        u64_field(&s, "redelivered_after_ms")? >= 1900,
        "summary: {s}"
    );
    assert_eq!(s["stale_ack_rejected"], true, "summary: {s}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_consumer_sees_a_message_go_to_the_dead_letter_queue() -> anyhow::Result<()> {
    dlq_scenario(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_dead_letters_survive_leader_kill() -> anyhow::Result<()> {
    dlq_scenario(Some(Duration::from_millis(2000))).await
}

async fn dlq_scenario(kill_leader_after: Option<Duration>) -> anyhow::Result<()> {
    let _turn = SERIAL.lock().await;
    let mut env = start(&[], "PyDlq", 1, &[("PyDlqGroup", false, 2)]).await?;
    let s = run_scenario_with_fault(
        &mut env,
        "dlq",
        &["PyDlq", "PyDlqGroup"],
        Duration::from_secs(120),
        kill_leader_after,
    )
    .await?;
    assert_eq!(s["attempts"], serde_json::json!([1, 2]), "summary: {s}");
    assert_eq!(s["dlq_topic"], "%DLQ%PyDlqGroup", "summary: {s}");
    assert_eq!(s["dlq_message_id"], s["sent_message_id"], "summary: {s}");
    Ok(())
}

/// The complete lines of a file a consumer is appending to (a partial last line is left for
/// the next look; a file not created yet has none).
fn complete_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    lines.pop(); // after the last '\n': empty, or a line still being written
    Ok(lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_push_consumers_share_a_group_and_get_each_message_once() -> anyhow::Result<()> {
    push_scenario(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_push_consumers_lose_nothing_when_the_leader_is_killed() -> anyhow::Result<()> {
    push_scenario(true).await
}

/// Two push consumers take TOTAL messages. With `kill_leader`, the leader is SIGKILLed once a
/// third is consumed: then nothing may be lost, but messages the dead leader handed out and
/// nobody acked come again after their invisible time (at-least-once), so duplicates are
/// allowed and counted.
async fn push_scenario(kill_leader: bool) -> anyhow::Result<()> {
    let _turn = SERIAL.lock().await;
    const TOPIC: &str = "PyPush";
    const QUEUES: u32 = 8;
    const TOTAL: usize = 10_000;
    // Within the 1024-message limit of one Raft entry; two batches per queue.
    const PER_APPEND: usize = 625;
    let mut env = start(&[], TOPIC, QUEUES, &[]).await?;

    // Produced through the admin API: fast, and the bodies ("push message <i>") are unique.
    let mut expected = BTreeSet::new();
    for (k, start) in (0..TOTAL).step_by(PER_APPEND).enumerate() {
        let queue_id = k as u32 % QUEUES;
        let msgs = batch("push", start, PER_APPEND);
        expected.extend(
            msgs.iter()
                .map(|m| String::from_utf8_lossy(&m.body).into_owned()),
        );
        append_retrying(&env.cluster, TOPIC, queue_id, msgs, Duration::from_secs(30)).await?;
    }
    assert_eq!(expected.len(), TOTAL);
    // A retried append whose first attempt had committed after all would store duplicates,
    // which the consumers would rightly deliver; make sure the premise holds.
    let mut stored = 0;
    for q in 0..QUEUES {
        stored += env.cluster.read_queue(env.leader, TOPIC, q).await?.len();
    }
    assert_eq!(stored, TOTAL, "messages stored in {TOPIC}");

    let dir = env.cluster.dir.path().to_path_buf();
    let outfiles = [dir.join("push-1.out"), dir.join("push-2.out")];
    let mut consumers = Vec::new();
    for (k, outfile) in outfiles.iter().enumerate() {
        let outfile = outfile.to_str().context("a UTF-8 temp path")?;
        let (mut cmd, stderr_path) = scenario_command(
            &env,
            "push",
            &[TOPIC, "PyPushGroup", outfile],
            &format!("push-{}", k + 1),
        )?;
        let child = cmd.spawn().context("starting a push consumer")?;
        consumers.push((child, stderr_path));
    }

    let deadline = Instant::now() + Duration::from_secs(240);
    let mut killed = false;
    loop {
        let mut seen = BTreeSet::new();
        for f in &outfiles {
            seen.extend(complete_lines(f)?);
        }
        if seen.len() >= TOTAL {
            break;
        }
        if kill_leader && !killed && seen.len() >= TOTAL / 3 {
            let leader = env.cluster.wait_leader(Duration::from_secs(10)).await?;
            anyhow::ensure!(
                leader != env.follower,
                "leadership moved to the access point"
            );
            env.cluster.kill(leader);
            killed = true;
            eprintln!("push: killed leader {leader} after {} messages", seen.len());
        }
        for (child, stderr_path) in &mut consumers {
            if let Some(status) = child.try_wait()? {
                return Err(failure(
                    &env,
                    format!("a push consumer exited early ({status})"),
                    stderr_path,
                ));
            }
        }
        if Instant::now() > deadline {
            return Err(failure(
                &env,
                format!(
                    "only {} of {TOTAL} messages consumed within 240 s\n--- push-2 stderr ---\n{}",
                    seen.len(),
                    tail(&consumers[1].1, 40)
                ),
                &consumers[0].1,
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Not a wait for a condition but a window for one that must not happen: a redelivery
    // (after a lost or late ack) would be written within it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for f in &outfiles {
        let mut stop = f.clone().into_os_string();
        stop.push(".stop");
        std::fs::write(&stop, b"").context("creating a stop file")?;
    }

    let mut consumed = Vec::new();
    for (child, stderr_path) in consumers {
        let out =
            match tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await {
                Ok(out) => out.context("waiting for a push consumer")?,
                Err(_) => {
                    return Err(failure(
                        &env,
                        "a push consumer did not exit within 60 s of its stop file",
                        &stderr_path,
                    ));
                }
            };
        if !out.status.success() {
            return Err(failure(
                &env,
                format!("a push consumer failed ({})", out.status),
                &stderr_path,
            ));
        }
        let s = summary("push", &String::from_utf8_lossy(&out.stdout))?;
        consumed.push(u64_field(&s, "consumed")?);
    }

    let per_file = outfiles
        .iter()
        .map(|f| complete_lines(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for line in per_file.iter().flatten() {
        *counts.entry(line.as_str()).or_default() += 1;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(10).collect();
    let unexpected: Vec<_> = counts
        .keys()
        .filter(|b| !expected.contains(**b))
        .take(10)
        .collect();
    let missing: Vec<_> = expected
        .iter()
        .filter(|b| !counts.contains_key(b.as_str()))
        .take(10)
        .collect();
    let total_lines: usize = per_file.iter().map(Vec::len).sum();
    assert_eq!(counts.len(), TOTAL, "distinct bodies written");
    if kill_leader {
        assert!(killed, "the leader was killed mid-scenario");
        eprintln!(
            "push: {} redeliveries after the leader kill",
            total_lines - TOTAL
        );
    } else {
        assert_eq!(
            total_lines, TOTAL,
            "lines written; duplicated: {duplicated:?}"
        );
        assert!(
            duplicated.is_empty(),
            "consumed more than once: {duplicated:?}"
        );
    }
    assert!(unexpected.is_empty(), "never produced: {unexpected:?}");
    assert!(missing.is_empty(), "never consumed: {missing:?}");
    for (k, lines) in per_file.iter().enumerate() {
        assert!(!lines.is_empty(), "push consumer {} got nothing", k + 1);
        assert_eq!(
            consumed[k],
            lines.len() as u64,
            "push consumer {} reports what it wrote",
            k + 1
        );
    }
    eprintln!(
        "push: consumer 1 got {}, consumer 2 got {}",
        per_file[0].len(),
        per_file[1].len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_consumer_survives_leader_kill() -> anyhow::Result<()> {
    let _turn = SERIAL.lock().await;
    let n = 200;
    let mut env = start(&[], "PyFailover", 4, &[]).await?;
    let (mut cmd, stderr_path) = scenario_command(
        &env,
        "failover",
        &["PyFailover", "PyFailoverGroup", &n.to_string()],
        "failover",
    )?;
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().context("starting the failover scenario")?;
    let mut stdin = child.stdin.take().context("the script's stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().context("the script's stdout")?).lines();

    // The script has produced everything and its consumer holds a route to the leader.
    let produced = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(line) = stdout.next_line().await? {
            if line == "PRODUCED" {
                return Ok(true);
            }
        }
        Ok::<_, anyhow::Error>(false)
    })
    .await;
    match produced {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            return Err(failure(
                &env,
                "the script ended before PRODUCED",
                &stderr_path,
            ));
        }
        Ok(Err(e)) => return Err(e.context("reading the script's stdout")),
        Err(_) => {
            return Err(failure(&env, "no PRODUCED within 90 s", &stderr_path));
        }
    }

    let leader = env.cluster.wait_leader(Duration::from_secs(20)).await?;
    ensure!(
        leader != env.follower,
        "leadership moved to the access point (node {leader}); this test kills the leader"
    );
    env.cluster.kill(leader);
    stdin
        .write_all(b"GO\n")
        .await
        .context("writing GO to the script")?;
    stdin.flush().await?;
    drop(stdin);

    let rest = tokio::time::timeout(Duration::from_secs(180), async {
        let mut lines = Vec::new();
        while let Some(line) = stdout.next_line().await? {
            lines.push(line);
        }
        let status = child.wait().await?;
        Ok::<_, anyhow::Error>((lines, status))
    })
    .await;
    let (lines, status) = match rest {
        Ok(r) => r.context("waiting for the failover scenario")?,
        Err(_) => {
            return Err(failure(
                &env,
                "the failover scenario did not finish within 180 s of the kill",
                &stderr_path,
            ));
        }
    };
    if !status.success() {
        return Err(failure(
            &env,
            format!("the failover scenario failed ({status})"),
            &stderr_path,
        ));
    }
    let s = summary("failover", &lines.join("\n"))?;
    // At least once: duplicates (acks lost with the leader) are allowed, losses are not.
    assert_eq!(u64_field(&s, "expected")?, n);
    assert_eq!(u64_field(&s, "received_unique")?, n, "summary: {s}");
    eprintln!(
        "failover: {} duplicates, all received {} ms after the kill",
        u64_field(&s, "duplicates")?,
        u64_field(&s, "all_received_after_ms")?
    );
    Ok(())
}
