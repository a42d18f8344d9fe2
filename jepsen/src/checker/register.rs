//! The `register` workload checker: is each key's history of writes and reads linearizable
//! as one read/write register?
//!
//! Keys are independent registers, so each is checked on its own (linearizability is
//! compositional). Per key the search is Wing & Gong's, with Lowe's just-in-time
//! linearization and memoization:
//!
//! - a search state is the set of calls already linearized (a bitset) and the register's
//!   value after them (`None`: the initial value, nothing written);
//! - from a state, a call may be linearized next iff it was invoked before every pending
//!   call's return (no pending call must precede it); a write sets the value, a read must
//!   return the current one;
//! - the history is linearizable iff some path linearizes every call; states already seen
//!   are not expanded again.
//!
//! Three reductions keep it small, each exact (it changes no verdict):
//!
//! - a read that may go next and returns the current value is linearized at once, without
//!   trying the alternatives: a read changes nothing, so moving it to the front of any
//!   linearization from this state leaves a linearization;
//! - an `info` write (it may have taken effect any time after its invocation, or never)
//!   whose value nobody read is left out: values are unique, so no read depends on it, and
//!   a write with no read of its value can be dropped from any linearization;
//! - an `info` write whose value was read must have taken effect before the first read of
//!   it returned, so that is its return. Every call then has a finite return.
//!
//! `fail` writes certainly did not happen and are left out; failed or unknown reads say
//! nothing and are dropped. Ops are ordered by their history index (stamped in real-time
//! order); times in the report are `time_ns` in seconds since the start of the run.
//!
//! The search is exponential in the worst case, so it stops after
//! [`RegisterCheckOptions::max_states`] states per key with verdict `Unknown`, never `Pass`.
//!
//! A violation is narrowed to a witness: the shortest prefix of the key's history (cut at a
//! read's completion) that is already not linearizable, found by bisection (linearizable
//! histories are prefix-closed, so the first bad cut is well defined). Its last read is the
//! read no order can explain; the report names the value it returned, that value's write,
//! and the writes or reads it conflicts with, when a simple pattern (stale read, value never
//! written, value read before its write began) explains it.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::checker::Validity;
use crate::history::{F, Key, Mop, Op, OpType, Value, pair_refs};

/// Default cap on search states per key. A state costs tens of bytes plus the words of its
/// bitset window, so the cap keeps one key's search within a few hundred MB at worst.
pub const MAX_STATES_DEFAULT: usize = 1_000_000;

/// Witness kinds.
/// A read returned a value that an earlier-completed write (or read) had already replaced.
pub const STALE_READ: &str = "stale-read";
/// A read returned a value no write attempted, or one whose write definitely failed.
pub const NEVER_WRITTEN: &str = "never-written";
/// A read returned a value whose write was invoked only after the read completed.
pub const READ_BEFORE_WRITE: &str = "read-before-write";
/// No simple pattern: the ops up to the read admit no register order.
pub const NOT_LINEARIZABLE: &str = "not-linearizable";

/// Conflicting ops listed in one witness at most.
const CONFLICTS_MAX: usize = 4;

#[derive(Clone, Copy, Debug)]
pub struct RegisterCheckOptions {
    /// Vacuity guards: below these the run proves nothing and the verdict is at best
    /// `Unknown`.
    pub min_ok_writes: usize,
    pub min_ok_reads: usize,
    /// Search states per key (and per search of the witness bisection) before giving up.
    pub max_states: usize,
}

