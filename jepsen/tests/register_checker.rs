//! Self-tests of the `register` checker: tiny hand-built histories whose verdict is known,
//! linearizable ones that must pass and violations that must fail with the right witness.
//! A checker that always passed, or always failed, would fail most of these.

use rocketraft_jepsen::checker::Validity;
use rocketraft_jepsen::checker::register::{
    NEVER_WRITTEN, NOT_LINEARIZABLE, READ_BEFORE_WRITE, RegisterCheckOptions, RegisterReport,
    STALE_READ, check,
};
use rocketraft_jepsen::history::{F, Key, Mop, Op, OpType, Value};

const OPTS: RegisterCheckOptions = RegisterCheckOptions {
    min_ok_writes: 1,
    min_ok_reads: 1,
    max_states: 100_000,
};

/// A history under construction: events are appended in real-time order, so `index` and
/// `time_ns` (1 ms per event) grow together as the writer stamps them.
#[derive(Default)]
struct H {
    ops: Vec<Op>,
}

impl H {
    fn push(&mut self, process: u64, kind: OpType, f: F, value: Vec<Mop>) -> &mut Self {
        let index = self.ops.len() as u64;
        self.ops.push(Op {
            index,
            time_ns: index * 1_000_000,
            process,
            kind,
            f,
            value,
            assign: Vec::new(),
            node: Some(format!("n{}", process % 3 + 1)),
            error: None,
        });
        self
    }

    fn invoke_write(&mut self, process: u64, key: Key, value: Value) -> &mut Self {
        self.push(
            process,
            OpType::Invoke,
            F::Write,
            vec![Mop::Write { key, value }],
        )
    }

    fn end_write(&mut self, process: u64, kind: OpType, key: Key, value: Value) -> &mut Self {
        self.push(process, kind, F::Write, vec![Mop::Write { key, value }])
    }

    fn invoke_read(&mut self, process: u64, key: Key) -> &mut Self {
        self.push(
            process,
            OpType::Invoke,
            F::Read,
            vec![Mop::Read { key, value: None }],
        )
    }

    fn end_read(&mut self, process: u64, key: Key, value: Option<Value>) -> &mut Self {
        self.push(process, OpType::Ok, F::Read, vec![Mop::Read { key, value }])
    }

    /// A write that completes ok before anything else happens.
    fn write(&mut self, process: u64, key: Key, value: Value) -> &mut Self {
        self.invoke_write(process, key, value)
            .end_write(process, OpType::Ok, key, value)
    }

    /// A read that completes ok before anything else happens.
    fn read(&mut self, process: u64, key: Key, value: Option<Value>) -> &mut Self {
        self.invoke_read(process, key).end_read(process, key, value)
    }

    fn check(&self) -> RegisterReport {
        check(&self.ops, &OPTS)
    }
}

fn assert_valid(report: &RegisterReport) {
    assert_eq!(
        report.valid,
        Validity::Pass,
        "expected a pass: {}",
        serde_json::to_string_pretty(report).unwrap_or_default()
    );
}

#[test]
fn a_linearizable_concurrent_history_passes() {
    let mut h = H::default();
    // Key 0: a read overlapping the first write may see it; a read overlapping the second
    // write may still see the first; reads after a write completes see it.
    h.invoke_write(1, 0, 1_000_001)
        .invoke_read(2, 0)
        .end_read(2, 0, Some(1_000_001))
        .invoke_read(3, 0)
        .end_write(1, OpType::Ok, 0, 1_000_001)
        .end_read(3, 0, Some(1_000_001))
        .invoke_write(4, 0, 4_000_001)
        .invoke_read(2, 0)
        .end_read(2, 0, Some(1_000_001))
        .invoke_read(3, 0)
        .end_read(3, 0, Some(4_000_001))
        .end_write(4, OpType::Ok, 0, 4_000_001)
        .read(2, 0, Some(4_000_001));
    // Key 1, interleaved: the initial value, then two concurrent writes, both of whose
    // values readers see, in the one order that explains them.
    h.read(5, 1, None)
        .invoke_write(6, 1, 6_000_001)
        .invoke_write(7, 1, 7_000_001)
        .invoke_read(5, 1)
        .end_read(5, 1, Some(7_000_001))
        .invoke_read(8, 1)
        .end_read(8, 1, Some(6_000_001))
        .end_write(6, OpType::Ok, 1, 6_000_001)
        .end_write(7, OpType::Ok, 1, 7_000_001)
        .read(5, 1, Some(6_000_001));
    let report = h.check();
    assert_valid(&report);
    assert_eq!(report.keys.len(), 2);
    assert!(report.keys.values().all(|k| k.valid == Validity::Pass));
    assert_eq!(report.stats.write_ok, 4);
    assert_eq!(report.stats.read_ok, 9);
    assert_eq!(report.stats.read_ok_value, 8);
}

