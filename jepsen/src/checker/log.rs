//! The `log` workload checker: a port of the analyses of Jepsen's Kafka workload
//! (`jepsen.tests.kafka`, assign mode, no transactions), plus checks that follow from our
//! queue offsets being dense and assigned by the Raft state machine.
//!
//! Values are unique, and every read and every ack names an offset, so the version order of
//! each key can be rebuilt from the history instead of searched for. The steps:
//!
//! 1. Pair invocations with completions; collect each op's sends and reads.
//! 2. Derived indexes: who attempted, who sent and who read (ok) each `(key, value)`, and
//!    which sends must have committed (`ok`, or `info` with one of its values read by an
//!    `ok` op).
//! 3. Per key, the log `offset -> {values}` from every read (whatever the op's outcome: a
//!    consumer only ever returns data the broker served) and from the offsets of committed
//!    sends. Its occupied offsets, in order, give the dense index used to measure skips.
//! 4. One pass per anomaly class, each writing capped JSON examples into the report.
//!
//! Everything is hash lookups plus sorts: O(n log n) in the number of sends and reads.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::{Value as Json, json};

use crate::checker::Validity;
use crate::history::{F, Key, Mop, Op, OpType, Value, pair_refs};

/// One offset holds several values.
pub const INCONSISTENT_OFFSETS: &str = "inconsistent-offsets";
/// An ok poll read a value whose send failed (aborted read).
pub const G1A: &str = "G1a";
/// A committed value that readers must have passed over: some ok read saw a later value.
pub const LOST_WRITE: &str = "lost-write";
/// One value at several offsets of a key.
pub const DUPLICATE: &str = "duplicate";
/// Inside one poll, consecutive reads of a key jumped over a value in the log.
pub const INT_POLL_SKIP: &str = "int-poll-skip";
/// Inside one poll, a read of a key went backwards or repeated.
pub const INT_NONMONOTONIC_POLL: &str = "int-nonmonotonic-poll";
/// Inside one send op, consecutive sends to a key are not adjacent in the log.
pub const INT_SEND_SKIP: &str = "int-send-skip";
/// Inside one send op, a later send to a key sits before an earlier one.
pub const INT_NONMONOTONIC_SEND: &str = "int-nonmonotonic-send";
/// A process's next poll of a key started past the value after its previous poll's last.
pub const POLL_SKIP: &str = "poll-skip";
/// A process's next poll of a key started at or before its previous poll's last value.
pub const NONMONOTONIC_POLL: &str = "nonmonotonic-poll";
/// A process's next send to a key sits at or before its previous send in the log.
pub const NONMONOTONIC_SEND: &str = "nonmonotonic-send";
/// A value was read that no send ever attempted (on that key).
pub const UNEXPECTED: &str = "unexpected";
/// An acked send that no ok poll or drain ever read.
pub const UNSEEN: &str = "unseen";
/// An offset below a key's highest known offset that holds no value.
pub const OFFSET_GAP: &str = "offset-gap";
/// An ok send acked at offset o, but reads show another value at o.
pub const ACK_MISMATCH: &str = "ack-mismatch";
/// A send acked before another send to the key was invoked got an offset not below it.
pub const REALTIME_SEND_ORDER: &str = "realtime-send-order";

/// Reported but not fatal. A batch of sends to one key may interleave with other producers'
/// sends, as in Jepsen, where `int-send-skip` is always allowed.
pub const ALLOWED_CLASSES: &[&str] = &[INT_SEND_SKIP];

/// Examples kept per class; `error_counts` has the full count.
pub const EXAMPLES_PER_CLASS_MAX: usize = 32;
/// Values listed in one example (the values a skip jumped over, a duplicate's offsets).
const VALUES_PER_EXAMPLE_MAX: usize = 16;

/// Vacuity guards: below these the run proves nothing and the verdict is at best `Unknown`.
#[derive(Clone, Copy, Debug)]
pub struct LogCheckOptions {
    /// `ok` send ops.
    pub min_ok_sends: usize,
    /// `ok` poll and drain ops that read at least one value.
    pub min_ok_polls: usize,
}

#[derive(Serialize, Clone, Debug)]
pub struct LogReport {
    pub valid: Validity,
    /// Fatal class -> up to [`EXAMPLES_PER_CLASS_MAX`] examples.
    pub errors: BTreeMap<String, Vec<Json>>,
    /// Fatal class -> how many instances were found.
    pub error_counts: BTreeMap<String, usize>,
    /// Allowed class (see [`ALLOWED_CLASSES`]) -> how many instances were found.
    pub allowed: BTreeMap<String, usize>,
    pub stats: LogStats,
    /// Why the verdict is not `Pass` although nothing fatal was found (too little evidence,
    /// a malformed history). Filled in whatever the verdict.
    pub unknown_reasons: Vec<String>,
}

