//! The nemesis: a seeded schedule of faults against the cluster, each logged when it starts
//! and when it is undone (with what it did), so a run can be replayed from its seed and its
//! results read against the fault windows.
//!
//! Fault classes (the `--nemesis` names):
//! - `kill`, `pause`, `partition`: processes and packets (see [`partition_shape`]);
//! - `membership`: add a node, remove one or the leader, hand leadership over, one change at
//!   a time ([`crate::membership`]); mixed with other classes, changes also happen in the
//!   middle of their faults;
//! - `lose-unfsynced`: kill -9 nodes and drop everything their storage had not fsynced
//!   ([`crate::lazyfs`]), then restart them;
//! - `pause-kill`: NATS's choreography (see [`Nemesis::pause_kill`]);
//! - `clock`: shift nodes' wall clocks, bumps and strobes ([`crate::clock`]);
//! - `nameserver-partition`: packet drops between brokers and nameservers, or between
//!   nameservers (see [`nameserver_partition_shape`]); needs a cluster with nameservers.
//!
//! Each fault records whether it took effect (`effective`): a run whose faults of some
//! requested class never took effect is inconclusive, not a pass.

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
use serde_json::json;

use crate::cluster::Cluster;
use crate::lazyfs::DropReport;
use crate::membership;
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
    /// Add a node, remove a node or the leader, or transfer leadership.
    Membership,
    /// SIGKILL plus the loss of every write the node had not fsynced, then a restart.
    LoseUnfsynced,
    /// Pause a minority, kill one of the majority losing unsynced data, let the paused
    /// minority and that node form the new majority.
    PauseKill,
    /// Per-node wall-clock offsets: bumps forward and back, strobes.
    Clock,
    /// Packet drops between brokers and nameservers (all of them, the leader, one
    /// nameserver), or a split of the nameservers with the brokers divided between them.
    NameserverPartition,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        Self::Kill,
        Self::Pause,
        Self::Partition,
        Self::Membership,
        Self::LoseUnfsynced,
        Self::PauseKill,
        Self::Clock,
        Self::NameserverPartition,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Pause => "pause",
            Self::Partition => "partition",
            Self::Membership => "membership",
            Self::LoseUnfsynced => "lose-unfsynced",
            Self::PauseKill => "pause-kill",
            Self::Clock => "clock",
            Self::NameserverPartition => "nameserver-partition",
        }
    }

    /// Whether the group is meant to be unavailable while this fault holds: pause-kill
    /// leaves no majority able to serve until its end, by design.
    pub fn halts_group(self) -> bool {
        matches!(self, Self::PauseKill)
    }

    /// Whether the cluster needs lazyfs mounts for this class.
    pub fn needs_lazyfs(self) -> bool {
        matches!(self, Self::LoseUnfsynced | Self::PauseKill)
    }
}

impl FromStr for FaultKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match Self::ALL.iter().find(|k| k.name() == s) {
            Some(k) => Ok(*k),
            None => bail!(
                "unknown fault {s:?}: expected one of {}",
                Self::ALL.map(|k| k.name()).join(", ")
            ),
        }
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

/// One fault as applied: what, to whom, how to undo it, and what it did.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub kind: FaultKind,
    /// How the targets were chosen: one, leader, minority, all, the partition's shape, the
    /// membership change, the clock pattern.
    pub shape: String,
    /// Node ids the fault acts on (for partitions: the nodes whose packets are dropped).
    pub nodes: Vec<u64>,
    /// For partitions: node id -> node ids it drops packets from.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drops: Vec<(u64, Vec<u64>)>,
    /// For clock faults: node id -> wall-clock offset in ms.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub offsets_ms: Vec<(u64, i64)>,
    /// What happened: a membership change's call and the membership read back, the bytes
    /// each node lost, the steps of a choreography.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<serde_json::Value>,
    /// Whether the fault took effect: false for a membership change that did not happen, a
    /// power loss with nothing unsynced to lose, a fault that failed to apply.
    pub effective: bool,
}

