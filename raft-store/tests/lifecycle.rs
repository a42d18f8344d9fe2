//! The storage lifecycle in the state machine: producer deduplication by message id, lookup
//! indexes (id, key, store time) and retention (Expire), including across a snapshot.

use std::collections::BTreeMap;

use bytes::Bytes;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use rocketraft_raft_store::*;

fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn msg(id: &str, key: &str, body: &str) -> NewMessage {
    NewMessage {
        message_id: id.into(),
        tag: None,
        keys: vec![key.into()],
        properties: BTreeMap::new(),
        body: Bytes::from(body.to_string()),
        born_timestamp_ms: 1,
        kind: MessageKind::Normal,
        message_group: None,
        delivery_timestamp_ms: None,
    }
}

fn append(queue_id: u32, at_ms: i64, messages: Vec<NewMessage>) -> Command {
    Command::Append {
        topic: "T".into(),
        queue_id,
        store_timestamp_ms: at_ms,
        messages,
    }
}

/// Applies `cmds` as consecutive entries after `*next`.
async fn apply(
    sm: &mut StateMachineStore,
    next: &mut u64,
    cmds: Vec<Command>,
) -> anyhow::Result<Vec<CommandResult>> {
    let entries: Vec<_> = cmds
        .into_iter()
        .map(|c| {
            *next += 1;
            entry(*next, c)
        })
        .collect();
    Ok(sm.apply(entries).await?)
}

fn offsets(r: &CommandResult) -> Vec<(u32, u64)> {
    match r {
        CommandResult::Appended { offsets, .. } => offsets.clone(),
        other => panic!("not appended: {other:?}"),
    }
}

#[tokio::test]
async fn resent_ids_within_the_window_are_stored_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut sm = StateMachineStore::open(dir.path())?;
    let mut n = 0;
    let mut cfg = TopicConfig::new("T", 2);
    cfg.dedup_window_ms = 1_000;
    let r = apply(
        &mut sm,
        &mut n,
        vec![
            Command::PutTopic(cfg),
            append(0, 10_000, vec![msg("a", "k", "A"), msg("b", "k", "B")]),
            // A retry of both (same entry batch as the originals: the write is not yet in
            // RocksDB) plus one new message, and the same id twice within one command.
            append(
                0,
                10_500,
                vec![msg("a", "k", "A"), msg("c", "k2", "C"), msg("c", "k2", "C")],
            ),
            // Another queue: the id is the topic's, wherever it was stored.
            append(1, 10_900, vec![msg("b", "k", "B")]),
            // Past the window: stored again.
            append(1, 11_001, vec![msg("a", "k", "A")]),
        ],
    )
    .await?;
    assert_eq!(offsets(&r[1]), vec![(0, 0), (0, 1)]);
    assert_eq!(offsets(&r[2]), vec![(0, 0), (0, 2), (0, 2)]);
    assert!(matches!(
        r[2],
        CommandResult::Appended {
            count: 1,
            first_offset: 2,
            ..
        }
    ));
    assert_eq!(offsets(&r[3]), vec![(0, 1)], "the first copy, in queue 0");
    assert_eq!(offsets(&r[4]), vec![(1, 0)]);
    let reader = sm.reader();
    assert_eq!(reader.queue_state("T", 0).offset_next, 3);
    assert_eq!(reader.queue_state("T", 1).offset_next, 1);
    // Lookup by id finds the newest copy.
    let a = reader.message_by_id("T", "a")?.expect("a is stored");
    assert_eq!((a.queue_id, a.offset), (1, 0));
    assert!(reader.message_by_id("T", "zzz")?.is_none());
    assert!(reader.message_by_id("Other", "a")?.is_none());
    // Every stored copy carrying the key, none twice.
    let k: Vec<_> = reader
        .messages_by_key("T", "k", 10)?
        .into_iter()
        .map(|m| (m.queue_id, m.offset))
        .collect();
    assert_eq!(k, vec![(0, 0), (0, 1), (1, 0)]);
    assert_eq!(reader.messages_by_key("T", "k", 2)?.len(), 2);
    assert!(reader.messages_by_key("T", "k2x", 10)?.is_empty());

    // A window of 0 turns deduplication off.
    let mut off = TopicConfig::new("T", 2);
    off.dedup_window_ms = 0;
    let r = apply(
        &mut sm,
        &mut n,
        vec![
            Command::PutTopic(off),
            append(0, 11_100, vec![msg("a", "k", "A")]),
        ],
    )
    .await?;
    assert_eq!(offsets(&r[1]), vec![(0, 3)]);
    Ok(())
}