impl Default for RegisterCheckOptions {
    fn default() -> Self {
        Self {
            min_ok_writes: 1,
            min_ok_reads: 1,
            max_states: MAX_STATES_DEFAULT,
        }
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct RegisterReport {
    pub valid: Validity,
    pub keys: BTreeMap<Key, KeyReport>,
    /// Keys whose history is not linearizable.
    pub anomalous_keys: Vec<Key>,
    pub stats: RegisterStats,
    /// Why the verdict is not `Pass` although no violation was found (too little evidence,
    /// a search that gave up, a malformed history). Filled in whatever the verdict.
    pub unknown_reasons: Vec<String>,
}

#[derive(Serialize, Clone, Debug)]
pub struct KeyReport {
    pub valid: Validity,
    /// Calls the search had to linearize (after the reductions above).
    pub calls: usize,
    pub states_explored: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub witness: Option<Witness>,
}

/// The smallest evidence of a violation the checker found.
#[derive(Serialize, Clone, Debug)]
pub struct Witness {
    /// One of [`STALE_READ`], [`NEVER_WRITTEN`], [`READ_BEFORE_WRITE`],
    /// [`NOT_LINEARIZABLE`].
    pub kind: String,
    /// The read no order can explain: the last op of the shortest non-linearizable prefix.
    pub read: OpRef,
    /// What it returned (`null`: the initial value).
    pub value: Option<Value>,
    /// The write of that value, if any was attempted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write: Option<OpRef>,
    /// The ops it conflicts with: for a stale read, the newer writes that completed (or
    /// newer values that were read) before the read began.
    pub conflicts: Vec<OpRef>,
    /// False when the bisection gave up early: the read is then the end of some
    /// non-linearizable prefix, perhaps not the shortest.
    pub minimal: bool,
    pub explanation: String,
}

/// One op as a witness names it.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct OpRef {
    pub f: F,
    /// The outcome: `ok`, `fail` or `info` (`info` also when it never completed).
    #[serde(rename = "type")]
    pub kind: OpType,
    pub process: u64,
    /// Written, or read (`null`: the initial value).
    pub value: Option<Value>,
    pub invoke_index: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub complete_index: Option<u64>,
    pub invoke_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub complete_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RegisterStats {
    pub invocations: usize,
    pub write_ok: usize,
    pub write_info: usize,
    pub write_fail: usize,
    pub read_ok: usize,
    /// Ok reads that returned a written value (not the initial one).
    pub read_ok_value: usize,
    /// Read ops by outcome; `info` includes reads that never completed.
    pub read_info: usize,
    pub read_fail: usize,
    pub keys: usize,
}

pub fn check(history: &[Op], opts: &RegisterCheckOptions) -> RegisterReport {
    let mut unknown_reasons = crate::checker::log::malformed(history);
    let (by_key, stats, shape_problems) = collect(history);
    unknown_reasons.extend(shape_problems);

    let mut keys = BTreeMap::new();
    for (key, ops) in &by_key {
        let report = check_key(ops, opts.max_states);
        if report.valid == Validity::Unknown
            && let Some(reason) = &report.reason
        {
            unknown_reasons.push(format!("key {key}: {reason}"));
        }
        keys.insert(*key, report);
    }
    let anomalous_keys: Vec<Key> = keys
        .iter()
        .filter(|(_, r)| r.valid == Validity::Fail)
        .map(|(k, _)| *k)
        .collect();

    Validity::require(
        &mut unknown_reasons,
        "ok writes",
        stats.write_ok,
        "min_ok_writes",
        opts.min_ok_writes,
    );
    Validity::require(
        &mut unknown_reasons,
        "ok reads",
        stats.read_ok,
        "min_ok_reads",
        opts.min_ok_reads,
    );
    let valid = Validity::judge(!anomalous_keys.is_empty(), &unknown_reasons);
    RegisterReport {
        valid,
        keys,
        anomalous_keys,
        stats,
        unknown_reasons,
    }
}

// ---------------------------------------------------------------------------------------
// Collecting ops

/// One register op of one key, with its completion (`None`: never completed).
struct RegOp<'a> {
    write: bool,
    /// Written; for a read, what an ok completion returned.
    value: Option<Value>,
    /// `Ok`, `Fail` or `Info`; `Info` when the op never completed.
    kind: OpType,
    invoke: &'a Op,
    complete: Option<&'a Op>,
}

impl RegOp<'_> {
    fn op_ref(&self) -> OpRef {
        OpRef {
            f: self.invoke.f,
            kind: self.kind,
            process: self.invoke.process,
            value: self.value,
            invoke_index: self.invoke.index,
            complete_index: self.complete.map(|c| c.index),
            invoke_s: ns_to_s(self.invoke.time_ns),
            complete_s: self.complete.map(|c| ns_to_s(c.time_ns)),
            node: self.complete.and_then(|c| c.node.clone()),
        }
    }

