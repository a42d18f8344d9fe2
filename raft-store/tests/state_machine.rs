//! The state machine on its own: offsets, validation at apply time, restart, snapshots.

use std::collections::BTreeMap;

use bytes::Bytes;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use rocketraft_raft_store::*;

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn topic(name: &str, queues: u32) -> Command {
    Command::PutTopic(TopicConfig::new(name, queues))
}

fn msg(i: usize) -> NewMessage {
    NewMessage {
        message_id: format!("id-{i}"),
        tag: Some("t".into()),
        keys: vec![format!("k{i}")],
        properties: BTreeMap::from([("p".to_string(), i.to_string())]),
        body: Bytes::from(format!("body-{i}")),
        born_timestamp_ms: 1,
        kind: MessageKind::Normal,
        message_group: None,
        delivery_timestamp_ms: None,
    }
}

fn append(topic: &str, queue_id: u32, range: std::ops::Range<usize>) -> Command {
    Command::Append {
        topic: topic.into(),
        queue_id,
        store_timestamp_ms: 42,
        messages: range.map(msg).collect(),
    }
}

#[tokio::test]
async fn offsets_are_dense_per_queue_and_survive_reopen() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let mut sm = StateMachineStore::open(dir.path())?;
        let results = sm
            .apply([
                entry(1, topic("T", 2)),
                entry(2, append("T", 0, 0..3)),
                entry(3, append("T", 1, 3..5)),
                entry(4, append("T", 0, 5..7)),
            ])
            .await?;
        assert_eq!(results[0], CommandResult::TopicPut);
        assert_eq!(
            results[1],
            CommandResult::Appended {
                first_offset: 0,
                count: 3,
                store_timestamp_ms: 42,
                offsets: vec![(0, 0), (0, 1), (0, 2)],
            }
        );
        assert_eq!(
            results[2],
            CommandResult::Appended {
                first_offset: 0,
                count: 2,
                store_timestamp_ms: 42,
                offsets: vec![(1, 0), (1, 1)],
            }
        );
        assert_eq!(
            results[3],
            CommandResult::Appended {
                first_offset: 3,
                count: 2,
                store_timestamp_ms: 42,
                offsets: vec![(0, 3), (0, 4)],
            }
        );
        sm.reader().flush()?;
    }
    let mut sm = StateMachineStore::open(dir.path())?;
    let (applied, _) = sm.applied_state().await?;
    assert_eq!(applied, Some(log_id(4)));
    let r = sm.reader();
    let q0 = r.read_messages("T", 0, 0, 100)?;
    assert_eq!(
        q0.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(q0[3].message.message_id, "id-5");
    assert_eq!(q0[0].message, msg(0));
    assert_eq!(r.queue_state("T", 0).offset_next, 5);
    assert_eq!(r.read_messages("T", 0, 2, 2)?.len(), 2);
    assert!(r.read_messages("T", 0, 5, 10)?.is_empty());
    Ok(())
}

#[tokio::test]
async fn invalid_commands_are_rejected_without_changing_state() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut sm = StateMachineStore::open(dir.path())?;
    let results = sm
        .apply([
            entry(1, topic("T", 2)),
            entry(2, append("Nope", 0, 0..1)),
            entry(3, append("T", 2, 0..1)),
            entry(4, topic("T", 1)),
            entry(5, topic("bad name", 1)),
            entry(
                6,
                Command::CommitOffset {
                    group: "g".into(),
                    topic: "T".into(),
                    queue_id: 9,
                    offset: 1,
                },
            ),
        ])
        .await?;
    assert!(
        matches!(&results[1], CommandResult::Rejected(Rejection::UnknownTopic(t)) if t == "Nope")
    );
    assert!(matches!(
        &results[2],
        CommandResult::Rejected(Rejection::QueueOutOfRange { queue_count: 2, .. })
    ));
    assert!(
        matches!(&results[3], CommandResult::Rejected(Rejection::Invalid { field, .. }) if field == "topic.queue_count")
    );
    assert!(matches!(
        &results[4],
        CommandResult::Rejected(Rejection::Invalid { .. })
    ));
    assert!(matches!(
        &results[5],
        CommandResult::Rejected(Rejection::QueueOutOfRange { .. })
    ));
    let r = sm.reader();
    assert_eq!(r.topic("T").map(|t| t.queue_count), Some(2));
    assert_eq!(r.queue_state("T", 0).offset_next, 0);
    assert_eq!(r.consumer_offset("g", "T", 0)?, None);
    // The rejections still advanced the applied index: every replica rejects the same way.
    assert_eq!(r.last_applied(), Some(log_id(6)));
    Ok(())
}