#[tokio::test]
async fn expiry_deletes_a_prefix_and_its_index_entries() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut sm = StateMachineStore::open(dir.path())?;
    let mut n = 0;
    let mut cmds = vec![Command::PutTopic(TopicConfig::new("T", 1))];
    for i in 0..10 {
        cmds.push(append(
            0,
            1_000 * (i + 1),
            vec![msg(
                &format!("id{i}"),
                &format!("key{}", i % 2),
                "0123456789",
            )],
        ));
    }
    apply(&mut sm, &mut n, cmds).await?;
    let reader = sm.reader();
    assert_eq!(reader.queue_state("T", 0).bytes, 100);
    // Stored in [3000, 6000): offsets 2, 3, 4.
    let by_time: Vec<u64> = reader
        .messages_by_time("T", 3_000, 6_000, 100)?
        .iter()
        .map(|m| m.offset)
        .collect();
    assert_eq!(by_time, vec![2, 3, 4]);
    assert_eq!(reader.messages_by_time("T", 3_000, 6_000, 2)?.len(), 2);

    // Expire the first 4 (and, in the same apply, append one more: Expire reads state).
    let r = apply(
        &mut sm,
        &mut n,
        vec![
            append(0, 11_000, vec![msg("id10", "key0", "0123456789")]),
            Command::Expire {
                topic: "T".into(),
                queue_id: 0,
                before_offset: 4,
            },
        ],
    )
    .await?;
    assert_eq!(r[1], CommandResult::Expired { removed: 4 });
    let q = reader.queue_state("T", 0);
    assert_eq!((q.offset_min, q.offset_next, q.bytes), (4, 11, 70));
    assert_eq!(
        reader.stored_bodies()?,
        7,
        "the expired messages' bodies are gone"
    );
    assert!(reader.message_by_id("T", "id3")?.is_none());
    assert_eq!(reader.message_by_id("T", "id4")?.map(|m| m.offset), Some(4));
    let key0: Vec<u64> = reader
        .messages_by_key("T", "key0", 100)?
        .iter()
        .map(|m| m.offset)
        .collect();
    assert_eq!(key0, vec![4, 6, 8, 10]);
    assert_eq!(
        reader
            .read_messages("T", 0, 0, 100)?
            .first()
            .map(|m| m.offset),
        Some(4)
    );
    // Expiring again below the start, or an unknown topic, changes nothing.
    let r = apply(
        &mut sm,
        &mut n,
        vec![
            Command::Expire {
                topic: "T".into(),
                queue_id: 0,
                before_offset: 2,
            },
            Command::Expire {
                topic: "Nope".into(),
                queue_id: 0,
                before_offset: 2,
            },
        ],
    )
    .await?;
    assert_eq!(r[0], CommandResult::Expired { removed: 0 });
    assert!(matches!(
        r[1],
        CommandResult::Rejected(Rejection::UnknownTopic(_))
    ));

    // A snapshot carries the indexes: a fresh replica installing it answers the same.
    sm.get_snapshot_builder().await.build_snapshot().await?;
    let mut src = sm.get_current_snapshot().await?.expect("snapshot exists");
    let dir2 = tempfile::tempdir()?;
    let mut other = StateMachineStore::open(dir2.path())?;
    let mut dst = other.begin_receiving_snapshot().await?;
    tokio::io::copy(&mut src.snapshot, &mut dst).await?;
    other.install_snapshot(&src.meta, dst).await?;
    let r2 = other.reader();
    assert_eq!(r2.queue_state("T", 0), q);
    assert_eq!(r2.message_by_id("T", "id7")?.map(|m| m.offset), Some(7));
    assert_eq!(r2.messages_by_key("T", "key0", 100)?.len(), 4);
    assert_eq!(r2.stored_bodies()?, 7);
    Ok(())
}

/// The in-memory dedup filters only know what was stored since the state was opened: an id
/// stored before a restart (or a snapshot install), or with a store time from a leader whose
/// clock was ahead, must still be found through the index.
#[tokio::test]
async fn dedup_holds_across_a_restart_and_a_clock_going_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut n = 0;
    let mut cfg = TopicConfig::new("T", 1);
    cfg.dedup_window_ms = 60_000;
    {
        let mut sm = StateMachineStore::open(dir.path())?;
        apply(
            &mut sm,
            &mut n,
            vec![
                Command::PutTopic(cfg),
                append(0, 100_000, vec![msg("before", "k", "x")]),
            ],
        )
        .await?;
        sm.reader().flush()?;
    }
    let mut sm = StateMachineStore::open(dir.path())?;
    let r = apply(
        &mut sm,
        &mut n,
        vec![
            // A retry after the restart, and a new id.
            append(
                0,
                110_000,
                vec![msg("before", "k", "x"), msg("after", "k", "y")],
            ),
            // A leader whose clock is behind stamps an earlier time: the id stored "later"
            // is still within the window of this one.
            append(
                0,
                105_000,
                vec![msg("after", "k", "y"), msg("third", "k", "z")],
            ),
            // Out of the window: stored again.
            append(0, 200_000, vec![msg("before", "k", "x")]),
        ],
    )
    .await?;
    assert_eq!(
        offsets(&r[0]),
        vec![(0, 0), (0, 1)],
        "the retry is the first copy"
    );
    assert_eq!(offsets(&r[1]), vec![(0, 1), (0, 2)]);
    assert_eq!(offsets(&r[2]), vec![(0, 3)]);
    assert_eq!(sm.reader().queue_state("T", 0).offset_next, 4);
    Ok(())
}
