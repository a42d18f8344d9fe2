//! The `group` workload checker: Jepsen's total-queue analysis for a consumer group of pop
//! consumers, plus what the group's offset promises.
//!
//! Delivery is at least once: a message is received again when its ack was lost or came
//! too late, so duplicate deliveries are counted, not failed. Failures:
//! - `lost`: an acknowledged send that no consumer ever received, although the final reads
//!   moved the group's offset past it;
//! - `unexpected`: a received value that no send attempted on that key;
//! - `inconsistent-offsets`: one offset delivered or acked with two values, or one value at
//!   two offsets (a second stored copy);
//! - `redelivered-after-ack`: a value received by a receive invoked after an ack of that
//!   value had succeeded (the broker forgot an acknowledged ack);
//! - `offset-went-back`: a group-offset read lower than one that completed before it began;
//! - `offset-behind-acks`: a group-offset read lower than the first offset not yet acked
//!   by acks that all succeeded before the read began (every offset below it was done).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;
use serde_json::{Value as Json, json};

use crate::checker::Validity;
use crate::checker::log::{Findings, malformed};
use crate::history::{F, Key, Mop, Op, OpType, Value, pair_refs};

pub const LOST: &str = "lost";
pub const UNEXPECTED: &str = "unexpected";
pub const INCONSISTENT_OFFSETS: &str = "inconsistent-offsets";
pub const REDELIVERED_AFTER_ACK: &str = "redelivered-after-ack";
pub const OFFSET_WENT_BACK: &str = "offset-went-back";
pub const OFFSET_BEHIND_ACKS: &str = "offset-behind-acks";

/// Vacuity guards: `ok` sends, and `ok` receives that got at least one message.
#[derive(Clone, Copy, Debug)]
pub struct GroupCheckOptions {
    pub min_ok_sends: usize,
    pub min_ok_receives: usize,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    pub send_ok: usize,
    pub send_info: usize,
    pub send_fail: usize,
    pub receive_ok: usize,
    pub receive_ok_nonempty: usize,
    pub receive_info: usize,
    pub receive_fail: usize,
    pub ack_ok: usize,
    pub ack_info: usize,
    pub ack_fail: usize,
    pub offset_reads_ok: usize,
    pub values_acked: usize,
    pub values_received: usize,
    /// Deliveries beyond each value's first (at-least-once redeliveries).
    pub duplicate_deliveries: usize,
    /// Acknowledged sends never received (judged `lost` only when drained).
    pub unreceived: usize,
    /// Whether, for every key, some group-offset read passed every acknowledged send
    /// (what the final reads wait for). Without it an unreceived message may just not
    /// have been reached, and `lost` is not judged.
    pub drained: bool,
}

#[derive(Serialize, Clone, Debug)]
pub struct GroupReport {
    pub valid: Validity,
    pub errors: BTreeMap<String, Vec<Json>>,
    pub error_counts: BTreeMap<String, usize>,
    pub stats: GroupStats,
    pub unknown_reasons: Vec<String>,
}

/// One finished op: its invocation and completion positions and its completion.
struct Done<'a> {
    invoke_index: u64,
    complete_index: u64,
    op: &'a Op,
}

impl<'a> Done<'a> {
    fn of(invocation: &Op, completion: &'a Op) -> Self {
        Self {
            invoke_index: invocation.index,
            complete_index: completion.index,
            op: completion,
        }
    }
}