/// Op counts count ops (a send op may carry several values); value counts count values.
#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    pub invocations: usize,
    pub send_ok: usize,
    pub send_info: usize,
    pub send_fail: usize,
    /// Poll and drain ops by outcome; `info` includes ops that never completed.
    pub poll_ok: usize,
    pub poll_ok_nonempty: usize,
    pub poll_info: usize,
    pub poll_fail: usize,
    pub drain_ok: usize,
    pub assign_ok: usize,
    pub values_attempted: usize,
    pub values_acked: usize,
    /// Reads returned by ok polls and drains, counting repeats.
    pub values_read: usize,
    pub values_read_distinct: usize,
    /// Keys with at least one value in their log.
    pub keys: usize,
    pub offset_max_by_key: BTreeMap<Key, u64>,
}

pub fn check(history: &[Op], opts: &LogCheckOptions) -> LogReport {
    let mut unknown_reasons = malformed(history);
    let (entries, attempted) = collect(history);
    let ix = Indexes::build(&entries, attempted);
    let logs = version_orders(&entries, &ix);
    let cx = Context {
        entries: &entries,
        ix: &ix,
        logs: &logs,
    };

    let mut found = Findings::default();
    inconsistent_offsets(&cx, &mut found);
    bad_reads(&cx, &mut found);
    lost_writes(&cx, &mut found);
    duplicates(&cx, &mut found);
    internal_polls(&cx, &mut found);
    internal_sends(&cx, &mut found);
    process_orders(&cx, &mut found);
    unseen(&cx, &mut found);
    offset_gaps(&cx, &mut found);
    ack_mismatches(&cx, &mut found);
    realtime_send_order(&cx, &mut found);

    let stats = stats(&cx);
    Validity::require(
        &mut unknown_reasons,
        "ok sends",
        stats.send_ok,
        "min_ok_sends",
        opts.min_ok_sends,
    );
    Validity::require(
        &mut unknown_reasons,
        "ok polls that read something",
        stats.poll_ok_nonempty,
        "min_ok_polls",
        opts.min_ok_polls,
    );

    let mut errors = BTreeMap::new();
    let mut error_counts = BTreeMap::new();
    let mut allowed = BTreeMap::new();
    for (class, count) in found.counts {
        if ALLOWED_CLASSES.contains(&class) {
            allowed.insert(class.to_string(), count);
        } else {
            error_counts.insert(class.to_string(), count);
            let examples = found.examples.remove(class).unwrap_or_default();
            errors.insert(class.to_string(), examples);
        }
    }
    let valid = Validity::judge(!errors.is_empty(), &unknown_reasons);
    LogReport {
        valid,
        errors,
        error_counts,
        allowed,
        stats,
        unknown_reasons,
    }
}

// ---------------------------------------------------------------------------------------
// Collecting ops

/// One invocation and what the analyses need from its completion.
struct Entry<'a> {
    f: F,
    /// `Ok`, `Fail` or `Info`; `Info` when the op never completed.
    kind: OpType,
    process: u64,
    invoke_index: u64,
    complete_index: Option<u64>,
    /// How examples name the op: the completion's index, else the invocation's.
    id: u64,
    /// `(key, value, acked offset)`, from the completion when it lists its sends.
    sends: Vec<(Key, Value, Option<u64>)>,
    /// `(key, offset, value)` in the order returned, from the completion of a poll or drain.
    reads: Vec<(Key, u64, Value)>,
    assign: &'a [Key],
}

