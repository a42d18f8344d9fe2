//! The official Rust client (`rocketmq` 5.0.0 from crates.io, unmodified) producing NORMAL and
//! FIFO messages against a real 3-node group, through a follower's address. The client lives
//! in its own crate (tests/interop/rust-producer) because it pins tonic 0.9; this test builds
//! it with a separate target dir and runs its `produce` scenario.

mod common;

use std::time::Duration;

use anyhow::Context;
use common::{Cluster, InteropReceipt, assert_interop_messages, build_rust_interop};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_rust_producer_sends_normal_and_fifo_messages() -> anyhow::Result<()> {
    let producer = tokio::task::spawn_blocking(build_rust_interop).await??;
    let cluster = Cluster::start(3, &[])?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    cluster.create_topic(leader, "RustTopic", 4).await?;
    let follower = (1..=3).find(|id| *id != leader).context("a follower")?;
    let access_point = cluster.nodes[&follower].addr.clone();

    let count = 30;
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&producer)
            .args([
                "produce",
                access_point.as_str(),
                "RustTopic",
                &count.to_string(),
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("Rust producer did not finish within 120 s")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "Rust producer failed: {stderr}\n{}",
        cluster.logs_tail()
    );
    let stdout = String::from_utf8(out.stdout)?;
    // Receipt lines, then the driver's closing `SUMMARY {json}` line.
    let receipts: Vec<InteropReceipt> = stdout
        .lines()
        .filter(|l| !l.starts_with("SUMMARY "))
        .map(|l| {
            let (i, id) = l.split_once(' ').context("receipt line")?;
            Ok(InteropReceipt {
                index: i.parse()?,
                message_id: id.to_string(),
                offset: None,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(
        receipts.len(),
        count,
        "one receipt per message; stderr: {stderr}"
    );
    assert_interop_messages(&cluster, "RustTopic", 4, "rust", &receipts).await?;
    Ok(())
}
