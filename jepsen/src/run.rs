//! One run: start a cluster in its own network, run the workload under the nemesis, heal,
//! restart everything, wait, read everything back, check, and write the run directory:
//! `history.jsonl`, `nemesis.jsonl`, `leaders.jsonl`, `n<id>/broker.log`, `results.json`,
//! `summary.md`, `throughput.png`, `latency.png`; with nameservers also `routes.jsonl` (what
//! each nameserver named leader) and `ns<k>/nameserver.log`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::sync::watch;

use crate::checker::Validity;
use crate::checker::group::{GroupCheckOptions, GroupReport};
use crate::checker::log::{LogCheckOptions, LogReport};
use crate::checker::register::{RegisterCheckOptions, RegisterReport};
use crate::checker::routes::{RouteSample, RoutesCheckOptions, RoutesReport};
use crate::cluster::{Cluster, ClusterOptions, agreed_leader, nameserver_leader};
use crate::group::{self, GroupOptions};
use crate::history::{HistoryWriter, Key, Mop, Op, OpType};
use crate::membership;
use crate::nemesis::{FaultKind, Nemesis, Window};
use crate::register::{self, RegisterOptions};
use crate::workload::{self, Clients, Ids, LogOptions};

/// What the clients do during a run, and which checker judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Sends and polls on keyed queues ([`crate::workload`], [`crate::checker::log`]).
    Log,
    /// Offset commits and reads as registers ([`crate::register`],
    /// [`crate::checker::register`]).
    Register,
    /// A consumer group of pop consumers with rebalances, crashes and acks
    /// ([`crate::group`], [`crate::checker::group`]).
    Group,
    /// The log workload with producer retries of sends whose outcome is unknown, under
    /// producer deduplication: a retry must not store a second copy.
    Dedup,
}

impl Workload {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "log" => Ok(Self::Log),
            "register" => Ok(Self::Register),
            "group" => Ok(Self::Group),
            "dedup" => Ok(Self::Dedup),
            other => {
                anyhow::bail!("unknown workload {other:?}: expected log, register, group or dedup")
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Register => "register",
            Self::Group => "group",
            Self::Dedup => "dedup",
        }
    }

    /// Whether the run's history is the log workload's (checked by the log checker).
    fn is_log(self) -> bool {
        matches!(self, Self::Log | Self::Dedup)
    }

    /// The topic of `key`.
    fn topic(self, key: Key) -> String {
        match self {
            Self::Log | Self::Dedup => workload::topic(key),
            Self::Register => register::topic(key),
            Self::Group => group::topic(key),
        }
    }
}

/// Producer retries of an unknown send in the dedup workload.
const DEDUP_RETRIES: u32 = 3;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub name: String,
    pub nodes: usize,
    pub faults: Vec<FaultKind>,
    pub time_limit: Duration,
    pub seed: u64,
    /// The run's directory is `<out>/<name>-<seed>`.
    pub out: PathBuf,
    pub broker_bin: PathBuf,
    /// This harness's binary, which also serves the lazyfs mounts.
    pub jepsen_bin: PathBuf,
    /// Nameservers beside the group (0: none); clients then use them as access points too.
    pub nameservers: usize,
    pub nameserver_bin: PathBuf,
    pub workload: Workload,
    /// The log workload's options (used when `workload` is `Log`).
    pub log: LogOptions,
    /// The register workload's options (used when `workload` is `Register`).
    pub register: RegisterOptions,
    /// The group workload's options (used when `workload` is `Group`).
    pub group: GroupOptions,
    /// Calm time after healing and restarting, before the final reads.
    pub quiet: Duration,
    pub min_ok_sends: usize,
    pub min_ok_polls: usize,
    /// The register workload's vacuity guards, before scaling by occupied slots.
    pub min_ok_writes: usize,
    pub min_ok_reads: usize,
    /// The register checker's cap on search states per key.
    pub max_states: usize,
    /// The command line that reproduces this run, for the report.
    pub command: String,
}