fn collect(history: &[Op]) -> (Vec<Entry<'_>>, HashSet<(Key, Value)>) {
    let mut entries = Vec::new();
    let mut attempted = HashSet::new();
    for (invoke, completion) in pair_refs(history) {
        // Register ops belong to the other workload and its checker: a history that mixes
        // them is judged here on its log ops alone.
        if !matches!(invoke.f, F::Send | F::Poll | F::Drain | F::Assign) {
            continue;
        }
        let mut sends = Vec::new();
        let mut reads = Vec::new();
        match invoke.f {
            F::Send => {
                for mop in &invoke.value {
                    if let Mop::Send { key, value, .. } = mop {
                        attempted.insert((*key, *value));
                    }
                }
                // A completion may omit its sends (an error reply); the invocation then
                // says what was attempted, with unknown offsets.
                let listed = completion.filter(|c| has_sends(&c.value));
                let offsets_known = listed.is_some();
                for mop in &listed.unwrap_or(invoke).value {
                    if let Mop::Send { key, value, offset } = mop {
                        sends.push((*key, *value, offset.filter(|_| offsets_known)));
                    }
                }
            }
            F::Poll | F::Drain => {
                for mop in completion.map_or(&[][..], |c| &c.value[..]) {
                    if let Mop::Poll { key, reads: pairs } = mop {
                        reads.extend(pairs.iter().map(|&(offset, value)| (*key, offset, value)));
                    }
                }
            }
            // Other workloads' ops were skipped above.
            F::Assign | F::Write | F::Read | F::Receive | F::Ack | F::Offset => {}
        }
        entries.push(Entry {
            f: invoke.f,
            kind: completion.map_or(OpType::Info, |c| c.kind),
            process: invoke.process,
            invoke_index: invoke.index,
            complete_index: completion.map(|c| c.index),
            id: completion.map_or(invoke.index, |c| c.index),
            sends,
            reads,
            assign: &completion.unwrap_or(invoke).assign,
        });
    }
    (entries, attempted)
}

fn has_sends(mops: &[Mop]) -> bool {
    mops.iter().any(|m| matches!(m, Mop::Send { .. }))
}

/// How sure an outcome is that the op took effect.
fn certainty(kind: OpType) -> u8 {
    match kind {
        OpType::Ok => 2,
        OpType::Info | OpType::Invoke => 1,
        OpType::Fail => 0,
    }
}

fn is_read(f: F) -> bool {
    matches!(f, F::Poll | F::Drain)
}

