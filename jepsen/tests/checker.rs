//! Self-tests of the history format and the `log` checker: one tiny hand-built history per
//! anomaly class, each of which must fail with exactly the classes it should, next to valid
//! histories that must pass. A checker that reports nothing would fail most of these.

use std::sync::Arc;
use std::time::Instant;

use rocketraft_jepsen::checker::Validity;
use rocketraft_jepsen::checker::log::{LogCheckOptions, LogReport, check};
use rocketraft_jepsen::history::{
    F, HistoryWriter, Key, Mop, Op, OpType, Value, pairs, read_history,
};

const OPTS: LogCheckOptions = LogCheckOptions {
    min_ok_sends: 1,
    min_ok_polls: 1,
};

// ---------------------------------------------------------------------------------------
// Building histories by hand

fn send(key: Key, value: Value) -> Mop {
    Mop::Send {
        key,
        value,
        offset: None,
    }
}

fn sent(key: Key, value: Value, offset: u64) -> Mop {
    Mop::Send {
        key,
        value,
        offset: Some(offset),
    }
}

fn read(key: Key, reads: &[(u64, Value)]) -> Mop {
    Mop::Poll {
        key,
        reads: reads.to_vec(),
    }
}

/// A history under construction; `index` and `time_ns` are stamped as the writer would.
#[derive(Default)]
struct H {
    ops: Vec<Op>,
}

impl H {
    fn push(&mut self, process: u64, kind: OpType, f: F, value: Vec<Mop>, assign: &[Key]) {
        let index = self.ops.len() as u64;
        self.ops.push(Op {
            index,
            time_ns: index * 1_000,
            process,
            kind,
            f,
            value,
            assign: assign.to_vec(),
            node: None,
            error: None,
        });
    }

    fn invoke(&mut self, process: u64, f: F, value: Vec<Mop>) -> &mut Self {
        self.push(process, OpType::Invoke, f, value, &[]);
        self
    }

    fn complete(&mut self, process: u64, kind: OpType, f: F, value: Vec<Mop>) -> &mut Self {
        self.push(process, kind, f, value, &[]);
        self
    }

    /// An invocation immediately followed by its completion.
    fn op(
        &mut self,
        process: u64,
        f: F,
        kind: OpType,
        invoked: Vec<Mop>,
        done: Vec<Mop>,
    ) -> &mut Self {
        self.invoke(process, f, invoked)
            .complete(process, kind, f, done)
    }

    fn send_ok(&mut self, process: u64, key: Key, value: Value, offset: u64) -> &mut Self {
        self.op(
            process,
            F::Send,
            OpType::Ok,
            vec![send(key, value)],
            vec![sent(key, value, offset)],
        )
    }

    /// A send that failed or timed out: the completion carries no offset.
    fn send_not_ok(&mut self, process: u64, kind: OpType, key: Key, value: Value) -> &mut Self {
        self.op(
            process,
            F::Send,
            kind,
            vec![send(key, value)],
            vec![send(key, value)],
        )
    }

    fn poll(&mut self, process: u64, kind: OpType, reads: Vec<Mop>) -> &mut Self {
        let invoked = reads
            .iter()
            .map(|m| match m {
                Mop::Poll { key, .. } => read(*key, &[]),
                _ => panic!("a poll holds poll mops"),
            })
            .collect();
        self.op(process, F::Poll, kind, invoked, reads)
    }

    fn poll_ok(&mut self, process: u64, key: Key, reads: &[(u64, Value)]) -> &mut Self {
        self.poll(process, OpType::Ok, vec![read(key, reads)])
    }

    fn drain_ok(&mut self, process: u64, key: Key, reads: &[(u64, Value)]) -> &mut Self {
        self.op(
            process,
            F::Drain,
            OpType::Ok,
            vec![read(key, &[])],
            vec![read(key, reads)],
        )
    }

    fn assign_ok(&mut self, process: u64, keys: &[Key]) -> &mut Self {
        self.push(process, OpType::Invoke, F::Assign, vec![], keys);
        self.push(process, OpType::Ok, F::Assign, vec![], keys);
        self
    }

    fn check(&self) -> LogReport {
        check(&self.ops, &OPTS)
    }
}

