//! Test-only broken behaviours, compiled in only with the `fault-injection` feature, so that
//! the jepsen harness can prove it catches the bugs it exists to find (`docs/jepsen.md`,
//! "Broken builds"). A build with the feature does nothing unusual unless the environment
//! variable `ROCKETRAFT_FAULT` names one of these; release builds never have the feature.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that picks the broken behaviour.
pub const ENV: &str = "ROCKETRAFT_FAULT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The leader answers a send that has not committed within 100 ms with offsets it
    /// predicts, as a broker that acks before a majority has the write.
    AckBeforeCommit,
    /// The first message appended in a new term takes the offset of the last message
    /// before it, overwriting it, as a new leader that restarts offsets from a stale end.
    ReuseOffset,
    /// Linearizable reads skip the read barrier: any node, a deposed leader too, answers
    /// from its own applied state.
    StaleReads,
}

impl Fault {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "ack-before-commit" => Some(Self::AckBeforeCommit),
            "reuse-offset" => Some(Self::ReuseOffset),
            "stale-reads" => Some(Self::StaleReads),
            _ => None,
        }
    }
}

/// The fault this process runs with, read once from [`ENV`]. An unknown name is a
/// mistake in a test script: better to stop than to run a sound build by accident.
pub fn active() -> Option<Fault> {
    static ACTIVE: OnceLock<Option<Fault>> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let name = std::env::var(ENV).ok()?;
        match Fault::parse(&name) {
            Some(f) => Some(f),
            None => panic!(
                "{ENV}={name:?} names no fault: expected ack-before-commit, reuse-offset or stale-reads"
            ),
        }
    })
}

pub fn is(f: Fault) -> bool {
    active() == Some(f)
}

/// For [`Fault::ReuseOffset`]: whether an append of an entry of `term` is the first one of
/// a new term seen by this process.
pub(crate) fn first_append_of_new_term(term: u64) -> bool {
    static LAST_TERM: AtomicU64 = AtomicU64::new(0);
    let last = LAST_TERM.swap(term, Ordering::Relaxed);
    is(Fault::ReuseOffset) && last != 0 && term > last
}