/// Breaks of the op protocol. A history that breaks it was recorded by a broken runner, so
/// the checker will not call it a pass. Shared with the register checker.
pub(crate) fn malformed(history: &[Op]) -> Vec<String> {
    #[derive(Clone, Copy)]
    enum Process {
        Open(F),
        Idle,
        Crashed,
    }
    let mut processes: HashMap<u64, Process> = HashMap::new();
    // problem -> (count, first op index)
    let mut problems: BTreeMap<&'static str, (usize, u64)> = BTreeMap::new();
    let mut note = |problem: &'static str, index: u64| {
        problems.entry(problem).or_insert((0, index)).0 += 1;
    };
    for op in history {
        let mops_fit = op.value.iter().all(|mop| match mop {
            Mop::Send { .. } => op.f == F::Send,
            Mop::Poll { .. } => is_read(op.f) || op.f == F::Receive,
            Mop::Write { .. } => op.f == F::Write,
            Mop::Read { .. } => matches!(op.f, F::Read | F::Offset),
            Mop::Ack { .. } => op.f == F::Ack,
        });
        if !mops_fit {
            note("ops whose value holds mops of another f", op.index);
        }
        let state = processes.get(&op.process).copied();
        let next = match (op.kind, state) {
            (OpType::Invoke, Some(Process::Open(_))) => {
                note("invocations on a process with an op still open", op.index);
                Process::Open(op.f)
            }
            (OpType::Invoke, Some(Process::Crashed)) => {
                note("invocations on a process that already got info", op.index);
                Process::Open(op.f)
            }
            (OpType::Invoke, _) => Process::Open(op.f),
            (kind, Some(Process::Open(f))) => {
                if f != op.f {
                    note(
                        "completions whose f differs from their invocation",
                        op.index,
                    );
                }
                if kind == OpType::Info {
                    Process::Crashed
                } else {
                    Process::Idle
                }
            }
            (_, state) => {
                note("completions without an open invocation", op.index);
                state.unwrap_or(Process::Idle)
            }
        };
        processes.insert(op.process, next);
    }
    problems
        .into_iter()
        .map(|(problem, (count, first))| {
            format!("malformed history: {count} {problem} (first at index {first})")
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Derived indexes and version orders

struct Indexes {
    /// Every `(key, value)` some send invocation attempted.
    attempted: HashSet<(Key, Value)>,
    /// `(key, value)` -> the entry that sent it.
    writer: HashMap<(Key, Value), usize>,
    /// `(key, value)` -> the first ok poll or drain entry that read it.
    ok_reader: HashMap<(Key, Value), usize>,
    /// Per entry: a send that must have taken effect (Jepsen's `must-have-committed?`).
    committed: Vec<bool>,
}

impl Indexes {
    fn build(entries: &[Entry], attempted: HashSet<(Key, Value)>) -> Indexes {
        let mut writer = HashMap::new();
        let mut ok_reader = HashMap::new();
        for (at, e) in entries.iter().enumerate() {
            for &(key, value, _) in &e.sends {
                // A value sent more than once (a producer's retry, the dedup workload) is
                // written by its most certain attempt: ok over info over fail, so that a
                // failed first try does not make a read of the retried value look aborted.
                let w = writer.entry((key, value)).or_insert(at);
                if certainty(e.kind) > certainty(entries[*w].kind) {
                    *w = at;
                }
            }
            if is_read(e.f) && e.kind == OpType::Ok {
                for &(key, _, value) in &e.reads {
                    ok_reader.entry((key, value)).or_insert(at);
                }
            }
        }
        let committed = entries
            .iter()
            .map(|e| match (e.f, e.kind) {
                (F::Send, OpType::Ok) => true,
                (F::Send, OpType::Info) => e
                    .sends
                    .iter()
                    .any(|&(key, value, _)| ok_reader.contains_key(&(key, value))),
                _ => false,
            })
            .collect();
        Indexes {
            attempted,
            writer,
            ok_reader,
            committed,
        }
    }

    fn ok_read(&self, key: Key, value: Value) -> bool {
        self.ok_reader.contains_key(&(key, value))
    }
}

/// One value at one offset, with the first op (by index) that read it and that acked it.
struct SlotValue {
    value: Value,
    read_by: Option<u64>,
    acked_by: Option<u64>,
}

impl SlotValue {
    fn witness(&self) -> u64 {
        self.read_by.or(self.acked_by).unwrap_or_default()
    }
}

/// An occupied offset of a key's log; its position in `KeyLog::slots` is its dense index.
struct Slot {
    offset: u64,
    /// Sorted by value; more than one is `inconsistent-offsets`.
    values: Vec<SlotValue>,
}

struct KeyLog {
    /// Sorted by offset, no empty slots.
    slots: Vec<Slot>,
    /// value -> (first, last) dense index where it appears; they differ for duplicates.
    span: HashMap<Value, (usize, usize)>,
}

impl KeyLog {
    fn index_of_offset(&self, offset: u64) -> Option<usize> {
        self.slots.binary_search_by_key(&offset, |s| s.offset).ok()
    }

    /// Where a send sits in the order: at its acked offset when the log has it there,
    /// else where the value was first seen, else unknown.
    fn send_index(&self, value: Value, offset: Option<u64>) -> Option<usize> {
        let at_offset = offset
            .and_then(|o| self.index_of_offset(o))
            .filter(|&i| self.slots[i].values.iter().any(|sv| sv.value == value));
        at_offset.or_else(|| self.span.get(&value).map(|&(first, _)| first))
    }

    fn values_between(&self, from: usize, to: usize) -> Vec<Value> {
        self.slots[from.min(to)..to.max(from)]
            .iter()
            .flat_map(|s| s.values.iter().map(|sv| sv.value))
            .take(VALUES_PER_EXAMPLE_MAX)
            .collect()
    }
}

fn version_orders(entries: &[Entry], ix: &Indexes) -> BTreeMap<Key, KeyLog> {
    // (key, offset, value, acked, op): read points sort before acks of the same value, and
    // each group's first op is its lowest index.
    let mut points: Vec<(Key, u64, Value, bool, u64)> = Vec::new();
    for (at, e) in entries.iter().enumerate() {
        if is_read(e.f) {
            points.extend(e.reads.iter().map(|&(k, o, v)| (k, o, v, false, e.id)));
        }
        if e.f == F::Send && ix.committed[at] {
            for &(k, v, offset) in &e.sends {
                if let Some(o) = offset {
                    points.push((k, o, v, true, e.id));
                }
            }
        }
    }
    points.sort_unstable();

    let mut logs: BTreeMap<Key, KeyLog> = BTreeMap::new();
    for (key, offset, value, acked, op) in points {
        let log = logs.entry(key).or_insert_with(|| KeyLog {
            slots: Vec::new(),
            span: HashMap::new(),
        });
        if log.slots.last().is_none_or(|s| s.offset != offset) {
            debug_assert!(log.slots.last().is_none_or(|s| s.offset < offset));
            log.slots.push(Slot {
                offset,
                values: Vec::new(),
            });
        }
        let index = log.slots.len() - 1;
        let slot = &mut log.slots[index];
        if slot.values.last().is_none_or(|sv| sv.value != value) {
            slot.values.push(SlotValue {
                value,
                read_by: None,
                acked_by: None,
            });
            let span = log.span.entry(value).or_insert((index, index));
            span.1 = index;
        }
        let sv = slot.values.last_mut().expect("pushed above");
        let witness = if acked {
            &mut sv.acked_by
        } else {
            &mut sv.read_by
        };
        witness.get_or_insert(op);
    }
    logs
}

/// Distance in the version order from one value to the next one a reader or writer saw:
/// 1 is the next value, more is a skip, less is going backwards (0 a repeat). Unknown
/// positions count as 1, as in Jepsen: no evidence is no error.
fn delta(from: Option<usize>, to: Option<usize>) -> i64 {
    match (from, to) {
        (Some(a), Some(b)) => b as i64 - a as i64,
        _ => 1,
    }
}

// ---------------------------------------------------------------------------------------
// Analyses

struct Context<'a> {
    entries: &'a [Entry<'a>],
    ix: &'a Indexes,
    logs: &'a BTreeMap<Key, KeyLog>,
}