fn pretty(report: &LogReport) -> String {
    serde_json::to_string_pretty(report).expect("a report serialises")
}

/// The report fails with exactly `classes` as its fatal classes.
fn assert_fails_with(report: &LogReport, classes: &[&str]) {
    let found: Vec<&str> = report.error_counts.keys().map(String::as_str).collect();
    let mut expected = classes.to_vec();
    expected.sort_unstable();
    assert_eq!(found, expected, "{}", pretty(report));
    assert_eq!(report.valid, Validity::Fail, "{}", pretty(report));
    let listed: Vec<&str> = report.errors.keys().map(String::as_str).collect();
    assert_eq!(listed, expected, "every counted class has examples");
}

fn assert_passes(report: &LogReport) {
    assert_eq!(report.valid, Validity::Pass, "{}", pretty(report));
    assert!(report.errors.is_empty() && report.error_counts.is_empty());
    assert!(report.unknown_reasons.is_empty());
}

fn example<'a>(report: &'a LogReport, class: &str) -> &'a serde_json::Value {
    &report.errors[class][0]
}

// ---------------------------------------------------------------------------------------
// Valid histories

#[test]
fn valid_history_with_concurrency_info_fail_assign_and_drain_passes() {
    let mut h = H::default();
    h.assign_ok(3, &[0, 1]);
    // Three concurrent sends: 101 is invoked after 100 but acked first, at the lower offset.
    h.invoke(0, F::Send, vec![send(0, 100)])
        .invoke(1, F::Send, vec![send(0, 101)])
        .invoke(2, F::Send, vec![send(1, 200)])
        .complete(1, OpType::Ok, F::Send, vec![sent(0, 101, 0)])
        .complete(0, OpType::Ok, F::Send, vec![sent(0, 100, 1)])
        .complete(2, OpType::Ok, F::Send, vec![sent(1, 200, 0)]);
    h.poll(
        3,
        OpType::Ok,
        vec![read(0, &[(0, 101)]), read(1, &[(0, 200)])],
    );
    // A batch of two sends to one key, adjacent in the log.
    h.op(
        0,
        F::Send,
        OpType::Ok,
        vec![send(0, 102), send(0, 103)],
        vec![sent(0, 102, 2), sent(0, 103, 3)],
    );
    // A timed-out send that never happened; its process is retired, 5 takes over.
    h.send_not_ok(1, OpType::Info, 1, 201);
    h.send_ok(5, 1, 202, 1);
    h.send_not_ok(2, OpType::Fail, 1, 203);
    h.assign_ok(4, &[0]);
    h.poll_ok(4, 0, &[(0, 101), (1, 100), (2, 102)]);
    h.poll(3, OpType::Fail, vec![]);
    h.poll(
        3,
        OpType::Ok,
        vec![
            read(0, &[(1, 100), (2, 102), (3, 103)]),
            read(1, &[(1, 202)]),
        ],
    );
    // A timed-out send that did happen: the drain reads it.
    h.send_not_ok(6, OpType::Info, 0, 104);
    // The drain of key 0 takes two ops of one process; it starts at offset 0 again.
    h.drain_ok(10, 0, &[(0, 101), (1, 100), (2, 102)]);
    h.drain_ok(10, 0, &[(3, 103), (4, 104)]);
    h.drain_ok(11, 1, &[(0, 200), (1, 202)]);

    let report = h.check();
    assert_passes(&report);
    assert!(report.allowed.is_empty(), "{}", pretty(&report));
    let s = &report.stats;
    assert_eq!((s.send_ok, s.send_info, s.send_fail), (5, 2, 1));
    assert_eq!(
        (s.poll_ok, s.poll_ok_nonempty, s.poll_fail, s.drain_ok),
        (6, 6, 1, 3)
    );
    assert_eq!(s.assign_ok, 2);
    assert_eq!(s.values_attempted, 9);
    assert_eq!(s.values_acked, 6);
    assert_eq!(s.values_read_distinct, 7);
    assert_eq!(s.keys, 2);
    assert_eq!(s.offset_max_by_key.get(&0), Some(&4));
    assert_eq!(s.offset_max_by_key.get(&1), Some(&1));
}

