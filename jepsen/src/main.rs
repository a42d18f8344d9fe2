//! `rocketraft-jepsen`: runs rocketraft under faults and says whether it kept its promises.
//!
//! - `run`: one run with the chosen faults;
//! - `suite smoke|long`: the fixed sets of runs CI and the published results use;
//! - `check`: checks a saved history again;
//! - `lazyfs`: serves one lazyfs mount (the harness starts one per node for lost-write
//!   faults; see `rocketraft_jepsen::lazyfs`).
//!
//! Exit code: 0 every run passed, 1 some run failed a check, 2 some run was inconclusive
//! (too few operations, faults that did not apply, no leader change), 3 the harness broke.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use rocketraft_jepsen::checker::Validity;
use rocketraft_jepsen::checker::group::GroupCheckOptions;
use rocketraft_jepsen::checker::log::LogCheckOptions;
use rocketraft_jepsen::checker::register::{MAX_STATES_DEFAULT, RegisterCheckOptions};
use rocketraft_jepsen::group::GroupOptions;
use rocketraft_jepsen::history::{F, Op};
use rocketraft_jepsen::nemesis::parse_faults;
use rocketraft_jepsen::register::RegisterOptions;
use rocketraft_jepsen::run::{Results, RunOptions, Workload, run};
use rocketraft_jepsen::workload::LogOptions;

