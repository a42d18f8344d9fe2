//! The history of a run: one JSON object per line, with Jepsen's op semantics.
//!
//! Every client action is two ops with the same `process` and `f`: an `invoke`, then exactly
//! one completion. `ok` means it happened, `fail` means it certainly did not, `info` means
//! we cannot tell (a timeout, a reset connection). A process that got `info` never issues
//! another op: the runner continues with a fresh process id, so a pending op never blocks
//! the analysis of later ones.
//!
//! `drain` ops are the final reads (fresh processes, each key read from offset 0 to the end);
//! the checker treats them like `poll`s.
//!
//! The `register` workload adds `write` and `read` ops on one register per key (a consumer
//! group's committed offset): a write's value is unique per key; a read's value is `null`
//! in its invocation and in an `ok` completion the value read, `null` for the initial "no
//! offset committed yet". Histories of the log workload never contain them, so older
//! histories read as before.
//!
//! The `group` workload adds `receive` ops (a `poll` mop: what a pop consumer got), `ack` ops
//! (one `ack` mop per message acknowledged; an `ok` completion lists only those the broker
//! accepted) and `offset` ops (a `read` mop: the group's offset on a key).
//!
//! The JSON shape of one line:
//! ```json
//! {"index":7,"time_ns":1520000,"process":3,"type":"ok","f":"send",
//!  "value":[{"type":"send","key":0,"value":42,"offset":17}],"node":"n2"}
//! {"index":9,"time_ns":1710000,"process":4,"type":"ok","f":"poll",
//!  "value":[{"type":"poll","key":0,"reads":[[16,41],[17,42]]}]}
//! {"index":12,"time_ns":2210000,"process":5,"type":"ok","f":"write",
//!  "value":[{"type":"write","key":1,"value":5000003}],"node":"n1"}
//! {"index":14,"time_ns":2290000,"process":6,"type":"ok","f":"read",
//!  "value":[{"type":"read","key":1,"value":5000003}],"node":"n3"}
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use anyhow::{Context, anyhow};
use serde::{Deserialize, Serialize};

/// The index of one (topic, queue) in the run.
pub type Key = u32;
/// A message body's identity: unique across the whole run, so a value names one send.
pub type Value = u64;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum F {
    Send,
    Poll,
    /// Replaces the process's key set with `Op::assign`.
    Assign,
    /// A final read; checked like a poll.
    Drain,
    /// A register write (`Mop::Write`).
    Write,
    /// A register read (`Mop::Read`).
    Read,
    /// A pop consumer's receive (`Mop::Poll`; the group workload).
    Receive,
    /// A pop consumer's ack of what it received (`Mop::Ack`).
    Ack,
    /// A read of the consumer group's offset on a key (`Mop::Read`).
    Offset,
}