#[test]
fn a_process_that_polled_then_drains_from_offset_zero_is_not_nonmonotonic() {
    let mut h = H::default();
    h.send_ok(0, 0, 10, 0).send_ok(0, 0, 11, 1);
    h.poll_ok(1, 0, &[(0, 10), (1, 11)]);
    h.drain_ok(1, 0, &[(0, 10), (1, 11)]);
    assert_passes(&h.check());
}

#[test]
fn info_send_never_read_is_not_lost() {
    let mut h = H::default();
    h.send_not_ok(0, OpType::Info, 0, 10);
    h.send_ok(1, 0, 11, 0);
    h.poll_ok(2, 0, &[(0, 11)]);
    let report = h.check();
    assert_passes(&report);
    assert_eq!(report.stats.send_info, 1);
}

// ---------------------------------------------------------------------------------------
// One anomaly per test

#[test]
fn inconsistent_offsets_two_readers_disagree_on_an_offset() {
    let mut h = H::default();
    h.send_ok(0, 0, 10, 0);
    h.send_not_ok(1, OpType::Info, 0, 11);
    h.send_not_ok(2, OpType::Info, 0, 12);
    h.poll_ok(3, 0, &[(0, 10), (1, 11)]);
    h.poll_ok(4, 0, &[(0, 10), (1, 12)]);
    let report = h.check();
    assert_fails_with(&report, &["inconsistent-offsets"]);
    let e = example(&report, "inconsistent-offsets");
    assert_eq!(e["offset"], 1);
    assert_eq!(e["values"], serde_json::json!([11, 12]));
}

#[test]
fn g1a_an_ok_poll_reads_a_failed_send() {
    let mut h = H::default();
    h.send_not_ok(0, OpType::Fail, 0, 10);
    h.send_ok(1, 0, 11, 1);
    h.poll_ok(2, 0, &[(0, 10), (1, 11)]);
    let report = h.check();
    assert_fails_with(&report, &["G1a"]);
    assert_eq!(example(&report, "G1a")["value"], 10);
}

#[test]
fn lost_write_an_acked_value_below_a_read_value_is_never_read() {
    let mut h = H::default();
    h.send_ok(0, 0, 10, 0)
        .send_ok(0, 0, 11, 1)
        .send_ok(0, 0, 12, 2);
    h.poll_ok(1, 0, &[(0, 10)]);
    h.poll_ok(2, 0, &[(2, 12)]);
    let report = h.check();
    // A lost value is never read, so it is also unseen.
    assert_fails_with(&report, &["lost-write", "unseen"]);
    let e = example(&report, "lost-write");
    assert_eq!(
        (e["value"].clone(), e["max_read"].clone()),
        (11.into(), 12.into())
    );
    assert_eq!(report.error_counts["lost-write"], 1);
}

/// Sends 10 and 11 in one op that times out; nobody reports an offset for them. An ok poll
/// reads 10, so the op happened; 11 was served only to a poll that timed out, and an ok poll
/// read 12 after it, so 11 was committed and then lost.
fn info_send_history(ok_poll_reads_10: bool) -> H {
    let mut h = H::default();
    h.op(
        0,
        F::Send,
        OpType::Info,
        vec![send(0, 10), send(0, 11)],
        vec![],
    );
    h.send_ok(1, 0, 12, 2);
    let kind_of_first_poll = if ok_poll_reads_10 {
        OpType::Ok
    } else {
        OpType::Info
    };
    h.poll(2, kind_of_first_poll, vec![read(0, &[(0, 10)])]);
    h.poll(3, OpType::Info, vec![read(0, &[(1, 11)])]);
    h.poll_ok(4, 0, &[(2, 12)]);
    h
}

#[test]
fn info_send_read_by_an_ok_poll_counts_as_committed_so_its_loss_is_lost_write() {
    let report = info_send_history(true).check();
    assert_fails_with(&report, &["lost-write"]);
    assert_eq!(example(&report, "lost-write")["value"], 11);
}

#[test]
fn info_send_only_seen_by_uncertain_polls_is_not_lost() {
    let report = info_send_history(false).check();
    assert_passes(&report);
}

#[test]
fn duplicate_one_value_at_two_offsets() {
    let mut h = H::default();
    h.send_ok(0, 0, 10, 0).send_ok(0, 0, 11, 1);
    h.poll_ok(1, 0, &[(0, 10), (1, 11), (2, 10)]);
    let report = h.check();
    assert_fails_with(&report, &["duplicate"]);
    let e = example(&report, "duplicate");
    assert_eq!(e["value"], 10);
    assert_eq!(e["offsets"], serde_json::json!([0, 2]));
}

