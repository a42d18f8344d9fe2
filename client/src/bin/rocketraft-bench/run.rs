//! Runs cells against a running cluster and turns each into one [`Record`] (one JSON line):
//! a fresh destination per cell, a warm-up, then the measured phase between two samples
//! of the server processes, this client and the machine.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::load::{self, Outcome};
use crate::payload::Payloads;
use crate::plan::{Cell, Mode};
use crate::procfs::{Usage, Watched};
use crate::systems::{Cluster, Dest, Publisher, SystemKind};

/// How the servers were told to treat acknowledged messages.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    clap::ValueEnum,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledged after a quorum fsynced (rocketraft's default, NATS
    /// `sync_interval: always`, RabbitMQ quorum queues).
    Fsync,
    /// Acknowledged after a quorum has it in memory or the page cache (NATS's default).
    Nofsync,
}

impl Durability {
    pub fn name(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Nofsync => "nofsync",
        }
    }
}

/// Messages per request of `rocketraft`'s consumers: RocketMQ's usual receive size.
pub const RECEIVE_BATCH: u32 = 32;
/// Cores by which the machine's busy cores may exceed our own before a cell counts as
/// disturbed by something else on the machine.
const INTERFERENCE_CORES: f64 = 0.2;

/// One cell's result: the JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Always "cell" (calibration lines in the same file say "calibration").
    pub kind: String,
    /// Names the whole benchmark run (the script passes a timestamp).
    pub run: String,
    pub round: u32,
    pub system: SystemKind,
    pub durability: Durability,
    #[serde(flatten)]
    pub cell: Cell,
    /// Open and e2e: the offered rate in msgs/s.
    pub rate: Option<f64>,
    /// Acknowledged (produce) or received (drain, e2e) messages.
    pub messages: u64,
    /// Failed sends (messages) or failed receive calls.
    pub errors: u64,
    pub unsent: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    /// What the latency measures: "ack" (send to ack), "intended" (intended send time to
    /// ack), "e2e" (intended send to delivery) or "none" (drain).
    pub latency: String,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// utime+stime of the 3 server processes over the measured phase, per message.
    pub server_cpu_us_per_msg: f64,
    /// The same for helpers (rocketraft's nameserver), counted apart.
    pub aux_cpu_us_per_msg: f64,
    pub client_cpu_us_per_msg: f64,
    /// Peak RSS of each server during the cell (VmHWM after a reset), MiB.
    pub server_rss_peak_mib: Vec<f64>,
    pub server_rss_mib: Vec<f64>,
    pub disk: Option<String>,
    /// Flush requests the disk completed during the phase (all processes).
    pub disk_flushes: Option<u64>,
    pub msgs_per_flush: Option<f64>,
    /// Bytes the 3 servers wrote to storage, per message (write amplification x 3).
    pub server_write_bytes_per_msg: f64,
    pub busy_cores: f64,
    pub bench_cores: f64,
    /// The machine was busier than our own processes by more than 0.2 cores.
    pub interfered: bool,
    /// Drain: how fast the backlog was produced beforehand.
    pub fill_msgs_per_s: Option<f64>,
}

/// What a run needs besides the cells.
pub struct Runner {
    pub cluster: Cluster,
    pub durability: Durability,
    pub watched: Watched,
    pub run: String,
    pub round: u32,
    pub seed: u64,
    /// Written after every cell, so an interrupted run keeps what it measured.
    pub out: Option<std::fs::File>,
}

impl Runner {
    /// Runs `cells` in order. Open and e2e cells take their rate from the base cell's
    /// result; a failed cell is reported and the plan goes on.
    pub async fn run_plan(&mut self, cells: &[Cell]) -> anyhow::Result<Vec<Record>> {
        let mut base_rate: Option<f64> = None;
        let mut out = Vec::new();
        for (i, cell) in cells.iter().enumerate() {
            let rate = match cell.rate_fraction {
                None => None,
                Some(f) => Some(
                    f * base_rate
                        .context("an open-loop cell needs the base cell's result first")?,
                ),
            };
            let name = format!(
                "bench_r{}_c{:02}_{}_{}",
                self.round,
                i,
                cell.axis,
                std::process::id()
            );
            eprintln!(
                "[{} {} round {}] cell {}/{}: {}",
                self.cluster.kind.name(),
                self.durability.name(),
                self.round,
                i + 1,
                cells.len(),
                cell.key()
            );
            match self.run_cell(&name, cell, rate).await {
                Ok(r) => {
                    if cell.axis == "base" && r.messages > 0 {
                        base_rate = Some(r.msgs_per_s);
                    }
                    eprintln!("  {}", summary(&r));
                    out.push(r);
                }
                Err(e) => eprintln!("  cell failed: {e:#}"),
            }
        }
        Ok(out)
    }

