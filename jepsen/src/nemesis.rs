//! The nemesis: a seeded schedule of faults against the cluster, each logged when it starts
//! and when it is undone, so a run can be replayed from its seed and its results read
//! against the fault windows.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::cluster::Cluster;
use crate::netns::Grudge;

/// A class of fault, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL, then a restart on the same data when the fault ends.
    Kill,
    /// SIGSTOP, then SIGCONT: the classic deposed leader that still thinks it leads.
    Pause,
    /// Packet drops between nodes (isolate one or the leader, halves, one-way, bridge, ring).
    Partition,
}

impl FromStr for FaultKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "kill" => Self::Kill,
            "pause" => Self::Pause,
            "partition" => Self::Partition,
            other => bail!("unknown fault {other:?}: expected kill, pause or partition"),
        })
    }
}

/// Parses `kill,pause,partition` (or `none`).
pub fn parse_faults(s: &str) -> Result<Vec<FaultKind>> {
    if s == "none" || s.is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<FaultKind> = s.split(',').map(str::parse).collect::<Result<_>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// One fault as applied: what, to whom, and how to undo it.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub kind: FaultKind,
    /// How the targets were chosen: one, leader, minority, all, or the partition's shape.
    pub shape: String,
    /// Node ids the fault acts on (for partitions: the nodes whose packets are dropped).
    pub nodes: Vec<u64>,
    /// For partitions: node id -> node ids it drops packets from.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drops: Vec<(u64, Vec<u64>)>,
}

#[derive(Serialize)]
struct Event<'a> {
    time_ns: u64,
    action: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fault: Option<&'a Fault>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// A fault window, for the summary and the vacuity guard.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub start_ns: u64,
    pub end_ns: u64,
    pub fault: Fault,
}

pub struct Nemesis {
    rng: StdRng,
    faults: Vec<FaultKind>,
    log: BufWriter<File>,
    start: Instant,
    pub windows: Vec<Window>,
    pub errors: Vec<String>,
    /// Fault kinds that have run at least once: the first of each kind hits the leader, so
    /// every run with faults moves leadership at least once (else its verdict is vacuous).
    tried: Vec<FaultKind>,
    /// Seconds a fault lasts, and the quiet time between faults (ranges, picked per fault).
    pub hold: (f64, f64),
    pub quiet: (f64, f64),
}

impl Nemesis {
    pub fn new(seed: u64, faults: Vec<FaultKind>, log: File, start: Instant) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            faults,
            log: BufWriter::new(log),
            start,
            windows: Vec::new(),
            errors: Vec::new(),
            tried: Vec::new(),
            hold: (3.0, 8.0),
            quiet: (2.0, 6.0),
        }
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn record(&mut self, action: &str, fault: Option<&Fault>, error: Option<String>) {
        let e = Event {
            time_ns: self.now_ns(),
            action,
            fault,
            error,
        };
        if let Ok(line) = serde_json::to_string(&e) {
            let _ = writeln!(self.log, "{line}");
            let _ = self.log.flush();
        }
    }

    /// Runs faults until `until`, then undoes the last one. Between faults the cluster is
    /// left alone, so every run also has calm periods.
    pub async fn run(&mut self, cluster: &mut Cluster, until: Instant) {
        if self.faults.is_empty() {
            tokio::time::sleep_until(until.into()).await;
            return;
        }
        loop {
            let quiet = self.rng.random_range(self.quiet.0..self.quiet.1);
            if Instant::now() + Duration::from_secs_f64(quiet) >= until {
                break;
            }
            tokio::time::sleep(Duration::from_secs_f64(quiet)).await;
            let Some(kind) = self.faults.choose(&mut self.rng).copied() else {
                break;
            };
            let fault = self.pick(kind, cluster).await;
            let start_ns = self.now_ns();
            self.record("start", Some(&fault), None);
            if let Err(e) = apply(cluster, &fault) {
                self.errors.push(format!("{fault:?}: {e:#}"));
                self.record("error", Some(&fault), Some(format!("{e:#}")));
            }
            let hold = self.rng.random_range(self.hold.0..self.hold.1);
            let end = (Instant::now() + Duration::from_secs_f64(hold)).min(until);
            tokio::time::sleep_until(end.into()).await;
            if let Err(e) = undo(cluster, &fault) {
                self.errors.push(format!("undo {fault:?}: {e:#}"));
                self.record("error", Some(&fault), Some(format!("{e:#}")));
            }
            self.record("stop", Some(&fault), None);
            self.windows.push(Window {
                start_ns,
                end_ns: self.now_ns(),
                fault,
            });
            if Instant::now() >= until {
                break;
            }
        }
    }

    /// Chooses the targets of a fault of `kind`. The leader is asked for at the moment of
    /// the fault; with none agreed, a random node stands in.
    async fn pick(&mut self, kind: FaultKind, cluster: &Cluster) -> Fault {
        let mut ids = cluster.ids();
        ids.shuffle(&mut self.rng);
        let n = ids.len();
        let leader = cluster.leader().await.map(|(l, _)| l);
        let first = !self.tried.contains(&kind);
        if first {
            self.tried.push(kind);
        }
        let leader_first = |ids: &mut Vec<u64>| {
            if let Some(l) = leader
                && let Some(pos) = ids.iter().position(|i| *i == l)
            {
                ids.swap(0, pos);
            }
        };
        match kind {
            FaultKind::Kill | FaultKind::Pause => {
                let shapes = ["one", "leader", "minority", "all"];
                let mut shape = *shapes.choose(&mut self.rng).unwrap_or(&"one");
                if first {
                    shape = "leader";
                }
                if shape == "leader" {
                    leader_first(&mut ids);
                }
                let count = match shape {
                    "minority" => (n - 1) / 2,
                    "all" => n,
                    _ => 1,
                };
                ids.truncate(count.max(1));
                ids.sort();
                Fault {
                    kind,
                    shape: shape.into(),
                    nodes: ids,
                    drops: Vec::new(),
                }
            }
            FaultKind::Partition => {
                let mut shapes = vec!["isolate-one", "isolate-leader", "halves", "one-way"];
                if n >= 5 {
                    shapes.extend(["bridge", "ring"]);
                }
                let mut shape = *shapes.choose(&mut self.rng).unwrap_or(&"halves");
                if first {
                    shape = "isolate-leader";
                }
                if shape == "isolate-leader" {
                    leader_first(&mut ids);
                }
                let grudge = partition_shape(shape, &ids);
                let mut nodes: Vec<u64> = grudge.keys().copied().collect();
                nodes.sort();
                Fault {
                    kind,
                    shape: shape.into(),
                    nodes,
                    drops: grudge
                        .into_iter()
                        .map(|(k, v)| (k, v.into_iter().collect()))
                        .collect(),
                }
            }
        }
    }
}