#[test]
fn lost_write_judges_a_duplicated_value_by_its_last_offset() {
    let mut h = H::default();
    h.send_ok(1, 0, 11, 1);
    h.send_ok(0, 0, 10, 2);
    // 10 was also served at offset 0, to a poll that timed out.
    h.poll(2, OpType::Info, vec![read(0, &[(0, 10)])]);
    h.poll_ok(3, 0, &[(1, 11)]);
    let report = h.check();
    // Readers have not yet passed 10's last copy (offset 2), so it is not lost, only unseen.
    assert_fails_with(&report, &["duplicate", "unseen"]);
}

/// 10, 11, 12 at offsets 0, 1, 2 of key 0, sent by one process one after the other.
fn three_sends() -> H {
    let mut h = H::default();
    h.send_ok(0, 0, 10, 0)
        .send_ok(0, 0, 11, 1)
        .send_ok(0, 0, 12, 2);
    h
}

#[test]
fn int_poll_skip_one_poll_jumps_over_a_value() {
    let mut h = three_sends();
    h.poll_ok(1, 0, &[(0, 10), (2, 12)]);
    h.drain_ok(9, 0, &[(0, 10), (1, 11), (2, 12)]);
    let report = h.check();
    assert_fails_with(&report, &["int-poll-skip"]);
    assert_eq!(
        example(&report, "int-poll-skip")["skipped"],
        serde_json::json!([11])
    );
}

#[test]
fn int_nonmonotonic_poll_one_poll_goes_backwards() {
    let mut h = three_sends();
    h.poll_ok(1, 0, &[(1, 11), (0, 10)]);
    h.drain_ok(9, 0, &[(0, 10), (1, 11), (2, 12)]);
    assert_fails_with(&h.check(), &["int-nonmonotonic-poll"]);
}

#[test]
fn int_send_skip_is_allowed_and_passes() {
    let mut h = H::default();
    // Another producer's send lands between the two sends of one batch.
    h.invoke(0, F::Send, vec![send(0, 10), send(0, 11)])
        .invoke(1, F::Send, vec![send(0, 12)])
        .complete(1, OpType::Ok, F::Send, vec![sent(0, 12, 1)])
        .complete(0, OpType::Ok, F::Send, vec![sent(0, 10, 0), sent(0, 11, 2)]);
    h.poll_ok(2, 0, &[(0, 10), (1, 12), (2, 11)]);
    let report = h.check();
    assert_passes(&report);
    assert_eq!(
        report.allowed.get("int-send-skip"),
        Some(&1),
        "{}",
        pretty(&report)
    );
}

#[test]
fn int_nonmonotonic_send_one_batch_acked_out_of_order() {
    let mut h = H::default();
    h.op(
        0,
        F::Send,
        OpType::Ok,
        vec![send(0, 10), send(0, 11)],
        vec![sent(0, 10, 1), sent(0, 11, 0)],
    );
    h.poll_ok(1, 0, &[(0, 11), (1, 10)]);
    assert_fails_with(&h.check(), &["int-nonmonotonic-send"]);
}

#[test]
fn poll_skip_next_poll_of_a_process_starts_past_the_next_value() {
    let mut h = three_sends();
    h.poll_ok(1, 0, &[(0, 10)]);
    h.poll_ok(1, 0, &[(2, 12)]);
    h.drain_ok(9, 0, &[(0, 10), (1, 11), (2, 12)]);
    let report = h.check();
    assert_fails_with(&report, &["poll-skip"]);
    assert_eq!(
        example(&report, "poll-skip")["skipped"],
        serde_json::json!([11])
    );
}

#[test]
fn poll_skip_within_a_drain_process_is_reported() {
    let mut h = three_sends();
    h.drain_ok(9, 0, &[(0, 10)]);
    h.drain_ok(9, 0, &[(2, 12)]);
    h.poll_ok(1, 0, &[(1, 11)]);
    assert_fails_with(&h.check(), &["poll-skip"]);
}

