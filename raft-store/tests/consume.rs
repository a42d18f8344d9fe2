//! Consumption state on its own: pops, acks, invisibility, redelivery, dead letters, orderly
//! groups, filters, scheduled (DELAY) and transaction messages, and that the state is the
//! same however the log is cut into apply batches.

use std::collections::BTreeMap;

use bytes::Bytes;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use rocketraft_raft_store::*;

/// Applies commands one log index after another.
struct Sm {
    sm: StateMachineStore,
    next: u64,
    _dir: tempfile::TempDir,
}

impl Sm {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        Ok(Self {
            sm: StateMachineStore::open(dir.path())?,
            next: 1,
            _dir: dir,
        })
    }

    async fn apply_all(&mut self, cmds: Vec<Command>) -> anyhow::Result<Vec<CommandResult>> {
        let entries: Vec<Entry<TypeConfig>> = cmds
            .into_iter()
            .map(|cmd| {
                let e = Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), self.next),
                    payload: EntryPayload::Normal(cmd),
                };
                self.next += 1;
                e
            })
            .collect();
        Ok(self.sm.apply(entries).await?)
    }

    async fn apply(&mut self, cmd: Command) -> anyhow::Result<CommandResult> {
        Ok(self.apply_all(vec![cmd]).await?.remove(0))
    }

    async fn pop(&mut self, group: &str, max: u32, invisible_ms: u64, now_ms: i64) -> Vec<Popped> {
        self.pop_filtered(group, max, invisible_ms, now_ms, Filter::All)
            .await
    }

    async fn pop_filtered(
        &mut self,
        group: &str,
        max: u32,
        invisible_ms: u64,
        now_ms: i64,
        filter: Filter,
    ) -> Vec<Popped> {
        match self
            .apply(pop_cmd(group, max, invisible_ms, now_ms, filter))
            .await
            .expect("apply")
        {
            CommandResult::Popped(v) => v,
            other => panic!("pop gave {other:?}"),
        }
    }

    async fn ack(&mut self, group: &str, handles: Vec<Handle>) -> Vec<bool> {
        match self
            .apply(Command::Ack {
                group: group.into(),
                consumer: "c1".into(),
                topic: "T".into(),
                handles,
            })
            .await
            .expect("apply")
        {
            CommandResult::Acked(v) => v,
            other => panic!("ack gave {other:?}"),
        }
    }
}

fn pop_cmd(group: &str, max: u32, invisible_ms: u64, now_ms: i64, filter: Filter) -> Command {
    Command::Pop {
        group: group.into(),
        consumer: "c1".into(),
        topic: "T".into(),
        queue_ids: vec![0, 1],
        max,
        invisible_ms,
        now_ms,
        filter,
    }
}

fn topic(name: &str, queues: u32) -> Command {
    Command::PutTopic(TopicConfig::new(name, queues))
}

fn group(name: &str, orderly: bool, max_delivery_attempts: u32) -> Command {
    Command::PutGroup(GroupConfig {
        name: name.into(),
        orderly,
        max_delivery_attempts,
        broadcast: false,
        retry: RetryBackoff::default(),
    })
}

fn msg(i: usize) -> NewMessage {
    NewMessage {
        message_id: format!("id-{i}"),
        tag: Some(if i.is_multiple_of(2) { "even" } else { "odd" }.into()),
        keys: vec![],
        properties: BTreeMap::from([("n".to_string(), i.to_string())]),
        body: Bytes::from(format!("body-{i}")),
        born_timestamp_ms: 1,
        kind: MessageKind::Normal,
        message_group: None,
        delivery_timestamp_ms: None,
    }
}

fn append(queue_id: u32, range: std::ops::Range<usize>) -> Command {
    Command::Append {
        topic: "T".into(),
        queue_id,
        store_timestamp_ms: 10,
        messages: range.map(msg).collect(),
    }
}

fn ids(popped: &[Popped]) -> Vec<String> {
    popped
        .iter()
        .map(|p| p.message.message.message_id.clone())
        .collect()
}

