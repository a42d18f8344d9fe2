//! A real 3-node group of `rocketraft-broker` processes: replication, failover, catch-up
//! through the log and through a snapshot, durability across SIGKILL of every node, and
//! graceful shutdown.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Cluster, append_retrying, batch};
use rocketraft_proto::admin as pb;
use tokio::time::Instant;

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// (queue, offset) -> message id, for every acknowledged append.
type Acked = BTreeMap<(u32, u64), String>;

fn record(acked: &mut Acked, queue_id: u32, resp: &pb::AppendResponse, msgs: &[pb::MessageInput]) {
    assert_eq!(resp.count as usize, msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let prev = acked.insert(
            (queue_id, resp.first_offset + i as u64),
            m.message_id.clone(),
        );
        assert!(
            prev.is_none(),
            "offset {} of queue {queue_id} acknowledged twice",
            resp.first_offset + i as u64
        );
    }
}

/// Sends `batches` batches of `per_batch` messages round-robin over `queues` queues, retrying
/// across nodes, and records every acknowledged offset.
async fn send_batches(
    cluster: &Cluster,
    topic: &str,
    queues: u32,
    prefix: &str,
    batches: usize,
    per_batch: usize,
    acked: &mut Acked,
) -> anyhow::Result<u64> {
    let mut last_log_index = 0;
    for b in 0..batches {
        let queue_id = (b as u32) % queues;
        let msgs = batch(prefix, b * per_batch, per_batch);
        let resp = append_retrying(
            cluster,
            topic,
            queue_id,
            msgs.clone(),
            Duration::from_secs(10),
        )
        .await?;
        record(acked, queue_id, &resp, &msgs);
        last_log_index = resp.log_index;
    }
    Ok(last_log_index)
}

