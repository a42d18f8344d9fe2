//! The parts of the client API the official clients do not exercise, driven with our own
//! generated `apache.rocketmq.v2` client: the pull path (PullMessage, UpdateOffset, GetOffset,
//! QueryOffset), QueryAssignment, and bad input to the consumer and transaction RPCs, which
//! must get the documented in-band codes and change nothing.

mod common;

use std::time::Duration;

use common::Cluster;
use rocketraft_proto::rocketmq::v2 as pb;
use rocketraft_proto::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use tonic::transport::Channel;

type Client = MessagingServiceClient<Channel>;

fn resource(name: &str) -> Option<pb::Resource> {
    Some(pb::Resource {
        resource_namespace: String::new(),
        name: name.into(),
    })
}

fn queue(topic: &str, id: i32) -> Option<pb::MessageQueue> {
    Some(pb::MessageQueue {
        topic: resource(topic),
        id,
        ..Default::default()
    })
}

fn message(topic: &str, i: usize, tag: &str) -> pb::Message {
    pb::Message {
        topic: resource(topic),
        user_properties: Default::default(),
        system_properties: Some(pb::SystemProperties {
            message_id: format!("api-{i}"),
            message_type: pb::MessageType::Normal as i32,
            tag: Some(tag.into()),
            ..Default::default()
        }),
        body: format!("api body {i}").into_bytes().into(),
    }
}

fn code(s: &Option<pb::Status>) -> pb::Code {
    s.as_ref()
        .and_then(|s| pb::Code::try_from(s.code).ok())
        .unwrap_or(pb::Code::Unspecified)
}

async fn connect(cluster: &Cluster, id: u64) -> anyhow::Result<Client> {
    Ok(MessagingServiceClient::connect(format!("http://{}", cluster.nodes[&id].addr)).await?)
}

async fn send(
    client: &mut Client,
    messages: Vec<pb::Message>,
) -> anyhow::Result<pb::SendMessageResponse> {
    Ok(client
        .send_message(pb::SendMessageRequest { messages })
        .await?
        .into_inner())
}