    /// One cell on destination `name`; `rate` is needed by open and e2e cells.
    pub async fn run_cell(
        &mut self,
        name: &str,
        cell: &Cell,
        rate: Option<f64>,
    ) -> anyhow::Result<Record> {
        anyhow::ensure!(
            cell.batch == 1 || self.cluster.kind.batches(),
            "{} sends one message per request; --batch must be 1",
            self.cluster.kind.name()
        );
        anyhow::ensure!(
            cell.producers > 0 && cell.window > 0 && cell.batch > 0 && cell.count > 0,
            "producers, window, batch and count must be at least 1"
        );
        let dest = self.cluster.create(name).await?;
        let result = self.measure(&dest, cell, rate).await;
        if let Err(e) = self.cluster.delete(&dest).await {
            eprintln!("  deleting {} failed: {e:#}", dest.name);
        }
        let (outcome, usage, fill, latency) = result?;
        let (peak, now) = self.watched.memory()?;
        let record = self.record(cell, rate, outcome, usage, fill, latency, peak, now);
        if let Some(f) = &mut self.out {
            writeln!(f, "{}", serde_json::to_string(&record)?)?;
            f.flush()?;
        }
        Ok(record)
    }

    async fn measure(
        &self,
        dest: &Dest,
        cell: &Cell,
        rate: Option<f64>,
    ) -> anyhow::Result<(Outcome, Usage, Option<f64>, &'static str)> {
        let epoch = Instant::now();
        let payloads = Payloads::new(cell.size, self.seed, epoch)?;
        let max = Duration::from_secs_f64(cell.max_secs);
        let pubs = self.publishers(dest, cell).await?;
        let result = match cell.mode {
            Mode::Closed => {
                // Warm-up: connections, routes, leaders' caches; not measured.
                let warm = (cell.count / 10).clamp(1, 10_000);
                load::closed(&pubs, &payloads, cell.window, cell.batch, warm, max).await?;
                let before = self.begin()?;
                let o = load::closed(&pubs, &payloads, cell.window, cell.batch, cell.count, max)
                    .await?;
                (o, before.until(&self.watched.sample()?), None, "ack")
            }
            Mode::Open => {
                let rate = rate.context("an open-loop cell needs --rate")?;
                let count = cell.count.min((rate * cell.max_secs).ceil() as u64).max(1);
                let before = self.begin()?;
                let o = load::open(&pubs, &payloads, rate, cell.window, count, max).await?;
                (o, before.until(&self.watched.sample()?), None, "intended")
            }
            Mode::E2e => {
                let rate = rate.context("an e2e cell needs --rate")?;
                let count = cell.count.min((rate * cell.max_secs).ceil() as u64).max(1);
                let subs = self.subscribers(dest, cell).await?;
                let before = self.begin()?;
                let consuming =
                    load::consume(subs, &payloads, count, Duration::from_secs(10), max * 2);
                let producing = load::open(&pubs, &payloads, rate, cell.window, count, max);
                let (consumed, produced) = tokio::join!(consuming, producing);
                let (mut consumed, produced) = (consumed?, produced?);
                // Errors of either side count; the latency is the consumers'.
                consumed.add_errors_of(produced);
                (consumed, before.until(&self.watched.sample()?), None, "e2e")
            }
            Mode::Drain => {
                // The backlog is produced as fast as each system allows: rocketraft with
                // batches of 128, the others with deep windows.
                let (window, batch) = if self.cluster.kind.batches() {
                    (8, 128)
                } else {
                    (1024, 1)
                };
                let fill_pubs = if batch == cell.batch && window == cell.window {
                    pubs.clone()
                } else {
                    let mut v = Vec::new();
                    for _ in 0..cell.producers {
                        v.push(self.cluster.publisher(dest, window).await?);
                    }
                    v
                };
                let filled =
                    load::closed(&fill_pubs, &payloads, window, batch, cell.count, max).await?;
                for p in &fill_pubs {
                    p.close().await;
                }
                let fill_rate = filled.messages as f64 / filled.elapsed.as_secs_f64().max(1e-9);
                let subs = self.subscribers(dest, cell).await?;
                let before = self.begin()?;
                let mut o = load::consume(
                    subs,
                    &payloads,
                    filled.messages,
                    Duration::from_secs(10),
                    max,
                )
                .await?;
                // A fill that failed leaves nothing to drain: its errors must show in the
                // cell, or an empty backlog would read as a clean run of 0 msgs/s.
                o.add_errors_of(filled);
                (
                    o,
                    before.until(&self.watched.sample()?),
                    Some(fill_rate),
                    "none",
                )
            }
        };
        for p in &pubs {
            p.close().await;
        }
        Ok(result)
    }