impl Context<'_> {
    fn entry_of(&self, at: Option<&usize>) -> Option<&Entry<'_>> {
        at.map(|&at| &self.entries[at])
    }
}

/// Anomalies found, by class: a count and the first few examples.
#[derive(Default)]
pub(crate) struct Findings {
    pub(crate) examples: BTreeMap<&'static str, Vec<Json>>,
    pub(crate) counts: BTreeMap<&'static str, usize>,
}

impl Findings {
    /// Counts one instance; builds its example only while the class has room for one.
    pub(crate) fn add(&mut self, class: &'static str, example: impl FnOnce() -> Json) {
        *self.counts.entry(class).or_default() += 1;
        let examples = self.examples.entry(class).or_default();
        if examples.len() < EXAMPLES_PER_CLASS_MAX {
            examples.push(example());
        }
    }
}

fn inconsistent_offsets(cx: &Context, found: &mut Findings) {
    for (&key, log) in cx.logs {
        for (index, slot) in log.slots.iter().enumerate() {
            if slot.values.len() > 1 {
                found.add(INCONSISTENT_OFFSETS, || {
                    json!({
                        "key": key,
                        "offset": slot.offset,
                        "index": index,
                        "values": slot.values.iter().map(|sv| sv.value).collect::<Vec<_>>(),
                        "ops": slot.values.iter().map(SlotValue::witness).collect::<Vec<_>>(),
                    })
                });
            }
        }
    }
}

/// `G1a` (ok reads of failed sends) and `unexpected` (reads of values never attempted),
/// each reported once per value, at its first offset.
fn bad_reads(cx: &Context, found: &mut Findings) {
    for (&key, log) in cx.logs {
        for (index, slot) in log.slots.iter().enumerate() {
            for sv in &slot.values {
                let (Some(reader), true) = (sv.read_by, log.span[&sv.value].0 == index) else {
                    continue;
                };
                if !cx.ix.attempted.contains(&(key, sv.value)) {
                    found.add(UNEXPECTED, || {
                        json!({"key": key, "value": sv.value, "offset": slot.offset, "reader": reader})
                    });
                    continue;
                }
                let ok_reader = cx.entry_of(cx.ix.ok_reader.get(&(key, sv.value)));
                let writer = cx.entry_of(cx.ix.writer.get(&(key, sv.value)));
                if let (Some(ok_reader), Some(writer)) = (ok_reader, writer)
                    && writer.kind == OpType::Fail
                {
                    found.add(G1A, || {
                        json!({
                            "key": key,
                            "value": sv.value,
                            "offset": slot.offset,
                            "reader": ok_reader.id,
                            "writer": writer.id,
                        })
                    });
                }
            }
        }
    }
}

/// Jepsen's rule: `bound` is the highest first-index of any value an ok op read. Every value
/// whose last appearance is at or below the bound was passed over by that reader, so if its
/// send committed and no ok op read it, it is lost. Using first and last appearances keeps
/// duplicates and inconsistent offsets from producing false losses.
fn lost_writes(cx: &Context, found: &mut Findings) {
    for (&key, log) in cx.logs {
        let mut bound: Option<(usize, Value)> = None;
        for slot in &log.slots {
            for sv in &slot.values {
                if cx.ix.ok_read(key, sv.value) {
                    let first = log.span[&sv.value].0;
                    if bound.is_none_or(|(b, _)| first > b) {
                        bound = Some((first, sv.value));
                    }
                }
            }
        }
        let Some((bound_index, bound_value)) = bound else {
            continue;
        };
        for (index, slot) in log.slots.iter().enumerate().take(bound_index + 1) {
            for sv in &slot.values {
                if log.span[&sv.value].1 != index || cx.ix.ok_read(key, sv.value) {
                    continue;
                }
                let Some(&writer) = cx.ix.writer.get(&(key, sv.value)) else {
                    continue;
                };
                if cx.ix.committed[writer] {
                    found.add(LOST_WRITE, || {
                        json!({
                            "key": key,
                            "value": sv.value,
                            "offset": slot.offset,
                            "index": index,
                            "writer": cx.entries[writer].id,
                            "max_read_index": bound_index,
                            "max_read": bound_value,
                        })
                    });
                }
            }
        }
    }
}