/// Every frame of a pull: its status, the message bodies and the next offset.
async fn pull(
    client: &mut Client,
    topic: &str,
    offset: i64,
    batch: i32,
    filter: Option<pb::FilterExpression>,
    long_poll_ms: i64,
) -> anyhow::Result<(pb::Code, Vec<String>, Option<i64>)> {
    let mut stream = client
        .pull_message(pb::PullMessageRequest {
            group: resource("PullGroup"),
            message_queue: queue(topic, 0),
            offset,
            batch_size: batch,
            filter_expression: filter,
            long_polling_timeout: Some(prost_types::Duration {
                seconds: long_poll_ms / 1000,
                nanos: ((long_poll_ms % 1000) * 1_000_000) as i32,
            }),
        })
        .await?
        .into_inner();
    let (mut status, mut bodies, mut next) = (pb::Code::Unspecified, Vec::new(), None);
    while let Some(frame) = stream.message().await? {
        match frame.content {
            Some(pb::pull_message_response::Content::Status(s)) => {
                status = pb::Code::try_from(s.code)?
            }
            Some(pb::pull_message_response::Content::Message(m)) => {
                bodies.push(String::from_utf8(m.body.to_vec())?)
            }
            Some(pb::pull_message_response::Content::NextOffset(o)) => next = Some(o),
            None => anyhow::bail!("empty frame"),
        }
    }
    Ok((status, bodies, next))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_consumers_read_by_offset_and_commit_offsets() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, &[])?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    cluster.create_topic(leader, "PullTopic", 1).await?;
    let mut client = connect(&cluster, leader).await?;
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let messages = (0..5)
        .map(|i| message("PullTopic", i, if i % 2 == 0 { "even" } else { "odd" }))
        .collect();
    assert_eq!(
        code(&send(&mut client, messages).await?.status),
        pb::Code::Ok
    );

    let offset_of = |policy: pb::QueryOffsetPolicy, ts: Option<i64>| pb::QueryOffsetRequest {
        message_queue: queue("PullTopic", 0),
        query_offset_policy: policy as i32,
        timestamp: ts.map(|ms| prost_types::Timestamp {
            seconds: ms / 1000,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        }),
    };
    let q = |r: pb::QueryOffsetResponse| (code(&r.status), r.offset);
    let begin = q(client
        .query_offset(offset_of(pb::QueryOffsetPolicy::Beginning, None))
        .await?
        .into_inner());
    let end = q(client
        .query_offset(offset_of(pb::QueryOffsetPolicy::End, None))
        .await?
        .into_inner());
    let at = q(client
        .query_offset(offset_of(
            pb::QueryOffsetPolicy::Timestamp,
            Some(before_ms - 1000),
        ))
        .await?
        .into_inner());
    let future = q(client
        .query_offset(offset_of(
            pb::QueryOffsetPolicy::Timestamp,
            Some(before_ms + 3_600_000),
        ))
        .await?
        .into_inner());
    assert_eq!(begin, (pb::Code::Ok, 0));
    assert_eq!(end, (pb::Code::Ok, 5));
    assert_eq!(
        at,
        (pb::Code::Ok, 0),
        "everything was stored after that time"
    );
    assert_eq!(
        future,
        (pb::Code::Ok, 5),
        "nothing was stored after that time"
    );

    let (status, bodies, next) = pull(&mut client, "PullTopic", 0, 3, None, 0).await?;
    assert_eq!(status, pb::Code::Ok);
    assert_eq!(bodies, ["api body 0", "api body 1", "api body 2"]);
    assert_eq!(next, Some(3));
    let odd = Some(pb::FilterExpression {
        r#type: pb::FilterType::Tag as i32,
        expression: "odd".into(),
    });
    let (status, bodies, next) = pull(&mut client, "PullTopic", 0, 10, odd, 0).await?;
    assert_eq!(
        (status, bodies, next),
        (
            pb::Code::Ok,
            vec!["api body 1".to_string(), "api body 3".to_string()],
            Some(5)
        )
    );
    // At the end: a long poll that ends empty, then one that a new message ends early.
    let started = std::time::Instant::now();
    let (status, bodies, next) = pull(&mut client, "PullTopic", 5, 10, None, 500).await?;
    assert_eq!(
        (status, bodies.len(), next),
        (pb::Code::MessageNotFound, 0, Some(5))
    );
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "waited the long poll"
    );
    let mut sender = connect(&cluster, leader).await?;
    let waiting =
        tokio::spawn(async move { pull(&mut client, "PullTopic", 5, 10, None, 10_000).await });
    // Give the pull a moment to start waiting; if it has not, it finds the message at once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&mut sender, vec![message("PullTopic", 5, "even")]).await?;
    let (status, bodies, next) = tokio::time::timeout(Duration::from_secs(5), waiting).await???;
    assert_eq!(
        (status, bodies, next),
        (pb::Code::Ok, vec!["api body 5".to_string()], Some(6))
    );
    let mut client = sender;
    let (status, _, next) = pull(&mut client, "PullTopic", 99, 10, None, 0).await?;
    assert_eq!(
        (status, next),
        (pb::Code::IllegalOffset, Some(6)),
        "resume at the end"
    );

    // Offsets: committed through a follower (forwarded), read on every node.
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let mut via_follower = connect(&cluster, follower).await?;
    let updated = via_follower
        .update_offset(pb::UpdateOffsetRequest {
            group: resource("PullGroup"),
            message_queue: queue("PullTopic", 0),
            offset: 4,
        })
        .await?
        .into_inner();
    assert_eq!(code(&updated.status), pb::Code::Ok);
    let got = client
        .get_offset(pb::GetOffsetRequest {
            group: resource("PullGroup"),
            message_queue: queue("PullTopic", 0),
        })
        .await?
        .into_inner();
    assert_eq!((code(&got.status), got.offset), (pb::Code::Ok, 4));
    let mut req = tonic::Request::new(pb::GetOffsetRequest {
        group: resource("NeverCommitted"),
        message_queue: queue("PullTopic", 0),
    });
    let none = client
        .get_offset(pb::GetOffsetRequest {
            group: resource("NeverCommitted"),
            message_queue: queue("PullTopic", 0),
        })
        .await?
        .into_inner();
    assert_eq!(code(&none.status), pb::Code::OffsetNotFound);
    // The Rust 5.0 client does not know OFFSET_NOT_FOUND and would panic on it.
    req.metadata_mut().insert("x-mq-language", "RUST".parse()?);
    req.metadata_mut()
        .insert("x-mq-client-version", "5.0.0".parse()?);
    let none = client.get_offset(req).await?.into_inner();
    assert_eq!(code(&none.status), pb::Code::NotFound);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_and_transaction_rpcs_refuse_bad_input_with_named_fields() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, &[])?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    cluster.create_topic(leader, "BadTopic", 2).await?;
    cluster.create_group(leader, "Orderly", true, 5).await?;
    let mut client = connect(&cluster, leader).await?;
    send(&mut client, vec![message("BadTopic", 0, "a")]).await?;

    let receive = |group: &str, filter: pb::FilterExpression, invisible_ms: Option<i64>| {
        pb::ReceiveMessageRequest {
            group: resource(group),
            message_queue: queue("BadTopic", 0),
            filter_expression: Some(filter),
            batch_size: 16,
            invisible_duration: invisible_ms.map(|ms| prost_types::Duration {
                seconds: ms / 1000,
                nanos: 0,
            }),
            auto_renew: false,
            long_polling_timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            attempt_id: None,
        }
    };
    let all = pb::FilterExpression {
        r#type: pb::FilterType::Tag as i32,
        expression: "*".into(),
    };
    let cases = [
        (
            receive("bad group", all.clone(), Some(10_000)),
            pb::Code::IllegalConsumerGroup,
            "group",
        ),
        (
            receive(
                "G",
                pb::FilterExpression {
                    r#type: pb::FilterType::Sql as i32,
                    expression: "a = ".into(),
                },
                Some(10_000),
            ),
            pb::Code::IllegalFilterExpression,
            "filter_expression",
        ),
        (
            receive("G", all.clone(), None),
            pb::Code::IllegalInvisibleTime,
            "invisible_duration",
        ),
        (
            receive("G", all.clone(), Some(13 * 3_600_000)),
            pb::Code::IllegalInvisibleTime,
            "invisible_duration",
        ),
    ];
    for (req, expected, field) in cases {
        let mut stream = client.receive_message(req).await?.into_inner();
        let first = stream.message().await?.and_then(|f| f.content);
        let Some(pb::receive_message_response::Content::Status(s)) = first else {
            anyhow::bail!("first frame must be the status, got {first:?}");
        };
        assert_eq!(pb::Code::try_from(s.code)?, expected, "{s:?}");
        assert!(s.message.contains(field), "message names {field}: {s:?}");
        while stream.message().await?.is_some() {}
    }

    let ack = client
        .ack_message(pb::AckMessageRequest {
            group: resource("G"),
            topic: resource("BadTopic"),
            entries: vec![pb::AckMessageEntry {
                message_id: "api-0".into(),
                receipt_handle: "not-a-handle".into(),
                lite_topic: None,
            }],
        })
        .await?
        .into_inner();
    assert_eq!(code(&ack.status), pb::Code::InvalidReceiptHandle);
    assert_eq!(ack.entries.len(), 1);
    assert_eq!(code(&ack.entries[0].status), pb::Code::InvalidReceiptHandle);

    let change = client
        .change_invisible_duration(pb::ChangeInvisibleDurationRequest {
            group: resource("G"),
            topic: resource("BadTopic"),
            // Well formed, but issued by another broker group.
            receipt_handle: "rr2.0.0.999999.other-group".into(),
            invisible_duration: Some(prost_types::Duration {
                seconds: 5,
                nanos: 0,
            }),
            message_id: "api-0".into(),
            lite_topic: None,
            suspend: None,
        })
        .await?
        .into_inner();
    assert_eq!(code(&change.status), pb::Code::InvalidReceiptHandle);
    let why = change.status.as_ref().map_or("", |s| s.message.as_str());
    assert!(why.contains("other-group"), "{why}");
    assert_eq!(
        change.receipt_handle, "rr2.0.0.999999.other-group",
        "the request's handle comes back"
    );

    for (id, expected) in [
        ("", pb::Code::InvalidTransactionId),
        ("no-such-txn", pb::Code::InvalidTransactionId),
    ] {
        let end = client
            .end_transaction(pb::EndTransactionRequest {
                topic: resource("BadTopic"),
                message_id: "api-0".into(),
                transaction_id: id.into(),
                resolution: pb::TransactionResolution::Commit as i32,
                source: pb::TransactionSource::SourceClient as i32,
                trace_context: String::new(),
            })
            .await?
            .into_inner();
        assert_eq!(
            code(&end.status),
            expected,
            "transaction id {id:?}: {end:?}"
        );
    }

    let mut delayed = message("BadTopic", 1, "a");
    let sp = delayed.system_properties.as_mut().expect("set above");
    sp.message_type = pb::MessageType::Delay as i32;
    let resp = send(&mut client, vec![delayed.clone()]).await?;
    assert_eq!(
        code(&resp.status),
        pb::Code::MessagePropertyConflictWithType
    );
    let sp = delayed.system_properties.as_mut().expect("set above");
    sp.delivery_timestamp = Some(prost_types::Timestamp {
        seconds: 4_000_000_000,
        nanos: 0,
    });
    let resp = send(&mut client, vec![delayed]).await?;
    assert_eq!(code(&resp.status), pb::Code::IllegalDeliveryTime);
    assert!(
        resp.status
            .as_ref()
            .is_some_and(|s| s.message.contains("delivery_timestamp"))
    );

    // Nothing above stored anything: the queues hold the one message sent first.
    let mut stored = 0;
    for q in 0..2 {
        stored += cluster.read_queue(leader, "BadTopic", q).await?.len();
    }
    assert_eq!(stored, 1);

    // Assignments: one for the whole broker normally, one per queue for an orderly group.
    for (group, expected) in [("G", vec![-1]), ("Orderly", vec![0, 1])] {
        let a = client
            .query_assignment(pb::QueryAssignmentRequest {
                topic: resource("BadTopic"),
                group: resource(group),
                endpoints: None,
            })
            .await?
            .into_inner();
        assert_eq!(code(&a.status), pb::Code::Ok);
        let ids: Vec<i32> = a
            .assignments
            .iter()
            .filter_map(|a| a.message_queue.as_ref().map(|q| q.id))
            .collect();
        assert_eq!(ids, expected, "group {group}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topics_are_created_on_first_use_only_when_enabled() -> anyhow::Result<()> {
    let query = |topic: &str| pb::QueryRouteRequest {
        topic: resource(topic),
        endpoints: None,
    };
    // Off by default: an unknown topic is TOPIC_NOT_FOUND and stays unknown.
    let plain = Cluster::start(3, &[])?;
    let leader = plain.wait_leader(Duration::from_secs(20)).await?;
    let mut client = connect(&plain, leader).await?;
    let r = client.query_route(query("Nowhere")).await?.into_inner();
    assert_eq!(code(&r.status), pb::Code::TopicNotFound);
    drop(plain);

    let cluster = Cluster::start(3, &["--auto-create-topic-queues", "3"])?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let mut client = connect(&cluster, follower).await?;
    // Through a follower: the leader creates it, the follower answers with its queues.
    let r = client.query_route(query("AutoRoute")).await?.into_inner();
    assert_eq!(code(&r.status), pb::Code::Ok, "{r:?}");
    assert_eq!(r.message_queues.len(), 3);
    // A send to another unknown topic creates it too, and stores the message.
    let resp = send(&mut client, vec![message("AutoSend", 0, "a")]).await?;
    assert_eq!(code(&resp.status), pb::Code::Ok, "{resp:?}");
    let mut stored = 0;
    for q in 0..3 {
        stored += cluster.read_queue(leader, "AutoSend", q).await?.len();
    }
    assert_eq!(stored, 1);
    // Bad names are still refused, not created.
    let r = client.query_route(query("bad name")).await?.into_inner();
    assert_eq!(code(&r.status), pb::Code::IllegalTopic);
    Ok(())
}