#[tokio::test]
async fn each_message_is_delivered_once_until_acked_or_expired() -> anyhow::Result<()> {
    let mut sm = Sm::new()?;
    sm.apply_all(vec![topic("T", 2), append(0, 0..3), append(1, 3..5)])
        .await?;
    let first = sm.pop("G", 4, 1000, 100).await;
    assert_eq!(ids(&first), ["id-0", "id-1", "id-2", "id-3"]);
    assert!(first.iter().all(|p| p.attempt == 1));
    // Invisible until 1100: only the rest comes out.
    assert_eq!(ids(&sm.pop("G", 10, 1000, 500).await), ["id-4"]);
    assert!(sm.pop("G", 10, 1000, 600).await.is_empty());
    // Another group has its own cursor.
    assert_eq!(sm.pop("H", 10, 1000, 600).await.len(), 5);

    let acked = sm.ack("G", vec![first[0].handle, first[1].handle]).await;
    assert_eq!(acked, [true, true]);
    assert_eq!(
        sm.ack("G", vec![first[0].handle]).await,
        [false],
        "acked twice"
    );

    // After the deadline the unacked ones come back with attempt 2 and new handles.
    let again = sm.pop("G", 10, 1000, 1200).await;
    assert_eq!(ids(&again), ["id-2", "id-3"]);
    assert!(again.iter().all(|p| p.attempt == 2));
    assert_eq!(
        sm.ack("G", vec![first[2].handle]).await,
        [false],
        "a handle of an earlier delivery is stale"
    );
    assert_eq!(sm.ack("G", vec![again[0].handle]).await, [true]);
    Ok(())
}

#[tokio::test]
async fn change_invisible_issues_a_new_handle_and_retires_the_old() -> anyhow::Result<()> {
    let mut sm = Sm::new()?;
    sm.apply_all(vec![topic("T", 2), append(0, 0..1)]).await?;
    let p = sm.pop("G", 1, 60_000, 0).await.remove(0);
    let changed = sm
        .apply(Command::ChangeInvisible {
            group: "G".into(),
            consumer: "c1".into(),
            topic: "T".into(),
            handle: p.handle,
            visible_at_ms: 50,
        })
        .await?;
    let CommandResult::InvisibilityChanged(new_handle) = changed else {
        panic!("{changed:?}")
    };
    assert_ne!(new_handle, p.handle);
    let stale = sm
        .apply(Command::ChangeInvisible {
            group: "G".into(),
            consumer: "c1".into(),
            topic: "T".into(),
            handle: p.handle,
            visible_at_ms: 50,
        })
        .await?;
    assert!(matches!(
        stale,
        CommandResult::Rejected(Rejection::InvalidHandle(_))
    ));
    // Visible again at 50 (a nack), not at 60 000.
    let again = sm.pop("G", 1, 60_000, 60).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
    assert_eq!(sm.ack("G", vec![new_handle]).await, [false]);
    assert_eq!(sm.ack("G", vec![again[0].handle]).await, [true]);
    Ok(())
}

#[tokio::test]
async fn exhausted_messages_go_to_the_dead_letter_topic() -> anyhow::Result<()> {
    let mut sm = Sm::new()?;
    sm.apply_all(vec![topic("T", 2), group("G", false, 2), append(0, 0..1)])
        .await?;
    assert_eq!(sm.pop("G", 1, 10, 0).await[0].attempt, 1);
    assert_eq!(sm.pop("G", 1, 10, 20).await[0].attempt, 2);
    assert!(sm.pop("G", 1, 10, 40).await.is_empty(), "no third delivery");
    let reader = sm.sm.reader();
    let dlq = dead_letter_topic("G");
    assert!(reader.topic(&dlq).is_some(), "DLQ topic created");
    let dead = reader.read_messages(&dlq, 0, 0, 10)?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message, msg(0));
    Ok(())
}

#[tokio::test]
async fn orderly_groups_hold_a_queue_until_its_messages_are_acked() -> anyhow::Result<()> {
    let mut sm = Sm::new()?;
    sm.apply_all(vec![topic("T", 2), group("G", true, 5), append(0, 0..4)])
        .await?;
    let first = sm.pop("G", 2, 1000, 0).await;
    assert_eq!(ids(&first), ["id-0", "id-1"]);
    assert!(sm.pop("G", 2, 1000, 10).await.is_empty(), "queue is held");
    let ready = sm.sm.reader().pop_readiness("G", "c1", "T", &[0, 1], 10)?;
    assert!(!ready.ready);
    assert_eq!(ready.next_visible_at_ms, Some(1000));
    sm.ack("G", vec![first[0].handle]).await;
    assert!(
        sm.pop("G", 2, 1000, 20).await.is_empty(),
        "id-1 still in flight"
    );
    sm.ack("G", vec![first[1].handle]).await;
    assert_eq!(ids(&sm.pop("G", 2, 1000, 30).await), ["id-2", "id-3"]);
    Ok(())
}

