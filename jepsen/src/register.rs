//! The `register` workload: one register per key, written and read through the public
//! `apache.rocketmq.v2` API on random nodes, for the linearizability checker
//! ([`crate::checker::register`]).
//!
//! A key is (consumer group [`GROUP`], topic `jepsen-register-<key>` with one queue); the
//! register is the group's committed offset of that queue. Writers set it with
//! `UpdateOffset` (a follower forwards it to the leader, which commits it through Raft);
//! readers read it with `GetOffset`, whose `OFFSET_NOT_FOUND` before any write is the
//! register's initial value. Every write on a key has a unique value, `process * 10^6 +
//! counter`, so a read names the write it saw.
//!
//! Conventions are the log workload's: a write that errs or times out after the request may
//! have left is unknown (`info`) and ends its process; only a write whose connection could
//! not be made is a definite failure. A read that errs changed nothing: `fail`.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use rocketraft_proto::rocketmq::v2 as pb;
use tokio::sync::watch;

use crate::history::{F, HistoryWriter, Key, Mop, OpType, Value};
use crate::workload::{Clients, Ids, SendError, Step, paced, resource, worker_rng};

/// The consumer group whose committed offsets are the registers.
pub const GROUP: &str = "jepsen-register";

/// Values per process: a process that used them all continues under a fresh id, so values
/// stay unique.
const VALUES_PER_PROCESS: u64 = 1_000_000;

pub fn topic(key: Key) -> String {
    format!("jepsen-register-{key}")
}

#[derive(Debug, Clone)]
pub struct RegisterOptions {
    pub keys: u32,
    pub writers: usize,
    pub readers: usize,
    /// Operations per second, over all clients.
    pub rate: f64,
    /// A client gives up on an operation after this long (a write is then unknown).
    pub op_timeout: Duration,
}

impl Default for RegisterOptions {
    fn default() -> Self {
        Self {
            keys: 4,
            writers: 4,
            readers: 4,
            rate: 100.0,
            op_timeout: Duration::from_secs(3),
        }
    }
}

fn queue(key: Key) -> pb::MessageQueue {
    pb::MessageQueue {
        topic: Some(resource(&topic(key))),
        id: 0,
        ..Default::default()
    }
}

impl Clients {
    /// Commits `value` as the register `key` through node `node`.
    pub async fn update_offset(
        &self,
        node: usize,
        key: Key,
        value: Value,
    ) -> Result<(), SendError> {
        let offset = i64::try_from(value)
            .map_err(|_| SendError::NotSent(format!("value {value} does not fit an offset")))?;
        let resp = self
            .client(node)
            .update_offset(self.request(pb::UpdateOffsetRequest {
                group: Some(resource(GROUP)),
                message_queue: Some(queue(key)),
                offset,
            }))
            .await
            .map_err(SendError::from_status)?
            .into_inner();
        match resp.status {
            Some(s) if s.code == pb::Code::Ok as i32 => Ok(()),
            other => Err(SendError::refused(other.as_ref())),
        }
    }

    /// The register `key` as node `node` answers it: `None` when no offset was ever
    /// committed (the initial value).
    pub async fn get_offset(&self, node: usize, key: Key) -> Result<Option<Value>, String> {
        self.consume_offset(node, GROUP, &topic(key)).await
    }
}

/// Writes `value` to `key` through node `node` as one history op of `process`; returns the
/// op's outcome (ok, fail or info).
pub async fn recorded_write(
    clients: &Clients,
    history: &HistoryWriter,
    process: u64,
    node: usize,
    key: Key,
    value: Value,
) -> OpType {
    let mops = vec![Mop::Write { key, value }];
    let inv = history.invoke(process, F::Write, mops.clone(), Vec::new());
    let result = clients.update_offset(node, key, value).await;
    let addr = Some(clients.addrs[node].clone());
    match result {
        Ok(()) => {
            history.complete(&inv, OpType::Ok, mops, addr, None);
            OpType::Ok
        }
        Err(e) => {
            let (kind, error) = e.outcome();
            history.complete(&inv, kind, mops, addr, Some(error));
            kind
        }
    }
}