/// A leader as the monitor saw it change.
#[derive(Debug, Clone, Serialize)]
pub struct LeaderChange {
    pub time_ns: u64,
    pub leader: Option<u64>,
    pub term: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub name: String,
    pub valid: Validity,
    pub workload: Workload,
    pub seed: u64,
    pub command: String,
    pub nodes: usize,
    pub faults: Vec<FaultKind>,
    pub time_limit_s: f64,
    pub unknown_reasons: Vec<String>,
    pub failures: Vec<String>,
    pub fault_windows: Vec<Window>,
    pub nemesis_errors: Vec<String>,
    /// Distinct (leader, term) pairs seen after the first.
    pub leader_changes: usize,
    /// Keys where some node's queue (log) or committed offset (register) differs from the
    /// others after quiescence.
    pub replica_divergence: Vec<String>,
    /// Keys where no send (log) or write (register) succeeded within the liveness deadline
    /// after healing.
    pub not_live: Vec<Key>,
    /// Keys the final reads could not finish (log: the drain; register: a read through
    /// every member).
    pub drain_unfinished: Vec<Key>,
    /// Acknowledged messages whose store timestamp lies off the real clock (clock faults
    /// must show here, or they never reached the broker).
    pub clock_skew_seen: SkewSeen,
    /// The group's membership at the end, when membership changes ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_membership: Option<membership::View>,
    /// The log checker's report (log workload only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<LogReport>,
    /// The register checker's report (register workload only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub register: Option<RegisterReport>,
    /// The group checker's report (group workload only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupReport>,
    pub nameservers: usize,
    /// The routes checker's report (runs with nameservers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes: Option<RoutesReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plot_error: Option<String>,
    pub dir: PathBuf,
}

pub async fn run(opts: &RunOptions) -> Result<Results> {
    let dir = opts.out.join(format!("{}-{}", opts.name, opts.seed));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let has = |k: FaultKind| opts.faults.contains(&k);
    anyhow::ensure!(
        !has(FaultKind::NameserverPartition) || opts.nameservers > 0,
        "nameserver-partition faults need nameservers (--nameservers 1 or more)"
    );
    let cluster_opts = ClusterOptions {
        size: opts.nodes,
        spares: cluster_spares(opts),
        broker_bin: opts.broker_bin.clone(),
        jepsen_bin: opts.jepsen_bin.clone(),
        lazyfs: opts.faults.iter().any(|k| k.needs_lazyfs()),
        faketime: if has(FaultKind::Clock) {
            Some(crate::clock::library()?)
        } else {
            None
        },
        nameservers: opts.nameservers,
        nameserver_bin: opts.nameserver_bin.clone(),
    };
    let mut cluster = Cluster::start_with(&cluster_opts, &dir)?;
    let outcome = run_in(opts, &dir, &mut cluster).await;
    cluster.stop_all();
    let results = match outcome {
        Ok(r) => r,
        Err(e) => {
            let tail = cluster.logs_tail(20);
            let _ = std::fs::write(dir.join("error.txt"), format!("{e:#}\n\n{tail}"));
            return Err(e.context(format!("run {} (logs in {})", opts.name, dir.display())));
        }
    };
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    std::fs::write(dir.join("summary.md"), summary(&results))?;
    Ok(results)
}

