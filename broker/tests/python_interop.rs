//! The official Python client (`rocketmq-python-client` 5.1.2, installed into a virtualenv
//! by scripts/setup.sh) producing NORMAL and FIFO messages against a real 3-node group,
//! through a follower's address.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use common::{Cluster, InteropReceipt, assert_interop_messages, python};

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

    let receipts: Vec<InteropReceipt> = receipts
        .into_iter()
        .map(|r| InteropReceipt {
            index: r.i,
            message_id: r.message_id,
            offset: Some(r.offset),
        })
        .collect();
    assert_interop_messages(&cluster, "PyTopic", 4, "python", &receipts).await?;
    Ok(())
}