/// Who drops packets from whom, by node id, for a partition shape over shuffled `ids`.
fn partition_shape(shape: &str, ids: &[u64]) -> std::collections::BTreeMap<u64, BTreeSet<u64>> {
    let mut g: std::collections::BTreeMap<u64, BTreeSet<u64>> = Default::default();
    let mut cut = |a: u64, b: u64| {
        g.entry(a).or_default().insert(b);
    };
    let n = ids.len();
    match shape {
        // ids[0] (the leader for isolate-leader) hears nobody and nobody hears it.
        "isolate-one" | "isolate-leader" => {
            for &o in &ids[1..] {
                cut(ids[0], o);
                cut(o, ids[0]);
            }
        }
        // A random minority against the majority.
        "halves" => {
            let (minority, majority) = ids.split_at(n / 2);
            for &a in minority {
                for &b in majority {
                    cut(a, b);
                    cut(b, a);
                }
            }
        }
        // ids[0] receives nothing from the others but they still receive from it: it keeps
        // sending heartbeats (or votes) into a group whose answers it never hears.
        "one-way" => {
            for &o in &ids[1..] {
                cut(ids[0], o);
            }
        }
        // Two halves joined through one node (ids[0]) that sees both.
        "bridge" => {
            let rest = &ids[1..];
            let (a, b) = rest.split_at(rest.len() / 2);
            for &x in a {
                for &y in b {
                    cut(x, y);
                    cut(y, x);
                }
            }
        }
        // Each node sees only its ring neighbours: every node has a majority, and no two
        // nodes have the same one.
        "ring" => {
            for (i, &a) in ids.iter().enumerate() {
                for (j, &b) in ids.iter().enumerate() {
                    let d = i.abs_diff(j);
                    if i != j && d != 1 && d != n - 1 {
                        cut(a, b);
                    }
                }
            }
        }
        _ => {}
    }
    g
}

fn apply(cluster: &mut Cluster, fault: &Fault) -> Result<()> {
    match fault.kind {
        FaultKind::Kill => fault.nodes.iter().try_for_each(|id| cluster.kill(*id)),
        FaultKind::Pause => fault.nodes.iter().try_for_each(|id| cluster.pause(*id)),
        FaultKind::Partition => {
            let grudge: Grudge = fault
                .drops
                .iter()
                .map(|(to, from)| {
                    (
                        (*to - 1) as usize,
                        from.iter().map(|f| (*f - 1) as usize).collect(),
                    )
                })
                .collect();
            cluster.net.partition(&grudge)
        }
    }
}

fn undo(cluster: &mut Cluster, fault: &Fault) -> Result<()> {
    match fault.kind {
        FaultKind::Kill => fault.nodes.iter().try_for_each(|id| cluster.spawn(*id)),
        FaultKind::Pause => fault.nodes.iter().try_for_each(|id| cluster.resume(*id)),
        FaultKind::Partition => cluster.net.heal(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drops(shape: &str, ids: &[u64]) -> Vec<(u64, Vec<u64>)> {
        partition_shape(shape, ids)
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect()
    }

    #[test]
    fn partition_shapes_cut_the_intended_links() {
        assert_eq!(
            drops("isolate-one", &[2, 1, 3]),
            vec![(1, vec![2]), (2, vec![1, 3]), (3, vec![2])]
        );
        assert_eq!(drops("one-way", &[2, 1, 3]), vec![(2, vec![1, 3])]);
        // 5 nodes: 2 against 3.
        let halves = drops("halves", &[5, 4, 3, 2, 1]);
        assert_eq!(halves.len(), 5);
        assert!(halves.contains(&(5, vec![1, 2, 3])));
        // Bridge: 1 sees everyone, {2,3} and {4,5} do not see each other.
        assert_eq!(
            drops("bridge", &[1, 2, 3, 4, 5]),
            vec![
                (2, vec![4, 5]),
                (3, vec![4, 5]),
                (4, vec![2, 3]),
                (5, vec![2, 3])
            ]
        );
        // Ring 1-2-3-4-5-1: each node cuts exactly the two that are not its neighbours.
        let ring = drops("ring", &[1, 2, 3, 4, 5]);
        assert_eq!(ring[0], (1, vec![3, 4]));
        assert!(ring.iter().all(|(_, v)| v.len() == 2));
    }

    #[test]
    fn fault_lists_parse_and_reject_unknown_names() {
        assert_eq!(
            parse_faults("pause,kill,pause").unwrap(),
            vec![FaultKind::Kill, FaultKind::Pause]
        );
        assert!(parse_faults("none").unwrap().is_empty());
        let err = parse_faults("kill,flood").unwrap_err().to_string();
        assert!(err.contains("flood"), "{err}");
    }
}