    fn ret(&self) -> Option<u64> {
        self.complete.map(|c| c.index)
    }
}

type ByKey<'a> = BTreeMap<Key, Vec<RegOp<'a>>>;

fn collect(history: &[Op]) -> (ByKey<'_>, RegisterStats, Vec<String>) {
    let mut by_key: ByKey = BTreeMap::new();
    let mut stats = RegisterStats::default();
    let mut problems = Vec::new();
    for (invoke, complete) in pair_refs(history) {
        if !matches!(invoke.f, F::Write | F::Read) {
            continue;
        }
        stats.invocations += 1;
        let kind = complete.map_or(OpType::Info, |c| c.kind);
        let op = match (invoke.f, invoke.value.as_slice()) {
            (F::Write, [Mop::Write { key, value }]) => {
                match kind {
                    OpType::Ok => stats.write_ok += 1,
                    OpType::Fail => stats.write_fail += 1,
                    _ => stats.write_info += 1,
                }
                Some((*key, true, Some(*value)))
            }
            (F::Read, [Mop::Read { key, .. }]) => {
                let read = complete.and_then(|c| match c.value.as_slice() {
                    [Mop::Read { key: k, value }] if k == key => Some(*value),
                    _ => None,
                });
                match (kind, read) {
                    (OpType::Ok, Some(value)) => {
                        stats.read_ok += 1;
                        stats.read_ok_value += usize::from(value.is_some());
                        Some((*key, false, value))
                    }
                    (OpType::Ok, None) => {
                        problems.push(format!(
                            "malformed history: ok read at index {} does not say what it read",
                            complete.map_or(invoke.index, |c| c.index)
                        ));
                        None
                    }
                    (OpType::Fail, _) => {
                        stats.read_fail += 1;
                        None
                    }
                    _ => {
                        stats.read_info += 1;
                        None
                    }
                }
            }
            _ => {
                problems.push(format!(
                    "malformed history: {:?} op at index {} does not hold exactly one mop of its kind",
                    invoke.f, invoke.index
                ));
                None
            }
        };
        if let Some((key, write, value)) = op {
            // Reads that failed or whose outcome is unknown are dropped: they constrain
            // nothing. They are counted above.
            by_key.entry(key).or_default().push(RegOp {
                write,
                value,
                kind,
                invoke,
                complete,
            });
        }
    }
    stats.keys = by_key.len();
    (by_key, stats, problems)
}

// ---------------------------------------------------------------------------------------
// One key

fn check_key(ops: &[RegOp], max_states: usize) -> KeyReport {
    let mut seen = HashSet::new();
    for op in ops.iter().filter(|o| o.write) {
        if let Some(v) = op.value
            && !seen.insert(v)
        {
            // The reductions and the witnesses rely on unique values: a harness bug.
            return KeyReport {
                valid: Validity::Unknown,
                calls: 0,
                states_explored: 0,
                reason: Some(format!(
                    "value {v} written twice: the workload must write unique values"
                )),
                witness: None,
            };
        }
    }
    let calls = calls_up_to(ops, u64::MAX);
    let outcome = search(&calls, max_states);
    match outcome {
        Search::Linearizable { states } => KeyReport {
            valid: Validity::Pass,
            calls: calls.len(),
            states_explored: states,
            reason: None,
            witness: None,
        },
        Search::GaveUp { states } => KeyReport {
            valid: Validity::Unknown,
            calls: calls.len(),
            states_explored: states,
            reason: Some(format!(
                "search gave up after {states} states (max_states {max_states}) on {} calls",
                calls.len()
            )),
            witness: None,
        },
        Search::Violation { states, deepest } => {
            let witness = witness(ops, max_states);
            KeyReport {
                valid: Validity::Fail,
                calls: calls.len(),
                states_explored: states,
                reason: Some(format!(
                    "not linearizable: at most {deepest} of {} calls can be ordered",
                    calls.len()
                )),
                witness,
            }
        }
    }
}