    fn begin(&self) -> anyhow::Result<crate::procfs::Sample> {
        self.watched.reset_peaks();
        self.watched.sample()
    }

    async fn publishers(&self, dest: &Dest, cell: &Cell) -> anyhow::Result<Vec<Publisher>> {
        let mut v = Vec::with_capacity(cell.producers);
        for _ in 0..cell.producers {
            v.push(self.cluster.publisher(dest, cell.window).await?);
        }
        Ok(v)
    }

    async fn subscribers(
        &self,
        dest: &Dest,
        cell: &Cell,
    ) -> anyhow::Result<Vec<crate::systems::Subscriber>> {
        let mut v = Vec::new();
        let group = format!("{}_readers", dest.name);
        let count = cell.consumers.max(1);
        for index in 0..count {
            let drain = matches!(cell.mode, Mode::Drain).then_some((index, count));
            v.push(
                self.cluster
                    .subscriber(dest, &group, RECEIVE_BATCH, drain)
                    .await?,
            );
        }
        Ok(v)
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        cell: &Cell,
        rate: Option<f64>,
        o: Outcome,
        u: Usage,
        fill: Option<f64>,
        latency: &str,
        peak: Vec<f64>,
        now: Vec<f64>,
    ) -> Record {
        let seconds = o.elapsed.as_secs_f64().max(1e-9);
        let msgs = o.messages.max(1) as f64;
        let none = latency == "none";
        let q = |x: f64| if none { 0 } else { o.hist.value_at_quantile(x) };
        Record {
            kind: "cell".into(),
            run: self.run.clone(),
            round: self.round,
            system: self.cluster.kind,
            durability: self.durability,
            cell: cell.clone(),
            rate,
            messages: o.messages,
            errors: o.errors,
            unsent: o.unsent,
            first_error: o.first_error,
            seconds,
            msgs_per_s: o.messages as f64 / seconds,
            mb_per_s: o.messages as f64 * cell.size as f64 / seconds / 1e6,
            latency: latency.into(),
            p50_us: q(0.5),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if none { 0 } else { o.hist.max() },
            server_cpu_us_per_msg: u.server_cpu_s * 1e6 / msgs,
            aux_cpu_us_per_msg: u.aux_cpu_s * 1e6 / msgs,
            client_cpu_us_per_msg: u.client_cpu_s * 1e6 / msgs,
            server_rss_peak_mib: peak,
            server_rss_mib: now,
            disk: self.watched.disk_name(),
            disk_flushes: u.disk_flushes,
            msgs_per_flush: u
                .disk_flushes
                .filter(|f| *f > 0)
                .map(|f| o.messages as f64 / f as f64),
            server_write_bytes_per_msg: u.server_write_bytes as f64 / msgs,
            busy_cores: u.busy_cores,
            bench_cores: u.bench_cores,
            interfered: u.busy_cores - u.bench_cores > INTERFERENCE_CORES,
            fill_msgs_per_s: fill,
        }
    }
}

/// One line for a human watching the run.
pub fn summary(r: &Record) -> String {
    format!(
        "{:.0} msgs/s ({:.1} MB/s), {} msgs, {} errors; {} p50 {:.2} ms p99 {:.2} ms p999 {:.2} ms; server CPU {:.1} us/msg, client {:.1} us/msg; busy {:.2} cores (ours {:.2}){}",
        r.msgs_per_s,
        r.mb_per_s,
        r.messages,
        r.errors,
        r.latency,
        r.p50_us as f64 / 1e3,
        r.p99_us as f64 / 1e3,
        r.p999_us as f64 / 1e3,
        r.server_cpu_us_per_msg,
        r.client_cpu_us_per_msg,
        r.busy_cores,
        r.bench_cores,
        r.first_error
            .as_deref()
            .map(|e| format!("; first error: {e}"))
            .unwrap_or_default()
    )
}