/// Process 1 reads 10, changes its assignment, then reads 12.
fn reassigned_history(middle_assignment: &[Key]) -> H {
    let mut h = three_sends();
    h.assign_ok(1, &[0]);
    h.poll_ok(1, 0, &[(0, 10)]);
    h.assign_ok(1, middle_assignment);
    h.assign_ok(1, &[0]);
    h.poll_ok(1, 0, &[(2, 12)]);
    h.drain_ok(9, 0, &[(0, 10), (1, 11), (2, 12)]);
    h
}

#[test]
fn assign_that_drops_a_key_forgets_its_position() {
    assert_passes(&reassigned_history(&[1]).check());
}

#[test]
fn assign_that_keeps_a_key_keeps_its_position() {
    assert_fails_with(&reassigned_history(&[0, 1]).check(), &["poll-skip"]);
}

#[test]
fn nonmonotonic_poll_next_poll_goes_backwards_or_repeats() {
    let mut h = three_sends();
    h.poll_ok(1, 0, &[(1, 11), (2, 12)]);
    h.poll_ok(1, 0, &[(0, 10)]);
    // A repeat is nonmonotonic too.
    h.poll_ok(2, 0, &[(0, 10), (1, 11)]);
    h.poll_ok(2, 0, &[(1, 11), (2, 12)]);
    let report = h.check();
    assert_fails_with(&report, &["nonmonotonic-poll"]);
    assert_eq!(report.error_counts["nonmonotonic-poll"], 2);
}

#[test]
fn nonmonotonic_send_a_process_second_send_lands_first() {
    let mut h = H::default();
    h.send_ok(0, 0, 10, 1).send_ok(0, 0, 11, 0);
    h.poll_ok(1, 0, &[(0, 11), (1, 10)]);
    // One process's sends are also ordered in real time, so that check fires as well.
    assert_fails_with(&h.check(), &["nonmonotonic-send", "realtime-send-order"]);
}

#[test]
fn realtime_send_order_a_later_send_of_another_process_lands_first() {
    let mut h = H::default();
    h.send_ok(0, 0, 10, 1);
    h.send_ok(1, 0, 11, 0);
    h.poll_ok(2, 0, &[(0, 11), (1, 10)]);
    let report = h.check();
    assert_fails_with(&report, &["realtime-send-order"]);
    let e = example(&report, "realtime-send-order");
    assert_eq!(
        (e["earlier"]["value"].clone(), e["later"]["value"].clone()),
        (10.into(), 11.into())
    );
}

#[test]
fn realtime_send_order_compares_with_the_highest_earlier_offset() {
    let mut h = H::default();
    h.send_ok(0, 0, 10, 2); // completes first, highest offset
    h.send_ok(1, 0, 11, 0);
    h.send_ok(2, 0, 12, 1); // after 11 (fine) and after 10 (violation)
    h.poll_ok(3, 0, &[(0, 11), (1, 12), (2, 10)]);
    let report = h.check();
    assert_fails_with(&report, &["realtime-send-order"]);
    assert_eq!(
        report.error_counts["realtime-send-order"],
        2,
        "{}",
        pretty(&report)
    );
    let violations: Vec<_> = report.errors["realtime-send-order"]
        .iter()
        .map(|e| (e["earlier"]["value"].clone(), e["later"]["value"].clone()))
        .collect();
    assert_eq!(
        violations,
        vec![(10.into(), 11.into()), (10.into(), 12.into())]
    );
}

#[test]
fn offset_reused_by_a_later_send_is_caught_by_several_classes() {
    let mut h = H::default();
    h.send_ok(0, 0, 10, 0);
    h.send_ok(1, 0, 11, 0);
    h.poll_ok(2, 0, &[(0, 10)]);
    let report = h.check();
    // Equal offsets break real-time order (it needs strictly greater), and 11 overwrote
    // nothing a reader saw: it is acked where the reads put 10.
    assert_fails_with(
        &report,
        &[
            "ack-mismatch",
            "inconsistent-offsets",
            "lost-write",
            "realtime-send-order",
            "unseen",
        ],
    );
}