/// One call for the search: history indices of invocation and return.
#[derive(Clone, Copy, Debug)]
struct Call {
    invoke: u64,
    ret: u64,
    write: bool,
    value: Option<Value>,
}

/// The calls of the key's history cut after history index `cut` (inclusive): ops invoked
/// after it are not in it yet, writes still open at it are pending, reads that had not
/// returned are dropped. `u64::MAX` is the whole history.
fn calls_up_to(ops: &[RegOp], cut: u64) -> Vec<Call> {
    // value -> earliest return of an ok read of it within the cut.
    let mut first_read: HashMap<Value, u64> = HashMap::new();
    for op in ops.iter().filter(|o| !o.write) {
        if let (Some(v), Some(ret)) = (op.value, op.ret())
            && ret <= cut
        {
            let e = first_read.entry(v).or_insert(ret);
            *e = (*e).min(ret);
        }
    }
    let mut calls = Vec::new();
    for op in ops {
        if op.invoke.index > cut {
            continue;
        }
        let ret = if op.write {
            match (op.kind, op.ret()) {
                (OpType::Fail, _) => continue,
                (OpType::Ok, Some(ret)) if ret <= cut => Some(ret),
                // Pending at the cut, or unknown: in effect from its invocation on, or never.
                _ => None,
            }
        } else {
            match op.ret() {
                Some(ret) if ret <= cut => Some(ret),
                _ => continue,
            }
        };
        let ret = match ret {
            Some(ret) => ret,
            // Pending writes: bounded by the first read of their value, or left out.
            None => match op.value.and_then(|v| first_read.get(&v)) {
                Some(&ret) => ret,
                None => continue,
            },
        };
        calls.push(Call {
            invoke: op.invoke.index,
            ret,
            write: op.write,
            value: op.value,
        });
    }
    calls.sort_by_key(|c| c.invoke);
    calls
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Search {
    Linearizable {
        states: usize,
    },
    /// No linearization: `deepest` is the most calls any path linearized.
    Violation {
        states: usize,
        deepest: usize,
    },
    GaveUp {
        states: usize,
    },
}

/// The set of linearized calls: every call below `base * 64` and the set bits of `tail`
/// (bit `i` of `tail` is call `base * 64 + i`). Normalised, so equal sets compare equal:
/// `tail` never starts with a full word nor ends with an empty one. It stays as small as the
/// window of calls that are concurrent with each other.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Linearized {
    base: usize,
    tail: Vec<u64>,
}

impl Linearized {
    fn empty() -> Self {
        Self {
            base: 0,
            tail: Vec::new(),
        }
    }

    fn contains(&self, call: usize) -> bool {
        let word = call / 64;
        if word < self.base {
            return true;
        }
        self.tail
            .get(word - self.base)
            .is_some_and(|w| w & (1u64 << (call % 64)) != 0)
    }

    fn with(&self, call: usize) -> Self {
        debug_assert!(!self.contains(call));
        let mut next = self.clone();
        let word = call / 64 - next.base;
        if next.tail.len() <= word {
            next.tail.resize(word + 1, 0);
        }
        next.tail[word] |= 1u64 << (call % 64);
        let full = next.tail.iter().take_while(|w| **w == u64::MAX).count();
        if full > 0 {
            next.tail.drain(..full);
            next.base += full;
        }
        while next.tail.last() == Some(&0) {
            next.tail.pop();
        }
        next
    }

    /// The first call not linearized.
    fn first_missing(&self) -> usize {
        let offset = self.tail.first().map_or(0, |w| w.trailing_ones() as usize);
        self.base * 64 + offset
    }
}