#[derive(Parser)]
#[command(
    version,
    about = "Fault-injection runs against a rocketraft broker group"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One run of a workload under the given faults.
    Run {
        #[command(flatten)]
        common: Common,
        /// log (sends and polls on queues), register (offset commits and reads, checked
        /// for linearizability), group (a consumer group of pop consumers that receive,
        /// ack, rebalance and crash) or dedup (log, with producer retries of unknown sends).
        #[arg(long, default_value = "log")]
        workload: String,
        /// Faults, comma-separated: kill, pause, partition, membership, lose-unfsynced,
        /// pause-kill, clock, nameserver-partition (or none).
        #[arg(long, default_value = "kill,pause,partition")]
        nemesis: String,
        /// Seed of the workload and the nemesis schedule; random if unset.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// A fixed set of runs: smoke (CI: kill, pause, partition, mixed, pause-kill, one
    /// register run under partitions, one group and one dedup run, one run with
    /// nameservers under broker<->nameserver partitions) or long
    /// (each fault class 10 times, mixes, 5-node groups for bridge and ring partitions, and
    /// register, group and dedup runs). The log workload unless an entry says otherwise.
    Suite {
        #[command(flatten)]
        common: Common,
        /// smoke or long.
        which: String,
        /// First seed; run i uses seed + i.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Only the entries whose run name (e.g. `kill`, `group-kill+pause+partition`) is
        /// one of these, comma-separated: a long suite can be run a part at a time. Seeds
        /// stay those of the whole suite.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Checks a saved history.jsonl again and prints the checker's report: the register
    /// checker if the history has register ops, else the log checker.
    Check {
        history: PathBuf,
        /// The register checker's cap on search states per key.
        #[arg(long, default_value_t = MAX_STATES_DEFAULT)]
        max_states: usize,
    },
    /// Mounts `backing` at `mount` through a FUSE layer that keeps written data in memory
    /// until it is fsynced. SIGUSR1 drops every unsynced write (a power loss); SIGTERM
    /// unmounts. Needs root (or FUSE rights) and /dev/fuse.
    Lazyfs {
        backing: PathBuf,
        mount: PathBuf,
        /// JSON status file, rewritten after the mount and after every drop.
        #[arg(long)]
        status: Option<PathBuf>,
        /// fsync syncs nothing: a disk that lies, for checking that the harness catches the
        /// lost writes (runs set it with ROCKETRAFT_JEPSEN_LAZYFS_IGNORE_FSYNC=1).
        #[arg(long)]
        ignore_fsync: bool,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Seconds of workload under faults per run (the final reads come after); default 60,
    /// and 120 for the long suite.
    #[arg(long)]
    time_limit: Option<u64>,
    /// Broker nodes in the group.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Client operations per second over all clients.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Keys (topics of one queue) the workload spreads over.
    #[arg(long, default_value_t = 4)]
    keys: u32,
    /// Where run directories go.
    #[arg(long, default_value = "jepsen-runs")]
    out: PathBuf,
    /// The rocketraft-broker binary; by default the one next to this binary.
    #[arg(long)]
    broker_bin: Option<PathBuf>,
    /// The rocketraft-nameserver binary; by default the one next to the broker binary.
    #[arg(long)]
    nameserver_bin: Option<PathBuf>,
    /// Nameservers beside the group, which the brokers report to and the clients also send
    /// through; default 2 when the faults include nameserver-partition, else 0.
    #[arg(long)]
    nameservers: Option<usize>,
    /// Register workload: the checker's cap on search states per key; beyond it the key's
    /// verdict is unknown.
    #[arg(long, default_value_t = MAX_STATES_DEFAULT)]
    max_states: usize,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROCKETRAFT_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    // lazyfs runs without a tokio runtime: its control signals must be blocked in every
    // thread of the process, which only works if it blocks them before any thread starts.
    if let Cmd::Lazyfs {
        backing,
        mount,
        status,
        ignore_fsync,
    } = &cli.cmd
    {
        let served =
            rocketraft_jepsen::lazyfs::serve(backing, mount, status.as_deref(), *ignore_fsync);
        return match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rocketraft-jepsen lazyfs: {e:#}");
                ExitCode::from(3)
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rocketraft-jepsen: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(dispatch(cli.cmd)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("rocketraft-jepsen: {e:#}");
            ExitCode::from(3)
        }
    }
}

async fn dispatch(cmd: Cmd) -> Result<u8> {
    match cmd {
        Cmd::Lazyfs { .. } => anyhow::bail!("lazyfs is served before the runtime starts"),
        Cmd::Run {
            common,
            workload,
            nemesis,
            seed,
        } => {
            let seed = seed.unwrap_or_else(rand::random);
            let workload = Workload::parse(&workload)?;
            let faults = parse_faults(&nemesis)?;
            let name = run_name(workload, &nemesis, faults.is_empty());
            let opts = options(&common, workload, &name, &nemesis, seed, common.nodes, 60)?;
            let opts = RunOptions { faults, ..opts };
            Ok(exit_code(&[report(run(&opts).await)?]))
        }
        Cmd::Suite {
            common,
            which,
            seed,
            only,
        } => {
            let plan = suite(&which)?;
            let default_time = if which == "long" { 120 } else { 60 };
            let mut verdicts = Vec::new();
            for (i, (nemesis, nodes, repeat, workload)) in plan.into_iter().enumerate() {
                let faults = parse_faults(nemesis)?;
                let name = entry_name(workload, nemesis, faults.is_empty(), nodes);
                if !only.is_empty() && !only.contains(&name) {
                    continue;
                }
                for r in 0..repeat {
                    let seed = seed + (i as u64) * 100 + r as u64;
                    let nodes = nodes.unwrap_or(common.nodes);
                    let faults = faults.clone();
                    let opts = RunOptions {
                        faults,
                        ..options(&common, workload, &name, nemesis, seed, nodes, default_time)?
                    };
                    verdicts.push(report(run(&opts).await)?);
                }
            }
            anyhow::ensure!(
                !verdicts.is_empty(),
                "no entry of suite {which} is named {only:?}"
            );
            println!(
                "suite {which}: {} runs, {} passed",
                verdicts.len(),
                verdicts.iter().filter(|v| **v == Validity::Pass).count()
            );
            Ok(exit_code(&verdicts))
        }
        Cmd::Check {
            history,
            max_states,
        } => {
            let ops = rocketraft_jepsen::history::read_history(&history)?;
            let (valid, report) = if ops
                .iter()
                .any(|o| matches!(o.f, F::Receive | F::Ack | F::Offset))
            {
                let opts = GroupCheckOptions {
                    min_ok_sends: 1,
                    min_ok_receives: 1,
                };
                let r = rocketraft_jepsen::checker::group::check(&ops, &opts);
                (r.valid, serde_json::to_string_pretty(&r)?)
            } else if is_register_history(&ops) {
                let opts = RegisterCheckOptions {
                    min_ok_writes: 1,
                    min_ok_reads: 1,
                    max_states,
                };
                let r = rocketraft_jepsen::checker::register::check(&ops, &opts);
                (r.valid, serde_json::to_string_pretty(&r)?)
            } else {
                let opts = LogCheckOptions {
                    min_ok_sends: 1,
                    min_ok_polls: 1,
                };
                let r = rocketraft_jepsen::checker::log::check(&ops, &opts);
                (r.valid, serde_json::to_string_pretty(&r)?)
            };
            println!("{report}");
            Ok(exit_code(&[valid]))
        }
    }
}

/// A history the register workload wrote: it has register ops (the log workload never
/// writes them).
fn is_register_history(ops: &[Op]) -> bool {
    ops.iter().any(|o| matches!(o.f, F::Write | F::Read))
}

/// A run's directory name (before the seed): the faults, prefixed by the workload unless
/// it is the log workload (whose names predate the option).
fn run_name(workload: Workload, nemesis: &str, no_faults: bool) -> String {
    entry_name(workload, nemesis, no_faults, None)
}

/// A suite entry's name: its run name, plus the node count when the entry fixes one, so
/// that `--only partition` and `--only partition-5nodes` each select one entry.
fn entry_name(workload: Workload, nemesis: &str, no_faults: bool, nodes: Option<usize>) -> String {
    let faults = if no_faults {
        "none".to_string()
    } else {
        nemesis.replace(',', "+")
    };
    let name = match workload {
        Workload::Log => faults,
        other => format!("{}-{faults}", other.name()),
    };
    match nodes {
        Some(n) => format!("{name}-{n}nodes"),
        None => name,
    }
}

/// One entry of a suite: faults, node count if not the default, repetitions, workload.
type SuiteEntry = (&'static str, Option<usize>, usize, Workload);

/// The runs of a suite.
fn suite(which: &str) -> Result<Vec<SuiteEntry>> {
    use Workload::{Dedup, Group, Log, Register};
    Ok(match which {
        "smoke" => vec![
            ("kill", None, 1, Log),
            ("pause", None, 1, Log),
            ("partition", None, 1, Log),
            ("kill,pause,partition", None, 1, Log),
            ("pause-kill", None, 1, Log),
            // The register workload once: it is what catches stale offset reads.
            ("partition", None, 1, Register),
            ("kill,pause,partition", None, 1, Group),
            // Partitions and kills leave sends unknown, which the producers then retry.
            ("kill,partition", None, 1, Dedup),
            // Nameservers in the cluster, cut from brokers and from each other, while the
            // group also loses nodes and links.
            ("nameserver-partition,partition,kill", None, 1, Log),
        ],
        "long" => vec![
            ("kill", None, 10, Log),
            ("pause", None, 10, Log),
            ("partition", None, 10, Log),
            ("kill,pause,partition", None, 10, Log),
            ("partition", Some(5), 10, Log),
            ("membership", None, 10, Log),
            ("membership,kill,partition", None, 10, Log),
            ("lose-unfsynced", None, 10, Log),
            ("pause-kill", None, 10, Log),
            ("clock", None, 10, Log),
            (
                "clock,lose-unfsynced,membership,partition,pause",
                Some(5),
                10,
                Log,
            ),
            // A paused leader that wakes up deposed is the classic stale reader.
            ("pause", None, 1, Register),
            ("kill,pause,partition", None, 10, Group),
            ("kill,partition", None, 10, Dedup),
            ("nameserver-partition,partition,kill", None, 10, Log),
        ],
        other => anyhow::bail!("unknown suite {other:?}: expected smoke or long"),
    })
}

fn options(
    common: &Common,
    workload: Workload,
    name: &str,
    nemesis: &str,
    seed: u64,
    nodes: usize,
    default_time: u64,
) -> Result<RunOptions> {
    let time_limit = common.time_limit.unwrap_or(default_time);
    let jepsen_bin = std::env::current_exe()?;
    let broker_bin = match &common.broker_bin {
        Some(p) => p.clone(),
        None => jepsen_bin
            .parent()
            .context("this binary's directory")?
            .join("rocketraft-broker"),
    };
    let nameserver_bin = match &common.nameserver_bin {
        Some(p) => p.clone(),
        None => broker_bin
            .parent()
            .context("the broker binary's directory")?
            .join("rocketraft-nameserver"),
    };
    let nameservers =
        common
            .nameservers
            .unwrap_or(if nemesis.split(',').any(|f| f == "nameserver-partition") {
                2
            } else {
                0
            });
    let command = format!(
        "rocketraft-jepsen run --workload {} --nemesis {nemesis} --seed {seed} --time-limit {} --nodes {nodes} --nameservers {nameservers} --rate {} --keys {}",
        workload.name(),
        time_limit,
        common.rate,
        common.keys
    );
    let time_limit = Duration::from_secs(time_limit);
    Ok(RunOptions {
        name: name.to_string(),
        nodes,
        faults: Vec::new(),
        time_limit,
        seed,
        out: common.out.clone(),
        broker_bin,
        jepsen_bin,
        nameservers,
        nameserver_bin,
        workload,
        log: LogOptions {
            keys: common.keys,
            rate: common.rate,
            ..LogOptions::default()
        },
        register: RegisterOptions {
            keys: common.keys,
            rate: common.rate,
            ..RegisterOptions::default()
        },
        group: GroupOptions {
            keys: common.keys,
            rate: common.rate,
            ..GroupOptions::default()
        },
        quiet: Duration::from_secs(5),
        // Sends and polls are each half the load: at least a fifth of each must succeed.
        min_ok_sends: (common.rate * time_limit.as_secs_f64() * 0.1) as usize,
        min_ok_polls: (common.rate * time_limit.as_secs_f64() * 0.1) as usize,
        // The same for the register workload's writes and reads.
        min_ok_writes: (common.rate * time_limit.as_secs_f64() * 0.1) as usize,
        min_ok_reads: (common.rate * time_limit.as_secs_f64() * 0.1) as usize,
        max_states: common.max_states,
        command,
    })
}

fn report(r: Result<Results>) -> Result<Validity> {
    let r = r?;
    let ok_ops = match (&r.log, &r.register, &r.group) {
        (Some(log), _, _) => format!("{} ok sends", log.stats.send_ok),
        (None, Some(register), _) => format!(
            "{} ok writes, {} ok reads",
            register.stats.write_ok, register.stats.read_ok
        ),
        (None, None, Some(group)) => format!(
            "{} ok sends, {} ok receives, {} ok acks",
            group.stats.send_ok, group.stats.receive_ok_nonempty, group.stats.ack_ok
        ),
        (None, None, None) => "no checker report".into(),
    };
    println!(
        "{}: {:?} ({ok_ops}, {} faults, {} leader changes) -> {}",
        r.name,
        r.valid,
        r.fault_windows.len(),
        r.leader_changes,
        r.dir.join("summary.md").display()
    );
    for f in r.failures.iter().chain(&r.unknown_reasons) {
        println!("  {f}");
    }
    Ok(r.valid)
}

fn exit_code(verdicts: &[Validity]) -> u8 {
    match verdicts.iter().max() {
        Some(Validity::Fail) => 1,
        Some(Validity::Unknown) => 2,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_suite_has_exactly_one_register_run() {
        let registers = |which| -> Result<usize> {
            Ok(suite(which)?
                .iter()
                .filter(|(_, _, _, w)| *w == Workload::Register)
                .map(|(_, _, repeat, _)| *repeat)
                .sum())
        };
        assert_eq!(registers("smoke").ok(), Some(1));
        assert_eq!(registers("long").ok(), Some(1));
    }

    #[test]
    fn every_suite_entry_has_a_name_of_its_own() -> Result<()> {
        for which in ["smoke", "long"] {
            let mut names = std::collections::BTreeSet::new();
            for (nemesis, nodes, _, workload) in suite(which)? {
                let faults = parse_faults(nemesis)?;
                let name = entry_name(workload, nemesis, faults.is_empty(), nodes);
                // Smoke repeats the partition faults with another workload; names differ.
                assert!(
                    names.insert(name.clone()),
                    "{which}: two entries named {name}"
                );
            }
        }
        assert_eq!(
            entry_name(Workload::Log, "partition", false, Some(5)),
            "partition-5nodes"
        );
        Ok(())
    }

    #[test]
    fn each_workload_runs_in_the_smoke_suite() -> Result<()> {
        let smoke = suite("smoke")?;
        for w in [
            Workload::Log,
            Workload::Register,
            Workload::Group,
            Workload::Dedup,
        ] {
            assert!(smoke.iter().any(|e| e.3 == w), "{}", w.name());
        }
        Ok(())
    }

    #[test]
    fn run_names_keep_the_log_workload_unprefixed() {
        assert_eq!(run_name(Workload::Log, "kill,pause", false), "kill+pause");
        assert_eq!(
            run_name(Workload::Register, "pause", false),
            "register-pause"
        );
        assert_eq!(run_name(Workload::Register, "none", true), "register-none");
    }
}