/// Every acknowledged message is on node `id` at its acknowledged offset, and each queue's
/// offsets are dense from 0.
async fn assert_has_all(
    cluster: &Cluster,
    id: u64,
    topic: &str,
    queues: u32,
    acked: &Acked,
) -> anyhow::Result<()> {
    for q in 0..queues {
        let msgs = cluster.read_queue(id, topic, q).await?;
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(
                m.offset, i as u64,
                "node {id} queue {q}: offsets must be dense"
            );
        }
        for ((aq, offset), message_id) in acked.range((q, 0)..(q + 1, 0)) {
            let m = msgs.get(*offset as usize).unwrap_or_else(|| {
                panic!("node {id}: acknowledged {aq}/{offset} ({message_id}) is missing")
            });
            assert_eq!(
                &m.message_id, message_id,
                "node {id} queue {aq} offset {offset}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_10k_messages_to_every_node_with_identical_offsets() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, &[])?;
    let leader = cluster.wait_leader(LEADER_TIMEOUT).await?;
    cluster.create_topic(leader, "Replicated", 4).await?;

    // 100 batches of 100, spread over the queues and sent to every node, so followers
    // forward to the leader; 8 batches in flight at a time.
    let mut acked = Acked::new();
    let mut max_log_index = 0;
    for round in 0..(100 / 8 + 1) {
        let mut calls = Vec::new();
        for j in 0..8 {
            let b = round * 8 + j;
            if b >= 100 {
                break;
            }
            let queue_id = (b % 4) as u32;
            let via = (b % 3) as u64 + 1;
            let msgs = batch("r", b * 100, 100);
            let mut client = cluster.client(via).await?;
            calls.push(async move {
                let resp = client
                    .append(pb::AppendRequest {
                        topic: "Replicated".into(),
                        queue_id,
                        messages: msgs.clone(),
                    })
                    .await;
                (queue_id, msgs, resp)
            });
        }
        for (queue_id, msgs, resp) in futures::future::join_all(calls).await {
            let resp = resp?.into_inner();
            max_log_index = max_log_index.max(resp.log_index);
            record(&mut acked, queue_id, &resp, &msgs);
        }
    }
    assert_eq!(acked.len(), 10_000);

    let mut per_node = Vec::new();
    for id in 1..=3 {
        cluster
            .wait_applied(id, max_log_index, CATCH_UP_TIMEOUT)
            .await?;
        assert_has_all(&cluster, id, "Replicated", 4, &acked).await?;
        let mut all = Vec::new();
        for q in 0..4 {
            all.push(cluster.read_queue(id, "Replicated", q).await?);
        }
        assert_eq!(
            all.iter().map(Vec::len).sum::<usize>(),
            10_000,
            "node {id} holds exactly what was sent"
        );
        per_node.push(all);
    }
    // Byte-for-byte identical on every node, store timestamps included.
    assert_eq!(per_node[0], per_node[1]);
    assert_eq!(per_node[0], per_node[2]);
    let sample = &per_node[0][1][7];
    assert_eq!(sample.tag.as_deref(), Some("TagA"));
    assert!(sample.store_timestamp_ms > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_fails_over_within_3s_and_loses_nothing() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3, &[])?;
    let leader = cluster.wait_leader(LEADER_TIMEOUT).await?;
    cluster.create_topic(leader, "Failover", 2).await?;
    let mut acked = Acked::new();
    send_batches(&cluster, "Failover", 2, "before", 20, 50, &mut acked).await?;

    cluster.kill(leader);
    let killed_at = Instant::now();
    let msgs = batch("after-kill", 0, 10);
    let resp = append_retrying(
        &cluster,
        "Failover",
        0,
        msgs.clone(),
        Duration::from_secs(10),
    )
    .await?;
    let failover = killed_at.elapsed();
    println!(
        "failover: first append acknowledged {} ms after SIGKILL of the leader",
        failover.as_millis()
    );
    assert!(
        failover < Duration::from_secs(3),
        "failover took {failover:?}"
    );
    // A retried append may have been committed twice; only acknowledged offsets count.
    record(&mut acked, 0, &resp, &msgs);
    let new_leader = cluster.wait_leader(LEADER_TIMEOUT).await?;
    assert_ne!(new_leader, leader);

    send_batches(&cluster, "Failover", 2, "after", 10, 20, &mut acked).await?;
    for id in cluster.running() {
        assert_has_all(&cluster, id, "Failover", 2, &acked).await?;
    }

    // The killed node comes back and catches up from the log.
    cluster.spawn(leader)?;
    let commit = cluster.status(new_leader).await?.commit_index;
    cluster
        .wait_applied(leader, commit, CATCH_UP_TIMEOUT)
        .await?;
    assert_has_all(&cluster, leader, "Failover", 2, &acked).await?;
    for q in 0..2 {
        assert_eq!(
            cluster.read_queue(leader, "Failover", q).await?,
            cluster.read_queue(new_leader, "Failover", q).await?
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_behind_a_purged_log_catches_up_through_a_snapshot() -> anyhow::Result<()> {
    // Keep no log before a snapshot, so the purge really passes the down node's position.
    let mut cluster = Cluster::start(3, &["--log-keep-before-snapshot", "0"])?;
    let leader = cluster.wait_leader(LEADER_TIMEOUT).await?;
    cluster.create_topic(leader, "Snap", 2).await?;
    let lagging = (1..=3).find(|id| *id != leader).expect("a follower");
    let mut acked = Acked::new();
    let msgs = batch("early", 0, 10);
    let resp = append_retrying(&cluster, "Snap", 0, msgs.clone(), Duration::from_secs(10)).await?;
    record(&mut acked, 0, &resp, &msgs);
    cluster
        .wait_applied(lagging, resp.log_index, CATCH_UP_TIMEOUT)
        .await?;
    cluster.kill(lagging);
    let lagging_index = resp.log_index;

    send_batches(&cluster, "Snap", 2, "late", 50, 40, &mut acked).await?;
    let snap = cluster
        .client(leader)
        .await?
        .snapshot(pb::SnapshotRequest { purge_log: true })
        .await?
        .into_inner();
    let purged = snap.purged_index.unwrap_or(0);
    assert!(
        purged > lagging_index,
        "leader must purge past the lagging node's log (purged {purged}, lagging at {lagging_index})"
    );

    cluster.spawn(lagging)?;
    let commit = cluster.status(leader).await?.commit_index;
    cluster
        .wait_applied(lagging, commit, CATCH_UP_TIMEOUT)
        .await?;
    let status = cluster.status(lagging).await?;
    assert!(
        status.snapshot_index.unwrap_or(0) >= purged,
        "the lagging node must have installed a snapshot: {status:?}"
    );
    assert_has_all(&cluster, lagging, "Snap", 2, &acked).await?;
    for q in 0..2 {
        assert_eq!(
            cluster.read_queue(lagging, "Snap", q).await?,
            cluster.read_queue(leader, "Snap", q).await?
        );
    }
    // The caught-up node keeps replicating normally afterwards.
    let msgs = batch("post", 0, 5);
    let resp = append_retrying(&cluster, "Snap", 1, msgs.clone(), Duration::from_secs(10)).await?;
    record(&mut acked, 1, &resp, &msgs);
    cluster
        .wait_applied(lagging, resp.log_index, CATCH_UP_TIMEOUT)
        .await?;
    assert_has_all(&cluster, lagging, "Snap", 2, &acked).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_sigkill_of_every_node() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3, &[])?;
    let leader = cluster.wait_leader(LEADER_TIMEOUT).await?;
    cluster.create_topic(leader, "Durable", 3).await?;
    let mut acked = Acked::new();
    send_batches(&cluster, "Durable", 3, "durable", 30, 30, &mut acked).await?;
    let mut consumer_offset = cluster.client(leader).await?;
    consumer_offset
        .commit_offset(pb::CommitOffsetRequest {
            consumer_group: "cg".into(),
            topic: "Durable".into(),
            queue_id: 2,
            offset: 17,
        })
        .await?;

    // No graceful anything: every process dies at once, right after the last ack.
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.spawn(id)?;
    }
    let leader = cluster.wait_leader(LEADER_TIMEOUT).await?;
    // The new leader commits a blank entry of its term, which carries the old commits.
    let commit = cluster.status(leader).await?.commit_index;
    for id in 1..=3 {
        cluster.wait_applied(id, commit, CATCH_UP_TIMEOUT).await?;
        assert_has_all(&cluster, id, "Durable", 3, &acked).await?;
        let offset = cluster
            .client(id)
            .await?
            .get_consumer_offset(pb::GetConsumerOffsetRequest {
                consumer_group: "cg".into(),
                topic: "Durable".into(),
                queue_id: 2,
            })
            .await?
            .into_inner()
            .offset;
        assert_eq!(offset, Some(17), "node {id}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_restart_keeps_data() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3, &[])?;
    let leader = cluster.wait_leader(LEADER_TIMEOUT).await?;
    cluster.create_topic(leader, "Graceful", 1).await?;
    let mut acked = Acked::new();
    let msgs = batch("g", 0, 100);
    let resp = append_retrying(
        &cluster,
        "Graceful",
        0,
        msgs.clone(),
        Duration::from_secs(10),
    )
    .await?;
    record(&mut acked, 0, &resp, &msgs);
    for id in 1..=3 {
        let status = cluster.terminate(id, Duration::from_secs(15))?;
        assert!(status.success(), "node {id} exited with {status:?}");
    }
    for id in 1..=3 {
        cluster.spawn(id)?;
    }
    let leader = cluster.wait_leader(LEADER_TIMEOUT).await?;
    let commit = cluster.status(leader).await?.commit_index;
    for id in 1..=3 {
        cluster.wait_applied(id, commit, CATCH_UP_TIMEOUT).await?;
        assert_has_all(&cluster, id, "Graceful", 1, &acked).await?;
    }
    Ok(())
}