fn duplicates(cx: &Context, found: &mut Findings) {
    for (&key, log) in cx.logs {
        let mut offsets: HashMap<Value, Vec<u64>> = HashMap::new();
        let mut in_order: Vec<Value> = Vec::new();
        for (index, slot) in log.slots.iter().enumerate() {
            for sv in &slot.values {
                let (first, last) = log.span[&sv.value];
                if first == last {
                    continue;
                }
                if first == index {
                    in_order.push(sv.value);
                }
                offsets.entry(sv.value).or_default().push(slot.offset);
            }
        }
        for value in in_order {
            let offsets = &offsets[&value];
            found.add(DUPLICATE, || {
                json!({
                    "key": key,
                    "value": value,
                    "count": offsets.len(),
                    "offsets": &offsets[..offsets.len().min(VALUES_PER_EXAMPLE_MAX)],
                })
            });
        }
    }
}

/// For each key an op touched, in order: `(first item, last item)` positions in `items`.
fn first_last_by_key<T>(items: &[T], key_of: impl Fn(&T) -> Key) -> BTreeMap<Key, (usize, usize)> {
    let mut out: BTreeMap<Key, (usize, usize)> = BTreeMap::new();
    for (at, item) in items.iter().enumerate() {
        out.entry(key_of(item)).or_insert((at, at)).1 = at;
    }
    out
}

/// Consecutive same-key items of one op, as pairs of positions in `items`, key by key.
fn consecutive_by_key<T>(items: &[T], key_of: impl Fn(&T) -> Key) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&at| key_of(&items[at])); // stable: keeps each key's own order
    order
        .windows(2)
        .filter(|w| key_of(&items[w[0]]) == key_of(&items[w[1]]))
        .map(|w| (w[0], w[1]))
        .collect()
}

fn internal_polls(cx: &Context, found: &mut Findings) {
    for e in cx
        .entries
        .iter()
        .filter(|e| is_read(e.f) && e.kind == OpType::Ok)
    {
        for (a, b) in consecutive_by_key(&e.reads, |r| r.0) {
            let ((key, o1, v1), (_, o2, v2)) = (e.reads[a], e.reads[b]);
            let Some(log) = cx.logs.get(&key) else {
                continue;
            };
            let (i1, i2) = (log.index_of_offset(o1), log.index_of_offset(o2));
            let d = delta(i1, i2);
            let example = || {
                let mut example = json!({
                    "key": key,
                    "op": e.id,
                    "values": [v1, v2],
                    "offsets": [o1, o2],
                    "delta": d,
                });
                if let (Some(i1), Some(i2), true) = (i1, i2, d > 1) {
                    example["skipped"] = json!(log.values_between(i1 + 1, i2));
                }
                example
            };
            if d > 1 {
                found.add(INT_POLL_SKIP, example);
            } else if d < 1 {
                found.add(INT_NONMONOTONIC_POLL, example);
            }
        }
    }
}

fn internal_sends(cx: &Context, found: &mut Findings) {
    let sends = cx
        .entries
        .iter()
        .filter(|e| e.f == F::Send && matches!(e.kind, OpType::Ok | OpType::Info));
    for e in sends {
        for (a, b) in consecutive_by_key(&e.sends, |s| s.0) {
            let ((key, v1, o1), (_, v2, o2)) = (e.sends[a], e.sends[b]);
            let Some(log) = cx.logs.get(&key) else {
                continue;
            };
            let d = delta(log.send_index(v1, o1), log.send_index(v2, o2));
            let example = || json!({"key": key, "op": e.id, "values": [v1, v2], "offsets": [o1, o2], "delta": d});
            if d > 1 {
                found.add(INT_SEND_SKIP, example);
            } else if d < 1 {
                found.add(INT_NONMONOTONIC_SEND, example);
            }
        }
    }
}

/// What one process last read and sent per key, for the across-op checks.
#[derive(Default)]
struct ProcessView {
    /// key -> (value, offset, dense index, op id) of the last read of the last ok poll.
    last_read: HashMap<Key, (Value, u64, Option<usize>, u64)>,
    /// key -> (value, dense index, op id) of the last send of the last ok or info send.
    last_sent: HashMap<Key, (Value, Option<usize>, u64)>,
    draining: bool,
}