/// Searches for a linearization of `calls` (sorted by invocation) from the initial value.
fn search(calls: &[Call], max_states: usize) -> Search {
    debug_assert!(calls.windows(2).all(|w| w[0].invoke <= w[1].invoke));
    let n = calls.len();
    let start = (Linearized::empty(), None::<Value>, 0usize);
    let mut visited: HashSet<(Linearized, Option<Value>)> = HashSet::new();
    visited.insert((start.0.clone(), start.1));
    let mut stack = vec![start];
    let mut deepest = 0;
    let mut candidates = Vec::new();
    while let Some((done, value, count)) = stack.pop() {
        deepest = deepest.max(count);
        let first = done.first_missing();
        if first >= n {
            return Search::Linearizable {
                states: visited.len(),
            };
        }
        // The earliest return among pending calls: only calls invoked before it may go next.
        // Calls are sorted by invocation, so the scan stops at the first invoked after the
        // running minimum (its return, and every later call's, is later still).
        let mut ret_min = u64::MAX;
        for (i, c) in calls.iter().enumerate().skip(first) {
            if c.invoke > ret_min {
                break;
            }
            if !done.contains(i) {
                ret_min = ret_min.min(c.ret);
            }
        }
        candidates.clear();
        candidates.extend(
            calls
                .iter()
                .enumerate()
                .skip(first)
                .take_while(|(_, c)| c.invoke < ret_min)
                .filter(|(i, _)| !done.contains(*i))
                .map(|(i, _)| i),
        );
        // A read that may go next and returns the current value goes next, alone (exact:
        // see the module doc).
        let read_now = candidates
            .iter()
            .copied()
            .find(|&i| !calls[i].write && calls[i].value == value);
        let children: Vec<(usize, Option<Value>)> = match read_now {
            Some(i) => vec![(i, value)],
            // Later-invoked writes pushed first, so the earliest is tried first.
            None => candidates
                .iter()
                .rev()
                .copied()
                .filter(|&i| calls[i].write)
                .map(|i| (i, calls[i].value))
                .collect(),
        };
        for (i, next_value) in children {
            let next = done.with(i);
            if visited.insert((next.clone(), next_value)) {
                if visited.len() > max_states {
                    return Search::GaveUp {
                        states: visited.len(),
                    };
                }
                stack.push((next, next_value, count + 1));
            }
        }
    }
    Search::Violation {
        states: visited.len(),
        deepest,
    }
}

// ---------------------------------------------------------------------------------------
// Witnesses

/// Bisects the cuts at read completions for the shortest non-linearizable prefix, and
/// explains its last read.
fn witness(ops: &[RegOp], max_states: usize) -> Option<Witness> {
    let mut cuts: Vec<u64> = ops
        .iter()
        .filter(|o| !o.write)
        .filter_map(|o| o.ret())
        .collect();
    cuts.sort_unstable();
    let fails = |cut: u64| search(&calls_up_to(ops, cut), max_states);
    // Only a read's completion can make a prefix non-linearizable (a write that completes
    // can always be ordered last), so the last cut fails when the whole history does.
    let (mut lo, mut hi) = (0, cuts.len().checked_sub(1)?);
    if !matches!(fails(cuts[hi]), Search::Violation { .. }) {
        return None;
    }
    let mut minimal = true;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match fails(cuts[mid]) {
            Search::Violation { .. } => hi = mid,
            Search::Linearizable { .. } => lo = mid + 1,
            Search::GaveUp { .. } => {
                minimal = false;
                break;
            }
        }
    }
    let cut = cuts[hi];
    let read = ops.iter().find(|o| !o.write && o.ret() == Some(cut))?;
    Some(explain(ops, read, cut, minimal))
}

