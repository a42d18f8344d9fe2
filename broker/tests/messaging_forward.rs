//! A client whose route points at a follower (e.g. a stale route after a leader change) still
//! gets its SendMessage stored: the follower forwards it to the leader once. A deposed leader
//! that has not noticed yet does not answer offset reads from its stale state.

mod common;

use std::time::Duration;

use common::Cluster;
use rocketraft_proto::rocketmq::v2 as pb;
use rocketraft_proto::rocketmq::v2::messaging_service_client::MessagingServiceClient;

fn message(i: usize) -> pb::Message {
    pb::Message {
        topic: Some(pb::Resource {
            resource_namespace: String::new(),
            name: "FwdTopic".into(),
        }),
        user_properties: Default::default(),
        system_properties: Some(pb::SystemProperties {
            message_id: format!("fwd-{i}"),
            message_type: pb::MessageType::Normal as i32,
            tag: Some("TagA".into()),
            ..Default::default()
        }),
        body: format!("forwarded {i}").into_bytes().into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_message_to_a_follower_is_forwarded_to_the_leader() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, &[])?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    cluster.create_topic(leader, "FwdTopic", 1).await?;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let mut client =
        MessagingServiceClient::connect(format!("http://{}", cluster.nodes[&follower].addr))
            .await?;

    let mut req = tonic::Request::new(pb::SendMessageRequest {
        messages: vec![message(0), message(1)],
    });
    // A Rust 5.0.x client: the leader must see these headers to pick codes it knows.
    req.metadata_mut().insert("x-mq-language", "RUST".parse()?);
    req.metadata_mut()
        .insert("x-mq-client-version", "5.0.0".parse()?);
    let resp = client.send_message(req).await?.into_inner();
    assert_eq!(
        resp.status.as_ref().map(|s| s.code),
        Some(pb::Code::Ok as i32),
        "{resp:?}"
    );
    assert_eq!(resp.entries.len(), 2);
    assert_eq!(resp.entries[0].message_id, "fwd-0");
    assert_eq!(resp.entries[1].offset, resp.entries[0].offset + 1);

    let stored = cluster.read_queue(leader, "FwdTopic", 0).await?;
    let ids: Vec<_> = stored.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids, ["fwd-0", "fwd-1"]);

    // Whichever node refuses it (this follower, or the leader if the follower still lacks
    // the topic and forwards with the client's x-mq-* headers), a Rust 5.0.x client must get
    // BAD_REQUEST, not the newer MESSAGE_BODY_EMPTY it would panic on.
    let mut bad = message(2);
    bad.body = Default::default();
    let mut req = tonic::Request::new(pb::SendMessageRequest {
        messages: vec![bad],
    });
    req.metadata_mut().insert("x-mq-language", "RUST".parse()?);
    req.metadata_mut()
        .insert("x-mq-client-version", "5.0.0".parse()?);
    let resp = client.send_message(req).await?.into_inner();
    assert_eq!(
        resp.status.map(|s| s.code),
        Some(pb::Code::BadRequest as i32)
    );
    assert_eq!(
        cluster.read_queue(leader, "FwdTopic", 0).await?.len(),
        2,
        "nothing stored"
    );
    Ok(())
}

fn queue(topic: &str) -> pb::MessageQueue {
    pb::MessageQueue {
        topic: Some(pb::Resource {
            resource_namespace: String::new(),
            name: topic.into(),
        }),
        id: 0,
        ..Default::default()
    }
}

fn resource(name: &str) -> Option<pb::Resource> {
    Some(pb::Resource {
        resource_namespace: String::new(),
        name: name.into(),
    })
}

async fn commit_offset(addr: &str, offset: i64) -> anyhow::Result<()> {
    let mut client = MessagingServiceClient::connect(format!("http://{addr}")).await?;
    let resp = client
        .update_offset(pb::UpdateOffsetRequest {
            group: resource("StaleGroup"),
            message_queue: Some(queue("StaleTopic")),
            offset,
        })
        .await?
        .into_inner();
    anyhow::ensure!(
        resp.status.as_ref().map(|s| s.code) == Some(pb::Code::Ok as i32),
        "UpdateOffset {offset} via {addr}: {resp:?}"
    );
    Ok(())
}

/// The register history jepsen found broken: a leader paused long enough to be replaced
/// wakes up still believing it leads, and a GetOffset sent to it meanwhile must see the
/// offset committed under the new leader, not the one it last applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_does_not_answer_get_offset_from_stale_state() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, &[])?;
    let old = cluster.wait_leader(Duration::from_secs(20)).await?;
    cluster.create_topic(old, "StaleTopic", 1).await?;
    commit_offset(&cluster.nodes[&old].addr, 5).await?;

    cluster.signal(old, libc::SIGSTOP)?;
    let result = async {
        // The two others elect a leader between them.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let new = loop {
            let mut seen = None;
            for id in (1..=3).filter(|id| *id != old) {
                if let Ok(s) = cluster.status(id).await
                    && s.role == "Leader"
                {
                    seen = Some(id);
                }
            }
            if let Some(id) = seen {
                break id;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no new leader while node {old} was paused"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        commit_offset(&cluster.nodes[&new].addr, 9).await?;

        // Queue the read at the paused node, then wake it: it serves the read before or
        // while it learns of the new term.
        let mut client = MessagingServiceClient::new(
            tonic::transport::Endpoint::from_shared(format!(
                "http://{}",
                cluster.nodes[&old].addr
            ))?
            .connect_lazy(),
        );
        let read = tokio::spawn(async move {
            client
                .get_offset(pb::GetOffsetRequest {
                    group: resource("StaleGroup"),
                    message_queue: Some(queue("StaleTopic")),
                })
                .await
        });
        // Not a wait for a condition: it only gives the request time to reach the stopped
        // node's socket, so the node finds it there on waking. The assertion below holds
        // however the two race.
        tokio::time::sleep(Duration::from_millis(200)).await;
        cluster.signal(old, libc::SIGCONT)?;
        let resp = tokio::time::timeout(Duration::from_secs(30), read)
            .await???
            .into_inner();
        anyhow::ensure!(
            resp.status.as_ref().map(|s| s.code) == Some(pb::Code::Ok as i32),
            "GetOffset at the deposed leader: {resp:?}"
        );
        anyhow::ensure!(
            resp.offset == 9,
            "GetOffset at the deposed leader read {}, not the committed 9",
            resp.offset
        );
        Ok(())
    }
    .await;
    // Never leave the node stopped, whatever happened above.
    let _ = cluster.signal(old, libc::SIGCONT);
    result
}