/// `poll-skip`, `nonmonotonic-poll` and `nonmonotonic-send`: each process's consecutive ops
/// on a key, compared last value to first value. Only ok ops move a consumer (an ok assign
/// keeps the positions of still-assigned keys); a process's first drain starts afresh,
/// because a drain reads from offset 0 by design. A send skip across ops is normal (other
/// producers interleave), so only backwards sends are errors.
fn process_orders(cx: &Context, found: &mut Findings) {
    let mut views: HashMap<u64, ProcessView> = HashMap::new();
    for e in cx.entries {
        let view = views.entry(e.process).or_default();
        match (e.f, e.kind) {
            (F::Assign, OpType::Ok) => view.last_read.retain(|k, _| e.assign.contains(k)),
            (F::Poll | F::Drain, OpType::Ok) => {
                if e.f == F::Drain && !view.draining {
                    view.last_read.clear();
                    view.draining = true;
                }
                for (key, (first, last)) in first_last_by_key(&e.reads, |r| r.0) {
                    let Some(log) = cx.logs.get(&key) else {
                        continue;
                    };
                    let (_, o2, v2) = e.reads[first];
                    let i2 = log.index_of_offset(o2);
                    if let Some(&(v1, o1, i1, op1)) = view.last_read.get(&key) {
                        let d = delta(i1, i2);
                        let example = || {
                            let mut example = json!({
                                "key": key,
                                "process": e.process,
                                "ops": [op1, e.id],
                                "values": [v1, v2],
                                "offsets": [o1, o2],
                                "delta": d,
                            });
                            if let (Some(i1), Some(i2), true) = (i1, i2, d > 1) {
                                example["skipped"] = json!(log.values_between(i1 + 1, i2));
                            }
                            example
                        };
                        if d > 1 {
                            found.add(POLL_SKIP, example);
                        } else if d < 1 {
                            found.add(NONMONOTONIC_POLL, example);
                        }
                    }
                    let (_, o, v) = e.reads[last];
                    view.last_read
                        .insert(key, (v, o, log.index_of_offset(o), e.id));
                }
            }
            (F::Send, OpType::Ok | OpType::Info) => {
                for (key, (first, last)) in first_last_by_key(&e.sends, |s| s.0) {
                    let log = cx.logs.get(&key);
                    let index = |v, o| log.and_then(|log| log.send_index(v, o));
                    let (_, v2, o2) = e.sends[first];
                    if let Some(&(v1, i1, op1)) = view.last_sent.get(&key) {
                        let d = delta(i1, index(v2, o2));
                        if d < 1 {
                            found.add(NONMONOTONIC_SEND, || {
                                json!({
                                    "key": key,
                                    "process": e.process,
                                    "ops": [op1, e.id],
                                    "values": [v1, v2],
                                    "delta": d,
                                })
                            });
                        }
                    }
                    let (_, v, o) = e.sends[last];
                    view.last_sent.insert(key, (v, index(v, o), e.id));
                }
            }
            _ => {}
        }
    }
}

fn unseen(cx: &Context, found: &mut Findings) {
    for e in cx
        .entries
        .iter()
        .filter(|e| e.f == F::Send && e.kind == OpType::Ok)
    {
        for &(key, value, offset) in &e.sends {
            if !cx.ix.ok_read(key, value) {
                found.add(
                    UNSEEN,
                    || json!({"key": key, "value": value, "offset": offset, "writer": e.id}),
                );
            }
        }
    }
}

/// Queue offsets are dense from 0, so every offset up to the highest one anybody saw must
/// hold a value once the final drain has read everything.
fn offset_gaps(cx: &Context, found: &mut Findings) {
    for (&key, log) in cx.logs {
        let mut offset_next = 0u64;
        for slot in &log.slots {
            if slot.offset > offset_next {
                let (from, to) = (offset_next, slot.offset - 1);
                found.add(
                    OFFSET_GAP,
                    || json!({"key": key, "from": from, "to": to, "missing": to - from + 1}),
                );
            }
            offset_next = slot.offset + 1;
        }
    }
}

fn ack_mismatches(cx: &Context, found: &mut Findings) {
    for (&key, log) in cx.logs {
        for slot in log.slots.iter().filter(|s| s.values.len() > 1) {
            for acked in &slot.values {
                let Some(writer) = acked.acked_by else {
                    continue;
                };
                let others = || {
                    slot.values
                        .iter()
                        .filter(move |sv| sv.value != acked.value && sv.read_by.is_some())
                };
                if others().next().is_some() {
                    found.add(ACK_MISMATCH, || {
                        json!({
                            "key": key,
                            "offset": slot.offset,
                            "value": acked.value,
                            "writer": writer,
                            "read_values": others().map(|sv| sv.value).collect::<Vec<_>>(),
                            "readers": others().map(|sv| sv.read_by).collect::<Vec<_>>(),
                        })
                    });
                }
            }
        }
    }
}

