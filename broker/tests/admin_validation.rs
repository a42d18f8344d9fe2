//! Bad input to the admin API gets an error naming the problem, and changes nothing.

mod common;

use std::time::Duration;

use common::{Cluster, batch};
use rocketraft_proto::admin as pb;
use tonic::Code;

fn topic(name: &str, queue_count: u32) -> pb::PutTopicRequest {
    pb::PutTopicRequest {
        topic: Some(pb::TopicConfig {
            name: name.into(),
            queue_count,
            permission: pb::Permission::ReadWrite as i32,
            message_types: vec![],
            ..Default::default()
        }),
    }
}

fn append(topic: &str, queue_id: u32, messages: Vec<pb::MessageInput>) -> pb::AppendRequest {
    pb::AppendRequest {
        topic: topic.into(),
        queue_id,
        messages,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_with_a_clear_error_and_changes_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, &[])?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    cluster.create_topic(leader, "Valid", 2).await?;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let mut c = cluster.client(follower).await?;
    let first = c
        .append(append("Valid", 0, batch("ok", 0, 3)))
        .await?
        .into_inner();
    assert_eq!(first.first_offset, 0);

    let expect = |r: Result<tonic::Response<pb::AppendResponse>, tonic::Status>,
                  code: Code,
                  needle: &str| {
        let status = r.expect_err("bad input must fail");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(needle),
            "message {:?} should mention {needle:?}",
            status.message()
        );
    };

    expect(
        c.append(append("", 0, batch("x", 0, 1))).await,
        Code::InvalidArgument,
        "topic",
    );
    expect(
        c.append(append("bad topic!", 0, batch("x", 0, 1))).await,
        Code::InvalidArgument,
        "topic",
    );
    expect(
        c.append(append("Unknown", 0, batch("x", 0, 1))).await,
        Code::NotFound,
        "Unknown",
    );
    expect(
        c.append(append("Valid", 2, batch("x", 0, 1))).await,
        Code::InvalidArgument,
        "queue_id 2",
    );
    expect(
        c.append(append("Valid", 0, vec![])).await,
        Code::InvalidArgument,
        "messages",
    );

    let mut empty_body = batch("x", 0, 2);
    empty_body[1].body = Default::default();
    expect(
        c.append(append("Valid", 0, empty_body)).await,
        Code::InvalidArgument,
        "messages[1].body",
    );

    let mut bad_tag = batch("x", 0, 1);
    bad_tag[0].tag = Some("a|b".into());
    expect(
        c.append(append("Valid", 0, bad_tag)).await,
        Code::InvalidArgument,
        "messages[0].tag",
    );

    let mut blank_id = batch("x", 0, 1);
    blank_id[0].message_id = "  ".into();
    expect(
        c.append(append("Valid", 0, blank_id)).await,
        Code::InvalidArgument,
        "message_id",
    );

    // 3 x 3 MiB = 9 MiB, over the 8 MiB batch limit (each body alone is fine).
    let mut oversized = batch("x", 0, 3);
    for m in &mut oversized {
        m.body = vec![b'x'; 3 << 20].into();
    }
    expect(
        c.append(append("Valid", 0, oversized)).await,
        Code::InvalidArgument,
        "limit",
    );

    let too_many = batch(
        "x",
        0,
        rocketraft_raft_store::limits::BATCH_MESSAGES_MAX + 1,
    );
    expect(
        c.append(append("Valid", 0, too_many)).await,
        Code::InvalidArgument,
        "limit is 1024",
    );

    for (req, needle) in [
        (topic("", 1), "topic.name"),
        (topic("T", 0), "topic.queue_count"),
        (topic("T", 5000), "topic.queue_count"),
        (topic("%DLQ%Mine", 1), "reserved"),
        (topic("Valid", 1), "queues cannot be removed"),
    ] {
        let status = c.put_topic(req).await.expect_err("bad topic must fail");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(needle),
            "{:?} should mention {needle:?}",
            status.message()
        );
    }

    let status = c
        .read_messages(pb::ReadMessagesRequest {
            topic: "Valid".into(),
            queue_id: 9,
            offset: 0,
            max_count: 1,
        })
        .await
        .expect_err("queue out of range");
    assert_eq!(status.code(), Code::InvalidArgument);

    // Nothing changed: the topic keeps its queues, the queue holds only the good batch, and
    // the next good append continues densely after it.
    let t = c
        .get_topic(pb::GetTopicRequest {
            name: "Valid".into(),
        })
        .await?
        .into_inner()
        .topic
        .expect("topic");
    assert_eq!(t.queue_count, 2);
    let next = c
        .append(append("Valid", 0, batch("ok", 3, 2)))
        .await?
        .into_inner();
    assert_eq!(next.first_offset, 3);
    for id in 1..=3 {
        cluster
            .wait_applied(id, next.log_index, Duration::from_secs(30))
            .await?;
        let msgs = cluster.read_queue(id, "Valid", 0).await?;
        let ids: Vec<_> = msgs.iter().map(|m| m.message_id.as_str()).collect();
        assert_eq!(ids, ["ok-0", "ok-1", "ok-2", "ok-3", "ok-4"], "node {id}");
        assert!(cluster.read_queue(id, "Valid", 1).await?.is_empty());
    }
    Ok(())
}