pub fn check(history: &[Op], opts: &GroupCheckOptions) -> GroupReport {
    let mut unknown_reasons = malformed(history);
    let mut stats = GroupStats::default();
    let mut found = Findings::default();

    let mut attempted: HashSet<(Key, Value)> = HashSet::new();
    let mut acked_sends: BTreeMap<(Key, Value), u64> = BTreeMap::new();
    let mut receives: Vec<Done> = Vec::new();
    let mut acks: Vec<Done> = Vec::new();
    let mut offsets: Vec<Done> = Vec::new();
    for (inv, done) in pair_refs(history) {
        let kind = done.map_or(OpType::Info, |d| d.kind);
        match inv.f {
            F::Send => {
                for m in &inv.value {
                    if let Mop::Send { key, value, .. } = m {
                        attempted.insert((*key, *value));
                    }
                }
                match kind {
                    OpType::Ok => stats.send_ok += 1,
                    OpType::Fail => stats.send_fail += 1,
                    _ => stats.send_info += 1,
                }
                for m in done
                    .filter(|d| d.kind == OpType::Ok)
                    .map_or(&[][..], |d| &d.value)
                {
                    if let Mop::Send {
                        key,
                        value,
                        offset: Some(o),
                    } = m
                    {
                        acked_sends.insert((*key, *value), *o);
                    }
                }
            }
            F::Receive => match done.map(|d| (d.kind, d)) {
                Some((OpType::Ok, d)) => {
                    stats.receive_ok += 1;
                    if reads_of(d).next().is_some() {
                        stats.receive_ok_nonempty += 1;
                    }
                    receives.push(Done::of(inv, d));
                }
                Some((OpType::Fail, _)) => stats.receive_fail += 1,
                _ => stats.receive_info += 1,
            },
            F::Ack => match done.map(|d| (d.kind, d)) {
                Some((OpType::Ok, d)) => {
                    stats.ack_ok += 1;
                    acks.push(Done::of(inv, d));
                }
                Some((OpType::Fail, _)) => stats.ack_fail += 1,
                _ => stats.ack_info += 1,
            },
            F::Offset => {
                if let Some(d) = done.filter(|d| d.kind == OpType::Ok) {
                    stats.offset_reads_ok += 1;
                    offsets.push(Done::of(inv, d));
                }
            }
            _ => {}
        }
    }

    // Deliveries: unexpected values, offsets, duplicates, lost.
    let mut delivered: HashMap<(Key, Value), usize> = HashMap::new();
    let mut at_offset: HashMap<(Key, u64), Value> = HashMap::new();
    let mut offset_of: HashMap<(Key, Value), u64> = HashMap::new();
    let mut place = |found: &mut Findings, key: Key, offset: u64, value: Value, op: u64| {
        let held = *at_offset.entry((key, offset)).or_insert(value);
        let first = *offset_of.entry((key, value)).or_insert(offset);
        if held != value || first != offset {
            found.add(INCONSISTENT_OFFSETS, || {
                json!({"key": key, "offset": offset, "value": value, "op": op,
                       "offset_holds": held, "value_first_seen_at": first})
            });
        }
    };
    for (&(key, value), &offset) in &acked_sends {
        place(&mut found, key, offset, value, u64::MAX);
    }
    for r in &receives {
        for (key, offset, value) in reads_of(r.op) {
            stats.values_received += 1;
            *delivered.entry((key, value)).or_default() += 1;
            if !attempted.contains(&(key, value)) {
                found.add(
                    UNEXPECTED,
                    || json!({"key": key, "offset": offset, "value": value, "op": r.op.index}),
                );
            }
            place(&mut found, key, offset, value, r.op.index);
        }
    }
    for a in &acks {
        for (key, offset, value) in acks_of(a.op) {
            place(&mut found, key, offset, value, a.op.index);
        }
    }
    stats.duplicate_deliveries = delivered.values().map(|n| n - 1).sum();
    stats.drained = drained(&acked_sends, &offsets);
    for (&(key, value), &offset) in &acked_sends {
        if !delivered.contains_key(&(key, value)) {
            stats.unreceived += 1;
            if stats.drained {
                found.add(
                    LOST,
                    || json!({"key": key, "value": value, "offset": offset}),
                );
            }
        }
    }

    redelivered_after_ack(&receives, &acks, &mut found);
    stats.values_acked = acks.iter().map(|a| acks_of(a.op).count()).sum();
    offset_order(&offsets, &acks, &mut found);

    Validity::require(
        &mut unknown_reasons,
        "ok sends",
        stats.send_ok,
        "min_ok_sends",
        opts.min_ok_sends,
    );
    Validity::require(
        &mut unknown_reasons,
        "ok receives that got something",
        stats.receive_ok_nonempty,
        "min_ok_receives",
        opts.min_ok_receives,
    );
    if !stats.drained && stats.unreceived > 0 {
        unknown_reasons.push(format!(
            "{} acknowledged sends were never received and the final reads did not finish",
            stats.unreceived
        ));
    }
    let error_counts: BTreeMap<String, usize> = found
        .counts
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    let errors = found
        .examples
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let valid = Validity::judge(!error_counts.is_empty(), &unknown_reasons);
    GroupReport {
        valid,
        errors,
        error_counts,
        stats,
        unknown_reasons,
    }
}

/// Whether every key's group offset was read past its highest acknowledged send.
fn drained(acked_sends: &BTreeMap<(Key, Value), u64>, reads: &[Done]) -> bool {
    let mut past: HashMap<Key, u64> = HashMap::new();
    for r in reads {
        for m in &r.op.value {
            if let Mop::Read {
                key,
                value: Some(v),
            } = m
            {
                let p = past.entry(*key).or_default();
                *p = (*p).max(*v);
            }
        }
    }
    acked_sends
        .iter()
        .all(|(&(key, _), &offset)| past.get(&key).is_some_and(|p| *p > offset))
}

/// `(key, offset, value)` of every message an ok receive got.
fn reads_of(op: &Op) -> impl Iterator<Item = (Key, u64, Value)> + '_ {
    op.value.iter().flat_map(|m| match m {
        Mop::Poll { key, reads } => reads.iter().map(|&(o, v)| (*key, o, v)).collect(),
        _ => Vec::new(),
    })
}