#[tokio::test]
async fn filters_skip_messages_for_good() -> anyhow::Result<()> {
    let mut sm = Sm::new()?;
    sm.apply_all(vec![topic("T", 2), append(0, 0..6)]).await?;
    let even = sm
        .pop_filtered("G", 10, 1000, 0, Filter::tags("even"))
        .await;
    assert_eq!(ids(&even), ["id-0", "id-2", "id-4"]);
    let sql = Filter::sql("n > 2 AND TAGS = 'odd'").map_err(anyhow::Error::msg)?;
    assert_eq!(
        ids(&sm.pop_filtered("H", 10, 1000, 0, sql).await),
        ["id-3", "id-5"]
    );
    assert!(
        !sm.sm
            .reader()
            .pop_readiness("G", "c1", "T", &[0, 1], 0)?
            .ready,
        "filtered-out messages are not pending"
    );
    Ok(())
}

#[tokio::test]
async fn scheduled_messages_appear_when_due() -> anyhow::Result<()> {
    let mut sm = Sm::new()?;
    let mut delayed = msg(0);
    delayed.kind = MessageKind::Delay;
    delayed.delivery_timestamp_ms = Some(5_000);
    sm.apply_all(vec![
        topic("T", 2),
        Command::Schedule {
            topic: "T".into(),
            queue_id: 1,
            store_timestamp_ms: 100,
            messages: vec![delayed.clone()],
        },
    ])
    .await?;
    let reader = sm.sm.reader();
    assert_eq!(reader.next_timer_due_ms()?, Some(5_000));
    assert_eq!(reader.queue_state("T", 1).offset_next, 0, "not visible yet");
    assert_eq!(
        sm.apply(Command::Deliver {
            now_ms: 4_999,
            max: 10
        })
        .await?,
        CommandResult::Delivered { count: 0 }
    );
    assert_eq!(
        sm.apply(Command::Deliver {
            now_ms: 5_003,
            max: 10
        })
        .await?,
        CommandResult::Delivered { count: 1 }
    );
    assert_eq!(reader.next_timer_due_ms()?, None);
    let stored = reader.read_messages("T", 1, 0, 10)?;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].message, delayed);
    assert_eq!(stored[0].store_timestamp_ms, 5_003);
    Ok(())
}

#[tokio::test]
async fn transactions_commit_roll_back_and_expire() -> anyhow::Result<()> {
    let mut sm = Sm::new()?;
    let prepare = |id: &str, i: usize| Command::Prepare {
        topic: "T".into(),
        queue_id: 0,
        store_timestamp_ms: 1,
        transaction_id: id.into(),
        message: msg(i),
    };
    sm.apply_all(vec![
        topic("T", 2),
        prepare("a", 0),
        prepare("b", 1),
        prepare("c", 2),
    ])
    .await?;
    let reader = sm.sm.reader();
    assert_eq!(
        reader.queue_state("T", 0).offset_next,
        0,
        "halves are invisible"
    );
    let end = |id: &str, commit| Command::EndTransaction {
        transaction_id: id.into(),
        commit,
        store_timestamp_ms: 7,
    };
    assert_eq!(
        sm.apply(end("a", true)).await?,
        CommandResult::TransactionEnded { offset: Some(0) }
    );
    assert_eq!(
        sm.apply(end("b", false)).await?,
        CommandResult::TransactionEnded { offset: None }
    );
    assert!(matches!(
        sm.apply(end("a", true)).await?,
        CommandResult::Rejected(Rejection::UnknownTransaction(_))
    ));
    let checked = |ids: &[&str]| Command::TransactionsChecked {
        transaction_ids: ids.iter().map(|s| s.to_string()).collect(),
        max_checks: 2,
    };
    assert_eq!(
        sm.apply(checked(&["c"])).await?,
        CommandResult::TransactionsChecked { rolled_back: 0 }
    );
    assert_eq!(reader.half_message("c")?.map(|h| h.checks), Some(1));
    assert_eq!(
        sm.apply(checked(&["c"])).await?,
        CommandResult::TransactionsChecked { rolled_back: 1 }
    );
    assert!(reader.half_messages(10)?.is_empty());
    let visible = reader.read_messages("T", 0, 0, 10)?;
    assert_eq!(visible.len(), 1);
    assert_eq!(visible[0].message, msg(0));
    Ok(())
}

