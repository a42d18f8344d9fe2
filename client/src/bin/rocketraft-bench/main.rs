//! `rocketraft-bench`: rocketraft side by side with NATS JetStream and RabbitMQ quorum
//! queues, with one payload generator and one latency histogram for all three. The
//! clusters are started and stopped by `scripts/bench-peers.sh`; this binary drives one
//! running cluster at a time and writes one JSON line per cell, then turns the lines into
//! Markdown and charts.
//!
//! - `payload.rs`: the payloads (random bytes, the send time stamped in);
//! - `systems.rs` (+ `systems/`): the three systems behind one interface;
//! - `load.rs`: closed loop, open loop, consume;
//! - `plan.rs`: cells and the named plans (ci, reduced, full);
//! - `run.rs`: runs cells, samples the processes, makes the records;
//! - `procfs.rs`: CPU, RSS, bytes written, disk flushes, busy cores from /proc and /sys;
//! - `report.rs`, `charts.rs`: Markdown ratio tables and PNG charts from the records.
//!
//! Built only with the `peers` feature: `cargo build --release -p rocketraft-client
//! --features peers --bin rocketraft-bench`.

mod charts;
mod load;
mod payload;
mod plan;
mod procfs;
mod report;
mod run;
mod systems;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use plan::{Cell, Mode, PlanName};
use run::{Durability, Runner};
use systems::{Cluster, SystemKind};

#[derive(Parser)]
#[command(
    name = "rocketraft-bench",
    about = "Benchmark rocketraft, NATS JetStream and RabbitMQ quorum queues the same way",
    after_help = "Examples (scripts/bench-peers.sh starts the clusters and runs these):
  rocketraft-bench plan --system nats --durability fsync --endpoints nats://127.0.0.1:24221 \\
      --server-pids 101,102,103 --data-dir /tmp/bench/nats --plan ci --out results.jsonl
  rocketraft-bench cell --system rocketraft --endpoints 127.0.0.1:29876 --server-pids 1,2,3 \\
      --mode open --rate 5000 --count 50000
  rocketraft-bench report --input results.jsonl --markdown docs/bench/peers.md --charts-dir docs/bench"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a named plan's cells against one running cluster.
    Plan(PlanArgs),
    /// Run one cell against one running cluster.
    Cell(CellArgs),
    /// Turn JSON lines into the Markdown ratio tables and PNG charts.
    Report(ReportArgs),
    /// Print N free loopback ports (below the ephemeral range), one per line.
    Ports { count: usize },
}

/// The cluster under test and what to watch.
#[derive(Args)]
struct Target {
    #[arg(long, value_enum)]
    system: SystemKind,
    /// How the servers were configured (the script knows; it is recorded, not applied).
    #[arg(long, value_enum, default_value = "fsync")]
    durability: Durability,
    /// rocketraft: nameserver host:port; NATS: nats://host:port (each node); RabbitMQ:
    /// amqp://user:pass@host:port/%2f (the first is used).
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// PIDs of the 3 server processes (CPU, RSS and bytes written are theirs).
    #[arg(long, value_delimiter = ',', required = true)]
    server_pids: Vec<u32>,
    /// Helper processes counted apart (rocketraft's nameserver).
    #[arg(long, value_delimiter = ',')]
    aux_pids: Vec<u32>,
    /// A directory on the disk the servers write to: its flush requests are counted.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Append the JSON lines to this file (they also go to stdout).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Names the run in the records.
    #[arg(long, default_value = "manual")]
    run: String,
    #[arg(long, default_value_t = 1)]
    round: u32,
    /// Seed of the payload bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct PlanArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, value_enum)]
    plan: PlanName,
    /// Backlog of the drain cell (the full plan's default is 1,000,000).
    #[arg(long)]
    drain_messages: Option<u64>,
}

