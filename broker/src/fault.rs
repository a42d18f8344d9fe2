//! The broker's side of the test-only broken build (feature `fault-injection`; see
//! `rocketraft_raft_store::fault`): acking sends before they commit. The read barrier's
//! fault lives in [`crate::proposer::Proposer::read_barrier`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use rocketraft_raft_store::fault::{self, Fault};
use rocketraft_raft_store::{Command, CommandResult};

use crate::service::{Outcome, ServiceContext, propose};

/// How long the broken leader waits for a commit before it acks anyway: longer than a
/// commit takes on a healthy group, so only faults expose the lie.
const PATIENCE: Duration = Duration::from_millis(100);

/// Proposes a send; with [`Fault::AckBeforeCommit`], a leader whose append has not
/// committed within [`PATIENCE`] answers with the offsets it expects the append to get,
/// and leaves the proposal running.
pub async fn propose_send(
    ctx: &ServiceContext,
    cmd: Command,
) -> Result<Outcome<CommandResult>, tonic::Status> {
    let Command::Append {
        topic,
        queue_id,
        store_timestamp_ms,
        messages,
    } = &cmd
    else {
        return propose(ctx, cmd).await;
    };
    if !fault::is(Fault::AckBeforeCommit) || !ctx.proposer.believes_it_leads() {
        return propose(ctx, cmd).await;
    }
    // Offsets handed out but not applied yet, per queue: the prediction starts past them.
    static AHEAD: Mutex<BTreeMap<(String, u32), u64>> = Mutex::new(BTreeMap::new());
    let key = (topic.clone(), *queue_id);
    let count = messages.len() as u64;
    let first = {
        let mut ahead = AHEAD.lock().unwrap_or_else(|e| e.into_inner());
        let n = ahead.entry(key.clone()).or_default();
        let first = ctx.reader.queue_state(topic, *queue_id).offset_next + *n;
        *n += count;
        first
    };
    let (at_ms, queue_id) = (*store_timestamp_ms, *queue_id);
    let proposer = ctx.proposer.clone();
    let write = tokio::spawn(async move {
        let result = proposer.propose(cmd).await;
        let mut ahead = AHEAD.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = ahead.get_mut(&key) {
            *n = n.saturating_sub(count);
        }
        result
    });
    match tokio::time::timeout(PATIENCE, write).await {
        Ok(Ok(Ok(crate::proposer::Proposed::Applied { result, .. }))) => Ok(Outcome::Done(result)),
        Ok(Ok(Ok(crate::proposer::Proposed::Forward(addr)))) => Ok(Outcome::Forward(addr)),
        Ok(Ok(Err(status))) => Err(status),
        Ok(Err(join)) => Err(tonic::Status::internal(join.to_string())),
        Err(_) => {
            tracing::warn!(
                first,
                count,
                "fault injection: acking a send that has not committed"
            );
            Ok(Outcome::Done(CommandResult::Appended {
                first_offset: first,
                count: count as u32,
                store_timestamp_ms: at_ms,
                offsets: (first..first + count).map(|o| (queue_id, o)).collect(),
            }))
        }
    }
}
