//! The official Rust client (`rocketmq` 5.0.0 from crates.io, unmodified) consuming from a
//! real 3-node group through a follower's address: simple consumption with tag filters,
//! FIFO through an orderly group, DELAY, TRANSACTION (commit, rollback, and an orphan
//! resolved by the broker's check) and the dead-letter queue. Each test runs one scenario of
//! the driver in tests/interop/rust-producer, which checks what it receives itself and ends
//! with a `SUMMARY {json}` line; these tests set the cluster up, run it and check the summary.
//!
//! The client's SimpleConsumer asks one queue per receive, round-robin over the route, and an
//! empty queue costs a whole long poll; topics whose messages would not cover every queue
//! therefore have one queue, so the scenarios do not spend their time polling empty ones.

mod common;

use std::time::Duration;

use anyhow::{Context, bail};
use common::{Cluster, assert_delay_lateness, build_rust_interop};
use serde_json::Value;

/// Everything a scenario needs from the cluster besides the topic.
struct Setup<'a> {
    broker_args: &'a [&'a str],
    topic: &'a str,
    queues: u32,
    /// Groups whose policy differs from the default: (name, orderly, max delivery attempts).
    /// Other groups are used without being configured, as an application would.
    groups: &'a [(&'a str, bool, u32)],
    /// SIGKILL the leader this long into the scenario; its checks must still hold.
    kill_leader_after: Option<Duration>,
}

/// Starts a cluster, runs `scenario` of the driver against a follower and returns its summary.
async fn run_scenario(
    setup: Setup<'_>,
    scenario: &str,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<Value> {
    let driver = tokio::task::spawn_blocking(build_rust_interop).await??;
    let (cluster, _leader, follower) =
        Cluster::for_scenario(setup.broker_args, setup.topic, setup.queues, setup.groups).await?;
    let access_point = cluster.nodes[&follower].addr.clone();

    let deadline = tokio::time::Instant::now() + timeout;
    let child = tokio::process::Command::new(&driver)
        .arg(scenario)
        .args([access_point.as_str(), setup.topic])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the Rust interop driver")?;
    let run = child.wait_with_output();
    tokio::pin!(run);
    let mut cluster = cluster;
    if let Some(after) = setup.kill_leader_after {
        tokio::select! {
            out = &mut run => bail!(
                "Rust scenario {scenario} ended ({:?}) before the leader was killed\n{}",
                out.map(|o| o.status),
                cluster.logs_tail()
            ),
            _ = tokio::time::sleep(after) => {}
        }
        let leader = cluster.wait_leader(Duration::from_secs(10)).await?;
        anyhow::ensure!(
            leader != follower,
            "leadership moved to the access point node; cannot kill it"
        );
        cluster.kill(leader);
        eprintln!("{scenario}: killed leader {leader} after {after:?}");
    }
    let out = match tokio::time::timeout_at(deadline, &mut run).await {
        Ok(out) => out.context("running the Rust interop driver")?,
        Err(_) => bail!(
            "Rust scenario {scenario} did not finish within {timeout:?}\n{}",
            cluster.logs_tail()
        ),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "Rust scenario {scenario} failed ({}):\n{stderr}\n{stdout}\n{}",
        out.status,
        cluster.logs_tail()
    );
    let summary = stdout
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("SUMMARY "))
        .with_context(|| format!("no closing SUMMARY line in: {stdout}"))?;
    let summary: Value = serde_json::from_str(summary)?;
    assert_eq!(summary["scenario"], scenario, "summary: {summary}");
    eprintln!("{scenario}: {summary}");
    Ok(summary)
}