/// Raft orders a key's sends by commit, so a send acked before another was even invoked
/// must have the lower offset. Per key, sweep the sends in invocation order while folding
/// in, by completion order, every send that completed before the current invocation; the
/// highest such offset must stay below the current send's offset.
fn realtime_send_order(cx: &Context, found: &mut Findings) {
    struct Acked {
        value: Value,
        offset: u64,
        invoke_index: u64,
        complete_index: u64,
        id: u64,
    }
    // A retried value was on its way since its first attempt: the copy an ack names may be
    // that attempt's.
    let mut first_invoke: HashMap<(Key, Value), u64> = HashMap::new();
    for e in cx.entries.iter().filter(|e| e.f == F::Send) {
        for &(key, value, _) in &e.sends {
            let first = first_invoke.entry((key, value)).or_insert(e.invoke_index);
            *first = (*first).min(e.invoke_index);
        }
    }
    let mut by_key: BTreeMap<Key, Vec<Acked>> = BTreeMap::new();
    for e in cx
        .entries
        .iter()
        .filter(|e| e.f == F::Send && e.kind == OpType::Ok)
    {
        let Some(complete_index) = e.complete_index else {
            continue;
        };
        for &(key, value, offset) in &e.sends {
            if let Some(offset) = offset {
                by_key.entry(key).or_default().push(Acked {
                    value,
                    offset,
                    invoke_index: first_invoke
                        .get(&(key, value))
                        .copied()
                        .unwrap_or(e.invoke_index),
                    complete_index,
                    id: e.id,
                });
            }
        }
    }
    for (key, mut sends) in by_key {
        sends.sort_by_key(|s| s.invoke_index);
        let mut by_completion: Vec<usize> = (0..sends.len()).collect();
        by_completion.sort_by_key(|&at| sends[at].complete_index);
        let mut completed = by_completion.iter().peekable();
        let mut highest: Option<&Acked> = None;
        for later in &sends {
            while let Some(&&at) = completed.peek() {
                if sends[at].complete_index >= later.invoke_index {
                    break;
                }
                completed.next();
                if highest.is_none_or(|h| sends[at].offset > h.offset) {
                    highest = Some(&sends[at]);
                }
            }
            if let Some(earlier) = highest.filter(|h| h.offset >= later.offset) {
                found.add(REALTIME_SEND_ORDER, || {
                    json!({
                        "key": key,
                        "earlier": {
                            "value": earlier.value,
                            "offset": earlier.offset,
                            "op": earlier.id,
                            "completed_at": earlier.complete_index,
                        },
                        "later": {
                            "value": later.value,
                            "offset": later.offset,
                            "op": later.id,
                            "invoked_at": later.invoke_index,
                        },
                    })
                });
            }
        }
    }
}

fn stats(cx: &Context) -> LogStats {
    let mut s = LogStats {
        invocations: cx.entries.len(),
        values_read_distinct: cx.ix.ok_reader.len(),
        keys: cx.logs.len(),
        offset_max_by_key: cx
            .logs
            .iter()
            .filter_map(|(&k, log)| Some((k, log.slots.last()?.offset)))
            .collect(),
        values_attempted: cx.ix.attempted.len(),
        ..LogStats::default()
    };
    for e in cx.entries {
        match (e.f, e.kind) {
            (F::Send, OpType::Ok) => {
                s.send_ok += 1;
                s.values_acked += e.sends.len();
            }
            (F::Send, OpType::Info) => s.send_info += 1,
            (F::Send, _) => s.send_fail += 1,
            (F::Poll | F::Drain, OpType::Ok) => {
                s.poll_ok += 1;
                s.poll_ok_nonempty += usize::from(!e.reads.is_empty());
                s.drain_ok += usize::from(e.f == F::Drain);
                s.values_read += e.reads.len();
            }
            (F::Poll | F::Drain, OpType::Info) => s.poll_info += 1,
            (F::Poll | F::Drain, _) => s.poll_fail += 1,
            (F::Assign, OpType::Ok) => s.assign_ok += 1,
            (F::Assign, _) => {}
            // Never collected (see `collect`).
            (F::Write | F::Read | F::Receive | F::Ack | F::Offset, _) => {}
        }
    }
    s
}
