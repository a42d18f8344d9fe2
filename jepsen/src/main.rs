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
use rocketraft_jepsen::checker::log::LogCheckOptions;
use rocketraft_jepsen::nemesis::parse_faults;
use rocketraft_jepsen::run::{Results, RunOptions, run};
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
    /// One run of the log workload under the given faults.
    Run {
        #[command(flatten)]
        common: Common,
        /// Faults, comma-separated: kill, pause, partition, membership, lose-unfsynced,
        /// pause-kill, clock (or none).
        #[arg(long, default_value = "kill,pause,partition")]
        nemesis: String,
        /// Seed of the workload and the nemesis schedule; random if unset.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// A fixed set of runs: smoke (CI: kill, pause, partition, mixed, pause-kill) or long
    /// (each fault class 10 times, mixes, and 5-node groups for bridge and ring partitions).
    Suite {
        #[command(flatten)]
        common: Common,
        /// smoke or long.
        which: String,
        /// First seed; run i uses seed + i.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Checks a saved history.jsonl again and prints the log checker's report.
    Check { history: PathBuf },
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
            nemesis,
            seed,
        } => {
            let seed = seed.unwrap_or_else(rand::random);
            let faults = parse_faults(&nemesis)?;
            let name = if faults.is_empty() {
                "none".to_string()
            } else {
                nemesis.replace(',', "+")
            };
            let opts = options(&common, &name, &nemesis, seed, common.nodes, 60)?;
            let opts = RunOptions { faults, ..opts };
            Ok(exit_code(&[report(run(&opts).await)?]))
        }
        Cmd::Suite {
            common,
            which,
            seed,
        } => {
            let plan = suite(&which)?;
            let default_time = if which == "long" { 120 } else { 60 };
            let mut verdicts = Vec::new();
            for (i, (nemesis, nodes, repeat)) in plan.into_iter().enumerate() {
                for r in 0..repeat {
                    let seed = seed + (i as u64) * 100 + r as u64;
                    let nodes = nodes.unwrap_or(common.nodes);
                    let name = nemesis.replace(',', "+");
                    let opts = RunOptions {
                        faults: parse_faults(nemesis)?,
                        ..options(&common, &name, nemesis, seed, nodes, default_time)?
                    };
                    verdicts.push(report(run(&opts).await)?);
                }
            }
            println!(
                "suite {which}: {} runs, {} passed",
                verdicts.len(),
                verdicts.iter().filter(|v| **v == Validity::Pass).count()
            );
            Ok(exit_code(&verdicts))
        }
        Cmd::Check { history } => {
            let ops = rocketraft_jepsen::history::read_history(&history)?;
            let report = rocketraft_jepsen::checker::log::check(
                &ops,
                &LogCheckOptions {
                    min_ok_sends: 1,
                    min_ok_polls: 1,
                },
            );
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(exit_code(&[report.valid]))
        }
    }
}

/// The runs of a suite: (faults, node count if not the default, repetitions).
fn suite(which: &str) -> Result<Vec<(&'static str, Option<usize>, usize)>> {
    Ok(match which {
        "smoke" => vec![
            ("kill", None, 1),
            ("pause", None, 1),
            ("partition", None, 1),
            ("kill,pause,partition", None, 1),
            ("pause-kill", None, 1),
        ],
        "long" => vec![
            ("kill", None, 10),
            ("pause", None, 10),
            ("partition", None, 10),
            ("kill,pause,partition", None, 10),
            ("partition", Some(5), 10),
            ("membership", None, 10),
            ("membership,kill,partition", None, 10),
            ("lose-unfsynced", None, 10),
            ("pause-kill", None, 10),
            ("clock", None, 10),
            (
                "clock,lose-unfsynced,membership,partition,pause",
                Some(5),
                10,
            ),
        ],
        other => anyhow::bail!("unknown suite {other:?}: expected smoke or long"),
    })
}

fn options(
    common: &Common,
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
    let command = format!(
        "rocketraft-jepsen run --nemesis {nemesis} --seed {seed} --time-limit {} --nodes {nodes} --rate {} --keys {}",
        time_limit, common.rate, common.keys
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
        log: LogOptions {
            keys: common.keys,
            rate: common.rate,
            ..LogOptions::default()
        },
        quiet: Duration::from_secs(5),
        // Sends and polls are each half the load: at least a fifth of each must succeed.
        min_ok_sends: (common.rate * time_limit.as_secs_f64() * 0.1) as usize,
        min_ok_polls: (common.rate * time_limit.as_secs_f64() * 0.1) as usize,
        command,
    })
}

fn report(r: Result<Results>) -> Result<Validity> {
    let r = r?;
    println!(
        "{}: {:?} ({} ok sends, {} faults, {} leader changes) -> {}",
        r.name,
        r.valid,
        r.log.stats.send_ok,
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
