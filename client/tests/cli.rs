//! The `rocketraft` command line against real processes: a nameserver and a 3-node broker
//! group. Creates, lists and deletes topics, configures a consumer group, reads the cluster
//! status as JSON, and refuses bad input with a message naming the field.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::LocalCluster;
use serde_json::Value;

/// Runs `rocketraft --nameserver NS ARGS`; returns (success, stdout, stderr).
fn cli(ns: &str, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_rocketraft"))
        .args(["--nameserver", ns])
        .args(args)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn json(ns: &str, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = cli(ns, &all)?;
    ensure!(ok, "rocketraft {args:?} failed: {err}");
    Ok(serde_json::from_str(out.trim())?)
}

/// Polls `check` on `rocketraft --json ARGS` until it holds (deadline 20 s).
async fn wait_for(
    ns: &str,
    args: &[&str],
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(v) = json(ns, args)
            && check(&v)
        {
            return Ok(v);
        }
        ensure!(Instant::now() < deadline, "{what} within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_manage_topics_and_groups_from_the_command_line() -> anyhow::Result<()> {
    let cluster = LocalCluster::start("cli-group")?;
    let ns = cluster.nameserver.clone();

    let status = wait_for(&ns, &["cluster", "status"], "the group has a leader", |v| {
        v[0]["available"] == true && v[0]["nodes"].as_array().is_some_and(|n| n.len() == 3)
    })
    .await?;
    assert_eq!(status[0]["name"], "cli-group");

    let created = json(
        &ns,
        &[
            "topic", "create", "Orders", "--queues", "4", "--type", "fifo",
        ],
    )?;
    assert_eq!(created["groups"], serde_json::json!(["cli-group"]));
    let listed = wait_for(&ns, &["topic", "list"], "the topic is listed", |v| {
        v.as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "Orders"))
    })
    .await?;
    let orders = listed
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "Orders"))
        .context("Orders listed")?;
    assert_eq!(orders["queues"], 4);
    assert_eq!(orders["message_types"], serde_json::json!(["fifo"]));

    let group = json(
        &ns,
        &[
            "group",
            "create",
            "Billing",
            "--orderly",
            "--max-delivery-attempts",
            "5",
        ],
    )?;
    assert_eq!(group["groups"], serde_json::json!(["cli-group"]));

    for (args, needle) in [
        (vec!["topic", "create", "bad name"], "topic.name"),
        (vec!["topic", "create", "%DLQ%Mine"], "reserved"),
        (
            vec!["topic", "create", "Fine", "--queues", "0"],
            "queue_count",
        ),
        (vec!["topic", "create", "Fine", "--type", "weird"], "weird"),
        (
            vec!["topic", "create", "Fine", "--broker-group", "nope"],
            "nope",
        ),
        (
            vec!["group", "create", "Bad", "--max-delivery-attempts", "5000"],
            "max_delivery_attempts",
        ),
    ] {
        let (ok, _, err) = cli(&ns, &args)?;
        assert!(!ok, "{args:?} must fail");
        assert!(err.contains(needle), "{args:?}: {needle:?} in {err}");
    }

    // Send 1,000 messages and consume them all as a group, each exactly once.
    json(&ns, &["topic", "create", "Tail", "--queues", "4"])?;
    wait_for(&ns, &["topic", "list"], "Tail is listed", |v| {
        v.as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "Tail"))
    })
    .await?;
    let (ok, out, err) = cli(
        &ns,
        &[
            "--json", "send", "Tail", "m-{i}", "--count", "1000", "--tag", "cli",
        ],
    )?;
    ensure!(ok, "send failed: {err}");
    let receipts: Vec<Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(receipts.len(), 1000);
    assert!(receipts.iter().all(|r| r["broker_group"] == "cli-group"));
    let (ok, out, err) = cli(
        &ns,
        &[
            "--json",
            "consume",
            "Tail",
            "--group",
            "Tailers",
            "--count",
            "1000",
            "--idle-timeout-ms",
            "10000",
        ],
    )?;
    ensure!(ok, "consume failed: {err}");
    let bodies: std::collections::BTreeSet<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).map(|v| v["body"].as_str().unwrap_or("").to_string())
        })
        .collect::<Result<_, _>>()?;
    assert_eq!(out.lines().count(), 1000, "each message once");
    assert_eq!(bodies, (0..1000).map(|i| format!("m-{i}")).collect());
    // Bad input names what is wrong.
    let (ok, _, err) = cli(&ns, &["send", "Tail", "x", "--property", "novalue"])?;
    assert!(!ok && err.contains("KEY=VALUE"), "{err}");
    let (ok, _, err) = cli(&ns, &["send", "NoSuchTopic", "x"])?;
    assert!(!ok && err.contains("NoSuchTopic"), "{err}");

    let deleted = json(&ns, &["topic", "delete", "Orders"])?;
    assert_eq!(deleted["groups"], serde_json::json!(["cli-group"]));
    wait_for(&ns, &["topic", "list"], "the topic is gone", |v| {
        v.as_array()
            .is_some_and(|t| t.iter().all(|t| t["name"] != "Orders"))
    })
    .await?;
    // Nothing the refused commands named was created.
    let topics = json(&ns, &["topic", "list"])?;
    let names: Vec<&str> = topics
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["Tail"]);
    Ok(())
}
