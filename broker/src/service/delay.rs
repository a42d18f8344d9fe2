//! Delivering DELAY messages: the leader appends scheduled messages to their queues when
//! they fall due.
//!
//! The timer table is replicated state, so a new leader picks up exactly where the old one
//! stopped. The loop sleeps until the earliest due time and wakes early whenever something
//! is applied (a new, possibly earlier, scheduled message, or a leadership change).

use std::sync::Arc;
use std::time::Duration;

use rocketraft_raft_store::{Command, CommandResult};

use super::{Outcome, ServiceContext, propose};
use crate::admin::now_ms;

/// Messages one Deliver command moves at most, so an entry stays small.
const DELIVER_BATCH_MAX: u32 = 1024;
/// The longest the loop sleeps without looking again.
const IDLE_WAKE: Duration = Duration::from_secs(1);

pub async fn run_timers(ctx: Arc<ServiceContext>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut applied = ctx.reader.subscribe_applied();
    loop {
        applied.borrow_and_update();
        let mut sleep = IDLE_WAKE;
        if ctx.is_leader() {
            match ctx.reader.next_timer_due_ms() {
                Ok(Some(due)) => {
                    let now = now_ms();
                    if due <= now {
                        let cmd = Command::Deliver {
                            now_ms: now,
                            max: DELIVER_BATCH_MAX,
                        };
                        match propose(&ctx, cmd).await {
                            Ok(Outcome::Done(CommandResult::Delivered { .. })) => continue,
                            Ok(_) => {}
                            Err(e) => tracing::warn!("delivering scheduled messages: {e}"),
                        }
                    } else {
                        sleep = sleep.min(Duration::from_millis((due - now) as u64));
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("reading the timer table: {e}"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            changed = applied.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}