/// `(key, offset, value)` of every ack an ok ack op's completion lists.
fn acks_of(op: &Op) -> impl Iterator<Item = (Key, u64, Value)> + '_ {
    op.value.iter().filter_map(|m| match m {
        Mop::Ack { key, offset, value } => Some((*key, *offset, *value)),
        _ => None,
    })
}

fn redelivered_after_ack(receives: &[Done], acks: &[Done], found: &mut Findings) {
    let mut acked_at: HashMap<(Key, Value), u64> = HashMap::new();
    for a in acks {
        for (key, _, value) in acks_of(a.op) {
            let at = acked_at.entry((key, value)).or_insert(a.complete_index);
            *at = (*at).min(a.complete_index);
        }
    }
    for r in receives {
        for (key, offset, value) in reads_of(r.op) {
            if let Some(&acked) = acked_at.get(&(key, value))
                && acked < r.invoke_index
            {
                found.add(REDELIVERED_AFTER_ACK, || {
                    json!({"key": key, "offset": offset, "value": value,
                           "ack_completed_at": acked, "receive_invoked_at": r.invoke_index,
                           "receive": r.op.index})
                });
            }
        }
    }
}

/// Group-offset reads against earlier reads and earlier acks, per key, in real time.
fn offset_order(reads: &[Done], acks: &[Done], found: &mut Findings) {
    // Per key: reads by invocation, and (completion, offset) of every ok ack.
    let mut by_key: BTreeMap<Key, Vec<(&Done, Option<Value>)>> = BTreeMap::new();
    for r in reads {
        for m in &r.op.value {
            if let Mop::Read { key, value } = m {
                by_key.entry(*key).or_default().push((r, *value));
            }
        }
    }
    let mut acked: BTreeMap<Key, Vec<(u64, u64)>> = BTreeMap::new();
    for a in acks {
        for (key, offset, _) in acks_of(a.op) {
            acked
                .entry(key)
                .or_default()
                .push((a.complete_index, offset));
        }
    }
    for (key, mut reads) in by_key {
        reads.sort_by_key(|(r, _)| r.invoke_index);
        let mut by_completion: Vec<usize> = (0..reads.len()).collect();
        by_completion.sort_by_key(|&at| reads[at].0.complete_index);
        let mut completed = by_completion.iter().peekable();
        let mut highest: Option<(Option<Value>, u64)> = None;
        let mut key_acks = acked.remove(&key).unwrap_or_default();
        key_acks.sort();
        let mut key_acks = key_acks.into_iter().peekable();
        let mut done_offsets: BTreeSet<u64> = BTreeSet::new();
        let mut all_done_below = 0u64;
        for (later, value) in &reads {
            while let Some(&&at) = completed.peek() {
                if reads[at].0.complete_index >= later.invoke_index {
                    break;
                }
                completed.next();
                if highest.is_none_or(|(h, _)| reads[at].1 > h) {
                    highest = Some((reads[at].1, reads[at].0.op.index));
                }
            }
            // What an earlier read saw is done, acked by ops whose outcome we may not know.
            if let Some((Some(h), _)) = highest {
                all_done_below = all_done_below.max(h);
            }
            if let Some((earlier, op)) = highest.filter(|(h, _)| *h > *value) {
                found.add(OFFSET_WENT_BACK, || {
                    json!({"key": key, "earlier": earlier, "earlier_op": op,
                           "later": value, "later_op": later.op.index})
                });
            }
            while let Some(&(completed_at, offset)) = key_acks.peek() {
                if completed_at >= later.invoke_index {
                    break;
                }
                key_acks.next();
                done_offsets.insert(offset);
            }
            while done_offsets.remove(&all_done_below) {
                all_done_below += 1;
            }
            if value.unwrap_or(0) < all_done_below {
                found.add(OFFSET_BEHIND_ACKS, || {
                    json!({"key": key, "read": value, "op": later.op.index,
                           "every_offset_acked_below": all_done_below})
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{HistoryWriter, Mop};

    /// A history built op by op, indexes and times from the writer.
    struct H {
        w: HistoryWriter,
        _dir: tempfile::TempDir,
    }

    impl H {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let w = HistoryWriter::create(dir.path().join("h.jsonl")).expect("create");
            Self { w, _dir: dir }
        }
        fn op(&self, process: u64, f: F, inv: Vec<Mop>, kind: OpType, done: Vec<Mop>) -> &Self {
            let i = self.w.invoke(process, f, inv, Vec::new());
            self.w.complete(&i, kind, done, None, None);
            self
        }
        fn send(&self, p: u64, value: Value, offset: u64) -> &Self {
            let m = |o| {
                vec![Mop::Send {
                    key: 0,
                    value,
                    offset: o,
                }]
            };
            self.op(p, F::Send, m(None), OpType::Ok, m(Some(offset)))
        }
        fn receive(&self, p: u64, reads: Vec<(u64, Value)>) -> &Self {
            let inv = vec![Mop::Poll {
                key: 0,
                reads: Vec::new(),
            }];
            self.op(
                p,
                F::Receive,
                inv,
                OpType::Ok,
                vec![Mop::Poll { key: 0, reads }],
            )
        }
        fn ack(&self, p: u64, offset: u64, value: Value) -> &Self {
            let m = vec![Mop::Ack {
                key: 0,
                offset,
                value,
            }];
            self.op(p, F::Ack, m.clone(), OpType::Ok, m)
        }
        fn offset(&self, p: u64, value: Option<Value>) -> &Self {
            let inv = vec![Mop::Read {
                key: 0,
                value: None,
            }];
            self.op(
                p,
                F::Offset,
                inv,
                OpType::Ok,
                vec![Mop::Read { key: 0, value }],
            )
        }
        fn check(&self) -> GroupReport {
            check(
                &self.w.ops(),
                &GroupCheckOptions {
                    min_ok_sends: 1,
                    min_ok_receives: 1,
                },
            )
        }
    }

    fn classes(r: &GroupReport) -> Vec<&str> {
        r.error_counts.keys().map(String::as_str).collect()
    }

    #[test]
    fn a_clean_history_with_a_redelivery_passes_and_counts_the_duplicate() {
        let h = H::new();
        h.send(1, 10, 0).send(1, 11, 1);
        // Consumer 2 takes both and crashes; consumer 3 gets them again and acks.
        h.receive(2, vec![(0, 10), (1, 11)]).offset(4, Some(0));
        h.receive(3, vec![(0, 10), (1, 11)])
            .ack(3, 0, 10)
            .ack(3, 1, 11);
        h.offset(4, Some(2));
        let r = h.check();
        assert_eq!(r.valid, Validity::Pass, "{r:?}");
        assert_eq!(r.stats.duplicate_deliveries, 2);
        assert!(r.stats.drained);
    }

    #[test]
    fn each_anomaly_class_is_found() {
        // Lost: acked, never received, and the group's offset was read past it.
        let h = H::new();
        h.send(1, 10, 0)
            .send(1, 11, 1)
            .receive(2, vec![(1, 11)])
            .ack(2, 1, 11);
        // Not drained yet (no offset read past 1): unknown, not failed.
        assert_eq!(h.check().valid, Validity::Unknown);
        h.offset(4, Some(2));
        assert_eq!(classes(&h.check()), [LOST]);

        let h = H::new();
        h.send(1, 10, 0).receive(2, vec![(0, 10), (1, 99)]);
        assert_eq!(classes(&h.check()), [UNEXPECTED]);

        let h = H::new();
        h.send(1, 10, 0)
            .send(1, 11, 1)
            .receive(2, vec![(0, 11), (1, 10)]);
        assert_eq!(classes(&h.check()), [INCONSISTENT_OFFSETS]);

        let h = H::new();
        h.send(1, 10, 0).receive(2, vec![(0, 10)]).ack(2, 0, 10);
        h.receive(3, vec![(0, 10)]);
        assert_eq!(classes(&h.check()), [REDELIVERED_AFTER_ACK]);

        let h = H::new();
        h.send(1, 10, 0).send(1, 11, 1).receive(2, vec![(0, 10)]);
        h.offset(4, Some(1))
            .offset(4, Some(0))
            .ack(2, 0, 10)
            .receive(2, vec![(1, 11)]);
        h.ack(2, 1, 11);
        assert!(classes(&h.check()).contains(&OFFSET_WENT_BACK));

        let h = H::new();
        h.send(1, 10, 0)
            .receive(2, vec![(0, 10)])
            .ack(2, 0, 10)
            .offset(4, None);
        assert_eq!(classes(&h.check()), [OFFSET_BEHIND_ACKS]);
    }

    #[test]
    fn an_earlier_read_covers_acks_whose_outcome_was_unknown() {
        // Offset 0's ack timed out (info) but took effect; a read saw 1; acking 1 must
        // then make every later read at least 2.
        let h = H::new();
        h.send(1, 10, 0)
            .send(1, 11, 1)
            .receive(2, vec![(0, 10), (1, 11)]);
        let m = vec![Mop::Ack {
            key: 0,
            offset: 0,
            value: 10,
        }];
        h.op(2, F::Ack, m, OpType::Info, Vec::new());
        h.offset(4, Some(1)).ack(5, 1, 11).offset(4, Some(1));
        assert_eq!(classes(&h.check()), [OFFSET_BEHIND_ACKS]);
    }
}