#[test]
fn realtime_send_order_allows_any_order_between_concurrent_sends() {
    let mut h = H::default();
    h.invoke(0, F::Send, vec![send(0, 10)])
        .invoke(1, F::Send, vec![send(0, 11)])
        .complete(0, OpType::Ok, F::Send, vec![sent(0, 10, 1)])
        .complete(1, OpType::Ok, F::Send, vec![sent(0, 11, 0)]);
    h.poll_ok(2, 0, &[(0, 11), (1, 10)]);
    assert_passes(&h.check());
}

#[test]
fn unexpected_a_value_nobody_sent_is_read() {
    let mut h = H::default();
    h.send_ok(0, 0, 10, 0);
    h.poll_ok(1, 0, &[(0, 10), (1, 99)]);
    let report = h.check();
    assert_fails_with(&report, &["unexpected"]);
    assert_eq!(example(&report, "unexpected")["value"], 99);
}

#[test]
fn unexpected_a_value_sent_to_another_key_is_read() {
    let mut h = H::default();
    h.send_ok(0, 0, 10, 0).send_ok(0, 1, 20, 0);
    h.poll_ok(1, 0, &[(0, 10)]);
    h.poll_ok(1, 1, &[(0, 20), (1, 10)]);
    let report = h.check();
    // 10 at key 1 is unexpected there; it also sits at two places, but per key it is one.
    assert_fails_with(&report, &["unexpected"]);
    assert_eq!(example(&report, "unexpected")["key"], 1);
}

#[test]
fn unseen_an_acked_send_is_never_read() {
    let mut h = H::default();
    h.send_ok(0, 0, 10, 0).send_ok(0, 0, 11, 1);
    h.poll_ok(1, 0, &[(0, 10)]);
    let report = h.check();
    // Nothing later than 11 was read, so it is not provably lost: only unseen.
    assert_fails_with(&report, &["unseen"]);
    assert_eq!(example(&report, "unseen")["value"], 11);
}

#[test]
fn offset_gap_an_offset_below_the_max_holds_nothing() {
    let mut h = H::default();
    h.send_ok(0, 0, 10, 0);
    h.send_not_ok(1, OpType::Info, 0, 11);
    h.send_ok(2, 0, 12, 2);
    h.poll_ok(3, 0, &[(0, 10), (2, 12)]);
    let report = h.check();
    assert_fails_with(&report, &["offset-gap"]);
    let e = example(&report, "offset-gap");
    assert_eq!((e["from"].clone(), e["to"].clone()), (1.into(), 1.into()));
}

#[test]
fn ack_mismatch_reads_put_another_value_at_an_acked_offset() {
    let mut h = H::default();
    h.send_ok(0, 0, 10, 0);
    h.send_ok(1, 0, 11, 1);
    h.send_not_ok(2, OpType::Info, 0, 12);
    h.poll_ok(3, 0, &[(0, 10), (1, 12)]);
    let report = h.check();
    // Offset 1 then holds two values, and 11, acked there, was never read although the
    // reader passed offset 1: the broker overwrote an acked message.
    assert_fails_with(
        &report,
        &[
            "ack-mismatch",
            "inconsistent-offsets",
            "lost-write",
            "unseen",
        ],
    );
    let e = example(&report, "ack-mismatch");
    assert_eq!(
        (e["value"].clone(), e["read_values"].clone()),
        (11.into(), serde_json::json!([12]))
    );
}

// ---------------------------------------------------------------------------------------
// Verdicts without anomalies

#[test]
fn vacuous_histories_are_unknown_not_pass() {
    let report = check(&[], &OPTS);
    assert_eq!(report.valid, Validity::Unknown, "{}", pretty(&report));
    assert_eq!(report.unknown_reasons.len(), 2);

    let mut h = H::default();
    h.send_ok(0, 0, 10, 0);
    h.poll_ok(1, 0, &[(0, 10)]);
    h.poll_ok(1, 0, &[]);
    let strict = LogCheckOptions {
        min_ok_sends: 1,
        min_ok_polls: 2,
    };
    let report = check(&h.ops, &strict);
    assert_eq!(report.valid, Validity::Unknown, "{}", pretty(&report));
    assert!(report.errors.is_empty());
    assert_eq!(report.unknown_reasons.len(), 1);
    assert!(
        report.unknown_reasons[0].contains("polls"),
        "{:?}",
        report.unknown_reasons
    );
    assert_eq!(check(&h.ops, &OPTS).valid, Validity::Pass);
}