#[derive(Args)]
struct CellArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, value_enum, default_value = "closed")]
    mode: Mode,
    #[arg(long, default_value_t = 1024)]
    size: usize,
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Requests under way per producer.
    #[arg(long, default_value_t = 1024)]
    window: usize,
    /// Messages per request (rocketraft only).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    #[arg(long, default_value_t = 20.0)]
    max_secs: f64,
    /// Open and e2e: offered msgs/s over all producers.
    #[arg(long)]
    rate: Option<f64>,
    /// Drain and e2e: subscribers.
    #[arg(long, default_value_t = 4)]
    consumers: usize,
}

#[derive(Args)]
struct ReportArgs {
    /// JSON-lines files (cells and calibration).
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Write the Markdown section here (stdout if unset).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write the PNG charts into this directory.
    #[arg(long)]
    charts_dir: Option<PathBuf>,
    #[arg(
        long,
        default_value = "rocketraft, NATS JetStream and RabbitMQ side by side"
    )]
    title: String,
    /// The command that produced the input, shown in the Markdown.
    #[arg(long, default_value = "")]
    command: String,
    /// Print only the short summary (the CI variant).
    #[arg(long)]
    short: bool,
}

impl Target {
    fn runner(&self) -> anyhow::Result<Runner> {
        anyhow::ensure!(
            !self.server_pids.is_empty(),
            "--server-pids: give the PIDs of the cluster's server processes"
        );
        let out = match &self.out {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening --out {}", p.display()))?,
            ),
            None => None,
        };
        Ok(Runner {
            cluster: Cluster {
                kind: self.system,
                endpoints: self.endpoints.clone(),
            },
            durability: self.durability,
            watched: procfs::Watched::new(
                self.server_pids.clone(),
                self.aux_pids.clone(),
                self.data_dir.as_deref(),
            )?,
            run: self.run.clone(),
            round: self.round,
            seed: self.seed,
            out,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Plan(a) => {
            let mut runner = a.target.runner()?;
            let cells = plan::cells(a.plan, a.target.system, a.drain_messages);
            let records = runner.run_plan(&cells).await?;
            for r in &records {
                println!("{}", serde_json::to_string(r)?);
            }
            anyhow::ensure!(
                records.len() == cells.len(),
                "{} of {} cells failed (see above)",
                cells.len() - records.len(),
                cells.len()
            );
        }
        Command::Cell(a) => {
            let mut runner = a.target.runner()?;
            let cell = Cell {
                axis: "manual".into(),
                mode: a.mode,
                size: a.size,
                producers: a.producers,
                window: a.window,
                batch: a.batch,
                count: a.count,
                max_secs: a.max_secs,
                rate_fraction: None,
                consumers: a.consumers,
            };
            let name = format!("bench_manual_{}", std::process::id());
            let r = runner.run_cell(&name, &cell, a.rate).await?;
            eprintln!("{}", run::summary(&r));
            println!("{}", serde_json::to_string(&r)?);
        }
        Command::Report(a) => {
            let results = report::load(&a.input)?;
            anyhow::ensure!(!results.cells.is_empty(), "no cell records in the input");
            if a.short {
                print!("{}", report::ci_summary(&results));
                return Ok(());
            }
            let charts = match &a.charts_dir {
                Some(dir) => charts::write_all(&results, dir)?,
                None => Vec::new(),
            };
            let md = report::markdown(&results, &a.title, &a.command, &charts);
            match &a.markdown {
                Some(p) => {
                    std::fs::write(p, md).with_context(|| format!("writing {}", p.display()))?
                }
                None => print!("{md}"),
            }
        }
        Command::Ports { count } => {
            anyhow::ensure!(count <= 1000, "ports: at most 1000, got {count}");
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..count * 10 {
                if seen.len() == count {
                    break;
                }
                seen.insert(rocketraft_client::ports::free_loopback_port()?);
            }
            anyhow::ensure!(seen.len() == count, "found only {} free ports", seen.len());
            for p in seen {
                println!("{p}");
            }
        }
    }
    Ok(())
}