fn count(summary: &Value, field: &str) -> u64 {
    summary[field]
        .as_u64()
        .unwrap_or_else(|| panic!("summary field {field} is not a count: {summary}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_rust_simple_consumer_receives_acks_and_filters_by_tag() -> anyhow::Result<()> {
    rust_simple_consumer_receives_acks_and_filters_by_tag_scenario(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_rust_simple_consumer_receives_acks_and_filters_by_tag_when_the_leader_is_killed()
-> anyhow::Result<()> {
    rust_simple_consumer_receives_acks_and_filters_by_tag_scenario(Some(Duration::from_millis(
        2000,
    )))
    .await
}

async fn rust_simple_consumer_receives_acks_and_filters_by_tag_scenario(
    kill_leader_after: Option<Duration>,
) -> anyhow::Result<()> {
    let n = 20;
    let summary = run_scenario(
        Setup {
            broker_args: &[],
            topic: "RustSimple",
            // Every queue gets some of the 20 round-robin sends.
            queues: 4,
            groups: &[],
            kill_leader_after,
        },
        "simple",
        &["RustSimpleGroup", &n.to_string()],
        Duration::from_secs(240),
    )
    .await?;
    assert_eq!(count(&summary, "received"), n);
    assert_eq!(count(&summary, "tag_filtered_received"), n / 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_rust_consumer_gets_each_message_group_in_order_from_an_orderly_group()
-> anyhow::Result<()> {
    rust_consumer_gets_each_message_group_in_order_from_an_orderly_group_scenario(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_rust_consumer_gets_each_message_group_in_order_from_an_orderly_group_when_the_leader_is_killed()
-> anyhow::Result<()> {
    rust_consumer_gets_each_message_group_in_order_from_an_orderly_group_scenario(Some(
        Duration::from_millis(2000),
    ))
    .await
}

async fn rust_consumer_gets_each_message_group_in_order_from_an_orderly_group_scenario(
    kill_leader_after: Option<Duration>,
) -> anyhow::Result<()> {
    let summary = run_scenario(
        Setup {
            broker_args: &[],
            topic: "RustFifo",
            queues: 1,
            groups: &[("RustFifoGroup", true, 17)],
            kill_leader_after,
        },
        "fifo",
        &["RustFifoGroup"],
        Duration::from_secs(180),
    )
    .await?;
    assert_eq!(count(&summary, "received"), 40);
    // An orderly queue hands out nothing while a message of it is in flight.
    assert_eq!(count(&summary, "received_while_held"), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_rust_delay_messages_arrive_at_their_delivery_time_not_before()
-> anyhow::Result<()> {
    rust_delay_messages_arrive_at_their_delivery_time_not_before_scenario(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_rust_delay_messages_arrive_at_their_delivery_time_not_before_when_the_leader_is_killed()
-> anyhow::Result<()> {
    rust_delay_messages_arrive_at_their_delivery_time_not_before_scenario(Some(
        Duration::from_millis(2000),
    ))
    .await
}

async fn rust_delay_messages_arrive_at_their_delivery_time_not_before_scenario(
    kill_leader_after: Option<Duration>,
) -> anyhow::Result<()> {
    let summary = run_scenario(
        Setup {
            broker_args: &[],
            topic: "RustDelay",
            queues: 1,
            groups: &[],
            kill_leader_after,
        },
        "delay",
        &["RustDelayGroup"],
        Duration::from_secs(180),
    )
    .await?;
    assert_eq!(count(&summary, "count"), 5);
    // The driver fails on any early delivery.
    let late_ms = summary["max_lateness_ms"]
        .as_i64()
        .context("max_lateness_ms")?;
    assert_delay_lateness(late_ms, kill_leader_after.is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_rust_transactions_commit_roll_back_and_resolve_orphans_by_check()
-> anyhow::Result<()> {
    rust_transactions_commit_roll_back_and_resolve_orphans_by_check_scenario(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_rust_transactions_commit_roll_back_and_resolve_orphans_by_check_when_the_leader_is_killed()
-> anyhow::Result<()> {
    rust_transactions_commit_roll_back_and_resolve_orphans_by_check_scenario(Some(
        Duration::from_millis(2000),
    ))
    .await
}

async fn rust_transactions_commit_roll_back_and_resolve_orphans_by_check_scenario(
    kill_leader_after: Option<Duration>,
) -> anyhow::Result<()> {
    let summary = run_scenario(
        Setup {
            // Check halves older than 1 s every second, so the orphan resolves within the test.
            broker_args: &[
                "--transaction-check-first-ms",
                "1000",
                "--transaction-check-interval-ms",
                "1000",
            ],
            topic: "RustTxn",
            queues: 1,
            groups: &[],
            kill_leader_after,
        },
        "transaction",
        &["RustTxnGroup"],
        Duration::from_secs(180),
    )
    .await?;
    assert!(
        summary["committed_received"].as_bool() == Some(true),
        "summary: {summary}"
    );
    // The driver already requires the checker to have been asked about the orphan before it
    // arrived, and about nothing the client had resolved itself.
    assert!(count(&summary, "orphan_checks") >= 1, "summary: {summary}");
    assert!(
        summary["orphan_received_after_ms"].is_u64(),
        "summary: {summary}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_rust_consumer_sees_a_message_go_to_the_dead_letter_queue() -> anyhow::Result<()> {
    rust_consumer_sees_a_message_go_to_the_dead_letter_queue_scenario(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_rust_consumer_sees_a_message_go_to_the_dead_letter_queue_when_the_leader_is_killed()
-> anyhow::Result<()> {
    rust_consumer_sees_a_message_go_to_the_dead_letter_queue_scenario(Some(Duration::from_millis(
        2000,
    )))
    .await
}

async fn rust_consumer_sees_a_message_go_to_the_dead_letter_queue_scenario(
    kill_leader_after: Option<Duration>,
) -> anyhow::Result<()> {
    let summary = run_scenario(
        Setup {
            broker_args: &[],
            topic: "RustDlq",
            queues: 1,
            groups: &[("RustDlqGroup", false, 2)],
            kill_leader_after,
        },
        "dlq",
        &["RustDlqGroup"],
        Duration::from_secs(180),
    )
    .await?;
    assert!(
        count(&summary, "redelivered_after_ms") >= 950,
        "summary: {summary}"
    );
    Ok(())
}
