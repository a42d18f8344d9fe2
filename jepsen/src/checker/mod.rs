//! Checkers: pure functions from a recorded history to a verdict with evidence.
//!
//! - [`log`]: the `log` workload (sends and polls on keyed queues), a port of the analyses
//!   of Jepsen's Kafka workload plus checks that follow from dense queue offsets;
//! - [`register`]: the `register` workload (writes and reads of one register per key), a
//!   linearizability search per key;
//! - [`group`]: the `group` workload (pop consumers of one group), total-queue and the
//!   group offset's order. The `dedup` workload is checked by [`log`];
//! - [`routes`]: the leaders the nameservers named, when the cluster has nameservers.

use serde::{Deserialize, Serialize};

pub mod group;
pub mod log;
pub mod register;
pub mod routes;

/// A checker's verdict. The order matters: combining verdicts takes the maximum, so one
/// `Fail` fails the run and `Unknown` (not enough evidence) is never mistaken for `Pass`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Validity {
    Pass,
    Unknown,
    Fail,
}

impl Validity {
    pub fn combine(self, other: Validity) -> Validity {
        self.max(other)
    }

    /// A vacuity guard: notes in `unknown_reasons` when `got` falls below `min`, naming the
    /// option (`floor`) that set the minimum.
    pub fn require(
        unknown_reasons: &mut Vec<String>,
        what: &str,
        got: usize,
        floor: &str,
        min: usize,
    ) {
        if got < min {
            unknown_reasons.push(format!("too few {what}: {got} < {floor} {min}"));
        }
    }

    /// The verdict on a body of evidence: `Fail` when something fatal was found, else
    /// `Unknown` when there is any reason to doubt the evidence, else `Pass`.
    pub fn judge(failed: bool, unknown_reasons: &[String]) -> Validity {
        if failed {
            Validity::Fail
        } else if !unknown_reasons.is_empty() {
            Validity::Unknown
        } else {
            Validity::Pass
        }
    }
}