#[test]
fn a_stale_read_fails_with_the_newer_write_as_witness() {
    let mut h = H::default();
    h.write(1, 0, 1_000_001)
        .write(1, 0, 1_000_002)
        .read(2, 0, Some(1_000_002))
        // Both writes completed before this read began: returning the first is stale.
        .read(3, 0, Some(1_000_001))
        .read(2, 0, Some(1_000_002));
    // Another key that is fine, to see keys judged apart.
    h.write(4, 1, 4_000_001).read(4, 1, Some(4_000_001));
    let report = h.check();
    assert_eq!(report.valid, Validity::Fail);
    assert_eq!(report.anomalous_keys, vec![0]);
    assert_eq!(report.keys[&1].valid, Validity::Pass);
    let w = report.keys[&0].witness.as_ref().expect("a witness");
    assert_eq!(w.kind, STALE_READ);
    assert!(w.minimal);
    assert_eq!(w.value, Some(1_000_001));
    assert_eq!(w.read.process, 3);
    assert_eq!((w.read.invoke_index, w.read.complete_index), (6, Some(7)));
    assert_eq!((w.read.invoke_s, w.read.complete_s), (0.006, Some(0.007)));
    let write = w.write.as_ref().expect("the write of the value read");
    assert_eq!((write.value, write.invoke_index), (Some(1_000_001), 0));
    // The newest conflict first: the read that saw the newer value, then its write.
    let conflicts: Vec<(F, Option<Value>)> = w.conflicts.iter().map(|c| (c.f, c.value)).collect();
    assert_eq!(
        conflicts,
        vec![(F::Read, Some(1_000_002)), (F::Write, Some(1_000_002))]
    );
}

#[test]
fn reading_the_initial_value_after_a_completed_write_is_stale() {
    let mut h = H::default();
    h.read(1, 0, None).write(2, 0, 7).read(1, 0, None);
    let report = h.check();
    assert_eq!(report.valid, Validity::Fail);
    let w = report.keys[&0].witness.as_ref().expect("a witness");
    assert_eq!((w.kind.as_str(), w.value), (STALE_READ, None));
    assert_eq!(w.read.invoke_index, 4);
    assert_eq!(w.conflicts[0].value, Some(7));
}

#[test]
fn a_newer_value_read_earlier_makes_a_later_read_of_the_older_one_stale() {
    let mut h = H::default();
    h.write(1, 0, 10)
        // The second write stays open throughout: only the reads order it.
        .invoke_write(2, 0, 20)
        .read(3, 0, Some(20))
        .read(4, 0, Some(10))
        .end_write(2, OpType::Ok, 0, 20);
    let report = h.check();
    assert_eq!(report.valid, Validity::Fail);
    let w = report.keys[&0].witness.as_ref().expect("a witness");
    assert_eq!(
        (w.kind.as_str(), w.value, w.read.process),
        (STALE_READ, Some(10), 4)
    );
    assert_eq!(w.conflicts[0].f, F::Read);
    assert_eq!(w.conflicts[0].value, Some(20));
}