#[test]
fn malformed_histories_are_unknown_not_pass() {
    let mut h = H::default();
    h.send_ok(0, 0, 10, 0);
    h.poll_ok(1, 0, &[(0, 10)]);
    // A completion with no invocation, and a process that goes on after info.
    h.complete(7, OpType::Ok, F::Poll, vec![]);
    h.send_not_ok(2, OpType::Info, 0, 11);
    h.send_not_ok(2, OpType::Fail, 0, 12);
    let report = h.check();
    assert_eq!(report.valid, Validity::Unknown, "{}", pretty(&report));
    let reasons = report.unknown_reasons.join("\n");
    assert!(reasons.contains("without an open invocation"), "{reasons}");
    assert!(reasons.contains("already got info"), "{reasons}");
}

#[test]
fn validity_combines_to_the_worst() {
    use Validity::*;
    assert_eq!(Pass.combine(Unknown), Unknown);
    assert_eq!(Unknown.combine(Fail), Fail);
    assert_eq!(Fail.combine(Pass), Fail);
    assert_eq!(Pass.combine(Pass), Pass);
}

/// Sends 4 keys' worth of values one at a time, with polls keeping up in chunks, to about
/// 10^5 ops. Checks that it passes, and in release builds that it is fast.
#[test]
fn large_valid_history_passes_and_checks_fast_in_release() {
    const KEYS: u64 = 4;
    const SENDS: u64 = 45_000;
    const CHUNK: u64 = 10;
    let mut h = H::default();
    for value in 0..SENDS {
        let key = (value % KEYS) as Key;
        h.send_ok(value % 8, key, value, value / KEYS);
        let offset = value / KEYS;
        if (offset + 1).is_multiple_of(CHUNK) && value % KEYS == KEYS - 1 {
            for key in 0..KEYS {
                let reads: Vec<(u64, Value)> = (offset + 1 - CHUNK..=offset)
                    .map(|o| (o, o * KEYS + key))
                    .collect();
                h.poll_ok(100 + key, key as Key, &reads);
            }
        }
    }
    assert!(h.ops.len() > 95_000, "{} ops", h.ops.len());
    let started = Instant::now();
    let report = h.check();
    let elapsed = started.elapsed();
    assert_passes(&report);
    assert_eq!(report.stats.send_ok as u64, SENDS);
    assert_eq!(report.stats.values_read_distinct as u64, SENDS);
    eprintln!("checked {} ops in {elapsed:?}", h.ops.len());
    if !cfg!(debug_assertions) {
        assert!(elapsed.as_secs_f64() < 1.0, "took {elapsed:?}");
    }
}

// ---------------------------------------------------------------------------------------
// The history file