async fn run_in(opts: &RunOptions, dir: &Path, cluster: &mut Cluster) -> Result<Results> {
    cluster.wait_leader(Duration::from_secs(30)).await?;
    for key in 0..keys(opts) {
        cluster.create_topic(&opts.workload.topic(key), 1).await?;
    }
    if opts.workload == Workload::Group {
        cluster.put_consumer_group(crate::group::GROUP).await?;
    }
    cluster.wait_caught_up(Duration::from_secs(30)).await?;

    let history = Arc::new(HistoryWriter::create(dir.join("history.jsonl"))?);
    // Every log of the run (history, nemesis, leaders) counts time from here.
    let start = history.start();
    let wall_start_ms = crate::clock::real_now_ms() - start.elapsed().as_millis() as i64;
    let ids = Arc::new(Ids::new());
    let op_timeout = match opts.workload {
        Workload::Log | Workload::Dedup => opts.log.op_timeout,
        Workload::Register => opts.register.op_timeout,
        Workload::Group => opts.group.op_timeout,
    };
    let clients = Clients::new(cluster.access_points(), op_timeout)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let monitor = tokio::spawn(monitor(
        cluster.addrs(),
        File::create(dir.join("leaders.jsonl"))?,
        start,
        stop_rx.clone(),
    ));
    let route_sampler = if opts.nameservers > 0 {
        let nameservers = cluster
            .nameservers
            .iter()
            .map(|n| (n.id, n.addr.clone()))
            .collect();
        Some(tokio::spawn(sample_routes(
            nameservers,
            File::create(dir.join("routes.jsonl"))?,
            start,
            stop_rx.clone(),
        )))
    } else {
        None
    };
    let load = {
        let (opts, clients, history, ids) =
            (opts.clone(), clients.clone(), history.clone(), ids.clone());
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            match opts.workload {
                Workload::Log => {
                    workload::run(&opts.log, &clients, &history, &ids, opts.seed, stop).await
                }
                Workload::Dedup => {
                    let mut log = opts.log.clone();
                    log.retries = log.retries.max(DEDUP_RETRIES);
                    workload::run(&log, &clients, &history, &ids, opts.seed, stop).await
                }
                Workload::Register => {
                    register::run(&opts.register, &clients, &history, &ids, opts.seed, stop).await
                }
                Workload::Group => {
                    group::run(&opts.group, &clients, &history, &ids, opts.seed, stop).await
                }
            }
        })
    };

    let mut nemesis = Nemesis::new(
        opts.seed,
        opts.faults.clone(),
        File::create(dir.join("nemesis.jsonl"))?,
        start,
    );
    nemesis.run(cluster, Instant::now() + opts.time_limit).await;

    // Heal everything and let the group settle while the clients keep going, then stop
    // them: the clients see the recovery too.
    cluster.net.heal()?;
    cluster.reset_clocks()?;
    cluster.restore_all()?;
    // A group that elects no leader once every fault is undone has failed (liveness); its
    // history is still checked for what it did before.
    let mut not_healed = None;
    let final_membership = if opts.faults.contains(&FaultKind::Membership) {
        match membership::finish(cluster).await {
            Ok(v) => Some(v),
            Err(e) => {
                not_healed = Some(format!("{e:#}"));
                None
            }
        }
    } else {
        None
    };
    let _ = stop_tx.send(true);
    let _ = load.await;
    if not_healed.is_none()
        && let Err(e) = cluster.wait_leader(Duration::from_secs(60)).await
    {
        not_healed = Some(format!("{e:#}"));
    }
    // After the quiet time: liveness, then every member must catch up with the leader's
    // commit index. A node that cannot (it crashed, or its state is broken) fails the run;
    // the history is still checked for what happened before.
    let mut not_live = Vec::new();
    if not_healed.is_none() {
        tokio::time::sleep(opts.quiet).await;
        not_live = match opts.workload {
            Workload::Register => {
                let within = Duration::from_secs(30);
                register::liveness(&opts.register, &clients, &history, &ids, within).await
            }
            _ => liveness(opts, &clients, &history, &ids).await,
        };
        if let Err(e) = cluster.wait_caught_up(Duration::from_secs(60)).await {
            not_healed = Some(format!("{e:#}"));
        }
    }
    // Every nameserver must name the group's leader again once the cuts are healed.
    let routes_stale = if not_healed.is_none() && opts.nameservers > 0 {
        routes_converged(cluster, Duration::from_secs(30)).await
    } else {
        None
    };
    let (drain_unfinished, replica_divergence, stored) = if not_healed.is_none() {
        match opts.workload {
            Workload::Log | Workload::Dedup | Workload::Group => {
                let deadline = Instant::now() + Duration::from_secs(60);
                let drain_unfinished = if opts.workload == Workload::Group {
                    group::drain(&opts.group, &clients, &history, &ids, deadline).await
                } else {
                    workload::drain(&opts.log, &clients, &history, &ids, deadline).await
                };
                history.flush()?;
                let (replica_divergence, stored) = if opts.workload == Workload::Group {
                    let diverged = offset_replicas(opts, cluster, group::GROUP).await?;
                    (diverged, StoreTimes::new())
                } else {
                    replicas(opts, cluster).await?
                };
                (drain_unfinished, replica_divergence, stored)
            }
            Workload::Register => {
                let members = cluster
                    .ids()
                    .into_iter()
                    .map(|id| cluster.slot(id))
                    .collect::<Result<Vec<usize>>>()?;
                let reads_unfinished = register::final_reads(
                    &opts.register,
                    &clients,
                    &history,
                    &ids,
                    &members,
                    Duration::from_secs(60),
                )
                .await;
                history.flush()?;
                let replica_divergence = offset_replicas(opts, cluster, register::GROUP).await?;
                (reads_unfinished, replica_divergence, StoreTimes::new())
            }
        }
    } else {
        history.flush()?;
        let all: Vec<Key> = (0..keys(opts)).collect();
        // Without a leader nothing was tried: no key is live.
        if not_live.is_empty() && cluster.leader().await.is_none() {
            not_live = all.clone();
        }
        (all, Vec::new(), StoreTimes::new())
    };
    let leaders_seen = monitor.await.unwrap_or_default();
    let leader_changes = leaders_seen.len().saturating_sub(1);
    let routes = match route_sampler {
        Some(task) => {
            let samples = task.await.unwrap_or_default();
            Some(crate::checker::routes::check(
                &samples,
                &leaders_seen,
                &RoutesCheckOptions {
                    // A sample per nameserver every 250 ms: at least half of them answered.
                    min_samples: (opts.time_limit.as_secs_f64() * 2.0) as usize * opts.nameservers,
                },
            ))
        }
        None => None,
    };

    let ops = history.ops();
    // A plot that cannot be drawn (no font installed) costs the picture, not the verdict.
    let plot_error = crate::plot::plot_run(dir, &ops, &nemesis.windows)
        .err()
        .map(|e| format!("{e:#}"));
    // Clients spread over every slot, spares too, and an empty slot refuses at once: expect
    // that share fewer successes (nameservers relay, so they count as nodes). Faults meant
    // to halt the group leave only the time outside them to succeed in.
    let share = available_share(&nemesis.windows, opts.time_limit);
    let serving = opts.nodes + opts.nameservers;
    let expected =
        |min: usize| (min as f64 * share) as usize * serving / (serving + cluster_spares(opts));
    let (mut log, mut register, mut group) = (None, None, None);
    match opts.workload {
        Workload::Log | Workload::Dedup => {
            let report = crate::checker::log::check(
                &ops,
                &LogCheckOptions {
                    min_ok_sends: expected(opts.min_ok_sends),
                    min_ok_polls: expected(opts.min_ok_polls),
                },
            );
            log = Some(report);
        }
        Workload::Register => {
            register = Some(crate::checker::register::check(
                &ops,
                &RegisterCheckOptions {
                    min_ok_writes: expected(opts.min_ok_writes),
                    min_ok_reads: expected(opts.min_ok_reads),
                    max_states: opts.max_states,
                },
            ));
        }
        Workload::Group => {
            group = Some(crate::checker::group::check(
                &ops,
                &GroupCheckOptions {
                    min_ok_sends: expected(opts.min_ok_sends),
                    // Consumers are fewer than the log workload's pollers, half of their
                    // steps are acks, and a receive long-polls: half the polls' floor.
                    min_ok_receives: expected(opts.min_ok_polls) / 2,
                },
            ));
        }
    }

    let clock_skew_seen = skew_seen(&ops, &stored, wall_start_ms);

    let mut failures = Vec::new();
    if let Some(why) = &not_healed {
        let exited = cluster.exited();
        failures.push(format!(
            "the group did not recover after healing ({why}){}",
            if exited.is_empty() {
                String::new()
            } else {
                format!("; nodes that exited on their own: {}", exited.join("; "))
            }
        ));
    }
    let mut unknown_reasons = Vec::new();
    // Each checker's doubts become the run's; a checker that failed says what it found.
    let mut absorb = |valid: Validity, reasons: &[String], failure: String| {
        unknown_reasons.extend(reasons.iter().cloned());
        if valid == Validity::Fail {
            failures.push(failure);
        }
    };
    let counts = |c: &BTreeMap<String, usize>| {
        c.iter()
            .map(|(k, v)| format!("{k} x{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(log) = &log {
        let failure = format!("log checker: {}", counts(&log.error_counts));
        absorb(log.valid, &log.unknown_reasons, failure);
    }
    if let Some(register) = &register {
        let failure = format!(
            "register checker: not linearizable on keys {:?}",
            register.anomalous_keys
        );
        absorb(register.valid, &register.unknown_reasons, failure);
    }
    if let Some(group) = &group {
        let failure = format!("group checker: {}", counts(&group.error_counts));
        absorb(group.valid, &group.unknown_reasons, failure);
    }
    if let Some(routes) = &routes {
        let failure = format!("routes checker: {}", counts(&routes.error_counts));
        absorb(routes.valid, &routes.unknown_reasons, failure);
    }
    if let Some(stale) = &routes_stale {
        failures.push(format!("routes after healing: {stale}"));
    }
    if !replica_divergence.is_empty() {
        failures.push(format!(
            "replicas differ: {}",
            replica_divergence.join("; ")
        ));
    }
    if !not_live.is_empty() {
        let op = match opts.workload {
            Workload::Log | Workload::Dedup | Workload::Group => "send",
            Workload::Register => "write",
        };
        failures.push(format!(
            "no {op} succeeded after healing on keys {not_live:?}"
        ));
    }
    if !drain_unfinished.is_empty() {
        unknown_reasons.push(format!(
            "final reads did not finish for keys {drain_unfinished:?}"
        ));
    }
    if !opts.faults.is_empty() {
        if nemesis.windows.is_empty() {
            unknown_reasons.push("no fault was applied".into());
        }
        for kind in &opts.faults {
            let took = nemesis
                .windows
                .iter()
                .any(|w| w.fault.kind == *kind && w.fault.effective);
            if !took {
                unknown_reasons.push(format!("no {} fault took effect", kind.name()));
            }
        }
        // Only the log workload stores messages, whose timestamps show the skew; register
        // runs cannot tell (docs/jepsen.md).
        if opts.workload.is_log()
            && opts.faults.contains(&FaultKind::Clock)
            && clock_skew_seen.messages == 0
        {
            unknown_reasons
                .push("clock faults ran but no stored message carries a skewed timestamp".into());
        }
        if !nemesis.errors.is_empty() {
            unknown_reasons.push(format!("{} faults failed to apply", nemesis.errors.len()));
        }
        if leader_changes == 0 {
            unknown_reasons.push("faults ran but the leader never changed".into());
        }
    }
    let valid = Validity::judge(!failures.is_empty(), &unknown_reasons);
    Ok(Results {
        name: opts.name.clone(),
        valid,
        workload: opts.workload,
        seed: opts.seed,
        command: opts.command.clone(),
        nodes: opts.nodes,
        faults: opts.faults.clone(),
        time_limit_s: opts.time_limit.as_secs_f64(),
        unknown_reasons,
        failures,
        fault_windows: nemesis.windows.clone(),
        nemesis_errors: nemesis.errors.clone(),
        leader_changes,
        replica_divergence,
        not_live,
        drain_unfinished,
        clock_skew_seen,
        final_membership,
        log,
        register,
        group,
        nameservers: opts.nameservers,
        routes,
        plot_error,
        dir: dir.to_path_buf(),
    })
}

/// Records every change of the agreed leader until `stop`, then returns the distinct
/// (leader, term) pairs seen, in the order first seen.
async fn monitor(
    addrs: Vec<String>,
    mut out: File,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<(u64, u64)> {
    let mut last: Option<Option<(u64, u64)>> = None;
    let mut seen = Vec::new();
    loop {
        let now = agreed_leader(&addrs).await;
        if last != Some(now) {
            let change = LeaderChange {
                time_ns: start.elapsed().as_nanos() as u64,
                leader: now.map(|l| l.0),
                term: now.map(|l| l.1),
            };
            if let Ok(line) = serde_json::to_string(&change) {
                let _ = writeln!(out, "{line}");
            }
            if let Some(l) = now
                && !seen.contains(&l)
            {
                seen.push(l);
            }
            last = Some(now);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => if *stop.borrow() { break },
        }
    }
    seen
}

/// Asks every nameserver whom it names the group's leader, every 250 ms until `stop`;
/// records the answers (to `routes.jsonl` too) and returns them. Unanswered asks are left
/// out: a nameserver cut off from the harness says nothing either way.
async fn sample_routes(
    nameservers: Vec<(u64, String)>,
    mut out: File,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<RouteSample> {
    let mut samples = Vec::new();
    loop {
        let answers = futures::future::join_all(
            nameservers
                .iter()
                .map(|(_, addr)| nameserver_leader(addr, crate::cluster::GROUP)),
        )
        .await;
        let time_ns = start.elapsed().as_nanos() as u64;
        for ((id, _), answer) in nameservers.iter().zip(answers) {
            let Ok(leader) = answer else { continue };
            let sample = RouteSample {
                time_ns,
                nameserver: *id,
                leader,
            };
            if let Ok(line) = serde_json::to_string(&sample) {
                let _ = writeln!(out, "{line}");
            }
            samples.push(sample);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => if *stop.borrow() { break },
        }
    }
    samples
}

/// Waits until every nameserver names the group's agreed leader; what the laggards name
/// when `timeout` passes.
async fn routes_converged(cluster: &Cluster, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let agreed = cluster.leader().await;
        let mut stale = Vec::new();
        for ns in &cluster.nameservers {
            let named = nameserver_leader(&ns.addr, crate::cluster::GROUP).await;
            match (&named, agreed) {
                (Ok(Some(l)), Some(a)) if *l == a => {}
                _ => stale.push(format!("nameserver {} names {named:?}", ns.id)),
            }
        }
        if stale.is_empty() {
            return None;
        }
        if Instant::now() > deadline {
            return Some(format!(
                "the group's leader is {agreed:?} but after {timeout:?} {}",
                stale.join("; ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// After healing, every key must take a send again within 30 s.
async fn liveness(
    opts: &RunOptions,
    clients: &Clients,
    history: &Arc<HistoryWriter>,
    ids: &Ids,
) -> Vec<Key> {
    let deadline = Instant::now() + Duration::from_secs(30);
    workload::dead_keys(
        keys(opts),
        clients.addrs.len(),
        deadline,
        |node, key| async move {
            let topic = opts.workload.topic(key);
            let (process, value) = (ids.process(), ids.value());
            let outcome =
                workload::recorded_send(clients, history, process, node, &topic, key, value).await;
            Some(outcome)
        },
    )
    .await
}

/// Keys of the run's workload.
fn keys(opts: &RunOptions) -> Key {
    match opts.workload {
        Workload::Log | Workload::Dedup => opts.log.keys,
        Workload::Register => opts.register.keys,
        Workload::Group => opts.group.keys,
    }
}

/// Namespaces beyond the group's nodes: room for two added nodes in membership runs.
fn cluster_spares(opts: &RunOptions) -> usize {
    if opts.faults.contains(&FaultKind::Membership) {
        2
    } else {
        0
    }
}

/// Waits for every member to apply what the final reads committed, before the replicas are
/// compared. A member that cannot is the product failing, not the harness: it comes back
/// as the replica check's finding.
async fn caught_up(cluster: &Cluster) -> Option<String> {
    cluster
        .wait_caught_up(Duration::from_secs(60))
        .await
        .err()
        .map(|e| format!("members did not catch up before the replica check: {e:#}"))
}

/// Each stored message's store timestamp: (key, offset) -> ms since the epoch.
type StoreTimes = BTreeMap<(Key, u64), i64>;

/// After quiescence every node must hold the same messages at the same offsets (Raft's
/// log matching, seen through each node's own applied state). Also returns the messages'
/// store timestamps.
async fn replicas(opts: &RunOptions, cluster: &Cluster) -> Result<(Vec<String>, StoreTimes)> {
    if let Some(lag) = caught_up(cluster).await {
        return Ok((vec![lag], StoreTimes::new()));
    }
    let mut diverged = Vec::new();
    let mut stored = StoreTimes::new();
    for key in 0..opts.log.keys {
        let topic = workload::topic(key);
        let mut views: BTreeMap<u64, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
        for id in cluster.ids() {
            let msgs = cluster.read_queue(id, &topic, 0).await?;
            for m in &msgs {
                stored.insert((key, m.offset), m.store_timestamp_ms);
            }
            views.insert(
                id,
                msgs.into_iter()
                    .map(|m| (m.offset, m.body.to_vec()))
                    .collect(),
            );
        }
        let mut it = views.iter();
        if let Some((first_id, first)) = it.next() {
            for (id, view) in it {
                if view != first {
                    let at = first
                        .iter()
                        .zip(view.iter())
                        .position(|(a, b)| a != b)
                        .unwrap_or(first.len().min(view.len()));
                    diverged.push(format!(
                        "key {key}: node {first_id} has {} messages, node {id} has {}, first difference at position {at}",
                        first.len(),
                        view.len()
                    ));
                }
            }
        }
    }
    Ok((diverged, stored))
}

/// After quiescence every node must hold the same offset of `group` for each key (the
/// register workload's commits, the group workload's acks), read through the admin API
/// from its own applied state (not the client API, which answers from the leader).
async fn offset_replicas(opts: &RunOptions, cluster: &Cluster, group: &str) -> Result<Vec<String>> {
    if let Some(lag) = caught_up(cluster).await {
        return Ok(vec![lag]);
    }
    let mut diverged = Vec::new();
    for key in 0..keys(opts) {
        let topic = opts.workload.topic(key);
        let mut views: BTreeMap<u64, Option<u64>> = BTreeMap::new();
        for id in cluster.ids() {
            views.insert(id, cluster.consumer_offset(id, group, &topic, 0).await?);
        }
        let distinct: std::collections::BTreeSet<Option<u64>> = views.values().copied().collect();
        if distinct.len() > 1 {
            diverged.push(format!("key {key}: offsets by node {:?}", views));
        }
    }
    Ok(diverged)
}

/// How far stored messages' timestamps strayed from the real clock.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SkewSeen {
    /// Acknowledged messages stamped more than [`SKEW_MIN_MS`] outside their send's real
    /// time span.
    pub messages: usize,
    /// The largest stray ahead of real time, and behind it (ms; 0 if none).
    pub max_ahead_ms: i64,
    pub max_behind_ms: i64,
}

/// Strays below this are the machine's own jitter, not a clock fault.
pub const SKEW_MIN_MS: i64 = 500;

/// Compares each acknowledged send's store timestamp with the real time span of the send
/// (invocation to acknowledgement): the stamp of an unskewed leader falls inside it.
fn skew_seen(ops: &[Op], stored: &StoreTimes, wall_start_ms: i64) -> SkewSeen {
    let mut invoked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut seen = SkewSeen::default();
    for op in ops {
        if op.kind == OpType::Invoke {
            invoked.insert(op.process, op.time_ns);
            continue;
        }
        if op.kind != OpType::Ok {
            continue;
        }
        let Some(&from_ns) = invoked.get(&op.process) else {
            continue;
        };
        for m in &op.value {
            if let Mop::Send {
                key,
                offset: Some(offset),
                ..
            } = m
                && let Some(&ts) = stored.get(&(*key, *offset))
            {
                let lo = wall_start_ms + (from_ns / 1_000_000) as i64;
                let hi = wall_start_ms + (op.time_ns / 1_000_000) as i64 + 1;
                let stray = if ts < lo {
                    ts - lo
                } else if ts > hi {
                    ts - hi
                } else {
                    0
                };
                if stray.abs() > SKEW_MIN_MS {
                    seen.messages += 1;
                    seen.max_ahead_ms = seen.max_ahead_ms.max(stray);
                    seen.max_behind_ms = seen.max_behind_ms.max(-stray);
                }
            }
        }
    }
    seen
}

/// The run's verdict for a reader.
pub fn summary(r: &Results) -> String {
    let mut s = format!(
        "# {}: {}\n\n- seed {}; {} nodes; faults {:?}; {} s\n- reproduce: `{}`\n",
        r.name,
        match r.valid {
            Validity::Pass => "PASS",
            Validity::Fail => "FAIL",
            Validity::Unknown => "UNKNOWN",
        },
        r.seed,
        r.nodes,
        r.faults,
        r.time_limit_s,
        r.command
    );
    s += &format!("- workload: {}\n", r.workload.name());
    if let Some(log) = &r.log {
        let st = &log.stats;
        s += &format!(
            "- operations: {} ok sends, {} unknown, {} failed; {} ok polls\n",
            st.send_ok, st.send_info, st.send_fail, st.poll_ok
        );
    }
    if let Some(group) = &r.group {
        let st = &group.stats;
        s += &format!(
            "- operations: {} ok sends, {} unknown, {} failed; {} ok receives ({} got messages), {} unknown, {} failed; {} ok acks, {} unknown, {} failed; {} group-offset reads\n- deliveries: {} values received, {} redeliveries; {} acknowledged sends never received\n",
            st.send_ok,
            st.send_info,
            st.send_fail,
            st.receive_ok,
            st.receive_ok_nonempty,
            st.receive_info,
            st.receive_fail,
            st.ack_ok,
            st.ack_info,
            st.ack_fail,
            st.offset_reads_ok,
            st.values_received,
            st.duplicate_deliveries,
            st.unreceived
        );
    }
    if let Some(register) = &r.register {
        let st = &register.stats;
        s += &format!(
            "- operations: {} ok writes, {} unknown, {} failed; {} ok reads ({} of a written value), {} failed\n",
            st.write_ok, st.write_info, st.write_fail, st.read_ok, st.read_ok_value, st.read_fail
        );
    }
    s += &format!(
        "- faults applied: {} ({} took effect); leader changes seen: {}\n",
        r.fault_windows.len(),
        r.fault_windows.iter().filter(|w| w.fault.effective).count(),
        r.leader_changes
    );
    for w in &r.fault_windows {
        s += &format!(
            "  - {:.1}-{:.1} s: {} {} on {:?}{}{}\n",
            w.start_ns as f64 / 1e9,
            w.end_ns as f64 / 1e9,
            w.fault.kind.name(),
            w.fault.shape,
            w.fault.nodes,
            if w.fault.offsets_ms.is_empty() {
                String::new()
            } else {
                format!(", offsets (node, ms) {:?}", w.fault.offsets_ms)
            },
            if w.fault.effective {
                ""
            } else {
                " (did not take effect)"
            }
        );
    }
    if r.clock_skew_seen.messages > 0 {
        s += &format!(
            "- skewed store timestamps: {} messages, up to {} ms ahead and {} ms behind\n",
            r.clock_skew_seen.messages,
            r.clock_skew_seen.max_ahead_ms,
            r.clock_skew_seen.max_behind_ms
        );
    }
    if let Some(routes) = &r.routes {
        s += &format!(
            "- nameservers: {}; {} route samples ({} with no leader), {} regressions to an older term\n",
            r.nameservers, routes.samples, routes.leaderless_samples, routes.regressions
        );
    }
    if let Some(m) = &r.final_membership {
        s += &format!(
            "- final membership: voters {:?}, learners {:?}\n",
            m.voters, m.learners
        );
    }
    for f in &r.failures {
        s += &format!("- FAILURE: {f}\n");
    }
    for u in &r.unknown_reasons {
        s += &format!("- unknown: {u}\n");
    }
    if let Some(e) = &r.plot_error {
        s += &format!("- no plots: {e}\n");
    }
    let log_errors = r.log.iter().flat_map(|l| &l.errors);
    for (class, examples) in log_errors.chain(r.group.iter().flat_map(|g| &g.errors)) {
        s += &format!("\n## {class}\n\n");
        for e in examples.iter().take(5) {
            s += &format!("- `{e}`\n");
        }
    }
    if let Some(routes) = r.routes.as_ref().filter(|r| !r.anomalies.is_empty()) {
        s += "\n## routes\n\n";
        for a in &routes.anomalies {
            s += &format!("- {a}\n");
        }
    }
    if let Some(register) = &r.register {
        s += &register_summary(register);
    }
    s
}

/// Per key: linearizable or not, and for a violation its witness.
fn register_summary(report: &RegisterReport) -> String {
    let mut s = String::from("\n## Registers\n\n");
    for (key, k) in &report.keys {
        let verdict = match k.valid {
            Validity::Pass => "linearizable",
            Validity::Fail => "NOT linearizable",
            Validity::Unknown => "unknown",
        };
        s += &format!(
            "- key {key}: {verdict} ({} calls, {} states explored){}\n",
            k.calls,
            k.states_explored,
            k.reason
                .as_ref()
                .map_or(String::new(), |r| format!(": {r}"))
        );
        let Some(w) = &k.witness else { continue };
        s += &format!(
            "  - {}{}: {}\n",
            w.kind,
            if w.minimal { "" } else { " (not minimised)" },
            w.explanation
        );
        let op = |o: &crate::checker::register::OpRef| {
            format!(
                "{:?} {:?} of {} by process {} via {}, {:.3}-{} s",
                o.f,
                o.kind,
                o.value.map_or("nil".into(), |v| v.to_string()),
                o.process,
                o.node.as_deref().unwrap_or("?"),
                o.invoke_s,
                o.complete_s.map_or("?".into(), |t| format!("{t:.3}"))
            )
        };
        s += &format!("    - read: {}\n", op(&w.read));
        if let Some(write) = &w.write {
            s += &format!("    - its write: {}\n", op(write));
        }
        for c in &w.conflicts {
            s += &format!("    - conflicts with: {}\n", op(c));
        }
    }
    s
}

/// The share of `time_limit` not covered by a fault that halts the group (overlapping
/// windows counted once).
fn available_share(windows: &[Window], time_limit: Duration) -> f64 {
    let mut halted: Vec<(u64, u64)> = windows
        .iter()
        .filter(|w| w.fault.kind.halts_group())
        .map(|w| (w.start_ns, w.end_ns.max(w.start_ns)))
        .collect();
    halted.sort();
    let mut total = 0u64;
    let mut covered_to = 0u64;
    for (start, end) in halted {
        let start = start.max(covered_to);
        if end > start {
            total += end - start;
            covered_to = end;
        }
    }
    let limit = time_limit.as_nanos().max(1) as f64;
    (1.0 - total as f64 / limit).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nemesis::Fault;

    fn window(kind: FaultKind, start_s: u64, end_s: u64) -> Window {
        Window {
            start_ns: start_s * 1_000_000_000,
            end_ns: end_s * 1_000_000_000,
            fault: Fault::new(kind, "test", vec![1]),
        }
    }

    #[test]
    fn only_halting_faults_shrink_the_available_share_and_overlaps_count_once() {
        let limit = Duration::from_secs(100);
        assert_eq!(available_share(&[], limit), 1.0);
        let kill = window(FaultKind::Kill, 0, 50);
        assert_eq!(available_share(&[kill], limit), 1.0);
        let windows = [
            window(FaultKind::PauseKill, 10, 30),
            window(FaultKind::PauseKill, 20, 40),
            window(FaultKind::PauseKill, 60, 70),
        ];
        assert!((available_share(&windows, limit) - 0.6).abs() < 1e-9);
        let all = [window(FaultKind::PauseKill, 0, 500)];
        assert_eq!(available_share(&all, limit), 0.0);
    }
}