/// One micro-operation inside an op's `value`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Mop {
    /// In an invocation `offset` is `None`; in an `ok` completion it is the acked queue offset.
    Send {
        key: Key,
        value: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    /// `(offset, value)` pairs in the order the consumer returned them; empty in an invocation.
    Poll {
        key: Key,
        #[serde(default)]
        reads: Vec<(u64, Value)>,
    },
    /// Sets the register `key` to `value`, unique among the key's writes.
    Write { key: Key, value: Value },
    /// Reads the register `key`: `None` in an invocation; in an `ok` completion the value
    /// read, `None` meaning the initial value (nothing written yet).
    Read {
        key: Key,
        #[serde(default)]
        value: Option<Value>,
    },
    /// Acknowledges the delivery of `value`, received at `offset` of `key`.
    Ack { key: Key, offset: u64, value: Value },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Position in the history, from one counter shared by all processes.
    pub index: u64,
    /// Since the start of the run.
    pub time_ns: u64,
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: OpType,
    pub f: F,
    pub value: Vec<Mop>,
    /// For `f = assign`: the process's new key set (copied onto the completion).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assign: Vec<Key>,
    /// The node that served the op, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Records ops as they happen: stamps `index` and `time_ns`, appends one JSON line per op to
/// the history file and keeps a copy in memory for the checker. Shared by all client tasks
/// behind an `Arc`; the lock is held only to stamp, serialise and buffer one line.
pub struct HistoryWriter {
    start: Instant,
    state: Mutex<WriterState>,
}

struct WriterState {
    out: BufWriter<File>,
    ops: Vec<Op>,
    index_next: u64,
    error: Option<io::Error>,
}

impl HistoryWriter {
    /// Creates (or truncates) the history file at `path`.
    pub fn create(path: impl AsRef<Path>) -> io::Result<HistoryWriter> {
        let file = File::create(path)?;
        Ok(HistoryWriter {
            start: Instant::now(),
            state: Mutex::new(WriterState {
                out: BufWriter::new(file),
                ops: Vec::new(),
                index_next: 0,
                error: None,
            }),
        })
    }

    /// Records the start of an op. `assign` is the new key set for `F::Assign`, empty otherwise.
    pub fn invoke(&self, process: u64, f: F, value: Vec<Mop>, assign: Vec<Key>) -> Op {
        self.record(|index, time_ns| Op {
            index,
            time_ns,
            process,
            kind: OpType::Invoke,
            f,
            value,
            assign,
            node: None,
            error: None,
        })
    }

    /// Records the completion of `invocation`; process, f and assign are taken from it.
    pub fn complete(
        &self,
        invocation: &Op,
        kind: OpType,
        value: Vec<Mop>,
        node: Option<String>,
        error: Option<String>,
    ) -> Op {
        assert_eq!(
            invocation.kind,
            OpType::Invoke,
            "complete() takes the invocation"
        );
        assert_ne!(kind, OpType::Invoke, "a completion is ok, fail or info");
        self.record(|index, time_ns| Op {
            index,
            time_ns,
            process: invocation.process,
            kind,
            f: invocation.f,
            value,
            assign: invocation.assign.clone(),
            node,
            error,
        })
    }

    /// Stamps under the lock so that `index` order and `time_ns` order agree, which the
    /// checker's real-time analysis relies on.
    fn record(&self, build: impl FnOnce(u64, u64) -> Op) -> Op {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let time_ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let op = build(state.index_next, time_ns);
        state.index_next += 1;
        // Kept in memory even if the write fails, so the in-memory history stays complete;
        // the first write error is reported by `flush`, so client tasks never stop on it.
        state.ops.push(op.clone());
        if state.error.is_none()
            && let Err(e) = serde_json::to_writer(&mut state.out, &op)
                .map_err(io::Error::from)
                .and_then(|()| state.out.write_all(b"\n"))
        {
            state.error = Some(e);
        }
        op
    }

    /// Flushes the file; fails if any write so far failed.
    pub fn flush(&self) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = state.error.take() {
            return Err(e);
        }
        state.out.flush()
    }

    /// When the history's clock started: other logs of a run count time from here.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Every op recorded so far, in index order.
    pub fn ops(&self) -> Vec<Op> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.ops.clone()
    }
}

/// Reads a history file written by [`HistoryWriter`]. Blank lines are skipped; any other line
/// that is not an op is an error naming the file and its 1-based line number.
pub fn read_history(path: impl AsRef<Path>) -> anyhow::Result<Vec<Op>> {
    let path = path.as_ref();
    let file = File::open(path).with_context(|| format!("open history {}", path.display()))?;
    let mut ops = Vec::new();
    for (line_index, line) in BufReader::new(file).lines().enumerate() {
        let line_number = line_index + 1;
        let line =
            line.with_context(|| format!("history {} line {line_number}: read", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let op: Op = serde_json::from_str(&line).map_err(|e| {
            anyhow!(
                "history {} line {line_number}: not an op: {e}",
                path.display()
            )
        })?;
        ops.push(op);
    }
    Ok(ops)
}

/// Each invocation with its completion, matched by process, in invocation order. `None` when
/// the op never completed (the run ended first). A completion with no open invocation on its
/// process is dropped; the checker reports such histories as malformed.
pub fn pairs(history: &[Op]) -> Vec<(Op, Option<Op>)> {
    pair_refs(history)
        .into_iter()
        .map(|(invoke, completion)| (invoke.clone(), completion.cloned()))
        .collect()
}

/// [`pairs`] without copying the ops.
pub fn pair_refs(history: &[Op]) -> Vec<(&Op, Option<&Op>)> {
    let mut out: Vec<(&Op, Option<&Op>)> = Vec::new();
    let mut open: HashMap<u64, usize> = HashMap::new();
    for op in history {
        if op.kind == OpType::Invoke {
            open.insert(op.process, out.len());
            out.push((op, None));
        } else if let Some(at) = open.remove(&op.process) {
            out[at].1 = Some(op);
        }
    }
    out
}
