//! The routes checker: what the nameservers told clients about the group's leader, held
//! against what the group itself agreed on.
//!
//! Raft elects at most one leader per term and a nameserver only repeats what brokers
//! reported, so whatever the faults:
//! - `wrong-leader`: a nameserver names node L leader of term T while the group's agreed
//!   leader of term T (as the run's leader monitor saw it) was another node;
//! - `split-term`: nameservers named two different leaders for one term (one nameserver at
//!   two times, or two of them).
//!
//! Not failures, counted for the report: samples with no leader (the group's reports expired
//! while cut off), and regressions, where a nameserver names an older term than it named
//! before. A regression is the design working: when the newest leader's reports stop
//! reaching a nameserver past the expiry, a deposed leader still claiming its older term is
//! the live claimant with the highest term that the nameserver knows. That every nameserver
//! names the group's leader again after healing is checked by the run, which waits for it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Validity;

/// One answer of a nameserver about the group, as the run's sampler recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSample {
    pub time_ns: u64,
    /// The nameserver's id (`cluster::NAMESERVER_ID_BASE` + k).
    pub nameserver: u64,
    /// The leader it named and that leader's term; `None`: no live leader known.
    pub leader: Option<(u64, u64)>,
}

#[derive(Debug, Clone)]
pub struct RoutesCheckOptions {
    /// Fewer answered samples than this is inconclusive.
    pub min_samples: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutesReport {
    pub valid: Validity,
    pub samples: usize,
    pub leaderless_samples: usize,
    /// Times a nameserver named an older term than it had named before.
    pub regressions: usize,
    /// Anomaly class -> count (`wrong-leader`, `split-term`).
    pub error_counts: BTreeMap<String, usize>,
    /// The first few anomalies, described.
    pub anomalies: Vec<String>,
    pub unknown_reasons: Vec<String>,
}

const ANOMALIES_KEPT: usize = 20;

/// Checks `samples` against `agreed`, the (leader, term) pairs the group itself agreed on.
pub fn check(
    samples: &[RouteSample],
    agreed: &[(u64, u64)],
    opts: &RoutesCheckOptions,
) -> RoutesReport {
    let group_leader: BTreeMap<u64, u64> = agreed.iter().map(|&(l, t)| (t, l)).collect();
    // The first naming of each term: (leader, nameserver, time).
    let mut named: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
    let mut last_term: BTreeMap<u64, u64> = BTreeMap::new();
    let mut error_counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut anomalies = Vec::new();
    let mut found = |class: &str, what: String| {
        *error_counts.entry(class.to_string()).or_default() += 1;
        if anomalies.len() < ANOMALIES_KEPT {
            anomalies.push(format!("{class}: {what}"));
        }
    };
    let (mut leaderless, mut regressions) = (0, 0);
    let mut ordered: Vec<&RouteSample> = samples.iter().collect();
    ordered.sort_by_key(|s| (s.time_ns, s.nameserver));
    for s in ordered {
        let Some((leader, term)) = s.leader else {
            leaderless += 1;
            continue;
        };
        let at = format!(
            "nameserver {} at {:.3}s",
            s.nameserver,
            s.time_ns as f64 / 1e9
        );
        if let Some(&real) = group_leader.get(&term)
            && real != leader
        {
            found(
                "wrong-leader",
                format!("{at} named node {leader} leader of term {term}, which node {real} led"),
            );
        }
        match named.get(&term) {
            Some(&(other, ns, t)) if other != leader => found(
                "split-term",
                format!(
                    "{at} named node {leader} leader of term {term}; nameserver {ns} named \
                     node {other} at {:.3}s",
                    t as f64 / 1e9
                ),
            ),
            Some(_) => {}
            None => {
                named.insert(term, (leader, s.nameserver, s.time_ns));
            }
        }
        let last = last_term.entry(s.nameserver).or_insert(term);
        if term < *last {
            regressions += 1;
        }
        *last = term;
    }
    let mut unknown_reasons = Vec::new();
    Validity::require(
        &mut unknown_reasons,
        "answered route samples",
        samples.len(),
        "min_samples",
        opts.min_samples,
    );
    RoutesReport {
        valid: Validity::judge(!error_counts.is_empty(), &unknown_reasons),
        samples: samples.len(),
        leaderless_samples: leaderless,
        regressions,
        error_counts,
        anomalies,
        unknown_reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(time_s: u64, nameserver: u64, leader: Option<(u64, u64)>) -> RouteSample {
        RouteSample {
            time_ns: time_s * 1_000_000_000,
            nameserver,
            leader,
        }
    }

    fn opts() -> RoutesCheckOptions {
        RoutesCheckOptions { min_samples: 3 }
    }

    #[test]
    fn routes_that_follow_the_group_pass_and_regressions_are_counted() {
        let samples = [
            sample(1, 1000, Some((1, 1))),
            sample(1, 1001, Some((1, 1))),
            sample(2, 1000, Some((2, 2))),
            sample(3, 1000, None),
            // The term-2 leader went silent past the expiry; node 1 still claims term 1.
            sample(4, 1000, Some((1, 1))),
            sample(5, 1000, Some((2, 2))),
        ];
        let r = check(&samples, &[(1, 1), (2, 2)], &opts());
        assert_eq!(r.valid, Validity::Pass, "{r:?}");
        assert_eq!((r.leaderless_samples, r.regressions), (1, 1));
    }

    #[test]
    fn a_leader_the_group_did_not_elect_fails() {
        let samples = [
            sample(1, 1000, Some((1, 1))),
            sample(2, 1001, Some((3, 2))),
            sample(3, 1000, Some((2, 2))),
        ];
        let r = check(&samples, &[(1, 1), (2, 2)], &opts());
        assert_eq!(r.valid, Validity::Fail);
        assert_eq!(r.error_counts.get("wrong-leader"), Some(&1), "{r:?}");
        // The same term named with two leaders, whichever came first.
        assert_eq!(r.error_counts.get("split-term"), Some(&1), "{r:?}");
        assert!(r.anomalies[0].contains("node 3"), "{:?}", r.anomalies);
    }

    #[test]
    fn two_leaders_for_a_term_the_monitor_missed_still_fail() {
        let samples = [
            sample(1, 1000, Some((1, 5))),
            sample(2, 1001, Some((2, 5))),
            sample(3, 1000, Some((1, 5))),
        ];
        let r = check(&samples, &[], &opts());
        assert_eq!(r.valid, Validity::Fail);
        assert_eq!(r.error_counts.get("split-term"), Some(&1), "{r:?}");
    }

    #[test]
    fn too_few_samples_is_unknown() {
        let r = check(&[sample(1, 1000, Some((1, 1)))], &[(1, 1)], &opts());
        assert_eq!(r.valid, Validity::Unknown);
        assert!(r.unknown_reasons[0].contains("min_samples"), "{r:?}");
    }
}