/// Reads `key` through node `node` as one history op of `process`; returns the op's
/// outcome (ok or fail).
pub async fn recorded_read(
    clients: &Clients,
    history: &HistoryWriter,
    process: u64,
    node: usize,
    key: Key,
) -> OpType {
    let inv = history.invoke(
        process,
        F::Read,
        vec![Mop::Read { key, value: None }],
        Vec::new(),
    );
    let result = clients.get_offset(node, key).await;
    let addr = Some(clients.addrs[node].clone());
    match result {
        Ok(value) => {
            let done = vec![Mop::Read { key, value }];
            history.complete(&inv, OpType::Ok, done, addr, None);
            OpType::Ok
        }
        // A read that failed changed nothing: a definite failure, as for polls.
        Err(e) => {
            history.complete(&inv, OpType::Fail, inv.value.clone(), addr, Some(e));
            OpType::Fail
        }
    }
}

/// A process and the values it has used.
struct Process {
    id: u64,
    used: u64,
}

impl Process {
    fn new(ids: &Ids) -> Self {
        Self {
            id: ids.process(),
            used: 0,
        }
    }

    /// The next unique value; `None` once this process has used all of its values.
    fn value(&mut self) -> Option<Value> {
        if self.used >= VALUES_PER_PROCESS {
            return None;
        }
        let value = self.id.checked_mul(VALUES_PER_PROCESS)? + self.used;
        self.used += 1;
        // Offsets are i64 on the wire: a value beyond that cannot be written.
        i64::try_from(value).is_ok().then_some(value)
    }
}

/// Runs writers and readers until `stop` turns true. Every operation goes to the history.
pub async fn run(
    opts: &RegisterOptions,
    clients: &Clients,
    history: &Arc<HistoryWriter>,
    ids: &Arc<Ids>,
    seed: u64,
    stop: watch::Receiver<bool>,
) {
    let count = (opts.writers + opts.readers).max(1);
    let workers = (0..count)
        .map(|w| Worker {
            opts: opts.clone(),
            clients: clients.clone(),
            history: history.clone(),
            ids: ids.clone(),
            rng: worker_rng(seed, w),
            writer: w < opts.writers,
            process: Process::new(ids),
        })
        .collect();
    paced(workers, opts.rate, stop).await;
}

/// A writer or a reader of the registers.
struct Worker {
    opts: RegisterOptions,
    clients: Clients,
    history: Arc<HistoryWriter>,
    ids: Arc<Ids>,
    rng: StdRng,
    writer: bool,
    process: Process,
}

impl Step for Worker {
    fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    async fn step(&mut self) {
        let key = self.rng.random_range(0..self.opts.keys.max(1));
        let node = self.rng.random_range(0..self.clients.addrs.len());
        let (clients, history) = (&self.clients, &self.history);
        if !self.writer {
            recorded_read(clients, history, self.process.id, node, key).await;
            return;
        }
        let Some(value) = self.process.value() else {
            self.process = Process::new(&self.ids);
            return;
        };
        let outcome = recorded_write(clients, history, self.process.id, node, key, value).await;
        // An unknown outcome ends the process (Jepsen semantics).
        if outcome == OpType::Info {
            self.process = Process::new(&self.ids);
        }
    }
}

/// After healing, every key must take a write again within `within`. Returns the keys
/// that did not.
pub async fn liveness(
    opts: &RegisterOptions,
    clients: &Clients,
    history: &HistoryWriter,
    ids: &Ids,
    within: Duration,
) -> Vec<Key> {
    let deadline = std::time::Instant::now() + within;
    crate::workload::dead_keys(
        opts.keys,
        clients.addrs.len(),
        deadline,
        |node, key| async move {
            let mut process = Process::new(ids);
            let value = process.value()?;
            Some(recorded_write(clients, history, process.id, node, key, value).await)
        },
    )
    .await
}

/// Final reads, after every member applied the leader's commit index: each key read once
/// through each of `nodes` (the members' client slots; an empty slot would never answer),
/// retried for a while on errors. Returns the keys some node could not answer for.
pub async fn final_reads(
    opts: &RegisterOptions,
    clients: &Clients,
    history: &HistoryWriter,
    ids: &Ids,
    nodes: &[usize],
    within: Duration,
) -> Vec<Key> {
    let deadline = tokio::time::Instant::now() + within;
    let mut unfinished = Vec::new();
    for key in 0..opts.keys {
        let process = ids.process();
        let mut all = true;
        for &node in nodes {
            let mut ok = false;
            while !ok && tokio::time::Instant::now() < deadline {
                ok = recorded_read(clients, history, process, node, key).await == OpType::Ok;
                if !ok {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            all &= ok;
        }
        if !all {
            unfinished.push(key);
        }
    }
    unfinished
}