#[test]
fn readers_that_disagree_on_the_order_of_concurrent_writes_fail() {
    // Both writes overlap every read, so no single read is stale by itself: one reader saw
    // 1 then 2, the other 2 then 1, and no order of the writes explains both.
    let mut h = H::default();
    h.invoke_write(1, 0, 1)
        .invoke_write(2, 0, 2)
        .read(3, 0, Some(1))
        .read(4, 0, Some(2))
        .read(3, 0, Some(2))
        .read(4, 0, Some(1))
        .end_write(1, OpType::Ok, 0, 1)
        .end_write(2, OpType::Ok, 0, 2);
    let report = h.check();
    assert_eq!(report.valid, Validity::Fail);
    let w = report.keys[&0].witness.as_ref().expect("a witness");
    assert_eq!(w.kind, NOT_LINEARIZABLE);
    assert!(w.minimal);
    // The first read that cannot be placed: process 4's second read, of 1.
    assert_eq!(
        (w.read.process, w.read.invoke_index, w.value),
        (4, 8, Some(1))
    );
    let conflicts: Vec<Option<Value>> = w.conflicts.iter().map(|c| c.value).collect();
    assert_eq!(conflicts, vec![Some(2)]);

    // Without that read it is linearizable: 1, then 2.
    let mut h = H::default();
    h.invoke_write(1, 0, 1)
        .invoke_write(2, 0, 2)
        .read(3, 0, Some(1))
        .read(4, 0, Some(2))
        .read(3, 0, Some(2))
        .end_write(1, OpType::Ok, 0, 1)
        .end_write(2, OpType::Ok, 0, 2);
    assert_valid(&h.check());
}

#[test]
fn a_read_of_a_never_written_value_fails() {
    let mut h = H::default();
    h.write(1, 0, 1).read(2, 0, Some(99));
    let report = h.check();
    assert_eq!(report.valid, Validity::Fail);
    let w = report.keys[&0].witness.as_ref().expect("a witness");
    assert_eq!((w.kind.as_str(), w.value), (NEVER_WRITTEN, Some(99)));
    assert!(w.write.is_none());

    // A write that definitely failed (never sent) did not happen either.
    let mut h = H::default();
    h.write(1, 0, 1)
        .invoke_write(1, 0, 2)
        .end_write(1, OpType::Fail, 0, 2)
        .read(2, 0, Some(2));
    let report = h.check();
    assert_eq!(report.valid, Validity::Fail);
    let w = report.keys[&0].witness.as_ref().expect("a witness");
    assert_eq!(w.kind, NEVER_WRITTEN);
    assert_eq!(w.write.as_ref().map(|o| o.kind), Some(OpType::Fail));
}

#[test]
fn a_read_before_its_write_began_fails() {
    let mut h = H::default();
    h.read(1, 0, Some(5)).write(2, 0, 5);
    let report = h.check();
    assert_eq!(report.valid, Validity::Fail);
    let w = report.keys[&0].witness.as_ref().expect("a witness");
    assert_eq!(w.kind, READ_BEFORE_WRITE);
}

#[test]
fn an_info_write_observed_later_passes() {
    let mut h = H::default();
    h.write(1, 0, 1)
        // Timed out: it may have taken effect, and a later read shows it did.
        .invoke_write(2, 0, 2)
        .end_write(2, OpType::Info, 0, 2)
        .read(3, 0, Some(1))
        .write(4, 0, 3)
        .read(3, 0, Some(3))
        // It took effect long after it timed out (a forward still in flight), and the
        // reads say so: 3, then 2.
        .read(3, 0, Some(2))
        .read(5, 0, Some(2))
        // Never completed at all (the run ended): unread, it constrains nothing.
        .invoke_write(6, 0, 6);
    let report = h.check();
    assert_valid(&report);
    assert_eq!(report.stats.write_info, 2);
    // Its value, once overwritten, must not come back.
    h.write(7, 0, 8).read(3, 0, Some(2));
    let report = h.check();
    assert_eq!(report.valid, Validity::Fail);
    let w = report.keys[&0].witness.as_ref().expect("a witness");
    assert_eq!((w.kind.as_str(), w.value), (STALE_READ, Some(2)));
    assert_eq!(w.write.as_ref().map(|o| o.kind), Some(OpType::Info));
}