/// A leader applies entries in whatever batches arrive; a follower may see other batches.
/// Pops read state the same batch wrote, so the outcome must not depend on the cut.
#[tokio::test]
async fn outcome_does_not_depend_on_apply_batching() -> anyhow::Result<()> {
    let cmds = || {
        vec![
            topic("T", 2),
            append(0, 0..3),
            pop_cmd("G", 2, 100, 0, Filter::All),
            append(1, 3..4),
            pop_cmd("G", 5, 100, 10, Filter::All),
            pop_cmd("G", 5, 100, 200, Filter::All),
        ]
    };
    let mut one_batch = Sm::new()?;
    let together = one_batch.apply_all(cmds()).await?;
    let mut singly = Sm::new()?;
    let mut apart = Vec::new();
    for c in cmds() {
        apart.push(singly.apply(c).await?);
    }
    assert_eq!(together, apart);
    let CommandResult::Popped(last) = &together[5] else {
        panic!("{:?}", together[5])
    };
    assert_eq!(
        ids(last),
        ["id-0", "id-1", "id-2", "id-3"],
        "all redelivered"
    );
    Ok(())
}

#[tokio::test]
async fn group_progress_counts_what_is_left_per_queue() -> anyhow::Result<()> {
    let mut sm = Sm::new()?;
    sm.apply_all(vec![topic("T", 2), append(0, 0..3), append(1, 3..5)])
        .await?;
    // Nothing consumed yet: the group has no progress to show.
    assert!(sm.sm.reader().group_progress("G")?.is_empty());

    // Pop 4 of 5 (queue 0 fully, queue 1 one of two), ack 2 of them.
    let popped = sm.pop("G", 4, 1000, 100).await;
    assert_eq!(
        sm.ack("G", vec![popped[0].handle, popped[3].handle]).await,
        [true, true]
    );
    let progress = sm.sm.reader().group_progress("G")?;
    let lags: Vec<(u32, Option<u64>, u64, u64)> = progress
        .iter()
        .map(|p| (p.queue_id, p.cursor, p.inflight, p.lag()))
        .collect();
    // Queue 0: cursor at the end, 2 in flight. Queue 1: cursor 1 of 2, nothing in flight.
    assert_eq!(lags, [(0, Some(3), 2, 2), (1, Some(1), 0, 1)]);

    // Everything acked: no lag anywhere.
    let rest = sm.pop("G", 10, 1000, 200).await;
    let handles = [popped[1].handle, popped[2].handle]
        .into_iter()
        .chain(rest.iter().map(|p| p.handle))
        .collect();
    assert!(sm.ack("G", handles).await.iter().all(|a| *a));
    let progress = sm.sm.reader().group_progress("G")?;
    assert_eq!(progress.len(), 2);
    assert!(progress.iter().all(|p| p.lag() == 0), "{progress:?}");

    // A pull consumer's group is measured by its committed offset.
    sm.apply(Command::CommitOffset {
        group: "P".into(),
        topic: "T".into(),
        queue_id: 1,
        offset: 1,
    })
    .await?;
    let pull = sm.sm.reader().group_progress("P")?;
    assert_eq!(pull.len(), 1);
    assert_eq!(
        (pull[0].queue_id, pull[0].committed, pull[0].lag()),
        (1, Some(1), 1)
    );
    Ok(())
}

#[tokio::test]
async fn consume_offset_is_the_lowest_unacked_offset_of_a_popping_group() -> anyhow::Result<()> {
    let mut sm = Sm::new()?;
    sm.apply_all(vec![topic("T", 1), append(0, 0..4)]).await?;
    let at = |sm: &Sm| sm.sm.reader().consume_offset("G", "T", 0);
    assert_eq!(at(&sm)?, None, "a group that never popped has no offset");

    let popped = sm.pop("G", 3, 60_000, 100).await;
    assert_eq!(popped.len(), 3);
    assert_eq!(at(&sm)?, Some(0), "nothing acked yet");
    // Acking the second leaves the first outstanding: the offset stays.
    assert_eq!(sm.ack("G", vec![popped[1].handle]).await, [true]);
    assert_eq!(at(&sm)?, Some(0));
    assert_eq!(sm.ack("G", vec![popped[0].handle]).await, [true]);
    assert_eq!(at(&sm)?, Some(2));
    assert_eq!(sm.ack("G", vec![popped[2].handle]).await, [true]);
    assert_eq!(at(&sm)?, Some(3), "all handed out acked: the cursor");

    // A group that only pulls reports its commit.
    sm.apply(Command::CommitOffset {
        group: "P".into(),
        topic: "T".into(),
        queue_id: 0,
        offset: 1,
    })
    .await?;
    assert_eq!(sm.sm.reader().consume_offset("P", "T", 0)?, Some(1));
    Ok(())
}

