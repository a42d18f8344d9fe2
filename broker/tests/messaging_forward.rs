//! A client whose route points at a follower (e.g. a stale route after a leader change) still
//! gets its SendMessage stored: the follower forwards it to the leader once.

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