#[test]
fn the_witness_is_the_first_read_that_breaks_the_history() {
    let mut h = H::default();
    h.write(1, 0, 1).read(2, 0, Some(1)).write(1, 0, 2);
    // The violation: 1 again after 2 completed. Everything after it is fine on its own.
    h.read(3, 0, Some(1));
    for v in 3..40 {
        h.write(1, 0, v).read(2, 0, Some(v));
    }
    let report = h.check();
    assert_eq!(report.valid, Validity::Fail);
    let w = report.keys[&0].witness.as_ref().expect("a witness");
    assert!(w.minimal);
    assert_eq!((w.read.process, w.read.invoke_index), (3, 6));
    assert_eq!(w.conflicts[0].value, Some(2));
}

/// Twelve writes all concurrent with each other, then a read of one of them: easy for the
/// search, but more than a handful of states.
fn concurrent_writes() -> H {
    let mut h = H::default();
    for p in 0..12 {
        h.invoke_write(p, 0, p * 10);
    }
    for p in 0..12 {
        h.end_write(p, OpType::Ok, 0, p * 10);
    }
    h.read(20, 0, Some(50));
    h
}

#[test]
fn the_state_cap_gives_unknown_not_pass() {
    let h = concurrent_writes();
    assert_valid(&h.check());
    let capped = check(
        &h.ops,
        &RegisterCheckOptions {
            max_states: 5,
            ..OPTS
        },
    );
    assert_eq!(capped.valid, Validity::Unknown);
    let key = &capped.keys[&0];
    assert_eq!(key.valid, Validity::Unknown);
    assert!(key.states_explored > 5, "{key:?}");
    assert!(
        capped.unknown_reasons.iter().any(|r| r.contains("gave up")),
        "{:?}",
        capped.unknown_reasons
    );
}

#[test]
fn too_few_ok_ops_is_unknown() {
    let mut h = H::default();
    h.write(1, 0, 1).read(2, 0, Some(1));
    let report = check(
        &h.ops,
        &RegisterCheckOptions {
            min_ok_writes: 2,
            min_ok_reads: 1,
            ..OPTS
        },
    );
    assert_eq!(report.valid, Validity::Unknown);
    assert!(report.unknown_reasons[0].contains("too few ok writes"));
}

#[test]
fn failed_and_unknown_reads_are_dropped() {
    let mut h = H::default();
    h.write(1, 0, 1).write(1, 0, 2);
    // A read that failed or timed out says nothing, whatever its completion carries.
    h.invoke_read(2, 0)
        .push(
            2,
            OpType::Fail,
            F::Read,
            vec![Mop::Read {
                key: 0,
                value: Some(1),
            }],
        )
        .invoke_read(3, 0)
        .push(
            3,
            OpType::Info,
            F::Read,
            vec![Mop::Read {
                key: 0,
                value: None,
            }],
        )
        .read(4, 0, Some(2));
    let report = h.check();
    assert_valid(&report);
    assert_eq!((report.stats.read_fail, report.stats.read_info), (1, 1));
}