#[test]
fn writer_round_trips_through_read_history_and_pairs_match_by_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("history.jsonl");
    let writer = Arc::new(HistoryWriter::create(&path).expect("create history"));

    let threads: Vec<_> = (0..4u64)
        .map(|process| {
            let writer = Arc::clone(&writer);
            std::thread::spawn(move || {
                for i in 0..25u64 {
                    let value = process * 1_000 + i;
                    let invoke = writer.invoke(process, F::Send, vec![send(0, value)], vec![]);
                    writer.complete(
                        &invoke,
                        OpType::Ok,
                        vec![sent(0, value, i)],
                        Some("n1".into()),
                        None,
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("writer thread");
    }
    let assign = writer.invoke(9, F::Assign, vec![], vec![0, 3]);
    writer.complete(&assign, OpType::Info, vec![], None, Some("timeout".into()));
    let poll = writer.invoke(10, F::Poll, vec![read(0, &[])], vec![]);
    writer.complete(
        &poll,
        OpType::Ok,
        vec![read(0, &[(0, 0), (1, 1)])],
        None,
        None,
    );
    writer.flush().expect("flush");

    let in_memory = writer.ops();
    let from_file = read_history(&path).expect("read history");
    assert_eq!(from_file, in_memory);
    assert_eq!(from_file.len(), 4 * 25 * 2 + 4);
    for (at, op) in from_file.iter().enumerate() {
        assert_eq!(op.index, at as u64, "indexes are dense and in file order");
    }
    assert!(from_file.windows(2).all(|w| w[0].time_ns <= w[1].time_ns));
    let assign_done = &from_file[from_file.len() - 3];
    assert_eq!(
        assign_done.assign,
        vec![0, 3],
        "completion carries the assignment"
    );
    assert_eq!(assign_done.error.as_deref(), Some("timeout"));

    let matched = pairs(&from_file);
    assert_eq!(matched.len(), 4 * 25 + 2);
    for (invoke, completion) in &matched {
        let completion = completion.as_ref().expect("every op completed");
        assert_eq!(invoke.kind, OpType::Invoke);
        assert_eq!(
            (completion.process, completion.f),
            (invoke.process, invoke.f)
        );
        assert!(completion.index > invoke.index);
        if let (Some(Mop::Send { value: a, .. }), Some(Mop::Send { value: b, .. })) =
            (invoke.value.first(), completion.value.first())
        {
            assert_eq!(a, b, "completion matched to its own invocation");
        }
    }
}

#[test]
fn pairs_leaves_unfinished_ops_without_completion() {
    let mut h = H::default();
    h.invoke(0, F::Send, vec![send(0, 1)]);
    h.invoke(1, F::Poll, vec![]);
    h.complete(1, OpType::Ok, F::Poll, vec![]);
    let matched = pairs(&h.ops);
    assert_eq!(matched.len(), 2);
    assert!(matched[0].1.is_none());
    assert_eq!(matched[1].1.as_ref().map(|c| c.index), Some(2));
}

#[test]
fn read_history_names_the_line_of_a_corrupt_op() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("history.jsonl");
    let mut h = H::default();
    h.send_ok(0, 0, 10, 0);
    let mut text = String::new();
    for op in &h.ops {
        text.push_str(&serde_json::to_string(op).expect("serialise"));
        text.push('\n');
    }
    text.push('\n'); // blank line 3 is skipped
    text.push_str("{\"index\": 2, \"type\": \"ok\"\n");
    std::fs::write(&path, text).expect("write");
    let err = read_history(&path).expect_err("line 4 is corrupt");
    let message = format!("{err:#}");
    assert!(message.contains("line 4"), "{message}");
    assert!(message.contains("history.jsonl"), "{message}");
}

#[test]
fn writer_keeps_ops_in_memory_and_reports_a_failed_write_at_flush() {
    // Every write to /dev/full fails with ENOSPC; more ops than the write buffer holds.
    let writer = HistoryWriter::create("/dev/full").expect("open /dev/full");
    for process in 0..1_000u64 {
        let invoke = writer.invoke(process, F::Poll, vec![read(0, &[])], vec![]);
        writer.complete(
            &invoke,
            OpType::Ok,
            vec![read(0, &[(0, process)])],
            None,
            None,
        );
    }
    assert_eq!(writer.ops().len(), 2_000);
    assert!(
        writer.flush().is_err(),
        "a lost history line must not go unnoticed"
    );
}

// ---------------------------------------------------------------------------------------
// Producer retries (the dedup workload): one value sent by several processes

#[test]
fn a_retry_answered_with_the_first_copys_offset_passes() {
    let mut h = H::default();
    // Process 0's send of 10 times out (stored at 0); 11 is acked at 1; the retry of 10 by
    // process 1 is answered with the first copy's offset 0.
    h.send_not_ok(0, OpType::Info, 0, 10);
    h.send_ok(2, 0, 11, 1);
    h.send_ok(1, 0, 10, 0);
    h.drain_ok(3, 0, &[(0, 10), (1, 11)]);
    assert_passes(&h.check());
}

#[test]
fn a_retry_after_a_failed_try_is_not_an_aborted_read() {
    let mut h = H::default();
    h.send_not_ok(0, OpType::Fail, 0, 10);
    h.send_ok(1, 0, 10, 0);
    h.drain_ok(3, 0, &[(0, 10)]);
    assert_passes(&h.check());
}

#[test]
fn a_retry_that_stores_a_second_copy_is_a_duplicate() {
    let mut h = H::default();
    h.send_not_ok(0, OpType::Info, 0, 10);
    h.send_ok(1, 0, 10, 1);
    h.drain_ok(3, 0, &[(0, 10), (1, 10)]);
    assert_fails_with(&h.check(), &["duplicate"]);
}