/// Names the simplest pattern that makes `read` impossible given the ops up to `cut`.
fn explain(ops: &[RegOp], read: &RegOp, cut: u64, minimal: bool) -> Witness {
    let read_invoke = read.invoke.index;
    let read_ret = cut;
    let write_of = |v: Value| ops.iter().find(|o| o.write && o.value == Some(v));
    // When a write certainly took effect by: its return, or for an unknown write the first
    // return of a read of its value (before the cut).
    let effective_by = |w: &RegOp| -> Option<u64> {
        if w.kind == OpType::Ok {
            return w.ret();
        }
        ops.iter()
            .filter(|o| !o.write && o.value == w.value)
            .filter_map(|o| o.ret())
            .filter(|&r| r <= cut)
            .min()
    };
    let write = read.value.and_then(write_of);
    let mut witness = Witness {
        kind: NOT_LINEARIZABLE.into(),
        read: read.op_ref(),
        value: read.value,
        write: write.map(RegOp::op_ref),
        conflicts: Vec::new(),
        minimal,
        explanation: String::new(),
    };
    let shown = |v: Option<Value>| v.map_or("the initial value (none)".into(), |v| v.to_string());

    match (read.value, write) {
        (Some(v), None) => {
            witness.kind = NEVER_WRITTEN.into();
            witness.explanation = format!("the read returned {v}, which no write attempted");
            return witness;
        }
        (Some(v), Some(w)) if w.kind == OpType::Fail => {
            witness.kind = NEVER_WRITTEN.into();
            witness.explanation =
                format!("the read returned {v}, whose write definitely failed (never sent)");
            return witness;
        }
        (Some(v), Some(w)) if w.invoke.index > read_ret => {
            witness.kind = READ_BEFORE_WRITE.into();
            witness.explanation =
                format!("the read returned {v} before the write of {v} was invoked");
            return witness;
        }
        _ => {}
    }

    // A stale read: something newer than the value read had certainly taken effect before
    // the read began. "Newer" means invoked after the value read had taken effect (for the
    // initial value: anything written).
    let newer_than = match write {
        Some(w) => effective_by(w),
        None => Some(0),
    };
    if let Some(after) = newer_than {
        let mut conflicts: Vec<&RegOp> = ops
            .iter()
            .filter(|o| o.write && o.kind == OpType::Ok)
            .filter(|o| read.value.is_none() || o.invoke.index > after)
            .filter(|o| o.ret().is_some_and(|r| r < read_invoke))
            .collect();
        // Newer values other readers returned before this read began.
        for r in ops.iter().filter(|o| !o.write && o.kind == OpType::Ok) {
            let Some(v) = r.value else { continue };
            if Some(v) == read.value || r.ret().is_none_or(|ret| ret >= read_invoke) {
                continue;
            }
            if let Some(w) = write_of(v)
                && (read.value.is_none() || w.invoke.index > after)
            {
                conflicts.push(r);
            }
        }
        if !conflicts.is_empty() {
            // The most recent conflicts are the most telling: closest to the read.
            conflicts.sort_by_key(|o| std::cmp::Reverse(o.ret()));
            conflicts.truncate(CONFLICTS_MAX);
            let newest = conflicts[0];
            witness.kind = STALE_READ.into();
            let newer = if newest.write {
                format!("a write of {} had completed", shown(newest.value))
            } else {
                format!("a read had returned {}", shown(newest.value))
            };
            witness.explanation = format!(
                "the read (invoked at {:.3} s) returned {}, but {newer} at {:.3} s, before the read began",
                ns_to_s(read.invoke.time_ns),
                shown(read.value),
                newest.complete.map_or(0.0, |c| ns_to_s(c.time_ns)),
            );
            witness.conflicts = conflicts.into_iter().map(RegOp::op_ref).collect();
            return witness;
        }
    }

    // No simple pattern: list the writes that overlap the read, for a reader to start from.
    let mut overlapping: Vec<&RegOp> = ops
        .iter()
        .filter(|o| o.write && o.kind != OpType::Fail && o.value != read.value)
        .filter(|o| o.invoke.index < read_ret && o.ret().is_none_or(|r| r > read_invoke))
        .collect();
    overlapping.truncate(CONFLICTS_MAX);
    witness.conflicts = overlapping.into_iter().map(RegOp::op_ref).collect();
    witness.explanation = format!(
        "no order of this key's ops up to the read's completion makes it return {}",
        shown(read.value)
    );
    witness
}

fn ns_to_s(ns: u64) -> f64 {
    ns as f64 / 1e9
}