impl Fault {
    pub(crate) fn new(kind: FaultKind, shape: &str, nodes: Vec<u64>) -> Self {
        Self {
            kind,
            shape: shape.into(),
            nodes,
            drops: Vec::new(),
            offsets_ms: Vec::new(),
            outcome: None,
            effective: true,
        }
    }
}

#[derive(Serialize)]
struct Event<'a> {
    time_ns: u64,
    action: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fault: Option<&'a Fault>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<serde_json::Value>,
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
    /// Fault kinds that have run at least once: the first of each kind hits the leader (or
    /// moves leadership), so every run with faults moves leadership at least once.
    tried: Vec<FaultKind>,
    /// Seconds a fault lasts, and the quiet time between faults (ranges, picked per fault).
    pub hold: (f64, f64),
    pub quiet: (f64, f64),
    /// The running clock strobe, stopped when its fault ends.
    strobe: Option<tokio::task::JoinHandle<()>>,
    /// Classes still to draw before any repeats (a shuffle bag), so that a run with k
    /// classes sees each of them within its first k faults.
    bag: Vec<FaultKind>,
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
            strobe: None,
            bag: Vec::new(),
        }
    }

    /// The next fault class: drawn from the bag, refilled and shuffled when empty.
    fn next_kind(&mut self) -> Option<FaultKind> {
        if self.bag.is_empty() {
            self.bag = self.faults.clone();
            self.bag.shuffle(&mut self.rng);
        }
        self.bag.pop()
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn record(
        &mut self,
        action: &str,
        fault: Option<&Fault>,
        error: Option<String>,
        detail: Option<serde_json::Value>,
    ) {
        let e = Event {
            time_ns: self.now_ns(),
            action,
            fault,
            error,
            detail,
        };
        if let Ok(line) = serde_json::to_string(&e) {
            let _ = writeln!(self.log, "{line}");
            let _ = self.log.flush();
        }
    }

    fn failed(&mut self, fault: &mut Fault, what: &str, e: anyhow::Error) {
        fault.effective = false;
        self.errors.push(format!("{what} {fault:?}: {e:#}"));
        self.record("error", Some(&*fault), Some(format!("{what}: {e:#}")), None);
    }

    /// The first fault of `kind` in this run? (Marks it tried.)
    fn first(&mut self, kind: FaultKind) -> bool {
        let first = !self.tried.contains(&kind);
        if first {
            self.tried.push(kind);
        }
        first
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
            let Some(kind) = self.next_kind() else {
                break;
            };
            match kind {
                FaultKind::Membership => self.membership_change(cluster).await,
                FaultKind::PauseKill => self.pause_kill(cluster, until).await,
                _ => self.fault_with_hold(kind, cluster, until).await,
            }
            if Instant::now() >= until {
                break;
            }
        }
    }

    /// A fault that holds for a while and is then undone. When membership changes are in
    /// the mix, half of these holds also see one in their middle.
    async fn fault_with_hold(&mut self, kind: FaultKind, cluster: &mut Cluster, until: Instant) {
        let mut fault = self.pick(kind, cluster).await;
        let start_ns = self.now_ns();
        self.record("start", Some(&fault), None, None);
        if let Err(e) = self.apply(cluster, &mut fault).await {
            self.failed(&mut fault, "apply", e);
        }
        let hold = self.rng.random_range(self.hold.0..self.hold.1);
        let end = (Instant::now() + Duration::from_secs_f64(hold)).min(until);
        if self.faults.contains(&FaultKind::Membership) && self.rng.random_bool(0.5) {
            let mid = Instant::now() + (end - Instant::now().min(end)) / 2;
            tokio::time::sleep_until(mid.into()).await;
            self.membership_change(cluster).await;
        }
        tokio::time::sleep_until(end.into()).await;
        if let Err(e) = self.undo(cluster, &fault).await {
            self.failed(&mut fault, "undo", e);
        }
        self.record("stop", Some(&fault), None, None);
        self.windows.push(Window {
            start_ns,
            end_ns: self.now_ns(),
            fault,
        });
    }

    /// Chooses the targets of a fault of `kind` (not membership or pause-kill, which choose
    /// as they go). The leader is asked for at the moment of the fault; with none agreed, a
    /// random node stands in.
    async fn pick(&mut self, kind: FaultKind, cluster: &Cluster) -> Fault {
        let mut ids = cluster.ids();
        ids.shuffle(&mut self.rng);
        let n = ids.len();
        let leader = cluster.leader().await.map(|(l, _)| l);
        let first = self.first(kind);
        let leader_first = |ids: &mut Vec<u64>| {
            if let Some(l) = leader
                && let Some(pos) = ids.iter().position(|i| *i == l)
            {
                ids.swap(0, pos);
            }
        };
        match kind {
            FaultKind::Kill
            | FaultKind::Pause
            | FaultKind::LoseUnfsynced
            | FaultKind::Membership
            | FaultKind::PauseKill => {
                let shapes = ["one", "leader", "minority", "all"];
                let mut shape = *shapes.choose(&mut self.rng).unwrap_or(&"one");
                if first {
                    shape = "leader";
                }
                if shape == "leader" {
                    leader_first(&mut ids);
                }
                let count = match shape {
                    "minority" => (n.saturating_sub(1)) / 2,
                    "all" => n,
                    _ => 1,
                };
                ids.truncate(count.max(1));
                ids.sort();
                Fault::new(kind, shape, ids)
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
                let mut f = Fault::new(kind, shape, nodes);
                f.drops = grudge
                    .into_iter()
                    .map(|(k, v)| (k, v.into_iter().collect()))
                    .collect();
                f
            }
            FaultKind::NameserverPartition => {
                let nameservers = cluster.nameserver_ids();
                let mut shapes = vec![
                    "brokers-from-nameservers",
                    "leader-from-nameservers",
                    "one-nameserver",
                ];
                if nameservers.len() >= 2 {
                    shapes.push("nameservers-split");
                }
                let mut shape = *shapes.choose(&mut self.rng).unwrap_or(&"one-nameserver");
                if first {
                    shape = "leader-from-nameservers";
                }
                if shape == "leader-from-nameservers" {
                    leader_first(&mut ids);
                }
                let mut nameservers = nameservers;
                nameservers.shuffle(&mut self.rng);
                let grudge = nameserver_partition_shape(shape, &ids, &nameservers);
                let mut f = Fault::new(kind, shape, grudge.keys().copied().collect());
                f.drops = grudge
                    .into_iter()
                    .map(|(k, v)| (k, v.into_iter().collect()))
                    .collect();
                f
            }
            FaultKind::Clock => {
                // The first clock fault skews a follower and hands it leadership: the
                // skewed clock then stamps the messages, and leadership moves.
                let shapes = ["bump", "bump-leader", "bump-all", "strobe", "bump-transfer"];
                let mut shape = *shapes.choose(&mut self.rng).unwrap_or(&"bump");
                if first {
                    shape = "bump-transfer";
                }
                if shape == "bump-leader" {
                    leader_first(&mut ids);
                }
                if shape == "bump-transfer"
                    && let Some(l) = leader
                {
                    ids.retain(|i| *i != l);
                }
                if shape != "bump-all" {
                    ids.truncate(1);
                }
                ids.sort();
                let mut f = Fault::new(kind, shape, ids.clone());
                f.offsets_ms = ids
                    .iter()
                    .map(|id| (*id, self.clock_offset_ms(shape == "strobe")))
                    .collect();
                f
            }
        }
    }

    /// A wall-clock offset: seconds to minutes, forward or back (log-uniform, so small and
    /// large skews are both common). For a strobe, the amplitude.
    fn clock_offset_ms(&mut self, strobe: bool) -> i64 {
        let (lo, hi) = if strobe {
            (1_000f64, 60_000f64)
        } else {
            (1_000f64, 300_000f64)
        };
        let ms = (self.rng.random_range(lo.ln()..hi.ln())).exp() as i64;
        if self.rng.random_bool(0.5) { ms } else { -ms }
    }

    async fn apply(&mut self, cluster: &mut Cluster, fault: &mut Fault) -> Result<()> {
        match fault.kind {
            FaultKind::Kill => fault.nodes.iter().try_for_each(|id| cluster.kill(*id)),
            FaultKind::Pause => fault.nodes.iter().try_for_each(|id| cluster.pause(*id)),
            FaultKind::Partition | FaultKind::NameserverPartition => {
                let mut grudge = Grudge::new();
                for (to, from) in &fault.drops {
                    let from: Result<BTreeSet<usize>> =
                        from.iter().map(|f| cluster.slot(*f)).collect();
                    grudge.insert(cluster.slot(*to)?, from?);
                }
                cluster.net.partition(&grudge)
            }
            FaultKind::LoseUnfsynced => {
                let mut lost = serde_json::Map::new();
                let mut effective = false;
                for id in fault.nodes.clone() {
                    let report = cluster.kill_and_lose_unsynced(id)?;
                    effective |= lost_data(&report);
                    lost.insert(id.to_string(), json!(report));
                }
                fault.effective = effective;
                fault.outcome = Some(json!({ "lost": lost }));
                Ok(())
            }
            FaultKind::Clock => self.skew(cluster, fault).await,
            FaultKind::Membership | FaultKind::PauseKill => Ok(()),
        }
    }

    async fn undo(&mut self, cluster: &mut Cluster, fault: &Fault) -> Result<()> {
        match fault.kind {
            FaultKind::Kill | FaultKind::LoseUnfsynced => {
                fault.nodes.iter().try_for_each(|id| cluster.spawn(*id))
            }
            FaultKind::Pause => fault.nodes.iter().try_for_each(|id| cluster.resume(*id)),
            FaultKind::Partition | FaultKind::NameserverPartition => cluster.net.heal(),
            FaultKind::Clock => {
                if let Some(s) = self.strobe.take() {
                    s.abort();
                    let _ = s.await;
                }
                for id in &fault.nodes {
                    cluster.clock(*id)?.set_offset_ms(0)?;
                }
                Ok(())
            }
            FaultKind::Membership | FaultKind::PauseKill => Ok(()),
        }
    }

    /// Sets the fault's clock offsets; a strobe flips its node between +offset and -offset
    /// until the fault ends; bump-transfer then hands the skewed node leadership.
    async fn skew(&mut self, cluster: &mut Cluster, fault: &mut Fault) -> Result<()> {
        for (id, offset) in &fault.offsets_ms {
            cluster.clock(*id)?.set_offset_ms(*offset)?;
        }
        match fault.shape.as_str() {
            "strobe" => {
                let Some(&(id, amplitude)) = fault.offsets_ms.first() else {
                    bail!("a strobe needs a node");
                };
                let clock = cluster.clock(id)?.clone();
                let period_ms = self.rng.random_range(20..500u64);
                fault.outcome = Some(json!({ "period_ms": period_ms }));
                self.strobe = Some(tokio::spawn(async move {
                    let mut sign = 1;
                    loop {
                        tokio::time::sleep(Duration::from_millis(period_ms)).await;
                        sign = -sign;
                        if clock.set_offset_ms(sign * amplitude).is_err() {
                            return;
                        }
                    }
                }));
            }
            "bump-transfer" => {
                let Some(&id) = fault.nodes.first() else {
                    bail!("no follower to skew and hand leadership to");
                };
                let outcome = membership::transfer(cluster, id).await?;
                fault.outcome = Some(json!({ "transfer": outcome }));
            }
            _ => {}
        }
        Ok(())
    }

    /// One membership change, chosen from what the group allows now (read back first): add
    /// a node while a slot is free, remove a voter or the leader while more than a majority
    /// of the original size remain, hand leadership to another voter. A learner left by an
    /// add that did not finish is promoted before anything else.
    async fn membership_change(&mut self, cluster: &mut Cluster) {
        let start_ns = self.now_ns();
        let first = self.first(FaultKind::Membership);
        let mut fault = Fault::new(FaultKind::Membership, "none", Vec::new());
        match membership::resolve(cluster).await {
            Err(e) => {
                // Not a failure of the harness: the group may be down under another fault.
                fault.shape = "skipped".into();
                fault.effective = false;
                fault.outcome = Some(json!({ "why": format!("membership unreadable: {e:#}") }));
            }
            Ok(view) => {
                let mut shapes = Vec::new();
                if cluster.free_slot().is_some() {
                    shapes.push("add");
                }
                if view.voters.len() > membership::min_voters(cluster) {
                    shapes.extend(["remove", "remove-leader"]);
                }
                if view.voters.len() >= 2 {
                    shapes.push("transfer-leader");
                }
                let mut shape = *shapes.choose(&mut self.rng).unwrap_or(&"add");
                if first && view.voters.len() >= 2 {
                    shape = "transfer-leader";
                }
                if let Some(&learner) = view.learners.first() {
                    shape = "promote";
                    fault.nodes = vec![learner];
                }
                let mut others: Vec<u64> = view
                    .voters
                    .iter()
                    .copied()
                    .filter(|v| *v != view.leader)
                    .collect();
                others.shuffle(&mut self.rng);
                let target = match shape {
                    "remove-leader" => Some(view.leader),
                    "remove" | "transfer-leader" => others.first().copied(),
                    _ => None,
                };
                fault.shape = shape.into();
                fault.nodes.extend(target);
                self.record("start", Some(&fault), None, Some(json!({ "before": view })));
                let result = match (shape, target) {
                    ("add", _) => membership::add(cluster, None).await.map(|(id, o)| {
                        fault.nodes = vec![id];
                        o
                    }),
                    ("promote", _) => membership::add(cluster, fault.nodes.first().copied())
                        .await
                        .map(|(_, o)| o),
                    ("remove" | "remove-leader", Some(t)) => membership::remove(cluster, t).await,
                    ("transfer-leader", Some(t)) => membership::transfer(cluster, t).await,
                    _ => Err(anyhow::anyhow!("no target for {shape}")),
                };
                match result {
                    Ok(o) => {
                        fault.effective = o.effective;
                        fault.outcome = Some(json!(o));
                    }
                    Err(e) => self.failed(&mut fault, "membership change", e),
                }
            }
        }
        self.record("stop", Some(&fault), None, None);
        self.windows.push(Window {
            start_ns,
            end_ns: self.now_ns(),
            fault,
        });
    }

    /// NATS's pause-kill (Jepsen's NATS 2.12.1 analysis): pause a minority and let writes
    /// build up on the majority; kill one node of the majority, losing its unsynced
    /// writes; pause the rest of the majority and resume the minority, so that once the
    /// killed node restarts, the new majority is the nodes that missed the writes plus the
    /// node that lost its unsynced ones; hold; resume everyone. A log that acknowledged
    /// writes before fsyncing them loses them here.
    async fn pause_kill(&mut self, cluster: &mut Cluster, until: Instant) {
        let start_ns = self.now_ns();
        let first = self.first(FaultKind::PauseKill);
        let leader = cluster.leader().await.map(|(l, _)| l);
        let mut ids = cluster.voters();
        ids.shuffle(&mut self.rng);
        let m = (ids.len().saturating_sub(1) / 2).max(1).min(ids.len());
        // The first time, the leader is the victim (if the shuffle left it in the majority).
        let (minority, majority) = ids.split_at(m);
        let (minority, mut majority) = (minority.to_vec(), majority.to_vec());
        if first
            && let Some(l) = leader
            && let Some(pos) = majority.iter().position(|i| *i == l)
        {
            majority.swap(0, pos);
        }
        let Some((&victim, others)) = majority.split_first() else {
            let mut f = Fault::new(FaultKind::PauseKill, "pause-kill", ids);
            f.effective = false;
            f.outcome = Some(json!({ "why": "too few voters" }));
            self.record("stop", Some(&f), None, None);
            return;
        };
        let others = others.to_vec();
        let mut fault = Fault::new(FaultKind::PauseKill, "pause-kill", {
            let mut all = ids.clone();
            all.sort();
            all
        });
        self.record(
            "start",
            Some(&fault),
            None,
            Some(json!({ "minority": minority, "victim": victim, "rest": others })),
        );
        let build = Duration::from_secs_f64(self.rng.random_range(self.hold.0..self.hold.1));
        let hold = Duration::from_secs_f64(self.rng.random_range(self.hold.0..self.hold.1));
        let result: Result<(DropReport, Option<u64>)> = async {
            for id in &minority {
                cluster.pause(*id)?;
            }
            self.record("step", None, None, Some(json!({ "paused": minority })));
            tokio::time::sleep_until((Instant::now() + build).min(until).into()).await;
            let report = cluster.kill_and_lose_unsynced(victim)?;
            self.record(
                "step",
                None,
                None,
                Some(json!({ "killed": victim, "lost": report })),
            );
            for id in &others {
                cluster.pause(*id)?;
            }
            for id in &minority {
                cluster.resume(*id)?;
            }
            cluster.spawn(victim)?;
            self.record(
                "step",
                None,
                None,
                Some(json!({ "paused": others, "resumed": minority, "restarted": victim })),
            );
            // Which leader the new majority elects (if any) within the hold.
            let deadline = Instant::now() + hold;
            let mut new_leader = None;
            while Instant::now() < deadline {
                if let Some((l, _)) = cluster.leader().await
                    && !others.contains(&l)
                {
                    new_leader = Some(l);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok((report, new_leader))
        }
        .await;
        // Heal whatever happened above.
        for id in minority.iter().chain(&others) {
            if let Err(e) = cluster.resume(*id) {
                self.failed(&mut fault, "resume", e);
            }
        }
        if let Err(e) = cluster.spawn(victim) {
            self.failed(&mut fault, "restart", e);
        }
        match result {
            Ok((report, new_leader)) => {
                fault.effective &= lost_data(&report);
                fault.outcome = Some(json!({
                    "minority": minority,
                    "victim": victim,
                    "rest": others,
                    "lost": report,
                    "new_majority_leader": new_leader,
                }));
            }
            Err(e) => self.failed(&mut fault, "pause-kill", e),
        }
        self.record("stop", Some(&fault), None, None);
        self.windows.push(Window {
            start_ns,
            end_ns: self.now_ns(),
            fault,
        });
    }
}

/// Whether a drop lost anything that matters: bytes of a file other than RocksDB's own
/// info logs (`LOG`, `LOG.old.*`), which are never fsynced and so always lose something.
fn lost_data(report: &DropReport) -> bool {
    report.files.iter().any(|(path, bytes)| {
        let name = path.rsplit('/').next().unwrap_or(path);
        *bytes > 0 && !name.starts_with("LOG")
    })
}

/// Who drops packets from whom, by node id, for a partition shape over shuffled `ids`.
fn partition_shape(shape: &str, ids: &[u64]) -> std::collections::BTreeMap<u64, BTreeSet<u64>> {
    let mut g: std::collections::BTreeMap<u64, BTreeSet<u64>> = Default::default();
    let mut cut = |a: u64, b: u64| {
        g.entry(a).or_default().insert(b);
    };
    let n = ids.len();
    if n == 0 {
        return g;
    }
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

/// Who drops packets from whom for a shape of `nameserver-partition`, over shuffled broker
/// `ids` (the leader first for leader-from-nameservers) and shuffled `nameservers` ids. Every
/// cut goes both ways: a broker that cannot reach a nameserver cannot be reached by it.
fn nameserver_partition_shape(
    shape: &str,
    ids: &[u64],
    nameservers: &[u64],
) -> std::collections::BTreeMap<u64, BTreeSet<u64>> {
    let mut g: std::collections::BTreeMap<u64, BTreeSet<u64>> = Default::default();
    let mut cut = |a: &[u64], b: &[u64]| {
        for &x in a {
            for &y in b {
                g.entry(x).or_default().insert(y);
                g.entry(y).or_default().insert(x);
            }
        }
    };
    if ids.is_empty() || nameservers.is_empty() {
        return g;
    }
    match shape {
        // No nameserver hears from the group: after the expiry every route loses it.
        "brokers-from-nameservers" => cut(ids, nameservers),
        // The leader's reports stop; the followers' (naming it leader) still arrive.
        "leader-from-nameservers" => cut(&ids[..1], nameservers),
        // One nameserver alone: it keeps answering clients from what it last heard.
        "one-nameserver" => {
            cut(&nameservers[..1], ids);
            cut(&nameservers[..1], &nameservers[1..]);
        }
        // The nameservers cannot gossip, and each hears from part of the group only.
        "nameservers-split" => {
            let (left, right) = nameservers.split_at(nameservers.len() / 2);
            let (a, b) = ids.split_at(ids.len() / 2);
            cut(left, right);
            cut(a, left);
            cut(b, right);
        }
        _ => {}
    }
    g
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
    fn nameserver_partition_shapes_cut_the_intended_links() {
        let drops = |shape| -> Vec<(u64, Vec<u64>)> {
            nameserver_partition_shape(shape, &[2, 1, 3], &[1001, 1000])
                .into_iter()
                .map(|(k, v)| (k, v.into_iter().collect()))
                .collect()
        };
        assert_eq!(
            drops("leader-from-nameservers"),
            vec![(2, vec![1000, 1001]), (1000, vec![2]), (1001, vec![2])]
        );
        assert_eq!(
            drops("brokers-from-nameservers"),
            vec![
                (1, vec![1000, 1001]),
                (2, vec![1000, 1001]),
                (3, vec![1000, 1001]),
                (1000, vec![1, 2, 3]),
                (1001, vec![1, 2, 3]),
            ]
        );
        // Nameserver 1001 alone; brokers still reach 1000 and each other.
        assert_eq!(
            drops("one-nameserver"),
            vec![
                (1, vec![1001]),
                (2, vec![1001]),
                (3, vec![1001]),
                (1000, vec![1001]),
                (1001, vec![1, 2, 3, 1000]),
            ]
        );
        // Split: 1001 | 1000; broker 2 hears only 1000, brokers 1 and 3 only 1001.
        assert_eq!(
            drops("nameservers-split"),
            vec![
                (1, vec![1000]),
                (2, vec![1001]),
                (3, vec![1000]),
                (1000, vec![1, 3, 1001]),
                (1001, vec![2, 1000]),
            ]
        );
        // Brokers never lose each other.
        for shape in [
            "brokers-from-nameservers",
            "leader-from-nameservers",
            "one-nameserver",
            "nameservers-split",
        ] {
            for (to, from) in drops(shape) {
                assert!(
                    to >= 1000 || from.iter().all(|f| *f >= 1000),
                    "{shape}: broker {to} drops {from:?}"
                );
            }
        }
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
        assert_eq!(
            parse_faults("clock,lose-unfsynced,membership,pause-kill").unwrap(),
            vec![
                FaultKind::Membership,
                FaultKind::LoseUnfsynced,
                FaultKind::PauseKill,
                FaultKind::Clock
            ]
        );
        assert!(parse_faults("none").unwrap().is_empty());
        let err = parse_faults("kill,flood").unwrap_err().to_string();
        assert!(
            err.contains("flood") && err.contains("lose-unfsynced"),
            "{err}"
        );
    }

    #[test]
    fn info_logs_do_not_count_as_lost_data() {
        let only_log = DropReport {
            bytes: 300,
            files: vec![("raft-log/LOG".into(), 300)],
        };
        assert!(!lost_data(&only_log));
        let wal = DropReport {
            bytes: 400,
            files: vec![
                ("raft-log/LOG".into(), 300),
                ("raft-log/000009.log".into(), 100),
            ],
        };
        assert!(lost_data(&wal));
    }
}