#[test]
fn register_ops_round_trip_through_json_and_old_lines_still_parse() {
    let mut h = H::default();
    h.write(1, 3, 42).read(2, 3, None);
    for op in &h.ops {
        let line = serde_json::to_string(op).expect("serialise");
        let back: Op = serde_json::from_str(&line).expect("parse");
        assert_eq!(&back, op);
    }
    let nil = serde_json::to_string(&h.ops[3]).expect("serialise");
    assert!(
        nil.contains(r#"{"type":"read","key":3,"value":null}"#),
        "{nil}"
    );
    // A line of the log workload, as older runs wrote it.
    let old = r#"{"index":9,"time_ns":1710000,"process":4,"type":"ok","f":"poll","value":[{"type":"poll","key":0,"reads":[[16,41],[17,42]]}]}"#;
    let op: Op = serde_json::from_str(old).expect("an old line parses");
    assert_eq!(op.f, F::Poll);
}

/// A history of a real (simulated) register: every op takes effect at a random point inside
/// its interval, so the history is linearizable by construction. Unknown writes take effect
/// at a random time, possibly after they timed out, or never.
fn simulated(seed: u64, ops: usize, processes: u64, keys: Key) -> Vec<Op> {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    enum Event {
        Invoke(u64, F, Mop),
        Effect(usize),
        Complete(u64, OpType, usize),
    }
    let mut rng = StdRng::seed_from_u64(seed);
    // (time, event) with distinct float times; the effect's outcome is filled in later.
    let mut events: Vec<(f64, Event)> = Vec::new();
    // Per simulated op: key, write value (None: a read), what a read returned.
    let mut calls: Vec<(Key, Option<Value>, Option<Value>)> = Vec::new();
    let mut clock: Vec<f64> = vec![0.0; processes as usize];
    let mut ids: Vec<u64> = (0..processes).collect();
    let mut id_next = processes;
    let mut value_next = 1;
    for i in 0..ops {
        let slot = i % processes as usize;
        let start = clock[slot] + rng.random_range(0.0..5.0);
        let end = start + rng.random_range(0.1..20.0);
        clock[slot] = end;
        let key = rng.random_range(0..keys);
        let process = ids[slot];
        let at = calls.len();
        if rng.random_ratio(1, 2) {
            let value = value_next;
            value_next += 1;
            calls.push((key, Some(value), None));
            let info = rng.random_ratio(1, 8);
            events.push((
                start,
                Event::Invoke(process, F::Write, Mop::Write { key, value }),
            ));
            if !info {
                events.push((rng.random_range(start..end), Event::Effect(at)));
                events.push((end, Event::Complete(process, OpType::Ok, at)));
            } else {
                if rng.random_ratio(1, 2) {
                    events.push((rng.random_range(start..end + 30.0), Event::Effect(at)));
                }
                events.push((end, Event::Complete(process, OpType::Info, at)));
                ids[slot] = id_next;
                id_next += 1;
            }
        } else {
            calls.push((key, None, None));
            events.push((
                start,
                Event::Invoke(process, F::Read, Mop::Read { key, value: None }),
            ));
            events.push((rng.random_range(start..end), Event::Effect(at)));
            events.push((end, Event::Complete(process, OpType::Ok, at)));
        }
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut register: std::collections::HashMap<Key, Value> = Default::default();
    let mut h = H::default();
    for (_, event) in events {
        match event {
            Event::Invoke(process, f, mop) => {
                h.push(process, OpType::Invoke, f, vec![mop]);
            }
            Event::Effect(at) => {
                let (key, write, _) = calls[at];
                match write {
                    Some(v) => {
                        register.insert(key, v);
                    }
                    None => calls[at].2 = register.get(&key).copied(),
                }
            }
            Event::Complete(process, kind, at) => {
                let (key, write, read) = calls[at];
                let mop = match write {
                    Some(value) => Mop::Write { key, value },
                    None => Mop::Read { key, value: read },
                };
                let f = if write.is_some() { F::Write } else { F::Read };
                h.push(process, kind, f, vec![mop]);
            }
        }
    }
    h.ops
}

#[test]
fn simulated_linearizable_histories_pass() {
    for seed in 0..20 {
        let ops = simulated(seed, 1_500, 8, 3);
        let report = check(&ops, &RegisterCheckOptions::default());
        assert_eq!(
            report.valid,
            Validity::Pass,
            "seed {seed}: {:?} {:?}",
            report.unknown_reasons,
            report
                .keys
                .values()
                .filter_map(|k| k.witness.as_ref())
                .next()
        );
    }
}

#[test]
fn a_simulated_history_with_one_stale_read_fails() {
    let mut ops = simulated(7, 1_500, 8, 1);
    // The last ok read returns the first value ever read instead: by then long overwritten.
    let first = ops.iter().find_map(|o| match o.value.as_slice() {
        [Mop::Read { value: Some(v), .. }] if o.kind == OpType::Ok => Some(*v),
        _ => None,
    });
    let first = first.expect("some read returned a value");
    let last = ops
        .iter_mut()
        .rev()
        .find(|o| o.kind == OpType::Ok && o.f == F::Read)
        .expect("an ok read");
    let index = last.index;
    last.value = vec![Mop::Read {
        key: 0,
        value: Some(first),
    }];
    let report = check(&ops, &RegisterCheckOptions::default());
    assert_eq!(report.valid, Validity::Fail);
    let w = report.keys[&0].witness.as_ref().expect("a witness");
    assert_eq!(w.kind, STALE_READ);
    assert_eq!((w.read.complete_index, w.value), (Some(index), Some(first)));
}