#[tokio::test]
async fn snapshot_moves_the_whole_state_to_another_replica() -> anyhow::Result<()> {
    let a_dir = tempfile::tempdir()?;
    let b_dir = tempfile::tempdir()?;
    let mut a = StateMachineStore::open(a_dir.path())?;
    let mut b = StateMachineStore::open(b_dir.path())?;
    a.apply([
        entry(1, topic("T", 1)),
        entry(2, append("T", 0, 0..100)),
        entry(
            3,
            Command::CommitOffset {
                group: "g".into(),
                topic: "T".into(),
                queue_id: 0,
                offset: 7,
            },
        ),
    ])
    .await?;
    // b has state of its own that the snapshot must replace.
    b.apply([
        entry(1, topic("Other", 1)),
        entry(2, append("Other", 0, 0..5)),
    ])
    .await?;

    let snap = a.get_snapshot_builder().await.build_snapshot().await?;
    assert_eq!(snap.meta.last_log_id, Some(log_id(3)));
    let mut src = a.get_current_snapshot().await?.expect("snapshot exists");
    let mut dst = b.begin_receiving_snapshot().await?;
    tokio::io::copy(&mut src.snapshot, &mut dst).await?;
    b.install_snapshot(&src.meta, dst).await?;

    let r = b.reader();
    assert!(r.topic("Other").is_none());
    assert_eq!(r.read_messages("T", 0, 0, 1000)?.len(), 100);
    assert_eq!(r.consumer_offset("g", "T", 0)?, Some(7));
    assert_eq!(b.applied_state().await?.0, Some(log_id(3)));
    drop((r, b));
    // And it is durable.
    let b = StateMachineStore::open(b_dir.path())?;
    assert_eq!(b.reader().queue_state("T", 0).offset_next, 100);
    Ok(())
}

#[tokio::test]
async fn deleted_topics_lose_their_messages_and_a_new_one_continues_the_offsets()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let mut sm = StateMachineStore::open(dir.path())?;
        let results = sm
            .apply([
                entry(1, topic("T", 1)),
                entry(2, append("T", 0, 0..3)),
                entry(3, Command::DeleteTopic { name: "T".into() }),
                entry(4, Command::DeleteTopic { name: "T".into() }),
                entry(5, append("T", 0, 3..4)),
            ])
            .await?;
        assert_eq!(results[2], CommandResult::TopicDeleted);
        assert!(matches!(
            results[3],
            CommandResult::Rejected(Rejection::UnknownTopic(_))
        ));
        assert!(matches!(
            results[4],
            CommandResult::Rejected(Rejection::UnknownTopic(_))
        ));
        let reader = sm.reader();
        assert!(reader.topic("T").is_none());
        assert!(
            reader.read_messages("T", 0, 0, 10)?.is_empty(),
            "messages are gone"
        );
        assert_eq!(reader.stored_bodies()?, 0, "and so are their bodies");
        sm.apply([entry(6, topic("T", 1)), entry(7, append("T", 0, 4..5))])
            .await?;
        let stored = reader.read_messages("T", 0, 0, 10)?;
        assert_eq!(stored.len(), 1);
        assert_eq!(reader.stored_bodies()?, 1);
        assert_eq!(
            stored[0].offset, 3,
            "offsets continue after the deleted ones"
        );
        reader.flush()?;
    }
    // And after a restart, the deletion holds.
    let sm = StateMachineStore::open(dir.path())?;
    let stored = sm.reader().read_messages("T", 0, 0, 10)?;
    assert_eq!(stored.iter().map(|m| m.offset).collect::<Vec<_>>(), [3]);
    Ok(())
}
