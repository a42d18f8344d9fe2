//! The official Python client (`rocketmq-python-client` 5.1.2, installed into a virtualenv
//! by scripts/setup.sh) producing NORMAL and FIFO messages against a real 3-node group,
//! through a follower's address.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use common::Cluster;

fn python() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("ROCKETRAFT_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var("HOME")?).join(".cache/rocketraft-venv/bin/python"),
    };
    if !path.exists() {
        bail!(
            "{} not found: run ./scripts/setup.sh, which installs the official Python client into that virtualenv",
            path.display()
        );
    }
    Ok(path)
}

#[derive(serde::Deserialize)]
struct Receipt {
    i: usize,
    message_id: String,
    offset: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_producer_sends_normal_and_fifo_messages() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, &[])?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    cluster.create_topic(leader, "PyTopic", 4).await?;
    let follower = (1..=3).find(|id| *id != leader).context("a follower")?;
    let access_point = cluster.nodes[&follower].addr.clone();

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/python_producer.py");
    let count = 60;
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python()?)
            .arg(&script)
            .args([access_point.as_str(), "PyTopic", &count.to_string()])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("python producer did not finish within 120 s")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python producer failed: {stderr}\n{}",
        cluster.logs_tail()
    );
    let receipts: Vec<Receipt> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(
        receipts.len(),
        count,
        "one receipt per message; stderr: {stderr}"
    );

    // Every node holds every message, at the offset its receipt reported, with its content.
    let status = cluster.status(leader).await?;
    for id in 1..=3 {
        cluster
            .wait_applied(id, status.commit_index, Duration::from_secs(30))
            .await?;
        let mut stored = BTreeMap::new();
        for q in 0..4 {
            for m in cluster.read_queue(id, "PyTopic", q).await? {
                stored.insert(m.message_id.clone(), (q, m));
            }
        }
        assert_eq!(
            stored.len(),
            count,
            "node {id} holds exactly the sent messages"
        );
        let mut last_by_group: BTreeMap<String, (u32, u64)> = BTreeMap::new();
        for r in &receipts {
            let (queue, m) = stored
                .get(&r.message_id)
                .with_context(|| format!("node {id}: {} missing", r.message_id))?;
            assert_eq!(
                m.offset, r.offset,
                "node {id}: receipt offset of message {}",
                r.i
            );
            assert_eq!(m.body, format!("python message {}", r.i).into_bytes());
            assert_eq!(
                m.tag.as_deref(),
                Some(if r.i % 2 == 0 { "TagA" } else { "TagB" })
            );
            assert_eq!(m.keys, vec![format!("key-{}", r.i)]);
            assert_eq!(m.properties.get("index"), Some(&r.i.to_string()));
            if r.i % 3 == 0 {
                // FIFO: one queue per message group, offsets in send order.
                let group = format!("group-{}", r.i % 4);
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
        assert_eq!(last_by_group.len(), 4);
    }
    Ok(())
}