#[tokio::test]
async fn reset_offsets_moves_a_group_to_a_time_and_drops_its_in_flight() -> anyhow::Result<()> {
    let mut sm = Sm::new()?;
    let at = |ts: i64, range: std::ops::Range<usize>| Command::Append {
        topic: "T".into(),
        queue_id: 0,
        store_timestamp_ms: ts,
        messages: range.map(msg).collect(),
    };
    sm.apply_all(vec![topic("T", 2), at(10, 0..3), at(20, 3..5)])
        .await?;
    let first = sm.pop("G", 10, 60_000, 100).await;
    assert_eq!(first.len(), 5);

    let reset = |ts| Command::ResetOffsets {
        group: "G".into(),
        topic: "T".into(),
        timestamp_ms: ts,
    };
    // Queue 0 moves to its first message stored at 20; empty queue 1 stays at its end.
    assert_eq!(
        sm.apply(reset(15)).await?,
        CommandResult::OffsetsReset(vec![3, 0])
    );
    // What was in flight is gone: its handles are stale, and the group resumes at offset 3.
    assert_eq!(sm.ack("G", vec![first[0].handle]).await, [false]);
    assert_eq!(ids(&sm.pop("G", 10, 60_000, 200).await), ["id-3", "id-4"]);
    let progress = sm.sm.reader().group_progress("G")?;
    assert_eq!(progress[0].committed, Some(3));

    // Rewound to 0: everything again; past the end: nothing.
    assert_eq!(
        sm.apply(reset(0)).await?,
        CommandResult::OffsetsReset(vec![0, 0])
    );
    assert_eq!(sm.pop("G", 10, 60_000, 300).await.len(), 5);
    assert_eq!(
        sm.apply(reset(i64::MAX)).await?,
        CommandResult::OffsetsReset(vec![5, 0])
    );
    assert!(sm.pop("G", 10, 60_000, 400).await.is_empty());
    assert_eq!(
        sm.apply(Command::ResetOffsets {
            group: "G".into(),
            topic: "Nope".into(),
            timestamp_ms: 0,
        })
        .await?,
        CommandResult::Rejected(Rejection::UnknownTopic("Nope".into()))
    );
    Ok(())
}

/// A coalesced entry applies its commands in order, as if each were its own entry; DELAY
/// timers of several Schedule commands in one entry stay apart; a command that reads state
/// is refused inside a batch, on its own, without touching the others.
#[tokio::test]
async fn a_batch_entry_applies_like_its_commands_one_by_one() -> anyhow::Result<()> {
    let mut sm = Sm::new()?;
    sm.apply(topic("T", 2)).await?;
    let delayed = |i: usize| {
        let mut m = msg(i);
        m.kind = MessageKind::Delay;
        m.delivery_timestamp_ms = Some(100);
        Command::Schedule {
            topic: "T".into(),
            queue_id: 0,
            store_timestamp_ms: 10,
            messages: vec![m],
        }
    };
    let result = sm
        .apply(Command::Batch(vec![
            append(0, 0..2),
            append(1, 2..3),
            append(0, 3..5),
            delayed(5),
            delayed(6),
            pop_cmd("G", 10, 1000, 20, Filter::All),
        ]))
        .await?;
    let CommandResult::Batch(results) = result else {
        panic!("a batch gives one result per command, got {result:?}");
    };
    let offsets: Vec<_> = results[..3]
        .iter()
        .map(|r| match r {
            CommandResult::Appended { offsets, .. } => offsets.clone(),
            other => panic!("append gave {other:?}"),
        })
        .collect();
    assert_eq!(
        offsets,
        vec![vec![(0, 0), (0, 1)], vec![(1, 0)], vec![(0, 2), (0, 3)]],
        "offsets are dense per queue across the batch's commands"
    );
    assert_eq!(results[3], CommandResult::Scheduled { count: 1 });
    assert_eq!(results[4], CommandResult::Scheduled { count: 1 });
    assert!(
        matches!(&results[5], CommandResult::Rejected(Rejection::Invalid { field, .. }) if field == "batch"),
        "a pop inside a batch is refused: {:?}",
        results[5]
    );
    // Both timers survived: two messages become due, not one.
    assert_eq!(
        sm.apply(Command::Deliver {
            now_ms: 200,
            max: 10
        })
        .await?,
        CommandResult::Delivered { count: 2 }
    );
    // Everything the batch stored is there once: 5 appended, 2 delivered from timers.
    let mut popped = ids(&sm.pop("G", 10, 1000, 300).await);
    popped.sort();
    assert_eq!(
        popped,
        ["id-0", "id-1", "id-2", "id-3", "id-4", "id-5", "id-6"]
    );
    Ok(())
}
